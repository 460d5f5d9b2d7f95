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
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from benchtools import N_ACC, N_OPT, N_UND, T0, build


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
