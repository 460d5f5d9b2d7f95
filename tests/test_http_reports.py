"""The report documents the HTTP API serves, on a book the engine evaluated: the encoding
(off the event loop, once per snapshot), the per-account section and the summary, against
a real server on a loopback port it picks."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import msgspec
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from tools import StaticView as View

from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent
from monitor.model.snapshot import PositionTable, RiskSnapshot
from monitor.rules.config import DEFAULT_RULES
from monitor.rules.pack import rule_engine
from monitor.serve import http
from monitor.serve.http import HttpServer, encode_json, encode_report
from monitor.serve.status import render_status

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
SPOT = {"BTC": 97_000.0, "ETH": 3_500.0}


def evaluated_book(options: int = 160) -> RiskSnapshot:
    """Two underlyings with warm estimators, ``options`` option positions over two
    accounts (one with venue margin figures), perpetual hedges, one option never priced
    (its figures are not known), the built-in rules; evaluated once."""
    rng = np.random.default_rng(7)
    eng = Engine(
        EngineSettings(
            sample_interval_ms=1_000,
            halflife_ms=60_000,
            fast_halflife_ms=10_000,
            warmup_ms=10_000,
            max_gap_ms=60_000,
            eval_interval_ms=250,
        ),
        risk=RiskSettings(var_scenarios=200),
        rules=rule_engine(DEFAULT_RULES, {}),
    )
    events: list[Event] = []
    level = dict(SPOT)
    for k in range(120):
        for u in level:
            level[u] *= math.exp(0.002 * rng.standard_normal())
            events.append(PriceEvent(T0 + 1_000 * k, u, level[u]))
    ts = T0 + 120_000
    names = []
    for u, s in level.items():
        for exp in ("27FEB26", "27MAR26", "26JUN26", "25SEP26"):
            for m in np.linspace(0.7, 1.3, options // 16):
                for cp in "CP":
                    name = f"{u}-{exp}-{round(s * m)}-{cp}"
                    names.append(name)
                    events.append(PriceEvent(ts, name, s * 0.05, 0.6 + 0.2 * (m - 1) ** 2, s))
        events.append(PriceEvent(ts, f"{u}-PERPETUAL", s))
    for k, name in enumerate(names):
        account = ("desk", "fund")[k % 2]
        events.append(PositionEvent(ts, account, name, float(rng.integers(1, 20))))
    events.append(PositionEvent(ts, "desk", "BTC-PERPETUAL", -2.0))
    events.append(PositionEvent(ts, "fund", "ETH-PERPETUAL", 40.0))
    events.append(PositionEvent(ts, "fund", "ETH-25DEC26-9000-C", 5.0))  # never priced
    events.append(AccountEvent(ts, "desk", 2e6, 4e5, 2.5e5))
    assert not eng.replay(events, "test")
    snap = eng.evaluate(T0 + 121_000)
    assert snap is not None
    return snap


@pytest.fixture(scope="module")
def book() -> RiskSnapshot:
    return evaluated_book()


@pytest.fixture
async def served(book: RiskSnapshot) -> AsyncIterator[tuple[View, str]]:
    view = View(snapshot=book)
    async with HttpServer(view, CollectorRegistry(), "127.0.0.1:0") as server:
        yield view, server.url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as r:
        assert (r.status, r.content_type) == (200, "application/json"), await r.text()
        return await r.json()


def test_position_rows_are_the_tables_figures_with_null_for_unknown(
    book: RiskSnapshot,
) -> None:
    figures = (
        "quantity",
        "price",
        "iv",
        "value_usd",
        "delta",
        "delta_usd",
        "gamma",
        "gamma_usd",
        "vega",
        "theta",
        "delta_coin",
    )
    table = book.accounts["fund"].positions
    assert isinstance(table, PositionTable)
    rows = table.rows()
    assert len(rows) == len(table.instrument) > 80
    nulls = 0
    for i, row in enumerate(rows):
        assert list(row) == ["instrument", "underlying", *figures]
        assert (row["instrument"], row["underlying"]) == (table.instrument[i], table.underlying[i])
        for name in figures:
            x = float(getattr(table, name)[i])
            assert row[name] == (x if math.isfinite(x) else None)
            nulls += row[name] is None
    unpriced = next(r for r in rows if r["instrument"] == "ETH-25DEC26-9000-C")
    assert (unpriced["price"], unpriced["delta_usd"]) == (None, None)
    assert nulls > len(rows)  # delta_coin is null for every linear-premium option
    # The struct rows carry the same figures.
    assert [msgspec.structs.asdict(r) for r in table.records()] == rows


def test_encode_report_is_the_report_as_json(
    book: RiskSnapshot, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small slices, so the large lists and nested dicts are encoded in many pieces.
    monkeypatch.setattr(http, "_CHUNK", 7)
    expected = msgspec.json.encode(book.report())
    assert encode_report(book) == expected
    assert json.loads(encode_report(book)) == json.loads(json.dumps(book.report()))
    docs: list[Any] = [[], {}, [1.5] * 20, {"a": [{"b": [1, None]}] * 9}, {"x": np.float64(2.5)}]
    for doc in docs:
        assert encode_json(doc) == http._encoder.encode(doc)


async def test_summary_holds_the_snapshots_headline_figures(
    served: tuple[View, str], session: aiohttp.ClientSession, book: RiskSnapshot
) -> None:
    _, url = served
    full = await get_json(session, f"{url}/api/v1/snapshot")
    summary = await get_json(session, f"{url}/api/v1/summary")
    assert (summary["schema"], summary["as_of"]) == (full["schema"], full["as_of"])
    assert sorted(summary["accounts"]) == sorted(full["accounts"]) == ["desk", "fund"]

    def check(mine: dict[str, Any], theirs: dict[str, Any]) -> None:
        for key in ("greeks", "exposure_usd", "volatility_usd", "unpriced_positions"):
            assert mine[key] == theirs[key], key
        var, fvar = mine["var"], theirs["var"]
        for key in ("confidence", "horizon_days"):
            assert var[key] == fvar[key]
        for method in ("delta_normal", "delta_gamma"):
            assert var[method] == {k: fvar[method][k] for k in ("var_usd", "es_usd")}
        fr = fvar["full_revaluation"]
        assert fr["var_usd"] > 0
        assert var["full_revaluation"] == {k: fr[k] for k in ("var_usd", "es_usd", "as_of")}
        assert "positions" not in theirs or mine["positions"] == len(theirs["positions"])

    for name, mine in summary["accounts"].items():
        theirs = full["accounts"][name]
        check(mine, theirs)
        alerts = [a for a in full["alerts"] if a["account"] == name]
        firing = sum(a["state"] == "firing" for a in alerts)
        assert mine["alerts"] == {"firing": firing, "pending": len(alerts) - firing}
    check(summary["total"], full["total"])
    assert summary["total"]["positions"] == sum(
        len(a["positions"]) for a in full["accounts"].values()
    )
    firing = sum(a["state"] == "firing" for a in full["alerts"])
    assert summary["total"]["alerts"] == {
        "firing": firing,
        "pending": len(full["alerts"]) - firing,
    }
    assert sum(sum(a["alerts"].values()) for a in summary["accounts"].values()) > 0

    # Margin: the venue's figures and riskmon's distance to a call, as the report has them.
    margin_keys = ("equity", "maintenance_margin", "utilization", "headroom_usd")
    for name in ("desk", "fund"):
        mine, theirs = summary["accounts"][name]["margin"], full["accounts"][name]["margin"]
        keys = (*margin_keys, "scenario_margin", "scenarios_as_of")
        assert {k: mine[k] for k in keys} == {k: theirs[k] for k in keys}
        dtc = theirs["distance_to_call"]
        picked = None if dtc is None else {k: dtc[k] for k in ("down", "up", "sigmas")}
        assert mine["distance_to_call"] == picked
    desk = summary["accounts"]["desk"]["margin"]
    assert set(desk["distance_to_call"]) == {"down", "up", "sigmas"}
    assert summary["accounts"]["fund"]["margin"]["equity"] is None  # no account event
    assert [desk[k] for k in margin_keys] == [2e6, 2.5e5, 2.5e5 / 2e6, 2e6 - 2.5e5]
    # The report's own sections, as they are.
    for key in ("assets", "correlation", "alerts"):
        assert summary[key] == full[key]
    # No position rows anywhere: the document stays small however large the book.
    assert "[{" not in json.dumps({k: v for k, v in summary.items() if k != "alerts"})
    assert all(isinstance(doc["positions"], int) for doc in summary["accounts"].values())
    # `riskmon status` renders the summary: the same table as from the whole report.
    assert render_status(summary) == render_status(full)


async def test_account_section_is_the_reports(
    served: tuple[View, str], session: aiohttp.ClientSession, book: RiskSnapshot
) -> None:
    _, url = served
    full = await get_json(session, f"{url}/api/v1/snapshot")
    for name in ("desk", "fund"):
        body = await get_json(session, f"{url}/api/v1/accounts/{name}")
        assert body == {"as_of": full["as_of"], **full["accounts"][name]}
    async with session.get(f"{url}/api/v1/accounts/nobody") as r:
        assert r.status == 404
    async with session.get(f"{url}/api/v1/summary") as r:
        assert r.status == 200


async def test_summary_is_503_before_the_first_evaluation(
    session: aiohttp.ClientSession,
) -> None:
    async with HttpServer(View(), CollectorRegistry(), "127.0.0.1:0") as server:
        r = await session.get(f"{server.url}/api/v1/summary")
        assert r.status == 503
        assert await r.json() == {"error": "no snapshot yet"}


class GatedEncoder:
    """Stands in for ``encode_report``: counts calls and holds each on a gate, so a test
    can see what the server does while an encoding is in progress."""

    def __init__(self, encode: Callable[[RiskSnapshot], bytes]) -> None:
        self.encode = encode
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, snapshot: RiskSnapshot) -> bytes:
        self.calls.append(snapshot.seq)
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return self.encode(snapshot)


async def test_encoding_runs_off_the_loop_once_per_snapshot(
    served: tuple[View, str],
    session: aiohttp.ClientSession,
    book: RiskSnapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    view, url = served
    gated = GatedEncoder(encode_report)
    monkeypatch.setattr(http, "encode_report", gated)
    requests = [asyncio.create_task(get_json(session, f"{url}/api/v1/snapshot")) for _ in range(5)]
    assert await asyncio.to_thread(gated.started.wait, 10)
    # The encoding is held: the loop still answers (inline, it could not).
    async with session.get(f"{url}/-/healthy") as r:
        assert await r.text() == "OK"
    assert not any(t.done() for t in requests)
    gated.gate.set()
    bodies = await asyncio.gather(*requests)
    expected = json.loads(json.dumps(book.report()))
    assert all(b == expected for b in bodies)
    assert gated.calls == [book.seq]  # five requests, one encoding

    await get_json(session, f"{url}/api/v1/snapshot")
    assert gated.calls == [book.seq]  # still cached
    view.snapshot = replace(book, seq=book.seq + 1, as_of_ms=book.as_of_ms + 250)
    body = await get_json(session, f"{url}/api/v1/snapshot")
    assert gated.calls == [book.seq, book.seq + 1]
    assert body["as_of"] == "2026-01-01T00:02:01.250Z"


async def test_a_client_that_hangs_up_does_not_cancel_the_shared_encoding(
    served: tuple[View, str],
    session: aiohttp.ClientSession,
    book: RiskSnapshot,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = served
    gated = GatedEncoder(encode_report)
    monkeypatch.setattr(http, "encode_report", gated)
    quitter = asyncio.create_task(get_json(session, f"{url}/api/v1/snapshot"))
    assert await asyncio.to_thread(gated.started.wait, 10)
    stayer = asyncio.create_task(get_json(session, f"{url}/api/v1/snapshot"))
    await asyncio.sleep(0.05)
    quitter.cancel()
    gated.gate.set()
    assert (await stayer)["as_of"] == "2026-01-01T00:02:01.000Z"
    assert gated.calls == [book.seq]
