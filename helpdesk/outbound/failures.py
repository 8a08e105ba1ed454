"""A mail that could not be delivered: recorded on its ticket, and the ticket's owner is told."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session

from helpdesk.config import Config
from helpdesk.outbound.mailer import Mailer
from helpdesk.outbound.outbox import Claimed
from helpdesk.store import queries
from helpdesk.store.models import Channel, Direction, ItemKind, OutboxKind, Ticket, Visibility
from helpdesk.tickets import people

ACTOR = "system:mail"


class FailureRecorder:
    """The sender's ``on_failure`` hook (runs inside the transaction that marks the mail failed)."""

    def __init__(self, config: Config, mailer: Mailer) -> None:
        self.config = config
        self.mailer = mailer

    def __call__(self, session: Session, row: Claimed, reason: str, now: datetime, refused: bool) -> None:
        if refused and queries.flag_bouncing(session, row.recipient, reason, True, now):
            reason += f" (contact address {row.recipient} flagged as bouncing)"
        ticket = session.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
        if ticket is None:
            return
        queries.insert_item(
            session,
            {
                "ticket_id": ticket.id, "direction": Direction.INTERNAL.value, "kind": ItemKind.SYSTEM.value,
                "visibility": Visibility.INTERNAL.value, "subject": f"Delivery failed: {row.subject}",
                "to_addresses": row.recipient, "body_text": f"The mail {row.subject!r} to {row.recipient} "
                f"could not be delivered: {reason}", "body_quoted": "", "created_at": now,
            },
        )
        queries.audit(
            session, ticket_id=ticket.id, action="delivery_failed", actor=ACTOR, now=now,
            field="recipient", new=f"{row.recipient}: {reason}",
        )
        if row.kind is OutboxKind.FAILURE_NOTICE:
            return  # never a notice about a notice
        channel_row = session.get(Channel, ticket.channel_id)
        try:
            channel = self.config.channel(channel_row.name) if channel_row else self.config.fallback_channel
        except KeyError:
            channel = self.config.fallback_channel
        owner = self.config.staff_member(ticket.owner) if ticket.owner else None
        told = [owner] if owner else people.channel_team(self.config, channel.name)
        for member in told:
            if row.recipient in member.addresses:
                continue
            self.mailer.delivery_failed(session, now, ticket, channel, member, row.recipient, reason, row.subject)
