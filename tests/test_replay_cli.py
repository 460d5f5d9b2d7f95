"""``riskmon replay`` end to end, checked against an independent RiskMetrics recursion.

The recording has irregular tick times (so grid sampling matters), assets that start late,
positions, and garbage lines; the replay must complete, count the garbage, and report
volatility and correlation equal to a plain-Python recursion over the same file.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

T0 = 1_767_225_600_000
DT = 1_000  # sample interval, ms
HALFLIFE = 30_000
FAST = 5_000
CONFIG = f"""
[estimator]
sample_interval = "{DT}ms"
halflife = "{HALFLIFE}ms"
fast_halflife = "{FAST}ms"
warmup = "20s"
max_gap = "1m"
"""
ASSETS = ("BTC", "ETH", "SOL")


def _make_ticks(seed: int = 11, n: int = 4_000) -> list[tuple[int, str, float]]:
    """Correlated GBM index ticks at irregular times; SOL starts late."""
    rng = np.random.default_rng(seed)
    corr = np.array([[1.0, 0.8, 0.6], [0.8, 1.0, 0.7], [0.6, 0.7, 1.0]])
    chol = np.linalg.cholesky(corr)
    vols = np.array([0.5, 0.7, 0.9]) / math.sqrt(365 * 86_400 * 1000 / 300)
    px = np.array([90_000.0, 3_000.0, 150.0])
    ticks: list[tuple[int, str, float]] = []
    ts = T0 + 137
    for _ in range(n):
        ts += int(rng.integers(50, 600))
        px = px * np.exp(vols * (chol @ rng.standard_normal(3)))
        k = int(rng.integers(0, 3))
        if ASSETS[k] == "SOL" and ts < T0 + 200_000:
            continue
        ticks.append((ts, ASSETS[k], float(px[k])))
    return ticks


def _reference(ticks: list[tuple[int, str, float]]) -> tuple[dict[str, float], list[list[float]]]:
    """The estimator's definition, written out with Python loops and no numpy.

    Grid prices are the last tick at or before each grid point. Variances are EWMAs of
    squared returns; a pair's correlation is the EWMA of its cross products over the EWMAs
    of both squared returns on their joint steps. Cross products add the lead-lag terms of
    asynchronous ticks: when an asset's price moves, its move times the other's log moves
    that may overlap it in time, those after the other's price at the tick that started the
    mover's interval (its previous move) and before this sample.
    """
    lam = 0.5 ** (DT / HALFLIFE)
    first = ticks[0][0]
    g = -(-first // DT) * DT
    last_ts = ticks[-1][0]
    current: dict[str, float] = {}
    tick_ts: dict[str, int] = {}
    grid: list[tuple[dict[str, float], dict[str, int]]] = []
    k = 0
    while g < last_ts:  # grid points closed by the final tick
        while k < len(ticks) and ticks[k][0] <= g:
            current[ticks[k][1]] = ticks[k][2]
            tick_ts[ticks[k][1]] = ticks[k][0]
            k += 1
        grid.append((dict(current), dict(tick_ts)))
        g += DT
    pairs = [(a, b) for a in ASSETS for b in ASSETS]
    raw = dict.fromkeys(pairs, 0.0)
    sq = dict.fromkeys(pairs, 0.0)
    wsum = dict.fromkeys(pairs, 0.0)
    start: dict[tuple[str, str], float] = {}  # ln P_b at the start of a's interval
    for (prev, _), (cur, ts) in itertools.pairwise(grid):
        r = {a: math.log(cur[a] / prev[a]) for a in ASSETS if a in prev and a in cur}
        lead = dict.fromkeys(pairs, 0.0)
        for a in r:
            for b in ASSETS:
                if a != b and r[a] != 0.0 and b in prev and (a, b) in start:
                    lead[a, b] = r[a] * (math.log(prev[b]) - start[a, b])
        new = [a for a in cur if a not in prev]
        for a in [a for a in r if r[a] != 0.0] + new:
            for b in cur:
                seen = ts[b] <= ts[a]  # b's price at a's tick: now, or the last sample's
                if seen or b in prev:
                    start[a, b] = math.log(cur[b] if seen else prev[b])
                else:
                    start.pop((a, b), None)
        for b in new:
            for a in ASSETS:
                start[a, b] = math.log(cur[b])
        for a in r:
            for b in r:
                prod = r[a] * r[b] + lead[a, b] + lead[b, a]
                raw[a, b] = lam * raw[a, b] + (1 - lam) * prod
                sq[a, b] = lam * sq[a, b] + (1 - lam) * r[a] * r[a]
                wsum[a, b] = lam * wsum[a, b] + (1 - lam)
    per_year = 365 * 86_400_000 / DT
    vol = {a: math.sqrt(raw[a, a] / wsum[a, a] * per_year) for a in ASSETS}
    corr = [
        [
            1.0 if a == b else max(-1.0, min(1.0, raw[a, b] / math.sqrt(sq[a, b] * sq[b, a])))
            for b in ASSETS
        ]
        for a in ASSETS
    ]
    return vol, corr


@pytest.fixture(scope="module")
def recording(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, list[tuple[int, str, float]]]:
    tmp = tmp_path_factory.mktemp("replay")
    ticks = _make_ticks()
    lines = [
        json.dumps({"type": "price", "ts": ts, "instrument": name, "price": px})
        for ts, name, px in ticks
    ]
    t1, t2 = T0 + 1000, T0 + 2000
    extra = [
        f'{{"type":"position","ts":{t1},"account":"main","instrument":"BTC-PERPETUAL","quantity":2}}',
        f'{{"type":"position","ts":{t1},"account":"main","instrument":"ETH_USDC","quantity":-30}}',
        "this is not json",
        f'{{"type":"price","ts":{t2},"instrument":"BTC","price":-5}}',
        f'{{"type":"price","ts":{t2},"instrument":"NO SUCH THING","price":5}}',
        f'{{"type":"price","ts":{t2},"instrument":"BTC"',
    ]
    # garbage and positions go early; positions must precede later prices in time order
    body = lines[:5] + extra + lines[5:]
    path = tmp / "rec.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(body) + "\n")
    cfg = tmp / "riskmon.toml"
    cfg.write_text(CONFIG)
    return path, cfg, ticks


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor", "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_replay_report_matches_independent_recursion(
    recording: tuple[Path, Path, list[tuple[int, str, float]]],
) -> None:
    path, cfg, ticks = recording
    proc = _replay(str(path), "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    vol, corr = _reference(ticks)
    assert report["schema"] == 1
    assert report["correlation"]["assets"] == list(ASSETS)
    for a in ASSETS:
        assert report["assets"][a]["warm"] is True
        assert report["assets"][a]["volatility"] == pytest.approx(vol[a], rel=1e-9)
        assert report["assets"][a]["price"] == [p for _, n, p in ticks if n == a][-1]
    np.testing.assert_allclose(report["correlation"]["matrix"], corr, rtol=1e-9)
    # the book: 2 BTC long, 30 ETH short at the last index prices
    last = {a: [p for _, n, p in ticks if n == a][-1] for a in ASSETS}
    main = report["accounts"]["main"]
    assert main["exposure_usd"]["BTC"] == pytest.approx(2 * last["BTC"], rel=1e-12)
    assert main["exposure_usd"]["ETH"] == pytest.approx(-30 * last["ETH"], rel=1e-12)
    # four garbage lines were rejected, each logged with its reason, and counted by reason
    # in the summary; they did not stop the replay
    logs = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    reasons = sorted(r["reason"] for r in logs if r["msg"].startswith("rejected event"))
    assert reasons == ["invalid_value", "malformed_json", "malformed_json", "unknown_instrument"]
    [summary] = [r for r in logs if r["msg"].startswith("replayed")]
    assert summary["rejected_by_reason"] == {
        "malformed_json": 2,
        "invalid_value": 1,
        "unknown_instrument": 1,
    }


def test_replay_table_and_out_file(
    recording: tuple[Path, Path, list[tuple[int, str, float]]], tmp_path: Path
) -> None:
    path, cfg, _ = recording
    out = tmp_path / "report.txt"
    proc = _replay(str(path), "--config", str(cfg), "--report", "table", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "BTC" in text
    assert "main" in text


def test_replay_of_missing_or_unsupported_file_fails_cleanly(tmp_path: Path) -> None:
    # Bad usage: exit 2 with one line naming the file, no traceback.
    proc = _replay(str(tmp_path / "nope.jsonl"))
    assert proc.returncode == 2
    assert "cannot replay" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = tmp_path / "events.csv"
    bad.write_text("x\n")
    proc = _replay(str(bad))
    assert proc.returncode == 2
    assert "cannot replay" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
