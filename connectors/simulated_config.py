"""The ``[[connectors]] type = "simulated"`` config entry (the embedded demo market).

Registered in ``connectors.ConnectorConfig``. Apart from :mod:`connectors.simulated`, the
market itself (numpy, the Black-76 pricer), which only :meth:`SimulatedConnector.build`
imports: loading or checking a config does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Final

from msgspec import Meta

from connectors.base import ConnectorName, ConnectorSettings
from monitor.model.settings import Delay, Duration, EpochMs, Invalid, parse_duration, show

if TYPE_CHECKING:
    from connectors.simulated import SimulatedMarket

__all__ = ["DEMO_HISTORY", "SimulatedConnector"]


#: The built-in demo's history: longer than the default ``estimator.warmup`` (5 min), so
#: every figure, regime included, is known within seconds of ``riskmon run``.
DEMO_HISTORY: Final = Delay("6m")


class SimulatedConnector(ConnectorSettings, frozen=True, tag="simulated"):
    """Seeded random-walk prices for the given underlyings (demo and tests)."""

    name: ConnectorName = "simulated"
    #: Any integer >= 0 (numpy's seed sequences take no negative entropy).
    seed: Annotated[int, Meta(ge=0)] = 7
    tick_interval: Duration = parse_duration("200ms")
    underlyings: Annotated[
        tuple[Annotated[str, Meta(pattern=r"^[A-Z0-9]{1,20}$")], ...], Meta(min_length=1)
    ] = ("BTC", "ETH", "SOL")
    #: Simulated start time; None = the clock's now.
    start_ms: EpochMs | None = None
    #: Pace ticks at wall-clock speed; False = as fast as the engine takes them.
    realtime: bool = True
    #: Stop after this much simulated time; None = run until cancelled.
    duration: Duration | None = None
    #: Realtime without start_ms: start this long before now and deliver that past at
    #: once (the estimator is warm within seconds); "0s" starts now. The built-in demo
    #: (a config without connectors) uses :data:`DEMO_HISTORY`.
    history: Delay = Delay("0s")

    def __post_init__(self) -> None:
        for i, u in enumerate(self.underlyings):
            if not u:
                raise Invalid(("underlyings", i), "expected a non-empty name")
            if u in self.underlyings[:i]:
                raise Invalid(("underlyings", i), f"duplicate underlying {show(u)}")

    def build(self) -> SimulatedMarket:
        from connectors.simulated import SimulatedMarket

        return SimulatedMarket(
            name=self.name,
            seed=self.seed,
            tick_interval_ms=int(self.tick_interval),
            underlyings=tuple(self.underlyings),
            start_ms=self.start_ms,
            realtime=self.realtime,
            history_ms=int(self.history),
            duration_ms=None if self.duration is None else int(self.duration),
        )
