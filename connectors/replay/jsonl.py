"""JSONL recordings (``.jsonl``, ``.jsonl.gz``): read in chunks cut at a newline, each chunk
decoded by one :meth:`EventDecoder.decode_lines` call (see :mod:`connectors.replay`)."""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from connectors.replay.batch import Batch
from monitor.model.events import Event, EventDecoder, Rejected

_log = logging.getLogger("connectors.replay")


def file_pieces(path: Path, size: int) -> Iterator[bytes]:
    with open(path, "rb", buffering=0) as f:
        while piece := f.read(size):
            yield piece


def gzip_pieces(path: Path, size: int) -> Iterator[bytes]:
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


def batches(pieces: Iterable[bytes], chunk_bytes: int) -> Iterator[Batch]:
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
