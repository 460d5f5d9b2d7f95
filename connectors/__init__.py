"""Async producers of normalized events (see ``connectors.base``).

:func:`build_connector` maps one ``[[connectors]]`` config entry to its connector; adding a
venue is one config Struct in ``monitor.config`` and one branch here.
"""

from __future__ import annotations

from connectors.base import Connector
from monitor.config import ConnectorConfig, SimulatedConnector

__all__ = ["build_connector"]


def build_connector(cfg: ConnectorConfig) -> Connector:
    """Instantiate the connector a config entry describes (imports it lazily)."""
    if isinstance(cfg, SimulatedConnector):
        from connectors.simulated import SimulatedMarket

        return SimulatedMarket(
            name=cfg.name,
            seed=cfg.seed,
            tick_interval_ms=int(cfg.tick_interval),
            underlyings=tuple(cfg.underlyings),
            start_ms=cfg.start_ms,
            realtime=cfg.realtime,
            duration_ms=None if cfg.duration is None else int(cfg.duration),
        )
    raise TypeError(f"no connector for config {type(cfg).__name__}")
