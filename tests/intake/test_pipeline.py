"""The pipeline end to end on SQLite and PostgreSQL: ticket, follow-up, auto-reply, bounce, quarantine."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from helpdesk.intake import steps
from helpdesk.intake.runner import Incoming, Intake, Result
from helpdesk.store.models import (
    Attachment,
    AuditEvent,
    Blob,
    Contact,
    ContactAddress,
    Direction,
    Item,
    Organisation,
    Outcome,
    RawMessage,
    RawState,
    Ticket,
)
from helpdesk.store.queries import raw_bytes
from tests.conftest import Clock
from tests.mailgen import make_dsn, make_mail

_counter = iter(range(1, 1_000_000))


def deliver(intake: Intake, raw: bytes, source: str = "lmtp", key: str | None = None) -> Result:
    return intake.ingest(source, [Incoming(key=key or f"k{next(_counter)}", data=raw)])[0]


def tickets(engine: Engine) -> list[Ticket]:
    with Session(engine) as session:
        return list(session.exec(select(Ticket).order_by(col(Ticket.id))).all())


def items(engine: Engine, number: str, direction: str | None = "inbound") -> list[Item]:
    """The ticket's items (inbound only unless ``direction`` says otherwise; None: all)."""
    with Session(engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.number == number)).one()
        stmt = select(Item).where(Item.ticket_id == ticket.id)
        if direction is not None:
            stmt = stmt.where(Item.direction == direction)
        return list(session.exec(stmt.order_by(col(Item.id))).all())


def audit(engine: Engine, number: str) -> list[tuple[str, str | None, str | None, str | None]]:
    with Session(engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.number == number)).one()
        rows = session.exec(select(AuditEvent).where(AuditEvent.ticket_id == ticket.id).order_by(col(AuditEvent.id)))
        return [(a.action, a.field, a.old_value, a.new_value) for a in rows]


def test_new_mail_from_known_contact_opens_ticket(intake: Intake, engine: Engine) -> None:
    result = deliver(intake, make_mail(message_id="m1@acme.example"))
    assert (result.outcome, result.ticket_number, result.state) == (Outcome.TICKET, "SUP-1", RawState.PROCESSED)
    [ticket] = tickets(engine)
    with Session(engine) as session:
        contact = session.get(Contact, ticket.contact_id)
        org = session.get(Organisation, ticket.organisation_id)
    assert contact is not None and contact.name == "Alice Customer"
    assert org is not None and org.name == "ACME Corp"
    assert (ticket.status, ticket.priority, ticket.subject) == ("new", 3, "Printer does not print")
    [item] = items(engine, "SUP-1")
    assert (item.direction, item.kind, item.visibility) == ("inbound", "message", "customer")
    assert item.message_id == "m1@acme.example"
    assert "floor 2" in item.body_text
    assert audit(engine, "SUP-1")[0] == ("created", "status", None, "new")


def test_unknown_sender_becomes_contact_of_domain_organisation(intake: Intake, engine: Engine) -> None:
    deliver(intake, make_mail(sender="Bob <bob@mail.acme.example>"))
    deliver(intake, make_mail(sender="Eve <eve@freemail.example>"))
    with Session(engine) as session:
        bob = session.get(ContactAddress, "bob@mail.acme.example")
        eve = session.get(ContactAddress, "eve@freemail.example")
        assert bob is not None and eve is not None
        bob_contact = session.get(Contact, bob.contact_id)
        eve_contact = session.get(Contact, eve.contact_id)
    assert bob_contact is not None and bob_contact.organisation_id is not None
    assert eve_contact is not None and eve_contact.organisation_id is None


def test_channel_that_quarantines_unknown_senders(intake: Intake, engine: Engine) -> None:
    result = deliver(intake, make_mail(sender="stranger@nowhere.example", to="sales@example.test"))
    assert result.outcome == Outcome.QUARANTINED
    assert result.error is not None and "unknown sender stranger@nowhere.example" in result.error
    ok = deliver(intake, make_mail(to="sales@example.test"))
    assert ok.ticket_number == "SAL-1"


@pytest.mark.parametrize("how", ["in-reply-to", "references-only", "subject-tag", "deep-references"])
def test_follow_ups_thread(intake: Intake, engine: Engine, how: str) -> None:
    deliver(intake, make_mail(message_id="first@acme.example"))
    deliver(intake, make_mail(message_id="second@acme.example", in_reply_to="first@acme.example"))
    reply: dict[str, Any] = {"subject": "Re: Printer does not print", "message_id": f"third-{how}@acme.example"}
    if how == "in-reply-to":
        reply["in_reply_to"] = "second@acme.example"
    elif how == "references-only":
        reply["references"] = ["first@acme.example", "second@acme.example"]
    elif how == "subject-tag":
        reply["subject"] = "Re: [SUP-1] Printer does not print"
    else:  # the mail it answers is unknown to us, but an older one in the chain is ours
        reply["in_reply_to"] = "unknown@elsewhere.example"
        reply["references"] = ["first@acme.example", "unknown@elsewhere.example"]
    result = deliver(intake, make_mail(**reply))
    assert (result.outcome, result.ticket_number) == (Outcome.FOLLOW_UP, "SUP-1")
    assert len(tickets(engine)) == 1
    assert [i.message_id for i in items(engine, "SUP-1")][-1] == f"third-{how}@acme.example"


def test_quoted_history_is_stored_apart(intake: Intake, engine: Engine) -> None:
    body = (
        "Still broken, see the log attached.\n\n"
        "On Mon, 2 Mar 2026 at 09:00, Support <support@example.test> wrote:\n"
        "> Please restart the printer.\n> Regards\n"
    )
    deliver(intake, make_mail(message_id="q1@acme.example"))
    deliver(intake, make_mail(body=body, in_reply_to="q1@acme.example"))
    reply = items(engine, "SUP-1")[-1]
    assert reply.body_text == "Still broken, see the log attached."
    assert "Please restart the printer." in reply.body_quoted


@pytest.mark.parametrize(
    "headers,subject",
    [
        ({"Auto-Submitted": "auto-replied"}, "Re: Printer"),
        ({"Precedence": "bulk"}, "Newsletter"),
        ({"X-Autoreply": "yes"}, "Re: Printer"),
        ({"X-Auto-Response-Suppress": "All"}, "Re: Printer"),
        ({"List-Id": "<announce.list.example>"}, "Weekly digest"),
        ({}, "Out of Office: Printer does not print"),
        ({}, "Abwesenheitsnotiz: Drucker"),
        ({}, "Automatic reply: Printer"),
    ],
)
def test_auto_replies_never_open_tickets(
    intake: Intake, engine: Engine, headers: dict[str, str], subject: str
) -> None:
    result = deliver(intake, make_mail(subject=subject, headers=headers))
    assert result.outcome == Outcome.AUTO_REPLY
    assert tickets(engine) == []


def test_auto_reply_to_a_ticket_is_kept_internal_without_reopening(intake: Intake, engine: Engine) -> None:
    deliver(intake, make_mail(message_id="t1@acme.example"))
    result = deliver(
        intake,
        make_mail(subject="Out of office", in_reply_to="t1@acme.example", headers={"Auto-Submitted": "auto-replied"}),
    )
    assert (result.outcome, result.ticket_number) == (Outcome.AUTO_REPLY, "SUP-1")
    last = items(engine, "SUP-1")[-1]
    assert (last.kind, last.visibility) == ("auto_reply", "internal")


def test_bounce_attaches_to_ticket_and_flags_address(intake: Intake, engine: Engine, clock: Clock) -> None:
    deliver(intake, make_mail(message_id="b1@acme.example"))
    [ticket] = tickets(engine)
    with Session(engine) as session:  # an answer we sent to the customer
        session.add(
            Item(ticket_id=ticket.id or 0, direction=Direction.OUTBOUND, message_id="out-1@example.test",
                 to_addresses="alice@acme.example", created_at=clock.now)
        )
        session.commit()
    result = deliver(intake, make_dsn(failed="alice@acme.example", original_message_id="out-1@example.test"))
    assert (result.outcome, result.ticket_number) == (Outcome.BOUNCE, "SUP-1")
    assert len(tickets(engine)) == 1
    last = items(engine, "SUP-1")[-1]
    assert (last.kind, last.visibility) == ("bounce", "internal")
    with Session(engine) as session:
        address = session.get(ContactAddress, "alice@acme.example")
    assert address is not None and address.bouncing and address.bounce_count == 1


def test_bounce_for_unknown_mail_opens_nothing(intake: Intake, engine: Engine) -> None:
    result = deliver(intake, make_dsn(failed="nobody@acme.example", original_message_id="nope@example.test"))
    assert (result.outcome, result.ticket_number) == (Outcome.BOUNCE, None)
    assert tickets(engine) == []


def test_own_mail_is_ignored(intake: Intake, engine: Engine) -> None:
    assert deliver(intake, make_mail(sender="helpdesk@example.test")).outcome == Outcome.IGNORED
    assert deliver(intake, make_mail(sender="support@example.test")).outcome == Outcome.IGNORED
    assert deliver(intake, make_mail(headers={"X-Helpdesk-Loop": "example.test"})).outcome == Outcome.IGNORED
    assert tickets(engine) == []


def test_duplicates_never_make_a_second_ticket(intake: Intake, engine: Engine) -> None:
    raw = make_mail(message_id="dup@acme.example")
    first = deliver(intake, raw, source="imap-a", key="1")
    again = deliver(intake, raw, source="imap-a", key="1")  # same source key: the same row
    copy = deliver(intake, raw, source="pop3-b", key="x")  # same bytes elsewhere
    resent = deliver(intake, b"Received: from relay2.example by mx\r\n" + raw, source="lmtp")  # other route
    reused = deliver(intake, make_mail(message_id="dup@acme.example", subject="different mail, same id"))
    assert first.outcome == Outcome.TICKET
    assert again.raw_id == first.raw_id
    assert (copy.outcome, resent.outcome) == (Outcome.DUPLICATE, Outcome.DUPLICATE)
    assert copy.ticket_number == "SUP-1"
    assert len(items(engine, "SUP-1")) == 1
    assert (reused.outcome, reused.ticket_number) == (Outcome.TICKET, "SUP-2")  # a reused Message-ID loses nothing
    assert len(tickets(engine)) == 2


def test_reply_to_solved_ticket_reopens_within_window(intake: Intake, engine: Engine, clock: Clock) -> None:
    deliver(intake, make_mail(message_id="r1@acme.example"))
    with Session(engine) as session:
        ticket = session.exec(select(Ticket)).one()
        ticket.status, ticket.solved_at = "solved", clock.now
        session.add(ticket)
        session.commit()
    clock.advance(days=3)
    result = deliver(intake, make_mail(in_reply_to="r1@acme.example"))
    assert (result.outcome, result.ticket_number) == (Outcome.FOLLOW_UP, "SUP-1")
    assert tickets(engine)[0].status == "open"
    assert audit(engine, "SUP-1")[-1] == ("status_changed", "status", "solved", "open")


def test_reply_after_reopen_window_opens_linked_ticket(intake: Intake, engine: Engine, clock: Clock) -> None:
    deliver(intake, make_mail(message_id="c1@acme.example"))
    with Session(engine) as session:
        ticket = session.exec(select(Ticket)).one()
        ticket.status, ticket.closed_at = "closed", clock.now
        session.add(ticket)
        session.commit()
    clock.advance(days=15)
    result = deliver(intake, make_mail(in_reply_to="c1@acme.example", subject="Re: [SUP-1] Printer"))
    assert (result.outcome, result.ticket_number) == (Outcome.TICKET, "SUP-2")
    old, new = tickets(engine)
    assert old.status == "closed" and new.linked_ticket_id == old.id
    assert ("linked", "linked_ticket", None, "SUP-1") in audit(engine, "SUP-2")


def test_customer_reply_moves_pending_ticket_back_to_open(intake: Intake, engine: Engine) -> None:
    deliver(intake, make_mail(message_id="p1@acme.example"))
    with Session(engine) as session:
        ticket = session.exec(select(Ticket)).one()
        ticket.status = "pending"
        session.add(ticket)
        session.commit()
    deliver(intake, make_mail(in_reply_to="p1@acme.example"))
    assert tickets(engine)[0].status == "open"


def test_routing_by_recipient_and_rules(intake: Intake, engine: Engine) -> None:
    by_cc = deliver(intake, make_mail(to="someone@acme.example", cc=["sales@example.test"]))
    delivered_to = deliver(intake, make_mail(to="list@acme.example", headers={"Delivered-To": "sales+x@example.test"}))
    urgent = deliver(intake, make_mail(subject="URGENT: server down"))
    assert (by_cc.ticket_number, delivered_to.ticket_number, urgent.ticket_number) == ("SAL-1", "SAL-2", "SUP-1")
    ticket = tickets(engine)[-1]
    assert (ticket.priority, ticket.category) == (1, "urgent")
    assert ("routed", "rule", None, "urgent-subject") in audit(engine, "SUP-1")


def test_attachments_are_stored_once_by_content(intake: Intake, engine: Engine) -> None:
    log = b"line\n" * 1000
    deliver(intake, make_mail(attachments=[("printer.log", "text/plain", log)]))
    deliver(intake, make_mail(subject="again", attachments=[("same.log", "text/plain", log)]))
    with Session(engine) as session:
        attachments = session.exec(select(Attachment)).all()
        blobs = session.exec(select(Blob)).all()
    assert sorted(a.filename or "" for a in attachments) == ["printer.log", "same.log"]
    assert len(blobs) == 1 and blobs[0].data == log


def test_failure_in_a_step_quarantines_only_that_message(
    intake: Intake, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = steps.route_step

    def broken(plan: steps.Plan, ctx: steps.Context) -> bool:
        if "poison" in plan.parsed.subject:
            raise RuntimeError("routing table exploded")
        return original(plan, ctx)

    monkeypatch.setattr(steps, "STEPS", tuple((n, broken if n == "route" else f) for n, f in steps.STEPS))
    results = intake.ingest(
        "lmtp",
        [Incoming(key="a", data=make_mail(subject="poison pill")), Incoming(key="b", data=make_mail(subject="fine"))],
    )
    assert [r.outcome for r in results] == [Outcome.QUARANTINED, Outcome.TICKET]
    assert results[0].error == "route failed: RuntimeError: routing table exploded"
    with Session(engine) as session:
        assert b"poison pill" in raw_bytes(session, results[0].raw_id)
    monkeypatch.undo()
    retried = intake.retry(results[0].raw_id)
    assert (retried.outcome, retried.ticket_number) == (Outcome.TICKET, "SUP-2")


def test_pending_messages_are_finished_after_a_crash(intake: Intake, engine: Engine) -> None:
    stored = intake.store("lmtp", [Incoming(key="crash", data=make_mail())])  # committed, not processed
    assert stored and tickets(engine) == []
    results = intake.process_pending()
    assert [r.outcome for r in results] == [Outcome.TICKET]


def test_mail_without_any_sender(intake: Intake, engine: Engine) -> None:
    headers = b"Subject: who am I\r\nTo: support@example.test\r\n\r\nbody\r\n"
    kept = deliver(intake, headers)  # support still sees the request, on a ticket without a contact
    assert (kept.outcome, kept.ticket_number) == (Outcome.TICKET, "SUP-1")
    assert tickets(engine)[0].contact_id is None
    with Session(engine) as session:
        raw = session.get(RawMessage, kept.raw_id)
    assert raw is not None and raw.detail is not None and steps.NO_SENDER in raw.detail
    refused = deliver(intake, headers.replace(b"support@", b"sales@"))  # sales takes known contacts only
    assert refused.outcome == Outcome.QUARANTINED
    assert refused.error == f"{steps.NO_SENDER}: channel sales accepts mail from known contacts only"
    via_envelope = intake.ingest("lmtp", [Incoming(key="e", data=headers + b"x", envelope_from="bob@acme.example")])
    assert via_envelope[0].ticket_number == "SUP-2"


def test_audit_events_are_immutable(intake: Intake, engine: Engine) -> None:
    deliver(intake, make_mail())
    with Session(engine) as session:
        event = session.exec(select(AuditEvent)).first()
        assert event is not None
        event.new_value = "tampered"
        session.add(event)
        with pytest.raises(PermissionError):
            session.commit()
    with engine.connect() as conn, pytest.raises(Exception, match="immutable"):
        conn.execute(text("UPDATE audit_event SET new_value = 'x'"))
    with engine.connect() as conn, pytest.raises(Exception, match="immutable"):
        conn.execute(text("DELETE FROM audit_event"))


def test_large_batches_parsed_in_a_worker_process_give_the_same_outcomes(
    engine: Engine, config: Any, clock: Clock
) -> None:
    from helpdesk.intake.prepare import MIN_BATCH_FOR_WORKERS

    def batch(tag: str) -> list[Incoming]:
        mails = [make_mail(message_id=f"{tag}-{i}@acme.example", subject=f"{tag} {i}") for i in range(36)]
        mails.append(make_mail(message_id=f"{tag}-ooo@acme.example", headers={"Auto-Submitted": "auto-replied"}))
        mails.append(make_dsn(failed="alice@acme.example", original_message_id=f"{tag}-0@acme.example"))
        mails.append(make_mail(message_id=f"{tag}-re@acme.example", in_reply_to=f"{tag}-1@acme.example"))
        return [Incoming(key=f"{tag}{i}", data=m) for i, m in enumerate(mails)]

    outcomes = {}
    for workers in (0, 1):
        intake = Intake(engine, config.model_copy(update={"parse_workers": workers}), clock)
        try:
            messages = batch(f"w{workers}")
            assert len(messages) >= MIN_BATCH_FOR_WORKERS
            outcomes[workers] = [r.outcome for r in intake.ingest("lmtp", messages)]
            if workers:
                assert intake.preparer._pool is not None  # the worker really ran
        finally:
            intake.close()
    assert outcomes[0] == outcomes[1]
    assert outcomes[1][-3:] == [Outcome.AUTO_REPLY, Outcome.BOUNCE, Outcome.FOLLOW_UP]
