"""What every polled mailbox adapter offers, and the retry policy the daemon applies to them."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from helpdesk.config import MailboxConfig, resolve_secret
from helpdesk.intake.runner import Intake, Result
from helpdesk.oauth.tokens import Providers, TokenError, TokenProvider


class TemporaryError(Exception):
    """The server is unreachable, slow or restarting: try again later."""


class PermanentError(Exception):
    """A configuration or account problem that retrying alone will not fix (still retried, slowly)."""


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

    def token_provider(self) -> TokenProvider:
        """The provider named by ``oauth:``; its absence is a permanent (configuration) error."""
        if self.config.oauth is None or self._providers is None:
            raise PermanentError(f"mailbox {self.name}: auth: oauth2 needs a token provider (oauth:)")
        try:
            return self._providers.get(self.config.oauth)
        except TokenError as exc:
            raise PermanentError(f"mailbox {self.name}: {exc}") from None


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
