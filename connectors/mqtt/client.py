"""The MQTT transport: a persistent MQTT 5 session (and, at ``price_qos`` 0, a clean
MQTT 3.1.1 connection for prices), each reconnecting with capped backoff.

A quiet feed is normal (a desk may publish nothing for hours); the MQTT keepalive proves
the socket alive, so there is no data watchdog. Every message is parsed by
:class:`connectors.mqtt.parser.PayloadParser`; what it refuses is counted by reason.

Delivery: positions, accounts and instruments are subscribed at ``qos`` (1): acknowledged
by the client library on receipt, before the engine applies them; between the two they sit
in the daemon's in-memory queue. A daemon killed in that window loses them (a restart does
not: the broker redelivers anything not yet acknowledged, and a publisher that retains the
latest position per topic makes even a fresh session whole). Prices are subscribed at
``price_qos`` (0 by default): a tick is superseded by the next one, so the broker neither
waits for an acknowledgement of each nor queues them for a stopped daemon, and at a high
rate the client does no write per message (see the README's MQTT section for the figures).
At QoS 0 nothing of the prices' subscription needs a persistent session, so they come over
their own MQTT 3.1.1 connection (client id ``<client_id>-prices``), which paho decodes
for about two thirds of the CPU of an MQTT 5 message. The connector is up when both
connections are. MQTT orders messages only within one QoS, so a price and a position were
never ordered against each other; the engine needs no such order.

Overload: at QoS 0 a tick the daemon has not read waits in three buffers, each in
arrival order: the broker's queue for this client (Mosquitto drops new ticks once
``max_queued_messages`` packets wait there; ``$SYS/broker/publish/messages/dropped``
counts them), the broker's socket send buffer, and this connection's receive buffer. The
last is the daemon's own: the kernel autotunes it to megabytes, which at the rate the
client can decode (a few thousand messages a second on one core) is seconds of ticks, so
the prices' connection sets it to ``price_rcvbuf`` (SO_RCVBUF; Linux doubles it for its
bookkeeping). The broker's send buffer is the broker host's kernel's (on loopback, 4 MiB:
about 50,000 ticks), out of a client's reach; so the connector also measures every tick's
receipt time minus its ``ts`` (``status.price_lag``: the publisher's clock against this
host's). Ticks later than ``max_price_age`` are counted and logged, never dropped: a late
tick is still the newest price the daemon has (the engine ages prices by ``ts``), and a
publisher's clock that runs behind would otherwise lose every tick. With
``price_catch_up``, once a live tick arrives more than ``max_price_age`` later than the
least lag of its instrument on this connection (a clock offset cancels out, one per
upstream source too), the prices' connection is reopened at once: whatever waited in the
three buffers is discarded, and the next ticks are live.

Throughput: paho decodes one packet per readable event; aiomqtt puts each message on its
queue. The feed waits on aiomqtt's iterator for the first message only (the iterator also
ends the session when the broker goes away), then takes every message already queued in
one go (:class:`_Inbox`), and lets the next ones gather for ``_GATHER_S`` before it looks
again, so a burst costs one wake-up of this task (and of the engine) per few milliseconds,
not one per message.
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, cast

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from connectors.base import EventSink
from connectors.mqtt.parser import PayloadParser, price_filter, subscriptions
from monitor.model.backoff import Backoff
from monitor.model.events import PriceEvent
from monitor.model.health import ConnectorStatus, LagHistogram
from monitor.model.settings import ConfigError, read_secret_file

if TYPE_CHECKING:  # annotations only: config imports this module to build the feed
    from connectors.mqtt.config import MqttConnector

__all__ = ["MqttFeed"]

log = logging.getLogger(__name__)

#: A session that stayed up this long resets the backoff to its first step.
_STABLE_S: Final = 10.0
#: After handing over what was queued, wait this long before taking the next messages: at
#: most this much latency added (against an evaluation every ``risk.eval_interval``), and
#: a feed of 20,000 messages/s is handled 100 at a time.
_GATHER_S: Final = 0.005
#: Late ticks and catch-ups are logged at most this often (the counters count every one).
_LOG_EVERY_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class _Session:
    """One connection of the feed to the broker."""

    label: str  # "events" or "prices": in task names and logs
    identifier: str  # the MQTT client id
    persistent: bool  # MQTT 5, clean start off, session expiry; else MQTT 3.1.1, clean
    filters: list[tuple[str, int]]  # topic filter, QoS
    rcvbuf: int = 0  # SO_RCVBUF, bytes; 0: the kernel's autotuning


class MqttFeed:
    """A connector on the desk's broker (see :class:`MqttConnector` for the config)."""

    def __init__(self, cfg: MqttConnector, *, backoff: Backoff | None = None) -> None:
        self._cfg = cfg
        self._status = ConnectorStatus(cfg.name, "mqtt", price_lag=LagHistogram())
        self._max_age_s = cfg.max_price_age.seconds or math.inf
        self._catch_up = cfg.price_catch_up and bool(cfg.max_price_age)
        self._logged: dict[str, tuple[float, int]] = {}  # what -> monotonic time, count
        self._parser = PayloadParser(cfg.topic_prefix)
        self._backoff = backoff or Backoff(initial=0.5, cap=cfg.max_backoff.seconds)
        self._password = (
            read_secret_file(cfg.password_file, f"connectors.{cfg.name}.password_file")
            if cfg.password_file is not None
            else cfg.password
        )
        self._tls = _tls_context(cfg) if cfg.tls else None
        self._sessions = _sessions(cfg)
        self._up = dict.fromkeys((s.label for s in self._sessions), False)
        self._inboxes = {s.label: _Inbox() for s in self._sessions}
        self._clients: dict[str, aiomqtt.Client] = {}

    @property
    def backlog(self) -> int:
        """Messages the client has read from the broker that the feed has not parsed yet."""
        return sum(inbox.qsize() for inbox in self._inboxes.values())

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    @property
    def receive_buffers(self) -> dict[str, int]:
        """SO_RCVBUF of each connected session's socket as the kernel reports it (Linux:
        twice what was asked, capped by ``net.core.rmem_max``); for logs and tests."""
        out: dict[str, int] = {}
        for label, client in self._clients.items():
            sock = _socket_of(client)
            if sock is not None:
                out[label] = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return out

    async def run(self, sink: EventSink) -> None:
        """Hold the sessions until cancelled; each reconnects with backoff when it drops."""
        if len(self._sessions) == 1:
            await self._hold(self._sessions[0], sink)
            return
        async with asyncio.TaskGroup() as tg:
            for session in self._sessions:
                tg.create_task(
                    self._hold(session, sink), name=f"mqtt[{self._cfg.name}].{session.label}"
                )

    async def _hold(self, session: _Session, sink: EventSink) -> None:
        st, cfg, label = self._status, self._cfg, session.label
        delays = self._backoff.delays()
        first = True
        while True:
            if not first:
                st.reconnects += 1
            first = False
            up_since: float | None = None
            behind = 0.0  # > 0: left to skip ticks that waited this long (s) in buffers
            self._inboxes[label] = inbox = _Inbox()
            try:
                async with self._client(session, inbox) as client:
                    self._clients[label] = client
                    await client.subscribe(session.filters)
                    self._up[label] = True
                    st.connected = all(self._up.values())
                    if st.connected:
                        st.last_error = None
                    up_since = time.monotonic()
                    log.info(
                        "mqtt connected",
                        extra={
                            "connector": cfg.name,
                            "broker": f"{cfg.host}:{cfg.port}",
                            "session": label,
                            "rcvbuf": self.receive_buffers.get(label),
                        },
                    )
                    # instrument -> the least lag of its live ticks on this connection
                    floors: dict[str, float] | None = (
                        {} if self._catch_up and not session.persistent else None
                    )
                    async for message in client.messages:
                        late = await self._handle(message, inbox.take_all(), sink, floors)
                        if late > self._max_age_s:
                            behind = late
                            break
                        # Let a burst gather: the client goes on reading meanwhile (one
                        # message per loop turn), and the next turn of this loop takes
                        # them all at once instead of waking once per message.
                        await asyncio.sleep(_GATHER_S)
            except aiomqtt.MqttError as exc:
                st.last_error = _describe(exc)
                log.warning(
                    "mqtt session ended: %s",
                    st.last_error,
                    extra={"connector": cfg.name, "session": label},
                )
            finally:
                self._up[label] = st.connected = False
                self._clients.pop(label, None)
            if behind:
                st.price_catch_ups += 1
                if (n := self._due("catch_up", st.price_catch_ups)) is not None:
                    log.warning(
                        "mqtt prices %.1f s behind the feed: reconnecting to skip the ticks "
                        "waiting in the broker's and the socket's buffers (%d times since "
                        "the last report)",
                        behind,
                        n,
                        extra={"connector": cfg.name, "session": label},
                    )
                continue  # at once: the broker is there, the daemon was only slow
            if up_since is not None and time.monotonic() - up_since >= _STABLE_S:
                delays = self._backoff.delays()
            await asyncio.sleep(next(delays))

    def _client(self, session: _Session, inbox: _Inbox) -> aiomqtt.Client:
        cfg = self._cfg
        if session.persistent:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = max(1, int(cfg.session_expiry) // 1000)
            protocol: dict[str, Any] = {
                "protocol": aiomqtt.ProtocolVersion.V5,
                "clean_start": False,
                "properties": props,
            }
        else:
            protocol = {"protocol": aiomqtt.ProtocolVersion.V311, "clean_session": True}
        return aiomqtt.Client(
            cfg.host,
            cfg.port,
            identifier=session.identifier,
            username=cfg.username,
            password=self._password,
            keepalive=max(1, int(cfg.keepalive) // 1000),
            tls_context=self._tls,
            timeout=10.0,
            # aiomqtt sets these once paho has connected: before the window has grown.
            socket_options=(
                [(socket.SOL_SOCKET, socket.SO_RCVBUF, session.rcvbuf)] if session.rcvbuf else []
            ),
            # aiomqtt builds its incoming queue by calling queue_type(maxsize=...) once;
            # handing it the inbox lets the feed drain it in one go.
            queue_type=cast("type[asyncio.Queue[aiomqtt.Message]]", inbox.itself),
            **protocol,
        )

    async def _handle(
        self,
        first: aiomqtt.Message,
        more: list[aiomqtt.Message],
        sink: EventSink,
        floors: dict[str, float] | None = None,
    ) -> float:
        """Parse ``first`` and ``more`` (in arrival order) into the sink.

        Returns
        -------
        behind
            With ``floors`` (each instrument's least lag on this connection, updated here):
            how much later than its instrument's floor the latest of the live (not retained)
            price ticks arrived, seconds (receipt minus ``ts``, so a clock offset cancels
            out, also one per upstream source); 0 without ``floors`` or such ticks.
        """
        st, parse, name = self._status, self._parser.parse, self._status.name
        st.messages += 1 + len(more)
        st.last_message_s = now = time.time()
        lag, max_age, late, worst = st.price_lag, self._max_age_s, st.late_prices, 0.0
        assert lag is not None
        behind = 0.0
        for message in (first, *more) if more else (first,):
            payload = message.payload
            if type(payload) is bytes:
                raw = payload
            elif isinstance(payload, bytearray):
                raw = bytes(payload)
            elif payload is None:
                raw = b""
            else:
                raw = str(payload).encode()
            events, rejections = parse(message.topic.value, raw)
            live = not message.retain
            for rej in rejections:
                sink.reject(name, rej)
            for event in events:
                if type(event) is PriceEvent:
                    age = now - event.ts * 0.001
                    lag.observe(age)
                    if age > max_age:
                        st.late_prices += 1
                        worst = max(worst, age)
                    if live and floors is not None:
                        floor = floors.get(event.instrument)
                        if floor is None or age < floor:
                            floors[event.instrument] = age
                        elif age - floor > behind:
                            behind = age - floor
                await sink.put(event, name)
        if st.late_prices != late:
            self._log_late(worst)
        return behind

    def _due(self, what: str, count: int) -> int | None:
        """How many times ``what`` happened since it was last logged (``count`` in all),
        if that was ``_LOG_EVERY_S`` ago or never; else None (not to be logged now)."""
        at, seen = self._logged.get(what, (-math.inf, 0))
        now = time.monotonic()
        if now - at < _LOG_EVERY_S:
            return None
        self._logged[what] = (now, count)
        return count - seen

    def _log_late(self, worst_s: float) -> None:
        """Warn about late ticks, at most every ``_LOG_EVERY_S``."""
        n = self._due("late", self._status.late_prices)
        if n is None:
            return
        log.warning(
            "mqtt prices arrive late: %d ticks more than %s after their ts since the last "
            "report (this batch up to %.1f s): riskmon falls behind the feed, or the "
            "publisher's clock runs behind this host's",
            n,
            self._cfg.max_price_age,
            worst_s,
            extra={"connector": self._cfg.name},
        )


class _Inbox(asyncio.Queue[aiomqtt.Message]):
    """aiomqtt's incoming-message queue (FIFO, unbounded), with :meth:`take_all`."""

    def _init(self, maxsize: int) -> None:
        self._items: deque[aiomqtt.Message] = deque()

    def _put(self, item: aiomqtt.Message) -> None:
        self._items.append(item)

    def _get(self) -> aiomqtt.Message:
        return self._items.popleft()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def take_all(self) -> list[aiomqtt.Message]:
        """Every queued message, oldest first, without waiting (the queue is unbounded, so
        no producer waits for room)."""
        if not self._items:
            return []
        out = list(self._items)
        self._items.clear()
        return out

    def itself(self, maxsize: int = 0) -> _Inbox:
        """The ``queue_type`` aiomqtt calls: this inbox (unbounded, as aiomqtt's default)."""
        return self


def _sessions(cfg: MqttConnector) -> list[_Session]:
    """One persistent MQTT 5 session for everything; at ``price_qos`` 0, prices apart on a
    clean MQTT 3.1.1 connection (nothing of a QoS 0 subscription needs to persist, and
    paho decodes an MQTT 3.1.1 message without the properties object it builds for every
    MQTT 5 message, about a third of the CPU a tick costs)."""
    subs = subscriptions(cfg.topic_prefix, qos=cfg.qos, price_qos=cfg.price_qos)
    if cfg.price_qos != 0:
        return [_Session("events", cfg.identifier, True, subs)]
    prices = [(f, q) for f, q in subs if f == price_filter(cfg.topic_prefix)]
    events = [(f, q) for f, q in subs if f != price_filter(cfg.topic_prefix)]
    return [
        _Session("events", cfg.identifier, True, events),
        _Session("prices", cfg.price_identifier, False, prices, rcvbuf=cfg.price_rcvbuf),
    ]


def _tls_context(cfg: MqttConnector) -> ssl.SSLContext:
    key = f"connectors.{cfg.name}"
    try:
        ctx = ssl.create_default_context(cafile=cfg.ca_file)
        if cfg.cert_file is not None:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{key}.tls", f"cannot load the TLS files: {exc}") from None
    return ctx


def _socket_of(client: aiomqtt.Client) -> socket.socket | None:
    """The TCP socket under an aiomqtt client while it is connected (paho's, through
    aiomqtt's private handle: for diagnostics only, so None when that ever changes)."""
    paho = getattr(client, "_client", None)
    sock = paho.socket() if paho is not None else None
    return sock if isinstance(sock, socket.socket) else None


def _describe(exc: aiomqtt.MqttError) -> str:
    """A short reason for status and logs (the library's messages carry no credentials)."""
    text = str(exc) or type(exc).__name__
    return text[:200]
