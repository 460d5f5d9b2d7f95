"""The bounded queue between connectors (producers) and the engine (the single consumer).

Price ticks are conflated: only the latest tick per instrument waits, so a burst of
tickers costs memory bounded by the number of instruments and the engine never works
through stale prices. Positions, accounts and instrument definitions are never dropped:
they wait in FIFO order, and a producer that finds ``maxsize`` of them queued awaits
room (backpressure) instead of losing one.

``drain()`` hands the engine non-price events first (in arrival order), then the
conflated prices in first-arrival order: an instrument definition always precedes the
price it qualifies.
"""

from __future__ import annotations

import asyncio
from collections import deque

from monitor.model.events import Event, PriceEvent

__all__ = ["EventQueue"]


class EventQueue:
    """Single-consumer queue; any number of producers on the same event loop."""

    def __init__(self, maxsize: int) -> None:
        if maxsize <= 0:
            raise ValueError("maxsize must be positive")
        self.maxsize = maxsize
        self._prices: dict[str, tuple[PriceEvent, str]] = {}
        self._others: deque[tuple[Event, str]] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.conflated = 0

    def __len__(self) -> int:
        return len(self._prices) + len(self._others)

    async def put(self, event: Event, source: str) -> None:
        """Enqueue; waits only while ``maxsize`` non-price events are queued."""
        if type(event) is PriceEvent:
            key = event.instrument
            if key in self._prices:
                self.conflated += 1
                # Keep first-arrival order of instruments, latest tick wins.
            self._prices[key] = (event, source)
        else:
            while len(self._others) >= self.maxsize:
                self._room.clear()
                await self._room.wait()
            self._others.append((event, source))
        self._ready.set()

    async def wait(self, max_wait_s: float | None) -> bool:
        """Wait until something is queued or ``max_wait_s`` pass; True if non-empty."""
        if not self._ready.is_set() and (max_wait_s is None or max_wait_s > 0):
            try:
                async with asyncio.timeout(max_wait_s):
                    await self._ready.wait()
            except TimeoutError:
                pass
        return bool(self._prices or self._others)

    def drain(self) -> list[tuple[Event, str]]:
        """Take everything queued: non-price events first, then the latest prices."""
        out: list[tuple[Event, str]] = list(self._others)
        self._others.clear()
        out.extend(self._prices.values())
        self._prices.clear()
        self._ready.clear()
        self._room.set()
        return out
