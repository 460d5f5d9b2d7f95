"""The ``type = "deribit"`` config entry: its keys, defaults and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from connectors.deribit.config import DeribitConnector, read_secret
from monitor.model.settings import ConfigError, dec_hook


def convert(**raw: Any) -> DeribitConnector:
    return msgspec.convert({"type": "deribit", **raw}, DeribitConnector, dec_hook=dec_hook)


def test_defaults() -> None:
    c = convert()
    assert (c.name, c.url, c.currencies) == (
        "deribit",
        "wss://www.deribit.com/ws/api/v2",
        ("BTC", "ETH"),
    )
    assert (c.subscribe, c.ticker_interval, int(c.heartbeat)) == ("held", "100ms", 10_000)
    assert not c.authenticated


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"heartbeat": "5s"}, "heartbeat: must be at least 10s"),
        ({"ticker_interval": "raw"}, 'ticker_interval: "raw" needs credentials'),
        ({"client_id": "abc"}, "client_secret: client_id needs client_secret"),
        ({"client_secret": "zz-SECRET"}, "client_id: a client secret needs its client_id"),
        ({"url": "https://www.deribit.com"}, "url: expected"),
        ({"subscribe": "some"}, "Invalid enum value 'some'"),
        ({"currencies": ["BTC", "BTC"]}, "currencies[1]: duplicate currency"),
    ],
)
def test_checks(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        convert(**raw)
    assert message in str(info.value)
    assert "zz-SECRET" not in str(info.value)


def test_secret_redacted_and_read_from_file(tmp_path: Path) -> None:
    c = convert(client_id="abc", client_secret="zz-SECRET", ticker_interval="raw")
    assert "zz-SECRET" not in repr(c)
    assert read_secret(c) == "zz-SECRET"
    f = tmp_path / "secret"
    f.write_text("from-file-SECRET\n")
    f.chmod(0o600)
    c2 = convert(client_id="abc", client_secret_file=str(f))
    assert read_secret(c2) == "from-file-SECRET"
    f.chmod(0o640)  # readable by the group: already leaked, refused
    with pytest.raises(ConfigError, match="chmod 600") as info:
        read_secret(c2)
    assert "from-file-SECRET" not in str(info.value)
    empty = tmp_path / "empty"
    empty.write_text("")
    empty.chmod(0o600)
    with pytest.raises(ConfigError, match="is empty"):
        read_secret(convert(client_id="abc", client_secret_file=str(empty)))


def test_build() -> None:
    from connectors.base import Connector

    conn = convert(name="deribit-main", client_id="abc", client_secret="zz-SECRET").build()
    assert isinstance(conn, Connector)
    assert (conn.status.name, conn.status.kind, conn.status.connected) == (
        "deribit-main",
        "deribit",
        False,
    )
    assert conn.settings.heartbeat_s == 10.0
    assert conn.authenticated
