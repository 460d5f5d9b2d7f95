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
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from monitor.model.events import iso_ms
from monitor.model.instruments import InstrumentRegistry
from monitor.model.settings import Duration
from monitor.model.snapshot import AccountFigures
from monitor.quant.attribution import attribute_drift, drift_summary
from monitor.quant.budgeting import Method, ScaleMode, rebalance_target
from monitor.quant.hedging import delta_hedge
from monitor.quant.risk import Contributions

__all__ = ["ActionSettings", "Actions", "LinearInstrument"]

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


@dataclass(frozen=True, slots=True)
class LinearInstrument:
    """The instrument an underlying's suggested trades are in, and ``delta_usd`` per
    contract (USD)."""

    name: str
    usd_per_contract: float


@dataclass(frozen=True, slots=True)
class _Ref:
    ts_ms: int
    x: FloatArray  # (n,) exposure per underlying at the time, registry order
    cov: FloatArray  # (n, n)


class Actions:
    """Keeps each account's attribution reference ring; computes the report sections."""

    def __init__(self, settings: ActionSettings | None = None) -> None:
        self.settings = settings or ActionSettings()
        self._refs: dict[str, deque[_Ref]] = {}
        self._linear_memo: tuple[int, dict[str, tuple[str, float]]] | None = None

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
    ) -> dict[str, dict[str, Any]]:
        """``{account: {"attribution": ..., "suggestions": {"rebalance", "hedge"}}}``.

        ``exposure``: ``(k, n)`` USD per account (rows in ``accounts`` order) and underlying;
        ``cov``: ``(n, n)`` the contributions' covariance; ``contributions``: per account.
        """
        out: dict[str, dict[str, Any]] = {}
        for j, (account, fig) in enumerate(accounts.items()):
            c, x = contributions[j], exposure[j]
            risk = fig.risk
            if risk is None:
                continue
            idx = np.flatnonzero(risk.shown)
            known = c.share_reason is None and bool(np.isfinite(c.share[idx]).all())
            ref = self._reference(account, as_of_ms, x, cov, known and idx.size > 0)
            lin = {n: self._linear(n, fig, registry, index_price) for n in (names[i] for i in idx)}
            out[account] = {
                "attribution": self._attribution(account, names, idx, x, cov, c, ref, as_of_ms)
                if known
                else None,
                "suggestions": {
                    "rebalance": self._rebalance(names, idx, x, cov, c, lin)
                    if known and idx.size
                    else None,
                    "hedge": self._hedge(account, fig, lin),
                },
            }
        return out

    # -- attribution ------------------------------------------------------------------

    def _reference(
        self, account: str, as_of_ms: int, x: FloatArray, cov: FloatArray, known: bool
    ) -> _Ref | None:
        lookback = self.settings.lookback_ms
        ring = self._refs.get(account)
        if known and (ring is None or as_of_ms - ring[-1].ts_ms >= lookback // _RING_STEPS):
            if ring is None:
                ring = self._refs[account] = deque()
            ring.append(_Ref(as_of_ms, x.copy(), cov))
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
    ) -> dict[str, Any] | None:
        if ref is None:
            return None
        n = len(names)
        x_ref = np.zeros(n)
        x_ref[: ref.x.shape[0]] = ref.x
        cov_ref = np.full((n, n), np.nan)
        m = ref.cov.shape[0]
        cov_ref[:m, :m] = ref.cov
        sub = np.ix_(idx, idx)
        att = attribute_drift(x_ref[idx], cov_ref[sub], x[idx], cov[sub])
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
        self, name: str, fig: AccountFigures, registry: InstrumentRegistry, index: FloatArray
    ) -> LinearInstrument | None:
        """The account's perpetual on ``name``, else its spot, else the registry's."""
        table = fig.positions
        chosen: tuple[str, float] | None = None
        if table is not None:
            best = 3
            for inst_name, und in zip(table.instrument, table.underlying, strict=True):
                inst = registry.get(inst_name)
                if und != name or inst is None or inst.kind not in ("perpetual", "spot"):
                    continue
                rank = 0 if inst.kind == "perpetual" else 1
                if rank < best:
                    best, chosen = rank, (inst.name, inst.multiplier)
        if chosen is None:
            chosen = self._registry_linear(registry).get(name)
        u = registry.underlying_index(name)
        if chosen is None or u is None or u >= len(index):
            return None
        per = chosen[1] * float(index[u])
        return LinearInstrument(chosen[0], per) if math.isfinite(per) and per > 0 else None

    def _registry_linear(self, registry: InstrumentRegistry) -> dict[str, tuple[str, float]]:
        """Per underlying, the first perpetual registered (else spot): name, multiplier."""
        memo = self._linear_memo
        if memo is None or memo[0] != registry.version:
            found: dict[str, tuple[int, str, float]] = {}
            for inst in registry.instruments:
                if inst.kind in ("perpetual", "spot"):
                    rank = 0 if inst.kind == "perpetual" else 1
                    if inst.underlying not in found or rank < found[inst.underlying][0]:
                        found[inst.underlying] = (rank, inst.name, inst.multiplier)
            memo = (registry.version, {u: (n, m) for u, (_, n, m) in found.items()})
            self._linear_memo = memo
        return memo[1]

    def _rebalance(
        self,
        names: tuple[str, ...],
        idx: npt.NDArray[np.intp],
        x: FloatArray,
        cov: FloatArray,
        c: Contributions,
        lin: Mapping[str, LinearInstrument | None],
    ) -> dict[str, Any] | None:
        s = self.settings
        shown = [names[i] for i in idx.tolist()]
        budget = c.budget[idx]
        if not (np.isfinite(budget).all() and budget.sum() > 0):
            return None
        per = np.array([_per_contract(lin.get(n)) for n in shown])
        try:
            t = rebalance_target(
                x[idx],
                cov[np.ix_(idx, idx)],
                budget,
                method=s.rebalance_method,
                scale=s.rebalance_scale,
                usd_per_contract=per,
            )
        except ValueError:
            return None
        if not np.isfinite(t.exposure_usd).all() or t.trades is None:
            return None
        contracts = t.trades.contracts
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


def _name(li: LinearInstrument | None) -> str | None:
    return None if li is None else li.name


def _per_contract(li: LinearInstrument | None) -> float:
    return math.nan if li is None else li.usd_per_contract


def _num(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None
