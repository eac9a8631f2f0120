"""Per-worker shared-memory slots: heartbeat and counters that the master reads.

The master maps one anonymous shared region before it forks, so every worker inherits it. Worker
`i` is the only writer of slot `i`; the master only reads. A slot outlives the worker that wrote
it: a replacement worker with the same index goes on from the same values, so counters never go
backwards.

Layout. The region is `count` slots of `SLOT_SIZE` octets each, slot `i` at offset
`i * SLOT_SIZE`. A slot is `WORDS` unsigned 64-bit integers in native byte order; which word
means what is documented, word by word, in `sink.smtp.counters`. An 8-octet aligned store of a
machine word is not torn on the platforms the sink runs on, so the master may read while a
worker writes, without a lock.
"""

from __future__ import annotations

import mmap

from sink.smtp.counters import WORDS, Field

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
