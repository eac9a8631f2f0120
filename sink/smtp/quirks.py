"""Names of the client quirks: deviations from RFC 5321 that the sink accepts and counts.

A session keeps a count per name. The metrics and the spool use these exact strings, so they are
part of the public interface: add names, never rename them.
"""

NO_HELO = "no_helo"  # MAIL before any HELO or EHLO
NULL_SENDER = "null_sender"  # MAIL FROM:<>
SPACE_AFTER_COLON = "space_after_colon"  # MAIL FROM: <a@b>
MISSING_BRACKETS = "missing_brackets"  # MAIL FROM:a@b
SOURCE_ROUTE = "source_route"  # <@relay:user@host>
LOWERCASE_VERB = "lowercase_verb"  # mail from:<a@b>
BARE_LF_COMMAND = "bare_lf_command"  # a command line ended by LF without CR
LONG_LINE = "long_line"  # a command line over 512 octets
BARE_LF = "bare_lf"  # LF without CR in message content
BARE_CR = "bare_cr"  # CR without LF in message content
PIPELINING_AFTER_DATA = "pipelining_after_data"  # octets sent after DATA before the 354 reply
PIPELINING_NOT_OFFERED = "pipelining_not_offered"  # commands batched in a session that used HELO
UTF8_WITHOUT_SMTPUTF8 = "utf8_without_smtputf8"  # a non-ASCII address without the SMTPUTF8 option
UNKNOWN_COMMAND = "unknown_command"  # a verb the sink does not know
EMPTY_LINE = "empty_line"  # an empty command line

ALL = (
    NO_HELO,
    NULL_SENDER,
    SPACE_AFTER_COLON,
    MISSING_BRACKETS,
    SOURCE_ROUTE,
    LOWERCASE_VERB,
    BARE_LF_COMMAND,
    LONG_LINE,
    BARE_LF,
    BARE_CR,
    PIPELINING_AFTER_DATA,
    PIPELINING_NOT_OFFERED,
    UTF8_WITHOUT_SMTPUTF8,
    UNKNOWN_COMMAND,
    EMPTY_LINE,
)
