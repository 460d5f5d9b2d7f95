"""Regression tests for what broke when riskmon was tried as a new user would.

One test (or a few) per finding, named after it. Expected values come from the test's own
arithmetic (closed forms, a plain-Python EWMA), never from the code under test.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from connectors.replay import iter_batches
from monitor.config import Config, ConfigError, load_config
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.record import PARQUET_SCHEMA
from monitor.model.events import (
    AccountEvent,
    Event,
    EventDecoder,
    PositionEvent,
    PriceEvent,
    Reason,
    Rejected,
)

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_767_225_600_000
SETTINGS = EngineSettings(
    sample_interval_ms=1_000,
    halflife_ms=60_000,
    fast_halflife_ms=10_000,
    warmup_ms=20_000,
    max_gap_ms=60_000,
    eval_interval_ms=250,
)


def _riskmon(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "monitor", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def _walk(n: int, start: float = 90_000.0, step: float = 0.001) -> list[float]:
    """A deterministic zig-zag walk: every move well inside any tick bound."""
    out, p = [], start
    for k in range(n):
        p *= math.exp(step * math.sin(0.7 * k + 0.3))
        out.append(p)
    return out


def _jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return path


# --- 1. out-of-order events --------------------------------------------------------------


def test_hardening_out_of_order_tick_dropped_and_counted() -> None:
    eng = Engine(SETTINGS)
    rejected = eng.replay(
        [
            PriceEvent(T0 + 1_000, "BTC", 90_000.0),
            PriceEvent(T0 + 2_000, "BTC", 91_000.0),
            PriceEvent(T0 + 2_000 - 360_000, "BTC", 45_000.0),  # 6 minutes in the past
        ],
        "t",
    )
    assert [(k, r.reason) for k, r in rejected] == [(2, Reason.OUT_OF_ORDER)]
    assert eng.stats.rejected[("t", "out_of_order")] == 1
    assert eng.evaluate(T0 + 2_000).assets.price.tolist() == [91_000.0]


def test_hardening_out_of_order_snapshots_applied_and_clock_never_goes_back() -> None:
    eng = Engine(SETTINGS)
    eng.replay([PriceEvent(T0 + k * 100, "BTC", 90_000.0) for k in range(30)], "t")
    first = eng.evaluate(T0 + 2_900)
    # Older than the clock, but a position or account snapshot is the venue's latest word.
    eng.replay(
        [
            PositionEvent(T0 + 100, "a", "BTC-PERPETUAL", 2.0),
            PriceEvent(T0 + 2_950, "BTC-PERPETUAL", 90_000.0),
            AccountEvent(T0 + 200, "a", 1_000_000.0, 0.0, 100_000.0),
        ],
        "t",
    )
    snap = eng.evaluate(T0 + 2_400)  # asked for an earlier time
    assert snap.as_of_ms == first.as_of_ms
    assert snap.accounts["a"].exposure_usd == {"BTC": 2.0 * 90_000.0}
    assert snap.accounts["a"].extra["margin"]["maintenance_margin"] == 100_000.0


def test_hardening_out_of_order_replay_completes(tmp_path: Path) -> None:
    """A valid recording whose last line is 500 ms older than the newest event."""
    events: list[dict[str, Any]] = []
    for k, p in enumerate(_walk(400)):
        events.append({"type": "price", "ts": T0 + 300 * k, "instrument": "BTC", "price": p})
    events.append(
        {"type": "position", "ts": T0, "account": "a", "instrument": "BTC-PERPETUAL", "quantity": 1}
    )
    last = events[399]["ts"]
    events.append({"type": "price", "ts": last - 500, "instrument": "BTC", "price": 1.0})
    rec = _jsonl(tmp_path / "ooo.jsonl", events)
    proc = _riskmon("replay", str(rec))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["assets"]["BTC"]["price"] == events[399]["price"]  # not the old tick
    assert "out_of_order" in proc.stderr
    assert "line 402" in proc.stderr  # position line 401, the old tick line 402


# --- 2. one absurd tick ------------------------------------------------------------------


def _book_events(
    prices: list[float], spike_at: int, spike: float, spike_ticks: int = 1
) -> list[Event]:
    out: list[Event] = []
    for k, p in enumerate(prices):
        ts = T0 + 300 * k
        px = spike if spike_at <= k < spike_at + spike_ticks else p
        out.append(PriceEvent(ts, "BTC", px))
        out.append(PriceEvent(ts, "BTC-PERPETUAL", px))
        if k == 5:
            out.append(PositionEvent(ts, "a", "BTC-PERPETUAL", 10.0))
    return out


def test_hardening_absurd_tick_quarantined_until_confirmed() -> None:
    prices = _walk(200)
    eng = Engine(SETTINGS)  # max_tick_move 0.5 by default
    rejected = eng.replay(_book_events(prices, 100, 1e9), "t")
    assert [r.reason for _, r in rejected] == [Reason.QUARANTINED] * 2  # BTC and the perp
    assert eng.stats.rejected[("t", "quarantined")] == 2
    snap = eng.evaluate(T0 + 300 * 199)
    assert snap.assets.price.tolist() == [prices[-1]]
    # The estimator never saw it: its state is exactly that of the run without the tick.
    clean = Engine(SETTINGS)
    clean.replay([e for e in _book_events(prices, -1, 0.0) if e.ts != T0 + 300 * 100], "t")
    ref = clean.evaluate(T0 + 300 * 199)
    assert snap.assets.volatility.tolist() == ref.assets.volatility.tolist()
    assert snap.assets.returns.tolist() == ref.assets.returns.tolist()
    # A real move is believed once the next tick confirms it.
    eng2 = Engine(SETTINGS)
    moved = [*prices[:100], *(p * 3.0 for p in prices[100:])]
    rejected = eng2.replay(_book_events(moved, -1, 0.0), "t")
    assert [r.reason for _, r in rejected] == [Reason.QUARANTINED] * 2
    assert eng2.evaluate(T0 + 300 * 199).assets.price.tolist() == [moved[-1]]
    # The confirmed tick itself was applied too: the price at t100 stood from t100 on.
    eng3 = Engine(SETTINGS)
    eng3.replay(_book_events(moved[:102], -1, 0.0), "t")
    assert eng3.evaluate(T0 + 300 * 101).assets.price.tolist() == [moved[101]]


def test_hardening_absurd_tick_never_stops_evaluation() -> None:
    """A 1e9 tick repeated (so confirmed and believed) reaches the estimator; evaluations
    go on, and the figures that cannot be computed are null with a reason."""
    eng = Engine(SETTINGS)
    events = _book_events(_walk(600), 300, 1e9, spike_ticks=3)
    eng.replay(events, "t")  # evaluations run inside; none may raise
    assert eng.stats.evaluations > 500
    snap = eng.evaluate(T0 + 300 * 599)
    report = json.loads(msgspec.json.encode(snap.report()))
    acc = report["accounts"]["a"]
    assert acc["exposure_usd"]["BTC"] == pytest.approx(10.0 * events[-1].price)  # type: ignore[union-attr]
    # The scenario P&L of a ~11,000x return is beyond float range: null, and said why.
    assert acc["var"]["full_revaluation"] is None
    assert "scenario P&L not finite" in report["unknown"]["accounts.a.var.full_revaluation"]


# --- 3, 4. command-line values -------------------------------------------------------------


def test_hardening_negative_seed_exits_2_naming_the_flag() -> None:
    proc = _riskmon("run", "--seed", "-5")
    assert proc.returncode == 2
    assert "--seed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # The same value from the environment is refused by the same validation.
    proc = _riskmon(
        "check-config",
        str(ROOT / "deploy" / "riskmon.example.toml"),
        env={"RISKMON_CONNECTORS__SIMULATED__SEED": "-5"},
    )
    assert proc.returncode == 2
    assert "connectors[0].seed" in proc.stderr
    assert "RISKMON_CONNECTORS__SIMULATED__SEED" in proc.stderr


def test_hardening_bad_record_path_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _riskmon("run", "--record", str(tmp_path / "rec.csv"))
    assert proc.returncode == 2
    assert "--record" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = _riskmon("run", "--listen", "localhost")
    assert proc.returncode == 2
    assert "--listen" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- 6. unknown sums -----------------------------------------------------------------------


def test_hardening_unknown_exposure_is_null_not_zero() -> None:
    eng = Engine(SETTINGS)
    eng.replay(
        [
            PriceEvent(T0, "BTC", 90_000.0),
            PriceEvent(T0, "ETH", 3_000.0),
            PositionEvent(T0, "a", "BTC-PERPETUAL", 10.0),
            PositionEvent(T0, "a", "ETH-PERPETUAL", 2.0),
            PriceEvent(T0 + 1_000, "BTC", 1e308),  # 10 x 1e308 overflows
            PriceEvent(T0 + 1_000, "BTC", 1e308),  # (confirmed: believed)
        ],
        "t",
    )
    report = json.loads(msgspec.json.encode(eng.evaluate(T0 + 1_000).report()))
    acc = report["accounts"]["a"]
    assert acc["positions"][0]["delta_usd"] is None
    assert acc["exposure_usd"] == {"BTC": None, "ETH": 6_000.0}
    assert report["total"]["exposure_usd"] == {"BTC": None, "ETH": 6_000.0}
    assert acc["unpriced_positions"] == 1


# --- 7. regime baselines --------------------------------------------------------------------


def test_hardening_regime_baseline_starts_when_warm() -> None:
    from monitor.engine.evaluation import RiskSettings

    halflife = 30_000
    eng = Engine(SETTINGS, risk=RiskSettings(regime_halflife_ms=halflife))
    iv = 0.5
    option = "BTC-27DEC26-100000-C"
    snaps = []
    prices = _walk(400, step=0.004)
    for k, p in enumerate(prices):
        ts = T0 + 250 * k
        events: list[Event] = [PriceEvent(ts, "BTC", p), PriceEvent(ts, option, 0.05, iv=iv)]
        if k == 0:
            events.append(PositionEvent(ts, "a", option, 1.0))
        eng.replay(events, "t")
        snaps.append(eng.evaluate(ts))
    # Plain-Python EWMA of the current ratio from the first warm evaluation on.
    base: float | None = None
    last_ts = 0
    checked = 0
    for snap in snaps:
        doc = snap.report()
        cur = doc["regime"]["underlyings"]["BTC"]["realised_to_implied"]
        got = doc["regime"]["underlyings"]["BTC"]["realised_to_implied_baseline"]
        if not doc["assets"]["BTC"]["warm"]:
            assert got is None, "a cold estimator's ratio must not seed the baseline"
            continue
        if base is None:
            base = cur
        else:
            a = 0.5 ** ((snap.as_of_ms - last_ts) / halflife)
            base = a * base + (1 - a) * cur
        last_ts = snap.as_of_ms
        assert got == pytest.approx(base, rel=1e-12)
        checked += 1
    assert checked > 100


# --- 8. rejection reasons and where they are ------------------------------------------------


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_hardening_nan_infinity_json_is_invalid_value(literal: str) -> None:
    line = f'{{"type":"price","ts":{T0},"instrument":"BTC","price":{literal}}}'
    with pytest.raises(Rejected) as info:
        EventDecoder().decode(line)
    assert info.value.reason is Reason.INVALID_VALUE
    # Still malformed: a bare word that is not a number.
    with pytest.raises(Rejected) as info:
        EventDecoder().decode(line.replace(literal, "Nope"))
    assert info.value.reason is Reason.MALFORMED_JSON


def test_hardening_parquet_rejections_say_row_and_engine_rejections_carry_it(
    tmp_path: Path,
) -> None:
    rows: list[dict[str, Any]] = [
        {"type": "price", "ts": T0 + 1_000, "instrument": "BTC", "price": 90_000.0},
        {"type": "price", "ts": T0 + 2_000, "instrument": "BTC", "price": -1.0},  # row 2
        {"type": "price", "ts": T0 + 3_000, "instrument": "BTC", "price": 90_100.0},
        {"type": "price", "ts": T0 + 1_500, "instrument": "BTC", "price": 90_050.0},  # row 4
        {"type": "price", "ts": T0 + 4_000, "instrument": "BTC", "price": 90_200.0},
    ]
    path = tmp_path / "rec.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), path)
    proc = _riskmon("replay", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "row 2: " in proc.stderr
    assert "line 2" not in proc.stderr
    assert "row 4: BTC tick" in proc.stderr  # the engine's refusal, with its row
    # JSONL: a blank line and a bad line before the late tick shift nothing.
    lines = [json.dumps(r) for r in rows]
    lines.insert(1, "")
    (tmp_path / "rec.jsonl").write_text("\n".join(lines) + "\n")
    proc = _riskmon("replay", str(tmp_path / "rec.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert "line 3: " in proc.stderr
    assert "line 5: BTC tick" in proc.stderr


# --- 9. every key from the environment ------------------------------------------------------

_FULL = """
[alerts]
outbox = "/tmp/riskmon-outbox"
[alerts.webhook]
url = "http://127.0.0.1:9/hook"
[alerts.mqtt]
[alerts.alertmanager]
[[margin.stresses]]
name = "crash"
[cluster]
"""
_NAMED = {"connectors", "rules"}
_SENTINEL = "[[env-override"  # not TOML, so it reaches every key as this string


def _optional_struct(t: mi.Type) -> mi.Type:
    if isinstance(t, mi.UnionType):
        rest = [m for m in t.types if not isinstance(m, mi.NoneType)]
        if len(rest) == 1 and isinstance(rest[0], mi.StructType):
            return rest[0]
    return t


def _leaves(
    node: mi.StructType, value: Any, env: list[str], path: list[str | int]
) -> Iterator[tuple[str, list[str | int]]]:
    """(variable, key path) of every key under ``node``, recursing into tables."""
    for f in node.fields:
        t = _optional_struct(f.type)
        child = getattr(value, f.name)
        if not path and f.encode_name in _NAMED:
            for i, entry in enumerate(child):
                entry_t = mi.type_info(type(entry))
                assert isinstance(entry_t, mi.StructType)
                conf = type(entry).__struct_config__
                name = getattr(entry, "name", None) or conf.tag
                var_name = "".join(c if c.isalnum() else "_" for c in str(name).upper())
                yield from _leaves(
                    entry_t, entry, [*env, f.encode_name.upper(), var_name], [f.encode_name, i]
                )
        elif isinstance(t, mi.StructType):
            assert child is not None, f"the test's base config must set {[*path, f.name]}"
            yield from _leaves(t, child, [*env, f.encode_name.upper()], [*path, f.encode_name])
        else:
            yield "RISKMON_" + "__".join([*env, f.encode_name.upper()]), [*path, f.encode_name]


def _at(cfg: Any, path: list[str | int]) -> Any:
    for seg in path:
        cfg = cfg[seg] if isinstance(seg, int) else getattr(cfg, seg)
    return cfg


def test_hardening_every_config_key_overridable_from_env(tmp_path: Path) -> None:
    base_file = tmp_path / "full.toml"
    base_file.write_text(_FULL)
    base = load_config(base_file, env={})
    schema = mi.type_info(Config)
    assert isinstance(schema, mi.StructType)
    leaves = list(_leaves(schema, base, [], []))
    assert len(leaves) > 150  # the whole schema, rules and notifiers included
    tried = set()
    for var, path in leaves:
        tried.add(var)
        error: str | None = None
        try:
            cfg: Config | None = load_config(base_file, env={var: _SENTINEL})
        except ConfigError as exc:
            cfg, error = None, str(exc)
        if error is not None:
            # The key was found and its value checked: the error names the variable.
            assert f"(from {var})" in error, f"{var}: {error}"
            assert "unknown key" not in error, f"{var}: {error}"
        else:
            assert _at(cfg, path) == _SENTINEL, var
    for var in (
        "RISKMON_ALERTS__WEBHOOK__TOKEN",
        "RISKMON_ALERTS__WEBHOOK__URL",
        "RISKMON_ALERTS__MQTT__PASSWORD",
        "RISKMON_ALERTS__ALERTMANAGER__URL",
        "RISKMON_MARKET__MAX_TICK_MOVE",
    ):
        assert var in tried
    cfg = load_config(base_file, env={"RISKMON_ALERTS__WEBHOOK__TOKEN": "s3cret"})
    assert cfg.alerts.webhook is not None
    assert cfg.alerts.webhook.token == "s3cret"


# --- 10. Parquet recordings survive a crash ---------------------------------------------------

_WRITER = """
import sys, time
from monitor.engine.record import Recorder
from monitor.model.events import PriceEvent
rec = Recorder(sys.argv[1], flush_rows=50, segment_seconds=0.05)
k = int(sys.argv[2])
while True:
    rec.write(PriceEvent(1767225600000 + k, "BTC", 90000.0 + k))
    k += 1
    if k % 50 == 0:
        print(k, flush=True)
        time.sleep(0.01)
"""


def _closed_segments(path: Path) -> list[str]:
    if not path.exists():
        return []
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".parquet"))


def test_hardening_parquet_recording_survives_kill_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "rec.parquet"
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    written: list[int] = []
    for start in (0, 1_000_000):  # the second run is the restart, same path
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(start)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        before = len(_closed_segments(path))
        while len(_closed_segments(path)) < before + 3 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "the writer died"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        assert len(_closed_segments(path)) >= before + 3
    # Every closed segment reads whole; the ones left open are skipped (with a warning).
    segments = _closed_segments(path)
    for name in segments:
        written += pq.read_table(path / name, columns=["ts"]).column("ts").to_pylist()
    events = [e for b in iter_batches(path) for e in b.events]
    assert [e.ts for e in events] == written
    ts = [t - T0 for t in written]
    first_run = [t for t in ts if t < 1_000_000]
    second_run = [t - 1_000_000 for t in ts if t >= 1_000_000]
    # Each run's closed segments hold its events from the start, in order, without a gap.
    assert first_run == list(range(len(first_run)))
    assert second_run == list(range(len(second_run)))
    assert len(first_run) >= 150
    assert len(second_run) >= 150


# --- 12. oversized requests ------------------------------------------------------------------


class _NoView:
    snapshot = None
    connectors: tuple[Any, ...] = ()


@pytest.mark.parametrize(
    ("request_bytes", "echo"),
    [
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"aaaa"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Token: " + b"s" * 20_000 + b"\r\n\r\n", b"ssss"),
    ],
    ids=["100kB-url", "20kB-header"],
)
async def test_hardening_oversized_request_not_echoed_nor_logged_as_error(
    request_bytes: bytes, echo: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    from prometheus_client import CollectorRegistry

    from monitor.serve.http import HttpServer

    caplog.set_level(logging.DEBUG)
    async with HttpServer(_NoView(), CollectorRegistry(), "127.0.0.1:0") as srv:  # type: ignore[arg-type]
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(request_bytes)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), timeout=30)
        writer.close()
    assert response.startswith(b"HTTP/1.0 400 ") or response.startswith(b"HTTP/1.1 400 ")
    assert echo not in response
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]
    assert all(echo.decode() not in r.getMessage() for r in caplog.records)


# --- 11. documentation says what the code does ------------------------------------------------


def test_hardening_every_rejection_reason_is_documented() -> None:
    import monitor.serve.metrics

    readme = (ROOT / "README.md").read_text()
    doc = monitor.serve.metrics.__doc__ or ""
    for reason in Reason:
        assert f"`{reason.value}`" in readme, reason
        assert f"``{reason.value}``" in doc, reason


def test_hardening_docs_cite_no_file_outside_the_repository() -> None:
    """DESIGN.md and issue numbers are not in the repository: docs say what they mean."""
    offenders = []
    for top in ("monitor", "connectors", "grafana", "tests"):
        for path in (ROOT / top).rglob("*.py"):
            if path.name == "test_hardening.py":
                continue
            text = path.read_text()
            if "DESIGN.md" in text or "tracker issue" in text or "issue 4" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_hardening_readme_says_greeks_vs_venue_is_optional() -> None:
    from monitor.engine.valuation import value_book  # noqa: F401  (the code that omits it)

    readme = (ROOT / "README.md").read_text()
    schema_line = next(ln for ln in readme.splitlines() if '"greeks_vs_venue":' in ln)
    following = readme[readme.index(schema_line) :][:300]
    assert "only" in following
    # and indeed: an account without venue Greeks has no such key
    eng = Engine(SETTINGS)
    eng.replay([PriceEvent(T0, "BTC", 90_000.0), PositionEvent(T0, "a", "BTC-PERPETUAL", 1.0)], "t")
    eng.replay([PriceEvent(T0, "BTC-PERPETUAL", 90_000.0)], "t")
    assert "greeks_vs_venue" not in eng.evaluate(T0).report()["accounts"]["a"]


def test_hardening_check_config_into_a_closed_pipe_is_quiet() -> None:
    """``riskmon check-config FILE | head``: the reader leaves early, no traceback."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "monitor",
            "check-config",
            str(ROOT / "deploy/riskmon.example.toml"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    # The reader is gone before riskmon has imported its modules, so its first write
    # meets a closed pipe (head leaves after its lines the same way, only later).
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err


def test_hardening_build_dashboards_says_how_to_run_it(tmp_path: Path) -> None:
    """Run by an interpreter without grafana-foundation-sdk: one line saying what to do."""
    script = ROOT / "grafana" / "build_dashboards.py"
    blocker = tmp_path / "grafana_foundation_sdk.py"
    blocker.write_text("raise ModuleNotFoundError('No module named grafana_foundation_sdk')\n")
    proc = subprocess.run(
        [sys.executable, str(script), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "pip install -e '.[test]'" in proc.stderr
