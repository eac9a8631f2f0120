"""The `sink spool` subcommands other than `verify`: ls, show, stats, export, replay and tail."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_USAGE = 2


def add_spool_tools(spool_commands: Any) -> None:
    """Add the spool tool subcommands to the `sink spool` subparsers."""
    ls = spool_commands.add_parser(
        "ls", help="list segments with their state, record count, size and time range"
    )
    ls.add_argument("directory", metavar="DIR")
    ls.add_argument("--json", action="store_true", help="print one JSON object per line")

    show = spool_commands.add_parser("show", help="print one message's envelope and content")
    show.add_argument("directory", metavar="DIR")
    show.add_argument("message_id", metavar="ID", help="message ID from the 250 reply")
    show.add_argument(
        "--raw", action="store_true", help="print only the stored message bytes, unchanged"
    )

    stats = spool_commands.add_parser("stats", help="count senders, recipients, sizes and quirks")
    stats.add_argument("directory", metavar="DIR")
    stats.add_argument("--json", action="store_true", help="print one JSON document")
    stats.add_argument(
        "--top", type=_positive_int, default=10, metavar="N", help="rows per ranking (default 10)"
    )

    export = spool_commands.add_parser(
        "export", help="write messages as .eml files, an mbox, a Maildir or JSON lines"
    )
    export.add_argument("directory", metavar="DIR")
    export.add_argument("--format", required=True, choices=("eml", "mbox", "maildir", "jsonl"))
    export.add_argument(
        "--output",
        required=True,
        metavar="PATH",
        help="directory for eml and maildir, file for mbox and jsonl (appended to)",
    )
    _add_selection_options(export)
    export.add_argument(
        "--trace-headers",
        action="store_true",
        help="prepend Return-Path and Received header lines built from the envelope",
    )
    export.add_argument(
        "--body", action="store_true", help="jsonl: include the body after the headers"
    )

    _add_replay(spool_commands)

    tail = spool_commands.add_parser("tail", help="print records as they are committed")
    tail.add_argument("directory", metavar="DIR")
    tail.add_argument(
        "--from-start", action="store_true", help="print the records already stored first"
    )
    tail.add_argument("--exit-after", type=_positive_int, metavar="N", help="stop after N records")
    tail.add_argument(
        "--timeout", type=_positive_float, metavar="SECONDS", help="stop after this many seconds"
    )


def _add_selection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", metavar="TIME", help="ISO 8601; UTC when no offset is given")
    parser.add_argument("--until", metavar="TIME", help="ISO 8601, exclusive")
    parser.add_argument("--sender", metavar="GLOB", help="envelope sender, case-insensitive")
    parser.add_argument(
        "--recipient", metavar="GLOB", help="any envelope recipient, case-insensitive"
    )
    parser.add_argument(
        "--id", dest="ids", action="append", default=[], metavar="ID", help="repeatable"
    )


def _add_replay(spool_commands: Any) -> None:
    replay = spool_commands.add_parser(
        "replay", help="send stored messages with their envelopes to an SMTP server"
    )
    replay.add_argument("directory", metavar="DIR")
    replay.add_argument(
        "--to",
        required=True,
        metavar="HOST:PORT",
        help="SMTP server to send to; [IPv6]:PORT for IPv6; loopback only without --allow-remote",
    )
    replay.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --to address that is not loopback (127.0.0.0/8, ::1)",
    )
    replay.add_argument(
        "--connections",
        type=_positive_int,
        default=4,
        metavar="N",
        help="SMTP sessions in parallel (default 4)",
    )
    replay.add_argument(
        "--rate",
        type=_positive_rate,
        metavar="MSG_PER_S",
        help="messages per second over all sessions (default: as fast as possible)",
    )
    replay.add_argument(
        "--ehlo", default="localhost", metavar="NAME", help="EHLO name (default localhost)"
    )
    replay.add_argument(
        "--bdat",
        action="store_true",
        help="send every message with BDAT when the server offers CHUNKING, not only those "
        "that DATA would change",
    )
    replay.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="SECONDS",
        help="how long to wait to connect and for each reply (default 60)",
    )
    _add_selection_options(replay)


def run_spool_tool(args: argparse.Namespace) -> int:
    """Run the spool subcommand in `args`; return the exit status."""
    directory = Path(args.directory)
    if not directory.is_dir():
        print(f"sink: spool directory not found: {directory}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(args, directory)
    except ValueError as error:
        print(f"sink: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def _run(args: argparse.Namespace, directory: Path) -> int:
    command = args.spool_command
    if command == "ls":
        from .listing import list_spool

        return list_spool(directory, as_json=args.json)
    if command == "show":
        from .show import show_message

        return show_message(directory, args.message_id, raw=args.raw)
    if command == "stats":
        from .stats import print_stats

        return print_stats(directory, top=args.top, as_json=args.json)
    if command == "export":
        return _export(args, directory)
    if command == "replay":
        return _replay(args, directory)
    if command == "tail":
        from .tail import tail_spool

        return tail_spool(
            directory,
            from_start=args.from_start,
            exit_after=args.exit_after,
            timeout=args.timeout,
        )
    raise AssertionError(f"unknown spool command {command!r}")


def _selection(args: argparse.Namespace) -> Any:
    from .export import Selection
    from .reading import parse_time

    return Selection(
        since=_time_option("--since", args.since, parse_time),
        until=_time_option("--until", args.until, parse_time),
        sender=args.sender,
        recipient=args.recipient,
        ids={message_id.strip().upper() for message_id in args.ids},
    )


def _replay(args: argparse.Namespace, directory: Path) -> int:
    from .replay import replay_messages, resolve_target

    if not args.ehlo or any(char.isspace() or not char.isprintable() for char in args.ehlo):
        raise ValueError(f"--ehlo: invalid name {args.ehlo!r}; use a domain name without spaces")
    selection = _selection(args)
    target = resolve_target(args.to, allow_remote=args.allow_remote)
    return replay_messages(
        directory,
        target,
        selection,
        connections=args.connections,
        rate=args.rate,
        ehlo_name=args.ehlo,
        force_bdat=args.bdat,
        timeout=args.timeout,
    )


def _export(args: argparse.Namespace, directory: Path) -> int:
    from .export import export_messages

    selection = _selection(args)
    if args.body and args.format != "jsonl":
        raise ValueError("--body works only with --format jsonl")
    output = Path(args.output)
    if output.resolve() == directory.resolve():
        raise ValueError("--output must not be the spool directory")
    return export_messages(
        directory, output, args.format, selection, trace=args.trace_headers, body=args.body
    )


def _time_option(option: str, value: str | None, parse: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(parse(value))
    except ValueError:
        raise ValueError(
            f"{option}: invalid ISO 8601 time {value!r}; use e.g. 2024-05-01T12:00:00Z"
        ) from None


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_rate(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number per second, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value
