"""VaR backtesting: is the risk model right? (pure numpy/scipy)

Each observation pairs the realised P&L of a period with the VaR predicted for it at its
start (same horizon, same confidence ``c``). An *exception* is a loss beyond the VaR:
``pnl < -var``. Under a correct model exceptions are independent Bernoulli(``p = 1 - c``).

Realised P&L
    The revaluation of the positions held at the start of the period at the end of it
    (:func:`held_pnl`): trading during the period does not enter, so the P&L is the one
    the VaR was predicted for.

Kupiec's proportion-of-failures test
    With ``x`` exceptions in ``n`` observations and ``p_hat = x / n``::

        LR = -2 [(n - x) ln(1 - p) + x ln p] + 2 [(n - x) ln(1 - p_hat) + x ln p_hat]

    (``0 ln 0 = 0``), asymptotically chi-squared with 1 degree of freedom under the null
    ``P(exception) = p``; the p-value is ``chi2.sf(LR, 1)``. Two-sided: too few exceptions
    (an over-conservative model) also reject.

Basel traffic light
    ``P(X <= x)`` for ``X ~ Binomial(n, p)``: green below 95%, yellow below 99.99%, red
    from 99.99% (Basel Committee, "Supervisory framework for the use of backtesting",
    1996). For 250 observations at 99%: green 0-4, yellow 5-9, red 10 or more. The rule is
    applied to the observations in the window; before ``min_obs`` of them there is no zone
    (with few observations ``P(X <= 0) = c^n`` alone exceeds 95%: under 6 observations at
    99% a clean record would be yellow).

How fast does a wrong model turn red?
    If the realised volatility is ``k`` times the model's (normal P&L), the exception
    probability is ``q = Phi(-z_c / k)`` (:func:`exception_probability`; 0.1224 for
    ``k = 2`` at 99%). :func:`red_probability` gives, by exact recursion over the exception
    count, the probability that the zone has been red at least once by each observation of
    the first window; :func:`observations_to_red` the first observation by which that
    probability reaches a level (99% by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

import numpy as np
import numpy.typing as npt
from scipy.special import bdtr, chdtrc, ndtr, ndtri, xlogy

__all__ = [
    "DEFAULT_MIN_OBS",
    "DEFAULT_WINDOW",
    "ZONES",
    "Backtest",
    "RollingBacktest",
    "Zone",
    "backtest",
    "exception_probability",
    "held_pnl",
    "held_pnl_by",
    "kupiec",
    "observations_to_red",
    "red_probability",
    "rolling_backtest",
    "traffic_light",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Zone = Literal["green", "yellow", "red"]
P = TypeVar("P")
M = TypeVar("M")

#: Zone names by code (``traffic_light`` returns the codes 0, 1, 2; -1 = no zone yet).
ZONES: Final[tuple[Zone, Zone, Zone]] = ("green", "yellow", "red")
#: Basel's window, observations.
DEFAULT_WINDOW: Final = 250
#: Observations in the window before a zone is given (module notes).
DEFAULT_MIN_OBS: Final = 50
GREEN_BELOW: Final = 0.95
YELLOW_BELOW: Final = 0.9999


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


# -- statistics -----------------------------------------------------------------------------


def kupiec(
    exceptions: npt.ArrayLike, n_obs: npt.ArrayLike, confidence: float = 0.99
) -> tuple[FloatArray, FloatArray]:
    """Kupiec's proportion-of-failures likelihood ratio and its p-value.

    Parameters
    ----------
    exceptions, n_obs
        Counts, broadcastable shapes; ``0 <= exceptions <= n_obs``.
    confidence
        VaR confidence ``c``; the null exception probability is ``1 - c``.

    Returns
    -------
    tuple
        ``LR`` (>= 0, dimensionless) and ``chi2.sf(LR, 1)``, of the broadcast shape; NaN
        where ``n_obs == 0``.
    """
    _check_confidence(confidence)
    x = np.asarray(exceptions, dtype=np.float64)
    n = np.asarray(n_obs, dtype=np.float64)
    if (x < 0).any() or (x > n).any():
        raise ValueError("need 0 <= exceptions <= n_obs")
    p = 1.0 - confidence
    with np.errstate(divide="ignore", invalid="ignore"):
        p_hat = np.where(n > 0, x / n, np.nan)
    null = xlogy(n - x, 1.0 - p) + xlogy(x, p)
    alt = xlogy(n - x, 1.0 - p_hat) + xlogy(x, p_hat)
    lr = np.maximum(2.0 * (alt - null), 0.0)  # >= 0 but for rounding
    lr = np.where(n > 0, lr, np.nan)
    pval: FloatArray = np.asarray(chdtrc(1, lr), dtype=np.float64)  # chi2(1) survival
    return np.asarray(lr, dtype=np.float64), pval


def traffic_light(
    exceptions: npt.ArrayLike,
    n_obs: npt.ArrayLike,
    confidence: float = 0.99,
    min_obs: int = 1,
) -> IntArray:
    """Basel zone codes: 0 green, 1 yellow, 2 red, -1 fewer than ``min_obs`` observations.

    Parameters
    ----------
    exceptions, n_obs
        Counts, broadcastable shapes.
    confidence
        VaR confidence ``c`` (exception probability ``1 - c`` under the model).
    min_obs
        Fewest observations that get a zone.

    Returns
    -------
    IntArray
        Broadcast shape: green if ``P(X <= x) < 0.95``, yellow if ``< 0.9999``, else red,
        ``X ~ Binomial(n_obs, 1 - c)``.
    """
    _check_confidence(confidence)
    x = np.asarray(exceptions, dtype=np.int64)
    n = np.asarray(n_obs, dtype=np.int64)
    cdf = bdtr(x, n, 1.0 - confidence)  # binomial CDF
    code = np.where(cdf < GREEN_BELOW, 0, np.where(cdf < YELLOW_BELOW, 1, 2))
    out: IntArray = np.where(n >= max(min_obs, 1), code, -1).astype(np.int64)
    return out


# -- backtests ------------------------------------------------------------------------------


def _exceptions(pnl_usd: npt.ArrayLike, var_usd: npt.ArrayLike) -> tuple[BoolArray, BoolArray]:
    pnl = np.asarray(pnl_usd, dtype=np.float64)
    var = np.asarray(var_usd, dtype=np.float64)
    if pnl.ndim != 1 or var.shape != pnl.shape:
        raise ValueError(f"pnl and var must be (T,) arrays, got {pnl.shape} and {var.shape}")
    valid = np.isfinite(pnl) & np.isfinite(var)
    return valid & (pnl < -var), valid


@dataclass(frozen=True, slots=True)
class Backtest:
    """The backtest over the last ``window`` valid observations.

    Attributes
    ----------
    n_obs
        Observations used (<= ``window``): those with a finite P&L and VaR.
    exceptions
        Losses beyond the VaR (``pnl < -var``) among them.
    expected
        ``n_obs (1 - c)``.
    kupiec_lr, kupiec_p_value
        Kupiec's statistic and p-value (NaN without observations).
    cumulative_probability
        ``P(X <= exceptions)``, ``X ~ Binomial(n_obs, 1 - c)``.
    zone
        ``"green"``, ``"yellow"``, ``"red"``, or None below ``min_obs`` observations.
    confidence, window, min_obs
        The parameters used.
    """

    n_obs: int
    exceptions: int
    expected: float
    kupiec_lr: float
    kupiec_p_value: float
    cumulative_probability: float
    zone: Zone | None
    confidence: float
    window: int
    min_obs: int


def backtest(
    pnl_usd: npt.ArrayLike,
    var_usd: npt.ArrayLike,
    confidence: float = 0.99,
    window: int = DEFAULT_WINDOW,
    min_obs: int = DEFAULT_MIN_OBS,
) -> Backtest:
    """Backtest of the last ``window`` valid observations.

    Parameters
    ----------
    pnl_usd
        Shape ``(T,)``: realised P&L per period, oldest first, USD (:func:`held_pnl`).
    var_usd
        Shape ``(T,)``: the VaR predicted for each period at its start (a positive loss),
        USD. NaN in either array: the period is skipped (no prediction, no P&L).
    confidence
        The VaR's confidence ``c``.
    window, min_obs
        Observations counted, and the fewest that get a zone.

    Returns
    -------
    Backtest
    """
    _check_confidence(confidence)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    exc, valid = _exceptions(pnl_usd, var_usd)
    last = exc[valid][-window:]
    n, x = int(last.size), int(last.sum())
    lr, pv = kupiec(x, n, confidence)
    code = int(traffic_light(x, n, confidence, min_obs))
    return Backtest(
        n_obs=n,
        exceptions=x,
        expected=n * (1.0 - confidence),
        kupiec_lr=float(lr),
        kupiec_p_value=float(pv),
        cumulative_probability=float(bdtr(x, n, 1.0 - confidence)),
        zone=ZONES[code] if code >= 0 else None,
        confidence=confidence,
        window=window,
        min_obs=min_obs,
    )


@dataclass(frozen=True, slots=True)
class RollingBacktest:
    """The backtest as it stood after each observation (arrays of shape ``(T,)``).

    Attributes
    ----------
    exception
        Bool: the observation is an exception.
    exceptions, n_obs
        Exceptions and valid observations in the window ending there (an invalid
        observation repeats the previous figures).
    kupiec_lr, kupiec_p_value
        Kupiec's statistic and p-value of that window (NaN before any observation).
    zone
        Zone code (0 green, 1 yellow, 2 red; -1 below ``min_obs``), names in :data:`ZONES`.
    """

    exception: BoolArray
    exceptions: IntArray
    n_obs: IntArray
    kupiec_lr: FloatArray
    kupiec_p_value: FloatArray
    zone: IntArray


def rolling_backtest(
    pnl_usd: npt.ArrayLike,
    var_usd: npt.ArrayLike,
    confidence: float = 0.99,
    window: int = DEFAULT_WINDOW,
    min_obs: int = DEFAULT_MIN_OBS,
) -> RollingBacktest:
    """:func:`backtest` after every observation, vectorised (parameters as there)."""
    _check_confidence(confidence)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    exc, valid = _exceptions(pnl_usd, var_usd)
    hits = exc[valid].astype(np.int64)
    cum = np.concatenate([[0], np.cumsum(hits)])
    j = np.arange(1, hits.size + 1)  # valid observations so far
    lo = np.maximum(j - window, 0)
    x_valid = cum[j] - cum[lo]
    n_valid = j - lo
    # Map back to every observation: the figures of the last valid one at or before it.
    seen = np.cumsum(valid) - 1  # index into the valid arrays, -1 before the first
    x = np.where(seen >= 0, np.append(x_valid, 0)[seen], 0)
    n = np.where(seen >= 0, np.append(n_valid, 0)[seen], 0)
    lr, pv = kupiec(x, n, confidence)
    return RollingBacktest(
        exception=exc,
        exceptions=x.astype(np.int64),
        n_obs=n.astype(np.int64),
        kupiec_lr=lr,
        kupiec_p_value=pv,
        zone=traffic_light(x, n, confidence, min_obs),
    )


# -- realised P&L ---------------------------------------------------------------------------


def held_pnl(
    quantity: npt.ArrayLike, value_start_usd: npt.ArrayLike, value_end_usd: npt.ArrayLike
) -> FloatArray:
    """P&L of the positions held at the start of a period, revalued at its end.

    Parameters
    ----------
    quantity
        Shape ``(j,)`` or ``(j, k)``: contracts held at the start, per instrument (and
        book); coin collateral counts as a position in the coin's index.
    value_start_usd, value_end_usd
        Shape ``(j,)``: USD value of one contract at the start and end marks (for an
        inverse option the coin mark times the forward; for an inverse perpetual of ``N``
        USD face ``N (S1/S0 - 1)`` at the end and 0 at the start).

    Returns
    -------
    FloatArray
        Shape ``()`` or ``(k,)``: ``sum_j q_j (v_end_j - v_start_j)``, USD. Trades during
        the period, fees and funding are not in it (module notes).
    """
    q = np.asarray(quantity, dtype=np.float64)
    v0 = np.asarray(value_start_usd, dtype=np.float64)
    v1 = np.asarray(value_end_usd, dtype=np.float64)
    if q.ndim not in (1, 2) or v0.shape != (q.shape[0],) or v1.shape != v0.shape:
        raise ValueError(f"quantity {q.shape} and values {v0.shape}, {v1.shape} disagree")
    out: FloatArray = np.asarray((v1 - v0) @ q, dtype=np.float64)
    return out


def held_pnl_by(revalue: Callable[[P, M], float], positions: P, start: M, end: M) -> float:
    """Generic form: ``revalue(positions, end) - revalue(positions, start)``, USD.

    ``revalue`` maps the positions held at the start and a set of marks (prices, IVs, ...)
    to a USD value; both sides use the same positions, so trading does not enter.
    """
    return float(revalue(positions, end)) - float(revalue(positions, start))


# -- how fast a wrong model shows -----------------------------------------------------------


def exception_probability(vol_ratio: float, confidence: float = 0.99) -> float:
    """``Phi(-z_c / k)``: exception probability of a normal P&L whose volatility is ``k``
    times the model's (``vol_ratio``, > 0); ``1 - c`` when ``k = 1``."""
    _check_confidence(confidence)
    if not (math.isfinite(vol_ratio) and vol_ratio > 0.0):
        raise ValueError(f"vol_ratio must be > 0, got {vol_ratio}")
    return float(ndtr(-float(ndtri(confidence)) / vol_ratio))


def red_probability(
    exception_prob: float,
    n_obs: int,
    confidence: float = 0.99,
    min_obs: int = DEFAULT_MIN_OBS,
) -> FloatArray:
    """Probability that the zone has been red at least once by each observation.

    Exact: a recursion over the distribution of the exception count (independent
    exceptions of probability ``exception_prob``), removing at each observation ``t``
    (from ``min_obs``) the mass at counts whose zone is red. Valid within the first window
    (``n_obs <= window``: no observation has left it yet).

    Returns
    -------
    FloatArray
        Shape ``(n_obs,)``: entry ``t - 1`` is ``P(red at some s <= t)``.
    """
    _check_confidence(confidence)
    q = float(exception_prob)
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"exception_prob must be in [0, 1], got {q}")
    # red_min[t]: the smallest exception count whose zone is red after t observations.
    counts = np.arange(n_obs + 1)
    red = traffic_light(counts[None, :], counts[:, None], confidence, min_obs) == 2
    red &= counts[None, :] <= counts[:, None]  # no more exceptions than observations
    red_min = np.where(red.any(axis=1), np.argmax(red, axis=1), n_obs + 1)
    alive = np.zeros(n_obs + 1)  # P(count = x and never red so far)
    alive[0] = 1.0
    out = np.empty(n_obs)
    for t in range(1, n_obs + 1):
        alive[1 : t + 1] = alive[1 : t + 1] * (1.0 - q) + alive[:t] * q
        alive[0] *= 1.0 - q
        alive[red_min[t] :] = 0.0
        out[t - 1] = 1.0 - alive.sum()
    return out


def observations_to_red(
    exception_prob: float,
    confidence: float = 0.99,
    window: int = DEFAULT_WINDOW,
    min_obs: int = DEFAULT_MIN_OBS,
    probability: float = 0.99,
) -> int | None:
    """First observation by which the zone has been red with ``probability``, or None if
    not within the first ``window`` observations (:func:`red_probability`)."""
    pr = red_probability(exception_prob, window, confidence, min_obs)
    hit = np.flatnonzero(pr >= probability)
    return int(hit[0]) + 1 if hit.size else None
