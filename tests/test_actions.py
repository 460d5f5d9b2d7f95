"""Attribution, rebalance and hedge suggestions in the report, and the what-if path.

Every figure is checked against a computation the test makes itself: shares from the
report's own volatilities and correlations, a scipy root of the risk-budget conditions,
a replay of the same events with the trade applied.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import msgspec
import numpy as np
import pytest
from scipy import optimize

from monitor.engine.actions import ActionSettings
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.engine.whatif import Trade, WhatIfError, run_whatif
from monitor.model.events import Event, PositionEvent, PriceEvent
from monitor.rules.config import AccountLimits
from monitor.rules.pack import build_rules, rule_engine

T0 = 1_767_225_600_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=20_000,
    fast_halflife_ms=5_000,
    warmup_ms=5_000,
    max_gap_ms=30_000,
    eval_interval_ms=1_000,
    var_halflife_ms=20_000,
)
UNDS = ("BTC", "ETH", "SOL")
START = (90_000.0, 3_000.0, 150.0)
VOLS = np.array([0.5, 0.7, 0.9]) / math.sqrt(365 * 86_400)  # per second
CORR = np.array([[1.0, 0.6, 0.4], [0.6, 1.0, 0.5], [0.4, 0.5, 1.0]])
OPTION = "BTC-26JUN26-100000-C"
LINEAR = {"BTC-PERPETUAL": 0, "ETH-PERPETUAL": 1, "SOL_USDC": 2}


def market(seconds: int, seed: int = 7) -> list[Event]:
    """Correlated index paths, one tick a second per underlying, plus an option mark."""
    rng = np.random.default_rng(seed)
    chol = np.linalg.cholesky(CORR)
    logp = np.log(np.array(START))
    out: list[Event] = []
    for k in range(seconds):
        logp = logp + VOLS * (chol @ rng.standard_normal(3)) * 40.0  # a lively market
        ts = T0 + k * 1_000
        for name, lp in zip(UNDS, logp, strict=True):
            out.append(PriceEvent(ts, name, float(np.exp(lp))))
        for name, u in LINEAR.items():  # the linear instruments' own marks, near the index
            out.append(PriceEvent(ts, name, float(np.exp(logp[u])) * 1.0002))
        out.append(PriceEvent(ts, OPTION, 0.05 * float(np.exp(logp[0])), iv=0.6))
    return out


def book(ts: int) -> list[Event]:
    return [
        PositionEvent(ts, "main", "BTC-PERPETUAL", 20.0),
        PositionEvent(ts, "main", "ETH-PERPETUAL", 300.0),
        PositionEvent(ts, "main", "SOL_USDC", 2_000.0),
        PositionEvent(ts, "opt", OPTION, 40.0),
        PositionEvent(ts, "opt", "BTC-PERPETUAL", -5.0),
        PositionEvent(ts, "opt", "ETH-PERPETUAL", 100.0),
    ]


def risk_settings(**actions: Any) -> RiskSettings:
    return RiskSettings(
        budgets={"main": {"BTC": 0.5, "ETH": 0.3, "SOL": 0.2}},
        var_scenarios=200,
        actions=ActionSettings(**actions),
    )


def engine(risk: RiskSettings | None = None, seconds: int = 60) -> Engine:
    eng = Engine(SETTINGS, risk=risk or risk_settings())
    eng.replay([*book(T0), *market(seconds)], "t")
    eng.evaluate(T0 + seconds * 1_000)
    return eng


def report(eng: Engine) -> dict[str, Any]:
    assert eng.snapshot is not None
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(eng.snapshot.report()))
    return doc


def covariance(doc: dict[str, Any], names: list[str]) -> np.ndarray:
    """The slow covariance from the report's own volatilities and correlation matrix."""
    order = doc["correlation"]["assets"]
    idx = [order.index(n) for n in names]
    vol = np.array([doc["assets"][n]["volatility"] for n in names])
    corr = np.array(doc["correlation"]["matrix"], dtype=float)[np.ix_(idx, idx)]
    return np.asarray(corr * np.outer(vol, vol))


def trades_of(section: dict[str, Any], account: str) -> list[Trade]:
    return [
        Trade(account, row["instrument"], row["contracts"])
        for row in section["underlyings"].values()
        if row["contracts"]
    ]


def whatif(eng: Engine, trades: list[Trade], limits: Any = None) -> dict[str, Any]:
    state = eng.whatif_state()
    assert state is not None
    out = run_whatif(state, trades, lambda: build_rules(None, limits or {}))
    doc: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(out))
    return doc


# --- rebalance ---------------------------------------------------------------------------


def budget_root(cov: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent risk budgeting: scipy's root of ``y_i (S y)_i = b_i`` in log space."""
    scale = float(np.mean(np.diagonal(cov)))
    s = cov / scale

    def f(z: np.ndarray) -> np.ndarray:
        y = np.exp(z)
        return np.asarray(y * (s @ y) - b)

    sol = optimize.root(f, np.log(np.sqrt(b / np.diagonal(s))), method="hybr", tol=1e-14)
    assert sol.success
    return np.asarray(np.exp(sol.x))


def test_rebalance_through_whatif_puts_every_share_on_budget() -> None:
    eng = engine()
    doc = report(eng)
    main = doc["accounts"]["main"]
    reb = main["suggestions"]["rebalance"]
    assert reb["method"] == "risk_budget"
    assert reb["converged"]
    names = list(reb["underlyings"])
    assert names == ["BTC", "ETH", "SOL"]
    assert [reb["underlyings"][n]["instrument"] for n in names] == [
        "BTC-PERPETUAL",
        "ETH-PERPETUAL",
        "SOL_USDC",
    ]
    cov = covariance(doc, names)
    b = np.array([0.5, 0.3, 0.2])
    y = budget_root(cov, b)
    x_now = np.array([main["exposure_usd"][n] for n in names])
    sigma_now = math.sqrt(float(x_now @ cov @ x_now))
    expected = y * sigma_now / math.sqrt(float(y @ cov @ y))  # long book: same sign, vol kept
    target = np.array([reb["underlyings"][n]["target_usd"] for n in names])
    np.testing.assert_allclose(target, expected, rtol=1e-6)
    # Contracts: the change over multiplier x index price.
    price = np.array([doc["assets"][n]["price"] for n in names])
    contracts = np.array([reb["underlyings"][n]["contracts"] for n in names])
    np.testing.assert_allclose(contracts, (expected - x_now) / price, rtol=1e-6)

    out = whatif(eng, trades_of(reb, "main"))
    after = out["accounts"]["main"]["after"]
    for n, bi in zip(names, b, strict=True):
        assert after["contributions"][n]["share"] == pytest.approx(bi, abs=1e-6)
    assert after["volatility_usd"] == pytest.approx(sigma_now, rel=1e-6)
    np.testing.assert_allclose([after["exposure_usd"][n] for n in names], expected, rtol=1e-6)


def test_gross_scale_keeps_gross_exposure() -> None:
    eng = engine(risk_settings(rebalance_scale="gross", rebalance_method="inverse_vol"))
    doc = report(eng)
    main = doc["accounts"]["main"]
    reb = main["suggestions"]["rebalance"]
    names = list(reb["underlyings"])
    gross = sum(abs(main["exposure_usd"][n]) for n in names)
    vol = np.array([doc["assets"][n]["volatility"] for n in names])
    b = np.array([0.5, 0.3, 0.2])
    expected = (b / vol) / (b / vol).sum() * gross
    np.testing.assert_allclose(
        [reb["underlyings"][n]["target_usd"] for n in names], expected, rtol=1e-9
    )


# --- hedge -------------------------------------------------------------------------------


def test_hedge_to_the_limit_through_whatif() -> None:
    limit = 50_000.0
    eng = engine(risk_settings(delta_limits={"opt": limit}))
    doc = report(eng)
    opt = doc["accounts"]["opt"]
    hedge = opt["suggestions"]["hedge"]
    net = opt["greeks"]["delta_usd"]
    assert abs(net) > limit  # the book is beyond its limit
    assert hedge["target"] == "limit"
    out = whatif(eng, trades_of(hedge, "opt"))["accounts"]["opt"]
    before, after = out["before"]["greeks"], out["after"]["greeks"]
    assert after["delta_usd"] == pytest.approx(math.copysign(limit, net), rel=1e-9, abs=1e-9)
    # Linear hedges leave the book's convexity: the residual gamma and vega are the book's.
    assert after["gamma_usd"] == pytest.approx(before["gamma_usd"], rel=1e-12)
    assert after["vega"] == pytest.approx(before["vega"], rel=1e-12)
    rows = hedge["underlyings"].values()
    assert sum(r["residual_gamma_usd"] for r in rows) == pytest.approx(before["gamma_usd"])
    assert sum(r["residual_vega_usd"] for r in rows) == pytest.approx(before["vega"])


def test_hedge_without_limit_goes_flat_per_underlying() -> None:
    eng = engine()
    hedge = report(eng)["accounts"]["opt"]["suggestions"]["hedge"]
    assert hedge["target"] == "flat"
    out = whatif(eng, trades_of(hedge, "opt"))["accounts"]["opt"]["after"]
    for und, x in out["exposure_usd"].items():
        assert abs(x) <= 1e-9 * abs(hedge["underlyings"][und]["delta_usd"]), und


def test_hedge_within_the_limit_trades_nothing() -> None:
    eng = engine(risk_settings(delta_limits={"opt": 1e12}))
    hedge = report(eng)["accounts"]["opt"]["suggestions"]["hedge"]
    assert all(r["contracts"] == 0.0 for r in hedge["underlyings"].values())


# --- what-if -----------------------------------------------------------------------------

REPLAY_RISK = RiskSettings(
    budgets=risk_settings().budgets,
    var_scenarios=200,
    scenario_interval_ms=1,  # the replay's scenario figures as of its last evaluation too
    recompute_interval_ms=1,
)


def test_whatif_equals_a_replay_with_the_trade_applied_and_leaves_live_state() -> None:
    seconds = 60
    end = T0 + seconds * 1_000
    live = engine(REPLAY_RISK, seconds)
    twin = engine(REPLAY_RISK, seconds)
    snap_before = msgspec.json.encode(live.snapshot.report() if live.snapshot else None)
    state_copy = copy.deepcopy(live._positions)

    out = whatif(live, [Trade("main", "BTC-PERPETUAL", -8.0), Trade("main", OPTION, -3.0)])

    # The live snapshot and state are untouched, and the next evaluation equals a twin's.
    assert msgspec.json.encode(live.snapshot.report() if live.snapshot else None) == snap_before
    assert live._positions == state_copy
    a, b = live.evaluate(end + 1_000).report(), twin.evaluate(end + 1_000).report()
    assert msgspec.json.encode(a) == msgspec.json.encode(b)

    # A replay of the same events with the trades applied (at the last event's time).
    replayed = Engine(SETTINGS, risk=REPLAY_RISK)
    trades: list[Event] = [
        PositionEvent(end - 1_000, "main", "BTC-PERPETUAL", 12.0),
        PositionEvent(end - 1_000, "main", OPTION, -3.0),
    ]
    replayed.replay([*book(T0), *market(seconds), *trades], "t")
    expected = _plain(replayed.evaluate(end).report()["accounts"]["main"])
    base = Engine(SETTINGS, risk=REPLAY_RISK)
    base.replay([*book(T0), *market(seconds)], "t")
    expected_before = _plain(base.evaluate(end).report()["accounts"]["main"])
    got = out["accounts"]["main"]
    for side, want in (("before", expected_before), ("after", expected)):
        have = got[side]
        for key in ("positions", "greeks", "exposure_usd", "contributions", "volatility_usd"):
            assert_close(have[key], want[key], 1e-12, f"{side}.{key}")
        for key in ("delta_normal", "delta_gamma", "full_revaluation"):
            assert_close(have["var"][key], want["var"][key], 1e-12, f"{side}.var.{key}")
        for key in ("scenario_margin", "worst_scenario", "stresses"):
            assert_close(have["margin"][key], want["margin"][key], 1e-12, f"{side}.{key}")
        assert_close(have["suggestions"], want["suggestions"], 1e-9, f"{side}.suggestions")
    assert got["after"]["exposure_usd"] != got["before"]["exposure_usd"]


def assert_close(have: Any, want: Any, rel: float, where: str) -> None:
    """Equal structure; numbers equal to ``rel`` (None, strings and flags exactly)."""
    if isinstance(want, dict):
        assert isinstance(have, dict), where
        assert set(have) == set(want), where
        for k in want:
            assert_close(have[k], want[k], rel, f"{where}.{k}")
    elif isinstance(want, list):
        assert isinstance(have, list), where
        assert len(have) == len(want), where
        for k, (h, w) in enumerate(zip(have, want, strict=True)):
            assert_close(h, w, rel, f"{where}[{k}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert have == pytest.approx(want, rel=rel, abs=1e-9), where
    else:
        assert have == want, where


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    plain: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(doc))
    return plain


def test_whatif_lists_the_alerts_a_trade_fires_and_clears() -> None:
    limits = {"opt": AccountLimits(delta_usd=50_000.0)}
    eng = engine()
    hedge = report(eng)["accounts"]["opt"]["suggestions"]["hedge"]
    out = whatif(eng, trades_of(hedge, "opt"), limits)["accounts"]["opt"]["alerts"]
    # Flat: the net delta limit's breach clears (with the drift of a book now flat).
    assert "net_delta_limit" in [a["rule"] for a in out["clear"]]
    assert "net_delta_limit" not in [a["rule"] for a in out["fire"] + out["still"]]
    back = [Trade("opt", "BTC-PERPETUAL", 50.0)]
    out = whatif(eng, back, limits)["accounts"]["opt"]["alerts"]
    assert "net_delta_limit" in [a["rule"] for a in out["fire"] + out["still"]]


def test_whatif_refuses_what_it_cannot_price() -> None:
    eng = engine()
    with pytest.raises(WhatIfError, match="unknown instrument"):
        whatif(eng, [Trade("main", "NOT A NAME", 1.0)])
    with pytest.raises(WhatIfError, match="index"):
        whatif(eng, [Trade("main", "BTC", 1.0)])


# --- attribution and alert text -----------------------------------------------------------


def test_attribution_reference_is_the_first_known_state_then_the_lookback() -> None:
    eng = Engine(SETTINGS, risk=risk_settings(lookback_ms=20_000))
    events = [*book(T0), *market(90)]
    # At 40 s the main book changes: BTC position tripled.
    events.append(PositionEvent(T0 + 40_000, "main", "BTC-PERPETUAL", 60.0))
    events.sort(key=lambda e: e.ts or 0)
    snaps: list[dict[str, Any]] = []
    for ev in events:
        eng.replay([ev], "t")
        if eng.snapshot is not None and (not snaps or snaps[-1]["as_of"] != _as_of(eng)):
            snaps.append(report(eng))
    known = [s for s in snaps if s["accounts"].get("main", {}).get("attribution")]
    first = known[0]
    att0 = first["accounts"]["main"]["attribution"]
    assert att0["since"] == "start"
    assert att0["reference_as_of"] == first["as_of"]
    for n, row in att0["underlyings"].items():
        assert row["total"] == 0.0, n
    # 30 s later (> lookback): the reference is about 20 s back, within a ring step.
    later = known[-1]
    att = later["accounts"]["main"]["attribution"]
    assert att["since"] == "20s"
    ref_doc = next(s for s in snaps if s["as_of"] == att["reference_as_of"])
    age = _ms(later["as_of"]) - _ms(att["reference_as_of"])
    assert 20_000 <= age <= 20_000 + 20_000 // 96 + 1_000
    contrib_now = later["accounts"]["main"]["contributions"]
    contrib_ref = ref_doc["accounts"]["main"]["contributions"]
    for n, row in att["underlyings"].items():
        assert row["share_ref"] == pytest.approx(contrib_ref[n]["share"], rel=1e-9)
        assert row["share_now"] == pytest.approx(contrib_now[n]["share"], rel=1e-9)
        parts = row["positions"] + row["volatility"] + row["correlation"] + row["residual"]
        assert parts == pytest.approx(row["total"], abs=1e-12)
        assert abs(row["residual"]) < 1e-12
    # Across the position change the BTC share moved, mostly for positions.
    mid = next(
        s
        for s in known
        if _ms(s["as_of"]) > T0 + 40_000
        and _ms(s["accounts"]["main"]["attribution"]["reference_as_of"]) < T0 + 40_000
    )
    btc = mid["accounts"]["main"]["attribution"]["underlyings"]["BTC"]
    assert btc["total"] > 0.1
    assert btc["positions"] > 0.5 * btc["total"]


def _as_of(eng: Engine) -> str:
    assert eng.snapshot is not None
    return str(eng.snapshot.report()["as_of"])


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


def test_drift_and_hedge_alerts_carry_the_attribution_and_the_trades() -> None:
    from monitor.rules.config import DEFAULT_RULES, NetDeltaLimitRule, RiskDriftRule

    rules = [
        RiskDriftRule(warning=0.01, critical=0.02, clear=0.005, min_volatility_usd=0.0)
        if isinstance(r, RiskDriftRule)
        else r
        for r in DEFAULT_RULES
    ]
    assert any(isinstance(r, NetDeltaLimitRule) for r in rules)
    limits = {"opt": AccountLimits(delta_usd=50_000.0)}
    eng = Engine(
        SETTINGS,
        risk=risk_settings(delta_limits={"opt": 50_000.0}),
        rules=rule_engine(rules, limits),
    )
    eng.replay([*book(T0), *market(60)], "t")
    snap = eng.evaluate(T0 + 60_000)
    doc = report(eng)
    drift = [a for a in snap.alerts if a.rule == "risk_drift" and a.account == "main"]
    assert drift
    att = doc["accounts"]["main"]["attribution"]
    assert att["summary"].startswith("main: ")
    assert "since start" in att["summary"]
    for a in drift:
        row = att["underlyings"][a.underlying]
        parts = sorted(
            [
                ("vol", row["volatility"]),
                ("correlation", row["correlation"]),
                ("positions", row["positions"]),
            ],
            key=lambda kv: -abs(kv[1]),
        )
        why = ", ".join(f"{round(100 * v):+d} pts {k}" for k, v in parts)
        assert f"; since start: {why}" in a.summary
        assert "; rebalance: " in a.summary
    (conc,) = [a for a in snap.alerts if a.rule == "concentration" and a.account == "opt"]
    assert doc["accounts"]["opt"]["attribution"]["summary"] in conc.summary
    (delta,) = [a for a in snap.alerts if a.rule == "net_delta_limit"]
    hedge = doc["accounts"]["opt"]["suggestions"]["hedge"]
    btc = hedge["underlyings"]["BTC"]["contracts"]
    word = "buy" if btc > 0 else "sell"
    assert f"{word} {abs(btc):,.4g} BTC-PERPETUAL" in delta.summary or (
        f"{word} {abs(btc):,.0f} BTC-PERPETUAL" in delta.summary
    )
    assert "leaves gamma" in delta.summary


# --- HTTP ----------------------------------------------------------------------------------


async def test_http_whatif_and_account_routes() -> None:
    import aiohttp
    from tools import StaticView

    from monitor.serve.http import HttpServer
    from monitor.serve.metrics import build_registry

    eng = engine()
    view = StaticView(snapshot=eng.snapshot)
    registry, _ = build_registry(view)

    async def run(trades: Any) -> dict[str, Any] | None:
        state = eng.whatif_state()
        return None if state is None else run_whatif(state, trades, build_rules)

    async with (
        HttpServer(view, registry, "127.0.0.1:0", whatif=run) as server,
        aiohttp.ClientSession() as http,
    ):
        url = f"{server.url}/api/v1"
        async with http.get(f"{url}/accounts/main") as r:
            assert r.status == 200
            body = await r.json()
        assert body == _plain({"as_of": report(eng)["as_of"], **report(eng)["accounts"]["main"]})
        async with http.get(f"{url}/accounts/nobody") as r:
            assert r.status == 404
        good = {"account": "main", "trades": [{"instrument": "BTC-PERPETUAL", "quantity": -2}]}
        async with http.post(f"{url}/whatif", json=good) as r:
            assert r.status == 200
            out = await r.json()
        direct = whatif(eng, [Trade("main", "BTC-PERPETUAL", -2.0)])
        assert out == direct
        secret = "s3cr3t-token-value"
        bad: list[Any] = [
            b"not json " + secret.encode(),
            {"trades": []},
            {"trades": [{"instrument": "BTC-PERPETUAL", "quantity": 1}]},  # no account
            {"account": "main", "trades": [{"instrument": "BTC-PERPETUAL", "quantity": 0}]},
            {"account": "main", "trades": [{"instrument": secret, "quantity": "x"}]},
            {"account": "main", "trades": [{"instrument": "BTC", "quantity": 1}]},
            {"account": "main", "trades": [{"instrument": "X", "quantity": 1, "key": secret}]},
            {"account": "main", "trades": [{"instrument": "BTC-PERPETUAL", "quantity": 1e400}]},
            {
                "account": "main",
                "trades": [{"instrument": "BTC-PERPETUAL", "quantity": 1, "price": -1}],
            },
        ]
        for body_in in bad:
            kw: dict[str, Any] = (
                {"data": body_in} if isinstance(body_in, bytes) else {"json": body_in}
            )
            async with http.post(f"{url}/whatif", **kw) as r:
                assert r.status == 400, body_in
                text = await r.text()
            assert set(json.loads(text)) == {"error"}
            assert secret not in text


# --- CLI against a running daemon -----------------------------------------------------------


def test_cli_whatif_against_the_demo_daemon() -> None:
    import subprocess
    import sys
    import time

    from test_daemon import Daemon

    d = Daemon()
    try:
        deadline = time.monotonic() + 60
        held: list[dict[str, Any]] = []
        while time.monotonic() < deadline and not held:
            status, body = d.get("/api/v1/accounts/parity")
            if status == 200:
                held = [p for p in json.loads(body)["positions"] if "PERPETUAL" in p["instrument"]]
            time.sleep(0.5)
        assert held, "the demo's parity account holds no perpetual"
        pos = held[0]
        cmd = [sys.executable, "-m", "monitor", "whatif", "--url", d.url, "--account", "parity"]
        proc = subprocess.run(
            [*cmd, f"{pos['instrument']}=-2", "--json"], capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)["accounts"]["parity"]
        und = pos["underlying"]
        row = next(p for p in out["before"]["positions"] if p["instrument"] == pos["instrument"])
        per_contract = row["delta_usd"] / row["quantity"]
        change = out["after"]["exposure_usd"][und] - out["before"]["exposure_usd"][und]
        assert change == pytest.approx(-2 * per_contract, rel=1e-9)
        table = subprocess.run(
            [*cmd, f"{pos['instrument']}=-2"], capture_output=True, text=True, timeout=60
        )
        assert table.returncode == 0, table.stderr
        assert f"exposure {und}" in table.stdout
        bad = subprocess.run([*cmd, "BTC-PERPETUAL=zero"], capture_output=True, text=True)
        assert bad.returncode == 2
        assert "INSTRUMENT=QTY" in bad.stderr
        unknown = subprocess.run([*cmd, "NOPE=1"], capture_output=True, text=True, timeout=60)
        assert unknown.returncode == 1
        assert "HTTP 400" in unknown.stderr
    finally:
        d.proc.kill()
        d.proc.wait()


# --- VaR backtest and stressed VaR ---------------------------------------------------------


def test_backtest_pairs_each_period_held_pnl_with_its_predicted_var() -> None:
    from scipy import stats

    h = 10_000
    risk = risk_settings(backtest_horizon_ms=h, backtest_min_obs=3)
    eng = Engine(SETTINGS, risk=risk)
    events = sorted([*book(T0), *market(95)], key=lambda e: e.ts or 0)
    # Trading inside a period does not enter its P&L: main sells its SOL at 33 s.
    events.append(PositionEvent(T0 + 33_000, "main", "SOL_USDC", 0.0))
    events.sort(key=lambda e: e.ts or 0)
    at: dict[int, dict[str, Any]] = {}
    for ev in events:
        eng.replay([ev], "t")
        snap = eng.snapshot
        if snap is not None and snap.as_of_ms % h == 0 and snap.as_of_ms not in at:
            at[snap.as_of_ms] = report(eng)
    marks: dict[tuple[str, int], float] = {}
    for ev in events:
        if isinstance(ev, PriceEvent):
            marks[(ev.instrument, ev.ts)] = ev.price

    def price(name: str, t: int) -> float:
        return marks[(name, max(ts for (n, ts) in marks if n == name and ts <= t))]

    def held(t: int) -> dict[str, float]:
        sol = {"SOL_USDC": 2_000.0} if t < T0 + 33_000 else {}
        return {"BTC-PERPETUAL": 20.0, "ETH-PERPETUAL": 300.0, **sol}

    # Periods start at every multiple of h the clock meets (the first at T0, where the
    # VaR leaves every underlying out: no return yet, no prediction, skipped).
    starts = sorted(at)[1:-1]
    pnl = [sum(q * (price(n, t + h) - price(n, t)) for n, q in held(t).items()) for t in starts]
    scale = math.sqrt(h / 86_400_000)
    var = [at[t]["accounts"]["main"]["var"]["delta_normal"]["var_usd"] * scale for t in starts]
    last = at[starts[-1] + h]["accounts"]["main"]["backtest"]
    assert last["observations"] == len(pnl)
    assert last["last"]["pnl_usd"] == pytest.approx(pnl[-1], rel=1e-9)
    assert last["last"]["var_usd"] == pytest.approx(var[-1], rel=1e-12)
    x = sum(p < -v for p, v in zip(pnl, var, strict=True))
    n = len(pnl)
    assert last["exceptions"] == x
    lr = -2 * ((n - x) * math.log(0.99) + (x * math.log(0.01) if x else 0.0))
    if 0 < x < n:
        lr += 2 * ((n - x) * math.log(1 - x / n) + x * math.log(x / n))
    elif x == n:
        lr += 0.0
    assert last["kupiec_lr"] == pytest.approx(lr, rel=1e-9)
    assert last["kupiec_p_value"] == pytest.approx(stats.chi2.sf(lr, 1), rel=1e-9)
    cdf = stats.binom.cdf(x, n, 0.01)
    zone = "green" if cdf < 0.95 else "yellow" if cdf < 0.9999 else "red"
    assert last["zone"] == zone


def test_stressed_var_is_the_delta_normal_var_on_the_stressed_covariance() -> None:
    from scipy.special import ndtri

    eng = engine()
    main = report(eng)["accounts"]["main"]
    names = list(eng.registry.underlyings)
    x = np.array([main["exposure_usd"][n] for n in names])
    cov = eng.estimator.covariance(var=True)  # the VaR estimator's, an input here
    vol = np.sqrt(np.diagonal(cov)) * 1.5
    corr = np.full((3, 3), 0.9)
    np.fill_diagonal(corr, 1.0)
    stressed = corr * np.outer(vol, vol)
    z = ndtri(0.99)
    expected = z * math.sqrt(float(x @ stressed @ x) / 365.0)
    normal = z * math.sqrt(float(x @ cov @ x) / 365.0)
    st = main["stressed_var"]
    assert main["var"]["delta_normal"]["var_usd"] == pytest.approx(normal, rel=1e-9)
    assert st["var_usd"] == pytest.approx(expected, rel=1e-9)
    assert st["ratio"] == pytest.approx(expected / normal, rel=1e-9)


def test_metrics_export_the_report_sections() -> None:
    from tools import StaticView

    from monitor.serve.metrics import build_registry

    eng = engine(risk_settings(delta_limits={"opt": 50_000.0}))
    view = StaticView(snapshot=eng.snapshot)
    registry, _ = build_registry(view, process_metrics=False)
    doc = report(eng)

    def get(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    main, opt = doc["accounts"]["main"], doc["accounts"]["opt"]
    for und, row in main["attribution"]["underlyings"].items():
        for factor in ("positions", "volatility", "correlation", "residual"):
            labels = {"account": "main", "underlying": und, "factor": factor}
            assert get("riskmon_account_risk_share_change", **labels) == row[factor]
    for und, row in main["suggestions"]["rebalance"]["underlyings"].items():
        labels = {"account": "main", "underlying": und}
        assert get("riskmon_account_rebalance_target_usd", **labels) == row["target_usd"]
        assert get("riskmon_account_rebalance_change_usd", **labels) == row["change_usd"]
    hedge = opt["suggestions"]["hedge"]
    for und, row in hedge["underlyings"].items():
        change = get("riskmon_account_hedge_change_usd", account="opt", underlying=und)
        assert change == pytest.approx(row["contracts"] * row["usd_per_contract"], rel=1e-12)
    assert get("riskmon_account_hedge_residual_gamma_usd", account="opt") == pytest.approx(
        opt["greeks"]["gamma_usd"], rel=1e-12
    )
    assert (
        get("riskmon_account_stressed_var_ratio", account="main") == (main["stressed_var"]["ratio"])
    )
    assert get("riskmon_account_var_backtest_observations", account="main") == 0.0
    assert get("riskmon_account_var_backtest_zone", account="main") is None  # no zone yet


# --- refresh: advisory sections spread over evaluations ----------------------------------


def _suggestions(doc: dict[str, Any], account: str) -> Any:
    return doc["accounts"][account]["suggestions"]


def test_periodic_refresh_is_spread_and_a_position_change_refreshes_its_account() -> None:
    """With ``refresh_ms`` and ``refresh_spread``, an evaluation recomputes at most
    ``ceil(accounts / spread)`` accounts whose sections are old, the oldest first, plus every
    account whose positions changed; each account's sections are those an engine that
    recomputes everything at every evaluation gave at the time they say (``as_of``)."""
    accounts = [f"acc{k}" for k in range(4)]
    events: list[Event] = []
    for k, a in enumerate(accounts):
        events += [
            PositionEvent(T0, a, "BTC-PERPETUAL", 5.0 + k),
            PositionEvent(T0, a, "ETH-PERPETUAL", 100.0 - 30 * k),
            PositionEvent(T0, a, "SOL_USDC", 500.0 * (k + 1)),
        ]
    moves = market(40)
    settings = RiskSettings(var_scenarios=200, actions=ActionSettings())
    spread = RiskSettings(
        var_scenarios=200, actions=ActionSettings(refresh_ms=4_000, refresh_spread=2)
    )
    every, spaced = Engine(SETTINGS, risk=settings), Engine(SETTINGS, risk=spread)
    truth: dict[tuple[str, str], Any] = {}  # (account, as_of) -> suggestions, recomputed each time
    seen_as_of: dict[str, set[str]] = {a: set() for a in accounts}
    start = T0 + 20_000
    for eng in (every, spaced):
        eng.replay(events, "t")
    trade_at = None
    just_refreshed = False  # acc2's sections were recomputed at the previous evaluation
    for t in range(T0, start + 16_000, 1_000):
        later = [e for e in moves if e.ts is not None and t - 1_000 < e.ts <= t]
        if trade_at is None and t >= start + 5_000 and just_refreshed:
            # acc2 trades a second after its last refresh (not due by age): its sections
            # are recomputed at once all the same.
            trade_at = t
            later.append(PositionEvent(t, "acc2", "ETH-PERPETUAL", 400.0))
        for eng in (every, spaced):
            eng.replay(later, "t")
            eng.evaluate(t)
        full, part = report(every), report(spaced)
        for a in accounts:
            truth[(a, full["accounts"][a]["as_of"])] = _suggestions(full, a)
        if t < start:
            continue
        as_of = {a: part["accounts"][a]["as_of"] for a in accounts}
        now = full["accounts"]["acc0"]["as_of"]
        fresh = [a for a in accounts if as_of[a] == now]
        if t == trade_at:
            assert "acc2" in fresh
        just_refreshed = "acc2" in fresh
        assert len(fresh) <= 2  # ceil(4 accounts / spread 2)
        for a in accounts:
            seen_as_of[a].add(as_of[a])
            assert _suggestions(part, a) == truth[(a, as_of[a])]
    assert trade_at is not None
    # Every account was refreshed periodically (not only once, at the start).
    assert all(len(v) >= 3 for v in seen_as_of.values())
