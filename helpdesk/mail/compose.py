"""Build the bytes of an outgoing mail, and the subjects of replies and notifications. No IO.

``compose`` produces an RFC 5322 message with CRLF line endings that is 7-bit clean: non-ASCII header
text is RFC 2047 encoded, bodies are quoted-printable or base64 whenever they are not short-lined
ASCII, so no line exceeds 998 octets and no relay needs 8BITMIME. Every header value given is
stripped of CR, LF and other control characters (a line break cannot start a new header), extra
header names are checked, and Message-ID, In-Reply-To and References are written verbatim (folded
between ids only), never as encoded words that would break threading in the recipients' clients.

Invalid addresses, an invalid extra header name, an extra header that ``compose`` writes itself,
an unusable Message-ID (empty, non-ASCII, over 900 characters) or a naive date raise ``ValueError``.
"""

from __future__ import annotations

import email.policy
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.utils import format_datetime

# 7-bit output with CRLF; headers stored raw (ids, ASCII extra headers) are written as folded here.
_POLICY = email.policy.SMTP.clone(cte_type="7bit", refold_source="none")
_MAX_LINE = 78
_MAX_REFERENCES = 20
_MAX_ID_LENGTH = 900

_CONTROL = re.compile(r"[ \t]*[\x00-\x1f\x7f\x85\u2028\u2029]+[ \t]*")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")
_ID_JUNK = re.compile(r"[\s<>\x00-\x1f\x7f]+")
_CONTENT_TYPE = re.compile(r"^([a-z0-9][a-z0-9!#$&^_.+-]*)/([a-z0-9][a-z0-9!#$&^_.+-]*)$")
_PRINTABLE_ASCII = re.compile(r"^[ -~]*$")

# Headers compose writes itself (and Bcc, which never belongs in a sent message).
_RESERVED = frozenset(
    {
        "from",
        "to",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "mime-version",
        "bcc",
    }
)

_PREFIX = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|r[ée]f|tr|wg|fw|fwd|rv|odp|enc|r)\s*(?:\[\d+\])?\s*[:：]\s*)+", re.IGNORECASE
)
_TAG_INNER = re.compile(r"^\[#?(.*)\]$")


@dataclass(frozen=True)
class OutgoingAttachment:
    """A file attached to an outgoing mail; ``inline`` with a ``content_id`` for images the html shows."""

    filename: str | None
    content_type: str
    data: bytes
    content_id: str | None = None
    inline: bool = False


@dataclass(frozen=True)
class Outgoing:
    """Everything ``compose`` needs; ids are given without angle brackets, ``to`` as (name, address)."""

    from_address: str
    from_name: str
    to: tuple[tuple[str, str], ...]
    subject: str
    text: str
    date: datetime
    message_id: str
    html: str | None = None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    auto_submitted: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[OutgoingAttachment, ...] = ()


def make_message_id(domain: str, now: datetime, unique: str | None = None) -> str:
    """``20260302T090000.<16 hex>@domain`` (no brackets); random unless ``unique`` is given."""
    domain = _clean_id(domain).strip("@")
    if not domain:
        raise ValueError("make_message_id needs a domain")
    if now.tzinfo is not None:
        now = now.astimezone(UTC)
    token = _clean_id(unique).replace("@", "") if unique is not None else secrets.token_hex(8)
    return f"{now.strftime('%Y%m%dT%H%M%S')}.{token}@{domain}"


def compose(out: Outgoing) -> bytes:
    """The complete message, CRLF line endings, ready for SMTP."""
    if out.date.tzinfo is None or out.date.utcoffset() is None:
        raise ValueError("Outgoing.date must be timezone-aware")
    message_id = _clean_id(out.message_id)
    if not _usable_id(message_id):
        raise ValueError(f"Outgoing.message_id is not a usable Message-ID: {out.message_id!r}")
    extra = [(_check_header_name(name), _header_value(value)) for name, value in out.headers]

    msg = EmailMessage(policy=_POLICY)
    msg["From"] = _address(out.from_name, out.from_address)
    if out.to:
        msg["To"] = [_address(name, address) for name, address in out.to]
    if out.reply_to is not None:
        msg["Reply-To"] = _address("", out.reply_to)
    msg["Subject"] = _header_value(out.subject)
    msg["Date"] = format_datetime(out.date)
    msg.set_raw("Message-ID", f"<{message_id}>")
    in_reply_to = _clean_id(out.in_reply_to or "")
    if _usable_id(in_reply_to):
        msg.set_raw("In-Reply-To", f"<{in_reply_to}>")
    references = _trim_references([_clean_id(r) for r in out.references])
    if references:
        msg.set_raw("References", _fold_words("References", [f"<{r}>" for r in references]))
    auto_submitted = _header_value(out.auto_submitted or "")
    if auto_submitted:
        _set_header(msg, "Auto-Submitted", auto_submitted)
    for name, value in extra:
        _set_header(msg, name, value)

    msg.set_content(_body_text(out.text), subtype="plain", charset="utf-8")
    inline = [a for a in out.attachments if a.inline]
    regular = [a for a in out.attachments if not a.inline]
    if out.html is not None:
        msg.add_alternative(_body_text(out.html), subtype="html", charset="utf-8")
        if inline:
            html_part = list(msg.iter_parts())[1]
            for attachment in inline:
                _attach(html_part, attachment, related=True)
            html_part.set_param("type", "text/html")
            inline = []
    for attachment in (*inline, *regular):
        _attach(msg, attachment, related=False)
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]
    return msg.as_bytes(policy=_POLICY)


def reply_subject(subject: str, tag: str) -> str:
    """``Re: [SUP-12] Printer on fire`` for any earlier form of the subject (prefixes and tag removed)."""
    tag = _header_value(tag)
    rest = _subject_rest(subject, tag)
    return f"Re: {tag} {rest}" if rest else f"Re: {tag}"


def tagged_subject(subject: str, tag: str) -> str:
    """``[SUP-12] Printer on fire``: the subject without reply prefixes, tagged once."""
    tag = _header_value(tag)
    rest = _subject_rest(subject, tag)
    return f"{tag} {rest}" if rest else tag


# --- helpers -----------------------------------------------------------------------------------------


def _header_value(value: str) -> str:
    """One line of text: control characters (CR, LF, ...) become a single space; lone surrogates '?'."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    return _CONTROL.sub(" ", value).strip()


def _clean_id(value: str) -> str:
    """A Message-ID (or part of one) without brackets, whitespace or control characters."""
    return _ID_JUNK.sub("", value)


def _usable_id(value: str) -> bool:
    return bool(value) and len(value) <= _MAX_ID_LENGTH and _PRINTABLE_ASCII.match(value) is not None


def _trim_references(ids: list[str]) -> list[str]:
    """Usable ids in order; more than 20 keep the first and the last 19."""
    usable = [i for i in ids if _usable_id(i)]
    if len(usable) > _MAX_REFERENCES:
        usable = [usable[0], *usable[-(_MAX_REFERENCES - 1) :]]
    return usable


def _address(name: str, address: str) -> Address:
    """An address with a properly quoted/encoded display name; ValueError when the address is invalid."""
    addr_spec = _header_value(address).strip("<>").strip()
    if "@" not in addr_spec:
        raise ValueError(f"not an email address: {address!r}")
    try:
        return Address(display_name=_header_value(name), addr_spec=addr_spec)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"not an email address: {address!r}") from exc


def _check_header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"invalid header name: {name!r}")
    lower = name.lower()
    if lower in _RESERVED or lower.startswith("content-"):
        raise ValueError(f"header {name!r} is written by compose itself")
    return name


def _fold_words(name: str, words: list[str]) -> str:
    """Join words with spaces, breaking lines between words so that lines stay within 78 characters."""
    lines: list[str] = []
    line = ""
    width = len(name) + 2
    for word in words:
        if line and width + len(line) + 1 + len(word) > _MAX_LINE:
            lines.append(line)
            line, width = word, 1
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return "\n ".join(lines)


def _set_header(msg: EmailMessage, name: str, value: str) -> None:
    """Printable ASCII verbatim (folded at spaces, so URLs and ids stay intact), anything else RFC 2047 encoded."""
    words = value.split(" ")
    if _PRINTABLE_ASCII.match(value) and all(len(w) <= _MAX_ID_LENGTH for w in words):
        msg.set_raw(name, _fold_words(name, [w for w in words if w]))
    else:
        msg[name] = value


def _body_text(text: str) -> str:
    """Line endings normalised; NUL characters dropped; lone surrogates replaced."""
    text = text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _attach(target: MIMEPart, attachment: OutgoingAttachment, *, related: bool) -> None:
    maintype, subtype = _content_type(attachment.content_type)
    filename = _header_value(attachment.filename) if attachment.filename else None
    cid = _clean_id(attachment.content_id or "")
    disposition = "inline" if attachment.inline else "attachment"
    add = target.add_related if related else target.add_attachment
    add(
        attachment.data,
        maintype,
        subtype,
        disposition=disposition,
        filename=filename or None,
        cid=f"<{cid}>" if cid else None,
    )


def _content_type(value: str) -> tuple[str, str]:
    """``(maintype, subtype)``; message/* and multipart/* (which may not be base64-encoded) and anything
    malformed are sent as application/octet-stream."""
    match = _CONTENT_TYPE.match(value.split(";", 1)[0].strip().lower())
    if match is None or match.group(1) in ("message", "multipart"):
        return "application", "octet-stream"
    return match.group(1), match.group(2)


def _subject_rest(subject: str, tag: str) -> str:
    """The subject without leading reply/forward prefixes and without any occurrence of ``tag``."""
    inner = _TAG_INNER.match(tag)
    tag_pattern = re.compile(rf"\[#?{re.escape(inner.group(1))}\]" if inner else re.escape(tag), re.IGNORECASE)
    rest = _header_value(subject)
    while True:
        before = rest
        rest = _PREFIX.sub("", rest)
        if tag:
            rest = tag_pattern.sub(" ", rest)
        rest = " ".join(rest.split())
        if rest == before:
            return rest
