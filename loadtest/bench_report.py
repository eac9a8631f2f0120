"""Summarize benchmark runs: medians, ratios, targets, Markdown tables and docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

BEGIN_MARKER = "<!-- bench:begin -->"
END_MARKER = "<!-- bench:end -->"
# The metrics-cost phase writes its results between markers of its own, so that a run of that
# phase alone keeps the other phases' results, and the other way round.
METRICS_COST_BEGIN_MARKER = "<!-- bench:metrics-cost:begin -->"
METRICS_COST_END_MARKER = "<!-- bench:metrics-cost:end -->"

DOCS_INTRO = """# Benchmarks

`make bench` (`python -m loadtest.bench`) runs Postfix's `smtp-source` against the sink, against
Postfix's `smtp-sink` and against aiosmtpd on uvloop, one server at a time on 127.0.0.1, and
writes its results between the markers below. `python -m loadtest.bench --help` lists the
options. Text outside the markers is kept when the results are rewritten.
"""


def median(values: Sequence[float]) -> float:
    """Return the median; raise ValueError for an empty sequence."""
    if not values:
        raise ValueError("median of an empty sequence")
    return statistics.median(values)


def paired_ratio(values: Sequence[float], baselines: Sequence[float]) -> float:
    """Return the median over rounds of values[i] / baselines[i].

    Each round runs every server back to back, so pairing the runs of one round cancels much of
    the slow drift of a shared machine that the ratio of two medians would keep.
    """
    if len(values) != len(baselines):
        raise ValueError(f"{len(values)} values but {len(baselines)} baselines")
    return median([value / baseline for value, baseline in zip(values, baselines, strict=True)])


def judge_target(ratio: float | None, minimum: float) -> str:
    """Describe whether `ratio` meets the target `minimum`, and by how much."""
    if ratio is None:
        return "not measured"
    difference = ratio - minimum
    if difference >= 0:
        return f"met, {difference:.2f} above"
    return f"missed, {-difference:.2f} below ({-difference / minimum:.0%} short)"


def format_rate(value: float) -> str:
    """Format a rate such as messages per second: thousands separators, no decimals."""
    return f"{value:,.0f}"


def format_decimal(value: float) -> str:
    """Format MB/s or CPU microseconds: one decimal below 100, none above."""
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def format_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right_aligned: Sequence[bool]
) -> str:
    """Format a Markdown table with padded columns, so it also reads well in a terminal."""
    widths = [len(header) for header in headers]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row has {len(row)} cells, expected {len(headers)}: {row}")
        widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, right_aligned, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = [
        "-" * (width - 1) + ":" if right else "-" * width
        for width, right in zip(widths, right_aligned, strict=True)
    ]
    return "\n".join([line(headers), line(rule), *(line(row) for row in rows)])


def replace_marked_section(
    text: str, section: str, begin_marker: str = BEGIN_MARKER, end_marker: str = END_MARKER
) -> str:
    """Put `section` between the two markers in `text`, keeping everything outside them.

    Text without the markers gets them appended at the end. Raises ValueError when only one
    marker is present or the end marker comes first, rather than guess which text to drop.
    """
    begin = text.find(begin_marker)
    end = text.find(end_marker)
    block = f"{begin_marker}\n{section.strip()}\n{end_marker}"
    if begin == -1 and end == -1:
        if not text or text.endswith("\n\n"):
            separator = ""
        elif text.endswith("\n"):
            separator = "\n"
        else:
            separator = "\n\n"
        return f"{text}{separator}{block}\n"
    if begin == -1 or end == -1 or end < begin:
        raise ValueError(
            f"expected {begin_marker} followed by {end_marker}; fix the markers by hand"
        )
    return text[:begin] + block + text[end + len(end_marker) :]


def write_results(
    path: Path, section: str, begin_marker: str = BEGIN_MARKER, end_marker: str = END_MARKER
) -> None:
    """Replace the marked section of the Markdown file at `path`, creating the file if missing."""
    text = path.read_text() if path.exists() else DOCS_INTRO
    updated = replace_marked_section(text, section, begin_marker, end_marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(updated)
    os.replace(temporary, path)


def cpu_model() -> str:
    """Return the first "model name" of /proc/cpuinfo, or platform.processor() without it."""
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def package_version(name: str) -> str:
    """Return the installed version of a Debian package, or "unknown"."""
    try:
        completed = subprocess.run(
            ["dpkg-query", "--show", "--showformat=${Version}", name],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return completed.stdout.strip() if completed.returncode == 0 else "unknown"


def filesystem_type(path: str) -> str:
    """Return the type (e.g. ext4) of the file system that contains `path`, from /proc/mounts."""
    target = os.path.realpath(path)
    best_mount, best_type = "", "unknown"
    try:
        with open("/proc/self/mounts") as file:
            for line in file:
                fields = line.split()
                if len(fields) < 3:
                    continue
                # Mount points escape spaces as \040.
                mount = fields[1].replace("\\040", " ")
                inside = target == mount or target.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best_mount):
                    best_mount, best_type = mount, fields[2]
    except OSError:
        pass
    return best_type


def machine_description() -> str:
    """Describe the CPU, core count, kernel, Python and the versions of the other servers."""
    import aiosmtpd
    import uvloop

    return (
        f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}; Postfix {package_version('postfix')} "
        f"(smtp-source, smtp-sink), aiosmtpd {aiosmtpd.__version__}, uvloop {uvloop.__version__}"
    )
