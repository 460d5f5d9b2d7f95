"""The conflating queue: prices conflate, everything else waits and is never dropped."""

from __future__ import annotations

import asyncio

from monitor.engine.queue import EventQueue
from monitor.model.events import AccountEvent, PositionEvent, PriceEvent

TS = 1_767_225_600_000


async def test_prices_conflate_latest_wins_others_keep_order() -> None:
    q = EventQueue(maxsize=10)
    await q.put(PriceEvent(TS, "BTC", 1.0), "a")
    await q.put(PositionEvent(TS, "acc", "BTC-PERPETUAL", 1.0), "a")
    await q.put(PriceEvent(TS, "ETH", 5.0), "a")
    await q.put(PriceEvent(TS + 1, "BTC", 2.0), "b")
    await q.put(AccountEvent(TS, "acc", 10.0), "a")
    assert len(q) == 4
    out = q.drain()
    assert [type(e).__name__ for e, _ in out] == [
        "PositionEvent",
        "AccountEvent",
        "PriceEvent",
        "PriceEvent",
    ]
    assert [(e.price, s) for e, s in out[2:]] == [(2.0, "b"), (5.0, "a")]  # type: ignore[union-attr]
    assert q.conflated == 1
    assert len(q) == 0


async def test_full_queue_applies_backpressure_without_dropping() -> None:
    q = EventQueue(maxsize=2)
    for k in range(2):
        await q.put(PositionEvent(TS, "acc", "BTC-PERPETUAL", float(k)), "a")
    blocked = asyncio.create_task(q.put(PositionEvent(TS, "acc", "BTC-PERPETUAL", 2.0), "a"))
    await asyncio.sleep(0.01)
    assert not blocked.done()
    first = q.drain()
    await asyncio.wait_for(blocked, 1.0)
    second = q.drain()
    assert [e.quantity for e, _ in first + second] == [0.0, 1.0, 2.0]  # type: ignore[union-attr]


async def test_wait_returns_on_put_or_timeout() -> None:
    q = EventQueue(maxsize=2)
    assert await q.wait(0.01) is False
    waiter = asyncio.create_task(q.wait(5.0))
    await asyncio.sleep(0)
    await q.put(PriceEvent(TS, "BTC", 1.0), "a")
    assert await asyncio.wait_for(waiter, 1.0) is True
