"""Sans-I/O Deribit parser: JSON-RPC frames in, riskmon events out (no socket, no clock).

:func:`parse_frame` classifies one frame; the pure converters turn Deribit's Structs
(:mod:`connectors.deribit.messages`) into normalized events. Anything that does not parse
raises :class:`monitor.events.Rejected` with a bounded reason, so the transport counts it
and goes on; nothing else escapes.

Units (what riskmon receives)
-----------------------------
- Ticker -> ``PriceEvent``: ``price`` = ``mark_price`` (USD per coin for futures and
  perpetuals; coin for inverse BTC/ETH options; USDC for linear options), ``iv`` =
  ``mark_iv / 100`` (annualised decimal), ``underlying_price`` = the forward, ``greeks`` as
  published (already riskmon's units: delta coin, gamma per USD, vega USD per vol point,
  theta USD per day). ``ts`` = the ticker's ``timestamp`` (ms).
- Index ``btc_usd`` -> instrument ``BTC`` (``x_usd``/``x_usdc``/``x_usdt`` -> ``X``).
- Positions -> ``PositionEvent.quantity``: options: ``size`` (coin); linear (USDC)
  futures: ``size`` (coin); inverse futures and perpetuals (coin-settled, USD-sized):
  ``size`` in **USD**, declared by :func:`inverse_future_event` as ``inverse`` with
  multiplier 1 (one "contract" = 1 USD), so riskmon values them as inverse: their coin
  P&L ``N (1/S0 - 1/S)`` is ``N`` USD per unit proportional move, whatever the price.
- Account summaries are in coin: :func:`account_event` sends them per currency (equity,
  margins and the coin collateral, which riskmon counts as exposure and values at the
  current index) beside the USD sums at the index the connector holds.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from connectors.base import decode as _decode
from connectors.deribit.messages import (
    AccountSummary,
    Changes,
    Envelope,
    HeartbeatParams,
    IndexPrice,
    Instrument,
    NotificationParams,
    PlatformState,
    Position,
    RpcError,
    Ticker,
    TickerNotification,
)
from monitor.model.events import (
    TS_MAX_MS,
    TS_MIN_MS,
    AccountEvent,
    CurrencyBalance,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
    VenueGreeks,
)
from monitor.model.instruments import DOLLAR_COINS, parse_name

__all__ = [
    "Heartbeat",
    "Notification",
    "Response",
    "account_event",
    "changes_positions",
    "index_to_price_event",
    "index_underlying",
    "instrument_event",
    "inverse_future_event",
    "is_inverse_future",
    "parse_frame",
    "position_quantity",
    "to_price_event",
]

_QUOTES: Final = ("usd", "usdc", "usdt")


@dataclass(frozen=True, slots=True)
class Response:
    """A JSON-RPC response: ``result`` (raw JSON) or ``error``."""

    id: int
    result: msgspec.Raw | None
    error: RpcError | None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``heartbeat`` notification; ``test_request`` must be answered with ``public/test``."""

    test_request: bool


@dataclass(frozen=True, slots=True)
class Notification:
    """A subscription notification other than a ticker: ``data`` still raw JSON."""

    channel: str
    data: msgspec.Raw


Frame = Ticker | Notification | Response | Heartbeat

_ticker_frame = msgspec.json.Decoder(TickerNotification)
_envelope = msgspec.json.Decoder(Envelope)
_notification_params = msgspec.json.Decoder(NotificationParams)
_heartbeat_params = msgspec.json.Decoder(HeartbeatParams)
_ticker = msgspec.json.Decoder(Ticker)
_index = msgspec.json.Decoder(IndexPrice)
_changes = msgspec.json.Decoder(Changes)
_summary = msgspec.json.Decoder(AccountSummary)
_platform = msgspec.json.Decoder(PlatformState)
_positions = msgspec.json.Decoder(list[Position])
_instruments = msgspec.json.Decoder(list[Instrument])
_TICKER_MARK: Final = b'"channel":"ticker.'


def parse_frame(raw: bytes) -> Frame:
    """Classify one websocket frame.

    A ticker notification is decoded in one typed pass straight into :class:`Ticker`
    (the hot path); other frames are split into envelope and raw ``data``.

    Example (Deribit's documented ticker for BTC-PERPETUAL, shortened)::

        {"jsonrpc": "2.0", "method": "subscription",
         "params": {"channel": "ticker.BTC-PERPETUAL.100ms",
                    "data": {"instrument_name": "BTC-PERPETUAL", "mark_price": 36288.31,
                             "index_price": 36297.02, "funding_8h": 0.00002203,
                             "current_funding": 0, "timestamp": 1623059681955, ...}}}

    Raises
    ------
    Rejected
        ``malformed_json`` (not JSON), ``missing_field`` / ``invalid_value`` (not a frame
        Deribit sends, or a ticker with a bad field), ``unknown_type`` (a method riskmon
        does not read).
    """
    if _TICKER_MARK in raw[:128]:
        try:
            return _ticker_frame.decode(raw).params.data
        except msgspec.MsgspecError as exc:
            # A ticker that is not a well-formed one: say which field, via the slow path.
            if not isinstance(exc, msgspec.ValidationError):
                raise Rejected(Reason.MALFORMED_JSON, str(exc)) from None
    env = _decode(_envelope, raw, "frame")
    if env.id is not None and env.method is None:
        return Response(env.id, env.result if len(env.result) else None, env.error)
    if env.method == "subscription" and len(env.params):
        params = _decode(_notification_params, env.params, "notification")
        if params.channel.startswith("ticker."):
            return _decode(_ticker, params.data, params.channel)
        return Notification(params.channel, params.data)
    if env.method == "heartbeat" and len(env.params):
        return Heartbeat(_decode(_heartbeat_params, env.params, "heartbeat").type == "test_request")
    raise Rejected(Reason.UNKNOWN_TYPE, f"frame with method {env.method!r} and id {env.id!r}")


def _check_ts(ts: int) -> int:
    if not TS_MIN_MS <= ts <= TS_MAX_MS:
        raise Rejected(Reason.INVALID_TIMESTAMP, f"timestamp {ts!r} is not epoch milliseconds")
    return ts


def to_price_event(msg: Ticker) -> PriceEvent:
    """A ticker's mark as a :class:`PriceEvent` (units: module docstring).

    Example: Deribit's documented BTC-PERPETUAL ticker (``mark_price`` 36288.31,
    ``timestamp`` 1623059681955) -> ``PriceEvent(ts=1623059681955,
    instrument="BTC-PERPETUAL", price=36288.31)``; an option's ``mark_iv`` 54.37 -> ``iv``
    0.5437 and its ``underlying_price`` and ``greeks`` ride along.
    """
    ts = msg.timestamp
    if not TS_MIN_MS <= ts <= TS_MAX_MS:
        _check_ts(ts)
    price = msg.mark_price
    if price == math.inf:
        raise Rejected(Reason.INVALID_VALUE, f"{msg.instrument_name}: mark_price {price!r}")
    g = msg.greeks
    if g is None:
        return PriceEvent(ts=ts, instrument=msg.instrument_name, price=price)
    iv = msg.mark_iv
    fwd = msg.underlying_price
    return PriceEvent(
        ts=ts,
        instrument=msg.instrument_name,
        price=price,
        iv=iv / 100.0 if iv is not None and iv > 0.0 else None,
        underlying_price=fwd if fwd is not None and fwd > 0.0 else None,
        greeks=VenueGreeks(delta=g.delta, gamma=g.gamma, vega=g.vega, theta=g.theta),
    )


def funding(msg: Ticker) -> tuple[float, float] | None:
    """A perpetual's ``(current_funding, funding_8h)`` (decimal rates), else None."""
    if msg.current_funding is None or msg.funding_8h is None:
        return None
    return (msg.current_funding, msg.funding_8h)


def index_underlying(index_name: str) -> str | None:
    """riskmon's index instrument for a Deribit index name (``btc_usd`` -> ``BTC``).

    >>> index_underlying("btc_usd"), index_underlying("sol_usdc"), index_underlying("btcdvol_usdc")
    ('BTC', 'SOL', 'BTCDVOL')
    """
    base, sep, quote = index_name.partition("_")
    if not sep or quote not in _QUOTES or not base.isalnum():
        return None
    return base.upper()


def index_to_price_event(data: msgspec.Raw | bytes) -> PriceEvent:
    """``deribit_price_index.{index}`` data -> the underlying's index price (USD).

    Example (Deribit's documented notification)::

        {"timestamp": 1535098298227, "price": 6521.17, "index_name": "btc_usd"}

    -> ``PriceEvent(ts=1535098298227, instrument="BTC", price=6521.17)``.
    """
    msg = _decode(_index, data, "deribit_price_index")
    name = index_underlying(msg.index_name)
    if name is None:
        raise Rejected(Reason.UNKNOWN_INSTRUMENT, f"index {msg.index_name!r}")
    return PriceEvent(ts=_check_ts(msg.timestamp), instrument=name, price=msg.price)


def is_inverse_future(instrument: str) -> bool:
    """USD-sized (inverse) future or perpetual: Deribit's coin-settled ``BTC-PERPETUAL``,
    ``ETH-27DEC24``; linear ones carry their quote (``SOL_USDC-PERPETUAL``)."""
    head = instrument.split("-", 1)[0]
    return "_" not in head


def position_quantity(pos: Position) -> float:
    """Signed quantity riskmon holds for a Deribit position (module docstring): ``size``,
    which is coin for options and linear futures and USD for inverse futures and
    perpetuals (declared inverse, 1 USD per contract, by :func:`inverse_future_event`).

    Examples: documented get_positions BTC-PERPETUAL ``size`` 50 (USD) -> 50.0; an option
    ``size`` -2.5 (BTC) -> -2.5.
    """
    return pos.size + 0.0


def inverse_future_event(name: str) -> InstrumentEvent | None:
    """The ``instrument`` event of an inverse (USD-sized, coin-settled) future or perpetual,
    from its name; None for any other instrument.

    Example: ``BTC-PERPETUAL`` -> ``InstrumentEvent(instrument="BTC-PERPETUAL",
    kind="perpetual", underlying="BTC", inverse=True)``; ``BTC-27DEC24`` also carries its
    expiry (08:00 UTC).
    """
    if not is_inverse_future(name):
        return None
    parsed = parse_name(name)
    if parsed is None or parsed.kind not in ("perpetual", "future"):
        return None
    expiry = None
    if parsed.expiry_ms is not None:
        at = _dt.datetime.fromtimestamp(parsed.expiry_ms / 1000, tz=_dt.UTC)
        expiry = at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return InstrumentEvent(
        instrument=name,
        kind=parsed.kind,
        underlying=parsed.underlying,
        expiry=expiry,
        multiplier=1.0,
        inverse=True,
    )


def decode_changes(data: msgspec.Raw | bytes) -> Changes:
    return _decode(_changes, data, "user.changes")


def decode_positions(result: msgspec.Raw | bytes) -> list[Position]:
    return _decode(_positions, result, "get_positions")


def decode_summary(data: msgspec.Raw | bytes) -> AccountSummary:
    return _decode(_summary, data, "account summary")


def decode_instruments(result: msgspec.Raw | bytes) -> list[Instrument]:
    return _decode(_instruments, result, "get_instruments")


def decode_platform_state(data: msgspec.Raw | bytes) -> PlatformState:
    return _decode(_platform, data, "platform_state")


def changes_positions(changes: Changes, account: str, ts: int) -> list[PositionEvent]:
    """``user.changes`` data -> absolute :class:`PositionEvent` s (one per position).

    ``ts``: the latest trade ``timestamp`` in the message when it has trades, else ``ts``
    (the receive time, ms): Deribit's position objects carry no time of their own.

    Example (Deribit's documented user.changes for BTC-PERPETUAL): ``size`` 185160 USD,
    trade at 1605780344032 ->
    ``PositionEvent(ts=1605780344032, instrument="BTC-PERPETUAL", quantity=185160.0)``.
    """
    if changes.trades:
        ts = max(t.timestamp for t in changes.trades)
    ts = _check_ts(ts)
    return [
        PositionEvent(ts=ts, account=account, instrument=p.instrument_name, quantity=q)
        for p in changes.positions
        for q in (position_quantity(p),)
    ]


def account_event(
    ts: int,
    account: str,
    summaries: Mapping[str, AccountSummary],
    index_usd: Mapping[str, float],
) -> AccountEvent | None:
    """The account's USD equity and margins from its per-currency (coin) summaries.

    Each currency's figures are converted at its USD index (``index_usd["BTC"]``: the
    ``btc_usd`` index the connector holds; stablecoins USDC/USDT count 1:1) and summed.
    ``initial_margin`` falls back to ``projected_initial_margin`` when absent.
    None when a currency's index is not known yet (an equity in coin without its price
    would be a made-up number).

    Example: Deribit's documented account summary (BTC equity 302.61869214, maintenance
    margin 0.8857841) at a btc_usd index of 50,000 -> equity 15,130,934.607 USD,
    maintenance margin 44,289.205 USD.
    """
    equity = im = mm = 0.0
    currencies: dict[str, CurrencyBalance] = {}
    for cur, s in summaries.items():
        init_coin = s.initial_margin if s.initial_margin is not None else s.projected_initial_margin
        # Collateral: the coin held outside options (balance plus the futures' unrealised
        # P&L), which moves one for one with the coin's price.
        currencies[cur.upper()] = CurrencyBalance(
            equity=s.equity,
            initial_margin=init_coin,
            maintenance_margin=s.maintenance_margin,
            collateral=s.equity - (s.options_value or 0.0),
        )
        rate = 1.0 if cur.upper() in DOLLAR_COINS else index_usd.get(cur)
        if rate is None:
            return None
        equity += s.equity * rate
        init = s.initial_margin if s.initial_margin is not None else s.projected_initial_margin
        im += (init or 0.0) * rate
        mm += (s.maintenance_margin or 0.0) * rate
    if not summaries or not math.isfinite(equity):
        return None
    return AccountEvent(
        ts=ts,
        account=account,
        equity=equity,
        initial_margin=im,
        maintenance_margin=mm,
        currencies=currencies,
    )


def instrument_event(inst: Instrument) -> InstrumentEvent | None:
    """The ``instrument`` event riskmon needs for a Deribit instrument, or None.

    Options always get one: an inverse option (``quote_currency == base_currency``, the
    premium in coin) must be declared ``inverse``, and the exact expiry comes from
    ``expiration_timestamp``. Futures and perpetuals parse from their names; the inverse
    (USD-sized) ones are declared by :func:`inverse_future_event`. ``multiplier`` stays 1:
    quantities are ``size`` (coin for options, USD for inverse futures).

    Example (Deribit's documented BTC-13JAN23-16000-P): ``InstrumentEvent(instrument=
    "BTC-13JAN23-16000-P", kind="option", underlying="BTC", expiry="2023-01-13T08:00:00Z",
    strike=16000.0, option_type="put", inverse=True)``.
    """
    if inst.kind != "option":
        return None
    if inst.strike is None or inst.option_type not in ("call", "put"):
        raise Rejected(Reason.MISSING_FIELD, f"option {inst.instrument_name}: strike/option_type")
    if inst.expiration_timestamp is None:
        raise Rejected(Reason.MISSING_FIELD, f"option {inst.instrument_name}: expiry")
    underlying = (
        index_underlying(inst.price_index) if inst.price_index else None
    ) or inst.base_currency.upper()
    expiry = _dt.datetime.fromtimestamp(_check_ts(inst.expiration_timestamp) / 1000, tz=_dt.UTC)
    return InstrumentEvent(
        instrument=inst.instrument_name,
        kind="option",
        underlying=underlying,
        expiry=expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        strike=float(inst.strike),
        option_type="call" if inst.option_type == "call" else "put",
        inverse=inst.quote_currency is not None and inst.quote_currency == inst.base_currency,
    )
