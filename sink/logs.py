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


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return _escape(super().formatMessage(record)).replace("\n", "\\n")


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


def configure(level: str = "info", log_format: str = "text") -> None:
    """Send the `sink` loggers to standard error at `level` in `log_format`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("sink")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
