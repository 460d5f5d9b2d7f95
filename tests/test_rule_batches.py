"""Batched readings (``monitor.rules.machine.Readings``) move alerts exactly as one-by-one
readings do, and an active alert whose figure stands still keeps its summary object."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.model.alert import Transition
from monitor.rules.machine import Reading, Readings, Rule, RuleEngine, RuleSpec

T0 = 1_767_225_600_000
UNDS = ("A", "B", "C", "D")
#: One evaluation: per (account, underlying) a value, NaN, or absent (not in the dict).
Tick = Mapping[tuple[str, str], float]

calls: list[tuple[str, str]] = []


def text(account: str, und: str, value: float) -> str:
    calls.append((account, und))
    return f"{account}/{und}: {value:g}"


def single(values: Tick) -> Iterator[Reading]:
    for (a, u), v in sorted(values.items()):
        yield Reading(a, u, v, partial(text, a, u, v))


def describe(account: str, unds: list[str], arr: np.ndarray, k: int) -> str:
    return text(account, unds[k], float(arr[k]))


def batched(values: Tick) -> Iterator[Readings]:
    for a in sorted({a for a, _ in values}):
        unds = [u for u in UNDS if (a, u) in values]
        arr = np.array([values[(a, u)] for u in unds])
        yield Readings(a, unds, arr, partial(describe, a, unds, arr))


def engines(**kw: float) -> tuple[RuleEngine[Tick], RuleEngine[Tick]]:
    spec = RuleSpec("r", for_ms=2_000, cooldown_ms=3_000, **kw)  # type: ignore[arg-type]
    return RuleEngine([Rule(spec, single)]), RuleEngine([Rule(spec, batched, steady=True)])


def key(t: Transition) -> tuple[object, ...]:
    a = t.alert
    return (t.previous, a.state, a.severity, a.account, a.underlying, a.value, a.summary, t.ts_ms)


value = st.one_of(st.floats(0.0, 1.0), st.just(float("nan")), st.just(0.7), st.just(0.9))
tick = st.dictionaries(st.tuples(st.sampled_from(["x", "y"]), st.sampled_from(UNDS)), value)


@settings(max_examples=150)
@given(
    st.lists(st.tuples(tick, st.integers(0, 4)), min_size=1, max_size=30),
    st.sampled_from(["above", "below"]),
)
def test_batches_move_alerts_as_single_readings(
    ticks: list[tuple[Tick, int]], direction: str
) -> None:
    """The batched engine's rule is steady: when a tick repeats (only time passes, up to
    4 more evaluations of the same figures), it replays its last readings instead of
    reading; ``for`` timers and cooldowns still move exactly as with reading."""
    kw = (
        {"warning": 0.6, "critical": 0.8, "clear": 0.5}
        if direction == "above"
        else {"warning": 0.4, "critical": 0.2, "clear": 0.5}
    )
    one, many = engines(direction=direction, **kw)  # type: ignore[arg-type]
    now = T0
    for values, repeats in ticks:
        for r in range(repeats + 1):
            now += 1_000
            assert [key(t) for t in many.evaluate(values, now, unchanged=r > 0)] == [
                key(t) for t in one.evaluate(values, now)
            ]
            assert many.active() == one.active()
    assert many.state() == one.state()


def test_a_standing_figure_formats_its_summary_once() -> None:
    _, eng = engines(warning=0.6, critical=0.8, clear=0.5)
    calls.clear()
    for k in range(5):  # the same figures: the summary is built once, then reused
        eng.evaluate({("x", "A"): 0.7, ("x", "B"): 0.1}, T0 + 1_000 * k)
        first = eng.active()
    assert calls == [("x", "A")]
    assert eng.active()[0] is first[0]
    eng.evaluate({("x", "A"): 0.75, ("x", "B"): 0.1}, T0 + 10_000)
    assert eng.active()[0].summary == "x/A: 0.75"  # the value moved: a new summary
    assert calls == [("x", "A"), ("x", "A")]


def pair() -> RuleEngine[Tick]:
    """Two rules over the same figures: batched and steady (``for``, cooldown), and one by
    one with a warning only (fires at once)."""
    return RuleEngine(
        [
            Rule(
                RuleSpec(
                    "a", warning=0.6, critical=0.8, clear=0.5, for_ms=2_000, cooldown_ms=3_000
                ),
                batched,
                steady=True,
            ),
            Rule(RuleSpec("b", warning=0.7, clear=0.4), single),
        ]
    )


op = st.one_of(
    st.tuples(st.just("evaluate"), tick, st.integers(0, 3), st.booleans()),
    st.tuples(st.just("forget"), st.sampled_from(["x", "y"])),
    st.tuples(st.just("hand over"), st.sampled_from(["x", "y"])),
)


@settings(max_examples=150)
@given(st.lists(op, min_size=1, max_size=30))
def test_active_lists_what_a_fresh_engine_lists(ops: list[tuple[Any, ...]]) -> None:
    """``active()`` keeps what it listed while nothing changed; whatever the evaluations,
    repeats, skipped listings, forgotten and handed-over accounts, it lists what an engine
    rebuilt from the same state (nothing kept) lists, summaries included."""
    eng = pair()
    now = T0
    for o in ops:
        if o[0] == "evaluate":
            _, values, repeats, look = o
            for r in range(repeats + 1):
                now += 1_000
                eng.evaluate(values, now, unchanged=r > 0)
                if look:
                    listed = eng.active()
        elif o[0] == "forget":
            eng.forget(o[1])
        else:
            episodes = eng.episodes(o[1])
            eng.forget(o[1])
            eng.adopt(episodes)
        listed = eng.active()
        fresh = RuleEngine.from_state(eng.rules, eng.state()).active()
        assert listed == fresh
        assert [(a.rule, a.account, a.underlying) for a in listed] == sorted(
            (a.rule, a.account, a.underlying) for a in fresh
        )
