"""A real Prometheus scrapes a real ``riskmon run`` and stores exactly what riskmon reports.

Both run on loopback ports they choose. Prometheus scrapes every second and loads the
project's alert and recording rules (deploy/prometheus/rules/riskmon.yml), so the test also
shows that the rules evaluate without error against the real exporter.

Equality without a tolerance: riskmon publishes one immutable snapshot per evaluation, and
the scrape that carries ``riskmon_asset_volatility`` also carries
``riskmon_snapshot_timestamp_seconds`` (the snapshot's ``as_of``) at the same sample
timestamp. The test polls ``/api/v1/snapshot`` faster than the evaluation clock and records
BTC's volatility per ``as_of``; a scraped sample whose snapshot time the test also saw must
equal that figure. Both sides print float64 in shortest round-trip form (Python ``repr`` in
the exposition, Go ``FormatFloat(-1)`` in the API, JSON from msgspec), so they are equal to
the last bit; ``rel_tol=1e-12`` only guards against a future formatting change. A tolerance
on values taken "at about the same time" would not do: while the estimator warms up, BTC's
slow volatility moves by several percent per 1 s sample.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tools import required_tool

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "deploy" / "prometheus" / "rules" / "riskmon.yml"

VOL_QUERY = 'riskmon_asset_volatility{underlying="BTC",estimator="slow"}'
MATCHES_WANTED = 3  # scrapes whose snapshot the test saw too
TOTAL_BUDGET_S = 50.0  # every wait below shares it; stopping adds at most 2 x 5 s


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def check(self, what: str) -> None:
        if self.left() <= 0:
            raise AssertionError(f"timed out waiting for {what}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen[bytes], timeout_s: float = 5.0) -> int | None:
    """SIGTERM, wait; SIGKILL on timeout. Returns the exit code of the clean stop, else None."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
        return None


class Riskmon:
    def __init__(self, log: Path) -> None:
        self.log = log
        with log.open("wb") as err:  # a file, not a pipe: a full pipe would block the daemon
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "monitor", "run", "--listen", "127.0.0.1:0"],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )

    def wait_url(self, deadline: Deadline) -> str:
        while True:
            for line in self.log.read_text().splitlines():
                record = json.loads(line)  # stderr is not a TTY: JSON lines
                if record["msg"] == "riskmon listening":
                    return str(record["listen"])
            if self.proc.poll() is not None:
                raise AssertionError(f"riskmon exited {self.proc.returncode}: {self.log_tail()}")
            deadline.check("riskmon to listen")
            time.sleep(0.05)

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]


class Prometheus:
    def __init__(self, binary: str, tmp: Path, target: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            f"rule_files:\n  - {json.dumps(str(RULES))}\n"
            "scrape_configs:\n"
            "  - job_name: riskmon\n"  # the rules select job="riskmon"
            "    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n"
        )
        self.log = tmp / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, deadline: Deadline) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}: {self.log_tail()}")
            deadline.check("prometheus to be ready")
            time.sleep(0.1)

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        body = _get_json(url)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture
def riskmon(tmp_path: Path) -> Iterator[Riskmon]:
    r = Riskmon(tmp_path / "riskmon.log")
    try:
        yield r
    finally:
        _stop(r.proc)


@pytest.fixture
def prometheus_binary() -> str:
    return required_tool("prometheus")


def _as_of_ms(report: dict[str, Any]) -> int:
    t = dt.datetime.strptime(report["as_of"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    return round(t.timestamp() * 1000)


def _samples(result: list[dict[str, Any]]) -> dict[float, float]:
    """Scrape timestamp -> value, from a one-series range-vector query."""
    assert len(result) <= 1, result
    return {float(ts): float(v) for ts, v in result[0]["values"]} if result else {}


def test_prometheus_scrapes_what_riskmon_reports(
    riskmon: Riskmon, prometheus_binary: str, tmp_path: Path
) -> None:
    deadline = Deadline(TOTAL_BUDGET_S)
    url = riskmon.wait_url(deadline)
    prom = Prometheus(prometheus_binary, tmp_path, url.removeprefix("http://"))
    try:
        prom.wait_ready(deadline)

        # riskmon's own reports, by snapshot time (ms): BTC slow volatility (None = unknown).
        seen: dict[int, float | None] = {}
        matched: dict[int, tuple[float, float]] = {}  # as_of -> (prometheus, riskmon)
        next_query = 0.0
        while len(matched) < MATCHES_WANTED:
            if deadline.left() <= 0:
                raise AssertionError(
                    f"timed out: {len(matched)}/{MATCHES_WANTED} scraped volatilities matched "
                    f"one of {len(seen)} snapshots seen\n{prom.log_tail()}\n{riskmon.log_tail()}"
                )
            try:
                report = _get_json(url + "/api/v1/snapshot")
                seen[_as_of_ms(report)] = report["assets"]["BTC"]["volatility"]
            except urllib.error.HTTPError as exc:
                if exc.code != 503:  # 503 = before the first evaluation
                    raise
            if time.monotonic() >= next_query:  # Prometheus scrapes once a second
                next_query = time.monotonic() + 0.5
                vols = _samples(prom.query(VOL_QUERY + "[30s]"))
                stamps = _samples(prom.query("riskmon_snapshot_timestamp_seconds[30s]"))
                for scraped_at, vol in vols.items():
                    stamp = stamps.get(scraped_at)  # same scrape, same sample timestamp
                    reported = None if stamp is None else seen.get(round(stamp * 1000))
                    if stamp is not None and reported is not None:
                        matched[round(stamp * 1000)] = (vol, reported)
            time.sleep(0.06)  # well under risk.eval_interval (250 ms): no snapshot missed

        for as_of, (scraped, reported) in matched.items():
            assert math.isclose(scraped, reported, rel_tol=1e-12), (as_of, scraped, reported)
            assert 0.01 < scraped < 20, scraped  # an annualised volatility, not a unit slip

        (up,) = prom.query('up{job="riskmon"}')
        assert up["value"][1] == "1"

        # The project's rules run against the real exporter: the recording rule sees the
        # evaluation counter move, every rule evaluates without error, and a healthy daemon
        # triggers no alert, not even a pending one.
        while not prom.query("riskmon:evaluations:rate1m > 0"):
            deadline.check("riskmon:evaluations:rate1m > 0")
            time.sleep(0.2)
        while True:
            groups = _get_json(prom.url + "/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            if all(r["health"] != "unknown" for r in rules):
                break
            deadline.check("every rule to be evaluated")
            time.sleep(0.2)
        assert {g["name"] for g in groups} == {"riskmon.recording", "riskmon.alerts"}
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
        alerts = _get_json(prom.url + "/api/v1/alerts")["data"]["alerts"]
        assert alerts == [], alerts

        assert _stop(riskmon.proc) == 0, riskmon.log_tail()
        assert _stop(prom.proc) == 0, prom.log_tail()
    finally:
        _stop(prom.proc)


PANELS_BUDGET_S = 180.0  # "within 3 minutes of the demo starting"
_VARIABLES = {
    "$__rate_interval": "1m",
    "$account": ".*",
    "$underlying": ".*",
    "$instance": ".*",
}


def _panel_expressions() -> dict[str, str]:
    """Every panel expression of every dashboard, variables set to "all": expr -> where."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # grafana/ holds a script, not an installed package
    from grafana import build_dashboards as gen

    out: dict[str, str] = {}
    for name, text in gen.build_dashboards().items():
        dashboard = json.loads(text)
        for panel in dashboard["panels"]:
            for inner in [panel, *panel.get("panels", [])]:
                for target in inner.get("targets", []):
                    expr = target["expr"]
                    for var, value in _VARIABLES.items():
                        expr = expr.replace(var, value)
                    assert "$" not in expr, expr
                    out.setdefault(expr, f"{name}: {inner['title']}")
    return out


def test_every_dashboard_panel_shows_data_on_the_demo(
    riskmon: Riskmon, prometheus_binary: str, tmp_path: Path
) -> None:
    """A real Prometheus scrapes ``riskmon run`` (no config): every panel expression of
    every dashboard returns a series within 3 minutes of the daemon starting."""
    deadline = Deadline(PANELS_BUDGET_S)
    url = riskmon.wait_url(deadline)
    prom = Prometheus(prometheus_binary, tmp_path, url.removeprefix("http://"))
    try:
        prom.wait_ready(deadline)
        waiting = _panel_expressions()
        assert len(waiting) >= 90
        while waiting:
            for expr in list(waiting):
                if prom.query(expr):
                    del waiting[expr]
            if not waiting or deadline.left() <= 0:
                break
            time.sleep(2.0)
        assert not waiting, "no data within 3 minutes:\n" + "\n".join(
            f"  {where}: {expr}" for expr, where in sorted(waiting.items(), key=lambda kv: kv[1])
        )
    finally:
        _stop(prom.proc)
