"""Own margin figures: scenario margin, distance to a margin call, stress what-ifs.

riskmon's own margin model beside the venue's figures. Pure numpy/scipy: no clock, no
I/O, no logging. Everything is vectorised over option instruments, scenarios and books;
options come deduplicated per instrument with one quantity column per book
(:class:`monitor.quant.risk.OptionPositions`, as ``BookValues.options`` holds them), linear
positions as their USD value per underlying and book (``BookValues.linear_usd.T``).

Scenario margin (after Deribit's portfolio margin)
    Sources: Deribit's "Portfolio Margin" article
    (support.deribit.com/hc/en-us/articles/25944756247837) for the structure: a maximum
    price move of +-16% in 9 evenly spaced buckets including 0, each with volatility up,
    same and down; an "extended table" of moves -66%, -33%, +50%, +100%, +200%, +300%,
    +400%, +500% on volatility up only, counting "only a fraction of simulated P&L", with a
    dampener. Deribit's API (``private/pme/simulate``, ``model_params`` for ``btc_usd``,
    docs.deribit.com) for the values: ``price_range`` 0.16, ``buckets_count`` 4 (moves per
    side), ``volatility_range_up`` 0.5, ``volatility_range_down`` 0.25,
    ``short_term_vega_power`` 0.3, ``long_term_vega_power`` 0.13,
    ``min_volatility_for_shock_up`` 0.5, ``extended_table_factor`` 1.

    A shock applies to each option's own IV ``sigma`` with days to expiry ``D``::

        scale    = (30 / max(D, min_days)) ** p,  p = short_term_vega_power if D < 30
                                                    else long_term_vega_power
        vol up   = max(sigma * (1 + vol_range_up * scale), min_vol_shock_up)
        vol down = max(sigma * (1 - vol_range_down * scale), 0)

    (the published formula of Deribit-replicating tools, e.g. docs.oreome.com "Advanced Risk
    Scenarios", and of Paradex's copy of the model; the scale is continuous at 30 days).
    The P&L of an extended move ``m`` counts with weight
    ``extended_weight * price_range / |m|`` (0.24 at -66%, 0.032 at +500%): Deribit's
    "fraction of simulated P&L", as Paradex publishes it for the same table.

    Departures: (1) ``min_days`` (1 day) floors ``D`` in the scale: Deribit publishes no
    floor, and without one the down shock of an option in its last hours takes its IV to 0
    (Paradex floors at 1 day too). (2) Deribit's extended dampener (``extended_dampener``,
    a per-currency amount) is not applied: its formula is not published; leaving it out can
    only raise the figure. (3) Deribit's contingencies (per short option, offsetting
    futures) and the ``mm_factor`` between its IM and MM are not modelled: this is the
    stress loss, not Deribit's requirement. (4) Deribit margins each settlement currency
    separately; here cross-underlying aggregation is ``"sum"`` (each underlying moved on its
    own, worst losses added: Deribit's per-currency figure summed, conservative) or
    ``"joint"`` (every underlying moved by the same scenario at once).

    Time is not advanced: Deribit's scenarios move price and volatility only (no theta),
    so the zero-move, vol-unchanged scenario has zero P&L. The base value is the model price
    at the marked IV (not the venue mark), as in :func:`monitor.quant.risk.revalue`.

Distance to a margin call
    The smallest uniform move ``m`` of all underlyings, down and up separately, at which
    ``equity + P&L(m) <= maintenance margin``, with ``P&L(m)`` by full revaluation (every
    forward times ``1 + m``, IV held, time not advanced) and the maintenance margin held
    at the venue's figure (in truth it changes with the book's value; the venue's model is
    not ours to replicate). Found by a scan of a move grid, refined by safeguarded Newton.
    In sigmas: ``|ln(1 + m)| / sigma_1d``, with ``sigma_1d = sqrt(w' S w / 365)`` the
    1-day standard deviation of the log return of the book's basket of underlyings,
    ``w = |x| / sum |x|`` (gross exposure weights), ``S`` the annualised covariance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from scipy import sparse

from monitor.quant.greeks import black76
from monitor.quant.risk import OptionPositions, _b76_block

__all__ = [
    "Aggregation",
    "DistanceToCall",
    "MarginScenarios",
    "MarginSettings",
    "ScenarioMargin",
    "Stress",
    "StressPnL",
    "distance_to_call",
    "margin_scenarios",
    "scenario_margin",
    "shocked_vols",
    "stress_pnl",
    "vega_scale",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Aggregation = Literal["sum", "joint"]

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
        Floor on days to expiry in the scale (departure, module notes).
    min_vol_shock_up
        Vol up is at least this IV (annualised decimal).
    extended_moves
        Moves of the extended table (vol up only).
    extended_weight
        Deribit's ``extended_table_factor``: an extended move ``m`` counts
        ``extended_weight * price_range / |m|`` of its P&L.
    aggregation
        ``"sum"``: each underlying moved alone, worst losses added; ``"joint"``: every
        underlying moved by the same scenario at once.
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
    aggregation: Aggregation = "sum"
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
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0.0):
                raise ValueError(f"{name} must be finite and >= 0, got {v}")
        if not (math.isfinite(self.min_days) and self.min_days > 0.0):
            raise ValueError(f"min_days must be > 0, got {self.min_days}")
        for m in self.extended_moves:
            if not (math.isfinite(m) and m > -1.0 and m != 0.0):
                raise ValueError(f"extended moves must be > -1 and not 0, got {m}")
        if self.aggregation not in ("sum", "joint"):
            raise ValueError(f"aggregation must be 'sum' or 'joint', got {self.aggregation!r}")
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
    lin = np.asarray(linear_usd, dtype=np.float64)
    if lin.ndim != 2:
        raise ValueError(f"linear_usd must be 2-D (n, k), got shape {lin.shape}")
    n, k = lin.shape
    lin = _linear(lin, n)
    names = tuple(underlyings) if underlyings is not None else tuple(f"U{j}" for j in range(n))
    if len(names) != n:
        raise ValueError(f"{len(names)} underlying names for {n} underlyings")
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
    lin = np.asarray(linear_usd, dtype=np.float64)
    if lin.ndim != 2:
        raise ValueError(f"linear_usd must be 2-D (n, k), got shape {lin.shape}")
    n, k = lin.shape
    lin = _linear(lin, n)
    names = tuple(underlyings)
    if len(names) != n:
        raise ValueError(f"{len(names)} underlying names for {n} underlyings")
    col = {u: j for j, u in enumerate(names)}
    ns = len(stresses)
    moves = np.array([[st.default_move] * n for st in stresses], dtype=np.float64).reshape(ns, n)
    for j, st in enumerate(stresses):  # configuration, not numerics: one entry per named move
        for u, mv in st.moves.items():
            if u in col:
                moves[j, col[u]] = mv
    vol_factor = np.array([1.0 + st.vol_shift for st in stresses], dtype=np.float64)
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
        Scan points per direction (:func:`_move_grid`). A crossing that goes below and
        back above maintenance margin between two scan points is not seen; the scan finds
        the first scan point at or below it and the root is refined in the cell before.

    Returns
    -------
    DistanceToCall

    Notes
    -----
    Scan: ``2 x grid_points`` moves x ``i`` instruments, one matrix product into the books.
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
    grid = _move_grid(max_move, grid_points)  # (G,)
    sign = np.array([-1.0, 1.0])
    moves = (sign[:, None] * grid[None, :]).reshape(-1)  # (2G,): down then up
    lin_tot = lin.sum(axis=0)  # (k,): uniform move, so the linear P&L is lin_tot * move
    pnl = moves[:, None] * lin_tot[None, :]  # (2G, k)
    if o is not None and has_opt:
        sd0 = o.vol * np.sqrt(o.t)
        r = np.log1p(moves)
        for c in _chunks(moves.size, o.size):
            width = c.stop - c.start
            base = _values(np.zeros((1, width)), o, c, sd0[c])
            v = _values(np.repeat(r[:, None], width, axis=1), o, c, sd0[c])
            v -= base
            pnl += v @ o.qty[c]
    g = (headroom[None, :] + pnl).reshape(2, grid_points, k)
    below = g <= 0.0  # NaN headroom compares False
    reach = below.any(axis=1)  # (2, k)
    first = np.argmax(below, axis=1)  # (2, k)
    hi = grid[first]
    lo = np.where(first > 0, grid[np.maximum(first - 1, 0)], 0.0)
    g_hi = np.take_along_axis(g, first[:, None, :], axis=1)[:, 0, :]
    g_lo = np.where(
        first > 0,
        np.take_along_axis(g, np.maximum(first - 1, 0)[:, None, :], axis=1)[:, 0, :],
        headroom[None, :],
    )
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
