"""The interface between an SMTP session and whatever keeps its messages.

A session calls `Store.begin` when DATA (or the first BDAT) starts, feeds the message octets to
the transaction as memoryview slices of the receive buffer, and calls `commit` at the end of
data. The reply `250 ... queued as ID` is sent only after `commit` returns. A store must not keep
a reference to a slice after `write` returns: the buffer is reused by the next read.
"""

from __future__ import annotations

from typing import Any, Protocol


class StoreError(Exception):
    """A message could not be stored; the session replies 451 4.3.0 and keeps going."""


class Transaction(Protocol):
    def write(self, chunk: memoryview | bytes) -> None:
        """Append message octets. Raises StoreError on a write failure."""

    def commit(self, meta: dict[str, Any]) -> str:
        """Make the message durable as configured and return its queue ID. Raises StoreError."""

    def abort(self) -> None:
        """Drop the message. Never raises."""


class Store(Protocol):
    def begin(self, envelope: dict[str, Any]) -> Transaction:
        """Start a message with its envelope. Raises StoreError."""
