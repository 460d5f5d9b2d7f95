"""Rolling RiskMetrics EWMA covariance of log returns on a fixed sample grid.

The engine owns the grid (it decides from event time when a grid point closes) and hands
:meth:`RollingEstimator.sample` the USD index price of every underlying at each closed grid
point, with how long ago each index last ticked. The estimator never reads a clock.

Definition, per pair of assets ``(i, j)`` and per decay ``lam = 0.5 ** (interval / halflife)``:

- ``r_i = ln(P_i,t / P_i,t-1)`` between consecutive samples where both prices are known;
- only on steps where *both* assets have a return (zero mean)::

      R_ij <- lam * R_ij + (1 - lam) * (r_i * r_j + lead-lag terms)
      Q_ij <- lam * Q_ij + (1 - lam) * r_i * r_i        W_ij <- lam * W_ij + (1 - lam)

  from ``R = Q = W = 0``. ``R_ii / W_ii`` is asset ``i``'s per-step variance (its own
  history); ``rho_ij = R_ij / sqrt(Q_ij Q_ji)`` is the pair's correlation over the pair's
  *joint* history (``W_ij`` cancels), and the covariance is ``sd_i sd_j rho_ij``.

The variances are the bias-corrected EWMA (the ``adjust=True`` exponentially weighted mean
of ``r_i^2``) over each asset's history, so an asset that starts ticking late joins without
touching the other assets' entries. A correlation is measured with both variances over the
same steps as the covariance, so an asset that joins during a volatility spike no longer
divides a spike-time covariance by a calm-time variance (a ratio of 1.83). Since ``W``
only moves on joint steps, ``W_ij = 1 - lam ** N_ij`` where ``N_ij`` counts the joint
returns; the estimator keeps ``N`` (exact integers) instead of ``W``. A correlation matrix
assembled from pairs of different ages (or from the lead-lag terms below) can fail to be
positive semi-definite with three or more assets: ``monitor.quant.risk.psd_covariance``
repairs it before risk uses it.

Asynchronous feeds (the Epps effect). The price at a grid point is each index's last tick,
and indices tick out of step: a move of BTC at 0.9 s and the matching move of ETH at 1.2 s
land on different grid steps, so products of same-step returns see only part of the
co-movement (a true 0.9 measured 0.81, 0.34 and 0.17 at mean tick gaps of 0.1, 1 and 2 s).
The cross products therefore follow Hayashi-Yoshida on the grid: an index's *interval*
runs from one move of its price to the next, and whenever asset ``i``'s price moves, its
return is multiplied by every move of ``j`` whose interval may overlap ``i``'s (those after
``j``'s price as it stood at ``i``'s previous tick, known from the tick times the engine
passes as ``ages_ms``), each pair of moves once; moves on the same step are the plain
product. Pairs that may overlap but do not add noise, not bias; variances are unchanged
(each index's own returns chain without gaps). With feeds all observed at the sample (no
``ages_ms``) and moving every step this is the plain EWMA of ``r_i r_j``. Such cross
products are not bounded by the variances: a correlation is clipped to ``[-1, 1]``.

Staleness is per asset: an index that has not ticked for longer than ``max_gap`` is
*stale*; it contributes no return (neither a real one nor the zero returns of a repeated
price), and the first price after the silence starts a new chain of returns instead of
posing as a one-step move. The other assets go on.

Three decays share the returns: the slow estimator (``halflife``: volatility,
correlation, contributions), the fast one (``fast_halflife``: regime checks) and the VaR
estimator (``var_halflife``: the horizon VaR, hours to days of memory rather than the last
half hour).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = ["MS_PER_YEAR", "RollingEstimator", "array_from_state", "array_state"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Milliseconds in a 365-day year (crypto trades every day).
MS_PER_YEAR: Final = 365 * 86_400 * 1_000

_MIN_CAPACITY: Final = 8


class RollingEstimator:
    """EWMA covariance estimators (slow, fast and VaR halflife) fed by the same log returns.

    Parameters
    ----------
    sample_interval_ms
        Grid spacing, ms (> 0).
    halflife_ms, fast_halflife_ms
        Halflives of the slow and fast estimators, ms of grid time (> 0).
    warmup_ms
        Grid time an asset's returns must span before it is :attr:`warm`, ms (>= 0).
    var_halflife_ms
        Halflife of the VaR estimator, ms (> 0); default: the slow halflife.
    max_gap_ms
        An index silent for longer than this is stale (module notes), ms (> 0); default:
        never (only :meth:`restart` breaks a chain of returns).

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
        "_jq",
        "_lam",
        "_loglam",
        "_mask",
        "_max_gap_ms",
        "_n",
        "_one_minus_lam",
        "_prev",
        "_raw",
        "_rr",
        "_sample_interval_ms",
        "_snap",
        "_stale",
        "_tmp",
        "_warmup_ms",
    )

    _raw: FloatArray
    _jq: FloatArray
    _count: IntArray
    _prev: FloatArray
    _snap: FloatArray
    _stale: BoolArray

    def __init__(
        self,
        sample_interval_ms: int,
        halflife_ms: int,
        fast_halflife_ms: int,
        warmup_ms: int,
        *,
        var_halflife_ms: int | None = None,
        max_gap_ms: int | None = None,
    ) -> None:
        var_hl = halflife_ms if var_halflife_ms is None else var_halflife_ms
        if sample_interval_ms <= 0 or min(halflife_ms, fast_halflife_ms, var_hl) <= 0:
            raise ValueError("sample_interval_ms and every halflife must be positive")
        if warmup_ms < 0:
            raise ValueError("warmup_ms must be >= 0")
        if max_gap_ms is not None and max_gap_ms <= 0:
            raise ValueError("max_gap_ms must be positive")
        self._sample_interval_ms = int(sample_interval_ms)
        self._halflife_ms = (int(halflife_ms), int(fast_halflife_ms), int(var_hl))
        self._warmup_ms = int(warmup_ms)
        self._max_gap_ms = None if max_gap_ms is None else int(max_gap_ms)
        self._ann = MS_PER_YEAR / self._sample_interval_ms
        lam = [0.5 ** (self._sample_interval_ms / h) for h in self._halflife_ms]
        # Shape (3, 1, 1): slow, fast, VaR estimator; broadcasts over (n, n).
        self._lam = np.array(lam, dtype=np.float64).reshape(_K, 1, 1)
        self._one_minus_lam = 1.0 - self._lam
        self._loglam = np.log(self._lam)
        self._n = 0
        # Figures change only in sample(): computed once per grid point, shared read-only
        # (evaluations several times a second read them without rebuilding them).
        self._figures: dict[tuple[str, int], npt.NDArray[Any]] = {}
        self._cap = 0
        self._allocate(_MIN_CAPACITY)

    # -- state ------------------------------------------------------------------------------

    def _allocate(self, cap: int) -> None:
        """(Re)allocate buffers for ``cap`` assets, keeping the first ``n`` assets' state."""
        n = self._n
        raw = np.zeros((_K, cap, cap), dtype=np.float64)
        jq = np.zeros((_K, cap, cap), dtype=np.float64)
        count = np.zeros((cap, cap), dtype=np.int64)
        prev = np.full(cap, np.nan, dtype=np.float64)
        stale = np.zeros(cap, dtype=np.bool_)
        snap = np.full((cap, cap), np.nan, dtype=np.float64)
        if n:
            snap[:n, :n] = self._snap[:n, :n]
            raw[:, :n, :n] = self._raw[:, :n, :n]
            jq[:, :n, :n] = self._jq[:, :n, :n]
            count[:n, :n] = self._count[:n, :n]
            prev[:n] = self._prev[:n]
            stale[:n] = self._stale[:n]
        self._raw = raw  # R, (K, cap, cap); zero outside [:n, :n]
        self._jq = jq  # Q, (K, cap, cap): r_i^2 over the steps joint with j
        self._count = count  # N, joint returns, (cap, cap); zero outside [:n, :n]
        self._prev = prev  # last sample's prices, (cap,); NaN = unknown
        self._stale = stale  # (cap,): stale at the last sample
        # Lead-lag state: _snap[i, j] is ln P_j at the sample before i's price last moved
        # (the start of i's open interval); NaN = unknown.
        self._snap = snap
        # Scratch, overwritten on every sample.
        self._cur = np.empty(cap, dtype=np.float64)
        self._rr = np.empty((cap, cap), dtype=np.float64)
        self._mask = np.empty((cap, cap), dtype=np.bool_)
        self._tmp = np.empty((_K, cap, cap), dtype=np.float64)
        self._cap = cap

    def _grow(self, n: int) -> None:
        if n > self._cap:
            self._allocate(max(n, 2 * self._cap))
        self._n = n

    # -- updates ----------------------------------------------------------------------------

    def sample(
        self, prices: npt.ArrayLike, steps: int = 1, ages_ms: npt.ArrayLike | None = None
    ) -> None:
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
            prices, in closed form) while it is not stale.
        ages_ms
            Shape ``(n,)``: ms from each index's last tick to the first grid point closed
            (>= 0). With ``max_gap_ms``, an asset older than that is stale (module notes):
            no return, and its price is forgotten so the next one yields none either; one
            that turns stale during the ``steps`` stops receiving zero returns there. The
            tick times also order the moves within a step for the lead-lag terms. NaN (or
            the default, ``None``): observed at the grid point, not stale.

        Raises
        ------
        ValueError
            ``prices`` is not 1-D or has fewer assets than before; ``steps < 1``;
            ``ages_ms`` does not match ``prices``.
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

        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            self._absorb(p, n, steps - 1, ages_ms)

    def _absorb(self, p: FloatArray, n: int, k: int, ages_ms: npt.ArrayLike | None) -> None:
        """:meth:`sample`'s update for ``n >= 1`` assets and ``k`` extra zero-return steps
        (arguments checked; floating-point warnings off). One pass of whole-array operations
        with few small temporaries: this runs at every grid point of a replay."""
        priced = np.greater(p, 0.0) & np.less(p, np.inf)  # False for NaN, <= 0, inf
        gap = self._max_gap_ms
        ages = None if ages_ms is None else np.array(ages_ms, dtype=np.float64)
        live: IntArray | None = None  # zero-return steps each asset may take (k if None)
        if ages is not None:
            if ages.shape != (n,):
                raise ValueError(f"ages_ms must have shape ({n},), got {ages.shape}")
            np.copyto(ages, 0.0, where=~np.isfinite(ages))  # unknown: ticked at the point
        if ages is not None and gap is not None:
            fresh = ages <= gap
            if k > 0:
                # Step s (0-based) is at age ages + s * dt: fresh while that is <= gap.
                room = np.floor((gap - ages) / self._sample_interval_ms)
                live = np.where(fresh, np.minimum(np.maximum(room, 0), k), 0).astype(np.int64)
                stale = priced & (~fresh | (live < k))
            else:
                stale = priced & ~fresh
            use = priced & fresh
        else:
            stale = np.zeros(n, dtype=np.bool_)
            use = priced
        self._stale[:n] = stale

        cur = self._cur[:n]
        prev = self._prev[:n]
        np.copyto(cur, np.nan)
        np.copyto(cur, p, where=use)

        r = np.log(cur / prev)  # NaN where either price is unknown
        lp_prev = np.log(prev)
        has = np.isfinite(r)
        np.copyto(r, 0.0, where=~has)
        # Asynchronous feeds (module notes): asset i's price moved now, ending its interval
        # that started at its previous move; pair it with the moves of j since that start
        # (the intervals that can overlap it), once per pair.
        moved = has & (r != 0.0)
        snap = self._snap[:n, :n]
        lead = lp_prev[None, :] - snap  # j's log move since the start of i's interval
        np.copyto(lead, 0.0, where=~np.isfinite(lead))
        lead *= r[:, None]  # only rows that moved are non-zero
        lead.ravel()[:: n + 1] = 0.0  # the diagonal
        lead += lead.T
        chain = use & ~np.isfinite(prev)  # a first price (or the first after a silence)
        starts = np.flatnonzero(moved | chain)  # i's next interval starts at its tick now
        if starts.size:
            lp_cur = np.log(cur)
            # j's price at i's tick: now if j's last tick was at or before it, else the
            # previous sample's (j's move within this step may come after i's tick).
            if ages is None:  # every tick at the grid point: all at or before each other
                snap[starts] = lp_cur
            else:
                tick = -ages
                before = tick[None, :] <= tick[starts, None]
                snap[starts] = np.where(before, lp_cur[None, :], lp_prev[None, :])
            snap[:, chain] = lp_cur[chain]
        np.copyto(prev, cur)
        prev[stale] = np.nan  # the next return of a stale asset would span the silence

        raw = self._raw[:, :n, :n]
        jq = self._jq[:, :n, :n]
        tmp = self._tmp[:, :n, :n]
        rr = self._rr[:n, :n]
        mask = self._mask[:n, :n]
        count = self._count[:n, :n]

        # First step, pairs with a joint return: R <- R + (1 - lam) * (r_i r_j + lead - R),
        # and Q <- Q + (1 - lam) * (r_i^2 - Q), only on the mask.
        np.logical_and(has[:, None], has[None, :], out=mask)
        np.multiply(r[:, None], r[None, :], out=rr)
        rr += lead
        rr *= mask  # a lead-lag term needs both assets' returns on this step too
        for acc, prod in ((raw, rr), (jq, None)):
            if prod is None:
                prod = np.multiply(mask, (r * r)[:, None], out=rr)
            np.multiply(mask, acc, out=tmp)
            np.subtract(prod, tmp, out=tmp)
            tmp *= self._one_minus_lam
            acc += tmp
        count += mask

        # Remaining steps - 1: zero returns for pairs priced now and not stale, each pair
        # for as many steps as both of its assets stay fresh: R <- lam ** m * R.
        if k > 0:
            m = np.where(use, k if live is None else live, 0)
            pair = np.minimum.outer(m, m)
            decay = -np.expm1(pair * self._loglam)  # 1 - lam ** m, accurate for small m
            for acc in (raw, jq):
                np.multiply(acc, decay, out=tmp)
                acc -= tmp
            count += pair

    def state(self) -> dict[str, Any]:
        """Everything the estimator carries between samples, as plain data (no I/O).

        The settings it was built with, the asset count, and the ``(n, n)`` or ``(n,)``
        slices of its accumulators (``R``, ``Q``, ``N``), the last sample's prices, the
        per-asset staleness and the lead-lag state, as :func:`array_state` records (exact
        float64 bytes). :meth:`from_state` rebuilds an estimator whose every later figure
        equals this one's.
        """
        n = self._n
        return {
            "sample_interval_ms": self._sample_interval_ms,
            "halflife_ms": list(self._halflife_ms),
            "warmup_ms": self._warmup_ms,
            "max_gap_ms": self._max_gap_ms,
            "n": n,
            "raw": array_state(self._raw[:, :n, :n]),
            "jq": array_state(self._jq[:, :n, :n]),
            "count": array_state(self._count[:n, :n]),
            "prev": array_state(self._prev[:n]),
            "stale": array_state(self._stale[:n]),
            "snap": array_state(self._snap[:n, :n]),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RollingEstimator:
        """The estimator :meth:`state` described.

        Raises
        ------
        ValueError
            ``state`` is not what :meth:`state` returns (a missing key, a wrong shape or
            type, a count that is negative).
        """
        try:
            hl, fast, var = (int(h) for h in state["halflife_ms"])
            gap = state["max_gap_ms"]
            est = cls(
                int(state["sample_interval_ms"]),
                hl,
                fast,
                int(state["warmup_ms"]),
                var_halflife_ms=var,
                max_gap_ms=None if gap is None else int(gap),
            )
            n = int(state["n"])
            if n < 0:
                raise ValueError(f"negative asset count {n}")
            est._grow(n)
            parts: tuple[tuple[str, tuple[int, ...], str], ...] = (
                ("raw", (_K, n, n), "<f8"),
                ("jq", (_K, n, n), "<f8"),
                ("count", (n, n), "<i8"),
                ("prev", (n,), "<f8"),
                ("stale", (n,), "|b1"),
                ("snap", (n, n), "<f8"),
            )
            arrays = {k: array_from_state(state[k], shape, dt) for k, shape, dt in parts}
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an estimator state: {exc!r}") from None
        if np.any(arrays["count"] < 0):
            raise ValueError("negative return counts")
        est._raw[:, :n, :n] = arrays["raw"]
        est._jq[:, :n, :n] = arrays["jq"]
        est._count[:n, :n] = arrays["count"]
        est._prev[:n] = arrays["prev"]
        est._stale[:n] = arrays["stale"]
        est._snap[:n, :n] = arrays["snap"]
        return est

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
    def halflives_ms(self) -> tuple[int, int, int]:
        """Halflives ``(slow, fast, var)``, ms."""
        return self._halflife_ms

    @property
    def max_gap_ms(self) -> int | None:
        """Silence after which an index is stale, ms (``None``: never)."""
        return self._max_gap_ms

    @property
    def stale(self) -> BoolArray:
        """Shape ``(n,)``: assets that were stale at the last sample (priced, silent)."""
        out: BoolArray = self._stale[: self._n].copy()
        return out

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
        self, key: str, k: int, compute: Callable[[], npt.NDArray[Any]]
    ) -> npt.NDArray[Any]:
        out = self._figures.get((key, k))
        if out is None:
            out = compute()
            out.flags.writeable = False
            self._figures[key, k] = out
        return out

    def covariance(self, fast: bool = False, *, var: bool = False) -> FloatArray:
        """Annualised covariance of log returns, shape ``(n, n)`` (decimal^2 per year).

        ``sd_i sd_j rho_ij`` (module notes), the diagonal the variance ``R_ii / W_ii`` times
        :attr:`annualisation`. NaN for a pair without a joint return. ``fast``: the fast
        estimator; ``var``: the VaR estimator. Not guaranteed PSD with three or more assets
        of different histories (module notes). Read-only (shared until the next sample).
        """
        k = _which(fast, var)
        out: FloatArray = self._cached("cov", k, lambda: self._covariance(k))
        return out

    def _covariance(self, k: int) -> FloatArray:
        n = self._n
        count = self._count[:n, :n]
        with np.errstate(invalid="ignore", divide="ignore"):
            weight = -np.expm1(np.diagonal(count) * self._loglam[k, 0, 0])  # W_ii
            sd = np.sqrt(np.diagonal(self._raw[k, :n, :n]) / weight * self._ann)
        rho = self._rho(k)
        # No move of one of them on their joint steps: the correlation is undefined and the
        # covariance 0 (a constant price, a stablecoin index).
        rho[np.isnan(rho) & (count > 0)] = 0.0
        out: FloatArray = np.multiply.outer(sd, sd) * rho
        d = np.flatnonzero(np.diagonal(count) > 0)
        out[d, d] = sd[d] * sd[d]
        return out

    def _rho(self, k: int) -> FloatArray:
        """Joint-history correlation ``R_ij / sqrt(Q_ij Q_ji)``; NaN where undefined."""
        n = self._n
        q = self._jq[k, :n, :n]
        qq = q * q.T
        with np.errstate(invalid="ignore", divide="ignore"):
            out: FloatArray = self._raw[k, :n, :n] / np.sqrt(qq)
        out[(self._count[:n, :n] == 0) | ~(qq > 0.0)] = np.nan
        # Contemporaneous products alone are within [-1, 1] (Cauchy-Schwarz); the lead-lag
        # terms can push a noisy estimate past 1: clipped.
        np.clip(out, -1.0, 1.0, out=out)
        return out

    def volatility(self, fast: bool = False, *, var: bool = False) -> FloatArray:
        """Annualised volatility, shape ``(n,)`` (decimal, 0.55 = 55%); NaN before a return."""
        k = _which(fast, var)
        out: FloatArray = self._cached(
            "vol", k, lambda: np.sqrt(np.diagonal(self.covariance(fast, var=var)))
        )
        return out

    def correlation(self, fast: bool = False, *, var: bool = False) -> FloatArray:
        """Correlation over each pair's joint history, shape ``(n, n)``; read-only.

        Within ``[-1, 1]``. NaN for a pair without a joint return, or where a variance
        over the joint steps is zero (undefined); the diagonal is 1 for every asset with a
        return.
        """
        k = _which(fast, var)
        out: FloatArray = self._cached("corr", k, lambda: self._correlation(k))
        return out

    def _correlation(self, k: int) -> FloatArray:
        out = self._rho(k)
        diag = np.diagonal(self._count[: self._n, : self._n]) > 0
        idx = np.flatnonzero(diag)
        out[idx, idx] = 1.0
        return out


_K: Final = 3  # estimators: slow, fast, VaR


def array_state(a: npt.NDArray[Any]) -> dict[str, Any]:
    """A numpy array as plain data: ``{"dtype", "shape", "data"}`` (little-endian bytes)."""
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": le.dtype.str, "shape": list(a.shape), "data": le.tobytes()}


def array_from_state(
    state: Mapping[str, Any], shape: tuple[int, ...], dtype: str
) -> npt.NDArray[Any]:
    """The array :func:`array_state` described, checked against ``shape`` and ``dtype``.

    Raises
    ------
    ValueError
        Another dtype or shape, or data of the wrong length.
    """
    if state.get("dtype") != dtype:
        raise ValueError(f"expected dtype {dtype}, got {state.get('dtype')!r}")
    if tuple(state.get("shape", ())) != shape:
        raise ValueError(f"expected shape {shape}, got {state.get('shape')!r}")
    data = state.get("data")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError("array data is not bytes")
    flat = np.frombuffer(data, dtype=np.dtype(dtype))
    if flat.size != math.prod(shape):
        raise ValueError(f"expected {math.prod(shape)} values, got {flat.size}")
    out: npt.NDArray[Any] = flat.reshape(shape).copy()
    return out


def _which(fast: bool, var: bool) -> int:
    if fast and var:
        raise ValueError("choose the fast or the VaR estimator, not both")
    return 1 if fast else 2 if var else 0
