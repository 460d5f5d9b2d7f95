"""Helpers the integration tests share: the real tools they run, found and invoked alike."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from monitor.engine.stats import EngineStats
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
