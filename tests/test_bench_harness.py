"""The benchmark harness in loadtest/: summaries, the docs section, /proc readings, a smoke run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The installed package is only `sink`; loadtest/ is imported from the checkout, as
# `python -m loadtest.bench` does from the project root.
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

from loadtest import bench, bench_proc, bench_report, bench_servers  # noqa: E402
from loadtest.bench_report import BEGIN_MARKER, END_MARKER  # noqa: E402
from loadtest.bench_servers import BenchError, LoadResult, Variant  # noqa: E402


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
