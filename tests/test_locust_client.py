"""The load generator's SMTP client (loadtest/smtp_client.py) against a real `sink serve`.

The client needs no locust, so these tests run without it.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_real_clients import stop_and_read

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The installed package is only `sink`; loadtest/ is imported from the checkout.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from loadtest.smtp_client import SmtpClient, SmtpReplyError, dot_stuff  # noqa: E402

pytestmark = pytest.mark.real

STUFFED_CONTENT = b"Subject: dots\r\n\r\n.starts with a dot\r\n..two dots\r\n.\r\nlast line"


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    raise AssertionError(f"{name}{labels} not found in the exposition")


def test_dot_stuff_lines() -> None:
    assert dot_stuff(b".a\r\nb\r\n.c\r\n") == b"..a\r\nb\r\n..c\r\n"
    assert dot_stuff(b"no final line end") == b"no final line end\r\n"
    assert dot_stuff(b"bare\n.lf\r\n") == b"bare\n.lf\r\n"
    assert dot_stuff(b"") == b""


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_client_several_messages_and_recipients(start_sink, pipelining: bool) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    recipients = ["a@example.net", "b@example.net", "c@example.org"]
    contents = [b"Subject: first\r\n\r\nHello.\r\n", STUFFED_CONTENT, b"Subject: third\r\n\r\n."]

    with SmtpClient(server.host, server.port, pipelining=pipelining) as client:
        greeting = client.connect()
        client.hello()
        assert greeting.code == 220
        assert client.esmtp
        assert "PIPELINING" in client.extensions
        assert client.pipelining is pipelining
        for content in contents:
            reply = client.send_message("alice@example.com", recipients, content)
            assert reply.code == 250
            assert "queued as" in reply.text
        client.quit()
        assert not client.connected

    records = stop_and_read(server)
    assert len(records) == len(contents)
    stored = sorted(record.message() for record in records)
    expected = sorted(
        content if content.endswith(b"\r\n") else content + b"\r\n" for content in contents
    )
    assert stored == expected
    for record in records:
        assert record.envelope["reverse_path"]["mailbox"] == "alice@example.com"
        assert [path["mailbox"] for path in record.envelope["forward_paths"]] == recipients
        assert record.envelope["protocol"] == "ESMTP"
        # A correct client leaves no deviation from RFC 5321 to count.
        assert record.meta["quirks"] == {}


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_client_refused_recipient_raises(start_sink, pipelining: bool) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "refused*@*")

    with SmtpClient(server.host, server.port, pipelining=pipelining) as client:
        client.connect()
        client.hello()
        with pytest.raises(SmtpReplyError) as raised:
            client.send_message(
                "alice@example.com", ["refused1@example.net"], b"Subject: x\r\n\r\n"
            )
        error = raised.value
        assert error.code == 550
        assert error.expected == 250
        assert error.command == "RCPT TO:<refused1@example.net>"
        assert str(error).startswith("RCPT: expected 250, got 550 5.1.1")

        # The transaction was reset, so the connection carries the next message.
        assert client.connected
        reply = client.send_message("alice@example.com", ["bob@example.net"], b"Subject: y\r\n\r\n")
        assert reply.code == 250
        client.quit()

    records = stop_and_read(server)
    assert [record.message() for record in records] == [b"Subject: y\r\n\r\n"]


def test_client_partial_refusal_aborts_pipelined(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "refused*@*")
    recipients = ["bob@example.net", "refused2@example.net"]

    with SmtpClient(server.host, server.port) as client:
        client.connect()
        client.hello()
        with pytest.raises(SmtpReplyError) as raised:
            client.send_message("alice@example.com", recipients, b"Subject: x\r\n\r\n")
        assert raised.value.code == 550
        # DATA got 354 already: the client closes instead of sending content it was not
        # asked to deliver.
        assert not client.connected

    assert stop_and_read(server) == []


@pytest.mark.parametrize("pipelining", [True, False], ids=["pipelining", "one-by-one"])
def test_client_expected_refusal_succeeds(start_sink, pipelining: bool) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "refused*@*")
    recipients = ["refused1@example.net", "refused2@example.net"]

    with SmtpClient(server.host, server.port, pipelining=pipelining) as client:
        client.connect()
        client.hello()
        reply = client.send_message("alice@example.com", recipients, b"", expect_rcpt=550)
        assert reply.code == 250  # the RSET that ends the refused transaction

        with pytest.raises(SmtpReplyError) as raised:
            client.send_message("alice@example.com", ["bob@example.net"], b"", expect_rcpt=550)
        assert str(raised.value).startswith("RCPT: expected 550, got 250")
        client.quit()

    assert stop_and_read(server) == []


def test_client_quit_and_abort_counted(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()

    with SmtpClient(server.host, server.port) as client:
        client.connect()
        client.hello()
        client.send_message("alice@example.com", ["bob@example.net"], b"Subject: 1\r\n\r\n")
        client.quit()
    with SmtpClient(server.host, server.port) as client:
        client.connect()
        client.hello()
        client.send_message("alice@example.com", ["bob@example.net"], b"Subject: 2\r\n\r\n")
        client.abort()

    # The worker counts a client's close when it reads the end of the stream, which can come
    # after the scrape under load, so wait for it.
    deadline = time.monotonic() + 10
    _, text = server.scrape()
    while (
        metric(text, "smtp_sink_sessions_ended_total", how="client_close") < 1
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
        _, text = server.scrape()
    assert metric(text, "smtp_sink_sessions_ended_total", how="quit") == 1
    assert metric(text, "smtp_sink_sessions_ended_total", how="client_close") == 1
    assert metric(text, "smtp_sink_messages_total", outcome="accepted") == 2
    assert len(stop_and_read(server)) == 2


def test_client_stage_hook_reports_each_stage(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    stages: list[tuple[str, int, BaseException | None]] = []

    def hook(stage: str, seconds: float, octets: int, error: BaseException | None) -> None:
        assert seconds >= 0
        stages.append((stage, octets, error))

    content = b"Subject: timed\r\n\r\nbody\r\n"
    with SmtpClient(server.host, server.port, stage_hook=hook) as client:
        client.connect()
        client.hello()
        client.send_message("alice@example.com", ["a@example.net", "b@example.net"], content)
        client.quit()

    assert [stage for stage, _, _ in stages] == [
        "connect",
        "ehlo",
        "mail",
        "rcpt",
        "data",
        "end-of-data",
    ]
    assert all(error is None for _, _, error in stages)
    assert stages[-1][1] == len(content)


@pytest.fixture
def helo_only_server() -> Iterator[tuple[str, int]]:
    """Serve one session of a server that rejects EHLO with 502, as an RFC 821 server does."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            return
        with connection, connection.makefile("rb") as lines:
            connection.sendall(b"220 old.example ready\r\n")
            for line in lines:
                verb = line[:4].upper()
                if verb == b"EHLO":
                    connection.sendall(b"502 5.5.2 Command not recognized\r\n")
                elif verb == b"HELO":
                    connection.sendall(b"250 old.example\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 Bye\r\n")
                    return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[:2]
    listener.close()
    thread.join(10)


def test_client_falls_back_to_helo(helo_only_server: tuple[str, int]) -> None:
    host, port = helo_only_server
    with SmtpClient(host, port) as client:
        client.connect()
        reply = client.hello()
        assert reply.code == 250
        assert not client.esmtp
        assert client.extensions == {}
        assert not client.pipelining
        client.quit()
