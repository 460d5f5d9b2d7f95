"""The ``[[rules]]`` and ``[limits.<account>]`` sections: one config Struct per built-in rule.

Owned by the rule pack (``monitor.rules.pack`` builds each rule from its Struct);
``monitor.config`` places them in the file's schema. :data:`DEFAULT_RULES` is every rule
with its defaults, in pack order.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Final, Literal, TypeAlias, cast, get_args

import msgspec
from msgspec import Meta

from monitor.model.settings import Delay, Invalid, Section, show
from monitor.rules.machine import check_thresholds

__all__ = [
    "DEFAULT_RULES",
    "RULE_TYPES",
    "AbsorptionSpikeRule",
    "AccountLimits",
    "ConcentrationRule",
    "ConnectorDownRule",
    "CorrelationSpikeRule",
    "DistanceToCallRule",
    "DistanceToCallSigmasRule",
    "HedgeOffsetRule",
    "MarginUtilizationRule",
    "ModelMarginDivergenceRule",
    "NetDeltaLimitRule",
    "NetVegaLimitRule",
    "RiskDriftRule",
    "RuleConfig",
    "ScenarioMarginRule",
    "StaleDataRule",
    "StressedVarRatioRule",
    "Threshold",
    "VarBacktestRule",
    "VenueDeltaMismatchRule",
    "VenueVegaMismatchRule",
    "VolBreakRule",
    "VolVsImpliedRule",
]

#: A threshold in the figure's unit, or ``"off"``: the rule does not use that severity.
Threshold: TypeAlias = float | Literal["off"]
PositiveUsd = Annotated[float, Meta(gt=0)]


class _RuleBase(Section, frozen=True, kw_only=True, tag_field="name"):
    """Base of the ``[[rules]]`` union, tagged on ``name``: one class per built-in rule.

    The rule engine's semantics (``monitor.rules.machine``): a breach (the figure reaches
    ``warning`` or ``critical``, beyond them in the rule's ``direction``) lasting ``for``
    fires; the alert resolves once the figure is strictly back past ``clear``
    (hysteresis); after a resolve, a new non-critical episode waits ``cooldown``.

    To add a rule: subclass with ``tag="<name>"``, set ``direction`` and redeclare every
    threshold with the rule's default, add the class to :data:`RuleConfig`, document it in
    ``deploy/riskmon.example.toml`` and build it in ``monitor.rules.pack``.
    """

    direction: ClassVar[Literal["above", "below"]]
    enabled: bool = True
    warning: Threshold
    critical: Threshold
    clear: float
    for_: Delay = msgspec.field(name="for")
    cooldown: Delay

    def __post_init__(self) -> None:
        problem = check_thresholds(
            self.direction, self.warning_level, self.critical_level, self.clear
        )
        if problem is not None:
            raise Invalid((problem[0],), problem[1])

    @property
    def rule(self) -> str:
        """The rule's name (the ``name`` key)."""
        return cast(str, self.__struct_config__.tag)

    @property
    def warning_level(self) -> float | None:
        return None if self.warning == "off" else self.warning

    @property
    def critical_level(self) -> float | None:
        return None if self.critical == "off" else self.critical


class RiskDriftRule(_RuleBase, frozen=True, tag="risk_drift"):
    """Per account and underlying: |risk share - budget share| (fraction of the risk)."""

    direction = "above"
    warning: Threshold = 0.15
    critical: Threshold = 0.30
    clear: float = 0.10
    for_: Delay = msgspec.field(name="for", default=Delay("1m"))
    cooldown: Delay = Delay("15m")
    #: Below this portfolio volatility (USD, annualised) risk shares are noise (a
    #: delta-hedged book): the rule does not apply to the account.
    min_volatility_usd: Annotated[float, Meta(ge=0)] = 100_000.0


class ConcentrationRule(_RuleBase, frozen=True, tag="concentration"):
    """Per account: ``half_l1`` (share of risk away from budget) or ``max_abs_drift``."""

    direction = "above"
    warning: Threshold = 0.25
    critical: Threshold = 0.40
    clear: float = 0.20
    for_: Delay = msgspec.field(name="for", default=Delay("1m"))
    cooldown: Delay = Delay("15m")
    measure: Literal["half_l1", "max_abs_drift"] = "half_l1"
    #: As for ``risk_drift``: below this volatility (USD, annualised) it does not apply.
    min_volatility_usd: Annotated[float, Meta(ge=0)] = 100_000.0


class MarginUtilizationRule(_RuleBase, frozen=True, tag="margin_utilization"):
    """Per account: venue maintenance margin / equity (1 = margin call)."""

    direction = "above"
    warning: Threshold = 0.60
    critical: Threshold = 0.80
    clear: float = 0.55
    for_: Delay = msgspec.field(name="for", default=Delay("10s"))
    cooldown: Delay = Delay("10m")


class DistanceToCallRule(_RuleBase, frozen=True, tag="distance_to_call"):
    """Per account: the smaller uniform move (down or up, a fraction) reaching the call."""

    direction = "below"
    warning: Threshold = 0.15
    critical: Threshold = 0.08
    clear: float = 0.18
    for_: Delay = msgspec.field(name="for", default=Delay("10s"))
    cooldown: Delay = Delay("10m")


class DistanceToCallSigmasRule(_RuleBase, frozen=True, tag="distance_to_call_sigmas"):
    """Per account: the distance to the margin call in 1-day sigmas."""

    direction = "below"
    warning: Threshold = 3.0
    critical: Threshold = 2.0
    clear: float = 3.5
    for_: Delay = msgspec.field(name="for", default=Delay("10s"))
    cooldown: Delay = Delay("10m")


class ScenarioMarginRule(_RuleBase, frozen=True, tag="scenario_margin"):
    """Per account: scenario margin (worst scenario loss) / equity."""

    direction = "above"
    warning: Threshold = 0.50
    critical: Threshold = 0.80
    clear: float = 0.45
    for_: Delay = msgspec.field(name="for", default=Delay("30s"))
    cooldown: Delay = Delay("10m")


class VolBreakRule(_RuleBase, frozen=True, tag="vol_break"):
    """Per held underlying: fast/slow volatility ratio over its slow baseline."""

    direction = "above"
    warning: Threshold = 1.5
    critical: Threshold = 2.0
    clear: float = 1.25
    for_: Delay = msgspec.field(name="for", default=Delay("30s"))
    cooldown: Delay = Delay("15m")


class VolVsImpliedRule(_RuleBase, frozen=True, tag="vol_vs_implied"):
    """Per held underlying with options: realised volatility / the IV the book is marked at."""

    direction = "above"
    warning: Threshold = 1.25
    critical: Threshold = 1.5
    clear: float = 1.1
    for_: Delay = msgspec.field(name="for", default=Delay("1m"))
    cooldown: Delay = Delay("15m")


class CorrelationSpikeRule(_RuleBase, frozen=True, tag="correlation_spike"):
    """Book: average pairwise correlation minus its slow baseline."""

    direction = "above"
    warning: Threshold = 0.15
    critical: Threshold = 0.25
    clear: float = 0.10
    for_: Delay = msgspec.field(name="for", default=Delay("30s"))
    cooldown: Delay = Delay("15m")


class AbsorptionSpikeRule(_RuleBase, frozen=True, tag="absorption_spike"):
    """Book: absorption ratio minus its slow baseline."""

    direction = "above"
    warning: Threshold = 0.08
    critical: Threshold = 0.15
    clear: float = 0.05
    for_: Delay = msgspec.field(name="for", default=Delay("30s"))
    cooldown: Delay = Delay("15m")


class NetDeltaLimitRule(_RuleBase, frozen=True, tag="net_delta_limit"):
    """Per account with ``limits.<account>.delta_usd``: |net delta_usd| / the limit."""

    direction = "above"
    warning: Threshold = 0.8
    critical: Threshold = 1.0
    clear: float = 0.7
    for_: Delay = msgspec.field(name="for", default=Delay("10s"))
    cooldown: Delay = Delay("10m")


class NetVegaLimitRule(_RuleBase, frozen=True, tag="net_vega_limit"):
    """Per account with ``limits.<account>.vega``: |net vega| / the limit."""

    direction = "above"
    warning: Threshold = 0.8
    critical: Threshold = 1.0
    clear: float = 0.7
    for_: Delay = msgspec.field(name="for", default=Delay("10s"))
    cooldown: Delay = Delay("10m")


class HedgeOffsetRule(_RuleBase, frozen=True, tag="hedge_offset"):
    """Per account and underlying: hedged share ``1 - |sum delta_usd| / sum |delta_usd|``.

    Watched once it has been at or above ``clear`` with gross ``sum |delta_usd|`` at least
    ``min_gross_usd``; no longer watched when the gross falls below ``min_gross_usd``.
    """

    direction = "below"
    warning: Threshold = 0.75
    critical: Threshold = 0.50
    clear: float = 0.80
    for_: Delay = msgspec.field(name="for", default=Delay("1m"))
    cooldown: Delay = Delay("15m")
    min_gross_usd: Annotated[float, Meta(ge=0)] = 100_000.0


class StaleDataRule(_RuleBase, frozen=True, tag="stale_data"):
    """Per account and underlying: seconds since the oldest price a held position uses."""

    direction = "above"
    warning: Threshold = 60.0
    critical: Threshold = 300.0
    clear: float = 30.0
    for_: Delay = msgspec.field(name="for", default=Delay("10s"))
    cooldown: Delay = Delay("10m")


class ConnectorDownRule(_RuleBase, frozen=True, tag="connector_down"):
    """Per connector: 1 while disconnected, 0 while connected."""

    direction = "above"
    warning: Threshold = "off"
    critical: Threshold = 0.5
    clear: float = 0.5
    for_: Delay = msgspec.field(name="for", default=Delay("30s"))
    cooldown: Delay = Delay("5m")


class VenueDeltaMismatchRule(_RuleBase, frozen=True, tag="venue_delta_mismatch"):
    """Per account: |riskmon's delta_usd - the venue's| over the positions it publishes."""

    direction = "above"
    warning: Threshold = 25_000.0
    critical: Threshold = 100_000.0
    clear: float = 15_000.0
    for_: Delay = msgspec.field(name="for", default=Delay("1m"))
    cooldown: Delay = Delay("30m")


class VenueVegaMismatchRule(_RuleBase, frozen=True, tag="venue_vega_mismatch"):
    """Per account: |riskmon's vega - the venue's| (USD per vol point)."""

    direction = "above"
    warning: Threshold = 2_500.0
    critical: Threshold = 10_000.0
    clear: float = 1_500.0
    for_: Delay = msgspec.field(name="for", default=Delay("1m"))
    cooldown: Delay = Delay("30m")


class ModelMarginDivergenceRule(_RuleBase, frozen=True, tag="model_margin_divergence"):
    """Per account: how far riskmon's model maintenance margin and the venue's disagree,
    ``max(r, 1/r) - 1`` with ``r`` their ratio (0.25 = one is 25% above the other).

    Only for the accounts listed in ``accounts``: those the venue margins with portfolio
    margin (Deribit S:PM), where the two should agree. An account on standard margin
    would diverge by design.
    """

    direction = "above"
    warning: Threshold = 0.25
    critical: Threshold = 0.5
    clear: float = 0.2
    for_: Delay = msgspec.field(name="for", default=Delay("2m"))
    cooldown: Delay = Delay("30m")
    accounts: tuple[str, ...] = ()


class VarBacktestRule(_RuleBase, frozen=True, tag="var_backtest"):
    """Per account: the VaR backtest's Basel zone as a number (0 green, 1 yellow, 2 red)."""

    direction = "above"
    warning: Threshold = 1.0
    critical: Threshold = 2.0
    clear: float = 1.0
    for_: Delay = msgspec.field(name="for", default=Delay("0s"))
    cooldown: Delay = Delay("1h")


class StressedVarRatioRule(_RuleBase, frozen=True, tag="stressed_var_ratio"):
    """Per account: stressed VaR / VaR (delta-normal): how much the book leans on
    diversification that a correlation crisis takes away."""

    direction = "above"
    warning: Threshold = 3.0
    critical: Threshold = 4.0
    clear: float = 2.8
    for_: Delay = msgspec.field(name="for", default=Delay("5m"))
    cooldown: Delay = Delay("30m")


#: Every built-in rule, in pack order (the order alerts are reported in).
RuleConfig: TypeAlias = (
    RiskDriftRule
    | ConcentrationRule
    | MarginUtilizationRule
    | DistanceToCallRule
    | DistanceToCallSigmasRule
    | ScenarioMarginRule
    | VolBreakRule
    | VolVsImpliedRule
    | CorrelationSpikeRule
    | AbsorptionSpikeRule
    | NetDeltaLimitRule
    | NetVegaLimitRule
    | HedgeOffsetRule
    | StaleDataRule
    | ConnectorDownRule
    | VenueDeltaMismatchRule
    | VenueVegaMismatchRule
    | ModelMarginDivergenceRule
    | VarBacktestRule
    | StressedVarRatioRule
)

RULE_TYPES: Final[dict[str, type[RuleConfig]]] = {
    cast(str, cls.__struct_config__.tag): cls for cls in get_args(RuleConfig)
}


class AccountLimits(Section, frozen=True):
    """Limits of one account (``[limits.<account>]``); unset = that rule is off for it."""

    #: |net delta| limit, USD (rule ``net_delta_limit``).
    delta_usd: PositiveUsd | None = None
    #: |net vega| limit, USD per vol point (rule ``net_vega_limit``).
    vega: PositiveUsd | None = None

    def __post_init__(self) -> None:
        for name in ("delta_usd", "vega"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise Invalid((name,), f"expected a finite limit; got {show(v)}")


#: Every built-in rule with its defaults, in pack order.
DEFAULT_RULES: Final[tuple[RuleConfig, ...]] = tuple(cls() for cls in RULE_TYPES.values())
