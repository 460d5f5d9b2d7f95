"""The offline commands import what they use, not the daemon's runtime.

``riskmon replay`` is measured end to end, interpreter start included (issue #12), and
``check-config``, ``status`` and ``whatif`` are run by people and scripts: none of them may
load the HTTP server, the notifiers, the venue transports or NATS. Each command runs in a
fresh interpreter through :func:`monitor.cli.main`, then the modules it loaded are compared
with what it must not load (module presence, not timing). The daemon's imports are the
control: the same probe sees every one of those modules there.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path

import msgspec
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

import monitor.notify
from connectors.simulated import SimulatedMarket
from connectors.simulated_config import DEMO_HISTORY, SimulatedConnector
from monitor.engine.record import PARQUET_SCHEMA
from monitor.model.events import PositionEvent, PriceEvent, encode_event
from monitor.model.settings import parse_duration

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000

#: Runs ``monitor.cli.main(argv)`` and writes its exit code and ``sys.modules`` to a file.
PROBE = """
import json, sys
from monitor.cli import main
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, f)
"""

#: The daemon's network side: never loaded by an offline command.
NETWORK = ("aiohttp", "nats", "websockets", "aiomqtt", "prometheus_client")
#: The daemon, its readers and notifiers, and the connectors' runtimes.
RUNTIME = (
    "polars",
    "monitor.daemon",
    "monitor.ingest",
    "monitor.serve.http",
    "monitor.serve.metrics",
    "monitor.notify.dispatch",
    "monitor.notify.webhook",
    "monitor.notify.alertmanager",
    "monitor.notify.mqtt",
    "connectors.simulated",
    "connectors.ws",
    "connectors.deribit.client",
    "connectors.binance.client",
    "connectors.mqtt.client",
    "connectors.nats.source",
)
#: What only the engine needs (replay loads it; the other offline commands do not).
ENGINE = ("monitor.engine", "scipy", "pyarrow")
#: A config naming a connector of every kind, so every connector's config is loaded.
CONFIG = """
[server]
listen = "127.0.0.1:0"

[alerts]
outbox = "/nonexistent/outbox"

[alerts.webhook]
url = "http://127.0.0.1:1/hook"

[alerts.mqtt]

[alerts.alertmanager]

[[connectors]]
type = "deribit"

[[connectors]]
type = "binance_futures"

[[connectors]]
type = "mqtt"

[[connectors]]
type = "simulated"
"""


def loaded(modules: Collection[str], names: Collection[str]) -> list[str]:
    """The modules among ``modules`` that are one of ``names`` or inside one."""
    return sorted(m for m in modules if any(m == n or m.startswith(f"{n}.") for n in names))


def run_cli(tmp_path: Path, *argv: str) -> tuple[int, list[str]]:
    """``riskmon ARGV`` in a fresh interpreter: its exit code and the modules it loaded."""
    out = tmp_path / "probe.json"
    subprocess.run(
        [sys.executable, "-c", PROBE, str(out), *argv],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    probe = json.loads(out.read_text())
    return probe["rc"], probe["modules"]


def write_recording(path: Path) -> None:
    """Two accounts, BTC and ETH perpetuals priced every second for a minute."""
    events: list[PositionEvent | PriceEvent] = [
        PositionEvent(T0, "a", "BTC-PERPETUAL", 2.0),
        PositionEvent(T0, "b", "ETH-PERPETUAL", -30.0),
    ]
    for s in range(60):
        ts = T0 + 1000 * s
        events += [
            PriceEvent(ts, "BTC", 90_000.0 + 10 * s),
            PriceEvent(ts, "BTC-PERPETUAL", 90_010.0 + 10 * s),
            PriceEvent(ts, "ETH", 3_000.0 - s),
            PriceEvent(ts, "ETH-PERPETUAL", 3_001.0 - s),
        ]
    if path.suffix == ".parquet":
        rows = [msgspec.to_builtins(e) for e in events]
        pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), path)
    else:
        path.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_replay_loads_the_engine_and_nothing_of_the_daemon(tmp_path: Path, suffix: str) -> None:
    recording = tmp_path / f"rec{suffix}"
    write_recording(recording)
    report = tmp_path / "report.json"
    rc, modules = run_cli(tmp_path, "replay", str(recording), "--out", str(report))
    assert rc == 0
    assert set(json.loads(report.read_text())["accounts"]) == {"a", "b"}
    assert "monitor.engine.core" in modules  # the probe saw the command's own imports
    assert loaded(modules, NETWORK + RUNTIME) == []
    # pyarrow only to read Parquet (its import is a good part of a small replay's start)
    assert ("pyarrow" in modules) == (suffix == ".parquet")


def test_check_config_loads_no_runtime_even_with_every_connector_and_notifier(
    tmp_path: Path,
) -> None:
    config = tmp_path / "riskmon.toml"
    config.write_text(CONFIG)
    rc, modules = run_cli(tmp_path, "check-config", str(config))
    assert rc == 0
    # Every connector's and notifier's config was loaded: their runtimes were not.
    assert {"connectors.deribit.config", "connectors.simulated_config"} <= set(modules)
    assert "monitor.notify.config" in modules
    assert loaded(modules, NETWORK + RUNTIME + ENGINE) == []


@pytest.mark.parametrize(
    "argv",
    [
        ("status", "--url", "http://127.0.0.1:1"),
        ("whatif", "--account", "a", "BTC-PERPETUAL=-1", "--url", "http://127.0.0.1:1"),
    ],
)
def test_status_and_whatif_load_no_runtime_and_no_config(
    tmp_path: Path, argv: tuple[str, ...]
) -> None:
    rc, modules = run_cli(tmp_path, *argv)
    assert rc == 1  # nothing listens on port 1: the request was made and failed
    assert "monitor.serve.status" in modules
    # They read no config file: neither the schema (numpy, through the rules) nor asyncio.
    client_only = ("monitor.config", "connectors", "numpy", "asyncio")
    assert loaded(modules, NETWORK + RUNTIME + ENGINE + client_only) == []


def test_the_probe_sees_the_daemons_imports(tmp_path: Path) -> None:
    """The control: the modules the offline commands must not load are real, and loaded by
    the daemon with the same config (its connectors built, as ``riskmon run`` builds them)."""
    config = tmp_path / "riskmon.toml"
    config.write_text(CONFIG)
    out = tmp_path / "probe.json"
    code = (
        "import json, sys, monitor.daemon\n"
        "from monitor.config import load_config\n"
        f"cfg = load_config({str(config)!r}, env={{}})\n"
        "connectors = [c.build() for c in cfg.connectors]\n"
        f"json.dump(sorted(sys.modules), open({str(out)!r}, 'w'))\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
    modules = json.loads(out.read_text())
    missing = [n for n in NETWORK + RUNTIME if not loaded(modules, [n])]
    # Cluster mode only (riskmon ingest, or run with [cluster]); polars: tests only.
    assert missing == ["nats", "polars", "monitor.ingest", "connectors.nats.source"]


def test_notify_names_load_on_first_use() -> None:
    """``monitor.notify``'s public names are its submodules' objects, each one listed."""
    assert set(monitor.notify._SOURCES) == set(monitor.notify.__all__)
    for name in monitor.notify.__all__:
        value = getattr(monitor.notify, name)
        assert value is getattr(
            sys.modules[f"monitor.notify.{monitor.notify._SOURCES[name]}"], name
        )
        assert name in dir(monitor.notify)
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        _ = monitor.notify.Nope  # type: ignore[attr-defined]


def test_simulated_entry_builds_the_market_it_describes() -> None:
    cfg = SimulatedConnector(
        name="sim",
        seed=3,
        tick_interval=parse_duration("100ms"),
        underlyings=("BTC", "SOL"),
        start_ms=T0,
        realtime=False,
        duration=parse_duration("2s"),
        history=DEMO_HISTORY,
    )
    market = cfg.build()
    assert isinstance(market, SimulatedMarket)
    again = SimulatedMarket(
        name="sim",
        seed=3,
        tick_interval_ms=100,
        underlyings=("BTC", "SOL"),
        start_ms=T0,
        realtime=False,
        history_ms=360_000,
        duration_ms=2_000,
    )
    assert list(itertools.islice(market.events(), 300)) == list(
        itertools.islice(again.events(), 300)
    )
    fields = ("_name", "_start_ms", "_realtime", "_history_ms", "_duration_ms")
    assert [getattr(market, f) for f in fields] == [getattr(again, f) for f in fields]
