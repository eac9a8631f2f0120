"""Write failures: a full disk or file size limit must fail only the affected messages.

Two fault sources are used. A quota wraps os.write and os.writev for files under the test
directory (short write, then ENOSPC). A real RLIMIT_FSIZE in a subprocess that ignores SIGXFSZ
makes the kernel itself return short writes and EFBIG.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import envelope, read_ids, store

from sink.spool import (
    RecoveryAction,
    SpoolWriter,
    records,
    recover_segments,
    verify_spool,
)
from sink.spool.scan import FrameScanner
from sink.store import StoreError


class DiskQuota:
    """Lets `budget` more bytes reach files under `root`, then fails writes with ENOSPC."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root)
        self.budget: float = float("inf")
        self.failures = 0
        self._write = os.write
        self._writev = os.writev
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "writev", self.writev)

    def _limited(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)
        except OSError:
            return False

    def _allow(self, size: int) -> int:
        if self.budget <= 0:
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return int(min(size, self.budget))

    def write(self, fd: int, data: Any) -> int:
        if not self._limited(fd):
            return self._write(fd, data)
        allowed = self._allow(len(data))
        written = self._write(fd, memoryview(data)[:allowed])
        self.budget -= written
        return written

    def writev(self, fd: int, buffers: Sequence[Any]) -> int:
        if not self._limited(fd):
            return self._writev(fd, buffers)
        joined = b"".join(bytes(b) for b in buffers)
        return self.write(fd, joined)


def assert_frames_valid(path: Path) -> None:
    """The file must end exactly at a frame boundary: no partial frame may remain."""
    with path.open("rb") as file:
        scanner = FrameScanner(file, path.stat().st_size)
        for _ in scanner:
            pass
    assert scanner.error is None, f"{path.name}: {scanner.error} at offset {scanner.end}"


def test_commit_write_failure_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    kept_id = store(writer, 1, b"first message")
    path = writer.segment_path
    assert path is not None

    txn = writer.begin(envelope(2))
    txn.write(b"second message")
    quota.budget = 30  # part of the B frame only

    with pytest.raises(StoreError):
        txn.commit({})

    assert txn.state == "lost"
    assert writer.write_errors == 1
    assert writer.lost_commits == 1
    assert_frames_valid(path)
    assert read_ids(tmp_path) == [kept_id]

    writer.flush()  # the commit call reported the loss, so flush does not report it again

    quota.budget = float("inf")
    later = store(writer, 3, b"third message")
    writer.close()

    assert read_ids(tmp_path) == [kept_id, later]
    assert verify_spool(tmp_path).ok


def test_partial_push_keeps_complete_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    store(writer, 0, b"x")
    path = writer.segment_path
    assert path is not None
    before = path.stat().st_size

    in_flight = writer.begin(envelope(1))
    in_flight.write(b"in flight")
    dropped = writer.begin(envelope(2))
    dropped.write(b"committed and dropped")
    segment = writer._current
    assert segment is not None
    complete = len(segment.buffer)
    quota.budget = complete + 5  # the push stops 5 bytes into the C frame

    with pytest.raises(StoreError):
        dropped.commit({})

    assert dropped.state == "lost"
    assert path.stat().st_size == before + complete
    assert_frames_valid(path)
    assert in_flight.state == "active"

    quota.budget = float("inf")
    in_flight.write(b" and the rest")
    third = in_flight.commit({})
    writer.close()

    found = {r.id: r for r in records(tmp_path)}
    assert len(found) == 2
    assert found[third].message() == b"in flight and the rest"
    assert verify_spool(tmp_path).ok


def test_failed_push_fails_transactions_with_dropped_frames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    writer.begin(envelope(0)).abort()
    writer.flush()

    dropped = writer.begin(envelope(1))
    dropped.write(b"data of a transaction in flight")
    quota.budget = 0
    writer.flush()  # no commit was lost, so flush itself does not raise

    assert dropped.state == "failed"
    with pytest.raises(StoreError, match="No space left"):
        dropped.write(b"more")
    with pytest.raises(StoreError, match="No space left"):
        dropped.commit({})
    dropped.abort()

    quota.budget = float("inf")
    later = store(writer, 2, b"works again")
    writer.close()
    assert read_ids(tmp_path) == [later]
    assert verify_spool(tmp_path).ok


def test_large_chunk_write_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    kept_id = store(writer, 1, b"small")
    writer.flush()
    path = writer.segment_path
    assert path is not None
    size_before = path.stat().st_size

    txn = writer.begin(envelope(2))
    writer.flush()
    quota.budget = 50_000
    with pytest.raises(StoreError, match="No space left"):
        txn.write(os.urandom(100_000))

    assert txn.state == "failed"
    assert path.stat().st_size < size_before + 100
    assert_frames_valid(path)
    with pytest.raises(StoreError):
        txn.write(b"more")
    with pytest.raises(StoreError):
        txn.commit({})
    txn.abort()

    quota.budget = float("inf")
    big = os.urandom(200_000)
    later = store(writer, 3, big)
    writer.close()

    found = {r.id: r for r in records(tmp_path)}
    assert list(found) == [kept_id, later]
    assert found[later].message() == big
    assert verify_spool(tmp_path).ok


def test_write_error_logged_once_while_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    store(writer, 0, b"x")
    writer.flush()
    quota.budget = 0

    with caplog.at_level("INFO", logger="sink.spool"):
        for n in range(5):
            with pytest.raises(StoreError):
                store(writer, n, b"lost")
        quota.budget = float("inf")
        store(writer, 9, b"kept")

    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "No space left" in errors[0].getMessage()
    assert "succeed again" in caplog.text
    assert writer.write_errors == 5
    assert writer.lost_commits == 5
    writer.close()


def test_failed_truncate_abandons_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    kept_id = store(writer, 1, b"kept")
    writer.flush()
    broken = writer.segment_path
    assert broken is not None

    def failing_ftruncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "ftruncate", failing_ftruncate)
    in_flight = writer.begin(envelope(2))
    quota.budget = 20
    with pytest.raises(StoreError):
        store(writer, 3, b"lost")
    monkeypatch.undo()

    assert in_flight.state == "failed"
    assert writer.segment_path is None
    later = store(writer, 4, b"in a new segment")
    writer.close()

    assert broken.exists(), "the broken segment stays open for recovery"
    [result] = recover_segments(tmp_path)
    assert result.action is RecoveryAction.TRUNCATED
    assert result.torn_bytes == 20
    assert read_ids(tmp_path) == [kept_id, later]
    assert verify_spool(tmp_path).ok


def test_seal_failure_leaves_segment_for_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    kept_id = store(writer, 1, b"kept")
    writer.flush()
    path = writer.segment_path
    assert path is not None

    quota.budget = 0
    writer.close()

    assert path.exists()
    assert_frames_valid(path)
    [result] = recover_segments(tmp_path)
    assert result.action is RecoveryAction.SEALED
    assert read_ids(tmp_path) == [kept_id]
    assert verify_spool(tmp_path).ok


def test_segment_creation_failure_is_store_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    quota = DiskQuota(tmp_path, monkeypatch)
    writer = SpoolWriter(tmp_path, 0)
    quota.budget = 0

    with pytest.raises(StoreError, match="cannot create a spool segment"):
        writer.begin(envelope(1))
    assert list(tmp_path.iterdir()) == []

    quota.budget = float("inf")
    kept_id = store(writer, 2, b"x")
    writer.close()
    assert read_ids(tmp_path) == [kept_id]


FSIZE_SCRIPT = textwrap.dedent(
    """
    import json, resource, signal, sys
    from sink.spool import SpoolWriter, SpoolFlushError
    from sink.store import StoreError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
    writer = SpoolWriter(sys.argv[1], 0)
    stored, failed, errors = [], 0, set()
    for n in range(40):
        txn = writer.begin({"n": n})
        try:
            txn.write(bytes([65 + n % 26]) * 9000)
            message_id = txn.commit({"n": n})
            writer.flush()
            stored.append(message_id)
        except SpoolFlushError as exc:
            failed += 1
            errors.add(type(exc.cause).__name__ + ":" + str(exc.cause.errno))
        except StoreError as exc:
            failed += 1
            errors.add(str(exc))
            txn.abort()
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    for n in range(40, 45):
        txn = writer.begin({"n": n})
        txn.write(b"after the limit was raised")
        stored.append(txn.commit({"n": n}))
        writer.flush()
    writer.close()
    print(json.dumps({"stored": stored, "failed": failed, "errors": sorted(errors),
                      "write_errors": writer.write_errors}))
    """
)


def test_file_size_limit_in_subprocess(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    result = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(spool)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)

    assert outcome["failed"] > 0
    assert outcome["write_errors"] == outcome["failed"]
    assert any("27" in error for error in outcome["errors"]), outcome["errors"]  # EFBIG
    assert len(outcome["stored"]) == 45 - outcome["failed"]
    found = [r for r in records(spool)]
    assert [r.id for r in found] == outcome["stored"]
    assert all(r.message() == bytes([65 + r.meta["n"] % 26]) * 9000 for r in found[:-5])
    assert verify_spool(spool).ok
