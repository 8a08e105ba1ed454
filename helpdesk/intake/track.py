"""After a mail changed a ticket: note the activity, wake a snoozed ticket, replan its deadlines."""

from __future__ import annotations

from typing import Any

from helpdesk.intake.steps import Action, Context, Plan
from helpdesk.store import queries
from helpdesk.store.models import Ticket
from helpdesk.tickets import deadlines

# Mail by a person (customer or staff) counts as activity on the ticket; robots' mail does not.
ACTIVITY = frozenset({Action.NEW_TICKET, Action.NEW_LINKED, Action.FOLLOW_UP, Action.REOPEN, Action.STAFF})
CUSTOMER = frozenset({Action.FOLLOW_UP, Action.REOPEN})


def track(ctx: Context, plan: Plan) -> None:
    if plan.ticket_id is None or plan.action not in ACTIVITY:
        return
    ticket = plan.ticket if plan.ticket is not None and plan.ticket.id == plan.ticket_id else None
    ticket = ticket or ctx.session.get(Ticket, plan.ticket_id)
    assert ticket is not None
    if plan.suspicious is None:
        values: dict[str, Any] = {"activity_at": ctx.now}
        if plan.action in CUSTOMER and ticket.snoozed_until is not None:
            queries.audit(
                ctx.session, ticket_id=ticket.id, action="snoozed_until_changed", actor=f"customer:{plan.sender}",
                now=ctx.now, field="snoozed_until", old=ticket.snoozed_until, new=None,
            )
            values["snoozed_until"] = None
        queries.update_row(ctx.session, ticket, **values)
    state = deadlines.refresh(ctx.session, ctx.config, ticket, ctx.now, ctx.channel_of(ticket).name)
    plan.sla = deadlines.views(state)
