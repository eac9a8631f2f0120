"""The provisioned dashboards against Grafana's own published types.

`@grafana/schema` is the TypeScript form of Grafana's dashboard and panel schemas, released with
each Grafana version. grafana/schema-check pins the version of the Grafana image in
grafana/docker-compose.yml. Each dashboard becomes a TypeScript module that assigns the
dashboard, and each panel's options, custom field settings and queries, to those types, and
`tsc --strict` must accept it. A wrong enum value, a missing required option or a misspelled
field then fails the test, as it would leave Grafana to fall back on defaults or drop the field.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
SCHEMA_CHECK = GRAFANA / "schema-check"
TSC = SCHEMA_CHECK / "node_modules" / ".bin" / "tsc"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# Panel types of the dashboards, with the name of their module in @grafana/schema.
PANEL_MODULES = {
    "timeseries": "TimeSeriesPanelCfg",
    "stat": "StatPanelCfg",
    "bargauge": "BarGaugePanelCfg",
    "heatmap": "HeatmapPanelCfg",
}

# JSON has no TypeScript enums, so Json<T> turns each string enum into the union of its values.
# The query fields are Prometheus's, which @grafana/schema leaves open beyond DataQuery.
PRELUDE = """\
import type {{ Dashboard, DataQuery }} from '@grafana/schema';
{imports}

type Json<T> = T extends string
  ? `${{T}}`
  : T extends Array<infer U>
    ? Array<Json<U>>
    : T extends object
      ? {{ [K in keyof T]: Json<T[K]> }}
      : T;

interface PrometheusQuery extends DataQuery {{
  expr: string;
  legendFormat?: string;
  range?: boolean;
  instant?: boolean;
  format?: string;
  editorMode?: string;
  interval?: string;
  exemplar?: boolean;
}}
"""


def typescript_module(dashboard: dict[str, Any]) -> str:
    """Return a TypeScript module that types the dashboard and each of its panels."""
    imports = "\n".join(
        f"import type * as {kind} from "
        f"'@grafana/schema/dist/esm/raw/composable/{kind}/panelcfg/x/{module}_types.gen';"
        for kind, module in PANEL_MODULES.items()
    )
    lines = [
        PRELUDE.format(imports=imports),
        f"export const dashboard: Json<Dashboard> = {json.dumps(dashboard, indent=2)};",
    ]

    for panel in dashboard["panels"]:
        kind = panel["type"]
        if kind == "row":
            continue
        name = f"panel{panel['id']}"
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom")
        lines.append(
            f"export const {name}Options: Json<{kind}.Options> = "
            f"{json.dumps(panel.get('options', {}))};"
        )
        if custom is not None:
            lines.append(
                f"export const {name}Custom: Json<{kind}.FieldConfig> = {json.dumps(custom)};"
            )
        lines.append(
            f"export const {name}Targets: Json<PrometheusQuery>[] = "
            f"{json.dumps(panel.get('targets', []))};"
        )
    return "\n".join(lines) + "\n"


def compile_module(directory: Path, source: str) -> subprocess.CompletedProcess[str]:
    """Type-check `source` with tsc and return the finished process."""
    require_tool("node", "nodejs")
    if not TSC.exists():
        message = f"{TSC} not found: run `make test`, which installs it with npm"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)

    (directory / "node_modules").symlink_to(SCHEMA_CHECK / "node_modules")
    (directory / "dashboard.ts").write_text(source)
    return subprocess.run(
        [
            str(TSC), "--noEmit", "--strict", "--target", "es2022", "--module", "esnext",
            "--moduleResolution", "bundler", "dashboard.ts",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_panel_types_covered(path: Path) -> None:
    kinds = {panel["type"] for panel in load(path)["panels"]} - {"row"}
    assert kinds <= set(PANEL_MODULES), f"add the module of {kinds - set(PANEL_MODULES)}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda path: path.stem)
def test_dashboard_matches_grafana_types(path: Path, tmp_path: Path) -> None:
    completed = compile_module(tmp_path, typescript_module(load(path)))
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_type_check_rejects_bad_dashboard(tmp_path: Path) -> None:
    dashboard = copy.deepcopy(load(GRAFANA / "dashboards" / "smtp-sink.json"))
    panel = next(panel for panel in dashboard["panels"] if panel["type"] == "timeseries")
    panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "lines"
    panel["gridpos"] = panel["gridPos"]

    completed = compile_module(tmp_path, typescript_module(dashboard))

    assert completed.returncode != 0
    assert """Type '"lines"' is not assignable""" in completed.stdout
    assert """'"gridpos"' does not exist""" in completed.stdout


def test_schema_version_matches_compose() -> None:
    package = json.loads((SCHEMA_CHECK / "package.json").read_text())
    compose = (GRAFANA / "docker-compose.yml").read_text()
    image = re.search(r"image: grafana/grafana:(\S+)", compose)

    assert image is not None
    assert package["devDependencies"]["@grafana/schema"] == image.group(1)
