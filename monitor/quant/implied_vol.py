"""Implied volatility from undiscounted Black-76 prices (rate 0), vectorised.

For a venue that sends a price but no IV. The solver follows the structure of Jaeckel's
"Let's Be Rational" (Wilmott, 2015) without its rational initial guesses:

1. Reduce every option to an out-of-the-money call in normalised form: by put-call parity
   the time value ``price - intrinsic`` is the price of the out-of-the-money option of the
   same strike, so with ``x = -|ln(F/K)|`` and ``beta = time value / sqrt(F K)`` the problem
   is ``b(x, s) = beta``, ``b(x, s) = e^(x/2) N(x/s + s/2) - e^(-x/2) N(x/s - s/2)``,
   ``s = vol sqrt(t)``, with ``0 < beta < b_max = e^(x/2)``.
2. Split at the inflection point ``s_c = sqrt(-2x)``. Below it (``beta < b(s_c)``) solve
   ``1/ln b(s) = 1/ln beta``; above it ``ln(b_max - b(s)) = ln(b_max - beta)``, with
   ``b_max - b`` computed as a sum of two positive tails. Both objectives are close to linear
   in ``s``, which the raw price is not in the wings.
3. Start from asymptotic inversions (Mills ratio below, ``b_max - b ~ 2 cosh(x/2) N(-s/2)``
   above) or from the tangent at ``s_c``, whichever is closer (``b`` is convex below ``s_c``
   and concave above, so the tangent bounds the root), then take third-order Householder
   steps, each kept inside a bracket that every evaluation narrows (a step that leaves it is
   replaced by bisection). Stop after a step smaller than ``2**-26`` relative: third-order
   convergence leaves an error near its cube, far below double precision. Typically three
   evaluations (two steps and the small one), at most five on a grid of 5 minutes to 2 years
   and 5% to 300% vol.

Everything is array arithmetic over the options still iterating; there is no Python loop
per option.
"""

from __future__ import annotations

import enum
import math
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr, ndtri

__all__ = ["IVReason", "ImpliedVol", "implied_vol"]

FloatArray = npt.NDArray[np.float64]
ReasonArray = npt.NDArray[np.int8]

_EPS: Final = float(np.finfo(np.float64).eps)
_INV_SQRT_2PI: Final = 1.0 / math.sqrt(2.0 * math.pi)
_LN_SQRT_2PI: Final = 0.5 * math.log(2.0 * math.pi)
# A third-order step of this relative size leaves an error near its cube: far below eps.
_STEP_RTOL: Final = 2.0**-26
_BLOCK: Final = 1 << 14  # options per block: the iteration's temporaries stay in cache


class IVReason(enum.IntEnum):
    """Why :func:`implied_vol` returned what it did, one code per option (``int8``).

    The engine counts them (``np.bincount``); ``IVReason(code).name.lower()`` is the label.

    Attributes
    ----------
    OK
        Solved; the IV reprices the input to the precision the input price carries.
    EXPIRED
        ``t <= 0``: no time left, any volatility gives intrinsic value.
    BELOW_INTRINSIC
        ``price < intrinsic value`` (beyond rounding): no volatility reaches it (a stale or
        crossed quote, or a forward that moved under it).
    NO_TIME_VALUE
        ``price == intrinsic value``: an out-of-the-money option priced 0, or an
        in-the-money one within ``4 eps max(F, K)`` of intrinsic (the rounding of the price
        itself). The IV is undetermined: 0 fits, and so does anything too small to show.
    ABOVE_MAX
        ``price >=`` its upper bound (the forward for a call, the strike for a put): no
        finite volatility reaches it.
    NOT_CONVERGED
        The iteration did not meet its tolerance within ``max_iter`` steps. Not seen on
        prices of options with representable time value; kept so that a failure is counted
        and never returned as a number.
    INVALID_INPUT
        A non-finite input, or ``forward <= 0`` or ``strike <= 0``.
    """

    OK = 0
    EXPIRED = 1
    BELOW_INTRINSIC = 2
    NO_TIME_VALUE = 3
    ABOVE_MAX = 4
    NOT_CONVERGED = 5
    INVALID_INPUT = 6


class ImpliedVol(NamedTuple):
    """Result of :func:`implied_vol`, arrays of the broadcast input shape.

    Attributes
    ----------
    iv
        Annualised implied volatility (decimal, 365-day year); NaN unless ``reason == OK``.
    reason
        :class:`IVReason` codes, ``int8``.
    """

    iv: FloatArray
    reason: ReasonArray


def implied_vol(
    price: npt.ArrayLike,
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t: npt.ArrayLike,
    is_call: npt.ArrayLike,
    *,
    max_iter: int = 30,
) -> ImpliedVol:
    """Black-76 implied volatility (undiscounted, rate 0), vectorised.

    Parameters
    ----------
    price
        Option price, USD per unit of underlying (for an inverse option: coin price x
        forward).
    forward
        Forward the option is priced on, USD.
    strike
        Strike, USD.
    t
        Time to expiry, years of 365 days.
    is_call
        True for calls, False for puts.
    max_iter
        Iteration cap; options still moving after it get ``NOT_CONVERGED``.

    Returns
    -------
    ImpliedVol
        ``(iv, reason)``: float64 IVs (annualised, decimal; NaN where not solved) and
        :class:`IVReason` codes, both of the broadcast shape of the inputs. Where the option
        has time value the IV reprices through :func:`monitor.quant.greeks.black76_price` to the
        input price's own precision (round trip within 1e-10 relative, tested).

    Notes
    -----
    Codes are checked in the order INVALID_INPUT, EXPIRED, BELOW_INTRINSIC, NO_TIME_VALUE,
    ABOVE_MAX; the first that applies is reported.
    """
    arrays = np.broadcast_arrays(
        np.asarray(price, dtype=np.float64),
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(t, dtype=np.float64),
        np.asarray(is_call, dtype=bool),
    )
    shape = arrays[0].shape
    p, f, k, tt = (a.ravel() for a in arrays[:4])
    call = arrays[4].ravel()
    n = p.size
    iv = np.full(n, np.nan)
    reason = np.zeros(n, dtype=np.int8)

    with np.errstate(invalid="ignore"):
        valid = np.isfinite(p) & np.isfinite(f) & np.isfinite(k) & np.isfinite(tt)
        valid &= (f > 0.0) & (k > 0.0)
    reason[~valid] = IVReason.INVALID_INPUT
    expired = valid & (tt <= 0.0)
    reason[expired] = IVReason.EXPIRED
    live = np.flatnonzero(valid & ~expired)

    p, f, k, tt, call = p[live], f[live], k[live], tt[live], call[live]
    intrinsic = np.maximum(np.where(call, f - k, k - f), 0.0)
    time_value = p - intrinsic
    # In the money, price and intrinsic value carry rounding of order eps * max(F, K).
    tol = np.where(intrinsic > 0.0, 4.0 * _EPS * np.maximum(f, k), 0.0)
    x = -np.abs(np.log(f / k))
    beta = time_value / (np.sqrt(f) * np.sqrt(k))
    b_max = np.exp(0.5 * x)
    below = time_value < -tol
    no_tv = ~below & (time_value <= tol)
    above = ~below & ~no_tv & (beta >= b_max)
    code = np.zeros(live.size, dtype=np.int8)
    code[below] = IVReason.BELOW_INTRINSIC
    code[no_tv] = IVReason.NO_TIME_VALUE
    code[above] = IVReason.ABOVE_MAX

    solve = code == 0
    s, converged = _solve_normalised(x[solve], beta[solve], b_max[solve], max_iter)
    vol = np.full(live.size, np.nan)
    vol[solve] = np.where(converged, s / np.sqrt(tt[solve]), np.nan)
    code[np.flatnonzero(solve)[~converged]] = IVReason.NOT_CONVERGED

    iv[live] = vol
    reason[live] = code
    return ImpliedVol(iv.reshape(shape), reason.reshape(shape))


def _solve_normalised(
    x: FloatArray, beta: FloatArray, b_max: FloatArray, max_iter: int
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Solve ``b(x, s) = beta`` for ``s`` (see module docstring), 1-D arrays.

    Requires ``x <= 0`` and ``0 < beta < b_max = exp(x / 2)``. Returns ``s`` and a converged
    mask. Works region by region and in blocks that stay in cache.
    """
    s = np.full(x.size, np.nan)
    converged = np.zeros(x.size, dtype=bool)
    if x.size == 0:
        return s, converged
    s_c = np.sqrt(-2.0 * x)
    b_c = 0.5 * b_max - ndtr(-s_c) / b_max  # b at the inflection point (d1 = 0)
    lower = beta < b_c
    for region, is_lower in ((lower, True), (~lower, False)):
        idx = np.flatnonzero(region)
        for start in range(0, idx.size, _BLOCK):
            i = idx[start : start + _BLOCK]
            s[i], converged[i] = _solve_region(
                x[i], beta[i], b_max[i], s_c[i], b_c[i], is_lower, max_iter
            )
    return s, converged


def _solve_region(
    x: FloatArray,
    beta: FloatArray,
    b_max: FloatArray,
    s_c: FloatArray,
    b_c: FloatArray,
    is_lower: bool,
    max_iter: int,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """Householder iterations for options all below (``is_lower``) or all above ``s_c``."""
    n = x.size
    s_out = np.full(n, np.nan)
    converged = np.zeros(n, dtype=bool)
    inv_b_max = 1.0 / b_max
    # b is convex below s_c and concave above, so the tangent at s_c bounds the root: from
    # above in the lower region, from below in the upper one.
    s_tangent = s_c + (beta - b_c) / (_INV_SQRT_2PI * b_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        if is_lower:
            # Objective 1/ln b = 1/ln beta. Guess from the Mills ratio:
            # ln b ~ -x^2/(2 s^2) - s^2/8 + ln(s^3 / (x^2 sqrt(2 pi))).
            target = np.log(beta)
            ax = -x
            s = ax / np.sqrt(-2.0 * target)
            for _ in range(2):
                rhs = -target - 0.125 * s * s + 3.0 * np.log(s) - 2.0 * np.log(ax)
                rhs -= _LN_SQRT_2PI
                s = np.where(rhs > 0.0, ax / np.sqrt(2.0 * rhs), s)
            lo = np.zeros(n)
            hi = np.where(s_tangent > 0.0, np.minimum(s_tangent, s_c), s_c)
            s = np.fmax(s, s_tangent)
            sign = -1.0  # g = b = b_max N(d1) - N(d2) / b_max
        else:
            # Objective ln(b_max - b) = ln(b_max - beta). Guess from
            # b_max - b ~ (e^(x/2) + e^(-x/2)) N(-s/2) for large s.
            c_beta = b_max - beta
            target = np.log(c_beta)
            s = np.fmax(-2.0 * ndtri(c_beta / (b_max + inv_b_max)), s_tangent)
            lo = np.maximum(s_tangent, s_c)
            hi = np.full(n, np.inf)
            sign = 1.0  # g = b_max - b = b_max N(-d1) + N(d2) / b_max
    s = np.where(np.isfinite(s) & (s >= lo) & (s <= hi), s, hi if is_lower else lo)

    idx = np.arange(n)
    for _ in range(max_iter):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            xs = x / s
            half_s = 0.5 * s
            g = b_max * ndtr(-sign * (xs + half_s))
            g += sign * inv_b_max * ndtr(xs - half_s)
            ln_g = np.log(g)
            r = _INV_SQRT_2PI * np.exp(-0.5 * (xs * xs + half_s * half_s)) / g  # b'/g
            b2 = xs * xs / s - 0.5 * half_s  # b''/b'
            b3 = b2 * b2 - 3.0 * (xs / s) ** 2 - 0.25  # b'''/b'
            # For the objective G(b): G''/G' b' = a1 r and G'''/G' b'^2 = a2 r^2.
            if is_lower:
                inv_ln = 1.0 / ln_g
                a1 = -(1.0 + 2.0 * inv_ln)
                a2 = 2.0 + (6.0 + 6.0 * inv_ln) * inv_ln
                nu = ln_g * (1.0 - ln_g / target) / r  # Newton step
                left = ~(ln_g >= target)  # b < beta (a NaN ln b is an underflowed b)
                a1r = a1 * r
                h3 = a2 * r * r + 3.0 * a1r * b2 + b3
            else:
                nu = (ln_g - target) / r
                left = ln_g > target  # b_max - b > b_max - beta
                a1r = r
                h3 = 2.0 * r * r + 3.0 * r * b2 + b3
            h2 = a1r + b2
            step = nu * (1.0 + 0.5 * h2 * nu) / (1.0 + nu * (h2 + h3 * nu / 6.0))
        np.copyto(lo, s, where=left)
        np.copyto(hi, s, where=~left)
        s_new = s + step
        done = np.abs(step) <= _STEP_RTOL * s
        stray = ~(done | ((s_new > lo) & (s_new < hi)))
        if stray.any():  # bisect, doubling while the bracket is open
            s_new[stray] = np.where(np.isfinite(hi), 0.5 * (lo + hi), 2.0 * s)[stray]
        if done.any():
            s_out[idx[done]] = s_new[done]
            converged[idx[done]] = True
            keep = ~done
            if not keep.any():
                break
            idx, x, s_new, lo, hi = idx[keep], x[keep], s_new[keep], lo[keep], hi[keep]
            b_max, inv_b_max, target = b_max[keep], inv_b_max[keep], target[keep]
        s = s_new
    return s_out, converged
