"""The live daemon: connectors -> queue -> engine -> snapshot -> HTTP/metrics.

Every long-lived task is owned by one ``asyncio.TaskGroup`` and named
(``riskmon.engine``, ``riskmon.connector[deribit]``) so a stack dump says what it is.
Shutdown (SIGTERM/SIGINT) cancels them in order, flushes the recorder and saves the
engine's state (``[state]``, restored at the next start); events the engine had accepted
are in its state or the recording, never half-applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from connectors import build_connector
from connectors.base import Connector, cancel_until_done, supervise
from monitor.config import Config
from monitor.engine.core import Engine, SettingsChanged
from monitor.engine.queue import EventQueue
from monitor.engine.record import Recorder
from monitor.engine.sources import IndexSources
from monitor.engine.state import RestoreResult, StateStore, encode_state
from monitor.engine.stats import EngineStats
from monitor.engine.whatif import Trade, run_whatif
from monitor.heap import HeapFreezer
from monitor.logs import RejectionLog, log_task_stacks
from monitor.model.alert import Transition
from monitor.model.backoff import Backoff
from monitor.model.episode import Episode
from monitor.model.events import Event, Reason, Rejected
from monitor.model.health import ConnectorStatus, SinkLag
from monitor.model.settings import read_secret_file
from monitor.model.snapshot import RiskSnapshot
from monitor.notify import AlertDispatcher, NotifierStats
from monitor.quant.margin import cancellable
from monitor.rules.pack import build_rules, rule_engine
from monitor.serve.cluster import ClusterCollector
from monitor.serve.http import HttpServer
from monitor.serve.metrics import build_registry
from monitor.settings import engine_settings, risk_settings

__all__ = ["Daemon", "engine_settings", "risk_settings", "sd_notify"]

log = logging.getLogger("riskmon")

#: Alert transitions the live daemon keeps for ``alert_history`` (each also went to the
#: notifiers and the log; this is only the in-memory view).
_HISTORY_LIMIT = 10_000


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


_P = ParamSpec("_P")
_T = TypeVar("_T")


class _ScenarioExecutor(Executor):
    """One worker thread for the scenario pass, whose jobs run cancellable
    (:func:`monitor.quant.margin.cancellable`): :meth:`cancel` makes a pass in flight stop
    at its next check (raising :class:`monitor.quant.margin.Cancelled` into its future)
    and the jobs queued behind it not start, so a stopping daemon does not wait for a
    pass whose result it would discard (minutes, for a large book on a loaded machine)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="riskmon.scenarios")
        self._cancel = threading.Event()

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        if self._cancel.is_set():
            # The daemon stopped; its engine may still be evaluated (tests, tools): the
            # pass runs in the caller, as in a replay.
            done: Future[_T] = Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except Exception as exc:  # re-raised by the future's result
                done.set_exception(exc)
            return done
        return self._pool.submit(self._run, partial(fn, *args, **kwargs))

    def _run(self, job: Callable[[], _T]) -> _T:
        with cancellable(self._cancel):
            return job()

    def cancel(self) -> None:
        self._cancel.set()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=cancel_futures)


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
        wall_ms: Callable[[], int] = _wall_ms,
        state_store: StateStore | None = None,
    ) -> None:
        """``connectors`` defaults to those ``cfg.connectors`` describes.

        ``wall_ms``: the wall clock (epoch ms) the engine is evaluated on and the saved
        state is dated by (tests make it jump). ``state_store``: where the state is saved
        (default: ``[state]``'s directory, if any).
        """
        self.cfg = cfg
        self._wall_ms = wall_ms
        self._recorder = Recorder(record_path) if record_path is not None else None
        # The scenario pass (full-revaluation VaR, scenario margin) runs here so a large
        # option book does not stall the engine loop; numpy releases the GIL for it.
        self._scenario_pool = _ScenarioExecutor()
        self._heap = HeapFreezer()
        # Cluster mode: shard handovers the engine applies between a drain and an
        # evaluation, in order; accounts whose alerts moved (their episodes to publish).
        self._handovers: deque[tuple[Callable[[], None], asyncio.Future[None]]] = deque()
        self._alerted: set[str] = set()
        cluster = None
        if connectors is None and cfg.cluster is not None:
            # Cluster mode: the engine reads JetStream; [[connectors]] are the ingest's.
            from connectors.nats.source import ClusterSource

            cluster = ClusterSource(cfg.cluster, self)
            connectors = [cluster]
        self._connectors: list[Connector] = (
            list(connectors)
            if connectors is not None
            else [build_connector(c) for c in cfg.connectors]
        )
        self._status: dict[str, ConnectorStatus] = {
            c.status.name: c.status for c in self._connectors
        }
        self._lag = SinkLag(self._status.values())
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
        self._cluster = cluster
        self.registry, registry_metrics = build_registry(self)
        if cluster is not None:
            self.registry.register(ClusterCollector(cluster))
        self.engine.set_evaluation_observer(registry_metrics.observe)
        self._queue = EventQueue(cfg.engine.queue_size)
        self._reject_log = RejectionLog(log)
        self._started_s = time.time()
        self._restart_backoff = Backoff(initial=1.0, cap=30.0)
        self.alerts = AlertDispatcher.from_config(cfg.alerts)
        self.engine.set_alert_sink(lambda: self.connectors, self._on_transitions)
        directory = cfg.state.directory(os.environ)
        self._state = (
            state_store
            if state_store is not None
            else None
            if directory is None
            else StateStore(directory)
        )
        self._clock_back_logged = False
        self._evaluated_at_s = 0.0
        if self._state is not None:
            self._restore_state(self._state)
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
        self._lag.note(event, source)
        await self._queue.put(event, source)

    def reject(self, source: str, rejected: Rejected) -> None:
        self.engine.reject(source, rejected)
        self._reject_log(source, rejected.reason.value, rejected.detail)

    def _on_transitions(self, moves: Sequence[Transition]) -> None:
        self.alerts.submit(moves)
        if self._cluster is not None:
            self._alerted.update(t.alert.account for t in moves if t.alert.account is not None)

    # -- cluster mode (connectors.nats.source.EngineLink) -------------------------------

    def _handover(self, apply: Callable[[], None]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._handovers.append((apply, done))
        return done

    async def drop_accounts(self, accounts: Collection[str]) -> None:
        """Remove ``accounts`` from the engine (their shard moved to another daemon);
        returns once applied, after every event queued before the call."""

        def apply() -> None:
            for account in accounts:
                self.engine.drop_account(account)
            self.alerts.forget_accounts(accounts)

        await self._handover(apply)

    def adopt_episodes(self, episodes: Sequence[Episode]) -> asyncio.Future[None]:
        """Continue alert episodes another daemon began; applied after the events queued
        before this call and before the next evaluation (done when the future is)."""
        return self._handover(lambda: self.engine.adopt_alert_episodes(episodes))

    def alert_episodes(self, account: str) -> list[Episode]:
        return self.engine.alert_episodes(account)

    def take_alerted_accounts(self) -> set[str]:
        """Accounts whose alerts moved since the last call."""
        out, self._alerted = self._alerted, set()
        return out

    def _apply_handovers(self) -> None:
        while self._handovers:
            apply, done = self._handovers.popleft()
            try:
                apply()
            except Exception:  # a bug must cost this handover, not the engine
                log.exception("engine failed to apply a shard handover")
            if not done.done():
                done.set_result(None)

    # -- saved state --------------------------------------------------------------------

    def _restore_state(self, store: StateStore) -> None:
        """Restore the engine from the saved state when it is usable; never fails start."""
        now = self._wall_ms()
        loaded = store.load(now, int(self.cfg.state.max_age))
        result = loaded.result
        if loaded.engine is not None:
            try:
                self.engine.restore(loaded.engine)
            except SettingsChanged as exc:
                result, detail = RestoreResult.SETTINGS, str(exc)
            except Exception as exc:  # start never fails because of a saved state
                result, detail = RestoreResult.CORRUPT, f"{type(exc).__name__}: {exc}"
        else:
            detail = loaded.detail
        self.engine.stats.state_restore = result.value
        if result is RestoreResult.RESTORED:
            assert loaded.saved_ms is not None
            log.info(
                "state restored",
                extra={
                    "path": str(store.path),
                    "age_seconds": round((now - loaded.saved_ms) / 1000.0, 3),
                    "returns": self.engine.estimator.returns.tolist(),
                },
            )
        elif result is RestoreResult.ABSENT:
            log.info("no saved state; starting cold", extra={"path": str(store.path)})
        else:
            log.warning(
                "saved state ignored (%s): %s; starting cold",
                result.value,
                detail,
                extra={"path": str(store.path), "result": result.value},
            )

    def save_state(self, store: StateStore) -> bool:
        """Save the engine's state now (on the engine's loop); False when it failed."""
        blob = self._take_state()
        return blob is not None and self._write_state(store, blob)

    def _take_state(self) -> bytes | None:
        try:
            return encode_state(self.engine.state(), self._wall_ms())
        except Exception:  # a bug must cost a save, not the daemon
            self.engine.stats.state_writes["error"] += 1
            log.exception("taking the engine's state failed; not saved")
            return None

    def _write_state(self, store: StateStore, blob: bytes) -> bool:
        try:
            store.save(blob)
        except OSError as exc:
            return self._saved(store, exc)
        return self._saved(store, None)

    def _saved(self, store: StateStore, exc: OSError | None) -> bool:
        """Count and log a save's outcome (on the engine's loop: stats have one writer)."""
        stats = self.engine.stats
        if exc is not None:
            stats.state_writes["error"] += 1
            log.warning(
                "saving the state failed: %s; the previous save is kept",
                exc.strerror or exc,
                extra={"path": str(store.path)},
            )
            return False
        stats.state_writes["ok"] += 1
        stats.state_saved_s = time.time()
        return True

    async def _state_loop(self, store: StateStore) -> None:
        """Save the state every ``[state] interval``: taken on the loop (consistent), written
        and fsynced on a worker thread (the engine goes on meanwhile)."""
        interval_s = self.cfg.state.interval / 1000.0
        while True:
            await asyncio.sleep(interval_s)
            blob = self._take_state()
            if blob is None:
                continue
            try:
                await asyncio.to_thread(store.save, blob)
            except OSError as exc:
                self._saved(store, exc)
            else:
                self._saved(store, None)

    # -- tasks --------------------------------------------------------------------------

    async def _engine_loop(self) -> None:
        engine, queue = self.engine, self._queue
        route = self.index_sources.route
        step = engine.settings.eval_interval_ms
        engine.evaluate_due(self._wall_ms())  # starts the evaluation clock
        flushed_s = time.monotonic()
        while True:
            wait_s = max(0.0, (engine.next_evaluation_ms + 1 - self._wall_ms()) / 1000.0)
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
            self._apply_handovers()
            engine.stats.conflated = queue.conflated
            engine.stats.queue_depth = len(queue)
            if self._recorder is not None and time.monotonic() - flushed_s >= 1.0:
                # A killed daemon loses at most about a second of its recording.
                self._recorder.flush()
                flushed_s = time.monotonic()
            try:
                self._evaluate(self._wall_ms())
            except Exception:
                engine.stats.evaluation_errors += 1
                log.exception("evaluation failed; the previous snapshot stays published")
            frozen = self._heap.after_evaluation(len(engine.registry))
            if frozen is not None:
                log.info(
                    "heap: %d long-lived objects out of the cyclic collector's full passes "
                    "(%d instruments)",
                    frozen,
                    len(engine.registry),
                )
            # An evaluation slower than eval_interval leaves the next one due at once and
            # queue.wait() then returns without awaiting: yield, or HTTP, connectors,
            # cluster leases and the stop signal would starve.
            await asyncio.sleep(0)

    def _evaluate(self, now_ms: int) -> None:
        """Evaluate when due. A wall clock that went back (behind the evaluation clock by
        more than a step) does not stop evaluations: they go on as of the engine clock,
        which never goes back, until the wall clock catches up."""
        engine = self.engine
        step = engine.settings.eval_interval_ms
        if now_ms < engine.next_evaluation_ms - 2 * step:
            if not self._clock_back_logged:
                self._clock_back_logged = True
                log.warning(
                    "the wall clock went back %.1fs; evaluating as of the engine clock "
                    "until it catches up",
                    (engine.next_evaluation_ms - step - now_ms) / 1000.0,
                )
            if self._evaluated_at_s + step / 1000.0 <= time.monotonic():
                self._evaluated_at_s = time.monotonic()
                engine.evaluate(now_ms)
            return
        self._clock_back_logged = False
        if engine.evaluate_due(now_ms) is not None:
            self._evaluated_at_s = time.monotonic()

    async def _run_connector(self, connector: Connector) -> None:
        """Run one connector; a crash is logged and the connector restarted with backoff."""
        await supervise(connector, self, self._restart_backoff, log)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then shut down in order."""
        with contextlib.suppress(ValueError, RuntimeError):  # not the main thread (embedded)
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, log_task_stacks)
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
                if self._state is not None:
                    tasks.append(
                        tg.create_task(self._state_loop(self._state), name="riskmon.state")
                    )
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
                await cancel_until_done(tasks[::-1])
            if self._state is not None:
                self.save_state(self._state)  # the engine task has stopped: final state
        finally:
            # The engine has stopped: a pass in flight stops at its next check.
            self._scenario_pool.cancel()
            self._scenario_pool.shutdown(wait=True, cancel_futures=True)
            self.alerts.close()  # alert transitions already submitted reach their outbox
            await self.http.stop()
            if self._recorder is not None:
                self._recorder.close()
        log.info("stopped")


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (a second signal is ignored: shutdown is quick)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
