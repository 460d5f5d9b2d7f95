"""The engine: event-time sample grid, evaluation clock, valuation of a linear book."""

from __future__ import annotations

import dataclasses
import itertools
import math
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.engine import core
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.valuation import build_book
from monitor.model.events import (
    AccountEvent,
    CurrencyBalance,
    Event,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
)

T0 = 1_767_225_600_000  # on every grid used here
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=10_000,
    fast_halflife_ms=2_000,
    warmup_ms=5_000,
    max_gap_ms=30_000,
    eval_interval_ms=250,
)


def _lam(halflife_ms: int) -> float:
    return float(0.5 ** (SETTINGS.sample_interval_ms / halflife_ms))


def test_grid_takes_last_tick_at_or_before_each_point() -> None:
    """Ticks between grid points only count through the last one before the point."""
    eng = Engine(SETTINGS)
    ticks = [  # (ts offset ms, price)
        (0, 100.0),  # at grid point 0: the first sample base
        (400, 999.0),  # overwritten before grid point 1000
        (1000, 110.0),  # exactly at grid point 1000: belongs to it
        (1500, 120.0),  # closes 1000 with 110
        (3200, 90.0),  # closes 2000 (120) and 3000 (120): a zero return
        (4000, 95.0),
        (4001, 96.0),  # closes 4000 with 95
    ]
    eng.replay([PriceEvent(T0 + dt, "BTC", p) for dt, p in ticks], "t")
    # samples at grid points 1000, 2000, 3000, 4000 -> returns vs 0, 1000, 2000, 3000
    sampled = [100.0, 110.0, 120.0, 120.0, 95.0]
    rets = [math.log(b / a) for a, b in itertools.pairwise(sampled)]
    lam = _lam(SETTINGS.halflife_ms)
    num = den = 0.0
    for r in rets:
        num = lam * num + (1 - lam) * r * r
        den = lam * den + (1 - lam)
    per_year = 365 * 86_400_000 / SETTINGS.sample_interval_ms
    assert eng.estimator.returns.tolist() == [4]
    assert eng.estimator.volatility()[0] == pytest.approx(
        math.sqrt(num / den * per_year), rel=1e-12
    )
    assert eng.stats.samples == 5


def test_outage_restarts_grid_without_a_return() -> None:
    eng = Engine(SETTINGS)
    eng.replay(
        [
            PriceEvent(T0, "BTC", 100.0),
            PriceEvent(T0 + 1_000, "BTC", 101.0),
            PriceEvent(T0 + 2_000, "BTC", 102.0),  # sample at 1000: one return
            PriceEvent(T0 + 100_000, "BTC", 150.0),  # 98 s silence > max_gap: restart
            PriceEvent(T0 + 101_500, "BTC", 151.0),  # closes 100000 (base) and 101000 (150)
            PriceEvent(T0 + 102_500, "BTC", 152.0),  # closes 102000 (151)
        ],
        "t",
    )
    assert eng.stats.gaps == 1
    # The 101 -> 150 jump across the outage is not a return; after it: 0 and ln(151/150).
    rets = [math.log(101 / 100), 0.0, math.log(151 / 150)]
    assert eng.estimator.returns.tolist() == [3]
    lam = _lam(SETTINGS.halflife_ms)
    num = den = 0.0
    for r in rets:
        num = lam * num + (1 - lam) * r * r
        den = lam * den + (1 - lam)
    var = num / den
    assert eng.estimator.covariance()[0, 0] == pytest.approx(var * 365 * 86_400, rel=1e-12)


def test_evaluation_clock_sees_exactly_events_up_to_as_of() -> None:
    eng = Engine(SETTINGS)
    eng.replay(
        [
            PriceEvent(T0 + 10, "BTC", 100.0),
            PriceEvent(T0 + 250, "BTC", 101.0),  # at the grid point 250: included
            PriceEvent(T0 + 251, "BTC", 102.0),  # triggers evaluation as of 250
        ],
        "t",
    )
    snap = eng.snapshot
    assert snap is not None
    assert snap.as_of_ms == T0 + 250
    assert snap.assets.price.tolist() == [101.0]
    # a quiet stretch is evaluated once, at its last grid point
    eng.replay([PriceEvent(T0 + 10_001, "BTC", 103.0)], "t")
    assert eng.snapshot is not None
    assert eng.snapshot.as_of_ms == T0 + 10_000
    assert eng.snapshot.assets.price.tolist() == [102.0]
    assert eng.stats.evaluations == 2


def test_linear_book_figures_and_venue_margin() -> None:
    eng = Engine(SETTINGS)
    events: list[Event] = [
        PriceEvent(T0, "BTC", 90_000.0),
        PriceEvent(T0, "ETH", 3_000.0),
        PriceEvent(T0, "BTC-PERPETUAL", 90_050.0),
        PriceEvent(T0, "ETH_USDC", 3_001.0),
        InstrumentEvent("ETH-27DEC26", "future", "ETH", "2026-12-27", multiplier=10.0),
        PriceEvent(T0, "ETH-27DEC26", 3_050.0),
        PositionEvent(T0, "main", "BTC-PERPETUAL", 2.0),
        PositionEvent(T0, "main", "ETH_USDC", 10.0),
        PositionEvent(T0, "main", "ETH-27DEC26", -1.5),
        PositionEvent(T0, "hedge", "BTC-PERPETUAL", -0.5),
        PositionEvent(T0, "hedge", "ETH_USDC", 3.0),
        PositionEvent(T0, "hedge", "ETH_USDC", 0.0),  # closed: drops out
        AccountEvent(T0 - 4_000, "main", 500_000.0, 60_000.0, 40_000.0),
    ]
    eng.replay(events, "t")
    snap = eng.evaluate(T0)
    main = snap.accounts["main"]
    assert main.positions is not None
    assert main.positions.instrument == ("BTC-PERPETUAL", "ETH_USDC", "ETH-27DEC26")
    np.testing.assert_allclose(main.positions.delta, [2.0, 10.0, -15.0])
    # delta_usd: q S for the perpetual and spot, q F (the future's own mark) for the future.
    np.testing.assert_allclose(main.positions.delta_usd, [180_000.0, 30_000.0, -45_750.0])
    np.testing.assert_allclose(main.positions.value_usd, [180_100.0, 30_010.0, -45_750.0])
    assert main.exposure_usd == {"BTC": 180_000.0, "ETH": -15_750.0}
    assert main.greeks["delta_usd"] == 164_250.0
    assert main.greeks["gamma_usd"] == 0.0
    hedge = snap.accounts["hedge"]
    assert hedge.exposure_usd == {"BTC": -45_000.0}
    assert snap.total.exposure_usd == {"BTC": 135_000.0, "ETH": -15_750.0}
    margin = main.extra["margin"]
    assert margin["utilization"] == pytest.approx(40_000 / 500_000)
    assert margin["initial_utilization"] == pytest.approx(60_000 / 500_000)
    assert margin["headroom_usd"] == 460_000.0
    assert margin["age_seconds"] == 4.0
    assert main.extra["unpriced_positions"] == 0


def test_unpriced_position_is_counted_not_summed() -> None:
    eng = Engine(SETTINGS)
    eng.replay(
        [
            PriceEvent(T0, "BTC", 90_000.0),
            PriceEvent(T0, "BTC-PERPETUAL", 90_000.0),
            PositionEvent(T0, "a", "BTC-PERPETUAL", 1.0),
            PositionEvent(T0, "a", "SOL-PERPETUAL", 100.0),  # SOL has no index price
        ],
        "t",
    )
    acc = eng.evaluate(T0).accounts["a"]
    assert acc.extra["unpriced_positions"] == 1
    assert acc.greeks["delta_usd"] == 90_000.0


def test_rejections_are_counted_and_state_kept() -> None:
    eng = Engine(SETTINGS)
    rejected = eng.replay(
        [
            PriceEvent(T0, "BTC", 1.0),
            PriceEvent(T0, "NOT-A-NAME!", 1.0),
            PositionEvent(T0, "a", "BTC", 1.0),  # an index is not tradable
            PriceEvent(T0 + 1, "BTC", 1.25),
        ],
        "src",
    )
    assert [(k, r.reason) for k, r in rejected] == [
        (1, Reason.UNKNOWN_INSTRUMENT),
        (2, Reason.INVALID_VALUE),
    ]
    assert eng.stats.rejected == {
        ("src", "unknown_instrument"): 1,
        ("src", "invalid_value"): 1,
    }
    assert eng.stats.accepted[("src", "price")] == 2
    assert eng.evaluate(T0 + 1).assets.price.tolist() == [1.25]
    with pytest.raises(Rejected):
        eng.apply(PriceEvent(T0, "??", 1.0), "src")


def test_late_asset_joins_estimator_and_snapshot() -> None:
    eng = Engine(SETTINGS)
    evs = [PriceEvent(T0 + k * 1_000, "BTC", 100.0 * (1.01**k)) for k in range(10)]
    evs += [PriceEvent(T0 + k * 1_000 + 1, "ETH", 10.0 * (0.99**k)) for k in range(5, 10)]
    evs.sort(key=lambda e: int(e.ts))
    eng.replay(evs, "t")
    snap = eng.evaluate(T0 + 9_500)
    assert snap.assets.names == ("BTC", "ETH")
    # BTC: grid points 1000..9000 carry returns. ETH's first tick (5001) is its price at
    # grid 6000, the base; 7000, 8000, 9000 carry its returns.
    assert snap.assets.returns.tolist() == [9, 3]
    assert snap.assets.volatility[1] == pytest.approx(
        -math.log(0.99) * math.sqrt(365 * 86_400), rel=1e-9
    )
    assert snap.assets.volatility[0] == pytest.approx(
        math.log(1.01) * math.sqrt(365 * 86_400), rel=1e-9
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["position", "position", "position", "account"]),
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(["BTC-PERPETUAL", "ETH-PERPETUAL", "BTC-27MAR26", "SOL-PERPETUAL"]),
            st.sampled_from([0.0, 1.0, -2.5, 4.0]),
        ),
        max_size=30,
    )
)
def test_the_book_follows_positions_patched_or_rebuilt(
    steps: list[tuple[str, str, str, float]],
) -> None:
    """After any sequence of position changes and account updates (coin collateral is a
    position), the evaluated book equals one built from scratch from the positions; a
    quantity change of a position the book holds patches it instead of rebuilding it."""
    eng = Engine(EngineSettings())
    for u, px in (("BTC", 90_000.0), ("ETH", 3_000.0), ("SOL", 150.0)):
        eng.apply(PriceEvent(T0, u, px), "t")
    ts = T0
    with mock.patch.object(core, "build_book", wraps=build_book) as built:
        for kind, account, instrument, qty in steps:
            ts += 1_000
            before = set(eng._positions.get(account, {}))
            version, had_book = eng.registry.version, eng._book is not None
            if kind == "position":
                eng.apply(PositionEvent(ts, account, instrument, qty), "t")
            else:
                coins = {"BTC": CurrencyBalance(1.0, collateral=qty)}
                if qty < 0:
                    coins["ETH"] = CurrencyBalance(2.0, collateral=-qty)
                eng.apply(AccountEvent(ts, account, 1e6, currencies=coins), "t")
            same_rows = before == set(eng._positions.get(account, {}))
            built.reset_mock()
            eng.evaluate(ts)
            book = eng._book
            assert book is not None
            expected = build_book(eng._positions, eng.registry)
            for field in dataclasses.fields(expected):
                got, want = getattr(book, field.name), getattr(expected, field.name)
                if isinstance(want, np.ndarray):
                    np.testing.assert_array_equal(got, want)
                else:
                    assert got == want, field.name
            if had_book and same_rows and eng.registry.version == version:
                assert built.call_count == 0  # patched, not rebuilt
