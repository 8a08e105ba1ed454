"""Composition root: configuration -> database -> intake -> mailbox workers, scheduler and listener.

An IMAP mailbox with IDLE runs in a worker thread of its own with its own backoff, so a mailbox that
is down never holds up the others; the LMTP listener runs in aiosmtpd's thread. Everything done on
a timetable runs as APScheduler jobs (:mod:`helpdesk.scheduler.jobs`): polls of mailboxes without
IDLE, the outbox, and the sweep of due SLA work. A mailbox is read by one daemon at a time: a
lease in the database (:mod:`helpdesk.scheduler.leases`) guards every poll.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import Engine

from helpdesk.config import Config, ConfigError, MailboxConfig
from helpdesk.intake.runner import Clock, Intake, utcnow
from helpdesk.mailboxes.base import Backoff, Mailbox, PermanentError, PollReport, TemporaryError
from helpdesk.mailboxes.factory import make_mailbox
from helpdesk.mailboxes.lmtp import Listener
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound.failures import FailureRecorder
from helpdesk.outbound.mailer import Mailer, SecretMissing
from helpdesk.outbound.routing import Transport
from helpdesk.outbound.sender import OutboxSender, SendReport
from helpdesk.scheduler import jobs, leases
from helpdesk.scheduler.sweep import SweepReport, sweep
from helpdesk.store.db import make_engine, transaction
from helpdesk.store.migrate import upgrade
from helpdesk.store.models import MailboxState

log = logging.getLogger(__name__)

# IDLE is re-entered this often (seconds), so a stop or reload never waits long on a quiet mailbox.
IDLE_CHUNK = 3.0
# A mailbox worker whose mailbox is leased by another daemon tries again this often (seconds).
LEASE_RETRY = 30.0


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


def uses_idle(box: MailboxConfig) -> bool:
    """Whether the mailbox gets a worker thread waiting in IDLE (else scheduled polls)."""
    return box.kind == "imap" and box.idle


@dataclass
class _Polled:
    """A mailbox read by scheduled polls: its connection, backoff and when it may be tried again."""

    config: MailboxConfig
    box: Mailbox
    backoff: Backoff = field(default_factory=Backoff)
    not_before: float = 0.0


@dataclass
class OnceSummary:
    reports: list[PollReport] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    sent: SendReport = field(default_factory=SendReport)
    swept: SweepReport = field(default_factory=SweepReport)


class Daemon:
    def __init__(
        self,
        config: Config,
        engine: Engine | None = None,
        clock: Clock = utcnow,
        mailbox_factory: Callable[[MailboxConfig], Mailbox] | None = None,
        transport_factory: Callable[[Config], Transport] | None = None,
    ) -> None:
        self.config = config
        self.engine = engine or make_engine(config.database_url)
        upgrade(self.engine)
        self.clock = clock
        self._mailbox_factory = mailbox_factory
        self.transport_factory = transport_factory
        self.instance = leases.instance_name()
        self._build(config)
        self.stop_event = threading.Event()  # the whole daemon stops
        self.listener: Listener | None = None
        self._workers_stop = threading.Event()  # this generation of workers stops (reload)
        self._threads: list[threading.Thread] = []
        self._wake = threading.Event()
        self._reload_requested = False
        self.scheduler: BackgroundScheduler | None = None
        self._polled: dict[str, _Polled] = {}

    def _build(self, config: Config) -> None:
        """The parts that depend on the configuration (rebuilt on reload)."""
        mailer = Mailer(config)
        self.intake = Intake(self.engine, config, self.clock, mailer)
        self.mailer = mailer
        # One set of token providers for every mailbox and transport: each token is fetched once.
        self.providers = Providers(config.oauth)
        self.sender = OutboxSender(
            self.engine, config, self.clock, FailureRecorder(config, mailer), self.transport_factory, self.providers
        )

    def mailbox_factory(self, config: MailboxConfig) -> Mailbox:
        if self._mailbox_factory is not None:
            return self._mailbox_factory(config)
        return make_mailbox(config, self.providers)

    # --- single pass -----------------------------------------------------------------------------

    def run_once(self) -> OnceSummary:
        """Import everything waiting in every mailbox, finish pending messages, and return."""
        summary = OnceSummary()
        self.intake.process_pending()
        for _channel, box_config in self.config.mailboxes():
            if not self._lease(box_config):
                summary.errors[box_config.name] = "another daemon is reading this mailbox"
                continue
            box = self.mailbox_factory(box_config)
            try:
                summary.reports.append(box.poll(self.intake))
            except (TemporaryError, PermanentError) as exc:
                summary.errors[box_config.name] = str(exc)
                record_mailbox_error(self.engine, box_config, str(exc))
                log.error("mailbox %s: %s", box_config.name, exc)
            finally:
                box.close()
                self._release(box_config)
        summary.swept = self.sweep_once()
        summary.sent = self.sender.run_once()
        return summary

    def sweep_once(self) -> SweepReport:
        """Fire everything due now, batch after batch."""
        total = SweepReport()
        while True:
            report = sweep(
                self.engine, self.config, self.clock(), self.mailer, self.instance, self.config.scheduler.batch_size
            )
            total.tickets += report.tickets
            total.fired.update(report.fired)
            if not report.more:
                return total

    # --- leases ----------------------------------------------------------------------------------

    def _lease(self, box: MailboxConfig) -> bool:
        return leases.acquire(
            self.engine, f"mailbox:{box.name}", self.instance, self.clock(), self.config.scheduler.lease
        )

    def _release(self, box: MailboxConfig) -> None:
        try:
            leases.release(self.engine, f"mailbox:{box.name}", self.instance)
        except Exception:  # the lease runs out by itself
            log.exception("mailbox %s: could not release its lease", box.name)

    # --- long-running ----------------------------------------------------------------------------

    def _worker(self, box_config: MailboxConfig, stop: threading.Event) -> None:
        box = self.mailbox_factory(box_config)
        backoff = Backoff()
        while not stop.is_set():
            try:
                if not self._lease(box_config):
                    box.close()
                    stop.wait(min(box_config.poll_interval, LEASE_RETRY))
                    continue
                report = box.poll(self.intake)
                backoff.reset()
                if report.fetched:
                    log.info("mailbox %s: %d messages imported", box.name, report.fetched)
                    self._wake_outbox()
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
        self._release(box_config)

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

    # --- scheduled jobs (called through helpdesk.scheduler.jobs) ---------------------------------

    def send_outbox(self) -> None:
        try:
            self.sender.run_once()
        except Exception:  # the database or relay may be away: log and go on; the next run retries
            log.exception("outbox: sending failed")

    def sweep_due(self) -> None:
        try:
            report = self.sweep_once()
        except Exception:
            log.exception("sweep failed; the next run retries")
            return
        if report.total:
            self._wake_outbox()

    def poll_mailbox(self, name: str) -> None:
        """One poll of a mailbox without IDLE, under its lease, with backoff after failures."""
        polled = self._polled.get(name)
        if polled is None or time.monotonic() < polled.not_before:
            return
        box_config = polled.config
        if not self._lease(box_config):
            log.debug("mailbox %s: another daemon holds it", name)
            return
        try:
            report = polled.box.poll(self.intake)
            polled.backoff.reset()
            if report.fetched:
                log.info("mailbox %s: %d messages imported", name, report.fetched)
                self._wake_outbox()
        except Exception as exc:
            delay = polled.backoff.next_delay()
            polled.not_before = time.monotonic() + delay
            if isinstance(exc, TemporaryError | PermanentError):
                log.warning("mailbox %s: %s; retrying in %.0f s", name, exc, delay)
            else:
                log.exception("mailbox %s: unexpected error; retrying in %.0f s", name, delay)
            record_mailbox_error(self.engine, box_config, f"{type(exc).__name__}: {exc}")
            polled.box.close()
        finally:
            self._release(box_config)

    def _wake_outbox(self) -> None:
        scheduler = self.scheduler
        if scheduler is not None:
            with contextlib.suppress(JobLookupError):
                scheduler.modify_job("outbox", next_run_time=datetime.now(UTC))

    def _start_scheduler(self) -> None:
        jobs.register(self.instance, self)
        now = datetime.now(UTC)
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=4 + len(self.config.mailboxes()))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        scheduler.add_job(
            jobs.send_outbox, "interval", args=[self.instance], id="outbox",
            seconds=self.config.smtp.poll_interval, next_run_time=now,
        )
        scheduler.add_job(
            jobs.sweep_due, "interval", args=[self.instance], id="sweep",
            seconds=self.config.scheduler.sweep_interval, next_run_time=now,
        )
        for _channel, box_config in self.config.mailboxes():
            if uses_idle(box_config):
                continue
            self._polled[box_config.name] = _Polled(box_config, self.mailbox_factory(box_config))
            scheduler.add_job(
                jobs.poll_mailbox, "interval", args=[self.instance, box_config.name], id=f"poll:{box_config.name}",
                seconds=box_config.poll_interval, next_run_time=now,
            )
        scheduler.start()
        self.scheduler = scheduler

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
            self.scheduler = None
        jobs.unregister(self.instance)
        for polled in self._polled.values():
            polled.box.close()
            self._release(polled.config)
        self._polled.clear()

    def _start_workers(self) -> None:
        self.intake.process_pending()
        if self.config.listener.enabled:
            self.listener = Listener(self.intake, self.config)
            self.listener.start()
        stop = self._workers_stop = threading.Event()
        for _channel, box_config in self.config.mailboxes():
            if not uses_idle(box_config):
                continue
            thread = threading.Thread(
                target=self._worker, args=(box_config, stop), name=f"mailbox-{box_config.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._start_scheduler()

    def _stop_workers(self) -> None:
        self._workers_stop.set()
        self._stop_scheduler()
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
