"""The engine side of a cluster: a connector that reads JetStream instead of a venue.

It implements the connector protocol, so the engine is the same as in local mode:

- **market data**: one ordered consumer on ``<p>.md.>`` from the last value per subject
  (each instrument's definition and latest price), then every new message;
- **accounts**: only the shards this daemon holds (static, or leases: ``leases``). Each
  time the set changes, the accounts of shards it lost are dropped from the engine
  (``drop_accounts``: positions and venue margin leave the book; their alerts are
  forgotten without a transition, since another daemon now evaluates them), then an
  ordered consumer on ``<p>.acct.>`` delivers the last value per subject: every held
  account's current positions and equity. They are handed to the engine in one batch
  once the consumer has caught up (``num_pending == 0``), so an evaluation never sees a
  half-rebuilt account; after that, new messages flow one by one. Accounts of other
  shards are skipped by their subject, without decoding.

Positions are absolute snapshots, so re-reading the last values of an account already
held changes nothing: a rebuild is idempotent and loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Sequence
from typing import Final, Protocol

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.kv import KeyValue

from connectors.base import EventSink
from connectors.nats.config import ClusterConfig
from connectors.nats.jetstream import close, connect, declare_streams, replicas_for
from connectors.nats.leases import LeaseKeeper
from connectors.nats.subjects import (
    account_filter,
    account_of_subject,
    kv_key,
    market_filter,
    shard_of,
)
from monitor.model.episode import Episode
from monitor.model.events import Event, EventDecoder, Rejected
from monitor.model.health import ConnectorStatus

__all__ = ["ClusterSource", "EngineLink"]

log = logging.getLogger(__name__)

#: How often the alert episodes of held accounts whose alerts moved are published.
_EPISODES_EVERY_S: Final = 0.25
_EPISODES: Final = msgspec.json.Decoder(list[Episode])


class EngineLink(Protocol):
    """What the source asks of the daemon that runs the engine (``monitor.daemon``)."""

    async def drop_accounts(self, accounts: Collection[str]) -> None:
        """Remove accounts from the engine; returns once applied."""
        ...

    def adopt_episodes(self, episodes: Sequence[Episode]) -> asyncio.Future[None]:
        """Continue alert episodes, after the events already queued and before the next
        evaluation (registered at the call, without yielding)."""
        ...

    def alert_episodes(self, account: str) -> list[Episode]: ...

    def take_alerted_accounts(self) -> set[str]: ...


class ClusterSource:
    """All market data and this daemon's shards of accounts, from JetStream."""

    def __init__(self, cfg: ClusterConfig, engine: EngineLink) -> None:
        self._cfg = cfg
        self._engine = engine
        self._status = ConnectorStatus("cluster", "nats")
        self._decoder = EventDecoder()
        self.member = cfg.member_name
        self.owned: frozenset[int] = (
            frozenset(cfg.shards) if cfg.assignment == "static" else frozenset()
        )
        self._changed = asyncio.Event()
        self._held: dict[str, int] = {}  # account -> its shard, as delivered to the engine
        self.leases: LeaseKeeper | None = None
        self._alerts_kv: KeyValue | None = None

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    # -- read by the cluster metrics (monitor.serve.cluster.ShardView) ------------------

    @property
    def shard_count(self) -> int:
        return self._cfg.shard_count

    @property
    def members(self) -> int:
        return self.leases.members if self.leases is not None else 0

    @property
    def accounts(self) -> int:
        return len(self._held)

    @property
    def lease_errors(self) -> int:
        return self.leases.failures if self.leases is not None else 0

    async def run(self, sink: EventSink) -> None:
        cfg = self._cfg
        nc = await connect(cfg, f"riskmon-engine-{self.member}", self._status)
        try:
            js = nc.jetstream(timeout=cfg.publish_timeout.seconds)
            replicas = replicas_for(cfg, nc)
            await declare_streams(js, cfg, replicas)
            self._status.connected, self._status.last_error = True, None
            log.info(
                "cluster source connected",
                extra={"member": self.member, "assignment": cfg.assignment},
            )
            if cfg.assignment == "lease":
                # A restart after a failure holds no lease yet: what the engine still has
                # from the previous run is dropped until the leases say otherwise.
                self.owned = frozenset()
            self._changed.set()
            self._alerts_kv = await self._alert_bucket(js, replicas)
            if cfg.assignment == "lease":
                self.leases = LeaseKeeper(
                    cfg, self.member, replicas, self._on_leases, asyncio.get_running_loop()
                )
                self.leases.start()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._publish_episodes(), name="riskmon.cluster.episodes")
                tg.create_task(self._market(js, sink), name="riskmon.cluster.market")
                tg.create_task(self._accounts(js, sink), name="riskmon.cluster.accounts")
                if self.leases is not None:
                    tg.create_task(self._heartbeat(self.leases), name="riskmon.cluster.heartbeat")
        finally:
            self._status.connected = False
            if self.leases is not None:
                # Blocks this loop for at most 3 s while the keeper gives the leases back
                # (no await: a stop re-cancels, and this must not be cut short).
                self.leases.stop(timeout_s=3.0)
                self.leases = None
            await close(nc)

    async def _alert_bucket(self, js: JetStreamContext, replicas: int) -> KeyValue:
        try:
            return await js.key_value(self._cfg.alert_bucket)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                bucket=self._cfg.alert_bucket, history=1, replicas=replicas
            )

    async def _publish_episodes(self) -> None:
        """Keep each held account's live alert episodes in the alert bucket, so whoever
        takes the account over continues them (same keys, nothing delivered twice)."""
        kv = self._alerts_kv
        assert kv is not None
        retry: set[str] = set()
        while True:
            await asyncio.sleep(_EPISODES_EVERY_S)
            accounts = self._engine.take_alerted_accounts() | retry
            retry = set()
            for account in sorted(accounts):
                if account not in self._held:
                    continue  # not ours (any more): the owner writes it
                episodes = self._engine.alert_episodes(account)
                try:
                    if episodes:
                        await kv.put(kv_key(account), msgspec.json.encode(episodes))
                    else:
                        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                            await kv.purge(kv_key(account))
                except (nats.errors.Error, TimeoutError):
                    retry.add(account)

    async def _episodes_of(self, accounts: Collection[str]) -> list[Episode]:
        """The episodes the previous owners left for ``accounts``."""
        kv = self._alerts_kv
        if kv is None or not accounts:
            return []
        wanted = {kv_key(a) for a in accounts}
        try:
            keys = [k for k in await kv.keys() if k in wanted]
        except nats.js.errors.NoKeysError:
            return []
        out: list[Episode] = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                try:
                    out.extend(_EPISODES.decode(entry.value))
                except msgspec.DecodeError:
                    log.warning("unreadable alert episodes in the bucket", extra={"key": key})
        return out

    def _on_leases(
        self, owned: frozenset[int], acquired: frozenset[int], lost: frozenset[int], members: int
    ) -> None:
        """On this loop, from the lease keeper's thread."""
        self.owned = owned
        self._changed.set()
        log.info(
            "shards changed",
            extra={
                "member": self.member,
                "acquired": sorted(acquired),
                "lost": sorted(lost),
                "owned": sorted(owned),
                "members": members,
            },
        )

    @staticmethod
    async def _heartbeat(keeper: LeaseKeeper) -> None:
        while True:
            keeper.heartbeat()
            await asyncio.sleep(1.0)

    async def _market(self, js: JetStreamContext, sink: EventSink) -> None:
        sub = await js.subscribe(
            market_filter(self._cfg.subject_prefix),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        try:
            async for msg in sub.messages:
                event = self._decode(msg)
                if event is not None:
                    await sink.put(event, self._status.name)
            raise ConnectionError("the market data subscription ended")
        finally:
            await _unsubscribe(sub)

    async def _accounts(self, js: JetStreamContext, sink: EventSink) -> None:
        """On every change of shards: drop what was lost, then (re)read what is held."""
        cfg = self._cfg
        while True:
            await self._changed.wait()
            self._changed.clear()
            owned = self.owned
            gone = [a for a, s in self._held.items() if s not in owned]
            if gone:
                await self._engine.drop_accounts(gone)
                for account in gone:
                    del self._held[account]
                log.info("accounts dropped", extra={"accounts": len(gone)})
            if not owned:
                continue
            known = set(self._held)
            info = await js.stream_info(cfg.account_stream)
            sub = await js.subscribe(
                account_filter(cfg.subject_prefix),
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            )
            try:
                async with asyncio.TaskGroup() as tg:
                    reader = tg.create_task(
                        self._read_accounts(
                            sub, sink, owned, known, rebuilding=info.state.messages > 0
                        ),
                        name="riskmon.cluster.accounts.read",
                    )
                    await self._changed.wait()  # stays set: the next turn handles it
                    reader.cancel()
            finally:
                await _unsubscribe(sub)

    async def _read_accounts(
        self,
        sub: JetStreamContext.PushSubscription,
        sink: EventSink,
        owned: frozenset[int],
        known: set[str],
        *,
        rebuilding: bool,
    ) -> None:
        """Deliver held accounts' events until cancelled (the shards changed).

        ``sub.messages``, not ``next_msg(timeout)``: the latter wraps ``asyncio.wait_for``,
        which on Python 3.11 can swallow a cancellation when a message arrives with it.
        """
        prefix, n = self._cfg.subject_prefix, self._cfg.shard_count
        batch: list[Event] = []
        async for msg in sub.messages:
            account = account_of_subject(msg.subject, prefix)
            if account is not None and shard_of(account, n) in owned:
                event = self._decode(msg)
                if event is not None:
                    self._held[account] = shard_of(account, n)
                    if rebuilding:
                        batch.append(event)
                    else:
                        await sink.put(event, self._status.name)
            if rebuilding and msg.metadata.num_pending == 0:
                rebuilding = False
                taken = set(self._held) - known
                episodes = await self._episodes_of(taken)
                # One batch, put without yielding in between (the queue only waits when
                # full), then the adopted alert episodes: the engine applies both before
                # its next evaluation, so it never evaluates a half-rebuilt account nor
                # starts an alert the previous owner already delivered.
                for event in batch:
                    await sink.put(event, self._status.name)
                await self._engine.adopt_episodes(episodes)
                log.info(
                    "accounts rebuilt from the stream",
                    extra={
                        "events": len(batch),
                        "accounts": len(self._held),
                        "taken_over": len(taken),
                        "alert_episodes": len(episodes),
                    },
                )
                batch.clear()
        raise ConnectionError("the account subscription ended")

    def _decode(self, msg: Msg) -> Event | None:
        st = self._status
        st.messages += 1
        try:
            return self._decoder.decode(msg.data)
        except Rejected as rej:
            # The ingest validated it; a refusal here means another producer's bad data.
            log.warning("refused a stream message: %s", rej.detail, extra={"subject": msg.subject})
            return None


async def _unsubscribe(sub: JetStreamContext.PushSubscription) -> None:
    # The connection is gone: so is the ordered consumer.
    with contextlib.suppress(nats.errors.Error, TimeoutError):
        await sub.unsubscribe()
