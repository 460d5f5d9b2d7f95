"""What the venue parser benchmarks share."""

from __future__ import annotations

import time
from collections.abc import Callable


def rate(fn: Callable[[bytes], object], msgs: list[bytes], repeat: int) -> float:
    """Messages per second of ``fn`` over ``msgs``, the best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for m in msgs:
            fn(m)
        best = min(best, time.perf_counter() - t0)
    return len(msgs) / best
