"""Black-76 option pricing and Greeks on the forward, vectorised over numpy arrays.

Crypto venues price options on the forward (Deribit's ``underlying_price``) with no
discounting, so everything here is undiscounted Black-76 (rate 0). Units (riskmon's
throughout):

- ``forward``, ``strike``, prices: USD per one unit of underlying (one BTC).
- ``t``: years of 365 days (crypto trades every day). ``vol``: annualised decimal (0.55).
- ``delta``: underlying units per unit held; ``gamma``: underlying units per 1 USD move of
  the forward; ``vega``: USD per vol point (0.01); ``theta``: USD per calendar day, capped at
  the time value that remains; ``rho``: USD per rate point (0.01), see :func:`black76`.

Inverse (coin-quoted) options such as Deribit's BTC and ETH options are the same contracts
with the premium paid in coin: :func:`inverse_price` gives the coin price and
:func:`coin_delta` the delta a coin-margined account carries.

All functions take array-likes that broadcast against each other and return float64 arrays
of the broadcast shape; there is no Python loop per option.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

__all__ = [
    "DAYS_PER_YEAR",
    "Black76",
    "black76",
    "black76_price",
    "coin_delta",
    "inverse_price",
]

FloatArray = npt.NDArray[np.float64]

#: Days in the year that ``t`` and ``vol`` are expressed in.
DAYS_PER_YEAR: Final = 365.0
_POINT: Final = 0.01  # one vol point, one rate point
_INV_SQRT_2PI: Final = 1.0 / math.sqrt(2.0 * math.pi)
_THETA_SCALE: Final = -0.5 / DAYS_PER_YEAR
# Below this total standard deviation the option is treated as expired: 1/sd would overflow
# and d1 = 0 * inf would be NaN at the money. No market quantity lives down there.
_SD_MIN: Final = 1e-300


class Black76(NamedTuple):
    """Price and Greeks of one unit of underlying, arrays of the broadcast input shape.

    Attributes
    ----------
    price
        USD (undiscounted Black-76 on the forward).
    delta
        dV/dF, underlying units per unit (call in [0, 1], put in [-1, 0]).
    gamma
        d2V/dF2, underlying units per 1 USD move of the forward.
    vega
        dV/dvol, USD per vol point (0.01).
    theta
        USD per calendar day, <= 0: ``-min(|dV/dt| / 365, price - intrinsic)``. The first
        term is the analytic Black theta; the cap means that in an option's last day theta
        is the value left to lose, never more decay than the premium that remains
        (Deribit's rule: "minimum of 1-day theta and the option's lifetime theta").
    rho
        USD per rate point (0.01): dV/dr at r = 0 holding the underlying price fixed (the
        forward moves with the rate), ``K t N(d2)`` for a call, ``-K t N(-d2)`` for a put,
        divided by 100. This is QuantLib's ``BlackCalculator.rho`` per point and the ``rho``
        Deribit publishes; the book's value does not depend on it (r = 0), it is reported for
        comparison only. Holding the forward fixed instead would give ``-t V / 100``.
    """

    price: FloatArray
    delta: FloatArray
    gamma: FloatArray
    vega: FloatArray
    theta: FloatArray
    rho: FloatArray


def _as_f64(x: npt.ArrayLike) -> FloatArray:
    return np.asarray(x, dtype=np.float64)


def black76(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t: npt.ArrayLike,
    vol: npt.ArrayLike,
    is_call: npt.ArrayLike,
    *,
    out: Black76 | None = None,
) -> Black76:
    """Black-76 price and Greeks per one unit of underlying, rate 0, vectorised.

    Parameters
    ----------
    forward
        Forward price of the underlying, USD, > 0 (Deribit's ``underlying_price``).
    strike
        Strike, USD, > 0.
    t
        Time to expiry, years of 365 days. ``t <= 0`` means expired.
    vol
        Implied volatility, annualised decimal (0.55 = 55%). ``vol <= 0`` prices at
        intrinsic value.
    is_call
        True for calls, False for puts.
    out
        Optional preallocated float64 arrays of the broadcast shape to write into, sharing
        no memory with the inputs (saves six allocations when a book is revalued many times
        a second). Returned as given.

    Returns
    -------
    Black76
        ``price, delta, gamma, vega, theta, rho``, float64 arrays of the broadcast shape of
        the inputs. Units: see :class:`Black76`.

    Notes
    -----
    Expired (``t <= 0``, whatever ``vol``, even NaN), zero-volatility and
    ``vol * sqrt(t) < 1e-300`` options are worth their intrinsic value
    ``max(+-(F - K), 0)``; their delta is +-1 in the money, 0 out of the money and +-0.5
    exactly at the money (the limit of ``N(d1)`` as ``vol * sqrt(t)`` goes to 0, which keeps
    ``delta_call - delta_put = 1``); gamma, vega, theta and rho are 0. Otherwise nothing is
    NaN unless an input is NaN.

    Calls and puts are both computed as ``w (F N(w d1) - K N(w d2))`` with ``w = +-1``, so
    out-of-the-money tails keep their relative precision (no ``1 - N(d)``).
    """
    f = _as_f64(forward)
    k = _as_f64(strike)
    tt = _as_f64(t)
    sig = _as_f64(vol)
    call = np.asarray(is_call, dtype=bool)
    shape = np.broadcast_shapes(f.shape, k.shape, tt.shape, sig.shape, call.shape)

    if out is None:
        res = Black76(*(np.empty(shape) for _ in range(6)))
    else:
        for a in out:
            if a.shape != shape or a.dtype != np.float64:
                raise ValueError(f"out arrays must be float64 of shape {shape}")
        res = out
    price, delta, gamma, vega, theta, rho = res
    w = np.empty(shape)  # +1 call, -1 put
    s1 = np.empty(shape)
    s2 = np.empty(shape)

    np.copyto(w, -1.0)
    np.copyto(w, 1.0, where=call)
    np.maximum(tt, 0.0, out=rho)
    np.sqrt(rho, out=rho)  # rho <- sqrt(t)
    np.multiply(sig, rho, out=gamma)  # gamma <- sd = vol sqrt(t)
    # Expired whatever the vol (even NaN); otherwise a NaN vol or t propagates.
    dead = gamma <= _SD_MIN
    dead |= rho == 0.0
    any_dead = bool(dead.any())
    if any_dead:
        np.copyto(gamma, 1.0, where=dead)  # harmless sd; results overwritten below

    np.divide(f, k, out=s1)
    np.log(s1, out=s1)
    np.divide(1.0, gamma, out=s2)  # s2 <- 1/sd
    s1 *= s2
    np.multiply(gamma, 0.5, out=vega)
    s1 += vega  # s1 <- d1
    np.multiply(s1, s1, out=theta)
    theta *= -0.5
    np.exp(theta, out=theta)
    theta *= _INV_SQRT_2PI  # theta <- pdf(d1)
    np.subtract(s1, gamma, out=delta)  # delta <- d2
    delta *= w
    ndtr(delta, out=delta)  # delta <- N(w d2)
    s1 *= w
    ndtr(s1, out=s1)  # s1 <- N(w d1)

    np.multiply(f, theta, out=vega)  # vega <- F pdf(d1)
    np.multiply(theta, s2, out=gamma)
    gamma /= f  # gamma = pdf / (F sd)
    np.multiply(vega, sig, out=theta)
    theta *= sig
    theta *= s2
    theta *= _THETA_SCALE  # theta = -F pdf vol^2 / (2 sd) / 365 = -F pdf vol / (2 sqrt t) / 365
    vega *= rho
    vega *= _POINT  # vega = F pdf sqrt(t) / 100

    np.multiply(k, delta, out=s2)  # s2 <- K N(w d2)
    rho *= rho  # rho <- t
    rho *= s2
    rho *= w
    rho *= _POINT  # rho = w K t N(w d2) / 100
    np.multiply(f, s1, out=price)
    price -= s2
    price *= w  # price = w (F N(w d1) - K N(w d2))
    np.multiply(w, s1, out=delta)  # delta = w N(w d1)

    np.subtract(f, k, out=s1)
    s1 *= w
    np.maximum(s1, 0.0, out=s1)  # s1 <- intrinsic
    np.subtract(s1, price, out=s2)  # s2 <- -(time value)
    np.minimum(s2, 0.0, out=s2)
    np.maximum(theta, s2, out=theta)  # never lose more than the time value left

    if any_dead:
        np.copyto(price, s1, where=dead)
        np.subtract(f, k, out=s2)
        s2 *= w
        np.sign(s2, out=s2)
        s2 += 1.0
        s2 *= 0.5
        s2 *= w  # w * (1, 1/2, 0) in / at / out of the money
        s2 += 0.0  # -0.0 -> 0.0
        np.copyto(delta, s2, where=dead)
        for a in (gamma, vega, theta, rho):
            np.copyto(a, 0.0, where=dead)
    return res


def black76_price(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t: npt.ArrayLike,
    vol: npt.ArrayLike,
    is_call: npt.ArrayLike,
) -> FloatArray:
    """Undiscounted Black-76 price, USD per underlying unit. Shapes broadcast.

    Same inputs and price as :func:`black76` without the Greeks. At ``t <= 0`` or
    ``vol <= 0`` the price is intrinsic value.
    """
    f = _as_f64(forward)
    k = _as_f64(strike)
    sig = _as_f64(vol)
    w = np.where(np.asarray(is_call, dtype=bool), 1.0, -1.0)
    sqrt_t = np.sqrt(np.maximum(_as_f64(t), 0.0))
    sd = sig * sqrt_t
    dead = (sd <= _SD_MIN) | (sqrt_t == 0.0)
    safe_sd = np.where(dead, 1.0, sd)
    d1 = np.log(f / k) / safe_sd + 0.5 * safe_sd
    priced = w * (f * ndtr(w * d1) - k * ndtr(w * (d1 - safe_sd)))
    intrinsic = np.maximum(w * (f - k), 0.0)
    out: FloatArray = np.where(dead, intrinsic, priced)
    return out


def inverse_price(usd_price: npt.ArrayLike, forward: npt.ArrayLike) -> FloatArray:
    """Coin price of an inverse (coin-quoted) option: ``usd_price / forward``.

    Parameters
    ----------
    usd_price
        Option value, USD per unit of underlying (``Black76.price``).
    forward
        The forward the option is priced on, USD (Deribit's ``underlying_price``).

    Returns
    -------
    FloatArray
        Coin (BTC, ETH) per unit of underlying: what Deribit quotes as ``mark_price``.
        Inversely, USD value = coin price x forward.
    """
    out: FloatArray = np.divide(_as_f64(usd_price), _as_f64(forward))
    return out


def coin_delta(
    delta: npt.ArrayLike, usd_price: npt.ArrayLike, forward: npt.ArrayLike
) -> FloatArray:
    """Coin-terms delta of an inverse option: ``delta - usd_price / forward``.

    Parameters
    ----------
    delta
        Black-76 delta (``Black76.delta``), underlying units per unit.
    usd_price
        Option value, USD per unit (``Black76.price``).
    forward
        The forward the option is priced on, USD.

    Returns
    -------
    FloatArray
        Coin (underlying units) per unit held. With ``V`` the USD value and ``c = V / F`` the
        coin value, this is ``F dc/dF = delta - c``: the change of the position's coin value
        for a relative move of the forward, i.e. the delta a coin-margined account carries,
        and what Deribit sums into the account's ``delta_total`` ("Net Transaction Delta =
        Black-Scholes delta - mark price"). Deribit's per-instrument ticker
        ``greeks.delta`` is the plain ``delta``, not this. The USD delta of a coin-margined
        account is its coin equity plus the sum of its coin deltas.
    """
    out: FloatArray = np.subtract(_as_f64(delta), inverse_price(usd_price, forward))
    return out
