"""Message IDs: format, order and uniqueness across workers and restarts."""

from __future__ import annotations

import pytest

from sink.spool import MessageIdGenerator
from sink.spool.ids import ALPHABET, COUNTER_LIMIT, ID_LENGTH, encode_base32


def test_id_format() -> None:
    generator = MessageIdGenerator(5)
    message_id = generator.next_id()

    assert len(message_id) == ID_LENGTH
    assert set(message_id) <= set(ALPHABET)
    assert message_id[11:13] == encode_base32(5, 2)
    assert message_id[13:] == "0000000"


def decode_base32(text: str) -> int:
    value = 0
    for char in text:
        value = value * 32 + ALPHABET.index(char)
    return value


def test_id_encodes_start_time() -> None:
    # Far in the future, so no earlier generator of worker 900 in this process claimed it.
    start_ns = 2_900_000_000_123_456_789
    generator = MessageIdGenerator(900, clock_ns=lambda: start_ns)

    message_id = generator.next_id()

    assert decode_base32(message_id[:11]) == start_ns // 1000
    assert decode_base32(message_id[11:13]) == 900


def test_ids_sort_in_creation_order() -> None:
    generator = MessageIdGenerator(0)
    ids = [generator.next_id() for _ in range(5000)]

    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_counter_digits_cover_every_position() -> None:
    generator = MessageIdGenerator(1)
    generator._counter = (1 << 34) + (3 << 20) + 31

    message_id = generator.next_id()

    assert decode_base32(message_id[13:]) == (1 << 34) + (3 << 20) + 31


def test_ids_unique_across_workers_with_same_clock() -> None:
    fixed = 1_800_000_000_000_000_000
    first = MessageIdGenerator(0, clock_ns=lambda: fixed)
    second = MessageIdGenerator(1, clock_ns=lambda: fixed)

    ids = {first.next_id() for _ in range(1000)} | {second.next_id() for _ in range(1000)}

    assert len(ids) == 2000


def test_ids_unique_across_restarts_of_one_worker() -> None:
    fixed = 1_800_000_000_000_000_000
    seen: set[str] = set()
    for _ in range(5):
        generator = MessageIdGenerator(7, clock_ns=lambda: fixed)
        batch = {generator.next_id() for _ in range(100)}
        assert not batch & seen
        seen |= batch

    assert len(seen) == 500


def test_counter_overflow_takes_new_prefix() -> None:
    generator = MessageIdGenerator(3)
    generator._counter = COUNTER_LIMIT - 1
    last_of_prefix = generator.next_id()

    first_of_next = generator.next_id()

    assert last_of_prefix[13:] == "ZZZZZZZ"
    assert first_of_next[13:] == "0000000"
    assert first_of_next[:11] > last_of_prefix[:11]
    assert first_of_next[11:13] == last_of_prefix[11:13]


@pytest.mark.parametrize("worker", [-1, 1024])
def test_worker_out_of_range_rejected(worker: int) -> None:
    with pytest.raises(ValueError, match="worker index"):
        MessageIdGenerator(worker)


def test_encode_base32_rejects_overflow() -> None:
    assert encode_base32(31, 1) == "Z"
    with pytest.raises(ValueError):
        encode_base32(32, 1)
    with pytest.raises(ValueError):
        encode_base32(-1, 2)
