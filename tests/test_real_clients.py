"""The reference scenarios and edge cases against a real `sink serve`, with real clients.

Each test starts the sink on a loopback port, talks to it with a real SMTP client, stops it with
SIGTERM, and compares what the spool contains with what the client sent, byte for byte.
"""

from __future__ import annotations

import asyncio
import smtplib
import socket
import subprocess
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from conftest import require_tool
from test_session import RELAYED_BODY

import sink.spool

pytestmark = pytest.mark.real


def stop_and_read(sink_process) -> list:  # type: ignore[no-untyped-def]
    """Stop the sink, check it exited 0 and its spool verifies, and return the records."""
    assert sink_process.stop() == 0, sink_process.log
    report = sink.spool.verify_spool(sink_process.spool)
    assert report.ok, "\n".join(report.lines())
    return list(sink.spool.records(sink_process.spool))


def queue_id(reply: bytes) -> str:
    assert b"queued as " in reply, reply
    return reply.rsplit(b" ", 1)[1].decode()


def test_smtplib_unknown_recipient(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "Green@BBN-UNIX.ARPA")
    with smtplib.SMTP(server.host, server.port) as client:
        assert client.helo("USC-ISIF.ARPA")[0] == 250
        refused = client.sendmail(
            "Smith@USC-ISIF.ARPA",
            ["Jones@BBN-UNIX.ARPA", "Green@BBN-UNIX.ARPA", "Brown@BBN-UNIX.ARPA"],
            b"Blah blah blah...\r\n...etc. etc. etc.\r\n",
        )
    assert refused == {"Green@BBN-UNIX.ARPA": (550, b"5.1.1 No such user here")}

    [record] = stop_and_read(server)
    assert record.message() == b"Blah blah blah...\r\n...etc. etc. etc.\r\n"
    assert record.envelope["reverse_path"]["mailbox"] == "Smith@USC-ISIF.ARPA"
    assert [path["mailbox"] for path in record.envelope["forward_paths"]] == [
        "Jones@BBN-UNIX.ARPA",
        "Brown@BBN-UNIX.ARPA",
    ]
    assert record.envelope["protocol"] == "SMTP"
    assert record.envelope["helo"] == "USC-ISIF.ARPA"
    assert record.envelope["client"]["address"] == "127.0.0.1"


def test_smtplib_null_sender_without_helo(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    client = smtplib.SMTP()
    client.connect(server.host, server.port)
    assert client.docmd("MAIL FROM:<>")[0] == 250
    assert client.docmd("RCPT TO:<kon@example.org>")[0] == 250
    code, reply = client.data(b"Subject: test6\r\n\r\nFrom: kon\r\ntest6\r\n")
    assert code == 250
    client.quit()

    [record] = stop_and_read(server)
    assert record.id == queue_id(reply)
    assert record.message() == b"Subject: test6\r\n\r\nFrom: kon\r\ntest6\r\n"
    assert record.envelope["reverse_path"]["raw"] == ""
    assert record.envelope["helo"] is None
    assert record.meta["quirks"]["no_helo"] == 1
    assert record.meta["quirks"]["null_sender"] == 1


def test_swaks_source_route(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    swaks = require_tool("swaks", "swaks")
    server = start_sink()
    body = tmp_path / "body.eml"
    # With --no-data-fixup swaks sends the file as it is: no dot-stuffing, no end marker.
    body.write_bytes(RELAYED_BODY + b".\r\n")
    command = [
        swaks, "--server", f"{server.host}:{server.port}", "--protocol", "SMTP",
        "--helo", "MIT-AI.ARPA", "--from", "JQP@MIT-AI.ARPA",
        "--to", "@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA", "--data", f"@{body}", "--no-data-fixup",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    [record] = stop_and_read(server)
    assert record.message() == RELAYED_BODY
    [forward] = record.envelope["forward_paths"]
    assert forward["raw"] == "@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA"
    assert forward["mailbox"] == "Jones@BBN-VAX.ARPA"
    assert record.envelope["helo"] == "MIT-AI.ARPA"


def test_swaks_pipelining(start_sink) -> None:  # type: ignore[no-untyped-def]
    swaks = require_tool("swaks", "swaks")
    server = start_sink()
    data = "Subject: pipelined\r\n\r\n.leading dot\r\nend\r\n"
    wire = data.replace("\r\n.", "\r\n..") + ".\r\n"  # swaks leaves stuffing to us here
    command = [
        swaks, "--server", f"{server.host}:{server.port}", "--pipeline", "--from", "a@example.com",
        "--to", "b@example.com,c@example.com", "--data", wire, "--no-data-fixup",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr

    [record] = stop_and_read(server)
    assert record.message() == data.encode()
    assert record.envelope["protocol"] == "ESMTP"
    assert len(record.envelope["forward_paths"]) == 2


def test_aiosmtplib_concurrent_messages(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()

    def build(index: int) -> EmailMessage:
        message = EmailMessage()
        message["From"] = f"sender{index}@example.com"
        message["To"] = "rcpt@example.net"
        message["Subject"] = f"message {index}"
        message.set_content(f"Hello {index}\n.starts with a dot\n" + "é line\n" * index)
        return message

    async def send_all() -> list[bytes]:
        messages = [build(index) for index in range(30)]

        async def send(message: EmailMessage) -> None:
            await aiosmtplib.send(message, hostname=server.host, port=server.port)

        await asyncio.gather(*(send(message) for message in messages))
        return [bytes(message) for message in messages]

    sent = asyncio.run(send_all())

    records = stop_and_read(server)
    stored = sorted(record.message() for record in records)
    expected = sorted(
        message.replace(b"\n", b"\r\n") if b"\r\n" not in message else message for message in sent
    )
    assert stored == expected


def test_smtp_source_load(start_sink) -> None:  # type: ignore[no-untyped-def]
    smtp_source = require_tool("smtp-source", "postfix")
    server = start_sink()
    command = [
        smtp_source, "-s", "5", "-m", "300", "-l", "2000", "-d",
        "-f", "load@example.com", "-t", "sink@example.net", f"{server.host}:{server.port}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr

    records = stop_and_read(server)
    assert len(records) == 300
    assert len({record.id for record in records}) == 300
    # smtp-source varies Date and Message-Id per message; the body is the same every time.
    bodies = {record.message().split(b"\r\n\r\n", 1)[1] for record in records}
    assert len(bodies) == 1
    assert all(record.size >= 2000 for record in records)
    assert all(
        record.envelope["reverse_path"]["mailbox"] == "load@example.com" for record in records
    )


def _raw_conversation(host: str, port: int, data: bytes, replies_expected: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as client:
        received = client.recv(4096)
        client.sendall(data)
        while received.count(b"\r\n") < replies_expected + 8 and not received.endswith(
            b"221 2.0.0 Bye\r\n"
        ):
            chunk = client.recv(65536)
            if not chunk:
                break
            received += chunk
    return received


def test_raw_bdat_and_bare_line_ends(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    chunk = b"binary \x00\xff\r\n.\r\nnot the end\n"
    script = (
        b"EHLO raw.example\r\nMAIL FROM:<a@example.com> BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.com>\r\n"
        b"BDAT %d\r\n" % len(chunk) + chunk + b"BDAT 0 LAST\r\n"
        b"MAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.com>\r\nDATA\r\n"
        b"smuggle\n.\nRCPT TO:<x@y>\r\n..dot\r\n.\r\nQUIT\r\n"
    )
    replies = _raw_conversation(server.host, server.port, script, 10)
    assert replies.endswith(b"221 2.0.0 Bye\r\n"), replies
    assert replies.count(b"queued as") == 2

    records = stop_and_read(server)
    assert [record.message() for record in records] == [
        chunk,
        b"smuggle\n.\nRCPT TO:<x@y>\r\n.dot\r\n",
    ]
    assert records[1].meta["bare_lf"] == 2


def test_large_message_streams(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--max-message-size", "40MiB")
    line = b"0123456789" * 7 + b"\r\n"
    content = line * (20 * 1024 * 1024 // len(line))
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("big@example.com", ["rcpt@example.com"], content)

    [record] = stop_and_read(server)
    assert record.size == len(content)
    assert record.message() == content


def test_oversized_message_refused(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--max-message-size", "1000")
    with smtplib.SMTP(server.host, server.port) as client:
        client.helo("client.example")  # HELO: smtplib then sends no SIZE, so DATA must refuse it
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.sendmail("a@example.com", ["b@example.com"], b"x" * 5000 + b"\r\n")
        assert refused.value.smtp_code == 552
        assert client.noop()[0] == 250

    assert stop_and_read(server) == []
