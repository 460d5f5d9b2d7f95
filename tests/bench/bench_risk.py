"""Benchmark: contributions, parametric VaR and full-revaluation scenario P&L.

Prints figures; asserts nothing. Run on one core:
``OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python tests/bench/bench_risk.py``.

Figures printed (best of ``--repeat`` runs):
  parametric   contributions, delta-normal and delta-gamma VaR, regime figures, 50 underlyings
  scenarios    ``scenario_returns`` for 50 underlyings x ``--scenarios``
  revalue      ``--positions`` option positions in ``--accounts`` accounts x ``--scenarios``:
               one row per position (worst case), then deduplicated to ``--instruments``
               instruments with a (instruments x accounts) quantity matrix (how the engine
               should call it); peak traced memory shows the chunking bound
  var          ``var_full_revaluation`` over the (scenarios x accounts) P&L
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from monitor.quant.greeks import black76
from monitor.quant.regime import regime_figures
from monitor.quant.risk import (
    OptionPositions,
    ScenarioPnL,
    contributions,
    revalue,
    scenario_returns,
    var_delta_gamma,
    var_delta_normal,
    var_full_revaluation,
)

H = 1.0 / 365.0


def best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--underlyings", type=int, default=50)
    ap.add_argument("--positions", type=int, default=20_000)
    ap.add_argument("--instruments", type=int, default=5_000)
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--scenarios", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n, m, k = args.underlyings, args.scenarios, args.accounts
    rng = np.random.default_rng(42)

    # Covariance: 3 factors + idiosyncratic, vols 40%..120%.
    load = rng.normal(0.0, 1.0, (n, 3)) * [0.5, 0.2, 0.1]
    load[:, 0] = np.abs(load[:, 0]) + 0.3
    corr = load @ load.T
    corr += np.diag(np.maximum(1.0 - np.diag(corr), 0.05))
    sd = np.sqrt(np.diag(corr))
    corr /= np.outer(sd, sd)
    vol = rng.uniform(0.4, 1.2, n)
    cov = corr * np.outer(vol, vol)
    # Option book: instruments on the forward, strikes 50%..150%, expiries 1 day..1 year.
    ni, npos = args.instruments, args.positions
    und = rng.integers(0, n, ni)
    fwd = rng.uniform(10.0, 100_000.0, n)[und]
    strike = fwd * rng.uniform(0.5, 1.5, ni)
    t_exp = rng.uniform(1 / 365, 1.0, ni)
    iv = rng.uniform(0.3, 1.2, ni)
    call = rng.random(ni) < 0.5
    pos_inst = rng.integers(0, ni, npos)
    pos_acc = rng.integers(0, k, npos)
    pos_qty = rng.normal(0.0, 10.0, npos)
    one_hot = np.zeros((npos, k))
    one_hot[np.arange(npos), pos_acc] = pos_qty
    per_position = OptionPositions(
        und[pos_inst],
        fwd[pos_inst],
        strike[pos_inst],
        t_exp[pos_inst],
        iv[pos_inst],
        call[pos_inst],
        one_hot,
    )
    qmat = np.zeros((ni, k))
    np.add.at(qmat, (pos_inst, pos_acc), pos_qty)
    held = np.flatnonzero((qmat != 0).any(axis=1))
    dedup = OptionPositions(
        und[held], fwd[held], strike[held], t_exp[held], iv[held], call[held], qmat[held]
    )
    lin = rng.normal(0.0, 1e6, (n, k))  # spot/perp/futures USD per underlying and account

    # The same book's exposure (index = forward here) and gamma, so the VaRs compare.
    g = black76(dedup.forward, dedup.strike, dedup.t, dedup.vol, dedup.is_call)
    q_tot = dedup.quantity.sum(axis=1)
    x = lin.sum(axis=1) + np.bincount(dedup.underlying, q_tot * g.delta * dedup.forward, n)
    gamma_cash = np.bincount(dedup.underlying, q_tot * g.gamma * dedup.forward**2, n)

    print(f"parametric, {n} underlyings (best of {args.repeat} x 200 calls)")
    calls: dict[str, Callable[[], object]] = {
        "contributions": lambda: contributions(x, cov),
        "var_delta_normal": lambda: var_delta_normal(x, cov),
        "var_delta_gamma": lambda: var_delta_gamma(x, gamma_cash, cov),
        "regime_figures": lambda: regime_figures(vol, vol * 1.1, corr, vol * 0.9),
    }
    for name, fn in calls.items():

        def loop(fn: Callable[[], object] = fn) -> None:
            for _ in range(200):
                fn()

        t, _ = best(loop, args.repeat)
        print(f"  {name:<18} {t / 200 * 1e6:9.1f} us/call")
    c = contributions(x, cov)
    dn = var_delta_normal(x, cov)
    dg = var_delta_gamma(x, gamma_cash, cov)
    print(
        f"  sigma_p {c.sigma_usd:,.0f} USD/yr, max|drift| {c.max_abs_drift:.3f}, "
        f"half-L1 {c.half_l1:.3f}; VaR99 1d delta-normal {dn.var_usd:,.0f} "
        f"(ES {dn.es_usd:,.0f}), delta-gamma {dg.var_usd:,.0f} (ES {dg.es_usd:,.0f}, "
        f"skew {dg.skewness:.2f}, cf_monotone {dg.cf_monotone})"
    )

    t, sc = best(lambda: scenario_returns(cov, H, m, seed=0), args.repeat)
    print(f"scenarios: scenario_returns {n} x {m}: {t * 1e3:.2f} ms")
    r = sc.returns

    print(f"revalue: {npos:,} option positions, {k} accounts, {m:,} scenarios")
    for label, book in (
        (f"per position ({npos:,} rows)", per_position),
        (f"deduplicated ({held.size:,} instruments)", dedup),
    ):

        def run(book: OptionPositions = book) -> ScenarioPnL:
            return revalue(r, H, lin, book)

        t, res = best(run, args.repeat)
        tracemalloc.start()
        revalue(r, H, lin, book)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        rows = book.underlying.size
        print(
            f"  {label:<34} {t * 1e3:8.1f} ms/call  "
            f"{rows * m / t / 1e6:6.1f} M option-scenarios/s  peak {peak / 2**20:5.1f} MiB"
        )
    pnl = res.pnl_usd
    t, v = best(lambda: var_full_revaluation(pnl), args.repeat)
    print(f"var: var_full_revaluation ({m:,} x {k}): {t * 1e6:.1f} us")
    tot = var_full_revaluation(pnl.sum(axis=1))
    print(
        f"  book VaR99 1d full revaluation {float(tot.var_usd):,.0f} USD, "
        f"ES {float(tot.es_usd):,.0f}; "
        f"largest account VaR {float(v.var_usd.max()):,.0f}"
    )


if __name__ == "__main__":
    main()
