"""monitor.quant.regime against hand-derived values and a plain-Python EWMA."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest

from monitor.quant.estimator import RollingEstimator
from monitor.quant.regime import (
    RegimeBaseline,
    RegimeBaselines,
    RegimeFigures,
    absorption_ratio,
    average_correlation,
    regime_figures,
    vol_ratio,
)

FloatArray = npt.NDArray[np.float64]


def equicorrelated(n: int, rho: float) -> FloatArray:
    return np.full((n, n), rho) + (1.0 - rho) * np.eye(n)


@pytest.mark.parametrize(("n", "rho"), [(10, 0.3), (7, 0.6), (2, -0.4), (25, 0.05)])
def test_equicorrelated_eigenvalues_and_absorption_ratio(n: int, rho: float) -> None:
    # C = (1 - rho) I + rho 1 1': eigenvector 1 with eigenvalue 1 + (n - 1) rho, and n - 1
    # eigenvalues 1 - rho on its orthogonal complement; the trace is n.
    c = equicorrelated(n, rho)
    lam = np.linalg.eigvalsh(c)
    assert lam.max() == pytest.approx(max(1 + (n - 1) * rho, 1 - rho), rel=1e-12)
    k = math.ceil(n / 5)
    top = (1 + (n - 1) * rho) + (k - 1) * (1 - rho) if rho >= 0 else k * (1 - rho)
    assert absorption_ratio(c) == pytest.approx(top / n, rel=1e-12)
    assert average_correlation(c) == pytest.approx(rho, rel=1e-12)


def test_absorption_ratio_by_hand() -> None:
    # n = 10, rho = 0.3: top two eigenvalues 3.7 and 0.7 -> (3.7 + 0.7) / 10 = 0.44.
    assert absorption_ratio(equicorrelated(10, 0.3)) == pytest.approx(0.44, rel=1e-12)
    # Uncorrelated: ceil(n/5) / n; perfectly correlated: 1.
    assert absorption_ratio(np.eye(6)) == pytest.approx(2 / 6, rel=1e-12)
    assert absorption_ratio(np.ones((6, 6))) == pytest.approx(1.0, rel=1e-12)


def test_correlation_figures_skip_unknown_assets() -> None:
    c = np.array(
        [
            [1.0, 0.2, 0.4, np.nan],
            [0.2, 1.0, 0.6, np.nan],
            [0.4, 0.6, 1.0, np.nan],
            [np.nan, np.nan, np.nan, np.nan],  # no returns yet
        ]
    )
    assert average_correlation(c) == pytest.approx((0.2 + 0.4 + 0.6) / 3, rel=1e-14)
    assert average_correlation(c, [True, False, True, True]) == pytest.approx(0.4)
    assert math.isnan(average_correlation(c, [True, False, False, True]))
    assert math.isnan(absorption_ratio(np.ones((1, 1))))
    # A pair without joint returns drops one asset (the higher index on a tie).
    c2 = equicorrelated(4, 0.5)
    c2[0, 3] = c2[3, 0] = np.nan
    assert average_correlation(c2) == pytest.approx(0.5)
    f = regime_figures(np.ones(4), np.ones(4), c2, np.ones(4))
    np.testing.assert_array_equal(f.assets_used, [True, True, True, False])
    # Absorption on the 3 kept: ceil(3/5) = 1 eigenvalue, 1 + 2 * 0.5 = 2, over trace 3.
    assert f.absorption_ratio == pytest.approx(2 / 3, rel=1e-12)


def test_vol_ratios() -> None:
    slow = np.array([0.5, 0.8, np.nan, 0.6, 0.0])
    fast = np.array([0.75, 0.4, 0.5, np.nan, 0.3])
    iv = np.array([0.4, np.nan, 0.5, 0.6, 0.5])
    np.testing.assert_allclose(vol_ratio(fast, slow), [1.5, 0.5, np.nan, np.nan, np.nan])
    f = regime_figures(slow, fast, np.eye(5), iv)
    np.testing.assert_allclose(f.vol_ratio, [1.5, 0.5, np.nan, np.nan, np.nan])
    np.testing.assert_allclose(f.realised_to_implied, [1.25, np.nan, np.nan, 1.0, 0.0])


def ewma_loop(values: list[float], times: list[int], halflife: float) -> list[float]:
    out: list[float] = []
    b = math.nan
    last: int | None = None
    for v, t in zip(values, times, strict=True):
        if last is not None and math.isfinite(v) and math.isfinite(b):
            a = 0.5 ** ((t - last) / halflife)
            b = a * b + (1 - a) * v
        elif math.isfinite(v) and not math.isfinite(b):
            b = v
        last = t
        out.append(b)
    return out


def test_baseline_matches_a_loop_on_irregular_event_time() -> None:
    rng = np.random.default_rng(9)
    times = np.cumsum(rng.integers(0, 5_000, 300)).tolist()
    values = rng.normal(1.0, 0.2, (300, 3))
    values[rng.random((300, 3)) < 0.1] = np.nan
    values[:5, 2] = np.nan  # an element that starts late
    base = RegimeBaseline(halflife_ms=60_000)
    got = np.array([base.update(v, t) for v, t in zip(values, times, strict=True)])
    for j in range(3):
        ref = ewma_loop(values[:, j].tolist(), times, 60_000.0)
        np.testing.assert_allclose(got[:, j], ref, rtol=1e-13)


def test_baseline_scalar_growth_and_time_order() -> None:
    b = RegimeBaseline(1_000)
    assert b.value is None
    assert float(b.update(2.0, 0)) == 2.0
    assert float(b.update(4.0, 1_000)) == pytest.approx(3.0)  # one halflife: halfway
    assert float(b.update(4.0, 1_000)) == pytest.approx(3.0)  # no time: no move
    # a wall clock stepping back: no time elapsed, the baseline holds, its clock stays
    assert float(b.update(1.0, 999)) == pytest.approx(3.0)
    assert float(b.update(4.0, 2_000)) == pytest.approx(3.5)  # one halflife after 1_000
    g = RegimeBaseline(1_000)
    g.update([1.0, 1.0], 0)
    out = g.update([3.0, 3.0, 7.0], 1_000)  # a new underlying appended
    np.testing.assert_allclose(out, [2.0, 2.0, 7.0])
    with pytest.raises(ValueError, match="shape"):
        g.update([1.0, 1.0], 2_000)


def test_baselines_track_every_figure() -> None:
    def fig(v: float) -> RegimeFigures:
        return RegimeFigures(
            vol_ratio=np.array([v, 2 * v]),
            realised_to_implied=np.array([v, np.nan]),
            average_correlation=v,
            absorption_ratio=v / 2,
            assets_used=np.array([True, True]),
        )

    bl = RegimeBaselines(halflife_ms=10_000)
    bl.update(fig(1.0), 0)
    out = bl.update(fig(3.0), 10_000)
    np.testing.assert_allclose(out.vol_ratio, [2.0, 4.0])
    np.testing.assert_allclose(out.realised_to_implied, [2.0, np.nan])
    assert out.average_correlation == pytest.approx(2.0)
    assert out.absorption_ratio == pytest.approx(1.0)


def test_figures_from_a_rolling_estimator() -> None:
    """End to end: equicorrelated returns through the estimator give rho back."""
    n, rho, vol = 5, 0.5, 0.8
    est = RollingEstimator(1_000, 3_000_000, 300_000, 0)
    step_sd = vol / math.sqrt(est.annualisation)
    chol = np.linalg.cholesky(equicorrelated(n, rho)) * step_sd
    rng = np.random.default_rng(1)
    logp = np.zeros(n)
    est.sample(100.0 * np.exp(logp))
    for z in rng.standard_normal((20_000, n)):
        logp += chol @ z
        est.sample(100.0 * np.exp(logp))
    f = regime_figures(
        est.volatility(), est.volatility(fast=True), est.correlation(), np.full(n, vol)
    )
    assert f.average_correlation == pytest.approx(rho, abs=0.05)
    np.testing.assert_allclose(f.realised_to_implied, 1.0, atol=0.1)
    np.testing.assert_allclose(f.vol_ratio, 1.0, atol=0.15)
    assert f.absorption_ratio == pytest.approx((1 + (n - 1) * rho) / n, abs=0.05)
