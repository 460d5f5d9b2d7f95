"""Streaming readers of recorded events, for ``riskmon replay FILE``.

:func:`iter_batches` reads a recording (``monitor.engine.record`` writes them) in bounded chunks
and yields :class:`Batch` es of decoded events, so a recording larger than memory replays.
The format follows the suffix:

``.jsonl`` / ``.jsonl.gz``
    One JSON event per line (``monitor.model.events``). Read ``chunk_bytes`` at a time (of
    decompressed data), cut at the last newline; each chunk is decoded by one
    :meth:`EventDecoder.decode_lines` call. Memory: about ``chunk_bytes`` plus its events
    (a single line longer than that is read whole).
``.parquet``
    The columns of ``monitor.engine.record.PARQUET_SCHEMA``, by name: extra columns are ignored,
    missing ones read as null, and null means "field absent". Batches hold ``chunk_rows``
    rows (the last one fewer); memory is bounded by ``chunk_rows`` plus the largest row
    group (Parquet decodes a row group's column chunk whole). A ``.parquet`` directory is
    a segmented recording (``monitor.model.recording``): its closed segments are read in
    order, rows numbered per segment; a segment left open by a crash is skipped with a
    warning.

Validation is the schema's, for both formats: a bad input (not JSON, unknown type, missing
field, non-finite or out-of-range number, a timestamp that is not epoch ms, a truncated last
line from a killed recorder) becomes a rejection with a ``monitor.model.events.Reason`` and its
1-based line (JSONL) or row (Parquet) number in the file, never an exception. Unknown
instruments are accepted here: resolving instruments is the engine's job.

Only problems with the file itself raise: a missing file, an unsupported suffix, a file that
is not gzip or not Parquet. A gzip stream that ends early (a killed recorder) is read up to
where it ends, with a logged warning.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, Protocol, get_args

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from monitor.model.events import (
    Event,
    EventDecoder,
    InstrumentEvent,
    PriceEvent,
    Reason,
    Rejected,
    VenueGreeks,
    to_epoch_ms,
)
from monitor.model.recording import parse_segment

__all__ = ["SUFFIXES", "Batch", "PriceTicks", "iter_batches"]

_log = logging.getLogger(__name__)

#: Suffixes :func:`iter_batches` reads.
SUFFIXES: Final = (".jsonl", ".jsonl.gz", ".parquet")


@dataclass(frozen=True, slots=True)
class PriceTicks:
    """Plain price ticks column-wise (``iter_batches(..., columns=True)``): no event object
    per row. Row ``r`` is a :class:`~monitor.model.events.PriceEvent` of instrument
    ``names[code[r]]`` at ``ts[r]`` (int epoch ms) with ``price[r]``; ``iv`` and
    ``underlying_price`` are NaN where absent (None: absent in every row); ``greeks`` is
    ``(n, 4)`` (delta, gamma, vega, theta; NaN for a Greek not given) where ``has_greeks``
    (both None: no row has them). Validated as the events are."""

    names: list[str]
    code: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    iv: npt.NDArray[np.float64] | None = None
    underlying_price: npt.NDArray[np.float64] | None = None
    greeks: npt.NDArray[np.float64] | None = None
    has_greeks: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self, a: int, b: int) -> PriceTicks:
        """Rows ``[a, b)`` (views, no copy)."""
        return PriceTicks(
            self.names,
            self.code[a:b],
            self.ts[a:b],
            self.price[a:b],
            None if self.iv is None else self.iv[a:b],
            None if self.underlying_price is None else self.underlying_price[a:b],
            None if self.greeks is None else self.greeks[a:b],
            None if self.has_greeks is None else self.has_greeks[a:b],
        )

    def events(self) -> list[Event]:
        """The rows as events (what ``columns=False`` yields)."""
        nan_free = [None if x is None else x.tolist() for x in (self.iv, self.underlying_price)]
        iv, fwd = (
            itertools.repeat(None) if x is None else [None if v != v else v for v in x]
            for x in nan_free
        )
        greeks: Iterable[VenueGreeks | None] = itertools.repeat(None)
        if self.greeks is not None and self.has_greeks is not None:
            greeks = [
                VenueGreeks(*(None if v != v else v for v in g)) if has else None
                for g, has in zip(self.greeks.tolist(), self.has_greeks.tolist(), strict=True)
            ]
        names = self.names
        return [
            PriceEvent(t, names[c], p, i, f, g)
            for t, c, p, i, f, g in zip(
                self.ts.tolist(),
                self.code.tolist(),
                self.price.tolist(),
                iv,
                fwd,
                greeks,
                strict=False,
            )
        ]

    @staticmethod
    def concat(parts: Sequence[PriceTicks]) -> PriceTicks:
        """One block of several (names merged)."""
        if len(parts) == 1:
            return parts[0]
        names: dict[str, int] = {}
        codes = []
        for p in parts:
            lut = np.array([names.setdefault(nm, len(names)) for nm in p.names], dtype=np.int64)
            codes.append(lut[p.code] if len(lut) else p.code)

        def cat(xs: list[npt.NDArray[np.float64] | None]) -> npt.NDArray[np.float64] | None:
            if all(x is None for x in xs):
                return None
            return np.concatenate(
                [
                    np.full(len(p), np.nan) if x is None else x
                    for p, x in zip(parts, xs, strict=True)
                ]
            )

        greeks = has_greeks = None
        if any(p.greeks is not None for p in parts):
            greeks = np.concatenate(
                [np.full((len(p), 4), np.nan) if p.greeks is None else p.greeks for p in parts]
            )
            has_greeks = np.concatenate(
                [
                    np.zeros(len(p), dtype=np.bool_) if p.has_greeks is None else p.has_greeks
                    for p in parts
                ]
            )
        return PriceTicks(
            list(names),
            np.concatenate(codes),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.price for p in parts]),
            cat([p.iv for p in parts]),
            cat([p.underlying_price for p in parts]),
            greeks,
            has_greeks,
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Decoded events from one chunk of a recording.

    ``events`` are the accepted events in file order; ``rejections`` pair the 1-based line
    number (JSONL) or row number (Parquet) in the file with why it was refused.
    ``first`` is the number of the chunk's first line (row) and ``skipped`` the numbers in
    the chunk that hold no event (refused or blank), ascending: with them
    :meth:`number_of` finds any event's line, for a refusal the engine makes later.
    ``unit`` is ``"line"`` or ``"row"``, after the segment's name in a segment directory.

    With ``columns=True`` (Parquet), plain price ticks come column-wise in ``ticks``
    instead, and ``events`` holds the others; ``tick_at`` numbers each tick among all the
    accepted items of the chunk (ascending), so :meth:`runs` gives them back in file order.
    """

    events: list[Event]
    rejections: list[tuple[int, Rejected]]
    first: int = 1
    skipped: tuple[int, ...] = ()
    unit: str = "line"
    ticks: PriceTicks | None = None
    tick_at: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        """Accepted items: events and ticks."""
        return len(self.events) + (0 if self.ticks is None else len(self.ticks))

    def runs(self) -> Iterator[tuple[int, list[Event] | PriceTicks]]:
        """The accepted items in file order, as runs of events or of ticks, each with the
        number (for :meth:`number_of`) of its first item."""
        ticks, at = self.ticks, self.tick_at
        if ticks is None or at is None or not len(ticks):
            if self.events:
                yield 0, self.events
            return
        total = len(self)
        is_tick = np.zeros(total + 2, dtype=np.int8)
        is_tick[at + 1] = 1
        edges = np.flatnonzero(np.diff(is_tick)).tolist()  # where a run of ticks starts, ends
        done_events = done_ticks = 0
        k = 0
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if k < a:
                yield k, self.events[done_events : done_events + a - k]
                done_events += a - k
            yield a, ticks.rows(done_ticks, done_ticks + b - a)
            done_ticks += b - a
            k = b
        if k < total:
            yield k, self.events[done_events:]

    def number_of(self, k: int) -> int:
        """The line (row) number of accepted item ``k`` (``events[k]`` without ticks)."""
        n = self.first + k
        for s in self.skipped:
            if s > n:
                break
            n += 1
        return n

    def where(self, n: int) -> str:
        """``"line 12"``, ``"row 12"`` or ``"segment-000002.parquet row 12"``."""
        return f"{self.unit} {n}"


def iter_batches(
    path: str | Path,
    *,
    chunk_bytes: int = 4 << 20,
    chunk_rows: int = 65536,
    columns: bool = False,
) -> Iterator[Batch]:
    """Stream the events of a recording, chunk by chunk, in file order.

    Parameters
    ----------
    path
        A ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` recording.
    chunk_bytes
        Bytes of JSON text decoded per batch (JSONL formats).
    chunk_rows
        Rows per batch (Parquet).
    columns
        Parquet: plain price ticks in :attr:`Batch.ticks`, column-wise, not as events
        (the fast way into ``Engine.replay_prices``). JSONL is read as events either way.

    Raises
    ------
    ValueError
        At the call, for an unsupported suffix or a chunk size below 1; on the first
        iteration, for a ``.parquet`` file that is not Parquet.
    OSError
        On the first iteration, when the file cannot be opened or is not gzip.
    """
    path = Path(path)
    if chunk_bytes < 1 or chunk_rows < 1:
        raise ValueError(f"chunk sizes must be at least 1 ({chunk_bytes=}, {chunk_rows=})")
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return _jsonl_batches(_file_pieces(path, chunk_bytes), chunk_bytes)
    if name.endswith(".jsonl.gz"):
        return _jsonl_batches(_gzip_pieces(path, chunk_bytes), chunk_bytes)
    if name.endswith(".parquet"):
        if path.is_dir():
            return _segment_batches(path, chunk_rows, columns)
        return _parquet_batches(path, chunk_rows, columns)
    raise ValueError(
        f"cannot replay {str(path)!r}: the suffix must be one of {', '.join(SUFFIXES)}"
    )


# --- JSONL ------------------------------------------------------------------------------


def _file_pieces(path: Path, size: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(size):
            yield piece


def _gzip_pieces(path: Path, size: int) -> Iterator[bytes]:
    with gzip.open(path, "rb") as f:
        while True:
            try:
                # read1, not read: when the stream ends early, read() would drop the data
                # it had decompressed in that call along with the EOFError.
                piece = f.read1(size)
            except EOFError:
                _log.warning("%s: gzip stream ends early (recorder killed?)", path)
                return
            if not piece:
                return
            yield piece


def _line_chunks(pieces: Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Re-cut byte pieces into chunks of whole lines of at least ``chunk_bytes``.

    Only the last chunk may lack a trailing newline (a final line without one, or a line
    truncated by a killed recorder).
    """
    pending: list[bytes] = []
    size = 0
    for piece in pieces:
        pending.append(piece)
        size += len(piece)
        # Without a newline in the newest piece, a line longer than chunk_bytes is still
        # being read: keep collecting instead of joining again and again.
        if size < chunk_bytes or b"\n" not in piece:
            continue
        buf = b"".join(pending) if len(pending) > 1 else piece
        cut = buf.rfind(b"\n") + 1
        yield buf[:cut]
        rest = buf[cut:]
        pending = [rest] if rest else []
        size = len(rest)
    if pending:
        yield b"".join(pending)


def _jsonl_batches(pieces: Iterable[bytes], chunk_bytes: int) -> Iterator[Batch]:
    decoder = EventDecoder()
    first_line = 1  # file line number of the chunk's first line
    for chunk in _line_chunks(pieces, chunk_bytes):
        newlines, clean = _scan_lines(chunk)
        events, rejections = decoder.decode_lines(chunk)
        # decode_lines' one-call fast path parses whitespace-separated JSON: it also takes an
        # object spread over lines, or two objects on one line, which the per-line path
        # rejects, so the outcome would depend on where chunks are cut. When that is not ruled
        # out, decode line by line (blank lines and trailing blanks also land here: rare).
        lines = newlines + (not chunk.endswith(b"\n"))
        blank: list[int] = []
        if not rejections and not (clean and len(events) == lines):
            events, rejections, blank = _decode_each(decoder, chunk)
        elif rejections:  # EventDecoder's line-by-line pass: find its blank lines too
            blank = [n for n, line in enumerate(chunk.split(b"\n")) if not line.strip()]
        if events or rejections:
            skipped = sorted([n for n, _ in rejections] + blank)
            yield Batch(
                events,
                [(first_line + n, rej) for n, rej in rejections],
                first_line,
                tuple(first_line + n for n in skipped),
                "line",
            )
        first_line += newlines


def _scan_lines(chunk: bytes) -> tuple[int, bool]:
    """Count newlines, and tell whether each one sits between ``}`` (or ``}\\r``) and ``{``.

    If so and ``decode_lines`` found as many objects as there are lines, every line holds
    exactly one object: inside a JSON value a newline between ``}`` and ``{`` is impossible,
    and raw newlines cannot occur in strings. numpy does this in less time than
    ``bytes.count(b"\\n")`` alone.
    """
    a = np.frombuffer(chunk, dtype=np.uint8)
    nl = np.flatnonzero(a == 10)
    if not len(nl):
        return 0, True
    if nl[0] < 2:
        return len(nl), False
    before = a[nl - 1]
    ends = before == 125  # }
    if not ends.all():
        ends |= (before == 13) & (a[nl - 2] == 125)  # }\r
    inner = nl[:-1] if nl[-1] == len(a) - 1 else nl
    return len(nl), bool(ends.all() and (a[inner + 1] == 123).all())  # {


def _decode_each(
    decoder: EventDecoder, chunk: bytes
) -> tuple[list[Event], list[tuple[int, Rejected]], list[int]]:
    """Events, rejections and blank lines (0-based line numbers in ``chunk``)."""
    events: list[Event] = []
    rejections: list[tuple[int, Rejected]] = []
    blank: list[int] = []
    for n, line in enumerate(chunk.split(b"\n")):
        if line.strip():
            try:
                events.append(decoder.decode(line))
            except Rejected as rej:
                rejections.append((n, rej))
        else:
            blank.append(n)
    return events, rejections, blank


# --- Parquet ----------------------------------------------------------------------------
#
# Rows are validated column-wise (pyarrow.compute) and the valid ones built with the Struct
# constructors: about 3x the speed of msgspec.convert over row dicts, and 4x that of writing
# NDJSON and decoding it. The checks are derived from the Structs' msgspec type info, so they
# follow the schema. Whatever they do not pass (a bad value, a column of an unexpected type,
# an unknown type, instrument events) takes the slow path: the row, nulls dropped, is encoded
# as JSON and decoded by EventDecoder, the same validation and reasons as a JSONL line.


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # the encoded name: JSON key and Parquet column
    kind: Literal["ts", "float", "str"]
    nullable: bool
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None


@dataclass(frozen=True, slots=True)
class _FastType:
    tag: str
    cls: type[Event]
    fields: tuple[_Field, ...]  # in constructor order


def _fast_type(cls: type[Event], skip: frozenset[str] = frozenset()) -> _FastType | None:
    """Column checks equivalent to msgspec's for ``cls``, or None if a field needs more.
    Fields in ``skip`` are left out (absent: no column holds them)."""
    info = msgspec.inspect.type_info(cls)
    if not isinstance(info, msgspec.inspect.StructType):
        return None
    fields = []
    for f in info.fields:
        if f.name in skip:
            continue
        t = f.type
        nullable = False
        if isinstance(t, msgspec.inspect.UnionType):
            nullable = any(isinstance(u, msgspec.inspect.NoneType) for u in t.types)
            rest = [u for u in t.types if not isinstance(u, msgspec.inspect.NoneType)]
            if f.name == "ts" and any(type(u) is msgspec.inspect.IntType for u in rest):
                t = msgspec.inspect.IntType()  # int epoch ms: the only ts taken column-wise
            elif len(rest) == 1:
                t = rest[0]
            else:
                return None
        if nullable != (not f.required and f.default is None):
            return None  # a null must mean "absent", and absent must mean None
        if f.name == "ts" and type(t) is msgspec.inspect.IntType:
            fields.append(_Field(f.encode_name, "ts", nullable))
        elif type(t) is msgspec.inspect.FloatType and t.multiple_of is None:
            fields.append(_Field(f.encode_name, "float", nullable, t.gt, t.ge, t.lt, t.le))
        elif type(t) is msgspec.inspect.StrType and t == msgspec.inspect.StrType():
            fields.append(_Field(f.encode_name, "str", nullable))
        else:
            return None
    return _FastType(str(info.tag), cls, tuple(fields))


# normalize() checks more than field types for instrument events (option fields go
# together); they are few, so they always take the slow path. For the other types normalize()
# only converts and range-checks ts, which the column checks cover.
_FAST_TYPES: Final = tuple(
    ft
    for ft in (_fast_type(cls) for cls in get_args(Event) if cls is not InstrumentEvent)
    if ft is not None
)


# Price rows: ts, instrument, price and the optional iv and underlying_price are checked
# column-wise here; greeks (a nested column, the constructor's last field) by _greeks_ok.
def _price_columns() -> _FastType:
    ft = _fast_type(PriceEvent, skip=frozenset({"greeks"}))
    if ft is None:  # a schema change the column checks cannot follow
        raise TypeError("PriceEvent's fields other than greeks must be column-checkable")
    return ft


_PRICE_COLUMNS: Final = _price_columns()
_CLASSES: Final[dict[str, type[Event]]] = {
    str(cls.__struct_config__.tag): cls for cls in get_args(Event)
}


def _segment_batches(directory: Path, chunk_rows: int, columns: bool) -> Iterator[Batch]:
    """A Parquet recording's segment directory: its closed segments in order.

    A segment still open (``.parquet.open``: the recorder was killed while writing it) has
    no footer and cannot be read; it is skipped with a warning.
    """
    found = []
    for entry in directory.iterdir():
        parsed = parse_segment(entry.name)
        if parsed is None:
            continue
        number, is_open = parsed
        if is_open:
            _log.warning(
                "%s: skipping unfinished segment %s (recorder killed?)", directory, entry.name
            )
        else:
            found.append((number, entry))
    for _, seg in sorted(found):
        yield from _parquet_batches(seg, chunk_rows, columns, unit=f"{seg.name} row")


def _parquet_batches(
    path: Path, chunk_rows: int, columns: bool, unit: str = "row"
) -> Iterator[Batch]:
    try:
        schema = pq.read_schema(path)
        # Dictionary-read strings: conversion then shares one str object per distinct value.
        strings = [f.name for f in schema if _is_string(f.type)]
        # Row group by row group: peak RSS measured the same for 1M and 8M rows. pre_buffer
        # would coalesce reads ahead; a local file does not need it.
        pf = pq.ParquetFile(path, read_dictionary=strings, pre_buffer=False)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{str(path)!r} is not a readable Parquet file: {exc}") from exc
    decoder = EventDecoder()
    with pf:
        first_row = 1
        for slices in _row_chunks(pf.iter_batches(batch_size=chunk_rows), chunk_rows):
            events: list[Event] = []
            rejections: list[tuple[int, Rejected]] = []
            ticks: list[PriceTicks] = []
            tick_at: list[npt.NDArray[np.int64]] = []
            start = first_row
            for rb in slices:
                batch = _convert(rb, first_row, decoder, columns)
                if batch.ticks is not None and batch.tick_at is not None:
                    ticks.append(batch.ticks)
                    tick_at.append(batch.tick_at + len(events) + sum(map(len, ticks[:-1])))
                events += batch.events
                rejections += batch.rejections
                first_row += rb.num_rows
            if events or rejections or ticks:
                yield Batch(
                    events,
                    rejections,
                    start,
                    tuple(n for n, _ in rejections),
                    unit,
                    PriceTicks.concat(ticks) if ticks else None,
                    np.concatenate(tick_at) if ticks else None,
                )


def _row_chunks(record_batches: Iterable[Any], chunk_rows: int) -> Iterator[list[Any]]:
    """Regroup record batches (which never span row groups) into exactly ``chunk_rows`` rows,
    the last group excepted. Slicing is zero-copy."""
    pending: list[Any] = []
    count = 0
    for rb in record_batches:
        while rb.num_rows:
            take = min(chunk_rows - count, rb.num_rows)
            pending.append(rb.slice(0, take))
            count += take
            rb = rb.slice(take)
            if count == chunk_rows:
                yield pending
                pending = []
                count = 0
    if pending:
        yield pending


def _column(rb: Any, name: str) -> Any:
    i = rb.schema.get_field_index(name)
    if i < 0:
        return pa.nulls(rb.num_rows)
    col = rb.column(i)
    if pa.types.is_dictionary(col.type) and col.dictionary.null_count:
        col = col.dictionary_decode()  # nulls belong in the indices, where checks see them
    return col


def _is_string(t: Any) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def _ok_mask(col: Any, f: _Field) -> Any:
    """Boolean array (no nulls): where ``col`` passes the checks of field ``f``."""
    t = col.type
    n = len(col)
    if f.kind == "str":
        if not _is_string(t):
            return col.is_null() if f.nullable else pa.repeat(False, n)
        return pa.repeat(True, n) if f.nullable else col.is_valid()
    if f.kind == "ts":
        if not pa.types.is_integer(t):
            return col.is_null() if f.nullable else pa.repeat(False, n)
        ok = pa.repeat(True, n) if f.nullable else col.is_valid()
        extremes = pc.min_max(col)
        try:  # the valid range is an interval: checking the extremes checks all
            if extremes["min"].is_valid:
                to_epoch_ms(extremes["min"].as_py())
                to_epoch_ms(extremes["max"].as_py())
        except Rejected:
            in_range = [v is None or _ts_ok(v) for v in col.to_pylist()]
            ok = pc.and_(ok, pa.array(in_range, pa.bool_()))
        return ok
    # float
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return col.is_null() if f.nullable else pa.repeat(False, n)
    v = col.cast(pa.float64(), safe=False)
    ok = pc.is_finite(v)
    for op, bound in ((pc.greater, f.gt), (pc.greater_equal, f.ge), (pc.less, f.lt)):
        if bound is not None:
            ok = pc.and_(ok, op(v, bound))
    if f.le is not None:
        ok = pc.and_(ok, pc.less_equal(v, f.le))
    return ok.fill_null(f.nullable)


def _ts_ok(ts: int) -> bool:
    try:
        to_epoch_ms(ts)
    except Rejected:
        return False
    return True


def _values(col: Any, f: _Field) -> Iterable[Any]:
    """Python values of a column that passed :func:`_ok_mask` (nulls as None)."""
    n = len(col)
    if col.null_count == n:
        return itertools.repeat(None, n)
    if f.kind == "float":
        col = col.cast(pa.float64(), safe=False)
    elif f.kind == "ts":
        col = col.cast(pa.int64())
    elif pa.types.is_dictionary(col.type) and not col.null_count:
        words = np.asarray(col.dictionary.to_pylist(), dtype=object)
        values: list[Any] = words[col.indices.to_numpy()].tolist()
        return values
    values = col.to_pylist()
    return values


def _build(ft: _FastType, rb: Any) -> list[Event]:
    columns = [_values(_column(rb, f.name), f) for f in ft.fields]
    if ft is _PRICE_COLUMNS:
        greeks, has = _greeks(rb)
        if greeks is not None and has is not None:
            columns.append(
                [
                    VenueGreeks(*(None if v != v else v for v in g)) if h else None
                    for g, h in zip(greeks.tolist(), has.tolist(), strict=True)
                ]
            )
    return list(map(ft.cls, *columns))


_GREEK_NAMES: Final = tuple(VenueGreeks.__struct_encode_fields__)


def _greeks_ok(col: Any) -> Any:
    """Boolean array (no nulls): rows whose ``greeks`` the column path can take: null, or
    a struct of the four Greeks each finite or null (anything else, a foreign type or a
    non-finite Greek, goes the one-by-one way and gets the JSON decoder's verdict)."""
    if col.null_count == len(col):
        return pa.repeat(True, len(col))
    t = col.type
    if not pa.types.is_struct(t) or {t.field(i).name for i in range(t.num_fields)} - set(
        _GREEK_NAMES
    ):
        return col.is_null()
    ok = pa.repeat(True, len(col))
    for name in _GREEK_NAMES:
        if t.get_field_index(name) < 0:
            continue
        v = pc.struct_field(col, name)
        if not (pa.types.is_floating(v.type) or pa.types.is_integer(v.type)):
            return col.is_null()
        ok = pc.and_(ok, pc.is_finite(v.cast(pa.float64(), safe=False)).fill_null(True))
    return pc.or_(col.is_null(), ok).fill_null(True)


def _greeks(
    sub: Any,
) -> tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.bool_] | None]:
    """Rows that passed :func:`_greeks_ok`: ``(n, 4)`` Greeks (NaN: not given) and where
    the row has them; ``(None, None)`` when no row has."""
    col = _column(sub, "greeks")
    if col.null_count == len(col):
        return None, None
    has: npt.NDArray[np.bool_] = col.is_valid().to_numpy(zero_copy_only=False)
    out = np.full((len(col), len(_GREEK_NAMES)), np.nan)
    t = col.type
    for k, name in enumerate(_GREEK_NAMES):
        if t.get_field_index(name) >= 0:
            v = pc.struct_field(col, name).cast(pa.float64(), safe=False)
            out[:, k] = v.fill_null(np.nan).to_numpy(zero_copy_only=False)
    out[~has] = np.nan
    return out, has


def _convert(rb: Any, first_row: int, decoder: EventDecoder, columns: bool = False) -> Batch:
    """One record batch as a Batch: rows that pass the column checks built directly (price
    rows kept as columns with ``columns``), the rest decoded one by one."""
    n = rb.num_rows
    types = _column(rb, "type")
    parts: list[tuple[Any, list[Event]]] = []  # (row indices, events)
    done = np.zeros(n, dtype=bool)
    ticks: PriceTicks | None = None
    tick_rows: npt.NDArray[np.int64] | None = None
    fast: tuple[_FastType, ...] = (*_FAST_TYPES, _PRICE_COLUMNS)
    for ft in fast if _is_string(types.type) else ():
        is_type = pc.equal(types, ft.tag).fill_null(False)
        count = pc.sum(is_type).as_py() or 0
        if not count:
            continue
        sub = rb if count == n else rb.filter(is_type)
        rows = np.arange(n) if count == n else np.flatnonzero(is_type.to_numpy(False))
        ok = pa.repeat(True, count)
        for f in ft.fields:
            ok = pc.and_(ok, _ok_mask(_column(sub, f.name), f))
        if ft is _PRICE_COLUMNS:
            ok = pc.and_(ok, _greeks_ok(_column(sub, "greeks")))
        ok_np = ok.to_numpy(zero_copy_only=False)
        if not ok_np.all():
            sub = sub.filter(ok)
            rows = rows[ok_np]
        if ft is _PRICE_COLUMNS and columns:
            if len(rows):
                ticks, tick_rows = _ticks(sub), rows
        else:
            parts.append((rows, _build(ft, sub)))
        done[rows] = True

    slow = np.flatnonzero(~done)
    if tick_rows is not None and ticks is not None:
        if not parts and not len(slow):
            return Batch([], [], ticks=ticks, tick_at=tick_rows)
        is_tick = np.zeros(n, dtype=bool)
        is_tick[tick_rows] = True
    else:
        if len(parts) == 1 and not len(slow):
            return Batch(parts[0][1], [])
        is_tick = None
    rejections: list[tuple[int, Rejected]] = []
    slots: list[Event | None] = [None] * n
    for rows, events in parts:
        for i, event in zip(rows.tolist(), events, strict=True):
            slots[i] = event
    if len(slow):
        for i, row in zip(slow.tolist(), rb.take(pa.array(slow)).to_pylist(), strict=True):
            try:
                slots[i] = _decode_row(row, decoder)
            except Rejected as rej:
                rejections.append((first_row + i, rej))
    if is_tick is None or tick_rows is None:
        return Batch([e for e in slots if e is not None], rejections)
    # Number each tick among the accepted rows: rows accepted before it.
    accepted = is_tick.copy()
    accepted[[i for i, e in enumerate(slots) if e is not None]] = True
    at = np.cumsum(accepted)[tick_rows] - 1
    events_only = [e for e in slots if e is not None]
    return Batch(events_only, rejections, ticks=ticks, tick_at=at)


def _ticks(sub: Any) -> PriceTicks:
    """Price rows that passed the checks, as columns (no Python object per row)."""
    col = _column(sub, "instrument")
    if not pa.types.is_dictionary(col.type):
        col = col.dictionary_encode()
    names: list[str] = col.dictionary.to_pylist()

    def floats(name: str) -> npt.NDArray[np.float64] | None:
        c = _column(sub, name)
        if c.null_count == len(c):
            return None
        out: npt.NDArray[np.float64] = (
            c.cast(pa.float64(), safe=False).fill_null(np.nan).to_numpy(zero_copy_only=False)
        )
        return out

    price = floats("price")
    assert price is not None  # checked: never null
    return PriceTicks(
        names,
        col.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        _column(sub, "ts").cast(pa.int64()).to_numpy(zero_copy_only=False),
        price,
        floats("iv"),
        floats("underlying_price"),
        *_greeks(sub),
    )


def _decode_row(row: dict[str, Any], decoder: EventDecoder) -> Event:
    """One row, nulls dropped, through the JSON decoder: the same checks as a JSONL line."""
    tag = row.get("type")
    cls = _CLASSES.get(tag) if isinstance(tag, str) else None
    obj: dict[str, Any] = {} if tag is None else {"type": tag}
    if cls is not None:
        for name in cls.__struct_encode_fields__:
            value = row.get(name)
            if value is None:
                continue
            obj[name] = _json_value(value, f"$.{name}")
    try:
        message = msgspec.json.encode(obj)
    except (msgspec.EncodeError, TypeError, OverflowError) as exc:
        raise Rejected(Reason.INVALID_VALUE, f"cannot encode row: {exc}") from None
    return decoder.decode(message)


def _json_value(value: Any, at: str) -> Any:
    """A column value as the JSON a line would carry: a map column's ``[(key, value)]`` an
    object, a struct's nulls dropped (absent), a non-finite number refused as JSON refuses
    ``1e999`` (msgspec would encode NaN as null: a silent change)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise Rejected(Reason.INVALID_VALUE, f"Non-finite number - at `{at}`")
    if isinstance(value, dict):
        return {k: _json_value(v, f"{at}.{k}") for k, v in value.items() if v is not None}
    if isinstance(value, list) and all(isinstance(x, tuple) and len(x) == 2 for x in value):
        return {str(k): _json_value(v, f"{at}.{k}") for k, v in value}
    return value


class ReplayEngine(Protocol):
    """What :func:`feed` hands a batch's runs to (``monitor.engine.core.Engine``)."""

    def replay(self, events: Sequence[Event], source: str) -> list[tuple[int, Rejected]]: ...

    def replay_prices(
        self,
        names: Sequence[str],
        code: npt.NDArray[np.integer[Any]],
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        source: str,
        *,
        iv: npt.NDArray[np.float64] | None = None,
        forward: npt.NDArray[np.float64] | None = None,
        greeks: npt.NDArray[np.float64] | None = None,
        has_greeks: npt.NDArray[np.bool_] | None = None,
    ) -> list[tuple[int, Rejected]]: ...


def feed(engine: ReplayEngine, batch: Batch, source: str) -> Iterator[tuple[int, Rejected]]:
    """Apply ``batch``'s runs in file order: runs of ticks column-wise, the rest as events.
    Yields each refusal with the item's number in the batch (:meth:`Batch.number_of`)."""
    for k0, run in batch.runs():
        if isinstance(run, PriceTicks):
            refused = engine.replay_prices(
                run.names,
                run.code,
                run.ts,
                run.price,
                source,
                iv=run.iv,
                forward=run.underlying_price,
                greeks=run.greeks,
                has_greeks=run.has_greeks,
            )
        else:
            refused = engine.replay(run, source)
        for k, rej in refused:
            yield k0 + k, rej
