"""An evaluation with nothing new (only time passed) re-dates the last full one: the same
figures a full evaluation computes, at a fraction of the cost; what time moves (staleness,
the venue figures' age, expiries, the scenario clock) still moves."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from monitor.engine.actions import ActionSettings
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import AccountEvent, PositionEvent, PriceEvent
from monitor.rules.config import DEFAULT_RULES
from monitor.rules.pack import rule_engine

T0 = 1_767_225_600_000  # 2026-01-01
UNDS = ("BTC", "ETH", "SOL")
OPTION = "BTC-2JAN26-60000-C"  # expires 2026-01-02 08:00Z


def book(max_gap_ms: int = 60_000, scenario_ms: int = 5_000) -> tuple[Engine, int]:
    eng = Engine(
        EngineSettings(warmup_ms=10_000, max_gap_ms=max_gap_ms),
        # As the daemon builds it: advisory sections refresh every scenario_interval.
        risk=RiskSettings(
            scenario_interval_ms=scenario_ms, actions=ActionSettings(refresh_ms=scenario_ms)
        ),
        rules=rule_engine(DEFAULT_RULES, {}),
    )
    rng = np.random.default_rng(7)
    level = np.array([60_000.0, 3_000.0, 150.0])
    for k in range(200):
        level = level * np.exp(0.002 * rng.standard_normal(3))
        for u, p in zip(UNDS, level, strict=True):
            eng.apply(PriceEvent(T0 + 1_000 * k, u, float(p)), "t")
            eng.apply(PriceEvent(T0 + 1_000 * k, f"{u}-PERPETUAL", float(p)), "t")
    ts = T0 + 200_000
    eng.apply(PriceEvent(ts, OPTION, 0.02, 0.6, float(level[0])), "t")
    for account, name, qty in (
        ("desk", "BTC-PERPETUAL", 2.0),
        ("desk", "ETH-PERPETUAL", -30.0),
        ("desk", OPTION, 5.0),
        ("opts", "SOL-PERPETUAL", 400.0),
    ):
        eng.apply(PositionEvent(ts, account, name, qty), "t")
    eng.apply(AccountEvent(ts, "desk", 1e6, 2e5, 1e5), "t")
    return eng, ts


def figures(doc: dict[str, Any]) -> dict[str, Any]:
    """The report without what differs by construction: seq, timings and the regime
    baselines (they move at full evaluations only)."""
    doc = dict(doc)
    for k in ("seq", "evaluation_seconds", "regime"):
        doc.pop(k, None)
    return doc


def close(a: Any, b: Any, path: str = "") -> None:
    """Equal documents, floats to 1e-4 relative: the idle one keeps Greeks computed a
    second earlier (time decay of a one-day option: 4e-5 of its delta), the rest equal."""
    if isinstance(a, dict):
        assert isinstance(b, dict), path
        assert a.keys() == b.keys(), path
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list), path
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{k}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_idle_evaluation_equals_a_full_one() -> None:
    idle, ts = book()
    full, _ = book()
    idle.evaluate(ts + 250)
    full.evaluate(ts + 250)
    a = idle.evaluate(ts + 1_250)  # nothing new: idle
    # The twin gets a repeat of SOL's last tick: state unchanged, evaluated in full.
    sol = full.snapshot.assets.price[2]  # type: ignore[union-attr]
    full.apply(PriceEvent(T0 + 199_000, "SOL", float(sol)), "t")
    b = full.evaluate(ts + 1_250)
    assert a.as_of_ms == b.as_of_ms == ts + 1_250
    assert a.accounts["desk"].extra["margin"]["age_seconds"] == 1.25
    assert a.total is not b.total
    close(figures(a.report()), figures(b.report()))


def test_time_still_moves_figures() -> None:
    eng, ts = book()
    first = eng.evaluate(ts + 250)
    later = eng.evaluate(ts + 3_000)  # idle: the same figures object, re-dated
    assert later.total is first.total
    # The scenario clock (5 s) makes a full evaluation due: the option's theta moved.
    full = eng.evaluate(ts + 6_000)
    assert full.total is not first.total
    assert full.accounts["desk"].greeks["theta"] != first.accounts["desk"].greeks["theta"]
    # An index silent for longer than max_gap turns stale: evaluated in full, flagged.
    stale = eng.evaluate(ts + 61_000)
    assert stale.assets.stale is not None
    assert bool(stale.assets.stale.all())
    assert stale.total is not full.total


def test_an_expiry_is_never_skipped() -> None:
    # Neither staleness nor the scenario clock forces a full evaluation here: only the
    # option's expiry does.
    eng, ts = book(max_gap_ms=10**10, scenario_ms=10**10)
    first = eng.evaluate(ts + 250)
    expiry = 1_767_340_800_000  # 2026-01-02T08:00Z
    before = eng.evaluate(expiry - 1_000)  # nothing new, nothing due: idle
    assert before.total is first.total
    after = eng.evaluate(expiry + 1)  # nothing new, but the option expired: full
    assert after.total is not before.total
    assert first.accounts["desk"].greeks["vega"] > 0.0
    assert after.accounts["desk"].greeks["vega"] == 0.0
