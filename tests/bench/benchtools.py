"""What the benchmarks share: a rate for the venue parsers, the reference book.

The reference book (``build()``): 50 underlyings, 20,000 option positions (plus a perpetual
hedge per underlying) over 20 accounts, marked with venue IVs, warm estimator. Its sizes are
parameters, so ``bench_scaling.py`` builds the same book larger and smaller.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np

from monitor.engine.actions import ActionSettings
from monitor.engine.core import Engine, EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.model.events import AccountEvent, Event, PositionEvent, PriceEvent
from monitor.rules.config import DEFAULT_RULES
from monitor.rules.pack import rule_engine

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
N_UND, N_ACC, N_OPT = 50, 20, 20_000
EXPIRIES = ["30JAN26", "27FEB26", "27MAR26", "26JUN26", "25SEP26", "25DEC26"]
STRIKES = 17


def expiries_after(ms: int) -> list[str]:
    """The book's six expiries laid out from ``ms`` (epoch ms) as :data:`EXPIRIES` is from
    ``T0``: the last Fridays of the first month whose last Friday is still ahead and of the
    months 1, 2, 5, 8 and 11 after it (``expiries_after(T0) == EXPIRIES``). A live feed
    uses them so that its options are not already expired."""
    start = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).date()

    def last_friday(months_ahead: int) -> dt.date:
        y, m = divmod(start.month - 1 + months_ahead + 1, 12)  # the month after it
        last = dt.date(start.year + y, m + 1, 1) - dt.timedelta(days=1)
        return last - dt.timedelta(days=(last.weekday() - 4) % 7)

    first = 0 if last_friday(0) > start else 1
    return [last_friday(first + k).strftime("%d%b%y").upper() for k in (0, 1, 2, 5, 8, 11)]


def rate(fn: Callable[[bytes], object], msgs: list[bytes], repeat: int) -> float:
    """Messages per second of ``fn`` over ``msgs``, the best of ``repeat`` passes."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for m in msgs:
            fn(m)
        best = min(best, time.perf_counter() - t0)
    return len(msgs) / best


def book_events(
    seed: int = 1,
    *,
    underlyings: int = N_UND,
    accounts: int = N_ACC,
    options: int = N_OPT,
    expiries: Sequence[str] = EXPIRIES,
) -> list[Event]:
    """The reference book's events (see :func:`build`): 120 s of index prices from ``T0``,
    then at ``T0 + 120 s`` the option and perpetual prices, positions and account figures."""
    rng = np.random.default_rng(seed)
    unds = [f"U{k:02d}" for k in range(underlyings)]
    spot = dict(zip(unds, rng.uniform(10.0, 5_000.0, underlyings), strict=True))
    per_account = options // accounts
    strikes = max(STRIKES, -(-per_account // (2 * len(expiries) * underlyings)))
    events: list[Event] = []
    # Warm the estimator: 120 one-second samples of correlated index moves.
    chol = np.linalg.cholesky(0.5 * np.eye(underlyings) + 0.5)
    level = np.array([spot[u] for u in unds])
    for k in range(120):
        level = level * np.exp(0.002 * (chol @ rng.standard_normal(underlyings)))
        events += [
            PriceEvent(T0 + 1_000 * k, u, float(p)) for u, p in zip(unds, level, strict=True)
        ]
    ts = T0 + 120_000
    names: list[str] = []
    for u, s in zip(unds, level, strict=True):
        for exp in expiries:
            for m in np.linspace(0.6, 1.4, strikes):
                strike = max(1, round(float(s * m)))
                for cp in "CP":
                    name = f"{u}_USDC-{exp}-{strike}-{cp}"
                    names.append(name)
                    iv = 0.5 + 0.3 * (m - 1.0) ** 2
                    events.append(PriceEvent(ts, name, float(s) * 0.05, iv, float(s) * 1.001))
        events.append(PriceEvent(ts, f"{u}-PERPETUAL", float(s)))
    for a in range(accounts):
        for p in rng.choice(len(names), size=per_account, replace=False):
            qty = float(rng.integers(-50, 50) or 1)
            events.append(PositionEvent(ts, f"acc{a:02d}", names[p], qty))
    for k, u in enumerate(unds):
        events.append(PositionEvent(ts, f"acc{k % accounts:02d}", f"{u}-PERPETUAL", -3.0))
    for a in range(accounts):
        events.append(AccountEvent(ts, f"acc{a:02d}", 5e6, 1e6, 6e5))
    return events


def build(
    seed: int = 1,
    scenarios: int = 1_000,
    *,
    rules: bool = False,
    executor: Executor | None = None,
    underlyings: int = N_UND,
    accounts: int = N_ACC,
    options: int = N_OPT,
) -> Engine:
    """The reference book's engine, every event applied, not yet evaluated (its clock is
    at ``T0 + 120 s``: evaluate it from ``T0 + 121 s``).

    Each underlying lists 6 expiries x ``STRIKES`` strikes x call/put (more strikes when
    ``options / accounts`` would exceed that); each account holds ``options / accounts``
    distinct options drawn from all of them (accounts overlap, as desks do) and every
    underlying's perpetual is held short by one account.
    """
    settings = EngineSettings(
        sample_interval_ms=1_000,
        halflife_ms=60_000,
        fast_halflife_ms=10_000,
        warmup_ms=10_000,
        max_gap_ms=60_000,
        eval_interval_ms=250,
    )
    # A scenario interval longer than the run: the timed evaluations never include it.
    # Advisory sections refresh as in the daemon (risk.scenario_interval, 5 s by default).
    risk = RiskSettings(
        var_scenarios=scenarios,
        scenario_interval_ms=10**12,
        actions=ActionSettings(refresh_ms=5_000, refresh_spread=20),
    )
    eng = Engine(
        settings,
        risk=risk,
        rules=rule_engine(DEFAULT_RULES, {}) if rules else None,
        scenario_executor=executor,
    )
    events = book_events(seed, underlyings=underlyings, accounts=accounts, options=options)
    rejected = eng.replay(events, "bench")
    assert not rejected, rejected[:3]
    return eng
