"""Event schema v1: decoding, validation and the rejection reasons."""

from __future__ import annotations

import datetime as dt

import pytest

from monitor.model.events import (
    TS_MAX_MS,
    TS_MIN_MS,
    AccountEvent,
    Event,
    EventDecoder,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
    encode_event,
    to_epoch_ms,
)

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.fixture
def dec() -> EventDecoder:
    return EventDecoder()


def test_price_with_iso_timestamp_normalizes_to_epoch_ms(dec: EventDecoder) -> None:
    ev = dec.decode(
        b'{"type":"price","ts":"2026-01-01T00:00:00.250Z","instrument":"BTC-27DEC26-60000-C",'
        b'"price":0.05,"iv":0.55,"underlying_price":91000,"unknown_field":[1,2]}'
    )
    assert ev == PriceEvent(
        ts=TS + 250,
        instrument="BTC-27DEC26-60000-C",
        price=0.05,
        iv=0.55,
        underlying_price=91000.0,
    )


def test_naive_iso_is_utc_and_offsets_are_honoured() -> None:
    assert to_epoch_ms(dt.datetime(2026, 1, 1)) == TS
    tz = dt.timezone(dt.timedelta(hours=1))
    assert to_epoch_ms(dt.datetime(2026, 1, 1, 1, tzinfo=tz)) == TS
    assert to_epoch_ms(float(TS) + 0.4) == TS


@pytest.mark.parametrize(
    ("message", "reason", "mentions"),
    [
        (b"not json", Reason.MALFORMED_JSON, "malformed"),
        (b'{"type":"price","ts":1,"instrument":"BTC","price":NaN}', Reason.INVALID_VALUE, "NaN"),
        (
            b'{"type":"price","ts":%d,"instrument":"BTC","price":1e999}' % TS,
            Reason.INVALID_VALUE,
            "$.price",
        ),
        (
            b'{"type":"price","ts":%d,"instrument":"BTC","price":0}' % TS,
            Reason.INVALID_VALUE,
            "$.price",
        ),
        (
            b'{"type":"price","ts":%d,"instrument":"BTC","price":-3}' % TS,
            Reason.INVALID_VALUE,
            "$.price",
        ),
        (
            b'{"type":"price","ts":%d,"instrument":"BTC","price":"1"}' % TS,
            Reason.INVALID_VALUE,
            "$.price",
        ),
        (b'{"type":"price","ts":%d,"price":1}' % TS, Reason.MISSING_FIELD, "instrument"),
        (b'{"type":"trade","ts":1}', Reason.UNKNOWN_TYPE, "trade"),
        (b'{"ts":1,"price":1}', Reason.UNKNOWN_TYPE, "type"),
        (
            b'{"type":"price","ts":1700000000,"instrument":"BTC","price":1}',
            Reason.INVALID_TIMESTAMP,
            "epoch milliseconds",
        ),
        (
            b'{"type":"price","ts":"yesterday","instrument":"BTC","price":1}',
            Reason.INVALID_TIMESTAMP,
            "$.ts",
        ),
        (
            b'{"type":"position","ts":%d,"account":"a","instrument":"BTC","quantity":1e999}' % TS,
            Reason.INVALID_VALUE,
            "$.quantity",
        ),
        (
            b'{"type":"account","ts":%d,"account":"a","equity":1,"maintenance_margin":-1}' % TS,
            Reason.INVALID_VALUE,
            "maintenance_margin",
        ),
        (
            b'{"type":"instrument","instrument":"X","kind":"option","underlying":"BTC"}',
            Reason.MISSING_FIELD,
            "expiry, strike, option_type",
        ),
        (
            b'{"type":"instrument","instrument":"X","kind":"swap","underlying":"BTC"}',
            Reason.INVALID_VALUE,
            "$.kind",
        ),
    ],
)
def test_rejections_name_reason_and_field(
    dec: EventDecoder, message: bytes, reason: Reason, mentions: str
) -> None:
    with pytest.raises(Rejected) as info:
        dec.decode(message)
    assert info.value.reason is reason
    assert mentions in info.value.detail


def test_round_trip_all_types(dec: EventDecoder) -> None:
    events: list[Event] = [
        InstrumentEvent("BTC-X", "option", "BTC", "2026-12-27", 60000.0, "call", 1.0, True),
        PriceEvent(TS, "BTC", 90000.5),
        PositionEvent(TS + 1, "main", "BTC-PERPETUAL", -2.5),
        AccountEvent(TS + 2, "main", 1e6, 1e5, 5e4),
    ]
    for ev in events:
        assert dec.decode(encode_event(ev)) == ev


def test_decode_lines_fast_path_and_fallback_agree(dec: EventDecoder) -> None:
    good = [encode_event(PriceEvent(TS + i, "BTC", 100.0 + i)) for i in range(5)]
    clean = b"\n".join(good) + b"\n"
    events, rejections = dec.decode_lines(clean)
    assert [e.ts for e in events] == [TS + i for i in range(5)]
    assert rejections == []

    dirty = b"\n".join([good[0], b"{garbage", good[1], b"", good[2]]) + b"\n"
    events, rejections = dec.decode_lines(dirty)
    assert [e.ts for e in events] == [TS, TS + 1, TS + 2]
    assert [(n, r.reason) for n, r in rejections] == [(1, Reason.MALFORMED_JSON)]


@pytest.mark.parametrize(
    ("odd", "expect"),
    [
        # The batch check's edges: every stamp an int in range keeps the events as decoded;
        # anything else goes event by event (normalized, or that line refused).
        (f'{{"type":"price","ts":{TS_MIN_MS},"instrument":"B","price":1}}', TS_MIN_MS),
        (f'{{"type":"price","ts":{TS_MAX_MS},"instrument":"B","price":1}}', TS_MAX_MS),
        (f'{{"type":"price","ts":{TS_MAX_MS + 1},"instrument":"B","price":1}}', None),
        (f'{{"type":"price","ts":{TS_MIN_MS - 1},"instrument":"B","price":1}}', None),
        ('{"type":"price","ts":1767225600500.0,"instrument":"B","price":1}', TS + 500),
        ('{"type":"price","ts":1767225600.5,"instrument":"B","price":1}', None),  # seconds
        ('{"type":"instrument","instrument":"B-X","kind":"option","underlying":"B"}', None),
    ],
)
def test_decode_lines_checks_every_stamp_of_a_batch(
    dec: EventDecoder, odd: str, expect: int | None
) -> None:
    good = [encode_event(PriceEvent(TS + i, "BTC", 100.0 + i)) for i in range(50)]
    buf = b"\n".join([*good[:20], odd.encode(), *good[20:]]) + b"\n"
    events, rejections = dec.decode_lines(buf)
    expected = [dec.decode(line) for line in good]
    if expect is None:
        assert [n for n, _ in rejections] == [20]
        assert events == expected
    else:
        assert rejections == []
        assert [type(e.ts) for e in events] == [int] * 51
        assert events[20].ts == expect
        assert events[:20] + events[21:] == expected


def test_decode_lines_normalizes_iso_timestamps(dec: EventDecoder) -> None:
    buf = b'{"type":"price","ts":"2026-01-01T00:00:01Z","instrument":"BTC","price":1}\n'
    events, _ = dec.decode_lines(buf)
    assert events[0].ts == TS + 1000


def test_decode_lines_rejects_bad_timestamp_line_only(dec: EventDecoder) -> None:
    buf = b"\n".join(
        [
            encode_event(PriceEvent(TS, "BTC", 1.0)),
            b'{"type":"price","ts":5,"instrument":"BTC","price":1}',
        ]
    )
    events, rejections = dec.decode_lines(buf)
    assert len(events) == 1
    assert rejections[0][0] == 1
    assert rejections[0][1].reason is Reason.INVALID_TIMESTAMP
