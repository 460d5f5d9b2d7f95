"""What ``riskmon ingest`` serves: ``/metrics``, ``/-/healthy``, ``/-/ready``.

Metrics (name, type, labels)::

    riskmon_ingest_published_total             counter   type   events stored by JetStream
    riskmon_ingest_duplicates_total            counter          publishes JetStream had
                                                                 already stored (Nats-Msg-Id)
    riskmon_ingest_publish_retries_total       counter          account events re-published
    riskmon_ingest_dropped_prices_total        counter          prices not published
    riskmon_ingest_rejected_events_total       counter          inputs the connectors refused
    riskmon_ingest_last_publish_timestamp_seconds gauge         wall clock of the last ack
    riskmon_connector_up                       gauge     connector, kind
    riskmon_connector_messages_total           counter   connector
    riskmon_connector_reconnects_total         counter   connector

``type`` is the event type (``price``, ``position``, ``account``, ``instrument``). Ready
once every connector has delivered an event and JetStream has acknowledged one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from connectors.nats.jetstream import PublishStats
from monitor.model.health import ConnectorStatus

__all__ = ["IngestCollector", "IngestServer"]

_log = logging.getLogger(__name__)


class IngestCollector(Collector):
    def __init__(self, stats: PublishStats, connectors: Sequence[ConnectorStatus]) -> None:
        self._stats = stats
        self._connectors = connectors

    def collect(self) -> Iterator[Metric]:
        st = self._stats
        published = CounterMetricFamily(
            "riskmon_ingest_published", "Events stored by JetStream.", labels=["type"]
        )
        for kind, n in sorted(st.published.items()):
            published.add_metric([kind], n)
        yield published
        for name, value, doc in (
            ("duplicates", st.duplicates, "Publishes JetStream had already stored."),
            ("publish_retries", st.retries, "Account events published again."),
            ("dropped_prices", st.dropped_prices, "Prices not published."),
            ("rejected_events", st.rejected, "Inputs the connectors refused."),
        ):
            yield CounterMetricFamily(f"riskmon_ingest_{name}", doc, value=value)
        if st.last_publish_s is not None:
            yield GaugeMetricFamily(
                "riskmon_ingest_last_publish_timestamp_seconds",
                "Wall clock of the last acknowledged publish.",
                value=st.last_publish_s,
            )
        up = GaugeMetricFamily(
            "riskmon_connector_up", "1 while connected.", labels=["connector", "kind"]
        )
        messages = CounterMetricFamily(
            "riskmon_connector_messages", "Messages received.", labels=["connector"]
        )
        reconnects = CounterMetricFamily(
            "riskmon_connector_reconnects", "Reconnects.", labels=["connector"]
        )
        for c in self._connectors:
            up.add_metric([c.name, c.kind], 1.0 if c.connected else 0.0)
            messages.add_metric([c.name], c.messages)
            reconnects.add_metric([c.name], c.reconnects)
        yield from (up, messages, reconnects)


class IngestServer:
    """The ingest's HTTP endpoints on ``host:port`` (port 0: a free one, logged)."""

    def __init__(
        self, stats: PublishStats, connectors: Sequence[ConnectorStatus], host: str, port: int
    ) -> None:
        self._stats = stats
        self._connectors = connectors
        self._registry = CollectorRegistry()
        self._registry.register(IngestCollector(stats, connectors))
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Bind and serve. Raises ``OSError`` when the address is taken."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/-/healthy", self._healthy)
        app.router.add_get("/-/ready", self._ready)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        _log.info("HTTP listening on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self._registry), headers={"Content-Type": content_type})

    async def _healthy(self, request: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def _ready(self, request: web.Request) -> web.Response:
        missing = [f"connector {c.name!r} has not delivered an event" for c in self._connectors]
        missing = [m for m, c in zip(missing, self._connectors, strict=True) if not c.delivered]
        if self._stats.last_publish_s is None:
            missing.append("nothing published yet")
        return web.json_response(
            {"ready": not missing, "missing": missing}, status=503 if missing else 200
        )
