"""Shard leases in a JetStream key-value bucket: no consensus of our own.

The bucket's ``max_age`` is the lease TTL: a key not rewritten within it disappears.
Keys: ``member.<name>`` (presence, rewritten every step) and ``shard.<n>`` (the holder's
name). Every step (``ttl / 3``) a member:

1. rewrites its presence key and renews each lease it holds with ``update(..., last=
   revision)``: a compare-and-set on the revision it wrote, so a lease that expired and
   was taken by another member fails to renew and is lost, never shared;
2. counts the members present and aims at ``ceil(shard_count / members)`` leases: it
   releases its highest shards beyond that (``delete(..., last=revision)``), or takes free
   ones with ``create`` (which succeeds only when the key does not exist).

A member that cannot reach JetStream (a node failing over, a partition) keeps the leases
it holds and goes on evaluating: it gives a shard up only on proof that it lost it (a
failed compare-and-set) or when asked to release it. The trade-off is chosen for a risk
monitor: a stretch where no daemon evaluates an account is worse than one where two do
(Alertmanager merges their identical alerts; a firm total may count the account twice
until the compare-and-set fails, which ``riskmon_cluster_shards`` shows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from connectors.nats.config import ClusterConfig
from connectors.nats.jetstream import close, connect
from monitor.model.backoff import Backoff

log = logging.getLogger(__name__)

__all__ = ["LeaseChange", "LeaseKeeper", "ShardLeases", "lease_bucket", "lease_key"]


def lease_key(shard: int) -> str:
    return f"shard.{shard}"


LeaseChange = tuple[frozenset[int], frozenset[int]]
"""(shards acquired, shards lost) by one step."""


class ShardLeases:
    """This member's leases on ``shard_count`` shards in ``kv``."""

    def __init__(
        self,
        kv: KeyValue,
        member: str,
        shard_count: int,
        ttl_s: float,
        *,
        js: JetStreamContext,
        bucket: str,
    ) -> None:
        self._kv = kv
        self._js = js
        self._bucket = bucket
        self.member = member
        self._value = member.encode()
        self.shard_count = shard_count
        self.ttl_s = ttl_s
        self.owned: dict[int, int] = {}  # shard -> revision we wrote
        self.failures = 0  # steps that could not reach JetStream
        self.members = 0

    @property
    def interval_s(self) -> float:
        return self.ttl_s / 3.0

    def rebind(self, kv: KeyValue, js: JetStreamContext) -> None:
        """Go on in ``kv`` (the same bucket over a new connection), holding what is held."""
        self._kv, self._js = kv, js

    async def _count_members(self) -> int:
        """Members present: ``member.*`` keys whose last value is not a delete (a key not
        rewritten within the TTL is gone from the stream). One stream-info request with a
        subject filter and a get per member: no consumer is created (``KeyValue.keys()``
        creates and deletes one at every call, which at every step of every member kept
        the cluster's metadata leader busy)."""
        prefix = f"$KV.{self._bucket}."
        info = await self._js.stream_info(f"KV_{self._bucket}", subjects_filter=f"{prefix}member.>")
        present = 0
        for subject in info.state.subjects or {}:
            try:
                await self._kv.get(subject.removeprefix(prefix))
            except (nats.js.errors.KeyDeletedError, nats.js.errors.KeyNotFoundError):
                continue  # given back (a clean stop) or gone meanwhile
            present += 1
        return max(1, present)

    async def step(self) -> LeaseChange:
        """Renew, rebalance and acquire; returns what changed."""
        kv, owned = self._kv, self.owned
        acquired: set[int] = set()
        lost: set[int] = set()
        try:
            await kv.put(f"member.{self.member}", self._value)
            for shard, rev in sorted(owned.items()):
                try:
                    owned[shard] = await kv.update(lease_key(shard), self._value, last=rev)
                except nats.js.errors.KeyWrongLastSequenceError:
                    del owned[shard]
                    lost.add(shard)
            self.members = await self._count_members()
            target = math.ceil(self.shard_count / max(1, self.members))
            while len(owned) > target:
                shard = max(owned)
                rev = owned.pop(shard)
                lost.add(shard)
                # Already expired or taken: released either way.
                with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
                    await kv.delete(lease_key(shard), last=rev)
            for shard in range(self.shard_count):
                if len(owned) >= target:
                    break
                if shard in owned:
                    continue
                try:
                    owned[shard] = await kv.create(lease_key(shard), self._value)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # held by another member
                acquired.add(shard)
        except (nats.errors.Error, TimeoutError):
            self.failures += 1  # keep what we hold; the next step tries again
        return frozenset(acquired - lost), frozenset(lost - acquired)

    async def release_all(self) -> None:
        """Give every lease back (a clean stop: others take over without waiting)."""
        for shard, rev in sorted(self.owned.items()):
            # Unreachable: it expires after the TTL anyway.
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                await self._kv.delete(lease_key(shard), last=rev)
        self.owned.clear()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._kv.delete(f"member.{self.member}")


async def lease_bucket(js: JetStreamContext, cfg: ClusterConfig, replicas: int) -> KeyValue:
    """The lease bucket, created with ``max_age = lease_ttl`` when missing."""
    try:
        kv = await js.key_value(cfg.lease_bucket)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(
            bucket=cfg.lease_bucket, ttl=cfg.lease_ttl.seconds, history=1, replicas=replicas
        )
    status = await kv.status()
    if status.ttl is not None and abs(status.ttl - cfg.lease_ttl.seconds) > 0.001:
        log.warning(
            "lease bucket has another TTL than lease_ttl; the bucket's applies",
            extra={"bucket": cfg.lease_bucket, "ttl_s": status.ttl},
        )
    return kv


#: Called on the engine's loop: (shards held now, acquired, lost, members seen).
OnChange = Callable[[frozenset[int], frozenset[int], frozenset[int], int], None]


class LeaseKeeper:
    """Holds this member's leases from a thread of its own (own event loop, own NATS
    connection).

    An engine revaluing a large book blocks its event loop for a second at a time, and a
    lease step is a dozen round trips: on that loop, renewals would wait behind
    evaluations and leases lapse under load. Here they do not. The engine's loop calls
    :meth:`heartbeat`; if it has not for ``cfg.max_stall`` (the engine is wedged), the
    keeper stops renewing so that another daemon takes the shards after the TTL.
    Changes are handed to ``on_change`` on the engine's loop.
    """

    def __init__(
        self,
        cfg: ClusterConfig,
        member: str,
        replicas: int,
        on_change: OnChange,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._cfg = cfg
        self.member = member
        self._replicas = replicas
        self._on_change = on_change
        self._loop = loop
        self._beat = time.monotonic()
        self.leases: ShardLeases | None = None
        self.restarts = 0  # times the keeper failed and was started again
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"riskmon.cluster.leases[{member}]", daemon=True
        )

    @property
    def members(self) -> int:
        return self.leases.members if self.leases is not None else 0

    @property
    def failures(self) -> int:
        return self.leases.failures if self.leases is not None else 0

    def start(self) -> None:
        self._thread.start()

    def heartbeat(self) -> None:
        """The engine's loop is alive (called on it every second or so)."""
        self._beat = time.monotonic()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Give the leases back and end the thread (blocking: call it off the loop)."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        """Keep :meth:`_main` running until stopped: a keeper that failed (JetStream too
        slow to answer at start, a bug) starts again after a capped, jittered delay. The
        leases it held are kept and renewed by compare-and-set when it is back, so they
        are lost only on proof, as in a step that cannot reach JetStream."""
        delays = Backoff(initial=0.5, cap=max(self._cfg.lease_ttl.seconds, 1.0)).delays()
        while not self._stop.is_set():
            try:
                asyncio.run(self._main())
            except Exception:
                self.restarts += 1
                delay = next(delays)
                log.exception(
                    "the lease keeper failed; starting it again in %.1fs (a lease not "
                    "renewed within the TTL lapses)",
                    delay,
                    extra={"member": self.member, "restarts": self.restarts},
                )
                self._stop.wait(delay)
            else:
                return

    async def _main(self) -> None:
        cfg = self._cfg
        nc = await connect(cfg, f"riskmon-leases-{self.member}")
        try:
            js = nc.jetstream(timeout=cfg.publish_timeout.seconds)
            kv = await lease_bucket(js, cfg, self._replicas)
            if self.leases is None:
                self.leases = ShardLeases(
                    kv,
                    self.member,
                    cfg.shard_count,
                    cfg.lease_ttl.seconds,
                    js=js,
                    bucket=cfg.lease_bucket,
                )
            else:  # started again: renew what was held (compare-and-set on its revisions)
                self.leases.rebind(kv, js)
            leases = self.leases
            while not self._stop.is_set():
                stalled = time.monotonic() - self._beat
                if stalled > cfg.max_stall.seconds:
                    acquired, lost = frozenset[int](), frozenset(leases.owned)
                    if lost:
                        log.error(
                            "the engine has not run for %.0fs: letting its leases lapse",
                            stalled,
                            extra={"member": self.member},
                        )
                    leases.owned.clear()
                else:
                    acquired, lost = await leases.step()
                if acquired or lost:
                    self._loop.call_soon_threadsafe(
                        self._on_change, frozenset(leases.owned), acquired, lost, leases.members
                    )
                await asyncio.to_thread(self._stop.wait, leases.interval_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await leases.release_all()
        finally:
            await close(nc)
