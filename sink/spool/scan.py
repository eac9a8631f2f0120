"""Frame scanning: read the valid frames of a segment file up to the first invalid one.

Theory of operation
-------------------
`FrameScanner` walks a segment from just after the magic to a byte limit (the file size, or
the size seen when an open segment was opened, so a segment that is still growing is read as a
stable prefix). For each frame it checks, in order: a complete header, a length within
`MAX_PAYLOAD`, a complete payload, the CRC, and a known type. The first frame that fails a check
ends the scan. Then `end` is the offset just past the last valid frame, and `error` gives the
reason. Whether that is a torn tail or corruption is for the caller to decide.

D payloads are checked in blocks of `READ_BLOCK` bytes and not kept unless asked for, so
scanning a segment of large messages needs memory for one block, not one message.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from .frames import (
    DATA,
    FRAME_TYPES,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    header_crc,
    parse_header,
    type_name,
)

READ_BLOCK: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Frame:
    """One valid frame. `payload` is None for D frames unless the scanner keeps data."""

    offset: int
    type: int
    txn: int
    length: int
    payload: bytes | None

    @property
    def payload_offset(self) -> int:
        return self.offset + HEADER_SIZE

    @property
    def end(self) -> int:
        return self.offset + HEADER_SIZE + self.length


def open_segment(path: Path) -> BinaryIO:
    """Open a segment for reading. If an ``.open`` file was sealed meanwhile, open the ``.seg``."""
    try:
        return path.open("rb", buffering=READ_BLOCK)
    except FileNotFoundError:
        if path.suffix != ".open":
            raise
        return path.with_suffix(".seg").open("rb", buffering=READ_BLOCK)


def has_magic(file: BinaryIO) -> bool:
    """Check the first bytes of a segment file; leaves the position after the magic."""
    file.seek(0)
    return file.read(len(MAGIC)) == MAGIC


class FrameScanner:
    """Iterates the valid frames of one segment file between `start` and `limit`."""

    def __init__(
        self, file: BinaryIO, limit: int, *, start: int = len(MAGIC), keep_data: bool = False
    ) -> None:
        self.file = file
        self.limit = limit
        self.keep_data = keep_data
        self.end = start
        self.error: str | None = None

    def __iter__(self) -> Iterator[Frame]:
        file = self.file
        limit = self.limit
        position = self.end
        file.seek(position)
        while position < limit:
            if limit - position < HEADER_SIZE:
                self.error = f"short frame header: {limit - position} of {HEADER_SIZE} bytes"
                return
            header = file.read(HEADER_SIZE)
            if len(header) < HEADER_SIZE:
                self.error = "file ended before the frame header (it shrank while being read)"
                return
            fields = parse_header(header)
            length = fields.length
            if length > MAX_PAYLOAD:
                self.error = f"frame length {length} is above the 64 MiB maximum"
                return
            end = position + HEADER_SIZE + length
            if end > limit:
                self.error = (
                    f"short frame payload: {limit - position - HEADER_SIZE} of {length} bytes"
                )
                return

            if fields.type == DATA and not self.keep_data:
                payload = None
                crc = self._crc_of_next(length, header_crc(header))
            else:
                payload = file.read(length)
                crc = zlib.crc32(payload, header_crc(header)) if len(payload) == length else -1
            if crc < 0:
                self.error = "file ended inside the frame payload (it shrank while being read)"
                return
            if crc != fields.crc:
                self.error = (
                    f"checksum mismatch: frame says {fields.crc:08x}, contents give {crc:08x}"
                )
                return
            if fields.type not in FRAME_TYPES:
                self.error = f"unknown frame type {type_name(fields.type)}"
                return

            position = end
            self.end = end
            yield Frame(end - HEADER_SIZE - length, fields.type, fields.txn, length, payload)

    def _crc_of_next(self, length: int, crc: int) -> int:
        """Return the CRC chain over the next `length` bytes, or -1 if the file ends first."""
        remaining = length
        while remaining:
            block = self.file.read(min(remaining, READ_BLOCK))
            if not block:
                return -1
            crc = zlib.crc32(block, crc)
            remaining -= len(block)
        return crc
