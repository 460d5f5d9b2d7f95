"""What every notifier is, what it sends, and how a delivery fails.

A notifier turns one :class:`~monitor.model.alert.Transition` into one message to one
receiver. It does no queueing, retrying or bookkeeping of its own: the dispatcher
(:mod:`monitor.notify.dispatch`) owns the outbox, the retry schedule and the counters, and
drives each notifier through a :class:`Session` (a connection, or an HTTP client) that it
opens, uses for deliveries in transition order, and reopens after a failure.

Exceptions::

    DeliveryError               a delivery failed
    ├── RetryableDeliveryError  try again later (5xx, 408, 429, timeouts, a lost connection)
    └── PermanentDeliveryError  the receiver refused this message; it will never accept it

Any other exception a session raises is treated as retryable: an unknown failure must not
lose an alert. Only :class:`PermanentDeliveryError` drops a message, and that is counted.
"""

from __future__ import annotations

import math
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Protocol

from monitor.model.alert import Transition

__all__ = [
    "PAYLOAD_SCHEMA",
    "DeliveryError",
    "Notifier",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "Session",
    "transition_payload",
]

#: Version of the JSON document webhook and MQTT receivers get (``"schema"`` field).
PAYLOAD_SCHEMA: Final = 1


class DeliveryError(Exception):
    """A delivery failed."""


class RetryableDeliveryError(DeliveryError):
    """The receiver may accept the same message later.

    ``retry_after`` (seconds) is the receiver's own hint (``Retry-After``), honoured up to
    the notifier's ``max_backoff``.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentDeliveryError(DeliveryError):
    """The receiver refused this message and will refuse it again (e.g. HTTP 400, 401)."""


class Session(Protocol):
    """An open channel to a receiver, used by one delivery task at a time."""

    async def deliver(self, transition: Transition) -> None:
        """Send one transition; return once the receiver acknowledged it.

        Raises :class:`PermanentDeliveryError` to drop the message, anything else to retry.
        """
        ...

    async def maintain(self) -> float | None:
        """Do periodic work that is due (Alertmanager re-sends) and say when it is next due.

        Returns seconds until the next call is needed, ``None`` for never. Called whenever
        the delivery task is about to wait for new transitions.
        """
        ...


class Notifier(Protocol):
    """One receiver of alert transitions."""

    @property
    def name(self) -> str:
        """Stable, bounded name: the outbox subdirectory and the ``notifier`` metric label."""
        ...

    @property
    def max_backoff_s(self) -> float:
        """Cap of the retry delay, seconds."""
        ...

    def wants(self, transition: Transition) -> bool:
        """Whether this notifier delivers ``transition`` at all (decided at submit)."""
        ...

    def session(self) -> AbstractAsyncContextManager[Session]:
        """Open a channel (connect); closing it disconnects."""
        ...


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def transition_payload(transition: Transition) -> dict[str, Any]:
    """The JSON document webhook and MQTT receivers get for one transition.

    ``Transition.report()`` (``ts``, ``from``, ``key`` = the idempotency key, then the alert
    as in the report's ``alerts`` list) plus ``schema``, ``instance`` (the alert's identity
    ``rule/account/underlying``, ``-`` for none, to group transitions of one alert) and
    ``ts_ms`` / ``since_ms`` / ``active_since_ms`` (engine clock, epoch ms) for machines.
    A value or threshold that is not finite is ``null`` (JSON has no NaN).
    """
    a = transition.alert
    doc: dict[str, Any] = {"schema": PAYLOAD_SCHEMA, **transition.report()}
    doc["value"] = _num(a.value)
    doc["threshold"] = _num(a.threshold)
    doc["instance"] = a.key
    doc["ts_ms"] = transition.ts_ms
    doc["since_ms"] = a.since_ms
    doc["active_since_ms"] = a.active_since_ms
    return doc


#: Client errors worth retrying (timeout, rate limit); other 4xx mean the request is wrong.
_RETRYABLE_4XX: Final = frozenset({408, 429})


def retry_after_s(value: str | None) -> float | None:
    """``Retry-After`` as delta-seconds; an HTTP date or garbage gives ``None``."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def check_http_response(status: int, text: str, retry_after: str | None, receiver: str) -> None:
    """Classify an HTTP receiver's answer: return on 2xx, else raise the delivery error.

    5xx, 408 and 429 are retryable (honouring ``Retry-After``); any other status,
    redirects included, is permanent: resending the same request cannot succeed.
    """
    if 200 <= status < 300:
        return
    detail = f"HTTP {status} from {receiver}: {text[:200]}"
    if status >= 500 or status in _RETRYABLE_4XX:
        raise RetryableDeliveryError(detail, retry_after=retry_after_s(retry_after))
    raise PermanentDeliveryError(detail)
