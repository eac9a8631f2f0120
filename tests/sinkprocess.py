"""Start a real `sink serve` process on a loopback port for tests, and stop it again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

_LISTENING = re.compile(r"sink listening on (\S+?):(\d+)[ ,]")
_METRICS = re.compile(r"metrics on http://(\S+?):(\d+)/metrics")


class SinkProcess:
    """A `sink serve` child process whose standard error is collected line by line."""

    def __init__(
        self,
        *options: str,
        spool: Path | None,
        workers: int = 2,
        preexec_fn: Callable[[], None] | None = None,
        stdout: Path | None = None,
        listen: str = "127.0.0.1:0",
    ) -> None:
        command = [sys.executable, "-m", "sink", "serve", "--listen", listen]
        command += ["--workers", str(workers), "--log-level", "debug"]
        command += ["--metrics-listen", "127.0.0.1:0"]
        if stdout is None:
            command.append("--no-progress")
        command += ["--spool", str(spool)] if spool is not None else ["--no-spool"]
        command += list(options)
        self.spool = spool
        self.lines: list[str] = []
        self._stdout = stdout.open("wb") if stdout is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec_fn,
        )
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()
        self.host = listen.rpartition(":")[0].strip("[]")
        self.port = self._wait_for_port()
        self.wait_for_workers(workers)
        found = _METRICS.search(self.log)
        self.metrics_port = int(found.group(2)) if found else None

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = _LISTENING.search(line)
                if match:
                    return int(match.group(2))
            if self.process.poll() is not None:
                self._reader.join(2)
                pytest.fail(f"sink exited with {self.process.returncode}:\n{self.log}")
            time.sleep(0.02)
        self.kill()
        pytest.fail(f"sink did not report its port within {timeout} s:\n{self.log}")

    def scrape(self, path: str = "/metrics") -> tuple[int, str]:
        """GET a path from the metrics endpoint; return the status and the body."""
        assert self.metrics_port is not None, "this sink runs without a metrics endpoint"
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def worker_pids(self) -> list[int]:
        """Return the PIDs of the master's live child processes."""
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def wait_for_workers(
        self, count: int, exclude: frozenset[int] | set[int] = frozenset(), timeout: float = 20.0
    ) -> list[int]:
        """Wait until `count` workers that are not in `exclude` serve; return their PIDs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = [pid for pid in self.worker_pids() if pid not in exclude]
            serving = sum(f"(pid {pid}) is serving" in self.log for pid in pids)
            if len(pids) == count and serving == count:
                return pids
            time.sleep(0.02)
        pytest.fail(f"{count} workers did not start within {timeout} s:\n{self.log}")

    def stop(self, timeout: float = 30.0) -> int:
        """Send SIGTERM and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"sink did not stop within {timeout} s after SIGTERM:\n{self.log}")
        self._reader.join(5)
        return status

    def kill(self) -> None:
        for pid in self.worker_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
