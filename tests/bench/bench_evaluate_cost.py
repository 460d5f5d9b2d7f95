"""Benchmark: what one evaluation costs, with something new and with nothing new.

Two books, both with the default rule pack, as ``riskmon run`` builds the engine:

  small      3 underlyings (BTC, ETH, SOL), 11 positions (perpetuals, futures, 4 options)
             over 2 accounts, one with venue margin
  reference  50 underlyings, 20,000 options + 50 perpetuals over 20 accounts
             (``bench_evaluate.build``, warm estimator, about 115 active alerts)

For each: ``tick`` = one index price tick, then ``Engine.evaluate`` (what a live
evaluation costs when prices move); ``idle`` = ``Engine.evaluate`` 250 ms later with no event
in between (only time passed). The scenario pass is not in these figures (its own clock;
``bench_scenarios.py``). Prints p50/p99/max in microseconds, wall and CPU time.

Run: ``OPENBLAS_NUM_THREADS=1 python tests/bench/bench_evaluate_cost.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchtools import T0, build

from monitor.config import load_config
from monitor.daemon import engine_settings, risk_settings
from monitor.engine.core import Engine
from monitor.heap import HeapFreezer
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent
from monitor.rules.pack import rule_engine

OPTIONS = ("BTC-27MAR26-60000-C", "BTC-27MAR26-50000-P", "ETH-27MAR26-3000-C", "ETH-27MAR26-2500-P")


def small_book() -> tuple[Engine, int]:
    """The issue's small book: 3 underlyings, 11 positions, the default rule pack."""
    cfg = load_config(env={})
    eng = Engine(
        replace(engine_settings(cfg), warmup_ms=10_000),
        risk=replace(risk_settings(cfg), scenario_interval_ms=10**12),
        rules=rule_engine(cfg.rules, cfg.limits),
    )
    rng = np.random.default_rng(1)
    level = np.array([60_000.0, 3_000.0, 150.0])
    unds = ("BTC", "ETH", "SOL")
    events: list[Event] = []
    for k in range(400):
        level = level * np.exp(0.001 * rng.standard_normal(3))
        for u, p in zip(unds, level, strict=True):
            events += [PriceEvent(T0 + 1_000 * k, u, float(p))]
            events += [PriceEvent(T0 + 1_000 * k, f"{u}-PERPETUAL", float(p))]
    ts = T0 + 400_000
    for name in OPTIONS:
        events.append(PriceEvent(ts, name, 0.05, 0.6, float(level[unds.index(name[:3])])))
    events += [PriceEvent(ts, "BTC-27MAR26", float(level[0]) * 1.01)]
    events += [PriceEvent(ts, "ETH-27MAR26", float(level[1]) * 1.01)]
    held = [("BTC-PERPETUAL", 2.0), ("ETH-PERPETUAL", -10.0), ("SOL-PERPETUAL", 100.0)]
    held += [("BTC-27MAR26", -1.0), ("ETH-27MAR26", 5.0)]
    for name, qty in held:
        events.append(PositionEvent(ts, "desk", name, qty))
    for name in OPTIONS:
        events.append(PositionEvent(ts, "opts", name, 3.0))
    events += [PositionEvent(ts, "opts", "SOL-PERPETUAL", 1.0)]
    events += [AccountEvent(ts, "desk", 1e6, 2e5, 1e5)]
    assert not eng.replay(events, "bench")
    eng.evaluate(ts)
    return eng, ts


def measure(
    eng: Engine, start: int, index: str, repeat: int
) -> tuple[list[float], list[float], list[float], list[float]]:
    """(tick wall, tick CPU, idle wall, idle CPU) seconds, ``repeat`` of each, interleaved:
    tick at t - 10 ms and evaluate at t, then evaluate at t + 250 ms with nothing new."""
    snap = eng.snapshot
    assert snap is not None
    j = list(snap.assets.names).index(index)
    base = float(snap.assets.price[j])
    out: tuple[list[float], list[float], list[float], list[float]] = ([], [], [], [])

    def timed(fn: Callable[[], object], wall: list[float], cpu: list[float]) -> None:
        w, c = time.perf_counter(), time.process_time()
        fn()
        cpu.append(time.process_time() - c)
        wall.append(time.perf_counter() - w)

    for k in range(repeat):
        t = start + 500 * (k + 1)
        px = base * (1.0 + 1e-4 * (k % 7 - 3))

        def tick(t: int = t, px: float = px) -> None:
            eng.apply(PriceEvent(t - 10, index, px), "bench")
            eng.evaluate(t)

        timed(tick, out[0], out[1])
        timed(lambda t=t: eng.evaluate(t + 250), out[2], out[3])  # type: ignore[misc]
    return out


def show(name: str, what: str, wall: list[float], cpu: list[float]) -> None:
    w, c = np.array(wall) * 1e6, np.array(cpu) * 1e6
    print(
        f"{name:9s} {what:5s} wall p50 {np.median(w):9,.0f} us  p99 {np.percentile(w, 99):9,.0f}"
        f"  max {w.max():9,.0f}   CPU p50 {np.median(c):9,.0f}  p99 {np.percentile(c, 99):9,.0f}"
    )


def updates(ref: Engine, start: int, rounds: int = 12) -> None:
    """The reference book's evaluation after a venue account update and after a fill (one
    account's position), the scenario pass in line (the daemon runs it on its worker: this
    is its cost, not the engine loop's), beside one after a tick. Prints medians, ms."""
    snap = ref.snapshot
    book = ref._book
    assert snap is not None
    assert book is not None
    j = list(snap.assets.names).index("U00")
    base = float(snap.assets.price[j])
    name = ref.registry.instruments[int(book.instrument[5])].name
    account = book.accounts[0]
    out: dict[str, list[float]] = {"tick": [], "account update": [], "fill": []}
    ts = start
    for k in range(rounds):
        for kind in out:
            ts += 500
            if kind == "tick":
                ref.apply(PriceEvent(ts - 10, "U00", base * (1 + 1e-4 * (k % 7 - 3))), "b")
            elif kind == "account update":
                ref.apply(AccountEvent(ts - 10, account, 1e7 + k, 1e5, 5e4), "b")
            else:
                ref.apply(PositionEvent(ts - 10, account, name, 3.0 + k), "b")
            t = time.perf_counter()
            ref.evaluate(ts)
            out[kind].append(time.perf_counter() - t)
    for kind, v in out.items():
        w = np.array(v[2:]) * 1e3
        print(f"reference after a {kind:15s} (pass in line) median {np.median(w):8.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=500, help="evaluations of each kind (small)")
    ap.add_argument(
        "--updates",
        action="store_true",
        help="also: the reference book after an account update and after a fill",
    )
    args = ap.parse_args()
    eng, ts = small_book()
    measure(eng, ts, "BTC", 20)  # warm
    tw, tc, iw, ic = measure(eng, ts + 20 * 500, "BTC", args.repeat)
    show("small", "tick", tw, tc)
    show("small", "idle", iw, ic)
    ref = build(rules=True)
    start = T0 + 121_000
    ref.evaluate(start)  # the scenario pass runs here, once (risk.scenario_interval: never)
    # As the daemon does once a large book is loaded (monitor.heap): the long-lived heap
    # out of the cyclic collector's full passes (one would add ~20 ms to an evaluation).
    frozen = HeapFreezer().after_evaluation(len(ref.registry))
    n = max(args.repeat // 10, 20)
    tw, tc, iw, ic = measure(ref, start, "U00", n)
    snap = ref.snapshot
    assert snap is not None
    show("reference", "tick", tw, tc)
    show("reference", "idle", iw, ic)
    print(
        f"(reference: {len(snap.alerts)} active alerts; {n} evaluations of each kind;"
        f" heap frozen after the build as the daemon does: {frozen} objects)"
    )
    if args.updates:
        updates(ref, start + 500 * (n + 1))


if __name__ == "__main__":
    main()
