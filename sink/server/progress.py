"""The one-line counter that `sink serve` prints on a terminal once a second."""

from __future__ import annotations

import time
from typing import TextIO

from sink.server.slots import Slots
from sink.smtp.counters import Field, accepted_messages, accepted_octets


class Progress:
    """Rewrite one terminal line with sessions, messages, msg/s and MB/s."""

    def __init__(self, slots: Slots, stream: TextIO) -> None:
        self.slots = slots
        self.stream = stream
        self.last_time = time.monotonic()
        self.last_messages, self.last_bytes = self._messages()

    def update(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self.last_time, 1e-6)
        messages, octets = self._messages()
        rate = (messages - self.last_messages) / elapsed
        throughput = (octets - self.last_bytes) / elapsed / 1e6
        self.last_time, self.last_messages, self.last_bytes = now, messages, octets
        line = (
            f"sessions {self.slots.total(Field.SESSIONS)} "
            f"(active {self.slots.total(Field.ACTIVE_SESSIONS)})  "
            f"messages {messages}  {rate:,.0f} msg/s  {throughput:,.2f} MB/s"
        )
        self.stream.write("\r" + line.ljust(78))
        self.stream.flush()

    def _messages(self) -> tuple[int, float]:
        """Return messages accepted and their octets, summed over the workers."""
        messages, octets = 0, 0.0
        for index in range(self.slots.count):
            words = self.slots.slot(index)
            messages += accepted_messages(words)
            octets += accepted_octets(words)
        return messages, octets

    def finish(self) -> None:
        self.stream.write("\n")
        self.stream.flush()
