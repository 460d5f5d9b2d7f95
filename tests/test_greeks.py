"""Black-76 price and Greeks against independent references.

References: QuantLib's ``BlackCalculator`` over a grid, libm's ``erfc`` for the far tails,
finite differences of QuantLib values for the inverse (coin) delta, and Deribit tickers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import QuantLib as ql

from monitor.model.instruments import parse_name
from monitor.quant.greeks import (
    DAYS_PER_YEAR,
    Black76,
    black76,
    black76_price,
    coin_delta,
    inverse_price,
)

FIXTURES = Path(__file__).parent / "fixtures"
GREEKS = ("price", "delta", "gamma", "vega", "theta", "rho")
MINUTE = 1.0 / (DAYS_PER_YEAR * 1440.0)

F0 = 60_000.0
STRIKES = F0 * np.exp(np.linspace(-2.5, 2.5, 21))  # deep ITM to deep OTM, both types
EXPIRIES = np.array([5, 60, 1440, 7 * 1440, 30 * 1440, 91 * 1440, 365 * 1440, 730 * 1440]) * MINUTE
VOLS = np.array([0.05, 0.1, 0.25, 0.5, 0.8, 1.2, 2.0, 3.0])


def _grid() -> tuple[npt.NDArray[np.float64], ...]:
    k, t, v, c = np.meshgrid(STRIKES, EXPIRIES, VOLS, [1.0, 0.0], indexing="ij")
    return k.ravel(), t.ravel(), v.ravel(), c.ravel()


def ql_reference(
    forward: float, strike: float, t: float, vol: float, is_call: bool
) -> dict[str, float]:
    """Price and Greeks in our units from QuantLib's BlackCalculator (discount 1).

    QuantLib differentiates with respect to a spot whose forward is ``spot * growth``; with
    ``spot = forward`` and discount 1 its ``delta(F)`` and ``gamma(F)`` are dV/dF and
    d2V/dF2. ``vega(t)`` is dV/dvol per 1.0 of vol, so one vol point is ``/ 100``.
    ``theta(F, t)`` is dV/dt per year, so per calendar day of a 365-day year is ``/ 365``,
    then capped at the time value (``value - intrinsic``), the rule of ``Black76.theta``.
    ``rho(t)`` is dV/dr per 1.0 of rate at fixed spot: ``/ 100`` per point.
    """
    kind = ql.Option.Call if is_call else ql.Option.Put
    bc = ql.BlackCalculator(ql.PlainVanillaPayoff(kind, strike), forward, vol * math.sqrt(t), 1.0)
    value = bc.value()
    intrinsic = max(forward - strike if is_call else strike - forward, 0.0)
    return {
        "price": value,
        "delta": bc.delta(forward),
        "gamma": bc.gamma(forward),
        "vega": bc.vega(t) / 100.0,
        "theta": max(bc.theta(forward, t) / DAYS_PER_YEAR, -(value - intrinsic)),
        "rho": bc.rho(t) / 100.0,
    }


def test_matches_quantlib_over_grid() -> None:
    """Relative error < 1e-8 on a grid of strikes, expiries (5 min .. 2 y) and vols (5%..300%).

    QuantLib computes put values as ``1 - N(d)`` and its ``N`` carries ~1e-16 absolute (not
    relative) error, so where a value is below ~1e-14 of its natural scale QuantLib's own
    digits are rounding noise; there the comparison is absolute at that floor (the tails are
    checked against libm's erfc in ``test_far_tails_keep_relative_precision``). Gamma and
    vega need no floor above the subnormal range.
    """
    k, t, v, c = _grid()
    ref = {g: np.empty(k.size) for g in GREEKS}
    for i in range(k.size):
        for g, x in ql_reference(F0, k[i], t[i], v[i], bool(c[i])).items():
            ref[g][i] = x
    ours = black76(F0, k, t, v, c.astype(bool))
    big = np.maximum(F0, k)
    floor = {
        "price": 1e-14 * big,
        "delta": np.full(k.size, 1e-14),
        "gamma": np.full(k.size, 1e-300),  # subnormal results: QuantLib flushes some to 0
        "vega": np.full(k.size, 1e-300),
        "theta": 1e-14 * big,
        "rho": 1e-14 * big * t / 100.0,
    }
    for g in GREEKS:
        got, want = getattr(ours, g), ref[g]
        assert np.all(np.isfinite(got)), g
        err = np.abs(got - want)
        bad = err > 1e-8 * np.abs(want) + floor[g]
        assert not bad.any(), (g, k[bad][:3], t[bad][:3], v[bad][:3], got[bad][:3], want[bad][:3])
        # The floor must not carry the test: most figures are compared relatively.
        assert np.mean(err <= 1e-8 * np.abs(want)) > 0.9, g
    # The theta cap is exercised: short expiries where the 1-day decay exceeds the premium.
    capped = ours.theta > -np.abs(ql_theta_per_day(F0, k, t, v)) * (1.0 - 1e-9)
    assert capped.sum() > 50


def ql_theta_per_day(
    f: float, k: npt.NDArray[np.float64], t: npt.NDArray[np.float64], v: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Uncapped QuantLib theta per day (same for calls and puts at r = 0)."""
    out = np.empty(k.size)
    for i in range(k.size):
        payoff = ql.PlainVanillaPayoff(ql.Option.Call, k[i])
        bc = ql.BlackCalculator(payoff, f, v[i] * math.sqrt(t[i]), 1.0)
        out[i] = bc.theta(f, t[i]) / DAYS_PER_YEAR
    return out


def _erfc_price(f: float, k: float, t: float, vol: float, is_call: bool) -> tuple[float, float]:
    """Price and delta with libm erfc, accurate in relative terms in the tails."""
    sd = vol * math.sqrt(t)
    d1 = math.log(f / k) / sd + 0.5 * sd
    w = 1.0 if is_call else -1.0

    def n(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    return w * (f * n(w * d1) - k * n(w * (d1 - sd))), w * n(w * d1)


@pytest.mark.parametrize("is_call", [True, False])
def test_far_tails_keep_relative_precision(is_call: bool) -> None:
    """Far out-of-the-money values keep ~1e-12 relative precision (no ``1 - N(d)``)."""
    m = np.linspace(1.0, 2.5, 16)
    k = F0 * np.exp(m if is_call else -m)
    t = np.full(m.size, 30.0 / DAYS_PER_YEAR)
    v = np.full(m.size, 0.6)
    ours = black76(F0, k, t, v, is_call)
    for i in range(m.size):
        price, delta = _erfc_price(F0, k[i], t[i], v[i], is_call)
        assert 0.0 < abs(price) < 1e-3 * F0
        assert ours.price[i] == pytest.approx(price, rel=1e-11)
        assert ours.delta[i] == pytest.approx(delta, rel=1e-11)


def test_put_call_parity() -> None:
    k, t, v, _ = _grid()
    c = black76(F0, k, t, v, True)
    p = black76(F0, k, t, v, False)
    scale = np.maximum(F0, k)
    np.testing.assert_allclose(c.price - p.price, F0 - k, rtol=0, atol=1e-12 * scale.max())
    np.testing.assert_allclose(c.delta - p.delta, 1.0, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(c.gamma, p.gamma)
    np.testing.assert_array_equal(c.vega, p.vega)
    np.testing.assert_allclose(c.theta, p.theta, rtol=1e-9, atol=1e-12 * scale.max())
    np.testing.assert_allclose(c.rho - p.rho, k * t / 100.0, rtol=1e-12, atol=1e-14 * scale.max())


def test_expired_and_zero_vol_are_intrinsic_and_finite() -> None:
    f = 100.0
    k = np.array([80.0, 100.0, 120.0] * 2)
    call = np.array([True] * 3 + [False] * 3)
    for t, vol in ((0.0, 0.5), (-0.01, 0.5), (0.5, 0.0), (0.5, -0.2), (1e-300, 1e-300)):
        g = black76(f, k, t, vol, call)
        np.testing.assert_array_equal(g.price, [20.0, 0.0, 0.0, 0.0, 0.0, 20.0])
        np.testing.assert_array_equal(g.delta, [1.0, 0.5, 0.0, 0.0, -0.5, -1.0])
        for name in ("gamma", "vega", "theta", "rho"):
            np.testing.assert_array_equal(getattr(g, name), 0.0)
        np.testing.assert_array_equal(black76_price(f, k, t, vol, call), g.price)


def test_last_day_theta_is_the_value_left() -> None:
    """Two hours before expiry the 1-day Black theta exceeds the premium: theta = -time value."""
    f, t, v = 100_000.0, 2.0 / (24.0 * DAYS_PER_YEAR), 0.5
    k = np.array([95_000.0, 100_000.0, 104_000.0])
    g = black76(f, k, t, v, True)
    analytic = np.array([ql_reference(f, x, t, v, True) for x in k])  # capped already
    time_value = g.price - np.maximum(f - k, 0.0)
    np.testing.assert_allclose(g.theta, -time_value, rtol=1e-12)
    # QuantLib's own floor (1e-14 of the strike) for the 1e-5 USD far out-of-the-money one.
    np.testing.assert_allclose(g.theta, [a["theta"] for a in analytic], rtol=1e-9, atol=1e-9)
    ql_day = ql_theta_per_day(f, k, np.full(3, t), np.full(3, v))
    assert np.all(ql_day < g.theta)  # the uncapped figure would lose more than is left
    # A year out the cap does not bind: theta is the analytic Black theta per day.
    long = black76(f, k, 1.0, v, True)
    np.testing.assert_allclose(long.theta, ql_theta_per_day(f, k, np.ones(3), np.full(3, v)))


def test_inverse_helpers() -> None:
    """Coin price = USD / F; coin delta = F d(V/F)/dF, by finite differences of QuantLib."""
    f, t, v = 60_000.0, 0.1, 0.7
    k = np.array([40_000.0, 60_000.0, 90_000.0])
    for is_call in (True, False):
        g = black76(f, k, t, v, is_call)
        np.testing.assert_allclose(inverse_price(g.price, f), g.price / f, rtol=1e-15)
        h = 1e-5 * f
        for i, strike in enumerate(k):
            up = ql_reference(f + h, strike, t, v, is_call)["price"] / (f + h)
            dn = ql_reference(f - h, strike, t, v, is_call)["price"] / (f - h)
            fd = f * (up - dn) / (2.0 * h)
            assert coin_delta(g.delta, g.price, f)[i] == pytest.approx(fd, abs=1e-9)
    # A deep ITM call is a forward bought at K: its coin delta is K/F, not 1.
    deep = black76(f, 1.0, t, v, True)
    assert coin_delta(deep.delta, deep.price, f) == pytest.approx(1.0 / f, rel=1e-9)


def test_shapes_broadcast_and_out() -> None:
    g = black76(60_000.0, 65_000.0, 0.25, 0.6, True)
    assert all(a.shape == () and a.dtype == np.float64 for a in g)
    k = np.linspace(50_000.0, 70_000.0, 5)[:, None]
    t = np.array([0.01, 0.5, 1.0])[None, :]
    g2 = black76(60_000.0, k, t, 0.6, [[True, False, True]])
    assert g2.price.shape == (5, 3)
    assert g2.price[1, 1] == pytest.approx(black76(60_000.0, k[1, 0], 0.5, 0.6, False).price)
    out = Black76(*(np.full((5, 3), np.nan) for _ in range(6)))
    g3 = black76(60_000.0, k, t, 0.6, [[True, False, True]], out=out)
    assert g3 is out
    for a, b in zip(g2, g3, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="shape"):
        black76(60_000.0, k, t, 0.6, True, out=Black76(*(np.empty(3) for _ in range(6))))


def test_nan_vol_propagates_until_expiry() -> None:
    """A missing vol is not silently priced at intrinsic value; an expired option needs none."""
    g = black76(60_000.0, [50_000.0, 70_000.0], 0.5, np.nan, True)
    assert np.isnan(g.price).all()
    assert np.isnan(g.delta).all()
    g = black76(60_000.0, [50_000.0, 70_000.0], 0.0, np.nan, True)
    np.testing.assert_array_equal(g.price, [10_000.0, 0.0])
    np.testing.assert_array_equal(black76_price(60_000.0, [50_000.0], 0.0, np.nan, True), [1e4])
    np.testing.assert_array_equal(g.delta, [1.0, 0.0])


# --- Deribit tickers ------------------------------------------------------------------------


def _ticker(name: str) -> dict[str, Any]:
    msg = json.loads((FIXTURES / name).read_text())
    assert msg["method"] == "subscription"
    data: dict[str, Any] = msg["params"]["data"]
    assert msg["params"]["channel"] == f"ticker.{data['instrument_name']}.100ms"
    return data


def _inputs(data: dict[str, Any]) -> tuple[float, float, float, float, bool]:
    inst = parse_name(data["instrument_name"])
    assert inst is not None
    assert inst.expiry_ms is not None
    assert inst.strike is not None
    assert inst.is_call is not None
    t = (inst.expiry_ms - data["timestamp"]) / (DAYS_PER_YEAR * 86_400_000.0)
    return data["underlying_price"], inst.strike, t, data["mark_iv"] / 100.0, inst.is_call


PRINTED = 0.5e-5  # Deribit prints Greeks to 5 decimals


@pytest.mark.parametrize(
    "fixture", ["deribit_ticker_option.json", "deribit_ticker_option_last_day.json"]
)
def test_deribit_constructed_ticker(fixture: str) -> None:
    """Ours from mark_iv and underlying_price match the printed Greeks to the last digit.

    The fixtures' figures were computed with QuantLib (see their ``_comment``); which of our
    figures matches which of Deribit's: ``greeks.delta`` = ``delta`` (plain Black delta),
    ``gamma`` = ``gamma`` (BTC per USD), ``vega``/``theta``/``rho`` in USD as here,
    ``mark_price`` = ``inverse_price(price, underlying_price)`` in BTC.
    """
    data = _ticker(fixture)
    f, k, t, vol, is_call = _inputs(data)
    g = black76(f, k, t, vol, is_call)
    for name in ("delta", "gamma", "vega", "theta", "rho"):
        assert abs(float(getattr(g, name)) - data["greeks"][name]) <= PRINTED + 1e-9, name
    assert abs(float(inverse_price(g.price, f)) - data["mark_price"]) <= 0.5e-8 + 1e-12


def test_deribit_last_day_theta_is_capped() -> None:
    data = _ticker("deribit_ticker_option_last_day.json")
    f, k, t, _, is_call = _inputs(data)
    assert t < 1.0 / DAYS_PER_YEAR
    assert not is_call
    intrinsic = max(k - f, 0.0)
    premium_usd = data["mark_price"] * f
    assert data["greeks"]["theta"] == pytest.approx(-(premium_usd - intrinsic), abs=1e-3)


def test_deribit_recorded_ticker() -> None:
    """A Deribit snapshot recorded in the wild: ours agree within what its rounding allows.

    mark_iv is printed to 0.01 vol points and underlying_price to 0.1 USD, so each figure is
    known to within its sensitivity to half those steps (measured with QuantLib) plus half
    the last printed digit.
    """
    data = _ticker("deribit_ticker_option_recorded.json")
    f, k, t, vol, is_call = _inputs(data)
    centre = ql_reference(f, k, t, vol, is_call)
    corners = [
        ql_reference(f + df, k, t, vol + dv, is_call)
        for df in (-0.05, 0.05)
        for dv in (-5e-5, 5e-5)
    ]

    def tol(name: str, printed: float) -> float:
        return printed + max(abs(c[name] - centre[name]) for c in corners)

    g = black76(f, k, t, vol, is_call)
    for name in ("delta", "gamma", "vega", "theta", "rho"):
        assert abs(float(getattr(g, name)) - data["greeks"][name]) <= tol(name, PRINTED), name
    mark = float(inverse_price(g.price, f))
    assert abs(mark - data["mark_price"]) <= tol("price", 0.5e-7 * f) / f
    # Deribit's ticker delta is the Black delta, not the premium-adjusted coin delta ...
    coin = float(coin_delta(g.delta, g.price, f))
    assert abs(coin - data["greeks"]["delta"]) > 100 * tol("delta", PRINTED)
    # ... and it is computed on underlying_price (the forward), not on index_price.
    on_index = black76(data["index_price"], k, t, vol, is_call)
    assert abs(float(on_index.delta) - data["greeks"]["delta"]) > 100 * tol("delta", PRINTED)
