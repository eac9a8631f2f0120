"""The load generator's Grafana dashboard, grafana/dashboards/smtp-load.json, and its scrape job.

The structure checks are those of tests/test_dashboard.py, run over the new dashboard. Its
metric names are checked against the table in docs/load.md, which must list what the
generator exposes. The scrape job is the YAML block in docs/load.md. The last test runs every
query of the dashboard against a real Prometheus that scrapes a real locust run and a sink.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool
from test_dashboard import (
    ROOT,
    all_panels,
    catalogue_base,
    dashboard_expressions,
    load_dashboard,
    metric_names,
    metrics_in_doc,
)
from test_dashboard import test_datasource_variable as check_datasource_variable
from test_dashboard import test_panel_ids_unique as check_panel_ids_unique
from test_dashboard import test_panels_do_not_overlap as check_panels_do_not_overlap
from test_dashboard import test_panels_fit_grid as check_panels_fit_grid
from test_dashboard import test_panels_use_datasource_variable as check_panels_use_datasource
from test_dashboard import test_query_variables_use_datasource as check_query_variables
from test_dashboard import test_ref_ids_unique_per_panel as check_ref_ids_unique
from test_dashboard import test_targets_have_expressions as check_targets_have_expressions
from test_locust_metrics import exposition, start_locust
from test_locust_run import require_locust
from test_real_prometheus import free_port, query

from loadtest.locust_tally import Tally

__all__ = ["require_locust"]  # an autouse fixture: it skips the tests without locust

DASHBOARD = ROOT / "grafana" / "dashboards" / "smtp-load.json"
LOAD_DOC = ROOT / "docs" / "load.md"
SCRAPE_CONFIG = ROOT / "grafana" / "prometheus.yml"
JOB_TARGET = "host.docker.internal:9646"

STRUCTURE_CHECKS = [
    check_datasource_variable,
    check_query_variables,
    check_panels_use_datasource,
    check_targets_have_expressions,
    check_ref_ids_unique,
    check_panel_ids_unique,
    check_panels_fit_grid,
    check_panels_do_not_overlap,
]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard(DASHBOARD)


def documented_metrics() -> frozenset[str]:
    return frozenset(name for name in metrics_in_doc(LOAD_DOC) if name.startswith("smtp_load_"))


def exposed_metrics() -> frozenset[str]:
    """Return the metric families that the generator exposes, with `_total` on counters."""
    names = set()
    for name, _labels in exposition(Tally()):
        for suffix in ("_bucket", "_count", "_sum", "_created"):
            name = name.removesuffix(suffix)
        names.add(name)
    return frozenset(names)


def scrape_job() -> str:
    """Return the `smtp-load` job from the YAML block in docs/load.md."""
    blocks = re.findall(r"```yaml\n(.*?)```", LOAD_DOC.read_text(encoding="utf-8"), re.DOTALL)
    jobs = [block for block in blocks if "job_name: smtp-load" in block]
    assert len(jobs) == 1, "docs/load.md needs one yaml block with the smtp-load job"
    return jobs[0]


def config_with_job() -> str:
    """Return grafana/prometheus.yml, checking that it has the smtp-load job of docs/load.md."""
    text = SCRAPE_CONFIG.read_text(encoding="utf-8")
    assert scrape_job().strip().splitlines()[0] in text
    assert JOB_TARGET in text
    return text


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "smtp-load"
    assert dashboard["title"] == "SMTP load"
    assert "id" not in dashboard, "remove the id that an export adds: the uid names the dashboard"
    assert isinstance(dashboard["schemaVersion"], int)


@pytest.mark.parametrize("check", STRUCTURE_CHECKS, ids=lambda check: check.__name__)
def test_dashboard_structure(check: Any, dashboard: dict[str, Any]) -> None:
    check(dashboard)


def test_panels_cover_required_views(dashboard: dict[str, Any]) -> None:
    expressions = "\n".join(dashboard_expressions(DASHBOARD))
    assert "sum by (name, outcome) (rate(smtp_load_transactions_total" in expressions
    assert "smtp_load_messages_sent_total" in expressions
    assert "smtp_load_bytes_sent_total" in expressions
    for quantile in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({quantile}, sum by (le, stage)" in expressions, quantile
    assert 'outcome="failed"' in expressions
    units = {
        panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        for panel in all_panels(dashboard)
    }
    assert "Bps" in units, "the data panel needs a byte rate unit, which Grafana shows as MB/s"


def test_docs_table_matches_exposition() -> None:
    assert documented_metrics() == exposed_metrics()


def test_dashboard_metrics_in_docs() -> None:
    documented = documented_metrics()
    assert documented, "docs/load.md has no table rows with an smtp_load_ metric in backticks"
    unknown = {
        name
        for expression in dashboard_expressions(DASHBOARD)
        for name in metric_names(expression)
        if catalogue_base(name, documented) is None
    }
    assert unknown == set(), "the dashboard queries metrics that docs/load.md does not list"


def test_promtool_accepts_scrape_job(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(config_with_job())
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert JOB_TARGET in scrape_job()


@pytest.mark.real
@pytest.mark.timeout(150)
def test_dashboard_queries_return_data(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prometheus = require_tool("prometheus", "prometheus")
    server = start_sink(spool=False)
    metrics_port = free_port()
    config = config_with_job().replace(
        "host.docker.internal:9325", f"127.0.0.1:{server.metrics_port}"
    )
    config = config.replace(JOB_TARGET, f"127.0.0.1:{metrics_port}")
    config = config.replace("scrape_interval: 5s", "scrape_interval: 1s")
    (tmp_path / "prometheus.yml").write_text(config)
    port = free_port()
    prometheus_log = tmp_path / "prometheus.log"
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=prometheus_log.open("w"),
    )
    # A light load, bounded by --run-time. The test stops it with SIGTERM once every query
    # has data.
    options = ["--headless", "-u", "2", "-r", "2", "--run-time", "40s", "--stop-timeout", "10"]
    options += ["--only-summary", "--smtp-port", str(server.port), "--smtp-wait", "0.005"]
    options += ["--smtp-stage-timing", "--smtp-metrics-listen", f"127.0.0.1:{metrics_port}"]
    locust_log = tmp_path / "locust.log"
    locust = start_locust(locust_log, *options)
    try:
        deadline = time.monotonic() + 30
        while query(port, "up").get("status") != "success" and time.monotonic() < deadline:
            assert process.poll() is None, prometheus_log.read_text()
            time.sleep(0.2)

        expressions = dashboard_expressions(DASHBOARD)
        assert len(expressions) >= 10
        empty = list(expressions)
        deadline = time.monotonic() + 40
        while empty and time.monotonic() < deadline:
            assert locust.poll() is None, locust_log.read_text()
            time.sleep(1.0)
            still_empty = []
            for expression in empty:
                answer = query(port, expression)
                assert answer.get("status") == "success", (expression, answer)
                if not answer["data"]["result"]:
                    still_empty.append(expression)
            empty = still_empty
        assert not empty, f"queries with no result: {empty}"

        jobs = {
            target["metric"]["job"]: target["value"][1]
            for target in query(port, "up")["data"]["result"]
        }
        assert jobs == {"smtp-sink": "1", "smtp-load": "1"}
    finally:
        if locust.poll() is None:
            locust.send_signal(signal.SIGTERM)
        try:
            locust.wait(30)
        except subprocess.TimeoutExpired:
            locust.kill()
            locust.wait(10)
        process.terminate()
        process.wait(30)
    assert locust.returncode == 0, locust_log.read_text()
