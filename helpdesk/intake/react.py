"""What a customer's mail sets off, in the same transaction: the acknowledgement of a new ticket
and notifications to the staff involved."""

from __future__ import annotations

from helpdesk.config import ChannelConfig
from helpdesk.intake.items import reply_of
from helpdesk.intake.steps import Action, Context, Plan
from helpdesk.mail.classify import is_noreply
from helpdesk.mail.compose import make_message_id
from helpdesk.outbound import outbox
from helpdesk.outbound.mailer import ItemView, Mailer, Thread
from helpdesk.store import queries
from helpdesk.store.models import Direction, ItemKind, Organisation, OutboxKind, Ticket, Visibility
from helpdesk.tickets import people

CUSTOMER_ACTIONS = frozenset({Action.NEW_TICKET, Action.NEW_LINKED, Action.FOLLOW_UP, Action.REOPEN})


def react(ctx: Context, plan: Plan) -> None:
    if ctx.mailer is None or plan.ticket_id is None or plan.action not in CUSTOMER_ACTIONS:
        return
    ticket = plan.ticket if plan.action in (Action.FOLLOW_UP, Action.REOPEN) else None
    ticket = ticket or ctx.session.get(Ticket, plan.ticket_id)
    assert ticket is not None
    channel = ctx.channel_of(ticket)
    new = plan.action in (Action.NEW_TICKET, Action.NEW_LINKED)
    if new:
        refusal = ack_refusal(ctx, plan, ticket, channel)
        if refusal is None:
            try:
                with ctx.session.begin_nested():
                    _acknowledge(ctx, ctx.mailer, plan, ticket, channel)
            except ValueError as exc:  # an address or header we cannot write: the ticket stands without
                refusal = f"cannot write the mail: {exc}"
        if refusal is not None:
            plan.notes.append(f"no acknowledgement: {refusal}")
    author = plan.staff.name if plan.staff else None
    members = people.to_notify(ctx.session, ctx.config, ticket, channel.name, exclude=author)
    if not members:
        return
    organisation = ctx.session.get(Organisation, ticket.organisation_id) if ticket.organisation_id else None
    view = ItemView(
        from_name=plan.sender_name, from_address=plan.sender, body_text=reply_of(plan).text, created_at=ctx.now,
        attachment_names=[a.filename or "(unnamed)" for a in plan.parsed.attachments],
    )
    for member in members:
        ctx.mailer.notify(
            ctx.session, ctx.now, ticket, channel, member, "notify_new" if new else "notify_reply",
            item=view, organisation=organisation.name if organisation else None, sla=plan.sla,
        )


def ack_refusal(ctx: Context, plan: Plan, ticket: Ticket, channel: ChannelConfig) -> str | None:
    """Why no acknowledgement goes out for this new ticket, or None when one may."""
    sender = plan.sender
    if not channel.acknowledge:
        return f"channel {channel.name} sends none"
    if plan.staff is not None or plan.suspicious is not None or ctx.config.staff_by_address(sender or "") is not None:
        return "the sender is a staff address"
    if not sender:
        return "no sender address"
    if sender in ctx.config.all_own_addresses():
        return f"{sender} is one of our own addresses"
    if is_noreply(sender):
        return f"{sender} is a robot's address"
    if queries.address_bouncing(ctx.session, sender):
        return f"mail to {sender} bounces"
    limits = ctx.config.acknowledgements
    for limit, scope in ((limits.per_ticket, {"ticket_id": ticket.id}), (limits.per_recipient, {"recipient": sender})):
        sent = outbox.count_recent(ctx.session, kind=OutboxKind.ACK, since=ctx.now - limit.window, **scope)
        if sent >= limit.count:
            what = f"ticket {ticket.number}" if "ticket_id" in scope else sender
            return f"rate limit: {sent} acknowledgements to {what} within {limit.window}"
    return None


def _acknowledge(ctx: Context, mailer: Mailer, plan: Plan, ticket: Ticket, channel: ChannelConfig) -> None:
    mail = plan.parsed
    message_id = make_message_id(ctx.config.message_id_domain, ctx.now)
    queued = mailer.acknowledge(
        ctx.session, ctx.now, ticket, channel, (plan.sender_name, plan.sender),
        Thread.answering(mail.message_id, mail.references), message_id, sla=plan.sla,
    )
    queries.insert_item(
        ctx.session,
        {
            "ticket_id": ticket.id,
            "direction": Direction.OUTBOUND.value,
            "kind": ItemKind.AUTO_REPLY.value,
            "visibility": Visibility.CUSTOMER.value,
            "message_id": queued.message_id,
            "in_reply_to": mail.message_id or None,
            "from_address": channel.address,
            "from_name": channel.from_name or channel.name,
            "to_addresses": plan.sender,
            "subject": queued.subject,
            "body_text": queued.text,
            "body_quoted": "",
            "author": None,
            "created_at": ctx.now,
        },
    )
