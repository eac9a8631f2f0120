"""Helpers shared by the spool tests: a settable clock, envelopes and one-call stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sink.spool import SpoolCorruption, SpoolWriter, records


class FakeClock:
    """A clock for SpoolWriter that moves only when a test sets `now`."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def envelope(n: int) -> dict[str, Any]:
    return {"mail_from": f"sender{n}@example.test", "rcpt_to": ["rcpt@example.test"]}


def store(writer: SpoolWriter, n: int, data: bytes) -> str:
    """Store one message in one transaction and return its ID."""
    txn = writer.begin(envelope(n))
    txn.write(data)
    return txn.commit({"n": n})


def read_ids(directory: Path) -> list[str]:
    """Return the IDs of the committed records, checking that reading found no corruption."""
    problems: list[SpoolCorruption] = []
    ids = [r.id for r in records(directory, on_error=problems.append)]
    assert problems == []
    return ids
