"""One segment file open for appending: the frame buffer, pushes to the OS and undoing failures.

Theory of operation
-------------------
`SegmentFile` owns the file descriptor of one ``.open`` segment and a bytearray of encoded
frames that have not reached the file yet. `push` hands the buffer to the kernel with
``os.write``, retrying after short writes. Large data frames skip the buffer: `write_direct`
pushes the buffer and then writes the frame header and the caller's chunk with one
``os.writev``, so the payload is never copied.

A write can fail part way (ENOSPC, EFBIG, EIO). The file then contains the frames that were written
completely, maybe followed by part of one frame. `push` cuts the file back to the last complete
frame with ``os.ftruncate``, drops the rest of the buffer, and reports which transaction numbers
had frames in the dropped bytes, so the writer can fail exactly those transactions. The segment
stays valid and usable. If even the truncation fails, the segment is marked broken: the writer
stops using it and leaves it ``.open`` for recovery to cut the torn tail.

The writer holds an exclusive ``flock`` on each segment while it is open, so recovery can tell a
live segment from one left behind by a crashed process.

Closing is coordinated with `SpoolWriter.sync`, which may be running ``os.fsync`` on the
descriptor in another thread: while `syncing` is non-zero, `close` only marks the descriptor, and
the syncing thread closes it when it is done. Both sides change these fields under the writer's
lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .frames import DATA, HEADER_SIZE, MAGIC, SEGMENT_HEADER, frame_header, payload_length_at
from .names import segment_stem

Buffer = bytes | bytearray | memoryview

log = logging.getLogger("sink.spool")


class PartialWriteError(Exception):
    """A write stopped with an error after `written` bytes had reached the file."""

    def __init__(self, written: int, cause: OSError) -> None:
        super().__init__(written, cause)
        self.written = written
        self.cause = cause


@dataclass(frozen=True, slots=True)
class PushFailure:
    """The cost of a failed push: the error, the transactions whose frames were dropped, and
    whether the file could not be cut back to a frame boundary (`broken`)."""

    error: OSError
    dropped_txns: frozenset[int]
    broken: bool


def write_fully(fd: int, parts: Sequence[Buffer]) -> int:
    """Write all bytes of `parts` to `fd` in order, retrying after short writes.

    Returns the number of bytes written. Raises PartialWriteError, which carries the count of
    bytes that did reach the file, when a write fails.
    """
    total = sum(len(part) for part in parts)
    written = 0
    views: list[memoryview] = []
    try:
        pending = [memoryview(part) for part in parts]
        views.extend(pending)
        while written < total:
            try:
                if len(pending) == 1:
                    count = os.write(fd, pending[0])
                else:
                    count = os.writev(fd, pending)
            except OSError as exc:
                raise PartialWriteError(written, exc) from exc
            if count == 0:
                raise PartialWriteError(written, OSError(errno.EIO, "write returned 0 bytes"))
            written += count
            while pending and count >= len(pending[0]):
                count -= len(pending[0])
                pending.pop(0)
            if count:
                rest = pending[0][count:]
                views.append(rest)
                pending[0] = rest
    finally:
        # A traceback keeps this frame's locals alive, and a live view would stop the caller
        # from resizing its bytearray, so the views are released explicitly.
        for view in views:
            view.release()
    return written


def frame_boundary(buffer: Buffer, limit: int) -> int:
    """Return the end of the last complete frame in `buffer` that ends at or before `limit`."""
    position = 0
    size = len(buffer)
    while position + HEADER_SIZE <= size:
        end = position + HEADER_SIZE + payload_length_at(buffer, position)
        if end > limit:
            break
        position = end
    return position


def frame_txns(buffer: Buffer, start: int) -> set[int]:
    """Return the transaction numbers of the frames in `buffer` from offset `start` on."""
    txns: set[int] = set()
    position = start
    size = len(buffer)
    while position + HEADER_SIZE <= size:
        txns.add(int.from_bytes(buffer[position + 8 : position + 12], "little"))
        position += HEADER_SIZE + payload_length_at(buffer, position)
    return txns


class SegmentFile:
    """An open segment: its descriptor, the bytes pushed so far and the frames still buffered."""

    __slots__ = (
        "path",
        "fd",
        "created_ns",
        "created",
        "offset",
        "buffer",
        "active",
        "unpushed_commits",
        "next_txn",
        "records",
        "message_bytes",
        "retired",
        "broken",
        "syncing",
        "close_pending",
        "closed",
    )

    def __init__(self, path: Path, fd: int, created_ns: int, created: float) -> None:
        self.path = path
        self.fd = fd
        self.created_ns = created_ns
        self.created = created
        self.offset = 0
        self.buffer = bytearray()
        # Transactions in progress, by number, and committed ones whose C frame is still
        # buffered. The writer owns the objects in both; this class only keeps them.
        self.active: dict[int, Any] = {}
        self.unpushed_commits: list[Any] = []
        self.next_txn = 1
        self.records = 0
        self.message_bytes = 0
        self.retired = False
        self.broken = False
        self.syncing = 0
        self.close_pending = False
        self.closed = False

    @classmethod
    def create(
        cls, directory: Path, created_ns: int, worker: int, created: float, header: bytes
    ) -> SegmentFile:
        """Create, lock and start a new segment file with the magic and an H frame.

        Moves `created_ns` forward past any existing name. Raises OSError; on failure no file
        is left behind.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            path = directory / (segment_stem(created_ns, worker) + ".open")
            try:
                fd = os.open(path, flags, 0o644)
            except FileExistsError:
                created_ns += 1
                continue
            break
        segment = cls(path, fd, created_ns, created)
        try:
            # Blocking, because `verify_spool` may hold a shared lock for a moment.
            fcntl.flock(fd, fcntl.LOCK_EX)
            segment.buffer += MAGIC
            segment.append(SEGMENT_HEADER, 0, header)
            write_fully(fd, [segment.buffer])
        except (OSError, PartialWriteError) as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if isinstance(exc, PartialWriteError):
                raise exc.cause from exc
            raise
        segment.offset = len(segment.buffer)
        segment.buffer.clear()
        return segment

    @property
    def size(self) -> int:
        """Segment length in bytes, counting frames still in the buffer."""
        return self.offset + len(self.buffer)

    def append(self, frame_type: int, txn: int, payload: Buffer) -> None:
        """Add one frame to the buffer."""
        buffer = self.buffer
        buffer += frame_header(frame_type, txn, payload)
        buffer += payload

    def push(self) -> PushFailure | None:
        """Write the buffer to the file. Returns None on success, else what was lost."""
        buffer = self.buffer
        if not buffer:
            return None
        written = 0
        try:
            written = os.write(self.fd, buffer)
            if written < len(buffer):
                with memoryview(buffer) as whole, whole[written:] as rest:
                    written += write_fully(self.fd, [rest])
        except OSError as exc:
            return self._undo(0, exc)
        except PartialWriteError as exc:
            return self._undo(written + exc.written, exc.cause)
        self.offset += written
        buffer.clear()
        return None

    def write_direct(self, txn: int, chunk: Buffer) -> PushFailure | None:
        """Write one D frame straight from `chunk`; the buffer must be empty."""
        header = frame_header(DATA, txn, chunk)
        try:
            written = write_fully(self.fd, [header, chunk])
        except PartialWriteError as exc:
            error = exc.cause.with_traceback(None)
            if exc.written:
                self._truncate(self.offset, error)
            return PushFailure(error, frozenset({txn}), self.broken)
        self.offset += written
        return None

    def _undo(self, written: int, error: OSError) -> PushFailure:
        """Cut the file back to the last complete frame after a push stopped at `written`."""
        # The failure outlives this call (transactions keep the error), and a traceback would
        # keep every frame of the call chain alive, with the caller's buffers.
        error = error.with_traceback(None)
        buffer = self.buffer
        kept_end = frame_boundary(buffer, written)
        dropped = frame_txns(buffer, kept_end)
        if written > kept_end:
            self._truncate(self.offset + kept_end, error)
        self.offset += kept_end
        buffer.clear()
        return PushFailure(error, frozenset(dropped), self.broken)

    def _truncate(self, length: int, error: OSError) -> None:
        try:
            os.ftruncate(self.fd, length)
            os.lseek(self.fd, length, os.SEEK_SET)
        except OSError as exc:
            self.broken = True
            log.error(
                "cannot cut segment %s back to %d bytes after a failed write (%s): %s; "
                "leaving it open for recovery",
                self.path,
                length,
                error,
                exc,
            )

    def close(self) -> None:
        """Close the descriptor now, or when the running sync is done. Call under the lock."""
        if self.closed:
            return
        if self.syncing:
            self.close_pending = True
            return
        self.closed = True
        os.close(self.fd)
