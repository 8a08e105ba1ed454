"""The operator's configuration: ``channels.yaml`` as typed, validated pydantic models.

``load()`` returns a :class:`Config` or raises :class:`ConfigError` listing *every* problem with its
location (``channels[2].mailboxes[0].host: Field required``). Secrets are never written inline: a
password field holds an ``${ENV_VAR}`` reference that is resolved when a connection is made.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

ENV_REF = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one ``location: message`` per fault."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


def parse_duration(value: object) -> timedelta:
    """Accept ``90``, ``"15m"``, ``"2h"``, ``"14d"`` (seconds when a bare number)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str):
        match = DURATION.match(value)
        if match:
            return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
        if value.strip().upper().startswith("P"):  # ISO 8601, e.g. P2D or PT3H
            try:
                return _ISO_DURATION.validate_python(value.strip())
            except ValidationError:
                pass
    raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 15m, 2h, 14d)")


_ISO_DURATION = TypeAdapter(timedelta)


def optional_duration(value: object) -> timedelta | None:
    return None if value is None else parse_duration(value)

Duration = Annotated[timedelta, Field(json_schema_extra={"format": "duration"})]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _env_reference(value: str | None) -> str | None:
    if value is None:
        return None
    if not ENV_REF.match(value):
        raise ValueError("must be an environment reference like ${IMAP_PASSWORD}, never the secret itself")
    return value


def _mail_addresses(value: list[str]) -> list[str]:
    bad = [a for a in value if not ADDRESS.match(a)]
    if bad:
        raise ValueError(f"not a mail address: {', '.join(bad)}")
    return [a.lower() for a in value]


def resolve_secret(reference: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Resolve an ``${ENV}`` reference; raise ``KeyError`` naming the variable when it is unset."""
    if reference is None:
        return None
    env = os.environ if environ is None else environ
    match = ENV_REF.match(reference)
    if not match:
        raise ValueError(f"not an environment reference: {reference!r}")
    name = match.group(1)
    if name not in env:
        raise KeyError(f"environment variable {name} is not set")
    return env[name]


class TlsMode(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    IMPLICIT = "implicit"


class AfterImport(StrEnum):
    MOVE = "move"
    FLAG = "flag"
    DELETE = "delete"
    KEEP = "keep"


class OAuthConfig(_Model):
    """Where OAuth 2.0 access tokens for a mailbox or the SMTP relay come from.

    ``microsoft``: the Microsoft identity platform's client-credentials grant through msal, with a
    client secret or (recommended) a certificate. ``refresh_token``: any OAuth 2.0 token endpoint
    given a long-lived refresh token (Google Workspace). ``static``: a fixed token (tests, or a token
    another process renews into the environment).
    """

    kind: Literal["microsoft", "refresh_token", "static"]
    # microsoft
    tenant: str | None = None  # the directory (tenant) id or a verified domain
    client_id: str | None = None
    client_secret: str | None = None  # ${ENV} reference
    certificate: str | None = None  # PEM file holding the certificate (and the key unless certificate_key)
    certificate_key: str | None = None  # PEM file of the private key, when kept apart
    certificate_password: str | None = None  # ${ENV} reference, for an encrypted key
    authority_host: str = "https://login.microsoftonline.com"
    # refresh_token
    token_url: str | None = None
    refresh_token: str | None = None  # ${ENV} reference
    # static
    token: str | None = None  # ${ENV} reference
    # all kinds: the scope asked for, overriding the one the protocol implies
    scope: str | None = None
    verify_tls: bool = True
    ca_file: str | None = None
    timeout: float = Field(default=30.0, gt=0)

    _check_secrets = field_validator("client_secret", "certificate_password", "refresh_token", "token")(
        _env_reference
    )

    @model_validator(mode="after")
    def _complete(self) -> OAuthConfig:
        if self.kind == "microsoft":
            missing = [f for f in ("tenant", "client_id") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a microsoft provider needs {' and '.join(missing)}")
            if (self.client_secret is None) == (self.certificate is None):
                raise ValueError("a microsoft provider needs exactly one of client_secret and certificate")
            if not self.authority_host.startswith("https://"):
                raise ValueError("authority_host must be an https:// URL")
        elif self.kind == "refresh_token":
            missing = [f for f in ("token_url", "client_id", "refresh_token") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a refresh_token provider needs {', '.join(missing)}")
        elif self.token is None:
            raise ValueError("a static provider needs token")
        return self


MailboxKind = Literal["imap", "pop3", "graph", "ews"]
AuthKind = Literal["password", "oauth2"]
GRAPH_URL = "https://graph.microsoft.com/v1.0"
_DEFAULT_POLL = {"graph": 10.0}


class MailboxConfig(_Model):
    """One mailbox the daemon reads: IMAP, POP3, Microsoft Graph (Microsoft 365) or EWS (Exchange Server).

    For ``graph`` the ``user`` is the mailbox address (a shared mailbox works) and ``oauth`` names the
    token provider; for ``ews`` ``service_endpoint`` is the server's ``/EWS/Exchange.asmx`` URL.
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: MailboxKind
    host: str | None = Field(default=None, min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsMode = TlsMode.IMPLICIT
    verify_tls: bool = True
    ca_file: str | None = None
    user: str = Field(min_length=1)
    auth: AuthKind = "password"
    password: str | None = None
    oauth: str | None = None  # the name of a provider under ``oauth:``
    sasl: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    folder: str = "INBOX"
    after_import: AfterImport | None = None
    move_to: str = "Processed"
    flag: str = r"\Seen"
    idle: bool = True
    poll_interval: float = Field(default=60.0, gt=0)
    batch_size: int = Field(default=200, ge=1, le=5000)
    timeout: float = Field(default=60.0, gt=0)
    graph_url: str = GRAPH_URL  # Microsoft Graph's endpoint (national clouds differ)
    service_endpoint: str | None = None  # EWS: https://mail.example.com/EWS/Exchange.asmx
    ews_auth: Literal["ntlm", "basic", "digest"] = "ntlm"  # EWS with a password
    # EWS: the mailbox to open when ``user`` is a service account with full access to it
    mailbox: str | None = None

    _check_password = field_validator("password")(_env_reference)

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and "poll_interval" not in data and data.get("kind") in _DEFAULT_POLL:
            return {**data, "poll_interval": _DEFAULT_POLL[data["kind"]]}
        return data

    @model_validator(mode="after")
    def _per_kind(self) -> MailboxConfig:
        if self.kind == "pop3" and self.after_import in (AfterImport.MOVE, AfterImport.FLAG):
            raise ValueError("POP3 has no folders or flags: after_import must be 'delete' or 'keep'")
        if self.kind in ("imap", "pop3") and self.host is None:
            raise ValueError(f"an {self.kind} mailbox needs host")
        if self.kind == "ews" and self.service_endpoint is None:
            raise ValueError("an ews mailbox needs service_endpoint (https://SERVER/EWS/Exchange.asmx)")
        if self.mailbox is not None and self.kind != "ews":
            raise ValueError("mailbox applies to ews only (for graph, user is the mailbox address)")
        if self.kind == "graph" and self.auth != "oauth2":
            raise ValueError("Microsoft Graph takes only OAuth: set auth: oauth2 and oauth: PROVIDER")
        if self.auth == "oauth2" and self.oauth is None:
            raise ValueError("auth: oauth2 needs oauth: the name of a provider under oauth:")
        if self.auth == "password" and self.password is None:
            raise ValueError("password is required (an ${ENV} reference), or set auth: oauth2")
        return self

    @property
    def action(self) -> AfterImport:
        """What to do at the source once a message is committed (POP3: delete, others: move)."""
        if self.after_import is not None:
            return self.after_import
        return AfterImport.DELETE if self.kind == "pop3" else AfterImport.MOVE

    @property
    def mailbox_address(self) -> str:
        """The mailbox read: ``mailbox`` (EWS with a service account) or else ``user``."""
        return self.mailbox or self.user

    @property
    def endpoint(self) -> str:
        """Where the mailbox is reached (host or URL), for messages."""
        if self.kind == "graph":
            return self.graph_url
        if self.kind == "ews":
            return self.service_endpoint or ""
        return self.host or ""

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        implicit = self.tls is TlsMode.IMPLICIT
        if self.kind == "imap":
            return 993 if implicit else 143
        if self.kind == "pop3":
            return 995 if implicit else 110
        return 443


class RuleMatch(_Model):
    """Conditions of a routing rule; all given conditions must hold."""

    sender_domain: list[str] | None = None
    sender: list[str] | None = None
    subject: str | None = None
    headers: dict[str, str] | None = None

    @field_validator("subject")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    @field_validator("headers")
    @classmethod
    def _header_regexes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for pattern in (value or {}).values():
            re.compile(pattern)
        return value

    @field_validator("sender_domain", "sender")
    @classmethod
    def _lower(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [v.strip().lower() for v in value]


class RuleAction(_Model):
    channel: str | None = None
    priority: int | None = Field(default=None, ge=1, le=5)
    category: str | None = None
    type: str | None = None


class RuleConfig(_Model):
    name: str = Field(min_length=1)
    match: RuleMatch
    set: RuleAction


class ResponsibilityName(StrEnum):
    """Where the ball is while a ticket has a status: with us, with the customer, or nowhere (done)."""

    US = "us"
    CUSTOMER = "customer"
    DONE = "done"


class StatusConfig(_Model):
    """A ticket status. ``group`` names the main status it is a sub-status of (itself if none)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    label: str = ""
    responsibility: ResponsibilityName
    group: str | None = None


DEFAULT_HOURS: dict[str, str | list[str]] = {"mon-fri": "08:00-17:00"}


class CalendarConfig(_Model):
    """Business hours: a time zone, weekly hours, public holidays (``holidays`` package) and extra dates."""

    timezone: str
    hours: dict[str, str | list[str]] = Field(default_factory=lambda: dict(DEFAULT_HOURS))
    country: str | None = None
    subdivision: str | None = None
    holidays: list[date] = Field(default_factory=list)


class TargetsConfig(_Model):
    """Business time allowed for the first answer, each later answer, and the solution."""

    first_response: Duration | None = None
    next_response: Duration | None = None
    resolution: Duration | None = None

    _duration = field_validator("first_response", "next_response", "resolution", mode="before")(optional_duration)


WARNING_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class SlaPolicyConfig(_Model):
    """Targets per priority (``default`` for the rest) over a calendar; warn at a share or before."""

    calendar: str
    warning: str = "75%"
    targets: dict[str, TargetsConfig]

    @field_validator("targets", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out: dict[str, object] = {}
        for key, targets in value.items():
            name = str(key).strip().lower()
            if name != "default" and name not in {"1", "2", "3", "4", "5"}:
                raise ValueError(f"targets: {key!r} is neither 'default' nor a priority 1-5")
            out[name] = targets
        return out

    @field_validator("warning")
    @classmethod
    def _warning(cls, value: str) -> str:
        match = WARNING_RE.match(str(value))
        if match:
            share = float(match.group(1))
            if not 0 < share < 100:
                raise ValueError(f"warning share must lie between 0% and 100%, not {value}")
            return value
        parse_duration(value)
        return str(value)

    def targets_for(self, priority: int) -> TargetsConfig:
        return self.targets.get(str(priority)) or self.targets.get("default") or TargetsConfig()


class EscalationStep(_Model):
    """After ``after`` of business time without a change: release the owner and/or move the ticket."""

    after: Duration
    release_owner: bool = False
    move_to: str | None = None

    _duration = field_validator("after", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _does_something(self) -> EscalationStep:
        if not self.release_owner and self.move_to is None:
            raise ValueError("an escalation step must release the owner, move the ticket, or both")
        return self


class UnknownSenders(StrEnum):
    CREATE = "create"
    QUARANTINE = "quarantine"


class ChannelConfig(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    prefix: str = Field(pattern=r"^[A-Z][A-Z0-9]{0,9}$")
    addresses: list[str] = Field(min_length=1)
    mailboxes: list[MailboxConfig] = Field(default_factory=list)
    rules: list[RuleConfig] = Field(default_factory=list)
    unknown_senders: UnknownSenders = UnknownSenders.CREATE
    default_priority: int = Field(default=3, ge=1, le=5)
    reopen_window: Duration = timedelta(days=14)
    acknowledge: bool = True  # send the customer an acknowledgement for a new ticket
    from_name: str | None = None  # display name on mail from the channel address
    templates: str | None = None  # a directory whose templates override the shipped ones
    workflow: str | None = None  # permitted status transitions (none: every transition)
    sla: str | None = None  # the SLA policy of tickets in this channel (an organisation's overrides it)
    calendar: str | None = None  # business hours for escalation when there is no SLA policy
    escalation: list[EscalationStep] = Field(default_factory=list)
    pending_auto_close: Duration | None = None  # close a pending ticket after this customer silence
    auto_close_status: str = "closed"
    # Send this channel's mail through a graph or ews mailbox (by name) instead of the SMTP relay.
    send_through: str | None = None

    @property
    def address(self) -> str:
        """The address mail from this channel is sent from (the first one listed)."""
        return self.addresses[0]

    _duration = field_validator("reopen_window", mode="before")(parse_duration)
    _auto_close = field_validator("pending_auto_close", mode="before")(optional_duration)

    _check_addresses = field_validator("addresses")(_mail_addresses)


class OrganisationConfig(_Model):
    name: str = Field(min_length=1)
    domains: list[str] = Field(default_factory=list)
    contacts: list[ContactConfig] = Field(default_factory=list)
    sla: str | None = None  # the contract's SLA policy, overriding the channel's

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [d.strip().lower() for d in value]


class ContactConfig(_Model):
    name: str = ""
    addresses: list[str] = Field(min_length=1)

    _check_addresses = field_validator("addresses")(_mail_addresses)


class StaffRole(StrEnum):
    """What a staff member may do by mail: agents work tickets of their channels; leads and admins
    may also hand tickets to others (``#owner``, ``#assignee``) and act in every channel."""

    AGENT = "agent"
    LEAD = "lead"
    ADMIN = "admin"


class StaffConfig(_Model):
    """A member of the support team. ``name`` is how commands and @mentions refer to them."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    display_name: str = ""
    addresses: list[str] = Field(min_length=1)
    role: StaffRole = StaffRole.AGENT
    channels: list[str] = Field(default_factory=list)  # empty: every channel

    _check_addresses = field_validator("addresses")(_mail_addresses)

    @property
    def label(self) -> str:
        return self.display_name or self.name

    def works_in(self, channel: str) -> bool:
        return self.role is not StaffRole.AGENT or not self.channels or channel in self.channels


class SmtpConfig(_Model):
    """The server outgoing mail is handed to (the organisation's relay or the local MTA)."""

    host: str = "127.0.0.1"
    port: int | None = Field(default=None, ge=1, le=65535)
    tls: TlsMode = TlsMode.STARTTLS
    verify_tls: bool = True
    ca_file: str | None = None
    user: str | None = None
    auth: AuthKind = "password"
    password: str | None = None
    oauth: str | None = None  # auth: oauth2 -- the name of a provider under ``oauth:``
    sasl: Literal["xoauth2", "oauthbearer"] = "xoauth2"
    timeout: float = Field(default=30.0, gt=0)
    # Temporary failures (4xx, refused connection, timeout) are retried with backoff this long.
    retry_for: Duration = timedelta(days=2)
    batch_size: int = Field(default=50, ge=1, le=1000)
    poll_interval: float = Field(default=5.0, gt=0)

    _check_password = field_validator("password")(_env_reference)
    _duration = field_validator("retry_for", mode="before")(parse_duration)

    @model_validator(mode="after")
    def _oauth(self) -> SmtpConfig:
        if self.auth == "oauth2" and (self.oauth is None or self.user is None):
            raise ValueError("auth: oauth2 needs user (the mailbox to send as) and oauth (a provider name)")
        return self

    @property
    def effective_port(self) -> int:
        if self.port is not None:
            return self.port
        return {TlsMode.IMPLICIT: 465, TlsMode.STARTTLS: 587, TlsMode.NONE: 25}[self.tls]


AuthMethod = Literal["dkim", "spf", "dmarc"]
DEFAULT_AUTH_METHODS: tuple[AuthMethod, ...] = ("dkim", "dmarc")


class TrustConfig(_Model):
    """When a mail from a staff address may carry commands.

    The signed reply address in every mail we send is always accepted. Besides it, the
    Authentication-Results header of our own receiving server (listed by its authserv-id; headers
    from any other server are ignored) can vouch for the sender's domain through ``methods``."""

    authserv_ids: list[str] = Field(default_factory=list)
    methods: list[AuthMethod] = Field(default_factory=lambda: list(DEFAULT_AUTH_METHODS))

    @field_validator("authserv_ids")
    @classmethod
    def _lower(cls, value: list[str]) -> list[str]:
        return [v.strip().lower() for v in value]


class RateLimit(_Model):
    count: int = Field(ge=0)
    window: Duration

    _duration = field_validator("window", mode="before")(parse_duration)


class AckLimits(_Model):
    """At most this many acknowledgements per ticket and per recipient within the window."""

    per_ticket: RateLimit = RateLimit(count=10, window=timedelta(minutes=10))
    per_recipient: RateLimit = RateLimit(count=30, window=timedelta(minutes=10))


class SchedulerConfig(_Model):
    """How often the scheduler looks for due work, and how long a claim on a job lasts."""

    sweep_interval: float = Field(default=30.0, gt=0)
    batch_size: int = Field(default=500, ge=1, le=10000)
    # A mailbox poll claimed by a daemon that died is free again after this.
    lease: Duration = timedelta(minutes=5)

    _duration = field_validator("lease", mode="before")(parse_duration)


class ListenerConfig(_Model):
    """The LMTP (or SMTP) listener an MTA delivers into."""

    enabled: bool = True
    protocol: Literal["lmtp", "smtp"] = "lmtp"
    host: str = "127.0.0.1"
    port: int = Field(default=8024, ge=0, le=65535)
    max_message_size: int = Field(default=50 * 1024 * 1024, ge=1024)


class Config(_Model):
    database_url: str = "sqlite:///helpdesk.db"
    own_addresses: list[str] = Field(default_factory=list)
    listener: ListenerConfig = Field(default_factory=ListenerConfig)
    default_channel: str | None = None
    # Extra processes that parse and classify large fetched batches (0: all in the main process).
    parse_workers: int = Field(default=1, ge=0, le=16)
    channels: list[ChannelConfig] = Field(min_length=1)
    organisations: list[OrganisationConfig] = Field(default_factory=list)
    staff: list[StaffConfig] = Field(default_factory=list)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    # Secret for the signed reply addresses (HMAC); an environment reference, never the value.
    reply_secret: str = "${HELPDESK_REPLY_SECRET}"
    # Domain of the Message-IDs we generate (default: the domain of the first channel address).
    mail_domain: str | None = None
    trust: TrustConfig = Field(default_factory=TrustConfig)
    acknowledgements: AckLimits = Field(default_factory=AckLimits)
    statuses: list[StatusConfig] = Field(default_factory=list)  # added to (or replacing) the built-in ones
    workflows: dict[str, dict[str, list[str]]] = Field(default_factory=dict)  # name -> from -> [to, ...]
    calendars: dict[str, CalendarConfig] = Field(default_factory=dict)
    sla_policies: dict[str, SlaPolicyConfig] = Field(default_factory=dict)
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig())
    oauth: dict[str, OAuthConfig] = Field(default_factory=dict)  # token providers by name

    _check_secret = field_validator("reply_secret")(_env_reference)

    @field_validator("own_addresses")
    @classmethod
    def _own(cls, value: list[str]) -> list[str]:
        return [a.lower() for a in value]

    @model_validator(mode="after")
    def _cross_checks(self) -> Config:
        problems: list[str] = []
        names = [c.name for c in self.channels]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            problems.append(f"channel name {dup!r} is used more than once")
        prefixes = [c.prefix for c in self.channels]
        for dup in sorted({p for p in prefixes if prefixes.count(p) > 1}):
            problems.append(f"ticket prefix {dup!r} is used by more than one channel")
        seen: dict[str, str] = {}
        for channel in self.channels:
            for address in channel.addresses:
                if address in seen and seen[address] != channel.name:
                    problems.append(f"address {address} belongs to both {seen[address]} and {channel.name}")
                seen[address] = channel.name
        boxes = [m.name for c in self.channels for m in c.mailboxes]
        for dup in sorted({b for b in boxes if boxes.count(b) > 1}):
            problems.append(f"mailbox name {dup!r} is used more than once")
        for i, channel in enumerate(self.channels):
            for j, rule in enumerate(channel.rules):
                if rule.set.channel is not None and rule.set.channel not in names:
                    problems.append(
                        f"channels[{i}].rules[{j}].set.channel: unknown channel {rule.set.channel!r}"
                    )
        problems.extend(self._staff_problems(names))
        problems.extend(self._transport_problems())
        if not problems:
            from helpdesk.service import service_problems

            problems.extend(service_problems(self))
        if self.default_channel is not None and self.default_channel not in names:
            problems.append(f"default_channel: unknown channel {self.default_channel!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _transport_problems(self) -> list[str]:
        """Unknown token providers and send_through mailboxes that cannot send."""
        problems: list[str] = []
        kinds = {m.name: m.kind for c in self.channels for m in c.mailboxes}
        for i, channel in enumerate(self.channels):
            for j, box in enumerate(channel.mailboxes):
                if box.oauth is not None and box.oauth not in self.oauth:
                    problems.append(f"channels[{i}].mailboxes[{j}].oauth: unknown provider {box.oauth!r}")
            target = channel.send_through
            if target is not None and kinds.get(target) not in ("graph", "ews"):
                what = "unknown mailbox" if target not in kinds else f"{kinds[target]} mailbox"
                problems.append(f"channels[{i}].send_through: {what} {target!r} (only graph and ews mailboxes send)")
        if self.smtp.oauth is not None and self.smtp.oauth not in self.oauth:
            problems.append(f"smtp.oauth: unknown provider {self.smtp.oauth!r}")
        return problems

    def mailbox(self, name: str) -> MailboxConfig | None:
        return next((m for c in self.channels for m in c.mailboxes if m.name == name), None)

    def _staff_problems(self, channel_names: list[str]) -> list[str]:
        problems: list[str] = []
        staff_names = [s.name for s in self.staff]
        for dup in sorted({n for n in staff_names if staff_names.count(n) > 1}):
            problems.append(f"staff name {dup!r} is used more than once")
        owners: dict[str, str] = {}
        own = self.all_own_addresses()
        for i, member in enumerate(self.staff):
            for channel in member.channels:
                if channel not in channel_names:
                    problems.append(f"staff[{i}].channels: unknown channel {channel!r}")
            for address in member.addresses:
                if address in own:
                    problems.append(f"staff[{i}].addresses: {address} is one of the system's own addresses")
                if address in owners and owners[address] != member.name:
                    problems.append(f"staff[{i}].addresses: {address} also belongs to {owners[address]}")
                owners[address] = member.name
        return problems

    def staff_by_address(self, address: str) -> StaffConfig | None:
        address = address.lower()
        for member in self.staff:
            if address in member.addresses:
                return member
        return None

    def staff_member(self, name: str) -> StaffConfig | None:
        for member in self.staff:
            if member.name == name.lower():
                return member
        return None

    @property
    def message_id_domain(self) -> str:
        return self.mail_domain or self.channels[0].address.rpartition("@")[2]

    def find_channel(self, name: str) -> ChannelConfig | None:
        return next((c for c in self.channels if c.name == name), None)

    def channel(self, name: str) -> ChannelConfig:
        channel = self.find_channel(name)
        if channel is None:
            raise KeyError(name)
        return channel

    @property
    def fallback_channel(self) -> ChannelConfig:
        return self.channel(self.default_channel) if self.default_channel else self.channels[0]

    def mailboxes(self) -> list[tuple[ChannelConfig, MailboxConfig]]:
        return [(c, m) for c in self.channels for m in c.mailboxes]

    def all_own_addresses(self) -> set[str]:
        return set(self.own_addresses) | {a for c in self.channels for a in c.addresses}


OrganisationConfig.model_rebuild()


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith(("function-", "constrained-")) or part in ("lax-or-strict", "json-or-python"):
            continue
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def validate(data: Any, source: str = "<config>") -> Config:
    """Validate already-loaded YAML data; raise :class:`ConfigError` with every located problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, ["(top level): expected a mapping with a 'channels' list"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{_location(tuple(err['loc']))}: {message}")
        raise ConfigError(source, problems) from None


def load(path: str | Path) -> Config:
    """Read and validate ``channels.yaml``; ``HELPDESK_DATABASE_URL`` overrides ``database_url``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"(file): cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise ConfigError(str(path), [f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    config = validate(data, str(path))
    override = os.environ.get("HELPDESK_DATABASE_URL")
    if override:
        config = config.model_copy(update={"database_url": override})
    return config


def missing_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[str]:
    """Located problems for secrets whose environment variable is not set."""
    problems = []
    secrets: list[tuple[str, str | None]] = [
        ("reply_secret", config.reply_secret),
        ("smtp.password", config.smtp.password),
    ]
    for i, channel in enumerate(config.channels):
        for j, box in enumerate(channel.mailboxes):
            secrets.append((f"channels[{i}].mailboxes[{j}].password", box.password))
    for name, provider in config.oauth.items():
        for field_name in ("client_secret", "certificate_password", "refresh_token", "token"):
            secrets.append((f"oauth.{name}.{field_name}", getattr(provider, field_name)))
    for where, reference in secrets:
        try:
            resolve_secret(reference, environ)
        except KeyError as exc:
            problems.append(f"{where}: {exc.args[0]}")
    return problems
