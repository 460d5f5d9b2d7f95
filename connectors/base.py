"""What every connector is, and what it talks to.

A connector is an async producer: ``await connector.run(sink)`` runs until cancelled,
pushing normalized events (``monitor.model.events``) into the sink. It owns its own socket,
heartbeats and reconnects; it never touches engine state. Parsing of venue messages lives
in a pure function beside the transport so recorded messages test it without a socket.

Reconnect policy is data: :class:`Backoff` is a capped, jittered exponential schedule.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from monitor.model.events import Event, Rejected

__all__ = ["Backoff", "Connector", "ConnectorStatus", "EventSink"]


class EventSink(Protocol):
    """Where a connector delivers events.

    ``put`` waits only when the bounded queue is full of non-price events (prices are
    conflated and never wait); ``reject`` counts and logs an input the connector refused.
    """

    async def put(self, event: Event, source: str) -> None: ...

    def reject(self, source: str, rejected: Rejected) -> None: ...


@dataclass(slots=True)
class ConnectorStatus:
    """Live health of one connector, read by ``/-/ready`` and the metrics collector.

    Times are epoch seconds of the wall clock, set by the connector's transport.
    """

    name: str
    kind: str
    connected: bool = False
    reconnects: int = 0
    messages: int = 0
    last_message_s: float | None = None
    last_error: str | None = None
    delivered: bool = False  # has delivered at least one event since start


@runtime_checkable
class Connector(Protocol):
    """An async producer of normalized events."""

    @property
    def status(self) -> ConnectorStatus: ...

    async def run(self, sink: EventSink) -> None:
        """Produce events until cancelled. Reconnects internally; raises only on bad config."""
        ...


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
