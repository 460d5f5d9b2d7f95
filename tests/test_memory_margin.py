"""The distance scan of :func:`distance_to_call_model` in blocks of moves: the same figures
as all moves at once, a working set bounded by ``block_elements`` (a book with expired and
short-dated options scans hundreds of moves), and cancellable between blocks.

The reference: the same function with ``block_elements=None`` (every move in one block, as
before blocks). Blocks change only how sums group, so the scan's values agree to rounding
and the distances to the search's tolerance (``tol``, 1e-7: each is the end of a bracket
that narrow around the root, so two searches agree that closely, not to the last bit);
today's margin, computed outside the scan, is identical.
"""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from margin_books import INDEX, NAMES, option_book

import monitor.quant.margin as margin
from monitor.quant.margin import (
    MOVE_BLOCK_ELEMENTS,
    Cancelled,
    LinearPositions,
    ModelDistance,
    cancellable,
    distance_to_call_model,
    portfolio_margin,
)
from monitor.quant.risk import OptionPositions

FloatArray = npt.NDArray[np.float64]
TOL = 1e-7  # distance_to_call_model's default tol


def _book(
    seed: int, i: int, k: int
) -> tuple[OptionPositions, LinearPositions, FloatArray, FloatArray]:
    """``i`` options on three underlyings (BTC's settle in coin), a third of them expired
    (t = 0, still held) and a third a few days from expiry, every strike distinct (each
    adds scan moves); perpetuals; equity a few margins above today's."""
    rng = np.random.default_rng(seed)
    options, linear, lin_usd = option_book(
        rng, i, k, days=[0.0, 0.0, 2.0, 5.0, 30.0, 180.0], log_moneyness=0.6
    )
    mm0 = portfolio_margin(linear, options, INDEX, NAMES).maintenance_margin_usd
    equity = mm0 * rng.uniform(1.05, 4.0, k) + 1_000.0
    return options, linear, lin_usd, equity


def _distance(
    book: tuple[OptionPositions, LinearPositions, FloatArray, FloatArray], **kw: Any
) -> ModelDistance:
    options, linear, lin_usd, equity = book
    return distance_to_call_model(equity, lin_usd, options, linear, INDEX, NAMES, **kw)


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("value_grid", [margin.MODEL_GRID_POINTS, None])
def test_blocks_of_moves_give_the_figures_of_one_block(seed: int, value_grid: int | None) -> None:
    book = _book(seed, 150, 6)
    whole = _distance(book, value_grid=value_grid, block_elements=None)
    # One move per block, and blocks of a few moves (the last one shorter).
    for block_elements in (1, 20_000):
        part = _distance(book, value_grid=value_grid, block_elements=block_elements)
        np.testing.assert_array_equal(part.reachable_down, whole.reachable_down)
        np.testing.assert_array_equal(part.reachable_up, whole.reachable_up)
        np.testing.assert_allclose(part.down, whole.down, rtol=0, atol=TOL, equal_nan=True)
        np.testing.assert_allclose(part.up, whole.up, rtol=0, atol=TOL, equal_nan=True)
        np.testing.assert_array_equal(part.maintenance_margin_usd, whole.maintenance_margin_usd)
    # The book has calls within reach both ways: the comparison looks at real distances.
    assert np.isfinite(whole.down).any()
    assert np.isfinite(whole.up).any()


def _peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_working_set_is_bounded_by_the_block_size() -> None:
    """Blocks of moves bound the scan's peak; every move at once it grows with the scan
    (here hundreds of moves: each expired or short-dated option's strike adds some)."""
    book = _book(3, 300, 10)
    options = book[0]
    scan = margin._scan_moves(0.9, 16, margin._prepare(options, 3, 10))
    assert scan[0].size + scan[1].size > 500
    block = 1 << 20  # elements: 8 MB
    bounded = _peak_bytes(lambda: _distance(book, block_elements=block))
    whole = _peak_bytes(lambda: _distance(book, block_elements=None))
    assert bounded < 4 * 8 * block < whole
    assert MOVE_BLOCK_ELEMENTS * 8 <= 2**27  # the daemon's default: 64 MB estimated


def test_a_scan_under_cancellable_stops_once_its_event_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scan gated at its first block until the event is set: it raises
    :class:`Cancelled` at its next check instead of completing."""
    book = _book(4, 150, 6)
    done = _distance(book, block_elements=1)  # the same scan, not cancelled, completes
    assert np.isfinite(done.down).any()
    cancel = threading.Event()
    entered = threading.Event()
    real = margin._entries_moved
    calls = 0

    def gated(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first block of the scan (the first call: today's margin)
            entered.set()
            cancel.wait()
        return real(*args)

    monkeypatch.setattr(margin, "_entries_moved", gated)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            with cancellable(cancel):
                _distance(book, block_elements=1)
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    assert entered.wait(60)
    cancel.set()
    worker.join(60)
    assert not worker.is_alive()
    assert len(raised) == 1
    assert isinstance(raised[0], Cancelled)
    assert calls == 2  # no block after the cancellation
