"""Access control and secrets: the bearer token on /api (and /metrics), and a planted secret
that no output of riskmon may contain (logs, check-config, /api, /metrics, errors)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from test_daemon import Daemon
from test_http import make_snapshot
from tools import StaticView as View

from monitor.config import load_config
from monitor.model.settings import ConfigError
from monitor.serve.http import HttpServer
from monitor.serve.metrics import build_registry
from monitor.serve.status import StatusError, fetch_report

TOKEN = "tok-PLANTED-7d1e0c"


@pytest.fixture
async def guarded() -> AsyncIterator[str]:
    view = View(snapshot=make_snapshot())
    registry, _ = build_registry(view)
    async with HttpServer(view, registry, "127.0.0.1:0", token=TOKEN) as server:
        yield server.url


async def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        return r.status, await r.text(), r.headers.get("WWW-Authenticate", "")


async def test_api_wants_the_bearer_token(guarded: str) -> None:
    for path in ("/api/v1/snapshot", "/api/v1/alerts", "/api/v1/nope"):
        for headers in (
            None,
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": TOKEN},
        ):
            status, body, challenge = await _get(guarded + path, headers)
            assert (status, json.loads(body)) == (401, {"error": "unauthorized"}), headers
            assert challenge == 'Bearer realm="riskmon"'
            assert TOKEN not in body
    status, body, _ = await _get(guarded + "/api/v1/snapshot", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert json.loads(body)["accounts"]["alpha"]["exposure_usd"]["BTC"] == 1_000_000.0


async def test_probes_and_metrics_stay_open_unless_metrics_are_protected(guarded: str) -> None:
    assert (await _get(guarded + "/-/healthy"))[0] == 200
    assert (await _get(guarded + "/metrics"))[0] == 200
    view = View(snapshot=make_snapshot())
    registry, _ = build_registry(view)
    async with HttpServer(
        view, registry, "127.0.0.1:0", token=TOKEN, protect_metrics=True
    ) as server:
        assert (await _get(server.url + "/metrics"))[0] == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status, body, _ = await _get(server.url + "/metrics", auth)
        assert status == 200
        assert "riskmon_" in body
        assert (await _get(server.url + "/-/ready"))[0] in (200, 503)  # open, whatever it says


async def test_status_client_sends_the_token(guarded: str) -> None:
    url = guarded + "/api/v1/snapshot"
    with pytest.raises(StatusError, match="HTTP 401"):
        await asyncio.to_thread(fetch_report, url, 5.0)
    report = await asyncio.to_thread(fetch_report, url, 5.0, TOKEN)
    assert report["accounts"]["alpha"]["greeks"]["delta_usd"] == 750_000.0


def test_a_token_file_others_can_read_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o644)
    cfg = tmp_path / "riskmon.toml"
    cfg.write_text(f'[server]\ntoken_file = "{token}"\n')
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "run", "--config", str(cfg), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "server.token_file" in result.stderr
    assert "chmod 600" in result.stderr
    assert TOKEN not in result.stderr + result.stdout


def test_protect_metrics_without_a_token_is_a_config_error(tmp_path: Path) -> None:
    cfg = tmp_path / "riskmon.toml"
    cfg.write_text("[server]\nprotect_metrics = true\n")
    with pytest.raises(ConfigError, match=r"server\.protect_metrics: needs token_file"):
        load_config(cfg, env={})


def test_a_planted_secret_reaches_no_output(tmp_path: Path) -> None:
    """Secrets from the environment, the config file and a token file; every output grepped."""
    secret = "pw-PLANTED-51a9"
    token = tmp_path / "api.token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    cfg = tmp_path / "riskmon.toml"
    cfg.write_text(
        f'[server]\ntoken_file = "{token}"\n'
        '[alerts]\noutbox = "' + str(tmp_path / "outbox") + '"\n'
        f'[alerts.webhook]\nurl = "http://127.0.0.1:9/hook"\ntoken = "{secret}"\n'
        '[[connectors]]\ntype = "simulated"\n'
        '[[connectors]]\ntype = "mqtt"\nname = "desk"\nport = 9\nusername = "u"\n'
        'max_backoff = "1s"\n'
    )
    env = {"RISKMON_CONNECTORS__DESK__PASSWORD": secret}
    outputs: list[str] = []
    check = subprocess.run(
        [sys.executable, "-m", "monitor", "check-config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )
    outputs += [check.stdout, check.stderr]
    assert check.returncode == 0, check.stderr
    daemon = Daemon("--config", str(cfg), env=env)
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the MQTT connector has failed a few times
            _, body = daemon.get("/metrics")
            outputs.append(body)
            if 'riskmon_connector_reconnects_total{connector="desk"} 2.0' in body:
                break
            time.sleep(0.5)
        for path in ("/api/v1/snapshot", "/api/v1/alerts", "/-/ready"):
            req = urllib.request.Request(daemon.url + path, headers=auth)
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    outputs.append(resp.read().decode())
            except urllib.error.HTTPError as exc:
                outputs.append(exc.read().decode())
    finally:
        code, _ = daemon.stop()
    assert daemon.proc.stderr is not None
    outputs.append(daemon.proc.stderr.read())
    outputs.append(json.dumps(daemon.logs))
    assert code == 0
    everything = "\n".join(outputs)
    assert "riskmon_connector_reconnects_total" in everything  # the daemon did run
    assert secret not in everything
    assert TOKEN not in everything
