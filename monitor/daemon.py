"""The live daemon: connectors -> queue -> engine -> snapshot -> HTTP/metrics.

Every long-lived task is owned by one ``asyncio.TaskGroup`` and named
(``riskmon.engine``, ``riskmon.connector[deribit]``) so a stack dump says what it is.
Shutdown (SIGTERM/SIGINT) cancels them in order and flushes the recorder; events the
engine had accepted are in its state or the recording, never half-applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import msgspec

from connectors import build_connector
from connectors.base import Connector
from monitor.config import Config
from monitor.engine.actions import ActionSettings
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.engine.queue import EventQueue
from monitor.engine.record import Recorder
from monitor.engine.sources import IndexSources
from monitor.engine.stats import EngineStats
from monitor.engine.whatif import Trade, run_whatif
from monitor.logs import RejectionLog
from monitor.model.backoff import Backoff
from monitor.model.events import Event, Reason, Rejected
from monitor.model.health import ConnectorStatus
from monitor.model.settings import read_secret_file
from monitor.model.snapshot import RiskSnapshot
from monitor.notify import AlertDispatcher, NotifierStats
from monitor.quant.margin import (
    DEFAULT_CURRENCIES,
    DEFAULT_UNDERLYINGS,
    CurrencyParams,
    MarginSettings,
    Stress,
    UnderlyingParams,
)
from monitor.rules.pack import build_rules, rule_engine
from monitor.serve.http import HttpServer
from monitor.serve.metrics import build_registry

__all__ = ["Daemon", "engine_settings", "risk_settings", "sd_notify"]

log = logging.getLogger("riskmon")

#: Alert transitions the live daemon keeps for ``alert_history`` (each also went to the
#: notifiers and the log; this is only the in-memory view).
_HISTORY_LIMIT = 10_000


def engine_settings(cfg: Config) -> EngineSettings:
    """The engine's timing from ``[estimator]`` and ``[risk]``, its tick bound from ``[market]``."""
    e, r = cfg.estimator, cfg.risk
    return EngineSettings(
        sample_interval_ms=int(e.sample_interval),
        halflife_ms=int(e.halflife),
        fast_halflife_ms=int(e.fast_halflife),
        warmup_ms=int(e.warmup),
        max_gap_ms=int(e.max_gap),
        eval_interval_ms=int(r.eval_interval),
        max_tick_move=cfg.market.max_tick_move,
        var_halflife_ms=int(e.var_halflife),
    )


def risk_settings(cfg: Config) -> RiskSettings:
    """The evaluation's VaR, budget and regime settings from ``[risk]``."""
    r = cfg.risk
    return RiskSettings(
        var_confidence=r.var_confidence,
        var_horizon_ms=int(r.var_horizon),
        budgets=r.budgets,
        var_scenarios=r.var_scenarios,
        scenario_interval_ms=int(r.scenario_interval),
        regime_halflife_ms=int(r.regime_halflife),
        margin=_margin_settings(cfg),
        max_move=cfg.margin.max_move,
        recompute_distance=cfg.margin.recompute_distance,
        recompute_interval_ms=int(cfg.margin.recompute_interval),
        actions=ActionSettings(
            lookback_ms=int(cfg.actions.lookback),
            rebalance_method=cfg.actions.rebalance_method,
            rebalance_scale=cfg.actions.rebalance_scale,
            backtest_horizon_ms=int(cfg.actions.backtest_horizon),
            stress_correlation=cfg.actions.stress_correlation,
            stress_vol_scale=cfg.actions.stress_vol_scale,
            delta_limits={
                a: lim.delta_usd for a, lim in cfg.limits.items() if lim.delta_usd is not None
            },
        ),
    )


def _margin_settings(cfg: Config) -> MarginSettings:
    m = cfg.margin
    return MarginSettings(
        price_range=m.price_range,
        price_steps=m.price_steps,
        vol_range_up=m.vol_range_up,
        vol_range_down=m.vol_range_down,
        short_term_vega_power=m.short_term_vega_power,
        long_term_vega_power=m.long_term_vega_power,
        min_days=m.min_days,
        min_vol_shock_up=m.min_vol_shock_up,
        extended_moves=m.extended_moves,
        extended_weight=m.extended_weight,
        aggregation=m.aggregation,
        mm_factor=m.mm_factor,
        dampener=m.dampener,
        delta_shock_threshold=m.delta_shock_threshold,
        max_delta_shock=m.max_delta_shock,
        delta_shock_slope=m.delta_shock_slope,
        underlyings={
            **DEFAULT_UNDERLYINGS,
            **{
                u: replace(DEFAULT_UNDERLYINGS.get(u, UnderlyingParams()), **_given(o))
                for u, o in m.underlyings.items()
            },
        },
        currencies={
            **DEFAULT_CURRENCIES,
            **{
                c: replace(DEFAULT_CURRENCIES.get(c, CurrencyParams()), **_given(o))
                for c, o in m.currencies.items()
            },
        },
        stresses=tuple(
            Stress(s.name, dict(s.moves), s.default_move, s.vol_shift) for s in m.stresses
        ),
    )


def _given(section: msgspec.Struct) -> dict[str, Any]:
    """The keys of a per-underlying or per-currency margin table that were set."""
    return {
        name: getattr(section, name)
        for name in section.__struct_fields__
        if getattr(section, name) is not None
    }


def sd_notify(message: str) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd when ``NOTIFY_SOCKET`` is set."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            s.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)
        return False
    return True


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Daemon:
    """Runs connectors, the engine loop and the HTTP server until ``stop`` is set.

    Implements the ``EventSink`` connectors write to and the ``MonitorView`` that metrics
    and HTTP read.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        record_path: Path | None = None,
        connectors: Sequence[Connector] | None = None,
    ) -> None:
        """``connectors`` defaults to those ``cfg.connectors`` describes."""
        self.cfg = cfg
        self._recorder = Recorder(record_path) if record_path is not None else None
        # The scenario pass (full-revaluation VaR, scenario margin) runs here so a large
        # option book does not stall the engine loop; numpy releases the GIL for it.
        self._scenario_pool = ThreadPoolExecutor(1, thread_name_prefix="riskmon.scenarios")
        self._connectors: list[Connector] = (
            list(connectors)
            if connectors is not None
            else [build_connector(c) for c in cfg.connectors]
        )
        self._status: dict[str, ConnectorStatus] = {
            c.status.name: c.status for c in self._connectors
        }
        self.engine = Engine(
            engine_settings(cfg),
            risk=risk_settings(cfg),
            recorder=self._recorder,
            rules=rule_engine(cfg.rules, cfg.limits),
            history_limit=_HISTORY_LIMIT,
            scenario_executor=self._scenario_pool,
        )
        # Live only: a recording holds the routed events, so a replay needs no routing.
        self.index_sources = IndexSources(self.engine.registry, cfg.market.index_sources)
        self.registry, registry_metrics = build_registry(self)
        self.engine.set_evaluation_observer(registry_metrics.observe)
        self._queue = EventQueue(cfg.engine.queue_size)
        self._reject_log = RejectionLog(log)
        self._started_s = time.time()
        self._restart_backoff = Backoff(initial=1.0, cap=30.0)
        self.alerts = AlertDispatcher.from_config(cfg.alerts)
        self.engine.set_alert_sink(lambda: self.connectors, self.alerts.submit)
        self.http: HttpServer | None = None
        # Read at start, so a missing or world-readable token file stops it, clearly.
        self._token = (
            None
            if cfg.server.token_file is None
            else read_secret_file(cfg.server.token_file, "server.token_file")
        )

    # -- MonitorView --------------------------------------------------------------------

    @property
    def snapshot(self) -> RiskSnapshot | None:
        return self.engine.snapshot

    @property
    def stats(self) -> EngineStats:
        return self.engine.stats

    @property
    def connectors(self) -> Sequence[ConnectorStatus]:
        return list(self._status.values())

    @property
    def started_s(self) -> float:
        return self._started_s

    @property
    def notifiers(self) -> Mapping[str, NotifierStats]:
        return self.alerts.stats

    async def whatif(self, trades: Sequence[Trade]) -> dict[str, Any] | None:
        """``POST /api/v1/whatif``: the state is copied here, on the engine's loop; the two
        evaluations run on a worker thread, so the loop goes on meanwhile."""
        state = self.engine.whatif_state()
        if state is None:
            return None
        rules = partial(build_rules, self.cfg.rules, self.cfg.limits)
        job = partial(run_whatif, state, trades, rules)
        return await asyncio.get_running_loop().run_in_executor(None, job)

    # -- EventSink ----------------------------------------------------------------------

    async def put(self, event: Event, source: str) -> None:
        st = self._status.get(source)
        if st is not None:
            st.delivered = True
        await self._queue.put(event, source)

    def reject(self, source: str, rejected: Rejected) -> None:
        self.engine.reject(source, rejected)
        self._reject_log(source, rejected.reason.value, rejected.detail)

    # -- tasks --------------------------------------------------------------------------

    async def _engine_loop(self) -> None:
        engine, queue = self.engine, self._queue
        route = self.index_sources.route
        step = engine.settings.eval_interval_ms
        engine.evaluate_due(_wall_ms())  # starts the evaluation clock
        flushed_s = time.monotonic()
        while True:
            wait_s = max(0.0, (engine.next_evaluation_ms + 1 - _wall_ms()) / 1000.0)
            await queue.wait(min(wait_s, step / 1000.0))
            for received, source in queue.drain():
                try:
                    for event in route(received, source):
                        engine.apply(event, source)
                except Rejected as rej:
                    self.reject(source, rej)
                except Exception:  # a bug must cost one event, not the daemon
                    log.exception("engine failed to apply an event", extra={"source": source})
                    self.reject(source, Rejected(Reason.INTERNAL_ERROR, "engine error"))
            engine.stats.conflated = queue.conflated
            engine.stats.queue_depth = len(queue)
            if self._recorder is not None and time.monotonic() - flushed_s >= 1.0:
                # A killed daemon loses at most about a second of its recording.
                self._recorder.flush()
                flushed_s = time.monotonic()
            try:
                engine.evaluate_due(_wall_ms())
            except Exception:
                engine.stats.evaluation_errors += 1
                log.exception("evaluation failed; the previous snapshot stays published")

    async def _run_connector(self, connector: Connector) -> None:
        """Run one connector; a crash is logged and the connector restarted with backoff."""
        status = connector.status
        delays = self._restart_backoff.delays()
        while True:
            try:
                await connector.run(self)
                log.info("connector finished", extra={"connector": status.name})
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                status.connected = False
                status.last_error = f"{type(exc).__name__}: {exc}"
                delay = next(delays)
                log.exception(
                    "connector failed; restarting in %.1fs",
                    delay,
                    extra={"connector": status.name},
                )
                await asyncio.sleep(delay)
                status.reconnects += 1  # riskmon_connector_reconnects_total shows the flapping

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        server = self.cfg.server
        self.http = HttpServer(
            self,
            self.registry,
            server.listen,
            token=self._token,
            protect_metrics=server.protect_metrics,
            whatif=self.whatif,
        )
        await self.http.start()
        log.info(
            "riskmon listening",
            extra={"listen": self.http.url, "connectors": list(self._status)},
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._engine_loop(), name="riskmon.engine")]
                tasks.append(tg.create_task(self.alerts.run(), name="riskmon.notify"))
                for c in self._connectors:
                    tasks.append(
                        tg.create_task(
                            self._run_connector(c), name=f"riskmon.connector[{c.status.name}]"
                        )
                    )
                sd_notify("READY=1")
                await stop.wait()
                sd_notify("STOPPING=1")
                log.info("stopping")
                for t in reversed(tasks):
                    t.cancel()
        finally:
            self._scenario_pool.shutdown(wait=True, cancel_futures=True)
            await self.http.stop()
            if self._recorder is not None:
                self._recorder.close()
        log.info("stopped")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (a second signal is ignored: shutdown is quick)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
