"""In-memory transcripts for the SMTP state machine: replies and stored bytes, no sockets."""

from __future__ import annotations

import pytest
from support import MemoryStore, codes, new_session

from sink.smtp.session import State


def test_greeting_names_host() -> None:
    driver, _ = new_session()
    assert driver.session.greeting() == b"220 sink.test ESMTP sink\r\n"


# --- the reference scenarios ----------------------------------------------------------------


def test_scenario_unknown_recipient() -> None:
    driver, store = new_session(reject_recipients=["Green@BBN-UNIX.ARPA"])
    steps = [
        (b"HELO USC-ISIF.ARPA\r\n", [250]),
        (b"MAIL FROM:<Smith@USC-ISIF.ARPA>\r\n", [250]),
        (b"RCPT TO:<Jones@BBN-UNIX.ARPA>\r\n", [250]),
        (b"RCPT TO:<Green@BBN-UNIX.ARPA>\r\n", [550]),
        (b"RCPT TO:<Brown@BBN-UNIX.ARPA>\r\n", [250]),
        (b"DATA\r\n", [354]),
        (b"Blah blah blah...\r\n....etc. etc. etc.\r\n.\r\n", [250]),
        (b"QUIT\r\n", [221]),
    ]
    for command, expected in steps:
        replies = driver.send(command)
        assert codes(replies) == expected, (command, replies)
        if expected == [550]:
            assert b" 5.1.1 " in replies
    assert driver.session.closing

    [message] = store.messages
    assert message.content == b"Blah blah blah...\r\n...etc. etc. etc.\r\n"
    assert message.envelope["reverse_path"]["mailbox"] == "Smith@USC-ISIF.ARPA"
    recipients = [path["mailbox"] for path in message.envelope["forward_paths"]]
    assert recipients == ["Jones@BBN-UNIX.ARPA", "Brown@BBN-UNIX.ARPA"]
    assert message.envelope["protocol"] == "SMTP"
    assert message.envelope["helo"] == "USC-ISIF.ARPA"


RELAYED_BODY = (
    b"Date: 2 Nov 81 22:33:44\r\n"
    b"From: John Q. Public <JQP@MIT-AI.ARPA>\r\n"
    b"Subject:  The Next Meeting of the Board\r\n"
    b"To: Jones@BBN-Vax.ARPA\r\n"
    b"\r\n"
    b"Bill:\r\n"
    b"The next meeting of the board of directors will be\r\n"
    b"on Tuesday.\r\n"
    b"                                             John.\r\n"
)


def test_scenario_source_route() -> None:
    driver, store = new_session()
    first = (
        b"HELO MIT-AI.ARPA\r\nMAIL FROM:<JQP@MIT-AI.ARPA>\r\n"
        b"RCPT TO:<@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA>\r\nDATA\r\n"
    )
    assert codes(driver.send(first)) == [250, 250, 250, 354]
    assert codes(driver.send(RELAYED_BODY + b".\r\nQUIT\r\n")) == [250, 221]

    relay, _ = new_session(store)
    second = (
        b"HELO USC-ISIE.ARPA\r\nMAIL FROM:<@USC-ISIE.ARPA:JQP@MIT-AI.ARPA>\r\n"
        b"RCPT TO:<Jones@BBN-VAX.ARPA>\r\nDATA\r\n"
    )
    received = b"Received: from MIT-AI.ARPA by USC-ISIE.ARPA ; 2 Nov 81 22:40:10 UT\r\n"
    assert codes(relay.send(second)) == [250, 250, 250, 354]
    assert codes(relay.send(received + RELAYED_BODY + b".\r\nQUIT\r\n")) == [250, 221]

    origin, relayed = store.messages
    assert origin.content == RELAYED_BODY
    [forward] = origin.envelope["forward_paths"]
    assert forward["raw"] == "@USC-ISIE.ARPA:Jones@BBN-VAX.ARPA"
    assert forward["mailbox"] == "Jones@BBN-VAX.ARPA"
    assert forward["route"] == ["USC-ISIE.ARPA"]
    assert relayed.content == received + RELAYED_BODY
    assert relayed.envelope["reverse_path"]["raw"] == "@USC-ISIE.ARPA:JQP@MIT-AI.ARPA"
    assert relayed.envelope["reverse_path"]["mailbox"] == "JQP@MIT-AI.ARPA"
    assert relayed.meta["quirks"]["source_route"] == 1


def test_scenario_null_sender_without_helo() -> None:
    driver, store = new_session()
    replies = driver.send(b"MAIL FROM:<>\r\nRCPT TO:<kon@example.org>\r\nDATA\r\n")
    assert codes(replies) == [250, 250, 354]
    replies = driver.send(b"Subject: test6\r\n\r\nFrom: kon\r\ntest6\r\n.\r\n")
    assert codes(replies) == [250]

    [message] = store.messages
    assert message.content == b"Subject: test6\r\n\r\nFrom: kon\r\ntest6\r\n"
    assert message.envelope["reverse_path"]["raw"] == ""
    assert message.envelope["reverse_path"]["mailbox"] == ""
    assert message.envelope["helo"] is None
    assert message.envelope["protocol"] is None
    assert message.meta["quirks"]["no_helo"] == 1
    assert message.meta["quirks"]["null_sender"] == 1


def test_require_helo_refuses_mail() -> None:
    driver, store = new_session(require_helo=True)
    assert codes(driver.send(b"MAIL FROM:<>\r\n")) == [503]
    assert codes(driver.send(b"EHLO client\r\nMAIL FROM:<>\r\n")) == [250, 250]
    assert store.messages == []


# --- commands -------------------------------------------------------------------------------


def test_ehlo_advertises_extensions() -> None:
    driver, _ = new_session(max_message_size=1000)
    replies = driver.send(b"EHLO client.example\r\n")
    lines = replies.split(b"\r\n")[:-1]
    assert lines[0] == b"250-sink.test"
    keywords = {line[4:] for line in lines[1:]}
    assert keywords == {
        b"PIPELINING",
        b"SIZE 1000",
        b"8BITMIME",
        b"SMTPUTF8",
        b"ENHANCEDSTATUSCODES",
        b"CHUNKING",
    }
    assert lines[-1].startswith(b"250 ")
    assert all(line.startswith(b"250-") for line in lines[:-1])


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (b"NOOP", 250),
        (b"NOOP anything", 250),
        (b"RSET", 250),
        (b"RSET now", 501),
        (b"VRFY someone", 252),
        (b"VRFY", 501),
        (b"HELP", 214),
        (b"HELO", 501),
        (b"EHLO", 501),
        (b"STARTTLS", 502),
        (b"AUTH PLAIN", 502),
        (b"EXPN list", 502),
        (b"FROB", 500),
        (b"", 500),
        (b"RCPT TO:<a@b>", 503),
        (b"DATA", 503),
        (b"DATA now", 503),
        (b"BDAT 10 LAST MORE", 501),
        (b"BDAT ten", 501),
        (b"BDAT -1", 501),
        (b"MAIL FROM:<a@b> FOO=1", 555),
        (b"MAIL FROM:<a@b> BODY=BINARYMIME", 501),
        (b"MAIL FROM:<a@b> SIZE=abc", 501),
        (b"MAIL FROM:<a@b> SMTPUTF8=yes", 501),
        (b"MAIL FROM:<a@b> BODY=8BITMIME SIZE=10 SMTPUTF8", 250),
        (b"MAIL FROM:<a@b c>", 501),
        (b"MAIL FROM:<a@@b>", 501),
        (b"MAIL TO:<a@b>", 501),
    ],
)
def test_single_command_reply(command: bytes, code: int) -> None:
    driver, _ = new_session()
    driver.send(b"EHLO client\r\n")
    assert codes(driver.send(command + b"\r\n")) == [code]


def test_enhanced_codes_on_every_reply() -> None:
    driver, _ = new_session(reject_recipients=["no@*"])
    script = (
        b"EHLO c\r\nNOOP\r\nFROB\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\nRCPT TO:<no@b>\r\n"
        b"RCPT TO:<yes@b>\r\nDATA\r\nx\r\n.\r\nRSET\r\nQUIT\r\n"
    )
    replies = driver.send(script)
    final_lines = [line for line in replies.split(b"\r\n") if line[3:4] == b" "]
    assert len(final_lines) == 11
    # RFC 2034 puts an enhanced code on every reply but the EHLO reply and 354.
    for line in final_lines[1:]:
        if line.startswith(b"354 "):
            continue
        enhanced = line.split(b" ")[1]
        assert enhanced[:1] == line[:1], line
        assert enhanced.count(b".") == 2, line


def test_lowercase_verbs_accepted_and_counted() -> None:
    driver, store = new_session()
    replies = driver.send(
        b"ehlo c\r\nmail from:<a@b>\r\nrcpt to:<c@d>\r\ndata\r\nhi\r\n.\r\nquit\r\n"
    )
    assert codes(replies)[1:] == [250, 250, 354, 250, 221]
    assert store.messages[0].meta["quirks"]["lowercase_verb"] == 4


def test_space_after_colon_counted() -> None:
    driver, store = new_session()
    driver.send(b"EHLO c\r\nMAIL FROM: <a@b>\r\nRCPT TO: <c@d>\r\nDATA\r\nx\r\n.\r\n")
    assert store.messages[0].meta["quirks"]["space_after_colon"] == 2


def test_nested_mail_refused() -> None:
    driver, _ = new_session()
    assert codes(driver.send(b"HELO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n")) == [
        250,
        250,
        503,
    ]


def test_data_without_valid_recipient() -> None:
    driver, store = new_session(reject_recipients=["*"])
    replies = driver.send(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n")
    assert codes(replies) == [250, 250, 550, 554]
    assert store.messages == []


def test_too_many_recipients() -> None:
    driver, store = new_session(max_recipients=2)
    script = b"HELO c\r\nMAIL FROM:<a@b>\r\n" + b"".join(
        b"RCPT TO:<r%d@b>\r\n" % index for index in range(3)
    )
    assert codes(driver.send(script)) == [250, 250, 250, 250, 452]
    assert b"452 4.5.3" in driver.send(b"RCPT TO:<r9@b>\r\n")


def test_rset_clears_transaction() -> None:
    driver, store = new_session()
    replies = driver.send(b"HELO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRSET\r\nDATA\r\n")
    assert codes(replies) == [250, 250, 250, 250, 503]


def test_size_parameter_over_limit() -> None:
    driver, _ = new_session(max_message_size=100)
    replies = driver.send(b"EHLO c\r\nMAIL FROM:<a@b> SIZE=101\r\nMAIL FROM:<a@b> SIZE=100\r\n")
    assert codes(replies) == [250, 552, 250]


def test_rcpt_parameters_refused() -> None:
    driver, _ = new_session()
    replies = driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d> NOTIFY=NEVER\r\n")
    assert codes(replies) == [250, 250, 555]


def test_null_path_refused_for_rcpt() -> None:
    driver, _ = new_session()
    assert codes(driver.send(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<>\r\n")) == [250, 250, 501]


def test_utf8_address_needs_option_in_strict_mode() -> None:
    mailbox = "用户@例子.广告".encode()
    driver, store = new_session(strict_line_endings=True)
    replies = driver.send(b"EHLO c\r\nMAIL FROM:<" + mailbox + b">\r\n")
    assert codes(replies) == [250, 553]

    driver, store = new_session()
    replies = driver.send(
        b"EHLO c\r\nMAIL FROM:<" + mailbox + b"> SMTPUTF8\r\nRCPT TO:<" + mailbox + b">\r\n"
        b"DATA\r\nx\r\n.\r\n"
    )
    assert codes(replies) == [250, 250, 250, 354, 250]
    assert store.messages[0].envelope["reverse_path"]["mailbox"] == mailbox.decode()
    assert store.messages[0].envelope["protocol"] == "UTF8SMTP"


def test_long_command_line() -> None:
    driver, store = new_session()
    long_line = b"NOOP " + b"x" * 600 + b"\r\n"
    assert codes(driver.send(b"HELO c\r\n" + long_line + b"NOOP\r\n")) == [250, 500, 250]
    # Longer than the receive buffer holds before a line end: discarded, then answered once.
    assert codes(driver.send(b"NOOP " + b"y" * 100_000 + b"\r\nNOOP\r\n")) == [500, 250]
    driver.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\n")
    assert store.messages[0].meta["quirks"]["long_line"] == 2


def test_command_line_of_512_octets_accepted() -> None:
    driver, _ = new_session()
    line = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(line) == 512
    assert codes(driver.send(line)) == [250]


def test_bare_lf_command_lenient_and_strict() -> None:
    driver, _ = new_session()
    assert codes(driver.send(b"HELO c\nNOOP\n")) == [250, 250]
    assert driver.session.quirks == {"bare_lf_command": 2, "pipelining_not_offered": 1}

    driver, _ = new_session(strict_line_endings=True)
    assert codes(driver.send(b"HELO c\n")) == [500]


def test_too_many_errors_closes() -> None:
    driver, _ = new_session(max_errors=3)
    replies = driver.send(b"FROB\r\nFROB\r\nFROB\r\nNOOP\r\n")
    assert codes(replies) == [500, 500, 500, 421]
    assert driver.session.closing


def test_quit_stops_reading() -> None:
    driver, _ = new_session()
    assert codes(driver.send(b"QUIT\r\nNOOP\r\n")) == [221]
    assert driver.session.state is State.CLOSED


def test_control_bytes_never_echoed() -> None:
    driver, _ = new_session()
    replies = driver.send(b"HELO \x1b[31mevil\x07\r\nMAIL FROM:<\x1b@b> X\x00=1\r\nFROB\x1b\r\n")
    for octet in replies:
        assert octet in (0x0D, 0x0A) or 0x20 <= octet <= 0x7E


# --- pipelining -----------------------------------------------------------------------------


def test_pipelined_transaction_in_one_read() -> None:
    driver, store = new_session()
    script = (
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nDATA\r\n"
        b"body\r\n.\r\nMAIL FROM:<g@h>\r\nRCPT TO:<i@j>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n"
    )
    assert codes(driver.send(script)) == [250, 250, 250, 250, 354, 250, 250, 250, 354, 250, 221]
    assert [message.content for message in store.messages] == [b"body\r\n", b"second\r\n"]
    assert driver.session.quirks == {"pipelining_after_data": 2}


def test_pipelining_without_ehlo_counted() -> None:
    driver, _ = new_session()
    driver.send(b"HELO c\r\nNOOP\r\nNOOP\r\n")
    assert driver.session.quirks == {"pipelining_not_offered": 1}


# --- DATA -----------------------------------------------------------------------------------


def _data_session(**policy: object) -> tuple:
    driver, store = new_session(**policy)
    assert codes(driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"))[-1] == 354
    return driver, store


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..x\r\n.\r\n", b".x\r\n"),
        (b".x\r\n.\r\n", b"x\r\n"),
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n..\r\n...\r\n.\r\n", b"a\r\n.\r\n..\r\n"),
        (b"a\n.\nb\r\n.\r\n", b"a\n.\nb\r\n"),
        (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),
        (b"a\n.\r\nb\r\n.\r\n", b"a\n.\r\nb\r\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\nb\r\n"),
        (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\rb\r\n"),
        (b"nul\x00 and \xff\xfe 8-bit\r\n.\r\n", b"nul\x00 and \xff\xfe 8-bit\r\n"),
        (b"no final line end.\r\n.\r\n", b"no final line end.\r\n"),
    ],
)
def test_dot_unstuffing_and_end(wire: bytes, content: bytes) -> None:
    driver, store = _data_session()
    assert codes(driver.send(wire)) == [250]
    assert store.messages[0].content == content
    assert store.messages[0].meta["size"] == len(content)


def test_bare_line_ends_counted_and_never_end_data() -> None:
    driver, store = _data_session()
    # The classic smuggling attempt: a bare LF before the dot must not end the message.
    smuggled = b"first\n.\nMAIL FROM:<evil@x>\r\n"
    assert driver.send(smuggled) == b""
    assert codes(driver.send(b"\r.\r\n.\r\n")) == [250]
    [message] = store.messages
    assert message.content == smuggled + b"\r.\r\n"
    assert message.meta["bare_lf"] == 2
    assert message.meta["bare_cr"] == 1
    assert message.meta["quirks"]["bare_lf"] == 1
    assert message.meta["quirks"]["bare_cr"] == 1


def test_strict_line_endings_refuse_after_end() -> None:
    driver, store = _data_session(strict_line_endings=True)
    replies = driver.send(b"bare\nline\r\n.\r\nNOOP\r\n")
    assert codes(replies) == [550, 250]
    assert store.messages == []
    assert store.aborted == 1


def test_oversized_message_read_to_end_then_refused() -> None:
    driver, store = _data_session(max_message_size=10)
    assert driver.send(b"0123456789\r\n" * 100) == b""
    assert codes(driver.send(b".\r\nMAIL FROM:<a@b>\r\n")) == [552, 250]
    assert store.messages == []
    assert store.aborted == 1


def test_message_of_exactly_max_size() -> None:
    driver, store = _data_session(max_message_size=12)
    assert codes(driver.send(b"0123456789\r\n.\r\n")) == [250]
    assert store.messages[0].meta["size"] == 12


def test_disconnect_mid_message_stores_nothing() -> None:
    driver, store = _data_session()
    driver.send(b"partial content\r\n")
    driver.session.connection_lost()
    assert store.messages == []
    assert store.aborted == 1


def test_store_failure_gives_451_and_session_goes_on() -> None:
    store = MemoryStore(fail_after=0)
    driver, _ = new_session(store)
    driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n")
    assert codes(driver.send(b"content\r\n.\r\n")) == [451]
    store.fail_after = None
    replies = driver.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nok\r\n.\r\n")
    assert codes(replies) == [250, 250, 354, 250]
    assert [message.content for message in store.messages] == [b"ok\r\n"]


def test_end_marker_split_at_every_offset() -> None:
    wire = b"line one\r\n..dotted\r\n.\r\nNOOP\r\n"
    for cut in range(1, len(wire)):
        driver, store = _data_session()
        replies = driver.send_split(wire, [cut])
        assert codes(replies) == [250, 250], cut
        assert store.messages[0].content == b"line one\r\n.dotted\r\n", cut


def test_message_larger_than_receive_buffer() -> None:
    driver, store = _data_session()
    body = b"".join(b"%07d .. line of text\r\n" % index for index in range(20_000))
    assert codes(driver.send(body + b".\r\n")) == [250]
    assert store.messages[0].content == body


# --- BDAT -----------------------------------------------------------------------------------


def test_bdat_chunks_stored_as_sent() -> None:
    driver, store = new_session()
    first = b"a\r\n.\r\nb\n"
    last = b"\x00.\r\n"
    replies = driver.send(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT %d\r\n" % len(first)
        + first
        + b"BDAT %d LAST\r\n" % len(last)
        + last
        + b"QUIT\r\n"
    )
    assert codes(replies) == [250, 250, 250, 250, 250, 221]
    assert b"250 2.0.0 Ok: %d octets received" % len(first) in replies
    assert store.messages[0].content == first + last
    assert store.messages[0].meta["size"] == len(first + last)


def test_bdat_zero_last() -> None:
    driver, store = new_session()
    replies = driver.send(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 3\r\nabcBDAT 0 LAST\r\n"
    )
    assert codes(replies) == [250, 250, 250, 250, 250]
    assert store.messages[0].content == b"abc"


def test_bdat_empty_message() -> None:
    driver, store = new_session()
    replies = driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 0 LAST\r\n")
    assert codes(replies)[-1] == 250
    assert store.messages[0].content == b""


def test_bdat_refused_still_consumes_chunk() -> None:
    driver, store = new_session()
    replies = driver.send(b"EHLO c\r\nBDAT 11 LAST\r\nNOOP NOOP\r\nNOOP\r\n")
    assert codes(replies) == [250, 503, 250]
    assert store.messages == []


def test_bdat_split_across_reads() -> None:
    chunk = b"0123456789" * 30
    wire = b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n"
    for cut in range(1, len(wire), 7):
        driver, store = new_session()
        driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n")
        assert codes(driver.send_split(wire, [cut, cut + 3])) == [250, 250], cut
        assert store.messages[0].content == chunk


def test_bdat_over_size_refused() -> None:
    driver, store = new_session(max_message_size=5)
    replies = driver.send(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 6 LAST\r\n123456NOOP\r\n"
    )
    assert codes(replies) == [250, 250, 250, 552, 250]
    assert store.messages == []


def test_data_after_bdat_refused() -> None:
    driver, _ = new_session()
    replies = driver.send(b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 1\r\nxDATA\r\n")
    assert codes(replies) == [250, 250, 250, 250, 503]
