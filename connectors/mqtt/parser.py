"""The desk's own feed over MQTT: topics and payloads to normalized events, with no I/O.

Topics are ``{prefix}/{category}/...`` with four categories; what follows the category is
free for the publisher (``riskmon/positions/main/BTC-PERPETUAL`` is a good habit: one
retained topic per account and instrument). A payload is one schema-v1 JSON event or a JSON
array of them, and every event must be of its topic's category, so a mis-wired publisher
is caught at the boundary, not in the book:

====================  ==============
topic                 event ``type``
====================  ==============
``{p}/prices/#``      ``price``
``{p}/positions/#``   ``position``
``{p}/accounts/#``    ``account``
``{p}/instruments/#`` ``instrument``
====================  ==============

Example
-------
>>> p = PayloadParser("riskmon")
>>> events, rejected = p.parse(
...     "riskmon/positions/main/BTC-PERPETUAL",
...     b'{"type":"position","ts":1767225600000,"account":"main",'
...     b'"instrument":"BTC-PERPETUAL","quantity":-2.5}',
... )
>>> events[0].quantity, rejected
(-2.5, [])
"""

from __future__ import annotations

from typing import Final

import msgspec

from monitor.model.events import (
    AccountEvent,
    Event,
    EventDecoder,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
)

__all__ = ["CATEGORIES", "PayloadParser", "price_filter", "subscriptions", "topic_filters"]

#: Topic category -> the event type its messages must carry.
CATEGORIES: Final[dict[str, type[Event]]] = {
    "prices": PriceEvent,
    "positions": PositionEvent,
    "accounts": AccountEvent,
    "instruments": InstrumentEvent,
}
#: Largest payload accepted (a JSON array of a whole book snapshot fits easily).
MAX_PAYLOAD_BYTES: Final = 4 << 20


def topic_filters(prefix: str) -> list[str]:
    """The subscriptions: ``{prefix}/{category}/#`` for each category."""
    return [f"{prefix}/{category}/#" for category in CATEGORIES]


def price_filter(prefix: str) -> str:
    """The subscription of prices."""
    return f"{prefix}/prices/#"


def subscriptions(prefix: str, *, qos: int, price_qos: int) -> list[tuple[str, int]]:
    """Each topic filter with the QoS it is subscribed at: ``price_qos`` for prices (a tick
    is superseded by the next), ``qos`` for positions, accounts and instruments."""
    return [
        (f"{prefix}/{category}/#", price_qos if category == "prices" else qos)
        for category in CATEGORIES
    ]


class PayloadParser:
    """Turns one MQTT message into events and counted rejections; one per connector.

    Never raises for anything the publisher sends: a bad payload is a list of
    :class:`Rejected`, each with a reason from the bounded set.
    """

    __slots__ = ("_decoder", "_prefix", "_raw_array")

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix.rstrip("/") + "/"
        self._decoder = EventDecoder()
        self._raw_array = msgspec.json.Decoder(list[msgspec.Raw])

    def category(self, topic: str) -> str | None:
        """The category a topic belongs to, or None outside the subscriptions."""
        if not topic.startswith(self._prefix):
            return None
        head = topic[len(self._prefix) :].split("/", 1)[0]
        return head if head in CATEGORIES else None

    def parse(self, topic: str, payload: bytes) -> tuple[list[Event], list[Rejected]]:
        """Decode ``payload`` received on ``topic``.

        Returns
        -------
        events, rejections
            Accepted events in payload order; one :class:`Rejected` per refused event (or
            one for a payload that is not JSON, is empty, too large, or on a foreign topic).
        """
        category = self.category(topic)
        if category is None:
            return [], [Rejected(Reason.UNKNOWN_TYPE, f"topic {topic[:200]!r} is not subscribed")]
        if len(payload) > MAX_PAYLOAD_BYTES:
            return [], [
                Rejected(Reason.INVALID_VALUE, f"payload of {len(payload)} bytes is too large")
            ]
        body = payload.lstrip()
        if body[:1] == b"[":
            try:
                raws = self._raw_array.decode(body)
            except msgspec.MsgspecError as exc:
                return [], [Rejected(Reason.MALFORMED_JSON, str(exc))]
            items: list[bytes] = [bytes(r) for r in raws]
        else:
            items = [body]
        expected = CATEGORIES[category]
        events: list[Event] = []
        rejections: list[Rejected] = []
        for item in items:
            try:
                event = self._decoder.decode(item)
            except Rejected as rej:
                rejections.append(rej)
                continue
            if type(event) is not expected:
                rejections.append(
                    Rejected(
                        Reason.UNKNOWN_TYPE,
                        f"a {type(event).__struct_config__.tag} event on a {category} topic",
                    )
                )
                continue
            events.append(event)
        return events, rejections
