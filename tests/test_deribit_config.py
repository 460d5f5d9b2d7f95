"""The ``type = "deribit"`` config entry: its keys, defaults and checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from connectors.deribit.config import DeribitConnector, read_secret
from monitor.config import _dec_hook


def convert(**raw: Any) -> DeribitConnector:
    return msgspec.convert({"type": "deribit", **raw}, DeribitConnector, dec_hook=_dec_hook)


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
    c2 = convert(client_id="abc", client_secret_file=str(f))
    assert read_secret(c2) == "from-file-SECRET"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_secret(convert(client_id="abc", client_secret_file=str(tmp_path / "empty")))


def test_build_deribit() -> None:
    from connectors.base import Connector
    from connectors.deribit import build_deribit

    conn = build_deribit(convert(name="deribit-main", client_id="abc", client_secret="zz-SECRET"))
    assert isinstance(conn, Connector)
    assert (conn.status.name, conn.status.kind, conn.status.connected) == (
        "deribit-main",
        "deribit",
        False,
    )
    assert conn.settings.heartbeat_s == 10.0
    assert conn.authenticated
