"""SpoolWriter: the Store that appends each message as frames to the worker's segment files.

Theory of operation
-------------------
One writer belongs to one worker and is used from that worker's event loop thread, except for
`sync`, which may run in another thread. `begin` appends a B frame with the envelope, each
`write` a D frame with the chunk, `commit` a C frame with the meta dict and the new message ID.
Frames go into the open segment's bytearray buffer, and `commit` pushes that buffer to the file
in one ``os.write``, so the B, D and C frames of a small message cost one system call. The buffer
is also pushed when it grows past `PUSH_THRESHOLD`, on `flush` and on `tick`. Chunks of
`DIRECT_WRITE_MIN` bytes or more skip the buffer: the buffer is pushed first to keep the frame
order, then header and chunk go out in one ``os.writev`` without a copy.

Commit and sync contract
------------------------
* `commit` returns the message ID only after its C frame is in the file, and raises StoreError
  (the session replies 451) when the write failed. A returned ID therefore survives a crash of
  the process, but not of the machine, until `sync` covers it.
* `flush` pushes every buffer. The server does not need it for commits; it is there for
  callers that want aborts and partial frames out too. It raises `SpoolFlushError`, with the
  IDs in `message_ids`, if a write error dropped a C frame that had not yet been pushed.
  `SpoolTransaction.stored` reports whether a transaction's C frame reached the file.
* `commits_written` counts commits that reached the file. `sync` fsyncs every segment that
  contains commits not yet synced, then raises `commits_synced` to the `commits_written` value
  it saw before the fsync calls. It is safe to run in a thread while the loop thread keeps
  appending. For group commit, a server with fsync="always" reads `commits_written` after a
  commit and delays the 250 reply until `commits_synced` reaches that value. With
  fsync="interval" the server calls `sync` from a thread on a timer. With fsync="never", `sync`
  does nothing and `commits_synced` stays 0.

Rotation
--------
A segment is retired when it reaches `segment_bytes` or `segment_age` seconds (checked by
`begin` and by `tick`, which the server calls every second). New transactions then go to a new
segment, created on the next `begin`. Transactions in flight finish in the retired segment,
which is sealed when its last transaction ends: the next `flush` or `tick` appends the S frame,
fsyncs the file (unless fsync="never"), renames it from ``.open`` to ``.seg`` and closes it. The
seal runs on the loop thread, once per segment. A transaction that is never committed or
aborted keeps its segment open until `close`.

Write errors
------------
A failed write (ENOSPC, EFBIG, EIO, ...) is cut back to the last complete frame, so the segment
stays valid (see `sink.spool.segment`). Transactions with frames in the dropped bytes fail:
their later `write` and `commit` raise StoreError, and their `abort` does nothing. Other
transactions go on, and the writer keeps using the segment, so messages are stored again as
soon as the disk has room. `write_errors` counts failed writes, `lost_commits` committed
messages whose C frame was dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

import orjson

from sink.store import StoreError

from .frames import BEGIN, FORMAT_VERSION, MAX_PAYLOAD, SEAL
from .ids import MessageIdGenerator
from .names import MAX_WORKER, sealed_path
from .segment import PushFailure, SegmentFile
from .transaction import (
    ACTIVE,
    FAILED,
    LOST,
    PUSH_THRESHOLD,
    STORED,
    SpoolTransaction,
)

log = logging.getLogger("sink.spool")

FSYNC_POLICIES: Final = ("interval", "never", "always")
DEFAULT_SEGMENT_BYTES: Final = 256 * 1024 * 1024
DEFAULT_SEGMENT_AGE: Final = 300.0
MAX_TXN: Final = 0xFFFFFFFF


class SpoolFlushError(StoreError):
    """Committed messages whose C frame could not be written; their sessions must reply 451."""

    def __init__(self, message_ids: Iterable[str], cause: BaseException | None) -> None:
        self.message_ids = tuple(message_ids)
        self.cause = cause
        super().__init__(
            f"{len(self.message_ids)} committed messages could not be written to the spool: {cause}"
        )


class SpoolWriter:
    """The Store of one worker: appends messages to segment files in `directory`."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        worker: int,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        segment_age: float = DEFAULT_SEGMENT_AGE,
        fsync: str = "interval",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= worker <= MAX_WORKER:
            raise ValueError(f"worker index must be in 0..{MAX_WORKER}, got {worker}")
        if segment_bytes <= 0:
            raise ValueError(f"segment_bytes must be positive, got {segment_bytes}")
        if segment_age <= 0:
            raise ValueError(f"segment_age must be positive, got {segment_age}")
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, got {fsync!r}")

        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.worker = worker
        self.segment_bytes = segment_bytes
        self.segment_age = segment_age
        self.fsync = fsync
        self._clock = clock
        self._ids = MessageIdGenerator(worker)
        self._host = socket.gethostname()

        self._current: SegmentFile | None = None
        self._draining: list[SegmentFile] = []
        self._last_created_ns = 0
        self._seal_due = False
        self._closed = False
        self._failing = False
        self._lost_ids: list[str] = []
        self._lost_error: BaseException | None = None

        # The lock guards the counters and segment fields that `sync` reads from another
        # thread: `_unsynced`, `commits_written`, `commits_synced`, `write_errors`, and each
        # segment's `syncing`, `close_pending` and `closed`.
        self._lock = threading.Lock()
        self._unsynced: set[SegmentFile] = set()
        self.commits_written = 0
        self.commits_synced = 0
        self.write_errors = 0
        self.lost_commits = 0
        self.segments_sealed = 0
        self._finished_bytes = 0  # octets in segments this writer no longer writes

    @property
    def segment_path(self) -> Path | None:
        """The segment that new transactions go to, or None before the first `begin`."""
        return None if self._current is None else self._current.path

    # --- Store protocol -------------------------------------------------------------------

    def begin(self, envelope: dict[str, Any]) -> SpoolTransaction:
        """Start a message by appending a B frame with the envelope. Raises StoreError."""
        if self._closed:
            raise StoreError("spool writer is closed")
        try:
            payload = orjson.dumps(envelope)
        except TypeError as exc:
            raise StoreError(f"envelope cannot be encoded as JSON: {exc}") from exc
        if len(payload) > MAX_PAYLOAD:
            raise StoreError(f"envelope is {len(payload)} bytes, above 64 MiB")

        now = self._clock()
        segment = self._current
        if segment is None or self._rotation_due(segment, now):
            if segment is not None:
                self._retire(segment)
            segment = self._open_segment(now)

        number = segment.next_txn
        segment.next_txn = number + 1
        txn = SpoolTransaction(self, segment, number)
        segment.append(BEGIN, number, payload)
        segment.active[number] = txn
        if len(segment.buffer) >= PUSH_THRESHOLD:
            self._push(segment)
            if txn._state != ACTIVE:
                raise txn._inactive_error("begin")
        return txn

    # --- Server hooks ---------------------------------------------------------------------

    def flush(self) -> None:
        """Push all buffered frames to the OS and seal drained segments.

        Raises SpoolFlushError when commits since the previous call were lost.
        """
        current = self._current
        if current is not None and current.buffer:
            self._push(current)
        for segment in tuple(self._draining):
            if segment.buffer:
                self._push(segment)
        if self._seal_due:
            self._seal_drained()
        if self._lost_ids:
            lost = self._lost_ids
            cause = self._lost_error
            self._lost_ids = []
            self._lost_error = None
            raise SpoolFlushError(lost, cause)

    def tick(self) -> None:
        """Rotate by age or size, push the buffers and seal drained segments.

        The server calls this every second. Write errors here are logged and counted instead of
        raised, and a commit they drop is reported by the next `flush`.
        """
        if self._closed:
            return
        segment = self._current
        if segment is not None and self._rotation_due(segment, self._clock()):
            self._retire(segment)
        for segment in self._live_segments():
            if segment.buffer:
                self._push(segment)
        if self._seal_due:
            self._seal_drained()

    def sync(self) -> int:
        """Fsync the segments that hold commits not yet synced; return `commits_synced`.

        Safe to call from another thread. Raises StoreError when an fsync fails.
        """
        if self.fsync == "never":
            return self.commits_synced
        with self._lock:
            target = self.commits_written
            segments = list(self._unsynced)
            self._unsynced.clear()
            for segment in segments:
                segment.syncing += 1

        failure: tuple[SegmentFile, OSError] | None = None
        try:
            for segment in segments:
                try:
                    os.fsync(segment.fd)
                except OSError as exc:
                    failure = (segment, exc)
        finally:
            with self._lock:
                for segment in segments:
                    segment.syncing -= 1
                    if segment.close_pending and not segment.syncing:
                        segment.close()

        if failure is not None:
            failed_segment, error = failure
            with self._lock:
                self.write_errors += 1
            log.error("fsync of segment %s failed: %s", failed_segment.path, error)
            # NOTE: Linux reports a writeback error to one fsync only, so a retry may succeed
            # although data was lost. Commits of this round are not counted as synced.
            raise StoreError(
                f"fsync of spool segment {failed_segment.path.name} failed: {error}"
            ) from error

        with self._lock:
            if target > self.commits_synced:
                self.commits_synced = target
            return self.commits_synced

    def close(self) -> None:
        """Abort transactions still in flight (with a warning) and seal every segment."""
        if self._closed:
            return
        self._closed = True
        in_flight = [txn for segment in self._live_segments() for txn in segment.active.values()]
        for txn in in_flight:
            txn.abort()
        if in_flight:
            log.warning(
                "closing spool writer %d with %d transactions in flight; aborted them",
                self.worker,
                len(in_flight),
            )
        if self._current is not None:
            self._retire(self._current)
        self._seal_drained()
        if self._lost_ids:
            log.error(
                "closing spool writer %d: %d committed messages could not be written: %s",
                self.worker,
                len(self._lost_ids),
                ", ".join(self._lost_ids),
            )
            self._lost_ids = []

    # --- Segments -------------------------------------------------------------------------

    @property
    def bytes_written(self) -> int:
        """Octets this writer has written to segment files, in all its segments."""
        return self._finished_bytes + sum(segment.offset for segment in self._live_segments())

    @property
    def segments_open(self) -> int:
        """Segments this writer still has open: the current one and those draining."""
        return len(self._live_segments())

    def _live_segments(self) -> list[SegmentFile]:
        segments = list(self._draining)
        if self._current is not None:
            segments.append(self._current)
        return segments

    def _rotation_due(self, segment: SegmentFile, now: float) -> bool:
        return (
            segment.size >= self.segment_bytes
            or now - segment.created >= self.segment_age
            or segment.next_txn > MAX_TXN
        )

    def _open_segment(self, now: float) -> SegmentFile:
        created_ns = max(int(now * 1_000_000_000), self._last_created_ns + 1)
        header = orjson.dumps(
            {
                "format": FORMAT_VERSION,
                "worker": self.worker,
                "pid": os.getpid(),
                "created": now,
                "host": self._host,
            }
        )
        try:
            segment = SegmentFile.create(self.directory, created_ns, self.worker, now, header)
        except OSError as exc:
            with self._lock:
                self.write_errors += 1
            log.error("cannot create a segment in %s: %s", self.directory, exc)
            raise StoreError(f"cannot create a spool segment in {self.directory}: {exc}") from exc
        if self.fsync != "never":
            self._sync_directory()
        self._last_created_ns = segment.created_ns
        self._current = segment
        log.info("opened segment %s", segment.path.name)
        return segment

    def _retire(self, segment: SegmentFile) -> None:
        """Send new transactions elsewhere; seal now if idle, else when the last one ends."""
        if self._current is segment:
            self._current = None
        if segment.active:
            segment.retired = True
            self._draining.append(segment)
        else:
            self._seal(segment)

    def _seal_drained(self) -> None:
        self._seal_due = False
        for segment in tuple(self._draining):
            if not segment.active:
                self._draining.remove(segment)
                self._seal(segment)

    def _seal(self, segment: SegmentFile) -> None:
        pending = segment.unpushed_commits
        summary = {
            "records": segment.records + len(pending),
            "bytes": segment.message_bytes + sum(txn.size for txn in pending),
            "sealed": self._clock(),
        }
        segment.append(SEAL, 0, orjson.dumps(summary))
        if not self._push(segment):
            log.error("cannot seal segment %s; leaving it open for recovery", segment.path)
            self._abandon(segment)
            return
        path = sealed_path(segment.path)
        try:
            if self.fsync != "never":
                os.fsync(segment.fd)
            os.rename(segment.path, path)
        except OSError as exc:
            with self._lock:
                self.write_errors += 1
            log.error("cannot seal segment %s: %s; leaving it open for recovery", segment.path, exc)
            self._abandon(segment)
            return
        if self.fsync != "never":
            self._sync_directory()
        with self._lock:
            self._unsynced.discard(segment)
            segment.close()
        self.segments_sealed += 1
        self._finished_bytes += segment.offset
        log.info(
            "sealed segment %s: %d records, %d message bytes",
            path.name,
            summary["records"],
            summary["bytes"],
        )

    def _abandon(self, segment: SegmentFile) -> None:
        """Stop using a segment that cannot be written or sealed; recovery will seal it."""
        if segment.closed or segment.close_pending:
            return
        if self._current is segment:
            self._current = None
        if segment in self._draining:
            self._draining.remove(segment)
        self._finished_bytes += segment.offset
        for txn in segment.active.values():
            txn._state = FAILED
            txn.error = OSError("the segment was abandoned after a write error")
        segment.active.clear()
        try:
            os.fsync(segment.fd)
        except OSError as exc:
            log.error("fsync of abandoned segment %s failed: %s", segment.path, exc)
        with self._lock:
            self._unsynced.discard(segment)
            segment.close()

    def _sync_directory(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            with self._lock:
                self.write_errors += 1
            log.error("fsync of spool directory %s failed: %s", self.directory, exc)

    # --- Pushing frames -------------------------------------------------------------------

    def _push(self, segment: SegmentFile) -> bool:
        """Write the segment's buffer; returns False after a write error."""
        failure = segment.push()
        if failure is not None:
            self._handle_failure(segment, failure)
            return False
        if segment.unpushed_commits:
            self._mark_stored(segment, segment.unpushed_commits)
            segment.unpushed_commits = []
        if self._failing:
            self._failing = False
            log.info("spool writes to %s succeed again", segment.path.name)
        return True

    def _write_large(self, txn: SpoolTransaction, chunk: memoryview | bytes) -> None:
        """Write a chunk as D frames straight from the caller's buffer, in 64 MiB pieces."""
        segment = txn._segment
        if segment.buffer:
            self._push(segment)
            if txn._state != ACTIVE:
                raise txn._inactive_error("write to")
        with memoryview(chunk) as view:
            for start in range(0, len(view), MAX_PAYLOAD):
                with view[start : start + MAX_PAYLOAD] as piece:
                    failure = segment.write_direct(txn.number, piece)
                    size = len(piece)
                if failure is not None:
                    self._handle_failure(segment, failure)
                    raise txn._inactive_error("write to")
                txn.size += size

    def _mark_stored(self, segment: SegmentFile, commits: list[SpoolTransaction]) -> None:
        for txn in commits:
            txn._state = STORED
            segment.message_bytes += txn.size
        segment.records += len(commits)
        with self._lock:
            self.commits_written += len(commits)
            self._unsynced.add(segment)

    def _forget_lost(self, message_id: str) -> None:
        """Drop a lost commit from the list `flush` reports, once its commit call raised."""
        try:
            self._lost_ids.remove(message_id)
        except ValueError:
            pass

    def _handle_failure(self, segment: SegmentFile, failure: PushFailure) -> None:
        """Fail the transactions whose frames a failed write dropped."""
        dropped = failure.dropped_txns
        stored: list[SpoolTransaction] = []
        lost: list[str] = []
        for txn in segment.unpushed_commits:
            if txn.number in dropped:
                txn._state = LOST
                txn.error = failure.error
                lost.append(txn.message_id or "")
            else:
                stored.append(txn)
        segment.unpushed_commits = []
        if stored:
            self._mark_stored(segment, stored)

        failed = 0
        for number in dropped:
            txn = segment.active.pop(number, None)
            if txn is not None:
                txn._state = FAILED
                txn.error = failure.error
                failed += 1
        if segment.retired and not segment.active:
            self._seal_due = True

        self._lost_ids.extend(lost)
        self._lost_error = failure.error
        self.lost_commits += len(lost)
        with self._lock:
            self.write_errors += 1
        if not self._failing:
            self._failing = True
            log.error(
                "spool write to %s failed: %s; %d transactions failed, %d committed messages lost",
                segment.path.name,
                failure.error,
                failed,
                len(lost),
            )
        else:
            log.debug("spool write to %s failed again: %s", segment.path.name, failure.error)
        if failure.broken:
            self._abandon(segment)
