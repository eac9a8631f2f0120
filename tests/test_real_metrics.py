"""Metrics against a real sink: counters agree with what real clients did and saw."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import require_tool
from prometheus_client.parser import text_string_to_metric_families
from test_real_clients import stop_and_read

pytestmark = pytest.mark.real

DOCS = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Map (sample name, sorted labels) to value for a whole exposition."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


class RawClient:
    """An SMTP client that reads every reply and tallies the codes it saw."""

    def __init__(self, host: str, port: int, seen: Counter[int]) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.seen = seen
        self.read_reply()

    def read_reply(self) -> bytes:
        while True:
            line = self.file.readline()
            assert line, "the sink closed the connection"
            if line[3:4] != b"-":
                self.seen[int(line[:3])] += 1
                return line

    def send(self, data: bytes, replies: int = 1) -> list[bytes]:
        self.sock.sendall(data)
        return [self.read_reply() for _ in range(replies)]

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def wait_idle(server) -> str:  # type: ignore[no-untyped-def]
    """Scrape until no session is open, so the session counters are final."""
    deadline = time.monotonic() + 10
    while True:
        status, text = server.scrape()
        assert status == 200
        if value(text, "smtp_sink_connections_active") == 0 or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def run_traffic(host: str, port: int, seen: Counter[int], pipelined: bool) -> int:
    """Send a mix of accepted, refused and aborted transactions; return the accepted count."""
    accepted = 0
    for number in range(12):
        client = RawClient(host, port, seen)
        content = b"Subject: %d\r\n\r\n..dotted line\r\nbody\r\n.\r\n" % number
        if pipelined:
            replies = client.send(
                b"EHLO pipelined.example\r\nMAIL FROM:<a@example.com>\r\n"
                b"RCPT TO:<ok@example.net>\r\nRCPT TO:<nobody@example.net>\r\nDATA\r\n",
                replies=5,
            )
            replies += client.send(content + b"QUIT\r\n", replies=2)
        else:
            client.send(b"HELO plain.example\r\n")
            client.send(b"MAIL FROM:<a@example.com>\r\n")
            client.send(b"RCPT TO:<ok@example.net>\r\n")
            client.send(b"RCPT TO:<nobody@example.net>\r\n")
            client.send(b"DATA\r\n")
            replies = client.send(content)
            client.send(b"FROB\r\n")
            client.send(b"QUIT\r\n")
        accepted += sum(b"queued as" in reply for reply in replies)
        client.close()

    # A refused message (too large) and an aborted one (the client disconnects mid-DATA).
    client = RawClient(host, port, seen)
    client.send(b"EHLO big.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.net>\r\n"
                b"DATA\r\n", replies=4)  # fmt: skip
    client.send(b"x" * 3000 + b"\r\n.\r\n")
    client.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<ok@example.net>\r\nDATA\r\n", replies=3)
    client.sock.sendall(b"cut off in the middle\r\n")
    client.close()
    return accepted


@pytest.mark.parametrize("pipelined", [False, True], ids=["lockstep", "pipelined"])
def test_counters_match_client_view(start_sink, pipelined: bool) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "nobody@*", "--max-message-size", "2000")
    seen: Counter[int] = Counter()
    accepted = run_traffic(server.host, server.port, seen, pipelined)
    text = wait_idle(server)
    records = stop_and_read(server)

    assert accepted == 12
    assert len(records) == 12
    assert value(text, "smtp_sink_messages_total", outcome="accepted") == 12
    assert value(text, "smtp_sink_messages_total", outcome="refused") == 1
    assert value(text, "smtp_sink_messages_total", outcome="aborted") == 1
    assert value(text, "smtp_sink_message_size_bytes_sum") == sum(r.size for r in records)
    assert value(text, "smtp_sink_message_size_bytes_count") == 12
    assert value(text, "smtp_sink_recipients_total", outcome="accepted") == 14
    assert value(text, "smtp_sink_recipients_total", outcome="refused") == 12
    assert value(text, "smtp_sink_connections_accepted_total") == 13
    assert value(text, "smtp_sink_sessions_ended_total", how="quit") == 12
    assert value(text, "smtp_sink_sessions_ended_total", how="client_close") == 1
    assert value(text, "smtp_sink_session_duration_seconds_count") == 13
    assert value(text, "smtp_sink_data_duration_seconds_count") == 13
    for code, count in seen.items():
        assert value(text, "smtp_sink_replies_total", code=str(code)) == count, code
    total_replies = sum(
        sample_value
        for (name, _), sample_value in samples(text).items()
        if name == "smtp_sink_replies_total"
    )
    assert total_replies == sum(seen.values())
    if pipelined:
        assert value(text, "smtp_sink_client_quirks_total", quirk="pipelining_after_data") == 0
        assert value(text, "smtp_sink_commands_total", verb="EHLO") == 13
    else:
        assert value(text, "smtp_sink_client_quirks_total", quirk="unknown_command") == 12
        assert value(text, "smtp_sink_commands_total", verb="unknown") == 12
        assert value(text, "smtp_sink_commands_total", verb="HELO") == 12


def test_counters_survive_worker_restart(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "nobody@*", "--max-message-size", "2000")
    seen: Counter[int] = Counter()
    first = run_traffic(server.host, server.port, seen, pipelined=True)
    before = wait_idle(server)
    pids = server.worker_pids()
    os.kill(pids[0], signal.SIGKILL)
    server.wait_for_workers(1, exclude=set(pids))
    second = run_traffic(server.host, server.port, seen, pipelined=False)
    after = wait_idle(server)
    records = stop_and_read(server)

    assert value(after, "smtp_sink_worker_restarts_total", reason="killed") == 1
    assert value(after, "smtp_sink_workers_alive") == 2
    assert value(after, "smtp_sink_messages_total", outcome="accepted") == first + second
    assert len(records) == first + second
    for (name, labels), earlier in samples(before).items():
        if name.endswith(("_total", "_count", "_sum", "_bucket")):
            assert samples(after).get((name, labels), 0.0) >= earlier, (name, labels)
    for code, count in seen.items():
        assert value(after, "smtp_sink_replies_total", code=str(code)) == count, code


def cpu_seconds(pids: list[int]) -> float:
    """Sum the user and system time of processes, read from /proc by the test itself."""
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_worker_metrics_by_index(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    run_traffic(server.host, server.port, Counter(), pipelined=True)
    pids = server.worker_pids()
    text = wait_idle(server)
    # The spool counters reach the slot once a second.
    deadline = time.monotonic() + 5
    while value(text, "smtp_sink_spool_records_total") < 13 and time.monotonic() < deadline:
        time.sleep(0.2)
        text = server.scrape()[1]
    cpu_before = cpu_seconds(pids)
    text = server.scrape()[1]
    cpu_after = cpu_seconds(pids)
    records = stop_and_read(server)

    assert value(text, "smtp_sink_spool_records_total") == len(records) == 13
    assert value(text, "smtp_sink_spool_written_bytes_total") > sum(r.size for r in records)

    per_worker = [value(text, "smtp_sink_worker_messages_total", worker=str(i)) for i in (0, 1)]
    assert sum(per_worker) == value(text, "smtp_sink_messages_total", outcome="accepted")
    cpu = 0.0
    for index in ("0", "1"):
        assert value(text, "smtp_sink_worker_resident_memory_bytes", worker=index) > 1_000_000
        for mode in ("user", "system"):
            cpu += value(text, "smtp_sink_worker_cpu_seconds_total", worker=index, mode=mode)
    assert cpu_before <= cpu + 1e-9
    assert cpu <= cpu_after + 1e-9
    assert value(text, "smtp_sink_build_info", version="0.1.0") == 1
    assert value(text, "smtp_sink_spool_segments_open") >= 1
    assert value(text, "smtp_sink_spool_disk_bytes") > 0


def test_healthz_reports_stuck_worker(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--heartbeat-timeout", "60s")
    assert server.scrape("/healthz") == (200, "ok\n")
    stuck = server.worker_pids()[0]
    os.kill(stuck, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 15
        status, body = server.scrape("/healthz")
        while status == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            status, body = server.scrape("/healthz")
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert status == 503
    assert "missed its heartbeat" in body

    deadline = time.monotonic() + 15
    while server.scrape("/healthz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.scrape("/healthz") == (200, "ok\n")
    assert server.scrape("/nowhere")[0] == 404
    stop_and_read(server)


def test_metrics_can_be_turned_off(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--metrics-listen", "")
    assert server.metrics_port is None
    assert "metrics on" not in server.log
    stop_and_read(server)


def documented_metrics() -> set[str]:
    return set(re.findall(r"^\| `(smtp_sink_[a-z_]+)` \|", DOCS.read_text(), re.MULTILINE))


def test_docs_list_exposed_metrics(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    status, text = server.scrape()
    stop_and_read(server)
    assert status == 200

    exposed = set()
    for family in text_string_to_metric_families(text):
        suffix = "_total" if family.type == "counter" else ""
        exposed.add(family.name + suffix)
    assert documented_metrics() == exposed


def test_promtool_accepts_exposition(start_sink) -> None:  # type: ignore[no-untyped-def]
    promtool = require_tool("promtool", "prometheus")
    server = start_sink()
    RawClient(server.host, server.port, Counter()).close()
    status, text = server.scrape()
    stop_and_read(server)
    assert status == 200
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
