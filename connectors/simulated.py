"""The embedded simulated market: what ``riskmon run`` watches when it has no config.

It is the product's demo, so within minutes it must give the monitor something real to
show: volatility regimes, correlation spikes, risk-parity drift, hedges that come and go,
and margin that thins and recovers. Everything is a deterministic function of ``seed``,
``tick_interval_ms``, ``underlyings`` and ``start_ms``: :meth:`SimulatedMarket.events` is the
pure event stream (no I/O, no clock), :meth:`SimulatedMarket.run` paces it onto a sink.

Market model (numpy, vectorised over underlyings and over the whole option chain)
--------------------------------------------------------------------------------
- Index prices: correlated GBM. The log return from step k-1 to step k is
  ``sigma*sqrt(dt)*L@z - sigma**2*dt/2`` with ``sigma = base vol x the regime's multiplier``
  and ``L`` the Cholesky factor of the regime's correlation, both taken from the regime in
  force at step k-1; ``dt`` is the tick in years of 365 days. Base vols and start prices:
  BTC 50% / 90,000, ETH 65% / 3,000, SOL 85% / 150, any other name 80% / 100. Calm
  correlations: BTC-ETH 0.80, BTC-SOL 0.65, ETH-SOL 0.70, every other pair 0.55.
- Regimes (:class:`Regime`, schedule from :meth:`SimulatedMarket.regime_schedule`):
  ``calm`` (base vols, calm correlations), ``volatile`` (each asset's vol x U(2, 3), drawn
  per episode so risk shares move, calm correlations), ``correlation_spike`` (vols x1.5,
  every pairwise correlation 0.9). Schedule: a first calm of 150-240 s, then the cycle
  volatile 150-240 s, calm 180-300 s, correlation spike 90-180 s, calm 180-300 s, repeated;
  durations are whole seconds drawn from the seed. The first volatile spell starts within
  4 minutes, a full cycle takes 10-15 minutes.
- Spot ``BTC_USDC`` trades at the index. Perpetual: index x (1 + basis), basis an OU process
  (mean 2 bp, sd 5 bp, 2 min). Carry: an annualised OU rate per underlying (mean 7%, sd 2%,
  10 min); the dated future and every option forward are ``index * exp(carry * T)``.
- Option chain per underlying: four expiry slots of tenor 1, 7, 30 and 90 days, each expiring
  at the first 08:00 UTC at least one tenor after its listing (one tenor after start at
  first). An expired slot is listed again at once, one tenor ahead, on fresh strikes; the
  dated future shares the 90-day slot's expiry and rolls with it. Strikes: 9 per expiry, a
  "nice" grid (1, 2, 2.5, 5 x 10^k) spaced about half a standard deviation of the expiry,
  centred on the forward at listing; calls and puts. BTC and ETH options are inverse
  (``BTC-27DEC26-90000-C``, price in coin = USD Black-76 / forward, declared by an
  ``instrument`` event before their first price); others are linear USDC
  (``SOL_USDC-27DEC26-150-C``, price in USD), as are their perpetual and future.
- Implied vol: ``atm(T) = 1.1 * (base + (lagged - base) / (1 + T / 30 days)) * exp(noise)``
  where ``lagged`` follows the regime vol with a 60 s lag and ``noise`` is an OU (sd 3%,
  1 min): short expiries react fully, long ones partly. Smile on standardised moneyness
  ``z = ln(K/F) / (base * sqrt(max(T, 1 day)))``: ``iv = atm * min(1 - 0.05 z + 0.02 z**2, 3)``
  (the spec's ``atm*(1 + skew*ln(K/F) + curvature*ln(K/F)**2)`` with per-expiry
  coefficients). Prices are :func:`monitor.quant.greeks.black76_price` on the emitted ``iv`` and
  ``underlying_price`` (the forward), floored at 1e-8 of the forward (a venue's minimum mark).

Events per step (3 underlyings)
-------------------------------
Every step: the index, spot, perpetual and future of each underlying (4n = 12) and the options
of one expiry slot in rotation (18n = 54), so each option ticks every 4 steps; a newly listed
slot ticks in full at once. The first step carries every option (72n = 216 prices) and 144
``instrument`` events. Accounts: one ``account`` event per account every ~1 s; ``position``
events at start and whenever a quantity changes.

Demo book (USD cash 1,000,000 each; quantities in underlying units, multiplier 1)
--------------------------------------------------------------------------------
- ``parity``: long, sized risk parity on the calm covariance at start, 3x gross (spot for the
  first underlying, perpetuals for the rest); never rebalanced, so it drifts with regimes.
- ``hedged``: 900k of spot BTC hedged with a short BTC perpetual: fully hedged for 3-6
  minutes, then the hedge is cut to 30-70% for 2-4 minutes, and so on.
- ``options``: short strangles (about +-1 sd strikes, the expiry nearest 7 days) on BTC and
  ETH, 2.4x equity in notional, delta-hedged with perpetuals at every open or roll and
  whenever net delta leaves a 5% band; rolled a day before expiry; half bought back above
  90% utilisation, resized to target below 25%. Utilisation sits near 37-44% in calm and
  peaks at 60-82% in each volatile spell (it lags the regime by about a minute), so the
  default ``margin_utilization`` warning (60%) fires and resolves in every spell.
- ``basis``: long ETH spot, short the ETH future (1.5x equity), re-opened when the future
  rolls.
Without BTC or ETH among the underlyings, the first underlying stands in for them.
Equity is cash plus the mark-to-market of the positions at the last emitted marks (trades
happen at those marks, inverse options valued at coin price x forward). Maintenance margin:
0.5% of perpetual and future notional, short options ``0.075 x forward + mark`` per unit,
nothing for long spot or long options; initial margin is 1.5 x maintenance.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import enum
import math
import re
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

import numpy as np
import numpy.typing as npt

from connectors.base import EventSink
from monitor.model.events import AccountEvent, Event, InstrumentEvent, PositionEvent, PriceEvent
from monitor.model.health import ConnectorStatus, LagHistogram
from monitor.model.instruments import date_code
from monitor.quant.greeks import black76_price

__all__ = [
    "DEFAULT_START_MS",
    "MIN_OPTION_PRICE_FRACTION",
    "SPIKE_CORRELATION",
    "Regime",
    "RegimeSpan",
    "SimulatedMarket",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

MS_PER_DAY: Final = 86_400_000
MS_PER_YEAR: Final = 365 * MS_PER_DAY
#: ``events()`` starts here when ``start_ms`` is None (2026-11-21T06:00:00Z).
DEFAULT_START_MS: Final = 1_795_240_800_000

# --- market -------------------------------------------------------------------------------
_PROFILES: Final[dict[str, tuple[float, float]]] = {  # start price USD, base vol
    "BTC": (90_000.0, 0.50),
    "ETH": (3_000.0, 0.65),
    "SOL": (150.0, 0.85),
}
_DEFAULT_PROFILE: Final = (100.0, 0.80)
_CALM_PAIRS: Final[dict[frozenset[str], float]] = {
    frozenset(("BTC", "ETH")): 0.80,
    frozenset(("BTC", "SOL")): 0.65,
    frozenset(("ETH", "SOL")): 0.70,
}
_CALM_DEFAULT_CORR: Final = 0.55
#: Every pairwise correlation in the ``correlation_spike`` regime.
SPIKE_CORRELATION: Final = 0.9
_SPIKE_VOL_MULT: Final = 1.5
_VOLATILE_VOL_MULT: Final = (2.0, 3.0)
_INVERSE: Final = frozenset(("BTC", "ETH"))

_PERP_BASIS: Final = (2e-4, 5e-4, 120.0)  # mean, stationary sd, time constant s
_CARRY: Final = (0.07, 0.02, 600.0)
_IV_NOISE: Final = (0.03, 60.0)  # stationary sd of log noise, time constant s
_IV_LAG_S: Final = 60.0
_VRP: Final = 1.1  # implied over realised
_TERM_REF_YEARS: Final = 30.0 / 365.0
_SMILE_SKEW: Final = -0.05
_SMILE_CURVATURE: Final = 0.02
_SMILE_CAP: Final = 3.0
_SMILE_MIN_T: Final = 1.0 / 365.0
#: Option prices are floored at this fraction of the forward (USD), so never zero.
MIN_OPTION_PRICE_FRACTION: Final = 1e-8

_TENORS_MS: Final = tuple(d * MS_PER_DAY for d in (1, 7, 30, 90))
_STRIKES: Final = 9
_STRIKE_SPACING_SD: Final = 0.5
_EXPIRY_HOUR_MS: Final = 8 * 3_600_000
_NAME_RE: Final = re.compile(r"^[A-Z0-9]{1,20}$")

# --- regimes ------------------------------------------------------------------------------


class Regime(enum.StrEnum):
    CALM = "calm"
    VOLATILE = "volatile"
    CORRELATION_SPIKE = "correlation_spike"


_FIRST_CALM_S: Final = (150, 240)
_CYCLE: Final = (
    (Regime.VOLATILE, 150, 240),
    (Regime.CALM, 180, 300),
    (Regime.CORRELATION_SPIKE, 90, 180),
    (Regime.CALM, 180, 300),
)

# --- book ---------------------------------------------------------------------------------
_ACCOUNT_INTERVAL_MS: Final = 1000
_CASH: Final = 1_000_000.0
_FUTURE_MM: Final = 0.005
_SHORT_OPTION_MM: Final = 0.075
_IM_OVER_MM: Final = 1.5
_PARITY_GROSS: Final = 3.0
_HEDGED_NOTIONAL: Final = 900_000.0
_HEDGE_PARTIAL: Final = (0.3, 0.7)
_HEDGE_FULL_S: Final = (180, 360)
_HEDGE_PARTIAL_S: Final = (120, 240)
_OPT_NOTIONAL: Final = 2.4  # strangle notional / equity: every volatile spell > 60%
_OPT_TENOR_MS: Final = 7 * MS_PER_DAY
_OPT_MIN_OPEN_MS: Final = 2 * MS_PER_DAY
_OPT_ROLL_MS: Final = MS_PER_DAY
_OPT_HEDGE_BAND: Final = 0.05
_OPT_DELEVER_UTIL: Final = 0.9
_OPT_RELEVER_UTIL: Final = 0.25
_BASIS_NOTIONAL: Final = 1.5


@dataclass(frozen=True, slots=True)
class RegimeSpan:
    """One regime episode; times are ms since the run's start, ``[start_ms, end_ms)``.

    ``vol_multiplier`` scales each underlying's base vol (aligned with ``underlyings``).
    """

    start_ms: int
    end_ms: int
    regime: Regime
    vol_multiplier: tuple[float, ...]


class _Schedule:
    """The regime schedule, drawn lazily from its own random stream (start-independent)."""

    def __init__(self, seed_seq: np.random.SeedSequence, n: int) -> None:
        self._rng = np.random.default_rng(seed_seq)
        self._n = n
        self.spans: list[RegimeSpan] = []
        self._starts: list[int] = []
        self._phase = 0
        self._cursor = 0

    def _extend(self) -> None:
        if not self.spans:
            regime, lo, hi = Regime.CALM, *_FIRST_CALM_S
        else:
            regime, lo, hi = _CYCLE[self._phase]
            self._phase = (self._phase + 1) % len(_CYCLE)
        start = self.spans[-1].end_ms if self.spans else 0
        end = start + int(self._rng.integers(lo, hi + 1)) * 1000
        if regime is Regime.VOLATILE:
            mult = tuple(float(m) for m in self._rng.uniform(*_VOLATILE_VOL_MULT, self._n))
        elif regime is Regime.CORRELATION_SPIKE:
            mult = (_SPIKE_VOL_MULT,) * self._n
        else:
            mult = (1.0,) * self._n
        self.spans.append(RegimeSpan(start, end, regime, mult))
        self._starts.append(start)

    def at(self, offset_ms: int) -> RegimeSpan:
        while not self.spans or self.spans[-1].end_ms <= offset_ms:
            self._extend()
        span = self.spans[self._cursor]
        if span.start_ms <= offset_ms < span.end_ms:
            return span
        self._cursor = max(bisect_right(self._starts, offset_ms) - 1, 0)
        return self.spans[self._cursor]


# --- helpers ------------------------------------------------------------------------------


def _calm_correlation(names: Sequence[str]) -> FloatArray:
    n = len(names)
    c = np.full((n, n), _CALM_DEFAULT_CORR)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            c[i, j] = 1.0 if i == j else _CALM_PAIRS.get(frozenset((a, b)), _CALM_DEFAULT_CORR)
    return c


def _spike_correlation(n: int) -> FloatArray:
    return np.full((n, n), SPIKE_CORRELATION) + (1.0 - SPIKE_CORRELATION) * np.eye(n)


def _next_expiry(ms: int) -> int:
    """The first 08:00 UTC at or after ``ms``."""
    return -((-(ms - _EXPIRY_HOUR_MS)) // MS_PER_DAY) * MS_PER_DAY + _EXPIRY_HOUR_MS


def _date_code(expiry_ms: int) -> str:
    return date_code(_dt.datetime.fromtimestamp(expiry_ms / 1000, tz=_dt.UTC).date())


def _iso(expiry_ms: int) -> str:
    d = _dt.datetime.fromtimestamp(expiry_ms / 1000, tz=_dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def _nice_floor(x: float) -> Decimal:
    """The largest 1, 2, 2.5 or 5 x 10^k not above ``x`` (> 0), exactly."""
    top = math.floor(math.log10(x)) + 1
    for e in range(top, top - 3, -1):
        for m in ("5", "2.5", "2", "1"):
            d = Decimal(m).scaleb(e)
            if float(d) <= x:
                return d
    return Decimal(1).scaleb(top - 3)


def _strike_text(k: Decimal) -> str:
    return format(k.normalize(), "f")


def _ndtr(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _risk_parity(cov: FloatArray) -> FloatArray:
    """Weights (sum 1) with equal Euler risk contributions under ``cov`` (n, n)."""
    n = cov.shape[0]
    x = np.full(n, 1.0 / n)
    for _ in range(500):
        rc = x * (cov @ x)
        x = x * np.sqrt((1.0 / n) / (rc / rc.sum()))
        x /= x.sum()
    return x


@dataclass(slots=True)
class _Account:
    name: str
    cash: float
    positions: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Strangle:
    call: str
    put: str
    expiry_ms: int
    size: float  # short, underlying units per leg


@dataclass(frozen=True, slots=True)
class _Model:
    seed: int
    tick_ms: int
    names: tuple[str, ...]
    start_price: FloatArray
    base_vol: FloatArray
    calm_corr: FloatArray


# --- the simulation -----------------------------------------------------------------------


class _Sim:
    """One run of the market from ``start_ms``: state, chain, book. Produces steps."""

    def __init__(self, model: _Model, start_ms: int) -> None:
        self.m = model
        self.t0 = start_ms
        names = model.names
        n = len(names)
        self.n = n
        regime_ss, market_ss, book_ss = np.random.SeedSequence(model.seed).spawn(3)
        self.schedule = _Schedule(regime_ss, n)
        self.rng = np.random.default_rng(market_ss)
        self.book_rng = np.random.default_rng(book_ss)
        self.l_calm = np.linalg.cholesky(model.calm_corr)
        self.l_spike = np.linalg.cholesky(_spike_correlation(n))
        self.dt = model.tick_ms / MS_PER_YEAR
        dt_s = model.tick_ms / 1000.0
        self.a_basis = math.exp(-dt_s / _PERP_BASIS[2])
        self.a_carry = math.exp(-dt_s / _CARRY[2])
        self.a_noise = math.exp(-dt_s / _IV_NOISE[1])
        self.a_iv = math.exp(-dt_s / _IV_LAG_S)

        self.log_s = np.log(model.start_price)
        self.basis = np.full(n, _PERP_BASIS[0])
        self.carry = np.full(n, _CARRY[0])
        self.iv_noise = np.zeros(n)
        self.iv_lag = model.base_vol.copy()

        self.inverse = [u in _INVERSE for u in names]
        self.prefix = [
            u if inv else f"{u}_USDC" for u, inv in zip(names, self.inverse, strict=True)
        ]
        self.spot_names = [f"{u}_USDC" for u in names]
        self.perp_names = [f"{p}-PERPETUAL" for p in self.prefix]
        self.fut_names = [""] * n
        self.decimals = [max(math.ceil(math.log10(p)) - 1, -6) for p in model.start_price]
        self.marks: dict[str, float] = {}  # USD value per unit at the last emitted price
        self.fwd: dict[str, float] = {}  # options: last emitted underlying_price
        self.kind: dict[str, str] = {}
        self.expiry: dict[str, int] = {}
        for i, u in enumerate(names):
            self.kind[u] = "index"
            self.kind[self.spot_names[i]] = "spot"
            self.kind[self.perp_names[i]] = "perpetual"

        # option chain: per slot the rows (names, underlying, strike); flat arrays over slots
        n_slots = len(_TENORS_MS)
        self.slot_expiry = [0] * n_slots
        self.slot_names: list[list[str]] = [[] for _ in range(n_slots)]
        self.slot_u: list[list[int]] = [[] for _ in range(n_slots)]
        self.slot_k: list[list[float]] = [[] for _ in range(n_slots)]
        self.slot_call: list[list[bool]] = [[] for _ in range(n_slots)]
        self.row_names: list[str] = []
        self.row_index: dict[str, int] = {}
        self.r_u = np.zeros(0, dtype=np.int64)
        self.r_k = np.zeros(0)
        self.r_call = np.zeros(0, dtype=bool)
        self.r_inv = np.zeros(0, dtype=bool)
        self.r_exp = np.zeros(0, dtype=np.int64)
        self.r_slot = np.zeros(0, dtype=np.int64)
        # per-row figures of the last step (all rows, emitted or not)
        self.r_f = np.zeros(0)
        self.r_iv = np.zeros(0)
        self.r_atm = np.zeros(0)
        self.r_t = np.zeros(0)

        self.accounts = [_Account(a, _CASH) for a in ("parity", "hedged", "options", "basis")]
        self.hedge_u = names.index("BTC") if "BTC" in names else 0
        self.hedge_ratio = 1.0
        self.hedge_next_ms = 0
        self.hedge_spot = 0.0
        self.opt_us = [i for i, u in enumerate(names) if u in _INVERSE] or [0]
        self.strangles: dict[int, _Strangle] = {}
        self.basis_u = names.index("ETH") if "ETH" in names else 0
        self.basis_qty = 0.0
        self.account_every = max(1, round(_ACCOUNT_INTERVAL_MS / model.tick_ms))

    # --- market ---------------------------------------------------------------------------

    def _advance(self, t_prev: int) -> None:
        span = self.schedule.at(t_prev - self.t0)
        sig = self.m.base_vol * np.asarray(span.vol_multiplier)
        chol = self.l_spike if span.regime is Regime.CORRELATION_SPIKE else self.l_calm
        z = self.rng.standard_normal((4, self.n))
        self.log_s = self.log_s + sig * math.sqrt(self.dt) * (chol @ z[0]) - 0.5 * sig**2 * self.dt
        b_mean, b_sd, _ = _PERP_BASIS
        a = self.a_basis
        self.basis = b_mean + (self.basis - b_mean) * a + b_sd * math.sqrt(1 - a * a) * z[1]
        c_mean, c_sd, _ = _CARRY
        a = self.a_carry
        self.carry = c_mean + (self.carry - c_mean) * a + c_sd * math.sqrt(1 - a * a) * z[2]
        a = self.a_noise
        self.iv_noise = self.iv_noise * a + _IV_NOISE[0] * math.sqrt(1 - a * a) * z[3]
        self.iv_lag = sig + (self.iv_lag - sig) * self.a_iv

    def _list_slot(self, s: int, t: int, out: list[Event]) -> None:
        """List slot ``s`` one tenor after ``t`` on strikes around the current forwards."""
        expiry = _next_expiry(t + _TENORS_MS[s])
        others = {e for j, e in enumerate(self.slot_expiry) if j != s}
        while expiry in others:
            expiry += MS_PER_DAY
        held = {name for a in self.accounts for name in a.positions}
        for name in self.slot_names[s]:
            if name not in held:
                for d in (self.marks, self.fwd, self.kind, self.expiry):
                    d.pop(name, None)
        self.slot_expiry[s] = expiry
        t_years = (expiry - t) / MS_PER_YEAR
        spot = np.exp(self.log_s)
        date = _date_code(expiry)
        names: list[str] = []
        us: list[int] = []
        ks: list[float] = []
        calls: list[bool] = []
        for u, name_u in enumerate(self.m.names):
            fwd = float(spot[u] * math.exp(self.carry[u] * t_years))
            sd = float(self.m.base_vol[u]) * math.sqrt(t_years)
            step = _nice_floor(_STRIKE_SPACING_SD * sd * fwd)
            centre = round(fwd / float(step))
            for j in range(centre - _STRIKES // 2, centre + _STRIKES // 2 + 1):
                if j <= 0:
                    continue
                text = _strike_text(step * j)
                strike = float(text)
                stem = f"{self.prefix[u]}-{date}-{text.replace('.', 'd')}"
                for is_call in (True, False):
                    name = f"{stem}-{'C' if is_call else 'P'}"
                    names.append(name)
                    us.append(u)
                    ks.append(strike)
                    calls.append(is_call)
                    self.kind[name] = "option"
                    self.expiry[name] = expiry
                    if self.inverse[u]:
                        out.append(
                            InstrumentEvent(
                                instrument=name,
                                kind="option",
                                underlying=name_u,
                                expiry=_iso(expiry),
                                strike=strike,
                                option_type="call" if is_call else "put",
                                inverse=True,
                                ts=t,
                            )
                        )
        self.slot_names[s], self.slot_u[s], self.slot_k[s], self.slot_call[s] = names, us, ks, calls
        if s == len(_TENORS_MS) - 1:  # the dated future shares the longest slot's expiry
            for u in range(self.n):
                old = self.fut_names[u]
                if old and not any(old in a.positions for a in self.accounts):
                    for d in (self.marks, self.kind, self.expiry):
                        d.pop(old, None)
                self.fut_names[u] = f"{self.prefix[u]}-{date}"
                self.kind[self.fut_names[u]] = "future"
                self.expiry[self.fut_names[u]] = expiry

    def _rebuild_rows(self) -> None:
        self.row_names = [name for names in self.slot_names for name in names]
        self.row_index = {name: i for i, name in enumerate(self.row_names)}
        self.r_u = np.array([u for us in self.slot_u for u in us], dtype=np.int64)
        self.r_k = np.array([k for ks in self.slot_k for k in ks], dtype=np.float64)
        self.r_call = np.array([c for cs in self.slot_call for c in cs], dtype=bool)
        self.r_inv = np.asarray(self.inverse, dtype=bool)[self.r_u]
        self.r_slot = np.array(
            [s for s, names in enumerate(self.slot_names) for _ in names], dtype=np.int64
        )
        self.r_exp = np.asarray(self.slot_expiry, dtype=np.int64)[self.r_slot]

    def _emit_prices(self, t: int, k: int, fresh: set[int], out: list[Event]) -> None:
        spot = np.exp(self.log_s)
        perp = spot * (1.0 + self.basis)
        t_fut = (self.slot_expiry[-1] - t) / MS_PER_YEAR
        fut = spot * np.exp(self.carry * t_fut)
        marks = self.marks
        for names, prices in (
            (self.m.names, spot),
            (self.spot_names, spot),
            (self.perp_names, perp),
            (self.fut_names, fut),
        ):
            for name, p in zip(names, prices.tolist(), strict=True):
                out.append(PriceEvent(ts=t, instrument=name, price=p))
                marks[name] = p

        # the whole chain, priced every step (vectorised); one slot in rotation is emitted
        u = self.r_u
        base = self.m.base_vol[u]
        t_years = (self.r_exp - t) / MS_PER_YEAR
        fwd = spot[u] * np.exp(self.carry[u] * t_years)
        lagged = self.iv_lag[u]
        atm = _VRP * (base + (lagged - base) / (1.0 + t_years / _TERM_REF_YEARS))
        atm = atm * np.exp(self.iv_noise[u])
        z = np.log(self.r_k / fwd) / (base * np.sqrt(np.maximum(t_years, _SMILE_MIN_T)))
        iv = atm * np.minimum(1.0 + _SMILE_SKEW * z + _SMILE_CURVATURE * z * z, _SMILE_CAP)
        usd = np.maximum(
            black76_price(fwd, self.r_k, t_years, iv, self.r_call), MIN_OPTION_PRICE_FRACTION * fwd
        )
        price = np.where(self.r_inv, usd / fwd, usd)
        value = np.where(self.r_inv, price * fwd, price)
        self.r_f, self.r_iv, self.r_atm, self.r_t = fwd, iv, atm, t_years

        if k == 0:
            rows = np.arange(len(self.row_names))
        else:
            emit = self.r_slot == k % len(_TENORS_MS)
            for s in fresh:
                emit |= self.r_slot == s
            rows = np.flatnonzero(emit)
        names_all = self.row_names
        fwds = self.fwd
        for j, p, v, f, val in zip(
            rows.tolist(),
            price[rows].tolist(),
            iv[rows].tolist(),
            fwd[rows].tolist(),
            value[rows].tolist(),
            strict=True,
        ):
            name = names_all[j]
            out.append(PriceEvent(ts=t, instrument=name, price=p, iv=v, underlying_price=f))
            marks[name] = val
            fwds[name] = f

    # --- book -----------------------------------------------------------------------------

    def _lot(self, u: int, q: float) -> float:
        return round(q, self.decimals[u]) + 0.0

    def _set(self, acct: _Account, name: str, qty: float, t: int, out: list[Event]) -> None:
        old = acct.positions.get(name, 0.0)
        qty = qty + 0.0
        if qty == old:
            return
        acct.cash -= (qty - old) * self.marks[name]
        if qty == 0.0:
            del acct.positions[name]
        else:
            acct.positions[name] = qty
        out.append(PositionEvent(ts=t, account=acct.name, instrument=name, quantity=qty))

    def valuation(self, acct: _Account) -> tuple[float, float]:
        """Equity and maintenance margin (USD) at the last emitted marks."""
        equity = acct.cash
        mm = 0.0
        for name, q in acct.positions.items():
            v = self.marks[name]
            equity += q * v
            kind = self.kind[name]
            if kind == "option":
                if q < 0.0:
                    mm += -q * (_SHORT_OPTION_MM * self.fwd[name] + v)
            elif kind != "spot" and kind != "index":
                mm += abs(q) * v * _FUTURE_MM
        return equity, mm

    def _open_book(self, t: int, out: list[Event]) -> None:
        parity, hedged, _, basis = self.accounts
        spot = np.exp(self.log_s)
        cov = np.outer(self.m.base_vol, self.m.base_vol) * self.m.calm_corr
        weights = _risk_parity(cov) * _PARITY_GROSS * _CASH
        for u in range(self.n):
            name = self.spot_names[u] if u == 0 else self.perp_names[u]
            self._set(parity, name, self._lot(u, float(weights[u] / spot[u])), t, out)
        h = self.hedge_u
        self.hedge_spot = self._lot(h, _HEDGED_NOTIONAL / float(spot[h]))
        self._set(hedged, self.spot_names[h], self.hedge_spot, t, out)
        self._set(hedged, self.perp_names[h], -self.hedge_spot, t, out)
        self.hedge_next_ms = t + int(self.book_rng.integers(*_HEDGE_FULL_S)) * 1000
        b = self.basis_u
        self.basis_qty = self._lot(b, _BASIS_NOTIONAL * _CASH / float(spot[b]))
        self._set(basis, self.spot_names[b], self.basis_qty, t, out)

    def _close_expiring(self, t: int, out: list[Event]) -> None:
        """Nothing is held across an expiry: close at the last step before it."""
        horizon = t + self.m.tick_ms
        for acct in self.accounts:
            for name in [n for n in acct.positions if self.expiry.get(n, horizon + 1) <= horizon]:
                self._set(acct, name, 0.0, t, out)

    def _hedged(self, t: int, out: list[Event]) -> None:
        if t < self.hedge_next_ms:
            return
        if self.hedge_ratio == 1.0:
            self.hedge_ratio = round(float(self.book_rng.uniform(*_HEDGE_PARTIAL)), 2)
            wait = _HEDGE_PARTIAL_S
        else:
            self.hedge_ratio = 1.0
            wait = _HEDGE_FULL_S
        self.hedge_next_ms = t + int(self.book_rng.integers(*wait)) * 1000
        h = self.hedge_u
        qty = self._lot(h, -self.hedge_ratio * self.hedge_spot)
        self._set(self.accounts[1], self.perp_names[h], qty, t, out)

    def _basis(self, t: int, out: list[Event]) -> None:
        b = self.basis_u
        fut = self.fut_names[b]
        acct = self.accounts[3]
        if fut not in acct.positions and self.expiry[fut] > t + self.m.tick_ms:
            self._set(acct, fut, -self.basis_qty, t, out)

    def _pick_strangle(self, u: int, t: int, size: float) -> _Strangle | None:
        live = [
            (abs(e - t - _OPT_TENOR_MS), s)
            for s, e in enumerate(self.slot_expiry)
            if e - t > _OPT_MIN_OPEN_MS
        ]
        if not live:
            return None
        slot = min(live)[1]
        rows = np.flatnonzero((self.r_slot == slot) & (self.r_u == u))
        fwd = float(self.r_f[rows[0]])
        sd = float(self.r_atm[rows[0]]) * math.sqrt(float(self.r_t[rows[0]]))
        log_k = np.log(self.r_k[rows] / fwd)
        calls = self.r_call[rows]
        call = rows[np.argmin(np.where(calls, np.abs(log_k - sd), np.inf))]
        put = rows[np.argmin(np.where(~calls, np.abs(log_k + sd), np.inf))]
        return _Strangle(
            self.row_names[int(call)], self.row_names[int(put)], self.slot_expiry[slot], size
        )

    def _delta(self, name: str) -> float:
        j = self.row_index[name]
        f, k, vol, ty = (
            float(self.r_f[j]),
            float(self.r_k[j]),
            float(self.r_iv[j]),
            float(self.r_t[j]),
        )
        sd = vol * math.sqrt(ty)
        n_d1 = _ndtr((math.log(f / k) + 0.5 * sd * sd) / sd)
        return n_d1 if self.r_call[j] else n_d1 - 1.0

    def _options(self, t: int, out: list[Event]) -> None:
        acct = self.accounts[2]
        equity, mm = self.valuation(acct)
        util = mm / equity if equity > 0.0 else math.inf
        for u in self.opt_us:
            fwd = float(np.exp(self.log_s[u]))
            target = self._lot(u, max(equity, 0.0) * _OPT_NOTIONAL / len(self.opt_us) / fwd)
            old = self.strangles.get(u)
            size = target if old is None else old.size
            if util > _OPT_DELEVER_UTIL:
                size = self._lot(u, size / 2.0)
            elif util < _OPT_RELEVER_UTIL and size < 0.9 * target:
                size = target
            new = old
            if old is None or old.expiry_ms - t < _OPT_ROLL_MS:
                new = self._pick_strangle(u, t, size)
            if new is None:
                continue
            new.size = size
            if old is not None and old is not new:
                self._set(acct, old.call, 0.0, t, out)
                self._set(acct, old.put, 0.0, t, out)
            self._set(acct, new.call, -size, t, out)
            self._set(acct, new.put, -size, t, out)
            self.strangles[u] = new
            perp = self.perp_names[u]
            held = acct.positions.get(perp, 0.0)
            net = held - size * (self._delta(new.call) + self._delta(new.put))
            if abs(net) > _OPT_HEDGE_BAND * size or (new is not old and net != 0.0):
                self._set(acct, perp, self._lot(u, held - net), t, out)

    # --- steps ----------------------------------------------------------------------------

    def steps(self) -> Iterator[tuple[int, list[Event]]]:
        """Yield ``(ts, events)`` per step, forever."""
        tick = self.m.tick_ms
        k = 0
        while True:
            t = self.t0 + k * tick
            out: list[Event] = []
            if k > 0:
                self._advance(t - tick)
            fresh = {s for s, e in enumerate(self.slot_expiry) if e <= t}
            for s in sorted(fresh):
                self._list_slot(s, t, out)
            if fresh:
                self._rebuild_rows()
            self._emit_prices(t, k, fresh, out)
            if k == 0:
                self._open_book(t, out)
            self._close_expiring(t, out)
            self._basis(t, out)
            if k % self.account_every == 0:
                self._hedged(t, out)
                self._options(t, out)
                for acct in self.accounts:
                    equity, mm = self.valuation(acct)
                    out.append(
                        AccountEvent(
                            ts=t,
                            account=acct.name,
                            equity=equity,
                            initial_margin=_IM_OVER_MM * mm,
                            maintenance_margin=mm,
                        )
                    )
            yield t, out
            k += 1


# --- the connector ------------------------------------------------------------------------

_YIELD_EVERY: Final = 256


class SimulatedMarket:
    """The embedded demo market (implements :class:`connectors.base.Connector`).

    Parameters
    ----------
    seed, tick_interval_ms, underlyings, start_ms
        All the event stream depends on. ``start_ms=None``: ``events()`` starts at
        :data:`DEFAULT_START_MS`; a realtime ``run()`` starts at the clock's now rounded down
        to the tick.
    realtime
        ``run()`` paces steps on the wall clock; False: as fast as the sink takes them.
    history_ms
        A realtime ``run()`` without ``start_ms`` starts this long before now and delivers
        the past as fast as the sink takes it, then paces (the demo's estimator is warm
        from its first seconds); 0: starts now.
    duration_ms
        ``run()`` stops after the steps with ``ts < start + duration_ms``
        (``ceil(duration_ms / tick_interval_ms)`` steps); None: runs until cancelled.
    clock
        Wall clock, epoch seconds (start time, pacing and ``status``).
    """

    def __init__(
        self,
        *,
        name: str = "simulated",
        seed: int = 7,
        tick_interval_ms: int = 200,
        underlyings: Sequence[str] = ("BTC", "ETH", "SOL"),
        start_ms: int | None = None,
        realtime: bool = True,
        duration_ms: int | None = None,
        clock: Callable[[], float] = time.time,
        history_ms: int = 0,
    ) -> None:
        names = tuple(underlyings)
        if not names:
            raise ValueError("underlyings: expected at least one")
        for u in names:
            if not _NAME_RE.match(u):
                raise ValueError(f"underlying {u!r}: expected 1-20 of A-Z, 0-9")
        if len(set(names)) != len(names):
            raise ValueError("underlyings: duplicate name")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if tick_interval_ms <= 0:
            raise ValueError("tick_interval_ms must be positive")
        if duration_ms is not None and duration_ms < 0:
            raise ValueError("duration_ms must not be negative")
        profiles = [_PROFILES.get(u, _DEFAULT_PROFILE) for u in names]
        self._model = _Model(
            seed=seed,
            tick_ms=int(tick_interval_ms),
            names=names,
            start_price=np.array([p for p, _ in profiles]),
            base_vol=np.array([v for _, v in profiles]),
            calm_corr=_calm_correlation(names),
        )
        self._name = name
        self._start_ms = start_ms
        self._realtime = realtime
        if history_ms < 0:
            raise ValueError("history_ms must not be negative")
        self._history_ms = history_ms
        self._duration_ms = duration_ms
        self._clock = clock
        # Its own lag: only live ticks (a realtime run's history is hours old on purpose).
        self._status = ConnectorStatus(name=name, kind="simulated", price_lag=LagHistogram())

    @property
    def status(self) -> ConnectorStatus:
        return self._status

    @property
    def underlyings(self) -> tuple[str, ...]:
        return self._model.names

    @property
    def base_vols(self) -> FloatArray:
        """Calm-regime annualised (365-day) vols of the index log returns, shape ``(n,)``."""
        return self._model.base_vol.copy()

    @property
    def base_correlation(self) -> FloatArray:
        """Calm-regime correlation of the index log returns, shape ``(n, n)``."""
        return self._model.calm_corr.copy()

    def regime_schedule(self, duration_ms: int) -> list[RegimeSpan]:
        """The regime spans covering ``[0, duration_ms)`` ms after the start."""
        sched = _Schedule(
            np.random.SeedSequence(self._model.seed).spawn(3)[0], len(self.underlyings)
        )
        sched.at(max(duration_ms - 1, 0))
        return [s for s in sched.spans if s.start_ms < max(duration_ms, 1)]

    def events(self) -> Iterator[Event]:
        """The deterministic event stream (endless; no I/O, no clock)."""
        start = DEFAULT_START_MS if self._start_ms is None else self._start_ms
        for _, events in _Sim(self._model, start).steps():
            yield from events

    async def run(self, sink: EventSink) -> None:
        """Deliver the stream to ``sink``; see the class docstring for pacing and stopping."""
        tick = self._model.tick_ms
        if self._start_ms is not None:
            start = self._start_ms
            anchor_s = self._clock()
        elif self._realtime:
            start = (int(self._clock() * 1000.0) - self._history_ms) // tick * tick
            anchor_s = start / 1000.0  # the history's steps are late: no wait
        else:
            start = DEFAULT_START_MS
            anchor_s = self._clock()
        end = None if self._duration_ms is None else start + self._duration_ms
        status = self._status
        lag = status.price_lag
        assert lag is not None
        status.connected = True
        since_yield = 0
        # Live from now on: the history before it is late on purpose (and a run that is not
        # realtime has no lag to speak of).
        live_from_ms = self._clock() * 1000.0 if self._realtime else math.inf
        try:
            for ts, events in _Sim(self._model, start).steps():
                if end is not None and ts >= end:
                    break
                if self._realtime:
                    delay = anchor_s + (ts - start) / 1000.0 - self._clock()
                    await asyncio.sleep(max(delay, 0.0))
                    since_yield = 0
                live = ts >= live_from_ms
                for ev in events:
                    if live and type(ev) is PriceEvent:
                        lag.observe(self._clock() - ev.ts / 1000.0)
                    await sink.put(ev, self._name)
                since_yield += len(events)
                status.messages += len(events)
                status.delivered = True
                status.last_message_s = self._clock()
                if since_yield >= _YIELD_EVERY:
                    await asyncio.sleep(0)
                    since_yield = 0
        finally:
            status.connected = False
