"""From alarm to action, per account: why the risk shares drifted, the rebalance back to
budget, the delta hedge. Called from the evaluation; adds ``attribution`` and
``suggestions`` to each account's report.

Attribution (:func:`monitor.quant.attribution.attribute_drift`)
    The change of every risk share between a reference state and now, split into
    positions, volatility and correlation. The reference is the account's exposures and
    covariance ``lookback`` ago (``[actions] lookback``, default 24 h): a ring per account
    keeps a state every ``lookback / 96`` of event time, from the first evaluation whose
    shares are known (the budget's set time: budgets come from the config, set at start).
    Until ``lookback`` has passed, the reference is that first state and ``since`` reads
    ``"start"``.

Rebalance (:func:`monitor.quant.budgeting.rebalance_target`)
    The exposures that put every share back on its budget at the current covariance
    (``[actions] rebalance_method``: ``"risk_budget"``, exact, or ``"inverse_vol"``),
    scaled to keep the account's volatility or gross exposure (``rebalance_scale``), and
    the contracts of the account's own linear instrument per underlying: the perpetual it
    holds, else the spot it holds, else the first perpetual (else spot) riskmon knows on
    that underlying. One contract of a perpetual or spot changes ``delta_usd`` by
    ``multiplier x index price`` (USD).

Hedge (:func:`monitor.quant.hedging.delta_hedge`)
    Per underlying, the contracts of the same linear instruments that bring net
    ``delta_usd`` to its target: with a ``[limits.<account>] delta_usd`` limit ``L`` and a
    net delta ``N`` beyond it, every underlying's delta scaled by ``L / |N|`` (so the net
    becomes exactly ``+-L`` and the mix of the book is kept); within the limit, no trade;
    without a limit, flat (0). The residual ``gamma_usd`` and ``vega`` are the book's
    (linear instruments carry none).

VaR backtest (:mod:`monitor.quant.backtest`)
    Periods of ``[actions] backtest_horizon`` (default 1 d; 1 h allowed) on the
    evaluation clock, aligned to multiples of it since the epoch. At the first evaluation
    of a period each account's positions and their total ``value_usd`` are captured with
    the VaR predicted for the period: the delta-normal VaR scaled from ``risk.var_horizon``
    to the period by ``sqrt(period / var_horizon)`` (exact for a zero-mean normal P&L). At
    the first evaluation of the next period the positions held at the start are revalued
    at the marks then (:func:`monitor.engine.valuation.value_book`): that change is the
    period's realised P&L (trades during the period do not enter it). A missing price at
    either end, or a VaR that leaves out a held underlying (no covariance yet), skips
    the period. Rolling window of 250 observations, Kupiec's test and the
    Basel zone from 50 observations on.

Stressed VaR (:func:`monitor.quant.stress.stressed_var`)
    The delta-normal VaR on the VaR covariance with every pairwise correlation pushed to
    ``stress_correlation`` (default 0.9) and every volatility scaled by
    ``stress_vol_scale`` (default 1.5), beside the normal one, and their ratio.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from monitor.engine.valuation import Book, BookValues, MarketArrays, build_book, value_book
from monitor.model.events import iso_ms
from monitor.model.instruments import InstrumentRegistry
from monitor.model.settings import Duration
from monitor.model.snapshot import AccountFigures
from monitor.quant.attribution import DriftAttribution, attribute_drift, drift_summary
from monitor.quant.backtest import DEFAULT_MIN_OBS, DEFAULT_WINDOW, backtest
from monitor.quant.budgeting import Method, RebalanceTarget, ScaleMode, rebalance_target
from monitor.quant.hedging import delta_hedge
from monitor.quant.risk import Contributions
from monitor.quant.stress import stressed_var
from monitor.quant.trades import linear_trades

__all__ = ["ActionSettings", "Actions", "Backtests", "LinearInstrument", "stressed_section"]

FloatArray = npt.NDArray[np.float64]
_RING_STEPS: Final = 96  # reference states kept per look-back
_SPOT, _PERPETUAL = 1, 2


@dataclass(frozen=True, slots=True)
class ActionSettings:
    """``[actions]`` in the config, and the delta limits of ``[limits]``. Durations in ms."""

    lookback_ms: int = 86_400_000
    rebalance_method: Method = "risk_budget"
    rebalance_scale: ScaleMode = "volatility"
    #: ``[limits.<account>] delta_usd`` (USD), the hedge's target.
    delta_limits: Mapping[str, float] = field(default_factory=dict)
    backtest_horizon_ms: int = 86_400_000
    backtest_window: int = DEFAULT_WINDOW
    backtest_min_obs: int = DEFAULT_MIN_OBS
    stress_correlation: float = 0.9
    stress_vol_scale: float = 1.5
    #: Attribution and suggestions are advisory: an account's are recomputed when its
    #: positions change, else at most this often (ms; the daemon uses
    #: ``risk.scenario_interval``). 0: every evaluation.
    refresh_ms: int = 0
    #: The periodic refresh of the accounts is spread over this many calls (the daemon:
    #: ``scenario_interval / eval_interval``): each call refreshes at most
    #: ``ceil(accounts / refresh_spread)`` accounts whose sections are ``refresh_ms`` old,
    #: the oldest first, so no evaluation recomputes every account at once.
    refresh_spread: int = 1


@dataclass(frozen=True, slots=True)
class LinearInstrument:
    """The instrument an underlying's suggested trades are in, and ``delta_usd`` per
    contract (USD)."""

    name: str
    usd_per_contract: float


@dataclass(frozen=True, slots=True, eq=False)  # compared by identity (memo keys)
class _Ref:
    ts_ms: int
    x: FloatArray  # (n,) exposure per underlying at the time, registry order
    cov: FloatArray  # (n, n)
    psd: bool = False  # cov is a fully known PSD repair (``account_sections``' ``psd``)


def _position_keys(book: Book) -> dict[str, bytes]:
    """Per account, its positions (instruments and quantities) as bytes: equal keys, the
    same positions."""
    out: dict[str, bytes] = {}
    for k, account in enumerate(book.accounts):
        lo, hi = int(book.starts[k]), int(book.starts[k + 1])
        out[account] = book.instrument[lo:hi].tobytes() + book.quantity[lo:hi].tobytes()
    return out


class Actions:
    """Keeps each account's attribution reference ring; computes the report sections."""

    def __init__(self, settings: ActionSettings | None = None) -> None:
        self.settings = settings or ActionSettings()
        self._refs: dict[str, deque[_Ref]] = {}
        self._linear_memo: tuple[int, dict[str, tuple[str, float]], frozenset[str]] | None = None
        # Per account: (covariance, inputs, result), reused while the inputs are the same.
        self._target_memo: dict[
            str, tuple[FloatArray, tuple[bytes, ...], RebalanceTarget | None]
        ] = {}
        self._attribution_memo: dict[str, tuple[FloatArray, tuple[Any, ...], DriftAttribution]] = {}
        #: Per account: (computed at, its positions' key, its sections) of its last refresh.
        self._last: dict[str, tuple[int, bytes, dict[str, Any]]] = {}
        #: The accounts the last :meth:`account_sections` call recomputed.
        self.refreshed: frozenset[str] = frozenset()
        #: (book, its accounts' position keys): the engine keeps one Book object while no
        #: position changes, so the keys are built once per book, not per evaluation.
        self._keys_memo: tuple[Book | None, dict[str, bytes]] = (None, {})

    def _keys_of(self, book: Book | None) -> dict[str, bytes]:
        if book is None:
            return {}
        if self._keys_memo[0] is not book:
            self._keys_memo = (book, _position_keys(book))
        return self._keys_memo[1]

    def account_sections(
        self,
        as_of_ms: int,
        names: tuple[str, ...],
        accounts: Mapping[str, AccountFigures],
        exposure: FloatArray,
        cov: FloatArray,
        contributions: Sequence[Contributions],
        registry: InstrumentRegistry,
        index_price: FloatArray,
        book: Book | None = None,
        *,
        psd: bool = False,
    ) -> dict[str, dict[str, Any]]:
        """``{account: {"attribution": ..., "suggestions": {"rebalance", "hedge"}}}``.

        ``exposure``: ``(k, n)`` USD per account (rows in ``accounts`` order) and underlying;
        ``cov``: ``(n, n)`` the contributions' covariance; ``contributions``: per account.
        ``book``: the positions; with ``refresh_ms``, an account's last sections are reused
        until its positions change or they are ``refresh_ms`` old, and the periodic refresh
        is spread over ``refresh_spread`` calls (each section says ``as_of``).
        :attr:`refreshed` names the accounts this call recomputed. ``psd``: ``cov`` is
        :func:`monitor.quant.risk.psd_covariance`'s output for a fully known matrix (the
        evaluator's), so attribution and rebalance do not repair its blocks again.
        """
        refresh = self.settings.refresh_ms
        todo = set(accounts)
        if refresh > 0:
            keys = self._keys_of(book)
            changed: set[str] = set()
            aged: list[tuple[int, str]] = []
            for account in accounts:
                last = self._last.get(account)
                if last is None or last[1] != keys.get(account, b""):
                    changed.add(account)
                elif not 0 <= as_of_ms - last[0] < refresh:
                    aged.append((last[0], account))
            per_call = -(-len(accounts) // max(self.settings.refresh_spread, 1))
            todo = changed | {a for _, a in sorted(aged)[:per_call]}
        for account in set(self._last) - set(accounts):
            del self._last[account]
        for j, (account, fig) in enumerate(accounts.items()):
            if account not in todo:
                continue
            c, x = contributions[j], exposure[j]
            risk = fig.risk
            if risk is None:
                self._last.pop(account, None)
                continue
            idx = np.flatnonzero(risk.shown)
            known = c.share_reason is None and bool(np.isfinite(c.share[idx]).all())
            ref = self._reference(account, as_of_ms, x, cov, known and idx.size > 0, psd)
            lin = self._linear(fig, [names[i] for i in idx], registry, index_price)
            sec = {
                "as_of": iso_ms(as_of_ms),
                "attribution": self._attribution(account, names, idx, x, cov, c, ref, as_of_ms, psd)
                if known
                else None,
                "suggestions": {
                    "rebalance": self._rebalance(account, names, idx, x, cov, c, lin, psd)
                    if known and idx.size
                    else None,
                    "hedge": self._hedge(account, fig, lin),
                },
            }
            key = self._keys_of(book).get(account, b"") if refresh > 0 else b""
            self._last[account] = (as_of_ms, key, sec)
        self.refreshed = frozenset(a for a in todo if a in self._last)
        return {a: dict(self._last[a][2]) for a in accounts if a in self._last}

    def state(self) -> dict[str, Any]:
        """The attribution reference rings, as plain data (arrays as lists)."""
        return {
            account: [[r.ts_ms, r.x.tolist(), r.cov.tolist()] for r in ring]
            for account, ring in self._refs.items()
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take the rings :meth:`state` described. Raises ``ValueError`` when it is not one."""
        try:
            refs = {
                str(account): deque(
                    _Ref(int(ts), np.asarray(x, dtype=np.float64), np.asarray(c, dtype=np.float64))
                    for ts, x, c in ring
                )
                for account, ring in state.items()
            }
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not an attribution state: {exc!r}") from None
        self._refs = refs
        self._target_memo.clear()
        self._attribution_memo.clear()

    # -- attribution ------------------------------------------------------------------

    def _reference(
        self,
        account: str,
        as_of_ms: int,
        x: FloatArray,
        cov: FloatArray,
        known: bool,
        psd: bool = False,
    ) -> _Ref | None:
        lookback = self.settings.lookback_ms
        ring = self._refs.get(account)
        if known and (ring is None or as_of_ms - ring[-1].ts_ms >= lookback // _RING_STEPS):
            if ring is None:
                ring = self._refs[account] = deque()
            ring.append(_Ref(as_of_ms, x.copy(), cov, psd))
        if ring is None:
            return None
        # Keep one state at or before the look-back's start: it is the reference.
        while len(ring) >= 2 and ring[1].ts_ms <= as_of_ms - lookback:
            ring.popleft()
        return ring[0]

    def _attribution(
        self,
        account: str,
        names: tuple[str, ...],
        idx: npt.NDArray[np.intp],
        x: FloatArray,
        cov: FloatArray,
        c: Contributions,
        ref: _Ref | None,
        as_of_ms: int,
        psd: bool = False,
    ) -> dict[str, Any] | None:
        if ref is None:
            return None
        key = (ref, x[idx].tobytes(), idx.tobytes())
        memo = self._attribution_memo.get(account)
        if memo is not None and memo[0] is cov and memo[1] == key:
            att = memo[2]
        else:
            n = len(names)
            x_ref = np.zeros(n)
            x_ref[: ref.x.shape[0]] = ref.x
            cov_ref = np.full((n, n), np.nan)
            m = ref.cov.shape[0]
            cov_ref[:m, :m] = ref.cov
            sub = np.ix_(idx, idx)
            # Both covariances fully known repairs of the same size: every corner is PSD.
            both = psd and ref.psd and ref.cov.shape == cov.shape
            att = attribute_drift(x_ref[idx], cov_ref[sub], x[idx], cov[sub], psd=both)
            self._attribution_memo[account] = (cov, key, att)
        lookback = self.settings.lookback_ms
        since = str(Duration(lookback)) if ref.ts_ms <= as_of_ms - lookback else "start"
        shown = [names[i] for i in idx.tolist()]
        per = {
            name: {
                key: _num(getattr(att, key)[k])
                for key in (
                    "share_ref",
                    "share_now",
                    "total",
                    "positions",
                    "volatility",
                    "correlation",
                    "residual",
                )
            }
            for k, name in enumerate(shown)
        }
        return {
            "since": since,
            "reference_as_of": iso_ms(ref.ts_ms),
            "volatility_ref_usd": _num(att.sigma_ref_usd),
            "volatility_now_usd": _num(att.sigma_now_usd),
            "underlyings": per,
            # drift_summary names no account ("main: BTC 52% ..."): the account's name
            # takes that place, as an alert reads it.
            "summary": f"{account}: "
            + drift_summary(shown, att, c.budget[idx], since).removeprefix("main: "),
        }

    # -- suggestions ------------------------------------------------------------------

    def _linear(
        self,
        fig: AccountFigures,
        wanted: Sequence[str],
        registry: InstrumentRegistry,
        index: FloatArray,
    ) -> dict[str, LinearInstrument | None]:
        """Per underlying in ``wanted`` and held: the account's perpetual on it, else its
        spot, else the registry's (one pass over the account's positions)."""
        held: dict[str, tuple[int, str, float]] = {}
        table = fig.positions
        known, linear = self._registry_linear(registry)
        if table is not None:
            for inst_name in linear.intersection(table.instrument):
                inst = registry.get(inst_name)
                if inst is None:
                    continue
                rank = 0 if inst.kind == "perpetual" else 1
                best = held.get(inst.underlying)
                if best is None or rank < best[0]:
                    held[inst.underlying] = (rank, inst.name, inst.multiplier)
        names = {*wanted, *(() if table is None else table.underlying)}
        out: dict[str, LinearInstrument | None] = {}
        for name in names:
            mine = held.get(name)
            chosen = (mine[1], mine[2]) if mine is not None else known.get(name)
            u = registry.underlying_index(name)
            per = math.nan
            if chosen is not None and u is not None and u < len(index):
                per = chosen[1] * float(index[u])
            ok = chosen is not None and math.isfinite(per) and per > 0
            out[name] = LinearInstrument(chosen[0], per) if ok and chosen else None
        return out

    def _registry_linear(
        self, registry: InstrumentRegistry
    ) -> tuple[dict[str, tuple[str, float]], frozenset[str]]:
        """Per underlying, the first perpetual registered (else spot): name, multiplier;
        and the names of every perpetual and spot."""
        memo = self._linear_memo
        if memo is None or memo[0] != registry.version:
            found: dict[str, tuple[int, str, float]] = {}
            linear: set[str] = set()
            for inst in registry.instruments:
                if inst.kind in ("perpetual", "spot"):
                    linear.add(inst.name)
                    rank = 0 if inst.kind == "perpetual" else 1
                    if inst.underlying not in found or rank < found[inst.underlying][0]:
                        found[inst.underlying] = (rank, inst.name, inst.multiplier)
            first = {u: (n, m) for u, (_, n, m) in found.items()}
            memo = (registry.version, first, frozenset(linear))
            self._linear_memo = memo
        return memo[1], memo[2]

    def _rebalance(
        self,
        account: str,
        names: tuple[str, ...],
        idx: npt.NDArray[np.intp],
        x: FloatArray,
        cov: FloatArray,
        c: Contributions,
        lin: Mapping[str, LinearInstrument | None],
        psd: bool = False,
    ) -> dict[str, Any] | None:
        s = self.settings
        shown = [names[i] for i in idx.tolist()]
        budget = c.budget[idx]
        if not (np.isfinite(budget).all() and budget.sum() > 0):
            return None
        per = np.array([_per_contract(lin.get(n)) for n in shown])
        # The target moves with the covariance (one per sample) and the exposures; the
        # contracts with every price: only they are recomputed at every evaluation.
        key = (x[idx].tobytes(), budget.tobytes(), idx.tobytes())
        memo = self._target_memo.get(account)
        if memo is not None and memo[0] is cov and memo[1] == key:
            t = memo[2]
        else:
            try:
                t = rebalance_target(
                    x[idx],
                    cov[np.ix_(idx, idx)],
                    budget,
                    method=s.rebalance_method,
                    scale=s.rebalance_scale,
                    psd=psd,
                )
            except ValueError:
                t = None
            self._target_memo[account] = (cov, key, t)
        if t is None or not np.isfinite(t.exposure_usd).all():
            return None
        contracts = linear_trades(t.change_usd, per).contracts
        return {
            "method": t.method,
            "scale": t.scale,
            "converged": t.converged,
            "volatility_usd": _num(t.sigma_usd),
            "gross_usd": _num(t.gross_usd),
            "underlyings": {
                n: {
                    "exposure_usd": _num(x[i]),
                    "target_usd": _num(t.exposure_usd[k]),
                    "change_usd": _num(t.change_usd[k]),
                    "budget": _num(t.budget[k]),
                    "instrument": _name(lin.get(n)),
                    "usd_per_contract": _num(per[k]),
                    "contracts": _num(contracts[k]),
                }
                for k, (i, n) in enumerate(zip(idx.tolist(), shown, strict=True))
            },
        }

    def _hedge(
        self, account: str, fig: AccountFigures, lin: Mapping[str, LinearInstrument | None]
    ) -> dict[str, Any] | None:
        table = fig.positions
        if table is None or not table.instrument:
            return None
        und = sorted(set(table.underlying))
        pos = {n: k for k, n in enumerate(und)}
        code = np.array([pos[u] for u in table.underlying])
        m = len(und)

        def sums(a: FloatArray) -> FloatArray:
            out = np.zeros(m)
            np.add.at(out, code, np.where(np.isfinite(a), a, 0.0))
            return out

        delta = sums(table.delta_usd)
        net = float(delta.sum())
        limit = self.settings.delta_limits.get(account)
        if limit is None:
            target, kind = np.zeros(m), "flat"
        else:
            scale = min(1.0, limit / abs(net)) if net != 0.0 else 1.0
            target, kind = delta * scale, "limit"
        per = np.array([_per_contract(lin.get(n)) for n in und])
        h = delta_hedge(delta, per, sums(table.gamma_usd), sums(table.vega), target)
        return {
            "target": kind,
            "limit_usd": limit,
            "net_delta_usd": _num(net),
            "net_target_usd": _num(float(target.sum())),
            "underlyings": {
                n: {
                    "delta_usd": _num(delta[k]),
                    "target_usd": _num(target[k]),
                    "instrument": _name(lin.get(n)),
                    "usd_per_contract": _num(per[k]),
                    "contracts": _num(h.trades.contracts[k]),
                    "delta_after_usd": _num(h.delta_after_usd[k]),
                    "residual_gamma_usd": _num(h.residual_gamma_usd[k]),
                    "residual_vega_usd": _num(h.residual_vega_usd[k]),
                }
                for k, n in enumerate(und)
            },
        }


@dataclass(slots=True)
class _Period:
    start_ms: int
    positions: dict[int, tuple[float, int]]  # instrument -> (quantity, opened ms)
    value_usd: float
    var_usd: float


class Backtests:
    """Per account: the open period and the rolling observations (module notes)."""

    def __init__(self, settings: ActionSettings, confidence: float, var_horizon_ms: int) -> None:
        self.settings = settings
        self.confidence = confidence
        self._scale = math.sqrt(settings.backtest_horizon_ms / var_horizon_ms)
        self._open: dict[str, _Period] = {}
        self._obs: dict[str, deque[tuple[int, float, float]]] = {}
        self._next = -(2**62)
        self._sections: dict[str, dict[str, Any]] = {}

    def state(self) -> dict[str, Any]:
        """Open periods and rolling observations, as plain data."""
        return {
            "next": self._next,
            "open": {
                a: [
                    p.start_ms,
                    [[i, q, o] for i, (q, o) in p.positions.items()],
                    p.value_usd,
                    p.var_usd,
                ]
                for a, p in self._open.items()
            },
            "obs": {a: [list(o) for o in d] for a, d in self._obs.items()},
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take what :meth:`state` described. Raises ``ValueError`` when it is not one."""
        try:
            nxt = int(state["next"])
            opened = {
                str(a): _Period(
                    int(start),
                    {int(i): (float(q), int(o)) for i, q, o in positions},
                    float(value),
                    float(var),
                )
                for a, (start, positions, value, var) in state["open"].items()
            }
            obs = {
                str(a): deque(
                    ((int(t), float(p), float(v)) for t, p, v in d),
                    maxlen=self.settings.backtest_window,
                )
                for a, d in state["obs"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a backtest state: {exc!r}") from None
        self._next, self._open, self._obs, self._sections = nxt, opened, obs, {}

    def update(
        self,
        as_of_ms: int,
        book: Book,
        values: BookValues,
        market: MarketArrays,
        registry: InstrumentRegistry,
        var_usd: Mapping[str, float],
    ) -> dict[str, dict[str, Any]]:
        """``{account: backtest section}``; at a period boundary, closes and opens periods.

        ``var_usd``: each account's delta-normal VaR over ``risk.var_horizon`` now.
        """
        h = self.settings.backtest_horizon_ms
        if as_of_ms >= self._next:
            if self._open:
                self._close(as_of_ms, market, registry)
            if self._next != -(2**62) or as_of_ms % h == 0:
                self._start(as_of_ms, book, values, var_usd)
            self._next = (as_of_ms // h + 1) * h
            self._sections = {a: self._section(a) for a in {*self._obs, *self._open}}
        for account in book.accounts:  # held since the last boundary: no period yet
            if account not in self._sections:
                self._sections[account] = self._section(account)
        return self._sections

    def _start(
        self, as_of_ms: int, book: Book, values: BookValues, var_usd: Mapping[str, float]
    ) -> None:
        self._open = {}
        for k, account in enumerate(book.accounts):
            lo, hi = int(book.starts[k]), int(book.starts[k + 1])
            table = values.accounts[account].positions
            value = math.nan if table is None else float(np.sum(table.value_usd))
            self._open[account] = _Period(
                as_of_ms,
                {
                    int(i): (float(q), int(o))
                    for i, q, o in zip(
                        book.instrument[lo:hi],
                        book.quantity[lo:hi],
                        book.opened_ms[lo:hi],
                        strict=True,
                    )
                },
                value,
                var_usd.get(account, math.nan) * self._scale,
            )

    def _close(self, as_of_ms: int, market: MarketArrays, registry: InstrumentRegistry) -> None:
        held = {a: p.positions for a, p in self._open.items() if p.positions}
        end = value_book(build_book(held, registry), market, registry, as_of_ms) if held else None
        for account, period in self._open.items():
            fig = None if end is None else end.accounts.get(account)
            table = None if fig is None else fig.positions
            value = 0.0 if not period.positions else math.nan
            if table is not None:
                value = float(np.sum(table.value_usd))
            obs = self._obs.setdefault(account, deque(maxlen=self.settings.backtest_window))
            obs.append((period.start_ms, value - period.value_usd, period.var_usd))

    def _section(self, account: str) -> dict[str, Any]:
        s = self.settings
        obs = self._obs.get(account, deque())
        pnl = np.array([o[1] for o in obs], dtype=np.float64)
        var = np.array([o[2] for o in obs], dtype=np.float64)
        bt = backtest(pnl, var, self.confidence, s.backtest_window, s.backtest_min_obs)
        period = self._open.get(account)
        last = obs[-1] if obs else None
        return {
            "horizon_seconds": s.backtest_horizon_ms / 1000.0,
            "confidence": self.confidence,
            "observations": bt.n_obs,
            "exceptions": bt.exceptions,
            "expected_exceptions": bt.expected,
            "kupiec_lr": _num(bt.kupiec_lr),
            "kupiec_p_value": _num(bt.kupiec_p_value),
            "cumulative_probability": _num(bt.cumulative_probability),
            "zone": bt.zone,
            "window": bt.window,
            "min_observations": bt.min_obs,
            "last": None
            if last is None
            else {"start": iso_ms(last[0]), "pnl_usd": _num(last[1]), "var_usd": _num(last[2])},
            "period_start": None if period is None else iso_ms(period.start_ms),
            "period_var_usd": None if period is None else _num(period.var_usd),
        }


def stressed_section(
    x: FloatArray,
    cov: FloatArray,
    settings: ActionSettings,
    confidence: float,
    horizon: float,
    *,
    psd: bool = False,
) -> dict[str, Any]:
    """``var.stressed``: delta-normal VaR on the stressed covariance, and its ratio to the
    delta-normal VaR on ``cov`` (the held underlyings with a known covariance only).
    ``psd``: ``cov`` is a fully known PSD repair (the evaluator's)."""
    keep = np.flatnonzero((x != 0.0) & np.isfinite(np.diagonal(cov)))
    if keep.size == 0:
        return {"var_usd": None, "es_usd": None, "ratio": None}
    sub = np.ix_(keep, keep)
    sv = stressed_var(
        x[keep],
        cov[sub],
        settings.stress_correlation,
        settings.stress_vol_scale,
        confidence=confidence,
        horizon=horizon,
        psd=psd,
    )
    return {
        "correlation": settings.stress_correlation,
        "vol_scale": settings.stress_vol_scale,
        "var_usd": _num(sv.stressed.var_usd),
        "es_usd": _num(sv.stressed.es_usd),
        "ratio": _num(sv.ratio),
    }


def _name(li: LinearInstrument | None) -> str | None:
    return None if li is None else li.name


def _per_contract(li: LinearInstrument | None) -> float:
    return math.nan if li is None else li.usd_per_contract


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
