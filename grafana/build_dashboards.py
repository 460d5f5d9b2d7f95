"""riskmon's Grafana dashboards, generated from code and committed as JSON.

    .venv/bin/python grafana/build_dashboards.py           # (re)write dashboards/*.json
    .venv/bin/python grafana/build_dashboards.py --check   # exit 1 if the JSON is stale

It needs ``grafana-foundation-sdk`` (pinned in the ``test`` extra): run it with the
interpreter of the venv ``bash tests/run.sh`` makes, or after
``pip install -e '.[test]'``; a bare ``python3`` without it exits 2 saying so.

Built with grafana-foundation-sdk (the ``dashboard`` v1 JSON model that Grafana 11 reads).
The output is deterministic: fixed uids and panel ids, sorted keys, two-space indent and a
trailing newline, so a change to this file shows up as a reviewable diff of the JSON.

Metric names and labels: ``monitor/serve/metrics.py``'s docstring (``tests/test_grafana.py`` checks
every name used here against it). Units: README "How it computes".
Every query goes through the ``datasource`` template variable, whose default is the
provisioned Prometheus datasource (``grafana/provisioning/datasources/prometheus.yaml``,
uid :data:`DATASOURCE_UID`).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# The v1 dashboard builders warn at import time that a v2 schema exists; Grafana 11 (the
# image in deploy/compose.yaml) reads v1.
try:
    import grafana_foundation_sdk  # noqa: F401
except ModuleNotFoundError:  # pragma: no cover - the test venv has it
    if __name__ != "__main__":
        raise
    print(
        "build_dashboards.py needs grafana-foundation-sdk (the 'test' extra): run "
        "`.venv/bin/python grafana/build_dashboards.py` after `bash tests/run.sh`, or "
        "`pip install -e '.[test]'` first",
        file=sys.stderr,
    )
    sys.exit(2)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard as dash
    from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as model
    from grafana_foundation_sdk.models.prometheus import PromQueryFormat

__all__ = ["DASHBOARD_DIR", "DATASOURCE_UID", "build_dashboards", "main", "stale_files"]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

#: The provisioned Prometheus datasource: the ``datasource`` variable's default.
DATASOURCE_UID: Final = "riskmon-prometheus"
DATASOURCE_NAME: Final = "Prometheus"

#: Every panel and query points at the template variable, never at a fixed datasource.
DS: Final = common.DataSourceRef(type_val="prometheus", uid="${datasource}")

GRID_COLUMNS: Final = 24
TAGS: Final = ["riskmon"]

# Filters on the template variables.
ACC: Final = 'account=~"$account"'
UND: Final = 'underlying=~"$underlying"'
ACC_UND: Final = f"{ACC}, {UND}"
INST: Final = 'instance=~"$instance"'
RATE: Final = "$__rate_interval"

# Colours (Grafana palette names).
GREEN, ORANGE, RED, BLUE = "green", "orange", "red", "blue"

Steps = Sequence[tuple[float | None, str]]


# -- panel helpers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Q:
    """One PromQL query: ``expr`` with its legend (``{{label}}`` templates)."""

    expr: str
    legend: str = ""


def _ref_id(i: int) -> str:
    return chr(ord("A") + i)


def _targets(
    queries: Sequence[Q], *, instant: bool = False, as_table: bool = False
) -> list[prometheus.Dataquery]:
    out = []
    for i, q in enumerate(queries):
        target = prometheus.Dataquery().expr(q.expr).ref_id(_ref_id(i)).datasource(DS)
        if q.legend:
            target = target.legend_format(q.legend)
        if instant:
            target = target.instant()
        if as_table:
            target = target.format(PromQueryFormat.TABLE)
        out.append(target)
    return out


def _thresholds(steps: Steps) -> dash.ThresholdsConfig:
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _mapping(values: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    """Value -> (text, colour) for 0/1 gauges."""
    return [
        model.ValueMap(
            options={
                key: model.ValueMappingResult(text=text, color=color, index=i)
                for i, (key, (text, color)) in enumerate(values.items())
            }
        )
    ]


def _dashed_line() -> list[model.DynamicConfigValue]:
    return [
        model.DynamicConfigValue(
            id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}
        )
    ]


def graph(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Q],
    *,
    thresholds: Steps | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    soft_max: float | None = None,
    decimals: int | None = None,
    log_scale: bool = False,
    bars: bool = False,
    dashed: str | None = None,
    wide: str | None = None,
    legend_table: bool = False,
) -> timeseries.Panel:
    """A time series panel.

    ``dashed``/``wide``: regexps of series (by legend) drawn dashed / with a thicker line,
    e.g. a baseline next to its figure. Thresholds are drawn as dashed lines.
    """
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .targets(list(_targets(queries)))
        .line_width(1)
        .fill_opacity(0 if not bars else 80)
        .show_points(common.VisibilityMode.NEVER)
        .span_nulls(False)
        .tooltip(
            common_builders.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
        .legend(
            common_builders.VizLegendOptions()
            .show_legend(True)
            .placement(common.LegendPlacement.BOTTOM)
            .display_mode(
                common.LegendDisplayMode.TABLE if legend_table else common.LegendDisplayMode.LIST
            )
            .calcs(["lastNotNull", "min", "max"] if legend_table else [])
        )
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS)
    if thresholds is not None:
        panel = panel.thresholds(_thresholds(thresholds)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(
                common.GraphThresholdsStyleMode.DASHED
            )
        )
    # Series keep palette colours; thresholds only draw lines (not the thresholds colour mode).
    panel = panel.color_scheme(dash.FieldColor().mode(model.FieldColorModeId.PALETTE_CLASSIC))
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    if soft_max is not None:
        panel = panel.axis_soft_max(soft_max)
    if decimals is not None:
        panel = panel.decimals(decimals)
    if log_scale:
        panel = panel.scale_distribution(
            common_builders.ScaleDistributionConfig().type(common.ScaleDistribution.LOG).log(10)
        )
    if dashed is not None:
        panel = panel.override_by_regexp(dashed, _dashed_line())
    if wide is not None:
        panel = panel.override_by_regexp(
            wide, [model.DynamicConfigValue(id_val="custom.lineWidth", value=2)]
        )
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Q],
    *,
    thresholds: Steps,
    mappings: dict[str, tuple[str, str]] | None = None,
    decimals: int | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    show_name: bool = True,
) -> stat.Panel:
    """A stat panel of each series' last value, coloured by ``thresholds``."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .targets(list(_targets(queries, instant=True)))
        .thresholds(_thresholds(thresholds))
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.THRESHOLDS))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(
            common.BigValueTextMode.VALUE_AND_NAME if show_name else common.BigValueTextMode.VALUE
        )
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if mappings is not None:
        panel = panel.mappings(_mapping(mappings))
    if decimals is not None:
        panel = panel.decimals(decimals)
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


@dataclass(frozen=True)
class Column:
    """One query of a table: a value column named ``name`` in ``unit``."""

    name: str
    expr: str
    unit: str
    thresholds: Steps | None = None


def grid(
    title: str, description: str, keys: Sequence[str], columns: Sequence[Column]
) -> table.Panel:
    """A table of instant values, one row per label set ``keys``, one column per query."""
    queries = [Q(c.expr) for c in columns]
    # One query: Grafana names the value field "Value"; several: "Value #<refId>".
    fields = (
        ["Value"] if len(columns) == 1 else [f"Value #{_ref_id(i)}" for i in range(len(columns))]
    )
    hidden = {"Time": True, "__name__": True, "job": True, "instance": True}
    order = {name: i for i, name in enumerate([*keys, *fields])}
    panel = (
        table.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .targets(list(_targets(queries, instant=True, as_table=True)))
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize", options={"excludeByName": hidden, "indexByName": order}
            )
        )
        .sort_by([common_builders.TableSortByFieldState().display_name(keys[0])])
        .cell_height(common.TableCellHeight.SM)
    )
    for field_name, column in zip(fields, columns, strict=True):
        props = [
            model.DynamicConfigValue(id_val="displayName", value=column.name),
            model.DynamicConfigValue(id_val="unit", value=column.unit),
        ]
        if column.thresholds is not None:
            props += [
                model.DynamicConfigValue(
                    id_val="thresholds", value=_thresholds(column.thresholds).build()
                ),
                model.DynamicConfigValue(
                    id_val="custom.cellOptions", value={"type": "color-background"}
                ),
            ]
        panel = panel.override_by_name(field_name, props)
    return panel


# -- layout -------------------------------------------------------------------------------

AnyPanel = timeseries.Panel | stat.Panel | table.Panel


@dataclass
class Board:
    """A dashboard under construction: rows of panels placed left to right on 24 columns.

    Panel ids count from 1 in placement order; a panel that does not fit on the current line
    starts a new one below the tallest panel of the line.
    """

    builder: dash.Dashboard
    _x: int = 0
    _y: int = 0
    _line_height: int = 0
    _next_id: int = 1

    def _newline(self) -> None:
        self._y += self._line_height
        self._x = 0
        self._line_height = 0

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str) -> Board:
        if self._x:
            self._newline()
        self.builder.with_row(
            dash.Row(title)
            .id(self._id())
            .grid_pos(model.GridPos(h=1, w=GRID_COLUMNS, x=0, y=self._y))
        )
        self._y += 1
        return self

    def add(self, panel: AnyPanel, w: int, h: int = 8) -> Board:
        if self._x + w > GRID_COLUMNS:
            self._newline()
        panel.id(self._id()).grid_pos(model.GridPos(h=h, w=w, x=self._x, y=self._y))
        self.builder.with_panel(panel)
        self._x += w
        self._line_height = max(self._line_height, h)
        return self


def _datasource_variable() -> dash.DatasourceVariable:
    return (
        dash.DatasourceVariable("datasource")
        .label("Data source")
        .type("prometheus")
        .current(model.VariableOption(selected=True, text=DATASOURCE_NAME, value=DATASOURCE_UID))
    )


def _label_variable(
    name: str, label: str, metric: str, label_name: str, *, all_value: str | None = ".+"
) -> dash.QueryVariable:
    """A multi-value variable over ``label_values(metric, label_name)``, "All" by default.

    ``all_value`` ``.+`` keeps "All" a short regexp with hundreds of accounts; ``None`` lets
    Grafana list the values (for labels such as ``instance`` that other jobs share).
    """
    query = f"label_values({metric}, {label_name})"
    variable = (
        dash.QueryVariable(name)
        .label(label)
        .datasource(DS)
        .query(query)
        .definition(query)
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.NATURAL_ASC)
        .multi(True)
        .include_all(True)
        .current(model.VariableOption(selected=True, text=["All"], value=["$__all"]))
    )
    if all_value is not None:
        variable = variable.all_value(all_value)
    return variable


def _board(uid: str, title: str, description: str) -> Board:
    builder = (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .readonly()  # provisioned from code: change grafana/build_dashboards.py instead
        .timezone("utc")
        .time("now-6h", "now")
        .refresh("10s")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .link(
            dash.DashboardLink("riskmon")
            .type(model.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(_datasource_variable())
    )
    return Board(builder)


# -- dashboards ---------------------------------------------------------------------------


def market() -> dash.Dashboard:
    b = _board(
        "riskmon-market",
        "riskmon / Market",
        "Index prices, rolling volatility and correlation, and regime figures per underlying.",
    )
    b.builder.with_variable(
        _label_variable("underlying", "Underlying", "riskmon_asset_price_usd", "underlying")
    )
    corr = 'underlying_a=~"$underlying", underlying_b=~"$underlying"'

    b.row("Prices")
    b.add(
        graph(
            "Index price",
            "USD index price of each underlying (the last index tick at the snapshot time). "
            "Log scale, so underlyings of different price levels share the axis. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_asset_price_usd{{{UND}}}", "{{underlying}}")],
            log_scale=True,
        ),
        w=16,
    )
    b.add(
        graph(
            "Price age",
            "Snapshot time minus the event time of the last index tick, per underlying. "
            "Beyond 60 s (RiskmonPriceStale) exposures are valued on a stale price and "
            "beyond estimator.max_gap the estimator restarts its sample grid. Unit: seconds.",
            "s",
            [Q(f"riskmon_asset_price_age_seconds{{{UND}}}", "{{underlying}}")],
            thresholds=[(None, GREEN), (10, ORANGE), (60, RED)],
            minimum=0,
        ),
        w=8,
    )

    b.row("Volatility and correlation")
    b.add(
        graph(
            "Volatility: slow vs fast estimator",
            "EWMA volatility of log returns, annualised on 365 days, as a decimal (0.55 = 55%). "
            "slow: estimator.halflife (thick line); fast: fast_halflife, which reacts first "
            "when volatility moves. Unit: percent per year.",
            "percentunit",
            [Q(f"riskmon_asset_volatility{{{UND}}}", "{{underlying}} {{estimator}}")],
            minimum=0,
            wide=".* slow$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Correlation pairs",
            "Slow-estimator EWMA correlation of log returns for each pair of underlyings "
            "(each unordered pair once). Between -1 and 1, no unit.",
            "none",
            [Q(f"riskmon_asset_correlation{{{corr}}}", "{{underlying_a}} / {{underlying_b}}")],
            minimum=-1,
            maximum=1,
            decimals=2,
        ),
        w=12,
    )
    b.add(
        graph(
            "Returns absorbed",
            "Number of log returns the slow estimator has absorbed per underlying (one per "
            "sample_interval grid point). It restarts with the estimator. Unit: count.",
            "short",
            [Q(f"riskmon_asset_returns{{{UND}}}", "{{underlying}}")],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        single(
            "Estimator warm",
            "warm once the underlying's returns span estimator.warmup; until then its "
            "volatility and correlation are not reliable (1 = warm, 0 = warming up).",
            "none",
            [Q(f"riskmon_asset_estimator_warm{{{UND}}}", "{{underlying}}")],
            thresholds=[(None, ORANGE), (1, GREEN)],
            mappings={"0": ("warming up", ORANGE), "1": ("warm", GREEN)},
        ),
        w=12,
    )
    b.add(
        single(
            "Index stale",
            "1 while the underlying's index has been silent longer than estimator.max_gap: "
            "it contributes no return (not a calm market) until it ticks again.",
            "none",
            [Q(f"riskmon_asset_stale{{{UND}}}", "{{underlying}}")],
            thresholds=[(None, GREEN), (1, RED)],
            mappings={"0": ("fresh", GREEN), "1": ("stale", RED)},
        ),
        w=12,
    )

    b.row("Regime (solid: now; dashed: its slow EWMA baseline)")
    b.add(
        graph(
            "Vol ratio: fast / slow",
            "Fast over slow EWMA volatility per underlying (100% = equal; above 100% "
            "volatility is rising). Dashed: the figure's slow baseline. Unit: ratio, %.",
            "percentunit",
            [
                Q(f"riskmon_regime_vol_ratio{{{UND}}}", "{{underlying}}"),
                Q(f"riskmon_regime_vol_ratio_baseline{{{UND}}}", "{{underlying}} baseline"),
            ],
            thresholds=[(None, GREEN), (1.5, ORANGE), (2, RED)],
            minimum=0,
            dashed=".* baseline$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Realised / implied volatility",
            "Slow realised volatility over the ATM implied volatility the book is marked at, "
            "per underlying. Above 100% the options are marked below what the market "
            "realises. Dashed: the figure's slow baseline. Unit: ratio, %.",
            "percentunit",
            [
                Q(f"riskmon_regime_realised_to_implied{{{UND}}}", "{{underlying}}"),
                Q(
                    f"riskmon_regime_realised_to_implied_baseline{{{UND}}}",
                    "{{underlying}} baseline",
                ),
            ],
            thresholds=[(None, GREEN), (1, ORANGE), (1.5, RED)],
            minimum=0,
            dashed=".* baseline$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Average correlation",
            "Mean off-diagonal correlation over the underlyings with a fully known "
            "correlation matrix. A jump means diversification is disappearing. Dashed: "
            "its slow baseline. Between -1 and 1, no unit.",
            "none",
            [
                Q("riskmon_regime_average_correlation", "average correlation"),
                Q("riskmon_regime_average_correlation_baseline", "baseline"),
            ],
            thresholds=[(None, GREEN), (0.7, ORANGE), (0.9, RED)],
            minimum=-1,
            maximum=1,
            decimals=2,
            dashed="^baseline$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Absorption ratio",
            "Share of the correlation matrix's trace in its top ceil(n/5) eigenvalues "
            "(Kritzman et al., 2011): near 100% when a few factors drive every underlying. "
            "Dashed: its slow baseline. Unit: share, %.",
            "percentunit",
            [
                Q("riskmon_regime_absorption_ratio", "absorption ratio"),
                Q("riskmon_regime_absorption_ratio_baseline", "baseline"),
            ],
            thresholds=[(None, GREEN), (0.8, ORANGE), (0.9, RED)],
            minimum=0,
            maximum=1,
            dashed="^baseline$",
        ),
        w=12,
    )
    return b.builder


def risk() -> dash.Dashboard:
    b = _board(
        "riskmon-risk",
        "riskmon / Risk",
        "Per-account exposures, Greeks, risk parity (share vs budget), VaR/ES and the whole book.",
    )
    b.builder.with_variable(
        _label_variable("account", "Account", "riskmon_account_exposure_usd", "account")
    ).with_variable(
        _label_variable(
            "underlying",
            "Underlying",
            f"riskmon_account_exposure_usd{{{ACC}}}",
            "underlying",
        )
    )

    b.row("Exposure and Greeks")
    b.add(
        graph(
            "Exposure per underlying",
            "Net delta in USD per account and underlying: delta_usd (delta x F, the forward "
            "or future price the position moves with; the index for spot and perpetuals) "
            "summed over spot, perpetuals, futures and options. Positive = long. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_exposure_usd{{{ACC_UND}}}", "{{account}} {{underlying}}")],
            legend_table=True,
        ),
        w=24,
        h=9,
    )
    greeks = [
        (
            "Delta",
            "delta_usd",
            "USD delta: delta x F (forward, future or index), summed. Unit: USD.",
        ),
        (
            "Gamma",
            "gamma_usd",
            "gamma_usd: the USD change of delta_usd for a 1% move of the underlyings "
            "(gamma x F^2 / 100). Unit: USD per 1% move.",
        ),
        (
            "Vega",
            "vega_usd",
            "Value change for +1 vol point (0.01) of implied volatility. Unit: USD per vol point.",
        ),
        (
            "Theta",
            "theta_usd",
            "Value change per calendar day of time decay (negative when the account is "
            "long options). Unit: USD per day.",
        ),
    ]
    for name, suffix, text in greeks:
        b.add(
            graph(
                name,
                f"Per account, all positions (quantity and multiplier included). {text}",
                "currencyUSD",
                [Q(f"riskmon_account_{suffix}{{{ACC}}}", "{{account}}")],
            ),
            w=6,
        )

    b.row("Portfolio volatility and risk parity")
    b.add(
        graph(
            "Portfolio volatility",
            "sigma_p = sqrt(x' S x): the account's 1-sigma annualised P&L volatility from its "
            "exposure vector x and the slow EWMA covariance S. Unit: USD per year.",
            "currencyUSD",
            [Q(f"riskmon_account_volatility_usd{{{ACC}}}", "{{account}}")],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Risk share vs budget",
            "Euler share p_i = x_i (S x)_i / sigma_p^2 of each underlying in the account's "
            "volatility (sums to 100%; a hedge is negative), solid, against the budget b_i, "
            "dashed (risk.budgets; default equal over held underlyings). Unit: share, %.",
            "percentunit",
            [
                Q(f"riskmon_account_risk_share{{{ACC_UND}}}", "{{account}} {{underlying}}"),
                Q(
                    f"riskmon_account_risk_budget{{{ACC_UND}}}",
                    "{{account}} {{underlying}} budget",
                ),
            ],
            dashed=".* budget$",
        ),
        w=16,
    )
    b.add(
        graph(
            "Risk drift (share - budget)",
            "p_i - b_i per underlying: how far each asset's risk share has moved from its "
            "budget, e.g. after a volatility or correlation shift (sums to 0). Dashed lines: "
            "+-10% and +-20%. Unit: share, percentage points.",
            "percentunit",
            [Q(f"riskmon_account_risk_drift{{{ACC_UND}}}", "{{account}} {{underlying}}")],
            thresholds=[(None, RED), (-0.2, ORANGE), (-0.1, GREEN), (0.1, ORANGE), (0.2, RED)],
        ),
        w=12,
    )
    b.add(
        graph(
            "Risk concentration",
            "How far the account is from its risk budget overall. max_abs_drift: the largest "
            "|p_i - b_i|; half_l1: half the sum of |p_i - b_i| (0 on budget, 100% when "
            "shares and budget do not overlap). Unit: share, %.",
            "percentunit",
            [Q(f"riskmon_account_risk_concentration{{{ACC}}}", "{{account}} {{measure}}")],
            thresholds=[(None, GREEN), (0.1, ORANGE), (0.2, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        grid(
            "Risk budget now",
            "Last value per account and underlying: exposure (USD), risk share and budget "
            "(%), drift (percentage points, coloured at +-10% / +-20%) and delta-normal "
            "component VaR (USD, 1-day).",
            ["account", "underlying"],
            [
                Column("exposure", f"riskmon_account_exposure_usd{{{ACC_UND}}}", "currencyUSD"),
                Column("share", f"riskmon_account_risk_share{{{ACC_UND}}}", "percentunit"),
                Column("budget", f"riskmon_account_risk_budget{{{ACC_UND}}}", "percentunit"),
                Column(
                    "drift",
                    f"riskmon_account_risk_drift{{{ACC_UND}}}",
                    "percentunit",
                    [(None, RED), (-0.2, ORANGE), (-0.1, GREEN), (0.1, ORANGE), (0.2, RED)],
                ),
                Column(
                    "component VaR",
                    f"riskmon_account_component_var_usd{{{ACC_UND}}}",
                    "currencyUSD",
                ),
            ],
        ),
        w=24,
        h=9,
    )

    b.row("VaR and ES (1-day, 99% by default: risk.var_horizon, risk.var_confidence)")
    var_text = (
        "Loss over risk.var_horizon at risk.var_confidence, a positive number (USD), by "
        "method: delta_normal (parametric, exposures only), delta_gamma (Cornish-Fisher, "
        "adds gamma) and full_revaluation (scenario P&L, every option repriced)."
    )
    b.add(
        graph(
            "Value at Risk",
            f"{var_text} Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_var_usd{{{ACC}}}", "{{account}} {{method}}")],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Expected shortfall",
            "Average loss beyond the VaR (same horizon, confidence and methods as VaR); at "
            "least the VaR. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_es_usd{{{ACC}}}", "{{account}} {{method}}")],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Component VaR",
            "Delta-normal VaR split per underlying by Euler allocation (sums to the "
            "account's delta-normal VaR; a hedge is negative). Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_component_var_usd{{{ACC_UND}}}", "{{account}} {{underlying}}")],
        ),
        w=8,
    )

    b.row("From alarm to action: why the shares moved, the rebalance, the hedge")
    b.add(
        graph(
            "Share change since the reference, by cause",
            "Change of each underlying's risk share since the attribution's reference "
            "(the account's state actions.lookback ago, 24 h by default; before that, at "
            "start), split exactly (Shapley) into positions, volatility and correlation "
            "(residual: rounding). Unit: share, percentage points.",
            "percentunit",
            [
                Q(
                    f"riskmon_account_risk_share_change{{{ACC_UND}}}",
                    "{{account}} {{underlying}} {{factor}}",
                )
            ],
            legend_table=True,
        ),
        w=12,
    )
    b.add(
        graph(
            "Rebalance back to budget",
            "Exposure change per underlying that puts every risk share on its budget at the "
            "current covariance (actions.rebalance_method, scaled to keep the account's "
            "volatility or gross: actions.rebalance_scale), solid; the target exposure, "
            "dashed. The report's suggestions.rebalance gives the contracts. Unit: USD.",
            "currencyUSD",
            [
                Q(
                    f"riskmon_account_rebalance_change_usd{{{ACC_UND}}}",
                    "{{account}} {{underlying}} change",
                ),
                Q(
                    f"riskmon_account_rebalance_target_usd{{{ACC_UND}}}",
                    "{{account}} {{underlying}} target",
                ),
            ],
            dashed=".* target$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Hedge: delta change",
            "Delta change per underlying the hedge suggests: to the account's delta limit "
            "(limits.<account>.delta_usd) when beyond it, flat without a limit, in the "
            "account's perpetual (else spot). Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_hedge_change_usd{{{ACC_UND}}}", "{{account}} {{underlying}}")],
        ),
        w=12,
    )
    b.add(
        graph(
            "Hedge: residual gamma and vega",
            "What a delta hedge leaves (linear instruments carry no convexity): the account's "
            "gamma_usd (USD per 1% move) and vega (USD per vol point). Unit: USD.",
            "currencyUSD",
            [
                Q(f"riskmon_account_hedge_residual_gamma_usd{{{ACC}}}", "{{account}} gamma"),
                Q(f"riskmon_account_hedge_residual_vega_usd{{{ACC}}}", "{{account}} vega"),
            ],
        ),
        w=12,
    )

    b.row("Is the model right? VaR backtest and stressed VaR")
    b.add(
        graph(
            "VaR backtest: exceptions vs expected",
            "Over the rolling 250 periods of actions.backtest_horizon: periods whose held P&L "
            "(the positions held at the period start, revalued at its end) lost more than "
            "the VaR predicted for it, solid, against what a right model expects, dashed, "
            "and the periods counted. Unit: periods.",
            "short",
            [
                Q(f"riskmon_account_var_backtest_exceptions{{{ACC}}}", "{{account}} exceptions"),
                Q(
                    f"riskmon_account_var_backtest_expected_exceptions{{{ACC}}}",
                    "{{account}} expected",
                ),
                Q(f"riskmon_account_var_backtest_observations{{{ACC}}}", "{{account}} periods"),
            ],
            dashed=".* expected$",
            minimum=0,
        ),
        w=8,
    )
    b.add(
        single(
            "VaR backtest zone",
            "Basel traffic light of the backtest: green, yellow (5-9 exceptions in 250 at "
            "99%), red (10 or more); 'not yet' before 50 periods. Rule var_backtest alerts "
            "on yellow and red.",
            "none",
            [
                Q(
                    f"riskmon_account_var_backtest_zone{{{ACC}}} or "
                    f"(0 * riskmon_account_var_backtest_observations{{{ACC}}} - 1)",
                    "{{account}}",
                )
            ],
            thresholds=[(None, BLUE), (0, GREEN), (1, ORANGE), (2, RED)],
            mappings={
                "-1": ("not yet", BLUE),
                "0": ("green", GREEN),
                "1": ("yellow", ORANGE),
                "2": ("red", RED),
            },
        ),
        w=8,
    )
    b.add(
        graph(
            "Stressed VaR vs VaR",
            "Delta-normal VaR with every correlation at actions.stress_correlation (0.9) and "
            "every volatility x actions.stress_vol_scale (1.5), solid, beside the "
            "delta-normal VaR, dashed. Unit: USD.",
            "currencyUSD",
            [
                Q(f"riskmon_account_stressed_var_usd{{{ACC}}}", "{{account}} stressed"),
                Q(
                    f'riskmon_account_var_usd{{{ACC}, method="delta_normal"}}',
                    "{{account}} normal",
                ),
            ],
            dashed=".* normal$",
            minimum=0,
        ),
        w=4,
    )
    b.add(
        graph(
            "Stressed VaR ratio",
            "Stressed VaR over the delta-normal VaR: how much the book leans on "
            "diversification a correlation crisis takes away (one underlying alone reads "
            "the vol scale, 150%). Rule stressed_var_ratio: 300% / 400%. Unit: ratio, %.",
            "percentunit",
            [Q(f"riskmon_account_stressed_var_ratio{{{ACC}}}", "{{account}}")],
            thresholds=[(None, GREEN), (3.0, ORANGE), (4.0, RED)],
            minimum=0,
        ),
        w=4,
    )

    b.row("Book: all accounts of each riskmon instance")
    b.add(
        single(
            "Book Greeks",
            "The whole book of each instance (riskmon_book_*, not a sum over the accounts "
            "selected above). delta and gamma (per 1% move), vega (per vol point), theta "
            "(per day). Unit: USD.",
            "currencyUSD",
            [
                Q("riskmon_book_delta_usd", "delta {{instance}}"),
                Q("riskmon_book_gamma_usd", "gamma {{instance}}"),
                Q("riskmon_book_vega_usd", "vega {{instance}}"),
                Q("riskmon_book_theta_usd", "theta {{instance}}"),
            ],
            thresholds=[(None, BLUE)],
        ),
        w=24,
        h=4,
    )
    b.add(
        graph(
            "Book volatility",
            "sigma_p of the whole book (all accounts netted), annualised. Less than the sum "
            "of the accounts' figures when they offset. Unit: USD per year.",
            "currencyUSD",
            [Q("riskmon_book_volatility_usd", "{{instance}}")],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Book VaR and ES",
            "VaR (solid) and ES (dashed) of the whole book by method; book figures do not add "
            "up over accounts. 1-day, 99% by default. Unit: USD.",
            "currencyUSD",
            [
                Q("riskmon_book_var_usd", "VaR {{method}}"),
                Q("riskmon_book_es_usd", "ES {{method}}"),
            ],
            minimum=0,
            dashed="^ES .*",
        ),
        w=8,
    )
    b.add(
        graph(
            "Book exposure",
            "Net delta in USD per underlying over every account of the book. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_book_exposure_usd{{{UND}}}", "{{underlying}}")],
        ),
        w=8,
    )
    return b.builder


def margin() -> dash.Dashboard:
    b = _board(
        "riskmon-margin",
        "riskmon / Margin",
        "Equity, margin requirements, utilisation and headroom per account (accounts that "
        "send account events).",
    )
    b.builder.with_variable(
        _label_variable("account", "Account", "riskmon_account_equity_usd", "account")
    )
    util = [(None, GREEN), (0.5, ORANGE), (0.8, RED)]

    b.row("Now")
    b.add(
        single(
            "Margin utilisation",
            "Maintenance margin / equity per account: 100% is a margin call. Orange from "
            "50%, red from 80%. Unit: %.",
            "percentunit",
            [Q(f"riskmon_account_margin_utilization_ratio{{{ACC}}}", "{{account}}")],
            thresholds=util,
            minimum=0,
            maximum=1,
        ),
        w=10,
        h=6,
    )
    b.add(
        single(
            "Headroom",
            "Equity - maintenance margin per account: the loss the account can take before "
            "a margin call. Red when negative. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_margin_headroom_usd{{{ACC}}}", "{{account}}")],
            thresholds=[(None, RED), (0, GREEN)],
        ),
        w=8,
        h=6,
    )
    b.add(
        single(
            "Margin data age",
            "Time since the account's last account event (equity and margin from the "
            "venue): the figures on this dashboard are that old. Unit: seconds.",
            "s",
            [Q(f"riskmon_account_margin_age_seconds{{{ACC}}}", "{{account}}")],
            thresholds=[(None, GREEN), (60, ORANGE), (300, RED)],
        ),
        w=6,
        h=6,
    )

    b.row("History")
    b.add(
        graph(
            "Equity and margin requirements",
            "Equity (thick), initial margin and maintenance margin (dashed) per account, as "
            "the venue reports them. A margin call when equity falls to maintenance margin. "
            "Unit: USD.",
            "currencyUSD",
            [
                Q(f"riskmon_account_equity_usd{{{ACC}}}", "{{account}} equity"),
                Q(f"riskmon_account_initial_margin_usd{{{ACC}}}", "{{account}} initial margin"),
                Q(
                    f"riskmon_account_maintenance_margin_usd{{{ACC}}}",
                    "{{account}} maintenance margin",
                ),
            ],
            minimum=0,
            wide=".* equity$",
            dashed=".* maintenance margin$",
            legend_table=True,
        ),
        w=24,
        h=9,
    )
    b.add(
        graph(
            "Margin utilisation",
            "Maintenance margin / equity per account (100% = margin call). Dashed lines at "
            "50% and 80%. Unit: %.",
            "percentunit",
            [Q(f"riskmon_account_margin_utilization_ratio{{{ACC}}}", "{{account}}")],
            thresholds=util,
            minimum=0,
            soft_max=1,
        ),
        w=12,
    )
    b.add(
        graph(
            "Headroom",
            "Equity - maintenance margin per account (USD). Below 0: margin call. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_margin_headroom_usd{{{ACC}}}", "{{account}}")],
            thresholds=[(None, RED), (0, GREEN)],
        ),
        w=12,
    )
    b.add(
        graph(
            "1-day VaR / equity",
            "Full-revaluation VaR (1-day, 99% by default) as a share of equity: the part of "
            "the equity a bad day takes. Above 100% a bad day wipes the account out. Unit: %.",
            "percentunit",
            [
                Q(
                    f'riskmon_account_var_usd{{{ACC}, method="full_revaluation"}}'
                    " / on (job, instance, account) group_left"
                    f" riskmon_account_equity_usd{{{ACC}}}",
                    "{{account}}",
                )
            ],
            thresholds=[(None, GREEN), (0.5, ORANGE), (1, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        graph(
            "Margin data age",
            "Time since the account's last account event. Unit: seconds.",
            "s",
            [Q(f"riskmon_account_margin_age_seconds{{{ACC}}}", "{{account}}")],
            thresholds=[(None, GREEN), (60, ORANGE), (300, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.row("riskmon's own margin model")
    b.add(
        graph(
            "Distance to a margin call",
            "The smallest uniform move of all the account's underlyings, down (solid) and up "
            "(dashed), at which equity after full revaluation (IV held) falls to maintenance "
            "margin. 12% means a 12% move calls the account. A direction with no line cannot "
            "be called within the search range. Unit: %.",
            "percentunit",
            [
                Q(
                    f'riskmon_account_distance_to_call_ratio{{{ACC}, direction="down"}}',
                    "{{account}} down",
                ),
                Q(
                    f'riskmon_account_distance_to_call_ratio{{{ACC}, direction="up"}}',
                    "{{account}} up",
                ),
            ],
            thresholds=[(None, RED), (0.05, ORANGE), (0.15, GREEN)],
            minimum=0,
            dashed=".* up$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Distance to a margin call in 1-day sigmas",
            "The same distance over the 1-day standard deviation of a uniform move of the "
            "account's underlyings (exposure-weighted): below 3, a normal bad day calls it. "
            "Unit: sigmas.",
            "none",
            [
                Q(
                    f'riskmon_account_distance_to_call_sigmas{{{ACC}, direction="down"}}',
                    "{{account}} down",
                ),
                Q(
                    f'riskmon_account_distance_to_call_sigmas{{{ACC}, direction="up"}}',
                    "{{account}} up",
                ),
            ],
            thresholds=[(None, RED), (3, ORANGE), (5, GREEN)],
            minimum=0,
            dashed=".* up$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Scenario margin / equity",
            "Worst full-revaluation loss over the Deribit-style scenario grid (+-16% in 9 "
            "steps x vol up/unchanged/down, plus extended moves) as a share of equity. Above "
            "100% the worst scenario takes more than the account has. Unit: %.",
            "percentunit",
            [
                Q(
                    f"riskmon_account_scenario_margin_usd{{{ACC}}}"
                    " / on (job, instance, account) group_left"
                    f" riskmon_account_equity_usd{{{ACC}}}",
                    "{{account}}",
                )
            ],
            thresholds=[(None, GREEN), (0.5, ORANGE), (1, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        graph(
            "Model maintenance margin vs the venue's",
            "riskmon's portfolio-margin model (Deribit's recipe per settlement currency: worst "
            "case + roll shock + delta shock, x mm_factor) over the venue's maintenance margin "
            "(100% = agreement). Far from 100% is a model or data problem: compare margin.model in "
            "the report with the venue. Unit: % (100% = agreement).",
            "percentunit",
            [Q(f"riskmon_account_model_to_venue_mm_ratio{{{ACC}}}", "{{account}}")],
            thresholds=[(None, ORANGE), (0.8, GREEN), (1.25, ORANGE)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        graph(
            "Model margin by currency and component",
            "riskmon's model per account and settlement currency: worst case, roll shock, "
            "delta shock and maintenance margin, in USD at today's index price. Unit: USD.",
            "currencyUSD",
            [
                Q(
                    f"riskmon_account_model_margin_usd{{{ACC}}}",
                    "{{account}} {{currency}} {{component}}",
                )
            ],
        ),
        w=12,
    )
    b.add(
        graph(
            "Distance to a call, model margin recomputed",
            "The distance to a margin call with riskmon's model maintenance margin recomputed "
            "at every moved price (short gamma: closer than the venue-MM-held figure), down "
            "(solid) and up (dashed). Unit: %.",
            "percentunit",
            [
                Q(
                    f'riskmon_account_distance_to_call_recomputed_ratio{{{ACC}, direction="down"}}',
                    "{{account}} down",
                ),
                Q(
                    f'riskmon_account_distance_to_call_recomputed_ratio{{{ACC}, direction="up"}}',
                    "{{account}} up",
                ),
            ],
            thresholds=[(None, RED), (0.05, ORANGE), (0.15, GREEN)],
            minimum=0,
            dashed=".* up$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Stress scenarios",
            "P&L of each configured stress ([[margin.stresses]]) per account, revalued every "
            "evaluation. A loss is negative. Unit: USD.",
            "currencyUSD",
            [Q(f"riskmon_account_stress_pnl_usd{{{ACC}}}", "{{account}} {{stress}}")],
        ),
        w=12,
    )
    b.add(
        grid(
            "Accounts now",
            "Last value per account: equity, initial and maintenance margin, headroom (USD), "
            "utilisation (%, coloured at 50% / 80%) and margin data age (s).",
            ["account"],
            [
                Column("equity", f"riskmon_account_equity_usd{{{ACC}}}", "currencyUSD"),
                Column(
                    "initial margin", f"riskmon_account_initial_margin_usd{{{ACC}}}", "currencyUSD"
                ),
                Column(
                    "maintenance margin",
                    f"riskmon_account_maintenance_margin_usd{{{ACC}}}",
                    "currencyUSD",
                ),
                Column(
                    "utilisation",
                    f"riskmon_account_margin_utilization_ratio{{{ACC}}}",
                    "percentunit",
                    util,
                ),
                Column(
                    "headroom",
                    f"riskmon_account_margin_headroom_usd{{{ACC}}}",
                    "currencyUSD",
                    [(None, RED), (0, GREEN)],
                ),
                Column("age", f"riskmon_account_margin_age_seconds{{{ACC}}}", "s"),
            ],
        ),
        w=24,
        h=9,
    )
    return b.builder


def operations() -> dash.Dashboard:
    b = _board(
        "riskmon-operations",
        "riskmon / Operations",
        "Is the daemon up, fed with fresh data, evaluating on time and keeping up?",
    )
    b.builder.with_variable(
        _label_variable("instance", "Instance", "riskmon_build_info", "instance", all_value=None)
    )
    i = INST

    b.row("Health")
    b.add(
        single(
            "Scrape up",
            "1 while Prometheus scrapes the instance (RiskmonDown fires after 1 minute at 0).",
            "none",
            [Q(f"up{{{i}}}", "{{instance}}")],
            thresholds=[(None, RED), (1, GREEN)],
            mappings={"0": ("down", RED), "1": ("up", GREEN)},
        ),
        w=6,
        h=4,
    )
    b.add(
        single(
            "Snapshot age",
            "Wall time minus the engine clock of the latest risk snapshot; about "
            "risk.eval_interval (0.25 s) when healthy, RiskmonSnapshotStale above 30 s. "
            "Unit: seconds.",
            "s",
            [Q(f"time() - riskmon_snapshot_timestamp_seconds{{{i}}}", "{{instance}}")],
            thresholds=[(None, GREEN), (5, ORANGE), (30, RED)],
            decimals=1,
        ),
        w=6,
        h=4,
    )
    b.add(
        single(
            "Uptime",
            "Time since the daemon started (wall clock). Unit: seconds.",
            "s",
            [Q(f"time() - riskmon_start_time_seconds{{{i}}}", "{{instance}}")],
            thresholds=[(None, ORANGE), (900, GREEN)],
        ),
        w=6,
        h=4,
    )
    b.add(
        single(
            "Version",
            "riskmon version of each instance (riskmon_build_info).",
            "none",
            [Q(f"riskmon_build_info{{{i}}}", "{{instance}} {{version}}")],
            thresholds=[(None, BLUE)],
            mappings={"1": ("running", BLUE)},
        ),
        w=6,
        h=4,
    )

    b.row("Events")
    b.add(
        graph(
            "Events applied",
            "Events applied to state per second, by connector (source) and event type. "
            "Unit: events/s.",
            "ops",
            [
                Q(
                    f"sum by (source, type) (rate(riskmon_events_total{{{i}}}[{RATE}]))",
                    "{{source}} {{type}}",
                )
            ],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Events rejected",
            "Events refused per second, by source and reason (README: malformed_json, "
            "missing_field, invalid_value, unknown_instrument, ...). RiskmonRejectingEvents "
            "fires above 0.1/s for 5 minutes. A single unlabelled 0 while nothing was "
            "refused. Unit: events/s.",
            "ops",
            [
                Q(
                    f"sum by (source, reason) (rate(riskmon_rejected_events_total{{{i}}}[{RATE}]))"
                    " or vector(0)",
                    "{{source}} {{reason}}",
                )
            ],
            thresholds=[(None, GREEN), (0.1, RED)],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Prices conflated",
            "Price ticks replaced in the queue by a newer tick of the same instrument, per "
            "second: prices arriving faster than the engine applies them (harmless, by "
            "design). Unit: ticks/s.",
            "ops",
            [Q(f"rate(riskmon_conflated_prices_total{{{i}}}[{RATE}])", "{{instance}}")],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Queue depth",
            "Non-price events (positions, accounts) waiting for the engine. "
            "RiskmonQueueBacklog above 10000 for 2 minutes; connectors stall when "
            "engine.queue_size (100000) fills. Unit: events.",
            "short",
            [Q(f"riskmon_queue_depth{{{i}}}", "{{instance}}")],
            thresholds=[(None, GREEN), (1000, ORANGE), (10000, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        graph(
            "Estimator samples",
            "Sample grid points closed per second (about 1 / estimator.sample_interval). "
            "Unit: samples/s.",
            "ops",
            [Q(f"rate(riskmon_estimator_samples_total{{{i}}}[{RATE}])", "{{instance}}")],
            minimum=0,
        ),
        w=6,
    )
    b.add(
        graph(
            "Estimator gaps",
            "Data outages longer than estimator.max_gap after which the sample grid "
            "restarted (no return across the gap), per interval. Unit: count.",
            "short",
            [Q(f"increase(riskmon_estimator_gaps_total{{{i}}}[{RATE}])", "{{instance}}")],
            minimum=0,
            bars=True,
        ),
        w=6,
    )
    b.add(
        graph(
            "Covariance repairs",
            "Estimator samples whose covariance was not positive semi-definite and was "
            "repaired before risk used it (correlation eigenvalues raised to a floor), per "
            "interval. Unit: count.",
            "short",
            [Q(f"increase(riskmon_covariance_repairs_total{{{i}}}[{RATE}])", "{{instance}}")],
            minimum=0,
            bars=True,
        ),
        w=6,
    )

    b.row("Evaluation")
    hist = f"riskmon_evaluation_duration_seconds_bucket{{{i}}}[{RATE}]"
    b.add(
        graph(
            "Evaluation duration",
            "Wall time of one evaluation (revaluation, risk and rules), quantiles over the "
            "histogram, per instance. Above risk.eval_interval (0.25 s) the engine cannot "
            "keep its cadence. Unit: seconds.",
            "s",
            [
                Q(
                    f"histogram_quantile({quantile}, sum by (instance, le) (rate({hist})))",
                    f"p{round(quantile * 100)} {{{{instance}}}}",
                )
                for quantile in (0.5, 0.9, 0.99)
            ]
            + [
                Q(
                    f"sum by (instance) (rate(riskmon_evaluation_duration_seconds_sum{{{i}}}"
                    f"[{RATE}])) / sum by (instance) "
                    f"(rate(riskmon_evaluation_duration_seconds_count{{{i}}}[{RATE}]))",
                    "mean {{instance}}",
                )
            ],
            thresholds=[(None, GREEN), (0.1, ORANGE), (0.25, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        graph(
            "Evaluations and errors",
            "Risk snapshots produced per second (about 1 / risk.eval_interval = 4/s) and "
            "evaluations that raised (the previous snapshot stays published). Unit: per s.",
            "ops",
            [
                Q(f"rate(riskmon_evaluations_total{{{i}}}[{RATE}])", "evaluations {{instance}}"),
                Q(
                    f"rate(riskmon_evaluation_errors_total{{{i}}}[{RATE}])",
                    "errors {{instance}}",
                ),
            ],
            minimum=0,
            dashed="^errors .*",
        ),
        w=12,
    )
    b.add(
        graph(
            "Snapshot age",
            "Wall time minus the engine clock of the latest snapshot (time() - "
            "riskmon_snapshot_timestamp_seconds). RiskmonSnapshotStale above 30 s. "
            "Unit: seconds.",
            "s",
            [Q(f"time() - riskmon_snapshot_timestamp_seconds{{{i}}}", "{{instance}}")],
            thresholds=[(None, GREEN), (5, ORANGE), (30, RED)],
            minimum=0,
        ),
        w=24,
        h=6,
    )

    b.row("Connectors")
    b.add(
        single(
            "Connector up",
            "1 while the connector is connected (RiskmonConnectorDown after 1 minute at 0).",
            "none",
            [Q(f"riskmon_connector_up{{{i}}}", "{{connector}} ({{kind}})")],
            thresholds=[(None, RED), (1, GREEN)],
            mappings={"0": ("down", RED), "1": ("up", GREEN)},
        ),
        w=6,
    )
    b.add(
        graph(
            "Messages received",
            "Messages received per second by each connector. Unit: messages/s.",
            "ops",
            [
                Q(
                    f"rate(riskmon_connector_messages_total{{{i}}}[{RATE}])",
                    "{{connector}}",
                )
            ],
            minimum=0,
        ),
        w=6,
    )
    b.add(
        graph(
            "Last message age",
            "Time since each connector's last message (wall clock). Unit: seconds.",
            "s",
            [
                Q(
                    f"time() - riskmon_connector_last_message_timestamp_seconds{{{i}}}",
                    "{{connector}}",
                )
            ],
            thresholds=[(None, GREEN), (10, ORANGE), (60, RED)],
            minimum=0,
        ),
        w=6,
    )
    b.add(
        graph(
            "Reconnects",
            "Connector reconnections per interval (capped, jittered backoff). Unit: count.",
            "short",
            [
                Q(
                    f"increase(riskmon_connector_reconnects_total{{{i}}}[{RATE}])",
                    "{{connector}}",
                )
            ],
            minimum=0,
            bars=True,
        ),
        w=6,
    )
    lag = f"riskmon_connector_price_lag_seconds_bucket{{{i}}}[{RATE}]"
    b.add(
        graph(
            "Price lag",
            "Receipt time minus the tick's own time (the venue's or publisher's clock "
            "against this host's, so a clock offset shows here too), quantiles per "
            "connector: milliseconds for a healthy feed; seconds mean the feed or riskmon "
            "is behind. Unit: seconds.",
            "s",
            [
                Q(
                    f"histogram_quantile({quantile}, sum by (connector, le) (rate({lag})))",
                    f"p{round(quantile * 100)} {{{{connector}}}}",
                )
                for quantile in (0.5, 0.99)
            ],
            thresholds=[(None, GREEN), (1, ORANGE), (5, RED)],
            minimum=0,
            dashed="^p50 .*",
        ),
        w=12,
    )
    b.add(
        graph(
            "Late ticks and catch-ups",
            "Ticks received more than max_price_age after their time (counted, still "
            "applied) and the times a connector dropped what waited in buffers to catch "
            "up with its feed (MQTT prices); 0 for connectors without max_price_age. "
            "Unit: count.",
            "short",
            [
                Q(
                    f"increase(riskmon_connector_late_prices_total{{{i}}}[{RATE}])",
                    "late {{connector}}",
                ),
                Q(
                    f"increase(riskmon_connector_price_catch_ups_total{{{i}}}[{RATE}])",
                    "catch-ups {{connector}}",
                ),
            ],
            minimum=0,
            bars=True,
        ),
        w=12,
    )

    b.row("Alerts")
    b.add(
        graph(
            "Alerts firing",
            "Alerts firing now per rule and severity (riskmon's rules, evaluated at every "
            "evaluation); pending alerts (waiting out their `for`) dashed; a single "
            "unlabelled 0 while none is. Unit: alerts.",
            "none",
            [
                Q(
                    f"sum by (rule, severity) (riskmon_alerts_firing{{{i}}}) or vector(0)",
                    "{{rule}} {{severity}}",
                ),
                Q(
                    f"sum by (rule) (riskmon_alerts_pending{{{i}}}) or vector(0)",
                    "{{rule}} pending",
                ),
            ],
            minimum=0,
            dashed=".* pending$",
        ),
        w=12,
    )
    b.add(
        graph(
            "Alert deliveries waiting",
            "Alert transitions waiting in the outbox per notifier (they survive restarts). "
            "Above zero for long: the receiver is down; see retries. Unit: transitions.",
            "none",
            [Q(f"riskmon_alert_notifications_pending{{{i}}}", "{{notifier}}")],
            thresholds=[(None, GREEN), (1, ORANGE), (100, RED)],
            minimum=0,
        ),
        w=12,
    )
    b.add(
        graph(
            "Alert deliveries",
            "Per notifier: transitions delivered, retried (failed attempts that will be "
            "retried) and failed for good, per second. Unit: transitions/s.",
            "ops",
            [
                Q(
                    f"rate(riskmon_alert_notifications_delivered_total{{{i}}}[5m])",
                    "{{notifier}} delivered",
                ),
                Q(
                    f"rate(riskmon_alert_notification_retries_total{{{i}}}[5m])",
                    "{{notifier}} retries",
                ),
                Q(
                    f"rate(riskmon_alert_notifications_failed_total{{{i}}}[5m])",
                    "{{notifier}} failed",
                ),
            ],
            minimum=0,
            dashed=".* retries$",
        ),
        w=24,
    )
    b.row("Process")
    b.add(
        graph(
            "CPU",
            "CPU time used per second (100% = one core). The engine is single-threaded: "
            "near 100% it cannot keep up. Unit: %.",
            "percentunit",
            [Q(f"rate(process_cpu_seconds_total{{{i}}}[{RATE}])", "{{instance}}")],
            thresholds=[(None, GREEN), (0.8, ORANGE), (0.95, RED)],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Memory",
            "Resident set size of the daemon. Unit: bytes.",
            "bytes",
            [Q(f"process_resident_memory_bytes{{{i}}}", "{{instance}}")],
            minimum=0,
        ),
        w=8,
    )
    b.add(
        graph(
            "Open file descriptors",
            "Open file descriptors (sockets, recording files) of the daemon, and its limit "
            "(dashed). Unit: count.",
            "short",
            [
                Q(f"process_open_fds{{{i}}}", "open {{instance}}"),
                Q(f"process_max_fds{{{i}}}", "limit {{instance}}"),
            ],
            minimum=0,
            dashed="^limit .*",
        ),
        w=8,
    )
    return b.builder


DASHBOARDS: Final = {
    "riskmon-market.json": market,
    "riskmon-risk.json": risk,
    "riskmon-margin.json": margin,
    "riskmon-operations.json": operations,
}


def build_dashboards() -> dict[str, str]:
    """File name -> the dashboard's JSON text, exactly as committed under grafana/dashboards/."""
    encoder = JSONEncoder(sort_keys=True, indent=2)
    return {name: encoder.encode(build().build()) + "\n" for name, build in DASHBOARDS.items()}


def stale_files() -> list[str]:
    """Names of the files in :data:`DASHBOARD_DIR` that differ from the generator's output or
    are missing, then of the ``*.json`` files there that it no longer produces."""
    directory = DASHBOARD_DIR
    generated = build_dashboards()
    out = [
        name
        for name, text in generated.items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
    out += sorted(p.name for p in directory.glob("*.json") if p.name not in generated)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if grafana/dashboards/ differs from what the code generates",
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: grafana/dashboards/{name}", file=sys.stderr)
        if stale:
            print("regenerate with: python grafana/build_dashboards.py", file=sys.stderr)
            return 1
        return 0
    DASHBOARD_DIR.mkdir(exist_ok=True)
    generated = build_dashboards()
    for path in DASHBOARD_DIR.glob("*.json"):
        if path.name not in generated:
            path.unlink()
            print(f"removed grafana/dashboards/{path.name}")
    for name, text in generated.items():
        path = DASHBOARD_DIR / name
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote grafana/dashboards/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
