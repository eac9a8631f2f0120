"""`sink spool export`: write selected messages as .eml files, an mbox, a Maildir or JSON lines.

Every format but jsonl with --body streams each message from the spool in pieces. The mbox
format is mboxrd: a line that starts with any number of ">" followed by "From " gets one more
">" in front, and a reader removes one again. Message bytes are written as stored, including
their CR LF line ends, so the .eml, mbox and Maildir copies hold exactly the bytes the client
sent (with the trace headers in front, when asked for).
"""

from __future__ import annotations

import base64
import fnmatch
import itertools
import mailbox
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from sink.spool.reader import Record, SpoolDataError

from .reading import (
    ProblemLog,
    Progress,
    header_end,
    header_text,
    iso_time,
    parse_headers,
    read_header_block,
    record_time,
    scan_spool,
)

FORMATS = ("eml", "mbox", "maildir", "jsonl")


@dataclass(slots=True)
class Selection:
    """The export filters; an empty one selects every message."""

    since: float | None = None
    until: float | None = None
    sender: str | None = None
    recipient: str | None = None
    ids: set[str] = field(default_factory=set)

    def matches(self, record: Record) -> bool:
        if self.ids and record.id not in self.ids:
            return False
        received = record_time(record)
        if self.since is not None and (received is None or received < self.since):
            return False
        if self.until is not None and (received is None or received >= self.until):
            return False
        envelope = record.envelope
        if self.sender is not None:
            reverse = envelope.get("reverse_path") or {}
            if not _glob(reverse.get("mailbox") or "", self.sender):
                return False
        if self.recipient is not None:
            forwards = envelope.get("forward_paths") or []
            if not any(_glob(path.get("mailbox", ""), self.recipient) for path in forwards):
                return False
        return True


def _glob(value: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(value.lower(), pattern.lower())


def trace_headers(record: Record, line_end: bytes) -> bytes:
    """Build Return-Path and Received header lines from the envelope."""
    envelope = record.envelope
    reverse = envelope.get("reverse_path") or {}
    forwards = envelope.get("forward_paths") or []
    address = str((envelope.get("client") or {}).get("address", "unknown"))
    literal = f"IPv6:{address}" if ":" in address else address
    helo = envelope.get("helo") or "unknown"
    protocol = envelope.get("protocol") or "SMTP"
    received = record_time(record) or 0.0
    date = format_datetime(datetime.fromtimestamp(received, UTC))
    recipient = f" for <{forwards[0].get('mailbox', '')}>" if forwards else ""
    lines = [
        f"Return-Path: <{reverse.get('mailbox') or ''}>",
        f"Received: from {helo} ([{literal}]) by sink with {protocol} id {record.id}"
        f"{recipient}; {date}",
    ]
    return b"".join(line.encode("utf-8") + line_end for line in lines)


def message_pieces(record: Record, with_trace: bool) -> Iterator[bytes]:
    """Yield the message octets, after the trace headers when asked for."""
    pieces = record.chunks()
    if not with_trace:
        yield from pieces
        return
    first = next(pieces, b"")
    newline = first.find(b"\n")
    line_end = b"\n" if newline == 0 or (newline > 0 and first[newline - 1] != 13) else b"\r\n"
    yield trace_headers(record, line_end)
    if first:
        yield first
    yield from pieces


class MboxrdQuoter:
    """Adds mboxrd quoting to a stream of message pieces, one line start at a time."""

    def __init__(self) -> None:
        self.pending = b""  # the start of a line that may still turn out to need quoting
        self.mid_line = False
        self.last_byte = b""

    def feed(self, piece: bytes) -> bytes:
        data = self.pending + piece
        self.pending = b""
        out: list[bytes] = []
        start = 0
        length = len(data)
        while start < length:
            newline = data.find(b"\n", start)
            end = length if newline < 0 else newline + 1
            if not self.mid_line:
                index = start
                while index < end and data[index] == 0x3E:  # ">"
                    index += 1
                rest = data[index : min(end, index + 5)]
                if rest == b"From ":
                    out.append(b">")
                elif newline < 0 and b"From ".startswith(rest):
                    self.pending = data[start:]  # the next piece decides
                    break
            out.append(data[start:end])
            self.mid_line = newline < 0
            start = end
        result = b"".join(out)
        if result:
            self.last_byte = result[-1:]
        return result

    def finish(self) -> bytes:
        rest, self.pending = self.pending, b""
        if rest:
            self.last_byte = rest[-1:]
        return rest


def mbox_from_line(record: Record) -> bytes:
    reverse = record.envelope.get("reverse_path") or {}
    sender = reverse.get("mailbox") or "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(record_time(record) or 0.0))
    return f"From {sender} {stamp}\n".encode()


class Exporter:
    """Writes messages to one output in one format."""

    def __init__(self, output: Path, fmt: str, *, trace: bool, body: bool) -> None:
        self.output = output
        self.format = fmt
        self.trace = trace
        self.body = body
        self.counter = itertools.count()
        self.hostname = socket.gethostname().replace("/", "_").replace(":", "_")
        self._file: BinaryIO | None = None
        if fmt in ("mbox", "jsonl"):
            output.parent.mkdir(parents=True, exist_ok=True)
            self._file = output.open("ab")
        elif fmt == "maildir":
            mailbox.Maildir(output, create=True)  # creates tmp/, new/ and cur/
        else:
            output.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def write(self, record: Record) -> None:
        writers: dict[str, Callable[[Record], None]] = {
            "eml": self._eml,
            "mbox": self._mbox,
            "maildir": self._maildir,
            "jsonl": self._jsonl,
        }
        writers[self.format](record)

    def _eml(self, record: Record) -> None:
        self._write_file(self.output / f"{record.id}.eml", record)

    def _maildir(self, record: Record) -> None:
        # Maildir delivery: write under tmp/, then rename into new/. The name is unique by
        # time, process ID, a counter and the message ID.
        now = time.time()
        name = (
            f"{int(now)}.M{int(now % 1 * 1e6)}P{os.getpid()}Q{next(self.counter)}"
            f"_{record.id}.{self.hostname}"
        )
        temporary = self.output / "tmp" / name
        self._write_file(temporary, record)
        os.rename(temporary, self.output / "new" / name)

    def _write_file(self, path: Path, record: Record) -> None:
        try:
            with path.open("xb") as file:
                for piece in message_pieces(record, self.trace):
                    file.write(piece)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

    def _mbox(self, record: Record) -> None:
        assert self._file is not None
        file = self._file
        start = file.tell()
        quoter = MboxrdQuoter()
        try:
            file.write(mbox_from_line(record))
            for piece in message_pieces(record, self.trace):
                file.write(quoter.feed(piece))
            file.write(quoter.finish())
        except SpoolDataError:
            file.truncate(start)  # leave no partial message in the mbox
            file.seek(start)
            raise
        # NOTE: a message that does not end with a line break gets one, so a mailbox reader
        # returns one more byte than was stored.
        file.write(b"\n\n" if quoter.last_byte not in (b"\n", b"") else b"\n")

    def _jsonl(self, record: Record) -> None:
        assert self._file is not None
        item: dict[str, Any] = {
            "id": record.id,
            "received": iso_time(record_time(record)),
            "envelope": record.envelope,
            "size": record.size,
        }
        if self.body:
            message = record.message()  # a JSON line needs the whole body at once
            end = header_end(message)
            head, body = (message[: end[0]], message[end[1] :]) if end else (message, b"")
            item["headers"] = _header_list(head)
            try:
                item["body"] = body.decode("utf-8")
            except UnicodeDecodeError:
                item["body"] = base64.b64encode(body).decode("ascii")
                item["body_encoding"] = "base64"
        else:
            item["headers"] = _header_list(read_header_block(record))
        self._file.write(orjson.dumps(item) + b"\n")


def _header_list(block: bytes) -> list[list[str]]:
    return [[name, header_text(value)] for name, value in parse_headers(block).raw_items()]


def export_messages(
    directory: Path,
    output: Path,
    fmt: str,
    selection: Selection,
    *,
    trace: bool = False,
    body: bool = False,
) -> int:
    """Export the selected messages; return the exit status."""
    problems = ProblemLog()
    exporter = Exporter(output, fmt, trace=trace, body=body)
    progress = Progress("export")
    exported = 0
    seen: set[str] = set()
    try:
        for record in scan_spool(directory, problems):
            if not selection.matches(record):
                continue
            if selection.ids:
                seen.add(record.id)
            try:
                exporter.write(record)
            except SpoolDataError as error:
                problems.report_text(f"{error}; skipped message {record.id}")
                continue
            exported += 1
            progress.step(record.size)
    finally:
        exporter.close()
        progress.done()
    for message_id in sorted(selection.ids - seen):
        problems.report_text(f"message {message_id} not found")
    print(f"exported {exported} messages to {output}", file=sys.stderr)
    return problems.exit_status
