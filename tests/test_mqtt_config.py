"""The ``type = "mqtt"`` config entry: the keys that bound price staleness, and the example."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.mqtt.config import MqttConnector
from monitor.config import load_config
from monitor.model.settings import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "mqtt.example.toml"


def load(tmp_path: Path, body: str, env: dict[str, str] | None = None) -> MqttConnector:
    path = tmp_path / "mqtt.toml"
    path.write_text(f'[[connectors]]\ntype = "mqtt"\nname = "desk"\n{body}\n')
    (conn,) = load_config(path, env=env or {}).connectors
    assert isinstance(conn, MqttConnector)
    return conn


def test_defaults_and_the_example() -> None:
    c = MqttConnector()
    assert (c.price_rcvbuf, int(c.max_price_age), c.price_catch_up) == (65_536, 2_000, True)
    (ex,) = load_config(EXAMPLE, env={}).connectors
    assert isinstance(ex, MqttConnector)
    assert (ex.price_rcvbuf, int(ex.max_price_age), ex.price_catch_up) == (65_536, 2_000, True)


@pytest.mark.parametrize(
    ("body", "rcvbuf", "age_ms"),
    [
        ("price_rcvbuf = 0", 0, 2_000),  # the kernel's autotuning, as before
        ("price_rcvbuf = 4096", 4_096, 2_000),
        ("price_rcvbuf = 16777216", 16 << 20, 2_000),
        ('max_price_age = "0s"', 65_536, 0),  # never counted
        ('max_price_age = "1m30s"', 65_536, 90_000),
    ],
)
def test_accepted_values(tmp_path: Path, body: str, rcvbuf: int, age_ms: int) -> None:
    c = load(tmp_path, body)
    assert (c.price_rcvbuf, int(c.max_price_age)) == (rcvbuf, age_ms)


def test_the_environment_sets_them(tmp_path: Path) -> None:
    env = {
        "RISKMON_CONNECTORS__DESK__PRICE_RCVBUF": "131072",
        "RISKMON_CONNECTORS__DESK__MAX_PRICE_AGE": "2s",
        "RISKMON_CONNECTORS__DESK__PRICE_CATCH_UP": "false",
    }
    c = load(tmp_path, "", env)
    assert (c.price_rcvbuf, int(c.max_price_age), c.price_catch_up) == (131_072, 2_000, False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "price_rcvbuf = 4095",
            "connectors[0].price_rcvbuf: expected 0 (the kernel's autotuning) or 4,096 to "
            "16,777,216 bytes; got 4,095",
        ),
        (
            "price_rcvbuf = 16777217",
            "connectors[0].price_rcvbuf: expected 0 (the kernel's autotuning) or 4,096 to "
            "16,777,216 bytes; got 16,777,217",
        ),
        ("price_rcvbuf = -1", "connectors[0].price_rcvbuf: expected an integer >= 0; got -1"),
        ('price_rcvbuf = "64KiB"', 'connectors[0].price_rcvbuf: expected an integer; got "64KiB"'),
        (
            "max_price_age = 5",
            "connectors[0].max_price_age: expected a duration such as",
        ),
        ('max_price_age = "-1s"', "connectors[0].max_price_age: expected a duration such as"),
    ],
)
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, body)
    assert message in str(info.value)
