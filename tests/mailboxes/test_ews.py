"""Exchange Server (EWS) intake and sending against the local EWS endpoint: every message ends in
exactly one ticket whatever the server does, and sent mail keeps our headers."""

from __future__ import annotations

import email
import email.policy
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from helpdesk.config import Config
from helpdesk.intake.runner import Intake
from helpdesk.mail.compose import Outgoing, compose
from helpdesk.mailboxes.base import PermanentError, TemporaryError
from helpdesk.mailboxes.ews import EwsMailbox, ServerBusy, retry_after_seconds
from helpdesk.mailboxes.factory import make_mailbox
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound.ews import EwsTransport
from helpdesk.outbound.routing import Router, mailbox_transport
from helpdesk.outbound.transport import DeliveryStatus, Envelope
from helpdesk.store.models import Item, MailboxState, RawMessage, Ticket
from tests.conftest import Clock, base_config, config_with_mailboxes
from tests.mailgen import make_mail
from tests.servers.certs import openssl_missing
from tests.servers.ews import Busy, Drop, ErrorResponse, EwsServer, ExchangeMailbox, Unavailable

ADDRESS = "support@example.test"  # the support channel's address is the Exchange mailbox
PASSWORD_VARIABLE = "HD_TEST_EWS_PASSWORD"
TOKEN_VARIABLE = "HD_TEST_EWS_TOKEN"


@pytest.fixture
def server() -> Iterator[EwsServer]:
    with EwsServer() as ews:
        yield ews


@pytest.fixture
def exchange(server: EwsServer, monkeypatch: pytest.MonkeyPatch) -> ExchangeMailbox:
    monkeypatch.setenv(PASSWORD_VARIABLE, "s3cret")
    return server.add_mailbox(ADDRESS, "s3cret")


def entry(server: EwsServer, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "exchange", "kind": "ews", "service_endpoint": server.url, "user": ADDRESS,
        "password": f"${{{PASSWORD_VARIABLE}}}", "ews_auth": "basic", "timeout": 5,
    }
    data.update(overrides)
    return data


def setup(engine: Engine, clock: Clock, server: EwsServer, **box: Any) -> tuple[Config, Intake, EwsMailbox]:
    config = config_with_mailboxes(entry(server, **box))
    return config, Intake(engine, config, clock), EwsMailbox(config.mailboxes()[0][1])


def mails(n: int, tag: str = "m") -> list[bytes]:
    return [make_mail(subject=f"{tag} enquiry {i}", message_id=f"{tag}-{i}@acme.example") for i in range(n)]


def deliver(exchange: ExchangeMailbox, messages: list[bytes], **kwargs: Any) -> None:
    for message in messages:
        exchange.deliver(message, **kwargs)


def ticket_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Ticket)).one())


def inbound_ids(engine: Engine) -> list[str]:
    with Session(engine) as session:
        stmt = select(Item.message_id).where(Item.direction == "inbound").order_by(col(Item.id))
        return sorted(i or "" for i in session.exec(stmt).all())


def raw_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(RawMessage)).one())


def expected(n: int, tag: str = "m") -> list[str]:
    return sorted(f"{tag}-{i}@acme.example" for i in range(n))


# --- intake --------------------------------------------------------------------------------------


def test_batch_is_imported_once_and_moved(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    deliver(exchange, mails(5))
    _config, intake, box = setup(engine, clock, server, batch_size=2)
    report = box.poll(intake)
    assert (report.fetched, report.acknowledged) == (5, 5)
    assert ticket_count(engine) == 5 and inbound_ids(engine) == expected(5)
    assert exchange.count("inbox") == 0 and exchange.count("Processed") == 5
    # Pages of two changes; the MIME of each page's items comes in one GetItem request.
    assert len(server.operations("GetItem")) == 3
    assert [r.body.count(b"<t:ItemId ") for r in server.operations("GetItem")] == [2, 2, 1]
    with Session(engine) as session:
        state = session.get(MailboxState, ("exchange", "INBOX"))
        assert state is not None and state.sync_token
    assert box.poll(intake).fetched == 0
    box.close()
    assert ticket_count(engine) == 5


def test_large_mails_are_fetched_in_small_batches(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import helpdesk.mailboxes.ews as ews_module

    monkeypatch.setattr(ews_module, "BATCH_BYTES", 200_000)  # about two of these mails
    big = b"x" * 60_000
    deliver(exchange, [
        make_mail(message_id=f"big-{i}@acme.example", attachments=[("a.bin", "application/octet-stream", big)])
        for i in range(5)
    ])
    _config, intake, box = setup(engine, clock, server)
    assert box.poll(intake).fetched == 5
    box.close()
    assert [r.body.count(b"<t:ItemId ") for r in server.operations("GetItem")] == [2, 2, 1]
    assert ticket_count(engine) == 5


def test_ntlm_and_digest_logins_are_built_without_probing(server: EwsServer, exchange: ExchangeMailbox) -> None:
    for method, expected_type in (("ntlm", "NTLM"), ("digest", "digest")):
        config = config_with_mailboxes(entry(server, ews_auth=method))
        account = EwsMailbox(config.mailboxes()[0][1]).client.account()
        assert account.protocol.auth_type == expected_type
        assert account.version.api_version == "Exchange2016"
    assert server.operations() == []  # neither autodiscover nor version guessing


def test_item_reported_twice_is_imported_once(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    deliver(exchange, mails(3))
    server.report_twice()  # twice in this sync, and once more (already moved away) in the next
    _config, intake, box = setup(engine, clock, server)
    assert box.poll(intake).fetched == 3
    report = box.poll(intake)  # the stale report: known, so only acknowledged (it is gone already)
    box.close()
    assert (report.fetched, report.acknowledged) == (0, 1)
    assert ticket_count(engine) == 3 and raw_count(engine) == 3 and inbound_ids(engine) == expected(3)
    assert exchange.count("Processed") == 3


def test_server_busy_back_off_is_honoured_and_nothing_is_lost(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    deliver(exchange, mails(3))
    _config, intake, box = setup(engine, clock, server)
    server.fail_next("SyncFolderItems", Busy(back_off_ms=300))
    with pytest.raises(ServerBusy) as busy:
        box.poll(intake)
    assert busy.value.retry_after == pytest.approx(0.3)
    with pytest.raises(TemporaryError, match="asked us to wait"):
        box.poll(intake)  # within the back-off: no request at all
    assert len(server.operations("SyncFolderItems")) == 1
    time.sleep(0.35)
    assert box.poll(intake).fetched == 3
    box.close()
    first, second = server.operations("SyncFolderItems")[:2]
    assert second.at - first.at >= 0.3
    assert ticket_count(engine) == 3 and exchange.count("Processed") == 3


@pytest.mark.parametrize("operation", ["SyncFolderItems", "GetItem", "FindFolder", "MoveItem"])
@pytest.mark.parametrize("fault", [Unavailable(), Busy(back_off_ms=1)], ids=["503", "busy"])
def test_failure_in_any_step_is_temporary_and_loses_nothing(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox, operation: str, fault: Any
) -> None:
    deliver(exchange, mails(4))
    _config, intake, box = setup(engine, clock, server)
    server.fail_next(operation, fault)
    with pytest.raises(TemporaryError):
        box.poll(intake)
    time.sleep(0.01)
    box.poll(intake)
    box.close()
    assert ticket_count(engine) == 4 and inbound_ids(engine) == expected(4)
    assert exchange.count("inbox") == 0 and exchange.count("Processed") == 4


def test_retry_after_of_a_503_is_honoured(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    deliver(exchange, mails(1))
    _config, intake, box = setup(engine, clock, server)
    server.fail_next("SyncFolderItems", Unavailable(retry_after=1))
    with pytest.raises(ServerBusy) as busy:
        box.poll(intake)
    assert busy.value.retry_after == 1
    with pytest.raises(ServerBusy):
        box.poll(intake)
    assert len(server.operations()) == 1
    box.close()


def test_crash_between_storing_and_moving(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    deliver(exchange, mails(4))
    _config, intake, box = setup(engine, clock, server)
    server.fail_next("MoveItem", Drop())  # the connection dies before the items are moved
    with pytest.raises(TemporaryError, match="cannot reach"):
        box.poll(intake)
    assert ticket_count(engine) == 4 and exchange.count("inbox") == 4
    fetched_before = len(server.operations("GetItem"))
    report = box.poll(intake)  # the same changes again: known, so only moved
    box.close()
    assert (report.fetched, report.acknowledged) == (0, 4)
    assert len(server.operations("GetItem")) == fetched_before
    assert ticket_count(engine) == 4 and raw_count(engine) == 4
    assert exchange.count("inbox") == 0 and exchange.count("Processed") == 4


@pytest.mark.parametrize("action", ["keep", "flag", "move"])
def test_invalid_sync_state_reads_the_folder_again_without_reimport(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox, action: str
) -> None:
    deliver(exchange, mails(3))
    _config, intake, box = setup(engine, clock, server, after_import=action)
    assert box.poll(intake).fetched == 3
    server.invalidate_sync_states()
    exchange.deliver(make_mail(message_id="after-reset@acme.example"))
    report = box.poll(intake)
    box.close()
    assert report.fetched == 1
    assert b"<m:SyncState>" not in server.operations("SyncFolderItems")[-1].body  # started from scratch
    assert ticket_count(engine) == 4 and raw_count(engine) == 4
    assert inbound_ids(engine) == sorted([*expected(3), "after-reset@acme.example"])


@pytest.mark.parametrize("action", ["keep", "flag"])
def test_keep_on_server_never_reimports_never_misses(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox, action: str
) -> None:
    deliver(exchange, mails(3, "a"))
    exchange.deliver(make_mail(message_id="read-by-human@acme.example"), is_read=True)
    _config, intake, box = setup(engine, clock, server, after_import=action)
    assert box.poll(intake).fetched == 4  # a message someone already read is still imported
    assert box.poll(intake).fetched == 0
    deliver(exchange, mails(2, "b"))
    assert box.poll(intake).fetched == 2
    box.close()
    assert ticket_count(engine) == 6 and exchange.count("inbox") == 6
    flagged = [item.is_read for item in exchange.present("inbox")]
    assert flagged == ([True] * 6 if action == "flag" else [False, False, False, True, False, False])
    if action == "flag":  # only unread items are marked, each once
        marked = sum(r.body.count(b"<t:ItemChange>") for r in server.operations("UpdateItem"))
        assert marked == 5
    else:
        assert server.operations("UpdateItem") == []


def test_flag_then_someone_marks_unread_is_no_new_import(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    deliver(exchange, mails(2))
    _config, intake, box = setup(engine, clock, server, after_import="flag")
    assert box.poll(intake).fetched == 2
    item = exchange.present("inbox")[0]
    item.is_read, item.read_changed = False, exchange.tick()  # a person marks it unread again
    assert box.poll(intake).fetched == 0
    box.close()
    assert ticket_count(engine) == 2


def test_delete_after_import(engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox) -> None:
    deliver(exchange, mails(3))
    _config, intake, box = setup(engine, clock, server, after_import="delete")
    assert box.poll(intake).acknowledged == 3
    box.close()
    assert ticket_count(engine) == 3 and exchange.count("inbox") == 0
    assert b'DeleteType="SoftDelete"' in server.operations("DeleteItem")[0].body


def test_other_folder_and_nested_move_to(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    exchange.add_folder("Support", parent="inbox")  # a transport rule files support mail there
    deliver(exchange, mails(2), folder="Inbox/Support")
    exchange.deliver(make_mail(message_id="elsewhere@acme.example"))  # the inbox itself is not read
    _config, intake, box = setup(engine, clock, server, folder="INBOX/Support", move_to="Helpdesk/Done")
    assert box.poll(intake).fetched == 2
    box.close()
    assert exchange.count("Helpdesk/Done") == 2 and exchange.count("Inbox/Support") == 0
    assert ticket_count(engine) == 2 and exchange.count("inbox") == 1


def test_missing_folder_is_a_permanent_error(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    _config, intake, box = setup(engine, clock, server, folder="Nowhere")
    with pytest.raises(PermanentError, match="ErrorFolderNotFound"):
        box.poll(intake)


def test_wrong_password_is_a_permanent_error(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    config = config_with_mailboxes(entry(server))
    intake = Intake(engine, config, clock)
    box = EwsMailbox(config.mailboxes()[0][1], secret=lambda _ref: "wrong")
    with pytest.raises(PermanentError, match=r"refused the login as support@example.test \(HTTP 401\)"):
        box.poll(intake)
    assert ticket_count(engine) == 0


def test_unreachable_server_is_a_temporary_error(engine: Engine, clock: Clock, exchange: ExchangeMailbox) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = config_with_mailboxes({**entry_for_url(f"http://127.0.0.1:{port}/EWS/Exchange.asmx")})
    box = EwsMailbox(config.mailboxes()[0][1])
    with pytest.raises(TemporaryError, match="cannot reach"):
        box.poll(Intake(engine, config, clock))


def entry_for_url(url: str) -> dict[str, Any]:
    return {"name": "exchange", "kind": "ews", "service_endpoint": url, "user": ADDRESS,
            "password": f"${{{PASSWORD_VARIABLE}}}", "ews_auth": "basic", "timeout": 2}


def test_quarantined_message_is_acknowledged(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    exchange.deliver(b"To: sales@example.test\r\nSubject: no sender\r\n\r\nbody\r\n")
    exchange.deliver(make_mail())
    _config, intake, box = setup(engine, clock, server)
    report = box.poll(intake)
    box.close()
    assert sorted(r.outcome or "" for r in report.results) == ["quarantined", "ticket"]
    assert exchange.count("inbox") == 0


def test_factory_builds_the_ews_adapter(server: EwsServer, exchange: ExchangeMailbox) -> None:
    config = config_with_mailboxes(entry(server))
    assert isinstance(make_mailbox(config.mailboxes()[0][1], Providers({})), EwsMailbox)


# --- TLS and OAuth -------------------------------------------------------------------------------


@pytest.fixture
def tls_server() -> Iterator[EwsServer]:
    from tests.conftest import require

    require(openssl_missing())
    with EwsServer(tls=True) as ews:
        yield ews


def oauth_setup(
    engine: Engine, clock: Clock, server: EwsServer, **box: Any
) -> tuple[Config, Intake, EwsMailbox, Providers]:
    data = base_config(oauth={"exchange": {"kind": "static", "token": f"${{{TOKEN_VARIABLE}}}"}})
    data["channels"][0]["mailboxes"] = [{
        "name": "exchange", "kind": "ews", "service_endpoint": server.url, "user": ADDRESS, "auth": "oauth2",
        "oauth": "exchange", "ca_file": str(server.cert_path), "timeout": 5, **box,
    }]
    from helpdesk.config import validate

    config = validate(data)
    providers = Providers(config.oauth)
    return config, Intake(engine, config, clock), EwsMailbox(config.mailboxes()[0][1], providers=providers), providers


def test_oauth_token_refused_is_renewed_once(
    sqlite_engine: Engine, clock: Clock, tls_server: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = tls_server.add_mailbox(ADDRESS, "unused")
    tls_server.allow_token("fresh-token", ADDRESS)
    deliver(exchange, mails(2))
    monkeypatch.setenv(TOKEN_VARIABLE, "stale-token")
    _config, intake, box, providers = oauth_setup(sqlite_engine, clock, tls_server)
    provider = providers.get("exchange")
    assert provider.token("https://mail.google.com/") == "stale-token"  # cached, then revoked
    monkeypatch.setenv(TOKEN_VARIABLE, "fresh-token")
    assert box.poll(intake).fetched == 2
    box.close()
    assert provider.fetches == 2 and ticket_count(sqlite_engine) == 2
    assert exchange.count("Processed") == 2


def test_oauth_token_refused_twice_is_a_permanent_error(
    sqlite_engine: Engine, clock: Clock, tls_server: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_server.add_mailbox(ADDRESS, "unused")
    monkeypatch.setenv(TOKEN_VARIABLE, "never-valid")
    _config, intake, box, providers = oauth_setup(sqlite_engine, clock, tls_server)
    with pytest.raises(PermanentError, match="also after renewing it once"):
        box.poll(intake)
    assert providers.get("exchange").fetches == 2
    assert [r.user for r in tls_server.operations()] == [None, None]  # one request per token


def test_untrusted_certificate_is_a_permanent_error(
    sqlite_engine: Engine, clock: Clock, tls_server: EwsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls_server.add_mailbox(ADDRESS, "s3cret")
    monkeypatch.setenv(PASSWORD_VARIABLE, "s3cret")
    config = config_with_mailboxes(entry(tls_server))  # no ca_file: the self-signed certificate fails
    box = EwsMailbox(config.mailboxes()[0][1])
    with pytest.raises(PermanentError, match=r"TLS with EWS .* failed.*set ca_file"):
        box.poll(Intake(sqlite_engine, config, clock))
    trusted = config_with_mailboxes(entry(tls_server, ca_file=str(tls_server.cert_path)))
    assert EwsMailbox(trusted.mailboxes()[0][1]).poll(Intake(sqlite_engine, trusted, clock)).fetched == 0


# --- sending -------------------------------------------------------------------------------------


def send_config(server: EwsServer) -> Config:
    from helpdesk.config import validate

    data = base_config()
    data["channels"][0]["mailboxes"] = [entry(server)]
    data["channels"][0]["send_through"] = "exchange"
    return validate(data)


def transport(server: EwsServer) -> EwsTransport:
    box = send_config(server).mailbox("exchange")
    assert box is not None
    return EwsTransport(box, Providers({}))


def outgoing(to: str = "alice@acme.example", message_id: str = "20260302T090000.abc@example.test") -> bytes:
    return compose(Outgoing(
        from_address=ADDRESS, from_name="Support", to=(("Alice Customer", to),), subject="[SUP-1] Printer",
        text="We are on it.\n", date=datetime(2026, 3, 2, 9, 0, tzinfo=UTC), message_id=message_id,
        reply_to="support+r.token@example.test", in_reply_to="m-0@acme.example",
        references=("m-0@acme.example", "earlier@example.test"), auto_submitted="auto-replied",
        headers=(("X-Helpdesk-Ticket", "SUP-1"),),
    ))


def parsed(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_send_keeps_our_headers(server: EwsServer, exchange: ExchangeMailbox) -> None:
    data = outgoing()
    [delivery] = transport(server).deliver([Envelope(1, ADDRESS, ("alice@acme.example",), data)])
    assert delivery.status is DeliveryStatus.SENT and delivery.message_id is None
    [sent] = exchange.sent
    assert sent.mime == data  # byte for byte
    headers = parsed(sent.mime)
    assert headers["Message-ID"] == "<20260302T090000.abc@example.test>"
    assert headers["In-Reply-To"] == "<m-0@acme.example>"
    assert headers["References"] == "<m-0@acme.example> <earlier@example.test>"
    assert headers["Auto-Submitted"] == "auto-replied"
    assert headers["Reply-To"] == "support+r.token@example.test"
    assert sent.recipients == ["alice@acme.example"] and sent.disposition == "SendAndSaveCopy"
    assert exchange.count("sentitems") == 1
    assert b"<t:BccRecipients>" not in server.operations("CreateItem")[0].body


def test_envelope_decides_the_recipients(server: EwsServer, exchange: ExchangeMailbox) -> None:
    data = outgoing()
    results = transport(server).deliver([
        Envelope(1, ADDRESS, ("alice@acme.example", "watcher@example.test"), data),  # one not in the headers
        Envelope(2, ADDRESS, ("bob@acme.example",), data),  # alice is in To but not a recipient here
    ])
    assert [r.status for r in results] == [DeliveryStatus.SENT, DeliveryStatus.PERMANENT]
    assert "alice@acme.example is not a recipient" in results[1].detail
    [sent] = exchange.sent
    assert sent.to == ["alice@acme.example"] and sent.bcc == ["watcher@example.test"]
    assert b"watcher" not in sent.mime  # the Bcc recipient appears in no header


def test_send_busy_holds_the_batch_back(server: EwsServer, exchange: ExchangeMailbox) -> None:
    server.fail_next("CreateItem", Busy(back_off_ms=30_000))
    envelopes = [Envelope(i, ADDRESS, ("alice@acme.example",), outgoing(message_id=f"{i}.x@example.test"))
                 for i in range(3)]
    results = transport(server).deliver(envelopes)
    assert [r.status for r in results] == [DeliveryStatus.HELD] * 3
    assert all(r.retry_in == pytest.approx(30.0) for r in results)
    assert len(server.operations("CreateItem")) == 1 and exchange.sent == []


def test_send_refused_message_is_permanent_the_rest_goes(server: EwsServer, exchange: ExchangeMailbox) -> None:
    server.fail_next("CreateItem", ErrorResponse("ErrorMessageSizeExceeded", "The message exceeds the maximum size."))
    envelopes = [Envelope(i, ADDRESS, ("alice@acme.example",), outgoing(message_id=f"{i}.x@example.test"))
                 for i in range(2)]
    results = transport(server).deliver(envelopes)
    assert [r.status for r in results] == [DeliveryStatus.PERMANENT, DeliveryStatus.SENT]
    assert "ErrorMessageSizeExceeded" in results[0].detail and len(exchange.sent) == 1


@pytest.mark.parametrize("fault", [Drop(), Unavailable()], ids=["dropped", "503"])
def test_send_outage_defers_the_batch(server: EwsServer, exchange: ExchangeMailbox, fault: Any) -> None:
    server.fail_next("CreateItem", fault)
    envelopes = [Envelope(i, ADDRESS, ("alice@acme.example",), outgoing(message_id=f"{i}.x@example.test"))
                 for i in range(2)]
    sender = transport(server)
    assert [r.status for r in sender.deliver(envelopes)] == [DeliveryStatus.TEMPORARY] * 2
    assert [r.status for r in sender.deliver(envelopes)] == [DeliveryStatus.SENT] * 2


def test_send_with_a_wrong_password_keeps_the_mail(server: EwsServer, exchange: ExchangeMailbox) -> None:
    box = send_config(server).mailbox("exchange")
    assert box is not None
    sender = EwsTransport(box, Providers({}), secret=lambda _ref: "wrong")
    [result] = sender.deliver([Envelope(1, ADDRESS, ("alice@acme.example",), outgoing())])
    assert result.status is DeliveryStatus.TEMPORARY and "HTTP 401" in result.detail


def test_channel_sends_through_its_exchange_mailbox(server: EwsServer, exchange: ExchangeMailbox) -> None:
    config = send_config(server)
    box = config.mailbox("exchange")
    assert box is not None
    assert isinstance(mailbox_transport(box, Providers({})), EwsTransport)
    router = Router(config, Providers({}))
    [result] = router.deliver([Envelope(7, ADDRESS, ("alice@acme.example",), outgoing())])
    assert result.status is DeliveryStatus.SENT and len(exchange.sent) == 1


def test_retry_after_values() -> None:
    assert retry_after_seconds("120") == 120
    assert retry_after_seconds("0") is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)


def test_no_password_in_the_environment_is_permanent(
    engine: Engine, clock: Clock, server: EwsServer, exchange: ExchangeMailbox
) -> None:
    os.environ.pop(PASSWORD_VARIABLE, None)
    _config, intake, box = setup(engine, clock, server)
    with pytest.raises(PermanentError, match=PASSWORD_VARIABLE):
        box.poll(intake)
