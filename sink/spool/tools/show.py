"""`sink spool show`: one message's envelope and content."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, BinaryIO

from sink.spool.reader import Record, SpoolDataError

from .reading import ProblemLog, client_text, iso_time, record_time, scan_spool


def show_message(directory: Path, message_id: str, *, raw: bool = False) -> int:
    """Print the envelope and the message with this ID; return the exit status."""
    problems = ProblemLog()
    wanted = message_id.strip().upper()
    found: Record | None = None
    for record in scan_spool(directory, problems):
        if record.id == wanted:
            found = record
            break
    if found is None:
        print(f"sink spool: message {message_id} not found in {directory}", file=sys.stderr)
        return 1

    out = sys.stdout.buffer
    if not raw:
        sys.stdout.write(envelope_text(found) + "\n")
        sys.stdout.flush()
    try:
        write_message(found, out)
    except SpoolDataError as error:
        out.flush()
        problems.report_text(f"{error}; message {found.id} is incomplete")
    out.flush()
    return problems.exit_status


def write_message(record: Record, out: BinaryIO) -> None:
    for piece in record.chunks():
        out.write(piece)


def envelope_text(record: Record) -> str:
    """Format the envelope as "Name: value" lines, one per field."""
    envelope = record.envelope
    reverse: dict[str, Any] = envelope.get("reverse_path") or {}
    lines = [
        f"ID: {record.id}",
        f"Received: {iso_time(record_time(record))}",
        f"Client: {client_text(envelope)}",
        f"HELO: {envelope.get('helo') if envelope.get('helo') is not None else '(none)'}",
        f"Protocol: {envelope.get('protocol') or '(none)'}",
        f"Reverse-Path: <{reverse.get('raw', '')}>{_params(reverse)}",
        f"Sender: {reverse.get('mailbox') or '<>'}",
    ]
    for forward in envelope.get("forward_paths") or []:
        mailbox = forward.get("mailbox", "")
        note = f" (mailbox {mailbox})" if forward.get("raw") != mailbox else ""
        lines.append(f"Forward-Path: <{forward.get('raw', '')}>{note}{_params(forward)}")
    quirks = record.meta.get("quirks") or {}
    if quirks:
        lines.append("Quirks: " + ", ".join(f"{name}={count}" for name, count in quirks.items()))
    for count_name in ("bare_lf", "bare_cr"):
        if record.meta.get(count_name):
            lines.append(f"{count_name}: {record.meta[count_name]}")
    lines.append(f"Size: {record.size}")
    lines.append(f"Segment: {record.segment.name}")
    return "\n".join(lines) + "\n"


def _params(path: dict[str, Any]) -> str:
    params = path.get("params") or {}
    words = [name if value is None else f"{name}={value}" for name, value in params.items()]
    return "".join(" " + word for word in words)
