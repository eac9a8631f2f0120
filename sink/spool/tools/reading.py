"""Shared reading code of the spool tools: segment scans, problem reports, headers, times."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any, BinaryIO, Final, TextIO

from sink.spool.assembly import AssembledRecord, RecordAssembler
from sink.spool.frames import MAGIC
from sink.spool.names import OPEN_SUFFIX, list_segments
from sink.spool.reader import Record, SpoolDataError
from sink.spool.scan import FrameScanner, has_magic, open_segment

# A header block longer than this is cut here, so a message without an empty line after its
# headers never gets read whole.
MAX_HEADER_BYTES: Final = 256 * 1024
HEADER_READ_BLOCK: Final = 64 * 1024
FIRST_HEAD_READ: Final = 8 * 1024


class ProblemLog:
    """Counts the problems a tool skipped and prints each one on standard error."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self.count = 0

    def report(self, segment: Path, offset: int, reason: str) -> None:
        self.report_text(f"{segment.name} at offset {offset}: {reason}")

    def report_text(self, text: str) -> None:
        self.count += 1
        stream = self.stream or sys.stderr
        print(f"sink spool: {text}", file=stream, flush=True)

    @property
    def exit_status(self) -> int:
        return 1 if self.count else 0


@dataclass(slots=True)
class SegmentSummary:
    """Counts and receive times of one segment file, for `sink spool ls`."""

    path: Path
    state: str  # "open" or "sealed"
    size: int
    records: int = 0
    message_bytes: int = 0
    first_received: float | None = None
    last_received: float | None = None
    problems: int = 0


def scan_spool(
    directory: Path,
    problems: ProblemLog,
    on_segment: Callable[[SegmentSummary], None] | None = None,
) -> Iterator[Record]:
    """Yield the committed records of every segment in `directory`, oldest segment first.

    Problems go to `problems`, and reading goes on with the next segment. `on_segment` gets
    each segment's summary after its last record was yielded.
    """
    if not directory.is_dir():
        raise FileNotFoundError(f"spool directory not found: {directory}")
    for path in list_segments(directory):
        yield from _scan_segment(path, problems, on_segment)


def _scan_segment(
    path: Path, problems: ProblemLog, on_segment: Callable[[SegmentSummary], None] | None
) -> Iterator[Record]:
    try:
        file = open_segment(path)
    except FileNotFoundError:
        return  # removed after the listing: there is nothing left to read
    with file:
        actual = Path(file.name)
        is_open = actual.suffix == OPEN_SUFFIX
        size = os.fstat(file.fileno()).st_size
        summary = SegmentSummary(actual, "open" if is_open else "sealed", size)
        before = problems.count
        if has_magic(file):
            yield from _scan_frames(file, summary, problems)
        elif not (is_open and size < len(MAGIC)):
            # An open segment shorter than the magic is being created; anything else is bad.
            problems.report(actual, 0, "not a segment file: bad magic; skipped the segment")
        summary.problems = problems.count - before
    if on_segment is not None:
        on_segment(summary)


def _scan_frames(file: BinaryIO, summary: SegmentSummary, problems: ProblemLog) -> Iterator[Record]:
    path = summary.path
    scanner = FrameScanner(file, summary.size)
    assembler = RecordAssembler()
    reported = 0
    for frame in scanner:
        assembled = assembler.feed(frame)
        for offset, reason in assembler.problems[reported:]:
            problems.report(path, offset, f"{reason}; skipped the frame")
        reported = len(assembler.problems)
        if assembled is None:
            continue
        record = ScannedRecord(path, assembled, file)
        summary.records += 1
        summary.message_bytes += record.size
        received = record_time(record)
        if received is not None:
            if summary.first_received is None:
                summary.first_received = received
            summary.last_received = received
        yield record

    if scanner.error is not None:
        skipped = summary.size - scanner.end
        if summary.state == "sealed":
            problems.report(
                path,
                scanner.end,
                f"{scanner.error}; skipped the last {skipped} bytes of the segment",
            )
        elif not writer_holds(file):
            problems.report(
                path,
                scanner.end,
                f"torn tail ({scanner.error}); skipped the last {skipped} bytes of the segment",
            )
        return
    if summary.state == "sealed":
        assembler.check_end()
        for offset, reason in assembler.problems[reported:]:
            problems.report(path, offset, reason)
        if assembler.seal is None:
            problems.report(path, scanner.end, "sealed segment has no seal frame")


class ScannedRecord(Record):
    """A record yielded by `scan_spool`, which can read its header block from the open scan file.

    Opening the segment again for each record, as `Record.chunks` does, fills a 1 MiB read
    buffer per record, which dominated `stats` and `export` on spools of small messages.
    """

    __slots__ = ("data_frames", "_scan_file")

    def __init__(self, segment: Path, assembled: AssembledRecord, scan_file: BinaryIO) -> None:
        super().__init__(segment, assembled)
        self.data_frames = assembled.data
        self._scan_file = scan_file

    def read_head(self, limit: int) -> Iterator[bytes]:
        """Yield the first octets of the message, at most `limit`, in blocks read with pread.

        The scan checked the CRC of these frames just before it yielded the record, so they are
        not checked again. After the scan has moved on to the next segment, this falls back to
        `chunks`, which opens the segment and checks each frame again.
        """
        if self._scan_file.closed:
            yield from self.chunks(HEADER_READ_BLOCK)
            return
        descriptor = self._scan_file.fileno()
        remaining = limit
        block = FIRST_HEAD_READ  # most header blocks fit, and a big message costs no 64 KiB read
        for offset, length in self.data_frames:
            start = 0
            while start < length and remaining > 0:
                size = min(length - start, block, remaining)
                block = HEADER_READ_BLOCK
                piece = os.pread(descriptor, size, offset + start)
                if len(piece) != size:
                    raise SpoolDataError(
                        f"{self.segment.name}: file ended inside the data frame at offset {offset}"
                    )
                yield piece
                start += size
                remaining -= size
            if remaining <= 0:
                return


def writer_holds(file: BinaryIO) -> bool:
    """Tell whether some process holds a `flock` on this open segment, without locking it.

    Reads /proc/locks, which lists "DEV:INODE"-style file keys, instead of trying a lock of its
    own, because a writer that creates a segment waits for its exclusive lock.
    """
    inode = os.fstat(file.fileno()).st_ino
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return True  # cannot tell, so treat the tail as a frame still being written
    suffix = f":{inode}"
    for line in lines:
        fields = line.split()
        # NOTE: this matches the inode number alone. A lock on a file with the same number on
        # another file system makes a real torn tail look like a frame still being written.
        if "FLOCK" in fields and any(field.endswith(suffix) for field in fields):
            return True
    return False


def record_time(record: Record) -> float | None:
    received = record.envelope.get("received")
    return float(received) if isinstance(received, int | float) else None


def iso_time(timestamp: float | None) -> str:
    """Format a Unix time as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z."""
    if timestamp is None:
        return "-"
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    """Parse an ISO 8601 date or date and time; a time without an offset is taken as UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def header_end(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """Find the empty line after the header block: (end of the headers, start of the body)."""
    if buffer.startswith(b"\r\n"):
        return 0, 2
    if buffer.startswith(b"\n"):
        return 0, 1
    crlf = buffer.find(b"\n\r\n")
    lf = buffer.find(b"\n\n")
    found = [(index + 1, index + 3) for index in (crlf,) if index >= 0]
    found += [(index + 1, index + 2) for index in (lf,) if index >= 0]
    return min(found) if found else None


def read_header_block(record: Record) -> bytes:
    """Read a message's header block, up to its empty line, without reading the body."""
    buffer = bytearray()
    if isinstance(record, ScannedRecord):
        pieces = record.read_head(MAX_HEADER_BYTES)
    else:
        pieces = record.chunks(HEADER_READ_BLOCK)
    try:
        for piece in pieces:
            buffer += piece
            end = header_end(buffer)
            if end is not None:
                return bytes(buffer[: end[0]])
            if len(buffer) >= MAX_HEADER_BYTES:
                return bytes(buffer[:MAX_HEADER_BYTES])
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()  # closes the segment file now, not when the generator is collected
    return bytes(buffer)


def parse_headers(block: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(block)


def header_text(value: Any) -> str:
    """Return a header value as text: undecodable bytes become U+FFFD, folding is removed."""
    text = str(value)
    if not text.isascii():
        # The parser decodes octets above 127 as surrogates (surrogateescape).
        try:
            text = text.encode("ascii", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:
            pass  # text that did not come from the parser, already decoded
    lines = text.splitlines()
    if len(lines) == 1:
        return lines[0].strip()
    return " ".join(part.strip() for part in lines)


def sender_text(envelope: dict[str, Any]) -> str:
    """Return the reverse-path mailbox, or <> for the null sender."""
    reverse = envelope.get("reverse_path") or {}
    return reverse.get("mailbox") or "<>"


def client_text(envelope: dict[str, Any]) -> str:
    client = envelope.get("client") or {}
    address = str(client.get("address", "?"))
    port = client.get("port", "?")
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class Progress:
    """A counter line on standard error, rewritten at most twice a second, only on a terminal."""

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.label = label
        self.records = 0
        self.bytes = 0
        self._next = time.monotonic() + 0.5

    def step(self, size: int) -> None:
        self.records += 1
        self.bytes += size
        if self.enabled and time.monotonic() >= self._next:
            self._next = time.monotonic() + 0.5
            megabytes = self.bytes / 1e6
            self.stream.write(f"\r{self.label}: {self.records} messages, {megabytes:.1f} MB ")
            self.stream.flush()

    def done(self) -> None:
        if self.enabled and self.records:
            self.stream.write("\r\033[K")
            self.stream.flush()
