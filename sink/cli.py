"""The `sink` command line: `sink serve` and `sink spool verify`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sink import __version__, logs
from sink import config as config_module
from sink.config import FSYNC_POLICIES, LINE_ENDING_POLICIES, LOG_FORMATS, LOG_LEVELS, ConfigError
from sink.spool.tools.cli import add_spool_tools, run_spool_tool

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sink", description="A fast SMTP sink with an append-only spool."
    )
    parser.add_argument("--version", action="version", version=f"sink {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="accept SMTP and store what arrives",
        description="Accept SMTP on the listen addresses and keep every message in the spool. "
        "Options may also be set in a TOML file (--config); the command line wins.",
        argument_default=argparse.SUPPRESS,
    )
    add = serve.add_argument
    add("--config", metavar="FILE", help="TOML file with the same option names")
    add(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help="address to listen on, repeatable; [::1]:2525 for IPv6 (default 127.0.0.1:2525)",
    )
    add("--workers", type=int, metavar="N", help="worker processes (default: CPU count)")
    add(
        "--reuseport",
        action="store_true",
        help="give each worker its own SO_REUSEPORT socket so the kernel balances connections",
    )
    add("--hostname", help="name in the greeting and EHLO reply (default: this host's name)")
    add(
        "--max-message-size",
        metavar="SIZE",
        help="largest message accepted, e.g. 10MiB (default 64MiB)",
    )
    add(
        "--max-recipients",
        type=int,
        metavar="N",
        help="recipients per transaction before 452 (default 1000)",
    )
    add(
        "--idle-timeout",
        metavar="DURATION",
        help="close a session idle this long between commands (default 300s)",
    )
    add(
        "--data-timeout",
        metavar="DURATION",
        help="close a session idle this long inside a transaction (default 600s)",
    )
    add(
        "--max-sessions",
        type=int,
        metavar="N",
        help="open sessions per worker before new ones get 421 (default 10000)",
    )
    add("--spool", metavar="DIR", help="spool directory (default ./spool)")
    add(
        "--no-spool",
        dest="spool",
        action="store_const",
        const=False,
        help="accept messages and discard them",
    )
    add("--segment-size", metavar="SIZE", help="rotate a segment at this size (default 256MiB)")
    add("--segment-age", metavar="DURATION", help="rotate a segment at this age (default 300s)")
    add(
        "--fsync",
        choices=FSYNC_POLICIES,
        help="never; interval (background, default); always (reply after fsync, group commit)",
    )
    add("--fsync-interval", metavar="DURATION", help="period of --fsync interval (default 1s)")
    add(
        "--line-endings",
        choices=LINE_ENDING_POLICIES,
        help="strict rejects messages with a bare CR or LF (default lenient)",
    )
    add("--require-helo", action="store_true", help="reply 503 to MAIL before HELO or EHLO")
    add(
        "--reject-rcpt",
        dest="reject_rcpt",
        action="append",
        metavar="GLOB",
        help="reply 550 5.1.1 to matching recipients, e.g. 'Green@*'; repeatable",
    )
    add("--log-level", choices=LOG_LEVELS, help="default info")
    add("--log-format", choices=LOG_FORMATS, help="text or JSON lines (default text)")
    add(
        "--progress",
        action="store_true",
        dest="progress",
        help="print a counter line every second (default: when standard output is a terminal)",
    )
    add("--no-progress", action="store_false", dest="progress", help="never print the counter")
    add(
        "--shutdown-grace",
        metavar="DURATION",
        help="time transactions get to finish on SIGTERM (default 10s)",
    )
    add(
        "--heartbeat-timeout",
        metavar="DURATION",
        help="kill and replace a worker silent this long (default 30s)",
    )

    add(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="address for /metrics and /healthz (default 127.0.0.1:9325; '' turns it off)",
    )

    spool = commands.add_parser("spool", help="inspect a spool directory")
    spool_commands = spool.add_subparsers(dest="spool_command", required=True, metavar="COMMAND")
    verify = spool_commands.add_parser(
        "verify", help="check every frame checksum and report torn or corrupt segments"
    )
    verify.add_argument("directory", metavar="DIR")
    add_spool_tools(spool_commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(vars(args))
    if args.spool_command != "verify":
        return run_spool_tool(args)
    return _spool_verify(args.directory)


def _serve(arguments: dict[str, Any]) -> int:
    from sink.server.listeners import ListenError
    from sink.server.master import EXIT_CONFIG, Master

    arguments.pop("command")
    config_file = arguments.pop("config", None)
    overrides = dict(arguments)
    if overrides.get("spool") is False:
        overrides["spool"] = ""
    try:
        config = config_module.load(overrides, config_file)
    except ConfigError as error:
        print(f"sink: {error}", file=sys.stderr)
        return EXIT_CONFIG
    status_line = config.progress if config.progress is not None else sys.stdout.isatty()
    logs.configure(config.log_level, config.log_format, status_line=bool(status_line))
    try:
        return Master(config, overrides).run()
    except ListenError as error:
        print(f"sink: {error}", file=sys.stderr)
        return EXIT_CONFIG


def _spool_verify(directory: str) -> int:
    from sink.spool import verify_spool

    logs.configure("warning")
    try:
        report = verify_spool(directory)
    except FileNotFoundError:
        print(f"sink: spool directory not found: {directory}", file=sys.stderr)
        return EXIT_USAGE
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1
