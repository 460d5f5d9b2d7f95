"""The batched price path (``Engine.replay`` / ``Engine.replay_prices``) against one by one.

The reference applies each event through the public ``Engine.apply`` with
``Engine.evaluate_due`` before it, as the live daemon does. Random tick streams (several
instruments: indices, a perpetual, an option, an index that only appears mid-stream, a name
that does not parse; ticks out of order, jumps beyond ``max_tick_move``, outages longer than
``max_gap``; optional IV, forward and venue Greeks) must leave both engines in the same
state: prices, estimator, quarantined ticks, clocks, counters, the same rejections with the
same numbers, and the same state seen by every evaluation at the same clock times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import monitor.engine.core as core
from monitor.engine.core import Engine, EngineSettings
from monitor.model.events import (
    Event,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
    VenueGreeks,
)
from monitor.model.snapshot import RiskSnapshot

T0 = 1_767_225_600_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=10_000,
    fast_halflife_ms=2_000,
    warmup_ms=3_000,
    max_gap_ms=8_000,
    eval_interval_ms=700,
    max_tick_move=0.5,
)
#: index, index, perpetual (guarded), option (not guarded), a late index, a bad name
NAMES = ("BTC", "ETH", "BTC-PERPETUAL", "BTC-27DEC26-60000-C", "SOL", "NOT A NAME")
OPTION = 3


class Probe(Engine):
    """Records what every evaluation sees instead of evaluating (the evaluation itself is
    the same code on both paths; what must match is the state it is handed and when)."""

    def __init__(self, s: EngineSettings) -> None:
        super().__init__(s)
        self.seen: list[bytes] = []

    def evaluate(self, as_of_ms: int, *, scenarios: bool = False) -> RiskSnapshot:
        n = len(self.registry)
        self.seen.append(
            msgspec.msgpack.encode(
                [
                    as_of_ms,
                    [i.name for i in self.registry.instruments],
                    self._price[:n].tobytes(),
                    self._price_ts[:n].tobytes(),
                    self._iv[:n].tobytes(),
                    self._fwd[:n].tobytes(),
                    self._venue_greeks[:n].tobytes(),
                    self.estimator.state(),
                ]
            )
        )
        return None  # type: ignore[return-value]


def one_by_one(eng: Engine, events: Sequence[Event]) -> list[tuple[int, Reason]]:
    out = []
    for k, ev in enumerate(events):
        if ev.ts is not None and ev.ts > eng.next_evaluation_ms:
            eng.evaluate_due(ev.ts)
        try:
            eng.apply(ev, "t")
        except Rejected as rej:
            eng.reject("t", rej)
            out.append((k, rej.reason))
    return out


def fingerprint(eng: Engine) -> bytes:
    state = eng.state()
    return msgspec.msgpack.encode(
        [state, sorted(eng.stats.accepted.items()), sorted(eng.stats.rejected.items())]
    )


def make_stream(
    seed: int, n: int, p_back: float, p_jump: float, p_extra: float, p_position: float
) -> list[Event]:
    """``n`` events: ``p_back`` of ticks older than the last, ``p_jump`` moving beyond
    ``max_tick_move``, ``p_extra`` of option ticks with IV, forward or Greeks,
    ``p_position`` position events between them, and now and then an outage."""
    rng = np.random.default_rng(seed)
    price = {name: 100.0 * (k + 1) for k, name in enumerate(NAMES)}
    ts = T0 + int(rng.integers(0, 1000))
    events: list[Event] = []
    for _ in range(n):
        u = rng.random()
        if u < 0.004:
            ts += 12_000  # an outage longer than max_gap
        elif u < 0.004 + p_back:
            ts -= int(rng.integers(1, 3_000))  # an old tick (often out of order)
        else:
            ts += int(rng.choice([0, 1, 50, 333, 700, 1000, 1400]))
        if rng.random() < p_position:
            events.append(PositionEvent(ts, "acc", "BTC-PERPETUAL", float(rng.integers(-3, 4))))
            continue
        k = int(rng.choice(len(NAMES), p=[0.3, 0.2, 0.2, 0.2, 0.08, 0.02]))
        if NAMES[k] == "SOL" and ts < T0 + 20_000:
            k = 0
        name = NAMES[k]
        move = math.exp(rng.normal(0.0, 0.02))
        if rng.random() < p_jump:
            move = float(rng.choice([3.0, 0.3, 1.6]))
        price[name] *= move
        iv = fwd = None
        greeks = None
        if k == OPTION and rng.random() < p_extra:
            iv = float(rng.uniform(0.3, 1.2)) if rng.random() < 0.8 else None
            fwd = price["BTC"] * 1.01 if rng.random() < 0.8 else None
            if rng.random() < 0.5:
                greeks = VenueGreeks(float(rng.uniform(0, 1)), None, float(rng.uniform(0, 9)))
        events.append(PriceEvent(ts, name, price[name], iv, fwd, greeks))
    return events


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    return make_stream(
        draw(st.integers(0, 2**32 - 1)),
        draw(st.integers(1, 400)),
        draw(st.sampled_from([0.0, 0.02, 0.2])),
        draw(st.sampled_from([0.0, 0.02, 0.2])),
        draw(st.sampled_from([0.0, 0.5, 1.0])),
        draw(st.sampled_from([0.0, 0.01])),
    )


def _check_equivalent(events: list[Event], replay: Any) -> None:
    ref = Probe(SETTINGS)
    expected = one_by_one(ref, events)
    eng = Probe(SETTINGS)
    got = replay(eng, events)
    assert got == expected
    assert eng.seen == ref.seen
    assert fingerprint(eng) == fingerprint(ref)


def _via_replay(eng: Engine, events: list[Event]) -> list[tuple[int, Reason]]:
    return [(k, rej.reason) for k, rej in eng.replay(events, "t")]


def _via_columns(eng: Engine, events: list[Event]) -> list[tuple[int, Reason]]:
    """Prices column-wise; the positions between them one by one, in order."""
    out: list[tuple[int, Reason]] = []
    k = 0
    while k < len(events):
        if type(events[k]) is not PriceEvent:
            out += [(k, r.reason) for _, r in eng.replay(events[k : k + 1], "t")]
            k += 1
            continue
        end = k
        while end < len(events) and type(events[end]) is PriceEvent:
            end += 1
        ticks: list[PriceEvent] = events[k:end]  # type: ignore[assignment]
        names = sorted({t.instrument for t in ticks}, reverse=True)  # not first-seen order
        nan = math.nan
        has_greeks = np.array([t.greeks is not None for t in ticks])
        greeks = np.array(
            [
                (nan,) * 4
                if t.greeks is None
                else (t.greeks.delta, t.greeks.gamma, t.greeks.vega, t.greeks.theta)
                for t in ticks
            ],
            dtype=np.float64,
        )
        rej = eng.replay_prices(
            names,
            np.array([names.index(t.instrument) for t in ticks], dtype=np.int32),
            np.array([t.ts for t in ticks], dtype=np.int64),
            np.array([t.price for t in ticks]),
            "t",
            iv=np.array([nan if t.iv is None else t.iv for t in ticks]),
            forward=np.array(
                [nan if t.underlying_price is None else t.underlying_price for t in ticks]
            ),
            greeks=greeks,
            has_greeks=has_greeks,
        )
        out += [(k + r, x.reason) for r, x in rej]
        k = end
    return out


@pytest.fixture(params=["default", "small-windows-dense", "small-windows-sparse"])
def small_windows(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small windows: a stream crosses several windows and their re-checks; dense: clean
    rows are always written segment by segment with numpy, sparse: always one by one."""
    if request.param != "default":
        monkeypatch.setattr(core, "_WINDOW", 32)
        monkeypatch.setattr(core, "_MIN_WINDOW", 4)
        monkeypatch.setattr(core, "_MIN_RUN", 2)
        monkeypatch.setattr(core, "_DENSE", 0 if request.param.endswith("dense") else 10**9)
    return str(request.param)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=streams())
def test_replay_equals_one_by_one(events: list[Event], small_windows: str) -> None:
    _check_equivalent(events, _via_replay)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=streams())
def test_replay_prices_equals_one_by_one(events: list[Event], small_windows: str) -> None:
    _check_equivalent(events, _via_columns)


def test_streams_exercise_every_branch() -> None:
    """The generator is not vacuous: its streams hit each rejection, the fast path and the
    one-by-one path, a restart of the grid, and mixed optional values."""
    reasons: set[Reason] = set()
    gaps = samples = 0
    for seed in range(20):
        eng = Probe(SETTINGS)
        reasons |= {r for _, r in one_by_one(eng, make_stream(seed, 300, 0.2, 0.2, 0.5, 0.01))}
        gaps += eng.stats.gaps
        samples += eng.stats.samples
    assert {Reason.OUT_OF_ORDER, Reason.QUARANTINED, Reason.UNKNOWN_INSTRUMENT} <= reasons
    assert gaps > 0
    assert samples > 0


def test_real_evaluations_at_the_same_times() -> None:
    """With the real evaluator: the same snapshots (clock, sequence, assets) both ways."""
    events = make_stream(7, 600, 0.05, 0.05, 0.5, 0.01)
    snaps: list[list[RiskSnapshot]] = []
    for path in ("one", "batch"):
        eng = Engine(SETTINGS)
        seen: list[RiskSnapshot] = []
        eng.set_evaluation_observer(lambda _s, e=eng, out=seen: out.append(e.snapshot))  # type: ignore[misc]
        if path == "one":
            one_by_one(eng, events)
        else:
            eng.replay(events, "t")
        snaps.append(seen)
    one, batch = snaps
    assert len(one) > 20
    assert [(s.as_of_ms, s.seq) for s in batch] == [(s.as_of_ms, s.seq) for s in one]
    assert [msgspec.json.encode(s.report()["assets"]) for s in batch] == [
        msgspec.json.encode(s.report()["assets"]) for s in one
    ]


def _parquet(path: Any, rows: list[dict[str, Any]]) -> None:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    from monitor.engine.record import PARQUET_SCHEMA

    table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
    pq.write_table(table, path, row_group_size=7)


def test_parquet_columns_read_as_the_events_do(tmp_path: Any) -> None:
    """``columns=True`` gives back, in order, exactly the events and rejections (with their
    row numbers) of the event reader, and the engine refusal of a tick names its row."""
    from connectors.replay import PriceTicks, feed, iter_batches

    rows: list[dict[str, Any]] = []
    for k in range(60):
        rows.append({"type": "price", "ts": T0 + 1000 * k, "instrument": "BTC", "price": 100.0 + k})
        if k % 9 == 4:
            rows.append({"type": "price", "ts": T0 + 1000 * k, "instrument": "ETH", "price": -1.0})
        if k % 11 == 5:
            rows.append(
                {
                    "type": "position",
                    "ts": T0 + 1000 * k,
                    "account": "a",
                    "instrument": "BTC-PERPETUAL",
                    "quantity": 1.0,
                }
            )
        if k % 13 == 6:
            rows.append(
                {
                    "type": "price",
                    "ts": T0 + 1000 * k,
                    "instrument": "X-27DEC26-1-C",
                    "price": 2.0,
                    "iv": 0.5,
                    "underlying_price": 101.0,
                }
            )
    rows.append({"type": "price", "ts": T0, "instrument": "BTC", "price": 50.0})  # out of order
    path = tmp_path / "r.parquet"
    _parquet(path, rows)
    for chunk_rows in (5, 16, 1000):
        plain = list(iter_batches(path, chunk_rows=chunk_rows))
        cols = list(iter_batches(path, chunk_rows=chunk_rows, columns=True))
        assert [(n, r.reason, r.detail) for b in cols for n, r in b.rejections] == [
            (n, r.reason, r.detail) for b in plain for n, r in b.rejections
        ]
        flat = []
        for b in cols:
            for _, run in b.runs():
                flat += run.events() if isinstance(run, PriceTicks) else run
        assert flat == [e for b in plain for e in b.events]
        assert any(b.ticks is not None for b in cols)
    refused = []
    eng = Engine(SETTINGS)
    for b in iter_batches(path, chunk_rows=16, columns=True):
        refused += [(b.number_of(k), r.reason) for k, r in feed(eng, b, "t")]
    assert refused == [(len(rows), Reason.OUT_OF_ORDER)]
    assert rows[len(rows) - 1]["price"] == 50.0


def test_replay_cli_names_the_row_and_line_of_a_refused_tick(tmp_path: Any) -> None:
    """``riskmon replay`` logs a tick the engine refuses with its row (Parquet) or line."""
    import subprocess
    import sys

    from monitor.model.events import encode_event

    evs = [PriceEvent(T0 + 100 * k, "BTC", 100.0 + k % 3) for k in range(200)]
    evs.insert(150, PriceEvent(T0, "BTC", 100.0))  # out of order, line/row 151
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_bytes(b"".join(encode_event(e) + b"\n" for e in evs))
    pq_path = tmp_path / "r.parquet"
    _parquet(
        pq_path,
        [{"type": "price", "ts": e.ts, "instrument": e.instrument, "price": e.price} for e in evs],
    )
    for path, where in ((jsonl, "line 151"), (pq_path, "row 151")):
        out = subprocess.run(
            [sys.executable, "-m", "monitor", "replay", str(path), "--report", "json"],
            capture_output=True,
            text=True,
            check=True,
            env={"RISKMON_LOG__FORMAT": "text", "PATH": "/usr/bin:/bin"},
        )
        assert f"{where}: BTC tick at" in out.stderr
        assert '"price": 101.0' in out.stdout or '"price": 101' in out.stdout
