"""monitor.config: defaults, file + env loading, error paths, redaction, durations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

import msgspec
import pytest

from connectors import CONNECTOR_TYPES
from connectors.base import ConnectorSettings
from connectors.simulated_config import SimulatedConnector
from monitor.config import (
    NON_CONFIG_ENV_VARS,
    Config,
    ConfigError,
    EstimatorConfig,
    load_config,
    redacted,
)
from monitor.model.settings import Delay, Duration, dec_hook, parse_delay, parse_duration
from monitor.rules.config import (
    RULE_TYPES,
    AccountLimits,
    ConnectorDownRule,
    HedgeOffsetRule,
    MarginUtilizationRule,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "riskmon.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "riskmon.toml"
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env=env or {})
    return info.value


# --- defaults and a full file ------------------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(env={})
    assert cfg == Config()
    assert cfg.server.listen == "127.0.0.1:9321"
    assert (cfg.server.host, cfg.server.port) == ("127.0.0.1", 9321)
    assert (cfg.log.level, cfg.log.format) == ("info", "auto")
    assert cfg.engine.queue_size == 100_000
    est = cfg.estimator
    assert (est.sample_interval, est.halflife, est.fast_halflife) == (1_000, 600_000, 60_000)
    assert (est.warmup, est.max_gap) == (300_000, 60_000)
    assert all(
        type(d) is Duration for d in (est.sample_interval, est.halflife, cfg.risk.eval_interval)
    )
    assert cfg.risk.eval_interval == 250
    assert cfg.risk.var_confidence == 0.99
    assert cfg.risk.var_horizon == 86_400_000
    assert cfg.risk.budgets == {}
    assert cfg.connectors == (
        SimulatedConnector(
            name="simulated",
            seed=7,
            tick_interval=Duration(200),
            underlyings=("BTC", "ETH", "SOL"),
            start_ms=None,
            realtime=True,
            duration=None,
            history=Delay("6m"),
        ),
    )


def test_empty_connector_list_means_the_default(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "connectors = []\n"), env={}) == Config()
    # The built-in demo: the simulated market, warm within seconds (its history).
    assert Config(connectors=()).connectors == (SimulatedConnector(history=Delay("6m")),)
    assert SimulatedConnector().history == 0  # a declared one starts now


FULL = """
[server]
listen = "[::1]:9400"

[log]
level = "debug"
format = "json"

[engine]
queue_size = 5000

[estimator]
sample_interval = "500ms"
halflife = "1h30m"
fast_halflife = "5m"
warmup = "15m"
max_gap = "30s"

[risk]
eval_interval = "1s"
var_confidence = 0.975
var_horizon = "12h"

[risk.budgets.main]
BTC = 0.5
ETH = 0.3
SOL = 0.2

[risk.budgets."desk-b"]
BTC = 2
ETH = 0

[[connectors]]
type = "simulated"
name = "sim-a"
seed = 42
tick_interval = "100ms"
underlyings = ["BTC"]
start_ms = 1767225600000
realtime = false
duration = "2h"

[[connectors]]
type = "simulated"
name = "sim-b"
"""


def test_full_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), env={})
    assert (cfg.server.host, cfg.server.port) == ("::1", 9400)
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert cfg.engine.queue_size == 5000
    assert cfg.estimator == EstimatorConfig(
        sample_interval=Duration(500),
        halflife=Duration(5_400_000),
        fast_halflife=Duration(300_000),
        warmup=Duration(900_000),
        max_gap=Duration(30_000),
    )
    assert cfg.risk.eval_interval == 1000
    assert cfg.risk.var_confidence == 0.975
    assert cfg.risk.var_horizon == 43_200_000
    # Kept as written: normalising is the risk code's job.
    assert cfg.risk.budgets == {
        "main": {"BTC": 0.5, "ETH": 0.3, "SOL": 0.2},
        "desk-b": {"BTC": 2.0, "ETH": 0.0},
    }
    assert cfg.connectors == (
        SimulatedConnector(
            name="sim-a",
            seed=42,
            tick_interval=Duration(100),
            underlyings=("BTC",),
            start_ms=1_767_225_600_000,
            realtime=False,
            duration=Duration(7_200_000),
        ),
        SimulatedConnector(name="sim-b"),
    )


def test_redacted_is_the_config_in_file_form(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL), env={})
    plain = redacted(cfg)
    assert plain["estimator"]["halflife"] == "1h30m"
    assert plain["connectors"][0]["type"] == "simulated"
    assert plain["connectors"][0]["underlyings"] == ["BTC"]
    again = msgspec.convert(plain, type=Config, dec_hook=dec_hook)
    assert again == cfg


def test_sections_are_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.server.listen = "0.0.0.0:1"  # type: ignore[misc]


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        pytest.param(
            '[estimator]\nhalflif = "10m"\n',
            "estimator.halflif",
            'estimator.halflif: unknown key (did you mean "halflife"?)',
            id="unknown-key",
        ),
        pytest.param(
            '[estimatr]\nhalflife = "10m"\n',
            "estimatr",
            'estimatr: unknown key (did you mean "estimator"?)',
            id="unknown-section",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\nsed = 1\n',
            "connectors[0].sed",
            'connectors[0].sed: unknown key (did you mean "seed"?)',
            id="unknown-connector-key",
        ),
        pytest.param(
            "[server]\nbogus = 1\n",
            "server.bogus",
            "server.bogus: unknown key (expected one of: listen, token_file, protect_metrics)",
            id="unknown-key-no-match",
        ),
        pytest.param(
            '[engine]\nqueue_size = "big"\n',
            "engine.queue_size",
            'engine.queue_size: expected an integer; got "big"',
            id="wrong-type",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\n[[connectors]]\ntype = "simulated"\n'
            'name = "b"\nseed = 1.5\n',
            "connectors[1].seed",
            "connectors[1].seed: expected an integer; got 1.5",
            id="wrong-type-in-connector",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\nunderlyings = "BTC"\n',
            "connectors[0].underlyings",
            'connectors[0].underlyings: expected an array; got "BTC"',
            id="wrong-type-array",
        ),
        pytest.param(
            "[connectors]\ntype = 'simulated'\n",
            "connectors",
            "connectors: expected an array; got a table "
            "(write each connector as a [[connectors]] table)",
            id="connectors-not-array",
        ),
        pytest.param(
            '[estimator]\nhalflife = "10 minutes"\n',
            "estimator.halflife",
            'estimator.halflife: expected a duration such as "250ms", "1s", "1h"; got "10 minutes"',
            id="bad-duration",
        ),
        pytest.param(
            "[estimator]\nhalflife = 600\n",
            "estimator.halflife",
            'estimator.halflife: expected a duration such as "250ms", "1s", "1h"; '
            "got 600 (a number needs a unit)",
            id="unitless-duration",
        ),
        pytest.param(
            '[risk]\neval_interval = "0s"\n',
            "risk.eval_interval",
            'risk.eval_interval: expected a duration > 0; got "0s"',
            id="zero-duration",
        ),
        pytest.param(
            "[engine]\nqueue_size = 0\n",
            "engine.queue_size",
            "engine.queue_size: expected an integer >= 1; got 0",
            id="range-int",
        ),
        pytest.param(
            "[risk]\nvar_confidence = 1.0\n",
            "risk.var_confidence",
            "risk.var_confidence: expected a number < 1.0; got 1.0",
            id="range-float-high",
        ),
        pytest.param(
            "[risk]\nvar_confidence = 0.5\n",
            "risk.var_confidence",
            "risk.var_confidence: expected a number > 0.5; got 0.5",
            id="range-float-low",
        ),
        pytest.param(
            '[log]\nlevel = "verbose"\n',
            "log.level",
            'log.level: expected one of "debug", "error", "info", "warning"; got "verbose"',
            id="literal",
        ),
        pytest.param(
            '[estimator]\nfast_halflife = "10m"\n',
            "estimator.fast_halflife",
            "estimator.fast_halflife: must be shorter than halflife (10m); got 10m",
            id="fast-halflife-not-shorter",
        ),
        pytest.param(
            '[estimator]\nsample_interval = "1m"\n',
            "estimator.sample_interval",
            "estimator.sample_interval: must be shorter than fast_halflife (1m); got 1m",
            id="sample-interval-not-shorter",
        ),
        pytest.param(
            '[estimator]\nvar_halflife = "1s"\n',
            "estimator.var_halflife",
            "estimator.var_halflife: must be longer than sample_interval (1s); got 1s",
            id="var-halflife-not-longer",
        ),
        pytest.param(
            "[risk.budgets.main]\nBTC = 0.5\n[risk.budgets.other]\nBTC = 1\nETH = -0.1\n",
            "risk.budgets.other.ETH",
            "risk.budgets.other.ETH: expected a number >= 0.0; got -0.1",
            id="negative-weight",
        ),
        pytest.param(
            '[risk.budgets."desk a"]\nETH = "x"\n',
            'risk.budgets."desk a".ETH',
            'risk.budgets."desk a".ETH: expected a number; got "x"',
            id="weight-wrong-type-quoted-key",
        ),
        pytest.param(
            "[risk.budgets.main]\nBTC = 0\nETH = 0\n",
            "risk.budgets.main",
            "risk.budgets.main: weights must have a positive sum",
            id="zero-sum-budget",
        ),
        pytest.param(
            "[risk.budgets.main]\nBTC = inf\n",
            "risk.budgets.main.BTC",
            "risk.budgets.main.BTC: expected a finite weight; got inf",
            id="infinite-weight",
        ),
        pytest.param(
            '[server]\nlisten = "localhost:70000"\n',
            "server.listen",
            'server.listen: expected a port 0..65535; got "localhost:70000"',
            id="port-range",
        ),
        pytest.param(
            '[server]\nlisten = "::1:9321"\n',
            "server.listen",
            'server.listen: an IPv6 address needs brackets (expected "host:port" such as '
            '"127.0.0.1:9321" or "[::1]:9321"); got "::1:9321"',
            id="ipv6-without-brackets",
        ),
        pytest.param(
            '[server]\nlisten = "9321"\n',
            "server.listen",
            'server.listen: expected "host:port" such as "127.0.0.1:9321" or "[::1]:9321"; '
            'got "9321"',
            id="listen-without-host",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\nname = "a"\n'
            '[[connectors]]\ntype = "simulated"\nname = "A"\n',
            "connectors[1].name",
            'connectors[1].name: duplicate connector name "A" (connectors[0].name is "a"; '
            "names are compared ignoring case and punctuation, as in environment variables)",
            id="duplicate-connector-name",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\n[[connectors]]\ntype = "derbit"\n',
            "connectors[1].type",
            'connectors[1].type: unknown connector type "derbit" (did you mean "deribit"?)',
            id="unknown-connector-type",
        ),
        pytest.param(
            '[[connectors]]\nname = "x"\n',
            "connectors[0].type",
            "connectors[0].type: missing; expected one of: simulated, deribit, mqtt, "
            "binance_futures",
            id="missing-connector-type",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\nstart_ms = 1767225600\n',
            "connectors[0].start_ms",
            "connectors[0].start_ms: expected an integer >= 946684800000; got 1767225600",
            id="start-ms-in-seconds",
        ),
        pytest.param(
            '[[connectors]]\ntype = "simulated"\nunderlyings = ["BTC", "BTC"]\n',
            "connectors[0].underlyings[1]",
            'connectors[0].underlyings[1]: duplicate underlying "BTC"',
            id="duplicate-underlying",
        ),
        pytest.param(
            '[[rules]]\nname = "stale_data"\n[[rules]]\nname = "margin_utilisation"\n',
            "rules[1].name",
            'rules[1].name: unknown rule "margin_utilisation" (did you mean "margin_utilization"?)',
            id="unknown-rule",
        ),
        pytest.param(
            "[[rules]]\ncritical = 0.9\n",
            "rules[0].name",
            "rules[0].name: missing; expected one of: " + ", ".join(RULE_TYPES),
            id="rule-without-name",
        ),
        pytest.param(
            '[[rules]]\nname = "hedge_offset"\n[[rules]]\nname = "hedge_offset"\n',
            "rules[1].name",
            'rules[1].name: duplicate rule "hedge_offset" (rules[0] sets it too)',
            id="duplicate-rule",
        ),
        pytest.param(
            '[[rules]]\nname = "margin_utilization"\ncritcal = 0.9\n',
            "rules[0].critcal",
            'rules[0].critcal: unknown key (did you mean "critical"?)',
            id="unknown-rule-key",
        ),
        pytest.param(
            '[[rules]]\nname = "stale_data"\nmin_gross_usd = 1\n',
            "rules[0].min_gross_usd",
            "rules[0].min_gross_usd: unknown key (expected one of: warning, critical, clear, "
            "for, cooldown, enabled)",
            id="other-rules-key",
        ),
        pytest.param(
            '[[rules]]\nname = "margin_utilization"\ncritical = 0.5\n',
            "rules[0].critical",
            "rules[0].critical: must be above warning (0.6) for a rule that fires above its "
            "thresholds; got 0.5",
            id="critical-below-warning",
        ),
        pytest.param(
            '[[rules]]\nname = "margin_utilization"\nclear = 0.7\n',
            "rules[0].clear",
            "rules[0].clear: must be at or below warning (0.6) for a rule that fires above its "
            "thresholds; got 0.7",
            id="clear-past-warning",
        ),
        pytest.param(
            '[[rules]]\nname = "distance_to_call"\nclear = 0.1\n',
            "rules[0].clear",
            "rules[0].clear: must be at or above warning (0.15) for a rule that fires below "
            "its thresholds; got 0.1",
            id="clear-past-warning-below-rule",
        ),
        pytest.param(
            '[[rules]]\nname = "connector_down"\ncritical = "off"\n',
            "rules[0].critical",
            "rules[0].critical: a rule needs a warning or a critical threshold (or both)",
            id="no-threshold",
        ),
        pytest.param(
            '[[rules]]\nname = "stale_data"\nwarning = "of"\n',
            "rules[0].warning",
            'rules[0].warning: expected a number or "off"; got "of"',
            id="threshold-word",
        ),
        pytest.param(
            '[[rules]]\nname = "stale_data"\nwarning = nan\n',
            "rules[0].warning",
            "rules[0].warning: expected a finite number; got nan",
            id="threshold-nan",
        ),
        pytest.param(
            '[[rules]]\nname = "stale_data"\nfor = 10\n',
            "rules[0].for",
            'rules[0].for: expected a duration such as "250ms", "1s", "1h"; got 10 '
            "(a number needs a unit)",
            id="for-without-unit",
        ),
        pytest.param(
            '[[rules]]\nname = "concentration"\nmeasure = "l2"\n',
            "rules[0].measure",
            'rules[0].measure: expected one of "half_l1", "max_abs_drift"; got "l2"',
            id="rule-parameter",
        ),
        pytest.param(
            "rules = { name = 1 }\n",
            "rules",
            "rules: expected an array; got a table",
            id="rules-not-an-array",
        ),
        pytest.param(
            "[limits.main]\ndelta_usd = -1\n",
            "limits.main.delta_usd",
            "limits.main.delta_usd: expected a number > 0.0; got -1",
            id="negative-limit",
        ),
        pytest.param(
            "[limits.main]\nvega = inf\n",
            "limits.main.vega",
            "limits.main.vega: expected a finite limit; got inf",
            id="infinite-limit",
        ),
        pytest.param(
            "[limits.main]\ndelta = 1e6\n",
            "limits.main.delta",
            'limits.main.delta: unknown key (did you mean "delta_usd"?)',
            id="unknown-limit",
        ),
    ],
)
def test_file_errors_name_the_key_path(tmp_path: Path, text: str, path: str, expected: str) -> None:
    err = error_of(tmp_path, text)
    assert err.path == path
    assert str(err) == expected
    assert str(err) == f"{err.path}: {err.message}"


# --- rules -------------------------------------------------------------------------------


def test_rules_default_to_the_whole_pack() -> None:
    rules = Config().rules
    assert [r.rule for r in rules] == list(RULE_TYPES)
    assert all(r.enabled for r in rules)
    margin = next(r for r in rules if isinstance(r, MarginUtilizationRule))
    assert (margin.warning, margin.critical, margin.clear) == (0.6, 0.8, 0.55)
    assert (margin.for_, margin.cooldown) == (10_000, 600_000)
    down = next(r for r in rules if isinstance(r, ConnectorDownRule))
    assert (down.warning_level, down.critical_level) == (None, 0.5)
    assert Config().limits == {}


RULES = """
[[rules]]
name = "stale_data"
critical = 600
for = "0s"

[[rules]]
name = "margin_utilization"
enabled = false

[[rules]]
name = "hedge_offset"
warning = "off"
min_gross_usd = 250000

[limits.main]
delta_usd = 2e6
vega = 5e4

[limits."desk-b"]
vega = 1000
"""


def test_rules_override_by_name_and_keep_pack_order(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, RULES), env={})
    by_name = {r.rule: r for r in cfg.rules}
    assert [r.rule for r in cfg.rules] == list(RULE_TYPES)  # file order does not matter
    stale = by_name["stale_data"]
    assert (stale.warning, stale.critical, stale.clear) == (60.0, 600.0, 30.0)
    assert type(stale.for_) is Delay
    assert (stale.for_, str(stale.for_), stale.cooldown) == (0, "0s", 600_000)
    assert by_name["margin_utilization"].enabled is False
    assert by_name["hedge_offset"] == HedgeOffsetRule(warning="off", min_gross_usd=250_000.0)
    assert by_name["risk_drift"] == RULE_TYPES["risk_drift"]()
    assert cfg.limits == {
        "main": AccountLimits(delta_usd=2e6, vega=5e4),
        "desk-b": AccountLimits(vega=1000.0),
    }
    plain = redacted(cfg)
    assert plain["rules"][0] == {
        "name": "risk_drift",
        "warning": 0.15,
        "critical": 0.3,
        "clear": 0.1,
        "for": "1m",
        "cooldown": "15m",
        "min_volatility_usd": 100_000.0,
        "enabled": True,
    }
    assert msgspec.convert(plain, type=Config, dec_hook=dec_hook) == cfg


def test_rules_built_in_code_are_checked_and_completed() -> None:
    with pytest.raises(ConfigError) as info:
        MarginUtilizationRule(clear=0.9)
    assert info.value.path == "clear"
    cfg = Config(rules=(HedgeOffsetRule(enabled=False),))
    assert [r.rule for r in cfg.rules] == list(RULE_TYPES)
    assert not next(r for r in cfg.rules if r.rule == "hedge_offset").enabled
    with pytest.raises(ConfigError) as info:
        Config(rules=(HedgeOffsetRule(), HedgeOffsetRule()))
    assert str(info.value) == 'rules[1].name: duplicate rule "hedge_offset" (rules[0] sets it too)'


def test_env_overrides_a_rule_by_name(tmp_path: Path) -> None:
    env = {
        "RISKMON_RULES__MARGIN_UTILIZATION__CRITICAL": "0.85",
        "RISKMON_RULES__HEDGE_OFFSET__WARNING": "off",
        "RISKMON_RULES__STALE_DATA__FOR": "0s",
        "RISKMON_RULES__CONNECTOR_DOWN__ENABLED": "false",
        "RISKMON_LIMITS": "{ main = { delta_usd = 2e6 } }",
    }
    cfg = load_config(write(tmp_path, RULES), env=env)
    by_name = {r.rule: r for r in cfg.rules}
    assert by_name["margin_utilization"].critical == 0.85
    assert by_name["margin_utilization"].enabled is False  # the file's key stays
    hedge = by_name["hedge_offset"]
    assert isinstance(hedge, HedgeOffsetRule)
    assert (hedge.warning, hedge.min_gross_usd) == ("off", 250_000.0)
    assert by_name["stale_data"].for_ == 0
    assert by_name["connector_down"].enabled is False
    assert cfg.limits == {"main": AccountLimits(delta_usd=2e6)}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"RISKMON_RULES__STALE__CRITICAL": "1"},
            "rules: no rule named 'STALE' for RISKMON_RULES__STALE__CRITICAL (known: "
            + ", ".join(["STALE_DATA"] + [n.upper() for n in RULE_TYPES if n != "stale_data"])
            + ")",  # the file's entries first
            id="unknown-rule",
        ),
        pytest.param(
            {"RISKMON_RULES__STALE_DATA__CRITICL": "1"},
            "rules[0].criticl: unknown key in RISKMON_RULES__STALE_DATA__CRITICL "
            '(did you mean "critical"?)',
            id="unknown-rule-key",
        ),
        pytest.param(
            {"RISKMON_RULES__STALE_DATA__CRITICAL": "soon"},
            'rules[0].critical: expected a number or "off"; got "soon" '
            "(from RISKMON_RULES__STALE_DATA__CRITICAL)",
            id="bad-threshold",
        ),
        pytest.param(
            {"RISKMON_RULES": "[]"},
            "rules: is a table; set one of its keys (RISKMON_RULES__<NAME>__<KEY>), not the table",
            id="rules-whole",
        ),
        pytest.param(
            {"RISKMON_LIMITS__MAIN__VEGA": "1"},
            "limits: cannot set keys inside this table one at a time "
            "(RISKMON_LIMITS__MAIN__VEGA); set it whole as an inline TOML table: "
            "RISKMON_LIMITS='{ main = { delta_usd = 2e6, vega = 5e4 } }'",
            id="limit-key",
        ),
    ],
)
def test_env_rule_errors(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    err = error_of(tmp_path, '[[rules]]\nname = "stale_data"\n', env)
    assert str(err) == expected


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    err = error_of(tmp_path, '[server]\nlisten = "127.0.0.1:9321"\nlevel = \n[log]\n')
    assert err.path == ""
    assert str(err).startswith(f"{tmp_path / 'riskmon.toml'}: invalid TOML: ")
    assert "(at line 3, column" in str(err)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml", env={})
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: config file not found"


def test_invariants_hold_for_configs_built_in_code() -> None:
    with pytest.raises(ConfigError) as info:
        EstimatorConfig(fast_halflife=Duration("1h"))
    assert info.value.path == "fast_halflife"


# --- environment -------------------------------------------------------------------------


def test_env_overrides_scalars(tmp_path: Path) -> None:
    env = {
        "RISKMON_SERVER__LISTEN": "0.0.0.0:9000",
        "RISKMON_ESTIMATOR__HALFLIFE": "2h",
        "RISKMON_RISK__VAR_CONFIDENCE": "0.975",
        "riskmon_engine__queue_size": "10",  # case-insensitive
        "RISKMON_LOG__LEVEL": "debug",
        "RISKMON_CONFIG": "/etc/riskmon.toml",  # allow-listed, not a key
        "PATH": "/usr/bin",
    }
    cfg = load_config(write(tmp_path, '[log]\nlevel = "error"\n'), env=env)
    assert cfg.server.listen == "0.0.0.0:9000"
    assert cfg.estimator.halflife == 7_200_000
    assert cfg.risk.var_confidence == 0.975
    assert cfg.engine.queue_size == 10
    assert cfg.log.level == "debug"  # env beats file
    assert "RISKMON_CONFIG" in NON_CONFIG_ENV_VARS


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKMON_ENGINE__QUEUE_SIZE", "7")
    assert load_config().engine.queue_size == 7


def test_env_overrides_connector_by_name(tmp_path: Path) -> None:
    text = '[[connectors]]\ntype = "simulated"\nname = "sim-a"\n'
    env = {
        "RISKMON_CONNECTORS__SIM_A__SEED": "3",
        "RISKMON_CONNECTORS__SIM_A__UNDERLYINGS": '["ETH", "BTC"]',
        "RISKMON_CONNECTORS__SIM_A__REALTIME": "false",
    }
    (conn,) = load_config(write(tmp_path, text), env=env).connectors
    assert isinstance(conn, SimulatedConnector)
    assert (conn.name, conn.seed, conn.underlyings, conn.realtime) == (
        "sim-a",
        3,
        ("ETH", "BTC"),
        False,
    )


def test_env_reaches_the_default_connector() -> None:
    cfg = load_config(env={"RISKMON_CONNECTORS__SIMULATED__DURATION": "90s"})
    (conn,) = cfg.connectors
    assert isinstance(conn, SimulatedConnector)
    assert conn.duration == 90_000


def test_env_string_keys_are_verbatim() -> None:
    # "007" parses as a TOML integer; a string key must keep it as written.
    cfg = load_config(env={"RISKMON_CONNECTORS__SIMULATED__NAME": "007"})
    assert cfg.connectors[0].name == "007"


def test_env_sets_budgets_as_an_inline_table() -> None:
    cfg = load_config(env={"RISKMON_RISK__BUDGETS": "{ main = { BTC = 0.5, ETH = 0.5 } }"})
    assert cfg.risk.budgets == {"main": {"BTC": 0.5, "ETH": 0.5}}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        pytest.param(
            {"RISKMON_ESTIMATOR__HALFLIF": "2h"},
            "estimator.halflif: unknown key in RISKMON_ESTIMATOR__HALFLIF "
            '(did you mean "halflife"?)',
            id="typo-key",
        ),
        pytest.param(
            {"RISKMON_ESTIMATR__HALFLIFE": "2h"},
            'estimatr: unknown key in RISKMON_ESTIMATR__HALFLIFE (did you mean "estimator"?)',
            id="typo-section",
        ),
        pytest.param(
            {"RISKMON_CONFG": "x"},
            "confg: unknown key in RISKMON_CONFG "
            "(expected one of: server, log, engine, market, estimator, state, risk, margin, "
            "actions, alerts, rules, limits, connectors, cluster)",
            id="typo-of-allow-listed",
        ),
        pytest.param(
            {"RISKMON_ESTIMATOR": "2h"},
            "estimator: is a table; set one of its keys (RISKMON_ESTIMATOR__<KEY>), not the table",
            id="section-not-key",
        ),
        pytest.param(
            {"RISKMON_CONNECTORS__DERIBIT__CLIENT_SECRET": "s3cr3t"},
            "connectors: no connector named 'DERIBIT' for "
            "RISKMON_CONNECTORS__DERIBIT__CLIENT_SECRET (known: SIMULATED)",
            id="unknown-connector-name",
        ),
        pytest.param(
            {"RISKMON_CONNECTORS__SIMULATED__SED": "1"},
            "connectors[0].sed: unknown key in RISKMON_CONNECTORS__SIMULATED__SED "
            '(did you mean "seed"?)',
            id="typo-connector-key",
        ),
        pytest.param(
            {"RISKMON_ESTIMATOR__HALFLIFE": "600"},
            'estimator.halflife: expected a duration such as "250ms", "1s", "1h"; got 600 '
            "(a number needs a unit) (from RISKMON_ESTIMATOR__HALFLIFE)",
            id="bad-value",
        ),
        pytest.param(
            {"RISKMON_CONNECTORS__SIMULATED__SEED": "abc"},
            'connectors[0].seed: expected an integer; got "abc" '
            "(from RISKMON_CONNECTORS__SIMULATED__SEED)",
            id="bad-connector-value",
        ),
        pytest.param(
            {"RISKMON_RISK__BUDGETS__MAIN__BTC": "1"},
            "risk.budgets: cannot set keys inside this table one at a time "
            "(RISKMON_RISK__BUDGETS__MAIN__BTC); set it whole as an inline TOML table: "
            "RISKMON_RISK__BUDGETS='{ main = { BTC = 0.5, ETH = 0.5 } }'",
            id="budget-key",
        ),
        pytest.param(
            {"RISKMON_LOG__LEVEL": "debug", "riskmon_log__level": "info"},
            "log.level: set by both RISKMON_LOG__LEVEL and riskmon_log__level",
            id="set-twice",
        ),
    ],
)
def test_env_errors(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    assert str(info.value) == expected


# --- the reference file ------------------------------------------------------------------


def test_example_file_is_the_defaults() -> None:
    assert load_config(EXAMPLE, env={}) == load_config(env={})


def test_example_file_documents_every_key() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    documented = {line.lstrip("# ").split("=")[0].strip() for line in lines if "=" in line}
    sections = {line.strip("[]# ") for line in lines if line.lstrip("# ").startswith("[")}

    def keys(info: msgspec.inspect.StructType) -> set[str]:
        return {f.name for f in info.fields}

    root = msgspec.inspect.type_info(Config)
    assert isinstance(root, msgspec.inspect.StructType)
    for field in root.fields:
        if isinstance(field.type, msgspec.inspect.StructType):
            assert field.name in sections
            assert keys(field.type) <= documented | {"budgets"}, field.name
    assert "risk.budgets.main" in sections
    assert "limits.main" in sections
    assert keys(cast(msgspec.inspect.StructType, msgspec.inspect.type_info(AccountLimits))) <= (
        documented
    )
    for name, rule in RULE_TYPES.items():
        rule_info = msgspec.inspect.type_info(rule)
        assert isinstance(rule_info, msgspec.inspect.StructType)
        assert {f.encode_name for f in rule_info.fields} <= documented, name
        assert f'name = "{name}"' in lines
    examples = {p: p.read_text(encoding="utf-8") for p in EXAMPLE.parent.glob("*.example.toml")}
    for tag, cls in CONNECTOR_TYPES.items():
        # The simulated connector is the default, in this file; every venue has its own.
        (own,) = [p for p, text in examples.items() if f'\ntype = "{tag}"\n' in text]
        own_lines = examples[own].splitlines()
        own_keys = {line.lstrip("# ").split("=")[0].strip() for line in own_lines if "=" in line}
        info = msgspec.inspect.type_info(cls)
        assert isinstance(info, msgspec.inspect.StructType)
        assert keys(info) <= own_keys, cls.__name__
        assert f'type = "{info.tag}"' in own_lines


# --- secrets -----------------------------------------------------------------------------


class VaultConnector(ConnectorSettings, frozen=True, tag="vault"):
    """A stand-in for a venue connector that holds secrets."""

    name: str = "vault"
    client_id: str = "me"
    client_secret: str = "hunter2"
    password: str | None = None
    api_key: str = "k-123"


def test_secrets_never_reach_repr_or_redacted() -> None:
    cfg = msgspec.structs.replace(Config(), connectors=(VaultConnector(),))
    text = repr(cfg)
    assert "hunter2" not in text
    assert "k-123" not in text
    assert "client_secret='***'" in text
    assert "client_id='me'" in text
    plain = redacted(cfg)
    assert plain["connectors"] == [
        {
            "type": "vault",
            "name": "vault",
            "client_id": "me",
            "client_secret": "***",
            "password": None,  # unset stays visible as unset
            "api_key": "***",
        }
    ]


# --- durations ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms", "canonical"),
    [
        ("250ms", 250, "250ms"),
        ("1s", 1_000, "1s"),
        ("1.5s", 1_500, "1s500ms"),
        ("90s", 90_000, "1m30s"),
        ("10m", 600_000, "10m"),
        ("1h", 3_600_000, "1h"),
        ("1h30m", 5_400_000, "1h30m"),
        ("1d", 86_400_000, "1d"),
        ("2d3h4m5s6ms", 183_845_006, "2d3h4m5s6ms"),
        ("  5m ", 300_000, "5m"),
    ],
)
def test_duration_parse_and_format(text: str, ms: int, canonical: str) -> None:
    d = parse_duration(text)
    assert type(d) is Duration
    assert int(d) == ms
    assert d.seconds == ms / 1000
    assert str(d) == canonical
    assert f"{d}" == canonical
    assert repr(d) == f"Duration({canonical!r})"
    assert parse_duration(str(d)) == d
    assert Duration(canonical) == d


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10 minutes", 'expected a duration such as "250ms", "1s", "1h"; got "10 minutes"'),
        ("10", 'expected a duration such as "250ms", "1s", "1h"; got "10"'),
        ("1H", 'expected a duration such as "250ms", "1s", "1h"; got "1H"'),
        ("", 'expected a duration such as "250ms", "1s", "1h"; got ""'),
        ("-1s", 'expected a duration such as "250ms", "1s", "1h"; got "-1s"'),
        (
            "30m1h",
            'expected a duration such as "250ms", "1s", "1h"; got "30m1h" '
            "(units go largest first, each once)",
        ),
        ("0s", 'expected a duration > 0; got "0s"'),
        ("0.5ms", 'expected a whole number of milliseconds; got "0.5ms"'),
    ],
)
def test_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("text", "ms", "canonical"),
    [("0s", 0, "0s"), ("0ms", 0, "0s"), ("0h0m", 0, "0s"), ("10s", 10_000, "10s")],
)
def test_delay_allows_zero(text: str, ms: int, canonical: str) -> None:
    d = parse_delay(text)
    assert type(d) is Delay
    assert (int(d), str(d), repr(d)) == (ms, canonical, f"Delay({canonical!r})")
    assert Delay(text) == d
    assert parse_delay(str(d)) == d
    assert Delay(0) == 0


def test_delay_rejects() -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        parse_delay("-1s")
    with pytest.raises(ValueError, match="> 0"):
        Delay(-5)
    with pytest.raises(ValueError, match="> 0"):
        parse_duration("0s")  # a Duration stays positive


def test_duration_from_int() -> None:
    assert str(Duration(3_723_004)) == "1h2m3s4ms"
    assert all(parse_duration(str(Duration(n))) == n for n in range(1, 200_000, 997))
    with pytest.raises(ValueError, match="> 0"):
        Duration(0)
    with pytest.raises(TypeError):
        Duration(True)


def test_margin_section_maps_onto_the_margin_model(tmp_path: Path) -> None:
    from monitor.quant.margin import Stress
    from monitor.settings import risk_settings

    cfg = load_config(
        write(
            tmp_path,
            """
[margin]
price_range = 0.2
aggregation = "joint"
max_move = 0.5
[[margin.stresses]]
name = "vol +50%, BTC -20%"
moves = { BTC = -0.2 }
vol_shift = 0.5
""",
        ),
        env={},
    )
    rs = risk_settings(cfg)
    assert (rs.margin.price_range, rs.margin.aggregation, rs.max_move) == (0.2, "joint", 0.5)
    assert rs.margin.stresses == (Stress("vol +50%, BTC -20%", {"BTC": -0.2}, 0.0, 0.5),)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "[margin]\nprice_range = 1.5\n"), env={})
    assert str(info.value).startswith("margin.price_range:")


@pytest.mark.parametrize(
    "path", sorted(EXAMPLE.parent.glob("*.example.toml")), ids=lambda p: p.name
)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path, env={})
    if path != EXAMPLE:  # a venue's example configures that venue (binance: binance_futures)
        (tag,) = {c.__struct_config__.tag for c in cfg.connectors}
        assert isinstance(tag, str)
        assert tag.startswith(path.name.split(".")[0])
