"""Rolling RiskMetrics EWMA covariance of log returns on a fixed sample grid.

On a grid of event time: the engine owns the grid (it decides from event time when a
grid point closes) and hands :meth:`RollingEstimator.sample` the USD index price of every
underlying at each closed grid point. The estimator never reads a clock.

Definition, per pair of assets ``(i, j)`` and per decay ``lam = 0.5 ** (interval / halflife)``:

- ``r_i = ln(P_i,t / P_i,t-1)`` between consecutive samples where both prices are known;
- only on steps where *both* assets have a return (zero mean)::

      R_ij <- lam * R_ij + (1 - lam) * r_i * r_j        W_ij <- lam * W_ij + (1 - lam)

  from ``R = W = 0``; the per-step covariance is ``S_ij = R_ij / W_ij``.

``S_ij`` is the bias-corrected EWMA: the ``adjust=True`` exponentially weighted mean of
``r_i * r_j`` over the pair's joint history. An asset that starts ticking late therefore
joins without touching the other assets' entries, and its own entries start clean. Since
``W`` only moves on joint steps, ``W_ij = 1 - lam ** N_ij`` where ``N_ij`` counts the joint
returns; the estimator keeps ``N`` (exact integers) instead of ``W``.

Because every pair has its own history, a matrix mixing assets of different ages is not
guaranteed positive semi-definite, and a pairwise correlation can leave ``[-1, 1]`` (it is
clipped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["MS_PER_YEAR", "RollingEstimator"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Milliseconds in a 365-day year (crypto trades every day).
MS_PER_YEAR: Final = 365 * 86_400 * 1_000

_MIN_CAPACITY: Final = 8


class RollingEstimator:
    """Two EWMA covariance estimators (slow and fast halflife) fed by the same log returns.

    Parameters
    ----------
    sample_interval_ms
        Grid spacing, ms (> 0).
    halflife_ms, fast_halflife_ms
        Halflives of the slow and fast estimators, ms of grid time (> 0).
    warmup_ms
        Grid time an asset's returns must span before it is :attr:`warm`, ms (>= 0).

    Notes
    -----
    State is preallocated with capacity doubling, so :meth:`sample` writes into existing
    buffers; the accessors return new arrays the caller may keep (snapshots are immutable).
    Only one task may call it (not thread-safe).
    """

    __slots__ = (
        "_ann",
        "_cap",
        "_count",
        "_cur",
        "_figures",
        "_halflife_ms",
        "_lam",
        "_loglam",
        "_mask",
        "_n",
        "_one_minus_lam",
        "_prev",
        "_raw",
        "_rr",
        "_sample_interval_ms",
        "_tmp",
        "_warmup_ms",
    )

    _raw: FloatArray
    _count: IntArray
    _prev: FloatArray

    def __init__(
        self, sample_interval_ms: int, halflife_ms: int, fast_halflife_ms: int, warmup_ms: int
    ) -> None:
        if sample_interval_ms <= 0 or halflife_ms <= 0 or fast_halflife_ms <= 0:
            raise ValueError("sample_interval_ms and both halflives must be positive")
        if warmup_ms < 0:
            raise ValueError("warmup_ms must be >= 0")
        self._sample_interval_ms = int(sample_interval_ms)
        self._halflife_ms = (int(halflife_ms), int(fast_halflife_ms))
        self._warmup_ms = int(warmup_ms)
        self._ann = MS_PER_YEAR / self._sample_interval_ms
        lam = [0.5 ** (self._sample_interval_ms / h) for h in self._halflife_ms]
        # Shape (2, 1, 1): index 0 is the slow estimator, 1 the fast; broadcasts over (n, n).
        self._lam = np.array(lam, dtype=np.float64).reshape(2, 1, 1)
        self._one_minus_lam = 1.0 - self._lam
        self._loglam = np.log(self._lam)
        self._n = 0
        # Figures change only in sample(): computed once per grid point, shared read-only
        # (evaluations several times a second read them without rebuilding them).
        self._figures: dict[tuple[str, bool], npt.NDArray[Any]] = {}
        self._cap = 0
        self._allocate(_MIN_CAPACITY)

    # -- state ------------------------------------------------------------------------------

    def _allocate(self, cap: int) -> None:
        """(Re)allocate buffers for ``cap`` assets, keeping the first ``n`` assets' state."""
        n = self._n
        raw = np.zeros((2, cap, cap), dtype=np.float64)
        count = np.zeros((cap, cap), dtype=np.int64)
        prev = np.full(cap, np.nan, dtype=np.float64)
        if n:
            raw[:, :n, :n] = self._raw[:, :n, :n]
            count[:n, :n] = self._count[:n, :n]
            prev[:n] = self._prev[:n]
        self._raw = raw  # R, (2, cap, cap); zero outside [:n, :n]
        self._count = count  # N, joint returns, (cap, cap); zero outside [:n, :n]
        self._prev = prev  # last sample's prices, (cap,); NaN = unknown
        # Scratch, overwritten on every sample.
        self._cur = np.empty(cap, dtype=np.float64)
        self._rr = np.empty((cap, cap), dtype=np.float64)
        self._mask = np.empty((cap, cap), dtype=np.bool_)
        self._tmp = np.empty((2, cap, cap), dtype=np.float64)
        self._cap = cap

    def _grow(self, n: int) -> None:
        if n > self._cap:
            self._allocate(max(n, 2 * self._cap))
        self._n = n

    # -- updates ----------------------------------------------------------------------------

    def sample(self, prices: npt.ArrayLike, steps: int = 1) -> None:
        """Absorb the index prices at a closed grid point.

        Invalidates the cached figures: accessors return read-only arrays computed once per
        sample (a caller that wants to modify one copies it).

        Parameters
        ----------
        prices
            Shape ``(n,)``, USD index price of each underlying, in registry order. ``n`` may
            grow between calls (new underlyings appended at the end), never shrink. NaN means
            the asset has no price. Non-positive or infinite prices are a caller bug (events
            reject them at decode); they are treated as NaN so one bad tick cannot poison the
            covariance: no return this step, and none at the next.
        steps
            Grid points advanced (>= 1) during which ``prices`` held. The first step carries
            the log return against the previous sample; the other ``steps - 1`` are zero
            returns for every asset priced now (the same as ``steps`` calls with the same
            prices, in closed form).

        Raises
        ------
        ValueError
            ``prices`` is not 1-D or has fewer assets than before; ``steps < 1``.
        """
        self._figures.clear()
        p = np.asarray(prices, dtype=np.float64)
        if p.ndim != 1:
            raise ValueError(f"prices must be 1-D, got shape {p.shape}")
        n = p.shape[0]
        if n < self._n:
            raise ValueError(f"prices has {n} assets, the estimator already has {self._n}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if n > self._n:
            self._grow(n)
        if n == 0:
            return

        cur = self._cur[:n]
        prev = self._prev[:n]
        priced = np.greater(p, 0.0) & np.less(p, np.inf)  # False for NaN, <= 0, inf
        np.copyto(cur, np.nan)
        np.copyto(cur, p, where=priced)

        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            r = np.log(cur / prev)  # NaN where either price is unknown
        has = np.isfinite(r)
        r[~has] = 0.0
        np.copyto(prev, cur)

        raw = self._raw[:, :n, :n]
        tmp = self._tmp[:, :n, :n]
        rr = self._rr[:n, :n]
        mask = self._mask[:n, :n]
        count = self._count[:n, :n]

        # First step, pairs with a joint return: R <- R + (1 - lam) * (r_i r_j - R).
        # r is 0 off the mask, so r_i r_j needs no masking; R does.
        np.multiply(r[:, None], r[None, :], out=rr)
        np.logical_and(has[:, None], has[None, :], out=mask)
        np.multiply(mask, raw, out=tmp)
        np.subtract(rr, tmp, out=tmp)
        tmp *= self._one_minus_lam
        raw += tmp
        count += mask

        # Remaining steps - 1: zero returns for pairs priced now: R <- lam ** (steps-1) * R.
        if steps > 1:
            k = steps - 1
            np.logical_and(priced[:, None], priced[None, :], out=mask)
            np.multiply(mask, raw, out=tmp)
            tmp *= -np.expm1(k * self._loglam)  # 1 - lam ** k, accurate for small k*(1-lam)
            raw -= tmp
            count += k * mask

    def restart(self) -> None:
        """Forget the previous sample's prices (after a data outage).

        The next :meth:`sample` yields no return (it only records prices); covariances and
        return counts are kept.
        """
        self._prev.fill(np.nan)

    # -- figures ----------------------------------------------------------------------------

    @property
    def n_assets(self) -> int:
        """Number of underlyings the estimator has seen (the ``n`` of every array)."""
        return self._n

    @property
    def lambdas(self) -> tuple[float, float]:
        """Per-step decay ``(slow, fast)`` = ``0.5 ** (sample_interval / halflife)``."""
        return float(self._lam[0, 0, 0]), float(self._lam[1, 0, 0])

    @property
    def annualisation(self) -> float:
        """Grid steps per 365-day year: per-step covariance times this is annualised."""
        return self._ann

    @property
    def returns(self) -> IntArray:
        """Shape ``(n,)``: returns absorbed per asset (zero returns from ``steps > 1`` count)."""
        out: IntArray = np.diagonal(self._count[: self._n, : self._n]).copy()
        return out

    @property
    def joint_returns(self) -> IntArray:
        """Shape ``(n, n)``: returns absorbed per pair (steps where both had a return)."""
        out: IntArray = self._count[: self._n, : self._n].copy()
        return out

    @property
    def warm(self) -> BoolArray:
        """Shape ``(n,)``: True once ``returns * sample_interval_ms >= warmup_ms``."""
        out: BoolArray = self.returns * self._sample_interval_ms >= self._warmup_ms
        return out

    def _cached(
        self, key: str, fast: bool, compute: Callable[[], npt.NDArray[Any]]
    ) -> npt.NDArray[Any]:
        out = self._figures.get((key, fast))
        if out is None:
            out = compute()
            out.flags.writeable = False
            self._figures[key, fast] = out
        return out

    def covariance(self, fast: bool = False) -> FloatArray:
        """Annualised covariance of log returns, shape ``(n, n)`` (decimal^2 per year).

        Per-step ``S = R / W`` times :attr:`annualisation`. NaN for a pair without a joint
        return. Not guaranteed PSD when assets have different histories (module notes).
        Read-only (shared until the next sample).
        """
        out: FloatArray = self._cached("cov", fast, lambda: self._covariance(fast))
        return out

    def _covariance(self, fast: bool) -> FloatArray:
        n = self._n
        k = 1 if fast else 0
        count = self._count[:n, :n]
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = -np.expm1(count * self._loglam[k])  # W = 1 - lam ** N
            out: FloatArray = self._raw[k, :n, :n] / weight
        out[count == 0] = np.nan
        out *= self._ann
        return out

    def volatility(self, fast: bool = False) -> FloatArray:
        """Annualised volatility, shape ``(n,)`` (decimal, 0.55 = 55%); NaN before a return."""
        out: FloatArray = self._cached(
            "vol", fast, lambda: np.sqrt(np.diagonal(self.covariance(fast)))
        )
        return out

    def correlation(self, fast: bool = False) -> FloatArray:
        """Correlation, shape ``(n, n)``, clipped to ``[-1, 1]``; read-only.

        NaN for a pair without a joint return, or where a variance is zero (undefined);
        the diagonal is 1 for every asset with a return.
        """
        out: FloatArray = self._cached("corr", fast, lambda: self._correlation(fast))
        return out

    def _correlation(self, fast: bool) -> FloatArray:
        cov = self.covariance(fast)
        sd = np.sqrt(np.diagonal(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = cov / np.multiply.outer(sd, sd)
        np.clip(out, -1.0, 1.0, out=out)
        diag = np.diagonal(self._count[: self._n, : self._n]) > 0
        idx = np.flatnonzero(diag)
        out[idx, idx] = 1.0
        return out
