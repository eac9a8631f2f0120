"""`sink spool replay` from the spool of one real sink into a second real sink.

Messages reach the source sink over loopback with smtplib (BDAT through raw commands, for
content that DATA cannot carry unchanged). Replay runs as a `python -m sink` child process, and
the test compares what the target sink stored with what the source stored.
"""

from __future__ import annotations

import random
import re
import smtplib
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import sink.spool
from sink.spool.tools.replay import DotStuffer, content_needs_chunking, parse_target

DOT_LINES = (
    b"From: dots@example.com\r\nSubject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n"
    b"middle . dot\r\n.\r\n..\r\nend\r\n"
)
EIGHT_BIT = b"From: frank@example.com\r\nSubject: 8bit\r\n\r\ncaf\xc3\xa9 \xff\xfe raw\r\n"
BARE_LF = b"From: lf@example.com\nSubject: bare LF\n\n.dot after a bare LF\nx\r\n.real line\r\n"
BARE_CR = b"Subject: bare CR\r\n\r\nover\rwritten\r\n"
NO_FINAL_LINE_END = b"Subject: open end\r\n\r\nno line end at the end"


def run_tool(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "sink", "spool", *args]
    return subprocess.run(command, capture_output=True, timeout=timeout)


def send_bdat(client: smtplib.SMTP, sender: str, recipients: list[str], body: bytes) -> None:
    """Send one message with BDAT LAST, so its octets are stored exactly as given."""
    assert client.docmd(f"MAIL FROM:<{sender}>")[0] == 250
    for recipient in recipients:
        assert client.docmd(f"RCPT TO:<{recipient}>")[0] == 250
    client.send(f"BDAT {len(body)} LAST\r\n".encode() + body)
    assert client.getreply()[0] == 250


def fill_source(server: Any) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        client.ehlo("source.example")
        plain = b"From: alice@example.com\r\nSubject: plain\r\n\r\nHello.\r\n"
        assert client.sendmail("alice@example.com", ["bob@example.net"], plain) == {}
        both = ["carol@example.org", "dave@example.org"]
        assert client.sendmail("alice@example.com", both, DOT_LINES) == {}
        options = ["BODY=8BITMIME", "SMTPUTF8"]
        refused = client.sendmail("frånk@exämple.com", ["grace@example.net"], EIGHT_BIT, options)
        assert refused == {}
        send_bdat(client, "lf@example.com", ["henry@example.net"], BARE_LF)
        send_bdat(client, "cr@example.com", ["henry@example.net"], BARE_CR)
        send_bdat(client, "open@example.com", ["ivy@example.net"], NO_FINAL_LINE_END)
        assert client.docmd("MAIL FROM:<>")[0] == 250
        assert client.docmd("RCPT TO:<@relay.example,@hop.example:kim@example.org>")[0] == 250
        assert client.data(b"Subject: bounce\r\n\r\nreturned\r\n")[0] == 250


def stored(spool: Path) -> list[tuple[Any, ...]]:
    """Return the envelopes and contents of a spool, sorted, for comparing two spools."""
    rows = []
    for record in sink.spool.records(spool):
        envelope = record.envelope
        reverse = envelope["reverse_path"]
        forwards = envelope["forward_paths"]
        rows.append(
            (
                reverse["mailbox"],
                reverse["raw"],
                tuple(path["mailbox"] for path in forwards),
                tuple(path["raw"] for path in forwards),
                record.message(),
            )
        )
    return sorted(rows)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.real
def test_replay_round_trip(start_sink) -> None:  # type: ignore[no-untyped-def]
    source = start_sink(workers=1)
    fill_source(source)
    assert source.stop() == 0, source.log
    target = start_sink(workers=1)

    result = run_tool("replay", str(source.spool), "--to", f"127.0.0.1:{target.port}",
                      "--ehlo", "replay.example")  # fmt: skip
    assert target.stop() == 0, target.log

    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    summary = result.stdout.decode()
    assert "replayed 7 messages to 127.0.0.1:" in summary
    assert "final replies: 250 7, 4xx 0, 5xx 0, connection error 0" in summary
    original = stored(Path(source.spool))
    copies = stored(Path(target.spool))
    assert len(copies) == 7
    for copy, expected in zip(copies, original, strict=True):
        assert copy[:4] == expected[:4]
        assert copy[4] == expected[4]

    # Every message in this spool has its own content, so the content pairs them up.
    sources = {r.message(): r for r in sink.spool.records(source.spool)}
    for record in sink.spool.records(target.spool):
        original_record = sources[record.message()]
        stored_params = original_record.envelope["reverse_path"]["params"]
        assert record.envelope["reverse_path"]["params"] == stored_params, record
        # BDAT commits store no bare CR and LF counts; DATA commits do.
        for count in ("bare_lf", "bare_cr"):
            assert record.meta.get(count) == original_record.meta.get(count), (record, count)
        assert record.envelope["helo"] == "replay.example"

    def by_sender(spool: Any) -> dict[str, Any]:
        return {r.envelope["reverse_path"]["mailbox"]: r for r in sink.spool.records(spool)}

    copied = by_sender(target.spool)
    assert copied[""].envelope["reverse_path"]["raw"] == ""
    assert copied[""].envelope["forward_paths"][0]["route"] == ["relay.example", "hop.example"]
    assert copied["frånk@exämple.com"].envelope["protocol"] == "UTF8SMTP"
    params = copied["frånk@exämple.com"].envelope["reverse_path"]["params"]
    assert params["BODY"] == "8BITMIME"
    assert "SMTPUTF8" in params


@pytest.mark.real
def test_replay_bdat_rate_and_filter(start_sink) -> None:  # type: ignore[no-untyped-def]
    source = start_sink(workers=1)
    fill_source(source)
    assert source.stop() == 0, source.log
    target = start_sink(workers=1)

    result = run_tool("replay", str(source.spool), "--to", f"localhost:{target.port}", "--bdat",
                      "--connections", "1", "--rate", "20",
                      "--recipient", "*@example.org")  # fmt: skip
    assert target.stop() == 0, target.log

    assert result.returncode == 0, result.stderr
    assert "replayed 2 messages" in result.stdout.decode()
    expected = [row for row in stored(Path(source.spool)) if row[2][0].endswith("example.org")]
    assert stored(Path(target.spool)) == expected
    assert all(r.meta["quirks"].get("no_helo") is None for r in sink.spool.records(target.spool))


@pytest.mark.real
def test_replay_refused_recipients(start_sink) -> None:  # type: ignore[no-untyped-def]
    source = start_sink(workers=1)
    with smtplib.SMTP(source.host, source.port) as client:
        client.sendmail("alice@example.com", ["bob@example.net"], b"Subject: one\r\n\r\n1\r\n")
        both = ["bob@example.net", "carol@example.net"]
        client.sendmail("alice@example.com", both, b"Subject: two\r\n\r\n2\r\n")
        client.sendmail("alice@example.com", ["dave@example.net"], b"Subject: three\r\n\r\n3\r\n")
    assert source.stop() == 0, source.log
    target = start_sink("--reject-rcpt", "bob@*", workers=1)

    result = run_tool("replay", str(source.spool), "--to", f"127.0.0.1:{target.port}")
    assert target.stop() == 0, target.log

    assert result.returncode == 1, result.stderr
    summary = result.stdout.decode()
    assert "final replies: 250 2, 4xx 0, 5xx 1, connection error 0" in summary
    assert "refusals by code: 550 1" in summary
    assert "refused recipients of accepted messages: 550 1" in summary
    copies = stored(Path(target.spool))
    assert [row[2] for row in copies] == [("carol@example.net",), ("dave@example.net",)]


@pytest.mark.parametrize(
    "address",
    ["192.0.2.1:25", "[2001:db8::1]:25", "10.1.2.3:2525", "[::ffff:192.0.2.7]:25", "0.0.0.0:25"],
)
def test_replay_refuses_remote_target(tmp_path: Path, address: str) -> None:
    result = run_tool("replay", str(tmp_path), "--to", address, timeout=20)
    assert result.returncode == 2
    assert b"is not a loopback address" in result.stderr
    assert b"--allow-remote" in result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--to", "127.0.0.1"], b"invalid address '127.0.0.1'"),
        (["--to", "127.0.0.1:0"], b"invalid port"),
        (["--to", "[::1]25"], b"invalid address"),
        (["--to", "127.0.0.1:25", "--connections", "0"], b"must be a positive integer"),
        (["--to", "127.0.0.1:25", "--rate", "0"], b"must be a positive number"),
        (["--to", "127.0.0.1:25", "--ehlo", "two words"], b"--ehlo: invalid name"),
        (["--to", "127.0.0.1:25", "--since", "yesterday"], b"invalid ISO 8601 time"),
    ],
)
def test_replay_invalid_options(tmp_path: Path, arguments: list[str], message: bytes) -> None:
    result = run_tool("replay", str(tmp_path), *arguments, timeout=20)
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.real
def test_replay_target_down(start_sink) -> None:  # type: ignore[no-untyped-def]
    source = start_sink(workers=1)
    with smtplib.SMTP(source.host, source.port) as client:
        for number in range(12):
            client.sendmail(
                "a@example.com", ["b@example.net"], b"Subject: %d\r\n\r\nx\r\n" % number
            )
    assert source.stop() == 0, source.log

    result = run_tool("replay", str(source.spool), "--to", f"127.0.0.1:{free_port()}",
                      "--connections", "2")  # fmt: skip
    assert result.returncode == 1
    summary = result.stdout.decode()
    # Both sessions may be connecting when the tenth error stops the replay.
    found = re.search(r"final replies: 250 0, 4xx 0, 5xx 0, connection error (\d+)\n", summary)
    assert found, summary
    errors = int(found[1])
    assert errors in (10, 11)
    not_sent = f"not sent: {12 - errors} (stopped after 10 connection errors in a row)"
    assert not_sent in summary
    assert b"cannot connect to 127.0.0.1:" in result.stderr


def test_parse_target_forms() -> None:
    assert parse_target("127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parse_target("[::1]:25") == ("::1", 25)
    assert parse_target("localhost:25") == ("localhost", 25)
    with pytest.raises(ValueError):
        parse_target("::1:25")
    with pytest.raises(ValueError):
        parse_target(":25")


def stuff(pieces: list[bytes]) -> bytes:
    stuffer = DotStuffer()
    return b"".join(stuffer.feed(piece) for piece in pieces)


def test_dot_stuffing_any_split() -> None:
    message = b".a\r\n..b\r\n.\r\nc.d\r\n\n.e\r.f\r\n.g"
    expected = b"..a\r\n...b\r\n..\r\nc.d\r\n\n.e\r.f\r\n..g"
    assert stuff([message]) == expected
    for size in range(1, 6):
        pieces = [message[i : i + size] for i in range(0, len(message), size)]
        assert stuff(pieces) == expected, size


def test_dot_stuffing_random_splits() -> None:
    rng = random.Random(7)
    for _ in range(200):
        message = bytes(rng.choice(b".\r\nx") for _ in range(40))
        expected = stuff([message])
        cuts = sorted(rng.sample(range(1, 40), 5))
        pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, 40], strict=True)]
        assert stuff(pieces) == expected


@pytest.mark.parametrize(
    ("pieces", "needed"),
    [
        ([b"a\r\nb\r\n"], False),
        ([b"a\r", b"\nb\r\n"], False),
        ([], False),
        ([b"a\nb\r\n"], True),
        ([b"a\rb\r\n"], True),
        ([b"a\r\nb"], True),
        ([b"a\r\n", b"\r"], True),
    ],
)
def test_content_needs_chunking(pieces: list[bytes], needed: bool) -> None:
    assert content_needs_chunking(pieces) is needed
