"""Time `sink spool stats` and `sink spool export` on a large spool of small messages.

    python -m loadtest.spool_bench --messages 1000000 --dir /tmp/spool-bench

The spool is built by writing records straight through `sink.spool.SpoolWriter`, without SMTP,
so a million messages take about a minute. Envelopes vary: a few thousand senders and
recipients over a few dozen domains, one to three recipients, about 1% null senders, and about
2% of messages without a From header. Messages are 300 to 3,000 bytes with the usual headers
and CR LF line ends.

Each tool then runs once as a child process (`python -m sink spool ...`). The script prints
wall time, records/s, MB/s (message bytes over wall time) and the child's peak RSS, which
`os.wait4` returns for that child alone. The spool and the export file are deleted at the end
unless --keep is given.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink.spool import SpoolWriter

WORDS = (
    "invoice report meeting agenda schedule review budget forecast project status update "
    "delivery order customer account payment reminder contract draft proposal summary notes "
    "release version server network storage backup migration ticket request approval"
).split()
DOMAINS = [f"{word}{index}.example" for index in range(8) for word in ("mail", "corp", "shop")]
LOCAL_PARTS = [f"{word}.{index}" for index in range(120) for word in WORDS[:25]]


@dataclass(slots=True)
class ToolRun:
    """One timed run of a spool tool."""

    name: str
    command: list[str]
    seconds: float
    exit_status: int
    max_rss_kib: int


def address(rng: random.Random) -> tuple[str, str, str]:
    local = rng.choice(LOCAL_PARTS)
    domain = rng.choice(DOMAINS)
    return f"{local}@{domain}", local, domain


def path_record(mailbox: str, local: str, domain: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"raw": mailbox, "mailbox": mailbox, "local_part": local, "domain": domain,
            "params": params}  # fmt: skip


def build_message(rng: random.Random, number: int, sender: str, recipients: list[str]) -> bytes:
    """Build one message of 300 to 3,000 bytes with headers, CR LF line ends, no leading dots."""
    target = rng.randint(300, 3000)
    headers = []
    if rng.random() >= 0.02:
        headers.append(f"From: {sender or 'MAILER-DAEMON@bounce.example'}")
    headers += [
        f"To: {', '.join(recipients)}",
        f"Subject: {rng.choice(WORDS)} {rng.choice(WORDS)} {number}",
        "Date: Mon, 01 Jan 2024 12:00:00 +0000",
        f"Message-ID: <{number}.{rng.getrandbits(32):08x}@bench.example>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
    ]
    head = ("\r\n".join(headers) + "\r\n\r\n").encode()
    lines = []
    size = len(head)
    while size < target:
        line = " ".join(rng.choices(WORDS, k=10)) + "\r\n"
        lines.append(line)
        size += len(line)
    return head + "".join(lines).encode()


def build_spool(directory: Path, messages: int, seed: int = 1) -> int:
    """Write `messages` records into `directory`; return the sum of the message sizes."""
    rng = random.Random(seed)
    writer = SpoolWriter(directory, 0, fsync="never")
    total = 0
    received = time.time() - messages / 1000
    try:
        for number in range(messages):
            if rng.random() < 0.01:
                sender, local, domain = "", "", ""
            else:
                sender, local, domain = address(rng)
            recipients = [address(rng) for _ in range(rng.randint(1, 3))]
            body = build_message(rng, number, sender, [r[0] for r in recipients])
            envelope = {
                "received": received + number / 1000,
                "worker": 0,
                "client": {"address": "127.0.0.1", "port": 40000 + number % 20000},
                "helo": f"client{number % 50}.bench.example",
                "protocol": "ESMTP",
                "reverse_path": path_record(sender, local, domain, {"BODY": "8BITMIME"}),
                "forward_paths": [path_record(*r, {}) for r in recipients],
            }
            transaction = writer.begin(envelope)
            transaction.write(body)
            transaction.commit({"size": len(body), "bare_lf": 0, "bare_cr": 0, "quirks": {}})
            total += len(body)
    finally:
        writer.close()
    return total


def run_tool(name: str, arguments: list[str], stdout: Any) -> ToolRun:
    command = [sys.executable, "-m", "sink", "spool", *arguments]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE)
    assert process.stderr is not None
    errors = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        print(errors.decode(errors="replace"), file=sys.stderr)
    return ToolRun(name, command, seconds, process.returncode, usage.ru_maxrss)


def report(run: ToolRun, records: int, message_bytes: int) -> str:
    return (
        f"{run.name:<16} {run.seconds:8.1f} s  {records / run.seconds:10,.0f} records/s  "
        f"{message_bytes / run.seconds / 1e6:7.1f} MB/s  peak RSS {run.max_rss_kib / 1024:6.1f} MiB"
        f"  exit {run.exit_status}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="records to write")
    parser.add_argument("--dir", type=Path, required=True, help="new directory for the spool")
    parser.add_argument("--keep", action="store_true", help="keep the spool and the export")
    args = parser.parse_args(argv)
    if args.messages <= 0:
        parser.error("--messages must be positive")
    spool = args.dir / "spool"
    export = args.dir / "export.jsonl"
    if spool.exists() or export.exists():
        parser.error(f"{args.dir} already contains spool/ or export.jsonl; give a new directory")

    started = time.perf_counter()
    message_bytes = build_spool(spool, args.messages)
    built = time.perf_counter() - started
    spool_size = sum(path.stat().st_size for path in spool.iterdir())
    print(
        f"built {args.messages:,} records, {message_bytes / 1e6:,.1f} MB of messages, "
        f"{spool_size / 1e6:,.1f} MB of segments in {built:.1f} s"
    )
    try:
        runs = []
        with open(os.devnull, "wb") as devnull:
            runs.append(run_tool("stats --json", ["stats", str(spool), "--json"], devnull))
            export_arguments = ["export", str(spool), "--format", "jsonl", "--output", str(export)]
            runs.append(run_tool("export jsonl", export_arguments, devnull))
        for run in runs:
            print(report(run, args.messages, message_bytes))
        print(f"export file: {export.stat().st_size / 1e6:,.1f} MB")
    finally:
        if not args.keep:
            shutil.rmtree(spool, ignore_errors=True)
            export.unlink(missing_ok=True)
    return 0 if all(run.exit_status == 0 for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
