"""The Alembic migrations and the SQLModel tables describe the same schema."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, text
from sqlmodel import SQLModel

from helpdesk.store.db import make_engine
from helpdesk.store.migrate import current, downgrade, upgrade


def test_migrations_match_models(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert diff == [], f"models and migrations differ; add a revision: {diff}"


def test_upgrade_is_idempotent(engine: Engine) -> None:
    upgrade(engine)
    assert current(engine) is not None


def test_raw_bytes_survive_the_move_to_their_own_table(tmp_path: Path) -> None:
    """Upgrade from revision 0002 with a stored mail: the bytes move, then move back on downgrade."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0002")
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO raw_message (id, source, source_key, sha256, size, data, received_at, state, attempts) "
            "VALUES (1, 'lmtp', 'k', 'x', 5, :data, '2026-01-01 00:00:00', 'pending', 0)"
        ), {"data": b"hello"})
    upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT data FROM raw_message_data WHERE raw_message_id = 1")).scalar() == b"hello"
    downgrade(engine, "0002")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT data FROM raw_message WHERE id = 1")).scalar() == b"hello"
    engine.dispose()
