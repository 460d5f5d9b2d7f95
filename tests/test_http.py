"""monitor.serve.http and .status against the real server on a loopback port it picks."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tools import StaticView as View

from monitor.model.alert import Alert, Transition
from monitor.model.health import ConnectorStatus
from monitor.model.snapshot import AccountFigures, AssetFigures, RiskSnapshot
from monitor.serve.http import HttpServer, parse_listen
from monitor.serve.metrics import build_registry
from monitor.serve.status import StatusError, fetch_report, render_status

AS_OF_MS = 1_767_225_600_250  # 2026-01-01T00:00:00.250Z


def make_snapshot(as_of_ms: int = AS_OF_MS, seq: int = 1) -> RiskSnapshot:
    a = AssetFigures(
        names=("BTC", "ETH"),
        price=np.array([97250.5, 3500.0]),
        price_ts_ms=np.array([as_of_ms - 100, as_of_ms - 200], dtype=np.int64),
        volatility=np.array([0.55, 0.7]),
        volatility_fast=np.array([0.6, math.nan]),
        returns=np.array([1440, 12], dtype=np.int64),
        warm=np.array([True, False]),
        correlation=np.array([[1.0, 0.8], [0.8, 1.0]]),
    )
    alpha = AccountFigures(
        positions=None,
        greeks={"delta_usd": 750_000.0, "gamma_usd": 1234.5, "vega": -456.25, "theta": 89.0},
        exposure_usd={"BTC": 1_000_000.0, "ETH": -250_000.0},
    )
    return RiskSnapshot(
        as_of_ms=as_of_ms,
        seq=seq,
        assets=a,
        accounts={"alpha": alpha},
        total=alpha,
        alerts=(
            Alert(
                rule="vol_break",
                severity="warning",
                state="firing",
                account=None,
                underlying="BTC",
                value=1.9,
                threshold=1.5,
                since_ms=as_of_ms - 60_000,
                active_since_ms=as_of_ms - 90_000,
                summary="BTC fast vol 1.9x slow",
            ),
        ),
    )


def reference_json(snapshot: RiskSnapshot) -> object:
    """The report as any JSON client sees it, via the stdlib (NaN must already be null)."""
    return json.loads(json.dumps(snapshot.report(), allow_nan=False))


@pytest.fixture
async def view_server() -> AsyncIterator[tuple[View, HttpServer]]:
    view = View(connectors=[ConnectorStatus("deribit-main", "deribit")])
    view.stats.evaluations = 7
    registry, _ = build_registry(view)
    async with HttpServer(view, registry, "127.0.0.1:0") as server:
        yield view, server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def test_binds_a_free_loopback_port(view_server: tuple[View, HttpServer]) -> None:
    _, server = view_server
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"


async def test_healthy(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    _, server = view_server
    async with session.get(f"{server.url}/-/healthy") as r:
        assert (r.status, r.content_type, await r.text()) == (200, "text/plain", "OK")


async def test_metrics_is_prometheus_text(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    view, server = view_server
    view.snapshot = make_snapshot()
    async with session.get(f"{server.url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = await r.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples["riskmon_evaluations_total", ()] == 7
    assert samples["riskmon_asset_price_usd", (("underlying", "BTC"),)] == 97250.5
    key = ("riskmon_account_exposure_usd", (("account", "alpha"), ("underlying", "ETH")))
    assert samples[key] == -250_000.0
    assert "riskmon_evaluation_duration_seconds_count" in {name for name, _ in samples}


async def test_metrics_negotiates_openmetrics(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    _, server = view_server
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    async with session.get(f"{server.url}/metrics", headers={"Accept": accept}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        text = await r.text()
    assert "riskmon_evaluations_total 7.0\n" in text
    assert text.endswith("# EOF\n")


async def test_snapshot_is_503_before_the_first_evaluation(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    _, server = view_server
    async with session.get(f"{server.url}/api/v1/snapshot") as r:
        assert (r.status, r.content_type) == (503, "application/json")
        assert await r.json() == {"error": "no snapshot yet"}


async def test_snapshot_serves_the_latest_report(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    view, server = view_server
    first = make_snapshot()
    view.snapshot = first
    async with session.get(f"{server.url}/api/v1/snapshot") as r:
        assert (r.status, r.content_type) == (200, "application/json")
        body = await r.json()
    assert body == reference_json(first)
    # ... and it holds the snapshot's figures under their documented names (written here,
    # not taken from the serializer):
    assert body["schema"] == 1
    assert body["as_of"] == "2026-01-01T00:00:00.250Z"
    assert body["assets"]["BTC"] == {
        "price": 97250.5,
        "volatility": 0.55,
        "volatility_fast": 0.6,
        "returns": 1440,
        "warm": True,
        "stale": False,
    }
    assert body["assets"]["ETH"]["volatility_fast"] is None  # NaN is null, never NaN
    assert body["correlation"]["assets"] == ["BTC", "ETH"]
    assert body["correlation"]["matrix"] == [[1.0, 0.8], [0.8, 1.0]]
    alpha = body["accounts"]["alpha"]
    assert alpha["exposure_usd"] == {"BTC": 1_000_000.0, "ETH": -250_000.0}
    assert alpha["greeks"] == {
        "delta_usd": 750_000.0,
        "gamma_usd": 1234.5,
        "vega": -456.25,
        "theta": 89.0,
    }
    [alert] = body["alerts"]
    assert (alert["rule"], alert["underlying"], alert["value"]) == ("vol_break", "BTC", 1.9)
    assert alert["since"] == "2025-12-31T23:59:00.250Z"

    # A new snapshot is served at once (the encoded report is cached per snapshot only).
    second = make_snapshot(as_of_ms=AS_OF_MS + 1000, seq=2)
    view.snapshot = second
    async with session.get(f"{server.url}/api/v1/snapshot") as r:
        body = await r.json()
    assert body == reference_json(second)
    assert body["as_of"] == "2026-01-01T00:00:01.250Z"
    assert body["assets"]["BTC"]["price"] == 97250.5


async def test_ready_waits_for_a_snapshot_and_every_connector(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    view, server = view_server
    url = f"{server.url}/-/ready"
    async with session.get(url) as r:
        assert (r.status, r.content_type) == (503, "application/json")
        body = await r.json()
    assert body["ready"] is False
    assert body["snapshot"] is False
    assert body["waiting_for"] == ["deribit-main"]
    assert body["missing"] == [
        "no risk snapshot yet",
        "connector 'deribit-main' has not delivered an event",
    ]

    view.snapshot = make_snapshot()
    async with session.get(url) as r:
        assert r.status == 503
        assert (await r.json())["waiting_for"] == ["deribit-main"]

    view.connectors[0].delivered = True
    async with session.get(url) as r:
        assert r.status == 200
        assert await r.json() == {
            "ready": True,
            "snapshot": True,
            "waiting_for": [],
            "missing": [],
        }


async def test_stop_closes_the_port(session: aiohttp.ClientSession) -> None:
    registry, _ = build_registry(View(), process_metrics=False)
    server = HttpServer(View(), registry, "127.0.0.1:0")
    await server.start()
    url = f"{server.url}/-/healthy"
    async with session.get(url) as r:
        assert r.status == 200
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(url):
            pass


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:9321") == ("127.0.0.1", 9321)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    for bad in ("9321", ":9321", "localhost", "host:port", "host:70000"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_listen(bad)


# riskmon status: fetch_report (blocking, run in a thread) and render_status.


async def test_fetch_report_from_the_daemon(view_server: tuple[View, HttpServer]) -> None:
    view, server = view_server
    with pytest.raises(StatusError, match=r"up but has no report yet \(no snapshot yet\)"):
        await asyncio.to_thread(fetch_report, server.url, 5.0)

    view.snapshot = make_snapshot()
    report = await asyncio.to_thread(fetch_report, server.url, 5.0)
    assert report == reference_json(view.snapshot)
    full = await asyncio.to_thread(fetch_report, f"{server.url}/api/v1/snapshot", 5.0)
    assert full == report


def test_fetch_report_names_an_unreachable_daemon() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(StatusError, match=r"not reachable at .*: connection refused"):
        fetch_report(url, 2.0)
    with pytest.raises(StatusError, match="not an http:// URL"):
        fetch_report(f"127.0.0.1:{port}", 2.0)
    with pytest.raises(OSError, match="not reachable"):  # what `riskmon status` catches
        fetch_report(url, 2.0)


def test_render_status_shows_the_figures() -> None:
    report = reference_json(make_snapshot())
    assert isinstance(report, dict)

    text = render_status(report)
    lines = text.splitlines()

    assert lines[0] == "riskmon report as of 2026-01-01T00:00:00.250Z (schema 1)"
    sections = {
        block.splitlines()[0]: [ln.split() for ln in block.splitlines()[1:]]
        for block in text.split("\n\n")
    }
    assert sections["Assets"] == [
        ["underlying", "price", "vol", "slow", "vol", "fast", "returns", "warm"],
        ["BTC", "97,250.50", "55.0%", "60.0%", "1440", "yes"],
        ["ETH", "3,500.00", "70.0%", "-", "12", "no"],  # unknown fast vol shows as -
    ]
    assert sections["Correlation (slow estimator)"] == [
        ["BTC", "ETH"],
        ["BTC", "1.00", "0.80"],
        ["ETH", "0.80", "1.00"],
    ]
    expected = ["1,000,000.00", "-250,000.00", "750,000.00", "1,234.50", "-456.25", "89.00"]
    assert sections["Accounts (USD): exposure per underlying, greeks"] == [
        ["account", "BTC", "ETH", "delta_usd", "gamma_usd", "vega", "theta"],
        ["alpha", *expected],
        ["book", "(total)", *expected],
    ]
    assert sections["Alerts: 1"] == [
        [
            "WARNING",
            "firing",
            "vol_break",
            "BTC",
            "since",
            "2025-12-31T23:59:00.250Z:",
            "BTC",
            "fast",
            "vol",
            "1.9x",
            "slow",
        ]
    ]


async def test_alerts_endpoint_and_gauges(
    view_server: tuple[View, HttpServer], session: aiohttp.ClientSession
) -> None:
    view, server = view_server
    async with session.get(f"{server.url}/api/v1/alerts") as r:
        assert r.status == 503
    snap = make_snapshot()
    firing = snap.alerts[0]
    pending = Alert(
        rule="margin_utilization",
        severity="warning",
        state="pending",
        account="alpha",
        underlying=None,
        value=0.65,
        threshold=0.6,
        since_ms=AS_OF_MS,
        active_since_ms=AS_OF_MS,
        summary="alpha: margin utilisation 65%",
    )
    history = (Transition(firing, "pending", firing.since_ms),)
    view.snapshot = replace(snap, alerts=(firing, pending), alert_history=history)
    async with session.get(f"{server.url}/api/v1/alerts") as r:
        assert r.status == 200
        body = await r.json()
    assert [a["rule"] for a in body["alerts"]] == ["vol_break", "margin_utilization"]
    assert body["alerts"][1]["account"] == "alpha"
    assert body["alert_history"] == [
        {
            "ts": "2025-12-31T23:59:00.250Z",
            "from": "pending",
            "key": history[0].idempotency_key,
            **firing.report(),
        }
    ]
    async with session.get(f"{server.url}/metrics") as r:
        text = await r.text()
    assert 'riskmon_alerts_firing{rule="vol_break",severity="warning"} 1.0' in text
    assert 'riskmon_alerts_pending{rule="margin_utilization"} 1.0' in text
