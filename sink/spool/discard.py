"""DiscardStore: a Store that keeps nothing, for running the sink without a spool.

Theory of operation
-------------------
It accepts every transaction and returns a unique message ID on commit, using the same ID
scheme as the spool writer, so replies and logs look the same with and without a spool. It has
the writer's server hooks (`flush`, `tick`, `sync`, `close`) and counters, so the server needs
no special case. A commit counts as written and synced at once, so group commit never waits.
"""

from __future__ import annotations

from typing import Any

from sink.store import StoreError

from .ids import MessageIdGenerator


class DiscardTransaction:
    """A transaction whose octets are counted and dropped."""

    __slots__ = ("_store", "size", "message_id", "_open")

    def __init__(self, store: DiscardStore) -> None:
        self._store = store
        self.size = 0
        self.message_id: str | None = None
        self._open = True

    def write(self, chunk: memoryview | bytes) -> None:
        if not self._open:
            raise StoreError("cannot write to a finished transaction")
        self.size += len(chunk)

    def commit(self, meta: dict[str, Any]) -> str:
        if not self._open:
            raise StoreError("cannot commit a finished transaction")
        self._open = False
        self.message_id = self._store._ids.next_id()
        store = self._store
        store.commits_written += 1
        store.commits_synced = store.commits_written
        return self.message_id

    def abort(self) -> None:
        self._open = False


class DiscardStore:
    """A Store that stores nothing but still hands out unique message IDs."""

    def __init__(self, worker: int = 0) -> None:
        self.worker = worker
        self._ids = MessageIdGenerator(worker)
        self._closed = False
        self.commits_written = 0
        self.commits_synced = 0
        self.write_errors = 0
        self.lost_commits = 0

    def begin(self, envelope: dict[str, Any]) -> DiscardTransaction:
        if self._closed:
            raise StoreError("store is closed")
        return DiscardTransaction(self)

    def flush(self) -> None:
        """Do nothing: there is no buffer."""

    def tick(self) -> None:
        """Do nothing: there are no segments."""

    def sync(self) -> int:
        """Return `commits_synced`, which always equals `commits_written`."""
        return self.commits_synced

    def close(self) -> None:
        self._closed = True
