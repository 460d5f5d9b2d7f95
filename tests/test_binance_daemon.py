"""The daemon runs Binance from its config entry against the local Binance-protocol server.

The whole path: a ``[[connectors]] type = "binance_futures"`` file and the API key and
secret from ``RISKMON_CONNECTORS__BINANCE__*`` -> ``load_config`` -> the connector it
builds -> the engine -> the report. Positions and equity in the report equal the server's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from binance_server import API_KEY, API_SECRET, FakeBinance
from tools import wait_until

from monitor.config import load_config
from monitor.daemon import Daemon


async def test_daemon_reports_binance_positions_and_equity(tmp_path: Path) -> None:
    server = FakeBinance()
    async with server.running():
        await server.change("BTCUSDT", 0.25, notify=False)
        await server.change("ETHUSDT", -3.0, notify=False)
        cfg_path = tmp_path / "riskmon.toml"
        cfg_path.write_text(
            '[server]\nlisten = "127.0.0.1:0"\n\n'
            '[[connectors]]\ntype = "binance_futures"\n'
            f'rest_url = "{server.rest_url}"\nws_url = "{server.ws_url}"\n'
            'symbols = ["BTCUSDT"]\n'
        )
        cfg = load_config(
            cfg_path,
            env={
                "RISKMON_CONNECTORS__BINANCE__API_KEY": API_KEY,
                "RISKMON_CONNECTORS__BINANCE__API_SECRET": API_SECRET,
            },
        )
        daemon = Daemon(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop), name="test.daemon")

        def account() -> dict[str, Any] | None:
            snap = daemon.snapshot
            if snap is None:
                return None
            acct: dict[str, Any] | None = snap.report()["accounts"].get("binance")
            return acct

        def settled() -> bool:
            acct = account()
            if acct is None or acct["margin"] is None:
                return False
            held = {p["instrument"]: p["quantity"] for p in acct["positions"] if p["quantity"]}
            return held == {"BTC_USDT-PERPETUAL": 0.25, "ETH_USDT-PERPETUAL": -3.0} and (
                acct["margin"]["equity"] == server.equity
            )

        try:
            await wait_until(settled, "report equals the server's truth")
            (status,) = daemon.connectors
            assert (status.name, status.kind, status.connected) == (
                "binance",
                "binance_futures",
                True,
            )
            acct = account()
            assert acct is not None
            assert acct["margin"]["maintenance_margin"] == server.maint_margin
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
