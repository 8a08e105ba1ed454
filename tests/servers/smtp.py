"""A real, controllable SMTP server for tests, and a server that never answers.

``SmtpSink`` runs aiosmtpd on 127.0.0.1 in its own thread (aiosmtpd's ``Controller``), records every
accepted message with its envelope, and can be told to refuse recipients or DATA, to hang up in the
middle of a transaction, to require AUTH, and to speak STARTTLS or implicit TLS with a self-signed
certificate (``cert_path`` is the CA file clients must trust). The port is picked at the first
``start()`` and kept, so ``restart()`` brings the server back where clients expect it::

    with SmtpSink(tls="starttls", require_auth=("agent", "secret")) as sink:
        ...  # send to sink.host:sink.port
        [message] = sink.wait_for(1)

With ``check_token`` the sink requires AUTH with an OAuth 2.0 bearer token (SASL XOAUTH2 or
OAUTHBEARER, initial response on the AUTH line or after ``334``) and asks ``check_token(user,
token)`` whether to take it. A refused token is answered as Gmail and Exchange Online do: a ``334``
challenge holding the base64 JSON error (``{"status":"401","schemes":"bearer","scope":...}``;
OAUTHBEARER: ``"status":"invalid_token"``, RFC 7628), and after the client's answer to it
``535 5.7.3 Authentication unsuccessful``. Every attempt is recorded in ``token_logins`` (never
the token). Such a sink reads lines of up to 12288 octets, as RFC 4954 asks of AUTH exchanges.

``SilentServer`` accepts TCP connections and never sends a byte: a hung server for timeout tests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.policy
import errno
import itertools
import json
import logging
import shutil
import socket
import ssl
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from tests.servers.certs import make_self_signed
from tests.servers.running import Running

TlsKind = Literal["none", "starttls", "implicit"]
TokenCheck = Callable[[str, str], bool]  # (user, token) -> accepted
AUTH_LINE_LIMIT = 12288  # RFC 4954 section 4: what a server must take in an AUTH exchange
TOKEN_REFUSED = "535 5.7.3 Authentication unsuccessful"

log = logging.getLogger(__name__)


def _not_login_data_notice(record: logging.LogRecord) -> bool:
    """aiosmtpd warns about its own deprecated attribute on every successful AUTH; drop that."""
    return not record.getMessage().startswith("Session.login_data is deprecated")


def _quiet_aiosmtpd() -> None:
    mail_log = logging.getLogger("mail.log")
    mail_log.setLevel(logging.WARNING)
    if _not_login_data_notice not in mail_log.filters:
        mail_log.addFilter(_not_login_data_notice)


@dataclass
class Received:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exactly the bytes of the DATA section, CRLF line ends, dot-stuffing removed
    message: EmailMessage
    tls: bool
    auth_user: str | None


@dataclass(frozen=True)
class TokenLogin:
    """One AUTH XOAUTH2 / OAUTHBEARER attempt the sink saw."""

    mechanism: str
    user: str | None
    accepted: bool
    initial_response: bool  # the token came on the AUTH line (not after a 334)


class _LongLineSMTP(SMTP):
    """aiosmtpd's server reading lines of up to RFC 4954's AUTH length (bearer tokens can be long)."""

    line_length_limit = AUTH_LINE_LIMIT + 2


class _Controller(Controller):
    """aiosmtpd's threaded controller, remembering its sessions so ``stop()`` can close them."""

    def __init__(self, handler: Any, *, server_class: type[SMTP] = SMTP, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.server_class = server_class
        self.sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def factory(self) -> SMTP:
        smtp = self.server_class(self.handler, **self.SMTP_kwargs)
        self.sessions.add(smtp)
        return smtp

    def close_sessions(self) -> None:
        """Drop every client connection (runs in the server's loop)."""
        for smtp in list(self.sessions):
            if smtp.transport is not None:
                smtp.transport.close()


class _Handler:
    """aiosmtpd hooks delegating to the sink's current settings."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, mail_options: list[str]
    ) -> str:
        self.sink._count_session(server)
        if self.sink.wants_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self.sink._refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        if self.sink._take_hang_up():
            assert server.transport is not None
            server.transport.close()
            await asyncio.sleep(3600)  # cancelled by aiosmtpd once the connection is gone
        refusal = self.sink._data_refusal()
        if refusal is not None:
            return refusal
        data = envelope.original_content or b""
        received = Received(
            mail_from=str(envelope.mail_from or ""),
            rcpt_tos=list(envelope.rcpt_tos),
            data=bytes(data),
            message=_parse(bytes(data)),
            tls=server.transport is not None and server.transport.get_extra_info("ssl_object") is not None,
            auth_user=session.auth_data if session.authenticated else None,
        )
        return self.sink._accept(received)


class _TokenHandler(_Handler):
    """The sink's hooks plus the bearer-token mechanisms (aiosmtpd calls ``auth_<MECHANISM>``)."""

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token_auth(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._token_auth(server, args, "OAUTHBEARER")

    async def _token_auth(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        initial = len(args) > 1
        if initial:
            try:
                blob = base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            answer = await server.challenge_auth("")
            if answer is MISSING:  # aborted or not base64: aiosmtpd has answered
                return AuthResult(success=False, handled=True)
            assert isinstance(answer, bytes)
            blob = answer
        user, token = _oauthbearer_fields(blob) if mechanism == "OAUTHBEARER" else _xoauth2_fields(blob)
        accepted = False
        if user is not None and token is not None:
            accepted = await asyncio.get_running_loop().run_in_executor(None, self.sink._check_token, user, token)
        self.sink._record_token_login(TokenLogin(mechanism, user, accepted, initial))
        if accepted:
            return AuthResult(success=True, auth_data=user)
        status = "invalid_token" if mechanism == "OAUTHBEARER" else "401"
        error = json.dumps({"status": status, "schemes": "bearer", "scope": self.sink.token_scope})
        if await server.challenge_auth(error) is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False, message=TOKEN_REFUSED)


def _xoauth2_fields(blob: bytes) -> tuple[str | None, str | None]:
    """``user`` and the bearer token of ``user=..^Aauth=Bearer ..^A^A``."""
    user = token = None
    for part in blob.decode("utf-8", "replace").split("\x01"):
        key, _, value = part.partition("=")
        if key == "user":
            user = value
        elif key == "auth" and value[:7].lower() == "bearer ":
            token = value[7:]
    return user, token


def _oauthbearer_fields(blob: bytes) -> tuple[str | None, str | None]:
    """The authzid (``a=``) and the bearer token of an RFC 7628 client response."""
    header, _, rest = blob.decode("utf-8", "replace").partition("\x01")
    user = None
    for item in header.split(",")[1:]:
        if item.startswith("a="):
            user = item[2:].replace("=2C", ",").replace("=3D", "=")
    _, token = _xoauth2_fields(rest.encode())
    return user, token


def _parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class SmtpSink(Running):
    """A real SMTP server on 127.0.0.1 that records what it accepts; see the module docstring.

    ``on_message`` (if set) is called in the server thread for every message the sink accepts, before
    it is added to ``received`` and answered; if it raises, the client gets ``451`` and nothing is
    recorded, as a real MTA would do when its local delivery fails.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        tls: TlsKind = "none",
        require_auth: tuple[str, str] | None = None,
        port: int = 0,
        *,
        check_token: TokenCheck | None = None,
        token_scope: str = "https://mail.google.com/",
    ) -> None:
        self.tls: TlsKind = tls
        self.require_auth = require_auth
        self.port = port
        self.check_token = check_token
        self.token_scope = token_scope
        self.token_logins: list[TokenLogin] = []
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        self.received: list[Received] = []
        self.on_message: Callable[[Received], None] | None = None
        self.mail_sessions = 0  # client connections that sent MAIL FROM at least once
        self._lock = threading.Condition()
        self._refusals: dict[str, str] = {}
        self._data_reply: str | None = None
        self._hang_up_skip = 0
        self._hang_up_count = 0
        self._queue_ids = itertools.count(1)
        self._counted: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._controller: _Controller | None = None
        self._dir: Path | None = None
        if tls != "none":
            self._dir = Path(tempfile.mkdtemp(prefix="helpdesk-smtp-sink-"))
            weakref.finalize(self, shutil.rmtree, self._dir, True)
            self.cert_path, self.key_path = make_self_signed(self._dir)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (on a free port the first time, on the same port afterwards)."""
        if self._controller is not None:
            return
        _quiet_aiosmtpd()
        pick = self.port == 0
        for attempt in range(3 if pick else 1):
            if pick:
                self.port = _free_port(self.host)
            controller = self._make_controller()
            try:
                controller.start()
            except OSError as exc:
                controller.stop(no_assert=True)
                controller.loop.close()
                if exc.errno != errno.EADDRINUSE or attempt == 2 or not pick:
                    raise
                continue
            self._controller = controller
            return

    def stop(self) -> None:
        """Stop listening and drop every open connection; recorded messages are kept."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        controller.loop.call_soon_threadsafe(controller.close_sessions)
        controller.stop()

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def _make_controller(self) -> _Controller:
        kwargs: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "server_hostname": "localhost",
            "decode_data": False,
        }
        if self.tls != "none":
            assert self.cert_path is not None and self.key_path is not None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert_path, self.key_path)
            if self.tls == "implicit":
                kwargs["ssl_context"] = context
            else:
                kwargs["tls_context"] = context
                kwargs["require_starttls"] = True
        if self.wants_auth:
            kwargs["authenticator"] = self._authenticate
            # aiosmtpd only counts STARTTLS as encryption; implicit TLS and plain text must opt in.
            kwargs["auth_require_tls"] = self.tls == "starttls"
        if self.check_token is not None:
            return _Controller(_TokenHandler(self), server_class=_LongLineSMTP, **kwargs)
        return _Controller(_Handler(self), **kwargs)

    @property
    def wants_auth(self) -> bool:
        """True when MAIL FROM needs a logged-in session (a password or a token is required)."""
        return self.require_auth is not None or self.check_token is not None

    def _check_token(self, user: str, token: str) -> bool:
        check = self.check_token
        try:
            return check is not None and bool(check(user, token))
        except Exception:
            log.exception("check_token failed; refusing the token")
            return False

    def _record_token_login(self, attempt: TokenLogin) -> None:
        with self._lock:
            self.token_logins.append(attempt)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: SmtpEnvelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if isinstance(auth_data, LoginPassword) and self.require_auth is not None:
            login = auth_data.login.decode("utf-8", "replace")
            if (login, auth_data.password.decode("utf-8", "replace")) == self.require_auth:
                return AuthResult(success=True, auth_data=login)
        return AuthResult(success=False, handled=False)

    # --- behaviour -------------------------------------------------------------------------------

    def refuse(self, address: str, reply: str) -> None:
        """Answer RCPT TO for ``address`` (any case) with ``reply``, e.g. ``"550 5.1.1 No such user"``."""
        with self._lock:
            self._refusals[address.lower()] = reply

    def refuse_data(self, reply: str | None) -> None:
        """Answer every DATA with ``reply``; None accepts again."""
        with self._lock:
            self._data_reply = reply

    def hang_up(self, after: int = 0, times: int = 1) -> None:
        """Let ``after`` transactions through, then close the connection at the end of DATA ``times`` times."""
        with self._lock:
            self._hang_up_skip, self._hang_up_count = after, times

    def _count_session(self, server: SMTP) -> None:
        with self._lock:
            if server not in self._counted:
                self._counted.add(server)
                self.mail_sessions += 1

    def _refusal(self, address: str) -> str | None:
        with self._lock:
            return self._refusals.get(address.lower())

    def _data_refusal(self) -> str | None:
        with self._lock:
            return self._data_reply

    def _take_hang_up(self) -> bool:
        with self._lock:
            if self._hang_up_count <= 0:
                return False
            if self._hang_up_skip > 0:
                self._hang_up_skip -= 1
                return False
            self._hang_up_count -= 1
            return True

    def _accept(self, received: Received) -> str:
        if self.on_message is not None:
            try:
                self.on_message(received)
            except Exception as exc:
                log.exception("on_message failed; answering 451")
                return f"451 4.3.0 local delivery failed: {type(exc).__name__}"
        with self._lock:
            self.received.append(received)
            self._lock.notify_all()
            return f"250 2.0.0 Ok: queued as Q{next(self._queue_ids)}"

    # --- inspection ------------------------------------------------------------------------------

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Wait until at least ``count`` messages were accepted; return all of them."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} message(s) within {timeout:g} s, {len(self.received)} arrived"
                    )
                self._lock.wait(remaining)
            return list(self.received)


class SilentServer(Running):
    """Accepts TCP connections on 127.0.0.1 and never answers (holds them until ``stop()``)."""

    host = "127.0.0.1"

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((self.host, 0))
        self._sock.listen()
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.connections: list[socket.socket] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-server", daemon=True)

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        for conn in self.connections:
            conn.close()
        self._sock.close()

