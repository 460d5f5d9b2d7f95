"""``riskmon``: run, replay, check-config, status.

Exit codes: 0 success; 1 runtime failure; 2 bad usage or invalid configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from monitor import __version__
from monitor.config import CONFIG_PATH_ENV, Config, ConfigError, load_config, redacted

__all__ = ["main"]

log = logging.getLogger("riskmon")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="riskmon", description="Streaming real-time risk monitor for crypto portfolios."
    )
    p.add_argument("--version", action="version", version=f"riskmon {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (no config: the simulated market)")
    run.add_argument("--config", type=Path, help="TOML config file (default: built-in)")
    run.add_argument("--record", type=Path, help="write accepted events to .jsonl[.gz]/.parquet")
    run.add_argument("--listen", help="HOST:PORT for HTTP (overrides server.listen)")
    run.add_argument("--seed", type=int, help="seed of the simulated market(s)")

    ing = sub.add_parser("ingest", help="publish the connectors' events to NATS ([cluster])")
    ing.add_argument("--config", type=Path, help="TOML config file with a [cluster] section")
    ing.add_argument("--listen", help="HOST:PORT for /metrics (overrides server.listen)")
    ing.add_argument("--seed", type=int, help="seed of the simulated market(s)")

    rep = sub.add_parser("replay", help="replay a recording on event time and print the report")
    rep.add_argument("file", type=Path, help=".jsonl, .jsonl.gz or .parquet events")
    rep.add_argument("--config", type=Path, help="TOML config file (estimator and risk settings)")
    rep.add_argument("--report", choices=("json", "table"), default="json")
    rep.add_argument("--out", type=Path, help="write the report here instead of stdout")

    chk = sub.add_parser("check-config", help="validate a config file and exit")
    chk.add_argument("file", type=Path)

    st = sub.add_parser("status", help="show the live snapshot of a running daemon")
    st.add_argument("--url", default="http://127.0.0.1:9321", help="daemon base URL")
    st.add_argument("--json", action="store_true", help="print the raw report JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "check-config":
            return _check_config(args)
        return _status(args)
    except ConfigError as exc:
        print(f"riskmon: invalid configuration: {exc}", file=sys.stderr)
        return 2


def _config_path(arg: Path | None) -> str | Path | None:
    """``--config``, else ``$RISKMON_CONFIG``, else built-in defaults."""
    return arg if arg is not None else os.environ.get(CONFIG_PATH_ENV) or None


def _run(args: argparse.Namespace) -> int:
    from monitor.daemon import Daemon, install_signal_handlers
    from monitor.logs import setup_logging

    cfg = _with_flags(load_config(_config_path(args.config)), args)
    setup_logging(cfg.log.level, cfg.log.format)
    log.info("starting riskmon %s", __version__, extra={"config": redacted(cfg)})

    async def amain() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await Daemon(cfg, record_path=args.record).run(stop)

    try:
        asyncio.run(amain())
    except OSError as exc:  # the port is taken, the record path is not writable...
        log.error("cannot run: %s", exc)
        return 1
    return 0


def _with_flags(cfg: Config, args: argparse.Namespace) -> Config:
    """``cfg`` with ``--listen`` and ``--seed`` (every connector that has a seed: the
    simulated market) applied."""
    import msgspec.structs

    if args.listen:
        cfg = msgspec.structs.replace(
            cfg, server=msgspec.structs.replace(cfg.server, listen=args.listen)
        )
    if args.seed is not None:
        cfg = msgspec.structs.replace(
            cfg,
            connectors=tuple(
                msgspec.structs.replace(c, seed=args.seed) if hasattr(c, "seed") else c
                for c in cfg.connectors
            ),
        )
    return cfg


def _ingest(args: argparse.Namespace) -> int:
    """``riskmon ingest``: the connectors' events to JetStream (monitor.ingest)."""
    from monitor.daemon import install_signal_handlers
    from monitor.ingest import Ingest
    from monitor.logs import setup_logging

    cfg = _with_flags(load_config(_config_path(args.config)), args)
    cluster = cfg.cluster
    if cluster is None:
        raise ConfigError("cluster", "riskmon ingest needs a [cluster] section")
    setup_logging(cfg.log.level, cfg.log.format)
    log.info("starting riskmon ingest %s", __version__, extra={"config": redacted(cfg)})

    async def amain() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await Ingest(cfg, cluster).run(stop)

    try:
        asyncio.run(amain())
    except OSError as exc:  # no NATS server reachable, among others
        log.error("cannot run: %s", exc)
        return 1
    return 0


def _replay(args: argparse.Namespace) -> int:
    from connectors.replay import iter_batches
    from monitor.daemon import engine_settings, risk_settings
    from monitor.engine.core import Engine
    from monitor.logs import RejectionLog, setup_logging
    from monitor.rules.pack import rule_engine

    cfg = load_config(_config_path(args.config))
    setup_logging(cfg.log.level, "text" if sys.stderr.isatty() else cfg.log.format)
    engine = Engine(
        engine_settings(cfg), risk=risk_settings(cfg), rules=rule_engine(cfg.rules, cfg.limits)
    )
    reject_log = RejectionLog(log)
    started = time.perf_counter()
    events = 0
    last_ts: int | None = None
    try:
        for batch in iter_batches(args.file):
            for line, rej in batch.rejections:
                engine.reject("replay", rej)
                reject_log("replay", rej.reason.value, f"line {line}: {rej.detail}")
            for rej in engine.replay(batch.events, "replay"):
                reject_log("replay", rej.reason.value, rej.detail)
            events += len(batch.events) + len(batch.rejections)
            for ev in reversed(batch.events):
                if ev.ts is not None:
                    last_ts = ev.ts
                    break
    except (OSError, ValueError) as exc:
        print(f"riskmon: cannot replay {args.file}: {exc}", file=sys.stderr)
        return 1
    if last_ts is None:
        print(f"riskmon: {args.file} holds no valid event", file=sys.stderr)
        return 1
    snap = engine.evaluate(last_ts)
    elapsed = time.perf_counter() - started
    rejected = sum(engine.stats.rejected.values())
    log.info(
        "replayed %d events (%d rejected) in %.3fs: %.0f events/s",
        events,
        rejected,
        elapsed,
        events / elapsed if elapsed > 0 else 0.0,
        extra={"rejected_by_reason": {r: n for (_, r), n in engine.stats.rejected.items()}},
    )
    report = snap.report()
    text = _render(report, args.report)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return msgspec.json.format(msgspec.json.encode(report)).decode() + "\n"
    from monitor.serve.status import render_status

    return render_status(report) + "\n"


def _check_config(args: argparse.Namespace) -> int:
    cfg = load_config(args.file)
    print(f"{args.file}: ok")
    print(json.dumps(redacted(cfg), indent=2, default=str))
    return 0


def _status(args: argparse.Namespace) -> int:
    from monitor.serve.status import fetch_report, render_status

    try:
        report = fetch_report(args.url.rstrip("/") + "/api/v1/snapshot", timeout_s=5.0)
    except OSError as exc:
        print(f"riskmon: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_status(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
