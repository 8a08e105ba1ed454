"""A small Microsoft Graph client for one mailbox: authentication, throttling and retries.

Every request carries a bearer token from the mailbox's token provider; a 401 renews the token once.
Outlook's limits are kept per mailbox and process-wide (the intake and the sender of one mailbox
share them): at most :data:`MAX_IN_FLIGHT` requests at once, and after a 429, 503 or 504 no request
to that mailbox before its ``Retry-After`` has passed (or, without one, an exponential backoff).
Errors come back as :class:`GraphError` with Graph's error code (``ErrorAccessDenied``).
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from helpdesk.config import MailboxConfig
from helpdesk.oauth.tokens import TokenError, TokenProvider

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4  # Outlook's concurrent requests per app and mailbox
QUOTA = 10_000  # Outlook's requests per app and mailbox ...
QUOTA_WINDOW = 600.0  # ... in any ten minutes
RETRY_STATUSES = frozenset({429, 503, 504})
MAX_ATTEMPTS = 6
NETWORK_RETRIES = 1  # a lost connection is retried once at once; then the poll or delivery fails for now
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 60.0
IMMUTABLE_IDS = 'IdType="ImmutableId"'


class GraphError(Exception):
    """Graph answered with an error, or could not be reached (``status`` 0).

    ``temporary`` is True for throttling, server errors and network failures that outlasted the
    retries; False for answers that retrying will not change (403, 404, 400 ...).
    """

    def __init__(self, status: int, code: str, message: str, *, temporary: bool) -> None:
        super().__init__(f"{status} {code}: {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.temporary = temporary


@dataclass
class Gate:
    """The per-mailbox limits, shared by every client of that mailbox in this process: requests in
    flight, the end of a Retry-After, and the ten-minute request quota (kept below, so a long
    import slows down instead of being throttled)."""

    slots: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_IN_FLIGHT))
    not_before: float = 0.0  # time.monotonic() instant before which no request may start
    lock: threading.Lock = field(default_factory=threading.Lock)
    quota: int = QUOTA
    window: float = QUOTA_WINDOW
    started: deque[float] = field(default_factory=deque)

    def hold(self, seconds: float) -> None:
        with self.lock:
            self.not_before = max(self.not_before, time.monotonic() + seconds)

    def delay(self) -> float:
        """Seconds to wait before the next request may start (Retry-After, then the quota)."""
        with self.lock:
            now = time.monotonic()
            while self.started and self.started[0] <= now - self.window:
                self.started.popleft()
            quota_wait = self.started[0] + self.window - now if len(self.started) >= self.quota else 0.0
            return max(0.0, self.not_before - now, quota_wait)

    def count(self) -> None:
        """One request starts now."""
        with self.lock:
            self.started.append(time.monotonic())


_GATES: dict[str, Gate] = {}
_GATES_LOCK = threading.Lock()


def gate_for(key: str) -> Gate:
    with _GATES_LOCK:
        if key not in _GATES:
            _GATES[key] = Gate()
        return _GATES[key]


def retry_after(response: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds or an HTTP date), if present."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_of(response: httpx.Response) -> tuple[str, str]:
    """Graph's ``{"error": {"code", "message"}}``, or the status text."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase or "Error", response.text[:200]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or "Error"), " ".join(str(error.get("message") or "").split())
    return response.reason_phrase or "Error", ""


class GraphClient:
    """Requests to one mailbox (``/users/{address}``) through Graph."""

    def __init__(
        self,
        config: MailboxConfig,
        provider: TokenProvider,
        scope: str,
        *,
        sleep: Callable[[float], None] = time.sleep,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> None:
        self.config = config
        self.provider = provider
        self.scope = scope
        self.base = config.graph_url.rstrip("/")
        self.user_path = f"/users/{quote(config.user)}"
        self.gate = gate_for(f"{self.base}|{config.user.lower()}")
        self._sleep = sleep
        self._max_attempts = max_attempts
        verify: Any = config.ca_file or config.verify_tls
        self.http = httpx.Client(timeout=config.timeout, verify=verify, follow_redirects=False)
        self.requests = 0  # sent to Graph, retries included

    def close(self) -> None:
        self.http.close()

    def url(self, path: str) -> str:
        """An absolute URL: ``path`` below the mailbox (``/messages``), or a link Graph gave us."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base}{self.user_path}{path}"

    # --- requests --------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        retry_network: bool = True,
        auth: bool = True,
    ) -> httpx.Response:
        """One request with token renewal, throttling and retries; raises :class:`GraphError`.

        ``retry_network=False`` for requests that must not be repeated blindly after a lost answer
        (sending); ``auth=False`` for pre-authenticated URLs (upload sessions)."""
        with self._exchange(
            method, path, json, content, headers, params, retry_network, stream=False, auth=auth
        ) as response:
            return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.call(method, path, **kwargs)
        if not response.content:
            return {}
        body = response.json()
        return body if isinstance(body, dict) else {}

    def download(self, path: str) -> bytes:
        """A body read in chunks as it streams in (``/messages/{id}/$value``)."""
        with self._exchange("GET", path, None, None, None, None, True, stream=True) as response:
            chunks = bytearray()
            for chunk in response.iter_bytes(65536):
                chunks += chunk
            return bytes(chunks)

    @contextmanager
    def _exchange(
        self,
        method: str,
        path: str,
        json: Any,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        retry_network: bool,
        *,
        stream: bool,
        auth: bool = True,
    ) -> Iterator[httpx.Response]:
        url = self.url(path)
        renewed = False
        network_failures = 0
        backoff = FIRST_BACKOFF
        last: GraphError | None = None
        for _attempt in range(self._max_attempts):
            token = self._token() if auth else ""
            all_headers = {"Authorization": f"Bearer {token}"} if auth else {}
            all_headers.update(headers or {})
            request = self.http.build_request(method, url, json=json, content=content, headers=all_headers,
                                              params=params)
            with self.gate.slots:
                # Waiting inside the slot: a request throttled meanwhile moves the start for everyone.
                wait = self.gate.delay()
                while wait > 0:
                    self._sleep(wait)
                    wait = self.gate.delay()
                self.requests += 1
                self.gate.count()
                try:
                    response = self.http.send(request, stream=stream)
                except httpx.TransportError as exc:
                    last = GraphError(0, type(exc).__name__, str(exc) or "connection failed", temporary=True)
                    network_failures += 1
                    if not retry_network or network_failures > NETWORK_RETRIES:
                        raise last from None
                    continue
                try:
                    if response.status_code == 401 and auth and not renewed:
                        renewed = True
                        self._renew(token)
                        continue
                    if response.status_code in RETRY_STATUSES:
                        response.read()
                        code, message = error_of(response)
                        last = GraphError(response.status_code, code, message, temporary=True)
                        delay = retry_after(response)
                        if delay is None:
                            delay, backoff = backoff, min(MAX_BACKOFF, backoff * 2)
                        self.gate.hold(delay)
                        log.info("graph %s: %s %s, waiting %.1f s", self.config.name, response.status_code, code, delay)
                        continue
                    if response.status_code >= 400:
                        response.read()
                        code, message = error_of(response)
                        raise GraphError(response.status_code, code, message, temporary=response.status_code >= 500)
                    yield response
                    return
                finally:
                    response.close()
        raise last or GraphError(401, "InvalidAuthenticationToken", "the renewed token was refused", temporary=False)

    def _token(self) -> str:
        try:
            return self.provider.token(self.scope)
        except TokenError as exc:
            raise GraphError(0, "TokenError", str(exc), temporary=not exc.permanent) from None

    def _renew(self, rejected: str) -> None:
        try:
            self.provider.renew(self.scope, rejected)
        except TokenError as exc:
            raise GraphError(0, "TokenError", str(exc), temporary=not exc.permanent) from None
