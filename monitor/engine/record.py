"""Record accepted events for replay: ``riskmon run --record PATH``.

Every event the engine accepted is written normalized (``ts`` int epoch milliseconds), in
the order written, so ``riskmon replay PATH`` (``connectors.replay``) feeds the engine the
same stream. The format follows the suffix:

``.jsonl``
    One event per line, exactly :func:`monitor.model.events.encode_event` (schema v1).
``.jsonl.gz``
    The same lines, gzip-compressed. Each :meth:`Recorder.flush` ends with a zlib sync
    flush, so everything flushed can be decompressed even if the stream is never finished.
``.parquet``
    A directory of Parquet segments (``monitor.model.recording``): one row per event, one
    row group per flush, zstd-compressed, with the schema below. A segment is closed (its
    footer written, then renamed from ``segment-NNNNNN.parquet.open`` to
    ``segment-NNNNNN.parquet``) once it is ``segment_seconds`` old or ``segment_bytes``
    large, and at :meth:`Recorder.close`; the next event opens the next segment.

Durability
----------
What a recorder killed with SIGKILL (or a crashed host) loses:

- JSONL: the events still buffered, at most ``flush_rows`` or one flush interval (the
  daemon flushes every second), and perhaps a truncated last line, which replay rejects as
  one ``malformed_json`` line. Killed right after a flush, nothing.
- ``.jsonl.gz``: the same, plus whatever zlib held back since the last sync flush; the
  stream then ends early and replay reads it up to there (a test killed mid-run lost 132 of
  7,201 events: about one flush interval).
- Parquet: the open segment (a Parquet file is unreadable until its footer is written),
  at most ``segment_seconds`` of events; the closed segments are whole.

Nothing is fsynced: data handed to the OS survives the process, not the machine.

An existing recording is never overwritten. JSONL appends (so a daemon restarted with the
same ``--record`` path goes on recording; a truncated last line left by a crash is ended
with a newline first, so it costs that one line and not the next event too); ``.jsonl.gz``
appends a new gzip member (readers see one stream). A Parquet recording restarted with the
same path opens the next segment number beside the old ones; an existing ``.parquet``
*file* (not a directory) raises :class:`FileExistsError`.

Parquet schema (public surface, schema v1)
------------------------------------------
One fixed schema for all event types; a column a type lacks is null in that type's rows.

====================  ========  ===============================================
column                type      set for
====================  ========  ===============================================
type                  string    all rows: instrument, price, position, account
ts                    int64     all rows, epoch ms (null: instrument without ts)
instrument            string    instrument, price, position
price                 float64   price
iv                    float64   price (options, optional)
underlying_price      float64   price (options, optional)
account               string    position, account
quantity              float64   position
equity                float64   account
initial_margin        float64   account (optional)
maintenance_margin    float64   account (optional)
kind                  string    instrument
underlying            string    instrument
expiry                string    instrument (optional)
strike                float64   instrument (optional)
option_type           string    instrument (optional)
multiplier            float64   instrument
inverse               bool      instrument
====================  ========  ===============================================

Units are those of the event fields (``monitor.model.events``).
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, get_args

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from monitor.model.events import (
    CurrencyBalance,
    Event,
    VenueGreeks,
    encode_event,
    to_epoch_ms,
)
from monitor.model.recording import OPEN_SUFFIX, parse_segment, segment_name

__all__ = ["PARQUET_SCHEMA", "SUFFIXES", "Recorder"]

#: Suffixes a recording may have, which choose its format.
SUFFIXES: Final = (".jsonl", ".jsonl.gz", ".parquet")

_GREEKS: Final = pa.struct([(f, pa.float64()) for f in VenueGreeks.__struct_fields__])
_CURRENCIES: Final = pa.map_(
    pa.string(), pa.struct([(f, pa.float64()) for f in CurrencyBalance.__struct_fields__])
)

#: The columns of a Parquet recording (and what ``connectors.replay`` reads): every field of
#: every event type, a venue's option Greeks and a coin-margined account's per-currency
#: figures as nested columns, so a recording replays exactly what was accepted.
PARQUET_SCHEMA: Final = pa.schema(
    [
        ("type", pa.string()),
        ("ts", pa.int64()),
        ("instrument", pa.string()),
        ("price", pa.float64()),
        ("iv", pa.float64()),
        ("underlying_price", pa.float64()),
        ("account", pa.string()),
        ("quantity", pa.float64()),
        ("equity", pa.float64()),
        ("initial_margin", pa.float64()),
        ("maintenance_margin", pa.float64()),
        ("kind", pa.string()),
        ("underlying", pa.string()),
        ("expiry", pa.string()),
        ("strike", pa.float64()),
        ("option_type", pa.string()),
        ("multiplier", pa.float64()),
        ("inverse", pa.bool_()),
        # Nested fields (added 2026-12; a recording without them reads as before):
        ("greeks", _GREEKS),
        ("currencies", _CURRENCIES),
    ]
)

# Flushes run on the engine thread: level 1 compresses 3x faster than 6 (~210 vs ~70 MB/s of
# JSON) for files ~17% larger (20% vs 17% of the JSON).
_GZIP_LEVEL: Final = 1

_NESTED: Final = frozenset({"greeks", "currencies"})
_EVENT_TYPES: Final[tuple[type[Event], ...]] = get_args(Event)
_TAGS: Final[dict[type[Event], str]] = {cls: str(cls.__struct_config__.tag) for cls in _EVENT_TYPES}
# For each column, the event types that have that field.
_HOLDERS: Final[dict[str, frozenset[type[Event]]]] = {
    name: frozenset(cls for cls in _EVENT_TYPES if name in cls.__struct_fields__)
    for name in PARQUET_SCHEMA.names
}


class Recorder:
    """Write accepted events to ``path`` for replay; the format follows the suffix.

    Parameters
    ----------
    path
        A ``.jsonl`` or ``.jsonl.gz`` file (appended to when it exists), or a ``.parquet``
        directory of segments (created when missing).
    flush_rows
        Events buffered before they are written out (one Parquet row group per flush).
    segment_seconds, segment_bytes
        Parquet: a segment is closed at the first flush after it is this old (seconds of
        ``clock``) or this large.
    clock
        Monotonic seconds, for segment ages.

    Raises
    ------
    ValueError
        An unsupported suffix, ``flush_rows < 1`` or a segment bound that is not positive.
    FileExistsError
        ``path`` is an existing ``.parquet`` file rather than a directory.

    Notes
    -----
    :meth:`write` only buffers. A quiet stream can sit in the buffer for a long time, so
    call :meth:`flush` on a timer if a killed process should lose at most that much (and so
    that an idle Parquet segment gets closed). Parquet buffers the event objects themselves
    until the flush: do not mutate an event after writing it.
    """

    __slots__ = (
        "_buf",
        "_clock",
        "_closed",
        "_count",
        "_dir",
        "_file",
        "_flush_rows",
        "_gzip",
        "_parquet",
        "_rows",
        "_segment",
        "_segment_bytes",
        "_segment_opened",
        "_segment_seconds",
    )

    def __init__(
        self,
        path: str | Path,
        *,
        flush_rows: int = 8192,
        segment_seconds: float = 60.0,
        segment_bytes: int = 64 << 20,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, not {flush_rows}")
        if not (segment_seconds > 0 and segment_bytes > 0):
            raise ValueError("segment_seconds and segment_bytes must be positive")
        path = Path(path)
        name = path.name.lower()
        if not name.endswith(SUFFIXES):
            raise ValueError(
                f"cannot record to {str(path)!r}: the suffix must be one of {', '.join(SUFFIXES)}"
            )
        self._flush_rows = flush_rows
        self._segment_seconds = segment_seconds
        self._segment_bytes = segment_bytes
        self._clock = clock
        self._buf = bytearray()  # JSONL lines not yet written
        self._count = 0  # events in the buffer (either kind)
        self._rows: list[Event] = []  # Parquet events not yet written
        self._gzip: gzip.GzipFile | None = None
        self._parquet: Any = None  # pq.ParquetWriter of the open segment
        self._segment = 0  # number of the last segment opened
        self._segment_opened = 0.0
        self._closed = False
        self._dir: Path | None = None
        self._file: IO[bytes] | None = None
        if name.endswith(".parquet"):
            if path.exists() and not path.is_dir():
                raise FileExistsError(
                    f"{str(path)!r} is a file; a Parquet recording is a directory of segments"
                )
            path.mkdir(exist_ok=True)
            self._dir = path
            numbers = [n for n, _ in filter(None, map(parse_segment, os.listdir(path)))]
            self._segment = max(numbers, default=0)
            return
        self._file = open(path, "ab")  # noqa: SIM115
        try:
            if not name.endswith(".gz") and self._file.tell() > 0:
                with open(path, "rb") as existing:
                    existing.seek(-1, 2)
                    if existing.read(1) != b"\n":
                        self._file.write(b"\n")
            if name.endswith(".gz"):
                self._gzip = gzip.GzipFile(
                    filename="", mode="wb", compresslevel=_GZIP_LEVEL, fileobj=self._file, mtime=0
                )
        except BaseException:
            self._file.close()
            raise

    def write(self, event: Event) -> None:
        """Buffer one accepted event; writes out every ``flush_rows`` events."""
        if self._closed:
            raise ValueError("write to a closed Recorder")
        ts = event.ts
        if ts is not None and type(ts) is not int:
            # Accepted events are normalized already; this covers events built in code.
            event = msgspec.structs.replace(event, ts=to_epoch_ms(ts))
        if self._dir is None:
            buf = self._buf
            buf += encode_event(event)
            buf += b"\n"
        else:
            self._rows.append(event)
        self._count += 1
        if self._count >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write out the buffered events (a Parquet row group) and hand them to the OS.

        Parquet: then closes the open segment if it is old or large enough.
        """
        if self._closed:
            return
        if self._dir is not None:
            if self._count:
                if self._parquet is None:
                    self._open_segment()
                self._parquet.write_batch(_record_batch(self._rows))
                self._rows = []
                self._count = 0
            if self._parquet is not None:
                assert self._file is not None
                self._file.flush()
                age = self._clock() - self._segment_opened
                if age >= self._segment_seconds or self._file.tell() >= self._segment_bytes:
                    self._close_segment()
            return
        if not self._count:
            return
        assert self._file is not None
        if self._gzip is not None:
            self._gzip.write(self._buf)
            self._gzip.flush()  # zlib sync flush: what was written can be decompressed
            self._buf.clear()
        else:
            self._file.write(self._buf)
            self._buf.clear()
        self._file.flush()
        self._count = 0

    def _open_segment(self) -> None:
        assert self._dir is not None
        self._segment += 1
        path = self._dir / (segment_name(self._segment) + OPEN_SUFFIX)
        self._file = open(path, "xb")  # noqa: SIM115
        try:
            self._parquet = pq.ParquetWriter(self._file, PARQUET_SCHEMA, compression="zstd")
        except BaseException:
            self._file.close()
            raise
        self._segment_opened = self._clock()

    def _close_segment(self) -> None:
        """Write the open segment's footer and give it its closed name."""
        assert self._dir is not None
        assert self._file is not None
        try:
            self._parquet.close()
        finally:
            self._parquet = None
            self._file.close()
            self._file = None
        name = segment_name(self._segment)
        os.replace(self._dir / (name + OPEN_SUFFIX), self._dir / name)

    def close(self) -> None:
        """Flush and close; every Parquet segment is readable from here on. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            try:
                if self._parquet is not None:
                    self._close_segment()
                elif self._gzip is not None:
                    self._gzip.close()
            finally:
                if self._file is not None:
                    self._file.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _record_batch(rows: list[Event]) -> Any:
    """Events as one ``pa.RecordBatch`` of :data:`PARQUET_SCHEMA`."""
    n = len(rows)
    classes = {type(e) for e in rows}
    arrays = []
    for field in PARQUET_SCHEMA:
        name = field.name
        holders = _HOLDERS[name]
        if name == "type":
            if len(classes) == 1:
                values: list[Any] = [_TAGS[next(iter(classes))]] * n
            else:
                values = [_TAGS[type(e)] for e in rows]
        elif classes.isdisjoint(holders):
            arrays.append(pa.nulls(n, field.type))
            continue
        elif classes <= holders:
            values = [getattr(e, name) for e in rows]
        else:
            values = [getattr(e, name) if type(e) in holders else None for e in rows]
        if name in _NESTED:
            values = msgspec.to_builtins(values)  # Structs as dicts, None kept
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=PARQUET_SCHEMA)
