"""Drift attribution: why did an underlying's share of risk change? (pure numpy)

Risk shares as the report defines them: share ``p_i = x_i (S x)_i / (x' S x)``. Between a reference
state ``(x0, S0)`` (the budget's set time, the last rebalance, or a look-back) and now
``(x1, S1)`` the share moves by ``p(x1, S1) - p(x0, S0)``. Writing ``S = D C D`` (``D`` the
diagonal of volatilities, ``C`` the correlation matrix), a share is a function of three
factors, ``p(x, D, C)``, and the change is split into:

- ``positions``: the exposures ``x`` changed;
- ``volatility``: the volatilities ``D`` changed (every underlying's, together);
- ``correlation``: the correlations ``C`` changed.

Decomposition: the Shapley value over the three factors
    Move the factors from the reference to now one at a time; the change of ``p`` while a
    factor moves is its effect along that path. A single path (say ``x``, then ``D``, then
    ``C``) is exactly additive but its answer depends on the arbitrary order; a first-order
    (gradient) split is order-free but leaves a residual that is large for the moves that
    matter (a doubled volatility). The Shapley value averages each factor's effect over
    all 6 orders: it is exactly additive (each order telescopes to the total, so does their
    mean), symmetric (no factor is favoured by its place in a list), and gives exactly 0 to a
    factor that did not change (every one of its marginal effects compares two identical
    states). It needs ``p`` at the 8 corners ``(x_a, D_b, C_c)``, ``a, b, c in {0, 1}``,
    which are all valid books: ``D_b C_c D_b`` is PSD whenever ``C_c`` is. With the
    Shapley weights for three players (1/3 for the first and last position in an order,
    1/6 for each of the two middle ones)::

        phi_x = 1/3 [p(1,0,0) - p(0,0,0)] + 1/6 [p(1,1,0) - p(0,1,0)]
              + 1/6 [p(1,0,1) - p(0,0,1)] + 1/3 [p(1,1,1) - p(0,1,1)]

    and likewise for ``D`` and ``C``. The residual is therefore rounding only (reported, so
    a reader can check it; ``|residual| < 1e-12``).

The volatility part is not split per underlying: the share of BTC can rise because ETH's
volatility fell. ``S`` is rebuilt as ``D C D`` at every corner (equal to the given ``S`` up
to rounding); an underlying with zero variance gets a zero correlation row.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from monitor.quant.risk import risk_shares

__all__ = ["DriftAttribution", "attribute_drift", "drift_summary"]

FloatArray = npt.NDArray[np.float64]

# Shapley weights of a factor's marginal effect, by corner of the other two factors:
# (0, 0) and (1, 1): 1/3 each; (1, 0) and (0, 1): 1/6 each.
_W = np.array([[1.0 / 3.0, 1.0 / 6.0], [1.0 / 6.0, 1.0 / 3.0]])


@dataclass(frozen=True, slots=True)
class DriftAttribution:
    """Change of each underlying's risk share, split by cause (arrays of shape ``(n,)``).

    All figures are fractions of the account's risk (0.12 = 12 points of share); a hedge
    has a negative share. ``positions + volatility + correlation + residual == total``.

    Attributes
    ----------
    share_ref, share_now
        Shares ``p_i`` at the reference and now (sum to 1 each).
    total
        ``share_now - share_ref``.
    positions, volatility, correlation
        Shapley effects of the exposures, the volatilities and the correlations.
    residual
        ``total - (positions + volatility + correlation)``: rounding only (module notes).
    sigma_ref_usd, sigma_now_usd
        Account volatility ``sqrt(x' S x)`` at the reference and now, USD annualised.

    Every array is NaN when a share is undefined at one of the 8 corners (a flat book, or an
    underlying held in it whose covariance is unknown): then there is nothing to attribute.
    """

    share_ref: FloatArray
    share_now: FloatArray
    total: FloatArray
    positions: FloatArray
    volatility: FloatArray
    correlation: FloatArray
    residual: FloatArray
    sigma_ref_usd: float
    sigma_now_usd: float


def _vols_corr(cov: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``S = D C D``: volatilities (``(n,)``) and correlation (``(n, n)``, unit diagonal)."""
    var = np.diagonal(cov)
    vols = np.sqrt(np.where(var > 0.0, var, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(vols, vols)
    corr = np.where(np.outer(vols, vols) > 0.0, corr, 0.0)
    np.fill_diagonal(corr, 1.0)
    corr[np.isnan(var), :] = np.nan  # unknown stays unknown (complete_assets drops it)
    corr[:, np.isnan(var)] = np.nan
    return np.where(np.isnan(var), np.nan, vols), corr


def attribute_drift(
    x_ref: npt.ArrayLike,
    cov_ref: npt.ArrayLike,
    x_now: npt.ArrayLike,
    cov_now: npt.ArrayLike,
    *,
    psd: bool = False,
) -> DriftAttribution:
    """Shapley attribution of the change of risk shares between two states of one account.

    Parameters
    ----------
    x_ref, x_now
        Shape ``(n,)``, exposure per underlying, USD (``delta_usd`` summed), at the
        reference and now; the same underlyings in the same order (0 where not held).
    cov_ref, cov_now
        Shape ``(n, n)``, annualised covariance of log returns at the reference and now.
    psd
        Both are fully known blocks of :func:`monitor.quant.risk.psd_covariance` outputs,
        so every corner ``D_b C_c D_b`` is PSD: each corner's repair is skipped (see
        :func:`monitor.quant.risk.contributions`; the same figures).

    Returns
    -------
    DriftAttribution
        See the class; the shares are those of :func:`monitor.quant.risk.contributions`.
    """
    xs = (np.asarray(x_ref, dtype=np.float64), np.asarray(x_now, dtype=np.float64))
    c0 = np.asarray(cov_ref, dtype=np.float64)
    c1 = np.asarray(cov_now, dtype=np.float64)
    n = xs[0].shape[0]
    for name, arr, shape in (
        ("x_ref", xs[0], (n,)),
        ("x_now", xs[1], (n,)),
        ("cov_ref", c0, (n, n)),
        ("cov_now", c1, (n, n)),
    ):
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    (v0, r0), (v1, r1) = _vols_corr(c0), _vols_corr(c1)
    vols, corrs = (v0, v1), (r0, r1)
    # p[a, b, c]: shares with exposures a, volatilities b, correlations c (0 ref, 1 now).
    p = np.empty((2, 2, 2, n))
    sigma = np.empty((2, 2, 2))
    for a, b, c in itertools.product((0, 1), repeat=3):
        sigma[a, b, c], p[a, b, c] = risk_shares(
            xs[a], corrs[c] * np.outer(vols[b], vols[b]), psd=psd
        )
    if not np.isfinite(p).all():
        nan = np.full(n, np.nan)
        return DriftAttribution(
            share_ref=p[0, 0, 0],
            share_now=p[1, 1, 1],
            total=p[1, 1, 1] - p[0, 0, 0],
            positions=nan,
            volatility=nan.copy(),
            correlation=nan.copy(),
            residual=nan.copy(),
            sigma_ref_usd=float(sigma[0, 0, 0]),
            sigma_now_usd=float(sigma[1, 1, 1]),
        )
    # Marginal effect of each factor at each corner of the other two, Shapley-weighted.
    d_x = np.einsum("bc,bcn->n", _W, p[1] - p[0])
    d_vol = np.einsum("ac,acn->n", _W, p[:, 1] - p[:, 0])
    d_corr = np.einsum("ab,abn->n", _W, p[:, :, 1] - p[:, :, 0])
    total = p[1, 1, 1] - p[0, 0, 0]
    return DriftAttribution(
        share_ref=p[0, 0, 0],
        share_now=p[1, 1, 1],
        total=total,
        positions=d_x,
        volatility=d_vol,
        correlation=d_corr,
        residual=total - (d_x + d_vol + d_corr),
        sigma_ref_usd=float(sigma[0, 0, 0]),
        sigma_now_usd=float(sigma[1, 1, 1]),
    )


def drift_summary(
    names: Sequence[str],
    attribution: DriftAttribution,
    budget: npt.ArrayLike,
    since: str,
) -> str:
    """One line for an alert: the most drifted underlying and why its share moved.

    Parameters
    ----------
    names
        The ``n`` underlying names, in the order of the arrays.
    attribution
        From :func:`attribute_drift`.
    budget
        Shape ``(n,)``, budget weights summing to 1 (``Contributions.budget``); NaN = none.
    since
        The reference, as the reader should see it (``"24h"``, ``"rebalance"``).

    Returns
    -------
    str
        ``"main: BTC 52% of risk vs 33% budget; since 24h: +12 pts vol, +5 pts correlation,
        +2 pts positions"``: the underlying with the largest ``|share - budget|`` now, then
        the three parts of *its* share change in points (percentage points of share),
        largest magnitude first. ``"main: n/a"`` when no drift is known; the ``since`` part
        reads ``"attribution n/a"`` when the attribution is NaN.
    """
    b = np.asarray(budget, dtype=np.float64)
    share = attribution.share_now
    if len(names) != share.shape[0] or b.shape != share.shape:
        raise ValueError("names, budget and the attribution must have the same length")
    drift = np.abs(share - b)
    if not np.isfinite(drift).any():
        return "main: n/a"
    i = int(np.nanargmax(drift))
    head = f"main: {names[i]} {_pct(share[i])} of risk vs {_pct(b[i])} budget"
    parts = [
        ("vol", float(attribution.volatility[i])),
        ("correlation", float(attribution.correlation[i])),
        ("positions", float(attribution.positions[i])),
    ]
    if not all(math.isfinite(v) for _, v in parts):
        return f"{head}; since {since}: attribution n/a"
    parts.sort(key=lambda kv: -abs(kv[1]))
    body = ", ".join(f"{round(100.0 * v):+d} pts {label}" for label, v in parts)
    return f"{head}; since {since}: {body}"


def _pct(v: float) -> str:
    return f"{round(100.0 * v):d}%"
