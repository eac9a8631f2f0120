"""Locust load for an SMTP server such as the sink: `locust -f loadtest/locustfile.py`.

Each `SmtpUser` task opens one connection, sends `--smtp-messages-per-connection` messages
on it and ends it. Every transaction fires one locust request event: request type `SMTP`,
name `send` for a delivery (expected final reply 250) or `refused` for a transaction to a
recipient the server is expected to reject (expected RCPT reply 550). Its response time runs
from MAIL to the final reply, and its response length is the message size, or 0 for
`refused`. With `--smtp-stage-timing`, each stage also fires an `SMTP-stage` event.
With `--smtp-metrics-listen HOST:PORT`, the master serves these events as Prometheus metrics
(loadtest/locust_metrics.py).

docs/load.md describes every option.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

from locust import User, events, task
from locust.env import Environment

# Importing locust_metrics also adds its --smtp-metrics-* options and event listeners.
from loadtest import locust_metrics  # noqa: F401
from loadtest.locust_tally import REFUSED, REQUEST_TYPE, SEND, STAGE_REQUEST_TYPE
from loadtest.messages import SizeDistribution, build_message
from loadtest.smtp_client import SmtpClient, SmtpError

# One counter per locust process for the `{n}` in address patterns, so addresses repeat
# across the processes of a distributed run.
_counter = itertools.count(1)


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"invalid switch {text!r}: expected on or off")


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    """Add the SMTP options. Locust shows them in its web UI and sends them to its workers."""

    def add(*flags: str, **kwargs: Any) -> None:
        parser.add_argument(*flags, include_in_web_ui=True, **kwargs)

    add("--smtp-host", default="127.0.0.1", help="SMTP server host")
    add("--smtp-port", type=int, default=2525, help="SMTP server port")

    add(
        "--smtp-size",
        default="1024",
        help="message size in octets, or a distribution of size:weight pairs such as "
        "1k:50,10k:30,100k:15,1m:5 (k and m are powers of 1000, KiB and MiB of 1024)",
    )
    add("--smtp-recipients", type=int, default=1, help="recipients per transaction")
    add(
        "--smtp-messages-per-connection",
        type=int,
        default=1,
        help="transactions on each connection before it ends",
    )

    add(
        "--smtp-sender",
        default="sender{n}@example.com",
        help="reverse-path; {n} becomes a counter",
    )
    add(
        "--smtp-recipient",
        default="user{n}@example.net",
        help="forward-path of each recipient; {n} becomes a counter",
    )
    add(
        "--smtp-refused-recipient",
        default="refused{n}@example.net",
        help="forward-path of recipients the server is expected to reject with 550; "
        "{n} becomes a counter",
    )

    add(
        "--smtp-expect-refusal-share",
        type=float,
        default=0.0,
        help="fraction (0 to 1) of transactions sent to --smtp-refused-recipient, which "
        "succeed when every RCPT gets 550",
    )

    add(
        "--smtp-pipelining",
        default="on",
        help="on: pipeline MAIL, RCPT and DATA when the server offers PIPELINING; off: never",
    )
    add(
        "--smtp-end",
        choices=("quit", "close"),
        default="quit",
        help="how a connection ends: QUIT, or an abrupt close without QUIT",
    )

    add(
        "--smtp-wait",
        type=float,
        default=0.0,
        help="seconds each user waits between connections",
    )
    add("--smtp-timeout", type=float, default=30.0, help="socket timeout in seconds")
    add(
        "--smtp-stage-timing",
        action="store_true",
        default=False,
        help="also fire an SMTP-stage event for connect, ehlo, mail, rcpt, data and end-of-data",
    )


@dataclass(frozen=True)
class LoadSettings:
    """The SMTP options of one locust run, checked."""

    host: str
    port: int
    sizes: SizeDistribution
    recipients: int
    messages_per_connection: int
    sender: str
    recipient: str
    refused_recipient: str
    refusal_share: float
    pipelining: bool
    end_with_quit: bool
    wait: float
    timeout: float
    stage_timing: bool

    @classmethod
    def from_options(cls, options: Any) -> LoadSettings:
        """Check the parsed options and raise ValueError naming the first invalid one."""
        if options.smtp_recipients < 1:
            raise ValueError(f"--smtp-recipients must be at least 1, not {options.smtp_recipients}")
        if options.smtp_messages_per_connection < 1:
            raise ValueError(
                "--smtp-messages-per-connection must be at least 1, "
                f"not {options.smtp_messages_per_connection}"
            )
        if not 0.0 <= options.smtp_expect_refusal_share <= 1.0:
            raise ValueError(
                "--smtp-expect-refusal-share must be between 0 and 1, "
                f"not {options.smtp_expect_refusal_share}"
            )
        if options.smtp_wait < 0:
            raise ValueError(f"--smtp-wait must not be negative, not {options.smtp_wait}")
        for name in ("smtp_sender", "smtp_recipient", "smtp_refused_recipient"):
            pattern = getattr(options, name)
            try:
                pattern.format(n=0)
            except (KeyError, IndexError, ValueError) as error:
                flag = "--" + name.replace("_", "-")
                raise ValueError(
                    f"invalid pattern {pattern!r} for {flag}: only {{n}} may appear in braces"
                ) from error
        try:
            sizes = SizeDistribution.parse(options.smtp_size)
            pipelining = _on_off(options.smtp_pipelining)
        except ValueError as error:
            raise ValueError(f"--smtp-size or --smtp-pipelining: {error}") from None
        return cls(
            host=options.smtp_host,
            port=options.smtp_port,
            sizes=sizes,
            recipients=options.smtp_recipients,
            messages_per_connection=options.smtp_messages_per_connection,
            sender=options.smtp_sender,
            recipient=options.smtp_recipient,
            refused_recipient=options.smtp_refused_recipient,
            refusal_share=options.smtp_expect_refusal_share,
            pipelining=pipelining,
            end_with_quit=options.smtp_end == "quit",
            wait=options.smtp_wait,
            timeout=options.smtp_timeout,
            stage_timing=options.smtp_stage_timing,
        )


_settings: dict[tuple[tuple[str, Any], ...], LoadSettings] = {}


def settings_for(environment: Environment) -> LoadSettings:
    """Return the settings of this environment, parsed once per set of SMTP option values.

    The key is the values, not the options object: a `--worker` process parses its own
    command line at start, and locust overwrites those values in place with the master's
    options when the test starts.
    """
    options = environment.parsed_options
    key = tuple(sorted((k, v) for k, v in vars(options).items() if k.startswith("smtp_")))
    if key not in _settings:
        _settings[key] = LoadSettings.from_options(options)
    return _settings[key]


@events.init.add_listener
def check_settings(environment: Environment, **_kwargs: Any) -> None:
    """Check the options, then build the message of every size class once, before any user.

    Invalid options stop locust with exit status 2 and a message that names the option.
    """
    if environment.parsed_options is None:
        return
    try:
        settings = settings_for(environment)
    except ValueError as error:
        logging.getLogger(__name__).error("invalid SMTP load option: %s", error)
        raise SystemExit(2) from None
    for size in settings.sizes.sizes:
        build_message(size)


class SmtpUser(User):
    """A client that sends mail over a fresh connection per task."""

    def on_start(self) -> None:
        self.settings = settings_for(self.environment)
        self.rng = random.Random()

    def wait_time(self) -> float:
        return self.settings.wait

    def _fire(
        self,
        request_type: str,
        name: str,
        seconds: float,
        length: int,
        exception: BaseException | None,
    ) -> None:
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=seconds * 1000.0,
            response_length=length,
            exception=exception,
            context={},
        )

    def _on_stage(self, stage: str, seconds: float, octets: int, error: BaseException | None):
        # GreenletExit and other non-Exception errors mean locust is stopping this user.
        if error is None or isinstance(error, Exception):
            self._fire(STAGE_REQUEST_TYPE, stage, seconds, octets, error)

    @task
    def send_on_one_connection(self) -> None:
        settings = self.settings
        client = SmtpClient(
            settings.host,
            settings.port,
            timeout=settings.timeout,
            pipelining=settings.pipelining,
            stage_hook=self._on_stage if settings.stage_timing else None,
        )
        with client:
            started = time.perf_counter()
            try:
                client.connect()
                client.hello()
            except (OSError, SmtpError) as error:
                # The transaction never started: count it as a failed delivery.
                self._fire(REQUEST_TYPE, SEND, time.perf_counter() - started, 0, error)
                return

            for _ in range(settings.messages_per_connection):
                if not self._transaction(client):
                    return

            if settings.end_with_quit:
                try:
                    client.quit()
                except (OSError, SmtpError):
                    # Every message is already acknowledged, so a failed QUIT loses nothing.
                    pass

    def _transaction(self, client: SmtpClient) -> bool:
        """Run one transaction and fire its event; return whether the connection is usable."""
        settings = self.settings
        refused = settings.refusal_share > 0 and self.rng.random() < settings.refusal_share
        pattern = settings.refused_recipient if refused else settings.recipient
        sender = settings.sender.format(n=next(_counter))
        recipients = [pattern.format(n=next(_counter)) for _ in range(settings.recipients)]
        content = b"" if refused else build_message(settings.sizes.choose(self.rng))
        name = REFUSED if refused else SEND

        started = time.perf_counter()
        try:
            client.send_message(sender, recipients, content, expect_rcpt=550 if refused else 250)
        except (OSError, SmtpError) as error:
            self._fire(REQUEST_TYPE, name, time.perf_counter() - started, len(content), error)
            if isinstance(error, OSError):
                client.abort()
            return client.connected
        self._fire(REQUEST_TYPE, name, time.perf_counter() - started, len(content), None)
        return True
