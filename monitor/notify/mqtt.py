"""MQTT notifier: every transition published with QoS 1, retained as the alert's state.

Topic: ``<topic_prefix>/<rule>/<account>`` for an alert without an underlying,
``<topic_prefix>/<rule>/<account>/<underlying>`` for one with (``_book`` stands for no
account). The underlying is a level of its own because one rule raises one alert per
underlying (risk drift on BTC and on ETH): on a shared topic the retained message would
hold only whichever moved last. ``/``, ``+`` and ``#`` inside a name become ``_`` (they
would break the topic's levels or be refused by the broker).

Payload: :func:`~monitor.notify.base.transition_payload`, UTF-8 JSON, ``key`` being the
idempotency key. Every message is retained, so the topic always holds the alert's current
state: a subscriber that connects later gets ``pending``/``firing`` at once, and
``resolved`` (or ``inactive``) once it is over.

Delivery: a transition is acknowledged when the broker's PUBACK arrives. A connection
that fails (broker down, restarted, PUBACK timeout), also while idle, is reopened with
capped jittered backoff and the unacknowledged transition is published again: at least
once, as QoS 1 is anyway; the key tells duplicates apart. Messages go out one at a time,
in order, so the retained state is always the newest.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import aiomqtt

from monitor.model.alert import Alert, Transition
from monitor.notify.base import RetryableDeliveryError, Session, transition_payload
from monitor.notify.config import MqttAlertsConfig

__all__ = ["BOOK", "MqttNotifier", "alert_topic"]

#: Topic level standing for "no account" (a book-wide alert).
BOOK: Final = "_book"
_UNSAFE: Final = re.compile(r"[/+#\x00]")


def _level(name: str) -> str:
    return _UNSAFE.sub("_", name) or "_"


def alert_topic(prefix: str, alert: Alert) -> str:
    """The retained topic of one alert instance (see the module doc)."""
    parts = [prefix.rstrip("/"), _level(alert.rule), _level(alert.account or BOOK)]
    if alert.underlying is not None:
        parts.append(_level(alert.underlying))
    return "/".join(parts)


class MqttNotifier:
    """Publishes transitions to an MQTT broker (see the module doc)."""

    name: Final = "mqtt"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        topic_prefix: str = "riskmon/alerts",
        client_id: str = "riskmon",
        username: str | None = None,
        password: str | None = None,
        max_backoff_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.topic_prefix = topic_prefix
        self.client_id = client_id
        self._username = username
        self._password = password
        self._max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, cfg: MqttAlertsConfig) -> MqttNotifier:
        return cls(
            cfg.host,
            cfg.port,
            topic_prefix=cfg.topic_prefix,
            client_id=cfg.client_id,
            username=cfg.username,
            password=cfg.password,
            max_backoff_s=cfg.max_backoff / 1000.0,
        )

    @property
    def max_backoff_s(self) -> float:
        return self._max_backoff_s

    def wants(self, transition: Transition) -> bool:
        return True

    def topic(self, alert: Alert) -> str:
        return alert_topic(self.topic_prefix, alert)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.client_id,
            username=self._username,
            password=self._password,
            timeout=self.timeout_s,
            clean_session=True,
        )
        async with client, asyncio.TaskGroup() as tg:
            watch = tg.create_task(
                _watch_connection(client), name=f"riskmon.notify[{self.name}].connection"
            )
            try:
                yield _MqttSession(self, client)
            finally:
                watch.cancel()


async def _watch_connection(client: aiomqtt.Client) -> None:
    """Raise as soon as the broker drops the connection, even while nothing is published.

    Nothing is subscribed, so the message iterator only ever ends with a disconnect. Its
    failure ends the session at once: the gauge says disconnected and the reconnect starts
    without waiting for the next transition.
    """
    try:
        async for _ in client.messages:
            pass
    except aiomqtt.MqttError as exc:
        raise RetryableDeliveryError(f"MQTT connection lost: {exc}") from exc


class _MqttSession:
    def __init__(self, notifier: MqttNotifier, client: aiomqtt.Client) -> None:
        self._notifier = notifier
        self._client = client

    async def maintain(self) -> float | None:
        return None

    async def deliver(self, transition: Transition) -> None:
        payload = json.dumps(transition_payload(transition), separators=(",", ":"))
        try:
            await self._client.publish(
                self._notifier.topic(transition.alert),
                payload.encode(),
                qos=1,
                retain=True,
                timeout=self._notifier.timeout_s,
            )
        except aiomqtt.MqttError as exc:
            raise RetryableDeliveryError(f"MQTT publish failed: {exc}") from exc
