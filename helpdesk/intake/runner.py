"""The intake runner: owns the transactions. Raw bytes are committed first, then every message is
processed in a transaction of its own; a failure quarantines that message and nothing else."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, col, select

from helpdesk.config import Config
from helpdesk.intake.apply import apply_plan
from helpdesk.intake.prepare import Prepared, Preparer
from helpdesk.intake.react import react
from helpdesk.intake.steps import Context, StepError, make_plan
from helpdesk.intake.track import track
from helpdesk.outbound.mailer import Mailer
from helpdesk.store import queries
from helpdesk.store.db import transaction
from helpdesk.store.models import Outcome, RawMessage, RawState, Ticket

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Incoming:
    """One message as an adapter hands it over: its key at the source and its bytes."""

    key: str
    data: bytes
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Result:
    key: str
    raw_id: int
    state: RawState
    outcome: Outcome | None
    ticket_number: str | None
    error: str | None = None

    @property
    def settled(self) -> bool:
        """Safe to acknowledge at the source: processed or kept in quarantine."""
        return self.state is not RawState.PENDING


class Intake:
    """Stores and processes inbound mail for one configuration and database."""

    def __init__(self, engine: Engine, config: Config, clock: Clock = utcnow, mailer: Mailer | None = None) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        self.mailer = mailer or Mailer(config)
        with transaction(engine) as session:
            queries.sync_config(session, config, clock())
            self.channel_ids = queries.channel_ids(session)
        self._mailbox_channels = {box.name: ch.name for ch, box in config.mailboxes()}
        self.preparer = Preparer(frozenset(config.all_own_addresses()), config.parse_workers)

    def close(self) -> None:
        """Stop the parse workers, if any were started."""
        self.preparer.close()

    def store(self, source: str, messages: Sequence[Incoming]) -> list[tuple[Incoming, int]]:
        """Commit the raw bytes of a batch in one transaction; returns each message's raw id."""
        stored: list[tuple[Incoming, int]] = []
        now = self.clock()
        with transaction(self.engine) as session:
            ids = queries.store_raw_many(
                session,
                source=source,
                messages=[(m.key, m.data, m.envelope_from, m.envelope_to) for m in messages],
                now=now,
            )
            stored.extend(zip(messages, ids, strict=True))
        return stored

    def ingest(self, source: str, messages: Sequence[Incoming]) -> list[Result]:
        """Store a batch raw, then process it; the results say what may be acknowledged."""
        stored = self.store(source, messages)
        return self.process_many([(raw_id, m.key, m.data) for m, raw_id in stored])

    def _context(self, session: Session, raw: RawMessage) -> Context:
        return Context(
            session=session,
            config=self.config,
            now=self.clock(),
            channel_ids=self.channel_ids,
            mailbox_channel=self._mailbox_channels.get(raw.source),
            secret=self.mailer.secret,
            mailer=self.mailer,
        )

    def process(self, raw_id: int, key: str = "") -> Result:
        """Process one stored message; quarantine it if anything in the pipeline fails."""
        return self.process_many([(raw_id, key, None)])[0]

    def process_many(self, batch: Sequence[tuple[int, str, bytes | None]]) -> list[Result]:
        """Process stored messages in one transaction, each inside a SAVEPOINT of its own: a message
        that fails is rolled back alone and quarantined with its reason; one commit for the batch.

        The database failing (connection lost, locked) is not the message's fault: the whole batch
        is rolled back, stays pending, and the error propagates so that the caller retries later.
        """
        if not batch:
            return []
        stream = self.preparer.stream([data for _id, _key, data in batch if data is not None])
        with transaction(self.engine) as session:
            ids = [raw_id for raw_id, _key, _data in batch]
            stmt = select(RawMessage).where(col(RawMessage.id).in_(ids)).with_for_update()
            raws = {raw.id: raw for raw in session.exec(stmt)}
            keep: list[object] = []  # the session holds clean objects weakly; results need them
            results = []
            for raw_id, key, data in batch:
                ready = next(stream) if data is not None else None
                raw = raws.get(raw_id)
                if raw is None:
                    raise LookupError(f"raw message {raw_id} does not exist")
                results.append(self._process_one(session, raw, key, data, ready, keep))
            return results

    def _process_one(
        self,
        session: Session,
        raw: RawMessage,
        key: str,
        data: bytes | None,
        prepared: Prepared | None,
        keep: list[object],
    ) -> Result:
        assert raw.id is not None
        raw_id = raw.id
        if raw.state != RawState.PENDING:
            return self._result(session, raw, key)
        try:
            with session.begin_nested():
                ctx = self._context(session, raw)
                plan = make_plan(
                    raw, data if data is not None else queries.raw_bytes(session, raw_id), ctx, prepared
                )
                apply_plan(ctx, plan)
                track(ctx, plan)
                react(ctx, plan)
                session.flush()
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, StepError) else f"processing failed: {type(exc).__name__}: {exc}"
            log.warning("message %s quarantined: %s", raw_id, reason)
            log.debug("%s", traceback.format_exc())
            session.expire_all()  # rows written in plain SQL were rolled back: forget what memory holds
            return self._quarantine_in(session, raw_id, reason, key)
        keep.append(plan.ticket)
        return Result(
            key=key or raw.source_key, raw_id=raw_id, state=RawState(raw.state),
            outcome=Outcome(raw.outcome) if raw.outcome else None, ticket_number=plan.ticket_number, error=raw.error,
        )

    def _quarantine_in(self, session: Session, raw_id: int, reason: str, key: str) -> Result:
        raw = session.get(RawMessage, raw_id)
        if raw is None:
            raise LookupError(f"raw message {raw_id} does not exist")
        raw.state = RawState.QUARANTINED
        raw.outcome = Outcome.QUARANTINED
        raw.ticket_id = None
        raw.error = reason[:4000]
        raw.attempts += 1
        raw.processed_at = self.clock()
        session.add(raw)
        session.flush()
        return self._result(session, raw, key)

    def quarantine(self, raw_id: int, reason: str, key: str = "") -> Result:
        """Put a stored message into quarantine with ``reason`` (its own transaction)."""
        with transaction(self.engine) as session:
            return self._quarantine_in(session, raw_id, reason, key)

    @staticmethod
    def _result(session: Session, raw: RawMessage, key: str) -> Result:
        assert raw.id is not None
        number = None
        if raw.ticket_id is not None:
            ticket = session.get(Ticket, raw.ticket_id)
            number = ticket.number if ticket else None
        return Result(
            key=key or raw.source_key,
            raw_id=raw.id,
            state=RawState(raw.state),
            outcome=Outcome(raw.outcome) if raw.outcome else None,
            ticket_number=number,
            error=raw.error,
        )

    def process_pending(self) -> list[Result]:
        """Finish messages whose raw bytes were committed but not processed (e.g. after a crash)."""
        results: list[Result] = []
        while True:
            with transaction(self.engine) as session:
                ids = queries.pending_raw_ids(session, limit=500)
            if not ids:
                return results
            results.extend(self.process_many([(raw_id, "", None) for raw_id in ids]))

    def retry(self, raw_id: int) -> Result:
        """Put a quarantined message back through the pipeline (after a fix)."""
        with transaction(self.engine) as session:
            raw = session.get(RawMessage, raw_id)
            if raw is None:
                raise LookupError(f"raw message {raw_id} does not exist")
            if raw.state != RawState.QUARANTINED:
                raise ValueError(f"message {raw_id} is not in quarantine (state {raw.state})")
            raw.state = RawState.PENDING
            raw.outcome = None
            session.add(raw)
        return self.process(raw_id)
