"""What a session accepts: limits, strictness and refused recipients.

A `Policy` is built once per worker from the configuration and shared by every session of that
worker, so that the per-session state stays small. It also contains the replies that depend on the
configuration (greeting, EHLO), encoded once.
"""

from __future__ import annotations

import fnmatch
import re
import socket
from collections.abc import Iterable

# RFC 5321 4.5.3.1.4: a command line is at most 512 octets, CR LF included.
MAX_COMMAND_LINE = 512


class Policy:
    """Limits and rules for the sessions of one worker."""

    __slots__ = (
        "hostname",
        "max_message_size",
        "max_recipients",
        "strict_line_endings",
        "require_helo",
        "max_errors",
        "_reject",
        "greeting",
        "helo_reply",
        "ehlo_reply",
    )

    def __init__(
        self,
        *,
        hostname: str | None = None,
        max_message_size: int = 64 * 1024 * 1024,
        max_recipients: int = 1000,
        strict_line_endings: bool = False,
        require_helo: bool = False,
        reject_recipients: Iterable[str] = (),
        max_errors: int = 20,
    ) -> None:
        self.hostname = hostname or socket.gethostname()
        self.max_message_size = max_message_size
        self.max_recipients = max_recipients
        self.strict_line_endings = strict_line_endings
        self.require_helo = require_helo
        self.max_errors = max_errors
        self._reject = _compile_globs(reject_recipients)

        host = _ascii_hostname(self.hostname)
        self.greeting = b"220 %s ESMTP sink\r\n" % host
        self.helo_reply = b"250 %s\r\n" % host
        extensions = [
            host,
            b"PIPELINING",
            b"SIZE %d" % max_message_size,
            b"8BITMIME",
            b"SMTPUTF8",
            b"ENHANCEDSTATUSCODES",
            b"CHUNKING",
        ]
        lines = [b"250-" + line for line in extensions[:-1]] + [b"250 " + extensions[-1]]
        self.ehlo_reply = b"\r\n".join(lines) + b"\r\n"

    def rejects(self, mailbox: str) -> bool:
        """Tell whether a recipient matches one of the refused-recipient globs."""
        return self._reject is not None and self._reject.match(mailbox) is not None


def _compile_globs(patterns: Iterable[str]) -> re.Pattern[str] | None:
    """Compile shell globs into one case-insensitive pattern, or None when there are none."""
    parts = [fnmatch.translate(pattern) for pattern in patterns]
    if not parts:
        return None
    return re.compile("|".join(f"(?:{part})" for part in parts), re.IGNORECASE)


def _ascii_hostname(hostname: str) -> bytes:
    """Encode the hostname for replies; IDNA for non-ASCII names, never raw control octets."""
    try:
        encoded = hostname.encode("idna")
    except UnicodeError:
        encoded = hostname.encode("ascii", "replace")
    return bytes(octet if 0x21 <= octet <= 0x7E else 0x3F for octet in encoded)
