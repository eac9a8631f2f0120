"""Prometheus exposition: the master's collector over the worker slots, and its HTTP endpoint.

Workers only add to words in their shared-memory slot (`sink.smtp.counters` has the layout).
Nothing is summed until Prometheus scrapes: then `SinkCollector.collect` reads every slot, adds
the values up, turns the per-bucket histogram words into cumulative buckets, and reads each
worker's CPU time and resident memory from /proc. The master serves `/metrics` and `/healthz`
from its own loop, one request at a time, with no thread, so that forking a worker never
happens while another thread holds a lock.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from sink import __version__
from sink.smtp import quirks
from sink.smtp.counters import (
    DATA_DURATION,
    ENDED_BASE,
    ENDED_HOW,
    FSYNC_DURATION,
    QUIRK_BASE,
    REPLY_CODES,
    SESSION_DURATION,
    SIZE_BOUNDS,
    VERBS,
    WORDS,
    Field,
    Histogram,
    accepted_messages,
    accepted_octets,
    command_counts,
    data_duration_buckets,
    message_size_buckets,
    received_octets,
    reply_counts,
)

if TYPE_CHECKING:
    from sink.server.master import Master

log = logging.getLogger("sink.master")

PREFIX = "smtp_sink_"
REQUEST_TIMEOUT = 2.0  # seconds a scrape client gets to send its request
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class SinkCollector:
    """Collects every `smtp_sink_` metric from the slots and the master's own state."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def collect(self) -> Iterator[Metric]:
        master = self.master
        assert master.slots is not None
        slots = [master.slots.slot(index).tolist() for index in range(master.slots.count)]
        total = [sum(column) for column in zip(*slots, strict=True)] if slots else [0] * WORDS

        def counter(name: str, documentation: str, field: int) -> CounterMetricFamily:
            return CounterMetricFamily(PREFIX + name, documentation, value=total[field])

        def gauge(name: str, documentation: str, field: int) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, documentation, value=total[field])

        def labelled(
            name: str, documentation: str, label: str, values: tuple[str, ...], base: int
        ) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, documentation, labels=[label])
            for offset, value in enumerate(values):
                family.add_metric([value], total[base + offset])
            return family

        # Connections
        yield counter(
            "connections_accepted", "Connections accepted by the workers.", Field.SESSIONS
        )
        yield gauge("connections_active", "Sessions open now.", Field.ACTIVE_SESSIONS)
        refused = CounterMetricFamily(
            PREFIX + "connections_refused",
            "Connections refused with 421, by reason.",
            labels=["reason"],
        )
        refused.add_metric(["max_sessions"], total[Field.REFUSED_SESSIONS])
        refused.add_metric(["shutting_down"], total[Field.REFUSED_SHUTTING_DOWN])
        yield refused
        yield labelled("sessions_ended", "Sessions ended, by how.", "how", ENDED_HOW, ENDED_BASE)
        yield _histogram(
            "session_duration_seconds",
            "Time from connection to close.",
            SESSION_DURATION,
            total,
        )

        # Commands and replies
        commands = CounterMetricFamily(
            PREFIX + "commands",
            "Commands received, by verb; unknown verbs count as one.",
            labels=["verb"],
        )
        for verb, count in zip(VERBS, command_counts(total), strict=True):
            commands.add_metric([verb], count)
        yield commands
        sent = CounterMetricFamily(PREFIX + "replies", "Replies sent, by code.", labels=["code"])
        for code, count in zip(REPLY_CODES, reply_counts(total), strict=True):
            sent.add_metric([code], count)
        yield sent

        # Messages and data
        messages = CounterMetricFamily(
            PREFIX + "messages",
            "Transactions with content, by outcome: accepted (250 queued), refused (a 4xx or "
            "5xx final reply) or aborted (no final reply).",
            labels=["outcome"],
        )
        messages.add_metric(["accepted"], accepted_messages(total))
        messages.add_metric(["refused"], total[Field.MESSAGES_REFUSED])
        messages.add_metric(["aborted"], total[Field.MESSAGES_ABORTED])
        yield messages
        recipients = CounterMetricFamily(
            PREFIX + "recipients", "Recipients, by outcome.", labels=["outcome"]
        )
        recipients.add_metric(["accepted"], total[Field.RECIPIENTS_ACCEPTED])
        recipients.add_metric(["refused"], total[Field.RECIPIENTS_REFUSED])
        yield recipients
        received = CounterMetricFamily(
            PREFIX + "received_bytes",
            "Content octets received, by command; DATA counts them after dot-unstuffing.",
            labels=["command"],
        )
        data_octets, bdat_octets = received_octets(total)
        received.add_metric(["DATA"], data_octets)
        received.add_metric(["BDAT"], bdat_octets)
        yield received
        yield _histogram_of(
            "message_size_bytes",
            "Size of accepted messages.",
            SIZE_BOUNDS,
            message_size_buckets(total),
            accepted_octets(total),
        )
        yield _histogram_of(
            "data_duration_seconds",
            "Time from DATA, or the first BDAT, to the final reply.",
            DATA_DURATION.bounds,
            data_duration_buckets(total),
            DATA_DURATION.total(total),
        )

        # Spool
        yield counter("spool_written_bytes", "Octets written to spool segments.", Field.SPOOL_BYTES)
        yield counter("spool_records", "Records committed to the spool.", Field.SPOOL_RECORDS)
        yield gauge("spool_segments_open", "Spool segments open for writing.", Field.SEGMENTS_OPEN)
        yield counter("spool_segments_sealed", "Spool segments sealed.", Field.SEGMENTS_SEALED)
        yield counter(
            "spool_write_errors", "Failed writes and fsyncs of the spool.", Field.SPOOL_WRITE_ERRORS
        )
        yield _histogram(
            "spool_fsync_duration_seconds", "Duration of spool fsyncs.", FSYNC_DURATION, total
        )
        yield GaugeMetricFamily(
            PREFIX + "spool_disk_bytes",
            "Size of the segment files in the spool directory.",
            value=_spool_disk_bytes(master.config.spool),
        )

        # Client quirks
        yield labelled(
            "client_quirks",
            "Deviations from RFC 5321 that the sink accepted, by kind.",
            "quirk",
            quirks.ALL,
            QUIRK_BASE,
        )

        # Workers
        yield GaugeMetricFamily(
            PREFIX + "workers_alive", "Worker processes alive.", value=len(master.workers)
        )
        restarts = CounterMetricFamily(
            PREFIX + "worker_restarts",
            "Workers replaced, by reason: exited, killed (by a signal), heartbeat (killed by "
            "the master after a missed heartbeat) or reload.",
            labels=["reason"],
        )
        for reason, count in master.restarts.items():
            restarts.add_metric([reason], count)
        yield restarts
        connections = CounterMetricFamily(
            PREFIX + "worker_connections",
            "Connections accepted, by worker index.",
            labels=["worker"],
        )
        messages_by_worker = CounterMetricFamily(
            PREFIX + "worker_messages", "Messages accepted, by worker index.", labels=["worker"]
        )
        for index, words in enumerate(slots):
            connections.add_metric([str(index)], words[Field.SESSIONS])
            messages_by_worker.add_metric([str(index)], accepted_messages(words))
        yield connections
        yield messages_by_worker
        yield from _process_metrics(master)

        info = GaugeMetricFamily(
            PREFIX + "build_info", "The sink's version; the value is always 1.", labels=["version"]
        )
        info.add_metric([__version__], 1)
        yield info


def _histogram(
    name: str, documentation: str, histogram: Histogram, total: list[int]
) -> HistogramMetricFamily:
    """Return the histogram whose words in the slot layout are `histogram`'s."""
    counts = total[histogram.base : histogram.sum_word]
    return _histogram_of(name, documentation, histogram.bounds, counts, histogram.total(total))


def _histogram_of(
    name: str,
    documentation: str,
    bounds: tuple[float, ...],
    counts: list[int],
    sum_value: float,
) -> HistogramMetricFamily:
    """Return a histogram from its counts per bucket (not cumulative, +Inf last)."""
    buckets = []
    cumulative = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else _bound_text(bound), cumulative))
    return HistogramMetricFamily(PREFIX + name, documentation, buckets=buckets, sum_value=sum_value)


def _bound_text(bound: float) -> str:
    return str(int(bound)) if bound.is_integer() and bound >= 1 else repr(bound)


def _process_metrics(master: Master) -> Iterator[Metric]:
    """CPU seconds (with those of dead predecessors) and resident memory of each worker."""
    cpu = CounterMetricFamily(
        PREFIX + "worker_cpu_seconds",
        "CPU time of the worker processes, by worker index and mode, including workers that "
        "this index had before a restart.",
        labels=["worker", "mode"],
    )
    memory = GaugeMetricFamily(
        PREFIX + "worker_resident_memory_bytes",
        "Resident memory of each worker process.",
        labels=["worker"],
    )
    live = {worker.index: worker.pid for worker in master.workers.values()}
    for index in range(master.config.workers):
        user, system = master.finished_cpu.get(index, (0.0, 0.0))
        resident = 0
        pid = live.get(index)
        if pid is not None:
            usage = _read_process(pid)
            if usage is not None:
                user += usage[0]
                system += usage[1]
                resident = usage[2]
        cpu.add_metric([str(index), "user"], user)
        cpu.add_metric([str(index), "system"], system)
        memory.add_metric([str(index)], resident)
    yield cpu
    yield memory


def _read_process(pid: int) -> tuple[float, float, int] | None:
    """Return user seconds, system seconds and resident octets of a process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    # The command name in parentheses may contain spaces; the fields after it do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    user = int(fields[11]) / _CLOCK_TICKS
    system = int(fields[12]) / _CLOCK_TICKS
    resident = int(statm.split()[1]) * _PAGE_SIZE
    return user, system, resident


def _spool_disk_bytes(directory: str | None) -> int:
    if not directory:
        return 0
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("seg-"):
                    try:
                        total += entry.stat().st_size
                    except OSError:
                        continue
    except OSError:
        return 0
    return total


class _Handler(http.server.BaseHTTPRequestHandler):
    """Handler of GET /metrics and GET /healthz for the master."""

    server_version = f"sink/{__version__}"
    master: Master
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._respond(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        elif path == "/healthz":
            problems = self.master.health_problems()
            if problems:
                body = "".join(f"{problem}\n" for problem in problems).encode()
                self._respond(503, "text/plain; charset=utf-8", body)
            else:
                self._respond(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._respond(
                404, "text/plain; charset=utf-8", b"not found: try /metrics or /healthz\n"
            )

    def _respond(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base class name)
        log.debug("metrics request from %s: " + format, self.client_address[0], *args)


class MetricsEndpoint:
    """The master's listening socket for /metrics and /healthz, served from its main loop."""

    def __init__(self, master: Master, sock: socket.socket) -> None:
        self.sock = sock
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SinkCollector(master))
        self.handler = type("Handler", (_Handler,), {"master": master, "registry": registry})
        self.failures = 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle(self) -> None:
        """Accept one pending connection and serve its request."""
        try:
            connection, address = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        started = time.monotonic()
        try:
            connection.settimeout(REQUEST_TIMEOUT)
            self.handler(connection, address, None)
        except Exception as error:
            self.failures += 1
            if self.failures <= 10:
                log.warning("metrics request from %s failed: %s", address[0], error)
        finally:
            connection.close()
        elapsed = time.monotonic() - started
        if elapsed > 1.0:
            log.warning("metrics request from %s took %.1f s", address[0], elapsed)

    def close(self) -> None:
        self.sock.close()
