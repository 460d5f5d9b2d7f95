"""Helpers the integration tests share: the real tools they run, found and invoked alike."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor.engine.stats import EngineStats
from monitor.model.events import AccountEvent, Event, PositionEvent, Rejected
from monitor.model.health import ConnectorStatus
from monitor.model.snapshot import RiskSnapshot
from monitor.notify import AlertDispatcher, NotifierStats


def required_tool(name: str) -> str:
    """Path of a tool tests/run.sh installs: skipped locally when missing, a failure in CI."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is required in CI (tests/run.sh installs it)")
        pytest.skip(f"{name} is not installed (bash tests/run.sh installs it)")
    return path


def run(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a tool to completion (60 s at most), capturing its text output."""
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def assert_promtool_clean(exposition: bytes) -> None:
    """``promtool check metrics`` accepts the exposition without a single remark."""
    result = subprocess.run(
        [required_tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


@dataclass
class StaticView:
    """A real ``MonitorView``: plain attributes satisfy the read-only protocol properties."""

    snapshot: RiskSnapshot | None = None
    stats: EngineStats = field(default_factory=EngineStats)
    connectors: list[ConnectorStatus] = field(default_factory=list)
    started_s: float = 1_767_225_000.0
    notifiers: dict[str, NotifierStats] = field(default_factory=dict)


@asynccontextmanager
async def running(dispatcher: AlertDispatcher) -> AsyncIterator[asyncio.Task[None]]:
    """Run an alert dispatcher for the block's duration, owned by a TaskGroup."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(dispatcher.run(), name="test.dispatcher")
        try:
            yield task
        finally:
            task.cancel()


# --- venue connectors --------------------------------------------------------------------


@dataclass
class RecordingSink:
    """An ``EventSink`` that keeps what one connector (``source``) delivers."""

    source: str
    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    async def put(self, event: Event, source: str) -> None:
        assert source == self.source
        self.events.append(event)

    def reject(self, source: str, rejected: Rejected) -> None:
        self.rejected.append(rejected)

    def folded(self) -> dict[str, float]:
        """The last quantity per instrument, positions at 0 left out."""
        out: dict[str, float] = {}
        for ev in self.events:
            if isinstance(ev, PositionEvent):
                out[ev.instrument] = ev.quantity
        return {k: v for k, v in out.items() if v != 0.0}

    def quantities(self, instrument: str) -> list[float]:
        """Every quantity delivered for ``instrument``, in order."""
        return [
            e.quantity
            for e in self.events
            if isinstance(e, PositionEvent) and e.instrument == instrument
        ]

    def equity(self) -> float | None:
        """The latest account event's equity."""
        accounts = [e for e in self.events if isinstance(e, AccountEvent)]
        return accounts[-1].equity if accounts else None


async def wait_until(pred: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait for ``pred()`` to hold, polling; generous by default so load cannot fail a test."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- a real Mosquitto -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A broker of the test's own, on a free loopback port; restartable on that port.

    With ``persistence`` it saves sessions and queued QoS 1 messages to ``tmp`` on a clean
    stop and reloads them on start, as a production broker would be configured.
    """

    def __init__(self, binary: str, tmp: Path, *, persistence: bool = False) -> None:
        self.binary = binary
        self.port = free_port()
        self.config = tmp / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "log_dest stderr"]
        if persistence:
            lines += ["persistence true", f"persistence_location {tmp}/"]
        self.config.write_text("\n".join(lines) + "\n")
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                s.settimeout(0.5)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mosquitto did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def mosquitto_binary() -> str:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    sbin = Path("/usr/sbin/mosquitto")
    if shutil.which("mosquitto") is None and os.access(sbin, os.X_OK):
        return str(sbin)
    return required_tool("mosquitto")
