"""Spool verification: check every frame of every segment and report per segment.

Theory of operation
-------------------
`verify_spool` scans each segment in name order with `FrameScanner`, which checks the length,
checksum and type of every frame, and feeds the frames to `RecordAssembler`, which checks the
segment structure and compares the S frame's counts with the records found. It never changes a
file.

What counts as wrong (`SegmentReport.problems`, which make `VerifyReport.ok` false):

* a sealed (``.seg``) segment with an invalid frame, a structural problem or no S frame;
* an open segment with an invalid frame or structural problem while no writer holds its lock.
  Its writer died, and `recover_segments` will cut the torn tail and seal it;
* a file that recovery set aside as ``.bad``.

An open segment whose writer is alive may end in a frame being written, so that is reported as
a note only. A writer counts as alive while it holds the segment's ``flock``, which verify
tests with a non-blocking shared lock that it releases at once. So is an
open segment whose writer died but which ends cleanly, and any ``.torn`` file, which contains
bytes recovery already cut off.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .assembly import RecordAssembler
from .frames import MAGIC
from .names import BAD_SUFFIX, OPEN_SUFFIX, TORN_SUFFIX, list_segments
from .scan import FrameScanner, has_magic, open_segment


@dataclass(slots=True)
class SegmentReport:
    """The verification result of one segment file."""

    path: Path
    state: str  # "sealed" or "open"
    in_use: bool = False  # an open segment locked by a live writer
    size: int = 0
    frames: int = 0
    records: int = 0
    message_bytes: int = 0
    unfinished: int = 0  # transactions begun but neither committed nor aborted
    torn_offset: int | None = None  # open segment: where the invalid tail starts
    torn_bytes: int = 0
    corruption_offset: int | None = None  # sealed segment: offset of the first invalid frame
    corruption: str | None = None
    missing_seal: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """Return one line with the name, state, counts and verdict."""
        state = "open, in use" if self.in_use else self.state
        verdict = "ok" if self.ok else f"{len(self.problems)} problems"
        return (
            f"{self.path.name}  {state}  frames={self.frames} records={self.records} "
            f"message_bytes={self.message_bytes} size={self.size}  {verdict}"
        )


@dataclass(slots=True)
class VerifyReport:
    """The verification result of a spool directory."""

    directory: Path
    segments: list[SegmentReport] = field(default_factory=list)
    bad_files: list[Path] = field(default_factory=list)
    torn_files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad_files and all(segment.ok for segment in self.segments)

    @property
    def records(self) -> int:
        return sum(segment.records for segment in self.segments)

    @property
    def problems(self) -> list[str]:
        """Every problem, each prefixed with its file name."""
        found = [f"{segment.path.name}: {p}" for segment in self.segments for p in segment.problems]
        found += [
            f"{path.name}: set aside by recovery as unreadable; inspect and remove it"
            for path in self.bad_files
        ]
        return found

    def lines(self) -> list[str]:
        """Human-readable report: one line per segment, its problems and notes, a summary."""
        out = [f"spool directory: {self.directory}"]
        for segment in self.segments:
            out.append(segment.summary())
            out += [f"  problem: {problem}" for problem in segment.problems]
            out += [f"  note: {note}" for note in segment.notes]
        for path in self.bad_files:
            out.append(f"{path.name}  problem: set aside by recovery as unreadable")
        if self.torn_files:
            out.append(f"{len(self.torn_files)} torn tails saved by recovery (*{TORN_SUFFIX})")
        problems = len(self.problems)
        out.append(
            f"{_count(len(self.segments), 'segment')}, {_count(self.records, 'record')}: "
            + ("ok" if problems == 0 else _count(problems, "problem"))
        )
        return out


def _count(number: int, noun: str) -> str:
    """Return e.g. "1 record" or "2 records"."""
    return f"{number} {noun}" + ("" if number == 1 else "s")


def verify_spool(directory: str | os.PathLike[str]) -> VerifyReport:
    """Check every checksum in every segment of `directory` and report per segment.

    Raises FileNotFoundError when the directory does not exist.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"spool directory not found: {root}")
    report = VerifyReport(root)
    for path in list_segments(root):
        segment = _verify_segment(path)
        if segment is not None:
            report.segments.append(segment)
    for path in sorted(root.iterdir()):
        if path.name.endswith(BAD_SUFFIX):
            report.bad_files.append(path)
        elif TORN_SUFFIX in path.name:
            report.torn_files.append(path)
    return report


def _held_by_writer(file: BinaryIO) -> bool:
    try:
        fcntl.flock(file.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(file.fileno(), fcntl.LOCK_UN)
    return False


def _verify_segment(path: Path) -> SegmentReport | None:
    try:
        file = open_segment(path)
    except FileNotFoundError:
        return None  # removed after the listing
    with file:
        actual = Path(file.name)
        is_open = actual.suffix == OPEN_SUFFIX
        report = SegmentReport(actual, "open" if is_open else "sealed")
        report.in_use = is_open and _held_by_writer(file)
        report.size = size = os.fstat(file.fileno()).st_size

        if not has_magic(file):
            if report.in_use and size < len(MAGIC):
                report.notes.append("segment is being created")
            elif size < len(MAGIC):
                report.problems.append(f"file is {size} bytes, shorter than the magic")
            else:
                report.problems.append("not a segment file: bad magic")
            return report

        scanner = FrameScanner(file, size)
        assembler = RecordAssembler()
        for frame in scanner:
            assembler.feed(frame)
        assembler.check_end()
        _fill(report, scanner, assembler)
    return report


def _fill(report: SegmentReport, scanner: FrameScanner, assembler: RecordAssembler) -> None:
    report.frames = assembler.frames
    report.records = assembler.records
    report.message_bytes = assembler.message_bytes
    report.unfinished = assembler.unfinished
    report.problems += [f"offset {offset}: {reason}" for offset, reason in assembler.problems]

    if scanner.error is not None:
        if report.state == "open":
            report.torn_offset = scanner.end
            report.torn_bytes = report.size - scanner.end
            tail = f"{report.torn_bytes} bytes at offset {scanner.end} ({scanner.error})"
            if report.in_use:
                report.notes.append(f"incomplete frame, probably being written: {tail}")
            else:
                report.problems.append(
                    f"torn tail of {tail}; starting the sink on this spool cuts it off"
                )
        else:
            report.corruption_offset = scanner.end
            report.corruption = scanner.error
            report.problems.append(f"invalid frame at offset {scanner.end}: {scanner.error}")
    elif report.state == "sealed" and assembler.seal is None:
        report.missing_seal = True
        report.problems.append("sealed segment has no seal frame; it may have been truncated")

    if report.state == "open" and not report.in_use and scanner.error is None:
        report.notes.append("no writer holds this open segment; recovery will seal it")
    if report.unfinished:
        report.notes.append(
            f"{report.unfinished} transactions begun but not finished (not records)"
        )
