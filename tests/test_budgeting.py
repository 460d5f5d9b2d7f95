"""monitor.quant.budgeting and monitor.quant.trades against independent computations.

References: shares by the plain formula ``x_i (S x)_i / x'Sx``; an independent risk-budget
solver written here (``scipy.optimize.least_squares`` on ``p_i(x) - b_i`` over log
magnitudes, from a different start); closed forms for inverse volatility and for the
two-asset risk-parity portfolio.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import optimize

from monitor.quant.budgeting import rebalance_target, spinu_newton
from monitor.quant.trades import linear_trades

FloatArray = npt.NDArray[np.float64]


def shares(x: FloatArray, cov: FloatArray) -> FloatArray:
    sx = cov @ x
    out: FloatArray = x * sx / float(x @ sx)
    return out


def random_cov(rng: np.random.Generator, n: int) -> FloatArray:
    vols = rng.uniform(0.3, 1.5, n)
    a = rng.standard_normal((n, n + 2))
    c = a @ a.T
    d = np.sqrt(np.diagonal(c))
    corr = c / np.outer(d, d)
    out: FloatArray = corr * np.outer(vols, vols)
    return out


def independent_solver(cov: FloatArray, b: FloatArray, sign: FloatArray) -> FloatArray:
    """scipy's L-BFGS-B on the convex log-barrier objective in x-space (bounds keep each
    x_i on its side), polished by least squares on ``RC_i - b_i sigma`` (units of sigma^2);
    normalised to ``sum |x| = 1`` (one more residual). Generic least squares on the contributions
    alone stalls at the orthant boundary from a poor start when some sides are short."""

    def obj(y: FloatArray) -> tuple[float, FloatArray]:
        x = sign * y
        sx = cov @ x
        grad: FloatArray = sign * sx - b / y
        return 0.5 * float(x @ sx) - float(b @ np.log(y)), grad

    y0 = np.full(b.shape[0], 1.0 / math.sqrt(float(np.mean(np.diagonal(cov)))))
    m = optimize.minimize(
        obj,
        y0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(1e-9, None)] * b.shape[0],
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10_000},
    )

    def resid(y: FloatArray) -> FloatArray:
        x = sign * y
        sx = cov @ x
        out: FloatArray = np.append(x * sx - b * float(x @ sx), y.sum() - 1.0)
        return out

    start = m.x / m.x.sum()
    sol = optimize.least_squares(resid, start, bounds=(1e-12, np.inf), xtol=1e-15, ftol=1e-15)
    y: FloatArray = sol.x
    out: FloatArray = sign * y / y.sum()
    return out


@pytest.mark.parametrize("seed", range(12))
def test_risk_budget_shares_equal_budgets_and_match_an_independent_solver(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    cov = random_cov(rng, n)
    b = rng.uniform(0.2, 3.0, n)
    b /= b.sum()
    x_now = rng.uniform(-3e6, 5e6, n)  # some shorts: their side is kept
    t = rebalance_target(x_now, cov, b)
    assert t.converged
    assert t.iterations < 30
    np.testing.assert_array_equal(np.sign(t.exposure_usd), np.where(x_now < 0, -1.0, 1.0))
    np.testing.assert_allclose(shares(t.exposure_usd, cov), b, rtol=0, atol=1e-10)
    ref = independent_solver(cov, b, np.where(x_now < 0, -1.0, 1.0))
    np.testing.assert_allclose(shares(ref, cov), b, rtol=0, atol=1e-8)  # reference is good
    np.testing.assert_allclose(
        t.exposure_usd / np.abs(t.exposure_usd).sum(), ref, rtol=0, atol=1e-6
    )
    # Scale "volatility" (the default): the target's sigma is the current book's.
    assert t.sigma_usd == pytest.approx(math.sqrt(x_now @ cov @ x_now), rel=1e-12)


def test_two_assets_risk_parity_closed_form() -> None:
    # Equal budgets, two assets: x_i sigma_i equal for any correlation (symmetry of the
    # two Euler terms), so x ∝ (1/s1, 1/s2). s = (0.5, 1.0), rho = 0.3.
    cov = np.array([[0.25, 0.3 * 0.5], [0.3 * 0.5, 1.0]])
    t = rebalance_target(np.array([1e6, 1e6]), cov, scale="gross")
    np.testing.assert_allclose(t.exposure_usd, [2e6 * 2 / 3, 2e6 / 3], rtol=1e-12)
    np.testing.assert_allclose(shares(t.exposure_usd, cov), [0.5, 0.5], atol=1e-13)


def test_spinu_stationarity_and_not_pd() -> None:
    rng = np.random.default_rng(7)
    cov = random_cov(rng, 5)
    b = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    y, _, ok = spinu_newton(cov, b)
    assert ok
    np.testing.assert_allclose(y * (cov @ y), b, rtol=1e-12)  # grad f = S y - b / y = 0
    assert float(y @ cov @ y) == pytest.approx(1.0, rel=1e-12)
    singular = np.ones((3, 3))  # rank 1: the barrier problem is unbounded
    y2, _, ok2 = spinu_newton(singular, np.full(3, 1 / 3))
    assert not ok2
    assert np.isnan(y2).all()


def test_trades_take_the_book_to_budget() -> None:
    rng = np.random.default_rng(3)
    cov = random_cov(rng, 4)
    prices = np.array([60_000.0, 3_000.0, 150.0, 0.5])
    # BTC: inverse USD-sized perp (10 USD face); ETH: linear perp, multiplier 0.1;
    # SOL: spot, multiplier 1; DOGE: linear perp, multiplier 1000.
    upc = np.array([10.0, 0.1 * prices[1], prices[2], 1000 * prices[3]])
    x_now = np.array([2e6, 5e5, 3e5, -1e5])
    b = np.array([0.4, 0.3, 0.2, 0.1])
    t = rebalance_target(x_now, cov, b, usd_per_contract=upc)
    assert t.trades is not None
    after = x_now + t.trades.contracts * upc
    np.testing.assert_allclose(after, t.exposure_usd, rtol=1e-12)
    np.testing.assert_allclose(shares(after, cov), b, rtol=0, atol=1e-6)
    np.testing.assert_allclose(t.trades.contracts, (t.exposure_usd - x_now) / upc, rtol=1e-12)


def test_inverse_volatility_is_one_over_sigma_normalised() -> None:
    vols = np.array([0.5, 0.8, 1.2])
    corr = np.array([[1.0, 0.2, 0.7], [0.2, 1.0, 0.4], [0.7, 0.4, 1.0]])
    cov = corr * np.outer(vols, vols)
    t = rebalance_target(np.array([1e6, 1e6, -1e6]), cov, method="inverse_vol", scale="gross")
    w = (1 / vols) / (1 / vols).sum()
    np.testing.assert_allclose(t.exposure_usd, 3e6 * w * [1, 1, -1], rtol=1e-13)
    # Budgeted: stand-alone risk |x_i| sigma_i proportional to b.
    b = np.array([0.5, 0.3, 0.2])
    tb = rebalance_target(np.ones(3), cov, b, method="inverse_vol", scale="gross")
    np.testing.assert_allclose(tb.exposure_usd * vols / (tb.exposure_usd * vols).sum(), b)


def test_inverse_vol_equals_risk_parity_under_constant_correlation() -> None:
    vols = np.array([0.4, 0.6, 0.9, 1.3])
    corr = np.full((4, 4), 0.45) + 0.55 * np.eye(4)
    cov = corr * np.outer(vols, vols)
    x = np.full(4, 1e6)
    iv = rebalance_target(x, cov, method="inverse_vol")
    rp = rebalance_target(x, cov)
    np.testing.assert_allclose(iv.exposure_usd, rp.exposure_usd, rtol=1e-10)


def test_scale_invariants() -> None:
    rng = np.random.default_rng(11)
    cov = random_cov(rng, 5)
    b = rng.uniform(0.5, 2.0, 5)
    x = rng.uniform(1e5, 2e6, 5)
    vol = rebalance_target(x, cov, b)
    gross = rebalance_target(x, cov, b, scale="gross")
    assert vol.sigma_usd == pytest.approx(math.sqrt(x @ cov @ x), rel=1e-12)
    assert gross.gross_usd == pytest.approx(np.abs(x).sum(), rel=1e-12)
    # Same direction, different size; shares identical.
    k = gross.gross_usd / vol.gross_usd
    np.testing.assert_allclose(gross.exposure_usd, k * vol.exposure_usd, rtol=1e-12)
    # Homogeneous: twice the book, twice the target; covariance scale does not matter.
    np.testing.assert_allclose(
        rebalance_target(2 * x, cov, b).exposure_usd, 2 * vol.exposure_usd, rtol=1e-12
    )
    np.testing.assert_allclose(
        rebalance_target(x, 4 * cov, b, scale="gross").exposure_usd,
        gross.exposure_usd,
        rtol=1e-10,
    )
    lvl = rebalance_target(x, cov, b, level_usd=1e6)
    assert lvl.sigma_usd == pytest.approx(1e6, rel=1e-12)


def test_zero_budget_closes_and_unknown_covariance_gives_no_target() -> None:
    rng = np.random.default_rng(5)
    cov = random_cov(rng, 3)
    cov[2, :] = cov[:, 2] = np.nan  # unknown, but not budgeted
    t = rebalance_target(np.array([1e6, 2e6, 5e5]), cov, np.array([0.5, 0.5, 0.0]))
    assert t.exposure_usd[2] == 0.0
    np.testing.assert_allclose(shares(t.exposure_usd[:2], cov[:2, :2]), [0.5, 0.5], atol=1e-12)
    bad = rebalance_target(np.array([1e6, 2e6, 5e5]), cov, np.array([0.4, 0.4, 0.2]))
    assert not bad.converged
    assert np.isnan(bad.exposure_usd).all()


def test_linear_trades_rounding_and_missing_instruments() -> None:
    tr = linear_trades(
        np.array([1234.0, -5e4, 0.0, 7e3]), np.array([10.0, 3000.0, np.nan, 0.0]), lot=1.0
    )
    np.testing.assert_allclose(tr.contracts[:3], [123.4, -50 / 3, 0.0])
    assert math.isnan(tr.contracts[3])  # a change is wanted but there is no instrument
    np.testing.assert_allclose(tr.contracts_rounded[:3], [123.0, -17.0, 0.0])
    np.testing.assert_allclose(tr.delta_traded_usd, [1230.0, -51_000.0, 0.0, 0.0])
