"""The scenario pass's grid revaluation (``revalue_grid``) against exact pricing.

The reference is written here: every option priced by Black-76 (scipy's normal CDF) in
every scenario, its P&L summed with the quantities. Stated tolerance (``revalue_grid``'s
docstring): each book's scenario P&L within ``1e-6`` of its options' gross forward
notional ``sum |q| F``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats

from monitor.quant.risk import (
    GRID_POINTS,
    OptionPositions,
    revalue,
    revalue_grid,
    scenario_returns,
    var_full_revaluation,
)

FloatArray = npt.NDArray[np.float64]
H = 1.0 / 365.0
TOL = 1e-6  # of the gross forward notional


def _b76(
    f: FloatArray, k: FloatArray, t: FloatArray, vol: FloatArray, call: npt.NDArray[np.bool_]
) -> FloatArray:
    """Black-76 per unit, broadcasting; intrinsic where ``vol sqrt(t)`` is 0."""
    sd = vol * np.sqrt(np.maximum(t, 0.0))
    w = np.where(call, 1.0, -1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = (np.log(f / k) + 0.5 * sd * sd) / sd
        price = w * (f * stats.norm.cdf(w * d1) - k * stats.norm.cdf(w * (d1 - sd)))
    out: FloatArray = np.where(sd > 0.0, price, np.maximum(w * (f - k), 0.0))
    return out


def _exact_pnl(returns: FloatArray, o: OptionPositions, horizon: float) -> FloatArray:
    """P&L ``(m, k)``: each option repriced on ``F e^r`` at ``t - horizon``, IV held."""
    f = o.forward[None, :] * np.exp(returns[:, o.underlying])  # (m, i)
    args = (o.strike[None, :], o.vol[None, :], o.is_call[None, :])
    now = _b76(o.forward, o.strike, o.t, o.vol, o.is_call)
    moved = _b76(f, args[0], o.t[None, :] - horizon, args[1], args[2])
    out: FloatArray = (moved - now[None, :]) @ o.quantity
    return out


def _book(seed: int, n_und: int = 3, n_opt: int = 400, k: int = 4) -> OptionPositions:
    """Calls and puts from deep out of to deep in the money, expiries from inside the
    horizon (intrinsic) through hours (short-dated: exact path) to two years."""
    rng = np.random.default_rng(seed)
    und = rng.integers(0, n_und, n_opt)
    spot = np.array([90_000.0, 3_000.0, 150.0, 1.0, 40.0])[:n_und]
    fwd = spot[und] * rng.uniform(0.99, 1.02, n_opt)
    strike = fwd * np.exp(rng.uniform(-0.8, 0.8, n_opt))
    days = np.concatenate([rng.uniform(0.1, 0.9, n_opt // 10), rng.uniform(1.05, 3.0, n_opt // 10)])
    days = np.concatenate([days, rng.uniform(3.0, 730.0, n_opt - days.size)])
    qty = rng.integers(-30, 30, (n_opt, k)).astype(np.float64)
    qty[rng.random((n_opt, k)) < 0.5] = 0.0  # books hold different subsets
    return OptionPositions(
        underlying=und,
        forward=fwd,
        strike=strike,
        t=days / 365.0,
        vol=rng.uniform(0.2, 1.5, n_opt),
        is_call=rng.random(n_opt) < 0.5,
        quantity=qty,
    )


def _cov(vols: list[float], rho: float) -> FloatArray:
    v = np.asarray(vols)
    c = np.full((v.size, v.size), rho)
    np.fill_diagonal(c, 1.0)
    out: FloatArray = c * np.outer(v, v)
    return out


@pytest.mark.parametrize(
    ("seed", "vols"),
    [(1, [0.6, 0.8, 1.2]), (2, [0.05, 0.3, 2.5]), (3, [4.0, 9.0, 11.0])],
)
def test_scenario_pnl_within_tolerance_of_exact_pricing(seed: int, vols: list[float]) -> None:
    o = _book(seed)
    scen = scenario_returns(_cov(vols, 0.6), H, 1_000, seed=seed)
    lin = np.array([[1e5, -2e5, 0.0, 3e4], [0.0, 5e4, 1e3, 0.0], [-7e3, 0.0, 0.0, 1.0]])
    got = revalue_grid(scen.returns, H, linear_usd=lin, options=o).pnl_usd
    want = _exact_pnl(scen.returns, o, H) + np.expm1(scen.returns) @ lin
    gross = (np.abs(o.quantity) * o.forward[:, None]).sum(axis=0)
    err = np.abs(got - want).max(axis=0) / gross
    assert (err <= TOL).all(), err
    # Small beside what the scenarios do to each book, too.
    assert (np.abs(got - want).max(axis=0) <= 1e-3 * np.ptp(want, axis=0)).all()
    # And the exact path agrees with the reference to rounding.
    exact = revalue(scen.returns, H, linear_usd=lin, options=o).pnl_usd
    assert np.abs(exact - want).max() <= 1e-9 * gross.max()
    va, vb = var_full_revaluation(want).var_usd, var_full_revaluation(got).var_usd
    assert np.abs(vb - va).max() <= TOL * gross.max()


def test_grid_points_are_exact() -> None:
    """Returns on the grid's own points: the interpolant is the exact value there."""
    o = _book(7, n_und=2, k=3)
    nodes = np.linspace(-0.3, 0.2, GRID_POINTS + 1)
    returns = np.stack([nodes, nodes[::-1] * 0.5], axis=1)
    got = revalue_grid(returns, H, options=o).pnl_usd
    want = revalue(returns, H, options=o).pnl_usd
    gross = (np.abs(o.quantity) * o.forward[:, None]).sum(axis=0)
    assert np.abs(got - want).max() <= 1e-12 * gross.max()


def test_one_dimensional_books_and_degenerate_grids() -> None:
    """A single book (1-D quantities), an underlying whose scenarios do not move it (a
    zero-width grid), unpriced rows counted as :func:`revalue` counts them."""
    o = _book(11, n_und=2, n_opt=60, k=1)
    o = OptionPositions(
        underlying=o.underlying,
        forward=np.where(np.arange(60) == 5, np.nan, o.forward),
        strike=o.strike,
        t=o.t,
        vol=o.vol,
        is_call=o.is_call,
        quantity=o.quantity[:, 0] + 1.0,
    )
    rng = np.random.default_rng(3)
    returns = np.stack([rng.normal(0.0, 0.04, 200), np.zeros(200)], axis=1)
    got = revalue_grid(returns, H, options=o)
    want = revalue(returns, H, options=o)
    assert got.unpriced == want.unpriced == 1
    gross = float((np.abs(o.quantity) * np.nan_to_num(o.forward)).sum())
    assert got.pnl_usd.shape == want.pnl_usd.shape == (200,)
    assert np.abs(got.pnl_usd - want.pnl_usd).max() <= TOL * gross


def test_points_must_be_positive() -> None:
    with pytest.raises(ValueError, match="points"):
        revalue_grid(np.zeros((2, 1)), H, linear_usd=np.ones(1), points=0)
