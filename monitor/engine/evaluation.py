"""One evaluation: engine state in, an immutable :class:`RiskSnapshot` out.

Stages, each a pure function of its inputs (``monitor.engine.valuation``, ``monitor.quant.risk``,
``monitor.quant.regime``): value the book; per account and for the whole book, Euler risk
contributions against the risk-parity budget and parametric VaR/ES; full-revaluation VaR
over a scenario set on its own slower clock (``risk.scenario_interval``, event time, so a
replay recomputes it at the same moments) and whenever the book changed; regime figures
against their slow baselines; venue-reported margin. The :class:`Evaluator` holds only
what evaluations carry forward: the regime baselines and the last scenario VaR.

An evaluation never fails because of market data. A figure whose inputs are not finite (a
price so large that a sum overflows, scenario P&L beyond float range) is NaN, reported as
``null``, and the snapshot's ``unknown`` names it with the reason (``accounts.a.var``:
"exposure not finite"); the other figures and accounts are evaluated as usual.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from monitor.engine.actions import Actions, ActionSettings, Backtests, stressed_section
from monitor.engine.valuation import Book, BookValues, MarketArrays, value_book
from monitor.model.events import CurrencyBalance, iso_ms
from monitor.model.instruments import DOLLAR_COINS, InstrumentRegistry
from monitor.model.snapshot import (
    AccountFigures,
    AccountRisk,
    AssetFigures,
    FullRevaluationVaR,
    RegimeReport,
    RiskSnapshot,
)
from monitor.quant.estimator import RollingEstimator
from monitor.quant.margin import (
    Cancelled,
    LinearPositions,
    MarginSettings,
    ModelDistance,
    PortfolioMargin,
    distance_to_call,
    distance_to_call_model,
    portfolio_margin,
    scenario_margin,
    stress_pnl,
)
from monitor.quant.regime import RegimeBaselines, RegimeFigures, regime_figures, vol_ratio
from monitor.quant.risk import (
    BookRisk,
    Contributions,
    OptionPositions,
    PSDRepair,
    book_contributions,
    book_risk,
    psd_covariance,
    revalue_grid,
    scenario_returns,
    var_full_revaluation,
)

__all__ = ["AccountState", "Evaluator", "RiskSettings"]

FloatArray = npt.NDArray[np.float64]
MS_PER_YEAR: Final = 365.0 * 86_400_000.0
_SCENARIO_SEED: Final = 0  # fixed: the same scenarios every time, so VaR moves with the book
#: What the scenario pass yields: full-revaluation VaR per book, margin model per account,
#: and the figures it could not compute (report path -> reason).
_ScenarioResults = tuple[dict[str, "FullRevaluationVaR"], dict[str, dict[str, Any]], dict[str, str]]
#: What numerical code raises on inputs it cannot take (``np.linalg.LinAlgError`` is a
#: ValueError): caught per stage, so one bad figure does not stop the evaluation.
_NUMERIC_ERRORS: Final = (ValueError, ArithmeticError)
_NEVER: Final = 2**62


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """``[risk]`` in the config. Durations in milliseconds."""

    var_confidence: float = 0.99
    var_horizon_ms: int = 86_400_000
    budgets: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    var_scenarios: int = 1_000
    scenario_interval_ms: int = 5_000
    regime_halflife_ms: int = 3_600_000
    margin: MarginSettings = field(default_factory=MarginSettings)
    #: Distance to a margin call is searched within +-this move (0.9 = 90%).
    max_move: float = 0.9
    #: Also compute the distance with riskmon's model margin recomputed at each move,
    #: on its own clock (a scenario pass at most this often computes it).
    recompute_distance: bool = True
    recompute_interval_ms: int = 30_000
    #: Attribution look-back, rebalance method and scale, hedge limits (``[actions]``).
    actions: ActionSettings = field(default_factory=ActionSettings)


@dataclass(frozen=True, slots=True)
class AccountState:
    """The last venue-reported account figures (USD), with their event time, and for a
    coin-margined account its figures per settlement currency in coin."""

    ts_ms: int
    equity: float
    initial_margin: float | None
    maintenance_margin: float | None
    currencies: Mapping[str, CurrencyBalance] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _LastFull:
    """The last full evaluation, which idle evaluations re-date, and the first expiry of a
    held instrument after it (an idle evaluation never crosses it)."""

    snapshot: RiskSnapshot
    next_expiry_ms: int


@dataclass(frozen=True, slots=True)
class UnderlyingPrices:
    """Index price and its tick time per underlying (registry order)."""

    price: FloatArray
    ts_ms: npt.NDArray[np.int64]


class Evaluator:
    """Builds snapshots; carries regime baselines and the scenario VaR between evaluations."""

    def __init__(
        self, settings: RiskSettings | None = None, *, executor: Executor | None = None
    ) -> None:
        """``executor``: where the scenario pass runs. ``None`` (replay): synchronously, at
        the evaluation that finds it due, so a replay is deterministic. Live, a one-thread
        executor keeps the engine loop evaluating while the pass runs (hundreds of ms for a
        large option book); its figures are adopted at the first evaluation after it ends
        and keep their own ``as_of``.
        """
        self.settings = settings or RiskSettings()
        self._executor = executor
        self._pending: Future[_ScenarioResults] | None = None
        self._baselines = RegimeBaselines(self.settings.regime_halflife_ms)
        self._scenario_next = -(2**62)
        self._book_changed = False  # scenario figures due at the next pass that can start
        # ... and with them the model-margin distance: of these accounts, or of all.
        self._moved: set[str] = set()
        self._moved_all = False
        self._full: dict[str, FullRevaluationVaR] = {}
        self._scenario_unknown: dict[str, str] = {}
        self._regime_memo: tuple[FloatArray, npt.NDArray[np.bool_], RegimeFigures] | None = None
        #: (the sample's figures, the marked IVs' bytes, the figures with them): an
        #: evaluation whose marks did not move since the last one of the sample.
        self._regime_last: tuple[RegimeFigures, bytes, RegimeFigures] | None = None
        self._margin_model: dict[str, dict[str, Any]] = {}
        self._recompute_next = -(2**62)
        self._pending_recompute: frozenset[str] = frozenset()
        #: The last recomputed distance per account (None: it has none), with its as_of.
        self._recomputed: dict[str, dict[str, Any] | None] = {}
        # The estimator's covariances (identity: one per sample) and their PSD repairs.
        self._psd_memo: tuple[object, PSDRepair, PSDRepair] | None = None
        #: Per repair in the memo: fully known (finite), so every block of it is PSD and
        #: the risk functions need not repair it again (``psd=True``).
        self._psd_known: tuple[bool, bool] = (False, False)
        #: (the estimator's covariance: one per sample, the estimator, n, its figures).
        self._figures_memo: tuple[object, object, int, _EstimatorFigures] | None = None
        #: (book, registry, its version, the held positions' expiries).
        self._expiry_memo: tuple[Book, InstrumentRegistry, int, FloatArray] | None = None
        #: (n, contributions, book risk) of the flat book of an evaluation without positions.
        self._flat_memo: tuple[int, list[Contributions], list[BookRisk]] | None = None
        self._repairs = 0
        self._actions = Actions(self.settings.actions)
        s = self.settings
        self._backtests = Backtests(s.actions, s.var_confidence, s.var_horizon_ms)
        self._last_full: _LastFull | None = None
        self._stressed: dict[str, dict[str, Any]] = {}

    def state(self, estimator: RollingEstimator) -> dict[str, Any]:
        """What evaluations carry over, as plain data: the regime baselines and the count
        of covariance repairs (``counted``: the estimator's current sample is in it). The
        scenario pass is not kept: a restored evaluator runs it at its first evaluation."""
        memo = self._psd_memo
        counted = memo is not None and estimator.n_assets > 0 and memo[0] is estimator.covariance()
        return {
            "baselines": self._baselines.state(),
            "repairs": self._repairs,
            "counted": counted,
            "attribution": self._actions.state(),
            "backtests": self._backtests.state(),
        }

    def restore(self, state: Mapping[str, Any], estimator: RollingEstimator, n: int) -> None:
        """Take the state :meth:`state` described, for ``estimator`` (already restored) with
        ``n`` underlyings. Raises ``ValueError`` when ``state`` is not one."""
        try:
            baselines = RegimeBaselines.from_state(state["baselines"])
            repairs, counted = int(state["repairs"]), bool(state["counted"])
            self._actions.restore(state["attribution"])
            self._backtests.restore(state["backtests"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an evaluator state: {exc!r}") from None
        self._baselines = baselines
        self._psd_memo = None
        if counted and estimator.n_assets:
            self._covariances(estimator, n)  # memoised, so this sample is not counted again
        self._repairs = repairs

    def evaluate(
        self,
        as_of_ms: int,
        seq: int,
        registry: InstrumentRegistry,
        estimator: RollingEstimator,
        book: Book,
        market: MarketArrays,
        prices: UnderlyingPrices,
        venue: Mapping[str, AccountState],
        *,
        changed: bool = True,
        scenarios_due: bool = False,
        positions_changed: bool | frozenset[str] = False,
    ) -> RiskSnapshot:
        """The snapshot as of ``as_of_ms``.

        ``changed=False`` says no event reached the engine since the previous evaluation
        (only time passed): the last full evaluation's figures are reused and only what
        time itself moves is recomputed (see :meth:`_idle`), unless a full one is due.

        ``scenarios_due``: the book changed since the last evaluation (a position, an
        account, an instrument, a held instrument's first price) or the caller wants the
        scenario figures of this state (a replay's final report): the scenario pass runs
        now, or live, as soon as the pass in flight lands. ``positions_changed``: positions
        (not only the venue's account figures) changed, of these accounts (``True``: of any),
        so their model-margin distance is recomputed in that pass too rather than on its own
        clock.
        """
        idle = (
            None
            if changed or scenarios_due or positions_changed or self._book_changed
            else self._idle(as_of_ms, seq, prices, venue, estimator)
        )
        if idle is not None:
            return idle
        with np.errstate(all="ignore"):  # non-finite results are handled (null + reason)
            snap = self._full_evaluation(
                as_of_ms,
                seq,
                registry,
                estimator,
                book,
                market,
                prices,
                venue,
                scenarios_due,
                positions_changed,
            )
        expiry = self._held_expiries(book, registry)
        later = expiry[expiry > as_of_ms]
        self._last_full = _LastFull(snap, int(later.min()) if later.size else _NEVER)
        return snap

    def _idle(
        self,
        as_of_ms: int,
        seq: int,
        prices: UnderlyingPrices,
        venue: Mapping[str, AccountState],
        estimator: RollingEstimator,
    ) -> RiskSnapshot | None:
        """An evaluation with nothing new: the last full snapshot, re-dated.

        Reused: valuation, exposures, risk, VaR, stresses, margin model, regime (its
        baselines move at full evaluations only, as in a replay, which evaluates a silent
        stretch once). Recomputed: which indices are stale and the venue figures' age.
        None (evaluate fully) when the scenario pass is due or has results to adopt, a held
        instrument expired since, or an index turned stale: those change figures. Option
        Greeks therefore move with time to expiry at least every ``risk.scenario_interval``.
        """
        last = self._last_full
        if (
            last is None
            or as_of_ms >= self._scenario_next
            or as_of_ms >= last.next_expiry_ms
            or (self._pending is not None and self._pending.done())
        ):
            return None
        snap = last.snapshot
        stale = _stale(prices, as_of_ms, estimator.max_gap_ms)
        if snap.assets.stale is None or not np.array_equal(stale, snap.assets.stale):
            return None
        accounts = dict(snap.accounts)
        for name, fig in snap.accounts.items():
            st = venue.get(name)
            margin = fig.extra.get("margin")
            if st is not None and isinstance(margin, dict):
                aged = {**margin, "age_seconds": max(0, as_of_ms - st.ts_ms) / 1000.0}
                accounts[name] = replace(fig, extra={**fig.extra, "margin": aged})
        return replace(snap, as_of_ms=as_of_ms, seq=seq, accounts=accounts)

    def _full_evaluation(
        self,
        as_of_ms: int,
        seq: int,
        registry: InstrumentRegistry,
        estimator: RollingEstimator,
        book: Book,
        market: MarketArrays,
        prices: UnderlyingPrices,
        venue: Mapping[str, AccountState],
        scenarios_due: bool,
        positions_changed: bool | frozenset[str],
    ) -> RiskSnapshot:
        s = self.settings
        unknown: dict[str, str] = {}
        n_und = len(registry.underlyings)
        venue = _in_usd_now(venue, registry, prices.price)
        slow, var_rep = self._covariances(estimator, n_und)
        # Risk uses PSD covariances: the slow one (volatility, contributions, margin), the
        # VaR estimator's (VaR/ES of every method).
        cov, var_cov = slow.cov, var_rep.cov
        vol, vol_fast, returns, warm, corr = self._estimator_figures(estimator, n_und)
        assets = AssetFigures(
            names=tuple(registry.underlyings),
            price=prices.price,
            price_ts_ms=prices.ts_ms,
            volatility=vol,
            volatility_fast=vol_fast,
            returns=returns,
            warm=warm,
            correlation=corr,
            stale=_stale(prices, as_of_ms, estimator.max_gap_ms),
            psd_repaired=slow.repaired,
            min_eigenvalue=slow.min_eigenvalue,
            covariance_repairs=self._repairs,
        )
        values = value_book(book, market, registry, as_of_ms)
        horizon = s.var_horizon_ms / MS_PER_YEAR
        # Due on its clock, as soon as an account has no figure yet (the first positions
        # after start, a new account), and when the book changed (kept until a pass can
        # start: live, the next one starts at the first evaluation after the last lands).
        self._adopt_scenarios()
        self._book_changed |= scenarios_due or bool(positions_changed)
        if positions_changed is True:
            self._moved_all = True
        elif positions_changed:
            self._moved |= positions_changed
        due = (
            self._book_changed
            or as_of_ms >= self._scenario_next
            or any(a not in self._full for a in values.account_names)
        )
        if due and self._pending is None:
            # The distance with the model margin recomputed is the slow pass's slowest
            # part: every account's on its own clock; an account's at once when its
            # positions changed or it has none yet (a venue's account update alone waits
            # for the clock).
            names = values.account_names
            every = self._moved_all or as_of_ms >= self._recompute_next
            recompute = (
                frozenset()
                if not s.recompute_distance
                else frozenset(names)
                if every
                else frozenset(a for a in names if a in self._moved or a not in self._recomputed)
            )
            self._book_changed = self._moved_all = False
            self._moved.clear()
            # Inputs are this evaluation's own arrays (never mutated) and copies of the
            # engine's mutable containers, so the pass may run on another thread.
            job = partial(
                self._scenario_pass,
                values,
                cov,
                var_cov,
                dict(venue),
                list(registry.underlyings),
                horizon,
                as_of_ms,
                _MarginInputs(
                    _linear_positions(book, registry, prices.price, as_of_ms),
                    prices.price.copy(),
                    recompute,
                ),
            )
            if self._executor is None:
                self._take(job(), recompute)
            else:
                self._pending = self._executor.submit(job)
                self._pending_recompute = recompute
            self._scenario_next = as_of_ms + s.scenario_interval_ms
            if recompute and every:
                self._recompute_next = as_of_ms + s.recompute_interval_ms
        try:
            stresses = self._stresses(values, registry.underlyings)
        except _NUMERIC_ERRORS as exc:
            stresses = {}
            unknown["accounts.*.margin.stresses"] = _reason(exc)
        unknown.update(self._scenario_unknown)

        names = tuple(registry.underlyings)
        book_names = values.account_names
        keys = [*(f"accounts.{a}" for a in book_names), "total"]
        if book_names:
            held_any: npt.NDArray[np.bool_] = np.any(values.held, axis=0)
            x = np.vstack([values.exposure, values.exposure.sum(axis=0)])
            g = np.vstack([values.gamma_cash, values.gamma_cash.sum(axis=0)])
            held = np.vstack([values.held, held_any])
            # A book whose exposure overflowed has no risk figures (null), the others do.
            bad = ~(np.isfinite(x).all(axis=1) & np.isfinite(g).all(axis=1))
            for j in np.flatnonzero(bad).tolist():
                unknown[f"{keys[j]}.risk"] = "exposure or gamma not finite (a price out of range?)"
            x[bad] = 0.0
            g[bad] = 0.0
        else:  # no positions: the whole book is one flat row
            x, g = np.zeros((1, n_und)), np.zeros((1, n_und))
            held, bad = np.zeros((1, n_und), dtype=bool), np.zeros(1, dtype=bool)
        budgets = [self._budget(names, s.budgets.get(a)) for a in book_names] + [None]
        slow_hl, _, var_hl = (h / 1000.0 for h in estimator.halflives_ms)
        slow_psd, var_psd = self._psd_known
        try:
            if not book_names:
                # No positions: the whole book is flat, its figures depend on n alone.
                shares, var_risks = self._flat_risk(x, g, cov, var_cov, budgets, horizon)
            else:
                # From the slow covariance only the contributions are read.
                shares = book_contributions(x, cov, budgets, gamma_cash=g, psd=slow_psd)
                var_risks = book_risk(
                    x, g, var_cov, budgets, s.var_confidence, horizon, psd=var_psd
                )
        except _NUMERIC_ERRORS as exc:
            bad[:] = True
            for key in keys:
                unknown[f"{key}.risk"] = _reason(exc)
            var_risks = book_risk(x * 0.0, g * 0.0, np.zeros_like(cov), budgets, 0.99, horizon)
            shares = [r.contributions for r in var_risks]

        def account_risk(j: int, key: str) -> AccountRisk:
            budget = budgets[j]
            shown = held[j] if budget is None else held[j] | (budget > 0)
            v = var_risks[j]
            return AccountRisk(
                names,
                shown,
                shares[j],
                v.delta_normal,
                v.delta_gamma,
                self._full.get(key),
                known=not bad[j],
                volatility_halflife_s=slow_hl,
                var_halflife_s=var_hl,
            )

        accounts: dict[str, AccountFigures] = {}
        index_usd = dict(zip(registry.underlyings, prices.price.tolist(), strict=True))
        for j, name in enumerate(book_names):
            fig = values.accounts[name]
            margin = _margin(
                venue.get(name),
                as_of_ms,
                self._margin_model.get(name),
                stresses.get(name),
                index_usd,
            )
            extra = {**fig.extra, "margin": margin}
            accounts[name] = replace(fig, risk=account_risk(j, name), extra=extra)
        for name, st in venue.items():  # accounts with margin but no positions
            if name not in accounts:
                margin = _margin(st, as_of_ms, None, None, index_usd)
                accounts[name] = AccountFigures(None, {}, {}, extra={"margin": margin})
        try:  # attribution and suggestions (monitor.engine.actions)
            sections = self._actions.account_sections(
                as_of_ms,
                names,
                {a: accounts[a] for a in book_names},
                x[:-1],
                cov,
                shares[:-1],
                registry,
                prices.price,
                book,
                psd=slow_psd,
            )
            var_now = {  # a VaR that leaves out a held underlying predicts nothing
                a: math.nan if dn.excluded.any() else float(dn.var_usd)
                for a, dn in zip(book_names, (v.delta_normal for v in var_risks), strict=False)
            }
            backtests = self._backtests.update(as_of_ms, book, values, market, registry, var_now)
            # Stressed VaR is advisory like the sections: computed when they are.
            refreshed = self._actions.refreshed
            for a in [a for a in self._stressed if a not in book_names]:
                del self._stressed[a]
            for j, a in enumerate(book_names):
                sec = sections.setdefault(a, {})
                sec["backtest"] = backtests.get(a)
                stressed = None if a in refreshed else self._stressed.get(a)
                if stressed is None:
                    stressed = self._stressed[a] = stressed_section(
                        x[j], var_cov, s.actions, s.var_confidence, horizon, psd=var_psd
                    )
                sec["stressed_var"] = stressed
        except _NUMERIC_ERRORS as exc:
            sections = {}
            unknown["accounts.*.suggestions"] = _reason(exc)
        for name, sec in sections.items():
            accounts[name] = replace(accounts[name], extra={**accounts[name].extra, **sec})
        total = replace(values.total, risk=account_risk(len(book_names), _BOOK))

        regime: RegimeReport | None = None
        try:
            current = self._regime(assets, values.marked_iv)
            baseline = self._baselines.update(current, as_of_ms, warm=assets.warm)
            regime = RegimeReport(names, current, baseline)
        except _NUMERIC_ERRORS as exc:
            unknown["regime"] = _reason(exc)
        return RiskSnapshot(
            as_of_ms=as_of_ms,
            seq=seq,
            assets=assets,
            accounts=accounts,
            total=total,
            regime=regime,
            unknown=unknown,
        )

    def _covariances(self, est: RollingEstimator, n: int) -> tuple[PSDRepair, PSDRepair]:
        """The slow and VaR covariances, padded to ``n`` and made PSD, once per sample.

        A sample whose covariances needed a repair is counted (``covariance_repairs``).
        """
        slow = est.covariance() if est.n_assets else np.zeros((0, 0))
        memo = self._psd_memo
        if memo is not None and memo[0] is slow and memo[1].cov.shape[0] == n:
            return memo[1], memo[2]
        var = est.covariance(var=True) if est.n_assets else slow
        reps = psd_covariance(_pad(slow, n), diagnose=True), psd_covariance(_pad(var, n))
        if memo is None or memo[0] is not slow:
            self._repairs += reps[0].repaired or reps[1].repaired
        self._psd_memo = (slow, *reps)
        self._psd_known = (
            bool(np.isfinite(reps[0].cov).all()),
            bool(np.isfinite(reps[1].cov).all()),
        )
        return reps

    def _held_expiries(self, book: Book, registry: InstrumentRegistry) -> FloatArray:
        """Expiry (epoch ms, NaN for none) of each held position, per Book and registry
        version (the engine keeps one Book while no position changes)."""
        memo = self._expiry_memo
        if (
            memo is None
            or memo[0] is not book
            or memo[1] is not registry
            or memo[2] != registry.version
        ):
            expiry = np.asarray(registry.column("expiry_ms"), dtype=np.float64)[book.instrument]
            expiry.flags.writeable = False
            memo = self._expiry_memo = (book, registry, registry.version, expiry)
        return memo[3]

    def _flat_risk(
        self,
        x: FloatArray,
        g: FloatArray,
        cov: FloatArray,
        var_cov: FloatArray,
        budgets: list[FloatArray | None],
        horizon: float,
    ) -> tuple[list[Contributions], list[BookRisk]]:
        """The risk of a book without positions (``x`` and ``g`` one zero row): what
        ``book_risk`` computes for a flat book (read-only, shared), once per ``n``."""
        n = x.shape[1]
        memo = self._flat_memo
        if memo is None or memo[0] != n:
            s = self.settings
            shares = book_contributions(x, cov, budgets, gamma_cash=g)
            var_risks = book_risk(x, g, var_cov, budgets, s.var_confidence, horizon)
            memo = self._flat_memo = (n, shares, var_risks)
        return memo[1], memo[2]

    def _estimator_figures(self, est: RollingEstimator, n: int) -> _EstimatorFigures:
        """The snapshot's estimator figures, padded to ``n``, once per estimator sample.

        The estimator's covariance is one read-only array per sample (its identity is the
        key, held by the memo so it cannot be reused); the figures are read-only, shared
        by the snapshots of that sample (4 evaluations a second, 1 sample).
        """
        key = est.covariance() if est.n_assets else None
        memo = self._figures_memo
        if memo is not None and memo[0] is key and memo[1] is est and memo[2] == n:
            return memo[3]
        figs = _estimator_figures(est, n)
        for a in figs:
            a.flags.writeable = False
        self._figures_memo = (key, est, n, figs)
        return figs

    def _regime(self, assets: AssetFigures, marked_iv: FloatArray) -> RegimeFigures:
        """Regime figures; the correlation ones only when the estimator has a new sample.

        The estimator shares one read-only correlation array per sample, so its identity
        says whether eigenvalues need recomputing (4 evaluations a second, 1 sample).
        """
        prev = self._regime_memo
        if (
            prev is not None
            and prev[0] is assets.correlation
            and (prev[1] is assets.warm or np.array_equal(prev[1], assets.warm))
        ):
            fig = prev[2]
            # The marked IVs move with the book's option marks, not with the sample.
            marked = marked_iv.tobytes()
            last = self._regime_last
            if last is not None and last[0] is fig and last[1] == marked:
                return last[2]
            out = RegimeFigures(
                vol_ratio=fig.vol_ratio,
                realised_to_implied=vol_ratio(assets.volatility, marked_iv),
                average_correlation=fig.average_correlation,
                absorption_ratio=fig.absorption_ratio,
                assets_used=fig.assets_used,
            )
            self._regime_last = (fig, marked, out)
            return out
        fig = regime_figures(
            assets.volatility,
            assets.volatility_fast,
            assets.correlation,
            marked_iv,
            assets=assets.warm,
        )
        self._regime_memo = (assets.correlation, assets.warm, fig)
        return fig

    @staticmethod
    def _budget(
        names: tuple[str, ...], weights: Mapping[str, float] | None
    ) -> npt.NDArray[np.float64] | None:
        """An account's configured budget over the registry's underlyings, or None.

        None (the default budget: equal over what the account holds) also when none of the
        budgeted underlyings has been seen yet.
        """
        if not weights:
            return None
        b = np.array([weights.get(n, 0.0) for n in names])
        return b if b.sum() > 0 else None

    @property
    def scenarios_pending(self) -> bool:
        """Whether a scenario pass is running on the executor."""
        return self._pending is not None and not self._pending.done()

    def _adopt_scenarios(self) -> None:
        """Take the results of a finished background pass (re-raising its error once); a
        pass cancelled by a stopping daemon left none (the last figures stay)."""
        pending = self._pending
        if pending is None or not pending.done():
            return
        self._pending = None
        if not pending.cancelled() and not isinstance(pending.exception(), Cancelled):
            self._take(pending.result(), self._pending_recompute)

    def _take(self, results: _ScenarioResults, recomputed: frozenset[str]) -> None:
        """Adopt a scenario pass; a pass that did not recompute the model-margin distance
        carries the last one forward (it keeps its own ``as_of``)."""
        self._full, self._margin_model, self._scenario_unknown = results
        for name, fig in self._margin_model.items():
            distance = fig.get("distance_to_call")
            if name in recomputed:
                self._recomputed[name] = None if distance is None else distance["recomputed"]
            elif distance is not None:
                distance["recomputed"] = self._recomputed.get(name)

    def _scenario_pass(
        self,
        values: BookValues,
        cov: FloatArray,
        var_cov: FloatArray,
        venue: Mapping[str, AccountState],
        underlyings: list[str],
        horizon: float,
        as_of_ms: int,
        inputs: _MarginInputs,
    ) -> _ScenarioResults:
        """Full-revaluation VaR (on the VaR estimator's ``var_cov``), scenario margin and
        distance to call (``cov``): the slow clock's work.

        Never raises for numerical reasons: what cannot be computed is left out (null in
        the report) and named in the third result with its reason.
        """
        unknown: dict[str, str] = {}
        with np.errstate(all="ignore"):
            try:
                full = self._full_revaluation(values, var_cov, horizon, as_of_ms, unknown)
            except _NUMERIC_ERRORS as exc:
                full = {}
                unknown["accounts.*.var.full_revaluation"] = _reason(exc)
            try:
                margin = self._margin_models(values, cov, venue, underlyings, as_of_ms, inputs)
            except _NUMERIC_ERRORS as exc:
                margin = {}
                unknown["accounts.*.margin.scenario_margin"] = _reason(exc)
        return full, margin, unknown

    def _margin_models(
        self,
        values: BookValues,
        cov: FloatArray,
        venue: Mapping[str, AccountState],
        underlyings: list[str],
        as_of_ms: int,
        inputs: _MarginInputs,
    ) -> dict[str, dict[str, Any]]:
        """Scenario margin, the portfolio-margin model and distance to a margin call of
        every account (scenario clock).

        Distance to a call needs the venue's equity and maintenance margin (held fixed while
        the underlyings move, IV held; and riskmon's model margin recomputed at each move);
        without them it is ``None``, never a guess.
        """
        names = values.account_names
        if not names:
            return {}
        s = self.settings
        lin = values.linear_usd.T  # (n_und, k)
        pm = portfolio_margin(
            inputs.linear,
            values.options,
            inputs.index,
            underlyings,
            s.margin,
            n_books=len(names),
        )
        if s.margin.aggregation == "per_currency":
            sm_usd, sm_names = pm.worst_case_usd, _worst_names(pm)
        else:
            sm = scenario_margin(lin, values.options, s.margin, underlyings)
            sm_usd, sm_names = sm.margin_usd, list(sm.worst_scenario)
        nan = math.nan
        equity = np.array([venue[a].equity if a in venue else nan for a in names])
        mm = np.array(
            [
                nan
                if a not in venue or venue[a].maintenance_margin is None
                else venue[a].maintenance_margin
                for a in names
            ],
            dtype=np.float64,
        )
        dc = distance_to_call(
            equity, mm, lin, values.options, cov, values.exposure, max_move=s.max_move
        )
        # The model-margin distance of the accounts it is due for, on their positions alone
        # (one account's after its fill costs that account's options, not the book's).
        due = [j for j, a in enumerate(names) if a in inputs.recompute and dc.valid[j]]
        dm = (
            distance_to_call_model(
                equity[due],
                lin[:, due],
                _option_columns(values.options, due),
                _linear_columns(inputs.linear, due),
                inputs.index,
                underlyings,
                s.margin,
                max_move=s.max_move,
            )
            if due
            else None
        )
        at = {j: c for c, j in enumerate(due)}  # account -> its column in dm
        out: dict[str, dict[str, Any]] = {}
        for j, name in enumerate(names):
            distance = None
            if dc.valid[j]:
                distance = {
                    "down": _opt(dc.down[j]),
                    "up": _opt(dc.up[j]),
                    "sigmas": {"down": _opt(dc.sigmas_down[j]), "up": _opt(dc.sigmas_up[j])},
                    "reachable": {
                        "down": bool(dc.reachable_down[j]),
                        "up": bool(dc.reachable_up[j]),
                    },
                    "recomputed": (
                        None
                        if dm is None or j not in at
                        else _recomputed(dm, dc.sigma_1d[j], at[j], as_of_ms)
                    ),
                }
            out[name] = {
                "scenario_margin": _opt(sm_usd[j]),
                "worst_scenario": sm_names[j],
                "distance_to_call": distance,
                "scenarios_as_of": iso_ms(as_of_ms),
                "model": _model_report(pm, j),
                "model_maintenance_margin_usd": _opt(pm.maintenance_margin_usd[j]),
            }
        return out

    def _stresses(self, values: BookValues, underlyings: list[str]) -> dict[str, dict[str, float]]:
        """The configured named stresses, revalued every evaluation, per account (USD P&L)."""
        stresses = self.settings.margin.stresses
        if not stresses or not values.account_names:
            return {}
        res = stress_pnl(values.linear_usd.T, values.options, stresses, underlyings)
        return {
            name: {sn: float(res.pnl_usd[i, j]) for i, sn in enumerate(res.names)}
            for j, name in enumerate(values.account_names)
        }

    def _full_revaluation(
        self,
        values: BookValues,
        cov: FloatArray,
        horizon: float,
        as_of_ms: int,
        unknown: dict[str, str],
    ) -> dict[str, FullRevaluationVaR]:
        """Scenario VaR of every account and of the book in one revaluation pass.

        A book whose scenario P&L is not finite everywhere gets no figure (``unknown``
        says why); the others are computed as usual.
        """
        s = self.settings
        k = len(values.account_names)
        if k == 0 or cov.shape[0] == 0:
            return {}
        scen = scenario_returns(cov, horizon, s.var_scenarios, seed=_SCENARIO_SEED)
        linear = values.linear_usd.T  # (n_und, k)
        linear = np.concatenate([linear, linear.sum(axis=1, keepdims=True)], axis=1)
        options = values.options
        if options is not None:  # the whole book as one more column
            q = options.quantity
            options = replace(options, quantity=np.hstack([q, q.sum(axis=1, keepdims=True)]))
        # Each option valued once per grid point of its underlying, not once per scenario
        # (``revalue_grid``: within 1e-6 of the gross notional of exact revaluation).
        pnl = revalue_grid(scen.returns, horizon, linear_usd=linear, options=options).pnl_usd
        books = (*values.account_names, _BOOK)
        finite = np.isfinite(pnl).all(axis=0)
        for j in np.flatnonzero(~finite).tolist():
            key = "total" if books[j] == _BOOK else f"accounts.{books[j]}"
            unknown[f"{key}.var.full_revaluation"] = (
                "scenario P&L not finite (a price out of range?)"
            )
        out: dict[str, FullRevaluationVaR] = {}
        if not finite.any():
            return out
        var = var_full_revaluation(pnl[:, finite], s.var_confidence)
        for c, j in enumerate(np.flatnonzero(finite).tolist()):
            out[books[j]] = FullRevaluationVaR(
                var_usd=float(var.var_usd[c]),
                es_usd=float(var.es_usd[c]),
                worst_usd=float(var.worst_usd[c]),
                scenarios=var.n_scenarios,
                as_of_ms=as_of_ms,
            )
        return out


_BOOK: Final = "\0book"  # key of the whole-book scenario VaR; never an account name


def _pad(cov: FloatArray, n: int) -> FloatArray:
    """The estimator learns of an underlying at its first sample: pad with NaN until then."""
    if cov.shape[0] == n:
        return cov
    out = np.full((n, n), np.nan)
    m = cov.shape[0]
    out[:m, :m] = cov
    return out


def _fit(a: npt.NDArray[Any], n: int, fill: Any) -> npt.NDArray[Any]:
    if len(a) == n:
        return a
    out = np.full((n, *a.shape[1:]), fill, dtype=a.dtype)
    out[: len(a)] = a
    return out


#: Volatility, fast volatility, returns, warm, correlation (``AssetFigures`` fields).
_EstimatorFigures = tuple[
    FloatArray, FloatArray, npt.NDArray[np.int64], npt.NDArray[np.bool_], FloatArray
]


def _estimator_figures(est: RollingEstimator, n: int) -> _EstimatorFigures:
    """The estimator's per-underlying figures, padded to ``n`` underlyings (registry order):
    the estimator learns of an underlying at its first sample."""
    has = est.n_assets > 0
    return (
        _fit(est.volatility() if has else np.zeros(0), n, np.nan),
        _fit(est.volatility(fast=True) if has else np.zeros(0), n, np.nan),
        _fit(est.returns if has else np.zeros(0, dtype=np.int64), n, 0),
        _fit(est.warm if has else np.zeros(0, dtype=bool), n, False),
        _pad(est.correlation() if has else np.zeros((0, 0)), n),
    )


def _stale(
    prices: UnderlyingPrices, as_of_ms: int, max_gap_ms: int | None
) -> npt.NDArray[np.bool_]:
    """Priced indices silent for longer than ``max_gap_ms`` as of ``as_of_ms``."""
    if max_gap_ms is None:
        return np.zeros(len(prices.price), dtype=bool)
    out: npt.NDArray[np.bool_] = np.isfinite(prices.price) & (as_of_ms - prices.ts_ms > max_gap_ms)
    return out


def _opt(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _reason(exc: Exception) -> str:
    """A numerical failure as a one-line reason for the report (no traceback, bounded)."""
    return f"{type(exc).__name__}: {exc}"[:200]


def _in_usd_now(
    venue: Mapping[str, AccountState], registry: InstrumentRegistry, index: FloatArray
) -> Mapping[str, AccountState]:
    """Coin-margined accounts' figures in USD at the current index prices.

    A currency's coin equity, initial and maintenance margin times its index price (dollar
    coins 1:1), summed: USD equity moves with the price between the venue's account
    events. A currency whose index has no price leaves the venue's own USD figures in place.
    Accounts without ``currencies`` are returned as they are.
    """
    if not any(st.currencies for st in venue.values()):
        return venue
    out = dict(venue)
    for name, st in venue.items():
        if not st.currencies:
            continue
        equity = im = mm = 0.0
        priced = True
        for cur, bal in st.currencies.items():
            coin = cur.upper()
            u = registry.underlying_index(coin)
            rate = 1.0 if coin in DOLLAR_COINS else (math.nan if u is None else float(index[u]))
            if not math.isfinite(rate):
                priced = False
                break
            equity += bal.equity * rate
            im += (bal.initial_margin or 0.0) * rate
            mm += (bal.maintenance_margin or 0.0) * rate
        if priced:
            out[name] = replace(st, equity=equity, initial_margin=im, maintenance_margin=mm)
    return out


def _currency_margins(st: AccountState, index_usd: Mapping[str, float]) -> dict[str, Any]:
    """The report's ``margin.currencies``: per settlement currency, coin and USD."""
    out: dict[str, Any] = {}
    for cur, bal in st.currencies.items():
        coin = cur.upper()
        rate = 1.0 if coin in DOLLAR_COINS else index_usd.get(coin, math.nan)
        mm = bal.maintenance_margin
        out[cur] = {
            "equity": bal.equity,
            "initial_margin": bal.initial_margin,
            "maintenance_margin": mm,
            "collateral": bal.collateral,
            "utilization": _opt(mm / bal.equity) if mm is not None and bal.equity > 0 else None,
            "equity_usd": _opt(bal.equity * rate),
            "maintenance_margin_usd": None if mm is None else _opt(mm * rate),
            "index": _opt(rate),
        }
    return out


def _margin(
    st: AccountState | None,
    as_of_ms: int,
    model: Mapping[str, Any] | None,
    stresses: Mapping[str, float] | None,
    index_usd: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The report's ``accounts.<a>.margin``: venue figures, then riskmon's own model."""
    margin: dict[str, Any] = dict.fromkeys(
        (
            "equity",
            "initial_margin",
            "maintenance_margin",
            "utilization",
            "initial_utilization",
            "headroom_usd",
            "age_seconds",
        )
    )
    if st is not None:
        mm, im = st.maintenance_margin, st.initial_margin
        positive = st.equity > 0 and math.isfinite(st.equity)
        margin.update(
            equity=st.equity,
            initial_margin=im,
            maintenance_margin=mm,
            utilization=mm / st.equity if mm is not None and positive else None,
            initial_utilization=im / st.equity if im is not None and positive else None,
            headroom_usd=st.equity - mm if mm is not None else None,
            age_seconds=max(0, as_of_ms - st.ts_ms) / 1000.0,
        )
        if st.currencies:
            margin["currencies"] = _currency_margins(st, index_usd or {})
    margin.update(
        model
        or {
            "scenario_margin": None,
            "worst_scenario": None,
            "distance_to_call": None,
            "scenarios_as_of": None,
            "model": {},
            "model_maintenance_margin_usd": None,
        }
    )
    ours, venue_mm = margin["model_maintenance_margin_usd"], margin["maintenance_margin"]
    margin["model_to_venue_mm"] = (
        _opt(ours / venue_mm)
        if ours is not None and venue_mm is not None and venue_mm > 0.0
        else None
    )
    margin["stresses"] = dict(stresses or {})
    return margin


@dataclass(frozen=True, slots=True)
class _MarginInputs:
    """What the portfolio-margin model needs beyond :class:`BookValues`: the linear
    positions with expiry and settlement, and the index prices (USD, registry order)."""

    linear: LinearPositions | None
    index: FloatArray
    recompute: frozenset[str] = frozenset()  # accounts whose model-margin distance is due


def _linear_positions(
    book: Book, registry: InstrumentRegistry, index: FloatArray, as_of_ms: int
) -> LinearPositions | None:
    """Spot, perpetual and future positions per instrument x account, in underlying units
    (an inverse contract's USD notional over today's index price), for the margin model.
    Positions whose underlying has no index price are left out, as in ``linear_usd``; coin
    collateral is not a position the venue margins, and is left out too."""
    if book.size == 0:
        return None
    i = book.instrument
    kind = registry.column("kind_code")[i]
    collateral = np.asarray(registry.column("collateral")[i], dtype=bool)
    s = index[book.underlying]
    keep = np.flatnonzero((kind != _OPTION_KIND) & ~collateral & np.isfinite(s))
    if keep.size == 0:
        return None
    uniq, first, row = np.unique(i[keep], return_index=True, return_inverse=True)
    qty = np.zeros((uniq.size, len(book.accounts)))
    mult = np.asarray(registry.column("multiplier")[i[keep]], dtype=np.float64)
    units = book.quantity[keep] * mult
    inverse_rows = np.asarray(registry.column("inverse")[i[keep]], dtype=bool)
    units = np.where(inverse_rows, units / s[keep], units)  # USD notional -> coin
    np.add.at(qty, (row.reshape(-1), book.account[keep]), units)
    expiry = registry.column("expiry_ms")[uniq].astype(np.float64)
    ukind = kind[keep][first]
    return LinearPositions(
        underlying=book.underlying[keep][first],
        quantity=qty,
        t=np.where(ukind == _FUTURE_KIND, np.maximum(expiry - as_of_ms, 0.0) / MS_PER_YEAR, np.nan),
        inverse=np.asarray(registry.column("inverse")[uniq], dtype=bool),
        rolls=(ukind == _FUTURE_KIND) | (ukind == _PERPETUAL_KIND),
    )


def _option_columns(options: OptionPositions | None, cols: list[int]) -> OptionPositions | None:
    """``options`` of the books ``cols`` alone: those quantity columns, and only the rows
    one of them holds (None when none holds any)."""
    if options is None:
        return None
    q = options.quantity.reshape(len(options.strike), -1)[:, cols]
    rows = np.flatnonzero(np.any(q != 0.0, axis=1))
    if rows.size == 0:
        return None
    return OptionPositions(
        underlying=options.underlying[rows],
        forward=options.forward[rows],
        strike=options.strike[rows],
        t=options.t[rows],
        vol=options.vol[rows],
        is_call=options.is_call[rows],
        quantity=q[rows],
        inverse=None if options.inverse is None else options.inverse[rows],
    )


def _linear_columns(linear: LinearPositions | None, cols: list[int]) -> LinearPositions | None:
    """``linear`` of the books ``cols`` alone (rows none of them holds left out)."""
    if linear is None:
        return None
    q = linear.quantity[:, cols]
    rows = np.flatnonzero(np.any(q != 0.0, axis=1))
    if rows.size == 0:
        return None
    return LinearPositions(
        underlying=linear.underlying[rows],
        quantity=q[rows],
        t=linear.t[rows],
        inverse=linear.inverse[rows],
        rolls=linear.rolls[rows],
    )


def _worst_names(pm: PortfolioMargin) -> list[str | None]:
    """Per book, the worst scenario of each currency with a loss, largest USD loss first:
    ``"BTC -16% vol up + BTC +16% vol up (BTC-settled)"``."""
    k = pm.worst_case_usd.shape[0]
    out: list[str | None] = []
    for b in range(k):  # names only: one string per book
        parts = [
            (c.worst_case[b] * c.usd_per_unit, c.worst_scenario[b], c.currency)
            for c in pm.currencies
            if c.worst_scenario[b] is not None
        ]
        parts.sort(key=lambda p: -p[0])
        out.append(
            " + ".join(
                str(name) if cur == "USD" else f"{cur} {name} ({cur}-settled)"
                for _, name, cur in parts
            )
            or None
        )
    return out


def _model_report(pm: PortfolioMargin, j: int) -> dict[str, dict[str, Any]]:
    """``margin.model``: per settlement currency the book holds, each component in the
    currency's unit and in USD."""
    out: dict[str, dict[str, Any]] = {}
    for c in pm.currencies:
        if not c.held[j]:
            continue
        fig: dict[str, Any] = {"unit": c.currency, "worst_scenario": c.worst_scenario[j]}
        for key in _MODEL_KEYS:
            v = float(getattr(c, key)[j])
            fig[key] = _opt(v)
            fig[f"{key}_usd"] = _opt(v * c.usd_per_unit)
        fig["parameters_source"] = pm.parameters_source
        out[c.currency] = fig
    return out


def _recomputed(dm: ModelDistance, sigma_1d: float, j: int, as_of_ms: int) -> dict[str, Any]:
    """The distance with riskmon's model margin recomputed along the move."""
    down, up = float(dm.down[j]), float(dm.up[j])
    known = math.isfinite(sigma_1d) and sigma_1d > 0.0
    sig_down = abs(math.log1p(-down)) / sigma_1d if known and down < 1.0 else math.nan
    sig_up = abs(math.log1p(up)) / sigma_1d if known else math.nan
    return {
        "down": _opt(down),
        "up": _opt(up),
        "sigmas": {"down": _opt(sig_down), "up": _opt(sig_up)},
        "reachable": {"down": bool(dm.reachable_down[j]), "up": bool(dm.reachable_up[j])},
        "as_of": iso_ms(as_of_ms),
    }


_MODEL_KEYS: Final = (
    "worst_case",
    "roll_shock",
    "delta_shock",
    "risk_matrix_margin",
    "maintenance_margin",
)
_OPTION_KIND: Final = 4
_FUTURE_KIND: Final = 3
_PERPETUAL_KIND: Final = 2
