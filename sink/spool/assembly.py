"""Record assembly: turn the frame sequence of one segment into committed records.

Theory of operation
-------------------
`RecordAssembler` is fed the valid frames of one segment in file order. It keeps, per
transaction in progress, the raw B payload and the offsets and lengths of its D payloads, never
the message octets. A C frame completes a record, which `feed` returns; an A frame drops the
transaction. Some valid frames break the structure of a segment: a second H, a frame after
the seal, D or C for a transaction that was not begun, a transaction begun twice, or a payload
that is not valid JSON. Each is recorded in `problems` with its offset and skipped.

`check_end` compares the S frame, if any, with what was counted, and notes transactions that
were begun but never finished. Those are not records; they are normal after a crash or a write
error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .frames import ABORT, BEGIN, COMMIT, DATA, SEAL, SEGMENT_HEADER, type_name
from .scan import Frame


@dataclass(frozen=True, slots=True)
class AssembledRecord:
    """A committed record as found in a segment: parsed envelope and meta, data positions."""

    txn: int
    envelope: dict[str, Any]
    meta: dict[str, Any]
    size: int
    data: tuple[tuple[int, int], ...]  # (payload offset, length) of each D frame, in order
    commit_offset: int


@dataclass(slots=True)
class _Pending:
    begin_offset: int
    envelope: bytes
    data: list[tuple[int, int]] = field(default_factory=list)
    size: int = 0


class RecordAssembler:
    """Follows the frames of one segment and returns each record as its C frame arrives."""

    def __init__(self) -> None:
        self.frames = 0
        self.records = 0
        self.message_bytes = 0
        self.aborted = 0
        self.header: dict[str, Any] | None = None
        self.seal: dict[str, Any] | None = None
        self.seal_offset: int | None = None
        self.problems: list[tuple[int, str]] = []
        self._pending: dict[int, _Pending] = {}

    @property
    def unfinished(self) -> int:
        """Transactions begun but neither committed nor aborted."""
        return len(self._pending)

    def feed(self, frame: Frame) -> AssembledRecord | None:
        """Account for one frame; returns the record it completes, if any."""
        self.frames += 1
        kind = frame.type
        if self.frames == 1 and kind not in (SEGMENT_HEADER, SEAL):
            self._problem(frame, "segment does not start with a segment header frame")
        if self.seal_offset is not None:
            self._problem(frame, f"{type_name(kind)} frame after the seal frame")
            return None

        if kind == DATA:
            self._data(frame)
        elif kind == BEGIN:
            self._begin(frame)
        elif kind == COMMIT:
            return self._commit(frame)
        elif kind == ABORT:
            self._abort(frame)
        elif kind == SEGMENT_HEADER:
            self._segment_header(frame)
        elif kind == SEAL:
            self.seal_offset = frame.offset
            self.seal = self._json(frame, "seal")
        return None

    def check_end(self) -> None:
        """Compare the seal frame's counts with the records found."""
        if self.seal is None:
            return
        if self.seal.get("records") != self.records:
            self.problems.append(
                (
                    self.seal_offset or 0,
                    f"seal frame counts {self.seal.get('records')} records, "
                    f"the segment contains {self.records}",
                )
            )
        if self.seal.get("bytes") != self.message_bytes:
            self.problems.append(
                (
                    self.seal_offset or 0,
                    f"seal frame counts {self.seal.get('bytes')} message bytes, "
                    f"the records hold {self.message_bytes}",
                )
            )

    def _data(self, frame: Frame) -> None:
        pending = self._pending.get(frame.txn)
        if pending is None:
            self._problem(frame, f"data frame for transaction {frame.txn}, never begun")
            return
        pending.data.append((frame.payload_offset, frame.length))
        pending.size += frame.length

    def _abort(self, frame: Frame) -> None:
        if self._pending.pop(frame.txn, None) is None:
            self._problem(frame, f"abort frame for transaction {frame.txn}, never begun")
        else:
            self.aborted += 1

    def _begin(self, frame: Frame) -> None:
        if frame.txn == 0:
            self._problem(frame, "begin frame with transaction number 0")
            return
        if frame.txn in self._pending:
            self._problem(frame, f"transaction {frame.txn} begun twice")
            return
        self._pending[frame.txn] = _Pending(frame.offset, frame.payload or b"")

    def _commit(self, frame: Frame) -> AssembledRecord | None:
        pending = self._pending.pop(frame.txn, None)
        if pending is None:
            self._problem(frame, f"commit frame for transaction {frame.txn}, never begun")
            return None
        envelope = self._json_bytes(pending.begin_offset, pending.envelope, "envelope")
        meta = self._json(frame, "commit")
        if envelope is None or meta is None:
            return None
        if not isinstance(meta.get("id"), str):
            self._problem(frame, f"commit frame for transaction {frame.txn} has no message ID")
            return None
        self.records += 1
        self.message_bytes += pending.size
        return AssembledRecord(
            frame.txn, envelope, meta, pending.size, tuple(pending.data), frame.offset
        )

    def _segment_header(self, frame: Frame) -> None:
        if self.frames != 1:
            self._problem(frame, "segment header frame is not the first frame")
            return
        self.header = self._json(frame, "segment header")
        if self.header is not None and self.header.get("format") != 1:
            self._problem(frame, f"unsupported segment format {self.header.get('format')!r}")

    def _json(self, frame: Frame, frame_name: str) -> dict[str, Any] | None:
        return self._json_bytes(frame.offset, frame.payload or b"", frame_name)

    def _json_bytes(self, offset: int, payload: bytes, frame_name: str) -> dict[str, Any] | None:
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            self.problems.append((offset, f"{frame_name} payload is not valid JSON: {exc}"))
            return None
        if not isinstance(value, dict):
            self.problems.append((offset, f"{frame_name} payload is not a JSON object"))
            return None
        return value

    def _problem(self, frame: Frame, message: str) -> None:
        self.problems.append((frame.offset, message))
