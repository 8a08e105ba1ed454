"""Changes to a ticket, each written to the audit trail with who made it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session

from helpdesk.store import queries
from helpdesk.store.models import Ticket

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
