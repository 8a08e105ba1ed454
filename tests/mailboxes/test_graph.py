"""Microsoft 365 intake through Graph, against the local Graph endpoint: every message exactly once,
whatever Graph does (throttling, server errors, expired tokens, lost sync state, repeated pages) and
wherever the daemon stops."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from helpdesk.config import Config
from helpdesk.intake.runner import Intake
from helpdesk.mailboxes import graphapi
from helpdesk.mailboxes.base import PermanentError, TemporaryError
from helpdesk.mailboxes.graph import GraphMailbox
from helpdesk.oauth.tokens import Providers
from helpdesk.store.models import Item, MailboxState, Ticket
from tests.conftest import Clock, config_with_mailboxes
from tests.mailgen import make_mail
from tests.servers.graph import GraphServer

ADDRESS = "support@contoso.example"
TOKEN_VARIABLE = "HD_TEST_GRAPH_TOKEN"


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    with GraphServer() as server:
        server.add_mailbox(ADDRESS)
        token = "graph-token-1"
        server.tokens.add(token)
        os.environ[TOKEN_VARIABLE] = token
        yield server


def graph_entry(server: GraphServer, **overrides: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": "m365", "kind": "graph", "user": ADDRESS, "auth": "oauth2", "oauth": "graph-token",
        "graph_url": server.url, "timeout": 10,
    }
    entry.update(overrides)
    return entry


def graph_config(server: GraphServer, **overrides: Any) -> Config:
    return config_with_mailboxes(
        graph_entry(server, **overrides),
        oauth={"graph-token": {"kind": "static", "token": f"${{{TOKEN_VARIABLE}}}"}},
    )


def setup(engine: Engine, clock: Clock, server: GraphServer, **box: Any) -> tuple[Intake, GraphMailbox]:
    config = graph_config(server, **box)
    intake = Intake(engine, config, clock)
    return intake, GraphMailbox(config.mailboxes()[0][1], providers=Providers(config.oauth))


def mails(n: int, tag: str = "m") -> list[bytes]:
    return [make_mail(subject=f"{tag} enquiry {i}", message_id=f"{tag}-{i}@acme.example") for i in range(n)]


def deliver(server: GraphServer, messages: list[bytes]) -> list[str]:
    return [server.deliver(ADDRESS, m) for m in messages]


def ticket_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Ticket)).one())


def inbound_ids(engine: Engine) -> list[str | None]:
    with Session(engine) as session:
        stmt = select(Item.message_id).where(Item.direction == "inbound")
        return list(session.exec(stmt.order_by(col(Item.id))).all())


def kinds(server: GraphServer) -> list[str]:
    return [hit.kind for hit in server.hits]


def assert_exactly_once(engine: Engine, server: GraphServer, n: int, tag: str = "m") -> None:
    ids = inbound_ids(engine)
    assert sorted(ids) == sorted(f"{tag}-{i}@acme.example" for i in range(n))
    assert ticket_count(engine) == n
    assert server.violations == []


def test_imports_every_message_once_and_moves_it(engine: Engine, clock: Clock, graph: GraphServer) -> None:
    deliver(graph, mails(120))
    intake, box = setup(engine, clock, graph)
    report = box.poll(intake)
    assert (report.fetched, report.acknowledged) == (120, 120)
    assert_exactly_once(engine, graph, 120)
    assert graph.folder_messages(ADDRESS, "inbox") == []
    assert len(graph.folder_messages(ADDRESS, "Processed")) == 120  # created on first use
    delta = [h for h in graph.hits if h.kind == "delta"]
    assert len(delta) == 3  # pages of 50
    # Requests per imported message: one $value and one move each, plus the pages and the folder lookups.
    assert len(graph.hits) / 120 <= 2.1
    assert box.poll(intake).fetched == 0  # the moves come back as removals: nothing to import
    before = len(graph.hits)
    assert box.poll(intake).fetched == 0
    assert kinds(graph)[before:] == ["delta"]  # an empty round is one request
    with Session(engine) as session:
        state = session.get(MailboxState, ("m365", "INBOX"))
        assert state is not None and state.sync_token and "delta" in state.sync_token
    box.close()


def test_throttling_is_honoured_and_never_more_than_four_in_flight(
    sqlite_engine: Engine, clock: Clock, graph: GraphServer
) -> None:
    graph.latency = (0.01, 0.03)
    deliver(graph, mails(30))
    graph.throttle(2, retry_after=1, kind="value")
    graph.throttle(1, retry_after=1, kind="delta", status=503)
    intake, box = setup(sqlite_engine, clock, graph)
    assert box.poll(intake).fetched == 30
    assert_exactly_once(sqlite_engine, graph, 30)  # includes: no request before its Retry-After
    assert graph.max_seen_in_flight[ADDRESS] <= 4
    assert graph.max_seen_in_flight[ADDRESS] > 1  # downloads and moves do run in parallel
    assert [h.status for h in graph.hits].count(429) == 2
    box.close()


def test_server_errors_fail_the_poll_and_the_next_one_finishes(
    engine: Engine, clock: Clock, graph: GraphServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(graphapi, "FIRST_BACKOFF", 0.01)  # no Retry-After: the client's own backoff
    deliver(graph, mails(12))
    intake, box = setup(engine, clock, graph)
    graph.fail(1000, status=504, kind="move")  # every move outlasts its retries
    with pytest.raises(TemporaryError, match="504"):
        box.poll(intake)
    graph.clear_faults()
    assert ticket_count(engine) == 12  # stored before the moves failed
    assert len(graph.folder_messages(ADDRESS, "inbox")) == 12
    report = box.poll(intake)
    assert report.fetched == 0  # nothing imported twice ...
    assert graph.folder_messages(ADDRESS, "inbox") == []  # ... and every message moved now
    assert_exactly_once(engine, graph, 12)
    box.close()


def test_crash_between_storing_and_moving(engine: Engine, clock: Clock, graph: GraphServer) -> None:
    deliver(graph, mails(7))
    intake, box = setup(engine, clock, graph)
    graph.drop_connection(1000, kind="move")  # the daemon never learns whether a move happened
    with pytest.raises(TemporaryError):
        box.poll(intake)
    box.close()
    graph.clear_faults()
    assert ticket_count(engine) == 7 and len(graph.folder_messages(ADDRESS, "inbox")) == 7
    intake, restarted = setup(engine, clock, graph)  # a new process: nothing in memory
    assert restarted.poll(intake).fetched == 0
    assert graph.folder_messages(ADDRESS, "inbox") == []
    assert_exactly_once(engine, graph, 7)
    restarted.close()


def test_expired_token_is_renewed_once(sqlite_engine: Engine, clock: Clock, graph: GraphServer) -> None:
    intake, box = setup(sqlite_engine, clock, graph)
    assert box.poll(intake).fetched == 0
    graph.expire_tokens()
    graph.tokens.add("graph-token-2")
    os.environ[TOKEN_VARIABLE] = "graph-token-2"  # what a renewal from the provider now yields
    deliver(graph, mails(3))
    assert box.poll(intake).fetched == 3
    assert [h.status for h in graph.hits].count(401) == 1
    assert_exactly_once(sqlite_engine, graph, 3)
    graph.expire_tokens()  # a renewal that is refused too: a clear, permanent error
    with pytest.raises(PermanentError, match="InvalidAuthenticationToken"):
        box.poll(intake)
    box.close()


def test_the_same_message_on_two_delta_pages_is_imported_once(
    engine: Engine, clock: Clock, graph: GraphServer
) -> None:
    deliver(graph, mails(60))
    graph.duplicate_next_page()
    intake, box = setup(engine, clock, graph)
    assert box.poll(intake).fetched == 60
    assert_exactly_once(engine, graph, 60)
    box.close()


@pytest.mark.parametrize("action", ["keep", "move"])
def test_lost_sync_state_reads_the_folder_again_without_duplicates(
    engine: Engine, clock: Clock, graph: GraphServer, action: str
) -> None:
    deliver(graph, mails(8))
    intake, box = setup(engine, clock, graph, after_import=action)
    assert box.poll(intake).fetched == 8
    graph.lose_sync_state(ADDRESS)
    more = [make_mail(subject=f"later {i}", message_id=f"m-{8 + i}@acme.example") for i in range(4)]
    deliver(graph, more)
    assert box.poll(intake).fetched == 4
    assert [h.status for h in graph.hits].count(410) == 1
    assert_exactly_once(engine, graph, 12)
    remaining = len(graph.folder_messages(ADDRESS, "inbox"))
    assert remaining == (12 if action == "keep" else 0)
    box.close()


def test_mark_read(sqlite_engine: Engine, clock: Clock, graph: GraphServer) -> None:
    deliver(graph, mails(3))
    graph.deliver(ADDRESS, make_mail(message_id="m-3@acme.example"), is_read=True)  # read by a person first
    intake, box = setup(sqlite_engine, clock, graph, after_import="flag")
    assert box.poll(intake).fetched == 4
    assert all(m.is_read for m in graph.folder_messages(ADDRESS, "inbox"))
    assert kinds(graph).count("patch") == 3  # only those not read yet
    assert box.poll(intake).fetched == 0  # the isRead changes come back in the delta: nothing new
    assert kinds(graph).count("patch") == 3
    box.close()
    assert_exactly_once(sqlite_engine, graph, 4)


def test_delete(sqlite_engine: Engine, clock: Clock, graph: GraphServer) -> None:
    ids = deliver(graph, mails(2))
    intake, box = setup(sqlite_engine, clock, graph, after_import="delete")
    assert box.poll(intake).fetched == 2
    assert graph.folder_messages(ADDRESS, "inbox") == []
    assert {m.id for m in graph.folder_messages(ADDRESS, "deleteditems")} == set(ids)
    assert box.poll(intake).fetched == 0
    box.close()
    assert_exactly_once(sqlite_engine, graph, 2)


def test_mailbox_outside_the_apps_scope_is_a_permanent_error(
    sqlite_engine: Engine, clock: Clock, graph: GraphServer
) -> None:
    graph.forbid(ADDRESS)
    intake, box = setup(sqlite_engine, clock, graph)
    with pytest.raises(PermanentError, match="ErrorAccessDenied"):
        box.poll(intake)
    box.close()


def test_the_ten_minute_quota_paces_requests_instead_of_running_into_it(
    sqlite_engine: Engine, clock: Clock, graph: GraphServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = graphapi.Gate(quota=6, window=1.0)  # 10,000 in 10 minutes, scaled down
    monkeypatch.setattr(graphapi, "gate_for", lambda key: small)
    deliver(graph, mails(6))
    intake, box = setup(sqlite_engine, clock, graph)
    assert box.poll(intake).fetched == 6
    starts = sorted(h.started for h in graph.hits)
    assert len(starts) > 12  # a delta page, folder lookups, six downloads and six moves
    # Seen at the server, arrival times jitter by a few milliseconds around the client's own count.
    busiest = max(sum(1 for s in starts if first <= s < first + 0.9) for first in starts)
    assert busiest <= 6
    assert_exactly_once(sqlite_engine, graph, 6)
    box.close()


def test_the_daemon_reads_graph_mailboxes(sqlite_engine: Engine, clock: Clock, graph: GraphServer) -> None:
    from helpdesk.daemon import Daemon

    deliver(graph, mails(3))
    daemon = Daemon(graph_config(graph), sqlite_engine, clock)
    summary = daemon.run_once()
    assert summary.errors == {}
    assert [r.fetched for r in summary.reports] == [3]
    assert_exactly_once(sqlite_engine, graph, 3)


def test_tokens_from_the_identity_platform_expire_and_are_renewed(
    sqlite_engine: Engine, clock: Clock, identity: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """msal's client-credentials token, checked by Graph against the identity endpoint that issued it."""
    identity.add_client("helpdesk-app", secret="app-secret")
    monkeypatch.setenv("HD_TEST_GRAPH_APP_SECRET", "app-secret")
    with GraphServer(validate_token=lambda token: identity.validate(token) is not None) as server:
        server.add_mailbox(ADDRESS)
        provider = {
            "kind": "microsoft", "tenant": identity.tenant, "client_id": "helpdesk-app",
            "client_secret": "${HD_TEST_GRAPH_APP_SECRET}", "authority_host": identity.authority_host,
            "ca_file": str(identity.ca_file),
        }
        config = config_with_mailboxes(graph_entry(server), oauth={"graph-token": provider})
        intake = Intake(sqlite_engine, config, clock)
        box = GraphMailbox(config.mailboxes()[0][1], providers=Providers(config.oauth))
        deliver(server, mails(2))
        assert box.poll(intake).fetched == 2
        [first] = identity.token_requests()
        assert first.form.get("scope") == "https://graph.microsoft.com/.default"
        for token in {h.token for h in server.hits}:
            identity.expire(token)
        deliver(server, [make_mail(subject="later", message_id="m-2@acme.example")])
        assert box.poll(intake).fetched == 1
        assert len(identity.token_requests()) == 2  # renewed once, on the first 401
        assert [h.status for h in server.hits].count(401) == 1
        assert_exactly_once(sqlite_engine, server, 3)
        box.close()
