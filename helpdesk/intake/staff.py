"""Mail from a staff member who proved who they are: commands first, then a reply or a note.

Commands are all checked before any runs: one unknown or forbidden command and nothing happens;
the sender gets a short mail saying why, and the mail is kept on the ticket as an internal record.
A reply without ``#note`` is relayed to the customer; a note stays internal and notifies the team
and anyone it @mentions.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import insert

from helpdesk.config import StaffConfig, StaffRole
from helpdesk.core.commands import Command, StaffMail, parse_priority, parse_snooze, parse_staff_mail, parse_work_time
from helpdesk.core.workflow import TransitionRefused
from helpdesk.intake.items import add_item, reply_of
from helpdesk.intake.steps import Context, Plan
from helpdesk.mail.compose import OutgoingAttachment, make_message_id, reply_subject
from helpdesk.outbound.mailer import ItemView, Thread
from helpdesk.service import rules
from helpdesk.store import queries
from helpdesk.store.models import Direction, ItemKind, Ticket, TimeEntry, Visibility
from helpdesk.tickets import actions, people

Change = Callable[[], object]
NOBODY = frozenset({"none", "nobody", "-"})
_INSERT_TIME = insert(queries.table_of(TimeEntry))


class Refused(Exception):
    """A command that cannot run; the message says why."""


def _staff_value(ctx: Context, member: StaffConfig, command: Command, channel: str) -> str | None:
    name = command.args.strip().lstrip("@").lower()
    if name in NOBODY:
        return None
    target = ctx.config.staff_member(name)
    if target is None:
        known = ", ".join(s.name for s in ctx.config.staff)
        raise Refused(f"#{command.name} {command.args}: no staff member of that name (known: {known})")
    if not target.works_in(channel):
        raise Refused(f"#{command.name} {command.args}: {target.name} does not work in channel {channel}")
    return target.name


def _plan_command(
    ctx: Context, member: StaffConfig, ticket: Ticket, command: Command, channel: str, projected: dict[str, str]
) -> Change:
    """Check one command and return what running it does; raise :class:`Refused` when it may not run.

    ``projected`` holds the status the commands before this one will have set, so ``#status open``
    followed by ``#status development`` is checked as two steps of the workflow."""
    session, now, actor = ctx.session, ctx.now, f"staff:{member.name}"
    match command.name:
        case "status" | "close":
            status = "closed" if command.name == "close" else command.args.strip().lower()
            service = rules(ctx.config)
            try:
                service.statuses.check(service.workflow(channel), projected["status"], status)
            except TransitionRefused as exc:
                raise Refused(f"#{command.name} {command.args}: {exc}".replace(" :", ":")) from None
            projected["status"] = status
            return lambda: actions.set_status(session, ticket, status, actor, now)
        case "snooze":
            try:
                until = parse_snooze(command.args, now, rules(ctx.config).calendar(channel).timezone)
            except ValueError as exc:
                raise Refused(f"#snooze {command.args}: {exc}") from None
            return lambda: actions.set_field(session, ticket, "snoozed_until", until, actor, now)
        case "owner" | "assignee":
            value = _staff_value(ctx, member, command, channel)
            lead = member.role is not StaffRole.AGENT
            if command.name == "owner" and not lead and value not in (member.name, None):
                raise Refused(f"#owner {command.args}: only leads and admins may give a ticket to someone else")
            if command.name == "owner" and not lead and value is None and ticket.owner not in (member.name, None):
                raise Refused("#owner none: only the owner, a lead or an admin may release the ticket")

            def assign() -> None:
                assert ticket.id is not None
                actions.set_field(session, ticket, command.name, value, actor, now)
                if value is not None:
                    people.add_watcher(session, ticket.id, value, command.name, now)

            return assign
        case "priority":
            try:
                priority = parse_priority(command.args)
            except ValueError as exc:
                raise Refused(f"#priority {command.args}: {exc}") from None
            return lambda: actions.set_field(session, ticket, "priority", priority, actor, now)
        case "time":
            try:
                minutes, description = parse_work_time(command.args)
            except ValueError as exc:
                raise Refused(f"#time {command.args}: {exc}") from None
            return lambda: _record_time(ctx, ticket, member, minutes, description)
        case "watch":
            return lambda: people.add_watcher(session, _id(ticket), member.name, "asked", now)
        case "unwatch":
            return lambda: people.remove_watcher(session, _id(ticket), member.name)
    raise Refused(f"#{command.name}: not a command")


def _id(ticket: Ticket) -> int:
    assert ticket.id is not None
    return ticket.id


def _record_time(ctx: Context, ticket: Ticket, member: StaffConfig, minutes: int, description: str) -> None:
    ctx.session.connection().execute(
        _INSERT_TIME,
        {"ticket_id": ticket.id, "staff": member.name, "minutes": minutes, "description": description,
         "created_at": ctx.now},
    )
    queries.audit(
        ctx.session, ticket_id=ticket.id, action="time_recorded", actor=f"staff:{member.name}", now=ctx.now,
        field="time", new=f"{minutes} min" + (f" {description}" if description else ""),
    )


def _refuse(ctx: Context, plan: Plan, ticket: Ticket, member: StaffConfig, errors: list[str]) -> None:
    ticket_id = _id(ticket)
    add_item(
        ctx, plan, ticket_id, kind=ItemKind.NOTE, visibility=Visibility.INTERNAL, direction=Direction.INTERNAL,
        author=member.name,
    )
    queries.audit(
        ctx.session, ticket_id=ticket_id, action="commands_refused", actor=f"staff:{member.name}", now=ctx.now,
        new="; ".join(errors),
    )
    plan.notes.append("nothing executed: " + "; ".join(errors))
    _tell_author(ctx, plan, ticket, member, errors)


def _tell_author(ctx: Context, plan: Plan, ticket: Ticket, member: StaffConfig, errors: list[str]) -> None:
    """Answer the staff member's mail with what went wrong."""
    if ctx.mailer is None:
        return
    mail = plan.parsed
    ctx.mailer.command_error(
        ctx.session, ctx.now, ticket, ctx.channel_of(ticket), (member.label, plan.sender), errors, mail.subject,
        Thread.answering(mail.message_id, mail.references),
    )


def handle_staff_mail(ctx: Context, plan: Plan, ticket: Ticket) -> None:
    member = plan.staff
    assert member is not None
    channel = ctx.channel_of(ticket).name
    staff_mail = parse_staff_mail(reply_of(plan).text)
    errors = list(staff_mail.errors)
    changes: list[Change] = []
    projected = {"status": ticket.status}
    if not member.works_in(channel):
        errors.append(f"{member.name} does not work in channel {channel}")
    for command in staff_mail.commands if not errors else ():
        try:
            changes.append(_plan_command(ctx, member, ticket, command, channel, projected))
        except Refused as exc:
            errors.append(str(exc))
    if errors:
        _refuse(ctx, plan, ticket, member, errors)
        return
    for change in changes:
        change()
    for command in staff_mail.commands:
        queries.audit(
            ctx.session, ticket_id=ticket.id, action="command", actor=f"staff:{member.name}", now=ctx.now,
            new=command.line.strip(),
        )
    _after_commands(ctx, plan, ticket, member, staff_mail)


def _after_commands(ctx: Context, plan: Plan, ticket: Ticket, member: StaffConfig, staff_mail: StaffMail) -> None:
    ticket_id, actor = _id(ticket), f"staff:{member.name}"
    queries.update_row(ctx.session, ticket, updated_at=ctx.now)
    people.add_watcher(ctx.session, ticket_id, member.name, "took part", ctx.now)
    gave_owner = any(c.name == "owner" for c in staff_mail.commands)
    if ticket.owner is None and not gave_owner:
        actions.set_field(ctx.session, ticket, "owner", member.name, actor, ctx.now)
    body = staff_mail.text.strip()
    if not body:
        if not staff_mail.commands:
            plan.notes.append("staff mail without text or commands: nothing to do")
        return
    if staff_mail.note or plan.as_note:
        _note(ctx, plan, ticket, member, body, staff_mail.mentions)
    else:
        _reply(ctx, plan, ticket, member, body)
        if ticket.status == "new":
            actions.set_status(ctx.session, ticket, "open", actor, ctx.now)


def _view(plan: Plan, member: StaffConfig, body: str) -> ItemView:
    return ItemView(
        from_name=member.label, from_address=plan.sender, body_text=body, created_at=plan.raw.received_at,
        attachment_names=[a.filename or "(unnamed)" for a in plan.parsed.attachments],
    )


def _note(
    ctx: Context, plan: Plan, ticket: Ticket, member: StaffConfig, body: str, mentions: tuple[str, ...]
) -> None:
    ticket_id = _id(ticket)
    add_item(
        ctx, plan, ticket_id, kind=ItemKind.NOTE, visibility=Visibility.INTERNAL, direction=Direction.INTERNAL,
        body=body, author=member.name,
    )
    mentioned = []
    for name in mentions:
        target = ctx.config.staff_member(name)
        if target is None:
            plan.notes.append(f"@{name}: no staff member of that name")
            continue
        mentioned.append(target.name)
        people.add_watcher(ctx.session, ticket_id, target.name, f"mentioned by {member.name}", ctx.now)
        queries.audit(
            ctx.session, ticket_id=ticket_id, action="mentioned", actor=f"staff:{member.name}", now=ctx.now,
            field="staff", new=target.name,
        )
    _notify_team(ctx, plan, ticket, member, body, internal=True, mentioned=mentioned)


def _notify_team(
    ctx: Context, plan: Plan, ticket: Ticket, member: StaffConfig, body: str, internal: bool, mentioned: list[str]
) -> None:
    if ctx.mailer is None:
        return
    channel = ctx.channel_of(ticket)
    for target in people.to_notify(ctx.session, ctx.config, ticket, channel.name, exclude=member.name):
        ctx.mailer.notify(
            ctx.session, ctx.now, ticket, channel, target, "notify_item", item=_view(plan, member, body),
            author=member.label, internal=internal, mentioned=target.name in mentioned,
        )


def _reply(ctx: Context, plan: Plan, ticket: Ticket, member: StaffConfig, body: str) -> None:
    """Store the answer as an outbound item and relay it to the customer from the channel address."""
    ticket_id = _id(ticket)
    thread = queries.customer_thread(ctx.session, ticket_id)
    to = thread.last_from
    if to is None and ticket.contact_id is not None:
        to = queries.contact_address(ctx.session, ticket.contact_id)
    message_id = make_message_id(ctx.config.message_id_domain, ctx.now)
    item_id = add_item(
        ctx, plan, ticket_id, kind=ItemKind.MESSAGE, visibility=Visibility.CUSTOMER, direction=Direction.OUTBOUND,
        body=body, author=member.name, message_id=message_id,
    )
    problem = "the ticket has no customer address" if to is None else None
    if to is not None and ctx.mailer is not None:
        try:
            with ctx.session.begin_nested():
                _relay(ctx, plan, ticket, member, body, to, thread, item_id, message_id)
        except ValueError as exc:
            problem = f"the mail to {to[1]} cannot be written: {exc}"
    if problem is not None:
        plan.notes.append(f"{problem}: the reply is stored but not sent")
        queries.audit(
            ctx.session, ticket_id=ticket_id, action="reply_not_sent", actor="system:mail", now=ctx.now, new=problem
        )
        _tell_author(ctx, plan, ticket, member, [f"your reply was stored on the ticket but not sent: {problem}"])
    _notify_team(ctx, plan, ticket, member, body, internal=False, mentioned=[])


def _relay(
    ctx: Context,
    plan: Plan,
    ticket: Ticket,
    member: StaffConfig,
    body: str,
    to: tuple[str, str],
    thread: queries.ThreadInfo,
    item_id: int,
    message_id: str,
) -> None:
    assert ctx.mailer is not None
    attachments = [
        OutgoingAttachment(
            filename=a.filename, content_type=a.content_type, data=a.payload, content_id=a.content_id,
            inline=a.disposition == "inline",
        )
        for a in plan.parsed.attachments
    ]
    ctx.mailer.relay(
        ctx.session, ctx.now, ticket, ctx.channel_of(ticket), to, member, body,
        reply_subject(ticket.subject, f"[{ticket.number}]"),
        Thread(thread.last_message_id, tuple(thread.message_ids)), attachments, item_id, message_id,
    )
