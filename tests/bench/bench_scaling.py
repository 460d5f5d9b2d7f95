"""Benchmark: evaluation time against the size of the book, so users know where their limit is.

The reference book's shape (``benchtools.build``: 20 accounts, 6 expiries, calls and puts
around the money, venue IVs, a perpetual hedge per underlying, warm estimator), sized two
ways:

  options      1,000, 10,000 and 100,000 option positions over 50 underlyings
  underlyings  5, 50 and 200 underlyings holding 20,000 option positions

Each row is built in its own process (so its RSS is its own) and evaluated: the first
evaluation runs the full-revaluation scenario pass in line (scenario VaR, scenario margin,
distance to call: what a live daemon runs on its worker thread every
``risk.scenario_interval``), the next ``--repeat`` are ``Engine.evaluate`` with the pass not
due, 250 ms of engine time apart (the default cadence), each after one index tick (so each
is a full evaluation; the long-lived heap frozen first, as the daemon does). Columns:

  eval p50/p99   ``Engine.evaluate`` wall time, scenario pass not due
  CPU p50        its CPU time (this thread): steadier than wall time on a shared machine
  first eval     the first evaluation, which includes the scenario pass (an upper bound
                 for the pass: it also pays one-off costs); wall time (CPU time)
  RSS            the process's resident memory after the evaluations

Run: ``OPENBLAS_NUM_THREADS=1 python tests/bench/bench_scaling.py [--repeat 40]
[--rules]``; ``--row UNDERLYINGS OPTIONS`` runs one row. The 100,000-option row takes
a few minutes to build. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from benchtools import N_OPT, N_UND, T0, build

from monitor.heap import HeapFreezer
from monitor.model.events import PriceEvent

ROWS = [
    ("options", N_UND, 1_000),
    ("options", N_UND, 10_000),
    ("options", N_UND, 100_000),
    ("underlyings", 5, N_OPT),
    ("underlyings", N_UND, N_OPT),
    ("underlyings", 200, N_OPT),
]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def row(underlyings: int, options: int, repeat: int, rules: bool) -> dict[str, float]:
    t = time.perf_counter()
    eng = build(underlyings=underlyings, options=options, rules=rules)
    built = time.perf_counter() - t
    as_of = T0 + 121_000
    t, c = time.perf_counter(), time.thread_time()
    snap = eng.evaluate(as_of)
    first, first_cpu = time.perf_counter() - t, time.thread_time() - c
    assert snap is not None
    held = sum(
        0 if a.positions is None else len(a.positions.instrument) for a in snap.accounts.values()
    )
    # As the daemon does once a large book is loaded (monitor.heap).
    HeapFreezer().after_evaluation(len(eng.registry))
    j = list(snap.assets.names).index("U00")
    base = float(snap.assets.price[j])
    times, cpu = [], []
    for k in range(repeat):
        # One index tick before each: something new, so each is a full evaluation (with
        # nothing new an evaluation re-dates the last one: bench_evaluate_cost's "idle").
        at = as_of + 250 * (k + 1)
        eng.apply(PriceEvent(at - 10, "U00", base * (1.0 + 1e-4 * (k % 7 - 3))), "bench")
        t, c = time.perf_counter(), time.thread_time()
        eng.evaluate(at)
        times.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
    ms = np.array(times) * 1e3
    return {
        "positions": held,
        "build_s": built,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)) * 1e3,
        "first_ms": first * 1e3,
        "first_cpu_ms": first_cpu * 1e3,
        "rss_mb": _rss_mb(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--rules", action="store_true", help="with the built-in rule pack")
    ap.add_argument("--row", nargs=2, type=int, metavar=("UNDERLYINGS", "OPTIONS"))
    args = ap.parse_args()
    if args.row is not None:
        und, opt = args.row
        print(json.dumps(row(und, opt, args.repeat, args.rules)))
        return
    rules = ["--rules"] if args.rules else []
    print(
        f"Engine.evaluate against book size: 20 accounts, {args.repeat} evaluations per row"
        f"{', built-in rules' if args.rules else ''}; each row in its own process"
    )
    print(
        f"{'axis':<12} {'underlyings':>11} {'options':>8} {'positions':>9} "
        f"{'eval p50':>9} {'eval p99':>9} {'CPU p50':>9} {'first eval (CPU)':>18} "
        f"{'RSS':>7} {'build':>6}"
    )
    for axis, und, opt in ROWS:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--row",
                str(und),
                str(opt),
                "--repeat",
                str(args.repeat),
                *rules,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            print(f"{axis:<12} {und:>11} {opt:>8}  failed: {out.stderr.strip()[-300:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{axis:<12} {und:>11,} {opt:>8,} {r['positions']:>9,} "
            f"{r['p50_ms']:>6.1f} ms {r['p99_ms']:>6.1f} ms {r['cpu_p50_ms']:>6.1f} ms "
            f"{r['first_ms']:>8.0f} ms ({r['first_cpu_ms']:>5.0f}) "
            f"{r['rss_mb']:>4.0f} MB {r['build_s']:>4.0f} s",
            flush=True,
        )
    print("(first eval: includes the scenario pass in line; positions: option and perpetual")
    print(" positions held, fewer options than asked where rounded strikes coincide)")


if __name__ == "__main__":
    main()
