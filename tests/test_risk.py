"""monitor.quant.risk against independent references.

References used: closed forms derived by hand in the comments, finite differences of
``sigma_p`` (Euler's theorem), ``scipy.stats.norm`` for the normal quantile and tail mean,
an eigen-decomposition of the quadratic form for the delta-gamma cumulants, a large Monte
Carlo of the quadratic P&L, and Black-76 written with ``math.erfc`` in scalar Python.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from scipy import integrate, stats

from monitor.quant.greeks import black76
from monitor.quant.risk import (
    DEFAULT_HORIZON,
    OptionPositions,
    book_risk,
    complete_assets,
    contributions,
    normal_draws,
    psd_covariance,
    revalue,
    scenario_returns,
    var_delta_gamma,
    var_delta_normal,
    var_full_revaluation,
)

FloatArray = npt.NDArray[np.float64]

H = 1.0 / 365.0
Z99 = float(stats.norm.ppf(0.99))
VOLS = np.array([0.6, 0.8, 0.5, 0.9])
RHO = np.array(
    [
        [1.0, 0.6, 0.3, 0.5],
        [0.6, 1.0, 0.4, 0.2],
        [0.3, 0.4, 1.0, 0.1],
        [0.5, 0.2, 0.1, 1.0],
    ]
)
COV = RHO * np.outer(VOLS, VOLS)
X = np.array([2e6, -1e6, 5e5, 3e5])


def sigma_loops(x: FloatArray, cov: FloatArray) -> float:
    return math.sqrt(sum(x[i] * cov[i, j] * x[j] for i in range(len(x)) for j in range(len(x))))


# -- contributions --------------------------------------------------------------------------


def test_euler_contributions_sum_to_sigma_and_match_finite_differences() -> None:
    c = contributions(X, COV)
    assert c.sigma_usd == pytest.approx(sigma_loops(X, COV), rel=1e-14)
    assert c.rc_usd.sum() == pytest.approx(c.sigma_usd, rel=1e-13)
    assert c.share.sum() == pytest.approx(1.0, abs=1e-14)
    # Euler: RC_i = x_i d(sigma)/d(x_i), by central differences of the loop formula.
    for i in range(len(X)):
        e = np.zeros_like(X)
        e[i] = 1e-5 * abs(X[i])
        grad = (sigma_loops(X + e, COV) - sigma_loops(X - e, COV)) / (2 * e[i])
        assert c.rc_usd[i] == pytest.approx(X[i] * grad, rel=1e-8)
    assert not c.excluded.any()
    assert not c.non_psd


def test_hedged_two_asset_book_has_a_negative_share() -> None:
    # vols 0.6 / 0.7, rho 0.9; long 1.0M of A, short 1.2M of B (over-hedged):
    # S x = [0.36 * 1.0 - 0.378 * 1.2, 0.378 * 1.0 - 0.49 * 1.2] e6 = [-0.0936, -0.21] e6
    # x_i (S x)_i = [-0.0936, 0.252] e12; var = 0.1584 e12.
    cov = np.array([[0.36, 0.378], [0.378, 0.49]])
    c = contributions(np.array([1e6, -1.2e6]), cov)
    assert c.sigma_usd == pytest.approx(math.sqrt(0.1584e12), rel=1e-14)
    np.testing.assert_allclose(c.share, [-0.0936 / 0.1584, 0.252 / 0.1584], rtol=1e-13)
    assert c.share[0] < 0.0  # the long leg offsets risk: reported, not clipped
    # Default budget: equal over held -> drift = share - 0.5.
    np.testing.assert_allclose(c.budget, [0.5, 0.5])
    np.testing.assert_allclose(c.drift, c.share - 0.5, rtol=1e-14)
    assert c.max_abs_drift == pytest.approx(abs(c.share[0] - 0.5), rel=1e-14)
    assert c.half_l1 == pytest.approx(0.5 * (abs(c.share[0] - 0.5) + abs(c.share[1] - 0.5)))


def test_budget_is_normalised_and_unheld_budgeted_asset_drifts_negative() -> None:
    x = np.array([1e6, 0.0, 5e5, 0.0])
    c = contributions(x, COV, budget=[2.0, 1.0, 1.0, 0.0])
    np.testing.assert_allclose(c.budget, [0.5, 0.25, 0.25, 0.0])
    assert c.share[1] == 0.0
    assert c.share[3] == 0.0
    assert c.drift[1] == pytest.approx(-0.25)
    assert np.nansum(c.drift) == pytest.approx(0.0, abs=1e-14)
    # Hand: S_00 = 0.36, S_02 = 0.3 * 0.6 * 0.5 = 0.09, S_22 = 0.25;
    # var = 0.36e12 + 2 * 0.09 * 0.5e12 + 0.25 * 0.25e12 = 0.5125e12;
    # RC x sigma = [1e6 (0.36e6 + 0.045e6), 0.5e6 (0.09e6 + 0.125e6)] = [0.405, 0.1075] e12.
    p0, p2 = 0.405 / 0.5125, 0.1075 / 0.5125
    np.testing.assert_allclose(c.share[[0, 2]], [p0, p2], rtol=1e-13)
    drift = np.array([p0 - 0.5, -0.25, p2 - 0.25, 0.0])
    assert c.max_abs_drift == pytest.approx(np.abs(drift).max(), rel=1e-13)
    assert c.half_l1 == pytest.approx(0.5 * np.abs(drift).sum(), rel=1e-13)


def test_flat_book() -> None:
    c = contributions(np.zeros(4), COV)
    assert c.sigma_usd == 0.0
    np.testing.assert_array_equal(c.rc_usd, 0.0)
    assert np.isnan(c.share).all()
    assert np.isnan(c.drift).all()
    assert math.isnan(c.max_abs_drift)
    assert math.isnan(c.half_l1)
    v = var_delta_normal(np.zeros(4), COV)
    assert v.var_usd == 0.0
    assert v.es_usd == 0.0
    np.testing.assert_array_equal(v.component_var_usd, 0.0)


def test_unknown_covariance_excludes_held_asset_and_reports_it() -> None:
    cov = COV.copy()
    cov[3, :] = cov[:, 3] = np.nan  # asset 3 has no returns yet
    c = contributions(X, cov)
    ref = contributions(X[:3], COV[:3, :3])
    np.testing.assert_array_equal(c.excluded, [False, False, False, True])
    assert c.sigma_usd == pytest.approx(ref.sigma_usd, rel=1e-15)
    np.testing.assert_allclose(c.share[:3], ref.share, rtol=1e-14)
    assert np.isnan(c.share[3])
    assert np.isnan(c.budget[3])
    assert np.isnan(c.rc_usd[3])
    np.testing.assert_allclose(c.budget[:3], 1 / 3)  # renormalised over what is known
    # Not held: no covariance needed, nothing excluded.
    x = X.copy()
    x[3] = 0.0
    c2 = contributions(x, cov)
    assert not c2.excluded.any()
    assert c2.share[3] == 0.0
    v = var_delta_normal(X, cov)
    assert v.excluded[3]
    assert np.isnan(v.component_var_usd[3])
    assert np.nansum(v.component_var_usd) == pytest.approx(v.var_usd, rel=1e-13)


def test_complete_assets_drops_the_asset_in_most_nan_pairs_then_the_newest() -> None:
    c = np.ones((4, 4))
    c[0, 2] = c[2, 0] = np.nan
    c[1, 2] = np.nan  # one triangle is enough
    np.testing.assert_array_equal(complete_assets(c), [True, True, False, True])
    c = np.ones((3, 3))
    c[0, 1] = c[1, 0] = np.nan  # tie: drop the higher index
    np.testing.assert_array_equal(complete_assets(c), [True, False, True])
    np.testing.assert_array_equal(complete_assets(c, [True, False, True]), [True, False, True])


def test_non_psd_is_repaired_and_a_book_with_exposure_keeps_its_risk() -> None:
    # Pairwise correlation 2.0 (|rho| > 1): x' S x = 1 - 2 * 1.0 + 0.25 = -0.75 for
    # x = [1, -1], which used to be clamped to a zero volatility and a zero VaR. Repaired,
    # the correlation is 1 (the nearest valid one, up to the 1e-8 eigenvalue floor), so
    # sigma_p = |1 * 1 - 1 * 0.5| = 0.5 by hand.
    cov = np.array([[1.0, 1.0], [1.0, 0.25]])
    c = contributions(np.array([1.0, -1.0]), cov)
    assert c.non_psd
    assert c.sigma_usd == pytest.approx(0.5, rel=1e-6)
    v = var_delta_normal(np.array([1.0, -1.0]), cov)
    assert v.non_psd
    assert v.var_usd == pytest.approx(stats.norm.ppf(0.99) * 0.5 * math.sqrt(H), rel=1e-6)
    [b] = book_risk(np.array([[1.0, -1.0]]), np.zeros((1, 2)), cov, [None])
    assert b.contributions.non_psd
    assert b.contributions.sigma_usd == pytest.approx(0.5, rel=1e-6)
    sc = scenario_returns(cov, H, 100, 0)
    assert np.isfinite(sc.returns).all()
    # A PSD matrix with an exact hedge is not flagged (rounding only).
    ok = np.array([[0.25, 0.25], [0.25, 0.25]])
    assert not contributions(np.array([3.0, -3.0]), ok).non_psd
    assert not psd_covariance(ok).repaired


def test_psd_repair_of_three_valid_pairs_that_disagree() -> None:
    # Each pairwise correlation is in [-1, 1], the three together are not a correlation
    # matrix (eigenvalue -0.8 by hand: 1 - 0.9 - 0.9).
    rho = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])
    assert np.linalg.eigvalsh(rho)[0] == pytest.approx(-0.8, abs=1e-12)
    sd = np.array([0.5, 0.8, 0.3])
    cov = rho * np.outer(sd, sd)
    cov[1, 2] = cov[2, 1] = np.nan  # and an unknown pair: the complete block is {0, 1}
    assert not psd_covariance(cov).repaired  # 2x2 block with |rho| < 1 is PSD
    cov[1, 2] = cov[2, 1] = 0.9 * 0.8 * 0.3
    rep = psd_covariance(cov)
    assert rep.repaired
    assert rep.min_eigenvalue == pytest.approx(-0.8, abs=1e-12)
    np.testing.assert_allclose(np.diagonal(rep.cov), sd**2, rtol=1e-12)  # variances kept
    corr = rep.cov / np.outer(sd, sd)
    assert np.linalg.eigvalsh(corr)[0] >= 0.0
    # Every direction has risk: the smallest sigma_p over unit exposures is positive.
    rng = np.random.default_rng(1)
    for x in rng.standard_normal((200, 3)):
        c = contributions(x, cov)
        assert c.non_psd
        assert c.sigma_usd > 0.0
        assert c.sigma_usd == pytest.approx(math.sqrt(x @ rep.cov @ x), rel=1e-9)


def test_input_errors() -> None:
    with pytest.raises(ValueError, match="cov must have shape"):
        contributions(X, COV[:3, :3])
    with pytest.raises(ValueError, match=">= 0"):
        contributions(X, COV, budget=[1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        contributions([np.nan, 0.0, 0.0, 0.0], COV)
    with pytest.raises(ValueError, match="confidence"):
        var_delta_normal(X, COV, confidence=1.0)


# -- delta-normal ---------------------------------------------------------------------------


@pytest.mark.parametrize(("confidence", "horizon"), [(0.99, H), (0.975, 10 * H), (0.95, 0.5)])
def test_delta_normal_against_scipy_normal(confidence: float, horizon: float) -> None:
    v = var_delta_normal(X, COV, confidence, horizon)
    sd = sigma_loops(X, COV) * math.sqrt(horizon)
    dist = stats.norm(loc=0.0, scale=sd)  # the P&L x . r, r ~ N(0, S h)
    q = dist.ppf(1.0 - confidence)
    # Tail mean by numerical integration of y pdf(y) (below q - 40 sd adds nothing).
    tail_mean = integrate.quad(lambda y: y * dist.pdf(y), q - 40 * sd, q, epsabs=0, epsrel=1e-12)[
        0
    ] / (1 - confidence)
    assert v.var_usd == pytest.approx(-q, rel=1e-12)
    assert v.es_usd == pytest.approx(-tail_mean, rel=1e-8)
    assert v.sigma_usd == pytest.approx(sd, rel=1e-14)


def test_component_var_sums_to_var_and_is_euler() -> None:
    v = var_delta_normal(X, COV)
    assert v.component_var_usd.sum() == pytest.approx(v.var_usd, rel=1e-14)
    assert v.component_es_usd.sum() == pytest.approx(v.es_usd, rel=1e-14)
    for i in range(len(X)):  # component = x_i dVaR/dx_i
        e = np.zeros_like(X)
        e[i] = 1e-5 * abs(X[i])
        d = var_delta_normal(X + e, COV).var_usd - var_delta_normal(X - e, COV).var_usd
        assert v.component_var_usd[i] == pytest.approx(X[i] * d / (2 * e[i]), rel=1e-7)


# -- delta-gamma ----------------------------------------------------------------------------


def cumulants_by_eigen(x: FloatArray, hess: FloatArray, v: FloatArray, order: int) -> FloatArray:
    """Cumulants 1..order of ``x'r + 0.5 r' H r``, ``r ~ N(0, v)``, via independent terms.

    With ``v = L L'`` and ``L' (H/2) L = P diag(lam) P'``, ``u = P' L^-1 r`` is standard
    normal and the P&L is ``sum_j lam_j u_j^2 + beta_j u_j``, ``beta = P' L' x``; each term's
    cumulants are ``k1 = lam`` and ``k_s = 2^(s-1) (s-1)! (lam^s + s/4 beta^2 lam^(s-2))``.
    """
    chol = np.linalg.cholesky(v)
    lam, p = np.linalg.eigh(chol.T @ (0.5 * hess) @ chol)
    beta = p.T @ chol.T @ x
    out = np.empty(order)
    out[0] = lam.sum()
    for s in range(2, order + 1):
        c = 2 ** (s - 1) * math.factorial(s - 1)
        out[s - 1] = c * (lam**s + s / 4 * beta**2 * lam ** (s - 2)).sum()
    return out


def test_delta_gamma_moments_match_eigen_decomposition() -> None:
    g = np.array([-1e7, 4e6, -2e6, 3e6])
    dg = var_delta_gamma(X, g, COV)
    k = cumulants_by_eigen(X, np.diag(g + X), COV * H, 4)
    assert dg.mean_usd == pytest.approx(k[0], rel=1e-12)
    assert dg.sd_usd == pytest.approx(math.sqrt(k[1]), rel=1e-12)
    assert dg.skewness == pytest.approx(k[2] / k[1] ** 1.5, rel=1e-10)
    assert dg.excess_kurtosis == pytest.approx(k[3] / k[1] ** 2, rel=1e-10)


def test_delta_gamma_without_curvature_is_delta_normal() -> None:
    # gamma_cash = -x cancels the e^r convexity: the P&L is exactly x . r.
    dg = var_delta_gamma(X, -X, COV, 0.99, H)
    dn = var_delta_normal(X, COV, 0.99, H)
    assert dg.skewness == 0.0
    assert dg.excess_kurtosis == 0.0
    assert dg.mean_usd == 0.0
    assert dg.var_usd == pytest.approx(dn.var_usd, rel=1e-13)
    assert dg.es_usd == pytest.approx(dn.es_usd, rel=1e-13)


def test_pure_long_gamma_chi_square_is_flagged() -> None:
    # x = 0, one asset: P&L = c chi2_1 (skew 2.83, excess kurtosis 12), outside CF's domain.
    dg = var_delta_gamma([0.0], [1e6], [[0.64]], 0.99, H)
    v = 0.64 * H
    assert dg.mean_usd == pytest.approx(0.5 * 1e6 * v, rel=1e-14)
    assert dg.skewness == pytest.approx(2**1.5, rel=1e-12)
    assert dg.excess_kurtosis == pytest.approx(12.0, rel=1e-12)
    assert not dg.cf_monotone


def cf_next_order(s: float, k: float, k5: float, z: FloatArray) -> FloatArray:
    """The next Cornish-Fisher terms (third order), the truncation error's leading part."""
    return (
        (z**4 - 6 * z**2 + 3) * k5 / 120
        - (z**4 - 5 * z**2 + 2) * s * k / 24
        + (12 * z**4 - 53 * z**2 + 17) * s**3 / 324
    )


def test_delta_gamma_cornish_fisher_against_monte_carlo() -> None:
    """CF VaR/ES vs 4M draws of the quadratic P&L.

    Tolerance = Monte Carlo error + truncation of the expansion, both computed, not guessed:
    - VaR: the MC 1% quantile's order statistic has rank ~ Binomial(N, 0.01); its 99.9%
      band is +-3.3 sd of the rank, read off the sorted sample.
    - ES: 4 standard errors of the tail mean.
    - Truncation: twice the next (third-order) CF terms at the quantile (VaR) and averaged
      over the tail (ES), from the exact fifth cumulant.
    """
    g = 0.25 * np.array([-4e7, -2e7, -1e7, 0.0])
    c, alpha = 0.99, 0.01
    dg = var_delta_gamma(X, g, COV, c, H)
    assert dg.cf_monotone
    assert -0.5 < dg.skewness < -0.1  # a moderately skewed short-gamma book

    hess = g + X
    chol = np.linalg.cholesky(COV * H)
    rng = np.random.default_rng(20260101)
    n_draws = 1 << 22
    parts = []
    for _ in range(8):
        r = rng.standard_normal((n_draws // 8, 4)) @ chol.T
        parts.append(r @ X + 0.5 * (r * r) @ hess)
    pnl = np.sort(np.concatenate(parts))

    k = cumulants_by_eigen(X, np.diag(hess), COV * H, 5)
    s, kurt, k5 = k[2] / k[1] ** 1.5, k[3] / k[1] ** 2, k[4] / k[1] ** 2.5
    sd = math.sqrt(k[1])
    a = stats.norm.ppf(alpha)
    var_trunc = 2 * sd * abs(cf_next_order(s, kurt, k5, np.array([a]))[0])
    zt = np.linspace(-8.0, a, 20001)
    wt = stats.norm.pdf(zt) / alpha
    es_trunc = 2 * sd * abs(np.trapezoid(cf_next_order(s, kurt, k5, zt) * wt, zt))

    j = int(n_draws * alpha)
    band = int(3.3 * math.sqrt(n_draws * alpha * (1 - alpha)))
    lo, hi = -pnl[j + band], -pnl[j - band]
    assert lo - var_trunc <= dg.var_usd <= hi + var_trunc
    tail = pnl[:j]
    es_mc = -tail.mean()
    es_se = tail.std() / math.sqrt(j) + (hi - lo) / 2  # tail-mean noise + cutoff noise
    assert abs(dg.es_usd - es_mc) <= 4 * es_se + es_trunc
    # The tolerances are informative: both well under 1% of the figure.
    assert (hi - lo) / 2 + var_trunc < 0.01 * dg.var_usd
    assert 4 * es_se + es_trunc < 0.015 * dg.es_usd


def test_delta_gamma_is_the_second_order_expansion_of_revalue() -> None:
    """Hessian convention G = gamma S^2 + delta S: revalue - (x r + r G r / 2) is O(r^3)."""
    f = np.array([100.0, 100.0, 2000.0])
    strike = np.array([95.0, 110.0, 2100.0])
    t = np.array([0.1, 0.3, 0.05])
    vol = np.array([0.7, 0.6, 0.8])
    call = np.array([True, False, True])
    qty = np.array([3.0, -2.0, 0.5])
    und = np.array([0, 0, 1])
    g = black76(f, strike, t, vol, call)
    x = np.bincount(und, weights=qty * g.delta * f, minlength=2)
    gamma_cash = np.bincount(und, weights=qty * g.gamma * f * f, minlength=2)
    opts = OptionPositions(und, f, strike, t, vol, call, qty)
    z = np.random.default_rng(3).standard_normal((64, 2))
    errs = []
    for scale in (1e-2, 5e-3):
        r = z * scale
        full = revalue(r, 0.0, options=opts).pnl_usd
        approx = r @ x + 0.5 * (r * r) @ (gamma_cash + x)
        errs.append(np.abs(full - approx).max())
    assert errs[0] / errs[1] == pytest.approx(8.0, rel=0.1)  # third order: halve r, / 8


# -- scenarios ------------------------------------------------------------------------------


def test_scenarios_have_exact_moments_and_are_deterministic() -> None:
    sc = scenario_returns(COV, H, 2000, seed=11)
    r = sc.returns
    assert r.shape == (2000, 4)
    np.testing.assert_allclose(r.mean(axis=0), 0.0, atol=1e-17)
    np.testing.assert_allclose(r.T @ r / 2000, COV * H, rtol=1e-12, atol=1e-18)
    np.testing.assert_array_equal(r, scenario_returns(COV, H, 2000, seed=11).returns)
    assert not np.array_equal(r, scenario_returns(COV, H, 2000, seed=12).returns)
    z = normal_draws(10, 3, 1)
    np.testing.assert_array_equal(z[:5], -z[5:])
    with pytest.raises(ValueError, match="even"):
        normal_draws(7, 3)


def test_scenarios_hold_unknown_assets_at_zero() -> None:
    cov = COV.copy()
    cov[1, :] = cov[:, 1] = np.nan
    sc = scenario_returns(cov, H, 1000, 0)
    np.testing.assert_array_equal(sc.excluded, [False, True, False, False])
    np.testing.assert_array_equal(sc.returns[:, 1], 0.0)
    keep = [0, 2, 3]
    r = sc.returns[:, keep]
    np.testing.assert_allclose(r.T @ r / 1000, COV[np.ix_(keep, keep)] * H, rtol=1e-12)


# -- full revaluation -----------------------------------------------------------------------


def test_var_full_revaluation_order_statistics_by_hand() -> None:
    pnl = np.random.default_rng(0).permutation(np.arange(-50.0, 50.0))  # m = 100
    v = var_full_revaluation(pnl, 0.95)  # 5 tail scenarios: -50..-46
    assert float(v.var_usd) == 46.0
    assert float(v.es_usd) == 48.0
    assert float(v.worst_usd) == 50.0
    # m (1 - c) = 2.5: VaR is the 3rd worst, ES = (50 + 49 + 0.5 * 48) / 2.5.
    v = var_full_revaluation(pnl, 0.975)
    assert float(v.var_usd) == 48.0
    assert float(v.es_usd) == pytest.approx((50 + 49 + 24) / 2.5, rel=1e-15)
    # Fewer than one tail scenario: both are the worst loss.
    v = var_full_revaluation(pnl, 0.999)
    assert float(v.var_usd) == 50.0
    assert float(v.es_usd) == 50.0
    # Columns are independent books.
    two = np.column_stack([pnl, 2 * pnl])
    v2 = var_full_revaluation(two, 0.95)
    np.testing.assert_array_equal(v2.var_usd, [46.0, 92.0])
    np.testing.assert_array_equal(v2.es_usd, [48.0, 96.0])


def test_linear_book_full_revaluation() -> None:
    sc = scenario_returns(COV, H, 1000, 5)
    r = sc.returns
    # Positions (underlying, quantity, price) revalued one by one with math.expm1.
    positions = [(0, 20.0, 1e5), (0, -5.0, 1e5), (1, -400.0, 2500.0), (2, 1e4, 50.0)]
    lin = np.zeros(4)
    for u, q, s in positions:
        lin[u] += q * s
    pnl = revalue(r, H, linear_usd=lin).pnl_usd
    ref = np.array([sum(q * s * math.expm1(row[u]) for u, q, s in positions) for row in r])
    np.testing.assert_allclose(pnl, ref, rtol=1e-12, atol=1e-6)
    # To first order it is the delta-normal P&L x . r under the same scenarios, whose
    # sample sd equals the delta-normal sigma exactly (moment-matched scenarios).
    dn = var_delta_normal(lin, COV, 0.99, H)
    first = r @ lin
    assert first.std() == pytest.approx(dn.sigma_usd, rel=1e-12)
    # Second order adds the e^r convexity; the rest is bounded by |r|^3 e^|r| / 6.
    bound = (np.abs(r) ** 3 * np.exp(np.abs(r)) / 6) @ np.abs(lin)
    assert (np.abs(pnl - first - 0.5 * (r * r) @ lin) <= bound * (1 + 1e-9) + 1e-6).all()
    # And its scenario VaR converges to the delta-normal one (200k scenarios: the 1%
    # quantile's relative sampling error is ~1.1%, 4 sd ~ 4.5%).
    big = scenario_returns(COV, H, 200_000, 1).returns @ lin
    assert float(var_full_revaluation(big).var_usd) == pytest.approx(dn.var_usd, rel=0.045)


def norm_cdf(v: float) -> float:
    return 0.5 * math.erfc(-v / math.sqrt(2.0))


def black76_scalar(f: float, k: float, t: float, vol: float, call: bool) -> float:
    w = 1.0 if call else -1.0
    if t <= 0.0 or vol <= 0.0:
        return max(w * (f - k), 0.0)
    sd = vol * math.sqrt(t)
    d1 = math.log(f / k) / sd + 0.5 * sd
    return w * (f * norm_cdf(w * d1) - k * norm_cdf(w * (d1 - sd)))


OPT_F = np.array([60_000.0, 60_000.0, 60_000.0, 3000.0, 3000.0, 3000.0, 150.0, 150.0])
OPT_K = np.array([60_000.0, 90_000.0, 30_000.0, 2800.0, 3000.0, 3500.0, 150.0, 100.0])
# t: 1y, 30d, 2h (inside the 1-day horizon: ends at intrinsic), 7d, 0 (expired), 1d exactly
OPT_T = np.array([1.0, 30 / 365, 2 / 8760, 7 / 365, 0.0, H, 0.5, 0.25])
OPT_VOL = np.array([0.55, 0.8, 0.6, 0.7, 0.6, 0.9, 0.0, 1.2])
OPT_CALL = np.array([True, True, False, False, True, True, False, True])
OPT_UND = np.array([0, 0, 0, 1, 1, 1, 2, 2])


def option_book(quantity: FloatArray) -> OptionPositions:
    return OptionPositions(OPT_UND, OPT_F, OPT_K, OPT_T, OPT_VOL, OPT_CALL, quantity)


def test_option_repricing_matches_black76_per_scenario() -> None:
    sc = scenario_returns(COV[:3, :3], H, 64, 2)
    r = sc.returns * 4.0  # wider moves, so strikes are crossed
    n = len(OPT_F)
    per_option = revalue(r, H, options=option_book(np.eye(n))).pnl_usd  # (64, n)
    assert per_option.shape == (64, n)
    for i in range(n):
        base = black76_scalar(OPT_F[i], OPT_K[i], OPT_T[i], OPT_VOL[i], bool(OPT_CALL[i]))
        for s in range(64):
            moved = black76_scalar(
                OPT_F[i] * math.exp(r[s, OPT_UND[i]]),
                OPT_K[i],
                OPT_T[i] - H,
                OPT_VOL[i],
                bool(OPT_CALL[i]),
            )
            tol = 1e-9 * float(OPT_F[i])
            assert per_option[s, i] == pytest.approx(moved - base, rel=1e-9, abs=tol)
    # The same figures through monitor.quant.greeks.black76 (the engine's pricer).
    fm = OPT_F * np.exp(r[:, OPT_UND])
    ref = black76(fm, OPT_K, np.maximum(OPT_T - H, 0.0), OPT_VOL, OPT_CALL).price
    ref -= black76(OPT_F, OPT_K, OPT_T, OPT_VOL, OPT_CALL).price
    np.testing.assert_allclose(per_option, ref, rtol=1e-12, atol=1e-10 * OPT_F.max())


def test_revalue_books_chunks_and_unpriced_rows() -> None:
    sc = scenario_returns(COV[:3, :3], H, 200, 3)
    rng = np.random.default_rng(4)
    q = rng.standard_normal((len(OPT_F), 3))  # three accounts
    lin = rng.standard_normal((3, 3)) * 1e5
    full = revalue(sc.returns, H, lin, option_book(q)).pnl_usd
    assert full.shape == (200, 3)
    tiny = revalue(sc.returns, H, lin, option_book(q), max_elements=1).pnl_usd
    np.testing.assert_allclose(tiny, full, rtol=1e-12, atol=1e-8)
    total = revalue(sc.returns, H, lin.sum(axis=1), option_book(q.sum(axis=1))).pnl_usd
    np.testing.assert_allclose(total, full.sum(axis=1), rtol=1e-12, atol=1e-8)
    # A row without an IV is left out and counted.
    vol = OPT_VOL.copy()
    vol[1] = np.nan
    bad = OptionPositions(OPT_UND, OPT_F, OPT_K, OPT_T, vol, OPT_CALL, q)
    res = revalue(sc.returns, H, None, bad)
    assert res.unpriced == 1
    keep = np.ones(len(OPT_F), dtype=bool)
    keep[1] = False
    sub = OptionPositions(
        OPT_UND[keep], OPT_F[keep], OPT_K[keep], OPT_T[keep], OPT_VOL[keep], OPT_CALL[keep], q[keep]
    )
    np.testing.assert_allclose(res.pnl_usd, revalue(sc.returns, H, None, sub).pnl_usd, rtol=1e-14)


def test_zero_move_over_zero_horizon_is_zero_pnl() -> None:
    r = np.zeros((4, 3))
    pnl = revalue(r, 0.0, np.ones(3), option_book(np.ones(len(OPT_F)))).pnl_usd
    np.testing.assert_array_equal(pnl, 0.0)


def test_option_decay_over_horizon_is_in_the_pnl() -> None:
    # No move, one day: P&L = price(t - h) - price(t), about theta for a long-dated option.
    book = OptionPositions(
        np.array([0]), np.array([60_000.0]), np.array([60_000.0]), np.array([0.5]),
        np.array([0.6]), np.array([True]), np.array([1.0]),
    )  # fmt: skip
    pnl = revalue(np.zeros((2, 1)), DEFAULT_HORIZON, options=book).pnl_usd
    theta = black76(60_000.0, 60_000.0, 0.5, 0.6, True).theta
    assert pnl[0] == pytest.approx(float(theta), rel=2e-3)


# -- book_risk: all books at once equals one at a time --------------------------------------


def _assert_same(a: object, b: object) -> None:
    for name in a.__dataclass_fields__:  # type: ignore[attr-defined]
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, np.ndarray):
            np.testing.assert_allclose(va, vb, rtol=1e-10, atol=1e-9, equal_nan=True, err_msg=name)
        elif isinstance(va, float):
            if math.isnan(va):
                assert math.isnan(vb), name
            else:
                assert va == pytest.approx(vb, rel=1e-10, abs=1e-9), name
        else:
            assert va == vb, name


@pytest.mark.parametrize("warm", [True, False], ids=["complete-cov", "warm-up-fallback"])
def test_book_risk_equals_single_book_functions(warm: bool) -> None:
    rng = np.random.default_rng(5)
    n = 6
    a = rng.standard_normal((n, n))
    cov = (a @ a.T + n * np.eye(n)) * 0.02
    if not warm:
        cov[5, :] = cov[:, 5] = np.nan  # an asset without returns yet
    x = rng.normal(0.0, 1e6, (6, n))
    x[0] = 0.0  # a flat book
    x[1, 2:] = 0.0
    x[1, 1] = -x[1, 0]  # a hedge
    x[2, 3] = 0.0
    g = rng.normal(0.0, 1e7, (6, n)) * (rng.random((6, n)) < 0.5)
    g[3] = 0.0
    x[4] = 0.0  # gamma only
    budgets: list[npt.NDArray[np.float64] | None] = [
        None,
        None,
        np.array([0.5, 0.0, 0.2, 0.3, 0.0, 0.0]),
        None,
        np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
        np.ones(n),
    ]
    got = book_risk(x, g, cov, budgets, 0.99, 1 / 365)
    for b in range(6):
        _assert_same(got[b].contributions, contributions(x[b], cov, budgets[b]))
        _assert_same(got[b].delta_normal, var_delta_normal(x[b], cov, 0.99, 1 / 365))
        _assert_same(got[b].delta_gamma, var_delta_gamma(x[b], g[b], cov, 0.99, 1 / 365))


# -- delta-gamma where Cornish-Fisher breaks down ----------------------------------------


def _quadratic_exact(x: float, g: float, s: float, alpha: float) -> tuple[float, float]:
    """VaR and ES (USD losses) of ``P = x r + g r^2 / 2``, ``r ~ N(0, s^2)``, ``g > 0``.

    ``P <= q`` exactly when ``r`` lies between the roots of ``g r^2 / 2 + x r - q``: the
    quantile by root finding on that closed-form CDF, the tail mean by quadrature.
    """
    from scipy import optimize

    def roots(q: float) -> tuple[float, float]:
        d = math.sqrt(max(x * x + 2.0 * g * q, 0.0))
        return (-x - d) / g, (-x + d) / g

    def cdf(q: float) -> float:
        r1, r2 = roots(q)
        return float(stats.norm.cdf(r2 / s) - stats.norm.cdf(r1 / s))

    q = optimize.brentq(lambda v: cdf(v) - alpha, -x * x / (2.0 * g), 1e12, xtol=1e-12)
    r1, r2 = roots(q)
    tail, _ = integrate.quad(
        lambda r: (x * r + 0.5 * g * r * r) * stats.norm.pdf(r / s) / s, r1, r2
    )
    return -q, -tail / alpha


def test_delta_gamma_falls_back_where_cornish_fisher_is_not_monotone() -> None:
    # Long gamma: 1M USD delta, gamma_cash 2e8 (the P&L is x r + (gamma_cash + x) r^2 / 2
    # in log returns), vol 0.6, 1 day. Cornish-Fisher is not monotone there, and its
    # figure was nowhere near the exact quantile of the quadratic.
    x, gc, vol = 1e6, 2e8, 0.6
    var_exact, es_exact = _quadratic_exact(x, gc + x, vol * math.sqrt(H), 0.01)
    for res in (
        var_delta_gamma([x], [gc], [[vol**2]], 0.99, H),
        book_risk(np.array([[x]]), np.array([[gc]]), np.array([[vol**2]]), [None])[0].delta_gamma,
    ):
        assert not res.cf_monotone
        assert res.method == "simulation"
        assert res.var_usd == pytest.approx(var_exact, rel=0.03)
        assert res.es_usd == pytest.approx(es_exact, rel=0.03)
        assert res.es_usd >= res.var_usd


def test_delta_gamma_var_is_never_negative() -> None:
    # After a 1000x jump and back, a book is pure long gamma: P = g r^2 / 2 >= 0, whose 1%
    # quantile is a gain (g s^2 chi2_1(0.01) / 2 > 0 by hand). Cornish-Fisher published
    # -4.3e9 with only cf_monotone false to warn; a loss that cannot happen is 0.
    gc, vol = 1e12, 0.6
    gain = 0.5 * gc * vol**2 * H * float(stats.chi2.ppf(0.01, 1))
    assert gain > 0.0
    for res in (
        var_delta_gamma([0.0], [gc], [[vol**2]], 0.99, H),
        book_risk(np.zeros((1, 1)), np.array([[gc]]), np.array([[vol**2]]), [None])[0].delta_gamma,
    ):
        assert not res.cf_monotone  # the flag stays
        assert res.var_usd == 0.0
        assert res.es_usd == 0.0


# -- shares of a near-perfect hedge ----------------------------------------------------------


def test_shares_are_null_with_a_reason_near_a_perfect_hedge() -> None:
    # Long 1M, short 1M of two assets correlated 0.9999999, both vol 0.5: by hand
    # sigma_p = 0.5e6 sqrt(2 (1 - rho)) = 224 USD against an undiversified 1M, and the
    # Euler shares x_i (S x)_i / sigma_p^2 are +-5e6 (they reached 1e9 in the report).
    rho = 0.9999999
    cov = 0.25 * np.array([[1.0, rho], [rho, 1.0]])
    x = np.array([1e6, -1e6])
    sigma = 0.5e6 * math.sqrt(2.0 * (1.0 - rho))
    for c, dn in (
        (contributions(x, cov), var_delta_normal(x, cov)),
        (lambda b: (b.contributions, b.delta_normal))(
            book_risk(x[None, :], np.zeros((1, 2)), cov, [None])[0]
        ),
    ):
        assert c.sigma_usd == pytest.approx(sigma, rel=1e-6)  # the volatility stays
        assert c.share_reason == "hedged"
        assert np.isnan(c.share).all()
        assert np.isnan(c.rc_usd).all()
        assert np.isnan(c.drift).all()
        assert math.isnan(c.max_abs_drift)
        assert np.isnan(dn.component_var_usd).all()
        assert dn.var_usd == pytest.approx(Z99 * sigma * math.sqrt(H), rel=1e-6)
    # Short 0.9M instead: sigma_p = 0.5 sqrt(1 + 0.81 - 1.8 rho) 1e6 = 50k, 5% of the
    # undiversified 0.95M: shares are known and equal their closed form.
    x = np.array([1e6, -0.9e6])
    c = contributions(x, cov)
    assert c.share_reason is None
    var = x @ cov @ x
    np.testing.assert_allclose(c.share, x * (cov @ x) / var, rtol=1e-9)
    assert contributions(np.zeros(2), cov).share_reason == "flat"


def test_risk_excluded_names_an_underlying_only_delta_gamma_dropped() -> None:
    # SOL is held delta-neutral (x = 0) with gamma, and has no covariance yet: the
    # contributions never needed it, delta-gamma did and left it out. The report says so.
    from monitor.model.snapshot import AccountRisk

    cov = np.array([[0.36, np.nan], [np.nan, np.nan]])
    x, g = np.array([1e6, 0.0]), np.array([0.0, 5e7])
    c = contributions(x, cov)
    dg = var_delta_gamma(x, g, cov)
    assert not c.excluded.any()
    np.testing.assert_array_equal(dg.excluded, [False, True])
    risk = AccountRisk(
        ("BTC", "SOL"), np.array([True, True]), c, var_delta_normal(x, cov), dg, None
    )
    assert risk.report()["risk_excluded"] == ["SOL"]


def test_book_risk_without_simulation_changes_only_the_simulated_figures() -> None:
    """``simulate=False`` (the evaluation's slow-covariance pass, which reads only the
    contributions): the same contributions and delta-normal figures; delta-gamma VaR is
    NaN exactly for the books the simulation would have priced."""
    rng = np.random.default_rng(11)
    n = 5
    a = rng.standard_normal((n, n))
    cov = (a @ a.T + n * np.eye(n)) * 0.05
    x = rng.normal(0.0, 1e6, (8, n))
    g = rng.normal(0.0, 1e9, (8, n)) * (rng.random((8, n)) < 0.6)
    budgets: list[npt.NDArray[np.float64] | None] = [None] * 8
    full = book_risk(x, g, cov, budgets, 0.99, 1 / 365)
    fast = book_risk(x, g, cov, budgets, 0.99, 1 / 365, simulate=False)
    methods = {f.delta_gamma.method for f in full}
    assert methods == {"simulation", "cornish_fisher"}  # both kinds are in this sample
    for f, q in zip(full, fast, strict=True):
        _assert_same(q.contributions, f.contributions)
        _assert_same(q.delta_normal, f.delta_normal)
        if f.delta_gamma.method == "simulation":
            assert q.delta_gamma.method == "not_computed"
            assert math.isnan(q.delta_gamma.var_usd)
        else:
            _assert_same(q.delta_gamma, f.delta_gamma)


def test_flat_books_are_shared_and_equal_the_per_book_functions() -> None:
    """Books with no exposure and no gamma (a replay of prices alone): ``book_risk`` hands
    out one read-only result per shape and budget; each equals what the single-book
    functions give for the same book under an arbitrary covariance."""
    rng = np.random.default_rng(3)
    n = 5
    a = rng.normal(size=(n, n))
    cov = a @ a.T * 0.1
    budgets: list[np.ndarray | None] = [None, np.array([1.0, 2.0, 0.0, 1.0, 0.5])]
    zeros = np.zeros((2, n))
    first = book_risk(zeros, zeros, cov, budgets, 0.99, DEFAULT_HORIZON)
    again = book_risk(zeros, zeros, 3.0 * cov, budgets, 0.99, DEFAULT_HORIZON)
    assert all(x is y for x, y in zip(first, again, strict=True))
    for b, r in enumerate(first):
        c = contributions(zeros[b], cov, budgets[b])
        dn = var_delta_normal(zeros[b], cov, 0.99, DEFAULT_HORIZON)
        dg = var_delta_gamma(zeros[b], zeros[b], cov, 0.99, DEFAULT_HORIZON)
        assert r.contributions.sigma_usd == c.sigma_usd == 0.0
        np.testing.assert_array_equal(r.contributions.rc_usd, c.rc_usd)
        np.testing.assert_array_equal(r.contributions.share, c.share)
        np.testing.assert_array_equal(r.contributions.budget, c.budget)
        assert r.contributions.share_reason == c.share_reason
        assert (r.delta_normal.var_usd, r.delta_normal.es_usd) == (dn.var_usd, dn.es_usd)
        assert (r.delta_gamma.var_usd, r.delta_gamma.method) == (dg.var_usd, dg.method)
        with pytest.raises(ValueError, match="read-only"):
            r.contributions.rc_usd[0] = 1.0
