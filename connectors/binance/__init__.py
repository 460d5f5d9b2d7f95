"""Binance USD-M futures connector: a sans-I/O parser (:mod:`.parser`, :mod:`.messages`),
the position merge (:mod:`.book`), a combined-stream transport with a signed REST client on
the shared websocket session (:mod:`.client`), and its ``[[connectors]]`` entry
(:mod:`.config`, ``type = "binance_futures"``).
"""
