"""`sink spool tail`: print records as they are committed, following rotation and new segments.

Theory of operation
-------------------
Every 0.2 s the directory is listed. The follower keys each segment by its name without the
state suffix, so the rename from .open to .seg keeps its place. Per segment, it keeps the offset
just past the last valid frame and a `RecordAssembler` with the transactions still in progress. A
poll scans from that offset to the current file size. An incomplete frame at the end of an open
segment is left for the next poll. A sealed segment is finished once read to its end, and its
state is dropped. At start, sealed segments are skipped and open ones are read without printing
(unless --from-start), so transactions in progress are printed when they commit.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final

from sink.spool.assembly import RecordAssembler
from sink.spool.frames import MAGIC
from sink.spool.names import OPEN_SUFFIX, list_segments, parse_segment_name
from sink.spool.reader import Record
from sink.spool.scan import FrameScanner, has_magic, open_segment

from .reading import ProblemLog, client_text, iso_time, record_time, sender_text, writer_holds

POLL_INTERVAL: Final = 0.2


@dataclass(slots=True)
class _Followed:
    offset: int = len(MAGIC)
    assembler: RecordAssembler = field(default_factory=RecordAssembler)
    reported: int = 0


class SpoolFollower:
    """Yields records committed to a spool directory, poll after poll."""

    def __init__(self, directory: Path, problems: ProblemLog) -> None:
        self.directory = directory
        self.problems = problems
        self.segments: dict[str, _Followed] = {}
        self.finished: set[str] = set()

    def skip_sealed(self) -> None:
        """Mark the sealed segments present now as read, so only later records are printed."""
        for path in list_segments(self.directory):
            name = parse_segment_name(path.name)
            if name is not None and name.sealed:
                self.finished.add(name.stem)

    def poll(self) -> Iterator[Record]:
        for path in list_segments(self.directory):
            name = parse_segment_name(path.name)
            if name is None or name.stem in self.finished:
                continue
            followed = self.segments.setdefault(name.stem, _Followed())
            yield from self._read(path, name.stem, followed)

    def _read(self, path: Path, stem: str, followed: _Followed) -> Iterator[Record]:
        try:
            file = open_segment(path)
        except FileNotFoundError:
            self._finish(stem)  # removed
            return
        with file:
            actual = Path(file.name)
            is_open = actual.suffix == OPEN_SUFFIX
            size = os.fstat(file.fileno()).st_size
            if followed.offset == len(MAGIC) and not has_magic(file):
                if not (is_open and size < len(MAGIC)):
                    self.problems.report(actual, 0, "not a segment file: bad magic")
                    self._finish(stem)
                return
            scanner = FrameScanner(file, size, start=followed.offset)
            assembler = followed.assembler
            for frame in scanner:
                assembled = assembler.feed(frame)
                for offset, reason in assembler.problems[followed.reported :]:
                    self.problems.report(actual, offset, f"{reason}; skipped the frame")
                followed.reported = len(assembler.problems)
                if assembled is not None:
                    yield Record(actual, assembled)
            followed.offset = scanner.end
            if scanner.error is None and not is_open:
                self._finish(stem)
            elif scanner.error is not None and (not is_open or not writer_holds(file)):
                kind = "" if not is_open else "torn tail: "
                self.problems.report(
                    actual, scanner.end, f"{kind}{scanner.error}; skipped the rest of the segment"
                )
                self._finish(stem)

    def _finish(self, stem: str) -> None:
        self.segments.pop(stem, None)
        self.finished.add(stem)


def tail_line(record: Record) -> str:
    envelope = record.envelope
    recipients = len(envelope.get("forward_paths") or [])
    return (
        f"{iso_time(record_time(record))}  {record.id}  {client_text(envelope)}  "
        f"<{sender_text(envelope) if sender_text(envelope) != '<>' else ''}>  "
        f"rcpt={recipients}  size={record.size}"
    )


def tail_spool(
    directory: Path,
    *,
    from_start: bool = False,
    exit_after: int | None = None,
    timeout: float | None = None,
) -> int:
    """Print committed records until a signal, `exit_after` records or `timeout` seconds."""
    problems = ProblemLog()
    follower = SpoolFollower(directory, problems)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if timeout is None else time.monotonic() + timeout
    printed = 0
    try:
        if not from_start:
            follower.skip_sealed()
            for _ in follower.poll():
                pass  # records committed before the start are not printed
        while not stopping:
            for record in follower.poll():
                sys.stdout.write(tail_line(record) + "\n")
                sys.stdout.flush()
                printed += 1
                if exit_after is not None and printed >= exit_after:
                    return problems.exit_status
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL)
    except BrokenPipeError:
        # The reader of standard output went away, as with `sink spool tail DIR | head`.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the flush at exit does not fail again
        os.close(devnull)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return problems.exit_status
