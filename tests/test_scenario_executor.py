"""Live, the scenario pass runs on a worker thread; its figures equal the synchronous ones."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import Evaluator
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent

T0 = 1_767_225_600_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=20_000,
    fast_halflife_ms=5_000,
    warmup_ms=5_000,
    max_gap_ms=60_000,
    eval_interval_ms=1_000,
)


def _events() -> list[Event]:
    events: list[Event] = [
        PositionEvent(T0, "a", "BTC-PERPETUAL", 3.0),
        PositionEvent(T0, "a", "ETH-27MAR26-3200-C", -40.0),
        AccountEvent(T0, "a", 400_000.0, 80_000.0, 50_000.0),
    ]
    for k in range(30):
        ts = T0 + 1_000 * k + 500
        btc, eth = 90_000.0 * (1 + 0.001 * (k % 5 - 2)), 3_000.0 * (1 + 0.002 * (k % 3 - 1))
        events += [
            PriceEvent(ts, "BTC", btc),
            PriceEvent(ts, "ETH", eth),
            PriceEvent(ts, "ETH-27MAR26-3200-C", 150.0, 0.7, eth * 1.002),
        ]
    return events


def _evaluator(engine: Engine) -> Evaluator:
    ev: Evaluator = engine._evaluator
    return ev


def _wait_idle(engine: Engine) -> None:
    deadline = time.monotonic() + 30
    while _evaluator(engine).scenarios_pending and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _evaluator(engine).scenarios_pending


def test_background_scenario_pass_matches_the_synchronous_one() -> None:
    sync = Engine(SETTINGS)
    with ThreadPoolExecutor(1) as pool:
        live = Engine(SETTINGS, scenario_executor=pool)
        for eng in (sync, live):
            eng.replay(_events(), "t")
        # Both engines evaluated on event time during the replay, and the live one may
        # still be running the pass it started then: let it end first. At a fresh as_of
        # the pass is due again for both.
        _wait_idle(live)
        as_of = T0 + 60_000
        expected = sync.evaluate(as_of)
        first = live.evaluate(as_of)  # adopts the earlier pass, submits a new one
        _wait_idle(live)
        adopted = live.evaluate(as_of + 1_000)

    acc_first = first.accounts["a"]
    assert acc_first.risk is not None
    # Until the pass ends the snapshot keeps the previous pass's figures (as of then): the
    # pass the replay started, adopted once it ended.
    prev = acc_first.risk.full_revaluation
    assert prev is not None
    assert prev.as_of_ms < as_of

    want, got = expected.accounts["a"], adopted.accounts["a"]
    assert want.risk is not None
    assert got.risk is not None
    w, g = want.risk.full_revaluation, got.risk.full_revaluation
    assert w is not None
    assert g is not None
    # Same inputs, same deterministic computation: the same figures, to the bit.
    assert g.as_of_ms == w.as_of_ms == as_of
    assert (g.var_usd, g.es_usd, g.worst_usd) == (w.var_usd, w.es_usd, w.worst_usd)
    for key in ("scenario_margin", "worst_scenario", "distance_to_call", "scenarios_as_of"):
        assert got.extra["margin"][key] == want.extra["margin"][key], key
