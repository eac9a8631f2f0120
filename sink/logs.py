"""Logging set-up: text or JSON lines on standard error, with client bytes made safe.

Loggers are named by component (`sink.master`, `sink.worker`, `sink.spool`). Anything a client
sent may end up in a message, so the formatters escape control characters: a log line is always
one line, and a client can never write terminal escapes into it.
"""

from __future__ import annotations

import logging
import re
import sys

import orjson

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


# Carriage return and "erase line": a log line then replaces the status line that `sink serve`
# rewrites on the terminal, instead of being appended to it.
CLEAR_STATUS_LINE = "\r\x1b[K"


class TextFormatter(logging.Formatter):
    def __init__(self, clear_status_line: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
        self.prefix = CLEAR_STATUS_LINE if clear_status_line else ""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return self.prefix + _escape(super().formatMessage(record)).replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, pid, message and exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str = "info", log_format: str = "text", status_line: bool = False) -> None:
    """Send the `sink` loggers to standard error at `level` in `log_format`.

    With `status_line`, text lines first erase the status line when standard error is a
    terminal too, so the two never run together.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(clear_status_line=status_line and sys.stderr.isatty()))
    root = logging.getLogger("sink")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
