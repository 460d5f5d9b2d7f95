"""grafana/: dashboards generated from code, their provisioning, and the metrics they query.

- The committed JSON is exactly what ``grafana/build_dashboards.py`` generates (run in
  process), and ``--check`` notices when it is not.
- Each dashboard is structurally sound: uid and title, unique panel ids, grid positions inside
  24 columns without overlaps, every datasource reference through the ``datasource`` template
  variable, every ``$variable`` defined, units and descriptions on every panel.
- Every metric a PromQL expression names is documented in ``monitor/serve/metrics.py``'s docstring
  (or comes from prometheus_client's process/platform/GC collectors, or is Prometheus' own
  ``up``), every label matcher and legend label exists on the metrics of its expression.
- Provisioning matches deploy/compose.yaml: the dashboard provider reads the mounted
  directory, the datasource reaches the compose Prometheus and has the uid the dashboards
  default to.

Grafana itself is not installed here (no Debian or PyPI package), so the dashboards are not
loaded into a real Grafana.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from test_deploy import load_yaml
from tools import required_tool, run

import monitor.serve.metrics

REPO = Path(__file__).resolve().parent.parent
GRAFANA = REPO / "grafana"
PROVISIONING = GRAFANA / "provisioning"
COMPOSE = REPO / "deploy" / "compose.yaml"

sys.path.insert(0, str(REPO))  # grafana/ holds a script, not an installed package
from grafana import build_dashboards as gen  # noqa: E402

GRID_COLUMNS = 24
DS_REF = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}
SERVER_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series


# -- generator ----------------------------------------------------------------------------


def _committed() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(gen.DASHBOARD_DIR.glob("*.json"))}


def test_committed_json_is_the_generator_output() -> None:
    generated = gen.build_dashboards()
    assert set(generated) == set(_committed()), "run: python grafana/build_dashboards.py"
    for name, text in generated.items():
        assert _committed()[name] == text, f"{name} is stale: python grafana/build_dashboards.py"
    assert gen.build_dashboards() == generated  # deterministic across calls
    for text in generated.values():
        assert text.endswith("}\n")
        assert json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n" == text


def test_check_mode_fails_on_stale_output_and_write_mode_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gen.main(["--check"]) == 0  # the repository is up to date
    for path in gen.DASHBOARD_DIR.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    monkeypatch.setattr(gen, "DASHBOARD_DIR", tmp_path)
    assert gen.main(["--check"]) == 0

    edited = tmp_path / "riskmon-margin.json"
    edited.write_text(edited.read_text().replace('"riskmon / Margin"', '"Margin"'))
    (tmp_path / "riskmon-risk.json").unlink()
    (tmp_path / "old.json").write_text("{}\n")
    assert gen.stale_files() == ["riskmon-risk.json", "riskmon-margin.json", "old.json"]
    assert gen.main(["--check"]) == 1
    assert "stale: grafana/dashboards/riskmon-margin.json" in capsys.readouterr().err

    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(gen.build_dashboards())


# -- structure ----------------------------------------------------------------------------


def _dashboards() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in gen.build_dashboards().items()}


def _all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row holds its panels


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def _exprs(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(PromQL expression, legend) of every target, and of every label_values() variable."""
    for panel in _all_panels(dashboard):
        for target in panel.get("targets", []):
            yield target["expr"], target.get("legendFormat", "")
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["query"])
            assert m, variable["query"]
            yield m.group(1), "{{" + m.group(2) + "}}"


def test_overlap_detects_shared_cells() -> None:
    a = {"x": 0, "y": 0, "w": 12, "h": 8}
    assert _overlap(a, {"x": 11, "y": 7, "w": 2, "h": 2})
    assert not _overlap(a, {"x": 12, "y": 0, "w": 12, "h": 8})
    assert not _overlap(a, {"x": 0, "y": 8, "w": 24, "h": 1})


def test_dashboard_uids_and_titles_are_unique() -> None:
    dashboards = _dashboards()
    assert {d["uid"] for d in dashboards.values()} == {
        "riskmon-market",
        "riskmon-risk",
        "riskmon-margin",
        "riskmon-operations",
    }
    assert sorted(d["title"] for d in dashboards.values()) == [
        "riskmon / Margin",
        "riskmon / Market",
        "riskmon / Operations",
        "riskmon / Risk",
    ]
    for name, d in dashboards.items():
        assert name == d["uid"] + ".json"
        assert len(d["uid"]) <= 40  # Grafana's limit


@pytest.mark.parametrize("name", sorted(gen.DASHBOARDS))
def test_panels_have_unique_ids_and_fit_the_grid_without_overlap(name: str) -> None:
    dashboard = _dashboards()[name]
    panels = list(_all_panels(dashboard))
    assert len(panels) >= 8
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) and i > 0 for i in ids), ids
    assert len(set(ids)) == len(ids), ids
    for p in panels:
        g = p["gridPos"]
        assert min(g["w"], g["h"]) >= 1, p["title"]
        assert min(g["x"], g["y"]) >= 0, p["title"]
        assert g["x"] + g["w"] <= GRID_COLUMNS, p["title"]
    for i, a in enumerate(panels):
        for b in panels[i + 1 :]:
            assert not _overlap(a["gridPos"], b["gridPos"]), (a["title"], b["title"])


@pytest.mark.parametrize("name", sorted(gen.DASHBOARDS))
def test_every_query_goes_through_the_datasource_variable(name: str) -> None:
    dashboard = _dashboards()[name]
    variables = _variables(dashboard)
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DS_REF, variable["name"]
            assert (variable["multi"], variable["includeAll"]) == (True, True), variable["name"]
    for panel in _all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS_REF, panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        assert all(t["datasource"] == DS_REF for t in targets), panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), panel["title"]


@pytest.mark.parametrize("name", sorted(gen.DASHBOARDS))
def test_every_template_variable_used_is_defined(name: str) -> None:
    dashboard = _dashboards()[name]
    defined = set(_variables(dashboard)) | GRAFANA_BUILTINS
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard["panels"])))
    used |= set(re.findall(r"\$\{?(\w+)", json.dumps(dashboard["templating"])))
    assert used <= defined, used - defined
    assert {"datasource"} < used  # and the dashboard filters on something


@pytest.mark.parametrize("name", sorted(gen.DASHBOARDS))
def test_panels_have_a_description_and_a_unit(name: str) -> None:
    for panel in _all_panels(_dashboards()[name]):
        if panel["type"] == "row":
            continue
        assert len(panel.get("description", "")) > 30, panel["title"]
        if panel["type"] == "table":  # a unit per column
            units = [
                prop["value"]
                for override in panel["fieldConfig"]["overrides"]
                for prop in override["properties"]
                if prop["id"] == "unit"
            ]
            assert len(units) == len(panel["targets"]), panel["title"]
        else:
            assert panel["fieldConfig"]["defaults"]["unit"], panel["title"]


def test_units_follow_the_metric_names() -> None:
    """``_usd`` figures in USD, ``_seconds`` in s, ``_ratio``/share/budget/drift as %."""
    expected = [
        (r"_usd\b", "currencyUSD"),
        (r"_seconds\b(?!_(?:bucket|sum|count|total))", "s"),
        (r"_(?:ratio|share|budget|drift|concentration)\b", "percentunit"),
    ]
    checked = 0
    for dashboard in _dashboards().values():
        for panel in _all_panels(dashboard):
            if panel["type"] in {"row", "table"}:
                continue
            exprs = " ".join(t["expr"] for t in panel["targets"])
            if "/ on" in exprs or "riskmon_build_info" in exprs:
                continue  # a quotient of two figures; an info metric
            for pattern, unit in expected:
                if re.search(pattern, exprs):
                    assert panel["fieldConfig"]["defaults"]["unit"] == unit, panel["title"]
                    checked += 1
    assert checked >= 25


# -- metric names -------------------------------------------------------------------------


@dataclass(frozen=True)
class Documented:
    kind: str  # counter, gauge, histogram
    labels: frozenset[str]


def documented_metrics(doc: str) -> dict[str, Documented]:
    """The metric tables of ``monitor/serve/metrics.py``'s docstring: name -> type and labels.

    They are the literal blocks after a line ending in ``::``. A line is
    ``name[, name...]  [(note)]  type  [label, label...]``; names without a type continue on
    the next line. Two shorthands are read too:

    - names followed by a line ``(as above, without the <label> label)``: each
      ``riskmon_book_<x>`` is ``riskmon_account_<x>`` without that label;
    - ``riskmon_<prefix>_*_<suffix>  (..., same labels)``: ``riskmon_<prefix>_<x>_<suffix>``
      for every documented ``riskmon_<prefix>_<x>``, with its type and labels.

    Anything else raises, so a new layout fails here instead of hiding metrics.
    """
    out: dict[str, Documented] = {}
    wildcards: list[str] = []
    in_block = False
    pending: list[str] = []
    for line in doc.splitlines():
        if line.rstrip().endswith("::"):
            in_block = True
            continue
        if not line.strip():
            continue
        if not line.startswith(" "):
            in_block = False
            assert not pending, f"no type for {pending}"
            continue
        if not in_block:
            continue
        m = re.fullmatch(r"((?:riskmon_[\w*]+,?\s*)*)(.*)", line.strip())
        assert m, line
        names = re.findall(r"riskmon_[\w*]+", m.group(1))
        notes = re.findall(r"\(([^)]*)\)", m.group(2))
        rest = re.sub(r"\([^)]*\)", "", m.group(2)).split(maxsplit=1)
        assert names or notes, f"unexpected line in a metric table: {line!r}"
        pending += names
        if rest:
            kind = rest[0]
            assert kind in {"counter", "gauge", "histogram"}, f"unexpected type: {line!r}"
            labels = frozenset(s.strip() for s in rest[1].split(",")) if len(rest) > 1 else None
            for name in pending:
                assert "*" not in name, line
                out[name] = Documented(kind, labels or frozenset())
            pending = []
            continue
        if not notes:
            continue  # names only: the type follows on a later line
        without = re.fullmatch(r"as above, without the (\w+) label", notes[-1])
        if without:
            for name in pending:
                twin = out[name.replace("riskmon_book_", "riskmon_account_", 1)]
                out[name] = Documented(twin.kind, twin.labels - {without.group(1)})
        elif notes[-1].endswith("same labels") and all("*" in n for n in pending):
            wildcards += pending
        else:
            raise AssertionError(f"unexpected line in a metric table: {line!r}")
        pending = []
    assert not pending, f"no type for {pending}"
    for pattern in wildcards:
        prefix, suffix = pattern.split("*")
        sources = [n for n in out if n.startswith(prefix) and not n.endswith(suffix)]
        assert sources, pattern
        for name in sources:
            out[name + suffix] = out[name]
    return out


def _exported_names(documented: dict[str, Documented]) -> dict[str, frozenset[str]]:
    """Series names -> labels, with a histogram's _bucket/_sum/_count series."""
    out: dict[str, frozenset[str]] = {}
    for name, doc in documented.items():
        if doc.kind == "histogram":
            out[name + "_bucket"] = doc.labels | {"le"}
            out[name + "_sum"] = doc.labels
            out[name + "_count"] = doc.labels
        else:
            out[name] = doc.labels
    return out


def _client_collector_names() -> set[str]:
    """Names of the process/platform/GC series that ``build_registry`` adds."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)
    PlatformCollector(registry=registry)
    return {s.name for family in registry.collect() for s in family.samples}


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*(\w+)\s*(?:=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*"\s*(?:,|$)')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, keywords or labels)."""
    text = re.sub(r"\{[^{}]*\}", " ", _STRING.sub('""', expr))
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][\w:]*)(\s*\()?", text):
        if m.group(2) is None and m.group(1) not in _KEYWORDS:
            names.add(m.group(1))
    return names


def label_matchers(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, labels it is matched on) of every ``metric{...}`` selector."""
    out = []
    for m in _SELECTOR.finditer(expr):
        body = m.group(2)
        labels = set(re.findall(r'(\w+)\s*(?:=~|!~|!=|=)\s*"', body))
        assert _MATCHER.sub("", body).strip() == "", f"cannot parse matchers: {body!r}"
        out.append((m.group(1), labels))
    return out


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('riskmon_queue_depth{instance=~"$instance"}', {"riskmon_queue_depth"}),
        (
            "histogram_quantile(0.99, sum by (instance, le) "
            "(rate(riskmon_evaluation_duration_seconds_bucket[$__rate_interval])))",
            {"riskmon_evaluation_duration_seconds_bucket"},
        ),
        (
            'a_usd{account=~"x", method="y"} / on (job, account) group_left b_usd{account=~"x"}',
            {"a_usd", "b_usd"},
        ),
        ("time() - riskmon_snapshot_timestamp_seconds", {"riskmon_snapshot_timestamp_seconds"}),
        ('sum without (le) (up{job="by"}) > bool 1e3', {"up"}),
    ],
)
def test_metric_names_parses_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_documented_metrics_parses_the_docstring() -> None:
    assert monitor.serve.metrics.__doc__
    documented = documented_metrics(monitor.serve.metrics.__doc__)
    assert len(documented) >= 30
    events = documented["riskmon_events_total"]
    assert events == Documented("counter", frozenset({"source", "type"}))
    assert documented["riskmon_book_vega_usd"] == Documented("gauge", frozenset())
    assert documented["riskmon_evaluation_duration_seconds"].kind == "histogram"
    assert documented["riskmon_asset_correlation"].labels == {"underlying_a", "underlying_b"}


def test_documented_metrics_reads_the_shorthands_and_refuses_the_rest() -> None:
    table = (
        "Figures::\n\n"
        "    riskmon_account_var_usd          gauge      account, method\n"
        "    riskmon_account_x_usd  (note)    gauge      account\n"
        "    riskmon_book_var_usd,\n"
        "    riskmon_book_x_usd\n"
        "                                     (as above, without the account label)\n"
        "    riskmon_regime_a, riskmon_regime_b_ratio   gauge   underlying\n"
        "    riskmon_regime_*_baseline        (slow EWMA, same labels)\n\n"
        "Prose after the table.\n"
    )
    assert documented_metrics(table) == {
        "riskmon_account_var_usd": Documented("gauge", frozenset({"account", "method"})),
        "riskmon_account_x_usd": Documented("gauge", frozenset({"account"})),
        "riskmon_book_var_usd": Documented("gauge", frozenset({"method"})),
        "riskmon_book_x_usd": Documented("gauge", frozenset()),
        "riskmon_regime_a": Documented("gauge", frozenset({"underlying"})),
        "riskmon_regime_b_ratio": Documented("gauge", frozenset({"underlying"})),
        "riskmon_regime_a_baseline": Documented("gauge", frozenset({"underlying"})),
        "riskmon_regime_b_ratio_baseline": Documented("gauge", frozenset({"underlying"})),
    }
    with pytest.raises(AssertionError, match="unexpected line"):
        documented_metrics("Table::\n\n    not_a_metric   gauge\n")
    with pytest.raises(AssertionError, match="unexpected type"):
        documented_metrics("Table::\n\n    riskmon_a   gaueg\n")
    with pytest.raises(AssertionError, match="no type"):
        documented_metrics("Table::\n\n    riskmon_a,\n\nProse.\n")


def _dashboard_queries() -> Iterator[tuple[str, str, str]]:
    for name, dashboard in _dashboards().items():
        for expr, legend in _exprs(dashboard):
            yield name, expr, legend


def test_every_metric_queried_is_documented_in_monitor_metrics() -> None:
    assert monitor.serve.metrics.__doc__
    known = _exported_names(documented_metrics(monitor.serve.metrics.__doc__))
    others = _client_collector_names() | {"up"}
    missing: dict[str, list[str]] = {}
    used: set[str] = set()
    for dashboard, expr, _ in _dashboard_queries():
        for metric in metric_names(expr):
            used.add(metric)
            if metric not in known and metric not in others:
                missing.setdefault(metric, []).append(dashboard)
    assert len(used) >= 60
    assert not missing, "not in monitor/serve/metrics.py's docstring:\n" + "\n".join(
        f"  {m} ({', '.join(sorted(set(d)))})" for m, d in sorted(missing.items())
    )


def test_label_matchers_and_legends_use_labels_the_metrics_have() -> None:
    assert monitor.serve.metrics.__doc__
    known = _exported_names(documented_metrics(monitor.serve.metrics.__doc__))
    errors = []
    for dashboard, expr, legend in _dashboard_queries():
        metrics = metric_names(expr)
        if not metrics <= set(known):
            continue  # undocumented: reported by the test above
        available = SERVER_LABELS | {label for m in metrics for label in known[m]}
        for metric, labels in label_matchers(expr):
            if metric in known and not labels <= known[metric] | SERVER_LABELS:
                errors.append(f"{dashboard}: {metric} has no {labels - known[metric]}: {expr}")
        legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
        grouping = [set(re.split(r"\s*,\s*", g.strip())) for g in _GROUPING.findall(expr)]
        if re.match(r"\s*(?:sum|histogram_quantile)\b", expr) and grouping:
            available = grouping[0]  # an aggregation keeps only its "by" labels
        if not legend_labels <= available:
            errors.append(f"{dashboard}: legend {legend!r} needs {legend_labels - available}")
    assert not errors, "\n".join(errors)


def _as_prometheus_sees_it(expr: str) -> str:
    """``expr`` with Grafana's variables replaced the way Grafana interpolates them."""
    text = expr.replace("$__rate_interval", "20s").replace("$__interval", "5s")
    return re.sub(r"\$\{?\w+\}?", ".+", text.replace("$__range", "1h"))


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = required_tool("promtool")
    exprs = sorted({_as_prometheus_sees_it(expr) for _, expr, _ in _dashboard_queries()})
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboards.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout

    # The check can fail: one unbalanced parenthesis is refused.
    rules[0]["expr"] += ")"
    path.write_text(json.dumps({"groups": [{"name": "dashboards", "rules": rules}]}))
    assert run([promtool, "check", "rules", str(path)]).returncode != 0


# -- provisioning -------------------------------------------------------------------------


def _grafana_mounts() -> dict[str, Path]:
    """Container path -> host path of the Grafana service's bind mounts in compose.yaml."""
    grafana = load_yaml(COMPOSE)["services"]["grafana"]
    out = {}
    for volume in grafana["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (COMPOSE.parent / source).resolve()
    return out


def test_dashboard_provider_reads_the_mounted_dashboards() -> None:
    mounts = _grafana_mounts()
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    (provider,) = load_yaml(PROVISIONING / "dashboards" / "riskmon.yaml")["providers"]
    assert provider["type"] == "file"
    assert mounts[provider["options"]["path"]] == gen.DASHBOARD_DIR
    assert provider["allowUiUpdates"] is False  # edits belong in build_dashboards.py


def test_datasource_is_the_compose_prometheus_the_dashboards_default_to() -> None:
    compose = load_yaml(COMPOSE)["services"]
    (datasource,) = load_yaml(PROVISIONING / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose  # the compose service name in the URL
    assert any(p.endswith(":9090") for p in compose["prometheus"]["ports"])
    assert datasource["uid"] == gen.DATASOURCE_UID
    assert datasource["isDefault"] is True
    for name, dashboard in _dashboards().items():
        current = _variables(dashboard)["datasource"]["current"]
        assert current["value"] == datasource["uid"], name
        assert current["text"] == datasource["name"], name
