"""Parse the arguments of MAIL FROM and RCPT TO: the path and the ESMTP parameters.

The grammar is RFC 5321 section 4.1.2 (Reverse-path, Forward-path, Mailbox, Mail-parameters)
with the RFC 6531 extension that allows UTF-8 octets in the local part and the domain. Each
command runs one precompiled bytes pattern over the path. Only the parameters are split in
Python, and only an address literal gets a second check with `ipaddress`.

Accepted deviations from the grammar, reported as quirks so the caller can count them:
``space_after_colon`` (``FROM: <a@b>``), ``missing_brackets`` (``FROM:a@b``) and
``source_route`` (``<@a,@b:user@c>``, whose route is returned and otherwise ignored).
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

from sink.smtp import quirks

__all__ = ["Path", "PathError", "parse_mail_from", "parse_rcpt_to"]

Reply = tuple[int, str, str]

MAIL_SYNTAX_REPLY: Reply = (501, "5.1.7", "Bad sender address syntax")
RCPT_SYNTAX_REPLY: Reply = (501, "5.1.3", "Bad recipient address syntax")
MAIL_TOO_LONG_REPLY: Reply = (501, "5.1.7", "Sender address too long")
RCPT_TOO_LONG_REPLY: Reply = (501, "5.1.3", "Recipient address too long")
PARAM_SYNTAX_REPLY: Reply = (501, "5.5.4", "Invalid parameter syntax")

# Size limits from RFC 5321 section 4.5.3.1, in octets. The path limit counts the angle
# brackets and the source route.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256


class PathError(ValueError):
    """An invalid MAIL or RCPT argument.

    `reply` is the (code, enhanced status, text) triple to send. Its text is fixed and never
    contains client input. The exception message names the problem and shows the input
    escaped, for logs.
    """

    def __init__(self, reply: Reply, message: str) -> None:
        super().__init__(message)
        self.reply = reply


class Path(NamedTuple):
    """A reverse-path or forward-path, with every part as the client wrote it.

    A named tuple rather than a frozen dataclass, because one is built for every MAIL and RCPT
    command and a tuple is several times cheaper to create.
    """

    raw: str
    """The path as written without its angle brackets, source route included, or "" for <>."""
    mailbox: str
    """``local_part + "@" + domain``, or the local part alone for <Postmaster>, or "" for <>."""
    route: tuple[str, ...]
    """Domains of the source route without their "@", in order."""
    local_part: str
    """The local part, with the quotes and backslashes of a quoted string kept."""
    domain: str
    """The domain, or the address literal with its brackets, or "" for <> and <Postmaster>."""
    utf8: bool
    """True if the path contains an octet >= 0x80, so the command needs SMTPUTF8."""


# The octet classes below come from RFC 5321 section 4.1.2, and each one also admits
# 0x80-0xFF for RFC 6531. Whether those octets form valid UTF-8 is checked after the match,
# by decoding. The quantifiers are possessive: each alternative starts with a different
# octet, so no backtracking is needed and a failed match costs linear time.
# NOTE: a UTF-8 domain is not checked against the IDNA rules for U-labels.
_ATEXT = rb"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\x80-\xff]"
_DOT_STRING = _ATEXT + rb"++(?:\." + _ATEXT + rb"++)*+"
# qtextSMTP is %d32-33 / %d35-91 / %d93-126, and quoted-pairSMTP is "\" followed by %d32-126.
_QUOTED_STRING = rb'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\x80-\xff]++|\\[\x20-\x7e])*+"'
_LET_DIG = rb"[A-Za-z0-9\x80-\xff]"
# A sub-domain is runs of letters and digits joined by hyphens, so it cannot start or end
# with "-".
_SUB_DOMAIN = _LET_DIG + rb"++(?:-++" + _LET_DIG + rb"++)*+"
_DOMAIN = _SUB_DOMAIN + rb"(?:\." + _SUB_DOMAIN + rb")*+"
# dcontent is %d33-90 / %d94-126. Which literal it is gets decided in _check_address_literal.
_ADDRESS_LITERAL = rb"\[[\x21-\x5a\x5e-\x7e]++\]"
_AT_DOMAIN_LIST = rb"@" + _DOMAIN + rb"(?:,@" + _DOMAIN + rb")*+"

# Group 1 is the opening bracket. The conditional (?(1)>) requires the closing bracket only
# when the opening one is present, which lets one pattern accept a path without brackets.
_MAILBOX_PATH_RE = re.compile(
    rb"(<)?(?:(?P<route>" + _AT_DOMAIN_LIST + rb"):)?"
    rb"(?P<local>" + _DOT_STRING + rb"|" + _QUOTED_STRING + rb")"
    rb"@(?P<domain>" + _DOMAIN + rb"|" + _ADDRESS_LITERAL + rb")"
    rb"(?(1)>)"
)
_POSTMASTER_PATH_RE = re.compile(rb"(<)?(?P<local>(?i:postmaster))(?(1)>)")
_FROM_RE = re.compile(rb"(?i:FROM):( *)")
_TO_RE = re.compile(rb"(?i:TO):( *)")

# esmtp-value is %d33-60 / %d62-126 / UTF8-non-ascii, so "=" cannot appear inside a value.
_PARAM_RE = re.compile(rb"([A-Za-z0-9][A-Za-z0-9-]*+)(?:=([\x21-\x3c\x3e-\x7e\x80-\xff]++))?")

_IPV4_LITERAL_RE = re.compile(rb"([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})")
_GENERAL_LITERAL_RE = re.compile(rb"([A-Za-z0-9-]*[A-Za-z0-9]):(.+)", re.DOTALL)
_IPV6_TEXT_RE = re.compile(rb"[0-9A-Fa-f:.]+")

_NO_QUIRKS: frozenset[str] = frozenset()
_NULL_PATH = Path(raw="", mailbox="", route=(), local_part="", domain="", utf8=False)


def parse_mail_from(arg: bytes) -> tuple[Path, dict[str, str | None], frozenset[str]]:
    """Parse the argument of MAIL, e.g. ``b"FROM:<a@b> SIZE=10"``.

    Returns the reverse-path, which is the null path for ``<>``, then the ESMTP parameters
    (upper-cased keyword to value, or None for a keyword without "=") and the quirks seen.
    Raises PathError with a 501 reply. The parameters are not checked against the ones the
    server supports.
    """
    return _parse_command(
        arg, _FROM_RE, "FROM:", MAIL_SYNTAX_REPLY, MAIL_TOO_LONG_REPLY, is_mail=True
    )


def parse_rcpt_to(arg: bytes) -> tuple[Path, dict[str, str | None], frozenset[str]]:
    """Parse the argument of RCPT, e.g. ``b"TO:<a@b> NOTIFY=NEVER"``.

    Returns the forward-path, the ESMTP parameters and the quirks seen, as parse_mail_from
    does. The null path is rejected. ``<Postmaster>`` without a domain, in any case, is
    accepted as RFC 5321 section 4.1.1.3 requires: its mailbox and local part are the name
    as written and its domain is "".
    """
    return _parse_command(arg, _TO_RE, "TO:", RCPT_SYNTAX_REPLY, RCPT_TOO_LONG_REPLY, is_mail=False)


def _parse_command(
    arg: bytes,
    prefix_re: re.Pattern[bytes],
    prefix: str,
    syntax_reply: Reply,
    too_long_reply: Reply,
    *,
    is_mail: bool,
) -> tuple[Path, dict[str, str | None], frozenset[str]]:
    prefix_match = prefix_re.match(arg)
    if prefix_match is None:
        raise PathError(syntax_reply, f"missing {prefix} at the start of {_show(arg)}")
    start = prefix_match.end()
    if start == len(arg):
        raise PathError(syntax_reply, f"missing path after {prefix} in {_show(arg)}")
    space_after_colon = prefix_match.end(1) > prefix_match.start(1)

    brackets = True
    match = _MAILBOX_PATH_RE.match(arg, start)
    if match is not None:
        path = _build_path(match, syntax_reply, too_long_reply)
        end = match.end()
        brackets = match[1] is not None
    elif arg.startswith(b"<>", start):
        if not is_mail:
            raise PathError(syntax_reply, "the null path <> is not allowed in RCPT")
        path = _NULL_PATH
        end = start + 2
    elif not is_mail and (match := _POSTMASTER_PATH_RE.match(arg, start)) is not None:
        local_part = match["local"].decode("ascii")
        path = Path(
            raw=local_part,
            mailbox=local_part,
            route=(),
            local_part=local_part,
            domain="",
            utf8=False,
        )
        end = match.end()
        brackets = match[1] is not None
    else:
        raise PathError(syntax_reply, f"invalid path syntax in {_show(arg)}")

    if end < len(arg) and arg[end] != 0x20:
        raise PathError(syntax_reply, f"unexpected text after the path in {_show(arg)}")
    params = _parse_params(arg, end)

    if brackets and not space_after_colon and not path.route:
        return path, params, _NO_QUIRKS
    seen = []
    if space_after_colon:
        seen.append(quirks.SPACE_AFTER_COLON)
    if not brackets:
        seen.append(quirks.MISSING_BRACKETS)
    if path.route:
        seen.append(quirks.SOURCE_ROUTE)
    return path, params, frozenset(seen)


def _build_path(match: re.Match[bytes], syntax_reply: Reply, too_long_reply: Reply) -> Path:
    local_octets = match["local"]
    domain_octets = match["domain"]
    route_octets = match["route"]

    if len(local_octets) > MAX_LOCAL_PART:
        raise PathError(
            too_long_reply,
            f"local part is {len(local_octets)} octets, more than the {MAX_LOCAL_PART} allowed",
        )
    if len(domain_octets) > MAX_DOMAIN:
        raise PathError(
            too_long_reply,
            f"domain is {len(domain_octets)} octets, more than the {MAX_DOMAIN} allowed",
        )
    # The bracket octets are counted even when the client left them out.
    path_length = match.end("domain") - match.start("local") + 2
    if route_octets is not None:
        path_length += len(route_octets) + 1
    if path_length > MAX_PATH:
        raise PathError(
            too_long_reply, f"path is {path_length} octets, more than the {MAX_PATH} allowed"
        )

    if domain_octets[0] == 0x5B:  # "["
        _check_address_literal(domain_octets, syntax_reply)

    try:
        local_part = local_octets.decode("utf-8")
        domain = domain_octets.decode("utf-8")
        route_text = route_octets.decode("utf-8") if route_octets is not None else None
    except UnicodeDecodeError as exc:
        raise PathError(
            syntax_reply, f"invalid UTF-8 in the path {_show(match.group(0))}: {exc.reason}"
        ) from None

    mailbox = f"{local_part}@{domain}"
    if route_text is None:
        return Path(
            raw=mailbox,
            mailbox=mailbox,
            route=(),
            local_part=local_part,
            domain=domain,
            utf8=not (local_octets.isascii() and domain_octets.isascii()),
        )
    return Path(
        raw=f"{route_text}:{mailbox}",
        mailbox=mailbox,
        route=tuple(at_domain[1:] for at_domain in route_text.split(",")),
        local_part=local_part,
        domain=domain,
        utf8=not (local_octets.isascii() and domain_octets.isascii() and route_octets.isascii()),
    )


def _check_address_literal(literal: bytes, syntax_reply: Reply) -> None:
    """Raise PathError unless `literal`, brackets included, is an IPv4, IPv6 or general one.

    An IPv4 literal is four decimal numbers of 0 to 255, leading zeros allowed. An IPv6
    literal is "IPv6:" followed by an address that `ipaddress.IPv6Address` accepts, without
    a zone index. A general literal is a tag of letters, digits and hyphens, a colon and
    any dcontent octets.
    """
    content = literal[1:-1]

    ipv4_match = _IPV4_LITERAL_RE.fullmatch(content)
    if ipv4_match is not None:
        if all(int(number) <= 255 for number in ipv4_match.groups()):
            return
        raise PathError(syntax_reply, f"invalid IPv4 address literal {_show(literal)}")

    general_match = _GENERAL_LITERAL_RE.fullmatch(content)
    if general_match is None:
        raise PathError(
            syntax_reply,
            f"invalid address literal {_show(literal)}, expected [IPv4], [IPv6:address] "
            "or [tag:content]",
        )
    if general_match[1].lower() != b"ipv6":
        return

    # NOTE: RFC 5321 allows at most 6 groups besides "::", but ipaddress follows RFC 4291
    # and also accepts 7 groups with a "::" that stands for a single zero group.
    address = general_match[2]
    if _IPV6_TEXT_RE.fullmatch(address) is not None:
        try:
            ipaddress.IPv6Address(address.decode("ascii"))
            return
        except ValueError:
            pass
    raise PathError(syntax_reply, f"invalid IPv6 address literal {_show(literal)}")


def _parse_params(arg: bytes, start: int) -> dict[str, str | None]:
    """Split the space-separated ESMTP parameters that follow the path at `start`.

    Runs of spaces count as one separator, and spaces at the end are ignored. A repeated
    keyword raises PathError, because keeping only one of the values would hide the
    conflict from the caller.
    """
    params: dict[str, str | None] = {}
    if start == len(arg):
        return params

    for token in arg[start:].split(b" "):
        if not token:
            continue
        match = _PARAM_RE.fullmatch(token)
        if match is None:
            raise PathError(PARAM_SYNTAX_REPLY, f"invalid ESMTP parameter {_show(token)}")
        keyword = match[1].decode("ascii").upper()
        if keyword in params:
            raise PathError(PARAM_SYNTAX_REPLY, f"ESMTP parameter {keyword} given twice")
        value = match[2]
        params[keyword] = None if value is None else value.decode("utf-8", "surrogateescape")
    return params


def _show(octets: bytes, limit: int = 80) -> str:
    """Return `octets` as an escaped bytes literal for a log line, cut to `limit` octets."""
    if len(octets) <= limit:
        return repr(octets)
    return f"{octets[:limit]!r}... ({len(octets)} octets)"
