"""Implied volatility: round trips, reason codes, mixed vectorised batches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.special import ndtr

from monitor.model.instruments import parse_name
from monitor.quant.greeks import DAYS_PER_YEAR, black76_price
from monitor.quant.implied_vol import IVReason, implied_vol

FIXTURES = Path(__file__).parent / "fixtures"
EPS = float(np.finfo(np.float64).eps)
F0 = 60_000.0
MINUTE = 1.0 / (DAYS_PER_YEAR * 1440.0)


def _grid() -> tuple[
    npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]
]:
    strikes = F0 * np.exp(np.linspace(-2.0, 2.0, 41))
    expiries = np.array([5, 60, 1440, 7 * 1440, 30 * 1440, 91 * 1440, 365 * 1440, 730 * 1440])
    vols = np.geomspace(0.05, 3.0, 15)
    k, t, v, c = np.meshgrid(strikes, expiries * MINUTE, vols, [1.0, 0.0], indexing="ij")
    return k.ravel(), t.ravel(), v.ravel(), c.ravel().astype(bool)


def _price_noise_in_vol(
    k: npt.NDArray[np.float64],
    t: npt.NDArray[np.float64],
    v: npt.NDArray[np.float64],
    c: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """How far a few ulp of rounding in the price move the vol: the problem's own floor.

    The price ``w (F N(w d1) - K N(w d2))`` carries rounding of order eps times its larger
    term; divided by dPrice/dvol that is the vol error no solver can beat.
    """
    w = np.where(c, 1.0, -1.0)
    sd = v * np.sqrt(t)
    d1 = np.log(F0 / k) / sd + 0.5 * sd
    scale = F0 * ndtr(w * d1) + k * ndtr(w * (d1 - sd))
    dprice_dvol = F0 * np.exp(-0.5 * d1 * d1) / math.sqrt(2.0 * math.pi) * np.sqrt(t)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        noise: npt.NDArray[np.float64] = 8.0 * EPS * scale / dprice_dvol
    return np.where(np.isnan(noise), np.inf, noise)


def test_round_trip_over_grid() -> None:
    """Strikes exp(+-2), expiries 5 min .. 2 y, vols 5% .. 300%, calls and puts.

    Where the price carries the vol to better than 1e-11 the IV comes back within 1e-10
    relative; elsewhere (tiny time value on a large price) within that floor.
    """
    k, t, v, c = _grid()
    price = black76_price(F0, k, t, v, c)
    iv, reason = implied_vol(price, F0, k, t, c)
    noise = _price_noise_in_vol(k, t, v, c)
    has_time_value = price - np.maximum(np.where(c, F0 - k, k - F0), 0.0) > 0.0
    well_posed = has_time_value & (noise <= 1e-11 * v)

    assert np.all(reason[well_posed] == IVReason.OK)
    np.testing.assert_allclose(iv[well_posed], v[well_posed], rtol=1e-10, atol=0)
    # The strict check covers most of what has time value (the rest is deep in the money).
    assert well_posed.sum() > 0.8 * has_time_value.sum()
    ok = reason == IVReason.OK
    assert np.all(np.abs(iv[ok] - v[ok]) <= 1e-10 * v[ok] + noise[ok])
    # Nothing else: what is not solved has no time value left to show in a double.
    assert set(np.unique(reason[~ok])) <= {IVReason.NO_TIME_VALUE}
    assert np.all(np.isnan(iv[~ok]))
    # And whatever was solved reprices to the input.
    back = black76_price(F0, k[ok], t[ok], iv[ok], c[ok])
    scale = np.maximum(F0, k[ok])
    assert np.all(np.abs(back - price[ok]) <= 16 * EPS * scale)


def test_round_trip_random_book() -> None:
    rng = np.random.default_rng(7)
    n = 50_000
    f = rng.uniform(1_000.0, 100_000.0, n)
    k = f * np.exp(rng.normal(0.0, 0.4, n))
    t = rng.uniform(10 * MINUTE, 2.0, n)
    v = rng.uniform(0.05, 3.0, n)
    c = rng.random(n) < 0.5
    price = black76_price(f, k, t, v, c)
    iv, reason = implied_vol(price, f, k, t, c)
    solved = reason == IVReason.OK
    assert solved.mean() > 0.99
    tv = price - np.maximum(np.where(c, f - k, k - f), 0.0)
    informative = solved & (tv > 1e-6 * price)
    np.testing.assert_allclose(iv[informative], v[informative], rtol=1e-10, atol=0)


def test_at_the_money_and_extremes() -> None:
    f = 100.0
    cases = [  # strike, t, vol, is_call
        (100.0, 1.0, 0.5, True),  # exactly at the money (x = 0)
        (100.0, 1.0, 0.5, False),
        (100.0, 5 * MINUTE, 0.05, True),
        (100.0, 2.0, 3.0, True),  # s = 4.2: price close to the forward
        (130.0, 2.0, 3.0, False),  # close to the strike
        (70.0, 30 * MINUTE, 1.5, False),  # price 3e-219
        (101.0, MINUTE, 0.2, True),  # price 3e-288
        (97.0, 1440 * MINUTE, 0.5, True),  # in the money: time value 0.16 on a price of 3.16
    ]
    for k, t, vol, is_call in cases:
        price = black76_price(f, k, t, vol, is_call)
        iv, reason = implied_vol(price, f, k, t, is_call)
        assert reason == IVReason.OK
        assert float(iv) == pytest.approx(vol, rel=1e-10)


REASON_CASES = [  # price, forward, strike, t, is_call, reason
    (5.0, 100.0, 100.0, 0.0, True, IVReason.EXPIRED),
    (5.0, 100.0, 100.0, -0.1, False, IVReason.EXPIRED),
    (19.0, 100.0, 80.0, 0.5, True, IVReason.BELOW_INTRINSIC),
    (-0.01, 100.0, 120.0, 0.5, True, IVReason.BELOW_INTRINSIC),
    (20.0, 100.0, 120.0, 0.5, False, IVReason.NO_TIME_VALUE),
    (0.0, 100.0, 120.0, 0.5, True, IVReason.NO_TIME_VALUE),
    (100.0, 100.0, 80.0, 0.5, True, IVReason.ABOVE_MAX),
    (125.0, 100.0, 120.0, 0.5, False, IVReason.ABOVE_MAX),
    (float("nan"), 100.0, 100.0, 0.5, True, IVReason.INVALID_INPUT),
    (5.0, 0.0, 100.0, 0.5, True, IVReason.INVALID_INPUT),
    (5.0, 100.0, -1.0, 0.5, True, IVReason.INVALID_INPUT),
    (5.0, 100.0, 100.0, float("inf"), True, IVReason.INVALID_INPUT),
]


@pytest.mark.parametrize(("price", "f", "k", "t", "is_call", "want"), REASON_CASES)
def test_reasons(price: float, f: float, k: float, t: float, is_call: bool, want: int) -> None:
    iv, reason = implied_vol(price, f, k, t, is_call)
    assert reason == want
    assert np.isnan(iv)


def test_not_converged_is_reported_not_returned() -> None:
    price = black76_price(100.0, 140.0, 0.05, 0.3, True)
    iv, reason = implied_vol(price, 100.0, 140.0, 0.05, True, max_iter=1)
    assert reason == IVReason.NOT_CONVERGED
    assert np.isnan(iv)
    iv, reason = implied_vol(price, 100.0, 140.0, 0.05, True)
    assert reason == IVReason.OK
    assert float(iv) == pytest.approx(0.3, rel=1e-10)


def test_mixed_batch_matches_one_by_one() -> None:
    """Good and bad quotes interleaved, in a 2-D batch: same answers as one at a time."""
    rng = np.random.default_rng(3)
    good_k = 100.0 * np.exp(rng.normal(0.0, 0.2, 20))
    good_t = rng.uniform(0.1, 1.0, 20)
    good_c = rng.random(20) < 0.5
    good_v = rng.uniform(0.2, 1.5, 20)
    good_p = black76_price(100.0, good_k, good_t, good_v, good_c)
    rows = [(p, 100.0, k, t, c) for p, k, t, c in zip(good_p, good_k, good_t, good_c, strict=True)]
    rows += [case[:5] for case in REASON_CASES]
    order = rng.permutation(len(rows))
    cols = [np.array([rows[i][j] for i in order]).reshape(4, -1) for j in range(5)]
    iv, reason = implied_vol(*cols)
    assert iv.shape == reason.shape == (4, len(rows) // 4)
    assert reason.dtype == np.int8
    for pos, i in enumerate(order):
        one_iv, one_reason = implied_vol(*rows[i])
        assert reason.flat[pos] == one_reason
        np.testing.assert_equal(iv.flat[pos], one_iv)
    counts = np.bincount(reason.ravel(), minlength=len(IVReason))
    assert counts[IVReason.OK] == 20
    assert counts[IVReason.INVALID_INPUT] == 4
    assert counts[IVReason.NOT_CONVERGED] == 0


def test_scalar_and_broadcast_shapes() -> None:
    iv, reason = implied_vol(5.0, 100.0, 100.0, 0.25, True)
    assert iv.shape == reason.shape == ()
    k = np.array([90.0, 100.0, 110.0])
    price = black76_price(100.0, k, 0.25, 0.5, True)
    iv, reason = implied_vol(price, 100.0, k, 0.25, True)
    np.testing.assert_allclose(iv, 0.5, rtol=1e-10)
    iv, reason = implied_vol(np.empty((0, 3)), 100.0, k, 0.25, True)
    assert iv.shape == (0, 3)


@pytest.mark.parametrize(
    ("fixture", "mark_iv_tol"),
    [
        ("deribit_ticker_option.json", 0.005 + 1e-6),  # IV printed to 2 dp
        ("deribit_ticker_option_last_day.json", 0.005 + 1e-4),  # 8 dp of a small price
        ("deribit_ticker_option_recorded.json", 0.005 + 2e-4),  # mark_price to 7 dp
    ],
)
def test_deribit_mark_price_gives_mark_iv(fixture: str, mark_iv_tol: float) -> None:
    """Inverse option: USD price = coin mark_price x underlying_price; its IV is mark_iv."""
    data = json.loads((FIXTURES / fixture).read_text())["params"]["data"]
    inst = parse_name(data["instrument_name"])
    assert inst is not None
    assert inst.expiry_ms is not None
    assert inst.strike is not None
    assert inst.is_call is not None
    t = (inst.expiry_ms - data["timestamp"]) / (DAYS_PER_YEAR * 86_400_000.0)
    f = data["underlying_price"]
    iv, reason = implied_vol(data["mark_price"] * f, f, inst.strike, t, inst.is_call)
    assert reason == IVReason.OK
    assert abs(100.0 * float(iv) - data["mark_iv"]) <= mark_iv_tol
