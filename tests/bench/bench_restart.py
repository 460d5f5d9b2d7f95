"""Benchmark: restart-to-warm time with and without the saved state; the state's cost.

1. ``riskmon run`` on the simulated market (real time, default estimator: ``warmup = 5m``),
   a state directory saved every 10 s: seconds from the process start until the first
   report in which every underlying's volatility is warm. Then SIGTERM (the state is saved
   at shutdown), start again: the same figure with the state restored.
2. The reference book (50 underlyings, 20,000 option positions, 20 accounts, as in
   bench_evaluate.py, with the built-in rules): ``Engine.state()``, the encoding and the
   atomic write (temp file, fsync, rename, directory fsync), their sizes and times, and the
   read, check and restore into a fresh engine.

Run: ``python tests/bench/bench_restart.py [--warmup 5m] [--skip-daemon]``. Prints
figures; asserts nothing. Part 1 takes about ``warmup`` plus a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from benchtools import build

from monitor.engine.core import Engine
from monitor.engine.evaluation import RiskSettings
from monitor.engine.state import StateStore, encode_state
from monitor.rules.config import DEFAULT_RULES
from monitor.rules.pack import rule_engine


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _report(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/api/v1/snapshot", timeout=5) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _time_to_warm(config: Path, url: str, timeout_s: float) -> tuple[float, int, Any]:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("RISKMON_")},
    )
    try:
        while time.monotonic() - started < timeout_s:
            rep = _report(url)
            if rep and rep["assets"] and all(a["warm"] for a in rep["assets"].values()):
                elapsed = time.monotonic() - started
                returns = min(a["returns"] for a in rep["assets"].values())
                return elapsed, returns, proc
            time.sleep(0.1)
        raise SystemExit(f"not warm within {timeout_s:.0f} s")
    except BaseException:
        proc.kill()
        raise


def daemon_part(warmup: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        config = Path(tmp) / "riskmon.toml"
        config.write_text(
            f'[server]\nlisten = "127.0.0.1:{port}"\n'
            f'[estimator]\nwarmup = "{warmup}"\n'
            f'[state]\ndir = "{tmp}/state"\ninterval = "10s"\n'
        )
        url = f"http://127.0.0.1:{port}"
        cold, returns, proc = _time_to_warm(config, url, 3_600)
        print(f"cold start (no state):      warm after {cold:7.1f} s  ({returns} returns)")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        size = (Path(tmp) / "state" / "riskmon.state").stat().st_size
        warm, returns, proc = _time_to_warm(config, url, 600)
        print(
            f"restart with the state:     warm after {warm:7.1f} s  ({returns} returns; "
            f"state {size / 1024:.1f} KiB, simulated market)"
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def book_part(repeat: int) -> None:
    eng = build(rules=True)
    eng.evaluate(eng.latest_event_ms or 0)
    state_s, encode_s, write_s, load_s = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state")
        blob = b""
        for _ in range(repeat):
            t0 = time.perf_counter()
            state = eng.state()
            t1 = time.perf_counter()
            blob = encode_state(state, int(time.time() * 1000))
            t2 = time.perf_counter()
            store.save(blob)
            t3 = time.perf_counter()
            loaded = store.load(int(time.time() * 1000), 3_600_000)
            assert loaded.engine is not None
            fresh = Engine(
                eng.settings,
                risk=RiskSettings(var_scenarios=1_000, scenario_interval_ms=10**12),
                rules=rule_engine(DEFAULT_RULES, {}),
            )
            fresh.restore(loaded.engine)
            t4 = time.perf_counter()
            state_s.append(t1 - t0)
            encode_s.append(t2 - t1)
            write_s.append(t3 - t2)
            load_s.append(t4 - t3)

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1e3:7.1f} ms"

    print(
        f"reference book: {len(eng.registry):,} instruments, "
        f"{sum(len(held) for _, held in eng.state()['positions']):,} positions, "
        f"state {len(blob) / 1024:.0f} KiB; median of {repeat}:"
    )
    print(f"  Engine.state()               {ms(state_s)}  (on the engine loop)")
    print(f"  encode (msgpack + sha256)    {ms(encode_s)}  (on the engine loop)")
    print(f"  atomic write + fsyncs        {ms(write_s)}  (worker thread)")
    print(f"  read + check + restore       {ms(load_s)}  (at start)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", default="5m", help="estimator.warmup of the daemon part")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--skip-daemon", action="store_true")
    args = ap.parse_args()
    book_part(args.repeat)
    if not args.skip_daemon:
        daemon_part(args.warmup)


if __name__ == "__main__":
    main()
