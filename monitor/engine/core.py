"""The single-writer engine: connectors -> queue -> engine -> immutable snapshots.

Only the engine mutates market, book and account state, so nothing needs a lock; readers
take :attr:`Engine.snapshot`, an immutable :class:`RiskSnapshot`, by reference.

Two clocks, both fed from outside (the engine never reads the wall clock):

* the **sample clock** runs on *event time*: a grid point ``g`` of ``sample_interval`` closes
  when the first price tick with ``ts > g`` arrives, and the estimator receives the index
  prices as they stood at ``g`` (the last tick at or before it). Live and replay therefore
  sample identically, and a replay of a recording reproduces the live run's estimates.
  Grid points skipped without ticks carry zero returns; an index silent for longer than
  ``max_gap`` is stale and contributes no return (the estimator drops it until it ticks
  again, while the other indices go on), and an outage of every feed restarts the grid, so
  an outage is not read as a calm market.
* the **evaluation clock** is passed to :meth:`Engine.evaluate_due`: wall time live, event
  time in replay. An evaluation as of ``t`` sees every event with ``ts <= t``. The clock
  never goes back: an evaluation asked for a time before the last one is made as of the
  last one.

Events from several venues are never perfectly ordered. An event older than the clock is
still applied when it is a snapshot (a position or an account: the latest one received is
the venue's latest word). A price tick older than the instrument's current price is dropped
and counted (``out_of_order``): it never overwrites a newer price.

A price tick of an index, spot, perpetual or future that moves more than
``max_tick_move`` (a fraction: 0.5 = 50%) from the instrument's current price is
*quarantined*: counted (``quarantined``), not applied. The next tick of that instrument
decides: within ``max_tick_move`` of the quarantined price, the move was real and both are
applied in order; otherwise the quarantined tick is discarded. One bad tick therefore never
reaches the estimator. Option marks are not checked (cheap options double routinely).

A restart need not start cold: :meth:`Engine.state` is everything the engine carries
between events, as plain data, and :meth:`Engine.restore` takes it back into a fresh
engine, which then goes on exactly as the saved one would have
(``monitor.engine.state`` keeps it in a file).
"""

from __future__ import annotations

import copy
import operator
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, fields, replace
from typing import Any, Final, Protocol, cast

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.engine.evaluation import AccountState, Evaluator, RiskSettings, UnderlyingPrices
from monitor.engine.stats import EngineStats
from monitor.engine.valuation import Book, MarketArrays, build_book
from monitor.engine.whatif import WhatIfState
from monitor.model.alert import Transition
from monitor.model.episode import Episode
from monitor.model.events import (
    AccountEvent,
    Event,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
    VenueGreeks,
    iso_ms,
)
from monitor.model.health import ConnectorStatus
from monitor.model.instruments import (
    DOLLAR_COINS,
    Instrument,
    InstrumentRegistry,
    from_event,
    parse_name,
)
from monitor.model.snapshot import RiskSnapshot
from monitor.quant.estimator import RollingEstimator, array_from_state, array_state
from monitor.rules.machine import RuleEngine
from monitor.rules.pack import RuleInput

__all__ = ["Engine", "EngineSettings", "SettingsChanged"]

_NO_TS: Final = -(2**62)
#: An instrument's fields, in the order its saved row lists them.
_INSTRUMENT_FIELDS: Final = tuple(f.name for f in fields(Instrument))
#: Batched price path (:meth:`Engine.replay_prices`): rows checked at once at most, and at
#: least after an anomaly; rows taken one by one from an anomaly on; shortest run of price
#: events :meth:`Engine.replay` hands to it.
_WINDOW: Final = 16_384
_MIN_WINDOW: Final = 256
_SLOW_ROWS: Final = 8
_MIN_RUN: Final = 16
#: Ticks per clock segment below which a window's rows are written one by one.
_DENSE: Final = 24
_get_instrument: Final = operator.attrgetter("instrument")
_get_ts: Final = operator.attrgetter("ts")
_get_price: Final = operator.attrgetter("price")
_get_iv: Final = operator.attrgetter("iv")
_get_fwd: Final = operator.attrgetter("underlying_price")
_get_greeks: Final = operator.attrgetter("greeks")
_TAG: Final[dict[type, str]] = {
    PriceEvent: "price",
    PositionEvent: "position",
    AccountEvent: "account",
    InstrumentEvent: "instrument",
}


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Engine timing, all in milliseconds (``[estimator]`` and ``[risk]`` in the config)."""

    sample_interval_ms: int = 1_000
    halflife_ms: int = 600_000
    fast_halflife_ms: int = 60_000
    warmup_ms: int = 300_000
    max_gap_ms: int = 60_000
    eval_interval_ms: int = 250
    #: Quarantine bound on a price tick's relative move (``[market] max_tick_move``);
    #: 0 turns the quarantine off.
    max_tick_move: float = 0.5
    var_halflife_ms: int = 86_400_000


class SettingsChanged(ValueError):
    """A saved state was made under other estimator or regime settings (it does not apply)."""


class Recorder(Protocol):
    """Where accepted events go for ``--record`` (``monitor.engine.record.Recorder``)."""

    def write(self, event: Event) -> None: ...


class _Ticks:
    """Price ticks column-wise (:meth:`Engine.replay_prices`), with what the stores need:
    where the optional values are present, and whether any instrument has ticks with and
    without one (then the last tick carrying it is looked for, not just the last tick)."""

    __slots__ = (
        "code",
        "forward",
        "greeks",
        "has_forward",
        "has_greeks",
        "has_iv",
        "iv",
        "mixed_forward",
        "mixed_greeks",
        "mixed_iv",
        "names",
        "price",
        "ts",
    )

    def __init__(
        self,
        names: Sequence[str],
        code: npt.NDArray[np.integer[Any]],
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        iv: npt.NDArray[np.float64] | None,
        forward: npt.NDArray[np.float64] | None,
        greeks: npt.NDArray[np.float64] | None,
        has_greeks: npt.NDArray[np.bool_] | None,
    ) -> None:
        n = len(ts)
        if not (len(code) == len(price) == n) or any(
            x is not None and len(x) != n for x in (iv, forward, greeks, has_greeks)
        ):
            raise ValueError("replay_prices: columns of different lengths")
        if (greeks is None) != (has_greeks is None):
            raise ValueError("replay_prices: greeks and has_greeks go together")
        self.names = names
        self.code = code.astype(np.int64, copy=False)
        self.ts = ts.astype(np.int64, copy=False)
        self.price = price.astype(np.float64, copy=False)
        self.iv = iv
        self.forward = forward
        self.greeks = greeks
        self.has_iv = None if iv is None else ~np.isnan(iv)
        self.has_forward = None if forward is None else ~np.isnan(forward)
        self.has_greeks = has_greeks
        self.mixed_iv = self._mixed(self.has_iv)
        self.mixed_forward = self._mixed(self.has_forward)
        self.mixed_greeks = self._mixed(has_greeks)

    def _mixed(self, present: npt.NDArray[np.bool_] | None) -> bool:
        if present is None or present.all() or not present.any():
            return False
        m = len(self.names)
        with_value = np.bincount(self.code[present], minlength=m)
        return bool(((with_value > 0) & (with_value < np.bincount(self.code, minlength=m))).any())

    def events(self, a: int, b: int) -> list[Event]:
        """Rows ``[a, b)`` as :class:`PriceEvent` s (the one-by-one path)."""
        out: list[Event] = []
        for r in range(a, b):
            iv = fwd = None
            greeks = None
            if self.has_iv is not None and self.has_iv[r]:
                iv = float(self.iv[r])  # type: ignore[index]
            if self.has_forward is not None and self.has_forward[r]:
                fwd = float(self.forward[r])  # type: ignore[index]
            if self.has_greeks is not None and self.greeks is not None and self.has_greeks[r]:
                d, g, v, t = (None if x != x else x for x in self.greeks[r].tolist())
                greeks = VenueGreeks(d, g, v, t)
            out.append(
                PriceEvent(
                    int(self.ts[r]),
                    self.names[int(self.code[r])],
                    float(self.price[r]),
                    iv,
                    fwd,
                    greeks,
                )
            )
        return out


def _patched_book(book: Book, quantities: Mapping[tuple[str, int], float]) -> Book:
    """``book`` with the quantities of positions it holds replaced: ``{(account,
    instrument): quantity}``. Equal to :func:`build_book` of the changed positions (the
    same rows; only quantities differ) without a Python pass over every position."""
    q = book.quantity.copy()
    k_of = {a: k for k, a in enumerate(book.accounts)}
    starts = book.starts
    for (account, i), qty in quantities.items():
        k = k_of[account]
        lo, hi = int(starts[k]), int(starts[k + 1])
        r = lo + int(np.searchsorted(book.instrument[lo:hi], i))
        if r >= hi or book.instrument[r] != i:
            raise AssertionError(f"position {account}/{i} is not in the book it patches")
        q[r] = qty
    return replace(book, quantity=q)


class Engine:
    """Applies events to state and produces snapshots. Not thread-safe: one task owns it."""

    def __init__(
        self,
        settings: EngineSettings | None = None,
        *,
        risk: RiskSettings | None = None,
        recorder: Recorder | None = None,
        rules: RuleEngine[RuleInput] | None = None,
        history_limit: int | None = None,
        scenario_executor: Executor | None = None,
    ) -> None:
        """``rules`` run at every evaluation, on the engine clock (none: no alerts).

        ``history_limit`` bounds ``alert_history`` (the daemon keeps the latest ones; a
        replay keeps the whole run, which is what a desk tunes its rules on).
        ``scenario_executor``: live, the scenario pass runs there (see ``Evaluator``).
        """
        self.settings = s = settings or EngineSettings()
        self._evaluator = Evaluator(risk, executor=scenario_executor)
        self._rules = rules
        self._history: deque[Transition] = deque(maxlen=history_limit)
        self._history_view: tuple[Transition, ...] = ()
        self._connectors: Callable[[], Sequence[ConnectorStatus]] = tuple
        self._on_transitions: Callable[[Sequence[Transition]], None] | None = None
        self.registry = InstrumentRegistry()
        self.estimator = RollingEstimator(
            s.sample_interval_ms,
            s.halflife_ms,
            s.fast_halflife_ms,
            s.warmup_ms,
            var_halflife_ms=s.var_halflife_ms,
            max_gap_ms=s.max_gap_ms,
        )
        self.stats = EngineStats()
        self.snapshot: RiskSnapshot | None = None
        self._recorder = recorder
        self._on_evaluation: Callable[[float], None] | None = None
        self._index: dict[str, int] = {}  # hot-path copy of the registry's name -> index
        cap = 64
        self._price = np.full(cap, np.nan)
        self._price_ts = np.zeros(cap, dtype=np.int64)
        self._guarded: list[bool] = []  # per instrument: price moves are bounded (not options)
        self._guarded_np: npt.NDArray[np.bool_] | None = None  # its array, for batches
        self._known = 0  # len(self._index) when a batch's rows were last numbered
        self._suspect: dict[int, PriceEvent] = {}  # quarantined tick per instrument
        self._iv = np.full(cap, np.nan)
        self._fwd = np.full(cap, np.nan)
        self._venue_greeks = np.full((cap, 4), np.nan)  # delta, gamma, vega, theta per unit
        self._positions: dict[str, dict[int, tuple[float, int]]] = {}  # (qty, opened ms)
        self._accounts: dict[str, AccountState] = {}
        self._book: Book | None = None
        # Quantities of positions the built book already holds, changed since it was built:
        # patched into a copy of its quantities instead of rebuilding it (a venue's account
        # update moves a coin's collateral every second or so; a fill moves one position).
        self._book_patch: dict[tuple[str, int], float] = {}
        # The book or an account changed since the last evaluation: its scenario figures
        # are due. Positions changed (not only venue figures): the slow model-margin
        # distance is recomputed at once too, not on its own clock: of these accounts, or
        # of every account (an instrument defined, a held one's first price).
        self._scenarios_due = False
        self._moved_accounts: set[str] = set()
        self._positions_moved = False
        self._unpriced_held: set[int] = set()  # held instruments without a price yet
        self._book_version = -1
        self._und_index_inst = np.zeros(0, dtype=np.int64)
        self._und_version = -1
        self._dt = s.sample_interval_ms
        self._grid_next = _NO_TS  # next grid point to close; _NO_TS before the first tick
        self._eval_next = _NO_TS
        self._clock_ms = _NO_TS  # as of the last evaluation: never goes back
        self._latest_ms = _NO_TS  # the latest event time seen (events are not in order)
        self._seq = 0
        #: Whether anything reached the engine since the last evaluation (an evaluation
        #: with nothing new is cheap: ``Evaluator.evaluate``'s ``changed``).
        self._changed = True
        self._rows: list[list[Any]] = []
        self._rows_version = -1

    def set_alert_sink(
        self,
        connectors: Callable[[], Sequence[ConnectorStatus]],
        on_transitions: Callable[[Sequence[Transition]], None],
    ) -> None:
        """Live wiring: the connectors' health for ``connector_down``, and where alert
        transitions go (the notifier dispatcher). A replay has neither."""
        self._connectors = connectors
        self._on_transitions = on_transitions

    def set_evaluation_observer(self, observe: Callable[[float], None]) -> None:
        """Call ``observe(seconds)`` after every evaluation (the duration histogram)."""
        self._on_evaluation = observe

    # -- state that survives a restart ---------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything a restarted engine needs to go on as if it never stopped, as plain data.

        The instruments (registry order), the latest prices, IVs, forwards and venue Greeks
        with their tick times, a quarantined tick awaiting confirmation, the positions and
        accounts, the sample and evaluation clocks, the estimator
        (:meth:`RollingEstimator.state`), the regime baselines, the rule states
        (:meth:`RuleEngine.state`) and the alert history. Activity counters
        (:attr:`stats`) start again from zero, as Prometheus counters do. Arrays are
        copied: the result stays valid while the engine goes on.
        """
        n = len(self.registry)
        history = list(self._history)
        return {
            "instruments": self._instrument_rows(),
            "underlyings": list(self.registry.underlyings),
            "price": array_state(self._price[:n]),
            "price_ts": array_state(self._price_ts[:n]),
            "iv": array_state(self._iv[:n]),
            "forward": array_state(self._fwd[:n]),
            "venue_greeks": array_state(self._venue_greeks[:n]),
            "suspect": [[i, msgspec.msgpack.encode(ev)] for i, ev in self._suspect.items()],
            "positions": [
                [account, [[i, q, opened] for i, (q, opened) in held.items()]]
                for account, held in self._positions.items()
            ],
            "accounts": [[name, msgspec.to_builtins(acc)] for name, acc in self._accounts.items()],
            "grid_next": self._grid_next,
            "eval_next": self._eval_next,
            "clock_ms": self._clock_ms,
            "latest_ms": self._latest_ms,
            "seq": self._seq,
            "estimator": self.estimator.state(),
            "evaluator": self._evaluator.state(self.estimator),
            "rules": None if self._rules is None else self._rules.state(),
            "history": [t.as_state() for t in history],
        }

    def _instrument_rows(self) -> list[list[Any]]:
        """The registry as rows of :data:`_INSTRUMENT_FIELDS` (cached per registry version:
        instruments are immutable, and rebuilding 10,000 rows would stall the loop)."""
        reg = self.registry
        if self._rows_version != reg.version:
            self._rows = [[getattr(i, f) for f in _INSTRUMENT_FIELDS] for i in reg.instruments]
            self._rows_version = reg.version
        return list(self._rows)

    def restore(self, state: dict[str, Any]) -> None:
        """Take the state :meth:`state` described; call on a fresh engine, before any event.

        All or nothing: the engine is unchanged when this raises.

        Raises
        ------
        SettingsChanged
            The state's estimator settings (sample interval, halflives, warmup, max gap)
            or regime halflife are not this engine's.
        ValueError
            ``state`` is not what :meth:`state` returns.
        """
        s = self.settings
        try:
            est_state = state["estimator"]
            ev_state = state["evaluator"]
            saved = (
                est_state["sample_interval_ms"],
                list(est_state["halflife_ms"]),
                est_state["warmup_ms"],
                est_state["max_gap_ms"],
                ev_state["baselines"]["vol_ratio"]["halflife_ms"],
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an engine state: {exc!r}") from None
        ours = (
            s.sample_interval_ms,
            [s.halflife_ms, s.fast_halflife_ms, s.var_halflife_ms],
            s.warmup_ms,
            s.max_gap_ms,
            self._evaluator.settings.regime_halflife_ms,
        )
        if saved != ours:
            raise SettingsChanged(f"saved under estimator settings {saved}, running {ours}")
        try:
            self._restore(state)
        except (
            KeyError,
            TypeError,
            AttributeError,
            IndexError,
            OverflowError,
            msgspec.DecodeError,
            msgspec.ValidationError,
        ) as exc:
            raise ValueError(f"not an engine state: {exc!r}") from None

    def _restore(self, state: dict[str, Any]) -> None:
        if len(self.registry) or self._latest_ms != _NO_TS:
            raise ValueError("a state is restored into a fresh engine, before any event")
        registry = InstrumentRegistry()
        rows = state["instruments"]
        if any(len(row) != len(_INSTRUMENT_FIELDS) for row in rows):
            raise ValueError("an instrument row of another shape")
        instruments = [Instrument(*row) for row in rows]
        for inst in instruments:
            registry.register(inst)
        if registry.instruments != instruments or list(registry.underlyings) != list(
            state["underlyings"]
        ):
            raise ValueError("the instruments do not rebuild in their saved order")
        n = len(registry)
        arrays = {
            k: array_from_state(state[k], shape, dtype)
            for k, shape, dtype in (
                ("price", (n,), "<f8"),
                ("price_ts", (n,), "<i8"),
                ("iv", (n,), "<f8"),
                ("forward", (n,), "<f8"),
                ("venue_greeks", (n, 4), "<f8"),
            )
        }
        suspect = {
            int(i): msgspec.msgpack.decode(raw, type=PriceEvent) for i, raw in state["suspect"]
        }
        positions: dict[str, dict[int, tuple[float, int]]] = {}
        for account, held in state["positions"]:
            book = positions[str(account)] = {}
            for i, q, opened in held:
                if not 0 <= int(i) < n:
                    raise ValueError(f"position in instrument {i} of {n}")
                book[int(i)] = (float(q), int(opened))
        accounts = {
            str(name): msgspec.convert(acc, AccountState) for name, acc in state["accounts"]
        }
        if any(not 0 <= i < n for i in suspect):
            raise ValueError("a quarantined tick of an unknown instrument")
        estimator = RollingEstimator.from_state(state["estimator"])
        if estimator.n_assets > len(registry.underlyings):
            raise ValueError("the estimator has more assets than there are underlyings")
        history = [Transition.from_state(t) for t in state["history"]]
        clocks = [int(state[k]) for k in ("grid_next", "eval_next", "clock_ms", "latest_ms", "seq")]
        rules = (
            None
            if self._rules is None or state["rules"] is None
            else RuleEngine.from_state(self._rules.rules, state["rules"])
        )
        self._evaluator.restore(state["evaluator"], estimator, len(registry.underlyings))
        # Nothing below raises: the engine changes all at once. The registry object is
        # shared (index routing holds it): filled in place, as validated above.
        for inst in instruments:
            self.registry.register(inst)
        registry = self.registry
        self._index = {inst.name: i for i, inst in enumerate(registry.instruments)}
        self._guarded = []
        self._sync_guarded()
        self._grow(n)
        for k, attr in (
            ("price", "_price"),
            ("price_ts", "_price_ts"),
            ("iv", "_iv"),
            ("forward", "_fwd"),
            ("venue_greeks", "_venue_greeks"),
        ):
            getattr(self, attr)[:n] = arrays[k]
        self._suspect = suspect
        self._positions = positions
        # Held instruments still without a price: their first price makes the pass due.
        self._unpriced_held = {
            i for book in positions.values() for i in book if self._price[i] != self._price[i]
        }
        self._accounts = accounts
        self.estimator = estimator
        self._grid_next, self._eval_next, self._clock_ms, self._latest_ms, self._seq = clocks
        if rules is not None:
            self._rules = rules
        self._history.clear()
        self._history.extend(history)
        self._history_view = tuple(self._history)
        self._drop_book()
        self._und_version = -1
        self._changed = True

    # -- events -----------------------------------------------------------------------

    def apply(self, event: Event, source: str) -> None:
        """Apply one event and count it. Raises :class:`Rejected` (state unchanged)."""
        t = type(event)
        ts = event.ts
        self._changed = True
        if ts is not None and ts > self._latest_ms:
            self._latest_ms = ts
        if t is PriceEvent:
            try:
                self._apply_price(event)  # type: ignore[arg-type]
            except Rejected as rej:
                self._record_quarantined(event, rej)
                raise
        elif t is PositionEvent:
            self._apply_position(event)  # type: ignore[arg-type]
        elif t is AccountEvent:
            self._apply_account(event)  # type: ignore[arg-type]
        else:
            self._apply_instrument(event)  # type: ignore[arg-type]
        self.stats.accepted[(source, _TAG[t])] += 1
        if self._recorder is not None:
            self._recorder.write(event)

    def reject(self, source: str, rejected: Rejected) -> None:
        """Count a refused input (the caller logs it, rate-limited)."""
        self.stats.rejected[(source, rejected.reason.value)] += 1

    def _record_quarantined(self, event: Event, rej: Rejected) -> None:
        # A quarantined tick may be believed later: the recording keeps it, so a replay
        # of the recording decides the same way the live run did.
        if rej.reason is Reason.QUARANTINED and self._recorder is not None:
            self._recorder.write(event)

    def replay(self, events: Iterable[Event], source: str) -> list[tuple[int, Rejected]]:
        """Apply events in order on *event time*: evaluations fire as time passes.

        The hot path of ``riskmon replay``: runs of price ticks go through
        :meth:`replay_prices` (column-wise); everything else through :meth:`apply`. The
        outcome is exactly that of applying the events one by one with
        :meth:`evaluate_due` before each (``tests/test_replay_fast.py``). Returns the
        rejections (already counted), each with the index in ``events`` of the event refused.
        """
        evs = events if isinstance(events, list) else list(events)
        if self._recorder is not None or len(evs) < _MIN_RUN:
            return self._replay_each(evs, 0, len(evs), source)
        rejected: list[tuple[int, Rejected]] = []
        types = list(map(type, evs))
        if types.count(PriceEvent) == len(evs):
            return self._replay_price_events(cast(list[PriceEvent], evs), source)
        is_price = np.array([t is PriceEvent for t in types], np.bool_)
        # Runs of price ticks [a, b): where is_price switches on, and off.
        edges = np.flatnonzero(np.diff(is_price.view(np.int8), prepend=0, append=0))
        done = 0
        for a, b in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
            if b - a < _MIN_RUN:
                continue
            if done < a:
                rejected += self._replay_each(evs, done, a, source)
            ticks = cast(list[PriceEvent], evs[a:b])
            rejected += [(a + r, rej) for r, rej in self._replay_price_events(ticks, source)]
            done = b
        if done < len(evs):
            rejected += self._replay_each(evs, done, len(evs), source)
        return rejected

    def _replay_price_events(
        self, ticks: list[PriceEvent], source: str
    ) -> list[tuple[int, Rejected]]:
        """:meth:`replay_prices` over decoded price events (columns made here)."""
        n = len(ticks)
        instruments = list(map(_get_instrument, ticks))
        names = {name: k for k, name in enumerate(dict.fromkeys(instruments))}
        code = np.fromiter(map(names.__getitem__, instruments), np.int64, n)
        ts = np.fromiter(map(_get_ts, ticks), np.int64, n)
        price = np.fromiter(map(_get_price, ticks), np.float64, n)
        ivs = list(map(_get_iv, ticks))
        fwds = list(map(_get_fwd, ticks))
        gs = list(map(_get_greeks, ticks))
        iv = None if ivs.count(None) == n else np.array(ivs, np.float64)  # None -> NaN
        fwd = None if fwds.count(None) == n else np.array(fwds, np.float64)
        greeks = has_greeks = None
        if gs.count(None) != n:
            has_greeks = np.array([g is not None for g in gs], np.bool_)
            greeks = np.array(  # a Greek not given -> NaN, as in _store_price
                [(None,) * 4 if g is None else (g.delta, g.gamma, g.vega, g.theta) for g in gs],
                np.float64,
            )
        return self.replay_prices(
            list(names),
            code,
            ts,
            price,
            source,
            iv=iv,
            forward=fwd,
            greeks=greeks,
            has_greeks=has_greeks,
        )

    def _replay_each(
        self, events: Sequence[Event], start: int, stop: int, source: str
    ) -> list[tuple[int, Rejected]]:
        """``events[start:stop]`` one by one: the reference path (and the path of events
        other than price ticks). Rejections carry the index in ``events``."""
        rejected: list[tuple[int, Rejected]] = []
        index = self._index
        prices = 0
        latest = self._latest_ms
        for k in range(start, stop):
            ev = events[k]
            ts = ev.ts
            if ts is not None and ts > self._eval_next:
                self.evaluate_due(ts)
            if type(ev) is PriceEvent:
                if ev.ts > latest:
                    latest = ev.ts
                i = index.get(ev.instrument)
                if i is not None:
                    try:
                        self._set_price(i, ev)
                    except Rejected as rej:
                        self._record_quarantined(ev, rej)
                        self.reject(source, rej)
                        rejected.append((k, rej))
                        continue
                    if self._recorder is not None:
                        self._recorder.write(ev)
                    prices += 1
                    continue
            try:
                self.apply(ev, source)
            except Rejected as rej:
                self.reject(source, rej)
                rejected.append((k, rej))
            latest = max(latest, self._latest_ms)
        self._latest_ms = latest
        if prices:
            self.stats.accepted[(source, "price")] += prices
        return rejected

    def replay_prices(
        self,
        names: Sequence[str],
        code: npt.NDArray[np.integer[Any]],
        ts: npt.NDArray[np.int64],
        price: npt.NDArray[np.float64],
        source: str,
        *,
        iv: npt.NDArray[np.float64] | None = None,
        forward: npt.NDArray[np.float64] | None = None,
        greeks: npt.NDArray[np.float64] | None = None,
        has_greeks: npt.NDArray[np.bool_] | None = None,
    ) -> list[tuple[int, Rejected]]:
        """Apply price ticks given column-wise, in row order, on event time.

        The same outcome as :meth:`replay` of one :class:`PriceEvent` per row, without
        building them. Rows must be validated as decoded events are (``price > 0``, finite;
        ``ts`` int epoch ms in range; ``iv`` and ``forward`` positive where present).

        Parameters
        ----------
        names
            Instrument names; row ``r`` is of ``names[code[r]]``.
        code, ts, price
            Shape ``(n,)``: the name's number, epoch ms, price (the event's units).
        iv, forward
            Shape ``(n,)`` or None: ``iv`` and ``underlying_price``; NaN where absent.
        greeks, has_greeks
            Shapes ``(n, 4)`` (delta, gamma, vega, theta; NaN for a Greek not given) and
            ``(n,)``: the venue's Greeks where ``has_greeks``.

        Returns the rejections (already counted) with their row numbers.

        How: rows are taken in windows; a vectorised check finds the first row that is out of
        order, moves more than ``max_tick_move``, meets a quarantined tick or names an
        instrument the engine does not know yet. The rows before it are applied in segments
        cut where an evaluation falls due or a sample grid point closes (so both see state
        exactly as the one-by-one path leaves it), each segment's last tick per instrument
        written at once. That row, and a few after it, go the one-by-one way.
        """
        n = len(ts)
        if not n:
            return []
        cols = _Ticks(names, np.asarray(code), ts, price, iv, forward, greeks, has_greeks)
        if self._recorder is not None:
            return self._replay_each(cols.events(0, n), 0, n, source)
        rejected: list[tuple[int, Rejected]] = []
        inst = self._instrument_numbers(cols)
        accepted = 0
        window = _WINDOW
        a = 0
        while a < n:
            e = min(a + window, n)
            f, nxt = self._first_anomaly(cols, inst, a, e)
            if f > a:
                self._apply_clean(cols, inst, nxt, a, f)
                accepted += f - a
            if f == e:
                window = min(window * 2, _WINDOW)
                a = e
                continue
            # One by one from the anomaly on: a few rows, then try the fast way again.
            window = max(window // 4, _MIN_WINDOW)
            b = min(f + _SLOW_ROWS, n)
            slow = self._replay_each(cols.events(f, b), 0, b - f, source)
            rejected += [(f + k, rej) for k, rej in slow]
            if len(self._index) != self._known:
                inst = self._instrument_numbers(cols)
            a = b
        self._latest_ms = max(self._latest_ms, int(ts.max()))
        if accepted:
            self.stats.accepted[(source, "price")] += accepted
        return rejected

    def _instrument_numbers(self, cols: _Ticks) -> npt.NDArray[np.int64]:
        """Engine instrument number of every row (-1: not known yet)."""
        index = self._index
        self._known = len(index)
        lut = np.array([index.get(name, -1) for name in cols.names], dtype=np.int64)
        inst: npt.NDArray[np.int64] = lut[cols.code]
        return inst

    def _guarded_mask(self) -> npt.NDArray[np.bool_]:
        if len(self._guarded) < len(self.registry):
            self._sync_guarded()
        if self._guarded_np is None or len(self._guarded_np) != len(self._guarded):
            self._guarded_np = np.array(self._guarded, dtype=np.bool_)
        return self._guarded_np

    def _first_anomaly(
        self, cols: _Ticks, inst: npt.NDArray[np.int64], a: int, e: int
    ) -> tuple[int, npt.NDArray[np.int64]]:
        """The first row in ``[a, e)`` the fast path cannot take (``e`` if none), assuming
        the rows before it are applied; and, per row, the row of the instrument's next tick
        in the window (``e`` if none)."""
        ii = inst[a:e]
        m = e - a
        if (ii < 0).any():
            bad = ii < 0
            f = int(np.argmax(bad))
            if f == 0:
                return a, np.empty(0, dtype=np.int64)
            e = a + f
            ii = ii[:f]
            m = f
        tt = cols.ts[a:e]
        pp = cols.price[a:e]
        order = np.argsort(ii, kind="stable")
        si = ii[order]
        same = si[1:] == si[:-1]
        later = order[1:][same]
        earlier = order[:-1][same]
        nxt = np.full(m, e, dtype=np.int64)
        nxt[earlier] = later + a
        prev_ts = self._price_ts[ii]
        prev_px = self._price[ii]
        prev_ts[later] = tt[earlier]
        prev_px[later] = pp[earlier]
        bad = tt < prev_ts
        bound = self.settings.max_tick_move
        if bound > 0.0:
            with np.errstate(invalid="ignore", divide="ignore"):
                jump = np.abs(pp / prev_px - 1.0) > bound  # False where prev_px is NaN
            bad |= jump & self._guarded_mask()[ii]
            if self._suspect:
                bad |= np.isin(ii, np.fromiter(self._suspect, np.int64, len(self._suspect)))
        if self._unpriced_held:  # a held instrument's first price: the scenario pass is due
            held = np.fromiter(self._unpriced_held, np.int64, len(self._unpriced_held))
            bad |= np.isin(ii, held)
        if bad.any():
            return a + int(np.argmax(bad)), nxt
        return e, nxt

    def _apply_clean(
        self, cols: _Ticks, inst: npt.NDArray[np.int64], nxt: npt.NDArray[np.int64], a: int, f: int
    ) -> None:
        """Apply rows ``[a, f)``, none of them anomalous, with the clocks as row by row."""
        ts = cols.ts
        high = np.maximum.accumulate(ts[a:f])  # first row past a bound: searchsorted
        s = self.settings
        segments = (int(high[-1]) - int(ts[a])) // min(s.eval_interval_ms, s.sample_interval_ms)
        if f - a < _DENSE * (segments + 1):
            # Few ticks between clock boundaries (a book ticking once a second): numpy's
            # per-call cost would exceed the work, so write them one by one (no checks to
            # make: none is out of order or jumps).
            self._apply_sparse(cols, inst, a, f)
            return
        pos = a
        while pos < f:
            t = int(ts[pos])
            if t > self._eval_next:
                self.evaluate_due(t)
            if t > self._grid_next:
                self._close_grid(t)
            bound = min(self._eval_next, self._grid_next)
            end = pos + 1 + int(np.searchsorted(high[pos + 1 - a :], bound, side="right"))
            last = np.flatnonzero(nxt[pos - a : end - a] >= end) + pos
            self._store_rows(cols, inst, last, pos, end)
            pos = end

    def _apply_sparse(self, cols: _Ticks, inst: npt.NDArray[np.int64], a: int, f: int) -> None:
        price, price_ts = self._price, self._price_ts
        extras = [
            (values[a:f].tolist(), present[a:f].tolist(), target)
            for values, present, target in (
                (cols.iv, cols.has_iv, self._iv),
                (cols.forward, cols.has_forward, self._fwd),
                (cols.greeks, cols.has_greeks, self._venue_greeks),
            )
            if values is not None and present is not None and present[a:f].any()
        ]
        rows = zip(inst[a:f].tolist(), cols.ts[a:f].tolist(), cols.price[a:f].tolist(), strict=True)
        for r, (i, t, p) in enumerate(rows):
            if t > self._eval_next:
                self.evaluate_due(t)
            if t > self._grid_next:
                self._close_grid(t)
            self._changed = True
            price[i] = p
            price_ts[i] = t
            for values, present, target in extras:
                if present[r]:
                    target[i] = values[r]

    def _store_rows(
        self,
        cols: _Ticks,
        inst: npt.NDArray[np.int64],
        last: npt.NDArray[np.int64],
        pos: int,
        end: int,
    ) -> None:
        """Write rows ``[pos, end)``; ``last`` are the rows that are each instrument's last."""
        self._changed = True  # an evaluation may have run since the last store
        idx = inst[last]
        self._price[idx] = cols.price[last]
        self._price_ts[idx] = cols.ts[last]
        for values, present, mixed, target in (
            (cols.iv, cols.has_iv, cols.mixed_iv, self._iv),
            (cols.forward, cols.has_forward, cols.mixed_forward, self._fwd),
            (cols.greeks, cols.has_greeks, cols.mixed_greeks, self._venue_greeks),
        ):
            if values is None or present is None:
                continue
            if not mixed:  # an instrument's ticks all carry the value, or none does
                rows = last[present[last]]
            else:  # the last tick per instrument that carries it
                rows = np.flatnonzero(present[pos:end])[::-1] + pos
                rows = rows[np.unique(inst[rows], return_index=True)[1]]
            if len(rows):
                target[inst[rows]] = values[rows]

    def _slot(self, name: str) -> int:
        i = self._index.get(name)
        if i is None:
            i = self.registry.index_of(name)
            self._index[name] = i
            self._grow(len(self.registry))
        return i

    def _sync_guarded(self, changed: int | None = None) -> None:
        """Which instruments' ticks the quarantine checks (all but options): append the
        instruments registered since, and refresh ``changed`` (a redefined one)."""
        insts = self.registry.instruments
        guarded = self._guarded
        self._guarded_np = None
        guarded.extend(inst.kind != "option" for inst in insts[len(guarded) :])
        if changed is not None:
            guarded[changed] = insts[changed].kind != "option"

    def _grow(self, n: int) -> None:
        cap = len(self._price)
        if n <= cap:
            return
        new = max(n, 2 * cap)
        self._price = np.concatenate([self._price, np.full(new - cap, np.nan)])
        self._price_ts = np.concatenate([self._price_ts, np.zeros(new - cap, dtype=np.int64)])
        self._iv = np.concatenate([self._iv, np.full(new - cap, np.nan)])
        self._fwd = np.concatenate([self._fwd, np.full(new - cap, np.nan)])
        self._venue_greeks = np.concatenate([self._venue_greeks, np.full((new - cap, 4), np.nan)])

    def _apply_price(self, ev: PriceEvent) -> None:
        self._set_price(self._slot(ev.instrument), ev)

    def _set_price(self, i: int, ev: PriceEvent) -> None:
        """Apply a tick, unless it is out of order (dropped) or quarantined (held).

        Raises :class:`Rejected` (``out_of_order`` or ``quarantined``) when not applied.
        """
        ts = ev.ts
        if ts < self._price_ts[i]:
            raise Rejected(
                Reason.OUT_OF_ORDER,
                f"{ev.instrument} tick at {iso_ms(ts)} is older than its current price "
                f"({iso_ms(int(self._price_ts[i]))}); dropped",
            )
        bound = self.settings.max_tick_move
        if bound > 0.0:
            if i >= len(self._guarded):
                self._sync_guarded()
            old = self._price[i]
            if self._guarded[i] and old == old:  # a known price to compare with (not NaN)
                suspect = self._suspect.pop(i, None)
                if abs(ev.price / old - 1.0) > bound:
                    if suspect is None or abs(ev.price / suspect.price - 1.0) > bound:
                        self._suspect[i] = ev
                        if ts > self._grid_next:  # the clock moves on; the price does not
                            self._close_grid(ts)
                        raise Rejected(
                            Reason.QUARANTINED,
                            f"{ev.instrument} tick {ev.price:.6g} moves "
                            f"{ev.price / old - 1.0:+.1%} from {old:.6g} (more than "
                            f"max_tick_move {bound:g}); held until the next tick confirms it",
                        )
                    self._store_price(i, suspect)  # confirmed: the move was real
                    if ts < suspect.ts:
                        return
        self._store_price(i, ev)

    def _store_price(self, i: int, ev: PriceEvent) -> None:
        ts = ev.ts
        self._changed = True
        if ts > self._grid_next:
            self._close_grid(ts)
        if self._unpriced_held and i in self._unpriced_held:  # a held one's first price
            self._unpriced_held.discard(i)
            self._scenarios_due = self._positions_moved = True
        self._price[i] = ev.price
        self._price_ts[i] = ts
        if ev.iv is not None:
            self._iv[i] = ev.iv
        if ev.underlying_price is not None:
            self._fwd[i] = ev.underlying_price
        if ev.greeks is not None:
            g = ev.greeks
            self._venue_greeks[i] = (g.delta, g.gamma, g.vega, g.theta)  # None -> NaN

    def _apply_position(self, ev: PositionEvent) -> None:
        i = self._slot(ev.instrument)
        if self.registry.instruments[i].kind == "index":
            raise Rejected(Reason.INVALID_VALUE, f"{ev.instrument!r} is an index, not tradable")
        book = self._positions.setdefault(ev.account, {})
        held = book.get(i)
        if ev.quantity == 0.0:
            book.pop(i, None)
        else:
            # Keep when the position was opened: a price is "missing" from then on.
            book[i] = (ev.quantity, ev.ts if held is None else held[1])
            if self._price[i] != self._price[i]:  # NaN: not priced yet
                self._unpriced_held.add(i)
        # A venue's periodic snapshot of an unchanged position changes no figure.
        if (0.0 if held is None else held[0]) != ev.quantity:
            self._move_position(ev.account, i, held is not None, ev.quantity)
            self._scenarios_due = True
            self._moved_accounts.add(ev.account)

    def _apply_account(self, ev: AccountEvent) -> None:
        currencies = dict(ev.currencies) if ev.currencies else {}
        self._accounts[ev.account] = AccountState(
            ts_ms=ev.ts,
            equity=ev.equity,
            initial_margin=ev.initial_margin,
            maintenance_margin=ev.maintenance_margin,
            currencies=currencies,
        )
        # Coin collateral is exposure: hold it as a position of ``<coin>.collateral`` (spot
        # of that underlying, valued at its index), so exposure, VaR, stresses and the
        # distance to a call revalue it with the positions. A currency that is not an
        # underlying (USDC, USDT: USD) carries no exposure.
        book = self._positions.setdefault(ev.account, {})
        held = {i for i in book if self.registry.instruments[i].collateral}
        for cur, bal in currencies.items():
            coin = cur.upper()
            if bal.collateral is None or coin in DOLLAR_COINS or parse_name(coin) is None:
                continue
            name = f"{coin}.collateral"
            i = self._index.get(name)
            if i is None:
                i = self.registry.register(Instrument(name, "spot", coin, collateral=True))
                self._index[name] = i
                self._index.setdefault(coin, self.registry.index_of(coin))
                self._grow(len(self.registry))
            held.discard(i)
            opened = book.get(i)
            if (0.0 if opened is None else opened[0]) == bal.collateral:
                continue
            if bal.collateral == 0.0:
                book.pop(i, None)
            else:
                book[i] = (bal.collateral, ev.ts if opened is None else opened[1])
            self._move_position(ev.account, i, opened is not None, bal.collateral)
        for i in held:  # a currency no longer reported holds no collateral
            book.pop(i, None)
            self._move_position(ev.account, i, True, 0.0)
        # The venue's equity and margins (and collateral) feed the scenario figures: due
        # now. The model-margin distance keeps its own clock (margin.recompute_interval):
        # recomputing it at every account update (a venue sends them every second or so)
        # would keep a core busy on a large book.
        self._scenarios_due = True

    def _apply_instrument(self, ev: InstrumentEvent) -> None:
        inst = from_event(ev)
        i = self.registry.register(inst)
        self._index[inst.name] = i
        self._index.setdefault(inst.underlying, self.registry.index_of(inst.underlying))
        self._grow(len(self.registry))
        self._sync_guarded(i)
        self._drop_book()
        self._scenarios_due = self._positions_moved = True

    def drop_account(self, account: str) -> None:
        """Remove ``account``: its positions and venue margin leave the book and its alerts
        are forgotten without a transition (cluster mode: another daemon evaluates it now).
        """
        self._changed = True
        if self._positions.pop(account, None) is not None:
            self._drop_book()
            self._scenarios_due = self._positions_moved = True
        self._accounts.pop(account, None)
        if self._rules is not None:
            self._rules.forget(account)

    def _move_position(self, account: str, i: int, held: bool, quantity: float) -> None:
        """Keep the built book in step with a changed position: a quantity of a position it
        holds (``held`` and still open) is patched at the next evaluation; a position opened
        or closed rebuilds it."""
        if held and quantity != 0.0 and self._book is not None:
            self._book_patch[account, i] = quantity
        else:
            self._drop_book()

    def _drop_book(self) -> None:
        self._book = None
        self._book_patch.clear()

    def _current_book(self) -> Book:
        """The book as the positions are now: built when the registry or the set of
        positions changed, otherwise the last one with its changed quantities patched in."""
        reg = self.registry
        book = self._book
        if book is None or self._book_version != reg.version:
            book = build_book(self._positions, reg)
            self._book_version = reg.version
        elif self._book_patch:
            book = _patched_book(book, self._book_patch)
        self._book_patch.clear()
        self._book = book
        return book

    def alert_episodes(self, account: str) -> list[Episode]:
        """``account``'s live alerts and cooldowns, to hand over to another daemon."""
        return self._rules.episodes(account) if self._rules is not None else []

    def adopt_alert_episodes(self, episodes: Sequence[Episode]) -> None:
        """Continue alert episodes another daemon began (cluster mode: a takeover)."""
        if self._rules is not None:
            self._rules.adopt(episodes)

    # -- sample clock (event time) ----------------------------------------------------

    def _close_grid(self, ts: int) -> None:
        """Close every grid point before ``ts`` (called when ``ts > self._grid_next``)."""
        self._changed = True
        dt = self._dt
        if self._grid_next == _NO_TS:  # first tick: the first grid point at or after it
            self._grid_next = -(-ts // dt) * dt
            return
        if ts - self._grid_next > self.settings.max_gap_ms:
            # Nothing ticked in (grid_next, ts): an outage, not a calm market. Restart the
            # grid without a return (the silence is known to within one sample interval).
            self.estimator.restart()
            self.stats.gaps += 1
            self._grid_next = -(-ts // dt) * dt
        else:
            steps = (ts - 1 - self._grid_next) // dt + 1
            prices = self._underlying_prices()
            # Per-asset staleness: how long each index has been silent at the grid point.
            ages = self._grid_next - self._price_ts[self._und_index_inst]
            self.estimator.sample(prices, steps=steps, ages_ms=ages)
            self.stats.samples += steps
            self._grid_next += steps * dt

    def _underlying_prices(self) -> npt.NDArray[np.float64]:
        """Index price of every underlying, in registry order (NaN before its first tick)."""
        if self._und_version != self.registry.version:
            reg = self.registry
            self._und_index_inst = np.array(
                [reg.index_of(u) for u in reg.underlyings], dtype=np.int64
            )
            self._und_version = reg.version
        out: npt.NDArray[np.float64] = self._price[self._und_index_inst]
        return out

    # -- evaluation clock ---------------------------------------------------------------

    @property
    def latest_event_ms(self) -> int | None:
        """The latest event time applied or refused so far (None before any)."""
        return None if self._latest_ms == _NO_TS else self._latest_ms

    @property
    def next_evaluation_ms(self) -> int:
        return self._eval_next

    def evaluate_due(self, now_ms: int) -> RiskSnapshot | None:
        """Evaluate as of the last evaluation grid point before ``now_ms``, if one is due.

        In replay, ``now_ms`` is the next event's time, so the snapshot as of grid point
        ``g`` holds exactly the events with ``ts <= g``. A stretch with no events is
        evaluated once, at its last grid point.
        """
        step = self.settings.eval_interval_ms
        if self._eval_next == _NO_TS:
            self._eval_next = -(-now_ms // step) * step
            return None
        if now_ms <= self._eval_next:
            return None
        as_of = self._eval_next + ((now_ms - 1 - self._eval_next) // step) * step
        self._eval_next = as_of + step
        return self.evaluate(as_of)

    def evaluate(self, as_of_ms: int, *, scenarios: bool = False) -> RiskSnapshot:
        """Revalue everything as of ``as_of_ms`` and publish the snapshot.

        The clock never goes back: a time before the previous evaluation's is taken as
        that one (events reach the engine out of order; the report is as of the latest).
        The scenario figures are due when the book changed since the last evaluation, and
        with ``scenarios`` (a replay's final report: computed on its final state).
        """
        started = time.perf_counter()
        as_of_ms = max(as_of_ms, self._clock_ms)
        self._clock_ms = as_of_ms
        reg = self.registry
        n = len(reg)
        book = self._current_book()
        und_price = self._underlying_prices()
        self._seq += 1
        snap = self._evaluator.evaluate(
            as_of_ms,
            self._seq,
            reg,
            self.estimator,
            book,
            MarketArrays(
                price=self._price[:n],
                iv=self._iv[:n],
                forward=self._fwd[:n],
                venue_greeks=self._venue_greeks[:n],
                price_ts_ms=self._price_ts[:n],
            ),
            UnderlyingPrices(und_price.copy(), self._price_ts[self._und_index_inst]),
            self._accounts,
            changed=self._changed,
            scenarios_due=self._scenarios_due or scenarios,
            positions_changed=(
                True if self._positions_moved or scenarios else frozenset(self._moved_accounts)
            ),
        )
        self._changed = False
        self._scenarios_due = self._positions_moved = False
        self._moved_accounts.clear()
        if self._rules is not None:
            # An idle evaluation re-dates the last figures (the same objects): steady
            # rules replay their last readings.
            last = self.snapshot
            unchanged = last is not None and snap.total is last.total
            moves = self._rules.evaluate(
                RuleInput(snap, self._connectors()), as_of_ms, unchanged=unchanged
            )
            if moves:
                self._history.extend(moves)
                self._history_view = tuple(self._history)
                if self._on_transitions is not None:
                    self._on_transitions(moves)
            alerts = tuple(self._rules.active())
            elapsed = time.perf_counter() - started
            snap = replace(
                snap,
                alerts=alerts,
                alert_history=self._history_view,
                evaluation_seconds=elapsed,
            )
        else:
            elapsed = time.perf_counter() - started
            snap = replace(snap, evaluation_seconds=elapsed)
        self.snapshot = snap
        self.stats.evaluations += 1
        if self._on_evaluation is not None:
            self._on_evaluation(elapsed)
        return snap

    # -- what-if ------------------------------------------------------------------------

    def whatif_state(self) -> WhatIfState | None:
        """A private copy of the state the last evaluation read, for
        :func:`monitor.engine.whatif.run_whatif` (on any thread: nothing in it is shared
        with the engine, so a what-if never changes live state). None before the first
        evaluation.
        """
        if self.snapshot is None:
            return None
        n = len(self.registry)
        self._underlying_prices()  # refreshes the index instrument numbers
        return WhatIfState(
            as_of_ms=self._clock_ms,
            registry=copy.deepcopy(self.registry),
            estimator=copy.deepcopy(self.estimator),
            positions={a: dict(p) for a, p in self._positions.items()},
            price=self._price[:n].copy(),
            price_ts_ms=self._price_ts[:n].copy(),
            iv=self._iv[:n].copy(),
            forward=self._fwd[:n].copy(),
            venue_greeks=self._venue_greeks[:n].copy(),
            index_instrument=self._und_index_inst.copy(),
            venue=dict(self._accounts),
            settings=self._evaluator.settings,
        )
