"""monitor.rules.pack: every built-in rule fires on a book built to trip it, stays quiet on a
calm one, and says what it saw with the numbers in its summary.

Snapshots come from the real engine (positions, prices, venue margin); the figures a test
needs to control exactly (risk shares, regime, the own margin model) are then set with
``dataclasses.replace``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import msgspec
import numpy as np
import pytest

from monitor.config import Config
from monitor.engine.core import Engine, EngineSettings
from monitor.model.alert import Alert, Transition
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent
from monitor.model.health import ConnectorStatus
from monitor.model.settings import dec_hook
from monitor.model.snapshot import RegimeReport, RiskSnapshot
from monitor.quant.regime import RegimeFigures
from monitor.rules.config import DEFAULT_RULES, AccountLimits, RuleConfig
from monitor.rules.machine import RuleEngine, each_reading
from monitor.rules.pack import RuleInput, build_rules, rule_engine

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1_000
END = T0 + 120 * S  # the last event of the base book
STEP = 61 * S  # longer than every default `for`


# --- the books -----------------------------------------------------------------------------


def market(t0: int, seconds: int, rng: np.random.Generator, btc: float, eth: float) -> list[Event]:
    """Index, perpetual and spot prices every second; returns the events."""
    events: list[Event] = []
    for k in range(seconds + 1):
        t = t0 + k * S
        btc *= math.exp(0.002 * rng.standard_normal())
        eth *= math.exp(0.003 * rng.standard_normal())
        events += [
            PriceEvent(t, "BTC", btc),
            PriceEvent(t, "ETH", eth),
            PriceEvent(t, "BTC-PERPETUAL", btc),
            PriceEvent(t, "ETH-PERPETUAL", eth),
            PriceEvent(t, "BTC_USDC", btc),
        ]
        if k % 10 == 0:
            events.append(AccountEvent(t, "main", 1_000_000.0, 150_000.0, 100_000.0))
    return events


def engine() -> Engine:
    """main: long BTC and ETH perpetuals; hedged: BTC spot against a short perpetual."""
    settings = EngineSettings(
        sample_interval_ms=S,
        halflife_ms=20 * S,
        fast_halflife_ms=5 * S,
        warmup_ms=5 * S,
        max_gap_ms=60 * S,
        eval_interval_ms=S,
    )
    eng = Engine(settings)
    events: list[Event] = [
        PositionEvent(T0, "main", "BTC-PERPETUAL", 1.0),
        PositionEvent(T0, "main", "ETH-PERPETUAL", 20.0),
        PositionEvent(T0, "hedged", "BTC_USDC", 2.0),
        PositionEvent(T0, "hedged", "BTC-PERPETUAL", -2.0),
        *market(T0, 120, np.random.default_rng(5), 90_000.0, 3_000.0),
    ]
    assert eng.replay(events, "test") == []
    return eng


def calm_margin(**changes: Any) -> dict[str, Any]:
    """``accounts.main.margin`` as the report has it, far from any threshold."""
    margin: dict[str, Any] = {
        "equity": 1_000_000.0,
        "initial_margin": 150_000.0,
        "maintenance_margin": 100_000.0,
        "utilization": 0.10,
        "initial_utilization": 0.15,
        "headroom_usd": 900_000.0,
        "age_seconds": 0.0,
        "scenario_margin": 60_000.0,
        "worst_scenario": "BTC -16% vol up + ETH -16% vol up",
        "distance_to_call": {
            "down": 0.60,
            "up": None,
            "sigmas": {"down": 20.0, "up": None},
            "reachable": {"down": True, "up": False},
        },
        "stresses": {},
        "model": {},
        "model_maintenance_margin_usd": 105_000.0,
        "model_to_venue_mm": 1.05,
    }
    margin.update(changes)
    return margin


def regime(
    snap: RiskSnapshot,
    *,
    vol_ratio: Mapping[str, float] | None = None,
    realised_to_implied: Mapping[str, float] | None = None,
    average_correlation: float = 0.50,
    absorption_ratio: float = 0.75,
) -> RegimeReport:
    """Regime figures by name; the baseline is the calm state (ratio 1, 0.5, 0.75)."""
    names = snap.assets.names

    def per(values: Mapping[str, float] | None, default: float) -> np.ndarray[Any, Any]:
        return np.array([(values or {}).get(n, default) for n in names], dtype=np.float64)

    used = np.ones(len(names), dtype=np.bool_)
    baseline = RegimeFigures(per(None, 1.0), per(None, math.nan), 0.50, 0.75, used)
    current = RegimeFigures(
        per(vol_ratio, 1.0),
        per(realised_to_implied, math.nan),
        average_correlation,
        absorption_ratio,
        used,
    )
    return RegimeReport(names, current, baseline)


def with_account(snap: RiskSnapshot, name: str, **changes: Any) -> RiskSnapshot:
    return replace(snap, accounts={**snap.accounts, name: replace(snap.accounts[name], **changes)})


def with_margin(snap: RiskSnapshot, **changes: Any) -> RiskSnapshot:
    fig = snap.accounts["main"]
    return with_account(snap, "main", extra={**fig.extra, "margin": calm_margin(**changes)})


def with_shares(
    snap: RiskSnapshot, share: Mapping[str, float], budget: Mapping[str, float]
) -> RiskSnapshot:
    """Set main's risk shares and budget (by underlying name); the engine's attribution and
    suggestions, which belong to its own shares, are left out."""
    risk = snap.accounts["main"].risk
    assert risk is not None
    names = risk.underlyings
    s = np.array([share.get(n, 0.0) for n in names])
    b = np.array([budget.get(n, 0.0) for n in names])
    d = s - b
    c = replace(
        risk.contributions,
        share=s,
        budget=b,
        drift=d,
        max_abs_drift=float(np.abs(d).max()),
        half_l1=float(0.5 * np.abs(d).sum()),
    )
    own = ("attribution", "suggestions")
    extra = {k: v for k, v in snap.accounts["main"].extra.items() if k not in own}
    return with_account(snap, "main", risk=replace(risk, contributions=c), extra=extra)


def calm(eng: Engine | None = None, at: int = END) -> RiskSnapshot:
    """The base book as of ``at``, with every controlled figure calm."""
    snap = (eng or engine()).evaluate(at)
    snap = replace(snap, regime=regime(snap))
    snap = with_shares(snap, {"BTC": 0.5, "ETH": 0.5}, {"BTC": 0.5, "ETH": 0.5})
    return with_margin(snap)


CONNECTED = [ConnectorStatus("deribit-main", "deribit", connected=True, reconnects=0)]


def run(
    inputs: Sequence[RuleInput], cfg: Config | None = None
) -> tuple[list[Transition], list[Alert]]:
    """Evaluate each input once, the last one twice, ``STEP`` apart on the engine clock."""
    cfg = cfg or Config()
    eng: RuleEngine[RuleInput] = rule_engine(cfg.rules, cfg.limits)
    moves: list[Transition] = []
    for k, inp in enumerate([*inputs, inputs[-1]]):
        moves += eng.evaluate(inp, T0 + 1_000 * STEP + k * STEP)
    return moves, eng.active()


def firing(*snaps: RiskSnapshot, cfg: Config | None = None, **kw: Any) -> dict[str, list[Alert]]:
    """The firing alerts by rule after the snapshots (each one ``STEP`` apart)."""
    _, active = run([RuleInput(s, **kw) for s in snaps], cfg)
    out: dict[str, list[Alert]] = {}
    for a in active:
        assert a.state == "firing"
        out.setdefault(a.rule, []).append(a)
    return out


def config(*, limits: Mapping[str, AccountLimits] | None = None, **rules: dict[str, Any]) -> Config:
    """Config() with rule overrides by name (``hedge_offset={"for": "0s"}``)."""
    raw = [{"name": name, **keys} for name, keys in rules.items()]
    return msgspec.structs.replace(
        Config(rules=msgspec.convert(raw, tuple[RuleConfig, ...], dec_hook=dec_hook)),
        limits=dict(limits or {}),
    )


@pytest.fixture(scope="module")
def base() -> RiskSnapshot:
    return calm()


# --- calm ----------------------------------------------------------------------------------


def test_the_calm_book_is_quiet(base: RiskSnapshot) -> None:
    limits = {"main": AccountLimits(delta_usd=1e6, vega=1e5)}
    moves, active = run([RuleInput(base, CONNECTED)] * 3, config(limits=limits))
    assert moves == []
    assert active == []


def test_the_calm_book_is_read_by_every_rule(base: RiskSnapshot) -> None:
    """Quiet because the figures are calm, not because the rules read nothing."""
    limits = {"main": AccountLimits(delta_usd=1e6, vega=1e5)}
    backtest = {
        "zone": "green",
        "exceptions": 1,
        "observations": 250,
        "expected_exceptions": 2.5,
        "confidence": 0.99,
        "horizon_seconds": 86_400.0,
    }
    extra = {
        **base.accounts["main"].extra,
        "greeks_vs_venue": {"delta_usd": 10.0, "vega": 1.0},
        "backtest": backtest,
    }
    snap = replace(
        with_account(base, "main", extra=extra),
        regime=regime(base, realised_to_implied={"BTC": 1.0}),
    )
    inp = RuleInput(snap, CONNECTED)
    rules = config(model_margin_divergence={"accounts": ["main"]}).rules
    read = {r.name: list(each_reading(r.read(inp))) for r in build_rules(rules, limits)}
    assert set(read) == {r.rule for r in Config().rules}
    assert all(read[name] for name in read), [name for name in read if not read[name]]
    finite = {name: [x.value for x in rs if math.isfinite(x.value)] for name, rs in read.items()}
    assert all(finite.values()), [n for n, v in finite.items() if not v]
    # ... and what they read is the figure each rule is documented to compare, from the
    # snapshot's own inputs: a ratio to equity or to the limit, the venue differences.
    got = {(name, x.account, x.underlying): x.value for name, rs in read.items() for x in rs}
    main = snap.accounts["main"]
    margin = main.extra["margin"]
    equity = margin["equity"]
    assert got["margin_utilization", "main", None] == margin["maintenance_margin"] / equity
    assert got["scenario_margin", "main", None] == margin["scenario_margin"] / equity
    assert got["distance_to_call", "main", None] == margin["distance_to_call"]["down"]
    assert got["net_delta_limit", "main", None] == pytest.approx(
        abs(main.greeks["delta_usd"]) / 1e6, rel=1e-12
    )
    assert got["venue_delta_mismatch", "main", None] == 10.0
    assert got["venue_vega_mismatch", "main", None] == 1.0
    assert got["vol_vs_implied", None, "BTC"] == 1.0
    assert got["connector_down", "deribit-main", None] == 0.0
    assert got["var_backtest", "main", None] == 0.0  # green
    assert got["stressed_var_ratio", "main", None] == main.extra["stressed_var"]["ratio"]


def test_the_real_engine_margin_model_is_read(base: RiskSnapshot) -> None:
    """Whatever the own margin model reports for this book, the margin rules read it quietly."""
    snap = engine().evaluate(END)
    m = snap.accounts["main"].extra["margin"]
    assert m["utilization"] == pytest.approx(0.10)
    _, active = run([RuleInput(replace(snap, regime=regime(snap)))])
    assert not [a for a in active if a.rule in ("margin_utilization", "scenario_margin")]


# --- risk parity ---------------------------------------------------------------------------


def test_risk_drift_fires_per_underlying_with_shares_budget_and_correlation(
    base: RiskSnapshot,
) -> None:
    snap = with_shares(base, {"BTC": 0.71, "ETH": 0.29}, {"BTC": 1 / 3, "ETH": 2 / 3})
    alerts = firing(snap)["risk_drift"]
    assert [(a.account, a.underlying, a.severity) for a in alerts] == [
        ("main", "BTC", "critical"),
        ("main", "ETH", "critical"),
    ]
    btc = alerts[0]
    assert btc.value == pytest.approx(0.71 - 1 / 3)
    assert btc.threshold == 0.30
    assert btc.summary.startswith("main: BTC is 71% of risk vs a 33% budget (drift +38 pts;")
    rho = base.assets.correlation[0, 1]
    assert f"BTC/ETH correlation {rho:.2f}" in btc.summary
    assert "BTC vol " in btc.summary


def test_risk_drift_waits_for_warm_estimates(base: RiskSnapshot) -> None:
    snap = with_shares(base, {"BTC": 0.9, "ETH": 0.1}, {"BTC": 0.5, "ETH": 0.5})
    cold = replace(snap, assets=replace(snap.assets, warm=np.zeros(2, dtype=np.bool_)))
    assert "risk_drift" not in firing(cold)
    assert "concentration" not in firing(cold)


def test_concentration_fires_on_half_l1_or_max_abs_drift(base: RiskSnapshot) -> None:
    # two underlyings: half_l1 = max |drift| = 0.3
    snap = with_shares(base, {"BTC": 0.8, "ETH": 0.2}, {"BTC": 0.5, "ETH": 0.5})
    (alert,) = firing(snap)["concentration"]
    assert (alert.account, alert.severity) == ("main", "warning")
    assert alert.value == pytest.approx(0.3)
    assert alert.summary == (
        "main: 30% of its risk sits away from its budget (half L1; warning 25%, critical 40%); "
        "largest: BTC 80% of risk vs a 50% budget"
    )
    cfg = config(
        concentration={"measure": "max_abs_drift", "warning": 0.1, "critical": 0.2, "clear": 0.05}
    )
    (alert,) = firing(snap, cfg=cfg)["concentration"]
    assert alert.severity == "critical"
    assert "max |drift|" in alert.summary


# --- margin --------------------------------------------------------------------------------


def test_margin_utilization_fires_with_headroom(base: RiskSnapshot) -> None:
    snap = with_margin(base, utilization=0.78, headroom_usd=210_000.0, equity=950_000.0)
    (alert,) = firing(snap)["margin_utilization"]
    assert (alert.account, alert.severity, alert.value, alert.threshold) == (
        "main",
        "warning",
        0.78,
        0.6,
    )
    assert alert.summary == (
        "main: margin utilisation 78% (warning 60%, critical 80%); "
        "headroom 210,000 USD of 950,000 USD equity"
    )


@pytest.mark.parametrize(
    ("ours", "severity"), [(250_000.0, "critical"), (70_000.0, "warning"), (110_000.0, None)]
)
def test_model_margin_divergence_either_way(
    base: RiskSnapshot, ours: float, severity: str | None
) -> None:
    """Venue MM 100,000: riskmon's 250,000 is 150% above it, 70,000 puts the venue's 43%
    above riskmon's (1/0.7 - 1), 110,000 is within the 25% warning."""
    snap = with_margin(base, model_maintenance_margin_usd=ours)
    cfg = config(model_margin_divergence={"for": "0s", "accounts": ["main"]})
    alerts = firing(snap, cfg=cfg).get("model_margin_divergence", [])
    unlisted = config(model_margin_divergence={"for": "0s"})  # not a portfolio-margin account
    assert firing(snap, cfg=unlisted).get("model_margin_divergence", []) == []
    if severity is None:
        assert alerts == []
        return
    (alert,) = alerts
    r = ours / 100_000.0
    assert alert.severity == severity
    assert alert.value == pytest.approx(max(r, 1.0 / r) - 1.0, rel=1e-12)
    assert "the venue's 100,000 USD" in alert.summary


def test_margin_utilization_with_equity_gone_is_critical(base: RiskSnapshot) -> None:
    snap = with_margin(base, utilization=None, equity=-12_000.0, headroom_usd=-112_000.0)
    (alert,) = firing(snap)["margin_utilization"]
    assert (alert.severity, alert.value) == ("critical", math.inf)
    assert "equity -12,000 USD is not positive with maintenance margin 100,000 USD" in (
        alert.summary
    )


def test_margin_utilization_notes_old_venue_figures(base: RiskSnapshot) -> None:
    snap = with_margin(base, utilization=0.85, age_seconds=95.0)
    (alert,) = firing(snap)["margin_utilization"]
    assert alert.severity == "critical"
    assert alert.summary.endswith("; venue figures 95 s old")


def test_distance_to_call_fires_in_fraction_and_sigmas(base: RiskSnapshot) -> None:
    distance = {
        "down": 0.075,
        "up": 0.40,
        "sigmas": {"down": 1.9, "up": 10.1},
        "reachable": {"down": True, "up": True},
    }
    snap = with_margin(base, distance_to_call=distance, headroom_usd=210_000.0)
    alerts = firing(snap)
    (frac,) = alerts["distance_to_call"]
    assert (frac.severity, frac.value, frac.threshold) == ("critical", 0.075, 0.08)
    assert frac.summary == (
        "main: a 7.5% fall of its underlyings reaches the margin call (warning 15%, "
        "critical 8%); 1.9 daily sigmas; headroom 210,000 USD"
    )
    (sig,) = alerts["distance_to_call_sigmas"]
    assert (sig.severity, sig.value, sig.threshold) == ("critical", 1.9, 2.0)
    assert sig.summary == (
        "main: the margin call is 1.9 daily sigmas away (warning 3, critical 2): "
        "a 7.5% fall of its underlyings"
    )


def test_distance_to_call_upward_and_scalar_sigmas(base: RiskSnapshot) -> None:
    distance = {"down": None, "up": 0.12, "sigmas": 2.5, "reachable": True}
    alerts = firing(with_margin(base, distance_to_call=distance))
    assert alerts["distance_to_call"][0].severity == "warning"
    assert "a 12% rise of its underlyings" in alerts["distance_to_call"][0].summary
    assert alerts["distance_to_call_sigmas"][0].severity == "warning"


def test_distance_to_call_resolves_when_no_call_is_reachable(base: RiskSnapshot) -> None:
    near = with_margin(
        base,
        distance_to_call={"down": 0.05, "up": None, "sigmas": {"down": 1.0, "up": None}},
    )
    unreachable = with_margin(
        base,
        distance_to_call={
            "down": None,
            "up": None,
            "sigmas": {"down": None, "up": None},
            "reachable": {"down": False, "up": False},
        },
    )
    moves, active = run([RuleInput(near), RuleInput(near), RuleInput(unreachable)])
    ends = [(t.alert.rule, t.alert.state) for t in moves if t.alert.state == "resolved"]
    assert ends == [("distance_to_call", "resolved"), ("distance_to_call_sigmas", "resolved")]
    assert active == []


def test_margin_rules_do_not_evaluate_without_the_figures(base: RiskSnapshot) -> None:
    fig = base.accounts["main"]
    bare = with_account(base, "main", extra={k: v for k, v in fig.extra.items() if k != "margin"})
    partial = with_margin(base, scenario_margin=None, distance_to_call=None, utilization=None)
    rules = ("margin_utilization", "distance_to_call", "distance_to_call_sigmas", "scenario_margin")
    for snap in (bare, partial):
        inp = RuleInput(snap)
        for r in build_rules():
            if r.name in rules:
                assert [x.account for x in each_reading(r.read(inp))] == [], r.name


def test_scenario_margin_fires_against_equity(base: RiskSnapshot) -> None:
    snap = with_margin(base, scenario_margin=620_000.0)
    (alert,) = firing(snap)["scenario_margin"]
    assert (alert.severity, alert.value) == ("warning", 0.62)
    assert alert.summary == (
        "main: scenario margin 620,000 USD is 62% of equity 1,000,000 USD (warning 50%, "
        "critical 80%); worst scenario: BTC -16% vol up + ETH -16% vol up"
    )


# --- regime --------------------------------------------------------------------------------


def test_vol_break_fires_per_held_underlying(base: RiskSnapshot) -> None:
    snap = replace(base, regime=regime(base, vol_ratio={"BTC": 2.2, "ETH": 1.3}))
    (alert,) = firing(snap)["vol_break"]
    assert (alert.account, alert.underlying, alert.severity) == (None, "BTC", "critical")
    assert alert.value == pytest.approx(2.2)
    assert "(ratio 2.20, 2.20x its 1.00 baseline; warning 1.5x, critical 2x)" in alert.summary
    assert alert.summary.startswith("BTC: fast volatility ")


def test_vol_break_ignores_underlyings_the_book_does_not_hold(base: RiskSnapshot) -> None:
    snap = replace(base, regime=regime(base, vol_ratio={"ETH": 3.0}))
    flat = with_account(snap, "main", exposure_usd={"BTC": 90_000.0})
    total = replace(flat.total, exposure_usd={"BTC": 90_000.0})
    assert "vol_break" not in firing(replace(flat, total=total))
    assert firing(snap)["vol_break"][0].underlying == "ETH"


def test_vol_vs_implied_fires_where_options_are_marked(base: RiskSnapshot) -> None:
    snap = replace(base, regime=regime(base, realised_to_implied={"BTC": 1.6}))
    (alert,) = firing(snap)["vol_vs_implied"]  # ETH: no IV, not read
    assert (alert.underlying, alert.severity, alert.value) == ("BTC", "critical", 1.6)
    vol = float(base.assets.volatility[base.assets.names.index("BTC")])
    assert alert.summary == (
        f"BTC: realised volatility {100 * vol:.0f}% is 1.60x the {100 * vol / 1.6:.0f}% implied "
        "the options are marked at (warning 1.25x, critical 1.5x)"
    )


def test_correlation_spike_and_absorption_fire_book_wide(base: RiskSnapshot) -> None:
    snap = replace(base, regime=regime(base, average_correlation=0.8, absorption_ratio=0.85))
    alerts = firing(snap)
    (corr,) = alerts["correlation_spike"]
    assert (corr.account, corr.underlying, corr.severity) == (None, None, "critical")
    assert corr.value == pytest.approx(0.3)
    assert corr.summary.startswith(
        "book: average correlation 0.80 vs a 0.50 baseline (+0.30; warning +0.15, "
        "critical +0.25) over BTC, ETH; highest BTC/ETH "
    )
    (absorption,) = alerts["absorption_spike"]
    assert absorption.severity == "warning"
    assert absorption.value == pytest.approx(0.10)
    assert absorption.summary == (
        "book: absorption ratio 0.85 vs a 0.75 baseline (+0.10; warning +0.08, critical "
        "+0.15): the top 1 of 2 factors carry 85% of the variance; average correlation 0.80"
    )


def test_regime_rules_hold_while_figures_are_unknown(base: RiskSnapshot) -> None:
    spike = replace(base, regime=regime(base, average_correlation=0.9))
    unknown = replace(base, regime=regime(base, average_correlation=math.nan))
    moves, active = run([RuleInput(spike), RuleInput(spike), RuleInput(unknown)])
    assert [a.rule for a in active] == ["correlation_spike"]
    assert not [t for t in moves if t.alert.state == "resolved"]


# --- limits --------------------------------------------------------------------------------


def test_net_delta_limit_per_account_in_usd(base: RiskSnapshot) -> None:
    main = base.accounts["main"]
    delta = main.greeks["delta_usd"]
    cfg = config(limits={"main": AccountLimits(delta_usd=100_000.0)})
    (alert,) = firing(base, cfg=cfg)["net_delta_limit"]
    assert (alert.account, alert.severity) == ("main", "critical")
    assert alert.value == pytest.approx(delta / 100_000.0)
    assert alert.summary.startswith(
        f"main: net delta {delta:+,.0f} USD is {100 * delta / 1e5:.0f}% of its 100,000 USD "
        "limit (warning 80%, critical 100%); largest: "
    )
    assert "net_delta_limit" not in firing(base)  # no limit, no rule


def test_net_vega_limit(base: RiskSnapshot) -> None:
    snap = with_account(base, "main", greeks={**base.accounts["main"].greeks, "vega": -42_000.0})
    cfg = config(limits={"main": AccountLimits(vega=50_000.0)})
    (alert,) = firing(snap, cfg=cfg)["net_vega_limit"]
    assert alert.severity == "warning"
    assert alert.value == pytest.approx(0.84)
    assert alert.summary == (
        "main: net vega -42,000 USD per vol point is 84% of its 50,000 USD limit "
        "(warning 80%, critical 100%)"
    )
    other = config(limits={"desk-b": AccountLimits(vega=1.0)})
    assert "net_vega_limit" not in firing(snap, cfg=other)


# --- hedges and data -----------------------------------------------------------------------


def test_hedge_offset_fires_when_the_hedge_is_cut_and_exposure_stays() -> None:
    eng = engine()
    hedged = calm(eng, END)
    cut: list[Event] = [PositionEvent(END + S, "hedged", "BTC-PERPETUAL", -0.5)]
    cut += market(END + S, 60, np.random.default_rng(6), 90_000.0, 3_000.0)
    eng.replay(cut, "test")
    after = calm(eng, END + 60 * S)
    alerts = firing(hedged, after)
    (alert,) = alerts["hedge_offset"]  # main is long by design: never watched
    assert (alert.account, alert.underlying, alert.severity) == ("hedged", "BTC", "critical")
    pos = after.accounts["hedged"].positions
    assert pos is not None
    long, short = (
        float(pos.delta_usd[pos.delta_usd > 0].sum()),
        float(pos.delta_usd[pos.delta_usd < 0].sum()),
    )
    assert alert.value == pytest.approx(1 - (long + short) / (long - short))
    assert alert.value == pytest.approx(0.4, abs=0.01)  # 2 long vs 0.5 short
    # The suggested hedge: the net delta over one perpetual's delta (the index price).
    contracts = (long + short) / float(after.assets.price[after.assets.names.index("BTC")])
    assert alert.summary == (
        f"hedged: BTC hedge offsets 40% of the gross delta (warning 75%, critical 50%); "
        f"net {long + short:+,.0f} USD of {long - short:,.0f} USD gross: long {long:,.0f} USD, "
        f"short {short:,.0f} USD; hedge: sell {contracts:,.4g} BTC-PERPETUAL (leaves gamma "
        "+0 USD per 1%, vega +0 USD per vol pt)"
    )


def test_hedge_offset_does_not_alert_a_book_that_was_never_hedged(base: RiskSnapshot) -> None:
    inp = RuleInput(base)
    (rule,) = [r for r in build_rules() if r.name == "hedge_offset"]
    assert [(x.account, x.underlying, x.value) for x in each_reading(rule.read(inp))] == [
        ("hedged", "BTC", 1.0)
    ]


def test_hedge_offset_stops_watching_when_the_exposure_is_gone() -> None:
    eng = engine()
    hedged = calm(eng, END)
    closed = [
        PositionEvent(END + S, "hedged", "BTC-PERPETUAL", -0.5),
        PositionEvent(END + S, "hedged", "BTC_USDC", 0.5),  # gross 90k < 100k
    ]
    eng.replay(closed + market(END + S, 5, np.random.default_rng(7), 90_000.0, 3_000.0), "t")
    small = calm(eng, END + 5 * S)
    assert "hedge_offset" not in firing(hedged, small)


def test_stale_data_names_the_stalest_instrument(base: RiskSnapshot) -> None:
    main = base.accounts["main"]
    pos = main.positions
    assert pos is not None
    ts = pos.price_ts_ms.copy()
    eth = pos.instrument.index("ETH-PERPETUAL")
    ts[eth] = base.as_of_ms - 400 * S
    snap = with_account(base, "main", positions=replace(pos, price_ts_ms=ts))
    (alert,) = firing(snap)["stale_data"]
    assert (alert.account, alert.underlying, alert.severity, alert.value) == (
        "main",
        "ETH",
        "critical",
        400.0,
    )
    assert alert.summary == (
        "main: ETH-PERPETUAL last priced 7 min ago (warning 60 s, critical 5 min); "
        "1 of 1 ETH positions without a price for 60 s"
    )
    # Never priced: missing since the position was opened, not forever. Opened a moment
    # ago is not stale (positions may arrive just before their first price); opened
    # 2 minutes ago without a price is.
    ts[eth] = 0
    opened = pos.opened_ms.copy()
    opened[eth] = base.as_of_ms - 2 * S
    fresh = with_account(base, "main", positions=replace(pos, price_ts_ms=ts, opened_ms=opened))
    assert "stale_data" not in firing(fresh)
    opened[eth] = base.as_of_ms - 120 * S
    never = with_account(base, "main", positions=replace(pos, price_ts_ms=ts, opened_ms=opened))
    (alert,) = firing(never)["stale_data"]
    assert (alert.value, alert.severity) == (120.0, "warning")
    assert alert.summary.startswith(
        "main: ETH-PERPETUAL not priced since it was opened 2 min ago ("
    )


def _stale_summary(snap: RiskSnapshot, account: str, und: str) -> str:
    """The stale_data summary of (account, und), position by position (independent of the
    rule's grouping and memo): the stalest of the index and the positions, and how many
    positions are past the warning (60 s)."""
    pos = snap.accounts[account].positions
    assert pos is not None
    rows = [i for i, u in enumerate(pos.underlying) if u == und]

    def age(since: int) -> float:
        return max(snap.as_of_ms - since, 0) / 1000.0

    def secs(x: float) -> str:
        return f"{x:.0f} s" if x < 120 else f"{x / 60:.0f} min" if x < 7200 else f"{x / 3600:.1f} h"

    ages = [age(int(pos.price_ts_ms[i]) or int(pos.opened_ms[i])) for i in rows]
    j = list(snap.assets.names).index(und)
    idx_ts = int(snap.assets.price_ts_ms[j])
    idx_age = age(idx_ts or min(int(pos.opened_ms[i]) for i in rows))
    worst = max(range(len(rows)), key=lambda r: (ages[r], -r))
    if idx_age >= ages[worst]:
        what, a, never = f"the {und} index", idx_age, idx_ts == 0
    else:
        what, a, never = pos.instrument[rows[worst]], ages[worst], pos.price_ts_ms[rows[worst]] == 0
    when = (
        f"not priced since it was opened {secs(a)} ago" if never else f"last priced {secs(a)} ago"
    )
    n = sum(x >= 60 for x in ages)
    return (
        f"{account}: {what} {when} (warning 60 s, critical 5 min); {n} of {len(rows)} {und} "
        "positions without a price for 60 s"
    )


def test_stale_data_summaries_follow_time_over_many_positions(base: RiskSnapshot) -> None:
    """Several positions per underlying, priced at different times: as only time passes
    (the same table re-dated, as an idle evaluation gives), each summary names the stalest
    and counts the stale positions as the position-by-position computation does."""
    eng = rule_engine(DEFAULT_RULES, {})
    main = base.accounts["main"]
    pos = main.positions
    assert pos is not None
    n = 12
    unds = ["BTC", "ETH"]
    columns: dict[str, Any] = {
        f: np.resize(getattr(pos, f), n)
        for f in pos.__dataclass_fields__
        if isinstance(getattr(pos, f), np.ndarray)
        and getattr(pos, f).shape == (len(pos.instrument),)
    }
    table = replace(pos, **columns)
    rng = np.random.default_rng(5)
    instrument = tuple(f"{unds[i % 2]}-X{i}" for i in range(n))
    ts = base.as_of_ms - rng.integers(0, 200, n) * S
    ts[3] = 0  # never priced: missing since opened
    opened = base.as_of_ms - rng.integers(100, 400, n) * S
    table = replace(
        table,
        instrument=instrument,
        underlying=tuple(unds[i % 2] for i in range(n)),
        price_ts_ms=ts,
        opened_ms=opened,
    )
    snap = with_account(base, "main", positions=table)
    for later in (0, 7, 45, 130, 900):  # seconds of nothing new
        at = replace(snap, as_of_ms=snap.as_of_ms + later * S)
        eng.evaluate(RuleInput(at), at.as_of_ms, unchanged=later > 0)
        got = {(a.account, a.underlying): a.summary for a in eng.active() if a.rule == "stale_data"}
        for und in unds:
            assert got[("main", und)] == _stale_summary(at, "main", und)


def _stale_values(snap: RiskSnapshot) -> dict[tuple[str, str], float]:
    """Every (account, underlying)'s stale_data figure, position by position: the largest
    age of the prices it uses (a position never priced counts from its opening, an index
    that never ticked from the group's first opening)."""
    out: dict[tuple[str, str], float] = {}
    names = list(snap.assets.names)
    for account, fig in snap.accounts.items():
        pos = fig.positions
        if pos is None or not pos.instrument:
            continue

        def age(since: int) -> float:
            return max(snap.as_of_ms - since, 0) / 1000.0

        for und in dict.fromkeys(pos.underlying):
            rows = [i for i, u in enumerate(pos.underlying) if u == und]
            ages = [age(int(pos.price_ts_ms[i]) or int(pos.opened_ms[i])) for i in rows]
            idx_ts = int(snap.assets.price_ts_ms[names.index(und)]) if und in names else 0
            ages.append(age(idx_ts or min(int(pos.opened_ms[i]) for i in rows)))
            out[account, und] = max(ages)
    return out


def test_stale_data_figures_over_changing_tables(base: RiskSnapshot) -> None:
    """The figures of one stale_data rule over evaluations whose tables come and go as an
    engine gives them (a new table each time, often with the same times; times, openings,
    groups, index ticks that change; an index or a position never priced) are those of the
    position-by-position computation."""
    (rule,) = [r for r in build_rules() if r.name == "stale_data"]
    pos = base.accounts["main"].positions
    assert pos is not None
    n = 9
    columns: dict[str, Any] = {
        f: np.resize(getattr(pos, f), n)
        for f in pos.__dataclass_fields__
        if isinstance(getattr(pos, f), np.ndarray)
        and getattr(pos, f).shape == (len(pos.instrument),)
    }
    rng = np.random.default_rng(7)
    unds = ["BTC", "ETH", "SOL"]  # SOL has no index in the snapshot
    t = base.as_of_ms
    underlying = [unds[i % 3] for i in range(n)]
    ts = t - rng.integers(0, 300, n) * S
    opened = t - rng.integers(200, 900, n) * S
    index_ts = base.assets.price_ts_ms.copy()
    table = None
    checked = 0
    for _ in range(60):
        t += int(rng.integers(0, 3)) * S
        change = rng.integers(0, 7)
        if change == 1:
            ts = ts.copy()
            ts[rng.integers(0, n)] = t - int(rng.integers(0, 400)) * S
        elif change == 2:
            ts = ts.copy()
            ts[rng.integers(0, n)] = 0  # never priced
        elif change == 3:
            opened = opened.copy()
            opened[rng.integers(0, n)] = t - int(rng.integers(0, 900)) * S
        elif change == 4:  # the same times, other groups
            underlying = [unds[int(k)] for k in rng.integers(0, 3, n)]
        elif change == 5:
            index_ts = index_ts.copy()
            index_ts[rng.integers(0, len(index_ts))] = 0 if rng.random() < 0.3 else t
        if table is None or change != 6:  # 6: the same table object again
            table = replace(
                pos,
                **{**columns, "price_ts_ms": ts.copy(), "opened_ms": opened.copy()},
                instrument=tuple(f"{u}-X{i}" for i, u in enumerate(underlying)),
                underlying=tuple(underlying),
            )
        snap = replace(
            with_account(base, "main", positions=table),
            as_of_ms=t,
            assets=replace(base.assets, price_ts_ms=index_ts),
        )
        got = {(r.account, r.underlying): r.value for r in each_reading(rule.read(RuleInput(snap)))}
        want = _stale_values(snap)
        assert got == want
        checked += len(want)
    assert checked > 100


def test_stale_data_when_prices_stop() -> None:
    eng = engine()
    later = calm(eng, END + 90 * S)  # no event for 90 s
    alerts = firing(later)["stale_data"]
    assert [(a.account, a.underlying, a.severity) for a in alerts] == [
        ("hedged", "BTC", "warning"),
        ("main", "BTC", "warning"),
        ("main", "ETH", "warning"),
    ]
    assert all(a.value == 90.0 for a in alerts)
    assert alerts[0].summary.startswith("hedged: the BTC index last priced 90 s ago")


def test_connector_down_fires_after_for_and_resolves_on_reconnect(base: RiskSnapshot) -> None:
    down = ConnectorStatus("deribit-main", "deribit", connected=False, reconnects=4)
    down.last_error = "ConnectionResetError: reset by peer"
    eng = rule_engine(DEFAULT_RULES, {})
    t = T0 + 10**6
    assert [x.alert.state for x in eng.evaluate(RuleInput(base, [down]), t)] == ["pending"]
    assert eng.evaluate(RuleInput(base, [down]), t + 29 * S) == []
    (fired,) = eng.evaluate(RuleInput(base, [down]), t + 30 * S)
    a = fired.alert
    assert (a.rule, a.account, a.severity, a.state) == (
        "connector_down",
        "deribit-main",
        "critical",
        "firing",
    )
    assert a.labels == {"connector": "deribit-main", "kind": "deribit"}
    assert a.summary == (
        "connector deribit-main (deribit) disconnected; 4 reconnects; "
        "last error: ConnectionResetError: reset by peer"
    )
    up = replace(down, connected=True, reconnects=5)
    (resolved,) = eng.evaluate(RuleInput(base, [up]), t + 31 * S)
    assert resolved.alert.state == "resolved"
    assert (
        resolved.alert.summary == "connector deribit-main (deribit) connected again; 5 reconnects"
    )


def test_connector_down_has_nothing_to_read_in_replay(base: RiskSnapshot) -> None:
    (rule,) = [r for r in build_rules() if r.name == "connector_down"]
    assert list(each_reading(rule.read(RuleInput(base)))) == []


def test_venue_greeks_disagreement(base: RiskSnapshot) -> None:
    vs = {"delta_usd": 62_000.0, "gamma_usd": 10.0, "vega": -3_100.0, "theta": 5.0, "positions": 36}
    snap = with_account(base, "main", extra={**base.accounts["main"].extra, "greeks_vs_venue": vs})
    alerts = firing(snap)
    (delta,) = alerts["venue_delta_mismatch"]
    assert (delta.severity, delta.value) == ("warning", 62_000.0)
    assert delta.summary == (
        "main: riskmon's delta differs from the venue's by +62,000 USD over 36 positions "
        "(warning 25,000, critical 100,000 USD)"
    )
    (vega,) = alerts["venue_vega_mismatch"]
    assert (vega.severity, vega.value) == ("warning", 3_100.0)
    assert "by -3,100 USD per vol point over 36 positions" in vega.summary


# --- the pack and its config ---------------------------------------------------------------


def test_a_disabled_rule_is_not_built() -> None:
    names = [r.name for r in build_rules(config(stale_data={"enabled": False}).rules)]
    assert "stale_data" not in names
    assert names == [r.rule for r in Config().rules if r.rule != "stale_data"]


def test_overrides_reach_the_rule(base: RiskSnapshot) -> None:
    snap = with_margin(base, utilization=0.5)
    assert "margin_utilization" not in firing(snap)
    cfg = config(margin_utilization={"warning": 0.4, "critical": "off", "clear": 0.35})
    (alert,) = firing(snap, cfg=cfg)["margin_utilization"]
    assert (alert.severity, alert.threshold) == ("warning", 0.4)
    assert alert.summary.startswith("main: margin utilisation 50% (warning 40%);")


def test_the_pack_is_deterministic_across_runs(base: RiskSnapshot) -> None:
    tripped = [
        with_shares(base, {"BTC": 0.9, "ETH": 0.1}, {"BTC": 0.5, "ETH": 0.5}),
        with_margin(base, utilization=0.9, scenario_margin=900_000.0),
        replace(base, regime=regime(base, vol_ratio={"BTC": 3.0}, average_correlation=0.9)),
        base,
    ]
    inputs = [RuleInput(s, CONNECTED) for s in tripped]
    first, second = run(inputs), run(inputs)
    assert [t.idempotency_key for t in first[0]] == [t.idempotency_key for t in second[0]]
    assert [t.report() for t in first[0]] == [t.report() for t in second[0]]
    # What the inputs trip, in order: each breach opens a pending episode (critical: drift
    # 0.4 on both legs, utilisation 0.9, scenario margin 90% of equity, vol ratio 3x,
    # average correlation 0.9) that the next, calm snapshot closes before its `for`.
    episodes: list[list[tuple[str, str | None, str | None]]] = [
        [
            ("risk_drift", "main", "BTC"),
            ("risk_drift", "main", "ETH"),
            ("concentration", "main", None),
        ],
        [("margin_utilization", "main", None), ("scenario_margin", "main", None)],
        [("vol_break", None, "BTC"), ("correlation_spike", None, None)],
    ]
    want = [
        (*key, prev, state, "critical")
        for keys in episodes
        for prev, state in (("inactive", "pending"), ("pending", "inactive"))
        for key in keys
    ]
    got = [
        (a.rule, a.account, a.underlying, t.previous, a.state, a.severity)
        for t in first[0]
        for a in [t.alert]
    ]
    assert got == want


def test_drift_rules_skip_accounts_without_material_risk(base: RiskSnapshot) -> None:
    """A delta-hedged book's shares swing through +-100%: no drift alerts below the floor."""
    snap = with_shares(base, {"BTC": 0.9, "ETH": 0.1}, {"BTC": 0.5, "ETH": 0.5})
    risk = snap.accounts["main"].risk
    assert risk is not None
    assert risk.contributions.sigma_usd >= 100_000.0  # material: fires
    assert "risk_drift" in firing(snap)
    hedged = with_account(
        snap,
        "main",
        risk=replace(risk, contributions=replace(risk.contributions, sigma_usd=60_000.0)),
    )
    assert "risk_drift" not in firing(hedged)
    assert "concentration" not in firing(hedged)
    cfg = config(risk_drift={"min_volatility_usd": 50_000.0})
    assert "risk_drift" in firing(hedged, cfg=cfg)


def test_var_backtest_and_stressed_var_ratio_fire_with_what_to_read(base: RiskSnapshot) -> None:
    backtest = {
        "zone": "red",
        "exceptions": 11,
        "observations": 250,
        "expected_exceptions": 2.5,
        "confidence": 0.99,
        "horizon_seconds": 3_600.0,
        "kupiec_p_value": 1.2e-4,
        "last": {"pnl_usd": -120_000.0, "var_usd": 80_000.0},
    }
    stressed = {"var_usd": 400_000.0, "ratio": 4.0, "correlation": 0.9, "vol_scale": 1.5}
    extra = {**base.accounts["main"].extra, "backtest": backtest, "stressed_var": stressed}
    snap = with_account(base, "main", extra=extra)
    cfg = config(var_backtest={"for": "0s"}, stressed_var_ratio={"for": "0s"})
    got = firing(snap, cfg=cfg)
    (bt,) = got["var_backtest"]
    assert (bt.severity, bt.value) == ("critical", 2.0)
    assert bt.summary.startswith(
        "main: VaR backtest red: 11 exceptions in 250 periods of 1h (expected 2.5 at 99%)"
    )
    assert "last period P&L -120,000 USD vs VaR 80,000 USD" in bt.summary
    (sv,) = got["stressed_var_ratio"]
    assert (sv.severity, sv.value) == ("critical", 4.0)
    assert "stressed VaR 400,000 USD is 4.00x the VaR" in sv.summary
    yellow = with_account(base, "main", extra={**extra, "backtest": {**backtest, "zone": "yellow"}})
    (bt,) = firing(yellow, cfg=cfg)["var_backtest"]
    assert (bt.severity, bt.value) == ("warning", 1.0)
