"""Property tests: content and pipelined commands survive any way of cutting them into reads,
and the counters agree with any conversation."""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import codes, new_session

from sink.smtp import session as session_module
from sink.smtp.counters import (
    DATA_DURATION,
    REPLY_CODES,
    SIZE_BOUNDS,
    VERBS,
    accepted_messages,
    accepted_octets,
    command_counts,
    data_duration_buckets,
    message_size_buckets,
    received_octets,
    reply_counts,
)
from sink.smtp.policy import MAX_COMMAND_LINE

PIECES = [b"\r", b"\n", b".", b"\r\n", b"\r\n.", b"\r\n.\r\n", b"..", b"a", b"Z", b" ", b"\x00",
          b"\xff", b"\xc3\xa9", b"From x\r\n"]  # fmt: skip


def dot_stuff(content: bytes) -> bytes:
    """Dot-stuff `content` as an SMTP client does (RFC 5321 4.5.2)."""
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


contents = st.lists(st.sampled_from(PIECES) | st.binary(max_size=20), max_size=40).map(
    lambda parts: b"".join(parts) + (b"\r\n" if parts else b"")
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(content=contents, data=st.data())
def test_content_survives_any_reads(content: bytes, data: st.DataObject) -> None:
    wire = dot_stuff(content) + b".\r\n"
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8))
    driver, store = new_session()
    driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")

    replies = driver.send_split(wire, cuts)

    assert codes(replies) == [250]
    assert store.messages[0].content == content
    assert store.messages[0].meta["size"] == len(content)


@settings(max_examples=200)
@given(content=contents, buffer_size=st.integers(600, 2000), data=st.data())
def test_small_buffer_and_any_reads(content: bytes, buffer_size: int, data: st.DataObject) -> None:
    wire = dot_stuff(content) + b".\r\nNOOP\r\n"
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=4))
    driver, store = new_session()
    driver.buffer = bytearray(buffer_size)
    driver.view = memoryview(driver.buffer)
    driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")

    assert codes(driver.send_split(wire, cuts)) == [250, 250]
    assert store.messages[0].content == content


BATCH = (
    b"EHLO client.example\r\nMAIL FROM:<a@b> SIZE=100\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\n"
    b"DATA\r\n..first\r\nline\r\n.\r\nRSET\r\nMAIL FROM:<>\r\nRCPT TO:<g@h>\r\n"
    b"BDAT 9\r\nchunk\r\n.\rBDAT 3 LAST\r\n\r\n.NOOP\r\nQUIT\r\n"
)


def _run_batch(cuts: list[int]) -> tuple[bytes, list[bytes]]:
    driver, store = new_session()
    replies = driver.send_split(BATCH, cuts)
    return replies, [message.content for message in store.messages]


def test_batch_split_at_every_offset() -> None:
    expected = _run_batch([])
    assert codes(expected[0]) == [250, 250, 250, 250, 354, 250, 250, 250, 250, 250, 250, 250, 221]
    assert expected[1] == [b".first\r\nline\r\n", b"chunk\r\n.\r\r\n."]
    for cut in range(1, len(BATCH)):
        assert _run_batch([cut]) == expected, cut


@given(cuts=st.lists(st.integers(1, len(BATCH) - 1), min_size=2, max_size=12))
def test_batch_split_anywhere(cuts: list[int]) -> None:
    assert _run_batch(cuts) == _run_batch([])


# Commands for the counter property test: accepted, refused, out of sequence and unknown. A
# BDAT command carries its chunk. The two whole transactions make accepted messages common.
COMMANDS = [
    b"EHLO c", b"HELO c", b"helo c", b"EHLO", b"MAIL FROM:<a@b>", b"MAIL FROM:<>",
    b"mail from:<a@b> SIZE=99999999", b"MAIL FROM:bad", b"MAIL FROM:<a@b> BODY=X",
    b"RCPT TO:<c@d>", b"RCPT TO:<no@d>", b"RCPT TO:<c@d> NOTIFY=NEVER", b"RCPT TO:<>",
    b"DATA", b"DATA now", b"RSET", b"NOOP", b"VRFY x", b"VRFY", b"HELP", b"QUIT",
    b"STARTTLS", b"XYZZY", b"", b"BDAT 3\r\nabc", b"BDAT 0 LAST", b"BDAT 2 LAST\r\nxy",
    b"BDAT x", b"NOOP " + b"x" * 600,
]  # fmt: skip
STEPS = [[command if b"\r\n" in command else command + b"\r\n"] for command in COMMANDS] + [
    [b"MAIL FROM:<a@b>\r\n", b"RCPT TO:<c@d>\r\n", b"DATA\r\n"],
    [b"MAIL FROM:<>\r\n", b"RCPT TO:<c@d>\r\n", b"RCPT TO:<e@d>\r\n", b"BDAT 2 LAST\r\nxy"],
]
SHORT_CONTENT = b"Subject: s\r\n\r\nhi\r\n.\r\n"
LONG_CONTENT = b"x" * 200 + b"\r\n.\r\n"  # over the max_message_size below


@settings(max_examples=300)
@given(
    steps=st.lists(st.sampled_from(STEPS), max_size=30),
    contents=st.lists(st.sampled_from([SHORT_CONTENT, LONG_CONTENT]), min_size=90, max_size=90),
)
def test_counters_match_conversation(steps: list[list[bytes]], contents: list[bytes]) -> None:
    """The derived counts equal the commands sent, the replies received and the octets stored."""
    driver, store = new_session(
        max_message_size=100, max_recipients=2, reject_recipients=["no@d"], max_errors=8
    )
    session = driver.session
    verbs: Counter[str] = Counter()
    reply_codes: Counter[str] = Counter()
    data_octets = bdat_octets = 0

    commands = [command for step in steps for command in step]
    for command, content in zip(commands, contents, strict=False):
        if session.closing:
            break
        line = command.split(b"\r\n")[0]
        name = line.split(b" ")[0].upper().decode()
        too_long = len(line) + 2 > MAX_COMMAND_LINE
        verbs[name if name in VERBS and not too_long else "unknown"] += 1
        replies = driver.send(command)
        if name == "BDAT" and not too_long and line[5:].split()[0].isdigit():
            bdat_octets += int(line[5:].split()[0])  # a chunk is read even when refused
        if codes(replies)[-1:] == [354]:
            replies += driver.send(content)
            data_octets += len(content) - len(b".\r\n")
        for code in codes(replies):
            reply_codes[str(code) if str(code) in REPLY_CODES else "other"] += 1

    assert dict(zip(VERBS, command_counts(session.counters), strict=True)) == {
        verb: verbs[verb] for verb in VERBS
    }
    assert dict(zip(REPLY_CODES, reply_counts(session.counters), strict=True)) == {
        code: reply_codes[code] for code in REPLY_CODES
    }
    assert received_octets(session.counters) == (data_octets, bdat_octets)
    assert accepted_messages(session.counters) == len(store.messages)
    assert accepted_octets(session.counters) == sum(len(m.content) for m in store.messages)
    assert sum(message_size_buckets(session.counters)) == len(store.messages)


def test_size_buckets_match_bisection() -> None:
    """The session's bit-length bucketing puts each size where a bisection of the bounds would."""
    sizes = [0, 1, 511, 512, 513, 1023, 1024, 1025, 40_000, 2**26 - 1, 2**26, 2**26 + 1]
    driver, store = new_session(max_message_size=2**27)
    driver.buffer = bytearray(2**26 + 4096)  # one read per message keeps the test fast
    driver.view = memoryview(driver.buffer)
    driver.send(b"EHLO c\r\n")

    for size in sizes:
        wire = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT %d LAST\r\n" % size + b"x" * size
        assert codes(driver.send(wire)) == [250, 250, 250]

    expected = [0] * (len(SIZE_BOUNDS) + 1)
    for size in sizes:
        expected[bisect_left(SIZE_BOUNDS, size)] += 1
    counters = driver.session.counters
    assert message_size_buckets(counters) == expected
    assert accepted_octets(counters) == sum(sizes)
    assert received_octets(counters) == (0, sum(sizes))
    assert [message.meta["size"] for message in store.messages] == sizes


def test_line_longer_than_buffer_counted_once() -> None:
    driver, _ = new_session()
    driver.send(b"EHLO c\r\n")

    replies = driver.send(b"NOOP " + b"x" * 100_000 + b"\r\nNOOP\r\n")

    assert codes(replies) == [500, 250]
    counts = dict(zip(VERBS, command_counts(driver.session.counters), strict=True))
    assert counts["unknown"] == 1
    assert counts["NOOP"] == 1


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0.00005, 0), (0.0001, 0), (0.0002, 1), (0.0004, 2), (0.0009, 3), (0.002, 4), (7.0, 15),
     (99.0, 18)],
)  # fmt: skip
def test_data_time_bucket_matches_bisection(
    seconds: float, bucket: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accepted message's DATA time lands where a bisection of the bounds puts it."""
    now = [0.0]  # starting at zero keeps the elapsed time exactly `seconds`
    monkeypatch.setattr(session_module, "_perf_counter", lambda: now[0])
    driver, _ = new_session()
    driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")

    now[0] += seconds
    assert codes(driver.send(b"hi\r\n.\r\n")) == [250]

    counters = driver.session.counters
    expected = [0] * (len(DATA_DURATION.bounds) + 1)
    expected[bisect_left(DATA_DURATION.bounds, seconds)] = 1
    assert bisect_left(DATA_DURATION.bounds, seconds) == bucket
    assert data_duration_buckets(counters) == expected
    assert counters[DATA_DURATION.sum_word] == int(seconds * 1e6)
