"""Sending through a Microsoft 365 mailbox with Graph, against the local Graph endpoint: MIME intact,
the service's Message-ID recorded so replies thread, large mail through upload sessions, and the
per-mailbox sending limit."""

from __future__ import annotations

import email
import email.policy
import os
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import Config
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound.graph import GraphTransport, SendWindow, detach_large_parts
from helpdesk.outbound.sender import OutboxSender
from helpdesk.outbound.transport import DeliveryStatus, Envelope
from helpdesk.store.models import Item, Outbox, OutboxState, Ticket
from tests.conftest import Clock, base_config
from tests.mailgen import make_mail
from tests.servers.graph import GraphServer

ADDRESS = "support@example.test"  # the support channel's address is the Microsoft 365 mailbox
TOKEN_VARIABLE = "HD_TEST_GRAPH_SEND_TOKEN"


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    with GraphServer() as server:
        server.add_mailbox(ADDRESS)
        server.tokens.add("send-token")
        os.environ[TOKEN_VARIABLE] = "send-token"
        yield server


def send_config(server: GraphServer) -> Config:
    from helpdesk.config import validate

    data = base_config(oauth={"m365": {"kind": "static", "token": f"${{{TOKEN_VARIABLE}}}"}})
    data["channels"][0]["mailboxes"] = [{
        "name": "m365", "kind": "graph", "user": ADDRESS, "auth": "oauth2", "oauth": "m365",
        "graph_url": server.url, "timeout": 10,
    }]
    data["channels"][0]["send_through"] = "m365"
    return validate(data)


def transport(config: Config, window: SendWindow | None = None) -> GraphTransport:
    box = config.mailbox("m365")
    assert box is not None
    return GraphTransport(box, Providers(config.oauth), window=window or SendWindow())


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def no_failure(*_args: Any) -> None:
    raise AssertionError("no mail may fail here")


def test_acknowledgement_goes_out_as_mime_and_replies_thread_on_the_assigned_id(
    engine: Engine, clock: Clock, graph: GraphServer
) -> None:
    graph.assign_message_ids = True  # Exchange Online gives the mail an id of its own
    config = send_config(graph)
    intake = Intake(engine, config, clock)
    [opened] = intake.ingest("lmtp", [Incoming("k1", make_mail(message_id="first@acme.example"))])
    report = OutboxSender(engine, config, clock, no_failure, providers=Providers(config.oauth)).run_once()
    assert report.sent == 1
    [sent] = graph.sent
    message = parsed(sent.mime)
    with Session(engine) as session:
        row = session.exec(select(Outbox)).one()
    assert message["Message-ID"] == sent.internet_message_id  # the service put in its own id ...
    assert message["In-Reply-To"] == "<first@acme.example>"
    assert message["Auto-Submitted"] == "auto-replied"
    assert "+" in message["Reply-To"]  # the signed reply address survives
    assert sent.recipients == ["alice@acme.example"]
    assert sent.internet_message_id.strip("<>") != row.message_id
    assert row.sent_message_id == sent.internet_message_id.strip("<>")
    kinds = [h.kind for h in graph.hits]
    assert kinds == ["create_message", "send"]

    reply = make_mail(subject="Re: something else entirely", message_id="second@acme.example",
                      in_reply_to=sent.internet_message_id)
    [followed] = intake.ingest("lmtp", [Incoming("k2", reply)])
    assert followed.ticket_number == opened.ticket_number
    with Session(engine) as session:
        assert len(session.exec(select(Ticket)).all()) == 1
        assert len(session.exec(select(Item).where(col(Item.direction) == "inbound")).all()) == 2


def test_large_mail_goes_as_a_draft_with_an_upload_session(graph: GraphServer) -> None:
    config = send_config(graph)
    big = bytes(range(256)) * (5 * 1024 * 4)  # 5 MiB
    small = b"%PDF-1.4 small" * 100
    data = make_mail(sender=f"Support <{ADDRESS}>", to="bob@acme.example", message_id="big@example.test",
                     attachments=[("dump.bin", "application/octet-stream", big),
                                  ("note.pdf", "application/pdf", small)])
    [delivery] = transport(config).deliver([Envelope(1, ADDRESS, ("bob@acme.example",), data)])
    assert delivery.status is DeliveryStatus.SENT, delivery.detail
    [sent] = graph.sent
    assert sent.internet_message_id.strip("<>") == "big@example.test"
    assert ("dump.bin", "application/octet-stream", big) in sent.attachments
    kinds = [h.kind for h in graph.hits]
    assert kinds.count("upload_session") == 1 and kinds.count("upload") == 2  # 5 MiB in 3.2 MiB chunks
    assert graph.violations == []
    reduced, detached = detach_large_parts(data)
    assert [d.name for d in detached] == ["dump.bin"] and len(reduced) < 1024 * 1024


def test_sending_limit_holds_mail_back_and_says_so(engine: Engine, clock: Clock, graph: GraphServer) -> None:
    config = send_config(graph)
    window = SendWindow(limit=3, window=60.0)
    results = transport(config, window).deliver(
        [Envelope(i, ADDRESS, (f"c{i}@acme.example",), make_mail(to=f"c{i}@acme.example")) for i in range(5)]
    )
    assert [r.status for r in results] == [DeliveryStatus.SENT] * 3 + [DeliveryStatus.HELD] * 2
    assert "at most 3 messages a minute" in results[3].detail
    assert results[3].retry_in is not None and 0 < results[3].retry_in <= 60
    assert len(graph.sent) == 3

    # Through the outbox: held mail stays queued, without counting as a failed attempt.
    intake = Intake(engine, config, clock)
    intake.ingest("lmtp", [Incoming(f"k{i}", make_mail(sender=f"c{i}@acme.example", message_id=f"x{i}@acme.example"))
                           for i in range(2)])
    sender = OutboxSender(engine, config, clock, no_failure, transport=lambda cfg: transport(cfg, window))
    report = sender.run_once()
    assert (report.sent, report.held) == (0, 2)
    with Session(engine) as session:
        rows = session.exec(select(Outbox)).all()
    assert {r.state for r in rows} == {OutboxState.QUEUED}
    assert all(r.attempts == 0 and "held back" in (r.last_error or "") for r in rows)


def test_refused_permission_keeps_the_mail_for_later(graph: GraphServer) -> None:
    config = send_config(graph)
    graph.forbid(ADDRESS)
    data = make_mail(sender=ADDRESS, to="bob@acme.example")
    [delivery] = transport(config).deliver([Envelope(1, ADDRESS, ("bob@acme.example",), data)])
    assert delivery.status is DeliveryStatus.TEMPORARY
    assert "ErrorAccessDenied" in delivery.detail and "Mail.Send" in delivery.detail
