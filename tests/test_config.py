"""Configuration: sizes, durations, the TOML file, and precedence of the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from sink.config import ConfigError, load, parse_duration, parse_size
from sink.server.listeners import ListenError, parse_address


@pytest.mark.parametrize(
    ("text", "octets"),
    [("1000", 1000), ("64MiB", 64 * 1024**2), ("10M", 10_000_000), ("512k", 512_000),
     ("1.5KiB", 1536), ("2 GiB", 2 * 1024**3), (4096, 4096)],
)  # fmt: skip
def test_parse_size(text: str, octets: int) -> None:
    assert parse_size(text) == octets


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300", 300.0), ("30s", 30.0), ("5m", 300.0), ("250ms", 0.25), ("1h", 3600.0), (2, 2.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "lots", "10 parsecs", "-5", "1e3"])
def test_invalid_size_and_duration(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_size(text)
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_defaults() -> None:
    config = load({})
    assert config.listen == ["127.0.0.1:2525"]
    assert config.spool == "./spool"
    assert config.fsync == "interval"
    assert config.max_message_size == 64 * 1024**2


def test_file_then_command_line(tmp_path: Path) -> None:
    path = tmp_path / "sink.toml"
    path.write_text(
        'listen = ["127.0.0.1:2600", "[::1]:2600"]\nmax-message-size = "1MiB"\n'
        'reject_rcpt = "Green@*"\nfsync = "always"\nspool = false\n'
    )
    config = load({"fsync": "never", "workers": 3}, str(path))
    assert config.listen == ["127.0.0.1:2600", "[::1]:2600"]
    assert config.max_message_size == 1024**2
    assert config.reject_rcpt == ["Green@*"]
    assert config.fsync == "never"
    assert config.workers == 3
    assert config.spool is None
    assert config.config == str(path)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("workers = 'two'\n", "--workers must be a whole number"),
        ("require-helo = 1\n", "--require-helo must be true or false"),
        ("fsync = 'sometimes'\n", "--fsync must be one of never, interval, always"),
        ("max-message-size = 1.5\n", "--max-message-size: invalid size 1.5"),
        ("idle-timeout = true\n", "--idle-timeout: invalid duration True"),
        ("listen = 5\n", "--listen must be a string or a list of strings"),
        ("nonsense = [\n", "cannot read configuration file"),
    ],
)
def test_invalid_file_values(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "sink.toml"
    path.write_text(document)
    with pytest.raises(ConfigError, match=message):
        load({}, str(path))


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("127.0.0.1:2525", "127.0.0.1", 2525), ("[::1]:25", "::1", 25),
     ("localhost:0", "127.0.0.1", 0), (":2525", "127.0.0.1", 2525)],
)  # fmt: skip
def test_parse_address(text: str, host: str, port: int) -> None:
    address = parse_address(text)
    assert (address.host, address.port) == (host, port)


@pytest.mark.parametrize("text", ["2525", "::1:25", "[::1]25", "host:port", "h:70000"])
def test_invalid_address(text: str) -> None:
    with pytest.raises(ListenError):
        parse_address(text)
