"""Crash recovery: seal the ``.open`` segments that stopped writers left behind.

Theory of operation
-------------------
A writer that dies leaves its segment ``.open``, possibly ending in a torn frame. Recovery
scans each such segment (skipping any that a live writer still holds locked) up to the first
invalid frame, or to the end of an S frame if the writer got that far. The bytes after that
point are the torn tail. They are copied to ``<stem>.torn`` and fsynced before the segment is
truncated at the last good frame boundary, so nothing is destroyed without a copy. Recovery
then appends an S frame (unless one is there), fsyncs, and renames the segment to ``.seg``.
Transactions begun but never committed are simply not records; they need no repair.

Every step can be repeated: running recovery again after a crash in the middle finds either the
same tail, a clean end that needs an S frame, or an S frame that only needs the rename.

A file shorter than the magic or with a wrong magic is renamed to ``<name>.bad`` and logged as
an error.

Run recovery before the writers start, for example from the server's startup, either for the
whole directory or with `worker` for one worker's segments.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson

from .assembly import RecordAssembler
from .frames import MAGIC, SEAL, frame_header
from .names import BAD_SUFFIX, TORN_SUFFIX, list_segments, sealed_path
from .scan import READ_BLOCK, FrameScanner, has_magic

log = logging.getLogger("sink.spool")


class RecoveryAction(enum.StrEnum):
    """The action recovery took on one open segment."""

    SEALED = "sealed"  # the segment ended cleanly; an S frame was appended
    TRUNCATED = "truncated"  # a torn tail was cut off and saved; an S frame was appended
    RENAMED = "renamed"  # the segment already ended with an S frame; it was only renamed
    BAD = "bad"  # not a segment file (short or wrong magic); renamed to .bad
    IN_USE = "in_use"  # a live writer has the segment locked, so it was left alone
    FAILED = "failed"  # an OS error stopped recovery of this segment; see `reason`


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """The outcome of recovering one ``.open`` segment."""

    segment: Path  # the .open file as found
    path: Path  # where the file is now
    action: RecoveryAction
    records: int = 0
    frames: int = 0
    torn_offset: int | None = None
    torn_bytes: int = 0
    torn_path: Path | None = None
    reason: str | None = None


def recover_segments(
    directory: str | os.PathLike[str], worker: int | None = None
) -> list[RecoveryResult]:
    """Seal every ``.open`` segment in `directory`, or only those of `worker`.

    A missing directory has nothing to recover.
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    return [_recover(path) for path in list_segments(root, worker=worker, open_only=True)]


def _recover(path: Path) -> RecoveryResult:
    try:
        file = path.open("r+b", buffering=READ_BLOCK)
    except FileNotFoundError:
        # Sealed by its writer after the directory was listed.
        return RecoveryResult(path, sealed_path(path), RecoveryAction.IN_USE)
    except OSError as exc:
        log.error("cannot open segment %s for recovery: %s", path, exc)
        return RecoveryResult(path, path, RecoveryAction.FAILED, reason=str(exc))
    try:
        with file:
            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("segment %s is locked by a running writer; not recovering it", path)
                return RecoveryResult(path, path, RecoveryAction.IN_USE)
            if not has_magic(file):
                size = os.fstat(file.fileno()).st_size
                reason = (
                    f"file is {size} bytes, shorter than the magic"
                    if size < len(MAGIC)
                    else "bad magic"
                )
                file.close()
                return _set_aside(path, reason)
            return _seal_open_segment(path, file)
    except OSError as exc:
        log.error("recovery of segment %s failed: %s", path, exc)
        return RecoveryResult(path, path, RecoveryAction.FAILED, reason=str(exc))


def _set_aside(path: Path, reason: str) -> RecoveryResult:
    bad = path.with_name(path.name + BAD_SUFFIX)
    os.rename(path, bad)
    log.error("segment %s is not readable (%s); renamed it to %s", path, reason, bad.name)
    return RecoveryResult(path, bad, RecoveryAction.BAD, reason=reason)


def _seal_open_segment(path: Path, file: BinaryIO) -> RecoveryResult:
    size = os.fstat(file.fileno()).st_size
    scanner = FrameScanner(file, size)
    assembler = RecordAssembler()
    for frame in scanner:
        assembler.feed(frame)
        if frame.type == SEAL:
            break
    end = scanner.end

    torn_path = None
    reason = None
    if end < size:
        reason = scanner.error or "frames after the seal frame"
        torn_path = _save_tail(path, file, end, size)
        os.ftruncate(file.fileno(), end)

    if assembler.seal is None:
        summary = {
            "records": assembler.records,
            "bytes": assembler.message_bytes,
            "sealed": time.time(),
        }
        payload = orjson.dumps(summary)
        file.seek(end)
        file.write(frame_header(SEAL, 0, payload) + payload)
        file.flush()
    os.fsync(file.fileno())

    sealed = sealed_path(path)
    os.rename(path, sealed)
    _sync_directory(path.parent)

    if torn_path is not None:
        action = RecoveryAction.TRUNCATED
        log.warning(
            "recovered segment %s: cut %d bytes at offset %d (%s), saved them to %s; "
            "%d records kept",
            path.name,
            size - end,
            end,
            reason,
            torn_path.name,
            assembler.records,
        )
    elif assembler.seal is None:
        action = RecoveryAction.SEALED
        log.info(
            "sealed segment %s left open by a stopped writer: %d records",
            path.name,
            assembler.records,
        )
    else:
        action = RecoveryAction.RENAMED
        log.info("renamed segment %s, already sealed by its writer", path.name)
    return RecoveryResult(
        path,
        sealed,
        action,
        records=assembler.records,
        frames=assembler.frames,
        torn_offset=end if torn_path is not None else None,
        torn_bytes=size - end,
        torn_path=torn_path,
        reason=reason,
    )


def _save_tail(path: Path, file: BinaryIO, start: int, end: int) -> Path:
    """Copy bytes start..end of the segment to a new ``.torn`` file and fsync it."""
    stem = path.with_suffix("").name
    target = path.with_name(stem + TORN_SUFFIX)
    number = 0
    while True:
        try:
            out = target.open("xb")
            break
        except FileExistsError:
            number += 1
            target = path.with_name(f"{stem}{TORN_SUFFIX}.{number}")
    with out:
        file.seek(start)
        remaining = end - start
        while remaining:
            block = file.read(min(remaining, READ_BLOCK))
            if not block:
                break
            out.write(block)
            remaining -= len(block)
        out.flush()
        os.fsync(out.fileno())
    return target


def _sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
