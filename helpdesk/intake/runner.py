"""The intake runner: owns the transactions. Raw bytes are committed first, then every message is
processed in a transaction of its own; a failure quarantines that message and nothing else."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlmodel import Session

from helpdesk.config import Config
from helpdesk.intake.apply import apply_plan
from helpdesk.intake.steps import Context, StepError, make_plan
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

    def __init__(self, engine: Engine, config: Config, clock: Clock = utcnow) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock
        with transaction(engine) as session:
            queries.sync_config(session, config, clock())
            self.channel_ids = queries.channel_ids(session)
        self._mailbox_channels = {box.name: ch.name for ch, box in config.mailboxes()}

    def store(self, source: str, messages: Sequence[Incoming]) -> list[tuple[Incoming, int]]:
        """Commit the raw bytes of a batch in one transaction; returns each message's raw id."""
        stored: list[tuple[Incoming, int]] = []
        now = self.clock()
        with transaction(self.engine) as session:
            rows = queries.store_raw_many(
                session,
                source=source,
                messages=[(m.key, m.data, m.envelope_from, m.envelope_to) for m in messages],
                now=now,
            )
            session.flush()
            for message, raw in zip(messages, rows, strict=True):
                assert raw.id is not None
                stored.append((message, raw.id))
        return stored

    def ingest(self, source: str, messages: Sequence[Incoming]) -> list[Result]:
        """Store a batch raw, then process each message; the results say what may be acknowledged."""
        return [self.process(raw_id, key=m.key) for m, raw_id in self.store(source, messages)]

    def _context(self, session: Session, raw: RawMessage) -> Context:
        return Context(
            session=session,
            config=self.config,
            now=self.clock(),
            channel_ids=self.channel_ids,
            mailbox_channel=self._mailbox_channels.get(raw.source),
        )

    def process(self, raw_id: int, key: str = "") -> Result:
        """Process one stored message in its own transaction; quarantine it if anything fails."""
        try:
            with transaction(self.engine) as session:
                raw = session.get(RawMessage, raw_id, with_for_update=True)
                if raw is None:
                    raise LookupError(f"raw message {raw_id} does not exist")
                if raw.state != RawState.PENDING:
                    return self._result(session, raw, key)
                ctx = self._context(session, raw)
                apply_plan(ctx, make_plan(raw, ctx))
                # The session holds clean objects only weakly: keep what the plan touched (the
                # ticket) alive past the flush, so that _result finds it without another SELECT.
                touched = list(session.identity_map.values())
                session.flush()
                result = self._result(session, raw, key)
                del touched
                return result
        except Exception as exc:
            reason = str(exc) if isinstance(exc, StepError) else f"processing failed: {type(exc).__name__}: {exc}"
            log.warning("message %s quarantined: %s", raw_id, reason)
            log.debug("%s", traceback.format_exc())
            return self.quarantine(raw_id, reason, key)

    def quarantine(self, raw_id: int, reason: str, key: str = "") -> Result:
        with transaction(self.engine) as session:
            raw = session.get(RawMessage, raw_id)
            if raw is None:
                raise LookupError(f"raw message {raw_id} does not exist")
            raw.state = RawState.QUARANTINED
            raw.outcome = Outcome.QUARANTINED
            raw.error = reason[:4000]
            raw.attempts += 1
            raw.processed_at = self.clock()
            session.add(raw)
            session.flush()
            return self._result(session, raw, key)

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
            results.extend(self.process(raw_id) for raw_id in ids)

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
