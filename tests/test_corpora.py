"""Every mail of the shared real-world corpora through the whole pipeline.

Prints the count per outcome and the agreement with the corpora's expected results, measured on
what the pipeline stored: parse fields of the imap_tools messages, bounce or not and the failed
recipient for the bounce sets, the customer's reply text for the reply-parser sets.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from helpdesk.config import validate
from helpdesk.intake.runner import Incoming, Intake, Result
from helpdesk.mail.classify import is_noreply
from helpdesk.store.models import Item, Outbox, Outcome, RawMessage, Ticket
from tests.conftest import Clock, base_config
from tests.corpora import corpora_dir
from tests.mail.test_bounce import FLUFL_OVERRIDES
from tests.mail.test_quotes import CORPUS_SETS, norm

NOT_MAIL = {"LICENSE", "NOTICE.txt", "COPYRIGHT.debian", "README.md", "LICENSE.txt"}
# Reply-parser fixtures are message bodies, not mails: they go in wrapped in a customer's mail.
BODY_FIXTURE_DIRS = ("crisp-email-reply-parser/", "github-email_reply_parser/", "zapier-email-reply-parser/",
                     "mail-parser-reply/")

# Floors set just below what the pipeline reaches, so that a regression fails.
MIN_QUARANTINE_SHARE = 0.10
MIN_IMAP_TOOLS_SUBJECT = 0.97
MIN_IMAP_TOOLS_FROM = 0.97
MIN_BOUNCE_AGREEMENT = 0.97
MIN_RECIPIENT_AGREEMENT = 0.95
MIN_REPLY_AGREEMENT = 0.92


def corpus_mails(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or path.name in NOT_MAIL or path.suffix == ".json" or "/expected/" in f"/{rel}":
            continue
        if rel.startswith(BODY_FIXTURE_DIRS):
            continue
        out.append(path)
    return out


def wrap(body: str, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@acme.example>"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Reply {n}"
    msg["Message-ID"] = f"<wrapped-{n}@acme.example>"
    msg.set_content(body)
    return msg.as_bytes()


@pytest.fixture
def corpus_intake(sqlite_engine: Engine) -> Intake:
    return Intake(sqlite_engine, validate(base_config()), Clock())


def item_for(session: Session, raw_id: int) -> Item | None:
    return session.exec(select(Item).where(Item.raw_message_id == raw_id).order_by(col(Item.id))).first()


def test_every_corpus_mail_through_the_pipeline(corpus_intake: Intake, sqlite_engine: Engine) -> None:
    root = corpora_dir()
    results: dict[str, Result] = {}
    for path in corpus_mails(root):
        rel = path.relative_to(root).as_posix()
        # No exception may escape: a failure must end in quarantine, with the raw bytes kept.
        [result] = corpus_intake.ingest("corpus", [Incoming(key=rel, data=path.read_bytes())])
        results[rel] = result

    by_set: dict[str, Counter[str]] = defaultdict(Counter)
    for rel, result in results.items():
        by_set[rel.split("/", 1)[0]][result.outcome or "pending"] += 1
    total = Counter(r.outcome or "pending" for r in results.values())
    print(f"\ncorpus mails through the pipeline: {len(results)}")
    for name, counts in sorted(by_set.items()):
        print(f"  {name:28} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print("  total                        " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
    reasons = Counter((r.error or "").split(":")[0] for r in results.values() if r.outcome == Outcome.QUARANTINED)
    for reason, n in reasons.most_common():
        print(f"  quarantined {n:3} x {reason}")
    assert all(r.state != "pending" for r in results.values())
    assert all(r.error for r in results.values() if r.outcome == Outcome.QUARANTINED)
    assert total[Outcome.QUARANTINED] <= MIN_QUARANTINE_SHARE * len(results)

    with Session(sqlite_engine) as session:
        _imap_tools_agreement(root, results, session)
        _bounce_agreement(root, results, session)
        _acknowledgements(results, session)


def _acknowledgements(results: dict[str, Result], session: Session) -> None:
    """Acknowledgements go only to people who opened a ticket: never to robots, bounces or auto-replies."""
    acks = session.exec(select(Outbox).where(Outbox.kind == "ack")).all()
    opened = {r.ticket_number for r in results.values() if r.outcome == Outcome.TICKET}
    by_recipient = Counter(a.recipient for a in acks)
    print(f"  acknowledgements queued: {len(acks)} for {len(opened)} new tickets")
    numbers = {t.id: t.number for t in session.exec(select(Ticket)).all()}
    assert all(numbers[a.ticket_id] in opened for a in acks if a.ticket_id is not None)
    assert len({a.ticket_id for a in acks}) == len(acks), "a ticket acknowledged twice"
    assert not [a.recipient for a in acks if is_noreply(a.recipient) or a.recipient.endswith("@example.test")]
    assert max(by_recipient.values(), default=0) <= 30  # the per-recipient limit holds


def _imap_tools_agreement(root: Path, results: dict[str, Result], session: Session) -> None:
    base = root / "imap_tools-messages"
    subject_ok = from_ok = n = 0
    for expected_path in sorted((base / "expected").rglob("*.json")):
        expected = json.loads(expected_path.read_text(encoding="utf-8"))
        result = results.get(f"imap_tools-messages/{expected.get('_eml', '')}")
        if result is None:
            continue
        item = item_for(session, result.raw_id)
        if item is None:
            continue  # auto-reply, bounce or quarantined: no item to compare
        n += 1
        subject_ok += norm(item.subject or "") == norm(expected.get("subject") or "")
        exp_from = (expected.get("from_values") or {}).get("email") or expected.get("from") or ""
        from_ok += (item.from_address or "").lower() == exp_from.lower()
    print(f"imap_tools-messages stored as items: {n}; subject agree {subject_ok}/{n}, sender agree {from_ok}/{n}")
    assert n >= 70
    assert subject_ok >= MIN_IMAP_TOOLS_SUBJECT * n and from_ok >= MIN_IMAP_TOOLS_FROM * n


def _bounce_expectations(root: Path) -> dict[str, tuple[bool, set[str]]]:
    """corpus path -> (is bounce, failed recipients expected)."""
    out: dict[str, tuple[bool, set[str]]] = {}
    flufl = json.loads((root / "flufl-bounce/expected.json").read_text(encoding="utf-8"))["expected"]
    for path in sorted((root / "flufl-bounce/data").glob("*.txt")):
        addresses = {a.lower() for d in flufl.get(path.name, []) for a in d.get("addresses", [])}
        is_bounce, recipients = FLUFL_OVERRIDES.get(path.name, (True, frozenset(addresses)))
        out[f"flufl-bounce/data/{path.name}"] = (is_bounce, set(recipients))
    bounced = json.loads((root / "bounced-bounce_email/expected.json").read_text(encoding="utf-8"))["expected"]
    for name, spec in bounced.items():
        recipients = {(r.get("recipient") or "").lower() for r in spec.get("rfc3464_dsn_bounces") or []}
        out[f"bounced-bounce_email/{name}"] = (bool(spec["is_bounce"]), recipients - {""})
    return out


def _bounce_agreement(root: Path, results: dict[str, Result], session: Session) -> None:
    expectations = _bounce_expectations(root)
    agree = n = rec_ok = rec_n = 0
    for rel, (is_bounce, recipients) in expectations.items():
        result = results.get(rel)
        if result is None or result.outcome == Outcome.DUPLICATE:
            continue  # a copy of another corpus file: judged there
        n += 1
        agree += (result.outcome == Outcome.BOUNCE) == is_bounce
        if recipients and result.outcome == Outcome.BOUNCE:
            raw = session.get(RawMessage, result.raw_id)
            detail = (raw.detail or "").lower() if raw else ""
            rec_n += 1
            rec_ok += all(r in detail for r in recipients)
    print(f"bounce sets: bounce-or-not agree {agree}/{n}; failed recipient recorded {rec_ok}/{rec_n}")
    assert n >= 150
    assert agree >= MIN_BOUNCE_AGREEMENT * n and rec_ok >= MIN_RECIPIENT_AGREEMENT * rec_n


def test_reply_text_stored_by_the_pipeline(corpus_intake: Intake, sqlite_engine: Engine) -> None:
    root = corpora_dir()
    agree = total = 0
    for set_name, derive in CORPUS_SETS.items():
        ok = 0
        cases = derive(root)
        for case in cases:
            total += 1
            if case.html:
                msg = EmailMessage()
                msg["From"], msg["To"], msg["Subject"] = "c@acme.example", "support@example.test", case.name
                msg.set_content(case.body, subtype="html")
                raw = msg.as_bytes()
            else:
                raw = wrap(case.body, total)
            [result] = corpus_intake.ingest("replies", [Incoming(key=f"{set_name}:{total}", data=raw)])
            with Session(sqlite_engine) as session:
                item = item_for(session, result.raw_id)
            got = item.body_text if item else ""
            ok += norm(got) == norm(case.expected)
        print(f"{set_name}: reply text stored {ok}/{len(cases)}")
        agree += ok
    print(f"reply-parser sets through the pipeline: {agree}/{total} reply texts agree")
    assert total >= 80 and agree >= MIN_REPLY_AGREEMENT * total
