"""The dispatcher: from the engine's transitions to every notifier, nothing lost.

``submit()`` is what the engine calls, synchronously, with the transitions of one
evaluation. It logs them (the log notifier: always, no outbox), then for each configured
notifier that wants them writes them to that notifier's outbox (durable when ``submit``
returns) and wakes its delivery task. It never awaits and never raises for an I/O error.

``run()`` owns one delivery task per notifier (``riskmon.notify[webhook]``, ...) in a
TaskGroup. Each task opens a session, delivers its outbox oldest first, one transition at
a time, and removes a transition's file only once the receiver acknowledged it; any
failure other than a permanent refusal closes the session and retries the same transition
after a capped, jittered backoff. Tasks are independent: a receiver that is down holds up
only its own queue; the engine never waits for any of them.

Cancelling ``run()`` (daemon shutdown) interrupts deliveries in flight; what was not
acknowledged stays in the outbox and a new dispatcher on the same directory delivers it
first. A delivery interrupted after the receiver got it is sent again: at least once per
notifier, exactly once per idempotency key for a receiver that dedups on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

from monitor.model.alert import Transition
from monitor.model.backoff import Backoff
from monitor.notify.alertmanager import AlertmanagerNotifier
from monitor.notify.base import Notifier, PermanentDeliveryError, RetryableDeliveryError
from monitor.notify.config import AlertsConfig
from monitor.notify.mqtt import MqttNotifier
from monitor.notify.outbox import DEFAULT_MAX_PENDING, Outbox, OutboxEntry
from monitor.notify.webhook import WebhookNotifier

__all__ = ["LOG_NOTIFIER", "AlertDispatcher", "NotifierStats"]

log = logging.getLogger("riskmon.notify")

#: Name of the always-on log notifier in :attr:`AlertDispatcher.stats`.
LOG_NOTIFIER: Final = "log"
#: First retry delay, seconds (then doubling up to the notifier's ``max_backoff``).
INITIAL_BACKOFF_S: Final = 0.5


@dataclass(slots=True)
class NotifierStats:
    """Activity of one notifier since start, plain ints for the metrics collector.

    Attributes
    ----------
    submitted
        Transitions queued for it (after ``wants``; a key already pending is not re-queued).
    delivered
        Transitions the receiver acknowledged.
    failed
        Transitions the receiver refused for good (dropped, logged).
    retries
        Failed attempts (a delivery, or opening a connection) that will be retried: a
        receiver that is down keeps this moving.
    dropped
        Oldest pending transitions removed because the outbox was full (never delivered).
    write_errors
        Transitions that could not be persisted (kept in memory only).
    corrupt
        Unreadable outbox files set aside (``.corrupt-*``) when the outbox was loaded.
    pending
        Transitions waiting in the outbox now (a gauge).
    connected
        A gauge: false from a failure until the session is open again (backoff, reconnect).
        For MQTT it is the broker connection; the HTTP notifiers connect per request, so
        for them it only says they are not waiting to retry. Alert on ``pending`` staying
        above zero and on ``retries`` moving rather than on this. The log is always true.
    last_error
        The last failure, for ``/-/ready``-style status and logs.
    """

    submitted: int = 0
    delivered: int = 0
    failed: int = 0
    retries: int = 0
    dropped: int = 0
    write_errors: int = 0
    corrupt: int = 0
    pending: int = 0
    connected: bool = False
    last_error: str | None = None


@dataclass(slots=True)
class _Lane:
    notifier: Notifier
    outbox: Outbox
    stats: NotifierStats
    wake: asyncio.Event

    def refresh(self) -> None:
        self.stats.pending = len(self.outbox)
        self.stats.dropped = self.outbox.dropped
        self.stats.write_errors = self.outbox.write_errors
        self.stats.corrupt = self.outbox.corrupt


class AlertDispatcher:
    """Fans transitions out to the log and to every notifier, through their outboxes.

    Parameters
    ----------
    notifiers
        The notifiers besides the log; names must be distinct.
    outbox
        Directory holding one subdirectory per notifier; required when ``notifiers`` is
        not empty. Pending transitions found there are loaded now and delivered first.
    max_pending
        Outbox cap per notifier (see :mod:`monitor.notify.outbox`).
    rng
        Randomness of the backoff jitter (tests pass a seeded one).
    initial_backoff_s
        First retry delay; later ones double up to each notifier's ``max_backoff_s``.
    """

    def __init__(
        self,
        notifiers: Sequence[Notifier] = (),
        outbox: Path | None = None,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        rng: random.Random | None = None,
        initial_backoff_s: float = INITIAL_BACKOFF_S,
    ) -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names) or LOG_NOTIFIER in names:
            raise ValueError(f"notifier names must be distinct and not {LOG_NOTIFIER!r}")
        if notifiers and outbox is None:
            raise ValueError("an outbox directory is required with a notifier")
        self._rng = rng if rng is not None else random.Random()
        self._initial_backoff_s = initial_backoff_s
        self._log_stats = NotifierStats(connected=True)
        self._lanes: list[_Lane] = []
        self._writer: ThreadPoolExecutor | None = None
        self._writing: set[asyncio.Future[list[OutboxEntry]]] = set()
        for n in notifiers:
            assert outbox is not None
            box = Outbox(outbox / n.name, n.name, max_pending=max_pending)
            loaded = box.load()
            if loaded:
                log.info(
                    "outbox: alert transitions pending from a previous run",
                    extra={"notifier": n.name, "pending": len(loaded)},
                )
            lane = _Lane(n, box, NotifierStats(), asyncio.Event())
            lane.refresh()
            if loaded:
                lane.wake.set()
            self._lanes.append(lane)

    @classmethod
    def from_config(
        cls,
        cfg: AlertsConfig,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        rng: random.Random | None = None,
    ) -> AlertDispatcher:
        """The notifiers ``[alerts]`` configures, with their outboxes under ``outbox``."""
        notifiers: list[Notifier] = []
        if cfg.webhook is not None:
            notifiers.append(WebhookNotifier.from_config(cfg.webhook))
        if cfg.mqtt is not None:
            notifiers.append(MqttNotifier.from_config(cfg.mqtt))
        if cfg.alertmanager is not None:
            notifiers.append(AlertmanagerNotifier.from_config(cfg.alertmanager))
        outbox = Path(cfg.outbox) if cfg.outbox is not None else None
        return cls(notifiers, outbox, max_pending=max_pending, rng=rng)

    # -- read by metrics and status ----------------------------------------------------------

    @property
    def stats(self) -> Mapping[str, NotifierStats]:
        """``notifier name -> stats``, the log notifier (``"log"``) first."""
        return {
            LOG_NOTIFIER: self._log_stats,
            **{ln.notifier.name: ln.stats for ln in self._lanes},
        }

    @property
    def notifiers(self) -> Sequence[Notifier]:
        return [ln.notifier for ln in self._lanes]

    def pending(self, notifier: str) -> list[Transition]:
        """What waits in one notifier's outbox, oldest first."""
        for ln in self._lanes:
            if ln.notifier.name == notifier:
                return [e.transition for e in ln.outbox]
        raise KeyError(notifier)

    # -- the engine's side ---------------------------------------------------------------------

    def submit(self, transitions: Sequence[Transition]) -> None:
        """Log ``transitions`` and queue them durably for every notifier; never blocks.

        On the event loop (the daemon) the outbox files are written and ``fsync``-ed on the
        dispatcher's writer thread, in submission order, so an alert burst never stalls
        evaluation; a notifier delivers a transition once its file is durable. Without a
        running loop (a script, a replay) they are written before this returns.
        """
        if not transitions:
            return
        for t in transitions:
            _log_transition(t)
            self._log_stats.submitted += 1
            self._log_stats.delivered += 1
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        for lane in self._lanes:
            wanted = [t for t in transitions if lane.notifier.wants(t)]
            if not wanted:
                continue
            if loop is None:
                self._queued(lane, lane.outbox.add(wanted))
                continue
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="riskmon.outbox")
            fut = loop.run_in_executor(self._writer, lane.outbox.add, wanted)
            self._writing.add(fut)
            fut.add_done_callback(partial(self._written, lane))

    def _written(self, lane: _Lane, fut: asyncio.Future[list[OutboxEntry]]) -> None:
        self._writing.discard(fut)
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:  # add() handles I/O errors itself: this is a bug, say so
            log.error("outbox writer failed", exc_info=exc, extra={"notifier": lane.notifier.name})
            return
        self._queued(lane, fut.result())

    def _queued(self, lane: _Lane, added: list[OutboxEntry]) -> None:
        lane.stats.submitted += len(added)
        lane.refresh()
        if added:
            lane.wake.set()

    async def flush(self) -> None:
        """Wait until every submitted transition is in its outbox (durable and queued)."""
        while self._writing:
            await asyncio.gather(*list(self._writing), return_exceptions=True)

    def close(self) -> None:
        """Finish the outbox writes already submitted (at shutdown)."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    # -- delivery ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver until cancelled: one named task per notifier, owned by a TaskGroup."""
        async with asyncio.TaskGroup() as tg:
            for lane in self._lanes:
                tg.create_task(self._deliver(lane), name=f"riskmon.notify[{lane.notifier.name}]")

    async def _deliver(self, lane: _Lane) -> None:
        notifier, stats = lane.notifier, lane.stats
        backoff = Backoff(
            initial=min(self._initial_backoff_s, notifier.max_backoff_s),
            cap=notifier.max_backoff_s,
            rng=self._rng,
        )
        delays = backoff.delays()
        while True:
            try:
                async with notifier.session() as session:
                    stats.connected = True
                    while True:
                        due = await session.maintain()
                        entry = lane.outbox.head()
                        if entry is None:
                            lane.wake.clear()
                            await _wait(lane.wake, due)
                            continue
                        try:
                            await session.deliver(entry.transition)
                        except PermanentDeliveryError as exc:
                            stats.failed += 1
                            stats.last_error = f"{type(exc).__name__}: {exc}"
                            _log_refused(notifier.name, entry, exc)
                        else:
                            stats.delivered += 1
                        lane.outbox.ack(entry)
                        lane.refresh()
                        delays = backoff.delays()  # a working receiver resets the schedule
            except asyncio.CancelledError:
                stats.connected = False
                raise
            except Exception as exc:
                cause = _root(exc)
                stats.connected = False
                stats.retries += 1
                stats.last_error = f"{type(cause).__name__}: {cause}"
                delay = next(delays)
                if isinstance(cause, RetryableDeliveryError) and cause.retry_after is not None:
                    delay = max(delay, min(cause.retry_after, notifier.max_backoff_s))
                log.warning(
                    "alert delivery to %s failed; retrying in %.2fs",
                    notifier.name,
                    delay,
                    extra={
                        "notifier": notifier.name,
                        "error": stats.last_error,
                        "pending": len(lane.outbox),
                    },
                )
                await asyncio.sleep(delay)


def _root(exc: Exception) -> Exception:
    """The first real error inside the ExceptionGroup a session's own TaskGroup raises."""
    while isinstance(exc, ExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _wait(event: asyncio.Event, timeout_s: float | None) -> None:
    if timeout_s is None:
        await event.wait()
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def _log_transition(t: Transition) -> None:
    a = t.alert
    level = logging.WARNING if a.state == "firing" else logging.INFO
    log.log(
        level,
        "alert %s %s -> %s: %s",
        a.key,
        t.previous,
        a.state,
        a.summary,
        extra={
            "alert_key": t.idempotency_key,
            "rule": a.rule,
            "severity": a.severity,
            "state": a.state,
            "previous": t.previous,
            "account": a.account,
            "underlying": a.underlying,
            "value": a.value,
            "threshold": a.threshold,
        },
    )


def _log_refused(notifier: str, entry: OutboxEntry, exc: Exception) -> None:
    log.error(
        "alert transition refused by %s; dropped",
        notifier,
        extra={"notifier": notifier, "alert_key": entry.key, "error": str(exc)},
    )
