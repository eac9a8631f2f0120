"""Property tests: content and pipelined commands survive any way of cutting them into reads."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import codes, new_session

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
