"""Per-worker shared-memory slots: heartbeat and counters that the master reads.

The master maps one anonymous shared region before it forks, so every worker inherits it. Worker
`i` is the only writer of slot `i`; the master only reads. A slot outlives the worker that wrote
it: a replacement worker with the same index goes on from the same values, so counters never go
backwards.

Layout. The region is `count` slots of `SLOT_SIZE` (4096) octets each. A slot is an array of
unsigned 64-bit integers in native byte order, indexed by the `sink.counters.Field` constants:

    index  field               meaning
    0      HEARTBEAT_NS        time.time_ns() of the worker's last heartbeat; 0 before the first
    1      PID                 process ID of the worker that owns the slot now
    2      STARTED_NS          time.time_ns() when that worker started
    3      SESSIONS            sessions accepted, all time
    4      ACTIVE_SESSIONS     sessions open now
    5      MESSAGES            messages acknowledged with 250 (stored, or discarded by --no-spool)
    6      MESSAGE_BYTES       content octets of those messages
    7      REFUSED_SESSIONS    sessions refused with 421 because of --max-sessions
    8      ACCEPTING           1 while the worker accepts connections, else 0

Indexes 9 to 511 are reserved for more counters and histogram buckets. An 8-octet aligned store
of a machine word is not torn on the platforms the sink runs on, so the master may read while a
worker writes without a lock.
"""

from __future__ import annotations

import mmap

from sink.counters import WORDS, Field

SLOT_SIZE = WORDS * 8


class Slots:
    """The shared region; `slot(i)` gives worker i's words as a memoryview of uint64."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"slot count must be at least 1, got {count}")
        self.count = count
        self._map = mmap.mmap(-1, count * SLOT_SIZE, flags=mmap.MAP_SHARED)
        self._words = memoryview(self._map).cast("Q")

    def slot(self, index: int) -> memoryview:
        """Return the words of slot `index`, for reading or (in its worker) writing."""
        if not 0 <= index < self.count:
            raise IndexError(f"slot {index} out of range 0..{self.count - 1}")
        return self._words[index * WORDS : (index + 1) * WORDS]

    def total(self, field: Field) -> int:
        """Sum one field over every slot."""
        return sum(self._words[index * WORDS + field] for index in range(self.count))
