"""What a connector reports about its own health, read by readiness, metrics and rules.

The connector's transport writes it; ``/-/ready``, the metrics collector and the
``connector_down`` rule read it. It lives in the model so that none of those readers
imports a connector.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConnectorStatus"]


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
