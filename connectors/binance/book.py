"""Binance positions folded from a REST snapshot and ``ACCOUNT_UPDATE`` merges (pure).

Binance pushes only what changed: an ``ACCOUNT_UPDATE`` carries the changed position legs
(and a funding fee carries balances and no position at all), so an update is merged into
what is held, never a replacement of it. The snapshot (``/fapi/v3/positionRisk``) is the
whole truth at the moment Binance computed it; it replaces the book except for legs the
stream changed while the snapshot was in flight and that are newer than the snapshot's
view of them (``T`` of the update > ``updateTime`` of the snapshot's item, or a leg the
snapshot does not list at all).

A leg is ``(symbol, side)``: side ``BOTH`` in one-way mode, ``LONG`` and ``SHORT`` (whose
amount Binance signs negative) in hedge mode. riskmon holds the net per symbol, the sum
of its legs, in coin. Times are Binance's (server clock), epoch ms.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Leg", "PositionBook"]


@dataclass(frozen=True, slots=True)
class Leg:
    amount: float
    time_ms: int


class PositionBook:
    """Position legs per symbol, merged from updates and snapshots."""

    def __init__(self) -> None:
        self._legs: dict[str, dict[str, Leg]] = {}
        self._touched: set[tuple[str, str]] | None = None

    def net(self, symbol: str) -> float:
        """The symbol's net amount (coin, signed): the sum of its legs."""
        return sum((leg.amount for leg in self._legs.get(symbol, {}).values()), 0.0)

    def held(self) -> dict[str, float]:
        """Every symbol with a non-zero net amount."""
        out = {s: self.net(s) for s in self._legs}
        return {s: q for s, q in out.items() if q != 0.0}

    def update(self, symbol: str, side: str, amount: float, time_ms: int) -> bool:
        """Merge one leg from an ``ACCOUNT_UPDATE`` (transaction time ``time_ms``).

        Returns False (and changes nothing) when the book already holds a newer state of
        the leg: an update that arrives after a snapshot that had already seen it.
        """
        legs = self._legs.setdefault(symbol, {})
        leg = legs.get(side)
        if leg is not None and leg.time_ms > time_ms:
            return False
        legs[side] = Leg(amount + 0.0, time_ms)
        if self._touched is not None:
            self._touched.add((symbol, side))
        return True

    def begin_snapshot(self) -> None:
        """Mark the moment the snapshot is requested: updates from now on are "in flight"."""
        self._touched = set()

    def abandon_snapshot(self) -> None:
        """The snapshot failed: stop tracking (the book keeps what the stream merged)."""
        self._touched = None

    def apply_snapshot(self, items: Iterable[tuple[str, str, float, int]]) -> list[str]:
        """Replace the book with a snapshot of ``(symbol, side, amount, update_time_ms)``.

        A leg the stream changed since :meth:`begin_snapshot` keeps the stream's state when
        it is newer than the snapshot's item, or when the snapshot does not list it (the
        snapshot was computed before the change). Every other leg takes the snapshot's
        amount, or 0 when the snapshot does not list it (closed while riskmon was away).

        Returns every symbol whose net must be (re)announced: the snapshot's and those
        held before, sorted.
        """
        touched = self._touched or set()
        self._touched = None
        before = set(self.held())
        listed: set[tuple[str, str]] = set()
        for symbol, side, amount, time_ms in items:
            listed.add((symbol, side))
            legs = self._legs.setdefault(symbol, {})
            leg = legs.get(side)
            if (symbol, side) in touched and leg is not None and leg.time_ms > time_ms:
                continue
            legs[side] = Leg(amount + 0.0, time_ms)
        for symbol, legs in self._legs.items():
            for side, leg in list(legs.items()):
                key = (symbol, side)
                if key not in listed and key not in touched and leg.amount != 0.0:
                    legs[side] = Leg(0.0, leg.time_ms)
        return sorted(before | {symbol for symbol, _ in listed})
