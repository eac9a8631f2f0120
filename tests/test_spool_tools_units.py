"""In-memory checks of the spool tools' helpers: mboxrd quoting, header blocks, times."""

from __future__ import annotations

import re

import pytest

from sink.spool.tools.export import MboxrdQuoter
from sink.spool.tools.reading import header_end, iso_time, parse_time
from sink.spool.tools.stats import size_bucket

MESSAGE = (
    b"From: a@example.com\r\n\r\nFrom here\r\n>From there\r\n>>>From far\r\n"
    b"From\r\n>From\r\nFromage\r\n From indented\r\nlast From "
)
EXPECTED = (
    b"From: a@example.com\r\n\r\n>From here\r\n>>From there\r\n>>>>From far\r\n"
    b"From\r\n>From\r\nFromage\r\n From indented\r\nlast From "
)


def quote(pieces: list[bytes]) -> bytes:
    quoter = MboxrdQuoter()
    return b"".join(quoter.feed(piece) for piece in pieces) + quoter.finish()


def test_mboxrd_quoting_whole() -> None:
    assert quote([MESSAGE]) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7])
def test_mboxrd_quoting_any_split(size: int) -> None:
    pieces = [MESSAGE[i : i + size] for i in range(0, len(MESSAGE), size)]
    assert quote(pieces) == EXPECTED


def test_mboxrd_quoting_reversible() -> None:
    unquoted = re.sub(rb"(?m)^>(>*From )", rb"\1", quote([MESSAGE]))
    assert unquoted == MESSAGE


def test_header_end_forms() -> None:
    assert header_end(b"A: b\r\n\r\nbody") == (6, 8)
    assert header_end(b"A: b\n\nbody") == (5, 6)
    assert header_end(b"\r\nbody") == (0, 2)
    assert header_end(b"A: b\r\nno blank line") is None
    assert header_end(b"A: b\n\r\nx\n\ny") == (5, 7)


def test_times_round_trip() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert parse_time("1970-01-01T00:00:01Z") == 1.0
    assert parse_time("1970-01-01") == 0.0
    assert parse_time("1970-01-01T01:00:00+01:00") == 0.0
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_size_buckets() -> None:
    assert size_bucket(0) == "<1k"
    assert size_bucket(999) == "<1k"
    assert size_bucket(1_000) == "1k-10k"
    assert size_bucket(10**9) == ">=10M"


def test_stats_counters_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from sink.spool.tools import stats as stats_module

    monkeypatch.setattr(stats_module, "DISTINCT_LIMIT", 10)
    collected = stats_module.SpoolStats()

    class FakeRecord:
        size = 100
        meta: dict[str, object] = {}

        def __init__(self, sender: str) -> None:
            self.envelope = {
                "reverse_path": {"mailbox": sender, "raw": sender, "params": {}},
                "forward_paths": [{"mailbox": "r@example.net", "domain": "example.net"}],
                "helo": "client.example",
                "client": {"address": "127.0.0.1"},
            }

    for number in range(200):
        collected.add(FakeRecord(f"rare{number}@example.com"), b"From: x@example.com\r\n\r\n")
        collected.add(FakeRecord("frequent@example.com"), b"From: x@example.com\r\n\r\n")

    assert len(collected.senders) < 20
    report = collected.as_dict(top=3)
    assert report["top_senders"][0] == ["frequent@example.com", 200]
    assert report["approximate"]["top_senders"] >= 1
    assert "approximate" in stats_module.format_stats(report)
    assert report["messages"] == 400
