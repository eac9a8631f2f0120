"""Readers for message content: DATA (dot-stuffed, ends at CR LF . CR LF) and BDAT chunks.

Theory of operation. A reader is fed a region `buf[pos:end]` of the receive buffer and returns
how far it consumed. Message octets leave as memoryview slices of that buffer, handed to `emit`,
so content is never copied or split into lines here. Whatever the reader does not consume is a
possible start of the end marker (at most four octets: CR, CR LF, CR LF ., CR LF . CR); the
caller presents those octets again, followed by the next read. Because a trailing CR is always
held back, a CR LF pair never straddles two calls, which keeps the CR and LF counts exact.

DATA ends only at CR LF . CR LF. A bare LF or bare CR never ends the message and never starts a
line for dot-unstuffing, because that is what SMTP smuggling relies on. Both are counted.
The message is treated as if a CR LF came just before it, so a dot on its first line is
unstuffed and a first line of "." is the end of an empty message.
"""

from __future__ import annotations

from collections.abc import Callable

Emit = Callable[[memoryview], None]

_MARKER_START = b"\r\n."
_DOT = 0x2E
_CR = 0x0D
_LF = 0x0A


def _discard(chunk: memoryview) -> None:
    """Drop message octets: the message is refused or the store has failed."""


class DotReader:
    """The DATA reader: finds the end marker, unstuffs dots, counts octets and bare line ends."""

    __slots__ = ("emit", "size", "bare_lf", "bare_cr", "done", "_at_start")

    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.size = 0  # content octets after unstuffing
        self.bare_lf = 0
        self.bare_cr = 0
        self.done = False
        self._at_start = True

    def discard(self) -> None:
        """Stop passing content on; the reader still finds the end and keeps counting."""
        self.emit = _discard

    def feed(self, buf: bytearray, view: memoryview, pos: int, end: int) -> int:
        """Consume content from `buf[pos:end]` and return the offset just past what was used."""
        if self._at_start:
            pos = self._first_line(buf, pos, end)
            if self._at_start or self.done:
                return pos

        start = pos  # start of the region whose CR and LF octets are counted
        segment = pos  # start of content not yet emitted
        emit = self.emit
        size = 0
        while True:
            found = buf.find(_MARKER_START, pos, end)
            if found < 0:
                held = _held_back(buf, pos, end)
                break

            after = found + 3
            if after + 2 <= end:
                if buf[after] == _CR and buf[after + 1] == _LF:
                    emit(view[segment : found + 2])
                    size += found + 2 - segment
                    self._count(buf, start, found + 2)
                    self.size += size
                    self.done = True
                    return after + 2
            elif after == end or buf[after] == _CR:
                held = found  # CR LF . or CR LF . CR at the end: wait for more
                break

            # A line that starts with a dot: drop that one dot.
            emit(view[segment : found + 2])
            size += found + 2 - segment
            segment = pos = after

        if held > segment:
            emit(view[segment:held])
            size += held - segment
        self._count(buf, start, held)
        self.size += size
        return held

    def _first_line(self, buf: bytearray, pos: int, end: int) -> int:
        """Handle a dot at the very start of the message, which the virtual CR LF precedes."""
        available = end - pos
        if available == 0:
            return pos
        if buf[pos] != _DOT:
            self._at_start = False
            return pos
        if available < 3 and bytes(buf[pos + 1 : end]) == b"\r\n"[: available - 1]:
            return pos  # ".", ".\r": not decided yet
        self._at_start = False
        if buf[pos + 1] == _CR and buf[pos + 2] == _LF:
            self.done = True
            return pos + 3
        return pos + 1

    def _count(self, buf: bytearray, start: int, stop: int) -> None:
        # NOTE: these three passes cost about 1.2 ms per MB, more than finding the end marker;
        # they bound the throughput of large messages (see docs/benchmarks.md).
        if stop <= start:
            return
        pairs = buf.count(b"\r\n", start, stop)
        self.bare_lf += buf.count(b"\n", start, stop) - pairs
        self.bare_cr += buf.count(b"\r", start, stop) - pairs


def _held_back(buf: bytearray, pos: int, end: int) -> int:
    """Return where a possible start of the end marker begins at the tail of `buf[pos:end]`."""
    if end > pos and buf[end - 1] == _CR:
        return end - 1
    if end - 1 > pos and buf[end - 2] == _CR and buf[end - 1] == _LF:
        return end - 2
    return end


class ChunkReader:
    """The BDAT reader: passes on exactly `remaining` octets as they are."""

    __slots__ = ("emit", "size", "remaining", "last")

    def __init__(self, emit: Emit, size: int, last: bool) -> None:
        self.emit = emit
        self.size = size
        self.remaining = size
        self.last = last

    def feed(self, view: memoryview, pos: int, end: int) -> int:
        """Consume up to the rest of the chunk from `view[pos:end]` and return the new offset."""
        take = min(self.remaining, end - pos)
        if take:
            self.emit(view[pos : pos + take])
            self.remaining -= take
        return pos + take
