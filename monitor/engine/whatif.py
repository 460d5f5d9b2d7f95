"""What-if: an account's figures before and after proposed trades, never touching live state.

:meth:`monitor.engine.core.Engine.whatif_state` copies what an evaluation reads (instruments,
estimator, positions, prices, venue accounts) on the engine's loop; :func:`run_whatif`
then works on that copy alone, on any thread. Before and after are both evaluated by a
fresh :class:`~monitor.engine.evaluation.Evaluator` with the live settings, synchronously
(so every figure is as of the same state: the scenario-clock figures, full-revaluation VaR,
scenario margin and distance to call, are computed for it, not taken from the live run).

A trade adds ``quantity`` (signed contracts) to the account's position in ``instrument``;
an optional ``price`` (and ``iv`` for an option) marks that instrument for the what-if.

The alerts a trade would fire or clear: every built-in rule (fresh rule objects, so no
live watch list moves) reads the before and the after snapshot; a subject of the account
whose figure is past a threshold after and not before *fires*, one past it before and not
after *clears* (the threshold alone: ``for``, cooldown and hysteresis belong to the live
rule engine's history, which a hypothetical book has none of).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.engine.evaluation import AccountState, Evaluator, RiskSettings, UnderlyingPrices
from monitor.engine.valuation import MarketArrays, build_book
from monitor.model.events import Rejected, iso_ms
from monitor.model.instruments import InstrumentRegistry
from monitor.model.snapshot import RiskSnapshot
from monitor.quant.estimator import RollingEstimator
from monitor.rules.machine import Rule, RuleSpec, each_reading
from monitor.rules.pack import RuleInput

__all__ = ["Trade", "WhatIfError", "WhatIfState", "run_whatif"]

FloatArray = npt.NDArray[np.float64]


class WhatIfError(ValueError):
    """A what-if that cannot be computed as asked (an unknown instrument, an index)."""


@dataclass(frozen=True, slots=True)
class Trade:
    """One proposed trade: ``quantity`` signed contracts of ``instrument`` in ``account``;
    ``price`` (USD per underlying unit; coin for inverse options) and ``iv`` (annualised
    decimal) optionally mark the instrument for the what-if."""

    account: str
    instrument: str
    quantity: float
    price: float | None = None
    iv: float | None = None


@dataclass(frozen=True, slots=True)
class WhatIfState:
    """A private copy of what an evaluation reads; nothing in it is shared with the engine."""

    as_of_ms: int
    registry: InstrumentRegistry
    estimator: RollingEstimator
    positions: dict[str, dict[int, tuple[float, int]]]
    price: FloatArray
    price_ts_ms: npt.NDArray[np.int64]
    iv: FloatArray
    forward: FloatArray
    venue_greeks: FloatArray
    index_instrument: npt.NDArray[np.int64]  # per underlying, its index's instrument number
    venue: dict[str, AccountState]
    settings: RiskSettings


def run_whatif(
    state: WhatIfState,
    trades: Sequence[Trade],
    rules: Callable[[], Sequence[Rule[RuleInput]]] | None = None,
) -> dict[str, Any]:
    """Before and after of every account the trades touch (module notes).

    Returns ``{"as_of", "trades", "accounts": {account: {"before", "after", "alerts":
    {"fire", "clear"}}}}``; ``before``/``after`` are the account's report sections
    (``RiskSnapshot.report()["accounts"][account]``). Raises :class:`WhatIfError`.
    """
    if not trades:
        raise WhatIfError("no trades given")
    before = _evaluate(state, state.positions, {})
    positions = {a: dict(p) for a, p in state.positions.items()}
    marks: dict[int, Trade] = {}
    reg = state.registry
    for t in trades:
        try:
            i = reg.index_of(t.instrument)
        except Rejected as exc:
            raise WhatIfError(f"unknown instrument: {exc.detail}") from None
        if reg.instruments[i].kind == "index":
            raise WhatIfError(f"{t.instrument!r} is an index, not tradable")
        book = positions.setdefault(t.account, {})
        qty, opened = book.get(i, (0.0, state.as_of_ms))
        if qty + t.quantity == 0.0:
            book.pop(i, None)
        else:
            book[i] = (qty + t.quantity, opened)
        if t.price is not None or t.iv is not None:
            marks[i] = t
    after = _evaluate(state, positions, marks)
    out: dict[str, Any] = {}
    for account in sorted({t.account for t in trades}):
        doc_before = _account(before, account)
        doc_after = _account(after, account)
        out[account] = {
            "before": doc_before,
            "after": doc_after,
            "alerts": _alert_changes(before, after, account, rules),
        }
    return {
        "as_of": iso_ms(state.as_of_ms),
        "trades": [
            {
                "account": t.account,
                "instrument": t.instrument,
                "quantity": t.quantity,
                "price": t.price,
                "iv": t.iv,
            }
            for t in trades
        ],
        "accounts": out,
    }


def _account(snap: RiskSnapshot, account: str) -> dict[str, Any] | None:
    fig = snap.accounts.get(account)
    return None if fig is None else fig.report()


def _evaluate(
    state: WhatIfState,
    positions: Mapping[str, Mapping[int, tuple[float, int]]],
    marks: Mapping[int, Trade],
) -> RiskSnapshot:
    reg = state.registry
    n = len(reg)

    def fit(a: npt.NDArray[Any], fill: Any) -> npt.NDArray[Any]:
        out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
        out[: min(n, len(a))] = a[:n]
        return out

    price, iv = fit(state.price, np.nan), fit(state.iv, np.nan)
    ts = fit(state.price_ts_ms, 0)
    for i, t in marks.items():
        if t.price is not None:
            price[i], ts[i] = t.price, state.as_of_ms
        if t.iv is not None:
            iv[i] = t.iv
    market = MarketArrays(
        price=price,
        iv=iv,
        forward=fit(state.forward, np.nan),
        venue_greeks=fit(state.venue_greeks, np.nan),
        price_ts_ms=ts,
    )
    index_inst = np.array([reg.index_of(u) for u in reg.underlyings], dtype=np.int64)
    book = build_book(positions, reg)
    with np.errstate(all="ignore"):
        return Evaluator(state.settings).evaluate(
            state.as_of_ms,
            0,
            reg,
            state.estimator,
            book,
            market,
            UnderlyingPrices(price[index_inst].copy(), ts[index_inst].copy()),
            state.venue,
        )


def _severity(spec: RuleSpec, value: float) -> str | None:
    if math.isnan(value):
        return None
    sign = 1.0 if spec.direction == "above" else -1.0
    if spec.critical is not None and sign * value >= sign * spec.critical:
        return "critical"
    if spec.warning is not None and sign * value >= sign * spec.warning:
        return "warning"
    return None


def _breaches(
    snap: RiskSnapshot, account: str, rules: Sequence[Rule[RuleInput]]
) -> dict[tuple[str, str | None], tuple[str, float, str]]:
    inp = RuleInput(snap)
    out: dict[tuple[str, str | None], tuple[str, float, str]] = {}
    for rule in rules:
        for r in each_reading(rule.read(inp)):
            if r.account != account:
                continue
            sev = _severity(rule.spec, r.value)
            if sev is not None:
                out[(rule.spec.name, r.underlying)] = (sev, r.value, r.describe())
    return out


def _alert_changes(
    before: RiskSnapshot,
    after: RiskSnapshot,
    account: str,
    rules: Callable[[], Sequence[Rule[RuleInput]]] | None,
) -> dict[str, list[dict[str, Any]]]:
    if rules is None:
        return {"fire": [], "clear": [], "still": []}
    # Fresh rule objects for each side: a rule with memory (hedge_offset's watch list)
    # reads the hypothetical book as the live engine's first evaluation would.
    b = _breaches(before, account, rules())
    a = _breaches(after, account, rules())

    def item(key: tuple[str, str | None], fig: tuple[str, float, str]) -> dict[str, Any]:
        sev, value, summary = fig
        v = value if math.isfinite(value) else None
        return {
            "rule": key[0],
            "account": account,
            "underlying": key[1],
            "severity": sev,
            "value": v,
            "summary": summary,
        }

    return {
        "fire": [item(k, a[k]) for k in sorted(a, key=_order) if k not in b],
        "clear": [item(k, b[k]) for k in sorted(b, key=_order) if k not in a],
        "still": [item(k, a[k]) for k in sorted(a, key=_order) if k in b],
    }


def _order(key: tuple[str, str | None]) -> tuple[str, str]:
    return key[0], key[1] or ""
