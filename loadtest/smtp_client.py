"""A small blocking SMTP client on plain sockets, for load generation.

Locust patches the socket module with gevent, so under locust these blocking calls yield to
the other users instead of blocking the process. The client speaks just enough SMTP to load a
sink: EHLO with a fallback to HELO, PIPELINING when the server offers it, several recipients
and several messages per connection, dot-stuffing, and QUIT or an abrupt close.

Every method that reads a reply compares its code with the expected one and raises
`SmtpReplyError`, which carries the command, the expected code and the reply.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_REPLY_LINE = 4096

# Called with the stage name, the seconds it took, the octets sent in it and the exception
# that ended it (None when it succeeded).
StageHook = Callable[[str, float, int, BaseException | None], None]


@dataclass(frozen=True)
class Reply:
    """A complete SMTP reply: the code and the text of each line without the code."""

    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".rstrip()


class SmtpError(Exception):
    """A failure of the SMTP conversation that is not a reply code: a closed or garbled link."""


class SmtpReplyError(SmtpError):
    """A reply whose code is not the expected one.

    The message names the verb without its argument (`RCPT: expected 250, got 550 ...`), so
    that locust groups the failures of every recipient together. `command` is the full command.
    """

    def __init__(self, command: str, expected: int, reply: Reply) -> None:
        label = command.split(" ", 1)[0] if command[:4].isupper() else command
        super().__init__(f"{label}: expected {expected}, got {reply}")
        self.command = command
        self.expected = expected
        self.reply = reply

    @property
    def code(self) -> int:
        return self.reply.code


def dot_stuff(content: bytes) -> bytes:
    """Return content ready for DATA: dot-stuffed, ending in CRLF, without the final dot line.

    Only a dot at the start of the content or after CRLF starts a line, because the sink
    unstuffs only there (a bare LF never starts a line for it).
    """
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if stuffed and not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed


class SmtpClient:
    """One SMTP connection. Use it as a context manager to close the socket in every case."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = 30.0,
        helo_name: str = "loadtest.localhost",
        pipelining: bool = True,
        stage_hook: StageHook | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.helo_name = helo_name
        self.use_pipelining = pipelining
        self.stage_hook = stage_hook
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self._sock: socket.socket | None = None
        self._buffer = b""

    # --- connection --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._sock is not None

    @property
    def pipelining(self) -> bool:
        """Whether transactions are pipelined: requested and offered by the server."""
        return self.use_pipelining and "PIPELINING" in self.extensions

    def connect(self) -> Reply:
        """Open the connection and read the 220 greeting."""
        started = time.perf_counter()
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greeting = self._expect("greeting", 220)
        except BaseException as error:
            self._stage("connect", started, 0, error)
            self.abort()
            raise
        self._stage("connect", started, 0, None)
        return greeting

    def hello(self) -> Reply:
        """Send EHLO and record the extensions, or fall back to HELO when EHLO gets a 5xx."""
        started = time.perf_counter()
        try:
            self._send(f"EHLO {self.helo_name}\r\n".encode())
            reply = self._read_reply()
            if 500 <= reply.code < 600:
                self._send(f"HELO {self.helo_name}\r\n".encode())
                reply = self._check(f"HELO {self.helo_name}", 250, self._read_reply())
                self.esmtp = False
                self.extensions = {}
            else:
                self._check(f"EHLO {self.helo_name}", 250, reply)
                self.esmtp = True
                self.extensions = _parse_extensions(reply)
        except BaseException as error:
            self._stage("ehlo", started, 0, error)
            raise
        self._stage("ehlo", started, 0, None)
        return reply

    def quit(self) -> None:
        """Send QUIT, read the 221 and close the socket."""
        try:
            self._send(b"QUIT\r\n")
            self._expect("QUIT", 221)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket without QUIT, as a client that gives up or crashes does."""
        sock, self._sock = self._sock, None
        self._buffer = b""
        if sock is not None:
            sock.close()

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()

    # --- transactions ------------------------------------------------------------------------

    def send_message(
        self,
        sender: str,
        recipients: Sequence[str],
        content: bytes,
        *,
        expect_rcpt: int = 250,
    ) -> Reply:
        """Run one transaction and return its final reply.

        With `expect_rcpt` 250 the message is sent and the final reply must be 250. With any
        other code every RCPT must get that code, no content is sent, and the transaction ends
        with RSET, whose reply is returned. Raises `SmtpReplyError` on the first unexpected
        reply. When the server has already replied 354 to DATA by then, the connection is
        closed without sending content, so no message is stored by mistake.
        """
        if not recipients:
            raise ValueError("a transaction needs at least one recipient")
        deliver = expect_rcpt == 250
        size = f" SIZE={len(content)}" if deliver and "SIZE" in self.extensions else ""
        mail = f"MAIL FROM:<{sender}>{size}"
        rcpts = [f"RCPT TO:<{recipient}>" for recipient in recipients]
        last = "DATA" if deliver else "RSET"
        if self.pipelining:
            final = self._pipelined(mail, rcpts, last, expect_rcpt)
        else:
            final = self._one_by_one(mail, rcpts, last, expect_rcpt)
        if not deliver:
            return final

        started = time.perf_counter()
        stuffed = dot_stuff(content)
        try:
            self._send(stuffed + b".\r\n")
            reply = self._expect("end of data", 250)
        except BaseException as error:
            self._stage("end-of-data", started, len(stuffed), error)
            raise
        self._stage("end-of-data", started, len(stuffed), None)
        return reply

    def _pipelined(self, mail: str, rcpts: list[str], last: str, expect_rcpt: int) -> Reply:
        """Send MAIL, the RCPTs and DATA (or RSET) in one write, then read every reply.

        The stage times are measured from the write to each reply, so with pipelining `mail`
        includes the round trip and `rcpt` and `data` are the gaps between the replies.
        """
        commands = [mail, *rcpts, last]
        started = time.perf_counter()
        self._send("".join(f"{command}\r\n" for command in commands).encode())
        expected = [250] + [expect_rcpt] * len(rcpts) + [354 if last == "DATA" else 250]
        stages = ["mail"] + ["rcpt"] * len(rcpts) + ["data"]
        failure: SmtpReplyError | None = None
        reply = Reply(0, ())
        last_rcpt = len(commands) - 2
        for index, (command, code, stage) in enumerate(
            zip(commands, expected, stages, strict=True)
        ):
            try:
                reply = self._read_reply()
            except BaseException as error:
                self._stage(stage, started, 0, error)
                raise
            if reply.code != code and failure is None:
                failure = SmtpReplyError(command, code, reply)
            if stage != "rcpt" or index == last_rcpt:
                self._stage(stage, started, 0, failure if reply.code != code else None)
                started = time.perf_counter()
        if failure is not None:
            if reply.code == 354:
                self.abort()
            elif last == "DATA":
                # A refused DATA leaves the transaction open: reset it for the next one.
                self._send(b"RSET\r\n")
                self._read_reply()
            raise failure
        return reply

    def _one_by_one(self, mail: str, rcpts: list[str], last: str, expect_rcpt: int) -> Reply:
        """Send each command and wait for its reply. On a failure, send RSET and raise."""
        steps = [("mail", mail, 250)] + [("rcpt", rcpt, expect_rcpt) for rcpt in rcpts]
        steps.append(("data", last, 354 if last == "DATA" else 250))
        started = time.perf_counter()
        reply = Reply(0, ())
        for index, (stage, command, code) in enumerate(steps):
            try:
                self._send(f"{command}\r\n".encode())
                reply = self._expect(command, code)
            except SmtpReplyError as error:
                self._stage(stage, started, 0, error)
                if last == "DATA" and error.code == 354:
                    self.abort()
                elif command != "RSET":
                    self._send(b"RSET\r\n")
                    self._read_reply()
                raise
            except BaseException as error:
                self._stage(stage, started, 0, error)
                raise
            if stage != "rcpt" or steps[index + 1][0] != "rcpt":
                self._stage(stage, started, 0, None)
                started = time.perf_counter()
        return reply

    # --- wire --------------------------------------------------------------------------------

    def _stage(self, name: str, started: float, octets: int, error: BaseException | None) -> None:
        if self.stage_hook is not None:
            self.stage_hook(name, time.perf_counter() - started, octets, error)

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise SmtpError("not connected")
        self._sock.sendall(data)

    def _read_line(self) -> bytes:
        if self._sock is None:
            raise SmtpError("not connected")
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line, self._buffer = self._buffer[:newline], self._buffer[newline + 1 :]
                return line.rstrip(b"\r")
            if len(self._buffer) > MAX_REPLY_LINE:
                raise SmtpError(f"reply line longer than {MAX_REPLY_LINE} octets")
            data = self._sock.recv(65536)
            if not data:
                self.abort()
                raise SmtpError("connection closed by the server")
            self._buffer += data

    def _read_reply(self) -> Reply:
        """Read one reply, which may span several `CODE-text` lines ending with `CODE text`."""
        lines: list[str] = []
        while True:
            line = self._read_line().decode("utf-8", "replace")
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise SmtpError(f"malformed reply line: {line!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return Reply(int(line[:3]), tuple(lines))

    def _expect(self, command: str, code: int) -> Reply:
        return self._check(command, code, self._read_reply())

    @staticmethod
    def _check(command: str, code: int, reply: Reply) -> Reply:
        if reply.code != code:
            raise SmtpReplyError(command, code, reply)
        return reply


def _parse_extensions(reply: Reply) -> dict[str, str]:
    """Map each EHLO keyword (upper case) to its parameters, skipping the greeting line."""
    extensions: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, parameters = line.partition(" ")
        extensions[keyword.upper()] = parameters
    return extensions
