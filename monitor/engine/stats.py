"""Daemon activity counters, kept as plain ints on the hot path.

The engine counts with ``+= 1`` on dict entries (a prometheus ``Counter.labels().inc()`` per
event would cost more than the event itself at 300k events/s); the metrics collector reads
these at scrape time and exports them as counters. Only the engine task writes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["EngineStats"]


@dataclass(slots=True)
class EngineStats:
    """Monotonic counters of the engine (since start).

    Attributes
    ----------
    accepted
        ``(source, type) -> events`` applied to state.
    rejected
        ``(source, reason) -> events`` refused (``monitor.model.events.Reason`` values).
    conflated
        Price ticks replaced in the queue by a newer tick of the same instrument.
    evaluations
        Snapshots produced; ``evaluation_errors`` counts evaluations that raised (the
        previous snapshot stays published).
    samples
        Estimator grid points closed; ``gaps`` counts outages longer than
        ``estimator.max_gap`` after which the grid restarted without a return.
    queue_depth
        Events waiting in the queue at the last look (a gauge).
    state_restore
        What became of the saved state at start (a ``monitor.engine.state.RestoreResult``
        value); ``None`` when no state directory is configured.
    state_writes
        ``"ok"`` / ``"error"`` -> state saves; ``state_saved_s`` the wall-clock time of the
        last good one (epoch seconds).
    """

    accepted: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)
    conflated: int = 0
    evaluations: int = 0
    evaluation_errors: int = 0
    samples: int = 0
    gaps: int = 0
    queue_depth: int = 0
    state_restore: str | None = None
    state_writes: Counter[str] = field(default_factory=Counter)
    state_saved_s: float | None = None
