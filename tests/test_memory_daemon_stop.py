"""A stopping daemon does not wait for the scenario pass in flight: the pass is cancelled
(:func:`monitor.quant.margin.cancellable`) and stops at its next check.

The pass is held inside the distance scan (its model grid) until the daemon's cancellation
event is set, standing in for a pass that would run for minutes; stop must release it. No
timing is asserted: ``asyncio.wait_for`` bounds only how long a broken stop is waited for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import monitor.quant.margin as margin
from connectors.base import EventSink
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.model.events import AccountEvent, PositionEvent, PriceEvent
from monitor.model.health import ConnectorStatus
from monitor.quant.margin import Cancelled


class _Book:
    """One account: a BTC perpetual and a short ETH call three months out, with the venue's
    equity and margins (so the pass computes the distance to a call), then quiet."""

    def __init__(self) -> None:
        self._status = ConnectorStatus("book", "test")

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    async def run(self, sink: EventSink) -> None:
        now = int(time.time() * 1000)
        d = dt.date.today() + dt.timedelta(days=90)
        option = f"ETH-{d.day}{d.strftime('%b').upper()}{d.strftime('%y')}-3200-C"
        for ev in (
            PriceEvent(now, "BTC", 90_000.0),
            PriceEvent(now, "ETH", 3_000.0),
            PriceEvent(now, "BTC-PERPETUAL", 90_000.0),
            PriceEvent(now, option, 150.0, 0.7, 3_006.0),
            PositionEvent(now, "a", "BTC-PERPETUAL", 3.0),
            PositionEvent(now, "a", option, -40.0),
            AccountEvent(now, "a", 400_000.0, 80_000.0, 50_000.0),
        ):
            await sink.put(ev, "book")
        self._status.connected = True
        await asyncio.Event().wait()


async def test_stop_cancels_the_scenario_pass_in_flight(monkeypatch: Any) -> None:
    entered = threading.Event()
    real = margin._model_grid

    def held(*args: Any) -> Any:
        if entered.is_set():  # only the first pass is held
            return real(*args)
        entered.set()
        cancel = getattr(margin._cancel, "event", None)  # this thread's, if cancellable
        # Held until the daemon cancels the pass (a bound only so that a broken stop does
        # not leave this thread behind the test run).
        if cancel is not None:
            cancel.wait(120)
        else:
            time.sleep(120)
        return real(*args)

    monkeypatch.setattr(margin, "_model_grid", held)
    cfg = load_config(None, listen="127.0.0.1:0")
    daemon = Daemon(cfg, connectors=[_Book()])
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        assert await asyncio.to_thread(entered.wait, 60), "no scenario pass reached the scan"
        evaluator = daemon.engine._evaluator
        pending = evaluator._pending
        assert pending is not None
        assert not pending.done()
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    # The pass stopped at its next check, its figures not adopted.
    assert isinstance(pending.exception(timeout=0), Cancelled)
    # (The pool has shut down: the stopped daemon's engine runs its passes in the caller.)
    now = int(time.time() * 1000)
    daemon.engine.evaluate(now)
    assert evaluator._pending is not pending
    report = daemon.engine.evaluate(now + 1).report()
    margin_figures = report["accounts"]["a"]["margin"]
    assert margin_figures["scenarios_as_of"] is not None  # that pass's figures, adopted
    assert margin_figures["scenario_margin"] > 0.0
