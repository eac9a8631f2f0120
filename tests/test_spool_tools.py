"""`sink spool ls/show/stats/export/tail` on spools written by a real `sink serve`.

Messages go to the sink over loopback with smtplib. The tools run as `python -m sink` child
processes, so the tests check exit status, standard output and standard error as a user sees
them.
"""

from __future__ import annotations

import mailbox
import re
import shutil
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_session import RELAYED_BODY

import sink.spool

pytestmark = pytest.mark.real

SCENARIO_ONE_BODY = b"Blah blah blah...\r\n...etc. etc. etc.\r\n"
SCENARIO_THREE_BODY = b"Subject: test6\r\n\r\nFrom: kon\r\ntest6\r\n"

# Bodies for the export round trip: mbox separators and quoting, dots, 8-bit octets, LF-only.
ROUND_TRIP = [
    (
        "alice@example.com",
        ["bob@example.net"],
        b"From: Alice <alice@example.com>\r\nSubject: plain\r\n\r\nHello.\r\n",
    ),
    (
        "carol@example.com",
        ["dave@example.org", "erin@example.org"],
        b"From: carol@example.com\r\nSubject: from lines\r\n\r\n"
        b"From the start of a line\r\n>From quoted once\r\n>>From quoted twice\r\n"
        b"From\r\n.leading dot\r\n..two dots\r\nFromage is not quoted\r\n",
    ),
    (
        "frank@example.com",
        ["grace@example.net"],
        b"From: Someone Else <other@example.com>\r\nSubject: 8bit\r\n\r\n"
        b"caf\xc3\xa9 \xff\xfe raw octets\r\n" + b"long line " * 2000 + b"\r\n",
    ),
]


def run_tool(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "sink", "spool", *args]
    return subprocess.run(command, capture_output=True, timeout=timeout)


def stop_sink(server: Any) -> Path:
    assert server.stop() == 0, server.log
    return Path(server.spool)


def send_reference_scenarios(server: Any) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        assert client.helo("USC-ISIF.ARPA")[0] == 250
        refused = client.sendmail(
            "Smith@USC-ISIF.ARPA",
            ["Jones@BBN-UNIX.ARPA", "Green@BBN-UNIX.ARPA", "Brown@BBN-UNIX.ARPA"],
            SCENARIO_ONE_BODY,
        )
        assert list(refused) == ["Green@BBN-UNIX.ARPA"]

    with smtplib.SMTP(server.host, server.port) as client:
        assert client.helo("MIT-AI.ARPA")[0] == 250
        assert client.docmd("MAIL FROM:<JQP@MIT-AI.ARPA>")[0] == 250
        assert client.docmd("RCPT TO:<@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA>")[0] == 250
        assert client.data(RELAYED_BODY)[0] == 250

    client = smtplib.SMTP()
    client.connect(server.host, server.port)
    assert client.docmd("MAIL FROM:<>")[0] == 250
    assert client.docmd("RCPT TO:<kon@example.org>")[0] == 250
    assert client.data(SCENARIO_THREE_BODY)[0] == 250
    client.quit()


def send_round_trip(server: Any) -> None:
    with smtplib.SMTP(server.host, server.port) as client:
        for sender, recipients, body in ROUND_TRIP:
            assert client.sendmail(sender, recipients, body, mail_options=["BODY=8BITMIME"]) == {}


@pytest.fixture
def reference_spool(start_sink) -> Path:  # type: ignore[no-untyped-def]
    server = start_sink("--reject-rcpt", "Green@BBN-UNIX.ARPA", workers=1)
    send_reference_scenarios(server)
    return stop_sink(server)


def test_stats_reference_scenarios(reference_spool: Path) -> None:
    result = run_tool("stats", str(reference_spool), "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    stats = orjson.loads(result.stdout)

    assert stats["messages"] == 3
    assert stats["null_senders"] == 1
    assert stats["without_from"] == 2
    assert stats["sender_differs_from_header"] == 0
    senders = dict(stats["top_senders"])
    assert senders == {"Smith@USC-ISIF.ARPA": 1, "JQP@MIT-AI.ARPA": 1, "<>": 1}
    recipients = dict(stats["top_recipients"])
    assert recipients["Jones@BBN-VAX.ARPA"] == 1
    assert recipients["Jones@BBN-UNIX.ARPA"] == 1
    assert recipients["Brown@BBN-UNIX.ARPA"] == 1
    assert "Green@BBN-UNIX.ARPA" not in recipients
    domains = dict(stats["top_recipient_domains"])
    assert domains == {"bbn-unix.arpa": 2, "bbn-vax.arpa": 1, "example.org": 1}
    assert dict(stats["helo_names"]) == {"USC-ISIF.ARPA": 1, "MIT-AI.ARPA": 1, "(none)": 1}
    quirks = dict(stats["quirks"])
    assert quirks["null_sender"] == 1
    assert quirks["no_helo"] == 1
    assert quirks["source_route"] == 1
    assert dict(stats["clients"]) == {"127.0.0.1": 3}
    assert stats["sizes"]["<1k"] == 3
    assert stats["bytes"] == len(SCENARIO_ONE_BODY) + len(RELAYED_BODY) + len(SCENARIO_THREE_BODY)


def test_stats_text_and_top(reference_spool: Path) -> None:
    result = run_tool("stats", str(reference_spool), "--top", "1")
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert "messages: 3\n" in text
    assert "null senders: 1\n" in text
    assert "messages without From: 2\n" in text
    assert "top recipient domains:\n         2  bbn-unix.arpa\nHELO names:" in text


def test_ls_lists_segments(reference_spool: Path) -> None:
    result = run_tool("ls", str(reference_spool), "--json")
    assert result.returncode == 0, result.stderr
    rows = [orjson.loads(line) for line in result.stdout.splitlines()]
    names = sorted(path.name for path in reference_spool.glob("seg-*.seg"))
    assert [row["segment"] for row in rows] == names
    assert all(row["state"] == "sealed" for row in rows)
    assert sum(row["records"] for row in rows) == 3
    with_records = [row for row in rows if row["records"]]
    assert all(
        re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", row["first_received"]) for row in with_records
    )
    assert all(row["first_received"] <= row["last_received"] for row in with_records)
    assert rows[0]["bytes"] == (reference_spool / names[0]).stat().st_size

    text = run_tool("ls", str(reference_spool))
    assert text.returncode == 0
    assert text.stdout.decode().splitlines()[0].startswith(f"{names[0]}  sealed")


def test_show_envelope_and_raw(reference_spool: Path) -> None:
    records = {r.envelope["helo"]: r for r in sink.spool.records(reference_spool)}
    relayed = records["MIT-AI.ARPA"]

    shown = run_tool("show", str(reference_spool), relayed.id)
    assert shown.returncode == 0, shown.stderr
    head, _, message = shown.stdout.partition(b"\n\n")
    assert message == RELAYED_BODY
    text = head.decode()
    assert f"ID: {relayed.id}" in text
    assert "HELO: MIT-AI.ARPA" in text
    assert "Protocol: SMTP" in text
    assert "Reverse-Path: <JQP@MIT-AI.ARPA>" in text
    assert "Forward-Path: <@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA> (mailbox Jones@BBN-VAX.ARPA)" in text
    assert re.search(r"Client: 127\.0\.0\.1:\d+", text)
    assert f"Size: {len(RELAYED_BODY)}" in text

    raw = run_tool("show", str(reference_spool), records[None].id.lower(), "--raw")
    assert raw.returncode == 0
    assert raw.stdout == SCENARIO_THREE_BODY


def test_show_unknown_id_and_bad_directory(reference_spool: Path, tmp_path: Path) -> None:
    unknown = run_tool("show", str(reference_spool), "0" * 20)
    assert unknown.returncode == 1
    assert unknown.stdout == b""
    assert b"message 00000000000000000000 not found" in unknown.stderr

    missing = run_tool("ls", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert b"spool directory not found" in missing.stderr


def undo_mboxrd(message: bytes) -> bytes:
    return re.sub(rb"(?m)^>(>*From )", rb"\1", message)


def test_export_round_trip(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink()
    send_round_trip(server)
    spool = stop_sink(server)
    sent = sorted(body for _, _, body in ROUND_TRIP)
    ids = sorted(record.id for record in sink.spool.records(spool))

    eml = tmp_path / "eml"
    result = run_tool("export", str(spool), "--format", "eml", "--output", str(eml))
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in eml.iterdir()) == [f"{i}.eml" for i in ids]
    assert sorted(path.read_bytes() for path in eml.iterdir()) == sent

    # mailbox.mbox returns each message's bytes between its From line and the blank line
    # before the next one. On Linux it changes no line ends, so the CR LF of SMTP survive.
    # It does not undo mboxrd quoting, so the test removes one ">" as an mboxrd reader does.
    mbox_path = tmp_path / "out.mbox"
    result = run_tool("export", str(spool), "--format", "mbox", "--output", str(mbox_path))
    assert result.returncode == 0, result.stderr
    raw_mbox = mbox_path.read_bytes()
    assert b"\n>From the start of a line\r\n>>From quoted once\r\n>>>From quoted twice\r\n" in (
        raw_mbox
    )
    assert b"\nFrom\r\n" in raw_mbox
    assert b"\nFromage is not quoted" in raw_mbox
    box = mailbox.mbox(mbox_path, create=False)
    stored = [undo_mboxrd(box.get_bytes(key)) for key in box.keys()]
    assert sorted(stored) == sent
    from_lines = sorted(box.get_message(key).get_from() for key in box.keys())
    assert [line.split()[0] for line in from_lines] == [
        "alice@example.com",
        "carol@example.com",
        "frank@example.com",
    ]

    # mailbox.Maildir.get_bytes reads the file as it is (line ends unchanged on Linux).
    maildir = tmp_path / "Maildir"
    result = run_tool("export", str(spool), "--format", "maildir", "--output", str(maildir))
    assert result.returncode == 0, result.stderr
    folder = mailbox.Maildir(maildir, create=False)
    assert sorted(folder.get_bytes(key) for key in folder.keys()) == sent
    assert len(list((maildir / "new").iterdir())) == 3
    assert list((maildir / "tmp").iterdir()) == []

    stats = orjson.loads(run_tool("stats", str(spool), "--json").stdout)
    assert dict(stats["esmtp_parameters"])["BODY"] == 3
    assert stats["sender_differs_from_header"] == 1
    assert stats["without_from"] == 0


def test_export_null_sender_mbox_and_trace(reference_spool: Path, tmp_path: Path) -> None:
    mbox_path = tmp_path / "bounces.mbox"
    result = run_tool(
        "export", str(reference_spool), "--format", "mbox", "--output", str(mbox_path),
        "--sender", "", "--trace-headers",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = mbox_path.read_bytes()
    assert re.match(rb"From MAILER-DAEMON \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", data)
    [record] = [r for r in sink.spool.records(reference_spool) if r.envelope["helo"] is None]
    box = mailbox.mbox(mbox_path, create=False)
    [key] = box.keys()
    message = undo_mboxrd(box.get_bytes(key))
    trace, _, rest = message.partition(b"Subject: test6")
    assert rest == SCENARIO_THREE_BODY[len(b"Subject: test6") :]
    assert trace.startswith(b"Return-Path: <>\r\nReceived: from unknown ([127.0.0.1]) by sink")
    assert f"with SMTP id {record.id} for <kon@example.org>; ".encode() in trace
    assert re.search(rb"; \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d \+0000\r\n$", trace)


def test_export_jsonl_filters(reference_spool: Path, tmp_path: Path) -> None:
    records = list(sink.spool.records(reference_spool))
    relayed = next(r for r in records if r.envelope["helo"] == "MIT-AI.ARPA")

    def export(*filters: str) -> list[dict[str, Any]]:
        output = tmp_path / f"out{len(list(tmp_path.iterdir()))}.jsonl"
        command = ["export", str(reference_spool), "--format", "jsonl", "--output", str(output)]
        result = run_tool(*command, *filters)
        assert result.returncode == 0, result.stderr
        return [orjson.loads(line) for line in output.read_bytes().splitlines()]

    assert len(export()) == 3
    [item] = export("--recipient", "jones@bbn-vax.*", "--body")
    assert item["id"] == relayed.id
    assert item["headers"][1] == ["From", "John Q. Public <JQP@MIT-AI.ARPA>"]
    assert item["body"] == RELAYED_BODY.split(b"\r\n\r\n", 1)[1].decode()
    assert item["envelope"]["forward_paths"][0]["raw"] == "@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA"
    assert "body" not in export("--id", relayed.id)[0]
    assert [i["id"] for i in export("--sender", "smith@*")] != [relayed.id]
    assert export("--since", "2999-01-01") == []
    assert len(export("--until", "2999-01-01T00:00:00+01:00")) == 3

    bad = run_tool("export", str(reference_spool), "--format", "jsonl", "--output",
                   str(tmp_path / "x.jsonl"), "--since", "yesterday")  # fmt: skip
    assert bad.returncode == 2
    assert b"invalid ISO 8601 time 'yesterday'" in bad.stderr
    unknown = run_tool("export", str(reference_spool), "--format", "eml", "--output",
                       str(tmp_path / "eml"), "--id", "0" * 20)  # fmt: skip
    assert unknown.returncode == 1
    assert b"message 00000000000000000000 not found" in unknown.stderr


def test_tail_follows_new_records(start_sink) -> None:  # type: ignore[no-untyped-def]
    server = start_sink("--segment-age", "1s", workers=1)
    spool = Path(server.spool)
    with smtplib.SMTP(server.host, server.port) as client:
        client.sendmail("before@example.com", ["x@example.net"], b"Subject: before\r\n\r\n.\r\n")

    command = [sys.executable, "-m", "sink", "spool", "tail", str(spool)]
    command += ["--exit-after", "2", "--timeout", "20"]
    tail = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1.5)  # the tail has read what is there and polls; the segment is now old
        with smtplib.SMTP(server.host, server.port) as client:
            client.sendmail("one@example.com", ["a@example.net"], b"Subject: one\r\n\r\n1\r\n")
            time.sleep(1.2)  # past --segment-age, so the next message rotates the segment
            client.sendmail(
                "two@example.com", ["b@example.net", "c@example.net"], b"Subject: two\r\n\r\n2\r\n"
            )
        out, err = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait()
    stop_sink(server)

    assert tail.returncode == 0, err
    lines = out.decode().splitlines()
    assert len(lines) == 2, lines
    assert "<one@example.com>  rcpt=1  size=" in lines[0]
    assert "<two@example.com>  rcpt=2  size=" in lines[1]
    assert len(list(spool.glob("seg-*"))) >= 2  # the records came from more than one segment

    again = run_tool("tail", str(spool), "--from-start", "--timeout", "0.5")
    assert again.returncode == 0
    assert len(again.stdout.splitlines()) == 3


def test_tail_stops_on_sigterm(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "sink", "spool", "tail", str(tmp_path)]
    tail = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.0)
    tail.terminate()
    out, err = tail.communicate(timeout=10)
    assert tail.returncode == 0, err
    assert out == b""


def copy_segments(source: Path, target: Path) -> list[Path]:
    target.mkdir()
    copies = []
    for path in sorted(source.glob("seg-*")):
        copies.append(Path(shutil.copy2(path, target / path.name)))
    return copies


def test_torn_tail_reported(start_sink, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_sink(workers=1)
    send_round_trip(server)
    server.kill()  # SIGKILL: the segment stays .open and no writer has it locked any more
    [segment] = list(Path(server.spool).glob("seg-*.open"))
    size = segment.stat().st_size
    with segment.open("r+b") as file:
        file.truncate(size - 100)  # inside the last message's data or commit frame

    output = str(tmp_path / "out.jsonl")
    for command in (["ls"], ["stats"], ["export", "--format", "jsonl", "--output", output]):
        result = run_tool(command[0], str(server.spool), *command[1:])
        assert result.returncode == 1, (command, result.stderr)
        error = result.stderr.decode()
        assert re.search(rf"{segment.name} at offset \d+: torn tail", error), error
    stats = orjson.loads(run_tool("stats", str(server.spool), "--json").stdout)
    assert stats["messages"] == 2


def test_flipped_byte_reported(reference_spool: Path, tmp_path: Path) -> None:
    # Two copies of one sealed segment under two names: the damaged one comes first.
    [original] = [p for p in reference_spool.glob("seg-*.seg") if p.stat().st_size > 500]
    spool = tmp_path / "damaged"
    spool.mkdir()
    first = spool / original.name
    created = int(original.name[4:24])
    second = spool / f"seg-{created + 1:020d}{original.name[24:]}"
    shutil.copy2(original, first)
    shutil.copy2(original, second)
    data = bytearray(first.read_bytes())
    offset = data.index(b"test6")  # in the data frame of the null-sender message
    data[offset] ^= 0x20
    first.write_bytes(bytes(data))

    for command in (["ls"], ["stats", "--json"], ["show", "0" * 20]):
        result = run_tool(command[0], str(spool), *command[1:])
        assert result.returncode == 1, (command, result.stderr)
        assert re.search(rf"{first.name} at offset \d+: checksum mismatch", result.stderr.decode())
    stats = orjson.loads(run_tool("stats", str(spool), "--json").stdout)
    before_damage = sum(1 for r in sink.spool.records(original.parent) if r.segment == original)
    assert stats["messages"] < 2 * before_damage
    assert stats["messages"] >= before_damage  # the intact copy is read in full

    rows = [orjson.loads(line) for line in run_tool("ls", str(spool), "--json").stdout.splitlines()]
    assert rows[1]["records"] == before_damage
    assert rows[0]["problems"] == 1
