"""Turn ticket events into outbox rows: acknowledgements, staff notifications, relayed replies,
command errors and delivery-failure notices, rendered from the channel's templates.

Every mail carries a Message-ID on our own domain, an ``X-Helpdesk-Loop`` header (a copy that comes
back is recognised as our own) and a signed Reply-To bound to the ticket and the recipient: a reply
through it proves the sender received our mail, which a forged From header cannot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

from sqlmodel import Session

from helpdesk.config import ChannelConfig, Config, StaffConfig, resolve_secret
from helpdesk.mail.classify import LOOP_HEADER
from helpdesk.mail.compose import Outgoing, OutgoingAttachment, compose, make_message_id
from helpdesk.mail.tokens import TokenKind, reply_address, sign
from helpdesk.outbound import outbox
from helpdesk.outbound.render import Rendered, Templates, default_templates_dir
from helpdesk.store.models import OutboxKind, Ticket


class SecretMissing(Exception):
    """The reply-address secret is not available: nothing can be signed, so nothing is sent."""


@dataclass(frozen=True)
class ItemView:
    """What a notification shows of an item."""

    from_name: str
    from_address: str
    body_text: str
    created_at: datetime
    attachment_names: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Queued:
    """A mail in the outbox, as the ticket history records it."""

    message_id: str
    subject: str
    text: str


@dataclass(frozen=True)
class Thread:
    """Threading headers for a mail that answers an earlier one."""

    in_reply_to: str | None = None
    references: tuple[str, ...] = ()

    @classmethod
    def answering(cls, message_id: str | None, references: Sequence[str]) -> Thread:
        """The headers of an answer to the mail with ``message_id`` and ``references``."""
        if not message_id:
            return cls(None, tuple(references))
        return cls(message_id, (*references, message_id))


def _ticket_view(ticket: Ticket) -> SimpleNamespace:
    return SimpleNamespace(
        number=ticket.number, subject=ticket.subject, status=ticket.status, priority=ticket.priority,
        owner=ticket.owner, assignee=ticket.assignee,
    )


class Mailer:
    def __init__(self, config: Config, secret: bytes | None = None) -> None:
        self.config = config
        if secret is None:
            try:
                value = resolve_secret(config.reply_secret)
            except (KeyError, ValueError) as exc:
                raise SecretMissing(f"reply_secret: {exc.args[0]}") from None
            secret = (value or "").encode()
        if not secret:
            raise SecretMissing("reply_secret: the secret is empty")
        self.secret = secret
        self._templates: dict[str | None, Templates] = {}

    # --- building blocks ---------------------------------------------------------------------------

    def templates(self, channel: ChannelConfig) -> Templates:
        key = channel.templates
        if key not in self._templates:
            self._templates[key] = Templates(default_templates_dir(), Path(key) if key else None)
        return self._templates[key]

    def token_address(self, channel: ChannelConfig, ticket_id: int, recipient: str, kind: TokenKind) -> str:
        return reply_address(channel.address, sign(self.secret, kind, ticket_id, recipient))

    def _context(
        self, ticket: Ticket, channel: ChannelConfig, recipient_name: str, **extra: object
    ) -> dict[str, object]:
        return {
            "ticket": _ticket_view(ticket),
            "tag": f"[{ticket.number}]",
            "channel": SimpleNamespace(
                name=channel.name, label=channel.from_name or channel.name, address=channel.address
            ),
            "recipient_name": recipient_name,
            "sla": [],
            **extra,
        }

    def _queue(
        self,
        session: Session,
        now: datetime,
        *,
        kind: OutboxKind,
        ticket: Ticket,
        channel: ChannelConfig,
        to: tuple[str, str],
        rendered: Rendered,
        from_name: str,
        reply_to: str,
        thread: Thread = Thread(),
        auto_submitted: str | None = None,
        subject: str | None = None,
        attachments: Sequence[OutgoingAttachment] = (),
        item_id: int | None = None,
        message_id: str | None = None,
    ) -> Queued:
        assert ticket.id is not None
        message_id = message_id or make_message_id(self.config.message_id_domain, now)
        headers: list[tuple[str, str]] = [(LOOP_HEADER, ticket.number)]
        if auto_submitted:
            headers.append(("X-Auto-Response-Suppress", "All"))
        subject = subject or rendered.subject
        data = compose(
            Outgoing(
                from_address=channel.address,
                from_name=from_name,
                to=(to,),
                subject=subject,
                text=rendered.text,
                html=rendered.html,
                date=now,
                message_id=message_id,
                reply_to=reply_to,
                in_reply_to=thread.in_reply_to,
                references=thread.references,
                auto_submitted=auto_submitted,
                headers=tuple(headers),
                attachments=tuple(attachments),
            )
        )
        outbox.enqueue(
            session, kind=kind, ticket_id=ticket.id, item_id=item_id, envelope_from=channel.address,
            recipient=to[1], message_id=message_id, subject=subject, data=data, now=now,
        )
        return Queued(message_id, subject, rendered.text)

    # --- to customers ----------------------------------------------------------------------------------

    def acknowledge(
        self,
        session: Session,
        now: datetime,
        ticket: Ticket,
        channel: ChannelConfig,
        to: tuple[str, str],
        thread: Thread,
        message_id: str | None = None,
        sla: Sequence[object] = (),
    ) -> Queued:
        assert ticket.id is not None
        context = self._context(ticket, channel, to[0], customer_name=to[0], sla=list(sla))
        rendered = self.templates(channel).render("ack", context)
        return self._queue(
            session, now, kind=OutboxKind.ACK, ticket=ticket, channel=channel, to=to, rendered=rendered,
            from_name=channel.from_name or channel.name,
            reply_to=self.token_address(channel, ticket.id, to[1], TokenKind.REPLY),
            thread=thread, auto_submitted="auto-replied", message_id=message_id,
        )

    def relay(
        self,
        session: Session,
        now: datetime,
        ticket: Ticket,
        channel: ChannelConfig,
        to: tuple[str, str],
        author: StaffConfig,
        body: str,
        subject: str,
        thread: Thread,
        attachments: Sequence[OutgoingAttachment],
        item_id: int,
        message_id: str | None = None,
    ) -> Queued:
        """A staff member's answer, sent to the customer from the channel address under their name."""
        assert ticket.id is not None
        context = self._context(ticket, channel, to[0], body=body, author=author.label)
        rendered = self.templates(channel).render("reply", context)
        return self._queue(
            session, now, kind=OutboxKind.REPLY, ticket=ticket, channel=channel, to=to, rendered=rendered,
            from_name=author.label, reply_to=self.token_address(channel, ticket.id, to[1], TokenKind.REPLY),
            thread=thread, subject=subject, attachments=attachments, item_id=item_id, message_id=message_id,
        )

    # --- to staff ------------------------------------------------------------------------------------

    def _staff_addresses(self, channel: ChannelConfig, ticket_id: int, member: StaffConfig) -> dict[str, str]:
        address = member.addresses[0]
        return {
            "reply_address": self.token_address(channel, ticket_id, address, TokenKind.REPLY),
            "note_address": self.token_address(channel, ticket_id, address, TokenKind.NOTE),
        }

    def notify(
        self,
        session: Session,
        now: datetime,
        ticket: Ticket,
        channel: ChannelConfig,
        member: StaffConfig,
        template: str,
        thread: Thread = Thread(),
        **extra: object,
    ) -> Queued:
        """Tell a staff member about the ticket, as a mail they can answer (reply, note or commands)."""
        assert ticket.id is not None
        addresses = self._staff_addresses(channel, ticket.id, member)
        context = self._context(ticket, channel, member.label, staff_name=member.label, **addresses, **extra)
        rendered = self.templates(channel).render(template, context)
        return self._queue(
            session, now, kind=OutboxKind.NOTIFICATION, ticket=ticket, channel=channel,
            to=(member.label, member.addresses[0]), rendered=rendered,
            from_name=f"{channel.from_name or channel.name} ({ticket.number})",
            reply_to=addresses["reply_address"], thread=thread, auto_submitted="auto-generated",
        )

    def command_error(
        self,
        session: Session,
        now: datetime,
        ticket: Ticket,
        channel: ChannelConfig,
        to: tuple[str, str],
        errors: Sequence[str],
        original_subject: str,
        thread: Thread,
    ) -> Queued:
        assert ticket.id is not None
        context = self._context(ticket, channel, to[0], errors=list(errors), original_subject=original_subject)
        rendered = self.templates(channel).render("command_error", context)
        return self._queue(
            session, now, kind=OutboxKind.COMMAND_ERROR, ticket=ticket, channel=channel, to=to, rendered=rendered,
            from_name=channel.from_name or channel.name,
            reply_to=self.token_address(channel, ticket.id, to[1], TokenKind.REPLY),
            thread=thread, auto_submitted="auto-replied",
        )

    def delivery_failed(
        self,
        session: Session,
        now: datetime,
        ticket: Ticket,
        channel: ChannelConfig,
        member: StaffConfig,
        failed_recipient: str,
        error: str,
        failed_subject: str,
    ) -> Queued:
        assert ticket.id is not None
        context = self._context(
            ticket, channel, member.label, failed_recipient=failed_recipient, error=error, failed_subject=failed_subject
        )
        rendered = self.templates(channel).render("delivery_failed", context)
        return self._queue(
            session, now, kind=OutboxKind.FAILURE_NOTICE, ticket=ticket, channel=channel,
            to=(member.label, member.addresses[0]), rendered=rendered, from_name=channel.from_name or channel.name,
            reply_to=self.token_address(channel, ticket.id, member.addresses[0], TokenKind.NOTE),
            auto_submitted="auto-generated",
        )
