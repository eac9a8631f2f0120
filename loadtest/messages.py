"""Realistic MIME messages of a chosen size, and size distributions to draw them from.

A message has the usual headers, a multipart/alternative body with a text and an HTML part,
and, when the target size leaves room, a base64 attachment that pads it. The text part then
takes the last few octets, so a built message is exactly the target size whenever the target
is at least `min_size()`. Targets too small for the two parts get a single text/plain part.
Lines end in CRLF and no line starts with a dot, so the stored message equals the built one
byte for byte.
"""

from __future__ import annotations

import base64
import functools
import random
import re
import textwrap
from dataclasses import dataclass

WORDS = (
    "invoice quarterly report meeting agenda schedule review budget forecast project status "
    "update delivery shipment order customer account balance payment reminder contract draft "
    "proposal summary attached please find below regards thanks team office calendar notes "
    "release version server network storage backup migration ticket request approval"
).split()

BOUNDARY_ALTERNATIVE = "=_alternative_5f3c9a1e"
BOUNDARY_MIXED = "=_mixed_8d2b7e40"
LINE_WIDTH = 72
BASE64_LINE = 76
# A target that leaves more than this many octets after the text and HTML parts gets an
# attachment. Below that, the text part alone takes the padding.
ATTACHMENT_THRESHOLD = 2048

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    """Parse a size in octets: `1024`, `10k`, `1m` (powers of 1000) or `64KiB` (of 1024)."""
    match = _SIZE.match(text)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {text!r}: expected a number with k, m, g, KiB or MiB")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: it must be positive")
    return size


@dataclass(frozen=True)
class SizeDistribution:
    """Message sizes in octets with their relative weights."""

    sizes: tuple[int, ...]
    weights: tuple[float, ...]

    @classmethod
    def parse(cls, text: str) -> SizeDistribution:
        """Parse `1024` (one fixed size) or `1k:50,10k:30,100k:15,1m:5` (size:weight pairs)."""
        sizes: list[int] = []
        weights: list[float] = []
        for item in text.split(","):
            if not item.strip():
                raise ValueError(f"invalid size distribution {text!r}: empty item")
            size_text, colon, weight_text = item.partition(":")
            weight = 1.0
            if colon:
                try:
                    weight = float(weight_text)
                except ValueError:
                    raise ValueError(
                        f"invalid weight {weight_text!r} in size distribution {text!r}"
                    ) from None
                if weight < 0:
                    raise ValueError(f"invalid weight {weight_text!r}: it must not be negative")
            sizes.append(parse_size(size_text))
            weights.append(weight)
        if sum(weights) <= 0:
            raise ValueError(f"invalid size distribution {text!r}: the weights sum to zero")
        return cls(tuple(sizes), tuple(weights))

    def choose(self, rng: random.Random) -> int:
        return rng.choices(self.sizes, self.weights)[0]

    def __str__(self) -> str:
        return ",".join(
            f"{size}:{weight:g}" for size, weight in zip(self.sizes, self.weights, strict=True)
        )


def _filler(length: int, rng: random.Random) -> str:
    """Return exactly `length` (at least 3) characters of words in CRLF-ended lines."""
    lines: list[str] = []
    remaining = length
    while remaining > 0:
        width = min(LINE_WIDTH, remaining - 2)
        # A line needs one character before its CRLF, so never leave 1 or 2 octets over.
        if 0 < remaining - width - 2 < 3:
            width -= 3
        words: list[str] = []
        used = 0
        while True:
            word = rng.choice(WORDS)
            extra = len(word) + (1 if words else 0)
            if used + extra > width:
                break
            words.append(word)
            used += extra
        lines.append(" ".join(words).ljust(width) + "\r\n")
        remaining -= width + 2
    return "".join(lines)


def _paragraphs(rng: random.Random) -> list[str]:
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 20))) for _ in range(3)]


def _headers(size: int, subject: str) -> str:
    return (
        "From: Load Test <sender@example.com>\r\n"
        "To: Sink <recipient@example.net>\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 06 Jan 2025 09:30:00 +0000\r\n"
        f"Message-ID: <load-{size:012d}@loadtest.example.com>\r\n"
        "MIME-Version: 1.0\r\n"
    )


def _text(paragraphs: list[str], padding: int, size: int) -> str:
    """Return the text part: the paragraphs wrapped at 72 columns, then `padding` octets."""
    text = "\r\n\r\n".join(
        textwrap.fill(paragraph, LINE_WIDTH).replace("\n", "\r\n") for paragraph in paragraphs
    )
    text += "\r\n"
    if padding >= 5:
        text += "\r\n" + _filler(padding - 2, random.Random(size))
    elif padding > 0:
        # Too short for a line of its own: trailing spaces on the last line.
        text = text[:-2] + " " * padding + "\r\n"
    return text


def _assemble(size: int, text_padding: int, attachment_octets: int, alternative: bool) -> bytes:
    """Build the message for `size` with the given padding; the same arguments give the same bytes.

    Without `alternative` the message is a single text/plain part with one paragraph, which
    is what targets smaller than the multipart skeleton get.
    """
    # A fixed seed, so that every size shares the same skeleton and only the padding differs.
    rng = random.Random(0)
    paragraphs = _paragraphs(rng)
    subject = " ".join(rng.choice(WORDS) for _ in range(5))
    headers = _headers(size, subject)
    if not alternative:
        body = (
            "Content-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 7bit\r\n"
            "\r\n"
            f"{_text(paragraphs[:1], text_padding, size)}"
        )
        return (headers + body).encode()

    html = "".join(f"<p>{paragraph}</p>\r\n" for paragraph in paragraphs)
    html = f"<html>\r\n<body>\r\n{html}</body>\r\n</html>\r\n"
    alternative_part = (
        f"--{BOUNDARY_ALTERNATIVE}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        f"{_text(paragraphs, text_padding, size)}"
        f"--{BOUNDARY_ALTERNATIVE}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        f"{html}"
        f"--{BOUNDARY_ALTERNATIVE}--\r\n"
    )
    if attachment_octets <= 0:
        body = (
            f'Content-Type: multipart/alternative; boundary="{BOUNDARY_ALTERNATIVE}"\r\n'
            "\r\n"
            f"{alternative_part}"
        )
        return (headers + body).encode()

    payload = base64.b64encode(random.Random(size).randbytes(attachment_octets)).decode()
    encoded = "".join(
        payload[start : start + BASE64_LINE] + "\r\n"
        for start in range(0, len(payload), BASE64_LINE)
    )
    body = (
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY_MIXED}"\r\n'
        "\r\n"
        f"--{BOUNDARY_MIXED}\r\n"
        f'Content-Type: multipart/alternative; boundary="{BOUNDARY_ALTERNATIVE}"\r\n'
        "\r\n"
        f"{alternative_part}"
        f"--{BOUNDARY_MIXED}\r\n"
        "Content-Type: application/octet-stream\r\n"
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="padding.bin"\r\n'
        "\r\n"
        f"{encoded}"
        f"--{BOUNDARY_MIXED}--\r\n"
    )
    return (headers + body).encode()


def min_size() -> int:
    """Return the smallest size that `build_message` reaches exactly, and gives smaller targets."""
    return len(_assemble(0, 0, 0, alternative=False))


@functools.lru_cache(maxsize=64)
def build_message(size: int) -> bytes:
    """Build a message of exactly `size` octets (at least `min_size()`), cached per size."""
    alternative = size >= len(_assemble(size, 0, 0, alternative=True))
    base = len(_assemble(size, 0, 0, alternative))
    if size <= base:
        return _assemble(size, 0, 0, alternative)

    attachment = 0
    if size - base > ATTACHMENT_THRESHOLD:
        # Base64 turns 57 octets into a 76-character line plus CRLF: 78 octets. The first
        # estimate leaves room for the attachment's own headers, then shrinks until it fits.
        overhead = len(_assemble(size, 0, 1, alternative)) - base - 6
        attachment = max(1, (size - base - overhead) * 57 // 78)
        while attachment > 0 and len(_assemble(size, 0, attachment, alternative)) > size:
            attachment -= 57
        attachment = max(attachment, 0)

    message = _assemble(size, 0, attachment, alternative)
    # The text part takes the rest: a padding of N adds exactly N octets.
    message = _assemble(size, size - len(message), attachment, alternative)
    assert len(message) == size, (size, len(message))
    return message
