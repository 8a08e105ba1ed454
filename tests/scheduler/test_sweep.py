"""The sweep, on SQLite and PostgreSQL: every SLA warning and breach, escalation, reminder and auto-close
happens once, at the right business instant, and is in the audit trail.

Mail goes through the intake on a controllable clock; the sweep runs at chosen instants: a second before
each due instant (nothing), at it (it fires), and later again (nothing fires twice). The office calendar is
Berlin's, Monday to Friday 08:00-17:00, with Berlin's public holidays (Good Friday, Easter Monday, Whit
Monday, ...), a company holiday (Tuesday 26 May 2026) and the change to summer time on Sunday 29 March
2026. Expected instants are written out in UTC, with the Berlin wall-clock reasoning beside them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import Config, validate
from helpdesk.core.calendar import BusinessCalendar
from helpdesk.intake.runner import Intake, Result
from helpdesk.outbound.mailer import Mailer
from helpdesk.scheduler.sweep import SweepReport, sweep
from helpdesk.store.models import AuditEvent, Channel, Item, Outbox, Outcome, Ticket, TicketAlert, TicketDeadline
from tests.conftest import Clock, base_config
from tests.intake.test_mail_out import (
    QUOTE,
    STAFF,
    deliver,
    items,
    outbox,
    parsed,
    reply_token,
    staff_mail,
    text_of,
    ticket,
)
from tests.mailgen import make_mail

SECOND = timedelta(seconds=1)
SAM, LEA, SAL = "sam@example.test", "lea@example.test", "sal@example.test"

COMPANY_HOLIDAY = date(2026, 5, 26)  # the Tuesday after Whit Monday
OFFICE: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "hours": {"mon-fri": "08:00-17:00"},
    "country": "DE",
    "subdivision": "BE",
    "holidays": [COMPANY_HOLIDAY.isoformat()],
}
POLICIES: dict[str, Any] = {
    "standard": {
        "calendar": "office",
        "warning": "75%",
        "targets": {
            "default": {"first_response": "4h", "next_response": "2h", "resolution": "40h"},
            "1": {"first_response": "1h", "next_response": "1h", "resolution": "8h"},
        },
    },
    "premium": {
        "calendar": "office",
        "warning": "30m",
        "targets": {"default": {"first_response": "2h", "next_response": "1h", "resolution": "16h"}},
    },
}
# The same business hours, built independently of the configuration, to state "by exactly the paused time".
BERLIN_OFFICE = BusinessCalendar.build(
    "Europe/Berlin", {"mon-fri": "08:00-17:00"}, country="DE", subdivision="BE", extra_holidays=[COMPANY_HOLIDAY]
)


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """An instant in 2026, in UTC."""
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def desk_config(*, sla: str | None = "standard", organisation_sla: str | None = None, **channel: Any) -> Config:
    """Support with the standard SLA policy (or, with ``sla=None``, only the office calendar) plus ``channel`` keys."""
    data = base_config(staff=STAFF, calendars={"office": OFFICE}, sla_policies=POLICIES)
    support = data["channels"][0]
    if sla is None:
        support["calendar"] = "office"
    else:
        support["sla"] = sla
    support.update(channel)
    if organisation_sla is not None:
        data["organisations"][0]["sla"] = organisation_sla
    return validate(data)


class Desk:
    """The intake on a controllable clock, and the sweep at chosen instants."""

    def __init__(self, engine: Engine, config: Config, start: datetime) -> None:
        self.engine = engine
        self.config = config
        self.clock = Clock(start)
        self.intake = Intake(engine, config, self.clock)
        self.mailer = Mailer(config)

    def receive(self, when: datetime, raw: bytes) -> Result:
        self.clock.now = when
        result = deliver(self.intake, raw)
        assert result.outcome not in (None, Outcome.QUARANTINED), result
        return result

    def sweep(self, when: datetime, batch_size: int = 500) -> SweepReport:
        report = sweep(self.engine, self.config, when, self.mailer, "test", batch_size)
        check_next_due(self.engine)
        return report

    def fires(self, when: datetime, expected: dict[str, int], tickets: int = 1) -> None:
        report = self.sweep(when)
        assert (report.tickets, dict(report.fired)) == (tickets, expected), f"sweep at {when.isoformat()}"

    def quiet(self, *instants: datetime) -> None:
        """Sweeps at these instants find no due ticket and fire nothing."""
        for when in instants:
            report = self.sweep(when)
            assert (report.tickets, dict(report.fired)) == (0, {}), f"sweep at {when.isoformat()}"


def customer_mail(number: str, body: str, sender: str = "Alice Customer <alice@acme.example>") -> bytes:
    return make_mail(sender=sender, subject=f"Re: [{number}] Printer does not print", body=body)


def staff_to(engine: Engine, number: str, body: str) -> bytes:
    """Sam's answer to a notification of ticket ``number``, through his signed reply address."""
    ticket_id = ticket(engine, number).id
    assert ticket_id is not None
    return staff_mail(body, to=reply_token(ticket_id, SAM))


def deadlines(engine: Engine, number: str = "SUP-1") -> dict[str, datetime]:
    t = ticket(engine, number)
    with Session(engine) as session:
        rows = session.exec(select(TicketDeadline).where(TicketDeadline.ticket_id == t.id)).all()
        return {row.kind: row.at for row in rows}


def check_next_due(engine: Engine) -> None:
    """Every ticket's indexed ``next_due_at`` is the earliest of its deadlines (None without any)."""
    with Session(engine) as session:
        for t in session.exec(select(Ticket)).all():
            rows = session.exec(select(TicketDeadline).where(TicketDeadline.ticket_id == t.id)).all()
            assert t.next_due_at == min((r.at for r in rows), default=None), t.number


def audit(engine: Engine, number: str, *actions: str) -> list[AuditEvent]:
    t = ticket(engine, number)
    with Session(engine) as session:
        stmt = (
            select(AuditEvent)
            .where(AuditEvent.ticket_id == t.id, col(AuditEvent.action).in_(actions))
            .order_by(col(AuditEvent.id))
        )
        return list(session.exec(stmt).all())


def fired_alerts(engine: Engine, number: str = "SUP-1") -> list[tuple[str, str, datetime, datetime]]:
    t = ticket(engine, number)
    with Session(engine) as session:
        rows = session.exec(select(TicketAlert).where(TicketAlert.ticket_id == t.id).order_by(col(TicketAlert.id)))
        return [(r.kind, r.key, r.due_at, r.fired_at) for r in rows]


def system_notes(engine: Engine, number: str = "SUP-1") -> list[Item]:
    return [i for i in items(engine, number) if i.kind == "system"]


def last_mail_id(engine: Engine) -> int:
    return max((row.id or 0 for row in outbox(engine)), default=0)


def mails_since(engine: Engine, mark: int) -> list[Outbox]:
    """Notification mails queued after ``mark``, by recipient."""
    rows = [row for row in outbox(engine, kind="notification") if (row.id or 0) > mark]
    return sorted(rows, key=lambda row: row.recipient)


def subject(row: Outbox) -> str:
    """The Subject of a queued mail as read by a client (a folded long subject unfolds with a leading space)."""
    return str(parsed(row)["Subject"]).strip()


def channel_of(engine: Engine, number: str = "SUP-1") -> str:
    t = ticket(engine, number)
    with Session(engine) as session:
        channel = session.get(Channel, t.channel_id)
        assert channel is not None
        return channel.name


# --- SLA clocks -------------------------------------------------------------------------------------------


def test_first_response_warns_then_breaches_once_at_business_instants_over_easter(engine: Engine) -> None:
    """Thu 2 Apr 2026 15:00 Berlin, 4 business hours to answer: 2 on Thursday, then Good Friday, the weekend
    and Easter Monday are closed. The warning (75 %, 3 h) is Tue 7 Apr 09:00, the breach 10:00 Berlin (CEST)."""
    created = at(4, 2, 13)
    desk = Desk(engine, desk_config(), created)
    desk.receive(created, make_mail())
    # Sam takes the ticket with an internal note: he owns it now, and a note is no response to the customer.
    desk.receive(at(4, 2, 13, 30), staff_mail("#note\n\nChecking the print server first."))
    assert ticket(engine).owner == "sam"
    warning, due = at(4, 7, 7), at(4, 7, 8)
    planned = deadlines(engine)
    assert (planned["first_response.warning"], planned["first_response.breach"]) == (warning, due)
    assert ticket(engine).next_due_at == warning

    # 24/7 it would be Thu 18:00; without Berlin's holidays Fri 3 Apr 09:00; without Easter Monday Mon 6 Apr.
    desk.quiet(at(4, 2, 16), at(4, 3, 7), at(4, 3, 8), at(4, 6, 7), at(4, 6, 8), warning - SECOND)
    assert audit(engine, "SUP-1", "sla_warning", "sla_breached") == []

    mark = last_mail_id(engine)
    desk.fires(warning, {"first_response.warning": 1})
    [event] = audit(engine, "SUP-1", "sla_warning")
    assert (event.field, event.new_value, event.actor, event.at) == (
        "first_response", due.isoformat(), "system:scheduler", warning,
    )
    [mail] = mails_since(engine, mark)  # the owner; a warning does not go to the leads
    assert mail.recipient == SAM
    message = parsed(mail)
    assert subject(mail) == "[SUP-1] SLA warning: first response due in 01:00 business hours"
    body = text_of(message)
    assert "first response due in 01:00 business hours" in body
    assert "first response within 04:00 business hours" in body
    assert "Due Tue 07 Apr 2026 10:00 CEST" in body
    [note] = system_notes(engine)
    assert (note.visibility, note.direction, note.created_at) == ("internal", "internal", warning)
    assert note.body_text.startswith("SLA warning: first response due in 01:00 business hours")

    desk.quiet(warning, due - SECOND)
    mark = last_mail_id(engine)
    desk.fires(due, {"first_response.breach": 1})
    [event] = audit(engine, "SUP-1", "sla_breached")
    assert (event.field, event.new_value, event.actor, event.at) == (
        "first_response", due.isoformat(), "system:scheduler", due,
    )
    breach_mails = mails_since(engine, mark)  # the owner and, for a breach, the leads
    assert [m.recipient for m in breach_mails] == [LEA, SAM]
    for mail in breach_mails:
        assert subject(mail) == "[SUP-1] SLA breached: first response was due Tue 07 Apr 2026 10:00 CEST"
    assert len(system_notes(engine)) == 2

    # Later sweeps fire nothing more (the resolution warning is only due Fri 10 Apr 09:00 Berlin).
    desk.quiet(due, at(4, 7, 15), at(4, 9, 16))
    assert len(audit(engine, "SUP-1", "sla_warning")) == 1 and len(audit(engine, "SUP-1", "sla_breached")) == 1
    assert fired_alerts(engine) == [
        ("first_response.warning", created.isoformat(), warning, warning),
        ("first_response.breach", created.isoformat(), due, due),
    ]
    assert ticket(engine).next_due_at == at(4, 10, 7)


def test_reply_in_time_meets_first_response_and_next_response_keeps_its_own_schedule(engine: Engine) -> None:
    """Fri 22 May 2026 15:00 Berlin: Whit Monday and the company holiday on Tuesday are closed, so the first
    response is due Wed 27 May 10:00 (warning 09:00) Berlin. Sam answers at 09:30: the breach never fires."""
    created = at(5, 22, 13)
    desk = Desk(engine, desk_config(), created)
    desk.receive(created, make_mail())
    warning, due = at(5, 27, 7), at(5, 27, 8)
    planned = deadlines(engine)
    assert (planned["first_response.warning"], planned["first_response.breach"]) == (warning, due)
    # Without Whit Monday: Mon 25 May 09:00/10:00; without the company holiday: Tue 26 May 09:00/10:00 Berlin.
    desk.quiet(at(5, 25, 7), at(5, 25, 8), at(5, 26, 7), at(5, 26, 8), warning - SECOND)
    desk.fires(warning, {"first_response.warning": 1})

    desk.receive(at(5, 27, 7, 30), staff_mail("Hello Alice,\n\nplease restart the printer." + QUOTE))
    assert ticket(engine).status == "open"
    assert "first_response.breach" not in deadlines(engine)
    desk.quiet(due, at(5, 27, 14))

    # Alice writes again Wed 16:30 Berlin: next response (2 h) runs 30 min on Wednesday and 1.5 h on Thursday.
    asked = at(5, 27, 14, 30)
    desk.receive(asked, customer_mail("SUP-1", "Restarted it, still nothing."))
    next_warning, next_due = at(5, 28, 7), at(5, 28, 7, 30)  # Thu 28 May 09:00 and 09:30 Berlin
    planned = deadlines(engine)
    assert (planned["next_response.warning"], planned["next_response.breach"]) == (next_warning, next_due)
    assert not {"first_response.warning", "first_response.breach"} & planned.keys()
    desk.quiet(at(5, 27, 16, 59), next_warning - SECOND)
    desk.fires(next_warning, {"next_response.warning": 1})
    desk.quiet(next_due - SECOND)
    desk.fires(next_due, {"next_response.breach": 1})
    desk.quiet(next_due, at(5, 29, 12))

    trail = [(e.action, e.field, e.new_value, e.at) for e in audit(engine, "SUP-1", "sla_warning", "sla_breached")]
    assert trail == [
        ("sla_warning", "first_response", due.isoformat(), warning),
        ("sla_warning", "next_response", next_due.isoformat(), next_warning),
        ("sla_breached", "next_response", next_due.isoformat(), next_due),
    ]
    assert [(kind, key) for kind, key, _due, _fired in fired_alerts(engine)] == [
        ("first_response.warning", created.isoformat()),
        ("next_response.warning", asked.isoformat()),
        ("next_response.breach", asked.isoformat()),
    ]


def test_pending_pauses_the_clock_and_the_breach_moves_by_the_paused_business_time(engine: Engine) -> None:
    """Fri 27 Mar 2026 15:00 Berlin (CET); summer time starts on Sunday: the first response (4 h) is due
    Mon 30 Mar 10:00 CEST, which is 08:00 UTC (not 09:00)."""
    created = at(3, 27, 14)
    desk = Desk(engine, desk_config(), created)
    desk.receive(created, make_mail())
    first_due, resolution_due = at(3, 30, 8), at(4, 7, 8)  # resolution (40 h) skips Good Friday and Easter Monday
    planned = deadlines(engine)
    assert (planned["first_response.warning"], planned["first_response.breach"]) == (at(3, 30, 7), first_due)
    assert planned["resolution.breach"] == resolution_due

    # After 30 business minutes Sam sets the ticket pending (a command only, nothing relayed: no response).
    paused_at = at(3, 27, 14, 30)
    desk.receive(paused_at, staff_mail("#status pending"))
    assert ticket(engine).status == "pending"
    assert deadlines(engine) == {} and ticket(engine).next_due_at is None
    desk.quiet(first_due, at(3, 31, 12), at(4, 1, 6, 59))

    # Alice answers Wed 1 Apr 09:00 CEST: the ticket is open again, 3.5 h of the first response are left.
    answered = at(4, 1, 7)
    result = desk.receive(answered, customer_mail("SUP-1", "The printer is switched on again."))
    assert (result.outcome, result.ticket_number) == (Outcome.FOLLOW_UP, "SUP-1")
    assert ticket(engine).status == "open"
    warning, due = at(4, 1, 9, 30), at(4, 1, 10, 30)  # Wed 11:30 and 12:30 CEST
    planned = deadlines(engine)
    assert (planned["first_response.warning"], planned["first_response.breach"]) == (warning, due)
    assert planned["resolution.breach"] == at(4, 9, 10, 30)  # Thu 9 Apr 12:30 CEST
    paused = BERLIN_OFFICE.business_time(paused_at, answered)
    assert paused == timedelta(hours=20, minutes=30)  # Fri 1.5 h, Mon 9 h, Tue 9 h, Wed 1 h
    assert BERLIN_OFFICE.business_time(first_due, due) == paused
    assert BERLIN_OFFICE.business_time(resolution_due, planned["resolution.breach"]) == paused

    desk.quiet(warning - SECOND)
    desk.fires(warning, {"first_response.warning": 1})
    desk.quiet(due - SECOND)
    desk.fires(due, {"first_response.breach": 1})
    desk.quiet(due, at(4, 1, 16))
    trail = [(e.action, e.new_value, e.at) for e in audit(engine, "SUP-1", "sla_warning", "sla_breached")]
    assert trail == [("sla_warning", due.isoformat(), warning), ("sla_breached", due.isoformat(), due)]


def test_an_occasion_that_fired_never_fires_again_even_from_a_stale_deadline(engine: Engine) -> None:
    """Two daemons sweeping at once may both have read a deadline: its unique alert key lets only one of them
    fire it. The second daemon's view is made by hand here, by putting the fired warning's deadline back."""
    created = at(3, 2, 9)
    desk = Desk(engine, desk_config(), created)
    desk.receive(created, make_mail())
    warning, due = at(3, 2, 12), at(3, 2, 13)  # Mon 13:00 and 14:00 Berlin
    desk.fires(warning, {"first_response.warning": 1})
    mark = last_mail_id(engine)
    ticket_id = ticket(engine).id
    assert ticket_id is not None
    with Session(engine) as session:
        stale = TicketDeadline(ticket_id=ticket_id, kind="first_response.warning", key=created.isoformat(), at=warning)
        session.add(stale)
        row = session.get(Ticket, ticket_id)
        assert row is not None
        row.next_due_at = warning
        session.add(row)
        session.commit()

    report = desk.sweep(warning + timedelta(seconds=30))
    assert (report.tickets, dict(report.fired)) == (1, {})
    assert len(audit(engine, "SUP-1", "sla_warning")) == 1 and len(system_notes(engine)) == 1
    assert mails_since(engine, mark) == []
    assert "first_response.warning" not in deadlines(engine) and ticket(engine).next_due_at == due


# --- escalation, reminders, auto-close ----------------------------------------------------------------------


def test_escalation_releases_the_owner_then_moves_the_ticket_and_activity_restarts_the_count(engine: Engine) -> None:
    config = desk_config(
        sla=None, escalation=[{"after": "8h", "release_owner": True}, {"after": "16h", "move_to": "sales"}]
    )
    desk = Desk(engine, config, at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail())
    assert deadlines(engine) == {"escalation": at(3, 3, 8)}  # Mon 10:00 CET + 8 h: Tue 09:00 CET
    desk.receive(at(3, 2, 10), staff_mail("#owner sam\n\nHello Alice, we are on it." + QUOTE))
    assert (ticket(engine).owner, ticket(engine).status) == ("sam", "open")
    assert deadlines(engine) == {"escalation": at(3, 3, 9)}  # Mon 11:00 CET + 8 h: Tue 10:00 CET

    # Alice writes Tue 08:00 CET: the count starts again (due Tue 16:00 CET); the old instant passes quietly.
    desk.receive(at(3, 3, 7), customer_mail("SUP-1", "Any news?"))
    assert deadlines(engine) == {"escalation": at(3, 3, 15)}
    desk.quiet(at(3, 3, 8), at(3, 3, 9))
    # Sam adds a note Tue 13:00 CET: 4 h on Tuesday and 4 h on Wednesday, due Wed 12:00 CET.
    desk.receive(at(3, 3, 12), staff_mail("#note\n\nWaiting for the vendor's answer."))
    assert deadlines(engine) == {"escalation": at(3, 4, 11)}
    desk.quiet(at(3, 3, 15), at(3, 4, 11) - SECOND)
    assert audit(engine, "SUP-1", "escalated") == []

    first = at(3, 4, 11)
    mark = last_mail_id(engine)
    desk.fires(first, {"escalation": 1})
    assert ticket(engine).owner is None
    trail = [(e.action, e.old_value, e.new_value, e.actor, e.at) for e in audit(engine, "SUP-1", "owner_changed")]
    assert trail[-1] == ("owner_changed", "sam", None, "system:escalation", first)
    [event] = audit(engine, "SUP-1", "escalated")
    assert (event.new_value, event.actor, event.at) == ("step 1: owner sam released", "system:escalation", first)
    [note] = system_notes(engine)
    assert note.visibility == "internal" and note.body_text.startswith("Escalated: no change for 08:00 business hours")
    assert "owner sam released" in note.body_text
    team = mails_since(engine, mark)  # nobody owns it now: the support team (not sal of sales)
    assert [m.recipient for m in team] == [LEA, SAM]
    assert all(subject(m) == "[SUP-1] Escalated: no change for 08:00 business hours" for m in team)

    # The second step counts 16 h from the same activity: Tue 4 h, Wed 9 h, Thu 3 h: Thu 11:00 CET.
    second = at(3, 5, 10)
    assert deadlines(engine) == {"escalation": second}
    desk.quiet(first, second - SECOND)
    mark = last_mail_id(engine)
    desk.fires(second, {"escalation": 1})
    assert channel_of(engine) == "sales"
    [moved] = audit(engine, "SUP-1", "channel_changed")
    assert (moved.old_value, moved.new_value, moved.actor, moved.at) == (
        "support", "sales", "system:escalation", second,
    )
    events = audit(engine, "SUP-1", "escalated")
    assert [(e.new_value, e.at) for e in events] == [
        ("step 1: owner sam released", first), ("step 2: moved from support to sales", second),
    ]
    assert [m.recipient for m in mails_since(engine, mark)] == [LEA, SAL, SAM]  # sales team and the watcher

    desk.quiet(second, at(3, 12, 12))
    assert len(audit(engine, "SUP-1", "escalated")) == 2
    assert deadlines(engine) == {}


def test_reminder_fires_once_at_the_end_of_the_snooze(engine: Engine) -> None:
    desk = Desk(engine, desk_config(sla=None), at(3, 27, 9))
    desk.receive(at(3, 27, 9), make_mail())
    desk.receive(at(3, 27, 9, 30), staff_mail("#snooze 2026-03-30"))
    until = at(3, 30, 6)  # 08:00 in Berlin, already in summer time (CEST)
    assert (ticket(engine).owner, ticket(engine).snoozed_until) == ("sam", until)
    assert deadlines(engine) == {"reminder": until}
    desk.quiet(at(3, 27, 17), until - SECOND)

    mark = last_mail_id(engine)
    desk.fires(until, {"reminder": 1})
    assert ticket(engine).snoozed_until is None
    [snoozed, woken] = audit(engine, "SUP-1", "snoozed_until_changed")
    assert (snoozed.actor, snoozed.at) == ("staff:sam", at(3, 27, 9, 30))
    assert (woken.new_value, woken.actor, woken.at) == (None, "system:reminder", until)
    assert woken.old_value is not None and datetime.fromisoformat(woken.old_value) == until
    [mail] = mails_since(engine, mark)  # the owner only
    assert (mail.recipient, subject(mail)) == (SAM, "[SUP-1] Reminder: the ticket is back")
    [note] = system_notes(engine)
    assert note.body_text.startswith("Reminder: the ticket is back")

    desk.quiet(until, at(3, 31, 12))
    assert len(audit(engine, "SUP-1", "snoozed_until_changed")) == 2
    assert [kind for kind, _key, _due, _fired in fired_alerts(engine)] == ["reminder"]


def test_customer_mail_wakes_a_snoozed_ticket_and_no_reminder_fires(engine: Engine) -> None:
    desk = Desk(engine, desk_config(sla=None), at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail())
    desk.receive(at(3, 2, 9, 30), staff_mail("#snooze 3d"))
    until = at(3, 5, 9, 30)
    assert deadlines(engine) == {"reminder": until}
    desk.quiet(at(3, 3, 9))

    woke = at(3, 3, 10)
    desk.receive(woke, customer_mail("SUP-1", "It printed one page, then stopped again."))
    assert ticket(engine).snoozed_until is None
    [_snoozed, woken] = audit(engine, "SUP-1", "snoozed_until_changed")
    assert (woken.new_value, woken.actor, woken.at) == (None, "customer:alice@acme.example", woke)
    assert "reminder" not in deadlines(engine)

    mark = last_mail_id(engine)
    desk.quiet(until, at(3, 6, 12))
    assert fired_alerts(engine) == []
    assert not [m for m in mails_since(engine, mark) if "Reminder" in m.subject]
    assert len(audit(engine, "SUP-1", "snoozed_until_changed")) == 2


def test_pending_ticket_closes_once_after_customer_silence(engine: Engine) -> None:
    desk = Desk(engine, desk_config(sla=None, pending_auto_close="7d"), at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail())
    desk.receive(at(3, 2, 10), staff_mail("#status pending\n\nPlease restart the printer and tell us." + QUOTE))
    closes = at(3, 9, 10)
    assert ticket(engine).status == "pending"
    assert deadlines(engine) == {"auto_close": closes}
    desk.quiet(at(3, 6, 10), closes - SECOND)

    mark = last_mail_id(engine)
    desk.fires(closes, {"auto_close": 1})
    t = ticket(engine)
    assert (t.status, t.closed_at) == ("closed", closes)
    [closed] = audit(engine, "SUP-1", "status_changed")[-1:]
    assert (closed.old_value, closed.new_value, closed.actor, closed.at) == (
        "pending", "closed", "system:auto-close", closes,
    )
    [note] = system_notes(engine)
    assert note.body_text.startswith("Closed automatically: no answer from the customer")
    [mail] = mails_since(engine, mark)
    assert mail.recipient == SAM and "Closed automatically" in subject(mail)

    desk.quiet(closes, at(3, 20, 10))
    assert [e.actor for e in audit(engine, "SUP-1", "status_changed")].count("system:auto-close") == 1
    assert deadlines(engine) == {}


def test_customer_answer_cancels_the_auto_close(engine: Engine) -> None:
    desk = Desk(engine, desk_config(sla=None, pending_auto_close="7d"), at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail())
    desk.receive(at(3, 2, 10), staff_mail("#status pending\n\nPlease restart the printer." + QUOTE))
    assert deadlines(engine) == {"auto_close": at(3, 9, 10)}

    desk.receive(at(3, 6, 9), customer_mail("SUP-1", "Restarted, it still does not print."))
    assert ticket(engine).status == "open"
    assert deadlines(engine) == {}
    desk.quiet(at(3, 9, 10), at(3, 16, 10))
    assert ticket(engine).status == "open"
    assert "system:auto-close" not in [e.actor for e in audit(engine, "SUP-1", "status_changed")]

    # Pending again: a new silence is counted from the new instant, and closes the ticket once.
    desk.receive(at(3, 10, 8), staff_mail("#status pending\n\nPlease send a photo of the display." + QUOTE))
    closes = at(3, 17, 8)
    assert deadlines(engine) == {"auto_close": closes}
    desk.quiet(closes - SECOND)
    desk.fires(closes, {"auto_close": 1})
    desk.quiet(at(3, 24, 8))
    assert ticket(engine).status == "closed"
    assert [e.actor for e in audit(engine, "SUP-1", "status_changed")].count("system:auto-close") == 1


# --- which policy, and O(due) ----------------------------------------------------------------------------------


def test_organisation_policy_overrides_the_channel_and_priority_one_gets_its_targets(engine: Engine) -> None:
    """Three mails at Mon 2 Mar 15:15 Berlin (CET), 1 h 45 min before closing: ACME's contract is premium (2 h,
    warn 30 min before), a stranger gets the channel's standard policy (4 h, warn at 75 %), an urgent stranger
    the standard policy's priority-1 targets (1 h)."""
    config = desk_config(organisation_sla="premium")
    sent = at(3, 2, 14, 15)
    desk = Desk(engine, config, sent)
    desk.receive(sent, make_mail(message_id="acme@acme.example"))
    desk.receive(sent, make_mail(sender="Bob <bob@elsewhere.example>", message_id="bob@elsewhere.example"))
    desk.receive(
        sent, make_mail(sender="Carol <carol@elsewhere.example>", subject="URGENT: nothing prints at all",
                        message_id="carol@elsewhere.example"),
    )
    assert [(ticket(engine, n).sla_policy, ticket(engine, n).priority) for n in ("SUP-1", "SUP-2", "SUP-3")] == [
        ("premium", 3), ("standard", 3), ("standard", 1),
    ]
    # In Berlin: premium warns Mon 16:45 and is due Tue 08:15; standard Tue 09:15 and 10:15; priority 1
    # Mon 16:00 and 16:15.
    expected = {
        "SUP-1": (at(3, 2, 15, 45), at(3, 3, 7, 15)),
        "SUP-2": (at(3, 3, 8, 15), at(3, 3, 9, 15)),
        "SUP-3": (at(3, 2, 15), at(3, 2, 15, 15)),
    }
    for number, (warning, due) in expected.items():
        planned = deadlines(engine, number)
        assert (planned["first_response.warning"], planned["first_response.breach"]) == (warning, due), number

    schedule = sorted(
        [(warning, number, "sla_warning") for number, (warning, _due) in expected.items()]
        + [(due, number, "sla_breached") for number, (_warning, due) in expected.items()]
    )
    for when, number, action in schedule:
        desk.quiet(when - SECOND)
        mark = last_mail_id(engine)
        kind = "first_response.warning" if action == "sla_warning" else "first_response.breach"
        desk.fires(when, {kind: 1})
        [event] = audit(engine, number, action)
        assert (event.at, event.new_value) == (when, expected[number][1].isoformat()), number
        mails = mails_since(engine, mark)
        assert mails and all(subject(m).startswith(f"[{number}] ") for m in mails)
    desk.quiet(at(3, 3, 11))  # the urgent ticket's resolution warning is Tue 12:15 Berlin

    # The premium warning, sent at Monday 16:45, counts the 30 minutes left in business time (not 15.5 hours).
    [premium] = [m for m in outbox(engine, SAM, "notification") if m.subject.startswith("[SUP-1] SLA warning")]
    assert subject(premium) == "[SUP-1] SLA warning: first response due in 00:30 business hours"
    assert "Policy premium, priority 3: first response within 02:00 business hours." in text_of(parsed(premium))
    [urgent] = [m for m in outbox(engine, SAM, "notification") if m.subject.startswith("[SUP-3] SLA warning")]
    assert "Policy standard, priority 1: first response within 01:00 business hours." in text_of(parsed(urgent))


def test_sweep_reads_only_due_tickets_and_next_due_is_the_earliest_deadline(engine: Engine) -> None:
    """Tickets at 10:00, 11:00, 12:00 and 13:00 Berlin on Mon 2 Mar; a fifth, answered at once, has only
    its resolution clock left (warning after 30 business hours: Thu 5 Mar 13:30 Berlin)."""
    desk = Desk(engine, desk_config(), at(3, 2, 9))
    for n, hour in enumerate((9, 10, 11, 12), start=1):
        desk.receive(at(3, 2, hour), make_mail(subject=f"Problem {n}", message_id=f"p{n}@acme.example"))
    desk.receive(at(3, 2, 9, 30), make_mail(subject="Problem 5", message_id="p5@acme.example"))
    desk.receive(at(3, 2, 9, 45), staff_to(engine, "SUP-5", "Hello Alice,\n\nfixed remotely." + QUOTE))
    numbers = [f"SUP-{n}" for n in range(1, 6)]
    next_due = {
        "SUP-1": at(3, 2, 12), "SUP-2": at(3, 2, 13), "SUP-3": at(3, 2, 14), "SUP-4": at(3, 2, 15),
        "SUP-5": at(3, 5, 12, 30),
    }
    for number in numbers:
        planned = deadlines(engine, number)
        assert ticket(engine, number).next_due_at == min(planned.values()) == next_due[number], number
    assert "first_response.breach" not in deadlines(engine, "SUP-5")

    desk.quiet(at(3, 2, 12) - SECOND)
    desk.fires(at(3, 2, 12, 30), {"first_response.warning": 1}, tickets=1)

    untouched = {n: (deadlines(engine, n), ticket(engine, n).updated_at) for n in ("SUP-4", "SUP-5")}
    # At 15:00 Berlin: SUP-1 breached (14:00), SUP-2 warned and breached (14:00/15:00), SUP-3 warned (15:00).
    report = desk.sweep(at(3, 2, 14))
    assert report.tickets == 3 and not report.more
    assert dict(report.fired) == {"first_response.warning": 2, "first_response.breach": 2}
    assert {n: (deadlines(engine, n), ticket(engine, n).updated_at) for n in ("SUP-4", "SUP-5")} == untouched
    assert [len(fired_alerts(engine, n)) for n in numbers] == [2, 2, 1, 0, 0]
    assert ticket(engine, "SUP-3").next_due_at == at(3, 2, 15)

    # Due at 16:00 Berlin: SUP-3's breach and SUP-4's warning; a batch of one takes one ticket at a time.
    first = desk.sweep(at(3, 2, 15), batch_size=1)
    assert (first.tickets, first.total, first.more) == (1, 1, True)
    second = desk.sweep(at(3, 2, 15), batch_size=1)
    assert (second.tickets, second.total) == (1, 1)
    assert first.fired + second.fired == {"first_response.breach": 1, "first_response.warning": 1}
    desk.quiet(at(3, 2, 15), at(3, 2, 16) - SECOND)
    assert [len(fired_alerts(engine, n)) for n in numbers] == [2, 2, 2, 1, 0]
    assert ticket(engine, "SUP-4").next_due_at == at(3, 2, 16)
    assert ticket(engine, "SUP-5").next_due_at == next_due["SUP-5"]


# --- escalation after a snooze, and deadlines planned under an older configuration -------------------------


def test_escalation_after_a_reminder_counts_from_the_end_of_the_snooze(engine: Engine) -> None:
    desk = Desk(engine, desk_config(sla=None, escalation=[{"after": "8h", "release_owner": True}]), at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail())
    desk.receive(at(3, 2, 9, 30), staff_mail("#snooze 3d"))
    until = at(3, 5, 9, 30)  # Thu 10:30 Berlin
    assert deadlines(engine) == {"reminder": until}  # a snoozed ticket does not escalate
    desk.fires(until, {"reminder": 1})
    # Sam has just been told the ticket is back: it is his for 8 more business hours (Thu 6.5 h, Fri 1.5 h).
    desk.quiet(until + timedelta(minutes=1), at(3, 6, 8, 30) - SECOND)
    assert ticket(engine).owner == "sam"
    assert deadlines(engine) == {"escalation": at(3, 6, 8, 30)}


def test_a_reload_without_the_escalation_step_does_not_stop_the_sweep(engine: Engine) -> None:
    before = desk_config(escalation=[{"after": "8h", "release_owner": True}])
    desk = Desk(engine, before, at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail())
    assert deadlines(engine)["escalation"] == at(3, 3, 8)
    # The operator removes the escalation step and reloads (SIGHUP); planned deadlines stay in the database.
    after = desk_config()
    report = sweep(engine, after, at(3, 3, 9), Mailer(after), "test")
    assert report.fired["first_response.breach"] == 1 and report.fired["escalation"] == 0
    assert audit(engine, "SUP-1", "escalated") == []


def test_a_ticket_that_fails_is_put_back_and_the_others_still_fire(engine: Engine) -> None:
    from sqlalchemy import update as sql_update

    from helpdesk.scheduler.sweep import RETRY_AFTER
    from helpdesk.store.models import TicketDeadline

    desk = Desk(engine, desk_config(), at(3, 2, 9))
    desk.receive(at(3, 2, 9), make_mail(message_id="one@acme.example"))
    desk.receive(at(3, 2, 9), make_mail(message_id="two@acme.example", subject="Second"))
    first = ticket(engine, "SUP-1").id
    with engine.begin() as conn:  # a deadline no handler knows (say, written by a newer version)
        conn.execute(
            sql_update(TicketDeadline).where(
                TicketDeadline.ticket_id == first,  # type: ignore[arg-type]
                TicketDeadline.kind == "first_response.warning",  # type: ignore[arg-type]
            ).values(kind="bogus.kind")
        )
    when = at(3, 3, 16)
    report = sweep(engine, desk.config, when, desk.mailer, "test")
    assert report.failed == 1 and report.fired["first_response.warning"] == 1  # SUP-2 fired all the same
    assert ticket(engine, "SUP-1").next_due_at == when + RETRY_AFTER
    assert audit(engine, "SUP-1", "sla_warning") == []
