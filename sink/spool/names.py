"""Segment file names and directory listings.

Theory of operation
-------------------
Each writer (one per worker process) has one open segment at a time, named
``seg-{created_ns:020d}-w{worker:03d}.open``. Sealing renames it to the same stem with ``.seg``.
The creation time comes first and is zero-padded, so sorting names as strings sorts segments by
creation time, and segments of different workers created in the same nanosecond still differ by
the worker field. Recovery sets aside cut-off tails as ``<stem>.torn`` and unreadable files as
``<name>.bad``; listings ignore both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

OPEN_SUFFIX: Final = ".open"
SEALED_SUFFIX: Final = ".seg"
TORN_SUFFIX: Final = ".torn"
BAD_SUFFIX: Final = ".bad"
MAX_WORKER: Final = 999

_NAME = re.compile(r"^seg-(\d{20})-w(\d{3})\.(open|seg)$")


@dataclass(frozen=True, slots=True)
class SegmentName:
    """The fields encoded in a segment file name."""

    created_ns: int
    worker: int
    sealed: bool

    @property
    def stem(self) -> str:
        return segment_stem(self.created_ns, self.worker)


def segment_stem(created_ns: int, worker: int) -> str:
    """Return the file name of a segment without its state suffix."""
    return f"seg-{created_ns:020d}-w{worker:03d}"


def parse_segment_name(name: str) -> SegmentName | None:
    """Decode a segment file name, or return None when `name` is not one."""
    match = _NAME.match(name)
    if match is None:
        return None
    return SegmentName(int(match[1]), int(match[2]), match[3] == "seg")


def list_segments(
    directory: Path, *, worker: int | None = None, open_only: bool = False
) -> list[Path]:
    """Return the segment files in `directory`, oldest first.

    `worker` limits the list to one worker's segments, and `open_only` to unsealed ones.
    """
    found: list[tuple[str, Path]] = []
    for path in directory.iterdir():
        name = parse_segment_name(path.name)
        if name is None:
            continue
        if worker is not None and name.worker != worker:
            continue
        if open_only and name.sealed:
            continue
        found.append((name.stem, path))
    found.sort()
    return [path for _, path in found]


def sealed_path(path: Path) -> Path:
    """Return the name an open segment gets when it is sealed."""
    return path.with_suffix(SEALED_SUFFIX)
