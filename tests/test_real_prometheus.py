"""The scrape config and the dashboard against a real Prometheus server scraping a real sink.

Prometheus runs on a loopback port with the repository's scrape config, retargeted at the test's
sink and scraping every second. After real mail, every PromQL expression of the dashboard must
parse and return a non-empty result.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from conftest import require_tool
from test_dashboard import dashboard_expressions
from test_real_clients import stop_and_read
from test_real_metrics import RawClient, run_traffic

pytestmark = pytest.mark.real

REPO = Path(__file__).resolve().parent.parent
SCRAPE_CONFIG = REPO / "grafana" / "prometheus.yml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def adapted_config(metrics_port: int) -> str:
    """Point the repository's scrape config at the test sink, scraping every second.

    The load generator's job is pointed at a closed loopback port, so that Prometheus never
    looks up host.docker.internal outside this machine.
    """
    text = SCRAPE_CONFIG.read_text()
    assert "host.docker.internal:9325" in text
    assert "scrape_interval: 5s" in text
    text = text.replace("host.docker.internal:9325", f"127.0.0.1:{metrics_port}")
    text = text.replace("host.docker.internal:9646", "127.0.0.1:9")
    assert "host.docker.internal:" not in text
    return text.replace("scrape_interval: 5s", "scrape_interval: 1s")


def query(port: int, expression: str) -> dict:  # type: ignore[type-arg]
    """Run an instant query; an HTTP error returns Prometheus's error body, no server {}."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)  # type: ignore[no-any-return]
    except urllib.error.HTTPError as error:
        return json.load(error)  # type: ignore[no-any-return]
    except urllib.error.URLError:
        return {}


def test_promtool_accepts_scrape_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(SCRAPE_CONFIG)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    adapted = tmp_path / "prometheus.yml"
    adapted.write_text(adapted_config(9325))
    result = subprocess.run(
        [promtool, "check", "config", str(adapted)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(180)
def test_dashboard_queries_return_data(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    prometheus = require_tool("prometheus", "prometheus")
    server = start_sink("--reject-rcpt", "nobody@*", "--max-message-size", "2000")
    config = tmp_path / "prometheus.yml"
    config.write_text(adapted_config(server.metrics_port))
    port = free_port()
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        deadline = time.monotonic() + 30
        while query(port, "up").get("status") != "success" and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            time.sleep(0.2)

        # Traffic of every kind the panels show, spread over a few scrapes, and one restart.
        for _ in range(3):
            run_traffic(server.host, server.port, Counter(), pipelined=True)
            with smtplib.SMTP(server.host, server.port, timeout=10) as client:
                client.sendmail("a@example.com", ["ok@example.net"], b"Subject: x\r\n\r\ny\r\n")
            time.sleep(1.0)
        os.kill(server.worker_pids()[0], signal.SIGKILL)
        server.wait_for_workers(2)
        RawClient(server.host, server.port, Counter()).close()

        expressions = dashboard_expressions()
        assert len(expressions) >= 20
        empty = list(expressions)
        deadline = time.monotonic() + 60
        while empty and time.monotonic() < deadline:
            time.sleep(1.0)
            still_empty = []
            for expression in empty:
                answer = query(port, expression)
                assert answer.get("status") == "success", (expression, answer)
                if not answer["data"]["result"]:
                    still_empty.append(expression)
            empty = still_empty
        assert not empty, f"queries with no result: {empty}"

        targets = query(port, 'up{job="smtp-sink"}')["data"]["result"]
        assert [target["value"][1] for target in targets] == ["1"]
    finally:
        process.terminate()
        process.wait(30)
    stop_and_read(server)
