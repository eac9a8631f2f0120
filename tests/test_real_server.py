"""Server features against a real `sink serve`: fsync policies, reload, limits, logs, options."""

from __future__ import annotations

import json
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_real_clients import queue_id, stop_and_read

pytestmark = pytest.mark.real


def send(host: str, port: int, content: bytes, recipient: str = "rcpt@example.net") -> str:
    with smtplib.SMTP(host, port, timeout=10) as client:
        client.ehlo("client.example")
        client.mail("sender@example.com")
        client.rcpt(recipient)
        code, reply = client.data(content)
        assert code == 250, reply
    return queue_id(reply)


def sink_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "sink", "serve", "--listen", "127.0.0.1:0", *options]


def test_fsync_always_acknowledges_all(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--fsync", "always")
    acknowledged: dict[str, bytes] = {}
    lock = threading.Lock()

    def client(number: int) -> None:
        with smtplib.SMTP(server.host, server.port, timeout=10) as connection:
            for sequence in range(40):
                content = b"Subject: %d.%d\r\n\r\nbody\r\n" % (number, sequence)
                connection.mail("a@example.com")
                connection.rcpt("b@example.com")
                code, reply = connection.data(content)
                assert code == 250, reply
                with lock:
                    acknowledged[queue_id(reply)] = content

    threads = [threading.Thread(target=client, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert len(acknowledged) == 320
    records = {record.id: record.message() for record in stop_and_read(server)}
    assert records == acknowledged


@pytest.mark.parametrize("policy", ["never", "interval"])
def test_fsync_policies_store_messages(start_sink, policy: str) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--fsync", policy, "--fsync-interval", "200ms")
    message_id = send(server.host, server.port, b"Subject: x\r\n\r\ny\r\n")
    [record] = stop_and_read(server)
    assert record.id == message_id


def test_sighup_reloads_config(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "sink.toml"
    config.write_text('reject-rcpt = ["old@*"]\nmax-recipients = 5\n')
    server = start_sink("--config", str(config))
    before = set(server.worker_pids())

    def rcpt_code(recipient: str) -> int:
        with smtplib.SMTP(server.host, server.port, timeout=10) as client:
            client.ehlo("c")
            client.mail("a@example.com")
            return client.rcpt(recipient)[0]

    assert rcpt_code("old@example.com") == 550
    assert rcpt_code("new@example.com") == 250

    config.write_text('reject-rcpt = ["new@*"]\n')
    server.process.send_signal(signal.SIGHUP)
    server.wait_for_workers(2, exclude=before)

    assert rcpt_code("old@example.com") == 250
    assert rcpt_code("new@example.com") == 550
    assert "reloaded" in server.log
    stop_and_read(server)


def test_progress_line_on_stdout(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    output = tmp_path / "stdout"
    server = start_sink("--progress", stdout=output)
    send(server.host, server.port, b"Subject: x\r\n\r\n" + b"z" * 1000 + b"\r\n")
    deadline = time.monotonic() + 10
    while b"messages 1 " not in output.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.1)
    stop_and_read(server)
    text = output.read_text()
    assert "messages 1 " in text
    assert "msg/s" in text
    assert "MB/s" in text
    assert "sessions 1 " in text


def test_ipv6_loopback(start_sink) -> None:  # type: ignore[no-untyped-def]
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("IPv6 loopback is not available on this machine")
    server = start_sink(listen="[::1]:0")
    message_id = send("::1", server.port, b"Subject: v6\r\n\r\nhello\r\n")
    [record] = stop_and_read(server)
    assert record.id == message_id
    assert record.envelope["client"]["address"] == "::1"


def test_json_log_lines(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--log-format", "json")
    stop_and_read(server)
    entries = [json.loads(line) for line in server.lines]
    assert entries
    assert {"time", "level", "logger", "pid", "message"} <= set(entries[0])
    assert any(entry["message"].startswith("sink listening on") for entry in entries)


def test_max_sessions_refused_with_421(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--max-sessions", "2", workers=1)
    held = [socket.create_connection((server.host, server.port), timeout=10) for _ in range(2)]
    for connection in held:
        assert connection.recv(1024).startswith(b"220 ")
    with socket.create_connection((server.host, server.port), timeout=10) as extra:
        assert extra.recv(1024).startswith(b"421 4.3.2")
    for connection in held:
        connection.close()
    stop_and_read(server)


def test_idle_timeout_closes_with_421(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--idle-timeout", "1s", workers=1)
    with socket.create_connection((server.host, server.port), timeout=10) as connection:
        assert connection.recv(1024).startswith(b"220 ")
        reply = connection.recv(1024)
        assert reply.startswith(b"421 4.4.2")
        assert connection.recv(1024) == b""
    stop_and_read(server)


def test_large_message_memory_stays_flat(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--max-message-size", "200MiB", workers=1)
    [worker] = server.worker_pids()
    line = b"abcdefghij" * 9 + b"\r\n"
    content = line * (120 * 1024 * 1024 // len(line))
    send(server.host, server.port, content)

    status = Path(f"/proc/{worker}/status").read_text()
    peak_kib = int(next(row for row in status.splitlines() if row.startswith("VmHWM:")).split()[1])
    [record] = stop_and_read(server)
    assert record.size == len(content)
    # A 120 MB message must not be held in memory: the worker peaks far below its size.
    assert peak_kib < 80 * 1024, f"worker peak resident memory {peak_kib} KiB"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--max-message-size", "lots"], "invalid size 'lots'"),
        (["--fsync-interval", "soon"], "invalid duration 'soon'"),
        (["--workers", "0"], "--workers must be at least 1"),
        (["--heartbeat-timeout", "1ms"], "--heartbeat-timeout must be at least 3s"),
        (["--idle-timeout", "forever"], "--idle-timeout: invalid duration 'forever'"),
        (["--config", "/nonexistent/sink.toml"], "configuration file not found"),
        (["--listen", "127.0.0.1:99999"], "invalid port"),
        (["--listen", "nonsense"], "invalid listen address"),
    ],
)
def test_bad_options_exit_2(options: list[str], expected: str) -> None:
    result = subprocess.run(sink_command(*options), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "sink.toml"
    config.write_text("max-mesage-size = 10\n")
    result = subprocess.run(
        sink_command("--config", str(config)), capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "unknown option 'max-mesage-size'" in result.stderr


def test_port_in_use_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "sink", "serve", "--listen", f"127.0.0.1:{port}"]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_spool_verify_command(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    send(server.host, server.port, b"Subject: a\r\n\r\nfirst\r\n")
    stop_and_read(server)
    verify = [sys.executable, "-m", "sink", "spool", "verify", str(server.spool)]

    clean = subprocess.run(verify, capture_output=True, text=True, timeout=30)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    [segment] = Path(server.spool).glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    broken = subprocess.run(verify, capture_output=True, text=True, timeout=30)
    assert broken.returncode == 1
    assert segment.name in broken.stdout

    missing = subprocess.run(
        [sys.executable, "-m", "sink", "spool", "verify", "/nonexistent/spool"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2
    assert "not found" in missing.stderr
