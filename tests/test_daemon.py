"""``riskmon run`` as a real process: serves metrics, becomes ready, stops on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families


class Daemon:
    """A ``riskmon run`` subprocess on a port of its own choosing (``--listen :0``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "run", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.logs: list[dict[str, Any]] = []
        self.url = self._wait_for_url()

    def _wait_for_url(self, timeout_s: float = 30.0) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError(f"daemon exited early: {self.proc.wait()}")
            record = json.loads(line)  # stdout is not a TTY: logs are JSON lines
            self.logs.append(record)
            if record["msg"] == "riskmon listening":
                return str(record["listen"])
        raise AssertionError("daemon did not report its address")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def stop(self) -> tuple[int, float]:
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        return code, time.monotonic() - started


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon()
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.wait()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_run_serves_volatility_and_correlation_then_stops_cleanly(daemon: Daemon) -> None:
    # Poll until /metrics and the report come from the same snapshot (the snapshot time is
    # the same before and after the scrape) with all three volatilities known; then every
    # exported figure must equal the report's.
    deadline = time.monotonic() + 60
    vols: dict[str, float] = {}
    corr: dict[tuple[str, str], float] = {}
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = daemon.get("/api/v1/snapshot")
        status_m, text = daemon.get("/metrics")
        status_2, body_2 = daemon.get("/api/v1/snapshot")
        time.sleep(0.2)
        if (status, status_m, status_2) != (200, 200, 200):
            continue
        report, after = json.loads(body), json.loads(body_2)
        samples = _samples(text)
        ts = samples.get(("riskmon_snapshot_timestamp_seconds", frozenset()))
        vols = {
            dict(lbl)["underlying"]: v
            for (name, lbl), v in samples.items()
            if name == "riskmon_asset_volatility" and dict(lbl)["estimator"] == "slow"
        }
        corr = {
            (dict(lbl)["underlying_a"], dict(lbl)["underlying_b"]): v
            for (name, lbl), v in samples.items()
            if name == "riskmon_asset_correlation"
        }
        same = report["as_of"] == after["as_of"] and ts is not None
        if same and len(vols) == 3 and len(corr) == 3:
            break
    assert set(vols) == {"BTC", "ETH", "SOL"}, vols
    names = report["correlation"]["assets"]
    for name in names:
        assert vols[name] == report["assets"][name]["volatility"]
    matrix = report["correlation"]["matrix"]
    for (a, b), c in corr.items():
        assert c == matrix[names.index(a)][names.index(b)]

    assert daemon.get("/-/healthy")[0] == 200
    status, body = daemon.get("/-/ready")
    assert status == 200, body
    assert set(report["assets"]) == {"BTC", "ETH", "SOL"}
    assert report["accounts"], "the demo book has accounts"

    # Stops on SIGTERM with exit code 0 (the wait is generous: no wall-clock bound on a
    # loaded machine; the log's last line says it stopped cleanly).
    code, _ = daemon.stop()
    assert code == 0
    assert daemon.proc.stderr is not None
    tail = [json.loads(line) for line in daemon.proc.stderr.read().splitlines() if line]
    assert tail[-1]["msg"] == "stopped"


def test_sigint_also_stops_with_exit_zero(daemon: Daemon) -> None:
    daemon.proc.send_signal(signal.SIGINT)
    assert daemon.proc.wait(timeout=10) == 0


def test_config_typo_exits_2_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[estimator]\nhalflif = "1h"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "estimator.halflif" in proc.stderr
    assert '"halflife"' in proc.stderr


def test_check_config_validates_the_example(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "deploy" / "riskmon.example.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", str(example)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_port_in_use_is_a_clear_failure(daemon: Daemon) -> None:
    listen = daemon.url.removeprefix("http://")
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--listen", listen],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot run" in proc.stderr


def test_sd_notify_sends_ready(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(30)
        d = Daemon(env={"NOTIFY_SOCKET": path})
        try:
            assert sock.recv(64) == b"READY=1"
            code, _ = d.stop()
            assert code == 0
            assert sock.recv(64) == b"STOPPING=1"
        finally:
            if d.proc.poll() is None:
                d.proc.kill()
