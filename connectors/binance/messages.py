"""Binance USD-M futures messages as frozen msgspec Structs.

The wire names are Binance's own (``E``, ``p``, ``positionAmt``...): each field keeps its
venue name through ``msgspec.field(name=...)`` and reads as a word in Python. Only the
fields riskmon reads are declared; msgspec skips the rest. Binance sends decimals as JSON
strings (``"p": "11794.15000000"``); the decoders in :mod:`connectors.binance.parser` are
built with ``strict=False`` so such a string decodes straight into a ``float`` (and the
``E`` of ``listenKeyExpired``, documented as a string, into an ``int``).

Units are Binance's: prices and money in the contract's quote/margin asset (USDT or USDC,
counted as USD by the parser), quantities in the base asset (coin), times epoch ms.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct, field

__all__ = [
    "Account",
    "AccountUpdate",
    "ApiError",
    "Balance",
    "Envelope",
    "EventHead",
    "ListenKey",
    "ListenKeyExpired",
    "MarkPriceFrame",
    "MarkPriceUpdate",
    "PositionRisk",
    "PositionUpdate",
    "ServerTime",
    "UpdateData",
]

_EMPTY = msgspec.Raw()
#: A decimal string may spell ``"nan"`` or ``"inf"``, which msgspec's lax mode accepts;
#: these bounds refuse both (NaN fails every comparison).
Finite = Annotated[float, Meta(ge=-1e300, le=1e300)]
Positive = Annotated[float, Meta(gt=0.0, le=1e300)]


class MarkPriceUpdate(Struct, frozen=True, gc=False):
    """``<symbol>@markPrice@1s`` payload (event ``markPriceUpdate``).

    ``mark`` (``p``) and ``index`` (``i``): quote asset (USDT) per coin; ``funding_rate``
    (``r``): decimal per funding period as a string, ``""`` for delivery contracts;
    ``next_funding`` (``T``): epoch ms, 0 for delivery contracts; ``event_time`` (``E``) ms.
    """

    event: str = field(name="e")
    event_time: int = field(name="E")
    symbol: str = field(name="s")
    mark: Positive = field(name="p")
    index: Positive = field(name="i")
    settle_estimate: float | None = field(default=None, name="P")
    funding_rate: str = field(default="", name="r")
    next_funding: int = field(default=0, name="T")


class MarkPriceFrame(Struct, frozen=True, gc=False):
    """A combined-stream frame carrying a mark price, decoded in one pass (the hot path)."""

    stream: str
    data: MarkPriceUpdate


class Envelope(Struct, frozen=True, gc=False):
    """Any frame: a combined-stream payload (``stream`` + ``data``), a bare payload (the
    user data socket's: ``e`` at the top), or the answer to a ``SUBSCRIBE`` (``id`` with
    ``result`` null, or ``code``/``msg``)."""

    event: str | None = field(default=None, name="e")
    stream: str | None = None
    data: msgspec.Raw = _EMPTY
    id: int | None = None
    result: msgspec.Raw = _EMPTY
    code: int | None = None
    msg: str | None = None


class EventHead(Struct, frozen=True, gc=False):
    """The event type of a user data stream payload."""

    event: str = field(name="e")


class Balance(Struct, frozen=True, gc=False):
    """An ``ACCOUNT_UPDATE`` balance: ``wallet`` (``wb``), ``cross_wallet`` (``cw``),
    ``change`` (``bc``, except PnL and commission), in ``asset``."""

    asset: str = field(name="a")
    wallet: Finite = field(name="wb")
    cross_wallet: float | None = field(default=None, name="cw")
    change: float | None = field(default=None, name="bc")


class PositionUpdate(Struct, frozen=True, gc=False):
    """An ``ACCOUNT_UPDATE`` position: ``amount`` (``pa``) signed, coin; ``side`` (``ps``)
    ``BOTH`` (one-way mode) or ``LONG``/``SHORT`` (hedge mode: SHORT amounts are negative)."""

    symbol: str = field(name="s")
    amount: Finite = field(name="pa")
    side: str = field(default="BOTH", name="ps")
    entry_price: float | None = field(default=None, name="ep")
    unrealized: float | None = field(default=None, name="up")
    margin_type: str | None = field(default=None, name="mt")


class UpdateData(Struct, frozen=True, gc=False):
    """``ACCOUNT_UPDATE`` ``a``: the reason (``m``), changed balances, changed positions."""

    reason: str = field(default="", name="m")
    balances: list[Balance] = field(default_factory=list, name="B")
    positions: list[PositionUpdate] = field(default_factory=list, name="P")


class AccountUpdate(Struct, frozen=True, gc=False):
    """``ACCOUNT_UPDATE``: only what changed. ``transaction_time`` (``T``) and
    ``event_time`` (``E``): epoch ms, server clock."""

    event_time: int = field(name="E")
    transaction_time: int = field(name="T")
    data: UpdateData = field(name="a")


class ListenKeyExpired(Struct, frozen=True, gc=False):
    """``listenKeyExpired``: no user data arrives on this key any more."""

    event_time: int = field(name="E")
    listen_key: str | None = field(default=None, name="listenKey")

    def __repr__(self) -> str:
        return f"ListenKeyExpired(event_time={self.event_time!r}, listen_key=***)"


class PositionRisk(Struct, frozen=True, gc=False):
    """A ``GET /fapi/v3/positionRisk`` item (only symbols with a position or open orders).

    ``amount`` (``positionAmt``) signed, coin; ``side`` (``positionSide``) as in
    :class:`PositionUpdate`; ``update_time`` (``updateTime``) epoch ms of the position's
    last change (0: never), server clock; margins in ``marginAsset``.
    """

    symbol: str
    amount: Finite = field(name="positionAmt")
    side: str = field(default="BOTH", name="positionSide")
    update_time: int = field(default=0, name="updateTime")
    mark_price: float | None = field(default=None, name="markPrice")
    notional: float | None = None
    margin_asset: str | None = field(default=None, name="marginAsset")
    initial_margin: float | None = field(default=None, name="initialMargin")
    maint_margin: float | None = field(default=None, name="maintMargin")


class Account(Struct, frozen=True, gc=False):
    """``GET /fapi/v3/account`` totals.

    Single-asset mode: USDT figures only (Binance: "only for USDT asset"); multi-assets
    mode: every margin asset, in USD. ``total_margin_balance`` is wallet balance plus
    unrealized PnL: the account's equity.
    """

    total_margin_balance: Finite = field(name="totalMarginBalance")
    total_initial_margin: Finite | None = field(default=None, name="totalInitialMargin")
    total_maint_margin: Finite | None = field(default=None, name="totalMaintMargin")
    total_wallet_balance: float | None = field(default=None, name="totalWalletBalance")
    total_unrealized_profit: float | None = field(default=None, name="totalUnrealizedProfit")
    available_balance: float | None = field(default=None, name="availableBalance")


class ServerTime(Struct, frozen=True, gc=False):
    """``GET /fapi/v1/time``: ``serverTime`` epoch ms."""

    server_time: int = field(name="serverTime")


class ListenKey(Struct, frozen=True, gc=False):
    """``POST``/``PUT /fapi/v1/listenKey`` answer. Its repr hides the key (it grants
    reading the account's stream)."""

    listen_key: str | None = field(default=None, name="listenKey")

    def __repr__(self) -> str:
        return "ListenKey(listen_key=***)"


class ApiError(Struct, frozen=True, gc=False):
    """A REST error body: ``{"code": -1125, "msg": "This listenKey does not exist."}``."""

    code: int
    msg: str = ""
