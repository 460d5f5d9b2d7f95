"""Async producers of normalized events (see ``connectors.base``).

Each connector declares its ``[[connectors]]`` entry (a ``ConnectorSettings`` subclass
that knows how to build the connector) in a config module of its own (``<venue>.config``,
``simulated_config``) that imports none of its runtime, so loading a config file loads no
transport, socket library or market model. Adding a venue is its own package plus one member
of :data:`ConnectorConfig` here; ``monitor.config`` assembles the file's schema from it.
"""

from __future__ import annotations

from typing import Final, TypeAlias, cast, get_args

from connectors.base import Connector, ConnectorSettings
from connectors.binance.config import BinanceFuturesConnector
from connectors.deribit.config import DeribitConnector
from connectors.mqtt.config import MqttConnector
from connectors.simulated_config import SimulatedConnector

__all__ = ["CONNECTOR_TYPES", "ConnectorConfig", "build_connector"]

#: Every connector type: the one registration line per connector.
ConnectorConfig: TypeAlias = (
    SimulatedConnector | DeribitConnector | MqttConnector | BinanceFuturesConnector
)

#: ``type`` tag -> config Struct, in declaration order (the first is the default).
CONNECTOR_TYPES: Final[dict[str, type[ConnectorSettings]]] = {
    cast(str, cls.__struct_config__.tag): cls
    for cls in (get_args(ConnectorConfig) or (ConnectorConfig,))
}


def build_connector(cfg: ConnectorSettings) -> Connector:
    """Instantiate the connector a config entry describes."""
    return cfg.build()
