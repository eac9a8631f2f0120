"""`sink spool ls`: one line per segment with its state, record count, size and time range."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from .reading import ProblemLog, SegmentSummary, iso_time, scan_spool


def list_spool(directory: Path, *, as_json: bool = False) -> int:
    """Print one line per segment; return the exit status."""
    problems = ProblemLog()
    out = sys.stdout

    def emit(summary: SegmentSummary) -> None:
        if as_json:
            line = orjson.dumps(
                {
                    "segment": summary.path.name,
                    "state": summary.state,
                    "records": summary.records,
                    "bytes": summary.size,
                    "message_bytes": summary.message_bytes,
                    "first_received": _iso_or_none(summary.first_received),
                    "last_received": _iso_or_none(summary.last_received),
                    "problems": summary.problems,
                }
            ).decode()
        else:
            line = (
                f"{summary.path.name}  {summary.state:<6}  {summary.records:>8} records  "
                f"{summary.size:>12} bytes  {iso_time(summary.first_received)} .. "
                f"{iso_time(summary.last_received)}"
            )
        print(line, file=out, flush=True)

    for _ in scan_spool(directory, problems, emit):
        pass
    return problems.exit_status


def _iso_or_none(timestamp: float | None) -> str | None:
    return None if timestamp is None else iso_time(timestamp)
