"""Sans-I/O Binance USD-M futures parser: frames and REST bodies in, riskmon events out.

No socket, no clock: :func:`parse_frame` classifies one websocket frame of the combined
stream; the converters turn Binance's Structs (:mod:`connectors.binance.messages`) into
normalized events. Anything that does not parse raises :class:`monitor.model.events.Rejected`
with a bounded reason, so the transport counts it and goes on.

Names and units (what riskmon receives)
---------------------------------------
- Symbols map into riskmon's Deribit-form names, linear: ``BTCUSDT`` ->
  ``BTC_USDT-PERPETUAL``, ``BTCUSDC`` -> ``BTC_USDC-PERPETUAL``, a delivery contract
  ``BTCUSDT_250328`` -> ``BTC_USDT-28MAR25`` (Binance settles quarterlies at 08:00 UTC, the
  expiry riskmon assumes). These names parse as perpetuals and futures on the underlying
  ``BTC`` (``monitor.model.instruments``), so they need no ``instrument`` event.
- USDT (and USDC) count as USD, 1:1: a mark of 50,000 USDT is 50,000 USD. A depeg is not
  modelled.
- ``markPriceUpdate`` -> two :class:`PriceEvent` s at ``E``: the contract at ``p`` (mark) and
  Binance's index of the underlying at ``i`` under the venue-qualified index name
  ``BTC.binance`` (declared once with :func:`index_declaration`: kind ``index``, underlying
  ``BTC``). riskmon's own ``BTC`` index is never written: which venue's index drives an
  underlying is the engine's rule, not a connector's.
- Positions: ``positionAmt`` / ``pa`` is signed, in coin (base asset), multiplier 1:
  ``PositionEvent.quantity`` is it as is (hedge mode: LONG + SHORT summed by
  :class:`connectors.binance.book.PositionBook`).
- Account: ``totalMarginBalance`` (equity), ``totalInitialMargin``, ``totalMaintMargin``
  as USD (USDT-only figures in single-asset mode, all assets in USD in multi-assets mode).
"""

from __future__ import annotations

import datetime as _dt
import functools
import math
from dataclasses import dataclass
from typing import Final

import msgspec

from connectors.base import decode as _decode
from connectors.binance.messages import (
    Account,
    AccountUpdate,
    ApiError,
    Envelope,
    EventHead,
    ListenKey,
    ListenKeyExpired,
    MarkPriceFrame,
    MarkPriceUpdate,
    PositionRisk,
    ServerTime,
)
from monitor.model.events import (
    TS_MAX_MS,
    TS_MIN_MS,
    AccountEvent,
    InstrumentEvent,
    PriceEvent,
    Reason,
    Rejected,
)
from monitor.model.instruments import date_code

__all__ = [
    "QUOTES",
    "VENUE",
    "Ignored",
    "Reply",
    "account_event",
    "decode_account",
    "decode_error",
    "decode_listen_key",
    "decode_position_risk",
    "decode_server_time",
    "funding",
    "index_declaration",
    "index_name",
    "instrument_name",
    "parse_frame",
    "price_events",
    "underlying",
]

#: Margin assets of USD-M contracts that riskmon counts as USD (longest match first).
QUOTES: Final = ("USDT", "USDC")
#: The qualifier of Binance's index names (``BTC.binance``).
VENUE: Final = "binance"
#: User data events riskmon does not read (orders, trades, leverage changes, margin call
#: notices): skipped without counting them as rejected.
_IGNORED: Final = frozenset(
    {
        "ORDER_TRADE_UPDATE",
        "TRADE_LITE",
        "ACCOUNT_CONFIG_UPDATE",
        "MARGIN_CALL",
        "STRATEGY_UPDATE",
        "GRID_UPDATE",
        "CONDITIONAL_ORDER_TRIGGER_REJECT",
        "ALGO_UPDATE",
    }
)
_MARK: Final = b"@markPrice"


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a ``SUBSCRIBE`` request: ``error`` is Binance's ``msg`` (None = ok)."""

    id: int
    error: str | None


@dataclass(frozen=True, slots=True)
class Ignored:
    """A user data event riskmon does not read (its ``e``)."""

    event: str


Frame = MarkPriceUpdate | AccountUpdate | ListenKeyExpired | Reply | Ignored

_mark_frame = msgspec.json.Decoder(MarkPriceFrame, strict=False)
_mark = msgspec.json.Decoder(MarkPriceUpdate, strict=False)
_envelope = msgspec.json.Decoder(Envelope)
_head = msgspec.json.Decoder(EventHead)
_account_update = msgspec.json.Decoder(AccountUpdate, strict=False)
_expired = msgspec.json.Decoder(ListenKeyExpired, strict=False)
_position_risk = msgspec.json.Decoder(list[PositionRisk], strict=False)
_account = msgspec.json.Decoder(Account, strict=False)
_server_time = msgspec.json.Decoder(ServerTime, strict=False)
_listen_key = msgspec.json.Decoder(ListenKey)
_error = msgspec.json.Decoder(ApiError, strict=False)


def _check_ts(ts: int) -> int:
    if not TS_MIN_MS <= ts <= TS_MAX_MS:
        raise Rejected(Reason.INVALID_TIMESTAMP, f"time {ts!r} is not epoch milliseconds")
    return ts


# --- names -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def instrument_name(symbol: str) -> str | None:
    """riskmon's name for a USD-M symbol, or None (another quote asset, a bad date).

    >>> instrument_name("BTCUSDT"), instrument_name("1000PEPEUSDC")
    ('BTC_USDT-PERPETUAL', '1000PEPE_USDC-PERPETUAL')
    >>> instrument_name("ETHUSDT_250627"), instrument_name("BTCBUSD")
    ('ETH_USDT-27JUN25', None)
    """
    head, _, delivery = symbol.partition("_")
    base = quote = ""
    for q in QUOTES:
        if head.endswith(q):
            base, quote = head[: -len(q)], q
            break
    if not base or not base.isalnum() or base != base.upper():
        return None
    if not delivery:
        return f"{base}_{quote}-PERPETUAL"
    if len(delivery) != 6 or not delivery.isdigit():
        return None
    try:
        day = _dt.date(2000 + int(delivery[:2]), int(delivery[2:4]), int(delivery[4:]))
    except ValueError:
        return None
    return f"{base}_{quote}-{date_code(day)}"


def underlying(symbol: str) -> str | None:
    """The underlying (base asset) of a USD-M symbol: ``BTCUSDT`` -> ``BTC``."""
    name = instrument_name(symbol)
    return None if name is None else name.split("_", 1)[0]


def index_name(underlying: str) -> str:
    """Binance's index of ``underlying`` under its venue-qualified name: ``BTC.binance``."""
    return f"{underlying}.{VENUE}"


def index_declaration(underlying: str) -> InstrumentEvent:
    """The ``instrument`` event that declares Binance's index of ``underlying``.

    ``BTC.binance`` does not parse as a riskmon name, so it is declared: kind ``index``,
    underlying ``BTC``. The engine keeps it apart from riskmon's ``BTC`` index.
    """
    return InstrumentEvent(instrument=index_name(underlying), kind="index", underlying=underlying)


# --- frames ------------------------------------------------------------------------------


def parse_frame(raw: bytes) -> Frame:
    """Classify one frame of the market socket (``/market/stream``, combined: each payload
    wrapped in ``{"stream", "data"}``) or of the user data socket (``/private/ws``, bare
    payloads).

    A mark price frame is decoded in one typed pass (the hot path). Example (Binance's
    documented USD-M ``<symbol>@markPrice@1s`` payload, as the combined stream wraps it)::

        {"stream": "btcusdt@markPrice@1s",
         "data": {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT",
                  "p": "11794.15000000", "i": "11784.62659091", "P": "11784.25641265",
                  "r": "0.00038167", "T": 1562306400000}}

    User data payloads are ``ACCOUNT_UPDATE`` and ``listenKeyExpired``; order and trade
    events (and ``MARGIN_CALL``, which the transport logs) are :class:`Ignored`. ``{"result": null,
    "id": 1}`` answers a ``SUBSCRIBE``.

    Raises
    ------
    Rejected
        ``malformed_json``, ``missing_field`` / ``invalid_value`` (a payload with a bad
        field), ``unknown_type`` (an event riskmon does not know).
    """
    if _MARK in raw[:64]:
        try:
            return _mark_frame.decode(raw).data
        except msgspec.MsgspecError as exc:
            if not isinstance(exc, msgspec.ValidationError):
                raise Rejected(Reason.MALFORMED_JSON, str(exc)) from None
            # Say which field, via the slow path below.
    env = _decode(_envelope, raw, "frame")
    if env.stream is not None and len(env.data):
        return _payload(env.data, _decode(_head, env.data, "stream payload").event)
    if env.event is not None:
        return _payload(raw, env.event)
    if env.id is not None:
        return Reply(env.id, None if env.code is None else f"{env.code} {env.msg or ''}".strip())
    raise Rejected(Reason.UNKNOWN_TYPE, "frame without stream or id")


def _payload(data: bytes | msgspec.Raw, event: str) -> Frame:
    if event == "markPriceUpdate":
        return _decode(_mark, data, "markPriceUpdate")
    if event == "ACCOUNT_UPDATE":
        update = _decode(_account_update, data, "ACCOUNT_UPDATE")
        _check_ts(update.transaction_time)  # the time its positions carry
        return update
    if event == "listenKeyExpired":
        return _decode(_expired, data, "listenKeyExpired")
    if event in _IGNORED:
        return Ignored(event)
    raise Rejected(Reason.UNKNOWN_TYPE, f"event {event!r}")


def price_events(msg: MarkPriceUpdate) -> tuple[PriceEvent, PriceEvent]:
    """The contract's mark and Binance's index of its underlying, at ``E`` (module docstring).

    Example: the documented ``markPriceUpdate`` of BTCUSDT (``p`` 11794.15, ``i``
    11784.62659091, ``E`` 1562305380000) -> ``PriceEvent(ts=1562305380000,
    instrument="BTC_USDT-PERPETUAL", price=11794.15)`` and ``PriceEvent(ts=1562305380000,
    instrument="BTC.binance", price=11784.62659091)``.

    Raises
    ------
    Rejected
        ``unknown_instrument`` for a symbol that does not map (module docstring),
        ``invalid_timestamp`` for an ``E`` that is not epoch ms.
    """
    names = _names(msg.symbol)
    if names is None:
        raise Rejected(Reason.UNKNOWN_INSTRUMENT, f"symbol {msg.symbol!r}")
    ts = msg.event_time
    if not TS_MIN_MS <= ts <= TS_MAX_MS:
        _check_ts(ts)
    return (
        PriceEvent(ts=ts, instrument=names[0], price=msg.mark),
        PriceEvent(ts=ts, instrument=names[1], price=msg.index),
    )


@functools.lru_cache(maxsize=4096)
def _names(symbol: str) -> tuple[str, str] | None:
    """``(contract name, index name)`` of a symbol (the hot path's one lookup)."""
    name = instrument_name(symbol)
    return None if name is None else (name, index_name(name.split("_", 1)[0]))


def funding(msg: MarkPriceUpdate) -> tuple[float, int] | None:
    """A perpetual's ``(funding rate, next funding time ms)``; None for delivery contracts
    (``r`` empty, ``T`` 0) and for a rate that is not a finite number."""
    if not msg.funding_rate or not msg.next_funding:
        return None
    try:
        rate = float(msg.funding_rate)
    except ValueError:
        return None
    return (rate, msg.next_funding) if math.isfinite(rate) else None


# --- REST bodies -------------------------------------------------------------------------


def decode_position_risk(body: bytes) -> list[PositionRisk]:
    """``GET /fapi/v3/positionRisk`` answer (a JSON array)."""
    return _decode(_position_risk, body, "positionRisk")


def decode_account(body: bytes) -> Account:
    """``GET /fapi/v3/account`` answer."""
    return _decode(_account, body, "account")


def decode_server_time(body: bytes) -> int:
    """``GET /fapi/v1/time`` -> ``serverTime`` (epoch ms)."""
    return _check_ts(_decode(_server_time, body, "time").server_time)


def decode_listen_key(body: bytes) -> str:
    """``POST /fapi/v1/listenKey`` -> the key (never quoted in an error)."""
    key = _decode(_listen_key, body, "listenKey").listen_key
    if not key:
        raise Rejected(Reason.MISSING_FIELD, "listenKey: empty")
    return key


def decode_error(body: bytes) -> ApiError | None:
    """A REST error body (``{"code": -1125, "msg": ...}``), or None when it is not one."""
    try:
        return _error.decode(body)
    except msgspec.MsgspecError:
        return None


def account_event(acct: Account, account: str, ts: int) -> AccountEvent:
    """The account's equity and margins, USD (USDT counted 1:1).

    Example: Binance's documented single-asset ``/fapi/v3/account`` (``totalMarginBalance``
    103.12345678, ``totalInitialMargin`` 0, ``totalMaintMargin`` 0) -> ``AccountEvent(
    equity=103.12345678, initial_margin=0.0, maintenance_margin=0.0)``.

    Raises
    ------
    Rejected
        ``invalid_value`` for a negative margin.
    """
    im, mm = acct.total_initial_margin, acct.total_maint_margin
    if (im is not None and im < 0.0) or (mm is not None and mm < 0.0):
        raise Rejected(Reason.INVALID_VALUE, f"account: negative margin ({im}, {mm})")
    return AccountEvent(
        ts=_check_ts(ts),
        account=account,
        equity=acct.total_margin_balance,
        initial_margin=im,
        maintenance_margin=mm,
    )
