"""The read-only half of the pipeline: from raw bytes to a :class:`Plan` of what to do.

The steps run in the order of :data:`STEPS`; each looks at the plan so far and either adds to it or
settles it (returns True). Nothing here writes, so ``helpdesk route test`` runs exactly these steps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlmodel import Session

from helpdesk.config import ChannelConfig, Config, RuleConfig, StaffConfig, UnknownSenders
from helpdesk.intake.prepare import Prepared
from helpdesk.mail.authres import authenticated_domain
from helpdesk.mail.classify import Classification, Kind, classify
from helpdesk.mail.parse import ParsedMail, parse_message
from helpdesk.mail.threading import candidate_recipients, fingerprint, reference_chain, tagged_numbers
from helpdesk.mail.tokens import Token, TokenKind, find_token
from helpdesk.outbound import outbox
from helpdesk.outbound.mailer import Mailer
from helpdesk.service import rules
from helpdesk.store import queries
from helpdesk.store.models import RawMessage, Ticket
from helpdesk.tickets.clockview import ClockView

NO_SENDER = "the mail has no usable sender address (no From, Sender, Reply-To, Return-Path or envelope sender)"


class Action(StrEnum):
    NEW_TICKET = "new_ticket"
    FOLLOW_UP = "follow_up"
    REOPEN = "reopen"
    NEW_LINKED = "new_linked_ticket"
    STAFF = "staff"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    DUPLICATE = "duplicate"
    IGNORE = "ignore"
    QUARANTINE = "quarantine"


@dataclass
class Context:
    """What the steps may read: the session, configuration, clock value and source of the mail."""

    session: Session
    config: Config
    now: datetime
    channel_ids: dict[str, int]
    mailbox_channel: str | None = None
    secret: bytes | None = None  # signs and checks reply addresses; None: no token is trusted
    mailer: Mailer | None = None  # None: nothing is sent (route test)

    def channel_of(self, ticket: Ticket) -> ChannelConfig:
        """The configured channel a stored ticket belongs to (the default one if it was removed)."""
        for name, channel_id in self.channel_ids.items():
            if channel_id == ticket.channel_id:
                try:
                    return self.config.channel(name)
                except KeyError:
                    break
        return self.config.fallback_channel


@dataclass
class Plan:
    raw: RawMessage
    data: bytes
    prepared: Prepared | None = None
    mail: ParsedMail | None = None
    classification: Classification | None = None
    sender: str = ""
    sender_name: str = ""
    contact_id: int | None = None
    organisation_id: int | None = None
    channel: ChannelConfig | None = None
    channel_reason: str = ""
    rule: str | None = None
    priority: int = 3
    category: str | None = None
    type: str | None = None
    ticket: Ticket | None = None
    ticket_id: int | None = None
    ticket_number: str | None = None
    thread_reason: str | None = None
    action: Action | None = None
    reason: str = ""
    duplicate_of: int | None = None
    fingerprint: str | None = None
    token: Token | None = None
    staff: StaffConfig | None = None  # set only when the sender is staff and proved it
    trusted_by: str = ""
    suspicious: str | None = None  # a staff From header without proof
    notes: list[str] = field(default_factory=list)
    sla: list[ClockView] = field(default_factory=list)  # the ticket's clocks after the mail, for mails

    @property
    def as_note(self) -> bool:
        return self.token is not None and self.token.kind is TokenKind.NOTE

    def settle(self, action: Action, reason: str) -> bool:
        self.action = action
        self.reason = reason
        return True

    @property
    def parsed(self) -> ParsedMail:
        if self.mail is None:
            raise RuntimeError("mail not parsed yet")
        return self.mail


Step = Callable[[Plan, Context], bool]


def parse_step(plan: Plan, ctx: Context) -> bool:
    plan.mail = plan.prepared.mail if plan.prepared is not None else parse_message(plan.data)
    if plan.mail.defects:
        plan.notes.append("parse defects: " + "; ".join(plan.mail.defects[:5]))
    return False


def duplicate_step(plan: Plan, ctx: Context) -> bool:
    plan.fingerprint = plan.prepared.fingerprint if plan.prepared is not None else fingerprint(plan.parsed)
    earlier = queries.earlier_copy(ctx.session, plan.raw, plan.fingerprint)
    if earlier is None:
        return False
    plan.duplicate_of = earlier.id
    plan.ticket = ctx.session.get(Ticket, earlier.ticket_id) if earlier.ticket_id else None
    same = "same bytes" if earlier.sha256 == plan.raw.sha256 else f"another copy of <{plan.parsed.message_id}>"
    return plan.settle(Action.DUPLICATE, f"{same} as inbound message #{earlier.id} ({earlier.source})")


def classify_step(plan: Plan, ctx: Context) -> bool:
    mail = plan.parsed
    if plan.prepared is not None:
        plan.classification = result = plan.prepared.classification
    else:
        plan.classification = result = classify(mail, ctx.config.all_own_addresses())
    plan.sender, plan.sender_name, where = sender_of(mail, plan.raw.envelope_from)
    if plan.sender and where != "From":
        plan.notes.append(f"no usable From header; sender taken from {where}")
    if result.kind is Kind.OWN:
        return plan.settle(Action.IGNORE, f"loop protection: {result.reason}")
    return False


def sender_of(mail: ParsedMail, envelope_from: str | None) -> tuple[str, str, str]:
    """(address, display name, where it came from): From, else Sender, Reply-To, Return-Path, envelope."""
    for where, address in (("From", mail.from_), ("Sender", mail.sender)):
        if address is not None and "@" in address.email:
            return address.email.lower(), address.name, where
    for address in mail.reply_to:
        if "@" in address.email:
            return address.email.lower(), address.name, "Reply-To"
    for where, value in (("Return-Path", mail.header("return-path")), ("envelope sender", envelope_from)):
        candidate = (value or "").strip().strip("<>").strip()
        if "@" in candidate and " " not in candidate:
            return candidate.lower(), "", where
    return "", "", ""


def identify_step(plan: Plan, ctx: Context) -> bool:
    if not plan.sender:
        plan.notes.append(NO_SENDER)
        return False
    contact = queries.contact_ids_by_address(ctx.session, plan.sender)
    if contact is not None:
        plan.contact_id, plan.organisation_id = contact
        plan.notes.append(f"sender {plan.sender} is contact #{plan.contact_id}")
    else:
        org = queries.organisation_for_domain(ctx.session, plan.sender.rpartition("@")[2])
        plan.organisation_id = org.id if org else None
        plan.notes.append(
            f"sender {plan.sender} is not a contact yet"
            + (f"; domain belongs to organisation {org.name!r}" if org else "")
        )
    return False


RECIPIENT_HEADERS = ("delivered-to", "x-original-to", "envelope-to")


def recipient_addresses(mail: ParsedMail, envelope_to: str | None) -> list[str]:
    """Every address the mail was sent to: envelope, To, Cc and the delivery headers."""
    found = [a for a in (envelope_to or "").split(",") if a]
    found += [a.email for a in (*mail.to, *mail.cc) if a.email]
    for name in RECIPIENT_HEADERS:
        found += [v.strip().strip("<>") for v in mail.headers.get(name, ())]
    return found


def trust_step(plan: Plan, ctx: Context) -> bool:
    """Who is writing: a staff member who proved it (signed reply address or our receiving server's
    DKIM/SPF verdict), a customer answering through their reply address, or someone unproven."""
    if plan.classification is None or plan.classification.kind is not Kind.CUSTOMER or not plan.sender:
        return False
    mail = plan.parsed
    token = find_token(recipient_addresses(mail, plan.raw.envelope_to), plan.sender, ctx.secret) if ctx.secret else None
    ticket = ctx.session.get(Ticket, token.ticket_id) if token is not None else None
    if token is not None and ticket is not None:
        plan.token, plan.ticket = token, ticket
        plan.thread_reason = f"signed reply address {token.address}"
    member = ctx.config.staff_by_address(plan.sender)
    if member is None:
        return False
    if plan.token is not None:
        plan.staff, plan.trusted_by = member, f"signed reply address {plan.token.address}"
        return False
    trust = ctx.config.trust
    verdict = authenticated_domain(
        mail.headers.get("authentication-results", ()), plan.sender, trust.authserv_ids, trust.methods
    )
    if verdict is not None:
        plan.staff, plan.trusted_by = member, verdict
    else:
        plan.suspicious = (
            f"From claims staff member {member.name} ({plan.sender}), but the mail has no valid signed reply "
            f"address and no passing {'/'.join(trust.methods)} result from a trusted receiving server"
        )
        plan.notes.append(plan.suspicious)
    return False


def _channel_for_address(config: Config, address: str) -> ChannelConfig | None:
    for channel in config.channels:
        if address in channel.addresses:
            return channel
    return None


def _rule_matches(rule: RuleConfig, mail: ParsedMail, sender: str) -> bool:
    match = rule.match
    domain = sender.rpartition("@")[2]
    if match.sender_domain is not None and not any(
        domain == d or domain.endswith("." + d) for d in match.sender_domain
    ):
        return False
    if match.sender is not None and sender not in match.sender:
        return False
    if match.subject is not None and not re.search(match.subject, mail.subject, re.IGNORECASE):
        return False
    for name, pattern in (match.headers or {}).items():
        values = mail.headers.get(name.lower(), ())
        if not any(re.search(pattern, v, re.IGNORECASE) for v in values):
            return False
    return True


def route_step(plan: Plan, ctx: Context) -> bool:
    mail = plan.parsed
    envelope = [a for a in (plan.raw.envelope_to or "").split(",") if a]
    for address, where in candidate_recipients(mail, envelope):
        channel = _channel_for_address(ctx.config, address)
        if channel is not None:
            plan.channel, plan.channel_reason = channel, f"{where} {address}"
            break
    else:
        if ctx.mailbox_channel is not None:
            plan.channel = ctx.config.channel(ctx.mailbox_channel)
            plan.channel_reason = f"no recipient matched; mailbox belongs to channel {ctx.mailbox_channel}"
        else:
            plan.channel = ctx.config.fallback_channel
            plan.channel_reason = "no recipient matched; default channel"
    plan.priority = plan.channel.default_priority
    for rule in plan.channel.rules:
        if _rule_matches(rule, mail, plan.sender):
            plan.rule = rule.name
            if rule.set.channel is not None:
                plan.channel = ctx.config.channel(rule.set.channel)
                plan.channel_reason += f"; rule {rule.name!r} moved it to {rule.set.channel}"
            plan.priority = rule.set.priority or plan.priority
            plan.category = rule.set.category or plan.category
            plan.type = rule.set.type or plan.type
            break
    return False


def _find_thread(plan: Plan, ctx: Context) -> tuple[Ticket, str] | None:
    mail = plan.parsed
    prefixes = [c.prefix for c in ctx.config.channels]
    for number in tagged_numbers(mail.subject, prefixes):
        ticket = queries.ticket_by_number(ctx.session, number)
        if ticket is not None:
            return ticket, f"subject tag [{number}]"
    chain = reference_chain(mail)
    found = queries.ticket_by_message_ids(ctx.session, chain)
    if found is None:
        sent = outbox.ticket_of_message_ids(ctx.session, chain)
        ticket = ctx.session.get(Ticket, sent[0]) if sent is not None else None
        found = (ticket, sent[1]) if ticket is not None and sent is not None else None
    if found is not None:
        ticket, mid = found
        header = "In-Reply-To" if mid in mail.in_reply_to else "References"
        return ticket, f"{header} <{mid}>"
    return None


def _belongs_to(ctx: Context, plan: Plan, ticket: Ticket) -> bool:
    """Whether the sender is part of the ticket: its contact, the same organisation, staff who proved
    it, or someone who wrote to it or was written to from it before."""
    if plan.staff is not None:
        return True
    if plan.contact_id is not None and plan.contact_id == ticket.contact_id:
        return True
    if plan.organisation_id is not None and plan.organisation_id == ticket.organisation_id:
        return True
    assert ticket.id is not None
    return queries.has_written_to(ctx.session, ticket.id, plan.sender) or outbox.was_sent_to(
        ctx.session, ticket.id, plan.sender
    )


def thread_step(plan: Plan, ctx: Context) -> bool:
    if plan.ticket is not None:  # found through a signed reply address
        return False
    kind = plan.classification.kind if plan.classification else Kind.CUSTOMER
    if kind is Kind.BOUNCE and plan.classification and plan.classification.bounce:
        original = (plan.classification.bounce.original_message_id or "").strip().strip("<>")
        found = queries.ticket_by_message_ids(ctx.session, [original]) if original else None
        if found is not None:
            plan.ticket, plan.thread_reason = found[0], f"bounced mail <{original}>"
            return False
    found_thread = _find_thread(plan, ctx)
    if found_thread is not None:
        plan.ticket, plan.thread_reason = found_thread
    return False


def _reopen_reference(ticket: Ticket) -> datetime:
    return ticket.closed_at or ticket.solved_at or ticket.updated_at


def decide_step(plan: Plan, ctx: Context) -> bool:
    classification = plan.classification
    assert classification is not None and plan.channel is not None
    where = f" (ticket {plan.ticket.number})" if plan.ticket else ""
    if classification.kind is Kind.BOUNCE:
        return plan.settle(Action.BOUNCE, classification.reason + where)
    if classification.kind is Kind.AUTO_REPLY:
        return plan.settle(Action.AUTO_REPLY, classification.reason + where)
    if plan.contact_id is None and plan.channel.unknown_senders is UnknownSenders.QUARANTINE:
        who = f"unknown sender {plan.sender}" if plan.sender else NO_SENDER
        return plan.settle(
            Action.QUARANTINE, f"{who}: channel {plan.channel.name} accepts mail from known contacts only"
        )
    ticket = plan.ticket
    if plan.staff is not None and ticket is not None:
        return plan.settle(Action.STAFF, f"staff member {plan.staff.name} on {ticket.number} ({plan.trusted_by})")
    if ticket is None:
        return plan.settle(Action.NEW_TICKET, f"new enquiry in channel {plan.channel.name}")
    if (plan.thread_reason or "").startswith("subject tag") and not _belongs_to(ctx, plan, ticket):
        return plan.settle(
            Action.NEW_LINKED,
            f"subject tag of {ticket.number} from {plan.sender or 'an unknown sender'}, who is not part of "
            "that ticket: new ticket linked to it for review",
        )
    if not rules(ctx.config).statuses.is_done(ticket.status):
        return plan.settle(Action.FOLLOW_UP, f"follow-up to {ticket.number} by {plan.thread_reason}")
    window = ctx.channel_of(ticket).reopen_window
    since = ctx.now - _reopen_reference(ticket)
    if since <= window:
        return plan.settle(
            Action.REOPEN, f"reply to {ticket.status} ticket {ticket.number} within the reopen window"
        )
    return plan.settle(
        Action.NEW_LINKED,
        f"reply to {ticket.status} ticket {ticket.number} after the reopen window: new ticket linked to it",
    )


STEPS: tuple[tuple[str, Step], ...] = (
    ("parse", parse_step),
    ("duplicate", duplicate_step),
    ("classify", classify_step),
    ("identify", identify_step),
    ("trust", trust_step),
    ("route", route_step),
    ("thread", thread_step),
    ("decide", decide_step),
)


class StepError(Exception):
    """A step failed; carries the step's name so the quarantine reason says where."""

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"{step} failed: {type(cause).__name__}: {cause}")


def make_plan(raw: RawMessage, data: bytes, ctx: Context, prepared: Prepared | None = None) -> Plan:
    """Run the steps until one settles the plan (``prepared``: parse and classification done already)."""
    plan = Plan(raw=raw, data=data, prepared=prepared)
    for name, step in STEPS:
        try:
            if step(plan, ctx):
                break
        except Exception as exc:
            raise StepError(name, exc) from exc
    return plan
