"""Hold many idle SMTP sessions open, to measure a server's memory per session."""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass

from loadtest.bench_servers import CLIENT_HOSTNAME, BenchError

# Handshakes in flight at once. The sessions all stay open, but opening them in bounded batches
# keeps the listen queue (4096 on every server) from overflowing.
CONCURRENT_HANDSHAKES = 256

# File descriptors the benchmark process needs besides the session sockets.
SPARE_DESCRIPTORS = 64


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit and return the new soft limit.

    Servers started afterwards inherit the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def check_descriptor_budget(sessions: int) -> None:
    """Raise BenchError when RLIMIT_NOFILE cannot hold `sessions` sockets in one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = sessions + SPARE_DESCRIPTORS
    if soft < needed:
        raise BenchError(
            f"{sessions} sessions need about {needed} open files, but RLIMIT_NOFILE is "
            f"{soft} (hard limit {hard}): raise the hard limit (ulimit -Hn) or pass a smaller "
            f"--sessions"
        )


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """Read one SMTP reply, multi-line or not, and return its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed before a complete reply")
        if len(line) < 4 or line[3:4] != b"-":
            return line


@dataclass
class Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def _open_session(port: int, gate: asyncio.Semaphore) -> Session:
    async with gate:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            greeting = await _read_reply(reader)
            if not greeting.startswith(b"220"):
                raise ConnectionError(f"greeting is not 220: {greeting!r}")
            writer.write(b"EHLO " + CLIENT_HOSTNAME.encode() + b"\r\n")
            reply = await _read_reply(reader)
            if not reply.startswith(b"250"):
                raise ConnectionError(f"EHLO reply is not 250: {reply!r}")
        except BaseException:
            writer.close()
            raise
        return Session(reader, writer)


class IdleSessions:
    """A set of SMTP sessions that have sent EHLO and then stay idle until closed."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []

    async def open(self, port: int, count: int, timeout: float) -> None:
        """Open `count` sessions to 127.0.0.1:`port`, each past its EHLO reply.

        Raises BenchError naming the first failure when any session fails or the whole set
        takes longer than `timeout` seconds. Sessions opened before a failure stay open until
        close() is called.
        """
        gate = asyncio.Semaphore(CONCURRENT_HANDSHAKES)
        tasks = [asyncio.ensure_future(_open_session(port, gate)) for _ in range(count)]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        errors = []
        for task in tasks:
            if task in done and task.exception() is None:
                self.sessions.append(task.result())
            elif task in done:
                errors.append(task.exception())
        if pending:
            raise BenchError(
                f"opened {len(self.sessions)} of {count} sessions before the {timeout:.0f} s "
                f"time limit"
            )
        if errors:
            raise BenchError(
                f"{len(errors)} of {count} sessions failed; the first error: {errors[0]!r}"
            )

    async def close(self) -> None:
        """Close every session without QUIT, as a client that goes away would."""
        for session in self.sessions:
            session.writer.close()
        for session in self.sessions:
            try:
                await session.writer.wait_closed()
            except OSError:
                pass
        self.sessions.clear()
