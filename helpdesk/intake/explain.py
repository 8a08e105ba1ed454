"""``helpdesk route test``: run the read-only steps on a mail and say what would happen."""

from __future__ import annotations

from sqlmodel import Session

from helpdesk.config import Config, resolve_secret
from helpdesk.intake.runner import utcnow
from helpdesk.intake.steps import Context, StepError, make_plan
from helpdesk.store import queries
from helpdesk.store.models import RawMessage


def explain(session: Session, config: Config, data: bytes, mailbox: str | None = None) -> list[str]:
    """Lines describing classification, contact, channel, rule and thread. Writes nothing."""
    now = utcnow()
    raw = RawMessage(
        id=-1, source=mailbox or "route-test", source_key="-", sha256=queries.sha256_hex(data),
        size=len(data), received_at=now,
    )
    mailbox_channel = next((c.name for c, m in config.mailboxes() if m.name == mailbox), None)
    try:
        secret = (resolve_secret(config.reply_secret) or "").encode() or None
    except KeyError:
        secret = None
    ctx = Context(
        session=session, config=config, now=now, channel_ids=queries.channel_ids(session),
        mailbox_channel=mailbox_channel, secret=secret,
    )
    try:
        plan = make_plan(raw, data, ctx)
    except StepError as exc:
        return [f"would quarantine: {exc}"]
    mail = plan.mail
    lines = [
        f"message-id:     {mail.message_id if mail else '-'}",
        f"subject:        {mail.subject if mail else '-'}",
        f"classification: {plan.classification.kind if plan.classification else '-'}"
        + (f" ({plan.classification.reason})" if plan.classification else ""),
        f"sender:         {plan.sender or '-'}"
        + (f" (contact #{plan.contact_id})" if plan.contact_id else " (new contact)" if plan.sender else ""),
        f"organisation:   {plan.organisation_id if plan.organisation_id is not None else '-'}",
        f"channel:        {plan.channel.name if plan.channel else '-'} ({plan.channel_reason or 'not routed'})",
        f"rule:           {plan.rule or '-'}",
        f"priority:       {plan.priority}  category: {plan.category or '-'}  type: {plan.type or '-'}",
        f"staff:          {plan.staff.name + ' (' + plan.trusted_by + ')' if plan.staff else '-'}",
        f"thread:         {plan.ticket.number if plan.ticket else '-'}"
        + (f" by {plan.thread_reason}" if plan.thread_reason else ""),
        f"outcome:        {plan.action} - {plan.reason}",
    ]
    lines.extend(f"note:           {note}" for note in plan.notes)
    return lines
