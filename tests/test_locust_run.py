"""Headless locust runs of loadtest/locustfile.py and loadtest/load.py against a real sink.

Each run is bounded: 2 or 3 users for 3 or 4 seconds, on 127.0.0.1. Without locust these
tests are skipped, except under CI=true, where a missing locust fails them.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_locust_client import metric
from test_real_clients import stop_and_read

import sink.spool

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The installed package is only `sink`; loadtest/ is imported from the checkout.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from loadtest.load import LocustCounts, print_summary  # noqa: E402

LOCUSTFILE = PROJECT_ROOT / "loadtest" / "locustfile.py"
SIZES = "1k:50,10k:30,100k:15,1m:5"
SIZE_CLASSES = {1000, 10_000, 100_000, 1_000_000}
STAGES = {"connect", "ehlo", "mail", "rcpt", "data", "end-of-data"}

pytestmark = pytest.mark.real


@pytest.fixture(autouse=True)
def require_locust() -> None:
    """Skip without locust, but fail when CI=true, like conftest.require_tool."""
    if importlib.util.find_spec("locust") is None:
        message = "locust not found: install it with pip install 'locust>=2.20' (extra `load`)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def subprocess_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")])
    )
    return environment


def run_locust(server: Any, reports: Path, *options: str, run_time: str = "4s", users: int = 3):  # type: ignore[no-untyped-def]
    """Run locust headless against `server`; return the process result and the JSON entries."""
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", str(users), "-r", str(users), "--run-time", run_time]
    command += ["--stop-timeout", "20", "--only-summary"]
    command += ["--csv", str(reports / "locust"), "--json-file", str(reports / "locust")]
    command += ["--smtp-host", "127.0.0.1", "--smtp-port", str(server.port), *options]
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    report = reports / "locust.json"
    assert report.exists(), f"locust wrote no JSON report:\n{result.stderr}"
    return result, json.loads(report.read_text())


def count(entries: list[dict[str, Any]], request_type: str, name: str, key: str) -> int:
    return sum(
        entry[key] for entry in entries if entry["method"] == request_type and entry["name"] == name
    )


def failure_rows(reports: Path) -> list[dict[str, str]]:
    with (reports / "locust_failures.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def accepted(server: Any) -> float:
    _, text = server.scrape()
    return metric(text, "smtp_sink_messages_total", outcome="accepted")


def test_locust_run_matches_sink(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    options = ["--smtp-size", SIZES, "--smtp-recipients", "2"]
    options += ["--smtp-messages-per-connection", "3", "--smtp-stage-timing"]

    result, entries = run_locust(server, tmp_path, *options)

    assert result.returncode == 0, result.stderr
    sent = count(entries, "SMTP", "send", "num_requests")
    failed = count(entries, "SMTP", "send", "num_failures")
    assert sent > 0, result.stderr
    assert failed == 0, result.stderr
    assert accepted(server) == sent

    stage_names = {entry["name"] for entry in entries if entry["method"] == "SMTP-stage"}
    assert stage_names == STAGES
    assert count(entries, "SMTP-stage", "end-of-data", "num_requests") == sent
    assert count(entries, "SMTP-stage", "rcpt", "num_requests") == sent

    records = stop_and_read(server)
    assert len(records) == sent
    sizes = {record.size for record in records}
    assert sizes <= SIZE_CLASSES
    assert 1000 in sizes, "the most frequent size class was never drawn"
    assert all(len(record.envelope["forward_paths"]) == 2 for record in records)


def test_locust_expected_refusals_succeed(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "refused*@*")
    options = ["--smtp-expect-refusal-share", "0.3", "--smtp-pipelining", "off"]

    result, entries = run_locust(server, tmp_path, *options, run_time="3s", users=2)

    assert result.returncode == 0, result.stderr
    sent = count(entries, "SMTP", "send", "num_requests")
    refused = count(entries, "SMTP", "refused", "num_requests")
    assert count(entries, "SMTP", "send", "num_failures") == 0
    assert count(entries, "SMTP", "refused", "num_failures") == 0
    assert sent > 0
    assert refused > 0
    assert accepted(server) == sent
    _, text = server.scrape()
    assert metric(text, "smtp_sink_recipients_total", outcome="refused") == refused
    assert len(stop_and_read(server)) == sent


def test_locust_unexpected_refusals_fail(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Recipients are user1@, user2@, ...: about one in ten ends in 3 and is rejected.
    server = start_sink("--reject-rcpt", "user*3@example.net")
    options = ["--smtp-recipients", "2"]

    result, entries = run_locust(server, tmp_path, *options, run_time="3s", users=2)

    assert result.returncode == 1, "locust exits 1 when a request failed"
    sent = count(entries, "SMTP", "send", "num_requests")
    failed = count(entries, "SMTP", "send", "num_failures")
    assert failed > 0
    assert accepted(server) == sent - failed

    errors = [row["Error"] for row in failure_rows(tmp_path)]
    assert errors, "locust_failures.csv lists no failure"
    assert all("RCPT: expected 250, got 550 5.1.1" in error for error in errors), errors
    assert len(stop_and_read(server)) == sent - failed


def test_locust_invalid_option_exits_2(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", "1", "--run-time", "1s", "--smtp-port", "9", "--smtp-size", "1k:oops"]
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid weight 'oops'" in result.stderr


def test_load_script_summary_agrees(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    command = [sys.executable, "-m", "loadtest.load", "--port", str(server.port)]
    command += ["--metrics-port", str(server.metrics_port), "--users", "2", "--run-time", "3s"]
    command += ["--reports", str(tmp_path / "reports"), "--smtp-messages-per-connection", "2"]

    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "using the sink already listening" in result.stdout
    assert "the counts agree" in result.stdout
    assert (tmp_path / "reports" / "locust.html").exists()
    assert (tmp_path / "reports" / "locust_stats.csv").exists()
    delivered = int(result.stdout.split("locust delivered:")[1].split()[0])
    assert delivered > 0
    assert accepted(server) == delivered


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_load_script_starts_sink_distributed(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    command = [sys.executable, "-m", "loadtest.load", "--port", str(free_port())]
    command += ["--metrics-port", str(free_port()), "--users", "4", "--run-time", "3s"]
    command += ["--processes", "2", "--sink-workers", "2", "--spool", str(spool)]
    command += ["--reports", str(tmp_path / "reports"), "--size", "1k:3,10k:1"]

    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "starting the sink" in result.stdout
    assert "the counts agree" in result.stdout
    delivered = int(result.stdout.split("locust delivered:")[1].split()[0])
    assert delivered > 0
    # The script stopped the sink it started, so every record is in a sealed segment.
    records = list(sink.spool.records(spool))
    assert len(records) == delivered
    assert {record.size for record in records} <= {1000, 10_000}
    assert not list(spool.glob("*.open"))


def test_load_summary_mismatch_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert print_summary(LocustCounts(5, 0, 0), before=10, after=15) == 0
    assert print_summary(LocustCounts(5, 0, 0), before=10, after=14) == 1
    assert "MISMATCH: locust delivered 5, the sink accepted 4" in capsys.readouterr().out
    assert print_summary(LocustCounts(5, 2, 0), before=10, after=15) == 1
    assert "FAILED: locust counted 2 failed transactions" in capsys.readouterr().out
