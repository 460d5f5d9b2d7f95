"""Alertmanager notifier: the v2 API, ``POST <url>/api/v2/alerts``.

Alertmanager is state-based and idempotent by nature: an alert is identified by its label
set, and posting the same alert again only refreshes it. So only transitions that start or
end firing go to it (:meth:`AlertmanagerNotifier.wants`); ``pending`` does not.

An alert is posted as::

    {"labels": {"alertname": <rule>, "severity": ..., "account": ..., "underlying": ...,
                <the alert's extra labels>},
     "annotations": {"summary": ..., "value": ..., "threshold": ...},
     "startsAt": <when it started firing>, "endsAt": ...}

``account`` / ``underlying`` are left out when the alert has none. ``endsAt``:

- firing: wall clock now + 4 x ``resend_interval`` (as Prometheus does): the alert stays
  active while riskmon keeps re-sending it every ``resend_interval``, and expires on its
  own if riskmon stops (a crash, or a restart after which the rule no longer fires);
- resolved: the transition's time; Alertmanager then sends its resolved notification.

A severity change while firing changes the label set, so it is a new alert to
Alertmanager: the old severity is posted resolved in the same request.

Re-sends: every ``resend_interval`` all alerts this notifier knows to be firing are posted
again in one request. The set lives in memory (:attr:`AlertmanagerNotifier.active`),
updated when a delivery is acknowledged, so it reflects what Alertmanager was told. After a
restart it holds only what the outbox replays; an alert that keeps firing is posted again
when the rule engine fires it again (same labels, so the same Alertmanager alert).

Responses: ``2xx`` acknowledged; ``5xx``, ``408``, ``429`` and connection errors retried
with capped jittered backoff; other ``4xx`` (``400``: Alertmanager refused the alert)
dropped, logged and counted as failed (a refused re-send: logged, counted in
``resend_errors``, tried again at the next interval).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import aiohttp

from monitor import __version__
from monitor.model.alert import Alert, Transition
from monitor.model.events import iso_ms
from monitor.notify.base import PermanentDeliveryError, Session, check_http_response
from monitor.notify.config import AlertmanagerConfig

__all__ = ["AlertmanagerNotifier", "am_alert"]

log = logging.getLogger("riskmon.notify")

#: Firing alerts are valid for this many resend intervals (Prometheus uses 4 too).
VALID_FOR_RESENDS: Final = 4


def _fmt(x: float) -> str:
    return repr(float(x)) if math.isfinite(x) else "unknown"


def am_alert(alert: Alert) -> dict[str, Any]:
    """Labels, annotations and ``startsAt`` of one alert (``endsAt`` is added when sent)."""
    labels = {k: v for k, v in alert.labels.items() if v}
    labels["alertname"] = alert.rule
    labels["severity"] = alert.severity
    if alert.account is not None:
        labels["account"] = alert.account
    if alert.underlying is not None:
        labels["underlying"] = alert.underlying
    return {
        "labels": labels,
        "annotations": {
            "summary": alert.summary,
            "value": _fmt(alert.value),
            "threshold": _fmt(alert.threshold),
        },
        "startsAt": iso_ms(alert.since_ms),
    }


class AlertmanagerNotifier:
    """Posts firing and resolved alerts, and re-sends firing ones (see the module doc).

    ``clock`` gives wall-clock epoch seconds (``endsAt`` of firing alerts); ``monotonic``
    schedules the re-sends.
    """

    name: Final = "alertmanager"

    def __init__(
        self,
        url: str,
        *,
        resend_interval_s: float = 60.0,
        timeout_s: float = 5.0,
        max_backoff_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if resend_interval_s <= 0:
            raise ValueError("resend_interval_s must be positive")
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.resend_interval_s = resend_interval_s
        self.timeout_s = timeout_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._monotonic = monotonic
        #: ``Alert.key`` -> the alert as last posted firing (without ``endsAt``).
        self.active: dict[str, dict[str, Any]] = {}
        #: Re-send requests acknowledged, and refused for good (4xx other than 408/429).
        self.resends = 0
        self.resend_errors = 0
        self._next_resend: float | None = None

    @classmethod
    def from_config(cls, cfg: AlertmanagerConfig) -> AlertmanagerNotifier:
        return cls(
            cfg.url,
            resend_interval_s=cfg.resend_interval / 1000.0,
            timeout_s=cfg.timeout / 1000.0,
            max_backoff_s=cfg.max_backoff / 1000.0,
        )

    @property
    def max_backoff_s(self) -> float:
        return self._max_backoff_s

    def wants(self, transition: Transition) -> bool:
        return transition.alert.state == "firing" or transition.previous == "firing"

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        headers = {"User-Agent": f"riskmon/{__version__}"}
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            yield _AlertmanagerSession(self, http)

    def valid_until(self) -> str:
        """``endsAt`` of a firing alert posted now."""
        seconds = self._clock() + VALID_FOR_RESENDS * self.resend_interval_s
        return iso_ms(int(seconds * 1000))


class _AlertmanagerSession:
    def __init__(self, notifier: AlertmanagerNotifier, http: aiohttp.ClientSession) -> None:
        self._n = notifier
        self._http = http

    async def _post(self, alerts: list[dict[str, Any]]) -> None:
        body = json.dumps(alerts, separators=(",", ":")).encode()
        async with self._http.post(
            self._n.url,
            data=body,
            headers={"Content-Type": "application/json"},
            allow_redirects=False,
        ) as resp:
            text = await resp.text(errors="replace")
            check_http_response(resp.status, text, resp.headers.get("Retry-After"), "Alertmanager")

    async def deliver(self, transition: Transition) -> None:
        n, alert = self._n, transition.alert
        before = n.active.get(alert.key)
        ends = iso_ms(transition.ts_ms)
        if alert.state == "firing":
            now = am_alert(alert)
            posts = [{**now, "endsAt": n.valid_until()}]
            if before is not None and before["labels"] != now["labels"]:
                posts.insert(0, {**before, "endsAt": ends})
            await self._post(posts)
            n.active[alert.key] = now
            if n._next_resend is None:
                n._next_resend = n._monotonic() + n.resend_interval_s
        else:
            last = before if before is not None else am_alert(alert)
            # startsAt after endsAt is refused (400); a resolve must never be.
            starts = min(last["startsAt"], ends)
            await self._post([{**last, "startsAt": starts, "endsAt": ends}])
            n.active.pop(alert.key, None)

    async def maintain(self) -> float | None:
        n = self._n
        if not n.active:
            n._next_resend = None
            return None
        now = n._monotonic()
        if n._next_resend is None:
            n._next_resend = now + n.resend_interval_s
        if now >= n._next_resend:
            valid_until = n.valid_until()
            try:
                await self._post([{**a, "endsAt": valid_until} for a in n.active.values()])
            except PermanentDeliveryError as exc:
                # Refused now though each was accepted before: retrying cannot help, and
                # raising would retry forever. Say so; try again at the next interval.
                n.resend_errors += 1
                log.error(
                    "Alertmanager refused the re-send of the firing alerts",
                    extra={"notifier": n.name, "alerts": len(n.active), "error": str(exc)},
                )
            else:
                n.resends += 1
            n._next_resend = n._monotonic() + n.resend_interval_s
        return max(0.0, n._next_resend - n._monotonic())
