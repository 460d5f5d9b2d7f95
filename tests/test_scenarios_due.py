"""Scenario figures follow the book: a change makes them due at once, and a replay's
final report computes them on its final state (issue 12, item 2)."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import msgspec
import pytest
from scipy import optimize, stats

from monitor.engine.core import Engine, EngineSettings
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent, iso_ms

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
EXPIRY_MS = int(dt.datetime(2026, 3, 27, 8, tzinfo=dt.UTC).timestamp() * 1000)
YEAR_MS = 365 * 86_400_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=20_000,
    fast_halflife_ms=5_000,
    warmup_ms=5_000,
    max_gap_ms=60_000,
    eval_interval_ms=250,
)
PUT = "BTC-27MAR26-80000-P"
EQUITY, MM = 1_000_000.0, 100_000.0
PERP_QTY, PUT_QTY = 5.0, -30.0
IV, FWD = 0.6, 90_900.0


def _recording(last_ms: int) -> list[Event]:
    """BTC and its perpetual tick every second; the account is long the perpetual and
    short puts whose first marks come in the recording's last second."""
    events: list[Event] = [
        AccountEvent(T0, "a", EQUITY, 2 * MM, MM),
        PositionEvent(T0, "a", "BTC-PERPETUAL", PERP_QTY),
        PositionEvent(T0, "a", PUT, PUT_QTY),
    ]
    for k in range(last_ms // 1_000 + 1):
        ts = T0 + min(1_000 * k, last_ms)
        px = 90_000.0 * (1.0 + 0.0005 * math.sin(k))
        events += [PriceEvent(ts, "BTC", px), PriceEvent(ts, "BTC-PERPETUAL", px)]
    put_px = _b76(FWD, 80_000.0, (EXPIRY_MS - T0 - last_ms) / YEAR_MS, IV)
    events.append(PriceEvent(T0 + last_ms, PUT, put_px, IV, FWD))
    return events


def _b76(f: float, k: float, t: float, vol: float) -> float:
    """Black-76 put, per unit."""
    sd = vol * math.sqrt(t)
    d1 = (math.log(f / k) + 0.5 * sd * sd) / sd
    return float(k * stats.norm.cdf(-(d1 - sd)) - f * stats.norm.cdf(-d1))


def _distance_down(perp_px: float, as_of_ms: int) -> float:
    """The fall at which equity + P&L reaches the venue's maintenance margin, IV held."""
    t = (EXPIRY_MS - as_of_ms) / YEAR_MS
    put0 = _b76(FWD, 80_000.0, t, IV)

    def headroom(m: float) -> float:
        pnl = PERP_QTY * perp_px * -m + PUT_QTY * (_b76(FWD * (1 - m), 80_000.0, t, IV) - put0)
        return EQUITY + pnl - MM

    return float(optimize.brentq(headroom, 0.0, 0.9, xtol=1e-12))


def test_replay_final_report_includes_options_priced_in_the_last_second(tmp_path: Path) -> None:
    last_ms = 59_700  # not on the scenario clock (every 5 s) nor the evaluation grid
    path = tmp_path / "day.jsonl"
    path.write_bytes(b"\n".join(msgspec.json.encode(e) for e in _recording(last_ms)) + b"\n")
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "replay", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    as_of = T0 + last_ms
    margin = report["accounts"]["a"]["margin"]
    assert margin["scenarios_as_of"] == iso_ms(as_of)
    dist = margin["distance_to_call"]
    # The perpetual alone would need a fall of (1M - 100k) / 450k = 200%: none within 90%.
    # With the short puts priced, a fall reaches the call well before.
    perp_px = 90_000.0 * (1.0 + 0.0005 * math.sin(last_ms // 1_000))  # the last tick
    want = _distance_down(perp_px, as_of)
    assert want < 0.9
    assert dist["reachable"]["down"] is True
    assert dist["down"] == pytest.approx(want, abs=1e-7)
    assert dist["recomputed"]["as_of"] == iso_ms(as_of)


def _as_of(snap_margin: dict[str, object]) -> object:
    return snap_margin["scenarios_as_of"]


def test_position_change_makes_the_pass_due_at_once() -> None:
    """Replay (inline): the evaluation right after a change has figures as of itself;
    one with nothing changed keeps the last pass's (the clock is 5 s)."""
    eng = Engine(SETTINGS)
    eng.replay(_recording(10_000), "t")
    first = eng.evaluate(T0 + 10_000).accounts["a"].extra["margin"]
    quiet = eng.evaluate(T0 + 10_250).accounts["a"].extra["margin"]
    assert _as_of(quiet) == _as_of(first) == iso_ms(T0 + 10_000)
    eng.apply(PositionEvent(T0 + 10_260, "a", PUT, PUT_QTY), "t")  # a snapshot, unchanged
    same = eng.evaluate(T0 + 10_270).accounts["a"].extra["margin"]
    assert _as_of(same) == iso_ms(T0 + 10_000)
    eng.apply(PositionEvent(T0 + 10_300, "a", PUT, 2 * PUT_QTY), "t")
    after = eng.evaluate(T0 + 10_500).accounts["a"].extra["margin"]  # changed: due
    assert _as_of(after) == iso_ms(T0 + 10_500)
    assert after["distance_to_call"]["down"] < first["distance_to_call"]["down"]
    eng.apply(AccountEvent(T0 + 10_600, "a", EQUITY / 2, 2 * MM, MM), "t")
    assert _as_of(eng.evaluate(T0 + 10_750).accounts["a"].extra["margin"]) == iso_ms(T0 + 10_750)


class _HeldExecutor(Executor):
    """Runs a submitted pass only when told to: "in flight" for as long as a test wants."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Future[Any], Callable[[], Any]]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        self.jobs.append((fut, lambda: fn(*args, **kwargs)))
        return fut

    def run(self) -> int:
        jobs, self.jobs = self.jobs, []
        for fut, job in jobs:
            fut.set_result(job())
        return len(jobs)


def test_live_change_during_a_pass_runs_the_next_one_when_it_lands() -> None:
    pool = _HeldExecutor()
    eng = Engine(SETTINGS, scenario_executor=pool)
    eng.replay(_recording(10_000), "t")
    pool.run()
    t1 = T0 + 10_000
    eng.evaluate(t1)  # adopts the replay's pass; the book changed since: submits another
    assert pool.jobs
    eng.apply(PositionEvent(t1 + 100, "a", PUT, 2 * PUT_QTY), "t")
    eng.evaluate(t1 + 250)  # due, but a pass is in flight: none submitted
    assert len(pool.jobs) == 1
    assert pool.run() == 1
    eng.evaluate(t1 + 500)  # adopts it and starts the one the change made due
    assert pool.run() == 1  # (on the 5 s clock none would be due before t1 + 5 s)
    margin = eng.evaluate(t1 + 750).accounts["a"].extra["margin"]
    assert margin["scenarios_as_of"] == iso_ms(t1 + 500)
    want = Engine(SETTINGS)
    want.replay(_recording(10_000), "t")
    want.apply(PositionEvent(t1 + 100, "a", PUT, 2 * PUT_QTY), "t")
    sync = want.evaluate(t1 + 500).accounts["a"].extra["margin"]
    assert margin["distance_to_call"] == sync["distance_to_call"]


def test_a_held_options_first_price_in_a_run_of_ticks_makes_the_pass_due() -> None:
    """Replay's column-wise path (a run of 16 or more ticks) sees a held option's first
    price as the one-by-one path does: the next evaluation runs the pass."""
    eng = Engine(SETTINGS)
    events = _recording(10_000)
    eng.replay(events[:-1], "t")  # everything but the put's first mark
    before = eng.evaluate(T0 + 10_000).accounts["a"].extra["margin"]
    assert _as_of(before) == iso_ms(T0 + 5_750)  # on its 5 s clock: next due at 10.75 s
    run: list[Event] = []
    for k in range(20):  # 40 ticks, the put's first mark in the middle
        ts = T0 + 10_010 + 10 * k
        run += [PriceEvent(ts, "BTC", 90_000.0), PriceEvent(ts, "BTC-PERPETUAL", 90_000.0)]
        if k == 10:
            put = events[-1]
            assert isinstance(put, PriceEvent)
            run.append(PriceEvent(ts, PUT, put.price, IV, FWD))
    assert not eng.replay(run, "t")
    after = eng.evaluate(T0 + 10_250).accounts["a"].extra["margin"]
    assert _as_of(after) == iso_ms(T0 + 10_250)  # due at once, not 5 s later


def test_a_held_options_first_price_after_a_restart_makes_the_pass_due() -> None:
    """The engine restored from a saved state still knows which held instruments have no
    price yet: the first one after the restart makes the pass due at once."""
    saved = Engine(SETTINGS)
    events = _recording(10_000)
    saved.replay(events[:-1], "t")  # everything but the put's first mark
    before = saved.evaluate(T0 + 10_000).accounts["a"].extra["margin"]
    assert _as_of(before) == iso_ms(T0 + 5_750)  # on its 5 s clock: next due at 10.75 s
    eng = Engine(SETTINGS)
    eng.restore(msgspec.msgpack.decode(msgspec.msgpack.encode(saved.state())))
    first = eng.evaluate(T0 + 10_000).accounts["a"].extra["margin"]  # the restart's own pass
    assert _as_of(first) == iso_ms(T0 + 10_000)
    put = events[-1]
    assert isinstance(put, PriceEvent)
    eng.apply(PriceEvent(T0 + 10_010, PUT, put.price, IV, FWD), "t")
    after = eng.evaluate(T0 + 10_250).accounts["a"].extra["margin"]
    assert _as_of(after) == iso_ms(T0 + 10_250)  # due at once, not 5 s later


def test_an_account_update_makes_the_pass_due_but_the_model_distance_keeps_its_clock() -> None:
    """A venue's account update (equity, margins) is due at once for the scenario figures;
    riskmon's model-margin distance (the slow part) waits for ``recompute_interval`` unless
    positions changed. Venues send account updates every second or so: recomputing it at
    each kept a core busy on a large book."""
    eng = Engine(SETTINGS)  # margin.recompute_interval: 30 s
    eng.replay(_recording(10_000), "t")
    first = eng.evaluate(T0 + 10_000).accounts["a"].extra["margin"]
    recomputed_at = first["distance_to_call"]["recomputed"]["as_of"]
    assert recomputed_at == iso_ms(T0 + 10_000)
    eng.apply(AccountEvent(T0 + 10_600, "a", EQUITY / 2, 2 * MM, MM), "t")
    after = eng.evaluate(T0 + 10_750).accounts["a"].extra["margin"]
    assert _as_of(after) == iso_ms(T0 + 10_750)  # the pass ran: the venue-MM distance moved
    assert after["distance_to_call"]["down"] < first["distance_to_call"]["down"]
    assert after["distance_to_call"]["recomputed"]["as_of"] == recomputed_at  # its clock
    eng.apply(PositionEvent(T0 + 10_800, "a", PUT, 2 * PUT_QTY), "t")  # positions: at once
    moved = eng.evaluate(T0 + 11_000).accounts["a"].extra["margin"]
    assert moved["distance_to_call"]["recomputed"]["as_of"] == iso_ms(T0 + 11_000)
    eng.apply(AccountEvent(T0 + 41_100, "a", EQUITY / 2, 2 * MM, MM), "t")
    late = eng.evaluate(T0 + 41_250).accounts["a"].extra["margin"]  # 30 s later: its clock
    assert late["distance_to_call"]["recomputed"]["as_of"] == iso_ms(T0 + 41_250)


def test_a_fill_recomputes_that_accounts_model_distance_alone() -> None:
    """A position change recomputes the model-margin distance of its account only, on that
    account's positions (as a pass recomputing every account finds it); the other account
    keeps its figure and its ``as_of`` until the clock."""
    rec = _recording(10_000)
    two = [
        *rec[:3],  # account "a" at T0, then "b", then the ticks
        AccountEvent(T0, "b", EQUITY, 2 * MM, MM),
        PositionEvent(T0, "b", "BTC-PERPETUAL", -PERP_QTY),
        PositionEvent(T0, "b", PUT, PUT_QTY / 3),
        *rec[3:],
    ]
    fill = PositionEvent(T0 + 10_600, "b", PUT, 2 * PUT_QTY)  # the second account
    eng = Engine(SETTINGS)
    eng.replay(two, "t")
    first = eng.evaluate(T0 + 10_000).accounts
    eng.apply(fill, "t")
    after = eng.evaluate(T0 + 10_750).accounts

    def recomputed(accounts: Any, name: str) -> dict[str, Any]:
        out: dict[str, Any] = accounts[name].extra["margin"]["distance_to_call"]["recomputed"]
        return out

    assert recomputed(first, "a")["as_of"] == iso_ms(T0 + 10_000)
    assert recomputed(after, "a") == recomputed(first, "a")  # kept, with its as_of
    assert recomputed(after, "b")["as_of"] == iso_ms(T0 + 10_750)
    # Every account recomputed at the same moment: an engine fed the same events whose
    # evaluation recomputes all (a replay's final report).
    whole = Engine(SETTINGS)
    whole.replay([*two, fill], "t")
    full = whole.evaluate(T0 + 10_750, scenarios=True).accounts
    got, want = recomputed(after, "b"), recomputed(full, "b")
    assert want["as_of"] == iso_ms(T0 + 10_750)
    for side in ("down", "up"):
        assert (got[side] is None) == (want[side] is None)
        if want[side] is not None:
            assert got[side] == pytest.approx(want[side], abs=1e-6)
    assert got["reachable"] == want["reachable"]
    assert got["down"] != recomputed(first, "b")["down"]  # the fill moved it
