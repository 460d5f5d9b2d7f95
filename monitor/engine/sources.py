"""One index per underlying: which venue's index ticks feed an underlying's index price.

Venues publish their own index of the same underlying (Deribit's ``btc_usd``, Binance's
``BTCUSDT`` index), a few basis points apart. Interleaving two venues' ticks in one series
would make that basis noise look like volatility, so each underlying's index ``U`` (the
price the estimator samples and linear positions are valued at) comes from one *source*,
a connector:

- the connector named in ``[market] index_sources`` for ``U``; otherwise
- the first connector that delivers an index tick of ``U`` (its own ``U``, or a
  venue-qualified index such as ``U.binance`` declared with ``underlying = "U"``). The
  claim holds for the daemon's life and is logged, so it is the same after a restart only
  if the same connector is first again: name the source in the config to pin it.

Other connectors' index ticks are kept apart, never dropped: a bare ``U`` tick from a
connector that is not the source becomes ``U.<connector>`` (declared once as an index of
``U``), and a venue-qualified index tick from the source is applied under its own name
*and* as ``U``. The engine only ever sees the routed events, and so does the recorder:
a replay of the recording applies them as recorded and reproduces the live figures.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from monitor.model.events import Event, InstrumentEvent, PriceEvent
from monitor.model.instruments import InstrumentRegistry, parse_name

__all__ = ["IndexSources"]

log = logging.getLogger(__name__)


class IndexSources:
    """Routes index ticks so that each underlying's index has one source (module doc).

    Parameters
    ----------
    registry
        The engine's registry, read only: what an instrument name is (kind, underlying).
    configured
        Underlying -> connector name, from ``[market] index_sources``.
    """

    def __init__(self, registry: InstrumentRegistry, configured: Mapping[str, str]) -> None:
        self._registry = registry
        self._configured = dict(configured)
        self.claimed: dict[str, str] = {}  # underlying -> source, first come (unconfigured)
        self._declared: set[str] = set()

    def source_of(self, underlying: str) -> str | None:
        """The connector whose index ticks feed ``underlying``'s index (None: not yet)."""
        return self._configured.get(underlying) or self.claimed.get(underlying)

    def route(self, event: Event, source: str) -> Iterator[Event]:
        """The events to apply for ``event`` received from ``source`` (usually itself)."""
        if type(event) is not PriceEvent:
            yield event
            return
        name = event.instrument
        inst = self._registry.get(name) or parse_name(name)
        if inst is None or inst.kind != "index":
            yield event
            return
        underlying = inst.underlying
        owner = self.source_of(underlying)
        if owner is None:
            owner = self.claimed[underlying] = source
            log.info(
                "index of %s from connector %s (the first to price it; pin it in "
                "[market] index_sources)",
                underlying,
                source,
                extra={"underlying": underlying, "connector": source},
            )
        if name == underlying:
            if source == owner:
                yield event
                return
            kept = f"{underlying}.{source}"
            if kept not in self._declared and kept not in self._registry:
                self._declared.add(kept)
                yield InstrumentEvent(instrument=kept, kind="index", underlying=underlying)
            yield PriceEvent(ts=event.ts, instrument=kept, price=event.price)
            return
        yield event
        if source == owner:
            yield PriceEvent(ts=event.ts, instrument=underlying, price=event.price)
