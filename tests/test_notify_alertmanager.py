"""The Alertmanager notifier against a real Alertmanager on a loopback port the test picks.

Alertmanager (Debian's ``prometheus-alertmanager``, clustering off) routes everything to a
webhook receiver the test serves itself, with short group timings. The dispatcher posts
firing alerts, re-sends them, changes one's severity and resolves both; the test checks
what Alertmanager holds (``GET /api/v2/alerts``) and what it forwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tools import required_tool, running

from monitor.model.alert import Alert, AlertState, Severity, Transition
from monitor.notify import AlertDispatcher, AlertmanagerNotifier

RESEND_S = 0.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def parse_time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Hook:
    """The webhook Alertmanager notifies: keeps every notification it gets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.notifications: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alertmanager", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.Response(text="ok")

    async def alerts(self, status: str) -> list[dict[str, Any]]:
        """Alerts with ``status`` in every notification so far."""
        return [a for n in self.notifications for a in n["alerts"] if a["status"] == status]


class Alertmanager:
    def __init__(self, binary: str, tmp: Path, hook_port: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "alertmanager.yml"
        config.write_text(
            "route:\n"
            "  receiver: test\n"
            "  group_by: [alertname, account, underlying]\n"
            "  group_wait: 100ms\n"
            "  group_interval: 500ms\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: test\n"
            "    webhook_configs:\n"
            f"      - url: http://127.0.0.1:{hook_port}/alertmanager\n"
            "        send_resolved: true\n"
        )
        self.log = tmp / "alertmanager.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.path={tmp / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--cluster.listen-address=",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + 20
        while True:
            try:
                async with http.get(self.url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"alertmanager not ready: {self.log_tail()}")
            await asyncio.sleep(0.1)

    async def alerts(self, http: aiohttp.ClientSession) -> list[dict[str, Any]]:
        async with http.get(self.url + "/api/v2/alerts") as resp:
            assert resp.status == 200
            body: list[dict[str, Any]] = await resp.json()
            return body

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


@pytest.fixture
def alertmanager_binary() -> str:
    return required_tool("prometheus-alertmanager")


def transition(
    rule: str,
    ts_ms: int,
    *,
    state: AlertState = "firing",
    previous: AlertState = "pending",
    account: str | None = "main",
    underlying: str | None = None,
    severity: Severity = "warning",
    since_ms: int | None = None,
    labels: dict[str, str] | None = None,
) -> Transition:
    alert = Alert(
        rule=rule,
        severity=severity,
        state=state,
        account=account,
        underlying=underlying,
        value=0.71,
        threshold=0.5,
        since_ms=ts_ms if since_ms is None else since_ms,
        active_since_ms=ts_ms - 5_000,
        summary=f"{account}: {underlying or 'book'} {rule} ({severity})",
        labels=labels or {},
    )
    return Transition(alert=alert, previous=previous, ts_ms=ts_ms)


async def poll(
    get: Callable[[], Any], pred: Callable[[Any], bool], what: str, timeout_s: float = 15.0
) -> Any:
    """Await ``get()`` until ``pred`` holds on its result; return that result."""
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                value = await get()
                if pred(value):
                    return value
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def by_alertname(alerts: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {a["labels"]["alertname"]: a for a in alerts}


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    h = Hook()
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
def alertmanager(alertmanager_binary: str, tmp_path: Path, hook: Hook) -> Iterator[Alertmanager]:
    am = Alertmanager(alertmanager_binary, tmp_path, hook.port)
    try:
        yield am
    finally:
        am.stop()


async def test_alertmanager_gets_firing_resent_and_resolved_alerts(
    alertmanager: Alertmanager, hook: Hook, tmp_path: Path
) -> None:
    notifier = AlertmanagerNotifier(
        alertmanager.url, resend_interval_s=RESEND_S, timeout_s=5.0, max_backoff_s=0.5
    )
    d = AlertDispatcher(
        [notifier], tmp_path / "outbox", rng=random.Random(2), initial_backoff_s=0.05
    )
    t0 = now_ms()
    margin_pending = transition("margin_utilisation", t0 - 2000, state="pending")
    margin = transition("margin_utilisation", t0, severity="critical")
    drift = transition(
        "risk_drift", t0, underlying="BTC", labels={"budget": "equal"}, since_ms=t0 - 100
    )
    book = transition("correlation_spike", t0, state="pending", account=None)  # not for AM
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await alertmanager.wait_ready(http)
        async with running(d):
            d.submit([margin_pending, margin, drift, book])
            await d.flush()  # the writer thread has put it in the outbox
            assert d.stats["alertmanager"].submitted == 2  # pending goes nowhere

            # Alertmanager holds both, active, with our labels and annotations.
            active = await poll(
                lambda: alertmanager.alerts(http), lambda a: len(a) == 2, "two active alerts"
            )
            am = by_alertname(active)
            assert am["margin_utilisation"]["labels"] == {
                "alertname": "margin_utilisation",
                "severity": "critical",
                "account": "main",
            }
            assert am["risk_drift"]["labels"] == {
                "alertname": "risk_drift",
                "severity": "warning",
                "account": "main",
                "underlying": "BTC",
                "budget": "equal",
            }
            assert am["risk_drift"]["annotations"] == {
                "summary": "main: BTC risk_drift (warning)",
                "value": "0.71",
                "threshold": "0.5",
            }
            assert all(a["status"]["state"] == "active" for a in active)
            assert parse_time(am["risk_drift"]["startsAt"]) == (t0 - 100) / 1000
            ends_first = parse_time(am["margin_utilisation"]["endsAt"])
            # Valid for 4 resend intervals from when it was sent (at or after t0): a bound
            # that holds however long the machine took to get here.
            assert ends_first >= t0 / 1000 + 4 * RESEND_S - 0.001

            # ... and forwards them, firing, to the receiver.
            firing = await poll(
                lambda: hook.alerts("firing"),
                lambda a: (
                    {x["labels"]["alertname"] for x in a} >= {"margin_utilisation", "risk_drift"}
                ),
                "firing notifications",
            )
            fwd = by_alertname(firing)
            assert fwd["margin_utilisation"]["annotations"]["summary"] == (
                "main: book margin_utilisation (critical)"
            )
            assert fwd["risk_drift"]["labels"]["underlying"] == "BTC"

            # While firing, riskmon re-sends: Alertmanager's endsAt moves forward.
            await poll(
                lambda: alertmanager.alerts(http),
                lambda a: (
                    notifier.resends >= 2
                    and parse_time(by_alertname(a)["margin_utilisation"]["endsAt"]) > ends_first
                ),
                "a re-send",
            )

            # Severity change: a new label set; the old severity is resolved at once.
            t1 = now_ms()
            drift_crit = transition(
                "risk_drift",
                t1,
                previous="firing",
                underlying="BTC",
                severity="critical",
                labels={"budget": "equal"},
            )
            d.submit([drift_crit])
            await d.flush()  # the writer thread has put it in the outbox
            active = await poll(
                lambda: alertmanager.alerts(http),
                lambda a: by_alertname(a)["risk_drift"]["labels"]["severity"] == "critical",
                "the severity change",
            )
            assert len(active) == 2

            # Resolve both: endsAt = the transition's time; Alertmanager drops them and
            # notifies the receiver "resolved".
            t2 = now_ms()
            d.submit(
                [
                    transition(
                        "margin_utilisation",
                        t2,
                        state="resolved",
                        previous="firing",
                        severity="critical",
                    ),
                    transition(
                        "risk_drift",
                        t2,
                        state="resolved",
                        previous="firing",
                        underlying="BTC",
                        severity="critical",
                    ),
                ]
            )
            await d.flush()  # the writer thread has put it in the outbox
            await poll(lambda: alertmanager.alerts(http), lambda a: a == [], "no active alert")
            resolved = await poll(
                lambda: hook.alerts("resolved"),
                lambda a: (
                    {(x["labels"]["alertname"], x["labels"]["severity"]) for x in a}
                    >= {
                        ("margin_utilisation", "critical"),
                        ("risk_drift", "warning"),
                        ("risk_drift", "critical"),
                    }
                ),
                "resolved notifications",
            )
            ends = {
                (x["labels"]["alertname"], x["labels"]["severity"]): parse_time(x["endsAt"])
                for x in resolved
            }
            assert ends[("margin_utilisation", "critical")] == t2 / 1000
            assert ends[("risk_drift", "warning")] == t1 / 1000
            assert ends[("risk_drift", "critical")] == t2 / 1000
            assert notifier.active == {}

    s = d.stats["alertmanager"]
    assert (s.submitted, s.delivered, s.failed, s.pending) == (5, 5, 0, 0)
    assert list((tmp_path / "outbox" / "alertmanager").iterdir()) == []
