"""Live latency of the desk's MQTT feed: a real Mosquitto, a publisher process, the daemon.

A publisher sends price events (schema v1; ``--batch`` per message as a JSON array, default
one) for ``--underlyings`` index prices at ``--rate`` events/s for ``--seconds``, at
``--pub-qos`` (1). It is Debian's ``mosquitto_pub -l`` (C: one message per stdin line) fed
by a small Python process that writes the lines on schedule, so the publisher is not the
limit (a paho publisher reached about 5,500 messages/s on this machine). The daemon (in this
process, as ``riskmon run`` builds it, with an MQTT connector on that broker subscribing
prices at ``--price-qos``, the connector's default 0) evaluates every
``risk.eval_interval``. Printed:

- messages sent (publisher), received by the broker, dropped by the broker (its
  ``$SYS/broker/publish/messages/dropped``: a subscriber that fell behind by more than
  ``max_queued_messages``), and received by the connector;
- once a second: the engine queue depth and the connector's backlog (messages the MQTT
  client has read but the connector has not parsed yet); both must stay flat;
- receipt-to-snapshot latency, p50/p99/max: for every tick that a published snapshot shows
  (the latest tick of each underlying at each evaluation), the time from the connector
  receiving it to the snapshot being published (conflated ticks never reach a snapshot and
  have no latency); and publish-to-snapshot, from the tick's ``ts`` (the publisher's wall
  clock, ms) to the same moment, which adds the broker and the socket buffers: how old the
  prices a snapshot shows are, the figure that matters to a risk monitor;
- publish-to-receipt of every tick the connector received (its ``price_lag``, measured here
  per tick), once a second the lag of the latest tick, the connector's ``late_prices``
  (older than ``max_price_age`` on receipt) and its catch-ups (the prices' connection
  reopened to skip ticks that waited longer than that in buffers);
- the prices' socket buffers mid-run (``ss -tm`` of both ends of the prices' connection:
  what waits unread in the daemon's receive queue and in the broker's send queue), with the
  receive buffer the connector set (``--price-rcvbuf``, 0 for the kernel's autotuning);
- the daemon's CPU share (this process; the publisher and broker run apart), the time its
  thread was runnable but waiting for a CPU (``/proc/self/schedstat``: on a shared machine,
  the CPU it did not get), the load average, and the broker's and publisher's CPU.

``--burn-us N`` makes the daemon spend N us of CPU more on every tick (a busy loop in the
probe): a slower or busier host, to show overload on demand (at 20,000 ticks/s the daemon
spends about 25 us a tick when it has a core to itself, 80 to 109 us on a shared one).
``--price-rcvbuf 0 --max-price-age 0s`` is the connector as it was before both bounds.

Run: ``python tests/bench/bench_mqtt_live.py [--rate 20000] [--seconds 60] [--batch 1]
[--price-rcvbuf BYTES] [--max-price-age 5s] [--no-catch-up] [--burn-us 0]``.
Needs Debian's ``mosquitto`` and ``mosquitto-clients``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import Mosquitto, mosquitto_binary, required_tool

from connectors.mqtt.client import MqttFeed
from connectors.mqtt.config import MqttConnector
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.model.events import Event, PriceEvent, Rejected
from monitor.model.settings import parse_delay
from monitor.model.snapshot import RiskSnapshot

#: Feeds ``mosquitto_pub -l`` one line per message, on schedule; prints what it sent. Every
#: tick's price is unique (the probe finds a tick by its price) and drifts slowly (50,000 +
#: 0.001 per tick: a tick after a gap is never quarantined as an outlier).
PUBLISHER = textwrap.dedent(
    """
    import subprocess, sys, time
    mosquitto_pub, port, qos = sys.argv[1], sys.argv[2], sys.argv[3]
    rate, seconds = float(sys.argv[4]), float(sys.argv[5])
    n, batch = int(sys.argv[6]), int(sys.argv[7])
    pub = subprocess.Popen(
        [mosquitto_pub, "-p", port, "-V", "5", "-q", qos, "-i", "bench-publisher",
         "-t", "bench/prices/all", "-l"],
        stdin=subprocess.PIPE,
    )
    out = pub.stdin
    start = time.perf_counter()
    sent = messages = 0
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        due = int(now * rate)
        if due > sent:
            ts = int(time.time() * 1000)
            lines = []
            while sent < due:
                items = []
                for _ in range(batch):
                    items.append('{"type":"price","ts":%d,"instrument":"U%02d","price":%.3f}'
                                 % (ts, sent % n, 50000 + sent / 1000))
                    sent += 1
                lines.append(items[0] if batch == 1 else "[" + ",".join(items) + "]")
                messages += 1
            out.write(("\\n".join(lines) + "\\n").encode())
            out.flush()
        time.sleep(0.001)
    fed = time.perf_counter() - start
    out.close()
    pub.wait()
    print(sent, messages, fed, time.perf_counter() - start)
    """
)

SYS_TOPICS = ("$SYS/broker/publish/messages/#", "$SYS/broker/load/messages/received/1min")


class Probe:
    """Wraps the connector: stamps each tick's receipt, and each snapshot's publication."""

    def __init__(self, feed: MqttFeed, burn_s: float = 0.0) -> None:
        self.feed = feed
        self.burn_s = burn_s
        self.received: dict[float, tuple[float, int]] = {}  # price -> (receipt, ts)
        self.latencies: list[float] = []
        self.end_to_end: list[float] = []
        self.seen: dict[str, float] = {}
        self.events = 0
        self.lags: list[float] = []  # receipt (wall clock) minus ts of every tick, s

    @property
    def status(self):  # type: ignore[no-untyped-def]
        return self.feed.status

    async def run(self, sink) -> None:  # type: ignore[no-untyped-def]
        probe = self

        class Stamped:
            async def put(self, event: Event, source: str) -> None:
                if type(event) is PriceEvent:
                    probe.received[event.price] = (time.perf_counter(), event.ts)
                    probe.lags.append(time.time() - event.ts / 1000.0)
                    probe.events += 1
                    if probe.burn_s:
                        until = time.perf_counter() + probe.burn_s
                        while time.perf_counter() < until:
                            pass
                await sink.put(event, source)

            def reject(self, source: str, rejected: Rejected) -> None:
                sink.reject(source, rejected)

        await self.feed.run(Stamped())

    def published(self, snap: RiskSnapshot) -> None:
        now, wall_ms = time.perf_counter(), time.time() * 1000.0
        assets = snap.assets
        for name, price in zip(assets.names, assets.price, strict=True):
            p = float(price)
            if self.seen.get(name) == p:
                continue  # the same tick as in the previous snapshot
            self.seen[name] = p
            got = self.received.pop(p, None)
            if got is not None:
                self.latencies.append(now - got[0])
                self.end_to_end.append((wall_ms - got[1]) / 1000.0)
        if len(self.received) > 200_000:  # ticks conflated away: forget the oldest
            for k in list(self.received)[:100_000]:
                del self.received[k]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_tree_cpu_s(pid: int) -> float:
    """CPU of ``pid`` and its children (the feeder and its ``mosquitto_pub``)."""
    total = proc_cpu_s(pid)
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                total += proc_cpu_s(int(child))
    return total


def runqueue_wait_s() -> float:
    """Time the daemon's main thread was runnable but not running (a busy machine)."""
    return int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9


def percentiles(xs: list[float], what: str = "snapshot ticks") -> str:
    a = np.array(xs) * 1000.0
    if a.size == 0:
        return "no ticks"
    return (
        f"p50 {np.percentile(a, 50):.1f} ms, p99 {np.percentile(a, 99):.1f} ms, "
        f"max {a.max():.1f} ms over {a.size:,} {what}"
    )


def socket_queues(feed: MqttFeed, broker_port: int) -> list[str]:
    """``ss -tm`` of both ends of the prices' connection: Recv-Q (unread, bytes), Send-Q
    (unacknowledged or unsent), and skmem (rb: receive buffer, tb: send buffer)."""
    client = feed._clients.get("prices")  # the bench looks inside
    sock = None if client is None else client._client.socket()
    if not isinstance(sock, socket.socket):
        return ["(no prices connection)"]
    port = sock.getsockname()[1]
    out = subprocess.run(
        ["ss", "-tnmH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split("\n")
    lines: list[str] = []
    for head, mem in zip(out[::2], out[1::2], strict=False):
        recv_q, send_q, local, _ = head.split()[:4]
        side = "daemon" if local.endswith(f":{port}") else "broker"
        lines.append(f"{side}: Recv-Q {int(recv_q):,} B, Send-Q {int(send_q):,} B, {mem.strip()}")
    return lines


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(mosquitto_binary(), Path(tmp))
        with broker.config.open("a") as conf:
            conf.write("sys_interval 1\n")
        broker.start()
        assert broker.proc is not None
        sys_log = Path(tmp) / "sys.txt"
        sys_sub = await asyncio.create_subprocess_exec(
            *[required_tool("mosquitto_sub"), "-p", str(broker.port), "-v"],
            *[arg for topic in SYS_TOPICS for arg in ("-t", topic)],
            stdout=sys_log.open("wb"),
        )
        try:
            cfg = load_config(env={})
            cfg = msgspec.structs.replace(
                cfg, server=msgspec.structs.replace(cfg.server, listen="127.0.0.1:0")
            )
            feed = MqttFeed(
                MqttConnector(
                    name="bench",
                    port=broker.port,
                    topic_prefix="bench",
                    price_qos=args.price_qos,
                    price_rcvbuf=args.price_rcvbuf,
                    max_price_age=parse_delay(args.max_price_age),
                    price_catch_up=not args.no_catch_up,
                )
            )
            probe = Probe(feed, args.burn_us / 1e6)
            daemon = Daemon(cfg, connectors=[probe])
            evaluate = daemon.engine.evaluate_due

            eval_cpu = [0.0]

            def evaluate_due(now_ms: int) -> RiskSnapshot | None:
                c = time.process_time()
                snap = evaluate(now_ms)
                eval_cpu[0] += time.process_time() - c
                if snap is not None:
                    probe.published(snap)
                return snap

            daemon.engine.evaluate_due = evaluate_due  # type: ignore[method-assign]
            queue = daemon._queue  # the bench looks inside
            stop = asyncio.Event()
            depth: list[tuple[float, int, int, float]] = []
            queues: list[str] = []
            run = asyncio.create_task(daemon.run(stop))
            while not feed.status.connected:  # noqa: ASYNC110 (a status, not an event)
                await asyncio.sleep(0.05)
            rcvbufs = feed.receive_buffers
            await asyncio.sleep(1.0)  # the first evaluations, before the load
            argv = [required_tool("mosquitto_pub"), str(broker.port), str(args.pub_qos)]
            argv += [str(args.rate), str(args.seconds), str(args.underlyings), str(args.batch)]
            load0 = os.getloadavg()[0]
            pub = await asyncio.create_subprocess_exec(
                sys.executable, "-c", PUBLISHER, *argv, stdout=asyncio.subprocess.PIPE
            )
            cpu0, wait0, wall0 = time.process_time(), runqueue_wait_s(), time.perf_counter()
            msgs0, ecpu0 = feed.status.messages, eval_cpu[0]
            bcpu0 = proc_cpu_s(broker.proc.pid)
            pcpu = 0.0
            while pub.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pub.wait(), 1.0)
                with contextlib.suppress(OSError):
                    pcpu = proc_tree_cpu_s(pub.pid)
                lag = probe.lags[-1] if probe.lags else float("nan")
                depth.append((time.perf_counter() - wall0, len(queue), feed.backlog, lag))
                if not queues and depth[-1][0] >= args.seconds / 2:
                    queues = socket_queues(feed, broker.port)
            cpu1, wait1, wall1 = time.process_time(), runqueue_wait_s(), time.perf_counter()
            msgs1, ecpu1 = feed.status.messages, eval_cpu[0]
            bcpu1 = proc_cpu_s(broker.proc.pid)
            load1 = os.getloadavg()[0]
            await asyncio.sleep(2.5)  # the last evaluations; $SYS published once more
            out = (await pub.communicate())[0].decode().split()
            sent, messages, fed_s = int(out[0]), int(out[1]), float(out[2])
            stop.set()
            await run
        finally:
            sys_sub.terminate()
            await sys_sub.wait()
            broker.stop()
        counters: dict[str, str] = {}
        for line in sys_log.read_text().splitlines():
            k, _, v = line.partition(" ")
            counters[k.removeprefix("$SYS/broker/")] = v
    wall = wall1 - wall0
    print(
        f"publisher: {sent:,} events in {messages:,} messages over {fed_s:.1f} s = "
        f"{sent / fed_s:,.0f} events/s, {args.batch} per message, QoS {args.pub_qos}; "
        f"prices subscribed at QoS {args.price_qos}"
    )
    print(
        f"broker: received {counters.get('publish/messages/received', '?')} publishes, "
        f"sent {counters.get('publish/messages/sent', '?')}, "
        f"dropped {counters.get('publish/messages/dropped', '?')} "
        "(its own $SYS counters)"
    )
    sent_by_broker = int(counters.get("publish/messages/sent", "0"))
    print(
        "sent by the broker, not read by the connector (skipped at catch-ups, or still in "
        f"buffers at the end; the broker's count includes ~100 $SYS messages): "
        f"{sent_by_broker - feed.status.messages:,}"
    )
    print(
        f"connector received: {feed.status.messages:,} messages "
        f"({100 * feed.status.messages / max(messages, 1):.1f}% of sent), "
        f"{probe.events:,} events"
    )
    st = feed.status
    print(
        f"connector: late_prices {st.late_prices:,} (received more than max_price_age "
        f"{feed._cfg.max_price_age} after their ts), catch-ups {st.price_catch_ups} "
        f"(price_catch_up {feed._cfg.price_catch_up}), reconnects {st.reconnects}; "
        f"extra CPU per tick (--burn-us) {args.burn_us:g} us"
    )
    print(
        f"prices' receive buffer: price_rcvbuf {args.price_rcvbuf:,} B "
        f"(0: autotuned); SO_RCVBUF read back {rcvbufs}"
    )
    print(f"prices' socket queues at {args.seconds / 2:.0f} s (ss -tm):")
    for line in queues:
        print(f"  {line}")
    print(
        "once a second (s: engine queue depth / connector backlog / "
        "publish-to-receipt of the latest tick):"
    )
    print("  " + "  ".join(f"{t:.0f}:{d}/{b}/{lag:.2f}s" for t, d, b, lag in depth))
    print(
        f"  max engine queue {max(d for _, d, _, _ in depth)}, "
        f"max backlog {max(b for _, _, b, _ in depth)}"
    )
    print(f"receipt-to-snapshot: {percentiles(probe.latencies)}")
    print(f"eval_interval {cfg.risk.eval_interval}; target p99 < eval_interval + 50 ms")
    print(f"PUBLISH-TO-SNAPSHOT (age of the prices shown): {percentiles(probe.end_to_end)}")
    print(f"publish-to-receipt (every tick read): {percentiles(probe.lags, 'ticks')}")
    print(
        f"daemon CPU: {100 * (cpu1 - cpu0) / wall:.0f}% of one core over {wall:.0f} s; "
        f"runnable but waiting for a CPU {100 * (wait1 - wait0) / wall:.0f}% of the time; "
        f"load average {load0:.1f} -> {load1:.1f} (2 cores)"
    )
    ecpu = ecpu1 - ecpu0
    per_msg = (cpu1 - cpu0 - ecpu) / max(msgs1 - msgs0, 1)
    print(
        f"daemon CPU: evaluations {100 * ecpu / wall:.0f}% of one core; the rest (MQTT client, "
        f"connector, engine queue and apply, HTTP) {1e6 * per_msg:.0f} us per message received"
    )
    print(
        f"broker CPU: {100 * (bcpu1 - bcpu0) / wall:.0f}% of one core; "
        f"publisher (feeder + mosquitto_pub) {100 * pcpu / wall:.0f}%"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rate", type=float, default=20_000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--underlyings", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1, help="events per MQTT message")
    ap.add_argument("--pub-qos", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--price-qos", type=int, default=0, choices=(0, 1, 2))
    ap.add_argument(
        "--price-rcvbuf",
        type=int,
        default=MqttConnector().price_rcvbuf,
        help="the connector's price_rcvbuf, bytes (0: the kernel's autotuning, as before)",
    )
    ap.add_argument("--max-price-age", default=str(MqttConnector().max_price_age))
    ap.add_argument("--no-catch-up", action="store_true", help="price_catch_up = false")
    ap.add_argument("--burn-us", type=float, default=0.0, help="extra daemon CPU per tick, us")
    asyncio.run(main(ap.parse_args()))
