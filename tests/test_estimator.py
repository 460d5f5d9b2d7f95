"""RollingEstimator against independent computations.

The reference below is the README's RiskMetrics recursion written with plain Python
loops and floats (no numpy matrix operations), so it shares no code path with the
vectorised estimator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest

from monitor.quant.estimator import RollingEstimator

FloatArray = npt.NDArray[np.float64]

INTERVAL_MS = 1_000
HALFLIFE_MS = 300_000  # 300 steps
FAST_HALFLIFE_MS = 60_000  # 60 steps
WARMUP_MS = 10_000  # 10 returns
YEAR_MS = 365 * 86_400 * 1_000
ANN = YEAR_MS / INTERVAL_MS

RESTART = None  # a row of the reference input meaning "restart() here"


def reference(
    rows: Sequence[Sequence[float] | None], lam: float
) -> tuple[list[list[float]], list[int]]:
    """Per-step covariance S (NaN without a joint return) and returns per asset.

    ``rows`` are the sampled prices (NaN, <= 0 or inf = no price), one per grid step;
    ``None`` means the previous prices are forgotten. Variances over each asset's own
    history; off the diagonal ``sd_i sd_j rho_ij`` with ``rho_ij`` measured over the pair's
    joint steps (both variances over the same steps as the covariance). The cross products
    add the lead-lag terms: when asset i's price moves, its move times asset j's log moves
    after the sample of i's previous move and before this one (each pair of moves once;
    j's move on the same sample is the plain product).
    """
    n = max(len(r) for r in rows if r is not None)
    nan = math.nan
    start = [[nan] * n for _ in range(n)]  # ln P_j at the sample before i's interval began
    raw = [[0.0] * n for _ in range(n)]
    sq = [[0.0] * n for _ in range(n)]  # r_i^2 over the steps joint with j
    wgt = [[0.0] * n for _ in range(n)]
    cnt = [0] * n
    prev: list[float] = [math.nan] * n
    for row in rows:
        if row is None:
            prev = [math.nan] * n
            continue
        cur = [math.nan] * n
        for i, p in enumerate(row):
            if math.isfinite(p) and p > 0.0:
                cur[i] = p
        ret: list[float | None] = [None] * n
        for i in range(n):
            if not (math.isnan(cur[i]) or math.isnan(prev[i])):
                ret[i] = math.log(cur[i] / prev[i])
                cnt[i] += 1
        lp = [math.log(p) if math.isfinite(p) else nan for p in prev]
        lead = [[0.0] * n for _ in range(n)]
        for i in range(n):
            ri = ret[i]
            if ri is None or ri == 0.0:
                continue
            for j in range(n):
                d = lp[j] - start[i][j]
                if j != i and math.isfinite(d):
                    lead[i][j] = ri * d
        # An interval starts at a move (or a first price): j's moves from now on pair
        # with it (all prices are observed at the sample: none ticked after another).
        lc = [math.log(p) if math.isfinite(p) else nan for p in cur]
        chain = [i for i in range(n) if math.isfinite(cur[i]) and math.isnan(prev[i])]
        for i in range(n):
            ri = ret[i]
            if (ri is not None and ri != 0.0) or i in chain:
                start[i] = list(lc)
        for i in chain:  # the others' intervals pair with a new asset's moves from now on
            for k in range(n):
                start[k][i] = lc[i]
        for i in range(n):
            ri = ret[i]
            for j in range(n):
                rj = ret[j]
                if ri is not None and rj is not None:
                    prod = ri * rj + lead[i][j] + lead[j][i]
                    raw[i][j] = lam * raw[i][j] + (1.0 - lam) * prod
                    sq[i][j] = lam * sq[i][j] + (1.0 - lam) * ri * ri
                    wgt[i][j] = lam * wgt[i][j] + (1.0 - lam)
        prev = cur
    var = [raw[i][i] / wgt[i][i] if wgt[i][i] > 0.0 else math.nan for i in range(n)]
    cov = [[math.nan] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if wgt[i][j] == 0.0:
                continue
            if i == j:
                cov[i][j] = var[i]
            elif sq[i][j] > 0.0 and sq[j][i] > 0.0:
                rho = raw[i][j] / math.sqrt(sq[i][j] * sq[j][i])
                cov[i][j] = math.sqrt(var[i] * var[j]) * min(1.0, max(-1.0, rho))
            else:  # one of them never moved on their joint steps
                cov[i][j] = 0.0
    return cov, cnt


def ref_figures(
    rows: Sequence[Sequence[float] | None], halflife_ms: int
) -> tuple[FloatArray, FloatArray, FloatArray, list[int]]:
    """Annualised covariance, volatility, correlation (clipped) and returns, from loops."""
    lam = 0.5 ** (INTERVAL_MS / halflife_ms)
    s, cnt = reference(rows, lam)
    n = len(s)
    cov = [[s[i][j] * ANN for j in range(n)] for i in range(n)]
    vol = [math.sqrt(cov[i][i]) for i in range(n)]
    corr = [[math.nan] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i == j and cnt[i] > 0:
                corr[i][j] = 1.0
            elif vol[i] > 0.0 and vol[j] > 0.0:  # False for NaN
                corr[i][j] = min(1.0, max(-1.0, cov[i][j] / (vol[i] * vol[j])))
    return np.array(cov), np.array(vol), np.array(corr), cnt


def gbm_prices(n_steps: int, seed: int = 7) -> FloatArray:
    """Correlated GBM index prices, shape (n_steps, 4), one row per 1 s grid point."""
    rng = np.random.default_rng(seed)
    vol = np.array([0.6, 0.8, 1.1, 0.4])  # annualised
    corr = np.array(
        [
            [1.0, 0.8, 0.6, 0.3],
            [0.8, 1.0, 0.7, 0.4],
            [0.6, 0.7, 1.0, 0.5],
            [0.3, 0.4, 0.5, 1.0],
        ]
    )
    dt = INTERVAL_MS / YEAR_MS
    chol = np.linalg.cholesky(corr)
    z = rng.standard_normal((n_steps, 4)) @ chol.T
    # Vols triple at 85% of the path, so slow and fast estimates differ materially.
    scale = np.where(np.arange(n_steps)[:, None] < int(0.85 * n_steps), 1.0, 3.0)
    steps = -0.5 * (vol * scale) ** 2 * dt + vol * scale * math.sqrt(dt) * z
    start = np.log([60_000.0, 3_000.0, 150.0, 0.5])
    out: FloatArray = np.exp(start + np.cumsum(steps, axis=0))
    return out


def make() -> RollingEstimator:
    return RollingEstimator(INTERVAL_MS, HALFLIFE_MS, FAST_HALFLIFE_MS, WARMUP_MS)


def feed(est: RollingEstimator, rows: Sequence[Sequence[float] | None]) -> None:
    for row in rows:
        if row is None:
            est.restart()
        else:
            est.sample(np.asarray(row, dtype=np.float64))


def assert_matches_reference(
    est: RollingEstimator, rows: Sequence[Sequence[float] | None], rtol: float = 1e-9
) -> None:
    for fast, halflife in ((False, HALFLIFE_MS), (True, FAST_HALFLIFE_MS)):
        cov, vol, corr, cnt = ref_figures(rows, halflife)
        np.testing.assert_allclose(est.covariance(fast), cov, rtol=rtol, atol=0.0)
        np.testing.assert_allclose(est.volatility(fast), vol, rtol=rtol, atol=0.0)
        np.testing.assert_allclose(est.correlation(fast), corr, rtol=rtol, atol=0.0)
        np.testing.assert_array_equal(est.returns, cnt)


def as_rows(prices: FloatArray) -> list[Sequence[float] | None]:
    return [list(map(float, row)) for row in prices]


# -- 1. the recursion ---------------------------------------------------------------------


@pytest.mark.parametrize("holes", [False, True], ids=["clean", "holes"])
def test_matches_loop_recursion_on_gbm(holes: bool) -> None:
    prices = gbm_prices(3_000)
    if holes:
        # Each asset misses ~3% of grid points at random: every pair has its own history.
        rng = np.random.default_rng(11)
        prices[rng.random(prices.shape) < 0.03] = np.nan
    rows = as_rows(prices)
    est = make()
    feed(est, rows)
    assert_matches_reference(est, rows)
    # The regime change must show: the fast estimator has seen mostly the 3x vol regime.
    ratio = est.volatility(fast=True) / est.volatility()
    assert np.all(ratio > 1.1)


def test_matches_polars_adjusted_ewm_mean() -> None:
    # Every price moves at every step, all observed at the sample (synchronous feeds): no
    # interval overlaps another step's, so there are no lead-lag terms. Variances and
    # correlations are adjusted EWM means (polars), the correlation with both variances
    # over the same steps.
    prices = gbm_prices(2_000, seed=3)
    est = make()
    for row in prices:
        est.sample(row)
    r = np.diff(np.log(prices), axis=0)
    for fast, halflife_ms in ((False, HALFLIFE_MS), (True, FAST_HALFLIFE_MS)):

        def ewm(x: FloatArray, hl: float = halflife_ms / INTERVAL_MS) -> float:
            return float(pl.Series(x).ewm_mean(half_life=hl, adjust=True)[-1])

        per_step = est.covariance(fast) / ANN
        var = [ewm(r[:, i] * r[:, i]) for i in range(4)]
        for i in range(4):
            assert per_step[i, i] == pytest.approx(var[i], rel=1e-9, abs=0.0)
            for j in range(4):
                if i == j:
                    continue
                rho = ewm(r[:, i] * r[:, j]) / math.sqrt(var[i] * var[j])
                want = math.sqrt(var[i] * var[j]) * rho
                assert per_step[i, j] == pytest.approx(want, rel=1e-9, abs=0.0)


# -- 3. late joiner -----------------------------------------------------------------------


@pytest.mark.parametrize("appended", [True, False], ids=["n-grows", "nan-until-k"])
def test_late_joiner_leaves_others_untouched(appended: bool) -> None:
    prices = gbm_prices(1_500, seed=5)
    k = 700
    base = make()
    for row in prices[:, :3]:
        base.sample(row)

    est = make()
    for t, row in enumerate(prices):
        if t < k:
            est.sample(row[:3] if appended else np.append(row[:3], np.nan))
        else:
            est.sample(row)

    assert est.n_assets == 4
    for fast in (False, True):
        # Elementwise IEEE arithmetic: the others' entries are the same operations on the
        # same numbers, so they agree to the last bit or nearly (rtol far below any leak).
        np.testing.assert_allclose(
            est.covariance(fast)[:3, :3], base.covariance(fast), rtol=1e-14, atol=0.0
        )
        np.testing.assert_allclose(
            est.correlation(fast)[:3, :3], base.correlation(fast), rtol=1e-14, atol=0.0
        )
    np.testing.assert_array_equal(est.returns[:3], base.returns)
    assert est.returns[3] == len(prices) - k - 1

    # Its own row and column: the loop reference over the same rows (NaN for it before k).
    # Its variance and correlations start at its first return; its covariances scale those
    # correlations by the others' full-history volatilities.
    full = as_rows(prices)
    for t in range(k):
        full[t] = [*prices[t, :3], math.nan]
    for fast, halflife in ((False, HALFLIFE_MS), (True, FAST_HALFLIFE_MS)):
        _, vol, _, _ = ref_figures(as_rows(prices[k:]), halflife)
        np.testing.assert_allclose(est.volatility(fast)[3], vol[3], rtol=1e-9, atol=0.0)
        cov, _, corr, _ = ref_figures(full, halflife)
        np.testing.assert_allclose(est.correlation(fast)[3], corr[3], rtol=1e-9, atol=0.0)
        np.testing.assert_allclose(est.correlation(fast)[:, 3], corr[:, 3], rtol=1e-9, atol=0.0)
        np.testing.assert_allclose(est.covariance(fast)[3], cov[3], rtol=1e-9, atol=0.0)
        np.testing.assert_allclose(est.covariance(fast)[:, 3], cov[:, 3], rtol=1e-9, atol=0.0)


# -- 4. steps > 1 -------------------------------------------------------------------------


def test_steps_equal_repeated_samples() -> None:
    prices = gbm_prices(400, seed=9)
    prices[:50, 2] = np.nan  # asset 2 gets its first price on a multi-step call
    prices[200:230, 1] = np.nan  # asset 1 loses its price for a while
    steps_at = {50: 7, 120: 3, 210: 25, 300: 1_000, 301: 2}

    closed = make()
    looped = make()
    rows: list[Sequence[float] | None] = []
    for t, row in enumerate(prices):
        s = steps_at.get(t, 1)
        closed.sample(row, steps=s)
        for _ in range(s):
            looped.sample(row)
            rows.append(list(map(float, row)))

    np.testing.assert_array_equal(closed.returns, looped.returns)
    np.testing.assert_array_equal(closed.joint_returns, looped.joint_returns)
    for fast in (False, True):
        np.testing.assert_allclose(
            closed.covariance(fast), looped.covariance(fast), rtol=1e-12, atol=0.0
        )
        np.testing.assert_allclose(
            closed.correlation(fast), looped.correlation(fast), rtol=1e-12, atol=0.0
        )
    # And both equal the loop reference over the expanded grid.
    assert_matches_reference(closed, rows)
    # Asset 2 was priced for 7 grid points at t=50: 6 zero returns, then one per step.
    assert closed.returns[2] == 6 + (len(prices) - 51) + (3 - 1) + (25 - 1) + (1_000 - 1) + 1


def test_zero_returns_decay_in_closed_form() -> None:
    est = RollingEstimator(INTERVAL_MS, HALFLIFE_MS, FAST_HALFLIFE_MS, 0)
    est.sample(np.array([100.0]))
    est.sample(np.array([110.0]), steps=4)  # one return ln(1.1), then 3 zero returns
    lam, _ = est.lambdas
    r = math.log(1.1)
    # adjust=True mean of [r^2, 0, 0, 0] with weights lam^3, lam^2, lam, 1.
    expected = r * r * lam**3 / (1 + lam + lam**2 + lam**3) * ANN
    assert est.covariance()[0, 0] == pytest.approx(expected, rel=1e-12)
    assert est.returns.tolist() == [4]


# -- 5. restart ---------------------------------------------------------------------------


def test_restart_skips_one_return() -> None:
    prices = gbm_prices(600, seed=13)
    rows = as_rows(prices)
    est = make()
    feed(est, rows[:300])
    before_cov = est.covariance()
    before_cnt = est.returns

    est.restart()
    est.sample(prices[300])
    np.testing.assert_array_equal(est.returns, before_cnt)
    np.testing.assert_array_equal(est.covariance(), before_cov)

    feed(est, rows[301:])
    np.testing.assert_array_equal(est.returns, before_cnt + len(rows) - 301)
    assert_matches_reference(est, [*rows[:300], RESTART, *rows[300:]])


# -- 6. warm-up, NaN, annualisation, growth, shapes ---------------------------------------


def test_nan_before_any_return_and_shapes() -> None:
    est = make()
    assert est.n_assets == 0
    assert est.covariance().shape == (0, 0)
    est.sample(np.array([100.0, np.nan]))
    assert est.n_assets == 2
    assert np.isnan(est.covariance()).all()
    assert np.isnan(est.volatility()).all()
    assert np.isnan(est.correlation()).all()
    assert est.returns.tolist() == [0, 0]

    est.sample(np.array([101.0, 50.0]))  # asset 0 has a return; asset 1 its first price
    cov, vol, corr = est.covariance(), est.volatility(), est.correlation(fast=True)
    assert (cov.shape, vol.shape, corr.shape) == ((2, 2), (2,), (2, 2))
    assert cov.dtype == np.float64
    assert est.returns.dtype == np.int64
    assert est.warm.dtype == np.bool_
    assert est.joint_returns.tolist() == [[1, 0], [0, 0]]
    assert math.isfinite(vol[0])
    assert np.isnan(vol[1])
    assert corr[0, 0] == 1.0
    assert np.isnan([corr[0, 1], corr[1, 0], corr[1, 1], cov[0, 1], cov[1, 1]]).all()


@pytest.mark.parametrize("interval_ms", [1_000, 60_000, 250])
def test_annualisation(interval_ms: int) -> None:
    est = RollingEstimator(interval_ms, 10 * interval_ms, 2 * interval_ms, 0)
    est.sample(np.array([100.0, 50.0]))
    est.sample(np.array([105.0, 49.0]))
    # One return: the bias-corrected mean of one product is the product itself.
    a, b = math.log(1.05), math.log(49.0 / 50.0)
    steps_per_year = 365 * 24 * 3600 * 1000 / interval_ms
    for fast in (False, True):
        cov = est.covariance(fast)
        assert cov[0, 0] == pytest.approx(a * a * steps_per_year, rel=1e-13)
        assert cov[0, 1] == pytest.approx(a * b * steps_per_year, rel=1e-13)
        assert est.volatility(fast)[1] == pytest.approx(abs(b) * math.sqrt(steps_per_year))
        np.testing.assert_allclose(
            est.correlation(fast), [[1.0, -1.0], [-1.0, 1.0]], rtol=1e-15, atol=0.0
        )
    assert est.annualisation == pytest.approx(steps_per_year, rel=1e-15)


def test_lambdas() -> None:
    est = RollingEstimator(1_000, 3_600_000, 600_000, 0)
    slow, fast = est.lambdas
    assert slow == pytest.approx(math.exp(-math.log(2) / 3_600), rel=1e-15)
    assert fast == pytest.approx(math.exp(-math.log(2) / 600), rel=1e-15)
    assert fast < slow < 1.0


def test_warm_flags() -> None:
    est = make()  # warm after 10 returns of 1 s
    est.sample(np.array([100.0, np.nan]))
    for t in range(9):
        est.sample(np.array([100.0 + t, np.nan if t < 5 else 10.0]))
    assert est.returns.tolist() == [9, 3]
    assert est.warm.tolist() == [False, False]
    est.sample(np.array([120.0, 11.0]))
    assert est.returns.tolist() == [10, 4]
    assert est.warm.tolist() == [True, False]
    est.sample(np.array([121.0, 11.0]), steps=6)  # zero returns count toward warm-up
    assert est.returns.tolist() == [16, 10]
    assert est.warm.tolist() == [True, True]

    assert RollingEstimator(1_000, 60_000, 6_000, 0).warm.tolist() == []
    cold = RollingEstimator(1_000, 60_000, 6_000, 0)
    cold.sample(np.array([1.0]))
    assert cold.warm.tolist() == [True]  # warmup 0: warm with no returns at all


def test_growth_beyond_capacity_keeps_state() -> None:
    # 20 assets appended one at a time (several capacity doublings) vs all present as NaN.
    rng = np.random.default_rng(17)
    n, t_max = 20, 200
    prices = 100.0 * np.exp(np.cumsum(0.01 * rng.standard_normal((t_max, n)), axis=0))
    rows: list[Sequence[float] | None] = []
    est = make()
    for t in range(t_max):
        k = min(n, 1 + t // 5)  # asset a appears at t = 5 * (a - 1)
        est.sample(prices[t, :k])
        assert est.n_assets == k
        rows.append([*map(float, prices[t, :k]), *([math.nan] * (n - k))])
    assert_matches_reference(est, rows)


# -- 7. bad input -------------------------------------------------------------------------


def test_non_positive_and_infinite_prices_are_no_price() -> None:
    prices = gbm_prices(300, seed=19)
    prices[40, 0] = 0.0
    prices[41, 0] = -5.0
    prices[42, 0] = -4.0  # two negative prices in a row must not make a return
    prices[90, 1] = np.inf
    prices[150, 2] = -np.inf
    prices[151, 3] = np.nan
    rows = as_rows(prices)
    est = make()
    with np.errstate(all="raise"):  # and no floating-point warning on the way
        feed(est, rows)
    assert np.isfinite(est.covariance()).all()
    assert_matches_reference(est, rows)
    # Each bad price costs two returns (into and out of it); three in a row cost four.
    assert est.returns.tolist() == [299 - 4, 299 - 2, 299 - 2, 299 - 2]


def test_rejects_shrinking_and_bad_arguments() -> None:
    est = make()
    est.sample(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="already has 2"):
        est.sample(np.array([1.0]))
    with pytest.raises(ValueError, match="steps"):
        est.sample(np.array([1.0, 2.0]), steps=0)
    with pytest.raises(ValueError, match="1-D"):
        est.sample(np.ones((2, 2)))
    with pytest.raises(ValueError, match="positive"):
        RollingEstimator(0, 1_000, 1_000, 0)
    with pytest.raises(ValueError, match="warmup"):
        RollingEstimator(1_000, 1_000, 1_000, -1)


# -- correlation details ------------------------------------------------------------------


def test_late_joiner_in_a_spike_gets_its_true_correlation() -> None:
    # Asset 0 has a long calm history; asset 1 joins during a volatility spike, correlated
    # 0.5 with asset 0. The pair's correlation must be the one of their joint returns
    # (weighted as the EWMA weighs them), not a spike-time covariance over a calm-time
    # variance (which gave 1.83, clipped to 1, and a book with zero risk).
    rng = np.random.default_rng(3)
    est = RollingEstimator(INTERVAL_MS, 60_000, 10_000, 0)
    calm = 0.3 * math.sqrt(INTERVAL_MS / YEAR_MS)
    r0 = calm * rng.standard_normal(600)
    p0 = 100.0 * np.exp(np.cumsum(r0))
    for p in p0:
        est.sample(np.array([p, np.nan]))
    z = rng.standard_normal((120, 2))
    spike = 3.0 * calm
    j0 = spike * z[:, 0]
    j1 = spike * (0.5 * z[:, 0] + math.sqrt(0.75) * z[:, 1])
    q0 = p0[-1] * np.exp(np.cumsum(j0))
    q1 = 10.0 * np.exp(np.cumsum(j1))
    for a, b in zip(q0, q1, strict=True):
        est.sample(np.array([a, b]))
    # Joint returns: asset 1's first price yields none (synchronous: no lead-lag terms).
    a0, a1 = j0[1:], j1[1:]
    hl = 60_000 / INTERVAL_MS

    def ewm(x: FloatArray) -> float:
        return float(pl.Series(x).ewm_mean(half_life=hl, adjust=True)[-1])

    rho = ewm(a0 * a1) / math.sqrt(ewm(a0 * a0) * ewm(a1 * a1))
    corr = est.correlation()
    assert corr[0, 1] == pytest.approx(rho, rel=1e-9)
    assert 0.2 < corr[0, 1] < 0.8  # near the true 0.5, far from the old 1.0
    var0 = ewm(np.concatenate([r0[1:], j0]) ** 2) / INTERVAL_MS * YEAR_MS
    var1 = ewm(a1 * a1) / INTERVAL_MS * YEAR_MS
    assert est.covariance()[0, 1] == pytest.approx(math.sqrt(var0 * var1) * rho, rel=1e-9)


def test_zero_variance_correlation_is_nan() -> None:
    est = make()
    for p in (100.0, 101.0, 100.5):
        est.sample(np.array([p, 7.0]))  # asset 1 never moves
    corr = est.correlation()
    assert corr[1, 1] == 1.0
    assert np.isnan(corr[0, 1])
    assert est.volatility()[1] == 0.0


def test_accessors_cannot_corrupt_the_estimator() -> None:
    """Figures are computed once per sample and shared read-only; counts are copies."""
    est = make()
    est.sample(np.array([100.0, 10.0]))
    est.sample(np.array([101.0, 10.5]))
    cov, corr, vol, cnt = est.covariance(), est.correlation(), est.volatility(), est.returns
    expected = cov.copy()
    for shared in (cov, corr, vol):
        with pytest.raises(ValueError, match="read-only"):
            shared[0] = 0.0
    assert est.covariance() is cov  # no new sample: the same arrays
    cnt[:] = 99
    np.testing.assert_array_equal(est.covariance(), expected)
    assert est.returns.tolist() == [1, 1]
    est.sample(np.array([102.0, 10.4]))
    assert est.covariance() is not cov  # a new sample: recomputed
    assert est.returns.tolist() == [2, 2]


def test_caller_array_is_not_kept() -> None:
    est = make()
    row = np.array([100.0, 10.0])
    est.sample(row)
    row[:] = [200.0, 20.0]  # the engine reuses its buffer
    est.sample(np.array([101.0, 10.1]))
    assert est.covariance()[0, 0] == pytest.approx(math.log(1.01) ** 2 * ANN, rel=1e-12)


# -- staleness per asset -------------------------------------------------------------------


def test_a_stale_asset_contributes_no_return_and_the_others_go_on() -> None:
    # Asset 0's index is silent for longer than max_gap at grid points 100..149 (its last
    # price repeats): no return there, and the first after the silence is dropped, exactly
    # as if its price were unknown at those points; the other assets are untouched.
    prices = gbm_prices(600, seed=13)
    ages = np.zeros(prices.shape)
    ages[100:150, 0] = 10_000.0  # ms since its last tick, > max_gap
    held = prices.copy()
    held[100:150, 0] = prices[99, 0]  # what the engine would hand over: the last price
    est = RollingEstimator(INTERVAL_MS, HALFLIFE_MS, FAST_HALFLIFE_MS, WARMUP_MS, max_gap_ms=5_000)
    for row, age in zip(held, ages, strict=True):
        est.sample(row, ages_ms=age)
    unknown = prices.copy()
    unknown[100:150, 0] = np.nan
    assert_matches_reference(est, as_rows(unknown))
    assert not est.stale.any()
    est.sample(held[-1], ages_ms=np.array([6_000.0, 0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(est.stale, [True, False, False, False])


def test_steps_stop_feeding_zero_returns_once_an_asset_is_stale() -> None:
    # A tick closes 10 grid points at once (nothing ticked in between); max_gap 5 s.
    # Asset 0 last ticked 2.5 s before the first of them: it takes the grid points at ages
    # 2.5, 3.5 and 4.5 s (the first step's return plus 2 zero returns), then is stale.
    # Asset 1 ticked at the first point: ages 0 to 5 s, the return plus 5 zero returns.
    est = RollingEstimator(INTERVAL_MS, HALFLIFE_MS, FAST_HALFLIFE_MS, 0, max_gap_ms=5_000)
    est.sample(np.array([100.0, 50.0]))
    est.sample(np.array([101.0, 51.0]), steps=10, ages_ms=np.array([2_500.0, 0.0]))
    np.testing.assert_array_equal(est.returns, [3, 6])
    np.testing.assert_array_equal(est.joint_returns[0, 1], 3)
    np.testing.assert_array_equal(est.stale, [True, True])
    lam = 0.5 ** (INTERVAL_MS / HALFLIFE_MS)
    # One return ln(1.01) then 2 zero returns: the bias-corrected EWMA of the squares is
    # ln(1.01)^2 lam^2 (1 - lam) / (1 - lam^3).
    want = math.log(1.01) ** 2 * lam**2 * (1 - lam) / (1 - lam**3) * ANN
    assert est.covariance()[0, 0] == pytest.approx(want, rel=1e-12)
    # The next prices start new chains: no return spans the silence.
    est.sample(np.array([120.0, 60.0]), ages_ms=np.array([0.0, 0.0]))
    np.testing.assert_array_equal(est.returns, [3, 6])
