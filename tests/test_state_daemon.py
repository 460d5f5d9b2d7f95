"""Warm restarts and faults with real processes: ``riskmon run`` on the simulated market
and a desk's MQTT feed (a real Mosquitto), stopped with SIGTERM or killed with SIGKILL and
started again, the broker killed under it.

After each: the volatility is warm at once (its return count continues), a firing alert
keeps its episode and idempotency key and is not announced again, the desk's positions
come back, ``/-/ready`` answers, and the connector-down and stale-data alerts fired while
the broker was away.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_daemon import _samples
from tools import Mosquitto, free_port, required_tool

CONFIG = """
[server]
listen = "127.0.0.1:{http}"
[state]
dir = "{state}"
interval = "1s"
max_age = "1h"
[estimator]
sample_interval = "100ms"
halflife = "5s"
fast_halflife = "1s"
warmup = "2s"
max_gap = "5s"
var_halflife = "10s"
[risk]
eval_interval = "100ms"
[[rules]]
name = "margin_utilization"
for = "0s"
[[rules]]
name = "connector_down"
for = "1s"
cooldown = "0s"
[[rules]]
name = "stale_data"
warning = 3.0
critical = 600.0
clear = 2.0
for = "0s"
cooldown = "0s"
[[connectors]]
type = "simulated"
seed = 5
tick_interval = "50ms"
[[connectors]]
type = "mqtt"
name = "desk"
port = {mqtt}
topic_prefix = "riskmon"
client_id = "riskmon-state-test"
max_backoff = "1s"
"""


class Run:
    """A ``riskmon run`` process; its JSON log lines are collected as they come."""

    def __init__(self, config: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("RISKMON_")},
        )
        self.logs: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.logs.append(json.loads(line))

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                body = resp.read().decode()
                return resp.status, body if path == "/metrics" else json.loads(body)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read().decode())
        except OSError:
            return 0, None

    def report(self) -> dict[str, Any] | None:
        status, body = self.get("/api/v1/snapshot")
        return body if status == 200 else None

    def metric(self, name: str, **labels: str) -> float | None:
        status, text = self.get("/metrics")
        return _samples(text).get((name, frozenset(labels.items()))) if status == 200 else None

    def log(self, msg: str) -> dict[str, Any] | None:
        return next((r for r in list(self.logs) if r.get("msg", "").startswith(msg)), None)


def wait_for(what: str, check: Any, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def publish(port: int, topic: str, payload: Any, *, retain: bool = False) -> bool:
    argv = [required_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
    done = subprocess.run(
        [*argv, *(["-r"] if retain else []), "-t", topic, "-m", json.dumps(payload)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return done.returncode == 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Desk:
    """The desk's order system: XRP prices every 200 ms (while the broker is up), positions
    retained, an account whose margin utilisation (0.9) fires ``margin_utilization``."""

    def __init__(self, broker: Mosquitto) -> None:
        self.broker = broker
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._prices, daemon=True)
        self._thread.start()

    def _prices(self) -> None:
        k = 0
        while not self._stop.wait(0.2):
            k += 1
            p = 0.5 * (1.0 + 0.001 * (k % 7))
            t = now_ms()
            for name, price in (("XRP", p), ("XRP-PERPETUAL", p * 1.0002)):
                publish(
                    self.broker.port,
                    f"riskmon/prices/{name}",
                    {"type": "price", "ts": t, "instrument": name, "price": price},
                )

    def position(self, quantity: float) -> None:
        assert publish(
            self.broker.port,
            "riskmon/positions/desk1/XRP-PERPETUAL",
            {
                "type": "position",
                "ts": now_ms(),
                "account": "desk1",
                "instrument": "XRP-PERPETUAL",
                "quantity": quantity,
            },
            retain=True,
        )

    def account(self) -> None:
        assert publish(
            self.broker.port,
            "riskmon/accounts/desk1",
            {
                "type": "account",
                "ts": now_ms(),
                "account": "desk1",
                "equity": 1_000_000.0,
                "maintenance_margin": 900_000.0,
            },
            retain=True,
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()


@pytest.fixture
def desk(broker: Mosquitto) -> Iterator[Desk]:
    d = Desk(broker)
    yield d
    d.close()


def setup(tmp_path: Path, broker: Mosquitto) -> tuple[Path, int]:
    port = free_port()
    cfg = tmp_path / "riskmon.toml"
    cfg.write_text(CONFIG.format(http=port, state=tmp_path / "state", mqtt=broker.port))
    return cfg, port


def alert(report: dict[str, Any], rule: str, account: str) -> dict[str, Any] | None:
    return next(
        (a for a in report["alerts"] if a["rule"] == rule and a["account"] == account), None
    )


def history(report: dict[str, Any], rule: str, account: str) -> list[tuple[str, str, str]]:
    return [
        (h["from"], h["state"], h["key"])
        for h in report["alert_history"]
        if h["rule"] == rule and h["account"] == account
    ]


def sent(run: Run, prefix: str) -> list[str]:
    """Idempotency keys of the transitions the log notifier delivered, by alert prefix."""
    return [
        str(r["alert_key"])
        for r in list(run.logs)
        if str(r.get("alert_key", "")).startswith(prefix) and "error" not in r
    ]


def warm_with_alert(run: Run) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        rep = run.report()
        if rep is None or alert(rep, "margin_utilization", "desk1") is None:
            return None
        btc = rep["assets"].get("BTC")
        return rep if btc and btc["warm"] and btc["returns"] >= 30 else None

    rep: dict[str, Any] = wait_for("a warm estimator and the margin alert firing", ready)
    return rep


def first_run(run: Run, desk: Desk) -> dict[str, Any]:
    """Once the desk is connected: a position of 1,000 XRP-PERPETUAL, an account at 90%
    margin utilisation; the report once warm with the margin alert firing."""
    wait_for(
        "the desk connector",
        lambda: run.metric("riskmon_connector_up", connector="desk", kind="mqtt") == 1.0,
    )
    desk.position(1_000.0)
    desk.account()
    return warm_with_alert(run)


def restarted_warm(run: Run, before: dict[str, Any]) -> dict[str, Any]:
    """The first report of a restarted daemon: warm, its return count continued."""
    rep: dict[str, Any] = wait_for("the first report after the restart", run.report)
    for name, asset in before["assets"].items():
        got = rep["assets"][name]
        assert got["returns"] >= asset["returns"], name
        assert got["warm"], name
        assert got["volatility"] is not None, name
    return rep


def test_sigterm_restart_is_warm_and_does_not_announce_a_firing_alert_again(
    tmp_path: Path, broker: Mosquitto, desk: Desk, runs: list[Run]
) -> None:
    cfg, port = setup(tmp_path, broker)
    runs.append(first := Run(cfg, port))
    before = first_run(first, desk)
    assert first.metric("riskmon_state_restore", result="absent") == 1.0
    fired = history(before, "margin_utilization", "desk1")
    assert [(f, s) for f, s, _ in fired] == [("inactive", "firing")]
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=60) == 0
    assert (tmp_path / "state" / "riskmon.state").stat().st_mode & 0o777 == 0o600

    runs.append(second := Run(cfg, port))
    restored = wait_for("the restore log line", lambda: second.log("state restored"))
    assert restored["returns"][0] >= before["assets"]["BTC"]["returns"]
    rep = restarted_warm(second, before)
    assert second.metric("riskmon_state_restore", result="restored") == 1.0
    # The alert is still the same episode: firing since the first run, its transition
    # (and so its idempotency key) kept, no new "inactive -> firing".
    firing = alert(rep, "margin_utilization", "desk1")
    assert firing is not None
    assert firing["state"] == "firing"
    assert firing["since"] == alert(before, "margin_utilization", "desk1")["since"]  # type: ignore[index]
    time.sleep(1.0)  # several evaluations later, still no new transition
    rep = wait_for("a report", second.report)
    assert history(rep, "margin_utilization", "desk1") == fired
    # Not sent again: the log notifier, which gets every transition, logged it once, in
    # the first run, under the key the history keeps.
    assert sent(first, "margin_utilization/desk1/") == [fired[0][2]]
    assert sent(second, "margin_utilization/desk1/") == []
    status, body = second.get("/-/ready")
    assert status == 200, body
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=60) == 0


def test_sigkill_and_a_broker_outage(
    tmp_path: Path, broker: Mosquitto, desk: Desk, runs: list[Run]
) -> None:
    """SIGKILL: the last periodic save is restored and the desk's retained positions come
    back; then the broker is killed: connector_down and stale_data fire while it lasts,
    /-/ready stays 200 (a snapshot is served; the alerts say what is wrong), and both
    resolve once it is back."""
    cfg, port = setup(tmp_path, broker)
    runs.append(first := Run(cfg, port))
    before = first_run(first, desk)
    fired = history(before, "margin_utilization", "desk1")
    saves = first.metric("riskmon_state_writes_total", result="ok") or 0.0
    wait_for(
        "a periodic save after the alert fired",
        lambda: (first.metric("riskmon_state_writes_total", result="ok") or 0.0) >= saves + 1,
    )
    desk.position(1_500.0)  # accepted after the last save: comes back from the broker
    wait_for(
        "the new position",
        lambda: (
            (r := first.report())
            and [p["quantity"] for p in r["accounts"]["desk1"]["positions"]] == [1_500.0]
        ),
    )
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(timeout=60)

    runs.append(second := Run(cfg, port))
    wait_for("the restore log line", lambda: second.log("state restored"))
    restarted_warm(second, before)
    rep = wait_for(
        "the desk's latest position",
        lambda: (
            (r := second.report())
            and "desk1" in r["accounts"]
            and [p["quantity"] for p in r["accounts"]["desk1"]["positions"]] == [1_500.0]
            and r
        ),
    )
    assert history(rep, "margin_utilization", "desk1") == fired
    wait_for("ready", lambda: second.get("/-/ready")[0] == 200)

    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait()
    down = wait_for(
        "connector_down and stale_data firing",
        lambda: (
            (r := second.report())
            and (a := alert(r, "connector_down", "desk"))
            and a["state"] == "firing"  # pending first: its `for` may outlast stale_data's
            and alert(r, "stale_data", "desk1")
            and r
        ),
    )
    assert alert(down, "connector_down", "desk")["state"] == "firing"  # type: ignore[index]
    assert second.get("/-/ready")[0] == 200
    broker.start()
    wait_for(
        "both resolved",
        lambda: (
            (r := second.report())
            and alert(r, "connector_down", "desk") is None
            and alert(r, "stale_data", "desk1") is None
        ),
    )
    rep = wait_for("a report", second.report)
    moves = {(h["rule"], h["from"], h["state"]) for h in rep["alert_history"]}
    assert ("connector_down", "firing", "resolved") in moves
    assert ("stale_data", "firing", "resolved") in moves
    assert [p["quantity"] for p in rep["accounts"]["desk1"]["positions"]] == [1_500.0]
    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(timeout=60) == 0
