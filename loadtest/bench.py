"""Benchmark the sink against Postfix's smtp-sink and aiosmtpd on uvloop (`make bench`).

Postfix's smtp-source is the load for every server, with the same flags. Each run starts a
fresh server on a free port of 127.0.0.1, sends a fixed number of messages and stops the
server. Rounds are interleaved: every round runs each server once, in an order that rotates
from round to round, and the report gives medians over the rounds. The results replace the
marked section of docs/benchmarks.md. The metrics-cost phase (loadtest/bench_metrics.py) writes
to a marked section of its own, so a run of that phase alone keeps the other results.

Run `python -m loadtest.bench --help` for the options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from loadtest import bench_metrics, bench_proc, bench_report
from loadtest.bench_report import format_decimal, format_rate, format_ratio, median
from loadtest.bench_servers import (
    PROJECT_ROOT,
    SERVER_NAMES,
    SETTLE_SECONDS,
    BenchError,
    LoadResult,
    RunningServer,
    SinkSource,
    Variant,
    check_smtp_source,
    find_postfix_tool,
    measure_load,
    payload_length,
    smtp_source_command,
)
from loadtest.bench_sessions import IdleSessions, check_descriptor_budget, raise_open_file_limit

BASELINE = Variant("smtp-sink")

QUICK_SCALE = 0.05
QUICK_SESSIONS = 200
DEFAULT_ROUNDS = 5
DEFAULT_SESSIONS = 10_000
DEFAULT_RUN_TIMEOUT = 300.0
DEFAULT_SCALING_WORKERS = (1, 2, 4)


@dataclass(frozen=True)
class Scenario:
    """An smtp-source load, the sink's spool settings to run it with and the sink's targets.

    `targets` maps the sink's spool setting to the minimum ratio to smtp-sink.
    """

    name: str
    flags: tuple[str, ...]
    messages: int
    spool_settings: tuple[bool, ...]
    ratio_metric: str
    targets: tuple[tuple[bool, float], ...]

    @property
    def flag_text(self) -> str:
        return " ".join(self.flags)


# Message counts make a run of smtp-sink last one to three seconds on a 2-core machine (measured
# there: about 30,000 msg/s with -d, 11,000 msg/s without, 410 MB/s with 1 MB messages), and a
# run of aiosmtpd four to seven times longer.
SCENARIOS = (
    Scenario(
        "persistent-1k",
        ("-s", "20", "-d", "-l", "1024"),
        50_000,
        (False, True),
        "msg/s",
        ((False, 1.0), (True, 0.9)),
    ),
    Scenario(
        "per-connection-1k", ("-s", "20", "-l", "1024"), 20_000, (False,), "msg/s", ((False, 0.9),)
    ),
    Scenario(
        "persistent-1m",
        ("-s", "4", "-d", "-l", "1000000"),
        1_000,
        (False, True),
        "MB/s",
        ((False, 3.0), (True, 2.0)),
    ),
)
SCENARIOS_BY_NAME = {scenario.name: scenario for scenario in SCENARIOS}
SCALING_SCENARIO = SCENARIOS_BY_NAME["persistent-1k"]
METRICS_COST = "metrics-cost"
PHASES = (*SCENARIOS_BY_NAME, "memory", "scaling", METRICS_COST)

T = TypeVar("T")


def parse_names(text: str, allowed: tuple[str, ...], kind: str) -> list[str]:
    """Split a comma-separated list and check each name against `allowed`."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if name not in allowed:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {name!r}: expected one of {', '.join(allowed)}"
            )
    return names


def parse_worker_counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid worker counts {text!r}: expected e.g. 1,2,4"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"invalid worker counts {text!r}: each must be >= 1")
    return counts


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench",
        description="Benchmark the sink against Postfix's smtp-sink and aiosmtpd on uvloop, "
        "with Postfix's smtp-source as the load, and write the results to docs/benchmarks.md.",
        epilog="Phases: "
        + ", ".join(
            f"{scenario.name} (smtp-source {scenario.flag_text}, {scenario.messages} messages)"
            for scenario in SCENARIOS
        )
        + "; memory (RSS per idle session after EHLO); scaling (the sink with "
        "--scaling-workers on persistent-1k, spool off); metrics-cost (the sink against "
        "--metrics-baseline, a commit without metrics, on persistent-1k, spool off, one worker, "
        f"{bench_metrics.ROUNDS_FACTOR} times as many short rounds; and the SMTP session alone).",
    )
    add = parser.add_argument
    add(
        "--rounds",
        type=positive_int,
        metavar="N",
        help=f"interleaved rounds per phase; the report gives medians (default {DEFAULT_ROUNDS}, "
        "1 with --quick)",
    )
    add(
        "--scale",
        type=positive_float,
        metavar="FACTOR",
        help=f"multiply every message count by FACTOR (default 1, {QUICK_SCALE} with --quick)",
    )
    add(
        "--only",
        type=lambda text: parse_names(text, PHASES, "phase"),
        action="extend",
        metavar="PHASE",
        help="run only this phase; repeatable or comma-separated: " + ", ".join(PHASES),
    )
    add(
        "--servers",
        type=lambda text: parse_names(text, SERVER_NAMES, "server"),
        action="extend",
        metavar="SERVER",
        help="run only these servers; repeatable or comma-separated: " + ", ".join(SERVER_NAMES),
    )

    add(
        "--workers",
        type=positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="sink worker processes outside the scaling phase (default: CPU count, "
        f"{os.cpu_count()} here)",
    )
    add(
        "--scaling-workers",
        type=parse_worker_counts,
        metavar="N,N,...",
        default=list(DEFAULT_SCALING_WORKERS),
        help="sink worker counts of the scaling phase (default 1,2,4)",
    )
    add(
        "--metrics-baseline",
        default=bench_metrics.DEFAULT_BASELINE,
        metavar="REF",
        help="git commit without the metrics instrumentation that the metrics-cost phase "
        f"compares the sink with (default {bench_metrics.DEFAULT_BASELINE})",
    )
    add(
        "--sessions",
        type=positive_int,
        metavar="N",
        help=f"idle sessions of the memory phase (default {DEFAULT_SESSIONS}, "
        f"{QUICK_SESSIONS} with --quick)",
    )

    add(
        "--run-timeout",
        type=positive_float,
        default=DEFAULT_RUN_TIMEOUT,
        metavar="SECONDS",
        help=f"stop with an error when one smtp-source run or opening the sessions takes longer "
        f"(default {DEFAULT_RUN_TIMEOUT:.0f})",
    )
    add(
        "--spool-parent",
        metavar="DIR",
        help="directory for the temporary spools of spool-on runs (default: the system's "
        "temporary directory); use a disk, not tmpfs, or fsync costs nothing",
    )

    add(
        "--quick",
        action="store_true",
        help=f"smoke test: 1 round, message counts times {QUICK_SCALE}, {QUICK_SESSIONS} "
        "sessions, and no docs/benchmarks.md unless --output is given",
    )
    add(
        "--output",
        type=Path,
        metavar="FILE",
        help="Markdown file whose marked section gets the results (default docs/benchmarks.md)",
    )
    add("--no-write", action="store_true", help="print the results without writing a file")
    return parser


@dataclass
class Settings:
    rounds: int
    scale: float
    phases: list[str]
    servers: list[str]
    workers: int
    scaling_workers: list[int]
    metrics_baseline: str
    sessions: int
    run_timeout: float
    spool_parent: str | None
    output: Path | None
    quick: bool = False


def resolve_settings(args: argparse.Namespace) -> Settings:
    """Apply --quick and the defaults that depend on it."""
    output = args.output
    if output is None and not args.quick:
        output = PROJECT_ROOT / "docs" / "benchmarks.md"
    if args.no_write:
        output = None
    return Settings(
        rounds=args.rounds or (1 if args.quick else DEFAULT_ROUNDS),
        scale=args.scale or (QUICK_SCALE if args.quick else 1.0),
        phases=list(dict.fromkeys(args.only or PHASES)),
        servers=list(dict.fromkeys(args.servers or SERVER_NAMES)),
        workers=args.workers,
        scaling_workers=args.scaling_workers,
        metrics_baseline=args.metrics_baseline,
        sessions=args.sessions or (QUICK_SESSIONS if args.quick else DEFAULT_SESSIONS),
        run_timeout=args.run_timeout,
        spool_parent=args.spool_parent,
        output=output,
        quick=args.quick,
    )


def scaled(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def rotated(items: list[T], shift: int) -> list[T]:
    """Return `items` rotated left by `shift`, so each round starts with a different server."""
    if not items:
        return []
    shift %= len(items)
    return items[shift:] + items[:shift]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_once(variant: Variant, flags: list[str], messages: int, settings: Settings) -> LoadResult:
    """Start `variant`, run one smtp-source load against it and stop it.

    With metrics, also check that the sink counted every message as accepted, and with a spool,
    that the stopped sink's spool contains one record per message.
    """
    server = RunningServer(variant, spool_parent=settings.spool_parent)
    try:
        server.wait_ready()
        result = measure_load(server, flags, messages, settings.run_timeout)
        accepted = server.accepted_messages_metric()
        if accepted is not None and accepted != messages:
            raise BenchError(
                f"{variant.label} accepted {messages} messages, but its metrics count "
                f"{accepted:.0f}"
            )
        status = server.stop()
        if variant.server == "sink" and status != 0:
            log(
                f"warning: {variant.label} exited with status {status} on SIGTERM; "
                f"its stderr:\n{server.stderr_tail()}"
            )
        stored = server.count_spool_records()
    finally:
        server.stop()
        server.cleanup()
    if stored is not None and stored != messages:
        raise BenchError(
            f"{variant.label} accepted {messages} messages, but its spool contains "
            f"{stored} records: messages were lost or duplicated"
        )
    return result


def run_rounds(
    name: str, flags: list[str], messages: int, variants: list[Variant], settings: Settings
) -> dict[Variant, list[LoadResult]]:
    """Run every variant once per round, in an order that rotates each round.

    Returns each variant's results in round order, so index i of two lists is the same round.
    """
    rounds = settings.rounds
    results: dict[Variant, list[LoadResult]] = {variant: [] for variant in variants}
    for round_index in range(rounds):
        for variant in rotated(variants, round_index):
            result = run_once(variant, flags, messages, settings)
            results[variant].append(result)
            log(
                f"round {round_index + 1}/{rounds} {name} {variant.label}: "
                f"{messages} messages in {result.wall_seconds:.2f} s, "
                f"{format_rate(result.messages_per_second)} msg/s, "
                f"{format_decimal(result.megabytes_per_second)} MB/s, "
                f"{format_decimal(result.cpu_microseconds_per_message)} CPU µs/msg"
            )
    return results


@contextlib.contextmanager
def running_servers(variants: list[Variant], settings: Settings) -> Iterator[list[RunningServer]]:
    """Start every variant, wait until each is ready, and stop them all when the block ends."""
    servers = [RunningServer(variant, spool_parent=settings.spool_parent) for variant in variants]
    try:
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()
            server.cleanup()


def check_accepted(servers: list[RunningServer], sent: int) -> None:
    """Raise BenchError unless each server with metrics counted `sent` accepted messages."""
    for server in servers:
        accepted = server.accepted_messages_metric()
        if accepted is not None and accepted != sent:
            raise BenchError(
                f"{server.variant.label} accepted {sent} messages, but its metrics count "
                f"{accepted:.0f}"
            )


def run_alternating(
    name: str,
    flags: list[str],
    messages: int,
    variants: list[Variant],
    settings: Settings,
    rounds: int,
) -> dict[Variant, list[LoadResult]]:
    """Start every variant once, then load each in turn for `rounds` rounds.

    Unlike run_rounds, the servers stay up between runs, so a round costs only its loads and
    many short rounds fit in the time of a few long ones. The order rotates every round. A
    warm-up load of a tenth of `messages` per server comes first and is not reported. At the
    end, a server with metrics must have counted every message it was sent as accepted.

    Returns each variant's results in round order, so index i of two lists is the same round.
    """
    results: dict[Variant, list[LoadResult]] = {variant: [] for variant in variants}
    warm_up = max(1, messages // 10)
    with running_servers(variants, settings) as servers:
        for server in servers:
            measure_load(server, flags, warm_up, settings.run_timeout)

        for round_index in range(rounds):
            for server in rotated(servers, round_index):
                result = measure_load(server, flags, messages, settings.run_timeout)
                results[server.variant].append(result)
                log(
                    f"round {round_index + 1}/{rounds} {name} {server.variant.label}: "
                    f"{messages} messages in {result.wall_seconds:.2f} s, "
                    f"{format_rate(result.messages_per_second)} msg/s, "
                    f"{format_decimal(result.cpu_microseconds_per_message)} CPU µs/msg"
                )

        check_accepted(servers, warm_up + rounds * messages)
    return results


def run_concurrent(
    name: str,
    flags: list[str],
    messages: int,
    variants: list[Variant],
    settings: Settings,
    rounds: int,
) -> dict[Variant, list[LoadResult]]:
    """Start every variant once, then load all of them at the same time in each round.

    Each server gets its own smtp-source, started together, so whatever else the machine does
    during a round slows all of them alike. What a round compares is the CPU time per message
    of each server's process tree, from the nanosecond counters of /proc/PID/task/TID/schedstat.
    Wall times are not compared: the server that finishes first leaves the others more CPU.
    A warm-up round of a tenth of `messages` comes first and is not reported. At the end, a
    server with metrics must have counted every message it was sent as accepted.

    Returns each variant's results in round order, so index i of two lists is the same round.
    """
    results: dict[Variant, list[LoadResult]] = {variant: [] for variant in variants}
    warm_up = max(1, messages // 10)
    with running_servers(variants, settings) as servers:
        concurrent_round(servers, flags, warm_up, settings.run_timeout)

        for round_index in range(rounds):
            loads = concurrent_round(servers, flags, messages, settings.run_timeout)
            for server, result in loads.items():
                results[server.variant].append(result)
                log(
                    f"round {round_index + 1}/{rounds} {name} {server.variant.label}: "
                    f"{messages} messages at once with the others, "
                    f"{format_decimal(result.cpu_microseconds_per_message)} CPU µs/msg"
                )

        check_accepted(servers, warm_up + rounds * messages)
    return results


def concurrent_round(
    servers: list[RunningServer], flags: list[str], messages: int, timeout: float
) -> dict[RunningServer, LoadResult]:
    """Load every server with its own smtp-source at the same time; return each one's result."""
    before = {server: bench_proc.tree_run_nanoseconds(server.pid) for server in servers}
    commands = {server: smtp_source_command(flags, messages, server.port) for server in servers}
    started = time.perf_counter()
    processes = {
        server: subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for server, command in commands.items()
    }
    walls = {}
    try:
        for server, process in processes.items():
            try:
                output, _ = process.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise BenchError(
                    f"smtp-source timed out after {timeout:.0f} s, so raise --run-timeout on a "
                    f"slower machine: {' '.join(commands[server])}"
                ) from None
            walls[server] = time.perf_counter() - started
            check_smtp_source(commands[server], process.returncode, output)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    time.sleep(SETTLE_SECONDS)
    results = {}
    for server in servers:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.variant.label} exited during the run. Its stderr:\n{server.stderr_tail()}"
            )
        used = bench_proc.tree_run_nanoseconds(server.pid) - before[server]
        results[server] = LoadResult(
            messages=messages,
            payload_bytes=payload_length(flags),
            wall_seconds=walls[server],
            server_cpu_seconds=used / 1e9,
        )
    return results


def scenario_variants(scenario: Scenario, settings: Settings) -> list[Variant]:
    variants = []
    if "sink" in settings.servers:
        variants += [Variant("sink", spool, settings.workers) for spool in scenario.spool_settings]
    variants += [
        Variant(server) for server in ("smtp-sink", "aiosmtpd") if server in settings.servers
    ]
    return variants


def ratio_values(scenario: Scenario, runs: list[LoadResult]) -> list[float]:
    """Return the per-round values that the scenario's ratio to smtp-sink compares."""
    if scenario.ratio_metric == "MB/s":
        return [run.megabytes_per_second for run in runs]
    return [run.messages_per_second for run in runs]


def rate_range(runs: list[LoadResult]) -> str:
    """Format the lowest and highest msg/s of the rounds, e.g. "19,496-27,599"."""
    rates = [run.messages_per_second for run in runs]
    return f"{format_rate(min(rates))}-{format_rate(max(rates))}"


def throughput_rows(
    scenario: Scenario, results: dict[Variant, list[LoadResult]]
) -> list[list[str]]:
    """Build the table rows of one scenario: medians, ratio to smtp-sink and the targets."""
    targets = dict(scenario.targets)
    baseline = results.get(BASELINE)
    rows = []
    for variant, runs in results.items():
        ratio = None
        if baseline:
            ratio = bench_report.paired_ratio(
                ratio_values(scenario, runs), ratio_values(scenario, baseline)
            )
        target = targets.get(variant.spool) if variant.server == "sink" else None
        rows.append(
            [
                f"`{scenario.flag_text}`",
                variant.label,
                format_rate(median([run.messages_per_second for run in runs])),
                rate_range(runs),
                format_decimal(median([run.megabytes_per_second for run in runs])),
                format_decimal(median([run.cpu_microseconds_per_message for run in runs])),
                f"{format_ratio(ratio)} ({scenario.ratio_metric})" if ratio is not None else "n/a",
                f">= {target:.1f}" if target is not None else "",
                bench_report.judge_target(ratio, target) if target is not None else "",
            ]
        )
    return rows


THROUGHPUT_HEADERS = (
    "Scenario",
    "Server",
    "msg/s",
    "msg/s range",
    "MB/s",
    "CPU µs/msg",
    "vs smtp-sink",
    "Target",
    "Result",
)
THROUGHPUT_ALIGNMENT = (False, False, True, True, True, True, True, False, False)


@dataclass(frozen=True)
class MemoryResult:
    sessions: int
    baseline_kib: int
    loaded_kib: int

    @property
    def kib_per_session(self) -> float:
        return (self.loaded_kib - self.baseline_kib) / self.sessions


async def _hold_sessions(server: RunningServer, sessions: int, timeout: float) -> int:
    """Open the sessions, let the server settle, and return its tree RSS with them open."""
    holder = IdleSessions()
    try:
        await holder.open(server.port, sessions, timeout)
        await asyncio.sleep(1.0)
        return bench_proc.tree_rss_kib(server.pid)
    finally:
        await holder.close()


def measure_memory(variant: Variant, settings: Settings) -> MemoryResult:
    """Measure the growth of the server's RSS with `settings.sessions` idle sessions open."""
    # smtp-sink leaves connections beyond its -m limit in the listen queue without a greeting.
    server = RunningServer(variant, max_connections=settings.sessions + 64)
    try:
        server.wait_ready()
        time.sleep(0.5)
        baseline = bench_proc.tree_rss_kib(server.pid)
        try:
            loaded = asyncio.run(_hold_sessions(server, settings.sessions, settings.run_timeout))
        except BenchError as error:
            raise BenchError(f"{variant.label}: {error}{server.exit_note()}") from None
        if server.process.poll() is not None:
            raise BenchError(
                f"{variant.label} exited while sessions were open{server.exit_note()}."
                f" Its stderr:\n{server.stderr_tail()}"
            )
    finally:
        server.stop()
        server.cleanup()
    result = MemoryResult(settings.sessions, baseline, loaded)
    log(
        f"memory {variant.label}: {result.baseline_kib / 1024:.1f} MiB idle, "
        f"{result.loaded_kib / 1024:.1f} MiB with {result.sessions} sessions, "
        f"{result.kib_per_session:.2f} KiB per session"
    )
    return result


def memory_table(results: dict[Variant, MemoryResult | BenchError]) -> str:
    """Format the memory results; a server whose measurement failed gets a row of "failed"."""
    rows = []
    for variant, result in results.items():
        if isinstance(result, BenchError):
            rows.append([variant.label, "failed", "", "", ""])
        else:
            rows.append(
                [
                    variant.label,
                    str(result.sessions),
                    f"{result.baseline_kib / 1024:.1f}",
                    f"{result.loaded_kib / 1024:.1f}",
                    f"{result.kib_per_session:.2f}",
                ]
            )
    return bench_report.markdown_table(
        ("Server", "Sessions", "RSS idle MiB", "RSS with sessions MiB", "KiB/session"),
        rows,
        (False, True, True, True, True),
    )


def scaling_table(results: dict[Variant, list[LoadResult]]) -> str:
    variants = list(results)
    first = results[variants[0]]
    rows = []
    for variant in variants:
        runs = results[variant]
        speedup = bench_report.paired_ratio(
            [run.messages_per_second for run in runs], [run.messages_per_second for run in first]
        )
        rows.append(
            [
                str(variant.workers),
                format_rate(median([run.messages_per_second for run in runs])),
                rate_range(runs),
                format_decimal(median([run.cpu_microseconds_per_message for run in runs])),
                format_ratio(speedup),
            ]
        )
    return bench_report.markdown_table(
        (
            "Workers",
            "msg/s",
            "msg/s range",
            "CPU µs/msg",
            f"vs {plural(variants[0].workers or 1, 'worker')}",
        ),
        rows,
        (True, True, True, True, True),
    )


def command_line(argv: list[str]) -> str:
    """Return the command that started this benchmark, with the interpreter path shortened."""
    executable = sys.executable
    try:
        relative = os.path.relpath(executable)
        if not relative.startswith(".."):
            executable = relative
    except ValueError:
        pass
    return shlex.join([executable, "-m", "loadtest.bench", *argv])


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def settings_text(settings: Settings) -> str:
    counts = ", ".join(
        f"{scenario.name} {scaled(scenario.messages, settings.scale)}"
        for scenario in SCENARIOS
        if scenario.name in settings.phases
    )
    parts = []
    if set(settings.phases) - {"memory", METRICS_COST}:
        parts.append(plural(settings.rounds, "round"))
    if "sink" in settings.servers:
        parts.append(f"sink workers {settings.workers}")
    if counts:
        parts.append(f"messages per run: {counts}")
    if "sink" in settings.servers and any(
        True in scenario.spool_settings
        for scenario in SCENARIOS
        if scenario.name in settings.phases
    ):
        spool_parent = settings.spool_parent or tempfile.gettempdir()
        parts.append(f"spools under {spool_parent} ({bench_report.filesystem_type(spool_parent)})")
    if "memory" in settings.phases:
        parts.append(f"{settings.sessions} idle sessions")
    if "scaling" in settings.phases and "sink" in settings.servers:
        parts.append("scaling workers " + ",".join(map(str, settings.scaling_workers)))
    return "; ".join(parts)


METHOD_NOTES = """\
Each run starts a fresh server on a free port of 127.0.0.1 and runs `smtp-source FLAGS -m COUNT
-M bench.invalid 127.0.0.1:PORT`; its exit status 0 shows that every message got a 2xx reply.
msg/s and MB/s divide by the wall time of smtp-source; MB/s counts the `-l` payload only (10^6
bytes, headers not counted). CPU µs/msg is the user and system time of the server's whole
process tree (the sink's master and workers) from /proc/PID/stat, read before the run and 0.2 s
after it. Values are medians over the rounds, and the range gives the lowest and highest msg/s
of the rounds. The ratio to smtp-sink is the median of the per-round ratios, so it may differ
from the ratio of the two medians shown. The spool-on sink uses `--spool DIR --fsync interval`
on a temporary directory, and after each such run the benchmark checks that the spool contains
one record per message. The sink serves its metrics on a free port, and after each run the
benchmark checks that it counted every message as accepted. smtp-source and the servers share
the machine's cores."""


QUICK_NOTE = (
    "A smoke run (--quick): too few messages and rounds to compare or judge anything. The "
    "numbers only show that each phase works.\n"
)


def header_sections(argv: list[str], started: datetime.datetime, quick: bool = False) -> list[str]:
    """Return the paragraphs that open a results section: when, by which command, where."""
    sections = [
        f"Measured on {started:%Y-%m-%d %H:%M} UTC by\n\n    {command_line(argv)}\n",
        f"Machine: {bench_report.machine_description()}.\n",
    ]
    if quick:
        sections.append(QUICK_NOTE)
    return sections


def report_text(
    settings: Settings,
    argv: list[str],
    started: datetime.datetime,
    throughput: list[list[str]],
    memory: dict[Variant, MemoryResult | BenchError],
    scaling: dict[Variant, list[LoadResult]],
) -> str:
    sections = [
        *header_sections(argv, started, settings.quick),
        f"Settings: {settings_text(settings)}.\n",
    ]
    if throughput:
        table = bench_report.markdown_table(THROUGHPUT_HEADERS, throughput, THROUGHPUT_ALIGNMENT)
        judged = [row[8] for row in throughput if row[7]]
        met = sum(1 for result in judged if result.startswith("met"))
        summary = f"Targets met: {met} of {len(judged)}.\n\n" if judged else ""
        sections.append(f"### Throughput\n\n{table}\n\n{summary}{METHOD_NOTES}\n")
    if memory:
        failures = "".join(
            f"The measurement of {variant.label} failed: {result}\n\n"
            for variant, result in memory.items()
            if isinstance(result, BenchError)
        )
        sections.append(
            "### Memory per idle session\n\n"
            + memory_table(memory)
            + "\n\n"
            + failures
            + "The benchmark process opens the sessions, reads the greeting, sends EHLO, reads\n"
            "the reply and leaves each session idle. KiB/session is the growth of the summed\n"
            "VmRSS of the server's process tree, divided by the session count; the sink's\n"
            "workers share the sessions.\n"
        )
    if scaling:
        sections.append(
            f"### Sink scaling, `{SCALING_SCENARIO.flag_text}`, spool off\n\n"
            + scaling_table(scaling)
            + "\n"
        )
    return "## Results\n\n" + "\n".join(sections)


def run_metrics_cost(settings: Settings, commit: str) -> bench_metrics.MetricsCostResult:
    """Run the metrics-cost phase against `commit`, in a worktree removed at the end."""
    current = SinkSource("current", PROJECT_ROOT, metrics=True)
    current_description = bench_metrics.describe_checkout(PROJECT_ROOT)
    short = bench_metrics.run_git(PROJECT_ROOT, "rev-parse", "--short", commit)
    with bench_metrics.baseline_worktree(PROJECT_ROOT, commit) as tree:
        log(f"{METRICS_COST}: baseline {short} checked out in {tree}")
        baseline = SinkSource(short, tree, metrics=False)
        for source in (current, baseline):
            bench_metrics.verify_source(source, settings.run_timeout)
        variants = [
            Variant("sink", False, bench_metrics.WORKERS, source) for source in (current, baseline)
        ]
        messages = scaled(bench_metrics.MESSAGES, settings.scale)
        rounds = settings.rounds * bench_metrics.ROUNDS_FACTOR
        flags = list(bench_metrics.FLAGS)
        results = run_alternating(METRICS_COST, flags, messages, variants, settings, rounds)
        concurrent = run_concurrent(METRICS_COST, flags, messages, variants, settings, rounds)
        session_messages = scaled(bench_metrics.SESSION_MESSAGES, settings.scale)
        sessions = bench_metrics.time_sessions(
            [current, baseline],
            bench_metrics.SESSION_ROUNDS,
            session_messages,
            settings.run_timeout,
        )
    return bench_metrics.MetricsCostResult(
        current=current,
        baseline=baseline,
        baseline_commit=commit,
        current_description=current_description,
        workers=bench_metrics.WORKERS,
        messages=messages,
        throughput={variant.source: runs for variant, runs in results.items() if variant.source},
        concurrent={variant.source: runs for variant, runs in concurrent.items() if variant.source},
        sessions=sessions,
        session_messages=session_messages,
    )


def metrics_cost_text(
    settings: Settings,
    argv: list[str],
    started: datetime.datetime,
    result: bench_metrics.MetricsCostResult,
) -> str:
    header = "\n".join(
        [
            *header_sections(argv, started, settings.quick),
            f"Settings: {plural(len(result.throughput[result.current]), 'round')}; sink workers "
            f"{result.workers}; {result.messages} messages per run; session timing "
            f"{result.session_messages} messages per run.\n",
        ]
    )
    return bench_metrics.report_section(result, header)


def run(settings: Settings, argv: list[str]) -> int:
    started = datetime.datetime.now(datetime.UTC)
    find_postfix_tool("smtp-source")
    if "smtp-sink" in settings.servers:
        find_postfix_tool("smtp-sink")
    raise_open_file_limit()

    # Resolve the baseline first, so that a bad --metrics-baseline fails before the long phases.
    metrics_cost = METRICS_COST in settings.phases and "sink" in settings.servers
    if METRICS_COST in settings.phases and not metrics_cost:
        log(f"bench: skipping {METRICS_COST}, which runs only the sink")
    if metrics_cost:
        baseline_commit = bench_metrics.resolve_commit(PROJECT_ROOT, settings.metrics_baseline)

    throughput: list[list[str]] = []
    for scenario in SCENARIOS:
        if scenario.name not in settings.phases:
            continue
        variants = scenario_variants(scenario, settings)
        results = run_rounds(
            scenario.name,
            list(scenario.flags),
            scaled(scenario.messages, settings.scale),
            variants,
            settings,
        )
        throughput += throughput_rows(scenario, results)

    # A failed memory measurement is reported in the table and in the exit status, and the
    # benchmark goes on, so that the throughput results gathered before it are not lost.
    memory: dict[Variant, MemoryResult | BenchError] = {}
    if "memory" in settings.phases:
        check_descriptor_budget(settings.sessions)
        for server in settings.servers:
            variant = Variant(server, False, settings.workers if server == "sink" else None)
            try:
                memory[variant] = measure_memory(variant, settings)
            except BenchError as error:
                log(f"bench: {error}")
                memory[variant] = error

    scaling: dict[Variant, list[LoadResult]] = {}
    if "scaling" in settings.phases and "sink" in settings.servers:
        variants = [Variant("sink", False, workers) for workers in settings.scaling_workers]
        scaling = run_rounds(
            "scaling",
            list(SCALING_SCENARIO.flags),
            scaled(SCALING_SCENARIO.messages, settings.scale),
            variants,
            settings,
        )

    if [phase for phase in settings.phases if phase != METRICS_COST]:
        text = report_text(settings, argv, started, throughput, memory, scaling)
        print(text)
        if settings.output is not None:
            bench_report.write_results(settings.output, text)
            log(f"wrote the results to {settings.output}")

    if metrics_cost:
        result = run_metrics_cost(settings, baseline_commit)
        text = metrics_cost_text(settings, argv, started, result)
        print(text)
        if settings.output is not None:
            bench_report.write_results(
                settings.output,
                text,
                bench_report.METRICS_COST_BEGIN_MARKER,
                bench_report.METRICS_COST_END_MARKER,
            )
            log(f"wrote the {METRICS_COST} results to {settings.output}")
    failed = [variant.label for variant, result in memory.items() if isinstance(result, BenchError)]
    if failed:
        log(f"bench: the memory measurement failed for {', '.join(failed)}; see above")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    settings = resolve_settings(args)
    try:
        return run(settings, argv)
    except BenchError as error:
        log(f"bench: {error}")
        return 1
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
