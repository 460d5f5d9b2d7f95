"""Benchmark: resident memory of the reference book, and of the live daemon over a soak.

1. ``book``: this process builds the reference book (50 underlyings, 20,000 option
   positions, 20 accounts: ``benchtools.build``), evaluates it (the first evaluation runs
   the scenario pass), evaluates it ``--evaluations`` more times, builds the report
   document and encodes it as ``GET /api/v1/snapshot`` does. RSS (``VmRSS``) after each
   stage and the peak (``VmHWM``).
2. ``soak``: ``riskmon run`` as a child process, the built-in config (simulated market,
   built-in rules; ``--reference``: the same daemon fed the reference book live, its
   indices and perpetuals ticking every 200 ms, its expiries laid out from today;
   ``--expired``: the book's own 2026 expiries) for ``--minutes`` (10), while this
   script polls ``/api/v1/snapshot`` every 5 s and scrapes ``/metrics`` every 5 s as
   Prometheus would. The child's RSS every ``--every`` seconds (30), and its growth from
   the level at the end of the first minute (after warm-up and the first snapshots) to
   the end, and how long it took to stop after SIGTERM. ``--trace FILE`` (with
   ``--reference``): the daemon also writes tracemalloc figures to ``FILE`` at
   ``--trace-at`` seconds (20,60): traced memory and its peak since the previous sample,
   ``VmRSS``/``VmHWM``, the top allocation sites and tracebacks (tracemalloc slows it).

Run: ``python tests/bench/bench_memory.py [book|soak|all] [--minutes 10] [--reference]``
(default ``all``). Linux only (reads ``/proc``). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import numpy as np
from benchtools import EXPIRIES, T0, book_events, build, expiries_after

from connectors.base import EventSink
from monitor.model.events import PriceEvent
from monitor.model.health import ConnectorStatus
from monitor.model.snapshot import RiskSnapshot


def _status_kb(pid: int | str, field: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _mb(kb: int) -> float:
    return kb / 1024.0


def book(evaluations: int) -> None:
    try:
        from monitor.serve.http import encode_report
    except ImportError:  # a checkout from before it (PYTHONPATH=<checkout>: before/after)
        from monitor.serve.http import _encoder

        def encode_report(snapshot: RiskSnapshot) -> bytes:
            return _encoder.encode(snapshot.report())

    gc.collect()
    stages = [("imports (numpy, riskmon)", _status_kb("self", "VmRSS"))]
    t = time.perf_counter()
    eng = build()
    gc.collect()
    stages.append(("reference book built", _status_kb("self", "VmRSS")))
    as_of = T0 + 121_000
    snap = eng.evaluate(as_of)
    gc.collect()
    stages.append(("first evaluation (scenario pass)", _status_kb("self", "VmRSS")))
    for k in range(evaluations):
        snap = eng.evaluate(as_of + 250 * (k + 1))
    gc.collect()
    stages.append((f"after {evaluations} more evaluations", _status_kb("self", "VmRSS")))
    doc = snap.report()
    stages.append(("report document built (held)", _status_kb("self", "VmRSS")))
    body = encode_report(snap)
    stages.append((f"report encoded ({len(body) / 1e6:.1f} MB, held)", _status_kb("self", "VmRSS")))
    del doc, body
    gc.collect()
    stages.append(("document and bytes dropped", _status_kb("self", "VmRSS")))
    print(f"reference book, one process ({time.perf_counter() - t:.0f} s):")
    for name, kb in stages:
        print(f"  {name:<40} RSS {_mb(kb):7.1f} MB")
    print(f"  {'peak (VmHWM)':<40}     {_mb(_status_kb('self', 'VmHWM')):7.1f} MB")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> int:
    """Bytes of a GET, 0 when it fails (the daemon still starting)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return len(resp.read())
    except (urllib.error.URLError, OSError):
        return 0


class _ReferenceFeed:
    """The reference book live: its option and perpetual prices, positions and account
    figures stamped now, then every underlying's index and perpetual ticking every 200 ms
    (a random walk); the option marks stay as sent. The expiries are laid out from today
    as the book's are from its start (``benchtools.expiries_after``); with ``expired``,
    the book's own (2026), so that those past are expired options still held (what the
    soak measured until 2026-12, when 5 of the 6 had passed)."""

    def __init__(self, expired: bool = False) -> None:
        self._status = ConnectorStatus("reference", "bench")
        self._expired = expired

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    async def run(self, sink: EventSink) -> None:
        expiries = EXPIRIES if self._expired else expiries_after(int(time.time() * 1000))
        events = book_events(expiries=expiries)
        book_ts = T0 + 120_000
        now = int(time.time() * 1000)
        level = {
            e.instrument: e.price
            for e in events
            if isinstance(e, PriceEvent) and e.ts == book_ts - 1_000
        }
        # The indices first: an option is valued against its underlying's index.
        for u, price in level.items():
            await sink.put(PriceEvent(now, u, price), "reference")
        for e in events:
            if e.ts == book_ts:
                await sink.put(msgspec.structs.replace(e, ts=now), "reference")
        self._status.connected = self._status.delivered = True
        rng = np.random.default_rng(2)
        names = list(level)
        prices = np.array([level[u] for u in names])
        while True:
            await asyncio.sleep(0.2)
            prices *= np.exp(0.001 * rng.standard_normal(len(prices)))
            now = int(time.time() * 1000)
            for u, price in zip(names, prices.tolist(), strict=True):
                await sink.put(PriceEvent(now, u, price), "reference")
                await sink.put(PriceEvent(now, f"{u}-PERPETUAL", price), "reference")
            self._status.messages += 2 * len(names)
            self._status.last_message_s = time.time()


def _trace(path: Path, at_s: list[float], frames: int) -> None:
    """Write tracemalloc figures of this process to ``path`` at each of ``at_s`` seconds:
    traced memory now and its peak since the previous sample, ``VmRSS``/``VmHWM``, the top
    allocation sites (by line) and the top tracebacks."""
    tracemalloc.start(frames)
    start = time.monotonic()

    def run() -> None:
        with path.open("w") as out:
            for at in at_s:
                time.sleep(max(0.0, start + at - time.monotonic()))
                snap = tracemalloc.take_snapshot()
                cur, peak = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                rss, hwm = _status_kb("self", "VmRSS"), _status_kb("self", "VmHWM")
                print(
                    f"== t={time.monotonic() - start:.0f} s: traced {cur / 2**20:.1f} MB, "
                    f"traced peak since last {peak / 2**20:.1f} MB, "
                    f"VmRSS {_mb(rss):.1f} MB, VmHWM {_mb(hwm):.1f} MB",
                    file=out,
                )
                snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
                for st in snap.statistics("lineno")[:15]:
                    print(f"  {st.size / 2**20:8.1f} MB {st.count:8d}  {st.traceback[0]}", file=out)
                for st in snap.statistics("traceback")[:5]:
                    print(f"  -- {st.size / 2**20:.1f} MB in {st.count} blocks:", file=out)
                    for line in st.traceback.format(most_recent_first=True):
                        print(f"    {line}", file=out)
                out.flush()

    threading.Thread(target=run, name="bench.trace", daemon=True).start()


def _reference_daemon(
    listen: str, trace: Path | None, trace_at: list[float], expired: bool
) -> None:
    """The daemon ``riskmon run`` builds from the built-in config, fed the reference book
    instead of the simulated market (the soak's ``--reference``)."""
    from monitor.config import load_config
    from monitor.daemon import Daemon, install_signal_handlers

    if trace is not None:
        _trace(trace, trace_at, 8)
    cfg = load_config(None, listen=listen)

    async def amain() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await Daemon(cfg, connectors=[_ReferenceFeed(expired)]).run(stop)

    asyncio.run(amain())


def soak(
    minutes: float,
    every_s: float,
    reference: bool,
    trace: Path | None,
    trace_at: str,
    expired: bool = False,
) -> None:
    port = _port()
    url = f"http://127.0.0.1:{port}"
    listen = f"127.0.0.1:{port}"
    riskmon = Path(sys.executable).with_name("riskmon")
    argv = (
        [sys.executable, __file__, "reference-daemon", "--listen", listen]
        + ([] if trace is None else ["--trace", str(trace), "--trace-at", trace_at])
        + (["--expired"] if expired else [])
        if reference
        else [str(riskmon), "run", "--listen", listen]
    )
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            _soak(proc, url, minutes, every_s, "the reference book" if reference else "")
        finally:
            asked = time.monotonic()
            proc.terminate()
            try:
                proc.wait(60)
                print(f"the daemon stopped {time.monotonic() - asked:.1f} s after SIGTERM")
            except subprocess.TimeoutExpired:
                print("the daemon did not stop within 60 s of SIGTERM: killed")
                proc.kill()
                proc.wait()
            if proc.returncode not in (0, -15):
                log.seek(0)
                print(log.read().decode(errors="replace")[-3000:])


def _soak(
    proc: subprocess.Popen[bytes], url: str, minutes: float, every_s: float, fed: str
) -> None:
    start = time.monotonic()
    end = start + 60.0 * minutes
    next_sample = start
    next_poll = start
    baseline: float | None = None
    report_bytes = 0
    what = f"fed {fed}" if fed else "simulated market"
    print(
        f"soak: riskmon run (built-in config, {what}) for {minutes:g} min, RSS every {every_s:g} s"
    )
    print(f"  {'t (s)':>6}  {'RSS (MB)':>9}  {'vs 1 min':>8}  report")
    while True:
        now = time.monotonic()
        if proc.poll() is not None:
            print(f"  the daemon exited ({proc.returncode}) after {now - start:.0f} s")
            return
        if now >= next_poll:
            report_bytes = _get(url + "/api/v1/snapshot") or report_bytes
            _get(url + "/metrics")
            next_poll += 5.0
        if now >= next_sample:
            elapsed = now - start
            rss = _mb(_status_kb(proc.pid, "VmRSS"))
            if baseline is None and elapsed >= 60.0 - every_s / 2:
                baseline = rss
            vs = "" if baseline is None else f"{100.0 * (rss / baseline - 1.0):+7.2f}%"
            print(f"  {elapsed:6.0f}  {rss:9.1f}  {vs:>8}  {report_bytes / 1e3:.0f} kB", flush=True)
            next_sample += every_s
            if now >= end:
                break
        time.sleep(max(0.0, min(next_sample, next_poll) - time.monotonic()))
    final = _mb(_status_kb(proc.pid, "VmRSS"))
    peak = _mb(_status_kb(proc.pid, "VmHWM"))
    stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu_s = (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    print(
        f"  the daemon's CPU time {cpu_s:.0f} s over {time.monotonic() - start:.0f} s wall; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if baseline is not None:
        growth = 100.0 * (final / baseline - 1.0)
        print(
            f"growth from the first minute ({baseline:.1f} MB) to the end ({final:.1f} MB): "
            f"{growth:+.2f}%; peak {peak:.1f} MB"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "what", nargs="?", choices=("book", "soak", "all", "reference-daemon"), default="all"
    )
    ap.add_argument("--reference", action="store_true", help="soak: feed the reference book")
    ap.add_argument(
        "--expired",
        action="store_true",
        help="soak --reference: the book's own 2026 expiries (most expired by now)",
    )
    ap.add_argument("--listen", default="127.0.0.1:0", help=argparse.SUPPRESS)
    ap.add_argument("--evaluations", type=int, default=20)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between RSS samples")
    ap.add_argument(
        "--trace",
        type=Path,
        help="soak --reference: the daemon writes tracemalloc figures to this file",
    )
    ap.add_argument(
        "--trace-at", default="20,60", help="seconds after start of the tracemalloc samples"
    )
    args = ap.parse_args()
    if args.what in ("book", "all"):
        book(args.evaluations)
    if args.what in ("soak", "all"):
        soak(args.minutes, args.every, args.reference, args.trace, args.trace_at, args.expired)
    if args.what == "reference-daemon":
        at = [float(t) for t in args.trace_at.split(",")]
        _reference_daemon(args.listen, args.trace, at, args.expired)


if __name__ == "__main__":
    main()
