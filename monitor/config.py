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
import json
import math
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, TypeAlias, cast, get_args

import msgspec
import msgspec.inspect as mi
from msgspec import Meta, Struct

__all__ = [
    "CONFIG_PATH_ENV",
    "NON_CONFIG_ENV_VARS",
    "Config",
    "ConfigError",
    "ConnectorConfig",
    "Duration",
    "EngineConfig",
    "EstimatorConfig",
    "LogConfig",
    "RiskConfig",
    "ServerConfig",
    "SimulatedConnector",
    "load_config",
    "parse_duration",
    "redacted",
]

ENV_PREFIX: Final = "RISKMON_"
#: The config file path, for the CLI (``load_config`` itself never reads it).
CONFIG_PATH_ENV: Final = "RISKMON_CONFIG"
#: ``RISKMON_`` variables that are not config keys and so are not checked against the schema.
NON_CONFIG_ENV_VARS: Final = frozenset({CONFIG_PATH_ENV})

_SECRET_SUFFIXES: Final = ("secret", "password", "token", "api_key")
_REDACTED: Final = "***"


class ConfigError(Exception):
    """Invalid configuration. ``path`` is the key path (``""`` for file-level errors)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class _Invalid(ConfigError, ValueError):
    """Raised by ``__post_init__`` checks; a ValueError so msgspec adds the section path.

    ``segs`` is the key path relative to the Struct that raised it.
    """

    def __init__(self, segs: tuple[str | int, ...], message: str) -> None:
        super().__init__(_format_path(segs), message)
        self.segs = segs


# --- durations ---------------------------------------------------------------------------

_UNITS: Final = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_FULL = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|d|h|m|s))+")
_DURATION_HINT: Final = 'expected a duration such as "250ms", "1s", "1h"'


class Duration(int):
    """A positive span of time in whole milliseconds.

    ``Duration("1h30m")`` or ``Duration(5_400_000)``; ``str()`` gives the compact human form
    back (``"1h30m"``), which :func:`parse_duration` reads again.

    >>> d = Duration("1m30s")
    >>> int(d), d.seconds, str(d)
    (90000, 90.0, '1m30s')
    """

    __slots__ = ()

    def __new__(cls, value: int | str) -> Duration:
        if isinstance(value, str):
            return parse_duration(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Duration takes int milliseconds or a string, not {value!r}")
        if value <= 0:
            raise ValueError(f"expected a duration > 0; got {value} ms")
        return super().__new__(cls, value)

    @property
    def seconds(self) -> float:
        """The duration in seconds."""
        return int(self) / 1000.0

    def __str__(self) -> str:
        rest = int(self)
        parts: list[str] = []
        for unit, size in _UNITS.items():
            count, rest = divmod(rest, size)
            if count:
                parts.append(f"{count}{unit}")
        return "".join(parts)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    def __format__(self, spec: str) -> str:
        return str(self) if not spec else int(self).__format__(spec)


def parse_duration(text: str) -> Duration:
    """Parse ``"250ms"``, ``"1s"``, ``"10m"``, ``"1h30m"``, ``"1d"``, ``"1.5s"``.

    Units are ``ms``, ``s``, ``m``, ``h``, ``d``, largest first, each at most once; the total
    must be a positive whole number of milliseconds.

    Raises
    ------
    ValueError
        With a message fit for a :class:`ConfigError` (no key path).
    """
    s = text.strip()
    if not _DURATION_FULL.fullmatch(s):
        raise ValueError(f"{_DURATION_HINT}; got {_show(text)}")
    total = Decimal(0)
    last = math.inf
    for number, unit in _DURATION_PART.findall(s):
        size = _UNITS[unit]
        if size >= last:
            raise ValueError(
                f"{_DURATION_HINT}; got {_show(text)} (units go largest first, each once)"
            )
        last = size
        total += Decimal(number) * size
    if total != total.to_integral_value():
        raise ValueError(f"expected a whole number of milliseconds; got {_show(text)}")
    if total <= 0:
        raise ValueError(f"expected a duration > 0; got {_show(text)}")
    return Duration(int(total))


class Delay(Duration):
    """A span of time >= 0 in whole milliseconds (a rule's ``for``, ``cooldown``).

    Like :class:`Duration`, but zero is allowed and written ``"0s"``.

    >>> str(Delay("0s")), str(Delay("1m30s")), int(Delay(0))
    ('0s', '1m30s', 0)
    """

    __slots__ = ()

    def __new__(cls, value: int | str) -> Delay:
        if isinstance(value, str):
            return parse_delay(value)
        if value == 0 and not isinstance(value, bool) and isinstance(value, int):
            return int.__new__(cls, 0)
        return cast(Delay, super().__new__(cls, value))

    def __str__(self) -> str:
        return super().__str__() if self else "0s"

    def __repr__(self) -> str:
        return f"Delay({str(self)!r})"


def parse_delay(text: str) -> Delay:
    """Parse a :class:`Delay`: what :func:`parse_duration` reads, or zero (``"0s"``)."""
    s = text.strip()
    if _DURATION_FULL.fullmatch(s) and all(Decimal(n) == 0 for n, _ in _DURATION_PART.findall(s)):
        return Delay(0)
    return Delay(int(parse_duration(text)))


def _dec_hook(tp: type[Any], obj: Any) -> Any:
    if tp is Duration or tp is Delay:
        if isinstance(obj, str):
            return parse_duration(obj) if tp is Duration else parse_delay(obj)
        unitless = isinstance(obj, int | float) and not isinstance(obj, bool)
        raise ValueError(
            f"{_DURATION_HINT}; got {_show(obj)}" + (" (a number needs a unit)" if unitless else "")
        )
    raise NotImplementedError(f"no decoder for {tp!r}")


# --- schema ------------------------------------------------------------------------------


def _is_secret(name: str) -> bool:
    return name.lower().endswith(_SECRET_SUFFIXES)


class _Section(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config Struct: secrets never reach ``repr()``."""

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={_REDACTED!r}"
            if _is_secret(name) and getattr(self, name) is not None
            else f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
        )
        return f"{type(self).__name__}({fields})"


class ServerConfig(_Section, frozen=True):
    """HTTP server for ``/metrics`` and ``/api/v1``: loopback unless told otherwise."""

    listen: str = "127.0.0.1:9321"

    def __post_init__(self) -> None:
        _split_listen(self.listen)

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
        raise _Invalid(("listen",), f"{hint}; got {_show(listen)}")
    if host.startswith("["):
        if not host.endswith("]") or len(host) < 3:
            raise _Invalid(("listen",), f"{hint}; got {_show(listen)}")
        host = host[1:-1]
    elif ":" in host:
        raise _Invalid(("listen",), f"an IPv6 address needs brackets ({hint}); got {_show(listen)}")
    # Port 0 binds a free port (tests, ad-hoc runs); the bound address is logged.
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise _Invalid(("listen",), f"expected a port 0..65535; got {_show(listen)}")
    return host, int(port_text)


class LogConfig(_Section, frozen=True):
    """``format = "auto"`` means text on a terminal, JSON lines otherwise."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"


class EngineConfig(_Section, frozen=True):
    #: Bound on queued non-price events (prices are conflated and never queue up).
    queue_size: Annotated[int, Meta(gt=0)] = 100_000


class EstimatorConfig(_Section, frozen=True):
    """EWMA covariance on a fixed sample grid (DESIGN.md "Risk definitions")."""

    sample_interval: Duration = parse_duration("1s")
    halflife: Duration = parse_duration("10m")
    fast_halflife: Duration = parse_duration("1m")
    warmup: Duration = parse_duration("5m")
    #: An outage longer than this restarts the sample grid without a return.
    max_gap: Duration = parse_duration("1m")

    def __post_init__(self) -> None:
        if self.fast_halflife >= self.halflife:
            raise _Invalid(
                ("fast_halflife",),
                f"must be shorter than halflife ({self.halflife}); got {self.fast_halflife}",
            )
        if self.sample_interval >= self.fast_halflife:
            raise _Invalid(
                ("sample_interval",),
                f"must be shorter than fast_halflife ({self.fast_halflife}); "
                f"got {self.sample_interval}",
            )


Weight = Annotated[float, Meta(ge=0)]


class RiskConfig(_Section, frozen=True):
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
                    raise _Invalid(
                        ("budgets", account, underlying), f"expected a finite weight; got {w}"
                    )
            if not sum(weights.values()) > 0:
                raise _Invalid(("budgets", account), "weights must have a positive sum")


# Epoch milliseconds in 2000..2200, as in monitor.model.events: outside is a unit mix-up.
EpochMs = Annotated[int, Meta(ge=946_684_800_000, le=7_258_118_400_000)]
ConnectorName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]


class _ConnectorBase(_Section, frozen=True, tag_field="type"):
    """Base of the ``[[connectors]]`` union, tagged on ``type``.

    To add a connector type: subclass with ``tag="<type>"``, redeclare ``name`` with the
    type as its default, and add the class to :data:`ConnectorConfig`. Fields whose name
    ends in ``secret``/``password``/``token``/``api_key`` are redacted automatically;
    ``__post_init__`` messages must not quote them.
    """

    name: ConnectorName


class SimulatedConnector(_ConnectorBase, frozen=True, tag="simulated"):
    """Seeded random-walk prices for the given underlyings (demo and tests)."""

    name: ConnectorName = "simulated"
    seed: int = 7
    tick_interval: Duration = parse_duration("200ms")
    underlyings: Annotated[
        tuple[Annotated[str, Meta(pattern=r"^[A-Z0-9]{1,20}$")], ...], Meta(min_length=1)
    ] = ("BTC", "ETH", "SOL")
    #: Simulated start time; None = the clock's now.
    start_ms: EpochMs | None = None
    #: Pace ticks at wall-clock speed; False = as fast as the engine takes them.
    realtime: bool = True
    #: Stop after this much simulated time; None = run until cancelled.
    duration: Duration | None = None

    def __post_init__(self) -> None:
        for i, u in enumerate(self.underlyings):
            if not u:
                raise _Invalid(("underlyings", i), "expected a non-empty name")
            if u in self.underlyings[:i]:
                raise _Invalid(("underlyings", i), f"duplicate underlying {_show(u)}")


#: Every connector type; adding one is one class above and one member here.
ConnectorConfig: TypeAlias = SimulatedConnector

_CONNECTOR_TYPES: Final[dict[str, type[_ConnectorBase]]] = {
    cast(str, cls.__struct_config__.tag): cls
    for cls in (get_args(ConnectorConfig) or (ConnectorConfig,))
}


def _env_name(name: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", name.upper())


# --- margin model ------------------------------------------------------------------------


class StressConfig(_Section, frozen=True):
    """A named what-if revalued every evaluation: moves per underlying and a vol shift."""

    name: str
    moves: dict[str, Annotated[float, Meta(gt=-1.0)]] = msgspec.field(default_factory=dict)
    default_move: Annotated[float, Meta(gt=-1.0)] = 0.0
    vol_shift: Annotated[float, Meta(gt=-1.0)] = 0.0


class MarginConfig(_Section, frozen=True):
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
    aggregation: Literal["sum", "joint"] = "sum"
    max_move: Annotated[float, Meta(gt=0.0, lt=1.0)] = 0.9
    stresses: tuple[StressConfig, ...] = ()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for i, st in enumerate(self.stresses):
            if st.name in seen:
                raise _Invalid(("stresses", i, "name"), f"duplicate stress {_show(st.name)}")
            seen.add(st.name)


# --- alert delivery ----------------------------------------------------------------------


class WebhookConfig(_Section, frozen=True):
    """JSON POST of every alert transition, with an idempotency key per transition."""

    url: str
    timeout: Duration = parse_duration("5s")
    max_backoff: Duration = parse_duration("1m")
    #: Sent as ``Authorization: Bearer <token>`` when set (a secret: env, not the file).
    token: str | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise _Invalid(("url",), f"expected an http(s) URL; got {_show(self.url)}")


class MqttAlertsConfig(_Section, frozen=True):
    """Alerts published with QoS 1, one retained topic per rule and account."""

    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 1883
    topic_prefix: str = "riskmon/alerts"
    client_id: str = "riskmon"
    username: str | None = None
    password: str | None = None
    max_backoff: Duration = parse_duration("30s")


class AlertmanagerConfig(_Section, frozen=True):
    """Prometheus Alertmanager v2 API: alerts re-sent while firing, ``endsAt`` on resolve."""

    url: str = "http://127.0.0.1:9093"
    resend_interval: Duration = parse_duration("1m")
    timeout: Duration = parse_duration("5s")
    max_backoff: Duration = parse_duration("1m")

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise _Invalid(("url",), f"expected an http(s) URL; got {_show(self.url)}")


class AlertsConfig(_Section, frozen=True):
    """Where alert transitions go besides the log (which always gets them).

    Transitions not yet acknowledged by a notifier wait in an on-disk ``outbox`` directory
    and are delivered after a restart; ``outbox`` is required once any notifier is set.
    """

    outbox: str | None = None
    webhook: WebhookConfig | None = None
    mqtt: MqttAlertsConfig | None = None
    alertmanager: AlertmanagerConfig | None = None

    def __post_init__(self) -> None:
        if self.outbox is None and (self.webhook or self.mqtt or self.alertmanager):
            raise _Invalid(
                ("outbox",),
                "required with a notifier: a directory where undelivered alerts wait "
                '(e.g. "/var/lib/riskmon/outbox")',
            )


# --- alert rules -------------------------------------------------------------------------

#: A threshold in the figure's unit, or ``"off"``: the rule does not use that severity.
Threshold: TypeAlias = float | Literal["off"]
PositiveUsd = Annotated[float, Meta(gt=0)]


class _RuleBase(_Section, frozen=True, kw_only=True, tag_field="name"):
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
        from monitor.rules.machine import check_thresholds

        problem = check_thresholds(
            self.direction, self.warning_level, self.critical_level, self.clear
        )
        if problem is not None:
            raise _Invalid((problem[0],), problem[1])

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
)

RULE_TYPES: Final[dict[str, type[RuleConfig]]] = {
    cast(str, cls.__struct_config__.tag): cls for cls in get_args(RuleConfig)
}


class AccountLimits(_Section, frozen=True):
    """Limits of one account (``[limits.<account>]``); unset = that rule is off for it."""

    #: |net delta| limit, USD (rule ``net_delta_limit``).
    delta_usd: PositiveUsd | None = None
    #: |net vega| limit, USD per vol point (rule ``net_vega_limit``).
    vega: PositiveUsd | None = None

    def __post_init__(self) -> None:
        for name in ("delta_usd", "vega"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise _Invalid((name,), f"expected a finite limit; got {_show(v)}")


class Config(_Section, frozen=True):
    """The whole daemon configuration (see ``deploy/riskmon.example.toml``)."""

    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    engine: EngineConfig = msgspec.field(default_factory=EngineConfig)
    estimator: EstimatorConfig = msgspec.field(default_factory=EstimatorConfig)
    risk: RiskConfig = msgspec.field(default_factory=RiskConfig)
    margin: MarginConfig = msgspec.field(default_factory=MarginConfig)
    alerts: AlertsConfig = msgspec.field(default_factory=AlertsConfig)
    #: Every built-in rule once, in pack order; an entry given overrides that rule's
    #: defaults, a rule not given keeps them.
    rules: tuple[RuleConfig, ...] = ()
    #: Per-account limits, by account name.
    limits: dict[str, AccountLimits] = msgspec.field(default_factory=dict)
    #: Empty means one default simulated connector.
    connectors: tuple[ConnectorConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.connectors:
            msgspec.structs.force_setattr(self, "connectors", (SimulatedConnector(),))
        given: dict[str, int] = {}
        for i, rule in enumerate(self.rules):
            if rule.rule in given:
                raise _Invalid(
                    ("rules", i, "name"),
                    f"duplicate rule {_show(rule.rule)} (rules[{given[rule.rule]}] sets it too)",
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
                raise _Invalid(
                    ("connectors", i, "name"),
                    f"duplicate connector name {_show(conn.name)} (connectors[{j}].name is "
                    f"{_show(self.connectors[j].name)}; names are compared ignoring case and "
                    "punctuation, as in environment variables)",
                )
            seen[key] = i


# --- loading -----------------------------------------------------------------------------


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the TOML file at ``path`` (None: defaults only), then apply ``env`` overrides.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment.

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
    try:
        return msgspec.convert(raw, type=Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise _translate(exc, raw, origins) from None


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
        raw["connectors"] = [{"type": next(iter(_CONNECTOR_TYPES))}]
        return
    if not isinstance(entries, list):
        return  # msgspec reports the type
    expected = ", ".join(_CONNECTOR_TYPES)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue
        if "type" not in entry:
            raise ConfigError(f"connectors[{i}].type", f"missing; expected one of: {expected}")
        kind = entry["type"]
        if not isinstance(kind, str) or kind not in _CONNECTOR_TYPES:
            raise ConfigError(
                f"connectors[{i}].type",
                f"unknown connector type {kind!r}; expected one of: {expected}",
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
            raise ConfigError(f"rules[{i}].name", f"unknown rule {_show(name)}{hint}")
        if name in seen:
            raise ConfigError(
                f"rules[{i}].name",
                f"duplicate rule {_show(name)} (rules[{seen[name]}] sets it too)",
            )
        seen[name] = i
    entries.extend({"name": name} for name in RULE_TYPES if name not in seen)


_Seg: TypeAlias = str | int | None  # None: a dict key msgspec did not name ("[...]")
_MISSING: Final = object()


@functools.cache
def _schema() -> mi.StructType:
    return cast(mi.StructType, mi.type_info(Config))


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[_Seg, ...], str]:
    """Write ``RISKMON_*`` overrides into ``raw``; return key path -> variable name."""
    origins: dict[tuple[_Seg, ...], str] = {}
    for var in sorted(env):
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_CONFIG_ENV_VARS:
            continue
        parts = var[len(ENV_PREFIX) :].split("__")
        segs, node, parent = _env_target(var, parts, raw)
        key = cast(str, segs[-1])
        if tuple(segs) in origins:
            raise ConfigError(_format_path(segs), f"set by both {origins[tuple(segs)]} and {var}")
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
                    _format_path([*segs, key]), f"unknown key in {var}{_suggest(key, fields)}"
                )
            node = fields[key]
            table = isinstance(node, mi.StructType) or (not segs and key in _NAMED_LISTS)
            if last and not table:
                return [*segs, key], node, cursor
            segs.append(key)
            if isinstance(node, mi.DictType):
                example = _TABLE_EXAMPLES.get(_format_path(segs), "{ main = { ... } }")
                raise ConfigError(
                    _format_path(segs),
                    f"cannot set keys inside this table one at a time ({var}); set it whole "
                    f"as an inline TOML table: {ENV_PREFIX}{'__'.join(map(str, segs)).upper()}"
                    f"='{example}'",
                )
            if not table:
                raise ConfigError(
                    _format_path([*segs, parts[i + 1].lower()]), f"unknown key in {var}"
                )
            child = cursor.setdefault(key, {} if isinstance(node, mi.StructType) else [])
            if not isinstance(child, dict | list):
                raise ConfigError(
                    _format_path(segs), f"expected a table; got {_show(child)} (in the file)"
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
            raise ConfigError(_format_path([*segs, key]), f"unknown key in {var}")
    key = "<NAME>__<KEY>" if len(segs) == 1 and segs[0] in _NAMED_LISTS else "<KEY>"
    raise ConfigError(
        _format_path(segs), f"is a table; set one of its keys ({var.upper()}__{key}), not the table"
    )


#: Arrays of tables whose entries the environment addresses by ``name`` (-> singular).
_NAMED_LISTS: Final = {"connectors": "connector", "rules": "rule"}
#: Examples for the "set this table whole" hint.
_TABLE_EXAMPLES: Final = {
    "risk.budgets": "{ main = { BTC = 0.5, ETH = 0.5 } }",
    "limits": "{ main = { delta_usd = 2e6, vega = 5e4 } }",
}


def _default_name(entry: dict[str, Any]) -> str:
    cls = _CONNECTOR_TYPES[entry["type"]]
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
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
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
    exc: msgspec.ValidationError, raw: dict[str, Any], origins: dict[tuple[_Seg, ...], str]
) -> ConfigError:
    text, segs = _split_error(exc)
    segs = _resolve_dict_keys(segs, raw)
    cause = exc.__cause__
    if isinstance(cause, _Invalid):
        segs, message = [*segs, *cause.segs], cause.message
    elif isinstance(cause, ValueError):  # from _dec_hook: already in our words
        message = text
    else:
        segs, message = _rewrite(text, segs, raw)
    for n in range(len(segs), 0, -1):
        if tuple(segs[:n]) in origins:
            message += f" (from {origins[tuple(segs[:n])]})"
            break
    return ConfigError(_format_path(segs), message)


def _split_error(exc: msgspec.ValidationError) -> tuple[str, list[_Seg]]:
    """msgspec's message and key path (it omits `` - at `$` `` for the root)."""
    m = _MSGSPEC_ERROR.fullmatch(str(exc))
    return (m.group(1), _parse_path(m.group(2))) if m else (str(exc), [])


def _parse_path(where: str) -> list[_Seg]:
    return [
        key if key else int(index) if index else None
        for key, index, _ in _PATH_TOKEN.findall(where)
    ]


def _resolve_dict_keys(segs: list[_Seg], raw: dict[str, Any]) -> list[_Seg]:
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
                msgspec.convert(trial, type=Config, dec_hook=_dec_hook)
            except msgspec.ValidationError as exc:
                if _split_error(exc)[1][: i + 1] == pattern[: i + 1]:
                    segs[i] = key
                    break
        else:
            break
    return segs


def _rewrite(text: str, segs: list[_Seg], raw: dict[str, Any]) -> tuple[list[_Seg], str]:
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
            choices = ", ".join(_show(v) for v in node.values)
            return segs, f"expected one of {choices}; got {got}"
        if isinstance(node, mi.UnionType):  # a number or a word, e.g. a rule's threshold
            words = [
                _show(v)
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


def _node_at(segs: list[_Seg], raw: dict[str, Any]) -> mi.Type | None:
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


def _get(data: Any, segs: list[_Seg]) -> Any:
    for seg in segs:
        in_table = isinstance(data, dict) and isinstance(seg, str) and seg in data
        in_array = isinstance(data, list) and isinstance(seg, int) and seg < len(data)
        if not (in_table or in_array):
            return _MISSING
        data = data[seg]
    return data


def _replace(data: Any, segs: list[_Seg], value: Any) -> Any:
    if not segs:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[segs[0]] = _replace(copy[segs[0]], segs[1:], value)  # type: ignore[index]
    return copy


def _got(segs: list[_Seg], raw: dict[str, Any]) -> str:
    if segs and isinstance(segs[-1], str) and _is_secret(segs[-1]):
        return _REDACTED
    value = _get(raw, segs)
    return "nothing" if value is _MISSING else _show(value)


def _show(value: Any) -> str:
    """A value as it would be written in TOML (tables and long arrays abbreviated)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        shown = "[" + ", ".join(_show(v) for v in value) + "]"
        return shown if len(shown) <= 60 else f"an array of {len(value)}"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return repr(value)


def _suggest(key: str, valid: Any) -> str:
    names = list(valid)
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (expected one of: {', '.join(names)})" if names else ""


def _format_path(segs: Sequence[_Seg]) -> str:
    out = ""
    for seg in segs:
        if isinstance(seg, int):
            out += f"[{seg}]"
        elif seg is None:
            out += "[...]"
        else:
            out += ("." if out else "") + (seg if _BARE_KEY.fullmatch(seg) else json.dumps(seg))
    return out


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
            out[key] = _REDACTED if _is_secret(name) and v is not None else _plain(v)
        return out
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
