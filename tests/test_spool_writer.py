"""SpoolWriter: round trips through real segment files, rotation, flush and sync."""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from spool_helpers import FakeClock

import sink.spool.writer as writer_module
from sink.spool import SpoolCorruption, SpoolWriter, records, verify_spool
from sink.spool.frames import ABORT, BEGIN, COMMIT, DATA, SEAL, SEGMENT_HEADER
from sink.spool.scan import FrameScanner
from sink.store import StoreError

SEGMENT_NAME = re.compile(r"^seg-\d{20}-w(\d{3})\.(open|seg)$")


def envelope(n: int) -> dict[str, Any]:
    return {
        "mail_from": f"sender{n}@example.test",
        "rcpt_to": [f"rcpt{n}@example.test"],
        "received": 1_800_000_000.0 + n,
    }


def body(n: int, size: int = 200) -> bytes:
    head = f"Subject: message {n}\r\n\r\n".encode()
    return head + bytes((n + i) % 251 for i in range(max(0, size - len(head))))


def store(writer: SpoolWriter, n: int, data: bytes, chunk: int = 4096) -> str:
    txn = writer.begin(envelope(n))
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        txn.write(view[start : start + chunk])
    return txn.commit({"size": len(data), "n": n})


def read_all(directory: Path) -> list[Any]:
    problems: list[SpoolCorruption] = []
    found = list(records(directory, on_error=problems.append))
    assert problems == []
    return found


def frames_of(path: Path) -> list[Any]:
    with path.open("rb") as file:
        scanner = FrameScanner(file, path.stat().st_size, keep_data=True)
        frames = list(scanner)
    assert scanner.error is None
    return frames


def segment_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if SEGMENT_NAME.match(p.name))


def test_round_trip_single_message(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "spool", 4)
    data = body(1, 1000)
    txn = writer.begin(envelope(1))
    txn.write(memoryview(data))
    message_id = txn.commit({"size": len(data), "tls": False})
    writer.flush()

    [record] = read_all(tmp_path / "spool")

    assert record.id == message_id
    assert record.envelope == envelope(1)
    assert record.meta == {"size": len(data), "tls": False, "id": message_id}
    assert record.size == len(data)
    assert record.message() == data
    assert record.segment.name.endswith("-w004.open")
    assert txn.stored
    writer.close()


def test_segment_file_layout(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, 12, clock=clock)
    message_id = store(writer, 1, b"hello")
    writer.close()

    [path] = segment_files(tmp_path)
    match = SEGMENT_NAME.match(path.name)
    assert match is not None
    assert match[1] == "012"
    assert match[2] == "seg"
    assert path.name.startswith(f"seg-{int(clock.now * 1e9):020d}")
    assert path.read_bytes()[:8] == b"SINKSEG1"

    frames = frames_of(path)
    assert [f.type for f in frames] == [SEGMENT_HEADER, BEGIN, DATA, COMMIT, SEAL]
    assert [f.txn for f in frames] == [0, 1, 1, 1, 0]

    header = orjson.loads(frames[0].payload)
    assert header["format"] == 1
    assert header["worker"] == 12
    assert header["pid"] == os.getpid()
    assert header["created"] == clock.now
    assert isinstance(header["host"], str)

    assert orjson.loads(frames[1].payload) == envelope(1)
    assert frames[2].payload == b"hello"
    assert orjson.loads(frames[3].payload) == {"size": 5, "n": 1, "id": message_id}
    seal = orjson.loads(frames[4].payload)
    assert seal == {"records": 1, "bytes": 5, "sealed": clock.now}


def test_interleaved_transactions(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    first = writer.begin(envelope(1))
    second = writer.begin(envelope(2))
    third = writer.begin(envelope(3))
    first.write(b"one-a ")
    second.write(b"two-a ")
    third.write(b"three-a ")
    second.write(b"two-b")
    first.write(b"one-b")
    third.abort()
    id_two = second.commit({"n": 2})
    id_one = first.commit({"n": 1})
    writer.close()

    found = read_all(tmp_path)

    assert [r.id for r in found] == [id_two, id_one]
    assert [r.message() for r in found] == [b"two-a two-b", b"one-a one-b"]
    assert [r.envelope for r in found] == [envelope(2), envelope(1)]
    assert len({r.txn for r in found}) == 2
    assert verify_spool(tmp_path).ok


def test_empty_message(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    txn = writer.begin(envelope(1))
    txn.write(b"")
    message_id = txn.commit({"size": 0})
    writer.close()

    [record] = read_all(tmp_path)

    assert record.id == message_id
    assert record.size == 0
    assert record.message() == b""
    assert list(record.chunks()) == []


def test_large_message_mixed_chunk_sizes(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    data = os.urandom(5 * 1024 * 1024 + 123)
    sizes = [1, 1000, 70_000, 1024 * 1024, 65_535, 65_536, 300_000]
    txn = writer.begin(envelope(1))
    view = memoryview(data)
    position = 0
    step = 0
    while position < len(data):
        size = sizes[step % len(sizes)]
        txn.write(view[position : position + size])
        position += size
        step += 1
    message_id = txn.commit({"size": len(data)})
    writer.close()

    [record] = read_all(tmp_path)
    pieces = list(record.chunks(block_size=64 * 1024))

    assert record.id == message_id
    assert record.size == len(data)
    assert b"".join(pieces) == data
    assert max(len(piece) for piece in pieces) <= 64 * 1024
    data_frames = [f for f in frames_of(segment_files(tmp_path)[0]) if f.type == DATA]
    assert len(data_frames) == step


def test_chunk_above_max_payload_is_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "MAX_PAYLOAD", 100_000)
    writer = SpoolWriter(tmp_path, 0)
    data = os.urandom(250_000)
    txn = writer.begin(envelope(1))
    txn.write(data)
    txn.commit({})
    writer.close()

    data_frames = [f for f in frames_of(segment_files(tmp_path)[0]) if f.type == DATA]

    assert [f.length for f in data_frames] == [100_000, 100_000, 50_000]
    assert read_all(tmp_path)[0].message() == data


@pytest.mark.parametrize("size", [1000, 200_000], ids=["buffered", "direct"])
def test_write_keeps_no_reference_to_chunk(tmp_path: Path, size: int) -> None:
    writer = SpoolWriter(tmp_path, 0)
    receive = bytearray(body(1, size))
    expected = bytes(receive)
    view = memoryview(receive)
    txn = writer.begin(envelope(1))
    txn.write(view[: size // 2])
    txn.write(view[size // 2 :])
    view.release()

    # A bytearray with a live export cannot be resized, so this fails if the writer kept one.
    receive.extend(b"more")
    receive[:] = b"x" * len(receive)
    txn.commit({})
    writer.close()

    assert read_all(tmp_path)[0].message() == expected


def test_commit_writes_through_to_file(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    txn = writer.begin(envelope(1))
    txn.write(b"small message")

    assert read_all(tmp_path) == []
    assert writer.commits_written == 0

    message_id = txn.commit({})

    assert [r.id for r in read_all(tmp_path)] == [message_id]
    assert writer.commits_written == 1
    assert txn.stored
    writer.close()


def test_sync_counts_synced_commits(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0, fsync="always")
    for n in range(3):
        store(writer, n, body(n))
    writer.flush()

    assert writer.commits_written == 3
    assert writer.commits_synced == 0
    assert writer.sync() == 3
    assert writer.commits_synced == 3
    assert writer.sync() == 3
    writer.close()


def test_sync_does_nothing_with_fsync_never(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0, fsync="never")
    store(writer, 1, b"x")
    writer.flush()

    assert writer.sync() == 0
    assert writer.commits_synced == 0
    writer.close()


def test_sync_in_thread_while_appending_and_rotating(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0, fsync="always", segment_bytes=16 * 1024)
    stop = threading.Event()
    errors: list[BaseException] = []
    synced: list[int] = []

    def sync_loop() -> None:
        while not stop.is_set():
            try:
                synced.append(writer.sync())
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)
                return

    thread = threading.Thread(target=sync_loop)
    thread.start()
    try:
        ids = []
        for n in range(600):
            ids.append(store(writer, n, body(n, 300)))
            writer.flush()
    finally:
        stop.set()
        thread.join()
    final = writer.sync()
    writer.close()

    assert errors == []
    assert synced == sorted(synced)
    assert final <= writer.commits_written == 600
    assert [r.id for r in read_all(tmp_path)] == ids
    assert len(segment_files(tmp_path)) > 5
    assert verify_spool(tmp_path).ok


def test_rotation_by_size_with_transaction_in_flight(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0, segment_bytes=4096)
    early = writer.begin(envelope(1))
    early.write(b"a" * 5000)
    writer.flush()
    first_segment = writer.segment_path

    late = writer.begin(envelope(2))
    late.write(b"late message")
    assert writer.segment_path != first_segment
    assert late.segment_path != first_segment

    early.write(b"tail of the early message")
    early_id = early.commit({})
    writer.flush()
    late_id = late.commit({})
    writer.flush()

    assert first_segment is not None
    assert not first_segment.exists()
    assert first_segment.with_suffix(".seg").exists()
    found = read_all(tmp_path)
    assert [(r.id, r.segment.suffix) for r in found] == [(early_id, ".seg"), (late_id, ".open")]
    assert found[0].message() == b"a" * 5000 + b"tail of the early message"
    writer.close()
    assert verify_spool(tmp_path).ok


def test_rotation_by_age_with_transaction_in_flight(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, 0, segment_age=300.0, clock=clock)
    early = writer.begin(envelope(1))
    early.write(b"early")
    writer.flush()
    first_segment = writer.segment_path

    clock.now += 301
    writer.tick()
    assert first_segment is not None
    assert first_segment.exists(), "a segment with a transaction in flight must stay open"

    late = writer.begin(envelope(2))
    late_id = late.commit({})
    writer.tick()
    assert first_segment.exists()

    early_id = early.commit({})
    writer.tick()

    assert not first_segment.exists()
    assert first_segment.with_suffix(".seg").exists()
    assert {r.id for r in read_all(tmp_path)} == {early_id, late_id}
    writer.close()


def test_tick_seals_idle_old_segment(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, 0, segment_age=300.0, clock=clock)
    store(writer, 1, b"x")
    writer.flush()
    clock.now += 299
    writer.tick()
    assert [p.suffix for p in segment_files(tmp_path)] == [".open"]

    clock.now += 1
    writer.tick()

    assert [p.suffix for p in segment_files(tmp_path)] == [".seg"]
    assert writer.segment_path is None

    store(writer, 2, b"y")
    writer.flush()
    assert [p.suffix for p in segment_files(tmp_path)] == [".seg", ".open"]
    writer.close()


def test_new_segment_names_sort_after_old_ones(tmp_path: Path) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, 0, segment_bytes=1, clock=clock)
    ids = [store(writer, n, b"m") for n in range(5)]
    writer.close()

    assert len(segment_files(tmp_path)) == 5
    assert [r.id for r in read_all(tmp_path)] == ids


def test_close_aborts_transactions_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = SpoolWriter(tmp_path, 0)
    done = store(writer, 1, b"done")
    pending = writer.begin(envelope(2))
    pending.write(b"never committed")

    with caplog.at_level(logging.WARNING, logger="sink.spool"):
        writer.close()

    assert [r.id for r in read_all(tmp_path)] == [done]
    assert pending.state == "aborted"
    frames = frames_of(segment_files(tmp_path)[0])
    assert [f.type for f in frames][-2:] == [ABORT, SEAL]
    assert "1 transactions in flight" in caplog.text
    report = verify_spool(tmp_path)
    assert report.ok
    assert report.segments[0].unfinished == 0


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    store(writer, 1, b"x")
    writer.close()
    writer.close()

    with pytest.raises(StoreError, match="closed"):
        writer.begin(envelope(2))


def test_close_without_messages_leaves_no_segment(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    writer.close()

    assert segment_files(tmp_path) == []


def test_transaction_rejects_use_after_finish(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    txn = writer.begin(envelope(1))
    txn.commit({})

    with pytest.raises(StoreError, match="stored"):
        txn.write(b"late")
    with pytest.raises(StoreError, match="stored"):
        txn.commit({})
    txn.abort()
    assert txn.state == "stored"

    aborted = writer.begin(envelope(2))
    aborted.abort()
    with pytest.raises(StoreError, match="aborted"):
        aborted.write(b"late")
    writer.close()


def test_envelope_that_is_not_json_is_store_error(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)

    with pytest.raises(StoreError, match="envelope"):
        writer.begin({"mail_from": object()})
    writer.close()


def test_meta_that_is_not_json_aborts_transaction(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0)
    txn = writer.begin(envelope(1))
    txn.write(b"data")

    with pytest.raises(StoreError, match="meta"):
        txn.commit({"bad": {1, 2}})

    assert txn.state == "aborted"
    writer.close()
    assert read_all(tmp_path) == []
    assert verify_spool(tmp_path).ok


def test_two_workers_share_directory(tmp_path: Path) -> None:
    first = SpoolWriter(tmp_path, 0)
    second = SpoolWriter(tmp_path, 1)
    ids = []
    for n in range(50):
        ids.append(store(first, n, body(n)))
        ids.append(store(second, n, body(n)))
    first.close()
    second.close()

    found = read_all(tmp_path)

    assert sorted(r.id for r in found) == sorted(ids)
    assert len(set(ids)) == 100
    assert {p.name[-8:-4] for p in segment_files(tmp_path)} == {"w000", "w001"}


def test_ids_unique_across_restarts(tmp_path: Path) -> None:
    ids = []
    for _ in range(3):
        writer = SpoolWriter(tmp_path, 0)
        ids += [store(writer, n, b"x") for n in range(20)]
        writer.close()

    assert len(set(ids)) == 60
    assert sorted(r.id for r in read_all(tmp_path)) == sorted(ids)


def test_missing_directory_is_created(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "b" / "spool"
    writer = SpoolWriter(directory, 0)

    assert directory.is_dir()
    writer.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"worker": -1}, "worker index"),
        ({"worker": 1000}, "worker index"),
        ({"segment_bytes": 0}, "segment_bytes"),
        ({"segment_age": 0}, "segment_age"),
        ({"fsync": "sometimes"}, "fsync must be one of"),
    ],
)
def test_invalid_options_rejected(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"worker": 0, **options}
    worker = arguments.pop("worker")

    with pytest.raises(ValueError, match=message):
        SpoolWriter(tmp_path, worker, **arguments)


def test_many_messages_stay_in_order(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path, 0, segment_bytes=64 * 1024)
    ids = [store(writer, n, body(n, 100 + n % 700)) for n in range(2000)]
    writer.close()

    found = read_all(tmp_path)

    assert [r.id for r in found] == ids
    assert all(r.message() == body(r.meta["n"], r.size) for r in found[::97])
    report = verify_spool(tmp_path)
    assert report.ok
    assert report.records == 2000


def test_seal_waits_for_running_sync_before_closing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    writer = SpoolWriter(tmp_path, 0, fsync="always", clock=clock)
    store(writer, 1, b"x")
    writer.flush()
    segment = writer._current
    assert segment is not None

    real_fsync = os.fsync
    in_sync = threading.Event()
    release = threading.Event()

    def slow_fsync(fd: int) -> None:
        if threading.current_thread().name == "syncer":
            in_sync.set()
            release.wait(5)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    results: list[int] = []
    thread = threading.Thread(target=lambda: results.append(writer.sync()), name="syncer")
    thread.start()
    assert in_sync.wait(5)

    clock.now += 1000
    writer.tick()

    assert segment.path.with_suffix(".seg").exists()
    assert segment.close_pending
    assert not segment.closed
    os.fstat(segment.fd)  # still open: the sync thread is using it

    release.set()
    thread.join()

    assert segment.closed
    assert results == [1]
    writer.close()
