"""JetStream plumbing: the connection, the two streams, and the publishing sink of ``ingest``.

Streams (limits retention, file storage, ``replicas`` copies):

- ``market_stream`` on ``<p>.md.>``: ``max_age = market_max_age`` (hours: prices are
  superseded every tick; the last value per subject is what a starting engine reads);
- ``account_stream`` on ``<p>.acct.>``: ``max_age = account_max_age`` (days),
  ``account_history`` values per subject, a duplicate window for ``Nats-Msg-Id``.

Declared idempotently: created when missing, updated to the configured limits when they
differ (replicas included: JetStream scales a stream up or down in place).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from connectors.nats.config import ClusterConfig
from connectors.nats.subjects import (
    account_filter,
    is_account_event,
    market_filter,
    message_id,
    subject_of,
)
from monitor.model.backoff import Backoff
from monitor.model.events import Event, Rejected, encode_event
from monitor.model.health import ConnectorStatus, SinkLag
from monitor.model.settings import read_secret_file

__all__ = [
    "JetStreamSink",
    "PublishStats",
    "close",
    "connect",
    "declare_streams",
    "ensure_streams",
    "replicas_for",
    "stream_configs",
]

log = logging.getLogger(__name__)

#: Headers of a message whose id JetStream deduplicates.
MSG_ID: Final = "Nats-Msg-Id"


async def connect(cfg: ClusterConfig, name: str, status: ConnectorStatus | None = None) -> Client:
    """A client that fails over between ``cfg.servers`` and reconnects forever.

    ``status.connected`` (when given) follows the connection; each reconnect is counted.
    Until a first server answers, it keeps trying with capped backoff (a role may start
    before NATS does).

    The password (from ``password`` or the mode-600 ``password_file``) goes to the client
    only; nothing here logs it, and the servers' URLs are logged without credentials.
    """
    password = (
        read_secret_file(cfg.password_file, "cluster.password_file")
        if cfg.password_file is not None
        else cfg.password
    )

    async def on_disconnect() -> None:
        if status is not None:
            status.connected = False
        log.warning("nats disconnected", extra={"client": name})

    async def on_reconnect() -> None:
        if status is not None:
            status.connected = True
            status.reconnects += 1
        log.info("nats reconnected", extra={"client": name})

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", type(exc).__name__, extra={"client": name})

    delays = Backoff(initial=0.5, cap=10.0).delays()
    while True:
        try:
            nc = await nats.connect(
                list(cfg.servers),
                name=name,
                user=cfg.user,
                password=password,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            # The first connection is not retried by the client itself: no server up yet.
            delay = next(delays)
            log.warning(
                "cannot reach NATS (%s); trying again in %.1fs",
                type(exc).__name__,
                delay,
                extra={"client": name},
            )
            await asyncio.sleep(delay)
            continue
        if status is not None:
            status.connected = True
        return nc


async def close(nc: Client, timeout_s: float = 5.0) -> None:
    """Close ``nc``, giving up after ``timeout_s``: a stop must not wait on a connection
    that is failing over between servers."""
    try:
        async with asyncio.timeout(timeout_s):
            await nc.close()
    except TimeoutError:
        log.warning("the NATS connection did not close within %.0fs; leaving it", timeout_s)


def replicas_for(cfg: ClusterConfig, nc: Client) -> int:
    """``cfg.replicas``, else 3 when the server belongs to a cluster and 1 otherwise."""
    if cfg.replicas is not None:
        return cfg.replicas
    return 3 if nc._server_info.get("cluster") else 1


def stream_configs(cfg: ClusterConfig, replicas: int) -> list[StreamConfig]:
    """The market and account streams as ``cfg`` describes them."""
    p = cfg.subject_prefix
    return [
        StreamConfig(
            name=cfg.market_stream,
            subjects=[market_filter(p)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=cfg.market_max_age.seconds,
            num_replicas=replicas,
            duplicate_window=min(cfg.duplicate_window.seconds, cfg.market_max_age.seconds),
        ),
        StreamConfig(
            name=cfg.account_stream,
            subjects=[account_filter(p)],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=cfg.account_max_age.seconds,
            max_msgs_per_subject=cfg.account_history,
            num_replicas=replicas,
            duplicate_window=min(cfg.duplicate_window.seconds, cfg.account_max_age.seconds),
        ),
    ]


async def declare_streams(
    js: JetStreamContext, cfg: ClusterConfig, replicas: int, *, backoff: Backoff | None = None
) -> None:
    """:func:`ensure_streams`, retried with capped backoff while JetStream does not answer
    (a node restarting, a leader election): a role starting then waits instead of failing.
    A refusal (a bad request: conflicting stream settings) is raised."""
    delays = (backoff or Backoff(initial=0.5, cap=10.0)).delays()
    while True:
        try:
            await ensure_streams(js, cfg, replicas)
            return
        except nats.js.errors.BadRequestError:
            raise
        except (nats.errors.Error, TimeoutError) as exc:
            delay = next(delays)
            log.warning(
                "JetStream not answering (%s); declaring the streams again in %.1fs",
                type(exc).__name__,
                delay,
            )
            await asyncio.sleep(delay)


async def ensure_streams(js: JetStreamContext, cfg: ClusterConfig, replicas: int) -> None:
    """Create the streams, or bring existing ones to the configured limits."""
    for sc in stream_configs(cfg, replicas):
        assert sc.name is not None
        try:
            info = await js.stream_info(sc.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(sc)
                log.info("stream created", extra={"stream": sc.name, "replicas": replicas})
                continue
            except nats.js.errors.BadRequestError:
                # Another daemon created it between the two calls: update it like any other.
                info = await js.stream_info(sc.name)
        have = info.config
        if (
            have.subjects != sc.subjects
            or have.max_age != sc.max_age
            or have.max_msgs_per_subject != sc.max_msgs_per_subject
            or have.num_replicas != sc.num_replicas
            or have.duplicate_window != sc.duplicate_window
        ):
            await js.update_stream(sc)
            log.info("stream updated", extra={"stream": sc.name, "replicas": replicas})


@dataclass(slots=True)
class PublishStats:
    """What the ingest sink did: by event type, and retries of account events."""

    published: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    retries: int = 0
    dropped_prices: int = 0
    rejected: int = 0
    last_publish_s: float | None = None


class JetStreamSink:
    """An ``EventSink`` that publishes each event to JetStream and waits for its ack.

    Events are published one at a time, in the order the connectors deliver them, so a
    subject's messages are stored in order. A position or account event is retried
    (capped jittered backoff) until JetStream acknowledges it, with a ``Nats-Msg-Id`` so a
    retry after a lost acknowledgement is stored once: it is never dropped, and a
    connector that delivers it waits (backpressure). A price that cannot be published is
    dropped and counted: the next tick supersedes it.
    """

    def __init__(
        self,
        js: JetStreamContext,
        cfg: ClusterConfig,
        *,
        stats: PublishStats | None = None,
        statuses: Mapping[str, ConnectorStatus] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """``statuses``: each connector's status by name, marked ``delivered`` at its first
        event (readiness)."""
        self._js = js
        self._prefix = cfg.subject_prefix
        self._timeout = cfg.publish_timeout.seconds
        self._backoff = backoff or Backoff(initial=0.1, cap=5.0)
        self.stats = stats if stats is not None else PublishStats()
        self._statuses = statuses or {}
        self._lag = SinkLag(self._statuses.values())
        self._lock = asyncio.Lock()  # one publish at a time: per-subject order

    async def put(self, event: Event, source: str) -> None:
        status = self._statuses.get(source)
        if status is not None:
            status.delivered = True
        self._lag.note(event, source)
        subject = subject_of(event, self._prefix)
        payload = encode_event(event)
        durable = is_account_event(event)
        headers = {MSG_ID: message_id(subject, payload)} if durable else None
        kind = str(type(event).__struct_config__.tag)  # price, position, account, instrument
        delays = self._backoff.delays()
        async with self._lock:
            while True:
                try:
                    ack = await self._js.publish(
                        subject, payload, timeout=self._timeout, headers=headers
                    )
                except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                    if not durable:
                        self.stats.dropped_prices += 1
                        return
                    self.stats.retries += 1
                    log.warning(
                        "publish failed, retrying: %s",
                        type(exc).__name__,
                        extra={"source": source, "subject": subject},
                    )
                    await asyncio.sleep(next(delays))
                    continue
                if ack.duplicate:
                    self.stats.duplicates += 1
                self.stats.published[kind] = self.stats.published.get(kind, 0) + 1
                self.stats.last_publish_s = time.time()
                return

    def reject(self, source: str, rejected: Rejected) -> None:
        self.stats.rejected += 1
        log.warning(
            "event rejected: %s",
            rejected.detail,
            extra={"source": source, "reason": rejected.reason.value},
        )
