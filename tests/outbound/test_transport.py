"""SmtpTransport against a real SMTP server: TLS, AUTH, replies, outages and hung servers."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from helpdesk.config import SmtpConfig, TlsMode
from helpdesk.outbound.transport import Delivery, DeliveryStatus, Envelope, SmtpTransport
from tests.outbound.conftest import SinkFactory, smtp_config_for
from tests.servers.smtp import SilentServer, SmtpSink

SENT, TEMPORARY, PERMANENT = DeliveryStatus.SENT, DeliveryStatus.TEMPORARY, DeliveryStatus.PERMANENT
CREDENTIALS = ("agent", "s3cret-pw")


def message(n: int = 1, to: str = "alice@acme.example") -> bytes:
    """A CRLF message with a line starting with a dot and 8-bit UTF-8 text."""
    return (
        f"From: Support <support@example.test>\r\nTo: {to}\r\nSubject: [SUP-{n}] Your request\r\n"
        f"Message-ID: <out-{n}@example.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        f"Grüße, message {n}.\r\n.a line starting with a dot\r\n..and two\r\n"
    ).encode()


def envelope(key: int, to: str = "alice@acme.example", *more: str) -> Envelope:
    return Envelope(key=key, sender="support@example.test", recipients=(to, *more), data=message(key, to))


def statuses(results: list[Delivery]) -> list[DeliveryStatus]:
    return [r.status for r in results]


# --- plain delivery ------------------------------------------------------------------------------------


def test_plain_delivery_is_byte_exact(smtp_sink: SmtpSink) -> None:
    env = envelope(7)
    [result] = SmtpTransport(smtp_config_for(smtp_sink)).deliver([env])
    assert result.key == 7
    assert result.status is SENT
    assert result.detail.startswith("250 2.0.0 Ok: queued as Q")
    [got] = smtp_sink.wait_for(1)
    assert got.data == env.data
    assert (got.mail_from, got.rcpt_tos) == ("support@example.test", ["alice@acme.example"])
    assert got.message["Subject"] == "[SUP-7] Your request"
    assert got.tls is False
    assert got.auth_user is None


def test_batch_uses_one_session_and_keeps_order(smtp_sink: SmtpSink) -> None:
    envs = [envelope(k, f"user{k}@acme.example") for k in (3, 1, 2)]
    results = SmtpTransport(smtp_config_for(smtp_sink)).deliver(envs)
    assert [r.key for r in results] == [3, 1, 2]
    assert statuses(results) == [SENT] * 3
    assert [r.rcpt_tos for r in smtp_sink.wait_for(3)] == [["user3@acme.example"], ["user1@acme.example"],
                                                           ["user2@acme.example"]]
    assert smtp_sink.mail_sessions == 1


def test_empty_batch_does_not_connect(smtp_sink: SmtpSink) -> None:
    assert SmtpTransport(smtp_config_for(smtp_sink)).deliver([]) == []
    assert smtp_sink.mail_sessions == 0


def test_deliver_async_inside_a_running_loop(smtp_sink: SmtpSink) -> None:
    transport = SmtpTransport(smtp_config_for(smtp_sink))

    async def run() -> list[Delivery]:
        return await transport.deliver_async([envelope(1), envelope(2)])

    assert statuses(asyncio.run(run())) == [SENT, SENT]


def test_batch_log_line(smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    smtp_sink.refuse("gone@acme.example", "550 5.1.1 No such user")
    smtp_sink.refuse("busy@acme.example", "451 4.3.0 Try again later")
    envs = [envelope(1), envelope(2), envelope(3, "gone@acme.example"), envelope(4, "busy@acme.example")]
    with caplog.at_level(logging.INFO, logger="helpdesk.outbound.transport"):
        SmtpTransport(smtp_config_for(smtp_sink)).deliver(envs)
    assert f"smtp 127.0.0.1:{smtp_sink.port}: 2 sent, 1 deferred, 1 failed" in caplog.messages


# --- TLS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_verified_with_the_ca_file(make_sink: SinkFactory, tls: str) -> None:
    sink = make_sink(tls=tls)
    [result] = SmtpTransport(smtp_config_for(sink, verify_tls=True)).deliver([envelope(1)])
    assert result.status is SENT, result.detail
    [got] = sink.wait_for(1)
    assert got.tls is True
    assert got.data == envelope(1).data


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_tls_without_the_ca_file_is_deferred(make_sink: SinkFactory, tls: str) -> None:
    sink = make_sink(tls=tls)
    results = SmtpTransport(smtp_config_for(sink, ca_file=None)).deliver([envelope(1), envelope(2)])
    assert statuses(results) == [TEMPORARY, TEMPORARY]
    assert "TLS" in results[0].detail
    assert "certificate verify failed" in results[0].detail
    assert sink.received == []


def test_tls_unverified_when_verify_tls_is_off(make_sink: SinkFactory) -> None:
    sink = make_sink(tls="starttls")
    [result] = SmtpTransport(smtp_config_for(sink, ca_file=None, verify_tls=False)).deliver([envelope(1)])
    assert result.status is SENT
    assert sink.wait_for(1)[0].tls is True


def test_starttls_required_but_not_offered(smtp_sink: SmtpSink) -> None:
    [result] = SmtpTransport(smtp_config_for(smtp_sink, tls="starttls")).deliver([envelope(1)])
    assert result.status is TEMPORARY
    assert "STARTTLS" in result.detail


# --- authentication -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tls", ["none", "starttls", "implicit"])
def test_auth_success(make_sink: SinkFactory, tls: str) -> None:
    sink = make_sink(tls=tls, require_auth=CREDENTIALS)
    [result] = SmtpTransport(smtp_config_for(sink)).deliver([envelope(1)])
    assert result.status is SENT, result.detail
    assert sink.wait_for(1)[0].auth_user == "agent"


def test_wrong_password_defers_everything_and_names_the_user(
    make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = make_sink(tls="starttls", require_auth=CREDENTIALS)
    transport = SmtpTransport(smtp_config_for(sink), secret=lambda reference: "not-the-password")
    with caplog.at_level(logging.DEBUG):
        results = transport.deliver([envelope(1), envelope(2)])
    assert statuses(results) == [TEMPORARY, TEMPORARY]
    assert results[0].detail.startswith("SMTP authentication as agent")
    assert "535" in results[0].detail
    assert "not-the-password" not in caplog.text + results[0].detail
    assert sink.received == []


def test_missing_password_variable(make_sink: SinkFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = make_sink(require_auth=CREDENTIALS)
    monkeypatch.delenv("HD_TEST_SMTP_UNSET", raising=False)
    config = smtp_config_for(sink, password="${HD_TEST_SMTP_UNSET}")
    results = SmtpTransport(config).deliver([envelope(1), envelope(2)])
    assert statuses(results) == [TEMPORARY, TEMPORARY]
    assert "environment variable HD_TEST_SMTP_UNSET is not set" in results[0].detail
    assert sink.mail_sessions == 0


def test_server_wants_auth_but_no_user_is_configured(make_sink: SinkFactory) -> None:
    sink = make_sink(require_auth=CREDENTIALS)
    [result] = SmtpTransport(smtp_config_for(sink, user=None, password=None)).deliver([envelope(1)])
    assert result.status is TEMPORARY
    assert result.detail.startswith("530 ")
    assert "smtp.user" in result.detail


def test_password_is_never_logged(make_sink: SinkFactory, caplog: pytest.LogCaptureFixture) -> None:
    sink = make_sink(require_auth=CREDENTIALS)
    with caplog.at_level(logging.DEBUG):
        results = SmtpTransport(smtp_config_for(sink)).deliver([envelope(1)])
    assert statuses(results) == [SENT]
    assert CREDENTIALS[1] not in caplog.text


# --- replies ------------------------------------------------------------------------------------------


def test_refused_recipients_do_not_affect_the_rest_of_the_batch(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("gone@acme.example", "550 5.1.1 No such user")
    smtp_sink.refuse("busy@acme.example", "451 4.3.0 Try again later")
    envs = [envelope(1), envelope(2, "gone@acme.example"), envelope(3, "busy@acme.example"), envelope(4)]
    results = SmtpTransport(smtp_config_for(smtp_sink)).deliver(envs)
    assert statuses(results) == [SENT, PERMANENT, TEMPORARY, SENT]
    assert results[1].detail == "550 5.1.1 No such user"
    assert results[2].detail == "451 4.3.0 Try again later"
    got = smtp_sink.wait_for(2)
    assert [g.data for g in got] == [envs[0].data, envs[3].data]
    assert smtp_sink.mail_sessions == 1


def test_some_recipients_refused_is_sent_naming_them(smtp_sink: SmtpSink) -> None:
    smtp_sink.refuse("gone@acme.example", "550 5.1.1 No such user")
    env = envelope(1, "alice@acme.example", "gone@acme.example")
    [result] = SmtpTransport(smtp_config_for(smtp_sink)).deliver([env])
    assert result.status is SENT
    assert "refused: <gone@acme.example> 550 5.1.1 No such user" in result.detail
    assert smtp_sink.wait_for(1)[0].rcpt_tos == ["alice@acme.example"]


@pytest.mark.parametrize(
    ("replies", "expected"),
    [(("550 5.1.1 No such user", "553 5.1.3 Bad address"), PERMANENT),
     (("550 5.1.1 No such user", "452 4.2.2 Mailbox full"), TEMPORARY)],
)
def test_all_recipients_refused(smtp_sink: SmtpSink, replies: tuple[str, str], expected: DeliveryStatus) -> None:
    smtp_sink.refuse("a@acme.example", replies[0])
    smtp_sink.refuse("b@acme.example", replies[1])
    [result] = SmtpTransport(smtp_config_for(smtp_sink)).deliver([envelope(1, "a@acme.example", "b@acme.example")])
    assert result.status is expected
    assert "<a@acme.example>" in result.detail
    assert "<b@acme.example>" in result.detail


@pytest.mark.parametrize(
    ("reply", "expected"), [("554 5.7.1 Message rejected as spam", PERMANENT), ("451 4.7.1 Greylisted", TEMPORARY)]
)
def test_data_refused(smtp_sink: SmtpSink, reply: str, expected: DeliveryStatus) -> None:
    smtp_sink.refuse_data(reply)
    transport = SmtpTransport(smtp_config_for(smtp_sink))
    results = transport.deliver([envelope(1), envelope(2)])
    assert statuses(results) == [expected, expected]
    assert results[0].detail == reply
    smtp_sink.refuse_data(None)
    assert statuses(transport.deliver([envelope(3)])) == [SENT]


def test_invalid_address_fails_only_that_envelope(smtp_sink: SmtpSink) -> None:
    injected = Envelope(key=2, sender="support@example.test", recipients=("x@y\r\nRCPT TO:<z@q>",), data=message(2))
    spaced = Envelope(key=3, sender="support@example.test", recipients=("a b@acme.example",), data=message(3))
    results = SmtpTransport(smtp_config_for(smtp_sink)).deliver([envelope(1), injected, spaced, envelope(4)])
    assert statuses(results) == [SENT, PERMANENT, PERMANENT, SENT]
    assert results[1].detail.startswith("not a usable envelope address")
    assert [g.rcpt_tos for g in smtp_sink.wait_for(2)] == [["alice@acme.example"]] * 2


def test_null_sender(smtp_sink: SmtpSink) -> None:
    bounce = Envelope(key=1, sender="", recipients=("alice@acme.example",), data=message(1))
    [result] = SmtpTransport(smtp_config_for(smtp_sink)).deliver([bounce])
    assert result.status is SENT, result.detail
    assert smtp_sink.wait_for(1)[0].mail_from == "<>"


# --- outages ------------------------------------------------------------------------------------------


def test_server_down_then_back(smtp_sink: SmtpSink) -> None:
    transport = SmtpTransport(smtp_config_for(smtp_sink))
    smtp_sink.stop()
    results = transport.deliver([envelope(1), envelope(2)])
    assert statuses(results) == [TEMPORARY, TEMPORARY]
    assert all("refused" in r.detail for r in results)
    smtp_sink.restart()
    assert statuses(transport.deliver([envelope(1), envelope(2)])) == [SENT, SENT]
    assert len(smtp_sink.wait_for(2)) == 2


def test_hang_up_mid_batch_reconnects_once(smtp_sink: SmtpSink) -> None:
    smtp_sink.hang_up(after=1)
    results = SmtpTransport(smtp_config_for(smtp_sink)).deliver([envelope(k) for k in (1, 2, 3, 4)])
    assert statuses(results) == [SENT, TEMPORARY, SENT, SENT]
    assert "lost" in results[1].detail
    assert [g.message["Message-ID"] for g in smtp_sink.wait_for(3)] == [
        "<out-1@example.test>", "<out-3@example.test>", "<out-4@example.test>"
    ]
    assert smtp_sink.mail_sessions == 2


def test_second_hang_up_defers_the_rest(smtp_sink: SmtpSink) -> None:
    smtp_sink.hang_up(after=1, times=2)
    results = SmtpTransport(smtp_config_for(smtp_sink)).deliver([envelope(k) for k in (1, 2, 3, 4)])
    assert statuses(results) == [SENT, TEMPORARY, TEMPORARY, TEMPORARY]
    assert "not attempted" in results[3].detail
    assert len(smtp_sink.received) == 1


def test_silent_server_times_out() -> None:
    with SilentServer() as server:
        config = SmtpConfig(host=server.host, port=server.port, tls=TlsMode.NONE, timeout=1)
        started = time.monotonic()
        results = SmtpTransport(config).deliver([envelope(1), envelope(2)])
        elapsed = time.monotonic() - started
    assert statuses(results) == [TEMPORARY, TEMPORARY]
    assert results[0].detail.startswith("timed out after 1 s")
    assert elapsed < 5


def test_unresolvable_host_is_deferred() -> None:
    config = SmtpConfig(host="no-such-host.invalid", port=2525, tls=TlsMode.NONE, timeout=5)
    [result] = SmtpTransport(config).deliver([envelope(1)])
    assert result.status is TEMPORARY
    assert result.detail.startswith(("cannot resolve no-such-host.invalid", "timed out"))
