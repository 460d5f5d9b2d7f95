"""Rebalance suggestion: the exposures that put every risk share back on its budget.

Risk shares as the report defines them: share ``p_i = x_i (S x)_i / x'Sx``, budget ``b``
(``b_i >= 0``, sum 1). Pure numpy/scipy: no clock, no I/O, no logging.

Risk budgeting (Spinu's convex formulation)
    For a PD covariance ``S`` and ``b > 0`` the strictly convex problem::

        minimise  f(y) = 0.5 y' S y - sum_i b_i log y_i   over y > 0

    has a unique minimiser, where ``grad f = S y - b / y = 0``, i.e. ``y_i (S y)_i = b_i``:
    every Euler contribution is proportional to its budget (and ``y'Sy = sum b = 1``), so
    any positive multiple ``x = k y`` has shares exactly ``b`` (Spinu, "An algorithm for
    computing risk parity weights", 2013). It is solved by Newton's method on ``f``
    (Hessian ``S + diag(b / y^2)``, PD) with a backtracking (Armijo) line search that keeps
    ``y > 0``; once the Newton decrement of the self-concordant ``f / min(b)`` is below 0.3,
    full steps (quadratic convergence, no line search: ``f`` no longer moves beyond
    rounding there). Typically under 10 iterations. ``S`` is divided by its mean variance
    first (the shares do not depend on the scale of ``S``).

Short exposures and hedges
    Each underlying keeps the *sign* of its exposure (``sign``; by default that of the
    current book, long where nothing is held): the problem is solved on ``|x|`` with
    ``S_s = diag(s) S diag(s)``, also PD, and ``x = s y``. Then
    ``x_i (S x)_i = y_i (S_s y)_i = b_i``: a short position gets a positive share equal to
    its budget. There is exactly one such portfolio per sign pattern (Bai, Scheinberg and
    Tütüncü, 2016). Not supported: a budget that is itself negative (a hedge whose purpose
    is to *remove* risk has no risk budget; leave it out of the budget, budget 0, and size
    it with :mod:`monitor.quant.hedging`). An underlying with budget 0 gets exposure 0 (the
    log barrier needs ``b_i > 0``): the rebalance closes it.

Inverse volatility (the simple alternative)
    ``|x_i| proportional to b_i / sigma_i``: each underlying's stand-alone risk
    ``|x_i| sigma_i`` is proportional to its budget; correlations are ignored. With equal
    budgets it is the classic ``1 / sigma_i`` weighting, which is the exact risk-parity
    solution when every pairwise correlation is the same.

Scale
    Both directions are then scaled to keep the account's volatility ``sigma_p`` (USD,
    annualised, ``"volatility"``) or its gross exposure ``sum |x|`` (USD, ``"gross"``) at
    the current book's value (or at ``level_usd``). Shares do not depend on the scale.

Trades
    ``target - now`` per underlying in contracts of its linear instrument:
    :func:`monitor.quant.trades.linear_trades` (``usd_per_contract``, optional ``lot``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from monitor.quant.risk import contributions
from monitor.quant.trades import LinearTrades, linear_trades

__all__ = ["Method", "RebalanceTarget", "ScaleMode", "rebalance_target", "spinu_newton"]

FloatArray = npt.NDArray[np.float64]
Method = Literal["risk_budget", "inverse_vol"]
ScaleMode = Literal["volatility", "gross"]

_MAX_ITER: Final = 100
_DECREMENT_TOL: Final = 1e-28  # squared Newton decrement at which f is at its minimum
_PURE_NEWTON: Final = 0.09  # squared decrement of f / min(b) below which to skip the search
_FLOOR_TOL: Final = 1e-20  # accepted squared decrement when rounding stops the progress
_ARMIJO: Final = 0.25
_MAX_HALVINGS: Final = 60


def spinu_newton(cov: npt.ArrayLike, budget: npt.ArrayLike) -> tuple[FloatArray, int, bool]:
    """Minimise ``0.5 y'Sy - b' log y`` over ``y > 0`` (module notes).

    Parameters
    ----------
    cov
        Shape ``(m, m)``, positive definite (any consistent units, e.g. annualised
        covariance of log returns).
    budget
        Shape ``(m,)``, ``b_i > 0``.

    Returns
    -------
    tuple
        ``y`` (shape ``(m,)``, > 0, in units of ``1 / sqrt(cov)``, with ``y_i (S y)_i =
        b_i``), the number of Newton steps, and whether the squared Newton decrement fell
        below ``1e-28`` (False also when ``cov`` is not PD: then ``y`` is NaN).
    """
    s = np.asarray(cov, dtype=np.float64)
    b = np.asarray(budget, dtype=np.float64)
    m = b.shape[0]
    if s.shape != (m, m) or b.ndim != 1:
        raise ValueError(f"cov must be ({m}, {m}) for a budget of shape {b.shape}")
    if not (np.isfinite(b).all() and (b > 0.0).all()):
        raise ValueError("budget weights must be finite and > 0")
    if not np.isfinite(s).all():
        return np.full(m, np.nan), 0, False
    s = 0.5 * (s + s.T)
    try:
        np.linalg.cholesky(s)
    except np.linalg.LinAlgError:
        return np.full(m, np.nan), 0, False

    def f(y: FloatArray) -> float:
        return 0.5 * float(y @ s @ y) - float(b @ np.log(y))

    y = np.sqrt(b / np.diagonal(s))  # the solution when S is diagonal
    fy = f(y)
    b_min = float(b.min())
    prev = math.inf
    for it in range(1, _MAX_ITER + 1):
        g = s @ y - b / y
        d = -np.linalg.solve(s + np.diag(b / (y * y)), g)
        dec2 = -float(g @ d)
        if dec2 <= _DECREMENT_TOL:
            return y, it - 1, True
        if dec2 < _PURE_NEWTON * b_min:
            # f / min(b) is self-concordant; with its decrement below 0.3 the full step
            # stays in y > 0 and converges quadratically. f itself no longer changes
            # beyond rounding here, so a line search would only stall.
            if dec2 >= prev:  # rounding floor reached
                return y, it - 1, dec2 <= _FLOOR_TOL
            y, prev = y + d, dec2
            continue
        t = 1.0
        neg = d < 0.0
        if neg.any():  # stay inside y > 0
            t = min(1.0, 0.99 * float(np.min(-y[neg] / d[neg])))
        for _ in range(_MAX_HALVINGS):
            cand = y + t * d
            fc = f(cand)
            if fc <= fy - _ARMIJO * t * dec2:
                break
            t *= 0.5
        else:  # no decrease at all: cannot happen for a PD S, kept as a guard
            return y, it - 1, False
        y, fy = cand, fc
    return y, _MAX_ITER, False


@dataclass(frozen=True, slots=True)
class RebalanceTarget:
    """Suggested exposures per underlying (arrays of shape ``(n,)``) and how they were found.

    Attributes
    ----------
    exposure_usd
        Target ``delta_usd`` per underlying, USD; 0 where the budget is 0. NaN everywhere
        when no target exists (covariance of a budgeted underlying unknown or not PD, a
        method that did not converge, or an unknown scale).
    change_usd
        ``exposure_usd - x_now``, USD.
    budget
        The budget used, normalised to sum 1.
    sign
        +1 / -1: the side each underlying is held on in the target.
    sigma_usd
        Volatility of the target book ``sqrt(x'Sx)``, USD annualised.
    gross_usd
        ``sum |exposure_usd|``, USD.
    method, scale
        As asked.
    iterations
        Newton steps (0 for inverse volatility).
    converged
        The solver reached its tolerance (always True for inverse volatility).
    trades
        Contracts per underlying (:func:`monitor.quant.trades.linear_trades`) when
        ``usd_per_contract`` was given, else None.
    """

    exposure_usd: FloatArray
    change_usd: FloatArray
    budget: FloatArray
    sign: FloatArray
    sigma_usd: float
    gross_usd: float
    method: Method
    scale: ScaleMode
    iterations: int
    converged: bool
    trades: LinearTrades | None


def rebalance_target(
    x_now: npt.ArrayLike,
    cov: npt.ArrayLike,
    budget: npt.ArrayLike | None = None,
    *,
    method: Method = "risk_budget",
    scale: ScaleMode = "volatility",
    level_usd: float | None = None,
    sign: npt.ArrayLike | None = None,
    usd_per_contract: npt.ArrayLike | None = None,
    lot: npt.ArrayLike | None = None,
    psd: bool = False,
) -> RebalanceTarget:
    """The exposures that restore the risk budget at the current covariance.

    Parameters
    ----------
    x_now
        Shape ``(n,)``: current exposure per underlying, USD (``delta_usd`` summed).
    cov
        Shape ``(n, n)``: annualised covariance of log returns (NaN = unknown; only the
        budgeted underlyings' block is used, and it must be known and PD).
    budget
        Shape ``(n,)``, weights >= 0 (normalised here). Default: equal over held
        underlyings (``x_now != 0``), as :func:`monitor.quant.risk.contributions`.
    method
        ``"risk_budget"`` (exact, Spinu) or ``"inverse_vol"`` (module notes).
    scale
        Keep ``"volatility"`` (``sqrt(x'Sx)``, USD annualised) or ``"gross"``
        (``sum |x|``, USD) equal to the current book's, or to ``level_usd`` when given.
    level_usd
        The volatility or gross exposure of the target, USD (default: the current book's,
        from :func:`monitor.quant.risk.contributions` for ``"volatility"``).
    sign
        Shape ``(n,)``: side of each underlying (> 0 long, < 0 short). Default: the current
        side, long where nothing is held.
    usd_per_contract, lot
        Shape ``(n,)``: ``delta_usd`` of one contract of each underlying's linear
        instrument (USD) and its trade increment (contracts); when given, ``trades`` holds
        the contracts that take ``x_now`` to the target.
    psd
        ``cov`` is a fully known block of :func:`monitor.quant.risk.psd_covariance`'s
        output: the volatilities are computed without repairing it again (the same figures).

    Returns
    -------
    RebalanceTarget
    """
    x = np.asarray(x_now, dtype=np.float64)
    n = x.shape[0]
    c = np.asarray(cov, dtype=np.float64)
    if x.ndim != 1 or c.shape != (n, n) or not np.isfinite(x).all():
        raise ValueError(f"x_now must be finite (n,) and cov (n, n); got {x.shape}, {c.shape}")
    b = (x != 0.0).astype(np.float64) if budget is None else np.asarray(budget, np.float64)
    if b.shape != (n,) or not np.isfinite(b).all() or (b < 0.0).any():
        raise ValueError("budget must be (n,), finite and >= 0")
    if b.sum() <= 0.0:
        raise ValueError("budget has no positive weight")
    b = b / b.sum()
    if sign is None:
        s = np.where(x < 0.0, -1.0, 1.0)
    else:
        s = np.where(np.asarray(sign, dtype=np.float64) < 0.0, -1.0, 1.0)
        if s.shape != (n,):
            raise ValueError(f"sign must have shape ({n},)")
    idx = np.flatnonzero(b > 0.0)
    sub = c[np.ix_(idx, idx)] * np.outer(s[idx], s[idx])  # S_s on the budgeted block
    y = np.zeros(n)
    if method == "risk_budget":
        norm = float(np.mean(np.diagonal(sub))) if np.isfinite(sub).all() else math.nan
        ok = math.isfinite(norm) and norm > 0.0
        y_sub, iterations, converged = (
            spinu_newton(sub / norm, b[idx]) if ok else (np.full(idx.size, np.nan), 0, False)
        )
    elif method == "inverse_vol":
        var = np.diagonal(sub)
        ok = bool(np.isfinite(var).all() and (var > 0.0).all())
        y_sub = b[idx] / np.sqrt(var) if ok else np.full(idx.size, np.nan)
        iterations, converged = 0, ok
    else:
        raise ValueError(f"method must be 'risk_budget' or 'inverse_vol', got {method!r}")
    y[idx] = y_sub
    direction = s * y  # any positive multiple has the same shares

    if scale == "volatility":
        level = contributions(x, c, psd=psd).sigma_usd if level_usd is None else level_usd
        sub_c = c[np.ix_(idx, idx)]
        unit = math.sqrt(max(float(direction[idx] @ sub_c @ direction[idx]), 0.0))
    elif scale == "gross":
        level = float(np.abs(x).sum()) if level_usd is None else level_usd
        unit = float(np.abs(direction).sum())
    else:
        raise ValueError(f"scale must be 'volatility' or 'gross', got {scale!r}")
    if not (math.isfinite(level) and level >= 0.0):
        raise ValueError(f"level must be finite and >= 0, got {level}")
    target = direction * (level / unit) if converged and unit > 0.0 else np.full(n, np.nan)
    sigma = contributions(target, c, psd=psd).sigma_usd if np.isfinite(target).all() else math.nan
    change = target - x
    return RebalanceTarget(
        exposure_usd=target,
        change_usd=change,
        budget=b,
        sign=s,
        sigma_usd=sigma,
        gross_usd=float(np.abs(target).sum()),
        method=method,
        scale=scale,
        iterations=iterations,
        converged=converged,
        trades=None if usd_per_contract is None else linear_trades(change, usd_per_contract, lot),
    )
