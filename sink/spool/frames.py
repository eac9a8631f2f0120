"""Byte layout of spool segment files: the magic, the frame header and the frame types.

Theory of operation
-------------------
A segment file is an 8-byte magic followed by frames back to back. Writers only append, so a
crash can leave at most one incomplete frame at the end of a file. Every frame carries a CRC-32
over its header fields and payload, so a reader can tell a complete, intact frame from a torn or
damaged one without any index or footer.

File layout::

    offset 0   8 bytes   magic b"SINKSEG1"
    offset 8   frame, frame, ... (each a 16-byte header followed by its payload)

Frame header (16 bytes, all integers little-endian)::

    bytes  0..4   u32  crc      zlib.crc32 of header bytes 4..16, continued over the payload:
                                crc32(payload, crc32(header[4:16]))
    byte   4      u8   type     one ASCII letter, see below
    byte   5      u8   flags    0; writers set 0 and readers ignore it
    bytes  6..8   u16  reserved 0; writers set 0 and readers ignore it
    bytes  8..12  u32  txn      transaction number, unique within the segment, 0 for H and S
    bytes 12..16  u32  length   payload length in bytes; readers reject lengths above 64 MiB

Frame types and payloads::

    H  segment header  orjson {"format": 1, "worker": i, "pid": p, "created": unix_float,
                                "host": hostname}; the first frame of every segment
    B  begin           orjson envelope dict, exactly as the SMTP session passed it
    D  data            raw message octets (a message may span any number of D frames)
    C  commit          orjson meta dict from the session plus "id" (the message ID)
    A  abort           empty
    S  seal            orjson {"records": n, "bytes": b, "sealed": unix_float}; the last frame
                       of a sealed segment. "records" counts committed records in the segment,
                       "bytes" is the sum of their message sizes (D payload bytes).

A record (one stored message) is a B frame, any number of D frames and a C frame, all with the
same txn number in one segment. Frames of concurrent transactions interleave. Only the C frame
makes a record real: a B without a C (aborted, failed or torn) is not a record.

A frame is invalid when its header is short, its payload is short, its length is above
`MAX_PAYLOAD`, its CRC does not match, or its type is not one of the six above. Readers treat
the first invalid frame and everything after it as the end of the usable data.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"SINKSEG1"
HEADER_SIZE: Final = 16
MAX_PAYLOAD: Final = 64 * 1024 * 1024
FORMAT_VERSION: Final = 1

SEGMENT_HEADER: Final = ord("H")
BEGIN: Final = ord("B")
DATA: Final = ord("D")
COMMIT: Final = ord("C")
ABORT: Final = ord("A")
SEAL: Final = ord("S")

FRAME_TYPES: Final = frozenset({SEGMENT_HEADER, BEGIN, DATA, COMMIT, ABORT, SEAL})

_HEADER = struct.Struct("<IBBHII")
_TAIL = struct.Struct("<BBHII")
_CRC = struct.Struct("<I")
_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """The decoded fields of one 16-byte frame header."""

    crc: int
    type: int
    flags: int
    reserved: int
    txn: int
    length: int


def frame_header(frame_type: int, txn: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Build the 16-byte header for a frame with this payload, including its CRC."""
    tail = _TAIL.pack(frame_type, 0, 0, txn, len(payload))
    return _CRC.pack(zlib.crc32(payload, zlib.crc32(tail))) + tail


def parse_header(header: bytes | bytearray | memoryview) -> FrameHeader:
    """Decode a 16-byte frame header without checking it."""
    return FrameHeader(*_HEADER.unpack(header))


def payload_length_at(buffer: bytes | bytearray | memoryview, offset: int) -> int:
    """Return the payload length of the frame whose header starts at `offset` in `buffer`."""
    (length,) = _LENGTH.unpack_from(buffer, offset + 12)
    return int(length)


def header_crc(header: bytes | bytearray | memoryview) -> int:
    """Return the CRC-32 of header bytes 4..16, the start of the chain that covers the payload."""
    return zlib.crc32(header[4:HEADER_SIZE])


def type_name(frame_type: int) -> str:
    """Return a printable name for a frame type byte, for messages."""
    if 0x20 < frame_type < 0x7F:
        return repr(chr(frame_type))
    return f"0x{frame_type:02x}"
