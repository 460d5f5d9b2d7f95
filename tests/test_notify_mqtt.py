"""The MQTT notifier against a real Mosquitto on a loopback port the test picks.

Never the broker that may already listen on 1883: each test starts its own from a temporary
config, and stops it. A subscriber (aiomqtt, QoS 1) checks topics and payloads; a fresh
subscriber checks the retained state; a broker restart checks that delivery resumes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
from tools import Mosquitto, running, wait_until

from monitor.model.alert import Alert, AlertState, Severity, Transition
from monitor.notify import AlertDispatcher, MqttNotifier

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
PREFIX = "desk1/alerts"


def transition(
    i: int,
    *,
    rule: str = "margin_utilisation",
    state: AlertState = "firing",
    previous: AlertState = "pending",
    account: str | None = "main",
    underlying: str | None = None,
    severity: Severity = "warning",
) -> Transition:
    ts = T0_MS + 1000 * i
    alert = Alert(
        rule=rule,
        severity=severity,
        state=state,
        account=account,
        underlying=underlying,
        value=0.5 + i / 8,
        threshold=0.5,
        since_ms=ts,
        active_since_ms=T0_MS,
        summary=f"{account or 'book'}: {rule} step {i}",
    )
    return Transition(alert=alert, previous=previous, ts_ms=ts)


class Subscriber:
    """Collects ``(topic, payload, qos, retain)`` of everything under ``PREFIX``."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], int, bool]] = []

    def keys(self) -> list[str]:
        return [m[1]["key"] for m in self.messages]

    def latest(self) -> dict[str, dict[str, Any]]:
        return {topic: payload for topic, payload, _, _ in self.messages}

    async def run(self, port: int, name: str, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier=name) as client:
            await client.subscribe(f"{PREFIX}/#", qos=1)
            ready.set()
            async for m in client.messages:
                assert isinstance(m.payload, bytes)
                self.messages.append((str(m.topic), json.loads(m.payload), m.qos, m.retain))


@asynccontextmanager
async def subscribed(port: int, name: str) -> AsyncIterator[Subscriber]:
    sub, ready = Subscriber(), asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sub.run(port, name, ready), name=f"test.subscriber[{name}]")
        try:
            async with asyncio.timeout(10):
                await ready.wait()
            yield sub
        finally:
            task.cancel()


def dispatcher(port: int, outbox: Path) -> AlertDispatcher:
    n = MqttNotifier(
        "127.0.0.1",
        port,
        topic_prefix=PREFIX,
        client_id="riskmon-notify-test",
        max_backoff_s=0.3,
        timeout_s=3.0,
    )
    return AlertDispatcher([n], outbox, rng=random.Random(5), initial_backoff_s=0.05)


async def test_qos1_messages_on_per_alert_topics_and_retained_current_state(
    broker: Mosquitto, tmp_path: Path
) -> None:
    d = dispatcher(broker.port, tmp_path)
    margin = [
        transition(0, state="pending", previous="inactive"),
        transition(1),
        transition(2, state="resolved", previous="firing"),
    ]
    drift_btc = transition(3, rule="risk_drift", underlying="BTC", severity="critical")
    drift_eth = transition(4, rule="risk_drift", underlying="ETH")
    corr = transition(5, rule="correlation_spike", account=None)
    ts = [*margin, drift_btc, drift_eth, corr]
    async with subscribed(broker.port, "live") as live, running(d):
        d.submit(margin[:2])
        d.submit([margin[2], drift_btc, drift_eth, corr])
        await wait_until(lambda: len(live.messages) >= len(ts), "every message")
    s = d.stats["mqtt"]
    assert (s.delivered, s.failed, s.pending) == (6, 0, 0)
    assert list((tmp_path / "mqtt").iterdir()) == []

    margin_topic = f"{PREFIX}/margin_utilisation/main"
    topics = [m[0] for m in live.messages]
    assert topics == [margin_topic] * 3 + [
        f"{PREFIX}/risk_drift/main/BTC",
        f"{PREFIX}/risk_drift/main/ETH",
        f"{PREFIX}/correlation_spike/_book",
    ]
    assert live.keys() == [t.idempotency_key for t in ts]
    assert [m[2] for m in live.messages] == [1] * 6
    for (_, payload, _, _), t in zip(live.messages, ts, strict=True):
        # The documented payload, field by field from the transition (not the serializer
        # compared with itself).
        a = t.alert
        when = dt.datetime.fromtimestamp(t.ts_ms / 1000, tz=dt.UTC)
        assert payload == {
            "schema": 1,
            "ts": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.ts_ms % 1000:03d}Z",
            "from": t.previous,
            "key": t.idempotency_key,
            "rule": a.rule,
            "severity": a.severity,
            "state": a.state,
            "account": a.account,
            "underlying": a.underlying,
            "value": a.value,
            "threshold": 0.5,
            "since": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{a.since_ms % 1000:03d}Z",
            "summary": a.summary,
            "instance": f"{a.rule}/{a.account or '-'}/{a.underlying or '-'}",
            "ts_ms": t.ts_ms,
            "since_ms": t.ts_ms,
            "active_since_ms": T0_MS,
        }
    assert [m[1]["state"] for m in live.messages[:3]] == ["pending", "firing", "resolved"]
    assert live.messages[3][1]["severity"] == "critical"
    assert live.messages[5][1]["account"] is None

    # A subscriber that connects later gets each alert's current state, retained.
    async with subscribed(broker.port, "late") as late:
        await wait_until(lambda: len(late.messages) >= 4, "the retained messages")
        await asyncio.sleep(0.2)  # nothing more may come
    assert all(m[3] for m in late.messages)  # flagged as retained
    assert {t: p["key"] for t, p in late.latest().items()} == {
        margin_topic: margin[2].idempotency_key,  # resolved, not the firing before it
        f"{PREFIX}/risk_drift/main/BTC": drift_btc.idempotency_key,
        f"{PREFIX}/risk_drift/main/ETH": drift_eth.idempotency_key,
        f"{PREFIX}/correlation_spike/_book": corr.idempotency_key,
    }
    assert len(late.messages) == 4


async def test_delivery_resumes_after_the_broker_restarts(
    broker: Mosquitto, tmp_path: Path
) -> None:
    d = dispatcher(broker.port, tmp_path)
    before = transition(0)
    during = [
        transition(1, rule="risk_drift", underlying="BTC"),
        transition(2, state="resolved", previous="firing"),
    ]
    stats = d.stats["mqtt"]
    async with running(d):
        async with subscribed(broker.port, "first") as first:
            d.submit([before])
            await wait_until(lambda: first.keys() == [before.idempotency_key], "the first")
        assert stats.connected

        broker.stop()
        d.submit(during)  # the engine goes on; the transitions wait in the outbox
        retries = stats.retries
        await wait_until(lambda: stats.retries >= retries + 2, "reconnect attempts")
        assert not stats.connected
        assert stats.pending == 2
        assert len(list((tmp_path / "mqtt").iterdir())) == 2

        broker.start()  # same port, empty: no persistence configured
        await wait_until(lambda: stats.pending == 0, "delivery to resume")
        assert stats.connected

    assert (stats.delivered, stats.failed) == (3, 0)
    async with subscribed(broker.port, "after") as after:
        await wait_until(lambda: len(after.messages) >= 2, "the retained messages")
        await asyncio.sleep(0.2)
    assert {t: p["key"] for t, p in after.latest().items()} == {
        f"{PREFIX}/risk_drift/main/BTC": during[0].idempotency_key,
        f"{PREFIX}/margin_utilisation/main": during[1].idempotency_key,
    }
    assert [p["state"] for _, p, _, _ in sorted(after.messages)] == ["resolved", "firing"]
