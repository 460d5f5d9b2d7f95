"""Option positions through the engine, against QuantLib's Black calculator.

Position figures must follow the README's units: quantity x multiplier x per-unit Greek,
``delta_usd = delta x F``, ``gamma_usd = gamma x F^2 / 100`` on the forward F the option
moves with, vega per vol point, theta per calendar day; inverse options are marked in coin
(USD = coin x forward).
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Literal

import pytest
import QuantLib as ql
from tools import StaticView

from monitor.engine.core import Engine, EngineSettings
from monitor.model.events import Event, InstrumentEvent, PositionEvent, PriceEvent, VenueGreeks
from monitor.model.instruments import parse_name

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
SPOT = {"BTC": 90_000.0, "ETH": 3_000.0}
FWD = {"BTC": 90_500.0, "ETH": 3_010.0}


def _ql(fwd: float, strike: float, t: float, vol: float, call: bool) -> dict[str, float]:
    payoff = ql.PlainVanillaPayoff(ql.Option.Call if call else ql.Option.Put, strike)
    calc = ql.BlackCalculator(payoff, fwd, vol * math.sqrt(t), 1.0)
    return {
        "price": calc.value(),
        "delta": calc.deltaForward(),
        "gamma": calc.gammaForward(),
        "vega": calc.vega(t) / 100.0,  # per vol point
        # undiscounted Black: d/dt of value = -vega_per_1.0 * vol / (2 t); per day
        "theta": -calc.vega(t) * vol / (2.0 * t) / 365.0,
    }


def _iso(ms: int | None) -> str:
    assert ms is not None
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).isoformat()


CASES = [  # name, quantity, multiplier, inverse, iv
    ("BTC-27MAR26-100000-C", 3.0, 1.0, True, 0.55),
    ("BTC-27MAR26-80000-P", -5.0, 1.0, True, 0.62),
    ("ETH-30JAN26-3200-C", -40.0, 1.0, False, 0.70),
    ("ETH-30JAN26-2800-P", 25.0, 0.1, False, 0.75),
]


def _t(name: str, as_of: int) -> float:
    inst = parse_name(name)
    assert inst is not None
    assert inst.expiry_ms is not None
    return (inst.expiry_ms - as_of) / (365 * 86_400_000)


@pytest.mark.parametrize("venue_iv", [True, False], ids=["venue-iv", "iv-solved-from-mark"])
def test_option_positions_match_quantlib(venue_iv: bool) -> None:
    events: list[Event] = [PriceEvent(T0, u, s) for u, s in SPOT.items()]
    for name, qty, mult, inverse, iv in CASES:
        inst = parse_name(name)
        assert inst is not None
        assert inst.strike is not None
        assert inst.is_call is not None
        u = inst.underlying
        option_type: Literal["call", "put"] = "call" if inst.is_call else "put"
        expiry = _iso(inst.expiry_ms)
        events.append(
            InstrumentEvent(name, "option", u, expiry, inst.strike, option_type, mult, inverse)
        )
        usd = _ql(FWD[u], inst.strike, _t(name, T0), iv, inst.is_call)["price"]
        mark = usd / FWD[u] if inverse else usd
        events.append(PriceEvent(T0, name, mark, iv if venue_iv else None, FWD[u]))
        events.append(PositionEvent(T0, "opt", name, qty))
    eng = Engine(EngineSettings())
    assert eng.replay(events, "t") == []
    snap = eng.evaluate(T0)
    acc = snap.accounts["opt"]
    table = acc.positions
    assert table is not None
    assert acc.extra["unpriced_positions"] == 0
    assert snap.total.extra["iv_unsolved"] == {}
    totals = {"delta_usd": 0.0, "gamma_usd": 0.0, "vega": 0.0, "theta": 0.0}
    for row, (name, qty, mult, _inverse, iv) in enumerate(CASES):
        inst = parse_name(name)
        assert inst is not None
        assert inst.strike is not None
        assert inst.is_call is not None
        u = inst.underlying
        ref = _ql(FWD[u], inst.strike, _t(name, T0), iv, inst.is_call)
        q = qty * mult
        s = FWD[u]  # delta_usd and gamma_usd are on the forward
        assert table.instrument[row] == name
        assert table.iv[row] == pytest.approx(iv, rel=1e-9)
        assert table.value_usd[row] == pytest.approx(q * ref["price"], rel=1e-9)
        assert table.delta[row] == pytest.approx(q * ref["delta"], rel=1e-8)
        assert table.delta_usd[row] == pytest.approx(q * ref["delta"] * s, rel=1e-8)
        assert table.gamma[row] == pytest.approx(q * ref["gamma"], rel=1e-8)
        assert table.gamma_usd[row] == pytest.approx(q * ref["gamma"] * s * s / 100, rel=1e-8)
        assert table.vega[row] == pytest.approx(q * ref["vega"], rel=1e-8)
        assert table.theta[row] == pytest.approx(q * ref["theta"], rel=1e-8)
        totals["delta_usd"] += q * ref["delta"] * s
        totals["gamma_usd"] += q * ref["gamma"] * s * s / 100
        totals["vega"] += q * ref["vega"]
        totals["theta"] += q * ref["theta"]
    for key, value in totals.items():
        assert acc.greeks[key] == pytest.approx(value, rel=1e-8)


def test_option_below_intrinsic_is_counted_not_valued() -> None:
    name = "ETH-30JAN26-2000-C"  # deep ITM: intrinsic 1010 on the forward
    eng = Engine(EngineSettings())
    eng.replay(
        [
            PriceEvent(T0, "ETH", 3_000.0),
            PriceEvent(T0, name, 900.0, None, 3_010.0),  # below intrinsic: no IV exists
            PositionEvent(T0, "a", name, 1.0),
            PositionEvent(T0, "a", "ETH-PERPETUAL", 2.0),
        ],
        "t",
    )
    snap = eng.evaluate(T0)
    assert snap.total.extra["iv_unsolved"] == {"below_intrinsic": 1}
    acc = snap.accounts["a"]
    assert acc.extra["unpriced_positions"] == 1
    assert acc.greeks["delta_usd"] == pytest.approx(2 * 3_000.0)


def test_greeks_vs_venue_and_coin_delta_against_quantlib() -> None:
    """The venue publishes delta, gamma, vega with known offsets and no theta."""
    name, qty, iv = "BTC-27MAR26-100000-C", 3.0, 0.55
    inst = parse_name(name)
    assert inst is not None
    assert inst.strike is not None
    f, s = FWD["BTC"], SPOT["BTC"]
    ref = _ql(f, inst.strike, _t(name, T0), iv, True)
    venue = VenueGreeks(delta=ref["delta"] - 0.01, gamma=ref["gamma"], vega=ref["vega"] + 2.0)
    eng = Engine(EngineSettings())
    eng.replay(
        [
            PriceEvent(T0, "BTC", s),
            InstrumentEvent(
                name, "option", "BTC", _iso(inst.expiry_ms), inst.strike, "call", 1.0, True
            ),
            PriceEvent(T0, name, ref["price"] / f, iv, f, venue),
            PositionEvent(T0, "a", name, qty),
            PositionEvent(T0, "a", "BTC-PERPETUAL", -1.0),  # no venue Greeks: not compared
        ],
        "t",
    )
    acc = eng.evaluate(T0).accounts["a"]
    diff = acc.extra["greeks_vs_venue"]
    assert diff["positions"] == 1
    assert diff["delta_usd"] == pytest.approx(qty * 0.01 * f, rel=1e-9)
    assert diff["gamma_usd"] == pytest.approx(0.0, abs=1e-9)
    assert diff["vega"] == pytest.approx(-qty * 2.0, rel=1e-9)
    assert diff["theta"] == 0.0  # not published: nothing compared
    table = acc.positions
    assert table is not None
    row = table.instrument.index(name)
    assert table.delta_coin[row] == pytest.approx(qty * (ref["delta"] - ref["price"] / f), rel=1e-9)
    assert math.isnan(table.delta_coin[table.instrument.index("BTC-PERPETUAL")])


def test_greeks_vs_venue_is_exported() -> None:
    from prometheus_client import CollectorRegistry

    from monitor.serve.metrics import build_registry

    name = "ETH-30JAN26-3200-C"
    eng = Engine(EngineSettings())
    eng.replay(
        [
            PriceEvent(T0, "ETH", 3_000.0),
            PriceEvent(T0, name, 100.0, 0.7, 3_010.0, VenueGreeks(vega=1.0)),
            PositionEvent(T0, "a", name, 2.0),
        ],
        "t",
    )
    snap = eng.evaluate(T0)
    registry: CollectorRegistry = build_registry(StaticView(snap), process_metrics=False)[0]
    got = registry.get_sample_value(
        "riskmon_account_greeks_vs_venue", {"account": "a", "greek": "vega"}
    )
    # 2 contracts: QuantLib's vega per vol point at the venue's IV and forward, minus the
    # venue's 1.0 per contract.
    ref = _ql(3_010.0, 3_200.0, _t(name, T0), 0.7, True)
    assert got == pytest.approx(2.0 * (ref["vega"] - 1.0), rel=1e-9)


# -- delta_usd and gamma_usd are derivatives of the scenario revaluation --------------------


def test_every_instrument_kind_matches_bump_and_reprice_of_the_scenario_revaluation() -> None:
    """delta_usd = dP/dr and gamma_usd = (d2P/dr2 - dP/dr) / 100 of the revaluation the
    scenarios use (``revalue``: linear positions ``x (e^r - 1)``, options repriced on
    ``F e^r``), by central differences in the underlying's log return; one account per
    position. A 6-month future and its options at F/S = 1.05: the index-based delta_usd
    was 5% short of what the book loses on a move.
    """
    import numpy as np

    from monitor.engine.valuation import MarketArrays, build_book, value_book
    from monitor.model.instruments import InstrumentRegistry
    from monitor.quant.risk import revalue

    s, f = 90_000.0, 94_500.0  # F / S = 1.05
    positions = {  # account: (instrument, quantity, mark, iv, underlying_price)
        "spot": ("BTC_USDC", 3.0, 90_010.0, None, None),
        "perp": ("BTC-PERPETUAL", -4.0, 90_050.0, None, None),
        "future": ("BTC-26JUN26", -50.0, f, None, None),
        "call": ("BTC-26JUN26-100000-C", 20.0, 0.08, 0.6, f),  # inverse (coin) mark
        "put": ("BTC-26JUN26-80000-P", -30.0, 0.03, 0.65, f),
        "no-fwd": ("BTC-26JUN26-90000-C", 10.0, 0.1, 0.6, None),  # forward = index
    }
    reg = InstrumentRegistry()
    book_in: dict[str, dict[int, tuple[float, int]]] = {}
    marks: dict[int, tuple[float, float | None, float | None]] = {}
    btc = reg.index_of("BTC")
    for acct, (name, qty, mark, iv, fwd) in positions.items():
        i = reg.index_of(name)
        book_in[acct] = {i: (qty, T0)}
        marks[i] = (mark, iv, fwd)
    n_inst = len(reg)
    price = np.full(n_inst, np.nan)
    ivs = np.full(n_inst, np.nan)
    fwds = np.full(n_inst, np.nan)
    price[btc] = s
    for i, (mark, iv, fwd) in marks.items():
        price[i] = mark
        ivs[i] = np.nan if iv is None else iv
        fwds[i] = np.nan if fwd is None else fwd
    market = MarketArrays(
        price=price,
        iv=ivs,
        forward=fwds,
        venue_greeks=np.full((n_inst, 4), np.nan),
        price_ts_ms=np.full(n_inst, T0, dtype=np.int64),
    )
    book = build_book(book_in, reg)
    values = value_book(book, market, reg, T0)
    u = reg.underlyings.index("BTC")
    h = 1e-4
    r = np.zeros((3, len(reg.underlyings)))
    r[:, u] = [-h, 0.0, h]
    pnl = revalue(r, 0.0, linear_usd=values.linear_usd.T, options=values.options).pnl_usd
    d1 = (pnl[2] - pnl[0]) / (2 * h)
    d2 = (pnl[2] - 2 * pnl[1] + pnl[0]) / h**2
    for k, acct in enumerate(values.account_names):
        fig = values.accounts[acct]
        table = fig.positions
        assert table is not None
        scale = abs(d1[k]) + 1.0
        assert fig.exposure_usd["BTC"] == pytest.approx(d1[k], abs=1e-6 * scale), acct
        assert table.delta_usd[0] == pytest.approx(d1[k], abs=1e-6 * scale), acct
        # d2P/dr2 = gamma F^2 + delta F: the option's convexity plus that of e^r.
        assert 100 * table.gamma_usd[0] == pytest.approx(d2[k] - d1[k], abs=1e-4 * scale), acct
    future = values.accounts["future"].positions
    assert future is not None
    assert future.delta_usd[0] == pytest.approx(-50.0 * f)  # -4.725M, not -50 S = -4.50M


def test_an_expired_option_without_iv_does_not_blank_the_marked_iv() -> None:
    """The book's marked IV is the |vega|-weighted mean over its options: an option past
    expiry without a venue IV has vega 0 and no IV (none can be solved), and 0 x NaN used
    to blank the underlying's mean (realised_to_implied null, a firing vol_vs_implied
    alert resolved). It is left out and counted; the live option's IV is the mean."""
    live, expired = "ETH-30JAN26-3200-C", "ETH-1JAN26-3000-C"  # the second expired at 08:00
    start = T0 + 9 * 3_600_000  # 2026-01-01T09:00Z
    a = 0.001  # ETH's log moves alternate +a, -a each second: slow vol a sqrt(steps/year)
    events: list[Event] = [
        PriceEvent(start, live, 100.0, 0.7, 3_010.0),
        PriceEvent(start, expired, 5.0),  # a stale mark, no IV
        PositionEvent(start, "a", live, 2.0),
        PositionEvent(start, "a", expired, 1.0),
    ]
    events += [
        PriceEvent(start + 1_000 * k, "ETH", 3_000.0 * math.exp(a * (k % 2))) for k in range(61)
    ]
    eng = Engine(EngineSettings())
    eng.replay(events, "t")
    snap = eng.evaluate(start + 60_000)
    assert snap.total.extra["marked_iv_skipped"] == 1
    vol = a * math.sqrt(365 * 86_400)
    regime = snap.report()["regime"]["underlyings"]["ETH"]
    assert regime["realised_to_implied"] == pytest.approx(vol / 0.7, rel=1e-9)
