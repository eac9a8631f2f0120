"""The master process: binds the listeners, forks the workers and keeps them running.

Theory of operation. Signal handlers only put the signal on a queue and wake the main loop
through a pipe. The loop wakes at least once a second, handles the queued signals, reaps dead
workers, kills workers whose heartbeat stopped, starts workers where one is missing (with a
backoff per worker index), and prints the progress line.

- SIGTERM, SIGINT: stop. Workers get SIGTERM, finish their transactions within the grace period,
  send 421 to the rest and seal their segments. Workers still alive after the grace period and a
  margin get SIGKILL. The master exits 0.
- SIGHUP: re-read the configuration file, then stop every worker as on SIGTERM and start each
  replacement once its predecessor has exited, so that two processes never share a slot. The
  listening sockets stay open in the master meanwhile, so clients wait in the backlog rather
  than being refused. Listen addresses and the worker count change only on restart.
- SIGCHLD: only wakes the loop, which reaps.

A worker that exits with EXIT_BOOT_ERROR, or that dies before its first heartbeat several times in
a row, stops the master with EXIT_WORKERS_FAILED instead of forking in a loop.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from sink import config as config_module
from sink.config import Config, ConfigError
from sink.server import listeners
from sink.server.exposition import MetricsEndpoint
from sink.server.progress import Progress
from sink.server.slots import Slots
from sink.server.worker import EXIT_BOOT_ERROR, run_worker
from sink.smtp.counters import Field

log = logging.getLogger("sink.master")

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_WORKERS_FAILED = 3

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # a worker that lived this long resets its index's backoff
BOOT_FAILURES_LIMIT = 5  # deaths in a row before the first heartbeat
KILL_MARGIN = 5.0  # seconds past the grace period before SIGKILL
HEALTHY_BEAT_AGE = 3.0  # seconds since the last heartbeat before /healthz reports a worker


@dataclass
class WorkerProcess:
    index: int
    pid: int
    started: float
    retiring: bool = False  # sent SIGTERM because of a reload
    term_sent_at: float | None = None
    missed_heartbeat: bool = False


class Master:
    """Supervises the workers; `run` returns the process exit code."""

    def __init__(self, config: Config, overrides: dict[str, object] | None = None) -> None:
        self.config = config
        self.overrides = overrides or {}
        self.workers: dict[int, WorkerProcess] = {}
        self.signals: list[int] = []
        self.stopping = False
        self.stop_started = 0.0
        self.exit_code = EXIT_OK
        self.restart_after: dict[int, float] = {}
        self.backoff: dict[int, float] = {}
        self.boot_failures: dict[int, int] = {}
        self.sockets: list[list[socket.socket]] = []
        self.slots: Slots | None = None
        self.progress: Progress | None = None
        self.metrics: MetricsEndpoint | None = None
        self.restarts = {"exited": 0, "killed": 0, "heartbeat": 0, "reload": 0}
        self.finished_cpu: dict[int, tuple[float, float]] = {}  # CPU of exited workers, by index
        self._wake_read, self._wake_write = os.pipe()

    # --- start ------------------------------------------------------------------------------

    def run(self) -> int:
        addresses = [listeners.parse_address(text) for text in self.config.listen]
        self.sockets = listeners.bind_all(addresses, self.config.workers, self.config.reuseport)
        self.slots = Slots(self.config.workers)
        if self.config.spool:
            try:
                self._recover_spool()
            except OSError as error:
                log.critical("cannot use spool directory %s: %s", self.config.spool, error)
                return EXIT_CONFIG

        bound = ", ".join(str(listeners.Address(*_host_port(s))) for s in self.sockets[0])
        spool = f"spool {os.path.abspath(self.config.spool)}" if self.config.spool else "no spool"
        log.info(
            "sink listening on %s with %d worker%s, %s, fsync %s",
            bound,
            self.config.workers,
            "" if self.config.workers == 1 else "s",
            spool,
            self.config.fsync,
        )
        _raise_file_limit(self.config.max_sessions * self.config.workers)
        if self.config.metrics_listen:
            address = listeners.parse_address(self.config.metrics_listen)
            self.metrics = MetricsEndpoint(self, listeners.bind(address))
            host, port = _host_port(self.metrics.sock)
            log.info("metrics on http://%s/metrics", listeners.Address(host, port))

        show_progress = self.config.progress
        if show_progress is None:
            show_progress = sys.stdout.isatty()
        if show_progress:
            self.progress = Progress(self.slots, sys.stdout)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
            signal.signal(sig, self._enqueue)
        os.set_blocking(self._wake_write, False)

        for index in range(self.config.workers):
            self._spawn(index)
        try:
            self._loop()
        finally:
            for group in self.sockets:
                for sock in group:
                    sock.close()
            if self.metrics is not None:
                self.metrics.close()
        return self.exit_code

    def _recover_spool(self) -> None:
        from sink.spool import recover_segments

        assert self.config.spool is not None
        os.makedirs(self.config.spool, exist_ok=True)
        # recover_segments logs each segment it repairs.
        recover_segments(self.config.spool)

    # --- the loop ---------------------------------------------------------------------------

    def _enqueue(self, signum: int, frame: object) -> None:
        if len(self.signals) < 10:
            self.signals.append(signum)
        try:
            os.write(self._wake_write, b".")
        except OSError:
            pass

    def _loop(self) -> None:
        handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self._handle_stop,
            signal.SIGINT: self._handle_stop,
            signal.SIGQUIT: self._handle_stop,
            signal.SIGHUP: self._handle_reload,
            signal.SIGCHLD: lambda: None,
        }
        while True:
            self._sleep(1.0)
            while self.signals:
                handlers[self.signals.pop(0)]()
            self._reap()
            if self.stopping:
                if not self.workers:
                    break
                self._escalate_stop()
                continue
            self._check_heartbeats()
            self._maintain()
            if self.progress is not None:
                self.progress.update()
        if self.progress is not None:
            self.progress.finish()
        log.info("sink stopped")

    def _sleep(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        watched: list[int | MetricsEndpoint] = [self._wake_read]
        if self.metrics is not None:
            watched.append(self.metrics)
        while not self.signals:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                ready, _, _ = select.select(watched, [], [], remaining)
            except InterruptedError:
                return
            if self._wake_read in ready:
                try:
                    os.read(self._wake_read, 4096)
                except BlockingIOError:
                    pass
                return
            if self.metrics is not None and self.metrics in ready:
                self.metrics.handle()

    # --- signals ----------------------------------------------------------------------------

    def _handle_stop(self) -> None:
        if self.stopping:
            # A second stop signal (Ctrl-C twice) cuts the grace period short. Acknowledged
            # messages are already in the spool, and the next start seals the open segments.
            log.warning("second stop signal: killing %d workers now", len(self.workers))
            for worker in self.workers.values():
                worker.term_sent_at = float("inf")
                _kill(worker.pid, signal.SIGKILL)
            return
        log.info("stopping: asking %d workers to finish their transactions", len(self.workers))
        self.stopping = True
        self.stop_started = time.monotonic()
        for worker in self.workers.values():
            self._terminate(worker)

    def _handle_reload(self) -> None:
        if self.config.config is None:
            log.warning("SIGHUP received but sink was started without --config; nothing to reload")
            return
        try:
            config = config_module.load(self.overrides, self.config.config)
        except ConfigError as error:
            log.error("reload failed, keeping the running configuration: %s", error)
            return
        if config.listen != self.config.listen or config.workers != self.config.workers:
            log.warning("reload: listen addresses and worker count change only on restart")
            config.listen = self.config.listen
            config.workers = self.config.workers
            config.reuseport = self.config.reuseport
        self.config = config
        log.info("reloaded %s; replacing workers", config.config)
        for worker in list(self.workers.values()):
            worker.retiring = True
            self._terminate(worker)

    # --- workers ----------------------------------------------------------------------------

    def _spawn(self, index: int) -> None:
        assert self.slots is not None
        slot = self.slots.slot(index)
        slot[Field.HEARTBEAT_NS] = 0
        pid = os.fork()
        if pid == 0:
            code = EXIT_BOOT_ERROR
            try:
                os.close(self._wake_read)
                os.close(self._wake_write)
                for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGQUIT):
                    signal.signal(sig, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                code = run_worker(self.config, index, self.sockets[index], slot)
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                logging.shutdown()
                os._exit(code)
        self.workers[pid] = WorkerProcess(index=index, pid=pid, started=time.monotonic())
        log.debug("started worker %d (pid %d)", index, pid)

    def _terminate(self, worker: WorkerProcess) -> None:
        if worker.term_sent_at is None:
            worker.term_sent_at = time.monotonic()
            _kill(worker.pid, signal.SIGTERM)

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            user, system = self.finished_cpu.get(worker.index, (0.0, 0.0))
            self.finished_cpu[worker.index] = (user + usage.ru_utime, system + usage.ru_stime)
            self._worker_exited(worker, status)

    def _worker_exited(self, worker: WorkerProcess, status: int) -> None:
        assert self.slots is not None
        slot = self.slots.slot(worker.index)
        slot[Field.ACTIVE_SESSIONS] = 0
        slot[Field.ACCEPTING] = 0
        slot[Field.SEGMENTS_OPEN] = 0
        beat = slot[Field.HEARTBEAT_NS] != 0
        lived = time.monotonic() - worker.started

        if os.WIFSIGNALED(status):
            how = f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            code = -os.WTERMSIG(status)
        else:
            code = os.WEXITSTATUS(status)
            how = f"exited with status {code}"

        if code == EXIT_BOOT_ERROR and not self.stopping and not worker.retiring:
            log.critical(
                "worker %d (pid %d) could not start; stopping sink (see the error above)",
                worker.index,
                worker.pid,
            )
            self._fail()
            return
        if worker.term_sent_at is not None and code == 0:
            log.info("worker %d (pid %d) stopped", worker.index, worker.pid)
        elif self.stopping:
            log.warning("worker %d (pid %d) %s while stopping", worker.index, worker.pid, how)
        else:
            log.error("worker %d (pid %d) %s; replacing it", worker.index, worker.pid, how)

        if self.stopping or worker.retiring:
            if worker.retiring and not self.stopping:
                self.restarts["reload"] += 1
                self.restart_after[worker.index] = 0.0
            return
        if worker.missed_heartbeat:
            self.restarts["heartbeat"] += 1
        elif code < 0:
            self.restarts["killed"] += 1
        else:
            self.restarts["exited"] += 1

        if not beat:
            failures = self.boot_failures.get(worker.index, 0) + 1
            self.boot_failures[worker.index] = failures
            if failures >= BOOT_FAILURES_LIMIT:
                log.critical(
                    "worker %d died %d times before serving; stopping sink", worker.index, failures
                )
                self._fail()
                return
        else:
            self.boot_failures[worker.index] = 0

        delay = self.backoff.get(worker.index, 0.0)
        delay = BACKOFF_FIRST if lived > STABLE_AFTER or delay == 0 else min(delay * 2, BACKOFF_MAX)
        self.backoff[worker.index] = delay
        self.restart_after[worker.index] = time.monotonic() + delay

    def _fail(self) -> None:
        self.exit_code = EXIT_WORKERS_FAILED
        self._handle_stop()

    def _maintain(self) -> None:
        running = {worker.index for worker in self.workers.values()}
        now = time.monotonic()
        for index in range(self.config.workers):
            if index in running:
                continue
            if self.restart_after.get(index, 0.0) <= now:
                self.restart_after.pop(index, None)
                self._spawn(index)

    def _check_heartbeats(self) -> None:
        assert self.slots is not None
        now_ns = time.time_ns()
        limit_ns = int(self.config.heartbeat_timeout * 1e9)
        for worker in list(self.workers.values()):
            beat = self.slots.slot(worker.index)[Field.HEARTBEAT_NS]
            if beat == 0:
                started_ago = time.monotonic() - worker.started
                stale = started_ago > self.config.heartbeat_timeout
            else:
                stale = now_ns - beat > limit_ns
            if stale and worker.term_sent_at is None:
                log.error(
                    "worker %d (pid %d) missed its heartbeat for %.0f s; killing it",
                    worker.index,
                    worker.pid,
                    self.config.heartbeat_timeout,
                )
                worker.term_sent_at = time.monotonic()
                worker.missed_heartbeat = True
                _kill(worker.pid, signal.SIGKILL)
            elif worker.retiring or worker.term_sent_at is not None:
                self._escalate(worker)

    def health_problems(self) -> list[str]:
        """Return why the sink is not healthy: stopping, or a worker missing or not accepting."""
        if self.stopping:
            return ["stopping"]
        assert self.slots is not None
        problems = []
        now_ns = time.time_ns()
        # A worker beats once a second, so three missed beats mean it is not serving, even
        # though the master waits the whole --heartbeat-timeout before replacing it.
        limit_ns = int(min(self.config.heartbeat_timeout, HEALTHY_BEAT_AGE) * 1e9)
        live = {worker.index for worker in self.workers.values()}
        for index in range(self.config.workers):
            slot = self.slots.slot(index)
            if index not in live:
                problems.append(f"worker {index} is not running")
            elif not slot[Field.ACCEPTING]:
                problems.append(f"worker {index} is not accepting connections")
            elif now_ns - slot[Field.HEARTBEAT_NS] > limit_ns:
                problems.append(f"worker {index} missed its heartbeat")
        return problems

    def _escalate_stop(self) -> None:
        for worker in list(self.workers.values()):
            self._escalate(worker)

    def _escalate(self, worker: WorkerProcess) -> None:
        if worker.term_sent_at is None:
            return
        if time.monotonic() - worker.term_sent_at > self.config.shutdown_grace + KILL_MARGIN:
            log.error(
                "worker %d (pid %d) did not stop within the grace period; killing it",
                worker.index,
                worker.pid,
            )
            worker.term_sent_at = float("inf")
            _kill(worker.pid, signal.SIGKILL)


def _raise_file_limit(wanted: int) -> None:
    """Raise the soft limit on open files to the hard limit, and warn if sessions may not fit.

    Workers inherit the limit. A worker out of file descriptors cannot accept a connection at
    all, so the client sees a close without any reply.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, error)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open file limit is %d, below --max-sessions times --workers (%d); raise it "
            "(ulimit -n) or lower --max-sessions, or connections past the limit are closed "
            "without a reply",
            soft,
            wanted,
        )


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as error:
        if error.errno != errno.ESRCH:
            raise


def _host_port(sock: socket.socket) -> tuple[str, int]:
    name = sock.getsockname()
    return name[0], name[1]
