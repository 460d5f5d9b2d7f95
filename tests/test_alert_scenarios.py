"""Recorded scenarios replayed: the expected alerts fire at the expected event times.

Deterministic recordings (no randomness): three underlyings whose log returns follow
orthogonal sign patterns (correlation near zero), except in a spike window where they all
move together; one account whose venue-reported margin utilisation steps up and down on
a schedule. Alert times are derived from the schedule and the rules' documented semantics,
and the same recording through ``riskmon replay`` must give the same ``alert_history``.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from monitor.config import load_config
from monitor.engine.core import Engine
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent, encode_event
from monitor.rules.pack import rule_engine
from monitor.settings import engine_settings, risk_settings

T0 = 1_767_225_600_000
SECONDS = 900
SPIKE = (300, 420)  # seconds in which every underlying moves together
R = 1e-4  # |log return| per second, every asset (so volatilities never change)
CONFIG = """
[estimator]
sample_interval = "1s"
halflife = "30s"
fast_halflife = "10s"
warmup = "20s"
max_gap = "1m"
[risk]
eval_interval = "1s"
"""
PATTERNS = ((1, 1, -1, -1), (1, -1, 1, -1), (1, -1, -1, 1))  # pairwise orthogonal
START = {"BTC": 90_000.0, "ETH": 3_000.0, "SOL": 150.0}
# (seconds, utilisation): equity 1,000,000 USD throughout, maintenance margin moves.
MARGIN_SCHEDULE = [(0.2, 0.40), (400.2, 0.65), (430.2, 0.85), (460.2, 0.70), (490.2, 0.50)]


def _events(spike: bool, margin: Sequence[tuple[float, float]]) -> list[Event]:
    events: list[Event] = []
    price = dict(START)
    for name, p in price.items():  # 100,000 USD long each, so risk shares stay equal
        events.append(PositionEvent(T0, "lev", f"{name}-PERPETUAL", 100_000.0 / p))
    for secs, util in margin:
        t = T0 + round(secs * 1000)
        events.append(AccountEvent(t, "lev", 1_000_000.0, None, util * 1_000_000.0))
    for k in range(SECONDS):
        together = spike and SPIKE[0] <= k < SPIKE[1]
        ts = T0 + 1_000 * k + 500
        for j, name in enumerate(START):
            sign = PATTERNS[0 if together else j][k % 4]
            price[name] *= math.exp(sign * R)
            events.append(PriceEvent(ts, name, price[name]))
            events.append(PriceEvent(ts, f"{name}-PERPETUAL", price[name]))
    events.sort(key=lambda e: e.ts or 0)  # stable: positions before the first tick
    return events


def _replay_in_process(cfg_path: Path, events: list[Event]) -> list[dict[str, Any]]:
    cfg = load_config(cfg_path, env={})
    eng = Engine(
        engine_settings(cfg), risk=risk_settings(cfg), rules=rule_engine(cfg.rules, cfg.limits)
    )
    assert eng.replay(events, "scenario") == []
    snap = eng.evaluate(max(e.ts or 0 for e in events))
    return [t.report() for t in snap.alert_history]


def _moves(history: list[dict[str, Any]], rule: str) -> list[tuple[int, str, str, str]]:
    """(seconds after T0, from, to, severity) of one rule's transitions."""
    out = []
    for h in history:
        if h["rule"] == rule:
            secs = round(
                (_ms(h["ts"]) - T0) / 1000,
            )
            out.append((secs, h["from"], h["state"], h["severity"]))
    return out


def _ms(iso: str) -> int:
    import datetime as dt

    return round(dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.fixture
def cfg_path(tmp_path: Path) -> Path:
    path = tmp_path / "riskmon.toml"
    path.write_text(CONFIG)
    return path


def test_margin_thins_and_correlations_spike(cfg_path: Path, tmp_path: Path) -> None:
    events = _events(spike=True, margin=MARGIN_SCHEDULE)
    history = _replay_in_process(cfg_path, events)
    assert {h["rule"] for h in history} == {
        "margin_utilization",
        "correlation_spike",
        "absorption_spike",
    }
    # Utilisation 0.65 arrives at 400.2 s: the evaluation as of 401 s sees it (pending);
    # `for` 10 s -> firing at 411 s; 0.85 >= critical 0.8 at 431 s; 0.70 is below
    # max(0.8 - (0.6 - 0.55), 0.6) = 0.75 at 461 s; 0.50 < clear 0.55 at 491 s.
    assert _moves(history, "margin_utilization") == [
        (401, "inactive", "pending", "warning"),
        (411, "pending", "firing", "warning"),
        (431, "firing", "firing", "critical"),
        (461, "firing", "firing", "warning"),
        (491, "firing", "resolved", "warning"),
    ]
    lev = [h for h in history if h["rule"] == "margin_utilization"]
    assert lev[2]["summary"].startswith("lev: margin utilisation 85%")
    for rule in ("correlation_spike", "absorption_spike"):
        moves = _moves(history, rule)
        states = [m[2] for m in moves]
        assert states[0] == "pending"
        assert states[-1] == "resolved"
        assert "firing" in states
        pending_at = moves[0][0]
        firing_at = next(m[0] for m in moves if m[2] == "firing")
        resolved_at = moves[-1][0]
        # it starts inside the spike, fires `for` (30 s) later, ends after the spike
        assert SPIKE[0] < pending_at < SPIKE[1]
        assert firing_at == pending_at + 30
        assert SPIKE[1] < resolved_at < SECONDS

    # The same recording through `riskmon replay` gives the same history, key for key.
    rec = tmp_path / "scenario.jsonl"
    rec.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "replay", str(rec), "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["alert_history"] == json.loads(json.dumps(history))
    assert report["alerts"] == []  # everything resolved by the end


def test_calm_scenario_fires_nothing(cfg_path: Path) -> None:
    calm_margin = [(0.2, 0.40), (450.2, 0.45)]
    history = _replay_in_process(cfg_path, _events(spike=False, margin=calm_margin))
    assert history == []
