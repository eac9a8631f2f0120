"""Group commit: connections that commit while an fsync runs share the next one."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any

from sink.server.worker import GroupCommit


class FakeConnection:
    """Records what `release` would send; mirrors Connection.release's bookkeeping."""

    def __init__(self) -> None:
        self.held: list[bytes] | None = None
        self.awaiting_sync = False
        self.released: list[tuple[bool, bytes]] = []

    def release(self, ok: bool, covered: int) -> None:
        held = self.held or []
        if self.awaiting_sync:
            self.held, ready = held[covered:], held[:covered]
        else:
            self.held, ready = None, held
        self.released.append((ok, b"".join(ready)))


class FakeWorker:
    """The parts of a Worker that GroupCommit uses, with an fsync that waits to be let go."""

    def __init__(self, loop: asyncio.AbstractEventLoop, result: bool = True) -> None:
        self.loop = loop
        self.executor = concurrent.futures.ThreadPoolExecutor(1)
        self.syncs = 0
        self.gate = threading.Event()
        self.result = result

    def sync_store(self) -> bool:
        self.syncs += 1
        self.gate.wait(5)
        return self.result


async def _hold_many(worker: Any, connections: list[FakeConnection]) -> None:
    group = GroupCommit(worker)
    group.hold(connections[0], b"250 first\r\n")
    await asyncio.sleep(0.05)  # the first fsync is now running
    for number, connection in enumerate(connections[1:]):
        group.hold(connection, b"250 later %d\r\n" % number)
    group.hold(connections[1], b"221 bye\r\n")
    worker.gate.set()
    # A commit during the second fsync: its reply must wait for a third one.
    await asyncio.sleep(0.05)
    group.hold(connections[0], b"250 third\r\n")
    while worker.syncs < 2 or any(connection.held for connection in connections):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)


def test_commits_during_fsync_share_one() -> None:
    loop = asyncio.new_event_loop()
    worker = FakeWorker(loop)
    connections = [FakeConnection() for _ in range(10)]
    try:
        loop.run_until_complete(_hold_many(worker, connections))
    finally:
        worker.executor.shutdown()
        loop.close()

    assert worker.syncs == 3
    assert connections[0].released == [(True, b"250 first\r\n"), (True, b"250 third\r\n")]
    assert connections[1].released == [(True, b"250 later 0\r\n221 bye\r\n")]
    assert all(len(connection.released) == 1 for connection in connections[1:])


def test_failed_fsync_releases_without_reply() -> None:
    loop = asyncio.new_event_loop()
    worker = FakeWorker(loop, result=False)
    connections = [FakeConnection() for _ in range(3)]
    try:
        loop.run_until_complete(_hold_many(worker, connections))
    finally:
        worker.executor.shutdown()
        loop.close()

    assert connections[0].released[0][0] is False
    for connection in connections[1:]:
        assert [ok for ok, _ in connection.released] == [False]
