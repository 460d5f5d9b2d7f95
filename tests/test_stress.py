"""monitor.quant.stress against closed forms.

References: the two-asset variance ``x1^2 s1^2 + x2^2 s2^2 + 2 rho x1 x2 s1 s2`` with the
stressed values, the normal quantile of ``statistics.NormalDist``, and the eigenvalues of
a constant-correlation matrix (``1 + (n - 1) rho`` once, ``1 - rho`` otherwise).
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from monitor.quant.stress import stressed_covariance, stressed_var

Z99 = NormalDist().inv_cdf(0.99)
DAY = 1.0 / 365.0


def two_asset_var(x1: float, x2: float, s1: float, s2: float, rho: float) -> float:
    sigma = math.sqrt(x1**2 * s1**2 + x2**2 * s2**2 + 2 * rho * x1 * x2 * s1 * s2)
    return Z99 * sigma * math.sqrt(DAY)


@pytest.mark.parametrize(("x1", "x2"), [(2e6, 1e6), (2e6, -1.5e6), (-1e6, 3e5)])
def test_two_assets_closed_form(x1: float, x2: float) -> None:
    s1, s2, rho = 0.55, 0.75, 0.35
    cov = np.array([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])
    r = stressed_var(np.array([x1, x2]), cov)
    assert r.normal.var_usd == pytest.approx(two_asset_var(x1, x2, s1, s2, rho), rel=1e-12)
    want = two_asset_var(x1, x2, 1.5 * s1, 1.5 * s2, 0.9)
    assert r.stressed.var_usd == pytest.approx(want, rel=1e-12)
    assert r.ratio == pytest.approx(want / two_asset_var(x1, x2, s1, s2, rho), rel=1e-12)
    # Euler components of the stressed VaR still add up.
    assert r.stressed.component_var_usd.sum() == pytest.approx(want, rel=1e-12)


def test_hedged_book_gains_from_correlation_and_breakdown_stress_hurts_it() -> None:
    s1, s2, rho = 0.6, 0.6, 0.5
    cov = np.array([[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]])
    x = np.array([1e6, -1e6])
    high = stressed_var(x, cov)  # rho -> 0.9: the hedge works better
    assert high.stressed.var_usd == pytest.approx(two_asset_var(1e6, -1e6, 0.9, 0.9, 0.9))
    breakdown = stressed_var(x, cov, correlation=0.0, vol_scale=1.0)
    assert breakdown.stressed.var_usd == pytest.approx(two_asset_var(1e6, -1e6, s1, s2, 0.0))
    assert breakdown.ratio == pytest.approx(math.sqrt(2.0 / 1.0), rel=1e-12)  # var 2 vs 1


def test_blend_and_psd() -> None:
    vols = np.array([0.5, 0.8, 1.1])
    corr = np.array([[1.0, 0.1, -0.2], [0.1, 1.0, 0.3], [-0.2, 0.3, 1.0]])
    cov = corr * np.outer(vols, vols)
    half = stressed_covariance(cov, 0.9, 2.0, weight=0.5)
    want = 0.5 * corr + 0.5 * np.where(np.eye(3) == 1, 1.0, 0.9)
    np.testing.assert_allclose(half.correlation, want, rtol=1e-14)
    np.testing.assert_allclose(half.cov, want * np.outer(2 * vols, 2 * vols), rtol=1e-14)
    for rho in (-0.5, 0.0, 0.9, 1.0):  # -1/(n-1) .. 1 for n = 3
        lam = np.linalg.eigvalsh(stressed_covariance(cov, rho).correlation)
        np.testing.assert_allclose(sorted(lam), sorted([1 + 2 * rho, 1 - rho, 1 - rho]), atol=1e-14)
        assert lam.min() >= -1e-14
    with pytest.raises(ValueError, match="PSD"):
        stressed_covariance(cov, -0.51)


def test_unknown_variance_stays_unknown() -> None:
    cov = np.array([[0.25, np.nan], [np.nan, np.nan]])
    s = stressed_covariance(cov)
    assert s.cov[0, 0] == pytest.approx(0.25 * 2.25)
    assert np.isnan(s.cov[1]).all()
    r = stressed_var(np.array([1e6, 0.0]), cov)  # the unknown asset is not held
    assert r.stressed.var_usd == pytest.approx(Z99 * 1e6 * 0.75 * math.sqrt(DAY), rel=1e-12)
    assert r.ratio == pytest.approx(1.5, rel=1e-12)
