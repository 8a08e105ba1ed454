"""IMAP intake against a real Dovecot: exactly once, whatever the server or the daemon does."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from helpdesk.config import Config
from helpdesk.intake.runner import Intake
from helpdesk.mailboxes.base import PermanentError, TemporaryError
from helpdesk.mailboxes.imap import ImapMailbox
from helpdesk.store.models import Item, Outcome, RawMessage, Ticket
from tests.conftest import Clock, config_with_mailboxes, mailbox_entry
from tests.mailgen import make_mail

pytestmark = pytest.mark.dovecot


def mails(n: int, tag: str = "m") -> list[bytes]:
    return [make_mail(subject=f"{tag} enquiry {i}", message_id=f"{tag}-{i}@acme.example") for i in range(n)]


def setup(engine: Engine, clock: Clock, dovecot: Any, user: str, **box: Any) -> tuple[Config, Intake, ImapMailbox]:
    config = config_with_mailboxes(mailbox_entry(dovecot, user, **box))
    intake = Intake(engine, config, clock)
    return config, intake, ImapMailbox(config.mailboxes()[0][1])


def ticket_count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Ticket)).one())


def inbound_ids(engine: Engine) -> list[str | None]:
    with Session(engine) as session:
        stmt = select(Item.message_id).where(Item.direction == "inbound")
        return list(session.exec(stmt.order_by(col(Item.id))).all())


def outcomes(engine: Engine) -> list[str | None]:
    with Session(engine) as session:
        return list(session.exec(select(RawMessage.outcome).order_by(col(RawMessage.id))).all())


def test_move_after_import(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(5))
    _config, intake, box = setup(engine, clock, dovecot, mail_user)
    report = box.poll(intake)
    assert (report.fetched, report.acknowledged) == (5, 5)
    assert ticket_count(engine) == 5
    assert dovecot.message_count(mail_user) == 0
    assert dovecot.message_count(mail_user, "Processed") == 5
    assert box.poll(intake).fetched == 0
    box.close()


def test_delete_after_import(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(3))
    _config, intake, box = setup(engine, clock, dovecot, mail_user, after_import="delete")
    box.poll(intake)
    box.close()
    assert ticket_count(engine) == 3 and dovecot.message_count(mail_user) == 0


@pytest.mark.parametrize("action", ["flag", "keep"])
def test_keep_on_server_never_reimports_never_misses(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str, action: str
) -> None:
    dovecot.append_many(mail_user, mails(3, "a"))
    dovecot.append(mail_user, make_mail(message_id="read-by-human@acme.example"), flags=[r"\Seen"])
    _config, intake, box = setup(engine, clock, dovecot, mail_user, after_import=action)
    assert box.poll(intake).fetched == 4  # a message someone already read is still imported
    assert box.poll(intake).fetched == 0
    dovecot.append_many(mail_user, mails(2, "b"))
    assert box.poll(intake).fetched == 2
    box.close()
    assert ticket_count(engine) == 6
    assert dovecot.message_count(mail_user) == 6
    if action == "flag":
        assert all(r"\Seen" in flags for _uid, flags in dovecot.list_folder(mail_user))


def test_crash_between_commit_and_move(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.append_many(mail_user, mails(4))
    _config, intake, box = setup(engine, clock, dovecot, mail_user)

    def crash(*_args: object) -> None:
        raise ConnectionResetError("daemon died before the MOVE")

    with monkeypatch.context() as patch:
        patch.setattr(box, "_acknowledge", crash)
        with pytest.raises(TemporaryError):
            box.poll(intake)
    assert ticket_count(engine) == 4 and dovecot.message_count(mail_user) == 4
    report = box.poll(intake)  # a fresh connection finishes the acknowledgement only
    box.close()
    assert (report.fetched, report.acknowledged) == (0, 4)
    assert ticket_count(engine) == 4 and dovecot.message_count(mail_user, "Processed") == 4


def test_uidvalidity_change_reads_folder_again_without_reimport(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str
) -> None:
    dovecot.append_many(mail_user, mails(3))
    _config, intake, box = setup(engine, clock, dovecot, mail_user, after_import="keep")
    box.poll(intake)
    box.close()
    before = dovecot.uidvalidity(mail_user)
    after = dovecot.reset_uidvalidity(mail_user)
    assert after != before
    dovecot.append(mail_user, make_mail(message_id="new-after-reset@acme.example"))
    report = box.poll(intake)
    box.close()
    assert report.fetched == 4
    assert ticket_count(engine) == 4
    assert sorted(o or "" for o in outcomes(engine)) == ["duplicate"] * 3 + ["ticket"] * 4
    assert inbound_ids(engine).count("new-after-reset@acme.example") == 1


def test_server_restart_in_the_middle_of_a_poll(
    engine: Engine, clock: Clock, mail_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.servers.dovecot import Dovecot

    with Dovecot() as server:
        server.add_user(mail_user, "secret")
        server.append_many(mail_user, mails(20))
        _config, intake, box = setup(engine, clock, server, mail_user, batch_size=5)
        real_ingest = intake.ingest
        calls = {"n": 0}

        def ingest_then_restart(source: str, messages: Any) -> Any:
            results = real_ingest(source, messages)
            calls["n"] += 1
            if calls["n"] == 2:
                server.restart()  # the connection drops between two batches
            return results

        monkeypatch.setattr(intake, "ingest", ingest_then_restart)
        with pytest.raises(TemporaryError):
            box.poll(intake)
        done = ticket_count(engine)
        assert 5 <= done < 20
        while box.poll(intake).fetched:
            pass
        box.close()
        assert ticket_count(engine) == 20
        assert sorted(i or "" for i in inbound_ids(engine)) == sorted(f"m-{i}@acme.example" for i in range(20))
        assert server.message_count(mail_user) == 0


def test_unreachable_server_is_a_temporary_error(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    _config, intake, box = setup(engine, clock, dovecot, mail_user, port=1, timeout=2)
    with pytest.raises(TemporaryError):
        box.poll(intake)


def test_wrong_password_is_a_permanent_error(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    config, intake, _box = setup(engine, clock, dovecot, mail_user)
    box = ImapMailbox(config.mailboxes()[0][1], secret=lambda _ref: "wrong")
    with pytest.raises(PermanentError, match="login as"):
        box.poll(intake)


def test_implicit_tls_and_starttls(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(2))
    assert dovecot.cert_path is not None
    _c, intake, box = setup(
        engine, clock, dovecot, mail_user, tls="implicit", port=dovecot.imaps_port, ca_file=str(dovecot.cert_path),
        verify_tls=True, after_import="keep",
    )
    assert box.poll(intake).fetched == 2
    box.close()
    dovecot.append(mail_user, make_mail(message_id="via-starttls@acme.example"))
    config = config_with_mailboxes(
        mailbox_entry(dovecot, mail_user, tls="starttls", ca_file=str(dovecot.cert_path), after_import="keep")
    )
    box2 = ImapMailbox(config.mailboxes()[0][1])
    assert box2.poll(intake).fetched == 1
    box2.close()


def test_quarantined_message_is_acknowledged_and_kept(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str
) -> None:
    dovecot.append(mail_user, b"To: sales@example.test\r\nSubject: no sender\r\n\r\nbody\r\n")
    dovecot.append(mail_user, make_mail())
    _config, intake, box = setup(engine, clock, dovecot, mail_user)
    report = box.poll(intake)
    box.close()
    assert sorted(r.outcome or "" for r in report.results) == [Outcome.QUARANTINED, Outcome.TICKET]
    assert dovecot.message_count(mail_user) == 0  # the quarantined one is safe in the database


def test_large_mails_are_fetched_in_small_batches(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import helpdesk.mailboxes.imap as imap_module

    monkeypatch.setattr(imap_module, "BATCH_BYTES", 200_000)  # about two of these mails
    big = b"x" * 60_000
    dovecot.append_many(
        mail_user,
        [make_mail(message_id=f"big-{i}@acme.example", attachments=[("a.bin", "application/octet-stream", big)])
         for i in range(5)],
    )
    _config, intake, box = setup(engine, clock, dovecot, mail_user)
    sizes: list[int] = []
    real_ingest = intake.ingest
    monkeypatch.setattr(intake, "ingest", lambda source, msgs: sizes.append(len(msgs)) or real_ingest(source, msgs))
    assert box.poll(intake).fetched == 5
    box.close()
    assert sizes == [2, 2, 1] and ticket_count(engine) == 5
