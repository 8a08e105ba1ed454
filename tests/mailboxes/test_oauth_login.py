"""IMAP and POP3 intake logging in with OAuth 2.0 tokens (XOAUTH2, OAUTHBEARER) against a real Dovecot
whose oauth2 passdb checks every token by introspection at the local identity server."""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from helpdesk.config import Config
from helpdesk.intake.runner import Intake
from helpdesk.mailboxes.base import PermanentError, PollReport, TemporaryError
from helpdesk.mailboxes.imap import ImapMailbox
from helpdesk.mailboxes.pop3 import Pop3Mailbox
from helpdesk.oauth.sasl import Mechanism, encoded
from helpdesk.oauth.tokens import Providers, default_scope
from tests.conftest import Clock, config_with_mailboxes, mailbox_entry, require, started_dovecot
from tests.mailboxes.test_imap import mails, ticket_count
from tests.servers.certs import openssl_missing
from tests.servers.dovecot import Dovecot
from tests.servers.identity import Hit, IdentityServer

pytestmark = pytest.mark.dovecot

CLIENT_ID = "helpdesk-intake"
PROVIDER = "idp"
KINDS = ["imap", "pop3"]


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityServer]:
    require(openssl_missing())
    with IdentityServer(tmp_path_factory.mktemp("identity")) as server:
        yield server


@pytest.fixture(scope="module")
def oauth_dovecot(identity: IdentityServer) -> Iterator[Dovecot]:
    """A Dovecot taking passwords (passwd-files) and tokens (oauth2 passdb asking ``identity``)."""
    yield from started_dovecot(oauth2_introspection_url=identity.introspection_url)


@pytest.fixture
def user(oauth_dovecot: Dovecot) -> str:
    name = f"o{uuid.uuid4().hex[:10]}"
    oauth_dovecot.add_user(name, "pw-" + name)  # the test's own APPENDs log in with the password
    return name


class Setup:
    """A configured token-login mailbox of ``user``, its intake, and the refresh token behind it."""

    def __init__(
        self, engine: Engine, clock: Clock, dovecot: Dovecot, identity: IdentityServer, user: str, kind: str,
        sasl: str = "xoauth2", token_user: str | None = None, refresh_token: str | None = None, **box: Any,
    ) -> None:
        self.identity = identity
        self.refresh_token = refresh_token or secrets.token_urlsafe(24)
        if refresh_token is None:
            identity.add_refresh_token(self.refresh_token, CLIENT_ID, token_user or user)
        variable = f"HD_TEST_RT_{user}"
        os.environ[variable] = self.refresh_token
        entry = mailbox_entry(dovecot, user, kind, auth="oauth2", oauth=PROVIDER, sasl=sasl, **box)
        del entry["password"]
        provider = {
            "kind": "refresh_token",
            "token_url": identity.token_url,
            "client_id": CLIENT_ID,
            "refresh_token": f"${{{variable}}}",
            "ca_file": str(identity.ca_file),
        }
        self.config: Config = config_with_mailboxes(entry, oauth={PROVIDER: provider})
        self.box_config = self.config.mailboxes()[0][1]
        self.providers = Providers(self.config.oauth)
        self.intake = Intake(engine, self.config, clock)
        adapter = ImapMailbox if kind == "imap" else Pop3Mailbox
        self.box: ImapMailbox | Pop3Mailbox = adapter(self.box_config, providers=self.providers)
        self.scope = default_scope(self.config.oauth[PROVIDER], "imap" if kind == "imap" else "pop3")

    def poll(self) -> PollReport:
        return self.box.poll(self.intake)

    def token_requests(self) -> list[Hit]:
        """The requests at the token endpoint made with this mailbox's refresh token."""
        return [h for h in self.identity.token_requests() if h.form.get("refresh_token") == self.refresh_token]

    def current_token(self) -> str:
        return self.providers.get(PROVIDER).token(self.scope)

    def close(self) -> None:
        self.box.close()


def logins(dovecot: Dovecot, user: str) -> list[str]:
    """The mechanisms of the successful logins of ``user`` in Dovecot's log, oldest first."""
    lines = Path(dovecot.log_path).read_text(errors="replace").splitlines()
    marker = f"Login: user=<{user}>, method="
    return [line.split(marker, 1)[1].split(",", 1)[0] for line in lines if marker in line]


MECHANISMS: tuple[Mechanism, ...] = ("xoauth2", "oauthbearer")


def assert_no_secret_logged(caplog: pytest.LogCaptureFixture, setup: Setup, *tokens: str) -> None:
    """Neither a token, nor a SASL response carrying it, nor the refresh token is in any log record."""
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records  # the check means something only when there was logging
    assert setup.refresh_token not in text
    for token in tokens:
        assert token not in text
        for mechanism in MECHANISMS:
            assert encoded(mechanism, setup.box_config.user, token) not in text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sasl", ["xoauth2", "oauthbearer"])
def test_token_login_imports_mail(
    sqlite_engine: Engine, clock: Clock, oauth_dovecot: Dovecot, identity: IdentityServer, user: str,
    kind: str, sasl: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    oauth_dovecot.append_many(user, mails(2, f"{kind}-{sasl}"))
    setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, kind, sasl)
    report = setup.poll()
    setup.close()
    assert logins(oauth_dovecot, user)[-1] == sasl.upper()  # Dovecot took the token, not a password
    assert (report.fetched, report.acknowledged) == (2, 2)
    assert ticket_count(sqlite_engine) == 2
    assert oauth_dovecot.message_count(user) == 0
    assert len(setup.token_requests()) == 1
    assert_no_secret_logged(caplog, setup, setup.current_token())


@pytest.mark.parametrize(
    ("kind", "tls", "sasl"), [("imap", "implicit", "oauthbearer"), ("pop3", "starttls", "xoauth2")]
)
def test_token_login_over_tls(
    sqlite_engine: Engine, clock: Clock, oauth_dovecot: Dovecot, identity: IdentityServer, user: str,
    kind: str, tls: str, sasl: str,
) -> None:
    oauth_dovecot.append(user, mails(1, f"tls-{kind}")[0])
    port = oauth_dovecot.imaps_port if tls == "implicit" else oauth_dovecot.pop3_port
    setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, kind, sasl, tls=tls, port=port,
                  ca_file=str(oauth_dovecot.cert_path), after_import="keep")
    assert setup.poll().fetched == 1
    setup.close()
    assert logins(oauth_dovecot, user)[-1] == sasl.upper()


@pytest.mark.parametrize("kind", KINDS)
def test_revoked_token_is_renewed_once_and_the_mail_imported_once(
    sqlite_engine: Engine, clock: Clock, oauth_dovecot: Dovecot, identity: IdentityServer, user: str,
    kind: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    oauth_dovecot.append(user, mails(1, f"revoked-{kind}")[0])
    setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, kind)
    revoked = setup.current_token()  # cached by the provider: the first login uses it
    identity.revoke(revoked)
    report = setup.poll()
    setup.close()
    assert report.fetched == 1
    assert len(setup.token_requests()) == 2  # the first token, and one renewal
    renewed = setup.current_token()
    assert renewed != revoked and identity.validate(renewed) is not None
    assert logins(oauth_dovecot, user)[-1] == "XOAUTH2"
    again = setup.poll()
    setup.close()
    assert again.fetched == 0
    assert ticket_count(sqlite_engine) == 1
    assert len(setup.token_requests()) == 2  # the renewed token is kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(setup.box_config.name in w and "renewing" in w for w in warnings)
    assert_no_secret_logged(caplog, setup, revoked, renewed)


@pytest.mark.parametrize("kind", KINDS)
def test_token_refused_after_renewal_is_a_permanent_error(
    sqlite_engine: Engine, clock: Clock, oauth_dovecot: Dovecot, identity: IdentityServer, user: str,
    kind: str, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    oauth_dovecot.append(user, mails(1, f"refused-{kind}")[0])
    # Every token of this refresh token belongs to someone else: Dovecot refuses each one.
    setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, kind, token_user="someone.else@example.test")
    with pytest.raises(PermanentError) as raised:
        setup.poll()
    message = str(raised.value)
    assert message.startswith(f"mailbox {setup.box_config.name}: the OAuth token was refused by 127.0.0.1")
    assert "also after renewing it once" in message
    assert "Authentication failed" in message and "(SASL status 401)" in message
    assert len(setup.token_requests()) == 2
    assert ticket_count(sqlite_engine) == 0
    assert oauth_dovecot.message_count(user) == 1
    assert_no_secret_logged(caplog, setup, setup.current_token())
    assert setup.current_token() not in message


def test_oauthbearer_refusal_names_the_rfc7628_status(
    sqlite_engine: Engine, clock: Clock, oauth_dovecot: Dovecot, identity: IdentityServer, user: str
) -> None:
    setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, "imap", "oauthbearer",
                  token_user="someone.else@example.test")
    with pytest.raises(PermanentError, match=r"with OAUTHBEARER.*\(SASL status invalid_token\)"):
        setup.poll()


@pytest.mark.parametrize(
    ("failure", "expected"),
    [("unknown refresh token", PermanentError), ("token endpoint unavailable", TemporaryError)],
)
def test_token_that_cannot_be_had(
    sqlite_engine: Engine, clock: Clock, oauth_dovecot: Dovecot, identity: IdentityServer, user: str,
    failure: str, expected: type[Exception],
) -> None:
    if failure == "unknown refresh token":
        setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, "imap", refresh_token="never-issued")
        match = "invalid_grant"
    else:
        setup = Setup(sqlite_engine, clock, oauth_dovecot, identity, user, "pop3")
        identity.fail_next(1, 503, "temporarily_unavailable", "AADSTS90010: The service is busy.", [90010])
        match = "temporarily_unavailable"
    with pytest.raises(expected, match=rf"^mailbox {setup.box_config.name}: getting the OAuth token failed: .*{match}"):
        setup.poll()
