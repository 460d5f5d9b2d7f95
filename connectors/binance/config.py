"""The ``[[connectors]] type = "binance_futures"`` config entry.

Registered in ``connectors.ConnectorConfig``. ``api_key`` and ``api_secret`` are redacted
by their names; set them through ``RISKMON_CONNECTORS__BINANCE__API_KEY`` /
``RISKMON_CONNECTORS__BINANCE__API_SECRET`` (or ``api_secret_file``, a file holding only
the secret, mode 600), never in a TOML file checked into a repository.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Final

from msgspec import Meta

from connectors.base import ConnectorName, ConnectorSettings
from monitor.model.settings import Invalid, read_secret_file

__all__ = ["BinanceFuturesConnector", "read_api_secret"]

_REST_RE: Final = re.compile(r"^https?://[^\s/]+(/\S*)?$")
_WS_RE: Final = re.compile(r"^wss?://[^\s/]+(/\S*)?$")

Symbol = Annotated[str, Meta(pattern=r"^[A-Z0-9]{2,30}(_[0-9]{6})?$")]

if TYPE_CHECKING:
    from connectors.binance.client import BinanceFutures


class BinanceFuturesConnector(ConnectorSettings, frozen=True, tag="binance_futures"):
    """Binance USD-M futures: mark prices public, positions and account private.

    Without ``api_key`` it runs public-only: the mark prices of ``symbols``.
    """

    name: ConnectorName = "binance"
    rest_url: str = "https://fapi.binance.com"
    ws_url: str = "wss://fstream.binance.com"
    #: Mark prices of these; symbols the account holds are added automatically.
    symbols: Annotated[tuple[Symbol, ...], Meta(min_length=1)] = ("BTCUSDT", "ETHUSDT")
    api_key: str = ""
    api_secret: str = ""
    api_secret_file: str = ""

    def __post_init__(self) -> None:
        from connectors.binance.parser import QUOTES, instrument_name

        if not _REST_RE.match(self.rest_url):
            raise Invalid(
                ("rest_url",), f'expected an "https://" or "http://" URL; got {self.rest_url!r}'
            )
        if not _WS_RE.match(self.ws_url):
            raise Invalid(("ws_url",), f'expected a "wss://" or "ws://" URL; got {self.ws_url!r}')
        for i, sym in enumerate(self.symbols):
            if sym in self.symbols[:i]:
                raise Invalid(("symbols", i), f"duplicate symbol {sym!r}")
            if instrument_name(sym) is None:
                raise Invalid(
                    ("symbols", i),
                    f"{sym!r} is not a USD-M contract quoted in {' or '.join(QUOTES)}",
                )
        if self.api_secret and self.api_secret_file:
            raise Invalid(("api_secret_file",), "set api_secret or api_secret_file, not both")
        has_secret = bool(self.api_secret or self.api_secret_file)
        if has_secret and not self.api_key:
            raise Invalid(
                ("api_key",),
                "an API secret needs its api_key (RISKMON_CONNECTORS__<NAME>__API_KEY)",
            )
        if self.api_key and not has_secret:
            raise Invalid(
                ("api_secret",),
                "api_key needs api_secret (RISKMON_CONNECTORS__<NAME>__API_SECRET) "
                "or api_secret_file",
            )

    @property
    def authenticated(self) -> bool:
        return bool(self.api_key and (self.api_secret or self.api_secret_file))

    def build(self) -> BinanceFutures:
        """The connector this entry describes (the secret file is read at every session)."""
        from connectors.binance.client import BinanceFutures, BinanceSettings

        settings = BinanceSettings(
            name=self.name,
            rest_url=self.rest_url,
            ws_url=self.ws_url,
            symbols=tuple(self.symbols),
            api_key=self.api_key if self.authenticated else "",
        )
        if not self.authenticated:
            return BinanceFutures(settings)
        read_api_secret(self)  # a missing or world-readable file stops the start, clearly
        return BinanceFutures(settings, secret=lambda: read_api_secret(self))


def read_api_secret(cfg: BinanceFuturesConnector) -> str:
    """The API secret: ``api_secret``, else the stripped content of ``api_secret_file``.

    Raises
    ------
    ConfigError
        The file cannot be read, is readable by group or others, or is empty (the message
        names the path, never the content).
    """
    if cfg.api_secret or not cfg.api_secret_file:
        return cfg.api_secret
    return read_secret_file(cfg.api_secret_file, f"connectors.{cfg.name}.api_secret_file")
