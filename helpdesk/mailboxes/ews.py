"""On-premises Exchange Server intake through Exchange Web Services (EWS), with exchangelib.

Exchange Online blocks EWS for applications; Microsoft 365 mailboxes go through Microsoft Graph. This
adapter is for Exchange Server 2016, 2019 and Subscription Edition (``service_endpoint`` is the
server's ``https://SERVER/EWS/Exchange.asmx``), with NTLM, Basic or Digest and a password, or with an
OAuth access token (hybrid modern authentication).

Bookkeeping: one folder is read with ``SyncFolderItems``; every item is stored under its EWS item id.
A poll starts from the sync state kept in ``mailbox_state.sync_token`` and handles one page of
changes at a time: the MIME of the page's new items is fetched (``GetItem``, several ids a request),
stored and processed, the committed items are moved to ``move_to`` (created under the mailbox root
when missing; ``a/b`` is a subfolder, ``INBOX/x`` one below the inbox), marked read (``flag``: EWS
has no IMAP keywords), deleted (``SoftDelete``: into the recoverable items, which the server's
retention purges) or kept, and only then is the page's new sync state stored. A
crash anywhere replays the page from the stored state: items already stored are recognised by their
key and only acknowledged, never imported twice; an item reported twice is imported once. When the
server refuses the sync state (``ErrorInvalidSyncStateData``) the folder is read again from the
start, with the same protection. An item the server cannot render as MIME is logged as an error and
left in the folder.

Failures: an unreachable or slow server, HTTP 5xx and ``ErrorServerBusy`` are temporary (a busy
server's ``BackOffMilliseconds`` or ``Retry-After`` is honoured: no request goes out before it has
passed); a refused login (HTTP 401: with ``auth: oauth2`` after renewing the token once), a TLS
certificate that does not verify and a missing mailbox or folder are permanent.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Literal, TypeVar

import requests
import requests.adapters
from exchangelib import DELEGATE, Account, Configuration, Credentials, Version
from exchangelib import errors as ews_errors
from exchangelib.credentials import OAuth2AuthorizationCodeCredentials
from exchangelib.ewsdatetime import UTC as EWS_UTC
from exchangelib.fields import FieldPath
from exchangelib.folders import Folder, Inbox, MsgFolderRoot, Root
from exchangelib.items import (
    ALL_OCCURRENCES,
    ALWAYS_OVERWRITE,
    ID_ONLY,
    SAVE_ONLY,
    SEND_TO_NONE,
    SOFT_DELETE,
    Item,
    Message,
)
from exchangelib.properties import DistinguishedFolderId, FolderId, ItemId, Mailbox
from exchangelib.protocol import CachingProtocol, FailFast, Protocol
from exchangelib.services import (
    CreateFolder,
    DeleteItem,
    FindFolder,
    GetItem,
    MoveItem,
    SyncFolderItems,
    UpdateItem,
)
from exchangelib.transport import BASIC, DIGEST, NOAUTH, NTLM, OAUTH2
from exchangelib.version import EXCHANGE_2016

from helpdesk.config import AfterImport, MailboxConfig, resolve_secret
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.mailboxes.base import (
    ConfiguredMailbox,
    PermanentError,
    PolledMailbox,
    PollReport,
    SecretResolver,
    TemporaryError,
    load_sync_token,
    mailbox_password,
    size_batches,
    store_sync_token,
)
from helpdesk.oauth.tokens import Providers, TokenError
from helpdesk.store.db import transaction
from helpdesk.store.models import RawState
from helpdesk.store.queries import known_source_keys

log = logging.getLogger(__name__)

T = TypeVar("T")

USER_AGENT = "helpdesk (exchangelib)"
# Requests say RequestServerVersion Exchange2016 (Exchange 2016, 2019 and SE take it), so no version
# probing is needed; exchangelib steps down by itself when a server refuses that version.
API_VERSION = "Exchange2016"
MAX_SYNC_CHANGES = 512  # the most SyncFolderItems returns in one response
BATCH_BYTES = 32 * 1024 * 1024  # MIME fetched in one GetItem request, at most (one big item goes alone)
AUTH_TYPES = {"ntlm": NTLM, "basic": BASIC, "digest": DIGEST}
HTTP_UNAUTHORIZED = 401
SUBMISSION_WAIT = 60.0  # seconds to hold mail back after ErrorSubmissionQuotaExceeded (a per-minute limit)
# Items that cannot be read as MIME: left in the folder, reported, and passed over.
UNREADABLE = (
    ews_errors.ErrorMimeContentConversionFailed,
    ews_errors.ErrorItemCorrupt,
    ews_errors.ErrorCorruptData,
)
# Answers that mean the configuration does not fit the server: wrong mailbox, folder, endpoint, rights.
MISCONFIGURED = (
    ews_errors.ErrorAccessDenied,
    ews_errors.ErrorNonExistentMailbox,
    ews_errors.ErrorFolderNotFound,
    ews_errors.ErrorInvalidSmtpAddress,
    ews_errors.ErrorImpersonateUserDenied,
    ews_errors.ErrorNotDelegate,
    ews_errors.ErrorSendAsDenied,
    ews_errors.ErrorQuotaExceeded,
    ews_errors.ErrorInvalidServerVersion,
    ews_errors.ErrorInvalidSchemaVersionForMailboxVersion,
    ews_errors.CASError,
    ews_errors.RedirectError,
)
# Answers about one outgoing message that no retry will change.
MESSAGE_REFUSED = (
    ews_errors.ErrorMessageSizeExceeded,
    ews_errors.ErrorInvalidRecipients,
    ews_errors.ErrorMailRecipientNotFound,
    ews_errors.ErrorMimeContentConversionFailed,
    ews_errors.ErrorMimeContentInvalid,
    ews_errors.ErrorItemSave,
)

ProblemKind = Literal["busy", "transient", "refused", "config", "message"]


class ServerBusy(TemporaryError):
    """The server is throttling us; ``retry_after`` is how long it asked us to wait (seconds), if it said."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EwsProblem(Exception):
    """A classified EWS failure: ``kind`` says whether waiting, fixing the setup, or nothing helps.

    ``busy``: throttled (``retry_after`` seconds when the server said); ``transient``: unreachable,
    timed out, 5xx; ``refused``: the login (HTTP 401); ``config``: mailbox, folder, rights, TLS;
    ``message``: one outgoing message was refused for good.
    """

    def __init__(self, kind: ProblemKind, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.kind: ProblemKind = kind
        self.detail = detail
        self.retry_after = retry_after

    def for_mailbox(self, name: str) -> TemporaryError | PermanentError:
        """The error a mailbox poll raises for this problem."""
        message = f"mailbox {name}: {self.detail}"
        if self.kind == "busy":
            return ServerBusy(message, self.retry_after)
        if self.kind in ("refused", "config"):
            return PermanentError(message)
        return TemporaryError(message)


# --- the connection ------------------------------------------------------------------------------


class _VerifyingAdapter(requests.adapters.HTTPAdapter):
    """An HTTP adapter that verifies TLS as one mailbox is configured, whatever the session or the
    environment (``REQUESTS_CA_BUNDLE``) says: ``verify`` is a CA file, True or False."""

    def __init__(self, verify: bool | str, **kwargs: Any) -> None:
        self._verify = verify
        super().__init__(**kwargs)

    def send(self, request: Any, stream: bool = False, timeout: Any = None, verify: Any = True,
             cert: Any = None, proxies: Any = None) -> Any:
        return super().send(request, stream=stream, timeout=timeout, verify=self._verify, cert=cert, proxies=proxies)


class _Uncached(CachingProtocol):  # type: ignore[misc]
    """exchangelib shares one protocol per endpoint and credentials process-wide; ours are private."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return type.__call__(cls, *args, **kwargs)


class _Protocol(Protocol, metaclass=_Uncached):  # type: ignore[misc]
    """One mailbox's connection to the server: its own timeout and TLS settings, no shared state.

    exchangelib keeps these as class attributes; here they live on the instance, so mailboxes with
    different settings can run in one process.
    """

    USERAGENT = USER_AGENT
    RETRY_WAIT = 0  # a back-off of 0 means "the server did not say how long"

    def __init__(self, config: Configuration, *, timeout: float, verify: bool | str) -> None:
        super().__init__(config=config)
        self.TIMEOUT = timeout
        self._verify = verify

    def raw_session(self, prefix: str, oauth2_client: Any = None, oauth2_session_params: Any = None,
                    oauth2_token_endpoint: Any = None) -> Any:
        session = super().raw_session(prefix, oauth2_client, oauth2_session_params, oauth2_token_endpoint)
        adapter = _VerifyingAdapter(
            self._verify, pool_block=True, pool_connections=self.CONNECTIONS_PER_SESSION,
            pool_maxsize=self.CONNECTIONS_PER_SESSION, max_retries=0,
        )
        session.mount(prefix, adapter)
        return session


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for: delay-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value) or None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait = when.timestamp() - (time.time() if now is None else now)
    return wait if wait > 0 else None


class _FailFast(FailFast):  # type: ignore[misc]
    """Fail at once (the daemon retries), but keep the ``Retry-After`` of a 503 or 500 answer, and
    take a 401 for a refused login even when it says ``Connection: close``."""

    def raise_response_errors(self, response: Any) -> Any:
        if response.status_code == HTTP_UNAUTHORIZED:
            raise ews_errors.UnauthorizedError(f"Invalid credentials for {response.url}")
        try:
            return super().raise_response_errors(response)
        except (ews_errors.ErrorInternalServerTransientError, ews_errors.ErrorServerBusy) as exc:
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait:
                raise ews_errors.ErrorServerBusy(f"HTTP {response.status_code}: {exc}", back_off=wait) from exc
            raise


def _underlying(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of ``kinds`` in ``exc``'s chain of causes (exchangelib re-raises its own)."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, kinds):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class EwsClient:
    """The exchangelib account of one configured mailbox: credentials, connection, token renewal.

    ``run(work)`` calls ``work(account)``; a refused OAuth token is renewed once and ``work`` runs
    again; every EWS or HTTP failure comes out as an :class:`EwsProblem`.
    """

    def __init__(self, mailbox: ConfiguredMailbox, secret: SecretResolver) -> None:
        self.mailbox = mailbox
        self.config: MailboxConfig = mailbox.config
        self._secret = secret
        self._account: Any = None
        self._token: str | None = None

    @property
    def endpoint(self) -> str:
        return self.config.service_endpoint or ""

    @property
    def verify(self) -> bool | str:
        if not self.config.verify_tls:
            return False
        return self.config.ca_file or True

    def close(self) -> None:
        if self._account is not None:
            self._account.protocol.close()
            self._account = None

    # --- credentials ---------------------------------------------------------------------------

    def _token_for(self, fetch: Callable[[str], str], doing: str) -> str:
        scope = self.mailbox.oauth_scope("ews")
        try:
            return fetch(scope)
        except TokenError as exc:
            message = f"mailbox {self.mailbox.name}: {doing} the OAuth token failed: {exc}"
            if exc.permanent:
                raise PermanentError(message) from None
            raise TemporaryError(message) from None

    def account(self) -> Any:
        """The account, built on first use; with OAuth rebuilt when the provider hands out a new token."""
        if self.config.auth == "oauth2":
            provider = self.mailbox.token_provider()
            token = self._token_for(provider.token, "getting")
            if token != self._token:
                self.close()
                self._token = token
        if self._account is None:
            self._account = self._build()
        return self._account

    def _renew(self) -> None:
        """Replace a token the server refused (another user of the provider may already have)."""
        provider = self.mailbox.token_provider()
        rejected = self._token or ""
        self._token = self._token_for(lambda scope: provider.renew(scope, rejected), "renewing")
        self.close()

    def _build(self) -> Any:
        cfg = self.config
        if "@" not in cfg.mailbox_address:
            raise PermanentError(
                f"mailbox {cfg.name}: the mailbox must be an SMTP address, not {cfg.mailbox_address!r} "
                "(set mailbox: when user is a DOMAIN\\account login)"
            )
        credentials: Any
        if cfg.auth == "oauth2":
            token = {"access_token": self._token or "", "token_type": "Bearer"}
            credentials, auth_type = OAuth2AuthorizationCodeCredentials(access_token=token), OAUTH2
        else:
            credentials = Credentials(cfg.user, mailbox_password(cfg, self._secret))
            auth_type = AUTH_TYPES[cfg.ews_auth]
        configuration = Configuration(
            service_endpoint=self.endpoint, credentials=credentials, auth_type=auth_type,
            version=Version(build=EXCHANGE_2016, api_version=API_VERSION), retry_policy=_FailFast(),
            max_connections=1,
        )
        protocol = _Protocol(configuration, timeout=cfg.timeout, verify=self.verify)
        # Account() makes a shared protocol from the config it is given: give it one without
        # credentials, then hand it this mailbox's own protocol.
        bare = Configuration(service_endpoint=self.endpoint, auth_type=NOAUTH, version=configuration.version)
        account = Account(
            primary_smtp_address=cfg.mailbox_address, config=bare, autodiscover=False, access_type=DELEGATE,
            default_timezone=EWS_UTC,
        )
        account.protocol = protocol
        return account

    # --- running requests ----------------------------------------------------------------------

    def run(self, work: Callable[[Any], T]) -> T:
        """``work(account)``, with a refused OAuth token renewed once; EWS failures as :class:`EwsProblem`."""
        try:
            return work(self.account())
        except ews_errors.UnauthorizedError as exc:
            if self.config.auth != "oauth2":
                raise self.problem(exc) from exc
            log.warning(
                "mailbox %s: %s refused the OAuth token for %s (HTTP 401); renewing it and trying once more",
                self.mailbox.name, self.endpoint, self.config.user,
            )
        except (ews_errors.EWSError, requests.RequestException, OSError) as exc:
            raise self.problem(exc) from exc
        self._renew()
        try:
            return work(self.account())
        except (ews_errors.EWSError, requests.RequestException, OSError) as exc:
            raise self.problem(exc, renewed=True) from exc

    def problem(self, exc: BaseException, renewed: bool = False) -> EwsProblem:
        """What ``exc`` means for this mailbox, with a message an operator can act on."""
        cfg = self.config
        where = f"EWS {self.endpoint}"
        if isinstance(exc, ews_errors.ErrorServerBusy):
            wait = exc.back_off or None
            if wait is None:  # no hint how long: an outage like any other
                return EwsProblem("transient", f"{where} is unavailable: {exc}")
            return EwsProblem("busy", f"{where} is busy: {exc}; it asks to wait {wait:.1f} s", wait)
        if isinstance(exc, ews_errors.ErrorSubmissionQuotaExceeded):
            limit = f"{where}: the sending limit of {cfg.mailbox_address} is reached: {exc}"
            return EwsProblem("busy", limit, SUBMISSION_WAIT)
        if isinstance(exc, ews_errors.UnauthorizedError):
            if cfg.auth == "oauth2":
                also = ", also after renewing it once" if renewed else ""
                return EwsProblem(
                    "refused",
                    f"{where} refused the OAuth token of provider {cfg.oauth} for {cfg.user} (HTTP 401){also}: "
                    "is the application allowed to use EWS (full_access_as_app or EWS.AccessAsUser.All) and is "
                    "OAuth enabled on the server?",
                )
            return EwsProblem(
                "refused",
                f"{where} refused the login as {cfg.user} (HTTP 401) with {cfg.ews_auth} authentication: check "
                "user, password and ews_auth (the EWS virtual directory must allow that method)",
            )
        tls = _underlying(exc, (requests.exceptions.SSLError, ssl.SSLError))
        if tls is not None:
            hint = " (set ca_file to the CA that signed the server's certificate)" if cfg.verify_tls else ""
            return EwsProblem("config", f"TLS with {where} failed: {tls}{hint}")
        if isinstance(exc, MISCONFIGURED):
            return EwsProblem("config", f"{where}: {type(exc).__name__}: {exc}{self._advice(exc)}")
        if isinstance(exc, MESSAGE_REFUSED):
            return EwsProblem("message", f"{where}: {type(exc).__name__}: {exc}")
        timeout = _underlying(exc, (requests.exceptions.Timeout, TimeoutError))
        if timeout is not None:
            return EwsProblem("transient", f"{where}: no answer within {cfg.timeout:g} s ({timeout})")
        broken = _underlying(exc, (requests.exceptions.ConnectionError, ConnectionError))
        if broken is not None:
            return EwsProblem("transient", f"cannot reach {where}: {broken}")
        return EwsProblem("transient", f"{where}: {type(exc).__name__}: {exc}")

    def _advice(self, exc: BaseException) -> str:
        if isinstance(exc, ews_errors.ErrorNonExistentMailbox | ews_errors.ErrorInvalidSmtpAddress):
            return f" (is {self.config.mailbox_address} the primary SMTP address of a mailbox on this server?)"
        if isinstance(exc, ews_errors.ErrorAccessDenied | ews_errors.ErrorNotDelegate):
            return f" (the login {self.config.user} needs full access to {self.config.mailbox_address})"
        if isinstance(exc, ews_errors.RedirectError):
            return " (service_endpoint must be the EWS URL itself: https://SERVER/EWS/Exchange.asmx)"
        return ""


# --- folders -------------------------------------------------------------------------------------


def _folder_parts(path: str) -> list[str]:
    return [part for part in path.replace("\\", "/").split("/") if part]


class Folders:
    """Folder ids by path (``Processed``, ``Inbox/Support``): ``INBOX`` is the inbox, every other
    path starts at the mailbox root (msgfolderroot, the top of the folders a user sees), or below the
    inbox when its first part is ``INBOX``."""

    def __init__(self, address: str) -> None:
        self._mailbox = Mailbox(email_address=address)
        self._ids: dict[str, Any] = {}

    def clear(self) -> None:
        self._ids.clear()

    def distinguished(self, name: str) -> Any:
        return DistinguishedFolderId(id=name, mailbox=self._mailbox)

    def resolve(self, account: Any, path: str, *, create: bool) -> Any:
        """The id of the folder at ``path``; missing folders are created when ``create``."""
        parts = _folder_parts(path)
        if not parts or [p.lower() for p in parts] == ["inbox"]:
            return self.distinguished("inbox")
        key = "/".join(p.lower() for p in parts)
        if key in self._ids:
            return self._ids[key]
        root = Root(account=account, _distinguished_id=self.distinguished("root"))
        folder: Any
        if parts[0].lower() == "inbox":
            folder, parts = Inbox(root=root, _distinguished_id=self.distinguished("inbox")), parts[1:]
        else:
            folder = MsgFolderRoot(root=root, _distinguished_id=self.distinguished("msgfolderroot"))
        for index, part in enumerate(parts):
            child = self._child(account, folder, part)
            if child is None:
                if not create:
                    raise ews_errors.ErrorFolderNotFound(f"no folder {'/'.join(parts[: index + 1])!r} in {path!r}")
                child = self._create(account, folder, part)
            folder = child
        self._ids[key] = FolderId(id=folder.id, changekey=folder.changekey)
        return self._ids[key]

    @staticmethod
    def _child(account: Any, parent: Any, name: str) -> Any:
        found = FindFolder(account=account, page_size=100).call(
            folders=[parent], additional_fields=[FieldPath(field=Folder.get_field_by_fieldname("name"))],
            restriction=None, shape=ID_ONLY, depth="Shallow", max_items=None, offset=0,
        )
        for folder in found:
            if isinstance(folder, Exception):
                raise folder
            if (folder.name or "").casefold() == name.casefold():
                return folder
        return None

    def _create(self, account: Any, parent: Any, name: str) -> Any:
        try:
            made = CreateFolder(account=account).get(
                parent_folder=parent, folders=[Folder(root=parent.root, name=name, folder_class="IPF.Note")]
            )
        except ews_errors.ErrorFolderExists:  # made meanwhile by someone else
            existing = self._child(account, parent, name)
            if existing is None:
                raise
            return existing
        log.info("mailbox %s: created folder %s", account.primary_smtp_address, name)
        return made


# --- intake --------------------------------------------------------------------------------------

SYNC_FIELDS = [FieldPath(field=Item.get_field_by_fieldname("size")),
               FieldPath(field=Message.get_field_by_fieldname("is_read"))]
MIME_FIELD = [FieldPath(field=Item.get_field_by_fieldname("mime_content"))]


@dataclass
class SyncPage:
    """One SyncFolderItems answer: the items created or changed, and the state after them."""

    items: list[Any]
    sync_state: str
    last: bool


class EwsMailbox(PolledMailbox):
    """One folder of one Exchange Server mailbox, read with SyncFolderItems."""

    def __init__(
        self, config: MailboxConfig, secret: SecretResolver = resolve_secret, providers: Providers | None = None
    ) -> None:
        super().__init__(config, secret, providers)
        self.client = EwsClient(self, secret)
        self.folders = Folders(config.mailbox_address)
        self._not_before = 0.0  # time.monotonic() before which the server asked not to be called

    @property
    def source(self) -> str:
        return self.name

    def close(self) -> None:
        self.client.close()
        self.folders.clear()

    # --- poll ----------------------------------------------------------------------------------

    def poll(self, intake: Intake) -> PollReport:
        waiting = self._not_before - time.monotonic()
        if waiting > 0:
            raise ServerBusy(
                f"mailbox {self.name}: EWS {self.client.endpoint} asked us to wait; {waiting:.1f} s to go", waiting
            )
        try:
            return self.client.run(lambda account: self._poll(intake, account))
        except EwsProblem as problem:
            if problem.retry_after:
                self._not_before = time.monotonic() + problem.retry_after
            self.close()
            raise problem.for_mailbox(self.name) from problem

    def _poll(self, intake: Intake, account: Any) -> PollReport:
        report = PollReport(mailbox=self.name)
        folder = self.folders.resolve(account, self.config.folder, create=False)
        state = load_sync_token(intake, self.name, self.config.folder)
        resynced = False
        seen: set[str] = set()
        while True:
            try:
                page = self._sync(account, folder, state)
            except ews_errors.ErrorInvalidSyncStateData:
                if state is None or resynced:
                    raise
                log.warning(
                    "mailbox %s: the server refused the sync state of %s (ErrorInvalidSyncStateData); reading the "
                    "folder again from the start (items already imported are recognised and not imported again)",
                    self.name, self.config.folder,
                )
                resynced, state = True, None
                store_sync_token(intake, self.name, self.config.folder, None)
                continue
            fresh = [item for item in page.items if item.id not in seen]
            seen.update(item.id for item in fresh)
            if not self._handle(intake, account, fresh, report):
                return report  # something is not settled: this page is replayed next time
            store_sync_token(intake, self.name, self.config.folder, page.sync_state)
            state = page.sync_state
            if page.last:
                return report

    def _sync(self, account: Any, folder: Any, state: str | None) -> SyncPage:
        service = SyncFolderItems(account=account)
        try:
            changes = list(service.call(
                folder=folder, shape=ID_ONLY, additional_fields=SYNC_FIELDS, sync_state=state, ignore=None,
                max_changes_returned=min(self.config.batch_size, MAX_SYNC_CHANGES), sync_scope="NormalItems",
            ))
        except AttributeError as exc:  # exchangelib reads SyncState before the response code
            raise ews_errors.MalformedResponseError(f"SyncFolderItems answer without a sync state: {exc}") from exc
        items: dict[str, Any] = {}
        for change in changes:
            if isinstance(change, Exception):
                raise change
            kind, item = change
            if kind in (SyncFolderItems.CREATE, SyncFolderItems.UPDATE) and getattr(item, "id", None):
                items.setdefault(item.id, item)  # an item reported twice is handled once
        return SyncPage(list(items.values()), str(service.sync_state or ""), bool(service.includes_last_item_in_range))

    def _handle(self, intake: Intake, account: Any, items: Sequence[Any], report: PollReport) -> bool:
        """Import the page's new items and acknowledge every committed one; False if any is unsettled."""
        if not items:
            return True
        by_key = {str(item.id): item for item in items}
        known = self._known(intake, by_key)
        if any(state is RawState.PENDING for state in known.values()):
            report.add(intake.process_pending())  # stored before a crash, never processed
            known = self._known(intake, by_key)
        settled_known = [key for key, state in known.items() if state is not RawState.PENDING]
        unsettled = len(known) - len(settled_known)
        report.acknowledged += self._acknowledge(account, [by_key[key] for key in settled_known])
        fresh = [key for key in by_key if key not in known]
        for batch in self._batches(fresh, by_key):
            results = intake.ingest(self.source, self._fetch(account, batch))
            report.add(results)
            settled = [r.key for r in results if r.settled]
            unsettled += len(results) - len(settled)
            report.acknowledged += self._acknowledge(account, [by_key[key] for key in settled])
        return unsettled == 0

    def _known(self, intake: Intake, keys: Iterable[str]) -> dict[str, RawState]:
        with transaction(intake.engine) as session:
            return known_source_keys(session, self.source, keys)

    def _batches(self, keys: Sequence[str], by_key: dict[str, Any]) -> Iterator[list[str]]:
        """Groups of at most ``batch_size`` items and about ``BATCH_BYTES`` (one big item alone)."""
        return size_batches(
            keys, lambda key: int(getattr(by_key[key], "size", None) or 0), self.config.batch_size, BATCH_BYTES
        )

    def _fetch(self, account: Any, keys: Sequence[str]) -> list[Incoming]:
        """The original MIME of each item (one GetItem request); items gone meanwhile are left out."""
        found = GetItem(account=account, chunk_size=max(1, len(keys))).call(
            items=[ItemId(id=key) for key in keys], additional_fields=MIME_FIELD, shape=ID_ONLY
        )
        incoming: list[Incoming] = []
        for key, item in zip(keys, found, strict=True):
            if isinstance(item, ews_errors.ErrorItemNotFound):
                log.info("mailbox %s: item %s vanished before it was read", self.name, key)
            elif isinstance(item, UNREADABLE):
                log.error("mailbox %s: item %s cannot be read as MIME and stays in %s: %s",
                          self.name, key, self.config.folder, item)
            elif isinstance(item, Exception):
                raise item
            elif item.mime_content is None:
                log.error("mailbox %s: the server sent no MIME for item %s; it stays in %s",
                          self.name, key, self.config.folder)
            else:
                incoming.append(Incoming(key=key, data=bytes(item.mime_content)))
        return incoming

    def _acknowledge(self, account: Any, items: Sequence[Any]) -> int:
        """Move, mark read or delete committed items; returns how many needed it."""
        action = self.config.action
        if action is AfterImport.FLAG:
            items = [i for i in items if getattr(i, "is_read", None) is not True and "is_read" in type(i).FIELDS]
        if action is AfterImport.KEEP or not items:
            return 0
        ids = [ItemId(id=item.id) for item in items]
        outcome: Iterable[Any]
        if action is AfterImport.MOVE:
            target = self.folders.resolve(account, self.config.move_to, create=True)
            outcome = MoveItem(account=account).call(items=ids, to_folder=target)
        elif action is AfterImport.DELETE:
            outcome = DeleteItem(account=account).call(
                items=ids, delete_type=SOFT_DELETE, send_meeting_cancellations=SEND_TO_NONE,
                affected_task_occurrences=ALL_OCCURRENCES, suppress_read_receipts=True,
            )
        else:
            outcome = UpdateItem(account=account).call(
                items=[(type(item)(account=account, id=item.id, is_read=True), ["is_read"]) for item in items],
                conflict_resolution=ALWAYS_OVERWRITE, message_disposition=SAVE_ONLY,
                send_meeting_invitations_or_cancellations=SEND_TO_NONE, suppress_read_receipts=True,
            )
        for result in outcome:
            # An item no longer there was moved or deleted by someone else: nothing left to do.
            if isinstance(result, Exception) and not isinstance(result, ews_errors.ErrorItemNotFound):
                raise result
        return len(items)
