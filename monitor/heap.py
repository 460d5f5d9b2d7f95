"""Keep the cyclic garbage collector's full passes off the evaluation's latency.

CPython's cyclic GC now and then walks every container object of the oldest generation.
With a large book loaded (the reference book: 20,000 instruments, their positions, tables
and names), one such pass holds the event loop for about 20 ms, so a 15 ms evaluation
that meets one takes 35 ms: it is the whole p99 (``tests/bench/bench_evaluate_cost.py``).
The long-lived state is built once and then lives as long as the daemon; the cyclic
collector has nothing to find in it. :class:`HeapFreezer` moves it out of the collector's
reach with :func:`gc.freeze` once it has been loaded (and again whenever it has grown by
``growth`` since, at most every ``min_interval_s``), after a full collection so that
nothing that is garbage already gets frozen.

What this costs: an object alive at a freeze that later becomes part of an unreachable
cycle is never freed (objects freed by reference counting, nearly all of them, are freed
as usual). Freezes are rare (the state grows by a tenth), so that is bounded by what
those few moments hold; ``tests/bench/bench_memory.py soak --reference`` shows the RSS.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Final

__all__ = ["HeapFreezer"]

#: A state smaller than this (instruments) is not worth a freeze: its full passes are short.
MIN_SIZE: Final = 1_000


class HeapFreezer:
    """Decides when the long-lived heap is frozen; see the module notes.

    Parameters
    ----------
    min_interval_s
        Least time between two freezes (seconds, on ``clock``).
    growth
        A freeze follows once the state is this much larger (relative) than at the last.
    min_size
        No freeze below this size.
    clock
        Monotonic seconds.
    """

    def __init__(
        self,
        *,
        min_interval_s: float = 60.0,
        growth: float = 0.1,
        min_size: int = MIN_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.min_interval_s = min_interval_s
        self.growth = growth
        self.min_size = min_size
        self._clock = clock
        self._size = 0  # the state's size at the last freeze
        self._at: float | None = None  # when that was
        self.freezes = 0

    def due(self, size: int) -> bool:
        """Whether a state of ``size`` (instruments known) should be frozen now."""
        if size < self.min_size or size < self._size * (1.0 + self.growth):
            return False
        return self._at is None or self._clock() - self._at >= self.min_interval_s

    def after_evaluation(self, size: int) -> int | None:
        """Freeze when :meth:`due`; the number of objects frozen in all, else None."""
        if not self.due(size):
            return None
        gc.collect()  # what is garbage now is collected, not frozen
        gc.freeze()
        self._size, self._at = size, self._clock()
        self.freezes += 1
        return gc.get_freeze_count()
