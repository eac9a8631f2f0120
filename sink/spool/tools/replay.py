"""`sink spool replay`: send stored messages, with their envelopes, to another SMTP server.

Theory of operation
-------------------
One asyncio task reads the spool and puts the selected records on a bounded queue. N
connection tasks take records from it, each over its own SMTP session, which stays open from one
message to the next. A message goes out as MAIL FROM with the stored reverse-path (``<>`` for
the null sender), one RCPT TO per stored forward-path, as the client wrote it (source routes
included), then the content. With --rate, a shared schedule starts message i at
``start + i / rate``.

The content goes as DATA with dot-stuffing, unless it must go as BDAT (RFC 3030 CHUNKING) to
arrive unchanged. DATA cannot carry a bare CR or LF exactly, because servers differ on whether
it ends a line for dot-stuffing, and DATA adds CR LF to content that does not end with one. Such
content, and every message with --bdat, goes as BDAT when the server offers CHUNKING. A message
up to SMALL_MESSAGE bytes is read once into memory. A larger one is read in pieces, twice: once
to look for bare CR and LF, once to send it.

Each message ends with one final reply: the reply to DATA's end or the last BDAT, or the reply
that refused MAIL, or the last refused RCPT when no recipient was accepted. A lost connection
counts as a connection error. Refused recipients of a message that was accepted for the others
are counted on their own. The exit status is 0 only when every message got 250 and no
recipient was refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sink.server.listeners import split_host_port
from sink.spool.reader import Record, SpoolDataError

from .export import Selection
from .reading import ProblemLog, Progress, scan_spool

DEFAULT_CONNECTIONS: Final = 4
DEFAULT_TIMEOUT: Final = 60.0
# Stop the replay after this many connection errors in a row, so a target that is down does
# not get one connection attempt per remaining message.
MAX_CONNECTION_ERRORS_IN_A_ROW: Final = 10
CONTENT_BLOCK: Final = 256 * 1024
# Messages up to this size are read once and held in memory. Larger ones are read twice in
# pieces of CONTENT_BLOCK bytes, once to check their line ends and once to send them.
SMALL_MESSAGE: Final = 256 * 1024
CONNECTION_ERROR: Final = "connection error"


class ReplayError(Exception):
    """The SMTP session failed: connection lost, timed out or a reply that is not SMTP."""


@dataclass(frozen=True, slots=True)
class Target:
    """A replay target: the host as given, the address to connect to, and the port."""

    host: str
    address: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_target(text: str) -> tuple[str, int]:
    """Split HOST:PORT or [IPv6]:PORT; raise ValueError for anything else."""
    try:
        host, port_text = split_host_port(text)
    except ValueError:
        raise ValueError(f"--to: invalid address {text!r}; use HOST:PORT or [IPv6]:PORT") from None
    if not host:
        raise ValueError(f"--to: missing host in {text!r}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--to: invalid port in {text!r}; use a number from 1 to 65535")
    return host, int(port_text)


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def resolve_target(text: str, *, allow_remote: bool) -> Target:
    """Resolve --to and check that it is a loopback address unless `allow_remote` is set.

    A host name is resolved here, and the replay connects to the checked address, so a name
    cannot resolve to a loopback address for the check and to another one for the connection.
    """
    host, port = parse_target(text)
    try:
        ipaddress.ip_address(host)
        addresses = [host]
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise ValueError(f"--to: cannot resolve host {host!r}: {error.strerror}") from None
        addresses = [str(info[4][0]) for info in infos]
    if allow_remote:
        return Target(host, addresses[0], port)
    remote = [address for address in addresses if not _is_loopback(address)]
    if remote:
        raise ValueError(
            f"--to: {host} is not a loopback address ({', '.join(sorted(set(remote)))}); "
            "replay sends only to 127.0.0.0/8 or ::1 unless --allow-remote is given"
        )
    return Target(host, addresses[0], port)


def content_needs_chunking(pieces: Iterable[bytes]) -> bool:
    """Tell whether DATA would change the content: a bare CR or LF, or no CR LF at the end."""
    newlines = carriage_returns = pairs = 0
    previous = b""
    last_two = b""
    for piece in pieces:
        if not piece:
            continue
        newlines += piece.count(b"\n")
        carriage_returns += piece.count(b"\r")
        pairs += piece.count(b"\r\n")
        if previous == b"\r" and piece[:1] == b"\n":
            pairs += 1  # a CR LF pair split between two pieces
        previous = piece[-1:]
        last_two = (last_two + piece)[-2:]
    if newlines != pairs or carriage_returns != pairs:
        return True
    return last_two not in (b"", b"\r\n")


class DotStuffer:
    """Doubles every dot at the start of a line, where a line starts after CR LF (RFC 5321).

    Pieces may split a CR LF pair or a CR LF and the dot after it anywhere.
    """

    def __init__(self) -> None:
        self.line_start = True  # the next octet starts a line
        self.after_cr = False  # the last octet was a CR

    def feed(self, piece: bytes) -> bytes:
        if not piece:
            return piece
        out = piece.replace(b"\r\n.", b"\r\n..")
        if self.line_start and piece[:1] == b".":
            out = b"." + out
        elif self.after_cr and piece[:2] == b"\n.":
            out = b"\n." + out[1:]
        self.line_start = piece.endswith(b"\r\n") or (self.after_cr and piece == b"\n")
        self.after_cr = piece.endswith(b"\r")
        return out


def _reply_code(lines: list[bytes]) -> int:
    return int(lines[-1][:3])


@dataclass(slots=True)
class ReplaySummary:
    """Counts of final replies per message, and of refused recipients."""

    final: Counter[str] = field(default_factory=Counter)
    refused_recipients: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    not_sent: int = 0
    stopped_reason: str | None = None

    @property
    def all_accepted(self) -> bool:
        return (
            self.final["250"] == self.messages and not self.refused_recipients and not self.not_sent
        )

    def lines(self, target: Target, seconds: float) -> list[str]:
        rate = self.messages / seconds if seconds > 0 else 0.0
        out = [f"replayed {self.messages} messages to {target} in {seconds:.1f} s ({rate:.1f}/s)"]
        classes = {"250": 0, "4xx": 0, "5xx": 0, CONNECTION_ERROR: 0}
        for code, count in self.final.items():
            key = code if code in ("250", CONNECTION_ERROR) else f"{code[0]}xx"
            classes[key if key in classes else "5xx"] += count
        out.append(
            "final replies: " + ", ".join(f"{name} {count}" for name, count in classes.items())
        )
        other = sorted(code for code in self.final if code not in ("250", CONNECTION_ERROR))
        if other:
            out.append("refusals by code: " + ", ".join(f"{c} {self.final[c]}" for c in other))
        if self.refused_recipients:
            refused = sorted(self.refused_recipients.items())
            out.append(
                "refused recipients of accepted messages: "
                + ", ".join(f"{code} {count}" for code, count in refused)
            )
        if self.not_sent:
            out.append(f"not sent: {self.not_sent} ({self.stopped_reason})")
        return out


class SmtpClient:
    """One SMTP client session over asyncio streams, used for one message at a time."""

    def __init__(self, target: Target, ehlo_name: str, timeout: float) -> None:
        self.target = target
        self.ehlo_name = ehlo_name
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.extensions: dict[str, str] = {}

    @property
    def connected(self) -> bool:
        return self.writer is not None

    async def connect(self) -> None:
        """Connect, read the greeting and send EHLO (HELO if EHLO is refused)."""
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.target.address, self.target.port), self.timeout
            )
        except (OSError, TimeoutError) as error:
            raise ReplayError(f"cannot connect to {self.target}: {error}") from None
        greeting = await self.read_reply()
        if _reply_code(greeting) != 220:
            raise ReplayError(f"greeting was not 220: {greeting[-1]!r}")
        reply = await self.command(b"EHLO " + self.ehlo_name.encode())
        self.extensions = {}
        if _reply_code(reply) == 250:
            for line in reply[1:]:
                keyword, _, value = line[4:].decode("utf-8", "replace").partition(" ")
                self.extensions[keyword.upper()] = value
        else:
            reply = await self.command(b"HELO " + self.ehlo_name.encode())
            if _reply_code(reply) != 250:
                raise ReplayError(f"HELO rejected: {reply[-1]!r}")

    async def close(self, quit_first: bool) -> None:
        writer = self.writer
        if writer is None:
            return
        self.writer = self.reader = None
        try:
            if quit_first:
                writer.write(b"QUIT\r\n")
                await asyncio.wait_for(writer.drain(), self.timeout)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), self.timeout)
        except (OSError, TimeoutError):
            pass  # the session is over either way

    async def read_reply(self) -> list[bytes]:
        """Read one reply, which may have several lines; return its lines without CR LF."""
        assert self.reader is not None
        lines: list[bytes] = []
        while True:
            try:
                line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            except TimeoutError:
                raise ReplayError(f"no reply within {self.timeout:g} s") from None
            except (OSError, ValueError) as error:
                raise ReplayError(f"reading a reply failed: {error}") from None
            if not line.endswith(b"\n"):
                raise ReplayError("the server closed the connection")
            line = line.rstrip(b"\r\n")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in (b"", b" ", b"-"):
                raise ReplayError(f"invalid reply line {line[:80]!r}")
            lines.append(line)
            if line[3:4] != b"-":
                return lines

    async def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        try:
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            raise ReplayError(f"sending timed out after {self.timeout:g} s") from None
        except OSError as error:
            raise ReplayError(f"sending failed: {error}") from None

    async def command(self, line: bytes) -> list[bytes]:
        await self.send(line + b"\r\n")
        return await self.read_reply()


def _path_bytes(path: dict[str, object] | None, what: str) -> bytes:
    raw = str((path or {}).get("raw") or "")
    if any(char in raw for char in "\r\n\0"):
        raise ValueError(f"the stored {what} contains CR, LF or NUL")
    return b"<" + raw.encode("utf-8") + b">"


class Replayer:
    """Sends the selected records over several connections and counts the replies."""

    def __init__(
        self,
        directory: Path,
        target: Target,
        selection: Selection,
        *,
        connections: int = DEFAULT_CONNECTIONS,
        rate: float | None = None,
        ehlo_name: str = "localhost",
        force_bdat: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.directory = directory
        self.target = target
        self.selection = selection
        self.connections = connections
        self.rate = rate
        self.ehlo_name = ehlo_name
        self.force_bdat = force_bdat
        self.timeout = timeout
        self.problems = ProblemLog()
        self.summary = ReplaySummary()
        self.progress = Progress("replay")
        self.seen_ids: set[str] = set()
        self._errors_in_a_row = 0
        self._stop = False
        self._next_start = 0.0

    async def run(self) -> None:
        queue: asyncio.Queue[Record | None] = asyncio.Queue(maxsize=self.connections * 4)
        self._next_start = time.monotonic()
        tasks = [asyncio.create_task(self._worker(queue)) for _ in range(self.connections)]
        tasks.append(asyncio.create_task(self._produce(queue)))
        try:
            # gather raises the first exception at once, so a failed worker cannot leave the
            # producer waiting on a full queue.
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.progress.done()

    async def _produce(self, queue: asyncio.Queue[Record | None]) -> None:
        for record in self._selected():
            if self._stop:
                self.summary.not_sent += 1
                continue
            await queue.put(record)
        for _ in range(self.connections):
            await queue.put(None)

    def _selected(self) -> Iterator[Record]:
        for record in scan_spool(self.directory, self.problems):
            if not self.selection.matches(record):
                continue
            if self.selection.ids:
                self.seen_ids.add(record.id)
            yield record

    async def _wait_for_slot(self) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        start = max(now, self._next_start)
        self._next_start = start + 1.0 / self.rate
        if start > now:
            await asyncio.sleep(start - now)

    async def _worker(self, queue: asyncio.Queue[Record | None]) -> None:
        client = SmtpClient(self.target, self.ehlo_name, self.timeout)
        try:
            while True:
                record = await queue.get()
                if record is None:
                    return
                if self._stop:
                    self.summary.not_sent += 1
                    continue
                await self._wait_for_slot()
                code = await self._replay_one(client, record)
                if code is None:
                    continue  # not sent: reported as a problem
                self.summary.messages += 1
                self.summary.final[code] += 1
                self.progress.step(record.size)
                if code == CONNECTION_ERROR:
                    self._errors_in_a_row += 1
                    if self._errors_in_a_row >= MAX_CONNECTION_ERRORS_IN_A_ROW:
                        self._stop = True
                        self.summary.stopped_reason = (
                            f"stopped after {MAX_CONNECTION_ERRORS_IN_A_ROW} connection errors "
                            "in a row"
                        )
                else:
                    self._errors_in_a_row = 0
        finally:
            await client.close(quit_first=True)

    async def _replay_one(self, client: SmtpClient, record: Record) -> str | None:
        try:
            content = [record.message()] if record.size <= SMALL_MESSAGE else None
            if self.force_bdat:
                chunking = True
            else:
                chunking = content_needs_chunking(content or record.chunks(CONTENT_BLOCK))
            envelope = record.envelope
            reverse = _path_bytes(envelope.get("reverse_path"), "reverse-path")
            forwards = [
                _path_bytes(path, "forward-path") for path in envelope.get("forward_paths") or []
            ]
        except SpoolDataError as error:
            self.problems.report_text(f"{error}; skipped message {record.id}")
            return None
        except ValueError as error:
            self.problems.report_text(f"{error}; skipped message {record.id}")
            return None
        if not forwards:
            self.problems.report_text(f"message {record.id} has no recipients; skipped it")
            return None
        try:
            if not client.connected:
                await client.connect()
            return await self._transaction(client, record, reverse, forwards, chunking, content)
        except ReplayError as error:
            self.problems.report_text(f"message {record.id}: {error}")
            await client.close(quit_first=False)
            return CONNECTION_ERROR
        except SpoolDataError as error:
            # The content changed under the reader in the middle of sending it, so the
            # session cannot be finished cleanly.
            self.problems.report_text(f"{error}; message {record.id} not sent")
            await client.close(quit_first=False)
            return None

    def _mail_parameters(self, client: SmtpClient, record: Record) -> bytes:
        stored = (record.envelope.get("reverse_path") or {}).get("params") or {}
        stored = {str(key).upper(): value for key, value in stored.items()}
        parameters = []
        if "SMTPUTF8" in stored and "SMTPUTF8" in client.extensions:
            parameters.append(b"SMTPUTF8")
        body = str(stored.get("BODY") or "").upper()
        if body == "8BITMIME" and "8BITMIME" in client.extensions:
            parameters.append(b"BODY=8BITMIME")
        if "SIZE" in stored and "SIZE" in client.extensions:
            parameters.append(f"SIZE={record.size}".encode())
        return b"".join(b" " + parameter for parameter in parameters)

    async def _transaction(
        self,
        client: SmtpClient,
        record: Record,
        reverse: bytes,
        forwards: list[bytes],
        chunking: bool,
        content: list[bytes] | None,
    ) -> str:
        mail = b"MAIL FROM:" + reverse + self._mail_parameters(client, record)
        rcpts = [b"RCPT TO:" + forward for forward in forwards]
        if "PIPELINING" in client.extensions:
            await client.send(b"".join(line + b"\r\n" for line in [mail, *rcpts]))
            replies = [await client.read_reply() for _ in range(1 + len(rcpts))]
        else:
            replies = [await client.command(mail)]
            if _reply_code(replies[0]) == 250:
                replies += [await client.command(line) for line in rcpts]
        mail_code = _reply_code(replies[0])
        if mail_code != 250:
            await self._reset(client, mail_code)
            return str(mail_code)
        refused = [_reply_code(reply) for reply in replies[1:] if _reply_code(reply) // 100 != 2]
        if len(refused) == len(rcpts):
            await self._reset(client, refused[-1])
            return str(refused[-1])

        use_bdat = chunking and "CHUNKING" in client.extensions
        pieces = iter(content) if content is not None else record.chunks(CONTENT_BLOCK)
        try:
            if use_bdat:
                final = await self._send_bdat(client, pieces)
            else:
                final = await self._send_data(client, pieces)
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # closes the segment file now, also after a refused chunk
        code = _reply_code(final)
        if code == 421:
            await client.close(quit_first=False)
        for refused_code in refused:
            self.summary.refused_recipients[str(refused_code)] += 1
        return str(code)

    async def _reset(self, client: SmtpClient, code: int) -> None:
        if code == 421:
            await client.close(quit_first=False)
            return
        reply = await client.command(b"RSET")
        if _reply_code(reply) != 250:
            await client.close(quit_first=False)

    async def _send_data(self, client: SmtpClient, pieces: Iterator[bytes]) -> list[bytes]:
        reply = await client.command(b"DATA")
        if _reply_code(reply) != 354:
            return reply
        stuffer = DotStuffer()
        last_two = b""
        for piece in pieces:
            await client.send(stuffer.feed(piece))
            last_two = (last_two + piece)[-2:]
        # NOTE: content that does not end in CR LF gets one here, because DATA cannot end
        # otherwise. Such content goes as BDAT when the server offers CHUNKING.
        ending = b".\r\n" if last_two in (b"", b"\r\n") else b"\r\n.\r\n"
        await client.send(ending)
        return await client.read_reply()

    async def _send_bdat(self, client: SmtpClient, pieces: Iterator[bytes]) -> list[bytes]:
        piece = next(pieces, b"")
        while True:
            following = next(pieces, None)
            last = b" LAST" if following is None else b""
            await client.send(b"BDAT %d%s\r\n" % (len(piece), last) + piece)
            reply = await client.read_reply()
            if following is None or _reply_code(reply) != 250:
                return reply
            piece = following


def replay_messages(
    directory: Path,
    target: Target,
    selection: Selection,
    *,
    connections: int = DEFAULT_CONNECTIONS,
    rate: float | None = None,
    ehlo_name: str = "localhost",
    force_bdat: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> int:
    """Replay the selected messages to `target`; print the summary and return the exit status."""
    replayer = Replayer(
        directory,
        target,
        selection,
        connections=connections,
        rate=rate,
        ehlo_name=ehlo_name,
        force_bdat=force_bdat,
        timeout=timeout,
    )
    started = time.monotonic()
    asyncio.run(replayer.run())
    seconds = time.monotonic() - started
    for message_id in sorted(selection.ids - replayer.seen_ids):
        replayer.problems.report_text(f"message {message_id} not found")
    for line in replayer.summary.lines(target, seconds):
        print(line)
    sys.stdout.flush()
    if replayer.problems.count or not replayer.summary.all_accepted:
        return 1
    return 0
