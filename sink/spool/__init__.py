"""The spool: append-only, checksummed segment files that hold every message the sink accepts.

Theory of operation
-------------------
Each worker process owns a `SpoolWriter`, which implements `sink.store.Store`. A message is
written as frames: B (envelope), D (message octets, any number), C (commit meta data and the
message ID), all tagged with a transaction number, into the worker's open segment file.
Frames of concurrent messages interleave. Every frame carries a CRC-32, so readers and recovery
find the exact end of the good data after a crash. Segments rotate by size and age and are
sealed with an S frame and a rename from ``.open`` to ``.seg``. The byte layout is described in
`sink.spool.frames` and in docs/spool-format.md.

Public API:

* `SpoolWriter`, `SpoolTransaction`, `SpoolFlushError`: storing messages.
* `DiscardStore`: the same protocol, storing nothing (``--no-spool``).
* `records`, `SpoolReader`, `Record`, `SpoolCorruption`: reading messages back.
* `recover_segments`, `RecoveryResult`, `RecoveryAction`: sealing segments after a crash.
* `verify_spool`, `VerifyReport`, `SegmentReport`: checking a spool directory.
* `MessageIdGenerator`: the message ID scheme.
"""

from .discard import DiscardStore
from .ids import MessageIdGenerator
from .reader import (
    Record,
    SpoolCorruption,
    SpoolCorruptionWarning,
    SpoolDataError,
    SpoolReader,
    records,
)
from .recovery import RecoveryAction, RecoveryResult, recover_segments
from .transaction import SpoolTransaction
from .verify import SegmentReport, VerifyReport, verify_spool
from .writer import SpoolFlushError, SpoolWriter

__all__ = [
    "DiscardStore",
    "MessageIdGenerator",
    "Record",
    "RecoveryAction",
    "RecoveryResult",
    "SegmentReport",
    "SpoolCorruption",
    "SpoolCorruptionWarning",
    "SpoolDataError",
    "SpoolFlushError",
    "SpoolReader",
    "SpoolTransaction",
    "SpoolWriter",
    "VerifyReport",
    "records",
    "recover_segments",
    "verify_spool",
]
