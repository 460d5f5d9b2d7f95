"""Cluster mode on one machine: 1, 2 and 4 engine daemons sharing a book of 2,000 accounts.

A 3-node JetStream cluster of its own (loopback, temporary store), one ``riskmon ingest``
running the simulated market (prices of BTC, ETH, SOL and their instruments, and its 4
demo accounts), and a book of ``--accounts`` accounts published once (each: a BTC and an
ETH perpetual, an SOL spot holding, equity and maintenance margin). Then, for each
number of engine daemons, real ``riskmon run`` processes with ``[cluster]`` (16 shards by
lease, ``risk.eval_interval = --eval-interval``, 250 ms as in production: a daemon whose
evaluation takes longer evaluates back to back) share the book; once every account is
held, each daemon is measured over ``--seconds``:

- accounts held, evaluations per second (every account it holds is revalued once per
  evaluation, so this is also the evaluation rate *per account*), mean evaluation time;
- its CPU (user + system, /proc) as a share of one core.

and in total: account-evaluations per second (sum over daemons of accounts x
evaluations/s) and the slowest per-account evaluation rate.

Run: ``python tests/bench/bench_cluster.py [--accounts 2000] [--seconds 20]``. Needs
Debian's ``nats-server``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nats_cluster import NatsCluster, RiskmonProcess, publish
from prometheus_client.parser import text_string_to_metric_families

from monitor.model.events import AccountEvent, Event, PositionEvent

TS = 1_790_000_000_000
_CLK = os.sysconf("SC_CLK_TCK")


def book(n: int) -> list[Event]:
    events: list[Event] = []
    for i in range(n):
        a = f"acct-{i:05d}"
        for inst, q in (
            ("BTC-PERPETUAL", 1.0 + i % 7),
            ("ETH-PERPETUAL", -10.0 - i % 5),
            ("SOL_USDC", 100.0 + i % 11),
        ):
            events.append(PositionEvent(ts=TS, account=a, instrument=inst, quantity=q))
        events.append(AccountEvent(ts=TS, account=a, equity=2e6 + 1e3 * i, maintenance_margin=2e5))
    return events


def scrape(d: RiskmonProcess) -> dict[str, float]:
    with urllib.request.urlopen(d.url + "/metrics", timeout=120) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name in (
                "riskmon_evaluations_total",
                "riskmon_evaluation_duration_seconds_sum",
                "riskmon_evaluation_duration_seconds_count",
                "riskmon_cluster_accounts",
                "riskmon_cluster_shards",
            ):
                out[s.name] = s.value
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK  # utime + stime


def run_engines(
    n: int, servers: list[str], tmp: Path, total: int, eval_interval: str, seconds: float
) -> None:
    urls = ", ".join(f'"{u}"' for u in servers)
    engines = []
    try:
        for k in range(n):
            cfg = tmp / f"engine-{n}-{k}.toml"
            cfg.write_text(
                f'[log]\nformat = "json"\n\n[risk]\neval_interval = "{eval_interval}"\n\n'
                f'[cluster]\nservers = [{urls}]\nmember = "e{n}-{k}"\nshard_count = 16\n'
                f'lease_ttl = "10s"\nlease_bucket = "bench_{n}"\n'
            )
            engines.append(
                RiskmonProcess(
                    "run", cfg, tmp / f"engine-{n}-{k}.log", ready_msg="riskmon listening"
                )
            )
        deadline = time.monotonic() + 300
        while True:
            # /metrics of 2,000 accounts is megabytes: scrape each daemon once a round.
            samples = [scrape(d) for d in engines]
            held = [m.get("riskmon_cluster_accounts", 0.0) for m in samples]
            shards = [m.get("riskmon_cluster_shards", 0.0) for m in samples]
            if sum(held) == total and sum(shards) == 16 and all(held):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{n} engines did not settle: accounts {held}, shards {shards}")
            time.sleep(2.0)
        time.sleep(2.0)  # let the first rebuilds and scenario passes pass
        before = [(scrape(d), cpu_s(d.proc.pid)) for d in engines]
        t0 = time.monotonic()
        time.sleep(seconds)
        after = [(scrape(d), cpu_s(d.proc.pid)) for d in engines]
        dt = time.monotonic() - t0
    finally:
        for d in engines:
            d.stop()
    print(f"\n{n} engine daemon(s), {total} accounts, {dt:.1f} s window:")
    print(f"  {'daemon':8} {'accounts':>8} {'evals/s':>8} {'mean eval ms':>12} {'CPU %':>6}")
    account_evals = 0.0
    slowest = float("inf")
    for k, ((m0, c0), (m1, c1)) in enumerate(zip(before, after, strict=True)):
        evals = m1["riskmon_evaluations_total"] - m0["riskmon_evaluations_total"]
        dur = (
            m1["riskmon_evaluation_duration_seconds_sum"]
            - m0["riskmon_evaluation_duration_seconds_sum"]
        )
        rate = evals / dt
        accounts = m1["riskmon_cluster_accounts"]
        account_evals += accounts * rate
        slowest = min(slowest, rate)
        mean_ms = 1000 * dur / evals if evals else float("nan")
        cpu = 100 * (c1 - c0) / dt
        print(f"  e{n}-{k:<6} {accounts:8.0f} {rate:8.1f} {mean_ms:12.1f} {cpu:6.0f}")
    print(f"  total: {account_evals:,.0f} account-evaluations/s; every account revalued at")
    print(f"         least {slowest:.1f} times/s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--accounts", type=int, default=2000)
    p.add_argument("--engines", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--eval-interval", default="250ms")
    p.add_argument("--keep", type=Path, help="work (and leave logs) in this directory")
    args = p.parse_args()
    print(f"cores: {os.cpu_count()}; load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="riskmon-bench-cluster-") as d:
        tmp = args.keep or Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        cluster = NatsCluster(tmp / "nats")
        cluster.start()
        ingest = None
        try:
            servers = cluster.urls
            took = asyncio.run(publish(servers, book(args.accounts)))
            n_msgs = 4 * args.accounts
            print(
                f"published {n_msgs} account messages (R3, acked one by one) in {took:.1f} s: "
                f"{n_msgs / took:,.0f}/s"
            )
            urls = ", ".join(f'"{u}"' for u in servers)
            cfg = tmp / "ingest.toml"
            cfg.write_text(
                f'[log]\nformat = "json"\n\n[cluster]\nservers = [{urls}]\n\n'
                '[[connectors]]\ntype = "simulated"\n'
            )
            ingest = RiskmonProcess(
                "ingest", cfg, tmp / "ingest.log", ready_msg="riskmon ingest publishing"
            )
            total = args.accounts + 4  # the simulated market's demo accounts
            for n in args.engines:
                run_engines(n, servers, tmp, total, args.eval_interval, args.seconds)
        finally:
            if ingest is not None:
                ingest.stop()
            cluster.stop()
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
