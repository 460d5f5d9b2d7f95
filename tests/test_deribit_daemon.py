"""``riskmon run --config deploy/deribit.example.toml`` against the local Deribit server.

The daemon is a real process configured by the shipped example, pointed at the test's
server through the environment (``RISKMON_CONNECTORS__DERIBIT__URL``, ``__CLIENT_ID``,
``__CLIENT_SECRET``), exactly as an operator would. The account's positions appear in
``/api/v1/snapshot`` with riskmon's Greeks (checked against Black-76 written here) beside
the venue's, and the planted secret appears in no log line and no API answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from deribit_server import CLIENT_ID, CLIENT_SECRET, FakeDeribit, instrument
from scipy.stats import norm

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "deribit.example.toml"
OPTION = "BTC-27DEC30-60000-C"
MS_PER_YEAR = 365.0 * 86_400_000.0


async def _listening(stderr: asyncio.StreamReader, lines: list[str]) -> str:
    while True:
        raw = await stderr.readline()
        if not raw:
            raise AssertionError("daemon exited early:\n" + "".join(lines[-20:]))
        line = raw.decode()
        lines.append(line)
        record = json.loads(line)
        if record["msg"] == "riskmon listening":
            return str(record["listen"])


async def _drain(stderr: asyncio.StreamReader, lines: list[str]) -> None:
    while raw := await stderr.readline():
        lines.append(raw.decode())


async def _lag_buckets(http: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The deribit connector's ``riskmon_connector_price_lag_seconds`` buckets by ``le``."""
    async with http.get(url + "/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('riskmon_connector_price_lag_seconds_bucket{connector="deribit"'):
            le = line.split('le="')[1].split('"')[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


async def test_example_config_shows_the_account_with_greeks_beside_the_venue_s() -> None:
    srv = FakeDeribit()
    async with srv.running():
        await srv.change(OPTION, 2.0, notify=False)  # coin
        await srv.change("BTC-PERPETUAL", -50_000.0, notify=False)  # USD size
        env = {
            **os.environ,
            "RISKMON_CONNECTORS__DERIBIT__URL": srv.url,
            "RISKMON_CONNECTORS__DERIBIT__CLIENT_ID": CLIENT_ID,
            "RISKMON_CONNECTORS__DERIBIT__CLIENT_SECRET": CLIENT_SECRET,
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "monitor", "run", "--config", str(EXAMPLE), "--listen", "127.0.0.1:0"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stderr is not None
        lines: list[str] = []
        try:
            url = await asyncio.wait_for(_listening(proc.stderr, lines), 60)
            drain = asyncio.create_task(_drain(proc.stderr, lines))
            fwd, iv = 51_000.0, 0.6
            venue = {"delta": 0.61, "gamma": 0.00002, "vega": 150.0, "theta": -10.0}
            report: dict[str, Any] = {}
            async with aiohttp.ClientSession() as http:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    ts = int(time.time() * 1000)
                    await srv.push_index("btc_usd", 50_000.0, ts)
                    await srv.push_ticker("BTC-PERPETUAL", 50_010.0, ts)
                    await srv.push_ticker(
                        OPTION,
                        0.2,
                        ts,
                        {"mark_iv": 100 * iv, "underlying_price": fwd, "greeks": venue},
                    )
                    async with http.get(url + "/api/v1/snapshot") as resp:
                        body = await resp.text()
                    if resp.status == 200:
                        report = json.loads(body)
                        acct = report["accounts"].get("deribit", {})
                        rows = {p["instrument"]: p for p in acct.get("positions", [])}
                        if (
                            rows.get(OPTION, {}).get("iv") is not None
                            and rows.get("BTC-PERPETUAL", {}).get("price") is not None
                            and "greeks_vs_venue" in acct
                        ):
                            break
                    await asyncio.sleep(0.25)
                async with http.get(url + "/api/v1/alerts") as resp:
                    alerts_body = await resp.text()
                # Price lag, timed where the connector hands ticks over: one stamped 7.5 s
                # behind this host's clock lands between 5 and 10 s.
                before = await _lag_buckets(http, url)
                await srv.push_ticker("BTC-PERPETUAL", 50_020.0, int(time.time() * 1000) - 7_500)
                deadline = time.monotonic() + 30
                after = before
                while time.monotonic() < deadline and after["10.0"] == before["10.0"]:
                    await asyncio.sleep(0.1)
                    after = await _lag_buckets(http, url)
            assert before["+Inf"] > 0  # every live tick above was timed
            assert after["10.0"] - before["10.0"] == 1
            assert after["5.0"] == before["5.0"]
            acct = report["accounts"]["deribit"]
            rows = {p["instrument"]: p for p in acct["positions"]}
            opt, perp = rows[OPTION], rows["BTC-PERPETUAL"]
            assert (opt["quantity"], opt["iv"]) == (2.0, iv)
            # Deribit's USD size, valued as inverse: its USD delta is the notional itself.
            assert perp["quantity"] == -50_000.0
            assert perp["delta_usd"] == pytest.approx(-50_000.0, rel=1e-12)
            # Black-76 delta at the venue's forward and IV, written here (plain, per coin).
            as_of = dt.datetime.fromisoformat(report["as_of"].replace("Z", "+00:00"))
            expiry_ms = instrument(OPTION)["expiration_timestamp"]
            t = (expiry_ms - as_of.timestamp() * 1000.0) / MS_PER_YEAR
            d1 = (math.log(fwd / 60_000.0) + 0.5 * iv * iv * t) / (iv * math.sqrt(t))
            assert opt["delta"] == pytest.approx(2.0 * norm.cdf(d1), rel=1e-6)
            gv = acct["greeks_vs_venue"]
            assert gv["positions"] == 1
            # Ours minus the venue's, in USD at the same scale as the position's delta_usd.
            usd_per_delta = opt["delta_usd"] / opt["delta"]
            expected = (opt["delta"] - 2.0 * venue["delta"]) * usd_per_delta
            assert gv["delta_usd"] == pytest.approx(expected, rel=1e-9)
        finally:
            proc.terminate()
            code = await asyncio.wait_for(proc.wait(), 30)
        await asyncio.wait_for(drain, 10)
    assert code == 0
    logs = "".join(lines)
    assert CLIENT_SECRET not in logs
    assert CLIENT_SECRET not in json.dumps(report)
    assert CLIENT_SECRET not in alerts_body
