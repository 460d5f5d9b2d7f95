"""Margin figures through the engine, against hand-derived values on a linear book."""

from __future__ import annotations

import math

import pytest
from tools import StaticView

from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent, iso_ms
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


def test_worked_example_through_the_engine_reports_the_model_per_currency() -> None:
    """The portfolio-margin worked example (inverse BTC options and perpetual) as events:
    margin.model, the recomputed distance and the model-to-venue ratio, in the report and
    the metrics, equal to the pure model's figures (themselves checked by hand in
    test_portfolio_margin)."""
    from test_portfolio_margin import PERP_USD, S0, worked_example_book, worked_example_by_hand

    from monitor.model.events import InstrumentEvent
    from monitor.quant.margin import distance_to_call_model
    from monitor.serve.metrics import build_registry

    day = 86_400_000
    iso = iso_ms
    t_eval = T0 + 2_000
    t_model = T0 + 1_000  # the scenario pass runs at the account's first evaluation
    events: list[Event] = [
        # Deribit's inverse perpetual: USD-sized contracts of 10 USD each.
        InstrumentEvent("BTC-PERPETUAL", "perpetual", "BTC", multiplier=10.0, inverse=True),
        InstrumentEvent(
            "C30", "option", "BTC", iso(t_model + 30 * day), 66_000.0, "call", inverse=True
        ),
        InstrumentEvent(
            "P7", "option", "BTC", iso(t_model + 7 * day), 60_000.0, "put", inverse=True
        ),
        PriceEvent(T0, "BTC", S0),
        PriceEvent(T0, "BTC-PERPETUAL", S0),
        PriceEvent(T0, "C30", 0.02, iv=0.6, underlying_price=S0),
        PriceEvent(T0, "P7", 0.03, iv=0.6, underlying_price=S0),
        PositionEvent(T0, "a", "C30", -10.0),
        PositionEvent(T0, "a", "P7", 5.0),
        PositionEvent(T0, "a", "BTC-PERPETUAL", PERP_USD / 10.0),  # contracts
        AccountEvent(T0, "a", 150_000.0, 90_000.0, 60_000.0),
        PriceEvent(t_eval, "BTC", S0),
    ]
    eng = Engine(SETTINGS)
    eng.replay(events, "t")
    snap = eng.evaluate(t_eval)
    margin = snap.accounts["a"].extra["margin"]
    hand = worked_example_by_hand()
    assert margin["scenarios_as_of"] == iso(t_model)  # expiries 30 and 7 days after it
    btc = margin["model"]["BTC"]
    assert set(margin["model"]) == {"BTC"}
    assert btc["unit"] == "BTC"
    assert btc["parameters_source"] == "defaults"
    assert btc["worst_scenario"] == "+16% vol up"
    for key, want in (
        ("worst_case", hand["worst_case"]),
        ("roll_shock", hand["roll_shock"]),
        ("risk_matrix_margin", hand["rmm"]),
        ("maintenance_margin", hand["mm"]),
    ):
        assert btc[key] == pytest.approx(want, rel=1e-6), key
        assert btc[f"{key}_usd"] == pytest.approx(want * S0, rel=1e-6), key
    assert btc["delta_shock"] == 0.0
    mm_usd = hand["mm"] * S0
    assert margin["model_maintenance_margin_usd"] == pytest.approx(mm_usd, rel=1e-6)
    assert margin["model_to_venue_mm"] == pytest.approx(mm_usd / 60_000.0, rel=1e-6)
    assert margin["scenario_margin"] == pytest.approx(hand["worst_case"] * S0, rel=1e-6)
    assert margin["worst_scenario"] == "BTC +16% vol up (BTC-settled)"
    linear, options = worked_example_book()
    pure = distance_to_call_model([150_000.0], [[PERP_USD]], options, linear, [S0], ["BTC"])
    rec = margin["distance_to_call"]["recomputed"]
    assert rec["up"] == pytest.approx(float(pure.up[0]), abs=1e-6)
    assert rec["reachable"]["up"] is True

    registry = build_registry(StaticView(snap), process_metrics=False)[0]

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"account": "a", **labels})

    assert get(
        "riskmon_account_model_margin_usd", currency="BTC", component="maintenance_margin"
    ) == pytest.approx(mm_usd, rel=1e-6)
    assert get("riskmon_account_model_maintenance_margin_usd") == pytest.approx(mm_usd, rel=1e-6)
    assert get("riskmon_account_model_to_venue_mm_ratio") == pytest.approx(
        mm_usd / 60_000.0, rel=1e-6
    )
    assert get(
        "riskmon_account_distance_to_call_recomputed_ratio", direction="up"
    ) == pytest.approx(float(pure.up[0]), abs=1e-6)

    off = Engine(SETTINGS, risk=RiskSettings(recompute_distance=False))
    off.replay(events, "t")
    margin_off = off.evaluate(t_eval).accounts["a"].extra["margin"]
    assert margin_off["distance_to_call"]["recomputed"] is None
    assert margin_off["distance_to_call"]["up"] == margin["distance_to_call"]["up"]


def test_recomputed_distance_runs_on_its_own_clock() -> None:
    """Scenario passes every 5 s from the first (at 0 s); the recomputed distance at most
    every 30 s: the pass at 30 s recomputes it, the one at 40 s carries it forward."""
    eng = Engine(SETTINGS, risk=RiskSettings(recompute_interval_ms=30_000))
    events: list[Event] = [PriceEvent(T0 + 1_000 * k, "BTC", 90_000.0) for k in range(41)]
    events += [
        PositionEvent(T0, "a", "BTC-PERPETUAL", 10.0),
        AccountEvent(T0, "a", 400_000.0, None, 100_000.0),
    ]
    events.sort(key=lambda e: e.ts or 0)
    eng.replay(events, "t")
    margin = eng.evaluate(T0 + 40_000).accounts["a"].extra["margin"]
    assert margin["scenarios_as_of"] == iso_ms(T0 + 40_000)
    rec = margin["distance_to_call"]["recomputed"]
    assert rec["as_of"] == iso_ms(T0 + 30_000)
    # 900,000 USD long, no options: MM recomputed = 0.8 x (0.16 + 0.01) x 900k x (1 + m);
    # the fall m < 0 solves 400k + 900k m = 0.136 x 900k x (1 + m).
    x = 900_000.0
    mm = 0.8 * 0.17 * x
    assert rec["down"] == pytest.approx((400_000.0 - mm) / (x - mm), rel=1e-6)
