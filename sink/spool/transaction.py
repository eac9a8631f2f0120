"""SpoolTransaction: one message being appended to a segment by a `SpoolWriter`.

Theory of operation
-------------------
A transaction appends its B, D and C (or A) frames to the buffer of the segment it was begun
in, even after that segment is retired. Its state follows the frames: a committed transaction
becomes stored when its C frame reaches the file, and failed or lost when a write error drops
its frames (see the flush contract in `sink.spool.writer`). Buffer pushes, large writes and
error handling belong to the writer, which this class calls back.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from sink.store import StoreError

from .frames import ABORT, COMMIT, DATA, MAX_PAYLOAD
from .segment import SegmentFile

if TYPE_CHECKING:
    from .writer import SpoolWriter

DIRECT_WRITE_MIN: Final = 64 * 1024
PUSH_THRESHOLD: Final = 128 * 1024

# Transaction states.
ACTIVE: Final = 0
COMMITTED: Final = 1  # C frame in the buffer
STORED: Final = 2  # C frame in the file
ABORTED: Final = 3
FAILED: Final = 4  # a write error dropped some of its frames before commit
LOST: Final = 5  # committed, then a write error dropped its C frame
STATE_NAMES: Final = ("active", "committed", "stored", "aborted", "failed", "lost")


class SpoolTransaction:
    """One message being appended to a segment; implements `sink.store.Transaction`."""

    __slots__ = ("_writer", "_segment", "number", "size", "message_id", "error", "_state")

    def __init__(self, writer: SpoolWriter, segment: SegmentFile, number: int) -> None:
        self._writer = writer
        self._segment = segment
        self.number = number
        self.size = 0
        self.message_id: str | None = None
        self.error: BaseException | None = None
        self._state = ACTIVE

    @property
    def state(self) -> str:
        """One of active, committed, stored, aborted, failed, lost."""
        return STATE_NAMES[self._state]

    @property
    def stored(self) -> bool:
        """Whether the C frame has reached the segment file."""
        return self._state == STORED

    @property
    def segment_path(self) -> Path:
        return self._segment.path

    def write(self, chunk: memoryview | bytes) -> None:
        """Append message octets as a D frame. Keeps no reference to `chunk`."""
        if self._state != ACTIVE:
            raise self._inactive_error("write to")
        size = len(chunk)
        if not size:
            return
        segment = self._segment
        if size >= DIRECT_WRITE_MIN:
            self._writer._write_large(self, chunk)
            return
        segment.append(DATA, self.number, chunk)
        self.size += size
        if len(segment.buffer) >= PUSH_THRESHOLD:
            self._writer._push(segment)
            if self._state != ACTIVE:
                raise self._inactive_error("write to")

    def commit(self, meta: dict[str, Any]) -> str:
        """Write the C frame through to the segment file and return the new message ID.

        Raises StoreError when the write fails; the message is then not stored.
        """
        if self._state != ACTIVE:
            raise self._inactive_error("commit")
        writer = self._writer
        segment = self._segment
        message_id = writer._ids.next_id()
        try:
            payload = orjson.dumps({**meta, "id": message_id})
        except TypeError as exc:
            self.abort()
            raise StoreError(f"message meta data cannot be encoded as JSON: {exc}") from exc
        if len(payload) > MAX_PAYLOAD:
            self.abort()
            raise StoreError(f"message meta data is {len(payload)} bytes, above 64 MiB")

        segment.append(COMMIT, self.number, payload)
        del segment.active[self.number]
        segment.unpushed_commits.append(self)
        self._state = COMMITTED
        self.message_id = message_id
        if segment.retired and not segment.active:
            writer._seal_due = True

        # The C frame goes to the file now, so a 250 reply never names a message that a crash
        # or a later write error could still lose.
        writer._push(segment)
        if self._state == LOST:
            writer._forget_lost(message_id)  # reported here, so flush need not report it again
            raise self._inactive_error("commit")
        return message_id

    def abort(self) -> None:
        """Append an A frame. Does nothing unless the transaction is active. Never raises."""
        if self._state != ACTIVE:
            return
        segment = self._segment
        segment.append(ABORT, self.number, b"")
        del segment.active[self.number]
        self._state = ABORTED
        if segment.retired and not segment.active:
            self._writer._seal_due = True

    def _inactive_error(self, action: str) -> StoreError:
        if self._state in (FAILED, LOST):
            return StoreError(
                f"spool write failed for transaction {self.number} in {self._segment.path.name}: "
                f"{self.error}"
            )
        return StoreError(f"cannot {action} transaction {self.number}: it is {self.state}")
