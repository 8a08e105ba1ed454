"""Leases in the database: a piece of work (a mailbox poll, a sweep) is done by one daemon at a time.

A lease is a row ``(name, holder, expires_at)``. Taking it is one atomic upsert that succeeds only
when the row is absent, expired, or already ours; so two daemons on one database never hold the
same lease, and work claimed by a daemon that died is free again when its lease runs out. A holder
is named ``host:pid:random``: a daemon restarted on the same host after a crash (SIGKILL, power
loss of a container) sees that the process holding the lease is gone and takes it at once.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, literal_column, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from helpdesk.store import queries
from helpdesk.store.db import transaction
from helpdesk.store.models import Lease

__all__ = ["acquire", "instance_name", "release"]

_LEASE = queries.table_of(Lease)


def instance_name() -> str:
    """A name for this daemon process that no other process shares."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(holder: str) -> bool:
    """Whether ``holder`` names a process on this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # it runs, as another user
        return False
    return False


def acquire(engine: Engine, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    """Take or renew the lease ``name`` until ``now + ttl``; False when another holder has it."""
    if _upsert(engine, name, holder, now, ttl):
        return True
    with transaction(engine) as session:
        current = session.connection().execute(select(_LEASE.c.holder).where(_LEASE.c.name == name)).scalar()
    if current is None or not _dead_here(current):
        return False
    with transaction(engine) as session:  # take it over from the dead holder, unless someone else just did
        taken = session.connection().execute(
            update(_LEASE).where(_LEASE.c.name == name, _LEASE.c.holder == current)
            .values(holder=holder, expires_at=now + ttl)
        )
        return bool(taken.rowcount)


def _upsert(engine: Engine, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
    insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert
    values = insert(_LEASE).values(name=name, holder=holder, expires_at=now + ttl)
    statement: Any = values.on_conflict_do_update(
        index_elements=["name"],
        set_={"holder": values.excluded.holder, "expires_at": values.excluded.expires_at},
        where=or_(_LEASE.c.expires_at <= now, _LEASE.c.holder == holder),
    ).returning(literal_column("1"))
    with transaction(engine) as session:
        return session.connection().execute(statement).first() is not None


def release(engine: Engine, name: str, holder: str) -> None:
    with transaction(engine) as session:
        session.connection().execute(delete(_LEASE).where(_LEASE.c.name == name, _LEASE.c.holder == holder))
