"""The ``[cluster]`` section: where JetStream is, the streams, and how shards are assigned.

Without ``[cluster]`` riskmon is one process and needs no NATS. With it, ``riskmon
ingest`` publishes its connectors' events to JetStream and ``riskmon run`` consumes all
market data plus the accounts of the shards it holds (README "Running a cluster").
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Literal

from msgspec import Meta

from monitor.model.settings import Duration, Invalid, Section, parse_duration, show

__all__ = ["ClusterConfig"]

_Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]+$")]


class ClusterConfig(Section, frozen=True):
    """``[cluster]``: JetStream servers, streams, and the shard assignment.

    ``assignment = "lease"``: each engine holds leases on shards in the key-value bucket
    ``lease_bucket`` (TTL ``lease_ttl``), renewing them every ``lease_ttl / 3`` by
    compare-and-set on the revision; a daemon that stops renewing loses them after the TTL
    and another takes them. ``assignment = "static"``: this daemon owns exactly ``shards``.
    An account's shard is ``crc32(name) % shard_count`` (all daemons must agree on it).
    """

    #: NATS URLs; the client fails over between them.
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    #: This daemon's name in the lease bucket; default ``<hostname>-<pid>``.
    member: _Name | None = None
    subject_prefix: _Name = "riskmon"
    market_stream: _Name = "RISKMON_MD"
    account_stream: _Name = "RISKMON_ACCT"
    #: Stream and bucket replicas; None: 3 when the server is in a cluster, else 1.
    replicas: Annotated[int, Meta(ge=1, le=5)] | None = None
    #: Limits retention: market data is kept this long...
    market_max_age: Duration = parse_duration("4h")
    #: ...account events this long (a position published once and never again is gone
    #: from the stream after it: publishers re-publish snapshots well within it).
    account_max_age: Duration = parse_duration("30d")
    #: Older values kept per account subject (the last one is what a takeover reads).
    account_history: Annotated[int, Meta(ge=1, le=1000)] = 10
    #: Window in which a repeated ``Nats-Msg-Id`` (an account event re-published after a
    #: lost acknowledgement) is stored once.
    duplicate_window: Duration = parse_duration("2m")
    #: How long one publish waits for its acknowledgement.
    publish_timeout: Duration = parse_duration("5s")
    assignment: Literal["lease", "static"] = "lease"
    shard_count: Annotated[int, Meta(ge=1, le=4096)] = 16
    #: ``assignment = "static"``: the shards this daemon owns.
    shards: tuple[Annotated[int, Meta(ge=0)], ...] = ()
    lease_bucket: _Name = "riskmon_leases"
    #: Key-value bucket of each account's live alert episodes, adopted on takeover.
    alert_bucket: _Name = "riskmon_alerts"
    lease_ttl: Duration = parse_duration("10s")
    #: An engine whose event loop has not run for this long (wedged) stops renewing its
    #: leases, so another daemon takes its shards after ``lease_ttl``.
    max_stall: Duration = parse_duration("1m")
    user: str | None = None
    password: str | None = None
    #: A file holding the password (mode 600 or stricter), instead of ``password``.
    password_file: str | None = None

    def __post_init__(self) -> None:
        if not self.servers:
            raise Invalid(("servers",), "expected at least one NATS URL")
        if self.assignment == "static":
            if not self.shards:
                raise Invalid(("shards",), 'assignment = "static" needs the shards it owns')
            for i, s in enumerate(self.shards):
                if s >= self.shard_count:
                    raise Invalid(
                        ("shards", i), f"expected a shard below shard_count; got {show(s)}"
                    )
        elif self.shards:
            raise Invalid(("shards",), 'only used with assignment = "static"')
        if int(self.lease_ttl) < 1000:
            raise Invalid(("lease_ttl",), f"expected at least 1s; got {self.lease_ttl}")
        if self.password is not None and self.password_file is not None:
            raise Invalid(("password_file",), "set password or password_file, not both")

    @property
    def member_name(self) -> str:
        """This daemon's lease-holder name."""
        if self.member is not None:
            return self.member
        host = "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())
        return f"{host}-{os.getpid()}"
