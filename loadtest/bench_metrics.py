"""The metrics-cost phase of loadtest.bench: the sink with metrics against a commit without them.

The instrumentation cannot be switched off at run time, so "metrics off" is the sink's code
from before the metrics were added. The phase checks that commit out into a temporary git
worktree and runs both codes with the same Python: the checkout under test with its metrics
served on a free port, and the worktree with PYTHONPATH set to it. Before measuring, it checks
that each process imports the intended `sink` package and that only the current code has the
`--metrics-listen` option.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest import bench_report
from loadtest.bench_report import format_decimal, format_rate, median
from loadtest.bench_servers import (
    PROJECT_ROOT,
    BenchError,
    LoadResult,
    SinkSource,
    source_environment,
)

# The last commit before the metrics were added.
DEFAULT_BASELINE = "3bbff3c"

# The requirement: with metrics on, throughput drops by at most this fraction.
MAX_DROP = 0.03

# smtp-source flags of the phase: the highest message rate of the throughput phases, where a
# cost per message shows most. The runs use the spool off.
FLAGS = ("-s", "20", "-d", "-l", "1024")
MESSAGES = 20_000
# One worker, because with two the kernel spreads the 20 connections differently in every run,
# which moves msg/s by more than the budget.
WORKERS = 1
# The phase runs this many times the --rounds of the other phases, with both sinks kept
# running: the budget is small against this machine's noise, and the confidence interval of
# the median narrows with more rounds.
ROUNDS_FACTOR = 12
# The confidence of the interval around the median msg/s ratio that judges the budget.
CONFIDENCE = 0.95

SESSION_SCRIPT = PROJECT_ROOT / "loadtest" / "bench_session_timing.py"
SESSION_MESSAGES = 20_000
# Each round starts one timing process per code, in rotating order. The report gives the
# fastest round of each code.
SESSION_ROUNDS = 7
SESSION_FEEDS = {
    "pipelined": "pipelined, 64 KiB reads",
    "lock-step": "lock-step, one read per command",
}

GIT_TIMEOUT = 120.0


def run_git(repository: Path, *arguments: str) -> str:
    """Run git in `repository` and return its standard output, stripped.

    Raises BenchError with git's message when git is missing or fails.
    """
    git = shutil.which("git")
    if git is None:
        raise BenchError("git not found in PATH: the metrics-cost phase needs it")
    command = [git, "-C", str(repository), *arguments]
    try:
        completed = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=GIT_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"git timed out after {GIT_TIMEOUT:.0f} s: {' '.join(command)}") from None
    if completed.returncode != 0:
        raise BenchError(
            f"git failed with status {completed.returncode}: {' '.join(command)}\n"
            f"{completed.stderr.strip()}"
        )
    return completed.stdout.strip()


def resolve_commit(repository: Path, ref: str) -> str:
    """Return the full hash of the commit that `ref` names, or raise BenchError for a bad ref."""
    try:
        return run_git(repository, "rev-parse", "--verify", "--end-of-options", f"{ref}^{{commit}}")
    except BenchError as error:
        raise BenchError(
            f"invalid --metrics-baseline {ref!r}: not a commit of {repository} ({error})"
        ) from None


def describe_checkout(repository: Path) -> str:
    """Describe the code of the checkout: its HEAD, and whether sink/ has uncommitted changes."""
    head = run_git(repository, "rev-parse", "--short", "HEAD")
    changed = run_git(repository, "status", "--porcelain", "--", "sink")
    return f"{head} with uncommitted changes under sink/" if changed else head


@contextlib.contextmanager
def baseline_worktree(repository: Path, commit: str) -> Iterator[Path]:
    """Check `commit` out into a detached worktree in a new temporary directory.

    The worktree is removed with `git worktree remove --force` when the block ends, also on an
    error or KeyboardInterrupt. A process killed with SIGKILL leaves it behind, and then
    `git worktree prune` after deleting the directory cleans up.
    """
    tree = Path(tempfile.mkdtemp(prefix="sink-bench-baseline-"))
    try:
        run_git(repository, "worktree", "add", "--detach", str(tree), commit)
    except BaseException:
        shutil.rmtree(tree, ignore_errors=True)
        raise
    try:
        yield tree
    finally:
        try:
            run_git(repository, "worktree", "remove", "--force", str(tree))
        except BenchError as error:
            print(f"warning: removing the worktree {tree} failed: {error}", file=sys.stderr)
        shutil.rmtree(tree, ignore_errors=True)


def is_inside(path: str | Path, root: Path) -> bool:
    """Tell whether `path`, with symbolic links resolved, lies inside the directory `root`."""
    return Path(path).resolve().is_relative_to(root.resolve())


def run_python(source: SinkSource, arguments: Sequence[str], timeout: float) -> str:
    """Run the benchmark's Python as `source` runs the sink and return its standard output.

    Raises BenchError with the process's stderr when it fails or times out.
    """
    command = [sys.executable, *arguments]
    try:
        completed = subprocess.run(
            command,
            cwd=source.root,
            env=source_environment(source),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"{' '.join(command)} in {source.root} timed out after {timeout:.0f} s"
        ) from None
    if completed.returncode != 0:
        raise BenchError(
            f"{' '.join(command)} in {source.root} failed with status {completed.returncode}:\n"
            f"{completed.stderr.strip()}"
        )
    return completed.stdout


def verify_source(source: SinkSource, timeout: float) -> None:
    """Check that `python -m sink` started as for `source` runs the tree's own code.

    Raises BenchError when the imported `sink` package lies outside `source.root`, or when the
    presence of `--metrics-listen` in `sink serve --help` does not match `source.metrics`.
    """
    imported = run_python(source, ["-c", "import sink; print(sink.__file__)"], timeout).strip()
    if not is_inside(imported, source.root):
        raise BenchError(
            f"the {source.name} sink should come from {source.root}, but Python imported {imported}"
        )
    help_text = run_python(source, ["-m", "sink", "serve", "--help"], timeout)
    has_option = "--metrics-listen" in help_text
    if source.metrics and not has_option:
        raise BenchError(
            f"the {source.name} sink in {source.root} has no --metrics-listen option, so it "
            "does not export metrics"
        )
    if not source.metrics and has_option:
        raise BenchError(
            f"the baseline {source.name} already has the --metrics-listen option, so it counts "
            "metrics too: pass a commit from before the metrics with --metrics-baseline"
        )


def parse_session_timing(output: str, source: SinkSource) -> dict[str, float]:
    """Parse the JSON line of bench_session_timing.py and return µs per message by feed.

    Raises BenchError when the output is not the expected JSON, or when the script imported
    `sink` from outside `source.root`.
    """
    try:
        document = json.loads(output)
        imported = document["sink"]
        timings = {
            name: float(document["microseconds_per_message"][name]) for name in SESSION_FEEDS
        }
    except (ValueError, KeyError, TypeError) as error:
        raise BenchError(
            f"unexpected output of the session timing for {source.name} ({error}): {output!r}"
        ) from None
    if not is_inside(imported, source.root):
        raise BenchError(
            f"the session timing for {source.name} imported {imported}, outside {source.root}"
        )
    return timings


def time_sessions(
    sources: list[SinkSource], rounds: int, messages: int, timeout: float
) -> dict[SinkSource, dict[str, list[float]]]:
    """Time the session of each source in `rounds` rounds, the order rotating every round.

    Returns, for each source and feed, the µs per message of every round.
    """
    timings: dict[SinkSource, dict[str, list[float]]] = {
        source: {feed: [] for feed in SESSION_FEEDS} for source in sources
    }
    for round_index in range(rounds):
        shift = round_index % len(sources)
        for source in sources[shift:] + sources[:shift]:
            output = run_python(source, [str(SESSION_SCRIPT), "--messages", str(messages)], timeout)
            for feed, value in parse_session_timing(output, source).items():
                timings[source][feed].append(value)
            print(
                f"session timing round {round_index + 1}/{rounds} {source.name}: "
                + ", ".join(
                    f"{feed} {timings[source][feed][-1]:.2f} µs/msg" for feed in SESSION_FEEDS
                ),
                file=sys.stderr,
                flush=True,
            )
    return timings


@dataclass(frozen=True)
class CostSummary:
    """The throughput comparison of the current sink (metrics on) with the baseline.

    `ratios` are the per-round msg/s ratios, current / baseline, in round order: measured, or
    predicted from CPU time per message (see summarize_cpu). The CPU values are medians of the
    CPU µs per message.
    """

    ratios: tuple[float, ...]
    current_cpu: float
    baseline_cpu: float

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    @property
    def cpu_difference(self) -> float:
        """CPU µs per message of the current sink minus the baseline's, from the medians."""
        return self.current_cpu - self.baseline_cpu

    @property
    def interval(self) -> tuple[float, float] | None:
        """The CONFIDENCE interval of the median ratio, or None with too few rounds."""
        return median_interval(self.ratios, CONFIDENCE)


def median_interval(values: Sequence[float], confidence: float) -> tuple[float, float] | None:
    """Return a distribution-free confidence interval for the median of `values`.

    The interval runs from the k-th smallest to the k-th largest value. k is the largest number
    for which the chance that fewer than k values lie below the true median is at most
    (1 - confidence) / 2. That chance is a binomial tail with p = 1/2, as in the sign test.
    Returns None when even the smallest and largest value do not reach the confidence, which
    takes fewer than 6 values at 95%.
    """
    count = len(values)
    tail = (1 - confidence) / 2
    below = 0.0
    k = 0
    for index in range(count):
        below += math.comb(count, index) / 2**count
        if below > tail:
            break
        k = index + 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[count - k]


def summarize(current: list[LoadResult], baseline: list[LoadResult]) -> CostSummary:
    """Pair the runs of each round by msg/s, so index i of both lists must be the same round."""
    return _paired(
        current, baseline, lambda run, base: run.messages_per_second / base.messages_per_second
    )


def summarize_cpu(current: list[LoadResult], baseline: list[LoadResult]) -> CostSummary:
    """Pair the concurrent runs of each round by CPU time per message.

    The ratio of a round is the baseline's CPU per message over the current sink's: the msg/s
    ratio to expect when the sink's CPU time is what limits the rate.
    """
    return _paired(
        current,
        baseline,
        lambda run, base: base.cpu_microseconds_per_message / run.cpu_microseconds_per_message,
    )


def _paired(
    current: list[LoadResult],
    baseline: list[LoadResult],
    ratio: Callable[[LoadResult, LoadResult], float],
) -> CostSummary:
    if len(current) != len(baseline) or not current:
        raise ValueError(f"{len(current)} current runs but {len(baseline)} baseline runs")
    return CostSummary(
        ratios=tuple(ratio(run, base) for run, base in zip(current, baseline, strict=True)),
        current_cpu=median([run.cpu_microseconds_per_message for run in current]),
        baseline_cpu=median([run.cpu_microseconds_per_message for run in baseline]),
    )


def format_change(fraction: float) -> str:
    """Format a relative change with its sign and one decimal, e.g. "+1.7%" or "-0.4%"."""
    return f"{fraction * 100:+.1f}%"


def describe_rate_change(ratio: float) -> str:
    """Describe a ratio of msg/s as "1.5% slower", "0.4% faster" or "no change"."""
    change = (ratio - 1) * 100
    if round(change, 1) == 0:
        return "no change"
    return f"{abs(change):.1f}% " + ("slower" if change < 0 else "faster")


def budget_verdict(summary: CostSummary, max_drop: float) -> str:
    """Return "met", "missed", "inconclusive" or "not judged" (see judge_budget)."""
    interval = summary.interval
    if interval is None:
        return "not judged"
    low, high = interval
    if low >= 1 - max_drop:
        return "met"
    if high < 1 - max_drop:
        return "missed"
    return "inconclusive"


def judge_budget(summary: CostSummary, max_drop: float) -> str:
    """Judge the msg/s ratios against the allowed drop, by the confidence interval of the median.

    The verdict is "met" when the whole interval lies at or above 1 - max_drop, and "missed"
    when it lies below. It is "inconclusive" when the interval straddles that floor. Then the
    machine's noise is larger than the difference, and the median alone would decide by chance.
    """
    floor = 1 - max_drop
    change = describe_rate_change(summary.ratio)
    interval = summary.interval
    rounds = len(summary.ratios)
    verdict = budget_verdict(summary, max_drop)
    if interval is None:
        return (
            f"{verdict}, {rounds} {'round is' if rounds == 1 else 'rounds are'} too few for a "
            f"{CONFIDENCE:.0%} confidence interval of the median; the median is {change} with "
            "metrics"
        )
    low, high = interval
    return (
        f"{verdict}; the median is {change} with metrics, and its {CONFIDENCE:.0%} confidence "
        f"interval, {low:.3f} to {high:.3f}, lies {_placement(low, high, floor)} the "
        f"{floor:.2f} that a {max_drop:.0%} drop allows"
    )


def describe_ratios(summary: CostSummary) -> str:
    """Describe the median ratio with its range, e.g. "0.980, the median of ... (lowest ...)"."""
    ratios = summary.ratios
    rounds = len(ratios)
    return (
        f"{summary.ratio:.3f}, the median of the per-round ratios (lowest {min(ratios):.3f}, "
        f"highest {max(ratios):.3f}, {rounds} {'round' if rounds == 1 else 'rounds'})"
    )


def describe_width(summary: CostSummary) -> str:
    """Describe the width of the confidence interval, e.g. " (95% interval 0.010 wide)"."""
    interval = summary.interval
    if interval is None:
        return ""
    return f" ({CONFIDENCE:.0%} interval {interval[1] - interval[0]:.3f} wide)"


def _placement(low: float, high: float, floor: float) -> str:
    if low >= floor:
        return "at or above"
    if high < floor:
        return "below"
    return "on both sides of"


def estimated_drop(extra_microseconds: float, baseline_cpu: float) -> float:
    """Estimate the msg/s drop that `extra_microseconds` of CPU per message causes.

    On a CPU-bound load the message rate is inversely proportional to the CPU time per message,
    so the drop is extra / (baseline + extra).
    """
    return extra_microseconds / (baseline_cpu + extra_microseconds)


def describe_session_estimate(extra: float, baseline_cpu: float, baseline_name: str) -> str:
    """Relate the session's extra µs per message to the baseline's CPU per message under load."""
    if extra <= 0:
        return (
            f"The session with metrics was not slower in the lock-step feed ({extra:+.2f} µs per "
            "message), so its counting predicts no drop in msg/s."
        )
    drop = estimated_drop(extra, baseline_cpu)
    return (
        f"The lock-step difference, {extra:+.2f} µs per message, adds "
        f"{format_change(extra / baseline_cpu)} to the {baseline_name} sink's CPU per message "
        f"under load ({format_decimal(baseline_cpu)} µs, the median above). If the load is "
        f"CPU-bound, that is an estimated msg/s drop of {drop:.1%} from the session's counting "
        f"alone, {'within' if drop <= MAX_DROP else 'over'} the {MAX_DROP:.0%} budget."
    )


def throughput_table(
    results: dict[str, list[LoadResult]],
) -> str:
    """Format the medians and msg/s ranges of each code, keyed by its label."""
    rows = []
    for label, runs in results.items():
        rates = [run.messages_per_second for run in runs]
        rows.append(
            [
                label,
                format_rate(median(rates)),
                f"{format_rate(min(rates))}-{format_rate(max(rates))}",
                format_decimal(median([run.cpu_microseconds_per_message for run in runs])),
            ]
        )
    return bench_report.markdown_table(
        ("Sink", "msg/s", "msg/s range", "CPU µs/msg"), rows, (False, True, True, True)
    )


def describe_concurrent_difference(result: MetricsCostResult, alone_cpu: float) -> str:
    """Relate the extra CPU µs per message of the concurrent rounds to a sink loaded alone.

    With two sinks on two cores, each message costs more CPU than with one sink, so the same
    extra µs is a smaller share of it. Dividing the median per-round difference by the
    baseline's CPU per message in the sequential rounds (`alone_cpu`) gives the larger share.
    """
    current = result.concurrent[result.current]
    baseline = result.concurrent[result.baseline]
    extra = median(
        [
            run.cpu_microseconds_per_message - base.cpu_microseconds_per_message
            for run, base in zip(current, baseline, strict=True)
        ]
    )
    if extra <= 0:
        return (
            f"The median per-round difference is {extra:+.2f} µs per message: the sink with "
            "metrics used no more CPU, which predicts no drop in msg/s."
        )
    drop = estimated_drop(extra, alone_cpu)
    return (
        f"The median per-round difference is {extra:+.2f} µs per message. Against the "
        f"baseline's {format_decimal(alone_cpu)} µs when loaded alone (the sequential rounds "
        f"above), that is an estimated msg/s drop of {drop:.1%}, "
        f"{'within' if drop <= MAX_DROP else 'over'} the {MAX_DROP:.0%} budget."
    )


def cpu_table(results: dict[str, list[LoadResult]]) -> str:
    """Format the median and range of CPU µs per message of each code, keyed by its label."""
    rows = []
    for label, runs in results.items():
        values = [run.cpu_microseconds_per_message for run in runs]
        rows.append(
            [
                label,
                format_decimal(median(values)),
                f"{format_decimal(min(values))}-{format_decimal(max(values))}",
            ]
        )
    return bench_report.markdown_table(
        ("Sink", "CPU µs/msg", "CPU µs/msg range"), rows, (False, True, True)
    )


def format_difference(current: float, baseline: float) -> str:
    """Format current - baseline in µs and relative to the baseline, e.g. "+0.8 µs (+1.7%)"."""
    return f"{current - baseline:+.2f} µs ({format_change(current / baseline - 1)})"


def session_table(
    current: dict[str, list[float]], baseline: dict[str, list[float]], baseline_name: str
) -> str:
    """Format the best µs per message of each feed for both codes, and their difference."""
    rows = []
    for feed, title in SESSION_FEEDS.items():
        best_current = min(current[feed])
        best_baseline = min(baseline[feed])
        rows.append(
            [
                title,
                f"{best_baseline:.2f}",
                f"{best_current:.2f}",
                format_difference(best_current, best_baseline),
            ]
        )
    return bench_report.markdown_table(
        ("Feed", f"{baseline_name} µs/msg", "current µs/msg", "Difference"),
        rows,
        (False, True, True, True),
    )


@dataclass(frozen=True)
class MetricsCostResult:
    """Everything the metrics-cost phase measured, for its report section."""

    current: SinkSource
    baseline: SinkSource
    baseline_commit: str
    current_description: str
    workers: int
    messages: int
    throughput: dict[SinkSource, list[LoadResult]]
    concurrent: dict[SinkSource, list[LoadResult]]
    sessions: dict[SinkSource, dict[str, list[float]]]
    session_messages: int


def report_section(result: MetricsCostResult, header: str) -> str:
    """Format the Markdown section of the phase under `header`, which describes the run."""
    current = result.current
    baseline = result.baseline
    summary = summarize(result.throughput[current], result.throughput[baseline])
    compared = (
        f"Compared: the current sink (the checkout at {result.current_description}), which counts "
        f"metrics and serves them on a free port, against commit {baseline.name} "
        f"({result.baseline_commit}) from before the metrics. The baseline runs from a temporary "
        "git worktree with the same Python."
    )

    table = throughput_table(
        {
            "current, metrics on": result.throughput[current],
            f"{baseline.name}, no metrics": result.throughput[baseline],
        }
    )

    verdict = (
        f"msg/s, current / {baseline.name}: {describe_ratios(summary)}. "
        f"Budget on these rounds: {judge_budget(summary, MAX_DROP)}. CPU per message: "
        f"{format_difference(summary.current_cpu, summary.baseline_cpu)} between the medians. "
        f"Both sinks start once and stay up. After a warm-up, each round loads each sink once "
        f"with {result.messages} messages, in rotating order, measured as in the throughput "
        "phases. The confidence interval is the distribution-free "
        "one of the sign test, from the ordered ratios."
    )

    together = summarize_cpu(result.concurrent[current], result.concurrent[baseline])
    together_table = cpu_table(
        {
            "current, metrics on": result.concurrent[current],
            f"{baseline.name}, no metrics": result.concurrent[baseline],
        }
    )
    together_verdict = (
        f"CPU per message, {baseline.name} / current: {describe_ratios(together)}. "
        "On a load where the sink's CPU is the limit, as here, "
        "that is the msg/s ratio to expect. "
        f"Budget on these rounds: {judge_budget(together, MAX_DROP)}. "
        f"{describe_concurrent_difference(result, summary.baseline_cpu)} "
        f"In each round both sinks "
        f"get {result.messages} messages from two smtp-source processes started together, so "
        "a busy moment of the machine slows both alike. The CPU time of each sink's process "
        "tree comes from the nanosecond counters in /proc/PID/task/TID/schedstat. The wall "
        "times are not compared, because the sink that finishes first leaves the other more CPU."
    )

    outcome = (
        f"Budget of {MAX_DROP:.0%}, judged on the rounds with both sinks loaded at once: "
        f"{budget_verdict(together, MAX_DROP)}. There the median msg/s ratio that CPU time "
        f"predicts is {together.ratio:.3f}{describe_width(together)}. Loaded one at a time, "
        f"the sinks give a median msg/s ratio of {summary.ratio:.3f}"
        f"{describe_width(summary)}."
    )

    sessions = session_table(result.sessions[current], result.sessions[baseline], baseline.name)
    extra = min(result.sessions[current]["lock-step"]) - min(result.sessions[baseline]["lock-step"])
    estimate = describe_session_estimate(extra, summary.baseline_cpu, baseline.name)

    session_method = (
        f"`loadtest/bench_session_timing.py` feeds {result.session_messages} transactions (MAIL, "
        "RCPT, DATA, 1,000 octets and the final dot) through `sink.smtp.Session` with a "
        "`DiscardStore`, after EHLO and a warm-up, with the garbage collector off. The pipelined "
        "feed passes them back to back in 64 KiB reads; the lock-step feed passes one read per "
        "command and one for the content, as smtp-source sends them. Each value is the fastest "
        f"of {SESSION_ROUNDS} rounds, one process per code and round, in rotating order."
    )

    paragraphs = [
        "## Metrics cost",
        header.strip(),
        wrap(compared),
        wrap(outcome),
        f"### Throughput, `{' '.join(FLAGS)}`, spool off, "
        f"{result.workers} {'worker' if result.workers == 1 else 'workers'}",
        table,
        wrap(verdict),
        "### CPU per message, both sinks loaded at once",
        together_table,
        wrap(together_verdict),
        "### SMTP session alone, no sockets",
        sessions,
        wrap(estimate),
        wrap(session_method),
    ]
    return "\n\n".join(paragraphs) + "\n"


def wrap(paragraph: str) -> str:
    """Wrap prose at 96 columns, like the hand-written text of docs/benchmarks.md."""
    return textwrap.fill(paragraph, width=96, break_long_words=False, break_on_hyphens=False)
