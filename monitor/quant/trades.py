"""USD exposure changes as contracts of a linear instrument per underlying (pure numpy).

Shared by the rebalance (:mod:`monitor.quant.budgeting`) and the hedge
(:mod:`monitor.quant.hedging`) suggestions. A linear instrument (spot, perpetual, future)
changes the exposure of its underlying by a fixed ``usd_per_contract`` per contract
(as the report defines it: ``delta_usd`` of spot and perpetuals is ``q x S``, of futures
``q x F``):

- linear (USDC/USDT-margined) perpetual or spot: ``multiplier x price``;
- linear future: ``multiplier x F`` (the future's own price);
- inverse USD-sized perpetual or future (Deribit ``BTC-PERPETUAL``): the contract's USD
  face value (10 for BTC, 1 for ETH at Deribit): a position of ``N`` USD has
  ``delta_usd = N`` (its coin P&L ``N (1/S0 - 1/S)`` is worth ``N dS/S`` in USD).

Linear instruments carry no gamma or vega, so such a trade changes delta only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["LinearTrades", "linear_trades"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LinearTrades:
    """Contracts to trade per underlying (arrays of shape ``(n,)``).

    Attributes
    ----------
    contracts
        ``delta_change_usd / usd_per_contract``: signed contracts (> 0 buy), exact, not
        rounded. NaN where the underlying has no usable instrument (``usd_per_contract``
        0, negative or NaN) and a change is wanted; 0 where no change is wanted.
    contracts_rounded
        ``contracts`` rounded to the nearest multiple of ``lot`` (NaN as ``contracts``;
        equal to ``contracts`` without a lot).
    delta_change_usd
        The exposure change asked for, USD.
    delta_traded_usd
        The exposure change the rounded trade makes, ``contracts_rounded x
        usd_per_contract`` (0 where NaN), USD.
    """

    contracts: FloatArray
    contracts_rounded: FloatArray
    delta_change_usd: FloatArray
    delta_traded_usd: FloatArray


def linear_trades(
    delta_change_usd: npt.ArrayLike,
    usd_per_contract: npt.ArrayLike,
    lot: npt.ArrayLike | None = None,
) -> LinearTrades:
    """Contracts of each underlying's linear instrument that change its exposure as asked.

    Parameters
    ----------
    delta_change_usd
        Shape ``(n,)``: wanted change of ``delta_usd`` per underlying, USD (target - now).
    usd_per_contract
        Shape ``(n,)``: ``delta_usd`` of one contract of the instrument used for that
        underlying, USD per contract (module notes), > 0; NaN or <= 0 = none available.
    lot
        Shape ``(n,)`` or scalar: the venue's minimum trade increment, contracts (> 0);
        ``None``: no rounding.

    Returns
    -------
    LinearTrades
    """
    d = np.asarray(delta_change_usd, dtype=np.float64)
    u = np.asarray(usd_per_contract, dtype=np.float64)
    if d.ndim != 1 or u.shape != d.shape:
        raise ValueError(f"expected two (n,) arrays, got {d.shape} and {u.shape}")
    usable = np.isfinite(u) & (u > 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        c = np.where(usable, d / np.where(usable, u, 1.0), np.nan)
    c[d == 0.0] = 0.0
    if lot is None:
        r = c.copy()
    else:
        step = np.broadcast_to(np.asarray(lot, dtype=np.float64), d.shape)
        if not (np.isfinite(step) & (step > 0.0)).all():
            raise ValueError("lot must be finite and > 0")
        r = np.round(c / step) * step
    traded = np.where(np.isfinite(r), r * np.where(usable, u, 0.0), 0.0)
    return LinearTrades(
        contracts=c, contracts_rounded=r, delta_change_usd=d, delta_traded_usd=traded
    )
