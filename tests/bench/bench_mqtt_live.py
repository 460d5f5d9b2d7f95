"""Live latency of the desk's MQTT feed: a real Mosquitto, a publisher process, the daemon.

A publisher process sends price events (schema v1; ``--batch`` per message as a JSON
array, default one) for ``--underlyings`` index prices at ``--rate`` events/s for
``--seconds``; the daemon (in this process, as ``riskmon run`` builds it, with an MQTT
connector on that broker) evaluates every ``risk.eval_interval``. Printed:

- the publisher's achieved rate and the messages the connector received;
- the engine queue depth once a second (it must stay flat: prices conflate);
- receipt-to-snapshot latency, p50/p99/max: for every tick that a published snapshot
  shows (the latest tick of each underlying at each evaluation), the time from the
  connector receiving it to the snapshot being published (conflated ticks never reach a
  snapshot and have no latency);
- the daemon's CPU share (this process; the publisher and broker run apart) and the
  broker's.

Run: ``python tests/bench/bench_mqtt_live.py [--rate 20000] [--seconds 60]``. Needs
Debian's ``mosquitto``. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
from collections import deque
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import contextlib

from tools import Mosquitto, mosquitto_binary

from connectors.mqtt.client import MqttFeed
from connectors.mqtt.config import MqttConnector
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.model.events import Event, PriceEvent, Rejected
from monitor.model.snapshot import RiskSnapshot

PUBLISHER = textwrap.dedent(
    """
    import sys, time
    import paho.mqtt.client as mqtt
    port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
    n, batch = int(sys.argv[4]), int(sys.argv[5])
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher",
                    protocol=mqtt.MQTTv5)
    c.max_queued_messages_set(0)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    start = time.perf_counter()
    sent = 0
    while True:
        now = time.perf_counter() - start
        if now >= seconds:
            break
        due = int(now * rate)
        while sent < due:
            ts = int(time.time() * 1000)
            items = []
            for _ in range(batch):
                items.append('{"type":"price","ts":%d,"instrument":"U%02d","price":%d}'
                             % (ts, sent % n, 1000 + sent))
                sent += 1
            body = items[0] if batch == 1 else "[" + ",".join(items) + "]"
            c.publish("bench/prices/all", body, qos=1)
        time.sleep(0.001)
    c.loop_stop()
    c.disconnect()
    print(sent, time.perf_counter() - start)
    """
)


class Probe:
    """Wraps the connector: stamps each tick's receipt, and each snapshot's publication."""

    def __init__(self, feed: MqttFeed) -> None:
        self.feed = feed
        self.received: dict[float, float] = {}  # price (unique per tick) -> receipt time
        self.latencies: list[float] = []
        self.seen: dict[str, float] = {}
        self.events = 0

    @property
    def status(self):  # type: ignore[no-untyped-def]
        return self.feed.status

    async def run(self, sink) -> None:  # type: ignore[no-untyped-def]
        probe = self

        class Stamped:
            async def put(self, event: Event, source: str) -> None:
                if isinstance(event, PriceEvent):
                    probe.received[event.price] = time.perf_counter()
                    probe.events += 1
                await sink.put(event, source)

            def reject(self, source: str, rejected: Rejected) -> None:
                sink.reject(source, rejected)

        await self.feed.run(Stamped())

    def published(self, snap: RiskSnapshot) -> None:
        now = time.perf_counter()
        assets = snap.assets
        for name, price in zip(assets.names, assets.price, strict=True):
            p = float(price)
            if self.seen.get(name) == p:
                continue  # the same tick as in the previous snapshot
            self.seen[name] = p
            t = self.received.pop(p, None)
            if t is not None:
                self.latencies.append(now - t)
        if len(self.received) > 200_000:  # ticks conflated away: forget the oldest
            for k in list(self.received)[:100_000]:
                del self.received[k]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker = Mosquitto(mosquitto_binary(), Path(tmp))
        broker.start()
        try:
            cfg = load_config(env={})
            import msgspec

            cfg = msgspec.structs.replace(
                cfg,
                server=msgspec.structs.replace(cfg.server, listen="127.0.0.1:0"),
            )
            feed = MqttFeed(
                MqttConnector(name="bench", port=broker.port, topic_prefix="bench", qos=1)
            )
            probe = Probe(feed)
            daemon = Daemon(cfg, connectors=[probe])
            evaluate = daemon.engine.evaluate_due

            def evaluate_due(now_ms: int) -> RiskSnapshot | None:
                snap = evaluate(now_ms)
                if snap is not None:
                    probe.published(snap)
                return snap

            daemon.engine.evaluate_due = evaluate_due  # type: ignore[method-assign]
            stop = asyncio.Event()
            depth: deque[tuple[float, int]] = deque()
            run = asyncio.create_task(daemon.run(stop))
            while not feed.status.connected:  # noqa: ASYNC110 (a status, not an event)
                await asyncio.sleep(0.05)
            argv = [str(broker.port), str(args.rate), str(args.seconds)]
            pub = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                PUBLISHER,
                *argv,
                str(args.underlyings),
                str(args.batch),
                stdout=asyncio.subprocess.PIPE,
            )
            cpu0, wall0 = time.process_time(), time.perf_counter()
            assert broker.proc is not None
            bcpu0 = proc_cpu_s(broker.proc.pid)
            while pub.returncode is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(pub.wait(), 1.0)
                depth.append((time.perf_counter() - wall0, daemon.engine.stats.queue_depth))
            cpu1, wall1 = time.process_time(), time.perf_counter()
            bcpu1 = proc_cpu_s(broker.proc.pid)
            await asyncio.sleep(2.0)  # drain
            out = (await pub.communicate())[0].decode().split()
            sent, pub_s = int(out[0]), float(out[1])
            stop.set()
            await run
        finally:
            broker.stop()
    lat = np.array(probe.latencies) * 1000.0
    wall = wall1 - wall0
    print(
        f"publisher: {sent:,} events in {pub_s:.1f} s = {sent / pub_s:,.0f} events/s, "
        f"{args.batch} per message (QoS 1)"
    )
    print(f"connector received: {feed.status.messages:,} messages, {probe.events:,} events")
    print("queue depth, once a second (s: depth):")
    print("  " + "  ".join(f"{t:.0f}:{d}" for t, d in depth))
    print(f"  max {max(d for _, d in depth)}")
    print(
        f"receipt-to-snapshot latency over {lat.size:,} snapshot ticks: "
        f"p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms, "
        f"max {lat.max():.1f} ms (eval_interval {cfg.risk.eval_interval})"
    )
    print(f"daemon CPU: {100 * (cpu1 - cpu0) / wall:.0f}% of one core over {wall:.0f} s")
    print(f"broker CPU: {100 * (bcpu1 - bcpu0) / wall:.0f}% of one core")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rate", type=float, default=20_000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--underlyings", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1, help="events per MQTT message")
    asyncio.run(main(ap.parse_args()))
