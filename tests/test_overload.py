"""Overload: a producer far faster than the engine.

Prices conflate (only the latest tick per instrument waits), positions never drop (the
producer waits for room instead), the queue stays bounded, and the books balance exactly:
every price tick sent is either applied or counted in ``riskmon_conflated_prices_total``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
from prometheus_client import generate_latest

from connectors.base import EventSink
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.model.events import PositionEvent, PriceEvent
from monitor.model.health import ConnectorStatus

T0 = 1_767_225_600_000
INSTRUMENTS = [f"U{i:02d}-PERPETUAL" for i in range(50)]
PRICES = 200_000
POSITIONS = 5_000
QUEUE_SIZE = 64


class Flood:
    """Sends everything as fast as the sink takes it, sampling the queue as it goes."""

    def __init__(self, daemon_queue_len: list[int]) -> None:
        self._status = ConnectorStatus(name="flood", kind="test")
        self.max_depth = 0
        self.sent_prices: dict[str, float] = {}
        self.sent_positions: dict[tuple[str, str], float] = {}
        self.done = asyncio.Event()
        self._depth = daemon_queue_len

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    async def run(self, sink: EventSink) -> None:
        self._status.connected = True
        every = PRICES // POSITIONS
        for k in range(PRICES):
            name = INSTRUMENTS[k % len(INSTRUMENTS)]
            price = 1000.0 + k
            await sink.put(PriceEvent(ts=T0 + k // 100, instrument=name, price=price), "flood")
            self.sent_prices[name] = price
            if k % every == 0:
                j = k // every
                key = (f"acct{j % 7}", INSTRUMENTS[j % len(INSTRUMENTS)])
                qty = float(j - 2_500)
                await sink.put(
                    PositionEvent(
                        ts=T0 + k // 100, account=key[0], instrument=key[1], quantity=qty
                    ),
                    "flood",
                )
                self.sent_positions[key] = qty
            if k % 1000 == 0:
                self.max_depth = max(self.max_depth, self._depth[0])
                await asyncio.sleep(0)  # let the engine run now and then, as a socket would
        self.done.set()
        await asyncio.Event().wait()


async def test_prices_conflate_positions_never_drop_and_the_queue_stays_bounded(
    tmp_path: Path,
) -> None:
    cfg = load_config(env={})
    cfg = msgspec.structs.replace(
        cfg,
        server=msgspec.structs.replace(cfg.server, listen="127.0.0.1:0"),
        engine=msgspec.structs.replace(cfg.engine, queue_size=QUEUE_SIZE),
    )
    depth = [0]
    flood = Flood(depth)
    daemon = Daemon(cfg, connectors=[flood])
    queue = daemon._queue
    original_put = queue.put

    async def put(event: object, source: str) -> None:
        await original_put(event, source)  # type: ignore[arg-type]
        depth[0] = max(depth[0], len(queue))

    queue.put = put  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    await asyncio.wait_for(flood.done.wait(), 300)
    stats = daemon.engine.stats

    def drained() -> bool:
        return len(queue) == 0 and stats.accepted[("flood", "price")] + queue.conflated == PRICES

    for _ in range(3000):
        if drained():
            break
        await asyncio.sleep(0.01)
    evaluated = stats.evaluations
    for _ in range(3000):  # one evaluation after the last event was applied
        if stats.evaluations > evaluated:
            break
        await asyncio.sleep(0.01)
    body = generate_latest(daemon.registry).decode()
    stop.set()
    await asyncio.wait_for(task, 30)

    # Every tick sent was applied or conflated; none vanished.
    assert stats.accepted[("flood", "price")] + queue.conflated == PRICES
    assert queue.conflated > 0
    assert f"riskmon_conflated_prices_total {float(queue.conflated)}" in body
    # Positions: every one applied, none dropped.
    assert stats.accepted[("flood", "position")] == POSITIONS
    snap = daemon.snapshot
    assert snap is not None
    book = {
        (account, row["instrument"]): row["quantity"]
        for account, fig in snap.report()["accounts"].items()
        for row in fig["positions"]
    }
    assert book == {k: v for k, v in flood.sent_positions.items() if v != 0.0}
    # Prices: the latest of each instrument won.
    report = snap.report()
    priced = {
        row["instrument"]: row["price"]
        for fig in report["accounts"].values()
        for row in fig["positions"]
    }
    assert priced == {name: flood.sent_prices[name] for name in priced}
    # Bounded: positions waiting (at most QUEUE_SIZE) plus one price per instrument.
    assert depth[0] <= QUEUE_SIZE + len(INSTRUMENTS)
    print(f"max queue depth {depth[0]}, conflated {queue.conflated:,} of {PRICES:,} ticks")
