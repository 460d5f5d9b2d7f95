"""Reconnect and retry policy as data: a capped, jittered exponential schedule.

Shared by every connector's transport and every notifier, so no loop invents its own (an
uncapped doubling is how reconnect storms and venue bans start).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with full jitter (seconds).

    ``delays()`` yields ``uniform(0, min(cap, initial * factor**n))``, forever; call
    ``reset()`` semantics by creating a fresh iterator after a connection that stayed up.

    >>> d = Backoff(initial=1.0, cap=8.0, rng=random.Random(0)).delays()
    >>> all(0.0 <= next(d) <= 8.0 for _ in range(100))
    True
    """

    initial: float = 0.5
    factor: float = 2.0
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def delays(self) -> Iterator[float]:
        ceiling = self.initial
        while True:
            yield self.rng.uniform(0.0, min(self.cap, ceiling))
            ceiling = min(self.cap, ceiling * self.factor)
