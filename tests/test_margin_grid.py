"""The distance to a call under the recomputed model margin, with options valued on a grid
of moves (``distance_to_call_model(value_grid=...)``), against exact valuation.

Two references: the same search with every option valued exactly at every move
(``value_grid=None``), and, independently of the search, the call condition at the
distance found: ``equity + P&L(m) = MM(m)`` with the P&L priced here (Black-76 on scipy's
normal CDF) and ``MM(m)`` from :func:`portfolio_margin` of the book at the moved prices.
Stated tolerance: the distance within ``1e-5`` (0.001 percentage points of move).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from margin_books import INDEX, NAMES, option_book
from scipy import stats
from scipy.optimize import brentq

from monitor.quant.margin import (
    LinearPositions,
    distance_to_call,
    distance_to_call_model,
    portfolio_margin,
)
from monitor.quant.risk import OptionPositions

FloatArray = npt.NDArray[np.float64]
TOL = 1e-5


def _b76(
    f: FloatArray, k: FloatArray, t: FloatArray, vol: FloatArray, call: npt.NDArray[np.bool_]
) -> FloatArray:
    sd = vol * np.sqrt(t)
    w = np.where(call, 1.0, -1.0)
    d1 = (np.log(f / k) + 0.5 * sd * sd) / sd
    out: FloatArray = w * (f * stats.norm.cdf(w * d1) - k * stats.norm.cdf(w * (d1 - sd)))
    return out


def _book(seed: int, k: int) -> tuple[OptionPositions, LinearPositions, FloatArray]:
    """Options on three underlyings (BTC's settle in coin), perpetuals; quantities per
    book; the linear positions' USD value per underlying and book."""
    rng = np.random.default_rng(seed)
    return option_book(rng, 240, k, days=[7.0, 30.0, 90.0, 180.0, 365.0], log_moneyness=0.5)


def _g(m: float, b: int, equity: float, options: OptionPositions, linear: LinearPositions) -> float:
    """``equity + P&L(m) - MM(m)`` of book ``b``, priced here and by portfolio_margin."""
    o = options
    now = _b76(o.forward, o.strike, o.t, o.vol, o.is_call)
    dv = _b76(o.forward * (1.0 + m), o.strike, o.t, o.vol, o.is_call) - now
    pnl = float(dv @ o.quantity[:, b]) + float((linear.quantity[:, b] * INDEX).sum()) * m
    moved = OptionPositions(
        o.underlying,
        o.forward * (1.0 + m),
        o.strike,
        o.t,
        o.vol,
        o.is_call,
        quantity=o.quantity,
        inverse=o.inverse,
    )
    pm = portfolio_margin(linear, moved, INDEX * (1.0 + m), NAMES)
    return equity + pnl - float(pm.maintenance_margin_usd[b])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_grid_distance_matches_exact_valuation(seed: int) -> None:
    k = 5
    options, linear, lin_usd = _book(seed, k)
    mm0 = portfolio_margin(linear, options, INDEX, NAMES).maintenance_margin_usd
    # Equity a few margins above today's: calls within reach, some only one way.
    equity = mm0 * np.array([1.5, 2.0, 3.0, 5.0, 1.05]) + 1_000.0
    grid = distance_to_call_model(equity, lin_usd, options, linear, INDEX, NAMES)
    exact = distance_to_call_model(equity, lin_usd, options, linear, INDEX, NAMES, value_grid=None)
    np.testing.assert_array_equal(grid.reachable_down, exact.reachable_down)
    np.testing.assert_array_equal(grid.reachable_up, exact.reachable_up)
    np.testing.assert_allclose(grid.down, exact.down, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(grid.up, exact.up, atol=TOL, equal_nan=True)
    np.testing.assert_array_equal(grid.maintenance_margin_usd, exact.maintenance_margin_usd)
    found = 0
    for b in range(k):
        for sign, dist in ((-1.0, grid.down[b]), (1.0, grid.up[b])):
            if not math.isfinite(dist) or dist == 0.0:
                continue
            found += 1
            # At the distance the book is at its call (to the move's tolerance times the
            # slope), and a hair before it is not.
            lo, hi = (_g(sign * (dist + e), b, equity[b], options, linear) for e in (-TOL, TOL))
            assert lo > 0.0 >= hi or (lo > 0.0 and abs(hi) < 1e-6 * mm0[b]), (b, sign, lo, hi)
    assert found >= 4  # the test looks at real calls, both directions among them
    assert np.isfinite(grid.down).any()
    assert np.isfinite(grid.up).any()


@pytest.mark.parametrize("seed", [4, 5])
def test_scan_on_the_grid_finds_the_exact_distance(seed: int) -> None:
    """``distance_to_call`` (venue margin held): the first move at which equity + P&L
    reaches it, against a fine scan and Brent's root of the P&L priced here."""
    k = 4
    options, _, lin_usd = _book(seed, k)
    lin_tot = lin_usd.sum(axis=0)
    o = options
    now = _b76(o.forward, o.strike, o.t, o.vol, o.is_call)
    steps = np.arange(1, 1801) * 0.0005  # moves to 90%
    moved = np.concatenate([-steps[::-1], steps])
    v = _b76(o.forward[None, :] * (1.0 + moved[:, None]), o.strike, o.t, o.vol, o.is_call)
    pnl = (v - now) @ o.quantity + moved[:, None] * lin_tot  # (moves, k)
    scale = np.abs(pnl).max(axis=0)
    mm = np.full(k, 1e5)
    headroom = np.array([0.3, 0.5, 0.8, 0.95]) * scale
    got = distance_to_call(headroom + mm, mm, lin_usd, options, np.eye(3) * 0.5, lin_usd.T)
    exact = distance_to_call(
        headroom + mm, mm, lin_usd, options, np.eye(3) * 0.5, lin_usd.T, value_grid=None
    )

    def g(x: float, b: int, sign: float) -> float:
        m = sign * x
        f = o.forward * (1.0 + m)
        dv = _b76(f, o.strike, o.t, o.vol, o.is_call) - now
        return float(headroom[b] + dv @ o.quantity[:, b] + lin_tot[b] * m)

    found = 0
    for b in range(k):
        for sign, dist, reach in (
            (-1.0, got.down[b], got.reachable_down[b]),
            (1.0, got.up[b], got.reachable_up[b]),
        ):
            col = pnl[1800:, b] if sign > 0 else pnl[:1800, b][::-1]
            below = np.flatnonzero(headroom[b] + col <= 0.0)
            if below.size == 0:
                assert not reach
                continue
            j = int(below[0])
            a = 0.0 if j == 0 else float(steps[j - 1])
            want = brentq(g, a, float(steps[j]), args=(b, sign), xtol=1e-12)
            assert reach
            assert dist == pytest.approx(want, abs=TOL)
            found += 1
    assert found >= 4
    np.testing.assert_allclose(got.down, exact.down, atol=TOL, equal_nan=True)
    np.testing.assert_allclose(got.up, exact.up, atol=TOL, equal_nan=True)
