"""Indexes of the per-worker counters, shared by the SMTP session and the server.

Each worker owns an array of `WORDS` unsigned 64-bit words (see `sink.server.slots` for how the
master shares them). Code on the hot path adds to a word by index; nothing else happens there.
"""

from __future__ import annotations

import enum

WORDS = 512


class Field(enum.IntEnum):
    HEARTBEAT_NS = 0
    PID = 1
    STARTED_NS = 2
    SESSIONS = 3
    ACTIVE_SESSIONS = 4
    MESSAGES = 5
    MESSAGE_BYTES = 6
    REFUSED_SESSIONS = 7
    ACCEPTING = 8


def private_counters() -> memoryview:
    """Return a zeroed counter array that nobody else reads, for sessions outside a worker."""
    return memoryview(bytearray(WORDS * 8)).cast("Q")
