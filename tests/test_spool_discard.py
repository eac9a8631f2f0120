"""DiscardStore: the store behind --no-spool."""

from __future__ import annotations

import pytest

from sink.spool import DiscardStore
from sink.store import StoreError


def test_discard_store_returns_unique_ids() -> None:
    store = DiscardStore(worker=2)
    ids = set()
    for n in range(1000):
        txn = store.begin({"mail_from": f"s{n}@example.test"})
        txn.write(memoryview(b"Subject: x\r\n\r\nbody\r\n"))
        ids.add(txn.commit({"size": 20}))

    assert len(ids) == 1000
    assert store.commits_written == 1000
    assert store.commits_synced == 1000


def test_discard_store_ids_differ_from_another_worker() -> None:
    first = DiscardStore(worker=0)
    second = DiscardStore(worker=1)

    a = first.begin({}).commit({})
    b = second.begin({}).commit({})

    assert a != b
    assert a[11:13] != b[11:13]


def test_discard_transaction_counts_octets() -> None:
    txn = DiscardStore().begin({})
    txn.write(b"abc")
    txn.write(memoryview(b"defg"))

    assert txn.size == 7


def test_discard_transaction_rejects_use_after_commit() -> None:
    txn = DiscardStore().begin({})
    txn.commit({})

    with pytest.raises(StoreError):
        txn.write(b"late")
    with pytest.raises(StoreError):
        txn.commit({})
    txn.abort()


def test_discard_abort_does_not_count() -> None:
    store = DiscardStore()
    store.begin({}).abort()

    assert store.commits_written == 0


def test_discard_server_hooks_and_close() -> None:
    store = DiscardStore()
    store.begin({}).commit({})
    store.flush()
    store.tick()

    assert store.sync() == 1

    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.begin({})
