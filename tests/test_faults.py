"""Faults injected into a running daemon (in process, loopback only): the state directory
on a full and then read-only filesystem, and a wall clock that jumps back and forward.

After each: the daemon goes on evaluating, ``/-/ready`` answers 200 with a snapshot, no
alert transition is lost, and the fault is visible (a counted, logged failed save; a stale
data alert while the clock is ahead of the prices).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from tools import wait_until

from connectors.simulated import SimulatedMarket
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.engine.state import StateStore

CONFIG = """
[server]
listen = "127.0.0.1:0"
[state]
interval = "1s"
[estimator]
sample_interval = "100ms"
halflife = "5s"
fast_halflife = "1s"
warmup = "1s"
max_gap = "5s"
var_halflife = "10s"
[risk]
eval_interval = "100ms"
[[rules]]
name = "stale_data"
warning = 30.0
critical = 600.0
clear = 20.0
for = "0s"
"""


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "riskmon.toml"
    path.write_text(CONFIG)
    return path


@contextlib.contextmanager
def small_tmpfs(path: Path) -> Iterator[bool]:
    """A 1 MiB tmpfs at ``path`` when this process may mount one (root), else nothing."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


async def remount(path: Path, mode: str) -> None:
    proc = await asyncio.create_subprocess_exec("mount", "-o", f"remount,{mode}", str(path))
    assert await proc.wait() == 0


async def _ready(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/-/ready") as r:
        return r.status


async def test_state_directory_full_then_read_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real 1 MiB tmpfs (as root; else an os.write that fails with ENOSPC, and EROFS):
    saves fail, are counted and logged, the previous snapshot stays intact, the daemon
    evaluates on; once there is room again saves succeed."""
    cfg = load_config(_config(tmp_path), env={})
    mount = tmp_path / "state"
    failing: list[int] = []  # errno to raise from os.write, when no tmpfs can be mounted

    def write(fd: int, data: bytes | memoryview) -> int:
        if failing:
            raise OSError(failing[0], os.strerror(failing[0]))
        return os.write(fd, data)

    with small_tmpfs(mount) as mounted, caplog.at_level(logging.WARNING, "riskmon"):
        store = StateStore(mount, write=write)
        daemon = Daemon(
            cfg, connectors=[SimulatedMarket(tick_interval_ms=50, seed=2)], state_store=store
        )
        stats = daemon.engine.stats
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop), name="test.daemon")
        try:
            await wait_until(lambda: stats.state_writes["ok"] >= 1, "a first save")
            # Fill the disk (or make every write fail), then wait for failed saves.
            filler = mount / "filler"
            if mounted:
                with contextlib.suppress(OSError), filler.open("wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            else:
                failing.append(28)  # ENOSPC
            errors = stats.state_writes["error"]
            await wait_until(lambda: stats.state_writes["error"] >= errors + 1, "a failed save")
            good = store.path.read_bytes()  # the last good save, from before the disk filled
            await wait_until(lambda: stats.state_writes["error"] >= errors + 3, "failed saves")
            evaluations = stats.evaluations
            await wait_until(lambda: stats.evaluations > evaluations + 5, "evaluations go on")
            assert daemon.http is not None
            assert await _ready(daemon.http.url) == 200
            # The last good snapshot is intact and still restorable; no temp file is left.
            assert store.path.read_bytes() == good
            loaded = store.load(time.time_ns() // 1_000_000, 3_600_000)
            assert loaded.result.value == "restored"
            assert sorted(p.name for p in mount.iterdir() if p.name != "filler") == [
                "riskmon.state"
            ]
            assert any("saving the state failed" in r.getMessage() for r in caplog.records)

            # Read-only now (room again, but no writes allowed).
            errors = stats.state_writes["error"]
            if mounted:
                filler.unlink()
                await remount(mount, "ro")
            else:
                failing[0] = 30  # EROFS
            await wait_until(lambda: stats.state_writes["error"] >= errors + 2, "failed (ro)")
            assert daemon.http is not None
            assert await _ready(daemon.http.url) == 200

            # Writable again: saves succeed and the file is whole.
            oks = stats.state_writes["ok"]
            if mounted:
                await remount(mount, "rw")
            else:
                failing.clear()
            await wait_until(lambda: stats.state_writes["ok"] >= oks + 1, "a save once writable")
            assert store.load(time.time_ns() // 1_000_000, 3_600_000).result.value == "restored"
        finally:
            stop.set()
            await asyncio.wait_for(task, 60)


async def test_wall_clock_jumps_back_and_forward(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The daemon's wall clock steps back an hour, then forward ten minutes past the truth
    (the venue's timestamps stay right): evaluations never stop and never go back in time;
    ahead of the prices, held positions read as stale and stale_data fires; no alert
    transition is lost (the history only grows)."""
    cfg = load_config(_config(tmp_path), env={"RISKMON_STATE__ENABLED": "false"})
    offset_ms = [0]

    def clock() -> int:
        return time.time_ns() // 1_000_000 + offset_ms[0]

    daemon = Daemon(cfg, connectors=[SimulatedMarket(tick_interval_ms=50, seed=2)], wall_ms=clock)
    stats = daemon.engine.stats
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="test.daemon")

    def snap_as_of() -> int:
        snap = daemon.snapshot
        return -1 if snap is None else snap.as_of_ms

    try:
        await wait_until(lambda: snap_as_of() > 0 and stats.evaluations > 5, "first snapshots")
        assert daemon.http is not None
        with caplog.at_level(logging.WARNING, "riskmon"):
            before = snap_as_of()
            history = daemon.snapshot.alert_history if daemon.snapshot else ()
            offset_ms[0] = -3_600_000
            evaluations = stats.evaluations
            await wait_until(lambda: stats.evaluations > evaluations + 10, "evaluations go on")
            assert snap_as_of() >= before  # never back
            assert await _ready(daemon.http.url) == 200
            assert any("wall clock went back" in r.getMessage() for r in caplog.records)

        offset_ms[0] = 600_000
        await wait_until(lambda: snap_as_of() >= clock() - 1_000, "the clock ahead")
        ahead = snap_as_of()

        def stale_firing() -> bool:
            snap = daemon.snapshot
            return snap is not None and any(
                a.rule == "stale_data" and a.state == "firing" for a in snap.alerts
            )

        await wait_until(stale_firing, "stale_data while the clock is ahead")
        assert await _ready(daemon.http.url) == 200
        snap = daemon.snapshot
        assert snap is not None
        assert snap.as_of_ms >= ahead
        # Every transition seen before the jumps is still in the history, in order.
        assert snap.alert_history[: len(history)] == history
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
