"""Normalized events, schema v1 (the README's "Events" section is the user's reference).

One JSON object per message or per line. Every connector produces these and nothing else;
the engine consumes nothing else. Decoding is msgspec's typed decoder, so structural checks
(required fields, types, ``price > 0``, finite numbers: JSON has no NaN and msgspec rejects
``1e999`` as out of range) run in C; ``NaN`` and ``Infinity`` literals, which some encoders
write, are ``invalid_value`` like ``1e999``, not ``malformed_json``. What msgspec cannot
express (timestamp range, option fields that belong together) is checked in
:func:`normalize`.

After decoding, ``ts`` is always ``int`` epoch milliseconds: :func:`normalize` converts
ISO-8601 strings and float milliseconds once, at the boundary, so the engine never does.
"""

from __future__ import annotations

import datetime as _dt
import enum
import operator
import re
from typing import TYPE_CHECKING, Annotated, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "SCHEMA_VERSION",
    "TS_MAX_MS",
    "TS_MIN_MS",
    "AccountEvent",
    "CurrencyBalance",
    "Event",
    "EventDecoder",
    "InstrumentEvent",
    "PositionEvent",
    "PriceEvent",
    "Reason",
    "Rejected",
    "VenueGreeks",
    "encode_event",
    "iso_ms",
    "normalize",
    "to_epoch_ms",
]

SCHEMA_VERSION: Final = 1

Positive = Annotated[float, Meta(gt=0)]
NonNegative = Annotated[float, Meta(ge=0)]
#: On the wire: epoch milliseconds (int or float) or an ISO-8601 / RFC 3339 string (naive
#: means UTC).
Timestamp: TypeAlias = int | float | _dt.datetime
if TYPE_CHECKING:
    # After decoding, ``normalize`` has made every ``ts`` int epoch ms; that is the type
    # the rest of the code sees. msgspec reads the runtime alias below and decodes the
    # wider wire form; only this module sees an event before it is normalized.
    EventTs: TypeAlias = int
else:
    EventTs = Timestamp
Kind = Literal["index", "spot", "perpetual", "future", "option"]

# 2000-01-01 .. 2200-01-01: anything outside is a unit mistake (seconds, microseconds).
#: Valid event times, epoch ms: 2000-01-01 .. 2200-01-01 (anything outside is a unit mix-up).
TS_MIN_MS: Final = 946_684_800_000
TS_MAX_MS: Final = 7_258_118_400_000


class InstrumentEvent(Struct, tag_field="type", tag="instrument", omit_defaults=True, gc=False):
    """Declares an instrument whose name does not parse, or overrides parsed defaults."""

    instrument: str
    kind: Kind
    underlying: str
    expiry: str | None = None
    strike: Positive | None = None
    option_type: Literal["call", "put"] | None = None
    multiplier: Positive = 1.0
    inverse: bool = False
    ts: EventTs | None = None


class VenueGreeks(Struct, omit_defaults=True, gc=False):
    """An option's Greeks as the venue publishes them, per one unit of underlying.

    Units as riskmon's own (README "How it computes"): ``delta`` underlying units, ``gamma`` per
    1 USD move, ``vega`` USD per vol point, ``theta`` USD per calendar day. A connector
    converts its venue's units into these; riskmon reports the difference from its own.
    """

    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None


class PriceEvent(Struct, tag_field="type", tag="price", omit_defaults=True, gc=False):
    """A mark price. USD per underlying unit, except inverse options: coin per underlying unit.

    ``iv`` is annualised (decimal, 0.55 = 55%); ``underlying_price`` is the forward the venue
    prices the option against (USD); ``greeks`` what the venue says the option's Greeks are.
    """

    ts: EventTs
    instrument: str
    price: Positive
    iv: Positive | None = None
    underlying_price: Positive | None = None
    greeks: VenueGreeks | None = None


class PositionEvent(Struct, tag_field="type", tag="position", omit_defaults=True, gc=False):
    """An absolute position snapshot in signed contracts (not a change)."""

    ts: EventTs
    account: str
    instrument: str
    quantity: float


class CurrencyBalance(Struct, omit_defaults=True, gc=False):
    """One settlement currency of a coin-margined account, in that currency (coin).

    ``collateral``: the coin the account holds outside its options (cash, including the
    futures' unrealised P&L): counted as exposure of the account, like spot.
    """

    equity: float
    initial_margin: NonNegative | None = None
    maintenance_margin: NonNegative | None = None
    collateral: float | None = None


class AccountEvent(Struct, tag_field="type", tag="account", omit_defaults=True, gc=False):
    """Venue-reported equity and margin, USD.

    A coin-margined account (Deribit BTC and ETH) also sends ``currencies``: its figures per
    settlement currency in that currency. riskmon then values them itself at the current
    index (so USD equity moves with the price between account events) and counts each
    currency's ``collateral`` as exposure; the USD fields are what the venue said when.
    """

    ts: EventTs
    account: str
    equity: float
    initial_margin: NonNegative | None = None
    maintenance_margin: NonNegative | None = None
    currencies: dict[str, CurrencyBalance] | None = None


Event: TypeAlias = InstrumentEvent | PriceEvent | PositionEvent | AccountEvent


class Reason(enum.StrEnum):
    """Why an event was rejected: the bounded label set of ``riskmon_rejected_events_total``."""

    MALFORMED_JSON = "malformed_json"
    UNKNOWN_TYPE = "unknown_type"
    MISSING_FIELD = "missing_field"
    INVALID_VALUE = "invalid_value"
    INVALID_TIMESTAMP = "invalid_timestamp"
    UNKNOWN_INSTRUMENT = "unknown_instrument"
    #: A price tick older than the instrument's current price: dropped, never applied.
    OUT_OF_ORDER = "out_of_order"
    #: A price tick that moved more than ``market.max_tick_move``: held until confirmed.
    QUARANTINED = "quarantined"
    INTERNAL_ERROR = "internal_error"


class Rejected(Exception):
    """An input that was refused, with a bounded ``reason`` and a human ``detail``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def iso_ms(ms: int) -> str:
    """Epoch ms as ISO-8601 UTC with millisecond precision (``2026-11-21T06:00:00.250Z``)."""
    t = _dt.datetime.fromtimestamp(ms / 1000.0, tz=_dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def to_epoch_ms(ts: Timestamp) -> int:
    """Convert an event timestamp to int epoch milliseconds, range-checked.

    Raises
    ------
    Rejected
        ``invalid_timestamp`` when outside 2000..2200 (a seconds or microseconds mix-up).
    """
    if isinstance(ts, _dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=_dt.UTC)
        ms = round(ts.timestamp() * 1000.0)
    else:
        ms = int(ts)
    if not TS_MIN_MS <= ms <= TS_MAX_MS:
        raise Rejected(Reason.INVALID_TIMESTAMP, f"ts {ts!r} is not epoch milliseconds")
    return ms


def normalize(event: Event) -> Event:
    """Finish validation msgspec cannot express and make ``ts`` int epoch ms (in place)."""
    ts = event.ts
    if ts is not None and (type(ts) is not int or not TS_MIN_MS <= ts <= TS_MAX_MS):
        event.ts = to_epoch_ms(ts)
    if type(event) is InstrumentEvent and event.kind == "option":
        missing = [f for f in ("expiry", "strike", "option_type") if getattr(event, f) is None]
        if missing:
            raise Rejected(
                Reason.MISSING_FIELD, f"option {event.instrument!r} needs {', '.join(missing)}"
            )
    return event


_BYTE_AT: Final = re.compile(r"invalid character \(byte (\d+)\)")


def _non_finite_literal(exc: msgspec.MsgspecError, message: bytes | str) -> str | None:
    """``NaN``/``Infinity`` where msgspec found an invalid character: JSON has no such
    numbers, but it is a value problem (the README's ``invalid_value``), not bad syntax."""
    m = _BYTE_AT.search(str(exc))
    if m is None:
        return None
    raw = message.encode() if isinstance(message, str) else message
    at = raw[int(m.group(1)) :]
    for word in (b"NaN", b"Infinity"):
        if at.startswith(word):
            return word.decode()
    return None


def _reason_of(exc: msgspec.MsgspecError) -> Reason:
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        if text.endswith("`$.type`") or "missing required field `type`" in text:
            return Reason.UNKNOWN_TYPE
        if "missing required field" in text:
            return Reason.MISSING_FIELD
        if "`$.ts`" in text:
            return Reason.INVALID_TIMESTAMP
        return Reason.INVALID_VALUE
    return Reason.MALFORMED_JSON


class EventDecoder:
    """Decode JSON event messages; one per source (it is cheap, and not thread-safe).

    Examples
    --------
    >>> d = EventDecoder()
    >>> d.decode(b'{"type":"price","ts":1767225600000,"instrument":"BTC","price":1}').price
    1.0
    """

    __slots__ = ("_decoder",)

    def __init__(self) -> None:
        self._decoder = msgspec.json.Decoder(Event)

    def decode(self, message: bytes | str) -> Event:
        """Decode and validate one message.

        Raises
        ------
        Rejected
            With the reason and msgspec's description (which names the offending field).
        """
        try:
            event = self._decoder.decode(message)
        except msgspec.MsgspecError as exc:
            word = _non_finite_literal(exc, message)
            if word is not None:
                raise Rejected(Reason.INVALID_VALUE, f"non-finite number {word} ({exc})") from None
            raise Rejected(_reason_of(exc), str(exc)) from None
        return normalize(event)

    def decode_lines(self, buf: bytes) -> tuple[list[Event], list[tuple[int, Rejected]]]:
        """Decode newline-delimited events.

        The whole buffer is decoded in one C call; only when it holds a bad line is it
        decoded again line by line, so a clean recording pays no per-line Python cost.

        Returns
        -------
        events, rejections
            Accepted events in order, and ``(line_number, Rejected)`` for the rest
            (line numbers start at 0 within ``buf``; blank lines are skipped).
        """
        try:
            events = self._decoder.decode_lines(buf)
        except msgspec.MsgspecError:
            return self._decode_each(buf)
        lines = buf.count(b"\n") + (0 if not buf or buf.endswith(b"\n") else 1)
        if len(events) != lines:
            # Two objects on one line, one split over two, or blank lines: msgspec's
            # decode_lines tolerates what the per-line contract does not.
            return self._decode_each(buf)
        if events and _all_plain(events):
            return events, []
        try:
            for ev in events:
                ts = ev.ts
                if (
                    type(ts) is not int
                    or not TS_MIN_MS <= ts <= TS_MAX_MS
                    or type(ev) is InstrumentEvent
                ):
                    normalize(ev)
        except Rejected:
            return self._decode_each(buf)
        return events, []

    def _decode_each(self, buf: bytes) -> tuple[list[Event], list[tuple[int, Rejected]]]:
        events: list[Event] = []
        rejections: list[tuple[int, Rejected]] = []
        for n, line in enumerate(buf.split(b"\n")):
            if not line.strip():
                continue
            try:
                events.append(self.decode(line))
            except Rejected as rej:
                rejections.append((n, rej))
        return events, rejections


def _all_plain(events: list[Event]) -> bool:
    """Whether :func:`normalize` would leave every event as it is: no instrument events and
    every ``ts`` an int epoch ms in range. Loops in C (``map``, ``set``, ``min``, ``max``):
    a clean recording's million events are checked without a Python-level loop."""
    if InstrumentEvent in set(map(type, events)):
        return False
    stamps = list(map(_ts_of, events))
    return set(map(type, stamps)) == {int} and min(stamps) >= TS_MIN_MS and max(stamps) <= TS_MAX_MS


_ts_of: Final = operator.attrgetter("ts")
_encoder = msgspec.json.Encoder()


def encode_event(event: Event) -> bytes:
    """Encode an event as one JSON object (no newline); the inverse of ``decode``."""
    return _encoder.encode(event)
