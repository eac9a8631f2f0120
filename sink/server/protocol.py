"""The per-connection adapter between uvloop and the sans-IO `Session`.

Zero-copy receive: every connection of a worker reads into the worker's one receive buffer
(`get_buffer` hands out a view of it, and uvloop calls `buffer_updated` before any other
callback runs). The session consumes what it can and message octets go to the spool as slices of
that buffer. A few octets may not be consumable yet: an unfinished command line of at most 512
octets, or up to four octets of a possible end-of-data marker. They are kept per connection as
`carry` and copied to the front of the buffer before the next read.

All replies produced by one read leave in one write. With `fsync = always`, the write waits
until an fsync covers every message the read committed (see `GroupCommit` in the worker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast

from sink.smtp import Session, replies
from sink.smtp.counters import ENDED_BASE, ENDED_HOW, REPLY_INDEX, SESSION_DURATION, Field

if TYPE_CHECKING:
    from sink.server.worker import Worker

log = logging.getLogger("sink.worker")

_SESSIONS = int(Field.SESSIONS)
_ACTIVE = int(Field.ACTIVE_SESSIONS)
_REFUSED = int(Field.REFUSED_SESSIONS)
_REFUSED_SHUTTING_DOWN = int(Field.REFUSED_SHUTTING_DOWN)
_ENDED = {how: ENDED_BASE + index for index, how in enumerate(ENDED_HOW)}
_REPLY_220 = REPLY_INDEX[220]
_REPLY_421 = REPLY_INDEX[421]

INTERNAL_ERROR = b"421 4.3.0 Internal server error, closing connection\r\n"


class Connection(asyncio.BufferedProtocol):
    """One client connection of a worker."""

    __slots__ = (
        "worker",
        "transport",
        "session",
        "carry",
        "last_active",
        "held",
        "awaiting_sync",
        "paused",
        "started",
    )

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.carry = b""
        self.last_active = worker.tick
        self.held: list[bytes] | None = None  # replies waiting for a group fsync
        self.awaiting_sync = False  # held replies include a commit the next fsync must cover
        self.paused = False
        self.started = 0.0

    # --- connection lifetime ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        worker = self.worker
        self.transport = transport
        if len(worker.connections) >= worker.config.max_sessions or not worker.accepting:
            if worker.accepting:
                worker.counters[_REFUSED] += 1
                transport.write(replies.TOO_MANY_SESSIONS)
            else:
                worker.counters[_REFUSED_SHUTTING_DOWN] += 1
                transport.write(replies.SHUTTING_DOWN)
            worker.counters[_REPLY_421] += 1
            transport.close()
            return

        peer = transport.get_extra_info("peername") or ("", 0)
        self.session = Session(
            worker.policy,
            worker.store,
            client_address=peer[0],
            client_port=peer[1],
            worker=worker.index,
            counters=worker.counters,
        )
        worker.connections.add(self)
        counters = worker.counters
        counters[_SESSIONS] += 1
        counters[_ACTIVE] += 1
        counters[_REPLY_220] += 1
        self.started = time.monotonic()
        transport.write(self.session.greeting())

    def connection_lost(self, exc: Exception | None) -> None:
        session = self.session
        if session is None:
            return
        session.connection_lost()
        self.session = None
        worker = self.worker
        worker.connections.discard(self)
        counters = worker.counters
        counters[_ACTIVE] -= 1
        counters[_ENDED[session.ended]] += 1
        SESSION_DURATION.observe(counters, time.monotonic() - self.started)

    def eof_received(self) -> bool:
        return False

    # --- input ------------------------------------------------------------------------------

    def get_buffer(self, sizehint: int) -> memoryview:
        carry = self.carry
        if carry:
            self.worker.buffer[: len(carry)] = carry
            return self.worker.view[len(carry) :]
        return self.worker.view

    def buffer_updated(self, nbytes: int) -> None:
        session = self.session
        if session is None or session.closing:
            return
        worker = self.worker
        end = len(self.carry) + nbytes
        self.last_active = worker.tick
        commits = worker.store_commits() if worker.group_commit is not None else 0
        try:
            consumed = session.receive(worker.buffer, worker.view, end)
        except Exception:
            worker.report_internal_error(session)
            session.ended = "error"
            worker.counters[_REPLY_421] += 1
            self._send(INTERNAL_ERROR)
            session.connection_lost()
            self._close()
            return
        self.carry = bytes(worker.buffer[consumed:end]) if consumed < end else b""

        out = session.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            if worker.group_commit is not None and worker.store_commits() != commits:
                worker.group_commit.hold(self, data)
            else:
                self._send(data)
        if session.closing and self.held is None:
            self._close()
        elif worker.stopping and not session.in_transaction:
            self.shut_down()

    # --- output -----------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self.held is not None:
            self.held.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def release(self, ok: bool, covered: int) -> None:
        """Send the first `covered` held replies, now that an fsync covers them.

        Replies held after a newer commit stay held for the next fsync. When the fsync failed,
        the connection is dropped without the replies, so the client does not count the
        messages as delivered.
        """
        held = self.held or []
        if not ok:
            self.held = None
            self._close(abort=True)
            return
        if self.awaiting_sync:
            self.held = held[covered:]
            ready = held[:covered]
        else:
            self.held = None
            ready = held
        if ready:
            self._write(b"".join(ready))
        session = self.session
        if self.held is None and (session is None or session.closing):
            self._close()

    def pause_writing(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    # --- closing ----------------------------------------------------------------------------

    def time_out(self) -> None:
        """Close a connection that has been idle too long, with 421."""
        if self.session is not None:
            self.session.time_out()
            self._flush_session_output()

    def shut_down(self) -> None:
        """Close with 421 because the worker is stopping."""
        if self.session is not None and not self.session.closing:
            self.session.shut_down()
            self._flush_session_output()

    def _flush_session_output(self) -> None:
        session = self.session
        if session is not None and session.out:
            data = b"".join(session.out)
            session.out.clear()
            self._send(data)
        if self.held is None:
            self._close()

    def _close(self, abort: bool = False) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if abort:
            transport.abort()
        else:
            transport.close()
