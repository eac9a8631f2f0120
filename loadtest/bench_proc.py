"""Read CPU time and resident memory of a process tree from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessTimes:
    """CPU time of one process from /proc/PID/stat, in clock ticks."""

    pid: int
    parent_pid: int
    user: int
    system: int
    children_user: int
    children_system: int

    @property
    def total(self) -> int:
        """User and system time of the process and of its children that it has reaped.

        A child's time moves into its parent's children_* fields when the parent waits for it,
        so a sum of this over the live processes of a tree also counts workers that exited and
        were reaped during a measurement. An orphan that is moved to init leaves the tree.
        """
        return self.user + self.system + self.children_user + self.children_system


def parse_stat(text: str) -> ProcessTimes:
    """Parse the contents of /proc/PID/stat.

    The command name (field 2) is in parentheses and may contain spaces and parentheses, so the
    remaining fields are split after the last ")". Field numbers follow proc(5): ppid is 4,
    utime 14, stime 15, cutime 16, cstime 17.
    """
    pid_text, _, rest = text.partition(" (")
    fields = rest[rest.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), so field N is fields[N - 3].
    return ProcessTimes(
        pid=int(pid_text),
        parent_pid=int(fields[1]),
        user=int(fields[11]),
        system=int(fields[12]),
        children_user=int(fields[13]),
        children_system=int(fields[14]),
    )


def read_times(pid: int) -> ProcessTimes | None:
    """Return the CPU times of `pid`, or None when the process no longer exists."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            return parse_stat(file.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def _all_times() -> list[ProcessTimes]:
    snapshot = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            times = read_times(int(entry))
            if times is not None:
                snapshot.append(times)
    return snapshot


def process_tree(root_pid: int) -> list[ProcessTimes]:
    """Return the CPU times of `root_pid` and all its live descendants.

    The tree is built from one pass over /proc, so a process that starts or exits during the
    pass may be missed. The list is empty when `root_pid` itself is gone.
    """
    snapshot = _all_times()
    children: dict[int, list[ProcessTimes]] = {}
    root = None
    for times in snapshot:
        children.setdefault(times.parent_pid, []).append(times)
        if times.pid == root_pid:
            root = times
    if root is None:
        return []
    tree = [root]
    index = 0
    while index < len(tree):
        tree.extend(children.get(tree[index].pid, []))
        index += 1
    return tree


def tree_cpu_ticks(root_pid: int) -> int:
    """Return the user and system CPU time of a process tree, in clock ticks."""
    return sum(times.total for times in process_tree(root_pid))


def read_run_nanoseconds(pid: int) -> int:
    """Return the CPU time of every thread of `pid` in nanoseconds, or 0 when it is gone.

    The first field of /proc/PID/task/TID/schedstat is the time the thread has run on a CPU, in
    nanoseconds. It is much finer than the clock ticks of /proc/PID/stat, but it does not
    include children that the process has reaped.
    """
    total = 0
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/schedstat") as file:
                total += int(file.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def tree_run_nanoseconds(root_pid: int) -> int:
    """Return the CPU time of the live processes of a tree, in nanoseconds."""
    return sum(read_run_nanoseconds(times.pid) for times in process_tree(root_pid))


def ticks_to_seconds(ticks: int) -> float:
    return ticks / CLOCK_TICKS_PER_SECOND


def read_rss_kib(pid: int) -> int:
    """Return VmRSS of `pid` in KiB; 0 for a process that is gone or has no memory map."""
    try:
        with open(f"/proc/{pid}/status") as file:
            for line in file:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def tree_rss_kib(root_pid: int) -> int:
    """Return the summed VmRSS of a process tree in KiB.

    Pages shared between a forked master and its workers count once per process, so the sum
    overstates the memory in use. The benchmark reports the difference of two sums, in which
    pages that stay shared cancel out.
    """
    return sum(read_rss_kib(times.pid) for times in process_tree(root_pid))
