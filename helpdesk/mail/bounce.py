"""Recognise delivery-failure notifications ("bounces") and extract what failed.

``detect_bounce(msg)`` takes a parsed ``email.message.Message`` and returns a :class:`Bounce`
or ``None``.  It is pure (no IO, no clock, no global state) and never raises.

How it works, in the spirit of flufl.bounce's detector table:

* The message is first turned into a :class:`_Mail` view: decoded From/Subject, a few
  "is this machine-generated?" signals, and the *notification text* -- the decoded text of
  every text part that is not inside an attached message (the returned original is skipped).
* :data:`_DETECTORS` is tried in order.  RFC 3464 DSNs come first (and DSN fields written
  into text, for reports with broken MIME); then ``X-Failed-Recipients``; then the
  non-standard formats: exim, postfix/sendmail text, Yahoo, qmail, AOL, Exchange, GroupWise,
  Lotus Notes, SMTP32 and a table of "simple match" phrases.  Most of these are declarative
  :class:`_Rule` tables: after a *start* phrase, collect the addresses an *address* pattern
  finds on each line, until an *end* line (or a line limit).
* The first detector that finds failed addresses wins.  A detector that recognises its format
  but finds no address is remembered; if no detector finds an address, that recognised
  bounce is returned with empty ``recipients`` -- but only when the mail is plainly from a
  mail system (MAILER-DAEMON/postmaster sender, null Return-Path, delivery-failure subject,
  or a delivery-status report).  The last detector, ``mailer-daemon``, recognises a
  MAILER-DAEMON's failure notice in a format nobody knows.
* The text detectors only run on mail that looks machine-generated and never on
  out-of-office/vacation replies, so a customer who forwards a bounce ("Fwd: Undeliverable",
  inline or as an attachment) still gets a ticket.
* Hence the fast exit for ordinary mail: when the header signals say "not machine-generated"
  and there is no delivery-status part, only the DSN detector could run and it would find
  nothing, so ``None`` is returned before the body is decoded (tests/mail/test_bounce.py checks
  on every corpus file that the answer is the full table's).

Permanent vs temporary: DSNs use ``Action`` (failed -> permanent, even with a 4.x.x status,
since the MTA gave up; delayed -> temporary) and fall back to ``Status``; the text formats
are permanent unless the notification says it is only a delay warning.
"""

from __future__ import annotations

import base64
import binascii
import html
import quopri
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import parseaddr
from typing import Any, Final, TypeVar

__all__ = ["Bounce", "detect_bounce"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class Bounce:
    """A delivery-failure notification."""

    recipients: tuple[str, ...]
    """Failed recipient addresses, lower-cased, deduplicated, in the order found (may be empty)."""
    permanent: bool
    """True for a hard failure (5.x.x, gave up); False for a delay warning or 4.x.x."""
    kind: str
    """``"dsn"`` for an RFC 3464 report, else the name of the heuristic that matched."""
    original_message_id: str | None
    """Message-ID (``<...>``) of the mail that bounced, when it can be recovered."""
    diagnostic: str | None
    """Short human-readable reason, e.g. ``"550 5.1.1 user unknown"``."""


def detect_bounce(msg: Message) -> Bounce | None:
    """Return a :class:`Bounce` if ``msg`` is a delivery-failure notification, else ``None``.

    Never raises: a malformed message that cannot be examined is reported as not a bounce.
    """
    try:
        signals = _Signals.of(msg)
        # Fast exit for ordinary mail: only the DSN detector runs on mail that does not look
        # machine-generated, and it needs a delivery-status part. Same answer, without decoding
        # the body.
        if not signals.automated and not _has_delivery_status(msg):
            return None
        return _detect(_Mail.of(msg, signals))
    except Exception:  # robustness over everything: a detector bug must not break intake
        return None


# --------------------------------------------------------------------------------------------
# Limits (keep pathological mail cheap)

_MAX_DEPTH: Final = 12  # MIME nesting we follow
_MAX_PART_CHARS: Final = 100_000  # decoded text kept per part
_MAX_TEXT_CHARS: Final = 200_000  # notification text kept in total
_MAX_BLOCKS: Final = 20  # start-phrase occurrences a rule follows
_HEAD_CHARS: Final = 5_000  # notification head searched for delay/diagnostic wording
_MAX_DIAGNOSTIC: Final = 200
_MAX_LINE_CHARS: Final = 1_000  # of one line, as seen by the address patterns


# --------------------------------------------------------------------------------------------
# Addresses

# An address as it appears in bounce text; the group is the address.  Deliberately loose --
# every hit goes through _clean_address(), which enforces a sane shape.
# The look-behind makes a match start only where an address can start, which keeps
# searching linear on long runs of address-like characters.
_ADDR: Final = r"""(?<![^\s<>()\[\]{},;:"'=*])([^\s<>()\[\]{},;:"'@]+@[^\s<>()\[\]{},;:"'@]+)"""
# Unicode letters are allowed on both sides (RFC 6531 addresses, IDN domains).
_VALID_ADDRESS: Final = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)+")


def _clean_address(raw: str) -> str | None:
    """Strip the punctuation bounce text wraps addresses in; None unless it is an address."""
    text = raw.strip().strip("<>\"'[](){}*`")
    if text.lower().startswith("mailto:"):
        text = text[7:]
    text = re.sub(r"(?:=20|=09)+$", "", text)  # quoted-printable debris from a non-QP part
    text = text.rstrip(".,;:!?").strip("<>\"'")
    if len(text) > 254 or not _VALID_ADDRESS.fullmatch(text):
        return None
    return text.lower()


def _unique(addresses: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))


# --------------------------------------------------------------------------------------------
# Decoding helpers


class _HeaderIndex:
    """``get`` and ``in`` of a message's headers as ``Message`` answers them (first occurrence,
    case-insensitive, the policy's header_fetch_parse), from one pass over the headers instead of
    one per question."""

    __slots__ = ("_first", "_policy")

    def __init__(self, msg: Message) -> None:
        self._policy = msg.policy
        self._first: dict[str, tuple[str, Any]] = {}
        for key, value in msg.raw_items():
            self._first.setdefault(key.lower(), (key, value))

    def get(self, name: str, failobj: Any = None) -> Any:
        found = self._first.get(name.lower())
        if found is None:
            return failobj
        return self._policy.header_fetch_parse(*found)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._first


def _header_text(msg: Message | _HeaderIndex, name: str) -> str:
    """A header decoded (RFC 2047) and whitespace-collapsed; '' when absent or undecodable."""
    try:
        raw = msg.get(name)
        if raw is None:
            return ""
        if type(raw) is str and "=?" not in raw:
            text = raw  # no encoded word: make_header(decode_header(raw)) gives it back unchanged
        else:
            try:
                text = str(make_header(decode_header(raw)))
            except Exception:
                text = str(raw)
    except Exception:
        return ""
    return " ".join(text.split())


# The everyday From forms, ``a@b.c``, ``Name <a@b.c>``, ``"Name" <a@b.c>``: no comments, escapes,
# groups, route or domain literals, and no blanks inside the address. For these, parseaddr's
# result can be read off directly (the name is its words joined by one space, the quoted ones
# without their quotes); anything else goes to parseaddr.
_NOT_ATOM: Final = r'()<>@,:;"\[\]\\\s'  # \s: parseaddr drops an all-blank (str.strip) local atom
_DOT_ATOM: Final = rf"[^{_NOT_ATOM}.]++(?:\.[^{_NOT_ATOM}.]++)*+"
# Possessive quantifiers: words are maximal runs, so nothing is given back and a failed match is
# linear in the length of the value.
_SIMPLE_MAILBOX: Final = re.compile(
    rf'[ \t\r\n]*+(?:({_DOT_ATOM}@{_DOT_ATOM})|((?:(?:"[^"\\\r]*+"|[^{_NOT_ATOM}]++)[ \t\r\n]*+)*+)'
    rf"<[ \t]*+({_DOT_ATOM}@{_DOT_ATOM})[ \t]*+>)[ \t\r\n]*+"
)
_PHRASE_WORD: Final = re.compile(rf'"([^"\\\r]*)"|([^{_NOT_ATOM}]+)')


def _parseaddr(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr(value)``, without its character-by-character scan for the
    everyday forms."""
    m = _SIMPLE_MAILBOX.fullmatch(value)
    if m is None:
        return parseaddr(value)
    if m.group(1) is not None:
        return "", m.group(1)
    words = [w.group(1) if w.group(1) is not None else w.group(2) for w in _PHRASE_WORD.finditer(m.group(2))]
    return " ".join(words), m.group(3)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    for candidate in (charset, "utf-8"):
        if not candidate:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeDecodeError, ValueError):
            continue
    return data.decode("latin-1")  # never fails


_HTML_INVISIBLE: Final = re.compile(r"<(script|style|head)\b[^<>]*>", re.I)
_HTML_BREAK: Final = re.compile(r"<\s*/?\s*(?:br|p|div|tr|li|h\d|table|blockquote)\b[^<>]*>", re.I)
# A tag -- but not an address written as <user@example.com> in sloppy HTML.
_HTML_TAG: Final = re.compile(r"<(?!\s*[^\s<>@]+@[^\s<>]+\s*>)[^<>]*>")


def _drop_invisible(markup: str) -> str:
    """Remove <head>, <script> and <style> elements (linear: no regex backtracking)."""
    kept: list[str] = []
    pos = 0
    lowered = markup.lower()
    while (opening := _HTML_INVISIBLE.search(markup, pos)) is not None:
        closing = lowered.find("</" + opening.group(1).lower(), opening.end())
        if closing < 0:
            break
        kept.append(markup[pos : opening.start()])
        pos = closing + 2
    kept.append(markup[pos:])
    return " ".join(kept)


def _html_to_text(markup: str) -> str:
    text = _drop_invisible(markup)
    text = _HTML_BREAK.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    return html.unescape(text).replace("\xa0", " ")


def _part_text(part: Message) -> str:
    """Decoded text of a leaf part ('' if it has none)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    try:
        charset = part.get_content_charset()
    except Exception:
        charset = None
    return _decode_bytes(payload[: _MAX_PART_CHARS * 4], charset)[:_MAX_PART_CHARS]


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _content_type(part: Message) -> str:
    try:
        return part.get_content_type()
    except Exception:
        return "text/plain"


def _parts(msg: Message, *, into_attached: bool, depth: int = 0) -> Iterator[Message]:
    """``msg`` and its subparts, depth-first; attached messages are entered only on request."""
    yield msg
    if depth >= _MAX_DEPTH or not msg.is_multipart():
        return
    ctype = _content_type(msg)
    if ctype == "message/delivery-status" or (ctype.startswith("message/") and not into_attached):
        return
    payload = msg.get_payload()
    if isinstance(payload, list):
        for sub in payload:
            if isinstance(sub, Message):
                yield from _parts(sub, into_attached=into_attached, depth=depth + 1)


_ATTACHED_ORIGINAL_TYPES: Final = frozenset(
    {
        "message/rfc822",
        "message/global",
        "message/rfc822-headers",
        "text/rfc822-headers",
        "message/global-headers",
    }
)


def _notification_text(msg: Message) -> str:
    """Text of every text part outside attached messages: the bounce's own words."""
    chunks: list[str] = []
    size = 0
    for part in _parts(msg, into_attached=False):
        if part.is_multipart():
            continue
        ctype = _content_type(part)
        broken_multipart = ctype.startswith("multipart/")  # boundary missing: the body is text
        if not (ctype.startswith("text/") or broken_multipart) or ctype == "text/rfc822-headers":
            continue
        try:
            text = _part_text(part)
        except Exception:
            continue
        if ctype == "text/html":
            text = _html_to_text(text)
        chunks.append(_normalise_newlines(text))
        size += len(text)
        if size >= _MAX_TEXT_CHARS:
            break
    return "\n".join(chunks)[:_MAX_TEXT_CHARS]


# --------------------------------------------------------------------------------------------
# The message view the detectors work on

_DAEMON_LOCAL: Final = re.compile(
    r"(?:mailer[-_.]?daemon|mail[-_.]?daemon|postmaster|mdaemon|mail[-_.]?delivery(?:[-_.]?(?:sub)?system)?"
    r"|mail[-_.]?delivery[-_.]?service|bounces?|ndr|mailadm(?:in)?|system[-_. ]?administrator)",
    re.I,
)
_DAEMON_NAME: Final = re.compile(
    r"mail(?:er)?[- ]?daemon|postmaster|mail delivery|delivery (?:sub)?system|delivery service"
    r"|system administrator|mail administrator",
    re.I,
)
_FORWARDED_SUBJECT: Final = re.compile(r"^\s*(?:fwd?|fw|wg|tr|rv|vs|vb|doorst|enc|i)\s*(?:\[\d+\])?\s*:", re.I)
_BOUNCE_SUBJECT: Final = re.compile(
    r"undeliver|undelivered|returned mail|return(?:ed|ing)? (?:message )?to sender|failure notice"
    r"|delivery (?:status notification|failure|failed|problem|report|notification|error)"
    r"|(?:mail|message) delivery (?:failed|failure|problem|error)|failed mail|failed delivery"
    r"|mail system error|(?:could|can)(?: ?not|n't) be delivered|(?:mail|message) (?:was )?not delivered"
    r"|non[- ]?delivery"
    r"|delivery has failed|permanent delivery failure|nicht zustellbar|unzustellbar|olevererbart"
    r"|non remis|non recapitabile|non distribuable|impossible de remettre|onbestelbaar"
    r"|delayed mail|(?:message|mail|delivery) delayed|delivery (?:has been )?delayed|warning: message"
    r"|konnte nicht zugestellt",
    re.I,
)
_VACATION_SUBJECT: Final = re.compile(
    r"out of (?:the )?office|automatic reply|auto(?:matic)?[- ]?(?:reply|response|responder|antwort)"
    r"|autoreply|abwesenheit|vacation|urlaub|\babsence|\babsent\b|automatiska atbilde|atvaļinājums"
    r"|cong[ée]s|fuera de la oficina|afwezig|frånvaro",
    re.I,
)


@dataclass(frozen=True, slots=True)
class _Signals:
    """The header facts that tell whether a mail is plausibly machine-generated (cheap: no body)."""

    headers: _HeaderIndex
    sender: str  # From address, lower-cased ('' if none)
    sender_name: str  # From display name
    subject: str
    daemon: bool  # From a mailer-daemon/postmaster-like sender
    null_sender: bool  # Return-Path: <>
    bounce_subject: bool  # subject says delivery failed (and is not a forward)
    report: bool  # top-level multipart/report
    failed_header: bool  # exim's X-Failed-Recipients

    @classmethod
    def of(cls, msg: Message) -> _Signals:
        headers = _HeaderIndex(msg)
        from_text = _header_text(headers, "From")
        try:
            name, address = _parseaddr(str(headers.get("From", "")))
        except Exception:
            name, address = "", ""
        address = address.strip().lower()
        local = address.partition("@")[0].strip('"')
        daemon = bool(
            _DAEMON_LOCAL.fullmatch(local)
            or _DAEMON_NAME.search(name or from_text)
            or (from_text and not address)  # From: "Mail System" <>
            or (address and "@" not in address and _DAEMON_LOCAL.fullmatch(address))
        )
        subject = _header_text(headers, "Subject")
        forwarded = bool(_FORWARDED_SUBJECT.match(subject))
        return cls(
            headers=headers,
            sender=address,
            sender_name=name or from_text,
            subject=subject,
            daemon=daemon,
            null_sender=_header_text(headers, "Return-Path").replace(" ", "") == "<>",
            bounce_subject=bool(_BOUNCE_SUBJECT.search(subject)) and not forwarded,
            report=_content_type(msg) == "multipart/report",
            failed_header="X-Failed-Recipients" in headers,
        )

    @property
    def automated(self) -> bool:
        """Same as :attr:`_Mail.automated`."""
        return self.daemon or self.null_sender or self.bounce_subject or self.report or self.failed_header


_DELIVERY_STATUS_TYPES: Final = ("message/delivery-status", "message/global-delivery-status")


def _has_delivery_status(msg: Message) -> bool:
    """Whether the DSN detector would find a delivery-status part in a mail that is not automated."""
    return any(_content_type(part) in _DELIVERY_STATUS_TYPES for part in _parts(msg, into_attached=False))


@dataclass(frozen=True)
class _Mail:
    msg: Message
    sender: str  # From address, lower-cased ('' if none)
    sender_name: str  # From display name
    subject: str
    text: str  # notification text (see _notification_text)
    daemon: bool  # From a mailer-daemon/postmaster-like sender
    null_sender: bool  # Return-Path: <>
    bounce_subject: bool  # subject says delivery failed (and is not a forward)
    report: bool  # top-level multipart/report
    delivery_report: bool  # ... with report-type=delivery-status
    failed_header: bool  # exim's X-Failed-Recipients
    auto_submitted: bool  # Auto-Submitted: auto-generated / auto-replied
    attached_original: bool  # has a message/rfc822 or text/rfc822-headers part
    vacation: bool  # looks like an out-of-office reply

    @classmethod
    def of(cls, msg: Message, signals: _Signals | None = None) -> _Mail:
        signals = signals or _Signals.of(msg)
        headers = signals.headers
        try:
            report_type = str(msg.get_param("report-type", "") or "").lower()
        except Exception:
            report_type = ""
        auto_submitted = _header_text(headers, "Auto-Submitted").lower().startswith("auto-")
        attached_original = any(
            _content_type(part) in _ATTACHED_ORIGINAL_TYPES for part in _parts(msg, into_attached=False)
        )
        autoreply = any(h in headers for h in ("X-Autoreply", "X-Autorespond", "X-Vacation")) or (
            _header_text(headers, "Precedence").lower() == "auto_reply"
            or _header_text(headers, "Auto-Submitted").lower().startswith("auto-replied")
        )
        vacation = (
            not signals.daemon
            and not signals.bounce_subject
            and (autoreply or bool(_VACATION_SUBJECT.search(signals.subject)))
        )
        return cls(
            msg=msg,
            sender=signals.sender,
            sender_name=signals.sender_name,
            subject=signals.subject,
            text=_notification_text(msg),
            daemon=signals.daemon,
            null_sender=signals.null_sender,
            bounce_subject=signals.bounce_subject,
            report=signals.report,
            delivery_report=signals.report and "delivery-status" in report_type,
            failed_header=signals.failed_header,
            auto_submitted=auto_submitted,
            attached_original=attached_original,
            vacation=vacation,
        )

    @property
    def automated(self) -> bool:
        """Plausibly machine-generated: the precondition for the heuristic detectors."""
        return self.daemon or self.null_sender or self.bounce_subject or self.report or self.failed_header

    @property
    def from_mail_system(self) -> bool:
        """Strong enough to call it a bounce even when no failed address could be found."""
        return self.daemon or self.null_sender or self.bounce_subject or self.delivery_report


# --------------------------------------------------------------------------------------------
# Permanence and diagnostics for the text formats

_ORIGINAL_FOLLOWS: Final = re.compile(
    r"^[ \t>|*=_-]*(?:original message|below this line is a copy|this is a copy of|a copy of the original"
    r"|the header of the original|message header follows|header of the source mail|included is a copy"
    r"|your message reads|the first \d+ lines|message headers follow|unsent message below"
    r"|returned mail follows|enclosed is a copy|attachment is a copy)",
    re.I | re.M,
)
_PERMANENT_WORDING: Final = re.compile(
    r"permanent(?:ly)?\s+(?:fatal\s+)?(?:error|failure|failed)|failed\s+permanently|I've\s+given\s+up"
    r"|not\s+going\s+to\s+try\s+again|giving\s+up\s+on",
    re.I,
)
_DELAY_WORDING: Final = re.compile(
    r"not\s+yet\s+been\s+delivered|has\s+been\s+delayed|delivery\s+(?:is\s+|was\s+)?delayed"
    r"|delivery\s+attempts\s+will\s+continue|will\s+(?:continue\s+to\s+)?(?:be\s+)?retr(?:y|ied)"
    r"|warning\s+message\s+only|has\s+been\s+postponed|will\s+continue\s+to\s+try|still\s+being\s+retried"
    r"|transient\s+non-fatal",
    re.I,
)
_DELAY_SUBJECT: Final = re.compile(
    r"\(delay\)|delayed mail|(?:message|mail|delivery) delayed|still being retried", re.I
)
_DIAGNOSTICS: Final = (
    re.compile(r"\b[45]\d\d[ -]+#?[45]\.\d{1,3}\.\d{1,3}\b.*"),  # 550 5.1.1 user unknown
    re.compile(r"(?:^|said:|:\s)[ \t]*([45]\d\d[ -][^\n]*?[A-Za-z][^\n]*)", re.M),  # 550 unknown user
    re.compile(r"\(#[45]\.\d{1,3}\.\d{1,3}\)"),  # qmail: no mailbox here by that name (#5.1.1)
    re.compile(
        r"\b(?:user unknown|unknown user|no such user|does not exist|not found|quota|mailbox (?:is )?full"
        r"|mailbox unavailable|not listed|disabled|discontinued|blocked|rejected|no mailbox|not recognized"
        r"|unrouteable|unreachable|not reachable|no answer|timed out|loops?|exceeded|no longer valid"
        r"|invalid|not accepting|refused|denied)\b",
        re.I,
    ),
)
_REPLY_CODE: Final = re.compile(r"^[45]\d\d[- ]#?(?:[45]\.\d{1,3}\.\d{1,3}\b)?")
_REPLY_CONTINUATION: Final = re.compile(r"\s[45]\d\d[- ][45]\.\d{1,3}\.\d{1,3}\b")


def _tidy_reply(text: str) -> str | None:
    """Shorten an SMTP reply; drop the code prefixes of a multi-line reply's later lines."""
    text = " ".join(text.split())
    code = _REPLY_CODE.match(text)
    first = code.group(0).replace("-", " ", 1) if code else ""
    rest = _REPLY_CONTINUATION.sub(" ", " " + text[code.end() if code else 0 :])
    return _shorten(first + rest)


def _notification_head(mail: _Mail) -> str:
    """The notification text before the returned original starts (bounded)."""
    head = mail.text[:_HEAD_CHARS]
    marker = _ORIGINAL_FOLLOWS.search(head)
    return head[: marker.start()] if marker else head


def _text_is_permanent(mail: _Mail) -> bool:
    head = _notification_head(mail)
    if _PERMANENT_WORDING.search(head):
        return True
    return not (_DELAY_WORDING.search(head) or _DELAY_SUBJECT.search(mail.subject))


def _shorten(text: str) -> str | None:
    text = " ".join(text.split()).strip(" :;-")
    if not text:
        return None
    return text if len(text) <= _MAX_DIAGNOSTIC else text[: _MAX_DIAGNOSTIC - 3].rstrip() + "..."


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _text_diagnostic(mail: _Mail) -> str | None:
    """The first SMTP reply (or failure-sounding line) in the notification, with its
    more-indented continuation lines; repeated multi-line reply prefixes removed."""
    head = _notification_head(mail)
    for pattern in _DIAGNOSTICS:
        found = pattern.search(head)
        if found is None:
            continue
        line_start = head.rfind("\n", 0, found.start()) + 1
        line_end = head.find("\n", found.end())
        line_end = len(head) if line_end < 0 else line_end
        # An SMTP reply is shown from its code on; anything else as the whole line.
        text = head[found.start(1) if found.lastindex else line_start : line_end]
        first_indent = _indent(head[line_start:line_end])
        for line in head[line_end + 1 :].split("\n", 2)[:2]:
            if not line.strip() or _indent(line) <= first_indent:
                break
            text += " " + line.strip()
        return _tidy_reply(text)
    return None


# --------------------------------------------------------------------------------------------
# Detector results


@dataclass(frozen=True)
class _Finding:
    recipients: tuple[str, ...] = ()
    permanent: bool | None = None  # None: decide from the notification wording
    diagnostic: str | None = None
    not_a_bounce: bool = False  # e.g. a DSN that only reports successful delivery


_NOT_A_BOUNCE: Final = _Finding(not_a_bounce=True)

_Detector = Callable[[_Mail], _Finding | None]


# --------------------------------------------------------------------------------------------
# RFC 3464 delivery status notifications

_RECIPIENT_FIELDS: Final = ("original-recipient", "final-recipient", "x-actual-recipient")


def _parse_fields(text: str) -> list[dict[str, str]]:
    """Blank-line separated blocks of ``Name: value`` lines (with continuation lines)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in _normalise_newlines(text).split("\n"):
        if not line.strip():
            if current:
                blocks.append(current)
            current, last = {}, ""
        elif line[:1] in " \t" and last:
            current[last] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            last = name.strip().lower()
            current.setdefault(last, value.strip())
    if current:
        blocks.append(current)
    return blocks


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The field blocks of a message/delivery-status part, however it was encoded."""
    payload = part.get_payload()
    blocks: list[dict[str, str]] = []
    leftovers: list[str] = []
    if isinstance(payload, list):
        for block in payload:
            if not isinstance(block, Message):
                continue
            fields: dict[str, str] = {}
            for name, value in block.items():
                fields.setdefault(str(name).strip().lower(), " ".join(str(value).split()))
            if fields:
                blocks.append(fields)
            body = block.get_payload()
            if isinstance(body, str) and body.strip():
                leftovers.append(body)
    elif isinstance(payload, str):
        leftovers.append(payload)
    if any(f in block for block in blocks for f in _RECIPIENT_FIELDS):
        return blocks
    # Encoded (base64/quoted-printable) or unparsed: decode the text and parse it ourselves.
    raw = "\n".join(leftovers)
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    try:
        if encoding == "base64":
            raw = _decode_bytes(base64.b64decode("".join(raw.split()), validate=False), None)
        elif encoding == "quoted-printable":
            raw = _decode_bytes(quopri.decodestring(raw.encode("latin-1", "replace")), None)
    except (binascii.Error, ValueError):
        pass
    return blocks + _parse_fields(raw)


def _dsn_address(value: str) -> str | None:
    """``rfc822; <user@example.com>`` (or a bare/odd-typed address) -> the address."""
    kind, sep, rest = value.partition(";")
    text = rest if sep and "@" not in kind and "<" not in kind else value
    inner = re.search(r"<([^<>]*)>", text)
    return _clean_address(inner.group(1) if inner else text)


def _dsn_action(fields: dict[str, str]) -> str:
    """'failed', 'delayed' or 'delivered' for one per-recipient block."""
    action = fields.get("action", "").strip().lower()
    if action.startswith(("fail", "error", "bounce", "reject")):
        return "failed"
    if action.startswith("delay"):
        return "delayed"
    if action.startswith(("deliver", "relay", "expand")):
        return "delivered"
    status = fields.get("status", "").strip()
    return {"4": "delayed", "2": "delivered"}.get(status[:1], "failed")


def _dsn_diagnostic(fields: dict[str, str]) -> str | None:
    code = fields.get("diagnostic-code", "")
    kind, sep, rest = code.partition(";")
    if sep and " " not in kind.strip():
        code = rest
    return _tidy_reply(code) or _shorten(fields.get("status", ""))


def _delivery_status_parts(mail: _Mail) -> list[Message]:
    """message/delivery-status parts of the bounce itself; inside an attached message only
    when the outer mail is itself from a mail system (a report wrapped by a relay)."""
    wanted = _DELIVERY_STATUS_TYPES
    parts = [p for p in _parts(mail.msg, into_attached=False) if _content_type(p) in wanted]
    if not parts and mail.automated:
        parts = [p for p in _parts(mail.msg, into_attached=True) if _content_type(p) in wanted]
    return parts


def _detect_dsn(mail: _Mail) -> _Finding | None:
    parts = _delivery_status_parts(mail)
    if not parts:
        return None
    finding = _dsn_finding([fields for part in parts for fields in _status_blocks(part)])
    if finding is None:
        return _Finding()  # a report without per-recipient fields: its text may name them
    return finding


def _dsn_finding(blocks: list[dict[str, str]]) -> _Finding | None:
    """Failed (else delayed) recipients of DSN field blocks; None if no recipient block."""
    failed: list[str] = []
    delayed: list[str] = []
    diagnostics: dict[str, str | None] = {}
    seen_recipient_block = False
    for fields in blocks:
        if not any(f in fields for f in _RECIPIENT_FIELDS):
            continue
        seen_recipient_block = True
        action = _dsn_action(fields)
        if action == "delivered":
            continue
        address = next(filter(None, (_dsn_address(fields.get(f, "")) for f in _RECIPIENT_FIELDS)), None)
        diagnostics.setdefault(action, _dsn_diagnostic(fields))
        if address:
            (failed if action == "failed" else delayed).append(address)
    if failed or "failed" in diagnostics:
        return _Finding(_unique(failed), permanent=True, diagnostic=diagnostics.get("failed"))
    if delayed or "delayed" in diagnostics:
        return _Finding(_unique(delayed), permanent=False, diagnostic=diagnostics.get("delayed"))
    return _NOT_A_BOUNCE if seen_recipient_block else None  # all delivered/relayed/expanded


def _detect_dsn_in_text(mail: _Mail) -> _Finding | None:
    """DSN fields written into a text part (or a report whose MIME structure is broken)."""
    if not re.search(r"^(?:Final|Original)-Recipient:", mail.text, re.I | re.M):
        return None
    finding = _dsn_finding(_parse_fields(mail.text[:_HEAD_CHARS]))
    return None if finding is _NOT_A_BOUNCE else finding  # quoted text cannot veto other detectors


# --------------------------------------------------------------------------------------------
# Rule tables for the text formats


@dataclass(frozen=True)
class _Rule:
    """After a line where ``start`` matches, collect addresses until ``end`` (or max_lines)."""

    start: re.Pattern[str]
    address: re.Pattern[str]
    end: re.Pattern[str] | None = None
    max_lines: int = 40
    recognises: bool = True  # does a start match alone identify the format?


def _rule(start: str, address: str, end: str | None = None, *, max_lines: int = 40, recognises: bool = True) -> _Rule:
    """Build a rule; ``{addr}`` in ``address`` (or ``start``) stands for an address group."""
    flags = re.I | re.M
    return _Rule(
        start=re.compile(start.replace("{addr}", _ADDR), flags),
        address=re.compile(address.replace("{addr}", _ADDR), flags),
        end=re.compile(end, flags) if end else None,
        max_lines=max_lines,
        recognises=recognises,
    )


def _lines(text: str, offset: int, limit: int) -> Iterator[tuple[int, str]]:
    """Up to ``limit`` lines from ``offset``: (offset after the line, the line, truncated)."""
    for _ in range(limit):
        if offset > len(text):
            return
        end = text.find("\n", offset)
        end = len(text) if end < 0 else end
        yield end + 1, text[offset:end][:_MAX_LINE_CHARS]
        offset = end + 1


def _scan(text: str, rule: _Rule) -> tuple[bool, list[str]]:
    """(start matched?, addresses found) for one rule over the notification text."""
    found: list[str] = []
    matched = False
    pos = 0
    for _ in range(_MAX_BLOCKS):
        start = rule.start.search(text, pos)
        if start is None:
            break
        matched = True
        block_start = text.rfind("\n", 0, start.start()) + 1  # the start phrase's line
        pos = start.end()
        for number, (line_end, line) in enumerate(_lines(text, block_start, rule.max_lines)):
            pos = max(pos, line_end)
            hits = [a for m in rule.address.finditer(line) for g in m.groups() if g and (a := _clean_address(g))]
            if hits:
                found.extend(hits)
            elif number and rule.end is not None and rule.end.search(line):
                break
        if pos >= len(text):
            break
    return matched, found


def _by_rules(*rules: _Rule) -> _Detector:
    """A detector trying ``rules`` in order: the first that yields addresses wins."""

    def detect(mail: _Mail) -> _Finding | None:
        recognised = False
        for rule in rules:
            matched, found = _scan(mail.text, rule)
            if found:
                return _Finding(_unique(found))
            recognised = recognised or (matched and rule.recognises)
        return _Finding() if recognised else None

    return detect


# exim (and the many MTAs that copy its wording, e.g. kundenserver, mxlogic)
_EXIM = _by_rules(
    _rule(
        r"following\s+address(?:es|\(es\))?\s+failed|not\s+yet\s+been\s+delivered\s+to\s+the\s+following"
        r"\s+address|address\s+to\s+which\s+the\s+message\s+has\s+not\s+yet\s+been\s+delivered"
        r"|A\s+message\s+that\s+you\s+(?:have\s+)?sent\s+(?:could\s+not\s+be\s+delivered|has\s+not\s+yet\s+been)",
        r"^\s{0,4}<?{addr}>?:?(?:\s|$)|\(generated from {addr}\)",
        r"^[ \t]*-{2,}|^[ \t]*(?:No action is required|Included is a copy|Reporting-MTA)",
        max_lines=60,
    ),
)


def _detect_failed_recipients_header(mail: _Mail) -> _Finding | None:
    """``X-Failed-Recipients:`` (exim, Gmail) lists the failed addresses outright."""
    header = ",".join(str(v) for v in (mail.msg.get_all("X-Failed-Recipients") or []))
    listed = [a for raw in re.split(r"[,\s]+", header) if (a := _clean_address(raw))]
    return _Finding(_unique(listed)) if listed else None


_POSTFIX = _by_rules(
    _rule(
        r"This is the .{0,80}?program at host|I'm sorry to have to inform you that (?:the|your) message",
        r"^<{addr}>(?:\s*\(expanded from <{addr}>\))?:",
        r"^-{3,}",
        max_lines=80,
    ),
)

_SENDMAIL = _by_rules(
    _rule(
        r"the following addresses (?:had (?:permanent fatal|transient non-fatal) errors"
        r"|have delivery notifications)",
        r"^[ \t]*<?{addr}>?[ \t]*$|^[ \t]*<{addr}>|\(expanded from:\s*<?{addr}>?\)",
        r"^[ \t]*-{3,}",
    ),
)

_YAHOO = _by_rules(
    _rule(
        r"Unable to deliver message to the following address\(es\)"
        r"|unable to deliver your message to the following address",
        r"^[ \t]*<{addr}>:",
        r"^[ \t]*-{2,}",
    ),
)

_QMAIL = _by_rules(
    # QSBMF (http://cr.yp.to/proto/qsbmf.txt) and the intros seen in the wild.
    _rule(
        r"This is the qmail-send program|I'm afraid I wasn't able to deliver your message"
        r"|We're sorry\. There's a problem|Check your send e-mail address|Hi\. The MTA program at"
        r"|This is the mail delivery agent at|Unfortunately, your mail was not delivered"
        r"|Su mensaje no pudo ser entregado|This is the machine generated message from mail service"
        r"|Your mail message to the following address\(es\) could not be delivered",
        r"^[ \t]*<{addr}>:",
        r"^[ \t]*-{2,}",
        max_lines=100,
    ),
)

# Any QSBMF-like "<address>:" paragraph before the break line (e.g. sina.com), whatever the intro.
_QMAIL_LIKE = _by_rules(_rule(r"\A", r"^[ \t]*<{addr}>:", r"^[ \t]*-{2,}", max_lines=100, recognises=False))


def _detect_aol(mail: _Mail) -> _Finding | None:
    """AOL lists screen names, one per indented line: ``screenname`` -> screenname@aol.com."""
    start = re.search(r"Your mail to the following recipients could not be delivered", mail.text, re.I)
    if start is None:
        return None
    from_aol = mail.sender.endswith("aol.com")
    found: list[str] = []
    for line in mail.text[start.end() :].split("\n")[1:30]:
        token = line.strip()
        if not token:
            if found:
                break
            continue
        if line[:1] not in " \t" or " " in token:
            break
        address = _clean_address(token if "@" in token or not from_aol else f"{token}@aol.com")
        if address:
            found.append(address)
    return _Finding(_unique(found))


_EXCHANGE = _by_rules(
    # Exchange 5.5-2003: "did not reach the following recipient(s): user@example.com on <date>"
    _rule(
        r"did not reach the following recipient|The following recipient\(s\) (?:cannot|could not) be reached",
        r"^[ \t]*(?:.*?SMTP[=:])?'?\[?{addr}\]?'?;?(?:\s+on\s|[ \t]*$)|^[ \t]*Recipient:\s*\[?(?:SMTP:)?{addr}",
        r"^[ \t]*-{3,}|^[ \t]*_{3,}|^[ \t]*Error Type",
        max_lines=60,
    ),
    # Exchange 2007+ / Office 365 (when no DSN part came along).
    _rule(
        r"Delivery has failed to these recipients or (?:groups|distribution lists)"
        r"|Die Zustellung an folgende Empfänger oder Gruppen ist fehlgeschlagen"
        r"|La remise a échoué pour les destinataires ou groupes suivants"
        r"|Det gick inte att leverera till följande mottagare eller grupper"
        r"|Bezorging is mislukt voor deze ontvangers of groepen"
        r"|Error en la entrega a estos destinatarios o grupos",
        r"^[ \t]*(?:\*\s*)?\[?{addr}|\({addr}\)[ \t]*$|<mailto:{addr}>",
        r"Diagnostic information for administrators|Original message (?:headers|details)|^[ \t]*_{5,}",
        max_lines=30,
    ),
    _rule(r"Your message to {addr} couldn't be delivered", r"Your message to {addr} couldn't be delivered"),
)

_GROUPWISE = _by_rules(
    _rule(
        r"The message that you sent was undeliverable to the following|undeliverable to the following",
        r"^[ \t]*{addr}",
        r"^[ \t]*(?:Possible solutions|Original message|-{3,})",
    ),
)

_LOTUS_NOTES = _by_rules(
    _rule(r"was not delivered to:", r"^[ \t]*{addr}[ \t]*$", r"^[ \t]*because:", max_lines=20),
)

_SMTP32_LINE = (
    r"^[ \t]*(?:Delivery failed \d+ attempts|undeliverable\s+to|Unknown user|Invalid final delivery userid):?\s*{addr}"
)
_SMTP32 = _by_rules(_rule(_SMTP32_LINE, _SMTP32_LINE, r"Original message follows"))

# "Simple match": (start, address, end) phrases from many small MTAs, after flufl.bounce's table.
_SIMPLE_MATCH = _by_rules(
    _rule(r"here is your list of failed recipients", r"<{addr}>", r"here is your returned mail"),
    _rule(
        r"message from interscan (?:e-mail viruswall|messaging security)",
        r"rcpt to:\s*<{addr}>|to <{addr}>",
        r"end of message",
    ),
    _rule(r"^[ \t]*Unable to deliver message to", r"<{addr}>", r"\*+\s+End of message\s+\*+"),
    _rule(r"failed addresses follow:", r"^[ \t]*{addr}", r"message text follows:"),
    _rule(
        r"The following addresses did NOT receive a copy of your message:",
        r"^[ \t]*>\s*{addr}",
        r"--- Session Transcript ---",
    ),
    _rule(r"Intended recipient:\s*{addr}", r"Intended recipient:\s*{addr}", r"RETURNED MAIL FOLLOWS"),
    _rule(r"Undeliverable Address:\s*{addr}", r"Undeliverable Address:\s*{addr}", r"Original message attached"),
    _rule(
        r"This message was created automatically by mail delivery",
        r"addressed to '{addr}'",
        r"^---- START OF RETURNED MESSAGE ----",
    ),
    _rule(r"User's mailbox is full:", r"User's mailbox is full:\s*<{addr}>", r"Unable to deliver mail"),
    _rule(r"The email below could not be delivered to the following user:", r"<{addr}>", r"Old message:"),
    _rule(
        r"Del[ie]very to the following recipients? (?:failed|was aborted|has been delayed)",
        r"^[ \t*]*{addr}[ \t]*$",
        r"^[ \t]*(?:Technical details|-{3,}|={3,}|Message will be retried)",
    ),
    _rule(r"Your message wasn't delivered to {addr}", r"wasn't delivered to {addr}"),
    _rule(r"problem delivering your message to {addr}", r"delivering your message to {addr}"),
    _rule(r"^[ \t]*Sorry, unable to deliver your message to", r"{addr}", r"^[ \t]*A copy of the original message"),
    _rule(r"^[ \t]*A message could not be delivered to:", r"^[ \t]*{addr}[ \t]*$", r"^[ \t]*Subject:"),
    _rule(r"------ Failed Recipients ------", r"<{addr}>", r"-------- Returned Mail --------"),
    _rule(r"^--> Error description:[ \t]*$", r"^Error-for:\s+{addr}", r"^Error-End:"),
    _rule(r"Your message could not be delivered to", r"^[ \t]*{addr}", r"^[ \t]*(?:$|\*{3,})", max_lines=5),
    _rule(r"Your message has encountered delivery problems", r"addressed to\s*{addr}", r"Your message reads"),
    _rule(r"Did not reach the following recipient", r"\s{addr}", r"^[ \t]*$"),
    _rule(r"This is the deliver program at", r"^[ \t]*{addr}", r"^[ \t]*-"),
    _rule(r"this is the email server at", r"\s{addr}[\s,]", r"^[ \t]*-"),
    _rule(r"^{addr}\s+-\s+no such user here", r"^{addr}\s+-\s+no such user here", r"There is no user"),
    _rule(
        r"The following recipient\(s\) could not be reached",
        r"^[ \t]*(?:Recipient:\s*\[?(?:SMTP:)?)?{addr}",
        r"^[ \t]*(?:Error Type|Reason:)",
    ),
    _rule(
        r"Could not deliver message to the following recipient",
        r"Failed Recipient:\s*{addr}",
        r"^[ \t]*-- The header",
    ),
    _rule(r"Message not delivered to the following", r"^[ \t]*{addr}", r"Error detail"),
    _rule(
        r"The following recipients did not receive (?:this|your) message",
        r"<{addr}>",
        r"^[ \t]*(?:Please reply|-{3,})",
    ),
    _rule(r"The\s+address\s+to\s+which\s+your\s+message\s+was\s+addressed", r"addressed,\s*{addr},"),
    _rule(r"Your message to <?{addr}>? was automatically rejected", r"Your message to <?{addr}>? was"),
    _rule(r"Local mailbox {addr} is unavailable", r"mailbox\s+{addr}\s+is\s+unavailable"),
    _rule(r"addressed to email address\s*:", r"^[ \t]*--\s*{addr}", r"^[ \t]*With subject"),
    _rule(r"Delivery of email to this address", r"^[ \t]*\"?{addr}\"?[ \t]*$", r"^[ \t]*has (?:failed|been postponed)"),
    _rule(r"could not be delivered to the following recipients:", r"^[ \t]*{addr}[ \t]*$", r"^[ \t]*(?:Please|-{3,})"),
    _rule(
        r"^[ \t]*Your message to:[ \t]*$",
        r"^[ \t]*{addr}[ \t]*$",
        r"not yet been delivered|not be delivered",
        max_lines=8,
    ),
    _rule(r"wasn't able to deliver the following message", r"^[ \t]*To:\s*{addr}", r"^[ \t]*-{3}"),
    _rule(r"Your mail cannot be delivered to the following address", r"^[ \t]*<?{addr}>?", r"^[ \t]*-{3,}"),
    _rule(r"The following mail could not be delivered", r"<{addr}>", r"End of message"),
)


_MAILER_DAEMON: Final = re.compile(r"mailer[-_. ]?daemon|mail[-_. ]?daemon|mdaemon|mail[-_. ]?delivery", re.I)


def _detect_mailer_daemon(mail: _Mail) -> _Finding | None:
    """Last resort: a mail system's delivery-failure notice in a format we do not know.

    A postmaster is sometimes a person, so a postmaster-like sender and a failure subject
    are not enough on their own: the mail must also carry a machine mark."""
    machine = (
        mail.null_sender
        or mail.auto_submitted
        or mail.attached_original
        or bool(_MAILER_DAEMON.search(mail.sender) or _MAILER_DAEMON.search(mail.sender_name))
    )
    return _Finding() if mail.bounce_subject and mail.daemon and machine else None


# --------------------------------------------------------------------------------------------
# The detector table


@dataclass(frozen=True)
class _Entry:
    kind: str
    detect: _Detector
    heuristic: bool = True  # needs a machine-generated, non-vacation mail


_DETECTORS: Final[tuple[_Entry, ...]] = (
    _Entry("dsn", _detect_dsn, heuristic=False),
    _Entry("dsn", _detect_dsn_in_text),
    _Entry("x-failed-recipients", _detect_failed_recipients_header),
    _Entry("exim", _EXIM),
    _Entry("postfix-text", _POSTFIX),
    _Entry("sendmail-text", _SENDMAIL),
    _Entry("yahoo", _YAHOO),
    _Entry("qmail", _QMAIL),
    _Entry("aol", _detect_aol),
    _Entry("exchange", _EXCHANGE),
    _Entry("groupwise", _GROUPWISE),
    _Entry("lotus-notes", _LOTUS_NOTES),
    _Entry("smtp32", _SMTP32),
    _Entry("simplematch", _SIMPLE_MATCH),
    _Entry("qmail", _QMAIL_LIKE),
    _Entry("mailer-daemon", _detect_mailer_daemon),
)


def _detect(mail: _Mail) -> Bounce | None:
    recognised: tuple[str, _Finding] | None = None
    for entry in _DETECTORS:
        if entry.heuristic and (mail.vacation or not mail.automated):
            continue
        try:
            finding = entry.detect(mail)
        except Exception:
            continue
        if finding is None:
            continue
        if finding.not_a_bounce:
            return None
        if finding.recipients:
            return _make_bounce(mail, entry.kind, finding)
        if recognised is None:
            recognised = (entry.kind, finding)
    if recognised is not None and mail.from_mail_system:
        return _make_bounce(mail, *recognised)
    return None


def _make_bounce(mail: _Mail, kind: str, finding: _Finding) -> Bounce:
    permanent = finding.permanent
    if permanent is None:
        permanent = _guard(lambda: _text_is_permanent(mail), True)
    diagnostic = finding.diagnostic or _guard(lambda: _text_diagnostic(mail), None)
    return Bounce(
        recipients=finding.recipients,
        permanent=permanent,
        kind=kind,
        original_message_id=_guard(lambda: _original_message_id(mail), None),
        diagnostic=diagnostic,
    )


def _guard(compute: Callable[[], _T], default: _T) -> _T:
    try:
        return compute()
    except Exception:
        return default


# --------------------------------------------------------------------------------------------
# Message-ID of the mail that bounced

_INLINE_MESSAGE_ID: Final = re.compile(r"^[ \t>]*Message-ID:[ \t]*(?:\n[ \t>]+)?(<[^<>\s]+>)", re.I | re.M)


def _normalise_message_id(value: object) -> str | None:
    text = " ".join(str(value or "").split())
    bracketed = re.search(r"<[^<>\s]+>", text)
    if bracketed:
        return bracketed.group(0)
    if text and " " not in text and len(text) < 500:
        return f"<{text}>"
    return None


def _attached_message_id(part: Message) -> str | None:
    """Message-ID of an attached original (full message or headers only)."""
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload else None
    if isinstance(inner, Message):
        found = _normalise_message_id(_header_text(inner, "Message-ID"))
    else:
        text = _normalise_newlines(_part_text(part)).lstrip("\n")
        found = _normalise_message_id(_header_text(HeaderParser().parsestr(text), "Message-ID"))
        if not found:
            match = _INLINE_MESSAGE_ID.search(text)
            found = match.group(1) if match else None
    # A part missing the blank line after its own headers carries the original's headers itself.
    return found or _normalise_message_id(_header_text(part, "Message-ID"))


def _original_message_id(mail: _Mail) -> str | None:
    for part in _parts(mail.msg, into_attached=True):
        if part is mail.msg:
            continue
        ctype = _content_type(part)
        found: str | None = None
        if ctype in _ATTACHED_ORIGINAL_TYPES:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and _content_type(inner) == "multipart/report":
                continue  # a report wrapped by a relay: the original is further in
            found = _attached_message_id(part)
        elif ctype == "message/disposition-notification":
            for fields in _status_blocks(part):
                found = found or _normalise_message_id(fields.get("original-message-id"))
        if found:
            return found
    match = _INLINE_MESSAGE_ID.search(mail.text)
    if match:
        return match.group(1)
    # Some MTAs (Exchange, Gmail) thread the notification onto the mail that bounced.
    return _normalise_message_id(_header_text(mail.msg, "In-Reply-To"))
