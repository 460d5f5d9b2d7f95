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

from collections.abc import Iterator
from pathlib import Path
from typing import Final

from connectors.replay import jsonl
from connectors.replay.batch import Batch, PriceTicks, ReplayEngine, feed

__all__ = ["SUFFIXES", "Batch", "PriceTicks", "ReplayEngine", "feed", "iter_batches"]

#: Suffixes :func:`iter_batches` reads.
SUFFIXES: Final = (".jsonl", ".jsonl.gz", ".parquet")


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
        return jsonl.batches(jsonl.file_pieces(path, chunk_bytes), chunk_bytes)
    if name.endswith(".jsonl.gz"):
        return jsonl.batches(jsonl.gzip_pieces(path, chunk_bytes), chunk_bytes)
    if name.endswith(".parquet"):
        from connectors.replay import parquet  # pyarrow: only to read Parquet

        if path.is_dir():
            return parquet.segment_batches(path, chunk_rows, columns)
        return parquet.batches(path, chunk_rows, columns)
    raise ValueError(
        f"cannot replay {str(path)!r}: the suffix must be one of {', '.join(SUFFIXES)}"
    )
