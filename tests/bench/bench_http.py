"""Benchmark: what serving the reference book's report costs, and what the event loop sees.

The reference book (``benchtools.build``: 50 underlyings, 20,000 option positions, 20
accounts), evaluated once. Figures:

  cost      CPU time (this thread, best of ``--repeat``) of ``RiskSnapshot.report()``, of
            encoding it with msgspec, and of each HTTP document's whole rendering
  stall     an ``HttpServer`` on this process's event loop serving that snapshot, a ticker
            task on the same loop waking every 1 ms. Each round publishes a new snapshot
            (a new seq: nothing cached), and ``--clients`` clients (threads of another
            process) GET ``/api/v1/snapshot`` at once; then again (cached); then no
            request for as long. The ticker's worst lateness in each is the longest the
            loop (the daemon's engine, in production) was held; the last is the machine's
            own noise (CPUs shared)

Run: ``OPENBLAS_NUM_THREADS=1 python tests/bench/bench_http.py [--rounds 10] [--clients 4]``.
The stall part uses ``HttpServer`` only, so the same script measures an older checkout
(``PYTHONPATH=<checkout> python tests/bench/bench_http.py --stall-only``). Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
from benchtools import T0, build
from prometheus_client import CollectorRegistry

from monitor.engine.stats import EngineStats
from monitor.model.health import ConnectorStatus
from monitor.model.snapshot import RiskSnapshot
from monitor.serve.http import HttpServer

_CLIENT = """
import sys, threading, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
out = []
def get():
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        resp.read()
    out.append(time.perf_counter() - t)
threads = [threading.Thread(target=get) for _ in range(n)]
print("go", flush=True)
for th in threads: th.start()
for th in threads: th.join()
print(*out)
"""


@dataclasses.dataclass
class _View:
    snapshot: RiskSnapshot | None
    stats: EngineStats = dataclasses.field(default_factory=EngineStats)
    connectors: Sequence[ConnectorStatus] = ()
    started_s: float = 0.0
    notifiers: dict[str, Any] = dataclasses.field(default_factory=dict)


def _cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t)
    return best * 1e3


def cost(snap: RiskSnapshot, repeat: int) -> None:
    from monitor.serve import http

    doc = snap.report()
    plain = msgspec.json.Encoder(enc_hook=http._enc_hook)
    print(f"report JSON: {len(plain.encode(doc)) / 1e6:.1f} MB; CPU ms, best of {repeat}:")
    print(f"  report() (dict rows)                 {_cpu_ms(snap.report, repeat):7.1f}")
    print(
        f"  msgspec encode of it, one call        {_cpu_ms(lambda: plain.encode(doc), repeat):7.1f}"
    )
    if hasattr(http, "encode_report"):
        enc = http.encode_report
        print(f"  /api/v1/snapshot body (encode_report) {_cpu_ms(lambda: enc(snap), repeat):7.1f}")
        name = sorted(snap.accounts)[0]
        fig = snap.accounts[name]
        one = _cpu_ms(lambda: http.encode_json(fig.report(structs=True)), repeat)
        print(f"  /api/v1/accounts/{name} body         {one:7.1f}")
        summ = _cpu_ms(lambda: http.encode_json(http.summary(snap)), repeat)
        print(f"  /api/v1/summary body                 {summ:7.1f}")


async def _stall(snap: RiskSnapshot, rounds: int, clients: int) -> None:
    view = _View(snapshot=snap)
    lateness: list[float] = []
    measuring = False

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            if measuring:
                lateness.append(time.perf_counter() - t - 0.001)

    async def round_() -> tuple[float, list[float]]:
        nonlocal measuring
        # The clients are another process: threads here would compete for the GIL.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENT, url, str(clients), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        await proc.stdout.readline()  # started, about to send
        lateness.clear()
        measuring = True
        out = await proc.stdout.read()
        measuring = False
        await proc.wait()
        return max(lateness, default=0.0), [float(x) for x in out.split()]

    async def idle(seconds: float) -> float:
        lateness.clear()
        nonlocal measuring
        measuring = True
        await asyncio.sleep(seconds)
        measuring = False
        return max(lateness, default=0.0)

    fresh: list[float] = []
    cached: list[float] = []
    quiet: list[float] = []
    latency: list[float] = []
    async with HttpServer(view, CollectorRegistry(), "127.0.0.1:0") as server:
        url = server.url + "/api/v1/snapshot"
        task = asyncio.create_task(ticker(), name="bench.ticker")
        for k in range(rounds):
            view.snapshot = dataclasses.replace(snap, seq=snap.seq + k + 1)
            await asyncio.sleep(0.05)
            worst, lat = await round_()
            fresh.append(worst)
            latency += lat
            worst, _ = await round_()  # the same snapshot again
            cached.append(worst)
            quiet.append(await idle(max(lat)))  # no request: the machine's own noise
        task.cancel()
    lat_ms = np.array(latency) * 1e3
    print(f"event loop, {clients} clients GET /api/v1/snapshot at once, {rounds} rounds:")
    rows = (("a new snapshot", fresh), ("the same snapshot again", cached), ("no request", quiet))
    for name, w in rows:
        ms = np.array(w) * 1e3
        print(
            f"  {name:<24} worst loop stall per round: median {np.median(ms):6.1f} ms, "
            f"max {ms.max():6.1f} ms"
        )
    print(f"  request latency (new snapshot) median {np.median(lat_ms):6.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--stall-only", action="store_true")
    args = ap.parse_args()
    eng = build()
    eng.evaluate(T0 + 121_000)
    snap = eng.evaluate(T0 + 121_250)
    if not args.stall_only:
        cost(snap, args.repeat)
    asyncio.run(_stall(snap, args.rounds, args.clients))


if __name__ == "__main__":
    main()
