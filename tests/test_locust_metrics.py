"""The locust master's `smtp_load_*` metrics (`--smtp-metrics-listen`) against a real sink.

The unit tests run `Tally` and its collector without locust, because importing locust in the
test process would patch its sockets with gevent. The run tests start locust as a subprocess
on 127.0.0.1 for 3 to 4 seconds with 2 to 4 users, scrape its `/metrics` while it runs and
during `--smtp-metrics-linger`, and compare the last scrape with the sink and locust's report.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_locust_run import (
    LOCUSTFILE,
    PROJECT_ROOT,
    accepted,
    count,
    free_port,
    require_locust,
    subprocess_environment,
)

from loadtest.locust_tally import BUCKETS, STAGES, Tally, TallyCollector, parse_listen

__all__ = ["require_locust"]  # an autouse fixture: it skips the run tests without locust

LINGER = "2"


def exposition(tally: Tally) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of the tally's exposition, keyed by name and sorted labels."""
    registry = CollectorRegistry()
    registry.register(TallyCollector(tally))
    return parse_samples(generate_latest(registry).decode())


def parse_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_tally_counts_events() -> None:
    tally = Tally()
    tally.record("SMTP", "send", 2.0, 1000, None)
    tally.record("SMTP", "send", 3.0, 1000, OSError("reset"))
    tally.record("SMTP", "refused", 1.0, 0, None)
    tally.record("SMTP-stage", "end-of-data", 0.5, 1002, None)
    tally.record("SMTP-stage", "rcpt", 0.5, 0, OSError("reset"))

    samples = exposition(tally)

    assert samples[("smtp_load_transactions_total", (("name", "send"), ("outcome", "ok")))] == 1
    assert samples[("smtp_load_transactions_total", (("name", "send"), ("outcome", "failed")))] == 1
    assert samples[("smtp_load_transactions_total", (("name", "refused"), ("outcome", "ok")))] == 1
    assert samples[("smtp_load_messages_sent_total", ())] == 1
    assert samples[("smtp_load_bytes_sent_total", ())] == 1000
    assert samples[("smtp_load_stage_duration_seconds_count", (("stage", "transaction"),))] == 1
    assert samples[("smtp_load_stage_duration_seconds_sum", (("stage", "transaction"),))] == 0.002
    assert samples[("smtp_load_stage_duration_seconds_count", (("stage", "end_of_data"),))] == 1
    assert samples[("smtp_load_stage_duration_seconds_count", (("stage", "rcpt"),))] == 0


def test_tally_buckets_are_cumulative() -> None:
    tally = Tally()
    for milliseconds in (0.05, 0.1, 0.2, 1.0, 70_000.0):
        tally.record("SMTP", "send", milliseconds, 10, None)

    samples = exposition(tally)

    def bucket(bound: str) -> float:
        labels = (("le", bound), ("stage", "transaction"))
        return samples[("smtp_load_stage_duration_seconds_bucket", labels)]

    assert bucket("0.0001") == 2, "an observation on a bound belongs to that bucket"
    assert bucket("0.00025") == 3
    assert bucket("0.001") == 4
    assert bucket("60.0") == 4
    assert bucket("+Inf") == 5


def test_exposition_lists_every_stage_from_start() -> None:
    samples = exposition(Tally())
    stages = {
        dict(labels)["stage"]
        for name, labels in samples
        if name == "smtp_load_stage_duration_seconds_count"
    }
    assert stages == set(STAGES)
    failed = ("smtp_load_transactions_total", (("name", "send"), ("outcome", "failed")))
    assert samples[failed] == 0


def test_tally_report_round_trip() -> None:
    first, second = Tally(), Tally()
    first.record("SMTP", "send", 2.0, 1000, None)
    first.record("SMTP-stage", "connect", 0.3, 0, None)
    second.record("SMTP", "send", 4.0, 500, None)
    second.record("SMTP", "send", 4.0, 500, OSError("reset"))

    total = Tally()
    total.add(Tally.from_report(first.to_report()))
    total.add(Tally.from_report(second.to_report()))

    assert total.messages == 2
    assert total.octets == 1500
    assert total.transactions == {("send", "ok"): 2, ("send", "failed"): 1}
    assert total.stages["transaction"].count == 2
    assert total.stages["connect"].count == 1
    assert len(total.stages["connect"].counts) == len(BUCKETS) + 1


def test_tally_rejects_malformed_report() -> None:
    with pytest.raises(ValueError, match="malformed SMTP load tally"):
        Tally.from_report({"messages": 1})
    report = Tally().to_report()
    report["stages"] = {"connect": [[1, 2], 0.5]}
    with pytest.raises(ValueError, match="has 2 buckets"):
        Tally.from_report(report)


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:9646", ("127.0.0.1", 9646)), ("[::1]:0", ("::1", 0))],
)
def test_parse_listen_valid(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["9646", "127.0.0.1:", ":9646", "127.0.0.1:http", "h:70000"])
def test_parse_listen_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_listen(text)


# --- runs against a real sink -------------------------------------------------------------


@dataclass
class ScrapedRun:
    """A finished locust run: its exit status, standard error and the scrapes of `/metrics`."""

    returncode: int
    stderr: str
    scrapes: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = field(
        default_factory=list
    )

    @property
    def last(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert self.scrapes, f"no scrape of /metrics succeeded:\n{self.stderr}"
        return self.scrapes[-1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return parse_samples(response.read().decode())
    except (urllib.error.URLError, OSError):
        return None


def locust_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *options]


def start_locust(log: Path, *options: str) -> subprocess.Popen[bytes]:
    """Start locust with its standard error in `log`, which no pipe can fill up."""
    with log.open("wb") as stderr:
        return subprocess.Popen(
            locust_command(*options),
            cwd=PROJECT_ROOT,
            env=subprocess_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def scrape_until_exit(
    process: subprocess.Popen[bytes], log: Path, port: int, timeout: float = 60
) -> ScrapedRun:
    """Scrape every 0.2 s until the process exits; kill it after `timeout` seconds."""
    scrapes = []
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        samples = scrape(port)
        if samples is not None:
            scrapes.append(samples)
        time.sleep(0.2)
    if process.poll() is None:
        process.kill()
    process.wait(30)
    return ScrapedRun(process.returncode, log.read_text(errors="replace"), scrapes)


def sent(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return samples[("smtp_load_messages_sent_total", ())]


def stage_counts(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> dict[str, float]:
    return {
        dict(labels)["stage"]: value
        for (name, labels), value in samples.items()
        if name == "smtp_load_stage_duration_seconds_count"
    }


def headless_options(server: Any, reports: Path, metrics_port: int) -> list[str]:
    options = ["--headless", "--stop-timeout", "20", "--only-summary"]
    options += ["--json-file", str(reports / "locust")]
    options += ["--smtp-host", "127.0.0.1", "--smtp-port", str(server.port)]
    options += ["--smtp-metrics-listen", f"127.0.0.1:{metrics_port}"]
    return options + ["--smtp-metrics-linger", LINGER]


def check_final_counts(run: ScrapedRun, server: Any, reports: Path) -> None:
    """Compare the last scrape, taken while the master lingered, with the sink and locust."""
    entries = json.loads((reports / "locust.json").read_text())
    delivered = count(entries, "SMTP", "send", "num_requests")
    assert delivered > 0, run.stderr
    assert count(entries, "SMTP", "send", "num_failures") == 0, run.stderr

    values = [sent(samples) for samples in run.scrapes]
    assert values == sorted(values), "smtp_load_messages_sent_total went backwards"
    assert sent(run.last) == accepted(server)
    assert sent(run.last) == delivered
    ok = ("smtp_load_transactions_total", (("name", "send"), ("outcome", "ok")))
    assert run.last[ok] == delivered
    assert run.last[("smtp_load_bytes_sent_total", ())] == 1024 * delivered
    assert stage_counts(run.last)["transaction"] == delivered


def test_local_run_serves_metrics(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink(spool=False)
    metrics_port = free_port()
    options = headless_options(server, tmp_path, metrics_port)
    options += ["-u", "2", "-r", "2", "--run-time", "3s", "--smtp-stage-timing"]

    log = tmp_path / "locust.log"
    run = scrape_until_exit(start_locust(log, *options), log, metrics_port)

    assert run.returncode == 0, run.stderr
    assert f"SMTP load metrics on http://127.0.0.1:{metrics_port}/metrics" in run.stderr
    assert len(run.scrapes) >= 2, run.stderr
    check_final_counts(run, server, tmp_path)
    counts = stage_counts(run.last)
    assert set(counts) == set(STAGES)
    for stage in STAGES:
        assert counts[stage] == sent(run.last), stage


def test_master_with_two_workers_aggregates(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink(spool=False)
    metrics_port = free_port()
    master_port = free_port()
    options = headless_options(server, tmp_path, metrics_port)
    options += ["-u", "4", "-r", "4", "--run-time", "4s", "--smtp-stage-timing"]
    options += ["--master", "--expect-workers", "2", "--master-bind-host", "127.0.0.1"]
    options += ["--master-bind-port", str(master_port)]
    log = tmp_path / "master.log"
    master = start_locust(log, *options)
    # The workers get the SMTP options from the master when the test starts.
    worker_options = ["--worker", "--master-host", "127.0.0.1", "--master-port", str(master_port)]
    workers = [start_locust(tmp_path / f"worker{index}.log", *worker_options) for index in range(2)]
    try:
        run = scrape_until_exit(master, log, metrics_port)
        worker_statuses = [worker.wait(30) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)

    assert run.returncode == 0, run.stderr
    assert worker_statuses == [0, 0]
    check_final_counts(run, server, tmp_path)
    counts = stage_counts(run.last)
    for stage in STAGES:
        assert counts[stage] == sent(run.last), stage


def test_invalid_metrics_listen_exits_2(tmp_path: Path) -> None:
    command = locust_command("--headless", "-u", "1", "--run-time", "1s", "--smtp-port", "9")
    command += ["--smtp-metrics-listen", "localhost"]
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=subprocess_environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "invalid --smtp-metrics-listen 'localhost'" in result.stderr
