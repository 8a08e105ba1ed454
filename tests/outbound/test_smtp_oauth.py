"""SmtpTransport logging in with OAuth 2.0 tokens (XOAUTH2, OAUTHBEARER) at a real SMTP server that asks
the local identity server (RFC 7662 introspection over HTTP) about every token."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from helpdesk.config import OAuthConfig, SmtpConfig, validate
from helpdesk.oauth.sasl import Mechanism, encoded
from helpdesk.oauth.tokens import Providers, default_scope
from helpdesk.outbound.routing import Router
from helpdesk.outbound.transport import Delivery, DeliveryStatus, SmtpTransport
from tests.conftest import base_config, require
from tests.outbound.test_transport import envelope
from tests.servers.certs import openssl_missing
from tests.servers.identity import Hit, IdentityServer
from tests.servers.smtp import SmtpSink, TlsKind, TokenCheck, TokenLogin

SENT, TEMPORARY = DeliveryStatus.SENT, DeliveryStatus.TEMPORARY
SENDER = "support@example.test"
CLIENT_ID = "helpdesk-mailer"
PROVIDER = "idp"
REFRESH_VARIABLE = "HD_TEST_SMTP_RT"
MECHANISMS: tuple[Mechanism, ...] = ("xoauth2", "oauthbearer")


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityServer]:
    require(openssl_missing())
    with IdentityServer(tmp_path_factory.mktemp("identity")) as server:
        yield server


def introspection(identity: IdentityServer) -> TokenCheck:
    """Accept a token when the identity server's introspection endpoint says it is active and ``user``'s."""

    def check(user: str, token: str) -> bool:
        answer = httpx.post(identity.introspection_url, data={"token": token}, timeout=10).json()
        return bool(answer.get("active")) and answer.get("email") == user

    return check


@pytest.fixture
def sinks(identity: IdentityServer) -> Iterator[list[SmtpSink]]:
    made: list[SmtpSink] = []
    yield made
    for sink in made:
        sink.stop()


def token_sink(sinks: list[SmtpSink], identity: IdentityServer, tls: TlsKind = "none",
               check: TokenCheck | None = None) -> SmtpSink:
    if tls != "none":
        require(openssl_missing())
    sink = SmtpSink(tls=tls, check_token=check or introspection(identity))
    sinks.append(sink)
    sink.start()
    return sink


class Mailer:
    """An SMTP transport for ``sink`` logging in as ``user`` with tokens from a refresh-token provider."""

    def __init__(
        self, sink: SmtpSink, identity: IdentityServer, user: str, sasl: str = "xoauth2",
        token_user: str | None = None, provider: dict[str, Any] | None = None,
    ) -> None:
        self.identity = identity
        self.refresh_token = secrets.token_urlsafe(24)
        identity.add_refresh_token(self.refresh_token, CLIENT_ID, token_user or user)
        os.environ[REFRESH_VARIABLE] = self.refresh_token
        settings = provider or {
            "kind": "refresh_token",
            "token_url": identity.token_url,
            "client_id": CLIENT_ID,
            "refresh_token": f"${{{REFRESH_VARIABLE}}}",
            "ca_file": str(identity.ca_file),
        }
        self.provider_config = OAuthConfig.model_validate(settings)
        self.providers = Providers({PROVIDER: self.provider_config})
        data: dict[str, Any] = {
            "host": sink.host, "port": sink.port, "tls": sink.tls, "timeout": 10,
            "user": user, "auth": "oauth2", "oauth": PROVIDER, "sasl": sasl,
        }
        if sink.cert_path is not None:
            data["ca_file"] = str(sink.cert_path)
        self.config = SmtpConfig.model_validate(data)
        self.transport = SmtpTransport(self.config, providers=self.providers)

    def deliver(self, *keys: int) -> list[Delivery]:
        return self.transport.deliver([envelope(key) for key in keys])

    def token(self) -> str:
        return self.providers.get(PROVIDER).token(default_scope(self.provider_config, "smtp"))

    def token_requests(self) -> list[Hit]:
        return [h for h in self.identity.token_requests() if h.form.get("refresh_token") == self.refresh_token]


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, mailer: Mailer, *tokens: str) -> None:
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records
    assert mailer.refresh_token not in text
    for token in tokens:
        assert token not in text
        for mechanism in MECHANISMS:
            assert encoded(mechanism, mailer.config.user or "", token) not in text


@pytest.mark.parametrize(("tls", "sasl"), [("none", "xoauth2"), ("none", "oauthbearer"), ("starttls", "xoauth2")])
def test_token_login_delivers(
    sinks: list[SmtpSink], identity: IdentityServer, tls: TlsKind, sasl: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = token_sink(sinks, identity, tls)
    mailer = Mailer(sink, identity, "agent@example.test", sasl)
    results = mailer.deliver(1, 2)
    assert [r.status for r in results] == [SENT, SENT]
    received = sink.wait_for(2)
    assert [r.auth_user for r in received] == ["agent@example.test"] * 2
    assert sink.token_logins == [TokenLogin(sasl.upper(), "agent@example.test", True, True)]  # one session
    assert len(mailer.token_requests()) == 1
    assert_no_secret_logged(caplog, mailer, mailer.token())


def test_revoked_token_is_renewed_once_and_the_mail_goes(
    sinks: list[SmtpSink], identity: IdentityServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = token_sink(sinks, identity)
    mailer = Mailer(sink, identity, "agent@example.test")
    revoked = mailer.token()
    identity.revoke(revoked)
    [result] = mailer.deliver(1)
    assert result.status is SENT
    assert len(sink.wait_for(1)) == 1
    assert [(t.user, t.accepted) for t in sink.token_logins] == [("agent@example.test", False),
                                                                 ("agent@example.test", True)]
    assert len(mailer.token_requests()) == 2
    renewed = mailer.token()
    assert renewed != revoked
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("refused" in w and "renewing" in w for w in warnings)
    # The renewed token is kept for the next batch.
    assert mailer.deliver(2)[0].status is SENT
    assert len(mailer.token_requests()) == 2
    assert_no_secret_logged(caplog, mailer, revoked, renewed)


@pytest.mark.parametrize(("sasl", "status"), [("xoauth2", "401"), ("oauthbearer", "invalid_token")])
def test_token_refused_after_renewal_defers_with_a_clear_detail(
    sinks: list[SmtpSink], identity: IdentityServer, sasl: str, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sink = token_sink(sinks, identity)
    # Every token of this refresh token belongs to another user: the server refuses each one.
    mailer = Mailer(sink, identity, "agent@example.test", sasl, token_user="intruder@example.test")
    results = mailer.deliver(1, 2)
    assert [r.status for r in results] == [TEMPORARY, TEMPORARY]
    detail = results[0].detail
    assert detail == (
        f"SMTP authentication as agent@example.test at {sink.host}:{sink.port} failed: the OAuth token of provider "
        f"idp was refused ({sasl.upper()}), also after renewing it once: 535 5.7.3 Authentication unsuccessful "
        f"(SASL status {status})"
    )
    assert sink.received == []
    assert [t.accepted for t in sink.token_logins] == [False, False]
    assert len(mailer.token_requests()) == 2
    assert_no_secret_logged(caplog, mailer, mailer.token())


@pytest.mark.parametrize("failure", ["unknown refresh token", "token endpoint unavailable"])
def test_token_that_cannot_be_had_defers(sinks: list[SmtpSink], identity: IdentityServer, failure: str) -> None:
    sink = token_sink(sinks, identity)
    if failure == "unknown refresh token":
        provider = {"kind": "refresh_token", "token_url": identity.token_url, "client_id": CLIENT_ID,
                    "refresh_token": f"${{{REFRESH_VARIABLE}}}", "ca_file": str(identity.ca_file)}
        mailer = Mailer(sink, identity, "agent@example.test", provider=provider)
        os.environ[REFRESH_VARIABLE] = "never-issued"
        expected = "invalid_grant"
    else:
        mailer = Mailer(sink, identity, "agent@example.test")
        identity.fail_next(1, 503, "temporarily_unavailable", "AADSTS90010: The service is busy.", [90010])
        expected = "temporarily_unavailable"
    [result] = mailer.deliver(1)
    assert result.status is TEMPORARY
    assert result.detail.startswith("getting the OAuth token of provider idp for SMTP as agent@example.test failed: ")
    assert expected in result.detail
    assert sink.mail_sessions == 0 and sink.token_logins == []


def test_long_token_follows_the_334(sinks: list[SmtpSink], identity: IdentityServer) -> None:
    """A token that would make the AUTH line longer than 512 octets is sent after the server's 334."""
    long_token = "eyJ0" + "x" * 2500
    sink = token_sink(sinks, identity, check=lambda user, token: token == long_token)
    os.environ["HD_TEST_SMTP_STATIC"] = long_token
    mailer = Mailer(sink, identity, "agent@example.test",
                    provider={"kind": "static", "token": "${HD_TEST_SMTP_STATIC}"})
    [result] = mailer.deliver(1)
    assert result.status is SENT
    assert sink.token_logins == [TokenLogin("XOAUTH2", "agent@example.test", True, False)]


def test_server_without_the_mechanism_defers(sinks: list[SmtpSink], identity: IdentityServer) -> None:
    sink = SmtpSink(require_auth=("agent@example.test", "pw"))  # passwords only
    sinks.append(sink)
    sink.start()
    mailer = Mailer(sink, identity, "agent@example.test")
    [result] = mailer.deliver(1)
    assert result.status is TEMPORARY
    assert result.detail == (
        f"{sink.host}:{sink.port} does not offer AUTH XOAUTH2 (it offers: LOGIN PLAIN); set smtp.sasl to one it offers"
    )


def test_router_sends_through_the_configured_oauth_relay(sinks: list[SmtpSink], identity: IdentityServer) -> None:
    sink = token_sink(sinks, identity)
    refresh_token = secrets.token_urlsafe(24)
    identity.add_refresh_token(refresh_token, CLIENT_ID, "agent@example.test")
    os.environ[REFRESH_VARIABLE] = refresh_token
    config = validate(base_config(
        smtp={"host": sink.host, "port": sink.port, "tls": "none", "user": "agent@example.test",
              "auth": "oauth2", "oauth": PROVIDER},
        oauth={PROVIDER: {"kind": "refresh_token", "token_url": identity.token_url, "client_id": CLIENT_ID,
                          "refresh_token": f"${{{REFRESH_VARIABLE}}}", "ca_file": str(identity.ca_file)}},
    ))
    [result] = Router(config, Providers(config.oauth)).deliver([envelope(5)])
    assert result.status is SENT
    assert sink.wait_for(1)[0].auth_user == "agent@example.test"
