"""What every polled mailbox adapter offers, and the retry policy the daemon applies to them."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from helpdesk.config import MailboxConfig, resolve_secret
from helpdesk.intake.runner import Intake, Result
from helpdesk.oauth.sasl import Mechanism
from helpdesk.oauth.tokens import OAuthProtocol, Providers, TokenError, TokenProvider, default_scope
from helpdesk.store.db import transaction
from helpdesk.store.models import MailboxState

log = logging.getLogger(__name__)

T = TypeVar("T")
K = TypeVar("K")


class TemporaryError(Exception):
    """The server is unreachable, slow or restarting: try again later."""


class PermanentError(Exception):
    """A configuration or account problem that retrying alone will not fix (still retried, slowly)."""


class TokenRefused(Exception):
    """The server refused an OAuth token: its reply and the SASL error status (``invalid_token``).

    Carries what the server said, never the token.
    """

    def __init__(self, reply: str, status: str | None = None) -> None:
        super().__init__(reply)
        self.reply = reply
        self.status = status

    def describe(self) -> str:
        return self.reply + (f" (SASL status {self.status})" if self.status else "")


def sasl_error_reply(mechanism: Mechanism) -> bytes:
    """What the client sends after the server's JSON error challenge so that the server ends the exchange.

    XOAUTH2 (Google, Microsoft): an empty response. OAUTHBEARER (RFC 7628 section 3.2.3): a single ^A.
    """
    return b"\x01" if mechanism == "oauthbearer" else b""


@dataclass
class PollReport:
    mailbox: str
    fetched: int = 0
    acknowledged: int = 0
    results: list[Result] = field(default_factory=list)

    def add(self, results: list[Result]) -> None:
        self.results.extend(results)
        self.fetched += len(results)


SecretResolver = Callable[[str | None], str | None]


def mailbox_password(config: MailboxConfig, secret: SecretResolver) -> str:
    """The mailbox's password from its ``${ENV}`` reference; a missing variable is a permanent error."""
    try:
        return secret(config.password) or ""
    except (KeyError, ValueError) as exc:
        raise PermanentError(f"mailbox {config.name}: {exc.args[0]}") from None


class ConfiguredMailbox:
    """What the adapters share: their configuration and how to get the password or the OAuth tokens."""

    def __init__(
        self, config: MailboxConfig, secret: SecretResolver = resolve_secret, providers: Providers | None = None
    ) -> None:
        self.config = config
        self.name = config.name
        self._secret = secret
        self._providers = providers

    def oauth_scope(self, protocol: OAuthProtocol) -> str:
        """The scope to ask the mailbox's provider for when speaking ``protocol``."""
        if self.config.oauth is None or self._providers is None:
            raise PermanentError(f"mailbox {self.name}: auth: oauth2 needs a token provider (oauth:)")
        return default_scope(self._providers.config(self.config.oauth), protocol)

    def token_provider(self) -> TokenProvider:
        """The provider named by ``oauth:``; its absence is a permanent (configuration) error."""
        if self.config.oauth is None or self._providers is None:
            raise PermanentError(f"mailbox {self.name}: auth: oauth2 needs a token provider (oauth:)")
        try:
            return self._providers.get(self.config.oauth)
        except TokenError as exc:
            raise PermanentError(f"mailbox {self.name}: {exc}") from None

    def token_login(self, protocol: OAuthProtocol, login: Callable[[str], T]) -> T:
        """Run ``login(token)``; when the server refuses the token (:class:`TokenRefused`), renew it and
        run ``login`` once more. A token refused twice is a :class:`PermanentError` naming the server's
        reply; a token that cannot be had is permanent or temporary as the :class:`TokenError` says.
        """
        provider = self.token_provider()
        scope = self.oauth_scope(protocol)
        token = self._obtain(lambda: provider.token(scope), "getting")
        try:
            return login(token)
        except TokenRefused as refused:
            log.warning(
                "mailbox %s: %s refused the OAuth token of provider %s for %s: %s; renewing it and trying once more",
                self.name, self.config.endpoint, provider.name, self.config.user, refused.describe(),
            )
        renewed = self._obtain(lambda: provider.renew(scope, token), "renewing")
        try:
            return login(renewed)
        except TokenRefused as refused:
            raise PermanentError(
                f"mailbox {self.name}: the OAuth token was refused by {self.config.endpoint} (login as "
                f"{self.config.user} with {self.config.sasl.upper()}, token of provider {provider.name}), also after "
                f"renewing it once: {refused.describe()}"
            ) from None

    def _obtain(self, fetch: Callable[[], str], doing: str) -> str:
        """A token from ``fetch``; a :class:`TokenError` becomes a permanent or temporary mailbox error."""
        try:
            return fetch()
        except TokenError as exc:
            message = f"mailbox {self.name}: {doing} the OAuth token failed: {exc}"
            if exc.permanent:
                raise PermanentError(message) from None
            raise TemporaryError(message) from None


class PolledMailbox(ConfiguredMailbox):
    """A mailbox without server push: the daemon polls it on a schedule."""

    @property
    def can_idle(self) -> bool:
        return False

    def wait(self, timeout: float) -> bool:
        return False


def size_batches(
    keys: Iterable[K], size_of: Callable[[K], int], batch_size: int, max_bytes: int
) -> Iterator[list[K]]:
    """Groups of at most ``batch_size`` keys and about ``max_bytes`` (one big message alone)."""
    batch: list[K] = []
    total = 0
    for key in keys:
        size = size_of(key)
        if batch and (len(batch) >= batch_size or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(key)
        total += size
    if batch:
        yield batch


class Mailbox(Protocol):
    name: str

    @property
    def can_idle(self) -> bool:
        """True when ``wait`` can block on server push (IMAP IDLE) instead of a timer."""
        ...

    def poll(self, intake: Intake) -> PollReport:
        """Connect if needed, import everything waiting, acknowledge what was committed."""
        ...

    def wait(self, timeout: float) -> bool:
        """Block until new mail may be there (IDLE) or ``timeout`` passes; True if the server said so."""
        ...

    def close(self) -> None: ...


@dataclass
class Backoff:
    """Exponential backoff with jitter: 2 s, 4 s, 8 s ... up to ``maximum``; reset after a success."""

    initial: float = 2.0
    maximum: float = 300.0
    factor: float = 2.0
    failures: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        base = min(self.maximum, self.initial * self.factor**self.failures)
        self.failures += 1
        jitter = (rng or random).uniform(0.8, 1.2)
        return min(self.maximum, base * jitter)

    def reset(self) -> None:
        self.failures = 0


def load_sync_token(intake: Intake, mailbox: str, folder: str) -> str | None:
    """The stored sync token (delta link, sync state) of a folder; records the poll's start."""
    with transaction(intake.engine) as session:
        state = session.get(MailboxState, (mailbox, folder)) or MailboxState(mailbox=mailbox, folder=folder)
        state.last_poll_at = intake.clock()
        state.last_error = None
        session.add(state)
        return state.sync_token


def store_sync_token(intake: Intake, mailbox: str, folder: str, token: str | None) -> None:
    """Advance (or, with None, forget) the folder's sync token once what it covers is stored."""
    with transaction(intake.engine) as session:
        state = session.get(MailboxState, (mailbox, folder)) or MailboxState(mailbox=mailbox, folder=folder)
        state.sync_token = token
        session.add(state)
