"""One ticket as an operator sees it on the command line: facts, every SLA clock, deadlines, history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from helpdesk.config import Config
from helpdesk.service import rules
from helpdesk.store import queries
from helpdesk.store.models import AuditEvent, Ticket, TicketDeadline
from helpdesk.tickets import deadlines
from helpdesk.tickets.clockview import local_time, view

__all__ = ["describe", "describe_json"]


def _when(instant: datetime | None, timezone: str) -> str:
    return local_time(instant, timezone) if instant else "-"


def describe_json(session: Session, config: Config, ticket: Ticket, now: datetime) -> dict[str, Any]:
    assert ticket.id is not None
    service = rules(config)
    channel = deadlines.channel_name(session, ticket)
    state = deadlines.clocks(session, config, ticket, now)
    timezone = state.sla.calendar.timezone if state.sla else service.calendar(channel).timezone
    contact = queries.contact_address(session, ticket.contact_id) if ticket.contact_id else None
    status = service.statuses.get(ticket.status)
    pending = session.exec(
        select(TicketDeadline).where(TicketDeadline.ticket_id == ticket.id).order_by(col(TicketDeadline.at))
    ).all()
    history = session.exec(
        select(AuditEvent).where(AuditEvent.ticket_id == ticket.id).order_by(col(AuditEvent.at), col(AuditEvent.id))
    ).all()
    return {
        "number": ticket.number,
        "subject": ticket.subject,
        "channel": channel,
        "status": ticket.status,
        "status_label": service.statuses.label(ticket.status),
        "responsibility": status.responsibility.value,
        "priority": ticket.priority,
        "owner": ticket.owner,
        "assignee": ticket.assignee,
        "contact": f"{contact[0]} <{contact[1]}>" if contact and contact[0] else (contact[1] if contact else None),
        "organisation": deadlines.organisation_name(session, ticket),
        "created_at": ticket.created_at,
        "activity_at": ticket.activity_at,
        "snoozed_until": ticket.snoozed_until,
        "timezone": timezone,
        "sla_policy": state.sla.policy if state.sla else None,
        "clocks": [view(clock, timezone).__dict__ for clock in state.clocks],
        "next_due_at": ticket.next_due_at,
        "deadlines": [{"kind": d.kind, "at": d.at, "key": d.key} for d in pending],
        "history": [
            {"at": e.at, "action": e.action, "field": e.field, "old": e.old_value, "new": e.new_value, "actor": e.actor}
            for e in history
        ],
    }


def describe(session: Session, config: Config, ticket: Ticket, now: datetime) -> list[str]:
    data = describe_json(session, config, ticket, now)
    tz = data["timezone"]
    lines = [
        f"{data['number']}  {data['subject']}",
        f"Status:        {data['status_label']} ({data['status']}; the ball is with "
        f"{ {'us': 'us', 'customer': 'the customer', 'done': 'nobody: done'}[data['responsibility']] })",
        f"Channel:       {data['channel']}    Priority: {data['priority']}",
        f"Contact:       {data['contact'] or '-'}    Organisation: {data['organisation'] or '-'}",
        f"Owner:         {data['owner'] or '-'}    Assignee: {data['assignee'] or '-'}",
        f"Created:       {_when(data['created_at'], tz)}    Last activity: {_when(data['activity_at'], tz)}",
        f"Snoozed until: {_when(data['snoozed_until'], tz)}",
    ]
    if data["sla_policy"] is None:
        lines.append("SLA:           none (neither the channel nor the organisation has a policy)")
    else:
        lines.append(f"SLA:           policy {data['sla_policy']}, business hours in {tz}")
        for clock in data["clocks"]:
            lines.append(
                f"  {clock['label']:<15} {clock['state']:<8} target {clock['target']}  elapsed {clock['elapsed']}  "
                f"remaining {clock['remaining']}  due {clock['due'] or '-'}"
            )
            lines.append(f"    {clock['summary']}")
    lines.append("Deadlines:" if data["deadlines"] else "Deadlines:     none")
    lines += [f"  {_when(d['at'], tz)}  {d['kind']}" for d in data["deadlines"]]
    lines.append("History:")
    for event in data["history"]:
        change = f"{event['field']}: {event['old'] or '-'} -> {event['new'] or '-'}" if event["field"] else ""
        lines.append(f"  {_when(event['at'], tz)}  {event['action']:<22} {change}  ({event['actor']})")
    return lines
