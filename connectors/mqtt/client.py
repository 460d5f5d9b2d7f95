"""The MQTT transport: one persistent MQTT 5 session, reconnecting with capped backoff.

A quiet feed is normal (a desk may publish nothing for hours); the MQTT keepalive proves
the socket alive, so there is no data watchdog. Every message is parsed by
:class:`connectors.mqtt.parser.PayloadParser`; what it refuses is counted by reason.

Delivery: QoS 1 messages are acknowledged by the client library on receipt, before the
engine applies them; between the two they sit in the daemon's in-memory queue. A daemon
killed in that window loses them (a restart does not: the broker redelivers anything not
yet acknowledged, and a publisher that retains the latest position per topic makes even a
fresh session whole).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Final

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.base import EventSink
from connectors.mqtt.parser import PayloadParser, topic_filters
from monitor.model.backoff import Backoff
from monitor.model.health import ConnectorStatus
from monitor.model.settings import ConfigError, read_secret_file

if TYPE_CHECKING:  # annotations only: config imports this module to build the feed
    from connectors.mqtt.config import MqttConnector

__all__ = ["MqttFeed"]

log = logging.getLogger(__name__)

#: A session that stayed up this long resets the backoff to its first step.
_STABLE_S: Final = 10.0


class MqttFeed:
    """A connector on the desk's broker (see :class:`MqttConnector` for the config)."""

    def __init__(self, cfg: MqttConnector, *, backoff: Backoff | None = None) -> None:
        self._cfg = cfg
        self._status = ConnectorStatus(cfg.name, "mqtt")
        self._parser = PayloadParser(cfg.topic_prefix)
        self._backoff = backoff or Backoff(initial=0.5, cap=cfg.max_backoff.seconds)
        self._password = (
            read_secret_file(cfg.password_file, f"connectors.{cfg.name}.password_file")
            if cfg.password_file is not None
            else cfg.password
        )
        self._tls = _tls_context(cfg) if cfg.tls else None

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    async def run(self, sink: EventSink) -> None:
        """Hold a session until cancelled; reconnect with backoff when it drops."""
        st, cfg = self._status, self._cfg
        delays = self._backoff.delays()
        first = True
        while True:
            if not first:
                st.reconnects += 1
            first = False
            up_since: float | None = None
            try:
                async with self._client() as client:
                    filters: list[tuple[str, int]] = [
                        (f, cfg.qos) for f in topic_filters(cfg.topic_prefix)
                    ]
                    await client.subscribe(filters)
                    st.connected, st.last_error = True, None
                    up_since = time.monotonic()
                    log.info(
                        "mqtt connected",
                        extra={"connector": cfg.name, "broker": f"{cfg.host}:{cfg.port}"},
                    )
                    async for message in client.messages:
                        await self._handle(message, sink)
            except aiomqtt.MqttError as exc:
                st.last_error = _describe(exc)
                log.warning("mqtt session ended: %s", st.last_error, extra={"connector": cfg.name})
            finally:
                st.connected = False
            if up_since is not None and time.monotonic() - up_since >= _STABLE_S:
                delays = self._backoff.delays()
            await asyncio.sleep(next(delays))

    def _client(self) -> aiomqtt.Client:
        cfg = self._cfg
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = max(1, int(cfg.session_expiry) // 1000)
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=cfg.identifier,
            username=cfg.username,
            password=self._password,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=props,
            keepalive=max(1, int(cfg.keepalive) // 1000),
            tls_context=self._tls,
            timeout=10.0,
        )

    async def _handle(self, message: aiomqtt.Message, sink: EventSink) -> None:
        st = self._status
        st.messages += 1
        st.last_message_s = time.time()
        payload = message.payload
        if isinstance(payload, bytes | bytearray):
            raw = bytes(payload)
        elif payload is None:
            raw = b""
        else:
            raw = str(payload).encode()
        events, rejections = self._parser.parse(message.topic.value, raw)
        for rej in rejections:
            sink.reject(st.name, rej)
        for event in events:
            await sink.put(event, st.name)


def _tls_context(cfg: MqttConnector) -> ssl.SSLContext:
    key = f"connectors.{cfg.name}"
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file is not None:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.tls", f"cannot load the TLS files: {exc}") from None
    return ctx


def _describe(exc: aiomqtt.MqttError) -> str:
    """A short reason for status and logs (the library's messages carry no credentials)."""
    text = str(exc) or type(exc).__name__
    return text[:200]
