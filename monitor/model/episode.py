"""An alert episode handed from one engine to another (cluster mode, README "Running a
cluster").

When a shard moves, the daemon that takes its accounts over continues their alerts where
the previous owner left them: the same rule, subject, state, severity and episode start
(``active_since_ms``), so the idempotency keys of what follows are those the previous
owner would have produced and nothing already delivered is delivered again. A resolved
alert still cooling down is handed over too (``state = "resolved"``, ``cooldown_until_ms``).
"""

from __future__ import annotations

from typing import Literal

from msgspec import Struct

__all__ = ["Episode"]


class Episode(Struct, frozen=True, kw_only=True):
    """One subject's live alert (pending or firing) or cooldown, of one rule."""

    rule: str
    account: str | None
    underlying: str | None
    state: Literal["pending", "firing", "resolved"]
    severity: Literal["warning", "critical"]
    since_ms: int
    active_since_ms: int
    value: float
    summary: str
    labels: dict[str, str] = {}
    #: ``state = "resolved"``: no new warning episode before this time (epoch ms).
    cooldown_until_ms: int | None = None
