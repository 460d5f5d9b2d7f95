"""The heap freezer: when it freezes, that it freezes what is alive, and never garbage."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from monitor.heap import HeapFreezer


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Give the test process its heap back (a freeze here would outlive the test)."""
    try:
        yield
    finally:
        gc.unfreeze()


def test_freezes_once_loaded_then_on_a_tenth_of_growth_at_most_every_interval(
    unfrozen: None,
) -> None:
    clock = Clock()
    h = HeapFreezer(min_interval_s=60.0, growth=0.1, min_size=1_000, clock=clock)
    assert h.after_evaluation(999) is None  # too small to be worth it
    assert h.after_evaluation(1_000) is not None  # loaded: the first freeze at once
    clock.t = 10.0
    assert not h.due(5_000)  # grown, but 10 s after the last freeze
    clock.t = 60.0
    assert not h.due(1_099)  # an interval later, but grown by less than a tenth
    assert h.due(1_100)
    assert h.after_evaluation(20_000) is not None
    clock.t = 200.0
    assert not h.due(21_999)
    assert h.due(22_000)
    assert h.freezes == 2


def test_the_live_heap_is_frozen_and_garbage_is_collected_first(unfrozen: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    a, b = Node(), Node()
    a.other, b.other = b, a  # a cycle only the cyclic collector frees
    dead = weakref.ref(a)
    del a, b
    kept = [[k] for k in range(20_000)]  # long-lived containers
    before = gc.get_freeze_count()
    frozen = HeapFreezer(min_size=1).after_evaluation(1)
    assert frozen is not None
    assert frozen >= before + len(kept)
    assert dead() is None  # collected before the freeze, not frozen with the rest
