"""Run the locust SMTP load against a sink and check the sink's count (`make load`).

Starts `sink serve` when nothing listens at the target, runs `locust --headless` with
loadtest/locustfile.py, then compares locust's delivered transactions with the growth of
the sink's `smtp_sink_messages_total{outcome="accepted"}`. Exits 0 when they agree and
locust saw no failures, 1 otherwise, and 2 when the sink or its metrics cannot be reached.

Options that this script does not know (such as `--smtp-recipients 3`) go to locust as they
are. Run `python -m loadtest.load --help` for the rest; docs/load.md describes them all.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

PROJECT_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
ACCEPTED_SAMPLE = "smtp_sink_messages_total"
SINK_START_TIMEOUT = 30.0
SINK_STOP_TIMEOUT = 30.0


class LoadError(Exception):
    """A failure that stops the run before the counts can be compared (exit status 2)."""


@dataclass(frozen=True)
class LocustCounts:
    """Transactions counted by locust, from its JSON report."""

    delivered: int
    failed: int
    refused_as_expected: int


def parse_arguments(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.load",
        description=__doc__.split("\n\n")[0],
        epilog="Unknown options, such as --smtp-recipients 3, are passed to locust.",
    )
    parser.add_argument("--users", type=int, default=4, help="locust users (default 4)")
    parser.add_argument(
        "--spawn-rate",
        type=float,
        default=None,
        help="users started per second (default: all at once)",
    )
    parser.add_argument(
        "--run-time", default="10s", help="locust run time, such as 30s or 2m (default 10s)"
    )

    parser.add_argument(
        "--size",
        default="1024",
        help="message size or size:weight distribution, such as 1k:50,10k:30,100k:15,1m:5",
    )

    parser.add_argument("--host", default="127.0.0.1", help="SMTP host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=2525, help="SMTP port (default 2525)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9325,
        help="port of the sink's /metrics on 127.0.0.1 (default 9325)",
    )

    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="locust worker processes on this machine (locust --processes); default one process",
    )

    parser.add_argument(
        "--spool",
        type=Path,
        default=None,
        help="spool directory of a sink this script starts (default: a temporary directory, "
        "removed afterwards)",
    )
    parser.add_argument(
        "--sink-workers", type=int, default=None, help="workers of a sink this script starts"
    )

    parser.add_argument(
        "--reports",
        type=Path,
        default=Path("reports"),
        help="directory for locust.html, locust_*.csv and locust.json (default ./reports)",
    )
    parser.add_argument(
        "--stop-timeout",
        default="30s",
        help="how long locust lets users finish their connection when the run time ends "
        "(default 30s); a user cut off mid-transaction would make the counts disagree",
    )
    return parser.parse_known_args(argv)


def is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def scrape_accepted(metrics_port: int) -> float:
    """Return the sink's accepted-message counter from its /metrics."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError) as error:
        raise LoadError(
            f"cannot read the sink's metrics at {url}: {error}; pass --metrics-port"
        ) from None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == ACCEPTED_SAMPLE and sample.labels.get("outcome") == "accepted":
                return sample.value
    raise LoadError(f'{url} has no {ACCEPTED_SAMPLE}{{outcome="accepted"}}: is it a sink?')


class StartedSink:
    """A `sink serve` process that this script started and must stop."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.temporary_spool = args.spool is None
        self.spool = (
            Path(tempfile.mkdtemp(prefix="sink-load-")) if args.spool is None else args.spool
        )
        command = [sys.executable, "-m", "sink", "serve"]
        command += ["--listen", listen_address(args.host, args.port)]
        command += ["--metrics-listen", f"127.0.0.1:{args.metrics_port}"]
        command += ["--spool", str(self.spool), "--no-progress"]
        if args.sink_workers is not None:
            command += ["--workers", str(args.sink_workers)]
        print(f"starting the sink: {' '.join(command)}", flush=True)
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL)
        self._wait_until_healthy(args)

    def _wait_until_healthy(self, args: argparse.Namespace) -> None:
        url = f"http://127.0.0.1:{args.metrics_port}/healthz"
        deadline = time.monotonic() + SINK_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LoadError(f"the sink exited with status {self.process.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200 and is_listening(args.host, args.port):
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise LoadError(f"the sink did not become healthy at {url} within {SINK_START_TIMEOUT} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(SINK_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print("the sink did not stop after SIGTERM; killing it", file=sys.stderr)
                self.process.kill()
                self.process.wait(10)
        if self.temporary_spool:
            shutil.rmtree(self.spool, ignore_errors=True)


def locust_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    reports = args.reports
    spawn_rate = args.spawn_rate if args.spawn_rate is not None else args.users
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"]
    command += ["-u", str(args.users), "-r", str(spawn_rate), "--run-time", args.run_time]
    command += ["--stop-timeout", args.stop_timeout]
    command += ["--html", str(reports / "locust.html"), "--csv", str(reports / "locust")]
    command += ["--json-file", str(reports / "locust")]
    if args.processes is not None:
        command += ["--processes", str(args.processes)]
    command += ["--smtp-host", args.host, "--smtp-port", str(args.port), "--smtp-size", args.size]
    return command + extra


def read_locust_counts(json_report: Path) -> LocustCounts:
    """Sum the SMTP entries of locust's JSON report.

    The JSON report is written once, after every user has stopped. The CSV files are
    rewritten only once a second while locust runs, so they can miss the last second.
    """
    try:
        entries = json.loads(json_report.read_text())
    except (OSError, ValueError) as error:
        raise LoadError(f"cannot read locust's report {json_report}: {error}") from None
    delivered = failed = refused = 0
    for entry in entries:
        if entry["method"] != "SMTP":
            continue
        successes = entry["num_requests"] - entry["num_failures"]
        failed += entry["num_failures"]
        if entry["name"] == "refused":
            refused += successes
        else:
            delivered += successes
    return LocustCounts(delivered, failed, refused)


def run(args: argparse.Namespace, extra: list[str]) -> int:
    if not is_loopback(args.host):
        raise LoadError(
            f"--host {args.host} is not a loopback address: the summary reads the metrics of "
            "a sink on this machine, so use 127.0.0.1 or ::1"
        )
    sink = None if is_listening(args.host, args.port) else StartedSink(args)
    try:
        if sink is None:
            print(f"using the sink already listening at {listen_address(args.host, args.port)}")
        before = scrape_accepted(args.metrics_port)
        args.reports.mkdir(parents=True, exist_ok=True)
        command = locust_command(args, extra)
        print(f"running: {' '.join(command)}", flush=True)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")])
        )
        locust = subprocess.run(command, cwd=PROJECT_ROOT, env=environment, check=False)
        if locust.returncode not in (0, 1):
            raise LoadError(f"locust failed with exit status {locust.returncode}")
        after = scrape_accepted(args.metrics_port)
        counts = read_locust_counts(args.reports / "locust.json")
    finally:
        if sink is not None:
            sink.stop()
    return print_summary(counts, before, after)


def print_summary(counts: LocustCounts, before: float, after: float) -> int:
    accepted = int(after - before)
    print()
    print("SMTP load summary")
    print(f"  locust delivered:           {counts.delivered}")
    print(f"  locust refused as expected: {counts.refused_as_expected}")
    print(f"  locust failed:              {counts.failed}")
    print(
        f"  sink accepted:              {accepted} "
        f'(smtp_sink_messages_total{{outcome="accepted"}} {before:g} -> {after:g})'
    )
    status = 0
    if counts.delivered == accepted:
        print("  the counts agree")
    else:
        print(f"  MISMATCH: locust delivered {counts.delivered}, the sink accepted {accepted}")
        status = 1
    if counts.failed:
        print(f"  FAILED: locust counted {counts.failed} failed transactions; see reports")
        status = 1
    return status


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_arguments(argv)
    try:
        return run(args, extra)
    except LoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
