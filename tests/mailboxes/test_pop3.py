"""POP3 intake against a real Dovecot: UIDL bookkeeping, DELE only after commit."""

from __future__ import annotations

import poplib
from typing import Any

import pytest
from sqlalchemy import Engine

from helpdesk.intake.runner import Intake
from helpdesk.mailboxes.base import PermanentError, TemporaryError
from helpdesk.mailboxes.pop3 import Pop3Mailbox
from tests.conftest import Clock, config_with_mailboxes, mailbox_entry
from tests.mailboxes.test_imap import mails, ticket_count
from tests.mailgen import make_mail

pytestmark = pytest.mark.dovecot


def setup(engine: Engine, clock: Clock, dovecot: Any, user: str, **box: Any) -> tuple[Intake, Pop3Mailbox]:
    config = config_with_mailboxes(mailbox_entry(dovecot, user, kind="pop3", **box))
    return Intake(engine, config, clock), Pop3Mailbox(config.mailboxes()[0][1])


def test_delete_after_commit(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(4))
    intake, box = setup(engine, clock, dovecot, mail_user)
    report = box.poll(intake)
    assert (report.fetched, report.acknowledged) == (4, 4)
    assert ticket_count(engine) == 4 and dovecot.message_count(mail_user) == 0
    assert box.poll(intake).fetched == 0


def test_keep_on_server_uses_uidl(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(3, "a"))
    intake, box = setup(engine, clock, dovecot, mail_user, after_import="keep")
    assert box.poll(intake).fetched == 3
    assert box.poll(intake).fetched == 0
    dovecot.append(mail_user, make_mail(message_id="later@acme.example"))
    assert box.poll(intake).fetched == 1
    assert ticket_count(engine) == 4 and dovecot.message_count(mail_user) == 4


def test_connection_lost_before_quit_keeps_mail_and_imports_nothing_twice(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dovecot.append_many(mail_user, mails(3))
    intake, box = setup(engine, clock, dovecot, mail_user)

    def drop(self: poplib.POP3) -> bytes:
        raise ConnectionResetError("connection lost before QUIT")

    with monkeypatch.context() as patch:
        patch.setattr(poplib.POP3, "quit", drop)
        with pytest.raises(TemporaryError):
            box.poll(intake)
    assert ticket_count(engine) == 3
    assert dovecot.message_count(mail_user) == 3  # DELE is applied only at QUIT
    report = box.poll(intake)
    assert (report.fetched, report.acknowledged) == (0, 3)
    assert ticket_count(engine) == 3 and dovecot.message_count(mail_user) == 0


def test_tls_variants(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(2))
    ca = str(dovecot.cert_path)
    intake, box = setup(engine, clock, dovecot, mail_user, tls="implicit", port=dovecot.pop3s_port, ca_file=ca,
                        after_import="keep")
    assert box.poll(intake).fetched == 2
    dovecot.append(mail_user, make_mail(message_id="stls@acme.example"))
    _intake, stls = setup(engine, clock, dovecot, mail_user, tls="starttls", ca_file=ca, after_import="keep")
    assert stls.poll(intake).fetched == 1


def test_errors(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    intake, _box = setup(engine, clock, dovecot, mail_user)
    config = config_with_mailboxes(mailbox_entry(dovecot, mail_user, kind="pop3"))
    with pytest.raises(PermanentError, match="login as"):
        Pop3Mailbox(config.mailboxes()[0][1], secret=lambda _ref: "wrong").poll(intake)
    config = config_with_mailboxes(mailbox_entry(dovecot, mail_user, kind="pop3", port=1, timeout=2))
    with pytest.raises(TemporaryError):
        Pop3Mailbox(config.mailboxes()[0][1]).poll(intake)
