"""Log formatting: one line per record, with control characters from clients escaped."""

from __future__ import annotations

import json
import logging

from sink.logs import JsonFormatter, TextFormatter


def make_record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("sink.worker", logging.INFO, __file__, 1, message, args, None)


def test_text_escapes_control_characters() -> None:
    line = TextFormatter().format(make_record("HELO %s", "\x1b[2J\x07evil\r\nnext"))
    assert "\x1b" not in line
    assert "\x07" not in line
    assert "\n" not in line
    assert "\r" not in line
    assert "\\x1b[2J\\x07evil" in line


def test_text_names_logger_and_level() -> None:
    line = TextFormatter().format(make_record("worker %d stopped", 3))
    assert " INFO sink.worker[" in line
    assert line.endswith("worker 3 stopped")


def test_json_is_one_object_per_line() -> None:
    line = JsonFormatter().format(make_record("client %s", "a\nb\x1b"))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "client a\nb\x1b"
    assert entry["level"] == "info"
    assert entry["logger"] == "sink.worker"


def test_text_clears_status_line_when_asked() -> None:
    record = make_record("worker %d stopped", 1)
    plain = TextFormatter().format(record)
    clearing = TextFormatter(clear_status_line=True).format(record)
    assert not plain.startswith("\r")
    assert clearing == "\r\x1b[K" + plain
