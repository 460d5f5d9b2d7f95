"""The built-in rule pack: what riskmon alerts on out of the box (pure: no I/O, no clock).

Every rule reads one figure per subject from a :class:`RuleInput` (the snapshot, plus the
connectors' health when live) and is run by :class:`monitor.rules.machine.RuleEngine`. Thresholds,
``for``, ``cooldown`` and the rule-specific keys come from ``[[rules]]`` in the config
(defaults: :mod:`monitor.rules.config`, documented in ``deploy/riskmon.example.toml``).

=========================  =================  ==========================================
rule                       subject            figure (unit)
=========================  =================  ==========================================
risk_drift                 account, und.      ``|share - budget|`` of the account's risk
concentration              account            ``half_l1`` or ``max_abs_drift`` (fraction)
margin_utilization         account            maintenance margin / equity
distance_to_call           account            smaller of the down/up move to the call
distance_to_call_sigmas    account            the distance to the call in 1-day sigmas
scenario_margin            account            scenario margin / equity
vol_break                  underlying         fast/slow vol ratio / its slow baseline
vol_vs_implied             underlying         slow realised vol / marked ATM IV
correlation_spike          book               average correlation - its baseline
absorption_spike           book               absorption ratio - its baseline
net_delta_limit            account            ``|net delta_usd|`` / ``limits.<a>.delta_usd``
net_vega_limit             account            ``|net vega|`` / ``limits.<a>.vega``
hedge_offset               account, und.      hedged share ``1 - |sum d| / sum |d|``
stale_data                 account, und.      age of the oldest price a position uses, s
connector_down             connector          1 while disconnected, else 0
venue_delta_mismatch       account            ``|greeks_vs_venue.delta_usd|``, USD
venue_vega_mismatch        account            ``|greeks_vs_venue.vega|``, USD per vol pt
model_margin_divergence    account            ``max(r, 1/r) - 1``, r = model MM / venue MM
                                              (the accounts listed in ``accounts`` only)
var_backtest               account            Basel zone of the VaR backtest: 0 green,
                                              1 yellow, 2 red (none before a zone exists)
stressed_var_ratio         account            stressed VaR / delta-normal VaR (NaN until
                                              the underlyings held are warm)
=========================  =================  ==========================================

Conventions (see :mod:`monitor.rules.machine` for the state machine):

- A figure that *does not apply* yields no reading, so an alert on it resolves: an account
  without venue margin, no ``distance_to_call`` (or one that is not ``reachable``: no move
  within the searched range calls the account), an account without a limit, an
  underlying the book no longer holds. Margin figures of riskmon's own model (``scenario_margin``,
  ``worst_scenario``, ``distance_to_call``) are read defensively: absent or ``None`` means
  the rule does not evaluate that account.
- A figure *unknown for now* yields NaN, which holds the alert: risk and regime figures
  until every underlying involved is warm (``estimator.warmup``), a NaN from the risk core.
- ``+inf`` is a value: an account with equity <= 0 and a positive maintenance margin (or
  scenario margin) reads as infinite utilisation. Such an
  :class:`~monitor.model.alert.Alert` carries ``value = inf`` (msgspec encodes it as
  ``null``); its summary says what happened.
- Summaries say what to do: ``risk_drift`` ends with the attribution of its underlying's
  share change (``attribution.underlyings``), ``concentration`` with the account's
  (``attribution.summary``), both with the rebalance's trades
  (``suggestions.rebalance``), ``net_delta_limit`` and ``hedge_offset`` with the hedge's
  trades and the gamma and vega it leaves (``suggestions.hedge``), when the report has them.
- ``connector_down`` alerts carry the connector's name as ``account`` (and in the
  ``connector`` label): the alert identity is ``(rule, account, underlying)``.

hedge_offset
    Per account and underlying, over the positions on that underlying with a known
    ``delta_usd``: gross ``G = sum |delta_usd|``, net ``N = sum delta_usd``, hedged share
    ``h = 1 - |N| / G`` (1: fully offset, 0: every position points the same way). A
    subject is *watched* from the first evaluation where ``h >= clear`` while
    ``G >= min_gross_usd`` (the account holds a hedge), and stops being watched (its alert
    resolves) when ``G < min_gross_usd`` (the exposure is gone, not the hedge). So an
    account that is long by design (``h = 0`` from the start) is never alerted, while a
    hedge that is cut or closed while the exposure stays (``h`` falls below ``warning``)
    is. The watch list is the rule's only state; it is a function of the inputs seen.

stale_data
    Per account and underlying: ``(as_of - price_ts) / 1000`` for every held instrument on
    that underlying and for the underlying's index price, the largest of them. A price
    never received is counted from when the position was opened (``opened_ms``; for the
    index, the earliest position on the underlying), so positions that arrive a moment
    before their first prices are not stale, and one whose price never comes is, after
    the threshold.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Generic, TypeVar, overload

import numpy as np
import numpy.typing as npt

from monitor.model.health import ConnectorStatus
from monitor.model.settings import Duration
from monitor.model.snapshot import AccountFigures, AccountRisk, PositionTable, RiskSnapshot
from monitor.quant.regime import ABSORPTION_FRACTION
from monitor.rules.config import (
    DEFAULT_RULES,
    AbsorptionSpikeRule,
    AccountLimits,
    ConcentrationRule,
    ConnectorDownRule,
    CorrelationSpikeRule,
    DistanceToCallRule,
    DistanceToCallSigmasRule,
    HedgeOffsetRule,
    MarginUtilizationRule,
    ModelMarginDivergenceRule,
    NetDeltaLimitRule,
    NetVegaLimitRule,
    RiskDriftRule,
    RuleConfig,
    ScenarioMarginRule,
    StaleDataRule,
    StressedVarRatioRule,
    VarBacktestRule,
    VenueDeltaMismatchRule,
    VenueVegaMismatchRule,
    VolBreakRule,
    VolVsImpliedRule,
)
from monitor.rules.machine import Reading, Readings, Rule, RuleEngine, RuleSpec

__all__ = ["RuleInput", "build_rules", "rule_engine"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
NAN: Final = math.nan
INF: Final = math.inf


# --- input -------------------------------------------------------------------------------


_T = TypeVar("_T")


class _once(Generic[_T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes one at every
    first read: a few of those per evaluation). A :class:`RuleInput` is read by the
    engine's evaluation; a summary built later on another thread at worst computes the
    same value twice."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _once[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _once[_T]:
        if obj is None:
            return self
        value: _T = self.fn(obj)
        obj.__dict__[self.name] = value  # read from there from now on
        return value


@dataclass(frozen=True)
class RuleInput:
    """What the built-in rules read at one evaluation.

    Attributes
    ----------
    snapshot
        The evaluation's snapshot; its ``as_of_ms`` is the time the rules run at.
    connectors
        The connectors' live health (the daemon's); empty in a replay, where
        ``connector_down`` then has nothing to read.
    """

    snapshot: RiskSnapshot
    connectors: Sequence[ConnectorStatus] = ()

    @_once
    def asset_index(self) -> dict[str, int]:
        """Underlying name -> index in ``snapshot.assets``."""
        return {name: i for i, name in enumerate(self.snapshot.assets.names)}

    @_once
    def warm(self) -> dict[str, bool]:
        a = self.snapshot.assets
        return dict(zip(a.names, a.warm.tolist(), strict=True))

    @_once
    def _groups(self) -> dict[str, _Groups]:
        return {}

    def groups(self, account: str, table: PositionTable) -> _Groups:
        """An account's positions grouped by underlying (computed once per input)."""
        g = self._groups.get(account)
        if g is None:
            g = self._groups[account] = _Groups.of(table)
        return g

    @_once
    def held(self) -> set[str]:
        """The underlyings the book holds."""
        return set(self.snapshot.total.exposure_usd)

    @_once
    def _shown(self) -> dict[str, _Shown]:
        return {}

    def shown(self, account: str, risk: AccountRisk) -> _Shown:
        """The underlyings an account's risk shows (computed once per input)."""
        got = self._shown.get(account)
        if got is None or got.risk is not risk:
            index = np.flatnonzero(risk.shown)
            at = index.tolist()
            names = [risk.underlyings[i] for i in at]
            warm = self.warm
            got = self._shown[account] = _Shown(
                risk, index, at, names, all(warm.get(n, False) for n in names)
            )
        return got


@dataclass(frozen=True, slots=True)
class _Shown:
    """The underlyings ``risk`` shows: their indices (array and list), names, and whether
    every one of them is warm (its estimates mean something)."""

    risk: AccountRisk
    index: IntArray
    at: list[int]
    names: list[str]
    warm: bool


@dataclass(frozen=True, slots=True)
class _Groups:
    """Positions of one account by underlying: ``names[codes[i]]`` is position i's;
    ``order`` lists the positions group by group (each group's in table order), group k's
    from ``starts[k]`` on (no group is empty)."""

    names: tuple[str, ...]
    codes: IntArray
    order: IntArray
    starts: IntArray

    @staticmethod
    def of(table: PositionTable) -> _Groups:
        return _groups_of(table.underlying)

    def sums(self, x: FloatArray) -> FloatArray:
        out = np.bincount(self.codes, weights=x, minlength=len(self.names))
        return out.astype(np.float64, copy=False)

    def minima(self, x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Each group's smallest element of ``x`` (one per position)."""
        out: npt.NDArray[np.int64] = np.minimum.reduceat(x[self.order], self.starts)
        return out


@functools.lru_cache(maxsize=1_024)
def _groups_of(underlying: tuple[str, ...]) -> _Groups:
    """Grouping by underlying, memoised on the column's content: a book that did not
    change groups the same way at every evaluation (a hash over the names, not a loop)."""
    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(u, len(index)) for u in underlying),
        dtype=np.int64,
        count=len(underlying),
    )
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(len(index)))
    for a in (codes, order, starts):
        a.flags.writeable = False
    return _Groups(tuple(index), codes, order, starts)


# --- formatting --------------------------------------------------------------------------


def _pct(x: float) -> str:
    if math.isinf(x):
        return "∞%" if x > 0 else "-∞%"
    v = 100.0 * x
    text = f"{v:.0f}" if abs(v) >= 10 else f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _pts(x: float) -> str:
    return f"{100.0 * x:.0f}"


def _usd(x: float, sign: bool = False) -> str:
    return f"{x:+,.0f} USD" if sign else f"{x:,.0f} USD"


def _times(x: float) -> str:
    return f"{x:.2f}x"


def _level_times(x: float) -> str:
    return f"{x:g}x"


def _plain(x: float) -> str:
    return f"{x:g}"


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _signed_level(x: float) -> str:
    return f"{x:+g}"


def _secs(x: float) -> str:
    if math.isinf(x):
        return "never"
    if x < 120:
        return f"{x:.0f} s"
    if x < 7200:
        return f"{x / 60:.0f} min"
    return f"{x / 3600:.1f} h"


def _levels(spec: RuleSpec, fmt: Callable[[float], str]) -> str:
    parts = []
    if spec.warning is not None:
        parts.append(f"warning {fmt(spec.warning)}")
    if spec.critical is not None:
        parts.append(f"critical {fmt(spec.critical)}")
    return ", ".join(parts)


def _number(x: Any) -> float | None:
    """A figure read from a report dict: a float (NaN kept), or None if absent/not a number."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def _smallest(x: Any) -> tuple[float, str] | None:
    """The smallest finite number in ``x`` (a number or ``{down, up}``), with its side."""
    if isinstance(x, Mapping):
        found = [(v, side) for side in ("down", "up") if (v := _number(x.get(side))) is not None]
        found = [(v, side) for v, side in found if math.isfinite(v)]
        return min(found) if found else None
    v = _number(x)
    return (v, "") if v is not None and math.isfinite(v) else None


def _margin(fig: AccountFigures) -> Mapping[str, Any] | None:
    m = fig.extra.get("margin")
    return m if isinstance(m, Mapping) else None


def _spec(cfg: RuleConfig) -> RuleSpec:
    return RuleSpec(
        name=cfg.rule,
        direction=cfg.direction,
        warning=cfg.warning_level,
        critical=cfg.critical_level,
        clear=cfg.clear,
        for_ms=int(cfg.for_),
        cooldown_ms=int(cfg.cooldown),
    )


def _strongest_correlation(inp: RuleInput, name: str, others: Sequence[str]) -> str:
    """``"; BTC/ETH correlation 0.93"``: ``name``'s strongest correlation among ``others``."""
    idx = inp.asset_index
    i = idx.get(name)
    if i is None:
        return ""
    row = inp.snapshot.assets.correlation[i]
    pairs = [(j, other) for other in others if (j := idx.get(other)) is not None and j != i]
    if not pairs:
        return ""
    rho = row[[j for j, _ in pairs]]
    strength = np.where(np.isfinite(rho), np.abs(rho), -1.0)
    k = int(np.argmax(strength))  # the first of the strongest, in ``others`` order
    if strength[k] < 0.0:
        return ""
    return f"; {name}/{pairs[k][1]} correlation {float(rho[k]):.2f}"


# --- risk parity -------------------------------------------------------------------------


def _trades_text(per: Mapping[str, Any], only: str | None = None) -> str:
    """``"sell 50,000 BTC-PERPETUAL, buy 111.1 ETH_USDC-PERPETUAL"`` from a suggestion's
    ``underlyings`` (contracts not rounded; none for an underlying without an instrument).

    Memoised on the suggestion's identity: every drift alert of an account quotes the same
    rebalance, and a suggestion is reused until its account's sections are recomputed."""
    key = (id(per), only)
    hit = _TRADES_MEMO.get(key)
    if hit is not None and hit[0] is per:
        return hit[1]
    text = _format_trades(per, only)
    if len(_TRADES_MEMO) >= 1_024:
        _TRADES_MEMO.clear()
    _TRADES_MEMO[key] = (per, text)
    return text


#: ``_trades_text``'s results: (id of the suggestion, only) -> (the suggestion, text). The
#: suggestion is held so that its id is not reused while the entry lives.
_TRADES_MEMO: dict[tuple[int, str | None], tuple[Mapping[str, Any], str]] = {}


def _format_trades(per: Mapping[str, Any], only: str | None) -> str:
    parts = []
    for und, row in per.items():
        n, inst = row.get("contracts"), row.get("instrument")
        if (only is not None and und != only) or not n or inst is None:
            continue
        parts.append(f"{'buy' if n > 0 else 'sell'} {_qty(abs(n))} {inst}")
    return ", ".join(parts)


def _qty(n: float) -> str:
    return f"{n:,.0f}" if n >= 100 else f"{n:,.4g}"


def _why_and_what(fig: AccountFigures, underlying: str | None = None) -> str:
    """Why the shares moved and the rebalance's trades, for drift alerts: the account's
    attribution summary, or for one ``underlying`` the parts of its own share change."""
    out = ""
    att = fig.extra.get("attribution")
    if att and underlying is None:
        out += f"; {att['summary']}"
    elif att and (row := att["underlyings"].get(underlying)):
        parts = [(k, row[key]) for k, key in _PARTS if row[key] is not None]
        if len(parts) == len(_PARTS):
            parts.sort(key=lambda kv: -abs(kv[1]))
            body = ", ".join(f"{round(100.0 * v):+d} pts {k}" for k, v in parts)
            out += f"; since {att['since']}: {body}"
    sug = (fig.extra.get("suggestions") or {}).get("rebalance")
    if sug and (trades := _trades_text(sug["underlyings"])):
        out += f"; rebalance: {trades}"
    return out


_PARTS: Final = (("vol", "volatility"), ("correlation", "correlation"), ("positions", "positions"))


def _hedge_text(fig: AccountFigures, underlying: str | None) -> str:
    """The hedge suggestion's trades (one underlying's, or all) and what it leaves."""
    sug = (fig.extra.get("suggestions") or {}).get("hedge")
    if not sug:
        return ""
    trades = _trades_text(sug["underlyings"], underlying)
    if not trades:
        return ""
    rows = [r for u, r in sug["underlyings"].items() if underlying in (None, u)]
    gamma = sum(r["residual_gamma_usd"] or 0.0 for r in rows)
    vega = sum(r["residual_vega_usd"] or 0.0 for r in rows)
    return (
        f"; hedge to {_usd(sug['net_target_usd'], sign=True)}: {trades} (leaves gamma "
        f"{_usd(gamma, sign=True)} per 1%, vega {_usd(vega, sign=True)} per vol pt)"
        if underlying is None
        else f"; hedge: {trades} (leaves gamma {_usd(gamma, sign=True)} per 1%, vega "
        f"{_usd(vega, sign=True)} per vol pt)"
    )


def _material(risk: AccountRisk, min_volatility_usd: float) -> bool:
    """Whether an account carries enough risk for its risk shares to mean anything.

    A delta-hedged book has a tiny sigma_p and shares that swing through +-100% with every
    tick; drift from a risk-parity budget is then noise, not a finding. A volatility not
    known yet (NaN) counts as material: the rule's own NaN handling holds the alert.
    """
    sigma = risk.contributions.sigma_usd
    return not sigma < min_volatility_usd


def _risk_drift(cfg: RiskDriftRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, lambda x: f"{_pts(x)} pts")

    def text(inp: RuleInput, account: str, fig: AccountFigures, i: int, shown: list[str]) -> str:
        assert fig.risk is not None
        c, name = fig.risk.contributions, fig.risk.underlyings[i]
        share, budget = float(c.share[i]), float(c.budget[i])
        hedge = " (a hedge)" if share < 0 else ""
        out = (
            f"{account}: {name} is {_pct(share)} of risk{hedge} vs a {_pct(budget)} budget "
            f"(drift {100.0 * float(c.drift[i]):+.0f} pts; {levels})"
        )
        j = inp.asset_index.get(name)
        if j is not None and math.isfinite(vol := float(inp.snapshot.assets.volatility[j])):
            out += f"; {name} vol {_pct(vol)}"
        return out + _strongest_correlation(inp, name, shown) + _why_and_what(fig, name)

    def text_of(
        inp: RuleInput,
        account: str,
        fig: AccountFigures,
        shown: list[int],
        names: list[str],
        k: int,
    ) -> str:
        return text(inp, account, fig, shown[k], names)

    def read(inp: RuleInput) -> Iterator[Readings]:
        for account, fig in inp.snapshot.accounts.items():
            risk = fig.risk
            if risk is None or not _material(risk, cfg.min_volatility_usd):
                continue
            shown = inp.shown(account, risk)
            names = shown.names
            values = (
                np.abs(risk.contributions.drift[shown.index])
                if shown.warm
                else np.full(len(names), NAN)
            )
            describe = partial(text_of, inp, account, fig, shown.at, names)
            yield Readings(account, names, values, describe)

    return Rule(spec, read, steady=True)


def _concentration(cfg: ConcentrationRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    measure = cfg.measure
    what = (
        "of its risk sits away from its budget (half L1"
        if measure == "half_l1"
        else "is its largest drift of risk share from budget (max |drift|"
    )
    levels = _levels(spec, _pct)

    def text(inp: RuleInput, account: str, fig: AccountFigures, value: float) -> str:
        assert fig.risk is not None
        c = fig.risk.contributions
        out = f"{account}: {_pct(value)} {what}; {levels})"
        drift = np.where(fig.risk.shown & np.isfinite(c.drift), np.abs(c.drift), -1.0)
        if drift.size and drift.max() >= 0:
            i = int(np.argmax(drift))
            name = fig.risk.underlyings[i]
            out += (
                f"; largest: {name} {_pct(float(c.share[i]))} of risk vs a "
                f"{_pct(float(c.budget[i]))} budget"
            )
        return out + _why_and_what(fig)

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            risk = fig.risk
            if risk is None or not _material(risk, cfg.min_volatility_usd):
                continue
            c = risk.contributions
            value = float(c.half_l1 if measure == "half_l1" else c.max_abs_drift)
            if not inp.shown(account, risk).warm:
                value = NAN
            yield Reading(account, None, value, partial(text, inp, account, fig, value))

    return Rule(spec, read, steady=True)


# --- margin ------------------------------------------------------------------------------


def _margin_utilization(cfg: MarginUtilizationRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)

    def text(account: str, m: Mapping[str, Any], value: float) -> str:
        equity, mm = _number(m.get("equity")), _number(m.get("maintenance_margin"))
        if math.isinf(value) and equity is not None and mm is not None:
            return (
                f"{account}: equity {_usd(equity)} is not positive with maintenance margin "
                f"{_usd(mm)}: at or past the margin call ({levels})"
            )
        out = f"{account}: margin utilisation {_pct(value)} ({levels})"
        headroom = _number(m.get("headroom_usd"))
        if headroom is not None and math.isfinite(headroom):
            out += f"; headroom {_usd(headroom)}"
            if equity is not None and math.isfinite(equity):
                out += f" of {_usd(equity)} equity"
        age = _number(m.get("age_seconds"))
        if age is not None and age > 60:
            out += f"; venue figures {_secs(age)} old"
        return out

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            m = _margin(fig)
            if m is None:
                continue
            value = _number(m.get("utilization"))
            if value is None:
                equity, mm = _number(m.get("equity")), _number(m.get("maintenance_margin"))
                if equity is None or mm is None or not (equity <= 0 < mm):
                    continue
                value = INF
            yield Reading(account, None, value, partial(text, account, m, value))

    return Rule(spec, read)


def _distance(m: Mapping[str, Any]) -> Mapping[str, Any] | None:
    d = m.get("distance_to_call")
    if not isinstance(d, Mapping) or d.get("reachable") is False:
        return None
    return d


def _move_text(d: Mapping[str, Any]) -> str:
    found = _smallest({"down": d.get("down"), "up": d.get("up")})
    if found is None:
        return ""
    value, side = found
    return f"a {_pct(value)} {'fall' if side == 'down' else 'rise'} of its underlyings"


def _distance_to_call(cfg: DistanceToCallRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)

    def text(account: str, m: Mapping[str, Any], d: Mapping[str, Any]) -> str:
        out = f"{account}: {_move_text(d)} reaches the margin call ({levels})"
        sig = _smallest(d.get("sigmas"))
        if sig is not None:
            out += f"; {sig[0]:.1f} daily sigmas"
        headroom = _number(m.get("headroom_usd"))
        if headroom is not None and math.isfinite(headroom):
            out += f"; headroom {_usd(headroom)}"
        return out

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            m = _margin(fig)
            d = None if m is None else _distance(m)
            if m is None or d is None:
                continue
            found = _smallest({"down": d.get("down"), "up": d.get("up")})
            if found is not None:
                yield Reading(account, None, found[0], partial(text, account, m, d))

    return Rule(spec, read, steady=True)


def _distance_to_call_sigmas(cfg: DistanceToCallSigmasRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _plain)

    def text(account: str, d: Mapping[str, Any], value: float) -> str:
        out = f"{account}: the margin call is {value:.1f} daily sigmas away ({levels})"
        move = _move_text(d)
        return f"{out}: {move}" if move else out

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            m = _margin(fig)
            d = None if m is None else _distance(m)
            found = None if d is None else _smallest(d.get("sigmas"))
            if d is not None and found is not None:
                yield Reading(account, None, found[0], partial(text, account, d, found[0]))

    return Rule(spec, read, steady=True)


def _scenario_margin(cfg: ScenarioMarginRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)

    def text(account: str, m: Mapping[str, Any], sm: float, equity: float, value: float) -> str:
        if math.isinf(value):
            out = (
                f"{account}: scenario margin {_usd(sm)} against equity {_usd(equity)} that is "
                f"not positive ({levels})"
            )
        else:
            out = (
                f"{account}: scenario margin {_usd(sm)} is {_pct(value)} of equity "
                f"{_usd(equity)} ({levels})"
            )
        worst = m.get("worst_scenario")
        return f"{out}; worst scenario: {worst}" if isinstance(worst, str) and worst else out

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            m = _margin(fig)
            if m is None:
                continue
            sm, equity = _number(m.get("scenario_margin")), _number(m.get("equity"))
            if sm is None or equity is None:
                continue
            if equity > 0:
                value = sm / equity
            elif sm > 0:
                value = INF
            else:
                continue
            yield Reading(account, None, value, partial(text, account, m, sm, equity, value))

    return Rule(spec, read, steady=True)


# --- regime ------------------------------------------------------------------------------


def _vol_break(cfg: VolBreakRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _level_times)

    def text(inp: RuleInput, name: str, i: int, value: float) -> str:
        reg, a = inp.snapshot.regime, inp.snapshot.assets
        assert reg is not None
        j = inp.asset_index[name]
        fast, slow = float(a.volatility_fast[j]), float(a.volatility[j])
        ratio, base = float(reg.current.vol_ratio[i]), float(reg.baseline.vol_ratio[i])
        return (
            f"{name}: fast volatility {_pct(fast)} vs slow {_pct(slow)} (ratio {ratio:.2f}, "
            f"{_times(value)} its {base:.2f} baseline; {levels})"
        )

    def read(inp: RuleInput) -> Iterator[Reading]:
        reg = inp.snapshot.regime
        if reg is None:
            return
        held = inp.held
        if not held:
            return
        cur, base = reg.current.vol_ratio.tolist(), reg.baseline.vol_ratio.tolist()
        for i, name in enumerate(reg.underlyings):
            if name not in held or name not in inp.asset_index:
                continue
            ok = inp.warm.get(name, False) and math.isfinite(cur[i]) and base[i] > 0
            value = cur[i] / base[i] if ok else NAN
            yield Reading(None, name, value, partial(text, inp, name, i, value))

    return Rule(spec, read, steady=True)


def _vol_vs_implied(cfg: VolVsImpliedRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _level_times)

    def text(inp: RuleInput, name: str, i: int, value: float) -> str:
        reg, a = inp.snapshot.regime, inp.snapshot.assets
        assert reg is not None
        vol = float(a.volatility[inp.asset_index[name]])
        base = float(reg.baseline.realised_to_implied[i])
        out = (
            f"{name}: realised volatility {_pct(vol)} is {_times(value)} the "
            f"{_pct(vol / value)} implied the options are marked at"
        )
        base_text = f"baseline {_times(base)}; " if math.isfinite(base) else ""
        return f"{out} ({base_text}{levels})"

    def read(inp: RuleInput) -> Iterator[Reading]:
        reg = inp.snapshot.regime
        if reg is None:
            return
        held = inp.held
        if not held:
            return
        ratio = reg.current.realised_to_implied.tolist()
        for i, name in enumerate(reg.underlyings):
            if name not in held or name not in inp.asset_index:
                continue
            if not inp.warm.get(name, False):
                value = NAN
            elif math.isfinite(ratio[i]) and ratio[i] > 0:
                value = ratio[i]
            else:
                continue  # no IV: the book holds no priced option on it
            yield Reading(None, name, value, partial(text, inp, name, i, value))

    return Rule(spec, read, steady=True)


def _used(inp: RuleInput) -> list[str]:
    reg = inp.snapshot.regime
    assert reg is not None
    return [n for n, u in zip(reg.underlyings, reg.current.assets_used.tolist(), strict=True) if u]


def _highest_pair(inp: RuleInput, names: Sequence[str]) -> str:
    corr, idx = inp.snapshot.assets.correlation, inp.asset_index
    best: tuple[float, str, str] | None = None
    for k, a in enumerate(names):
        for b in names[k + 1 :]:
            if a in idx and b in idx:
                rho = float(corr[idx[a], idx[b]])
                if math.isfinite(rho) and (best is None or rho > best[0]):
                    best = (rho, a, b)
    return "" if best is None else f"; highest {best[1]}/{best[2]} {best[0]:.2f}"


def _correlation_spike(cfg: CorrelationSpikeRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _signed_level)

    def text(inp: RuleInput, value: float) -> str:
        reg = inp.snapshot.regime
        assert reg is not None
        used = _used(inp)
        return (
            f"book: average correlation {reg.current.average_correlation:.2f} vs a "
            f"{reg.baseline.average_correlation:.2f} baseline ({_signed(value)}; {levels}) "
            f"over {', '.join(used)}{_highest_pair(inp, used)}"
        )

    def read(inp: RuleInput) -> Iterator[Reading]:
        reg = inp.snapshot.regime
        if reg is None:
            return
        value = float(reg.current.average_correlation - reg.baseline.average_correlation)
        yield Reading(None, None, value, partial(text, inp, value))

    return Rule(spec, read, steady=True)


def _absorption_spike(cfg: AbsorptionSpikeRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _signed_level)

    def text(inp: RuleInput, value: float) -> str:
        reg = inp.snapshot.regime
        assert reg is not None
        k = len(_used(inp))
        top = -(-k // ABSORPTION_FRACTION)
        cur = reg.current.absorption_ratio
        return (
            f"book: absorption ratio {cur:.2f} vs a {reg.baseline.absorption_ratio:.2f} "
            f"baseline ({_signed(value)}; {levels}): the top {top} of {k} factors carry "
            f"{_pct(cur)} of the variance; average correlation "
            f"{reg.current.average_correlation:.2f}"
        )

    def read(inp: RuleInput) -> Iterator[Reading]:
        reg = inp.snapshot.regime
        if reg is None:
            return
        value = float(reg.current.absorption_ratio - reg.baseline.absorption_ratio)
        yield Reading(None, None, value, partial(text, inp, value))

    return Rule(spec, read, steady=True)


# --- limits ------------------------------------------------------------------------------


def _net_delta_limit(
    cfg: NetDeltaLimitRule, limits: Mapping[str, AccountLimits]
) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)
    caps = {a: lim.delta_usd for a, lim in limits.items() if lim.delta_usd is not None}

    def text(account: str, fig: AccountFigures, limit: float, value: float) -> str:
        delta = fig.greeks.get("delta_usd", NAN)
        out = (
            f"{account}: net delta {_usd(delta, sign=True)} is {_pct(value)} of its "
            f"{_usd(limit)} limit ({levels})"
        )
        exposure = {u: x for u, x in fig.exposure_usd.items() if math.isfinite(x)}
        if exposure:
            name = max(sorted(exposure), key=lambda u: abs(exposure[u]))
            out += f"; largest: {name} {_usd(exposure[name], sign=True)}"
        return out + _hedge_text(fig, None)

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, limit in caps.items():
            fig = inp.snapshot.accounts.get(account)
            if fig is None or "delta_usd" not in fig.greeks:
                continue
            value = abs(float(fig.greeks["delta_usd"])) / limit
            yield Reading(account, None, value, partial(text, account, fig, limit, value))

    return Rule(spec, read, steady=True)


def _net_vega_limit(cfg: NetVegaLimitRule, limits: Mapping[str, AccountLimits]) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)
    caps = {a: lim.vega for a, lim in limits.items() if lim.vega is not None}

    def text(account: str, fig: AccountFigures, limit: float, value: float) -> str:
        vega = fig.greeks.get("vega", NAN)
        return (
            f"{account}: net vega {_usd(vega, sign=True)} per vol point is {_pct(value)} of "
            f"its {_usd(limit)} limit ({levels})"
        )

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, limit in caps.items():
            fig = inp.snapshot.accounts.get(account)
            if fig is None or "vega" not in fig.greeks:
                continue
            value = abs(float(fig.greeks["vega"])) / limit
            yield Reading(account, None, value, partial(text, account, fig, limit, value))

    return Rule(spec, read, steady=True)


# --- hedges and data ---------------------------------------------------------------------


def _hedge_offset(cfg: HedgeOffsetRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)
    floor, arm = cfg.min_gross_usd, cfg.clear
    watched: set[tuple[str, str]] = set()

    def text(inp: RuleInput, account: str, name: str, h: float, long: float, short: float) -> str:
        return (
            f"{account}: {name} hedge offsets {_pct(h)} of the gross delta ({levels}); net "
            f"{_usd(long + short, sign=True)} of {_usd(long - short)} gross: long "
            f"{_usd(long)}, short {_usd(short)}"
        ) + _hedge_text(inp.snapshot.accounts[account], name)

    def read(inp: RuleInput) -> Iterator[Reading]:
        seen: set[tuple[str, str]] = set()
        for account, fig in inp.snapshot.accounts.items():
            table = fig.positions
            if table is None or not table.instrument:
                continue
            g = inp.groups(account, table)
            d = np.where(np.isfinite(table.delta_usd), table.delta_usd, 0.0)
            longs = g.sums(np.maximum(d, 0.0)).tolist()
            shorts = g.sums(np.minimum(d, 0.0)).tolist()
            for k, name in enumerate(g.names):
                long, short = longs[k], shorts[k]
                gross = long - short
                if gross < floor or gross <= 0:
                    continue
                h = 1.0 - abs(long + short) / gross
                subject = (account, name)
                if subject not in watched and h < arm:
                    continue
                seen.add(subject)
                yield Reading(account, name, h, partial(text, inp, account, name, h, long, short))
        watched.clear()
        watched.update(seen)

    return Rule(spec, read, watched, steady=True)


@dataclass(frozen=True, slots=True)
class _StaleGroup:
    """What an underlying group's ``stale_data`` summary needs, as times (epoch ms): only
    ``as_of`` moves between evaluations while nothing new arrives, so the text is
    formatting, not a pass over the positions."""

    name: str
    index_since: int  # the index's last tick, or the group's first opening if it never ticked
    index_never: bool
    worst_since: int  # the oldest price a position uses (its opening if never priced)
    worst_instrument: str  # the first position in table order with that price time
    worst_never: bool
    since: list[int]  # every position's, ascending


def _age(as_of_ms: int, since_ms: int) -> float:
    return max(as_of_ms - since_ms, 0) / 1000.0


def _stale_groups(inp: RuleInput, account: str, table: PositionTable) -> list[_StaleGroup]:
    g = inp.groups(account, table)
    ts, opened = table.price_ts_ms, table.opened_ms
    row_since = np.where(ts > 0, ts, opened)
    # Rows by group, then by price time, then in table order (lexsort is stable): each
    # group's run starts with its stalest position, the first in table order among equals.
    order = np.lexsort((row_since, g.codes))
    bounds = np.searchsorted(g.codes[order], np.arange(len(g.names) + 1)).tolist()
    first_opened = np.full(len(g.names), np.iinfo(np.int64).max)
    np.minimum.at(first_opened, g.codes, opened)
    index_ts = inp.snapshot.assets.price_ts_ms
    sorted_since = row_since[order].tolist()
    out: list[_StaleGroup] = []
    for k, name in enumerate(g.names):
        lo, hi = bounds[k], bounds[k + 1]
        j = inp.asset_index.get(name)
        idx_ts = 0 if j is None else int(index_ts[j])
        r = int(order[lo])
        out.append(
            _StaleGroup(
                name,
                idx_ts if idx_ts > 0 else int(first_opened[k]),
                idx_ts <= 0,
                int(row_since[r]),
                table.instrument[r],
                int(ts[r]) <= 0,
                sorted_since[lo:hi],
            )
        )
    return out


class _StaleMemo:
    """One account's ``stale_data`` read: the table and index tick times it was made of,
    each group's ``since``, and the groups' summary facts, built when first asked for."""

    __slots__ = ("_build", "_groups", "account", "index_ts", "since", "table")

    def __init__(
        self,
        account: str,
        table: PositionTable,
        index_ts: npt.NDArray[np.int64],
        since: FloatArray,
        build: Callable[[], list[_StaleGroup]],
    ) -> None:
        self.account, self.table, self.index_ts, self.since = account, table, index_ts, since
        self._build = build
        self._groups: list[_StaleGroup] | None = None

    def groups(self) -> list[_StaleGroup]:
        if self._groups is None:
            self._groups = self._build()
        return self._groups


@dataclass(frozen=True, slots=True)
class _StaleRows:
    """What ``since`` takes from one account's table, per underlying group: the oldest
    price time a position uses (its opening when never priced) and the first opening.
    Kept while the groups and the table's times are the same: compared by content, as a
    new table comes with every evaluation while options tick far less often."""

    groups: _Groups
    ts: bytes
    opened: bytes
    oldest: list[int]
    first_opened: list[int]

    @staticmethod
    def of(g: _Groups, table: PositionTable, last: _StaleRows | None) -> _StaleRows:
        ts, opened = table.price_ts_ms.tobytes(), table.opened_ms.tobytes()
        if last is not None and last.groups is g and last.ts == ts and last.opened == opened:
            return last
        rows = np.where(table.price_ts_ms > 0, table.price_ts_ms, table.opened_ms)
        return _StaleRows(
            g, ts, opened, g.minima(rows).tolist(), g.minima(table.opened_ms).tolist()
        )


def _stale_data(cfg: StaleDataRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _secs)
    first = spec.warning if spec.warning is not None else spec.critical
    assert first is not None

    def text(as_of_ms: int, memo: _StaleMemo, k: int) -> str:
        grp = memo.groups()[k]
        idx_age = _age(as_of_ms, grp.index_since)
        row_age = _age(as_of_ms, grp.worst_since)
        # A price never received is missing since the position was opened, not forever:
        # positions that arrive a moment before their first price are not stale.
        if idx_age >= row_age:
            worst, worst_age, never = f"the {grp.name} index", idx_age, grp.index_never
        else:
            worst, worst_age, never = grp.worst_instrument, row_age, grp.worst_never
        when = (
            f"not priced since it was opened {_secs(worst_age)} ago"
            if never
            else f"last priced {_secs(worst_age)} ago"
        )
        # Ages fall as ``since`` rises: the stale positions are a prefix of ``since``.
        stale = bisect.bisect_left(grp.since, True, key=lambda x: _age(as_of_ms, x) < first)
        return (
            f"{memo.account}: {worst} {when} ({levels}); {stale} of {len(grp.since)} "
            f"{grp.name} positions without a price for {_secs(first)}"
        )

    def since(inp: RuleInput, index_ts: list[int], rows: _StaleRows) -> FloatArray:
        """Per underlying group, the time (epoch ms) the oldest price it uses dates from:
        the earliest of each position's last price (its opening when never priced) and
        the index's last tick (the group's first opening when it never ticked). The age
        is ``as_of - since``: only that moves while nothing new arrives. ``index_ts``: the
        index's last tick per underlying of the snapshot (``assets.price_ts_ms``)."""
        idx = inp.asset_index
        out = []
        for name, oldest, opened in zip(
            rows.groups.names, rows.oldest, rows.first_opened, strict=True
        ):
            j = idx.get(name)
            t = 0 if j is None else index_ts[j]
            out.append(min(oldest, t if t > 0 else opened))
        return np.array(out, dtype=np.float64)

    # Per account: the table and index tick times of the last read, ``since`` and the
    # groups' summary facts (built when a summary is first asked for); an evaluation with
    # the same table and index times (nothing new) reuses both.
    memo: dict[str, _StaleMemo] = {}
    #: Per account, the table's side of ``since`` (see :class:`_StaleRows`).
    table_rows: dict[str, _StaleRows] = {}

    def read(inp: RuleInput) -> Iterator[Readings]:
        snap = inp.snapshot
        index_ts = snap.assets.price_ts_ms
        index_list: list[int] | None = None
        seen: dict[str, _StaleMemo] = {}
        seen_rows: dict[str, _StaleRows] = {}
        for account, fig in snap.accounts.items():
            table = fig.positions
            if table is None or not table.instrument:
                continue
            g = inp.groups(account, table)
            m = memo.get(account)
            if m is None or m.table is not table or m.index_ts is not index_ts:
                if index_list is None:
                    index_list = index_ts.tolist()
                rows = seen_rows[account] = _StaleRows.of(g, table, table_rows.get(account))
                m = _StaleMemo(
                    account,
                    table,
                    index_ts,
                    since(inp, index_list, rows),
                    partial(_stale_groups, inp, account, table),
                )
            else:
                seen_rows[account] = table_rows[account]
            seen[account] = m
            values = np.maximum(snap.as_of_ms - m.since, 0.0) / 1000.0
            yield Readings(account, g.names, values, partial(text, snap.as_of_ms, m))
        memo.clear()
        memo.update(seen)
        table_rows.clear()
        table_rows.update(seen_rows)

    return Rule(spec, read)


def _connector_down(cfg: ConnectorDownRule) -> Rule[RuleInput]:
    spec = _spec(cfg)

    def text(name: str, kind: str, connected: bool, reconnects: int, error: str | None) -> str:
        state = "connected again" if connected else "disconnected"
        out = f"connector {name} ({kind}) {state}; {reconnects} reconnects"
        return f"{out}; last error: {error}" if error and not connected else out

    def read(inp: RuleInput) -> Iterator[Reading]:
        for st in inp.connectors:
            value = 0.0 if st.connected else 1.0
            describe = partial(text, st.name, st.kind, st.connected, st.reconnects, st.last_error)
            yield Reading(st.name, None, value, describe, {"connector": st.name, "kind": st.kind})

    return Rule(spec, read)


def _venue_mismatch(
    cfg: VenueDeltaMismatchRule | VenueVegaMismatchRule, key: str, what: str, unit: str
) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, lambda x: f"{x:,.0f}")

    def text(account: str, diff: float, positions: float | None) -> str:
        over = f" over {positions:.0f} positions" if positions is not None else ""
        return (
            f"{account}: riskmon's {what} differs from the venue's by {diff:+,.0f} {unit}"
            f"{over} ({levels} {unit})"
        )

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            vs = fig.extra.get("greeks_vs_venue")
            if not isinstance(vs, Mapping):
                continue
            diff = _number(vs.get(key))
            if diff is None:
                continue
            n = _number(vs.get("positions"))
            yield Reading(account, None, abs(diff), partial(text, account, diff, n))

    return Rule(spec, read, steady=True)


def _model_margin_divergence(cfg: ModelMarginDivergenceRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _pct)

    def text(account: str, ours: float, venue: float, value: float) -> str:
        return (
            f"{account}: riskmon's model maintenance margin {_usd(ours)} against the venue's "
            f"{_usd(venue)}, {_pct(value)} apart ({levels}): a model or data problem, "
            "compare margin.model with the venue's figures"
        )

    watched = frozenset(cfg.accounts)

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            m = _margin(fig) if account in watched else None
            if m is None:
                continue
            ours = _number(m.get("model_maintenance_margin_usd"))
            venue = _number(m.get("maintenance_margin"))
            if ours is None or venue is None or venue <= 0.0 or ours < 0.0:
                continue
            r = ours / venue
            value = INF if r == 0.0 else max(r, 1.0 / r) - 1.0
            yield Reading(account, None, value, partial(text, account, ours, venue, value))

    return Rule(spec, read, steady=True)


# --- the pack ----------------------------------------------------------------------------


# --- is the model right? -----------------------------------------------------------------

_ZONE_CODE: Final = {"green": 0.0, "yellow": 1.0, "red": 2.0}


def _var_backtest(cfg: VarBacktestRule) -> Rule[RuleInput]:
    spec = _spec(cfg)

    def text(account: str, bt: Mapping[str, Any]) -> str:
        out = (
            f"{account}: VaR backtest {bt['zone']}: {bt['exceptions']} exceptions in "
            f"{bt['observations']} periods of {Duration(round(1000 * bt['horizon_seconds']))} "
            f"(expected "
            f"{bt['expected_exceptions']:.1f} at {_pct(bt['confidence'])})"
        )
        if bt.get("kupiec_p_value") is not None:
            out += f"; Kupiec p {bt['kupiec_p_value']:.3g}"
        last = bt.get("last")
        if last and last.get("pnl_usd") is not None and last.get("var_usd") is not None:
            out += f"; last period P&L {_usd(last['pnl_usd'], sign=True)} vs VaR "
            out += _usd(last["var_usd"])
        return out + "; the model's volatility or correlation is wrong for this book"

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            bt = fig.extra.get("backtest")
            if not bt or bt.get("zone") is None:
                continue
            value = _ZONE_CODE[bt["zone"]]
            yield Reading(account, None, value, partial(text, account, bt))

    return Rule(spec, read, steady=True)


def _stressed_var_ratio(cfg: StressedVarRatioRule) -> Rule[RuleInput]:
    spec = _spec(cfg)
    levels = _levels(spec, _level_times)

    def text(account: str, fig: AccountFigures, st: Mapping[str, Any], value: float) -> str:
        assert fig.risk is not None
        var = float(fig.risk.delta_normal.var_usd)
        return (
            f"{account}: stressed VaR {_usd(st['var_usd'])} is {_times(value)} the VaR "
            f"{_usd(var)} ({levels}) with every correlation at {st['correlation']:g} and "
            f"volatilities x{st['vol_scale']:g}: the book leans on diversification"
        )

    def read(inp: RuleInput) -> Iterator[Reading]:
        for account, fig in inp.snapshot.accounts.items():
            st = fig.extra.get("stressed_var")
            if not st or fig.risk is None:
                continue
            ratio = st.get("ratio")
            warm = inp.shown(account, fig.risk).warm  # correlations mean something
            value = NAN if ratio is None or not warm else float(ratio)
            yield Reading(account, None, value, partial(text, account, fig, st, value))

    return Rule(spec, read, steady=True)


def _build(cfg: RuleConfig, limits: Mapping[str, AccountLimits]) -> Rule[RuleInput]:
    match cfg:
        case RiskDriftRule():
            return _risk_drift(cfg)
        case ConcentrationRule():
            return _concentration(cfg)
        case MarginUtilizationRule():
            return _margin_utilization(cfg)
        case DistanceToCallRule():
            return _distance_to_call(cfg)
        case DistanceToCallSigmasRule():
            return _distance_to_call_sigmas(cfg)
        case ScenarioMarginRule():
            return _scenario_margin(cfg)
        case VolBreakRule():
            return _vol_break(cfg)
        case VolVsImpliedRule():
            return _vol_vs_implied(cfg)
        case CorrelationSpikeRule():
            return _correlation_spike(cfg)
        case AbsorptionSpikeRule():
            return _absorption_spike(cfg)
        case NetDeltaLimitRule():
            return _net_delta_limit(cfg, limits)
        case NetVegaLimitRule():
            return _net_vega_limit(cfg, limits)
        case HedgeOffsetRule():
            return _hedge_offset(cfg)
        case StaleDataRule():
            return _stale_data(cfg)
        case ConnectorDownRule():
            return _connector_down(cfg)
        case VenueDeltaMismatchRule():
            return _venue_mismatch(cfg, "delta_usd", "delta", "USD")
        case VenueVegaMismatchRule():
            return _venue_mismatch(cfg, "vega", "vega", "USD per vol point")
        case ModelMarginDivergenceRule():
            return _model_margin_divergence(cfg)
        case VarBacktestRule():
            return _var_backtest(cfg)
        case StressedVarRatioRule():
            return _stressed_var_ratio(cfg)


def build_rules(
    rules: Sequence[RuleConfig] | None = None,
    limits: Mapping[str, AccountLimits] | None = None,
) -> list[Rule[RuleInput]]:
    """The enabled built-in rules, in the given order (default: :data:`DEFAULT_RULES`).

    Each call builds fresh rule objects: ``hedge_offset`` keeps a watch list, so a pack
    belongs to one :class:`~monitor.rules.machine.RuleEngine`.
    """
    configs = DEFAULT_RULES if rules is None else rules
    return [_build(c, limits or {}) for c in configs if c.enabled]


def rule_engine(
    rules: Sequence[RuleConfig], limits: Mapping[str, AccountLimits]
) -> RuleEngine[RuleInput]:
    """A rule engine running the built-in pack as ``[[rules]]`` and ``[limits]`` configure it."""
    return RuleEngine(build_rules(rules, limits))
