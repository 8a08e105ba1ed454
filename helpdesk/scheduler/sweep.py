"""The sweep: fire what has come due (SLA warnings and breaches, escalations, reminders, auto-close).

It reads only tickets whose indexed ``next_due_at`` has passed, in batches. On PostgreSQL the batch
is claimed with ``FOR UPDATE SKIP LOCKED``, so two daemons sweeping at once take different tickets;
on SQLite the write lock serialises them. Whatever fires is recorded as a :class:`TicketAlert`
under a unique key in the same transaction as its effects (audit event, history item, mails), so
each occasion fires once even if two sweeps meet.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col

from helpdesk.config import ChannelConfig, Config, StaffConfig, StaffRole
from helpdesk.core.sla import ClockName
from helpdesk.outbound.mailer import Mailer
from helpdesk.service import rules
from helpdesk.store import queries
from helpdesk.store.db import transaction
from helpdesk.store.models import Direction, ItemKind, Ticket, TicketAlert, TicketDeadline, Visibility
from helpdesk.tickets import actions, deadlines, people
from helpdesk.tickets.clockview import LABELS, hours_minutes, local_time, spoken

log = logging.getLogger(__name__)

__all__ = ["SweepReport", "sweep"]

SYSTEM = "system:scheduler"
RETRY_AFTER = timedelta(minutes=10)
_ALERT = queries.table_of(TicketAlert)
_DEADLINE = queries.table_of(TicketDeadline)


@dataclass
class SweepReport:
    tickets: int = 0
    fired: Counter[str] = field(default_factory=Counter)
    more: bool = False  # the batch was full: there may be more due work
    failed: int = 0  # tickets whose deadlines raised an error (retried after RETRY_AFTER)

    @property
    def total(self) -> int:
        return sum(self.fired.values())


@dataclass
class _Firing:
    session: Session
    config: Config
    mailer: Mailer | None
    ticket: Ticket
    channel: ChannelConfig
    deadline: TicketDeadline
    now: datetime
    pending: dict[str, TicketDeadline]  # every deadline the ticket had when the sweep began, by kind

    def note(self, text: str) -> None:
        queries.insert_item(
            self.session,
            {
                "ticket_id": self.ticket.id, "direction": Direction.INTERNAL.value, "kind": ItemKind.SYSTEM.value,
                "visibility": Visibility.INTERNAL.value, "subject": text.split("\n", 1)[0], "body_text": text,
                "body_quoted": "", "created_at": self.now,
            },
        )

    def tell(self, members: list[StaffConfig], title: str, lines: list[str]) -> None:
        if self.mailer is None:
            return
        for member in members:
            self.mailer.notify(
                self.session, self.now, self.ticket, self.channel, member, "alert", alert_title=title, alert_lines=lines
            )

    def involved(self, *, leads: bool = False) -> list[StaffConfig]:
        members = people.to_notify(self.session, self.config, self.ticket, self.channel.name)
        if leads:
            names = {m.name for m in members}
            members += [
                s for s in people.channel_team(self.config, self.channel.name)
                if s.role is not StaffRole.AGENT and s.name not in names
            ]
        return members


def _clock_alert(firing: _Firing, clock: ClockName, breach: bool) -> bool:
    """Warn of or report a breach from the stored deadlines, without replaying the history."""
    ticket = firing.ticket
    sla = deadlines.ticket_sla(firing.session, firing.config, ticket, firing.channel.name)
    target = sla.targets.get(clock) if sla else None
    if sla is None or target is None:
        return False
    breach_row = firing.pending.get(f"{clock}.breach")
    if not breach and breach_row is not None and breach_row.at <= firing.now:
        return False  # a late sweep: the breach is due as well and says more than a warning would
    due = firing.deadline.at if breach or breach_row is None else breach_row.at
    remaining = sla.calendar.business_time(firing.now, due)
    label = LABELS[clock]
    due_text = local_time(due, sla.calendar.timezone)
    if breach:
        title, action = f"SLA breached: {label} was due {due_text}", "sla_breached"
    else:
        title, action = f"SLA warning: {label} due in {hours_minutes(remaining)} business hours", "sla_warning"
    lines = [
        f"Policy {sla.policy}, priority {ticket.priority}: {label} within {hours_minutes(target)} business hours.",
        f"Due {due_text}.",
    ]
    queries.audit(
        firing.session, ticket_id=ticket.id, action=action, actor=SYSTEM, now=firing.now,
        field=clock.value, new=due.isoformat(),
    )
    firing.note("\n".join([title, *lines]))
    firing.tell(firing.involved(leads=breach), title, lines)
    return False


class _Stale(Exception):
    """A deadline planned under a configuration that no longer has what it refers to."""


def _escalate(firing: _Firing) -> bool:
    channel_part, _, rest = firing.deadline.key.partition(":")
    index = int(rest.partition("@")[0])
    conf = firing.config.find_channel(channel_part)
    if conf is None or index >= len(conf.escalation):
        raise _Stale(f"escalation step {index + 1} of channel {channel_part} is no longer configured")
    step = conf.escalation[index]
    ticket, session, now = firing.ticket, firing.session, firing.now
    done = []
    if step.release_owner and ticket.owner is not None:
        done.append(f"owner {ticket.owner} released")
        actions.set_field(session, ticket, "owner", None, "system:escalation", now)
    if step.move_to is not None and step.move_to != firing.channel.name:
        done.append(f"moved from {firing.channel.name} to {step.move_to}")
        queries.audit(
            session, ticket_id=ticket.id, action="channel_changed", actor="system:escalation", now=now,
            field="channel", old=firing.channel.name, new=step.move_to,
        )
        queries.update_row(session, ticket, channel_id=queries.channel_ids(session)[step.move_to], updated_at=now)
        firing.channel = firing.config.channel(step.move_to)
    title = f"Escalated: no change for {hours_minutes(step.after)} business hours"
    lines = ["; ".join(done) + "." if done else "Nothing left to change: nobody owned the ticket."]
    queries.audit(
        session, ticket_id=ticket.id, action="escalated", actor="system:escalation", now=now,
        field="escalation", new=f"step {index + 1}: " + ("; ".join(done) or "no change"),
    )
    firing.note("\n".join([title, *lines]))
    firing.tell(firing.involved(leads=True), title, lines)
    return True


def _remind(firing: _Firing) -> bool:
    ticket = firing.ticket
    until = ticket.snoozed_until
    actions.set_field(firing.session, ticket, "snoozed_until", None, "system:reminder", firing.now)
    queries.update_row(firing.session, ticket, activity_at=firing.now)  # escalation counts from the wake-up
    title = "Reminder: the ticket is back"
    lines = [f"It was snoozed until {until.isoformat() if until else '-'}."]
    firing.note("\n".join([title, *lines]))
    owner = firing.config.staff_member(ticket.owner) if ticket.owner else None
    firing.tell([owner] if owner else people.channel_team(firing.config, firing.channel.name), title, lines)
    return True


def _auto_close(firing: _Firing) -> bool:
    status = firing.channel.auto_close_status
    silence = firing.channel.pending_auto_close
    actions.set_status(firing.session, firing.ticket, status, "system:auto-close", firing.now)
    title = f"Closed automatically: no answer from the customer for {spoken(silence)}"
    firing.note(title)
    firing.tell(firing.involved(), title, [f"The ticket is now {rules(firing.config).statuses.label(status)}."])
    return True


def _handler(kind: str) -> Callable[[_Firing], bool]:
    """What a deadline does; the result says whether the ticket changed (its deadlines are replanned)."""
    clock, _, event = kind.partition(".")
    if event in ("warning", "breach"):
        name = ClockName(clock)
        return lambda firing: _clock_alert(firing, name, event == "breach")
    return {"escalation": _escalate, "reminder": _remind, "auto_close": _auto_close}[kind]


def _claim_alert(session: Session, deadline: TicketDeadline, now: datetime, holder: str) -> bool:
    insert = pg_insert if session.connection().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(_ALERT)
        .values(ticket_id=deadline.ticket_id, kind=deadline.kind, key=deadline.key, due_at=deadline.at,
                fired_at=now, fired_by=holder)
        .on_conflict_do_nothing(index_elements=["ticket_id", "kind", "key"])
        .returning(_ALERT.c.id)
    )
    return session.connection().execute(statement).first() is not None


def _due_tickets(session: Session, now: datetime, limit: int) -> list[Ticket]:
    statement = (
        select(Ticket).where(col(Ticket.next_due_at) <= now).order_by(col(Ticket.next_due_at)).limit(limit)
    )
    if session.connection().dialect.name == "postgresql":
        statement = statement.with_for_update(skip_locked=True, of=Ticket)
    return list(session.scalars(statement))


def _fire_ticket(
    session: Session, config: Config, mailer: Mailer | None, ticket: Ticket, rows: list[TicketDeadline],
    now: datetime, holder: str, report: SweepReport, names: dict[int, str],
) -> None:
    changed = False
    # The ticket's channel, or the fallback channel when it was removed from the configuration.
    channel = config.find_channel(names.get(ticket.channel_id, "")) or config.fallback_channel
    pending = {row.kind: row for row in rows}
    for deadline in sorted((r for r in rows if r.at <= now), key=lambda d: d.at):
        session.connection().execute(
            delete(_DEADLINE).where(_DEADLINE.c.ticket_id == ticket.id, _DEADLINE.c.kind == deadline.kind)
        )
        if not _claim_alert(session, deadline, now, holder):
            continue  # fired before (by us or another daemon)
        firing = _Firing(session, config, mailer, ticket, channel, deadline, now, pending)
        try:
            changed = _handler(deadline.kind)(firing) or changed
        except _Stale as exc:
            log.info("%s: %s; replanning its deadlines", ticket.number, exc)
            changed = True
            continue
        channel = firing.channel
        report.fired[deadline.kind] += 1
    if changed:
        deadlines.refresh(session, config, ticket, now, names.get(ticket.channel_id))
    else:
        deadlines.set_next_due(session, ticket)


def _fire_safely(
    session: Session, config: Config, mailer: Mailer | None, ticket: Ticket, rows: list[TicketDeadline],
    now: datetime, holder: str, report: SweepReport, names: dict[int, str],
) -> None:
    """Fire one ticket's deadlines in a savepoint: a ticket that fails is put back a while, not the batch."""
    try:
        with session.begin_nested():
            _fire_ticket(session, config, mailer, ticket, rows, now, holder, report, names)
    except Exception:
        log.exception("%s: its due deadlines could not be handled; trying again in %s", ticket.number, RETRY_AFTER)
        report.failed += 1
        queries.update_row(session, ticket, next_due_at=now + RETRY_AFTER)


def sweep(
    engine: Engine, config: Config, now: datetime, mailer: Mailer | None, holder: str, batch_size: int = 500
) -> SweepReport:
    """Fire everything due at ``now`` on up to ``batch_size`` tickets, in one transaction."""
    report = SweepReport()
    with transaction(engine) as session:
        tickets = _due_tickets(session, now, batch_size)
        if not tickets:
            return report
        ids = [t.id for t in tickets]
        rows = session.scalars(
            select(TicketDeadline).where(col(TicketDeadline.ticket_id).in_(ids))
        ).all()
        names = {channel_id: name for name, channel_id in queries.channel_ids(session).items()}
        by_ticket: dict[int, list[TicketDeadline]] = {}
        for row in rows:
            by_ticket.setdefault(row.ticket_id, []).append(row)
        for ticket in tickets:
            assert ticket.id is not None
            _fire_safely(
                session, config, mailer, ticket, by_ticket.get(ticket.id, []), now, holder, report, names
            )
        report.tickets = len(tickets)
        report.more = len(tickets) == batch_size
    if report.total:
        log.info("sweep: %s on %d ticket(s)", dict(report.fired), report.tickets)
    return report
