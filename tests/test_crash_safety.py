"""Crash safety: SIGKILL the real daemon at random moments while it ingests a large IMAP mailbox.

The daemon runs as a subprocess (``helpdesk -c channels.yaml run``) and is killed with SIGKILL after a
seeded random delay, then restarted, over and over, until the INBOX is empty and every raw message is
processed. Afterwards every mail must sit in exactly one ticket (or, for auto-replies, be recorded
exactly once), none lost, none twice, on SQLite and on PostgreSQL.

The seed is printed; ``HELPDESK_CRASH_SEED=<n>`` replays a run's kill delays.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine
from sqlmodel import Session, col, func, select

from helpdesk.store.models import (
    AuditEvent,
    Channel,
    Direction,
    Item,
    ItemKind,
    MailboxState,
    Outbox,
    Outcome,
    RawMessage,
    RawState,
    Ticket,
)
from tests.conftest import base_config, mailbox_entry, make_test_engine
from tests.mailgen import make_mail

pytestmark = [pytest.mark.slow, pytest.mark.dovecot]

REPO = Path(__file__).resolve().parent.parent
TOTAL = 1200  # messages in the mailbox
MIN_MID_INGEST_KILLS = 5
MAX_ROUNDS = 60
TIME_BUDGET = 150.0  # seconds of kill/restart rounds per backend


# --- the mailbox -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    message_id: str
    kind: str  # "enquiry", "reply" or "auto"
    root: str | None  # the enquiry whose ticket it belongs to (None: a new one, or an unthreaded auto-reply)
    data: bytes


def build_mailbox(rng: random.Random, total: int) -> list[Mail]:
    """Mostly new enquiries, some replies (to enquiries or to earlier replies), a few auto-replies."""
    senders = ["Alice Customer <alice@acme.example>"]
    senders += [f"User {k} <user{k}@acme.example>" for k in range(15)]
    senders += [f"Cust {k} <cust{k}@other{k % 4}.example>" for k in range(10)]
    mails: list[Mail] = []
    threads: dict[str, list[str]] = {}  # root -> message ids in the thread, oldest first
    subjects: dict[str, str] = {}
    for i in range(total):
        mid = f"crash-{i}@acme.example"
        roll = rng.random()
        if i < 20 or roll < 0.74 or not threads:
            subject = f"Enquiry {i}: " + rng.choice(["printer", "VPN", "mail", "laptop", "urgent: server down"])
            data = make_mail(sender=rng.choice(senders), subject=subject, message_id=mid, body=f"Enquiry {i}.\n")
            mails.append(Mail(mid, "enquiry", None, data))
            threads[mid], subjects[mid] = [mid], subject
            continue
        root = rng.choice(list(threads)[-300:])
        chain = threads[root]
        parent = rng.choice(chain)
        references = chain[: chain.index(parent) + 1]
        if roll < 0.94:
            data = make_mail(
                sender=rng.choice(senders),
                subject=f"Re: {subjects[root]}",
                message_id=mid,
                in_reply_to=parent,
                references=references,
                body=f"Reply {i} to <{parent}>.\n\n> earlier text\n",
            )
            mails.append(Mail(mid, "reply", root, data))
            chain.append(mid)
        elif roll < 0.97:  # an auto-reply that answers one of our mails: kept in that ticket, internal
            data = make_mail(
                subject=f"Automatic reply: {subjects[root]}",
                message_id=mid,
                in_reply_to=parent,
                headers={"Auto-Submitted": "auto-replied"},
                body="I am out of the office.\n",
            )
            mails.append(Mail(mid, "auto", root, data))
        else:  # an auto-reply that threads nowhere: recorded, no ticket
            data = make_mail(
                subject="Out of office",
                message_id=mid,
                headers={"Auto-Submitted": "auto-replied"},
                body=f"Out of office ({i}).\n",
            )
            mails.append(Mail(mid, "auto", None, data))
    return mails


# --- observing the state between rounds --------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    raw: int
    pending: int
    inbox: int
    unacknowledged: int  # stored in the database but still in the INBOX

    @property
    def done(self) -> bool:
        return self.inbox == 0 and self.pending == 0


def snapshot(engine: Engine, dovecot: Any, user: str, source: str) -> Snapshot:
    uidvalidity = dovecot.uidvalidity(user)
    keys = [f"INBOX:{uidvalidity}:{uid}" for uid, _flags in dovecot.list_folder(user)]
    raw, pending, _polled = activity(engine)
    with Session(engine) as session:
        stored = set(session.exec(select(RawMessage.source_key).where(RawMessage.source == source)).all())
    return Snapshot(raw, pending, len(keys), sum(k in stored for k in keys))


@dataclass
class Stats:
    rounds: int = 0
    kills: int = 0
    kills_mid_ingest: int = 0  # the round made progress and the work was not finished when it died
    kills_with_pending: int = 0  # raw bytes committed, not yet processed
    kills_with_unacknowledged: int = 0  # committed, but not yet moved out of the INBOX
    delays: list[float] = field(default_factory=list)


def daemon_env(database_url: str) -> dict[str, str]:
    env = dict(os.environ)  # carries the HD_TEST_PW_<user> set by mailbox_entry
    env["HELPDESK_DATABASE_URL"] = database_url
    env.pop("NOTIFY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def activity(engine: Engine) -> tuple[int, int, Any]:
    """What changes as soon as the daemon works: stored, pending, and the time of its last poll."""
    with Session(engine) as session:
        raw = int(session.exec(select(func.count()).select_from(RawMessage)).one())
        pending = int(
            session.exec(select(func.count()).select_from(RawMessage).where(RawMessage.state == RawState.PENDING)).one()
        )
        polled = session.exec(select(func.max(MailboxState.last_poll_at))).one()
    return raw, pending, polled


def wait_for_work(engine: Engine, proc: subprocess.Popen[bytes], marker: tuple[int, int, Any]) -> float:
    """Seconds until the daemon has visibly started working (stored, processed or polled)."""
    start = time.monotonic()
    while time.monotonic() - start < 15.0 and proc.poll() is None and activity(engine) == marker:
        time.sleep(0.02)
    return time.monotonic() - start


# --- the test ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_sigkill_at_random_moments_loses_nothing_and_duplicates_nothing(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, dovecot: Any, mail_user: str
) -> None:
    seed = int(os.environ.get("HELPDESK_CRASH_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\n[crash-safety {backend}] seed={seed} (replay with HELPDESK_CRASH_SEED={seed})")
    rng = random.Random(seed)
    engine = make_test_engine(backend, request, tmp_path)
    request.addfinalizer(engine.dispose)
    database_url = engine.url.render_as_string(hide_password=False)

    mails = build_mailbox(rng, TOTAL)
    by_id = {m.message_id: m for m in mails}
    assert len(by_id) == TOTAL
    dovecot.append_many(mail_user, [m.data for m in mails])
    assert dovecot.message_count(mail_user) == TOTAL
    uidvalidity = dovecot.uidvalidity(mail_user)

    entry = mailbox_entry(dovecot, mail_user, batch_size=25, poll_interval=1)
    data = base_config(database_url=database_url)
    data["channels"][0]["mailboxes"] = [entry]
    cfg = tmp_path / "channels.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = daemon_env(database_url)
    log_path = tmp_path / "daemon.log"
    command = [sys.executable, "-m", "helpdesk.cli", "-c", str(cfg), "run"]

    stats = Stats()
    started = time.monotonic()
    before = snapshot(engine, dovecot, mail_user, entry["name"])
    # Most rounds are killed at a random moment within ``window`` seconds after the daemon visibly
    # starts working; the window adapts so that a round gets through about ``target`` messages, which makes
    # most kills land in the middle of the work. One round in five is killed at a random moment from the
    # start instead (imports, migrations check, config sync, finishing pending messages, first SELECT).
    window, target = 0.1, TOTAL // 24
    while not before.done:
        assert stats.rounds < MAX_ROUNDS, f"not done after {MAX_ROUNDS} rounds: {before}"
        assert time.monotonic() - started < TIME_BUDGET, f"not done after {TIME_BUDGET:.0f} s: {before}"
        stats.rounds += 1
        marker = activity(engine)
        with open(log_path, "ab") as log:
            log.write(f"\n===== round {stats.rounds}\n".encode())
            log.flush()
            proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if rng.random() < 0.2:
                delay = rng.uniform(0.05, 1.2)
                time.sleep(delay)
            else:
                waited = wait_for_work(engine, proc, marker)
                delay = rng.uniform(0.0, window)
                time.sleep(delay)
                delay += waited
            stats.delays.append(delay)
            exited = proc.poll()
            assert exited is None, f"the daemon exited by itself (code {exited}):\n{log_tail(log_path)}"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stats.kills += 1
        after = snapshot(engine, dovecot, mail_user, entry["name"])
        progressed = (after.raw, after.pending, after.inbox) != (before.raw, before.pending, before.inbox)
        if progressed and not after.done:
            stats.kills_mid_ingest += 1
        stats.kills_with_pending += after.pending > 0
        stats.kills_with_unacknowledged += after.unacknowledged > 0
        done_now = max(before.inbox - after.inbox, after.raw - before.raw)
        # Scale the window towards ``target`` messages a round, whatever the ingestion speed.
        scale = min(2.0, max(0.3, target / done_now)) if done_now else 1.5
        window = min(4.0, max(0.02, window * scale))
        print(
            f"  round {stats.rounds:2d}: killed after {delay:4.2f} s; raw {after.raw:4d}, pending {after.pending:3d}, "
            f"INBOX {after.inbox:4d} ({after.unacknowledged} stored but not moved)"
        )
        before = after
    kill_phase = time.monotonic() - started

    # One clean single pass settles whatever may still be pending.
    with open(log_path, "ab") as log:
        log.write(b"\n===== run --once\n")
        log.flush()
        once = subprocess.run(
            [*command, "--once"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=120, check=False
        )
    assert once.returncode == 0, log_tail(log_path)
    log = log_path.read_text(errors="replace")
    problems = [line for line in log.splitlines() if " ERROR " in line or line.startswith("Traceback")]
    assert not problems, "the daemon logged errors after restarts:\n" + "\n".join(problems[:20])
    elapsed = time.monotonic() - started

    summary = verify(engine, mails, by_id, uidvalidity, entry["name"])
    assert dovecot.uidvalidity(mail_user) == uidvalidity
    assert dovecot.message_count(mail_user) == 0
    moved = Counter(message_id_of(raw) for raw in dovecot.fetch(mail_user, "Processed").values())
    assert sum(moved.values()) == TOTAL and set(moved) == set(by_id), (
        f"Processed holds {sum(moved.values())} messages; "
        f"twice: {sorted(m for m, n in moved.items() if n > 1)[:10]}; missing: {sorted(set(by_id) - set(moved))[:10]}"
    )
    assert stats.kills_mid_ingest >= MIN_MID_INGEST_KILLS, stats
    assert stats.kills_with_pending >= 1 and stats.kills_with_unacknowledged >= 1, stats
    print(
        f"[crash-safety {backend}] seed={seed} kills={stats.kills} (mid-ingest {stats.kills_mid_ingest}, "
        f"leaving pending raw {stats.kills_with_pending}, leaving stored-but-not-moved "
        f"{stats.kills_with_unacknowledged}, delays {min(stats.delays):.2f}-{max(stats.delays):.2f} s) "
        f"rounds={stats.rounds} messages={TOTAL} "
        f"tickets={summary['tickets']} follow-ups={summary['follow_ups']} auto-replies={summary['auto']} "
        f"duplicates recorded={summary['duplicates']} kill phase {kill_phase:.1f} s, elapsed {elapsed:.1f} s"
    )


def message_id_of(data: bytes) -> str:
    for line in data.split(b"\r\n\r\n", 1)[0].splitlines():
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().strip(b"<>").decode()
    return ""


def verify(engine: Engine, mails: list[Mail], by_id: dict[str, Mail], uidvalidity: int, source: str) -> dict[str, int]:
    """Every mail exactly once: one raw row, one item (customer mail) or one auto_reply record."""
    with Session(engine) as session:
        raws = session.exec(select(RawMessage).order_by(col(RawMessage.id))).all()
        items = session.exec(select(Item).order_by(col(Item.id))).all()
        tickets = {t.id: t for t in session.exec(select(Ticket)).all()}
        created = Counter(session.exec(select(AuditEvent.ticket_id).where(AuditEvent.action == "created")).all())
        last_numbers = {c.name: c.last_number for c in session.exec(select(Channel)).all()}

    # Raw messages: one per mail, all processed, none recorded as a duplicate.
    raw_ids = Counter(r.message_id for r in raws)
    lost = sorted(set(by_id) - set(raw_ids), key=lambda m: int(m.split("-")[1].split("@")[0]))
    assert not lost, f"{len(lost)} messages lost, e.g. {lost[:10]}"
    twice = {m: n for m, n in raw_ids.items() if n > 1}
    assert not twice, f"Message-IDs stored more than once: {sorted(twice)[:10]}"
    states = Counter(str(r.state) for r in raws)
    assert states == {RawState.PROCESSED.value: len(mails)}, states
    duplicates = [r for r in raws if r.outcome == Outcome.DUPLICATE]
    assert not duplicates, [(r.id, r.source_key, r.message_id, r.duplicate_of) for r in duplicates[:10]]
    assert all(r.source == source and r.source_key.startswith(f"INBOX:{uidvalidity}:") for r in raws)
    raw_by_mid = {r.message_id: r for r in raws}

    # Items: no Message-ID in two items, no raw message behind two items.
    inbound = [i for i in items if i.direction == Direction.INBOUND]
    acks = [i for i in items if i.direction == Direction.OUTBOUND]
    assert all(i.kind == "auto_reply" and i.raw_message_id is None for i in acks)
    assert len(inbound) + len(acks) == len(items)
    assert not {t for t, n in Counter(i.ticket_id for i in acks).items() if n > 1}, "a ticket acknowledged twice"
    with Session(engine) as session:
        queued = Counter(session.exec(select(Outbox.message_id).where(Outbox.kind == "ack")).all())
    assert queued == Counter(i.message_id for i in acks), "acknowledgement items and outbox rows disagree"
    item_ids = Counter(i.message_id for i in inbound)
    assert not {m for m, n in item_ids.items() if n > 1}, "a Message-ID sits in two items"
    assert not {r for r, n in Counter(i.raw_message_id for i in inbound).items() if n > 1}
    item_by_mid = {i.message_id: i for i in inbound}

    ticket_of_root: dict[str, int] = {}
    counts = Counter[str]()
    for mail in mails:
        raw = raw_by_mid[mail.message_id]
        item = item_by_mid.get(mail.message_id)
        where = f"{mail.kind} <{mail.message_id}> (raw #{raw.id}, {raw.outcome})"
        if mail.kind == "enquiry":
            assert raw.outcome == Outcome.TICKET and item is not None and item.kind == ItemKind.MESSAGE, where
            assert raw.ticket_id == item.ticket_id and item.raw_message_id == raw.id, where
            ticket_of_root[mail.message_id] = item.ticket_id
            counts["tickets"] += 1
        elif mail.kind == "reply":
            assert mail.root is not None
            assert raw.outcome == Outcome.FOLLOW_UP and item is not None and item.kind == ItemKind.MESSAGE, where
            assert item.ticket_id == raw.ticket_id == ticket_of_root[mail.root], f"{where}: wrong ticket"
            counts["follow_ups"] += 1
        else:
            assert raw.outcome == Outcome.AUTO_REPLY, where
            if mail.root is None:
                assert item is None and raw.ticket_id is None, where
            else:
                assert item is not None and item.kind == ItemKind.AUTO_REPLY, where
                assert item.ticket_id == raw.ticket_id == ticket_of_root[mail.root], f"{where}: wrong ticket"
            counts["auto"] += 1

    # Tickets: one per enquiry, each created once, numbered without gaps or repeats.
    assert len(tickets) == counts["tickets"] == len(set(ticket_of_root.values()))
    assert set(created) == set(tickets) and set(created.values()) == {1}, "a ticket was created twice"
    assert sorted(int(t.number.split("-")[1]) for t in tickets.values()) == list(range(1, len(tickets) + 1))
    assert last_numbers["support"] == len(tickets)
    counts["duplicates"] = len(duplicates)
    return dict(counts)
