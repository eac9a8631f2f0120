"""Time the SMTP session alone, with no sockets, for the metrics-cost phase of loadtest.bench.

The metrics-cost phase runs this file as a script once per source tree, with PYTHONPATH set to
the tree, so that `import sink` loads that tree's package:

    PYTHONPATH=TREE python loadtest/bench_session_timing.py --messages 20000

It feeds MESSAGES transactions (MAIL, RCPT, DATA, 1,000 octets of content and the final dot)
through `sink.smtp.Session` with a `DiscardStore`, once untimed to warm up and once timed for
each feed. Then it prints one JSON object with the path of the `sink` package it imported and
the microseconds per message of each feed. It imports only the standard library and `sink`, so
the code under test is the only thing that differs between two trees.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from collections import Counter
from collections.abc import Callable

from sink.smtp import Policy, Session
from sink.spool.discard import DiscardStore

COMMANDS = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
# Ten lines of 98 octets and CR LF: 1,000 octets of content, then the end-of-data line.
CONTENT = b"".join(b"%03d " % line + b"x" * 94 + b"\r\n" for line in range(10))
END_OF_DATA = b".\r\n"
TRANSACTION = COMMANDS + CONTENT + END_OF_DATA

# Octets per read of the pipelined feed. The receive buffer has room for this plus the carry
# that the session leaves unconsumed (at most one command line or a few octets of content).
READ_SIZE = 65536
BUFFER_SIZE = 2 * READ_SIZE

# Replies to one transaction: 250 to MAIL, 250 to RCPT, 354 to DATA, 250 after the content.
EXPECTED_REPLIES = {b"250": 3, b"354": 1}


def pipelined_reads(messages: int) -> list[bytes]:
    """Return the transactions back to back, cut into reads of READ_SIZE octets."""
    stream = TRANSACTION * messages
    return [stream[start : start + READ_SIZE] for start in range(0, len(stream), READ_SIZE)]


def lock_step_reads(messages: int) -> list[bytes]:
    """Return one read per command line and one for the content with its final dot.

    This is how a client that waits for each reply, such as smtp-source, sends a transaction.
    """
    lines = COMMANDS.splitlines(keepends=True)
    return [*lines, CONTENT + END_OF_DATA] * messages


FEEDS: dict[str, Callable[[int], list[bytes]]] = {
    "pipelined": pipelined_reads,
    "lock-step": lock_step_reads,
}


def new_session() -> Session:
    """Return a session past its EHLO, with the EHLO reply taken out."""
    session = Session(Policy(hostname="h"), DiscardStore())
    buffer = bytearray(b"EHLO bench.invalid\r\n")
    session.receive(buffer, memoryview(buffer), len(buffer))
    session.out.clear()
    return session


def feed(session: Session, reads: list[bytes]) -> list[bytes]:
    """Pass each read to the session the way the server does and return the replies.

    Octets the session leaves unconsumed move to the front of the buffer before the next read,
    and the replies of each read are joined into one string, as the server writes them.
    """
    buffer = bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    carry = 0
    sent = []
    out = session.out
    for data in reads:
        end = carry + len(data)
        buffer[carry:end] = data
        consumed = session.receive(buffer, view, end)
        carry = end - consumed
        if carry:
            buffer[:carry] = buffer[consumed:end]
        sent.append(b"".join(out))
        out.clear()
    if carry:
        raise RuntimeError(f"the session left {carry} octets unconsumed after the last read")
    return sent


def check_replies(sent: list[bytes], messages: int) -> None:
    """Raise RuntimeError unless the replies are exactly those of `messages` accepted messages."""
    codes = Counter(line[:3] for line in b"".join(sent).split(b"\r\n") if line)
    expected = Counter({code: count * messages for code, count in EXPECTED_REPLIES.items()})
    if codes != expected:
        raise RuntimeError(
            f"unexpected replies for {messages} messages: got {dict(codes)}, "
            f"expected {dict(expected)}"
        )


def time_feed(reads: list[bytes], messages: int) -> float:
    """Feed `reads` to a new session and return the microseconds per message.

    The garbage collector is off while the clock runs, as in the timeit module.
    """
    session = new_session()
    gc.collect()
    gc.disable()
    try:
        started = time.perf_counter()
        sent = feed(session, reads)
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    check_replies(sent, messages)
    return elapsed * 1e6 / messages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=20_000, help="transactions per timed run (default 20000)"
    )
    parser.add_argument(
        "--warm-up",
        type=int,
        default=2_000,
        help="transactions of the untimed run before each timed one (default 2000)",
    )
    args = parser.parse_args(argv)
    if args.messages < 1 or args.warm_up < 1:
        parser.error("--messages and --warm-up must be >= 1")

    import sink

    results = {}
    for name, make_reads in FEEDS.items():
        time_feed(make_reads(args.warm_up), args.warm_up)
        results[name] = time_feed(make_reads(args.messages), args.messages)
    json.dump(
        {"sink": sink.__file__, "messages": args.messages, "microseconds_per_message": results},
        sys.stdout,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
