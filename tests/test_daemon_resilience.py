"""The daemon outlives a connector that crashes: it is restarted, the others go on."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

from connectors.base import EventSink
from connectors.simulated import SimulatedMarket
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.model.backoff import Backoff
from monitor.model.health import ConnectorStatus


class CrashingConnector:
    """Fails twice the way a buggy venue adapter would, then runs quietly."""

    def __init__(self) -> None:
        self._status = ConnectorStatus(name="flaky", kind="test")
        self.starts = 0

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    async def run(self, sink: EventSink) -> None:
        self.starts += 1
        if self.starts <= 2:
            raise RuntimeError(f"venue sent nonsense (start {self.starts})")
        self._status.connected = True
        await asyncio.Event().wait()


async def test_crashing_connector_is_restarted_and_others_keep_running(tmp_path: Path) -> None:
    cfg_path = tmp_path / "riskmon.toml"
    cfg_path.write_text('[server]\nlisten = "127.0.0.1:0"\n')
    cfg = load_config(cfg_path, env={})
    flaky = CrashingConnector()
    sim = SimulatedMarket(tick_interval_ms=50)
    daemon = Daemon(cfg, connectors=[flaky, sim])
    daemon._restart_backoff = Backoff(initial=0.05, cap=0.1, rng=random.Random(1))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    for _ in range(100):
        await asyncio.sleep(0.05)
        if flaky.starts >= 3 and daemon.engine.stats.evaluations > 3:
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    assert flaky.starts == 3
    assert flaky.status.reconnects == 2
    assert flaky.status.connected
    assert flaky.status.last_error == "RuntimeError: venue sent nonsense (start 2)"
    assert daemon.engine.stats.accepted[("simulated", "price")] > 0
    assert daemon.snapshot is not None
