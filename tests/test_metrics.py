"""monitor.serve.metrics: values read from hand-built snapshots, vanishing labels, promtool lint."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from tools import StaticView, assert_promtool_clean

from monitor import __version__
from monitor.engine.stats import EngineStats
from monitor.model.health import ConnectorStatus
from monitor.model.snapshot import AccountFigures, AssetFigures, RiskSnapshot
from monitor.serve.metrics import RiskCollector, build_registry

NAN = math.nan
AS_OF_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
STARTED_S = 1_767_225_000.5


def View(
    snapshot: RiskSnapshot | None = None,
    stats: EngineStats | None = None,
    connectors: list[ConnectorStatus] | None = None,
) -> StaticView:
    return StaticView(snapshot, stats or EngineStats(), connectors or [], STARTED_S)


def assets(
    rows: dict[str, tuple[float, int, float, float, int, bool]], corr: list[list[float]]
) -> AssetFigures:
    """rows: name -> (price, price_ts_ms, vol, vol_fast, returns, warm)."""
    cols = list(zip(*rows.values(), strict=True))
    return AssetFigures(
        names=tuple(rows),
        price=np.array(cols[0], dtype=np.float64),
        price_ts_ms=np.array(cols[1], dtype=np.int64),
        volatility=np.array(cols[2], dtype=np.float64),
        volatility_fast=np.array(cols[3], dtype=np.float64),
        returns=np.array(cols[4], dtype=np.int64),
        warm=np.array(cols[5], dtype=np.bool_),
        correlation=np.array(corr, dtype=np.float64),
    )


def account(exposure: dict[str, float], greeks: dict[str, float]) -> AccountFigures:
    return AccountFigures(positions=None, greeks=greeks, exposure_usd=exposure)


def first_snapshot() -> RiskSnapshot:
    # Names deliberately not sorted: correlation labels must still come out as a < b.
    a = assets(
        {
            "ETH": (3500.0, AS_OF_MS - 1500, 0.70, 0.75, 12, False),
            "BTC": (97250.5, AS_OF_MS - 250, 0.55, 0.60, 1440, True),
            "SOL": (NAN, 0, NAN, NAN, 0, False),  # no tick yet
        },
        [[1.0, 0.8, NAN], [0.8, 1.0, NAN], [NAN, NAN, 1.0]],
    )
    alpha = account(
        {"BTC": 1_000_000.0, "ETH": -250_000.0},
        {"delta_usd": 750_000.0, "gamma_usd": 1234.5, "vega": -456.25, "theta": 89.0},
    )
    beta = account({"BTC": NAN, "ETH": 5.0}, {"delta_usd": 10.0, "gamma_usd": NAN})
    total = account(
        {"BTC": 1_000_000.0, "ETH": -249_995.0},
        {"delta_usd": 750_010.0, "gamma_usd": 1234.5, "vega": -456.25, "theta": 89.0},
    )
    return RiskSnapshot(
        as_of_ms=AS_OF_MS, seq=1, assets=a, accounts={"alpha": alpha, "beta": beta}, total=total
    )


def second_snapshot() -> RiskSnapshot:
    a = assets({"BTC": (98000.0, AS_OF_MS + 900, 0.56, 0.61, 1441, True)}, [[1.0]])
    alpha = account({"BTC": 2_000_000.0}, {"delta_usd": 2_000_000.0})
    return RiskSnapshot(
        as_of_ms=AS_OF_MS + 1000,
        seq=2,
        assets=a,
        accounts={"alpha": alpha},
        total=account({"BTC": 2_000_000.0}, {"delta_usd": 2_000_000.0}),
    )


def busy_view() -> StaticView:
    stats = EngineStats(
        accepted=Counter({("deribit", "price"): 10, ("replay", "position"): 3}),
        rejected=Counter({("deribit", "invalid_value"): 2}),
        conflated=5,
        evaluations=7,
        evaluation_errors=1,
        samples=100,
        gaps=1,
        queue_depth=4,
    )
    connectors = [
        ConnectorStatus(
            "deribit-main", "deribit", connected=True, reconnects=2, messages=1000,
            last_message_s=1_767_225_599.75, delivered=True,
        ),
        ConnectorStatus("sim", "simulated"),
    ]  # fmt: skip
    return View(snapshot=first_snapshot(), stats=stats, connectors=connectors)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_daemon_activity_counters_are_read_from_engine_stats_at_scrape_time() -> None:
    view = busy_view()
    registry, _ = build_registry(view)

    assert value(registry, "riskmon_events_total", source="deribit", type="price") == 10
    assert value(registry, "riskmon_events_total", source="replay", type="position") == 3
    assert (
        value(registry, "riskmon_rejected_events_total", source="deribit", reason="invalid_value")
        == 2
    )
    assert value(registry, "riskmon_conflated_prices_total") == 5
    assert value(registry, "riskmon_evaluations_total") == 7
    assert value(registry, "riskmon_evaluation_errors_total") == 1
    assert value(registry, "riskmon_estimator_samples_total") == 100
    assert value(registry, "riskmon_estimator_gaps_total") == 1
    assert value(registry, "riskmon_queue_depth") == 4
    assert value(registry, "riskmon_start_time_seconds") == STARTED_S
    assert value(registry, "riskmon_build_info", version=__version__) == 1

    up = "riskmon_connector_up"
    assert value(registry, up, connector="deribit-main", kind="deribit") == 1
    assert value(registry, up, connector="sim", kind="simulated") == 0
    assert value(registry, "riskmon_connector_reconnects_total", connector="deribit-main") == 2
    assert value(registry, "riskmon_connector_messages_total", connector="deribit-main") == 1000
    last = "riskmon_connector_last_message_timestamp_seconds"
    assert value(registry, last, connector="deribit-main") == 1_767_225_599.75
    assert value(registry, last, connector="sim") is None  # no message yet: no sample

    # The engine bumps plain ints; the next scrape sees them, no re-registration.
    view.stats.accepted["deribit", "price"] += 5
    view.stats.evaluations += 1
    view.connectors[1].connected = True
    assert value(registry, "riskmon_events_total", source="deribit", type="price") == 15
    assert value(registry, "riskmon_evaluations_total") == 8
    assert value(registry, up, connector="sim", kind="simulated") == 1


def test_asset_figures_from_the_snapshot() -> None:
    registry, _ = build_registry(busy_view())

    assert value(registry, "riskmon_snapshot_timestamp_seconds") == AS_OF_MS / 1000
    assert value(registry, "riskmon_asset_price_usd", underlying="BTC") == 97250.5
    assert value(registry, "riskmon_asset_price_usd", underlying="ETH") == 3500.0
    assert value(registry, "riskmon_asset_price_age_seconds", underlying="BTC") == 0.25
    assert value(registry, "riskmon_asset_price_age_seconds", underlying="ETH") == 1.5
    vol = "riskmon_asset_volatility"
    assert value(registry, vol, underlying="BTC", estimator="slow") == 0.55
    assert value(registry, vol, underlying="BTC", estimator="fast") == 0.60
    assert value(registry, vol, underlying="ETH", estimator="fast") == 0.75
    assert value(registry, "riskmon_asset_returns", underlying="BTC") == 1440
    assert value(registry, "riskmon_asset_returns", underlying="SOL") == 0
    assert value(registry, "riskmon_asset_estimator_warm", underlying="BTC") == 1
    assert value(registry, "riskmon_asset_estimator_warm", underlying="ETH") == 0

    corr = "riskmon_asset_correlation"
    assert value(registry, corr, underlying_a="BTC", underlying_b="ETH") == 0.8
    assert value(registry, corr, underlying_a="ETH", underlying_b="BTC") is None  # once, a < b
    assert value(registry, corr, underlying_a="BTC", underlying_b="BTC") is None  # no diagonal


def test_account_and_book_figures_from_the_snapshot() -> None:
    registry, _ = build_registry(busy_view())

    exp = "riskmon_account_exposure_usd"
    assert value(registry, exp, account="alpha", underlying="BTC") == 1_000_000.0
    assert value(registry, exp, account="alpha", underlying="ETH") == -250_000.0
    assert value(registry, exp, account="beta", underlying="ETH") == 5.0
    assert value(registry, "riskmon_account_delta_usd", account="alpha") == 750_000.0
    assert value(registry, "riskmon_account_gamma_usd", account="alpha") == 1234.5
    assert value(registry, "riskmon_account_vega_usd", account="alpha") == -456.25
    assert value(registry, "riskmon_account_theta_usd", account="alpha") == 89.0
    assert value(registry, "riskmon_account_delta_usd", account="beta") == 10.0
    # Greeks absent from AccountFigures.greeks are skipped, not zero.
    assert value(registry, "riskmon_account_vega_usd", account="beta") is None
    assert value(registry, "riskmon_account_theta_usd", account="beta") is None

    # The book is its own family, never a reserved account label that sum() would double.
    assert value(registry, "riskmon_book_exposure_usd", underlying="ETH") == -249_995.0
    assert value(registry, "riskmon_book_delta_usd") == 750_010.0
    assert value(registry, "riskmon_book_vega_usd") == -456.25
    text = generate_latest(registry).decode()
    assert 'account="__total__"' not in text
    assert 'account="total"' not in text


def test_nan_figures_are_skipped() -> None:
    registry, _ = build_registry(busy_view())

    assert value(registry, "riskmon_asset_price_usd", underlying="SOL") is None
    assert value(registry, "riskmon_asset_price_age_seconds", underlying="SOL") is None
    assert value(registry, "riskmon_asset_volatility", underlying="SOL", estimator="slow") is None
    corr = "riskmon_asset_correlation"
    assert value(registry, corr, underlying_a="BTC", underlying_b="SOL") is None
    assert value(registry, corr, underlying_a="ETH", underlying_b="SOL") is None
    exp = "riskmon_account_exposure_usd"
    assert value(registry, exp, account="beta", underlying="BTC") is None
    assert value(registry, "riskmon_account_gamma_usd", account="beta") is None
    riskmon_lines = [
        ln for ln in generate_latest(registry).decode().splitlines() if ln.startswith("riskmon_")
    ]
    assert riskmon_lines
    assert not [ln for ln in riskmon_lines if ln.endswith(("NaN", "Inf"))]


def test_label_sets_missing_from_the_next_snapshot_are_no_longer_exported() -> None:
    view = busy_view()
    registry, _ = build_registry(view)
    exp = "riskmon_account_exposure_usd"
    assert value(registry, "riskmon_asset_price_usd", underlying="ETH") == 3500.0
    assert value(registry, exp, account="beta", underlying="ETH") == 5.0

    view.snapshot = second_snapshot()

    assert value(registry, "riskmon_asset_price_usd", underlying="BTC") == 98000.0
    assert value(registry, "riskmon_asset_price_usd", underlying="ETH") is None
    assert value(registry, "riskmon_asset_returns", underlying="SOL") is None
    corr = "riskmon_asset_correlation"
    assert value(registry, corr, underlying_a="BTC", underlying_b="ETH") is None
    assert value(registry, exp, account="alpha", underlying="BTC") == 2_000_000.0
    assert value(registry, exp, account="alpha", underlying="ETH") is None
    assert value(registry, exp, account="beta", underlying="ETH") is None
    assert value(registry, "riskmon_account_delta_usd", account="beta") is None
    assert value(registry, "riskmon_account_vega_usd", account="alpha") is None
    assert value(registry, "riskmon_book_exposure_usd", underlying="ETH") is None
    assert value(registry, "riskmon_snapshot_timestamp_seconds") == (AS_OF_MS + 1000) / 1000


def test_no_snapshot_exports_daemon_metrics_only() -> None:
    registry, _ = build_registry(View())
    assert value(registry, "riskmon_evaluations_total") == 0
    assert value(registry, "riskmon_snapshot_timestamp_seconds") is None
    text = generate_latest(registry).decode()
    assert "riskmon_asset_price_usd{" not in text


def test_evaluation_histogram_is_on_the_injected_registry() -> None:
    registry, evaluation = build_registry(View())
    evaluation.observe(0.003)
    evaluation.observe(0.2)

    name = "riskmon_evaluation_duration_seconds"
    assert value(registry, f"{name}_count") == 2
    assert value(registry, f"{name}_sum") == pytest.approx(0.203)
    assert value(registry, f"{name}_bucket", le="0.0025") == 0
    assert value(registry, f"{name}_bucket", le="0.005") == 1
    assert value(registry, f"{name}_bucket", le="+Inf") == 2
    # Injected, never the global registry: two daemons (or tests) do not collide.
    build_registry(View())
    assert REGISTRY.get_sample_value(f"{name}_count") is None


def test_collector_describes_its_names_so_clashes_are_refused() -> None:
    registry, _ = build_registry(View(), process_metrics=False)
    with pytest.raises(ValueError, match="riskmon_"):
        registry.register(RiskCollector(View()))


def test_exposition_passes_promtool_check_metrics() -> None:
    registry, evaluation = build_registry(busy_view())
    evaluation.observe(0.012)
    exposition = generate_latest(registry)
    assert b"riskmon_account_exposure_usd{" in exposition

    assert_promtool_clean(exposition)


def engine_snapshot() -> RiskSnapshot:
    """A real evaluation: two accounts, a budget, venue margin, warm estimates."""
    from monitor.engine.core import Engine, EngineSettings
    from monitor.engine.evaluation import RiskSettings
    from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent

    settings = EngineSettings(
        sample_interval_ms=1_000,
        halflife_ms=20_000,
        fast_halflife_ms=5_000,
        warmup_ms=5_000,
        max_gap_ms=60_000,
        eval_interval_ms=1_000,
        var_halflife_ms=20_000,  # VaR on the same covariance as the report's volatility
    )
    eng = Engine(settings, risk=RiskSettings(budgets={"main": {"BTC": 2.0, "ETH": 1.0}}))
    rng = np.random.default_rng(1)
    btc, eth = 90_000.0, 3_000.0
    events: list[Event] = [
        PositionEvent(AS_OF_MS, "main", "BTC-PERPETUAL", 2.0),
        PositionEvent(AS_OF_MS, "main", "ETH-PERPETUAL", -10.0),
        PositionEvent(AS_OF_MS, "hedged", "BTC_USDC", 1.0),
        PositionEvent(AS_OF_MS, "hedged", "BTC-PERPETUAL", -1.0),
        AccountEvent(AS_OF_MS, "main", 500_000.0, 60_000.0, 40_000.0),
    ]
    for k in range(60):
        btc *= math.exp(0.002 * rng.standard_normal())
        eth *= math.exp(0.003 * rng.standard_normal())
        events += [
            PriceEvent(AS_OF_MS + 1_000 * k, "BTC", btc),
            PriceEvent(AS_OF_MS + 1_000 * k, "ETH", eth),
        ]
    eng.replay(events, "t")
    return eng.evaluate(AS_OF_MS + 60_000)


def test_risk_margin_and_regime_figures_match_closed_forms() -> None:
    # Every exported risk figure against a formula written here from the report's own
    # inputs (exposures, volatilities, correlation): sigma_p = sqrt(x' S x), Euler shares
    # x_i (S x)_i / sigma_p^2, delta-normal VaR z sigma_p sqrt(1/365), ES with phi(z)/0.01.
    from scipy import stats

    snap = engine_snapshot()
    registry, _ = build_registry(View(snapshot=snap), process_metrics=False)
    rep = snap.report()
    names = rep["correlation"]["assets"]
    vol = np.array([rep["assets"][n]["volatility"] for n in names])
    cov = np.array(rep["correlation"]["matrix"]) * np.outer(vol, vol)
    main = rep["accounts"]["main"]
    x = np.array([main["exposure_usd"].get(n, 0.0) for n in names])
    sigma = math.sqrt(x @ cov @ x)
    assert value(registry, "riskmon_account_volatility_usd", account="main") == pytest.approx(
        sigma, rel=1e-9
    )
    shares = x * (cov @ x) / sigma**2
    budgets = {"BTC": 2 / 3, "ETH": 1 / 3}
    for i, name in enumerate(names):
        share = value(registry, "riskmon_account_risk_share", account="main", underlying=name)
        assert share == pytest.approx(shares[i], rel=1e-9)
        drift = value(registry, "riskmon_account_risk_drift", account="main", underlying=name)
        assert drift == pytest.approx(shares[i] - budgets[name], rel=1e-9)
        budget = value(registry, "riskmon_account_risk_budget", account="main", underlying=name)
        assert budget == pytest.approx(budgets[name])
    z = float(stats.norm.ppf(0.99))
    root_h = math.sqrt(1 / 365)
    var = value(registry, "riskmon_account_var_usd", account="main", method="delta_normal")
    assert var == pytest.approx(z * sigma * root_h, rel=1e-9)
    es = value(registry, "riskmon_account_es_usd", account="main", method="delta_normal")
    assert es == pytest.approx(stats.norm.pdf(z) / 0.01 * sigma * root_h, rel=1e-9)
    # (Full revaluation runs on its own clock, on the covariance of its as_of: its closed
    # form is pinned in test_risk_oracles.py.)
    full = value(registry, "riskmon_account_var_usd", account="main", method="full_revaluation")
    assert full is not None
    assert full > 0.0
    # a perfectly hedged account has no risk share to speak of: not exported, not NaN
    assert value(registry, "riskmon_account_risk_share", account="hedged", underlying="BTC") is None
    assert value(registry, "riskmon_account_volatility_usd", account="hedged") == 0.0
    assert value(registry, "riskmon_account_margin_utilization_ratio", account="main") == (
        pytest.approx(40_000 / 500_000)
    )
    assert value(registry, "riskmon_account_margin_headroom_usd", account="main") == 460_000.0
    # Two assets: the average pairwise correlation is their correlation.
    assert value(registry, "riskmon_regime_average_correlation") == pytest.approx(
        rep["correlation"]["matrix"][0][1], rel=1e-12
    )
    assert value(registry, "riskmon_covariance_psd_repaired") == 0.0
    assert value(registry, "riskmon_covariance_repairs_total") == 0.0
    for name in names:
        assert value(registry, "riskmon_asset_stale", underlying=name) == 0.0


def test_stale_assets_and_psd_repairs_are_exported() -> None:
    a = assets(
        {
            "BTC": (97_000.0, AS_OF_MS - 120_000, 0.5, 0.6, 100, True),
            "ETH": (3_500.0, AS_OF_MS - 100, 0.7, 0.7, 100, True),
        },
        [[1.0, 0.5], [0.5, 1.0]],
    )
    from dataclasses import replace

    a = replace(a, stale=np.array([True, False]), psd_repaired=True, covariance_repairs=3)
    snap = RiskSnapshot(AS_OF_MS, 1, a, {}, account({}, {}))
    registry, _ = build_registry(View(snapshot=snap), process_metrics=False)
    assert value(registry, "riskmon_asset_stale", underlying="BTC") == 1.0
    assert value(registry, "riskmon_asset_stale", underlying="ETH") == 0.0
    assert value(registry, "riskmon_covariance_psd_repaired") == 1.0
    assert value(registry, "riskmon_covariance_repairs_total") == 3.0
    assert snap.report()["assets"]["BTC"]["stale"] is True


def test_full_exposition_passes_promtool_check_metrics() -> None:
    registry, _ = build_registry(View(snapshot=engine_snapshot()))
    exposition = generate_latest(registry)
    assert b"riskmon_account_var_usd{" in exposition
    assert b"riskmon_regime_absorption_ratio " in exposition
    assert_promtool_clean(exposition)


def test_notifier_counters_are_exported() -> None:
    from monitor.notify import NotifierStats

    webhook = NotifierStats(submitted=5, delivered=3, retries=7, pending=2, connected=False)
    view = StaticView(
        notifiers={"webhook": webhook, "log": NotifierStats(submitted=5, connected=True)}
    )
    registry, _ = build_registry(view, process_metrics=False)
    assert value(registry, "riskmon_alert_notifications_delivered_total", notifier="webhook") == 3
    assert value(registry, "riskmon_alert_notification_retries_total", notifier="webhook") == 7
    assert value(registry, "riskmon_alert_notifications_pending", notifier="webhook") == 2
    assert value(registry, "riskmon_alert_notifier_up", notifier="webhook") == 0
    assert value(registry, "riskmon_alert_notifier_up", notifier="log") == 1
    assert_promtool_clean(generate_latest(registry))
