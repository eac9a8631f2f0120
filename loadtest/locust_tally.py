"""Counts of the locust SMTP load and their Prometheus exposition, without locust itself.

`Tally` counts the request events that loadtest/locustfile.py fires, travels in a locust
worker's stats report as plain lists, and adds up on the master. `TallyCollector` exposes a
tally as the `smtp_load_*` metrics that docs/load.md lists. loadtest/locust_metrics.py
connects both to locust. This module does not import locust, because importing locust
patches the socket and threading modules with gevent.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric

# The request types and names of the events that loadtest/locustfile.py fires.
REQUEST_TYPE = "SMTP"
STAGE_REQUEST_TYPE = "SMTP-stage"
SEND = "send"
REFUSED = "refused"
TRANSACTION_NAMES = (SEND, REFUSED)
OUTCOMES = ("ok", "failed")

# Stage label values, in the order a transaction runs through them. The locustfile's stage
# events are named with hyphens (`end-of-data`), and Prometheus label values use underscores.
STAGES = ("connect", "ehlo", "mail", "rcpt", "data", "end_of_data", "transaction")

# The same buckets as the sink's duration histograms (docs/metrics.md), in seconds.
BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# The key of the tally in the data of a locust worker's stats report.
REPORT_KEY = "smtp_load_metrics"


@dataclass
class StageHistogram:
    """Observations of one stage: a count per bucket (the last one is +Inf) and their sum."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total_seconds: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total_seconds += seconds

    def add(self, other: StageHistogram) -> None:
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.total_seconds += other.total_seconds

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class Tally:
    """Transactions, messages, octets and stage durations counted from locust request events."""

    transactions: dict[tuple[str, str], int] = field(default_factory=dict)
    messages: int = 0
    octets: int = 0
    stages: dict[str, StageHistogram] = field(default_factory=dict)

    def record(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None,
    ) -> None:
        """Count one request event. `response_time` is in milliseconds, as locust reports it."""
        seconds = response_time / 1000.0
        if request_type == REQUEST_TYPE:
            outcome = "failed" if exception is not None else "ok"
            key = (name, outcome)
            self.transactions[key] = self.transactions.get(key, 0) + 1
            if exception is None and name == SEND:
                self.messages += 1
                self.octets += response_length
                self._observe("transaction", seconds)
        elif request_type == STAGE_REQUEST_TYPE and exception is None:
            self._observe(name.replace("-", "_"), seconds)

    def _observe(self, stage: str, seconds: float) -> None:
        self.stages.setdefault(stage, StageHistogram()).observe(seconds)

    def add(self, other: Tally) -> None:
        for key, count in other.transactions.items():
            self.transactions[key] = self.transactions.get(key, 0) + count
        self.messages += other.messages
        self.octets += other.octets
        for stage, histogram in other.stages.items():
            self.stages.setdefault(stage, StageHistogram()).add(histogram)

    def is_empty(self) -> bool:
        return not self.transactions and not self.stages

    def to_report(self) -> dict[str, Any]:
        """Return the tally as plain lists and numbers, which locust's msgpack messages carry."""
        return {
            "transactions": [
                [name, outcome, count] for (name, outcome), count in self.transactions.items()
            ],
            "messages": self.messages,
            "octets": self.octets,
            "stages": {
                stage: [histogram.counts, histogram.total_seconds]
                for stage, histogram in self.stages.items()
            },
        }

    @classmethod
    def from_report(cls, data: dict[str, Any]) -> Tally:
        """Rebuild a tally from `to_report`, or raise ValueError when the data has another shape."""
        try:
            tally = cls(messages=int(data["messages"]), octets=int(data["octets"]))
            for name, outcome, count in data["transactions"]:
                tally.transactions[(str(name), str(outcome))] = int(count)
            for stage, (counts, total_seconds) in data["stages"].items():
                if len(counts) != len(BUCKETS) + 1:
                    raise ValueError(f"stage {stage!r} has {len(counts)} buckets")
                tally.stages[str(stage)] = StageHistogram(
                    [int(count) for count in counts], float(total_seconds)
                )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed SMTP load tally: {error!r}") from None
        return tally


class TallyCollector:
    """A prometheus-client collector that exposes a tally as the `smtp_load_*` metrics.

    Every transaction name and outcome and every stage is exposed from the start with zero
    counts, so that rates and failure panels have a series before the first event.
    """

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def collect(self) -> Iterator[Metric]:
        tally = self.tally
        transactions = CounterMetricFamily(
            "smtp_load_transactions",
            "SMTP transactions finished by the load generator, by request name and outcome.",
            labels=["name", "outcome"],
        )
        names = sorted({*TRANSACTION_NAMES, *(name for name, _ in tally.transactions)})
        for name in names:
            for outcome in OUTCOMES:
                transactions.add_metric([name, outcome], tally.transactions.get((name, outcome), 0))
        yield transactions

        yield CounterMetricFamily(
            "smtp_load_messages_sent",
            "Messages that the server acknowledged with 250 after the end of data.",
            value=tally.messages,
        )
        yield CounterMetricFamily(
            "smtp_load_bytes_sent",
            "Content octets of the messages counted in smtp_load_messages_sent_total.",
            value=tally.octets,
        )

        durations = HistogramMetricFamily(
            "smtp_load_stage_duration_seconds",
            "Duration of each successful SMTP stage, and of each delivered transaction.",
            labels=["stage"],
        )
        for stage in sorted({*STAGES, *tally.stages}, key=_stage_order):
            histogram = tally.stages.get(stage, StageHistogram())
            cumulative = []
            running = 0
            for bound, count in zip([*BUCKETS, float("inf")], histogram.counts, strict=True):
                running += count
                cumulative.append((_bucket_label(bound), running))
            durations.add_metric([stage], cumulative, histogram.total_seconds)
        yield durations


def _stage_order(stage: str) -> tuple[int, str]:
    return (STAGES.index(stage) if stage in STAGES else len(STAGES), stage)


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def parse_listen(text: str) -> tuple[str, int]:
    """Parse `HOST:PORT` or `[IPV6]:PORT`, or raise ValueError naming the value."""
    host, colon, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(
            f"invalid --smtp-metrics-listen {text!r}: expected HOST:PORT, such as 127.0.0.1:9646"
        )
    return host, int(port_text)
