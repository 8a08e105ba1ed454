"""The daemon: single pass, IDLE, and mailboxes that fail without stopping the others."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from helpdesk.daemon import Daemon
from helpdesk.store.models import MailboxState
from tests.conftest import Clock, config_with_mailboxes, mailbox_entry
from tests.mailboxes.test_imap import mails, ticket_count
from tests.mailgen import make_mail

pytestmark = pytest.mark.dovecot


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_run_once_goes_on_past_a_dead_mailbox(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    dovecot.append_many(mail_user, mails(3))
    dead = mailbox_entry(dovecot, mail_user, name="dead", port=1, timeout=2)
    config = config_with_mailboxes(dead, mailbox_entry(dovecot, mail_user))
    daemon = Daemon(config, engine, clock)
    summary = daemon.run_once()
    assert set(summary.errors) == {"dead"}
    assert sum(r.fetched for r in summary.reports) == 3
    assert ticket_count(engine) == 3
    with Session(engine) as session:
        state = session.get(MailboxState, ("dead", "INBOX"))
    assert state is not None and state.last_error and "Connection refused" in state.last_error


def test_idle_picks_up_new_mail_without_polling(engine: Engine, clock: Clock, dovecot: Any, mail_user: str) -> None:
    config = config_with_mailboxes(mailbox_entry(dovecot, mail_user, poll_interval=3600, idle=True))
    daemon = Daemon(config, engine, clock)
    daemon.start()
    try:
        time.sleep(1.0)  # first poll done, now idling
        dovecot.append(mail_user, make_mail(message_id="pushed@acme.example"))
        assert wait_for(lambda: ticket_count(engine) == 1)
    finally:
        daemon.stop()


def test_server_down_at_start_is_retried_until_it_is_back(engine: Engine, clock: Clock, mail_user: str) -> None:
    from tests.servers.dovecot import Dovecot

    with Dovecot() as server:
        server.add_user(mail_user, "pw")
        server.append_many(mail_user, mails(2))
        server.stop()
        config = config_with_mailboxes(mailbox_entry(server, mail_user, poll_interval=3600))
        daemon = Daemon(config, engine, clock)
        daemon.start()
        try:
            time.sleep(1.5)
            assert ticket_count(engine) == 0
            server.start()
            assert wait_for(lambda: ticket_count(engine) == 2, timeout=30)
        finally:
            daemon.stop()


def test_reload_applies_a_good_config_and_keeps_running_on_a_bad_one(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str
) -> None:
    from helpdesk.config import ConfigError

    daemon = Daemon(config_with_mailboxes(), engine, clock)
    daemon.start()
    try:
        def broken() -> Any:
            raise ConfigError("channels.yaml", ["channels[0].prefix: Field required"])

        assert daemon.reload(broken) is False
        assert daemon.config.mailboxes() == []
        dovecot.append(mail_user, make_mail(message_id="after-reload@acme.example"))
        assert daemon.reload(lambda: config_with_mailboxes(mailbox_entry(dovecot, mail_user))) is True
        assert wait_for(lambda: ticket_count(engine) == 1)
    finally:
        daemon.stop()


class _Watched:
    """A mailbox that records how many polls of it (across daemons) run at the same moment."""

    def __init__(self, box: Any, flight: dict[str, int], lock: Any) -> None:
        self.box, self.flight, self.lock = box, flight, lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.box, name)

    def poll(self, intake: Any) -> Any:
        with self.lock:
            self.flight["now"] += 1
            self.flight["max"] = max(self.flight["max"], self.flight["now"])
            self.flight["polls"] += 1
        try:
            time.sleep(0.05)  # widen the window in which a second poll would overlap
            return self.box.poll(intake)
        finally:
            with self.lock:
                self.flight["now"] -= 1


@pytest.mark.parametrize("kind", ["pop3", "imap"])
def test_two_daemons_never_poll_one_mailbox_at_once(
    engine: Engine, clock: Clock, dovecot: Any, mail_user: str, kind: str
) -> None:
    """POP3 (and IMAP without IDLE) is polled by scheduler jobs; a lease keeps the two daemons apart."""
    import threading

    from helpdesk.mailboxes.factory import make_mailbox
    from helpdesk.oauth.tokens import Providers

    dovecot.append_many(mail_user, mails(6, tag=kind))
    config = config_with_mailboxes(mailbox_entry(dovecot, mail_user, kind=kind, idle=False, poll_interval=0.2))
    flight = {"now": 0, "max": 0, "polls": 0}
    lock = threading.Lock()

    def factory(box_config: Any) -> Any:
        return _Watched(make_mailbox(box_config, Providers({})), flight, lock)

    daemons = [Daemon(config, engine, clock, mailbox_factory=factory) for _ in range(2)]
    try:
        for daemon in daemons:
            daemon.start()
        assert wait_for(lambda: ticket_count(engine) == 6)
        dovecot.append_many(mail_user, mails(3, tag=f"{kind}-later"))
        assert wait_for(lambda: ticket_count(engine) == 9)
        assert wait_for(lambda: flight["polls"] >= 10)
    finally:
        for daemon in daemons:
            daemon.stop()
    assert flight["max"] == 1, "two polls of one mailbox ran at the same time"
    assert ticket_count(engine) == 9  # each mail imported once
