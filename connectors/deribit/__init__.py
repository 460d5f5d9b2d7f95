"""Deribit connector: a sans-I/O parser (:mod:`.parser`, :mod:`.messages`), a JSON-RPC
transport on the shared websocket session (:mod:`.client`), and its ``[[connectors]]``
entry (:mod:`.config`, ``type = "deribit"``).
"""
