"""Benchmark: ``riskmon replay`` of 1M price events over 50 instruments.

Prints figures; asserts nothing. Run: ``python tests/bench/bench_replay.py [--events N]``.

Figures printed, all over the same file:
  floor     bare typed msgspec decode (``Decoder.decode_lines`` over the whole file)
  reader    ``connectors.replay.iter_batches`` alone (chunked read + decode + validation)
  engine    reader + ``Engine.replay`` + the final evaluation, in process, built as
            ``riskmon replay`` builds it (default risk settings and the rule pack)
  cli       the ``riskmon replay FILE`` command as a subprocess (interpreter start included)

The recording mimics a Deribit-like feed: 10 underlyings x (index, perpetual, 3 futures),
every instrument ticking every 100 ms, and 3 accounts holding perpetuals, so the engine also
runs its ~evaluation every 250 ms of event time (8,000 evaluations per 1M events).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import msgspec

from connectors.replay import iter_batches
from monitor.config import load_config
from monitor.daemon import engine_settings, risk_settings
from monitor.engine.core import Engine
from monitor.model.events import Event, PositionEvent, PriceEvent, encode_event
from monitor.rules.pack import rule_engine

T0 = 1_767_225_600_000


def write_recording(path: Path, n_events: int) -> int:
    unds = [f"U{k}" for k in range(10)]
    names: list[str] = []
    for u in unds:
        names += [u, f"{u}-PERPETUAL", f"{u}-27DEC26", f"{u}-26MAR27", f"{u}-25JUN27"]
    written = 0
    with path.open("wb") as f:
        for a in range(3):
            for u in unds:
                f.write(encode_event(PositionEvent(T0, f"acc{a}", f"{u}-PERPETUAL", a + 1.0)))
                f.write(b"\n")
                written += 1
        step = 0
        buf: list[bytes] = []
        while written < n_events:
            ts = T0 + step * 100
            for j, name in enumerate(names):
                px = (100.0 + 10 * j) * (1.0 + 0.001 * ((step * 7 + j) % 13 - 6))
                buf.append(encode_event(PriceEvent(ts, name, px)))
                written += 1
                if written >= n_events:
                    break
            step += 1
            if len(buf) > 50_000:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    return written


def best_of(runs: int, fn: object) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        n = write_recording(path, args.events)
        size_mb = path.stat().st_size / 1e6
        print(f"recording: {n:,} events, 50 instruments, {size_mb:.0f} MB ({path.suffix})")

        decoder = msgspec.json.Decoder(Event)
        data = path.read_bytes()
        floor = best_of(args.runs, lambda: decoder.decode_lines(data))
        print(f"floor   bare msgspec decode_lines     {n / floor:12,.0f} events/s  {floor:.3f} s")

        def read_only() -> None:
            for _ in iter_batches(path):
                pass

        t_read = best_of(args.runs, read_only)
        print(
            f"reader  iter_batches                   {n / t_read:12,.0f} events/s  {t_read:.3f} s"
        )

        evaluations = 0
        eval_seconds = 0.0

        def replay(eval_interval_ms: int = 250) -> None:
            nonlocal evaluations, eval_seconds
            # As `riskmon replay` builds it: default config, risk settings and the rule pack.
            cfg = load_config(env={})
            settings = replace(engine_settings(cfg), eval_interval_ms=eval_interval_ms)
            eng = Engine(
                settings, risk=risk_settings(cfg), rules=rule_engine(cfg.rules, cfg.limits)
            )
            spent = [0.0]
            eng.set_evaluation_observer(lambda s: spent.__setitem__(0, spent[0] + s))
            last = 0
            for batch in iter_batches(path):
                eng.replay(batch.events, "replay")
                last = batch.events[-1].ts or last
            eng.evaluate(last)
            evaluations = eng.stats.evaluations
            eval_seconds = spent[0]

        t_eng = best_of(args.runs, replay)
        print(
            f"engine  read + replay + evaluations    {n / t_eng:12,.0f} events/s  {t_eng:.3f} s"
            f"  ({evaluations:,} evaluations)"
        )
        per_eval = eval_seconds / max(evaluations, 1)
        events_only = t_eng - eval_seconds
        print(
            f"        of which evaluations           {eval_seconds:8.3f} s  "
            f"({per_eval * 1e6:.0f} us each); events alone {n / events_only:,.0f} events/s"
        )
        t_1s = best_of(args.runs, lambda: replay(1_000))
        print(
            f"engine  same, risk.eval_interval=1s    {n / t_1s:12,.0f} events/s  {t_1s:.3f} s"
            f"  ({evaluations:,} evaluations)"
        )

        tracemalloc.start()
        replay()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"memory  peak traced during replay      {peak / 1e6:12.1f} MB")

        env = dict(os.environ, RISKMON_LOG__LEVEL="warning")
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "monitor", "replay", str(path), "--out", os.devnull],
            check=True,
            env=env,
        )
        t_cli = time.perf_counter() - t
        print(f"cli     riskmon replay (subprocess)    {n / t_cli:12,.0f} events/s  {t_cli:.3f} s")
        print(f"ratio   engine / floor                 {floor / t_eng:12.2f}")


if __name__ == "__main__":
    main()
