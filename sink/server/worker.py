"""A worker process: one uvloop event loop serving SMTP on the sockets the master bound.

The worker accepts on the inherited listening sockets, runs a `Connection` per client, and
writes its own spool segments. Once a second it beats its heartbeat in its shared-memory slot,
closes idle sessions, lets the spool rotate by age, and (with `fsync = interval`) syncs the spool
in a background thread.

Stopping (SIGTERM from the master): close the listeners, and send 421 to idle sessions at once
and to the others as soon as their transaction ends. After the grace period, send 421 to
whatever is left, seal the spool and exit 0.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import uvloop

from sink.config import Config
from sink.server.protocol import Connection
from sink.smtp import Policy, Session
from sink.smtp.counters import FSYNC_DURATION, Field
from sink.spool import DiscardStore, SpoolWriter, recover_segments
from sink.store import Store

log = logging.getLogger("sink.worker")

RECEIVE_BUFFER = 256 * 1024

# Spool writer attributes that the worker copies into its slot once a second, as deltas so that
# the slot's counters keep growing across worker restarts.
_SPOOL_COUNTERS = (
    ("bytes_written", Field.SPOOL_BYTES),
    ("commits_written", Field.SPOOL_RECORDS),
    ("segments_sealed", Field.SEGMENTS_SEALED),
    ("write_errors", Field.SPOOL_WRITE_ERRORS),
)

# Exit codes the master understands.
EXIT_OK = 0
EXIT_BOOT_ERROR = 3  # the worker could not start; restarting it would fail the same way


class GroupCommit:
    """Share one fsync between every connection that committed while the last one ran.

    A connection whose read committed a message hands its replies to `hold`; from then on, all
    its output queues behind them. An fsync covers the replies held when it starts. A connection
    that commits again meanwhile keeps its newer replies held until the next fsync.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.waiting: list[Connection] = []
        self.running = False

    def hold(self, connection: Connection, data: bytes) -> None:
        """Keep `data` from being sent until an fsync covers what the connection committed."""
        if connection.held is None:
            connection.held = [data]
        else:
            connection.held.append(data)
        if not connection.awaiting_sync:
            connection.awaiting_sync = True
            self.waiting.append(connection)
        if not self.running:
            self._start()

    def _start(self) -> None:
        self.running = True
        batch, self.waiting = self.waiting, []
        covered = []
        for connection in batch:
            connection.awaiting_sync = False
            covered.append(len(connection.held or ()))
        future = self.worker.loop.run_in_executor(self.worker.executor, self.worker.sync_store)
        future.add_done_callback(lambda done: self._finished(batch, covered, done))

    def _finished(
        self, batch: list[Connection], covered: list[int], done: asyncio.Future[bool]
    ) -> None:
        self.running = False
        ok = not done.cancelled() and done.exception() is None and bool(done.result())
        for connection, count in zip(batch, covered, strict=True):
            connection.release(ok, count)
        if self.waiting:
            self._start()


class Worker:
    """The state of one worker process."""

    def __init__(self, config: Config, index: int, sockets: list[socket.socket], slot: memoryview):
        self.config = config
        self.index = index
        self.sockets = sockets
        self.counters = slot
        self.policy = Policy(
            hostname=config.hostname,
            max_message_size=config.max_message_size,
            max_recipients=config.max_recipients,
            strict_line_endings=config.line_endings == "strict",
            require_helo=config.require_helo,
            reject_recipients=config.reject_rcpt,
        )
        self.store: Store = self._open_store()
        self.buffer = bytearray(RECEIVE_BUFFER)
        self.view = memoryview(self.buffer)
        self.connections: set[Connection] = set()
        self.tick = 0
        self.accepting = True
        self.stopping = False
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fsync")
        self.group_commit = GroupCommit(self) if config.fsync == "always" and config.spool else None
        self.loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._stopped: asyncio.Event | None = None
        self._internal_errors = 0
        self._sync_running = False
        self._published: dict[str, int] = {}

    def _open_store(self) -> Store:
        if not self.config.spool:
            return DiscardStore(self.index)
        # recover_segments logs each segment it repairs, such as one a killed predecessor left.
        recover_segments(self.config.spool, worker=self.index)
        return SpoolWriter(
            self.config.spool,
            self.index,
            segment_bytes=self.config.segment_size,
            segment_age=self.config.segment_age,
            fsync=self.config.fsync,
        )

    # --- hooks for Connection ---------------------------------------------------------------

    def store_commits(self) -> int:
        return int(getattr(self.store, "commits_written", 0))

    def sync_store(self) -> bool:
        """Fsync the spool (in the executor thread); False and a log line if it failed."""
        started = time.perf_counter()
        try:
            self.store.sync()  # type: ignore[attr-defined]
        except Exception as error:
            log.error("worker %d: fsync of the spool failed: %s", self.index, error)
            return False
        # Only this thread writes the fsync histogram's words, so it needs no lock.
        FSYNC_DURATION.observe(self.counters, time.perf_counter() - started)
        return True

    def publish_spool_counters(self) -> None:
        """Copy the spool writer's counters into the slot."""
        if not self.config.spool:
            return
        counters = self.counters
        for attribute, field in _SPOOL_COUNTERS:
            value = int(getattr(self.store, attribute, 0))
            delta = value - self._published.get(attribute, 0)
            if delta > 0:
                counters[field] += delta
                self._published[attribute] = value
        counters[Field.SEGMENTS_OPEN] = int(getattr(self.store, "segments_open", 0))

    def report_internal_error(self, session: Session) -> None:
        """Log a bug in the session code, with a traceback the first few times only."""
        self._internal_errors += 1
        if self._internal_errors <= 10:
            log.exception(
                "worker %d: internal error in session with %s:%d; closing it with 421",
                self.index,
                session.client_address,
                session.client_port,
            )

    # --- running ----------------------------------------------------------------------------

    def run(self) -> int:
        asyncio.set_event_loop(self.loop)
        try:
            return self.loop.run_until_complete(self._main())
        finally:
            self.executor.shutdown(wait=True)
            self.loop.close()

    async def _main(self) -> int:
        loop = self.loop
        self._stopped = asyncio.Event()
        loop.set_exception_handler(self._loop_error)
        loop.add_signal_handler(signal.SIGTERM, self._begin_stop)
        loop.add_signal_handler(signal.SIGQUIT, self._begin_stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the master turns Ctrl-C into SIGTERM
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        for sock in self.sockets:
            server = await loop.create_server(
                lambda: Connection(self), sock=sock, backlog=4096, start_serving=True
            )
            self._servers.append(server)

        counters = self.counters
        counters[Field.PID] = os.getpid()
        counters[Field.STARTED_NS] = time.time_ns()
        counters[Field.ACTIVE_SESSIONS] = 0
        counters[Field.ACCEPTING] = 1
        self._beat()
        if self.config.fsync == "interval" and self.config.spool:
            self.loop.call_later(self.config.fsync_interval, self._sync_periodically)
        log.debug("worker %d (pid %d) is serving", self.index, os.getpid())

        await self._stopped.wait()
        await self._drain()
        return EXIT_OK

    def _beat(self) -> None:
        """Run the once-a-second duties and schedule the next run."""
        self.tick += 1
        self.counters[Field.HEARTBEAT_NS] = time.time_ns()
        self._close_idle()

        tick = getattr(self.store, "tick", None)
        if tick is not None:
            self._guard("rotate the spool", tick)
        self.publish_spool_counters()
        if not self.stopping or self.connections:
            self.loop.call_later(1.0, self._beat)

    def _close_idle(self) -> None:
        idle_ticks = self.config.idle_timeout
        data_ticks = self.config.data_timeout
        now = self.tick
        for connection in list(self.connections):
            session = connection.session
            if session is None:
                continue
            limit = data_ticks if session.in_transaction else idle_ticks
            if now - connection.last_active > limit:
                log.info(
                    "worker %d: session with %s:%d timed out after %.0f s idle",
                    self.index,
                    session.client_address,
                    session.client_port,
                    limit,
                )
                connection.time_out()

    def _sync_periodically(self) -> None:
        self._sync_in_background()
        if not self.stopping:
            self.loop.call_later(self.config.fsync_interval, self._sync_periodically)

    def _sync_in_background(self) -> None:
        if self._sync_running:
            return
        store: Any = self.store
        if store.commits_synced >= store.commits_written:
            return
        self._sync_running = True
        future = self.loop.run_in_executor(self.executor, self.sync_store)

        def finished(_: asyncio.Future[bool]) -> None:
            self._sync_running = False

        future.add_done_callback(finished)

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Log an error that escaped a callback; the worker keeps serving."""
        self._internal_errors += 1
        if self._internal_errors <= 10:
            log.error(
                "worker %d: unhandled error in the event loop: %s",
                self.index,
                context.get("message"),
                exc_info=context.get("exception"),
            )

    def _guard(self, what: str, action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:
            log.exception("worker %d: failed to %s", self.index, what)

    # --- stopping ---------------------------------------------------------------------------

    def _begin_stop(self) -> None:
        if self.stopping:
            return
        log.info(
            "worker %d stopping: %d sessions open, waiting up to %.0f s for transactions",
            self.index,
            len(self.connections),
            self.config.shutdown_grace,
        )
        self.stopping = True
        self.accepting = False
        self.counters[Field.ACCEPTING] = 0
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            session = connection.session
            if session is not None and not session.in_transaction:
                connection.shut_down()
        assert self._stopped is not None
        self._stopped.set()

    async def _drain(self) -> None:
        deadline = self.loop.time() + self.config.shutdown_grace
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.shut_down()
        await asyncio.sleep(0)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.abort()
        while self.group_commit is not None and self.group_commit.running:
            await asyncio.sleep(0.01)
        close = getattr(self.store, "close", None)
        if close is not None:
            self._guard("seal the spool", close)
        self.publish_spool_counters()
        log.debug("worker %d stopped", self.index)


def run_worker(config: Config, index: int, sockets: list[socket.socket], slot: memoryview) -> int:
    """Run worker `index` until SIGTERM stops it; return its exit code."""
    try:
        worker = Worker(config, index, sockets, slot)
    except Exception:
        log.exception("worker %d failed to start", index)
        return EXIT_BOOT_ERROR
    return worker.run()
