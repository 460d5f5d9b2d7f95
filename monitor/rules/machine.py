"""The rule engine: figures in, alert transitions out (pure: no I/O, no clock, no logging).

A :class:`Rule` reads one figure per *subject* from an input (a subject is an account, an
account and an underlying, an underlying, or the whole book: ``(account, underlying)`` with
either ``None``) and the :class:`RuleEngine` moves each subject's alert through
``inactive -> pending -> firing -> resolved -> inactive``, producing a
:class:`~monitor.model.alert.Transition` for every move. Time is passed in (``now_ms``, the
engine clock: event time in a replay), so a replay fires the same alerts at the same times
with the same idempotency keys.

The state machine of one subject (``direction = "above"``; mirror everything for
``"below"``), evaluated at each ``evaluate(input, now_ms)``:

- **breach**: the value reaches a threshold (``value >= warning`` or ``>= critical``); the
  severity is the highest threshold reached. ``warning`` or ``critical`` may be unset
  (``None``), not both.
- **inactive -> pending** on a breach; **pending -> firing** once ``for`` has passed since
  the episode began (``for = 0``: straight to firing, no pending). While pending, the
  severity follows the value without a transition.
- **hysteresis**: a pending or firing alert ends only when the value is strictly back past
  ``clear`` (``value < clear``), so a value hovering at a threshold does not flap. The same
  gap ``g = |warning - clear|`` (``|critical - clear|`` without a warning) applies to
  severity: a critical alert de-escalates to warning once the value is below
  ``max(critical - g, warning)``; it escalates as soon as the value reaches ``critical``.
  Each severity change while firing is a transition ``firing -> firing``.
- **pending -> inactive** or **firing -> resolved** (then inactive) when the value is back
  past ``clear``. ``threshold`` of these transitions is ``clear``.
- **cooldown**: after an alert *resolves*, a new episode of the same alert (same rule,
  account and underlying) does not start until ``cooldown`` has passed: the subject stays
  inactive, produces no transitions and is not in :meth:`RuleEngine.active`. A value at or
  past the **critical** threshold is never held back: it starts an episode at once. After
  the cooldown a value still past the threshold starts a new episode at the next
  evaluation (pending, ``for``, firing as usual). A pending episode that ends without
  firing starts no cooldown (nobody was notified of a firing).
- **NaN holds**: a subject whose reading is NaN (the figure is momentarily unknown, e.g.
  the estimator has a gap) keeps its state, value and summary as they were; nothing
  happens until a known value or the subject's disappearance decides. Infinite values are
  values (``+inf`` is past any ``above`` threshold).
- **vanishing subjects resolve**: a pending or firing subject for which the rule yields
  no reading at all (the account closed the position, the figure no longer exists) ends
  at once: ``firing -> resolved`` (cooldown starts) or ``pending -> inactive``, with its last
  value and its summary marked ``[no longer reported]``. Rules therefore yield NaN for
  "unknown for now" and nothing for "does not apply".

**Batches.** A rule reading many subjects of one account (one per underlying) may yield
a :class:`Readings` batch instead: the values as an array, the text built per subject only
when needed. The engine then touches in Python only the subjects at or past the first
threshold and those with a live episode; a calm subject of a batch costs nothing beyond
its array element. Semantics are those of the one-by-one readings.

Order is deterministic: transitions and active alerts come in rule order (as given to the
engine), then by ``(account, underlying)`` in string order, ``None`` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from monitor.model.alert import Alert, AlertState, Severity, Transition
from monitor.model.episode import Episode

__all__ = [
    "Direction",
    "Reading",
    "Readings",
    "Rule",
    "RuleEngine",
    "RuleSpec",
    "check_thresholds",
    "each_reading",
]

Direction = Literal["above", "below"]
I = TypeVar("I", contravariant=True)  # noqa: E741 - the input type a rule reads
Inp = TypeVar("Inp")

_EMPTY_LABELS: Final[Mapping[str, str]] = MappingProxyType({})
_VANISHED: Final = " [no longer reported]"
_NEVER: Final = 2**62


def check_thresholds(
    direction: Direction, warning: float | None, critical: float | None, clear: float
) -> tuple[str, str] | None:
    """Check one rule's thresholds; ``(field, message)`` of the first problem, or None.

    ``above``: ``clear <= warning < critical``; ``below``: ``clear >= warning > critical``;
    every threshold finite; at least one of ``warning`` and ``critical`` set.
    """
    if warning is None and critical is None:
        return "critical", "a rule needs a warning or a critical threshold (or both)"
    for name, v in (("warning", warning), ("critical", critical), ("clear", clear)):
        if v is not None and not math.isfinite(v):
            return name, f"expected a finite number; got {v}"
    s = 1.0 if direction == "above" else -1.0
    word = "above" if direction == "above" else "below"
    if warning is not None and critical is not None and not s * critical > s * warning:
        return "critical", (
            f"must be {word} warning ({warning:g}) for a rule that fires {word} its "
            f"thresholds; got {critical:g}"
        )
    first = warning if warning is not None else critical
    assert first is not None
    if s * clear > s * first:
        other = "below" if direction == "above" else "above"
        which = "warning" if warning is not None else "critical"
        return "clear", (
            f"must be at or {other} {which} ({first:g}) for a rule that fires {word} its "
            f"thresholds; got {clear:g}"
        )
    return None


@dataclass(frozen=True, slots=True)
class RuleSpec:
    """What the state machine needs to know about one rule.

    Attributes
    ----------
    name
        The rule's name (``Alert.rule``).
    direction
        ``"above"``: the figure is bad when high; ``"below"``: when low.
    warning, critical
        Thresholds in the figure's unit; ``None`` = that severity is not used.
    clear
        The level the figure must cross back past to end an episode (hysteresis); default:
        the warning threshold (or critical without one), i.e. no hysteresis.
    for_ms
        How long a breach must last (pending) before it fires; 0 = at once.
    cooldown_ms
        After a resolve, how long a new non-critical episode is held back (module notes).
    """

    name: str
    direction: Direction = "above"
    warning: float | None = None
    critical: float | None = None
    clear: float | None = None
    for_ms: int = 0
    cooldown_ms: int = 0

    def __post_init__(self) -> None:
        if self.direction not in ("above", "below"):
            raise ValueError(f"{self.name}: direction must be 'above' or 'below'")
        first = self.warning if self.warning is not None else self.critical
        clear = self.clear if self.clear is not None else first
        if clear is None:
            clear = math.nan  # reported by check_thresholds as a missing threshold
        problem = check_thresholds(self.direction, self.warning, self.critical, clear)
        if problem is not None:
            raise ValueError(f"{self.name}: {problem[0]}: {problem[1]}")
        if self.for_ms < 0 or self.cooldown_ms < 0:
            raise ValueError(f"{self.name}: for_ms and cooldown_ms must be >= 0")

    @property
    def clear_level(self) -> float:
        """``clear`` with its default applied."""
        if self.clear is not None:
            return self.clear
        first = self.warning if self.warning is not None else self.critical
        assert first is not None
        return first


class Reading(NamedTuple):
    """One subject's figure, as a rule read it.

    ``describe`` builds the alert's summary; it is called only when the summary is read
    (an alert's, a transition's), so a rule reading thousands of calm subjects formats no
    text for them. ``value`` NaN = unknown for now (the alert holds). A named tuple: rules
    build many at every evaluation (0.4 us each against 1 us for a frozen dataclass).
    """

    account: str | None
    underlying: str | None
    value: float
    describe: Callable[[], str]
    labels: Mapping[str, str] = _EMPTY_LABELS


@dataclass(frozen=True, slots=True)
class Readings:
    """Many subjects of one account at once: ``(account, underlyings[k])`` reads
    ``values[k]`` (NaN: unknown for now), and ``describe(k)`` builds its summary, called only
    when an alert is built. ``underlyings`` must be distinct."""

    account: str | None
    underlyings: Sequence[str | None]
    values: npt.NDArray[np.float64]
    describe: Callable[[int], str]
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY_LABELS)

    def reading(self, k: int) -> Reading:
        return Reading(
            self.account,
            self.underlyings[k],
            float(self.values[k]),
            partial(self.describe, k),
            self.labels,
        )


def each_reading(got: Iterable[Reading | Readings]) -> Iterator[Reading]:
    """Every subject's reading one by one, batches unrolled (for a reader that wants all)."""
    for r in got:
        if isinstance(r, Readings):
            yield from (r.reading(k) for k in range(len(r.underlyings)))
        else:
            yield r


@dataclass(frozen=True, slots=True)
class Rule(Generic[I]):
    """A rule: its thresholds and how it reads its figures from an input of type ``I``.

    ``read`` yields at most one :class:`Reading` per subject. It may keep state between
    calls (a rule object belongs to one engine) but must be a deterministic function of
    the inputs it has seen: no clock, no I/O. Such state is a set of subjects, ``watch``
    (``read`` keeps it in place), so :meth:`RuleEngine.state` saves it with the alerts.
    """

    spec: RuleSpec
    read: Callable[[I], Iterable[Reading | Readings]]
    watch: set[tuple[str, str]] | None = None
    #: The readings depend on the input's figures alone (not on the clock or on anything
    #: else the input carries): an evaluation told the figures are unchanged replays the
    #: last readings instead of reading again (``RuleEngine.evaluate``'s ``unchanged``).
    steady: bool = False

    @property
    def name(self) -> str:
        return self.spec.name


class _Text:
    """One summary, built at most once: from the ``describe`` of the reading it was taken
    from, when first needed (shared by a track and the alerts built from it)."""

    __slots__ = ("_describe", "_text")

    def __init__(self, describe: Callable[[], str] | None, text: str | None = None) -> None:
        self._describe = describe
        self._text = text

    def __call__(self) -> str:
        text = self._text
        if text is None:
            describe = self._describe
            if describe is None:  # built by another thread meanwhile (text set first)
                text = self._text
                assert text is not None
                return text
            text = self._text = describe()
            self._describe = None  # the figures it read may be freed
        return text


@dataclass(slots=True)
class _Track:
    """A subject's live episode (pending or firing)."""

    state: AlertState
    severity: Severity
    since_ms: int
    active_since_ms: int
    value: float
    reading: Reading
    tick: int
    #: The summary, once asked for: taken from the reading current then, kept while the
    #: value (and the labels) stay as they were. None: not asked for since they changed.
    summary: _Text | None = None
    #: The alert :meth:`RuleEngine.active` last built from this track, and the summary
    #: it was built with (reused while nothing in it changed; ``_alert`` compares).
    alert: Alert | None = None
    alert_summary: _Text | None = None

    def text(self) -> str:
        return self.lazy_text()()

    def lazy_text(self) -> _Text:
        """The summary as it stands, built when first called: exactly the text
        :meth:`text` gives now, and also after later readings of the same value."""
        if self.summary is None:
            self.summary = _Text(self.reading.describe)
        return self.summary

    def update(self, reading: Reading) -> None:
        """Take a new reading; the summary is rebuilt only when the value (or the labels)
        changed, so an alert whose figure stands still formats no text."""
        if reading.value != self.value or reading.labels != self.reading.labels:
            self.value = reading.value
            self.summary = None
        self.reading = reading


_Subject = tuple[str | None, str | None]


def _fixed(text: str) -> Callable[[], str]:
    """A ``describe`` that returns ``text`` (an adopted episode's last summary)."""
    return lambda: text


def _track_from_state(t: Mapping[str, Any]) -> _Track:
    state, severity = t["state"], t["severity"]
    if state not in ("pending", "firing") or severity not in ("warning", "critical"):
        raise ValueError(f"not a live alert: {state!r}, {severity!r}")
    account, underlying = t["account"], t["underlying"]
    for label in (account, underlying):
        if label is not None and not isinstance(label, str):
            raise ValueError(f"not an alert subject: {label!r}")
    summary = str(t["summary"])
    reading = Reading(
        account,
        underlying,
        float(t["value"]),
        _fixed(summary),
        {str(k): str(v) for k, v in t["labels"].items()},
    )
    return _Track(
        state,
        severity,
        int(t["since_ms"]),
        int(t["active_since_ms"]),
        float(t["value"]),
        reading,
        int(t["tick"]),
        _Text(None, summary),
    )


def _signed_levels(
    spec: RuleSpec,
) -> tuple[float, float | None, float | None, float, float, float | None]:
    """``(s, warning, critical, first, clear, crit_clear)``: the thresholds times the
    direction's sign ``s`` (so "past" is always ``>=``), the first threshold, and the
    de-escalation level (critical less the hysteresis gap, never below warning)."""
    s = 1.0 if spec.direction == "above" else -1.0
    warning = None if spec.warning is None else s * spec.warning
    critical = None if spec.critical is None else s * spec.critical
    first = warning if warning is not None else critical
    assert first is not None
    clear = s * spec.clear_level
    crit_clear = (
        None if critical is None or warning is None else max(critical - (first - clear), warning)
    )
    return s, warning, critical, first, clear, crit_clear


def _order(subject: _Subject) -> tuple[bool, str, bool, str]:
    a, u = subject
    return (a is not None, a or "", u is not None, u or "")


class RuleEngine(Generic[Inp]):
    """Runs rules over successive inputs and keeps every alert's state (module notes).

    Parameters
    ----------
    rules
        The rules, in the order their transitions are reported; names must be unique.
    """

    def __init__(self, rules: Sequence[Rule[Inp]]) -> None:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate rule names: {', '.join(dupes)}")
        self._rules: tuple[Rule[Inp], ...] = tuple(rules)
        self._tracks: list[dict[_Subject, _Track]] = [{} for _ in rules]
        self._cooldown: list[dict[_Subject, int]] = [{} for _ in rules]
        self._tick = 0
        self._last_ms: int | None = None
        #: Per rule, the readings its last read gave the state machine (hot subjects).
        self._replay: list[list[Reading] | None] = [None for _ in rules]
        #: Per rule, the earliest engine time at which replaying its last readings can
        #: move a state (a pending episode's ``for`` runs out, a cooldown ends); before
        #: it, an ``unchanged`` evaluation skips a steady rule altogether. 0: never skip.
        self._wake: list[int] = [0 for _ in rules]
        #: Per rule, its thresholds signed by direction (``_signed_levels``).
        self._levels = [_signed_levels(r.spec) for r in rules]
        self._signs = [(lv[0], lv[3]) for lv in self._levels]  # (s, first)
        #: Per rule, the alerts :meth:`active` built last; None: rebuild.
        self._active: list[tuple[Alert, ...] | None] = [None for _ in rules]
        #: Per rule, its live subjects in alert order; None: sort again (one came or went).
        self._sorted: list[list[_Subject] | None] = [None for _ in rules]
        #: Every rule's alerts as :meth:`active` lists them; None: one rule's changed.
        self._listed: list[Alert] | None = None

    @property
    def rules(self) -> tuple[Rule[Inp], ...]:
        return self._rules

    def evaluate(self, data: Inp, now_ms: int, *, unchanged: bool = False) -> list[Transition]:
        """Read every rule's figures from ``data`` at ``now_ms``; return the transitions.

        ``now_ms`` is the engine clock (epoch ms; the snapshot's ``as_of_ms``) and must
        not go back between calls. ``unchanged``: ``data``'s figures are those of the
        previous call (only time passed); a ``steady`` rule then replays its last readings
        (same values: only ``for`` timers and cooldowns can move) without reading.

        Raises
        ------
        ValueError
            ``now_ms`` went back, or a rule yielded the same subject twice.
        """
        if self._last_ms is not None and now_ms < self._last_ms:
            raise ValueError(f"engine clock went back: {now_ms} < {self._last_ms}")
        self._last_ms = now_ms
        self._tick = tick = self._tick + 1
        out: list[Transition] = []
        wake, active, last = self._wake, self._active, self._replay
        for k, rule in enumerate(self._rules):
            tracks = self._tracks[k]
            replay = unchanged and rule.steady
            if replay and now_ms < wake[k]:
                # The same figures and no timer due: nothing of this rule moves; its
                # episodes were (as if) read again.
                for tr in tracks.values():
                    tr.tick = tick
                continue
            readings = last[k]
            if not replay or readings is None:
                # Every subject that can move is in this list: those at or past the first
                # threshold and those with a live episode. With the same values, nothing
                # else can move later either, so the list replays exactly.
                s, first = self._signs[k]
                readings = last[k] = self._hot(rule.read(data), tracks, s, first)
            cooldown = self._cooldown[k]
            if cooldown:
                for subject in [s for s, until in cooldown.items() if until <= now_ms]:
                    del cooldown[subject]
            if not readings and not tracks:  # nothing hot, nothing live: nothing moves
                if active[k]:
                    active[k] = self._listed = None
                wake[k] = 0 if not rule.steady else self._next_wake(k) if cooldown else _NEVER
                continue
            moves = self._evaluate_rule(k, rule, readings, now_ms)
            if tracks or active[k]:  # a rule without alerts before or after lists none
                active[k] = self._listed = None
            wake[k] = self._next_wake(k) if rule.steady else 0
            if moves:
                if len(moves) > 1:
                    moves.sort(key=lambda t: _order((t.alert.account, t.alert.underlying)))
                out.extend(moves)
        return out

    def state(self) -> dict[str, Any]:
        """Every alert's state machine as plain data, by rule name (no I/O).

        Per rule: the live episodes (pending or firing: severity, times, the last value and
        summary), the cooldowns and the rule's ``watch`` set. :meth:`from_state` rebuilds an
        engine that goes on exactly as this one would: a firing alert stays firing (no new
        ``inactive -> firing`` transition), its ``active_since_ms`` and so the idempotency
        keys of its later moves are the same.
        """
        rules: dict[str, Any] = {}
        for rule, tracks, cooldown in zip(self._rules, self._tracks, self._cooldown, strict=True):
            rules[rule.name] = {
                "tracks": [
                    {
                        "account": sub[0],
                        "underlying": sub[1],
                        "state": tr.state,
                        "severity": tr.severity,
                        "since_ms": tr.since_ms,
                        "active_since_ms": tr.active_since_ms,
                        "value": tr.value,
                        "summary": tr.text(),
                        "labels": dict(tr.reading.labels),
                        "tick": tr.tick,
                    }
                    for sub, tr in sorted(tracks.items(), key=lambda kv: _order(kv[0]))
                ],
                "cooldown": [
                    [a, u, until]
                    for (a, u), until in sorted(cooldown.items(), key=lambda kv: _order(kv[0]))
                ],
                "watch": None if rule.watch is None else sorted(map(list, rule.watch)),
            }
        return {"tick": self._tick, "last_ms": self._last_ms, "rules": rules}

    @classmethod
    def from_state(cls, rules: Sequence[Rule[Inp]], state: Mapping[str, Any]) -> RuleEngine[Inp]:
        """An engine over ``rules`` in the state :meth:`state` described.

        Matched by rule name: a rule not in ``state`` starts afresh, a rule of ``state`` no
        longer configured is dropped. A rule's ``watch`` set is replaced in place.

        Raises
        ------
        ValueError
            ``state`` is not what :meth:`state` returns.
        """
        out = cls(rules)
        try:
            out._tick = int(state["tick"])
            last = state["last_ms"]
            out._last_ms = None if last is None else int(last)
            saved = state["rules"]
            for k, rule in enumerate(out._rules):
                st = saved.get(rule.name)
                if st is None:
                    continue
                for t in st["tracks"]:
                    out._tracks[k][(t["account"], t["underlying"])] = _track_from_state(t)
                for a, u, until in st["cooldown"]:
                    out._cooldown[k][(a, u)] = int(until)
                if rule.watch is not None and st["watch"] is not None:
                    rule.watch.clear()
                    rule.watch.update((str(a), str(u)) for a, u in st["watch"])
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a rule engine state: {exc!r}") from None
        return out

    def active(self) -> list[Alert]:
        """The pending and firing alerts, in rule order then subject order."""
        listed = self._listed
        if listed is None:
            listed = []
            for k, tracks in enumerate(self._tracks):
                built = self._active[k]
                if built is None:
                    built = self._active[k] = self._alerts(k) if tracks else ()
                listed.extend(built)
            self._listed = listed
        return list(listed)

    def _alerts(self, k: int) -> tuple[Alert, ...]:
        """Rule ``k``'s alerts, in subject order."""
        tracks, spec = self._tracks[k], self._rules[k].spec
        subjects = self._sorted[k]
        if subjects is None:
            subjects = self._sorted[k] = sorted(tracks, key=_order)
        return tuple(self._alert(spec, sub, tracks[sub], tracks[sub].state) for sub in subjects)

    def _next_wake(self, k: int) -> int:
        """When replaying rule ``k``'s readings can next move a state: the first pending
        episode's ``for`` running out or cooldown ending (``_NEVER`` if none), or 0 (now)
        when the rule has no readings to replay."""
        if self._replay[k] is None:
            return 0
        if not self._tracks[k] and not self._cooldown[k]:
            return _NEVER
        for_ms = self._rules[k].spec.for_ms
        tracks = self._tracks[k].values()
        due = [tr.active_since_ms + for_ms for tr in tracks if tr.state == "pending"]
        due.extend(self._cooldown[k].values())
        return min(due, default=_NEVER)

    def _touched(self) -> None:
        """Episodes changed outside :meth:`evaluate` (adopted, forgotten, restored): every
        rule reads (or replays) at the next evaluation and rebuilds its active alerts."""
        self._wake = [0 for _ in self._rules]
        self._active = [None for _ in self._rules]
        self._sorted = [None for _ in self._rules]
        self._listed = None

    # -- the state machine ------------------------------------------------------------

    def forget(self, account: str) -> None:
        """Forget every alert and cooldown of ``account`` without a transition.

        For an account this engine stops evaluating while it goes on elsewhere (cluster
        mode: another daemon took over its shard): its alerts are handed over, not
        resolved, so receivers see no resolve from here.
        """
        for tracks in self._tracks:
            for subject in [s for s in tracks if s[0] == account]:
                del tracks[subject]
        for cooldown in self._cooldown:
            for subject in [s for s in cooldown if s[0] == account]:
                del cooldown[subject]
        self._touched()

    def episodes(self, account: str) -> list[Episode]:
        """``account``'s live alerts and cooldowns, to hand over (see :meth:`adopt`)."""
        out: list[Episode] = []
        for rule, tracks, cooldown in zip(self._rules, self._tracks, self._cooldown, strict=True):
            for subject, tr in tracks.items():
                if subject[0] == account:
                    out.append(
                        Episode(
                            rule=rule.name,
                            account=subject[0],
                            underlying=subject[1],
                            state="firing" if tr.state == "firing" else "pending",
                            severity=tr.severity,
                            since_ms=tr.since_ms,
                            active_since_ms=tr.active_since_ms,
                            value=tr.value,
                            summary=tr.text(),
                            labels=dict(tr.reading.labels),
                        )
                    )
            for subject, until in cooldown.items():
                if subject[0] == account and subject not in tracks:
                    out.append(
                        Episode(
                            rule=rule.name,
                            account=subject[0],
                            underlying=subject[1],
                            state="resolved",
                            severity="warning",
                            since_ms=until,
                            active_since_ms=until,
                            value=math.nan,
                            summary="",
                            cooldown_until_ms=until,
                        )
                    )
        return out

    def adopt(self, episodes: Iterable[Episode]) -> None:
        """Continue episodes another engine began (cluster mode: a takeover).

        No transition is produced now; from the next :meth:`evaluate` on, each goes on as
        if this engine had started it (same start, state and severity: the same
        idempotency keys), resolving only past ``clear`` or when its subject vanishes.
        Episodes of rules this engine does not run are ignored; a subject this engine
        already tracks keeps its own state.
        """
        index = {rule.name: k for k, rule in enumerate(self._rules)}
        for ep in episodes:
            k = index.get(ep.rule)
            if k is None:
                continue
            subject = (ep.account, ep.underlying)
            if ep.state == "resolved":
                if ep.cooldown_until_ms is not None:
                    self._cooldown[k].setdefault(subject, ep.cooldown_until_ms)
                continue
            if subject in self._tracks[k]:
                continue
            reading = Reading(ep.account, ep.underlying, ep.value, _fixed(ep.summary), ep.labels)
            self._tracks[k][subject] = _Track(
                ep.state,
                ep.severity,
                ep.since_ms,
                ep.active_since_ms,
                ep.value,
                reading,
                self._tick,
                _Text(None, ep.summary),
            )
        self._touched()

    def _evaluate_rule(
        self, k: int, rule: Rule[Inp], readings: list[Reading], now_ms: int
    ) -> list[Transition]:
        """Move rule ``k``'s alerts by its hot ``readings`` (cooldowns already expired)."""
        tracks = self._tracks[k]
        cooldown = self._cooldown[k]
        spec = rule.spec
        s, warning, critical, first, clear, crit_clear = self._levels[k]
        tick = self._tick
        moves: list[Transition] = []
        for r in readings:
            subject = (r.account, r.underlying)
            v = s * r.value
            tr = tracks.get(subject)
            if tr is None:
                if not v >= first:  # calm, or NaN: nothing to do
                    continue
                is_critical = critical is not None and v >= critical
                if subject in cooldown and not is_critical:
                    continue  # cooldown: a new non-critical episode is held back
                severity: Severity = "critical" if is_critical else "warning"
                state: AlertState = "firing" if spec.for_ms == 0 else "pending"
                tr = _Track(state, severity, now_ms, now_ms, r.value, r, tick)
                tracks[subject] = tr
                self._sorted[k] = None
                moves.append(self._move(spec, subject, tr, "inactive", now_ms))
                continue
            if tr.tick == tick:
                raise ValueError(f"rule {spec.name} read {subject} twice in one evaluation")
            tr.tick = tick
            if math.isnan(v):
                continue  # hold
            tr.update(r)
            if v < clear:
                moves.append(self._end(k, spec, subject, tr, now_ms, clear_threshold=True))
                continue
            escalate = critical is not None and v >= critical
            hold = tr.severity == "critical" and (crit_clear is None or v >= crit_clear)
            severity = "critical" if escalate or hold or warning is None else "warning"
            if tr.state == "pending":
                tr.severity = severity
                if now_ms - tr.active_since_ms >= spec.for_ms:
                    tr.state, tr.since_ms = "firing", now_ms
                    moves.append(self._move(spec, subject, tr, "pending", now_ms))
            elif severity != tr.severity:
                tr.severity = severity
                moves.append(self._move(spec, subject, tr, "firing", now_ms))

        for subject in [sub for sub, tr in tracks.items() if tr.tick != tick]:
            moves.append(self._end(k, spec, subject, tracks[subject], now_ms, vanished=True))
        return moves

    @staticmethod
    def _hot(
        got: Iterable[Reading | Readings],
        tracks: Mapping[_Subject, _Track],
        s: float,
        first: float,
    ) -> list[Reading]:
        """The readings that can move a state: every single one, and of a batch the
        subjects at or past ``first`` (signed by ``s``) or with a live episode."""
        out: list[Reading] = []
        by_account: dict[str | None, list[str | None]] | None = None
        for r in got:
            if type(r) is Reading:
                out.append(r)
                continue
            assert isinstance(r, Readings)
            values = r.values
            if len(values) < 32:  # a few subjects: a Python pass beats numpy's call overhead
                hot = [k for k, v in enumerate(values.tolist()) if s * v >= first]
            else:
                hot = np.flatnonzero(s * values >= first).tolist()
            if tracks:
                if by_account is None:
                    by_account = {}
                    for a, u in tracks:
                        by_account.setdefault(a, []).append(u)
                live = by_account.get(r.account)
                if live:
                    pos = {u: k for k, u in enumerate(r.underlyings)}
                    hot = sorted({*hot, *(k for u in live if (k := pos.get(u)) is not None)})
            out.extend(map(r.reading, hot))
        return out

    def _end(
        self,
        k: int,
        spec: RuleSpec,
        subject: _Subject,
        tr: _Track,
        now_ms: int,
        *,
        clear_threshold: bool = False,
        vanished: bool = False,
    ) -> Transition:
        del self._tracks[k][subject]
        self._sorted[k] = None
        previous = tr.state
        if previous == "firing":
            state: AlertState = "resolved"
            if spec.cooldown_ms > 0:
                self._cooldown[k][subject] = now_ms + spec.cooldown_ms
        else:
            state = "inactive"
        summary = tr.text() + (_VANISHED if vanished else "")
        threshold = spec.clear_level if clear_threshold else self._threshold(spec, tr.severity)
        alert = Alert(
            rule=spec.name,
            severity=tr.severity,
            state=state,
            account=subject[0],
            underlying=subject[1],
            value=tr.value,
            threshold=threshold,
            since_ms=now_ms,
            active_since_ms=tr.active_since_ms,
            summary=summary,
            labels=tr.reading.labels,
        )
        return Transition(alert, previous, now_ms)

    def _move(
        self, spec: RuleSpec, subject: _Subject, tr: _Track, previous: AlertState, now_ms: int
    ) -> Transition:
        alert = self._alert(spec, subject, tr, tr.state)
        # Built now: a transition is delivered and kept in the history, which must not
        # hold every evaluation's figures.
        alert.summary  # noqa: B018
        return Transition(alert, previous, now_ms)

    @staticmethod
    def _threshold(spec: RuleSpec, severity: Severity) -> float:
        t = spec.critical if severity == "critical" else spec.warning
        assert t is not None
        return t

    def _alert(self, spec: RuleSpec, subject: _Subject, tr: _Track, state: AlertState) -> Alert:
        """The alert of ``tr`` in ``state``: the last one built while nothing in it changed
        (its summary then built now, so that it no longer holds the figures it read), else
        a new one whose summary is built when first read (most lists of active alerts are
        never read)."""
        a = tr.alert
        text = tr.summary
        if (
            a is not None
            and text is not None
            and tr.alert_summary is text
            and a.state == state
            and a.severity == tr.severity
            and a.since_ms == tr.since_ms
            and a.value == tr.value
        ):
            text()  # built once; the figures it read are released
            return a
        text = tr.lazy_text()
        a = tr.alert = Alert(
            spec.name,
            tr.severity,
            state,
            subject[0],
            subject[1],
            tr.value,
            self._threshold(spec, tr.severity),
            tr.since_ms,
            tr.active_since_ms,
            labels=tr.reading.labels,
            describe=text,
        )
        tr.alert_summary = text
        return a
