"""Stressed covariance and the delta-normal VaR on it (pure numpy).

The "risk parity failure" of the seed is volatility and correlation assumptions proven
wrong in a crisis: correlations go to one and volatilities jump. The stressed covariance
puts both in::

    C_s = (1 - w) C + w C_rho      (C_rho: 1 on the diagonal, rho elsewhere)
    S_s = k^2 D C_s D              (D: the estimated volatilities, k: vol_scale)

with defaults ``rho = 0.9``, ``w = 1`` (every pairwise correlation *is* 0.9), ``k = 1.5``.

Positive semi-definiteness: the constant-correlation matrix ``C_rho`` has eigenvalues
``1 + (n - 1) rho`` (eigenvector ``1``) and ``1 - rho`` (``n - 1`` times), so it is PSD
exactly when ``-1 / (n - 1) <= rho <= 1`` (enforced). With ``w = 1`` the stressed matrix
is therefore PSD whatever the estimate was; with ``w < 1`` it is a convex combination of
PSD matrices, PSD when the estimated ``C`` is (a pairwise EWMA estimate need not be:
:func:`monitor.quant.risk.var_delta_normal` then flags ``non_psd``). ``D S D`` keeps PSD.

A hedged book (long BTC, short ETH) *gains* from higher correlation: its stressed VaR can
be below the normal one. That is the stress as defined; ``correlation=0`` gives the
"correlation breakdown" stress that hurts such books.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monitor.quant.risk import (
    DEFAULT_CONFIDENCE,
    DEFAULT_HORIZON,
    DeltaNormalVaR,
    var_delta_normal,
)

__all__ = ["StressedCovariance", "StressedVaR", "stressed_covariance", "stressed_var"]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class StressedCovariance:
    """A stressed covariance (module notes).

    Attributes
    ----------
    cov
        Shape ``(n, n)``: annualised covariance of log returns, decimal^2 per year. NaN in
        the rows and columns of underlyings without a variance (and, for ``weight < 1``,
        where the estimated correlation is unknown).
    vols
        Shape ``(n,)``: stressed volatilities, annualised decimal (``k`` x estimated).
    correlation
        Shape ``(n, n)``: stressed correlation, unit diagonal.
    correlation_level, vol_scale, weight
        ``rho``, ``k`` and ``w`` used.
    """

    cov: FloatArray
    vols: FloatArray
    correlation: FloatArray
    correlation_level: float
    vol_scale: float
    weight: float


def stressed_covariance(
    cov: npt.ArrayLike, correlation: float = 0.9, vol_scale: float = 1.5, weight: float = 1.0
) -> StressedCovariance:
    """Correlations pushed to ``correlation`` and volatilities scaled by ``vol_scale``.

    Parameters
    ----------
    cov
        Shape ``(n, n)``: estimated annualised covariance (NaN = unknown).
    correlation
        Stressed pairwise correlation ``rho``, in ``[-1 / (n - 1), 1]``.
    vol_scale
        Factor ``k`` >= 0 on every volatility.
    weight
        ``w`` in ``[0, 1]``: how far correlations move from the estimate to ``rho``.

    Returns
    -------
    StressedCovariance
    """
    c = np.asarray(cov, dtype=np.float64)
    n = c.shape[0] if c.ndim == 2 else -1
    if c.shape != (n, n):
        raise ValueError(f"cov must be square, got shape {c.shape}")
    low = -1.0 / (n - 1) if n > 1 else -1.0
    if not (math.isfinite(correlation) and low <= correlation <= 1.0):
        raise ValueError(f"correlation must be in [{low:.4g}, 1] for {n} assets (PSD)")
    if not (math.isfinite(vol_scale) and vol_scale >= 0.0):
        raise ValueError(f"vol_scale must be finite and >= 0, got {vol_scale}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    var = np.diagonal(c)
    vols = np.sqrt(np.where(var >= 0.0, var, np.nan))
    target = np.full((n, n), correlation)
    np.fill_diagonal(target, 1.0)
    if weight < 1.0:
        with np.errstate(divide="ignore", invalid="ignore"):
            est = c / np.outer(vols, vols)
        est = np.where(np.outer(vols, vols) > 0.0, est, 0.0)  # zero-variance: no correlation
        est = np.clip(est, -1.0, 1.0)
        corr = (1.0 - weight) * est + weight * target
        np.fill_diagonal(corr, 1.0)
    else:
        corr = target
    sv = vol_scale * vols
    out = corr * np.outer(sv, sv)
    return StressedCovariance(
        cov=out,
        vols=sv,
        correlation=corr,
        correlation_level=correlation,
        vol_scale=vol_scale,
        weight=weight,
    )


@dataclass(frozen=True, slots=True)
class StressedVaR:
    """Delta-normal VaR on the estimated and on the stressed covariance.

    Attributes
    ----------
    normal, stressed
        :class:`monitor.quant.risk.DeltaNormalVaR` of each (USD, same confidence and
        horizon).
    ratio
        ``stressed.var_usd / normal.var_usd`` (NaN when the normal VaR is 0): the figure a
        rule watches.
    covariance
        The stressed covariance used.
    """

    normal: DeltaNormalVaR
    stressed: DeltaNormalVaR
    ratio: float
    covariance: StressedCovariance


def stressed_var(
    x: npt.ArrayLike,
    cov: npt.ArrayLike,
    correlation: float = 0.9,
    vol_scale: float = 1.5,
    weight: float = 1.0,
    confidence: float = DEFAULT_CONFIDENCE,
    horizon: float = DEFAULT_HORIZON,
    *,
    psd: bool = False,
) -> StressedVaR:
    """:func:`monitor.quant.risk.var_delta_normal` on ``cov`` and on its stressed version.

    Parameters
    ----------
    x
        Shape ``(n,)``: exposure per underlying, USD.
    cov
        Shape ``(n, n)``: annualised covariance of log returns.
    correlation, vol_scale, weight
        As :func:`stressed_covariance`.
    confidence, horizon
        As :func:`monitor.quant.risk.var_delta_normal` (99%, one day of a 365-day year).
    psd
        ``cov`` is a fully known PSD repair (:func:`monitor.quant.risk.contributions`):
        the normal VaR does not repair it again. The stressed covariance is always checked.

    Returns
    -------
    StressedVaR
    """
    s = stressed_covariance(cov, correlation, vol_scale, weight)
    normal = var_delta_normal(x, cov, confidence, horizon, psd=psd)
    stressed = var_delta_normal(x, s.cov, confidence, horizon)
    ratio = stressed.var_usd / normal.var_usd if normal.var_usd > 0.0 else math.nan
    return StressedVaR(normal=normal, stressed=stressed, ratio=ratio, covariance=s)
