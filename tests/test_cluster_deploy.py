"""deploy/ for cluster mode: the firm-total rules (promtool) and deploy/cluster/compose.yaml.

There is no Docker engine here, so the compose file is checked structurally: services,
images, commands, and that every file it mounts exists and is what riskmon expects.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from typing import Any

import msgspec
from test_deploy import load_yaml
from tools import required_tool, run

from connectors.nats.config import ClusterConfig
from monitor.config import load_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "deploy" / "cluster"
PROM_DIR = REPO / "deploy" / "prometheus"
RULES = PROM_DIR / "rules" / "cluster.yml"
RULE_TESTS = PROM_DIR / "tests" / "cluster_test.yml"


def test_promtool_checks_and_unit_tests_the_cluster_rules() -> None:
    promtool = required_tool("promtool")
    proc = run([promtool, "check", "rules", str(RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 11 rules found" in proc.stdout, proc.stdout
    proc = run([promtool, "test", "rules", str(RULE_TESTS.relative_to(PROM_DIR))], cwd=PROM_DIR)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _documented(module: Path) -> set[str]:
    doc = ast.get_docstring(ast.parse(module.read_text()))
    assert doc is not None
    return set(re.findall(r"\briskmon_[a-z0-9_]+", doc))


def test_cluster_rules_use_only_exported_metrics() -> None:
    used = set(re.findall(r"\briskmon_[a-z0-9_]+", json.dumps(load_yaml(RULES))))
    exported = _documented(REPO / "monitor" / "serve" / "metrics.py") | _documented(
        REPO / "monitor" / "serve" / "cluster.py"
    )
    assert {"riskmon_book_exposure_usd", "riskmon_cluster_shards"} <= used
    assert used - exported == set()


def _compose() -> dict[str, Any]:
    compose = load_yaml(CLUSTER / "compose.yaml")
    assert isinstance(compose, dict)
    return compose


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out[target] = (CLUSTER / source).resolve()
    return out


def test_compose_has_three_nats_nodes_ingest_two_engines_prometheus_alertmanager() -> None:
    services = _compose()["services"]
    assert set(services) == {
        "nats-1",
        "nats-2",
        "nats-3",
        "ingest",
        "engine-a",
        "engine-b",
        "prometheus",
        "alertmanager",
    }
    nodes = ["nats-1", "nats-2", "nats-3"]
    for node in nodes:
        svc = services[node]
        assert svc["image"].startswith("nats:2.")
        flags = dict(str(a).split("=", 1) for a in svc["command"] if "=" in str(a))
        assert "--jetstream" in svc["command"]
        assert flags["--name"] == node
        assert flags["--cluster_name"] == "riskmon"
        routes = {r.removeprefix("nats://").split(":")[0] for r in flags["--routes"].split(",")}
        assert routes == set(nodes) - {node}
    assert services["ingest"]["entrypoint"] == ["riskmon", "ingest"]
    build = services["ingest"]["build"]
    assert (CLUSTER / build["context"]).resolve() == REPO
    assert (REPO / build["dockerfile"]).is_file()
    members = set()
    for name in ("engine-a", "engine-b"):
        svc = services[name]
        assert svc["image"] == services["ingest"]["image"] == "riskmon:local"
        members.add(svc["environment"]["RISKMON_CLUSTER__MEMBER"])
    assert members == {"engine-a", "engine-b"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
    declared = set(_compose()["volumes"])
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("."):
                assert source in declared, source


def test_compose_mounts_exist_and_configs_are_valid() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for target, host in _mounts(svc).items():
            assert host.exists(), (name, target, host)
    ingest = load_config(_mounts(services["ingest"])["/etc/riskmon/ingest.toml"], env={})
    engine = load_config(_mounts(services["engine-a"])["/etc/riskmon/engine.toml"], env={})
    nats_urls = {f"nats://{n}:4222" for n in ("nats-1", "nats-2", "nats-3")}
    for cfg in (ingest, engine):
        assert cfg.cluster is not None
        assert set(cfg.cluster.servers) == nats_urls
    assert engine.cluster is not None
    assert engine.cluster.assignment == "lease"
    assert engine.alerts.alertmanager is not None
    assert engine.alerts.alertmanager.url == "http://alertmanager:9093"
    assert "--config=/etc/riskmon/engine.toml" in services["engine-a"]["command"]
    assert "--config=/etc/riskmon/ingest.toml" in services["ingest"]["command"]
    prom = services["prometheus"]
    assert _mounts(prom)["/etc/prometheus/rules"] == PROM_DIR / "rules"
    am = services["alertmanager"]
    assert _mounts(am)["/etc/alertmanager/alertmanager.yml"].is_file()


def test_compose_prometheus_scrapes_both_engines_and_loads_the_firm_rules(
    tmp_path: Path,
) -> None:
    config = CLUSTER / "prometheus.yml"
    cfg = load_yaml(config)
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    targets = [t for sc in jobs["riskmon"]["static_configs"] for t in sc["targets"]]
    assert targets == ["engine-a:9321", "engine-b:9321"]
    ingest = [t for sc in jobs["riskmon_ingest"]["static_configs"] for t in sc["targets"]]
    assert ingest == ["ingest:9321"]
    # As mounted in the container: the config beside deploy/prometheus/rules.
    shutil.copy(config, tmp_path / "prometheus.yml")
    (tmp_path / "rules").symlink_to(PROM_DIR / "rules")
    proc = run([required_tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "SUCCESS: 2 rule files found" in out, out


def test_cluster_example_documents_every_key_with_its_default() -> None:
    example = CLUSTER / "cluster.example.toml"
    lines = example.read_text().splitlines()
    documented = {line.lstrip("# ").split("=")[0].strip() for line in lines if "=" in line}
    info = msgspec.inspect.type_info(ClusterConfig)
    assert isinstance(info, msgspec.inspect.StructType)
    assert {f.encode_name for f in info.fields} <= documented
    assert load_config(example, env={}).cluster == ClusterConfig()
