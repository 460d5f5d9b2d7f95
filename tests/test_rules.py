"""monitor.rules.machine: the alert state machine (for, hysteresis, cooldown, severity, NaN)."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import random
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from typing import Any

import pytest

from monitor.model.alert import Alert, Transition
from monitor.rules.machine import Reading, Rule, RuleEngine, RuleSpec, check_thresholds

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
S = 1_000

Subject = tuple[str | None, str | None]
Values = Mapping[Subject, float]
ONE: Subject = ("main", None)


def text(account: str | None, value: float) -> str:
    return f"{account}: {value:g}"


def rule(name: str = "util", **kw: Any) -> Rule[Values]:
    """A rule that reads ``values[subject]`` for every subject given."""
    spec = RuleSpec(name, **kw)

    def read(values: Values) -> Iterator[Reading]:
        for (account, underlying), v in values.items():
            yield Reading(account, underlying, v, partial(text, account, v))

    return Rule(spec, read)


def util(**kw: Any) -> RuleEngine[Values]:
    """Margin-utilisation-like: above, warning 0.6, critical 0.8, clear 0.5."""
    params: dict[str, Any] = {"warning": 0.6, "critical": 0.8, "clear": 0.5}
    params.update(kw)
    return RuleEngine([rule(**params)])


Move = tuple[int, str, str, str]  # (seconds after T0, from, to, severity)


def moves(ts: Sequence[Transition]) -> list[Move]:
    return [((t.ts_ms - T0) // S, t.previous, t.alert.state, t.alert.severity) for t in ts]


def run(
    engine: RuleEngine[Values], series: Sequence[float | None], subject: Subject = ONE
) -> list[Move]:
    """Feed one value per second (None: the subject is absent); return every move."""
    out: list[Move] = []
    for k, v in enumerate(series):
        out += moves(engine.evaluate({} if v is None else {subject: v}, T0 + k * S))
    return out


# --- for -----------------------------------------------------------------------------------


def test_for_holds_a_breach_pending_until_it_has_lasted() -> None:
    eng = util(for_ms=3 * S)
    assert run(eng, [0.3, 0.65, 0.7, 0.62, 0.7, 0.7]) == [
        (1, "inactive", "pending", "warning"),
        (4, "pending", "firing", "warning"),  # 3 s after the breach began
    ]
    (alert,) = eng.active()
    assert (alert.state, alert.since_ms, alert.active_since_ms) == ("firing", T0 + 4 * S, T0 + S)
    assert (alert.value, alert.threshold, alert.summary) == (0.7, 0.6, "main: 0.7")


def test_for_zero_fires_at_once() -> None:
    assert run(util(), [0.2, 0.9]) == [(1, "inactive", "firing", "critical")]


def test_a_pending_breach_that_clears_goes_back_to_inactive_without_cooldown() -> None:
    eng = util(for_ms=5 * S, cooldown_ms=60 * S)
    assert run(eng, [0.7, 0.7, 0.4, 0.7]) == [
        (0, "inactive", "pending", "warning"),
        (2, "pending", "inactive", "warning"),
        (3, "inactive", "pending", "warning"),  # never fired, so no cooldown
    ]


def test_severity_follows_the_value_while_pending_without_transitions() -> None:
    eng = util(for_ms=2 * S)
    assert run(eng, [0.65, 0.9, 0.9]) == [
        (0, "inactive", "pending", "warning"),
        (2, "pending", "firing", "critical"),
    ]
    assert eng.active()[0].threshold == 0.8


# --- hysteresis ----------------------------------------------------------------------------


def test_a_value_hovering_at_the_threshold_does_not_flap() -> None:
    hover = [0.59, 0.61] * 10
    assert run(util(), hover) == [(1, "inactive", "firing", "warning")]
    # Without hysteresis (clear = warning) the same series flaps on every step.
    flapping = run(util(clear=0.6), hover)
    assert len(flapping) == 19
    assert flapping[:2] == [
        (1, "inactive", "firing", "warning"),
        (2, "firing", "resolved", "warning"),
    ]


def test_resolves_only_strictly_past_clear() -> None:
    eng = util()
    assert run(eng, [0.7, 0.5, 0.5, 0.49]) == [
        (0, "inactive", "firing", "warning"),
        (3, "firing", "resolved", "warning"),
    ]
    assert eng.active() == []


def test_resolve_transition_reports_clear_and_the_value_that_cleared() -> None:
    eng = util(for_ms=S)
    eng.evaluate({ONE: 0.7}, T0)
    eng.evaluate({ONE: 0.7}, T0 + S)
    (t,) = eng.evaluate({ONE: 0.3}, T0 + 2 * S)
    a = t.alert
    assert (t.previous, a.state, a.value, a.threshold, a.summary) == (
        "firing",
        "resolved",
        0.3,
        0.5,
        "main: 0.3",
    )
    assert (a.since_ms, a.active_since_ms, t.ts_ms) == (T0 + 2 * S, T0, T0 + 2 * S)


# --- severities ----------------------------------------------------------------------------


def test_escalation_and_de_escalation_while_firing_are_transitions() -> None:
    # gap = warning - clear = 0.1: critical steps down below 0.8 - 0.1 = 0.7
    eng = util()
    assert run(eng, [0.65, 0.85, 0.79, 0.81, 0.71, 0.69, 0.75, 0.82, 0.4]) == [
        (0, "inactive", "firing", "warning"),
        (1, "firing", "firing", "critical"),
        (5, "firing", "firing", "warning"),  # 0.69 < 0.7; 0.79 and 0.71 held critical
        (7, "firing", "firing", "critical"),
        (8, "firing", "resolved", "critical"),
    ]


def test_severity_change_keeps_the_firing_since() -> None:
    eng = util()
    eng.evaluate({ONE: 0.65}, T0)
    (t,) = eng.evaluate({ONE: 0.9}, T0 + S)
    assert (t.alert.since_ms, t.alert.active_since_ms, t.alert.threshold) == (T0, T0, 0.8)


def test_de_escalation_level_is_never_below_warning() -> None:
    # gap 0.3 would put the step-down at 0.5 < warning 0.6: it is at warning instead
    eng = util(clear=0.3)
    assert run(eng, [0.9, 0.61, 0.59, 0.2]) == [
        (0, "inactive", "firing", "critical"),
        (2, "firing", "firing", "warning"),
        (3, "firing", "resolved", "warning"),
    ]


def test_critical_only_rule() -> None:
    eng = RuleEngine([rule(critical=0.5)])
    assert run(eng, [0.0, 1.0, 0.5, 0.49]) == [
        (1, "inactive", "firing", "critical"),
        (3, "firing", "resolved", "critical"),
    ]


def test_warning_only_rule_never_escalates() -> None:
    eng = RuleEngine([rule(warning=0.5, clear=0.4)])
    assert run(eng, [0.6, 100.0, math.inf, 0.3]) == [
        (0, "inactive", "firing", "warning"),
        (3, "firing", "resolved", "warning"),
    ]


def test_below_rules_mirror_above_rules() -> None:
    # distance to call: warning 0.15, critical 0.08, clear 0.18
    eng = RuleEngine([rule("dist", direction="below", warning=0.15, critical=0.08, clear=0.18)])
    assert run(eng, [0.3, 0.15, 0.16, 0.17, 0.05, 0.1, 0.12, 0.18, 0.19]) == [
        (1, "inactive", "firing", "warning"),
        (4, "firing", "firing", "critical"),
        (6, "firing", "firing", "warning"),  # gap 0.03: steps down above 0.11
        (8, "firing", "resolved", "warning"),  # 0.18 is not past clear; 0.19 is
    ]


def test_infinity_is_a_value() -> None:
    assert run(util(), [math.inf, 0.1]) == [
        (0, "inactive", "firing", "critical"),
        (1, "firing", "resolved", "critical"),
    ]


# --- cooldown ------------------------------------------------------------------------------


def test_cooldown_holds_back_a_new_warning_episode() -> None:
    eng = util(cooldown_ms=10 * S)
    series = [0.7, 0.4] + [0.7] * 12  # resolved at t=1; cooldown until t=11
    assert run(eng, series) == [
        (0, "inactive", "firing", "warning"),
        (1, "firing", "resolved", "warning"),
        (11, "inactive", "firing", "warning"),
    ]


def test_cooldown_suppressed_breach_is_not_active() -> None:
    eng = util(cooldown_ms=10 * S)
    run(eng, [0.7, 0.4, 0.7])
    assert eng.active() == []


def test_cooldown_then_for_starts_a_fresh_episode() -> None:
    eng = util(cooldown_ms=5 * S, for_ms=2 * S)
    out = run(eng, [0.7, 0.7, 0.7, 0.4] + [0.7] * 10)
    assert out == [
        (0, "inactive", "pending", "warning"),
        (2, "pending", "firing", "warning"),
        (3, "firing", "resolved", "warning"),
        (8, "inactive", "pending", "warning"),  # cooldown ends at 3 + 5
        (10, "pending", "firing", "warning"),
    ]


def test_cooldown_never_holds_back_a_critical_breach() -> None:
    eng = util(cooldown_ms=60 * S)
    assert run(eng, [0.7, 0.4, 0.7, 0.9]) == [
        (0, "inactive", "firing", "warning"),
        (1, "firing", "resolved", "warning"),
        (3, "inactive", "firing", "critical"),
    ]


def test_cooldown_is_per_subject() -> None:
    eng = util(cooldown_ms=60 * S)
    a, b = ("a", None), ("b", None)
    eng.evaluate({a: 0.7, b: 0.1}, T0)
    eng.evaluate({a: 0.1, b: 0.1}, T0 + S)
    out = moves(eng.evaluate({a: 0.7, b: 0.7}, T0 + 2 * S))
    assert out == [(2, "inactive", "firing", "warning")]
    assert [x.account for x in eng.active()] == ["b"]


# --- NaN and vanishing subjects ------------------------------------------------------------


def test_nan_holds_a_firing_alert_as_it_was() -> None:
    eng = util()
    assert run(eng, [0.7, math.nan, math.nan, 0.7, math.nan, 0.3]) == [
        (0, "inactive", "firing", "warning"),
        (5, "firing", "resolved", "warning"),
    ]


def test_nan_keeps_the_last_known_value_and_summary() -> None:
    eng = util()
    eng.evaluate({ONE: 0.72}, T0)
    eng.evaluate({ONE: math.nan}, T0 + S)
    (alert,) = eng.active()
    assert (alert.value, alert.summary, alert.state) == (0.72, "main: 0.72", "firing")


def test_nan_holds_pending_and_for_counts_from_the_breach() -> None:
    eng = util(for_ms=2 * S)
    assert run(eng, [0.7, math.nan, math.nan, math.nan, 0.7]) == [
        (0, "inactive", "pending", "warning"),
        (4, "pending", "firing", "warning"),  # nothing decided while unknown
    ]


def test_nan_on_a_calm_subject_does_nothing() -> None:
    eng = util()
    assert run(eng, [math.nan, math.nan]) == []
    assert eng.active() == []


def test_a_firing_subject_that_vanishes_resolves_and_starts_cooldown() -> None:
    eng = util(cooldown_ms=10 * S)
    out: list[Transition] = []
    for k, v in enumerate([0.7, None, 0.7]):
        out += eng.evaluate({} if v is None else {ONE: v}, T0 + k * S)
    assert moves(out) == [
        (0, "inactive", "firing", "warning"),
        (1, "firing", "resolved", "warning"),
    ]
    gone = out[1].alert
    assert (gone.value, gone.threshold) == (0.7, 0.6)
    assert gone.summary == "main: 0.7 [no longer reported]"


def test_a_pending_subject_that_vanishes_goes_inactive() -> None:
    eng = util(for_ms=5 * S, cooldown_ms=60 * S)
    assert run(eng, [0.7, None, 0.7]) == [
        (0, "inactive", "pending", "warning"),
        (1, "pending", "inactive", "warning"),
        (2, "inactive", "pending", "warning"),
    ]


def test_one_subject_vanishing_leaves_the_others() -> None:
    eng = util()
    a, b = ("a", "BTC"), ("a", "ETH")
    eng.evaluate({a: 0.7, b: 0.7}, T0)
    out = eng.evaluate({b: 0.7}, T0 + S)
    assert [(t.alert.underlying, t.alert.state) for t in out] == [("BTC", "resolved")]
    assert [x.underlying for x in eng.active()] == ["ETH"]


# --- order, keys, laziness, misuse ---------------------------------------------------------


def shuffled_rule(name: str, seed: int) -> Rule[Values]:
    """Yields its subjects in a shuffled order."""
    spec = RuleSpec(name, warning=0.6, critical=0.8, clear=0.5)
    rng = random.Random(seed)

    def read(values: Values) -> Iterator[Reading]:
        items = list(values.items())
        rng.shuffle(items)
        for (a, u), v in items:
            yield Reading(a, u, v, lambda: name)

    return Rule(spec, read)


SUBJECTS: list[Subject] = [
    (None, None),
    (None, "BTC"),
    ("a", None),
    ("a", "BTC"),
    ("a", "ETH"),
    ("b", "BTC"),
    ("desk-2", "SOL"),
]


def test_transitions_and_active_alerts_come_in_a_deterministic_order() -> None:
    eng = RuleEngine([shuffled_rule("zeta", 1), shuffled_rule("alpha", 2)])
    out = eng.evaluate(dict.fromkeys(SUBJECTS, 0.9), T0)
    expected = [(r, a, u) for r in ("zeta", "alpha") for a, u in SUBJECTS]  # rule order first
    assert [(t.alert.rule, t.alert.account, t.alert.underlying) for t in out] == expected
    active = eng.active()
    assert [(x.rule, x.account, x.underlying) for x in active] == expected
    out = eng.evaluate(dict.fromkeys(SUBJECTS, 0.1), T0 + S)
    assert [(t.alert.rule, t.alert.account, t.alert.underlying) for t in out] == expected


def scenario(engine: RuleEngine[Values]) -> list[Transition]:
    rng = random.Random(11)
    out: list[Transition] = []
    for k in range(300):
        values = {
            s: rng.choice([0.1, 0.55, 0.65, 0.85, math.nan])
            for s in SUBJECTS
            if rng.random() > 0.05
        }
        out += engine.evaluate(values, T0 + 250 * k)
    return out


def test_idempotency_keys_are_stable_across_identical_runs() -> None:
    def engine() -> RuleEngine[Values]:
        return RuleEngine(
            [
                rule("util", warning=0.6, critical=0.8, clear=0.5, for_ms=500, cooldown_ms=2_000),
                rule("drift", warning=0.6, critical=0.8, clear=0.5),
            ]
        )

    first, second = scenario(engine()), scenario(engine())
    assert len(first) > 100
    assert [t.idempotency_key for t in first] == [t.idempotency_key for t in second]
    assert [t.report() for t in first] == [t.report() for t in second]
    keys = [t.idempotency_key for t in first]
    assert len(set(keys)) == len(keys)  # every move its own key
    key = first[0].idempotency_key
    a = first[0].alert
    assert key == f"{a.key}/{a.active_since_ms}/{a.state}/{a.severity}/{first[0].ts_ms}"


def test_summaries_are_built_only_when_an_alert_is_built() -> None:
    calls: list[float] = []

    def describe(v: float) -> str:
        calls.append(v)
        return f"{v}"

    def read(values: Values) -> Iterator[Reading]:
        for (a, u), v in values.items():
            yield Reading(a, u, v, partial(describe, v))

    eng = RuleEngine([Rule(RuleSpec("r", warning=0.6, clear=0.5), read)])
    eng.evaluate({(str(i), None): 0.1 for i in range(1000)}, T0)
    assert calls == []
    eng.evaluate({("x", None): 0.7, ("y", None): 0.1}, T0 + S)
    assert calls == [0.7]
    eng.evaluate({("x", None): 0.8, ("y", None): 0.1}, T0 + 2 * S)  # still firing: no text
    assert calls == [0.7]
    assert eng.active()[0].summary == "0.8"
    assert calls == [0.7, 0.8]


def test_labels_reach_the_alert() -> None:
    def read(values: Values) -> Iterator[Reading]:
        yield Reading("deribit", None, 1.0, lambda: "down", {"connector": "deribit"})

    eng = RuleEngine([Rule(RuleSpec("connector_down", critical=0.5), read)])
    (t,) = eng.evaluate({}, T0)
    assert t.alert.labels == {"connector": "deribit"}
    assert t.report()["labels"] == {"connector": "deribit"}


def test_a_summary_follows_the_reading_it_was_built_from() -> None:
    """Summaries are built when first read and reused while the value stands: while the
    alert stays firing (no transition), a value or labels that change show the new text;
    an alert listed earlier keeps its own reading's text, even when read much later."""
    n = 0

    def describe(k: int, v: float, labels: Mapping[str, str]) -> str:
        return f"#{k} {v:g} {dict(labels)}"

    def read(tick: tuple[float, Mapping[str, str]]) -> Iterator[Reading]:
        nonlocal n
        n += 1
        v, labels = tick
        yield Reading("main", None, v, partial(describe, n, v, labels), labels)

    eng = RuleEngine([Rule(RuleSpec("r", warning=0.6, critical=0.9, clear=0.5), read)])
    ticks = [(0.65, {}), (0.7, {}), (0.7, {}), (0.7, {"venue": "b"}), (0.65, {"venue": "b"})]
    lists, saved = [], []
    for k, tick in enumerate(ticks):
        moves = eng.evaluate(tick, T0 + k * S)
        assert [t.alert.state for t in moves] == (["firing"] if k == 0 else [])
        # A saved state builds the summary before the list does: the same one.
        saved.append(eng.state()["rules"]["r"]["tracks"][0]["summary"])
        lists.append(eng.active())
    assert lists[2][0] is lists[1][0]  # nothing changed: the same alert
    assert [a.summary for (a,) in lists] == [  # read only now
        "#1 0.65 {}",
        "#2 0.7 {}",
        "#2 0.7 {}",  # the value stood still: the text built at #2 stands
        "#4 0.7 {'venue': 'b'}",
        "#5 0.65 {'venue': 'b'}",
    ]
    assert [a.summary for (a,) in lists] == saved
    assert [a.labels for (a,) in lists][3:] == [{"venue": "b"}] * 2
    (t,) = eng.evaluate((0.2, {"venue": "b"}), T0 + 5 * S)
    assert (t.alert.state, t.alert.summary) == ("resolved", "#6 0.2 {'venue': 'b'}")


def test_a_listed_alert_lets_go_of_the_figures_it_was_built_from() -> None:
    """A lazy summary holds its reading's figures until built; an alert listed again (the
    value stood still) builds it, so that a long-standing alert does not keep an old
    evaluation's figures alive (the track holds the latest reading only)."""

    class Figures:
        def __init__(self, v: float) -> None:
            self.v = v

        def text(self) -> str:
            return f"main: {self.v:g}"

    def read(fig: Figures) -> Iterator[Reading]:
        yield Reading("main", None, fig.v, fig.text)

    eng = RuleEngine([Rule(RuleSpec("r", warning=0.6, clear=0.5), read)])
    eng.evaluate(Figures(0.65), T0)  # fires: a transition's summary is built at once
    first = Figures(0.7)
    eng.evaluate(first, T0 + S)
    eng.active()  # lists the alert, its summary not built
    gone = weakref.ref(first)
    del first
    eng.evaluate(Figures(0.7), T0 + 2 * S)
    (alert,) = eng.active()
    gc.collect()
    assert gone() is None
    assert alert.summary == "main: 0.7"


def test_an_alert_builds_its_summary_once_and_compares_by_its_text() -> None:
    calls: list[int] = []

    def describe() -> str:
        calls.append(1)
        return "main: 70%"

    fields: dict[str, Any] = {
        "rule": "r",
        "severity": "warning",
        "state": "firing",
        "account": "main",
        "underlying": None,
        "value": 0.7,
        "threshold": 0.6,
        "since_ms": T0,
        "active_since_ms": T0,
    }
    lazy = Alert(**fields, describe=describe)
    text = Alert(**fields, summary="main: 70%")
    assert calls == []
    assert lazy == text
    assert lazy != Alert(**fields, summary="main: 71%")
    assert lazy.summary == "main: 70%"
    assert calls == [1]
    assert copy.deepcopy(lazy) == lazy
    assert pickle.loads(pickle.dumps(Alert(**fields, describe=describe))) == text
    assert repr(lazy) == repr(text)
    assert "summary='main: 70%'" in repr(lazy)
    assert lazy.as_state() == text.as_state()
    assert lazy.report() == text.report()
    with pytest.raises(AttributeError, match="immutable"):
        lazy.value = 0.8
    with pytest.raises(TypeError, match="summary"):
        Alert(**fields)
    with pytest.raises(TypeError, match="summary"):
        Alert(**fields, summary="x", describe=describe)

    class Figures:
        def text(self) -> str:
            return "main: 70%"

    figures = Figures()
    held = Alert(**fields, describe=figures.text)
    gone = weakref.ref(figures)
    del figures
    assert held.summary == "main: 70%"
    gc.collect()
    assert gone() is None  # built: what it was built from is let go


def test_misuse_is_an_error() -> None:
    eng = util()
    eng.evaluate({ONE: 0.7}, T0 + S)
    with pytest.raises(ValueError, match="clock went back"):
        eng.evaluate({ONE: 0.7}, T0)

    def twice(values: Values) -> Iterator[Reading]:
        yield Reading("a", None, 0.9, lambda: "")
        yield Reading("a", None, 0.9, lambda: "")

    with pytest.raises(ValueError, match="twice"):
        RuleEngine([Rule(RuleSpec("r", critical=0.5), twice)]).evaluate({}, T0)
    with pytest.raises(ValueError, match="duplicate rule names: r"):
        RuleEngine([rule("r", critical=1.0), rule("r", critical=2.0)])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({}, "critical: a rule needs a warning or a critical threshold"),
        ({"warning": 0.8, "critical": 0.6}, "critical: must be above warning (0.8)"),
        ({"warning": 0.6, "clear": 0.7}, "clear: must be at or below warning (0.6)"),
        (
            {"direction": "below", "warning": 0.1, "critical": 0.2},
            "critical: must be below warning (0.1)",
        ),
        ({"critical": math.nan}, "critical: expected a finite number; got nan"),
        ({"critical": 1.0, "for_ms": -1}, "for_ms and cooldown_ms must be >= 0"),
    ],
)
def test_spec_checks_its_thresholds(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RuleSpec("r", **kw)


def test_spec_clear_defaults_to_the_first_threshold() -> None:
    assert RuleSpec("r", warning=0.6, critical=0.8).clear_level == 0.6
    assert RuleSpec("r", critical=0.8).clear_level == 0.8
    assert check_thresholds("below", 0.15, 0.08, 0.18) is None
