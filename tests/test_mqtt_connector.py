"""The MQTT connector against a real Mosquitto on a loopback port the test picks.

Never the broker that may already listen on 1883. The publisher is a real aiomqtt client at
QoS 1; the connector runs exactly as the daemon runs it (``build()`` then ``run(sink)``)
into a sink that keeps what it is given.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import math
import random
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import aiomqtt
import pytest
from tools import Mosquitto, mosquitto_binary, required_tool, wait_until

from connectors.mqtt.client import MqttFeed, _socket_of
from connectors.mqtt.config import MqttConnector
from monitor.model.backoff import Backoff
from monitor.model.events import Event, PositionEvent, PriceEvent, Reason, Rejected
from monitor.model.settings import parse_delay

T0 = 1_767_225_600_000


class Sink:
    """Keeps every event and rejection a connector hands over."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rejected: list[Rejected] = []

    async def put(self, event: Event, source: str) -> None:
        assert source == "desk"
        self.events.append(event)

    def reject(self, source: str, rejected: Rejected) -> None:
        assert source == "desk"
        self.rejected.append(rejected)

    def positions(self) -> dict[tuple[str, str], float]:
        """The book the events describe: last quantity per (account, instrument)."""
        return {
            (e.account, e.instrument): e.quantity
            for e in self.events
            if isinstance(e, PositionEvent)
        }


def feed(
    port: int, client_id: str = "riskmon-test-desk", *, price_qos: Literal[0, 1] = 0
) -> MqttFeed:
    cfg = MqttConnector(
        name="desk",
        port=port,
        client_id=client_id,
        topic_prefix="desk1",
        price_qos=price_qos,
        # These tests stamp ticks at a fixed past time (T0 + i): a slow run would look
        # like a feed falling behind and catch up, skipping ticks they count.
        price_catch_up=False,
    )
    # Short, seeded backoff: the restart test waits for the reconnect, not for the cap.
    return MqttFeed(cfg, backoff=Backoff(initial=0.1, cap=0.5, rng=random.Random(1)))


@asynccontextmanager
async def running(f: MqttFeed, sink: Sink) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(f.run(sink), name="test.mqtt-feed")
        try:
            await wait_until(lambda: f.status.connected, "the feed to connect")
            yield
        finally:
            task.cancel()


@asynccontextmanager
async def publisher(port: int) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-publisher") as client:
        yield client


def position(i: int, qty: float, account: str = "main") -> bytes:
    return json.dumps(
        {
            "type": "position",
            "ts": T0 + i,
            "account": account,
            "instrument": f"BTC-27MAR26-{80_000 + 1_000 * (i % 20)}-C",
            "quantity": qty,
        }
    ).encode()


async def test_prices_and_positions_flow_with_their_values(broker: Mosquitto) -> None:
    sink = Sink()
    f = feed(broker.port)
    async with running(f, sink), publisher(broker.port) as pub:
        await pub.publish(
            "desk1/prices/BTC",
            json.dumps({"type": "price", "ts": T0, "instrument": "BTC", "price": 87_000.25}),
            qos=1,
        )
        batch = [json.loads(position(i, 0.5 * i - 3.0)) for i in range(10)]
        await pub.publish("desk1/positions/main", json.dumps(batch), qos=1)
        await wait_until(lambda: len(sink.events) == 11, "11 events")
    # Prices and positions come over two connections: no order between them.
    prices = [e for e in sink.events if isinstance(e, PriceEvent)]
    assert prices == [PriceEvent(ts=T0, instrument="BTC", price=87_000.25)]
    assert sink.positions() == {
        ("main", f"BTC-27MAR26-{80_000 + 1_000 * i}-C"): 0.5 * i - 3.0 for i in range(10)
    }
    assert sink.rejected == []
    assert f.status.messages == 2
    assert not f.status.connected  # cancelled: the status says so


async def test_malformed_payloads_are_rejected_by_reason_and_the_feed_goes_on(
    broker: Mosquitto,
) -> None:
    sink = Sink()
    f = feed(broker.port)
    async with running(f, sink), publisher(broker.port) as pub:
        await pub.publish("desk1/prices/BTC", b"{garbage", qos=1)
        await pub.publish("desk1/positions/main", position(1, 1.0).replace(b"1.0", b'"one"'), qos=1)
        await pub.publish("desk1/prices/BTC", position(2, 1.0), qos=1)  # wrong category
        await pub.publish(
            "desk1/prices/BTC",
            b'{"type":"price","ts":1767225600000,"instrument":"BTC","price":-5}',
            qos=1,
        )
        await pub.publish("desk1/positions/main", position(3, 7.0), qos=1)
        await wait_until(lambda: len(sink.events) == 1, "the good position")
        # the prices' refusals come over their own connection, in their own time
        await wait_until(lambda: len(sink.rejected) == 4, "four refusals")
    assert sink.positions() == {("main", "BTC-27MAR26-83000-C"): 7.0}
    assert sorted(r.reason.value for r in sink.rejected) == sorted(
        [
            Reason.MALFORMED_JSON.value,
            Reason.INVALID_VALUE.value,  # a quantity that is a string
            Reason.UNKNOWN_TYPE.value,
            Reason.INVALID_VALUE.value,  # negative price
        ]
    )


async def test_broker_killed_and_restarted_mid_stream_loses_nothing(broker: Mosquitto) -> None:
    sink = Sink()
    f = feed(broker.port)
    truth: dict[tuple[str, str], float] = {}
    async with running(f, sink):
        async with publisher(broker.port) as pub:
            for i in range(50):
                await pub.publish("desk1/positions/main", position(i, float(i)), qos=1)
                truth[("main", f"BTC-27MAR26-{80_000 + 1_000 * (i % 20)}-C")] = float(i)
        await wait_until(lambda: sink.positions() == truth, "the first burst")
        broker.stop()  # SIGTERM: the broker saves its sessions, as a production one does
        await wait_until(lambda: not f.status.connected, "the feed to see the broker gone")
        reconnects = f.status.reconnects
        broker.start()
        await wait_until(lambda: f.status.connected, "the feed to reconnect by itself")
        assert f.status.reconnects > reconnects
        async with publisher(broker.port) as pub:
            for i in range(50, 100):
                await pub.publish("desk1/positions/main", position(i, -float(i)), qos=1)
                truth[("main", f"BTC-27MAR26-{80_000 + 1_000 * (i % 20)}-C")] = -float(i)
        await wait_until(lambda: sink.positions() == truth, "the second burst")
    positions = [e for e in sink.events if isinstance(e, PositionEvent)]
    assert len(positions) == 100  # no loss, no duplicate
    assert [e.ts for e in positions] == [T0 + i for i in range(100)]


async def test_a_position_published_while_riskmon_was_away_arrives_after_it_starts(
    broker: Mosquitto,
) -> None:
    first = Sink()
    async with running(feed(broker.port), first):
        pass  # the broker now holds a persistent session for this client id
    async with publisher(broker.port) as pub:
        await pub.publish("desk1/positions/main", position(4, 2.5), qos=1)
        await pub.publish("desk1/positions/hedge", position(5, -1.0, "hedge"), qos=1)
    later = Sink()
    async with running(feed(broker.port), later):
        await wait_until(lambda: len(later.events) == 2, "the queued positions")
    assert later.positions() == {
        ("main", "BTC-27MAR26-84000-C"): 2.5,
        ("hedge", "BTC-27MAR26-85000-C"): -1.0,
    }
    assert first.events == []


def price(i: int, instrument: str = "BTC") -> bytes:
    return json.dumps(
        {"type": "price", "ts": T0 + i, "instrument": instrument, "price": 80_000.0 + i}
    ).encode()


@pytest.mark.parametrize("price_qos", [0, 1])
async def test_prices_published_while_riskmon_was_away_are_queued_only_at_price_qos_1(
    broker: Mosquitto, price_qos: Literal[0, 1]
) -> None:
    """Prices are subscribed at ``price_qos`` (0 by default: a tick is superseded by the
    next one), positions at ``qos`` 1: the broker queues the position for the stopped
    daemon, and the price only when asked to. The broker delivers a session's queue in
    order, so once the position (published last) is there, a queued price would be too."""
    async with running(feed(broker.port, price_qos=price_qos), Sink()):
        pass  # the session and its subscriptions now live in the broker
    async with publisher(broker.port) as pub:
        await pub.publish("desk1/prices/BTC", price(1), qos=1)
        await pub.publish("desk1/positions/main", position(2, 4.0), qos=1)
    later = Sink()
    async with running(feed(broker.port, price_qos=price_qos), later):
        await wait_until(lambda: later.positions() != {}, "the queued position")
    assert later.positions() == {("main", "BTC-27MAR26-82000-C"): 4.0}
    queued = [PriceEvent(ts=T0 + 1, instrument="BTC", price=80_001.0)] if price_qos else []
    assert [e for e in later.events if isinstance(e, PriceEvent)] == queued


async def test_prices_have_their_own_connection_which_reconnects_by_itself(
    broker: Mosquitto,
) -> None:
    """At price_qos 0 prices come over a second connection, client id ``<id>-prices``. A
    client that takes that id over cuts it; the feed reconnects it by itself, and prices
    and positions flow again."""
    sink = Sink()
    f = feed(broker.port)
    async with running(f, sink), publisher(broker.port) as pub:
        reconnects = f.status.reconnects
        # a client of that id for a second (mosquitto_sub -W 1), taken over back in turn
        intruder = await asyncio.create_subprocess_exec(
            *[required_tool("mosquitto_sub"), "-p", str(broker.port), "-t", "nothing/#"],
            *["-i", "riskmon-test-desk-prices", "-W", "1"],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await wait_until(lambda: f.status.reconnects > reconnects, "the price connection retried")
        await intruder.wait()
        await wait_until(lambda: f.status.connected, "both connections up")
        await pub.publish("desk1/prices/BTC", price(7), qos=1)
        await pub.publish("desk1/positions/main", position(8, 3.0), qos=1)
        await wait_until(lambda: len(sink.events) == 2, "a price and a position")
    assert PriceEvent(ts=T0 + 7, instrument="BTC", price=80_007.0) in sink.events
    assert sink.positions() == {("main", "BTC-27MAR26-88000-C"): 3.0}


async def test_a_burst_arrives_whole_and_in_order(broker: Mosquitto) -> None:
    """Messages are taken from the client's queue in bursts: none is lost, none reordered
    within its QoS (MQTT orders messages of one QoS; the broker may send a QoS 0 price
    ahead of a QoS 1 position still waiting for an in-flight slot), each counted once."""
    sink = Sink()
    f = feed(broker.port)
    async with running(f, sink), publisher(broker.port) as pub:
        for i in range(1_000):
            if i % 4 == 3:
                await pub.publish("desk1/positions/main", position(i, float(i)), qos=1)
            else:
                await pub.publish(f"desk1/prices/U{i % 7}", price(i, f"U{i % 7}"), qos=1)
        await wait_until(lambda: len(sink.events) == 1_000, "the burst")
    prices = [e for e in sink.events if isinstance(e, PriceEvent)]
    positions = [e for e in sink.events if isinstance(e, PositionEvent)]
    assert [(e.ts, e.instrument, e.price) for e in prices] == [
        (T0 + i, f"U{i % 7}", 80_000.0 + i) for i in range(1_000) if i % 4 != 3
    ]
    assert [(e.ts, e.quantity) for e in positions] == [
        (T0 + i, float(i)) for i in range(1_000) if i % 4 == 3
    ]
    assert f.status.messages == 1_000
    assert f.backlog == 0


async def test_status_is_down_while_the_broker_refuses(tmp_path: Path) -> None:
    b = Mosquitto(mosquitto_binary(), tmp_path)  # never started: connections are refused
    sink = Sink()
    f = feed(b.port)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(f.run(sink))
        await wait_until(lambda: f.status.reconnects >= 2, "a few refused attempts")
        assert not f.status.connected
        assert f.status.last_error
        b.start()
        try:
            await wait_until(lambda: f.status.connected, "the connection once it listens")
        finally:
            task.cancel()
            b.stop()


# --- staleness under overload: the prices' receive buffer, and the lag the feed sees ------


def sized_feed(
    port: int, *, price_rcvbuf: int = 65_536, max_price_age: str = "5s", catch_up: bool = True
) -> MqttFeed:
    cfg = MqttConnector(
        name="desk",
        port=port,
        client_id="riskmon-test-desk",
        topic_prefix="desk1",
        price_rcvbuf=price_rcvbuf,
        max_price_age=parse_delay(max_price_age),
        price_catch_up=catch_up,
    )
    return MqttFeed(cfg, backoff=Backoff(initial=0.1, cap=0.5, rng=random.Random(1)))


def kernel_rcvbuf(asked: int) -> int:
    """What Linux reports for SO_RCVBUF ``asked`` (socket(7)): doubled for its bookkeeping,
    after capping at net.core.rmem_max."""
    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    return 2 * min(asked, rmem_max)


def autotuned_start() -> int:
    """A TCP socket's receive buffer before autotuning grows it (tcp_rmem's default)."""
    return int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])


@pytest.mark.parametrize("price_rcvbuf", [24_576, 4_096, 0])
async def test_the_prices_socket_gets_price_rcvbuf_and_the_events_socket_does_not(
    broker: Mosquitto, price_rcvbuf: int
) -> None:
    f = sized_feed(broker.port, price_rcvbuf=price_rcvbuf)
    async with running(f, Sink()):
        got = f.receive_buffers
    expected = kernel_rcvbuf(price_rcvbuf) if price_rcvbuf else autotuned_start()
    assert got == {"prices": expected, "events": autotuned_start()}
    assert f.receive_buffers == {}  # no session left once stopped


def unread_bytes(f: MqttFeed) -> int:
    """Bytes waiting unread in the prices' socket (FIONREAD)."""
    sock = _socket_of(f._clients["prices"])
    assert sock is not None
    (n,) = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))
    return int(n)


@pytest.mark.parametrize("price_rcvbuf", [4_096, 0])
async def test_a_stalled_daemon_holds_no_more_unread_ticks_than_price_rcvbuf(
    broker: Mosquitto, price_rcvbuf: int
) -> None:
    """A daemon whose event loop is stuck (busy elsewhere) reads nothing: ticks pile up in
    its prices' socket up to the receive buffer, the rest waits at (or is dropped by) the
    broker. With ``price_rcvbuf`` 4 KiB at most its kernel buffer (8 KiB) waits unread;
    with the kernel's default (0) the same stall leaves tens of KiB, ticks the daemon would
    read late once it is back."""
    lines = b"".join(
        b'{"type":"price","ts":%d,"instrument":"U%d","price":%d.5}\n' % (T0 + i, i % 9, 80_000 + i)
        for i in range(3_000)
    )  # 3,000 ticks, about 180 KiB
    argv = [required_tool("mosquitto_pub"), "-p", str(broker.port), "-q", "1"]
    argv += ["-t", "desk1/prices/all", "-l"]
    unread: list[int] = []
    f = sized_feed(broker.port, price_rcvbuf=price_rcvbuf)

    def stall() -> int:
        """Called from the sink, so the event loop stops here (as if busy elsewhere):
        another process publishes, then the unread bytes are read until they stop
        growing."""
        subprocess.run(argv, input=lines, check=True, timeout=60)
        readings = [unread_bytes(f)]
        deadline = time.monotonic() + 20
        while len(readings) < 5 or len(set(readings[-5:])) > 1:
            assert time.monotonic() < deadline, f"unread bytes still moving: {readings}"
            time.sleep(0.05)
            readings.append(unread_bytes(f))
        return readings[-1]

    class Stalling(Sink):
        async def put(self, event: Event, source: str) -> None:
            await super().put(event, source)
            if len(self.events) == 1:
                unread.append(stall())

    sink = Stalling()
    async with running(f, sink), publisher(broker.port) as pub:
        await pub.publish("desk1/prices/first", price(0), qos=1)
        await wait_until(lambda: bool(unread), "the stall to end")
    bound = kernel_rcvbuf(4_096)
    if price_rcvbuf:
        assert 0 < unread[0] <= bound
    else:
        assert unread[0] > 4 * bound


@pytest.mark.parametrize(("max_price_age", "late"), [("5s", 3), ("0s", 0)])
async def test_price_lag_is_receipt_minus_ts_and_ticks_past_max_price_age_are_counted(
    broker: Mosquitto, caplog: pytest.LogCaptureFixture, max_price_age: str, late: int
) -> None:
    """Ticks stamped ahead of this host's clock and 1.75 s to 2 min behind it: each lag
    lands in the bucket its offset says (the offsets sit far from the bucket bounds, more
    than loopback delivery takes), the sum is bracketed by the publish and receipt times,
    and the three ticks older than 5 s are counted (still delivered) and logged once."""
    offsets_s = [-2.0, 1.75, 3.75, 7.5, 45.0, 120.0]  # receipt minus ts, roughly
    bounds = [0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, math.inf]
    sink = Sink()
    # Catching up would reopen the connection at the first late tick (tested below).
    f = sized_feed(broker.port, max_price_age=max_price_age, catch_up=False)
    async with running(f, sink), publisher(broker.port) as pub:
        sent_s = time.time()
        stamps = [int((sent_s - off) * 1000) for off in offsets_s]
        for i, ts in enumerate(stamps):
            body = {"type": "price", "ts": ts, "instrument": f"U{i}", "price": 100.0 + i}
            await pub.publish(f"desk1/prices/U{i}", json.dumps(body), qos=1)
        await wait_until(lambda: len(sink.events) == len(stamps), "every tick, late or not")
        got_s = time.time()
    assert sorted(e.ts for e in sink.events if isinstance(e, PriceEvent)) == sorted(stamps)
    lag = f.status.price_lag
    assert lag is not None
    expected = [0] * len(bounds)
    for ts in stamps:
        low, high = sent_s - ts / 1000, got_s - ts / 1000  # the lag lies between
        bucket = next(i for i, b in enumerate(bounds) if low <= b)
        assert bucket == next(i for i, b in enumerate(bounds) if high <= b)
        expected[bucket] += 1
    assert lag.counts == expected
    assert lag.count == 6
    # A tick stamped ahead adds 0 (the sum must never fall: Prometheus takes its rate).
    low_sum = sum(max(0.0, sent_s - ts / 1000) for ts in stamps)
    assert low_sum <= lag.total <= low_sum + 6 * (got_s - sent_s)
    assert lag.cumulative()[-1] == (math.inf, 6)
    assert f.status.late_prices == late
    warnings = [r for r in caplog.records if "prices arrive late" in r.getMessage()]
    assert len(warnings) == (1 if late else 0)  # at most once a minute


def tick(i: int, lag_s: float, instrument: str = "BTC") -> bytes:
    """A price tick stamped ``lag_s`` before now (as if it had waited that long)."""
    ts = int((time.time() - lag_s) * 1000)
    body = {"type": "price", "ts": ts, "instrument": instrument, "price": 1.0 + i}
    return json.dumps(body).encode()


async def test_ticks_that_fell_behind_reopen_the_prices_connection_once(
    broker: Mosquitto,
) -> None:
    """A live tick, then one 3 s older than the first ticks were (max_price_age 1 s): the
    connector reopens the prices' connection at once (counted), and prices flow on it."""
    sink = Sink()
    f = sized_feed(broker.port, max_price_age="1s")
    async with running(f, sink), publisher(broker.port) as pub:
        await pub.publish("desk1/prices/BTC", tick(0, 0.0), qos=1)
        await wait_until(lambda: len(sink.events) == 1, "the live tick")
        reconnects = f.status.reconnects
        await pub.publish("desk1/prices/BTC", tick(1, 3.0), qos=1)
        await wait_until(lambda: f.status.price_catch_ups == 1, "the catch-up")
        await wait_until(lambda: f.status.connected, "the prices' connection back")
        assert f.status.reconnects == reconnects + 1
        await pub.publish("desk1/prices/BTC", tick(2, 0.0), qos=1)
        await wait_until(lambda: len(sink.events) == 3, "a tick on the new connection")
    assert [e.price for e in sink.events if isinstance(e, PriceEvent)] == [1.0, 2.0, 3.0]
    assert f.status.price_catch_ups == 1
    assert f.status.late_prices == 1  # the 3-s tick (delivered: it was the newest)


async def test_a_publisher_clock_behind_counts_late_ticks_but_never_reopens(
    broker: Mosquitto,
) -> None:
    """BTC ticks stamped 30 s behind (a source whose clock is off, not a slow daemon), ETH
    ticks 0.5 s ahead, interleaved, and a retained tick from 2 min ago delivered on
    subscribe: the BTC and the retained ticks are counted late, all are delivered, and
    the connection is never reopened (each instrument against its own first ticks)."""
    async with publisher(broker.port) as pub:
        await pub.publish("desk1/prices/OLD", tick(0, 120.0, "OLD"), qos=1, retain=True)
    sink = Sink()
    f = sized_feed(broker.port, max_price_age="1s")
    async with running(f, sink), publisher(broker.port) as pub:
        await wait_until(lambda: len(sink.events) == 1, "the retained tick")
        for i in range(1, 21):
            name, lag_s = ("BTC", 30.0) if i % 2 else ("ETH", -0.5)
            await pub.publish(f"desk1/prices/{name}", tick(i, lag_s, name), qos=1)
        await wait_until(lambda: len(sink.events) == 21, "every skewed tick")
    assert f.status.price_catch_ups == 0
    assert f.status.late_prices == 1 + 10
    assert [e.price for e in sink.events if isinstance(e, PriceEvent)] == [
        1.0 + i for i in range(21)
    ]
