"""verify_spool: per-segment reports and the verdict behind `sink spool verify`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from spool_helpers import FakeClock, envelope, store

from sink.spool import SpoolWriter, recover_segments, verify_spool
from sink.spool.frames import SEAL, frame_header
from sink.spool.scan import FrameScanner


def frames_of(path: Path) -> list[Any]:
    with path.open("rb") as file:
        return list(FrameScanner(file, path.stat().st_size, keep_data=True))


def sealed_spool(directory: Path, segments: int = 2, per_segment: int = 3) -> list[Path]:
    clock = FakeClock()
    writer = SpoolWriter(directory, 0, segment_age=10, clock=clock)
    for s in range(segments):
        for n in range(per_segment):
            store(writer, n, b"segment %d message %d" % (s, n))
        clock.now += 11
    writer.close()
    return sorted(directory.iterdir())


def test_clean_spool_is_ok(tmp_path: Path) -> None:
    paths = sealed_spool(tmp_path)

    report = verify_spool(tmp_path)

    assert report.ok
    assert report.records == 6
    assert [s.path for s in report.segments] == paths
    first = report.segments[0]
    assert first.state == "sealed"
    assert first.frames == 1 + 3 * 3 + 1
    assert first.records == 3
    assert first.message_bytes == 3 * len(b"segment 0 message 0")
    assert first.size == paths[0].stat().st_size
    assert first.torn_offset is None
    assert first.corruption_offset is None
    assert not first.missing_seal
    lines = report.lines()
    assert lines[0] == f"spool directory: {tmp_path}"
    assert lines[1].startswith(paths[0].name)
    assert lines[1].endswith("ok")
    assert "records=3" in lines[1]
    assert lines[-1] == "2 segments, 6 records: ok"


def test_empty_directory_is_ok(tmp_path: Path) -> None:
    report = verify_spool(tmp_path)

    assert report.ok
    assert report.lines()[-1] == "0 segments, 0 records: ok"


def test_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="spool directory not found"):
        verify_spool(tmp_path / "missing")


def test_corrupt_sealed_segment(tmp_path: Path) -> None:
    paths = sealed_spool(tmp_path)
    data = bytearray(paths[1].read_bytes())
    offset = frames_of(paths[1])[4].offset
    data[offset + 17] ^= 0xFF
    paths[1].write_bytes(bytes(data))

    report = verify_spool(tmp_path)

    assert not report.ok
    assert report.segments[0].ok
    bad = report.segments[1]
    assert bad.corruption_offset == offset
    assert bad.corruption is not None
    assert "checksum mismatch" in bad.corruption
    assert any(f"offset {offset}" in line for line in report.lines())
    assert report.lines()[-1] == "2 segments, 4 records: 1 problem"


def test_missing_seal(tmp_path: Path) -> None:
    paths = sealed_spool(tmp_path)
    seal = frames_of(paths[0])[-1]
    os.truncate(paths[0], seal.offset)

    report = verify_spool(tmp_path)

    assert not report.ok
    assert report.segments[0].missing_seal
    assert "no seal frame" in report.segments[0].problems[0]


def test_seal_counts_checked(tmp_path: Path) -> None:
    paths = sealed_spool(tmp_path, segments=1)
    seal = frames_of(paths[0])[-1]
    assert seal.type == SEAL
    wrong = orjson.dumps({"records": 4, "bytes": 1, "sealed": 0.0})
    data = paths[0].read_bytes()[: seal.offset] + frame_header(SEAL, 0, wrong) + wrong
    paths[0].write_bytes(data)

    report = verify_spool(tmp_path)

    assert not report.ok
    problems = report.segments[0].problems
    assert any("counts 4 records, the segment contains 3" in p for p in problems)
    assert any("counts 1 message bytes" in p for p in problems)


def test_open_segment_of_live_writer_is_ok(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    store(writer, 1, b"committed")
    pending = writer.begin(envelope(2))
    pending.write(b"in flight")
    writer.flush()
    path = writer.segment_path
    assert path is not None
    with path.open("ab") as file:
        file.write(b"\x01\x02\x03")  # a frame being written

    report = verify_spool(tmp_path)

    assert report.ok, report.lines()
    segment = report.segments[0]
    assert segment.state == "open"
    assert segment.in_use
    assert segment.records == 1
    assert segment.unfinished == 1
    assert segment.torn_offset == path.stat().st_size - 3
    assert segment.torn_bytes == 3
    assert any("being written" in note for note in segment.notes)
    assert "open, in use" in report.lines()[1]
    pending.abort()
    writer.close()


def test_open_segment_of_dead_writer(tmp_path: Path) -> None:
    source = tmp_path / "source"
    writer = SpoolWriter(source, 0)
    store(writer, 1, b"committed")
    writer.flush()
    assert writer.segment_path is not None
    data = writer.segment_path.read_bytes()
    writer.close()
    spool = tmp_path / "spool"
    spool.mkdir()
    path = spool / "seg-00000000000000000001-w000.open"
    path.write_bytes(data + b"torn frame")

    report = verify_spool(spool)

    assert not report.ok
    segment = report.segments[0]
    assert not segment.in_use
    assert segment.torn_offset == len(data)
    assert segment.torn_bytes == len(b"torn frame")
    assert "starting the sink on this spool cuts it off" in segment.problems[0]

    recover_segments(spool)
    report = verify_spool(spool)
    assert report.ok
    assert report.records == 1
    assert len(report.torn_files) == 1


def test_clean_dead_open_segment_noted(tmp_path: Path) -> None:
    path = tmp_path / "seg-00000000000000000001-w000.open"
    header = orjson.dumps({"format": 1, "worker": 0, "pid": 1, "created": 0.0, "host": "h"})
    path.write_bytes(b"SINKSEG1" + frame_header(ord("H"), 0, header) + header)

    report = verify_spool(tmp_path)

    assert report.ok
    assert "recovery will seal it" in report.segments[0].notes[0]


def test_bad_file_fails_verification(tmp_path: Path) -> None:
    sealed_spool(tmp_path, segments=1)
    (tmp_path / "seg-00000000000000000001-w000.open.bad").write_bytes(b"SI")

    report = verify_spool(tmp_path)

    assert not report.ok
    assert report.bad_files == [tmp_path / "seg-00000000000000000001-w000.open.bad"]
    assert any("set aside by recovery" in line for line in report.lines())


def test_unsupported_format_reported(tmp_path: Path) -> None:
    path = tmp_path / "seg-00000000000000000001-w000.seg"
    header = orjson.dumps({"format": 2})
    seal = orjson.dumps({"records": 0, "bytes": 0, "sealed": 0.0})
    path.write_bytes(
        b"SINKSEG1"
        + frame_header(ord("H"), 0, header)
        + header
        + frame_header(SEAL, 0, seal)
        + seal
    )

    report = verify_spool(tmp_path)

    assert not report.ok
    assert "unsupported segment format 2" in report.segments[0].problems[0]
