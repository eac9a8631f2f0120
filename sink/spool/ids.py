"""Message IDs: short, unique across workers and restarts, cheap to make.

Theory of operation
-------------------
An ID is 20 characters of Crockford base32 (digits and uppercase letters without I, L, O, U):

    11 chars  the generator's start time in microseconds since the Unix epoch (55 bits)
     2 chars  the worker index (10 bits, 0..1023)
     7 chars  a per-generator counter (35 bits), starting at 0

The first 13 characters are computed once per generator, so each ID costs a few table look-ups
and one string join. Two generators differ in the worker field or in the start time. A
restarted worker starts at a later microsecond. A second generator for the same worker in one
process is moved to at least one microsecond after the previous one. When the counter runs
out (after 2**35 IDs), the generator takes a fresh start time and restarts the counter.

The scheme relies on the wall clock not stepping back across a restart of the same worker. IDs
of one generator sort in creation order, because the alphabet is in ASCII order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ID_LENGTH: Final = 20
MAX_WORKER: Final = 1023
COUNTER_LIMIT: Final = 1 << 35

_PAIRS: Final = tuple(first + second for first in ALPHABET for second in ALPHABET)

_last_start_us: dict[int, int] = {}
_start_lock = threading.Lock()


def encode_base32(value: int, width: int) -> str:
    """Encode a non-negative integer as exactly `width` Crockford base32 characters."""
    if value < 0 or value >= 1 << (5 * width):
        raise ValueError(f"{value} does not fit in {width} base32 characters")
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 32)
        chars.append(ALPHABET[digit])
    return "".join(reversed(chars))


def _claim_start_us(worker: int, clock_ns: Callable[[], int]) -> int:
    """Return a start time for `worker` later than any earlier claim in this process."""
    now_us = clock_ns() // 1000
    with _start_lock:
        previous = _last_start_us.get(worker, -1)
        start = max(now_us, previous + 1)
        _last_start_us[worker] = start
    return start


class MessageIdGenerator:
    """Hands out the message IDs of one worker."""

    __slots__ = ("worker", "_clock_ns", "_prefix", "_counter")

    def __init__(self, worker: int, *, clock_ns: Callable[[], int] = time.time_ns) -> None:
        if not 0 <= worker <= MAX_WORKER:
            raise ValueError(f"worker index must be in 0..{MAX_WORKER}, got {worker}")
        self.worker = worker
        self._clock_ns = clock_ns
        self._prefix = ""
        self._counter = 0
        self._restart()

    def _restart(self) -> None:
        start_us = _claim_start_us(self.worker, self._clock_ns)
        self._prefix = encode_base32(start_us, 11) + encode_base32(self.worker, 2)
        self._counter = 0

    def next_id(self) -> str:
        """Return a new message ID."""
        counter = self._counter
        if counter >= COUNTER_LIMIT:
            self._restart()
            counter = 0
        self._counter = counter + 1
        return (
            self._prefix
            + _PAIRS[counter >> 25]
            + _PAIRS[(counter >> 15) & 1023]
            + _PAIRS[(counter >> 5) & 1023]
            + ALPHABET[counter & 31]
        )
