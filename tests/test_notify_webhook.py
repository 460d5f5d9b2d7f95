"""The webhook notifier against a real HTTP receiver on a loopback port the test picks.

The receiver misbehaves the way real ones do: it answers 500, goes away (connection
refused), comes back, and loses a response after it processed the request. Every
transition must arrive, each key exactly once after the receiver drops duplicates by
``Idempotency-Key``, in the order submitted.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web
from tools import running

from monitor.model.alert import Alert, AlertState, Severity, Transition
from monitor.notify import AlertDispatcher, WebhookNotifier, transition_payload

T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
TOKEN = "s3cret-t0ken"

Mode = Literal["accept", "fail500", "fail429", "drop_response", "hang", "reject400"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def transition(
    i: int,
    *,
    state: AlertState = "firing",
    previous: AlertState = "pending",
    account: str | None = "main",
    underlying: str | None = None,
    severity: Severity = "warning",
) -> Transition:
    ts = T0_MS + 1000 * i
    alert = Alert(
        rule="margin_utilisation",
        severity=severity,
        state=state,
        account=account,
        underlying=underlying,
        value=round(0.8 + i / 100, 2),
        threshold=0.75,
        since_ms=ts,
        active_since_ms=T0_MS,
        summary=f"main: margin utilisation {0.8 + i / 100:.0%} of equity (step {i})",
    )
    return Transition(alert=alert, previous=previous, ts_ms=ts)


@dataclass
class Request:
    headers: dict[str, str]
    body: dict[str, Any]
    answered: str  # what the receiver did: "200", "500", "429", "400", "dropped", "hung"


@dataclass
class Receiver:
    """A webhook endpoint whose behaviour the test scripts, request by request.

    ``script`` gives the mode of the next requests, in order; when it runs out, ``mode``
    applies. It can be stopped (connection refused) and started again on the same port.
    """

    port: int = field(default_factory=free_port)
    mode: Mode = "accept"
    script: list[Mode] = field(default_factory=list)
    reject: Callable[[dict[str, Any]], bool] = lambda body: False
    requests: list[Request] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/riskmon"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/riskmon", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        mode = self.script.pop(0) if self.script else self.mode
        if self.reject(body):
            mode = "reject400"
        answered = {
            "drop_response": "dropped",
            "hang": "hung",
            "fail500": "500",
            "fail429": "429",
            "reject400": "400",
        }.get(mode, "200")
        self.requests.append(Request(dict(request.headers), body, answered))
        if mode == "fail500":
            return web.Response(status=500, text="database is locked")
        if mode == "fail429":
            return web.Response(status=429, headers={"Retry-After": "0"})
        if mode == "reject400":
            return web.Response(status=400, text="unknown rule")
        if mode == "drop_response":  # processed, then the connection dies before the answer
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=200)
        if mode == "hang":
            await self.release.wait()
        return web.Response(status=200, text="ok")

    # -- what the receiver's owner sees -----------------------------------------------------

    def accepted_keys(self) -> list[str]:
        """Keys of processed requests (a dropped response was processed), duplicates kept."""
        processed = ("200", "dropped", "hung")
        return [r.headers["Idempotency-Key"] for r in self.requests if r.answered in processed]

    def deduped(self) -> list[str]:
        """What a receiver that drops repeated ``Idempotency-Key`` values keeps, in order."""
        return list(dict.fromkeys(self.accepted_keys()))


async def wait_until(pred: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    step_s = 0.01
    for _ in range(int(timeout_s / step_s)):
        if pred():
            return
        await asyncio.sleep(step_s)
    raise AssertionError(f"timed out waiting for {what}")


def notifier(url: str) -> WebhookNotifier:
    return WebhookNotifier(url, timeout_s=2.0, max_backoff_s=0.2, token=TOKEN)


async def test_every_transition_arrives_once_per_key_through_500s_an_outage_and_a_lost_response(
    tmp_path: Path,
) -> None:
    receiver = Receiver(script=["fail500", "fail500", "fail500"])
    d = AlertDispatcher(
        [notifier(receiver.url)], tmp_path, rng=random.Random(7), initial_backoff_s=0.02
    )
    ts = [
        transition(0, state="pending", previous="inactive"),
        transition(1),
        transition(2, severity="critical", previous="firing"),
        transition(3, state="resolved", previous="firing", severity="critical"),
        transition(4, account=None, underlying="BTC"),
    ]
    stats = d.stats["webhook"]
    await receiver.start()
    try:
        async with running(d):
            d.submit(ts[:2])
            await d.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: len(receiver.requests) >= 3, "three 500s")
            await receiver.stop()  # down: connection refused for a while
            retries = stats.retries
            d.submit(ts[2:4])  # the engine goes on while the receiver is away
            await d.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: stats.retries >= retries + 3, "retries while down")
            assert len(receiver.requests) == 3
            assert stats.pending == 4
            receiver.script = ["drop_response"]  # back, but loses its first answer
            await receiver.start()
            d.submit(ts[4:])
            await d.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: stats.pending == 0, "the outbox to drain")
    finally:
        await receiver.stop()

    keys = [t.idempotency_key for t in ts]
    assert [r.answered for r in receiver.requests][:4] == ["500", "500", "500", "dropped"]
    assert receiver.requests[0].headers["Idempotency-Key"] == keys[0]
    # The dropped response made the dispatcher send that key again: a duplicate the
    # receiver recognises by its key, not a second alert.
    assert receiver.accepted_keys() == [keys[0], *keys]
    assert receiver.deduped() == keys
    assert (stats.submitted, stats.delivered, stats.failed) == (5, 5, 0)
    assert stats.retries >= 3 + 3 + 1
    assert list(tmp_path.joinpath("webhook").iterdir()) == []

    by_key = {r.headers["Idempotency-Key"]: r for r in receiver.requests if r.answered == "200"}
    for t in ts:
        r = by_key[t.idempotency_key]
        assert r.headers["Authorization"] == f"Bearer {TOKEN}"
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["User-Agent"].startswith("riskmon/")
        assert r.body == json.loads(json.dumps(transition_payload(t)))
        assert r.body["key"] == t.idempotency_key
    first = by_key[keys[3]].body
    assert first["schema"] == 1
    assert first["rule"] == "margin_utilisation"
    assert (first["from"], first["state"], first["severity"]) == ("firing", "resolved", "critical")
    assert first["account"] == "main"
    assert first["underlying"] is None
    assert first["ts"] == "2026-01-01T00:00:03.000Z"
    assert first["ts_ms"] == T0_MS + 3000
    assert first["value"] == 0.83
    assert first["threshold"] == 0.75
    assert first["summary"] == "main: margin utilisation 83% of equity (step 3)"
    assert first["instance"] == "margin_utilisation/main/-"
    book = by_key[keys[4]].body
    assert (book["account"], book["underlying"], book["instance"]) == (
        None,
        "BTC",
        "margin_utilisation/-/BTC",
    )


async def test_a_refused_transition_is_dropped_and_counted_retryable_ones_are_not(
    tmp_path: Path,
) -> None:
    bad = transition(1, account="typo")
    receiver = Receiver(
        script=["fail500", "fail429"], reject=lambda body: body["key"] == bad.idempotency_key
    )
    d = AlertDispatcher(
        [WebhookNotifier(receiver.url, timeout_s=2.0, max_backoff_s=0.2)],
        tmp_path,
        rng=random.Random(1),
        initial_backoff_s=0.02,
    )
    ts = [transition(0), bad, transition(2)]
    await receiver.start()
    try:
        async with running(d):
            d.submit(ts)
            await d.flush()  # the writer thread has put it in the outbox
            await wait_until(lambda: d.stats["webhook"].pending == 0, "the outbox to drain")
    finally:
        await receiver.stop()
    s = d.stats["webhook"]
    assert (s.delivered, s.failed, s.retries) == (2, 1, 2)
    assert s.last_error == "PermanentDeliveryError: HTTP 400 from webhook: unknown rule"
    assert [r.answered for r in receiver.requests] == ["500", "429", "200", "400", "200"]
    assert receiver.deduped() == [ts[0].idempotency_key, ts[2].idempotency_key]
    assert "Authorization" not in receiver.requests[0].headers  # no token configured
    assert list(tmp_path.joinpath("webhook").iterdir()) == []
