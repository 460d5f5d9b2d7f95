"""monitor.quant.backtest against hand computations.

References: binomial probabilities summed with ``math.comb``, the normal distribution of
``statistics.NormalDist``, Kupiec's log-likelihood ratio written out with ``math.log``,
the chi-squared(1) tail as ``erfc(sqrt(LR / 2))``, plain-Python rolling windows, and a
Monte Carlo of the first red observation.
"""

from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import pytest

from monitor.quant.backtest import (
    ZONES,
    backtest,
    exception_probability,
    held_pnl,
    held_pnl_by,
    kupiec,
    observations_to_red,
    red_probability,
    rolling_backtest,
    traffic_light,
)

FloatArray = npt.NDArray[np.float64]
Z99 = NormalDist().inv_cdf(0.99)


def binom_cdf(x: int, n: int, p: float) -> float:
    """Exact ``P(X <= x)`` with rational arithmetic (p given as a decimal)."""
    pf = Fraction(str(p))
    return float(sum(math.comb(n, k) * pf**k * (1 - pf) ** (n - k) for k in range(x + 1)))


def hand_zone(x: int, n: int, p: float) -> str:
    c = binom_cdf(x, n, p)
    return "green" if c < 0.95 else "yellow" if c < 0.9999 else "red"


def hand_kupiec(x: int, n: int, p: float) -> tuple[float, float]:
    ll_null = (n - x) * math.log(1 - p) + (x * math.log(p) if x else 0.0)
    ph = x / n
    ll_alt = (n - x) * math.log(1 - ph) if x < n else 0.0
    ll_alt += x * math.log(ph) if x else 0.0
    lr = -2.0 * (ll_null - ll_alt)
    return lr, math.erfc(math.sqrt(lr / 2.0))  # chi-squared(1) tail


def test_basel_table_250_observations_at_99() -> None:
    x = np.arange(0, 16)
    zones = [ZONES[c] for c in traffic_light(x, 250, 0.99)]
    assert zones == ["green"] * 5 + ["yellow"] * 5 + ["red"] * 6
    assert zones == [hand_zone(int(k), 250, 0.01) for k in x]
    # Basel's published cumulative probabilities: 4 -> 89.22%, 5 -> 95.88%, 9 -> 99.97%,
    # 10 -> 99.99%.
    assert binom_cdf(4, 250, 0.01) == pytest.approx(0.8922, abs=5e-5)
    assert binom_cdf(5, 250, 0.01) == pytest.approx(0.9588, abs=5e-5)
    assert binom_cdf(9, 250, 0.01) == pytest.approx(0.9997, abs=5e-5)
    assert binom_cdf(10, 250, 0.01) == pytest.approx(0.99995, abs=5e-6)
    # Below min_obs no zone; at 50 observations red starts at 5 exceptions.
    assert hand_zone(4, 50, 0.01) == "yellow"
    assert hand_zone(5, 50, 0.01) == "red"
    codes = traffic_light([5, 5, 4, 5], np.array([10, 49, 50, 50]), 0.99, min_obs=50)
    assert codes.tolist() == [-1, -1, 1, 2]


@pytest.mark.parametrize(("seed", "vol_ratio"), [(1, 1.0), (2, 1.0), (3, 1.3), (4, 0.7), (5, 2.0)])
def test_kupiec_and_zone_on_simulated_pnl_equal_a_hand_computation(
    seed: int, vol_ratio: float
) -> None:
    # P&L ~ N(0, (k sigma)^2), VaR = z sigma: exception probability Phi(-z / k).
    rng = np.random.default_rng(seed)
    sigma = 1e5
    pnl = rng.standard_normal(400) * sigma * vol_ratio
    var = np.full(400, Z99 * sigma)
    var[[3, 77]] = np.nan  # no prediction on two days: skipped
    res = backtest(pnl, var, 0.99)
    used = [i for i in range(400) if i not in (3, 77)][-250:]
    x = sum(1 for i in used if pnl[i] < -var[i])
    assert (res.n_obs, res.exceptions) == (250, x)
    lr, pv = hand_kupiec(x, 250, 0.01)
    assert res.kupiec_lr == pytest.approx(lr, rel=1e-12, abs=1e-12)
    assert res.kupiec_p_value == pytest.approx(pv, rel=1e-9, abs=1e-15)
    assert res.zone == hand_zone(x, 250, 0.01)
    assert res.cumulative_probability == pytest.approx(binom_cdf(x, 250, 0.01), rel=1e-12)
    assert res.expected == pytest.approx(2.5)


def test_kupiec_edges_by_hand() -> None:
    lr, pv = kupiec([0, 250, 2], [250, 250, 250], 0.99)
    assert lr[0] == pytest.approx(-2 * 250 * math.log(0.99), rel=1e-13)
    assert lr[1] == pytest.approx(-2 * 250 * math.log(0.01), rel=1e-13)
    assert lr[2] == pytest.approx(hand_kupiec(2, 250, 0.01)[0], rel=1e-12)
    assert pv[2] == pytest.approx(hand_kupiec(2, 250, 0.01)[1], rel=1e-9)
    lr0, _ = kupiec(0, 0, 0.99)
    assert math.isnan(float(lr0))


def test_rolling_backtest_equals_window_by_window() -> None:
    rng = np.random.default_rng(9)
    n = 140
    pnl = rng.standard_normal(n) * 2.0
    var = np.full(n, Z99)
    var[rng.choice(n, 15, replace=False)] = np.nan
    window, min_obs = 60, 20
    roll = rolling_backtest(pnl, var, 0.99, window=window, min_obs=min_obs)
    valid_idx: list[int] = []
    for t in range(n):
        if math.isfinite(var[t]):
            valid_idx.append(t)
        last = valid_idx[-window:]
        x = sum(1 for i in last if pnl[i] < -var[i])
        assert roll.exceptions[t] == x
        assert roll.n_obs[t] == len(last)
        code = -1 if len(last) < min_obs else ZONES.index(hand_zone(x, len(last), 0.01))
        assert roll.zone[t] == code
        single = backtest(pnl[: t + 1], var[: t + 1], 0.99, window=window, min_obs=min_obs)
        assert single.exceptions == x
    assert roll.exception.sum() == sum(
        1 for i in range(n) if math.isfinite(var[i]) and pnl[i] < -var[i]
    )


def test_twice_the_models_vol_turns_red_within_102_observations() -> None:
    # Exception probability with realised vol = 2 x model vol at 99%: Phi(-2.3263 / 2).
    q = NormalDist().cdf(-Z99 / 2.0)
    assert exception_probability(2.0, 0.99) == pytest.approx(q, rel=1e-12)
    assert q == pytest.approx(0.12238, abs=1e-5)
    n_red = observations_to_red(q, 0.99, window=250, min_obs=50, probability=0.99)
    assert n_red == 102
    pr = red_probability(q, 250, 0.99, min_obs=50)

    # Monte Carlo of the first red observation with the zone rule written by hand.
    red_min = {
        t: next(x for x in range(t + 1) if hand_zone(x, t, 0.01) == "red") for t in range(50, 103)
    }
    rng = np.random.default_rng(2026)
    paths = 20_000
    counts = np.cumsum(rng.random((paths, 102)) < q, axis=1)
    red_by: dict[int, float] = {}
    for t_end in (50, 101, 102):
        ever = np.zeros(paths, dtype=bool)
        for t in range(50, t_end + 1):
            ever |= counts[:, t - 1] >= red_min[t]
        red_by[t_end] = float(ever.mean())
    for t_end, frac in red_by.items():
        se = math.sqrt(pr[t_end - 1] * (1 - pr[t_end - 1]) / paths)
        assert frac == pytest.approx(pr[t_end - 1], abs=4 * se + 1e-4)
    assert pr[101] >= 0.99 > pr[100]

    # And one simulated book through the module's own rolling backtest.
    model_sigma = 1e5
    pnl = np.random.default_rng(7).standard_normal(250) * 2 * model_sigma
    roll = rolling_backtest(pnl, np.full(250, Z99 * model_sigma), 0.99, min_obs=50)
    first_red = int(np.argmax(roll.zone == 2)) + 1
    assert (roll.zone == 2).any()
    assert first_red <= 102


def test_a_correct_model_rarely_turns_red() -> None:
    # False alarm: probability of any red in the first 250 observations of a right model.
    pr = red_probability(0.01, 250, 0.99, min_obs=50)
    assert 0.0 < pr[-1] < 0.005
    assert observations_to_red(0.01) is None


def test_held_pnl_revalues_start_positions() -> None:
    # Start: 2 BTC perps (1 BTC each) and -3 calls; marks start/end in USD per contract.
    q = np.array([[2.0, 1.0], [-3.0, 0.0]])  # two books
    v0 = np.array([60_000.0, 2_500.0])
    v1 = np.array([57_000.0, 1_400.0])
    np.testing.assert_allclose(held_pnl(q, v0, v1), [2 * -3000 + -3 * -1100, -3000.0])
    # Generic form: positions and marks of any type.
    book = {"BTC": 2.0}
    start, end = {"BTC": 60_000.0}, {"BTC": 57_000.0}
    pnl = held_pnl_by(lambda pos, px: sum(pos[k] * px[k] for k in pos), book, start, end)
    assert pnl == pytest.approx(-6000.0)
