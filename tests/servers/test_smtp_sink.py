"""The SMTP sink itself, driven with the standard library's smtplib."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.conftest import require
from tests.servers.certs import openssl_missing
from tests.servers.smtp import Received, SmtpSink

MESSAGE = b"From: a@example.test\r\nTo: b@example.test\r\nSubject: hi\r\n\r\nbody\r\n.dot line\r\n"


def test_records_the_envelope_and_exact_bytes() -> None:
    seen: list[Received] = []
    with SmtpSink() as sink:
        sink.on_message = seen.append
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.sendmail("a@example.test", ["b@example.test"], MESSAGE)
        [got] = sink.wait_for(1)
    assert (got.mail_from, got.rcpt_tos, got.data) == ("a@example.test", ["b@example.test"], MESSAGE)
    assert got.message["Subject"] == "hi"
    assert (got.tls, got.auth_user) == (False, None)
    assert seen == [got]


def test_refusals_return_the_configured_replies() -> None:
    with SmtpSink() as sink:
        sink.refuse("Gone@Example.test", "550 5.1.1 No such user")
        sink.refuse("busy@example.test", "451 4.3.0 Try again later")
        with smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
            client.ehlo()
            client.mail("a@example.test")
            assert client.rcpt("gone@example.test") == (550, b"5.1.1 No such user")
            assert client.rcpt("busy@example.test") == (451, b"4.3.0 Try again later")
            assert client.rcpt("ok@example.test")[0] == 250
            sink.refuse_data("554 5.7.1 Rejected")
            assert client.data(MESSAGE) == (554, b"5.7.1 Rejected")
        assert sink.received == []


def test_auth_required_before_mail() -> None:
    with SmtpSink(require_auth=("agent", "pw")) as sink, smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@example.test")[0] == 530
        client.rset()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("agent", "wrong")
        client.login("agent", "pw")
        client.sendmail("a@example.test", ["b@example.test"], MESSAGE)
        assert sink.wait_for(1)[0].auth_user == "agent"


def test_starttls_is_required_and_flagged() -> None:
    require(openssl_missing())
    with SmtpSink(tls="starttls") as sink, smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        assert sink.cert_path is not None
        client.ehlo()
        assert client.mail("a@example.test")[0] == 530
        client.starttls(context=ssl.create_default_context(cafile=str(sink.cert_path)))
        client.sendmail("a@example.test", ["b@example.test"], MESSAGE)
        assert sink.wait_for(1)[0].tls is True


def test_implicit_tls_restart_keeps_the_port() -> None:
    require(openssl_missing())
    with SmtpSink(tls="implicit") as sink:
        assert sink.cert_path is not None
        context = ssl.create_default_context(cafile=str(sink.cert_path))
        port = sink.port
        sink.restart()
        assert sink.port == port
        with smtplib.SMTP_SSL(sink.host, sink.port, timeout=10, context=context) as client:
            client.sendmail("a@example.test", ["b@example.test"], MESSAGE)
        assert sink.wait_for(1)[0].tls is True


def test_failing_on_message_answers_451() -> None:
    def broken(received: Received) -> None:
        raise RuntimeError("mailbox full")

    with SmtpSink() as sink, smtplib.SMTP(sink.host, sink.port, timeout=10) as client:
        sink.on_message = broken
        with pytest.raises(smtplib.SMTPDataError) as caught:
            client.sendmail("a@example.test", ["b@example.test"], MESSAGE)
        assert caught.value.smtp_code == 451
        assert sink.received == []


def test_wait_for_says_how_many_arrived() -> None:
    with SmtpSink() as sink, pytest.raises(AssertionError, match="expected 1 message"):
        sink.wait_for(1, timeout=0.2)
