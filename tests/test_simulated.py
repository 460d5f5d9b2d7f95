"""The simulated market: determinism, valid events, and statistics that match its model.

Every check recomputes what the stream should hold from the emitted events alone (numpy,
``monitor.quant.greeks.black76_price``, the documented margin model), never from the simulator's
internals.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest

from connectors.base import Connector
from connectors.simulated import (
    DEFAULT_START_MS,
    MIN_OPTION_PRICE_FRACTION,
    SPIKE_CORRELATION,
    Regime,
    RegimeSpan,
    SimulatedMarket,
)
from monitor.model.events import (
    AccountEvent,
    Event,
    EventDecoder,
    InstrumentEvent,
    PositionEvent,
    PriceEvent,
    Rejected,
    encode_event,
)
from monitor.model.instruments import Instrument, InstrumentRegistry, from_event, parse_name
from monitor.quant.greeks import black76_price

START = 1_795_240_800_000  # 2026-11-21T06:00:00Z
MS_PER_YEAR = 365 * 86_400_000
UNDERLYINGS = ("BTC", "ETH", "SOL")


def steps(market: SimulatedMarket, start: int, n: int) -> list[Event]:
    """The events of the first ``n`` steps of ``market.events()``."""
    end = start + n * _tick(market)
    return list(itertools.takewhile(lambda e: ts_of(e) < end, market.events()))


def ts_of(ev: Event) -> int:
    """Event time; the simulator always sets it as int epoch ms."""
    assert type(ev.ts) is int
    return ev.ts


def _tick(market: SimulatedMarket) -> int:
    return market._model.tick_ms


class ListSink:
    """A sink that keeps what it is given, and when (wall clock) it got it."""

    def __init__(
        self, keep: type | tuple[type, ...] = object, clock: Callable[[], float] = time.time
    ) -> None:
        self.events: list[Event] = []
        self.received_s: list[float] = []
        self.sources: set[str] = set()
        self.keep = keep
        self.clock = clock

    async def put(self, event: Event, source: str) -> None:
        self.sources.add(source)
        if isinstance(event, self.keep):
            self.events.append(event)
            self.received_s.append(self.clock())

    def reject(self, source: str, rejected: Rejected) -> None:
        raise AssertionError(f"{source}: {rejected}")


class Replayed:
    """The state an independent consumer rebuilds from the stream: instruments and marks."""

    def __init__(self) -> None:
        self.registry = InstrumentRegistry()
        self.price: dict[str, PriceEvent] = {}

    def instrument(self, name: str) -> Instrument:
        inst = self.registry.get(name)
        if inst is None:
            self.registry.index_of(name)  # raises unknown_instrument when it does not parse
            inst = self.registry.get(name)
        assert inst is not None
        return inst

    def value(self, name: str) -> float:
        """USD per unit at the last emitted price (inverse options: coin price x forward)."""
        ev = self.price[name]
        if self.instrument(name).inverse:
            assert ev.underlying_price is not None
            return ev.price * ev.underlying_price
        return ev.price


# --- long runs shared by several tests ------------------------------------------------------


@pytest.fixture(scope="module")
def hour_run() -> list[Event]:
    """One hour at 1 s: regimes, hedge switches, delta hedging."""
    return steps(SimulatedMarket(seed=7, tick_interval_ms=1000, start_ms=START), START, 3600)


@pytest.fixture(scope="module")
def roll_run() -> list[Event]:
    """100 days at 1 h: every expiry slot and the future roll at least once."""
    m = SimulatedMarket(seed=11, tick_interval_ms=3_600_000, start_ms=START)
    return steps(m, START, 100 * 24)


STATS_HOURS = 8


@pytest.fixture(scope="module")
def stats_run() -> tuple[SimulatedMarket, list[Event]]:
    """A long realtime=False run() at 1 s, keeping index prices and account/position events."""
    market = SimulatedMarket(
        seed=7,
        tick_interval_ms=1000,
        start_ms=START,
        realtime=False,
        duration_ms=STATS_HOURS * 3_600_000,
    )
    sink = ListSink((PriceEvent, PositionEvent, AccountEvent))

    async def go() -> None:
        await market.run(sink)

    asyncio.run(go())
    keep = [
        e
        for e in sink.events
        if not isinstance(e, PriceEvent) or e.instrument in UNDERLYINGS or "-" not in e.instrument
    ]
    return market, keep


# --- determinism ----------------------------------------------------------------------------


def test_same_arguments_give_the_same_stream_and_another_seed_another() -> None:
    def stream(seed: int) -> list[bytes]:
        m = SimulatedMarket(seed=seed, start_ms=START)
        return [encode_event(e) for e in steps(m, START, 600)]

    a, b, c = stream(7), stream(7), stream(8)
    assert a == b
    assert len(a) > 600 * 60
    prices = [x for x, y in zip(a, c, strict=False) if x != y]
    assert len(prices) > len(a) // 2  # the paths differ, not one field


def test_default_start_and_realtime_flag_do_not_change_events() -> None:
    a = steps(SimulatedMarket(start_ms=None, realtime=True), DEFAULT_START_MS, 20)
    b = steps(SimulatedMarket(start_ms=DEFAULT_START_MS, realtime=False), DEFAULT_START_MS, 20)
    assert [encode_event(e) for e in a] == [encode_event(e) for e in b]
    assert ts_of(a[0]) == DEFAULT_START_MS


def test_is_a_connector_and_rejects_bad_arguments() -> None:
    assert isinstance(SimulatedMarket(), Connector)
    for bad in ((), ("btc",), ("BTC", "BTC")):
        with pytest.raises(ValueError, match="underlying"):
            SimulatedMarket(underlyings=bad)
    with pytest.raises(ValueError, match="tick_interval_ms"):
        SimulatedMarket(tick_interval_ms=0)


# --- validity -------------------------------------------------------------------------------


def check_valid(events: list[Event]) -> Replayed:
    """Round-trip every event and replay names through a registry, as the engine would."""
    dec = EventDecoder()
    seen = Replayed()
    last_ts = 0
    for ev in events:
        back = dec.decode(encode_event(ev))
        assert back == ev
        assert type(ev.ts) is int
        assert ev.ts >= last_ts  # event time never goes back
        last_ts = ev.ts
        if isinstance(ev, InstrumentEvent):
            assert ev.instrument not in seen.price  # declared before its first price
            declared = from_event(ev)
            parsed = parse_name(ev.instrument)
            assert parsed is not None  # the name is Deribit-form too, and agrees
            assert (parsed.expiry_ms, parsed.strike, parsed.is_call, parsed.underlying) == (
                declared.expiry_ms,
                declared.strike,
                declared.is_call,
                declared.underlying,
            )
            assert declared.inverse
            assert declared.kind == "option"
            seen.registry.register(declared)
        elif isinstance(ev, PriceEvent):
            inst = seen.instrument(ev.instrument)
            assert math.isfinite(ev.price)
            assert ev.price > 0
            if inst.kind == "option":
                assert ev.iv is not None
                assert ev.underlying_price is not None
                assert inst.expiry_ms is not None
                assert inst.expiry_ms > ev.ts
                # Deribit: BTC and ETH options are inverse, the rest linear USDC
                assert inst.inverse == (inst.underlying in ("BTC", "ETH"))
                assert inst.expiry_ms % 86_400_000 == 8 * 3_600_000  # 08:00 UTC
            elif inst.kind == "future":
                assert inst.expiry_ms is not None
                assert inst.expiry_ms > ev.ts
            seen.price[ev.instrument] = ev
        elif isinstance(ev, PositionEvent):
            seen.instrument(ev.instrument)
            assert ev.instrument in seen.price  # priced before it is held
        else:
            assert ev.maintenance_margin is not None
            assert ev.initial_margin is not None
    return seen


def test_events_round_trip_and_every_name_is_known_before_use(hour_run: list[Event]) -> None:
    seen = check_valid(hour_run)
    kinds: dict[str, set[str]] = defaultdict(set)
    for inst in seen.registry.instruments:
        kinds[inst.underlying].add(inst.kind)
    for u in UNDERLYINGS:
        assert kinds[u] == {"index", "spot", "perpetual", "future", "option"}
    names = set(seen.price)
    assert {"BTC", "BTC-PERPETUAL", "BTC_USDC", "SOL_USDC-PERPETUAL"} <= names
    assert any(n.startswith("SOL_USDC-") and n.endswith("-C") for n in names)
    # 4 expiries x 9 strikes x call/put per underlying
    for u, prefix in (("BTC", "BTC-"), ("SOL", "SOL_USDC-")):
        opts = [n for n in names if n.startswith(prefix) and n.count("-") == 3]
        assert len(opts) == 72, u
        assert len({n.split("-")[1] for n in opts}) == 4


def test_rolls_keep_the_stream_valid(roll_run: list[Event]) -> None:
    """Over 100 days every slot expires and is listed again; nothing is held across it."""
    seen = check_valid(roll_run)
    futures = {n for n in seen.price if seen.instrument(n).kind == "future"}
    assert len(futures) == 2 * len(UNDERLYINGS)  # the 90-day future rolled once
    btc_expiries = {
        seen.instrument(n).expiry_ms or 0
        for n in seen.price
        if n.startswith("BTC-") and n[-2] == "-"
    }
    assert len(btc_expiries) >= 100  # the daily slot, listed again every day
    assert max(btc_expiries) > START + 175 * 86_400_000  # the 90-day slot, listed again


def test_first_step_carries_the_whole_market() -> None:
    m = SimulatedMarket(start_ms=START)
    first = steps(m, START, 1)
    counts: dict[str, int] = defaultdict(int)
    for e in first:
        counts[type(e).__name__] += 1
    assert counts["InstrumentEvent"] == 2 * 72  # BTC and ETH options
    assert counts["PriceEvent"] == 3 * 4 + 3 * 72
    assert counts["AccountEvent"] == 4
    later = steps(m, START, 2)[len(first) :]
    assert sum(isinstance(e, PriceEvent) for e in later) == 3 * 4 + 3 * 18  # one slot rotates


# --- the model --------------------------------------------------------------------------


def _regime_index(spans: list[RegimeSpan], offsets: np.ndarray) -> np.ndarray:
    starts = np.array([s.start_ms for s in spans])
    out: np.ndarray = np.searchsorted(starts, offsets, side="right") - 1
    return out


def test_regime_schedule_changes_within_minutes() -> None:
    spans = SimulatedMarket(seed=7).regime_schedule(3_600_000)
    assert spans[0].start_ms == 0
    assert spans[0].regime is Regime.CALM
    assert spans[0].end_ms <= 5 * 60_000  # a live demo sees a change within 5 minutes
    assert spans[-1].end_ms >= 3_600_000
    for a, b in itertools.pairwise(spans):
        assert a.end_ms == b.start_ms
        assert a.regime != b.regime
    assert {s.regime for s in spans if s.end_ms <= 20 * 60_000} == set(Regime)
    for s in spans:
        assert s.end_ms % 1000 == 0
        if s.regime is Regime.VOLATILE:
            assert all(2.0 <= m <= 3.0 for m in s.vol_multiplier)
        elif s.regime is Regime.CALM:
            assert s.vol_multiplier == (1.0, 1.0, 1.0)
    assert spans == SimulatedMarket(seed=7, tick_interval_ms=50).regime_schedule(3_600_000)


def _index_returns(
    market: SimulatedMarket, events: list[Event]
) -> tuple[np.ndarray, np.ndarray, list[RegimeSpan]]:
    """Log returns (steps-1, n) of the index prices and each return's regime span index."""
    by_ts: dict[int, dict[str, float]] = defaultdict(dict)
    for e in events:
        if isinstance(e, PriceEvent) and e.instrument in UNDERLYINGS:
            by_ts[ts_of(e)][e.instrument] = e.price
    ts = np.array(sorted(by_ts))
    prices = np.array([[by_ts[t][u] for u in UNDERLYINGS] for t in ts.tolist()])
    r = np.diff(np.log(prices), axis=0)
    spans = market.regime_schedule(int(ts[-1] - ts[0]) + 1)
    # the return into step k is drawn in the regime in force at step k-1
    return r, _regime_index(spans, ts[:-1] - ts[0]), spans


def test_calm_index_returns_have_the_configured_vol_and_correlation(
    stats_run: tuple[SimulatedMarket, list[Event]],
) -> None:
    market, events = stats_run
    r, span_of, spans = _index_returns(market, events)
    assert len(r) == STATS_HOURS * 3600 - 1
    dt = 1000 / MS_PER_YEAR
    regime = np.array([spans[i].regime for i in span_of])
    mult = np.array([spans[i].vol_multiplier for i in span_of])

    calm = r[regime == Regime.CALM]
    n = len(calm)
    assert n > 10_000
    vol = calm.std(axis=0, ddof=1) / math.sqrt(dt)
    se = 1 / math.sqrt(2 * n)
    np.testing.assert_array_less(np.abs(vol / market.base_vols - 1), 4 * se)
    np.testing.assert_allclose(market.base_vols, [0.50, 0.65, 0.85])
    rho = market.base_correlation
    corr = np.corrcoef(calm.T)
    np.testing.assert_array_less(np.abs(corr - rho), 4 * (1 - rho**2) / math.sqrt(n) + 1e-12)

    # standardised by each episode's multiplier, the other regimes are unit-variance too
    for reg, target in ((Regime.VOLATILE, None), (Regime.CORRELATION_SPIKE, SPIKE_CORRELATION)):
        sel = regime == reg
        z = r[sel] / (market.base_vols * mult[sel] * math.sqrt(dt))
        m = int(sel.sum())
        assert m > 2_000
        np.testing.assert_array_less(np.abs(z.std(axis=0, ddof=1) - 1), 4 / math.sqrt(2 * m))
        c = np.corrcoef(z.T)
        want = rho if target is None else np.full_like(rho, target) + (1 - target) * np.eye(3)
        np.testing.assert_array_less(np.abs(c - want), 4 * (1 - want**2) / math.sqrt(m) + 1e-12)


def _option_rows(events: list[Event]) -> tuple[np.ndarray, ...]:
    seen = Replayed()
    rows = []
    index: dict[str, float] = {}
    for ev in events:
        if isinstance(ev, InstrumentEvent):
            seen.registry.register(from_event(ev))
        elif isinstance(ev, PriceEvent):
            inst = seen.instrument(ev.instrument)
            if inst.kind == "index":
                index[ev.instrument] = ev.price
            elif inst.kind == "option":
                assert inst.expiry_ms is not None
                assert inst.strike is not None
                assert ev.underlying_price is not None
                assert ev.iv is not None
                rows.append(
                    (
                        ev.price,
                        ev.underlying_price,
                        inst.strike,
                        (inst.expiry_ms - ts_of(ev)) / MS_PER_YEAR,
                        ev.iv,
                        bool(inst.is_call),
                        inst.inverse,
                        index[inst.underlying],
                    )
                )
    cols = list(zip(*rows, strict=True))
    return tuple(np.array(c) for c in cols)


@pytest.mark.parametrize("run", ["hour_run", "roll_run"])
def test_option_prices_are_black76_of_their_own_iv_and_forward(
    run: str, request: pytest.FixtureRequest
) -> None:
    price, fwd, strike, t, iv, call, inverse, spot = _option_rows(request.getfixturevalue(run))
    usd = np.maximum(black76_price(fwd, strike, t, iv, call), MIN_OPTION_PRICE_FRACTION * fwd)
    np.testing.assert_allclose(price, np.where(inverse, usd / fwd, usd), rtol=1e-9)
    assert inverse.any()
    assert (~inverse).any()
    # the forward carries the index at a modest annualised rate; iv is sane and smiles
    carry = np.log(fwd / spot) / t
    assert np.all(np.abs(carry) < 0.3)
    assert np.all((iv > 0.2) & (iv < 10.0))


def test_implied_vol_follows_the_regime_with_a_lag(hour_run: list[Event]) -> None:
    """Near-dated ATM IV is higher at the end of a volatile spell than before it."""
    market = SimulatedMarket(seed=7, tick_interval_ms=1000, start_ms=START)
    spans = market.regime_schedule(3_600_000)
    vol_span = next(s for s in spans if s.regime is Regime.VOLATILE)
    atm: dict[int, list[float]] = defaultdict(list)
    for ev in hour_run:
        if isinstance(ev, PriceEvent) and ev.iv and ev.instrument.startswith("BTC-"):
            k = float(ev.instrument.split("-")[2])
            assert ev.underlying_price is not None
            if abs(math.log(k / ev.underlying_price)) < 0.01:
                atm[ts_of(ev) - START].append(ev.iv)

    def mean_iv(lo: int, hi: int) -> float:
        return float(np.mean([v for t, vs in atm.items() if lo <= t < hi for v in vs]))

    before = mean_iv(vol_span.start_ms - 60_000, vol_span.start_ms)
    just_after = mean_iv(vol_span.start_ms, vol_span.start_ms + 10_000)
    late = mean_iv(vol_span.end_ms - 30_000, vol_span.end_ms)
    assert late > 1.5 * before
    assert just_after < before + 0.5 * (late - before)  # lagged, not a jump


# --- the book -----------------------------------------------------------------------------


def check_accounts(events: list[Event]) -> dict[str, list[tuple[int, float, float, float]]]:
    """Equity and margin recomputed from the emitted positions at the emitted prices.

    Cash is inferred once from the first account event; afterwards it changes only by
    trades at the last emitted mark. Returns ``account -> [(ts, equity, mm, im)]``.
    """
    seen = Replayed()
    cash: dict[str, float] = {}
    pos: dict[str, dict[str, float]] = defaultdict(dict)
    out: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
    checked = 0
    for ev in events:
        if isinstance(ev, InstrumentEvent):
            seen.registry.register(from_event(ev))
        elif isinstance(ev, PriceEvent):
            seen.price[ev.instrument] = ev
        elif isinstance(ev, PositionEvent):
            old = pos[ev.account].get(ev.instrument, 0.0)
            if ev.account in cash:
                cash[ev.account] -= (ev.quantity - old) * seen.value(ev.instrument)
            pos[ev.account][ev.instrument] = ev.quantity
        elif isinstance(ev, AccountEvent):
            held = pos[ev.account]
            mtm = sum(q * seen.value(n) for n, q in held.items())
            gross = sum(abs(q) * seen.value(n) for n, q in held.items())
            if ev.account not in cash:
                cash[ev.account] = ev.equity - mtm
                assert ev.equity == pytest.approx(1_000_000.0, rel=1e-12)
            assert ev.equity == pytest.approx(cash[ev.account] + mtm, abs=1e-9 * (gross + 1e6))
            mm = 0.0
            for n, q in held.items():
                inst, v = seen.instrument(n), seen.value(n)
                if inst.kind in ("perpetual", "future"):
                    mm += 0.005 * abs(q) * v
                elif inst.kind == "option" and q < 0:
                    fwd = seen.price[n].underlying_price
                    assert fwd is not None
                    mm += -q * (0.075 * fwd + v)
            assert ev.maintenance_margin == pytest.approx(mm, rel=1e-9, abs=1e-9)
            assert ev.initial_margin == pytest.approx(1.5 * mm, rel=1e-12, abs=1e-9)
            out[ev.account].append((ts_of(ev), ev.equity, mm, 1.5 * mm))
            checked += 1
    assert checked > 0
    return out


@pytest.mark.parametrize("run", ["hour_run", "roll_run"])
def test_account_equity_is_the_mark_to_market_of_emitted_positions(
    run: str, request: pytest.FixtureRequest
) -> None:
    events = request.getfixturevalue(run)
    accounts = check_accounts(events)
    assert set(accounts) == {"parity", "hedged", "options", "basis"}
    trades = [e for e in events if isinstance(e, PositionEvent) and ts_of(e) > START]
    assert {e.account for e in trades} >= {"hedged", "options"}  # hedges move during the run
    if run == "roll_run":
        assert "basis" in {e.account for e in trades}  # the future rolled


def test_accounts_report_about_every_second(hour_run: list[Event]) -> None:
    ts = [ts_of(e) for e in hour_run if isinstance(e, AccountEvent) and e.account == "options"]
    assert np.all(np.diff(ts) == 1000)
    assert len(ts) == 3600


def test_options_margin_thins_in_volatile_regimes_and_recovers_in_calm(
    stats_run: tuple[SimulatedMarket, list[Event]],
) -> None:
    market, events = stats_run
    spans = market.regime_schedule(STATS_HOURS * 3_600_000)
    util: dict[int, list[float]] = defaultdict(list)
    for e in events:
        if isinstance(e, AccountEvent) and e.account == "options":
            assert e.maintenance_margin is not None
            i = int(_regime_index(spans, np.array([ts_of(e) - START]))[0])
            util[i].append(e.maintenance_margin / e.equity)
    complete = [i for i in util if spans[i].end_ms <= STATS_HOURS * 3_600_000]
    volatile_peaks = [max(util[i]) for i in complete if spans[i].regime is Regime.VOLATILE]
    calm_ends = [util[i][-1] for i in complete if spans[i].regime is Regime.CALM]
    assert len(volatile_peaks) >= 10
    # Every volatile spell trips the default margin_utilization warning (60%): the demo
    # shows a margin alert firing and resolving each time.
    assert min(volatile_peaks) > 0.6
    assert max(volatile_peaks) < 0.9
    assert max(calm_ends) < 0.45


def test_parity_book_starts_at_equal_risk_and_drifts_with_regimes(hour_run: list[Event]) -> None:
    market = SimulatedMarket(seed=7, tick_interval_ms=1000, start_ms=START)
    first = [e for e in hour_run if ts_of(e) == START]
    price = {e.instrument: e.price for e in first if isinstance(e, PriceEvent)}
    x = np.zeros(3)
    for e in first:
        if isinstance(e, PositionEvent) and e.account == "parity":
            u = parse_name(e.instrument)
            assert u is not None
            x[UNDERLYINGS.index(u.underlying)] += e.quantity * price[u.underlying]
    assert x.sum() == pytest.approx(3_000_000, rel=1e-3)

    def shares(vols: np.ndarray, corr: np.ndarray) -> np.ndarray:
        cov = np.outer(vols, vols) * corr
        rc = x * (cov @ x)
        out: np.ndarray = rc / rc.sum()
        return out

    vols, rho = market.base_vols, market.base_correlation
    np.testing.assert_allclose(shares(vols, rho), 1 / 3, atol=2e-3)
    spans = market.regime_schedule(3_600_000)
    drift = max(
        np.abs(shares(vols * np.array(s.vol_multiplier), rho) - 1 / 3).max()
        for s in spans
        if s.regime is Regime.VOLATILE
    )
    assert drift > 0.05


def test_hedge_is_left_partial_and_restored(hour_run: list[Event]) -> None:
    held: dict[str, float] = {}
    ratios = []
    for e in hour_run:
        if isinstance(e, PositionEvent) and e.account == "hedged":
            held[e.instrument] = e.quantity
            if len(held) == 2:
                ratios.append(-held["BTC-PERPETUAL"] / held["BTC_USDC"])
    assert ratios[0] == 1.0
    assert 1.0 in ratios[1:]
    assert any(0.3 <= r <= 0.7 for r in ratios)


def test_options_book_is_short_strangles_delta_hedged(hour_run: list[Event]) -> None:
    held: dict[str, float] = {}
    for e in hour_run:
        if isinstance(e, PositionEvent) and e.account == "options":
            held[e.instrument] = e.quantity
    legs = {n: q for n, q in held.items() if n.count("-") == 3 and q != 0}
    assert {n.split("-")[0] for n in legs} == {"BTC", "ETH"}
    assert all(q < 0 for q in legs.values())
    assert {n[-1] for n in legs} == {"C", "P"}
    assert held["BTC-PERPETUAL"] != 0
    assert held["ETH-PERPETUAL"] != 0


# --- run() --------------------------------------------------------------------------------


async def test_realtime_run_delivers_paced_steps_and_stops() -> None:
    # The market's clock is the event loop's (epoch-shifted), the one asyncio.sleep wakes
    # on: pacing is checked exactly, however late a loaded machine wakes the loop.
    loop = asyncio.get_running_loop()
    shift = time.time() - loop.time()

    def clock() -> float:
        return shift + loop.time()

    market = SimulatedMarket(
        seed=3, tick_interval_ms=50, duration_ms=250, realtime=True, clock=clock
    )
    sink = ListSink(clock=clock)
    before = clock()
    await market.run(sink)
    ts = sorted({ts_of(e) for e in sink.events})
    assert len(ts) == 5
    assert np.all(np.diff(ts) == 50)
    assert ts[0] % 50 == 0
    assert before - 0.05 < ts[0] / 1000 <= sink.received_s[0]  # started now, floored to a tick
    # no event is delivered before the clock reaches its time
    for e, got in zip(sink.events, sink.received_s, strict=True):
        assert got >= ts_of(e) / 1000 - 1e-6
    assert sink.sources == {"simulated"}
    same = steps(SimulatedMarket(seed=3, tick_interval_ms=50, start_ms=ts[0]), ts[0], 5)
    assert [encode_event(e) for e in sink.events] == [encode_event(e) for e in same]
    st = market.status
    assert st.messages == len(sink.events)
    assert st.delivered
    assert not st.connected
    assert st.last_message_s is not None
    assert st.last_message_s >= before


@pytest.mark.parametrize(("duration", "n_steps"), [(10_000, 50), (10_100, 51), (0, 0)])
async def test_fast_run_with_duration_yields_exactly_its_steps(duration: int, n_steps: int) -> None:
    market = SimulatedMarket(
        tick_interval_ms=200, start_ms=START, realtime=False, duration_ms=duration
    )
    sink = ListSink()
    await market.run(sink)
    ts = sorted({ts_of(e) for e in sink.events})
    assert len(ts) == n_steps
    if n_steps:
        assert ts == [START + 200 * k for k in range(n_steps)]
    expected = steps(SimulatedMarket(tick_interval_ms=200, start_ms=START), START, n_steps)
    assert [encode_event(e) for e in sink.events] == [encode_event(e) for e in expected]


async def test_endless_fast_run_shares_the_loop_and_stops_when_cancelled() -> None:
    """realtime=False yields to the loop (another task runs meanwhile) and ends on cancel."""
    market = SimulatedMarket(start_ms=START, realtime=False)
    enough = asyncio.Event()

    class CountingSink(ListSink):
        async def put(self, event: Event, source: str) -> None:
            await super().put(event, source)
            if len(self.events) >= 5_000:
                enough.set()  # only seen by the test if run() yields to the loop

    sink = CountingSink()
    task = asyncio.create_task(market.run(sink), name="test.simulated")
    await asyncio.wait_for(enough.wait(), 30)
    assert market.status.connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not market.status.connected
    assert market.status.messages == len(sink.events)


async def test_a_realtime_run_times_its_live_ticks_not_its_history() -> None:
    """The demo's price lag (``status.price_lag``): every live price tick, none of the
    history a realtime run starts with (hours old on purpose)."""
    loop = asyncio.get_running_loop()
    shift = time.time() - loop.time()

    def clock() -> float:
        return shift + loop.time()

    market = SimulatedMarket(
        seed=3,
        tick_interval_ms=50,
        duration_ms=2_000,
        history_ms=1_500,
        realtime=True,
        clock=clock,
    )
    sink = ListSink(clock=clock)
    started_ms = clock() * 1000.0
    await market.run(sink)
    lag = market.status.price_lag
    assert lag is not None
    live = [e for e in sink.events if isinstance(e, PriceEvent) and e.ts >= started_ms]
    old = [e for e in sink.events if isinstance(e, PriceEvent) and e.ts < started_ms]
    assert len(live) > 10
    assert len(old) > 10
    # (a tick stamped in the microseconds between our clock read and run()'s is live to us
    # and history to it)
    assert len(live) - 1 <= lag.count <= len(live)
    late = [
        got - e.ts / 1000
        for e, got in zip(sink.events, sink.received_s, strict=True)
        if isinstance(e, PriceEvent) and e.ts >= started_ms
    ]
    assert 0.0 <= lag.total <= sum(late) + 1e-9  # timed just before the sink got each
