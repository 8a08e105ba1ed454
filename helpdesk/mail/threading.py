"""Threading keys: subject tags, reference chains, recipient addresses. Pure functions."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence

from helpdesk.mail.parse import ParsedMail

# "[SUP-1042]" or "[#SUP-1042]", anywhere in the subject.
_TAG = re.compile(r"\[#?([A-Z][A-Z0-9]{0,9})-(\d{1,12})\]")
_REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|ref|tr|wg|fw|fwd|rv|odp|enc|r)\s*(?:\[\d+\])?\s*[:：]\s*)+", re.IGNORECASE
)


def ticket_number(prefix: str, number: int) -> str:
    return f"{prefix}-{number}"


def subject_tag(number: str) -> str:
    return f"[{number}]"


def tagged_numbers(subject: str, prefixes: Iterable[str]) -> list[str]:
    """Ticket numbers tagged in ``subject`` whose prefix is one of ours, first tag first."""
    known = set(prefixes)
    return [f"{p}-{int(n)}" for p, n in _TAG.findall(subject or "") if p in known]


def strip_reply_prefixes(subject: str) -> str:
    """``Re: AW: Fwd: x`` -> ``x``."""
    return _REPLY_PREFIX.sub("", subject or "").strip()


def reference_chain(mail: ParsedMail) -> list[str]:
    """Message-IDs this mail answers, most specific first: In-Reply-To, then References newest first."""
    seen: set[str] = set()
    chain: list[str] = []
    for mid in (*mail.in_reply_to, *reversed(mail.references)):
        if mid and mid not in seen:
            seen.add(mid)
            chain.append(mid)
    return chain


def fingerprint(mail: ParsedMail) -> str | None:
    """Identity of a mail across delivery routes: Message-ID, sender, date, subject, text, attachments.

    Two copies of one mail (sent to two of our addresses, fetched from two mailboxes, re-encoded by
    a relay) share it; two different mails from a broken mailer that reuses one Message-ID do not.
    None without a Message-ID: such mails are recognised by their bytes only."""
    if not mail.message_id:
        return None
    sender = mail.from_.email.lower() if mail.from_ else ""
    date = mail.date.isoformat() if mail.date else ""
    body = " ".join(f"{mail.text} {mail.html}".split())
    parts = " ".join(sorted(hashlib.sha256(a.payload).hexdigest() for a in mail.attachments))
    key = "\x1f".join((mail.message_id, sender, date, strip_reply_prefixes(mail.subject), body, parts))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def base_address(address: str) -> str:
    """``support+T12.x@example.test`` -> ``support@example.test`` (lower-cased)."""
    address = address.strip().strip("<>").lower()
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    return f"{local.split('+', 1)[0]}@{domain}"


def candidate_recipients(mail: ParsedMail, envelope: Sequence[str] = ()) -> list[tuple[str, str]]:
    """Every recipient address with where it came from, in routing order:
    envelope, Delivered-To, X-Original-To, To, Cc."""
    out: list[tuple[str, str]] = [(a, "envelope") for a in envelope]
    for header in ("delivered-to", "x-original-to"):
        for value in mail.headers.get(header, ()):
            out.append((value.strip(), header.title()))
    out.extend((a.email, "To") for a in mail.to if a.email)
    out.extend((a.email, "Cc") for a in mail.cc if a.email)
    return [(base_address(a), where) for a, where in out if "@" in a]
