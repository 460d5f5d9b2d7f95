"""The immutable result of one evaluation, and the report JSON built from it.

The engine builds a :class:`RiskSnapshot` on every evaluation tick and publishes it by
reference; readers (metrics scrape, HTTP API, rules) never see a half-written one. The
arrays inside are never mutated after publication.

The report document (``report()``) is the public surface shared by ``riskmon replay`` and
``GET /api/v1/snapshot``; its field names are documented in the README and stay stable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.model.alert import Alert, Transition
from monitor.model.events import SCHEMA_VERSION, iso_ms
from monitor.quant.regime import RegimeFigures
from monitor.quant.risk import Contributions, DeltaGammaVaR, DeltaNormalVaR

__all__ = [
    "AccountFigures",
    "AccountRisk",
    "AssetFigures",
    "FullRevaluationVaR",
    "PositionRow",
    "PositionTable",
    "RegimeReport",
    "RiskSnapshot",
]

FloatArray = npt.NDArray[np.float64]


def _num(x: float) -> float | None:
    """JSON has no NaN: a figure that is not known is ``null``."""
    return float(x) if math.isfinite(x) else None


def _nulled(doc: Any) -> Any:
    """The same document with every figure (number or flag) ``null``; names and lists kept."""
    if isinstance(doc, dict):
        return {k: _nulled(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return doc
    return None if isinstance(doc, bool | int | float) else doc


@dataclass(frozen=True, slots=True)
class AssetFigures:
    """Per-underlying market and estimator figures, aligned with ``names`` (shape ``(n,)``).

    Attributes
    ----------
    price
        Last index price, USD (NaN before the first tick).
    price_ts_ms
        Event time of that tick, epoch ms (0 before the first tick).
    volatility, volatility_fast
        Annualised (365 days) EWMA volatility from the slow and fast estimators; NaN until
        the asset has a return.
    returns
        Number of log returns the slow estimator has absorbed.
    warm
        True once the asset's returns span ``estimator.warmup`` of grid time.
    correlation
        ``(n, n)`` slow-estimator correlation; NaN for a pair without a joint return.
    stale
        True for a priced index silent for longer than ``estimator.max_gap``: the
        estimator takes no return from it until it ticks again.
    psd_repaired, min_eigenvalue
        Whether the slow covariance's correlation block was not positive semi-definite and
        was repaired for risk (``monitor.quant.risk.psd_covariance``), and its smallest
        eigenvalue before repair (NaN with fewer than two assets).
    covariance_repairs
        Estimator samples so far whose slow or VaR covariance needed that repair.
    """

    names: tuple[str, ...]
    price: FloatArray
    price_ts_ms: npt.NDArray[np.int64]
    volatility: FloatArray
    volatility_fast: FloatArray
    returns: npt.NDArray[np.int64]
    warm: npt.NDArray[np.bool_]
    correlation: FloatArray
    stale: npt.NDArray[np.bool_] | None = None
    psd_repaired: bool = False
    min_eigenvalue: float = math.nan
    covariance_repairs: int = 0


_ROW_FIGURES: Final = (
    "quantity",
    "price",
    "iv",
    "value_usd",
    "delta",
    "delta_usd",
    "gamma",
    "gamma_usd",
    "vega",
    "theta",
    "delta_coin",
)
_ROW_KEYS: Final = ("instrument", "underlying", *_ROW_FIGURES)


def _nullable(a: FloatArray) -> list[float | None]:
    """``a`` as Python floats, ``None`` where not finite (``_num`` over a column)."""
    finite = np.isfinite(a)
    if finite.all():
        out: list[float | None] = a.tolist()
        return out
    obj = a.astype(object)
    obj[~finite] = None
    held: list[float | None] = obj.tolist()
    return held


class PositionRow(msgspec.Struct, frozen=True):
    """One row of an account's ``positions`` in the report (fields and order as
    :meth:`PositionTable.rows`); ``None`` is a figure that is not known."""

    instrument: str
    underlying: str
    quantity: float | None
    price: float | None
    iv: float | None
    value_usd: float | None
    delta: float | None
    delta_usd: float | None
    gamma: float | None
    gamma_usd: float | None
    vega: float | None
    theta: float | None
    delta_coin: float | None


@dataclass(frozen=True, slots=True)
class PositionTable:
    """Per-position figures of one account, aligned arrays of length ``len(instrument)``.

    Position Greeks are multiplied by quantity and multiplier (README "How it computes"):
    ``delta`` underlying units, ``delta_usd`` USD, ``gamma`` underlying units per 1 USD,
    ``gamma_usd`` USD change of ``delta_usd`` for a 1% move, ``vega`` USD per vol point,
    ``theta`` USD per calendar day. ``value_usd`` is the mark value: premium for options,
    notional for spot, perpetuals and futures. ``iv`` is NaN for non-options.
    ``price_ts_ms``: event time of the instrument's last price (0 = never); ``opened_ms``:
    event time the position was opened (neither is in the report).
    ``delta_coin`` (inverse options only, else NaN): the coin-terms delta a coin-margined
    account carries, ``delta - coin premium`` (``monitor.quant.greeks.coin_delta``).
    """

    instrument: tuple[str, ...]
    underlying: tuple[str, ...]
    quantity: FloatArray
    price: FloatArray
    price_ts_ms: npt.NDArray[np.int64]
    opened_ms: npt.NDArray[np.int64]
    iv: FloatArray
    value_usd: FloatArray
    delta: FloatArray
    delta_usd: FloatArray
    gamma: FloatArray
    gamma_usd: FloatArray
    vega: FloatArray
    theta: FloatArray
    delta_coin: FloatArray

    def _columns(self) -> list[Sequence[Any]]:
        # Column-wise: one tolist per array, NaN -> None in numpy; a loop per cell was
        # most of the report's cost for a large book.
        cols: list[Sequence[Any]] = [self.instrument, self.underlying]
        return cols + [_nullable(getattr(self, c)) for c in _ROW_FIGURES]

    def rows(self) -> list[dict[str, Any]]:
        """The report's ``positions``: one dict per position (README "Report JSON")."""
        return [
            dict(zip(_ROW_KEYS, vals, strict=True)) for vals in zip(*self._columns(), strict=True)
        ]

    def records(self) -> list[PositionRow]:
        """The same rows as :class:`PositionRow` structs: the same JSON through msgspec, at
        a fraction of the cost and memory of dicts (the HTTP API encodes these)."""
        return list(map(PositionRow, *self._columns()))


@dataclass(frozen=True, slots=True)
class FullRevaluationVaR:
    """Scenario VaR of one book, USD over the VaR horizon; computed on its own, slower clock."""

    var_usd: float
    es_usd: float
    worst_usd: float
    scenarios: int
    as_of_ms: int


@dataclass(frozen=True, slots=True)
class AccountRisk:
    """Risk-parity and VaR figures of one account (or the book).

    Arrays in ``contributions`` and ``delta_normal`` are aligned with ``underlyings`` (every
    registered underlying); the report lists the ``shown`` ones (held or budgeted).
    Units: USD; ``volatility`` annualised; VaR/ES over the configured horizon.
    ``known`` False: the inputs were not finite, every figure is reported as ``null``
    (``RiskSnapshot.unknown`` says why).
    """

    underlyings: tuple[str, ...]
    shown: npt.NDArray[np.bool_]
    contributions: Contributions
    delta_normal: DeltaNormalVaR
    delta_gamma: DeltaGammaVaR
    full_revaluation: FullRevaluationVaR | None
    known: bool = True
    #: Halflives of the estimators behind the figures, seconds: ``volatility_usd`` and
    #: contributions (the slow estimator), VaR/ES (the VaR estimator). NaN: not known.
    volatility_halflife_s: float = math.nan
    var_halflife_s: float = math.nan

    def report(self) -> dict[str, Any]:
        doc = self._report()
        if self.known:
            return doc
        var = doc["var"]
        settings = {"confidence": var["confidence"], "horizon_days": var["horizon_days"]}
        return {**_nulled(doc), "var": {**_nulled(var), **settings}}

    def _report(self) -> dict[str, Any]:
        c, dn, dg = self.contributions, self.delta_normal, self.delta_gamma
        contrib: dict[str, Any] = {}
        components: dict[str, Any] = {}
        for i in np.flatnonzero(self.shown).tolist():
            name = self.underlyings[i]
            contrib[name] = {
                "usd": _num(c.rc_usd[i]),
                "share": _num(c.share[i]),
                "budget": _num(c.budget[i]),
                "drift": _num(c.drift[i]),
            }
            components[name] = _num(dn.component_var_usd[i])
        fr = self.full_revaluation
        excluded = c.excluded | dn.excluded | dg.excluded
        return {
            "volatility_usd": _num(c.sigma_usd),
            "volatility_halflife_seconds": _num(self.volatility_halflife_s),
            "contributions": contrib,
            "shares_unavailable": c.share_reason,
            "concentration": {"max_abs_drift": _num(c.max_abs_drift), "half_l1": _num(c.half_l1)},
            "risk_excluded": [self.underlyings[i] for i in np.flatnonzero(excluded).tolist()],
            "var": {
                "confidence": dn.confidence,
                "horizon_days": dn.horizon_years * 365.0,
                "halflife_seconds": _num(self.var_halflife_s),
                "delta_normal": {
                    "var_usd": _num(dn.var_usd),
                    "es_usd": _num(dn.es_usd),
                    "components": components,
                },
                "delta_gamma": {
                    "var_usd": _num(dg.var_usd),
                    "es_usd": _num(dg.es_usd),
                    "skewness": _num(dg.skewness),
                    "excess_kurtosis": _num(dg.excess_kurtosis),
                    "cf_monotone": dg.cf_monotone,
                    "method": dg.method,
                },
                "full_revaluation": None
                if fr is None
                else {
                    "var_usd": _num(fr.var_usd),
                    "es_usd": _num(fr.es_usd),
                    "worst_usd": _num(fr.worst_usd),
                    "scenarios": fr.scenarios,
                    "as_of": iso_ms(fr.as_of_ms),
                },
            },
        }


@dataclass(frozen=True, slots=True)
class RegimeReport:
    """Regime figures now and their slow baselines (``monitor.quant.regime``), per underlying."""

    underlyings: tuple[str, ...]
    current: RegimeFigures
    baseline: RegimeFigures

    def report(self) -> dict[str, Any]:
        cur, base = self.current, self.baseline
        per: dict[str, Any] = {}
        for i, name in enumerate(self.underlyings):
            per[name] = {
                "vol_ratio": _num(cur.vol_ratio[i]),
                "vol_ratio_baseline": _num(base.vol_ratio[i]),
                "realised_to_implied": _num(cur.realised_to_implied[i]),
                "realised_to_implied_baseline": _num(base.realised_to_implied[i]),
            }
        return {
            "underlyings": per,
            "average_correlation": _num(cur.average_correlation),
            "average_correlation_baseline": _num(base.average_correlation),
            "absorption_ratio": _num(cur.absorption_ratio),
            "absorption_ratio_baseline": _num(base.absorption_ratio),
        }


@dataclass(frozen=True, slots=True)
class AccountFigures:
    """Figures of one account (or of the whole book, for ``total``).

    ``exposure_usd`` is the exposure vector x of the risk figures: ``delta_usd`` summed per
    underlying over spot, perpetuals, futures and options. ``greeks`` holds the sums
    ``delta_usd``, ``gamma_usd``, ``vega``, ``theta`` (USD units as in :class:`PositionTable`).
    ``extra`` carries figures later stages add (contributions, var, margin) under their
    report names.
    """

    positions: PositionTable | None
    greeks: Mapping[str, float]
    exposure_usd: Mapping[str, float]
    extra: Mapping[str, Any] = field(default_factory=dict)
    risk: AccountRisk | None = None

    def report(self, *, with_positions: bool = True, structs: bool = False) -> dict[str, Any]:
        """The account's report section; ``structs``: positions as :class:`PositionRow`
        (the same JSON through msgspec, cheaper) rather than dicts."""
        doc: dict[str, Any] = {}
        if with_positions and self.positions is not None:
            pos = self.positions
            doc["positions"] = pos.records() if structs else pos.rows()
        doc["greeks"] = {k: _num(v) for k, v in self.greeks.items()}
        doc["exposure_usd"] = {k: _num(v) for k, v in self.exposure_usd.items()}
        if self.risk is not None:
            doc.update(self.risk.report())
        doc.update(self.extra)
        return doc


@dataclass(frozen=True, slots=True)
class RiskSnapshot:
    """Everything one evaluation knows, as of ``as_of_ms`` (epoch ms of the engine clock)."""

    as_of_ms: int
    seq: int
    assets: AssetFigures
    accounts: Mapping[str, AccountFigures]
    total: AccountFigures
    alerts: tuple[Alert, ...] = ()
    #: Every alert transition of the run so far (bounded live by ``alerts.history``),
    #: oldest first: what a desk reads after replaying a recording to tune its rules.
    alert_history: tuple[Transition, ...] = ()
    evaluation_seconds: float = 0.0
    regime: RegimeReport | None = None
    #: Figures that could not be computed from this evaluation's inputs, by report path
    #: (``accounts.a.var.full_revaluation``, ``total.risk``), with the reason: their values
    #: are ``null``. Empty when everything is known.
    unknown: Mapping[str, str] = field(default_factory=dict)

    def assets_report(self) -> dict[str, Any]:
        """The report's ``assets`` section: per underlying its price and estimates."""
        a = self.assets
        assets: dict[str, Any] = {}
        for i, name in enumerate(a.names):
            assets[name] = {
                "price": _num(a.price[i]),
                "volatility": _num(a.volatility[i]),
                "volatility_fast": _num(a.volatility_fast[i]),
                "returns": int(a.returns[i]),
                "warm": bool(a.warm[i]),
                "stale": a.stale is not None and bool(a.stale[i]),
            }
        return assets

    def correlation_report(self) -> dict[str, Any]:
        """The report's ``correlation`` section (the slow estimator's matrix)."""
        a = self.assets
        return {
            "assets": list(a.names),
            "matrix": [[_num(v) for v in row] for row in a.correlation.tolist()],
            "psd_repaired": a.psd_repaired,
            "min_eigenvalue": _num(a.min_eigenvalue),
            "repairs": a.covariance_repairs,
        }

    def report(self, *, structs: bool = False) -> dict[str, Any]:
        """The report document (README "Report JSON"). ``structs``: position rows as
        :class:`PositionRow` structs rather than dicts, for an encoder that takes them
        (msgspec: the same bytes, at a fraction of the cost)."""
        return {
            "schema": SCHEMA_VERSION,
            "as_of": iso_ms(self.as_of_ms),
            "assets": self.assets_report(),
            "correlation": self.correlation_report(),
            "accounts": {
                name: acc.report(structs=structs) for name, acc in sorted(self.accounts.items())
            },
            "total": self.total.report(with_positions=False),
            "regime": None if self.regime is None else self.regime.report(),
            "alerts": [a.report() for a in self.alerts],
            "alert_history": [t.report() for t in self.alert_history],
            "unknown": dict(self.unknown),
        }
