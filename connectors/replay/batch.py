"""What the recording readers yield (:class:`Batch`, :class:`PriceTicks`) and how a batch
goes into the engine (:func:`feed`): shared by the JSONL and Parquet readers."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from monitor.model.events import Event, PriceEvent, Rejected, VenueGreeks

__all__ = ["Batch", "PriceTicks", "ReplayEngine", "feed"]


@dataclass(frozen=True, slots=True)
class PriceTicks:
    """Plain price ticks column-wise (``iter_batches(..., columns=True)``): no event object
    per row. Row ``r`` is a :class:`~monitor.model.events.PriceEvent` of instrument
    ``names[code[r]]`` at ``ts[r]`` (int epoch ms) with ``price[r]``; ``iv`` and
    ``underlying_price`` are NaN where absent (None: absent in every row); ``greeks`` is
    ``(n, 4)`` (delta, gamma, vega, theta; NaN for a Greek not given) where ``has_greeks``
    (both None: no row has them). Validated as the events are."""

    names: list[str]
    code: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    price: npt.NDArray[np.float64]
    iv: npt.NDArray[np.float64] | None = None
    underlying_price: npt.NDArray[np.float64] | None = None
    greeks: npt.NDArray[np.float64] | None = None
    has_greeks: npt.NDArray[np.bool_] | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self, a: int, b: int) -> PriceTicks:
        """Rows ``[a, b)`` (views, no copy)."""
        return PriceTicks(
            self.names,
            self.code[a:b],
            self.ts[a:b],
            self.price[a:b],
            None if self.iv is None else self.iv[a:b],
            None if self.underlying_price is None else self.underlying_price[a:b],
            None if self.greeks is None else self.greeks[a:b],
            None if self.has_greeks is None else self.has_greeks[a:b],
        )

    def events(self) -> list[Event]:
        """The rows as events (what ``columns=False`` yields)."""
        nan_free = [None if x is None else x.tolist() for x in (self.iv, self.underlying_price)]
        iv, fwd = (
            itertools.repeat(None) if x is None else [None if v != v else v for v in x]
            for x in nan_free
        )
        greeks: Iterable[VenueGreeks | None] = itertools.repeat(None)
        if self.greeks is not None and self.has_greeks is not None:
            greeks = [
                VenueGreeks(*(None if v != v else v for v in g)) if has else None
                for g, has in zip(self.greeks.tolist(), self.has_greeks.tolist(), strict=True)
            ]
        names = self.names
        return [
            PriceEvent(t, names[c], p, i, f, g)
            for t, c, p, i, f, g in zip(
                self.ts.tolist(),
                self.code.tolist(),
                self.price.tolist(),
                iv,
                fwd,
                greeks,
                strict=False,
            )
        ]

    @staticmethod
    def concat(parts: Sequence[PriceTicks]) -> PriceTicks:
        """One block of several (names merged)."""
        if len(parts) == 1:
            return parts[0]
        names: dict[str, int] = {}
        codes = []
        for p in parts:
            lut = np.array([names.setdefault(nm, len(names)) for nm in p.names], dtype=np.int64)
            codes.append(lut[p.code] if len(lut) else p.code)

        def cat(xs: list[npt.NDArray[np.float64] | None]) -> npt.NDArray[np.float64] | None:
            if all(x is None for x in xs):
                return None
            return np.concatenate(
                [
                    np.full(len(p), np.nan) if x is None else x
                    for p, x in zip(parts, xs, strict=True)
                ]
            )

        greeks = has_greeks = None
        if any(p.greeks is not None for p in parts):
            greeks = np.concatenate(
                [np.full((len(p), 4), np.nan) if p.greeks is None else p.greeks for p in parts]
            )
            has_greeks = np.concatenate(
                [
                    np.zeros(len(p), dtype=np.bool_) if p.has_greeks is None else p.has_greeks
                    for p in parts
                ]
            )
        return PriceTicks(
            list(names),
            np.concatenate(codes),
            np.concatenate([p.ts for p in parts]),
            np.concatenate([p.price for p in parts]),
            cat([p.iv for p in parts]),
            cat([p.underlying_price for p in parts]),
            greeks,
            has_greeks,
        )


@dataclass(frozen=True, slots=True)
class Batch:
    """Decoded events from one chunk of a recording.

    ``events`` are the accepted events in file order; ``rejections`` pair the 1-based line
    number (JSONL) or row number (Parquet) in the file with why it was refused.
    ``first`` is the number of the chunk's first line (row) and ``skipped`` the numbers in
    the chunk that hold no event (refused or blank), ascending: with them
    :meth:`number_of` finds any event's line, for a refusal the engine makes later.
    ``unit`` is ``"line"`` or ``"row"``, after the segment's name in a segment directory.

    With ``columns=True`` (Parquet), plain price ticks come column-wise in ``ticks``
    instead, and ``events`` holds the others; ``tick_at`` numbers each tick among all the
    accepted items of the chunk (ascending), so :meth:`runs` gives them back in file order.
    """

    events: list[Event]
    rejections: list[tuple[int, Rejected]]
    first: int = 1
    skipped: tuple[int, ...] = ()
    unit: str = "line"
    ticks: PriceTicks | None = None
    tick_at: npt.NDArray[np.int64] | None = None

    def __len__(self) -> int:
        """Accepted items: events and ticks."""
        return len(self.events) + (0 if self.ticks is None else len(self.ticks))

    def runs(self) -> Iterator[tuple[int, list[Event] | PriceTicks]]:
        """The accepted items in file order, as runs of events or of ticks, each with the
        number (for :meth:`number_of`) of its first item."""
        ticks, at = self.ticks, self.tick_at
        if ticks is None or at is None or not len(ticks):
            if self.events:
                yield 0, self.events
            return
        total = len(self)
        is_tick = np.zeros(total + 2, dtype=np.int8)
        is_tick[at + 1] = 1
        edges = np.flatnonzero(np.diff(is_tick)).tolist()  # where a run of ticks starts, ends
        done_events = done_ticks = 0
        k = 0
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            if k < a:
                yield k, self.events[done_events : done_events + a - k]
                done_events += a - k
            yield a, ticks.rows(done_ticks, done_ticks + b - a)
            done_ticks += b - a
            k = b
        if k < total:
            yield k, self.events[done_events:]

    def number_of(self, k: int) -> int:
        """The line (row) number of accepted item ``k`` (``events[k]`` without ticks)."""
        n = self.first + k
        for s in self.skipped:
            if s > n:
                break
            n += 1
        return n

    def where(self, n: int) -> str:
        """``"line 12"``, ``"row 12"`` or ``"segment-000002.parquet row 12"``."""
        return f"{self.unit} {n}"


class ReplayEngine(Protocol):
    """What :func:`feed` hands a batch's runs to (``monitor.engine.core.Engine``)."""

    def replay(self, events: Sequence[Event], source: str) -> list[tuple[int, Rejected]]: ...

    def replay_prices(
        self,
        names: Sequence[str],
        code: npt.NDArray[np.integer[Any]],
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        source: str,
        *,
        iv: npt.NDArray[np.float64] | None = None,
        forward: npt.NDArray[np.float64] | None = None,
        greeks: npt.NDArray[np.float64] | None = None,
        has_greeks: npt.NDArray[np.bool_] | None = None,
    ) -> list[tuple[int, Rejected]]: ...


def feed(engine: ReplayEngine, batch: Batch, source: str) -> Iterator[tuple[int, Rejected]]:
    """Apply ``batch``'s runs in file order: runs of ticks column-wise, the rest as events.
    Yields each refusal with the item's number in the batch (:meth:`Batch.number_of`)."""
    for k0, run in batch.runs():
        if isinstance(run, PriceTicks):
            refused = engine.replay_prices(
                run.names,
                run.code,
                run.ts,
                run.price,
                source,
                iv=run.iv,
                forward=run.underlying_price,
                greeks=run.greeks,
                has_greeks=run.has_greeks,
            )
        else:
            refused = engine.replay(run, source)
        for k, rej in refused:
            yield k0 + k, rej
