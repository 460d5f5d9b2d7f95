"""Benchmark: Black-76 price + Greeks and implied vol, ours vs QuantLib vs py_vollib_vectorized.

A script, not a test: ``python tests/bench/bench_greeks.py [n]``. Prints figures, asserts
nothing. One core: numpy ufuncs are single-threaded and thread pools are pinned to 1.

Needs the test-only packages QuantLib and ``py_vollib==1.0.1 py_lets_be_rational==1.0.1
py_vollib_vectorized`` (later py_vollib versions fail to run).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
import py_vollib_vectorized as pvv  # noqa: E402
import QuantLib as ql  # noqa: E402
import scipy  # noqa: E402

from monitor.quant.greeks import black76  # noqa: E402
from monitor.quant.implied_vol import IVReason, implied_vol  # noqa: E402

Arr = npt.NDArray[np.float64]


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` runs, seconds."""
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def book(n: int, seed: int = 42) -> tuple[Arr, Arr, Arr, Arr, npt.NDArray[np.bool_]]:
    """A Deribit-like option book: 10 underlyings, strikes around the forward, 1 day .. 1 y."""
    rng = np.random.default_rng(seed)
    forwards = np.array([95_000.0, 3_400.0, 190.0, 0.6, 2.4, 140.0, 6.5, 25.0, 0.17, 580.0])
    f = forwards[rng.integers(0, forwards.size, n)]
    t = rng.uniform(1.0, 365.0, n) / 365.0
    vol = rng.uniform(0.3, 1.2, n)
    k = f * np.exp(rng.normal(0.0, 0.6, n) * vol * np.sqrt(t))
    return f, k, t, vol, rng.random(n) < 0.5


def quantlib_loop(f: Arr, k: Arr, t: Arr, vol: Arr, call: npt.NDArray[np.bool_]) -> None:
    """The same work through QuantLib's BlackCalculator, one option at a time."""
    for i in range(f.size):
        kind = ql.Option.Call if call[i] else ql.Option.Put
        bc = ql.BlackCalculator(
            ql.PlainVanillaPayoff(kind, k[i]), f[i], vol[i] * math.sqrt(t[i]), 1.0
        )
        bc.value()
        bc.delta(f[i])
        bc.gamma(f[i])
        bc.vega(t[i])
        bc.theta(f[i], t[i])
        bc.rho(t[i])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    n_ql = 20_000
    f, k, t, vol, call = book(n)
    flag = np.where(call, "c", "p")
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    print(f"QuantLib {ql.__version__}, {platform.processor() or platform.machine()}, one core")
    print(f"book: {n:,} options (10 underlyings, 1 day .. 1 year, vol 30% .. 120%)\n")

    print("price + delta, gamma, vega, theta, rho")
    black76(f[:1000], k[:1000], t[:1000], vol[:1000], call[:1000])
    ours = best_of(lambda: black76(f, k, t, vol, call), 7)
    out = black76(f, k, t, vol, call)
    ours_out = best_of(lambda: black76(f, k, t, vol, call, out=out), 7)
    rate = n / ours
    print(f"  riskmon black76           {ours * 1e3:8.1f} ms  {rate / 1e6:6.1f} M options/s")
    print(f"  riskmon black76(out=...)  {ours_out * 1e3:8.1f} ms  {n / ours_out / 1e6:6.1f} M/s")

    sl = slice(0, n_ql)
    ql_t = best_of(lambda: quantlib_loop(f[sl], k[sl], t[sl], vol[sl], call[sl]), 3) * n / n_ql
    print(
        f"  QuantLib loop             {ql_t * 1e3:8.1f} ms  {n / ql_t / 1e6:6.2f} M options/s"
        f"  (timed on {n_ql:,}, scaled)  ours x{ql_t / ours:,.0f} faster"
    )

    def vollib() -> None:
        pvv.vectorized_black(flag, f, k, t, 0.0, vol, return_as="numpy")
        pvv.get_all_greeks(flag, f, k, t, 0.0, vol, model="black", return_as="dict")

    pvv.get_all_greeks(flag[:10], f[:10], k[:10], t[:10], 0.0, vol[:10], model="black")  # JIT
    pv_t = best_of(vollib, 3)
    print(
        f"  py_vollib_vectorized      {pv_t * 1e3:8.1f} ms  {n / pv_t / 1e6:6.2f} M options/s"
        f"  ours x{pv_t / ours:,.1f} faster"
    )

    print("\nimplied volatility from the Black-76 prices of the same book")
    price = out.price.copy()
    iv, reason = implied_vol(price, f, k, t, call)
    iv_t = best_of(lambda: implied_vol(price, f, k, t, call), 3)
    solved = reason == IVReason.OK
    err = np.max(np.abs(iv[solved] - vol[solved]) / vol[solved])
    counts = np.bincount(reason, minlength=len(IVReason))
    by_reason = {r.name.lower(): int(c) for r, c in zip(IVReason, counts, strict=True) if c}
    print(f"  riskmon implied_vol       {iv_t * 1e3:8.1f} ms  {n / iv_t / 1e6:6.2f} M options/s")
    print(f"    reasons {by_reason}, max relative error of solved IVs {err:.1e}")
    pvv.vectorized_implied_volatility_black(
        price[:10], f[:10], k[:10], 0.0, t[:10], flag[:10], return_as="numpy"
    )
    pv_iv_t = best_of(
        lambda: pvv.vectorized_implied_volatility_black(
            price, f, k, 0.0, t, flag, on_error="ignore", return_as="numpy"
        ),
        3,
    )
    print(
        f"  py_vollib_vectorized (LBR) {pv_iv_t * 1e3:7.1f} ms  {n / pv_iv_t / 1e6:6.2f} M/s"
        f"  ours x{pv_iv_t / iv_t:,.1f} faster"
    )


if __name__ == "__main__":
    main()
