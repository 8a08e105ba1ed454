"""Token providers against a local identity server: msal with a secret and a certificate, refresh tokens,
static tokens, caching and renewal, error classification, and tokens kept out of logs and reprs."""

from __future__ import annotations

import base64
import hashlib
import logging
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import ValidationError

from helpdesk.config import OAuthConfig
from helpdesk.oauth.tokens import (
    GOOGLE_MAIL_SCOPE,
    GRAPH_SCOPE,
    OUTLOOK_SCOPE,
    MicrosoftClientCredentials,
    Providers,
    RefreshTokenGrant,
    StaticToken,
    TokenError,
    TokenProvider,
    TokenSource,
    source_for,
)
from tests.oauth.conftest import KEY_PASSWORD, ClientCertificate
from tests.servers.identity import JWT_BEARER, IdentityServer

APP = "3f2b8c1e-7d4a-4e0b-9c5f-1a2b3c4d5e6f"  # application (client) ids are GUIDs
SECRET = "Qx8~k2Vd.test-client-secret_Value9"  # shaped like a portal-issued secret value
MAILBOX = "helpdesk@contoso.example"
GOOGLE_CLIENT = "1234567890-helpdesk.apps.googleusercontent.com"
GOOGLE_SECRET = "GOCSPX-test-google-client-secret"
REFRESH_TOKEN = "1//0test-refresh-token-for-the-helpdesk"


def microsoft(server: IdentityServer, **fields: Any) -> OAuthConfig:
    data: dict[str, Any] = {
        "kind": "microsoft",
        "tenant": server.tenant,
        "client_id": APP,
        "authority_host": server.authority_host,
        "ca_file": str(server.ca_file),
        "timeout": 10,
    }
    data.update(fields)
    return OAuthConfig(**data)


def secret_provider(server: IdentityServer, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> TokenProvider:
    """A provider for APP with SECRET taken from $HD_TEST_CLIENT_SECRET, registered on ``server``."""
    monkeypatch.setenv("HD_TEST_CLIENT_SECRET", SECRET)
    server.add_client(APP, secret=SECRET, user=MAILBOX)
    return TokenProvider("m365", source_for(microsoft(server, client_secret="${HD_TEST_CLIENT_SECRET}")), **kwargs)


def refresh_config(server: IdentityServer) -> OAuthConfig:
    return OAuthConfig(
        kind="refresh_token",
        token_url=server.token_url,
        client_id=GOOGLE_CLIENT,
        client_secret="${HD_TEST_GOOGLE_SECRET}",
        refresh_token="${HD_TEST_REFRESH_TOKEN}",
        ca_file=str(server.ca_file),
        timeout=10,
    )


def refusal(source: TokenSource, scope: str = GRAPH_SCOPE) -> TokenError:
    with pytest.raises(TokenError) as caught:
        source.fetch(scope)
    return caught.value


def thumbprint(cert: ClientCertificate) -> str:
    der = x509.load_pem_x509_certificate(cert.cert.read_bytes()).public_bytes(Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def trust(server: IdentityServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


# --- msal against the local endpoint --------------------------------------------------------------


def test_msal_gets_a_token_with_a_client_secret_from_the_environment(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = secret_provider(identity, monkeypatch)
    assert isinstance(provider.source, MicrosoftClientCredentials)

    token = provider.token(GRAPH_SCOPE)

    info = identity.validate(token)
    assert info is not None
    assert (info.client_id, info.user, info.scope) == (APP, MAILBOX, GRAPH_SCOPE)
    tenant = identity.tenant
    assert [(h.method, h.path) for h in identity.hits] == [
        ("GET", f"/{tenant}/v2.0/.well-known/openid-configuration"),
        ("POST", f"/{tenant}/oauth2/v2.0/token"),
    ]
    [request] = identity.token_requests()
    assert request.client_auth == "client_secret_post"
    assert request.form["grant_type"] == "client_credentials"
    assert request.form["client_id"] == APP
    assert request.form["client_secret"] == SECRET
    assert request.form["scope"] == GRAPH_SCOPE
    assert "client_assertion" not in request.form


@pytest.mark.parametrize("layout", ["one PEM file", "separate key file", "encrypted key"])
def test_msal_signs_a_client_assertion_with_the_certificate(
    identity: IdentityServer, client_certificate: ClientCertificate, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    identity.add_client(APP, certificate=client_certificate.cert)  # app-only: no user behind the token
    monkeypatch.setenv("HD_TEST_KEY_PASSWORD", KEY_PASSWORD)
    fields = {
        "one PEM file": {"certificate": str(client_certificate.combined)},
        "separate key file": {
            "certificate": str(client_certificate.cert),
            "certificate_key": str(client_certificate.key),
        },
        "encrypted key": {
            "certificate": str(client_certificate.cert),
            "certificate_key": str(client_certificate.encrypted_key),
            "certificate_password": "${HD_TEST_KEY_PASSWORD}",
        },
    }[layout]
    provider = TokenProvider("m365", source_for(microsoft(identity, **fields)))

    token = provider.token(OUTLOOK_SCOPE)

    info = identity.validate(token)
    assert info is not None
    assert (info.client_id, info.user, info.scope) == (APP, None, OUTLOOK_SCOPE)
    [request] = identity.token_requests()
    assert request.client_auth == "private_key_jwt"
    assert "client_secret" not in request.form
    assert request.form["client_assertion_type"] == JWT_BEARER
    assertion = request.form["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "PS256"
    assert header["x5t#S256"].rstrip("=") == thumbprint(client_certificate)
    public_key = x509.load_pem_x509_certificate(client_certificate.cert.read_bytes()).public_key()
    claims = jwt.decode(assertion, public_key, algorithms=["PS256"], audience=identity.token_url)  # type: ignore[arg-type]
    assert claims["iss"] == claims["sub"] == APP
    assert claims["exp"] > time.time()


# --- refusals: permanent or temporary -------------------------------------------------------------


def test_a_wrong_secret_is_a_permanent_invalid_client(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity.add_client(APP, secret=SECRET)
    monkeypatch.setenv("HD_TEST_CLIENT_SECRET", "the-secret-id-not-its-value")
    source = source_for(microsoft(identity, client_secret="${HD_TEST_CLIENT_SECRET}"))

    error = refusal(source)

    assert error.permanent
    assert error.code == "invalid_client"
    assert 7000215 in error.codes
    assert "AADSTS7000215" in str(error)
    assert "the-secret-id-not-its-value" not in str(error)
    assert identity.token_requests()[0].form["client_secret"] == "the-secret-id-not-its-value"


def test_an_unknown_tenant_is_permanent_with_its_code(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HD_TEST_CLIENT_SECRET", SECRET)
    identity.add_client(APP, secret=SECRET)
    config = microsoft(identity, tenant="fabrikam.onmicrosoft.com", client_secret="${HD_TEST_CLIENT_SECRET}")
    source = source_for(config)

    error = refusal(source)

    assert error.permanent
    assert error.code == "invalid_tenant"
    assert error.codes == (90002,)
    assert "fabrikam.onmicrosoft.com" in str(error)
    assert identity.token_requests() == []  # discovery failed: msal never reached a token endpoint


def test_an_unknown_client_is_permanent_with_its_code(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HD_TEST_CLIENT_SECRET", SECRET)
    source = source_for(microsoft(identity, client_secret="${HD_TEST_CLIENT_SECRET}"))  # APP is not registered

    error = refusal(source)

    assert (error.permanent, error.code, error.codes) == (True, "unauthorized_client", (700016,))


@pytest.mark.parametrize("mismatch", ["key of another certificate", "unregistered certificate"])
def test_an_assertion_the_registered_certificate_cannot_verify_is_refused(
    identity: IdentityServer,
    client_certificate: ClientCertificate,
    other_certificate: ClientCertificate,
    mismatch: str,
) -> None:
    identity.add_client(APP, certificate=client_certificate.cert)
    if mismatch == "key of another certificate":  # the registered thumbprint, a signature by another key
        fields = {"certificate": str(client_certificate.cert), "certificate_key": str(other_certificate.key)}
        reason = "did not match the expected signature"
    else:
        fields = {"certificate": str(other_certificate.combined)}
        reason = "The key was not found"

    error = refusal(source_for(microsoft(identity, **fields)))

    assert (error.permanent, error.code, error.codes) == (True, "invalid_client", (700027,))
    assert reason in str(error)


def test_a_client_credentials_scope_must_be_a_default_scope(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = secret_provider(identity, monkeypatch)

    error = refusal(provider.source, "https://graph.microsoft.com/Mail.Read")

    assert (error.permanent, error.code, error.codes) == (True, "invalid_scope", (1002012,))


def test_an_unset_secret_variable_is_permanent_and_nothing_is_sent(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HD_TEST_UNSET_SECRET", raising=False)
    identity.add_client(APP, secret=SECRET)

    error = refusal(source_for(microsoft(identity, client_secret="${HD_TEST_UNSET_SECRET}")))

    assert error.permanent
    assert "HD_TEST_UNSET_SECRET" in str(error)
    assert identity.hits == []


def test_a_literal_secret_in_the_config_is_refused(identity: IdentityServer) -> None:
    with pytest.raises(ValidationError, match="environment reference"):
        microsoft(identity, client_secret=SECRET)


@pytest.mark.parametrize("fault", ["wrong key password", "missing certificate file", "certificate without key"])
def test_an_unusable_certificate_is_permanent(
    identity: IdentityServer,
    client_certificate: ClientCertificate,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Any,
    fault: str,
) -> None:
    identity.add_client(APP, certificate=client_certificate.cert)
    monkeypatch.setenv("HD_TEST_KEY_PASSWORD", "not the password")
    fields = {
        "wrong key password": {
            "certificate": str(client_certificate.cert),
            "certificate_key": str(client_certificate.encrypted_key),
            "certificate_password": "${HD_TEST_KEY_PASSWORD}",
        },
        "missing certificate file": {"certificate": str(tmp_path / "absent.pem")},
        "certificate without key": {"certificate": str(client_certificate.cert)},
    }[fault]

    error = refusal(source_for(microsoft(identity, **fields)))

    assert error.permanent
    assert identity.token_requests() == []


@pytest.mark.parametrize(("status", "oauth_error"), [(503, "temporarily_unavailable"), (500, "server_error")])
def test_a_service_outage_is_temporary(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch, status: int, oauth_error: str
) -> None:
    provider = secret_provider(identity, monkeypatch)
    identity.fail_next(1, status, oauth_error, "AADSTS90033: A transient error has occurred.", [90033])

    error = refusal(provider.source)

    assert not error.permanent
    assert len(identity.token_requests()) == 1


def test_after_a_retry_after_answer_msal_waits_before_asking_again(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = secret_provider(identity, monkeypatch)
    identity.fail_next(
        1, 503, "temporarily_unavailable", "AADSTS90033: A transient error has occurred.", [90033], retry_after=1
    )

    assert not refusal(provider.source).permanent
    assert not refusal(provider.source).permanent  # within the Retry-After: answered without a request
    assert len(identity.token_requests()) == 1
    [failed] = identity.token_requests()
    time.sleep(max(0.0, failed.at + 1.05 - time.monotonic()))
    token = provider.token(GRAPH_SCOPE)

    assert identity.validate(token) is not None
    first, second = identity.token_requests()
    assert second.at - first.at >= 1.0


# --- caching and renewal --------------------------------------------------------------------------


def test_a_cached_token_serves_repeated_calls_per_scope(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = secret_provider(identity, monkeypatch)

    first = provider.token(GRAPH_SCOPE)
    second = provider.token(GRAPH_SCOPE)

    assert first == second
    assert len(identity.token_requests()) == 1
    outlook = provider.token(OUTLOOK_SCOPE)
    assert outlook != first
    assert [h.form["scope"] for h in identity.token_requests()] == [GRAPH_SCOPE, OUTLOOK_SCOPE]
    assert provider.fetches == 2


def test_a_token_inside_the_renewal_margin_is_replaced_before_it_expires(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    identity.lifetime = 600  # expires_in of the tokens: the provider must honour it, not assume an hour
    ahead = [0.0]
    provider = secret_provider(identity, monkeypatch, margin=300, clock=lambda: time.time() + ahead[0])

    first = provider.token(GRAPH_SCOPE)
    ahead[0] = 290  # 310 s left: outside the margin
    assert provider.token(GRAPH_SCOPE) == first
    assert len(identity.token_requests()) == 1
    ahead[0] = 310  # 290 s left: inside it
    second = provider.token(GRAPH_SCOPE)

    assert second != first
    assert len(identity.token_requests()) == 2
    assert identity.validate(first) is not None  # replaced while still valid
    assert identity.validate(second) is not None


def test_two_workers_reporting_the_same_rejected_token_cause_one_fetch(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = secret_provider(identity, monkeypatch)
    rejected = provider.token(GRAPH_SCOPE)
    identity.revoke(rejected)
    start = threading.Barrier(2)

    def worker(_: int) -> str:
        start.wait(5)
        return provider.renew(GRAPH_SCOPE, rejected)

    with ThreadPoolExecutor(2) as pool:
        renewed = list(pool.map(worker, range(2)))

    assert renewed[0] == renewed[1] != rejected
    assert len(identity.token_requests()) == 2  # the first token and one renewal
    assert identity.validate(renewed[0]) is not None


def test_renew_with_an_old_token_returns_the_newer_cached_one(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = secret_provider(identity, monkeypatch)
    old = provider.token(GRAPH_SCOPE)
    new = provider.renew(GRAPH_SCOPE, old)

    again = provider.renew(GRAPH_SCOPE, old)  # a worker that still held the old token

    assert again == new != old
    assert provider.token(GRAPH_SCOPE) == new
    assert len(identity.token_requests()) == 2


def test_providers_make_one_provider_per_name_on_first_use(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HD_TEST_CLIENT_SECRET", SECRET)
    identity.add_client(APP, secret=SECRET)
    providers = Providers({"m365": microsoft(identity, client_secret="${HD_TEST_CLIENT_SECRET}")})

    provider = providers.get("m365")

    assert providers.get("m365") is provider
    assert identity.hits == []  # nothing is asked of the identity platform before a token is needed
    assert identity.validate(provider.token(GRAPH_SCOPE)) is not None
    with pytest.raises(TokenError) as caught:
        providers.get("google")
    assert caught.value.permanent


# --- the refresh-token grant (Google-style) -------------------------------------------------------


@pytest.mark.parametrize("rotate", [True, False])
def test_the_refresh_token_grant_gets_tokens_and_keeps_a_rotated_refresh_token(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch, rotate: bool
) -> None:
    monkeypatch.setenv("HD_TEST_GOOGLE_SECRET", GOOGLE_SECRET)
    monkeypatch.setenv("HD_TEST_REFRESH_TOKEN", REFRESH_TOKEN)
    identity.add_client(GOOGLE_CLIENT, secret=GOOGLE_SECRET)
    identity.add_refresh_token(REFRESH_TOKEN, GOOGLE_CLIENT, "agent@example.com", rotate=rotate)
    source = source_for(refresh_config(identity))
    assert isinstance(source, RefreshTokenGrant)
    provider = TokenProvider("google", source)

    first = provider.token(GOOGLE_MAIL_SCOPE)
    second = provider.renew(GOOGLE_MAIL_SCOPE, first)

    assert first != second
    for token in (first, second):
        info = identity.validate(token)
        assert info is not None
        assert (info.user, info.client_id, info.scope) == ("agent@example.com", GOOGLE_CLIENT, GOOGLE_MAIL_SCOPE)
    one, two = identity.token_requests()
    assert one.form == {
        "grant_type": "refresh_token",
        "refresh_token": REFRESH_TOKEN,
        "client_id": GOOGLE_CLIENT,
        "client_secret": GOOGLE_SECRET,
        "scope": GOOGLE_MAIL_SCOPE,
    }
    if not rotate:
        assert two.form["refresh_token"] == REFRESH_TOKEN
        return
    assert two.form["refresh_token"] not in ("", REFRESH_TOKEN)  # the one the first answer carried
    # The rotation retired the configured refresh token: presenting it again is refused for good.
    error = refusal(source_for(refresh_config(identity)), GOOGLE_MAIL_SCOPE)
    assert (error.permanent, error.code, error.codes) == (True, "invalid_grant", (70000,))


def test_an_unknown_refresh_token_is_a_permanent_invalid_grant(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HD_TEST_GOOGLE_SECRET", GOOGLE_SECRET)
    monkeypatch.setenv("HD_TEST_REFRESH_TOKEN", "1//0a-refresh-token-nobody-issued")
    identity.add_client(GOOGLE_CLIENT, secret=GOOGLE_SECRET)

    error = refusal(source_for(refresh_config(identity)), GOOGLE_MAIL_SCOPE)

    assert (error.permanent, error.code, error.codes) == (True, "invalid_grant", (9002313,))
    assert "1//0a-refresh-token-nobody-issued" not in str(error)


@pytest.mark.parametrize("status", [503, 429])
def test_a_busy_token_endpoint_is_temporary_for_the_refresh_grant(
    identity: IdentityServer, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    monkeypatch.setenv("HD_TEST_GOOGLE_SECRET", GOOGLE_SECRET)
    monkeypatch.setenv("HD_TEST_REFRESH_TOKEN", REFRESH_TOKEN)
    identity.add_client(GOOGLE_CLIENT, secret=GOOGLE_SECRET)
    identity.add_refresh_token(REFRESH_TOKEN, GOOGLE_CLIENT, "agent@example.com")
    source = source_for(refresh_config(identity))
    identity.fail_next(1, status, "temporarily_unavailable", "The service is busy; try again later.")

    assert not refusal(source, GOOGLE_MAIL_SCOPE).permanent
    assert identity.validate(source.fetch(GOOGLE_MAIL_SCOPE).value) is not None


# --- static tokens --------------------------------------------------------------------------------


def test_a_static_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HD_TEST_STATIC_TOKEN", "ya29.a-static-token-renewed-elsewhere")
    config = OAuthConfig(kind="static", token="${HD_TEST_STATIC_TOKEN}")
    source = source_for(config)
    assert isinstance(source, StaticToken)

    assert TokenProvider("static", source).token(GOOGLE_MAIL_SCOPE) == "ya29.a-static-token-renewed-elsewhere"

    monkeypatch.delenv("HD_TEST_STATIC_TOKEN")
    error = refusal(source_for(config), GOOGLE_MAIL_SCOPE)
    assert error.permanent
    assert "HD_TEST_STATIC_TOKEN" in str(error)


# --- secrecy --------------------------------------------------------------------------------------


def test_tokens_and_secrets_never_reach_the_log_or_a_repr(
    identity: IdentityServer,
    client_certificate: ClientCertificate,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    cert_app = "8c9d0e1f-2a3b-4c5d-6e7f-8091a2b3c4d5"
    identity.add_client(cert_app, certificate=client_certificate.cert)
    identity.add_client(GOOGLE_CLIENT, secret=GOOGLE_SECRET)
    identity.add_refresh_token(REFRESH_TOKEN, GOOGLE_CLIENT, "agent@example.com", rotate=True)
    monkeypatch.setenv("HD_TEST_GOOGLE_SECRET", GOOGLE_SECRET)
    monkeypatch.setenv("HD_TEST_REFRESH_TOKEN", REFRESH_TOKEN)
    monkeypatch.setenv("HD_TEST_KEY_PASSWORD", KEY_PASSWORD)
    monkeypatch.setenv("HD_TEST_WRONG_SECRET", "a-wrong-secret-value")
    by_secret = secret_provider(identity, monkeypatch)
    by_certificate = TokenProvider(
        "m365-cert",
        source_for(
            microsoft(
                identity,
                client_id=cert_app,
                certificate=str(client_certificate.cert),
                certificate_key=str(client_certificate.encrypted_key),
                certificate_password="${HD_TEST_KEY_PASSWORD}",
            )
        ),
    )
    by_refresh = TokenProvider("google", source_for(refresh_config(identity)))

    tokens = [by_secret.token(GRAPH_SCOPE), by_certificate.token(OUTLOOK_SCOPE), by_refresh.token(GOOGLE_MAIL_SCOPE)]
    tokens.append(by_secret.renew(GRAPH_SCOPE, tokens[0]))
    tokens.append(by_refresh.renew(GOOGLE_MAIL_SCOPE, tokens[2]))
    refused = refusal(source_for(microsoft(identity, client_secret="${HD_TEST_WRONG_SECRET}")))
    access = by_secret.source.fetch(GRAPH_SCOPE)

    sent = [h.form[k] for h in identity.token_requests() for k in ("client_assertion", "refresh_token") if k in h.form]
    key_material = client_certificate.key.read_text().splitlines()[1]
    secrets = [*tokens, access.value, *sent, SECRET, GOOGLE_SECRET, REFRESH_TOKEN, KEY_PASSWORD, key_material]
    secrets.append("a-wrong-secret-value")
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert {r.name.split(".")[0] for r in caplog.records} >= {"msal", "helpdesk", "httpx", "tests"}
    for secret in secrets:
        assert secret not in logged
        assert secret not in str(refused)
        assert secret not in repr(access) and secret not in str(access)
        assert all(secret not in repr(hit) for hit in identity.hits)
    assert access.value not in repr(identity.validate(access.value))


# --- the identity server's own contract (Dovecot's introspection, raw protocol details) --------------


def test_introspection_answers_for_issued_tokens_over_each_transport(identity: IdentityServer) -> None:
    token = identity.issue("agent@example.com", scope="https://outlook.office365.com/IMAP.AccessAsUser.All")
    url = identity.introspection_url
    answers = [
        httpx.post(url, data={"token": token}),  # RFC 7662 / Dovecot introspection_mode = post
        httpx.get(url, headers={"Authorization": f"Bearer {token}"}),  # introspection_mode = auth
        httpx.get(f"{url}?token={token}"),  # introspection_mode = get, token appended to the URL
        httpx.get(f"{url}/{token}"),
        httpx.post(f"{identity.https_url}/introspect", data={"token": token}, verify=trust(identity)),
    ]

    for answer in answers:
        assert answer.status_code == 200
        body = answer.json()
        assert body["active"] is True
        assert body["email"] == body["username"] == body["sub"] == "agent@example.com"
        assert body["scope"] == "https://outlook.office365.com/IMAP.AccessAsUser.All"
        assert body["client_id"] == "test-client"
        assert 0 < body["exp"] - time.time() <= 3600
    assert {h.path for h in identity.hits} == {"/introspect"}  # the appended token is not part of the path

    expired = identity.issue("agent@example.com")
    identity.expire(expired)
    identity.revoke(token)
    for dead in (token, expired, "never-issued"):
        assert httpx.post(url, data={"token": dead}).json() == {"active": False}
        assert identity.validate(dead) is None


def test_discovery_and_token_errors_have_the_platform_layout(identity: IdentityServer) -> None:
    verify = trust(identity)
    document = f"{identity.https_url}/{identity.tenant}/v2.0/.well-known/openid-configuration"
    discovery = httpx.get(document, verify=verify)
    assert discovery.status_code == 200
    assert discovery.json()["token_endpoint"] == identity.token_url

    unknown = httpx.get(f"{identity.https_url}/fabrikam.example/v2.0/.well-known/openid-configuration", verify=verify)
    assert unknown.status_code == 400
    body = unknown.json()
    assert body["error"] == "invalid_tenant"
    assert body["error_codes"] == [90002]
    assert body["error_description"].startswith("AADSTS90002: Tenant 'fabrikam.example' not found.")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)

    identity.add_client(APP, secret=SECRET, user=MAILBOX)
    form = {"grant_type": "client_credentials", "scope": GRAPH_SCOPE}
    basic = httpx.post(identity.token_url, data=form, auth=(APP, SECRET), verify=verify)  # client_secret_basic
    assert basic.status_code == 200
    assert set(basic.json()) == {"token_type", "expires_in", "ext_expires_in", "access_token"}
    assert identity.token_requests()[-1].client_auth == "client_secret_basic"
    no_secret = httpx.post(identity.token_url, data={**form, "client_id": APP}, verify=verify)
    assert (no_secret.status_code, no_secret.json()["error_codes"]) == (401, [7000218])
    plain_token_url = f"{identity.http_url}/{identity.tenant}/oauth2/v2.0/token"  # the same routes without TLS
    plain = httpx.post(plain_token_url, data={**form, "client_id": APP, "client_secret": SECRET})
    assert plain.status_code == 200
