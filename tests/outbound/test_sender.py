"""The outbox sender against a real SMTP server: leases, retries, giving up, and a crash between
sending and recording (the same mail again, never a different one)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import Config, validate
from helpdesk.outbound import outbox
from helpdesk.outbound.sender import OutboxSender, lease_for
from helpdesk.outbound.transport import Envelope, SmtpTransport
from helpdesk.store.db import transaction
from helpdesk.store.models import Outbox, OutboxKind
from tests.conftest import Clock, base_config
from tests.outbound.conftest import smtp_config_for
from tests.servers.smtp import SmtpSink


def config_for(sink: SmtpSink, **smtp: Any) -> Config:
    return validate(base_config(smtp=smtp_config_for(sink, **smtp).model_dump(mode="json")))


def queue(engine: Engine, clock: Clock, count: int, recipient: str = "x@acme.example") -> list[str]:
    ids = []
    with transaction(engine) as session:
        for n in range(count):
            message_id = f"m{n}.{recipient}.{clock.now.timestamp()}@example.test"
            data = f"From: support@example.test\r\nTo: {recipient}\r\nMessage-ID: <{message_id}>\r\n\r\nhi {n}\r\n"
            outbox.enqueue(
                session, kind=OutboxKind.ACK, ticket_id=None, item_id=None, envelope_from="support@example.test",
                recipient=recipient, message_id=message_id, subject=f"n{n}", data=data.encode(), now=clock.now,
            )
            ids.append(message_id)
    return ids


def rows(engine: Engine) -> list[Outbox]:
    with Session(engine) as session:
        return list(session.exec(select(Outbox).order_by(col(Outbox.id))).all())


def failures() -> tuple[list[tuple[int, str]], Any]:
    seen: list[tuple[int, str]] = []

    def hook(_session: Any, row: outbox.Claimed, reason: str, _now: Any, _refused: bool) -> None:
        seen.append((row.id, reason))

    return seen, hook


def test_crash_between_sending_and_recording_resends_the_same_bytes(
    engine: Engine, clock: Clock, smtp_sink: SmtpSink
) -> None:
    config = config_for(smtp_sink)
    queue(engine, clock, 3)
    # A sender claims and sends, then dies before it can record anything.
    with transaction(engine) as session:
        claimed = outbox.claim_due(session, clock.now, 10, lease_for(config.smtp))
    SmtpTransport(config.smtp).deliver(
        [Envelope(c.id, c.envelope_from, (c.recipient,), c.data) for c in claimed]
    )
    assert len(smtp_sink.received) == 3
    seen, hook = failures()
    sender = OutboxSender(engine, config, clock, hook)
    assert sender.run_once().attempted == 0  # the lease still holds: nobody sends it meanwhile
    clock.advance(seconds=lease_for(config.smtp).total_seconds() + 1)
    assert sender.run_once().sent == 3
    first, again = smtp_sink.received[:3], smtp_sink.received[3:]
    assert [r.data for r in first] == [r.data for r in again]  # identical mails, Message-ID included
    assert {r.state for r in rows(engine)} == {"sent"} and not seen


def test_temporary_failures_are_retried_then_given_up(engine: Engine, clock: Clock, smtp_sink: SmtpSink) -> None:
    config = config_for(smtp_sink, retry_for="3h")
    smtp_sink.refuse("x@acme.example", "451 4.3.0 Try again later")
    queue(engine, clock, 1)
    seen, hook = failures()
    sender = OutboxSender(engine, config, clock, hook)
    delays = []
    for _ in range(12):
        report = sender.run_once()
        if report.failed:
            break
        [row] = rows(engine)
        delays.append(row.next_attempt_at - clock.now)
        clock.now = row.next_attempt_at
    assert delays[:4] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert max(delays) == timedelta(hours=1)  # backoff is capped
    [row] = rows(engine)
    assert row.state == "failed" and row.last_error and "after 3:00:00 of retries" in row.last_error
    assert seen and "451 4.3.0" in seen[0][1]


def test_permanent_failure_is_not_retried(engine: Engine, clock: Clock, smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("gone@acme.example", "550 5.1.1 No such user")
    queue(engine, clock, 1, recipient="gone@acme.example")
    queue(engine, clock, 1, recipient="here@acme.example")
    seen, hook = failures()
    report = OutboxSender(engine, config_for(smtp_sink), clock, hook).run_once()
    assert (report.sent, report.failed, report.deferred) == (1, 1, 0)
    assert [r.state for r in rows(engine)] == ["failed", "sent"]
    assert seen[0][1].startswith("550 5.1.1")
