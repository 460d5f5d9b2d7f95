"""Deribit connector: a sans-I/O parser (:mod:`.parser`, :mod:`.messages`), a JSON-RPC
transport on the shared websocket session (:mod:`.client`), and its config (:mod:`.config`).

:func:`build_deribit` is what ``connectors.build_connector`` calls for a
``DeribitConnector`` config entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.deribit.client import DeribitMarket
    from connectors.deribit.config import DeribitConnector

__all__ = ["build_deribit"]


def build_deribit(cfg: DeribitConnector) -> DeribitMarket:
    """The connector a ``[[connectors]] type = "deribit"`` entry describes."""
    from connectors.deribit.client import DeribitMarket, DeribitSettings
    from connectors.deribit.config import read_secret

    settings = DeribitSettings(
        name=cfg.name,
        url=cfg.url,
        currencies=tuple(cfg.currencies),
        subscribe=cfg.subscribe,
        ticker_interval=cfg.ticker_interval,
        heartbeat_s=cfg.heartbeat.seconds,
        instruments=tuple(cfg.instruments),
        client_id=cfg.client_id if cfg.authenticated else "",
    )
    return DeribitMarket(settings, secret=(lambda: read_secret(cfg)) if cfg.authenticated else None)
