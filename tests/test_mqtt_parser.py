"""connectors.mqtt.parser: topics and payloads to events, with no broker."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from connectors.mqtt.parser import PayloadParser, subscriptions, topic_filters
from monitor.model.events import AccountEvent, PositionEvent, PriceEvent, Reason, Rejected

T0 = 1_767_225_600_000
PRICE = {"type": "price", "ts": T0, "instrument": "BTC", "price": 87_250.5}
POSITION = {
    "type": "position",
    "ts": T0 + 5,
    "account": "main",
    "instrument": "BTC-27MAR26-90000-C",
    "quantity": -12.5,
}
ACCOUNT = {
    "type": "account",
    "ts": "2026-01-01T00:00:01Z",
    "account": "main",
    "equity": 1_250_000.0,
    "maintenance_margin": 310_000.0,
}


def payload(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_subscriptions_cover_the_four_categories() -> None:
    assert topic_filters("desk1/riskmon") == [
        "desk1/riskmon/prices/#",
        "desk1/riskmon/positions/#",
        "desk1/riskmon/accounts/#",
        "desk1/riskmon/instruments/#",
    ]


def test_prices_are_subscribed_at_their_own_qos() -> None:
    assert subscriptions("riskmon", qos=1, price_qos=0) == [
        ("riskmon/prices/#", 0),
        ("riskmon/positions/#", 1),
        ("riskmon/accounts/#", 1),
        ("riskmon/instruments/#", 1),
    ]
    assert {q for _, q in subscriptions("riskmon", qos=2, price_qos=1)} == {1, 2}


def test_one_event_per_message_decodes_every_field() -> None:
    p = PayloadParser("riskmon")
    (ev,), rej = p.parse("riskmon/positions/main/BTC-27MAR26-90000-C", payload(POSITION))
    assert rej == []
    assert ev == PositionEvent(
        ts=T0 + 5, account="main", instrument="BTC-27MAR26-90000-C", quantity=-12.5
    )
    (acct,), rej = p.parse("riskmon/accounts/main", payload(ACCOUNT))
    assert rej == []
    assert isinstance(acct, AccountEvent)
    assert (acct.ts, acct.equity, acct.maintenance_margin, acct.initial_margin) == (
        T0 + 1000,  # the ISO timestamp, as epoch ms
        1_250_000.0,
        310_000.0,
        None,
    )


def test_an_array_keeps_its_good_events_and_counts_each_bad_one() -> None:
    p = PayloadParser("riskmon")
    bad_price = {**PRICE, "price": -1.0}
    no_ts = {k: v for k, v in PRICE.items() if k != "ts"}
    later = {**PRICE, "ts": T0 + 250, "price": 87_300.0}
    events, rej = p.parse("riskmon/prices/BTC", payload([PRICE, bad_price, no_ts, later]))
    assert events == [
        PriceEvent(ts=T0, instrument="BTC", price=87_250.5),
        PriceEvent(ts=T0 + 250, instrument="BTC", price=87_300.0),
    ]
    assert [r.reason for r in rej] == [Reason.INVALID_VALUE, Reason.MISSING_FIELD]


def test_an_event_on_another_category_s_topic_is_refused() -> None:
    p = PayloadParser("riskmon")
    events, rej = p.parse("riskmon/prices/main", payload(POSITION))
    assert events == []
    assert [(r.reason, r.detail) for r in rej] == [
        (Reason.UNKNOWN_TYPE, "a position event on a prices topic")
    ]


def test_garbage_payloads_are_counted_by_reason() -> None:
    p = PayloadParser("riskmon")
    cases = {
        b"{not json": Reason.MALFORMED_JSON,
        b"": Reason.MALFORMED_JSON,
        b"[1, {": Reason.MALFORMED_JSON,
        b'{"type":"trade","ts":1767225600000}': Reason.UNKNOWN_TYPE,
        b'{"type":"price","ts":1767225600000,"instrument":"BTC","price":NaN}': (
            Reason.INVALID_VALUE  # JSON has no NaN, but the publisher meant a number
        ),
        b'{"type":"price","ts":1767225600,"instrument":"BTC","price":1}': (
            Reason.INVALID_TIMESTAMP  # seconds, not milliseconds
        ),
    }
    for raw, reason in cases.items():
        events, rej = p.parse("riskmon/prices/BTC", raw)
        assert events == [], raw
        assert [r.reason for r in rej] == [reason], raw


def test_a_topic_outside_the_prefix_is_refused() -> None:
    events, rej = PayloadParser("riskmon").parse("other/prices/BTC", payload(PRICE))
    assert events == []
    assert [r.reason for r in rej] == [Reason.UNKNOWN_TYPE]


@given(
    topic=st.sampled_from(["riskmon/prices/BTC", "riskmon", "x/prices/BTC"]) | st.text(max_size=40),
    raw=st.binary(max_size=300),
)
def test_never_raises_on_anything_a_publisher_sends(topic: str, raw: bytes) -> None:
    events, rej = PayloadParser("riskmon").parse(topic, raw)
    # Nothing escapes as an exception; whatever is not an event is a reasoned rejection.
    assert all(isinstance(r, Rejected) and r.reason in Reason for r in rej)
    assert all(isinstance(e, PriceEvent) for e in events)  # only a prices topic yields


@given(
    prices=st.lists(
        st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False),
        min_size=1,
        max_size=20,
    )
)
def test_arrays_decode_every_value_exactly(prices: list[float]) -> None:
    raw = payload([{**PRICE, "ts": T0 + i, "price": x} for i, x in enumerate(prices)])
    events, rej = PayloadParser("riskmon").parse("riskmon/prices/BTC", raw)
    assert rej == []
    assert [(e.ts, e.price) for e in events if isinstance(e, PriceEvent)] == [
        (T0 + i, x) for i, x in enumerate(prices)
    ]
