"""Start and stop the servers under test and run the smtp-source load against them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from loadtest import bench_proc

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Same listen backlog as `sink serve` and loadtest/aiosmtpd_server.py.
BACKLOG = 4096

# Name used in the HELO command and in smtp-source's sender and recipient addresses. Without
# -M, smtp-source uses the machine's host name, which may need a DNS lookup.
CLIENT_HOSTNAME = "bench.invalid"
# Seconds to wait after a load before reading a server's CPU time, so that the work it does
# right after the last reply (closing sessions, flushing the spool) is counted.
SETTLE_SECONDS = 0.2

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

# Lines of a failed server's stderr shown in the error message.
STDERR_LINES = 40

SERVER_NAMES = ("sink", "smtp-sink", "aiosmtpd")

# The sink's counter of accepted messages, as docs/metrics.md names it.
ACCEPTED_MESSAGES_SAMPLE = 'smtp_sink_messages_total{outcome="accepted"}'


class BenchError(RuntimeError):
    """A tool is missing, a server failed, or a load run did not deliver every message."""


def find_postfix_tool(name: str) -> str:
    """Return the path of smtp-source or smtp-sink, which Postfix installs in /usr/sbin."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise BenchError(
            f"{name} not found in PATH or /usr/sbin: install the Debian package postfix "
            f"(apt-get install postfix), which provides smtp-source and smtp-sink"
        )
    return path


def find_sink() -> str:
    """Return the `sink` script next to the running Python, or the one in PATH."""
    beside = Path(sys.executable).with_name("sink")
    path = str(beside) if beside.exists() else shutil.which("sink")
    if path is None:
        raise BenchError(
            "the sink command was not found next to the running Python or in PATH: "
            "run `make bench`, or install the project with pip install -e ."
        )
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Every run gets a new port, so the connections of a run rarely meet the same address and
    port pair as connections of an earlier run still in TIME_WAIT.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_except(taken: int) -> int:
    """Return a free TCP port on 127.0.0.1 other than `taken`."""
    while True:
        port = free_port()
        if port != taken:
            return port


@dataclass(frozen=True)
class SinkSource:
    """A source tree whose `sink` package runs with `python -m sink`, in place of the installed
    `sink` command.

    The process starts in `root` with PYTHONPATH set to `root`, so `import sink` finds the tree's
    package before the editable install of the checkout. `metrics` is True when that code has
    the `--metrics-listen` option.
    """

    name: str
    root: Path
    metrics: bool


@dataclass(frozen=True)
class Variant:
    """One server configuration under test.

    `source` is None for the installed `sink` command, which exports metrics.
    """

    server: str
    spool: bool = False
    workers: int | None = None
    source: SinkSource | None = None

    @property
    def label(self) -> str:
        if self.server != "sink":
            return self.server
        parts = ["spool on" if self.spool else "spool off"]
        if self.workers is not None:
            parts.append(f"{self.workers} worker" + ("" if self.workers == 1 else "s"))
        name = "sink" if self.source is None else f"sink {self.source.name}"
        return f"{name}, " + ", ".join(parts)

    @property
    def exports_metrics(self) -> bool:
        """Whether the server takes --metrics-listen and serves /metrics."""
        return self.server == "sink" and (self.source is None or self.source.metrics)


def source_environment(source: SinkSource) -> dict[str, str]:
    """Return the environment that makes `python -m sink` import the package of `source`."""
    return {**os.environ, "PYTHONPATH": str(source.root)}


def server_command(
    variant: Variant,
    port: int,
    spool_dir: str | None,
    max_connections: int,
    metrics_port: int | None = None,
) -> list[str]:
    """Build the command line that starts `variant` on 127.0.0.1:`port`.

    `max_connections` sets smtp-sink's -m limit on simultaneous connections (default 256);
    connections beyond it wait in the listen queue without a greeting. `metrics_port` is the
    sink's /metrics port on 127.0.0.1, passed explicitly because the default port 9325 may be
    taken by another sink on the machine.
    """
    listen = f"127.0.0.1:{port}"
    if variant.server == "sink":
        program = [find_sink()] if variant.source is None else [sys.executable, "-m", "sink"]
        command = [
            *program,
            "serve",
            "--listen",
            listen,
            "--no-progress",
            "--log-level",
            "warning",
        ]
        if variant.workers is not None:
            command += ["--workers", str(variant.workers)]
        if variant.spool:
            command += ["--spool", str(spool_dir), "--fsync", "interval"]
        else:
            command.append("--no-spool")
        if metrics_port is not None:
            command += ["--metrics-listen", f"127.0.0.1:{metrics_port}"]
        return command
    if variant.server == "smtp-sink":
        command = [find_postfix_tool("smtp-sink"), "-m", str(max_connections)]
        if os.geteuid() == 0:
            # smtp-sink(1) requires -u, the user to switch to after binding, when run as root.
            command += ["-u", "nobody"]
        return command + [listen, str(BACKLOG)]
    if variant.server == "aiosmtpd":
        return [sys.executable, "-m", "loadtest.aiosmtpd_server", "--listen", listen]
    raise ValueError(f"unknown server {variant.server!r}: expected one of {SERVER_NAMES}")


def read_greeting(port: int, timeout: float) -> bytes:
    """Connect to 127.0.0.1:`port`, read the first reply line, send QUIT and return the line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        data = b""
        while b"\n" not in data:
            chunk = connection.recv(4096)
            if not chunk:
                break
            data += chunk
        try:
            connection.sendall(b"QUIT\r\n")
        except OSError:
            pass
        return data.split(b"\n", 1)[0]


def metric_sample(text: str, sample: str) -> float | None:
    """Return the value of `sample` (name and labels, as written) in a Prometheus text
    exposition, or None when no line has it. A timestamp after the value is ignored."""
    prefix = sample + " "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :].split()[0])
    return None


def describe_status(status: int) -> str:
    """Describe a Popen return code: "status 1", or "signal SIGTERM" for a negative code."""
    if status < 0:
        try:
            return f"signal {signal.Signals(-status).name}"
        except ValueError:
            return f"signal {-status}"
    return f"status {status}"


class RunningServer:
    """A server process started for one run, with its stderr kept in a temporary file."""

    def __init__(
        self, variant: Variant, max_connections: int = 256, spool_parent: str | None = None
    ) -> None:
        self.variant = variant
        self.port = free_port()
        self.metrics_port = free_port_except(self.port) if variant.exports_metrics else None
        self.spool_dir = (
            tempfile.mkdtemp(prefix="sink-bench-spool-", dir=spool_parent)
            if variant.spool
            else None
        )
        self.stderr = tempfile.TemporaryFile()
        command = server_command(
            variant, self.port, self.spool_dir, max_connections, self.metrics_port
        )
        source = variant.source
        self.process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT if source is None else source.root,
            env=None if source is None else source_environment(source),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        self.exit_status: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace").strip()

    def stderr_tail(self, max_lines: int = STDERR_LINES) -> str:
        """Return the last `max_lines` lines of the server's stderr, saying how many were cut."""
        lines = self.stderr_text().splitlines()
        if not lines:
            return "(nothing)"
        if len(lines) <= max_lines:
            return "\n".join(lines)
        return "\n".join(
            [f"({len(lines) - max_lines} earlier lines not shown)", *lines[-max_lines:]]
        )

    def exit_note(self) -> str:
        """Return " (SERVER had exited with ...)" when the server process has ended, else ""."""
        status = self.process.poll()
        if status is None:
            return ""
        return f" ({self.variant.label} had exited with {describe_status(status)})"

    def _failure(self, reason: str) -> BenchError:
        output = self.stderr_tail()
        return BenchError(f"{self.variant.label} failed to start: {reason}. Its stderr:\n{output}")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until the server sends a 220 greeting to a new connection.

        Raises BenchError with the server's stderr when the process exits or the greeting
        does not arrive in time.
        """
        deadline = time.monotonic() + timeout
        last_error = "no connection attempt made"
        while time.monotonic() < deadline:
            status = self.process.poll()
            if status is not None:
                self.exit_status = status
                raise self._failure(
                    f"exited with {describe_status(status)} before accepting connections"
                )
            try:
                greeting = read_greeting(self.port, timeout=2.0)
            except OSError as error:
                last_error = str(error)
                time.sleep(0.05)
                continue
            if greeting.startswith(b"220"):
                return
            last_error = f"greeting {greeting!r} is not a 220 reply"
            time.sleep(0.05)
        self.stop()
        raise self._failure(
            f"no 220 greeting on 127.0.0.1:{self.port} within {timeout:.0f} s ({last_error})"
        )

    def stop(self) -> int:
        """Send SIGTERM, wait for the exit and return the exit status.

        A server still running after STOP_TIMEOUT seconds is killed with SIGKILL, together with
        the children it left in the tree.
        """
        if self.exit_status is None:
            children = [times.pid for times in bench_proc.process_tree(self.pid)[1:]]
            self.process.send_signal(signal.SIGTERM)
            try:
                self.exit_status = self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                for pid in children:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.process.kill()
                self.exit_status = self.process.wait()
                print(
                    f"warning: {self.variant.label} ignored SIGTERM for {STOP_TIMEOUT:.0f} s "
                    "and was killed",
                    file=sys.stderr,
                )
        return self.exit_status

    def cleanup(self) -> None:
        """Remove the spool directory and the stderr file; call after stop()."""
        if self.spool_dir is not None:
            shutil.rmtree(self.spool_dir, ignore_errors=True)
            self.spool_dir = None
        self.stderr.close()

    def accepted_messages_metric(self) -> float | None:
        """Scrape /metrics and return smtp_sink_messages_total{outcome="accepted"}.

        Returns None for a server without metrics. Raises BenchError when the scrape fails or
        the sample is missing.
        """
        if self.metrics_port is None:
            return None
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
        except OSError as error:
            raise BenchError(f"scraping {url} of {self.variant.label} failed: {error}") from None
        value = metric_sample(text, ACCEPTED_MESSAGES_SAMPLE)
        if value is None:
            raise BenchError(
                f"{url} of {self.variant.label} has no sample {ACCEPTED_MESSAGES_SAMPLE}"
            )
        return value

    def count_spool_records(self) -> int | None:
        """Return the committed records in the spool, or None without a spool.

        Call after stop(), when the sink has sealed its segments. Raises BenchError when the
        reader reports a corrupt segment.
        """
        if self.spool_dir is None:
            return None
        import sink.spool

        problems: list[str] = []
        count = sum(
            1
            for _ in sink.spool.records(
                self.spool_dir, on_error=lambda problem: problems.append(str(problem))
            )
        )
        if problems:
            raise BenchError(
                f"the spool of {self.variant.label} has {len(problems)} problems, "
                f"the first: {problems[0]}"
            )
        return count


@dataclass(frozen=True)
class LoadResult:
    """Measurements of one smtp-source run against one server."""

    messages: int
    payload_bytes: int
    wall_seconds: float
    server_cpu_seconds: float

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.wall_seconds

    @property
    def megabytes_per_second(self) -> float:
        """Payload throughput in MB/s (10**6 bytes), message headers not counted."""
        return self.messages * self.payload_bytes / self.wall_seconds / 1e6

    @property
    def cpu_microseconds_per_message(self) -> float:
        return self.server_cpu_seconds * 1e6 / self.messages


def smtp_source_command(flags: list[str], messages: int, port: int) -> list[str]:
    """Return the smtp-source command that sends `messages` to 127.0.0.1:`port`."""
    return [
        find_postfix_tool("smtp-source"),
        *flags,
        "-m",
        str(messages),
        "-M",
        CLIENT_HOSTNAME,
        f"127.0.0.1:{port}",
    ]


def check_smtp_source(command: list[str], status: int, output: bytes) -> None:
    """Raise BenchError unless smtp-source exited with status 0.

    smtp-source stops with a non-zero status at the first reply that is not the expected
    positive code, so status 0 means the server accepted every message.
    """
    if status != 0:
        raise BenchError(
            f"smtp-source exited with status {status}, so not every message was accepted: "
            f"{' '.join(command)}\n{output.decode(errors='replace').strip()}"
        )


def run_smtp_source(flags: list[str], messages: int, port: int, timeout: float) -> float:
    """Run smtp-source against 127.0.0.1:`port` and return its wall time in seconds.

    Raises BenchError unless every message was accepted (see check_smtp_source).
    """
    command = smtp_source_command(flags, messages, port)
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"smtp-source timed out after {timeout:.0f} s: {' '.join(command)}"
        ) from None
    wall = time.perf_counter() - started
    check_smtp_source(command, completed.returncode, completed.stderr + completed.stdout)
    return wall


def payload_length(flags: list[str]) -> int:
    """Return the -l value of smtp-source flags, the payload bytes per message."""
    return int(flags[flags.index("-l") + 1])


def measure_load(
    server: RunningServer,
    flags: list[str],
    messages: int,
    timeout: float,
    settle: float = SETTLE_SECONDS,
) -> LoadResult:
    """Run one smtp-source load against a ready server and measure the server's CPU time.

    The CPU reading after the run waits `settle` seconds (see SETTLE_SECONDS).
    """
    before = bench_proc.tree_cpu_ticks(server.pid)
    try:
        wall = run_smtp_source(flags, messages, server.port, timeout)
    except BenchError as error:
        raise BenchError(f"{error}{server.exit_note()}") from None
    time.sleep(settle)
    after = bench_proc.tree_cpu_ticks(server.pid)
    if server.process.poll() is not None:
        raise BenchError(
            f"{server.variant.label} exited during the run. Its stderr:\n{server.stderr_tail()}"
        )
    return LoadResult(
        messages=messages,
        payload_bytes=payload_length(flags),
        wall_seconds=wall,
        server_cpu_seconds=bench_proc.ticks_to_seconds(after - before),
    )
