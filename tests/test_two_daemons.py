"""Two daemons on one PostgreSQL database: due work is done once, whichever daemon gets to it.

Both run their schedulers against the same database and SMTP server. 1,000 tickets come due
for an SLA warning at the same moment; the sweeps claim tickets with ``FOR UPDATE SKIP LOCKED`` and
record every firing under a unique key, the outbox claims mail with a lease: every warning reaches
the SMTP server exactly once. A mailbox is read by one daemon at a time through a lease.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, text, update
from sqlmodel import Session, col, select

from helpdesk.config import Config, validate
from helpdesk.daemon import Daemon
from helpdesk.intake.runner import Incoming, Intake
from helpdesk.scheduler import leases
from helpdesk.store.models import AuditEvent, Outbox, OutboxState, TicketAlert
from tests.conftest import Clock, base_config
from tests.mailgen import make_mail
from tests.outbound.conftest import smtp_config_for
from tests.servers.smtp import SmtpSink

pytestmark = pytest.mark.postgres

TICKETS = 1000
STAFF = [{"name": "sam", "display_name": "Sam Agent", "addresses": ["sam@example.test"], "channels": ["support"]}]


@pytest.fixture
def pg_engine(request: pytest.FixtureRequest, tmp_path: Any) -> Engine:
    from tests.conftest import make_test_engine

    return make_test_engine("postgresql", request, tmp_path)


def desk_config(engine: Engine, sink: SmtpSink) -> Config:
    data = base_config(
        staff=STAFF,
        database_url=engine.url.render_as_string(hide_password=False),
        smtp=smtp_config_for(sink, batch_size=50, poll_interval=0.2).model_dump(),
        calendars={"always": {"timezone": "Europe/Berlin", "hours": {"mon-sun": "00:00-24:00"}}},
        sla_policies={"standard": {"calendar": "always", "warning": "50%",
                                   "targets": {"default": {"first_response": "4h"}}}},
        scheduler={"sweep_interval": 0.2, "batch_size": 40},
    )
    data["channels"][0].update({"sla": "standard", "acknowledge": False})
    return validate(data)


def open_tickets(engine: Engine, config: Config, clock: Clock) -> None:
    intake = Intake(engine, config, clock)
    mails = [
        Incoming(key=f"m{i}", data=make_mail(sender=f"C{i} <c{i}@acme.example>", message_id=f"m{i}@acme.example"))
        for i in range(TICKETS)
    ]
    for start in range(0, TICKETS, 200):
        intake.ingest("lmtp", mails[start:start + 200])
    intake.close()
    with engine.begin() as conn:  # the notifications of the new tickets are not what this test counts
        conn.execute(update(Outbox).values(state=OutboxState.SENT.value))


def test_each_warning_is_sent_exactly_once(pg_engine: Engine, clock: Clock) -> None:
    with SmtpSink() as sink:
        config = desk_config(pg_engine, sink)
        open_tickets(pg_engine, config, clock)
        clock.advance(hours=2, minutes=1)  # every ticket is past its warning (50% of 4h), none past its due
        daemons = [Daemon(config, clock=clock) for _ in range(2)]
        assert daemons[0].instance != daemons[1].instance
        try:
            for daemon in daemons:
                daemon.start()
            received = sink.wait_for(TICKETS, timeout=240)
            time.sleep(1.0)  # anything sent twice would arrive now
            received = list(sink.received)
        finally:
            for daemon in daemons:
                daemon.stop()

    subjects = Counter(str(r.message["Subject"]) for r in received)
    assert len(received) == TICKETS
    assert all("SLA warning: first response" in s for s in subjects)
    assert len(subjects) == TICKETS and max(subjects.values()) == 1  # one per ticket, each once
    with Session(pg_engine) as session:
        alerts = session.exec(select(TicketAlert)).all()
        assert len(alerts) == TICKETS and {a.kind for a in alerts} == {"first_response.warning"}
        fired_by = Counter(a.fired_by for a in alerts)
        warnings = session.exec(
            select(func.count()).select_from(AuditEvent).where(col(AuditEvent.action) == "sla_warning")
        ).one()
        assert warnings == TICKETS
        sent = session.exec(select(Outbox).where(col(Outbox.kind) == "notification", col(Outbox.state) == "sent"))
        assert len(sent.all()) == 2 * TICKETS  # the new-ticket notices (marked sent above) and the warnings
    assert set(fired_by) <= {d.instance for d in daemons}
    print(f"warnings fired by each daemon: {dict(fired_by)}")
    pg_engine.dispose()


def test_a_mailbox_lease_has_one_holder(pg_engine: Engine, clock: Clock) -> None:
    ttl = timedelta(minutes=5)
    assert leases.acquire(pg_engine, "mailbox:support", "host-a:1:x", clock(), ttl)
    assert not leases.acquire(pg_engine, "mailbox:support", "host-b:2:y", clock(), ttl)
    assert leases.acquire(pg_engine, "mailbox:support", "host-a:1:x", clock(), ttl)  # renewal
    clock.advance(minutes=6)  # holder a died on another host: its lease runs out
    assert leases.acquire(pg_engine, "mailbox:support", "host-b:2:y", clock(), ttl)
    assert not leases.acquire(pg_engine, "mailbox:support", "host-a:1:x", clock(), ttl)
    leases.release(pg_engine, "mailbox:support", "host-b:2:y")
    assert leases.acquire(pg_engine, "mailbox:support", "host-a:1:x", clock(), ttl)
    with pg_engine.connect() as conn:
        assert conn.execute(text("SELECT holder FROM lease")).scalar() == "host-a:1:x"
    pg_engine.dispose()


def test_a_dead_holder_on_this_host_is_replaced_at_once(pg_engine: Engine, clock: Clock) -> None:
    import socket
    import subprocess

    child = subprocess.Popen(["true"])
    child.wait()  # a process id that no longer runs
    dead = f"{socket.gethostname()}:{child.pid}:gone"
    ttl = timedelta(minutes=5)
    assert leases.acquire(pg_engine, "mailbox:support", dead, clock(), ttl)
    assert leases.acquire(pg_engine, "mailbox:support", leases.instance_name(), clock(), ttl)
    alive = f"{socket.gethostname()}:1:init"  # pid 1 runs
    assert leases.acquire(pg_engine, "mailbox:other", alive, clock(), ttl)
    assert not leases.acquire(pg_engine, "mailbox:other", leases.instance_name(), clock(), ttl)
    pg_engine.dispose()
