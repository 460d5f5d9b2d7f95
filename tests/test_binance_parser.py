"""The Binance parser and position book on Binance's documented messages (no socket).

Fixtures: tests/fixtures/binance/, each with its ``_source``. Expected values are read off
the documents, never off the code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from connectors.binance import parser
from connectors.binance.book import PositionBook
from connectors.binance.messages import AccountUpdate, ListenKeyExpired, MarkPriceUpdate
from monitor.model.events import (
    AccountEvent,
    InstrumentEvent,
    PriceEvent,
    Reason,
    Rejected,
    encode_event,
)
from monitor.model.instruments import parse_name

FIXTURES = Path(__file__).parent / "fixtures" / "binance"


def doc(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())["message"]


def body(name: str) -> bytes:
    return json.dumps(doc(name)).encode()


def stream(name: str, payload: Any) -> bytes:
    """As the market socket (``/market/stream``, combined) sends a payload."""
    return json.dumps({"stream": name, "data": payload}).encode()


def bare(payload: Any) -> bytes:
    """As the user data socket (``/private/ws``) sends a payload."""
    return json.dumps(payload).encode()


# --- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "name", "kind", "underlying"),
    [
        ("BTCUSDT", "BTC_USDT-PERPETUAL", "perpetual", "BTC"),
        ("ETHUSDC", "ETH_USDC-PERPETUAL", "perpetual", "ETH"),
        ("1000PEPEUSDT", "1000PEPE_USDT-PERPETUAL", "perpetual", "1000PEPE"),
        ("BTCUSDT_250328", "BTC_USDT-28MAR25", "future", "BTC"),
    ],
)
def test_symbols_map_to_names_riskmon_parses(
    symbol: str, name: str, kind: str, underlying: str
) -> None:
    assert parser.instrument_name(symbol) == name
    inst = parse_name(name)
    assert inst is not None
    assert (inst.kind, inst.underlying, inst.multiplier, inst.inverse) == (
        kind,
        underlying,
        1.0,
        False,
    )
    if kind == "future":
        # Binance settles quarterlies at 08:00 UTC: 2025-03-28T08:00:00Z.
        assert inst.expiry_ms == 1_743_148_800_000


@pytest.mark.parametrize("symbol", ["BTCBUSD", "USDT", "BTCUSDT_251399", "btcusdt", "BTCUSD_PERP"])
def test_symbols_that_do_not_map(symbol: str) -> None:
    assert parser.instrument_name(symbol) is None


def test_index_is_declared_under_a_venue_qualified_name() -> None:
    decl = parser.index_declaration("BTC")
    assert decl == InstrumentEvent(instrument="BTC.binance", kind="index", underlying="BTC")
    # It does not parse as a riskmon name: the declaration is what registers it, and
    # riskmon's own BTC index is a different instrument.
    assert parse_name("BTC.binance") is None
    assert json.loads(encode_event(decl)) == {
        "type": "instrument",
        "instrument": "BTC.binance",
        "kind": "index",
        "underlying": "BTC",
    }


# --- market stream -----------------------------------------------------------------------


def test_mark_price_update() -> None:
    msg = parser.parse_frame(stream("btcusdt@markPrice@1s", doc("mark_price_update.json")))
    assert isinstance(msg, MarkPriceUpdate)
    perp, index = parser.price_events(msg)
    assert perp == PriceEvent(ts=1562305380000, instrument="BTC_USDT-PERPETUAL", price=11794.15)
    assert index == PriceEvent(ts=1562305380000, instrument="BTC.binance", price=11784.62659091)
    assert parser.funding(msg) == (0.00038167, 1562306400000)


def test_mark_price_of_a_delivery_contract_has_no_funding() -> None:
    msg = parser.parse_frame(
        stream("btcusdt_201225@markPrice@1s", doc("mark_price_update_delivery.json"))
    )
    assert isinstance(msg, MarkPriceUpdate)
    perp, index = parser.price_events(msg)
    assert (perp.instrument, perp.price, perp.ts) == (
        "BTC_USDT-25DEC20",
        10934.62615417,
        1596095725000,
    )
    assert (index.instrument, index.price) == ("BTC.binance", 10933.62615417)
    assert parser.funding(msg) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"p": "abc"}, Reason.INVALID_VALUE),
        ({"p": "nan"}, Reason.INVALID_VALUE),
        ({"i": "inf"}, Reason.INVALID_VALUE),
        ({"p": "-1"}, Reason.INVALID_VALUE),
        ({"p": None}, Reason.INVALID_VALUE),
        ({"s": None}, Reason.INVALID_VALUE),
    ],
)
def test_bad_mark_price_is_rejected_with_its_reason(change: dict[str, Any], reason: Reason) -> None:
    payload = {**doc("mark_price_update.json"), **change}  # None: a JSON null
    with pytest.raises(Rejected) as info:
        parser.parse_frame(stream("btcusdt@markPrice@1s", payload))
    assert info.value.reason == reason


def test_mark_price_missing_field_and_bad_time() -> None:
    payload = doc("mark_price_update.json")
    del payload["p"]
    with pytest.raises(Rejected) as info:
        parser.parse_frame(stream("btcusdt@markPrice@1s", payload))
    assert info.value.reason == Reason.MISSING_FIELD
    seconds = {**doc("mark_price_update.json"), "E": 1562305380}  # seconds, not ms
    msg = parser.parse_frame(stream("btcusdt@markPrice@1s", seconds))
    assert isinstance(msg, MarkPriceUpdate)
    with pytest.raises(Rejected) as info:
        parser.price_events(msg)
    assert info.value.reason == Reason.INVALID_TIMESTAMP


def test_frames_that_are_not_data() -> None:
    assert parser.parse_frame(b'{"result":null,"id":7}') == parser.Reply(7, None)
    # Binance's documented error answer to a bad request.
    assert parser.parse_frame(b'{"code":0,"msg":"Unknown property","id":8}') == parser.Reply(
        8, "0 Unknown property"
    )
    with pytest.raises(Rejected) as info:
        parser.parse_frame(b"not json")
    assert info.value.reason == Reason.MALFORMED_JSON
    with pytest.raises(Rejected) as info:
        parser.parse_frame(stream("x", {"e": "somethingNew", "E": 1}))
    assert info.value.reason == Reason.UNKNOWN_TYPE
    order = {"e": "ORDER_TRADE_UPDATE", "E": 1568879465651, "T": 1568879465650, "o": {}}
    assert parser.parse_frame(bare(order)) == parser.Ignored("ORDER_TRADE_UPDATE")
    # A combined stream carries user data the same way.
    assert parser.parse_frame(stream("key", order)) == parser.Ignored("ORDER_TRADE_UPDATE")


# --- user data stream --------------------------------------------------------------------


def test_account_update_with_positions_nets_hedge_mode_legs() -> None:
    msg = parser.parse_frame(bare(doc("account_update_positions.json")))
    assert isinstance(msg, AccountUpdate)
    assert (msg.event_time, msg.transaction_time, msg.data.reason) == (
        1603093193284,
        1603093193280,
        "DEPOSIT",
    )
    assert [(b.asset, b.wallet, b.cross_wallet) for b in msg.data.balances] == [
        ("USDT", 94.91018561, 93.70831461),
        ("BNB", 0.02575839, 0.0),
    ]
    assert [(p.symbol, p.side, p.amount) for p in msg.data.positions] == [
        ("BTCUSDT", "BOTH", 0.0),
        ("BTCUSDT", "LONG", 0.010),
        ("BTCUSDT", "SHORT", 0.0),
        ("ETHUSDT", "BOTH", 0.0),
        ("ETHUSDT", "LONG", 0.0),
        ("ETHUSDT", "SHORT", -0.010),
    ]
    book = PositionBook()
    for p in msg.data.positions:
        assert book.update(p.symbol, p.side, p.amount, msg.transaction_time)
    # The documented account: 0.01 BTCUSDT long, -0.01 ETHUSDT short.
    assert book.held() == {"BTCUSDT": 0.010, "ETHUSDT": -0.010}


def test_account_update_with_a_time_in_seconds_is_refused() -> None:
    payload = {**doc("account_update_positions.json"), "T": 1603093193}
    with pytest.raises(Rejected) as info:
        parser.parse_frame(bare(payload))
    assert info.value.reason == Reason.INVALID_TIMESTAMP


def test_account_update_without_positions_merges_nothing_away() -> None:
    book = PositionBook()
    book.update("BTCUSDT", "LONG", 0.010, 1603093100000)
    book.update("ETHUSDT", "SHORT", -0.010, 1603093100000)
    msg = parser.parse_frame(bare(doc("account_update_balances_only.json")))
    assert isinstance(msg, AccountUpdate)
    assert msg.data.positions == []
    assert [(b.asset, b.wallet) for b in msg.data.balances] == [("BNB", 0.02575839)]
    for p in msg.data.positions:
        book.update(p.symbol, p.side, p.amount, msg.transaction_time)
    assert book.held() == {"BTCUSDT": 0.010, "ETHUSDT": -0.010}


def test_listen_key_expired_with_its_time_as_a_string() -> None:
    msg = parser.parse_frame(bare(doc("listen_key_expired.json")))
    assert isinstance(msg, ListenKeyExpired)
    assert msg.event_time == 1736996475556
    assert "WsCMN0a4" not in repr(msg)


# --- REST --------------------------------------------------------------------------------


def test_position_risk_v3() -> None:
    (item,) = parser.decode_position_risk(body("position_risk_v3.json"))
    assert (item.symbol, item.side, item.amount, item.update_time) == (
        "ADAUSDT",
        "BOTH",
        30.0,
        1720736417660,
    )
    assert (item.mark_price, item.notional, item.margin_asset) == (0.41047590, 12.31427700, "USDT")
    assert (item.initial_margin, item.maint_margin) == (0.61571385, 0.08004280)


def test_position_risk_hedge_mode_snapshot_replaces_the_book() -> None:
    book = PositionBook()
    book.update("ETHUSDT", "BOTH", 2.0, 1655217000000)  # held before, absent now: closed
    items = parser.decode_position_risk(body("position_risk_hedge.json"))
    symbols = book.apply_snapshot((r.symbol, r.side, r.amount, r.update_time) for r in items)
    assert symbols == ["BTCUSDT", "ETHUSDT"]
    assert book.held() == {"BTCUSDT": 0.001}
    assert book.net("ETHUSDT") == 0.0


def test_account_v3() -> None:
    acct = parser.decode_account(body("account_v3.json"))
    ev = parser.account_event(acct, "binance", 1720736417660)
    assert ev == AccountEvent(
        ts=1720736417660,
        account="binance",
        equity=103.12345678,
        initial_margin=0.0,
        maintenance_margin=0.0,
    )


def test_rest_errors_and_small_bodies() -> None:
    # Binance's documented keep-alive failure: "This listenKey does not exist." (-1125).
    err = parser.decode_error(b'{"code": -1125, "msg": "This listenKey does not exist."}')
    assert err is not None
    assert (err.code, err.msg) == (-1125, "This listenKey does not exist.")
    assert parser.decode_error(b"<html>502</html>") is None
    assert parser.decode_server_time(b'{"serverTime": 1499827319559}') == 1499827319559
    key = "pqia91ma19a5s61cv6a81va65sdf19v8a65a1a5s61cv6a81va65sdf19v8a65a1"
    assert parser.decode_listen_key(json.dumps({"listenKey": key}).encode()) == key
    with pytest.raises(Rejected):
        parser.decode_account(b'{"totalMarginBalance": "nan"}')


# --- the book: what arrives while the snapshot is in flight -------------------------------


def test_update_in_flight_newer_than_the_snapshot_wins() -> None:
    book = PositionBook()
    book.update("BTCUSDT", "BOTH", 1.0, 1000)
    book.begin_snapshot()
    book.update("BTCUSDT", "BOTH", 3.0, 3000)  # arrives while positionRisk is in flight
    book.update("ETHUSDT", "BOTH", -5.0, 3100)  # opened after the snapshot's view
    symbols = book.apply_snapshot([("BTCUSDT", "BOTH", 2.0, 2000)])
    assert symbols == ["BTCUSDT", "ETHUSDT"]
    assert book.held() == {"BTCUSDT": 3.0, "ETHUSDT": -5.0}


def test_snapshot_newer_than_an_update_in_flight_wins() -> None:
    book = PositionBook()
    book.begin_snapshot()
    book.update("BTCUSDT", "BOTH", 3.0, 3000)
    book.apply_snapshot([("BTCUSDT", "BOTH", 4.0, 4000)])
    assert book.held() == {"BTCUSDT": 4.0}
    # A late update older than what the snapshot saw changes nothing.
    assert not book.update("BTCUSDT", "BOTH", 3.5, 3500)
    assert book.held() == {"BTCUSDT": 4.0}


def test_snapshot_without_updates_in_flight_is_the_truth() -> None:
    book = PositionBook()
    book.update("BTCUSDT", "BOTH", 1.0, 5000)  # from before the reconnect
    book.begin_snapshot()
    book.apply_snapshot([])  # closed while away
    assert book.held() == {}
