"""The ``[[connectors]] type = "deribit"`` config entry.

Registered in ``connectors.ConnectorConfig``.
``client_secret`` is redacted by its name (``...secret``); set it through
``RISKMON_CONNECTORS__DERIBIT__CLIENT_SECRET`` or ``client_secret_file`` (a file holding
only the secret), never in the TOML file checked into a repository.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Final, Literal

from msgspec import Meta

from connectors.base import ConnectorName, ConnectorSettings
from monitor.model.settings import Duration, Invalid, parse_duration, read_secret_file

__all__ = ["MIN_HEARTBEAT_MS", "DeribitConnector", "read_secret"]

#: Deribit refuses ``public/set_heartbeat`` intervals below 10 s.
MIN_HEARTBEAT_MS: Final = 10_000
_URL_RE: Final = re.compile(r"^wss?://[^\s/]+(/\S*)?$")

Currency = Annotated[str, Meta(pattern=r"^[A-Z0-9]{2,10}$")]


if TYPE_CHECKING:
    from connectors.deribit.client import DeribitMarket


class DeribitConnector(ConnectorSettings, frozen=True, tag="deribit"):
    """Deribit over its JSON-RPC websocket: prices public, positions and account private.

    Without ``client_id`` it runs public-only: tickers of ``instruments`` (or, with
    ``subscribe = "all"``, every listed instrument of ``currencies``) and their indices.
    """

    name: ConnectorName = "deribit"
    url: str = "wss://www.deribit.com/ws/api/v2"
    currencies: Annotated[tuple[Currency, ...], Meta(min_length=1)] = ("BTC", "ETH")
    #: "held": held instruments (and ``instruments``) + their indices; "all": every
    #: listed instrument of ``currencies``.
    subscribe: Literal["held", "all"] = "held"
    ticker_interval: Literal["100ms", "agg2", "raw"] = "100ms"
    heartbeat: Duration = parse_duration("10s")
    #: Instruments to price whatever the account holds (Deribit names).
    instruments: tuple[str, ...] = ()
    client_id: str = ""
    client_secret: str = ""
    client_secret_file: str = ""

    def __post_init__(self) -> None:
        if not _URL_RE.match(self.url):
            raise Invalid(("url",), f'expected a "wss://" or "ws://" URL; got {self.url!r}')
        if int(self.heartbeat) < MIN_HEARTBEAT_MS:
            raise Invalid(("heartbeat",), f"must be at least 10s (Deribit); got {self.heartbeat}")
        if int(self.heartbeat) % 1000:
            raise Invalid(("heartbeat",), f"must be whole seconds; got {self.heartbeat}")
        for i, c in enumerate(self.currencies):
            if c in self.currencies[:i]:
                raise Invalid(("currencies", i), f"duplicate currency {c!r}")
        if self.client_secret and self.client_secret_file:
            raise Invalid(
                ("client_secret_file",), "set client_secret or client_secret_file, not both"
            )
        has_secret = bool(self.client_secret or self.client_secret_file)
        if has_secret and not self.client_id:
            raise Invalid(("client_id",), "a client secret needs its client_id")
        if self.client_id and not has_secret:
            raise Invalid(
                ("client_secret",),
                "client_id needs client_secret (RISKMON_CONNECTORS__<NAME>__CLIENT_SECRET) "
                "or client_secret_file",
            )
        if self.ticker_interval == "raw" and not self.authenticated:
            raise Invalid(("ticker_interval",), '"raw" needs credentials (client_id and secret)')

    @property
    def authenticated(self) -> bool:
        return bool(self.client_id and (self.client_secret or self.client_secret_file))

    def build(self) -> DeribitMarket:
        """The connector this entry describes (the secret file is read at every auth)."""
        from connectors.deribit.client import DeribitMarket, DeribitSettings

        settings = DeribitSettings(
            name=self.name,
            url=self.url,
            currencies=tuple(self.currencies),
            subscribe=self.subscribe,
            ticker_interval=self.ticker_interval,
            heartbeat_s=self.heartbeat.seconds,
            instruments=tuple(self.instruments),
            client_id=self.client_id if self.authenticated else "",
        )
        if self.authenticated:
            read_secret(self)  # a missing or world-readable file stops the start, clearly
        return DeribitMarket(
            settings, secret=(lambda: read_secret(self)) if self.authenticated else None
        )


def read_secret(cfg: DeribitConnector) -> str:
    """The client secret: ``client_secret``, else the stripped content of the file.

    Raises
    ------
    ConfigError
        The file cannot be read, is readable by group or others, or is empty (the message
        names the path, never the content).
    """
    if cfg.client_secret:
        return cfg.client_secret
    if not cfg.client_secret_file:
        return ""
    return read_secret_file(cfg.client_secret_file, f"connectors.{cfg.name}.client_secret_file")
