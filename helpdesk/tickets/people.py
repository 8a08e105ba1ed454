"""Who is involved in a ticket: owner (works it), assignee (stays informed), watchers (get every item).

Creator and owner become watchers automatically; so does any staff member who acts on the ticket.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session

from helpdesk.config import Config, StaffConfig
from helpdesk.store.models import Ticket, TicketWatcher
from helpdesk.store.queries import table_of

WATCHER = table_of(TicketWatcher)
_ADD = {
    "sqlite": sqlite_insert(WATCHER).on_conflict_do_nothing(index_elements=["ticket_id", "staff"]),
    "postgresql": pg_insert(WATCHER).on_conflict_do_nothing(index_elements=["ticket_id", "staff"]),
}


def add_watcher(session: Session, ticket_id: int, staff: str, reason: str, now: datetime) -> None:
    connection = session.connection()
    connection.execute(
        _ADD[connection.dialect.name], {"ticket_id": ticket_id, "staff": staff, "reason": reason, "added_at": now}
    )


def remove_watcher(session: Session, ticket_id: int, staff: str) -> None:
    connection = session.connection()
    connection.execute(WATCHER.delete().where(WATCHER.c.ticket_id == ticket_id, WATCHER.c.staff == staff))


def watchers(session: Session, ticket_id: int) -> list[str]:
    stmt = sa_select(WATCHER.c.staff).where(WATCHER.c.ticket_id == ticket_id).order_by(WATCHER.c.added_at)
    return [name for (name,) in session.connection().execute(stmt)]


def channel_team(config: Config, channel: str) -> list[StaffConfig]:
    """Staff who see a channel's tickets (those with no channel list see all)."""
    return [s for s in config.staff if not s.channels or channel in s.channels]


def to_notify(
    session: Session, config: Config, ticket: Ticket, channel: str, exclude: str | None = None
) -> list[StaffConfig]:
    """Who hears of a new item: owner, assignee and watchers; the channel's team while nobody owns it."""
    assert ticket.id is not None
    if not config.staff:
        return []
    names = [n for n in (ticket.owner, ticket.assignee, *watchers(session, ticket.id)) if n]
    if ticket.owner is None:
        names.extend(s.name for s in channel_team(config, channel))
    seen: set[str] = set()
    members: list[StaffConfig] = []
    for name in names:
        member = config.staff_member(name)
        if member is None or name in seen or name == exclude:
            continue
        seen.add(name)
        members.append(member)
    return members
