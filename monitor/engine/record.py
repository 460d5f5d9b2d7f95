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
    One row per event, one row group per flush, zstd-compressed, with the schema below.

Durability
----------
JSONL (plain or gzip) is the crash-safe choice. A recorder killed with SIGKILL (or a crashed
host) loses only the events still buffered, at most ``flush_rows``, and may leave a truncated
last line, which replay rejects as one ``malformed_json`` line. A Parquet file is readable
only once :meth:`Recorder.close` has written its footer (the schema and row-group index): a
Parquet recording killed before that has no footer and is lost as a whole, not just past its
last row group. Close the recorder on shutdown (it is a context manager). Nothing is fsynced:
data handed to the OS survives the process, not the machine.

An existing recording is never overwritten. JSONL appends (so a daemon restarted with the
same ``--record`` path goes on recording; a truncated last line left by a crash is ended
with a newline first, so it costs that one line and not the next event too); ``.jsonl.gz``
appends a new gzip member (readers see one stream). Parquet cannot append: an existing
``.parquet`` path raises :class:`FileExistsError`.

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
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, get_args

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from monitor.model.events import Event, encode_event, to_epoch_ms

__all__ = ["PARQUET_SCHEMA", "SUFFIXES", "Recorder"]

#: Suffixes a recording may have, which choose its format.
SUFFIXES: Final = (".jsonl", ".jsonl.gz", ".parquet")

#: The columns of a Parquet recording (and what ``connectors.replay`` reads).
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
    ]
)

# Flushes run on the engine thread: level 1 compresses 3x faster than 6 (~210 vs ~70 MB/s of
# JSON) for files ~17% larger (20% vs 17% of the JSON).
_GZIP_LEVEL: Final = 1

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
        A new file ending in ``.jsonl``, ``.jsonl.gz`` or ``.parquet``.
    flush_rows
        Events buffered before they are written out (one Parquet row group per flush).

    Raises
    ------
    ValueError
        An unsupported suffix or ``flush_rows < 1``.
    FileExistsError
        ``path`` is an existing ``.parquet`` file (JSONL appends).

    Notes
    -----
    :meth:`write` only buffers. A quiet stream can sit in the buffer for a long time, so
    call :meth:`flush` on a timer if a killed process should lose at most that much.
    Parquet buffers the event objects themselves until the flush: do not mutate an event
    after writing it.
    """

    __slots__ = ("_buf", "_closed", "_count", "_file", "_flush_rows", "_gzip", "_parquet", "_rows")

    def __init__(self, path: str | Path, *, flush_rows: int = 8192) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be at least 1, not {flush_rows}")
        path = Path(path)
        name = path.name.lower()
        if not name.endswith(SUFFIXES):
            raise ValueError(
                f"cannot record to {str(path)!r}: the suffix must be one of {', '.join(SUFFIXES)}"
            )
        self._flush_rows = flush_rows
        self._buf = bytearray()  # JSONL lines not yet written
        self._count = 0  # events in the buffer (either kind)
        self._rows: list[Event] = []  # Parquet events not yet written
        self._gzip: gzip.GzipFile | None = None
        self._parquet: Any = None  # pq.ParquetWriter
        self._closed = False
        parquet = name.endswith(".parquet")
        self._file: IO[bytes] = open(path, "xb" if parquet else "ab")  # noqa: SIM115
        try:
            if not parquet and not name.endswith(".gz") and self._file.tell() > 0:
                with open(path, "rb") as existing:
                    existing.seek(-1, 2)
                    if existing.read(1) != b"\n":
                        self._file.write(b"\n")
            if parquet:
                self._parquet = pq.ParquetWriter(self._file, PARQUET_SCHEMA, compression="zstd")
            elif name.endswith(".gz"):
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
        if self._parquet is None:
            buf = self._buf
            buf += encode_event(event)
            buf += b"\n"
        else:
            self._rows.append(event)
        self._count += 1
        if self._count >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write out the buffered events (a Parquet row group) and hand them to the OS."""
        if self._closed or not self._count:
            return
        if self._parquet is not None:
            self._parquet.write_batch(_record_batch(self._rows))
            self._rows = []
        elif self._gzip is not None:
            self._gzip.write(self._buf)
            self._gzip.flush()  # zlib sync flush: what was written can be decompressed
            self._buf.clear()
        else:
            self._file.write(self._buf)
            self._buf.clear()
        self._file.flush()
        self._count = 0

    def close(self) -> None:
        """Flush and close; a Parquet file is valid from here on. Idempotent."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            try:
                if self._parquet is not None:
                    self._parquet.close()
                elif self._gzip is not None:
                    self._gzip.close()
            finally:
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
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=PARQUET_SCHEMA)
