"""Deribit connector: a sans-I/O parser (:mod:`.parser`, :mod:`.messages`), a JSON-RPC
transport on the shared websocket session (:mod:`.client`), and its config (:mod:`.config`).

``build_deribit(cfg)`` is what ``connectors.build_connector`` calls for a
``DeribitConnector`` config entry.
"""

from __future__ import annotations

__all__: list[str] = []
