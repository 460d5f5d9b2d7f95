"""Hedge suggestion: the linear trade per underlying that brings net delta to a target.

Units as the report defines them: ``delta_usd`` per underlying (USD per unit proportional move),
``gamma_usd`` (change of ``delta_usd`` per 1% move from the options' convexity), ``vega``
(USD per vol point). Pure numpy: no clock, no I/O, no logging.

The hedge of underlying ``i`` is ``(target_i - delta_usd_i) / usd_per_contract_i``
contracts of its perpetual or future (:mod:`monitor.quant.trades` for ``usd_per_contract``).
Linear instruments have no convexity and no implied volatility, so the hedged book keeps
the book's ``gamma_usd`` and ``vega`` exactly: the *residual risk* a delta hedge leaves
(the seed's words), reported beside the trade so nobody mistakes a delta-flat book for a
riskless one.

Targets: 0 (flat), or the limit with the book's sign (:func:`limit_target`: an underlying
within its limit is not traded; one beyond ``+L`` is brought back to ``+L``, beyond ``-L``
to ``-L``), or anything the caller passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monitor.quant.trades import LinearTrades, linear_trades

__all__ = ["DeltaHedge", "delta_hedge", "limit_target"]

FloatArray = npt.NDArray[np.float64]


def limit_target(delta_usd: npt.ArrayLike, limit_usd: npt.ArrayLike) -> FloatArray:
    """Target delta that trades only what exceeds each limit: ``clip(delta, -L, L)``.

    Parameters
    ----------
    delta_usd
        Shape ``(n,)``: net ``delta_usd`` per underlying, USD.
    limit_usd
        Shape ``(n,)`` or scalar: absolute delta limit, USD, >= 0; NaN or ``inf`` = no
        limit (target = the current delta, no trade).

    Returns
    -------
    FloatArray
        Shape ``(n,)``, USD.
    """
    d = np.asarray(delta_usd, dtype=np.float64)
    lim = np.broadcast_to(np.asarray(limit_usd, dtype=np.float64), d.shape)
    if (lim < 0.0).any():
        raise ValueError("limits must be >= 0")
    bound = np.where(np.isnan(lim), np.inf, lim)
    out: FloatArray = np.clip(d, -bound, bound)
    return out


@dataclass(frozen=True, slots=True)
class DeltaHedge:
    """A delta hedge per underlying (arrays of shape ``(n,)``).

    Attributes
    ----------
    trades
        Contracts of each underlying's hedge instrument (exact and lot-rounded).
    target_usd
        The net ``delta_usd`` aimed at, USD.
    delta_before_usd
        The book's net ``delta_usd``, USD.
    delta_after_usd
        Net ``delta_usd`` after the exact trade: ``target_usd`` (to rounding); the book's
        delta where the underlying has no hedge instrument.
    delta_after_rounded_usd
        Net ``delta_usd`` after the lot-rounded trade, USD.
    residual_gamma_usd
        ``gamma_usd`` of the hedged book per underlying: the book's (linear hedges carry
        none), USD per 1% move.
    residual_vega_usd
        ``vega`` of the hedged book per underlying: the book's, USD per vol point.
    """

    trades: LinearTrades
    target_usd: FloatArray
    delta_before_usd: FloatArray
    delta_after_usd: FloatArray
    delta_after_rounded_usd: FloatArray
    residual_gamma_usd: FloatArray
    residual_vega_usd: FloatArray


def delta_hedge(
    delta_usd: npt.ArrayLike,
    usd_per_contract: npt.ArrayLike,
    gamma_usd: npt.ArrayLike,
    vega_usd: npt.ArrayLike,
    target_usd: npt.ArrayLike | None = None,
    lot: npt.ArrayLike | None = None,
) -> DeltaHedge:
    """The perpetual/future contracts that bring each underlying's net delta to its target.

    Parameters
    ----------
    delta_usd
        Shape ``(n,)``: the book's net ``delta_usd`` per underlying, USD.
    usd_per_contract
        Shape ``(n,)``: ``delta_usd`` of one contract of the hedge instrument, USD
        (:mod:`monitor.quant.trades`); NaN = none.
    gamma_usd, vega_usd
        Shape ``(n,)``: the book's ``gamma_usd`` (USD per 1% move) and vega (USD per vol
        point) per underlying.
    target_usd
        Shape ``(n,)``: target net delta, USD. Default 0 (flat); :func:`limit_target` for
        "back to the limit".
    lot
        Trade increment of each instrument, contracts (optional).

    Returns
    -------
    DeltaHedge
    """
    d = np.asarray(delta_usd, dtype=np.float64)
    n = d.shape[0]
    tgt = np.zeros(n) if target_usd is None else np.asarray(target_usd, dtype=np.float64)
    g = np.asarray(gamma_usd, dtype=np.float64)
    v = np.asarray(vega_usd, dtype=np.float64)
    for name, a in (("target_usd", tgt), ("gamma_usd", g), ("vega_usd", v)):
        if a.shape != d.shape:
            raise ValueError(f"{name} must have shape {d.shape}, got {a.shape}")
    trades = linear_trades(tgt - d, usd_per_contract, lot)
    u = np.asarray(usd_per_contract, dtype=np.float64)
    exact = np.where(np.isfinite(trades.contracts), trades.contracts * u, 0.0)
    return DeltaHedge(
        trades=trades,
        target_usd=tgt,
        delta_before_usd=d,
        delta_after_usd=d + exact,
        delta_after_rounded_usd=d + trades.delta_traded_usd,
        residual_gamma_usd=g.copy(),
        residual_vega_usd=v.copy(),
    )
