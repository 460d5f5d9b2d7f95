"""monitor.quant.attribution against a brute-force Shapley over the 6 orders of the factors.

References: shares by the plain formula ``x_i (S x)_i / x'Sx`` written here, the Shapley
value as the mean over ``itertools.permutations`` of the marginal effects along each path,
and hand-computed shares for the single-factor cases.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.quant.attribution import DriftAttribution, attribute_drift, drift_summary

FloatArray = npt.NDArray[np.float64]

NAMES = ("BTC", "ETH", "SOL")
VOLS = np.array([0.5, 0.7, 0.9])
CORR = np.array([[1.0, 0.6, 0.4], [0.6, 1.0, 0.5], [0.4, 0.5, 1.0]])
X = np.array([3e6, 2e6, 1e6])


def cov_of(vols: FloatArray, corr: FloatArray) -> FloatArray:
    return corr * np.outer(vols, vols)


def shares(x: FloatArray, cov: FloatArray) -> FloatArray:
    sx = cov @ x
    out: FloatArray = x * sx / float(x @ sx)
    return out


def brute_shapley(
    x0: FloatArray, v0: FloatArray, c0: FloatArray, x1: FloatArray, v1: FloatArray, c1: FloatArray
) -> dict[str, FloatArray]:
    """Mean over the 6 orders of the marginal effect of each factor along the path."""
    start = {"x": x0, "v": v0, "c": c0}
    end = {"x": x1, "v": v1, "c": c1}
    out = {k: np.zeros_like(x0) for k in start}
    orders = list(itertools.permutations(start))
    for order in orders:
        state = dict(start)
        before = shares(state["x"], cov_of(state["v"], state["c"]))
        for k in order:
            state[k] = end[k]
            after = shares(state["x"], cov_of(state["v"], state["c"]))
            out[k] += (after - before) / len(orders)
            before = after
    return out


def check_additive(a: DriftAttribution) -> None:
    parts = a.positions + a.volatility + a.correlation
    np.testing.assert_allclose(parts, a.total, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.residual, 0.0, atol=1e-12)
    np.testing.assert_allclose(a.total, a.share_now - a.share_ref, rtol=0, atol=1e-15)


def test_only_btc_volatility_doubles_is_all_volatility() -> None:
    vols1 = VOLS * np.array([2.0, 1.0, 1.0])
    a = attribute_drift(X, cov_of(VOLS, CORR), X, cov_of(vols1, CORR))
    # Hand check of the shares: S x with vols (0.5, 0.7, 0.9), x = (3, 2, 1) e6.
    p0, p1 = shares(X, cov_of(VOLS, CORR)), shares(X, cov_of(vols1, CORR))
    np.testing.assert_allclose(a.share_ref, p0, rtol=1e-13)
    np.testing.assert_allclose(a.share_now, p1, rtol=1e-13)
    assert a.total[0] > 0.15  # BTC's share jumps (0.410 -> 0.623)
    assert (a.positions == 0.0).all()
    assert (a.correlation == 0.0).all()
    np.testing.assert_allclose(a.volatility, p1 - p0, rtol=0, atol=1e-15)
    check_additive(a)


def test_only_correlations_change_is_all_correlation() -> None:
    corr1 = np.array([[1.0, 0.9, 0.9], [0.9, 1.0, 0.9], [0.9, 0.9, 1.0]])
    a = attribute_drift(X, cov_of(VOLS, CORR), X, cov_of(VOLS, corr1))
    p0, p1 = shares(X, cov_of(VOLS, CORR)), shares(X, cov_of(VOLS, corr1))
    assert np.abs(p1 - p0).max() > 0.01
    assert (a.positions == 0.0).all()
    assert (a.volatility == 0.0).all()
    np.testing.assert_allclose(a.correlation, p1 - p0, rtol=0, atol=1e-15)
    check_additive(a)


def test_only_a_position_changes_is_all_positions() -> None:
    x1 = X * np.array([1.0, 2.5, 1.0])
    cov = cov_of(VOLS, CORR)
    a = attribute_drift(X, cov, x1, cov)
    p0, p1 = shares(X, cov), shares(x1, cov)
    assert np.abs(p1 - p0).max() > 0.1
    assert (a.volatility == 0.0).all()
    assert (a.correlation == 0.0).all()
    np.testing.assert_allclose(a.positions, p1 - p0, rtol=0, atol=1e-15)
    check_additive(a)


def test_everything_moves_equals_brute_force_shapley() -> None:
    x1 = np.array([2e6, -1.5e6, 1.2e6])  # ETH turned into a hedge
    v1 = np.array([0.8, 0.6, 1.1])
    c1 = np.array([[1.0, 0.85, 0.3], [0.85, 1.0, 0.2], [0.3, 0.2, 1.0]])
    a = attribute_drift(X, cov_of(VOLS, CORR), x1, cov_of(v1, c1))
    ref = brute_shapley(X, VOLS, CORR, x1, v1, c1)
    np.testing.assert_allclose(a.positions, ref["x"], rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.volatility, ref["v"], rtol=0, atol=1e-13)
    np.testing.assert_allclose(a.correlation, ref["c"], rtol=0, atol=1e-13)
    check_additive(a)
    assert a.share_now[1] < 0.0  # the hedge has a negative share
    assert a.sigma_ref_usd == pytest.approx(math.sqrt(X @ cov_of(VOLS, CORR) @ X), rel=1e-14)


@st.composite
def states(draw: st.DrawFn) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    n = draw(st.integers(2, 6))
    elems = st.floats(-1.0, 1.0, allow_nan=False)
    magnitude = st.floats(1e3, 1e7)
    expo = st.builds(lambda m, short: -m if short else m, magnitude, st.booleans())

    def psd() -> FloatArray:
        a = np.array(draw(st.lists(elems, min_size=n * n, max_size=n * n))).reshape(n, n)
        out: FloatArray = a @ a.T + 0.05 * np.eye(n)
        return out

    x0 = np.array(draw(st.lists(expo, min_size=n, max_size=n)))
    x1 = np.array(draw(st.lists(expo, min_size=n, max_size=n)))
    return x0, psd(), x1, psd()


def _parts(cov: FloatArray) -> tuple[FloatArray, FloatArray]:
    v = np.sqrt(np.diagonal(cov))
    return v, cov / np.outer(v, v)


# too_slow: generation time is wall-clock, and the test machine's cores are shared.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(states())
def test_property_additive_and_equal_to_brute_force(
    s: tuple[FloatArray, FloatArray, FloatArray, FloatArray],
) -> None:
    x0, s0, x1, s1 = s
    a = attribute_drift(x0, s0, x1, s1)
    # Random PSD books can be near-flat (large offsetting exposures): shares then reach
    # magnitudes where 1e-12 is below rounding; additivity is asserted relative to them.
    scale = max(1.0, float(np.abs(a.share_ref).max()), float(np.abs(a.share_now).max()))
    parts = a.positions + a.volatility + a.correlation
    np.testing.assert_allclose(parts, a.total, rtol=0, atol=1e-12 * scale)
    (v0, c0), (v1, c1) = _parts(s0), _parts(s1)
    ref = brute_shapley(x0, v0, c0, x1, v1, c1)
    tol = 1e-9 * scale
    np.testing.assert_allclose(a.positions, ref["x"], rtol=0, atol=tol)
    np.testing.assert_allclose(a.volatility, ref["v"], rtol=0, atol=tol)
    np.testing.assert_allclose(a.correlation, ref["c"], rtol=0, atol=tol)
    # Reversing the path negates every part (Shapley over all orders has no direction).
    back = attribute_drift(x1, s1, x0, s0)
    np.testing.assert_allclose(back.positions, -a.positions, rtol=0, atol=tol)
    np.testing.assert_allclose(back.volatility, -a.volatility, rtol=0, atol=tol)
    np.testing.assert_allclose(back.correlation, -a.correlation, rtol=0, atol=tol)


def test_flat_book_has_nothing_to_attribute() -> None:
    cov = cov_of(VOLS, CORR)
    a = attribute_drift(np.zeros(3), cov, X, cov)
    assert np.isnan(a.share_ref).all()
    assert np.isnan(a.positions).all()
    assert np.isnan(a.residual).all()
    assert a.sigma_ref_usd == 0.0


def test_unheld_asset_without_covariance_is_no_obstacle() -> None:
    cov = np.full((4, 4), np.nan)
    cov[:3, :3] = cov_of(VOLS, CORR)
    x = np.append(X, 0.0)
    vols1 = np.append(VOLS * np.array([2.0, 1.0, 1.0]), np.nan)
    cov1 = np.full((4, 4), np.nan)
    cov1[:3, :3] = cov_of(vols1[:3], CORR)
    a = attribute_drift(x, cov, x, cov1)
    full = attribute_drift(X, cov_of(VOLS, CORR), X, cov_of(vols1[:3], CORR))
    np.testing.assert_allclose(a.volatility[:3], full.volatility, rtol=0, atol=1e-15)
    assert a.volatility[3] == 0.0


def _attribution(share_now: list[float], vol: float, corr: float, pos: float) -> DriftAttribution:
    now = np.array(share_now)
    z = np.zeros(3)
    total = z.copy()
    total[0] = vol + corr + pos
    part = [z.copy(), z.copy(), z.copy()]
    for arr, v in zip(part, (pos, vol, corr), strict=True):
        arr[0] = v
    return DriftAttribution(
        share_ref=now - total,
        share_now=now,
        total=total,
        positions=part[0],
        volatility=part[1],
        correlation=part[2],
        residual=z,
        sigma_ref_usd=1.0,
        sigma_now_usd=1.0,
    )


def test_summary_text_of_the_issue() -> None:
    a = _attribution([0.52, 0.30, 0.18], vol=0.12, corr=0.05, pos=0.02)
    budget = np.full(3, 1.0 / 3.0)
    assert drift_summary(NAMES, a, budget, "24h") == (
        "main: BTC 52% of risk vs 33% budget; since 24h: "
        "+12 pts vol, +5 pts correlation, +2 pts positions"
    )
    # Largest magnitude first, negative parts signed, no "-0".
    b = _attribution([0.10, 0.45, 0.45], vol=-0.004, corr=0.03, pos=-0.2)
    assert drift_summary(NAMES, b, budget, "rebalance") == (
        "main: BTC 10% of risk vs 33% budget; since rebalance: "
        "-20 pts positions, +3 pts correlation, +0 pts vol"
    )


def test_summary_of_a_real_attribution_and_of_missing_data() -> None:
    vols1 = VOLS * np.array([2.0, 1.0, 1.0])
    a = attribute_drift(X, cov_of(VOLS, CORR), X, cov_of(vols1, CORR))
    budget = np.full(3, 1.0 / 3.0)
    p0, p1 = shares(X, cov_of(VOLS, CORR)), shares(X, cov_of(vols1, CORR))
    main = int(np.argmax(np.abs(p1 - budget)))
    assert main == 0
    pts = round(100 * (p1[0] - p0[0]))
    assert drift_summary(NAMES, a, budget, "24h") == (
        f"main: BTC {round(100 * p1[0])}% of risk vs 33% budget; since 24h: "
        f"+{pts} pts vol, +0 pts correlation, +0 pts positions"
    )
    flat = attribute_drift(np.zeros(3), cov_of(VOLS, CORR), X, cov_of(VOLS, CORR))
    assert drift_summary(NAMES, flat, budget, "24h").endswith("since 24h: attribution n/a")
    assert drift_summary(NAMES, flat, np.full(3, np.nan), "24h") == "main: n/a"
