"""Tests for the MAIL FROM and RCPT TO argument parser in sink.smtp.paths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sink.smtp.paths import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    MAX_PATH,
    Path,
    PathError,
    parse_mail_from,
    parse_rcpt_to,
)

MAIL_SYNTAX = (501, "5.1.7", "Bad sender address syntax")
RCPT_SYNTAX = (501, "5.1.3", "Bad recipient address syntax")
MAIL_TOO_LONG = (501, "5.1.7", "Sender address too long")
RCPT_TOO_LONG = (501, "5.1.3", "Recipient address too long")
PARAM_SYNTAX = (501, "5.5.4", "Invalid parameter syntax")

ALL_REPLIES = {MAIL_SYNTAX, RCPT_SYNTAX, MAIL_TOO_LONG, RCPT_TOO_LONG, PARAM_SYNTAX}
ALL_QUIRKS = {"space_after_colon", "missing_brackets", "source_route"}

Parser = Callable[[bytes], tuple[Path, dict[str, str | None], frozenset[str]]]


def mailbox_path(local_part: str, domain: str, route: tuple[str, ...] = ()) -> Path:
    """Build the Path expected for `local_part@domain`, with an optional source route."""
    mailbox = f"{local_part}@{domain}"
    raw = mailbox
    if route:
        raw = ",".join("@" + route_domain for route_domain in route) + ":" + mailbox
    return Path(
        raw=raw,
        mailbox=mailbox,
        route=route,
        local_part=local_part,
        domain=domain,
        utf8=not raw.isascii(),
    )


NULL_PATH = Path(raw="", mailbox="", route=(), local_part="", domain="", utf8=False)


# Paths that are valid in both MAIL and RCPT: (argument after "FROM:" or "TO:", expected Path).
VALID_PATHS = [
    pytest.param(b"<a@b>", mailbox_path("a", "b"), id="plain-short"),
    pytest.param(
        b"<Jones@BBN-VAX.ARPA>", mailbox_path("Jones", "BBN-VAX.ARPA"), id="plain-case-kept"
    ),
    pytest.param(
        b"<first.middle.last@mail.example.com>",
        mailbox_path("first.middle.last", "mail.example.com"),
        id="dot-atom",
    ),
    pytest.param(
        b"<!#$%&'*+-/=?^_`{|}~@example.com>",
        mailbox_path("!#$%&'*+-/=?^_`{|}~", "example.com"),
        id="atext-specials",
    ),
    pytest.param(
        b'<"john doe"@example.com>', mailbox_path('"john doe"', "example.com"), id="quoted-space"
    ),
    pytest.param(
        b'<"john \\"jd\\" doe"@example.com>',
        mailbox_path('"john \\"jd\\" doe"', "example.com"),
        id="quoted-escaped-quote",
    ),
    pytest.param(
        b'<"a>b@c,d:e"@example.com>',
        mailbox_path('"a>b@c,d:e"', "example.com"),
        id="quoted-delimiters",
    ),
    pytest.param(b'<""@example.com>', mailbox_path('""', "example.com"), id="quoted-empty"),
    pytest.param(b'<"\\\\"@example.com>', mailbox_path('"\\\\"', "example.com"), id="quoted-pair"),
    pytest.param(b"<a@x-1.b--c.d9>", mailbox_path("a", "x-1.b--c.d9"), id="domain-hyphens"),
    pytest.param(b"<a@localhost>", mailbox_path("a", "localhost"), id="domain-single-label"),
    pytest.param(b"<a@[192.0.2.1]>", mailbox_path("a", "[192.0.2.1]"), id="ipv4-literal"),
    pytest.param(
        b"<a@[255.0.00.001]>", mailbox_path("a", "[255.0.00.001]"), id="ipv4-leading-zeros"
    ),
    pytest.param(
        b"<a@[IPv6:2001:db8::1]>", mailbox_path("a", "[IPv6:2001:db8::1]"), id="ipv6-literal"
    ),
    pytest.param(b"<a@[IPv6:::1]>", mailbox_path("a", "[IPv6:::1]"), id="ipv6-loopback"),
    pytest.param(b"<a@[ipv6:::1]>", mailbox_path("a", "[ipv6:::1]"), id="ipv6-tag-lowercase"),
    pytest.param(
        b"<a@[IPv6:::ffff:192.0.2.1]>",
        mailbox_path("a", "[IPv6:::ffff:192.0.2.1]"),
        id="ipv6-embedded-ipv4",
    ),
    pytest.param(
        b"<a@[IPv6:1:2:3:4:5:6:7:8]>",
        mailbox_path("a", "[IPv6:1:2:3:4:5:6:7:8]"),
        id="ipv6-full",
    ),
    pytest.param(
        b"<a@[x-tag:any=thing;here]>",
        mailbox_path("a", "[x-tag:any=thing;here]"),
        id="general-literal",
    ),
    pytest.param("<用户@例子.广告>".encode(), mailbox_path("用户", "例子.广告"), id="utf8-mailbox"),
    pytest.param(
        '<"用 户"@example.com>'.encode(), mailbox_path('"用 户"', "example.com"), id="utf8-quoted"
    ),
    pytest.param(
        "<josé.müller@bücher.example>".encode(),
        mailbox_path("josé.müller", "bücher.example"),
        id="utf8-latin",
    ),
    pytest.param(
        b"<@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA>",
        mailbox_path("Jones", "BBN-VAX.ARPA", ("USC-ISIE.ARPA",)),
        id="source-route-single",
    ),
    pytest.param(
        b"<@a,@b:user@c>", mailbox_path("user", "c", ("a", "b")), id="source-route-multiple"
    ),
    pytest.param(
        "<@例子.广告:a@b>".encode(), mailbox_path("a", "b", ("例子.广告",)), id="source-route-utf8"
    ),
]

# Paths that are invalid in both MAIL and RCPT.
INVALID_PATHS = [
    pytest.param(b"<a@b", id="missing-closing-bracket"),
    pytest.param(b"a@b>", id="missing-opening-bracket"),
    pytest.param(b"<>>", id="null-path-extra-bracket"),
    pytest.param(b"< >", id="space-in-brackets"),
    pytest.param(b"<a@b >", id="space-before-closing-bracket"),
    pytest.param(b"< a@b>", id="space-after-opening-bracket"),
    pytest.param(b"<a b@c>", id="unquoted-space"),
    pytest.param(b"<ab>", id="no-at-sign"),
    pytest.param(b"<a@>", id="empty-domain"),
    pytest.param(b"<@b>", id="empty-local-part"),
    pytest.param(b"<a@b@c>", id="two-at-signs"),
    pytest.param(b"<a..b@c>", id="dot-atom-double-dot"),
    pytest.param(b"<.a@c>", id="dot-atom-leading-dot"),
    pytest.param(b"<a.@c>", id="dot-atom-trailing-dot"),
    pytest.param(b"<a(b)@c>", id="parentheses-unquoted"),
    pytest.param(b'<"a@b>', id="quoted-unterminated"),
    pytest.param(b'<"a"b@c>', id="quoted-then-atom"),
    pytest.param(b'<a."b"@c>', id="atom-then-quoted"),
    pytest.param(b'<"a\\"@c>', id="quoted-escaped-closing-quote"),
    pytest.param('<"\\é"@c>'.encode(), id="quoted-pair-non-ascii"),
    pytest.param(b"<a@-b.com>", id="domain-leading-hyphen"),
    pytest.param(b"<a@b-.com>", id="domain-trailing-hyphen"),
    pytest.param(b"<a@b..com>", id="domain-empty-label"),
    pytest.param(b"<a@b.com.>", id="domain-trailing-dot"),
    pytest.param(b"<a@.b.com>", id="domain-leading-dot"),
    pytest.param(b"<a@b_c.com>", id="domain-underscore"),
    pytest.param(b"<a@[300.1.1.1]>", id="ipv4-octet-too-large"),
    pytest.param(b"<a@[1.2.3]>", id="ipv4-three-numbers"),
    pytest.param(b"<a@[1.2.3.4.5]>", id="ipv4-five-numbers"),
    pytest.param(b"<a@[1.2.3.1234]>", id="ipv4-four-digits"),
    pytest.param(b"<a@[IPv6:zz]>", id="ipv6-not-hex"),
    pytest.param(b"<a@[IPv6:]>", id="ipv6-empty"),
    pytest.param(b"<a@[IPv6:1:2:3:4:5:6:7:8:9]>", id="ipv6-nine-groups"),
    pytest.param(b"<a@[IPv6:1::2::3]>", id="ipv6-two-double-colons"),
    pytest.param(b"<a@[IPv6:fe80::1%eth0]>", id="ipv6-zone-index"),
    pytest.param(b"<a@[IPv6:1.2.3.4]>", id="ipv6-only-ipv4"),
    pytest.param(b"<a@[::1]>", id="ipv6-without-tag"),
    pytest.param(b"<a@[]>", id="literal-empty"),
    pytest.param(b"<a@[example]>", id="literal-without-tag"),
    pytest.param(b"<a@[:x]>", id="general-literal-empty-tag"),
    pytest.param(b"<a@[tag:]>", id="general-literal-empty-content"),
    pytest.param(b"<a@[a b]>", id="literal-space"),
    pytest.param(b"<a@[a\\]b]>", id="literal-backslash"),
    pytest.param(b"<a@[1.2.3.4>", id="literal-unterminated"),
    pytest.param(b"<@a:b>", id="source-route-no-domain"),
    pytest.param(b"<@a,b:c@d>", id="source-route-missing-at"),
    pytest.param(b"<@:a@b>", id="source-route-empty-domain"),
    pytest.param(b"<@a,@b,:c@d>", id="source-route-trailing-comma"),
    pytest.param(b"<@a@b>", id="source-route-missing-colon"),
    pytest.param(b"<@[192.0.2.1]:a@b>", id="source-route-literal"),
    pytest.param(b"<\xff@b>", id="utf8-invalid-start-octet"),
    pytest.param(b"<a@b\xc3>", id="utf8-truncated"),
    pytest.param(b"<\xc0\xaf@b>", id="utf8-overlong"),
    pytest.param(b"<\xed\xa0\x80@b>", id="utf8-surrogate"),
    pytest.param(b'<"\x80"@b>', id="utf8-invalid-quoted"),
    pytest.param(b"<@\xff:a@b>", id="utf8-invalid-route"),
    pytest.param(b"<a\x00@b>", id="control-nul-local-part"),
    pytest.param(b"<a@b\x7f>", id="control-del-domain"),
    pytest.param(b'<"a\x00"@b>', id="control-nul-quoted"),
    pytest.param(b'<"a\\\x01"@b>', id="control-in-quoted-pair"),
    pytest.param(b"<a\t@b>", id="control-tab"),
    pytest.param(b"<a@b>x", id="trailing-garbage"),
    pytest.param(b"<a@b>>", id="trailing-bracket"),
    pytest.param(b"<a@b><c@d>", id="two-paths"),
    pytest.param(b"<a@b>\tSIZE=1", id="tab-before-params"),
    pytest.param(b"<a@b>\x00", id="trailing-nul"),
    pytest.param(b"<>x", id="null-path-trailing-garbage"),
    pytest.param(b"a@b>", id="bare-trailing-bracket"),
    pytest.param(b"a@b,c", id="bare-trailing-comma"),
]


@pytest.mark.parametrize(("path_arg", "expected"), VALID_PATHS)
def test_mail_from_valid_path(path_arg: bytes, expected: Path) -> None:
    path, params, quirks = parse_mail_from(b"FROM:" + path_arg)

    assert path == expected
    assert params == {}
    assert quirks == ({"source_route"} if expected.route else set())


@pytest.mark.parametrize(("path_arg", "expected"), VALID_PATHS)
def test_rcpt_to_valid_path(path_arg: bytes, expected: Path) -> None:
    path, params, quirks = parse_rcpt_to(b"TO:" + path_arg)

    assert path == expected
    assert params == {}
    assert quirks == ({"source_route"} if expected.route else set())


@pytest.mark.parametrize("path_arg", INVALID_PATHS)
def test_mail_from_invalid_path(path_arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(b"FROM:" + path_arg)

    assert excinfo.value.reply == MAIL_SYNTAX


@pytest.mark.parametrize("path_arg", INVALID_PATHS)
def test_rcpt_to_invalid_path(path_arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_rcpt_to(b"TO:" + path_arg)

    assert excinfo.value.reply == RCPT_SYNTAX


def test_path_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="invalid IPv4 address literal"):
        parse_mail_from(b"FROM:<a@[300.1.1.1]>")


def test_error_message_escapes_control_octets() -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(b"FROM:<a\x00\x1b[2J@b>")

    message = str(excinfo.value)
    assert "\\x00" in message
    assert "\x00" not in message
    assert "\x1b" not in message


def test_error_message_truncates_long_input() -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(b"FROM:<" + b"x" * 5000)

    assert len(str(excinfo.value)) < 200
    assert "5006 octets" in str(excinfo.value)


# --- MAIL and RCPT prefixes -----------------------------------------------------------------

PREFIX_CASES = [
    pytest.param(b"FROM:<a@b>", id="upper"),
    pytest.param(b"from:<a@b>", id="lower"),
    pytest.param(b"FrOm:<a@b>", id="mixed"),
]


@pytest.mark.parametrize("arg", PREFIX_CASES)
def test_mail_from_prefix_case_insensitive(arg: bytes) -> None:
    path, _, quirks = parse_mail_from(arg)

    assert path.mailbox == "a@b"
    assert quirks == frozenset()


@pytest.mark.parametrize("arg", [b"TO:<a@b>", b"to:<a@b>", b"tO:<a@b>"])
def test_rcpt_to_prefix_case_insensitive(arg: bytes) -> None:
    path, _, quirks = parse_rcpt_to(arg)

    assert path.mailbox == "a@b"
    assert quirks == frozenset()


MISSING_FROM = [
    pytest.param(b"", id="empty"),
    pytest.param(b"<a@b>", id="path-only"),
    pytest.param(b"FROM<a@b>", id="no-colon"),
    pytest.param(b"FROM <a@b>", id="space-instead-of-colon"),
    pytest.param(b"FROM :<a@b>", id="space-before-colon"),
    pytest.param(b" FROM:<a@b>", id="leading-space"),
    pytest.param(b"TO:<a@b>", id="rcpt-prefix"),
    pytest.param(b"FROMM:<a@b>", id="misspelled"),
    pytest.param(b"FROM:", id="empty-path"),
    pytest.param(b"FROM: ", id="empty-path-after-space"),
    pytest.param(b"FROM:   SIZE=10", id="params-without-path"),
]


@pytest.mark.parametrize("arg", MISSING_FROM)
def test_mail_from_missing_prefix_or_path(arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(arg)

    assert excinfo.value.reply == MAIL_SYNTAX


MISSING_TO = [
    pytest.param(b"", id="empty"),
    pytest.param(b"<a@b>", id="path-only"),
    pytest.param(b"TO <a@b>", id="space-instead-of-colon"),
    pytest.param(b"FROM:<a@b>", id="mail-prefix"),
    pytest.param(b"TO:", id="empty-path"),
    pytest.param(b"TO:  ", id="empty-path-after-spaces"),
]


@pytest.mark.parametrize("arg", MISSING_TO)
def test_rcpt_to_missing_prefix_or_path(arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_rcpt_to(arg)

    assert excinfo.value.reply == RCPT_SYNTAX


# --- Null path and Postmaster ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "expected_params", "expected_quirks"),
    [
        pytest.param(b"FROM:<>", {}, set(), id="plain"),
        pytest.param(b"FROM:<> SIZE=100", {"SIZE": "100"}, set(), id="with-param"),
        pytest.param(b"FROM: <>", {}, {"space_after_colon"}, id="space-after-colon"),
    ],
)
def test_mail_from_null_path(
    arg: bytes, expected_params: dict[str, str | None], expected_quirks: set[str]
) -> None:
    path, params, quirks = parse_mail_from(arg)

    assert path == NULL_PATH
    assert params == expected_params
    assert quirks == expected_quirks


@pytest.mark.parametrize("arg", [b"TO:<>", b"TO: <>", b"TO:<> NOTIFY=NEVER"])
def test_rcpt_to_null_path_rejected(arg: bytes) -> None:
    with pytest.raises(PathError, match="null path") as excinfo:
        parse_rcpt_to(arg)

    assert excinfo.value.reply == RCPT_SYNTAX


@pytest.mark.parametrize("name", ["Postmaster", "postmaster", "POSTMASTER", "PostMaster"])
def test_rcpt_to_postmaster_without_domain(name: str) -> None:
    path, params, quirks = parse_rcpt_to(f"TO:<{name}>".encode())

    assert path == Path(raw=name, mailbox=name, route=(), local_part=name, domain="", utf8=False)
    assert params == {}
    assert quirks == frozenset()


def test_rcpt_to_postmaster_with_params_and_quirks() -> None:
    path, params, quirks = parse_rcpt_to(b"TO: Postmaster NOTIFY=NEVER")

    assert path.mailbox == "Postmaster"
    assert path.domain == ""
    assert params == {"NOTIFY": "NEVER"}
    assert quirks == {"space_after_colon", "missing_brackets"}


def test_rcpt_to_postmaster_with_domain() -> None:
    path, _, _ = parse_rcpt_to(b"TO:<Postmaster@example.com>")

    assert path == mailbox_path("Postmaster", "example.com")


@pytest.mark.parametrize(
    "arg",
    [
        pytest.param(b"TO:<Postmasterx>", id="longer-name"),
        pytest.param(b"TO:<Postmaste>", id="shorter-name"),
        pytest.param(b"TO:<@a:Postmaster>", id="source-route"),
        pytest.param(b"TO:<Postmaster>x", id="trailing-garbage"),
        pytest.param(b"TO:Postmasterx", id="bare-longer-name"),
        pytest.param(b"TO:<Postmaster", id="missing-closing-bracket"),
        pytest.param(b"TO:<Postmaster@>", id="empty-domain"),
    ],
)
def test_rcpt_to_postmaster_invalid(arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_rcpt_to(arg)

    assert excinfo.value.reply == RCPT_SYNTAX


def test_mail_from_postmaster_without_domain_rejected() -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(b"FROM:<Postmaster>")

    assert excinfo.value.reply == MAIL_SYNTAX


# --- Quirks ---------------------------------------------------------------------------------

QUIRK_CASES = [
    pytest.param(b"FROM: <a@b>", {"space_after_colon"}, id="space-after-colon"),
    pytest.param(b"FROM:    <a@b>", {"space_after_colon"}, id="spaces-after-colon"),
    pytest.param(b"FROM:a@b", {"missing_brackets"}, id="missing-brackets"),
    pytest.param(b"FROM:a@b SIZE=1", {"missing_brackets"}, id="missing-brackets-params"),
    pytest.param(
        b"FROM: a@b", {"space_after_colon", "missing_brackets"}, id="space-and-no-brackets"
    ),
    pytest.param(b"FROM:<@x:a@b>", {"source_route"}, id="source-route"),
    pytest.param(b"FROM:@x:a@b", {"source_route", "missing_brackets"}, id="bare-source-route"),
    pytest.param(b"FROM: <@x,@y:a@b>", {"space_after_colon", "source_route"}, id="space-and-route"),
]


@pytest.mark.parametrize(("arg", "expected_quirks"), QUIRK_CASES)
def test_mail_from_quirks(arg: bytes, expected_quirks: set[str]) -> None:
    path, _, quirks = parse_mail_from(arg)

    assert path.mailbox == "a@b"
    assert quirks == expected_quirks
    assert isinstance(quirks, frozenset)


@pytest.mark.parametrize(("arg", "expected_quirks"), QUIRK_CASES)
def test_rcpt_to_quirks(arg: bytes, expected_quirks: set[str]) -> None:
    path, _, quirks = parse_rcpt_to(b"TO:" + arg.removeprefix(b"FROM:"))

    assert path.mailbox == "a@b"
    assert quirks == expected_quirks


def test_missing_brackets_quoted_local_part() -> None:
    path, params, quirks = parse_mail_from(b'FROM:"a b"@c SIZE=5')

    assert path == mailbox_path('"a b"', "c")
    assert params == {"SIZE": "5"}
    assert quirks == {"missing_brackets"}


def test_missing_brackets_raw_has_no_brackets() -> None:
    path, _, _ = parse_mail_from(b"FROM:@r:a@b")

    assert path.raw == "@r:a@b"
    assert path.route == ("r",)


# --- ESMTP parameters -----------------------------------------------------------------------

VALID_PARAMS = [
    pytest.param(b"SIZE=10", {"SIZE": "10"}, id="one-with-value"),
    pytest.param(b"SMTPUTF8", {"SMTPUTF8": None}, id="one-without-value"),
    pytest.param(
        b"SIZE=10 BODY=8BITMIME SMTPUTF8",
        {"SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None},
        id="several",
    ),
    pytest.param(
        b"SIZE=10    BODY=8BITMIME   ", {"SIZE": "10", "BODY": "8BITMIME"}, id="multiple-spaces"
    ),
    pytest.param(b"   ", {}, id="only-spaces"),
    pytest.param(b"size=10 body=7bit", {"SIZE": "10", "BODY": "7bit"}, id="keyword-upper-cased"),
    pytest.param(b"X-Foo-1=bar", {"X-FOO-1": "bar"}, id="keyword-hyphen-digit"),
    pytest.param(b"8BIT", {"8BIT": None}, id="keyword-leading-digit"),
    pytest.param(
        b"ENVID=a+2Bb!~<>[]", {"ENVID": "a+2Bb!~<>[]"}, id="value-punctuation-except-equals"
    ),
    pytest.param("X=ü€".encode(), {"X": "ü€"}, id="value-utf8"),
    pytest.param(b"X=\xff\xfe", {"X": "\udcff\udcfe"}, id="value-invalid-utf8-escaped"),
]


@pytest.mark.parametrize(("params_arg", "expected"), VALID_PARAMS)
def test_mail_from_params(params_arg: bytes, expected: dict[str, str | None]) -> None:
    path, params, quirks = parse_mail_from(b"FROM:<a@b> " + params_arg)

    assert path == mailbox_path("a", "b")
    assert params == expected
    assert quirks == frozenset()


@pytest.mark.parametrize(("params_arg", "expected"), VALID_PARAMS)
def test_rcpt_to_params(params_arg: bytes, expected: dict[str, str | None]) -> None:
    _, params, _ = parse_rcpt_to(b"TO:<a@b> " + params_arg)

    assert params == expected


def test_params_unknown_keywords_returned() -> None:
    _, params, _ = parse_mail_from(b"FROM:<a@b> XYZZY=1 FOO")

    assert params == {"XYZZY": "1", "FOO": None}


def test_params_value_kept_as_written() -> None:
    _, params, _ = parse_rcpt_to(b"TO:<a@b> ORCPT=rfc822;Jones+40Example.COM")

    assert params == {"ORCPT": "rfc822;Jones+40Example.COM"}


def test_params_returns_fresh_dict() -> None:
    _, first, _ = parse_mail_from(b"FROM:<a@b>")
    first["SIZE"] = "1"
    _, second, _ = parse_mail_from(b"FROM:<a@b>")

    assert second == {}


INVALID_PARAMS = [
    pytest.param(b"-X=1", id="keyword-leading-hyphen"),
    pytest.param(b"X_Y=1", id="keyword-underscore"),
    pytest.param(b"=1", id="keyword-empty"),
    pytest.param("Ü=1".encode(), id="keyword-non-ascii"),
    pytest.param(b"SIZE=", id="value-empty"),
    pytest.param(b"SIZE==1", id="value-starts-with-equals"),
    pytest.param(b"A=b=c", id="value-contains-equals"),
    pytest.param(b"SIZE=1\x00", id="value-nul"),
    pytest.param(b"SIZE=1\x7f", id="value-del"),
    pytest.param(b"SIZE=1\tBODY=7BIT", id="tab-separator"),
    pytest.param(b"SIZE=1\r\n", id="value-line-ending"),
    pytest.param(b"X\x7f=1", id="keyword-del"),
    pytest.param(b"\x00", id="nul-token"),
    pytest.param(b"SIZE=1 SIZE=2", id="keyword-repeated"),
    pytest.param(b"size=1 SIZE=1", id="keyword-repeated-other-case"),
    pytest.param(b"SIZE=1 -", id="second-invalid"),
]


@pytest.mark.parametrize("params_arg", INVALID_PARAMS)
def test_mail_from_invalid_params(params_arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(b"FROM:<a@b> " + params_arg)

    assert excinfo.value.reply == PARAM_SYNTAX


@pytest.mark.parametrize("params_arg", INVALID_PARAMS)
def test_rcpt_to_invalid_params(params_arg: bytes) -> None:
    with pytest.raises(PathError) as excinfo:
        parse_rcpt_to(b"TO:<a@b> " + params_arg)

    assert excinfo.value.reply == PARAM_SYNTAX


def test_path_error_takes_priority_over_params() -> None:
    with pytest.raises(PathError) as excinfo:
        parse_mail_from(b"FROM:<a..b@c> -X=1")

    assert excinfo.value.reply == MAIL_SYNTAX


# --- Length limits --------------------------------------------------------------------------


def domain_of_length(length: int) -> str:
    """Build a valid domain of exactly `length` octets from 50-octet labels."""
    labels = []
    remaining = length
    while remaining > 51:
        labels.append("d" * 50)
        remaining -= 51
    labels.append("d" * remaining)
    domain = ".".join(labels)
    assert len(domain) == length
    return domain


def test_local_part_at_max_length() -> None:
    local_part = "l" * MAX_LOCAL_PART

    path, _, _ = parse_mail_from(f"FROM:<{local_part}@b>".encode())

    assert path.local_part == local_part


@pytest.mark.parametrize(
    ("parse", "prefix", "expected_reply"),
    [
        pytest.param(parse_mail_from, "FROM:", MAIL_TOO_LONG, id="mail"),
        pytest.param(parse_rcpt_to, "TO:", RCPT_TOO_LONG, id="rcpt"),
    ],
)
def test_local_part_too_long(
    parse: Parser, prefix: str, expected_reply: tuple[int, str, str]
) -> None:
    local_part = "l" * (MAX_LOCAL_PART + 1)

    with pytest.raises(PathError, match="local part is 65 octets") as excinfo:
        parse(f"{prefix}<{local_part}@b>".encode())

    assert excinfo.value.reply == expected_reply


def test_quoted_local_part_length_counts_quotes() -> None:
    local_part = '"' + "q" * (MAX_LOCAL_PART - 1) + '"'

    with pytest.raises(PathError) as excinfo:
        parse_mail_from(f"FROM:<{local_part}@b>".encode())

    assert excinfo.value.reply == MAIL_TOO_LONG


def test_utf8_local_part_length_counts_octets() -> None:
    local_part = "é" * 33

    with pytest.raises(PathError) as excinfo:
        parse_rcpt_to(f"TO:<{local_part}@b>".encode())

    assert excinfo.value.reply == RCPT_TOO_LONG


@pytest.mark.parametrize(
    ("parse", "prefix", "expected_reply"),
    [
        pytest.param(parse_mail_from, "FROM:", MAIL_TOO_LONG, id="mail"),
        pytest.param(parse_rcpt_to, "TO:", RCPT_TOO_LONG, id="rcpt"),
    ],
)
def test_domain_too_long(parse: Parser, prefix: str, expected_reply: tuple[int, str, str]) -> None:
    domain = domain_of_length(MAX_DOMAIN + 1)

    with pytest.raises(PathError, match="domain is 256 octets") as excinfo:
        parse(f"{prefix}<a@{domain}>".encode())

    assert excinfo.value.reply == expected_reply


def test_path_at_max_length() -> None:
    # "<" + 64 + "@" + 189 + ">" is 256 octets.
    local_part = "l" * MAX_LOCAL_PART
    domain = domain_of_length(MAX_PATH - MAX_LOCAL_PART - 3)

    path, _, _ = parse_rcpt_to(f"TO:<{local_part}@{domain}>".encode())

    assert path.domain == domain


@pytest.mark.parametrize(
    "path_text",
    [
        pytest.param("<" + "l" * 64 + "@" + domain_of_length(190) + ">", id="mailbox"),
        pytest.param("l" * 64 + "@" + domain_of_length(190), id="without-brackets"),
        pytest.param(
            "<@" + domain_of_length(100) + ":a@" + domain_of_length(151) + ">", id="route"
        ),
    ],
)
def test_path_too_long(path_text: str) -> None:
    with pytest.raises(PathError, match="path is 257 octets") as excinfo:
        parse_mail_from(f"FROM:{path_text}".encode())

    assert excinfo.value.reply == MAIL_TOO_LONG


# --- Robustness -----------------------------------------------------------------------------

PATHOLOGICAL_ARGS = [
    pytest.param(b"FROM:<" + b"a-" * 50_000 + b">", id="long-atom"),
    pytest.param(b"FROM:<a@" + b"a-" * 50_000 + b"!>", id="long-hyphenated-domain"),
    pytest.param(b"FROM:<a@" + b"a." * 50_000 + b">", id="many-labels"),
    pytest.param(b'FROM:<"' + b"\\a" * 50_000 + b">", id="long-quoted-pairs"),
    pytest.param(b"FROM:<" + b"@a," * 30_000 + b">", id="long-route"),
    pytest.param(b"FROM:<a@[" + b"1:" * 50_000 + b">", id="long-literal"),
    pytest.param(b"FROM:<a@b> " + b"A=1 " * 30_000 + b"-", id="many-params"),
]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("arg", PATHOLOGICAL_ARGS)
def test_pathological_input_fails_fast(arg: bytes) -> None:
    # These 100 KB inputs would hang a pattern with nested quantifiers such as (?:[a-z-]+)*,
    # which backtracks exponentially on a failed match; the timeout turns a hang into a failure.
    with pytest.raises(PathError):
        parse_mail_from(arg)


FUZZ_PIECES = [
    b"<", b">", b"@", b"a", b"Z", b"9", b".", b"-", b'"', b"\\", b"[", b"]", b":", b",", b" ",
    b"=", b"\x00", b"\x7f", b"\xff", b"\xc3\xa9", b"IPv6:", b"::1", b"1.2.3.4", b"postmaster",
]  # fmt: skip


def check_parse_result(parse: Parser, arg: bytes) -> None:
    """Call `parse` and check the invariants of its result or of the PathError it raises."""
    try:
        path, params, quirks = parse(arg)
    except PathError as exc:
        assert exc.reply in ALL_REPLIES
        return

    assert quirks <= ALL_QUIRKS
    assert all(keyword == keyword.upper() for keyword in params)
    assert path.utf8 == (not path.raw.isascii())
    if path.domain:
        assert path.mailbox == f"{path.local_part}@{path.domain}"
        assert path.raw.endswith(path.mailbox)
    if path.route:
        assert path.raw == ",".join("@" + domain for domain in path.route) + ":" + path.mailbox


@given(st.lists(st.sampled_from(FUZZ_PIECES), max_size=40).map(b"".join))
def test_fuzz_pieces_mail(tail: bytes) -> None:
    check_parse_result(parse_mail_from, b"FROM:" + tail)


@given(st.lists(st.sampled_from(FUZZ_PIECES), max_size=40).map(b"".join))
def test_fuzz_pieces_rcpt(tail: bytes) -> None:
    check_parse_result(parse_rcpt_to, b"TO:" + tail)


@given(st.binary(max_size=300))
def test_fuzz_arbitrary_octets(arg: bytes) -> None:
    check_parse_result(parse_mail_from, arg)
    check_parse_result(parse_rcpt_to, arg)
    check_parse_result(parse_mail_from, b"FROM:<" + arg)
    check_parse_result(parse_rcpt_to, b"TO:" + arg)


def test_all_reply_texts_printable_ascii() -> None:
    for code, enhanced, text in ALL_REPLIES:
        assert 500 <= code < 600
        assert text.isascii()
        assert text.isprintable()
        assert enhanced.startswith("5.")
