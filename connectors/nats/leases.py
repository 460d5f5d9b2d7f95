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

import contextlib
import math

import nats.errors
import nats.js.errors
from nats.js.kv import KeyValue

__all__ = ["LeaseChange", "ShardLeases", "lease_key"]


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
    ) -> None:
        self._kv = kv
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
            try:
                # Filtered here, not by the server: subject filters need nats-server 2.10.
                keys = await kv.keys()
            except nats.js.errors.NoKeysError:
                keys = []
            self.members = max(1, sum(k.startswith("member.") for k in keys))
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
