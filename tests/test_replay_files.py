"""Replay readers: JSONL, gzip and Parquet recordings read in bounded chunks."""

from __future__ import annotations

import gzip
import json
import logging
import math
import random
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from connectors.replay import iter_batches
from monitor.engine.record import PARQUET_SCHEMA, Recorder
from monitor.model.events import (
    AccountEvent,
    Event,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
)

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def _read(path: Path, **kw: Any) -> tuple[list[Event], list[tuple[int, Reason]], int]:
    """All events, (number, reason) of all rejections, and the number of batches."""
    events: list[Event] = []
    rejections: list[tuple[int, Reason]] = []
    batches = 0
    for batch in iter_batches(path, **kw):
        batches += 1
        events += batch.events
        rejections += [(n, rej.reason) for n, rej in batch.rejections]
    return events, rejections, batches


def _price(ts: int, instrument: str, price: float) -> bytes:
    return b'{"type":"price","ts":%d,"instrument":"%s","price":%r}' % (
        ts,
        instrument.encode(),
        price,
    )


# line -> what it is; the expected outcome follows in EXPECTED_*
LINES: list[bytes] = [
    _price(TS, "BTC", 90000.0),  # 1
    b"not json at all",  # 2
    b"",  # 3 blank
    b'{"type":"position","ts":%d,"account":"a","instrument":"BTC-PERPETUAL","quantity":-2}'
    % (TS + 1),  # 4
    b'{"type":"price","ts":%d,"instrument":"BTC","price":NaN}' % TS,  # 5
    b'{"type":"price","ts":%d,"instrument":"BTC","price":1e999}' % TS,  # 6
    b'{"type":"trade","ts":%d,"instrument":"BTC","price":1}' % TS,  # 7
    _price(TS + 2, "NO-SUCH-INSTRUMENT", 1.5),  # 8 accepted: resolution is the engine's
    b"   \t ",  # 9 blank
    b'{"type":"price","ts":%d,"instrument":"BTC"}' % TS,  # 10
    _price(TS // 1000, "BTC", 1.0),  # 11 seconds, not ms
    _price(TS, "BTC", -3.0),  # 12
    b'{"type":"account","ts":%d,"account":"a","equity":1e6,"maintenance_margin":2e5}'
    % (TS + 3),  # 13
    b'{"type":"instrument","instrument":"BTC-X-C","kind":"option","underlying":"BTC",'
    b'"expiry":"2026-12-27","strike":60000,"option_type":"call","inverse":true}',  # 14
    b'{"type":"instrument","instrument":"BTC-Y-C","kind":"option","underlying":"BTC"}',  # 15
    _price(TS + 4, "ETH", 3000.0) + _price(TS + 5, "ETH", 3001.0),  # 16 two objects
    b'{"type":"price","ts":%d,' % TS,  # 17 one object over two lines
    b'"instrument":"BTC","price":1}',  # 18
    _price(TS + 6, "SOL", 150.0) + b"\r",  # 19 CRLF
    b'{"type":"price","ts":%d,"instrument":"BT' % TS,  # 20 truncated, no newline
]
EXPECTED_EVENTS: list[Event] = [
    PriceEvent(TS, "BTC", 90000.0),
    PositionEvent(TS + 1, "a", "BTC-PERPETUAL", -2.0),
    PriceEvent(TS + 2, "NO-SUCH-INSTRUMENT", 1.5),
    AccountEvent(TS + 3, "a", 1e6, maintenance_margin=2e5),
    InstrumentEvent(
        "BTC-X-C",
        "option",
        "BTC",
        expiry="2026-12-27",
        strike=60000.0,
        option_type="call",
        inverse=True,
    ),
    PriceEvent(TS + 6, "SOL", 150.0),
]
EXPECTED_REJECTIONS = [
    (2, Reason.MALFORMED_JSON),
    (5, Reason.INVALID_VALUE),  # NaN: a value JSON cannot carry, like 1e999
    (6, Reason.INVALID_VALUE),
    (7, Reason.UNKNOWN_TYPE),
    (10, Reason.MISSING_FIELD),
    (11, Reason.INVALID_TIMESTAMP),
    (12, Reason.INVALID_VALUE),
    (15, Reason.MISSING_FIELD),
    (16, Reason.MALFORMED_JSON),
    (17, Reason.MALFORMED_JSON),
    (18, Reason.INVALID_VALUE),  # a JSON string, not an object
    (20, Reason.MALFORMED_JSON),
]
GARBAGE = b"\n".join(LINES)  # no newline after the last line


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 200, 4 << 20])
def test_jsonl_with_garbage_gives_exact_events_and_line_numbers(
    tmp_path: Path, chunk_bytes: int
) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(GARBAGE)
    events, rejections, _ = _read(path, chunk_bytes=chunk_bytes)
    assert events == EXPECTED_EVENTS
    assert rejections == EXPECTED_REJECTIONS


@pytest.mark.parametrize("chunk_bytes", [1, 64, 4 << 20])
def test_gzip_reads_like_plain_jsonl(tmp_path: Path, chunk_bytes: int) -> None:
    path = tmp_path / "rec.jsonl.gz"
    # two gzip members, as an appending writer would leave: both are read
    half = GARBAGE.index(b"\n", len(GARBAGE) // 2) + 1
    path.write_bytes(gzip.compress(GARBAGE[:half]) + gzip.compress(GARBAGE[half:]))
    events, rejections, _ = _read(path, chunk_bytes=chunk_bytes)
    assert events == EXPECTED_EVENTS
    assert rejections == EXPECTED_REJECTIONS


def test_rejection_carries_the_decoders_detail(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(_price(TS, "BTC", 1.0) + b"\n" + _price(TS, "BTC", -1.0) + b"\n")
    (batch,) = iter_batches(path)
    ((line, rej),) = batch.rejections
    assert line == 2
    assert isinstance(rej, Rejected)
    assert rej.reason is Reason.INVALID_VALUE
    assert "$.price" in rej.detail


@pytest.mark.parametrize("chunk_bytes", [64, 4 << 20])
def test_one_object_per_line_even_when_the_fast_path_would_take_more(
    tmp_path: Path, chunk_bytes: int
) -> None:
    # msgspec's one-call decode accepts whitespace-separated JSON; a recording is one object
    # per line, whatever the chunking.
    good = _price(TS, "BTC", 1.0)
    path = tmp_path / "rec.jsonl"
    path.write_bytes(
        b"\n".join([good, good + b" " + good, good, b'{"type":"price",', b'"ts":%d,' % TS, good])
        + b"\n"
    )
    events, rejections, _ = _read(path, chunk_bytes=chunk_bytes)
    assert events == [PriceEvent(TS, "BTC", 1.0)] * 3
    assert rejections == [
        (2, Reason.MALFORMED_JSON),
        (4, Reason.MALFORMED_JSON),
        (5, Reason.INVALID_VALUE),  # a JSON string, not an object
    ]


def test_last_line_without_newline_is_read(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    path.write_bytes(_price(TS, "BTC", 1.0) + b"\n" + _price(TS + 1, "ETH", 2.0))
    events, rejections, _ = _read(path, chunk_bytes=8)
    assert events == [PriceEvent(TS, "BTC", 1.0), PriceEvent(TS + 1, "ETH", 2.0)]
    assert rejections == []


def test_jsonl_streams_in_bounded_batches(tmp_path: Path) -> None:
    lines = [_price(TS + i, f"I{i % 50}", 100.0 + i) for i in range(5000)]
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    chunk_bytes = 16 << 10
    assert path.stat().st_size > 10 * chunk_bytes
    first = next(iter(iter_batches(path, chunk_bytes=chunk_bytes)))
    per_line = len(lines[0]) + 1
    assert 0 < len(first.events) <= chunk_bytes // (per_line - 10) + 1
    events, rejections, batches = _read(path, chunk_bytes=chunk_bytes)
    assert batches >= 10
    assert rejections == []
    assert [e.ts for e in events] == [TS + i for i in range(5000)]


def test_truncated_gzip_stream_yields_what_it_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    written = [PriceEvent(TS + i, "BTC", 100.0 + i) for i in range(400)]
    path = tmp_path / "rec.jsonl.gz"
    rec = Recorder(path, flush_rows=100)
    for ev in written:
        rec.write(ev)
    rec.flush()
    data = path.read_bytes()  # the recorder is "killed" here: no gzip trailer
    rec.close()

    killed = tmp_path / "killed.jsonl.gz"
    killed.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="connectors.replay"):
        events, rejections, _ = _read(killed)
    assert events == written
    assert rejections == []
    assert "ends early" in caplog.text

    # cut inside the deflate data as well: a prefix of the events, at most a torn last line
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    events, rejections, _ = _read(cut)
    assert 100 <= len(events) < len(written)
    assert events == written[: len(events)]
    assert rejections in ([], [(len(events) + 1, Reason.MALFORMED_JSON)])


@pytest.mark.parametrize("name", ["rec.json", "rec.csv", "rec.jsonl.bz2", "rec"])
def test_unknown_suffix_names_the_supported_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.jsonl, \.jsonl\.gz, \.parquet"):
        iter_batches(tmp_path / name)


def test_not_parquet_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    path.write_bytes(b"not parquet at all\n")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        list(iter_batches(path))


# --- Parquet ----------------------------------------------------------------------------


def _parquet(path: Path, rows: list[dict[str, Any]], schema: Any = PARQUET_SCHEMA) -> Path:
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, row_group_size=7)
    return path


BAD_ROWS: list[tuple[dict[str, Any], Event | Reason]] = [
    ({"type": "price", "ts": TS, "instrument": "BTC", "price": 9e4}, PriceEvent(TS, "BTC", 9e4)),
    ({"type": "price", "ts": TS, "instrument": "BTC", "price": None}, Reason.MISSING_FIELD),
    ({"type": "price", "ts": TS, "instrument": "BTC", "price": -1.0}, Reason.INVALID_VALUE),
    ({"type": "price", "ts": TS, "instrument": "BTC", "price": math.nan}, Reason.INVALID_VALUE),
    (
        {"type": "price", "ts": TS, "instrument": "X", "price": 1.0, "iv": math.inf},
        Reason.INVALID_VALUE,
    ),
    (
        {"type": "price", "ts": TS + 1, "instrument": "X", "price": 0.05, "iv": 0.6},
        PriceEvent(TS + 1, "X", 0.05, iv=0.6),
    ),
    ({"type": "trade", "ts": TS, "instrument": "BTC", "price": 1.0}, Reason.UNKNOWN_TYPE),
    ({"type": None, "ts": TS, "instrument": "BTC", "price": 1.0}, Reason.UNKNOWN_TYPE),
    (
        {"type": "price", "ts": TS // 1000, "instrument": "BTC", "price": 1.0},
        Reason.INVALID_TIMESTAMP,
    ),
    ({"type": "price", "ts": None, "instrument": "BTC", "price": 1.0}, Reason.MISSING_FIELD),
    (
        {"type": "position", "ts": TS, "account": "a", "instrument": "BTC", "quantity": None},
        Reason.MISSING_FIELD,
    ),
    (
        {"type": "position", "ts": TS, "account": "a", "instrument": "BTC", "quantity": 0.0},
        PositionEvent(TS, "a", "BTC", 0.0),
    ),
    (
        {"type": "account", "ts": TS, "account": "a", "equity": 5.0, "maintenance_margin": -1.0},
        Reason.INVALID_VALUE,
    ),
    (
        {"type": "account", "ts": TS, "account": "a", "equity": -5.0, "initial_margin": 0.0},
        AccountEvent(TS, "a", -5.0, initial_margin=0.0),
    ),
    (
        {"type": "instrument", "instrument": "O", "kind": "option", "underlying": "BTC"},
        Reason.MISSING_FIELD,
    ),
    (
        {"type": "instrument", "instrument": "O", "kind": "bond", "underlying": "BTC"},
        Reason.INVALID_VALUE,
    ),
    (
        {"type": "instrument", "instrument": "S", "kind": "spot", "underlying": "SOL"},
        InstrumentEvent("S", "spot", "SOL"),
    ),
    (
        {"type": "price", "ts": TS + 2, "instrument": "NO-SUCH", "price": 2.0},
        PriceEvent(TS + 2, "NO-SUCH", 2.0),
    ),
]


@pytest.mark.parametrize("chunk_rows", [1, 3, 65536])
def test_parquet_bad_rows_are_rejected_alone(tmp_path: Path, chunk_rows: int) -> None:
    path = _parquet(tmp_path / "rec.parquet", [row for row, _ in BAD_ROWS])
    events, rejections, _ = _read(path, chunk_rows=chunk_rows)
    assert events == [want for _, want in BAD_ROWS if not isinstance(want, Reason)]
    assert rejections == [
        (n, want) for n, (_, want) in enumerate(BAD_ROWS, 1) if isinstance(want, Reason)
    ]


def test_parquet_streams_in_batches_of_chunk_rows(tmp_path: Path) -> None:
    rows = [
        {"type": "price", "ts": TS + i, "instrument": f"I{i % 50}", "price": 1.0 + i}
        for i in range(1000)
    ]
    path = tmp_path / "rec.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), path, row_group_size=250)
    # batches are chunk_rows rows, whatever the row groups (250 here)
    assert [len(b.events) for b in iter_batches(path, chunk_rows=100)] == [100] * 10
    assert [len(b.events) for b in iter_batches(path, chunk_rows=300)] == [300] * 3 + [100]
    events, _, _ = _read(path, chunk_rows=100)
    assert events == [PriceEvent(TS + i, f"I{i % 50}", 1.0 + i) for i in range(1000)]


def test_parquet_from_another_writer(tmp_path: Path) -> None:
    # a subset of the columns, other types (timestamp ts, integer price), an extra column
    schema = pa.schema(
        [
            ("venue", pa.string()),
            ("type", pa.large_string()),
            ("ts", pa.timestamp("ms", tz="UTC")),
            ("instrument", pa.string()),
            ("price", pa.int64()),
        ]
    )
    rows = [
        {"venue": "x", "type": "price", "ts": TS + 250, "instrument": "BTC", "price": 90000},
        {"venue": "x", "type": "price", "ts": TS, "instrument": "ETH", "price": 0},
    ]
    path = _parquet(tmp_path / "rec.parquet", rows, schema)
    events, rejections, _ = _read(path)
    assert events == [PriceEvent(TS + 250, "BTC", 90000.0)]
    assert type(events[0].ts) is int
    assert rejections == [(2, Reason.INVALID_VALUE)]


def test_parquet_without_usable_type_column_rejects_every_row(tmp_path: Path) -> None:
    rows = [{"ts": TS, "instrument": "BTC", "price": 1.0}] * 2
    missing = _parquet(tmp_path / "missing.parquet", rows, pa.schema(list(PARQUET_SCHEMA)[1:4]))
    assert _read(missing)[:2] == ([], [(1, Reason.UNKNOWN_TYPE), (2, Reason.UNKNOWN_TYPE)])
    typed = pa.schema([("type", pa.int64()), *list(PARQUET_SCHEMA)[1:4]])
    numeric = _parquet(tmp_path / "numeric.parquet", [{"type": 1, **rows[0]}], typed)
    assert _read(numeric)[:2] == ([], [(1, Reason.UNKNOWN_TYPE)])


def _json_text(v: Any) -> str:
    # JSON has no NaN/inf; an out-of-range literal is the closest JSON can say. A Parquet
    # map ([(key, value)]) is a JSON object; a null inside a struct is an absent field.
    if isinstance(v, float) and not math.isfinite(v):
        return "-1e999" if v < 0 else "1e999"
    if isinstance(v, list) and all(isinstance(x, tuple) for x in v):
        v = dict(v)
    if isinstance(v, dict):
        items = [f"{json.dumps(k)}:{_json_text(x)}" for k, x in v.items() if x is not None]
        return "{" + ",".join(items) + "}"
    return json.dumps(v)


def _json_line(row: dict[str, Any]) -> bytes:
    parts = [f'"{k}":{_json_text(v)}' for k, v in row.items() if v is not None]
    return ("{" + ",".join(parts) + "}").encode()


def test_parquet_column_checks_agree_with_the_json_decoder(tmp_path: Path) -> None:
    # Random rows from edge-value pools: the column-wise fast path must accept and reject
    # exactly what the JSON decoder does, with the same reasons and numbers.
    rng = random.Random(7)
    floats = [1.0, 2.5e4, 1e-300, None] * 4 + [0.0, -1.0, math.nan, math.inf, -math.inf]
    pools: dict[str, list[Any]] = {
        "type": ["price"] * 4 + ["position", "account", "instrument", "bogus", None],
        "ts": [TS, TS + 7, 7_258_118_400_000] * 4 + [None, 0, TS // 1000, TS * 1000],
        "instrument": ["BTC", "BTC-27DEC26-60000-C", None],
        "account": ["a", None],
        "kind": ["option", "spot", "swap", None],
        "underlying": ["BTC", None],
        "expiry": ["2026-12-27", None],
        "option_type": ["call", "put", "straddle", None],
        "inverse": [True, False, None],
        "greeks": [None] * 6
        + [
            {"delta": 0.5, "gamma": 1e-5, "vega": 20.0, "theta": -3.0},
            {"delta": -0.25, "gamma": None, "vega": None, "theta": None},
            {"delta": None, "gamma": None, "vega": None, "theta": None},
            {"delta": math.nan, "gamma": 1.0, "vega": None, "theta": None},
            {"delta": 0.1, "gamma": None, "vega": math.inf, "theta": None},
        ],
        "currencies": [None] * 4
        + [
            [
                (
                    "BTC",
                    {
                        "equity": 1.5,
                        "initial_margin": 0.1,
                        "maintenance_margin": 0.05,
                        "collateral": 0.5,
                    },
                )
            ],
            [
                (
                    "ETH",
                    {
                        "equity": 2.0,
                        "initial_margin": None,
                        "maintenance_margin": None,
                        "collateral": None,
                    },
                ),
                (
                    "USDC",
                    {
                        "equity": -1.0,
                        "initial_margin": None,
                        "maintenance_margin": 0.0,
                        "collateral": None,
                    },
                ),
            ],
            [],
            [
                (
                    "BTC",
                    {
                        "equity": None,
                        "initial_margin": None,
                        "maintenance_margin": None,
                        "collateral": None,
                    },
                )
            ],
            [
                (
                    "BTC",
                    {
                        "equity": math.nan,
                        "initial_margin": None,
                        "maintenance_margin": None,
                        "collateral": None,
                    },
                )
            ],
            [
                (
                    "BTC",
                    {
                        "equity": 1.0,
                        "initial_margin": -1.0,
                        "maintenance_margin": None,
                        "collateral": None,
                    },
                )
            ],
        ],
    }
    rows = []
    for _ in range(3000):
        row: dict[str, Any] = {}
        for field in PARQUET_SCHEMA:
            pool = pools.get(field.name, floats)
            row[field.name] = rng.choice(pool)
        rows.append(row)
    parquet = _parquet(tmp_path / "rec.parquet", rows)
    jsonl = tmp_path / "rec.jsonl"
    jsonl.write_bytes(b"\n".join(_json_line(r) for r in rows) + b"\n")

    p_events, p_rej, _ = _read(parquet, chunk_rows=500)
    j_events, j_rej, _ = _read(jsonl)
    assert len(p_events) > 100
    assert len(p_rej) > 100
    assert p_events == j_events
    assert p_rej == j_rej
