"""Random option books on three underlyings for the margin tests (shared builder)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from monitor.quant.margin import LinearPositions
from monitor.quant.risk import OptionPositions

FloatArray = npt.NDArray[np.float64]
NAMES = ["BTC", "ETH", "SOL"]
INDEX = np.array([90_000.0, 3_000.0, 150.0])


def option_book(
    rng: np.random.Generator,
    options: int,
    books: int,
    *,
    days: Sequence[float],
    log_moneyness: float,
) -> tuple[OptionPositions, LinearPositions, FloatArray]:
    """``options`` options on BTC, ETH and SOL (BTC's settle in coin: inverse), expiries
    drawn from ``days``, strikes within ``exp(+-log_moneyness)`` of the forward, quantities
    per book (60% zero), and a perpetual per underlying per book; returns the options, the
    perpetuals and their USD value per underlying and book."""
    i, k = options, books
    und = rng.integers(0, 3, i)
    fwd = INDEX[und] * rng.uniform(1.0, 1.02, i)
    strike = fwd * np.exp(rng.uniform(-log_moneyness, log_moneyness, i))
    t_days = rng.choice(np.asarray(days, dtype=np.float64), i)
    qty = rng.integers(-20, 10, (i, k)).astype(np.float64)
    qty[rng.random((i, k)) < 0.6] = 0.0
    qty *= np.where(und == 0, 0.1, np.where(und == 1, 1.0, 10.0))[:, None]
    opts = OptionPositions(
        underlying=und,
        forward=fwd,
        strike=strike,
        t=t_days / 365.0,
        vol=rng.uniform(0.4, 1.0, i),
        is_call=rng.random(i) < 0.5,
        quantity=qty,
        inverse=und == 0,
    )
    perp_qty = rng.uniform(-2.0, 2.0, (3, k)) * np.array([1.0, 30.0, 600.0])[:, None]
    linear = LinearPositions(
        underlying=np.arange(3),
        quantity=perp_qty,
        t=np.full(3, np.nan),
        inverse=np.zeros(3, dtype=bool),
        rolls=np.ones(3, dtype=bool),
    )
    return opts, linear, perp_qty * INDEX[:, None]
