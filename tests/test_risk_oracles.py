"""Engine-evaluated risk figures against closed forms written here, and the data-quality
cases that used to distort them (an index outage, a late joiner in a volatility spike).

The oracles go through ``riskmon replay`` (a subprocess, the public surface): prices tick
exactly on the sample grid and alternate ``+a, -a`` in log terms, so every EWMA of
``r_i r_j`` equals ``a_i a_j`` for any halflife and the covariance is known exactly.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from monitor.engine.core import Engine, EngineSettings
from monitor.model.events import PositionEvent, PriceEvent

T0 = 1_767_225_600_000  # a multiple of the 1 s grid
YEAR_MS = 365 * 86_400_000
DT = 1_000
H = 1.0 / 365.0  # the default 1-day horizon
Z = float(stats.norm.ppf(0.99))
ES_MULT = float(stats.norm.pdf(Z)) / 0.01


def _replay(path: Path, config: str = "") -> dict[str, object]:
    """``riskmon replay`` of ``path`` (with a config file of ``config``), its JSON report."""
    args = [str(path)]
    if config:
        cfg = path.with_suffix(".toml")
        cfg.write_text(config)
        args += ["--config", str(cfg)]
    proc = subprocess.run(
        [sys.executable, "-m", "monitor", "replay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout)
    return out


def _alternating_recording(
    tmp: Path, moves: dict[str, float], start: dict[str, float], qty: dict[str, float]
) -> tuple[Path, dict[str, float]]:
    """Index ticks on every grid point for 10 minutes, log moves ``+a, -a, +a, ...``."""
    lines = []
    price = dict(start)
    for k in range(601):
        ts = T0 + k * DT
        for name, a in moves.items():
            if k:
                price[name] = start[name] * math.exp(a if k % 2 else 0.0)
            lines.append({"type": "price", "ts": ts, "instrument": name, "price": price[name]})
        if k == 1:
            for name, q in qty.items():
                lines.append(
                    {
                        "type": "position",
                        "ts": ts,
                        "account": "main",
                        "instrument": f"{name}-PERPETUAL",
                        "quantity": q,
                    }
                )
    path = tmp / "rec.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path, price


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["long-long", "long-short"])
def test_replay_volatility_var_es_match_closed_forms(tmp_path: Path, sign: float) -> None:
    a_btc, a_eth = 0.001, 0.0015  # per 1 s step: vols 0.001 and 0.0015 * sqrt(steps/year)
    path, last = _alternating_recording(
        tmp_path,
        {"BTC": a_btc, "ETH": a_eth},
        {"BTC": 90_000.0, "ETH": 3_000.0},
        {"BTC": 10.0, "ETH": sign * 150.0},
    )
    report = _replay(path)
    ann = math.sqrt(YEAR_MS / DT)
    vol = {"BTC": a_btc * ann, "ETH": a_eth * ann}
    # Both returns flip sign together every step: correlation exactly 1.
    x_btc = 10.0 * last["BTC"]
    x_eth = sign * 150.0 * last["ETH"]
    sigma = abs(x_btc * vol["BTC"] + x_eth * vol["ETH"])
    assets = report["assets"]
    assert isinstance(assets, dict)
    for name in ("BTC", "ETH"):
        assert assets[name]["volatility"] == pytest.approx(vol[name], rel=1e-9)
    main = report["accounts"]["main"]  # type: ignore[index]
    assert main["volatility_usd"] == pytest.approx(sigma, rel=1e-6)
    dn = main["var"]["delta_normal"]
    assert dn["var_usd"] == pytest.approx(Z * sigma * math.sqrt(H), rel=1e-6)
    assert dn["es_usd"] == pytest.approx(ES_MULT * sigma * math.sqrt(H), rel=1e-6)
    # Full revaluation of perpetuals: P&L = x_B (e^r_B - 1) + x_E (e^r_E - 1) with
    # r_E = (vol_E / vol_B) r_B; 1000 moment-matched normal scenarios: the lognormal
    # quantile within sampling error (the 99% quantile of 1000 draws: a few percent).
    s = math.sqrt(H)
    grid = np.linspace(-6.0, 6.0, 200_001)
    pnl = x_btc * np.expm1(vol["BTC"] * s * grid) + x_eth * np.expm1(vol["ETH"] * s * grid)
    dens = stats.norm.pdf(grid)
    dens /= dens.sum()
    order = np.argsort(pnl)
    cdf = np.cumsum(dens[order])
    var_exact = -float(pnl[order][np.searchsorted(cdf, 0.01)])
    tail = cdf <= 0.01
    es_exact = -float((pnl[order][tail] * dens[order][tail]).sum() / dens[order][tail].sum())
    fr = main["var"]["full_revaluation"]
    assert fr["var_usd"] == pytest.approx(var_exact, rel=0.08)
    assert fr["es_usd"] == pytest.approx(es_exact, rel=0.08)
    assert main["var"]["halflife_seconds"] == 86_400.0
    assert main["volatility_halflife_seconds"] == 600.0


# -- an outage of one index ------------------------------------------------------------------


def _gbm_ticks(
    seed: int, minutes: int, vols: tuple[float, float], rho: float, step_ms: int = 500
) -> tuple[np.ndarray, np.ndarray]:
    """Log prices of two assets every ``step_ms``, correlated ``rho``."""
    rng = np.random.default_rng(seed)
    n = minutes * 60_000 // step_ms
    z = rng.standard_normal((n, 2))
    z[:, 1] = rho * z[:, 0] + math.sqrt(1.0 - rho * rho) * z[:, 1]
    sd = np.array(vols) * math.sqrt(step_ms / YEAR_MS)
    return np.arange(n) * step_ms, np.cumsum(z * sd, axis=0)


def _engine_vol(silent: tuple[int, int] | None, end_min: int) -> tuple[float, bool, Engine]:
    times, logp = _gbm_ticks(5, end_min, (0.62, 0.8), 0.7)
    eng = Engine(EngineSettings(eval_interval_ms=60_000))
    events = []
    for t, (lb, le) in zip(times.tolist(), logp.tolist(), strict=True):
        ts = T0 + t
        if silent is None or not (silent[0] * 60_000 <= t < silent[1] * 60_000):
            events.append(PriceEvent(ts=ts, instrument="BTC", price=60_000.0 * math.exp(lb)))
        events.append(PriceEvent(ts=ts + 250, instrument="ETH", price=3_000.0 * math.exp(le)))
    eng.replay(events, "test")
    snap = eng.evaluate(events[-1].ts)
    i = snap.assets.names.index("BTC")
    assert snap.assets.stale is not None
    return float(snap.assets.volatility[i]), bool(snap.assets.stale[i]), eng


def test_outage_of_one_index_is_not_a_calm_market() -> None:
    # BTC's index silent for 30 minutes while ETH ticks (minutes 60..90), then 10 minutes
    # of data again. True volatility 0.62; the EWMA (10-minute halflife) of the same path
    # without the outage is the yardstick. Zero returns during the silence used to pull
    # it to 0.2 and it was still about 0.45 ten minutes later.
    during, stale, _ = _engine_vol((60, 90), 89)
    assert stale  # the report lists it
    after, stale_after, eng = _engine_vol((60, 90), 100)
    assert not stale_after
    calm, _, _ = _engine_vol(None, 100)
    assert during == pytest.approx(0.62, rel=0.15)
    assert after == pytest.approx(calm, rel=0.1)
    assert after == pytest.approx(0.62, rel=0.15)
    report = eng.snapshot.report() if eng.snapshot else {}
    assert report["assets"]["BTC"]["stale"] is False


# -- a late joiner in a volatility spike ------------------------------------------------------


def test_late_joiner_in_a_spike_never_zeroes_a_hedged_book() -> None:
    # BTC calm (vol 0.3) for an hour; then both spike to 1.5, ETH joins, correlation 0.9.
    # Long 1M USD BTC, short 0.5M USD ETH (perpetuals), read once ETH is warm (5 min).
    # At true figures: sqrt(1 + 0.25 - 0.9) * 1.5 = 887k USD a year. The old pairwise
    # estimate put the spike-time covariance over BTC's calm-weighted variance: a
    # correlation above 1 (shown 1.00), x'Sx < 0 and volatility_usd and VaR 0.
    rng = np.random.default_rng(8)
    step = 1_000
    calm_n, spike_n = 3_600, 305
    sd = math.sqrt(step / YEAR_MS)
    z = rng.standard_normal((spike_n, 2))
    rb = np.concatenate([0.3 * sd * rng.standard_normal(calm_n), 1.5 * sd * z[:, 0]])
    re = 1.5 * sd * (0.9 * z[:, 0] + math.sqrt(1 - 0.81) * z[:, 1])
    lb = np.log(60_000.0) + np.cumsum(rb)
    le = np.log(3_000.0) + np.cumsum(re)
    eng = Engine(EngineSettings(eval_interval_ms=60_000))
    events: list[PriceEvent | PositionEvent] = []
    for k in range(calm_n + spike_n):
        ts = T0 + k * step
        events.append(PriceEvent(ts=ts, instrument="BTC", price=math.exp(lb[k])))
        if k >= calm_n:
            events.append(PriceEvent(ts=ts, instrument="ETH", price=math.exp(le[k - calm_n])))
        if k == calm_n:
            events.append(PositionEvent(ts, "main", "BTC-PERPETUAL", 1e6 / math.exp(lb[k])))
            events.append(
                PositionEvent(ts, "main", "ETH-PERPETUAL", -0.5e6 / math.exp(le[k - calm_n]))
            )
    eng.replay(events, "test")
    snap = eng.evaluate(events[-1].ts)
    rep = snap.report()
    assert rep["assets"]["ETH"]["warm"] is True
    rho = rep["correlation"]["matrix"][0][1]
    assert 0.8 < rho < 0.97  # the joint returns' correlation, not a ratio above 1
    main = rep["accounts"]["main"]
    x = np.array([main["exposure_usd"]["BTC"], main["exposure_usd"]["ETH"]])
    v = np.array([rep["assets"]["BTC"]["volatility"], rep["assets"]["ETH"]["volatility"]])
    cov = np.array([[1.0, rho], [rho, 1.0]]) * np.outer(v, v)
    sigma = math.sqrt(x @ cov @ x)
    assert main["volatility_usd"] == pytest.approx(sigma, rel=1e-9)
    # BTC's estimate still carries its calm hour (10-minute halflife), so the figure is
    # below the 887k of the true vols, but far from zero.
    assert main["volatility_usd"] > 2e5
    assert main["var"]["delta_normal"]["var_usd"] > 0.0
    assert rep["correlation"]["psd_repaired"] is False


# -- asynchronous feeds (the Epps effect) ----------------------------------------------------


def _async_events(mean_gap_s: float, hours: float, rho: float, seed: int) -> list[PriceEvent]:
    """Two indices, true correlation ``rho``, each ticking at its own Poisson times.

    The correlated Brownian log prices are drawn exactly at the union of both feeds' tick
    times (Gaussian increments over each gap between consecutive ticks of either feed).
    """
    rng = np.random.default_rng(seed)
    horizon_ms = int(hours * 3_600_000)
    times = []
    for _ in range(2):
        gaps = rng.exponential(mean_gap_s * 1000.0, int(horizon_ms / (mean_gap_s * 1000)) * 2)
        t = np.cumsum(gaps).astype(np.int64)
        times.append(t[t < horizon_ms])
    union = np.unique(np.concatenate(times))
    dt = np.diff(union, prepend=0) / YEAR_MS
    z = rng.standard_normal((len(union), 2))
    z[:, 1] = rho * z[:, 0] + math.sqrt(1.0 - rho * rho) * z[:, 1]
    vols = np.array([0.6, 0.8])
    logp = np.cumsum(z * vols * np.sqrt(dt)[:, None], axis=0)
    events = []
    for a, (name, p0) in enumerate((("BTC", 60_000.0), ("ETH", 3_000.0))):
        at = np.searchsorted(union, times[a])
        for t, lp in zip(times[a].tolist(), logp[at, a].tolist(), strict=True):
            events.append(PriceEvent(ts=T0 + t, instrument=name, price=p0 * math.exp(lp)))
    events.sort(key=lambda e: e.ts)
    return events


@pytest.mark.parametrize("mean_gap_s", [0.1, 1.0, 2.0])
def test_correlation_of_asynchronous_feeds_is_not_biased_toward_zero(mean_gap_s: float) -> None:
    # True correlation 0.9, feeds ticking out of step with mean gaps 0.1, 1 and 2 s, sampled
    # on the 1 s grid. The last tick at each grid point measured 0.81, 0.34 and 0.17 (the
    # Epps effect); the lead-lag terms restore it. A 2-hour halflife keeps the estimate's
    # own noise (about 0.01) well inside the 0.05 bound.
    events = _async_events(mean_gap_s, hours=6.0 if mean_gap_s > 0.5 else 3.0, rho=0.9, seed=4)
    eng = Engine(EngineSettings(halflife_ms=7_200_000, eval_interval_ms=3_600_000))
    eng.replay(events, "test")
    snap = eng.evaluate(events[-1].ts)
    assert abs(float(snap.assets.correlation[0, 1]) - 0.9) < 0.05
    # The variances need no correction: each feed's own returns chain without gaps.
    names = snap.assets.names
    vol = {name: float(snap.assets.volatility[names.index(name)]) for name in ("BTC", "ETH")}
    assert vol == {"BTC": pytest.approx(0.6, rel=0.05), "ETH": pytest.approx(0.8, rel=0.05)}


def test_var_uses_the_slow_var_estimator_and_volatility_the_halflife_one(tmp_path: Path) -> None:
    # 50 minutes of BTC moving +-a per second, then 10 minutes of +-3a. The bias-corrected
    # EWMA of r^2 with decay lam is sum lam^age r^2 / sum lam^age: in closed form, with
    # N1 = 3000 returns of a^2 then N2 = 599 of 9 a^2 (the last grid point is closed only
    # by a later tick, so the last price yields no return), it is
    # (a^2 lam^N2 (1 - lam^N1) + 9 a^2 (1 - lam^N2)) / (1 - lam^(N1 + N2)).
    # volatility_usd follows estimator.halflife (10 min), VaR estimator.var_halflife (1 day).
    a, n1, n2 = 0.001, 3_000, 600
    lines = []
    p0 = 90_000.0
    for k in range(n1 + n2 + 1):
        m = a if k <= n1 else 3 * a
        price = p0 * math.exp(m if k % 2 else 0.0)
        lines.append({"type": "price", "ts": T0 + k * DT, "instrument": "BTC", "price": price})
        if k == 1:
            lines.append(
                {"type": "position", "ts": T0 + DT, "account": "main",
                 "instrument": "BTC-PERPETUAL", "quantity": 10.0}
            )  # fmt: skip
    path = tmp_path / "rec.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = _replay(path, '[risk]\neval_interval = "1m"\nscenario_interval = "1h"\n')

    def ewm_var(halflife_s: float) -> float:
        lam, m = 0.5 ** (1.0 / halflife_s), n2 - 1
        num = a * a * lam**m * (1 - lam**n1) + 9 * a * a * (1 - lam**m)
        return float(num / (1 - lam ** (n1 + m)) * YEAR_MS / DT)

    x = 10.0 * lines[-1]["price"]  # type: ignore[operator]
    main = report["accounts"]["main"]  # type: ignore[index]
    slow, var = math.sqrt(ewm_var(600.0)), math.sqrt(ewm_var(86_400.0))
    assert report["assets"]["BTC"]["volatility"] == pytest.approx(slow, rel=1e-9)  # type: ignore[index]
    assert main["volatility_usd"] == pytest.approx(x * slow, rel=1e-9)
    assert main["var"]["delta_normal"]["var_usd"] == pytest.approx(
        Z * x * var * math.sqrt(H), rel=1e-9
    )
    assert var < 0.7 * slow  # the two estimators tell different stories here
