"""The shared real-world corpora read through the Microsoft Graph adapter end exactly as when read
through IMAP: the same outcome for every mail (ticket, follow-up, bounce, auto-reply, duplicate,
quarantine), the same tickets, nothing lost or imported twice."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import Config, validate
from helpdesk.intake.runner import Intake
from helpdesk.mailboxes.graph import GraphMailbox
from helpdesk.mailboxes.imap import ImapMailbox
from helpdesk.oauth.tokens import Providers
from helpdesk.store.db import make_engine
from helpdesk.store.migrate import upgrade
from helpdesk.store.models import RawMessage, Ticket
from tests.conftest import Clock, base_config, mailbox_entry
from tests.corpora import corpora_dir
from tests.servers.graph import GraphServer
from tests.test_corpora import corpus_mails

pytestmark = pytest.mark.dovecot

ADDRESS = "support@example.test"


def fresh_engine(path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return engine


def outcomes(engine: Engine, position: dict[str, int]) -> tuple[dict[int, str], int]:
    """Outcome per corpus position (from the source key), and the number of tickets."""
    with Session(engine) as session:
        rows = session.exec(select(RawMessage.source_key, RawMessage.outcome).order_by(col(RawMessage.id))).all()
        tickets = len(session.exec(select(Ticket.id)).all())
    found: dict[int, str] = {}
    for key, outcome in rows:
        assert position[key] not in found, f"{key} imported twice"
        found[position[key]] = str(outcome)
    return found, tickets


def stamped(data: bytes, n: int) -> bytes:
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    if re.search(rb"^message-id:", head, re.IGNORECASE | re.MULTILINE):
        return data
    return f"Message-ID: <corpus-{n}@exchange.example>\r\n".encode() + data


def poll_until_empty(box: Any, intake: Intake) -> None:
    while box.poll(intake).fetched:
        pass


def test_corpora_through_graph_end_as_through_imap(
    tmp_path: Path, clock: Clock, dovecot: Any, mail_user: str
) -> None:
    # Every corpus mail a mailbox can hold (an IMAP server refuses an empty message), with a Message-ID
    # where it has none, as Exchange Online stamps one on every message it receives.
    found = [data for data in (path.read_bytes() for path in corpus_mails(corpora_dir())) if data.strip()]
    mails = [stamped(data, n) for n, data in enumerate(found)]

    # IMAP: the corpus in a Dovecot INBOX, read by the IMAP adapter.
    uids = dovecot.append_many(mail_user, mails)
    imap_config = validate({**base_config(), "channels": _channels(mailbox_entry(dovecot, mail_user))})
    uidvalidity = dovecot.uidvalidity(mail_user)
    # Dovecot stores lines with LF and hands them out with CRLF, so a few corpus files become identical
    # (and so duplicates) there; Exchange would store what it is given. Both adapters get the same bytes.
    stored = dovecot.fetch(mail_user)
    served = [stored[uid] for uid in uids]
    imap_engine = fresh_engine(tmp_path / "imap.db")
    imap_box = ImapMailbox(imap_config.mailboxes()[0][1])
    poll_until_empty(imap_box, Intake(imap_engine, imap_config, clock))
    imap_box.close()
    imap, imap_tickets = outcomes(imap_engine, {f"INBOX:{uidvalidity}:{uid}": i for i, uid in enumerate(uids)})

    # Graph: the same corpus in a Microsoft 365 inbox of the local Graph endpoint.
    with GraphServer() as server:
        server.add_mailbox(ADDRESS)
        server.tokens.add("corpus-token")
        os.environ["HD_TEST_CORPUS_TOKEN"] = "corpus-token"
        ids = [server.deliver(ADDRESS, data) for data in served]
        graph_config = _graph_config(server)
        graph_engine = fresh_engine(tmp_path / "graph.db")
        graph_box = GraphMailbox(graph_config.mailboxes()[0][1], providers=Providers(graph_config.oauth))
        poll_until_empty(graph_box, Intake(graph_engine, graph_config, clock))
        graph_box.close()
        assert server.violations == []
        assert server.folder_messages(ADDRESS, "inbox") == []
    graph, graph_tickets = outcomes(graph_engine, {message_id: i for i, message_id in enumerate(ids)})

    counts = Counter(graph.values())
    print(f"\ncorpus through Graph: {len(graph)} mails, {graph_tickets} tickets, "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    assert len(graph) == len(imap) == len(mails)
    differing = {i: (imap[i], graph[i]) for i in imap if imap[i] != graph[i]}
    assert differing == {}
    assert graph_tickets == imap_tickets


def _channels(box: dict[str, Any]) -> list[dict[str, Any]]:
    channels: list[dict[str, Any]] = base_config()["channels"]
    channels[0]["mailboxes"] = [box]
    return channels


def _graph_config(server: GraphServer) -> Config:
    box = {"name": "m365", "kind": "graph", "user": ADDRESS, "auth": "oauth2", "oauth": "m365",
           "graph_url": server.url, "timeout": 30}
    data = base_config(oauth={"m365": {"kind": "static", "token": "${HD_TEST_CORPUS_TOKEN}"}})
    data["channels"] = _channels(box)
    return validate(data)
