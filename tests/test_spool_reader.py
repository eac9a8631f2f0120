"""Reading records back: corruption reports, open segments, lazy message reads."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from spool_helpers import FakeClock, envelope, store

from sink.spool import (
    SpoolCorruption,
    SpoolCorruptionWarning,
    SpoolDataError,
    SpoolReader,
    SpoolWriter,
    records,
)
from sink.spool.frames import COMMIT, DATA, SEAL, frame_header
from sink.spool.scan import FrameScanner


def frames_of(path: Path) -> list[Any]:
    with path.open("rb") as file:
        return list(FrameScanner(file, path.stat().st_size))


def two_sealed_segments(directory: Path) -> tuple[list[str], list[str], list[Path]]:
    """Write three messages into each of two sealed segments."""
    clock = FakeClock()
    writer = SpoolWriter(directory, 0, segment_age=10, clock=clock)
    first = [store(writer, n, b"first segment %d" % n) for n in range(3)]
    clock.now += 11
    second = [store(writer, n, b"second segment %d" % n) for n in range(3, 6)]
    writer.close()
    segments = sorted(directory.iterdir())
    assert [p.suffix for p in segments] == [".seg", ".seg"]
    return first, second, segments


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x20
    path.write_bytes(bytes(data))


def test_flipped_byte_reported_and_next_segment_read(tmp_path: Path) -> None:
    first, second, segments = two_sealed_segments(tmp_path)
    second_data = [f for f in frames_of(segments[0]) if f.type == DATA][1]
    flip_byte(segments[0], second_data.payload_offset + 3)
    problems: list[SpoolCorruption] = []

    found = [r.id for r in records(tmp_path, on_error=problems.append)]

    assert found == first[:1] + second
    assert len(problems) == 1
    assert problems[0].segment == segments[0]
    assert problems[0].offset == second_data.offset
    assert "checksum mismatch" in problems[0].reason
    assert segments[0].name in str(problems[0])


def test_corruption_warning_without_callback(tmp_path: Path) -> None:
    first, second, segments = two_sealed_segments(tmp_path)
    flip_byte(segments[0], 8 + 5)

    with pytest.warns(SpoolCorruptionWarning, match="checksum mismatch"):
        found = [r.id for r in records(tmp_path)]

    assert found == second


def test_reader_collects_errors(tmp_path: Path) -> None:
    _, second, segments = two_sealed_segments(tmp_path)
    flip_byte(segments[0], 8 + 5)
    reader = SpoolReader(tmp_path, on_error=lambda problem: None)

    found = [r.id for r in reader]

    assert found == second
    assert [e.offset for e in reader.errors] == [8]


def test_sealed_segment_without_seal_frame_reported(tmp_path: Path) -> None:
    first, second, segments = two_sealed_segments(tmp_path)
    seal = frames_of(segments[0])[-1]
    assert seal.type == SEAL
    os.truncate(segments[0], seal.offset)
    problems: list[SpoolCorruption] = []

    found = [r.id for r in records(tmp_path, on_error=problems.append)]

    assert found == first + second
    assert [(p.segment, p.reason) for p in problems] == [
        (segments[0], "sealed segment has no seal frame")
    ]


def test_bad_magic_reported(tmp_path: Path) -> None:
    _, second, segments = two_sealed_segments(tmp_path)
    flip_byte(segments[0], 0)
    problems: list[SpoolCorruption] = []

    found = [r.id for r in records(tmp_path, on_error=problems.append)]

    assert found == second
    assert problems[0].reason == "not a segment file: bad magic"


def test_other_files_ignored(tmp_path: Path) -> None:
    first, second, _ = two_sealed_segments(tmp_path)
    (tmp_path / "seg-00000000000000000001-w000.torn").write_bytes(b"junk")
    (tmp_path / "seg-00000000000000000002-w000.open.bad").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "subdir").mkdir()

    assert [r.id for r in records(tmp_path)] == first + second


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="spool directory not found"):
        list(records(tmp_path / "missing"))


def test_open_segment_with_partial_frame_read_quietly(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    ids = [store(writer, n, b"message %d" % n) for n in range(3)]
    in_flight = writer.begin(envelope(9))
    in_flight.write(b"x" * 70_000)  # goes straight to the file
    writer.flush()
    path = writer.segment_path
    assert path is not None
    # Half of a frame, as a reader may see it in the middle of a write.
    with path.open("ab") as file:
        file.write(b"\x12\x34\x56\x78D\x00\x00\x00\x04\x00")
    problems: list[SpoolCorruption] = []

    found = [r.id for r in records(tmp_path, on_error=problems.append)]

    assert found == ids
    assert problems == []
    in_flight.abort()


def test_reading_while_writer_appends_and_rotates(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0, segment_bytes=8 * 1024, fsync="never")
    acknowledged: list[str] = []
    stop = threading.Event()

    def write_loop() -> None:
        n = 0
        while not stop.is_set() and n < 20_000:
            message_id = store(writer, n, b"%d " % n * 20)
            writer.flush()
            acknowledged.append(message_id)
            n += 1

    thread = threading.Thread(target=write_loop)
    thread.start()
    try:
        for _ in range(20):
            seen_before = len(acknowledged)
            problems: list[SpoolCorruption] = []
            found = [r.id for r in records(tmp_path, on_error=problems.append)]
            seen_after = list(acknowledged)
            assert problems == []
            assert len(found) >= seen_before
            # The writer thread flushes a message before it appends the ID to the list.
            assert len(found) <= len(seen_after) + 1
            assert found[: len(seen_after)] == seen_after[: len(found)]
    finally:
        stop.set()
        thread.join()
    writer.close()

    final = list(records(tmp_path))
    assert [r.id for r in final] == acknowledged
    assert all(r.message() == b"%d " % r.meta["n"] * 20 for r in final[::101])


def test_record_readable_after_its_segment_is_sealed(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    store(writer, 1, b"hello")
    writer.flush()
    [record] = list(records(tmp_path))
    assert record.segment.suffix == ".open"

    writer.close()

    assert not record.segment.exists()
    assert record.message() == b"hello"


def test_chunks_bounded_and_complete(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    data = os.urandom(3 * 1024 * 1024 + 17)
    txn = writer.begin(envelope(1))
    view = memoryview(data)
    for start in range(0, len(data), 1_000_000):
        txn.write(view[start : start + 1_000_000])
    txn.commit({})
    writer.close()
    [record] = list(records(tmp_path))

    pieces = list(record.chunks(block_size=100_000))

    assert b"".join(pieces) == data
    assert max(map(len, pieces)) <= 100_000
    assert record.size == len(data)
    with pytest.raises(ValueError):
        list(record.chunks(block_size=0))


def test_chunks_detect_change_after_scan(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    store(writer, 1, b"original text")
    writer.close()
    [record] = list(records(tmp_path))
    [path] = tmp_path.iterdir()
    data_frame = [f for f in frames_of(path) if f.type == DATA][0]

    flip_byte(path, data_frame.payload_offset)

    with pytest.raises(SpoolDataError, match="checksum mismatch"):
        record.message()


def test_structural_problem_reported_and_skipped(tmp_path: Path) -> None:
    """A valid frame for a transaction that was never begun is reported, reading goes on."""
    writer = SpoolWriter(tmp_path, 0)
    first = store(writer, 1, b"one")
    second = store(writer, 2, b"two")
    writer.close()
    [path] = tmp_path.iterdir()
    data = path.read_bytes()
    second_commit = [f for f in frames_of(path) if f.type == COMMIT][1]
    stray = b'{"id":"STRAY"}'
    path.write_bytes(
        data[: second_commit.offset]
        + frame_header(COMMIT, 77, stray)
        + stray
        + data[second_commit.offset :]
    )
    problems: list[SpoolCorruption] = []

    found = [r.id for r in records(tmp_path, on_error=problems.append)]

    assert found == [first, second]
    assert [(p.offset, p.reason) for p in problems] == [
        (second_commit.offset, "commit frame for transaction 77, never begun")
    ]
