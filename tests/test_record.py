"""Recorder: every format round-trips through the replay reader; durability as documented."""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from connectors.replay import PriceTicks, iter_batches
from monitor.engine.record import PARQUET_SCHEMA, Recorder
from monitor.model.events import (
    AccountEvent,
    CurrencyBalance,
    Event,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    VenueGreeks,
    encode_event,
)

TS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FORMATS = ["jsonl", "jsonl.gz", "parquet"]

EVENTS: list[Event] = [
    InstrumentEvent(
        "BTC-X-C",
        "option",
        "BTC",
        expiry="2026-12-27T08:00:00Z",
        strike=60000.0,
        option_type="call",
        multiplier=0.1,
        inverse=True,
        ts=TS,
    ),
    InstrumentEvent("SOL-USD", "spot", "SOL"),  # no ts, defaults
    PriceEvent(TS + 1, "BTC", 90000.0),
    PriceEvent(TS + 2, "BTC-X-C", 0.05, iv=0.55, underlying_price=90100.0),
    PriceEvent(TS + 2, "BTC-X-C", 0.05, iv=0.56),
    PositionEvent(TS + 3, "acc-1", "BTC-X-C", -25.0),
    PositionEvent(TS + 3, "acc-1", "BTC-PERPETUAL", 0.0),
    AccountEvent(TS + 4, "acc-1", 1.5e6, initial_margin=2e5, maintenance_margin=1e5),
    AccountEvent(TS + 5, "acc-2", -10.0),
    PriceEvent(TS + 6, "ETH", 3000.0),
    # A venue's Greeks and a coin-margined account's currencies (nested columns in Parquet).
    PriceEvent(TS + 7, "BTC-X-C", 0.06, 0.5, 90200.0, VenueGreeks(0.52, 1.5e-5, 31.0, -48.0)),
    PriceEvent(TS + 7, "BTC-X-C", 0.061, greeks=VenueGreeks(delta=-0.4)),
    PriceEvent(TS + 8, "BTC-X-C", 0.062, greeks=VenueGreeks()),
    AccountEvent(
        TS + 9,
        "acc-1",
        2e5,
        1e4,
        5e3,
        {
            "BTC": CurrencyBalance(1.25, 0.05, 0.02, 0.75),
            "USDC": CurrencyBalance(-3.0, maintenance_margin=0.0),
        },
    ),
    AccountEvent(TS + 9, "acc-2", 1e5, currencies={}),
]


def _replayed(path: Path) -> list[Event]:
    events: list[Event] = []
    for batch in iter_batches(path):
        assert batch.rejections == []
        events += batch.events
    return events


@pytest.mark.parametrize("flush_rows", [1, 3, 8192])
def test_parquet_columns_carry_the_venue_greeks(tmp_path: Path, flush_rows: int) -> None:
    """Replay's column-wise path (``columns=True``) gives back the same events, price ticks
    with a venue's Greeks among them as columns (not the one-by-one way)."""
    path = tmp_path / "rec.parquet"
    with Recorder(path, flush_rows=flush_rows) as rec:
        for ev in EVENTS:
            rec.write(ev)
    events: list[Event] = []
    with_greeks = 0
    for batch in iter_batches(path, columns=True):
        assert batch.rejections == []
        for _, run in batch.runs():
            if isinstance(run, PriceTicks):
                if run.greeks is not None and run.has_greeks is not None:
                    with_greeks += int(run.has_greeks.sum())
                events += run.events()
            else:
                events += run
    assert events == EVENTS
    assert with_greeks == 3


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("flush_rows", [1, 3, 8192])
def test_round_trip(tmp_path: Path, suffix: str, flush_rows: int) -> None:
    path = tmp_path / f"rec.{suffix}"
    with Recorder(path, flush_rows=flush_rows) as rec:
        for ev in EVENTS:
            rec.write(ev)
    assert rec.closed
    assert _replayed(path) == EVENTS


def test_jsonl_lines_are_the_schema_encoding(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    with Recorder(path) as rec:
        for ev in EVENTS:
            rec.write(ev)
    assert path.read_bytes() == b"".join(encode_event(ev) + b"\n" for ev in EVENTS)
    gz = tmp_path / "rec.jsonl.gz"
    with Recorder(gz) as rec:
        for ev in EVENTS:
            rec.write(ev)
    assert gzip.decompress(gz.read_bytes()) == path.read_bytes()


@pytest.mark.parametrize("suffix", FORMATS)
def test_timestamps_are_recorded_as_int_epoch_ms(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rec.{suffix}"
    # Events built in code, not decoded: the wire forms the type checker rightly refuses.
    iso_ts = dt.datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=dt.UTC)
    iso = PriceEvent(iso_ts, "BTC", 1.0)  # type: ignore[arg-type]
    with Recorder(path) as rec:
        rec.write(iso)
        rec.write(PriceEvent(float(TS + 7), "BTC", 2.0))  # type: ignore[arg-type]
    assert iso.ts == dt.datetime(2026, 1, 1, 0, 0, 0, 250_000, tzinfo=dt.UTC)  # not mutated
    replayed = _replayed(path)
    assert replayed == [PriceEvent(TS + 250, "BTC", 1.0), PriceEvent(TS + 7, "BTC", 2.0)]
    assert all(type(ev.ts) is int for ev in replayed)


def test_parquet_has_the_documented_schema_with_nulls(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    with Recorder(path, flush_rows=4) as rec:
        for ev in EVENTS:
            rec.write(ev)
    assert sorted(p.name for p in path.iterdir()) == ["segment-000001.parquet"]
    path = path / "segment-000001.parquet"  # closed: one complete Parquet file
    pf = pq.ParquetFile(path)
    assert pf.schema_arrow == PARQUET_SCHEMA
    assert pf.metadata.num_row_groups == 4  # 4 + 4 + 4 + 3
    rows = pf.read().to_pylist()
    assert rows[1] == {
        "type": "instrument",
        "ts": None,
        "instrument": "SOL-USD",
        "price": None,
        "iv": None,
        "underlying_price": None,
        "account": None,
        "quantity": None,
        "equity": None,
        "initial_margin": None,
        "maintenance_margin": None,
        "kind": "spot",
        "underlying": "SOL",
        "expiry": None,
        "strike": None,
        "option_type": None,
        "multiplier": 1.0,
        "inverse": False,
        "greeks": None,
        "currencies": None,
    }
    price = {k: v for k, v in rows[3].items() if v is not None}
    assert price == {
        "type": "price",
        "ts": TS + 2,
        "instrument": "BTC-X-C",
        "price": 0.05,
        "iv": 0.55,
        "underlying_price": 90100.0,
    }
    position = {k: v for k, v in rows[6].items() if v is not None}
    assert position == {
        "type": "position",
        "ts": TS + 3,
        "account": "acc-1",
        "instrument": "BTC-PERPETUAL",
        "quantity": 0.0,
    }
    # nested: the venue's Greeks a struct, a coin-margined account's currencies a map
    assert rows[10]["greeks"] == {"delta": 0.52, "gamma": 1.5e-5, "vega": 31.0, "theta": -48.0}
    assert rows[11]["greeks"] == {"delta": -0.4, "gamma": None, "vega": None, "theta": None}
    assert rows[13]["currencies"] == [
        (
            "BTC",
            {
                "equity": 1.25,
                "initial_margin": 0.05,
                "maintenance_margin": 0.02,
                "collateral": 0.75,
            },
        ),
        (
            "USDC",
            {"equity": -3.0, "initial_margin": None, "maintenance_margin": 0.0, "collateral": None},
        ),
    ]
    assert rows[14]["currencies"] == []
    assert rows[12]["currencies"] is None
    # and other tools read it
    df = pl.read_parquet(path)
    assert df.height == len(EVENTS)
    assert df["equity"].to_list()[7:9] == [1.5e6, -10.0]


def test_write_buffers_until_flush_rows(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    with Recorder(path, flush_rows=3) as rec:
        rec.write(EVENTS[2])
        rec.write(EVENTS[3])
        assert path.read_bytes() == b""
        rec.write(EVENTS[4])
        assert path.read_bytes().count(b"\n") == 3
        rec.write(EVENTS[5])
        rec.flush()
        assert path.read_bytes().count(b"\n") == 4


def test_killed_jsonl_recorders_keep_what_was_flushed(tmp_path: Path) -> None:
    for suffix in ("jsonl", "jsonl.gz"):
        path = tmp_path / f"rec.{suffix}"
        rec = Recorder(path, flush_rows=4)
        for ev in EVENTS[:10]:
            rec.write(ev)  # 8 written out, 2 buffered
        snapshot = path.read_bytes()  # what SIGKILL would leave
        rec.close()
        killed = tmp_path / f"killed.{suffix}"
        killed.write_bytes(snapshot)
        assert _replayed(killed) == EVENTS[:8]


def test_parquet_segments_roll_and_an_unclosed_one_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    now = [0.0]
    rec = Recorder(path, flush_rows=2, segment_seconds=10.0, clock=lambda: now[0])
    for k, ev in enumerate(EVENTS[:10]):
        now[0] = 3.0 * k  # segments close at the first flush 10 s after they open
        rec.write(ev)
    rec.flush()
    names = sorted(p.name for p in path.iterdir())
    # Flushes (every 2 events) at t = 3, 9, 15, 21, 27. Segment 1 opens at the first (t=3)
    # and closes at t=15 (12 s old) holding EVENTS[:6]; segment 2 opens at t=21, still open.
    assert names == ["segment-000001.parquet", "segment-000002.parquet.open"]
    # What SIGKILL leaves: the closed segment replays, the open one is skipped.
    assert _replayed(path) == EVENTS[:6]
    rec.close()
    assert _replayed(path) == EVENTS[:10]


@pytest.mark.parametrize("suffix", FORMATS)
def test_close_is_idempotent_and_final(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rec.{suffix}"
    rec = Recorder(path)
    rec.write(EVENTS[2])
    rec.close()
    rec.close()
    rec.flush()  # a no-op once closed
    with pytest.raises(ValueError, match="closed"):
        rec.write(EVENTS[3])
    assert _replayed(path) == [EVENTS[2]]


def test_close_on_exception_leaves_a_valid_parquet(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"

    def record_then_fail() -> None:
        with Recorder(path) as rec:
            rec.write(EVENTS[2])
            raise RuntimeError("engine failed")

    with pytest.raises(RuntimeError, match="engine failed"):
        record_then_fail()
    assert _replayed(path) == [EVENTS[2]]


def test_existing_parquet_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    path.write_bytes(b"yesterday's recording")
    with pytest.raises(FileExistsError):
        Recorder(path)
    assert path.read_bytes() == b"yesterday's recording"


def test_parquet_restart_opens_the_next_segment(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    with Recorder(path) as rec:
        rec.write(EVENTS[1])
    with Recorder(path) as rec:  # a daemon restarted with the same --record path
        rec.write(EVENTS[2])
    assert sorted(p.name for p in path.iterdir()) == [
        "segment-000001.parquet",
        "segment-000002.parquet",
    ]
    assert _replayed(path) == [EVENTS[1], EVENTS[2]]


@pytest.mark.parametrize("suffix", ["jsonl", "jsonl.gz"])
def test_jsonl_appends_across_restarts(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rec.{suffix}"
    with Recorder(path) as rec:
        rec.write(EVENTS[1])
    with Recorder(path) as rec:  # a daemon restarted with the same --record path
        rec.write(EVENTS[2])
    assert _replayed(path) == [EVENTS[1], EVENTS[2]]


def test_truncated_last_line_costs_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "rec.jsonl"
    with Recorder(path) as rec:
        rec.write(EVENTS[1])
    with path.open("ab") as f:
        f.write(b'{"type":"price","ts":17')  # a crash mid-line
    with Recorder(path) as rec:
        rec.write(EVENTS[2])
    batches = list(iter_batches(path))
    assert [e for b in batches for e in b.events] == [EVENTS[1], EVENTS[2]]
    assert [n for b in batches for n, _ in b.rejections] == [2]


@pytest.mark.parametrize("name", ["rec.json", "rec.csv", "rec.jsonl.bz2"])
def test_unknown_suffix_is_refused_before_creating_a_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"\.jsonl, \.jsonl\.gz, \.parquet"):
        Recorder(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_flush_rows_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="flush_rows"):
        Recorder(tmp_path / "rec.jsonl", flush_rows=0)
