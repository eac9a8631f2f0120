"""Server configuration: defaults, a TOML file, and command-line options, in that order.

Every option of `sink serve` has a key of the same name in the TOML file, with dashes or
underscores (`max-message-size` or `max_message_size`). Sizes take a unit (`64MiB`, `10M`,
`512k`) and durations take one too (`300s`, `5m`, `1.5`). A value given on the command line wins
over the file, so a SIGHUP reload re-reads the file but keeps the command-line values.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FSYNC_POLICIES = ("never", "interval", "always")
LINE_ENDING_POLICIES = ("lenient", "strict")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_DURATION_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_QUANTITY = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


MIN_HEARTBEAT_TIMEOUT = 3.0


class ConfigError(ValueError):
    """An option has an invalid value; the message names the option and the value."""


@dataclass
class Config:
    """Every setting of `sink serve`."""

    listen: list[str] = field(default_factory=lambda: ["127.0.0.1:2525"])
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    reuseport: bool = False
    hostname: str | None = None
    max_message_size: int = 64 * 1024**2
    max_recipients: int = 1000
    idle_timeout: float = 300.0
    data_timeout: float = 600.0
    max_sessions: int = 10000
    spool: str | None = "./spool"
    segment_size: int = 256 * 1024**2
    segment_age: float = 300.0
    fsync: str = "interval"
    fsync_interval: float = 1.0
    line_endings: str = "lenient"
    require_helo: bool = False
    reject_rcpt: list[str] = field(default_factory=list)
    log_level: str = "info"
    log_format: str = "text"
    progress: bool | None = None  # None: on when standard output is a terminal
    shutdown_grace: float = 10.0
    heartbeat_timeout: float = 30.0
    metrics_listen: str = "127.0.0.1:9325"  # "" turns the metrics endpoint off
    config: str | None = None

    def validate(self) -> Config:
        """Check values that types alone do not; raise ConfigError naming the option."""
        _check_choice("fsync", self.fsync, FSYNC_POLICIES)
        _check_choice("line-endings", self.line_endings, LINE_ENDING_POLICIES)
        _check_choice("log-format", self.log_format, LOG_FORMATS)
        _check_choice("log-level", self.log_level, LOG_LEVELS)
        for name in ("workers", "max_message_size", "max_recipients", "max_sessions"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_option(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "data_timeout", "segment_age", "fsync_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_option(name)} must be positive, got {getattr(self, name)}")
        if self.heartbeat_timeout < MIN_HEARTBEAT_TIMEOUT:
            raise ConfigError(
                f"--heartbeat-timeout must be at least {MIN_HEARTBEAT_TIMEOUT:.0f}s, because "
                f"workers beat once a second; got {self.heartbeat_timeout}s"
            )
        if self.segment_size < 4096:
            raise ConfigError(
                f"--segment-size must be at least 4096 bytes, got {self.segment_size}"
            )
        if not self.spool:
            self.spool = None
        if not self.listen:
            raise ConfigError("at least one --listen address is required")
        return self


def parse_size(text: str | int) -> int:
    """Parse an octet count such as `1000000`, `64MiB` or `10M`."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"invalid size {text!r}: use a whole number or a string like '10MiB'")
    match = _QUANTITY.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ConfigError(f"invalid size {text!r}: use a number with an optional unit (k, M, MiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | float) -> float:
    """Parse a duration in seconds such as `300`, `30s`, `5m` or `250ms`."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        raise ConfigError(f"invalid duration {text!r}: use a number or a string like '30s'")
    match = _QUANTITY.fullmatch(text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _DURATION_UNITS:
        raise ConfigError(
            f"invalid duration {text!r}: use a number with an optional unit (ms, s, m, h)"
        )
    return float(match.group(1)) * _DURATION_UNITS[unit]


_CONVERTERS: dict[str, Any] = {
    "max_message_size": parse_size,
    "segment_size": parse_size,
    "idle_timeout": parse_duration,
    "data_timeout": parse_duration,
    "segment_age": parse_duration,
    "fsync_interval": parse_duration,
    "shutdown_grace": parse_duration,
    "heartbeat_timeout": parse_duration,
}
_FIELDS = {item.name: item for item in dataclasses.fields(Config)}


def load(overrides: dict[str, Any], config_file: str | None = None) -> Config:
    """Build a Config from the defaults, then `config_file`, then `overrides` (non-None values)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(read_file(config_file))
    values.update({key: value for key, value in overrides.items() if value is not None})
    values["config"] = config_file
    return Config(**{key: _convert(key, value) for key, value in values.items()}).validate()


def read_file(path: str) -> dict[str, Any]:
    """Read a TOML configuration file into option names; raise ConfigError on any problem."""
    try:
        with Path(path).open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read configuration file {path}: {error}") from None

    values: dict[str, Any] = {}
    for key, value in document.items():
        name = key.replace("-", "_")
        if name not in _FIELDS or name == "config":
            raise ConfigError(f"{path}: unknown option {key!r}")
        if name == "spool" and value is False:
            value = None
        values[name] = value
    return values


def _convert(name: str, value: Any) -> Any:
    converter = _CONVERTERS.get(name)
    if converter is not None:
        try:
            return converter(value)
        except ConfigError as error:
            raise ConfigError(f"{_option(name)}: {error}") from None
    expected = _FIELDS[name].type
    if name in ("listen", "reject_rcpt"):
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{_option(name)} must be a string or a list of strings")
        return list(value)
    if expected == "int" and (not isinstance(value, int) or isinstance(value, bool)):
        raise ConfigError(f"{_option(name)} must be a whole number, got {value!r}")
    if expected == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{_option(name)} must be true or false, got {value!r}")
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"--{name} must be one of {', '.join(choices)}, got {value!r}")


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")
