"""``riskmon``: run, replay, check-config, status, whatif.

Exit codes: 0 success; 1 runtime failure; 2 bad usage or invalid configuration.

Each command imports what it uses, inside its function: ``replay`` the engine but not the
daemon, ``check-config`` the config schema alone, ``status`` and ``whatif`` an HTTP request
and a table (``tests/test_cli_imports.py``). Start-up time is part of a replay's figure.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import msgspec

from monitor import __version__
from monitor.model.settings import ConfigError

__all__ = ["main"]

log = logging.getLogger("riskmon")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error as one line naming the argument (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0; got {value}")
    return value


def _record_path(text: str) -> Path:
    """``--record``: a recording's suffix picks its format; Parquet is a segment directory."""
    from monitor.engine.record import SUFFIXES

    path = Path(text)
    name = path.name.lower()
    if not name.endswith(SUFFIXES):
        raise argparse.ArgumentTypeError(
            f"cannot record to {text!r}: the suffix must be one of {', '.join(SUFFIXES)}"
        )
    if name.endswith(".parquet") and path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file; a Parquet recording is a directory of segments "
            "(give a new path, or the directory of an earlier recording to add to it)"
        )
    if not name.endswith(".parquet") and path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory")
    return path


def _recording(text: str) -> Path:
    """``replay FILE``: an existing recording with a suffix the reader knows."""
    from connectors.replay import SUFFIXES

    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"cannot replay {text!r}: no such file or directory")
    if not path.name.lower().endswith(SUFFIXES):
        raise argparse.ArgumentTypeError(
            f"cannot replay {text!r}: the suffix must be one of {', '.join(SUFFIXES)}"
        )
    return path


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="riskmon", description="Streaming real-time risk monitor for crypto portfolios."
    )
    p.add_argument("--version", action="version", version=f"riskmon {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (no config: the simulated market)")
    run.add_argument("--config", type=Path, help="TOML config file (default: built-in)")
    run.add_argument(
        "--record",
        type=_record_path,
        help="write accepted events to .jsonl, .jsonl.gz, or .parquet (a directory of segments)",
    )
    run.add_argument("--listen", help="HOST:PORT for HTTP (overrides server.listen)")
    run.add_argument("--seed", type=_seed, help="seed (>= 0) of the simulated market(s)")

    ing = sub.add_parser("ingest", help="publish the connectors' events to NATS ([cluster])")
    ing.add_argument("--config", type=Path, help="TOML config file with a [cluster] section")
    ing.add_argument("--listen", help="HOST:PORT for /metrics (overrides server.listen)")
    ing.add_argument("--seed", type=int, help="seed of the simulated market(s)")

    rep = sub.add_parser("replay", help="replay a recording on event time and print the report")
    rep.add_argument(
        "file", type=_recording, help=".jsonl, .jsonl.gz or .parquet (file or segment directory)"
    )
    rep.add_argument("--config", type=Path, help="TOML config file (estimator and risk settings)")
    rep.add_argument("--report", choices=("json", "table"), default="json")
    rep.add_argument("--out", type=Path, help="write the report here instead of stdout")

    chk = sub.add_parser("check-config", help="validate a config file and exit")
    chk.add_argument("file", type=Path)

    st = sub.add_parser("status", help="show the live snapshot of a running daemon")
    st.add_argument("--url", default="http://127.0.0.1:9321", help="daemon base URL")
    st.add_argument("--json", action="store_true", help="print the raw report JSON")
    st.add_argument(
        "--token-file", type=Path, help="bearer token file, when the daemon has [server] token_file"
    )

    wi = sub.add_parser("whatif", help="a running daemon's figures before and after trades")
    wi.add_argument("--account", required=True, help="the account the trades are in")
    wi.add_argument(
        "trades",
        nargs="+",
        type=_trade,
        metavar="INSTRUMENT=QTY[@PRICE]",
        help="signed contracts to add (BTC-PERPETUAL=-2), optionally marked at a price",
    )
    wi.add_argument("--url", default="http://127.0.0.1:9321", help="daemon base URL")
    wi.add_argument("--json", action="store_true", help="print the raw what-if JSON")
    wi.add_argument(
        "--token-file", type=Path, help="bearer token file, when the daemon has [server] token_file"
    )
    return p


def _trade(text: str) -> dict[str, Any]:
    """``INSTRUMENT=QTY[@PRICE]`` -> a what-if trade (the daemon checks the instrument)."""
    name, sep, rest = text.rpartition("=")
    qty_s, at, price_s = rest.partition("@")
    try:
        qty = float(qty_s)
        price = float(price_s) if at else None
    except ValueError:
        qty, price = math.nan, None
    if (
        not sep
        or not name
        or not math.isfinite(qty)
        or qty == 0.0
        or (price is not None and not (math.isfinite(price) and price > 0.0))
    ):
        raise argparse.ArgumentTypeError(
            f"expected INSTRUMENT=QTY[@PRICE] with a non-zero QTY (BTC-PERPETUAL=-2); got {text!r}"
        )
    trade: dict[str, Any] = {"instrument": name, "quantity": qty}
    if price is not None:
        trade["price"] = price
    return trade


def main(argv: list[str] | None = None) -> int:
    # A hang (a stop that does not finish) is diagnosable: SIGABRT writes every thread's
    # stack to stderr; SIGUSR1 logs every task's (run, ingest).
    faulthandler.enable()
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
        if args.command == "whatif":
            return _whatif(args)
        return _status(args)
    except ConfigError as exc:
        print(f"riskmon: invalid configuration: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``riskmon check-config x.toml | head``): not an error of
        # ours. Point stdout at /dev/null so the interpreter's final flush is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1


def _config_path(arg: Path | None) -> str | Path | None:
    """``--config``, else ``$RISKMON_CONFIG``, else built-in defaults."""
    from monitor.config import CONFIG_PATH_ENV

    return arg if arg is not None else os.environ.get(CONFIG_PATH_ENV) or None


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from monitor.config import load_config, redacted
    from monitor.daemon import Daemon, install_signal_handlers
    from monitor.logs import setup_logging

    cfg = load_config(_config_path(args.config), listen=args.listen, seed=args.seed)
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


def _ingest(args: argparse.Namespace) -> int:
    """``riskmon ingest``: the connectors' events to JetStream (monitor.ingest)."""
    import asyncio

    from monitor.config import load_config, redacted
    from monitor.daemon import install_signal_handlers
    from monitor.ingest import Ingest
    from monitor.logs import setup_logging

    cfg = load_config(_config_path(args.config), listen=args.listen, seed=args.seed)
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
    from connectors.replay import feed, iter_batches
    from monitor.config import load_config
    from monitor.engine.core import Engine
    from monitor.logs import RejectionLog, setup_logging
    from monitor.rules.pack import rule_engine
    from monitor.settings import engine_settings, risk_settings

    cfg = load_config(_config_path(args.config))
    setup_logging(cfg.log.level, "text" if sys.stderr.isatty() else cfg.log.format)
    engine = Engine(
        engine_settings(cfg), risk=risk_settings(cfg), rules=rule_engine(cfg.rules, cfg.limits)
    )
    reject_log = RejectionLog(log)
    started = time.perf_counter()
    events = 0
    try:
        # Parquet price rows come column-wise (no event object per row); JSONL as events,
        # whose price runs the engine takes column-wise too.
        for batch in iter_batches(args.file, columns=True):
            for n, rej in batch.rejections:
                engine.reject("replay", rej)
                reject_log("replay", rej.reason.value, f"{batch.where(n)}: {rej.detail}")
            for k, rej in feed(engine, batch, "replay"):
                where = batch.where(batch.number_of(k))
                reject_log("replay", rej.reason.value, f"{where}: {rej.detail}")
            events += len(batch) + len(batch.rejections)
    except (OSError, ValueError) as exc:
        print(f"riskmon: cannot replay {args.file}: {exc}", file=sys.stderr)
        return 1
    # Events are not in time order (venues' clocks differ): the report is as of the latest.
    last_ts = engine.latest_event_ms
    if last_ts is None:
        print(f"riskmon: {args.file} holds no valid event", file=sys.stderr)
        return 1
    snap = engine.evaluate(last_ts, scenarios=True)  # scenario figures of the final state
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
    from monitor.config import load_config, redacted

    cfg = load_config(args.file)
    print(f"{args.file}: ok")
    print(json.dumps(redacted(cfg), indent=2, default=str))
    return 0


def _status(args: argparse.Namespace) -> int:
    from monitor.model.settings import read_secret_file
    from monitor.serve.status import fetch_report, render_status

    token = (
        None if args.token_file is None else read_secret_file(str(args.token_file), "--token-file")
    )
    try:
        # The table needs the summary (no position rows: small however large the book);
        # --json prints the whole report, as before.
        path = "/api/v1/snapshot" if args.json else "/api/v1/summary"
        report = fetch_report(args.url.rstrip("/") + path, timeout_s=5.0, token=token)
    except OSError as exc:
        print(f"riskmon: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else render_status(report))
    return 0


def _whatif(args: argparse.Namespace) -> int:
    from monitor.model.settings import read_secret_file
    from monitor.serve.status import post_whatif, render_whatif

    token = (
        None if args.token_file is None else read_secret_file(str(args.token_file), "--token-file")
    )
    body = {"account": args.account, "trades": args.trades}
    try:
        result = post_whatif(args.url.rstrip("/"), body, timeout_s=30.0, token=token)
    except OSError as exc:
        print(f"riskmon: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2) if args.json else render_whatif(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
