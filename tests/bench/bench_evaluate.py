"""Benchmark: one full evaluation of the reference book.

50 underlyings, 20,000 option positions (plus a perpetual hedge per underlying) over 20
accounts, marked with venue IVs, warm estimator. Prints figures; asserts nothing.

Run: ``python tests/bench/bench_evaluate.py [--repeat N]`` (one core:
``OPENBLAS_NUM_THREADS=1``). Figures:

  evaluate       ``Engine.evaluate`` with the scenario VaR not due: valuation, Greeks,
                 exposures, contributions, parametric VaR/ES, regime, margin
  scenario VaR   the full-revaluation pass alone (every ``risk.scenario_interval``)
  report         ``RiskSnapshot.report()`` (the JSON document), built on HTTP request only
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import time
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from monitor.engine.actions import ActionSettings
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent
from monitor.rules.config import DEFAULT_RULES
from monitor.rules.pack import rule_engine

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
N_UND, N_ACC, N_OPT = 50, 20, 20_000
EXPIRIES = ["30JAN26", "27FEB26", "27MAR26", "26JUN26", "25SEP26", "25DEC26"]


def build(
    seed: int = 1,
    scenarios: int = 1_000,
    *,
    rules: bool = False,
    executor: Executor | None = None,
) -> Engine:
    rng = np.random.default_rng(seed)
    unds = [f"U{k:02d}" for k in range(N_UND)]
    spot = dict(zip(unds, rng.uniform(10.0, 5_000.0, N_UND), strict=True))
    settings = EngineSettings(
        sample_interval_ms=1_000,
        halflife_ms=60_000,
        fast_halflife_ms=10_000,
        warmup_ms=10_000,
        max_gap_ms=60_000,
        eval_interval_ms=250,
    )
    # A scenario interval longer than the run: the timed evaluations never include it.
    # Advisory sections refresh as in the daemon (risk.scenario_interval, 5 s by default).
    risk = RiskSettings(
        var_scenarios=scenarios,
        scenario_interval_ms=10**12,
        actions=ActionSettings(refresh_ms=5_000),
    )
    eng = Engine(
        settings,
        risk=risk,
        rules=rule_engine(DEFAULT_RULES, {}) if rules else None,
        scenario_executor=executor,
    )
    events: list[Event] = []
    # Warm the estimator: 120 one-second samples of correlated index moves.
    chol = np.linalg.cholesky(0.5 * np.eye(N_UND) + 0.5)
    level = np.array([spot[u] for u in unds])
    for k in range(120):
        level = level * np.exp(0.002 * (chol @ rng.standard_normal(N_UND)))
        events += [
            PriceEvent(T0 + 1_000 * k, u, float(p)) for u, p in zip(unds, level, strict=True)
        ]
    ts = T0 + 120_000
    names: list[str] = []
    for u, s in zip(unds, level, strict=True):
        for exp in EXPIRIES:
            for m in np.linspace(0.6, 1.4, 17):
                strike = max(1, round(float(s * m)))
                for cp in "CP":
                    name = f"{u}_USDC-{exp}-{strike}-{cp}"
                    names.append(name)
                    iv = 0.5 + 0.3 * (m - 1.0) ** 2
                    events.append(PriceEvent(ts, name, float(s) * 0.05, iv, float(s) * 1.001))
        events.append(PriceEvent(ts, f"{u}-PERPETUAL", float(s)))
    # Each account holds N_OPT / N_ACC distinct options; accounts overlap, as desks do.
    for a in range(N_ACC):
        for p in rng.choice(len(names), size=N_OPT // N_ACC, replace=False):
            qty = float(rng.integers(-50, 50) or 1)
            events.append(PositionEvent(ts, f"acc{a:02d}", names[p], qty))
    for k, u in enumerate(unds):
        events.append(PositionEvent(ts, f"acc{k % N_ACC:02d}", f"{u}-PERPETUAL", -3.0))
    for a in range(N_ACC):
        events.append(AccountEvent(ts, f"acc{a:02d}", 5e6, 1e6, 6e5))
    rejected = eng.replay(events, "bench")
    assert not rejected, rejected[:3]
    return eng


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    t = time.perf_counter()
    eng = build()
    print(
        f"book: {N_UND} underlyings, {N_OPT:,} option positions + {N_UND} perpetuals, "
        f"{N_ACC} accounts; built in {time.perf_counter() - t:.1f} s"
    )
    as_of = T0 + 121_000
    t = time.perf_counter()
    first = eng.evaluate(as_of)  # the scenario VaR runs on this first one only
    with_scen = time.perf_counter() - t
    times = []
    for k in range(args.repeat):
        t = time.perf_counter()
        snap = eng.evaluate(as_of + 250 * (k + 1))
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    print(
        f"evaluate (no scenario VaR)  median {np.median(ms):6.2f} ms  p90 "
        f"{np.percentile(ms, 90):6.2f} ms  min {ms.min():6.2f} ms  over {args.repeat} runs"
    )
    print(f"evaluate with scenario VaR  {with_scen * 1e3:8.1f} ms  (1,000 scenarios, first run)")
    ruled = build(rules=True)
    ruled.evaluate(as_of)
    rtimes = []
    for k in range(args.repeat):
        t = time.perf_counter()
        ruled.evaluate(as_of + 250 * (k + 1))
        rtimes.append(time.perf_counter() - t)
    rms = np.array(rtimes) * 1e3
    print(
        f"evaluate + built-in rules   median {np.median(rms):6.2f} ms  p90 "
        f"{np.percentile(rms, 90):6.2f} ms  (17 rules over 20 accounts)"
    )
    # Live: the scenario pass runs on a worker thread; what does the engine loop see?
    with ThreadPoolExecutor(1) as pool:
        live = build(executor=pool)
        t = time.perf_counter()
        live.evaluate(as_of)  # starts the pass
        submit = time.perf_counter() - t
        during: list[float] = []
        while live._evaluator.scenarios_pending:
            t = time.perf_counter()
            live.evaluate(as_of + 250 * (len(during) + 1))
            during.append(time.perf_counter() - t)
    dms = np.array(during or [math.nan]) * 1e3
    print(
        f"live, pass on a worker       start {submit * 1e3:6.2f} ms; {len(during)} evaluations "
        f"while it ran: median {np.median(dms):6.2f} ms, max {dms.max():6.2f} ms"
    )
    t = time.perf_counter()
    snap.report()
    print(f"report() JSON document      {(time.perf_counter() - t) * 1e3:8.1f} ms")
    risk = first.total.risk
    assert risk is not None
    fr = risk.full_revaluation
    print(
        f"book: sigma {risk.contributions.sigma_usd:,.0f} USD/yr, VaR99 1d delta-normal "
        f"{risk.delta_normal.var_usd:,.0f}, delta-gamma {risk.delta_gamma.var_usd:,.0f}, "
        f"full revaluation {math.nan if fr is None else fr.var_usd:,.0f}; "
        f"unpriced {first.total.extra['unpriced_positions']}"
    )
    print(f"(dates: as of {dt.datetime.fromtimestamp(as_of / 1000, tz=dt.UTC):%Y-%m-%d %H:%M})")


if __name__ == "__main__":
    main()
