"""The SMTP session state machine (RFC 5321 with PIPELINING, SIZE, 8BITMIME, SMTPUTF8,
ENHANCEDSTATUSCODES and CHUNKING).

Theory of operation. `Session.receive` is given the receive buffer and how many octets in it are
valid. It handles every complete command in order, appends each reply to `out`, streams message
content into the store, and returns how many octets it consumed. The caller keeps the rest (an
unfinished command line, or up to four octets of a possible end-of-data marker) and presents it
again at the start of the buffer before the next read. The caller then sends `out` in one write,
so the replies to a pipelined batch leave together, and closes the connection once `closing` is
set and `out` is sent.

The session does no IO, and client input never makes it raise: every problem becomes a reply.
`State` names where the session is. Which verb is allowed in which state is the `_SEQUENCE`
table; the handlers only carry out what the table allowed.
"""

from __future__ import annotations

import enum
import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from sink.smtp import quirks, replies
from sink.smtp.body import ChunkReader, DotReader, _discard
from sink.smtp.counters import (
    ACCEPTED_BASE,
    DATA_DURATION,
    QUIRK_INDEX,
    REPLY_INDEX,
    SIZE_BOUNDS,
    SIZE_SHIFT,
    TIME_BUCKETS,
    VERB_INDEX,
    Field,
    private_counters,
)
from sink.smtp.counters import OTHER_REPLY as _OTHER_REPLY
from sink.smtp.counters import UNKNOWN_VERB as _UNKNOWN_VERB
from sink.smtp.paths import Path, PathError, parse_mail_from, parse_rcpt_to
from sink.smtp.policy import MAX_COMMAND_LINE, Policy
from sink.store import Store, StoreError, Transaction

_CR = 0x0D
_MESSAGES_REFUSED = int(Field.MESSAGES_REFUSED)
_MESSAGES_ABORTED = int(Field.MESSAGES_ABORTED)
_MAIL_ACCEPTED = int(Field.MAIL_ACCEPTED)
_DATA_ACCEPTED = int(Field.DATA_ACCEPTED)
_RECIPIENTS_ACCEPTED = int(Field.RECIPIENTS_ACCEPTED)
_RECIPIENTS_REFUSED = int(Field.RECIPIENTS_REFUSED)
_DATA_BYTES = int(Field.DATA_BYTES)
_BDAT_BYTES = int(Field.BDAT_BYTES)
_ACCEPTED_DATA_OCTETS = int(Field.ACCEPTED_DATA_OCTETS)
_ACCEPTED_BDAT_OCTETS = int(Field.ACCEPTED_BDAT_OCTETS)
_REPLY_INDEX = REPLY_INDEX
_SIZE_LAST = len(SIZE_BOUNDS)  # the +Inf bucket
_ROW_BASES = tuple(ACCEPTED_BASE + row * TIME_BUCKETS for row in range(_SIZE_LAST + 1))
_DATA_TIME_BASE = DATA_DURATION.base
_LATENCY_BOUNDS = DATA_DURATION.bounds
# Over loopback, DATA times are expected within the first four bounds (up to 1 ms), where four
# comparisons are cheaper than a bisection.
_LATENCY_0, _LATENCY_1, _LATENCY_2, _LATENCY_3 = _LATENCY_BOUNDS[:4]
_DATA_TIME_SUM = DATA_DURATION.sum_word
_DIGIT_2 = ord("2")  # the first octet of a 2xx reply
_perf_counter = time.perf_counter
_REPLY_WORDS = {
    reply: REPLY_INDEX.get(int(reply[:3]), _OTHER_REPLY)
    for reply in vars(replies).values()
    if isinstance(reply, bytes) and reply[:3].isdigit()
}
_QUIRK_INDEX = QUIRK_INDEX
_VERB_INDEX = VERB_INDEX
_KNOWN_UNIMPLEMENTED = frozenset(
    {b"STARTTLS", b"AUTH", b"EXPN", b"ETRN", b"TURN", b"ATRN", b"BURL", b"XCLIENT", b"XFORWARD"}
)


class State(enum.IntEnum):
    """The stage of a session. A transaction runs from MAIL to the end of DATA or the last BDAT."""

    CONNECTED = 0  # greeting sent, no HELO or EHLO yet
    GREETED = 1  # HELO or EHLO accepted, no transaction
    MAIL = 2  # reverse-path accepted; forward-paths may follow
    DATA = 3  # reading a DATA body up to CR LF . CR LF
    BDAT = 4  # reading the octets of one BDAT chunk
    DISCARD = 5  # skipping the rest of a command line that was too long
    CLOSED = 6  # QUIT or 421 sent; nothing more is read


# Verbs that only some states allow, with the reply in the other states.
_SEQUENCE: dict[bytes, tuple[frozenset[State], bytes]] = {
    b"MAIL": (frozenset({State.CONNECTED, State.GREETED}), replies.NESTED_MAIL),
    b"RCPT": (frozenset({State.MAIL}), replies.NEED_MAIL),
    b"DATA": (frozenset({State.MAIL}), replies.NEED_MAIL),
}


class Session:
    """One SMTP conversation, from greeting to QUIT or close."""

    __slots__ = (
        # per connection
        "policy",
        "store",
        "client_address",
        "client_port",
        "worker",
        "clock",
        "state",
        "out",
        "closing",
        "helo",
        "esmtp",
        "quirks",
        "errors",
        "counters",
        "ended",
        # per transaction
        "reverse_path",
        "mail_parameters",
        "forward_paths",
        "smtputf8",
        "chunked",
        "_txn",
        "_reader",
        "_chunk_reply",
        "_content_size",
        "_store_failed",
        "_content_started",
    )

    reverse_path: Path | None
    mail_parameters: dict[str, str | None]
    forward_paths: list[tuple[Path, dict[str, str | None]]]
    smtputf8: bool
    chunked: bool
    _txn: Transaction | None
    _reader: DotReader | ChunkReader | None
    _chunk_reply: bytes | None
    _content_size: int
    _store_failed: bool
    _content_started: float | None

    def __init__(
        self,
        policy: Policy,
        store: Store,
        client_address: str = "",
        client_port: int = 0,
        worker: int = 0,
        clock: Callable[[], float] = time.time,
        counters: memoryview | None = None,
    ) -> None:
        self.policy = policy
        self.store = store
        self.client_address = client_address
        self.client_port = client_port
        self.worker = worker
        self.clock = clock
        self.state = State.CONNECTED
        self.out: list[bytes] = []
        self.closing = False
        self.helo: str | None = None
        self.esmtp = False
        self.quirks: dict[str, int] | None = None
        self.errors = 0
        self.counters = counters if counters is not None else private_counters()
        self.ended = "client_close"  # how the session ended, for the metrics
        self._reset_transaction()

    # --- input ------------------------------------------------------------------------------

    def greeting(self) -> bytes:
        """Return the 220 greeting that opens the session."""
        return self.policy.greeting

    def receive(self, buf: bytearray, view: memoryview, end: int) -> int:
        """Handle `buf[:end]` and return how many octets were consumed (see the module doc)."""
        pos = 0
        commands = 0
        while pos < end and not self.closing:
            state = self.state
            if state is State.DATA:
                pos = self._receive_data(buf, view, pos, end)
                if self.state is State.DATA:
                    break
            elif state is State.BDAT:
                pos = self._receive_chunk(view, pos, end)
            elif state is State.DISCARD:
                newline = buf.find(b"\n", pos, end)
                if newline < 0:
                    return end
                pos = newline + 1
                self.state = self._idle_state()
                self.counters[_UNKNOWN_VERB] += 1  # a command whose verb was never read
                self._error(replies.LINE_TOO_LONG)
            else:
                newline = buf.find(b"\n", pos, end)
                if newline < 0:
                    if end - pos >= MAX_COMMAND_LINE:
                        self._quirk(quirks.LONG_LINE)
                        self.state = State.DISCARD
                        return end
                    break

                commands += 1
                if commands == 2 and not self.esmtp:
                    self._quirk(quirks.PIPELINING_NOT_OFFERED)
                self._command(bytes(view[pos:newline]), newline + 1 - pos)
                pos = newline + 1
                if self.state is State.DATA and pos < end:
                    self._quirk(quirks.PIPELINING_AFTER_DATA)

        # A BDAT of zero octets ends without any more input.
        reader = self._reader
        if self.state is State.BDAT and isinstance(reader, ChunkReader) and reader.remaining == 0:
            self._finish_chunk()
        return pos

    def connection_lost(self) -> None:
        """Drop a transaction in progress: a message cut off by a disconnect is never stored."""
        self._abort_transaction()
        self.state = State.CLOSED
        self.closing = True

    def shut_down(self) -> None:
        """Send 421 and close, because the server is stopping."""
        self._close_with(replies.SHUTTING_DOWN, "shutdown")

    def time_out(self) -> None:
        """Send 421 and close, because the client was idle too long."""
        self._close_with(replies.TIMEOUT, "timeout")

    @property
    def in_transaction(self) -> bool:
        """Tell whether a transaction has started (MAIL accepted, not yet finished)."""
        return self.state in (State.MAIL, State.DATA, State.BDAT) or self._txn is not None

    # --- commands ---------------------------------------------------------------------------

    def _command(self, line: bytes, length: int) -> None:
        if length > MAX_COMMAND_LINE:
            self.counters[_UNKNOWN_VERB] += 1  # too long to trust its verb
            self._quirk(quirks.LONG_LINE)
            self._error(replies.LINE_TOO_LONG)
            return

        if line.endswith(b"\r"):
            line = line[:-1]
        else:
            self._quirk(quirks.BARE_LF_COMMAND)
            if self.policy.strict_line_endings:
                self._error(replies.BARE_LF_COMMAND)
                return

        space = line.find(b" ")
        if space < 0:
            verb, argument = line, b""
        else:
            verb, argument = line[:space], line[space + 1 :].strip(b" ")
        name = verb.upper()
        command = _HANDLERS.get(name)
        if command is None:
            self.counters[_VERB_INDEX.get(name, _UNKNOWN_VERB)] += 1
            if not name:
                self._quirk(quirks.EMPTY_LINE)
                self._error(replies.UNRECOGNIZED)
            elif name in _KNOWN_UNIMPLEMENTED:
                self._error(replies.NOT_IMPLEMENTED)
            else:
                self._quirk(quirks.UNKNOWN_COMMAND)
                self._error(replies.UNRECOGNIZED)
            return
        handler, word = command
        if verb != name:
            self._quirk(quirks.LOWERCASE_VERB)

        sequence = _SEQUENCE.get(name)
        if sequence is not None and self.state not in sequence[0]:
            self.counters[word] += 1
            self._error(sequence[1])
            return
        if not handler(self, argument):
            self.counters[word] += 1

    def _helo(self, argument: bytes) -> None:
        if not argument:
            self._error(replies.HELO_SYNTAX)
            return
        self._greeted(argument, esmtp=False)
        self._reply(self.policy.helo_reply)

    def _ehlo(self, argument: bytes) -> None:
        if not argument:
            self._error(replies.EHLO_SYNTAX)
            return
        self._greeted(argument, esmtp=True)
        self._reply(self.policy.ehlo_reply)

    def _greeted(self, argument: bytes, esmtp: bool) -> None:
        # RFC 5321 4.1.4: HELO or EHLO in the middle of a transaction resets it.
        self._abort_transaction()
        self.helo = argument.decode("utf-8", "backslashreplace")
        self.esmtp = esmtp
        self.state = State.GREETED

    def _mail(self, argument: bytes) -> bool:
        if self.state is State.CONNECTED:
            if self.policy.require_helo:
                self._error(replies.NEED_HELO)
                return False
            self._quirk(quirks.NO_HELO)

        try:
            path, parameters, seen = parse_mail_from(argument)
        except PathError as error:
            self._error(replies.error_reply(*error.reply))
            return False
        for quirk in seen:
            self._quirk(quirk)

        smtputf8 = False
        for keyword, value in parameters.items():
            if keyword == "SIZE":
                if value is None or not value.isdigit():
                    self._error(replies.BAD_SIZE)
                    return False
                if int(value) > self.policy.max_message_size:
                    self._reply(replies.SIZE_EXCEEDED)
                    return False
            elif keyword == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self._error(replies.BAD_BODY)
                    return False
            elif keyword == "SMTPUTF8":
                if value is not None:
                    self._error(replies.BAD_SMTPUTF8)
                    return False
                smtputf8 = True
            else:
                self._error(replies.unsupported_parameter(keyword))
                return False

        if path.utf8 and not smtputf8 and not self._allow_utf8_without_option():
            return False
        if not path.raw:
            self._quirk(quirks.NULL_SENDER)

        self.reverse_path = path
        self.mail_parameters = parameters
        self.smtputf8 = smtputf8
        self.state = State.MAIL
        self.out.append(replies.SENDER_OK)
        self.counters[_MAIL_ACCEPTED] += 1  # the command and its reply, in one word
        return True

    def _rcpt(self, argument: bytes) -> bool:
        try:
            path, parameters, seen = parse_rcpt_to(argument)
        except PathError as error:
            self._error(replies.error_reply(*error.reply))
            return False
        for quirk in seen:
            self._quirk(quirk)
        for keyword in parameters:
            self._error(replies.unsupported_parameter(keyword))
            return False

        if path.utf8 and not self.smtputf8 and not self._allow_utf8_without_option():
            self.counters[_RECIPIENTS_REFUSED] += 1
            return False
        if len(self.forward_paths) >= self.policy.max_recipients:
            self.counters[_RECIPIENTS_REFUSED] += 1
            self._reply(replies.TOO_MANY_RECIPIENTS)
            return False
        if self.policy.rejects(path.mailbox):
            self.counters[_RECIPIENTS_REFUSED] += 1
            self._reply(replies.NO_SUCH_USER)
            return False

        self.forward_paths.append((path, parameters))
        self.out.append(replies.RECIPIENT_OK)
        self.counters[_RECIPIENTS_ACCEPTED] += 1  # the command and its reply, in one word
        return True

    def _allow_utf8_without_option(self) -> bool:
        """Accept a non-ASCII address sent without SMTPUTF8, unless line endings are strict."""
        if self.policy.strict_line_endings:
            self._reply(replies.NEEDS_SMTPUTF8)
            return False
        self._quirk(quirks.UTF8_WITHOUT_SMTPUTF8)
        return True

    def _data(self, argument: bytes) -> bool:
        if argument:
            self._error(replies.NO_ARGUMENTS)
            return False
        if self.chunked:
            self._error(replies.DATA_AFTER_BDAT)
            return False
        if not self.forward_paths:
            self._error(replies.NO_VALID_RECIPIENTS)
            return False
        if not self._begin():
            self._abort_transaction()
            self._reply(replies.STORE_FAILED)
            return False
        self._reader = DotReader(self._write)
        self._content_started = _perf_counter()
        self.state = State.DATA
        self.out.append(replies.START_DATA)
        self.counters[_DATA_ACCEPTED] += 1  # the command and its reply, in one word
        return True

    def _bdat(self, argument: bytes) -> None:
        words = argument.split()
        if (
            not 1 <= len(words) <= 2
            or not words[0].isdigit()
            or (len(words) == 2 and words[1].upper() != b"LAST")
        ):
            # Without a valid size the chunk cannot be skipped; the client is out of step.
            self._error(replies.BDAT_SYNTAX)
            return
        size = int(words[0])
        last = len(words) == 2

        # A refused BDAT still consumes its chunk (RFC 3030 2): read it, then reply.
        self._chunk_reply = None
        emit = _discard
        if self.state is not State.MAIL:
            self._chunk_reply = replies.NEED_MAIL
        elif not self.forward_paths:
            self._chunk_reply = replies.NO_VALID_RECIPIENTS
        elif self._txn is None and not self._begin():
            self._chunk_reply = replies.STORE_FAILED
        else:
            emit = self._write
            if self._content_started is None:
                self._content_started = _perf_counter()
        self.chunked = True
        self._reader = ChunkReader(emit, size, last)
        self.state = State.BDAT

    def _rset(self, argument: bytes) -> None:
        if argument:
            self._error(replies.NO_ARGUMENTS)
            return
        self._abort_transaction()
        self.state = self._idle_state()
        self._reply(replies.OK)

    def _noop(self, argument: bytes) -> None:
        self._reply(replies.OK)

    def _quit(self, argument: bytes) -> None:
        self._close_with(replies.BYE, "quit")

    def _vrfy(self, argument: bytes) -> None:
        if not argument:
            self._error(replies.VRFY_SYNTAX)
            return
        self._reply(replies.CANNOT_VRFY)

    def _help(self, argument: bytes) -> None:
        self._reply(replies.HELP)

    # --- message content --------------------------------------------------------------------

    def _receive_data(self, buf: bytearray, view: memoryview, pos: int, end: int) -> int:
        reader = self._reader
        assert isinstance(reader, DotReader)
        pos = reader.feed(buf, view, pos, end)
        if reader.size > self.policy.max_message_size and self._txn is not None:
            self._drop_content()
        if reader.done:
            self._finish_data(reader)
        return pos

    def _finish_data(self, reader: DotReader) -> None:
        if reader.bare_lf:
            self._quirk(quirks.BARE_LF)
        if reader.bare_cr:
            self._quirk(quirks.BARE_CR)

        if reader.size > self.policy.max_message_size:
            reply = replies.SIZE_EXCEEDED
        elif self.policy.strict_line_endings and (reader.bare_lf or reader.bare_cr):
            reply = replies.BARE_LINE_END
        else:
            meta = {
                "size": reader.size,
                "bare_lf": reader.bare_lf,
                "bare_cr": reader.bare_cr,
            }
            reply = self._commit(meta)
        if reply[0] != _DIGIT_2:  # accepted octets are counted by _commit
            self.counters[_DATA_BYTES] += reader.size
        self._end_transaction(reply)

    def _receive_chunk(self, view: memoryview, pos: int, end: int) -> int:
        reader = self._reader
        assert isinstance(reader, ChunkReader)
        pos = reader.feed(view, pos, end)
        if reader.remaining == 0:
            self._finish_chunk()
        return pos

    def _finish_chunk(self) -> None:
        reader = self._reader
        assert isinstance(reader, ChunkReader)
        self._reader = None
        self.counters[_BDAT_BYTES] += reader.size
        if self._chunk_reply is not None:
            self._end_transaction(self._chunk_reply)
            return
        if self._store_failed:
            self._end_transaction(replies.STORE_FAILED)
            return
        if self._content_size > self.policy.max_message_size:
            self._end_transaction(replies.SIZE_EXCEEDED)
            return
        if not reader.last:
            self.state = State.MAIL
            self._reply(replies.chunk_received(reader.size))
            return
        self._end_transaction(self._commit({"size": self._content_size}))

    # --- store ------------------------------------------------------------------------------

    def _begin(self) -> bool:
        """Open a store transaction with the envelope; False if the store failed."""
        try:
            self._txn = self.store.begin(self._envelope())
        except StoreError:
            self._store_failed = True
            return False
        return True

    def _write(self, chunk: memoryview) -> None:
        txn = self._txn
        self._content_size += len(chunk)
        if txn is None:
            return
        if self._content_size > self.policy.max_message_size:
            self._drop_content()
            return
        try:
            txn.write(chunk)
        except StoreError:
            self._store_failed = True
            self._drop_content()

    def _drop_content(self) -> None:
        """Stop storing the current message; the rest of it is read and dropped."""
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def _commit(self, meta: dict[str, Any]) -> bytes:
        txn = self._txn
        if txn is None or self._store_failed:
            return replies.STORE_FAILED
        meta["quirks"] = dict(self.quirks) if self.quirks else {}
        self._txn = None
        try:
            message_id = txn.commit(meta)
        except StoreError:
            return replies.STORE_FAILED
        # The accepted message counts once (see sink.smtp.counters): a cell of the
        # accepted-message table for its size and DATA time, its octets and its time. The
        # buckets are computed inline because this runs for every message.
        size = meta["size"]
        row = (size - 1).bit_length() - SIZE_SHIFT
        if row < 0:
            row = 0
        elif row > _SIZE_LAST:
            row = _SIZE_LAST
        started = self._content_started
        elapsed = _perf_counter() - started if started is not None else 0.0
        if elapsed <= _LATENCY_0:
            column = 0
        elif elapsed <= _LATENCY_1:
            column = 1
        elif elapsed <= _LATENCY_2:
            column = 2
        elif elapsed <= _LATENCY_3:
            column = 3
        else:
            column = bisect_left(_LATENCY_BOUNDS, elapsed)
        counters = self.counters
        counters[_ROW_BASES[row] + column] += 1
        counters[_ACCEPTED_BDAT_OCTETS if self.chunked else _ACCEPTED_DATA_OCTETS] += size
        counters[_DATA_TIME_SUM] += int(elapsed * 1e6)
        self._content_started = None  # so that _end_transaction does not count it again
        return replies.queued(message_id)

    def _envelope(self) -> dict[str, Any]:
        reverse_path = self.reverse_path
        assert reverse_path is not None
        # Protocol names as in RFC 3848 and RFC 6531; None when the client never greeted.
        protocol: str | None = None
        if self.esmtp:
            protocol = "UTF8SMTP" if self.smtputf8 else "ESMTP"
        elif self.helo is not None:
            protocol = "SMTP"
        return {
            "received": self.clock(),
            "worker": self.worker,
            "client": {"address": self.client_address, "port": self.client_port},
            "helo": self.helo,
            "protocol": protocol,
            "reverse_path": _path_record(reverse_path, self.mail_parameters),
            "forward_paths": [
                _path_record(path, parameters) for path, parameters in self.forward_paths
            ],
        }

    # --- bookkeeping ------------------------------------------------------------------------

    def _reset_transaction(self) -> None:
        self.reverse_path = None
        self.mail_parameters = {}
        self.forward_paths = []
        self.smtputf8 = False
        self.chunked = False
        self._txn = None
        self._reader = None
        self._chunk_reply = None
        self._content_size = 0
        self._store_failed = False
        self._content_started = None

    def _abort_transaction(self) -> None:
        """Drop the transaction without a final reply (RSET, HELO, disconnect, 421)."""
        if self._content_started is not None:
            counters = self.counters
            counters[_MESSAGES_ABORTED] += 1
            reader = self._reader
            if isinstance(reader, DotReader):
                counters[_DATA_BYTES] += reader.size
            elif isinstance(reader, ChunkReader):
                counters[_BDAT_BYTES] += reader.size - reader.remaining
        if self._txn is not None:
            self._txn.abort()
        self._reset_transaction()

    def _end_transaction(self, reply: bytes) -> None:
        """Finish the transaction with its final reply: 250 queued, or a refusal."""
        started = self._content_started
        if started is not None:
            # A refused message with content (_commit has counted an accepted one).
            elapsed = _perf_counter() - started
            counters = self.counters
            counters[_DATA_TIME_BASE + bisect_left(_LATENCY_BOUNDS, elapsed)] += 1
            counters[_DATA_TIME_SUM] += int(elapsed * 1e6)
            counters[_MESSAGES_REFUSED] += 1
        if self._txn is not None:
            self._txn.abort()
        self._reset_transaction()
        self.state = self._idle_state()
        if reply[0] == _DIGIT_2:
            self.out.append(reply)  # 250 queued, counted by _commit
        else:
            self._reply(reply)

    def _idle_state(self) -> State:
        return State.GREETED if self.helo is not None else State.CONNECTED

    def _reply(self, reply: bytes) -> None:
        """Queue a reply and count it by code."""
        self.out.append(reply)
        word = _REPLY_WORDS.get(reply)  # the constant replies; their hashes are cached
        if word is None:
            code = (reply[0] - 48) * 100 + (reply[1] - 48) * 10 + reply[2] - 48
            word = _REPLY_INDEX.get(code, _OTHER_REPLY)
        self.counters[word] += 1

    def _quirk(self, name: str) -> None:
        counts = self.quirks
        if counts is None:
            counts = self.quirks = {}
        counts[name] = counts.get(name, 0) + 1
        self.counters[_QUIRK_INDEX[name]] += 1

    def _error(self, reply: bytes) -> None:
        self._reply(reply)
        self.errors += 1
        if self.errors >= self.policy.max_errors:
            self._close_with(replies.TOO_MANY_ERRORS, "error")

    def _close_with(self, reply: bytes, ended: str) -> None:
        self._abort_transaction()
        self.ended = ended
        self._reply(reply)
        self.state = State.CLOSED
        self.closing = True


def _path_record(path: Path, parameters: dict[str, str | None]) -> dict[str, Any]:
    record: dict[str, Any] = {
        "raw": path.raw,
        "mailbox": path.mailbox,
        "local_part": path.local_part,
        "domain": path.domain,
        "params": parameters,
    }
    if path.route:
        record["route"] = list(path.route)
    return record


# Each verb's handler, with the counter word for the verb, found by one lookup per command. A
# handler that counted the command itself returns True, as `sink.smtp.counters` explains.
_HANDLERS: dict[bytes, tuple[Callable[[Session, bytes], bool | None], int]] = {
    verb: (handler, VERB_INDEX[verb])
    for verb, handler in (
        (b"HELO", Session._helo),
        (b"EHLO", Session._ehlo),
        (b"MAIL", Session._mail),
        (b"RCPT", Session._rcpt),
        (b"DATA", Session._data),
        (b"BDAT", Session._bdat),
        (b"RSET", Session._rset),
        (b"NOOP", Session._noop),
        (b"QUIT", Session._quit),
        (b"VRFY", Session._vrfy),
        (b"HELP", Session._help),
    )
}
