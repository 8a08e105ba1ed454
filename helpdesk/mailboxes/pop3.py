"""POP3 intake with poplib.

Every message is stored under its UIDL. A UIDL already in the database is never imported again;
DELE is sent only for messages whose ticket (or quarantine entry) is committed, and POP3 applies it
at QUIT, so a dropped connection leaves the message on the server for the next poll to delete.

With ``auth: oauth2`` the login is ``AUTH XOAUTH2`` or ``AUTH OAUTHBEARER`` (RFC 5034), which
poplib does not offer: the command goes without an initial response and the token follows the
server's ``+`` (the form Microsoft 365 requires and every RFC 5034 server takes). A refused token
is answered by a ``+ <base64 JSON>`` challenge, ended by the client, then ``-ERR``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import poplib
from collections.abc import Callable

from helpdesk.config import AfterImport, TlsMode
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.mailboxes.base import (
    PermanentError,
    PolledMailbox,
    PollReport,
    TemporaryError,
    TokenRefused,
    mailbox_password,
    sasl_error_reply,
)
from helpdesk.mailboxes.imap import tls_context
from helpdesk.oauth.sasl import encoded, error_status
from helpdesk.store.db import transaction
from helpdesk.store.queries import known_source_keys

log = logging.getLogger(__name__)

MAX_LINE = 8192  # longer server lines are a protocol error (poplib allows 2048)
# RFC 2449 / RFC 3206 response codes of a failure that is not about the credentials.
_TEMPORARY_CODES = (b"[SYS/TEMP]", b"[IN-USE]")


class Pop3Mailbox(PolledMailbox):
    def _connect(self) -> poplib.POP3:
        cfg = self.config
        if cfg.auth == "oauth2":
            return self.token_login("pop3", lambda token: self._open(lambda c: self._token_login(c, token)))
        password = mailbox_password(cfg, self._secret)
        return self._open(lambda c: self._password_login(c, password))

    def _open(self, login: Callable[[poplib.POP3], None]) -> poplib.POP3:
        """A new connection, secured as configured and logged in by ``login``."""
        cfg = self.config
        context = tls_context(cfg.verify_tls, cfg.ca_file)
        try:
            client: poplib.POP3
            if cfg.tls is TlsMode.IMPLICIT:
                client = poplib.POP3_SSL(cfg.endpoint, cfg.effective_port, timeout=cfg.timeout, context=context)
            else:
                client = poplib.POP3(cfg.endpoint, cfg.effective_port, timeout=cfg.timeout)
                if cfg.tls is TlsMode.STARTTLS:
                    client.stls(context)
        except (OSError, poplib.error_proto) as exc:
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from exc
        try:
            login(client)
        except poplib.error_proto as exc:
            self._abandon(client)
            raise PermanentError(f"mailbox {cfg.name}: login as {cfg.user} refused: {exc}") from exc
        except OSError as exc:
            self._abandon(client)
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from exc
        except (TokenRefused, PermanentError, TemporaryError):
            self._abandon(client)
            raise
        return client

    def _password_login(self, client: poplib.POP3, password: str) -> None:
        client.user(self.config.user)
        client.pass_(password)

    def _token_login(self, client: poplib.POP3, token: str) -> None:
        """``AUTH XOAUTH2`` / ``AUTH OAUTHBEARER``; raises :class:`TokenRefused` when the server says no."""
        cfg = self.config
        mechanism = cfg.sasl.upper()
        offered = self._sasl_mechanisms(client)
        if offered is not None and mechanism not in offered:
            raise PermanentError(
                f"mailbox {cfg.name}: {cfg.endpoint} does not offer SASL {mechanism} "
                f"(it offers {' '.join(sorted(offered)) or 'none'}; set sasl: to one it offers)"
            )
        _send(client, f"AUTH {mechanism}".encode("ascii"))
        reply = _receive(client)
        if not _is_continuation(reply):
            raise PermanentError(f"mailbox {cfg.name}: {cfg.endpoint} refused AUTH {mechanism}: {_text(reply)}")
        _send(client, encoded(cfg.sasl, cfg.user, token, cfg.endpoint, cfg.effective_port).encode("ascii"))
        reply = _receive(client)
        status: str | None = None
        if _is_continuation(reply):  # the error challenge: end the exchange to get the final answer
            status = error_status(reply[1:].strip())
            _send(client, base64.b64encode(sasl_error_reply(cfg.sasl)))
            reply = _receive(client)
        if reply.startswith(b"+OK"):
            return
        if any(code in reply.upper() for code in _TEMPORARY_CODES):
            raise TemporaryError(f"mailbox {cfg.name}: {cfg.endpoint} could not log in now: {_text(reply)}")
        raise TokenRefused(_text(reply), status)

    @staticmethod
    def _sasl_mechanisms(client: poplib.POP3) -> set[str] | None:
        """The mechanisms the server lists under CAPA SASL; None when it does not say (no CAPA)."""
        try:
            capabilities = client.capa()
        except poplib.error_proto:
            return None
        if "SASL" not in capabilities:
            return None
        return {m.upper() for m in capabilities["SASL"]}

    @staticmethod
    def _abandon(client: poplib.POP3) -> None:
        with contextlib.suppress(Exception):
            client.close()

    def poll(self, intake: Intake) -> PollReport:
        client = self._connect()
        try:
            report = self._poll(client, intake)
            client.quit()  # applies the DELEs
            return report
        except (OSError, poplib.error_proto) as exc:
            self._abandon(client)
            raise TemporaryError(f"{type(exc).__name__}: {exc}") from exc

    def _poll(self, client: poplib.POP3, intake: Intake) -> PollReport:
        cfg = self.config
        report = PollReport(mailbox=self.name)
        listing: dict[str, int] = {}
        for line in client.uidl()[1]:
            number, _, uid = line.decode("ascii", "replace").partition(" ")
            listing[uid.strip()] = int(number)
        if not listing:
            return report
        with transaction(intake.engine) as session:
            known = known_source_keys(session, self.name, listing)
        delete = cfg.action is AfterImport.DELETE
        if known:
            report.add(intake.process_pending())
            if delete:
                for uid in known:
                    client.dele(listing[uid])
                report.acknowledged += len(known)
        fresh = [uid for uid in listing if uid not in known]
        for start in range(0, len(fresh), cfg.batch_size):
            batch = fresh[start : start + cfg.batch_size]
            incoming = []
            for uid in batch:
                lines = client.retr(listing[uid])[1]
                incoming.append(Incoming(key=uid, data=b"\r\n".join(lines) + b"\r\n"))
            results = intake.ingest(self.name, incoming)
            report.add(results)
            for result in results:
                if result.settled and delete:
                    client.dele(listing[result.key])
                    report.acknowledged += 1
        return report

    def close(self) -> None:
        return None


def _send(client: poplib.POP3, line: bytes) -> None:
    client.sock.sendall(line + b"\r\n")


def _receive(client: poplib.POP3) -> bytes:
    """One line from the server without its line end; a closed connection is a temporary error."""
    line = client.file.readline(MAX_LINE + 1)
    if not line:
        raise TemporaryError("the POP3 server closed the connection during the login")
    if len(line) > MAX_LINE:
        raise TemporaryError("the POP3 server sent an overlong line during the login")
    return line.rstrip(b"\r\n")


def _is_continuation(reply: bytes) -> bool:
    """``+`` or ``+ <base64>`` (RFC 5034), as opposed to ``+OK`` and ``-ERR``."""
    return reply == b"+" or reply.startswith(b"+ ")


def _text(reply: bytes) -> str:
    return reply.decode("utf-8", "replace")
