"""Benchmark: the rule engine alone (the default pack), over the snapshots of a replay.

A replay is run once (``bench_replay``'s day: 3 underlyings every second, 12 options, 2
accounts; and its price-only recording: no positions) and the rule engine's inputs are
recorded: every evaluation's snapshot, time and ``unchanged`` flag. Then a fresh pack and
:class:`~monitor.rules.machine.RuleEngine` run over them ``--runs`` times, as the engine
calls them (``evaluate`` then ``active``), timed in CPU time (this thread: steadier than
wall time on a shared machine). Figures, per evaluation: ``evaluate``, ``active``, both.

``digest`` is a hash of every transition's and every active alert's report (summaries
included, read after the timed runs): it must not change when the rules' cost does.

Run: ``python tests/bench/bench_rules.py [--day-seconds 1800] [--events 300000]
[--runs 5]``. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_replay as br

from monitor.config import load_config
from monitor.model.alert import Alert, Transition
from monitor.model.snapshot import RiskSnapshot
from monitor.rules import pack
from monitor.rules.machine import RuleEngine
from monitor.rules.pack import RuleInput

Call = tuple[RiskSnapshot, int, bool]


def record(path: Path) -> list[Call]:
    """The rule engine's inputs at every evaluation of a replay of ``path``."""
    calls: list[Call] = []
    original = RuleEngine.evaluate

    def spy(
        self: RuleEngine[RuleInput], data: RuleInput, now_ms: int, *, unchanged: bool = False
    ) -> list[Transition]:
        calls.append((data.snapshot, now_ms, unchanged))
        return original(self, data, now_ms, unchanged=unchanged)

    RuleEngine.evaluate = spy  # type: ignore[method-assign,assignment]
    try:
        br.Replay(path)
    finally:
        RuleEngine.evaluate = original  # type: ignore[method-assign]
    return calls


def run(
    calls: list[Call], keep: Callable[[list[Transition], list[Alert]], None] | None = None
) -> tuple[float, float]:
    """One pass of a fresh engine over ``calls``: CPU seconds in evaluate and in active."""
    cfg = load_config(env={})
    engine = pack.rule_engine(cfg.rules, cfg.limits)
    pack._TRADES_MEMO.clear()  # as in a fresh process
    t_eval = t_active = 0.0
    clock = time.thread_time
    for snap, now_ms, unchanged in calls:
        inp = RuleInput(snap)
        t = clock()
        moves = engine.evaluate(inp, now_ms, unchanged=unchanged)
        t_mid = clock()
        active = engine.active()
        t_end = clock()
        t_eval += t_mid - t
        t_active += t_end - t_mid
        if keep is not None:
            keep(moves, active)
    return t_eval, t_active


def digest(calls: list[Call]) -> str:
    kept: list[tuple[list[Transition], list[Alert]]] = []
    run(calls, lambda moves, active: kept.append((moves, active)))
    doc: list[Any] = [
        [[t.report() for t in moves], [a.report() for a in active]] for moves, active in kept
    ]
    return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:16]


def bench(label: str, calls: list[Call], runs: int) -> None:
    times = [run(calls) for _ in range(runs)]
    n = len(calls)
    ev = [e / n * 1e6 for e, _ in times]
    ac = [a / n * 1e6 for _, a in times]
    both = [e + a for e, a in zip(ev, ac, strict=True)]
    k = both.index(min(both))
    print(
        f"{label:6s} {n:6,} evaluations  evaluate {ev[k]:7.1f} us  active {ac[k]:6.1f} us"
        f"  both {both[k]:7.1f} us (best of {runs}; median {statistics.median(both):7.1f} us)"
        f"  digest {digest(calls)}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--day-seconds", type=int, default=1800)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print("CPU time per evaluation (this thread), the default rule pack")
    with tempfile.TemporaryDirectory() as tmp:
        day = Path(tmp) / "day.jsonl"
        br.write_day(day, args.day_seconds)
        bench("day", record(day), args.runs)
        prices = Path(tmp) / "prices.jsonl"
        br.write_recording(prices, args.events, accounts=0)
        bench("empty", record(prices), args.runs)


if __name__ == "__main__":
    main()
