"""Deribit JSON-RPC v2 messages as frozen msgspec Structs, with Deribit's own field names.

Only the fields riskmon reads are declared; msgspec skips the rest without building them,
which is most of what makes decoding fast. Units are Deribit's (see each Struct): the pure
converters in :mod:`connectors.deribit.parser` turn them into riskmon's.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "AccountSummary",
    "AuthResult",
    "Changes",
    "Envelope",
    "Greeks",
    "HeartbeatParams",
    "IndexPrice",
    "Instrument",
    "NotificationParams",
    "PlatformState",
    "Position",
    "RpcError",
    "Ticker",
    "TickerNotification",
    "UserTrade",
]

PositiveFloat = Annotated[float, Meta(gt=0)]
#: An absent ``params``/``result`` (msgspec.Raw cannot be optional): test with ``len()``.
_EMPTY = msgspec.Raw()


class Greeks(Struct, frozen=True, gc=False):
    """Ticker ``greeks`` of an option, per one unit of underlying (coin).

    ``delta``: the plain Black delta (coin units; not less the premium, see
    tests/fixtures/deribit_ticker_option_recorded.json); ``gamma``: per 1 USD move;
    ``vega``: USD per vol point; ``theta``: USD per calendar day; ``rho``: USD per 1%.
    These are riskmon's units already (``monitor.events.VenueGreeks``).
    """

    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    rho: float | None = None


class Ticker(Struct, frozen=True, gc=False):
    """``ticker.{instrument}.{interval}`` data (and ``public/ticker`` result).

    ``mark_price``: USD per coin for futures and perpetuals, coin per coin for inverse
    (BTC/ETH) options, USDC for linear options. ``mark_iv``: percent (54.37 = 54.37%).
    ``underlying_price``: the forward (USD) the option is marked against.
    ``current_funding`` / ``funding_8h``: perpetuals only, decimal rates.
    ``timestamp``: epoch milliseconds.
    """

    instrument_name: str
    timestamp: int
    mark_price: PositiveFloat
    index_price: float | None = None
    underlying_price: float | None = None
    mark_iv: float | None = None
    greeks: Greeks | None = None
    current_funding: float | None = None
    funding_8h: float | None = None
    state: str | None = None


class _TickerParams(Struct, frozen=True, gc=False):
    channel: str
    data: Ticker


class TickerNotification(Struct, frozen=True, gc=False):
    """A whole ticker notification, decoded in one pass (the hot path)."""

    params: _TickerParams
    method: str = "subscription"


class IndexPrice(Struct, frozen=True, gc=False):
    """``deribit_price_index.{index_name}`` data: ``price`` USD (or USDC), ``timestamp`` ms."""

    index_name: str
    price: PositiveFloat
    timestamp: int


class Position(Struct, frozen=True, gc=False):
    """A position (``private/get_positions`` item, ``user.changes`` ``positions`` item).

    ``size``: signed; USD for inverse futures and perpetuals (BTC-PERPETUAL, BTC-27DEC24),
    coin for options and linear (USDC) futures. ``size_currency``: futures only, the size in
    coin at ``mark_price`` (``size / mark_price`` for inverse ones).
    """

    instrument_name: str
    kind: str
    size: float
    size_currency: float | None = None
    mark_price: float | None = None
    average_price: float | None = None
    direction: str | None = None


class UserTrade(Struct, frozen=True, gc=False):
    instrument_name: str
    timestamp: int
    trade_seq: int | None = None


class Changes(Struct, frozen=True, gc=False):
    """``user.changes.{kind}.{currency}.{interval}`` data (orders are not read)."""

    instrument_name: str | None = None
    positions: list[Position] = msgspec.field(default_factory=list)
    trades: list[UserTrade] = msgspec.field(default_factory=list)


class AccountSummary(Struct, frozen=True, gc=False):
    """``user.portfolio.{currency}`` data and ``private/get_account_summary`` result.

    Every figure is in ``currency`` (coin for BTC/ETH accounts): equity, margins, balance.
    """

    currency: str
    equity: float
    maintenance_margin: float | None = None
    initial_margin: float | None = None
    projected_initial_margin: float | None = None
    margin_balance: float | None = None
    balance: float | None = None
    available_funds: float | None = None
    #: Mark value of the account's options, in the currency (part of ``equity``).
    options_value: float | None = None


class Instrument(Struct, frozen=True, gc=False):
    """A ``public/get_instruments`` item.

    ``quote_currency`` equal to ``base_currency`` means the price is quoted in coin (an
    inverse option). ``contract_size``: Deribit's (USD 10 for BTC-PERPETUAL, 1 coin for BTC
    options). ``expiration_timestamp``: ms. ``instrument_type``: ``linear``/``reversed``.
    """

    instrument_name: str
    kind: str
    base_currency: str
    contract_size: float = 1.0
    quote_currency: str | None = None
    settlement_currency: str | None = None
    counter_currency: str | None = None
    price_index: str | None = None
    expiration_timestamp: int | None = None
    strike: float | None = None
    option_type: str | None = None
    instrument_type: str | None = None
    settlement_period: str | None = None
    is_active: bool = True


class PlatformState(Struct, frozen=True, gc=False):
    """``platform_state`` data: an index ``locked`` (``price_index`` names it) or
    ``maintenance`` under way."""

    price_index: str | None = None
    locked: bool | None = None
    maintenance: bool | None = None


class RpcError(Struct, frozen=True, gc=False):
    """A JSON-RPC error: ``code`` (10028 too_many_requests, 13009 invalid_token, ...)."""

    code: int
    message: str = ""


class AuthResult(Struct, frozen=True, gc=False):
    """``public/auth`` result. ``expires_in`` seconds. Its repr never shows the tokens."""

    access_token: str
    refresh_token: str
    expires_in: float
    scope: str = ""
    token_type: str = "bearer"

    def __repr__(self) -> str:
        return f"AuthResult(expires_in={self.expires_in!r}, scope=..., tokens=***)"


class NotificationParams(Struct, frozen=True, gc=False):
    channel: str
    data: msgspec.Raw


class HeartbeatParams(Struct, frozen=True, gc=False):
    type: str


class Envelope(Struct, frozen=True, gc=False):
    """Any JSON-RPC frame: a response (``id`` with ``result`` or ``error``) or a notification
    (``method`` ``subscription`` or ``heartbeat`` with ``params``)."""

    id: int | None = None
    method: str | None = None
    params: msgspec.Raw = _EMPTY
    result: msgspec.Raw = _EMPTY
    error: RpcError | None = None
