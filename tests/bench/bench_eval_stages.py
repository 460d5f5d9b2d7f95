"""Benchmark: where one replay evaluation's time goes, stage by stage (CPU time).

Replays, in process as ``riskmon replay`` builds the engine (``bench_replay.Replay``):

  day    ``bench_replay.write_day``: 3 underlyings every second, 12 options every 10 s,
         2 accounts, the rule pack (one evaluation and one estimator sample per second)
  empty  ``bench_replay.write_recording`` without accounts: 10 underlyings x 5
         instruments every 100 ms, prices alone (4 evaluations per estimator sample)

Each stage's function is wrapped with a CPU timer (``time.process_time_ns``, so other
processes on a shared machine count less than in wall time); figures are microseconds per
evaluation (a stage that runs every few evaluations, such as the scenario pass every
``risk.scenario_interval``, is averaged over all of them) and calls per evaluation.
``Engine.evaluate`` less ``Evaluator.evaluate`` is the rules and the engine's own work;
"rest" is ``_full_evaluation`` less the stages listed (assembly of the snapshot). The
timers add about 1 us per call. Prints figures; asserts nothing.

Run: ``python tests/bench/bench_eval_stages.py day|empty [SECONDS]`` (default 1800 / 600).
"""

from __future__ import annotations

import functools
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_replay as br

import monitor.engine.actions as actions
import monitor.engine.core as core
import monitor.engine.evaluation as evaluation
import monitor.quant.regime as regime

SPENT: dict[str, int] = {}
CALLS: dict[str, int] = {}
#: Module-level functions of ``monitor.engine.evaluation`` timed (where they exist).
FUNCTIONS = ("value_book", "book_risk", "book_contributions", "_stale", "_in_usd_now")
METHODS = (
    "_covariances",
    "_estimator_figures",
    "_scenario_pass",
    "_stresses",
    "_regime",
    "_flat_risk",
)


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] = SPENT.get(name, 0) + time.process_time_ns() - t
            CALLS[name] = CALLS.get(name, 0) + 1

    return wrapper


def instrument() -> list[str]:
    """Wrap every stage; returns the names of those inside ``_full_evaluation``."""
    inner: list[str] = []
    for name in FUNCTIONS:
        if hasattr(evaluation, name):
            setattr(evaluation, name, timed(name, getattr(evaluation, name)))
            inner.append(name)
    ev = evaluation.Evaluator
    for name in METHODS:
        if hasattr(ev, name):
            setattr(ev, name, timed(f"Evaluator.{name}", getattr(ev, name)))
            inner.append(f"Evaluator.{name}")
    ev._full_evaluation = timed("Evaluator._full_evaluation", ev._full_evaluation)  # type: ignore[method-assign]
    ev.evaluate = timed("Evaluator.evaluate", ev.evaluate)  # type: ignore[method-assign]
    acts = actions.Actions
    acts.account_sections = timed("Actions.account_sections", acts.account_sections)  # type: ignore[method-assign]
    bt = actions.Backtests
    bt.update = timed("Backtests.update", bt.update)  # type: ignore[method-assign]
    evaluation.stressed_section = timed("stressed_section", actions.stressed_section)  # type: ignore[attr-defined]
    rb = regime.RegimeBaselines
    rb.update = timed("RegimeBaselines.update", rb.update)  # type: ignore[method-assign]
    core.Engine.evaluate = timed("Engine.evaluate (all)", core.Engine.evaluate)  # type: ignore[method-assign]
    inner += ["Actions.account_sections", "Backtests.update", "stressed_section"]
    return [*inner, "RegimeBaselines.update"]


def main() -> None:
    kind = sys.argv[1] if len(sys.argv) > 1 else "day"
    if kind not in ("day", "empty"):
        raise SystemExit("usage: bench_eval_stages.py day|empty [SECONDS]")
    seconds = int(sys.argv[2]) if len(sys.argv) > 2 else (1800 if kind == "day" else 600)
    inner = instrument()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "replay.jsonl"
        if kind == "day":
            br.write_day(path, seconds)
        else:
            br.write_recording(path, seconds * 500, accounts=0)  # 500 price events a second
        replay = br.Replay(path)
    n = replay.engine.stats.evaluations
    print(f"{kind}: {seconds} s of event time, {n:,} evaluations, {replay.seconds:.2f} s wall")
    print("  CPU us per evaluation, calls per evaluation")
    for name in sorted(SPENT, key=lambda k: -SPENT[k]):
        print(f"  {name:34s} {SPENT[name] / n / 1000:8.1f} us  {CALLS[name] / n:6.3f}")
    rest = SPENT.get("Evaluator._full_evaluation", 0) - sum(SPENT.get(k, 0) for k in inner)
    print(f"  {'_full_evaluation: rest (assembly)':34s} {rest / n / 1000:8.1f} us")


if __name__ == "__main__":
    main()
