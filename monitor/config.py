"""Daemon configuration: a TOML file, then ``RISKMON_*`` environment overrides.

Precedence is defaults < file < environment. Every section and every key is optional; the
reference with every key, its default and its unit is ``deploy/riskmon.example.toml``.

Decoding is msgspec's typed converter into frozen Structs with ``forbid_unknown_fields``, so
types, ranges and unknown keys are checked in C; cross-field rules live in each section's
``__post_init__`` so they hold for a ``Config`` built in code too. Every failure is a
:class:`ConfigError` whose ``path`` is the key path as a user would write it
(``estimator.halflife``, ``connectors[0].seed``, ``risk.budgets.main.BTC``), never
msgspec's ``$.``-form.

Environment overrides
---------------------
``RISKMON_<SECTION>__<KEY>=value``: a double underscore separates levels, key names match
case-insensitively (``RISKMON_ESTIMATOR__HALFLIFE=2h``, ``RISKMON_RISK__VAR_CONFIDENCE=0.975``).

- Connectors are addressed by name: ``RISKMON_CONNECTORS__<NAME>__<KEY>``; ``<NAME>`` is the
  connector's ``name`` upper-cased with every character other than a letter or digit turned
  into ``_`` (``deribit-main`` -> ``DERIBIT_MAIN``). This is how secrets get in without being
  in the file. The environment cannot add a connector, only change one the file (or the
  default) declares.
- Values are parsed as a TOML value when they parse (``10``, ``0.975``, ``true``,
  ``["BTC", "ETH"]``, ``{ main = { BTC = 1.0 } }``) and taken as a plain string otherwise
  (``2h``, ``127.0.0.1:9321``). A key whose type is a string takes the value verbatim, so a
  password ``12345`` stays a string.
- A table of free-form keys (``risk.budgets``) is set whole, as an inline TOML table:
  ``RISKMON_RISK__BUDGETS='{ main = { BTC = 0.5, ETH = 0.5 } }'``.
- Optional tables (``[alerts.webhook]``, ``[alerts.mqtt]``, ``[alerts.alertmanager]``) take
  their keys like any table: ``RISKMON_ALERTS__WEBHOOK__TOKEN``,
  ``RISKMON_ALERTS__MQTT__PASSWORD``. Setting a key of one the file leaves out turns it on,
  with that key and the defaults (a required key such as ``url`` must then be set too).
- A ``RISKMON_`` variable that names no key is an error (a typo must not be silent), except
  the variables in :data:`NON_CONFIG_ENV_VARS`, which configure the process, not the daemon.

Secrets
-------
Fields whose name ends in ``secret``, ``password``, ``token`` or ``api_key`` are shown as
``"***"`` by ``repr()``, by :func:`redacted` and in error messages.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, cast

import msgspec
import msgspec.inspect as mi
from msgspec import Meta, Struct

from connectors import CONNECTOR_TYPES, ConnectorConfig
from connectors.nats.config import ClusterConfig
from connectors.simulated_config import DEMO_HISTORY, SimulatedConnector
from monitor.model.settings import (
    REDACTED,
    ConfigError,
    Duration,
    Invalid,
    PathSeg,
    Section,
    dec_hook,
    format_path,
    is_secret,
    parse_duration,
    show,
)
from monitor.notify.config import AlertsConfig
from monitor.rules.config import RULE_TYPES, AccountLimits, RuleConfig

__all__ = [
    "CONFIG_PATH_ENV",
    "NON_CONFIG_ENV_VARS",
    "Config",
    "ConfigError",
    "CurrencyMarginConfig",
    "EngineConfig",
    "EstimatorConfig",
    "LogConfig",
    "MarginConfig",
    "MarketConfig",
    "RiskConfig",
    "ServerConfig",
    "StateConfig",
    "StressConfig",
    "UnderlyingMarginConfig",
    "load_config",
    "redacted",
]

ENV_PREFIX: Final = "RISKMON_"
#: The config file path, for the CLI (``load_config`` itself never reads it).
CONFIG_PATH_ENV: Final = "RISKMON_CONFIG"
#: ``RISKMON_`` variables that are not config keys and so are not checked against the schema.
NON_CONFIG_ENV_VARS: Final = frozenset({CONFIG_PATH_ENV})


class ServerConfig(Section, frozen=True):
    """HTTP server for ``/metrics`` and ``/api/v1``: loopback unless told otherwise."""

    listen: str = "127.0.0.1:9321"
    #: A file holding a bearer token (mode 600): ``/api/*`` then wants
    #: ``Authorization: Bearer <token>``. Unset: open (fine on loopback).
    token_file: str | None = None
    #: With a token, ``/metrics`` wants it too (give Prometheus ``authorization``).
    protect_metrics: bool = False

    def __post_init__(self) -> None:
        _split_listen(self.listen)
        if self.protect_metrics and self.token_file is None:
            raise Invalid(("protect_metrics",), "needs token_file (the token to protect it with)")

    @property
    def host(self) -> str:
        """The host to bind, without IPv6 brackets (``"::1"``)."""
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]


def _split_listen(listen: str) -> tuple[str, int]:
    hint = 'expected "host:port" such as "127.0.0.1:9321" or "[::1]:9321"'
    host, sep, port_text = listen.rpartition(":")
    if not sep or not host or any(c.isspace() for c in listen):
        raise Invalid(("listen",), f"{hint}; got {show(listen)}")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise Invalid(("listen",), f"{hint}; got {show(listen)}")
        host = host[1:-1]
    elif ":" in host:
        raise Invalid(("listen",), f"an IPv6 address needs brackets ({hint}); got {show(listen)}")
    # Port 0 binds a free port (tests, ad-hoc runs); the bound address is logged.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise Invalid(("listen",), f"expected a port 0..65535; got {show(listen)}")
    return host, int(port_text)


class LogConfig(Section, frozen=True):
    """``format = "auto"`` means text on a terminal, JSON lines otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


class MarketConfig(Section, frozen=True):
    """Market-data sanity checks applied by the engine before a price is believed."""

    #: A tick of an index, spot, perpetual or future moving more than this fraction from the
    #: instrument's current price is quarantined until the next tick confirms it; 0 = off.
    max_tick_move: Annotated[float, Meta(ge=0.0)] = 0.5
    #: Which connector's index ticks feed each underlying's index (``{ BTC = "deribit" }``);
    #: an underlying not named here takes the first connector that prices it. The others'
    #: index ticks are kept apart as ``<underlying>.<connector>`` (README "Connectors").
    index_sources: dict[str, str] = msgspec.field(default_factory=dict)


class EngineConfig(Section, frozen=True):
    #: Bound on queued non-price events (prices are conflated and never queue up).
    queue_size: Annotated[int, Meta(gt=0)] = 100_000


class StateConfig(Section, frozen=True):
    """Warm restarts: the engine's state saved to ``dir`` and restored at start
    (``monitor.engine.state``)."""

    #: The state directory. Unset: ``$STATE_DIRECTORY/state`` when systemd sets
    #: ``STATE_DIRECTORY`` (``StateDirectory=`` in the unit), else no state is kept.
    dir: str | None = None
    #: False: never save or restore, even under systemd.
    enabled: bool = True
    #: How often the state is saved (and once more at shutdown).
    interval: Duration = parse_duration("30s")
    #: A saved state older than this at start is ignored (the market has moved on).
    max_age: Duration = parse_duration("1h")

    def __post_init__(self) -> None:
        if self.dir is not None and not self.dir.strip():
            raise Invalid(("dir",), "expected a directory path; got an empty string")
        if self.interval < 1_000:
            raise Invalid(("interval",), f"must be at least 1s; got {self.interval}")

    def directory(self, env: Mapping[str, str]) -> Path | None:
        """The directory in use, given the environment (``STATE_DIRECTORY``), or None."""
        if not self.enabled:
            return None
        if self.dir is not None:
            return Path(self.dir)
        systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(systemd) / "state" if systemd else None


class EstimatorConfig(Section, frozen=True):
    """EWMA covariance of log returns on a fixed sample grid (``monitor.quant.estimator``)."""

    sample_interval: Duration = parse_duration("1s")
    halflife: Duration = parse_duration("10m")
    fast_halflife: Duration = parse_duration("1m")
    warmup: Duration = parse_duration("5m")
    #: An index silent for longer than this is stale: it contributes no return until it
    #: ticks again (the first return after the silence is dropped); all silent: the grid
    #: restarts.
    max_gap: Duration = parse_duration("1m")
    #: Half-life of the estimator behind VaR/ES (delta-normal, delta-gamma, full
    #: revaluation): a 1-day VaR from hours to days of returns, not the last half hour.
    var_halflife: Duration = parse_duration("1d")

    def __post_init__(self) -> None:
        if self.fast_halflife >= self.halflife:
            raise Invalid(
                ("fast_halflife",),
                f"must be shorter than halflife ({self.halflife}); got {self.fast_halflife}",
            )
        if self.sample_interval >= self.fast_halflife:
            raise Invalid(
                ("sample_interval",),
                f"must be shorter than fast_halflife ({self.fast_halflife}); "
                f"got {self.sample_interval}",
            )
        if self.var_halflife <= self.sample_interval:
            raise Invalid(
                ("var_halflife",),
                f"must be longer than sample_interval ({self.sample_interval}); "
                f"got {self.var_halflife}",
            )


Weight = Annotated[float, Meta(ge=0)]


class RiskConfig(Section, frozen=True):
    """Evaluation cadence, VaR parameters and per-account risk budgets.

    ``budgets[account][underlying]`` is a weight >= 0, kept as written; the risk code
    normalises each account's weights to sum 1.
    """

    eval_interval: Duration = parse_duration("250ms")
    var_confidence: Annotated[float, Meta(gt=0.5, lt=1.0)] = 0.99
    var_horizon: Duration = parse_duration("1d")
    var_scenarios: Annotated[int, Meta(ge=100, le=1_000_000)] = 1000
    scenario_interval: Duration = parse_duration("5s")
    regime_halflife: Duration = parse_duration("1h")
    budgets: dict[str, dict[str, Weight]] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        for account, weights in self.budgets.items():
            for underlying, w in weights.items():
                if not math.isfinite(w):
                    raise Invalid(
                        ("budgets", account, underlying), f"expected a finite weight; got {w}"
                    )
            if not sum(weights.values()) > 0:
                raise Invalid(("budgets", account), "weights must have a positive sum")


class ActionsConfig(Section, frozen=True):
    """Attribution look-back and the rebalance suggestion's method and scale."""

    #: The reference of the drift attribution: the account's state this long ago.
    lookback: Duration = parse_duration("24h")
    #: ``"risk_budget"`` (exact risk budgeting) or ``"inverse_vol"``.
    rebalance_method: Literal["risk_budget", "inverse_vol"] = "risk_budget"
    #: Keep the account's ``"volatility"`` or its ``"gross"`` exposure.
    rebalance_scale: Literal["volatility", "gross"] = "volatility"
    #: Period of the VaR backtest (each one's held P&L against the VaR predicted for it).
    backtest_horizon: Duration = parse_duration("1d")
    #: Stressed VaR: every pairwise correlation set to this, every volatility scaled.
    stress_correlation: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.9
    stress_vol_scale: Annotated[float, Meta(gt=0.0)] = 1.5


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


# --- margin model ------------------------------------------------------------------------


class StressConfig(Section, frozen=True):
    """A named what-if revalued every evaluation: moves per underlying and a vol shift."""

    name: str
    moves: dict[str, Annotated[float, Meta(gt=-1.0)]] = msgspec.field(default_factory=dict)
    default_move: Annotated[float, Meta(gt=-1.0)] = 0.0
    vol_shift: Annotated[float, Meta(gt=-1.0)] = 0.0


class UnderlyingMarginConfig(Section, frozen=True):
    """``[margin.underlyings.<U>]``: one underlying's scenario and delta-shock parameters;
    a key not given keeps the built-in value for that underlying, else ``[margin]``'s."""

    price_range: Annotated[float, Meta(gt=0.0, lt=1.0)] | None = None
    vol_range_up: Annotated[float, Meta(ge=0.0)] | None = None
    vol_range_down: Annotated[float, Meta(ge=0.0, lt=1.0)] | None = None
    short_term_vega_power: Annotated[float, Meta(ge=0.0)] | None = None
    long_term_vega_power: Annotated[float, Meta(ge=0.0)] | None = None
    min_vol_shock_up: Annotated[float, Meta(ge=0.0)] | None = None
    extended_weight: Annotated[float, Meta(ge=0.0)] | None = None
    delta_shock_threshold: Annotated[float, Meta(ge=0.0)] | None = None
    max_delta_shock: Annotated[float, Meta(ge=0.0)] | None = None
    delta_shock_slope: Annotated[float, Meta(ge=0.0)] | None = None


class CurrencyMarginConfig(Section, frozen=True):
    """``[margin.currencies.<C>]``: one settlement currency's roll-shock and dampener
    parameters; a key not given keeps the built-in value."""

    min_annualised_move: Annotated[float, Meta(ge=0.0)] | None = None
    annualised_move_risk: Annotated[float, Meta(ge=0.0)] | None = None
    extended_dampener: Annotated[float, Meta(ge=0.0)] | None = None


class MarginConfig(Section, frozen=True):
    """riskmon's own portfolio-margin model (defaults after Deribit's) and stresses."""

    price_range: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.16
    price_steps: Annotated[int, Meta(ge=1, le=50)] = 4
    vol_range_up: Annotated[float, Meta(ge=0.0)] = 0.5
    vol_range_down: Annotated[float, Meta(ge=0.0, lt=1.0)] = 0.25
    short_term_vega_power: Annotated[float, Meta(ge=0.0)] = 0.3
    long_term_vega_power: Annotated[float, Meta(ge=0.0)] = 0.13
    min_days: Annotated[float, Meta(gt=0.0)] = 1.0
    min_vol_shock_up: Annotated[float, Meta(ge=0.0)] = 0.5
    extended_moves: tuple[Annotated[float, Meta(gt=-1.0)], ...] = (
        -0.66,
        -0.33,
        0.5,
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    )
    extended_weight: Annotated[float, Meta(ge=0.0)] = 1.0
    aggregation: Literal["per_currency", "sum", "joint"] = "per_currency"
    mm_factor: Annotated[float, Meta(ge=0.0)] = 0.8
    dampener: bool = True
    delta_shock_threshold: Annotated[float, Meta(ge=0.0)] = 20_000_000.0
    max_delta_shock: Annotated[float, Meta(ge=0.0)] = 0.1
    delta_shock_slope: Annotated[float, Meta(ge=0.0)] = 0.00005
    underlyings: dict[str, UnderlyingMarginConfig] = msgspec.field(default_factory=dict)
    currencies: dict[str, CurrencyMarginConfig] = msgspec.field(default_factory=dict)
    max_move: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.9
    recompute_distance: bool = True
    recompute_interval: Duration = parse_duration("30s")
    stresses: tuple[StressConfig, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, st in enumerate(self.stresses):
            if st.name in seen:
                raise Invalid(("stresses", i, "name"), f"duplicate stress {show(st.name)}")
            seen.add(st.name)


#: The simulated demo's named stresses (no ``[[connectors]]`` and no ``[[margin.stresses]]``).
DEMO_STRESSES: Final = (
    StressConfig(name="crash -20%, vol +50%", default_move=-0.2, vol_shift=0.5),
    StressConfig(name="rally +15%, vol -20%", default_move=0.15, vol_shift=-0.2),
    StressConfig(
        name="correlation spike: BTC -10%, others -20%, vol +30%",
        moves={"BTC": -0.1},
        default_move=-0.2,
        vol_shift=0.3,
    ),
)


class Config(Section, frozen=True):
    """The whole daemon configuration (see ``deploy/riskmon.example.toml``)."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    market: MarketConfig = msgspec.field(default_factory=MarketConfig)
    estimator: EstimatorConfig = msgspec.field(default_factory=EstimatorConfig)
    state: StateConfig = msgspec.field(default_factory=StateConfig)
    risk: RiskConfig = msgspec.field(default_factory=RiskConfig)
    margin: MarginConfig = msgspec.field(default_factory=MarginConfig)
    actions: ActionsConfig = msgspec.field(default_factory=ActionsConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    #: Every built-in rule once, in pack order; an entry given overrides that rule's
    #: defaults, a rule not given keeps them.
    rules: tuple[RuleConfig, ...] = ()
    #: Per-account limits, by account name.
    limits: dict[str, AccountLimits] = msgspec.field(default_factory=dict)
    #: Empty means one default simulated connector.
    connectors: tuple[ConnectorConfig, ...] = ()
    #: Cluster mode (README "Running a cluster"): ``riskmon ingest`` publishes the
    #: connectors' events to NATS JetStream and ``riskmon run`` reads its shard from there.
    cluster: ClusterConfig | None = None

    def __post_init__(self) -> None:
        if not self.connectors:
            demo = SimulatedConnector(history=DEMO_HISTORY)
            msgspec.structs.force_setattr(self, "connectors", (demo,))
        simulated = all(isinstance(c, SimulatedConnector) for c in self.connectors)
        if simulated and not self.margin.stresses:
            # The simulated demo shows every dashboard panel, stress P&L included: it ships
            # named stresses of its own. A config with a venue has only those it declares.
            margin = msgspec.structs.replace(self.margin, stresses=DEMO_STRESSES)
            msgspec.structs.force_setattr(self, "margin", margin)
        given: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.rule in given:
                raise Invalid(
                    ("rules", i, "name"),
                    f"duplicate rule {show(rule.rule)} (rules[{given[rule.rule]}] sets it too)",
                )
            given[rule.rule] = i
        rules = tuple(
            self.rules[given[name]] if name in given else cls() for name, cls in RULE_TYPES.items()
        )
        msgspec.structs.force_setattr(self, "rules", rules)
        seen: dict[str, int] = {}
        for i, conn in enumerate(self.connectors):
            key = _env_name(conn.name)
            if key in seen:
                j = seen[key]
                raise Invalid(
                    ("connectors", i, "name"),
                    f"duplicate connector name {show(conn.name)} (connectors[{j}].name is "
                    f"{show(self.connectors[j].name)}; names are compared ignoring case and "
                    "punctuation, as in environment variables)",
                )
            seen[key] = i
        names = [c.name for c in self.connectors]
        for underlying, source in self.market.index_sources.items():
            if source not in names:
                raise Invalid(
                    ("market", "index_sources", underlying),
                    f"no connector named {show(source)}{_suggest(source, names)}",
                )


# --- loading -----------------------------------------------------------------------------


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    listen: str | None = None,
    seed: int | None = None,
) -> Config:
    """Load the TOML file at ``path`` (None: defaults only), then apply ``env`` overrides.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.
    ``listen`` and ``seed`` are the command line's ``--listen`` (``server.listen``) and
    ``--seed`` (the ``seed`` of every connector that has one); they override the file and
    the environment and are validated like them, an error naming the flag.

    Raises
    ------
    ConfigError
        For a missing or unreadable file, a TOML syntax error (with its line), an unknown
        key (with the closest valid key), a wrong type or value, a failed cross-field rule,
        or a ``RISKMON_`` variable that names no key.
    """
    raw: dict[str, Any] = {} if path is None else _read_toml(Path(path))
    _check_connectors(raw)
    _check_rules(raw)
    origins = _apply_env(raw, os.environ if env is None else env)
    origins.update(_apply_flags(raw, listen, seed))
    try:
        return msgspec.convert(raw, type=Config, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise _translate(exc, raw, origins) from None


def _apply_flags(
    raw: dict[str, Any], listen: str | None, seed: int | None
) -> dict[tuple[PathSeg, ...], str]:
    """Write the command line's overrides into ``raw``; return key path -> flag."""
    origins: dict[tuple[PathSeg, ...], str] = {}
    if listen is not None:
        server = raw.setdefault("server", {})
        if not isinstance(server, dict):
            raise ConfigError("server", f"expected a table; got {show(server)} (in the file)")
        server["listen"] = listen
        origins["server", "listen"] = "--listen"
    if seed is not None:
        for i, entry in enumerate(raw.get("connectors") or ()):
            kind = entry.get("type") if isinstance(entry, dict) else None
            cls = CONNECTOR_TYPES.get(kind) if isinstance(kind, str) else None
            if cls is not None and "seed" in cls.__struct_fields__:
                entry["seed"] = seed
                origins["connectors", i, "seed"] = "--seed"
    return origins


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError("", f"{path}: cannot read config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from None


def _check_connectors(raw: dict[str, Any]) -> None:
    """Check each ``type`` (msgspec does not require the tag of a one-member union) and
    materialise the default connector so the environment can address it by name."""
    entries = raw.get("connectors")
    if entries is None or entries == []:
        # The built-in demo: the simulated market, with history (warm within seconds).
        raw["connectors"] = [{"type": "simulated", "history": str(DEMO_HISTORY)}]
        return
    if not isinstance(entries, list):
        return  # msgspec reports the type
    expected = ", ".join(CONNECTOR_TYPES)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        if "type" not in entry:
            raise ConfigError(f"connectors[{i}].type", f"missing; expected one of: {expected}")
        kind = entry["type"]
        if not isinstance(kind, str) or kind not in CONNECTOR_TYPES:
            raise ConfigError(
                f"connectors[{i}].type",
                f"unknown connector type {show(kind)}"
                + (
                    _suggest(kind, CONNECTOR_TYPES)
                    if isinstance(kind, str)
                    else f"; expected one of: {expected}"
                ),
            )


def _check_rules(raw: dict[str, Any]) -> None:
    """Check each ``[[rules]]`` entry names a built-in rule once, then add an entry for
    every rule not given, so the environment can address any rule by name."""
    entries = raw.setdefault("rules", [])
    if not isinstance(entries, list):
        return  # msgspec reports the type
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        if "name" not in entry:
            raise ConfigError(
                f"rules[{i}].name", f"missing; expected one of: {', '.join(RULE_TYPES)}"
            )
        name = entry["name"]
        if not isinstance(name, str) or name not in RULE_TYPES:
            hint = _suggest(name, RULE_TYPES) if isinstance(name, str) else ""
            raise ConfigError(f"rules[{i}].name", f"unknown rule {show(name)}{hint}")
        if name in seen:
            raise ConfigError(
                f"rules[{i}].name",
                f"duplicate rule {show(name)} (rules[{seen[name]}] sets it too)",
            )
        seen[name] = i
    entries.extend({"name": name} for name in RULE_TYPES if name not in seen)


_MISSING: Final = object()


@functools.cache
def _schema() -> mi.StructType:
    return cast(mi.StructType, mi.type_info(Config))


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[PathSeg, ...], str]:
    """Write ``RISKMON_*`` overrides into ``raw``; return key path -> variable name."""
    origins: dict[tuple[PathSeg, ...], str] = {}
    for var in sorted(env):
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_CONFIG_ENV_VARS:
            continue
        parts = var[len(ENV_PREFIX) :].split("__")
        segs, node, parent = _env_target(var, parts, raw)
        key = cast(str, segs[-1])
        if tuple(segs) in origins:
            raise ConfigError(format_path(segs), f"set by both {origins[tuple(segs)]} and {var}")
        text = env[var]
        parent[key] = text if _takes_string(node) else _toml_value(text)
        origins[tuple(segs)] = var
    return origins


def _env_target(
    var: str, parts: list[str], raw: dict[str, Any]
) -> tuple[list[str | int], mi.Type, dict[str, Any]]:
    """Resolve an override to (key path, its type, the raw table to write into)."""
    segs: list[str | int] = []
    node: mi.Type = _schema()
    cursor: Any = raw
    for i, part in enumerate(parts):
        key = part.lower()
        last = i == len(parts) - 1
        if isinstance(node, mi.StructType):
            fields = {f.encode_name: f.type for f in node.fields}
            if key not in fields:
                raise ConfigError(
                    format_path([*segs, key]), f"unknown key in {var}{_suggest(key, fields)}"
                )
            node = _optional_struct(fields[key])
            # A top-level optional section ([cluster]) switches the daemon's mode: the file
            # enables it, never the environment (a shared RISKMON_ file must not). A nested
            # optional table (alerts.webhook) may come from the environment.
            section = not segs and isinstance(fields[key], mi.UnionType)
            if section and node is not fields[key] and not isinstance(cursor.get(key), dict):
                raise ConfigError(
                    format_path([*segs, key]),
                    f"{var} sets a key of [{key}], which the config file does not have",
                )
            table = isinstance(node, mi.StructType) or (not segs and key in _NAMED_LISTS)
            if last and not table:
                return [*segs, key], node, cursor
            segs.append(key)
            if isinstance(node, mi.DictType):
                example = _TABLE_EXAMPLES.get(format_path(segs), "{ main = { ... } }")
                raise ConfigError(
                    format_path(segs),
                    f"cannot set keys inside this table one at a time ({var}); set it whole "
                    f"as an inline TOML table: {ENV_PREFIX}{'__'.join(map(str, segs)).upper()}"
                    f"='{example}'",
                )
            if not table:
                raise ConfigError(
                    format_path([*segs, parts[i + 1].lower()]), f"unknown key in {var}"
                )
            child = cursor.setdefault(key, {} if isinstance(node, mi.StructType) else [])
            if not isinstance(child, dict | list):
                raise ConfigError(
                    format_path(segs), f"expected a table; got {show(child)} (in the file)"
                )
            cursor = child
        elif len(segs) == 1 and segs[0] in _NAMED_LISTS and isinstance(cursor, list):
            names = {
                _env_name(str(e["name"]) if "name" in e else _default_name(e)): n
                for n, e in enumerate(cursor)
                if isinstance(e, dict)
            }
            if part.upper() not in names:
                known = ", ".join(names) or "none"
                what = _NAMED_LISTS[str(segs[0])]
                raise ConfigError(
                    str(segs[0]), f"no {what} named {part!r} for {var} (known: {known})"
                )
            n = names[part.upper()]
            segs.append(n)
            cursor = cursor[n]
            node = _tagged_member(node, cursor)
        else:  # pragma: no cover - the schema has no other containers
            raise ConfigError(format_path([*segs, key]), f"unknown key in {var}")
    key = "<NAME>__<KEY>" if len(segs) == 1 and segs[0] in _NAMED_LISTS else "<KEY>"
    raise ConfigError(
        format_path(segs), f"is a table; set one of its keys ({var.upper()}__{key}), not the table"
    )


#: Arrays of tables whose entries the environment addresses by ``name`` (-> singular).
_NAMED_LISTS: Final = {"connectors": "connector", "rules": "rule"}
#: Examples for the "set this table whole" hint.
_TABLE_EXAMPLES: Final = {
    "risk.budgets": "{ main = { BTC = 0.5, ETH = 0.5 } }",
    "limits": "{ main = { delta_usd = 2e6, vega = 5e4 } }",
}


def _optional_struct(node: mi.Type) -> mi.Type:
    """An optional table (``WebhookConfig | None``) is a table: its Struct; else ``node``."""
    if isinstance(node, mi.UnionType):
        members = [m for m in node.types if not isinstance(m, mi.NoneType)]
        if len(members) == 1 and isinstance(members[0], mi.StructType):
            return members[0]
    return node


def _default_name(entry: dict[str, Any]) -> str:
    cls = CONNECTOR_TYPES[entry["type"]]
    return cast(str, cls.__struct_defaults__[cls.__struct_fields__.index("name")])


def _tagged_member(node: mi.Type, entry: Any) -> mi.Type:
    """The member of a tagged union (or list of them) that ``entry``'s ``type`` selects."""
    if isinstance(node, mi.VarTupleType | mi.ListType):
        node = node.item_type
    members = node.types if isinstance(node, mi.UnionType) else (node,)
    structs = [m for m in members if isinstance(m, mi.StructType)]
    for m in structs:
        if m.tag_field is not None and isinstance(entry, dict) and entry.get(m.tag_field) == m.tag:
            return m
    return structs[0] if structs else node


def _takes_string(node: mi.Type) -> bool:
    members = node.types if isinstance(node, mi.UnionType) else (node,)
    members = tuple(m for m in members if not isinstance(m, mi.NoneType))
    return bool(members) and all(
        isinstance(m, mi.StrType)
        or (isinstance(m, mi.LiteralType) and all(isinstance(v, str) for v in m.values))
        for m in members
    )


def _toml_value(text: str) -> Any:
    try:
        doc = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return doc["v"] if len(doc) == 1 else text


# --- error translation -------------------------------------------------------------------

_MSGSPEC_ERROR = re.compile(r"(?s)(.*) - at `\$(.*)`")
_PATH_TOKEN = re.compile(r"\.([^.\[]+)|\[(\d+)\]|(\[\.\.\.\])")
_KIND: Final[dict[type, str]] = {mi.IntType: "int", mi.FloatType: "float", mi.StrType: "str"}
_TYPE_WORDS: Final = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "a boolean",
    "array": "an array",
    "object": "a table",
    "datetime": "a datetime",
    "date": "a date",
    "time": "a time",
}


def _translate(
    exc: msgspec.ValidationError, raw: dict[str, Any], origins: dict[tuple[PathSeg, ...], str]
) -> ConfigError:
    text, segs = _split_error(exc)
    segs = _resolve_dict_keys(segs, raw)
    cause = exc.__cause__
    if isinstance(cause, Invalid):
        segs, message = [*segs, *cause.segs], cause.message
    elif isinstance(cause, ValueError):  # from dec_hook: already in our words
        message = text
    else:
        segs, message = _rewrite(text, segs, raw)
    for n in range(len(segs), 0, -1):
        if tuple(segs[:n]) in origins:
            message += f" (from {origins[tuple(segs[:n])]})"
            break
    return ConfigError(format_path(segs), message)


def _split_error(exc: msgspec.ValidationError) -> tuple[str, list[PathSeg]]:
    """msgspec's message and key path (it omits `` - at `$` `` for the root)."""
    m = _MSGSPEC_ERROR.fullmatch(str(exc))
    return (m.group(1), _parse_path(m.group(2))) if m else (str(exc), [])


def _parse_path(where: str) -> list[PathSeg]:
    return [
        key if key else int(index) if index else None
        for key, index, _ in _PATH_TOKEN.findall(where)
    ]


def _resolve_dict_keys(segs: list[PathSeg], raw: dict[str, Any]) -> list[PathSeg]:
    """Name the dict keys msgspec writes as ``[...]``, by converting one entry at a time."""
    pattern, segs = segs, list(segs)
    for i, seg in enumerate(pattern):
        if seg is not None:
            continue
        table = _get(raw, segs[:i])
        if not isinstance(table, dict):
            break
        for key, value in table.items():
            trial = _replace(raw, segs[:i], {key: value})
            try:
                msgspec.convert(trial, type=Config, dec_hook=dec_hook)
            except msgspec.ValidationError as exc:
                if _split_error(exc)[1][: i + 1] == pattern[: i + 1]:
                    segs[i] = key
                    break
        else:
            break
    return segs


def _rewrite(text: str, segs: list[PathSeg], raw: dict[str, Any]) -> tuple[list[PathSeg], str]:
    """msgspec's wording -> ours, in TOML terms, quoting the offending value."""
    if m := re.fullmatch(r"Object contains unknown field `(.*)`", text):
        key = m.group(1)
        node = _node_at(segs, raw)
        fields = [f.encode_name for f in node.fields] if isinstance(node, mi.StructType) else []
        return [*segs, key], f"unknown key{_suggest(key, fields)}"
    if m := re.fullmatch(r"Object missing required field `(.*)`", text):
        return [*segs, m.group(1)], "missing required key"
    got = _got(segs, raw)
    if text.startswith("Invalid enum value"):
        node = _node_at(segs, raw)
        if isinstance(node, mi.LiteralType):
            choices = ", ".join(show(v) for v in node.values)
            return segs, f"expected one of {choices}; got {got}"
        if isinstance(node, mi.UnionType):  # a number or a word, e.g. a rule's threshold
            words = [
                show(v)
                if isinstance(m, mi.LiteralType)
                else _TYPE_WORDS.get(_KIND.get(type(m), ""), "")
                for m in node.types
                if not isinstance(m, mi.NoneType)
                for v in (m.values if isinstance(m, mi.LiteralType) else (None,))
            ]
            return segs, f"expected {' or '.join(w for w in words if w)}; got {got}"
    if m := re.fullmatch(r"Expected `([^`]*)`(.*?)(?:, got `[^`]*`)?", text):
        words = [_TYPE_WORDS.get(t, t) for t in m.group(1).split(" | ") if t != "null"]
        message = f"expected {' or '.join(words)}{m.group(2)}; got {got}"
        if segs == ["connectors"] and isinstance(_get(raw, segs), dict):
            message += " (write each connector as a [[connectors]] table)"
        return segs, message
    return segs, f"{text[:1].lower()}{text[1:]}; got {got}"


def _node_at(segs: list[PathSeg], raw: dict[str, Any]) -> mi.Type | None:
    node: mi.Type = _schema()
    cursor: Any = raw
    for seg in segs:
        if isinstance(node, mi.UnionType):
            node = _tagged_member(node, cursor)
        cursor = _get(cursor, [seg])
        if isinstance(node, mi.StructType) and isinstance(seg, str):
            node = next((f.type for f in node.fields if f.encode_name == seg), mi.AnyType())
        elif isinstance(node, mi.VarTupleType | mi.ListType):
            node = node.item_type
        elif isinstance(node, mi.DictType):
            node = node.value_type
        else:
            return None
    if isinstance(node, mi.UnionType):
        node = _tagged_member(node, cursor)
    return node


def _get(data: Any, segs: list[PathSeg]) -> Any:
    for seg in segs:
        in_table = isinstance(data, dict) and isinstance(seg, str) and seg in data
        in_array = isinstance(data, list) and isinstance(seg, int) and seg < len(data)
        if not (in_table or in_array):
            return _MISSING
        data = data[seg]
    return data


def _replace(data: Any, segs: list[PathSeg], value: Any) -> Any:
    if not segs:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[segs[0]] = _replace(copy[segs[0]], segs[1:], value)  # type: ignore[index]
    return copy


def _got(segs: list[PathSeg], raw: dict[str, Any]) -> str:
    if segs and isinstance(segs[-1], str) and is_secret(segs[-1]):
        return REDACTED
    value = _get(raw, segs)
    return "nothing" if value is _MISSING else show(value)


def _suggest(key: str, valid: Any) -> str:
    names = list(valid)
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (expected one of: {', '.join(names)})" if names else ""


# --- output ------------------------------------------------------------------------------


def redacted(cfg: Config) -> dict[str, Any]:
    """The effective config as plain data for logging: durations as ``"1s"``-style strings,
    connectors with their ``type``, secret fields (when set) as ``"***"``."""
    return cast(dict[str, Any], _plain(cfg))


def _plain(value: Any) -> Any:
    if isinstance(value, Duration):
        return str(value)
    if isinstance(value, Struct):
        out: dict[str, Any] = {}
        conf = value.__struct_config__
        if conf.tag_field is not None:
            out[conf.tag_field] = conf.tag
        for name, key in zip(value.__struct_fields__, value.__struct_encode_fields__, strict=True):
            v = getattr(value, name)
            out[key] = REDACTED if is_secret(name) and v is not None else _plain(v)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
