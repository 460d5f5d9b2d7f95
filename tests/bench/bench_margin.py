"""Benchmark: scenario margin, distance to call and stresses on the reference book.

The reference book of bench_evaluate.py, built as ``bench_evaluate.build`` builds it but
straight into the arrays the engine hands the margin stage (no replay): 50 underlyings,
6 expiries x 17 strikes x call/put per underlying (10,200 instruments), 20 accounts holding
1,000 distinct options each (20,000 option positions, deduplicated per instrument into an
(instruments x accounts) quantity matrix) plus a perpetual per underlying. Prints figures;
asserts nothing.

Run on one core: ``OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python tests/bench/bench_margin.py``.

Figures (median and best of ``--repeat`` runs):
  scenario margin   the 35-scenario grid, full revaluation, sum and joint aggregation
  distance to call  scan of 2 x 40 moves and Newton refinement, down and up; once with the
                    venue figures of bench_evaluate (equity 5M, MM 600k: mostly unreachable,
                    the scan alone) and once with headroom at half the joint scenario margin
                    (most accounts refined)
  stresses          three named stresses
  portfolio margin  the per-settlement-currency model (35 scenarios per position, roll and
                    delta shocks)
  distance, model   distance to call with the model's MM recomputed at each scan point
                    (2 x 16 base moves) and refined by regula falsi
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.quant.greeks import black76
from monitor.quant.margin import (
    Aggregation,
    LinearPositions,
    MarginSettings,
    ScenarioMargin,
    Stress,
    distance_to_call,
    distance_to_call_model,
    portfolio_margin,
    scenario_margin,
    stress_pnl,
)
from monitor.quant.risk import OptionPositions

FloatArray = npt.NDArray[np.float64]
N_UND, N_ACC, N_OPT = 50, 20, 20_000
EXPIRIES = [
    dt.datetime(2026, 1, 30, 8, tzinfo=dt.UTC),
    dt.datetime(2026, 2, 27, 8, tzinfo=dt.UTC),
    dt.datetime(2026, 3, 27, 8, tzinfo=dt.UTC),
    dt.datetime(2026, 6, 26, 8, tzinfo=dt.UTC),
    dt.datetime(2026, 9, 25, 8, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 25, 8, tzinfo=dt.UTC),
]
AS_OF = dt.datetime(2026, 1, 1, 0, 2, 1, tzinfo=dt.UTC)


def build(seed: int = 1) -> tuple[FloatArray, OptionPositions, FloatArray, FloatArray, list[str]]:
    """``linear_usd`` (n, k), options, exposure (k, n), covariance (n, n), names."""
    rng = np.random.default_rng(seed)
    names = [f"U{k:02d}" for k in range(N_UND)]
    spot = rng.uniform(10.0, 5_000.0, N_UND)
    t_exp = np.array([(e - AS_OF).total_seconds() / (365.0 * 86_400.0) for e in EXPIRIES])
    mny = np.linspace(0.6, 1.4, 17)
    u, e, m, cp = np.meshgrid(
        np.arange(N_UND),
        np.arange(len(EXPIRIES)),
        np.arange(mny.size),
        [True, False],
        indexing="ij",
    )
    u, e, m, cp = u.ravel(), e.ravel(), m.ravel(), cp.ravel()
    n_inst = u.size
    strike = np.maximum(1.0, np.round(spot[u] * mny[m]))
    qty = np.zeros((n_inst, N_ACC))
    for a in range(N_ACC):  # building the fixture, not the timed code
        pick = rng.choice(n_inst, size=N_OPT // N_ACC, replace=False)
        q = rng.integers(-50, 50, size=pick.size).astype(np.float64)
        qty[pick, a] = np.where(q == 0.0, 1.0, q)
    held = (qty != 0.0).any(axis=1)
    options = OptionPositions(
        underlying=u[held].astype(np.int64),
        forward=spot[u[held]] * 1.001,
        strike=strike[held],
        t=t_exp[e[held]],
        vol=0.5 + 0.3 * (mny[m[held]] - 1.0) ** 2,
        is_call=cp[held],
        quantity=qty[held],
    )
    linear = np.zeros((N_UND, N_ACC))
    linear[np.arange(N_UND), np.arange(N_UND) % N_ACC] = -3.0 * spot
    g = black76(options.forward, options.strike, options.t, options.vol, options.is_call)
    exposure = linear.T.copy()
    np.add.at(
        exposure.T,
        options.underlying,
        (g.delta * spot[options.underlying])[:, None] * options.quantity,
    )
    vols = np.full(N_UND, 0.6)
    cov = (0.5 * np.eye(N_UND) + 0.5) * np.outer(vols, vols)
    return linear, options, exposure, cov, names


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return float(np.median(ms)), float(ms.min()), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    t0 = time.perf_counter()
    linear, options, exposure, cov, names = build()
    print(
        f"book: {N_UND} underlyings, {N_OPT:,} option positions in {options.underlying.size:,} "
        f"instruments + {N_UND} perpetuals, {N_ACC} accounts; built in "
        f"{time.perf_counter() - t0:.1f} s"
    )

    def line(label: str, med: float, best: float) -> None:
        print(f"{label:<34} median {med:7.2f} ms   best {best:7.2f} ms   ({args.repeat} runs)")

    res: dict[str, ScenarioMargin] = {}
    aggregations: tuple[Aggregation, ...] = ("sum", "joint")
    for agg in aggregations:
        settings = MarginSettings(aggregation=agg)

        def run(s: MarginSettings = settings) -> ScenarioMargin:
            return scenario_margin(linear, options, s, names)

        med, best, res[agg] = timed(run, args.repeat)
        line(f"scenario margin (35, {agg})", med, best)

    equity = np.full(N_ACC, 5e6)
    mm = np.full(N_ACC, 6e5)
    med, best, d1 = timed(
        lambda: distance_to_call(equity, mm, linear, options, cov, exposure), args.repeat
    )
    line("distance to call (venue figures)", med, best)
    tight = mm + 0.5 * res["joint"].margin_usd
    med, best, d2 = timed(
        lambda: distance_to_call(tight, mm, linear, options, cov, exposure), args.repeat
    )
    line("distance to call (all refined)", med, best)

    index = options.forward[np.unique(options.underlying, return_index=True)[1]] / 1.001
    perps = LinearPositions(
        underlying=np.arange(N_UND, dtype=np.int64),
        quantity=np.where(linear != 0.0, linear / index[:, None], 0.0),
        t=np.full(N_UND, np.nan),
        inverse=np.zeros(N_UND, dtype=bool),
        rolls=np.ones(N_UND, dtype=bool),
    )
    med, best, pm = timed(
        lambda: portfolio_margin(perps, options, index, names, MarginSettings()), args.repeat
    )
    line("portfolio margin (per currency)", med, best)
    model_repeat = max(1, args.repeat // 5)
    med, best, dm1 = timed(
        lambda: distance_to_call_model(equity, linear, options, perps, index, names),
        model_repeat,
    )
    print(
        f"{'distance, model MM (venue equity)':<34} median {med:7.2f} ms   best {best:7.2f} ms"
        f"   ({model_repeat} runs)"
    )
    tight_eq = pm.maintenance_margin_usd * 1.5
    med, best, dm2 = timed(
        lambda: distance_to_call_model(tight_eq, linear, options, perps, index, names),
        model_repeat,
    )
    print(
        f"{'distance, model MM (all refined)':<34} median {med:7.2f} ms   best {best:7.2f} ms"
        f"   ({model_repeat} runs)"
    )

    stresses = [
        Stress("vol +50%, U00 -20%", {"U00": -0.2}, vol_shift=0.5),
        Stress("all -30%", default_move=-0.3),
        Stress("all +25%, vol -20%", default_move=0.25, vol_shift=-0.2),
    ]
    med, best, st = timed(lambda: stress_pnl(linear, options, stresses, names), args.repeat)
    line("stresses (3)", med, best)

    sm = res["sum"]
    print(
        f"scenario margin, sum: median {np.median(sm.margin_usd):,.0f} USD, max "
        f"{sm.margin_usd.max():,.0f}; joint: median {np.median(res['joint'].margin_usd):,.0f}"
    )
    print(f"  acc00 worst (joint): {res['joint'].worst_scenario[0]}")
    parts = (sm.worst_scenario[0] or "").split(" + ")
    print(f"  acc00 worst (sum, first 3 of {len(parts)}): {' + '.join(parts[:3])}")
    print(
        f"distance, venue figures: reachable down {int(d1.reachable_down.sum())}/{N_ACC}, "
        f"up {int(d1.reachable_up.sum())}/{N_ACC}"
    )
    print(
        f"distance, headroom = half the joint margin: down median {np.nanmedian(d2.down):.4f} "
        f"({np.nanmedian(d2.sigmas_down):.2f} sigma), up median {np.nanmedian(d2.up):.4f} "
        f"({np.nanmedian(d2.sigmas_up):.2f} sigma); reachable down "
        f"{int(d2.reachable_down.sum())}, up {int(d2.reachable_up.sum())}"
    )
    print(
        f"portfolio margin MM: median {np.median(pm.maintenance_margin_usd):,.0f} USD; "
        f"distance with model MM, equity 1.5 x MM: reachable down "
        f"{int(dm2.reachable_down.sum())}, up {int(dm2.reachable_up.sum())}, down median "
        f"{np.nanmedian(dm2.down):.4f}; venue equity: reachable down "
        f"{int(dm1.reachable_down.sum())}, up {int(dm1.reachable_up.sum())}"
    )
    pnl0 = zip(st.names, st.pnl_usd[:, 0].tolist(), strict=True)
    print("stress P&L, acc00: " + ", ".join(f"{n}: {p:,.0f}" for n, p in pnl0))


if __name__ == "__main__":
    main()
