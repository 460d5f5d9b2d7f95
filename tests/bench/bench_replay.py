"""Benchmark: ``riskmon replay`` of 1M price events over 50 instruments.

Prints figures; asserts nothing. Run:
``python tests/bench/bench_replay.py [--events N] [--runs N] [--day-seconds S] [--skip-cli]``.

Figures printed, for the same events as ``.jsonl`` and as ``.parquet``:
  floor     bare typed msgspec decode (``Decoder.decode_lines`` over the whole file; jsonl)
  reader    ``connectors.replay.iter_batches(columns=True)`` alone (read + decode + checks)
  engine    reader + the engine's fast paths + the final evaluation, in process, built as
            ``riskmon replay`` builds it (default risk settings and the rule pack); "events
            alone" is that time less the time inside evaluations (``risk.eval_interval``
            apart in event time), and "sampling" the estimator's share of it
  cli       the ``riskmon replay FILE`` command as a subprocess (interpreter start included)
and a day: 3 underlyings ticking every second, 12 options on them ticking every 10 s with
IV and forward, 2 accounts holding them, the rule pack: 86,400 s of event time (jsonl).

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from connectors.replay import feed, iter_batches
from monitor.config import load_config
from monitor.engine.core import Engine
from monitor.engine.record import PARQUET_SCHEMA
from monitor.model.events import Event, EventDecoder, PositionEvent, PriceEvent, encode_event
from monitor.model.snapshot import RiskSnapshot
from monitor.quant.estimator import RollingEstimator
from monitor.rules.pack import rule_engine
from monitor.settings import engine_settings, risk_settings

T0 = 1_767_225_600_000


def write_recording(path: Path, n_events: int, accounts: int = 3) -> int:
    unds = [f"U{k}" for k in range(10)]
    names: list[str] = []
    for u in unds:
        names += [u, f"{u}-PERPETUAL", f"{u}-27DEC26", f"{u}-26MAR27", f"{u}-25JUN27"]
    written = 0
    with path.open("wb") as f:
        for a in range(accounts):
            for u in unds:
                f.write(encode_event(PositionEvent(T0, f"acc{a}", f"{u}-PERPETUAL", a + 1.0)))
                f.write(b"\n")
                written += 1
        step = 0
        buf: list[bytes] = []
        # Each underlying a seeded random walk at 80% a year; its perpetual and futures at a
        # fixed basis. (Until 2026-12 this was a +-0.6% sawtooth every 100 ms: about 190% a
        # day of volatility, which sent every book's delta-gamma VaR to the simulation.)
        rng = np.random.default_rng(11)
        level = 100.0 + 50.0 * np.arange(len(unds))
        basis = np.tile([1.0, 1.0002, 1.004, 1.012, 1.02], len(unds))
        step_sd = 0.8 / np.sqrt(365 * 86_400 * 10)  # per 100 ms
        while written < n_events:
            ts = T0 + step * 100
            level = level * np.exp(step_sd * rng.standard_normal(len(unds)))
            prices = (np.repeat(level, 5) * basis).tolist()
            for name, px in zip(names, prices, strict=True):
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


def to_parquet(jsonl: Path, path: Path) -> None:
    """The same events as a Parquet recording (the recorder's schema, 64k-row groups)."""
    events, _ = EventDecoder().decode_lines(jsonl.read_bytes())
    rows = [msgspec.to_builtins(e) for e in events]
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), path, row_group_size=65536)


def write_day(path: Path, seconds: int) -> int:
    """3 underlyings every second, 12 options every 10 s (IV, forward), 2 accounts."""
    rng = np.random.default_rng(5)
    unds = {"BTC": 90_000.0, "ETH": 3_000.0, "SOL": 150.0}
    options = [
        f"{u}-27DEC26-{round(s0 * m)}-{cp}"
        for u, s0 in unds.items()
        for m in (0.9, 1.1)
        for cp in ("C", "P")
    ]
    lines = [
        encode_event(PositionEvent(T0, f"acc{a}", name, float((a + 1) * (1 if k % 2 else -1))))
        for a in range(2)
        for k, name in enumerate([*options, "BTC-PERPETUAL", "ETH-PERPETUAL"])
    ]
    px = dict(unds)
    for s in range(seconds):
        ts = T0 + 1000 * s + int(rng.integers(0, 50))
        for u in unds:
            px[u] *= float(np.exp(rng.normal(0.0, 0.5 / np.sqrt(365 * 86_400))))
            lines.append(encode_event(PriceEvent(ts, u, px[u])))
        if s % 10 == 0:
            for name in options:
                u = name.split("-")[0]
                lines.append(encode_event(PriceEvent(ts, name, px[u] * 0.05, 0.6, px[u])))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


#: What ``riskmon replay`` imports before it reads the file.
IMPORTS = (
    "import monitor.cli, monitor.settings, monitor.engine.core, monitor.logs, connectors.replay, "
    "monitor.rules.pack"
)


class TimedEstimator(RollingEstimator):
    """The engine's estimator, adding up the time spent sampling (the sample clock)."""

    seconds = 0.0

    def sample(self, *args: Any, **kwargs: Any) -> None:
        t = time.perf_counter()
        super().sample(*args, **kwargs)
        self.seconds += time.perf_counter() - t


class TimedEngine(Engine):
    """The engine, adding up the wall time of its evaluations (all of evaluate())."""

    eval_seconds = 0.0

    def evaluate(self, as_of_ms: int, *, scenarios: bool = False) -> RiskSnapshot:
        t = time.perf_counter()
        snap = super().evaluate(as_of_ms, scenarios=scenarios)
        self.eval_seconds += time.perf_counter() - t
        return snap


class Replay:
    """One in-process replay as ``riskmon replay`` runs it, timing evaluations and samples."""

    def __init__(self, path: Path, eval_interval_ms: int | None = None) -> None:
        cfg = load_config(env={})
        settings = engine_settings(cfg)
        if eval_interval_ms is not None:
            settings = replace(settings, eval_interval_ms=eval_interval_ms)
        self.engine = eng = TimedEngine(
            settings, risk=risk_settings(cfg), rules=rule_engine(cfg.rules, cfg.limits)
        )
        s = eng.settings
        eng.estimator = est = TimedEstimator(
            s.sample_interval_ms,
            s.halflife_ms,
            s.fast_halflife_ms,
            s.warmup_ms,
            var_halflife_ms=s.var_halflife_ms,
            max_gap_ms=s.max_gap_ms,
        )
        t = time.perf_counter()
        for batch in iter_batches(path, columns=True):
            for _ in feed(eng, batch, "replay"):
                pass
        last = eng.latest_event_ms
        assert last is not None
        eng.evaluate(last)
        self.seconds = time.perf_counter() - t
        self.eval_seconds = eng.eval_seconds
        self.sample_seconds = est.seconds


def timings(runs: int, fn: object) -> list[float]:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return times


def report_replay(label: str, n: int, runs: list[Replay]) -> None:
    best = min(runs, key=lambda r: r.seconds)
    med = sorted(r.seconds for r in runs)[len(runs) // 2]
    e = best.engine.stats.evaluations
    alone = best.seconds - best.eval_seconds
    print(
        f"engine  {label:30s} {n / best.seconds:12,.0f} events/s  best {best.seconds:.3f} s,"
        f" median {med:.3f} s  ({e:,} evaluations, {best.eval_seconds / max(e, 1) * 1e6:,.0f} us"
        f" each)"
    )
    print(
        f"        events alone (no evaluations) {n / alone:12,.0f} events/s  {alone:.3f} s,"
        f" of which sampling {best.sample_seconds:.3f} s ({best.engine.stats.samples:,} samples)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--day-seconds", type=int, default=86_400)
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument(
        "--accounts",
        type=int,
        default=3,
        help="accounts holding the 10 perpetuals (0: prices alone, as the issue measured)",
    )
    ap.add_argument(
        "--events-only",
        action="store_true",
        help="risk.eval_interval = 3650d: one evaluation, at the end (the event path alone)",
    )
    args = ap.parse_args()
    print("machine: 2 cores, shared (figures vary from run to run)")
    eval_ms = 3650 * 86_400_000 if args.events_only else None
    if args.events_only:
        print("--events-only: risk.eval_interval = 3650d (evaluations left out)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        n = write_recording(path, args.events, args.accounts)
        ppath = Path(tmp) / "bench.parquet"
        to_parquet(path, ppath)
        print(
            f"recording: {n:,} events (50 instruments, {args.accounts} accounts holding the 10"
            f" perpetuals), {path.stat().st_size / 1e6:.1f} MB"
            f" .jsonl, {ppath.stat().st_size / 1e6:.1f} MB .parquet"
        )
        decoder = msgspec.json.Decoder(Event)
        data = path.read_bytes()
        floor = min(timings(args.runs, lambda: decoder.decode_lines(data)))
        print(f"floor   bare msgspec decode_lines      {n / floor:12,.0f} events/s  {floor:.3f} s")
        for p in (path, ppath):

            def read_only(p: Path = p) -> None:
                for _ in iter_batches(p, columns=True):
                    pass

            t_read = min(timings(args.runs, read_only))
            print(
                f"reader  iter_batches {p.suffix:8s}          {n / t_read:12,.0f} events/s"
                f"  {t_read:.3f} s"
            )
        for p in (path, ppath):
            runs = [Replay(p, eval_ms) for _ in range(args.runs)]
            report_replay(f"{p.suffix} read + replay + evals", n, runs)
            if p is path:
                best = min(r.seconds for r in runs)
                print(f"ratio   floor / engine (.jsonl)        {best / floor:12.2f}")

        if not args.skip_cli:
            env = dict(os.environ, RISKMON_LOG__LEVEL="warning")
            # As an installed riskmon starts: its modules' bytecode compiled once (pip does
            # at install; an environment with PYTHONDONTWRITEBYTECODE, as on the build
            # machine, would otherwise compile every source at every start, ~0.2 s).
            root = Path(__file__).resolve().parents[2]
            subprocess.run(
                [sys.executable, "-m", "compileall", "-q", "monitor", "connectors"],
                check=True,
                cwd=root,
            )
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=env)
            t_start = time.perf_counter() - t
            print(
                f"cli     interpreter start + imports    {t_start:12.3f} s (in each figure below)"
            )
            if args.events_only:
                env["RISKMON_RISK__EVAL_INTERVAL"] = "3650d"
            for p in (path, ppath):
                t = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "monitor", "replay", str(p), "--out", os.devnull],
                    check=True,
                    env=env,
                )
                t_cli = time.perf_counter() - t
                print(
                    f"cli     riskmon replay {p.suffix:8s}        {n / t_cli:12,.0f} events/s"
                    f"  {t_cli:.3f} s"
                )

        day = Path(tmp) / "day.jsonl"
        m = write_day(day, args.day_seconds)
        print(
            f"day: {args.day_seconds:,} s of event time, 3 underlyings every second, 12 options"
            f" every 10 s, 2 accounts: {m:,} events"
        )
        runs = [Replay(day, eval_ms) for _ in range(max(1, args.runs // 2))]
        report_replay("day, read + replay + evals", m, runs)
        print(f"        the day replay took {min(r.seconds for r in runs):.1f} s (target < 10 s)")


if __name__ == "__main__":
    main()
