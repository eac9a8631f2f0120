"""Prometheus metrics of the locust SMTP load, served by the locust master at `/metrics`.

`--smtp-metrics-listen HOST:PORT` turns them on. The process that serves them is the single
locust process of a local run, or the master of a distributed run (`--processes N`, or
`--master` with `--worker` processes). The workers never serve metrics. Each one counts its
own request events in a `Tally` and sends what it counted since its last report with locust's
stats report (the `report_to_master` event, every 3 s and once more when it stops). The master
adds every report to its tally in the `worker_report` event. The histogram buckets travel
as counts, so the master's quantiles are as exact as a local run's.

docs/load.md lists the metrics.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.pywsgi import WSGIServer
from locust import events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner
from prometheus_client import CollectorRegistry, make_wsgi_app

from loadtest.locust_tally import REPORT_KEY, Tally, TallyCollector, parse_listen

logger = logging.getLogger(__name__)


@dataclass
class MetricsState:
    """The tally of this process, and the HTTP server that exposes it on a master or local run."""

    tally: Tally = field(default_factory=Tally)
    server: WSGIServer | None = None
    linger: float = 0.0


_state = MetricsState()


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--smtp-metrics-listen",
        default="",
        help="serve the SMTP load metrics at http://HOST:PORT/metrics from the master or local "
        "process, such as 127.0.0.1:9646; off by default",
    )
    parser.add_argument(
        "--smtp-metrics-linger",
        type=float,
        default=0.0,
        help="seconds to keep serving /metrics after the run ends, so that Prometheus "
        "scrapes the final counts (default 0)",
    )


@events.init.add_listener
def start_metrics(environment: Environment, **_kwargs: Any) -> None:
    """Wire the tally to this process's role, and start the HTTP server where it belongs.

    A worker always counts and reports, because only the master's command line sets whether
    metrics are served, and locust sends the master's options to its workers only when the
    test starts, after this event.
    """
    options = environment.parsed_options
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        environment.events.request.add_listener(_record_request)
        environment.events.report_to_master.add_listener(_attach_tally)
        return
    if options is None or not options.smtp_metrics_listen:
        return
    if isinstance(runner, MasterRunner):
        environment.events.worker_report.add_listener(_add_worker_tally)
    else:
        environment.events.request.add_listener(_record_request)

    if options.smtp_metrics_linger < 0:
        logger.error(
            "--smtp-metrics-linger must not be negative, not %s", options.smtp_metrics_linger
        )
        raise SystemExit(2)
    try:
        host, port = parse_listen(options.smtp_metrics_listen)
    except ValueError as error:
        logger.error("%s", error)
        raise SystemExit(2) from None

    registry = CollectorRegistry(auto_describe=True)
    registry.register(TallyCollector(_state.tally))
    server = WSGIServer((host, port), make_wsgi_app(registry), log=None)
    try:
        server.start()
    except OSError as error:
        logger.error(
            "cannot serve --smtp-metrics-listen %s: %s", options.smtp_metrics_listen, error
        )
        raise SystemExit(2) from None
    _state.server = server
    _state.linger = options.smtp_metrics_linger
    bound_host, bound_port = server.address[:2]
    display_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    logger.info("SMTP load metrics on http://%s:%d/metrics", display_host, bound_port)
    environment.events.quitting.add_listener(_stop_server)


def _record_request(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    exception: BaseException | None = None,
    **_kwargs: Any,
) -> None:
    _state.tally.record(request_type, name, response_time, response_length, exception)


def _attach_tally(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    """Send what this worker counted since its last report, then start counting from zero."""
    if _state.tally.is_empty():
        return
    data[REPORT_KEY] = _state.tally.to_report()
    _state.tally = Tally()


def _add_worker_tally(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    report = data.get(REPORT_KEY)
    if report is None:
        return
    try:
        _state.tally.add(Tally.from_report(report))
    except ValueError as error:
        logger.error("ignored the SMTP load metrics of worker %s: %s", client_id, error)


def _stop_server(environment: Environment, **_kwargs: Any) -> None:
    server = _state.server
    if server is None:
        return
    if _state.linger > 0:
        logger.info("serving the SMTP load metrics for %g s more", _state.linger)
        gevent.sleep(_state.linger)
    server.stop(timeout=1)
    _state.server = None
