"""Warm restarts: an engine restored from a saved state goes on exactly as one that never
stopped; a damaged, foreign, stale or mismatched state file is reported and ignored."""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from monitor.config import Config, ConfigError, load_config
from monitor.engine.core import Engine, EngineSettings, SettingsChanged
from monitor.engine.evaluation import RiskSettings
from monitor.engine.state import (
    STATE_VERSION,
    RestoreResult,
    StateStore,
    decode_state,
    encode_state,
)
from monitor.model.alert import Transition
from monitor.model.events import (
    AccountEvent,
    CurrencyBalance,
    Event,
    PositionEvent,
    PriceEvent,
)
from monitor.quant.estimator import RollingEstimator
from monitor.quant.regime import RegimeBaseline
from monitor.rules.pack import rule_engine

T0 = 1_767_225_600_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=20_000,
    fast_halflife_ms=5_000,
    warmup_ms=5_000,
    max_gap_ms=10_000,
    eval_interval_ms=500,
    var_halflife_ms=60_000,
)
# The scenario pass runs at every evaluation, so its figures depend on nothing a restart
# forgets (it is recomputed, not saved).
RISK = RiskSettings(
    var_scenarios=200,
    scenario_interval_ms=500,
    recompute_interval_ms=500,
    regime_halflife_ms=30_000,
)
SPLIT_MS = T0 + 120_000
END_MS = T0 + 240_000


def market_events(seed: int = 7) -> list[Event]:
    """Three indices ticking out of step (BTC, ETH correlated; SOL silent for 15 s once, so
    it turns stale), a book of perpetuals and an option hedging BTC (closed shortly before
    the split), and an account whose margin utilisation crosses the alert thresholds and
    back, in time order."""
    rng = np.random.default_rng(seed)
    events: list[tuple[int, int, Event]] = []
    price = {"BTC": 90_000.0, "ETH": 3_000.0, "SOL": 150.0}
    vol = {"BTC": 0.002, "ETH": 0.003, "SOL": 0.004}
    for name in price:
        t = T0 + int(rng.integers(0, 700))
        while t < END_MS:
            if name == "SOL" and T0 + 60_000 <= t < T0 + 75_000:
                t += 700
                continue
            z = rng.standard_normal()
            price[name] *= math.exp(vol[name] * z)
            events.append((t, len(events), PriceEvent(t, name, price[name])))
            t += int(rng.integers(200, 1_500))
    opt = "BTC-27DEC26-100000-C"
    for k in range(0, 240, 5):
        t = T0 + k * 1_000 + 100
        events.append((t, len(events), PriceEvent(t, opt, 0.05, iv=0.55)))
        events.append((t, len(events), PriceEvent(t, "BTC-PERPETUAL", price["BTC"])))
        events.append((t, len(events), PriceEvent(t, "ETH-PERPETUAL", price["ETH"])))
    for t, acct, inst, q in (
        (T0 + 50, "a", "BTC-PERPETUAL", 3.0),
        (T0 + 60, "a", "ETH-PERPETUAL", -40.0),
        (T0 + 70, "a", opt, -5.0),
        (T0 + 80, "b", "ETH-PERPETUAL", 100.0),
        (T0 + 90_000, "a", "BTC-PERPETUAL", 2.5),
        (T0 + 150_000, "b", "ETH-PERPETUAL", 60.0),
        (T0 + 110_000, "a", opt, 0.0),  # the hedge is cut: hedge_offset pending at the split
    ):
        events.append((t, len(events), PositionEvent(t, acct, inst, q)))
    # Utilisation 0.3, then 0.9 from 100 s (firing after the rule's 10 s `for`, across the
    # split), back to 0.3 at 200 s (resolved).
    for t, mm in ((T0 + 100, 300_000.0), (T0 + 100_000, 900_000.0), (T0 + 200_000, 300_000.0)):
        events.append((t, len(events), AccountEvent(t, "b", 1_000_000.0, None, mm)))
    # A coin-margined account: its BTC collateral is held as exposure (BTC.collateral).
    for t, coin in ((T0 + 200, 10.0), (T0 + 130_000, 12.0)):
        cur = {"BTC": CurrencyBalance(coin, None, 1.0, coin)}
        events.append((t, len(events), AccountEvent(t, "c", coin * 90_000.0, None, 1e5, cur)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [e[2] for e in events]


def new_engine(sink: list[Transition]) -> Engine:
    eng = Engine(SETTINGS, risk=RISK, rules=rule_engine(Config().rules, {}))
    eng.set_alert_sink(tuple, sink.extend)
    return eng


def comparable(eng: Engine) -> dict[str, Any]:
    snap = eng.snapshot
    assert snap is not None
    report = snap.report()
    return msgspec.json.decode(msgspec.json.encode(report))  # type: ignore[no-any-return]


def test_restored_engine_equals_one_that_never_stopped() -> None:
    events = market_events()
    a = [e for e in events if (e.ts or 0) <= SPLIT_MS]
    b = [e for e in events if (e.ts or 0) > SPLIT_MS]
    assert len(a) > 300
    assert len(b) > 300

    whole_moves: list[Transition] = []
    whole = new_engine(whole_moves)
    whole.replay(a, "t")

    first_moves: list[Transition] = []
    first = new_engine(first_moves)
    first.replay(a, "t")
    blob = encode_state(first.state(), SPLIT_MS)
    loaded = decode_state(blob, SPLIT_MS + 5_000, 3_600_000)
    assert loaded.result is RestoreResult.RESTORED
    assert loaded.engine is not None
    restarted_moves: list[Transition] = []
    restarted = new_engine(restarted_moves)
    restarted.restore(loaded.engine)

    # Warm at once: the restored estimator's figures are the saved one's, bit for bit.
    np.testing.assert_array_equal(restarted.estimator.returns, first.estimator.returns)
    assert restarted.estimator.warm.all()
    for kw in ({}, {"fast": True}, {"var": True}):
        np.testing.assert_array_equal(
            restarted.estimator.covariance(**kw), first.estimator.covariance(**kw)
        )

    whole_moves.clear()
    whole.replay(b, "t")
    restarted.replay(b, "t")
    whole.evaluate(END_MS)
    restarted.evaluate(END_MS)

    for kw in ({}, {"fast": True}, {"var": True}):
        np.testing.assert_array_equal(
            restarted.estimator.covariance(**kw), whole.estimator.covariance(**kw)
        )
    np.testing.assert_array_equal(restarted.estimator.returns, whole.estimator.returns)
    np.testing.assert_array_equal(restarted.estimator.stale, whole.estimator.stale)
    assert comparable(restarted) == comparable(whole)
    # Everything the engine carries is the same (positions, accounts with their coin
    # figures, prices, clocks, estimator bytes, rule states), not only what the report shows.
    # (Compared encoded: NaN, an empty baseline, is not equal to itself.)
    enc = msgspec.msgpack.encode
    assert enc(restarted.state()) == enc(whole.state())
    assert next(acc for name, acc in whole.state()["accounts"] if name == "c")["currencies"]

    # The alerts: the same transitions with the same idempotency keys; the margin alert
    # that was firing before the split was not announced again, and resolved once.
    keys = [t.idempotency_key for t in restarted_moves]
    assert keys == [t.idempotency_key for t in whole_moves]
    margin = [t for t in first_moves if t.alert.rule == "margin_utilization"]
    assert [t.alert.state for t in margin] == ["pending", "firing"]
    after = [t for t in restarted_moves if t.alert.rule == "margin_utilization"]
    assert [(t.previous, t.alert.state) for t in after] == [("firing", "resolved")]
    assert after[0].alert.active_since_ms == margin[0].alert.active_since_ms
    # The hedge cut before the split goes on to fire: the rule's watch list was restored
    # with its pending alert (without it, the subject would vanish and the alert end).
    hedge = [(t.previous, t.alert.state) for t in restarted_moves if t.alert.rule == "hedge_offset"]
    assert hedge == [("pending", "firing")]
    assert [t.idempotency_key for t in restarted.snapshot.alert_history] == [  # type: ignore[union-attr]
        t.idempotency_key
        for t in whole.snapshot.alert_history  # type: ignore[union-attr]
    ]


def test_estimator_state_round_trip_is_exact() -> None:
    est = RollingEstimator(1_000, 20_000, 5_000, 3_000, var_halflife_ms=60_000, max_gap_ms=5_000)
    rng = np.random.default_rng(1)
    p = np.array([100.0, 50.0, 20.0])
    for k in range(40):
        p = p * np.exp(0.01 * rng.standard_normal(3))
        q = p.copy()
        if 10 <= k < 20:
            q[2] = np.nan
        est.sample(q[: 2 if k < 5 else 3], ages_ms=rng.uniform(0, 900, 2 if k < 5 else 3))
    data = msgspec.msgpack.decode(msgspec.msgpack.encode(est.state()))
    twin = RollingEstimator.from_state(data)
    for _ in range(10):
        p = p * np.exp(0.01 * rng.standard_normal(3))
        ages = rng.uniform(0, 900, 3)
        est.sample(p, ages_ms=ages)
        twin.sample(p, ages_ms=ages)
    for kw in ({}, {"fast": True}, {"var": True}):
        np.testing.assert_array_equal(twin.covariance(**kw), est.covariance(**kw))
    np.testing.assert_array_equal(twin.returns, est.returns)


def test_bad_component_states_are_refused() -> None:
    est = RollingEstimator(1_000, 20_000, 5_000, 3_000)
    est.sample([100.0, 10.0])
    est.sample([101.0, 10.1])
    good = est.state()
    short = dict(good, raw=dict(good["raw"], data=good["raw"]["data"][:-8]))
    with pytest.raises(ValueError, match="values"):
        RollingEstimator.from_state(short)
    with pytest.raises(ValueError, match="shape"):
        RollingEstimator.from_state(dict(good, n=3))
    with pytest.raises(ValueError, match="not an estimator"):
        RollingEstimator.from_state({"n": 2})
    with pytest.raises(ValueError, match="both"):
        RegimeBaseline.from_state({"halflife_ms": 10, "value": [1.0], "last_ms": None})


def test_restore_refuses_other_settings_and_leaves_the_engine_fresh() -> None:
    eng = Engine(SETTINGS, risk=RISK)
    eng.replay(market_events()[:200], "t")
    state = eng.state()
    other = Engine(EngineSettings(halflife_ms=30_000), risk=RISK)
    with pytest.raises(SettingsChanged):
        other.restore(state)
    broken = dict(state, positions=[["a", [[10_000, 1.0, T0]]]])
    fresh = Engine(SETTINGS, risk=RISK)
    with pytest.raises(ValueError, match="position"):
        fresh.restore(broken)
    assert len(fresh.registry) == 0
    assert fresh.estimator.n_assets == 0
    fresh.restore(state)  # still fresh: a good state is taken after a refused one
    assert fresh.estimator.n_assets == eng.estimator.n_assets


@functools.cache
def _state_blob() -> bytes:
    eng = Engine(SETTINGS, risk=RISK)
    eng.replay(market_events()[:200], "t")
    return encode_state(eng.state(), T0)


def _saved(tmp_path: Path) -> tuple[StateStore, bytes]:
    store = StateStore(tmp_path / "state")
    blob = _state_blob()
    store.save(blob)
    return store, blob


def test_store_writes_atomically_with_private_mode(tmp_path: Path) -> None:
    store, blob = _saved(tmp_path)
    assert store.path.read_bytes() == blob
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in store.directory.iterdir()) == ["riskmon.state"]
    loaded = store.load(T0 + 1_000, 60_000)
    assert loaded.result is RestoreResult.RESTORED
    assert loaded.saved_ms == T0


@pytest.mark.parametrize(
    ("damage", "result"),
    [
        (lambda b: b[: len(b) // 2], RestoreResult.CORRUPT),  # truncated
        (lambda b: b[:20], RestoreResult.CORRUPT),  # truncated inside the header
        (lambda b: b[:-1] + bytes([b[-1] ^ 1]), RestoreResult.CORRUPT),  # one bit flipped
        (lambda b: b"GARBAGE!" + b[8:], RestoreResult.CORRUPT),  # not ours
        (lambda b: b[:8] + (STATE_VERSION + 1).to_bytes(4, "big") + b[12:], RestoreResult.VERSION),
        (lambda b: b"", RestoreResult.CORRUPT),
    ],
)
def test_damaged_files_are_reported(tmp_path: Path, damage: Any, result: RestoreResult) -> None:
    store, blob = _saved(tmp_path)
    store.path.write_bytes(damage(blob))
    loaded = store.load(T0 + 1_000, 60_000)
    assert loaded.result is result
    assert loaded.engine is None
    assert loaded.detail


def test_age_limits(tmp_path: Path) -> None:
    store, _ = _saved(tmp_path)
    assert store.load(T0 + 60_001, 60_000).result is RestoreResult.TOO_OLD
    assert store.load(T0 + 60_000, 60_000).result is RestoreResult.RESTORED
    assert store.load(T0 - 3_600_000, 60_000).result is RestoreResult.FUTURE
    store.path.unlink()
    assert store.load(T0, 60_000).result is RestoreResult.ABSENT


def test_failed_write_keeps_the_previous_snapshot(tmp_path: Path) -> None:
    """A disk that fills up mid-write (ENOSPC from os.write): the error reaches the caller,
    the previous snapshot is intact and no temp file is left behind."""
    store, blob = _saved(tmp_path)
    calls = 0

    def full(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, os.strerror(28))
        return os.write(fd, bytes(data)[:100])

    failing = StateStore(store.directory, write=full)
    with pytest.raises(OSError, match="No space"):
        failing.save(blob + b"more")
    assert store.path.read_bytes() == blob
    assert sorted(p.name for p in store.directory.iterdir()) == ["riskmon.state"]


def test_state_directory_follows_systemd_unless_configured(tmp_path: Path) -> None:
    default = load_config(env={}).state
    assert default.directory({}) is None
    assert default.directory({"STATE_DIRECTORY": "/var/lib/riskmon:/var/lib/other"}) == Path(
        "/var/lib/riskmon/state"
    )
    path = tmp_path / "riskmon.toml"
    path.write_text('[state]\ndir = "/srv/riskmon"\ninterval = "5s"\nmax_age = "10m"\n')
    cfg = load_config(path, env={}).state
    assert cfg.directory({"STATE_DIRECTORY": "/var/lib/riskmon"}) == Path("/srv/riskmon")
    assert (cfg.interval, cfg.max_age) == (5_000, 600_000)
    off = load_config(env={"RISKMON_STATE__ENABLED": "false", "STATE_DIRECTORY": "/x"}).state
    assert off.directory({"STATE_DIRECTORY": "/x"}) is None
    with pytest.raises(ConfigError, match=r"state\.interval: must be at least 1s"):
        load_config(env={"RISKMON_STATE__INTERVAL": "100ms"})
    with pytest.raises(ConfigError, match=r"state\.dir"):
        load_config(env={"RISKMON_STATE__DIR": " "})


JUNK: tuple[Any, ...] = (None, "x", 1e308, [[1, 2, 3]], {"dtype": "<f8"})


@pytest.mark.parametrize("junk", JUNK, ids=repr)
def test_any_damaged_entry_is_refused_and_the_engine_stays_fresh(junk: Any) -> None:
    """Each entry of a well-formed file replaced by junk (as a file with a valid checksum
    but foreign content would carry): refused with ValueError, never another exception,
    and the engine is left as it was: fresh, then restorable from a good state."""
    source = new_engine([])
    source.replay(market_events()[:150], "t")
    good = msgspec.msgpack.decode(msgspec.msgpack.encode(source.state()))
    for key in good:
        bad = dict(good, **{key: junk})
        eng = new_engine([])
        try:
            eng.restore(bad)
        except ValueError:
            assert len(eng.registry) == 0
            assert eng.estimator.n_assets == 0
            eng.restore(good)
        assert eng.estimator.n_assets == source.estimator.n_assets, key


def test_readme_reliability_section_names_tests_that_exist() -> None:
    """Every promise in the README's "Reliability" section is backed by a named test: each
    name must exist, so a renamed or deleted test fails here instead of leaving a promise
    without proof."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Reliability") : text.index("## Code map")]
    named = 0
    for row in section.splitlines():
        for file, names in re.findall(r"`(test_\w+\.py)` \(([^)]*)\)", row):
            source = (root / "tests" / file).read_text(encoding="utf-8")
            for name in re.findall(r"`(test_\w+)`", names):
                assert f"def {name}(" in source, f"{file}::{name}"
                named += 1
        for file, name in re.findall(r"`(test_\w+\.py)::(\w+)`", row):
            assert f"def {name}(" in (root / "tests" / file).read_text(encoding="utf-8"), name
            named += 1
    assert named >= 30
