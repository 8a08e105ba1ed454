"""What intake sends and what staff do by mail, on SQLite and PostgreSQL: acknowledgements,
notifications, replies relayed to the customer, notes, commands, and the trust rules."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import Config, validate
from helpdesk.intake.runner import Incoming, Intake, Result
from helpdesk.mail.tokens import TokenKind, sign, verify
from helpdesk.store.models import AuditEvent, Item, Outbox, Outcome, Ticket, TicketWatcher, TimeEntry
from tests.conftest import TEST_REPLY_SECRET, Clock, base_config
from tests.mailgen import make_mail

SECRET = TEST_REPLY_SECRET.encode()
CUSTOMER = "alice@acme.example"
_keys = iter(range(1, 1_000_000))

STAFF = [
    {"name": "sam", "display_name": "Sam Agent", "addresses": ["sam@example.test"], "channels": ["support"]},
    {"name": "lea", "display_name": "Lea Lead", "addresses": ["lea@example.test"], "role": "lead"},
    {"name": "sal", "display_name": "Sal Sales", "addresses": ["sal@example.test"], "channels": ["sales"]},
]


def staff_config(**overrides: Any) -> Config:
    return validate(base_config(staff=STAFF, **overrides))


@pytest.fixture
def desk(engine: Engine, clock: Clock) -> Intake:
    return Intake(engine, staff_config(), clock)


def deliver(intake: Intake, raw: bytes) -> Result:
    return intake.ingest("lmtp", [Incoming(key=f"k{next(_keys)}", data=raw)])[0]


def outbox(engine: Engine, recipient: str | None = None, kind: str | None = None) -> list[Outbox]:
    with Session(engine) as session:
        stmt = select(Outbox).order_by(col(Outbox.id))
        if recipient is not None:
            stmt = stmt.where(Outbox.recipient == recipient)
        if kind is not None:
            stmt = stmt.where(Outbox.kind == kind)
        return list(session.exec(stmt).all())


def parsed(row: Outbox) -> EmailMessage:
    message = email.message_from_bytes(row.data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def ticket(engine: Engine, number: str = "SUP-1") -> Ticket:
    with Session(engine) as session:
        return session.exec(select(Ticket).where(Ticket.number == number)).one()


def audit_actions(engine: Engine, number: str = "SUP-1") -> list[tuple[str, str | None, str | None]]:
    t = ticket(engine, number)
    with Session(engine) as session:
        rows = session.exec(select(AuditEvent).where(AuditEvent.ticket_id == t.id).order_by(col(AuditEvent.id)))
        return [(r.action, r.new_value, r.actor) for r in rows]


def items(engine: Engine, number: str = "SUP-1") -> list[Item]:
    t = ticket(engine, number)
    with Session(engine) as session:
        return list(session.exec(select(Item).where(Item.ticket_id == t.id).order_by(col(Item.id))).all())


def reply_token(number_id: int, recipient: str, kind: TokenKind = TokenKind.REPLY) -> str:
    return f"support+{sign(SECRET, kind, number_id, recipient)}@example.test"


def open_ticket(desk: Intake) -> Result:
    result = deliver(desk, make_mail(message_id="first@acme.example"))
    assert result.outcome == Outcome.TICKET
    return result


def staff_mail(body: str, *, sender: str = "Sam Agent <sam@example.test>", to: str | None = None, **kw: Any) -> bytes:
    return make_mail(
        sender=sender, to=to or reply_token(1, sender.split("<")[1].rstrip(">")),
        subject="Re: [SUP-1] New ticket: Printer does not print", body=body, **kw,
    )


QUOTE = "\n\nOn Mon, 2 Mar 2026 at 09:00, Example Support wrote:\n> Alice Customer wrote:\n> the printer on floor 2\n"


# --- acknowledgements and notifications ----------------------------------------------------------------


def test_new_ticket_is_acknowledged_with_threading_and_signed_reply_address(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    [ack] = outbox(engine, CUSTOMER)
    message = parsed(ack)
    assert ack.kind == "ack" and ack.state == "queued"
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["In-Reply-To"] == "<first@acme.example>"
    assert "<first@acme.example>" in message["References"]
    assert message["Message-ID"] == f"<{ack.message_id}>" and ack.message_id.endswith("@example.test")
    assert "[SUP-1]" in message["Subject"]
    assert message["From"].addresses[0].addr_spec == "support@example.test"
    reply_to = message["Reply-To"].addresses[0].addr_spec
    token = verify(reply_to, CUSTOMER, SECRET)
    assert token is not None and token.ticket_id == ticket(engine).id and token.kind is TokenKind.REPLY
    assert verify(reply_to, "mallory@evil.example", SECRET) is None
    assert message.get_body(preferencelist=("html",)) is not None
    assert "SUP-1" in text_of(message)
    [ack_item] = [i for i in items(engine) if i.direction == "outbound"]
    assert (ack_item.kind, ack_item.visibility, ack_item.message_id) == ("auto_reply", "customer", ack.message_id)


def test_new_ticket_notifies_the_channel_team_with_answerable_mail(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    notes = outbox(engine, kind="notification")
    assert sorted(n.recipient for n in notes) == ["lea@example.test", "sam@example.test"]  # not sal (sales only)
    for row in notes:
        message = parsed(row)
        assert message["Auto-Submitted"] == "auto-generated"
        token = verify(message["Reply-To"].addresses[0].addr_spec, row.recipient, SECRET)
        assert token is not None and token.kind is TokenKind.REPLY
        body = text_of(message)
        assert "the printer on floor 2 does not print" in body
        assert "#status" in body  # the help on commands
        note_address = reply_token(token.ticket_id, row.recipient, TokenKind.NOTE)
        assert note_address in body


def test_no_acknowledgement_to_robots_auto_replies_or_bounces(desk: Intake, engine: Engine) -> None:
    deliver(desk, make_mail(sender="noreply@vendor.example", message_id="n1@vendor.example"))
    deliver(desk, make_mail(sender="bob@acme.example", headers={"Auto-Submitted": "auto-replied"}))
    deliver(desk, make_mail(sender="MAILER-DAEMON@acme.example", subject="Undelivered Mail"))
    assert outbox(engine, kind="ack") == []


def test_acknowledgement_rate_limit_per_recipient(engine: Engine, clock: Clock) -> None:
    config = staff_config(acknowledgements={"per_recipient": {"count": 2, "window": "10m"}})
    desk = Intake(engine, config, clock)
    for n in range(4):
        deliver(desk, make_mail(subject=f"Problem {n}", message_id=f"p{n}@acme.example"))
        clock.advance(seconds=30)
    assert len(outbox(engine, CUSTOMER, "ack")) == 2
    clock.advance(minutes=11)
    deliver(desk, make_mail(subject="Problem later", message_id="later@acme.example"))
    assert len(outbox(engine, CUSTOMER, "ack")) == 3


def test_channel_can_turn_acknowledgements_off(engine: Engine, clock: Clock) -> None:
    data = base_config(staff=STAFF)
    data["channels"][0]["acknowledge"] = False
    desk = Intake(engine, validate(data), clock)
    open_ticket(desk)
    assert outbox(engine, kind="ack") == [] and outbox(engine, kind="notification")


# --- staff replies, notes and commands -------------------------------------------------------------------


def test_staff_reply_with_commands_is_relayed_without_them(desk: Intake, engine: Engine, clock: Clock) -> None:
    open_ticket(desk)
    clock.advance(minutes=20)
    body = "#status pending\n#time 1.5h remote support\n\nHello Alice,\n\nplease restart the printer." + QUOTE
    result = deliver(desk, staff_mail(body, attachments=[("steps.pdf", "application/pdf", b"%PDF-1.4 steps")]))
    assert result.outcome == Outcome.STAFF and result.ticket_number == "SUP-1"
    t = ticket(engine)
    assert (t.status, t.owner) == ("pending", "sam")
    with Session(engine) as session:
        [entry] = session.exec(select(TimeEntry)).all()
        watchers = {w.staff for w in session.exec(select(TicketWatcher)).all()}
    assert (entry.minutes, entry.description, entry.staff) == (90, "remote support", "sam")
    assert "sam" in watchers
    [reply] = outbox(engine, CUSTOMER, "reply")
    message = parsed(reply)
    assert message["From"].addresses[0].display_name == "Sam Agent"
    assert message["From"].addresses[0].addr_spec == "support@example.test"
    assert message["In-Reply-To"] == "<first@acme.example>"
    assert message["Subject"] == "Re: [SUP-1] Printer does not print"
    assert message.get("Auto-Submitted") is None
    text = text_of(message)
    assert "please restart the printer" in text
    assert "#status" not in text and "#time" not in text and "floor 2" not in text
    assert [a.get_filename() for a in message.iter_attachments()] == ["steps.pdf"]
    token = verify(message["Reply-To"].addresses[0].addr_spec, CUSTOMER, SECRET)
    assert token is not None and token.ticket_id == t.id
    [item] = [i for i in items(engine) if i.direction == "outbound" and i.kind == "message"]
    assert (item.visibility, item.author, item.message_id) == ("customer", "sam", reply.message_id)
    assert "#status" not in item.body_text
    actions = audit_actions(engine)
    assert ("status_changed", "pending", "staff:sam") in actions
    assert ("time_recorded", "90 min remote support", "staff:sam") in actions
    assert ("command", "#status pending", "staff:sam") in actions
    assert ("owner_changed", "sam", "staff:sam") in actions
    # Lea (channel team, not yet a watcher) heard of the new ticket; now the owner works it.
    assert not [r for r in outbox(engine, "lea@example.test") if "replied" in r.subject]


def test_customer_answer_reopens_pending_and_notifies_the_owner(desk: Intake, engine: Engine, clock: Clock) -> None:
    open_ticket(desk)
    deliver(desk, staff_mail("#status pending\n\nPlease restart it." + QUOTE))
    [reply] = outbox(engine, CUSTOMER, "reply")
    clock.advance(hours=2)
    answer = make_mail(
        to=parsed(reply)["Reply-To"].addresses[0].addr_spec, subject="Re: Printer does not print",
        in_reply_to=reply.message_id, body="Restarted, works now. Thanks!",
    )
    result = deliver(desk, answer)
    assert (result.outcome, result.ticket_number) == (Outcome.FOLLOW_UP, "SUP-1")
    assert ticket(engine).status == "open"
    told = [r for r in outbox(engine, "sam@example.test") if r.kind == "notification"]
    assert "Restarted, works now" in text_of(parsed(told[-1]))
    assert len(outbox(engine, kind="ack")) == 1  # answers are never acknowledged


def test_note_stays_internal_and_mention_notifies(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    deliver(desk, staff_mail("#note\n\n@lea can you check the toner order? Thanks" + QUOTE))
    assert outbox(engine, CUSTOMER, "reply") == []
    [note] = [i for i in items(engine) if i.kind == "note"]
    assert (note.visibility, note.direction, note.author) == ("internal", "internal", "sam")
    assert note.body_text.startswith("@lea can you check")
    to_lea = [r for r in outbox(engine, "lea@example.test") if r.kind == "notification"][-1]
    assert "mentioned" in to_lea.subject
    assert ("mentioned", "lea", "staff:sam") in audit_actions(engine)


def test_note_address_makes_a_note(desk: Intake, engine: Engine) -> None:
    result = open_ticket(desk)
    assert result.ticket_number == "SUP-1"
    note_to = reply_token(ticket(engine).id or 0, "sam@example.test", TokenKind.NOTE)
    deliver(desk, staff_mail("Customer called, will try again tomorrow." + QUOTE, to=note_to))
    assert outbox(engine, CUSTOMER, "reply") == []
    assert [i.visibility for i in items(engine) if i.kind == "note"] == ["internal"]


@pytest.mark.parametrize(
    ("commands", "error"),
    [
        ("#frobnicate now", "unknown command #frobnicate"),
        ("#status sideways", "unknown status"),
        ("#owner lea", "only leads and admins may give a ticket to someone else"),
        ("#assignee nobody-here", "no staff member of that name"),
        ("#assignee sal", "sal does not work in channel support"),
        ("#time lots", "cannot read a duration"),
    ],
)
def test_bad_command_executes_nothing_and_is_answered(
    desk: Intake, engine: Engine, commands: str, error: str
) -> None:
    open_ticket(desk)
    before = ticket(engine)
    deliver(desk, staff_mail(f"#status pending\n{commands}\n\nDear Alice, done." + QUOTE))
    after = ticket(engine)
    assert (after.status, after.owner, after.assignee) == (before.status, before.owner, before.assignee)
    assert outbox(engine, CUSTOMER, "reply") == []
    [answer] = outbox(engine, "sam@example.test", "command_error")
    assert error in text_of(parsed(answer))
    assert [a for a, _new, _actor in audit_actions(engine) if a in ("status_changed", "command")] == []
    assert any(a == "commands_refused" and error in (new or "") for a, new, _ in audit_actions(engine))


def test_lead_may_hand_the_ticket_over(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    deliver(desk, staff_mail("#owner sam\n#assignee lea\n#priority 2", sender="Lea Lead <lea@example.test>"))
    t = ticket(engine)
    assert (t.owner, t.assignee, t.priority) == ("sam", "lea", 2)
    assert outbox(engine, CUSTOMER, "reply") == []  # commands only: nothing to relay


def test_close_command(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    deliver(desk, staff_mail("#close\n\nClosing as agreed on the phone." + QUOTE))
    t = ticket(engine)
    assert t.status == "closed" and t.closed_at is not None
    assert len(outbox(engine, CUSTOMER, "reply")) == 1


# --- trust ----------------------------------------------------------------------------------------------


def test_spoofed_staff_from_executes_nothing_and_is_flagged(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    spoof = staff_mail("#status closed\n#owner sam\n\nAll fine, closing.", to="support@example.test")
    result = deliver(desk, spoof)
    assert result.outcome == Outcome.FOLLOW_UP  # kept on the ticket, as an unproven mail
    t = ticket(engine)
    assert (t.status, t.owner) == ("new", None)
    assert outbox(engine, CUSTOMER, "reply") == []
    flagged = [new for action, new, _ in audit_actions(engine) if action == "suspicious_sender"]
    assert flagged and "sam" in (flagged[0] or "")
    assert items(engine)[-1].visibility == "internal"


def test_token_for_another_recipient_does_not_make_staff(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    customer_token = reply_token(ticket(engine).id or 0, CUSTOMER)
    result = deliver(desk, staff_mail("#close", to=customer_token))
    assert result.outcome != Outcome.STAFF and ticket(engine).status == "new"


def test_authentication_results_of_our_own_server_vouch_for_staff(engine: Engine, clock: Clock) -> None:
    desk = Intake(engine, staff_config(trust={"authserv_ids": ["mx.example.test"]}), clock)
    open_ticket(desk)
    good = "mx.example.test; dkim=pass header.d=example.test; spf=pass smtp.mailfrom=sam@example.test"
    forged = "mx.evil.example; dkim=pass header.d=example.test"
    to = "support@example.test"
    result = deliver(desk, staff_mail("#priority 1", to=to, headers={"Authentication-Results": forged}))
    assert result.outcome == Outcome.FOLLOW_UP and ticket(engine).priority == 3
    result = deliver(desk, staff_mail("#priority 1", to=to, headers={"Authentication-Results": good}))
    assert result.outcome == Outcome.STAFF and ticket(engine).priority == 1


def test_stranger_quoting_a_tag_gets_a_new_linked_ticket(desk: Intake, engine: Engine) -> None:
    open_ticket(desk)
    result = deliver(
        desk, make_mail(sender="mallory@evil.example", subject="Re: [SUP-1] Printer does not print", body="Me too")
    )
    assert result.outcome == Outcome.TICKET and result.ticket_number == "SUP-2"
    new = ticket(engine, "SUP-2")
    assert new.linked_ticket_id == ticket(engine).id
    assert len(items(engine)) == 2  # SUP-1 keeps its mail and its acknowledgement only
    # A colleague from the customer's organisation may add to the ticket.
    colleague = make_mail(sender="bob@acme.example", subject="Re: [SUP-1] Printer does not print", body="Same here")
    assert deliver(desk, colleague).ticket_number == "SUP-1"


def test_address_we_cannot_write_to_never_costs_the_mail(desk: Intake, engine: Engine) -> None:
    """An internationalised address: the ticket opens, no acknowledgement; a staff answer is kept and
    the staff member is told it could not be sent."""
    raw = (
        "From: Jörg <jdöe@mächine.example>\r\nTo: support@example.test\r\nSubject: Drucker\r\n"
        "Message-ID: <intl@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGeht nicht.\r\n"
    ).encode()
    result = deliver(desk, raw)
    assert (result.outcome, result.ticket_number) == (Outcome.TICKET, "SUP-1")
    assert outbox(engine, kind="ack") == []
    deliver(desk, staff_mail("Hello Jörg, fixed."))
    assert [i.body_text.strip() for i in items(engine) if i.direction == "outbound"] == ["Hello Jörg, fixed."]
    assert any(action == "reply_not_sent" for action, _new, _actor in audit_actions(engine))
    [told] = outbox(engine, "sam@example.test", "command_error")
    assert "stored on the ticket but not sent" in text_of(parsed(told))


def test_channel_templates_override_the_shipped_ones(engine: Engine, clock: Clock, tmp_path: Any) -> None:
    (tmp_path / "ack.subject.txt").write_text("{{ tag }} Wir haben Ihre Anfrage erhalten")
    (tmp_path / "ack.html").write_text("<p>Danke, {{ customer_name }}! Ticket {{ ticket.number }}</p>")
    data = base_config(staff=STAFF)
    data["channels"][0]["templates"] = str(tmp_path)
    desk = Intake(engine, validate(data), clock)
    deliver(desk, make_mail(sender="Bob <bob@acme.example>", body="<b>bold</b>"))
    [ack] = outbox(engine, "bob@acme.example", "ack")
    message = parsed(ack)
    assert message["Subject"] == "[SUP-1] Wir haben Ihre Anfrage erhalten"
    html = message.get_body(preferencelist=("html",))
    assert html is not None and "Danke, Bob! Ticket SUP-1" in str(html.get_content())  # type: ignore[attr-defined]
    assert "SUP-1" in text_of(message)  # the text part is still the shipped one
