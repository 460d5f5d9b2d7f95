"""The Binance connector against a local Binance-protocol server (tests/binance_server.py).

After every fault (a 24-hour cut, a burst cut mid-way, an expired or vanished listenKey, a
clock skewed by 5 s, a 429, a 418 ban) the positions the connector emitted, folded to the
last quantity per instrument, and its latest equity equal the server's truth;
``status.connected`` tells the truth meanwhile. Waits are on conditions with generous
timeouts; no test asserts how long something took.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlencode

import aiohttp
import pytest
from binance_server import API_KEY, API_SECRET, FakeBinance
from tools import RecordingSink, wait_until

from connectors.binance.client import BinanceFutures, BinanceSettings
from connectors.binance.parser import instrument_name
from connectors.ws import FatalConnectorError
from monitor.model.backoff import Backoff
from monitor.model.events import (
    AccountEvent,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
)


def truth(server: FakeBinance) -> dict[str, float]:
    out = {}
    for sym, q in server.truth().items():
        name = instrument_name(sym)
        assert name is not None
        out[name] = q
    return out


def settled(server: FakeBinance, sink: RecordingSink) -> Callable[[], bool]:
    def check() -> bool:
        f, t = sink.folded(), truth(server)
        return (
            f.keys() == t.keys()
            and all(f[k] == pytest.approx(t[k]) for k in t)
            and sink.equity() == pytest.approx(server.equity)
        )

    return check


def connector(server: FakeBinance, **kw: object) -> BinanceFutures:
    settings = BinanceSettings(
        rest_url=server.rest_url,
        ws_url=server.ws_url,
        symbols=("BTCUSDT",),
        api_key=API_KEY,
        request_timeout_s=5.0,
        liveness_s=5.0,
        backoff=Backoff(initial=0.02, cap=0.2, rng=random.Random(1)),
        account_min_gap_s=0.01,
        # Private test hooks (Binance's: PUT every 30 min, equity every 5 s).
        **{"keepalive_s": 0.2, "account_interval_s": 0.2, **kw},  # type: ignore[arg-type]
    )
    return BinanceFutures(settings, secret=lambda: API_SECRET)


@contextlib.asynccontextmanager
async def running_connector(conn: BinanceFutures, sink: RecordingSink) -> AsyncIterator[None]:
    """Run ``conn`` into ``sink`` for the block; it is cancelled when the block ends."""
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(sink), name="test.binance")
        try:
            yield
        finally:
            task.cancel()


@pytest.fixture
async def server() -> AsyncIterator[FakeBinance]:
    srv = FakeBinance()
    async with srv.running():
        yield srv


@pytest.fixture
async def running(server: FakeBinance) -> AsyncIterator[tuple[BinanceFutures, RecordingSink]]:
    await server.change("BTCUSDT", 0.5, notify=False)
    await server.change("ETHUSDT", 2.0, side="LONG", notify=False)
    await server.change("ETHUSDT", -0.5, side="SHORT", notify=False)
    conn = connector(server)
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(lambda: conn.status.connected, "connected")
        await wait_until(settled(server, sink), "initial snapshot")
        yield conn, sink


async def test_snapshot_prices_index_and_keepalive(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    assert {e.account for e in sink.events if isinstance(e, PositionEvent | AccountEvent)} == {
        "binance"
    }
    # Hedge-mode ETH legs net: 2.0 long - 0.5 short.
    assert sink.folded() == {"BTC_USDT-PERPETUAL": 0.5, "ETH_USDT-PERPETUAL": 1.5}
    acct = next(e for e in sink.events if isinstance(e, AccountEvent))
    assert (acct.account, acct.equity, acct.initial_margin, acct.maintenance_margin) == (
        "binance",
        10_000.0,
        500.0,
        100.0,
    )
    # Mark prices of BTCUSDT (configured) and ETHUSDT (held, added automatically), each
    # with Binance's index of its underlying, declared before its first price.
    await wait_until(
        lambda: (
            {"ETH_USDT-PERPETUAL", "ETH.binance"}
            <= {e.instrument for e in sink.events if isinstance(e, PriceEvent)}
        ),
        "held symbol priced",
    )
    prices = {(e.instrument, e.price) for e in sink.events if isinstance(e, PriceEvent)}
    assert {("BTC_USDT-PERPETUAL", 50_000.0), ("BTC.binance", 49_990.0)} <= prices
    assert {("ETH_USDT-PERPETUAL", 2_500.0), ("ETH.binance", 2_499.5)} <= prices
    assert not {i for i, _ in prices} & {"BTC", "ETH"}  # riskmon's own index is not written
    first_index = next(
        i
        for i, e in enumerate(sink.events)
        if isinstance(e, PriceEvent) and e.instrument == "BTC.binance"
    )
    decl = [(i, e) for i, e in enumerate(sink.events) if isinstance(e, InstrumentEvent)]
    assert InstrumentEvent(instrument="BTC.binance", kind="index", underlying="BTC") in [
        e for _, e in decl
    ]
    assert min(i for i, e in decl if e.instrument == "BTC.binance") < first_index
    # The listenKey is kept alive on the live session, which stays the only one.
    await wait_until(lambda: server.keepalives >= 3, "keep-alive PUTs")
    assert conn.status.connected
    assert (server.handshakes, server.keys_issued, server.timestamp_rejections) == (1, 1, 0)
    assert conn.funding["BTC_USDT-PERPETUAL"][0] == 0.0001
    assert not sink.rejected


async def test_updates_merge_and_funding_fee_keeps_positions(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    # Only the changed leg is pushed: the other symbols stay as they were.
    await server.change("ETHUSDT", 0.0, side="SHORT")
    await wait_until(settled(server, sink), "merged one leg")
    assert sink.folded() == {"BTC_USDT-PERPETUAL": 0.5, "ETH_USDT-PERPETUAL": 2.0}
    await server.change("SOLUSDT", -40.0)
    await wait_until(settled(server, sink), "a new symbol")
    assert sink.folded()["SOL_USDT-PERPETUAL"] == -40.0
    # A crossed funding fee: balances only, no positions. Positions stay; equity follows.
    await server.funding_fee(-12.5)
    await wait_until(settled(server, sink), "equity after the funding fee")
    assert sink.equity() == 9_987.5
    assert sink.folded() == {
        "BTC_USDT-PERPETUAL": 0.5,
        "ETH_USDT-PERPETUAL": 2.0,
        "SOL_USDT-PERPETUAL": -40.0,
    }
    assert server.handshakes == 1
    assert conn.status.connected


async def test_burst_cut_midway(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    for i in range(20):
        await server.change("BTCUSDT", float(i + 1))
        if i == 9:
            await server.drop_all()  # the rest of the burst is never sent
    await server.change("ETHUSDT", 0.0, side="LONG", notify=False)  # changed while away
    await wait_until(lambda: server.handshakes >= 2 and conn.status.connected, "reconnected")
    await wait_until(settled(server, sink), "truth after the reconnect")
    assert sink.folded()["BTC_USDT-PERPETUAL"] == 20.0
    # No stale value after a newer one: the quantities only ever grew, as the server's did.
    seen = sink.quantities("BTC_USDT-PERPETUAL")
    assert seen == sorted(seen)
    assert server.snapshots >= 2
    assert conn.status.reconnects >= 1


async def test_24_hour_cut_by_the_server(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    await server.change("BTCUSDT", -3.0, notify=False)  # unseen until the new snapshot
    await server.drop_all(code=1001)
    await wait_until(lambda: server.handshakes >= 2 and conn.status.connected, "reconnected")
    await wait_until(settled(server, sink), "truth after the cut")
    assert "closed by peer" in (conn.status.last_error or "")


async def test_planned_reconnect_before_the_24_hour_cut(server: FakeBinance) -> None:
    await server.change("BTCUSDT", 1.0, notify=False)
    conn = connector(server, max_session_s=0.5)
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(
            lambda: server.handshakes >= 3 and conn.status.connected, "two planned ends"
        )
        await server.change("BTCUSDT", 2.0, notify=False)
        await wait_until(lambda: server.snapshots >= 4, "a later snapshot")
        await wait_until(settled(server, sink), "truth")
    assert "24-hour cut" in (conn.status.last_error or "")


async def test_listen_key_expired_gives_a_new_key_and_snapshot(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    await server.expire_keys()
    await server.change("BTCUSDT", 9.0, notify=False)  # nothing arrives on a dead key
    await wait_until(lambda: server.keys_issued >= 2 and conn.status.connected, "new key")
    await wait_until(settled(server, sink), "truth after the new snapshot")
    assert "listenKeyExpired" in (conn.status.last_error or "")
    assert server.snapshots >= 2


async def test_keepalive_answered_1125_gives_a_new_key(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    server.forget_keys()
    await wait_until(lambda: server.keys_issued >= 2 and conn.status.connected, "new key")
    assert "-1125" in (conn.status.last_error or "")
    await server.change("BTCUSDT", 4.0)
    await wait_until(settled(server, sink), "streaming on the new key")


async def test_update_during_the_snapshot_is_not_overwritten(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    server.snapshot_delay_s = 0.5  # the answer is computed, then held back
    before = server.snapshots
    await server.drop_all()
    await wait_until(lambda: server.snapshots > before, "snapshot requested")
    # Newer than the snapshot's view, pushed on the new session while the answer travels.
    await server.change("BTCUSDT", 7.0)
    await wait_until(lambda: conn.status.connected, "reconnected")
    server.snapshot_delay_s = 0.0
    await wait_until(settled(server, sink), "the update survives the older snapshot")
    assert sink.quantities("BTC_USDT-PERPETUAL")[-1] == 7.0


@pytest.mark.parametrize("skew_ms", [5_000, -5_000])
async def test_clock_skewed_by_5s(server: FakeBinance, skew_ms: int) -> None:
    server.skew_ms = skew_ms
    await server.change("BTCUSDT", 1.25, notify=False)
    # The server refuses a request signed on our clock: the check below can fail.
    async with aiohttp.ClientSession() as http:
        query = urlencode({"recvWindow": 2000, "timestamp": round(time.time() * 1000)})
        sig = hmac.new(API_SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()
        async with http.get(
            f"{server.rest_url}/fapi/v3/account?{query}&signature={sig}",
            headers={"X-MBX-APIKEY": API_KEY},
        ) as resp:
            assert (resp.status, (await resp.json())["code"]) == (400, -1021)
    server.timestamp_rejections = 0
    conn = connector(server, recv_window_ms=2_000)  # the skew is well outside the window
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(lambda: conn.status.connected, "connected")
        await wait_until(settled(server, sink), "snapshot")
        await wait_until(lambda: server.account_calls >= 4, "signed refreshes")
    assert server.timestamp_rejections == 0
    assert server.handshakes == 1


async def test_429_backs_off_for_retry_after(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    server.rate_limit_next = 1.0
    await wait_until(lambda: "HTTP 429" in (conn.status.last_error or ""), "429 seen")
    limited_at = server.limited_at
    assert limited_at is not None
    await wait_until(lambda: server.requests[-1][0] >= limited_at + 1.0, "calls resume after it")
    # Nothing sooner than Retry-After, but for at most one call that was already on its
    # way when the 429 was answered (the keep-alive and the equity refresh run side by side).
    sooner = [t for t, *_ in server.requests if limited_at < t < limited_at + 1.0]
    assert len(sooner) <= 1
    await server.funding_fee(5.0)
    await wait_until(settled(server, sink), "truth after the stop")
    assert conn.status.connected


async def test_418_ban_stops_every_call_and_says_until_when(
    server: FakeBinance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    await server.change("BTCUSDT", 1.0, notify=False)
    conn = connector(server)
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(settled(server, sink), "snapshot")
        server.ban(2.0)
        await server.drop_all()  # the reconnect's first call is answered 418
        await wait_until(lambda: "IP banned (HTTP 418)" in (conn.status.last_error or ""), "ban")
        assert not conn.status.connected
        server.equity = 20_000.0
        await server.change("BTCUSDT", -1.0, notify=False)
        await wait_until(lambda: conn.status.connected, "resumed after the ban")
        await wait_until(settled(server, sink), "truth after the ban")
    # At most one call already on its way when the ban began; none started during it.
    assert server.requests_during_ban <= 1
    banned = [r for r in caplog.records if "IP banned (HTTP 418)" in r.getMessage()]
    assert banned
    assert banned[0].levelno == logging.ERROR
    assert "no API call until 20" in banned[0].getMessage()  # an ISO time: 20xx-...


async def test_secrets_never_leak(server: FakeBinance, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    await server.change("BTCUSDT", 1.0, notify=False)
    conn = connector(server)
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(settled(server, sink), "snapshot")
        server.forget_keys()  # -1125: an error path
        await wait_until(lambda: server.keys_issued >= 2 and conn.status.connected, "new key")
        server.ban(0.5)
        await wait_until(lambda: "418" in (conn.status.last_error or ""), "ban logged")
        await server.drop_all()
        await wait_until(lambda: server.handshakes >= 3 and conn.status.connected, "reconnected")
    # A wrong secret: refused for good (-1022), and its error quotes neither secret.
    bad = BinanceFutures(
        BinanceSettings(
            rest_url=server.rest_url,
            ws_url=server.ws_url,
            symbols=("BTCUSDT",),
            api_key=API_KEY,
            backoff=Backoff(initial=0.01, cap=0.02),
        ),
        secret=lambda: "WRONG-secret-PLANTED-77",
    )
    with pytest.raises(FatalConnectorError) as info:
        await bad.run(RecordingSink("binance"))
    assert "-1022" in str(info.value)
    keys = server.issued
    assert len(keys) >= 3
    # Every record but the test server's own access log (it shows the requests it got).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "aiohttp.access")
    assert "reconnecting" in logged  # the connector did log, so the checks below can fail
    seen = "\n".join(
        [
            logged,
            repr(conn.status),
            repr(bad.status),
            str(info.value),
            repr(info.value),
            repr(conn.settings),
            repr(sink.events),
            repr(sink.rejected),
        ]
    )
    for secret in (API_KEY, API_SECRET, "WRONG-secret-PLANTED-77", *keys):
        assert secret not in seen


async def test_public_only_without_a_key(server: FakeBinance) -> None:
    conn = BinanceFutures(
        BinanceSettings(
            rest_url=server.rest_url,
            ws_url=server.ws_url,
            symbols=("ETHUSDT",),
            liveness_s=5.0,
            backoff=Backoff(initial=0.02, cap=0.2),
        )
    )
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(lambda: conn.status.connected, "connected")
        await wait_until(
            lambda: any(
                isinstance(e, PriceEvent) and e.instrument == "ETH_USDT-PERPETUAL"
                for e in sink.events
            ),
            "price",
        )
    assert server.requests == []  # no REST call at all
    assert not any(isinstance(e, PositionEvent | AccountEvent) for e in sink.events)


async def test_margin_call_is_logged_and_refreshes_equity(
    server: FakeBinance, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await server.change("ETHUSDT", 1.327, side="LONG", notify=False)
    conn = connector(server, account_interval_s=3_600.0)  # no periodic refresh in this test
    sink = RecordingSink("binance")
    async with running_connector(conn, sink):
        await wait_until(settled(server, sink), "snapshot")
        server.equity = 3.16812045
        # Binance's documented MARGIN_CALL (USD-M docs, User Data Streams, Event: Margin
        # Call), on the account's stream.
        await server.send_raw(
            '{"e":"MARGIN_CALL","E":1587727187525,'
            '"cw":"3.16812045","p":[{"s":"ETHUSDT","ps":"LONG","pa":"1.327","mt":"CROSSED",'
            '"iw":"0","mp":"187.17127","up":"-1.166074","mm":"1.614445"}]}',
            private=True,
        )
        await wait_until(lambda: sink.equity() == 3.16812045, "equity refreshed at once")
    assert any("MARGIN_CALL" in r.getMessage() for r in caplog.records)
    assert not sink.rejected
    assert sink.folded() == {"ETH_USDT-PERPETUAL": 1.327}


async def test_garbage_frames_are_counted_and_the_session_goes_on(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    await server.send_raw("this is not json")
    await server.send_raw(
        '{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":1767225600000,'
        '"s":"BTCUSDT","p":"abc","i":"1","r":"","T":0}}'
    )
    await server.send_raw('{"e":"SOMETHING_NEW","E":1767225600000}', private=True)
    await wait_until(lambda: len(sink.rejected) >= 3, "three rejections")
    assert [r.reason.value for r in sink.rejected[:3]] == [
        "malformed_json",
        "invalid_value",
        "unknown_type",
    ]
    await server.change("BTCUSDT", -0.75)
    await wait_until(settled(server, sink), "still streaming after garbage")
    assert conn.status.connected
    assert server.handshakes == 1


async def test_user_data_socket_closing_rebuilds_the_session(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    await server.change("ETHUSDT", 0.0, side="LONG", notify=False)  # unseen: needs a snapshot
    await server.drop_private()  # the market socket stays open on Binance's side
    await wait_until(lambda: server.private_handshakes >= 2 and conn.status.connected, "rebuilt")
    await wait_until(settled(server, sink), "truth after the rebuild")
    assert "user_data: closed by peer" in (conn.status.last_error or "")
    assert server.handshakes == 2  # the market socket was rebuilt with it
    assert server.keys_issued == 2


async def test_refused_user_data_socket_keeps_the_connector_down_until_it_opens(
    server: FakeBinance, running: tuple[BinanceFutures, RecordingSink]
) -> None:
    conn, sink = running
    server.refuse_private = True
    await server.drop_all()
    await wait_until(
        lambda: "user_data: InvalidStatus" in (conn.status.last_error or ""), "refused"
    )
    await wait_until(lambda: server.handshakes >= 4, "several attempts")
    # The market socket opens each time, but a session without its user data socket is
    # not a session: never connected meanwhile, and no snapshot taken.
    assert not conn.status.connected
    snapshots = server.snapshots
    await server.change("BTCUSDT", 6.0, notify=False)
    server.refuse_private = False
    await wait_until(lambda: conn.status.connected, "connected again")
    await wait_until(settled(server, sink), "truth after the refusals")
    assert server.snapshots == snapshots + 1
