"""The benchmark harness in loadtest/: summaries, the docs section, /proc readings, a smoke run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The installed package is only `sink`; loadtest/ is imported from the checkout, as
# `python -m loadtest.bench` does from the project root.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from loadtest import (  # noqa: E402
    bench,
    bench_metrics,
    bench_proc,
    bench_report,
    bench_servers,
    bench_session_timing,
)
from loadtest.bench_report import (  # noqa: E402
    BEGIN_MARKER,
    END_MARKER,
    METRICS_COST_BEGIN_MARKER,
    METRICS_COST_END_MARKER,
)
from loadtest.bench_servers import BenchError, LoadResult, SinkSource, Variant  # noqa: E402


def test_median_odd_and_even() -> None:
    assert bench_report.median([3.0, 1.0, 2.0]) == 2.0
    assert bench_report.median([4.0, 1.0, 3.0, 2.0]) == 2.5


def test_median_empty_raises() -> None:
    with pytest.raises(ValueError):
        bench_report.median([])


def test_paired_ratio_uses_rounds() -> None:
    # The per-round ratios are 2.0, 0.5 and 2.0, so their median is 2.0, while the ratio of the
    # two medians would be 20 / 20 = 1.0.
    assert bench_report.paired_ratio([20.0, 10.0, 40.0], [10.0, 20.0, 20.0]) == 2.0


def test_paired_ratio_length_mismatch() -> None:
    with pytest.raises(ValueError):
        bench_report.paired_ratio([1.0, 2.0], [1.0])


def test_judge_target_met_and_missed() -> None:
    assert bench_report.judge_target(1.25, 1.0) == "met, 0.25 above"
    assert bench_report.judge_target(1.0, 1.0) == "met, 0.00 above"
    assert bench_report.judge_target(0.81, 0.9) == "missed, 0.09 below (10% short)"
    assert bench_report.judge_target(None, 0.9) == "not measured"


def test_number_formatting() -> None:
    assert bench_report.format_rate(31250.4) == "31,250"
    assert bench_report.format_decimal(5.66) == "5.7"
    assert bench_report.format_decimal(1234.5) == "1,234"
    assert bench_report.format_ratio(0.916) == "0.92"
    assert bench_report.format_ratio(None) == "n/a"


def test_markdown_table_pads_and_aligns() -> None:
    table = bench_report.markdown_table(
        ("Server", "msg/s"), [["sink", "31,250"], ["smtp-sink", "9"]], (False, True)
    )
    assert table.splitlines() == [
        "| Server    |  msg/s |",
        "| --------- | -----: |",
        "| sink      | 31,250 |",
        "| smtp-sink |      9 |",
    ]


def test_markdown_table_rejects_short_row() -> None:
    with pytest.raises(ValueError):
        bench_report.markdown_table(("a", "b"), [["only one"]], (False, False))


def test_marked_section_replaced() -> None:
    text = f"# Title\n\nBefore.\n\n{BEGIN_MARKER}\nold results\n{END_MARKER}\n\nAfter.\n"
    updated = bench_report.replace_marked_section(text, "new results\n")
    assert updated == f"# Title\n\nBefore.\n\n{BEGIN_MARKER}\nnew results\n{END_MARKER}\n\nAfter.\n"


def test_marked_section_appended_without_markers() -> None:
    updated = bench_report.replace_marked_section("# Title\n", "results")
    assert updated == f"# Title\n\n{BEGIN_MARKER}\nresults\n{END_MARKER}\n"


@pytest.mark.parametrize(
    "text",
    [
        f"{BEGIN_MARKER}\nno end marker\n",
        f"no begin marker\n{END_MARKER}\n",
        f"{END_MARKER}\nreversed\n{BEGIN_MARKER}\n",
    ],
)
def test_marked_section_broken_markers(text: str) -> None:
    with pytest.raises(ValueError):
        bench_report.replace_marked_section(text, "results")


def test_write_results_creates_file(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "benchmarks.md"
    bench_report.write_results(path, "first")
    text = path.read_text()
    assert text.startswith(bench_report.DOCS_INTRO)
    assert f"{BEGIN_MARKER}\nfirst\n{END_MARKER}\n" in text


def test_write_results_keeps_outside_text(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(f"Intro kept.\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\nNotes kept.\n")
    bench_report.write_results(path, "second")
    assert path.read_text() == (
        f"Intro kept.\n\n{BEGIN_MARKER}\nsecond\n{END_MARKER}\n\nNotes kept.\n"
    )


def test_metrics_cost_markers_keep_main_section(tmp_path: Path) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(
        f"Intro.\n\n{BEGIN_MARKER}\nmain\n{END_MARKER}\n\n"
        f"{METRICS_COST_BEGIN_MARKER}\nold cost\n{METRICS_COST_END_MARKER}\n\nNotes.\n"
    )
    bench_report.write_results(path, "new cost", METRICS_COST_BEGIN_MARKER, METRICS_COST_END_MARKER)
    bench_report.write_results(path, "new main")
    assert path.read_text() == (
        f"Intro.\n\n{BEGIN_MARKER}\nnew main\n{END_MARKER}\n\n"
        f"{METRICS_COST_BEGIN_MARKER}\nnew cost\n{METRICS_COST_END_MARKER}\n\nNotes.\n"
    )


def test_metrics_cost_markers_appended_when_missing() -> None:
    text = f"{BEGIN_MARKER}\nmain\n{END_MARKER}\n"
    updated = bench_report.replace_marked_section(
        text, "cost", METRICS_COST_BEGIN_MARKER, METRICS_COST_END_MARKER
    )
    assert updated == f"{text}\n{METRICS_COST_BEGIN_MARKER}\ncost\n{METRICS_COST_END_MARKER}\n"


def test_docs_have_both_marker_pairs() -> None:
    text = (PROJECT_ROOT / "docs" / "benchmarks.md").read_text()
    for marker in (BEGIN_MARKER, END_MARKER, METRICS_COST_BEGIN_MARKER, METRICS_COST_END_MARKER):
        assert text.count(marker) == 1, marker
    assert text.index(END_MARKER) < text.index(METRICS_COST_BEGIN_MARKER)


def test_filesystem_type_of_proc() -> None:
    assert bench_report.filesystem_type("/proc/self") == "proc"


def test_parse_stat_odd_command_name() -> None:
    # Fields after the name: state, ppid, pgrp, session, tty_nr, tpgid, flags, minflt, cminflt,
    # majflt, cmajflt, utime, stime, cutime, cstime, ...
    line = "4242 (a) b (c) S 17 4242 4242 0 -1 4194560 10 0 0 0 31 7 5 3 20 0 1 0\n"
    times = bench_proc.parse_stat(line)
    assert times.pid == 4242
    assert times.parent_pid == 17
    assert (times.user, times.system) == (31, 7)
    assert (times.children_user, times.children_system) == (5, 3)
    assert times.total == 46


def test_cpu_ticks_of_own_process_grow() -> None:
    before = bench_proc.tree_cpu_ticks(os.getpid())
    # Spin until the kernel has charged at least one more tick; the bound only stops a broken
    # reading from looping forever.
    for _ in range(10_000):
        sum(range(20_000))
        if bench_proc.tree_cpu_ticks(os.getpid()) > before:
            break
    assert bench_proc.tree_cpu_ticks(os.getpid()) > before


def test_run_nanoseconds_count_busy_thread() -> None:
    before = bench_proc.tree_run_nanoseconds(os.getpid())
    started = time.thread_time_ns()
    while time.thread_time_ns() - started < 50_000_000:
        sum(range(1_000))
    used = bench_proc.tree_run_nanoseconds(os.getpid()) - before

    # This thread ran for at least 50 ms. The kernel may not have added the last few
    # milliseconds of a running thread yet, hence the lower bound of 40 ms.
    assert used >= 40_000_000
    assert bench_proc.read_run_nanoseconds(os.getpid()) >= used


def test_process_tree_includes_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids = [times.pid for times in bench_proc.process_tree(os.getpid())]
        assert pids[0] == os.getpid()
        assert child.pid in pids
    finally:
        child.kill()
        child.wait()


def test_process_tree_of_missing_pid_is_empty() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert bench_proc.process_tree(child.pid) == []
    assert bench_proc.tree_cpu_ticks(child.pid) == 0
    assert bench_proc.tree_run_nanoseconds(child.pid) == 0
    assert bench_proc.read_run_nanoseconds(child.pid) == 0
    assert bench_proc.tree_rss_kib(child.pid) == 0


def test_rss_of_own_process() -> None:
    assert bench_proc.read_rss_kib(os.getpid()) > 0
    assert bench_proc.tree_rss_kib(os.getpid()) >= bench_proc.read_rss_kib(os.getpid())


def test_rotated_starts_each_round_elsewhere() -> None:
    variants = [Variant("sink"), Variant("smtp-sink"), Variant("aiosmtpd")]
    firsts = [bench.rotated(variants, shift)[0] for shift in range(3)]
    assert firsts == variants
    assert sorted(bench.rotated(variants, 1), key=variants.index) == variants
    assert bench.rotated([], 2) == []


def test_variant_labels() -> None:
    assert Variant("sink", spool=False, workers=2).label == "sink, spool off, 2 workers"
    assert Variant("sink", spool=True, workers=1).label == "sink, spool on, 1 worker"
    assert Variant("smtp-sink").label == "smtp-sink"


def test_variant_label_and_metrics_of_source(tmp_path: Path) -> None:
    baseline = SinkSource("3bbff3c", tmp_path, metrics=False)
    current = SinkSource("current", PROJECT_ROOT, metrics=True)
    assert Variant("sink", False, 2, baseline).label == "sink 3bbff3c, spool off, 2 workers"
    assert not Variant("sink", False, 2, baseline).exports_metrics
    assert Variant("sink", False, 2, current).exports_metrics
    assert Variant("sink").exports_metrics
    assert not Variant("smtp-sink").exports_metrics


def test_server_command_of_source_tree(tmp_path: Path) -> None:
    source = SinkSource("3bbff3c", tmp_path, metrics=False)
    command = bench_servers.server_command(Variant("sink", False, 2, source), 2525, None, 256)
    assert command[:4] == [sys.executable, "-m", "sink", "serve"]
    assert "--metrics-listen" not in command
    assert command[command.index("--workers") + 1] == "2"
    assert bench_servers.source_environment(source)["PYTHONPATH"] == str(tmp_path)


def test_server_command_passes_metrics_port() -> None:
    command = bench_servers.server_command(Variant("sink", False, 1), 2525, None, 256, 9999)
    assert command[command.index("--metrics-listen") + 1] == "127.0.0.1:9999"
    assert command[command.index("--listen") + 1] == "127.0.0.1:2525"


def test_free_port_except_differs() -> None:
    taken = bench_servers.free_port()
    assert bench_servers.free_port_except(taken) != taken


def test_metric_sample_by_labels() -> None:
    text = (
        "# TYPE smtp_sink_messages_total counter\n"
        'smtp_sink_messages_total{outcome="refused"} 3.0\n'
        'smtp_sink_messages_total{outcome="accepted"} 50000.0\n'
        'smtp_sink_recipients_total{outcome="accepted"} 7.0 1700000000000\n'
    )
    assert bench_servers.metric_sample(text, bench_servers.ACCEPTED_MESSAGES_SAMPLE) == 50000.0
    sample = 'smtp_sink_recipients_total{outcome="accepted"}'
    assert bench_servers.metric_sample(text, sample) == 7.0
    assert bench_servers.metric_sample(text, "smtp_sink_messages_total") is None


def test_load_result_rates() -> None:
    result = LoadResult(
        messages=2000, payload_bytes=1_000_000, wall_seconds=4.0, server_cpu_seconds=0.5
    )
    assert result.messages_per_second == 500.0
    assert result.megabytes_per_second == 500.0
    assert result.cpu_microseconds_per_message == 250.0


def test_throughput_rows_ratio_and_target() -> None:
    scenario = bench.SCENARIOS_BY_NAME["persistent-1k"]
    sink_off = Variant("sink", False, 2)
    sink_on = Variant("sink", True, 2)

    def runs(*walls: float) -> list[LoadResult]:
        return [LoadResult(1000, 1024, wall, 0.1) for wall in walls]

    results = {
        sink_off: runs(0.5, 0.5, 0.5),
        sink_on: runs(2.0, 2.0, 2.0),
        bench.BASELINE: runs(1.0, 1.0, 1.0),
    }
    rows = {row[1]: row for row in bench.throughput_rows(scenario, results)}
    sink_off_row = rows["sink, spool off, 2 workers"]
    assert sink_off_row[2] == "2,000"
    assert sink_off_row[3] == "2,000-2,000"
    assert sink_off_row[6] == "2.00 (msg/s)"
    assert sink_off_row[7] == ">= 1.0"
    assert sink_off_row[8] == "met, 1.00 above"
    assert rows["sink, spool on, 2 workers"][8] == "missed, 0.40 below (44% short)"
    assert rows["smtp-sink"][6] == "1.00 (msg/s)"
    assert rows["smtp-sink"][8] == ""


def test_rate_range_lowest_to_highest() -> None:
    runs = [LoadResult(1000, 1024, wall, 0.1) for wall in (0.5, 2.0, 1.0)]
    assert bench.rate_range(runs) == "500-2,000"


def test_throughput_rows_without_baseline() -> None:
    scenario = bench.SCENARIOS_BY_NAME["persistent-1m"]
    results = {Variant("sink", False, 2): [LoadResult(10, 1_000_000, 1.0, 0.1)]}
    [row] = bench.throughput_rows(scenario, results)
    assert row[6] == "n/a"
    assert row[8] == "not measured"


def test_memory_table_marks_failure() -> None:
    results = {
        Variant("aiosmtpd"): bench.MemoryResult(sessions=100, baseline_kib=2048, loaded_kib=3072),
        Variant("smtp-sink"): BenchError("3 of 100 sessions failed"),
    }
    lines = bench.memory_table(results).splitlines()
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells == ["aiosmtpd", "100", "2.0", "3.0", "10.24"]
    assert lines[3].startswith("| smtp-sink |   failed |")


def test_describe_status_names_signal() -> None:
    assert bench_servers.describe_status(1) == "status 1"
    assert bench_servers.describe_status(-15) == "signal SIGTERM"


def test_settings_quick_does_not_write() -> None:
    settings = bench.resolve_settings(bench.build_parser().parse_args(["--quick"]))
    assert settings.output is None
    assert settings.rounds == 1
    assert settings.scale == bench.QUICK_SCALE


def test_settings_default_writes_docs() -> None:
    settings = bench.resolve_settings(bench.build_parser().parse_args([]))
    assert settings.output == PROJECT_ROOT / "docs" / "benchmarks.md"
    assert settings.rounds == bench.DEFAULT_ROUNDS
    assert settings.phases == list(bench.PHASES)


def test_settings_metrics_baseline() -> None:
    default = bench.resolve_settings(bench.build_parser().parse_args([]))
    assert default.metrics_baseline == "3bbff3c"
    assert "metrics-cost" in default.phases
    args = bench.build_parser().parse_args(["--only", "metrics-cost", "--metrics-baseline", "v0.1"])
    settings = bench.resolve_settings(args)
    assert settings.phases == ["metrics-cost"]
    assert settings.metrics_baseline == "v0.1"


def test_settings_only_and_servers_lists() -> None:
    args = bench.build_parser().parse_args(
        [
            "--only",
            "persistent-1k,memory",
            "--only",
            "memory",
            "--servers",
            "aiosmtpd",
            "--no-write",
            "--rounds",
            "3",
        ]
    )
    settings = bench.resolve_settings(args)
    assert settings.phases == ["persistent-1k", "memory"]
    assert settings.servers == ["aiosmtpd"]
    assert settings.output is None
    assert settings.rounds == 3


def test_unknown_phase_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--only", "warp-speed"])
    assert "unknown phase 'warp-speed'" in capsys.readouterr().err


def test_missing_tool_names_postfix() -> None:
    with pytest.raises(BenchError, match="Debian package postfix"):
        bench_servers.find_postfix_tool("smtp-source-not-installed")


def test_failed_server_start_shows_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_command(*args: object) -> list[str]:
        script = "import sys; print('cannot open the spool', file=sys.stderr); sys.exit(3)"
        return [sys.executable, "-c", script]

    monkeypatch.setattr(bench_servers, "server_command", failing_command)
    server = bench_servers.RunningServer(Variant("sink", False, 1))
    try:
        with pytest.raises(BenchError) as raised:
            server.wait_ready(timeout=20)
    finally:
        server.stop()
        server.cleanup()
    message = str(raised.value)
    assert "exited with status 3" in message
    assert "cannot open the spool" in message


def find_smtp_source() -> str:
    path = shutil.which("smtp-source") or shutil.which("smtp-source", path="/usr/sbin")
    if path is None:
        message = "smtp-source not found: install the Debian package postfix"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.mark.real
@pytest.mark.timeout(60)
def test_quick_run_against_smtp_sink_and_aiosmtpd() -> None:
    find_smtp_source()
    docs = PROJECT_ROOT / "docs" / "benchmarks.md"
    docs_before = docs.read_bytes() if docs.exists() else None
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--quick",
            "--only",
            "persistent-1k,memory",
            "--servers",
            "smtp-sink,aiosmtpd",
            "--scale",
            "0.01",
            "--sessions",
            "50",
            "--no-write",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert completed.returncode == 0, completed.stderr
    number = r"[\d,.]+"
    for server in ("smtp-sink", "aiosmtpd"):
        row = (
            rf"\| `-s 20 -d -l 1024` +\| {server} +\| +{number} \| +{number}-{number} \| "
            rf"+{number} \| +{number} \|"
        )
        assert re.search(row, completed.stdout), completed.stdout
        memory_row = rf"\| {server} +\| +50 \| +{number} \| +{number} \| +-?{number} \|"
        assert re.search(memory_row, completed.stdout), completed.stdout
    messages = bench.scaled(bench.SCENARIOS_BY_NAME["persistent-1k"].messages, 0.01)
    assert f"round 1/1 persistent-1k smtp-sink: {messages} messages" in completed.stderr
    docs_after = docs.read_bytes() if docs.exists() else None
    assert docs_after == docs_before


# --- the metrics-cost phase -----------------------------------------------------------------


def cost_runs(*walls: float, cpu: float = 0.05) -> list[LoadResult]:
    """Return runs of 1000 messages with the given wall times and `cpu` seconds each."""
    return [LoadResult(1000, 1024, wall, cpu) for wall in walls]


def test_summarize_pairs_rounds() -> None:
    # Per-round msg/s ratios are 1.0, 0.5 and 0.98, so their median is 0.98.
    summary = bench_metrics.summarize(
        cost_runs(1.0, 2.0, 1.0, cpu=0.06), cost_runs(1.0, 1.0, 0.98, cpu=0.05)
    )
    assert summary.ratios == pytest.approx((1.0, 0.5, 0.98))
    assert summary.ratio == pytest.approx(0.98)
    assert summary.current_cpu == pytest.approx(60.0)
    assert summary.cpu_difference == pytest.approx(10.0)


def test_summarize_rejects_unpaired_runs() -> None:
    with pytest.raises(ValueError):
        bench_metrics.summarize(cost_runs(1.0), cost_runs(1.0, 1.0))
    with pytest.raises(ValueError):
        bench_metrics.summarize([], [])


def test_median_interval_order_statistics() -> None:
    values = [float(value) for value in range(15, 0, -1)]
    # For 15 values, P(Binomial(15, 1/2) <= 3) = 0.018 <= 0.025 < P(<= 4) = 0.059, so the 95%
    # interval runs from the 4th smallest value to the 4th largest.
    assert bench_metrics.median_interval(values, 0.95) == (4.0, 12.0)
    # Six values are the fewest with an interval at 95%: 2 / 64 = 0.031 of coverage is lost.
    assert bench_metrics.median_interval([3.0, 1.0, 2.0, 6.0, 5.0, 4.0], 0.95) == (1.0, 6.0)
    assert bench_metrics.median_interval([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) is None
    assert bench_metrics.median_interval([], 0.95) is None


def cost_summary(*ratios: float) -> bench_metrics.CostSummary:
    return bench_metrics.CostSummary(ratios=ratios, current_cpu=1, baseline_cpu=1)


def test_judge_budget_by_interval() -> None:
    met = cost_summary(0.98, 0.99, 0.975, 1.0, 0.985, 0.99, 0.98)
    assert bench_metrics.judge_budget(met, 0.03) == (
        "met; the median is 1.5% slower with metrics, and its 95% confidence interval, 0.975 "
        "to 1.000, lies at or above the 0.97 that a 3% drop allows"
    )
    missed = cost_summary(0.95, 0.9, 0.96, 0.93, 0.95, 0.969)
    assert bench_metrics.judge_budget(missed, 0.03).startswith("missed; the median is 5.0%")
    assert "0.900 to 0.969, lies below the 0.97" in bench_metrics.judge_budget(missed, 0.03)


def test_judge_budget_inconclusive_or_too_few() -> None:
    # A median within the budget does not count as met while the interval reaches below it.
    mixed = cost_summary(1.2, 0.9, 1.1, 0.99, 0.98, 1.0)
    assert bench_metrics.judge_budget(mixed, 0.03) == (
        "inconclusive; the median is 0.5% slower with metrics, and its 95% confidence interval, "
        "0.900 to 1.200, lies on both sides of the 0.97 that a 3% drop allows"
    )
    few = cost_summary(0.99, 1.0)
    assert bench_metrics.judge_budget(few, 0.03) == (
        "not judged, 2 rounds are too few for a 95% confidence interval of the median; the "
        "median is 0.5% slower with metrics"
    )
    assert bench_metrics.judge_budget(cost_summary(0.97), 0.03).startswith(
        "not judged, 1 round is too few"
    )


def test_estimated_drop_from_extra_cpu() -> None:
    # 2 µs more on 48 µs: the rate falls to 48/50 of the baseline, a drop of 4%.
    assert bench_metrics.estimated_drop(2.0, 48.0) == pytest.approx(0.04)
    text = bench_metrics.describe_session_estimate(2.0, 48.0, "3bbff3c")
    assert "adds +4.2% to the 3bbff3c sink's CPU per message" in text
    assert "estimated msg/s drop of 4.0%" in text
    assert text.endswith("over the 3% budget.")
    assert "within the 3% budget" in bench_metrics.describe_session_estimate(1.0, 48.0, "x")
    assert "predicts no drop" in bench_metrics.describe_session_estimate(-0.1, 48.0, "x")


def test_describe_rate_change() -> None:
    assert bench_metrics.describe_rate_change(0.985) == "1.5% slower"
    assert bench_metrics.describe_rate_change(1.004) == "0.4% faster"
    assert bench_metrics.describe_rate_change(1.0004) == "no change"


def test_format_difference_signs() -> None:
    assert bench_metrics.format_change(0.0172) == "+1.7%"
    assert bench_metrics.format_change(-0.004) == "-0.4%"
    assert bench_metrics.format_difference(49.6, 48.8) == "+0.80 µs (+1.6%)"
    assert bench_metrics.format_difference(10.0, 12.5) == "-2.50 µs (-20.0%)"


def test_is_inside_resolves_paths(tmp_path: Path) -> None:
    assert bench_metrics.is_inside(tmp_path / "sink" / "__init__.py", tmp_path)
    assert bench_metrics.is_inside(tmp_path / "sink" / ".." / "x", tmp_path)
    assert not bench_metrics.is_inside(tmp_path / ".." / "elsewhere", tmp_path)


def timing_output(sink_file: str) -> str:
    feeds = {"pipelined": 12.5, "lock-step": 14.0}
    return json.dumps({"sink": sink_file, "messages": 10, "microseconds_per_message": feeds})


def test_parse_session_timing(tmp_path: Path) -> None:
    source = SinkSource("3bbff3c", tmp_path, metrics=False)
    output = timing_output(str(tmp_path / "sink" / "__init__.py"))
    assert bench_metrics.parse_session_timing(output, source) == {
        "pipelined": 12.5,
        "lock-step": 14.0,
    }


def test_parse_session_timing_rejects_other_tree(tmp_path: Path) -> None:
    source = SinkSource("3bbff3c", tmp_path, metrics=False)
    with pytest.raises(BenchError, match="outside"):
        bench_metrics.parse_session_timing(timing_output("/elsewhere/sink/__init__.py"), source)
    with pytest.raises(BenchError, match="unexpected output"):
        bench_metrics.parse_session_timing("Traceback ...", source)
    with pytest.raises(BenchError, match="unexpected output"):
        bench_metrics.parse_session_timing('{"sink": "x"}', source)


def test_session_table_takes_best_round() -> None:
    table = bench_metrics.session_table(
        {"pipelined": [11.0, 10.0], "lock-step": [12.0, 13.0]},
        {"pipelined": [9.0, 8.0], "lock-step": [12.0, 15.0]},
        "3bbff3c",
    )
    lines = table.splitlines()
    assert "3bbff3c µs/msg" in lines[0]
    assert [cell.strip() for cell in lines[2].strip("|").split("|")] == [
        "pipelined, 64 KiB reads",
        "8.00",
        "10.00",
        "+2.00 µs (+25.0%)",
    ]
    assert lines[3].endswith(" +0.00 µs (+0.0%) |")


def test_report_section_states_verdict(tmp_path: Path) -> None:
    current = SinkSource("current", PROJECT_ROOT, metrics=True)
    baseline = SinkSource("3bbff3c", tmp_path, metrics=False)
    timings = {"pipelined": [10.0], "lock-step": [11.0]}
    result = bench_metrics.MetricsCostResult(
        current=current,
        baseline=baseline,
        baseline_commit="3bbff3c" + "0" * 33,
        current_description="abc1234",
        workers=2,
        messages=1000,
        throughput={current: cost_runs(1.0, 1.0), baseline: cost_runs(0.9, 1.0)},
        # CPU ratios, baseline / current: 0.05 / 0.04, 0.05 / 0.05 and 0.05 / 0.1.
        concurrent={
            current: cost_runs(1.0, 1.0, 1.0, cpu=0.04)[:1]
            + cost_runs(1.0, cpu=0.05)
            + cost_runs(1.0, cpu=0.1),
            baseline: cost_runs(1.0, 1.0, 1.0, cpu=0.05),
        },
        sessions={current: timings, baseline: timings},
        session_messages=20_000,
    )
    text = bench_metrics.report_section(result, "Measured now.\n")
    assert text.startswith("## Metrics cost\n\nMeasured now.\n\nCompared: the current sink")
    assert "| current, metrics on | 1,000 |" in text
    assert "| 3bbff3c, no metrics | 1,056 |" in text
    # The ratios are 0.9 and 1.0, so the median is 0.95, a drop of 5%.
    expected = (
        "not judged, 2 rounds are too few for a 95% confidence interval of the median; the "
        "median is 5.0% slower"
    )
    assert expected in " ".join(text.split())
    assert "### CPU per message, both sinks loaded at once" in text
    assert (
        "Budget of 3%, judged on the rounds with both sinks loaded at once: not judged."
        in " ".join(text.split())
    )
    assert re.search(r"\| current, metrics on +\| +50.0 \| +40.0-100 \|", text)
    # The CPU ratios are 1.25, 1.0 and 0.5, so the median is 1.0.
    joined = " ".join(text.split())
    assert "CPU per message, 3bbff3c / current: 1.000, the median" in joined
    # Per-round differences are -10, 0 and +50 µs; the median, 0, predicts no drop.
    assert (
        "The median per-round difference is +0.00 µs per message: the sink with metrics used "
        "no more CPU, which predicts no drop in msg/s."
    ) in joined
    assert "predicts no drop" in text
    assert max(len(line) for line in text.splitlines() if not line.startswith("|")) <= 96


def test_concurrent_difference_against_alone(tmp_path: Path) -> None:
    current = SinkSource("current", PROJECT_ROOT, metrics=True)
    baseline = SinkSource("3bbff3c", tmp_path, metrics=False)
    result = bench_metrics.MetricsCostResult(
        current=current,
        baseline=baseline,
        baseline_commit="3bbff3c" + "0" * 33,
        current_description="abc1234",
        workers=1,
        messages=1000,
        throughput={},
        concurrent={current: cost_runs(1.0, cpu=0.052), baseline: cost_runs(1.0, cpu=0.050)},
        sessions={},
        session_messages=0,
    )

    text = bench_metrics.describe_concurrent_difference(result, 48.0)

    # 2 µs more on 48 µs alone: the rate falls to 48/50 of the baseline, a drop of 4%.
    assert text.startswith("The median per-round difference is +2.00 µs per message.")
    assert "the baseline's 48.0 µs when loaded alone" in text
    assert text.endswith("an estimated msg/s drop of 4.0%, over the 3% budget.")


def test_session_timing_reads_cover_transactions() -> None:
    assert len(bench_session_timing.CONTENT) == 1000
    for make_reads in bench_session_timing.FEEDS.values():
        reads = make_reads(3)
        assert b"".join(reads) == bench_session_timing.TRANSACTION * 3
    assert len(bench_session_timing.lock_step_reads(2)) == 8
    assert max(len(read) for read in bench_session_timing.pipelined_reads(200)) == 65536


def test_session_timing_feed_accepts_every_message() -> None:
    session = bench_session_timing.new_session()
    sent = bench_session_timing.feed(session, bench_session_timing.pipelined_reads(100))
    bench_session_timing.check_replies(sent, 100)
    with pytest.raises(RuntimeError, match="unexpected replies"):
        bench_session_timing.check_replies(sent, 99)


def test_session_timing_script_output(tmp_path: Path) -> None:
    source = SinkSource("current", PROJECT_ROOT, metrics=True)
    output = bench_metrics.run_python(
        source,
        [str(bench_metrics.SESSION_SCRIPT), "--messages", "50", "--warm-up", "10"],
        timeout=60,
    )
    timings = bench_metrics.parse_session_timing(output, source)
    assert set(timings) == set(bench_metrics.SESSION_FEEDS)
    assert all(value > 0 for value in timings.values())


def fake_sink_tree(root: Path, help_text: str) -> Path:
    """Create a `sink` package whose `python -m sink` prints `help_text`."""
    package = root / "sink"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(f"print({help_text!r})\n")
    return root


def test_verify_source_rejects_baseline_with_metrics(tmp_path: Path) -> None:
    tree = fake_sink_tree(tmp_path, "usage: sink serve [--metrics-listen HOST:PORT]")
    with pytest.raises(BenchError, match="already has the --metrics-listen option"):
        bench_metrics.verify_source(SinkSource("fake", tree, metrics=False), timeout=60)
    bench_metrics.verify_source(SinkSource("fake", tree, metrics=True), timeout=60)


def test_verify_source_rejects_current_without_metrics(tmp_path: Path) -> None:
    tree = fake_sink_tree(tmp_path, "usage: sink serve [--listen HOST:PORT]")
    with pytest.raises(BenchError, match="has no --metrics-listen option"):
        bench_metrics.verify_source(SinkSource("fake", tree, metrics=True), timeout=60)
    bench_metrics.verify_source(SinkSource("fake", tree, metrics=False), timeout=60)


def test_verify_source_rejects_tree_without_package(tmp_path: Path) -> None:
    # Without a `sink` package in the tree, Python falls back to the installed checkout.
    with pytest.raises(BenchError, match="should come from"):
        bench_metrics.verify_source(SinkSource("empty", tmp_path, metrics=False), timeout=60)


def require_git_checkout() -> None:
    if shutil.which("git") is None or not (PROJECT_ROOT / ".git").exists():
        pytest.skip("the project is not a git checkout, or git is missing")


def test_resolve_commit_rejects_unknown_ref() -> None:
    require_git_checkout()
    with pytest.raises(BenchError, match="invalid --metrics-baseline 'no-such-ref'"):
        bench_metrics.resolve_commit(PROJECT_ROOT, "no-such-ref")
    assert len(bench_metrics.resolve_commit(PROJECT_ROOT, "HEAD")) == 40


def worktree_paths() -> list[str]:
    listing = bench_metrics.run_git(PROJECT_ROOT, "worktree", "list", "--porcelain")
    return [line.split(" ", 1)[1] for line in listing.splitlines() if line.startswith("worktree ")]


def test_baseline_worktree_removed_after_error() -> None:
    require_git_checkout()
    commit = bench_metrics.resolve_commit(PROJECT_ROOT, "HEAD")
    with pytest.raises(RuntimeError, match="stop here"):
        with bench_metrics.baseline_worktree(PROJECT_ROOT, commit) as tree:
            assert (tree / "sink" / "__init__.py").exists()
            assert str(tree) in worktree_paths()
            raise RuntimeError("stop here")
    assert not tree.exists()
    assert str(tree) not in worktree_paths()


def test_main_rejects_unknown_baseline(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_git_checkout()
    monkeypatch.setattr(bench, "find_postfix_tool", lambda name: name)
    status = bench.main(["--only", "metrics-cost", "--metrics-baseline", "no-such-ref"])
    assert status == 1
    assert "invalid --metrics-baseline 'no-such-ref'" in capsys.readouterr().err


@pytest.mark.real
@pytest.mark.timeout(120)
def test_quick_metrics_cost_run() -> None:
    find_smtp_source()
    require_git_checkout()
    try:
        bench_metrics.resolve_commit(PROJECT_ROOT, bench_metrics.DEFAULT_BASELINE)
    except BenchError:
        pytest.skip(f"the baseline {bench_metrics.DEFAULT_BASELINE} is not in this clone")

    worktrees_before = worktree_paths()
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench",
            "--quick",
            "--only",
            "metrics-cost",
            "--scale",
            "0.01",
            "--no-write",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )

    assert completed.returncode == 0, completed.stderr
    assert "## Metrics cost" in completed.stdout
    assert re.search(r"\| current, metrics on +\| +[\d,]+ \|", completed.stdout)
    assert re.search(r"\| 3bbff3c, no metrics +\| +[\d,]+ \|", completed.stdout)
    assert "Budget on these rounds: " in completed.stdout
    assert "A smoke run (--quick): too few messages and rounds" in completed.stdout
    assert "### CPU per message, both sinks loaded at once" in completed.stdout
    assert "| pipelined, 64 KiB reads " in completed.stdout
    # The phase runs twelve times the rounds of the others: 12 with --quick.
    assert "round 1/12 metrics-cost sink 3bbff3c, spool off" in completed.stderr
    assert "messages at once with the others" in completed.stderr
    assert worktree_paths() == worktrees_before
