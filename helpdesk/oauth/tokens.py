"""Token providers: where a mailbox's OAuth 2.0 access tokens come from, cached and renewed.

A :class:`TokenProvider` hands out a valid access token for a scope. It keeps tokens in memory,
fetches a new one shortly before the old one expires, and renews once when a server rejects a token
(``renew(scope, rejected)``: several workers reporting the same rejected token cause one fetch).
Tokens never appear in logs or reprs. The sources behind it:

- :class:`MicrosoftClientCredentials`: the Microsoft identity platform's client-credentials grant
  through msal, with a client secret or a certificate;
- :class:`RefreshTokenGrant`: any OAuth 2.0 token endpoint and a long-lived refresh token (Google);
- :class:`StaticToken`: a fixed token.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from helpdesk.config import OAuthConfig, resolve_secret

log = logging.getLogger(__name__)

OAuthProtocol = Literal["graph", "imap", "pop3", "smtp", "ews"]
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
OUTLOOK_SCOPE = "https://outlook.office365.com/.default"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
MICROSOFT_CLOUDS = frozenset(
    {"https://login.microsoftonline.com", "https://login.microsoftonline.us", "https://login.chinacloudapi.cn"}
)
RENEW_MARGIN = 300.0  # seconds before expiry at which a cached token is replaced
DEFAULT_LIFETIME = 3600.0  # when a token endpoint does not say


class TokenError(Exception):
    """No token could be obtained. ``permanent`` when retrying cannot help without a config change.

    ``code`` is the OAuth ``error`` (``invalid_client``), ``codes`` Microsoft's AADSTS numbers.
    """

    def __init__(
        self, message: str, *, permanent: bool, code: str | None = None, codes: tuple[int, ...] = ()
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.codes = codes


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # time.time() instant

    def __str__(self) -> str:
        return f"<access token, expires {time.strftime('%H:%M:%S', time.gmtime(self.expires_at))} UTC>"


class TokenSource(Protocol):
    def fetch(self, scope: str) -> AccessToken:
        """A new token for ``scope`` from the issuer (no caching); raises :class:`TokenError`."""
        ...


SecretResolver = Callable[[str | None], str | None]


def _secret(resolve: SecretResolver, reference: str | None, where: str) -> str | None:
    try:
        return resolve(reference)
    except (KeyError, ValueError) as exc:
        raise TokenError(f"{where}: {exc.args[0] if exc.args else exc}", permanent=True) from None


def default_scope(config: OAuthConfig, protocol: OAuthProtocol) -> str:
    """The scope a provider asks for when talking ``protocol``, unless the config names one."""
    if config.scope is not None:
        return config.scope
    if config.kind == "microsoft":
        return GRAPH_SCOPE if protocol == "graph" else OUTLOOK_SCOPE
    return GOOGLE_MAIL_SCOPE


def _tls_verify(config: OAuthConfig) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for ``config``: its CA file when set (as a context: httpx deprecates a path), else on/off."""
    if not config.ca_file:
        return config.verify_tls
    try:
        return ssl.create_default_context(cafile=config.ca_file)
    except OSError as exc:  # a missing file, or one without a certificate
        raise TokenError(f"ca_file {config.ca_file}: {exc}", permanent=True) from None


def _discovery_error(exc: BaseException, where: str) -> TokenError | None:
    """The identity platform's answer inside msal's ValueError about a refused authority, if it has one.

    msal raises ``ValueError("Unable to get authority configuration ...")`` while handling its own
    ``ValueError("OIDC Discovery failed on URL. HTTP status: 400, Error: {json body}")``: the body
    carries ``error`` and ``error_codes`` (``AADSTS90002`` for an unknown tenant).
    """
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        start = text.find("{")
        if start >= 0:
            try:
                body, _ = json.JSONDecoder().raw_decode(text[start:])
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("error"):
                status = re.search(r"HTTP status: (\d{3})", text)
                return _oauth_error(int(status.group(1)) if status else 400, body, where)
        seen = seen.__cause__ or seen.__context__
    return None


def _oauth_error(status: int, body: Mapping[str, Any], where: str) -> TokenError:
    """A token endpoint's error answer (RFC 6749 section 5.2, with Microsoft's AADSTS codes)."""
    code = str(body.get("error") or f"HTTP {status}")
    description = " ".join(str(body.get("error_description") or "").split())
    codes = tuple(int(c) for c in body.get("error_codes") or () if isinstance(c, int))
    permanent = 400 <= status < 500 and status not in (408, 429)
    text = f"{where}: {code}" + (f": {description}" if description else "")
    return TokenError(text, permanent=permanent, code=code, codes=codes)


class StaticToken:
    def __init__(self, reference: str, secret: SecretResolver = resolve_secret, lifetime: float = DEFAULT_LIFETIME):
        self._reference = reference
        self._secret = secret
        self._lifetime = lifetime

    def fetch(self, scope: str) -> AccessToken:
        value = _secret(self._secret, self._reference, "static token") or ""
        return AccessToken(value, time.time() + self._lifetime)


class RefreshTokenGrant:
    """``grant_type=refresh_token`` against ``token_url`` (RFC 6749 section 6); keeps a rotated refresh token."""

    def __init__(self, config: OAuthConfig, secret: SecretResolver = resolve_secret) -> None:
        self.config = config
        self._secret = secret
        self._rotated: str | None = None

    def fetch(self, scope: str) -> AccessToken:
        cfg = self.config
        refresh = self._rotated or _secret(self._secret, cfg.refresh_token, "refresh_token")
        form = {"grant_type": "refresh_token", "refresh_token": refresh or "", "client_id": cfg.client_id or ""}
        client_secret = _secret(self._secret, cfg.client_secret, "client_secret")
        if client_secret is not None:
            form["client_secret"] = client_secret
        if scope:
            form["scope"] = scope
        where = f"token endpoint {cfg.token_url}"
        verify = _tls_verify(cfg)
        try:
            response = httpx.post(cfg.token_url or "", data=form, timeout=cfg.timeout, verify=verify)
        except httpx.HTTPError as exc:
            raise TokenError(f"{where}: {type(exc).__name__}: {exc}", permanent=False) from None
        body = _json(response)
        if response.status_code != 200 or "access_token" not in body:
            raise _oauth_error(response.status_code, body, where)
        if body.get("refresh_token"):
            self._rotated = str(body["refresh_token"])
        lifetime = float(body.get("expires_in") or DEFAULT_LIFETIME)
        return AccessToken(str(body["access_token"]), time.time() + lifetime)


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"error_description": response.text[:200]}
    return body if isinstance(body, dict) else {}


class _MsalHttpClient:
    """msal's ``HttpClient`` interface over httpx, which keeps the configured ``verify`` whatever the environment.

    (msal's default requests session lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override its ``verify``,
    psf/requests#3829, losing ``ca_file`` and ``verify_tls``.) msal hands some form values as bytes
    (the signed client assertion), which httpx would send as ``b'...'``: they are decoded first.
    """

    def __init__(self, config: OAuthConfig) -> None:
        self._client = httpx.Client(verify=_tls_verify(config), timeout=config.timeout)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> httpx.Response:
        if isinstance(data, Mapping):
            form = {k: v.decode() if isinstance(v, bytes) else v for k, v in data.items()}
            return self._client.post(url, params=params, data=form, headers=headers, **kwargs)
        return self._client.post(url, params=params, content=data, headers=headers, **kwargs)

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> httpx.Response:
        return self._client.get(url, params=params, headers=headers, **kwargs)

    def close(self) -> None:
        self._client.close()


class MicrosoftClientCredentials:
    """The client-credentials grant of the Microsoft identity platform, through msal."""

    def __init__(self, config: OAuthConfig, secret: SecretResolver = resolve_secret) -> None:
        self.config = config
        self._secret = secret
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def authority(self) -> str:
        return f"{self.config.authority_host.rstrip('/')}/{self.config.tenant}"

    def _credential(self) -> str | dict[str, str]:
        cfg = self.config
        if cfg.client_secret is not None:
            return _secret(self._secret, cfg.client_secret, "client_secret") or ""
        assert cfg.certificate is not None
        try:
            cert_pem = Path(cfg.certificate).read_text()
            key_pem = Path(cfg.certificate_key).read_text() if cfg.certificate_key else cert_pem
        except OSError as exc:
            raise TokenError(f"cannot read the certificate: {exc}", permanent=True) from None
        if "PRIVATE KEY" not in key_pem:
            raise TokenError(
                f"no private key in {cfg.certificate_key or cfg.certificate} (set certificate_key)", permanent=True
            )
        start = cert_pem.find("-----BEGIN CERTIFICATE-----")
        end = cert_pem.find("-----END CERTIFICATE-----")
        if start < 0 or end < 0:
            raise TokenError(f"no certificate in {cfg.certificate}", permanent=True)
        credential = {"private_key": key_pem, "public_certificate": cert_pem[start : end + 25]}
        passphrase = _secret(self._secret, cfg.certificate_password, "certificate_password")
        if passphrase is not None:
            credential["passphrase"] = passphrase
        return credential

    def _application(self) -> Any:
        if self._app is None:
            import msal  # imported on first use: msal pulls in requests and its dependencies

            cfg = self.config
            # Outside the try below: their TokenErrors (an unset variable, an unreadable file) are permanent.
            credential = self._credential()
            http = _MsalHttpClient(cfg)
            try:
                self._app = msal.ConfidentialClientApplication(
                    cfg.client_id,
                    client_credential=credential,
                    authority=self.authority,
                    http_client=http,
                    token_cache=msal.TokenCache(),
                    # Instance discovery asks login.microsoftonline.com about the host: only for Microsoft's own.
                    instance_discovery=None if cfg.authority_host.rstrip("/") in MICROSOFT_CLOUDS else False,
                )
            except ValueError as exc:  # a key msal cannot load, an authority it refuses (unknown tenant)
                http.close()
                raise _discovery_error(exc, self.authority) or TokenError(f"msal: {exc}", permanent=True) from None
            except Exception as exc:  # connection errors and 5xx answers during discovery
                http.close()
                raise TokenError(f"{self.authority}: {type(exc).__name__}: {exc}", permanent=False) from None
        return self._app

    def fetch(self, scope: str) -> AccessToken:
        with self._lock:
            app = self._application()
            # A snapshot: search() is a generator over the cache that remove_at() changes.
            for stale in list(app.token_cache.search(app.token_cache.CredentialType.ACCESS_TOKEN)):
                app.token_cache.remove_at(stale)
            try:
                result = app.acquire_token_for_client(scopes=[scope])
            except ValueError as exc:
                raise TokenError(f"msal: {exc}", permanent=True) from None
            except Exception as exc:  # connection errors, 5xx answers (msal raises for those)
                raise TokenError(f"{self.authority}: {type(exc).__name__}: {exc}", permanent=False) from None
        if not isinstance(result, dict) or "access_token" not in result:
            body = result if isinstance(result, dict) else {}
            transient = str(body.get("error")) in ("temporarily_unavailable", "server_error")
            error = _oauth_error(400 if not transient else 503, body, f"{self.authority}")
            raise error
        lifetime = float(result.get("expires_in") or DEFAULT_LIFETIME)
        return AccessToken(str(result["access_token"]), time.time() + lifetime)


class TokenProvider:
    """Cached tokens per scope from one source; thread-safe."""

    def __init__(self, name: str, source: TokenSource, margin: float = RENEW_MARGIN,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.source = source
        self.margin = margin
        self._clock = clock
        self._tokens: dict[str, AccessToken] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    def token(self, scope: str) -> str:
        """A token for ``scope`` valid for at least ``margin`` more seconds."""
        with self._lock:
            cached = self._tokens.get(scope)
            if cached is not None and cached.expires_at - self.margin > self._clock():
                return cached.value
            return self._fetch(scope)

    def renew(self, scope: str, rejected: str) -> str:
        """A server refused ``rejected``: fetch a new token unless another caller already did."""
        with self._lock:
            cached = self._tokens.get(scope)
            fresh = cached is not None and cached.expires_at - self.margin > self._clock()
            if cached is not None and fresh and cached.value != rejected:
                return cached.value
            return self._fetch(scope)

    def _fetch(self, scope: str) -> str:
        token = self.source.fetch(scope)
        self.fetches += 1
        self._tokens[scope] = token
        log.info("oauth %s: new token for %s, %s", self.name, scope, token)
        return token.value


def source_for(config: OAuthConfig, secret: SecretResolver = resolve_secret) -> TokenSource:
    if config.kind == "microsoft":
        return MicrosoftClientCredentials(config, secret)
    if config.kind == "refresh_token":
        return RefreshTokenGrant(config, secret)
    assert config.token is not None
    return StaticToken(config.token, secret)


class Providers:
    """One :class:`TokenProvider` per configured provider, made on first use and shared by every user."""

    def __init__(self, configs: Mapping[str, OAuthConfig], secret: SecretResolver = resolve_secret) -> None:
        self._configs = dict(configs)
        self._secret = secret
        self._made: dict[str, TokenProvider] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> TokenProvider:
        with self._lock:
            if name not in self._made:
                if name not in self._configs:
                    raise TokenError(f"no oauth provider named {name!r}", permanent=True)
                self._made[name] = TokenProvider(name, source_for(self._configs[name], self._secret))
            return self._made[name]

    def config(self, name: str) -> OAuthConfig:
        return self._configs[name]
