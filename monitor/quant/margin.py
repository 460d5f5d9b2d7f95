"""Own margin figures: portfolio margin as Deribit computes it, scenario margin, distance
to a margin call, stress what-ifs.

riskmon's own margin model beside the venue's figures. Pure numpy/scipy: no clock, no I/O,
no logging. Everything is vectorised over option instruments, scenarios and books; options
come deduplicated per instrument with one quantity column per book
(:class:`monitor.quant.risk.OptionPositions`, as ``BookValues.options`` holds them), linear
positions as their USD value per underlying and book (``BookValues.linear_usd.T``) or, for
the portfolio-margin model, per instrument with expiry and settlement
(:class:`LinearPositions`).

Scenario grid (Deribit's portfolio margin)
    Sources: Deribit's support article "Portfolio Margin" for the structure: a maximum
    price move of +-16% in 9 evenly spaced buckets including 0, each with volatility up,
    same and down; an "extended table" of moves -66%, -33%, +50%, +100%, +200%, +300%,
    +400%, +500% on volatility up only, counting "only a fraction of simulated P&L", with a
    dampener. Deribit's API (``private/pme/simulate`` and its ``model_params``) for the
    values: BTC ``price_range`` 0.16, ``buckets_count`` 4 (moves per side),
    ``volatility_range_up`` 0.5, ``volatility_range_down`` 0.25, ``short_term_vega_power``
    0.3, ``long_term_vega_power`` 0.13, ``min_volatility_for_shock_up`` 0.5,
    ``extended_table_factor`` 1; ETH ``price_range`` 0.18 and ``volatility_range_up`` 0.4.

    A shock applies to each option's own IV ``sigma`` with days to expiry ``D``::

        scale    = (30 / max(D, min_days)) ** p,  p = short_term_vega_power if D < 30
                                                    else long_term_vega_power
        vol up   = max(sigma * (1 + vol_range_up * scale), min_vol_shock_up)
        vol down = max(sigma * (1 - vol_range_down * scale), 0)

    ``min_days`` (1 day) floors ``D``: Deribit publishes no floor, and without one the down
    shock of an option in its last hours takes its IV to 0. Time is not advanced: the
    zero-move, vol-unchanged scenario has zero P&L. The base value is the model price at the
    marked IV (not the venue mark), as in :func:`monitor.quant.risk.revalue`.

Portfolio margin per settlement currency (:func:`portfolio_margin`, Deribit's S:PM)
    Positions are grouped by settlement currency: an inverse instrument (Deribit's BTC and
    ETH options, futures and perpetuals) settles in its underlying's coin, any other in
    USD. P&L vectors are in the settlement currency: an inverse option is worth its USD
    value over its forward, an inverse future or perpetual of USD size ``N`` makes
    ``N (1/S0 - 1/S1) = q m / (1 + m)`` coin (``q = N / S0``). Per currency:

    - worst case: the largest loss over the 27 standard scenarios and the 8 extended ones,
      an extended move ``m`` weighted ``extended_weight * price_range / |m|``, in coin
      further ``* (1 + m) / (1 + sign(m) price_range)`` (which makes an inverse linear
      position's extended loss equal its +-``price_range`` one, as the published vectors
      show). The USD currency holds one vector per underlying; its worst case is their sum.
    - extended dampener (``dampener``, a reconstruction): each extended scenario's summed
      P&L moves toward zero by ``D (|m| / price_range - 1)`` USD, in coin over
      ``(1 + sign(m) price_range) S0``, ``D`` the currency's ``extended_dampener`` (BTC
      100,000, ETH 200,000, USD 25,000). Deribit names the parameter and shows its effect
      (the extended vectors of its examples are 0 after it) but does not publish the
      formula; this is the form third-party replications use, and it reproduces both
      published examples. Without it the figure can only be higher.
    - roll shock: the sum over expiries of ``|net delta| * max(min_annualised_move,
      exp(annualised_move_risk * days / 365) - 1)``, perpetuals at ``min_annualised_move``;
      net delta in the currency's terms (an inverse option's coin delta, delta less its coin
      value; a future's coin size). Spot positions do not roll.
    - delta shock: ``|delta| * min(delta_shock_slope * max(|delta| - threshold / S0, 0),
      max_delta_shock)``, 0 while ``|delta| S0`` stays under ``delta_shock_threshold`` (20M
      USD). The threshold and cap are published; the linear growth per coin of delta
      beyond the threshold (Deribit's ``m_inc``) is a reconstruction.
    - risk-matrix margin = worst case + roll shock + delta shock; maintenance margin =
      ``mm_factor`` (0.8) x risk-matrix margin. Each in coin and in USD at today's index.

    Checked against Deribit's ``private/pme/simulate`` example (BTC perpetual and future)
    and a captured ETH response: worst case and roll shock equal to the printed digits;
    the venue rounds the worst case to 1e-9 coin before adding the shocks, so its
    risk-matrix and maintenance margins differ from these by up to 4e-10 coin.

    Not modelled: the correlation contingency and haircuts of cross-currency margin
    (X:PM), ``pnl_offset`` (it scales gains, so it cannot change a worst case within one
    currency), per-option and offsetting-futures contingencies of older Deribit models,
    open-order margin. :func:`params_from_model_params` takes the venue's own parameters.

Scenario margin in USD (:func:`scenario_margin`, aggregation ``"sum"`` or ``"joint"``)
    Every position revalued in USD over the grid: ``"sum"`` moves each underlying on its
    own and adds the worst losses, ``"joint"`` moves every underlying by the same scenario.
    Extended moves are weighted ``extended_weight * price_range / |m|``, not dampened.

Distance to a margin call
    The smallest uniform move ``m`` of all underlyings, down and up separately, at which
    ``equity + P&L(m) <= maintenance margin``, with ``P&L(m)`` by full revaluation (every
    forward times ``1 + m``, IV held, time not advanced). :func:`distance_to_call` holds
    the maintenance margin at the venue's figure; :func:`distance_to_call_model` recomputes
    riskmon's own (the portfolio-margin model at the moved prices), which for a
    short-gamma book comes sooner. Found by a scan of a move grid (finer around each
    short-dated option's strike, :func:`_scan_moves`) refined in the first cell that
    reaches the call. In sigmas: ``|ln(1 + m)| / sigma_1d``, with ``sigma_1d = sqrt(w' S w
    / 365)`` the 1-day standard deviation of the log return of the book's basket of
    underlyings, ``w = |x| / sum |x|`` (gross exposure weights), ``S`` the annualised
    covariance. The model-margin scan revalues a block of moves at a time
    (``block_elements``), so its working set does not grow with the number of moves.

Cancellation
    Run under :func:`cancellable` (the daemon's scenario thread), the distance scans check
    an event between blocks of moves or options and between refinement steps, and raise
    :class:`Cancelled` once it is set: a stopping daemon does not wait for a pass whose
    result it would discard.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.special import ndtr

from monitor.quant.greeks import black76, coin_delta
from monitor.quant.risk import OptionPositions, _b76_block, _runs

__all__ = [
    "DEFAULT_CURRENCIES",
    "DEFAULT_UNDERLYINGS",
    "MOVE_BLOCK_ELEMENTS",
    "Aggregation",
    "Cancelled",
    "CurrencyMargin",
    "CurrencyParams",
    "DistanceToCall",
    "LinearPositions",
    "MarginScenarios",
    "MarginSettings",
    "ModelDistance",
    "ParametersSource",
    "PortfolioMargin",
    "ScenarioMargin",
    "Stress",
    "StressPnL",
    "UnderlyingParams",
    "cancellable",
    "distance_to_call",
    "distance_to_call_model",
    "margin_scenarios",
    "params_from_model_params",
    "portfolio_margin",
    "scenario_margin",
    "shocked_vols",
    "stress_pnl",
    "vega_scale",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Aggregation = Literal["per_currency", "sum", "joint"]
ParametersSource = Literal["defaults", "venue"]


class Cancelled(Exception):
    """A computation run under :func:`cancellable` stopped because its event was set."""


_cancel = threading.local()  # .event: the running thread's cancellation event, if any


@contextmanager
def cancellable(event: threading.Event) -> Iterator[None]:
    """Run the enclosed computation, on this thread, cancellable by ``event``: once it is
    set, the distance scans raise :class:`Cancelled` at their next check (between blocks of
    moves or options, between refinement steps)."""
    outer = getattr(_cancel, "event", None)
    _cancel.event = event
    try:
        yield
    finally:
        _cancel.event = outer


def _checkpoint() -> None:
    """Raise :class:`Cancelled` if this thread runs under :func:`cancellable` and its event
    is set."""
    event: threading.Event | None = getattr(_cancel, "event", None)
    if event is not None and event.is_set():
        raise Cancelled("cancelled")


DAYS_PER_YEAR: Final = 365.0
#: The expiry, in days, at which a vol shock applies unscaled (Deribit's 30 days).
REFERENCE_DAYS: Final = 30.0
#: Vol state codes of :attr:`MarginScenarios.vol_state`.
VOL_UP: Final = 1
VOL_SAME: Final = 0
VOL_DOWN: Final = -1
_VOL_LABEL: Final = {VOL_UP: "vol up", VOL_SAME: "vol unchanged", VOL_DOWN: "vol down"}
_SD_MIN: Final = 1e-300  # as quant.greeks and quant.risk: below this sd an option is intrinsic
_MAX_ELEMENTS: Final = 1 << 17  # bound on one (scenarios x options) block
_NEWTON_MAX_ITER: Final = 100


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stress:
    """A named what-if, revalued every evaluation.

    Attributes
    ----------
    name
        Shown in reports (``"BTC -20% vol +50%"``).
    moves
        ``{underlying: move}``: relative price move of that underlying (``-0.2`` = -20%);
        every forward on it is multiplied by ``1 + move``. Must be > -1.
    default_move
        Move of every underlying not in ``moves``.
    vol_shift
        Relative IV shift of every option: ``sigma * (1 + vol_shift)`` (0.5 = "vol +50%"),
        not scaled by expiry; >= -1 (-1 takes every IV to 0, i.e. intrinsic value).
    """

    name: str
    moves: Mapping[str, float] = field(default_factory=dict)
    default_move: float = 0.0
    vol_shift: float = 0.0

    def __post_init__(self) -> None:
        for u, m in {**self.moves, "<default>": self.default_move}.items():
            if not (math.isfinite(m) and m > -1.0):
                raise ValueError(f"stress {self.name!r}: move of {u} must be > -1, got {m}")
        if not (math.isfinite(self.vol_shift) and self.vol_shift >= -1.0):
            raise ValueError(f"stress {self.name!r}: vol_shift must be >= -1")


@dataclass(frozen=True, slots=True)
class UnderlyingParams:
    """Scenario and delta-shock parameters of one underlying (Deribit's ``currency_pair``
    block of ``model_params``); ``None`` keeps the :class:`MarginSettings` value.

    Field meanings are those of :class:`MarginSettings`; ``delta_shock_threshold`` (USD),
    ``max_delta_shock`` and ``delta_shock_slope`` are Deribit's
    ``delta_total_liq_shock_threshold``, ``max_delta_shock`` and ``m_inc``.
    """

    price_range: float | None = None
    vol_range_up: float | None = None
    vol_range_down: float | None = None
    short_term_vega_power: float | None = None
    long_term_vega_power: float | None = None
    min_vol_shock_up: float | None = None
    extended_weight: float | None = None
    delta_shock_threshold: float | None = None
    max_delta_shock: float | None = None
    delta_shock_slope: float | None = None


@dataclass(frozen=True, slots=True)
class CurrencyParams:
    """Roll-shock and dampener parameters of one settlement currency (Deribit's
    ``currency`` block of ``model_params``).

    Attributes
    ----------
    min_annualised_move
        Smallest roll move, fraction (0.01): the perpetual's, and any expiry's floor.
    annualised_move_risk
        Roll move of an expiry ``d`` days out: ``exp(annualised_move_risk * d / 365) - 1``.
    extended_dampener
        USD amount that moves each extended scenario's P&L toward zero, scaled by how far
        the move lies beyond ``price_range`` (module notes).
    """

    min_annualised_move: float = 0.01
    annualised_move_risk: float = 0.075
    extended_dampener: float = 100_000.0

    def __post_init__(self) -> None:
        for name in ("min_annualised_move", "annualised_move_risk", "extended_dampener"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")


#: Deribit's published values where they differ from :class:`MarginSettings`' (BTC's).
DEFAULT_UNDERLYINGS: Final[Mapping[str, UnderlyingParams]] = {
    "ETH": UnderlyingParams(price_range=0.18, vol_range_up=0.4, delta_shock_slope=0.000004),
}
#: Deribit's published roll and dampener values per settlement currency.
DEFAULT_CURRENCIES: Final[Mapping[str, CurrencyParams]] = {
    "BTC": CurrencyParams(0.01, 0.075, 100_000.0),
    "ETH": CurrencyParams(0.005, 0.05, 200_000.0),
    "USD": CurrencyParams(0.01, 0.1, 25_000.0),
}


@dataclass(frozen=True, slots=True)
class MarginSettings:
    """``[margin]``: scenario-margin parameters (defaults: Deribit BTC, module notes).

    Attributes
    ----------
    price_range
        Largest move of the standard grid, fraction (0.16 = +-16%).
    price_steps
        Moves per side: the grid is ``price_range * j / price_steps`` for
        ``j = -price_steps .. price_steps`` (4 -> 9 moves including 0).
    vol_range_up, vol_range_down
        Relative IV shocks at 30 days to expiry (0.5 = IV x 1.5; 0.25 = IV x 0.75).
    short_term_vega_power, long_term_vega_power
        Exponent ``p`` of the expiry scale ``(30 / days) ** p`` below / from 30 days.
    min_days
        Floor on days to expiry in the scale (module notes).
    min_vol_shock_up
        Vol up is at least this IV (annualised decimal).
    extended_moves
        Moves of the extended table (vol up only).
    extended_weight
        Deribit's ``extended_table_factor``: an extended move ``m`` counts
        ``extended_weight * price_range / |m|`` of its P&L.
    aggregation
        ``"per_currency"``: the portfolio-margin model, one figure per settlement currency
        (:func:`portfolio_margin`), the scenario margin the sum of their worst cases;
        ``"sum"``: each underlying moved alone in USD, worst losses added; ``"joint"``:
        every underlying moved by the same scenario at once, in USD.
    mm_factor
        Maintenance margin = ``mm_factor`` x risk-matrix margin.
    dampener
        Apply the extended dampener (module notes) to the extended scenarios.
    delta_shock_threshold, max_delta_shock, delta_shock_slope
        Delta shock (module notes): USD of net delta below which it is 0, its largest
        fraction of the delta, and its growth per coin of delta beyond the threshold.
    underlyings
        Per-underlying overrides of the fields above (default: Deribit's ETH values).
    currencies
        Roll-shock and dampener parameters per settlement currency (``"USD"`` for
        USD-settled instruments, the coin's name for inverse ones); a coin not listed
        takes :class:`CurrencyParams`' defaults (Deribit's BTC values).
    parameters_source
        ``"defaults"`` (configured values) or ``"venue"`` (the venue's ``model_params``,
        :func:`params_from_model_params`), reported with the figures.
    stresses
        What-ifs for :func:`stress_pnl`.
    """

    price_range: float = 0.16
    price_steps: int = 4
    vol_range_up: float = 0.5
    vol_range_down: float = 0.25
    short_term_vega_power: float = 0.3
    long_term_vega_power: float = 0.13
    min_days: float = 1.0
    min_vol_shock_up: float = 0.5
    extended_moves: tuple[float, ...] = (-0.66, -0.33, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0)
    extended_weight: float = 1.0
    aggregation: Aggregation = "per_currency"
    mm_factor: float = 0.8
    dampener: bool = True
    delta_shock_threshold: float = 20_000_000.0
    max_delta_shock: float = 0.1
    delta_shock_slope: float = 0.00005
    underlyings: Mapping[str, UnderlyingParams] = field(
        default_factory=lambda: dict(DEFAULT_UNDERLYINGS)
    )
    currencies: Mapping[str, CurrencyParams] = field(
        default_factory=lambda: dict(DEFAULT_CURRENCIES)
    )
    parameters_source: ParametersSource = "defaults"
    stresses: tuple[Stress, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.price_range < 1.0:
            raise ValueError(f"price_range must be in (0, 1), got {self.price_range}")
        if self.price_steps < 1:
            raise ValueError(f"price_steps must be >= 1, got {self.price_steps}")
        for name in (
            "vol_range_up",
            "vol_range_down",
            "short_term_vega_power",
            "long_term_vega_power",
            "min_vol_shock_up",
            "extended_weight",
            "mm_factor",
            "delta_shock_threshold",
            "max_delta_shock",
            "delta_shock_slope",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        for u, over in self.underlyings.items():
            for name in (f.name for f in fields(UnderlyingParams)):
                v = getattr(over, name)
                if v is not None and not (math.isfinite(v) and v >= 0.0):
                    raise ValueError(f"underlyings.{u}.{name} must be finite and >= 0, got {v}")
            if over.price_range is not None and not 0.0 < over.price_range < 1.0:
                raise ValueError(f"underlyings.{u}.price_range must be in (0, 1)")
        if not (math.isfinite(self.min_days) and self.min_days > 0.0):
            raise ValueError(f"min_days must be > 0, got {self.min_days}")
        for m in self.extended_moves:
            if not (math.isfinite(m) and m > -1.0 and m != 0.0):
                raise ValueError(f"extended moves must be > -1 and not 0, got {m}")
        if self.aggregation not in ("per_currency", "sum", "joint"):
            raise ValueError(
                f"aggregation must be 'per_currency', 'sum' or 'joint', got {self.aggregation!r}"
            )
        names = [s.name for s in self.stresses]
        if len(set(names)) != len(names):
            raise ValueError("stress names must be unique")


# -- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MarginScenarios:
    """The scenario list, arrays of shape ``(m,)``.

    Order: the standard moves ascending, each with vol up, unchanged, down; then the
    extended moves (vol up). 35 scenarios with the defaults.

    Attributes
    ----------
    moves
        Relative price move (forward x ``1 + move``).
    vol_state
        ``VOL_UP`` (1), ``VOL_SAME`` (0) or ``VOL_DOWN`` (-1).
    weights
        Weight of the scenario's P&L in the margin: 1, or
        ``extended_weight * price_range / |move|`` for extended moves.
    extended
        Bool, the extended table.
    names
        ``"-16% vol up"``, ``"0% vol unchanged"``, ``"+500% vol up (extended)"``.
    """

    moves: FloatArray
    vol_state: IntArray
    weights: FloatArray
    extended: BoolArray
    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)


def _pct(m: float) -> str:
    return "0%" if m == 0.0 else f"{100.0 * m:+.4g}%"


def margin_scenarios(settings: MarginSettings | None = None) -> MarginScenarios:
    """The scenario grid of ``settings`` (default: Deribit's, 9 x 3 + 8 = 35 scenarios)."""
    s = settings or MarginSettings()
    steps = np.arange(-s.price_steps, s.price_steps + 1, dtype=np.float64)
    std = s.price_range * steps / s.price_steps  # exact 0 and +-price_range
    states = np.array([VOL_UP, VOL_SAME, VOL_DOWN], dtype=np.int64)
    ext = np.asarray(s.extended_moves, dtype=np.float64)
    moves = np.concatenate([np.repeat(std, 3), ext])
    vol_state = np.concatenate([np.tile(states, std.size), np.full(ext.size, VOL_UP)])
    extended = np.concatenate([np.zeros(3 * std.size, dtype=bool), np.ones(ext.size, dtype=bool)])
    weights = np.ones(moves.size)
    if ext.size:
        weights[extended] = s.extended_weight * s.price_range / np.abs(ext)
    names = tuple(
        f"{_pct(m)} {_VOL_LABEL[v]}" + (" (extended)" if e else "")
        for m, v, e in zip(moves.tolist(), vol_state.tolist(), extended.tolist(), strict=True)
    )
    return MarginScenarios(moves, vol_state, weights, extended, names)


def vega_scale(t: npt.ArrayLike, settings: MarginSettings | None = None) -> FloatArray:
    """Expiry scale of the vol shocks, ``(30 / max(days, min_days)) ** p``.

    Parameters
    ----------
    t
        Time to expiry, years of 365 days (any shape).
    settings
        ``p = short_term_vega_power`` below 30 days, ``long_term_vega_power`` from 30 days.

    Returns
    -------
    FloatArray
        Dimensionless, shape of ``t``; 1 at 30 days, > 1 before, < 1 after.
    """
    s = settings or MarginSettings()
    days = np.maximum(np.asarray(t, dtype=np.float64) * DAYS_PER_YEAR, s.min_days)
    power = np.where(days < REFERENCE_DAYS, s.short_term_vega_power, s.long_term_vega_power)
    out: FloatArray = (REFERENCE_DAYS / days) ** power
    return out


def shocked_vols(
    vol: npt.ArrayLike, t: npt.ArrayLike, settings: MarginSettings | None = None
) -> FloatArray:
    """IV of each option in each vol state (module notes).

    Parameters
    ----------
    vol
        Shape ``(i,)``, marked IV, annualised decimal.
    t
        Shape ``(i,)``, time to expiry, years of 365 days.

    Returns
    -------
    FloatArray
        Shape ``(3, i)``: rows vol up, unchanged, down (annualised decimal, >= 0).
    """
    s = settings or MarginSettings()
    sig = np.maximum(np.asarray(vol, dtype=np.float64), 0.0)
    scale = vega_scale(t, s)
    up = np.maximum(sig * (1.0 + s.vol_range_up * scale), s.min_vol_shock_up)
    down = np.maximum(sig * (1.0 - s.vol_range_down * scale), 0.0)
    return np.stack([up, sig, down])


# -- shared option helpers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Options:
    """Priceable option rows (finite inputs, positive forward and strike, held)."""

    und: IntArray  # (i,)
    fwd: FloatArray
    strike: FloatArray
    t: FloatArray  # >= 0
    vol: FloatArray  # >= 0
    call: BoolArray
    w: FloatArray  # +1 call, -1 put
    lnfk: FloatArray
    qty: FloatArray  # (i, k)
    unpriced: int
    keep: IntArray | None = None  # rows of the input kept (from _prepare)

    @property
    def size(self) -> int:
        return int(self.und.shape[0])


def _linear(linear_usd: npt.ArrayLike, n: int) -> FloatArray:
    lin = np.asarray(linear_usd, dtype=np.float64)
    if lin.ndim != 2 or lin.shape[0] != n:
        raise ValueError(f"linear_usd must have shape ({n}, k), got {lin.shape}")
    if not np.isfinite(lin).all():
        raise ValueError("linear_usd must be finite")
    return lin


def _linear_named(
    linear_usd: npt.ArrayLike, underlyings: Sequence[str]
) -> tuple[FloatArray, tuple[str, ...]]:
    """``linear_usd`` as a finite ``(n, k)`` array and the ``n`` underlying names."""
    lin = np.asarray(linear_usd, dtype=np.float64)
    if lin.ndim != 2:
        raise ValueError(f"linear_usd must be 2-D (n, k), got shape {lin.shape}")
    lin = _linear(lin, lin.shape[0])
    names = tuple(underlyings)
    if len(names) != lin.shape[0]:
        raise ValueError(f"{len(names)} underlying names for {lin.shape[0]} underlyings")
    return lin, names


def _prepare(options: OptionPositions | None, n: int, k: int) -> _Options | None:
    """Validate and keep the priceable, held rows (as :func:`monitor.quant.risk.revalue` does)."""
    if options is None:
        return None
    und = np.asarray(options.underlying, dtype=np.int64)
    i = und.shape[0]
    f = np.asarray(options.forward, dtype=np.float64)
    kk = np.asarray(options.strike, dtype=np.float64)
    t = np.asarray(options.t, dtype=np.float64)
    vol = np.asarray(options.vol, dtype=np.float64)
    call = np.asarray(options.is_call, dtype=bool)
    for name, a in (("forward", f), ("strike", kk), ("t", t), ("vol", vol), ("is_call", call)):
        if a.shape != (i,):
            raise ValueError(f"options.{name} must have shape ({i},), got {a.shape}")
    q = np.asarray(options.quantity, dtype=np.float64)
    if q.shape != (i, k):
        raise ValueError(f"options.quantity must have shape ({i}, {k}), got {q.shape}")
    if i and (und.min() < 0 or und.max() >= n):
        raise ValueError(f"options.underlying must index the {n} underlyings")
    held = (q != 0.0).any(axis=1)
    ok = np.isfinite(f) & np.isfinite(kk) & np.isfinite(t) & np.isfinite(vol)
    ok &= (f > 0.0) & (kk > 0.0) & np.isfinite(q).all(axis=1)
    unpriced = int((held & ~ok).sum())
    keep = np.flatnonzero(ok & held)
    f, kk = f[keep], kk[keep]
    return _Options(
        und=und[keep],
        fwd=f,
        strike=kk,
        t=np.maximum(t[keep], 0.0),
        vol=np.maximum(vol[keep], 0.0),
        call=call[keep],
        w=np.where(call[keep], 1.0, -1.0),
        lnfk=np.log(f / kk),
        qty=q[keep],
        unpriced=unpriced,
        keep=keep,
    )


def _values(r: FloatArray, o: _Options, c: IntArray | slice, sd: FloatArray) -> FloatArray:
    """Black-76 value after log moves ``r`` (consumed), USD per unit.

    ``r`` has shape ``(m, len(c))``; ``sd`` (total standard deviation ``vol sqrt(t)``) has
    shape ``(len(c),)`` or ``(m, len(c))``. Where ``sd`` is below ``_SD_MIN`` (expired,
    zero vol) the value is intrinsic on the moved forward.
    """
    fwd, strike, w = o.fwd[c], o.strike[c], o.w[c]
    dead = sd <= _SD_MIN
    if not dead.any():
        return _b76_block(r, o.lnfk[c], fwd, strike, w, sd)
    intrinsic = np.maximum(w * (fwd * np.exp(r) - strike), 0.0)
    v = _b76_block(r, o.lnfk[c], fwd, strike, w, np.where(dead, 1.0, sd))
    np.copyto(v, intrinsic, where=np.broadcast_to(dead, v.shape))
    return v


def _chunks(m: int, size: int) -> list[slice]:
    step = max(1, _MAX_ELEMENTS // max(m, 1))
    return [slice(s, min(s + step, size)) for s in range(0, size, step)]


# -- scenario margin ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScenarioMargin:
    """Scenario margin of ``k`` books over ``n`` underlyings and ``m`` scenarios.

    Attributes
    ----------
    margin_usd
        Shape ``(k,)``: the worst weighted loss, USD, >= 0 (per ``aggregation``).
    worst_scenario
        ``k`` names: ``"-16% vol up"`` (joint: every underlying moved so), or for ``"sum"``
        the worst scenario of each underlying with a loss, largest loss first:
        ``"BTC -16% vol up + ETH +16% vol down"``. ``None`` where the margin is 0.
    aggregation
        ``"sum"`` or ``"joint"``.
    scenarios
        The scenario list (moves, vol states, weights, names).
    underlyings
        The ``n`` underlying names.
    pnl_usd
        Shape ``(m, n, k)``: full-revaluation P&L of each book's positions on each
        underlying when that underlying moves as the scenario says, USD, unweighted. The
        joint P&L of a scenario is the sum over underlyings (:attr:`joint_pnl_usd`).
    loss_by_underlying_usd
        Shape ``(n, k)``: worst weighted loss per underlying moved alone, USD, >= 0.
    worst_by_underlying
        Shape ``(n, k)``: its scenario index (meaningful where the loss is > 0).
    joint_loss_usd
        Shape ``(k,)``: worst weighted loss with all underlyings moved together, >= 0.
    worst_joint
        Shape ``(k,)``: its scenario index.
    unpriced
        Option rows left out (P&L 0): a non-finite input or a non-positive forward/strike.
    """

    margin_usd: FloatArray
    worst_scenario: tuple[str | None, ...]
    aggregation: Aggregation
    scenarios: MarginScenarios
    underlyings: tuple[str, ...]
    pnl_usd: FloatArray
    loss_by_underlying_usd: FloatArray
    worst_by_underlying: IntArray
    joint_loss_usd: FloatArray
    worst_joint: IntArray
    unpriced: int

    @property
    def joint_pnl_usd(self) -> FloatArray:
        """Shape ``(m, k)``: P&L with every underlying moved together, USD, unweighted."""
        out: FloatArray = self.pnl_usd.sum(axis=1)
        return out


def _worst(loss: FloatArray, sc: MarginScenarios) -> tuple[IntArray, FloatArray]:
    """Worst scenario (argmax over axis 0) and the largest loss.

    Near-ties (within ``1e-12`` relative) go to a standard scenario before an extended one
    and to vol unchanged before a vol shock: a linear book loses the same in every vol
    state, and ``price_range / |m| * m`` makes each extended move of a linear book tie with
    the +-``price_range`` one; the name should not hang on rounding.
    """
    order = np.lexsort((sc.vol_state != VOL_SAME, sc.extended))
    top = loss.max(axis=0)
    near = loss[order] >= top - 1e-12 * np.abs(top)
    idx: IntArray = order[np.argmax(near, axis=0)]
    return idx, top


def _option_pnl_by_underlying(
    o: _Options, r: FloatArray, sd_rows: FloatArray, n: int, k: int
) -> FloatArray:
    """Option P&L ``(m, n, k)`` for log moves ``r`` ``(m,)`` per scenario, applied to each
    option's own underlying, with total sd ``sd_rows`` ``(m, i)`` (or ``(i,)``), IV held
    otherwise, time not advanced."""
    m = r.shape[0]
    i = o.size
    sd0 = o.vol * np.sqrt(o.t)
    dv = np.empty((m, i))
    for c in _chunks(m, i):
        sd = sd_rows[..., c]
        base = _values(np.zeros((1, c.stop - c.start)), o, c, sd0[c])
        v = _values(np.repeat(r[:, None], c.stop - c.start, axis=1), o, c, sd)
        v -= base
        dv[:, c] = v
    # Aggregate per (underlying, book) in one sparse product: row u * k + b of qt holds the
    # quantities book b has in the options on underlying u.
    rows, cols = np.nonzero(o.qty)
    qt = sparse.csr_array((o.qty[rows, cols], (o.und[rows] * k + cols, rows)), shape=(n * k, i))
    out: FloatArray = np.asarray(qt @ dv.T).T.reshape(m, n, k)
    return out


def scenario_margin(
    linear_usd: npt.ArrayLike,
    options: OptionPositions | None,
    settings: MarginSettings | None = None,
    underlyings: Sequence[str] | None = None,
) -> ScenarioMargin:
    """Worst full-revaluation loss over the scenario grid, per book.

    Parameters
    ----------
    linear_usd
        Shape ``(n, k)``: USD value of the linear positions (spot, perpetuals, futures) per
        underlying and book (``BookValues.linear_usd.T``); P&L ``linear_usd * move``.
    options
        Options deduplicated per instrument, ``quantity`` of shape ``(i, k)`` in underlying
        units; ``None`` without options. Each is repriced by Black-76 on its forward times
        ``1 + move`` at its shocked IV, time not advanced.
    settings
        Grid, vol shocks and aggregation (default: Deribit's, module notes).
    underlyings
        The ``n`` underlying names (default ``"U0"``, ``"U1"``, ...), for scenario names.

    Returns
    -------
    ScenarioMargin
        Margin per book, the worst scenario's name, and the full P&L matrix.

    Notes
    -----
    ``O(m x i)`` Black-76 prices (``m = 35``) in blocks of ``2**17`` elements, then one
    sparse ``(n k x i) @ (i x m)`` product; no loop per position or scenario.
    """
    s = settings or MarginSettings()
    n_rows = np.shape(linear_usd)[0] if np.ndim(linear_usd) else 0
    default = tuple(f"U{j}" for j in range(n_rows))
    lin, names = _linear_named(linear_usd, default if underlyings is None else underlyings)
    n, k = lin.shape
    sc = margin_scenarios(s)
    pnl = sc.moves[:, None, None] * lin[None, :, :]  # (m, n, k)
    o = _prepare(options, n, k)
    if o is not None and o.size:
        vols = shocked_vols(o.vol, o.t, s)  # (3, i): up, same, down
        sd_states = vols * np.sqrt(o.t)
        state_row = 1 - sc.vol_state  # VOL_UP -> 0, VOL_SAME -> 1, VOL_DOWN -> 2
        pnl += _option_pnl_by_underlying(o, np.log1p(sc.moves), sd_states[state_row], n, k)

    loss = -sc.weights[:, None, None] * pnl  # (m, n, k)
    worst_u, top_u = _worst(loss, sc)  # (n, k)
    loss_u = np.maximum(top_u, 0.0)
    worst_j, top_j = _worst(loss.sum(axis=1), sc)  # (k,)
    loss_j = np.maximum(top_j, 0.0)

    if s.aggregation == "joint":
        margin = loss_j
        label: list[str | None] = [
            sc.names[j] if x > 0.0 else None
            for j, x in zip(worst_j.tolist(), loss_j.tolist(), strict=True)
        ]
    else:
        margin = loss_u.sum(axis=0)
        label = []
        for b in range(k):  # names only: one string per book
            held = np.flatnonzero(loss_u[:, b] > 0.0)
            held = held[np.argsort(-loss_u[held, b], kind="stable")]
            parts = [f"{names[u]} {sc.names[worst_u[u, b]]}" for u in held.tolist()]
            label.append(" + ".join(parts) or None)
    return ScenarioMargin(
        margin_usd=margin,
        worst_scenario=tuple(label),
        aggregation=s.aggregation,
        scenarios=sc,
        underlyings=names,
        pnl_usd=pnl,
        loss_by_underlying_usd=loss_u,
        worst_by_underlying=worst_u,
        joint_loss_usd=loss_j,
        worst_joint=worst_j,
        unpriced=0 if o is None else o.unpriced,
    )


# -- stresses -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StressPnL:
    """P&L of each book under each stress.

    Attributes
    ----------
    names
        The ``s`` stress names, in the order given.
    pnl_usd
        Shape ``(s, k)``: full-revaluation P&L, USD (a loss is negative). Time is not
        advanced.
    unpriced
        Option rows left out (as :class:`ScenarioMargin`).
    """

    names: tuple[str, ...]
    pnl_usd: FloatArray
    unpriced: int


def stress_pnl(
    linear_usd: npt.ArrayLike,
    options: OptionPositions | None,
    stresses: Sequence[Stress],
    underlyings: Sequence[str],
) -> StressPnL:
    """Revalue every book under each named stress.

    Parameters
    ----------
    linear_usd
        Shape ``(n, k)``, USD (as :func:`scenario_margin`).
    options
        Deduplicated options, ``quantity`` ``(i, k)``; each repriced at forward x
        ``1 + move`` of its underlying and IV x ``1 + vol_shift``.
    stresses
        The what-ifs; a move given for an underlying not in ``underlyings`` is ignored.
    underlyings
        The ``n`` underlying names, in ``linear_usd`` row order.

    Returns
    -------
    StressPnL
        ``pnl_usd`` of shape ``(len(stresses), k)``.
    """
    lin, names = _linear_named(linear_usd, underlyings)
    n, k = lin.shape
    ns = len(stresses)
    moves, vol_factor = _stress_moves(stresses, names)
    pnl = moves @ lin  # (s, k)
    o = _prepare(options, n, k)
    if o is not None and o.size and ns:
        r_all = np.log1p(moves)  # (s, n)
        sd0 = o.vol * np.sqrt(o.t)
        for c in _chunks(ns, o.size):
            base = _values(np.zeros((1, c.stop - c.start)), o, c, sd0[c])
            sd = vol_factor[:, None] * sd0[c]  # (s, chunk)
            v = _values(r_all[:, o.und[c]], o, c, sd)
            v -= base
            pnl += v @ o.qty[c]
    return StressPnL(tuple(st.name for st in stresses), pnl, 0 if o is None else o.unpriced)


#: (stresses, underlying names, moves, vol factors) of the last :func:`stress_pnl` call:
#: the configuration's matrices, rebuilt when the stresses (identity) or the names change.
_STRESS_MEMO: list[tuple[Sequence[Stress], tuple[str, ...], FloatArray, FloatArray]] = []


def _stress_moves(
    stresses: Sequence[Stress], names: tuple[str, ...]
) -> tuple[FloatArray, FloatArray]:
    """Per stress, the relative move of each underlying ``(s, n)`` and the IV factor
    ``(s,)`` (read-only; kept for the same ``stresses`` object and names)."""
    if _STRESS_MEMO:
        st0, names0, moves0, vf0 = _STRESS_MEMO[0]
        if st0 is stresses and names0 == names:
            return moves0, vf0
    n, ns = len(names), len(stresses)
    col = {u: j for j, u in enumerate(names)}
    moves = np.array([[st.default_move] * n for st in stresses], dtype=np.float64).reshape(ns, n)
    for j, st in enumerate(stresses):  # configuration, not numerics: one entry per named move
        for u, mv in st.moves.items():
            if u in col:
                moves[j, col[u]] = mv
    vol_factor = np.array([1.0 + st.vol_shift for st in stresses], dtype=np.float64)
    moves.flags.writeable = False
    vol_factor.flags.writeable = False
    if isinstance(stresses, tuple):  # immutable: safe to key on its identity
        _STRESS_MEMO[:] = [(stresses, names, moves, vol_factor)]
    return moves, vol_factor


# -- distance to a margin call --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DistanceToCall:
    """Distance of ``k`` books to their maintenance margin (module notes), arrays ``(k,)``.

    Attributes
    ----------
    down, up
        Smallest uniform move of all underlyings, as a positive fraction (``down`` 0.12 =
        a 12% fall), at which equity after full revaluation reaches maintenance margin; 0
        for a book already at or below it; NaN where no move within ``max_move`` reaches
        it, or where equity or maintenance margin is unknown. Accurate to ``tol``.
    reachable_down, reachable_up
        True where the call is reached within ``max_move`` (including already called).
    sigmas_down, sigmas_up
        ``|ln(1 -+ move)| / sigma_1d``: the move in 1-day sigmas; NaN where the move is, or
        where ``sigma_1d`` is unknown or 0.
    sigma_1d
        1-day standard deviation of the log return of the book's basket of underlyings,
        ``sqrt(w' S w / 365)`` with ``w = |x| / sum |x|`` (decimal). A book with no delta
        weighs the underlyings it holds equally; NaN when a needed covariance is unknown
        or the book holds nothing.
    headroom_usd
        ``equity - maintenance_margin``, USD.
    valid
        Equity and maintenance margin were finite (else every figure is NaN/False).
    max_move
        The search bound (fraction).
    """

    down: FloatArray
    up: FloatArray
    reachable_down: BoolArray
    reachable_up: BoolArray
    sigmas_down: FloatArray
    sigmas_up: FloatArray
    sigma_1d: FloatArray
    headroom_usd: FloatArray
    valid: BoolArray
    max_move: float


def _move_grid(max_move: float, points: int) -> FloatArray:
    """``max_move * (j / points) ** 1.5``, ``j = 1..points``: fine near 0 (steps of 0.36%
    at first with the defaults), 3.4% at the far end."""
    j = np.arange(1, points + 1, dtype=np.float64)
    out: FloatArray = max_move * (j / points) ** 1.5
    out[-1] = max_move
    return out


def _scan_moves(
    max_move: float, grid_points: int, o: _Options | None
) -> tuple[FloatArray, FloatArray]:
    """The moves the distance scan looks at, down (magnitudes) and up, ascending.

    :func:`_move_grid`, plus, for each short-dated option (total sd ``sigma sqrt(t)`` under
    twice the grid's spacing where the option sits), the move that puts it at the money
    (``K / F - 1``, its strike) and moves ``j sd / 2`` either side of it (``j = 1..4``): its
    P&L bends over a width of about ``sd``, so a dip between two grid points is seen. A
    longer-dated option's P&L is smooth over two grid steps.
    """
    base = _move_grid(max_move, grid_points)
    down, up = [base], [base]
    if o is not None and o.size:
        atm = o.strike / o.fwd - 1.0
        sd = o.vol * np.sqrt(o.t)
        spacing = np.interp(np.abs(atm), base[1:], np.diff(base), left=base[0])
        short = sd < 2.0 * spacing
        if short.any():
            j = 0.5 * np.arange(-4, 5, dtype=np.float64)
            ratio = (o.strike / o.fwd)[short]
            pts = (ratio[:, None] * np.exp(j[None, :] * sd[short, None]) - 1.0).ravel()
            up.append(pts[(pts > 0.0) & (pts < max_move)])
            down.append(-pts[(pts < 0.0) & (pts > -max_move)])
    return np.unique(np.concatenate(down)), np.unique(np.concatenate(up))


def _first_crossings(
    g: tuple[FloatArray, FloatArray],
    grids: tuple[FloatArray, FloatArray],
    headroom: FloatArray,
) -> tuple[BoolArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per direction and book, the first scan point with ``g <= 0`` and the cell before it.

    ``g[d]`` has shape ``(len(grids[d]), k)``. Returns ``reach``, ``lo``, ``hi``, ``g(lo)``,
    ``g(hi)``, each ``(2, k)``; ``lo`` is 0 (where ``g`` is the headroom) for the first cell.
    """
    k = headroom.shape[0]
    out = np.zeros((5, 2, k))
    for d in (0, 1):  # two directions, not a loop over data
        gd, grid = g[d], grids[d]
        below = gd <= 0.0  # NaN headroom compares False
        first = np.argmax(below, axis=0)  # (k,)
        prev = np.maximum(first - 1, 0)
        cols = np.arange(k)
        out[0, d] = below.any(axis=0)
        out[1, d] = np.where(first > 0, grid[prev], 0.0)
        out[2, d] = grid[first]
        out[3, d] = np.where(first > 0, gd[prev, cols], headroom)
        out[4, d] = gd[first, cols]
    return out[0].astype(bool), out[1], out[2], out[3], out[4]


def _basket_sigma(
    cov: npt.ArrayLike, exposure: npt.ArrayLike, held: BoolArray, n: int, k: int
) -> FloatArray:
    """``sqrt(w' S w / 365)`` per book (class notes), shape ``(k,)``."""
    s = np.asarray(cov, dtype=np.float64)
    x = np.asarray(exposure, dtype=np.float64)
    if s.shape != (n, n):
        raise ValueError(f"cov must have shape ({n}, {n}), got {s.shape}")
    if x.shape != (k, n):
        raise ValueError(f"exposure must have shape ({k}, {n}), got {x.shape}")
    ax = np.abs(np.where(np.isfinite(x), x, 0.0))
    gross = ax.sum(axis=1, keepdims=True)
    flat = held.astype(np.float64)
    wts = np.where(gross > 0.0, ax, flat)
    tot = wts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        wts = wts / tot
    unknown = ~np.isfinite(s)
    s0 = np.where(unknown, 0.0, s)
    var = np.einsum("ki,ij,kj->k", wts, s0, wts)
    on = (wts > 0.0).astype(np.float64)
    missing = np.einsum("ki,ij,kj->k", on, unknown.astype(np.float64), on) > 0.0
    sigma = np.sqrt(np.maximum(var, 0.0) / DAYS_PER_YEAR)
    out: FloatArray = np.where(missing | (tot[:, 0] == 0.0), np.nan, sigma)
    return out


#: Grid intervals of the scan of :func:`distance_to_call` (``value_grid``).
SCAN_GRID_POINTS: Final = 48


def _scan_on_grid(
    o: _Options, sd0: FloatArray, r: FloatArray, max_move: float, points: int, pnl: FloatArray
) -> IntArray:
    """Add to ``pnl`` ``(moves, k)`` the P&L at log moves ``r`` of the options a grid of
    ``points`` intervals over ``+-max_move`` holds (sd of at least 1.5 intervals), read
    by cubic Hermite interpolation; returns the rows left to exact valuation."""
    lo = math.log1p(-max_move)
    h = (math.log1p(max_move) - lo) / points
    on = (sd0 >= _GRID_MIN_SD_STEPS * h) & (sd0 > _SD_MIN)
    rows = np.flatnonzero(on)
    if rows.size == 0:
        return np.flatnonzero(~on)
    p1 = points + 1
    x = lo + np.arange(p1, dtype=np.float64)[:, None] * h
    k = o.qty.shape[1]
    val, slope = np.zeros((1, p1, k)), np.zeros((1, p1, k))
    step = max(1, _MAX_ELEMENTS // p1)
    for s0 in range(0, rows.size, step):
        c = rows[s0 : s0 + step]
        v, dv, _, _ = _b76_grid(x, o, c, sd0[c], False)
        v -= _values(np.zeros((1, c.size)), o, c, sd0[c])  # P&L since today, exact base
        val[0] += v @ o.qty[c]
        slope[0] += dv @ o.qty[c]
    zero = np.zeros((1, 1), dtype=np.int64)
    books = np.arange(k)[None, :]
    pnl += _hermite(val, slope, np.array([lo]), np.array([h]), points, zero, r[:, None], books)
    out: IntArray = np.flatnonzero(~on)
    return out


def distance_to_call(
    equity: npt.ArrayLike,
    maintenance_margin: npt.ArrayLike,
    linear_usd: npt.ArrayLike,
    options: OptionPositions | None,
    cov: npt.ArrayLike,
    exposure: npt.ArrayLike,
    max_move: float = 0.9,
    *,
    tol: float = 1e-9,
    grid_points: int = 40,
    value_grid: int | None = SCAN_GRID_POINTS,
) -> DistanceToCall:
    """Smallest uniform move, down and up, at which equity reaches maintenance margin.

    Parameters
    ----------
    equity, maintenance_margin
        Shape ``(k,)``, USD, as the venue reports them (NaN = unknown). The maintenance
        margin is held at this value in every move.
    linear_usd
        Shape ``(n, k)``, USD (as :func:`scenario_margin`).
    options
        Deduplicated options, ``quantity`` ``(i, k)``; repriced by Black-76 on forward x
        ``1 + move``, IV held, time not advanced.
    cov
        Shape ``(n, n)``: annualised covariance of log returns (NaN = unknown), for sigmas.
    exposure
        Shape ``(k, n)``: ``delta_usd`` per book and underlying (``BookValues.exposure``),
        for the basket weights of the sigmas.
    max_move
        Search bound, fraction in (0, 1): moves beyond it are not looked at.
    tol
        Accuracy of the returned move.
    grid_points
        Base scan points per direction (:func:`_move_grid`), to which :func:`_scan_moves`
        adds each short-dated option's strike and moves within two of its sds, spaced by
        half an sd. The scan finds the first point at or below maintenance margin and the
        root is refined in the cell before: the move is the smallest one unless the book's
        P&L dips below and back within one cell, which the added points rule out for
        options (the P&L of an option bends over a width of about its sd).
    value_grid
        The scan reads the options whose sd spans at least 1.5 intervals from a grid of
        this many intervals of log moves over ``+-max_move`` (each valued once, with its
        slope; the books' sums read by cubic Hermite interpolation); the others, and the
        refinement, are exact. ``None``: every option valued at every scan point.
        tests/test_margin_grid.py checks the distances against exact valuation.

    Returns
    -------
    DistanceToCall

    Notes
    -----
    Scan: ``2 x grid_points`` moves (plus 9 per short-dated option, deduplicated) x ``i``
    instruments, one matrix product into the books.
    Refinement: safeguarded Newton (bisection whenever a Newton step leaves the bracket) on
    the books' (instrument, book) pairs, all books and both directions at once, the
    derivative from Black-76 delta; typically 4-6 iterations.
    """
    if not 0.0 < max_move < 1.0:
        raise ValueError(f"max_move must be in (0, 1), got {max_move}")
    if grid_points < 1:
        raise ValueError(f"grid_points must be >= 1, got {grid_points}")
    lin = np.asarray(linear_usd, dtype=np.float64)
    if lin.ndim != 2:
        raise ValueError(f"linear_usd must be 2-D (n, k), got shape {lin.shape}")
    n, k = lin.shape
    lin = _linear(lin, n)
    eq = np.asarray(equity, dtype=np.float64)
    mm = np.asarray(maintenance_margin, dtype=np.float64)
    if eq.shape != (k,) or mm.shape != (k,):
        raise ValueError(f"equity and maintenance_margin must have shape ({k},)")
    headroom = eq - mm
    valid = np.isfinite(headroom)
    o = _prepare(options, n, k)
    has_opt = o is not None and o.size > 0

    held = lin != 0.0  # (n, k)
    if o is not None and has_opt:
        rows, cols = np.nonzero(o.qty)
        held[o.und[rows], cols] = True
    sigma_1d = _basket_sigma(cov, exposure, held.T, n, k)

    # -- scan: g(move) = headroom + P&L(move) on the grid, both directions ---------------
    grids = _scan_moves(max_move, grid_points, o)  # (down magnitudes, up moves)
    sign = np.array([-1.0, 1.0])
    moves = np.concatenate([-grids[0], grids[1]])  # down then up
    lin_tot = lin.sum(axis=0)  # (k,): uniform move, so the linear P&L is lin_tot * move
    pnl = moves[:, None] * lin_tot[None, :]  # (moves, k)
    if o is not None and has_opt:
        sd0 = o.vol * np.sqrt(o.t)
        r = np.log1p(moves)
        exact = np.arange(o.size)
        if value_grid is not None:
            exact = _scan_on_grid(o, sd0, r, max_move, value_grid, pnl)
        step = max(1, _MAX_ELEMENTS // max(moves.size, 1))
        for s0 in range(0, exact.size, step):
            _checkpoint()
            c = exact[s0 : s0 + step]
            base = _values(np.zeros((1, c.size)), o, c, sd0[c])
            v = _values(np.repeat(r[:, None], c.size, axis=1), o, c, sd0[c])
            v -= base
            pnl += v @ o.qty[c]
    g_all = headroom[None, :] + pnl
    split = grids[0].size
    reach, lo, hi, g_lo, g_hi = _first_crossings((g_all[:split], g_all[split:]), grids, headroom)
    called = valid & (headroom <= 0.0)
    reach &= valid[None, :]
    reach |= called[None, :]

    dist = np.full((2, k), np.nan)
    dist[:, called] = 0.0
    todo = reach & ~called[None, :]  # (2, k)
    if todo.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            x0 = lo + (hi - lo) * g_lo / (g_lo - g_hi)  # secant guess in the bracket
        x0 = np.where(np.isfinite(x0) & (x0 > lo) & (x0 < hi), x0, 0.5 * (lo + hi))
        dist[todo] = _refine(
            np.flatnonzero(todo.reshape(-1)), lo, hi, x0, headroom, lin_tot, o, k, tol
        )

    with np.errstate(invalid="ignore", divide="ignore"):
        sig = np.abs(np.log1p(sign[:, None] * dist)) / sigma_1d[None, :]
    sig = np.where(np.isfinite(sig), sig, np.nan)
    return DistanceToCall(
        down=dist[0],
        up=dist[1],
        reachable_down=reach[0],
        reachable_up=reach[1],
        sigmas_down=sig[0],
        sigmas_up=sig[1],
        sigma_1d=sigma_1d,
        headroom_usd=headroom,
        valid=valid,
        max_move=max_move,
    )


def _refine(
    problems: IntArray,
    lo: FloatArray,
    hi: FloatArray,
    x0: FloatArray,
    headroom: FloatArray,
    lin_tot: FloatArray,
    o: _Options | None,
    k: int,
    tol: float,
) -> FloatArray:
    """Root of ``g(x) = headroom + P&L(sign x)`` in ``(lo, hi]`` for each problem.

    ``problems`` index the flattened ``(2, k)`` (direction, book) arrays; ``g(lo) > 0 >=
    g(hi)``. Returns the roots, in ``problems`` order.
    """
    a = lo.reshape(-1)[problems].copy()
    b = hi.reshape(-1)[problems].copy()
    x = x0.reshape(-1)[problems].copy()
    book = problems % k
    sgn = np.where(problems < k, -1.0, 1.0)
    hr = headroom[book]
    lt = lin_tot[book]
    n_p = problems.size

    # (instrument, problem) entries: every option a problem's book holds.
    rows, cols = np.nonzero(o.qty) if o is not None else (np.zeros(0, np.int64),) * 2
    slot = np.full((2, k), -1, dtype=np.int64)
    slot.reshape(-1)[problems] = np.arange(n_p)
    e_row = np.concatenate([rows, rows])
    e_prob = np.concatenate([slot[0, cols], slot[1, cols]])
    keep = e_prob >= 0
    e_row, e_prob = e_row[keep], e_prob[keep]
    if o is not None and e_row.size:
        e_qty = o.qty[e_row, book[e_prob]]
        e_fwd = o.fwd[e_row]
        e_args = (o.strike[e_row], o.t[e_row], o.vol[e_row], o.call[e_row])
        e_base = black76(e_fwd, *e_args).price

    active = np.ones(n_p, dtype=bool)
    for _ in range(_NEWTON_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xa = x[idx]
        move = sgn[idx] * xa
        g = hr[idx] + lt[idx] * move
        dg = lt[idx] * sgn[idx]
        if e_row.size:
            pos = np.full(n_p, -1, dtype=np.int64)
            pos[idx] = np.arange(idx.size)
            sel = np.flatnonzero(pos[e_prob] >= 0)
            ep = pos[e_prob[sel]]
            f_e = e_fwd[sel]
            res = black76(
                f_e * (1.0 + move[ep]), *(arg[sel] for arg in e_args)
            )  # price and delta on the moved forward
            q = e_qty[sel]
            g += np.bincount(ep, q * (res.price - e_base[sel]), minlength=idx.size)
            dg += sgn[idx] * np.bincount(ep, q * res.delta * f_e, minlength=idx.size)
        aa, bb = a[idx], b[idx]
        pos_side = g > 0.0
        aa = np.where(pos_side, xa, aa)
        bb = np.where(pos_side, bb, xa)
        with np.errstate(invalid="ignore", divide="ignore"):
            newton = xa - g / dg
        use = np.isfinite(newton) & (newton > aa) & (newton < bb)
        x_new = np.where(use, newton, 0.5 * (aa + bb))
        done = (np.abs(x_new - xa) <= 1e-3 * tol) | (bb - aa <= tol) | (g == 0.0)
        x_new = np.where(g == 0.0, xa, x_new)
        a[idx], b[idx], x[idx] = aa, bb, x_new
        active[idx[done]] = False
    return x


# -- portfolio margin per settlement currency -----------------------------------------------


@dataclass(frozen=True, slots=True)
class LinearPositions:
    """Spot, perpetual and future positions for :func:`portfolio_margin`, ``j`` rows.

    Attributes
    ----------
    underlying
        Shape ``(j,)`` int: index of the underlying.
    quantity
        Shape ``(j, k)``: underlying units per book (contracts x multiplier). An inverse
        contract sized in USD (``N``) holds ``N / S`` at today's index price ``S``.
    t
        Shape ``(j,)``: years to expiry (futures); NaN without one (perpetual, spot).
    inverse
        Shape ``(j,)`` bool: settles in the underlying's coin, P&L ``N (1/S0 - 1/S1)``.
    rolls
        Shape ``(j,)`` bool: counted in the roll shock (perpetuals and futures, not spot).
    """

    underlying: IntArray
    quantity: FloatArray
    t: FloatArray
    inverse: BoolArray
    rolls: BoolArray


@dataclass(frozen=True, slots=True)
class CurrencyMargin:
    """The model's figures for one settlement currency, arrays ``(k,)`` over books.

    Amounts are in the currency's own unit (coin for an inverse currency, USD for
    ``"USD"``); ``usd_per_unit`` converts them (the coin's index price today, or 1).

    Attributes
    ----------
    currency
        ``"BTC"`` (inverse instruments on BTC) or ``"USD"`` (USD-settled ones).
    worst_case
        Worst loss over the standard and (weighted, dampened) extended scenarios, >= 0.
    worst_scenario
        Its name per book (``"+16% vol up"``; for ``"USD"`` per underlying:
        ``"BTC +16% vol up + ETH -18% vol up"``); ``None`` where the worst case is 0.
    roll_shock, delta_shock
        Module notes.
    risk_matrix_margin
        ``worst_case + roll_shock + delta_shock``.
    maintenance_margin
        ``mm_factor x risk_matrix_margin``.
    held
        The book holds a position settling in this currency.
    """

    currency: str
    usd_per_unit: float
    worst_case: FloatArray
    worst_scenario: tuple[str | None, ...]
    roll_shock: FloatArray
    delta_shock: FloatArray
    risk_matrix_margin: FloatArray
    maintenance_margin: FloatArray
    held: BoolArray


@dataclass(frozen=True, slots=True)
class PortfolioMargin:
    """:func:`portfolio_margin` of ``k`` books.

    Attributes
    ----------
    currencies
        One entry per settlement currency any book holds.
    worst_case_usd, maintenance_margin_usd
        Shape ``(k,)``: sums over currencies in USD at today's index prices.
    parameters_source
        ``"defaults"`` or ``"venue"`` (:attr:`MarginSettings.parameters_source`).
    unpriced
        Option rows left out (as :class:`ScenarioMargin`).
    """

    currencies: tuple[CurrencyMargin, ...]
    worst_case_usd: FloatArray
    maintenance_margin_usd: FloatArray
    parameters_source: ParametersSource
    unpriced: int


@dataclass(frozen=True, slots=True)
class _Params:
    """Per-underlying parameter arrays ``(n,)`` (settings merged with overrides) and the
    currency parameters of each (underlying, settlement) pair, arrays ``(n, 2)`` with
    column 0 USD-settled, column 1 coin-settled."""

    price_range: FloatArray
    vol_up: FloatArray
    vol_down: FloatArray
    power_short: FloatArray
    power_long: FloatArray
    min_up: FloatArray
    ext_weight: FloatArray
    ds_threshold: FloatArray
    ds_max: FloatArray
    ds_slope: FloatArray
    min_move: FloatArray
    move_risk: FloatArray
    dampener: FloatArray


def _params(s: MarginSettings, names: Sequence[str]) -> _Params:
    none = UnderlyingParams()
    per = [s.underlyings.get(u, none) for u in names]

    def col(field_name: str, default: float) -> FloatArray:
        vals = [getattr(up, field_name) for up in per]
        return np.array([default if v is None else v for v in vals], dtype=np.float64)

    usd = s.currencies.get("USD", CurrencyParams())
    coin = [s.currencies.get(u, CurrencyParams()) for u in names]

    def pair(attr: str) -> FloatArray:
        out = np.empty((len(names), 2))
        out[:, 0] = getattr(usd, attr)
        out[:, 1] = [getattr(c, attr) for c in coin]
        return out

    return _Params(
        price_range=col("price_range", s.price_range),
        vol_up=col("vol_range_up", s.vol_range_up),
        vol_down=col("vol_range_down", s.vol_range_down),
        power_short=col("short_term_vega_power", s.short_term_vega_power),
        power_long=col("long_term_vega_power", s.long_term_vega_power),
        min_up=col("min_vol_shock_up", s.min_vol_shock_up),
        ext_weight=col("extended_weight", s.extended_weight),
        ds_threshold=col("delta_shock_threshold", s.delta_shock_threshold),
        ds_max=col("max_delta_shock", s.max_delta_shock),
        ds_slope=col("delta_shock_slope", s.delta_shock_slope),
        min_move=pair("min_annualised_move"),
        move_risk=pair("annualised_move_risk"),
        dampener=pair("extended_dampener"),
    )


@dataclass(frozen=True, slots=True)
class _Entries:
    """The (position, column) pairs the model revalues: option entries ``o_*`` and linear
    entries ``l_*``, each with the column (book, or book at a moved price) it belongs to.
    Forwards and inverse quantities are already at the column's prices."""

    o: _Options  # qty of shape (e, 1)
    o_inv: BoolArray
    o_col: IntArray
    l_und: IntArray
    l_t: FloatArray
    l_inv: BoolArray
    l_rolls: BoolArray
    l_qty: FloatArray
    l_col: IntArray


def _subset_options(o: _Options, rows: IntArray, scale: FloatArray, qty: FloatArray) -> _Options:
    """Option rows ``rows`` with forwards times ``scale`` and quantity ``qty`` (entries)."""
    fwd = o.fwd[rows] * scale
    return _Options(
        und=o.und[rows],
        fwd=fwd,
        strike=o.strike[rows],
        t=o.t[rows],
        vol=o.vol[rows],
        call=o.call[rows],
        w=o.w[rows],
        lnfk=np.log(fwd / o.strike[rows]),
        qty=qty if qty.ndim == 2 else qty[:, None],
        unpriced=0,
    )


def _pm_scenarios(
    p: _Params, s: MarginSettings
) -> tuple[FloatArray, IntArray, BoolArray, FloatArray]:
    """Moves ``(m, n)`` per underlying, vol states and extended flags ``(m,)``, and the
    scenario weights ``(m, n, 2)`` (USD-settled, coin-settled)."""
    steps = np.arange(-s.price_steps, s.price_steps + 1, dtype=np.float64) / s.price_steps
    ext = np.asarray(s.extended_moves, dtype=np.float64)
    n = p.price_range.size
    std = steps[:, None] * p.price_range[None, :]  # (2 steps + 1, n)
    moves = np.concatenate([np.repeat(std, 3, axis=0), np.repeat(ext[:, None], n, axis=1)])
    states = np.array([VOL_UP, VOL_SAME, VOL_DOWN], dtype=np.int64)
    vol_state = np.concatenate([np.tile(states, steps.size), np.full(ext.size, VOL_UP)])
    extended = np.concatenate([np.zeros(3 * steps.size, dtype=bool), np.ones(ext.size, bool)])
    weights = np.ones((moves.shape[0], n, 2))
    if ext.size:
        m = moves[extended]  # (E, n)
        w_usd = p.ext_weight * p.price_range / np.abs(m)
        weights[extended, :, 0] = w_usd
        weights[extended, :, 1] = w_usd * (1.0 + m) / (1.0 + np.sign(m) * p.price_range)
    return moves, vol_state, extended, weights


def _pm_core(
    e: _Entries,
    index: FloatArray,
    p: _Params,
    s: MarginSettings,
    n_cols: int,
    extra: _GridPart | None = None,
) -> tuple[FloatArray, IntArray, FloatArray, FloatArray, BoolArray, FloatArray]:
    """The model on entries: per (column, book, underlying, settlement) ``(P, K, n, 2)``.

    Entries carry one quantity column per book (``K`` of them, shared by every column);
    ``index`` has shape ``(P, n)``: each column's index prices, USD. ``extra``: the
    options valued on a grid (:class:`_ModelGrid`), their scenario P&L and net deltas
    already summed per pair. Returns the worst case, its scenario index, roll shock and
    delta shock (settlement units), whether the pair is held, and the scenario moves
    ``(m, n)``.
    """
    n = index.shape[1]
    n_books = e.o.qty.shape[1]
    moves, vol_state, extended, weights = _pm_scenarios(p, s)
    m = moves.shape[0]
    size = n_cols * n_books * n * 2
    agg = np.zeros((size, m))
    o = e.o
    ne = o.size
    o_rows, o_books = np.nonzero(o.qty)  # row-major: sorted by entry
    o_pair = ((e.o_col[o_rows] * n_books + o_books) * n + o.und[o_rows]) * 2 + e.o_inv[
        o_rows
    ].astype(np.int64)
    o_q = o.qty[o_rows, o_books]
    unit_o = np.zeros(ne)
    if ne:
        u = o.und
        sig = o.vol
        days = np.maximum(o.t * DAYS_PER_YEAR, s.min_days)
        power = np.where(days < REFERENCE_DAYS, p.power_short[u], p.power_long[u])
        scale = (REFERENCE_DAYS / days) ** power
        up = np.maximum(sig * (1.0 + p.vol_up[u] * scale), p.min_up[u])
        down = np.maximum(sig * (1.0 - p.vol_down[u] * scale), 0.0)
        sd_states = np.stack([up, sig, down]) * np.sqrt(o.t)  # (3, e)
        state_row = 1 - vol_state
        sd0 = sig * np.sqrt(o.t)
        log_moves = np.log1p(moves)  # (m, n): each option takes its underlying's column
        for c in _chunks(m, ne):
            width = c.stop - c.start
            base = _values(np.zeros((1, width)), o, c, sd0[c])
            r = log_moves[:, u[c]]
            inv_c = e.o_inv[c]
            growth = 1.0 + moves[:, u[c]] if inv_c.any() else None
            v = _values(r, o, c, sd_states[:, c][state_row])
            if growth is not None:  # coin value: USD value / the moved forward
                fw = o.fwd[c]
                v = np.where(inv_c, v / (fw * growth), v)
                base = np.where(inv_c, base / fw, base)
            v -= base
            lo, hi = np.searchsorted(o_rows, [c.start, c.stop])
            mat = sparse.csr_array(
                (o_q[lo:hi], (o_pair[lo:hi], o_rows[lo:hi] - c.start)), shape=(size, width)
            )
            agg += np.asarray(mat @ v.T)
        g = black76(o.fwd, o.strike, o.t, o.vol, o.call)
        unit_o = np.where(e.o_inv, coin_delta(g.delta, g.price, o.fwd), g.delta)
    l_rows, l_books = np.nonzero(e.l_qty)
    lu = e.l_und[l_rows]
    l_inv = e.l_inv[l_rows]
    l_col = e.l_col[l_rows]
    l_pair = ((l_col * n_books + l_books) * n + lu) * 2 + l_inv.astype(np.int64)
    l_q = e.l_qty[l_rows, l_books]
    if l_rows.size:
        mv = moves[:, lu]  # (m, nonzeros)
        s_now = index[l_col, lu]
        unit_pnl = np.where(l_inv[None, :], mv / (1.0 + mv), mv * s_now[None, :])
        mat = sparse.csr_array((l_q, (l_pair, np.arange(l_rows.size))), shape=(size, l_rows.size))
        agg += np.asarray(mat @ unit_pnl.T)
    if extra is not None:
        agg += extra.agg
    shape = (n_cols, n_books, n, 2)
    vec = agg.reshape(*shape, m) * np.moveaxis(weights, 0, -1)[None, None]

    if s.dampener and extended.any():
        ext_m = moves[extended]  # (E, n)
        beyond = np.maximum(np.abs(ext_m) / p.price_range - 1.0, 0.0).T  # (n, E)
        amt = np.empty((n_cols, 1, n, 2, ext_m.shape[0]))
        amt[:, 0, :, 0, :] = (beyond * p.dampener[:, 0, None])[None]
        coin_den = (1.0 + np.sign(ext_m) * p.price_range).T[None] * index[:, :, None]
        amt[:, 0, :, 1, :] = beyond[None] * p.dampener[None, :, 1, None] / coin_den
        x = vec[..., extended]
        vec[..., extended] = np.sign(x) * np.maximum(np.abs(x) - amt, 0.0)

    loss = -vec
    order = np.lexsort((vol_state != VOL_SAME, extended))
    top = loss.max(axis=-1)
    near = loss[..., order] >= (top - 1e-12 * np.abs(top))[..., None]
    worst_idx: IntArray = order[np.argmax(near, axis=-1)]
    worst = np.maximum(top, 0.0)

    # Roll shock: net delta per (column, book, underlying, settlement, expiry).
    d_all = np.concatenate([unit_o[o_rows] * o_q, l_q])
    pair = np.concatenate([o_pair, l_pair])
    t_all = np.concatenate([o.t[o_rows], np.where(np.isfinite(e.l_t), e.l_t, -1.0)[l_rows]])
    rolls = np.concatenate([np.ones(o_rows.size, dtype=bool), e.l_rolls[l_rows]])
    if extra is not None:
        d_all = np.concatenate([d_all, extra.delta])
        pair = np.concatenate([pair, extra.pair])
        t_all = np.concatenate([t_all, extra.t])
        rolls = np.concatenate([rolls, np.ones(extra.pair.size, dtype=bool)])
    delta_pair = np.bincount(pair, weights=d_all, minlength=size).reshape(shape)
    held = np.bincount(pair, minlength=size).reshape(shape) > 0
    roll = np.zeros(size)
    if rolls.any():
        # Group by (pair, expiry): expiries numbered, then one integer key per group.
        t_values, t_id = np.unique(t_all[rolls], return_inverse=True)
        key = pair[rolls] * t_values.size + t_id.reshape(-1)
        net_all = np.bincount(key, weights=d_all[rolls], minlength=size * t_values.size)
        groups = np.flatnonzero(np.bincount(key, minlength=size * t_values.size))
        net = net_all[groups]
        g_pair = groups // t_values.size
        g_und = (g_pair // 2) % n
        g_inv = g_pair % 2
        g_t = t_values[groups % t_values.size]
        floor = p.min_move[g_und, g_inv]
        factor = np.where(
            g_t < 0.0, floor, np.maximum(floor, np.expm1(p.move_risk[g_und, g_inv] * g_t))
        )
        roll = np.bincount(g_pair, weights=factor * np.abs(net), minlength=size)
    # Settlement units: coin as is, USD-settled amounts of underlying units times the index.
    to_settle = np.stack([index, np.ones_like(index)], axis=-1)[:, None]  # (P, 1, n, 2)
    roll = roll.reshape(shape) * to_settle
    ad = np.abs(delta_pair)
    with np.errstate(invalid="ignore", divide="ignore"):
        excess = np.maximum(ad - (p.ds_threshold[None, :] / index)[:, None, :, None], 0.0)
    frac = np.minimum(p.ds_slope[:, None] * excess, p.ds_max[:, None])
    dshock = np.where(ad > 0.0, ad * frac, 0.0) * to_settle
    return worst, worst_idx, roll, dshock, held, moves


def _scenario_label(move: float, state: int, ext: bool) -> str:
    return f"{_pct(move)} {_VOL_LABEL[state]}" + (" (extended)" if ext else "")


def _linear_entries(
    linear: LinearPositions | None, n: int, k: int
) -> tuple[IntArray, IntArray, LinearPositions]:
    if linear is None:
        z = np.zeros(0, dtype=np.int64)
        empty = LinearPositions(
            z, np.zeros((0, k)), np.zeros(0), np.zeros(0, bool), np.zeros(0, bool)
        )
        return z, z, empty
    q = np.asarray(linear.quantity, dtype=np.float64)
    j = np.asarray(linear.underlying).shape[0]
    if q.shape != (j, k):
        raise ValueError(f"linear.quantity must have shape ({j}, {k}), got {q.shape}")
    if j and (np.min(linear.underlying) < 0 or np.max(linear.underlying) >= n):
        raise ValueError(f"linear.underlying must index the {n} underlyings")
    q = np.where(np.isfinite(q), q, 0.0)
    rows, cols = np.nonzero(q)
    return rows, cols, replace(linear, quantity=q)


def _entries_for(
    o: _Options | None,
    o_inverse: BoolArray,
    lin: LinearPositions,
    l_rows: IntArray,
    l_cols: IntArray,
    books: IntArray,
    scale: FloatArray,
) -> _Entries:
    """Entries of columns ``p`` = book ``books[p]`` with every price times ``scale[p]``."""
    k_books = int(books.max()) + 1 if books.size else 0

    def expand(rows: IntArray, cols: IntArray) -> tuple[IntArray, IntArray]:
        """For each column p, the entries whose book is ``books[p]``: (entry, column)."""
        if books.size == 0:
            z = np.zeros(0, dtype=np.int64)
            return z, z
        order = np.argsort(cols, kind="stable")
        counts = np.bincount(cols, minlength=max(k_books, 1))
        starts = np.concatenate([[0], np.cumsum(counts)])
        per = counts[books] if books.size else np.zeros(0, dtype=np.int64)
        total = int(per.sum())
        col = np.repeat(np.arange(books.size), per)
        first = np.repeat(starts[books] - np.concatenate([[0], np.cumsum(per)[:-1]]), per)
        ent = order[first + np.arange(total)]
        return ent.astype(np.int64), col.astype(np.int64)

    if o is not None and o.size:
        rows, cols = np.nonzero(o.qty)
        ent, col = expand(rows, cols)
        r_opt = rows[ent]
        sub = _subset_options(o, r_opt, scale[col], o.qty[r_opt, cols[ent]])
        o_inv = o_inverse[r_opt]
    else:
        sub = _subset_options(_empty_options(), np.zeros(0, np.int64), np.zeros(0), np.zeros(0))
        o_inv, col = np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    ent_l, col_l = expand(l_rows, l_cols)
    rl = l_rows[ent_l]
    return _assemble(
        sub, o_inv, col, lin, rl, lin.quantity[rl, l_cols[ent_l]][:, None], col_l, scale
    )


def _assemble(
    sub: _Options,
    o_inv: BoolArray,
    o_col: IntArray,
    lin: LinearPositions,
    l_rows: IntArray,
    l_qty: FloatArray,
    l_col: IntArray,
    scale: FloatArray,
) -> _Entries:
    """Entries from option entries and linear rows ``l_rows`` (quantities ``l_qty`` of
    shape ``(rows, K)`` at today's prices) in columns ``l_col``."""
    inv = lin.inverse[l_rows]
    q = np.where(inv[:, None], l_qty / scale[l_col][:, None], l_qty)  # USD size held: N / S1
    return _Entries(
        o=sub,
        o_inv=o_inv,
        o_col=o_col,
        l_und=lin.underlying[l_rows].astype(np.int64),
        l_t=lin.t[l_rows],
        l_inv=inv,
        l_rolls=lin.rolls[l_rows],
        l_qty=q,
        l_col=l_col,
    )


def _entries_moved(
    o: _Options | None, o_inverse: BoolArray, lin: LinearPositions, scale: FloatArray, k: int
) -> _Entries:
    """Entries of every book at each of ``P`` moves (column ``p``: every price times
    ``scale[p]``): option and linear rows repeated per column, one quantity column per
    book, so an option held by several books is valued once per column."""
    n_cols = scale.size
    if o is not None and o.size:
        rows = np.tile(np.arange(o.size), n_cols)
        col = np.repeat(np.arange(n_cols), o.size)
        sub = _subset_options(o, rows, scale[col], o.qty[rows])
        o_inv = o_inverse[rows]
    else:
        sub = replace(_empty_options(), qty=np.zeros((0, k)))
        o_inv, col = np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    j = lin.underlying.shape[0]
    lrows = np.tile(np.arange(j), n_cols)
    lcol = np.repeat(np.arange(n_cols), j)
    return _assemble(sub, o_inv, col, lin, lrows, lin.quantity[lrows], lcol, scale)


def _empty_options() -> _Options:
    z = np.zeros(0)
    return _Options(np.zeros(0, np.int64), z, z, z, z, np.zeros(0, bool), z, z, np.zeros((0, 1)), 0)


def portfolio_margin(
    linear: LinearPositions | None,
    options: OptionPositions | None,
    index_usd: npt.ArrayLike,
    underlyings: Sequence[str],
    settings: MarginSettings | None = None,
    *,
    n_books: int | None = None,
) -> PortfolioMargin:
    """Deribit-style portfolio margin per settlement currency (module notes), per book.

    Parameters
    ----------
    linear
        Spot, perpetuals and futures, ``quantity`` ``(j, k)``; ``None`` without any.
    options
        Deduplicated options, ``quantity`` ``(i, k)``; ``options.inverse`` says which
        settle in coin (value in coin = USD value / forward).
    index_usd
        Shape ``(n,)``: each underlying's index price today, USD (converts coin amounts).
    underlyings
        The ``n`` names; a coin-settled currency is named after its underlying.
    settings
        Parameters (defaults: Deribit's published values).
    n_books
        ``k``, needed when neither ``linear`` nor ``options`` is given.

    Returns
    -------
    PortfolioMargin
        Per currency held by any book: worst case, roll shock, delta shock, risk-matrix
        margin and maintenance margin in the currency's unit, and USD totals.
    """
    s = settings or MarginSettings()
    names = tuple(underlyings)
    n = len(names)
    index = np.asarray(index_usd, dtype=np.float64)
    if index.shape != (n,):
        raise ValueError(f"index_usd must have shape ({n},), got {index.shape}")
    k = _book_count(linear, options) if n_books is None else n_books
    o = _prepare(options, n, k)
    o_inv = _inverse_rows(options, o)
    _, _, lin = _linear_entries(linear, n, k)
    ent = _entries_moved(o, o_inv, lin, np.ones(1), k)
    p = _params(s, names)
    core = _pm_core(ent, index[None, :], p, s, 1)
    worst, idx, roll, dshock, held = (a[0] for a in core[:5])
    moves = core[5]
    sc = margin_scenarios(s)
    currencies: list[CurrencyMargin] = []
    usd_total = np.zeros(k)
    mm_total = np.zeros(k)

    # Names only, one string per book: from Python lists, each label formatted once.
    idx_l, worst_l, moves_l = idx.tolist(), worst.tolist(), moves.tolist()
    states_l, ext_l = sc.vol_state.tolist(), sc.extended.tolist()
    labels_memo: dict[tuple[int, int], str] = {}

    def label(b: int, u: int, settle: int) -> str:
        j = idx_l[b][u][settle]
        out = labels_memo.get((j, u))
        if out is None:
            out = labels_memo[j, u] = _scenario_label(moves_l[j][u], states_l[j], ext_l[j])
        return out

    for settle in (1, 0):
        held_any = held[:, :, settle].any(axis=0)
        groups = [[u] for u in np.flatnonzero(held_any).tolist()] if settle else []
        if not settle and held_any.any():
            groups = [np.flatnonzero(held_any).tolist()]
        for us in groups:
            wc = worst[:, us, settle]  # (k, g)
            rs = roll[:, us, settle].sum(axis=1)
            ds = dshock[:, us, settle].sum(axis=1)
            w = wc.sum(axis=1)
            rmm = w + rs + ds
            mm = s.mm_factor * rmm
            unit = float(index[us[0]]) if settle else 1.0
            labels: list[str | None] = []
            for b in range(k):  # names only: one string per book
                wb = worst_l[b]
                lost = [u for u in us if wb[u][settle] > 0.0]
                lost.sort(key=lambda u: -wb[u][settle])
                if settle:
                    labels.append(label(b, lost[0], settle) if lost else None)
                else:
                    parts = [f"{names[u]} {label(b, u, settle)}" for u in lost]
                    labels.append(" + ".join(parts) or None)
            currencies.append(
                CurrencyMargin(
                    currency=names[us[0]] if settle else "USD",
                    usd_per_unit=unit,
                    worst_case=w,
                    worst_scenario=tuple(labels),
                    roll_shock=rs,
                    delta_shock=ds,
                    risk_matrix_margin=rmm,
                    maintenance_margin=mm,
                    held=np.asarray(held[:, us, settle].any(axis=1), dtype=bool),
                )
            )
            usd_total += w * unit
            mm_total += mm * unit
    return PortfolioMargin(
        currencies=tuple(currencies),
        worst_case_usd=usd_total,
        maintenance_margin_usd=mm_total,
        parameters_source=s.parameters_source,
        unpriced=0 if o is None else o.unpriced,
    )


def _book_count(linear: LinearPositions | None, options: OptionPositions | None) -> int:
    for q in (
        None if linear is None else linear.quantity,
        None if options is None else options.quantity,
    ):
        if q is not None:
            a = np.asarray(q)
            if a.ndim != 2:
                raise ValueError(f"quantity must be 2-D (rows, books), got shape {a.shape}")
            return int(a.shape[1])
    return 0


def _inverse_rows(options: OptionPositions | None, o: _Options | None) -> BoolArray:
    """``options.inverse`` for the rows :func:`_prepare` kept."""
    if options is None or o is None:
        return np.zeros(0, dtype=bool)
    inv = options.inverse
    i = np.asarray(options.underlying).shape[0]
    full = np.zeros(i, dtype=bool) if inv is None else np.asarray(inv, dtype=bool)
    if full.shape != (i,):
        raise ValueError(f"options.inverse must have shape ({i},), got {full.shape}")
    return full[o.keep] if o.keep is not None else full


_PAIR_KEYS: Final = {
    "price_range": "price_range",
    "volatility_range_up": "vol_range_up",
    "volatility_range_down": "vol_range_down",
    "short_term_vega_power": "short_term_vega_power",
    "long_term_vega_power": "long_term_vega_power",
    "min_volatility_for_shock_up": "min_vol_shock_up",
    "extended_table_factor": "extended_weight",
    "delta_total_liq_shock_threshold": "delta_shock_threshold",
    "max_delta_shock": "max_delta_shock",
    "m_inc": "delta_shock_slope",
}
_CURRENCY_KEYS: Final = ("min_annualised_move", "annualised_move_risk", "extended_dampener")


def params_from_model_params(
    model_params: Mapping[str, object], base: MarginSettings
) -> MarginSettings:
    """``base`` with the parameters of a Deribit ``model_params`` object (as
    ``private/pme/simulate`` returns it) and ``parameters_source = "venue"``.

    ``currency_pair.<coin>_usd`` sets that underlying's scenario and delta-shock
    parameters, ``currency.<coin>`` (and ``currency.usd``) its roll and dampener
    parameters, ``general.mm_factor`` and ``general.buckets_count`` the maintenance factor
    and the moves per side. Keys riskmon does not model (``pnl_offset``, ``haircut``,
    ``max_offsetable_pnl``, ...) are ignored. A venue connector calls this with what the
    account's API returns; pure, no I/O.

    Raises
    ------
    ValueError
        A block that is not an object, or a value that is not a finite number >= 0.
    """

    def block(obj: object, where: str) -> Mapping[str, object]:
        if not isinstance(obj, Mapping):
            raise ValueError(f"model_params.{where} must be an object")
        return obj

    def number(obj: Mapping[str, object], key: str, where: str) -> float | None:
        v = obj.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"model_params.{where}.{key} must be a finite number, got {v!r}")
        return float(v)

    underlyings = dict(base.underlyings)
    for pair, raw in block(model_params.get("currency_pair", {}), "currency_pair").items():
        values = block(raw, f"currency_pair.{pair}")
        coin = pair.split("_", 1)[0].upper()
        given = {
            ours: number(values, theirs, f"currency_pair.{pair}")
            for theirs, ours in _PAIR_KEYS.items()
        }
        prev = underlyings.get(coin, UnderlyingParams())
        underlyings[coin] = replace(prev, **{key: v for key, v in given.items() if v is not None})
    currencies = dict(base.currencies)
    for cur, raw in block(model_params.get("currency", {}), "currency").items():
        values = block(raw, f"currency.{cur}")
        name = cur.upper()
        prev_c = currencies.get(name, CurrencyParams())
        got = {key: number(values, key, f"currency.{cur}") for key in _CURRENCY_KEYS}
        currencies[name] = replace(prev_c, **{key: v for key, v in got.items() if v is not None})
    general = block(model_params.get("general", {}), "general")
    mm_factor = number(general, "mm_factor", "general")
    buckets = number(general, "buckets_count", "general")
    return replace(
        base,
        underlyings=underlyings,
        currencies=currencies,
        mm_factor=base.mm_factor if mm_factor is None else mm_factor,
        price_steps=base.price_steps if buckets is None else int(buckets),
        parameters_source="venue",
    )


# -- the model's scenarios on a grid of moves -------------------------------------------------

#: Grid intervals per (underlying, vol state) on which :func:`distance_to_call_model`
#: values options (``value_grid``).
MODEL_GRID_POINTS: Final = 128
#: Bound, in array elements, on the estimated working set of one block of the distance
#: scan's moves (:func:`distance_to_call_model`): about 64 MB.
MOVE_BLOCK_ELEMENTS: Final = 1 << 23
# Arrays of that estimate: per entry (besides its quantity row of one column per book),
# per (book, underlying, settlement, scenario) of the model, and more of those with the
# grid options' interpolants.
_ENTRY_ARRAYS: Final = 16
_PAIR_ARRAYS: Final = 6
_GRID_ARRAYS: Final = 12
#: An option is valued on the grid when its sd in every vol state is at least this many
#: grid intervals, else exactly at every move (as without a grid).
_GRID_MIN_SD_STEPS: Final = 1.5
_INV_SQRT_2PI: Final = 1.0 / math.sqrt(2.0 * math.pi)


@dataclass(frozen=True, slots=True)
class _GridPart:
    """Grid options' contribution to :func:`_pm_core`: scenario P&L per pair ``(size, m)``
    (settlement units), and net deltas per (pair, expiry) rows."""

    agg: FloatArray
    pair: IntArray
    t: FloatArray
    delta: FloatArray


@dataclass(frozen=True, slots=True)
class _ModelGrid:
    """Sums over the grid options of value and delta, with their slopes in the log move
    ``x``, on uniform grids per (vol state, underlying) (states: up, unchanged, down).

    ``val``: ``(3, n, 2, P1, K)``, per settlement (USD; coin: value / forward, times
    ``e^-x`` when read); ``usd``: ``(n, P1, K)`` USD value, vol unchanged; per group
    (underlying, settlement, expiry) ``g_val`` (coin groups' value / forward, vol
    unchanged) and ``g_delta`` ``(G, P1, K)``; ``base_usd`` ``(K,)`` the exact USD value
    today.
    """

    lo: FloatArray  # (3, n)
    h: FloatArray  # (3, n)
    points: int
    val: FloatArray
    val_slope: FloatArray
    usd: FloatArray
    usd_slope: FloatArray
    base_usd: FloatArray
    g_und: IntArray
    g_inv: IntArray
    g_t: FloatArray
    g_held: BoolArray  # (G, K)
    g_val: FloatArray
    g_val_slope: FloatArray
    g_delta: FloatArray
    g_delta_slope: FloatArray
    active: IntArray  # the (underlying, settlement) pairs held, flat ``u * 2 + coin``


def _take(o: _Options, rows: IntArray) -> _Options:
    return replace(
        o,
        und=o.und[rows],
        fwd=o.fwd[rows],
        strike=o.strike[rows],
        t=o.t[rows],
        vol=o.vol[rows],
        call=o.call[rows],
        w=o.w[rows],
        lnfk=o.lnfk[rows],
        qty=o.qty[rows],
        keep=None,
    )


def _b76_grid(
    x: FloatArray, o: _Options, c: IntArray, sd: FloatArray, greeks: bool
) -> tuple[FloatArray, FloatArray, FloatArray | None, FloatArray | None]:
    """Value, ``dV/dx``, and with ``greeks`` delta and ``d delta/dx`` of rows ``c`` after
    log moves ``x`` (``(P1, 1)``, broadcast over the rows), per unit."""
    w, fwd = o.w[c], o.fwd[c]
    d1 = (x + o.lnfk[c]) / sd + 0.5 * sd
    n1 = ndtr(w * d1)
    n2 = ndtr(w * (d1 - sd))
    slope = np.exp(x) * (w * fwd) * n1
    value = slope - (w * o.strike[c]) * n2
    if not greeks:
        return value, slope, None, None
    ddelta = np.exp(-0.5 * d1 * d1) * (_INV_SQRT_2PI / sd)
    return value, slope, w * n1, ddelta


def _model_grid(
    o: _Options,
    o_inv: BoolArray,
    p: _Params,
    s: MarginSettings,
    max_move: float,
    points: int,
) -> tuple[_ModelGrid | None, IntArray]:
    """The grid of the options it can hold (module notes of :func:`distance_to_call_model`)
    and the rows left to exact valuation."""
    n, k = p.price_range.size, o.qty.shape[1]
    moves, vol_state, _, _ = _pm_scenarios(p, s)
    offs = np.log1p(moves)  # (m, n)
    row = 1 - vol_state
    lo, hi = np.empty((3, n)), np.empty((3, n))
    for st in range(3):  # three vol states, not a loop over data
        sel = row == st
        lo[st] = math.log1p(-max_move) + np.minimum(offs[sel].min(axis=0), 0.0)
        hi[st] = math.log1p(max_move) + np.maximum(offs[sel].max(axis=0), 0.0)
    h = (hi - lo) / points
    u = o.und
    days = np.maximum(o.t * DAYS_PER_YEAR, s.min_days)
    power = np.where(days < REFERENCE_DAYS, p.power_short[u], p.power_long[u])
    scale = (REFERENCE_DAYS / days) ** power
    up = np.maximum(o.vol * (1.0 + p.vol_up[u] * scale), p.min_up[u])
    down = np.maximum(o.vol * (1.0 - p.vol_down[u] * scale), 0.0)
    sd = np.stack([up, o.vol, down]) * np.sqrt(o.t)  # (3, i)
    ok = ((sd >= _GRID_MIN_SD_STEPS * h[:, u]) & (sd > _SD_MIN)).all(axis=0)
    rows, exact = np.flatnonzero(ok), np.flatnonzero(~ok)
    if rows.size == 0:
        return None, exact
    p1 = points + 1
    steps = np.arange(p1, dtype=np.float64)[:, None]
    inv = o_inv.astype(np.int64)
    val = np.zeros((3, n, 2, p1, k))
    val_slope = np.zeros_like(val)
    usd = np.zeros((n, p1, k))
    usd_slope = np.zeros_like(usd)
    # Groups (underlying, settlement, expiry) of the grid rows, numbered.
    keys = np.stack([u[rows].astype(np.float64), inv[rows], o.t[rows]], axis=1)
    uniq, gid = np.unique(keys, axis=0, return_inverse=True)
    gid = gid.reshape(-1)
    n_g = uniq.shape[0]
    g_val = np.zeros((n_g, p1, k))
    g_val_slope, g_delta, g_delta_slope = (np.zeros_like(g_val) for _ in range(3))
    order = rows[np.argsort(gid, kind="stable")]
    for c in _runs(gid[np.argsort(gid, kind="stable")], p1, _MAX_ELEMENTS):
        _checkpoint()
        cc = order[c]
        g = int(gid[np.searchsorted(rows, cc[0])])
        ui, coin = int(u[cc[0]]), int(inv[cc[0]])
        q = o.qty[cc]
        for st in range(3):  # three vol states
            x = lo[st, ui] + steps * h[st, ui]
            v, dv, delta, ddelta = _b76_grid(x, o, cc, sd[st, cc], st == 1)
            if delta is not None and ddelta is not None:
                usd[ui] += v @ q
                usd_slope[ui] += dv @ q
                g_delta[g] += delta @ q
                g_delta_slope[g] += ddelta @ q
            if coin:  # coin value: USD value over the moved forward (e^x read later)
                v /= o.fwd[cc]
                dv /= o.fwd[cc]
            vq, dvq = v @ q, dv @ q
            val[st, ui, coin] += vq
            val_slope[st, ui, coin] += dvq
            if st == 1 and coin:
                g_val[g] += vq
                g_val_slope[g] += dvq
    base = _values(np.zeros((1, rows.size)), o, rows, sd[1, rows]) @ o.qty[rows]
    active = np.zeros((n, 2), dtype=bool)
    active[u[rows], inv[rows]] = True
    held = np.zeros((n_g, k), dtype=bool)
    nz_r, nz_b = np.nonzero(o.qty[rows])
    held[gid[nz_r], nz_b] = True
    grid = _ModelGrid(
        lo=lo,
        h=h,
        points=points,
        val=val,
        val_slope=val_slope,
        usd=usd,
        usd_slope=usd_slope,
        base_usd=base[0],
        g_und=uniq[:, 0].astype(np.int64),
        g_inv=uniq[:, 1].astype(np.int64),
        g_t=uniq[:, 2],
        g_held=held,
        g_val=g_val,
        g_val_slope=g_val_slope,
        g_delta=g_delta,
        g_delta_slope=g_delta_slope,
        active=np.flatnonzero(active.reshape(-1)),
    )
    return grid, exact


def _hermite(
    val: FloatArray,
    slope: FloatArray,
    lo: FloatArray,
    h: FloatArray,
    points: int,
    a: IntArray,
    x: FloatArray,
    b: IntArray,
) -> FloatArray:
    """Cubic Hermite interpolant of ``val[a, :, b]`` (slopes ``slope``) at ``x``, on the
    grid ``lo[a] + j h[a]``; ``a``, ``x``, ``b`` broadcast together."""
    ha = h[a]
    pos = (x - lo[a]) / ha
    j = np.clip(np.floor(pos), 0, points - 1).astype(np.int64)
    tau = pos - j
    t2 = tau * tau
    t3 = t2 * tau
    out: FloatArray = (
        (2.0 * t3 - 3.0 * t2 + 1.0) * val[a, j, b]
        + (3.0 * t2 - 2.0 * t3) * val[a, j + 1, b]
        + (t3 - 2.0 * t2 + tau) * ha * slope[a, j, b]
        + (t3 - t2) * ha * slope[a, j + 1, b]
    )
    return out


def _grid_part(
    mg: _ModelGrid, p: _Params, s: MarginSettings, x: FloatArray, books: IntArray
) -> tuple[_GridPart, FloatArray]:
    """The grid options of columns ``c`` (every price times ``e^x[c]``, books
    ``books[c, :]``, shape ``(C, Kc)``): their :class:`_GridPart` for :func:`_pm_core`
    and their USD P&L since today ``(C, Kc)``."""
    n = mg.lo.shape[1]
    moves, vol_state, _, _ = _pm_scenarios(p, s)
    m = moves.shape[0]
    n_c, kc = books.shape
    # Only the (underlying, settlement) pairs some book holds on the grid: (A,).
    act = mg.active
    und, inv = act // 2, act % 2
    st = (1 - vol_state)[None, None, None, :]  # (1, 1, 1, m)
    xs = x[:, None, None, None] + np.log1p(moves).T[und][None, None, :, :]  # (C, 1, A, m)
    b4 = books[:, :, None, None]
    flat = (3 * n * 2, mg.points + 1, -1)
    val = mg.val.reshape(flat)
    val_slope = mg.val_slope.reshape(flat)
    lo = np.repeat(mg.lo.reshape(-1), 2)
    h = np.repeat(mg.h.reshape(-1), 2)
    a = st * (2 * n) + act[None, None, :, None]
    moved = _hermite(val, val_slope, lo, h, mg.points, a, xs, b4)  # (C, Kc, A, m)
    x3 = x[:, None, None]
    now = _hermite(val, val_slope, lo, h, mg.points, 2 * n + act[None, None, :], x3, b4[..., 0])
    coin = (inv == 1)[None, None, :]
    moved *= np.where(coin[..., None], np.exp(-xs), 1.0)  # coin: over the moved forward
    now *= np.where(coin, np.exp(-x3), 1.0)
    agg = np.zeros((n_c, kc, n * 2, m))
    agg[:, :, act, :] = moved - now[..., None]
    agg = agg.reshape(n_c * kc * n * 2, m)
    # Net deltas per (column, book, group) where the book holds the group.
    lo1, h1 = mg.lo[1], mg.h[1]
    ga = mg.g_und[None, None, :]
    gidx = np.arange(mg.g_und.size)[None, None, :]
    xg = x[:, None, None]
    bg = books[:, :, None]
    d = _hermite(mg.g_delta, mg.g_delta_slope, lo1[mg.g_und], h1[mg.g_und], mg.points, gidx, xg, bg)
    cv = _hermite(mg.g_val, mg.g_val_slope, lo1[mg.g_und], h1[mg.g_und], mg.points, gidx, xg, bg)
    d = d - np.where(mg.g_inv[None, None, :] == 1, np.exp(-xg) * cv, 0.0)
    held = mg.g_held[gidx, books[:, :, None]]  # (C, Kc, G)
    col = np.arange(n_c)[:, None, None]
    kk = np.arange(kc)[None, :, None]
    pair = ((col * kc + kk) * n + ga) * 2 + mg.g_inv[None, None, :]
    part = _GridPart(
        agg=agg,
        pair=np.broadcast_to(pair, held.shape)[held],
        t=np.broadcast_to(mg.g_t[None, None, :], held.shape)[held],
        delta=d[held],
    )
    ua = np.arange(n)[None, None, :]
    usd = _hermite(
        mg.usd, mg.usd_slope, lo1, h1, mg.points, ua, x[:, None, None], books[:, :, None]
    )
    pnl: FloatArray = usd.sum(axis=2) - mg.base_usd[books]
    return part, pnl


# -- distance to a call with the model's maintenance margin recomputed ------------------------


@dataclass(frozen=True, slots=True)
class ModelDistance:
    """Distance to a call with riskmon's maintenance margin recomputed at every move,
    arrays ``(k,)`` (as :class:`DistanceToCall`: positive fractions, NaN where no move
    within ``max_move`` reaches a call or equity is unknown).

    Attributes
    ----------
    down, up
        Smallest uniform move at which ``equity + P&L(move) <= MM_model(move)``.
    reachable_down, reachable_up
        The call is reached within ``max_move`` (including already called).
    maintenance_margin_usd
        ``MM_model`` today (move 0), USD.
    """

    down: FloatArray
    up: FloatArray
    reachable_down: BoolArray
    reachable_up: BoolArray
    maintenance_margin_usd: FloatArray


_REGULA_MAX_ITER: Final = 60


def distance_to_call_model(
    equity: npt.ArrayLike,
    linear_usd: npt.ArrayLike,
    options: OptionPositions | None,
    linear: LinearPositions | None,
    index_usd: npt.ArrayLike,
    underlyings: Sequence[str],
    settings: MarginSettings | None = None,
    max_move: float = 0.9,
    *,
    tol: float = 1e-7,
    grid_points: int = 16,
    value_grid: int | None = MODEL_GRID_POINTS,
    block_elements: int | None = MOVE_BLOCK_ELEMENTS,
) -> ModelDistance:
    """Smallest uniform move, down and up, at which equity reaches the model's margin.

    ``g(m) = equity + P&L(m) - MM(m)``: ``P&L`` by full revaluation in USD (every forward
    and index price times ``1 + m``, IV held, time not advanced), ``MM(m)`` the
    :func:`portfolio_margin` maintenance margin in USD of the book at the moved prices
    (the vol shocks apply to the held IVs; an inverse contract keeps its USD size, so its
    coin quantity becomes ``N / S1``).

    Parameters
    ----------
    equity
        Shape ``(k,)``, USD (NaN = unknown: no figure).
    linear_usd
        Shape ``(n, k)``: USD value of the linear positions (their P&L is ``value x m``).
    options, linear
        As :func:`portfolio_margin` (``options`` also carries the option P&L).
    index_usd, underlyings, settings
        As :func:`portfolio_margin`.
    max_move
        Search bound, fraction in (0, 1).
    tol
        Accuracy of the returned move.
    grid_points
        Base scan points per direction; short-dated options add points as in
        :func:`distance_to_call`.
    value_grid
        Grid intervals per underlying and vol state on which options are valued once
        (``None``: every option valued at every move, exactly). Each option whose sd in
        every vol state spans at least 1.5 grid intervals is valued, with its delta, on a
        uniform grid of log moves covering every move the search and the model's
        scenarios reach; the sums per book, underlying, settlement (and expiry, for the
        roll shock) are read at each move by cubic Hermite interpolation. The others, and
        today's margin, are valued exactly. tests/test_margin_grid.py checks the distances
        against exact valuation.
    block_elements
        Bound, in array elements (8 bytes each), on the estimated working set of one block
        of scan moves: the scan revalues the book at up to ``block_elements`` / (elements
        per move) moves at a time (at least one). ``None``: every move at once. The
        figures do not depend on it (to rounding: sums may group differently).

    Notes
    -----
    ``MM(m)`` is a maximum over scenarios, so ``g`` is continuous with kinks: a scan finds
    the first point with ``g <= 0`` and the Illinois variant of regula falsi (bisection
    when it stalls) refines it, all books and both directions at once. Each evaluation
    revalues every option a book holds in the 35 scenarios.
    """
    s = settings or MarginSettings()
    if not 0.0 < max_move < 1.0:
        raise ValueError(f"max_move must be in (0, 1), got {max_move}")
    lin_usd, names = _linear_named(linear_usd, underlyings)
    n, k = lin_usd.shape
    eq = np.asarray(equity, dtype=np.float64)
    if eq.shape != (k,):
        raise ValueError(f"equity must have shape ({k},)")
    index = np.asarray(index_usd, dtype=np.float64)
    if index.shape != (n,):
        raise ValueError(f"index_usd must have shape ({n},), got {index.shape}")
    o_all = _prepare(options, n, k)
    o_inv_all = _inverse_rows(options, o_all)
    l_rows, l_cols, lpos = _linear_entries(linear, n, k)
    p = _params(s, names)
    lin_tot = lin_usd.sum(axis=0)
    mg: _ModelGrid | None = None
    o, o_inv = o_all, o_inv_all  # the options valued exactly at every move
    if value_grid is not None and o_all is not None and o_all.size:
        mg, exact = _model_grid(o_all, o_inv_all, p, s, max_move, value_grid)
        if mg is not None:
            o, o_inv = _take(o_all, exact), o_inv_all[exact]

    def model_mm(
        ent: _Entries, cols_index: FloatArray, cols: int, extra: _GridPart | None = None
    ) -> FloatArray:
        """``(P, K)``: the model's maintenance margin in USD of each column and book."""
        worst, _, roll, dshock, held, _ = _pm_core(ent, cols_index, p, s, cols, extra)
        to_usd = np.stack([np.ones_like(cols_index), cols_index], axis=-1)[:, None]
        # Pairs a book does not hold count 0 (their index price may be unknown).
        rmm = np.where(held, (worst + roll + dshock) * to_usd, 0.0)
        out: FloatArray = s.mm_factor * rmm.sum(axis=(2, 3))
        return out

    def g_problems(books: IntArray, moves: FloatArray) -> FloatArray:
        """``g`` of each (book, move) problem: entries of that book only."""
        cols = books.size
        scale = 1.0 + moves
        ent = _entries_for(o, o_inv, lpos, l_rows, l_cols, books, scale)
        extra, grid_pnl = (
            (None, None) if mg is None else _grid_part(mg, p, s, np.log1p(moves), books[:, None])
        )
        mm = model_mm(ent, index[None, :] * scale[:, None], cols, extra)[:, 0]
        pnl = lin_tot[books] * moves
        if grid_pnl is not None:
            pnl = pnl + grid_pnl[:, 0]
        eo = ent.o
        if eo.size:
            f1 = eo.fwd
            dv = black76(f1, eo.strike, eo.t, eo.vol, eo.call).price
            dv -= black76(f1 / scale[ent.o_col], eo.strike, eo.t, eo.vol, eo.call).price
            pnl += np.bincount(ent.o_col, weights=eo.qty[:, 0] * dv, minlength=cols)
        out: FloatArray = eq[books] + pnl - mm
        return out

    # The scan's working set per move: the exactly valued options' and linear rows'
    # entries (a quantity column per book, and the per-entry arrays), the model's
    # (book, underlying, settlement, scenario) sums, and the grid options' interpolants.
    n_scen = _pm_scenarios(p, s)[0].shape[0]
    entries = (0 if o is None else o.size) + lpos.underlying.shape[0]
    pairs = k * n * 2 * n_scen
    per_move = entries * (k + _ENTRY_ARRAYS) + pairs * (
        _PAIR_ARRAYS + (0 if mg is None else _GRID_ARRAYS)
    )
    block = None if block_elements is None else max(1, block_elements // max(per_move, 1))

    def g_grid(moves: FloatArray) -> FloatArray:
        """``g`` of every book at each move, ``(moves, k)``: each option valued once per
        move; ``block`` moves at a time, so the working set does not grow with the scan
        (hundreds of moves when many options are short-dated)."""
        if block is None or moves.size <= block:
            return g_moves(moves)
        out = np.empty((moves.size, k))
        for start in range(0, moves.size, block):
            _checkpoint()
            out[start : start + block] = g_moves(moves[start : start + block])
        return out

    def g_moves(moves: FloatArray) -> FloatArray:
        scale = 1.0 + moves
        ent = _entries_moved(o, o_inv, lpos, scale, k)
        extra, grid_pnl = (
            (None, None)
            if mg is None
            else _grid_part(
                mg, p, s, np.log1p(moves), np.broadcast_to(np.arange(k), (moves.size, k))
            )
        )
        mm = model_mm(ent, index[None, :] * scale[:, None], moves.size, extra)
        pnl = moves[:, None] * lin_tot[None, :]
        if grid_pnl is not None:
            pnl = pnl + grid_pnl
        if o is not None and o.size:
            eo = ent.o
            dv = black76(eo.fwd, eo.strike, eo.t, eo.vol, eo.call).price
            dv -= np.tile(black76(o.fwd, o.strike, o.t, o.vol, o.call).price, moves.size)
            pnl += dv.reshape(moves.size, o.size) @ o.qty
        out: FloatArray = eq[None, :] + pnl - mm
        return out

    def g_signed(sign: float, books: IntArray, x: FloatArray) -> FloatArray:
        return g_problems(books, sign * x)

    # Today's margin exactly, every option included (as portfolio_margin computes it).
    mm0 = model_mm(_entries_moved(o_all, o_inv_all, lpos, np.ones(1), k), index[None, :], 1)[0]
    g0 = eq - mm0
    valid = np.isfinite(g0)
    called = valid & (g0 <= 0.0)
    live = np.flatnonzero(valid & ~called)
    grids = _scan_moves(max_move, grid_points, o_all)
    dist = np.full((2, k), np.nan)
    dist[:, called] = 0.0
    reach = np.zeros((2, k), dtype=bool)
    reach[:, called] = True
    for d, sgn in ((0, -1.0), (1, 1.0)):  # two directions, not a loop over data
        grid = grids[d]
        if live.size == 0 or grid.size == 0:
            continue
        _checkpoint()
        g = g_grid(sgn * grid)[:, live]  # (G, live)
        r, lo, hi, g_lo, g_hi = _first_crossings((g, g), (grid, grid), g0[live])
        hit = np.flatnonzero(r[0])
        reach[d, live[hit]] = True
        if hit.size:
            dist[d, live[hit]] = _regula_falsi(
                partial(g_signed, sgn),
                live[hit],
                lo[0, hit],
                hi[0, hit],
                g_lo[0, hit],
                g_hi[0, hit],
                tol,
            )
    return ModelDistance(
        down=dist[0],
        up=dist[1],
        reachable_down=reach[0],
        reachable_up=reach[1],
        maintenance_margin_usd=mm0,
    )


def _regula_falsi(
    g: Callable[[IntArray, FloatArray], FloatArray],
    books: IntArray,
    a: FloatArray,
    b: FloatArray,
    ga: FloatArray,
    gb: FloatArray,
    tol: float,
) -> FloatArray:
    """Root of ``g(book, x)`` in ``(a, b]`` with ``g(a) > 0 >= g(b)``, per book (Illinois
    regula falsi; a bisection step whenever the bracket shrinks by less than half)."""
    a, b, ga, gb = a.copy(), b.copy(), ga.copy(), gb.copy()
    active = np.ones(books.size, dtype=bool)
    side = np.zeros(books.size, dtype=np.int64)  # which end was kept last: -1 a, +1 b
    bisect = np.zeros(books.size, dtype=bool)
    for _ in range(_REGULA_MAX_ITER):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        _checkpoint()
        aa, bb, fa, fb = a[idx], b[idx], ga[idx], gb[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            x = bb - fb * (bb - aa) / (fb - fa)
        mid = 0.5 * (aa + bb)
        x = np.where(np.isfinite(x) & (x > aa) & (x < bb) & ~bisect[idx], x, mid)
        fx = g(books[idx], x)
        pos = fx > 0.0
        width = bb - aa
        # Illinois: halve the function value at the end kept twice in a row.
        keep_b = pos & (side[idx] == 1)
        keep_a = ~pos & (side[idx] == -1)
        fb = np.where(keep_b, 0.5 * fb, fb)
        fa = np.where(keep_a, 0.5 * fa, fa)
        aa, fa = np.where(pos, x, aa), np.where(pos, fx, fa)
        bb, fb = np.where(pos, bb, x), np.where(pos, fb, fx)
        side[idx] = np.where(pos, 1, -1)
        # A step that did not halve the bracket is followed by a bisection, so the
        # bracket at least halves every two steps.
        bisect[idx] = (bb - aa) > 0.5 * width
        a[idx], b[idx], ga[idx], gb[idx] = aa, bb, fa, fb
        done = (bb - aa <= tol) | (fx == 0.0)
        active[idx[done]] = False
    return b
