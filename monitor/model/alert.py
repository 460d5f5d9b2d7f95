"""What the rule engine produces and the notifiers deliver: alerts and their transitions.

An *alert* is one instance of a rule: ``(rule, account, underlying)`` identifies it (either
label may be ``None`` for a book-wide or per-account rule). It moves through
``inactive -> pending -> firing -> resolved`` on the engine's clock; every move it makes is a
:class:`Transition`, the unit notifiers deliver. A transition's ``idempotency_key`` is the
same every time the same move is produced (also after a restart, also in a replay), so a
receiver can drop duplicates and the outbox can deliver *at least once* while receivers see
*exactly once per key*.

Times are epoch milliseconds of the engine clock (event time in replay).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from monitor.model.events import iso_ms

__all__ = ["Alert", "AlertState", "Severity", "Transition"]

Severity = Literal["warning", "critical"]
AlertState = Literal["inactive", "pending", "firing", "resolved"]


class Alert:
    """The current state of one alert instance (immutable).

    Attributes
    ----------
    value, threshold
        The figure the rule read and the threshold it crossed (in the figure's unit).
    since_ms
        When the alert entered its current state.
    active_since_ms
        When the current episode began (first pending); identifies the episode.
    summary
        A sentence a person can act on ("main: BTC is 71% of risk vs a 33% budget").
    labels
        Extra bounded labels for receivers (e.g. ``{"method": "delta_normal"}``).

    The summary is given as text, or as ``describe``, which builds it when it is first
    read (then never again): the rule engine lists every active alert at every
    evaluation, and most of those lists are never read (a replay reports its last). A
    ``describe`` must return the same text whenever it is called (it reads immutable
    figures). Equality compares every attribute, the summary's text included.
    """

    __slots__ = (
        "_describe",
        "_summary",
        "account",
        "active_since_ms",
        "labels",
        "rule",
        "severity",
        "since_ms",
        "state",
        "threshold",
        "underlying",
        "value",
    )

    __match_args__ = (
        "rule",
        "severity",
        "state",
        "account",
        "underlying",
        "value",
        "threshold",
        "since_ms",
        "active_since_ms",
        "summary",
    )

    rule: str
    severity: Severity
    state: AlertState
    account: str | None
    underlying: str | None
    value: float
    threshold: float
    since_ms: int
    active_since_ms: int
    labels: Mapping[str, str]
    _summary: str | None
    _describe: Callable[[], str] | None

    def __init__(
        self,
        rule: str,
        severity: Severity,
        state: AlertState,
        account: str | None,
        underlying: str | None,
        value: float,
        threshold: float,
        since_ms: int,
        active_since_ms: int,
        summary: str | None = None,
        labels: Mapping[str, str] | None = None,
        *,
        describe: Callable[[], str] | None = None,
    ) -> None:
        if (summary is None) == (describe is None):
            raise TypeError("an Alert needs its summary or a describe that builds it (one)")
        # Frozen: set through the slots themselves (twice as fast as object.__setattr__;
        # the rule engine builds every alert whose value moved at every evaluation).
        _set_rule(self, rule)
        _set_severity(self, severity)
        _set_state(self, state)
        _set_account(self, account)
        _set_underlying(self, underlying)
        _set_value(self, value)
        _set_threshold(self, threshold)
        _set_since_ms(self, since_ms)
        _set_active_since_ms(self, active_since_ms)
        _set_labels(self, {} if labels is None else labels)
        _set_summary(self, summary)
        _set_describe(self, describe)

    @property
    def summary(self) -> str:
        text = self._summary
        if text is None:
            describe = self._describe
            if describe is None:  # another thread built it since (it sets the text first)
                text = self._summary
                assert text is not None
                return text
            text = describe()
            _set_summary(self, text)
            _set_describe(self, None)  # what it read may be freed
        return text

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.rule,
            self.severity,
            self.state,
            self.account,
            self.underlying,
            self.value,
            self.threshold,
            self.since_ms,
            self.active_since_ms,
            self.summary,
            self.labels,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"immutable type: {type(self).__name__!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"immutable type: {type(self).__name__!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Alert:
            return NotImplemented
        return self is other or self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # labels are a mapping

    def __repr__(self) -> str:
        names = (*Alert.__match_args__, "labels")
        body = ", ".join(f"{n}={v!r}" for n, v in zip(names, self._fields(), strict=True))
        return f"Alert({body})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Copies and pickles carry the summary's text (``describe`` is not data)."""
        return (Alert, self._fields())

    @property
    def key(self) -> str:
        """Identity of the alert instance: ``rule/account/underlying`` (``-`` for none)."""
        return f"{self.rule}/{self.account or '-'}/{self.underlying or '-'}"

    def report(self) -> dict[str, Any]:
        """The alert as it appears in the report's ``alerts`` list."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "account": self.account,
            "underlying": self.underlying,
            "value": self.value,
            "threshold": self.threshold,
            "since": iso_ms(self.since_ms),
            "summary": self.summary,
            **({"labels": dict(self.labels)} if self.labels else {}),
        }

    def as_state(self) -> dict[str, Any]:
        """The alert as plain data (every field; ``value`` may be NaN or infinite)."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "state": self.state,
            "account": self.account,
            "underlying": self.underlying,
            "value": self.value,
            "threshold": self.threshold,
            "since_ms": self.since_ms,
            "active_since_ms": self.active_since_ms,
            "summary": self.summary,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Alert:
        """The alert :meth:`as_state` described (``ValueError`` when it is not one)."""
        try:
            out = cls(
                rule=str(state["rule"]),
                severity=state["severity"],
                state=state["state"],
                account=_opt_str(state["account"]),
                underlying=_opt_str(state["underlying"]),
                value=float(state["value"]),
                threshold=float(state["threshold"]),
                since_ms=int(state["since_ms"]),
                active_since_ms=int(state["active_since_ms"]),
                summary=str(state["summary"]),
                labels={str(k): str(v) for k, v in state["labels"].items()},
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not an alert state: {exc!r}") from None
        if out.severity not in ("warning", "critical") or out.state not in (
            "inactive",
            "pending",
            "firing",
            "resolved",
        ):
            raise ValueError(f"not an alert state: {out.severity!r}, {out.state!r}")
        return out


_Setter = Callable[[Alert, Any], None]
_set_rule: _Setter = Alert.__dict__["rule"].__set__
_set_severity: _Setter = Alert.__dict__["severity"].__set__
_set_state: _Setter = Alert.__dict__["state"].__set__
_set_account: _Setter = Alert.__dict__["account"].__set__
_set_underlying: _Setter = Alert.__dict__["underlying"].__set__
_set_value: _Setter = Alert.__dict__["value"].__set__
_set_threshold: _Setter = Alert.__dict__["threshold"].__set__
_set_since_ms: _Setter = Alert.__dict__["since_ms"].__set__
_set_active_since_ms: _Setter = Alert.__dict__["active_since_ms"].__set__
_set_labels: _Setter = Alert.__dict__["labels"].__set__
_set_summary: _Setter = Alert.__dict__["_summary"].__set__
_set_describe: _Setter = Alert.__dict__["_describe"].__set__


@dataclass(frozen=True, slots=True)
class Transition:
    """One move of one alert: what notifiers deliver and ``alert_history`` lists.

    ``previous`` is the state left; ``alert.state`` the state entered (a severity change
    while firing is a transition too, with ``previous == "firing"``).
    """

    alert: Alert
    previous: AlertState
    ts_ms: int

    @property
    def idempotency_key(self) -> str:
        """Stable across retries, restarts and replays of the same move."""
        a = self.alert
        return f"{a.key}/{a.active_since_ms}/{a.state}/{a.severity}/{self.ts_ms}"

    def report(self) -> dict[str, Any]:
        return {
            "ts": iso_ms(self.ts_ms),
            "from": self.previous,
            "key": self.idempotency_key,
            **self.alert.report(),
        }

    def as_state(self) -> dict[str, Any]:
        """The transition as plain data (:meth:`Alert.as_state` plus ``previous``,
        ``ts_ms``)."""
        return {"alert": self.alert.as_state(), "previous": self.previous, "ts_ms": self.ts_ms}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Transition:
        """The transition :meth:`as_state` described (``ValueError`` when it is not one)."""
        try:
            alert = Alert.from_state(state["alert"])
            previous, ts = state["previous"], int(state["ts_ms"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a transition state: {exc!r}") from None
        if previous not in ("inactive", "pending", "firing", "resolved"):
            raise ValueError(f"not a transition state: previous {previous!r}")
        return cls(alert, previous, ts)


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)
