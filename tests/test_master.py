"""The master's decisions about dead workers, without forking: restart, back off, or stop."""

from __future__ import annotations

import time

import pytest

from sink.config import Config
from sink.server.master import (
    BOOT_FAILURES_LIMIT,
    EXIT_WORKERS_FAILED,
    Master,
    WorkerProcess,
)
from sink.server.slots import Slots
from sink.server.worker import EXIT_BOOT_ERROR
from sink.smtp.counters import Field


def exit_status(code: int) -> int:
    """Encode an exit code as os.waitpid reports it."""
    return code << 8


@pytest.fixture
def master() -> Master:
    supervisor = Master(Config(workers=2, spool=None).validate())
    supervisor.slots = Slots(2)
    return supervisor


def dead_worker(index: int = 0, lived: float = 1.0) -> WorkerProcess:
    return WorkerProcess(index=index, pid=999_999, started=time.monotonic() - lived)


def test_boot_error_stops_master(master: Master) -> None:
    master._worker_exited(dead_worker(), exit_status(EXIT_BOOT_ERROR))
    assert master.stopping
    assert master.exit_code == EXIT_WORKERS_FAILED


def test_deaths_before_heartbeat_stop_master(master: Master) -> None:
    for _ in range(BOOT_FAILURES_LIMIT - 1):
        master._worker_exited(dead_worker(), exit_status(1))
        assert not master.stopping
    master._worker_exited(dead_worker(), exit_status(1))
    assert master.stopping
    assert master.exit_code == EXIT_WORKERS_FAILED


def test_crash_after_serving_is_restarted(master: Master) -> None:
    assert master.slots is not None
    for _ in range(BOOT_FAILURES_LIMIT + 2):
        master.slots.slot(0)[Field.HEARTBEAT_NS] = time.time_ns()
        master._worker_exited(dead_worker(), exit_status(1))
    assert not master.stopping
    assert 0 in master.restart_after


def test_backoff_doubles_and_resets(master: Master) -> None:
    assert master.slots is not None
    delays = []
    for _ in range(4):
        master.slots.slot(0)[Field.HEARTBEAT_NS] = time.time_ns()
        master._worker_exited(dead_worker(lived=1.0), exit_status(1))
        delays.append(master.backoff[0])
    assert delays == [0.1, 0.2, 0.4, 0.8]

    master.slots.slot(0)[Field.HEARTBEAT_NS] = time.time_ns()
    master._worker_exited(dead_worker(lived=60.0), exit_status(1))
    assert master.backoff[0] == 0.1


def test_exit_clears_active_sessions(master: Master) -> None:
    assert master.slots is not None
    master.slots.slot(1)[Field.ACTIVE_SESSIONS] = 7
    master._worker_exited(dead_worker(index=1), exit_status(0))
    assert master.slots.slot(1)[Field.ACTIVE_SESSIONS] == 0
