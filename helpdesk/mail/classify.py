"""Classify an inbound mail: customer mail, automatic reply, bounce, or mail we sent ourselves.

Pure: the caller passes the parsed mail and the set of the system's own addresses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from helpdesk.mail.bounce import Bounce, detect_bounce
from helpdesk.mail.parse import ParsedMail

LOOP_HEADER = "x-helpdesk-loop"

# Subjects of out-of-office and other automatic answers, in the languages our customers write.
_AUTO_SUBJECT = re.compile(
    r"^\s*(?:"
    r"auto(?:matic)?[\s_-]*(?:reply|response|antwort|answer)"
    r"|out[\s_-]+of[\s_-]+(?:the[\s_-]+)?office"
    r"|abwesenheits?(?:notiz|nachricht|meldung)?"
    r"|automatische\s+antwort"
    r"|(?:i\s+am|i'm)\s+(?:out|away)"
    r"|vacation(?:\s+reply)?"
    r"|absence"
    r"|r[ée]ponse\s+automatique"
    r"|risposta\s+automatica"
    r"|respuesta\s+autom[áa]tica"
    r"|automatisch\s+antwoord"
    r"|afwezig"
    r"|fr[åa]nvarande"
    r"|autosvar"
    r"|ikke\s+til\s+stede"
    r"|odpowied[źz]\s+automatyczna"
    r")\b",
    re.IGNORECASE,
)
_NOREPLY_LOCAL = re.compile(r"^(?:no[-_.]?reply|do[-_.]?not[-_.]?reply|mailer[-_]daemon|postmaster)\b", re.I)


def is_noreply(address: str) -> bool:
    """A robot's address (no-reply, mailer-daemon, postmaster): never answer it."""
    return bool(_NOREPLY_LOCAL.match(address.split("@", 1)[0]))


class Kind(StrEnum):
    CUSTOMER = "customer"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    OWN = "own"


@dataclass(frozen=True)
class Classification:
    kind: Kind
    reason: str
    bounce: Bounce | None = None

    @property
    def automatic(self) -> bool:
        """True when no human wrote this mail: never answer it, never open a ticket for it."""
        return self.kind is not Kind.CUSTOMER


def _first(mail: ParsedMail, name: str) -> str:
    return (mail.header(name) or "").strip()


def auto_reply_reason(mail: ParsedMail) -> str | None:
    """Why the mail counts as machine-generated (RFC 3834 and common practice), or None."""
    auto_submitted = _first(mail, "auto-submitted").lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return f"Auto-Submitted: {auto_submitted}"
    precedence = _first(mail, "precedence").lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    for header in ("x-autoreply", "x-autorespond", "x-autoresponse", "x-auto-response"):
        if mail.header(header) is not None:
            return f"{header} header"
    suppress = _first(mail, "x-auto-response-suppress").lower()
    if suppress and any(token in suppress for token in ("all", "oof", "autoreply")):
        return f"X-Auto-Response-Suppress: {suppress}"
    if mail.header("list-id") is not None or mail.header("list-unsubscribe") is not None:
        return "mailing list (List-Id / List-Unsubscribe)"
    if mail.header("feedback-id") is not None and mail.header("list-unsubscribe") is not None:
        return "bulk sender (Feedback-ID)"
    if _AUTO_SUBJECT.match(mail.subject or ""):
        return f"automatic-reply subject: {mail.subject[:60]!r}"
    sender = mail.from_.email if mail.from_ else ""
    local = sender.split("@", 1)[0]
    if sender and _NOREPLY_LOCAL.match(local):
        return f"sent from a no-reply address ({sender})"
    return None


def classify(mail: ParsedMail, own_addresses: frozenset[str] | set[str]) -> Classification:
    """Decide what kind of mail this is. Order matters: loops first, then bounces, then auto-replies."""
    sender = (mail.from_.email if mail.from_ else "").lower()
    if mail.header(LOOP_HEADER) is not None:
        return Classification(Kind.OWN, f"carries our own {LOOP_HEADER} header")
    if sender and sender in own_addresses:
        return Classification(Kind.OWN, f"sent from our own address {sender}")
    bounce = detect_bounce(mail.message)
    if bounce is not None:
        who = ", ".join(bounce.recipients) or "unknown recipient"
        return Classification(Kind.BOUNCE, f"delivery failure ({bounce.kind}) for {who}", bounce)
    reason = auto_reply_reason(mail)
    if reason is not None:
        return Classification(Kind.AUTO_REPLY, reason)
    return Classification(Kind.CUSTOMER, "written by a person")
