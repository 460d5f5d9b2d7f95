"""Black-76 option pricing on the forward, vectorised over numpy arrays.

Units (DESIGN.md "Units"): prices in USD per underlying unit; ``t`` in years of 365 days;
``vol`` annualised decimal.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy.special import ndtr

__all__ = ["black76_price"]

FloatArray = npt.NDArray[np.float64]


def black76_price(
    forward: npt.ArrayLike,
    strike: npt.ArrayLike,
    t: npt.ArrayLike,
    vol: npt.ArrayLike,
    is_call: npt.ArrayLike,
) -> FloatArray:
    """Undiscounted Black-76 price, USD per underlying unit. Shapes broadcast.

    At ``t <= 0`` or ``vol <= 0`` the price is intrinsic value.
    """
    f = np.asarray(forward, dtype=np.float64)
    k = np.asarray(strike, dtype=np.float64)
    tt = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    sig = np.maximum(np.asarray(vol, dtype=np.float64), 0.0)
    call = np.asarray(is_call, dtype=bool)
    sd = sig * np.sqrt(tt)
    live = sd > 0.0
    safe_sd = np.where(live, sd, 1.0)
    d1 = np.log(f / k) / safe_sd + 0.5 * safe_sd
    d2 = d1 - safe_sd
    c = f * ndtr(d1) - k * ndtr(d2)
    p = k * ndtr(-d2) - f * ndtr(-d1)
    priced = np.where(call, c, p)
    intrinsic = np.where(call, np.maximum(f - k, 0.0), np.maximum(k - f, 0.0))
    out: FloatArray = np.where(live, priced, intrinsic)
    return out
