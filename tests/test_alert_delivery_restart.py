"""Nothing lost: alerts fired while the webhook is down survive a daemon restart.

Two real ``riskmon run`` processes share one outbox. The first fires alerts (a margin rule
made to trip at once on the simulated book) while the webhook receiver is down, and is
stopped with SIGTERM; the second starts, the receiver comes up, and every transition that
either daemon logged arrives exactly once per idempotency key; the outbox ends empty.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CONFIG = """
[server]
listen = "127.0.0.1:0"

[alerts]
outbox = "{outbox}"

[alerts.webhook]
url = "http://127.0.0.1:{port}/hook"
max_backoff = "500ms"

# Trip at once on the demo book: the options account's utilisation is above 5%.
[[rules]]
name = "margin_utilization"
warning = 0.05
critical = 0.99
clear = 0.04
for = "0s"
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Run:
    """A ``riskmon run`` process whose JSON log lines are collected as they come."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("RISKMON_")},
        )
        self.logs: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.logs.append(json.loads(line))

    def alert_keys(self) -> list[str]:
        return [r["alert_key"] for r in list(self.logs) if "alert_key" in r and "error" not in r]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self._reader.join(timeout=5)
        return code


class Receiver:
    """The webhook endpoint: records every delivery's Idempotency-Key and body."""

    def __init__(self, port: int) -> None:
        received: list[tuple[str, dict[str, Any]]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.headers["Idempotency-Key"], json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


def test_transitions_survive_a_restart_while_the_webhook_is_down(
    tmp_path: Path, runs: list[Run]
) -> None:
    outbox = tmp_path / "outbox"
    port = _free_port()
    config = tmp_path / "riskmon.toml"
    config.write_text(CONFIG.format(outbox=outbox, port=port))

    first = Run(config)
    runs.append(first)
    _wait(lambda: len(first.alert_keys()) >= 1, 30, "the first run to fire its alerts")
    _wait(lambda: len(list((outbox / "webhook").glob("*.json"))) >= 1, 10, "the outbox")
    assert first.stop() == 0
    first_keys = first.alert_keys()
    assert len(list((outbox / "webhook").glob("*.json"))) == len(first_keys)

    second = Run(config)
    runs.append(second)
    _wait(lambda: len(second.alert_keys()) >= 1, 30, "the second run to fire its alerts")
    receiver = Receiver(port)
    try:
        expected = set(first_keys)
        _wait(
            lambda: expected | set(second.alert_keys()) <= {k for k, _ in receiver.received},
            30,
            "every transition to be delivered",
        )
        _wait(lambda: not list((outbox / "webhook").glob("*.json")), 10, "an empty outbox")
        assert second.stop() == 0
    finally:
        receiver.close()

    logged = first_keys + second.alert_keys()
    counts = Counter(k for k, _ in receiver.received)
    assert set(counts) == set(logged)
    assert all(n == 1 for n in counts.values()), counts.most_common(3)
    assert any(r["msg"].startswith("outbox: alert transitions pending") for r in second.logs)
    bodies = {k: body for k, body in receiver.received}
    some = bodies[first_keys[0]]
    assert some["rule"] == "margin_utilization"
    assert some["key"] == first_keys[0]
    assert some["state"] == "firing"
