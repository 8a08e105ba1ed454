"""Engine and session factory. Nothing is created at import time; the daemon and CLI call these."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlmodel import Session

from helpdesk.store.models import AuditEvent


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, open transactions (see _sqlite_begin), so that
    # SAVEPOINTs work and every transaction is a proper one.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # IMMEDIATE takes the write lock at the start: concurrent writers (mailbox workers, the
    # listener, a second process) then wait on busy_timeout instead of failing on lock upgrade.
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite files get WAL mode, a busy timeout and foreign keys."""
    install_audit_guard()
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def _refuse_audit_change(*_args: Any) -> None:
    raise PermissionError("audit events are immutable: they are never updated or deleted")


def install_audit_guard() -> None:
    """Make the ORM refuse to update or delete audit events (the database triggers do the same)."""
    for name in ("before_update", "before_delete"):
        if not event.contains(AuditEvent, name, _refuse_audit_change):
            event.listen(AuditEvent, name, _refuse_audit_change)


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception.

    Autoflush is off: queries do not flush pending objects first. Code that writes flushes when
    it needs ids or when later queries must see its rows (the intake flushes after every message).
    """
    with Session(engine, expire_on_commit=False, autoflush=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
