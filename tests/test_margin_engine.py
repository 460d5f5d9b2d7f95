"""Margin figures through the engine, against hand-derived values on a linear book."""

from __future__ import annotations

import math

import pytest
from tools import StaticView

from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent
from monitor.quant.margin import MarginSettings, Stress

T0 = 1_767_225_600_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=20_000,
    fast_halflife_ms=5_000,
    warmup_ms=5_000,
    max_gap_ms=60_000,
    eval_interval_ms=1_000,
)


def test_linear_book_margin_distance_and_stresses() -> None:
    stress = Stress("BTC -20%", moves={"BTC": -0.2})
    risk = RiskSettings(margin=MarginSettings(stresses=(stress,)))
    eng = Engine(SETTINGS, risk=risk)
    prices = [90_000.0 * (1.0 + 0.001 * ((-1) ** k) * (k % 3)) for k in range(40)]
    events: list[Event] = [PriceEvent(T0 + 1_000 * k, "BTC", p) for k, p in enumerate(prices)]
    events += [
        PositionEvent(T0, "long", "BTC-PERPETUAL", 10.0),
        AccountEvent(T0, "long", 100_000.0, 30_000.0, 20_000.0),
        PositionEvent(T0, "flat", "BTC-PERPETUAL", 1.0),
        PositionEvent(T0, "flat", "BTC_USDC", -1.0),
        AccountEvent(T0, "flat", 50_000.0, 1_000.0, 500.0),
    ]
    events.sort(key=lambda e: e.ts or 0)
    eng.replay(events, "t")
    snap = eng.evaluate(T0 + 40_000)
    s = prices[-1]
    x = 10.0 * s
    long = snap.accounts["long"].extra["margin"]
    # Linear P&L of a move m is x m: the worst of +-16% (and the extended moves, weighted
    # by 0.16/|m| so they also lose 0.16 x) is 0.16 x.
    assert long["scenario_margin"] == pytest.approx(0.16 * x, rel=1e-9)
    assert long["worst_scenario"].startswith("BTC -16%")
    # Equity 100k, MM 20k: a fall of (100k - 20k) / x calls the account; no rise does.
    dist = long["distance_to_call"]
    assert dist["down"] == pytest.approx(80_000.0 / x, rel=1e-8)
    assert dist["reachable"] == {"down": True, "up": False}
    assert dist["up"] is None
    vol = float(snap.assets.volatility[0])
    assert dist["sigmas"]["down"] == pytest.approx(
        -math.log(1.0 - 80_000.0 / x) / (vol / math.sqrt(365.0)), rel=1e-8
    )
    assert long["stresses"] == {"BTC -20%": pytest.approx(-0.2 * x, rel=1e-12)}
    # A flat book cannot be called in either direction: null, with the flags saying so.
    flat = snap.accounts["flat"].extra["margin"]
    assert flat["distance_to_call"]["reachable"] == {"down": False, "up": False}
    assert flat["distance_to_call"]["down"] is None
    assert flat["scenario_margin"] == pytest.approx(0.0, abs=1e-6)


def test_account_without_venue_margin_has_no_distance() -> None:
    eng = Engine(SETTINGS)
    eng.replay(
        [
            PriceEvent(T0, "BTC", 90_000.0),
            PositionEvent(T0, "a", "BTC-PERPETUAL", 1.0),
            PriceEvent(T0 + 5_000, "BTC", 90_100.0),
        ],
        "t",
    )
    margin = eng.evaluate(T0 + 5_000).accounts["a"].extra["margin"]
    assert margin["equity"] is None
    assert margin["distance_to_call"] is None  # needs the venue's equity and MM: never guessed
    # The scenario model runs on its own clock: computed when the account first appeared
    # (price 90,000, the 4 s evaluation), reused until risk.scenario_interval has passed.
    assert margin["scenarios_as_of"] == "2026-01-01T00:00:04.000Z"
    assert margin["scenario_margin"] == pytest.approx(0.16 * 90_000.0, rel=1e-9)


def test_margin_model_metrics() -> None:
    from monitor.serve.metrics import build_registry

    eng = Engine(
        SETTINGS,
        risk=RiskSettings(margin=MarginSettings(stresses=(Stress("crash", default_move=-0.5),))),
    )
    eng.replay(
        [
            PriceEvent(T0, "BTC", 90_000.0),
            PositionEvent(T0, "a", "BTC-PERPETUAL", 1.0),
            AccountEvent(T0, "a", 50_000.0, 20_000.0, 10_000.0),
            PriceEvent(T0 + 2_000, "BTC", 90_000.0),
        ],
        "t",
    )
    snap = eng.evaluate(T0 + 2_000)
    registry = build_registry(StaticView(snap), process_metrics=False)[0]

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"account": "a", **labels})

    assert get("riskmon_account_scenario_margin_usd") == pytest.approx(0.16 * 90_000.0)
    assert get("riskmon_account_distance_to_call_ratio", direction="down") == pytest.approx(
        40_000.0 / 90_000.0
    )
    assert get("riskmon_account_distance_to_call_ratio", direction="up") is None
    assert get("riskmon_account_call_reachable", direction="up") == 0.0
    assert get("riskmon_account_stress_pnl_usd", stress="crash") == pytest.approx(-45_000.0)
