"""Listening sockets: parse `HOST:PORT` addresses and bind them once, in the master."""

from __future__ import annotations

import socket
from dataclasses import dataclass

BACKLOG = 4096


class ListenError(ValueError):
    """A listen address is invalid or cannot be bound."""


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def split_host_port(text: str) -> tuple[str, str]:
    """Split `HOST:PORT` or `[IPv6]:PORT` into host and port text; raise ValueError if neither.

    The error's message names the expected form only; callers add the text and the option.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("expected [IPv6]:PORT")
        return host, rest[1:]
    host, colon, port_text = text.rpartition(":")
    if not colon or ":" in host:
        raise ValueError("expected HOST:PORT or [IPv6]:PORT")
    return host, port_text


def parse_address(text: str) -> Address:
    """Parse `127.0.0.1:2525`, `[::1]:2525` or `localhost:2525`."""
    try:
        host, port_text = split_host_port(text)
    except ValueError as error:
        raise ListenError(f"invalid listen address {text!r}: {error}") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ListenError(f"invalid port in listen address {text!r}")
    if host in ("", "localhost"):
        host = "127.0.0.1"
    return Address(host, int(port_text))


def bind(address: Address, reuseport: bool = False) -> socket.socket:
    """Create a non-blocking listening TCP socket on `address`."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(f"cannot listen on {address}: {error.strerror or error}") from None
    return sock


def bind_all(addresses: list[Address], workers: int, reuseport: bool) -> list[list[socket.socket]]:
    """Bind every address; return the sockets of each worker.

    Without reuseport, all workers share one socket per address. With it, each worker gets its
    own SO_REUSEPORT socket per address, so the kernel balances connections between workers.
    A port of 0 is resolved to the port the first bind chose, so every worker shares it.
    """
    if not reuseport:
        shared = [bind(address) for address in addresses]
        return [shared] * workers

    per_worker: list[list[socket.socket]] = [[] for _ in range(workers)]
    for address in addresses:
        first = bind(address, reuseport=True)
        resolved = Address(address.host, first.getsockname()[1])
        per_worker[0].append(first)
        for index in range(1, workers):
            per_worker[index].append(bind(resolved, reuseport=True))
    return per_worker
