"""The Deribit parser on the messages Deribit documents (tests/fixtures/deribit/*.json,
each with a ``_source`` note) and the option tickers in tests/fixtures/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from connectors.deribit import parser
from connectors.deribit.messages import AccountSummary, Instrument, Position, Ticker
from monitor.model.events import Reason, Rejected

FIX = Path(__file__).parent / "fixtures"


def raw(name: str) -> bytes:
    return (FIX / name).read_bytes()


def doc(name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(raw(name))
    return out


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@pytest.mark.parametrize("pretty", [True, False])
def test_perpetual_ticker(pretty: bool) -> None:
    body = raw("deribit/ticker_perpetual.json")
    frame = parser.parse_frame(body if pretty else compact(json.loads(body)))
    assert isinstance(frame, Ticker)
    ev = parser.to_price_event(frame)
    assert (ev.ts, ev.instrument, ev.price) == (1623059681955, "BTC-PERPETUAL", 36288.31)
    assert (ev.iv, ev.underlying_price, ev.greeks) == (None, None, None)
    assert parser.funding(frame) == (0.0, 0.00002203)
    assert frame.index_price == 36297.02


def test_option_ticker_keeps_iv_forward_and_greeks() -> None:
    frame = parser.parse_frame(compact(doc("deribit_ticker_option.json")))
    assert isinstance(frame, Ticker)
    ev = parser.to_price_event(frame)
    assert ev.instrument == "BTC-27DEC24-100000-C"
    assert ev.ts == 1734686127123
    assert ev.price == 0.02059602  # coin
    assert ev.iv == pytest.approx(0.5437)  # mark_iv 54.37 %
    assert ev.underlying_price == 97869.27
    assert ev.greeks is not None
    g = ev.greeks
    assert (g.delta, g.gamma, g.vega, g.theta) == (0.40144, 5e-05, 52.21526, -204.31102)
    assert parser.funding(frame) is None


def test_recorded_option_ticker() -> None:
    data = doc("deribit_ticker_option_recorded.json")
    body = data["params"]["data"]
    frame = parser.parse_frame(compact({k: v for k, v in data.items() if k != "_comment"}))
    assert isinstance(frame, Ticker)
    ev = parser.to_price_event(frame)
    assert ev.price == body["mark_price"]
    assert ev.iv == pytest.approx(body["mark_iv"] / 100.0)


def test_index() -> None:
    frame = parser.parse_frame(raw("deribit/index.json"))
    assert isinstance(frame, parser.Notification)
    assert frame.channel == "deribit_price_index.btc_usd"
    ev = parser.index_to_price_event(frame.data)
    assert (ev.ts, ev.instrument, ev.price) == (1535098298227, "BTC", 6521.17)


def test_user_changes_inverse_position_in_usd() -> None:
    frame = parser.parse_frame(raw("deribit/changes_future.json"))
    assert isinstance(frame, parser.Notification)
    changes = parser.decode_changes(frame.data)
    [ev] = parser.changes_positions(changes, "deribit", 1_767_225_600_000)
    # The documented size: 185160 USD of BTC-PERPETUAL; ts of the trade in the message.
    assert (ev.ts, ev.account, ev.instrument) == (1605780344032, "deribit", "BTC-PERPETUAL")
    assert ev.quantity == 185160.0
    declared = parser.inverse_future_event("BTC-PERPETUAL")
    assert declared is not None
    assert (declared.kind, declared.underlying, declared.inverse, declared.multiplier) == (
        "perpetual",
        "BTC",
        True,
        1.0,
    )
    dated = parser.inverse_future_event("ETH-27DEC24")
    assert dated is not None
    assert (dated.kind, dated.expiry) == ("future", "2024-12-27T08:00:00Z")
    assert parser.inverse_future_event("SOL_USDC-PERPETUAL") is None  # linear
    assert parser.inverse_future_event("BTC-27DEC24-100000-C") is None


def test_get_positions() -> None:
    frame = parser.parse_frame(raw("deribit/get_positions.json"))
    assert isinstance(frame, parser.Response)
    assert frame.id == 2236
    assert frame.result is not None
    [pos] = parser.decode_positions(frame.result)
    assert (pos.instrument_name, pos.size) == ("BTC-PERPETUAL", 50.0)
    assert parser.position_quantity(pos) == 50.0  # USD: declared inverse


def test_position_quantity_units() -> None:
    short_perp = msgspec.convert(
        {"instrument_name": "ETH-PERPETUAL", "kind": "future", "size": -1000.0,
         "mark_price": 2500.0}, Position
    )  # fmt: skip
    assert parser.position_quantity(short_perp) == -1000.0
    option = msgspec.convert(
        {"instrument_name": "BTC-27DEC24-100000-C", "kind": "option", "size": -2.5},
        Position,
    )
    assert parser.position_quantity(option) == -2.5
    linear = msgspec.convert(
        {"instrument_name": "SOL_USDC-PERPETUAL", "kind": "future", "size": 12.0,
         "size_currency": 12.0, "mark_price": 150.0}, Position
    )  # fmt: skip
    assert parser.position_quantity(linear) == 12.0


def test_account_summary_to_usd() -> None:
    frame = parser.parse_frame(raw("deribit/account_summary.json"))
    assert isinstance(frame, parser.Response)
    assert frame.result is not None
    s = parser.decode_summary(frame.result)
    assert (s.currency, s.equity, s.maintenance_margin) == ("BTC", 302.61869214, 0.8857841)
    ev = parser.account_event(1_767_225_600_000, "main", {"BTC": s}, {"BTC": 50_000.0})
    assert ev is not None
    assert ev.equity == pytest.approx(302.61869214 * 50_000.0)
    assert ev.maintenance_margin == pytest.approx(0.8857841 * 50_000.0)
    assert ev.initial_margin == pytest.approx(1.01529592 * 50_000.0)  # projected, as documented
    assert parser.account_event(1, "main", {"BTC": s}, {}) is None  # no index: no made-up USD
    # The coin figures travel too: riskmon revalues them at its own index, and the coin
    # outside options is collateral (exposure).
    assert ev.currencies is not None
    btc = ev.currencies["BTC"]
    assert (btc.equity, btc.maintenance_margin, btc.initial_margin) == (
        302.61869214,
        0.8857841,
        1.01529592,
    )
    assert btc.collateral == pytest.approx(302.61869214 - (s.options_value or 0.0), abs=1e-12)


def test_portfolio_notification() -> None:
    frame = parser.parse_frame(raw("deribit/portfolio.json"))
    assert isinstance(frame, parser.Notification)
    assert frame.channel == "user.portfolio.btc"
    s = parser.decode_summary(frame.data)
    usdc = AccountSummary(currency="USDC", equity=1000.0, maintenance_margin=10.0)
    ev = parser.account_event(1_767_225_600_000, "a", {"BTC": s, "USDC": usdc}, {"BTC": 2.0})
    assert ev is not None
    assert ev.equity == pytest.approx(302.61869214 * 2.0 + 1000.0)
    assert ev.initial_margin == pytest.approx(1.01529592 * 2.0)


def test_heartbeats_and_errors() -> None:
    hb = doc("deribit/heartbeat.json")
    assert parser.parse_frame(compact(hb["test_request"])) == parser.Heartbeat(True)
    assert parser.parse_frame(compact(hb["heartbeat"])) == parser.Heartbeat(False)
    ok = parser.parse_frame(compact(hb["set_heartbeat_response"]))
    assert isinstance(ok, parser.Response)
    assert ok.id == 1569
    assert ok.result is not None
    assert bytes(ok.result) == b'"ok"'
    err = parser.parse_frame(raw("deribit/error_token.json"))
    assert isinstance(err, parser.Response)
    assert err.error is not None
    assert (err.id, err.error.code, err.error.message) == (42, 13009, "invalid_token")


def test_instrument_event_from_documented_option() -> None:
    body = doc("deribit/get_instrument_option.json")["result"]
    inst = msgspec.convert(body, Instrument)
    ev = parser.instrument_event(inst)
    assert ev is not None
    assert (ev.instrument, ev.kind, ev.underlying) == ("BTC-13JAN23-16000-P", "option", "BTC")
    assert (ev.expiry, ev.strike, ev.option_type) == ("2023-01-13T08:00:00Z", 16000.0, "put")
    assert ev.inverse is True
    assert ev.multiplier == 1.0
    perp = msgspec.convert(
        {"instrument_name": "BTC-PERPETUAL", "kind": "future", "base_currency": "BTC"}, Instrument
    )
    assert parser.instrument_event(perp) is None


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"not json", Reason.MALFORMED_JSON),
        (b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms",'
         b'"data":{"instrument_name":"X","timestamp":1767225600000}}}', Reason.MISSING_FIELD),
        (b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms",'
         b'"data":{"instrument_name":"X","mark_price":0,"timestamp":1767225600000}}}',
         Reason.INVALID_VALUE),
        (b'{"jsonrpc":"2.0","method":"mystery"}', Reason.UNKNOWN_TYPE),
        (b"[1,2]", Reason.INVALID_VALUE),
    ],
)  # fmt: skip
def test_bad_frames_are_rejections(frame: bytes, reason: Reason) -> None:
    with pytest.raises(Rejected) as info:
        parser.parse_frame(frame)
    assert info.value.reason is reason


def test_ticker_in_seconds_is_an_invalid_timestamp() -> None:
    frame = parser.parse_frame(
        b'{"jsonrpc":"2.0","method":"subscription","params":{"channel":"ticker.X.100ms",'
        b'"data":{"instrument_name":"X","mark_price":1.5,"timestamp":1767225600}}}'
    )
    assert isinstance(frame, Ticker)
    with pytest.raises(Rejected) as info:
        parser.to_price_event(frame)
    assert info.value.reason is Reason.INVALID_TIMESTAMP


def test_index_names() -> None:
    assert parser.index_underlying("eth_usd") == "ETH"
    assert parser.index_underlying("xrp_usdc") == "XRP"
    assert parser.index_underlying("weird") is None
