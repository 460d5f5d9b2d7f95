"""The ``type = "binance_futures"`` config entry: its keys, defaults, checks and secrets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from connectors.binance.client import BinanceFutures
from connectors.binance.config import BinanceFuturesConnector, read_api_secret
from monitor.config import load_config, redacted
from monitor.model.settings import ConfigError, dec_hook

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "binance.example.toml"


def convert(**raw: Any) -> BinanceFuturesConnector:
    return msgspec.convert(
        {"type": "binance_futures", **raw}, BinanceFuturesConnector, dec_hook=dec_hook
    )


def test_defaults_are_the_issues_keys() -> None:
    c = convert()
    assert (c.name, c.rest_url, c.ws_url, c.symbols) == (
        "binance",
        "https://fapi.binance.com",
        "wss://fstream.binance.com",
        ("BTCUSDT", "ETHUSDT"),
    )
    assert (c.api_key, c.api_secret, c.api_secret_file) == ("", "", "")
    assert not c.authenticated
    assert {f.name for f in msgspec.structs.fields(c)} == {
        "name",
        "rest_url",
        "ws_url",
        "symbols",
        "api_key",
        "api_secret",
        "api_secret_file",
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"api_key": "zz-KEY"}, "api_secret: api_key needs api_secret"),
        ({"api_secret": "zz-SECRET"}, "api_key: an API secret needs its api_key"),
        (
            {"api_key": "zz-KEY", "api_secret": "zz-SECRET", "api_secret_file": "/x"},
            "api_secret_file: set api_secret or api_secret_file, not both",
        ),
        ({"rest_url": "fapi.binance.com"}, 'rest_url: expected an "https://"'),
        ({"ws_url": "https://fstream.binance.com"}, 'ws_url: expected a "wss://"'),
        ({"symbols": ["BTCUSDT", "BTCUSDT"]}, "symbols[1]: duplicate symbol"),
        ({"symbols": ["BTCBUSD"]}, "symbols[0]: 'BTCBUSD' is not a USD-M contract"),
        ({"symbols": ["btcusdt"]}, "Expected `str` matching regex"),
        ({"symbols": []}, "Expected `array` of length >= 1"),
    ],
)
def test_checks(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        convert(**raw)
    assert message in str(info.value)
    assert "zz-SECRET" not in str(info.value)
    assert "zz-KEY" not in str(info.value)


def test_secrets_from_the_environment_are_redacted() -> None:
    cfg = load_config(
        EXAMPLE,
        env={
            "RISKMON_CONNECTORS__BINANCE__API_KEY": "env-KEY-123",
            "RISKMON_CONNECTORS__BINANCE__API_SECRET": "env-SECRET-456",
        },
    )
    (conn,) = cfg.connectors
    assert isinstance(conn, BinanceFuturesConnector)
    assert (conn.api_key, conn.api_secret, conn.authenticated) == (
        "env-KEY-123",
        "env-SECRET-456",
        True,
    )
    shown = repr(conn) + json.dumps(redacted(cfg))
    assert "env-KEY-123" not in shown
    assert "env-SECRET-456" not in shown
    assert '"api_key": "***"' in json.dumps(redacted(cfg))


def test_secret_file(tmp_path: Path) -> None:
    f = tmp_path / "secret"
    f.write_text("from-file-SECRET\n")
    f.chmod(0o600)
    c = convert(api_key="k", api_secret_file=str(f))
    assert read_api_secret(c) == "from-file-SECRET"
    f.chmod(0o640)  # readable by the group: already leaked, refused
    with pytest.raises(ConfigError, match="chmod 600") as info:
        c.build()
    assert "from-file-SECRET" not in str(info.value)


def test_build() -> None:
    from connectors.base import Connector

    conn = convert(name="binance-main", api_key="zz-KEY", api_secret="zz-SECRET").build()
    assert isinstance(conn, Connector)
    assert isinstance(conn, BinanceFutures)
    assert (conn.status.name, conn.status.kind, conn.status.connected) == (
        "binance-main",
        "binance_futures",
        False,
    )
    assert conn.authenticated
    assert conn.settings.keepalive_s == 1_800.0  # Binance: PUT every 30 minutes
    assert conn.settings.max_session_s < 24 * 3_600.0  # before Binance's 24-hour cut
    assert "zz-KEY" not in repr(conn.settings)
    public = convert().build()
    assert not public.authenticated
