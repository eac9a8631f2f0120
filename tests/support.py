"""Test helpers: an in-memory store and a driver that feeds a Session the way the server does."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sink.smtp import Policy, Session
from sink.store import StoreError


@dataclass
class StoredMessage:
    id: str
    envelope: dict[str, Any]
    meta: dict[str, Any]
    content: bytes


@dataclass
class MemoryStore:
    """A Store that keeps messages in a list; `fail_after` makes the Nth write fail."""

    messages: list[StoredMessage] = field(default_factory=list)
    aborted: int = 0
    fail_after: int | None = None
    writes: int = 0

    def begin(self, envelope: dict[str, Any]) -> MemoryTransaction:
        return MemoryTransaction(self, envelope)


class MemoryTransaction:
    def __init__(self, store: MemoryStore, envelope: dict[str, Any]) -> None:
        self.store = store
        self.envelope = envelope
        self.parts: list[bytes] = []

    def write(self, chunk: memoryview | bytes) -> None:
        self.store.writes += 1
        if self.store.fail_after is not None and self.store.writes > self.store.fail_after:
            raise StoreError("injected write failure")
        self.parts.append(bytes(chunk))

    def commit(self, meta: dict[str, Any]) -> str:
        message_id = f"M{len(self.store.messages) + 1}"
        content = b"".join(self.parts)
        self.store.messages.append(StoredMessage(message_id, self.envelope, meta, content))
        return message_id

    def abort(self) -> None:
        self.store.aborted += 1


class Driver:
    """Feed a Session through one reused receive buffer with a carry, like the server adapter."""

    def __init__(self, session: Session, buffer_size: int = 65536) -> None:
        self.session = session
        self.buffer = bytearray(buffer_size)
        self.view = memoryview(self.buffer)
        self.carry = b""

    def send(self, data: bytes) -> bytes:
        """Deliver `data` as one read (or several, if it exceeds the buffer); return the replies."""
        replies = []
        while True:
            room = len(self.buffer) - len(self.carry)
            piece, data = data[:room], data[room:]
            end = len(self.carry) + len(piece)
            self.buffer[: len(self.carry)] = self.carry
            self.buffer[len(self.carry) : end] = piece
            consumed = self.session.receive(self.buffer, self.view, end)
            assert 0 <= consumed <= end
            self.carry = bytes(self.buffer[consumed:end])
            replies.append(b"".join(self.session.out))
            self.session.out.clear()
            if not data or self.session.closing:
                return b"".join(replies)

    def send_split(self, data: bytes, cuts: list[int]) -> bytes:
        """Deliver `data` as separate reads cut at the given offsets."""
        replies = []
        previous = 0
        for cut in sorted(set(cuts)) + [len(data)]:
            replies.append(self.send(data[previous:cut]))
            previous = cut
        return b"".join(replies)


def new_session(store: MemoryStore | None = None, **policy: Any) -> tuple[Driver, MemoryStore]:
    store = store if store is not None else MemoryStore()
    policy.setdefault("hostname", "sink.test")
    session = Session(Policy(**policy), store, client_address="192.0.2.1", client_port=40000)
    return Driver(session), store


def codes(replies: bytes) -> list[int]:
    """Return the reply codes in order, one per reply (multi-line replies count once)."""
    return [int(line[:3]) for line in replies.split(b"\r\n") if re.match(rb"^\d{3} ", line)]
