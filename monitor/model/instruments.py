"""Instruments: Deribit-form names, and the registry that numbers them for the engine.

Names (Deribit's form, README "Events"): ``BTC`` (the underlying's USD index), ``BTC_USDC`` (spot),
``BTC-PERPETUAL`` / ``BTC_USDC-PERPETUAL``, ``BTC-27DEC26`` (future),
``BTC-27DEC26-60000-C`` / ``XRP_USDC-30MAY25-2d5-P`` (option; ``d`` is Deribit's decimal
point). Expiry is 08:00 UTC. The underlying is the part before ``_`` or ``-``.

The registry gives every instrument and every underlying a dense integer index, so the
engine keeps prices in numpy arrays and the numerical core never sees a string.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from monitor.model.events import InstrumentEvent, Kind, Reason, Rejected

__all__ = [
    "DOLLAR_COINS",
    "Instrument",
    "InstrumentRegistry",
    "date_code",
    "parse_expiry",
    "parse_name",
]

#: Settlement currencies that are dollars: counted 1:1 as USD, no exposure of their own.
DOLLAR_COINS: Final = frozenset({"USD", "USDC", "USDT"})

_MONTH_NAMES: Final = (
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"
)  # fmt: skip
_MONTHS: Final = {m: i + 1 for i, m in enumerate(_MONTH_NAMES)}
_ASSET = r"[A-Z0-9]{1,20}"
_INDEX_RE: Final = re.compile(rf"^({_ASSET})$")
_SPOT_RE: Final = re.compile(rf"^({_ASSET})_([A-Z0-9]{{2,10}})$")
_PERP_RE: Final = re.compile(rf"^({_ASSET})(?:_[A-Z0-9]{{2,10}})?-PERPETUAL$")
_DATE = r"(\d{1,2})([A-Z]{3})(\d{2})"
_FUT_RE: Final = re.compile(rf"^({_ASSET})(?:_[A-Z0-9]{{2,10}})?-{_DATE}$")
_OPT_RE: Final = re.compile(rf"^({_ASSET})(?:_[A-Z0-9]{{2,10}})?-{_DATE}-(\d+(?:d\d+)?)-([CP])$")
_EXPIRY_HOUR_UTC: Final = 8


@dataclass(frozen=True, slots=True)
class Instrument:
    """One tradable (or index) instrument.

    Attributes
    ----------
    expiry_ms
        Expiry, epoch ms (futures and options), else ``None``.
    multiplier
        Underlying units per contract.
    inverse
        Coin-margined. Options: premium quoted in coin (Deribit's BTC and ETH options), USD
        value = coin price x forward. Futures and perpetuals: USD-sized contracts
        (``multiplier`` USD each: 10 for BTC-PERPETUAL) whose P&L is paid in coin,
        ``N (1/S0 - 1/S)`` for a USD notional ``N``: in USD it is exactly ``N`` per unit
        proportional move.
    collateral
        Coin an account holds as collateral (``<coin>.collateral``, kind ``spot``), made by
        the engine from an ``account`` event's ``currencies``: valued at the index,
        exposure like spot, never margined.
    """

    name: str
    kind: Kind
    underlying: str
    expiry_ms: int | None = None
    strike: float | None = None
    is_call: bool | None = None
    multiplier: float = 1.0
    inverse: bool = False
    collateral: bool = False


def date_code(day: _dt.date) -> str:
    """The date in Deribit-form names: ``27DEC26``, ``6AUG21`` (what :func:`parse_name` reads).

    >>> import datetime
    >>> date_code(datetime.date(2026, 12, 27))
    '27DEC26'
    """
    return f"{day.day}{_MONTH_NAMES[day.month - 1]}{day.year % 100:02d}"


def _expiry_ms(day: str, month: str, year: str) -> int:
    mon = _MONTHS.get(month)
    if mon is None:
        raise ValueError(f"unknown month {month!r}")
    d = _dt.datetime(2000 + int(year), mon, int(day), _EXPIRY_HOUR_UTC, tzinfo=_dt.UTC)
    return int(d.timestamp()) * 1000


def parse_expiry(text: str) -> int:
    """Parse an ISO date or datetime into epoch ms; a bare date means 08:00 UTC."""
    if len(text) == 10:
        d = _dt.date.fromisoformat(text)
        t = _dt.datetime(d.year, d.month, d.day, _EXPIRY_HOUR_UTC, tzinfo=_dt.UTC)
    else:
        t = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.UTC)
    return round(t.timestamp() * 1000)


def parse_name(name: str) -> Instrument | None:
    """Parse a Deribit-form instrument name; ``None`` when it does not parse.

    >>> parse_name("BTC-6AUG21-40000-C").strike
    40000.0
    >>> parse_name("BTC-27DEC26").kind
    'future'
    """
    try:
        if m := _INDEX_RE.match(name):
            return Instrument(name, "index", m[1])
        if m := _PERP_RE.match(name):
            return Instrument(name, "perpetual", m[1])
        if m := _SPOT_RE.match(name):
            return Instrument(name, "spot", m[1])
        if m := _FUT_RE.match(name):
            return Instrument(name, "future", m[1], expiry_ms=_expiry_ms(m[2], m[3], m[4]))
        if m := _OPT_RE.match(name):
            return Instrument(
                name,
                "option",
                m[1],
                expiry_ms=_expiry_ms(m[2], m[3], m[4]),
                strike=float(m[5].replace("d", ".")),
                is_call=m[6] == "C",
            )
    except ValueError:  # a day or month that does not exist: 31FEB26
        return None
    return None


def from_event(ev: InstrumentEvent) -> Instrument:
    """Build an :class:`Instrument` from an ``instrument`` event.

    Raises
    ------
    Rejected
        ``invalid_value`` when the expiry does not parse.
    """
    expiry_ms = None
    if ev.expiry is not None:
        try:
            expiry_ms = parse_expiry(ev.expiry)
        except ValueError:
            raise Rejected(Reason.INVALID_VALUE, f"expiry {ev.expiry!r} is not ISO-8601") from None
    return Instrument(
        name=ev.instrument,
        kind=ev.kind,
        underlying=ev.underlying,
        expiry_ms=expiry_ms,
        strike=ev.strike,
        is_call=None if ev.option_type is None else ev.option_type == "call",
        multiplier=ev.multiplier,
        inverse=ev.inverse,
    )


_KIND_CODE: Final[dict[str, int]] = {
    "index": 0,
    "spot": 1,
    "perpetual": 2,
    "future": 3,
    "option": 4,
}


class InstrumentRegistry:
    """Dense numbering of instruments and underlyings.

    ``index_of(name)`` is the engine's hot-path lookup: a dict hit for a known name, a parse
    on the first sight of a new one. An instrument's underlying is registered with it, so
    every underlying has an index price slot.

    Column arrays (``kind_code``, ``underlying_idx``, ...) are rebuilt lazily when the
    registry has grown since they were last read; their length is ``len(self)``.
    """

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self.instruments: list[Instrument] = []
        self._underlying_index: dict[str, int] = {}
        self.underlyings: list[str] = []
        self._columns_at = -1
        self._cols: dict[str, npt.NDArray[np.generic]] = {}
        #: Bumped on every registration or redefinition: caches keyed on it stay valid.
        self.version = 0

    def __len__(self) -> int:
        return len(self.instruments)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def index_of(self, name: str) -> int:
        """Index of ``name``, registering a parseable name on first sight.

        Raises
        ------
        Rejected
            ``unknown_instrument`` when the name is neither registered nor parseable.
        """
        i = self._index.get(name)
        if i is not None:
            return i
        inst = parse_name(name)
        if inst is None:
            raise Rejected(Reason.UNKNOWN_INSTRUMENT, f"instrument {name!r} does not parse")
        return self.register(inst)

    def get(self, name: str) -> Instrument | None:
        i = self._index.get(name)
        return None if i is None else self.instruments[i]

    def register(self, inst: Instrument) -> int:
        """Add or redefine an instrument (an ``instrument`` event overrides parsed defaults)."""
        self.underlying_of(inst.underlying)
        i = self._index.get(inst.name)
        if i is None:
            i = len(self.instruments)
            self._index[inst.name] = i
            self.instruments.append(inst)
        else:
            self.instruments[i] = inst
        self._columns_at = -1
        self.version += 1
        if inst.kind != "index" and inst.underlying not in self._index:
            self.register(Instrument(inst.underlying, "index", inst.underlying))
        return i

    def underlying_of(self, name: str) -> int:
        """Index of an underlying, registering it on first sight."""
        u = self._underlying_index.get(name)
        if u is None:
            u = len(self.underlyings)
            self._underlying_index[name] = u
            self.underlyings.append(name)
        return u

    def underlying_index(self, name: str) -> int | None:
        return self._underlying_index.get(name)

    def column(self, name: str) -> npt.NDArray[np.generic]:
        """A column over all instruments, by index.

        ``kind_code`` (int8: index 0, spot 1, perpetual 2, future 3, option 4),
        ``underlying_idx`` (int64), ``index_instrument`` (int64: the instrument index of
        the underlying's index), ``expiry_ms`` (float64, NaN when none), ``strike``
        (float64, NaN), ``is_call`` (bool), ``multiplier`` (float64), ``inverse`` (bool),
        ``collateral`` (bool).
        """
        if self._columns_at != self.version:
            self._build_columns()
        return self._cols[name]

    def _build_columns(self) -> None:
        insts = self.instruments
        nan = float("nan")
        self._cols = {
            "kind_code": np.array([_KIND_CODE[i.kind] for i in insts], dtype=np.int8),
            "underlying_idx": np.array(
                [self._underlying_index[i.underlying] for i in insts], dtype=np.int64
            ),
            "index_instrument": np.array(
                [self._index[i.underlying] for i in insts], dtype=np.int64
            ),
            "expiry_ms": np.array(
                [nan if i.expiry_ms is None else float(i.expiry_ms) for i in insts]
            ),
            "strike": np.array([nan if i.strike is None else i.strike for i in insts]),
            "is_call": np.array([bool(i.is_call) for i in insts], dtype=bool),
            "multiplier": np.array([i.multiplier for i in insts], dtype=np.float64),
            "inverse": np.array([i.inverse for i in insts], dtype=bool),
            "collateral": np.array([i.collateral for i in insts], dtype=bool),
        }
        self._columns_at = self.version
