"""The writing half of the pipeline: carry out a :class:`Plan` inside the caller's transaction."""

from __future__ import annotations

from helpdesk.core.sla import Responsibility
from helpdesk.intake.items import MAX_SUBJECT, add_item
from helpdesk.intake.staff import handle_staff_mail
from helpdesk.intake.steps import Action, Context, Plan
from helpdesk.service import rules
from helpdesk.store import queries
from helpdesk.store.models import ItemKind, Outcome, RawState, Ticket, Visibility
from helpdesk.tickets import actions, people

SYSTEM_ACTOR = "system:intake"

_OUTCOMES = {
    Action.NEW_TICKET: Outcome.TICKET,
    Action.NEW_LINKED: Outcome.TICKET,
    Action.FOLLOW_UP: Outcome.FOLLOW_UP,
    Action.REOPEN: Outcome.FOLLOW_UP,
    Action.STAFF: Outcome.STAFF,
    Action.AUTO_REPLY: Outcome.AUTO_REPLY,
    Action.BOUNCE: Outcome.BOUNCE,
    Action.DUPLICATE: Outcome.DUPLICATE,
    Action.IGNORE: Outcome.IGNORED,
    Action.QUARANTINE: Outcome.QUARANTINED,
}


def _ensure_contact(ctx: Context, plan: Plan) -> None:
    """Create the sender as a contact; a mail without any sender address keeps a ticket without one."""
    if plan.contact_id is not None or not plan.sender:
        return
    contact = queries.create_contact(
        ctx.session, plan.sender_name, [plan.sender], plan.organisation_id, ctx.now
    )
    plan.contact_id = contact.id
    queries.audit(
        ctx.session, ticket_id=None, action="contact_created", actor=SYSTEM_ACTOR, now=ctx.now,
        field="contact", new=f"#{contact.id} {plan.sender}",
    )


def _open_ticket(ctx: Context, plan: Plan) -> tuple[int, str]:
    assert plan.channel is not None
    if plan.staff is None:
        _ensure_contact(ctx, plan)
    channel_id = ctx.channel_ids[plan.channel.name]
    number = f"{plan.channel.prefix}-{queries.next_ticket_number(ctx.session, channel_id)}"
    linked = plan.ticket if plan.action is Action.NEW_LINKED else None
    ticket_id = queries.insert_ticket(
        ctx.session,
        {
            "number": number,
            "channel_id": channel_id,
            "subject": plan.parsed.subject[:MAX_SUBJECT],
            "status": "new",
            "priority": plan.priority,
            "category": plan.category,
            "type": plan.type,
            "contact_id": plan.contact_id,
            "organisation_id": plan.organisation_id,
            "linked_ticket_id": linked.id if linked else None,
            "creator": plan.staff.name if plan.staff else None,
            "created_at": ctx.now,
            "updated_at": ctx.now,
            "activity_at": ctx.now,
        },
    )
    creator = f"staff:{plan.staff.name}" if plan.staff else f"customer:{plan.sender}"
    queries.audit(
        ctx.session, ticket_id=ticket_id, action="created", actor=creator, now=ctx.now, field="status", new="new"
    )
    if plan.staff is not None:
        people.add_watcher(ctx.session, ticket_id, plan.staff.name, "creator", ctx.now)
    if plan.rule:
        queries.audit(
            ctx.session, ticket_id=ticket_id, action="routed", actor=SYSTEM_ACTOR, now=ctx.now,
            field="rule", new=plan.rule,
        )
    if linked is not None:
        queries.audit(
            ctx.session, ticket_id=ticket_id, action="linked", actor=SYSTEM_ACTOR, now=ctx.now,
            field="linked_ticket", new=linked.number,
        )
    return ticket_id, number


def _customer_item(ctx: Context, plan: Plan, ticket_id: int) -> int:
    """The customer's mail on the ticket; a mail whose staff From is unproven is kept internal and flagged."""
    if plan.suspicious is None:
        return add_item(ctx, plan, ticket_id)
    queries.audit(
        ctx.session, ticket_id=ticket_id, action="suspicious_sender", actor=SYSTEM_ACTOR, now=ctx.now,
        field="from", new=plan.suspicious,
    )
    return add_item(ctx, plan, ticket_id, visibility=Visibility.INTERNAL)


def _touch(ctx: Context, ticket: Ticket) -> int:
    """A new item on an existing ticket: it was updated now."""
    assert ticket.id is not None
    queries.update_row(ctx.session, ticket, updated_at=ctx.now)
    return ticket.id


def _bounce(ctx: Context, plan: Plan) -> None:
    assert plan.classification is not None and plan.classification.bounce is not None
    bounce = plan.classification.bounce
    for address in bounce.recipients:
        if queries.flag_bouncing(ctx.session, address, bounce.diagnostic, bounce.permanent, ctx.now):
            plan.notes.append(f"flagged contact address {address} as bouncing")
    if plan.ticket is not None:
        add_item(ctx, plan, _touch(ctx, plan.ticket), kind=ItemKind.BOUNCE, visibility=Visibility.INTERNAL)
        queries.audit(
            ctx.session, ticket_id=plan.ticket.id, action="bounce", actor=SYSTEM_ACTOR, now=ctx.now,
            field="recipient", new=", ".join(bounce.recipients) or None,
        )


def apply_plan(ctx: Context, plan: Plan) -> Outcome:
    """Write what the plan says; mark the raw message processed (or quarantined).

    Afterwards ``plan.ticket_id`` and ``plan.ticket_number`` name the ticket the mail ended in."""
    assert plan.action is not None
    ticket = plan.ticket
    actor = f"customer:{plan.sender}"
    ticket_id, number = (ticket.id, ticket.number) if ticket is not None else (None, None)
    match plan.action:
        case Action.NEW_TICKET | Action.NEW_LINKED:
            ticket_id, number = _open_ticket(ctx, plan)
            _customer_item(ctx, plan, ticket_id)
        case Action.FOLLOW_UP:
            assert ticket is not None
            _customer_item(ctx, plan, _touch(ctx, ticket))
            waiting = rules(ctx.config).statuses.responsibility(ticket.status) is Responsibility.CUSTOMER
            if waiting and plan.suspicious is None:
                actions.set_status(ctx.session, ticket, "open", actor, ctx.now)
        case Action.REOPEN:
            assert ticket is not None
            _customer_item(ctx, plan, _touch(ctx, ticket))
            if plan.suspicious is None:
                actions.set_status(ctx.session, ticket, "open", actor, ctx.now)
        case Action.STAFF:
            assert ticket is not None
            handle_staff_mail(ctx, plan, ticket)
        case Action.AUTO_REPLY:
            if ticket is not None:
                add_item(ctx, plan, _touch(ctx, ticket), kind=ItemKind.AUTO_REPLY, visibility=Visibility.INTERNAL)
        case Action.BOUNCE:
            _bounce(ctx, plan)
        case Action.DUPLICATE | Action.IGNORE | Action.QUARANTINE:
            pass
    plan.ticket_id, plan.ticket_number = ticket_id, number
    outcome = _OUTCOMES[plan.action]
    quarantined = plan.action is Action.QUARANTINE
    queries.update_row(
        ctx.session,
        plan.raw,
        message_id=plan.mail.message_id if plan.mail else None,
        fingerprint=plan.fingerprint,
        outcome=outcome.value,
        ticket_id=ticket_id,
        duplicate_of=plan.duplicate_of,
        processed_at=ctx.now,
        detail="; ".join([plan.reason, *plan.notes])[:4000],
        state=(RawState.QUARANTINED if quarantined else RawState.PROCESSED).value,
        error=plan.reason if quarantined else None,
    )
    return outcome
