"""SLA sweep benchmark: many open tickets in PostgreSQL, a few of them due; what the scheduler's sweep costs.

    python -m bench.sla [--open 10000,100000,1000000] [--due 10,100,1000,5000] [--fixed-due 1000] [--runs 5]
                        [--large-runs 3] [--batch-size 500] [--database-url URL] [--db-name NAME] [--keep]
    python -m bench.sla --quick          # N up to 100,000, 3 runs: a smoke run of a minute or two

A private database (``--db-name``, default ``helpdesk_bench_sla``) is created on the PostgreSQL server
of ``--database-url`` (default: the tests' server), migrated with ``helpdesk.store.migrate.upgrade``
and filled with set-based SQL (``generate_series``): N open tickets of the channel ``support`` (SLA
policy ``standard``, Europe/Berlin business hours) with two deadlines each, as ``deadlines.refresh``
plans them for a new ticket: ``first_response.warning`` at ``next_due_at`` and
``first_response.breach`` two hours later. D of them, spread evenly over the table, have their
warning in the last hour (due); the others fall due over the next three weeks. The open tickets are
loaded once, growing from the smallest N to the largest.

For every configuration (N open, D due) it reports the median over ``--runs`` repeats of

* claim: the sweep's selection of due work alone, the same ``_due_tickets`` query (``next_due_at <= now
  ORDER BY next_due_at LIMIT batch FOR UPDATE SKIP LOCKED``) plus loading those tickets' deadlines, in a
  transaction rolled back; for one batch (``--batch-size``, the scheduler's default 500) and for all D at
  once (LIMIT D), which shows that it grows with due work, not with open tickets. Target: < 100 ms at
  N = 1,000,000, D = 1,000;
* sweep: the real ``helpdesk.scheduler.sweep.sweep`` called batch after batch as ``Daemon.sweep_once``
  does, firing all D warnings (alert row, audit event, internal item, one notification mail to the
  channel's agent through the ``Mailer``, next deadline); and the same with ``mailer=None``, so the
  difference is the cost of rendering, composing and queueing the mails. For due counts above
  ``--fixed-due`` the sweeps are repeated ``--large-runs`` times only (they take longest);
* the plan of the claim query (``EXPLAIN (ANALYZE, BUFFERS)``): the scan it uses and the pages it reads.

Every repeat starts from the same state: the rows a sweep wrote (alerts, audit events, items, outbox)
are truncated, the due tickets get their warning deadline and ``next_due_at`` back, and the touched
tables are vacuumed (autovacuum is off for the bench's tables so it never runs during a timing).
Only the claim and the sweep calls are timed (each after a ``gc.collect()``). The database is dropped
at the end unless ``--keep``; with ``--keep`` an existing bench database is reused (its tickets are
loaded only as far as they are missing) and kept.

The default run takes about 8 minutes on 2 cores (loading 1,000,000 tickets: about 30 s).

Run by hand; pytest never collects this package (it is outside ``testpaths``).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, event, select, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, col

from bench.ingest import machine
from helpdesk.config import Config, SchedulerConfig, validate
from helpdesk.outbound.mailer import Mailer
from helpdesk.scheduler.sweep import _due_tickets, sweep
from helpdesk.store import queries
from helpdesk.store.db import make_engine
from helpdesk.store.migrate import upgrade
from helpdesk.store.models import TicketDeadline

DEFAULT_ADMIN_URL = os.environ.get("HELPDESK_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
DEFAULT_DB = "helpdesk_bench_sla"
DEFAULT_OPEN = [10_000, 100_000, 1_000_000]
DEFAULT_DUE = [10, 100, 1000, 5000]
QUICK_OPEN = [10_000, 100_000]
QUICK_DUE = [10, 100, 1000]
TARGET_CLAIM_MS = 100.0
HOLDER = "bench:sla"
# The sweep's clock: a Wednesday, 11:00 in Berlin (inside business hours).
NOW = datetime(2026, 3, 4, 10, 0, tzinfo=UTC)
CHANNEL = "support"
PREFIX = "SUP"
BENCH_TABLES = ("ticket", "ticket_deadline", "ticket_alert", "audit_event", "item", "outbox")

# ============================================================================================
# Configuration
# ============================================================================================


def config_data(database_url: str) -> dict[str, Any]:
    """The tests' base configuration, cut to one channel, with an SLA policy and one agent."""
    return {
        "database_url": database_url,
        "own_addresses": ["helpdesk@example.test"],
        "listener": {"enabled": False},
        "channels": [
            {
                "name": CHANNEL,
                "prefix": PREFIX,
                "addresses": ["support@example.test"],
                "from_name": "Example Support",
                "reopen_window": "14d",
                "sla": "standard",
            },
        ],
        "organisations": [
            {
                "name": "ACME Corp",
                "domains": ["acme.example"],
                "contacts": [{"name": "Alice Customer", "addresses": ["alice@acme.example"]}],
            }
        ],
        "staff": [
            {
                "name": "sam",
                "display_name": "Sam Agent",
                "addresses": ["sam@example.test"],
                "role": "agent",
                "channels": [CHANNEL],
            }
        ],
        "calendars": {
            "office": {"timezone": "Europe/Berlin", "hours": {"mon-fri": "08:00-17:00"}, "country": "DE",
                       "subdivision": "BE"},
        },
        "sla_policies": {
            "standard": {
                "calendar": "office",
                "warning": "75%",
                "targets": {"default": {"first_response": "4h", "next_response": "8h", "resolution": "5d"}},
            },
        },
    }


# ============================================================================================
# Data: set-based SQL
# ============================================================================================

# Deterministic spread per ticket id: a not-due ticket falls due 1 minute .. 3 weeks from now, a due one
# had its warning 1 s .. 1 h ago. The breach deadline comes two hours after the warning, so only the
# warning is due.
_FUTURE = "CAST(:now AS timestamptz) + make_interval(mins => CAST(1 + ({id}::bigint * 7919) % 30240 AS integer))"
_PAST = "CAST(:now AS timestamptz) - make_interval(secs => 1 + ({id}::bigint * 7919) % 3600)"

_INSERT_TICKETS = f"""
INSERT INTO ticket (id, number, channel_id, subject, status, priority, created_at, updated_at, activity_at,
                    sla_policy, next_due_at)
SELECT g, '{PREFIX}-' || g, :channel,
       'Printer on floor ' || (g % 7 + 1) || ' does not print (case ' || g || ')',
       'open', 3, c.at, c.at, c.at, 'standard', {_FUTURE.format(id="g")}
FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) AS g
CROSS JOIN LATERAL (
    SELECT date_trunc('second',
                      CAST(:now AS timestamptz) - make_interval(secs => 3600 + (g::bigint * 104729) % 2592000))
) AS c(at)
"""

# The key of a clock deadline is the clock's start as Python's isoformat() writes it.
_INSERT_DEADLINES = """
INSERT INTO ticket_deadline (ticket_id, kind, key, at)
SELECT t.id, k.kind, to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') || '+00:00',
       t.next_due_at + k.after
FROM ticket AS t
CROSS JOIN (VALUES ('first_response.warning', interval '0'), ('first_response.breach', interval '2 hours'))
    AS k(kind, after)
WHERE {where}
"""

# The D due tickets: every (N // D)-th id, so they are spread over the whole table.
_DUE_IDS = "SELECT g * CAST(:step AS integer) FROM generate_series(1, CAST(:d AS integer)) AS g"


@dataclass(frozen=True)
class Plan:
    """What EXPLAIN (ANALYZE, BUFFERS) showed of a claim query."""

    lines: list[str]

    @property
    def kind(self) -> str:
        """``index`` (Index Scan on ix_ticket_next_due_at), ``bitmap`` (Bitmap Index Scan on it, then a sort)
        or ``SEQ``/``other`` (it does not use the index)."""
        text = "\n".join(self.lines)
        if "Index Scan using ix_ticket_next_due_at" in text:
            return "index"
        if "Bitmap Index Scan on ix_ticket_next_due_at" in text:
            return "bitmap"
        return "SEQ" if "Seq Scan" in text else "other"

    @property
    def pages(self) -> int:
        """Buffers (pages) the whole query touched: shared hit + read of its top node."""
        line = next((x for x in self.lines if "Buffers:" in x), "")
        return sum(int(part.split("=", 1)[1]) for part in line.split() if part.startswith(("hit=", "read=")))

    @property
    def server_ms(self) -> float:
        line = next((x for x in self.lines if x.startswith("Execution Time:")), "Execution Time: 0 ms")
        return float(line.split(":", 1)[1].split()[0])


@dataclass
class Timing:
    """Medians (seconds) of one configuration (N open, D due) and the plans of its claim queries."""

    open: int
    due: int
    claim_batch: float = 0.0  # wall time, one batch
    claim_batch_cpu: float = 0.0  # this process's CPU time of it
    claim_all: float = 0.0  # wall time, LIMIT D
    sweep_mail: float = 0.0
    sweep_plain: float = 0.0
    cpu_mail: float = 0.0  # this process's CPU time of the sweep with mail
    cpu_plain: float = 0.0
    calls: int = 0
    sweep_runs: int = 0
    plan_batch: Plan = field(default_factory=lambda: Plan([]))
    plan_all: Plan = field(default_factory=lambda: Plan([]))


class Bench:
    def __init__(self, admin_url: str, db_name: str, batch_size: int, runs: int, keep: bool) -> None:
        self.admin_url = admin_url
        self.db_name = db_name
        self.batch_size = batch_size
        self.runs = runs
        self.keep = keep
        self.url = make_url(admin_url).set(database=db_name).render_as_string(hide_password=False)
        self.engine: Engine | None = None
        self.config: Config = validate(config_data(self.url))
        self.mailer = Mailer(self.config)
        self.channel_id = 0
        self.loaded = 0  # tickets 1..loaded exist
        self.placed: tuple[int, int] | None = None  # (N, D) of the tickets currently due

    @property
    def db(self) -> Engine:
        assert self.engine is not None
        return self.engine

    # --- database --------------------------------------------------------------------------------

    def _admin(self, sql: str) -> Any:
        admin = make_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                result = conn.execute(text(sql))
                return result.fetchall() if result.returns_rows else None
        finally:
            admin.dispose()

    def create(self) -> None:
        exists = bool(self._admin(f"SELECT 1 FROM pg_database WHERE datname = '{self.db_name}'"))
        if exists and not self.keep:
            self._admin(f'DROP DATABASE "{self.db_name}" WITH (FORCE)')
        if not exists or not self.keep:
            self._admin(f'CREATE DATABASE "{self.db_name}"')
        self.engine = make_engine(self.url)
        upgrade(self.engine)
        with Session(self.engine) as session:
            queries.sync_config(session, self.config, NOW)
            session.commit()
            self.channel_id = queries.channel_ids(session)[CHANNEL]
        with self.db.begin() as conn:
            for table in BENCH_TABLES:
                conn.execute(text(f"ALTER TABLE {table} SET (autovacuum_enabled = false)"))
            self.loaded = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM ticket")).scalar_one())
        if self.loaded:  # a kept database: put every ticket back to not due, whatever a broken run left
            self.truncate_effects()
            with self.db.begin() as conn:
                future = _FUTURE.format(id="id")
                conn.execute(
                    text(f"UPDATE ticket SET next_due_at = {future} WHERE next_due_at IS DISTINCT FROM {future}"),
                    {"now": NOW},
                )
                conn.execute(text("DELETE FROM ticket_deadline WHERE ticket_id IN "
                                  "(SELECT t.id FROM ticket AS t LEFT JOIN ticket_deadline AS d "
                                  "ON d.ticket_id = t.id AND d.kind = 'first_response.warning' "
                                  "WHERE d.at IS DISTINCT FROM t.next_due_at)"))
                conn.execute(text(_INSERT_DEADLINES.format(
                    where="NOT EXISTS (SELECT 1 FROM ticket_deadline AS d WHERE d.ticket_id = t.id)")))
            self.vacuum(analyze=True)

    def drop(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        if not self.keep:
            self._admin(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def vacuum(self, analyze: bool = False) -> None:
        with self.db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"VACUUM {'(ANALYZE) ' if analyze else ''}{', '.join(BENCH_TABLES)}")

    def load(self, n: int) -> float:
        """Open tickets ``loaded + 1 .. n`` with their deadlines; returns the seconds taken (vacuum included).
        A kept database with more tickets loses those above ``n``."""
        if n == self.loaded:
            return 0.0
        self.undue()
        started = time.perf_counter()
        if n < self.loaded:
            self.truncate_effects()
            with self.db.begin() as conn:
                conn.execute(text("DELETE FROM ticket_deadline WHERE ticket_id > :n"), {"n": n})
                conn.execute(text("DELETE FROM ticket WHERE id > :n"), {"n": n})
            self.vacuum(analyze=True)
            self.loaded = n
            return time.perf_counter() - started
        params = {"now": NOW, "lo": self.loaded + 1, "hi": n, "channel": self.channel_id}
        with self.db.begin() as conn:
            conn.execute(text(_INSERT_TICKETS), params)
            conn.execute(text(_INSERT_DEADLINES.format(where="t.id BETWEEN :lo AND :hi")), params)
            conn.execute(text("SELECT setval(pg_get_serial_sequence('ticket', 'id'), :hi)"), params)
            conn.execute(text("UPDATE channel SET last_number = :hi WHERE id = :channel"), params)
        self.vacuum(analyze=True)
        self.loaded = n
        return time.perf_counter() - started

    def _place(self, conn: Connection, n: int, d: int, due: bool) -> None:
        params = {"now": NOW, "step": n // d, "d": d}
        at = (_PAST if due else _FUTURE).format(id="id")
        conn.execute(text(f"UPDATE ticket SET next_due_at = {at} WHERE id IN ({_DUE_IDS})"), params)
        conn.execute(text(f"DELETE FROM ticket_deadline WHERE ticket_id IN ({_DUE_IDS})"), params)
        conn.execute(text(_INSERT_DEADLINES.format(where=f"t.id IN ({_DUE_IDS})")), params)

    def undue(self) -> None:
        if self.placed is None:
            return
        with self.db.begin() as conn:
            self._place(conn, *self.placed, due=False)
        self.placed = None

    def truncate_effects(self) -> None:
        with self.db.begin() as conn:
            conn.execute(text("TRUNCATE ticket_alert, audit_event, outbox, item RESTART IDENTITY CASCADE"))

    def make_due(self, n: int, d: int, analyze: bool = False) -> None:
        """The state every repeat starts from: D tickets due, nothing fired yet."""
        if self.placed not in (None, (n, d)):
            self.undue()
        self.truncate_effects()
        with self.db.begin() as conn:
            self._place(conn, n, d, due=True)
        self.placed = (n, d)
        self.vacuum(analyze=analyze)

    def count_due(self) -> int:
        with self.db.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM ticket WHERE next_due_at <= :now"),
                                    {"now": NOW}).scalar_one())

    # --- what is timed --------------------------------------------------------------------------

    def claim(self, limit: int) -> tuple[float, float, int, int]:
        """The sweep's selection: due tickets (locked) and their deadlines; rolled back.
        Returns wall and CPU seconds, tickets and deadline rows."""
        with Session(self.db, expire_on_commit=False, autoflush=False) as session:
            session.connection()  # check-out and pre-ping outside the timing
            gc.collect()  # every run starts with the same garbage-collector state
            started, cpu = time.perf_counter(), time.process_time()
            tickets = _due_tickets(session, NOW, limit)
            ids = [t.id for t in tickets]
            rows = session.scalars(select(TicketDeadline).where(col(TicketDeadline.ticket_id).in_(ids))).all()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            session.rollback()
        return elapsed, cpu, len(tickets), len(rows)

    def sweep_all(self, mailer: Mailer | None) -> tuple[float, float, int, int]:
        """Sweep batch after batch until a batch is not full, as ``Daemon.sweep_once`` does.
        Returns wall and CPU seconds, sweep calls and warnings fired."""
        calls = fired = 0
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        while True:
            report = sweep(self.db, self.config, NOW, mailer, HOLDER, self.batch_size)
            calls += 1
            fired += report.total
            if not report.more:
                break
        return time.perf_counter() - started, time.process_time() - cpu, calls, fired

    def check_swept(self, d: int, mails: bool) -> str | None:
        with self.db.connect() as conn:
            counts = {
                table: int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
                for table in ("ticket_alert", "audit_event", "item", "outbox")
            }
            left = int(conn.execute(text("SELECT count(*) FROM ticket WHERE next_due_at <= :now"),
                                    {"now": NOW}).scalar_one())
            pending = int(conn.execute(text(
                f"SELECT count(*) FROM ticket AS t JOIN ticket_deadline AS d ON d.ticket_id = t.id "
                f"WHERE t.id IN ({_DUE_IDS}) AND d.kind = 'first_response.breach' AND t.next_due_at = d.at"
            ), {"step": self.placed[0] // d if self.placed else 1, "d": d}).scalar_one())
        expected = {"ticket_alert": d, "audit_event": d, "item": d, "outbox": d if mails else 0}
        problems = [f"{table} {counts[table]} (expected {n})" for table, n in expected.items() if counts[table] != n]
        if left:
            problems.append(f"{left} tickets still due")
        if pending != d:
            problems.append(f"{pending}/{d} swept tickets have next_due_at = their breach deadline")
        return "; ".join(problems) or None

    def explain(self, limit: int) -> list[str]:
        """EXPLAIN (ANALYZE, BUFFERS) of the claim query exactly as the sweep sends it."""
        captured: list[tuple[str, Any]] = []

        def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_a: Any) -> None:
            if "FOR UPDATE" in statement:
                captured.append((statement, parameters))

        event.listen(self.db, "before_cursor_execute", grab)
        try:
            self.claim(limit)
        finally:
            event.remove(self.db, "before_cursor_execute", grab)
        statement, parameters = captured[0]
        with self.db.connect() as conn:
            plan = [str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)]
            conn.rollback()
        return plan


# ============================================================================================
# Measuring
# ============================================================================================


def measure(bench: Bench, n: int, d: int, sweep_runs: int) -> Timing:
    timing = Timing(open=n, due=d, sweep_runs=sweep_runs)
    started = time.perf_counter()
    bench.make_due(n, d, analyze=True)
    due_now = bench.count_due()
    if due_now != d:
        raise RuntimeError(f"N={n} D={d}: {due_now} tickets due after set-up, expected {d}")
    batch = min(bench.batch_size, d)
    bench.claim(bench.batch_size)  # warm up: statement caches, prepared statements, pages
    bench.claim(d)
    claims_batch: list[tuple[float, float]] = []
    claims_all: list[float] = []
    for _ in range(bench.runs):
        wall, cpu, got, rows = bench.claim(bench.batch_size)
        if (got, rows) != (batch, 2 * batch):
            raise RuntimeError(f"claim of one batch got {got} tickets, {rows} deadlines; expected {batch}, {2 * batch}")
        claims_batch.append((wall, cpu))
        wall, _, got, _ = bench.claim(d)
        if got != d:
            raise RuntimeError(f"claim of all got {got} tickets; expected {d}")
        claims_all.append(wall)
    timing.claim_batch = statistics.median(wall for wall, _ in claims_batch)
    timing.claim_batch_cpu = statistics.median(cpu for _, cpu in claims_batch)
    timing.claim_all = statistics.median(claims_all)
    timing.plan_batch = Plan(bench.explain(bench.batch_size))
    timing.plan_all = Plan(bench.explain(d))
    with_mail: list[tuple[float, float]] = []
    without: list[tuple[float, float]] = []
    variants: list[tuple[Mailer | None, list[tuple[float, float]]]] = [(bench.mailer, with_mail), (None, without)]
    for i in range(sweep_runs):
        for mailer, bucket in variants if i % 2 == 0 else variants[::-1]:  # alternate: drift touches both alike
            bench.make_due(n, d)
            wall, cpu, calls, fired = bench.sweep_all(mailer)
            if fired != d:
                raise RuntimeError(f"sweep fired {fired} warnings; expected {d}")
            problem = bench.check_swept(d, mails=mailer is not None)
            if problem:
                raise RuntimeError(f"N={n} D={d} after the sweep: {problem}")
            bucket.append((wall, cpu))
            timing.calls = calls
    timing.sweep_mail = statistics.median(wall for wall, _ in with_mail)
    timing.cpu_mail = statistics.median(cpu for _, cpu in with_mail)
    timing.sweep_plain = statistics.median(wall for wall, _ in without)
    timing.cpu_plain = statistics.median(cpu for _, cpu in without)
    bench.make_due(n, d)  # leave the due state behind (the next configuration clears it)
    print(f"  N={n:>9,} D={d:>5,}: claim {1000 * timing.claim_batch:6.1f} ms (batch), "
          f"{1000 * timing.claim_all:7.1f} ms (all); sweep {timing.sweep_mail:6.2f} s with mail, "
          f"{timing.sweep_plain:6.2f} s without ({time.perf_counter() - started:.0f} s incl. resets; "
          f"load avg {os.getloadavg()[0]:.1f})", flush=True)
    return timing


# ============================================================================================
# Report
# ============================================================================================

# (group title, [(column, unit, width)]): the tables' header; _row follows the same widths.
_COLUMNS: list[tuple[str, list[tuple[str, str, int]]]] = [
    ("", [("open N", "", 9), ("due D", "", 5)]),
    ("claim, one batch", [("wall", "ms", 6), ("cpu", "ms", 5), ("plan", "", 6), ("pages", "", 5), ("srv", "ms", 4)]),
    ("claim, all D", [("wall", "ms", 6), ("plan", "", 6)]),
    ("sweep", [("wall", "ms", 6), ("/tkt", "ms", 5), ("cpu/t", "ms", 5)]),
    ("sweep, no mail", [("wall", "ms", 6), ("/tkt", "ms", 5), ("cpu/t", "ms", 5)]),
    ("mail", [("/tkt", "ms", 5), ("calls", "", 5)]),
]


def _header() -> str:
    groups, names, units = [], [], []
    for title, columns in _COLUMNS:
        width = sum(w for _, _, w in columns) + len(columns) - 1
        groups.append(f"{title:^{width}}")
        names.append(" ".join(f"{name:>{w}}" for name, _, w in columns))
        units.append(" ".join(f"{unit:>{w}}" for _, unit, w in columns))
    return "\n".join(" | ".join(parts).rstrip() for parts in (groups, names, units))


def _row(t: Timing) -> str:
    per_mail, per_plain = 1000 * t.sweep_mail / t.due, 1000 * t.sweep_plain / t.due
    return (
        f"{t.open:>9,} {t.due:>5,} | {1000 * t.claim_batch:>6.1f} {1000 * t.claim_batch_cpu:>5.1f} "
        f"{t.plan_batch.kind:>6} {t.plan_batch.pages:>5} {t.plan_batch.server_ms:>4.2f} | "
        f"{1000 * t.claim_all:>6.1f} {t.plan_all.kind:>6} | "
        f"{1000 * t.sweep_mail:>6.0f} {per_mail:>5.2f} {1000 * t.cpu_mail / t.due:>5.2f} | "
        f"{1000 * t.sweep_plain:>6.0f} {per_plain:>5.2f} {1000 * t.cpu_plain / t.due:>5.2f} | "
        f"{per_mail - per_plain:>5.2f} {t.calls:>5}"
    )


def _ratio(a: float, b: float) -> str:
    return f"x{a / b:.2f}" if b else "x?"


def report(bench: Bench, by_open: list[Timing], by_due: list[Timing], loads: list[str], pg: dict[str, str],
           load_before: float, total: float) -> None:
    batch = bench.batch_size
    print()
    print("=" * 120)
    print(f"helpdesk SLA sweep, PostgreSQL {pg['server_version']}; {machine()}")
    print(f"cores (os.cpu_count()) {os.cpu_count()}; shared_buffers {pg['shared_buffers']}, synchronous_commit "
          f"{pg['synchronous_commit']}; load avg {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"median of {bench.runs} runs; batch_size {batch}")
    print("=" * 120)
    print("loading (generate_series, incl. VACUUM ANALYZE): " + "; ".join(loads))
    print()
    print(f"claim   the sweep's due-ticket query (next_due_at <= now ORDER BY next_due_at LIMIT n FOR UPDATE SKIP "
          f"LOCKED) and the\n        loading of those tickets' deadlines, for one batch (LIMIT {batch}, one sweep "
          f"call) and for all D (LIMIT D):\n        wall ms and this process's CPU ms; plan, pages, srv from EXPLAIN "
          f"(ANALYZE, BUFFERS): index = Index Scan on\n        ix_ticket_next_due_at, bitmap = Bitmap Index Scan on it "
          f"+ sort; pages = buffers touched; srv = server execution ms")
    print("sweep   sweep() batch after batch until done (calls), firing D warnings: alert, audit event, internal item "
          "and one\n        notification mail each; wall ms, wall ms per due ticket, this process's CPU ms per due "
          "ticket\n        (no mail: the same with mailer=None; mail /tkt = (sweep - no mail) / D: render, compose, "
          "queue one mail)")
    for title, rows in ((f"growth with OPEN tickets, D = {by_open[0].due:,} due", by_open),
                        (f"growth with DUE tickets, N = {by_due[0].open:,} open" if by_due else "", by_due)):
        if rows:
            print()
            print(title)
            print(_header())
            for t in rows:
                print(_row(t))
    everything = by_open + [t for t in by_due if all(t is not u for u in by_open)]
    reference = by_open[-1]
    print()
    print(f"EXPLAIN (ANALYZE, BUFFERS) of the claim query (LIMIT {batch}) at N={reference.open:,}, "
          f"D={reference.due:,}:")
    for line in reference.plan_batch.lines:
        print(f"  {line}")
    print()
    print(f"plan, first line: {reference.plan_batch.lines[0].strip()}")
    scans = [x.strip().removeprefix("->").strip().split("  (", 1)[0] for x in reference.plan_batch.lines if "Scan" in x]
    print(f"plan, scan:       {' <- '.join(scans) or '?'}")
    unindexed = [f"N={t.open:,} D={t.due:,}" for t in everything
                 if t.plan_batch.kind not in ("index", "bitmap") or t.plan_all.kind not in ("index", "bitmap")]
    verdict = "yes" if not unindexed else "NO: " + ", ".join(unindexed)
    print(f"ix_ticket_next_due_at used by every claim query: {verdict}")
    claim_ms = 1000 * reference.claim_batch
    print(f"target: claim < {TARGET_CLAIM_MS:.0f} ms at N={reference.open:,}, D={reference.due:,}: "
          f"{'MET' if claim_ms < TARGET_CLAIM_MS else 'NOT MET'} ({claim_ms:.1f} ms for a batch of "
          f"{min(batch, reference.due)}, {1000 * reference.claim_all:.1f} ms for all {reference.due:,})")
    print(f"full sweep at N={reference.open:,}, D={reference.due:,}: {reference.sweep_mail:.2f} s = "
          f"{1000 * reference.sweep_mail / reference.due:.2f} ms per due ticket; "
          f"{1000 * reference.sweep_plain / reference.due:.2f} ms without composing mails")
    if len(by_open) > 1:
        lo, hi = by_open[0], by_open[-1]
        print(f"open {lo.open:,} -> {hi.open:,} (x{hi.open / lo.open:.0f}): claim "
              f"{_ratio(hi.claim_batch, lo.claim_batch)}, pages {lo.plan_batch.pages} -> {hi.plan_batch.pages}, "
              f"sweep {_ratio(hi.sweep_mail, lo.sweep_mail)}")
    if len(by_due) > 1:
        lo, hi = by_due[0], by_due[-1]
        print(f"due {lo.due:,} -> {hi.due:,} (x{hi.due / lo.due:.0f}): claim of all "
              f"{_ratio(hi.claim_all, lo.claim_all)}, sweep {_ratio(hi.sweep_mail, lo.sweep_mail)} "
              f"(per ticket {1000 * lo.sweep_mail / lo.due:.2f} -> {1000 * hi.sweep_mail / hi.due:.2f} ms)")
    fewer = [f"D={t.due:,}" for t in everything if t.sweep_runs != bench.runs]
    if fewer:
        print(f"sweeps at {', '.join(fewer)}: median of {min(t.sweep_runs for t in everything)} runs "
              f"(--large-runs), to keep the run short")
    print(f"whole benchmark: {total:.0f} s")


# ============================================================================================
# Command line
# ============================================================================================


def _counts(value: str) -> list[int]:
    try:
        numbers = [int(part.replace("_", "").replace("k", "000").replace("M", "000000"))
                   for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of counts, not {value!r}") from None
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError("counts must be positive")
    return sorted(set(numbers))


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HELPDESK_REPLY_SECRET", "bench-reply-secret")  # signs the notification mails
    parser = argparse.ArgumentParser(prog="python -m bench.sla", description=__doc__.split("\n\n")[0])
    parser.add_argument("--open", type=_counts, default=None,
                        help="open-ticket counts for the growth with open tickets (default 10k,100k,1M)")
    parser.add_argument("--due", type=_counts, default=None,
                        help="due-ticket counts for the growth with due tickets, at the largest --open "
                             "(default 10,100,1000,5000)")
    parser.add_argument("--fixed-due", type=int, default=1000,
                        help="due tickets in the growth with open tickets (default 1000)")
    parser.add_argument("--runs", type=int, default=None, help="repeats per figure; the median is reported "
                                                               "(default 5; 3 with --quick)")
    parser.add_argument("--large-runs", type=int, default=3,
                        help="repeats of the sweeps for due counts above --fixed-due, which take longest "
                             "(default 3; at most --runs)")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: N up to 100k, D up to 1000, 3 runs")
    parser.add_argument("--batch-size", type=int, default=SchedulerConfig().batch_size,
                        help="the sweep's batch size (default: the scheduler's, %(default)s)")
    parser.add_argument("--database-url", default=DEFAULT_ADMIN_URL,
                        help="a PostgreSQL database to connect to for CREATE/DROP DATABASE (default %(default)s)")
    parser.add_argument("--db-name", default=DEFAULT_DB, help="the bench's own database (default %(default)s)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse an existing bench database instead of recreating it, and keep it afterwards")
    args = parser.parse_args(argv)
    opens: list[int] = args.open or (QUICK_OPEN if args.quick else DEFAULT_OPEN)
    dues: list[int] = args.due or (QUICK_DUE if args.quick else DEFAULT_DUE)
    runs: int = args.runs or (3 if args.quick else 5)
    if min(runs, args.large_runs, args.fixed_due, args.batch_size) < 1:
        parser.error("--runs, --large-runs, --fixed-due and --batch-size must be positive")
    if make_url(args.database_url).get_backend_name() != "postgresql":
        parser.error("--database-url must be a postgresql:// URL")
    biggest = max(opens)
    if args.fixed_due > min(opens) or max(dues) > biggest:
        parser.error("due counts cannot exceed the open counts they are measured at")

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    bench = Bench(args.database_url, args.db_name, args.batch_size, runs, args.keep)
    print(f"bench database {args.db_name} on {make_url(args.database_url).set(database=args.db_name)}; "
          f"open {opens}, due {dues} (fixed due {args.fixed_due}), {runs} runs", flush=True)
    by_open: list[Timing] = []
    by_due: list[Timing] = []
    loads: list[str] = []
    try:
        bench.create()
        with bench.db.connect() as conn:
            pg = {name: str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())
                  for name in ("server_version", "shared_buffers", "synchronous_commit")}
        if bench.loaded:
            print(f"reusing {bench.loaded:,} tickets of the kept database", flush=True)
        for n in opens:
            if n < bench.loaded:
                print(f"deleting the kept database's tickets above {n:,} ...", flush=True)
                bench.load(n)
            elif n > bench.loaded:
                before = bench.loaded
                print(f"loading tickets {before + 1:,}..{n:,} ...", flush=True)
                seconds = bench.load(n)
                loads.append(f"{n - before:,} tickets + {2 * (n - before):,} deadlines in {seconds:.1f} s")
                print(f"  {loads[-1]}", flush=True)
            if not by_open:  # warm-up: imports, template compilation, ORM statement caches
                bench.make_due(n, min(50, args.fixed_due))
                bench.sweep_all(bench.mailer)
            print(f"measuring N={n:,} ...", flush=True)
            by_open.append(measure(bench, n, args.fixed_due, runs))
        for d in dues:
            if d == args.fixed_due:  # measured already: the last configuration of the open growth
                by_due.append(by_open[-1])
                continue
            by_due.append(measure(bench, biggest, d, runs if d <= args.fixed_due else min(runs, args.large_runs)))
        bench.undue()
    finally:
        bench.drop()
        if args.keep:
            print(f"database kept: {bench.url}")
    report(bench, by_open, by_due, loads, pg, load_before, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
