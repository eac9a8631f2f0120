"""SMTP replies, encoded once. Codes from RFC 5321, enhanced status codes from RFC 3463."""

OK = b"250 2.0.0 Ok\r\n"
SENDER_OK = b"250 2.1.0 Ok\r\n"
RECIPIENT_OK = b"250 2.1.5 Ok\r\n"
START_DATA = b"354 End data with <CR><LF>.<CR><LF>\r\n"
BYE = b"221 2.0.0 Bye\r\n"
HELP = b"214 2.0.0 Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP\r\n"
CANNOT_VRFY = b"252 2.5.2 Cannot VRFY user, but will accept the message\r\n"

SHUTTING_DOWN = b"421 4.3.2 Service shutting down, closing connection\r\n"
TOO_MANY_SESSIONS = b"421 4.3.2 Too many sessions, try again later\r\n"
TIMEOUT = b"421 4.4.2 Timeout exceeded, closing connection\r\n"
TOO_MANY_ERRORS = b"421 4.7.0 Too many errors, closing connection\r\n"
STORE_FAILED = b"451 4.3.0 Local error: message not stored, try again later\r\n"
TOO_MANY_RECIPIENTS = b"452 4.5.3 Too many recipients\r\n"

UNRECOGNIZED = b"500 5.5.2 Command not recognized\r\n"
LINE_TOO_LONG = b"500 5.5.2 Line too long\r\n"
BARE_LF_COMMAND = b"500 5.5.2 Command line must end with CR LF\r\n"
HELO_SYNTAX = b"501 5.5.4 Syntax: HELO hostname\r\n"
EHLO_SYNTAX = b"501 5.5.4 Syntax: EHLO hostname\r\n"
NO_ARGUMENTS = b"501 5.5.4 This command takes no arguments\r\n"
BDAT_SYNTAX = b"501 5.5.4 Syntax: BDAT size [LAST]\r\n"
VRFY_SYNTAX = b"501 5.5.4 Syntax: VRFY address\r\n"
NOT_IMPLEMENTED = b"502 5.5.1 Command not implemented\r\n"
NEED_HELO = b"503 5.5.1 Send HELO or EHLO first\r\n"
NEED_MAIL = b"503 5.5.1 Need MAIL command first\r\n"
NEED_RCPT = b"503 5.5.1 Need RCPT command first\r\n"
NESTED_MAIL = b"503 5.5.1 Nested MAIL command\r\n"
DATA_AFTER_BDAT = b"503 5.5.1 DATA cannot follow BDAT in one transaction\r\n"
NO_VALID_RECIPIENTS = b"554 5.5.1 No valid recipients\r\n"
NO_SUCH_USER = b"550 5.1.1 No such user here\r\n"
BARE_LINE_END = b"550 5.6.0 Message refused: bare CR or LF in content (strict line endings)\r\n"
SIZE_EXCEEDED = b"552 5.3.4 Message size exceeds fixed limit\r\n"
NEEDS_SMTPUTF8 = b"553 5.6.7 Non-ASCII address requires the SMTPUTF8 option\r\n"
BAD_BODY = b"501 5.5.4 BODY must be 7BIT or 8BITMIME\r\n"
BAD_SMTPUTF8 = b"501 5.5.4 SMTPUTF8 takes no value\r\n"
BAD_SIZE = b"501 5.5.4 SIZE must be a decimal number\r\n"


def queued(message_id: str) -> bytes:
    """Build the reply that acknowledges a stored message."""
    return b"250 2.0.0 Ok: queued as %s\r\n" % message_id.encode("ascii")


def chunk_received(size: int) -> bytes:
    """Build the reply to a BDAT chunk that is not the last one."""
    return b"250 2.0.0 Ok: %d octets received\r\n" % size


def unsupported_parameter(keyword: str) -> bytes:
    """Build the reply to an unknown MAIL or RCPT parameter; the keyword is alphanumeric."""
    return b"555 5.5.4 Unsupported parameter %s\r\n" % keyword.encode("ascii", "replace")


def error_reply(code: int, enhanced: str, text: str) -> bytes:
    """Encode a reply from its parts, replacing anything that is not printable ASCII."""
    line = f"{code} {enhanced} {text}".encode("ascii", "replace")
    return bytes(octet if 0x20 <= octet <= 0x7E else 0x3F for octet in line) + b"\r\n"
