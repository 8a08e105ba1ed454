"""The outbox table: every mail the system sends is a row here before it is sent.

A row is written in the transaction of the change that causes it (a ticket opened, a reply relayed)
and holds the complete message, Message-ID included. Delivery claims due rows with a lease, sends
them and records the outcome; a claim whose outcome was never recorded (the process died between
sending and committing) is claimed again once its lease ends and the same bytes are sent again.

Guarantee: at-least-once delivery of one fixed message. A crash in that narrow window can hand the
relay the identical mail twice (same Message-ID, which receiving clients collapse); it can never
produce two different mails, and a committed row is never lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlmodel import Session

from helpdesk.store.models import Outbox, OutboxKind, OutboxState
from helpdesk.store.queries import table_of

OUTBOX = table_of(Outbox)
_INSERT = insert(OUTBOX).returning(OUTBOX.c.id)

# Retry delays after temporary failures: 1, 2, 4, ... minutes, at most an hour apart.
FIRST_RETRY = timedelta(minutes=1)
MAX_RETRY = timedelta(hours=1)


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failed attempt."""
    delay: timedelta = FIRST_RETRY * (2 ** max(attempts - 1, 0))
    return min(delay, MAX_RETRY)


def enqueue(
    session: Session,
    *,
    kind: OutboxKind,
    ticket_id: int | None,
    item_id: int | None,
    envelope_from: str,
    recipient: str,
    message_id: str,
    subject: str,
    data: bytes,
    now: datetime,
) -> int:
    """Queue one complete message to one recipient; returns the row id (nothing is sent here)."""
    values: dict[str, Any] = {
        "ticket_id": ticket_id,
        "item_id": item_id,
        "kind": kind.value,
        "message_id": message_id,
        "envelope_from": envelope_from,
        "recipient": recipient.lower(),
        "subject": subject,
        "data": data,
        "state": OutboxState.QUEUED.value,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
    return int(session.connection().execute(_INSERT, values).scalar_one())


def count_recent(
    session: Session, *, kind: OutboxKind, since: datetime, ticket_id: int | None = None, recipient: str | None = None
) -> int:
    """How many mails of ``kind`` were queued since ``since`` for a ticket or a recipient."""
    stmt = sa_select(func.count()).select_from(OUTBOX).where(OUTBOX.c.kind == kind.value, OUTBOX.c.created_at >= since)
    if ticket_id is not None:
        stmt = stmt.where(OUTBOX.c.ticket_id == ticket_id)
    if recipient is not None:
        stmt = stmt.where(OUTBOX.c.recipient == recipient.lower())
    return int(session.connection().execute(stmt).scalar_one())


def ticket_of_message_ids(session: Session, message_ids: Sequence[str]) -> tuple[int, str] | None:
    """The ticket of the first of ``message_ids`` that we sent, with that id."""
    if not message_ids:
        return None
    wanted = list(message_ids)
    stmt = sa_select(OUTBOX.c.message_id, OUTBOX.c.sent_message_id, OUTBOX.c.ticket_id).where(
        or_(OUTBOX.c.message_id.in_(wanted), OUTBOX.c.sent_message_id.in_(wanted)), OUTBOX.c.ticket_id.is_not(None)
    )
    hits: dict[str, int] = {}
    for ours, assigned, ticket_id in session.connection().execute(stmt):
        hits[ours] = ticket_id
        if assigned:  # the id the sending service gave the mail: what the customer's reply refers to
            hits[assigned] = ticket_id
    for mid in message_ids:
        if mid in hits:
            return int(hits[mid]), mid
    return None


def was_sent_to(session: Session, ticket_id: int, address: str) -> bool:
    stmt = sa_select(OUTBOX.c.id).where(OUTBOX.c.ticket_id == ticket_id, OUTBOX.c.recipient == address.lower())
    return session.connection().execute(stmt.limit(1)).first() is not None


@dataclass(frozen=True)
class Claimed:
    id: int
    ticket_id: int | None
    kind: OutboxKind
    envelope_from: str
    recipient: str
    subject: str
    data: bytes
    attempts: int
    created_at: datetime


_DUE = and_(
    or_(OUTBOX.c.state == OutboxState.QUEUED.value, OUTBOX.c.state == OutboxState.SENDING.value),
    OUTBOX.c.next_attempt_at <= bindparam("now"),
)


def claim_due(session: Session, now: datetime, limit: int, lease: timedelta) -> list[Claimed]:
    """Take up to ``limit`` due rows for sending: they stay ``sending`` until ``now + lease``.

    Rows another process holds (PostgreSQL row locks) are skipped, not waited for."""
    ids_stmt = (
        sa_select(OUTBOX.c.id)
        .where(_DUE)
        .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    connection = session.connection()
    ids = [row_id for (row_id,) in connection.execute(ids_stmt, {"now": now})]
    if not ids:
        return []
    connection.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id.in_(ids))
        .values(state=OutboxState.SENDING.value, next_attempt_at=now + lease)
    )
    rows = connection.execute(
        sa_select(
            OUTBOX.c.id, OUTBOX.c.ticket_id, OUTBOX.c.kind, OUTBOX.c.envelope_from, OUTBOX.c.recipient,
            OUTBOX.c.subject, OUTBOX.c.data, OUTBOX.c.attempts, OUTBOX.c.created_at,
        ).where(OUTBOX.c.id.in_(ids)).order_by(OUTBOX.c.id)
    )
    return [
        Claimed(
            id=r.id, ticket_id=r.ticket_id, kind=OutboxKind(r.kind), envelope_from=r.envelope_from,
            recipient=r.recipient, subject=r.subject, data=r.data, attempts=r.attempts, created_at=r.created_at,
        )
        for r in rows
    ]


def mark(
    session: Session,
    row_id: int,
    *,
    state: OutboxState,
    attempts: int,
    now: datetime,
    error: str | None,
    next_attempt_at: datetime | None = None,
    sent_message_id: str | None = None,
) -> None:
    values: dict[str, Any] = {"state": state.value, "attempts": attempts, "last_error": error}
    if state is OutboxState.SENT:
        values["sent_at"] = now
        values["sent_message_id"] = sent_message_id
    values["next_attempt_at"] = next_attempt_at or now
    session.connection().execute(update(OUTBOX).where(OUTBOX.c.id == row_id).values(values))


def next_due(session: Session) -> datetime | None:
    """When the next queued mail is due (None when nothing waits)."""
    stmt = sa_select(func.min(OUTBOX.c.next_attempt_at)).where(
        or_(OUTBOX.c.state == OutboxState.QUEUED.value, OUTBOX.c.state == OutboxState.SENDING.value)
    )
    value = session.connection().execute(stmt).scalar_one()
    return value if isinstance(value, datetime) else None


def requeue(session: Session, row_id: int, now: datetime) -> bool:
    """Send a failed mail again (after the cause was fixed); False when it is not a failed mail."""
    stmt = (
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id, OUTBOX.c.state == OutboxState.FAILED.value)
        .values(state=OutboxState.QUEUED.value, next_attempt_at=now, created_at=now)
    )
    return bool(session.connection().execute(stmt).rowcount)
