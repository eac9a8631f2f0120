"""Recovery of open segments left by stopped or crashed writers."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
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
from sink.spool.frames import COMMIT, SEAL
from sink.spool.scan import FrameScanner


def frames_of(path: Path) -> list[Any]:
    with path.open("rb") as file:
        scanner = FrameScanner(file, path.stat().st_size, keep_data=True)
        return list(scanner)


def open_segment_snapshot(directory: Path) -> tuple[bytes, list[str]]:
    """Write messages and return the bytes of the open segment and the committed IDs.

    The segment ends with the frames of two more committed messages, interleaved with a
    transaction that never finishes, like a writer that crashed right after a flush.
    """
    writer = SpoolWriter(directory, 0, fsync="never")
    ids = [store(writer, n, f"message {n}".encode()) for n in range(3)]
    dangling = writer.begin(envelope(99))
    dangling.write(b"never committed")
    ids.append(store(writer, 3, b"x" * 40))
    dangling.write(b" still not")
    ids.append(store(writer, 4, b"last one"))
    writer.flush()
    path = writer.segment_path
    assert path is not None
    data = path.read_bytes()
    # Simulate the crash: the file stays .open, and the writer's lock goes with its descriptor.
    writer._abandon(writer._current)  # type: ignore[arg-type]
    path.unlink()
    return data, ids


def test_torn_tail_at_every_offset(tmp_path: Path) -> None:
    data, ids = open_segment_snapshot(tmp_path / "source")
    source = tmp_path / "source" / "full.seg.bin"
    source.write_bytes(data)
    frames = frames_of(source)
    commit_ends = [f.end for f in frames if f.type == COMMIT]
    start = frames[-12].offset  # inside the frames of the third committed message

    for cut in range(start, len(data)):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        path = directory / "seg-00000000000000000001-w000.open"
        path.write_bytes(data[:cut])

        [result] = recover_segments(directory)

        expected = [
            message_id for message_id, end in zip(ids, commit_ends, strict=True) if end <= cut
        ]
        assert read_ids(directory) == expected, f"cut at {cut}"
        assert result.records == len(expected)
        assert verify_spool(directory).ok, f"cut at {cut}"
        assert not path.exists()
        assert result.path == path.with_suffix(".seg")
        if result.action is RecoveryAction.TRUNCATED:
            assert result.torn_path is not None
            assert result.torn_offset is not None
            assert result.torn_path.read_bytes() == data[result.torn_offset : cut]
        else:
            assert result.action is RecoveryAction.SEALED
            assert result.torn_path is None
        shutil.rmtree(directory)


def test_clean_open_segment_is_sealed(tmp_path: Path) -> None:
    data, ids = open_segment_snapshot(tmp_path / "source")
    path = tmp_path / "seg-00000000000000000001-w000.open"
    path.write_bytes(data)

    [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.SEALED
    assert result.torn_bytes == 0
    sealed = path.with_suffix(".seg")
    last = frames_of(sealed)[-1]
    assert last.type == SEAL
    assert read_ids(tmp_path) == ids
    assert verify_spool(tmp_path).ok


def test_garbage_tail_is_saved_and_cut(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, ids = open_segment_snapshot(tmp_path / "source")
    path = tmp_path / "seg-00000000000000000001-w000.open"
    garbage = b"\x00" * 4096 + os.urandom(100)
    path.write_bytes(data + garbage)

    with caplog.at_level(logging.WARNING, logger="sink.spool"):
        [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.TRUNCATED
    assert result.torn_offset == len(data)
    assert result.torn_bytes == len(garbage)
    assert result.torn_path == tmp_path / "seg-00000000000000000001-w000.torn"
    assert result.torn_path.read_bytes() == garbage
    assert read_ids(tmp_path) == ids
    assert path.name in caplog.text
    assert f"cut {len(garbage)} bytes at offset {len(data)}" in caplog.text
    report = verify_spool(tmp_path)
    assert report.ok
    assert report.torn_files == [result.torn_path]


def test_flipped_byte_cuts_rest_into_torn_file(tmp_path: Path) -> None:
    data, ids = open_segment_snapshot(tmp_path / "source")
    source = tmp_path / "source" / "copy"
    source.write_bytes(data)
    second_commit = [f for f in frames_of(source) if f.type == COMMIT][1]
    damaged = bytearray(data)
    damaged[second_commit.offset + 20] ^= 0x01
    path = tmp_path / "seg-00000000000000000001-w000.open"
    path.write_bytes(bytes(damaged))

    [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.TRUNCATED
    assert result.torn_offset == second_commit.offset
    assert result.reason is not None
    assert "checksum mismatch" in result.reason
    assert result.torn_path is not None
    assert result.torn_path.read_bytes() == bytes(damaged[second_commit.offset :])
    assert read_ids(tmp_path) == ids[:1]
    assert verify_spool(tmp_path).ok


@pytest.mark.parametrize(
    "content", [b"", b"SINK", b"NOTASEGMENT-AT-ALL"], ids=["empty", "short", "bad-magic"]
)
def test_unreadable_file_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    path = tmp_path / "seg-00000000000000000001-w000.open"
    path.write_bytes(content)

    with caplog.at_level(logging.ERROR, logger="sink.spool"):
        [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.BAD
    assert result.path == tmp_path / "seg-00000000000000000001-w000.open.bad"
    assert result.path.read_bytes() == content
    assert not path.exists()
    assert "not readable" in caplog.text
    assert list(records(tmp_path)) == []
    assert not verify_spool(tmp_path).ok


def test_segment_already_sealed_but_not_renamed(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "source", 0)
    ids = [store(writer, n, b"m") for n in range(3)]
    writer.close()
    [sealed] = (tmp_path / "source").iterdir()
    path = tmp_path / sealed.name.replace(".seg", ".open")
    path.write_bytes(sealed.read_bytes())

    [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.RENAMED
    assert path.with_suffix(".seg").read_bytes() == sealed.read_bytes()
    assert read_ids(tmp_path) == ids
    assert verify_spool(tmp_path).ok


def test_frames_after_seal_are_cut(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "source", 0)
    ids = [store(writer, n, b"m") for n in range(2)]
    writer.close()
    [sealed] = (tmp_path / "source").iterdir()
    data = sealed.read_bytes()
    first_frame_after_magic = data[8 : 8 + 16 + int.from_bytes(data[20:24], "little")]
    path = tmp_path / sealed.name.replace(".seg", ".open")
    path.write_bytes(data + first_frame_after_magic)

    [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.TRUNCATED
    assert result.reason == "frames after the seal frame"
    assert result.torn_offset == len(data)
    assert read_ids(tmp_path) == ids
    assert verify_spool(tmp_path).ok


def test_segment_of_live_writer_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = SpoolWriter(tmp_path, 0)
    message_id = store(writer, 1, b"m")
    writer.flush()
    path = writer.segment_path
    assert path is not None
    before = path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="sink.spool"):
        [result] = recover_segments(tmp_path)

    assert result.action is RecoveryAction.IN_USE
    assert path.read_bytes() == before
    assert "locked by a running writer" in caplog.text
    writer.close()
    assert read_ids(tmp_path) == [message_id]


def test_worker_filter(tmp_path: Path) -> None:
    data, _ = open_segment_snapshot(tmp_path / "source")
    mine = tmp_path / "seg-00000000000000000001-w003.open"
    other = tmp_path / "seg-00000000000000000002-w004.open"
    mine.write_bytes(data)
    other.write_bytes(data)

    results = recover_segments(tmp_path, worker=3)

    assert [r.segment for r in results] == [mine]
    assert other.exists()
    assert recover_segments(tmp_path, worker=3) == []
    assert [r.segment for r in recover_segments(tmp_path)] == [other]


def test_recovery_is_repeatable(tmp_path: Path) -> None:
    data, ids = open_segment_snapshot(tmp_path / "source")
    path = tmp_path / "seg-00000000000000000001-w000.open"
    path.write_bytes(data + b"torn")

    assert len(recover_segments(tmp_path)) == 1
    assert recover_segments(tmp_path) == []
    assert read_ids(tmp_path) == ids


def test_missing_directory_has_nothing_to_recover(tmp_path: Path) -> None:
    assert recover_segments(tmp_path / "missing") == []


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys
    from sink.spool import SpoolWriter

    writer = SpoolWriter(sys.argv[1], 0, fsync="never", segment_bytes=200_000)
    n = 0
    while True:
        txn = writer.begin({"n": n})
        txn.write(b"%d " % n * 50)
        message_id = txn.commit({"n": n})
        writer.flush()
        print(message_id, flush=True)
        n += 1
    """
)


def test_recovery_after_killed_writer(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(spool)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert process.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 20
    while len(acknowledged) < 3000 and time.monotonic() < deadline:
        acknowledged.append(process.stdout.readline().decode().strip())
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stdout.close()

    results = recover_segments(spool)

    assert len(acknowledged) == 3000
    assert [r.action for r in results] in ([RecoveryAction.SEALED], [RecoveryAction.TRUNCATED])
    found = list(records(spool))
    stored = [r.id for r in found]
    assert stored[: len(acknowledged)] == acknowledged
    assert all(r.message() == b"%d " % r.meta["n"] * 50 for r in found[::50])
    report = verify_spool(spool)
    assert report.ok, report.lines()
    assert len(report.segments) > 1
    assert all(segment.state == "sealed" for segment in report.segments)
