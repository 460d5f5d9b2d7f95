"""The ``[[connectors]]`` entry of ``type = "mqtt"`` (see ``deploy/mqtt.example.toml``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Final, Literal

from msgspec import Meta

from connectors.base import ConnectorName, ConnectorSettings
from monitor.model.settings import Delay, Duration, Invalid, parse_delay, parse_duration, show

if TYPE_CHECKING:
    from connectors.mqtt.client import MqttFeed

__all__ = ["MAX_PRICE_RCVBUF", "MIN_PRICE_RCVBUF", "MqttConnector"]

#: Bounds of ``price_rcvbuf``: below a few KiB a single batch message takes many round
#: trips; above 16 MiB the buffer bounds nothing (and Linux caps it at ``net.core.rmem_max``).
MIN_PRICE_RCVBUF: Final = 4096
MAX_PRICE_RCVBUF: Final = 16 << 20


class MqttConnector(ConnectorSettings, frozen=True, tag="mqtt"):
    """Schema-v1 events from the desk's order system over MQTT 5.

    The session is persistent (clean start off, ``session_expiry``): while riskmon is
    stopped or reconnecting, the broker queues what is published at QoS 1 for it, so a
    restart of either side loses nothing (the broker must persist its state to survive
    its own restart: ``persistence true`` in Mosquitto). The password comes from the
    environment (``RISKMON_CONNECTORS__<NAME>__PASSWORD``) or from ``password_file``.
    """

    name: ConnectorName = "mqtt"
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    #: Subscribes ``{prefix}/prices/#``, ``positions/#``, ``accounts/#``, ``instruments/#``.
    topic_prefix: Annotated[str, Meta(pattern=r"^[^#+\s]+$")] = "riskmon"
    #: The broker keys the persistent session on it; default ``riskmon-<name>``.
    client_id: str | None = None
    #: QoS of positions, accounts and instruments: 1 queues them while riskmon is away.
    qos: Literal[0, 1, 2] = 1
    #: QoS of prices: 0 (default) because a tick is superseded by the next one; the broker
    #: then neither queues ticks for a stopped riskmon nor waits for an acknowledgement of
    #: each (retained prices still arrive on subscribe), and they come over a second, clean
    #: MQTT 3.1.1 connection (client id ``<client_id>-prices``). 1 asks for every tick at
    #: least once, on the persistent session.
    price_qos: Literal[0, 1, 2] = 0
    #: SO_RCVBUF of the prices' own connection (at ``price_qos`` 0), bytes; 0 leaves the
    #: kernel's autotuning (which grows it to megabytes). It bounds how many unread ticks
    #: wait in riskmon's socket when it falls behind the feed: with a small buffer the
    #: broker drops ticks (QoS 0) sooner instead of riskmon reading seconds-old ones.
    price_rcvbuf: Annotated[int, Meta(ge=0)] = 65536
    #: A price tick received more than this after its ``ts`` is counted
    #: (``riskmon_connector_late_prices_total``) and logged (at most once a minute); it is
    #: still applied: it is the newest price riskmon has. 0s: never counted.
    max_price_age: Delay = parse_delay("2s")
    #: Once a tick arrives more than ``max_price_age`` later (against its ``ts``) than the
    #: least lag of its instrument's ticks on the prices' connection (so a publisher's
    #: clock that is off does not count, only time spent waiting in the broker's and the
    #: socket's buffers), reopen that connection at once: what waited is discarded, and
    #: the next ticks are live. The bound on the prices' staleness when riskmon cannot
    #: keep up with the feed.
    price_catch_up: bool = True
    #: How long the broker keeps the session (and queues for it) while riskmon is away.
    session_expiry: Duration = parse_duration("1d")
    keepalive: Duration = parse_duration("30s")
    max_backoff: Duration = parse_duration("30s")
    username: str | None = None
    password: str | None = None
    #: A file holding the password (mode 600 or stricter), instead of ``password``.
    password_file: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def __post_init__(self) -> None:
        if self.topic_prefix.startswith("/") or self.topic_prefix.endswith("/"):
            raise Invalid(
                ("topic_prefix",),
                f"expected no leading or trailing '/'; got {show(self.topic_prefix)}",
            )
        if self.password is not None and self.password_file is not None:
            raise Invalid(("password_file",), "set password or password_file, not both")
        if (self.cert_file is None) != (self.key_file is None):
            raise Invalid(("key_file",), "cert_file and key_file go together")
        if not self.tls:
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key) is not None:
                    raise Invalid((key,), "only used with tls = true")
        if int(self.keepalive) < 1000:
            raise Invalid(("keepalive",), f"expected at least 1s; got {self.keepalive}")
        if self.price_rcvbuf != 0 and not (
            MIN_PRICE_RCVBUF <= self.price_rcvbuf <= MAX_PRICE_RCVBUF
        ):
            raise Invalid(
                ("price_rcvbuf",),
                f"expected 0 (the kernel's autotuning) or {MIN_PRICE_RCVBUF:,} to "
                f"{MAX_PRICE_RCVBUF:,} bytes; got {self.price_rcvbuf:,}",
            )

    @property
    def identifier(self) -> str:
        """The MQTT client id."""
        return self.client_id or f"riskmon-{self.name}"

    @property
    def price_identifier(self) -> str:
        """The client id of the prices' own connection (at ``price_qos`` 0)."""
        return f"{self.identifier}-prices"

    def build(self) -> MqttFeed:
        from connectors.mqtt.client import MqttFeed

        return MqttFeed(self)
