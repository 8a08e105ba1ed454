"""The LMTP/SMTP listener with real clients (smtplib and a raw LMTP conversation)."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine

from helpdesk.config import validate
from helpdesk.intake.runner import Intake
from helpdesk.mailboxes.lmtp import Listener
from tests.conftest import Clock, base_config
from tests.mailboxes.test_imap import outcomes, ticket_count
from tests.mailgen import make_mail


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(params=["lmtp", "smtp"])
def listener(request: pytest.FixtureRequest, engine: Engine, clock: Clock) -> Iterator[tuple[Listener, Intake]]:
    config = validate(base_config(listener={"protocol": request.param, "port": free_port()}))
    intake = Intake(engine, config, clock)
    server = Listener(intake, config)
    server.start()
    try:
        yield server, intake
    finally:
        server.stop()


def client(server: Listener) -> smtplib.SMTP:
    if server.config.protocol == "lmtp":
        lmtp = smtplib.LMTP("127.0.0.1", server.port)
        lmtp.ehlo_or_helo_if_needed()
        return lmtp
    return smtplib.SMTP("127.0.0.1", server.port)


def test_delivery_becomes_a_ticket(listener: tuple[Listener, Intake], engine: Engine) -> None:
    server, _intake = listener
    with client(server) as conn:
        refused = conn.sendmail("alice@acme.example", ["support@example.test"], make_mail())
    assert refused == {}
    assert ticket_count(engine) == 1


def test_unknown_recipient_is_refused(listener: tuple[Listener, Intake], engine: Engine) -> None:
    server, _intake = listener
    with client(server) as conn, pytest.raises(smtplib.SMTPRecipientsRefused) as err:
        conn.sendmail("alice@acme.example", ["nobody@example.test"], make_mail())
    assert err.value.recipients["nobody@example.test"][0] == 550
    assert ticket_count(engine) == 0


def test_redelivery_of_same_bytes_is_not_a_second_ticket(listener: tuple[Listener, Intake], engine: Engine) -> None:
    server, _intake = listener
    raw = make_mail()
    for _ in range(2):
        with client(server) as conn:
            conn.sendmail("alice@acme.example", ["support@example.test"], raw)
    assert ticket_count(engine) == 1
    assert outcomes(engine) == ["ticket"]


def test_storage_failure_answers_451(
    listener: tuple[Listener, Intake], engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, intake = listener

    def down(*_args: Any) -> Any:
        raise ConnectionError("database is down")

    monkeypatch.setattr(intake, "store", down)
    with client(server) as conn, pytest.raises(smtplib.SMTPDataError) as err:
        conn.sendmail("alice@acme.example", ["support@example.test"], make_mail())
    assert err.value.smtp_code == 451
    monkeypatch.undo()
    with client(server) as conn:  # the MTA retries once we are back
        conn.sendmail("alice@acme.example", ["support@example.test"], make_mail())
    assert ticket_count(engine) == 1


def _read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    while b"\r\n" not in buffer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buffer.extend(chunk)
    line, _, rest = bytes(buffer).partition(b"\r\n")
    buffer[:] = rest
    return line


def _reply(sock: socket.socket, buffer: bytearray) -> bytes:
    """A whole (possibly multi-line) reply; returns its last line."""
    while True:
        line = _read_reply(sock, buffer)
        if line[3:4] != b"-":
            return line


def test_lmtp_answers_data_once_per_recipient(engine: Engine, clock: Clock) -> None:
    config = validate(base_config(listener={"protocol": "lmtp", "port": free_port()}))
    server = Listener(Intake(engine, config, clock), config)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            buf = bytearray()
            assert _reply(sock, buf).startswith(b"220")
            for command in (b"LHLO mta.example", b"MAIL FROM:<alice@acme.example>",
                            b"RCPT TO:<support@example.test>", b"RCPT TO:<sales@example.test>", b"DATA"):
                sock.sendall(command + b"\r\n")
                _reply(sock, buf)
            sock.sendall(make_mail(to=["support@example.test", "sales@example.test"]) + b"\r\n.\r\n")
            answers = [_reply(sock, buf), _reply(sock, buf)]
            sock.sendall(b"QUIT\r\n")
        assert all(a.startswith(b"250 ") for a in answers), answers
        assert ticket_count(engine) == 1  # one mail, one ticket, routed by the first matching recipient
    finally:
        server.stop()
