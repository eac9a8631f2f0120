"""Static checks of the Grafana dashboard and the Prometheus and Grafana files in grafana/.

No network and no YAML parser: the YAML files are simple enough to check line by line.
`dashboard_expressions` is also for tests that run every panel query against a real Prometheus.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "smtp-sink.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"
GRID_COLUMNS = 24
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The metric catalogue that the dashboard was built against. docs/metrics.md is the reference,
# and test_metrics_in_docs checks the dashboard against it once it exists.
CATALOGUE = frozenset(
    {
        "smtp_sink_connections_accepted_total",
        "smtp_sink_connections_active",
        "smtp_sink_connections_refused_total",
        "smtp_sink_sessions_ended_total",
        "smtp_sink_session_duration_seconds",
        "smtp_sink_commands_total",
        "smtp_sink_replies_total",
        "smtp_sink_messages_total",
        "smtp_sink_recipients_total",
        "smtp_sink_received_bytes_total",
        "smtp_sink_message_size_bytes",
        "smtp_sink_data_duration_seconds",
        "smtp_sink_spool_written_bytes_total",
        "smtp_sink_spool_records_total",
        "smtp_sink_spool_segments_sealed_total",
        "smtp_sink_spool_write_errors_total",
        "smtp_sink_spool_segments_open",
        "smtp_sink_spool_disk_bytes",
        "smtp_sink_spool_fsync_duration_seconds",
        "smtp_sink_client_quirks_total",
        "smtp_sink_workers_alive",
        "smtp_sink_worker_restarts_total",
        "smtp_sink_worker_connections_total",
        "smtp_sink_worker_messages_total",
        "smtp_sink_worker_cpu_seconds_total",
        "smtp_sink_worker_resident_memory_bytes",
        "smtp_sink_build_info",
    }
)

# Values that stand in for Grafana's variables when a query runs outside Grafana. `$instance`
# is a multi-value variable whose "All" value is the regular expression `.*`.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1m",
    "${instance}": ".*",
    "$instance": ".*",
}

# Words of PromQL that look like metric names: operators, modifiers and the literals.
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
     "group_left", "group_right", "inf", "nan"}
)  # fmt: skip


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    with path.open(encoding="utf-8") as file:
        dashboard: dict[str, Any] = json.load(file)
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Return every panel, with the panels of collapsed rows after their row."""
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_expressions(path: Path | str = DASHBOARD) -> list[str]:
    """Return the PromQL expression of every panel target, ready to send to Prometheus.

    Grafana's variables are replaced by the values in GRAFANA_VARIABLES, for example
    `$__rate_interval` by `1m`. The datasource variable does not occur in expressions.
    """
    expressions = []
    for panel in all_panels(load_dashboard(Path(path))):
        for target in panel.get("targets", []):
            expression = target["expr"]
            # Longest names first, so `$__range` cannot replace part of a longer name.
            for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
                expression = expression.replace(name, GRAFANA_VARIABLES[name])
            expressions.append(expression)
    return expressions


def metric_names(expression: str) -> set[str]:
    """Return the metric names in a PromQL expression.

    Strings, label matchers, range selectors and the label lists of `by`, `without`, `on`,
    `ignoring`, `group_left` and `group_right` are removed first. Every remaining identifier
    that is not a function call or a PromQL word is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', "", expression)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in PROMQL_WORDS:
            continue
        names.add(name)
    return names


def catalogue_base(name: str, catalogue: frozenset[str]) -> str | None:
    """Return the catalogue entry that a series name belongs to, or None.

    A histogram `h` is queried as `h_bucket`, `h_sum` and `h_count`. A counter may be listed
    without the `_total` that the exposition format adds.
    """
    if name in catalogue:
        return name
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if name.endswith(suffix) and name.removesuffix(suffix) in catalogue:
            return name.removesuffix(suffix)
    return None


def metrics_in_doc(path: Path) -> frozenset[str]:
    """Return the metric names of a Markdown file: the backticked first cell of table rows."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*\|\s*`([A-Za-z_:][\w:]*)", line)
        if match:
            names.add(match.group(1))
    return frozenset(names)


def yaml_values(path: Path, key: str) -> list[str]:
    """Return the values of `key: value` lines in a YAML file, without quotes or comments."""
    values = []
    pattern = re.compile(rf"^\s*(?:-\s+)?{re.escape(key)}:\s*(.*?)\s*(?:#.*)?$")
    for line in path.read_text(encoding="utf-8").splitlines():
        match = pattern.match(line)
        if match:
            values.append(match.group(1).strip("'\""))
    return values


def compose_list(path: Path, service: str, key: str) -> list[str]:
    """Return the items of the block list `key:` of a service in docker-compose.yml."""
    items: list[str] = []
    current_service = current_key = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 2 and line.rstrip().endswith(":"):
            current_service, current_key = line.strip()[:-1], None
        elif indent == 4:
            current_key = line.strip().rstrip(":")
        elif indent == 6 and current_service == service and current_key == key:
            items.append(line.strip().removeprefix("- ").strip("'\""))
    return items


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "smtp-sink"
    assert dashboard["title"] == "SMTP sink"
    assert "id" not in dashboard, "remove the id that an export adds: the uid names the dashboard"
    assert isinstance(dashboard["schemaVersion"], int)


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert "datasource" in variables
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_query_variables_use_datasource(dashboard: dict[str, Any]) -> None:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable.get("datasource") == DATASOURCE, variable["name"]


def test_panels_use_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no targets"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, (panel["title"], target.get("refId"))


def test_targets_have_expressions(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            expression = target.get("expr")
            assert isinstance(expression, str), (panel["title"], target.get("refId"))
            assert expression.strip(), (panel["title"], target.get("refId"))


def test_ref_ids_unique_per_panel(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        ref_ids = [target.get("refId") for target in panel.get("targets", [])]
        assert all(ref_ids), f"panel {panel['title']!r} has a target without refId"
        assert len(ref_ids) == len(set(ref_ids)), (panel["title"], ref_ids)


def test_panel_ids_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_panels_fit_grid(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard):
        position = panel["gridPos"]
        assert position["x"] >= 0, panel["title"]
        assert position["y"] >= 0, panel["title"]
        assert position["w"] >= 1, panel["title"]
        assert position["h"] >= 1, panel["title"]
        assert position["x"] + position["w"] <= GRID_COLUMNS, panel["title"]


def overlapping_pairs(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
    pairs = []
    for first, second in itertools.combinations(panels, 2):
        a, b = first["gridPos"], second["gridPos"]
        apart = (
            a["x"] + a["w"] <= b["x"]
            or b["x"] + b["w"] <= a["x"]
            or a["y"] + a["h"] <= b["y"]
            or b["y"] + b["h"] <= a["y"]
        )
        if not apart:
            pairs.append((first["title"], second["title"]))
    return pairs


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    # Top-level panels share one grid. The panels of a collapsed row are laid out as if the row
    # were open, so they are checked among themselves.
    assert overlapping_pairs(dashboard["panels"]) == []
    for panel in dashboard["panels"]:
        assert overlapping_pairs(panel.get("panels", [])) == [], panel["title"]


def test_overlap_check_detects_overlap() -> None:
    left = {"title": "left", "gridPos": {"x": 0, "y": 0, "w": 12, "h": 8}}
    right = {"title": "right", "gridPos": {"x": 12, "y": 0, "w": 12, "h": 8}}
    middle = {"title": "middle", "gridPos": {"x": 11, "y": 7, "w": 2, "h": 2}}
    assert overlapping_pairs([left, right]) == []
    assert overlapping_pairs([left, right, middle]) == [("left", "middle"), ("right", "middle")]


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('rate(smtp_sink_messages_total{outcome="accepted"}[1m])', {"smtp_sink_messages_total"}),
        (
            "histogram_quantile(0.99, sum by (le) (rate(smtp_sink_message_size_bytes_bucket[1m])))",
            {"smtp_sink_message_size_bytes_bucket"},
        ),
        ("sum without (worker) (a_total) / on (instance) group_left b", {"a_total", "b"}),
        ('up{job="x:y"} > bool 1e3 and inf_metric offset 5m', {"up", "inf_metric"}),
    ],
)
def test_metric_names_parsing(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def test_metrics_in_catalogue(dashboard: dict[str, Any]) -> None:
    unknown = {
        name
        for expression in dashboard_expressions()
        for name in metric_names(expression)
        if catalogue_base(name, CATALOGUE) is None
    }
    assert unknown == set()


def test_metrics_in_docs() -> None:
    if not METRICS_DOC.exists():
        pytest.skip("docs/metrics.md does not exist yet, so there is no catalogue to check against")
    documented = metrics_in_doc(METRICS_DOC)
    assert documented, "docs/metrics.md has no table rows with a metric name in backticks"
    unknown = {
        name
        for expression in dashboard_expressions()
        for name in metric_names(expression)
        if catalogue_base(name, documented) is None
    }
    assert unknown == set(), "dashboard queries metrics that docs/metrics.md does not list"


def test_dashboard_expressions_replace_variables() -> None:
    expressions = dashboard_expressions()
    assert len(expressions) == sum(
        len(panel.get("targets", [])) for panel in all_panels(load_dashboard())
    )
    for expression in expressions:
        assert "$" not in expression, expression
    assert any("[1m]" in expression for expression in expressions)


def test_datasource_provisioning() -> None:
    path = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
    assert yaml_values(path, "name") == ["Prometheus"]
    assert yaml_values(path, "type") == ["prometheus"]
    assert yaml_values(path, "uid") == ["prometheus"]
    assert yaml_values(path, "url") == ["http://prometheus:9090"]
    assert yaml_values(path, "isDefault") == ["true"]


def test_dashboard_provisioning() -> None:
    path = GRAFANA / "provisioning" / "dashboards" / "smtp-sink.yml"
    assert yaml_values(path, "type") == ["file"]
    folders = yaml_values(path, "folder")
    assert len(folders) == 1
    assert folders[0], "the dashboard provider names no folder"
    assert yaml_values(path, "path") == ["/var/lib/grafana/dashboards"]


def test_compose_mounts() -> None:
    path = GRAFANA / "docker-compose.yml"
    mounts = {}
    for service in ("prometheus", "grafana"):
        for volume in compose_list(path, service, "volumes"):
            source, target = volume.split(":")[:2]
            assert (GRAFANA / source).exists(), f"{service} mounts missing {source}"
            mounts[target] = source
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus.yml"
    assert mounts["/var/lib/grafana/dashboards"] == "./dashboards"
    assert mounts["/etc/grafana/provisioning/datasources"] == "./provisioning/datasources"
    assert mounts["/etc/grafana/provisioning/dashboards"] == "./provisioning/dashboards"


def test_compose_ports_on_loopback() -> None:
    path = GRAFANA / "docker-compose.yml"
    assert compose_list(path, "prometheus", "ports") == ["127.0.0.1:9090:9090"]
    assert compose_list(path, "grafana", "ports") == ["127.0.0.1:3000:3000"]
    assert compose_list(path, "prometheus", "extra_hosts") == ["host.docker.internal:host-gateway"]


def test_prometheus_scrape_job() -> None:
    path = GRAFANA / "prometheus.yml"
    assert yaml_values(path, "scrape_interval") == ["5s"]
    assert "smtp-sink" in yaml_values(path, "job_name")
    assert '["host.docker.internal:9325"]' in yaml_values(path, "targets")
