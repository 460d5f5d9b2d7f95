"""``riskmon ingest``: run the configured connectors and publish their events to JetStream.

The ingest role of a cluster (README "Running a cluster"): no engine, no evaluation. Each
connector writes into a :class:`connectors.nats.jetstream.JetStreamSink`, which publishes
every event on its subject and waits for JetStream's acknowledgement (account events are
retried until stored, prices dropped on failure: the next tick supersedes them). A
connector that fails is restarted with capped, jittered backoff. SIGTERM stops it after
the publish in flight, with exit code 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Final

from connectors import build_connector
from connectors.base import Connector, cancel_until_done, supervise
from connectors.nats.config import ClusterConfig
from connectors.nats.jetstream import (
    JetStreamSink,
    PublishStats,
    close,
    connect,
    declare_streams,
    replicas_for,
)
from monitor.config import Config
from monitor.logs import log_task_stacks
from monitor.model.backoff import Backoff
from monitor.model.health import ConnectorStatus
from monitor.serve.ingest import IngestServer

__all__ = ["Ingest"]

log = logging.getLogger("riskmon")

#: How often the ingest logs what it published.
_REPORT_S: Final = 30.0


class Ingest:
    """Connectors -> JetStream."""

    def __init__(self, cfg: Config, cluster: ClusterConfig) -> None:
        self.cfg = cfg
        self.cluster = cluster
        self.connectors: list[Connector] = [build_connector(c) for c in cfg.connectors]
        self.sink: JetStreamSink | None = None
        self.stats = PublishStats()
        self._backoff = Backoff(initial=1.0, cap=30.0)

    async def run(self, stop: asyncio.Event) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_task_stacks)
        statuses = {c.status.name: c.status for c in self.connectors}
        http = IngestServer(
            self.stats, list(statuses.values()), self.cfg.server.host, self.cfg.server.port
        )
        await http.start()  # /-/healthy answers while NATS is still out of reach
        try:
            await self._publish(stop, statuses, http.url)
        finally:
            await http.stop()
        log.info("stopped", extra={"published": self.stats.published})

    async def _publish(
        self, stop: asyncio.Event, statuses: dict[str, ConnectorStatus], url: str
    ) -> None:
        nc = await connect(self.cluster, "riskmon-ingest")
        try:
            js = nc.jetstream(timeout=self.cluster.publish_timeout.seconds)
            replicas = replicas_for(self.cluster, nc)
            await declare_streams(js, self.cluster, replicas)
            self.sink = sink = JetStreamSink(js, self.cluster, stats=self.stats, statuses=statuses)
            log.info(
                "riskmon ingest publishing",
                extra={
                    "listen": url,
                    "connectors": list(statuses),
                    "replicas": replicas,
                    "prefix": self.cluster.subject_prefix,
                },
            )
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(
                        supervise(c, sink, self._backoff, log),
                        name=f"riskmon.ingest[{c.status.name}]",
                    )
                    for c in self.connectors
                ]
                tasks.append(tg.create_task(self._report(sink), name="riskmon.ingest.report"))
                await stop.wait()
                log.info("stopping")
                await cancel_until_done(tasks)
        finally:
            await close(nc)

    async def _report(self, sink: JetStreamSink) -> None:
        while True:
            await asyncio.sleep(_REPORT_S)
            st = sink.stats
            log.info(
                "published",
                extra={
                    "published": dict(st.published),
                    "duplicates": st.duplicates,
                    "retries": st.retries,
                    "dropped_prices": st.dropped_prices,
                    "last_publish_age_s": (
                        None if st.last_publish_s is None else time.time() - st.last_publish_s
                    ),
                },
            )
