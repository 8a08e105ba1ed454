"""Composition root: configuration -> database -> intake -> mailbox workers and listener.

Each mailbox runs in a worker thread of its own with its own backoff, so a mailbox that is down
never holds up the others; the LMTP listener runs in aiosmtpd's thread.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from sqlalchemy import Engine

from helpdesk.config import Config, ConfigError, MailboxConfig, SmtpConfig
from helpdesk.intake.runner import Clock, Intake, utcnow
from helpdesk.mailboxes.base import Backoff, Mailbox, PermanentError, PollReport, TemporaryError
from helpdesk.mailboxes.imap import ImapMailbox
from helpdesk.mailboxes.lmtp import Listener
from helpdesk.mailboxes.pop3 import Pop3Mailbox
from helpdesk.outbound.failures import FailureRecorder
from helpdesk.outbound.mailer import Mailer, SecretMissing
from helpdesk.outbound.sender import OutboxSender, SendReport, Transport
from helpdesk.outbound.transport import SmtpTransport
from helpdesk.store.db import make_engine, transaction
from helpdesk.store.migrate import upgrade
from helpdesk.store.models import MailboxState

log = logging.getLogger(__name__)

# IDLE is re-entered this often (seconds), so a stop or reload never waits long on a quiet mailbox.
IDLE_CHUNK = 3.0


def make_mailbox(config: MailboxConfig) -> Mailbox:
    if config.kind == "imap":
        return ImapMailbox(config)
    return Pop3Mailbox(config)


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(address)
            sock.sendall(state.encode())
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)


def record_mailbox_error(engine: Engine, mailbox: MailboxConfig, error: str) -> None:
    try:
        with transaction(engine) as session:
            state = session.get(MailboxState, (mailbox.name, mailbox.folder))
            if state is None:
                state = MailboxState(mailbox=mailbox.name, folder=mailbox.folder)
            state.last_error = error[:2000]
            session.add(state)
    except Exception:
        log.exception("could not record the error of mailbox %s", mailbox.name)


@dataclass
class OnceSummary:
    reports: list[PollReport] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    sent: SendReport = field(default_factory=SendReport)


class Daemon:
    def __init__(
        self,
        config: Config,
        engine: Engine | None = None,
        clock: Clock = utcnow,
        mailbox_factory: Callable[[MailboxConfig], Mailbox] = make_mailbox,
        transport_factory: Callable[[SmtpConfig], Transport] = SmtpTransport,
    ) -> None:
        self.config = config
        self.engine = engine or make_engine(config.database_url)
        upgrade(self.engine)
        self.clock = clock
        self.mailbox_factory = mailbox_factory
        self.transport_factory = transport_factory
        self._build(config)
        self.stop_event = threading.Event()  # the whole daemon stops
        self.listener: Listener | None = None
        self._workers_stop = threading.Event()  # this generation of workers stops (reload)
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._outbox_wake = threading.Event()
        self._reload_requested = False

    def _build(self, config: Config) -> None:
        """The parts that depend on the configuration (rebuilt on reload)."""
        mailer = Mailer(config)
        self.intake = Intake(self.engine, config, self.clock, mailer)
        self.sender = OutboxSender(
            self.engine, config, self.clock, FailureRecorder(config, mailer), self.transport_factory
        )

    # --- single pass -----------------------------------------------------------------------------

    def run_once(self) -> OnceSummary:
        """Import everything waiting in every mailbox, finish pending messages, and return."""
        summary = OnceSummary()
        self.intake.process_pending()
        for _channel, box_config in self.config.mailboxes():
            box = self.mailbox_factory(box_config)
            try:
                summary.reports.append(box.poll(self.intake))
            except (TemporaryError, PermanentError) as exc:
                summary.errors[box_config.name] = str(exc)
                record_mailbox_error(self.engine, box_config, str(exc))
                log.error("mailbox %s: %s", box_config.name, exc)
            finally:
                box.close()
        summary.sent = self.sender.run_once()
        return summary

    # --- long-running ----------------------------------------------------------------------------

    def _worker(self, box_config: MailboxConfig, stop: threading.Event) -> None:
        box = self.mailbox_factory(box_config)
        backoff = Backoff()
        while not stop.is_set():
            try:
                report = box.poll(self.intake)
                backoff.reset()
                if report.fetched:
                    log.info("mailbox %s: %d messages imported", box.name, report.fetched)
                    self._outbox_wake.set()
                self._wait(box, box_config.poll_interval, stop)
            except (TemporaryError, PermanentError) as exc:
                delay = backoff.next_delay()
                log.warning("mailbox %s: %s; retrying in %.0f s", box.name, exc, delay)
                record_mailbox_error(self.engine, box_config, str(exc))
                box.close()
                stop.wait(delay)
            except Exception as exc:  # a bug must not end the worker: log, back off, go on
                delay = backoff.next_delay()
                log.exception("mailbox %s: unexpected error; retrying in %.0f s", box.name, delay)
                record_mailbox_error(self.engine, box_config, f"{type(exc).__name__}: {exc}")
                box.close()
                stop.wait(delay)
        box.close()

    @staticmethod
    def _wait(box: Mailbox, interval: float, stop: threading.Event) -> None:
        if not box.can_idle:
            stop.wait(interval)
            return
        waited = 0.0
        while not stop.is_set() and waited < interval:
            chunk = min(IDLE_CHUNK, interval - waited)
            if box.wait(chunk):
                return
            waited += chunk

    def _outbox_worker(self, stop: threading.Event) -> None:
        """Send due mail; wake early when intake has queued some."""
        interval = self.config.smtp.poll_interval
        while not stop.is_set():
            try:
                self.sender.run_once()
            except Exception:  # the database may be away: log, wait, go on
                log.exception("outbox: sending failed; retrying in %.0f s", interval)
            self._outbox_wake.wait(interval)
            self._outbox_wake.clear()

    def _start_workers(self) -> None:
        self.intake.process_pending()
        if self.config.listener.enabled:
            self.listener = Listener(self.intake, self.config)
            self.listener.start()
        stop = self._workers_stop = threading.Event()
        outbox_thread = threading.Thread(target=self._outbox_worker, args=(stop,), name="outbox", daemon=True)
        outbox_thread.start()
        self._threads.append(outbox_thread)
        for _channel, box_config in self.config.mailboxes():
            thread = threading.Thread(
                target=self._worker, args=(box_config, stop), name=f"mailbox-{box_config.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _stop_workers(self) -> None:
        self._workers_stop.set()
        self._outbox_wake.set()
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads.clear()

    def start(self) -> None:
        self._start_workers()
        sd_notify("READY=1")

    def stop(self) -> None:
        sd_notify("STOPPING=1")
        self.stop_event.set()
        self._stop_workers()
        self.close()

    def close(self) -> None:
        """Release the parse workers and the database connections."""
        self.intake.close()
        self.engine.dispose()

    def reload(self, loader: Callable[[], Config]) -> bool:
        """Apply a new configuration; a faulty one is refused and the running one kept."""
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            config = loader()
        except ConfigError as exc:
            log.error("configuration not reloaded, the running one stays: %s", "; ".join(exc.problems))
            sd_notify("READY=1")
            return False
        try:
            Mailer(config)
        except SecretMissing as exc:
            log.error("configuration not reloaded, the running one stays: %s", exc)
            sd_notify("READY=1")
            return False
        if config.database_url != self.config.database_url:
            log.warning("database_url changed: that takes effect only after a restart")
            config = config.model_copy(update={"database_url": self.config.database_url})
        self._stop_workers()
        self.intake.close()
        self.config = config
        self._build(config)
        self._start_workers()
        log.info("configuration reloaded: %d channel(s), %d mailbox(es)", len(config.channels), len(config.mailboxes()))
        sd_notify("READY=1")
        return True

    def run_forever(self, loader: Callable[[], Config] | None = None) -> None:
        """Run until SIGTERM or SIGINT; SIGHUP reloads the configuration through ``loader``."""

        def _stop(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            self.stop_event.set()
            self._wake.set()

        def _hup(_signum: int, _frame: FrameType | None) -> None:
            self._reload_requested = True
            self._wake.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        if loader is not None:
            signal.signal(signal.SIGHUP, _hup)
        self.start()
        try:
            while not self.stop_event.is_set():
                self._wake.wait(30)
                self._wake.clear()
                if self._reload_requested and loader is not None and not self.stop_event.is_set():
                    self._reload_requested = False
                    self.reload(loader)
                sd_notify("WATCHDOG=1")
        finally:
            self.stop()
