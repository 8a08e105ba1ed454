"""Store an inbound mail as an item of a ticket, with its attachments."""

from __future__ import annotations

from helpdesk.intake.prepare import customer_text
from helpdesk.intake.steps import Context, Plan
from helpdesk.mail.parse import Address, Attachment
from helpdesk.mail.quotes import Reply
from helpdesk.store import queries
from helpdesk.store.models import Direction, ItemKind, Visibility

MAX_SUBJECT = 998


def addresses(found: tuple[Address, ...]) -> str | None:
    return ", ".join(a.email for a in found if a.email) or None


def reply_of(plan: Plan) -> Reply:
    """The mail's new text and the quoted rest."""
    return plan.prepared.reply if plan.prepared is not None else customer_text(plan.parsed)


def store_attachments(ctx: Context, item_id: int, parts: tuple[Attachment, ...] | list[Attachment]) -> None:
    queries.insert_attachments(
        ctx.session,
        [
            {
                "item_id": item_id,
                "blob_sha256": queries.store_blob(ctx.session, part.payload),
                "filename": part.filename,
                "content_type": part.content_type,
                "content_id": part.content_id,
                "disposition": part.disposition,
                "size": len(part.payload),
            }
            for part in parts
        ],
    )


def add_item(
    ctx: Context,
    plan: Plan,
    ticket_id: int,
    *,
    kind: ItemKind = ItemKind.MESSAGE,
    visibility: Visibility = Visibility.CUSTOMER,
    direction: Direction = Direction.INBOUND,
    body: str | None = None,
    author: str | None = None,
    message_id: str | None = None,
) -> int:
    """Insert the plan's mail as an item (``body`` replaces the reply text, e.g. without commands)."""
    mail = plan.parsed
    reply = reply_of(plan)
    item_id = queries.insert_item(
        ctx.session,
        {
            "ticket_id": ticket_id,
            "direction": direction.value,
            "kind": kind.value,
            "visibility": visibility.value,
            "message_id": message_id or mail.message_id,
            "in_reply_to": mail.in_reply_to[0] if mail.in_reply_to else None,
            "from_address": plan.sender or None,
            "from_name": plan.sender_name or None,
            "to_addresses": addresses(mail.to),
            "cc_addresses": addresses(mail.cc),
            "subject": mail.subject[:MAX_SUBJECT],
            "body_text": reply.text if body is None else body,
            "body_quoted": reply.quoted,
            "body_html": (mail.html or None) if body is None else None,  # a replaced text has no HTML twin
            "raw_message_id": plan.raw.id,
            "author": author,
            "created_at": ctx.now,
        },
    )
    store_attachments(ctx, item_id, mail.attachments)
    return item_id
