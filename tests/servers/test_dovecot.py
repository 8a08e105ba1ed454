"""The test Dovecot controller really serves IMAP and POP3, restarts and resets UIDVALIDITY."""

from __future__ import annotations

import imaplib
import poplib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.conftest import require
from tests.servers.dovecot import Dovecot, DovecotError, dovecot_available

pytestmark = pytest.mark.dovecot


@pytest.fixture(autouse=True)
def _dovecot_installed() -> None:
    """Skip without Dovecot, except under CI=true, where a missing service is a failure."""
    require(dovecot_available())


def _message(n: int, body: str = "Hello.") -> bytes:
    return (
        f"From: Customer {n} <customer{n}@example.com>\r\n"
        "To: helpdesk@example.com\r\n"
        f"Subject: Ticket {n}\r\n"
        f"Message-ID: <msg-{n}@example.com>\r\n"
        "Date: Mon, 02 Jun 2025 10:00:00 +0000\r\n"
        "\r\n"
        f"{body}\r\n"
        ".leading dot must survive POP3 byte-stuffing\r\n"
    ).encode()


def _alive(pattern: str) -> list[str]:
    result = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()


@pytest.fixture
def server() -> Iterator[Dovecot]:
    with Dovecot() as dovecot:
        yield dovecot


def test_imap_pop3_restart_and_uidvalidity_reset(server: Dovecot) -> None:
    server.add_user("alice", "s3cret")
    raws = [_message(n) for n in (1, 2, 3)]
    uids = [server.append("alice", raws[0], flags=["\\Flagged"])]
    uids += [server.append("alice", raw) for raw in raws[1:]]
    assert uids == [1, 2, 3]

    # IMAP read-back.
    with server.connect("alice") as imap:
        uidvalidity = imap.select_folder("INBOX", readonly=True)[b"UIDVALIDITY"]
        assert imap.search("ALL") == uids
        fetched = imap.fetch(uids, [b"BODY.PEEK[]", b"FLAGS"])
    assert [fetched[uid][b"BODY[]"] for uid in uids] == raws
    assert b"\\Flagged" in fetched[1][b"FLAGS"]
    assert server.uidvalidity("alice") == uidvalidity
    assert server.message_count("alice") == 3

    # POP3: UIDL is uid and uidvalidity as 8 lowercase hex digits each (pop3_uidl_format
    # %08Xu%08Xv); RETR undoes byte-stuffing.
    pop = server.connect_pop3("alice")
    try:
        assert pop.stat()[0] == 3
        listing = [line.split() for line in pop.uidl()[1]]
        assert [(int(n), uidl.decode()) for n, uidl in listing] == [
            (i, f"{uid:08x}{uidvalidity:08x}") for i, uid in enumerate(uids, start=1)
        ]
        for i, raw in enumerate(raws, start=1):
            lines = pop.retr(i)[1]
            assert b"\r\n".join(lines) + b"\r\n" == raw
    finally:
        pop.quit()

    # A real restart: the old master and its sessions are gone; mail, UIDs and
    # UIDVALIDITY survive on the same ports.
    old_pid, ports = server.pid, (server.imap_port, server.pop3_port)
    idle_client = server.connect("alice")
    idle_client.select_folder("INBOX")
    server.restart()
    assert server.pid != old_pid
    assert (server.imap_port, server.pop3_port) == ports
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        idle_client.noop()
    idle_client.shutdown()
    assert server.uidvalidity("alice") == uidvalidity
    # (POP3 RETR + QUIT marked them \Seen.)
    assert server.list_folder("alice") == [
        (1, ("\\Flagged", "\\Seen")),
        (2, ("\\Seen",)),
        (3, ("\\Seen",)),
    ]

    # reset_uidvalidity: a new UIDVALIDITY, same messages and flags.
    new_uidvalidity = server.reset_uidvalidity("alice")
    assert new_uidvalidity != uidvalidity
    assert server.uidvalidity("alice") == new_uidvalidity
    assert server.message_count("alice") == 3
    after = server.fetch("alice")
    assert sorted(after.values()) == sorted(raws)
    flagged = [uid for uid, flags in server.list_folder("alice") if "\\Flagged" in flags]
    assert [after[uid] for uid in flagged] == [raws[0]]

    conf = str(server.config_path)
    assert _alive(conf), "pgrep should see the running master"
    server.close()
    assert _alive(conf) == []
    assert _alive(f"dovecot-{server.instance_name}/") == []
    assert not server.base_dir.exists()


def test_append_many_1000(server: Dovecot) -> None:
    server.add_user("bulk", "pw")
    raws = [_message(n, body="Line of body text.\r\n" * 20) for n in range(1000)]
    started = time.perf_counter()
    uids = server.append_many("bulk", raws)
    elapsed = time.perf_counter() - started
    print(f"\nappend_many(1000 messages, {sum(map(len, raws)) // 1024} KiB) took {elapsed:.3f} s")
    assert uids == list(range(1, 1001))
    assert server.message_count("bulk") == 1000
    assert server.fetch("bulk") == dict(zip(uids, raws, strict=True))
    # Appending more continues the numbering, in order, into another folder too.
    server.create_folder("bulk", "Archive/2025")
    assert server.append_many("bulk", raws[:3], folder="Archive/2025", flags=["\\Seen"]) == [1, 2, 3]
    assert server.list_folder("bulk", "Archive/2025") == [(uid, ("\\Seen",)) for uid in (1, 2, 3)]


def test_users_folders_and_reset_of_a_subfolder(server: Dovecot) -> None:
    # Added after start, odd password, mixed-case login.
    server.add_user("Bob", 'p:a"s\\s wörd')
    with server.connect("bob") as imap:
        assert imap.select_folder("INBOX")[b"EXISTS"] == 0
    server.add_user("carol", "first")
    server.add_user("carol", "second")  # re-password while running
    with pytest.raises(Exception, match="AUTHENTICATIONFAILED"):
        server.connect("carol", "first")
    server.connect("carol").logout()
    with pytest.raises(Exception, match="AUTHENTICATIONFAILED"):
        server.connect("bob", "wrong")

    server.create_folder("bob", "Tickets/Überfällig")
    assert server.maildir_path("bob", "Tickets/Überfällig").is_dir()
    uid = server.append("bob", _message(7), folder="Tickets/Überfällig", flags=["\\Seen", "$Billed"])
    assert server.list_folder("bob", "Tickets/Überfällig") == [(uid, ("\\Seen", "$Billed"))]
    inbox_uidvalidity = server.uidvalidity("bob")
    old = server.uidvalidity("bob", "Tickets/Überfällig")
    assert server.reset_uidvalidity("bob", "Tickets/Überfällig") != old
    assert server.list_folder("bob", "Tickets/Überfällig") == [(1, ("\\Seen", "$Billed"))]
    assert server.uidvalidity("bob") == inbox_uidvalidity
    with pytest.raises(DovecotError):
        server.reset_uidvalidity("bob", "NoSuchFolder")


def test_tls_ports_and_starttls() -> None:
    with Dovecot(ssl=True) as server:
        server.add_user("tls", "pw")
        assert server.imaps_port and server.pop3s_port
        context = server.ssl_context()  # verifies the self-signed cert and 127.0.0.1
        with IMAPClient(server.host, port=server.imaps_port, ssl=True, ssl_context=context) as imap:
            imap.login("tls", "pw")
            assert imap.select_folder("INBOX")[b"EXISTS"] == 0
        with IMAPClient(server.host, port=server.imap_port, ssl=False) as imap:
            imap.starttls(context)
            imap.login("tls", "pw")
        pop3s = poplib.POP3_SSL(server.host, server.pop3s_port, context=context)
        pop3s.user("tls")
        pop3s.pass_("pw")
        pop3s.quit()
        pop3 = poplib.POP3(server.host, server.pop3_port)
        pop3.stls(context)
        pop3.user("tls")
        pop3.pass_("pw")
        pop3.quit()


def test_two_instances_side_by_side_and_startup_failure() -> None:
    with Dovecot() as one, Dovecot() as two:
        assert {one.imap_port, one.pop3_port}.isdisjoint({two.imap_port, two.pop3_port})
        assert one.base_dir != two.base_dir

    broken = Dovecot(extra_config="no_such_setting = 1", startup_timeout=5)
    try:
        with pytest.raises(DovecotError, match="no_such_setting"):
            broken.start()
        assert not broken.running
        assert _alive(str(broken.config_path)) == []
    finally:
        broken.close()
    assert not Path(broken.base_dir).exists()
