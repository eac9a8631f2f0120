"""Messages and size distributions of the load generator (loadtest/messages.py)."""

from __future__ import annotations

import email
import email.policy
import random
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The installed package is only `sink`; loadtest/ is imported from the checkout.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from loadtest.messages import (  # noqa: E402
    SizeDistribution,
    build_message,
    min_size,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("1k", 1000),
        ("10K", 10_000),
        ("1m", 1_000_000),
        ("2MB", 2_000_000),
        ("64KiB", 65_536),
        ("1MiB", 1_048_576),
        ("1.5k", 1500),
    ],
)
def test_parse_size_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "-1k", "0", "10 parsecs", "1e3"])
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)


def test_distribution_fixed_size() -> None:
    distribution = SizeDistribution.parse("1024")
    assert distribution.sizes == (1024,)
    assert distribution.choose(random.Random(1)) == 1024


def test_distribution_weights_followed() -> None:
    distribution = SizeDistribution.parse("1k:50,10k:30,100k:15,1m:5")
    assert distribution.sizes == (1000, 10_000, 100_000, 1_000_000)
    assert distribution.weights == (50, 30, 15, 5)

    rng = random.Random(7)
    draws = [distribution.choose(rng) for _ in range(20_000)]
    shares = {size: draws.count(size) / len(draws) for size in distribution.sizes}
    assert shares[1000] == pytest.approx(0.50, abs=0.02)
    assert shares[10_000] == pytest.approx(0.30, abs=0.02)
    assert shares[100_000] == pytest.approx(0.15, abs=0.02)
    assert shares[1_000_000] == pytest.approx(0.05, abs=0.02)


@pytest.mark.parametrize("text", ["1k:x", "1k:-1", "1k:0", "1k,,2k", "1k:50,bogus:5"])
def test_distribution_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        SizeDistribution.parse(text)


@pytest.mark.parametrize(
    "size", [min_size(), 600, 1000, 1024, 1500, 3000, 10_000, 65_536, 100_000, 1_000_000]
)
def test_message_exact_size(size: int) -> None:
    message = build_message(size)
    assert len(message) == size


def test_message_below_minimum_gets_minimum() -> None:
    assert len(build_message(10)) == min_size()


@pytest.mark.parametrize("size", [1000, 5000, 100_000])
def test_message_is_valid_mime(size: int) -> None:
    message = build_message(size)

    assert message.count(b"\n") == message.count(b"\r\n"), "every line ends in CRLF"
    assert b"\r\n." not in message, "no line starts with a dot"
    assert not message.startswith(b".")
    assert max(len(line) for line in message.split(b"\r\n")) <= 998

    parsed = email.message_from_bytes(message, policy=email.policy.SMTP)
    assert parsed["Message-ID"]
    assert parsed["Subject"]
    parts = [part.get_content_type() for part in parsed.walk()]
    if size >= 5000:
        assert "text/plain" in parts
        assert "text/html" in parts
    else:
        assert parts == ["text/plain"]
    if size >= 100_000:
        assert "application/octet-stream" in parts


def test_message_cached_per_size() -> None:
    assert build_message(4096) is build_message(4096)
