"""`sink spool stats`: counts over every message in a spool, as text or JSON."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import orjson

from sink.spool.reader import Record, SpoolDataError

from .reading import (
    ProblemLog,
    Progress,
    header_text,
    parse_headers,
    read_header_block,
    scan_spool,
    sender_text,
)

# Upper bounds of the size buckets, in bytes; the last bucket has no bound.
SIZE_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("<1k", 1_000),
    ("1k-10k", 10_000),
    ("10k-100k", 100_000),
    ("100k-1M", 1_000_000),
    ("1M-10M", 10_000_000),
    (">=10M", None),
)


# Distinct keys one counter keeps. When a counter reaches twice this many, it keeps the most
# frequent half and drops the rest, so memory stays bounded on a spool of any size. A dropped
# key that comes back starts again from zero.
DISTINCT_LIMIT = 20_000

# Counters whose keys come from clients and so can have any number of distinct values.
_UNBOUNDED_KEYS = ("senders", "recipients", "recipient_domains", "helo_names", "clients")


@dataclass(slots=True)
class SpoolStats:
    """Counters over the messages of a spool, each bounded by DISTINCT_LIMIT distinct keys."""

    messages: int = 0
    message_bytes: int = 0
    null_senders: int = 0
    without_from: int = 0
    sender_differs: int = 0
    sizes: Counter[str] = field(default_factory=Counter)
    senders: Counter[str] = field(default_factory=Counter)
    recipients: Counter[str] = field(default_factory=Counter)
    recipient_domains: Counter[str] = field(default_factory=Counter)
    helo_names: Counter[str] = field(default_factory=Counter)
    parameters: Counter[str] = field(default_factory=Counter)
    quirks: Counter[str] = field(default_factory=Counter)
    clients: Counter[str] = field(default_factory=Counter)
    # For each pruned counter, the largest count dropped: kept counts may be low by up to it.
    undercount: dict[str, int] = field(default_factory=dict)

    def add(self, record: Record, header_block: bytes) -> None:
        envelope = record.envelope
        self.messages += 1
        self.message_bytes += record.size
        self.sizes[size_bucket(record.size)] += 1

        reverse: dict[str, Any] = envelope.get("reverse_path") or {}
        sender = reverse.get("mailbox") or ""
        if not sender:
            self.null_senders += 1
        self.senders[sender_text(envelope)] += 1
        self.parameters.update(name.upper() for name in reverse.get("params") or {})
        for forward in envelope.get("forward_paths") or []:
            self.recipients[forward.get("mailbox", "")] += 1
            self.recipient_domains[(forward.get("domain") or "").lower()] += 1
            self.parameters.update(name.upper() for name in forward.get("params") or {})

        helo = envelope.get("helo")
        self.helo_names["(none)" if helo is None else str(helo)] += 1
        client = envelope.get("client") or {}
        self.clients[str(client.get("address", "?"))] += 1
        for kind, count in (record.meta.get("quirks") or {}).items():
            self.quirks[kind] += int(count)

        self._check_from(sender, header_block)
        for name in _UNBOUNDED_KEYS:
            counter: Counter[str] = getattr(self, name)
            if len(counter) >= 2 * DISTINCT_LIMIT:
                self._prune(name, counter)

    def _prune(self, name: str, counter: Counter[str]) -> None:
        """Keep the DISTINCT_LIMIT most frequent keys of a counter and drop the rest."""
        ranked = counter.most_common(DISTINCT_LIMIT + 1)
        largest_dropped = ranked[-1][1]
        counter.clear()
        counter.update(dict(ranked[:DISTINCT_LIMIT]))
        self.undercount[name] = max(self.undercount.get(name, 0), largest_dropped)

    def _check_from(self, sender: str, header_block: bytes) -> None:
        values = parse_headers(header_block).get_all("From")
        if not values:
            self.without_from += 1
            return
        addresses = {address.lower() for _, address in getaddresses(map(header_text, values))}
        # The null sender is counted on its own: bounces never carry it in From.
        if sender and sender.lower() not in addresses:
            self.sender_differs += 1

    def as_dict(self, top: int) -> dict[str, Any]:
        def ranked(counter: Counter[str]) -> list[list[Any]]:
            return [[key, count] for key, count in counter.most_common(top)]

        return {
            "messages": self.messages,
            "bytes": self.message_bytes,
            "sizes": {label: self.sizes.get(label, 0) for label, _ in SIZE_BUCKETS},
            "null_senders": self.null_senders,
            "without_from": self.without_from,
            "sender_differs_from_header": self.sender_differs,
            "top_senders": ranked(self.senders),
            "top_recipients": ranked(self.recipients),
            "top_recipient_domains": ranked(self.recipient_domains),
            "helo_names": ranked(self.helo_names),
            "esmtp_parameters": ranked(self.parameters),
            "quirks": ranked(self.quirks),
            "clients": ranked(self.clients),
            "approximate": {
                _REPORT_KEYS[name]: count for name, count in sorted(self.undercount.items())
            },
        }


# Report keys of the bounded counters.
_REPORT_KEYS = {
    "senders": "top_senders",
    "recipients": "top_recipients",
    "recipient_domains": "top_recipient_domains",
    "helo_names": "helo_names",
    "clients": "clients",
}


def size_bucket(size: int) -> str:
    for label, bound in SIZE_BUCKETS:
        if bound is None or size < bound:
            return label
    raise AssertionError("the last bucket has no bound")


def collect_stats(directory: Path, problems: ProblemLog) -> SpoolStats:
    stats = SpoolStats()
    progress = Progress("stats")
    for record in scan_spool(directory, problems):
        try:
            block = read_header_block(record)
        except SpoolDataError as error:
            problems.report_text(f"{error}; skipped message {record.id}")
            continue
        stats.add(record, block)
        progress.step(record.size)
    progress.done()
    return stats


def print_stats(directory: Path, *, top: int = 10, as_json: bool = False) -> int:
    """Print the statistics of a spool; return the exit status."""
    problems = ProblemLog()
    report = collect_stats(directory, problems).as_dict(top)
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(format_stats(report))
    sys.stdout.flush()
    return problems.exit_status


_TITLES = {
    "top_senders": "top envelope senders",
    "top_recipients": "top recipients",
    "top_recipient_domains": "top recipient domains",
    "helo_names": "HELO names",
    "esmtp_parameters": "ESMTP parameters",
    "quirks": "client quirks (summed over messages)",
    "clients": "messages per client address",
}


def format_stats(report: dict[str, Any]) -> str:
    lines = [
        f"messages: {report['messages']}",
        f"bytes: {report['bytes']}",
        f"null senders: {report['null_senders']}",
        f"messages without From: {report['without_from']}",
        f"envelope sender differs from From: {report['sender_differs_from_header']}",
        "sizes:",
    ]
    lines += [f"  {label:>10}  {count}" for label, count in report["sizes"].items()]
    approximate = report.get("approximate", {})
    for key, title in _TITLES.items():
        if key in approximate:
            title += f" (approximate: more than {DISTINCT_LIMIT} distinct values, so counts may "
            title += f"be low by up to {approximate[key]})"
        lines.append(f"{title}:")
        lines += [f"  {count:>8}  {value}" for value, count in report[key]]
    return "\n".join(lines) + "\n"
