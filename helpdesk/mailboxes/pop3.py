"""POP3 intake with poplib.

Every message is stored under its UIDL. A UIDL already in the database is never imported again;
DELE is sent only for messages whose ticket (or quarantine entry) is committed, and POP3 applies it
at QUIT, so a dropped connection leaves the message on the server for the next poll to delete.
"""

from __future__ import annotations

import contextlib
import logging
import poplib

from helpdesk.config import AfterImport, TlsMode
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.mailboxes.base import ConfiguredMailbox, PermanentError, PollReport, TemporaryError, mailbox_password
from helpdesk.mailboxes.imap import tls_context
from helpdesk.store.db import transaction
from helpdesk.store.queries import known_source_keys

log = logging.getLogger(__name__)


class Pop3Mailbox(ConfiguredMailbox):
    def _connect(self) -> poplib.POP3:
        cfg = self.config
        password = mailbox_password(cfg, self._secret)
        context = tls_context(cfg.verify_tls, cfg.ca_file)
        try:
            client: poplib.POP3
            if cfg.tls is TlsMode.IMPLICIT:
                client = poplib.POP3_SSL(cfg.endpoint, cfg.effective_port, timeout=cfg.timeout, context=context)
            else:
                client = poplib.POP3(cfg.endpoint, cfg.effective_port, timeout=cfg.timeout)
                if cfg.tls is TlsMode.STARTTLS:
                    client.stls(context)
        except (OSError, poplib.error_proto) as exc:
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from exc
        try:
            client.user(cfg.user)
            client.pass_(password)
        except poplib.error_proto as exc:
            self._abandon(client)
            raise PermanentError(f"mailbox {cfg.name}: login as {cfg.user} refused: {exc}") from exc
        except OSError as exc:
            self._abandon(client)
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from exc
        return client

    @staticmethod
    def _abandon(client: poplib.POP3) -> None:
        with contextlib.suppress(Exception):
            client.close()

    def poll(self, intake: Intake) -> PollReport:
        client = self._connect()
        try:
            report = self._poll(client, intake)
            client.quit()  # applies the DELEs
            return report
        except (OSError, poplib.error_proto) as exc:
            self._abandon(client)
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from exc

    def _poll(self, client: poplib.POP3, intake: Intake) -> PollReport:
        cfg = self.config
        report = PollReport(mailbox=self.name)
        listing: dict[str, int] = {}
        for line in client.uidl()[1]:
            number, _, uid = line.decode("ascii", "replace").partition(" ")
            listing[uid.strip()] = int(number)
        if not listing:
            return report
        with transaction(intake.engine) as session:
            known = known_source_keys(session, self.name, listing)
        delete = cfg.action is AfterImport.DELETE
        if known:
            report.add(intake.process_pending())
            if delete:
                for uid in known:
                    client.dele(listing[uid])
                report.acknowledged += len(known)
        fresh = [uid for uid in listing if uid not in known]
        for start in range(0, len(fresh), cfg.batch_size):
            batch = fresh[start : start + cfg.batch_size]
            incoming = []
            for uid in batch:
                lines = client.retr(listing[uid])[1]
                incoming.append(Incoming(key=uid, data=b"\r\n".join(lines) + b"\r\n"))
            results = intake.ingest(self.name, incoming)
            report.add(results)
            for result in results:
                if result.settled and delete:
                    client.dele(listing[result.key])
                    report.acknowledged += 1
        return report

    @property
    def can_idle(self) -> bool:
        return False

    def wait(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        return None
