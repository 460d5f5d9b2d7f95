"""The ``[alerts]`` section: where alert transitions go besides the log.

Owned by the notifiers; ``monitor.config`` places it in the file's schema. Secret fields
(``token``, ``password``) are redacted by name (``monitor.model.settings``) and are best set
through the environment (``RISKMON_ALERTS__WEBHOOK__TOKEN``).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from monitor.model.settings import Duration, Invalid, Section, parse_duration, show

__all__ = ["AlertmanagerConfig", "AlertsConfig", "MqttAlertsConfig", "WebhookConfig"]


class WebhookConfig(Section, frozen=True):
    """JSON POST of every alert transition, with an idempotency key per transition."""

    url: str
    timeout: Duration = parse_duration("5s")
    max_backoff: Duration = parse_duration("1m")
    #: Sent as ``Authorization: Bearer <token>`` when set (a secret: env, not the file).
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise Invalid(("url",), f"expected an http(s) URL; got {show(self.url)}")


class MqttAlertsConfig(Section, frozen=True):
    """Alerts published with QoS 1, one retained topic per rule and account."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    topic_prefix: str = "riskmon/alerts"
    client_id: str = "riskmon"
    username: str | None = None
    password: str | None = None
    max_backoff: Duration = parse_duration("30s")


class AlertmanagerConfig(Section, frozen=True):
    """Prometheus Alertmanager v2 API: alerts re-sent while firing, ``endsAt`` on resolve."""

    url: str = "http://127.0.0.1:9093"
    resend_interval: Duration = parse_duration("1m")
    timeout: Duration = parse_duration("5s")
    max_backoff: Duration = parse_duration("1m")

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise Invalid(("url",), f"expected an http(s) URL; got {show(self.url)}")


class AlertsConfig(Section, frozen=True):
    """Where alert transitions go besides the log (which always gets them).

    Transitions not yet acknowledged by a notifier wait in an on-disk ``outbox`` directory
    and are delivered after a restart; ``outbox`` is required once any notifier is set.
    """

    outbox: str | None = None
    webhook: WebhookConfig | None = None
    mqtt: MqttAlertsConfig | None = None
    alertmanager: AlertmanagerConfig | None = None

    def __post_init__(self) -> None:
        if self.outbox is None and (self.webhook or self.mqtt or self.alertmanager):
            raise Invalid(
                ("outbox",),
                "required with a notifier: a directory where undelivered alerts wait "
                '(e.g. "/var/lib/riskmon/outbox")',
            )
