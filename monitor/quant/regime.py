"""Regime checks: are the volatility and correlation assumptions still true? (pure numpy)

Figures computed from the estimators' output (:class:`monitor.quant.estimator.RollingEstimator`)
and the IVs the book is marked at, each tracked against a slow baseline so rules can alert
when "the volatility assumptions are proven wrong or correlations spike":

- ``vol_ratio``: fast / slow EWMA volatility per underlying (> 1: volatility is rising);
- ``realised_to_implied``: slow realised volatility / the ATM IV the book is marked at, per
  underlying (> 1: the options are marked below what the market realises);
- ``average_correlation``: mean off-diagonal correlation over the assets used;
- ``absorption_ratio``: share of the correlation matrix's trace in its top ``ceil(n / 5)``
  eigenvalues (Kritzman et al., 2011): near 1 when a few factors drive everything.

The correlation figures use the assets with a fully known correlation submatrix (the NaN
rule of :func:`monitor.quant.risk.complete_assets`, optionally restricted to a caller's mask such
as ``warm``). :class:`RegimeBaselines` keeps an EWMA of every figure on event time.
No clock, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from monitor.quant.risk import complete_assets

__all__ = [
    "RegimeBaseline",
    "RegimeBaselines",
    "RegimeFigures",
    "absorption_ratio",
    "average_correlation",
    "regime_figures",
    "vol_ratio",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: The absorption ratio's eigenvalues: the top fifth, at least one.
ABSORPTION_FRACTION: Final = 5


def vol_ratio(numerator: npt.ArrayLike, denominator: npt.ArrayLike) -> FloatArray:
    """Elementwise ratio of volatilities, NaN where either is unknown or the denominator is 0.

    Parameters
    ----------
    numerator, denominator
        Shape ``(n,)``, annualised decimal volatilities (e.g. fast and slow EWMA, or slow
        realised and marked IV); NaN = unknown.

    Returns
    -------
    FloatArray
        Shape ``(n,)``, dimensionless.
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two (n,) arrays, got {a.shape} and {b.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(b > 0.0, a / b, np.nan)
    out[~np.isfinite(out)] = np.nan
    return out


def _submatrix(corr: npt.ArrayLike, assets: npt.ArrayLike | None) -> FloatArray:
    """The correlation of the usable assets (``complete_assets``), shape ``(k, k)``."""
    c = np.asarray(corr, dtype=np.float64)
    idx = np.flatnonzero(complete_assets(c, assets))
    out: FloatArray = c[np.ix_(idx, idx)]
    return out


def _average(sub: FloatArray) -> float:
    k = sub.shape[0]
    if k < 2:
        return math.nan
    return float((sub.sum() - np.trace(sub)) / (k * (k - 1)))


def _absorption(sub: FloatArray) -> float:
    k = sub.shape[0]
    if k < 2:
        return math.nan
    lam = np.linalg.eigvalsh(0.5 * (sub + sub.T))  # ascending
    top = -(-k // ABSORPTION_FRACTION)
    trace = float(np.trace(sub))
    return float(lam[-top:].sum() / trace) if trace > 0.0 else math.nan


def average_correlation(corr: npt.ArrayLike, assets: npt.ArrayLike | None = None) -> float:
    """Mean of the off-diagonal correlations over the usable assets.

    Parameters
    ----------
    corr
        Shape ``(n, n)`` correlation matrix (NaN = unknown pair).
    assets
        Shape ``(n,)`` bool, candidates (default all; e.g. ``warm`` assets).

    Returns
    -------
    float
        ``sum_{i != j} rho_ij / (k (k - 1))`` over the ``k`` assets kept by
        :func:`monitor.quant.risk.complete_assets`; NaN when ``k < 2``.
    """
    return _average(_submatrix(corr, assets))


def absorption_ratio(corr: npt.ArrayLike, assets: npt.ArrayLike | None = None) -> float:
    """Absorption ratio: the top ``ceil(k / 5)`` eigenvalues over the trace.

    Parameters
    ----------
    corr
        Shape ``(n, n)`` correlation matrix (NaN = unknown pair).
    assets
        Shape ``(n,)`` bool, candidates (default all).

    Returns
    -------
    float
        In ``[ceil(k/5)/k, 1]`` for a PSD matrix of the ``k`` usable assets: the lower end
        when they are uncorrelated, 1 when perfectly correlated. Negative
        eigenvalues of a non-PSD estimate are kept in the trace (the ratio is of the matrix
        as estimated). NaN when ``k < 2``.
    """
    return _absorption(_submatrix(corr, assets))


@dataclass(frozen=True, slots=True)
class RegimeFigures:
    """Regime figures of one evaluation (or their baselines), arrays of shape ``(n,)``.

    Attributes
    ----------
    vol_ratio
        Fast / slow EWMA volatility per underlying; NaN until both are known.
    realised_to_implied
        Slow realised volatility / marked ATM IV per underlying; NaN where no IV.
    average_correlation
        Mean pairwise correlation over ``assets_used``; NaN with fewer than 2.
    absorption_ratio
        Top ``ceil(k/5)`` eigenvalues over the trace of the correlation of ``assets_used``.
    assets_used
        Bool: the assets the two correlation figures are computed over.
    """

    vol_ratio: FloatArray
    realised_to_implied: FloatArray
    average_correlation: float
    absorption_ratio: float
    assets_used: BoolArray


def regime_figures(
    vol_slow: npt.ArrayLike,
    vol_fast: npt.ArrayLike,
    corr: npt.ArrayLike,
    marked_iv: npt.ArrayLike,
    assets: npt.ArrayLike | None = None,
) -> RegimeFigures:
    """All regime figures from the estimators and the marked IVs.

    Parameters
    ----------
    vol_slow, vol_fast
        Shape ``(n,)``: annualised EWMA volatility of the slow and fast estimators
        (``RollingEstimator.volatility(fast=...)``), NaN = unknown.
    corr
        Shape ``(n, n)``: correlation (the slow estimator's, as in the snapshot).
    marked_iv
        Shape ``(n,)``: the ATM IV the book is marked at per underlying, annualised decimal;
        NaN where there is none.
    assets
        Shape ``(n,)`` bool: candidates for the correlation figures (e.g. ``warm``).

    Returns
    -------
    RegimeFigures
    """
    c = np.asarray(corr, dtype=np.float64)
    used = complete_assets(c, assets)
    idx = np.flatnonzero(used)
    sub = c[np.ix_(idx, idx)]
    return RegimeFigures(
        vol_ratio=vol_ratio(vol_fast, vol_slow),
        realised_to_implied=vol_ratio(vol_slow, marked_iv),
        average_correlation=_average(sub),
        absorption_ratio=_absorption(sub),
        assets_used=used,
    )


class RegimeBaseline:
    """EWMA of one figure (scalar or per-asset array) on event time.

    ``b <- a b + (1 - a) v`` with ``a = 0.5 ** (dt / halflife)`` and ``dt`` the event time
    since the previous update; the first known value of an element starts its baseline.
    A NaN value leaves that element's baseline as it was (no information). Arrays may grow
    between updates (new underlyings appended): new elements start empty (NaN).

    Parameters
    ----------
    halflife_ms
        Halflife, ms of event time (> 0).
    """

    __slots__ = ("_halflife_ms", "_last_ms", "_value")

    def __init__(self, halflife_ms: int) -> None:
        if halflife_ms <= 0:
            raise ValueError(f"halflife_ms must be positive, got {halflife_ms}")
        self._halflife_ms = int(halflife_ms)
        self._last_ms: int | None = None
        self._value: FloatArray | None = None

    @property
    def value(self) -> FloatArray | None:
        """The baseline (a copy), or None before the first update."""
        return None if self._value is None else self._value.copy()

    def update(self, value: npt.ArrayLike, ts_ms: int) -> FloatArray:
        """Absorb the figure observed at ``ts_ms`` and return the new baseline (a copy).

        A ``ts_ms`` before the previous update (a wall clock stepped back) counts as no
        time elapsed: the baseline holds, and its clock does not move back.

        Raises
        ------
        ValueError
            The figure's shape changed other than by growing a 1-D array.
        """
        v = np.asarray(value, dtype=np.float64)
        prev = self._value
        if prev is None:
            new = np.full(v.shape, np.nan)
            a = 0.0
        else:
            assert self._last_ms is not None
            ts_ms = max(ts_ms, self._last_ms)
            if v.shape != prev.shape:
                if v.ndim != 1 or prev.ndim != 1 or v.shape[0] < prev.shape[0]:
                    raise ValueError(f"figure shape changed from {prev.shape} to {v.shape}")
                new = np.full(v.shape, np.nan)
                new[: prev.shape[0]] = prev
            else:
                new = prev.copy()
            a = 0.5 ** ((ts_ms - self._last_ms) / self._halflife_ms)
        known = np.isfinite(v)
        fresh = known & np.isnan(new)
        blend = known & ~fresh
        new[fresh] = v[fresh]
        new[blend] = a * new[blend] + (1.0 - a) * v[blend]
        self._value = new
        self._last_ms = int(ts_ms)
        return new.copy()

    def state(self) -> dict[str, Any]:
        """The baseline as plain data: ``{"halflife_ms", "last_ms", "value"}`` (``value`` a
        float, a list of floats (NaN = empty) or None before the first update)."""
        return {
            "halflife_ms": self._halflife_ms,
            "last_ms": self._last_ms,
            "value": None if self._value is None else self._value.tolist(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RegimeBaseline:
        """The baseline :meth:`state` described.

        Raises
        ------
        ValueError
            ``state`` is not what :meth:`state` returns.
        """
        try:
            out = cls(int(state["halflife_ms"]))
            value, last = state["value"], state["last_ms"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a baseline state: {exc!r}") from None
        if (value is None) != (last is None):
            raise ValueError("a baseline state needs both a value and its time, or neither")
        if value is not None:
            v = np.asarray(value, dtype=np.float64)
            if v.ndim > 1:
                raise ValueError(f"a baseline is a number or a list, got shape {v.shape}")
            out._value = v
            out._last_ms = int(last)
        return out


class RegimeBaselines:
    """The slow baselines of every :class:`RegimeFigures` field, updated once per evaluation.

    Parameters
    ----------
    halflife_ms
        Halflife of every baseline, ms of event time.
    """

    __slots__ = ("_ar", "_avg", "_rti", "_vr")

    def __init__(self, halflife_ms: int) -> None:
        self._vr = RegimeBaseline(halflife_ms)
        self._rti = RegimeBaseline(halflife_ms)
        self._avg = RegimeBaseline(halflife_ms)
        self._ar = RegimeBaseline(halflife_ms)

    def state(self) -> dict[str, Any]:
        """The four baselines as plain data (:meth:`RegimeBaseline.state` each)."""
        return {
            "vol_ratio": self._vr.state(),
            "realised_to_implied": self._rti.state(),
            "average_correlation": self._avg.state(),
            "absorption_ratio": self._ar.state(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RegimeBaselines:
        """The baselines :meth:`state` described (``ValueError`` when it is not one)."""
        try:
            parts = [
                RegimeBaseline.from_state(state[k])
                for k in (
                    "vol_ratio",
                    "realised_to_implied",
                    "average_correlation",
                    "absorption_ratio",
                )
            ]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a regime baselines state: {exc!r}") from None
        out = cls(1)
        out._vr, out._rti, out._avg, out._ar = parts
        return out

    def update(
        self, figures: RegimeFigures, ts_ms: int, warm: npt.ArrayLike | None = None
    ) -> RegimeFigures:
        """Absorb one evaluation's figures; return the baselines (current value included).

        With a halflife of hours and evaluations every 250 ms, one evaluation moves the
        baseline by a few millionths of the gap, so including it does not mask a jump.
        ``assets_used`` is copied from ``figures``.

        ``warm``: shape ``(n,)`` bool, the assets whose estimator is warm (default all). A
        cold estimator's volatility is a guess from a few returns, so a baseline starts
        only once it is warm: the per-asset figures of cold assets are not absorbed, and
        the correlation figures only when they are computed over warm assets alone (at
        least two).
        """
        vr, rti = figures.vol_ratio, figures.realised_to_implied
        avg, ar = figures.average_correlation, figures.absorption_ratio
        if warm is not None:
            w = np.asarray(warm, dtype=bool)
            vr = np.where(w, vr, np.nan)
            rti = np.where(w, rti, np.nan)
            if np.any(figures.assets_used & ~w):
                avg = ar = math.nan
        fused = self._update_together(vr, rti, avg, ar, ts_ms)
        if fused is not None:
            return RegimeFigures(
                vol_ratio=fused[0],
                realised_to_implied=fused[1],
                average_correlation=float(fused[2][0]),
                absorption_ratio=float(fused[3][0]),
                assets_used=figures.assets_used.copy(),
            )
        return RegimeFigures(
            vol_ratio=self._vr.update(vr, ts_ms),
            realised_to_implied=self._rti.update(rti, ts_ms),
            average_correlation=float(self._avg.update(avg, ts_ms)),
            absorption_ratio=float(self._ar.update(ar, ts_ms)),
            assets_used=figures.assets_used.copy(),
        )

    def _update_together(
        self, vr: npt.ArrayLike, rti: npt.ArrayLike, avg: float, ar: float, ts_ms: int
    ) -> list[FloatArray] | None:
        """The four baselines' updates as one array operation (one per evaluation), when
        they share their clock and shapes (always, after their first update); else None.

        Element for element the same arithmetic as :meth:`RegimeBaseline.update` (the
        same decay ``a``, the same blend), so the same baselines bit for bit.
        """
        parts = (self._vr, self._rti, self._avg, self._ar)
        values = [np.asarray(v, dtype=np.float64) for v in (vr, rti, avg, ar)]
        last, hl = self._vr._last_ms, self._vr._halflife_ms
        prevs = [p._value for p in parts]
        if last is None or any(
            p._last_ms != last or p._halflife_ms != hl or prev is None or prev.shape != v.shape
            for p, prev, v in zip(parts, prevs, values, strict=True)
        ):
            return None
        ts_ms = max(ts_ms, last)
        a = 0.5 ** ((ts_ms - last) / hl)
        v = np.concatenate([x.ravel() for x in values])
        new = np.concatenate([x.ravel() for x in prevs])  # type: ignore[union-attr]
        # As RegimeBaseline.update: a fresh element takes v, a known one blends, a NaN v
        # leaves it (the blend of a fresh element is computed and not used).
        new = np.where(np.isfinite(v), np.where(np.isnan(new), v, a * new + (1.0 - a) * v), new)
        out: list[FloatArray] = []
        start = 0
        for p, x in zip(parts, values, strict=True):
            part = new[start : start + x.size].reshape(x.shape)
            start += x.size
            p._value = part  # a view: baselines are replaced, never written in place
            p._last_ms = int(ts_ms)
            out.append(part.copy().reshape(-1) if x.ndim == 0 else part.copy())
        return out
