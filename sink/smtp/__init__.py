"""The SMTP protocol core: a sans-IO state machine, with no sockets and no event loop.

`Session` takes the octets a client sent and returns the replies to send back; message octets go
to a `sink.store.Store`. The event-loop adapter in `sink.server.protocol` is the only caller in
the server, and the tests drive it with byte transcripts.
"""

from sink.smtp.policy import Policy
from sink.smtp.session import Session

__all__ = ["Policy", "Session"]
