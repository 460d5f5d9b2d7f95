"""Alert notifiers: log, webhook, MQTT and Alertmanager, behind a durable outbox.

The engine hands every alert transition to :meth:`AlertDispatcher.submit`; the dispatcher
logs it, persists it per notifier (:mod:`monitor.notify.outbox`) and delivers it from a
task per notifier, at least once, with the transition's idempotency key so receivers see
each transition exactly once. Build it with :meth:`AlertDispatcher.from_config` and run
:meth:`AlertDispatcher.run` in the daemon's TaskGroup.
"""

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
