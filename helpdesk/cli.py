"""The ``helpdesk`` command."""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk import config as config_mod
from helpdesk.config import Config, ConfigError
from helpdesk.intake.runner import utcnow
from helpdesk.outbound.mailer import SecretMissing
from helpdesk.store import queries
from helpdesk.store.db import make_engine, transaction
from helpdesk.store.migrate import upgrade
from helpdesk.store.models import Item, Outbox, RawMessage, RawState, Ticket

DEFAULT_CONFIG = "channels.yaml"


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("HELPDESK_CONFIG") or DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> Config:
    return config_mod.load(_config_path(args))


def _engine(args: argparse.Namespace) -> tuple[Config, Engine]:
    cfg = _load(args)
    engine = make_engine(cfg.database_url)
    upgrade(engine)
    return cfg, engine


def _print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


# --- commands ------------------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.path) if args.path else _config_path(args)
    try:
        cfg = config_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    missing = config_mod.missing_secrets(cfg)
    for problem in missing:
        print(f"{path}: {problem}", file=sys.stderr)
    if missing:
        return 1
    boxes = len(cfg.mailboxes())
    print(f"{path}: OK ({len(cfg.channels)} channel(s), {boxes} mailbox(es))")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    cfg = _load(args)
    upgrade(make_engine(cfg.database_url))
    print("database schema is up to date")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from helpdesk.daemon import Daemon

    cfg = _load(args)
    daemon = Daemon(cfg)
    if args.once:
        summary = daemon.run_once()
        fetched = sum(r.fetched for r in summary.reports)
        print(f"imported {fetched} message(s) from {len(summary.reports)} mailbox(es)")
        sent = summary.sent
        fired = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.swept.fired.items())) or "nothing due"
        print(f"scheduler: {fired}")
        print(f"outbox: {sent.sent} sent, {sent.deferred} deferred, {sent.failed} failed")
        for name, error in summary.errors.items():
            print(f"mailbox {name}: {error}", file=sys.stderr)
        daemon.close()
        return 1 if summary.errors else 0
    daemon.run_forever(lambda: _load(args))
    return 0


def _raw_summary(session: Session, raw: RawMessage) -> dict[str, Any]:
    ticket = session.get(Ticket, raw.ticket_id) if raw.ticket_id else None
    return {
        "id": raw.id,
        "message_id": raw.message_id,
        "source": raw.source,
        "source_key": raw.source_key,
        "received_at": raw.received_at.isoformat(),
        "size": raw.size,
        "state": raw.state,
        "outcome": raw.outcome,
        "ticket": ticket.number if ticket else None,
        "duplicate_of": raw.duplicate_of,
        "detail": raw.detail,
        "error": raw.error,
    }


def cmd_messages_export(args: argparse.Namespace) -> int:
    _cfg, engine = _engine(args)
    with Session(engine) as session:
        rows = session.exec(select(RawMessage).order_by(col(RawMessage.id))).all()
        _print_json([_raw_summary(session, raw) for raw in rows])
    return 0


def cmd_tickets_export(args: argparse.Namespace) -> int:
    _cfg, engine = _engine(args)
    with Session(engine) as session:
        tickets = session.exec(select(Ticket).order_by(col(Ticket.id))).all()
        items_by_ticket: dict[int, list[Item]] = {}
        for item in session.exec(select(Item).order_by(col(Item.id))).all():
            items_by_ticket.setdefault(item.ticket_id, []).append(item)
        linked = {t.id: t.number for t in tickets}
        out = []
        for ticket in tickets:
            assert ticket.id is not None
            out.append(
                {
                    "number": ticket.number,
                    "subject": ticket.subject,
                    "status": ticket.status,
                    "priority": ticket.priority,
                    "category": ticket.category,
                    "type": ticket.type,
                    "contact_id": ticket.contact_id,
                    "organisation_id": ticket.organisation_id,
                    "linked_ticket": linked.get(ticket.linked_ticket_id) if ticket.linked_ticket_id else None,
                    "created_at": ticket.created_at.isoformat(),
                    "items": [
                        {
                            "message_id": item.message_id,
                            "direction": item.direction,
                            "kind": item.kind,
                            "visibility": item.visibility,
                            "from": item.from_address,
                            "created_at": item.created_at.isoformat(),
                        }
                        for item in items_by_ticket.get(ticket.id, [])
                    ],
                }
            )
        _print_json(out)
    return 0


def _ticket(session: Session, number: str) -> Ticket | None:
    ticket = queries.ticket_by_number(session, number.strip().strip("[]").upper())
    if ticket is None:
        print(f"no ticket {number}", file=sys.stderr)
    return ticket


def _actor(args: argparse.Namespace) -> str:
    return f"staff:{args.by}" if args.by else f"cli:{getpass.getuser()}"


def cmd_tickets_show(args: argparse.Namespace) -> int:
    from helpdesk.tickets.report import describe, describe_json

    cfg, engine = _engine(args)
    with Session(engine) as session:
        ticket = _ticket(session, args.number)
        if ticket is None:
            return 1
        if args.format == "json":
            _print_json(describe_json(session, cfg, ticket, utcnow()))
        else:
            print("\n".join(describe(session, cfg, ticket, utcnow())))
    return 0


def cmd_tickets_status(args: argparse.Namespace) -> int:
    from helpdesk.core.workflow import TransitionRefused
    from helpdesk.tickets.actions import change_status

    cfg, engine = _engine(args)
    with transaction(engine) as session:
        ticket = _ticket(session, args.number)
        if ticket is None:
            return 1
        old = ticket.status
        try:
            changed = change_status(session, cfg, ticket, args.status.strip().lower(), _actor(args), utcnow())
        except TransitionRefused as exc:
            print(f"{ticket.number}: {exc}", file=sys.stderr)
            return 1
    print(f"{ticket.number}: {old} -> {ticket.status}" if changed else f"{ticket.number}: already {old}")
    return 0


def cmd_tickets_snooze(args: argparse.Namespace) -> int:
    from helpdesk.core.commands import parse_snooze
    from helpdesk.service import rules
    from helpdesk.tickets import deadlines
    from helpdesk.tickets.actions import snooze

    cfg, engine = _engine(args)
    now = utcnow()
    with transaction(engine) as session:
        ticket = _ticket(session, args.number)
        if ticket is None:
            return 1
        timezone = rules(cfg).calendar(deadlines.channel_name(session, ticket)).timezone
        try:
            until = parse_snooze(args.until, now, timezone)
        except ValueError as exc:
            print(f"{ticket.number}: snooze {args.until}: {exc}", file=sys.stderr)
            return 1
        snooze(session, cfg, ticket, until, _actor(args), now)
    print(f"{ticket.number}: snoozed until {until.isoformat()}" if until else f"{ticket.number}: awake")
    return 0


def cmd_tickets_replan(args: argparse.Namespace) -> int:
    """After SLA policies, calendars or escalation rules changed: recompute the deadlines of every
    ticket that is not done (batch by batch, each in its own transaction)."""
    from helpdesk.service import rules
    from helpdesk.tickets import deadlines

    cfg, engine = _engine(args)
    done = [name for name, status in rules(cfg).statuses.statuses.items() if rules(cfg).statuses.is_done(name)]
    last_id, count = 0, 0
    while True:
        with transaction(engine) as session:
            batch = session.exec(
                select(Ticket).where(col(Ticket.id) > last_id, col(Ticket.status).not_in(done))
                .order_by(col(Ticket.id)).limit(500)
            ).all()
            now = utcnow()
            for ticket in batch:
                deadlines.refresh(session, cfg, ticket, now)
        if not batch:
            break
        last_id = batch[-1].id or last_id
        count += len(batch)
    print(f"deadlines recomputed for {count} ticket(s)")
    return 0


def cmd_quarantine(args: argparse.Namespace) -> int:
    cfg, engine = _engine(args)
    action = args.action
    if action == "list":
        with Session(engine) as session:
            stmt = select(RawMessage).where(RawMessage.state == RawState.QUARANTINED).order_by(col(RawMessage.id))
            rows = session.exec(stmt).all()
            for row in rows:
                print(f"{row.id}\t{row.received_at:%Y-%m-%d %H:%M}\t{row.source}\t{row.message_id or '-'}\t{row.error}")
            print(f"{len(rows)} message(s) in quarantine", file=sys.stderr)
        return 0
    if action == "retry-all":
        from helpdesk.intake.runner import Intake

        intake = Intake(engine, cfg)
        with Session(engine) as session:
            ids = session.exec(select(RawMessage.id).where(RawMessage.state == RawState.QUARANTINED)).all()
        still = 0
        for raw_id in ids:
            if raw_id is not None:
                still += intake.retry(raw_id).state == RawState.QUARANTINED
        print(f"retried {len(ids)} message(s); {still} still in quarantine")
        return 0
    if args.id is None:
        print(f"quarantine {action}: give a message id (see 'helpdesk quarantine list')", file=sys.stderr)
        return 2
    with Session(engine) as session:
        raw = session.get(RawMessage, args.id)
        if raw is None or raw.state != RawState.QUARANTINED:
            print(f"message {args.id} is not in quarantine", file=sys.stderr)
            return 1
        if action == "show":
            _print_json(_raw_summary(session, raw))
            return 0
        data = queries.raw_bytes(session, args.id)
    if action == "export":
        target = Path(args.output or f"quarantine-{args.id}.eml")
        target.write_bytes(data)
        print(f"wrote {len(data)} bytes to {target}")
        return 0
    from helpdesk.intake.runner import Intake

    result = Intake(engine, cfg).retry(args.id)
    print(f"message {args.id}: {result.outcome} {result.ticket_number or ''} {result.error or ''}".rstrip())
    return 0 if result.state != RawState.QUARANTINED else 1


def cmd_outbox(args: argparse.Namespace) -> int:
    from helpdesk.outbound import outbox

    _cfg, engine = _engine(args)
    if args.action == "list":
        with Session(engine) as session:
            stmt = select(Outbox).order_by(col(Outbox.id))
            states = [args.state] if args.state else ["queued", "sending", "failed"]
            stmt = stmt.where(col(Outbox.state).in_(states))
            rows = session.exec(stmt).all()
            for row in rows:
                ticket = session.get(Ticket, row.ticket_id) if row.ticket_id else None
                print(
                    f"{row.id}\t{row.created_at:%Y-%m-%d %H:%M}\t{row.state}\t{row.kind}\t"
                    f"{ticket.number if ticket else '-'}\t{row.recipient}\t{row.attempts}\t{row.last_error or ''}"
                )
            print(f"{len(rows)} mail(s) {'/'.join(states)}", file=sys.stderr)
        return 0
    if args.id is None:
        print(f"outbox {args.action}: give a mail id (see 'helpdesk outbox list')", file=sys.stderr)
        return 2
    if args.action == "show":
        with Session(engine) as session:
            mail = session.get(Outbox, args.id)
            if mail is None:
                print(f"no mail {args.id} in the outbox", file=sys.stderr)
                return 1
            sys.stdout.write(mail.data.decode("utf-8", errors="replace"))
        return 0
    with transaction(engine) as session:
        done = outbox.requeue(session, args.id, utcnow())
    if not done:
        print(f"mail {args.id} is not a failed mail", file=sys.stderr)
        return 1
    print(f"mail {args.id} queued again")
    return 0


def cmd_route_test(args: argparse.Namespace) -> int:
    from helpdesk.intake.explain import explain

    cfg, engine = _engine(args)
    data = Path(args.file).read_bytes()
    with transaction(engine) as session:
        lines = explain(session, cfg, data, mailbox=args.mailbox)
        session.rollback()
    print("\n".join(lines))
    return 0


def cmd_mailbox_test(args: argparse.Namespace) -> int:
    from helpdesk.mailboxes.check import check_mailbox

    cfg = _load(args)
    try:
        report = check_mailbox(cfg, args.name)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


# --- argument parsing ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helpdesk", description="Email-driven helpdesk daemon")
    parser.add_argument("-c", "--config", help="path to channels.yaml (default: $HELPDESK_CONFIG or ./channels.yaml)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, **kw)
        p.set_defaults(func=func)
        return p

    run = add("run", cmd_run, "run the daemon")
    run.add_argument("--once", action="store_true", help="import everything waiting in every mailbox and exit")

    check = add("check-config", cmd_check_config, "validate channels.yaml and report every problem")
    check.add_argument("path", nargs="?")

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="apply all migrations").set_defaults(func=cmd_db_upgrade)

    out = add("outbox", cmd_outbox, "inspect mail waiting to be sent or failed, and send a failed one again")
    out.add_argument("action", choices=["list", "show", "retry"])
    out.add_argument("id", nargs="?", type=int)
    out.add_argument("--state", choices=["queued", "sending", "sent", "failed"], help="list only this state")

    quarantine = add("quarantine", cmd_quarantine, "inspect and retry messages that could not be processed")
    quarantine.add_argument("action", choices=["list", "show", "retry", "retry-all", "export"])
    quarantine.add_argument("id", nargs="?", type=int)
    quarantine.add_argument("-o", "--output", help="file to write (export)")

    tickets = sub.add_parser("tickets", help="tickets")
    t_sub = tickets.add_subparsers(dest="tickets_command", required=True)
    t_export = t_sub.add_parser("export", help="print every ticket with its items")
    t_export.add_argument("--format", choices=["json"], default="json")
    t_export.set_defaults(func=cmd_tickets_export)
    t_show = t_sub.add_parser("show", help="one ticket: status, SLA clocks, deadlines and history")
    t_show.add_argument("number", help="e.g. SUP-12")
    t_show.add_argument("--format", choices=["text", "json"], default="text")
    t_show.set_defaults(func=cmd_tickets_show)
    t_status = t_sub.add_parser("status", help="change a ticket's status (as the channel's workflow permits)")
    t_status.add_argument("number")
    t_status.add_argument("status")
    t_status.add_argument("--by", help="the staff member acting (default: the system user)")
    t_status.set_defaults(func=cmd_tickets_status)
    t_snooze = t_sub.add_parser("snooze", help="put a ticket to sleep until a date (3d, 2026-12-01, off)")
    t_snooze.add_argument("number")
    t_snooze.add_argument("until")
    t_snooze.add_argument("--by", help="the staff member acting (default: the system user)")
    t_snooze.set_defaults(func=cmd_tickets_snooze)
    t_replan = t_sub.add_parser("replan", help="recompute every open ticket's deadlines after an SLA change")
    t_replan.set_defaults(func=cmd_tickets_replan)

    messages = sub.add_parser("messages", help="inbound messages")
    m_sub = messages.add_subparsers(dest="messages_command", required=True)
    m_export = m_sub.add_parser("export", help="print every inbound message and what became of it")
    m_export.add_argument("--format", choices=["json"], default="json")
    m_export.set_defaults(func=cmd_messages_export)

    mailbox = sub.add_parser("mailbox", help="mailboxes")
    mb_sub = mailbox.add_subparsers(dest="mailbox_command", required=True)
    mb_test = mb_sub.add_parser("test", help="check a mailbox step by step: DNS, connection, TLS, login, folder, "
                                "rights, sending (exit code 0 only when all pass)")
    mb_test.add_argument("name")
    mb_test.set_defaults(func=cmd_mailbox_test)

    route = sub.add_parser("route", help="routing")
    r_sub = route.add_subparsers(dest="route_command", required=True)
    r_test = r_sub.add_parser("test", help="explain what the pipeline would do with a mail (writes nothing)")
    r_test.add_argument("file")
    r_test.add_argument("--mailbox", help="treat the mail as read from this mailbox")
    r_test.set_defaults(func=cmd_route_test)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.command != "run" else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command protocol trace
    try:
        return int(args.func(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{exc.source}: {problem}", file=sys.stderr)
        return 2
    except SecretMissing as exc:
        print(f"{exc} (it signs the reply addresses of every mail sent; set it in the environment)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
