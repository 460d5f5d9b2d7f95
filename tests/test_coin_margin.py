"""Coin-margined books modelled as they are (Deribit BTC accounts).

The acceptance example: 10 BTC of collateral and short 600,000 USD of the inverse
BTC-PERPETUAL at 60,000 is a cash-and-carry. Its USD value is
``10 S + N (S/S0 - 1) = 600,000`` for every price S (N = -600,000), so: net delta 0, USD
equity constant across -50%..+100%, stresses that lose nothing, and no margin call at any
move. The events are built the way the Deribit connector builds them (its pure parser), so
the test covers the path from the venue's coin figures to the report.
"""

from __future__ import annotations

import math
from dataclasses import replace

import msgspec
import pytest

from connectors.deribit import parser
from connectors.deribit.messages import AccountSummary
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import Event, PositionEvent, PriceEvent
from monitor.quant.margin import MarginSettings, Stress

T0 = 1_767_225_600_000
S0 = 60_000.0
N = -600_000.0  # USD notional of the short perpetual
COLLATERAL = 10.0
MM_RATE = 0.005  # maintenance margin of the perpetual, per unit of its coin size
LEVELS = (0.5, 0.75, 1.0, 1.5, 2.0)  # -50% .. +100%


def venue_summary(s: float) -> AccountSummary:
    """What Deribit reports at index ``s``: the coin equity is the collateral plus the short
    perpetual's unrealised coin P&L ``N (1/S0 - 1/s)``; its margin is a rate of its coin
    size ``|N| / s``."""
    equity = COLLATERAL + N * (1.0 / S0 - 1.0 / s)
    mm = MM_RATE * abs(N) / s
    return AccountSummary(
        currency="BTC", equity=equity, maintenance_margin=mm, initial_margin=2 * mm
    )


def engine() -> Engine:
    stresses = (Stress("crash -50%", {"BTC": -0.5}), Stress("rally +100%", {"BTC": 1.0}))
    risk = replace(RiskSettings(), margin=MarginSettings(stresses=stresses))
    return Engine(EngineSettings(), risk=risk)


def at(eng: Engine, k: int, s: float) -> dict[str, object]:
    """Move BTC to ``s`` (index and perpetual mark), send the venue's account figures at
    that price, and return the account's report."""
    ts = T0 + 1_000 * k
    events: list[Event] = [
        PriceEvent(ts=ts, instrument="BTC", price=s),
        PriceEvent(ts=ts, instrument="BTC-PERPETUAL", price=s),
    ]
    acct = parser.account_event(ts, "deribit", {"BTC": venue_summary(s)}, {"BTC": s})
    assert acct is not None
    events.append(acct)
    assert eng.replay(events, "deribit") == []
    report = eng.evaluate(ts).report()
    accounts = report["accounts"]
    assert isinstance(accounts, dict)
    out = accounts["deribit"]
    assert isinstance(out, dict)
    return out


@pytest.fixture
def book() -> Engine:
    eng = engine()
    declared = parser.inverse_future_event("BTC-PERPETUAL")
    assert declared is not None
    opening: list[Event] = [
        declared,
        PriceEvent(ts=T0, instrument="BTC", price=S0),
        PositionEvent(ts=T0, account="deribit", instrument="BTC-PERPETUAL", quantity=N),
    ]
    assert eng.replay(opening, "deribit") == []
    return eng


def test_cash_and_carry_has_no_delta_and_collateral_is_its_own_line(book: Engine) -> None:
    acct = at(book, 1, S0)
    rows = {r["instrument"]: r for r in acct["positions"]}  # type: ignore[attr-defined]
    coll, perp = rows["BTC.collateral"], rows["BTC-PERPETUAL"]
    assert (coll["quantity"], coll["price"]) == (COLLATERAL, S0)
    assert coll["delta_usd"] == pytest.approx(COLLATERAL * S0, rel=1e-15)
    assert perp["delta_usd"] == pytest.approx(N, rel=1e-15)  # inverse: N per unit move
    assert perp["delta"] == pytest.approx(N / S0, rel=1e-15)  # coin delta
    assert perp["gamma_usd"] == 0.0
    greeks = acct["greeks"]
    assert isinstance(greeks, dict)
    assert abs(greeks["delta_usd"]) < 1e-6
    assert abs(acct["exposure_usd"]["BTC"]) < 1e-6  # type: ignore[index]


def test_usd_equity_is_constant_from_minus_50_to_plus_100_percent(book: Engine) -> None:
    for k, level in enumerate(LEVELS, start=1):
        s = S0 * level
        acct = at(book, k, s)
        margin = acct["margin"]
        assert isinstance(margin, dict)
        # riskmon revalues the venue's coin equity at its own index: 600,000 USD throughout.
        assert margin["equity"] == pytest.approx(COLLATERAL * S0, rel=1e-12), level
        # The collateral riskmon counts is the coin outside options, at this price.
        rows = {r["instrument"]: r for r in acct["positions"]}  # type: ignore[attr-defined]
        assert rows["BTC.collateral"]["quantity"] == pytest.approx(-N / s, rel=1e-12)
        assert abs(acct["greeks"]["delta_usd"]) < 1e-6  # type: ignore[index]
        # Coin figures per currency: margin in coin rises as BTC falls (|N| / S), and so
        # does coin equity (the short's P&L), so utilisation in coin stays MM_RATE x N / E.
        btc = margin["currencies"]["BTC"]
        assert btc["maintenance_margin"] == pytest.approx(MM_RATE * abs(N) / s, rel=1e-12)
        assert btc["equity"] == pytest.approx(-N / s, rel=1e-12)
        assert btc["utilization"] == pytest.approx(MM_RATE, rel=1e-12)
        assert btc["equity_usd"] == pytest.approx(COLLATERAL * S0, rel=1e-12)


def test_stresses_and_distance_to_call_revalue_collateral_with_the_position(
    book: Engine,
) -> None:
    at(book, 1, S0)
    # The scenario clock (distance to call) runs every 5 s of event time: take the next pass.
    report = book.evaluate(T0 + 10_000).report()
    margin = report["accounts"]["deribit"]["margin"]
    assert isinstance(margin, dict)
    stresses = margin["stresses"]
    # Exact: the collateral's USD P&L 10 S m cancels the short's N m.
    assert stresses["crash -50%"] == pytest.approx(0.0, abs=1e-6)
    assert stresses["rally +100%"] == pytest.approx(0.0, abs=1e-6)
    distance = margin["distance_to_call"]
    assert isinstance(distance, dict)
    # No move within max_move reaches a call: equity does not move.
    assert distance["down"] is None
    assert distance["up"] is None
    assert distance["reachable"] == {"down": False, "up": False}


def test_without_its_collateral_the_short_would_be_called() -> None:
    """The same short perpetual with no collateral counted: a rally reaches a call (the
    check that the test above is not vacuous)."""
    eng = engine()
    declared = parser.inverse_future_event("BTC-PERPETUAL")
    assert declared is not None
    summary = AccountSummary(currency="BTC", equity=1.0, maintenance_margin=0.05)
    acct_ev = parser.account_event(T0, "deribit", {"BTC": summary}, {"BTC": S0})
    assert acct_ev is not None
    assert acct_ev.currencies is not None
    no_collateral = msgspec.structs.replace(
        acct_ev,
        currencies={"BTC": msgspec.structs.replace(acct_ev.currencies["BTC"], collateral=0.0)},
    )
    events: list[Event] = [
        declared,
        PriceEvent(ts=T0, instrument="BTC", price=S0),
        PriceEvent(ts=T0, instrument="BTC-PERPETUAL", price=S0),
        PositionEvent(ts=T0, account="deribit", instrument="BTC-PERPETUAL", quantity=N),
        no_collateral,
    ]
    assert eng.replay(events, "deribit") == []
    eng.evaluate(T0 + 1_000)
    report = eng.evaluate(T0 + 10_000).report()  # the next pass of the scenario clock
    margin = report["accounts"]["deribit"]["margin"]
    up = margin["distance_to_call"]["up"]
    # Equity 60,000 - 600,000 m (1 BTC, the short's loss) reaches MM (0.05 BTC, 3,000 USD
    # held) at m = (60,000 - 3,000) / 600,000 = 9.5%.
    assert up == pytest.approx((60_000.0 - 3_000.0) / 600_000.0, rel=1e-3)
    assert math.isfinite(up)
