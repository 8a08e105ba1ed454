"""Mail out end to end with real servers: the daemon reads the support mailbox in Dovecot and sends
through a real SMTP server, which delivers into the Dovecot mailboxes of customer and staff (a tiny
MTA). Round trip, a peer that auto-replies to everything, an SMTP outage, a refused recipient."""

from __future__ import annotations

import email
import email.policy
import smtplib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import Config, validate
from helpdesk.daemon import Daemon
from helpdesk.mail.threading import base_address
from helpdesk.mail.tokens import verify
from helpdesk.store.models import AuditEvent, ContactAddress, Item, Outbox, Ticket
from tests.conftest import TEST_REPLY_SECRET, Clock, base_config, mailbox_entry
from tests.mailgen import make_mail
from tests.servers.smtp import Received, SmtpSink

pytestmark = pytest.mark.dovecot

SECRET = TEST_REPLY_SECRET.encode()


@dataclass
class World:
    """Dovecot users for the support mailbox, a customer and a staff member, joined by an SMTP sink."""

    dovecot: Any
    sink: SmtpSink
    users: dict[str, str]  # mail address -> Dovecot user

    def deliver(self, received: Received) -> None:
        for rcpt in received.rcpt_tos:
            user = self.users.get(base_address(rcpt.lower()))
            if user is not None:
                self.dovecot.append(user, f"Delivered-To: {rcpt}\r\n".encode() + received.data)

    def inbox(self, address: str) -> list[EmailMessage]:
        found = []
        for _uid, data in sorted(self.dovecot.fetch(self.users[address]).items()):
            message = email.message_from_bytes(data, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            found.append(message)
        return found

    def submit(self, message: EmailMessage) -> None:
        """Send as a mail client would: through the MTA."""
        with smtplib.SMTP(self.sink.host, self.sink.port, timeout=10) as client:
            client.send_message(message)


@pytest.fixture
def world(dovecot: Any) -> Iterator[World]:
    users: dict[str, str] = {}
    for address in ("support@example.test", "alice@acme.example", "sam@example.test", "peer@robots.example"):
        name = f"u{uuid.uuid4().hex[:10]}"
        dovecot.add_user(name, "pw-" + name)
        users[address] = name
    sink = SmtpSink()
    w = World(dovecot, sink, users)
    sink.on_message = w.deliver
    with sink:
        yield w


def flow_config(w: World, **overrides: Any) -> Config:
    data = base_config(
        staff=[{"name": "sam", "display_name": "Sam Agent", "addresses": ["sam@example.test"]}],
        smtp={"host": w.sink.host, "port": w.sink.port, "tls": "none", "timeout": 5},
        **overrides,
    )
    data["channels"][0]["from_name"] = "Example Support"
    data["channels"][0]["mailboxes"] = [mailbox_entry(w.dovecot, w.users["support@example.test"])]
    return validate(data)


def audit_of(engine: Engine, number: str) -> list[tuple[str, str | None, str | None, str]]:
    with Session(engine) as session:
        ticket = session.exec(select(Ticket).where(Ticket.number == number)).one()
        rows = session.exec(select(AuditEvent).where(AuditEvent.ticket_id == ticket.id).order_by(col(AuditEvent.id)))
        return [(r.action, r.old_value, r.new_value, r.actor) for r in rows]


def answer(to_message: EmailMessage, sender: str, body: str) -> EmailMessage:
    """A reply as a mail client writes it: to the Reply-To, threaded, the original quoted below."""
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = to_message["Reply-To"] or to_message["From"]
    reply["Subject"] = "Re: " + to_message["Subject"]
    reply["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].rstrip(">"))
    reply["In-Reply-To"] = to_message["Message-ID"]
    reply["References"] = f"{to_message.get('References', '')} {to_message['Message-ID']}".strip()
    part = to_message.get_body(preferencelist=("plain",))
    assert part is not None
    quoted = "\n".join("> " + line for line in str(part.get_content()).splitlines())  # type: ignore[attr-defined]
    reply.set_content(f"{body}\n\nOn Mon, 2 Mar 2026, {to_message['From']} wrote:\n{quoted}\n")
    return reply


def plain(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def test_round_trip_customer_staff_customer(world: World, engine: Engine, clock: Clock) -> None:
    daemon = Daemon(flow_config(world), engine, clock)
    try:
        # 1. The customer writes; the ticket opens, the customer is acknowledged, the team notified.
        world.dovecot.append(world.users["support@example.test"], make_mail(message_id="q1@acme.example"))
        summary = daemon.run_once()
        assert summary.sent.sent == 2 and not summary.errors
        [ack] = world.inbox("alice@acme.example")
        assert ack["Auto-Submitted"] == "auto-replied" and ack["In-Reply-To"] == "<q1@acme.example>"
        assert "[SUP-1]" in ack["Subject"] and ack["Message-ID"].endswith("@example.test>")
        reply_to = ack["Reply-To"].addresses[0].addr_spec
        assert reply_to.startswith("support+") and verify(reply_to, "alice@acme.example", SECRET) is not None
        assert ack.get_body(preferencelist=("html",)) is not None
        [notification] = world.inbox("sam@example.test")
        assert "the printer on floor 2 does not print" in plain(notification)

        # 2. Sam answers the notification from his mail client, with commands on top.
        clock.advance(minutes=30)
        world.submit(answer(notification, "Sam Agent <sam@example.test>",
                            "#status pending\n#time 30m diagnosis\n\nHello Alice,\nplease switch it off and on."))
        daemon.run_once()
        customer_mail = world.inbox("alice@acme.example")
        assert len(customer_mail) == 2
        relayed = customer_mail[1]
        assert relayed["From"].addresses[0].display_name == "Sam Agent"
        assert relayed["From"].addresses[0].addr_spec == "support@example.test"
        assert relayed["In-Reply-To"] == "<q1@acme.example>" and "<q1@acme.example>" in relayed["References"]
        assert relayed.get("Auto-Submitted") is None
        text = plain(relayed)
        assert "please switch it off and on" in text
        assert "#status" not in text and "floor 2" not in text  # commands and the quoted notification removed
        html = relayed.get_body(preferencelist=("html",))
        assert html is not None and "please switch it off and on" in str(html.get_content())  # type: ignore[attr-defined]
        assert verify(relayed["Reply-To"].addresses[0].addr_spec, "alice@acme.example", SECRET) is not None

        # 3. The customer answers the relayed mail: same ticket, back with us.
        clock.advance(hours=3)
        world.submit(answer(relayed, "Alice Customer <alice@acme.example>", "Did that, it prints again."))
        daemon.run_once()
        with Session(engine) as session:
            tickets = session.exec(select(Ticket)).all()
            inbound = session.exec(select(Item).where(Item.direction == "inbound")).all()
        assert [(t.number, t.status) for t in tickets] == [("SUP-1", "open")]
        assert [i.body_text.strip() for i in inbound][-1] == "Did that, it prints again."
        changes = [(old, new, actor) for action, old, new, actor in audit_of(engine, "SUP-1")
                   if action == "status_changed"]
        assert changes == [("new", "pending", "staff:sam"), ("pending", "open", "customer:alice@acme.example")]
        assert ("time_recorded", None, "30 min diagnosis", "staff:sam") in audit_of(engine, "SUP-1")
        # Sam owns the ticket now and hears of the customer's answer.
        assert "Did that, it prints again." in plain(world.inbox("sam@example.test")[-1])
    finally:
        daemon.close()


@pytest.mark.parametrize("marked", [True, False], ids=["rfc3834-peer", "unmarked-peer"])
def test_auto_replying_peer_gets_at_most_one_acknowledgement(
    world: World, engine: Engine, clock: Clock, marked: bool
) -> None:
    """The peer answers every mail it receives; a marked peer says so (Auto-Submitted), an unmarked
    one only threads its answer (In-Reply-To). Either way the exchange stops."""
    daemon = Daemon(flow_config(world), engine, clock)

    def peer_answers() -> int:
        count = 0
        for message in world.inbox("peer@robots.example")[peer_answers.seen:]:  # type: ignore[attr-defined]
            auto = EmailMessage()
            auto["From"] = "peer@robots.example"
            auto["To"] = message["Reply-To"] or message["From"]
            auto["Subject"] = "Automatic reply: " + message["Subject"] if marked else "Re: " + message["Subject"]
            auto["Message-ID"] = make_msgid(domain="robots.example")
            auto["In-Reply-To"] = message["Message-ID"]
            if marked:
                auto["Auto-Submitted"] = "auto-replied"
            auto.set_content("I am a robot and I answer everything.")
            world.submit(auto)
            count += 1
        peer_answers.seen += count  # type: ignore[attr-defined]
        return count

    peer_answers.seen = 0  # type: ignore[attr-defined]
    try:
        world.dovecot.append(
            world.users["support@example.test"], make_mail(sender="peer@robots.example", message_id="start@robots")
        )
        rounds = 0
        for rounds in range(1, 8):  # noqa: B007 - the count is checked below
            clock.advance(minutes=1)
            daemon.run_once()
            if peer_answers() == 0:
                break
        with Session(engine) as session:
            to_peer = session.exec(select(Outbox).where(Outbox.recipient == "peer@robots.example")).all()
            tickets = session.exec(select(Ticket)).all()
        assert [row.kind for row in to_peer] == ["ack"]
        assert len(tickets) == 1 and rounds <= 3
    finally:
        daemon.close()


def test_smtp_outage_delivers_each_queued_mail_exactly_once(world: World, engine: Engine, clock: Clock) -> None:
    daemon = Daemon(flow_config(world), engine, clock)
    world.sink.on_message = None
    try:
        world.sink.stop()
        world.dovecot.append_many(
            world.users["support@example.test"],
            [make_mail(subject=f"Case {n}", sender=f"c{n}@acme.example", message_id=f"c{n}@acme.example")
             for n in range(100)],
        )
        summary = daemon.run_once()
        assert summary.sent.sent == 0 and summary.sent.deferred > 0
        for _ in range(3):  # still down: retried with backoff, nothing lost
            clock.advance(minutes=30)
            assert daemon.sender.run_once().sent == 0
        world.sink.restart()
        clock.advance(hours=1)
        report = daemon.sender.run_once()
        assert report.failed == 0
        clock.advance(hours=1)
        assert daemon.sender.run_once().attempted == 0  # nothing left, nothing sent again
        with Session(engine) as session:
            rows = session.exec(select(Outbox)).all()
        # 100 acknowledgements and 100 notifications to Sam
        assert sorted(r.kind for r in rows) == ["ack"] * 100 + ["notification"] * 100
        assert {r.state for r in rows} == {"sent"} and all(r.attempts >= 2 for r in rows)  # failed at least once
        received_ids = [r.message["Message-ID"].strip("<>") for r in world.sink.received]
        assert sorted(received_ids) == sorted(r.message_id for r in rows)
        assert len(received_ids) == len(set(received_ids)) == 200
    finally:
        daemon.close()


def test_refused_recipient_is_recorded_on_the_ticket_and_the_owner_told(
    world: World, engine: Engine, clock: Clock
) -> None:
    daemon = Daemon(flow_config(world), engine, clock)
    world.sink.refuse("gone@acme.example", "550 5.1.1 <gone@acme.example>: Recipient address rejected")
    try:
        world.dovecot.append(world.users["support@example.test"], make_mail(sender="gone@acme.example"))
        summary = daemon.run_once()
        assert summary.sent.failed == 1  # the acknowledgement; Sam's notification went out
        actions = audit_of(engine, "SUP-1")
        [failure] = [new for action, _old, new, _ in actions if action == "delivery_failed"]
        assert failure is not None and failure.startswith("gone@acme.example: 550 5.1.1")
        with Session(engine) as session:
            address = session.get(ContactAddress, "gone@acme.example")
        assert address is not None and address.bouncing  # no more acknowledgements to it
        # Nobody owns the ticket yet, so the channel team (Sam) hears of it.
        daemon.sender.run_once()
        subjects = [m["Subject"] for m in world.inbox("sam@example.test")]
        assert any("Delivery failed" in s for s in subjects), subjects
    finally:
        daemon.close()


def test_running_daemon_sends_without_being_asked(world: World, engine: Engine) -> None:
    """In the long-running daemon the outbox has a worker of its own; intake wakes it."""
    world.sink.on_message = None
    daemon = Daemon(flow_config(world), engine)
    daemon.start()
    try:
        world.dovecot.append(world.users["support@example.test"], make_mail(message_id="live@acme.example"))
        arrived = world.sink.wait_for(2, timeout=30)
        assert sorted(r.rcpt_tos[0] for r in arrived) == ["alice@acme.example", "sam@example.test"]
    finally:
        daemon.stop()
