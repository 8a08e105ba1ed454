"""Shared fixtures: databases (SQLite and PostgreSQL), configuration, an intake, a clock."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from helpdesk.config import Config, validate
from helpdesk.store.db import make_engine
from helpdesk.store.migrate import upgrade

POSTGRES_URL = os.environ.get("HELPDESK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"


TEST_REPLY_SECRET = "test-secret-for-signed-reply-addresses"


def pytest_configure(config: pytest.Config) -> None:
    """Every daemon the tests start (in process or as a child) signs reply addresses with this secret."""
    os.environ.setdefault("HELPDESK_REPLY_SECRET", TEST_REPLY_SECRET)


def require(reason: str | None) -> None:
    """Skip when a needed service is missing; under CI=true that is a failure instead."""
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"required service missing under CI=true: {reason}")
    pytest.skip(reason)


class Clock:
    """A controllable clock for the pipeline (``now`` is an argument everywhere)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> datetime:
        self.now += timedelta(**kwargs)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


# --- databases -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("db") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of our own on the PostgreSQL server, migrated once, dropped at the end."""
    admin = make_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"helpdesk_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        admin.dispose()
        require(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
        raise
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _truncate_all(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def make_test_engine(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if kind == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "helpdesk.db"
        shutil.copy(template, path)
        return make_engine(f"sqlite:///{path}")
    url: str = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    _truncate_all(engine)
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database: every test using it runs on SQLite and on PostgreSQL."""
    eng = make_test_engine(request.param, request, tmp_path)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    eng = make_test_engine("sqlite", request, tmp_path)
    yield eng
    eng.dispose()


# --- configuration -----------------------------------------------------------------------------------


def base_config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "own_addresses": ["helpdesk@example.test"],
        "listener": {"enabled": False},
        "channels": [
            {
                "name": "support",
                "prefix": "SUP",
                "addresses": ["support@example.test"],
                "reopen_window": "14d",
                "rules": [
                    {
                        "name": "urgent-subject",
                        "match": {"subject": r"\b(urgent|dringend)\b"},
                        "set": {"priority": 1, "category": "urgent"},
                    }
                ],
            },
            {
                "name": "sales",
                "prefix": "SAL",
                "addresses": ["sales@example.test"],
                "unknown_senders": "quarantine",
            },
        ],
        "organisations": [
            {
                "name": "ACME Corp",
                "domains": ["acme.example"],
                "contacts": [{"name": "Alice Customer", "addresses": ["alice@acme.example"]}],
            }
        ],
    }
    data.update(overrides)
    return data


@pytest.fixture
def config() -> Config:
    return validate(base_config())


@pytest.fixture
def intake(engine: Engine, config: Config, clock: Clock) -> Any:
    from helpdesk.intake.runner import Intake

    return Intake(engine, config, clock)


# --- Dovecot -------------------------------------------------------------------------------------------


def started_dovecot(**options: Any) -> Iterator[Any]:
    """A running Dovecot with TLS (and ``options``) until the generator is closed; for fixtures."""
    from tests.servers.dovecot import Dovecot, dovecot_available

    require(dovecot_available())
    server = Dovecot(ssl=True, **options)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Any]:
    """One real Dovecot (IMAP, POP3, implicit TLS and STARTTLS) for the session; a user per test."""
    yield from started_dovecot()


@pytest.fixture
def mail_user(dovecot: Any) -> str:
    name = f"u{uuid.uuid4().hex[:10]}"
    dovecot.add_user(name, "pw-" + name)
    return name


def mailbox_entry(server: Any, user: str, kind: str = "imap", **overrides: Any) -> dict[str, Any]:
    """A channels.yaml mailbox entry for ``user`` on the test Dovecot (password from $HD_TEST_PW_<user>)."""
    os.environ[f"HD_TEST_PW_{user}"] = server.password(user)
    entry: dict[str, Any] = {
        "name": f"{kind}-{user}",
        "kind": kind,
        "host": server.host,
        "port": server.imap_port if kind == "imap" else server.pop3_port,
        "tls": "none",
        "user": user,
        "password": f"${{HD_TEST_PW_{user}}}",
        "poll_interval": 1,
        "timeout": 10,
    }
    entry.update(overrides)
    return entry


def config_with_mailboxes(*entries: dict[str, Any], **overrides: Any) -> Config:
    data = base_config(**overrides)
    data["channels"][0]["mailboxes"] = list(entries)
    return validate(data)


@pytest.fixture
def identity(tmp_path: Path) -> Iterator[Any]:
    """A running local identity server (HTTPS and HTTP) for one test."""
    from tests.servers.certs import openssl_missing
    from tests.servers.identity import IdentityServer

    require(openssl_missing())
    directory = tmp_path / "identity"
    directory.mkdir()
    with IdentityServer(directory) as server:
        yield server
