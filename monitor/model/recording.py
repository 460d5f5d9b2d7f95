"""How a Parquet recording is laid out: a directory of numbered segments (names only).

A Parquet file is readable only once its footer is written, so a recording that must
survive a crash cannot be one file. ``riskmon run --record rec.parquet`` makes
``rec.parquet/`` a directory of segments, each a complete Parquet file, closed every so many
seconds or bytes. The segment being written is named ``segment-NNNNNN.parquet.open`` and
renamed to ``segment-NNNNNN.parquet`` once closed, so a reader sees only whole segments; a
crash loses at most the open one. A restart with the same path opens the next number.
Replay reads the closed segments in number order.

The recorder (``monitor.engine.record``) and the reader (``connectors.replay``) share these
names; neither does I/O here.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["OPEN_SUFFIX", "parse_segment", "segment_name"]

#: Added to the name of the segment being written.
OPEN_SUFFIX: Final = ".open"
_SEGMENT: Final = re.compile(r"segment-(\d{6,})\.parquet(\.open)?")


def segment_name(number: int) -> str:
    """The closed segment's file name: ``segment-000001.parquet`` (numbers from 1)."""
    if number < 1:
        raise ValueError(f"segment numbers start at 1, got {number}")
    return f"segment-{number:06d}.parquet"


def parse_segment(name: str) -> tuple[int, bool] | None:
    """``(number, still open)`` of a segment file name, or None for any other name.

    >>> parse_segment("segment-000012.parquet"), parse_segment("segment-000013.parquet.open")
    ((12, False), (13, True))
    """
    m = _SEGMENT.fullmatch(name)
    return None if m is None else (int(m.group(1)), m.group(2) is not None)
