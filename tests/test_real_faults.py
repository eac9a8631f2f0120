"""Faults against a real `sink serve`: killed and stuck workers, SIGTERM under load, a full disk.

The property checked throughout: every message that got `250 ... queued as ID` is in the spool
under that ID, and `sink spool verify` passes afterwards.
"""

from __future__ import annotations

import os
import resource
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_real_clients import queue_id, stop_and_read

import sink.spool

pytestmark = pytest.mark.real


class LoadClients:
    """Threads that send messages until stopped, reconnecting after errors, and keep the IDs."""

    def __init__(self, host: str, port: int, threads: int = 4, size: int = 4000) -> None:
        self.host = host
        self.port = port
        self.size = size
        self.acknowledged: dict[str, bytes] = {}
        self.failures = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, number: int) -> None:
        sequence = 0
        deadline = time.monotonic() + 60  # a hard bound, whatever the test does
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                with smtplib.SMTP(self.host, self.port, timeout=10) as client:
                    client.ehlo("load.example")
                    while not self.stop.is_set() and time.monotonic() < deadline:
                        sequence += 1
                        content = b"Subject: %d-%d\r\n\r\n" % (number, sequence)
                        content += b"x" * self.size + b"\r\n"
                        client.mail("load@example.com")
                        client.rcpt("sink@example.net")
                        code, reply = client.data(content)
                        if code == 250:
                            with self.lock:
                                self.acknowledged[queue_id(reply)] = content
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.failures += 1
                time.sleep(0.05)

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acknowledged) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.acknowledged) >= count, (
            f"only {len(self.acknowledged)} messages acknowledged"
        )

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


def assert_all_stored(records: list, acknowledged: dict[str, bytes]) -> None:  # type: ignore[type-arg]
    stored = {record.id: record for record in records}
    missing = set(acknowledged) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages are not in the spool"
    for message_id, content in acknowledged.items():
        assert stored[message_id].message() == content


def test_kill_worker_under_load(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    before = server.worker_pids()
    load = LoadClients(server.host, server.port)
    try:
        load.wait_for(200)
        os.kill(before[0], signal.SIGKILL)
        server.wait_for_workers(1, exclude=set(before))
        replacement_seen = len(load.acknowledged)
        load.wait_for(replacement_seen + 200)
    finally:
        load.finish()

    assert "was killed by SIGKILL; replacing it" in server.log
    records = stop_and_read(server)
    assert_all_stored(records, load.acknowledged)


def test_sigterm_under_load_drains(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--shutdown-grace", "5s")
    load = LoadClients(server.host, server.port, threads=6, size=50_000)
    try:
        load.wait_for(100)
        status = server.stop()
    finally:
        load.finish()

    assert status == 0, server.log
    report = sink.spool.verify_spool(server.spool)
    assert report.ok, "\n".join(report.lines())
    assert_all_stored(list(sink.spool.records(server.spool)), load.acknowledged)
    assert not list(Path(server.spool).glob("*.open")), "a segment was left unsealed"


def test_stuck_worker_replaced(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--heartbeat-timeout", "3s", workers=1)
    [stuck] = server.worker_pids()
    os.kill(stuck, signal.SIGSTOP)
    try:
        [replacement] = server.wait_for_workers(1, exclude={stuck}, timeout=15)
    finally:
        try:
            os.kill(stuck, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert replacement != stuck
    assert "missed its heartbeat" in server.log
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        assert client.noop()[0] == 250
    stop_and_read(server)


def _limit_file_size() -> None:
    # Writes past 256 KiB fail with EFBIG instead of killing the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_write_error_gives_451(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--segment-size", "1MiB", workers=1, preexec_fn=_limit_file_size)
    acknowledged: dict[str, bytes] = {}
    refused = 0
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        for number in range(40):
            content = b"Subject: %d\r\n\r\n" % number + b"y" * 20_000 + b"\r\n"
            client.mail("a@example.com")
            client.rcpt("b@example.com")
            code, reply = client.data(content)
            if code == 250:
                acknowledged[queue_id(reply)] = content
            else:
                assert code == 451, reply
                refused += 1
        assert client.noop()[0] == 250

    assert acknowledged, "no message was stored before the limit"
    assert refused, "the file size limit never caused a write error"
    assert "451" not in server.log or "write" in server.log
    records = stop_and_read(server)
    assert_all_stored(records, acknowledged)
    assert len(records) == len(acknowledged)


def test_bad_spool_directory_fails_fast(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("x")
    command = [sys.executable, "-m", "sink", "serve", "--listen", "127.0.0.1:0",
               "--spool", str(not_a_directory / "spool"), "--workers", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "spool" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_stop_signal_kills_workers(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spool = tmp_path / "spool"
    server = start_sink("--shutdown-grace", "60s", spool=spool)
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("a@example.com")
        client.rcpt("b@example.com")
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(b"a message that never ends\r\n")

        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None, "the first SIGTERM must wait for the transaction"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
    assert "second stop signal" in server.log

    # The killed workers left their segments open; the next start seals them.
    again = start_sink(spool=spool)
    assert again.stop() == 0
    report = sink.spool.verify_spool(spool)
    assert report.ok, "\n".join(report.lines())
    assert not list(spool.glob("*.open"))
