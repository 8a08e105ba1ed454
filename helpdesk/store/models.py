"""SQLModel tables. Every schema change gets an Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, LargeBinary, String, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from helpdesk.store.types import UTCDateTime


class Direction(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"
    INTERNAL = "internal"


class ItemKind(StrEnum):
    MESSAGE = "message"
    NOTE = "note"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    SYSTEM = "system"


class Visibility(StrEnum):
    CUSTOMER = "customer"
    INTERNAL = "internal"


class RawState(StrEnum):
    PENDING = "pending"
    PROCESSED = "processed"
    QUARANTINED = "quarantined"


class Outcome(StrEnum):
    TICKET = "ticket"
    FOLLOW_UP = "follow_up"
    STAFF = "staff"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    QUARANTINED = "quarantined"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


class OutboxState(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


class OutboxKind(StrEnum):
    ACK = "ack"
    NOTIFICATION = "notification"
    REPLY = "reply"
    COMMAND_ERROR = "command_error"
    FAILURE_NOTICE = "failure_notice"


class Organisation(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class OrganisationDomain(SQLModel, table=True):
    __tablename__ = "organisation_domain"
    domain: str = Field(primary_key=True)
    organisation_id: int = Field(foreign_key="organisation.id", index=True)


class Contact(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    organisation_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    created_at: datetime = Field(sa_type=UTCDateTime)


class ContactAddress(SQLModel, table=True):
    __tablename__ = "contact_address"
    address: str = Field(primary_key=True)
    contact_id: int = Field(foreign_key="contact.id", index=True)
    bouncing: bool = False
    bounce_count: int = 0
    last_bounce_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_bounce_reason: str | None = None


class Channel(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True)
    prefix: str = Field(unique=True)
    last_number: int = 0


class Ticket(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    number: str = Field(unique=True, index=True)
    channel_id: int = Field(foreign_key="channel.id", index=True)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    status: str = Field(default="new", index=True)
    priority: int = 3
    type: str | None = None
    category: str | None = None
    owner: str | None = None
    assignee: str | None = None
    creator: str | None = None
    contact_id: int | None = Field(default=None, foreign_key="contact.id", index=True)
    organisation_id: int | None = Field(default=None, foreign_key="organisation.id", index=True)
    linked_ticket_id: int | None = Field(default=None, foreign_key="ticket.id")
    created_at: datetime = Field(sa_type=UTCDateTime)
    updated_at: datetime = Field(sa_type=UTCDateTime)
    solved_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    closed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The last change by a person (customer or staff): escalation counts from here.
    activity_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    snoozed_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    sla_policy: str | None = None
    # The earliest pending deadline (warning, breach, escalation, reminder, auto-close): the
    # scheduler reads only tickets whose next_due_at has come, through this index.
    next_due_at: datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)


class RawMessage(SQLModel, table=True):
    """The original bytes of every inbound mail, stored before anything else is done with it."""

    __tablename__ = "raw_message"
    __table_args__ = (UniqueConstraint("source", "source_key", name="uq_raw_source_key"),)
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(index=True)
    source_key: str
    sha256: str = Field(index=True)
    message_id: str | None = Field(default=None, index=True)
    fingerprint: str | None = Field(default=None, index=True)
    size: int = 0
    envelope_from: str | None = None
    envelope_to: str | None = None
    received_at: datetime = Field(sa_type=UTCDateTime)
    state: RawState = Field(default=RawState.PENDING, index=True, sa_type=String(16))
    outcome: Outcome | None = Field(default=None, sa_type=String(16))
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    duplicate_of: int | None = None
    detail: str | None = Field(default=None, sa_column=Column(Text))
    error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = 0
    processed_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class RawData(SQLModel, table=True):
    """The bytes of a raw message, apart from its bookkeeping row (which changes; these never do)."""

    __tablename__ = "raw_message_data"
    raw_message_id: int = Field(primary_key=True, foreign_key="raw_message.id")
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Item(SQLModel, table=True):
    """One entry in a ticket's history: an inbound or outbound message, or a note."""

    __table_args__ = (Index("ix_item_ticket_created", "ticket_id", "created_at"),)
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id")
    direction: Direction = Field(sa_type=String(16))
    kind: ItemKind = Field(default=ItemKind.MESSAGE, sa_type=String(16))
    visibility: Visibility = Field(default=Visibility.CUSTOMER, sa_type=String(16))
    message_id: str | None = Field(default=None, index=True)
    in_reply_to: str | None = None
    from_address: str | None = None
    from_name: str | None = None
    to_addresses: str | None = Field(default=None, sa_column=Column(Text))
    cc_addresses: str | None = Field(default=None, sa_column=Column(Text))
    subject: str | None = Field(default=None, sa_column=Column(Text))
    body_text: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    body_quoted: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    body_html: str | None = Field(default=None, sa_column=Column(Text))
    raw_message_id: int | None = Field(default=None, foreign_key="raw_message.id", index=True)
    author: str | None = None  # the staff member who wrote an outbound message or note
    created_at: datetime = Field(sa_type=UTCDateTime)


class Blob(SQLModel, table=True):
    """Attachment content, stored once per distinct content (keyed by SHA-256)."""

    sha256: str = Field(primary_key=True)
    size: int
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class Attachment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    item_id: int = Field(foreign_key="item.id", index=True)
    blob_sha256: str = Field(foreign_key="blob.sha256", index=True)
    filename: str | None = None
    content_type: str = "application/octet-stream"
    content_id: str | None = None
    disposition: str | None = None
    size: int = 0


class AuditEvent(SQLModel, table=True):
    """What changed on a ticket, by whom, when. Rows are never updated or deleted."""

    __tablename__ = "audit_event"
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    action: str
    field: str | None = None
    old_value: str | None = Field(default=None, sa_column=Column(Text))
    new_value: str | None = Field(default=None, sa_column=Column(Text))
    actor: str
    at: datetime = Field(sa_type=UTCDateTime)


class MailboxState(SQLModel, table=True):
    """Per-mailbox sync state: IMAP UIDVALIDITY and the highest UID whose raw bytes are stored; for
    Graph and EWS the opaque sync token (delta link, sync state) up to which everything is stored."""

    __tablename__ = "mailbox_state"
    mailbox: str = Field(primary_key=True)
    folder: str = Field(primary_key=True)
    uidvalidity: int | None = None
    last_uid: int = 0
    last_poll_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    sync_token: str | None = Field(default=None, sa_column=Column(Text))


class Outbox(SQLModel, table=True):
    """One mail to one recipient, complete as it will be sent. Written in the transaction of the
    change that causes it; the Message-ID and bytes never change, so a retry sends the same mail."""

    __table_args__ = (Index("ix_outbox_due", "state", "next_attempt_at"),)
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int | None = Field(default=None, foreign_key="ticket.id", index=True)
    item_id: int | None = Field(default=None, foreign_key="item.id")
    kind: OutboxKind = Field(sa_type=String(16))
    message_id: str = Field(unique=True)
    envelope_from: str
    recipient: str = Field(index=True)
    subject: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    state: OutboxState = Field(default=OutboxState.QUEUED, sa_type=String(16))
    attempts: int = 0
    next_attempt_at: datetime = Field(sa_type=UTCDateTime)
    created_at: datetime = Field(sa_type=UTCDateTime, index=True)
    sent_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    # The Message-ID the sending service actually gave the mail, when it replaced ours.
    sent_message_id: str | None = Field(default=None, index=True)


class TicketWatcher(SQLModel, table=True):
    """A staff member who gets every item of a ticket by mail."""

    __tablename__ = "ticket_watcher"
    ticket_id: int = Field(primary_key=True, foreign_key="ticket.id")
    staff: str = Field(primary_key=True)
    reason: str = ""
    added_at: datetime = Field(sa_type=UTCDateTime)


class TimeEntry(SQLModel, table=True):
    """Time worked on a ticket, as recorded by ``#time`` (the basis of billing)."""

    __tablename__ = "time_entry"
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    staff: str
    minutes: int
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    item_id: int | None = Field(default=None, foreign_key="item.id")
    created_at: datetime = Field(sa_type=UTCDateTime)


class TicketDeadline(SQLModel, table=True):
    """A moment something is to happen to a ticket, at most one per kind (``first_response.warning``,
    ``escalation``, ``reminder``, ...). ``key`` names the occasion, so each fires at most once."""

    __tablename__ = "ticket_deadline"
    ticket_id: int = Field(primary_key=True, foreign_key="ticket.id")
    kind: str = Field(primary_key=True)
    key: str
    at: datetime = Field(sa_type=UTCDateTime)


class TicketAlert(SQLModel, table=True):
    """A deadline that fired. The unique key makes a second firing of the same occasion impossible,
    even by a second daemon on the same database."""

    __tablename__ = "ticket_alert"
    __table_args__ = (UniqueConstraint("ticket_id", "kind", "key", name="uq_ticket_alert"),)
    id: int | None = Field(default=None, primary_key=True)
    ticket_id: int = Field(foreign_key="ticket.id", index=True)
    kind: str
    key: str
    due_at: datetime = Field(sa_type=UTCDateTime)
    fired_at: datetime = Field(sa_type=UTCDateTime)
    fired_by: str = ""


class Lease(SQLModel, table=True):
    """A claim on a piece of work shared by several daemons (a mailbox poll, a sweep): held by one
    ``holder`` until ``expires_at``, after which anyone may take it."""

    name: str = Field(primary_key=True)
    holder: str
    expires_at: datetime = Field(sa_type=UTCDateTime)
