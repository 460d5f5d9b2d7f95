"""A live run and the replay of its recording give the same volatility and correlation.

The daemon runs the simulated market on the wall clock, recording every accepted event;
replaying the recording on event time must rebuild the same estimator state, because both
sample on event time (time is passed in, never read from the wall clock).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from connectors.replay import iter_batches
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.engine.core import Engine
from monitor.settings import engine_settings

CONFIG = """
[server]
listen = "127.0.0.1:0"
[estimator]
sample_interval = "100ms"
halflife = "3s"
fast_halflife = "500ms"
warmup = "1s"
max_gap = "5s"
[risk]
eval_interval = "100ms"
[[connectors]]
type = "simulated"
seed = 3
tick_interval = "25ms"
"""


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
async def test_replay_of_live_recording_reproduces_estimates(tmp_path: Path, suffix: str) -> None:
    cfg_path = tmp_path / "riskmon.toml"
    cfg_path.write_text(CONFIG)
    cfg = load_config(cfg_path, env={})
    record = tmp_path / f"live{suffix}"
    daemon = Daemon(cfg, record_path=record)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop), name="test.daemon")
    # Run until the live engine has sampled enough grid points, however loaded the machine
    # is (2 minutes at most: only a guard against a hang).
    for _ in range(2_400):
        if daemon.engine.stats.samples > 40 or task.done():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 60)

    live = daemon.engine
    assert live.stats.samples > 20, "the live run sampled the grid"
    accepted = sum(live.stats.accepted.values())

    replayed = Engine(engine_settings(cfg))
    events = 0
    last_ts = 0
    for batch in iter_batches(record):
        assert batch.rejections == []
        replayed.replay(batch.events, "replay")
        events += len(batch.events)
        last_ts = max(last_ts, *(int(e.ts) for e in batch.events if e.ts is not None))
    assert events == accepted, "the recording holds every accepted event"

    for fast in (False, True):
        np.testing.assert_allclose(
            replayed.estimator.covariance(fast=fast),
            live.estimator.covariance(fast=fast),
            rtol=1e-12,
            atol=0.0,
        )
    np.testing.assert_array_equal(replayed.estimator.returns, live.estimator.returns)

    # The live engine's clock may already be past the last event (it evaluated on the wall
    # clock after it), and an evaluation with nothing new re-dates the last full one: both
    # are evaluated in full at the same time, or option deltas would differ by their time
    # decay in between (the intermittent 5e-6 relative). The live engine's state goes into
    # a fresh engine (no stopped scenario executor; a restored engine evaluates in full).
    at = max(last_ts, live.snapshot.as_of_ms if live.snapshot is not None else 0)
    restored = Engine(live.settings)
    restored.restore(live.state())
    a, b = restored.evaluate(at), replayed.evaluate(at)
    assert a.as_of_ms == b.as_of_ms == at
    np.testing.assert_allclose(a.assets.volatility, b.assets.volatility, rtol=1e-12)
    np.testing.assert_allclose(a.assets.correlation, b.assets.correlation, rtol=1e-12)
    assert a.accounts.keys() == b.accounts.keys()
    for name in a.accounts:
        assert a.accounts[name].exposure_usd == pytest.approx(b.accounts[name].exposure_usd)
