"""Changes to a ticket, each written to the audit trail with who made it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from helpdesk.config import Config
from helpdesk.service import rules
from helpdesk.store import queries
from helpdesk.store.models import Ticket
from helpdesk.tickets import deadlines

DONE_STATUSES = frozenset({"solved", "closed"})  # the statuses with a time stamp of their own


def set_status(session: Session, ticket: Ticket, status: str, actor: str, now: datetime) -> bool:
    """Move the ticket to ``status`` (stamping solved/closed times); False when it was there already."""
    if ticket.status == status:
        return False
    queries.audit(
        session, ticket_id=ticket.id, action="status_changed", actor=actor, now=now,
        field="status", old=ticket.status, new=status,
    )
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status == "solved":
        values["solved_at"] = now
    elif status == "closed":
        values["closed_at"] = now
    elif status not in DONE_STATUSES and ticket.status in DONE_STATUSES:
        values["solved_at"] = None
        values["closed_at"] = None
    queries.update_row(session, ticket, **values)
    return True


def set_field(session: Session, ticket: Ticket, name: str, value: object, actor: str, now: datetime) -> bool:
    """Change owner, assignee, priority, ...; False when the value is unchanged."""
    old = getattr(ticket, name)
    if old == value:
        return False
    queries.audit(
        session, ticket_id=ticket.id, action=f"{name}_changed", actor=actor, now=now, field=name, old=old, new=value
    )
    queries.update_row(session, ticket, **{name: value, "updated_at": now})
    return True


def change_status(
    session: Session, config: Config, ticket: Ticket, status: str, actor: str, now: datetime
) -> bool:
    """A person's status change: checked against the channel's workflow (raises
    :class:`~helpdesk.core.workflow.TransitionRefused`), counted as activity, deadlines replanned."""
    service = rules(config)
    service.statuses.check(service.workflow(deadlines.channel_name(session, ticket)), ticket.status, status)
    changed = set_status(session, ticket, status, actor, now)
    if changed:
        queries.update_row(session, ticket, activity_at=now)
        deadlines.refresh(session, config, ticket, now)
    return changed


def snooze(session: Session, config: Config, ticket: Ticket, until: datetime | None, actor: str, now: datetime) -> bool:
    """Put the ticket to sleep until ``until`` (None: wake it); the reminder is planned at once."""
    changed = set_field(session, ticket, "snoozed_until", until, actor, now)
    if changed:
        deadlines.refresh(session, config, ticket, now)
    return changed
