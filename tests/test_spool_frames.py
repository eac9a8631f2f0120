"""Frame layout and frame scanning, checked against hand-built bytes."""

from __future__ import annotations

import io
import struct
import zlib

import pytest

from sink.spool.frames import (
    BEGIN,
    COMMIT,
    DATA,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    frame_header,
    parse_header,
)
from sink.spool.scan import READ_BLOCK, FrameScanner


def frame(kind: int, txn: int, payload: bytes) -> bytes:
    return frame_header(kind, txn, payload) + payload


def scan(data: bytes, *, keep_data: bool = False) -> tuple[list, FrameScanner]:
    scanner = FrameScanner(io.BytesIO(data), len(data), keep_data=keep_data)
    return list(scanner), scanner


def test_header_layout_matches_format() -> None:
    payload = b'{"mail_from":"a@example.test"}'
    header = frame_header(BEGIN, 0x01020304, payload)

    assert len(header) == HEADER_SIZE
    crc, kind, flags, reserved, txn, length = struct.unpack("<IBBHII", header)
    assert kind == ord("B")
    assert header[4:5] == b"B"
    assert flags == 0
    assert reserved == 0
    assert txn == 0x01020304
    assert header[8:12] == b"\x04\x03\x02\x01"
    assert length == len(payload)
    assert crc == zlib.crc32(payload, zlib.crc32(header[4:16]))


def test_crc_chains_header_and_payload() -> None:
    payload = b"message octets"
    header = frame_header(DATA, 5, payload)
    (crc,) = struct.unpack_from("<I", header)

    assert crc == zlib.crc32(header[4:16] + payload)


def test_parse_header_round_trip() -> None:
    header = parse_header(frame_header(COMMIT, 9, b"{}"))

    assert header.type == COMMIT
    assert header.txn == 9
    assert header.length == 2
    assert header.flags == 0
    assert header.reserved == 0


def test_scanner_reads_valid_frames() -> None:
    data = MAGIC + frame(BEGIN, 1, b"{}") + frame(DATA, 1, b"hello") + frame(COMMIT, 1, b"{}")
    frames, scanner = scan(data)

    assert [f.type for f in frames] == [BEGIN, DATA, COMMIT]
    assert [f.offset for f in frames] == [8, 8 + 18, 8 + 18 + 21]
    assert frames[1].payload is None
    assert frames[1].length == 5
    assert frames[1].payload_offset == 8 + 18 + HEADER_SIZE
    assert scanner.error is None
    assert scanner.end == len(data)


def test_scanner_keeps_data_when_asked() -> None:
    frames, _ = scan(MAGIC + frame(DATA, 1, b"hello"), keep_data=True)

    assert frames[0].payload == b"hello"


def test_scanner_checks_large_data_in_blocks() -> None:
    payload = bytes(range(256)) * (3 * READ_BLOCK // 256 + 7)
    good = MAGIC + frame(DATA, 1, payload)
    frames, scanner = scan(good)

    assert len(frames) == 1
    assert scanner.error is None

    bad = bytearray(good)
    bad[-1] ^= 0x40
    frames, scanner = scan(bytes(bad))
    assert frames == []
    assert scanner.error is not None
    assert "checksum mismatch" in scanner.error


def test_scanner_empty_segment_is_clean() -> None:
    frames, scanner = scan(MAGIC)

    assert frames == []
    assert scanner.error is None
    assert scanner.end == len(MAGIC)


GOOD = MAGIC + frame(BEGIN, 1, b"{}")


@pytest.mark.parametrize(
    ("tail", "reason"),
    [
        (frame(DATA, 1, b"abc")[:10], "short frame header"),
        (frame(DATA, 1, b"abcdef")[:-2], "short frame payload"),
        (struct.pack("<IBBHII", 0, DATA, 0, 0, 1, MAX_PAYLOAD + 1), "above the 64 MiB maximum"),
        (b"\x00" * 40, "checksum mismatch"),
        (frame(ord("Z"), 1, b"abc"), "unknown frame type 'Z'"),
    ],
    ids=["short-header", "short-payload", "bad-length", "bad-crc", "unknown-type"],
)
def test_scanner_stops_at_invalid_frame(tail: bytes, reason: str) -> None:
    frames, scanner = scan(GOOD + tail)

    assert len(frames) == 1
    assert scanner.end == len(GOOD)
    assert scanner.error is not None
    assert reason in scanner.error


def test_scanner_accepts_max_payload_length_in_header() -> None:
    header = struct.pack("<IBBHII", 0, DATA, 0, 0, 1, MAX_PAYLOAD)
    _, scanner = scan(GOOD + header)

    # The length is allowed; the payload is simply missing.
    assert scanner.error is not None
    assert "short frame payload" in scanner.error


def test_scanner_flipped_type_byte_is_checksum_mismatch() -> None:
    data = bytearray(GOOD + frame(DATA, 1, b"abc"))
    data[len(GOOD) + 4] = ord("C")
    _, scanner = scan(bytes(data))

    assert scanner.end == len(GOOD)
    assert scanner.error is not None
    assert "checksum mismatch" in scanner.error


def test_scanner_ignores_flags_and_reserved() -> None:
    payload = b"xyz"
    tail = struct.pack("<BBHII", DATA, 0x80, 0x1234, 1, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(tail))
    frames, scanner = scan(GOOD + struct.pack("<I", crc) + tail + payload)

    assert len(frames) == 2
    assert scanner.error is None


def test_scanner_respects_limit() -> None:
    data = GOOD + frame(DATA, 1, b"abc")
    scanner = FrameScanner(io.BytesIO(data), len(GOOD))
    frames = list(scanner)

    assert len(frames) == 1
    assert scanner.error is None
