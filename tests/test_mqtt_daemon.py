"""``riskmon run`` with the desk's MQTT feed: a real daemon process on a real Mosquitto.

Prices and positions published by a desk reach ``/api/v1/snapshot``; malformed payloads are
counted by reason on ``/metrics``; a broker killed and restarted mid-stream is rejoined by
the daemon on its own, and ``riskmon_connector_up`` says so while it lasts.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from test_daemon import Daemon, _samples
from tools import Mosquitto, required_tool

T0 = int(time.time() * 1000)


def publish(port: int, topic: str, payload: Any) -> None:
    """``mosquitto_pub`` at QoS 1, as the README tells a desk to wire its order system."""
    body = payload if isinstance(payload, str) else json.dumps(payload)
    argv = [required_tool("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port), "-q", "1"]
    subprocess.run(
        [*argv, "-t", topic, "-m", body],
        check=True,
        timeout=30,
    )


def wait_for(what: str, check: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    status, text = daemon.get("/metrics")
    assert status == 200
    return _samples(text).get((name, frozenset(labels.items())))


def config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "mqtt.toml"
    path.write_text(
        "[[connectors]]\n"
        'type = "mqtt"\n'
        'name = "desk"\n'
        f"port = {port}\n"
        'topic_prefix = "riskmon"\n'
        'client_id = "riskmon-daemon-test"\n'
        'max_backoff = "1s"\n'
    )
    return path


def test_desk_feed_reaches_the_snapshot_and_survives_a_broker_restart(
    tmp_path: Path, broker: Mosquitto
) -> None:
    daemon = Daemon("--config", str(config(tmp_path, broker.port)))
    try:
        wait_for(
            "connector up",
            lambda: metric(daemon, "riskmon_connector_up", connector="desk", kind="mqtt") == 1.0,
        )
        publish(
            broker.port,
            "riskmon/prices/BTC",
            {"type": "price", "ts": T0, "instrument": "BTC", "price": 90_000.0},
        )
        publish(
            broker.port,
            "riskmon/prices/BTC-PERPETUAL",
            [{"type": "price", "ts": T0, "instrument": "BTC-PERPETUAL", "price": 90_050.0}],
        )
        publish(
            broker.port,
            "riskmon/positions/main/BTC-PERPETUAL",
            {
                "type": "position",
                "ts": T0,
                "account": "main",
                "instrument": "BTC-PERPETUAL",
                "quantity": 2.0,
            },
        )
        publish(broker.port, "riskmon/prices/BTC", "{not json")
        publish(
            broker.port,
            "riskmon/prices/BTC",
            {"type": "position", "ts": T0, "account": "main", "instrument": "BTC", "quantity": 1},
        )

        def btc_position() -> dict[str, Any] | None:
            status, body = daemon.get("/api/v1/snapshot")
            if status != 200:
                return None
            acct = json.loads(body)["accounts"].get("main")
            return (
                None
                if acct is None
                else {p["instrument"]: p for p in acct["positions"]}.get("BTC-PERPETUAL")
            )

        pos = wait_for("the priced position", lambda: (p := btc_position()) and p["price"] and p)
        assert (pos["quantity"], pos["price"]) == (2.0, 90_050.0)
        # A perpetual's USD delta is quantity x the underlying's index price.
        assert pos["delta_usd"] == pytest.approx(2.0 * 90_000.0, rel=1e-12)
        # The refused prices come over the prices' own connection: no order against the
        # position, so wait for their counts too.
        for reason in ("malformed_json", "unknown_type"):
            wait_for(
                f"one {reason} refusal",
                lambda reason=reason: (
                    metric(daemon, "riskmon_rejected_events_total", source="desk", reason=reason)
                    == 1.0
                ),
            )

        assert broker.proc is not None
        broker.proc.kill()  # SIGKILL mid-stream: no goodbye
        broker.proc.wait()
        wait_for(
            "connector down",
            lambda: metric(daemon, "riskmon_connector_up", connector="desk", kind="mqtt") == 0.0,
        )
        broker.start()
        wait_for(
            "connector up again",
            lambda: metric(daemon, "riskmon_connector_up", connector="desk", kind="mqtt") == 1.0,
        )
        publish(
            broker.port,
            "riskmon/positions/main/BTC-PERPETUAL",
            {
                "type": "position",
                "ts": T0 + 1000,
                "account": "main",
                "instrument": "BTC-PERPETUAL",
                "quantity": -3.0,
            },
        )
        wait_for("the new quantity", lambda: (btc_position() or {}).get("quantity") == -3.0)
        reconnects = metric(daemon, "riskmon_connector_reconnects_total", connector="desk")
        assert reconnects is not None
        assert reconnects >= 1.0
    finally:
        code, _ = daemon.stop()
    assert code == 0


def test_price_lag_and_late_ticks_are_on_metrics(tmp_path: Path, broker: Mosquitto) -> None:
    """``riskmon_connector_price_lag_seconds`` and ``riskmon_connector_late_prices_total``
    from the daemon's own ``/metrics``: a tick stamped 1.25 s before now (bucket 1 to 2.5 s)
    and one 20 s before (10 to 30 s, and later than max_price_age, 2 s by default). The
    second arrives 18.75 s later (against its ts) than the first tick of that instrument:
    the prices' connection catches up once."""
    daemon = Daemon("--config", str(config(tmp_path, broker.port)))
    try:
        wait_for(
            "connector up",
            lambda: metric(daemon, "riskmon_connector_up", connector="desk", kind="mqtt") == 1.0,
        )
        sent_s = time.time()
        for offset_s in (1.25, 20.0):
            ts = int((sent_s - offset_s) * 1000)
            publish(
                broker.port,
                "riskmon/prices/BTC",
                {"type": "price", "ts": ts, "instrument": "BTC", "price": 1_000.0},
            )
        lag = "riskmon_connector_price_lag_seconds"
        wait_for("two lags", lambda: metric(daemon, f"{lag}_count", connector="desk") == 2.0)
        got_s = time.time()
        assert metric(daemon, "riskmon_connector_late_prices_total", connector="desk") == 1.0
        buckets = {
            le: metric(daemon, f"{lag}_bucket", connector="desk", le=le)
            for le in ("0.0", "1.0", "2.5", "10.0", "30.0", "+Inf")
        }
        assert buckets == {"0.0": 0, "1.0": 0, "2.5": 1, "10.0": 1, "30.0": 2, "+Inf": 2}
        total = metric(daemon, f"{lag}_sum", connector="desk")
        assert total is not None
        assert 21.25 <= total <= 21.25 + 2 * (got_s - sent_s) + 0.002  # ts in whole ms
        catch_ups = "riskmon_connector_price_catch_ups_total"
        wait_for("the catch-up", lambda: metric(daemon, catch_ups, connector="desk") == 1.0)
    finally:
        code, _ = daemon.stop()
    assert code == 0
