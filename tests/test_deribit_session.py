"""The Deribit connector against a local Deribit-protocol server (tests/deribit_server.py).

After every fault (a disconnect in the middle of a burst, garbage frames, a stall, refused
connections, a 10028), the positions the connector emitted, folded to the last quantity per
instrument, equal the server's truth; ``status.connected`` tells the truth meanwhile.
Waits are on conditions with generous timeouts, never on wall-clock assertions.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable

import pytest
from deribit_server import CLIENT_ID, CLIENT_SECRET, FakeDeribit, expected_quantity
from tools import RecordingSink, wait_until

from connectors.deribit.client import DeribitMarket, DeribitSettings
from monitor.model.backoff import Backoff
from monitor.model.events import (
    AccountEvent,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
)


def truth(server: FakeDeribit) -> dict[str, float]:
    return {n: expected_quantity(n, s) for n, s in server.positions.items()}


def settled(server: FakeDeribit, sink: RecordingSink) -> Callable[[], bool]:
    def check() -> bool:
        f, t = sink.folded(), truth(server)
        return f.keys() == t.keys() and all(f[k] == pytest.approx(t[k]) for k in t)

    return check


@pytest.fixture
async def server() -> AsyncIterator[FakeDeribit]:
    srv = FakeDeribit()
    async with srv.running():
        yield srv


def market(server: FakeDeribit, **kw: object) -> DeribitMarket:
    settings = DeribitSettings(
        url=server.url,
        currencies=("BTC", "ETH"),
        heartbeat_s=0.2,  # the private test hook: the user config refuses < 10s
        client_id=CLIENT_ID,
        request_timeout_s=5.0,
        rate_limit_delay_s=0.2,
        backoff=Backoff(initial=0.02, cap=0.2, rng=random.Random(1)),
        **kw,  # type: ignore[arg-type]
    )
    return DeribitMarket(settings, secret=lambda: CLIENT_SECRET)


@pytest.fixture
async def running(server: FakeDeribit) -> AsyncIterator[tuple[DeribitMarket, RecordingSink]]:
    await server.change("BTC-PERPETUAL", 1000.0, notify=False)
    await server.change("BTC-27DEC30-60000-C", -2.5, notify=False)
    conn = market(server)
    sink = RecordingSink("deribit")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(sink), name="test.deribit")
        await wait_until(lambda: conn.status.connected, "connected")
        await wait_until(settled(server, sink), "initial snapshot")
        yield conn, sink
        task.cancel()


async def test_handshake_snapshot_and_prices(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    conn, sink = running
    # The snapshot: BTC-PERPETUAL 1000 USD (inverse, USD-sized); the option in coin.
    assert sink.folded() == {"BTC-PERPETUAL": 1000.0, "BTC-27DEC30-60000-C": -2.5}
    # Both were declared inverse before their positions; the option with its exact expiry.
    decl = {e.instrument: e for e in sink.events if isinstance(e, InstrumentEvent)}
    assert {n: (d.kind, d.inverse, d.expiry) for n, d in decl.items()} == {
        "BTC-27DEC30-60000-C": ("option", True, "2030-01-01T08:00:00Z"),
        "BTC-PERPETUAL": ("perpetual", True, None),
    }
    declared_at = {
        e.instrument: k for k, e in enumerate(sink.events) if isinstance(e, InstrumentEvent)
    }
    for k, e in enumerate(sink.events):
        if isinstance(e, PositionEvent):
            assert declared_at[e.instrument] < k, e.instrument
    # Account: coin equity 10 per currency, no index yet -> nothing; the index arrives.
    assert not any(isinstance(e, AccountEvent) for e in sink.events)
    await server.push_index("btc_usd", 50_000.0, 1_767_225_600_000)
    await server.push_index("eth_usd", 2_000.0, 1_767_225_600_000)
    await wait_until(lambda: any(isinstance(e, AccountEvent) for e in sink.events), "account")
    acct = next(e for e in sink.events if isinstance(e, AccountEvent))
    assert (acct.equity, acct.maintenance_margin) == (10 * 50_000.0 + 10 * 2_000.0, 0.5 * 52_000)
    # Tickers of held instruments are subscribed and parsed.
    await server.push_ticker("BTC-PERPETUAL", 50_123.5, 1_767_225_600_100)
    await wait_until(
        lambda: any(isinstance(e, PriceEvent) and e.price == 50_123.5 for e in sink.events),
        "ticker",
    )
    # Heartbeat: test_requests are answered (the server closes a session that misses one).
    await wait_until(lambda: server.test_requests_answered >= 3, "test_request answers")
    assert conn.status.connected
    assert server.handshakes == 1


async def test_disconnect_mid_burst(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    conn, sink = running
    for i in range(20):
        await server.change("ETH-PERPETUAL", 100.0 * (i + 1))
        if i == 9:
            await server.drop_all()  # the rest of the burst is never sent
    await server.change("BTC-27DEC30-60000-C", 0.0, notify=False)  # closed while away
    await wait_until(lambda: server.handshakes >= 2 and conn.status.connected, "reconnected")
    await wait_until(settled(server, sink), "truth after the reconnect")
    assert "BTC-27DEC30-60000-C" not in sink.folded()
    assert conn.status.reconnects >= 1


async def test_a_change_during_the_snapshot_is_not_overwritten_by_it(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    """After a reconnect, a user.changes that lands while get_positions is in flight wins
    over that (older) answer: the book ends at the venue's truth, not the snapshot's."""
    conn, sink = running

    async def trade() -> None:  # the answer holds 1000 USD; the trade makes it -7000
        await server.change("BTC-PERPETUAL", -7000.0)

    server.race_during_snapshot = trade
    handshakes = server.handshakes
    await server.drop_all()
    await wait_until(
        lambda: server.handshakes > handshakes and conn.status.connected, "reconnected"
    )
    await wait_until(lambda: server.race_during_snapshot is None, "the race ran")
    await wait_until(settled(server, sink), "truth after the race")
    assert sink.folded()["BTC-PERPETUAL"] == -7000.0
    # And it stays there: the stale snapshot value never came after the change.
    perp = [
        e.quantity
        for e in sink.events
        if isinstance(e, PositionEvent) and e.instrument == "BTC-PERPETUAL"
    ]
    assert perp[-1] == -7000.0
    assert 1000.0 not in perp[perp.index(-7000.0) :]


async def test_garbage_frames_are_counted(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    conn, sink = running
    await server.send_raw("this is not json")
    await server.send_raw(
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":'
        '"ticker.BTC-PERPETUAL.100ms","data":{"instrument_name":"BTC-PERPETUAL",'
        '"mark_price":"abc","timestamp":1767225600000}}}'
    )
    await server.send_raw(
        '{"jsonrpc":"2.0","method":"subscription","params":{"channel":"x.y","data":{}}}'
    )
    await wait_until(lambda: len(sink.rejected) >= 3, "three rejections")
    assert [r.reason.value for r in sink.rejected[:3]] == [
        "malformed_json",
        "invalid_value",
        "unknown_type",
    ]
    await server.change("ETH-PERPETUAL", -500.0)
    await wait_until(settled(server, sink), "still streaming after garbage")
    assert conn.status.connected
    assert server.handshakes == 1


async def test_stall_is_detected_and_recovered(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    conn, sink = running
    server.stall()  # socket open, no data, no heartbeat, no answers
    await server.change("BTC-PERPETUAL", 2000.0, notify=False)
    # The stalled session is replaced: a second handshake, and the reason on the status.
    await wait_until(lambda: server.handshakes >= 2 and conn.status.connected, "recovered")
    assert "stalled" in (conn.status.last_error or "")
    assert conn.status.reconnects >= 1
    await wait_until(settled(server, sink), "truth after the stall")


async def test_refused_connections_then_recovery(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    conn, sink = running
    server.refusing = True
    await server.drop_all()
    await wait_until(lambda: not conn.status.connected, "disconnected")
    before = server.handshakes
    await server.change("ETH-PERPETUAL", 700.0, notify=False)
    await wait_until(lambda: conn.status.reconnects >= 3, "several refused attempts")
    # While refused, no session exists and the status says so.
    assert not conn.status.connected
    assert server.handshakes == before
    assert not server.live
    server.refusing = False
    await wait_until(lambda: conn.status.connected, "reconnected")
    await wait_until(settled(server, sink), "truth after refusals")


async def test_rate_limit_ends_the_session(
    server: FakeDeribit, running: tuple[DeribitMarket, RecordingSink]
) -> None:
    conn, sink = running
    server.rate_limit_next = True
    await server.change("BTC-PERPETUAL", -3000.0, notify=False)
    await server.drop_all()  # the next session's first private call gets 10028
    await wait_until(lambda: server.handshakes >= 3 and conn.status.connected, "past the 10028")
    await wait_until(settled(server, sink), "truth after 10028")


async def test_token_refresh_and_no_secret_in_logs(
    server: FakeDeribit, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.expires_in = 1  # refresh at 0.8 s
    conn = market(server)
    sink = RecordingSink("deribit")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(sink), name="test.deribit")
        await wait_until(lambda: server.refreshes >= 2, "two refreshes")
        await server.drop_all()
        await wait_until(lambda: server.handshakes >= 2 and conn.status.connected, "reconnected")
        task.cancel()
    grants = [p["grant_type"] for p in server.auth_params_seen]
    assert grants[:3] == ["client_credentials", "refresh_token", "refresh_token"]
    # Every record but the test server's own (its websockets DEBUG log shows what it got).
    logged = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")
    )
    assert logged  # the connector did log (reconnect), so the check below can fail
    seen = logged + repr(conn.status) + repr(sink.events) + repr(sink.rejected)
    for secret in (CLIENT_SECRET, "TOKENVALUE", "REFRESHVALUE"):
        assert secret not in seen


async def test_public_only_without_credentials(server: FakeDeribit) -> None:
    settings = DeribitSettings(
        url=server.url,
        heartbeat_s=0.2,
        instruments=("BTC-PERPETUAL",),
        backoff=Backoff(initial=0.02, cap=0.2),
    )
    conn = DeribitMarket(settings)
    sink = RecordingSink("deribit")
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(conn.run(sink), name="test.deribit")
        await wait_until(lambda: conn.status.connected, "connected")
        await server.push_ticker("BTC-PERPETUAL", 42_000.0, 1_767_225_600_000)
        await wait_until(lambda: any(isinstance(e, PriceEvent) for e in sink.events), "price")
        task.cancel()
    methods = {m for m, _ in server.requests}
    assert "public/auth" not in methods
    assert not any(m.startswith("private/") for m in methods)
