"""A local OAuth 2.0 authorization server shaped like the Microsoft identity platform, for tests.

``IdentityServer`` answers what msal and plain OAuth 2.0 clients ask of ``login.microsoftonline.com``:

- ``GET /{tenant}/v2.0/.well-known/openid-configuration``: the OpenID discovery document msal reads
  (``authorization_endpoint``, ``token_endpoint``, ``device_authorization_endpoint``, ``issuer``...);
  an unknown tenant gets the service's ``AADSTS90002`` answer.
- ``POST /{tenant}/oauth2/v2.0/token``: the client-credentials grant with a client secret (form field
  or HTTP Basic) or a certificate-signed client assertion (RFC 7523, verified with the registered
  certificate's public key), and the refresh-token grant (RFC 6749 section 6), with optional
  refresh-token rotation. Refusals carry the service's error layout: ``error``,
  ``error_description`` (``AADSTSnnn: ...`` plus trace lines), ``error_codes``, ``timestamp``,
  ``trace_id``, ``correlation_id``, ``error_uri``.
- ``/introspect``: RFC 7662 token introspection (``token`` form field, ``Authorization: Bearer``,
  ``?token=`` or a token appended to the path), which is how Dovecot's oauth2 passdb checks the
  tokens this server issued (``active``, ``email``, ``username``).

The same routes are served over HTTPS (``https_url``, a self-signed certificate for 127.0.0.1 and
localhost; clients trust ``ca_file``) and plain HTTP (``http_url``). Each listener runs a
``ThreadingHTTPServer`` in a background thread. Every request is recorded in ``hits``; the log shows
method, path and status only, never a form value, query string or header::

    with IdentityServer(tmp_path) as idp:
        idp.add_client("app", secret="s3cret", user="helpdesk@contoso.example")
        ...  # OAuthConfig(authority_host=idp.authority_host, ca_file=str(idp.ca_file), ...)
        assert idp.validate(token) is not None
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import socket
import socketserver
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.servers.certs import make_self_signed
from tests.servers.running import Running

log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DISCOVERY_SUFFIX = "/v2.0/.well-known/openid-configuration"
TOKEN_SUFFIX = "/oauth2/v2.0/token"
INTROSPECT_PATH = "/introspect"
# Form fields whose values are credentials; ``Hit`` shows them masked.
SECRET_FIELDS = frozenset(
    {"client_secret", "client_assertion", "refresh_token", "token", "access_token", "assertion", "password"}
)


@dataclass
class TokenInfo:
    """An access token the server issued."""

    token: str = field(repr=False)
    client_id: str
    user: str | None
    scope: str
    expires_at: float  # time.time() instant
    revoked: bool = False


@dataclass(repr=False)
class Hit:
    """One request the server received: the form holds the body fields and the query parameters."""

    method: str
    path: str  # without the query string (a token appended to /introspect/ is moved to form["token"])
    form: dict[str, str]
    at: float  # time.monotonic()
    client_auth: str = ""  # token endpoint: client_secret_post, client_secret_basic, private_key_jwt or none

    def __repr__(self) -> str:
        shown = {k: ("***" if k in SECRET_FIELDS else v) for k, v in self.form.items()}
        return f"Hit({self.method} {self.path} {shown} client_auth={self.client_auth!r})"


@dataclass
class _Client:
    client_id: str
    secret: str | None
    certificate: x509.Certificate | None
    user: str | None

    @property
    def confidential(self) -> bool:
        return self.secret is not None or self.certificate is not None


@dataclass
class _RefreshToken:
    client_id: str
    user: str
    rotate: bool


@dataclass
class _Failure:
    status: int
    error: str
    description: str
    codes: list[int]
    retry_after: int | None


@dataclass
class _Request:
    method: str
    path: str
    form: dict[str, str]
    headers: dict[str, str]  # lower-case names
    base: str  # scheme://host:port of the listener


@dataclass
class _Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class _Refusal(Exception):
    """An OAuth error answer, raised from deep in request handling."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.body.get("error"))
        self.answer = answer


def _thumbprint(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def oauth_error(
    status: int, error: str, description: str, codes: list[int], retry_after: int | None = None
) -> _Answer:
    """The Microsoft identity platform's error body: RFC 6749 section 5.2 plus its tracing fields."""
    stamp = _now_stamp()
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    body: dict[str, Any] = {
        "error": error,
        "error_description": (
            f"{description}\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {stamp}"
        ),
        "error_codes": list(codes),
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
    }
    if codes:
        body["error_uri"] = f"https://login.microsoftonline.com/error?code={codes[0]}"
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return _Answer(status, body, headers)


def _missing(name: str) -> _Refusal:
    return _Refusal(
        oauth_error(
            400, "invalid_request", f"AADSTS900144: The request body must contain the following parameter: '{name}'.",
            [900144],
        )
    )


class _Listener(ThreadingHTTPServer):
    """One listening socket of the server; TLS (when ``context`` is set) is negotiated per connection."""

    daemon_threads = True

    def __init__(self, port: int, identity: IdentityServer, context: ssl.SSLContext | None) -> None:
        self.identity = identity
        self.context = context
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)
        self.base_url = f"{'https' if context else 'http'}://127.0.0.1:{self.server_address[1]}"

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host name up in DNS; the address is all a test needs.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's own thread: a slow TLS handshake holds up nobody else."""
        conn: socket.socket = request
        if self.context is not None:
            conn.settimeout(10)
            try:
                conn = self.context.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                log.debug("identity server: TLS handshake failed: %s", type(exc).__name__)
                return
        with self.connections_lock:
            self.connections.add(conn)
        try:
            super().finish_request(conn, client_address)
        except OSError:
            pass  # the client went away, or stop() closed the connection
        finally:
            with self.connections_lock:
                self.connections.discard(conn)
            if conn is not request:
                conn.close()

    def close_connections(self) -> None:
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as requests and httpx expect
    timeout = 30  # an idle keep-alive connection ends after this
    server: _Listener

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """The standard request line carries query strings, i.e. tokens: ``_dispatch`` logs instead."""

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        split = urlsplit(self.path)
        form = dict(parse_qsl(split.query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type") or "application/x-www-form-urlencoded"
        if body and "x-www-form-urlencoded" in content_type:
            form.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        request = _Request(
            method=method,
            path=split.path,
            form=form,
            headers={k.lower(): v for k, v in self.headers.items()},
            base=self.server.base_url,
        )
        answer = self.server.identity._dispatch(request)
        data = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store, no-cache")
        self.send_header("Pragma", "no-cache")
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class IdentityServer(Running):
    """A Microsoft-identity-platform-shaped OAuth 2.0 server on 127.0.0.1; see the module docstring.

    ``lifetime`` is the ``expires_in`` of tokens issued from now on. Ports are picked at the first
    ``start()`` and kept across ``stop()``/``start()``.
    """

    def __init__(self, directory: Path, tenant: str = "contoso.onmicrosoft.com") -> None:
        self.directory = Path(directory)
        self.tenant = tenant
        self.lifetime = 3600
        self.hits: list[Hit] = []
        self.https_url = ""
        self.http_url = ""
        self.cert_file, self.key_file = make_self_signed(self.directory, "identity")
        self.ca_file: Path = self.cert_file
        self._lock = threading.RLock()
        self._clients: dict[str, _Client] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._retired_refresh_tokens: set[str] = set()
        self._tokens: dict[str, TokenInfo] = {}
        self._failures: deque[_Failure] = deque()
        self._ports = (0, 0)
        self._listeners: list[tuple[_Listener, threading.Thread]] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on HTTPS and HTTP (free ports the first time, the same ports afterwards)."""
        if self._listeners:
            return
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        secure = _Listener(self._ports[0], self, context)
        plain = _Listener(self._ports[1], self, None)
        self._ports = (secure.server_address[1], plain.server_address[1])
        self.https_url, self.http_url = secure.base_url, plain.base_url
        for listener in (secure, plain):
            thread = threading.Thread(
                target=listener.serve_forever, kwargs={"poll_interval": 0.05}, name="identity-server", daemon=True
            )
            thread.start()
            self._listeners.append((listener, thread))

    def stop(self) -> None:
        """Stop listening and drop open connections; clients, tokens and hits are kept."""
        listeners, self._listeners = self._listeners, []
        for listener, thread in listeners:
            listener.shutdown()
            listener.server_close()
            listener.close_connections()
            thread.join(5)

    # --- addresses -------------------------------------------------------------------------------

    @property
    def authority_host(self) -> str:
        """What ``OAuthConfig.authority_host`` names: msal builds ``{authority_host}/{tenant}`` from it."""
        return self.https_url

    @property
    def token_url(self) -> str:
        return f"{self.https_url}/{self.tenant}{TOKEN_SUFFIX}"

    @property
    def introspection_url(self) -> str:
        return f"{self.http_url}{INTROSPECT_PATH}"

    # --- registrations ---------------------------------------------------------------------------

    def add_client(
        self, client_id: str, *, secret: str | None = None, certificate: Path | None = None, user: str | None = None
    ) -> None:
        """Register an application; ``certificate`` is a PEM file whose public key verifies its assertions.

        Tokens issued to it by the client-credentials grant belong to ``user`` (None: app-only).
        A client with neither secret nor certificate is a public client (refresh-token grant only).
        """
        cert = x509.load_pem_x509_certificate(Path(certificate).read_bytes()) if certificate is not None else None
        with self._lock:
            self._clients[client_id] = _Client(client_id, secret, cert, user)

    def add_refresh_token(self, refresh_token: str, client_id: str, user: str, *, rotate: bool = False) -> None:
        """Accept ``refresh_token`` from ``client_id`` for ``user``.

        An unregistered ``client_id`` is registered as a public client. With ``rotate`` each use
        answers a new refresh token (with the same rotation) and retires the one presented.
        """
        with self._lock:
            self._clients.setdefault(client_id, _Client(client_id, None, None, None))
            self._refresh_tokens[refresh_token] = _RefreshToken(client_id, user, rotate)
            self._retired_refresh_tokens.discard(refresh_token)

    def issue(
        self, user: str | None, client_id: str = "test-client", scope: str = "", lifetime: int | None = None
    ) -> str:
        """A new access token, as if the token endpoint had issued it."""
        token = "eyJ0" + secrets.token_urlsafe(48)  # opaque to clients; shaped like the service's JWTs
        with self._lock:
            expires_at = time.time() + (self.lifetime if lifetime is None else lifetime)
            self._tokens[token] = TokenInfo(token, client_id, user, scope, expires_at)
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._tokens[token].revoked = True

    def expire(self, token: str) -> None:
        """Make ``token`` past its expiry."""
        with self._lock:
            self._tokens[token].expires_at = time.time() - 1

    def validate(self, token: str) -> TokenInfo | None:
        """The token's record when it is known, not revoked and not expired; else None."""
        with self._lock:
            info = self._tokens.get(token)
            if info is None or info.revoked or info.expires_at <= time.time():
                return None
            return dataclasses.replace(info)

    def fail_next(
        self,
        count: int,
        status: int,
        error: str,
        description: str,
        codes: list[int] | None = None,
        *,
        retry_after: int | None = None,
    ) -> None:
        """Answer the next ``count`` token-endpoint requests with this OAuth error (and ``Retry-After``)."""
        with self._lock:
            for _ in range(count):
                self._failures.append(_Failure(status, error, description, list(codes or []), retry_after))

    def token_requests(self) -> list[Hit]:
        """The hits on a token endpoint, oldest first."""
        with self._lock:
            return [h for h in self.hits if h.method == "POST" and h.path.endswith(TOKEN_SUFFIX)]

    # --- request handling ------------------------------------------------------------------------

    def _dispatch(self, request: _Request) -> _Answer:
        """Route one request, record it as a hit and log it (method, path, status)."""
        path = request.path
        if path.startswith(INTROSPECT_PATH + "/") and len(path) > len(INTROSPECT_PATH) + 1:
            request.form.setdefault("token", unquote(path[len(INTROSPECT_PATH) + 1 :]))
            path = request.path = INTROSPECT_PATH
        hit = Hit(request.method, path, dict(request.form), time.monotonic())
        with self._lock:
            self.hits.append(hit)
        try:
            answer = self._route(request, hit)
        except _Refusal as refusal:
            answer = refusal.answer
        except Exception:
            log.exception("identity server: %s %s failed", request.method, path)
            answer = oauth_error(500, "server_error", "AADSTS90100: Internal server error.", [90100])
        log.debug("identity server: %s %s%s -> %d", request.method, request.base, path, answer.status)
        return answer

    def _route(self, request: _Request, hit: Hit) -> _Answer:
        path, method = request.path, request.method
        if path == INTROSPECT_PATH and method in ("GET", "POST"):
            return self._introspect(request)
        if path.endswith(DISCOVERY_SUFFIX) and method == "GET":
            return self._discovery(request.base, path[1 : -len(DISCOVERY_SUFFIX)])
        if path.endswith(TOKEN_SUFFIX) and method == "POST":
            return self._token(request, path[1 : -len(TOKEN_SUFFIX)], hit)
        return _Answer(404, {"error": "not_found", "error_description": f"no route for {method} {path}"})

    def _unknown_tenant(self, tenant: str, error: str) -> _Answer:
        return oauth_error(
            400,
            error,
            f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
            "signing into the correct cloud. Check with your subscription administrator, this may happen if there "
            "are no active subscriptions for the tenant.",
            [90002],
        )

    def _discovery(self, base: str, tenant: str) -> _Answer:
        """The OpenID Provider Configuration of the v2.0 endpoint, as the service publishes it."""
        if tenant != self.tenant:
            return self._unknown_tenant(tenant, "invalid_tenant")
        root = f"{base}/{tenant}"
        return _Answer(
            200,
            {
                "token_endpoint": f"{root}{TOKEN_SUFFIX}",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post", "private_key_jwt", "client_secret_basic"
                ],
                "jwks_uri": f"{root}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{root}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{base}/oidc/userinfo",
                "authorization_endpoint": f"{root}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{root}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{root}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub", "iss", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username", "name",
                    "tid", "ver", "at_hash", "c_hash", "email",
                ],
                "kerberos_endpoint": f"{root}/kerberos",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            },
        )

    def _token(self, request: _Request, tenant: str, hit: Hit) -> _Answer:
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            return oauth_error(failure.status, failure.error, failure.description, failure.codes, failure.retry_after)
        if tenant != self.tenant:
            return self._unknown_tenant(tenant, "invalid_request")
        grant = request.form.get("grant_type")
        if not grant:
            raise _missing("grant_type")
        if grant not in ("client_credentials", "refresh_token"):
            return oauth_error(
                400, "unsupported_grant_type",
                f"AADSTS70003: The app requested an unsupported grant type '{grant}'.", [70003],
            )
        client, hit.client_auth = self._authenticate(request)
        if grant == "client_credentials":
            return self._client_credentials(request.form, client)
        return self._refresh(request.form, client)

    def _authenticate(self, request: _Request) -> tuple[_Client, str]:
        """The client and how it proved itself (RFC 6749 section 2.3, RFC 7523 section 2.2)."""
        form = request.form
        basic_id, basic_secret = _basic_credentials(request.headers.get("authorization", ""))
        client_id = form.get("client_id") or basic_id
        if not client_id:
            raise _missing("client_id")
        with self._lock:
            client = self._clients.get(client_id)
        if client is None:
            raise _Refusal(
                oauth_error(
                    400, "unauthorized_client",
                    f"AADSTS700016: Application with identifier '{client_id}' was not found in the directory "
                    f"'{self.tenant}'. This can happen if the application has not been installed by the administrator "
                    "of the tenant or consented to by any user in the tenant. You may have sent your authentication "
                    "request to the wrong tenant.",
                    [700016],
                )
            )
        if "client_assertion" in form or "client_assertion_type" in form:
            self._check_assertion(client, form, f"{request.base}{request.path}")
            return client, "private_key_jwt"
        secret = form.get("client_secret")
        method = "client_secret_post"
        if secret is None and basic_secret is not None:
            secret, method = basic_secret, "client_secret_basic"
        if secret is not None:
            if client.secret is None or not hmac.compare_digest(secret.encode(), client.secret.encode()):
                raise _Refusal(
                    oauth_error(
                        401, "invalid_client",
                        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request "
                        "is the client secret value, not the client secret ID, for a secret added to app "
                        f"'{client_id}'.",
                        [7000215],
                    )
                )
            return client, method
        if client.confidential:
            raise _no_credential()
        return client, "none"

    def _check_assertion(self, client: _Client, form: dict[str, str], audience: str) -> None:
        """Verify a private_key_jwt assertion as the service does; raise a refusal when it fails."""
        if form.get("client_assertion_type") != JWT_BEARER:
            raise _Refusal(
                oauth_error(
                    400, "invalid_request",
                    f"AADSTS50027: JWT token is invalid or malformed: client_assertion_type must be {JWT_BEARER}.",
                    [50027],
                )
            )
        assertion = form.get("client_assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise _Refusal(
                oauth_error(400, "invalid_request", "AADSTS50027: JWT token is invalid or malformed.", [50027])
            ) from None
        cert = client.certificate
        if cert is None or not _thumbprint_matches(header, cert):
            used = header.get("x5t#S256") or header.get("x5t") or "none"
            raise _Refusal(
                oauth_error(
                    401, "invalid_client",
                    "AADSTS700027: Client assertion contains an invalid signature. [Reason - The key was not found., "
                    f"Thumbprint of key used by client: '{used}', Please visit the Azure Portal, Graph Explorer or "
                    f"directly use MS Graph to see configured keys for app Id '{client.client_id}'.]",
                    [700027],
                )
            )
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=["PS256", "RS256"],
                audience=audience,
                options={"require": ["exp", "iss", "sub", "aud"]},
            )
        except jwt.InvalidSignatureError:
            raise _Refusal(
                oauth_error(
                    401, "invalid_client",
                    "AADSTS700027: Client assertion contains an invalid signature. [Reason - The provided signature "
                    "value did not match the expected signature value.]",
                    [700027],
                )
            ) from None
        except jwt.ExpiredSignatureError:
            raise _Refusal(
                oauth_error(
                    401, "invalid_client",
                    f"AADSTS700024: Client assertion is not within its valid time range. Current time: {_now_stamp()}.",
                    [700024],
                )
            ) from None
        except jwt.InvalidAudienceError:
            raise _Refusal(
                oauth_error(
                    401, "invalid_client",
                    f"AADSTS50027: JWT token is invalid or malformed: the audience must be the token endpoint "
                    f"{audience}.",
                    [50027],
                )
            ) from None
        except jwt.PyJWTError as exc:
            raise _Refusal(
                oauth_error(
                    401, "invalid_client", f"AADSTS50027: JWT token is invalid or malformed: {exc}.", [50027]
                )
            ) from None
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise _Refusal(
                oauth_error(
                    401, "invalid_client",
                    "AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.",
                    [700021],
                )
            )

    def _client_credentials(self, form: dict[str, str], client: _Client) -> _Answer:
        """RFC 6749 section 4.4 as the platform runs it: app permissions only, so ``{resource}/.default``."""
        if not client.confidential:
            raise _no_credential()
        scope = form.get("scope")
        if not scope:
            raise _missing("scope")
        if not all(s.endswith("/.default") for s in scope.split()):
            return oauth_error(
                400, "invalid_scope",
                f"AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must have "
                "a scope value with /.default suffixed to the resource identifier (application ID URI).",
                [1002012],
            )
        lifetime = self.lifetime
        token = self.issue(client.user, client.client_id, scope, lifetime)
        return _Answer(
            200,
            {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token},
        )

    def _refresh(self, form: dict[str, str], client: _Client) -> _Answer:
        """RFC 6749 section 6: a new access token for the refresh token's user, maybe a new refresh token."""
        presented = form.get("refresh_token")
        if not presented:
            raise _missing("refresh_token")
        with self._lock:
            grant = self._refresh_tokens.get(presented)
            retired = presented in self._retired_refresh_tokens
        if grant is None and not retired:
            return oauth_error(
                400, "invalid_grant", "AADSTS9002313: Invalid request. Request is malformed or invalid.", [9002313]
            )
        if grant is None or grant.client_id != client.client_id:
            return oauth_error(
                400, "invalid_grant",
                "AADSTS70000: The provided value for the 'refresh_token' is not valid. The refresh token was issued "
                "to another client or has been redeemed or revoked.",
                [70000],
            )
        scope = form.get("scope", "")
        lifetime = self.lifetime
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.issue(grant.user, client.client_id, scope, lifetime),
        }
        if grant.rotate:
            renewed = secrets.token_urlsafe(48)
            with self._lock:
                self._refresh_tokens.pop(presented, None)
                self._retired_refresh_tokens.add(presented)
                self._refresh_tokens[renewed] = grant
            body["refresh_token"] = renewed
        return _Answer(200, body)

    def _introspect(self, request: _Request) -> _Answer:
        """RFC 7662: whether a token is active, and whose it is (``email``/``username`` for Dovecot)."""
        token = request.form.get("token") or request.form.get("access_token")
        if not token:
            scheme, _, value = request.headers.get("authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            return _Answer(400, {"error": "invalid_request", "error_description": "the token parameter is missing"})
        info = self.validate(token)
        if info is None:
            return _Answer(200, {"active": False})
        body: dict[str, Any] = {
            "active": True,
            "sub": info.user or info.client_id,
            "scope": info.scope,
            "exp": int(info.expires_at),
            "client_id": info.client_id,
            "token_type": "Bearer",
        }
        if info.user is not None:
            body["email"] = body["username"] = info.user
        return _Answer(200, body)


def _no_credential() -> _Refusal:
    return _Refusal(
        oauth_error(
            401, "invalid_client",
            "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
            [7000218],
        )
    )


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    """client_id and secret from ``Authorization: Basic`` (each form-urlencoded first, RFC 6749 2.3.1)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:
        return None, None
    user, sep, password = decoded.partition(":")
    return (unquote_plus(user), unquote_plus(password)) if sep else (None, None)


def _thumbprint_matches(header: dict[str, Any], cert: x509.Certificate) -> bool:
    """Whether the assertion names ``cert`` by its SHA-256 (``x5t#S256``) or SHA-1 (``x5t``) thumbprint."""
    der = cert.public_bytes(Encoding.DER)
    if "x5t#S256" in header:
        return str(header["x5t#S256"]).rstrip("=") == _thumbprint(hashlib.sha256(der).digest())
    if "x5t" in header:
        return str(header["x5t"]).rstrip("=") == _thumbprint(hashlib.sha1(der).digest())
    return True  # no key hint: the signature check decides
