"""Binance USD-M futures connector: a sans-I/O parser (:mod:`.parser`, :mod:`.messages`),
the position merge (:mod:`.book`), a transport on the shared websocket session (market and
user data sockets, a signed REST client: :mod:`.client`), and its ``[[connectors]]`` entry
(:mod:`.config`, ``type = "binance_futures"``).
"""
