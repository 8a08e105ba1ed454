"""A ticket's clocks and deadlines, kept in the database so the scheduler reads only what is due.

After every change to a ticket (a mail, a command, a status change, an escalation) :func:`refresh`
recomputes its SLA clocks from the history with the pure core (:mod:`helpdesk.core.sla`) and
writes what is to happen next as :class:`TicketDeadline` rows: SLA warnings and breaches, the next
escalation step, the end of a snooze, the auto-close of a silent pending ticket. The earliest of
them goes into ``ticket.next_due_at`` (indexed), so finding due work costs O(due), not O(open).

A deadline's ``key`` names its occasion (the clock's start, the activity an escalation counts
from); once it fired, a :class:`TicketAlert` with that key exists and it is never planned again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, delete, insert, or_, select
from sqlmodel import Session

from helpdesk.config import Config
from helpdesk.core.sla import Clock, Event, EventKind, Responsibility, compute
from helpdesk.service import Sla, rules
from helpdesk.store import queries
from helpdesk.store.models import (
    AuditEvent,
    Channel,
    Direction,
    Item,
    ItemKind,
    Organisation,
    Ticket,
    TicketAlert,
    TicketDeadline,
    Visibility,
)
from helpdesk.tickets.clockview import ClockView, view

__all__ = ["Planned", "TicketClocks", "clocks", "fired_keys", "refresh", "set_next_due", "views"]

_DEADLINE = queries.table_of(TicketDeadline)
_ALERT = queries.table_of(TicketAlert)
_AUDIT = queries.table_of(AuditEvent)
_ITEM = queries.table_of(Item)


@dataclass(frozen=True)
class Planned:
    kind: str
    key: str
    at: datetime


@dataclass(frozen=True)
class TicketClocks:
    """A ticket's SLA as of ``now``: the policy (None without one) and its clocks."""

    sla: Sla | None
    clocks: list[Clock]


def channel_name(session: Session, ticket: Ticket) -> str:
    channel = session.get(Channel, ticket.channel_id)
    assert channel is not None
    return channel.name


def organisation_name(session: Session, ticket: Ticket) -> str | None:
    if ticket.organisation_id is None:
        return None
    organisation = session.get(Organisation, ticket.organisation_id)
    return organisation.name if organisation else None


def history(session: Session, config: Config, ticket_id: int) -> list[Event]:
    """Status changes, customer messages and our answers, in order, as SLA events."""
    statuses = rules(config).statuses
    connection = session.connection()
    status_rows = connection.execute(
        select(_AUDIT.c.at, _AUDIT.c.new_value)
        .where(_AUDIT.c.ticket_id == ticket_id, _AUDIT.c.field == "status")
        .order_by(_AUDIT.c.at, _AUDIT.c.id)
    ).all()
    item_rows = connection.execute(
        select(_ITEM.c.created_at, _ITEM.c.direction)
        .where(
            _ITEM.c.ticket_id == ticket_id,
            _ITEM.c.kind == ItemKind.MESSAGE.value,
            _ITEM.c.visibility == Visibility.CUSTOMER.value,
            or_(
                _ITEM.c.direction == Direction.INBOUND.value,
                and_(_ITEM.c.direction == Direction.OUTBOUND.value, _ITEM.c.author.is_not(None)),
            ),
        )
        .order_by(_ITEM.c.created_at, _ITEM.c.id)
    ).all()
    events = [Event(at, EventKind.STATUS, statuses.responsibility(value or "new")) for at, value in status_rows]
    events += [
        Event(at, EventKind.CUSTOMER_MESSAGE if direction == Direction.INBOUND.value else EventKind.REPLY)
        for at, direction in item_rows
    ]
    events.sort(key=lambda e: e.at)  # stable: a status change and a message at one instant keep this order
    return events


def ticket_sla(session: Session, config: Config, ticket: Ticket, channel: str | None = None) -> Sla | None:
    """The SLA that applies to the ticket (its organisation's contract, else its channel's policy)."""
    service = rules(config)
    organisation = organisation_name(session, ticket) if service.organisations_have_slas else None
    return service.sla(channel or channel_name(session, ticket), organisation, ticket.priority)


def clocks(session: Session, config: Config, ticket: Ticket, now: datetime, channel: str | None = None) -> TicketClocks:
    assert ticket.id is not None
    sla = ticket_sla(session, config, ticket, channel)
    if sla is None:
        return TicketClocks(None, [])
    events = history(session, config, ticket.id)
    return TicketClocks(sla, compute(sla.targets, sla.calendar, ticket.created_at, events, now, sla.warning))


def views(state: TicketClocks) -> list[ClockView]:
    """The clocks in words, in the time zone of the SLA's calendar."""
    if state.sla is None:
        return []
    return [view(clock, state.sla.calendar.timezone) for clock in state.clocks]


def fired_keys(session: Session, ticket_id: int) -> set[tuple[str, str]]:
    rows = session.connection().execute(select(_ALERT.c.kind, _ALERT.c.key).where(_ALERT.c.ticket_id == ticket_id))
    return {(kind, key) for kind, key in rows}


def _clock_deadlines(state: TicketClocks, now: datetime) -> list[Planned]:
    planned: list[Planned] = []
    for clock in state.clocks:
        if clock.stopped_at is not None or clock.due_at is None:
            continue
        key = clock.started_at.isoformat()
        planned.append(Planned(f"{clock.name}.breach", key, clock.due_at))
        if clock.warn_at is not None and clock.warn_at < clock.due_at and clock.due_at > now:
            planned.append(Planned(f"{clock.name}.warning", key, clock.warn_at))
    return planned


def _other_deadlines(config: Config, ticket: Ticket, channel: str, fired: set[tuple[str, str]]) -> list[Planned]:
    service = rules(config)
    conf = config.find_channel(channel)
    responsibility = service.statuses.responsibility(ticket.status)
    activity = ticket.activity_at or ticket.updated_at
    planned: list[Planned] = []
    if ticket.snoozed_until is not None:
        planned.append(Planned("reminder", ticket.snoozed_until.isoformat(), ticket.snoozed_until))
    if conf is None:
        return planned
    if responsibility is Responsibility.US and ticket.snoozed_until is None and conf.escalation:
        calendar = service.calendar(channel)
        for index, step in enumerate(conf.escalation):
            key = f"{channel}:{index}@{activity.isoformat()}"
            if ("escalation", key) not in fired:
                planned.append(Planned("escalation", key, calendar.add(activity, step.after)))
                break
    if responsibility is Responsibility.CUSTOMER and conf.pending_auto_close is not None:
        planned.append(Planned("auto_close", activity.isoformat(), activity + conf.pending_auto_close))
    return planned


def _may_plan_more(config: Config, ticket: Ticket, channel: str) -> bool:
    if ticket.snoozed_until is not None:
        return True
    conf = config.find_channel(channel)
    return conf is not None and (bool(conf.escalation) or conf.pending_auto_close is not None)


def refresh(
    session: Session, config: Config, ticket: Ticket, now: datetime, channel: str | None = None
) -> TicketClocks:
    """Recompute the ticket's clocks and replace its deadlines; returns the clocks.

    ``channel`` (the ticket's channel name) saves a lookup when the caller knows it. Without an SLA,
    escalation, snooze or auto-close, and with no deadlines before, nothing is read or written."""
    assert ticket.id is not None
    channel = channel or channel_name(session, ticket)
    state = clocks(session, config, ticket, now, channel)
    planned = _clock_deadlines(state, now)
    if planned or _may_plan_more(config, ticket, channel):
        fired = fired_keys(session, ticket.id)
        planned += _other_deadlines(config, ticket, channel, fired)
        planned = [p for p in planned if (p.kind, p.key) not in fired]
    connection = session.connection()
    if ticket.next_due_at is not None:  # deadlines exist only while next_due_at is set
        connection.execute(delete(_DEADLINE).where(_DEADLINE.c.ticket_id == ticket.id))
    if planned:
        connection.execute(
            insert(_DEADLINE), [{"ticket_id": ticket.id, "kind": p.kind, "key": p.key, "at": p.at} for p in planned]
        )
    next_due = min((p.at for p in planned), default=None)
    policy = state.sla.policy if state.sla else None
    if (ticket.next_due_at, ticket.sla_policy) != (next_due, policy):
        queries.update_row(session, ticket, next_due_at=next_due, sla_policy=policy)
    return state


def set_next_due(session: Session, ticket: Ticket) -> None:
    """Set ``next_due_at`` from the deadlines left (after some fired without changing the ticket)."""
    next_due = session.connection().execute(
        select(_DEADLINE.c.at).where(_DEADLINE.c.ticket_id == ticket.id).order_by(_DEADLINE.c.at).limit(1)
    ).scalar()
    queries.update_row(session, ticket, next_due_at=next_due)
