"""The layout of a worker's counter slot, shared by the SMTP session, the server and the master.

Each worker owns an array of `WORDS` unsigned 64-bit words in shared memory (`sink.server.slots`
maps them). Code on the hot path adds to a word by index and does nothing else: no locks, no
system calls, no prometheus-client objects. The master's collector reads and sums the slots only
when Prometheus scrapes.

Layout, by word index (each word an unsigned 64-bit integer in native byte order):

    0-31     scalar fields, named by `Field`
    32-39    sessions ended, by how (`ENDED_HOW` order)
    40-71    commands, by verb (`VERBS` order; the last is "unknown")
    72-103   replies, by code (`REPLY_CODES` order; the last is "other")
    104-135  client quirks (`sink.smtp.quirks.ALL` order)
    136-...  histograms, each `len(bounds) + 2` words: one bucket per upper bound, one for
             +Inf, then the sum (in microseconds). Buckets are not cumulative here; the
             collector adds them up, and their total is the count.
    then     the accepted-message table: one word per pair of a size bucket (SIZE_BOUNDS) and a
             DATA time bucket, `ACCEPTED_BASE + size_bucket * TIME_BUCKETS + time_bucket`.

Each event of an accepted transaction adds to one word. An accepted MAIL adds to MAIL_ACCEPTED
only, an accepted RCPT to RECIPIENTS_ACCEPTED only, and a DATA accepted with 354 to
DATA_ACCEPTED only: their verb and reply words stay untouched. A message accepted with 250
adds one to its cell of the accepted-message table, its octets to ACCEPTED_DATA_OCTETS or
ACCEPTED_BDAT_OCTETS, and its DATA time to the sum of DATA_DURATION, whose buckets count only
refused messages. The functions at the end of this module add it all back up for the
collector. Each increment of a shared word costs about 40 ns (timed with timeit on the
development machine), and this layout needs six per message instead of thirteen. Every
metric is still a sum of words, and each word only grows, so a scrape that reads a slot while
a worker writes it never reads a counter going down.

Words past the accepted-message table are reserved. A replacement worker keeps the words of its
predecessor, so every counter only grows; gauges (ACTIVE_SESSIONS, ACCEPTING, SEGMENTS_OPEN)
are reset by the master when a worker exits.
"""

from __future__ import annotations

import enum
from bisect import bisect_left

from sink.smtp import quirks

WORDS = 1024


class Field(enum.IntEnum):
    """Scalar words of a slot."""

    HEARTBEAT_NS = 0  # time.time_ns() of the last heartbeat; 0 before the first
    PID = 1  # process ID of the worker that owns the slot now
    STARTED_NS = 2  # time.time_ns() when that worker started
    SESSIONS = 3  # connections accepted
    ACTIVE_SESSIONS = 4  # gauge: sessions open now
    MAIL_ACCEPTED = 5  # MAIL commands accepted with 250
    DATA_ACCEPTED = 6  # DATA commands accepted with 354
    REFUSED_SESSIONS = 7  # connections refused with 421 because of --max-sessions
    ACCEPTING = 8  # gauge: 1 while the worker accepts connections
    REFUSED_SHUTTING_DOWN = 9  # connections refused with 421 while stopping
    MESSAGES_REFUSED = 10  # transactions whose content got a 4xx or 5xx final reply
    MESSAGES_ABORTED = 11  # transactions cut off after DATA or BDAT began, with no final reply
    RECIPIENTS_ACCEPTED = 12
    RECIPIENTS_REFUSED = 13
    DATA_BYTES = 14  # DATA content octets of messages not accepted, after dot-unstuffing
    BDAT_BYTES = 15  # content octets received with BDAT
    SPOOL_BYTES = 16  # octets written to spool segments
    SPOOL_RECORDS = 17  # records committed to the spool
    SEGMENTS_OPEN = 18  # gauge
    SEGMENTS_SEALED = 19
    SPOOL_WRITE_ERRORS = 20
    ACCEPTED_DATA_OCTETS = 21  # octets of the messages accepted after DATA
    ACCEPTED_BDAT_OCTETS = 22  # octets of the messages accepted after BDAT LAST


ENDED_HOW = ("quit", "client_close", "timeout", "error", "shutdown")
VERBS = (
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP",
    "STARTTLS", "AUTH", "EXPN", "ETRN", "TURN", "ATRN", "BURL", "XCLIENT", "XFORWARD", "unknown",
)  # fmt: skip
REPLY_CODES = (
    "214", "220", "221", "250", "252", "354", "421", "451", "452",
    "500", "501", "502", "503", "550", "552", "553", "554", "555", "other",
)  # fmt: skip

ENDED_BASE = 32
VERB_BASE = 40
REPLY_BASE = 72
QUIRK_BASE = 104

# Upper bounds of the histogram buckets.
LATENCY_BOUNDS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
SIZE_BOUNDS = tuple(float(2**exponent) for exponent in range(9, 27))  # 512 B to 64 MiB
# The size bounds are the powers of two from 2**SIZE_SHIFT on, so the bucket of a size of s
# octets is (s - 1).bit_length() - SIZE_SHIFT, kept within 0 and len(SIZE_BOUNDS). The session
# computes it that way, which takes a third of the time of a bisection.
SIZE_SHIFT = 9


class Histogram:
    """The location of one histogram in a slot, with the method that records an observation."""

    __slots__ = ("base", "bounds", "scale", "sum_word", "end")

    def __init__(self, base: int, bounds: tuple[float, ...], scale: float) -> None:
        self.base = base
        self.bounds = bounds
        self.scale = scale  # the sum word contains value * scale, as an integer
        self.sum_word = base + len(bounds) + 1
        self.end = self.sum_word + 1

    def observe(self, counters: memoryview, value: float) -> None:
        counters[self.base + bisect_left(self.bounds, value)] += 1
        counters[self.sum_word] += int(value * self.scale)

    def total(self, words: memoryview | list[int]) -> float:
        """Return the sum of the observed values, in the unit of the bounds."""
        return words[self.sum_word] / self.scale


SESSION_DURATION = Histogram(136, LATENCY_BOUNDS, 1e6)
DATA_DURATION = Histogram(SESSION_DURATION.end, LATENCY_BOUNDS, 1e6)  # buckets: refused only
FSYNC_DURATION = Histogram(DATA_DURATION.end, LATENCY_BOUNDS, 1e6)
SIZE_BUCKETS = len(SIZE_BOUNDS) + 1
TIME_BUCKETS = len(LATENCY_BOUNDS) + 1
ACCEPTED_BASE = FSYNC_DURATION.end
ACCEPTED_END = ACCEPTED_BASE + SIZE_BUCKETS * TIME_BUCKETS

VERB_INDEX = {verb.encode(): VERB_BASE + index for index, verb in enumerate(VERBS)}
UNKNOWN_VERB = VERB_BASE + len(VERBS) - 1
REPLY_INDEX = {int(code): REPLY_BASE + index for index, code in enumerate(REPLY_CODES[:-1])}
OTHER_REPLY = REPLY_BASE + len(REPLY_CODES) - 1
QUIRK_INDEX = {name: QUIRK_BASE + index for index, name in enumerate(quirks.ALL)}

assert len(ENDED_HOW) <= VERB_BASE - ENDED_BASE
assert len(VERBS) <= REPLY_BASE - VERB_BASE
assert len(REPLY_CODES) <= QUIRK_BASE - REPLY_BASE
assert len(quirks.ALL) <= SESSION_DURATION.base - QUIRK_BASE
assert ACCEPTED_END <= WORDS
assert SIZE_BOUNDS == tuple(float(2 ** (SIZE_SHIFT + index)) for index in range(len(SIZE_BOUNDS)))


_MAIL = VERBS.index("MAIL")
_RCPT = VERBS.index("RCPT")
_DATA = VERBS.index("DATA")
_250 = REPLY_CODES.index("250")
_354 = REPLY_CODES.index("354")


def command_counts(words: memoryview | list[int]) -> list[int]:
    """Return the number of commands of each verb in `words`, in `VERBS` order."""
    counts = list(words[VERB_BASE : VERB_BASE + len(VERBS)])
    counts[_MAIL] += words[Field.MAIL_ACCEPTED]
    counts[_RCPT] += words[Field.RECIPIENTS_ACCEPTED]
    counts[_DATA] += words[Field.DATA_ACCEPTED]
    return counts


def reply_counts(words: memoryview | list[int]) -> list[int]:
    """Return the number of replies with each code in `words`, in `REPLY_CODES` order."""
    counts = list(words[REPLY_BASE : REPLY_BASE + len(REPLY_CODES)])
    counts[_250] += (
        words[Field.MAIL_ACCEPTED] + words[Field.RECIPIENTS_ACCEPTED] + accepted_messages(words)
    )
    counts[_354] += words[Field.DATA_ACCEPTED]
    return counts


def accepted_messages(words: memoryview | list[int]) -> int:
    """Return the number of messages accepted with 250 in `words`."""
    return sum(words[ACCEPTED_BASE:ACCEPTED_END])


def accepted_octets(words: memoryview | list[int]) -> int:
    """Return the octets of the messages accepted with 250 in `words`."""
    return words[Field.ACCEPTED_DATA_OCTETS] + words[Field.ACCEPTED_BDAT_OCTETS]


def message_size_buckets(words: memoryview | list[int]) -> list[int]:
    """Return the accepted messages per size bucket (SIZE_BOUNDS), not cumulative, +Inf last."""
    return [
        sum(words[row : row + TIME_BUCKETS])
        for row in range(ACCEPTED_BASE, ACCEPTED_END, TIME_BUCKETS)
    ]


def data_duration_buckets(words: memoryview | list[int]) -> list[int]:
    """Return the messages per DATA time bucket, accepted or refused, not cumulative."""
    refused = words[DATA_DURATION.base : DATA_DURATION.sum_word]
    accepted = [
        sum(words[column:ACCEPTED_END:TIME_BUCKETS])
        for column in range(ACCEPTED_BASE, ACCEPTED_BASE + TIME_BUCKETS)
    ]
    return [a + b for a, b in zip(refused, accepted, strict=True)]


def received_octets(words: memoryview | list[int]) -> tuple[int, int]:
    """Return the content octets received with DATA (after dot-unstuffing) and with BDAT."""
    data = words[Field.DATA_BYTES] + words[Field.ACCEPTED_DATA_OCTETS]
    return data, words[Field.BDAT_BYTES]


def private_counters() -> memoryview:
    """Return a zeroed, unshared counter array, for sessions that run outside a worker."""
    return memoryview(bytearray(WORDS * 8)).cast("Q")
