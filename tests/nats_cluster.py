"""A real 3-node ``nats-server`` cluster with JetStream, on free loopback ports of its own.

Each node has a client port, a cluster (route) port and a monitoring port; JetStream
stores under the test's ``tmp``. :meth:`NatsCluster.start` returns once every node
reports the same JetStream meta leader and the whole cluster as its peers, so a stream
with 3 replicas can be created at once. Never the machine's NATS on 4222.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tools import free_port, required_tool

from connectors.nats.config import ClusterConfig
from connectors.nats.jetstream import JetStreamSink, close, connect, declare_streams, replicas_for
from monitor.model.events import Event


def nats_server_binary() -> str:
    """Debian installs it in /usr/sbin, which is not on every user's PATH."""
    sbin = Path("/usr/sbin/nats-server")
    if shutil.which("nats-server") is None and os.access(sbin, os.X_OK):
        return str(sbin)
    return required_tool("nats-server")


class NatsCluster:
    """``size`` nodes named ``n0``..; each restartable on its ports and store."""

    def __init__(self, tmp: Path, size: int = 3, *, name: str = "riskmon-test") -> None:
        self.binary = nats_server_binary()
        self.tmp = tmp
        self.size = size
        self.client_ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.monitor_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size
        for i in range(size):
            routes = ", ".join(
                f'"nats-route://127.0.0.1:{p}"' for j, p in enumerate(self.route_ports) if j != i
            )
            store = tmp / f"n{i}"
            store.mkdir(parents=True, exist_ok=True)
            self.config(i).write_text(
                f'server_name: "n{i}"\n'
                f"listen: 127.0.0.1:{self.client_ports[i]}\n"
                f"http: 127.0.0.1:{self.monitor_ports[i]}\n"
                f'jetstream {{ store_dir: "{store}", max_memory_store: 64MB, '
                "max_file_store: 1GB }\n"
                f'cluster {{ name: "{name}", listen: 127.0.0.1:{self.route_ports[i]}, '
                f"routes: [{routes}] }}\n"
            )

    def config(self, i: int) -> Path:
        return self.tmp / f"n{i}.conf"

    def log(self, i: int) -> Path:
        return self.tmp / f"n{i}.log"

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.client_ports]

    def url(self, i: int) -> str:
        return self.urls[i]

    def start(self, timeout_s: float = 60.0) -> None:
        for i in range(self.size):
            self.start_node(i)
        self.wait_formed(timeout_s)

    def start_node(self, i: int) -> None:
        with self.log(i).open("ab") as out:
            self.procs[i] = subprocess.Popen(
                [self.binary, "-c", str(self.config(i))], stdout=out, stderr=subprocess.STDOUT
            )

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its JetStream store stays for a restart)."""
        proc, self.procs[i] = self.procs[i], None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        for i, proc in enumerate(self.procs):
            self.procs[i] = None
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def jsz(self, i: int) -> dict[str, object] | None:
        """Node ``i``'s ``/jsz`` monitoring answer (None while it does not answer)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.monitor_ports[i]}/jsz", timeout=2
            ) as resp:
                data: dict[str, object] = json.loads(resp.read())
                return data
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def node_of(self, client_name: str) -> int | None:
        """The node the client named ``client_name`` is connected to (``/connz``)."""
        for i, proc in enumerate(self.procs):
            if proc is None:
                continue
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.monitor_ports[i]}/connz?limit=1024", timeout=2
                ) as resp:
                    conns = json.loads(resp.read()).get("connections") or []
            except (OSError, urllib.error.URLError, ValueError):
                continue
            if any(c.get("name") == client_name for c in conns):
                return i
        return None

    def meta_leader(self, i: int) -> str | None:
        data = self.jsz(i)
        meta = data.get("meta_cluster") if data else None
        if not isinstance(meta, dict):
            return None
        leader = meta.get("leader")
        replicas = meta.get("replicas") or []
        # The leader's own answer lists the other peers; every node must see them current.
        if not leader or meta.get("cluster_size") != self.size:
            return None
        if isinstance(replicas, list) and any(not r.get("current") for r in replicas):
            return None
        return str(leader)

    def wait_formed(self, timeout_s: float = 60.0) -> None:
        """Until every running node agrees on one JetStream meta leader."""
        deadline = time.monotonic() + timeout_s
        while True:
            running = [i for i, p in enumerate(self.procs) if p is not None]
            for i in running:
                proc = self.procs[i]
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"nats n{i} exited: {self.log(i).read_text()[-2000:]}")
            leaders = {self.meta_leader(i) for i in running}
            if len(leaders) == 1 and None not in leaders:
                return
            if time.monotonic() > deadline:
                tails = {i: self.log(i).read_text()[-1500:] for i in running}
                raise AssertionError(f"nats cluster did not form ({leaders}): {tails}")
            time.sleep(0.2)


class RiskmonProcess:
    """``python -m monitor <command> --config <file>`` with its JSON logs in a file.

    Given ``--listen 127.0.0.1:0``; :attr:`url` is the address it logs.
    Logs go to a file, not a pipe, so a long run never blocks on a full pipe.
    """

    def __init__(self, command: str, config: Path, log: Path, *, ready_msg: str) -> None:
        self.log = log
        argv = [sys.executable, "-m", "monitor", command, "--config", str(config)]
        argv += ["--listen", "127.0.0.1:0"]
        with log.open("ab") as out:
            # faulthandler: a process that will not stop is aborted with its stacks logged.
            env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=out, env=env)
        self.url = ""
        self._wait_for(ready_msg)

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a traceback line of a crash: the file shows it whole
        return out

    def _wait_for(self, msg: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("msg") == msg:
                    self.url = str(record.get("listen", ""))
                    return
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"exited {self.proc.returncode}: {self.log.read_text()[-3000:]}"
                )
            time.sleep(0.1)
        raise AssertionError(f"no {msg!r} within {timeout_s}s: {self.log.read_text()[-3000:]}")

    def get_json(self, path: str) -> dict[str, Any] | None:
        """The JSON at ``path``, None while it answers otherwise (503 before a snapshot)."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                data: dict[str, Any] = json.loads(resp.read())
                return data
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # riskmon logs its tasks' stacks
                time.sleep(1.0)
                self.proc.send_signal(signal.SIGABRT)  # the threads' stacks
                self.proc.wait(timeout=5)
                raise AssertionError(
                    f"did not stop within 45 s: {self.log.read_text()[-12000:]}"
                ) from None
        return self.proc.returncode


async def publish(servers: list[str], events: list[Event], name: str = "test-publisher") -> float:
    """Publish ``events`` as ``riskmon ingest`` does (same subjects, acks, retries);
    returns the seconds it took."""
    cfg = ClusterConfig(servers=tuple(servers))
    nc = await connect(cfg, name)
    started = time.perf_counter()
    try:
        js = nc.jetstream()
        await declare_streams(js, cfg, replicas_for(cfg, nc))
        sink = JetStreamSink(js, cfg)
        for ev in events:
            await sink.put(ev, name)
    finally:
        await close(nc)
    return time.perf_counter() - started
