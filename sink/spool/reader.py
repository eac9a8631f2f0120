"""Reading records back from a spool directory, for tests and tools.

Theory of operation
-------------------
`SpoolReader` lists the segments of a directory in name order (which is creation order), scans
each one with `FrameScanner` and yields a `Record` for every C frame, so records come in commit
order within a segment. Memory stays flat: for transactions in progress only the offsets of
their D frames are kept, and a `Record` reads its octets from the file when asked
(`chunks`, `message`).

Sealed segments (``.seg``) must be intact: an invalid frame or a missing seal frame is reported
as a `SpoolCorruption` and reading goes on with the next segment. Open segments (``.open``) may
be in the middle of being written. So each is read up to the file size seen when it was opened,
and only up to its last complete valid frame. What follows is treated as not yet written and is
not reported. In both, a frame that breaks the segment structure (see `RecordAssembler`) is
reported and skipped.
Reading takes no locks and never blocks a writer. `sink.spool.verify` reports torn tails of
open segments.

Example::

    import sink.spool

    for record in sink.spool.records("./spool"):
        print(record.id, record.envelope["mail_from"], record.size)
        body = record.message()
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .assembly import AssembledRecord, RecordAssembler
from .frames import DATA, HEADER_SIZE, MAGIC, header_crc, parse_header
from .names import OPEN_SUFFIX, list_segments
from .scan import READ_BLOCK, FrameScanner, has_magic, open_segment


@dataclass(frozen=True, slots=True)
class SpoolCorruption:
    """A problem found while reading: the segment, the byte offset and what is wrong."""

    segment: Path
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.segment.name} at offset {self.offset}: {self.reason}"


class SpoolCorruptionWarning(UserWarning):
    """Issued for each `SpoolCorruption` when the reader has no `on_error` callback."""


class SpoolDataError(Exception):
    """A data frame no longer matches what the scan saw: the file changed under the reader."""


class Record:
    """One stored message: its ID, envelope, commit meta data and where its octets are."""

    __slots__ = ("id", "envelope", "meta", "size", "segment", "txn", "_data")

    def __init__(self, segment: Path, assembled: AssembledRecord) -> None:
        self.id: str = assembled.meta["id"]
        self.envelope: dict[str, Any] = assembled.envelope
        self.meta: dict[str, Any] = assembled.meta
        self.size: int = assembled.size
        self.segment = segment
        self.txn = assembled.txn
        self._data = assembled.data

    def __repr__(self) -> str:
        return f"Record(id={self.id!r}, size={self.size}, segment={self.segment.name!r})"

    def chunks(self, block_size: int = READ_BLOCK) -> Iterator[bytes]:
        """Yield the message octets in pieces of at most `block_size` bytes, read from the file.

        Each D frame's checksum is checked again; a mismatch raises SpoolDataError. For frames
        larger than `block_size`, the earlier pieces of that frame are yielded before the check.
        """
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        with open_segment(self.segment) as file:
            for offset, length in self._data:
                file.seek(offset - HEADER_SIZE)
                raw = file.read(HEADER_SIZE)
                header = parse_header(raw) if len(raw) == HEADER_SIZE else None
                if (
                    header is None
                    or header.type != DATA
                    or header.txn != self.txn
                    or header.length != length
                ):
                    raise SpoolDataError(
                        f"{self.segment.name} at offset {offset - HEADER_SIZE}: "
                        f"expected a data frame of transaction {self.txn}"
                    )
                crc = header_crc(raw)
                remaining = length
                while remaining:
                    piece = file.read(min(remaining, block_size))
                    if not piece:
                        raise SpoolDataError(
                            f"{self.segment.name}: file ended inside the data frame at offset "
                            f"{offset - HEADER_SIZE}"
                        )
                    crc = zlib.crc32(piece, crc)
                    remaining -= len(piece)
                    if remaining == 0 and crc != header.crc:
                        raise SpoolDataError(
                            f"{self.segment.name}: checksum mismatch in the data frame at "
                            f"offset {offset - HEADER_SIZE}"
                        )
                    yield piece

    def message(self) -> bytes:
        """Return the whole message. For big messages prefer `chunks`."""
        return b"".join(self.chunks())


class SpoolReader:
    """Iterates the records of a spool directory and collects the problems found on the way.

    Each problem is appended to `errors` and passed to `on_error`; without a callback, it is
    issued as a SpoolCorruptionWarning.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        on_error: Callable[[SpoolCorruption], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.on_error = on_error
        self.errors: list[SpoolCorruption] = []

    def __iter__(self) -> Iterator[Record]:
        if not self.directory.is_dir():
            raise FileNotFoundError(f"spool directory not found: {self.directory}")
        for path in list_segments(self.directory):
            yield from self._read_segment(path)

    def _report(self, segment: Path, offset: int, reason: str) -> None:
        problem = SpoolCorruption(segment, offset, reason)
        self.errors.append(problem)
        if self.on_error is not None:
            self.on_error(problem)
        else:
            warnings.warn(str(problem), SpoolCorruptionWarning, stacklevel=4)

    def _read_segment(self, path: Path) -> Iterator[Record]:
        try:
            file = open_segment(path)
        except FileNotFoundError:
            self._report(path, 0, "segment disappeared before it could be read")
            return
        with file:
            is_open = Path(file.name).suffix == OPEN_SUFFIX
            size = os.fstat(file.fileno()).st_size
            if not has_magic(file):
                # A writer creates a segment and writes its magic in two steps.
                if not (is_open and size < len(MAGIC)):
                    self._report(path, 0, "not a segment file: bad magic")
                return

            scanner = FrameScanner(file, size)
            assembler = RecordAssembler()
            reported = 0
            for frame in scanner:
                assembled = assembler.feed(frame)
                if len(assembler.problems) > reported:
                    for offset, reason in assembler.problems[reported:]:
                        self._report(path, offset, reason)
                    reported = len(assembler.problems)
                if assembled is not None:
                    yield Record(path, assembled)

            if is_open:
                return
            if scanner.error is not None:
                self._report(path, scanner.end, scanner.error)
                return
            assembler.check_end()
            for offset, reason in assembler.problems[reported:]:
                self._report(path, offset, reason)
            if assembler.seal is None:
                self._report(path, scanner.end, "sealed segment has no seal frame")


def records(
    directory: str | os.PathLike[str],
    *,
    on_error: Callable[[SpoolCorruption], None] | None = None,
) -> Iterator[Record]:
    """Yield every committed record in a spool directory, oldest segment first.

    See `SpoolReader` for how problems are reported.
    """
    return iter(SpoolReader(directory, on_error=on_error))
