"""Prometheus metrics: what the daemon exports on ``/metrics``.

The metric names below are public surface (dashboards and alert rules use them): keep them
stable. All follow Prometheus conventions: prefix ``riskmon_``, base units (seconds, USD),
``_total`` on counters, ratios as decimals (0.55 = 55%), and only bounded labels (account,
underlying, source, reason, type, connector, kind, estimator, factor), never instrument
names.

Two sources feed them, both read at scrape time by :class:`RiskCollector`:

- the daemon's activity counters (:class:`~monitor.engine.stats.EngineStats`, plain ints the engine
  bumps on the hot path, and :class:`~connectors.base.ConnectorStatus`), exported as counter
  and gauge families;
- the latest immutable :class:`~monitor.model.snapshot.RiskSnapshot`, read by reference. A label
  set (an account, an underlying) that is absent from the current snapshot is not exported,
  so closed accounts and delisted assets vanish instead of freezing at their last value.

Only :class:`EvaluationMetrics` (the evaluation-time histogram) is a stateful
prometheus_client metric; the engine observes it once per evaluation.

Daemon activity (name, type, labels)::

    riskmon_events_total                               counter    source, type
    riskmon_rejected_events_total                      counter    source, reason
    riskmon_conflated_prices_total                     counter
    riskmon_evaluations_total                          counter
    riskmon_evaluation_errors_total                    counter
    riskmon_estimator_samples_total                    counter
    riskmon_estimator_gaps_total                       counter
    riskmon_queue_depth                                gauge
    riskmon_state_restore              (1 = outcome)   gauge      result
    riskmon_state_writes_total                         counter    result
    riskmon_state_last_write_timestamp_seconds         gauge
    riskmon_connector_up               (1 = connected) gauge      connector, kind
    riskmon_connector_reconnects_total                 counter    connector
    riskmon_connector_messages_total                   counter    connector
    riskmon_connector_last_message_timestamp_seconds   gauge      connector
    riskmon_connector_price_lag_seconds                histogram  connector
    riskmon_connector_late_prices_total                counter    connector
    riskmon_connector_price_catch_ups_total            counter    connector
    riskmon_start_time_seconds         (wall clock)    gauge
    riskmon_build_info                 (always 1)      gauge      version
    riskmon_evaluation_duration_seconds                histogram
    riskmon_alert_notifications_submitted_total        counter    notifier
    riskmon_alert_notifications_delivered_total        counter    notifier
    riskmon_alert_notifications_failed_total           counter    notifier
    riskmon_alert_notifications_dropped_total          counter    notifier
    riskmon_alert_notification_retries_total           counter    notifier
    riskmon_alert_outbox_write_errors_total            counter    notifier
    riskmon_alert_notifications_pending                gauge      notifier
    riskmon_alert_notifier_up          (0 = retrying)  gauge      notifier

Risk figures from the snapshot (name, type, labels)::

    riskmon_snapshot_timestamp_seconds (engine clock)  gauge
    riskmon_asset_price_usd                            gauge      underlying
    riskmon_asset_price_age_seconds                    gauge      underlying
    riskmon_asset_volatility           (annualised)    gauge      underlying, estimator
    riskmon_asset_returns                              gauge      underlying
    riskmon_asset_estimator_warm       (0/1)           gauge      underlying
    riskmon_asset_stale                (0/1)           gauge      underlying
    riskmon_covariance_psd_repaired    (0/1)           gauge
    riskmon_covariance_repairs_total                   counter
    riskmon_asset_correlation                          gauge      underlying_a, underlying_b
    riskmon_account_exposure_usd                       gauge      account, underlying
    riskmon_account_delta_usd                          gauge      account
    riskmon_account_gamma_usd                          gauge      account
    riskmon_account_vega_usd                           gauge      account
    riskmon_account_theta_usd                          gauge      account
    riskmon_book_exposure_usd                          gauge      underlying
    riskmon_book_delta_usd, riskmon_book_gamma_usd,
    riskmon_book_vega_usd, riskmon_book_theta_usd      gauge
    riskmon_account_unpriced_positions                 gauge      account
    riskmon_iv_unsolved_positions                      gauge      reason
    riskmon_account_greeks_vs_venue                    gauge      account, greek
    riskmon_alerts_firing                              gauge      rule, severity
    riskmon_alerts_pending                             gauge      rule
    riskmon_account_volatility_usd     (annualised)    gauge      account
    riskmon_account_risk_share                         gauge      account, underlying
    riskmon_account_risk_budget                        gauge      account, underlying
    riskmon_account_risk_drift                         gauge      account, underlying
    riskmon_account_risk_concentration                 gauge      account, measure
    riskmon_account_var_usd                            gauge      account, method
    riskmon_account_es_usd                             gauge      account, method
    riskmon_account_component_var_usd                  gauge      account, underlying
    riskmon_book_volatility_usd        (annualised)    gauge
    riskmon_book_risk_share                            gauge      underlying
    riskmon_book_risk_budget                           gauge      underlying
    riskmon_book_risk_drift                            gauge      underlying
    riskmon_book_risk_concentration                    gauge      measure
    riskmon_book_var_usd                               gauge      method
    riskmon_book_es_usd                                gauge      method
    riskmon_book_component_var_usd                     gauge      underlying
    riskmon_account_equity_usd                         gauge      account
    riskmon_account_initial_margin_usd                 gauge      account
    riskmon_account_maintenance_margin_usd             gauge      account
    riskmon_account_margin_utilization_ratio           gauge      account
    riskmon_account_margin_headroom_usd                gauge      account
    riskmon_account_margin_age_seconds                 gauge      account
    riskmon_account_scenario_margin_usd                gauge      account
    riskmon_account_distance_to_call_ratio             gauge      account, direction
    riskmon_account_distance_to_call_sigmas            gauge      account, direction
    riskmon_account_call_reachable                     gauge      account, direction
    riskmon_account_distance_to_call_recomputed_ratio  gauge      account, direction
    riskmon_account_model_margin_usd                   gauge      account, currency, component
    riskmon_account_model_maintenance_margin_usd       gauge      account
    riskmon_account_model_to_venue_mm_ratio            gauge      account
    riskmon_account_stress_pnl_usd                     gauge      account, stress
    riskmon_account_risk_share_change                  gauge      account, underlying, factor
    riskmon_account_rebalance_target_usd               gauge      account, underlying
    riskmon_account_rebalance_change_usd               gauge      account, underlying
    riskmon_account_hedge_change_usd                   gauge      account, underlying
    riskmon_account_hedge_residual_gamma_usd           gauge      account
    riskmon_account_hedge_residual_vega_usd            gauge      account
    riskmon_account_var_backtest_observations          gauge      account
    riskmon_account_var_backtest_exceptions            gauge      account
    riskmon_account_var_backtest_expected_exceptions   gauge      account
    riskmon_account_var_backtest_kupiec_p_value        gauge      account
    riskmon_account_var_backtest_zone  (0/1/2)         gauge      account
    riskmon_account_stressed_var_usd                   gauge      account
    riskmon_account_stressed_var_ratio                 gauge      account
    riskmon_regime_vol_ratio                           gauge      underlying
    riskmon_regime_realised_to_implied                 gauge      underlying
    riskmon_regime_average_correlation                 gauge
    riskmon_regime_absorption_ratio                    gauge
    riskmon_regime_vol_ratio_baseline                  gauge      underlying
    riskmon_regime_realised_to_implied_baseline        gauge      underlying
    riskmon_regime_average_correlation_baseline        gauge
    riskmon_regime_absorption_ratio_baseline           gauge

Units: volatility annualised on 365 days as a decimal (0.55 = 55%); price age = snapshot
time minus the event time of the last index tick; exposure = ``delta_usd`` summed per
underlying over all instrument kinds; ``gamma_usd`` = USD change of ``delta_usd`` for a 1%
move; ``vega_usd`` = USD per vol point (0.01); ``theta_usd`` = USD per calendar day;
``riskmon_asset_returns`` = log returns absorbed by the slow estimator (a gauge: it restarts
with the estimator).

Conventions:

- ``reason`` of ``riskmon_rejected_events_total`` (``monitor.model.events.Reason``):
  ``malformed_json``, ``unknown_type``, ``missing_field``, ``invalid_value``,
  ``invalid_timestamp``, ``unknown_instrument``, ``out_of_order`` (a price tick older than
  the instrument's current one, dropped), ``quarantined`` (a price tick beyond
  ``market.max_tick_move``, held until confirmed), ``internal_error``.
- ``estimator`` is ``"slow"`` (``estimator.halflife``) or ``"fast"`` (``fast_halflife``).
- ``riskmon_asset_stale``: 1 for an index silent longer than ``estimator.max_gap`` (it
  contributes no return until it ticks again). ``riskmon_covariance_psd_repaired``: 1 when
  the slow covariance in the snapshot was not positive semi-definite and was repaired for
  risk; ``riskmon_covariance_repairs_total``: estimator samples whose slow or VaR
  covariance needed that repair. Risk shares, drifts and component VaR are not exported
  for a book whose volatility is below 1% of its undiversified volatility (a near-perfect
  hedge: the report's ``shares_unavailable`` says ``"hedged"``).
- ``method`` is ``delta_normal``, ``delta_gamma`` (Cornish-Fisher) or ``full_revaluation``
  (scenario VaR, recomputed every ``risk.scenario_interval``); ``measure`` is
  ``max_abs_drift`` or ``half_l1``. Risk shares, budgets and drift are exported for the
  underlyings an account holds or has a budget for.
- Margin figures exist for accounts whose venue sent an ``account`` event; the scenario
  margin (worst loss over the Deribit-style grid) for every account with positions. Distance
  to a margin call: ``direction`` is ``down`` or ``up``, the uniform move of all underlyings
  (as a fraction, 0.12 = 12%, and in 1-day sigmas) at which equity falls to maintenance
  margin; not exported where no move within ``margin.max_move`` reaches the call, which
  ``riskmon_account_call_reachable`` (0/1) says. ``..._recomputed_ratio``: the same move
  with riskmon's model maintenance margin recomputed at each moved price instead of the
  venue's held. ``stress`` names come from the config.
- riskmon's portfolio-margin model (Deribit's recipe, per settlement currency):
  ``riskmon_account_model_margin_usd`` with ``currency`` (``BTC`` for inverse BTC
  instruments, ``USD`` for USD-settled ones) and ``component`` (``worst_case``,
  ``roll_shock``, ``delta_shock``, ``risk_matrix_margin``, ``maintenance_margin``), in
  USD; ``..._model_maintenance_margin_usd`` its total over currencies;
  ``..._model_to_venue_mm_ratio`` that total over the venue's maintenance margin (1 =
  agreement), for accounts whose venue reports one.
- ``riskmon_account_greeks_vs_venue``: riskmon's Greeks minus the venue's, summed over the
  positions the venue published Greeks for; ``greek`` is ``delta_usd``, ``gamma_usd``,
  ``vega`` or ``theta`` (USD units as above). Exported only for such accounts.
- Correlation: each unordered pair once, ``underlying_a < underlying_b`` (string order); the
  diagonal is not exported.
- The whole book (``RiskSnapshot.total``) is exported as separate ``riskmon_book_*`` metrics,
  not as a reserved account label: ``sum(riskmon_account_delta_usd)`` then never counts the
  book twice, and book figures that do not add up over accounts (VaR, once it exists) have a
  name of their own.
- A figure that is not known (NaN, or not finite) is not exported: the sample is skipped,
  never sent as ``NaN``. A greek absent from ``AccountFigures.greeks`` is skipped too. The
  price age is skipped for an asset that has had no tick.

Threading: :meth:`RiskCollector.collect` reads the engine's ``EngineStats`` dicts without a
lock, so scrapes must run on the engine's event loop (``monitor.serve.http`` does). Do not serve
this registry from ``prometheus_client.start_http_server``, which scrapes from another thread.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from monitor import __version__
from monitor.engine.state import RestoreResult
from monitor.engine.stats import EngineStats
from monitor.model.health import ConnectorStatus
from monitor.model.snapshot import AccountFigures, AccountRisk, RegimeReport, RiskSnapshot
from monitor.notify import NotifierStats

__all__ = [
    "EVALUATION_BUCKETS",
    "EvaluationMetrics",
    "MonitorView",
    "RiskCollector",
    "build_registry",
]

#: Evaluation-time buckets, seconds: a small book evaluates in about a millisecond, a desk
#: with tens of thousands of options in tens to hundreds of milliseconds.
#: Every ``riskmon_state_restore`` result, exported whenever a state directory is in use.
STATE_RESULTS: Final = tuple(r.value for r in RestoreResult)
EVALUATION_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip

# AccountFigures.greeks key -> metric suffix (units in the module docstring).
_GREEKS: Final = (
    ("delta_usd", "delta_usd", "USD delta (delta x the forward or price it moves with)"),
    ("gamma_usd", "gamma_usd", "USD change of delta_usd for a 1% move of the underlying"),
    ("vega", "vega_usd", "USD per 1 vol point (0.01) of implied volatility"),
    ("theta", "theta_usd", "USD per calendar day of time decay"),
)


class MonitorView(Protocol):
    """What the daemon hands to metrics and HTTP: read-only views of engine state.

    Every property is read at scrape/request time on the engine's event loop.
    """

    @property
    def snapshot(self) -> RiskSnapshot | None:
        """The latest published snapshot, ``None`` before the first evaluation."""
        ...

    @property
    def stats(self) -> EngineStats: ...

    @property
    def connectors(self) -> Sequence[ConnectorStatus]: ...

    @property
    def notifiers(self) -> Mapping[str, NotifierStats]: ...

    @property
    def started_s(self) -> float:
        """Wall-clock epoch seconds at which the daemon started."""
        ...


class EvaluationMetrics:
    """The metrics the engine updates itself: one histogram observation per evaluation."""

    __slots__ = ("duration",)

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration: Final = Histogram(
            "riskmon_evaluation_duration_seconds",
            "Wall time of one evaluation (revaluation, risk and rules), seconds.",
            buckets=EVALUATION_BUCKETS,
            registry=registry,
        )

    def observe(self, seconds: float) -> None:
        """Record the duration of one evaluation, in seconds."""
        self.duration.observe(seconds)


class _Families:
    """A fresh set of metric families for one scrape (empty ones still carry HELP/TYPE)."""

    def __init__(self, version: str) -> None:
        self.all: list[Metric] = []
        c, g = self._counter, self._gauge
        # Daemon activity.
        self.events = c("riskmon_events", "Events applied to state.", ("source", "type"))
        self.rejected = c(
            "riskmon_rejected_events", "Events refused, by reason.", ("source", "reason")
        )
        self.conflated = c(
            "riskmon_conflated_prices", "Price ticks replaced in the queue by a newer tick."
        )
        self.evaluations = c("riskmon_evaluations", "Risk snapshots produced.")
        self.evaluation_errors = c(
            "riskmon_evaluation_errors",
            "Evaluations that raised (the previous snapshot stayed published).",
        )
        self.samples = c("riskmon_estimator_samples", "Estimator sample grid points closed.")
        self.gaps = c(
            "riskmon_estimator_gaps", "Data outages after which the estimator grid restarted."
        )
        self.queue_depth = g("riskmon_queue_depth", "Events waiting in the engine queue.")
        self.state_restore = g(
            "riskmon_state_restore",
            "What became of the saved state at start (1 for the outcome, 0 for the others).",
            ("result",),
        )
        self.state_writes = c("riskmon_state_writes", "State saves, by result.", ("result",))
        self.state_saved = g(
            "riskmon_state_last_write_timestamp_seconds",
            "Wall-clock time of the last good state save, epoch seconds.",
        )
        self.connector_up = g(
            "riskmon_connector_up", "1 while the connector is connected.", ("connector", "kind")
        )
        self.reconnects = c(
            "riskmon_connector_reconnects", "Connector reconnections.", ("connector",)
        )
        self.messages = c(
            "riskmon_connector_messages", "Messages received by the connector.", ("connector",)
        )
        self.last_message = g(
            "riskmon_connector_last_message_timestamp_seconds",
            "Wall-clock time of the connector's last message, epoch seconds.",
            ("connector",),
        )
        self.price_lag = HistogramMetricFamily(
            "riskmon_connector_price_lag_seconds",
            "Receipt time minus event time of each price tick, seconds (<= 0: the "
            "publisher's clock is ahead; such ticks add 0 to the sum); connectors that "
            "measure it.",
            labels=("connector",),
        )
        self.all.append(self.price_lag)
        self.late_prices = c(
            "riskmon_connector_late_prices",
            "Price ticks received later than the connector's max_price_age after their "
            "event time (still applied).",
            ("connector",),
        )
        self.price_catch_ups = c(
            "riskmon_connector_price_catch_ups",
            "Times the connector reopened its prices' connection to skip ticks that had "
            "waited longer than its max_price_age in the broker's and the socket's buffers.",
            ("connector",),
        )
        notify = {
            "submitted": "Alert transitions queued for the notifier.",
            "delivered": "Alert transitions the receiver acknowledged.",
            "failed": "Alert transitions the receiver refused for good (logged, dropped).",
            "dropped": "Oldest pending transitions dropped because the outbox was full.",
        }
        self.notify = {
            key: c(f"riskmon_alert_notifications_{key}", doc, ("notifier",))
            for key, doc in notify.items()
        }
        self.notify["retries"] = c(
            "riskmon_alert_notification_retries",
            "Failed delivery attempts that will be retried (a receiver that is down).",
            ("notifier",),
        )
        self.notify["write_errors"] = c(
            "riskmon_alert_outbox_write_errors",
            "Transitions the outbox could not persist (kept in memory only).",
            ("notifier",),
        )
        self.notify_pending = g(
            "riskmon_alert_notifications_pending",
            "Alert transitions waiting in the outbox.",
            ("notifier",),
        )
        self.notify_up = g(
            "riskmon_alert_notifier_up",
            "0 from a delivery failure until the notifier is delivering again.",
            ("notifier",),
        )
        self.start_time = g(
            "riskmon_start_time_seconds", "Wall-clock time the daemon started, epoch seconds."
        )
        build = InfoMetricFamily("riskmon_build", "riskmon build.", value={"version": version})
        self.all.append(build)
        # Snapshot figures.
        self.snapshot_ts = g(
            "riskmon_snapshot_timestamp_seconds",
            "Engine-clock time of the latest risk snapshot, epoch seconds.",
        )
        self.price = g("riskmon_asset_price_usd", "Last index price, USD.", ("underlying",))
        self.price_age = g(
            "riskmon_asset_price_age_seconds",
            "Snapshot time minus the event time of the last index tick, seconds.",
            ("underlying",),
        )
        self.vol = g(
            "riskmon_asset_volatility",
            "EWMA volatility of log returns, annualised on 365 days (0.55 = 55%).",
            ("underlying", "estimator"),
        )
        self.returns = g(
            "riskmon_asset_returns",
            "Log returns absorbed by the slow estimator.",
            ("underlying",),
        )
        self.warm = g(
            "riskmon_asset_estimator_warm",
            "1 once the slow estimator has enough weight on observed data.",
            ("underlying",),
        )
        self.stale = g(
            "riskmon_asset_stale",
            "1 while the index is silent longer than estimator.max_gap (no returns taken).",
            ("underlying",),
        )
        self.psd_repaired = g(
            "riskmon_covariance_psd_repaired",
            "1 when the slow covariance was not positive semi-definite and was repaired.",
        )
        self.psd_repairs = c(
            "riskmon_covariance_repairs",
            "Estimator samples whose slow or VaR covariance was repaired to be PSD.",
        )
        self.corr = g(
            "riskmon_asset_correlation",
            "Slow-estimator correlation of log returns, each pair once (a < b).",
            ("underlying_a", "underlying_b"),
        )
        self.acct_exposure = g(
            "riskmon_account_exposure_usd",
            "Exposure (delta_usd summed over all instrument kinds) per underlying, USD.",
            ("account", "underlying"),
        )
        self.acct_greeks = {
            key: g(f"riskmon_account_{suffix}", f"Account {doc}.", ("account",))
            for key, suffix, doc in _GREEKS
        }
        self.book_exposure = g(
            "riskmon_book_exposure_usd",
            "Whole-book exposure (delta_usd summed) per underlying, USD.",
            ("underlying",),
        )
        self.book_greeks = {
            key: g(f"riskmon_book_{suffix}", f"Whole-book {doc}.") for key, suffix, doc in _GREEKS
        }
        self.acct_unpriced = g(
            "riskmon_account_unpriced_positions",
            "Positions left out of the sums: no index price, or an option without an IV.",
            ("account",),
        )
        self.vs_venue = g(
            "riskmon_account_greeks_vs_venue",
            "Our Greeks minus the venue's over the positions it published them for (USD units).",
            ("account", "greek"),
        )
        self.alerts_firing = g(
            "riskmon_alerts_firing",
            "Alerts firing now, per rule and severity.",
            ("rule", "severity"),
        )
        self.alerts_pending = g(
            "riskmon_alerts_pending",
            "Alerts pending (waiting out their `for`), per rule.",
            ("rule",),
        )
        self.iv_unsolved = g(
            "riskmon_iv_unsolved_positions",
            "Option positions whose IV could not be solved from the mark, by reason.",
            ("reason",),
        )
        self.risk = {
            scope: _RiskFamilies(g, scope, ("account",) if scope == "account" else ())
            for scope in ("account", "book")
        }
        # Venue-reported margin.
        margin = {
            "equity": ("equity_usd", "Venue-reported equity, USD."),
            "initial_margin": ("initial_margin_usd", "Venue-reported initial margin, USD."),
            "maintenance_margin": (
                "maintenance_margin_usd",
                "Venue-reported maintenance margin, USD.",
            ),
            "utilization": (
                "margin_utilization_ratio",
                "Maintenance margin over equity (a margin call at 1).",
            ),
            "headroom_usd": ("margin_headroom_usd", "Equity minus maintenance margin, USD."),
            "age_seconds": (
                "margin_age_seconds",
                "Snapshot time minus the event time of the last account update, seconds.",
            ),
        }
        self.margin = {
            key: g(f"riskmon_account_{suffix}", doc, ("account",))
            for key, (suffix, doc) in margin.items()
        }
        self.scenario_margin = g(
            "riskmon_account_scenario_margin_usd",
            "Worst full-revaluation loss over the scenario grid, USD.",
            ("account",),
        )
        self.distance_ratio = g(
            "riskmon_account_distance_to_call_ratio",
            "Uniform move of all underlyings that brings equity to maintenance margin.",
            ("account", "direction"),
        )
        self.distance_sigmas = g(
            "riskmon_account_distance_to_call_sigmas",
            "Distance to a margin call in 1-day sigmas of the account's underlyings.",
            ("account", "direction"),
        )
        self.call_reachable = g(
            "riskmon_account_call_reachable",
            "1 if a move within margin.max_move reaches a margin call.",
            ("account", "direction"),
        )
        self.distance_recomputed = g(
            "riskmon_account_distance_to_call_recomputed_ratio",
            "Uniform move that brings equity to riskmon's model maintenance margin, "
            "recomputed at each moved price.",
            ("account", "direction"),
        )
        self.model_margin = g(
            "riskmon_account_model_margin_usd",
            "riskmon's portfolio-margin model per settlement currency and component, USD.",
            ("account", "currency", "component"),
        )
        self.model_mm = g(
            "riskmon_account_model_maintenance_margin_usd",
            "riskmon's model maintenance margin over all settlement currencies, USD.",
            ("account",),
        )
        self.model_to_venue = g(
            "riskmon_account_model_to_venue_mm_ratio",
            "riskmon's model maintenance margin over the venue's.",
            ("account",),
        )
        self.stress_pnl = g(
            "riskmon_account_stress_pnl_usd",
            "P&L of a configured stress scenario, USD (a loss is negative).",
            ("account", "stress"),
        )
        # From alarm to action: attribution, suggestions, backtest, stressed VaR.
        self.share_change = g(
            "riskmon_account_risk_share_change",
            "Change of the risk share since the attribution's reference, by factor "
            "(positions, volatility, correlation, residual; they sum to the total).",
            ("account", "underlying", "factor"),
        )
        self.rebalance_target = g(
            "riskmon_account_rebalance_target_usd",
            "Exposure that puts the risk share on its budget, USD.",
            ("account", "underlying"),
        )
        self.rebalance_change = g(
            "riskmon_account_rebalance_change_usd",
            "Exposure change the rebalance suggests (target - now), USD.",
            ("account", "underlying"),
        )
        self.hedge_change = g(
            "riskmon_account_hedge_change_usd",
            "Delta change the hedge suggests (to the limit, or flat without one), USD.",
            ("account", "underlying"),
        )
        self.hedge_gamma = g(
            "riskmon_account_hedge_residual_gamma_usd",
            "gamma_usd a delta hedge leaves (USD per 1% move).",
            ("account",),
        )
        self.hedge_vega = g(
            "riskmon_account_hedge_residual_vega_usd",
            "Vega a delta hedge leaves (USD per vol point).",
            ("account",),
        )
        self.backtest = {
            key: g(f"riskmon_account_var_backtest_{key}", doc, ("account",))
            for key, doc in (
                ("observations", "Backtest periods in the rolling window."),
                ("exceptions", "Periods whose held P&L lost more than the VaR predicted."),
                ("expected_exceptions", "Exceptions a right model expects in the window."),
                ("kupiec_p_value", "Kupiec proportion-of-failures test p-value."),
                ("zone", "Basel traffic light: 0 green, 1 yellow, 2 red (absent before)."),
            )
        }
        self.stressed_var = g(
            "riskmon_account_stressed_var_usd",
            "Delta-normal VaR on the stressed covariance, USD.",
            ("account",),
        )
        self.stressed_ratio = g(
            "riskmon_account_stressed_var_ratio",
            "Stressed VaR over the delta-normal VaR.",
            ("account",),
        )
        # Regime figures and their slow baselines.
        regime_u = {
            "vol_ratio": "Fast over slow EWMA volatility.",
            "realised_to_implied": "Slow realised volatility over the book's vega-weighted IV.",
        }
        regime_b = {
            "average_correlation": "Average pairwise correlation of the warm underlyings.",
            "absorption_ratio": "Top fifth of correlation eigenvalues over the trace.",
        }
        self.regime_u = {
            (key, base): g(
                f"riskmon_regime_{key}{'_baseline' if base else ''}",
                doc + (" Slow baseline." if base else ""),
                ("underlying",),
            )
            for key, doc in regime_u.items()
            for base in (False, True)
        }
        self.regime_b = {
            (key, base): g(
                f"riskmon_regime_{key}{'_baseline' if base else ''}",
                doc + (" Slow baseline." if base else ""),
            )
            for key, doc in regime_b.items()
            for base in (False, True)
        }

    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=labels)
        self.all.append(fam)
        return fam

    def _gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(name, doc, labels=labels)
        self.all.append(fam)
        return fam


class _RiskFamilies:
    """Risk-parity and VaR families of one scope: per account, or the whole book."""

    def __init__(
        self,
        g: Callable[[str, str, Sequence[str]], GaugeMetricFamily],
        scope: str,
        labels: tuple[str, ...],
    ) -> None:
        p = f"riskmon_{scope}_"
        u = (*labels, "underlying")
        self.volatility = g(p + "volatility_usd", "Portfolio volatility sqrt(x'Sx), USD.", labels)
        self.share = g(p + "risk_share", "Euler risk share (sums to 1; hedges < 0).", u)
        self.budget = g(p + "risk_budget", "Risk-parity budget share.", u)
        self.drift = g(p + "risk_drift", "Risk share minus budget.", u)
        self.concentration = g(
            p + "risk_concentration",
            "Drift concentration: max |drift| or half the L1 distance.",
            (*labels, "measure"),
        )
        self.var = g(p + "var_usd", "Value at risk over the VaR horizon, USD.", (*labels, "method"))
        self.es = g(
            p + "es_usd", "Expected shortfall over the VaR horizon, USD.", (*labels, "method")
        )
        self.component_var = g(
            p + "component_var_usd", "Delta-normal component VaR (sums to the VaR), USD.", u
        )

    def put(self, labels: tuple[str, ...], risk: AccountRisk) -> None:
        c, dn, dg, fr = (
            risk.contributions,
            risk.delta_normal,
            risk.delta_gamma,
            risk.full_revaluation,
        )
        _put(self.volatility, labels, c.sigma_usd)
        for i in np.flatnonzero(risk.shown).tolist():
            lu = (*labels, risk.underlyings[i])
            _put(self.share, lu, float(c.share[i]))
            _put(self.budget, lu, float(c.budget[i]))
            _put(self.drift, lu, float(c.drift[i]))
            _put(self.component_var, lu, float(dn.component_var_usd[i]))
        _put(self.concentration, (*labels, "max_abs_drift"), c.max_abs_drift)
        _put(self.concentration, (*labels, "half_l1"), c.half_l1)
        methods = [("delta_normal", dn.var_usd, dn.es_usd), ("delta_gamma", dg.var_usd, dg.es_usd)]
        if fr is not None:
            methods.append(("full_revaluation", fr.var_usd, fr.es_usd))
        for method, var, es in methods:
            _put(self.var, (*labels, method), var)
            _put(self.es, (*labels, method), es)


def _put(family: GaugeMetricFamily, labels: Sequence[str], value: float) -> None:
    """Add a sample unless the figure is unknown (NaN or not finite)."""
    if math.isfinite(value):
        family.add_metric(labels, value)


class RiskCollector:
    """Reads a :class:`MonitorView` at scrape time and yields every ``riskmon_*`` family.

    Cost: one pass over assets, correlation pairs and accounts per scrape (no per-event
    work). Families are rebuilt on every scrape, so vanished label sets are not exported.
    """

    def __init__(self, view: MonitorView, version: str = __version__) -> None:
        self._view = view
        self._version = version

    def describe(self) -> Iterable[Metric]:
        # Lets the registry refuse another collector exporting the same names.
        return _Families(self._version).all

    def collect(self) -> Iterable[Metric]:
        f = _Families(self._version)
        view = self._view
        self._daemon(f, view.stats, view.connectors, view.started_s)
        for name, st in sorted(view.notifiers.items()):
            for key, family in f.notify.items():
                family.add_metric((name,), getattr(st, key))
            f.notify_pending.add_metric((name,), st.pending)
            f.notify_up.add_metric((name,), 1.0 if st.connected else 0.0)
        snapshot = view.snapshot
        if snapshot is not None:
            self._snapshot(f, snapshot)
        return f.all

    @staticmethod
    def _daemon(
        f: _Families,
        stats: EngineStats,
        connectors: Sequence[ConnectorStatus],
        started_s: float,
    ) -> None:
        for (source, type_), n in list(stats.accepted.items()):
            f.events.add_metric((source, type_), n)
        for (source, reason), n in list(stats.rejected.items()):
            f.rejected.add_metric((source, reason), n)
        f.conflated.add_metric((), stats.conflated)
        f.evaluations.add_metric((), stats.evaluations)
        f.evaluation_errors.add_metric((), stats.evaluation_errors)
        f.samples.add_metric((), stats.samples)
        f.gaps.add_metric((), stats.gaps)
        f.queue_depth.add_metric((), stats.queue_depth)
        if stats.state_restore is not None:
            for result in STATE_RESULTS:
                f.state_restore.add_metric((result,), float(result == stats.state_restore))
            for result in ("ok", "error"):
                f.state_writes.add_metric((result,), stats.state_writes[result])
        if stats.state_saved_s is not None:
            f.state_saved.add_metric((), stats.state_saved_s)
        for c in connectors:
            f.connector_up.add_metric((c.name, c.kind), 1.0 if c.connected else 0.0)
            f.reconnects.add_metric((c.name,), c.reconnects)
            f.messages.add_metric((c.name,), c.messages)
            if c.last_message_s is not None:
                f.last_message.add_metric((c.name,), c.last_message_s)
            if c.price_lag is not None:
                lag = c.price_lag
                f.price_lag.add_metric(
                    (c.name,),
                    [("+Inf" if math.isinf(le) else repr(le), n) for le, n in lag.cumulative()],
                    lag.total,
                )
                f.late_prices.add_metric((c.name,), c.late_prices)
                f.price_catch_ups.add_metric((c.name,), c.price_catch_ups)
        f.start_time.add_metric((), started_s)

    @staticmethod
    def _snapshot(f: _Families, snap: RiskSnapshot) -> None:
        f.snapshot_ts.add_metric((), snap.as_of_ms / 1000.0)
        a = snap.assets
        names = a.names
        for name, price, ts_ms, vol, vol_fast, returns, warm in zip(
            names,
            a.price.tolist(),
            a.price_ts_ms.tolist(),
            a.volatility.tolist(),
            a.volatility_fast.tolist(),
            a.returns.tolist(),
            a.warm.tolist(),
            strict=True,
        ):
            labels = (name,)
            _put(f.price, labels, price)
            if ts_ms > 0:
                _put(f.price_age, labels, (snap.as_of_ms - ts_ms) / 1000.0)
            _put(f.vol, (name, "slow"), vol)
            _put(f.vol, (name, "fast"), vol_fast)
            f.returns.add_metric(labels, returns)
            f.warm.add_metric(labels, 1.0 if warm else 0.0)
        if a.stale is not None:
            for name, stale in zip(names, a.stale.tolist(), strict=True):
                f.stale.add_metric((name,), 1.0 if stale else 0.0)
        f.psd_repaired.add_metric((), 1.0 if a.psd_repaired else 0.0)
        f.psd_repairs.add_metric((), a.covariance_repairs)
        corr = a.correlation.tolist()
        for i, row in enumerate(corr):
            for j in range(i + 1, len(row)):
                x, y = names[i], names[j]
                _put(f.corr, (x, y) if x < y else (y, x), row[j])
        for account, figures in snap.accounts.items():
            _account(f, account, figures)
        for underlying, v in snap.total.exposure_usd.items():
            _put(f.book_exposure, (underlying,), v)
        for key, family in f.book_greeks.items():
            value = snap.total.greeks.get(key)
            if value is not None:
                _put(family, (), value)
        if snap.total.risk is not None:
            f.risk["book"].put((), snap.total.risk)
        for reason, n in snap.total.extra.get("iv_unsolved", {}).items():
            f.iv_unsolved.add_metric((reason,), n)
        if snap.regime is not None:
            _regime(f, snap.regime)
        firing: Counter[tuple[str, str]] = Counter()
        pending: Counter[str] = Counter()
        for alert in snap.alerts:
            if alert.state == "firing":
                firing[alert.rule, alert.severity] += 1
            elif alert.state == "pending":
                pending[alert.rule] += 1
        for (rule, severity), n in sorted(firing.items()):
            f.alerts_firing.add_metric((rule, severity), n)
        for rule, n in sorted(pending.items()):
            f.alerts_pending.add_metric((rule,), n)


def _regime(f: _Families, regime: RegimeReport) -> None:
    for base, figs in ((False, regime.current), (True, regime.baseline)):
        for i, name in enumerate(regime.underlyings):
            _put(f.regime_u["vol_ratio", base], (name,), float(figs.vol_ratio[i]))
            _put(
                f.regime_u["realised_to_implied", base], (name,), float(figs.realised_to_implied[i])
            )
        _put(f.regime_b["average_correlation", base], (), figs.average_correlation)
        _put(f.regime_b["absorption_ratio", base], (), figs.absorption_ratio)


def _account(f: _Families, account: str, figures: AccountFigures) -> None:
    for underlying, v in figures.exposure_usd.items():
        _put(f.acct_exposure, (account, underlying), v)
    labels = (account,)
    for key, family in f.acct_greeks.items():
        value = figures.greeks.get(key)
        if value is not None:
            _put(family, labels, value)
    unpriced = figures.extra.get("unpriced_positions")
    if unpriced is not None:
        f.acct_unpriced.add_metric(labels, unpriced)
    if figures.risk is not None:
        f.risk["account"].put(labels, figures.risk)
    vs_venue = figures.extra.get("greeks_vs_venue")
    if vs_venue is not None:
        for greek in ("delta_usd", "gamma_usd", "vega", "theta"):
            _put(f.vs_venue, (account, greek), vs_venue[greek])
    margin = figures.extra.get("margin")
    if margin is not None:
        for key, family in f.margin.items():
            value = margin.get(key)
            if value is not None:
                _put(family, labels, value)
        if margin.get("scenario_margin") is not None:
            _put(f.scenario_margin, labels, margin["scenario_margin"])
        distance = margin.get("distance_to_call")
        if distance is not None:
            for direction in ("down", "up"):
                dl = (account, direction)
                f.call_reachable.add_metric(dl, 1.0 if distance["reachable"][direction] else 0.0)
                if distance[direction] is not None:
                    _put(f.distance_ratio, dl, distance[direction])
                if distance["sigmas"][direction] is not None:
                    _put(f.distance_sigmas, dl, distance["sigmas"][direction])
                recomputed = distance.get("recomputed") or {}
                if recomputed.get(direction) is not None:
                    _put(f.distance_recomputed, dl, recomputed[direction])
        for currency, fig in (margin.get("model") or {}).items():
            for component in _MODEL_COMPONENTS:
                if fig.get(f"{component}_usd") is not None:
                    _put(f.model_margin, (account, currency, component), fig[f"{component}_usd"])
        if margin.get("model_maintenance_margin_usd") is not None:
            _put(f.model_mm, labels, margin["model_maintenance_margin_usd"])
        if margin.get("model_to_venue_mm") is not None:
            _put(f.model_to_venue, labels, margin["model_to_venue_mm"])
        for stress, pnl in margin.get("stresses", {}).items():
            _put(f.stress_pnl, (account, stress), pnl)
    _actions(f, account, figures.extra)


_FACTORS: Final = ("positions", "volatility", "correlation", "residual")
_ZONES: Final = {"green": 0.0, "yellow": 1.0, "red": 2.0}


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _actions(f: _Families, account: str, extra: Mapping[str, Any]) -> None:
    """Attribution, rebalance and hedge suggestions, backtest and stressed VaR."""
    att = extra.get("attribution")
    for und, row in (att or {}).get("underlyings", {}).items():
        for factor in _FACTORS:
            _put(f.share_change, (account, und, factor), _num(row[factor]))
    suggestions = extra.get("suggestions") or {}
    reb = suggestions.get("rebalance")
    for und, row in (reb or {}).get("underlyings", {}).items():
        _put(f.rebalance_target, (account, und), _num(row["target_usd"]))
        _put(f.rebalance_change, (account, und), _num(row["change_usd"]))
    hedge = suggestions.get("hedge")
    if hedge:
        rows = hedge["underlyings"]
        for und, row in rows.items():
            change = _num(row["target_usd"]) - _num(row["delta_usd"])
            _put(f.hedge_change, (account, und), change)
        gamma = sum(_num(r["residual_gamma_usd"]) for r in rows.values())
        _put(f.hedge_gamma, (account,), gamma)
        _put(f.hedge_vega, (account,), sum(_num(r["residual_vega_usd"]) for r in rows.values()))
    bt = extra.get("backtest")
    if bt:
        for key in ("observations", "exceptions", "expected_exceptions", "kupiec_p_value"):
            _put(f.backtest[key], (account,), _num(bt[key]))
        if bt["zone"] is not None:
            _put(f.backtest["zone"], (account,), _ZONES[bt["zone"]])
    st = extra.get("stressed_var")
    if st:
        _put(f.stressed_var, (account,), _num(st["var_usd"]))
        _put(f.stressed_ratio, (account,), _num(st["ratio"]))


_MODEL_COMPONENTS: Final = (
    "worst_case",
    "roll_shock",
    "delta_shock",
    "risk_matrix_margin",
    "maintenance_margin",
)


def build_registry(
    view: MonitorView, *, process_metrics: bool = True
) -> tuple[CollectorRegistry, EvaluationMetrics]:
    """A fresh registry (never the global ``REGISTRY``) exporting everything above.

    With ``process_metrics`` the usual ``process_*``, ``python_gc_*`` and ``python_info``
    families are added too (the global registry would have them; a fresh one does not).

    Returns
    -------
    registry, evaluation
        Serve ``registry`` (``monitor.serve.http.HttpServer``); call ``evaluation.observe(seconds)``
        once per evaluation from the engine.
    """
    registry = CollectorRegistry()
    registry.register(RiskCollector(view))
    if process_metrics:
        ProcessCollector(registry=registry)
        GCCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry, EvaluationMetrics(registry)
