"""Cluster mode, part by part: subjects and shards (pure), [cluster] config, dropping an
account from the engine and its alerts, and shard leases on a real 3-node JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats_cluster import NatsCluster

from connectors.base import cancel_until_done
from connectors.nats import leases as leases_module
from connectors.nats.config import ClusterConfig
from connectors.nats.leases import LeaseKeeper, ShardLeases
from connectors.nats.subjects import (
    account_of_subject,
    escape,
    message_id,
    shard_of,
    subject_of,
    unescape,
)
from monitor.config import ConfigError, ServerConfig, load_config, redacted
from monitor.daemon import Daemon
from monitor.engine.core import Engine
from monitor.model.alert import Transition
from monitor.model.events import (
    AccountEvent,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
)
from monitor.model.settings import dec_hook
from monitor.notify import AlertDispatcher
from monitor.notify.alertmanager import AlertmanagerNotifier, am_alert
from monitor.rules.config import AccountLimits
from monitor.rules.pack import rule_engine
from monitor.settings import engine_settings, risk_settings

T0 = 1_790_000_000_000

# --- subjects ----------------------------------------------------------------------------


@given(st.text())
def test_escape_is_a_valid_token_and_reversible(name: str) -> None:
    token = escape(name)
    assert token
    assert not set(token) & {".", "*", ">", " ", "\t", "\r", "\n"}
    assert token.isascii()
    assert unescape(token) == name


def test_escape_keeps_plain_names_and_never_merges_two() -> None:
    assert escape("client-007_A") == "client-007_A"
    assert escape("desk.a b") == "desk%2Ea%20b"
    assert escape("ops>*") == "ops%3E%2A"
    assert escape("a%2Eb") == "a%252Eb"  # not "a.b"'s token
    assert escape("") == "%"
    assert len({escape(n) for n in ("a.b", "a b", "a%2Eb", "a_b", "a-b")}) == 5


def test_subjects_by_event_type() -> None:
    p = "riskmon"
    assert subject_of(PriceEvent(ts=T0, instrument="BTC-PERPETUAL", price=1.0), p) == (
        "riskmon.md.BTC.BTC-PERPETUAL"
    )
    assert subject_of(PriceEvent(ts=T0, instrument="ETH", price=1.0), p) == "riskmon.md.ETH.ETH"
    assert (
        subject_of(InstrumentEvent(instrument="X.1", kind="spot", underlying="XRP"), p)
        == "riskmon.md.XRP.X%2E1.def"
    )
    pos = PositionEvent(ts=T0, account="desk.a", instrument="BTC-27DEC26", quantity=1.0)
    assert subject_of(pos, p) == "riskmon.acct.desk%2Ea.position.BTC-27DEC26"
    acct = AccountEvent(ts=T0, account="desk.a", equity=1.0)
    assert subject_of(acct, p) == "riskmon.acct.desk%2Ea.account"
    assert account_of_subject(subject_of(pos, p), p) == "desk.a"
    assert account_of_subject("riskmon.md.BTC.BTC", p) is None


def test_message_id_is_per_content() -> None:
    s = "riskmon.acct.a.account"
    assert message_id(s, b"x") == message_id(s, b"x")
    assert message_id(s, b"x") != message_id(s, b"y")
    assert message_id(s, b"x") != message_id("riskmon.acct.b.account", b"x")


def test_shards_are_crc32_mod_count() -> None:
    # CRC-32's published check value: crc32("123456789") = 0xCBF43926, on every machine.
    assert shard_of("123456789", 1000) == 0xCBF43926 % 1000 == 262
    assert shard_of("client-000", 1) == 0
    counts = [0] * 16
    for i in range(2000):
        counts[shard_of(f"acct-{i}", 16)] += 1
    assert min(counts) > 90  # 125 each on average: no shard is starved


# --- config ------------------------------------------------------------------------------


def test_no_cluster_section_means_local_mode(tmp_path: Path) -> None:
    assert load_config(None, env={}).cluster is None


def test_cluster_section_parses_with_defaults(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text('[cluster]\nservers = ["nats://127.0.0.1:4333"]\nlease_ttl = "3s"\n')
    c = load_config(f, env={}).cluster
    assert c is not None
    assert c.servers == ("nats://127.0.0.1:4333",)
    assert int(c.lease_ttl) == 3000
    assert (c.assignment, c.shard_count, c.subject_prefix) == ("lease", 16, "riskmon")


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('assignment = "static"\n', "cluster.shards"),
        ('assignment = "static"\nshard_count = 4\nshards = [4]\n', "cluster.shards[0]"),
        ("shards = [1]\n", "cluster.shards"),
        ('lease_ttl = "500ms"\n', "cluster.lease_ttl"),
        ('password = "x"\npassword_file = "/x"\n', "cluster.password_file"),
        ('subject_prefix = "a.b"\n', "cluster.subject_prefix"),
    ],
)
def test_cluster_section_errors_name_the_key(tmp_path: Path, body: str, path: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[cluster]\n" + body)
    with pytest.raises(ConfigError) as err:
        load_config(f, env={})
    assert err.value.path == path


def test_cluster_password_is_redacted(tmp_path: Path) -> None:
    c = ClusterConfig(password="hunter2")
    assert "hunter2" not in repr(c)
    f = tmp_path / "c.toml"
    f.write_text("[cluster]\n")
    cfg = load_config(f, env={"RISKMON_CLUSTER__PASSWORD": "hunter2"})
    assert cfg.cluster is not None
    assert cfg.cluster.password == "hunter2"
    assert redacted(cfg)["cluster"]["password"] == "***"
    assert "hunter2" not in repr(cfg)
    # The environment sets keys of [cluster]; it never turns cluster mode on by itself.
    with pytest.raises(ConfigError) as err:
        load_config(None, env={"RISKMON_CLUSTER__PASSWORD": "hunter2"})
    assert err.value.path == "cluster"
    assert "hunter2" not in str(err.value)


# --- dropping an account -----------------------------------------------------------------


def _engine_with_two_accounts() -> tuple[Engine, list[Transition]]:
    cfg = load_config(None, env={})
    moves: list[Transition] = []
    eng = Engine(
        engine_settings(cfg),
        risk=risk_settings(cfg),
        rules=rule_engine(cfg.rules, {"a": AccountLimits(delta_usd=1_000.0)}),
    )
    eng.set_alert_sink(tuple, moves.extend)
    for ev in (
        PriceEvent(ts=T0, instrument="BTC", price=100_000.0),
        PriceEvent(ts=T0, instrument="BTC-PERPETUAL", price=100_000.0),
        PositionEvent(ts=T0, account="a", instrument="BTC-PERPETUAL", quantity=2.0),
        PositionEvent(ts=T0, account="b", instrument="BTC-PERPETUAL", quantity=-1.0),
        AccountEvent(ts=T0, account="a", equity=1e6, maintenance_margin=1e5),
    ):
        eng.apply(ev, "t")
    return eng, moves


def test_drop_account_removes_positions_and_margin_without_resolving_alerts() -> None:
    eng, moves = _engine_with_two_accounts()
    snap = eng.evaluate(T0 + 1000)
    assert set(snap.accounts) == {"a", "b"}
    fired = [t for t in moves if t.alert.rule == "net_delta_limit"]
    assert [(t.alert.account, t.alert.state) for t in fired] == [("a", "pending")]
    assert fired[0].alert.value == pytest.approx(200.0)  # |200,000 USD| / 1,000 limit

    moves.clear()
    eng.drop_account("a")
    snap = eng.evaluate(T0 + 2000)
    assert set(snap.accounts) == {"b"}
    assert not [t for t in moves if t.alert.account == "a"]  # handed over, not resolved
    assert not [a for a in snap.alerts if a.account == "a"]

    # Taken back later (rebuilt from the stream): a new episode, as on any daemon.
    eng.apply(PositionEvent(ts=T0, account="a", instrument="BTC-PERPETUAL", quantity=2.0), "t")
    snap = eng.evaluate(T0 + 3000)
    assert set(snap.accounts) == {"a", "b"}
    assert [
        (t.alert.account, t.previous, t.alert.state)
        for t in moves
        if t.alert.rule == "net_delta_limit"
    ] == [("a", "inactive", "pending")]


def test_forgotten_accounts_are_no_longer_resent_to_alertmanager(tmp_path: Path) -> None:
    eng, moves = _engine_with_two_accounts()
    eng.evaluate(T0 + 1000)
    am = AlertmanagerNotifier("http://127.0.0.1:9")
    dispatcher = AlertDispatcher([am], tmp_path / "outbox")
    for t in moves:  # as if Alertmanager had acknowledged them firing
        am.active[t.alert.key] = am_alert(t.alert)
    assert [a["labels"]["account"] for a in am.active.values()] == ["a"]
    dispatcher.forget_accounts(["b"])
    assert len(am.active) == 1
    dispatcher.forget_accounts(["a"])
    assert am.active == {}


# --- leases on a real cluster --------------------------------------------------------------


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    c = NatsCluster(tmp_path / "nats")
    c.start()
    yield c
    c.stop()


async def _leases(cluster: NatsCluster, ttl_s: float) -> None:
    nc = await nats.connect(cluster.urls)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="leases", ttl=ttl_s, history=1, replicas=3)
        a = ShardLeases(kv, "a", 8, ttl_s, js=js, bucket="leases")
        b = ShardLeases(kv, "b", 8, ttl_s, js=js, bucket="leases")
        deadline = time.monotonic() + 60
        while not (len(a.owned) == 4 and len(b.owned) == 4):
            assert time.monotonic() < deadline, (a.owned, b.owned)
            await a.step()
            await b.step()
        assert set(a.owned).isdisjoint(b.owned)
        assert set(a.owned) | set(b.owned) == set(range(8))
        entry = await kv.get(f"shard.{min(b.owned)}")
        assert entry.value == b"b"

        # b stops renewing: after the TTL its leases expire and a takes them all.
        b_shards = frozenset(b.owned)
        taken: set[int] = set()
        while len(a.owned) < 8:
            assert time.monotonic() < deadline, a.owned
            acquired, lost = await a.step()
            assert not lost
            taken |= acquired
            await asyncio.sleep(a.interval_s)
        assert taken == b_shards
        # b comes back: its compare-and-set fails, so it learns it lost them all.
        acquired, lost = await b.step()
        assert lost == b_shards
        assert set(b.owned).isdisjoint(a.owned)
    finally:
        await nc.close()


async def _released(cluster: NatsCluster) -> None:
    nc = await nats.connect(cluster.urls)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="leases2", ttl=30.0, history=1, replicas=3)
        a = ShardLeases(kv, "a", 8, 30.0, js=js, bucket="leases2")
        b = ShardLeases(kv, "b", 8, 30.0, js=js, bucket="leases2")
        deadline = time.monotonic() + 60
        while not (len(a.owned) == 4 and len(b.owned) == 4):
            assert time.monotonic() < deadline, (a.owned, b.owned)
            await a.step()
            await b.step()
        assert (a.members, b.members) == (2, 2)
        # b stops cleanly: its presence key is deleted, not left to expire (30 s), so a
        # counts one member at its next step and takes every shard at once.
        await b.release_all()
        acquired, lost = await a.step()
        assert a.members == 1
        assert not lost
        assert set(a.owned) == set(range(8))
        assert len(acquired) == 4
    finally:
        await nc.close()


def test_a_member_that_stops_cleanly_is_not_counted(cluster: NatsCluster) -> None:
    asyncio.run(_released(cluster))


def test_leases_split_fairly_and_expire_to_the_survivor(cluster: NatsCluster) -> None:
    # A member renews every ttl / 3; with a 2 s TTL a loaded machine (the whole suite and
    # a 3-node cluster on 2 cores) once let one of the survivor's own leases lapse between
    # two renewals. 6 s leaves each renewal 4 s of slack.
    asyncio.run(_leases(cluster, ttl_s=6.0))


def test_a_lease_keeper_that_failed_to_start_starts_again(
    cluster: NatsCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease bucket's lookup timed out once (a loaded cluster at start): the keeper
    used to log it and end, so the daemon never held a shard. It starts again after a
    short delay and takes the shards (the only member: all of them)."""
    real = leases_module.lease_bucket
    calls: list[int] = []

    async def once_too_slow(js: Any, cfg: ClusterConfig, replicas: int) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise nats.errors.TimeoutError
        return await real(js, cfg, replicas)

    monkeypatch.setattr(leases_module, "lease_bucket", once_too_slow)
    cfg = msgspec.convert(
        {"servers": cluster.urls, "lease_ttl": "3s", "shard_count": 4},
        ClusterConfig,
        dec_hook=dec_hook,
    )
    loop = asyncio.new_event_loop()
    keeper = LeaseKeeper(cfg, "solo", 3, lambda *change: None, loop)
    keeper.start()
    try:
        deadline = time.monotonic() + 60
        while keeper.leases is None or len(keeper.leases.owned) < 4:
            assert time.monotonic() < deadline, "the keeper never took the shards"
            time.sleep(0.1)
        assert keeper.restarts == 1
        assert len(calls) == 2
    finally:
        keeper.stop()
        loop.close()


def test_adopted_episodes_continue_with_the_same_keys() -> None:
    """Engine A fires; engine B adopts A's episodes: no new transition while the breach
    lasts, and the resolve carries A's episode start in its idempotency key."""
    a, a_moves = _engine_with_two_accounts()
    t = T0
    while not any(m.alert.state == "firing" and m.alert.account == "a" for m in a_moves):
        t += 1000
        assert t < T0 + 120_000, "net_delta_limit never fired on A"
        a.evaluate(t)
    fired = next(m for m in a_moves if m.alert.state == "firing" and m.alert.account == "a")
    episodes = a.alert_episodes("a")
    assert [(e.rule, e.state, e.active_since_ms) for e in episodes] == [
        ("net_delta_limit", "firing", fired.alert.active_since_ms)
    ]
    assert a.alert_episodes("b") == []

    b, b_moves = _engine_with_two_accounts()  # the same book, rebuilt from the stream
    b.adopt_alert_episodes(episodes)
    snap = b.evaluate(t + 5000)
    assert not [m for m in b_moves if m.alert.account == "a"]  # nothing sent twice
    (alert,) = [x for x in snap.alerts if x.account == "a"]
    assert (alert.rule, alert.state, alert.active_since_ms) == (
        "net_delta_limit",
        "firing",
        fired.alert.active_since_ms,
    )

    # The breach ends (a known, tiny delta: an unpriced position would leave it unknown).
    b.apply(PositionEvent(ts=t, account="a", instrument="BTC-PERPETUAL", quantity=1e-9), "t")
    b.evaluate(t + 6000)
    (resolved,) = [m for m in b_moves if m.alert.account == "a"]
    assert (resolved.previous, resolved.alert.state) == ("firing", "resolved")
    assert resolved.idempotency_key.startswith(
        f"net_delta_limit/a/-/{fired.alert.active_since_ms}/resolved/"
    )


# --- stopping: tasks that swallow a cancellation, an engine slower than its clock -------


def test_cancel_until_done_stops_a_task_that_swallowed_a_cancellation() -> None:
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as nats-py's flush does
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)  # the second cancellation lands here

    async def main() -> bool:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        await cancel_until_done([task], every_s=0.05)
        return task.cancelled()

    assert asyncio.run(main())


def test_an_engine_slower_than_its_clock_still_yields_to_other_tasks() -> None:
    """Every evaluation overdue (slower than eval_interval): HTTP, connectors, leases and
    the stop signal must still run between evaluations."""
    cfg = msgspec.structs.replace(
        load_config(None, env={}),
        server=ServerConfig(listen="127.0.0.1:0"),
    )
    result: dict[str, int] = {}

    async def main() -> None:
        daemon = Daemon(cfg, connectors=[])

        def slow_evaluation(now_ms: int) -> None:
            time.sleep(0.02)  # longer than the time to the next evaluation: always due

        daemon.engine.evaluate_due = slow_evaluation  # type: ignore[method-assign]
        daemon.engine._eval_next = 0  # every evaluation overdue from the start
        stop = asyncio.Event()
        ticks = 0

        async def other() -> None:
            nonlocal ticks
            while ticks < 20:
                await asyncio.sleep(0.001)
                ticks += 1
            stop.set()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(other())
            await daemon.run(stop)
        result["ticks"] = ticks

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the engine loop never yielded"
    assert result["ticks"] == 20
