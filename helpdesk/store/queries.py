"""Queries and writes on the tables. Every function takes a session and never commits."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Table, Update, bindparam, func, insert, or_, update
from sqlalchemy import select as sa_select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, SQLModel, col, select

from helpdesk.config import Config
from helpdesk.store.models import (
    Attachment,
    AuditEvent,
    Blob,
    Channel,
    Contact,
    ContactAddress,
    Direction,
    Item,
    Organisation,
    OrganisationDomain,
    RawData,
    RawMessage,
    RawState,
    Ticket,
)


def table_of(model: type[SQLModel]) -> Table:
    table = model.__table__  # type: ignore[attr-defined]
    assert isinstance(table, Table)
    return table


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- configuration mirrored into the database -------------------------------------------------


def sync_config(session: Session, config: Config, now: datetime) -> None:
    """Create the channels and organisations (with domains and contacts) that ``config`` names."""
    channels = {c.name: c for c in session.exec(select(Channel))}
    for cfg in config.channels:
        row = channels.get(cfg.name)
        if row is None:
            session.add(Channel(name=cfg.name, prefix=cfg.prefix))
        elif row.prefix != cfg.prefix:
            row.prefix = cfg.prefix
    for org_cfg in config.organisations:
        org = session.exec(select(Organisation).where(Organisation.name == org_cfg.name)).first()
        if org is None:
            org = Organisation(name=org_cfg.name, created_at=now)
            session.add(org)
            session.flush()
        assert org.id is not None
        for domain in org_cfg.domains:
            link = session.get(OrganisationDomain, domain)
            if link is None:
                session.add(OrganisationDomain(domain=domain, organisation_id=org.id))
            else:
                link.organisation_id = org.id
        for contact_cfg in org_cfg.contacts:
            contact = contact_by_address(session, contact_cfg.addresses[0])
            if contact is None:
                contact = create_contact(session, contact_cfg.name, contact_cfg.addresses, org.id, now)
            else:
                contact.organisation_id = org.id
                if contact_cfg.name:
                    contact.name = contact_cfg.name
    session.flush()


def channel_ids(session: Session) -> dict[str, int]:
    return {c.name: c.id for c in session.exec(select(Channel)) if c.id is not None}


# --- raw messages ----------------------------------------------------------------------------


RawInput = tuple[str, bytes, str | None, Sequence[str]]  # (source_key, data, envelope_from, envelope_to)


def store_raw(
    session: Session,
    *,
    source: str,
    source_key: str,
    data: bytes,
    now: datetime,
    envelope_from: str | None = None,
    envelope_to: Sequence[str] = (),
) -> int:
    """Keep the original bytes; idempotent on (source, source_key). Returns the raw message's id."""
    return store_raw_many(session, source=source, messages=[(source_key, data, envelope_from, envelope_to)],
                          now=now)[0]


_RAW = table_of(RawMessage)
_RAW_IDS = sa_select(_RAW.c.source_key, _RAW.c.id).where(
    _RAW.c.source == bindparam("source"), _RAW.c.source_key.in_(bindparam("keys", expanding=True))
)
_INSERT_RAW = insert(_RAW).returning(_RAW.c.id, sort_by_parameter_order=True)
_INSERT_RAW_DATA = insert(table_of(RawData))


def store_raw_many(session: Session, *, source: str, messages: Sequence[RawInput], now: datetime) -> list[int]:
    """Keep the original bytes of a batch, idempotent on (source, source_key): one SELECT for the
    keys already stored, then one multi-row INSERT in a SAVEPOINT for the others. Returns every
    message's raw id in order (a key given twice gets one row). If another writer stores one of
    the keys meanwhile, the SAVEPOINT is rolled back and the messages are stored one by one."""
    connection = session.connection()
    keys = list(dict.fromkeys(key for key, *_ in messages))
    ids: dict[str, int] = {}
    for start in range(0, len(keys), 500):
        params = {"source": source, "keys": keys[start : start + 500]}
        ids.update((key, int(raw_id)) for key, raw_id in connection.execute(_RAW_IDS, params))
    fresh: dict[str, tuple[dict[str, Any], bytes]] = {}
    for key, data, envelope_from, envelope_to in messages:
        if key not in ids and key not in fresh:
            row = {
                "source": source, "source_key": key, "sha256": sha256_hex(data), "size": len(data),
                "envelope_from": envelope_from, "envelope_to": ",".join(envelope_to) or None,
                "received_at": now, "state": RawState.PENDING.value, "attempts": 0,
            }
            fresh[key] = (row, data)
    if fresh:
        try:
            with session.begin_nested():
                new_ids = connection.execute(_INSERT_RAW, [row for row, _data in fresh.values()]).scalars().all()
                pairs = zip(new_ids, fresh.values(), strict=True)
                connection.execute(_INSERT_RAW_DATA, [{"raw_message_id": i, "data": data} for i, (_r, data) in pairs])
        except IntegrityError:
            if len(messages) == 1:
                found = raw_by_source_key(session, source, messages[0][0])
                if found is None or found.id is None:
                    raise
                return [found.id]
            return [store_raw_many(session, source=source, messages=[m], now=now)[0] for m in messages]
        ids.update(zip(fresh, (int(i) for i in new_ids), strict=True))
    return [ids[key] for key, *_ in messages]


def raw_bytes(session: Session, raw_id: int) -> bytes:
    row = session.get(RawData, raw_id)
    if row is None:
        raise LookupError(f"the bytes of raw message {raw_id} are missing")
    return row.data


def raw_by_source_key(session: Session, source: str, source_key: str) -> RawMessage | None:
    stmt = select(RawMessage).where(RawMessage.source == source, RawMessage.source_key == source_key)
    return session.exec(stmt).first()


def known_source_keys(session: Session, source: str, keys: Iterable[str]) -> dict[str, RawState]:
    """Which of ``keys`` are already stored for ``source``, with their state."""
    wanted = list(keys)
    found: dict[str, RawState] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        stmt = select(RawMessage.source_key, RawMessage.state).where(
            RawMessage.source == source, col(RawMessage.source_key).in_(chunk)
        )
        for key, state in session.exec(stmt).all():
            found[key] = RawState(state)
    return found


class EarlierCopy(NamedTuple):
    id: int
    sha256: str
    source: str
    ticket_id: int | None


_EARLIER = (
    sa_select(_RAW.c.id, _RAW.c.sha256, _RAW.c.source, _RAW.c.ticket_id)
    .where(
        or_(_RAW.c.sha256 == bindparam("sha"), _RAW.c.fingerprint == bindparam("fp")),
        _RAW.c.state != RawState.PENDING.value,
        _RAW.c.id != bindparam("own"),
    )
    .order_by((_RAW.c.sha256 != bindparam("sha2")), _RAW.c.id)
    .limit(1)
)


def earlier_copy(session: Session, raw: RawMessage, fingerprint: str | None) -> EarlierCopy | None:
    """An already-processed inbound message with the same bytes (preferred), or another copy of the
    same mail (same fingerprint) that reached us by another route."""
    params = {"sha": raw.sha256, "sha2": raw.sha256, "fp": fingerprint or "-", "own": raw.id}
    row = session.connection().execute(_EARLIER, params).first()
    return None if row is None else EarlierCopy(*row)


def pending_raw_ids(session: Session, limit: int = 1000) -> list[int]:
    stmt = select(RawMessage.id).where(RawMessage.state == RawState.PENDING).order_by(col(RawMessage.id))
    return [int(i) for i in session.exec(stmt.limit(limit)) if i is not None]


# --- contacts and organisations ---------------------------------------------------------------


_ADDR = table_of(ContactAddress)
_CONTACT = table_of(Contact)
_CONTACT_IDS = sa_select(_CONTACT.c.id, _CONTACT.c.organisation_id).join(
    _ADDR, _ADDR.c.contact_id == _CONTACT.c.id
).where(_ADDR.c.address == bindparam("address"))


def contact_ids_by_address(session: Session, address: str) -> tuple[int, int | None] | None:
    """(contact id, organisation id) of the contact owning ``address``."""
    row = session.connection().execute(_CONTACT_IDS, {"address": address.lower()}).first()
    return None if row is None else (int(row[0]), row[1])


def contact_by_address(session: Session, address: str) -> Contact | None:
    stmt = (
        select(Contact)
        .join(ContactAddress, col(ContactAddress.contact_id) == col(Contact.id))
        .where(ContactAddress.address == address.lower())
    )
    return session.exec(stmt).first()


def organisation_for_domain(session: Session, domain: str) -> Organisation | None:
    """The organisation owning ``domain`` or its closest parent domain (mail.acme.example -> acme.example)."""
    parts = domain.lower().split(".")
    for i in range(len(parts) - 1):
        link = session.get(OrganisationDomain, ".".join(parts[i:]))
        if link is not None:
            return session.get(Organisation, link.organisation_id)
    return None


def create_contact(
    session: Session, name: str, addresses: Sequence[str], organisation_id: int | None, now: datetime
) -> Contact:
    contact = Contact(name=name, organisation_id=organisation_id, created_at=now)
    session.add(contact)
    session.flush()
    assert contact.id is not None
    for address in addresses:
        session.add(ContactAddress(address=address.lower(), contact_id=contact.id))
    session.flush()
    return contact


def flag_bouncing(session: Session, address: str, reason: str | None, permanent: bool, now: datetime) -> bool:
    """Record a delivery failure on a contact address; returns False when the address is unknown."""
    link = session.get(ContactAddress, address.lower())
    if link is None:
        return False
    link.bounce_count += 1
    link.last_bounce_at = now
    link.last_bounce_reason = (reason or "")[:500] or None
    if permanent:
        link.bouncing = True
    return True


# --- tickets and items ------------------------------------------------------------------------


_CHANNEL = table_of(Channel)
_NEXT_NUMBER = (
    update(_CHANNEL)
    .where(_CHANNEL.c.id == bindparam("channel_id"))
    .values(last_number=_CHANNEL.c.last_number + 1)
    .returning(_CHANNEL.c.last_number)
)


def next_ticket_number(session: Session, channel_id: int) -> int:
    """Allocate the channel's next number; the row lock serialises concurrent daemons."""
    return int(session.connection().execute(_NEXT_NUMBER, {"channel_id": channel_id}).scalar_one())


def ticket_by_number(session: Session, number: str) -> Ticket | None:
    return session.exec(select(Ticket).where(Ticket.number == number)).first()


_ITEM = table_of(Item)
_THREAD_HITS = sa_select(_ITEM.c.message_id, _ITEM.c.ticket_id).where(
    _ITEM.c.message_id.in_(bindparam("ids", expanding=True))
)


def ticket_by_message_ids(session: Session, message_ids: Sequence[str]) -> tuple[Ticket, str] | None:
    """The ticket holding the first of ``message_ids`` that we know, with that id."""
    if not message_ids:
        return None
    rows = session.connection().execute(_THREAD_HITS, {"ids": list(message_ids)}).all()
    hits = {mid: ticket_id for mid, ticket_id in rows}
    for mid in message_ids:
        if mid in hits:
            ticket = session.get(Ticket, hits[mid])
            if ticket is not None:
                return ticket, mid
    return None


_INSERT_AUDIT = insert(table_of(AuditEvent))


def audit(
    session: Session,
    *,
    ticket_id: int | None,
    action: str,
    actor: str,
    now: datetime,
    field: str | None = None,
    old: object = None,
    new: object = None,
) -> None:
    """Record a change; audit rows are only ever inserted."""
    session.connection().execute(
        _INSERT_AUDIT,
        {
            "ticket_id": ticket_id,
            "action": action,
            "field": field,
            "old_value": None if old is None else str(old),
            "new_value": None if new is None else str(new),
            "actor": actor,
            "at": now,
        },
    )


# Plain inserts and updates for the intake's hot path: no ORM unit of work per row.
_TICKET = table_of(Ticket)
_INSERT_TICKET = insert(_TICKET).returning(_TICKET.c.id)
_INSERT_ITEM = insert(_ITEM).returning(_ITEM.c.id)
_INSERT_ATTACHMENT = insert(table_of(Attachment))


def insert_ticket(session: Session, values: dict[str, Any]) -> int:
    return int(session.connection().execute(_INSERT_TICKET, values).scalar_one())


def insert_item(session: Session, values: dict[str, Any]) -> int:
    return int(session.connection().execute(_INSERT_ITEM, values).scalar_one())


def insert_attachments(session: Session, rows: list[dict[str, Any]]) -> None:
    if rows:
        session.connection().execute(_INSERT_ATTACHMENT, rows)


@functools.cache
def _update_statement(table: Table, names: tuple[str, ...]) -> Update:
    return update(table).where(table.c.id == bindparam("row_id")).values({n: bindparam(f"v_{n}") for n in names})


def update_row(session: Session, obj: SQLModel, **values: Any) -> None:
    """UPDATE one loaded row in SQL and in memory, without making the object dirty."""
    statement = _update_statement(table_of(type(obj)), tuple(sorted(values)))
    params = {f"v_{name}": value for name, value in values.items()}
    params["row_id"] = getattr(obj, "id")  # noqa: B009
    session.connection().execute(statement, params)
    for name, value in values.items():
        set_committed_value(obj, name, value)


_BLOB = table_of(Blob)
_BLOB_EXISTS = sa_select(_BLOB.c.size).where(_BLOB.c.sha256 == bindparam("sha256"))
# Another writer may store the same content at the same moment: that is not a conflict.
_INSERT_BLOB = {
    "sqlite": sqlite_insert(_BLOB).on_conflict_do_nothing(index_elements=["sha256"]),
    "postgresql": pg_insert(_BLOB).on_conflict_do_nothing(index_elements=["sha256"]),
}


def store_blob(session: Session, data: bytes) -> str:
    """Keep attachment content once per distinct SHA-256 (never reading it back); returns the hash."""
    digest = sha256_hex(data)
    connection = session.connection()
    if connection.execute(_BLOB_EXISTS, {"sha256": digest}).first() is None:
        connection.execute(_INSERT_BLOB[connection.dialect.name], {"sha256": digest, "size": len(data), "data": data})
    return digest


def has_written_to(session: Session, ticket_id: int, address: str) -> bool:
    """Whether ``address`` sent a mail that is stored on the ticket."""
    stmt = sa_select(_ITEM.c.id).where(_ITEM.c.ticket_id == ticket_id, _ITEM.c.from_address == address.lower())
    return session.connection().execute(stmt.limit(1)).first() is not None


class ThreadInfo(NamedTuple):
    """The customer side of a ticket's conversation: whom to answer and which mails to reference."""

    last_from: tuple[str, str] | None  # (name, address) of the latest inbound customer mail
    last_message_id: str | None
    message_ids: list[str]  # customer-visible messages, oldest first


def customer_thread(session: Session, ticket_id: int) -> ThreadInfo:
    stmt = (
        sa_select(_ITEM.c.direction, _ITEM.c.message_id, _ITEM.c.from_name, _ITEM.c.from_address)
        .where(_ITEM.c.ticket_id == ticket_id, _ITEM.c.visibility == "customer")
        .order_by(_ITEM.c.created_at, _ITEM.c.id)
    )
    last_from: tuple[str, str] | None = None
    last_id: str | None = None
    ids: list[str] = []
    for direction, message_id, name, address in session.connection().execute(stmt):
        if message_id:
            ids.append(message_id)
        if direction == Direction.INBOUND.value and address:
            last_from, last_id = (name or "", address), message_id
    return ThreadInfo(last_from, last_id, ids)


def contact_address(session: Session, contact_id: int) -> tuple[str, str] | None:
    """A contact's (name, address) to write to, preferring an address that does not bounce."""
    stmt = (
        select(Contact.name, ContactAddress.address)
        .join(ContactAddress, col(ContactAddress.contact_id) == col(Contact.id))
        .where(Contact.id == contact_id)
        .order_by(col(ContactAddress.bouncing), col(ContactAddress.address))
    )
    row = session.exec(stmt).first()
    return (row[0], row[1]) if row else None


def address_bouncing(session: Session, address: str) -> bool:
    row = session.get(ContactAddress, address.lower())
    return bool(row and row.bouncing)


def count_items(session: Session, ticket_id: int, direction: Direction | None = None) -> int:
    stmt = select(func.count()).select_from(Item).where(Item.ticket_id == ticket_id)
    if direction is not None:
        stmt = stmt.where(Item.direction == direction)
    return int(session.exec(stmt).one())
