"""Run aiosmtpd on uvloop as a discard-only SMTP server, for comparison in the benchmark.

Usage: python -m loadtest.aiosmtpd_server --listen 127.0.0.1:PORT

The server accepts every message and drops it. It creates its listening socket with
`loop.create_server` instead of aiosmtpd's Controller, so that it runs in the main thread of a
single process like the other servers in the benchmark. SIGTERM and SIGINT stop it with exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import uvloop
from aiosmtpd.smtp import SMTP, Envelope, Session

# Same listen backlog as `sink serve` (sink/server/listeners.py), so that bursts of connections
# meet the same queue length on every server in the benchmark.
BACKLOG = 4096

# The benchmark's largest messages are 1,000,000 payload bytes plus headers.
DATA_SIZE_LIMIT = 64 * 1024 * 1024


class DiscardHandler:
    """aiosmtpd handler that accepts every message and keeps nothing."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        return "250 2.0.0 OK: discarded"


def parse_listen(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` or `[IPv6]:PORT` into a host and a port number."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


async def serve(host: str, port: int, hostname: str) -> None:
    loop = asyncio.get_running_loop()
    handler = DiscardHandler()

    def make_protocol() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            hostname=hostname,
            loop=loop,
        )

    server = await loop.create_server(make_protocol, host, port, backlog=BACKLOG)
    stopped = asyncio.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopped.set)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.aiosmtpd_server",
        description="Accept SMTP with aiosmtpd on uvloop and discard every message.",
    )
    parser.add_argument(
        "--listen",
        type=parse_listen,
        default=("127.0.0.1", 2526),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:2526)",
    )
    parser.add_argument(
        "--hostname",
        default="aiosmtpd",
        help="name in the greeting and EHLO reply (default aiosmtpd)",
    )
    args = parser.parse_args(argv)

    # aiosmtpd logs every connection and command at INFO or DEBUG on the "mail.log" logger, so
    # WARNING keeps logging out of the measured work, as --log-level warning does for the sink.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    host, port = args.listen
    uvloop.run(serve(host, port, args.hostname))
    return 0


if __name__ == "__main__":
    sys.exit(main())
