"""The delivery job: send due outbox rows through the SMTP relay and record what happened.

Temporary failures (4xx, connection refused, timeout) are retried with growing delays for the
configured ``smtp.retry_for``; after that, or at once on a permanent failure (5xx), the mail is
failed: the failure is recorded on its ticket and the ticket's owner is told by mail.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session

from helpdesk.config import Config, SmtpConfig
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound import outbox
from helpdesk.outbound.routing import Router, Transport
from helpdesk.outbound.transport import Delivery, DeliveryStatus, Envelope
from helpdesk.store.db import transaction
from helpdesk.store.models import OutboxState

log = logging.getLogger(__name__)

HOLD_RETRY = timedelta(minutes=1)  # when a held-back mail is tried again, unless the transport says

Clock = Callable[[], datetime]
# Called inside the transaction that marks a mail failed: (session, claimed row, reason, now, whether the
# receiving side refused it; False when we gave up retrying).
FailureHook = Callable[[Session, outbox.Claimed, str, datetime, bool], None]


@dataclass
class SendReport:
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    held: int = 0  # not attempted: a sending limit of the mailbox

    @property
    def attempted(self) -> int:
        return self.sent + self.deferred + self.failed


def lease_for(config: SmtpConfig) -> timedelta:
    """How long a claimed batch is ours: longer than any batch can take to send."""
    return timedelta(seconds=max(300.0, config.timeout * (config.batch_size + 2)))


class OutboxSender:
    def __init__(
        self,
        engine: Engine,
        config: Config,
        clock: Clock,
        on_failure: FailureHook,
        transport: Callable[[Config], Transport] | None = None,
        providers: Providers | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.on_failure = on_failure
        if transport is None:
            self.transport: Transport = Router(config, providers or Providers(config.oauth))
        else:
            self.transport = transport(config)

    def run_once(self, max_batches: int = 100) -> SendReport:
        """Send what is due now, batch by batch, until nothing due is left (or ``max_batches``)."""
        report = SendReport()
        for _ in range(max_batches):
            smtp = self.config.smtp
            with transaction(self.engine) as session:
                claimed = outbox.claim_due(session, self.clock(), smtp.batch_size, lease_for(smtp))
            if not claimed:
                break
            envelopes = [
                Envelope(key=c.id, sender=c.envelope_from, recipients=(c.recipient,), data=c.data) for c in claimed
            ]
            deliveries = {d.key: d for d in self.transport.deliver(envelopes)}
            self._record(claimed, deliveries, report)
            if all(d.status in (DeliveryStatus.TEMPORARY, DeliveryStatus.HELD) for d in deliveries.values()):
                break  # the relay is not taking mail now: the rest waits for its next attempt
        if report.attempted or report.held:
            log.info(
                "outbox: %d sent, %d deferred, %d failed%s", report.sent, report.deferred, report.failed,
                f", {report.held} held back by sending limits" if report.held else "",
            )
        return report

    def _record(self, claimed: list[outbox.Claimed], deliveries: dict[int, Delivery], report: SendReport) -> None:
        retry_for = self.config.smtp.retry_for
        with transaction(self.engine) as session:
            now = self.clock()
            for row in claimed:
                delivery = deliveries.get(row.id)
                if delivery is None:
                    delivery = Delivery(row.id, DeliveryStatus.TEMPORARY, "no result from the transport")
                attempts = row.attempts + 1
                if delivery.status is DeliveryStatus.SENT:
                    outbox.mark(
                        session, row.id, state=OutboxState.SENT, attempts=attempts, now=now, error=None,
                        sent_message_id=delivery.message_id,
                    )
                    report.sent += 1
                elif delivery.status is DeliveryStatus.HELD:
                    wait = timedelta(seconds=delivery.retry_in) if delivery.retry_in else HOLD_RETRY
                    outbox.mark(
                        session, row.id, state=OutboxState.QUEUED, attempts=row.attempts, now=now,
                        error=delivery.detail, next_attempt_at=now + wait,
                    )
                    report.held += 1
                elif delivery.status is DeliveryStatus.TEMPORARY and now - row.created_at < retry_for:
                    outbox.mark(
                        session, row.id, state=OutboxState.QUEUED, attempts=attempts, now=now, error=delivery.detail,
                        next_attempt_at=now + outbox.retry_delay(attempts),
                    )
                    report.deferred += 1
                else:
                    reason = delivery.detail
                    if delivery.status is DeliveryStatus.TEMPORARY:
                        reason = f"still failing after {retry_for} of retries: {reason}"
                    outbox.mark(session, row.id, state=OutboxState.FAILED, attempts=attempts, now=now, error=reason)
                    log.warning("outbox: mail %d to %s failed: %s", row.id, row.recipient, reason)
                    self.on_failure(session, row, reason, now, delivery.status is DeliveryStatus.PERMANENT)
                    report.failed += 1

    def next_due(self) -> datetime | None:
        with transaction(self.engine) as session:
            return outbox.next_due(session)
