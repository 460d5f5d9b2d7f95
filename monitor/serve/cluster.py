"""Cluster-mode metrics: which shards this daemon holds (README "Running a cluster").

Exported only by a daemon with ``[cluster]``, read at scrape time::

    riskmon_cluster_shards            gauge   member   shards this daemon holds now
    riskmon_cluster_shard_count       gauge            shards in the cluster (config)
    riskmon_cluster_members           gauge            members seen in the lease bucket
    riskmon_cluster_accounts          gauge   member   accounts this daemon evaluates
    riskmon_cluster_lease_errors_total counter         lease steps that could not reach
                                                       JetStream (the leases were kept)

``sum(riskmon_cluster_shards)`` equals ``riskmon_cluster_shard_count`` when every shard is
held exactly once; above it, two daemons briefly count the same accounts (firm totals
double-count); below it, some accounts are evaluated by nobody.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["ClusterCollector", "ShardView"]


class ShardView(Protocol):
    """What the cluster source tells about its shards (``connectors.nats.source``)."""

    @property
    def member(self) -> str: ...

    @property
    def owned(self) -> frozenset[int]: ...

    @property
    def shard_count(self) -> int: ...

    @property
    def members(self) -> int: ...

    @property
    def accounts(self) -> int: ...

    @property
    def lease_errors(self) -> int: ...


class ClusterCollector(Collector):
    def __init__(self, view: ShardView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        v = self._view
        shards = GaugeMetricFamily(
            "riskmon_cluster_shards", "Shards this daemon holds now.", labels=["member"]
        )
        shards.add_metric([v.member], len(v.owned))
        yield shards
        yield GaugeMetricFamily(
            "riskmon_cluster_shard_count", "Shards in the cluster.", value=v.shard_count
        )
        yield GaugeMetricFamily(
            "riskmon_cluster_members", "Members seen in the lease bucket.", value=v.members
        )
        accounts = GaugeMetricFamily(
            "riskmon_cluster_accounts", "Accounts this daemon evaluates.", labels=["member"]
        )
        accounts.add_metric([v.member], v.accounts)
        yield accounts
        yield CounterMetricFamily(
            "riskmon_cluster_lease_errors",
            "Lease steps that could not reach JetStream (leases kept).",
            value=v.lease_errors,
        )
