"""The outbox on a real directory, and the dispatcher's lanes with in-process notifiers.

Crashes are simulated by raising a ``BaseException`` from inside the write sequence (the
code under test does not catch it, like a process that dies there) and then opening a
new outbox on the same directory, as a restarted daemon does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from tools import running

from monitor.model.alert import Alert, AlertState, Severity, Transition
from monitor.model.settings import Duration
from monitor.notify import (
    AlertDispatcher,
    AlertmanagerNotifier,
    MqttNotifier,
    Outbox,
    PermanentDeliveryError,
    RetryableDeliveryError,
    Session,
    WebhookNotifier,
)
from monitor.notify.config import (
    AlertmanagerConfig,
    AlertsConfig,
    MqttAlertsConfig,
    WebhookConfig,
)
from monitor.notify.outbox import FORMAT_VERSION

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def transition(
    i: int,
    *,
    state: AlertState = "firing",
    previous: AlertState = "pending",
    rule: str = "margin_utilisation",
    account: str | None = "main",
    underlying: str | None = None,
    severity: Severity = "warning",
    value: float = 0.8,
) -> Transition:
    ts = T0_MS + 1000 * i
    alert = Alert(
        rule=rule,
        severity=severity,
        state=state,
        account=account,
        underlying=underlying,
        value=value,
        threshold=0.75,
        since_ms=ts,
        active_since_ms=T0_MS,
        summary=f"main: margin utilisation {value:.0%} (step {i})",
        labels={"step": str(i)},
    )
    return Transition(alert=alert, previous=previous, ts_ms=ts)


def files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def reopen(directory: Path, max_pending: int = 100) -> Outbox:
    box = Outbox(directory, "webhook", max_pending=max_pending)
    box.load()
    return box


class Crash(BaseException):
    """The process dies here."""


# -- the outbox ------------------------------------------------------------------------------


def test_transitions_survive_a_restart_whole_and_in_order(tmp_path: Path) -> None:
    box = reopen(tmp_path)
    ts = [
        transition(0, state="pending", previous="inactive"),
        transition(1, value=math.nan, account=None, underlying="BTC"),
        transition(2, state="resolved", previous="firing", severity="critical"),
    ]
    box.add(ts[:2])
    box.add(ts[2:])
    assert [e.seq for e in box] == [0, 1, 2]

    again = reopen(tmp_path)
    loaded = [e.transition for e in again]
    # NaN != NaN: compare the one with a NaN value field by field.
    assert loaded[0] == ts[0]
    assert loaded[2] == ts[2]
    assert math.isnan(loaded[1].alert.value)
    assert loaded[1].idempotency_key == ts[1].idempotency_key
    assert loaded[1].alert.account is None
    assert loaded[1].alert.underlying == "BTC"
    assert dict(loaded[1].alert.labels) == {"step": "1"}

    doc = json.loads(next(iter(again)).path.read_bytes())  # type: ignore[union-attr]
    assert doc["v"] == FORMAT_VERSION
    assert doc["seq"] == 0
    assert doc["notifier"] == "webhook"
    assert doc["key"] == ts[0].idempotency_key
    assert doc["transition"]["alert"]["state"] == "pending"
    assert all(re.fullmatch(r"\d{16}-[0-9a-f]{24}\.json", n) for n in files(tmp_path))


def test_new_transitions_after_a_restart_queue_behind_the_old_ones(tmp_path: Path) -> None:
    box = reopen(tmp_path)
    box.add([transition(0), transition(1), transition(2)])
    box.ack(next(iter(box)))  # 0 delivered; 1 and 2 pending at the "crash"
    again = reopen(tmp_path)
    again.add([transition(3)])
    assert [e.transition.ts_ms for e in again] == [T0_MS + 1000, T0_MS + 2000, T0_MS + 3000]
    assert [e.seq for e in again] == [1, 2, 3]
    assert [e.transition.ts_ms for e in reopen(tmp_path)] == [
        T0_MS + 1000,
        T0_MS + 2000,
        T0_MS + 3000,
    ]


def test_ack_removes_the_file_and_only_that_one(tmp_path: Path) -> None:
    box = reopen(tmp_path)
    a, b, c = box.add([transition(0), transition(1), transition(2)])
    assert len(files(tmp_path)) == 3
    box.ack(b)
    assert len(box) == 2
    assert b.key not in box
    assert b.path is not None
    assert not b.path.exists()
    assert files(tmp_path) == sorted(p.name for p in (a.path, c.path) if p is not None)
    assert [e.key for e in reopen(tmp_path)] == [a.key, c.key]
    box.ack(b)  # a second ack (a late duplicate) is harmless
    assert len(box) == 2


def test_a_key_already_pending_is_not_queued_twice(tmp_path: Path) -> None:
    box = reopen(tmp_path)
    assert len(box.add([transition(0), transition(0)])) == 1
    assert box.add([transition(0)]) == []
    assert len(files(tmp_path)) == 1
    (entry,) = box
    box.ack(entry)
    assert len(box.add([transition(0)])) == 1  # delivered, then produced again: queued


def test_crash_between_write_and_rename_leaves_nothing_visible(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = reopen(tmp_path)
    box.add([transition(0)])

    def crash(src: object, dst: object) -> None:
        raise Crash

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(Crash):
        box.add([transition(1)])
    monkeypatch.undo()

    names = files(tmp_path)
    assert len(names) == 2
    assert [n for n in names if n.startswith(".tmp-")] == [names[0]]  # the partial write
    # ... which a reader never takes for a pending transition, and a restart removes.
    again = Outbox(tmp_path, "webhook")
    assert [e.transition for e in again.load()] == [transition(0)]
    assert again.stale_temp_files == 1
    assert not any(n.startswith(".tmp-") for n in files(tmp_path))


def test_truncated_temp_file_from_a_crash_is_cleaned_and_a_corrupt_file_set_aside(
    tmp_path: Path,
) -> None:
    box = reopen(tmp_path)
    (good,) = box.add([transition(0)])
    assert good.path is not None
    body = good.path.read_bytes()
    (tmp_path / (".tmp-" + good.path.name.replace("0000", "0009", 1))).write_bytes(body[:20])
    # A final file that is not valid (a disk fault): set aside, counted, never blocks others.
    bad = tmp_path / good.path.name.replace("0000", "0005", 1)
    bad.write_bytes(body[: len(body) // 2])

    again = Outbox(tmp_path, "webhook")
    assert [e.key for e in again.load()] == [good.key]
    assert (again.stale_temp_files, again.corrupt) == (1, 1)
    assert files(tmp_path) == sorted([".corrupt-" + bad.name, good.path.name])
    assert again.add([transition(1)])[0].seq == 1


def test_a_write_error_keeps_the_transition_in_memory_and_counts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = reopen(tmp_path)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    (entry,) = box.add([transition(0)])
    monkeypatch.undo()
    assert entry.path is None
    assert box.write_errors == 1
    assert [e.key for e in box] == [entry.key]  # still delivered by this process
    assert files(tmp_path) == []  # and no partial file left behind
    box.ack(entry)
    assert len(box) == 0


def test_the_cap_drops_the_oldest_counted(tmp_path: Path) -> None:
    box = reopen(tmp_path, max_pending=3)
    box.add([transition(i) for i in range(5)])
    assert box.dropped == 2
    assert [e.transition.ts_ms for e in box] == [T0_MS + 2000, T0_MS + 3000, T0_MS + 4000]
    assert len(files(tmp_path)) == 3  # the dropped ones' files are gone too
    assert [e.key for e in reopen(tmp_path, max_pending=3)] == [e.key for e in box]


# -- the dispatcher, with in-process notifiers --------------------------------------------


class FakeNotifier:
    """Records deliveries; ``behaviour(transition)`` may raise to fail one."""

    max_backoff_s = 0.02

    def __init__(self, name: str, behaviour: Callable[[Transition], None] | None = None) -> None:
        self.name = name
        self.behaviour = behaviour
        self.received: list[str] = []
        self.wanted: Callable[[Transition], bool] = lambda t: True

    def wants(self, transition: Transition) -> bool:
        return self.wanted(transition)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        yield self

    async def maintain(self) -> float | None:
        return None

    async def deliver(self, transition: Transition) -> None:
        if self.behaviour is not None:
            self.behaviour(transition)
        self.received.append(transition.idempotency_key)


async def wait_until(pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_receiver_that_is_down_blocks_neither_the_others_nor_submit(
    tmp_path: Path,
) -> None:
    def refused(t: Transition) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    down = FakeNotifier("down", refused)
    up = FakeNotifier("up")
    d = AlertDispatcher([down, up], tmp_path, rng=random.Random(0), initial_backoff_s=0.01)
    ts = [transition(i) for i in range(4)]
    async with running(d):
        d.submit(ts[:2])
        d.submit(ts[2:])
        await wait_until(lambda: d.stats["up"].delivered == 4 and d.stats["down"].retries >= 3)
    assert up.received == [t.idempotency_key for t in ts]
    assert d.stats["down"].pending == 4
    assert d.stats["down"].delivered == 0
    assert d.stats["up"].pending == 0
    assert len(files(tmp_path / "down")) == 4
    assert files(tmp_path / "up") == []
    assert (d.stats["log"].submitted, d.stats["log"].delivered) == (4, 4)


async def test_a_permanent_refusal_is_dropped_counted_and_does_not_block(tmp_path: Path) -> None:
    bad_key = transition(2).idempotency_key
    attempts: list[str] = []

    def behaviour(t: Transition) -> None:
        attempts.append(t.idempotency_key)
        if t.idempotency_key == bad_key:
            raise PermanentDeliveryError("HTTP 400")
        if attempts.count(t.idempotency_key) == 1 and t.ts_ms == T0_MS + 1000:
            raise RetryableDeliveryError("HTTP 503")

    n = FakeNotifier("hook", behaviour)
    d = AlertDispatcher([n], tmp_path, rng=random.Random(0), initial_backoff_s=0.01)
    async with running(d):
        d.submit([transition(i) for i in range(4)])
        await d.flush()  # the writer thread has put it in the outbox
        await wait_until(lambda: d.stats["hook"].pending == 0)
    s = d.stats["hook"]
    assert (s.submitted, s.delivered, s.failed, s.retries) == (4, 3, 1, 1)
    assert s.last_error == "PermanentDeliveryError: HTTP 400"
    assert n.received == [transition(i).idempotency_key for i in (0, 1, 3)]
    assert attempts.count(bad_key) == 1
    assert files(tmp_path / "hook") == []


async def test_pending_left_by_a_previous_run_goes_first(tmp_path: Path) -> None:
    n1 = FakeNotifier("hook")
    d1 = AlertDispatcher([n1], tmp_path)
    d1.submit([transition(0), transition(1)])  # never run: the daemon stopped
    await d1.flush()  # the writer thread has put it in the outbox
    n1.wanted = lambda t: t.alert.state == "firing"
    d1.submit([transition(9, state="pending", previous="inactive")])
    await d1.flush()  # the writer thread has put it in the outbox
    assert d1.stats["hook"].submitted == 2

    n2 = FakeNotifier("hook")
    d2 = AlertDispatcher([n2], tmp_path)
    assert [t.ts_ms for t in d2.pending("hook")] == [T0_MS, T0_MS + 1000]
    async with running(d2):
        d2.submit([transition(2)])
        await d2.flush()  # the writer thread has put it in the outbox
        await wait_until(lambda: d2.stats["hook"].pending == 0)
    assert n2.received == [transition(i).idempotency_key for i in range(3)]
    assert files(tmp_path / "hook") == []


def test_from_config_builds_the_configured_notifiers(tmp_path: Path) -> None:
    cfg = AlertsConfig(
        outbox=str(tmp_path / "outbox"),
        webhook=WebhookConfig(url="https://hooks.example/riskmon", token="tok"),
        mqtt=MqttAlertsConfig(port=18830, topic_prefix="desk/alerts"),
        alertmanager=AlertmanagerConfig(url="http://am:9093/", resend_interval=Duration("30s")),
    )
    d = AlertDispatcher.from_config(cfg)
    assert [n.name for n in d.notifiers] == ["webhook", "mqtt", "alertmanager"]
    hook, mqtt, am = d.notifiers
    assert isinstance(hook, WebhookNotifier)
    assert (hook.url, hook.timeout_s, hook.max_backoff_s) == (
        "https://hooks.example/riskmon",
        5.0,
        60.0,
    )
    assert isinstance(mqtt, MqttNotifier)
    assert (mqtt.port, mqtt.topic_prefix, mqtt.max_backoff_s) == (18830, "desk/alerts", 30.0)
    assert isinstance(am, AlertmanagerNotifier)
    assert (am.url, am.resend_interval_s) == ("http://am:9093/api/v2/alerts", 30.0)
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
        "alertmanager",
        "mqtt",
        "webhook",
    ]
    assert list(d.stats) == ["log", "webhook", "mqtt", "alertmanager"]


def test_the_log_always_gets_every_transition(caplog: pytest.LogCaptureFixture) -> None:
    d = AlertDispatcher.from_config(AlertsConfig())
    assert d.notifiers == []
    with caplog.at_level(logging.INFO, logger="riskmon.notify"):
        d.submit([transition(0, state="pending", previous="inactive"), transition(1)])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        (
            "INFO",
            "alert margin_utilisation/main/- inactive -> pending: "
            "main: margin utilisation 80% (step 0)",
        ),
        (
            "WARNING",
            "alert margin_utilisation/main/- pending -> firing: "
            "main: margin utilisation 80% (step 1)",
        ),
    ]
    assert caplog.records[1].__dict__["alert_key"] == transition(1).idempotency_key
    assert (d.stats["log"].submitted, d.stats["log"].delivered) == (2, 2)
