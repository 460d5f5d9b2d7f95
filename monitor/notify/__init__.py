"""Alert notifiers: log, webhook, MQTT and Alertmanager, behind a durable outbox.

The engine hands every alert transition to :meth:`AlertDispatcher.submit`; the dispatcher
logs it, persists it per notifier (:mod:`monitor.notify.outbox`) and delivers it from a
task per notifier, at least once, with the transition's idempotency key so receivers see
each transition exactly once. Build it with :meth:`AlertDispatcher.from_config` and run
:meth:`AlertDispatcher.run` in the daemon's TaskGroup.

The names below are loaded on first use: ``monitor.notify.config`` (the ``[alerts]``
section, which every command's config needs) must not pull in aiohttp and aiomqtt.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from monitor.notify.alertmanager import AlertmanagerNotifier
    from monitor.notify.base import (
        DeliveryError,
        Notifier,
        PermanentDeliveryError,
        RetryableDeliveryError,
        Session,
        transition_payload,
    )
    from monitor.notify.dispatch import LOG_NOTIFIER, AlertDispatcher, NotifierStats
    from monitor.notify.mqtt import MqttNotifier, alert_topic
    from monitor.notify.outbox import Outbox, OutboxEntry
    from monitor.notify.webhook import WebhookNotifier

__all__ = [
    "LOG_NOTIFIER",
    "AlertDispatcher",
    "AlertmanagerNotifier",
    "DeliveryError",
    "MqttNotifier",
    "Notifier",
    "NotifierStats",
    "Outbox",
    "OutboxEntry",
    "PermanentDeliveryError",
    "RetryableDeliveryError",
    "Session",
    "WebhookNotifier",
    "alert_topic",
    "transition_payload",
]

#: Public name -> the submodule that defines it.
_SOURCES: Final = {
    "AlertmanagerNotifier": "alertmanager",
    "DeliveryError": "base",
    "Notifier": "base",
    "PermanentDeliveryError": "base",
    "RetryableDeliveryError": "base",
    "Session": "base",
    "transition_payload": "base",
    "LOG_NOTIFIER": "dispatch",
    "AlertDispatcher": "dispatch",
    "NotifierStats": "dispatch",
    "MqttNotifier": "mqtt",
    "alert_topic": "mqtt",
    "Outbox": "outbox",
    "OutboxEntry": "outbox",
    "WebhookNotifier": "webhook",
}


def _load(name: str) -> object:
    """``from monitor.notify import AlertDispatcher``: import its submodule then (PEP 562)."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{source}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Hidden from mypy, which would otherwise type every attribute of the package as ``object``
# and miss a misspelt name; it checks the names through the imports above.
if not TYPE_CHECKING:
    __getattr__ = _load
