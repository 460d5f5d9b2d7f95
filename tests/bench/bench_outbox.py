"""Alert bursts and the engine loop: what ``AlertDispatcher.submit`` costs the caller.

A burst of ``--burst`` transitions to 3 notifiers (each with its own on-disk outbox, every
file ``fsync``-ed): the time ``submit()`` holds the event loop when the files are written
on the dispatcher's writer thread (the daemon), beside the time the same writes take in
line (no running loop: how ``submit`` behaved before), and how long until every
transition is durable in its outbox.

Run: ``python tests/bench/bench_outbox.py [--burst 100] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from monitor.model.alert import Alert, Transition
from monitor.notify import AlertDispatcher
from monitor.notify.base import Notifier, Session

T0_MS = 1_767_225_600_000


class Idle:
    """A notifier that never delivers: the transitions stay in its outbox."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.max_backoff_s = 1.0

    def wants(self, transition: Transition) -> bool:
        return True

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        await asyncio.Event().wait()
        raise AssertionError("never connects")
        yield


def burst(n: int, offset: int) -> list[Transition]:
    return [
        Transition(
            ts_ms=T0_MS + offset + i,
            previous="pending",
            alert=Alert(
                rule="risk_drift",
                severity="warning",
                state="firing",
                account=f"acct{i}",
                underlying="BTC",
                value=0.2,
                threshold=0.1,
                since_ms=T0_MS + offset + i,
                active_since_ms=T0_MS + offset,
                summary=f"acct{i}: BTC 52% of risk vs 33% budget",
            ),
        )
        for i in range(n)
    ]


def dispatcher(root: Path) -> AlertDispatcher:
    notifiers: list[Notifier] = [Idle("webhook"), Idle("mqtt"), Idle("alertmanager")]
    return AlertDispatcher(notifiers, root)


async def on_loop(n: int, runs: int) -> tuple[list[float], list[float]]:
    held, durable = [], []
    for r in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            d = dispatcher(Path(tmp))
            t0 = time.perf_counter()
            d.submit(burst(n, r * 10_000))
            t1 = time.perf_counter()
            await d.flush()
            t2 = time.perf_counter()
            d.close()
            held.append(t1 - t0)
            durable.append(t2 - t0)
    return held, durable


def in_line(n: int, runs: int) -> list[float]:
    held = []
    for r in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            d = dispatcher(Path(tmp))
            t0 = time.perf_counter()
            d.submit(burst(n, r * 10_000))
            held.append(time.perf_counter() - t0)
    return held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)  # the transitions' log lines are not what is measured
    held, durable = asyncio.run(on_loop(args.burst, args.runs))
    sync = in_line(args.burst, args.runs)
    ms = 1000.0
    print(f"burst of {args.burst} transitions x 3 notifiers, median of {args.runs} runs")
    print(f"  in line (before):    submit holds the caller {statistics.median(sync) * ms:8.2f} ms")
    print(f"  writer thread (now): submit holds the loop   {statistics.median(held) * ms:8.2f} ms")
    print(
        f"                       all durable after       {statistics.median(durable) * ms:8.2f} ms"
    )


if __name__ == "__main__":
    main()
