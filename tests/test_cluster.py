"""Cluster mode end to end: a real 3-node JetStream cluster, one ingest and two engines.

Processes: ``riskmon ingest`` (the simulated market: prices and its four demo accounts)
and two ``riskmon run`` with ``[cluster]`` (leases, TTL 2 s). The test itself publishes a
fixed book of accounts through the same sink the ingest uses, so the positions each
engine shows can be compared with exactly what was published.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats_cluster import NatsCluster, RiskmonProcess, publish
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from connectors.nats.jetstream import close
from connectors.nats.subjects import shard_of
from monitor.model.events import AccountEvent, Event, PositionEvent

SIMULATED_ACCOUNTS = {"parity", "hedged", "options", "basis"}
#: Names that need escaping in a subject: a dot, a space, wildcards.
FIXED_ACCOUNTS = [f"client-{i:03d}" for i in range(30)] + ["desk.a b", "ops>*", "fx%2E"]
TS = 1_790_000_000_000


def book_events(
    accounts: list[str], version: int = 0
) -> tuple[list[Event], dict[str, dict[str, float]]]:
    """Positions and equity per account; returns the events and the expected book."""
    events: list[Event] = []
    book: dict[str, dict[str, float]] = {}
    for i, a in enumerate(accounts):
        pos = {"BTC-PERPETUAL": float(i + 1 + version), "ETH-PERPETUAL": -(i + 0.5)}
        book[a] = pos
        for inst, q in pos.items():
            events.append(PositionEvent(ts=TS + version, account=a, instrument=inst, quantity=q))
        events.append(AccountEvent(ts=TS + version, account=a, equity=1e6 + i))
    return events, book


async def stream_last_seq(servers: list[str], stream: str) -> int:
    """The stream's last sequence; -1 while JetStream does not answer (an election)."""
    nc = await nats.connect(servers)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    except (nats.errors.Error, TimeoutError):
        return -1
    finally:
        await close(nc)


#: Accounts with a net delta limit they breach at once (|delta| far above 1 USD).
LIMITED = [a for a in FIXED_ACCOUNTS if a.startswith("client-")]


def engine_config(path: Path, servers: list[str], member: str) -> Path:
    urls = ", ".join(f'"{u}"' for u in servers)
    limits = "".join(f'[limits."{a}"]\ndelta_usd = 1.0\n' for a in LIMITED)
    path.write_text(
        '[log]\nformat = "json"\n\n'
        f'[cluster]\nservers = [{urls}]\nmember = "{member}"\nshard_count = 8\n'
        'lease_ttl = "3s"\n\n'
        '[[rules]]\nname = "net_delta_limit"\nfor = "0s"\n\n' + limits
    )
    return path


def delta_alerts(d: RiskmonProcess) -> dict[str, dict[str, Any]]:
    """The daemon's firing net_delta_limit alerts by account."""
    report = d.get_json("/api/v1/snapshot")
    alerts = [] if report is None else report["alerts"]
    return {
        x["account"]: x for x in alerts if x["rule"] == "net_delta_limit" and x["state"] == "firing"
    }


def delta_history(d: RiskmonProcess) -> list[dict[str, Any]]:
    report = d.get_json("/api/v1/snapshot")
    history = [] if report is None else report["alert_history"]
    return [t for t in history if t["rule"] == "net_delta_limit"]


async def episode_accounts(servers: list[str]) -> set[str]:
    """Accounts with alert episodes in the cluster's alert bucket."""
    nc = await nats.connect(servers)
    try:
        kv = await nc.jetstream().key_value("riskmon_alerts")
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return set()
        return {k.removeprefix("acct.") for k in keys}
    except (nats.errors.Error, TimeoutError):
        return set()
    finally:
        await close(nc)


def ingest_config(path: Path, servers: list[str]) -> Path:
    urls = ", ".join(f'"{u}"' for u in servers)
    path.write_text(
        '[log]\nformat = "json"\n\n'
        f"[cluster]\nservers = [{urls}]\n\n"
        '[[connectors]]\ntype = "simulated"\ntick_interval = "200ms"\n'
    )
    return path


def accounts_of(d: RiskmonProcess) -> dict[str, Any] | None:
    report = d.get_json("/api/v1/snapshot")
    return None if report is None else dict(report["accounts"])


def cluster_metrics(d: RiskmonProcess) -> dict[str, float]:
    """``riskmon_cluster_*`` samples of one daemon, by name."""
    try:
        with urllib.request.urlopen(d.url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    return {
        s.name: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("riskmon_cluster_")
    }


def samples(d: RiskmonProcess, name: str) -> list[Sample]:
    with urllib.request.urlopen(d.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return [
        s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name
    ]


def positions(account: dict[str, Any]) -> dict[str, float]:
    return {p["instrument"]: p["quantity"] for p in account["positions"]}


def wait_for(pred: Callable[[], bool], what: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats")
    c.start()
    yield c
    c.stop()


def test_shards_are_disjoint_complete_and_move_on_sigkill_and_survive_a_nats_node(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    servers = cluster.urls
    events, book = book_events(FIXED_ACCOUNTS)
    asyncio.run(publish(servers, events))
    everyone = set(FIXED_ACCOUNTS) | SIMULATED_ACCOUNTS

    procs: list[RiskmonProcess] = []
    try:
        ingest = RiskmonProcess(
            "ingest",
            ingest_config(tmp_path / "ingest.toml", servers),
            tmp_path / "ingest.log",
            ready_msg="riskmon ingest publishing",
        )
        procs.append(ingest)
        a, b = (
            RiskmonProcess(
                "run",
                engine_config(tmp_path / f"{m}.toml", servers, m),
                tmp_path / f"{m}.log",
                ready_msg="riskmon listening",
            )
            for m in ("engine-a", "engine-b")
        )
        procs += [a, b]

        # 1. Every account is evaluated by exactly one daemon, with what was published.
        seen: dict[str, dict[str, Any]] = {}

        def split_is_settled() -> bool:
            sa, sb = accounts_of(a), accounts_of(b)
            if sa is None or sb is None or not sa or not sb:
                return False
            if set(sa) & set(sb) or set(sa) | set(sb) != everyone:
                return False
            seen.clear()
            seen.update({"a": sa, "b": sb})
            return all(positions({**sa, **sb}[acct]) == want for acct, want in book.items())

        wait_for(split_is_settled, "two disjoint shards covering the whole book")
        sa, sb = seen["a"], seen["b"]
        assert not set(sa) & set(sb)
        assert set(sa) | set(sb) == everyone
        merged = {**sa, **sb}
        for i, acct in enumerate(FIXED_ACCOUNTS):
            assert positions(merged[acct]) == book[acct]
            assert merged[acct]["margin"]["equity"] == 1e6 + i
        b_accounts = set(sb)
        # The ingest's own figures: what JetStream acknowledged, by event type.
        published = {
            dict(s.labels)["type"]: s.value
            for s in samples(ingest, "riskmon_ingest_published_total")
        }
        assert published["price"] > 0
        assert published["position"] > 0  # the simulated demo accounts
        assert published["account"] > 0
        up = samples(ingest, "riskmon_connector_up")
        assert [(dict(s.labels)["connector"], s.value) for s in up] == [("simulated", 1.0)]
        assert ingest.get_json("/-/ready") == {"ready": True, "missing": []}
        # Every shard is held (a lease renewed late on a loaded machine lapses and is taken
        # again: the gauges converge, they need not agree at the first look).
        wait_for(
            lambda: (
                cluster_metrics(a)["riskmon_cluster_shards"]
                + cluster_metrics(b)["riskmon_cluster_shards"]
                == 8
            ),
            "every shard held by a or b",
        )
        ma, mb = cluster_metrics(a), cluster_metrics(b)
        assert ma["riskmon_cluster_shard_count"] == 8
        assert ma["riskmon_cluster_accounts"] + mb["riskmon_cluster_accounts"] == len(everyone)

        # B's alerts are in the alert bucket, ready for whoever takes its accounts over.
        b_limited = b_accounts & set(LIMITED)
        assert b_limited
        wait_for(
            lambda: (
                set(delta_alerts(b)) == b_limited
                and b_limited <= asyncio.run(episode_accounts(servers))
            ),
            "engine B's firing alerts and their episodes in the alert bucket",
        )
        b_alerts = delta_alerts(b)
        a_seen = {t["key"] for t in delta_history(a)}

        # 2. SIGKILL engine B; change one of its accounts while nobody holds it.
        b.kill()
        moved = sorted(b_accounts & set(FIXED_ACCOUNTS))[0]
        update = PositionEvent(ts=TS + 1, account=moved, instrument="BTC-PERPETUAL", quantity=-7.0)
        asyncio.run(publish(servers, [update]))
        book[moved] = {**book[moved], "BTC-PERPETUAL": -7.0}

        def a_holds_everything() -> bool:
            sa = accounts_of(a)
            return (
                sa is not None
                and set(sa) == everyone
                and all(positions(sa[acct]) == want for acct, want in book.items())
            )

        wait_for(a_holds_everything, "engine A to take over B's accounts, positions intact")
        assert cluster_metrics(a)["riskmon_cluster_shards"] == 8
        # A continues B's alerts (same episodes, nothing notified twice): it fires none of
        # them anew, and they are firing on A since B fired them.
        wait_for(lambda: b_limited <= set(delta_alerts(a)), "engine A to hold B's alerts")
        a_alerts = delta_alerts(a)
        for acct in b_limited:
            assert a_alerts[acct]["since"] == b_alerts[acct]["since"], acct
        new_moves = [t for t in delta_history(a) if t["key"] not in a_seen]
        assert not [t for t in new_moves if t["account"] in b_limited], new_moves

        # 3. Kill the NATS node engine A is connected to: publishing and consuming go on.
        md_before = asyncio.run(stream_last_seq(servers, "RISKMON_MD"))
        assert md_before > 0
        node = cluster.node_of("riskmon-engine-engine-a")
        assert node is not None
        cluster.kill(node)
        survivors = [u for i, u in enumerate(servers) if i != node]
        late = PositionEvent(ts=TS + 2, account=moved, instrument="ETH-PERPETUAL", quantity=3.0)
        asyncio.run(publish(survivors, [late]))
        book[moved] = {**book[moved], "ETH-PERPETUAL": 3.0}
        wait_for(a_holds_everything, "engine A to apply an update published after the node died")
        wait_for(
            lambda: asyncio.run(stream_last_seq(survivors, "RISKMON_MD")) > md_before + 50,
            "the ingest to keep publishing prices after the node died",
        )
        final = accounts_of(a)
        assert final is not None
        assert set(final) == everyone
        assert positions(final[moved]) == book[moved]
        # SIGTERM stops both roles cleanly, leases given back (exit 0, not a hang).
        assert a.stop() == 0
        assert ingest.stop() == 0
    finally:
        for p in procs:
            p.kill()


def test_static_shards_hold_exactly_their_accounts(cluster: NatsCluster, tmp_path: Path) -> None:
    """assignment = "static": the engine evaluates exactly the accounts of its shards."""
    servers = cluster.urls
    events, book = book_events(FIXED_ACCOUNTS)
    asyncio.run(publish(servers, events))
    mine = {a for a in FIXED_ACCOUNTS if shard_of(a, 8) in {1, 2, 5}}
    assert mine
    assert mine != set(FIXED_ACCOUNTS)
    urls = ", ".join(f'"{u}"' for u in servers)
    cfg = tmp_path / "static.toml"
    cfg.write_text(
        '[log]\nformat = "json"\n\n'
        f'[cluster]\nservers = [{urls}]\nassignment = "static"\nshard_count = 8\n'
        "shards = [1, 2, 5]\n"
    )
    d = RiskmonProcess("run", cfg, tmp_path / "static.log", ready_msg="riskmon listening")
    try:

        def holds_its_shards() -> bool:
            held = accounts_of(d)
            return held is not None and set(held) == mine

        wait_for(holds_its_shards, "the static engine to hold exactly its shards")
        held = accounts_of(d)
        assert held is not None
        for acct in mine:
            assert positions(held[acct]) == book[acct]
        assert d.stop() == 0
    finally:
        d.kill()
