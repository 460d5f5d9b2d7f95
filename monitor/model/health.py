"""What a connector reports about its own health, read by readiness, metrics and rules.

The connector's transport writes it; ``/-/ready``, the metrics collector and the
``connector_down`` rule read it. It lives in the model so that none of those readers
imports a connector.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from monitor.model.events import Event, PriceEvent

__all__ = ["LAG_BUCKETS", "ConnectorStatus", "LagHistogram", "SinkLag"]

#: Upper bounds (seconds, inclusive) of the price-lag buckets: ``0`` counts ticks stamped
#: ahead of riskmon's clock (a skewed publisher clock); the rest span a healthy feed
#: (milliseconds) to one that is minutes behind.
LAG_BUCKETS: Final = (
    0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(slots=True)
class LagHistogram:
    """Receipt time minus event time of a connector's ticks, seconds: a Prometheus histogram
    kept as plain numbers (bumped on the hot path, exported at scrape time)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BUCKETS) + 1))
    total: float = 0.0  # sum of the observations, a negative one as 0 (a sum never falls)
    count: int = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LAG_BUCKETS, seconds)] += 1
        if seconds > 0.0:
            self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """``(le, count of observations <= le)`` per bucket, ``inf`` last."""
        out: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*LAG_BUCKETS, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


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
    #: Price ticks' receipt minus event time; None for a connector that does not measure it.
    price_lag: LagHistogram | None = None
    #: Ticks received later than the connector's ``max_price_age`` after their event time.
    late_prices: int = 0
    #: Times the connector dropped its prices' connection to skip ticks that had waited
    #: longer than its ``max_price_age`` in buffers.
    price_catch_ups: int = 0


class SinkLag:
    """Price lag timed where connectors hand their events over (the daemon's or the ingest
    process's sink), for every connector that does not time its own ticks: each gets a
    :class:`LagHistogram` as its ``status.price_lag`` (the MQTT connector times its ticks at
    the socket, and the simulated market only its live ones, so neither is timed here).

    The lag is wall-clock receipt minus the tick's ``ts``: the venue's (or publisher's)
    clock against this host's, so it includes their offset (ticks stamped ahead count in
    the ``0`` bucket). One clock read and one bucket bump per price event.
    """

    __slots__ = ("_clock", "_timed")

    def __init__(
        self, statuses: Iterable[ConnectorStatus], clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._timed: dict[str, LagHistogram] = {}
        for st in statuses:
            if st.price_lag is None:
                st.price_lag = self._timed[st.name] = LagHistogram()

    def note(self, event: Event, source: str) -> None:
        """Time ``event`` if it is a price tick of a connector timed here."""
        if type(event) is PriceEvent:
            lag = self._timed.get(source)
            if lag is not None:
                lag.observe(self._clock() - event.ts / 1000.0)
