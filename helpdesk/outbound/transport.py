"""Hand outgoing mail to the configured SMTP server with aiosmtplib.

``SmtpTransport.deliver()`` sends a batch of envelopes over one SMTP session and returns one
:class:`Delivery` per envelope: ``SENT`` (the server took responsibility), ``PERMANENT`` (a 5xx
reply: retrying cannot help) or ``TEMPORARY`` (a 4xx reply, or the server could not be reached,
timed out, failed TLS, hung up, or our own credentials are wrong or missing: try again later).
Our own misconfiguration never fails a message permanently.

With ``auth: oauth2`` the login is ``AUTH XOAUTH2`` or ``AUTH OAUTHBEARER`` (RFC 4954, RFC 7628)
with a token from the ``smtp.oauth`` provider. The initial response goes on the AUTH line unless
that line would exceed SMTP's 512 octets, else after the server's ``334``. A refused token draws
a ``334`` JSON error challenge, which the client ends to get the final ``535``; the token is then
renewed once and the login tried again on a new connection. A token refused twice, or one that
cannot be had, defers the batch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import aiosmtplib
from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
)

from helpdesk.config import SmtpConfig, TlsMode, resolve_secret
from helpdesk.mailboxes.base import TokenRefused, sasl_error_reply
from helpdesk.mailboxes.imap import tls_context
from helpdesk.oauth.sasl import encoded, error_status
from helpdesk.oauth.tokens import Providers, TokenError, TokenProvider, default_scope

log = logging.getLogger(__name__)

SecretResolver = Callable[[str | None], str | None]

AUTH_REQUIRED = 530
AUTH_SUCCESSFUL = 235
AUTH_CONTINUE = 334
AUTH_FAILED = 535
COMMAND_LINE_LIMIT = 512  # octets of an SMTP command line with its CRLF (RFC 5321 section 4.5.3.1.4)
CLOSE_WAIT = 2.0  # seconds to let a closed connection finish its TLS shutdown


@dataclass(frozen=True)
class Envelope:
    """One message to send: the SMTP envelope and the complete message, sent byte for byte."""

    key: int  # the caller's id (the outbox row)
    sender: str  # MAIL FROM
    recipients: tuple[str, ...]
    data: bytes


class DeliveryStatus(StrEnum):
    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    HELD = "held"  # not attempted: a sending limit holds it back for ``retry_in`` seconds


@dataclass(frozen=True)
class Delivery:
    """The outcome for one envelope; ``detail`` is the server's reply or the error.

    ``message_id`` is the Message-ID the service gave the mail when it is not the one we wrote.
    """

    key: int
    status: DeliveryStatus
    detail: str
    message_id: str | None = None
    retry_in: float | None = None  # HELD: seconds until the limit lets it go


@dataclass
class _TokenLogin:
    """An OAuth login: the provider, the scope, and the token last obtained (replaced when renewed)."""

    provider: TokenProvider
    scope: str
    token: str = field(repr=False)


_Login = str | _TokenLogin | None  # a password, a token login, or no login at all


class SmtpUnavailable(Exception):
    """No usable SMTP session (``probe``): the message says why."""


class _NoSession(Exception):
    """No usable SMTP session; ``detail`` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _reply(code: int, message: str) -> str:
    return f"{code} {' '.join(message.split())}"


def _status_for(code: int) -> DeliveryStatus:
    """5xx is final, anything else (4xx, odd codes) worth another try; 530 means we did not log in."""
    if 500 <= code < 600 and code != AUTH_REQUIRED:
        return DeliveryStatus.PERMANENT
    return DeliveryStatus.TEMPORARY


def _unusable(address: str) -> bool:
    """True when ``address`` cannot go on an SMTP command line as it is (aiosmtplib would rewrite it)."""
    return any(c.isspace() or c in '<>"' or not c.isprintable() for c in address)


def _is_refused(exc: BaseException | None) -> bool:
    """A refused connection (also when asyncio reports one failure per address of the host)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    if not isinstance(exc, OSError):
        return False
    text = str(exc)
    return text.startswith("Multiple exceptions") and f"[Errno {errno.ECONNREFUSED}]" in text


def _refused(recipients: Sequence[SMTPRecipientRefused]) -> str:
    return "; ".join(f"<{r.recipient}> {_reply(r.code, r.message)}" for r in recipients)


class SmtpTransport:
    """Sends batches of envelopes to ``config``'s server, one SMTP session per batch."""

    def __init__(
        self, config: SmtpConfig, secret: SecretResolver = resolve_secret, providers: Providers | None = None
    ) -> None:
        self.config = config
        self._secret = secret
        self._providers = providers

    @property
    def server(self) -> str:
        host = self.config.host
        return f"[{host}]:{self.config.effective_port}" if ":" in host else f"{host}:{self.config.effective_port}"

    def deliver(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        """Send ``envelopes``; one result per envelope, in order.

        Runs its own event loop, so it must not be called from a coroutine: use ``deliver_async`` there.
        """
        return asyncio.run(self.deliver_async(envelopes))

    async def deliver_async(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        """Send ``envelopes`` over one session (reconnecting once if the server hangs up mid-batch)."""
        if not envelopes:
            return []
        results: list[Delivery]
        problem: str | None
        try:
            login = await self._token_login() if self.config.auth == "oauth2" else self._password()
        except _NoSession as exc:
            results, problem = self._defer(envelopes, exc.detail), exc.detail
        else:
            results, problem = await self._send_all(envelopes, login)
        self._log(results, problem)
        return results

    def probe(self) -> str:
        """Connect, secure and log in as for sending, then quit; what worked, or ``SmtpUnavailable``."""
        return asyncio.run(self._probe())

    async def _probe(self) -> str:
        try:
            login = await self._token_login() if self.config.auth == "oauth2" else self._password()
            smtp = await self._session(login)
        except _NoSession as exc:
            raise SmtpUnavailable(exc.detail) from None
        secured = "TLS" if smtp.get_transport_info("sslcontext") is not None else "no TLS"
        await self._quit(smtp)
        if self.config.user is None:
            return f"{self.server}: {secured}, no login configured"
        how = "an OAuth token" if self.config.auth == "oauth2" else "a password"
        return f"{self.server}: {secured}, logged in as {self.config.user} with {how}"

    # --- session ---------------------------------------------------------------------------------

    def _password(self) -> str | None:
        if self.config.user is None:
            return None
        if self.config.password is None:
            raise _NoSession(f"smtp.user is {self.config.user} but smtp.password is not configured")
        try:
            return self._secret(self.config.password)
        except KeyError as exc:
            raise _NoSession(f"smtp.password: {exc.args[0] if exc.args else exc}") from None
        except ValueError as exc:
            raise _NoSession(f"smtp.password: {exc}") from None

    async def _token_login(self) -> _TokenLogin:
        """The provider and scope of ``smtp.oauth`` and a first token (fetched in a worker thread)."""
        config = self.config
        if config.oauth is None or self._providers is None:
            raise _NoSession("smtp.auth is oauth2 but no token provider is configured (smtp.oauth)")
        try:
            provider = self._providers.get(config.oauth)
            scope = default_scope(self._providers.config(config.oauth), "smtp")
        except TokenError as exc:
            raise _NoSession(f"smtp.oauth: {exc}") from None
        except KeyError:
            raise _NoSession(f"smtp.oauth: no oauth provider named {config.oauth!r}") from None
        token = await self._obtain(lambda: provider.token(scope), provider, "getting")
        return _TokenLogin(provider, scope, token)

    async def _obtain(self, fetch: Callable[[], str], provider: TokenProvider, doing: str) -> str:
        """A token from ``fetch``, run in a worker thread (it may ask the token endpoint over HTTP)."""
        try:
            return await asyncio.to_thread(fetch)
        except TokenError as exc:
            raise _NoSession(
                f"{doing} the OAuth token of provider {provider.name} for SMTP as {self.config.user} failed: {exc}"
            ) from None

    async def _send_all(
        self, envelopes: Sequence[Envelope], login: _Login
    ) -> tuple[list[Delivery], str | None]:
        results: list[Delivery] = []
        smtp: aiosmtplib.SMTP | None = None
        reconnected = False
        problem: str | None = None
        try:
            for index, envelope in enumerate(envelopes):
                if smtp is None or not smtp.is_connected:
                    if smtp is not None:
                        lost = f"connection to {self.server} lost"
                        if reconnected:
                            problem = f"{lost} again; not attempted"
                            results.extend(self._defer(envelopes[index:], problem))
                            break
                        reconnected = True
                    try:
                        smtp = await self._session(login)
                    except _NoSession as exc:
                        problem = exc.detail
                        results.extend(self._defer(envelopes[index:], exc.detail))
                        break
                results.append(await self._send(smtp, envelope))
        finally:
            if smtp is not None:
                await self._quit(smtp)
        return results, problem

    async def _session(self, login: _Login) -> aiosmtplib.SMTP:
        """A logged-in session; a token the server refuses is renewed and tried once more."""
        if not isinstance(login, _TokenLogin):
            return await self._connect(login)
        try:
            return await self._connect(None, login.token)
        except TokenRefused as refused:
            log.warning(
                "smtp %s: the OAuth token of provider %s for %s was refused: %s; renewing it and trying once more",
                self.server, login.provider.name, self.config.user, refused.describe(),
            )
        rejected = login.token
        login.token = await self._obtain(lambda: login.provider.renew(login.scope, rejected), login.provider,
                                         "renewing")
        try:
            return await self._connect(None, login.token)
        except TokenRefused as refused:
            raise _NoSession(
                f"SMTP authentication as {self.config.user} at {self.server} failed: the OAuth token of provider "
                f"{login.provider.name} was refused ({self.config.sasl.upper()}), also after renewing it once: "
                f"{refused.describe()}"
            ) from None

    async def _connect(self, password: str | None, token: str | None = None) -> aiosmtplib.SMTP:
        """Connect, say EHLO, secure the session per ``config.tls`` and log in when a user is set
        (with ``token`` when given, else with ``password``)."""
        config = self.config
        context: ssl.SSLContext | None = None
        if config.tls is not TlsMode.NONE:
            try:
                context = tls_context(config.verify_tls, config.ca_file)
            except OSError as exc:  # ssl.SSLError is an OSError too
                raise _NoSession(f"cannot load smtp.ca_file {config.ca_file}: {exc}") from None
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.effective_port,
            timeout=config.timeout,
            use_tls=config.tls is TlsMode.IMPLICIT,
            start_tls=config.tls is TlsMode.STARTTLS,
            tls_context=context,
        )
        try:
            await smtp.connect()
            if smtp.is_ehlo_or_helo_needed:
                try:
                    await smtp.ehlo()
                except SMTPHeloError:
                    await smtp.helo()
        except (SMTPException, OSError) as exc:
            smtp.close()
            raise _NoSession(self._connect_problem(exc)) from None
        if config.user is not None:
            try:
                if token is not None:
                    await self._token_auth(smtp, config.user, token)
                else:
                    await smtp.login(config.user, password or "")
            except (TokenRefused, _NoSession):
                await self._quit(smtp)
                raise
            except (SMTPException, OSError) as exc:
                await self._quit(smtp)
                raise _NoSession(self._login_problem(config.user, exc)) from None
        return smtp

    async def _token_auth(self, smtp: aiosmtplib.SMTP, user: str, token: str) -> None:
        """``AUTH XOAUTH2`` / ``AUTH OAUTHBEARER``; raises :class:`TokenRefused` when the server refuses the token."""
        config = self.config
        mechanism = config.sasl.upper().encode("ascii")
        if config.sasl not in smtp.server_auth_methods:
            offered = " ".join(m.upper() for m in smtp.server_auth_methods) or "none"
            raise _NoSession(
                f"{self.server} does not offer AUTH {config.sasl.upper()} (it offers: {offered}); "
                "set smtp.sasl to one it offers"
            )
        response = encoded(config.sasl, user, token, config.host, config.effective_port).encode("ascii")
        if len(b"AUTH %s %s\r\n" % (mechanism, response)) <= COMMAND_LINE_LIMIT:
            reply = await smtp.execute_command(b"AUTH", mechanism, response)
        else:  # RFC 4954 section 4: no initial response that would make the line too long
            reply = await smtp.execute_command(b"AUTH", mechanism)
            if reply.code == AUTH_CONTINUE:
                reply = await smtp.execute_command(response)
        status: str | None = None
        if reply.code == AUTH_CONTINUE:  # the error challenge: end the exchange to get the final reply
            status = error_status(reply.message)
            reply = await smtp.execute_command(base64.b64encode(sasl_error_reply(config.sasl)))
        if reply.code == AUTH_SUCCESSFUL:
            return
        if reply.code == AUTH_FAILED or (status is not None and 500 <= reply.code < 600):
            raise TokenRefused(_reply(reply.code, reply.message), status)
        raise SMTPResponseException(reply.code, reply.message)

    def _connect_problem(self, exc: BaseException) -> str:
        cause = exc.__cause__
        if isinstance(exc, TimeoutError):  # SMTPTimeoutError and its connect variant are TimeoutErrors
            return f"timed out after {self.config.timeout:g} s ({self.server}: {exc})"
        if isinstance(exc, ssl.SSLError) or isinstance(cause, ssl.SSLError):
            return f"TLS with {self.server} failed: {cause if isinstance(cause, ssl.SSLError) else exc}"
        if _is_refused(exc) or _is_refused(cause):
            return f"connection refused: {self.server}"
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {self.config.host}: {cause.strerror or cause}"
        if isinstance(exc, SMTPConnectResponseError):
            return f"{self.server} refused the session: {_reply(exc.code, exc.message)}"
        if isinstance(exc, SMTPResponseException):
            return f"{self.server} answered {_reply(exc.code, exc.message)} while setting up the session"
        if isinstance(exc, SMTPServerDisconnected):
            return f"{self.server} closed the connection while setting up the session: {exc}"
        if isinstance(exc, SMTPException):
            return f"{self.server}: {exc.message}"
        return f"cannot connect to {self.server}: {exc}"

    def _login_problem(self, user: str, exc: BaseException) -> str:
        if isinstance(exc, SMTPResponseException):
            reason = _reply(exc.code, exc.message)
        elif isinstance(exc, TimeoutError):
            reason = f"timed out after {self.config.timeout:g} s"
        elif isinstance(exc, SMTPException):
            reason = exc.message
        else:
            reason = str(exc) or type(exc).__name__
        return f"SMTP authentication as {user} at {self.server} failed: {reason}"

    async def _quit(self, smtp: aiosmtplib.SMTP) -> None:
        """Say QUIT (errors do not matter any more) and wait briefly until the connection is closed."""
        protocol = smtp.protocol
        if smtp.is_connected:
            with contextlib.suppress(SMTPException, OSError):
                await smtp.quit()
        smtp.close()
        if protocol is not None:
            # A TLS connection needs a few more turns of the loop to shut down before the loop may end.
            deadline = asyncio.get_running_loop().time() + min(self.config.timeout, CLOSE_WAIT)
            while protocol.transport is not None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)

    # --- transactions ----------------------------------------------------------------------------

    async def _send(self, smtp: aiosmtplib.SMTP, envelope: Envelope) -> Delivery:
        """One transaction; aiosmtplib sends RSET itself after a refused one."""

        def result(status: DeliveryStatus, detail: str) -> Delivery:
            return Delivery(envelope.key, status, detail)

        if not envelope.recipients:
            return result(DeliveryStatus.PERMANENT, "no recipients")
        addresses = (envelope.sender, *envelope.recipients)
        bad = [a for a in addresses if _unusable(a)] + [a for a in envelope.recipients if not a]
        if bad:
            return result(DeliveryStatus.PERMANENT, "not a usable envelope address: " + ", ".join(map(repr, bad)))
        options = [] if all(a.isascii() for a in addresses) else ["SMTPUTF8"]
        try:
            errors, reply = await smtp.sendmail(
                envelope.sender, list(envelope.recipients), envelope.data, mail_options=options
            )
        except SMTPRecipientsRefused as exc:
            refused = exc.recipients
            detail = _reply(refused[0].code, refused[0].message) if len(refused) == 1 else _refused(refused)
            final = bool(refused) and all(_status_for(r.code) is DeliveryStatus.PERMANENT for r in refused)
            return result(DeliveryStatus.PERMANENT if final else DeliveryStatus.TEMPORARY, detail)
        except SMTPResponseException as exc:  # sender refused, DATA refused, other replies
            detail = _reply(exc.code, exc.message)
            if exc.code == AUTH_REQUIRED:
                detail += " (the server wants authentication: set smtp.user and smtp.password)"
            return result(_status_for(exc.code), detail)
        except SMTPNotSupported as exc:
            return result(DeliveryStatus.PERMANENT, exc.message)
        except TimeoutError:
            return result(DeliveryStatus.TEMPORARY, f"timed out after {self.config.timeout:g} s")
        except (SMTPServerDisconnected, OSError) as exc:
            return result(DeliveryStatus.TEMPORARY, f"connection to {self.server} lost: {exc}")
        except SMTPException as exc:
            return result(DeliveryStatus.TEMPORARY, exc.message)
        except ValueError as exc:  # an address that cannot go on an SMTP command line
            return result(DeliveryStatus.PERMANENT, f"cannot be sent: {exc}")
        detail = f"250 {' '.join(reply.split())}"
        if errors:
            detail += "; refused: " + "; ".join(
                f"<{address}> {_reply(response.code, response.message)}" for address, response in errors.items()
            )
        return result(DeliveryStatus.SENT, detail)

    # --- reporting -------------------------------------------------------------------------------

    @staticmethod
    def _defer(envelopes: Sequence[Envelope], detail: str) -> list[Delivery]:
        return [Delivery(e.key, DeliveryStatus.TEMPORARY, detail) for e in envelopes]

    def _log(self, results: Sequence[Delivery], problem: str | None) -> None:
        counts = {status: 0 for status in DeliveryStatus}
        for delivery in results:
            counts[delivery.status] += 1
        log.info(
            "smtp %s: %d sent, %d deferred, %d failed%s",
            self.server,
            counts[DeliveryStatus.SENT],
            counts[DeliveryStatus.TEMPORARY],
            counts[DeliveryStatus.PERMANENT],
            f" ({problem})" if problem else "",
        )
