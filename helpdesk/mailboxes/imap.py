"""IMAP intake with imapclient.

Bookkeeping: the folder's UIDVALIDITY and the highest UID whose raw bytes are committed are kept in
``mailbox_state``; every message is stored under the key ``folder:uidvalidity:uid``. A poll imports
everything above that UID plus whatever was committed but not yet acknowledged (still in the folder
after a move/delete, or still missing the flag), so keep-on-server never re-imports and a crash
between commit and acknowledgement never loses or duplicates a message. After a UIDVALIDITY change
the folder is read again from the start; copies already imported are recognised by their bytes and
Message-ID and recorded as duplicates, never as new tickets.
"""

from __future__ import annotations

import contextlib
import imaplib
import logging
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import imapclient
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError, LoginError

from helpdesk.config import AfterImport, MailboxConfig, TlsMode, resolve_secret
from helpdesk.intake.runner import Incoming, Intake, Result
from helpdesk.mailboxes.base import (
    ConfiguredMailbox,
    PermanentError,
    PollReport,
    SecretResolver,
    TemporaryError,
    TokenRefused,
    mailbox_password,
    sasl_error_reply,
    size_batches,
)
from helpdesk.oauth.sasl import Mechanism, error_status, initial_response
from helpdesk.oauth.tokens import Providers
from helpdesk.store.db import transaction
from helpdesk.store.models import MailboxState
from helpdesk.store.queries import known_source_keys

log = logging.getLogger(__name__)

BATCH_BYTES = 32 * 1024 * 1024
_SYSTEM_FLAG_SEARCH = {"\\seen": "UNSEEN", "\\flagged": "UNFLAGGED", "\\answered": "UNANSWERED"}


def tls_context(verify: bool, ca_file: str | None = None) -> ssl.SSLContext:
    """Verified TLS by default; ``ca_file`` adds a private CA, ``verify=False`` turns checks off."""
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _as_temporary(exc: BaseException) -> TemporaryError:
    return TemporaryError(f"{type(exc).__name__}: {exc}")


class _SaslExchange:
    """The client side of ``AUTHENTICATE`` with a bearer token: the initial response to the server's
    first (empty) continuation, then the answer that ends the exchange to an error challenge, which
    is kept (``status``) for the error message."""

    def __init__(self, mechanism: Mechanism, response: bytes) -> None:
        self._mechanism = mechanism
        self._response = response
        self._sent = False
        self.challenge: bytes | None = None

    def __call__(self, challenge: bytes) -> bytes:
        if not self._sent:
            self._sent = True
            return self._response
        self.challenge = challenge
        return sasl_error_reply(self._mechanism)

    @property
    def status(self) -> str | None:
        return None if self.challenge is None else error_status(self.challenge)


class ImapMailbox(ConfiguredMailbox):
    """One IMAP folder of one account."""

    def __init__(
        self, config: MailboxConfig, secret: SecretResolver = resolve_secret, providers: Providers | None = None
    ) -> None:
        super().__init__(config, secret, providers)
        self._client: imapclient.IMAPClient | None = None
        self._idle_capable = False

    @property
    def source(self) -> str:
        return self.name

    # --- connection ----------------------------------------------------------------------------

    def connect(self) -> imapclient.IMAPClient:
        if self._client is not None:
            return self._client
        cfg = self.config
        if cfg.auth == "oauth2":
            client = self.token_login("imap", lambda token: self._open(lambda c: self._token_login(c, token)))
        else:
            password = mailbox_password(cfg, self._secret)
            client = self._open(lambda c: c.login(cfg.user, password))
        try:
            capabilities = {c.upper() for c in client.capabilities()}
            self._idle_capable = b"IDLE" in capabilities
            if cfg.action is AfterImport.MOVE and not client.folder_exists(cfg.move_to):
                client.create_folder(cfg.move_to)
        except (OSError, IMAPClientError) as exc:
            self._safe_logout(client)
            raise _as_temporary(exc) from exc
        self._client = client
        return client

    def _open(self, login: Callable[[imapclient.IMAPClient], object]) -> imapclient.IMAPClient:
        """A new connection, secured as configured and logged in by ``login``."""
        cfg = self.config
        context = tls_context(cfg.verify_tls, cfg.ca_file)
        try:
            client = imapclient.IMAPClient(
                cfg.endpoint,
                port=cfg.effective_port,
                ssl=cfg.tls is TlsMode.IMPLICIT,
                ssl_context=context,
                timeout=cfg.timeout,
            )
        except (OSError, IMAPClientError) as exc:
            raise _as_temporary(exc) from exc
        try:
            if cfg.tls is TlsMode.STARTTLS:
                client.starttls(context)
            login(client)
        except LoginError as exc:
            self._safe_logout(client)
            raise PermanentError(f"mailbox {cfg.name}: login as {cfg.user} refused: {exc}") from exc
        except (OSError, IMAPClientError) as exc:
            self._safe_logout(client)
            raise _as_temporary(exc) from exc
        except (TokenRefused, PermanentError, TemporaryError):
            self._safe_logout(client)
            raise
        return client

    def _token_login(self, client: imapclient.IMAPClient, token: str) -> None:
        """``AUTHENTICATE XOAUTH2`` or ``OAUTHBEARER``; raises :class:`TokenRefused` when the server says no."""
        cfg = self.config
        mechanism = cfg.sasl.upper()
        if not client.has_capability(f"AUTH={mechanism}"):
            raise PermanentError(
                f"mailbox {cfg.name}: {cfg.endpoint} does not offer AUTH={mechanism} (set sasl: to one it offers)"
            )
        exchange = _SaslExchange(
            cfg.sasl, initial_response(cfg.sasl, cfg.user, token, cfg.endpoint, cfg.effective_port)
        )
        try:
            client.sasl_login(mechanism, exchange)
        except LoginError as exc:
            if isinstance(exc.__context__, imaplib.IMAP4.abort):  # the connection broke, nothing was refused
                raise TemporaryError(f"mailbox {cfg.name}: connection lost while logging in: {exc}") from None
            reply = str(exc)
            if "[UNAVAILABLE]" in reply.upper():  # RFC 5530: the server cannot check the token right now
                raise TemporaryError(f"mailbox {cfg.name}: {cfg.endpoint} could not check the token: {reply}") from None
            raise TokenRefused(reply, exchange.status) from None

    @staticmethod
    def _safe_logout(client: imapclient.IMAPClient) -> None:
        try:
            client.logout()
        except Exception:  # already broken; nothing more to do
            with contextlib.suppress(Exception):
                client.shutdown()

    def close(self) -> None:
        if self._client is not None:
            self._safe_logout(self._client)
            self._client = None

    # --- poll ----------------------------------------------------------------------------------

    def poll(self, intake: Intake) -> PollReport:
        try:
            return self._poll(intake)
        except (OSError, IMAPClientAbortError, IMAPClientError, imapclient.exceptions.ProtocolError) as exc:
            self.close()
            raise _as_temporary(exc) from exc

    def _poll(self, intake: Intake) -> PollReport:
        cfg = self.config
        client = self.connect()
        selected = client.select_folder(cfg.folder)
        uidvalidity = int(selected[b"UIDVALIDITY"])
        last_uid = self._sync_state(intake, uidvalidity)
        report = PollReport(mailbox=self.name)
        candidates = self._candidates(client, last_uid)
        if not candidates:
            return report
        keys = {uid: f"{cfg.folder}:{uidvalidity}:{uid}" for uid in candidates}
        with transaction(intake.engine) as session:
            known = known_source_keys(session, self.source, keys.values())
        settled_known = [uid for uid in candidates if keys[uid] in known]
        if settled_known:
            # Committed earlier but never acknowledged (crash, lost connection): finish them first.
            report.add(intake.process_pending())
            self._acknowledge(client, settled_known)
            report.acknowledged += len(settled_known)
        fresh = [uid for uid in candidates if keys[uid] not in known]
        for batch in self._batches(client, fresh):
            fetched = client.fetch(batch, [b"BODY.PEEK[]"])
            incoming = [
                Incoming(key=keys[uid], data=bytes(fetched[uid][b"BODY[]"]))
                for uid in batch
                if uid in fetched and b"BODY[]" in fetched[uid]
            ]
            results = intake.ingest(self.source, incoming)
            self._advance(intake, uidvalidity, max(batch))
            report.add(results)
            done = self._settled_uids(results, keys)
            self._acknowledge(client, done)
            report.acknowledged += len(done)
        return report

    def _batches(self, client: imapclient.IMAPClient, uids: list[int]) -> Iterable[list[int]]:
        """Groups of at most ``batch_size`` messages and about ``BATCH_BYTES`` (one big mail alone)."""
        if not uids:
            return
        sizes = client.fetch(uids, [b"RFC822.SIZE"])
        yield from size_batches(
            uids, lambda uid: int(sizes.get(uid, {}).get(b"RFC822.SIZE", 0)), self.config.batch_size, BATCH_BYTES
        )

    @staticmethod
    def _settled_uids(results: Sequence[Result], keys: dict[int, str]) -> list[int]:
        by_key = {key: uid for uid, key in keys.items()}
        return [by_key[r.key] for r in results if r.settled and r.key in by_key]

    def _candidates(self, client: imapclient.IMAPClient, last_uid: int) -> list[int]:
        """UIDs that may need importing or acknowledging."""
        action = self.config.action
        new = {int(u) for u in client.search(["UID", f"{last_uid + 1}:*"]) if int(u) > last_uid}
        if action in (AfterImport.MOVE, AfterImport.DELETE):
            pending = {int(u) for u in client.search(["NOT", "DELETED"])}
        elif action is AfterImport.FLAG:
            pending = {int(u) for u in client.search(self._unflagged_criteria())}
        else:
            pending = set()
        return sorted(new | pending)

    def _unflagged_criteria(self) -> list[str]:
        flag = self.config.flag
        system = _SYSTEM_FLAG_SEARCH.get(flag.lower())
        return [system] if system else ["UNKEYWORD", flag]

    def _acknowledge(self, client: imapclient.IMAPClient, uids: Iterable[int]) -> None:
        """Move, flag or delete messages whose ticket (or quarantine entry) is committed."""
        todo = sorted(uids)
        if not todo:
            return
        cfg = self.config
        action = cfg.action
        if action is AfterImport.MOVE:
            if client.has_capability("MOVE"):
                client.move(todo, cfg.move_to)
            else:
                client.copy(todo, cfg.move_to)
                self._expunge(client, todo)
        elif action is AfterImport.DELETE:
            self._expunge(client, todo)
        elif action is AfterImport.FLAG:
            client.add_flags(todo, [cfg.flag.encode()])

    @staticmethod
    def _expunge(client: imapclient.IMAPClient, uids: list[int]) -> None:
        client.add_flags(uids, [imapclient.DELETED])
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)
        else:
            client.expunge()

    # --- state ---------------------------------------------------------------------------------

    def _sync_state(self, intake: Intake, uidvalidity: int) -> int:
        with transaction(intake.engine) as session:
            state = session.get(MailboxState, (self.name, self.config.folder))
            if state is None:
                state = MailboxState(mailbox=self.name, folder=self.config.folder)
            if state.uidvalidity != uidvalidity:
                if state.uidvalidity is not None:
                    log.warning(
                        "mailbox %s: UIDVALIDITY of %s changed from %s to %s; reading the folder again "
                        "(messages already imported are recognised as duplicates)",
                        self.name, self.config.folder, state.uidvalidity, uidvalidity,
                    )
                state.uidvalidity = uidvalidity
                state.last_uid = 0
            state.last_poll_at = intake.clock()
            state.last_error = None
            session.add(state)
            return state.last_uid

    def _advance(self, intake: Intake, uidvalidity: int, uid: int) -> None:
        with transaction(intake.engine) as session:
            state = session.get(MailboxState, (self.name, self.config.folder))
            if state is not None and state.uidvalidity == uidvalidity and uid > state.last_uid:
                state.last_uid = uid
                session.add(state)

    # --- waiting -------------------------------------------------------------------------------

    @property
    def can_idle(self) -> bool:
        return self.config.idle and self._idle_capable and self._client is not None

    def wait(self, timeout: float) -> bool:
        """IDLE until the server reports a change or ``timeout`` passes; sleep-free polling otherwise."""
        client = self._client
        if not self.can_idle or client is None:
            return False
        try:
            client.idle()
            responses: list[Any] = client.idle_check(timeout=timeout)
            client.idle_done()
        except (TimeoutError, OSError, IMAPClientError) as exc:
            self.close()
            raise _as_temporary(exc) from exc
        return bool(responses)
