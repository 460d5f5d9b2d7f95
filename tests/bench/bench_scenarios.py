"""Benchmark: the scenario pass on the reference book, and the grid's accuracy.

The reference book of ``bench_evaluate.py`` (50 underlyings, 20,000 option positions, 20
accounts). Prints figures; asserts nothing.

Run: ``OPENBLAS_NUM_THREADS=1 python tests/bench/bench_scenarios.py [--repeat N]``.
Figures:

  pass                 the scenario pass alone (``Evaluator._scenario_pass``: full-revaluation
                       VaR of every account and the book, scenario and portfolio margin,
                       distance to a call), timed on a synchronous executor
  pass + recomputed    the same with the distance under riskmon's model margin recomputed
                       along the move (``risk.recompute_distance``, on its own 30 s clock)
  VaR revaluation      the 1,000-scenario P&L of the 21 books: exact (``revalue``, every
                       option priced in every scenario) and by the grid (``revalue_grid``)
  accuracy             the grid's largest P&L error over scenarios, per book, as a fraction of
                       the book's gross option notional ``sum |q| F`` and of its VaR, and the
                       largest relative VaR/ES difference
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import replace
from typing import Any

import numpy as np
from benchtools import N_ACC, N_OPT, N_UND, T0, build

from monitor.engine.evaluation import MS_PER_YEAR, Evaluator
from monitor.quant.risk import revalue, revalue_grid, scenario_returns, var_full_revaluation


class _Timed(Executor):
    """Runs each submitted pass at once, on the calling thread, and times it."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu: list[float] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        t, c = time.perf_counter(), time.process_time()
        fut.set_result(fn(*args, **kwargs))
        self.seconds.append(time.perf_counter() - t)
        self.cpu.append(time.process_time() - c)
        return fut


def _stats(seconds: list[float], cpu: list[float] | None = None) -> str:
    ms = np.array(seconds) * 1e3
    out = f"best {ms.min():7.1f} ms  median {np.median(ms):7.1f} ms"
    if cpu:  # on a shared machine the process's CPU time says more than the wall clock
        c = np.array(cpu) * 1e3
        out += f"  (CPU best {c.min():6.1f}, median {np.median(c):6.1f})"
    return f"{out}  {ms.size} runs"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    timer = _Timed()
    t = time.perf_counter()
    eng = build(executor=timer)
    print(
        f"book: {N_UND} underlyings, {N_OPT:,} option positions, {N_ACC} accounts; "
        f"built in {time.perf_counter() - t:.1f} s"
    )
    ev: Evaluator = eng._evaluator
    as_of = T0 + 121_000
    for recompute, repeat in ((False, args.repeat), (True, max(2, args.repeat // 3))):
        ev.settings = replace(ev.settings, recompute_distance=recompute)
        timer.seconds.clear()
        timer.cpu.clear()
        for k in range(repeat):
            eng.evaluate(as_of + 250 * k, scenarios=True)  # the pass is due: it runs
        label = "pass + recomputed distance" if recompute else "pass (no recomputed dist.)"
        print(f"{label:28s} {_stats(timer.seconds, timer.cpu)}")

    # The VaR revaluation on the pass's own inputs: exact against grid.
    captured: dict[str, Any] = {}
    full = ev._full_revaluation

    def spy(values: Any, cov: Any, horizon: float, as_of_ms: int, unknown: Any) -> Any:
        captured.update(values=values, cov=cov)
        return full(values, cov, horizon, as_of_ms, unknown)

    ev._full_revaluation = spy  # type: ignore[method-assign]
    eng.evaluate(as_of + 10_000, scenarios=True)
    values, cov = captured["values"], captured["cov"]
    horizon = ev.settings.var_horizon_ms / MS_PER_YEAR
    scen = scenario_returns(cov, horizon, ev.settings.var_scenarios, seed=0)
    lin = values.linear_usd.T
    lin = np.concatenate([lin, lin.sum(axis=1, keepdims=True)], axis=1)
    q = values.options.quantity
    opts = replace(values.options, quantity=np.hstack([q, q.sum(axis=1, keepdims=True)]))
    times: dict[str, list[float]] = {"exact": [], "grid": []}
    cpu: dict[str, list[float]] = {"exact": [], "grid": []}
    pnl: dict[str, Any] = {}
    for _ in range(3):
        for name, fn in (("exact", revalue), ("grid", revalue_grid)):
            t, c = time.perf_counter(), time.process_time()
            pnl[name] = fn(scen.returns, horizon, linear_usd=lin, options=opts).pnl_usd
            times[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    rows = int((q != 0).any(axis=1).sum())
    print(
        f"VaR revaluation, {scen.returns.shape[0]:,} scenarios x {rows:,} options x "
        f"{lin.shape[1]} books:"
    )
    print(f"  exact (revalue)            {_stats(times['exact'], cpu['exact'])}")
    print(f"  grid (revalue_grid)        {_stats(times['grid'], cpu['grid'])}")
    exact, grid = pnl["exact"], pnl["grid"]
    gross = (np.abs(opts.quantity) * opts.forward[:, None]).sum(axis=0)
    err = np.abs(grid - exact).max(axis=0)
    va, vb = var_full_revaluation(exact), var_full_revaluation(grid)
    print(
        f"accuracy: max |P&L error| / gross notional {np.max(err / gross):.2e} "
        f"(tolerance 1e-6), / VaR {np.max(err / va.var_usd):.2e}; "
        f"VaR rel. diff {np.max(np.abs(vb.var_usd / va.var_usd - 1)):.2e}, "
        f"ES {np.max(np.abs(vb.es_usd / va.es_usd - 1)):.2e}"
    )


if __name__ == "__main__":
    main()
