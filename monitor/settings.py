"""The engine's settings from a :class:`~monitor.config.Config`.

``riskmon run`` (``monitor.daemon``) and ``riskmon replay`` build the engine from the same
sections, so a replay of a recording gives the live run's numbers. Kept apart from the
daemon so the offline commands import the engine and the config, not the daemon's HTTP
server, notifiers and connectors.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec

from monitor.config import Config
from monitor.engine.actions import ActionSettings
from monitor.engine.core import EngineSettings
from monitor.engine.evaluation import RiskSettings
from monitor.quant.margin import (
    DEFAULT_CURRENCIES,
    DEFAULT_UNDERLYINGS,
    CurrencyParams,
    MarginSettings,
    Stress,
    UnderlyingParams,
)

__all__ = ["engine_settings", "risk_settings"]


def engine_settings(cfg: Config) -> EngineSettings:
    """The engine's timing from ``[estimator]`` and ``[risk]``, its tick bound from ``[market]``."""
    e, r = cfg.estimator, cfg.risk
    return EngineSettings(
        sample_interval_ms=int(e.sample_interval),
        halflife_ms=int(e.halflife),
        fast_halflife_ms=int(e.fast_halflife),
        warmup_ms=int(e.warmup),
        max_gap_ms=int(e.max_gap),
        eval_interval_ms=int(r.eval_interval),
        max_tick_move=cfg.market.max_tick_move,
        var_halflife_ms=int(e.var_halflife),
    )


def risk_settings(cfg: Config) -> RiskSettings:
    """The evaluation's VaR, budget and regime settings from ``[risk]``."""
    r = cfg.risk
    return RiskSettings(
        var_confidence=r.var_confidence,
        var_horizon_ms=int(r.var_horizon),
        budgets=r.budgets,
        var_scenarios=r.var_scenarios,
        scenario_interval_ms=int(r.scenario_interval),
        regime_halflife_ms=int(r.regime_halflife),
        margin=_margin_settings(cfg),
        max_move=cfg.margin.max_move,
        recompute_distance=cfg.margin.recompute_distance,
        recompute_interval_ms=int(cfg.margin.recompute_interval),
        actions=ActionSettings(
            lookback_ms=int(cfg.actions.lookback),
            rebalance_method=cfg.actions.rebalance_method,
            rebalance_scale=cfg.actions.rebalance_scale,
            backtest_horizon_ms=int(cfg.actions.backtest_horizon),
            stress_correlation=cfg.actions.stress_correlation,
            stress_vol_scale=cfg.actions.stress_vol_scale,
            refresh_ms=int(r.scenario_interval),
            refresh_spread=max(int(r.scenario_interval) // max(int(r.eval_interval), 1), 1),
            delta_limits={
                a: lim.delta_usd for a, lim in cfg.limits.items() if lim.delta_usd is not None
            },
        ),
    )


def _margin_settings(cfg: Config) -> MarginSettings:
    m = cfg.margin
    return MarginSettings(
        price_range=m.price_range,
        price_steps=m.price_steps,
        vol_range_up=m.vol_range_up,
        vol_range_down=m.vol_range_down,
        short_term_vega_power=m.short_term_vega_power,
        long_term_vega_power=m.long_term_vega_power,
        min_days=m.min_days,
        min_vol_shock_up=m.min_vol_shock_up,
        extended_moves=m.extended_moves,
        extended_weight=m.extended_weight,
        aggregation=m.aggregation,
        mm_factor=m.mm_factor,
        dampener=m.dampener,
        delta_shock_threshold=m.delta_shock_threshold,
        max_delta_shock=m.max_delta_shock,
        delta_shock_slope=m.delta_shock_slope,
        underlyings={
            **DEFAULT_UNDERLYINGS,
            **{
                u: replace(DEFAULT_UNDERLYINGS.get(u, UnderlyingParams()), **_given(o))
                for u, o in m.underlyings.items()
            },
        },
        currencies={
            **DEFAULT_CURRENCIES,
            **{
                c: replace(DEFAULT_CURRENCIES.get(c, CurrencyParams()), **_given(o))
                for c, o in m.currencies.items()
            },
        },
        stresses=tuple(
            Stress(s.name, dict(s.moves), s.default_move, s.vol_shift) for s in m.stresses
        ),
    )


def _given(section: msgspec.Struct) -> dict[str, Any]:
    """The keys of a per-underlying or per-currency margin table that were set."""
    return {
        name: getattr(section, name)
        for name in section.__struct_fields__
        if getattr(section, name) is not None
    }
