"""A local Microsoft Graph mail endpoint for tests and benchmarks, with fault injection.

``GraphServer`` serves the part of Microsoft Graph v1.0 that a mailbox adapter and a sender use:
delta sync of a folder, raw MIME download (``$value``), get, move, mark read, delete, mail folders,
drafts from MIME or JSON, attachments and attachment upload sessions, send and sendMail. It speaks
plain HTTP on 127.0.0.1 through ``http.server.ThreadingHTTPServer``, so concurrency, latency and
per-mailbox in-flight counts are real::

    with GraphServer(latency=(0.01, 0.03)) as graph:
        graph.tokens.add("token")
        graph.add_mailbox("support@example.test")
        graph.deliver("support@example.test", mime_bytes)
        ...  # point the client at graph.url ("http://127.0.0.1:PORT/v1.0")
        assert graph.violations == []

The shapes follow Microsoft's documentation (message delta and "Get incremental changes to messages
in a folder", "Get MIME content of a message", message move/update/delete, mailFolder list/create,
"Create message" and "user: sendMail" in MIME, message send, attachment createUploadSession and
"Attach large files to Outlook messages", throttling and the Outlook service limits, the error
resource): JSON errors are ``{"error": {"code", "message", "innerError": {...}}}``; a lost delta sync
state answers ``410 Gone`` with code ``SyncStateNotFound`` and a ``Location`` of the initial delta
query; removed items in a delta round are ``{"id", "@removed": {"reason": "deleted"}}``; upload
sessions answer ``nextExpectedRanges`` as ``["0-"]`` and then ``["{start}"]`` and finish with
``201`` plus ``Location``.

Besides answering, the server records what a client did that the real service would punish, in
``violations``: a request for a mailbox that starts before a ``Retry-After`` it was given has ended,
more than ``max_in_flight`` concurrent requests for one mailbox (answered ``429`` with
``ApplicationThrottled`` / MailboxConcurrency, as Outlook does), a delta request without
``Prefer: IdType="ImmutableId"``, an upload chunk that is not a multiple of 320 KiB (except the
last) or above 4 MiB, and an ``Authorization`` header on a pre-authenticated upload URL.

A request that starts within ``RACE_GRACE`` of a throttled answer is not counted as early: it
crossed that answer on the wire. Requests the fake itself fails on answer 500 and leave their
traceback in ``server_errors``.

Faults are injected per request kind (``Hit.kind``): ``throttle`` (429/503 with ``Retry-After``),
``fail`` (503/504 without), ``drop_connection`` (the socket closes before the operation happens),
plus ``expire_tokens``, ``lose_sync_state``, ``duplicate_next_page`` and ``forbid`` / ``allow``.
Documented limits are enforced as the service does: a request body above ``mime_limit`` answers
413, a file attachment POSTed whole must stay under ``large_attachment`` (3 MB) and an upload
session must be at least that large.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email
import email.policy
import functools
import itertools
import json
import math
import mimetypes
import random
import re
import secrets
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import formataddr, formatdate, getaddresses, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from tests.servers.running import Running

UPLOAD_CHUNK_UNIT = 320 * 1024  # upload chunks must be multiples of this, except the last
UPLOAD_CHUNK_MAX = 4 * 1024 * 1024  # documented upper bound of one PUT to an upload session
LARGE_ATTACHMENT = 3 * 1024 * 1024  # POST .../attachments below this, upload sessions from it
UPLOAD_SESSION_MAX = 150 * 1024 * 1024
MAX_PAGE_SIZE = 1000  # cap on Prefer: odata.maxpagesize and $top
RACE_GRACE = 0.05  # requests starting this soon after a Retry-After answer crossed it on the wire
STREAM_CHUNK = 64 * 1024
UPLOAD_SESSION_LIFETIME = timedelta(minutes=15)

KINDS = frozenset(
    {
        "delta",
        "value",
        "move",
        "patch",
        "delete",
        "folders",
        "create_folder",
        "create_message",
        "send",
        "sendmail",
        "upload_session",
        "upload",
        "attachment",
        "get_message",
        "other",
    }
)

# well-known folder name -> display name; msgfolderroot is the parent of the others
WELL_KNOWN = {
    "msgfolderroot": "Top of Information Store",
    "inbox": "Inbox",
    "drafts": "Drafts",
    "sentitems": "Sent Items",
    "deleteditems": "Deleted Items",
    "archive": "Archive",
}

JSON_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
WWW_AUTHENTICATE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000"'
)
_MESSAGE_PREFIX = b"\x00\x09\x00\x2e\x00\x00"  # base64 "AAkALgAA", like Outlook immutable ids
_FOLDER_PREFIX = b"\x01\x03\x24\x00\x30\x00"  # base64 "AQMkADAA"
_OTHER_PREFIX = b"\x00\x0a\x00\x2e\x00\x00"
_KEYED_SEGMENT = re.compile(r"^([^()]+)\('(.*)'\)$")
_NAME_FILTER = re.compile(r"^\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*$", re.IGNORECASE)
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE)
_SMTP = email.policy.SMTP.clone(max_line_length=998)  # CRLF; long header lines are not refolded

Entry = tuple[str, bool]  # (message id, removed) in a delta round


# --- public records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attachment:
    """A file attached to a stored message through the API (POST attachments or an upload session)."""

    id: str
    name: str
    content_type: str
    data: bytes
    is_inline: bool = False
    content_id: str | None = None
    modified: str = ""


@dataclass
class Message:
    """One stored message. ``id`` behaves like an Outlook immutable id: it survives moves."""

    id: str
    folder_id: str
    mime: bytes
    is_read: bool
    internet_message_id: str
    subject: str
    sender: str
    received: str
    change_key: str
    is_draft: bool
    attachments: list[Attachment] = field(default_factory=list)
    modseq: int = 0


@dataclass
class SentMail:
    """A message the service transmitted (sendMail, or a draft sent with /send).

    ``mime`` is what went on the wire: Bcc removed, API-added attachments appended as MIME parts;
    ``recipients`` come from To, Cc and Bcc; ``attachments`` are the attachment parts of ``mime``.
    """

    mime: bytes
    recipients: list[str]
    internet_message_id: str
    attachments: list[tuple[str, str, bytes]]
    mailbox: str = ""
    route: str = ""  # "sendmail" or "send"


@dataclass
class Hit:
    """One request as the server saw it; ``status`` 0 means the connection was dropped unanswered."""

    method: str
    path: str
    query: str
    status: int
    started: float
    finished: float
    token: str | None
    mailbox: str | None = None

    @property
    def kind(self) -> str:
        return classify(self.method, self.path)


# --- internal state --------------------------------------------------------------------------------


@dataclass
class _Folder:
    id: str
    display_name: str
    parent_id: str
    well_known: str | None = None
    hidden: bool = False


@dataclass
class _Mailbox:
    address: str
    number: int
    folders: dict[str, _Folder] = field(default_factory=dict)
    well_known: dict[str, str] = field(default_factory=dict)
    messages: dict[str, Message] = field(default_factory=dict)
    seq: int = 0  # bumped by every change; a message's modseq is the seq of its last change
    generation: int = 0  # bumped by lose_sync_state; older sync tokens then answer 410


@dataclass
class _Round:
    """The entries of one delta round, computed when it starts and served page by page."""

    id: int
    address: str
    folder_id: str
    entries: list[Entry]
    members: tuple[str, ...]  # folder contents when the round started
    seq: int
    select: tuple[str, ...] | None
    change_type: str | None
    generation: int
    duplicates: dict[int, Entry] = field(default_factory=dict)  # offset -> entry repeated there


@dataclass
class _DeltaState:
    """What a delta token stands for: the folder as the client has seen it."""

    id: int
    address: str
    folder_id: str
    members: tuple[str, ...]
    seq: int
    select: tuple[str, ...] | None
    change_type: str | None
    generation: int
    replay: Entry | None = None


@dataclass
class _UploadSession:
    id: str
    address: str
    message_id: str
    name: str
    size: int
    content_type: str
    is_inline: bool
    content_id: str | None
    authtoken: str
    expires: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Fault:
    action: str  # "throttle", "fail" or "drop"
    remaining: int
    kind: str | None
    status: int = 0
    retry_after: int | None = None


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    stream: bytes | None = None  # sent with chunked transfer encoding


class _GraphError(Exception):
    """An error answer in Graph's JSON error shape."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


@dataclass
class _Exchange:
    """One request in progress."""

    handler: _Handler
    method: str
    path: str
    raw_query: str
    query: dict[str, str]
    area: str  # "graph", "upload" or "other"
    rest: list[str]
    kind: str
    token: str | None
    started: float
    prefer: dict[str, str]
    request_id: str
    client_request_id: str
    address: str | None = None
    body: bytes = b""
    over_limit: bool = False
    too_early: bool = False
    applied: list[str] = field(default_factory=list)
    done: bool = False

    @property
    def immutable(self) -> bool:
        return self.prefer.get("idtype", "").lower() == "immutableid"


@dataclass(frozen=True)
class _MimeInfo:
    """What the API shows of a MIME message."""

    subject: str = ""
    sender: tuple[str, str] = ("", "")
    to: tuple[tuple[str, str], ...] = ()
    cc: tuple[tuple[str, str], ...] = ()
    bcc: tuple[tuple[str, str], ...] = ()
    reply_to: tuple[tuple[str, str], ...] = ()
    message_id: str = ""
    date: str | None = None
    body: str = ""
    body_type: str = "text"
    attachments: tuple[tuple[str, str, bytes], ...] = ()


# --- paths -------------------------------------------------------------------------------------------


def _segments(path: str) -> list[str]:
    """Path segments, percent-decoded, with OData key syntax ``name('key')`` split in two."""
    out: list[str] = []
    for raw in path.split("/"):
        if not raw:
            continue
        segment = unquote(raw)
        keyed = _KEYED_SEGMENT.match(segment)
        if keyed:
            out.extend([keyed.group(1), keyed.group(2).replace("''", "'")])
        else:
            out.append(segment)
    return out


def _parse_path(path: str) -> tuple[str, str | None, list[str]]:
    """(area, mailbox address lowercased, segments after the mailbox).

    Graph paths are ``/v1.0/users/{address}/...``; upload URLs are
    ``/api/v2.0/Users('{address}')/Messages('{id}')/AttachmentSessions('{session}')``.
    """
    segments = _segments(path)
    low = [s.lower() for s in segments]
    if len(segments) >= 3 and low[0] == "v1.0" and low[1] == "users":
        return "graph", segments[2].lower(), segments[3:]
    if len(segments) == 8 and low[:3] == ["api", "v2.0", "users"] and low[4::2] == ["messages", "attachmentsessions"]:
        return "upload", segments[3].lower(), segments[3:]
    return "other", None, segments


def _action(segment: str) -> str:
    """A segment lowercased, SDK-style ``microsoft.graph.move`` read as ``move``."""
    return segment.lower().removeprefix("microsoft.graph.")


def _classify_folders(method: str, low: list[str]) -> str:
    n = len(low)
    if n == 4 and low[2] == "messages" and low[3] == "delta":
        return "delta" if method == "GET" else "other"
    if n == 3 and low[2] == "messages":
        return "create_message" if method == "POST" else "other"
    if method == "POST" and (n == 1 or (n == 3 and low[2] == "childfolders")):
        return "create_folder"
    if method == "GET" and (n in (1, 2) or (n == 3 and low[2] == "childfolders")):
        return "folders"
    return "other"


def _classify_messages(method: str, low: list[str]) -> str:
    n = len(low)
    if n == 1:
        return "create_message" if method == "POST" else "other"
    if n == 2:
        return {"GET": "get_message", "PATCH": "patch", "DELETE": "delete"}.get(method, "other")
    action = low[2]
    if action == "attachments":
        if n == 4 and low[3] == "createuploadsession":
            return "upload_session" if method == "POST" else "other"
        return "attachment"
    if n == 3 and method == "GET" and action == "$value":
        return "value"
    if n == 3 and method == "POST" and action in ("move", "send"):
        return action
    return "other"


def classify(method: str, path: str) -> str:
    """The request kind used by ``Hit.kind`` and by fault injection."""
    area, _, rest = _parse_path(path)
    if area == "upload":
        return "upload"
    if area != "graph" or not rest:
        return "other"
    method = method.upper()
    low = [_action(s) for s in rest]
    if low[0] == "sendmail" and len(low) == 1:
        return "sendmail" if method == "POST" else "other"
    if low[0] == "mailfolders":
        return _classify_folders(method, low)
    if low[0] == "messages":
        return _classify_messages(method, low)
    return "other"


# --- helpers ------------------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso7(moment: datetime) -> str:
    """The seven-digit fraction Exchange uses in expirationDateTime."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def _b64id(prefix: bytes, mailbox: int, number: int) -> str:
    return base64.urlsafe_b64encode(prefix + mailbox.to_bytes(4, "big") + number.to_bytes(7, "big")).decode()


def _encode_token(data: dict[str, int]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str) -> dict[str, int] | None:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
        return None
    return data


def _new_internet_message_id() -> str:
    return f"<{secrets.token_hex(16)}@AM0PR00MB0000.eurprd00.prod.outlook.com>"


def _prefer(values: list[str]) -> dict[str, str]:
    """Prefer header preferences, keys lowercased, quotes removed from values."""
    prefs: dict[str, str] = {}
    for value in values:
        for item in value.split(","):
            key, _, val = item.strip().partition("=")
            if key.strip():
                prefs[key.strip().lower()] = val.strip().strip('"')
    return prefs


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _split_head(mime: bytes) -> tuple[bytes, bytes]:
    """The header block (with its last line end) and the rest (blank line and body)."""
    blank = re.search(rb"\r?\n\r?\n", mime)
    if blank is None:
        return mime, b""
    cut = blank.start() + (2 if mime[blank.start() : blank.start() + 2] == b"\r\n" else 1)
    return mime[:cut], mime[cut:]


def _without_header(head: bytes, name: str) -> tuple[bytes, int | None]:
    """The header block without any ``name`` field, and the offset where the first one stood."""
    prefix = name.lower().encode() + b":"
    out: list[bytes] = []
    skipping = False
    position: int | None = None
    size = 0
    for line in head.splitlines(keepends=True):
        if skipping and line[:1] in (b" ", b"\t"):
            continue
        skipping = line.lower().startswith(prefix)
        if skipping:
            if position is None:
                position = size
            continue
        out.append(line)
        size += len(line)
    return b"".join(out), position


def _strip_header(mime: bytes, name: str) -> bytes:
    head, rest = _split_head(mime)
    return _without_header(head, name)[0] + rest


def _set_header(mime: bytes, name: str, value: str) -> bytes:
    """Replace (or add at the top) one header field, leaving every other byte as it was."""
    head, rest = _split_head(mime)
    eol = b"\r\n" if b"\r\n" in head else b"\n"
    new, position = _without_header(head, name)
    position = 0 if position is None else position
    return new[:position] + f"{name}: {value}".encode() + eol + new[position:] + rest


def _addresses(message: EmailMessage, name: str) -> tuple[tuple[str, str], ...]:
    values = [str(v) for v in message.get_all(name, [])]
    return tuple((n, a) for n, a in getaddresses(values) if a)


def _body_of(message: EmailMessage) -> tuple[str, str, EmailMessage | None]:
    part = message.get_body(preferencelist=("html", "plain"))
    if not isinstance(part, EmailMessage):
        return "", "text", None
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        content = ""
    kind = "html" if part.get_content_subtype() == "html" else "text"
    return str(content), kind, part


def _attachments_of(message: EmailMessage, body: EmailMessage | None) -> tuple[tuple[str, str, bytes], ...]:
    found: list[tuple[str, str, bytes]] = []
    for part in message.walk():
        if part.is_multipart() or part is body:
            continue
        filename = part.get_filename()
        if part.get_content_disposition() == "attachment" or filename:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            found.append((filename or "", part.get_content_type(), data))
    return tuple(found)


@functools.lru_cache(maxsize=512)
def _mime_info(mime: bytes) -> _MimeInfo:
    """Parse the parts of a MIME message the API exposes (cached: messages are immutable bytes).

    Like the real service, a message whose headers cannot be parsed is still stored; it then exposes
    only its raw Message-ID."""
    try:
        return _parsed_mime_info(mime)
    except Exception:
        found = re.search(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", _split_head(mime)[0], re.IGNORECASE | re.MULTILINE)
        return _MimeInfo(message_id=found.group(1).decode("ascii", "replace") if found else "")


def _parsed_mime_info(mime: bytes) -> _MimeInfo:
    message = email.message_from_bytes(mime, policy=email.policy.default)
    if not isinstance(message, EmailMessage):  # pragma: no cover - policy.default always gives one
        return _MimeInfo()
    date: str | None = None
    try:
        raw_date = message.get("Date")
        if raw_date:
            date = _iso(parsedate_to_datetime(str(raw_date)).astimezone(UTC))
    except (TypeError, ValueError, IndexError):
        date = None
    body, body_type, body_part = _body_of(message)
    senders = _addresses(message, "From")
    return _MimeInfo(
        subject=str(message.get("Subject", "") or ""),
        sender=senders[0] if senders else ("", ""),
        to=_addresses(message, "To"),
        cc=_addresses(message, "Cc"),
        bcc=_addresses(message, "Bcc"),
        reply_to=_addresses(message, "Reply-To"),
        message_id=str(message.get("Message-ID", "") or "").strip(),
        date=date,
        body=body,
        body_type=body_type,
        attachments=_attachments_of(message, body_part),
    )


def _preview(info: _MimeInfo) -> str:
    text = re.sub(r"<[^>]*>", " ", info.body) if info.body_type == "html" else info.body
    return " ".join(text.split())[:255]


def _recipient(pair: tuple[str, str]) -> dict[str, Any]:
    name, address = pair
    return {"emailAddress": {"name": name or address, "address": address}}


def _format_recipient(value: Any) -> str:
    if not isinstance(value, dict):
        return ""
    inner = value.get("emailAddress") or {}
    address = str(inner.get("address") or "")
    return formataddr((str(inner.get("name") or ""), address)) if address else ""


def _decode_base64(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64decode(b"".join(raw.split()), validate=True)


def _add_attachments(mime: bytes, attachments: list[Attachment]) -> bytes:
    """Append API-added attachments as MIME parts (the message becomes multipart/mixed if needed)."""
    if not attachments:
        return mime
    message = email.message_from_bytes(mime, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    for attachment in attachments:
        maintype, _, subtype = attachment.content_type.partition("/")
        message.add_attachment(
            attachment.data,
            maintype=maintype or "application",
            subtype=subtype or "octet-stream",
            filename=attachment.name,
            disposition="inline" if attachment.is_inline else "attachment",
            cid=f"<{attachment.content_id}>" if attachment.content_id else None,
        )
    return message.as_bytes(policy=_SMTP)


def _mime_from_json(data: dict[str, Any], mailbox: str) -> bytes:
    """A MIME message for a JSON message resource (subject, body, recipients, headers, attachments)."""
    message = EmailMessage(policy=_SMTP)
    message["From"] = _format_recipient(data.get("from")) or mailbox
    for key, header in (
        ("toRecipients", "To"),
        ("ccRecipients", "Cc"),
        ("bccRecipients", "Bcc"),
        ("replyTo", "Reply-To"),
    ):
        values = [v for v in (_format_recipient(r) for r in data.get(key) or []) if v]
        if values:
            message[header] = ", ".join(values)
    message["Subject"] = str(data.get("subject") or "")
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = _new_internet_message_id()
    for header in data.get("internetMessageHeaders") or []:
        message[str(header["name"])] = str(header["value"])
    body = data.get("body") or {}
    subtype = "html" if str(body.get("contentType", "text")).lower() == "html" else "plain"
    message.set_content(str(body.get("content") or ""), subtype=subtype)
    for item in data.get("attachments") or []:
        name = str(item.get("name") or "attachment")
        content_type = str(item.get("contentType") or mimetypes.guess_type(name)[0] or "application/octet-stream")
        maintype, _, subtype = content_type.partition("/")
        message.add_attachment(
            _decode_base64(str(item.get("contentBytes") or "")), maintype=maintype, subtype=subtype, filename=name
        )
    return message.as_bytes()


def _dedupe(values: list[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        if value.lower() not in seen:
            seen.add(value.lower())
            out.append(value)
    return out


# --- HTTP plumbing ---------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the GraphServer; keeps connections alive (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def do_GET(self) -> None:
        self.server.graph._serve(self, "GET")

    def do_POST(self) -> None:
        self.server.graph._serve(self, "POST")

    def do_PATCH(self) -> None:
        self.server.graph._serve(self, "PATCH")

    def do_PUT(self) -> None:
        self.server.graph._serve(self, "PUT")

    def do_DELETE(self) -> None:
        self.server.graph._serve(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the server keeps its own record in ``hits``."""


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that can cut every open connection when stopped."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], graph: GraphServer) -> None:
        super().__init__(address, _Handler)
        self.graph = graph
        self._open: set[Any] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Connections cut by clients or by ``stop()`` are normal here."""

    def close_connections(self) -> None:
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _read_body(handler: _Handler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


# --- the server --------------------------------------------------------------------------------------


class GraphServer(Running):
    """A fake Microsoft Graph mail service on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        validate_token: Callable[[str], bool] | None = None,
        latency: tuple[float, float] = (0.0, 0.0),
        page_size: int = 10,
        mime_limit: int = 4 * 1024 * 1024,
        max_in_flight: int = 4,
    ) -> None:
        self.validate_token = validate_token
        self.latency = latency
        self.page_size = page_size
        self.mime_limit = mime_limit
        self.max_in_flight = max_in_flight
        self.tokens: set[str] = set()
        self.sent: list[SentMail] = []
        self.hits: list[Hit] = []
        self.max_seen_in_flight: dict[str, int] = {}
        self.violations: list[str] = []
        self.server_errors: list[str] = []  # tracebacks of requests the fake itself failed on (answered 500)
        self.assign_message_ids = False
        self.large_attachment = LARGE_ATTACHMENT  # documented 3 MB boundary between the two attach routes
        self.url = ""
        self._lock = threading.RLock()
        self._mailboxes: dict[str, _Mailbox] = {}
        self._forbidden: dict[str, tuple[int, str]] = {}
        self._expired: set[str] = set()
        self._accepted: set[str] = set()
        self._faults: list[_Fault] = []
        self._duplicate_pending = False
        self._in_flight: dict[str, int] = {}
        self._windows: dict[str, tuple[float, float]] = {}  # address -> (armed from, Retry-After end)
        self._rounds: dict[int, _Round] = {}
        self._states: dict[int, _DeltaState] = {}
        self._uploads: dict[str, _UploadSession] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    # --- lifecycle ---

    def start(self) -> None:
        """Listen on 127.0.0.1 (the port is picked once and kept across restarts)."""
        if self._httpd is not None:
            return
        httpd = _Server(("127.0.0.1", self._port), self)
        self._port = int(httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self._port}/v1.0"
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="graph-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and cut open connections; state is kept."""
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        httpd.shutdown()
        httpd.close_connections()
        httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    @property
    def _origin(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    # --- mailbox content ---

    def add_mailbox(self, address: str) -> None:
        """A mailbox with the well-known folders; msgfolderroot is the parent of the others."""
        key = address.lower()
        with self._lock:
            if key in self._mailboxes:
                return
            mailbox = _Mailbox(address=address, number=len(self._mailboxes) + 1)
            root_parent = self._new_id(_FOLDER_PREFIX, mailbox)
            for name, display in WELL_KNOWN.items():
                parent = root_parent if name == "msgfolderroot" else mailbox.well_known["msgfolderroot"]
                folder = _Folder(self._new_id(_FOLDER_PREFIX, mailbox), display, parent, well_known=name)
                mailbox.folders[folder.id] = folder
                mailbox.well_known[name] = folder.id
            self._mailboxes[key] = mailbox

    def deliver(self, address: str, mime: bytes, folder: str = "inbox", is_read: bool = False) -> str:
        """Put a received message into a folder (well-known name, display name or id); its id."""
        with self._lock:
            mailbox = self._mailbox(address)
            target = self._find_folder(mailbox, folder)
            if target is None:
                raise KeyError(f"no folder {folder!r} in {address}")
            return self._store(mailbox, mime, target.id, is_read=is_read, is_draft=False).id

    def folder_messages(self, address: str, folder: str) -> list[Message]:
        """Copies of the messages in a folder (well-known name, display name or id), oldest first."""
        with self._lock:
            mailbox = self._mailbox(address)
            target = self._find_folder(mailbox, folder)
            if target is None:
                return []
            return [
                replace(m, attachments=list(m.attachments))
                for m in mailbox.messages.values()
                if m.folder_id == target.id
            ]

    def folder_id(self, address: str, name: str) -> str | None:
        with self._lock:
            target = self._find_folder(self._mailbox(address), name)
            return None if target is None else target.id

    def message(self, address: str, message_id: str) -> Message | None:
        with self._lock:
            found = self._mailbox(address).messages.get(message_id)
            return None if found is None else replace(found, attachments=list(found.attachments))

    # --- fault injection ---

    def throttle(self, count: int, retry_after: float = 1.0, kind: str | None = None, status: int = 429) -> None:
        """Answer the next ``count`` matching requests ``status`` (429/503) with an integer Retry-After."""
        if retry_after != int(retry_after) or retry_after < 0:
            raise ValueError("Retry-After is a whole number of seconds")
        self._add_fault(_Fault("throttle", count, kind, status=status, retry_after=int(retry_after)))

    def fail(self, count: int, status: int = 503, kind: str | None = None) -> None:
        """Answer the next ``count`` matching requests ``status`` (503/504) without Retry-After."""
        self._add_fault(_Fault("fail", count, kind, status=status))

    def drop_connection(self, count: int, kind: str) -> None:
        """Close the socket unanswered for the next ``count`` requests of ``kind``; the operation is not done."""
        self._add_fault(_Fault("drop", count, kind))

    def expire_tokens(self) -> None:
        """Every token accepted so far answers 401 from now on; tokens added later are accepted."""
        with self._lock:
            self._expired |= self.tokens | self._accepted

    def lose_sync_state(self, address: str) -> None:
        """Every delta and skip token issued so far for the mailbox answers 410 SyncStateNotFound."""
        with self._lock:
            self._mailbox(address).generation += 1

    def duplicate_next_page(self) -> None:
        """The last entry of the next non-empty delta page is repeated first on the page after it.

        When that page ends its round, the repeat opens the next round (a replay across rounds).
        """
        with self._lock:
            self._duplicate_pending = True

    def forbid(self, address: str, code: str = "ErrorAccessDenied", status: int = 403) -> None:
        """Requests for the mailbox are refused, as for one outside the app's access policy."""
        with self._lock:
            self._forbidden[address.lower()] = (status, code)

    def allow(self, address: str) -> None:
        """Undo ``forbid``."""
        with self._lock:
            self._forbidden.pop(address.lower(), None)

    def clear_faults(self) -> None:
        """Forget the injected throttling, failures and dropped connections not used up yet."""
        with self._lock:
            self._faults.clear()

    def _add_fault(self, fault: _Fault) -> None:
        if fault.kind is not None and fault.kind not in KINDS:
            raise ValueError(f"unknown request kind {fault.kind!r}")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kind: str, actions: tuple[str, ...]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.action in actions and fault.remaining > 0 and fault.kind in (None, kind):
                    fault.remaining -= 1
                    return fault
        return None

    # --- state helpers (call with the lock held) ---

    def _mailbox(self, address: str) -> _Mailbox:
        return self._mailboxes[address.lower()]

    def _new_id(self, prefix: bytes, mailbox: _Mailbox) -> str:
        return _b64id(prefix, mailbox.number, next(self._ids))

    def _change_key(self, mailbox: _Mailbox) -> str:
        raw = b"\x09\x00\x00\x00\x16\x00\x00\x00" + mailbox.number.to_bytes(4, "big") + mailbox.seq.to_bytes(6, "big")
        return base64.b64encode(raw).decode()

    def _touch(self, mailbox: _Mailbox, message: Message) -> None:
        mailbox.seq += 1
        message.modseq = mailbox.seq
        message.change_key = self._change_key(mailbox)

    def _find_folder(self, mailbox: _Mailbox, name: str) -> _Folder | None:
        if name.lower() in mailbox.well_known:
            return mailbox.folders[mailbox.well_known[name.lower()]]
        if name in mailbox.folders:
            return mailbox.folders[name]
        for folder in mailbox.folders.values():
            if folder.display_name.lower() == name.lower():
                return folder
        return None

    def _folder(self, mailbox: _Mailbox, key: str) -> _Folder:
        """A folder by id or well-known name, as the API resolves it."""
        if key.lower() in mailbox.well_known:
            return mailbox.folders[mailbox.well_known[key.lower()]]
        if key in mailbox.folders:
            return mailbox.folders[key]
        raise _GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")

    def _message(self, mailbox: _Mailbox, message_id: str) -> Message:
        found = mailbox.messages.get(message_id)
        if found is None:
            raise _GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return found

    def _store(
        self, mailbox: _Mailbox, mime: bytes, folder_id: str, *, is_read: bool, is_draft: bool, new_id: bool = False
    ) -> Message:
        """Store a message; a missing (or, with ``new_id``, any) Message-ID is replaced by a fresh one."""
        info = _mime_info(mime)
        internet_message_id = info.message_id
        if new_id or not internet_message_id:
            internet_message_id = _new_internet_message_id()
            mime = _set_header(mime, "Message-ID", internet_message_id)
            info = _mime_info(mime)
        message = Message(
            id=self._new_id(_MESSAGE_PREFIX, mailbox),
            folder_id=folder_id,
            mime=mime,
            is_read=is_read,
            internet_message_id=internet_message_id,
            subject=info.subject,
            sender=info.sender[1] or mailbox.address,
            received=_iso(_now()),
            change_key="",
            is_draft=is_draft,
        )
        self._touch(mailbox, message)
        mailbox.messages[message.id] = message
        return message

    def _violate(self, text: str) -> None:
        with self._lock:
            self.violations.append(text)

    # --- request flow ---

    def _serve(self, handler: _Handler, method: str) -> None:
        """Answer one request: account for it, wait the latency, inject faults, route, record."""
        ex = self._begin(handler, method)
        try:
            ex.body = _read_body(handler)
            self._pause()
            if self._take_fault(ex.kind, ("drop",)) is not None:
                handler.close_connection = True
                return
            self._write(ex, self._answer(ex))
        except (BrokenPipeError, ConnectionResetError):
            handler.close_connection = True
        finally:
            self._finish(ex, None)

    def _begin(self, handler: _Handler, method: str) -> _Exchange:
        started = time.monotonic()
        split = urlsplit(handler.path)
        area, address, rest = _parse_path(split.path)
        ex = _Exchange(
            handler=handler,
            method=method,
            path=split.path,
            raw_query=split.query,
            query={k.lower(): v for k, v in parse_qsl(split.query, keep_blank_values=True)},
            area=area,
            rest=rest,
            kind=classify(method, split.path),
            token=_bearer(handler.headers.get("Authorization")),
            started=started,
            prefer=_prefer(handler.headers.get_all("Prefer") or []),
            request_id=str(uuid.uuid4()),
            client_request_id=handler.headers.get("client-request-id") or str(uuid.uuid4()),
        )
        with self._lock:
            if area == "upload":
                session = self._uploads.get(rest[4])
                address = session.address.lower() if session is not None else None
            elif address not in self._mailboxes:
                address = None
            ex.address = address
            self._enter(ex)
        return ex

    def _enter(self, ex: _Exchange) -> None:
        """Count the request in flight for its mailbox and note concurrency and Retry-After breaches."""
        address = ex.address
        if address is None:
            return
        count = self._in_flight.get(address, 0) + 1
        self._in_flight[address] = count
        self.max_seen_in_flight[address] = max(self.max_seen_in_flight.get(address, 0), count)
        if count > self.max_in_flight:
            ex.over_limit = True
            self.violations.append(
                f"{address}: {count} concurrent requests (limit {self.max_in_flight}) at {ex.method} {ex.path}"
            )
        window = self._windows.get(address)
        if window is not None and window[0] <= ex.started < window[1]:
            ex.too_early = True
            self.violations.append(
                f"{address}: {ex.method} {ex.path} started {window[1] - ex.started:.2f}s before Retry-After ended"
            )

    def _pause(self) -> None:
        low, high = self.latency
        if high > 0:
            time.sleep(self._rng.uniform(low, high))

    def _finish(self, ex: _Exchange, reply: _Reply | None) -> None:
        """Record the hit and leave the in-flight count; arm the Retry-After window of a throttle answer."""
        if ex.done:
            return
        ex.done = True
        now = time.monotonic()
        with self._lock:
            if ex.address is not None:
                self._in_flight[ex.address] -= 1
            status = 0 if reply is None else reply.status
            self.hits.append(Hit(ex.method, ex.path, ex.raw_query, status, ex.started, now, ex.token, ex.address))
            retry_after = None if reply is None else reply.headers.get("Retry-After")
            if ex.address is not None and retry_after is not None and status in (429, 503):
                self._windows[ex.address] = (now + RACE_GRACE, now + int(retry_after))

    def _write(self, ex: _Exchange, reply: _Reply) -> None:
        handler = ex.handler
        headers = {"request-id": ex.request_id, "client-request-id": ex.client_request_id, **reply.headers}
        if ex.applied and 200 <= reply.status < 300:
            headers["Preference-Applied"] = ", ".join(ex.applied)
        if reply.stream is None:
            self._finish(ex, reply)
        handler.send_response(reply.status)
        for name, value in headers.items():
            handler.send_header(name, value)
        if reply.stream is None:
            if reply.status not in (204, 304):
                handler.send_header("Content-Length", str(len(reply.body)))
            handler.end_headers()
            if reply.body:
                handler.wfile.write(reply.body)
            return
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        data = reply.stream
        for offset in range(0, len(data), STREAM_CHUNK):
            chunk = data[offset : offset + STREAM_CHUNK]
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self._finish(ex, reply)
        handler.wfile.write(b"0\r\n\r\n")

    def _answer(self, ex: _Exchange) -> _Reply:
        try:
            if ex.area == "upload":
                return self._upload(ex)
            if ex.area != "graph":
                raise _GraphError(400, "BadRequest", f"Resource not found for the segment '{ex.path}'.")
            self._check_auth(ex)
            mailbox = self._check_access(ex)
            self._check_throttles(ex)
            if ex.immutable:
                ex.applied.append('IdType="ImmutableId"')
            return self._route(ex, mailbox)
        except _GraphError as err:
            return self._error_reply(ex, err)
        except Exception:
            self.server_errors.append(traceback.format_exc())
            return self._error_reply(ex, _GraphError(500, "generalException", "The fake Graph server failed."))

    def _error_reply(self, ex: _Exchange, err: _GraphError) -> _Reply:
        inner = {
            "date": _now().strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": ex.request_id,
            "client-request-id": ex.client_request_id,
        }
        body = {"error": {"code": err.code, "message": err.message, "innerError": inner}}
        return _Reply(err.status, json.dumps(body).encode(), {"Content-Type": JSON_TYPE, **err.headers})

    def _json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> _Reply:
        return _Reply(status, json.dumps(body).encode(), {"Content-Type": JSON_TYPE, **(headers or {})})

    def _check_auth(self, ex: _Exchange) -> None:
        token = ex.token
        challenge = {"WWW-Authenticate": WWW_AUTHENTICATE}
        if token is None:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token is empty.", challenge)
        with self._lock:
            expired = token in self._expired
            known = token in self.tokens
        if expired:
            raise _GraphError(
                401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", challenge
            )
        if self.validate_token is not None:
            try:
                known = bool(self.validate_token(token))
            except Exception:
                known = False
        if not known:
            raise _GraphError(401, "InvalidAuthenticationToken", "Access token validation failure.", challenge)
        with self._lock:
            self._accepted.add(token)

    def _check_access(self, ex: _Exchange) -> _Mailbox:
        address = _parse_path(ex.path)[1] or ""
        with self._lock:
            forbidden = self._forbidden.get(address)
            mailbox = self._mailboxes.get(address)
        if forbidden is not None:
            status, code = forbidden
            message = "Access to OData is disabled." if code == "ErrorAccessDenied" else "Access is denied."
            raise _GraphError(status, code, message)
        if mailbox is None:
            raise _GraphError(404, "ErrorInvalidUser", f"The requested user '{address}' is invalid.")
        return mailbox

    def _check_throttles(self, ex: _Exchange) -> None:
        if ex.over_limit:
            raise _GraphError(
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.",
                {"Retry-After": "1"},
            )
        if ex.too_early:
            with self._lock:
                end = self._windows.get(ex.address or "", (0.0, 0.0))[1]
            wait = max(1, math.ceil(end - time.monotonic()))
            raise _GraphError(429, "ApplicationThrottled", "Too many requests.", {"Retry-After": str(wait)})
        fault = self._take_fault(ex.kind, ("throttle", "fail"))
        if fault is None:
            return
        code = {429: "TooManyRequests", 503: "ServiceUnavailable", 504: "GatewayTimeout"}.get(
            fault.status, "UnknownError"
        )
        message = {429: "Too many requests.", 503: "Service unavailable."}.get(fault.status, "The request timed out.")
        headers = {"Retry-After": str(fault.retry_after)} if fault.action == "throttle" else {}
        raise _GraphError(fault.status, code, message, headers)

    def _route(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        handlers: dict[str, Callable[[_Exchange, _Mailbox], _Reply]] = {
            "delta": self._delta,
            "value": self._value,
            "get_message": self._get_message,
            "patch": self._patch,
            "delete": self._delete,
            "move": self._move,
            "folders": self._folders,
            "create_folder": self._create_folder,
            "create_message": self._create_message,
            "attachment": self._add_attachment,
            "upload_session": self._create_upload_session,
            "send": self._send,
            "sendmail": self._sendmail,
        }
        handler = handlers.get(ex.kind)
        if handler is None:
            raise _GraphError(501, "NotImplemented", f"The fake Graph server does not implement {ex.method} {ex.path}.")
        return handler(ex, mailbox)

    # --- request body helpers ---

    def _json_body(self, ex: _Exchange) -> dict[str, Any]:
        try:
            data = json.loads(ex.body or b"{}")
        except ValueError as exc:
            raise _GraphError(400, "BadRequest", f"Unable to read JSON request payload: {exc}") from exc
        if not isinstance(data, dict):
            raise _GraphError(400, "BadRequest", "The request payload must be a JSON object.")
        return data

    def _check_size(self, ex: _Exchange) -> None:
        if len(ex.body) > self.mime_limit:
            raise _GraphError(413, "RequestEntityTooLarge", "The request entity is too large.")

    def _is_mime(self, ex: _Exchange) -> bool:
        return ex.handler.headers.get("Content-Type", "").lower().startswith("text/plain")

    def _decode_mime(self, ex: _Exchange) -> bytes:
        try:
            mime = _decode_base64(ex.body)
        except (binascii.Error, ValueError) as exc:
            raise _GraphError(
                400, "ErrorMimeContentInvalidBase64String", "Invalid base64 string for MIME content."
            ) from exc
        if not mime.strip():
            raise _GraphError(400, "ErrorMimeContentInvalid", "The MIME content is empty.")
        return mime

    def _json_mime(self, data: dict[str, Any], mailbox: _Mailbox) -> bytes:
        try:
            return _mime_from_json(data, mailbox.address)
        except (TypeError, ValueError, KeyError, AttributeError, binascii.Error) as exc:
            raise _GraphError(400, "ErrorInvalidRequest", f"The message resource is not valid: {exc}") from exc

    # --- delta ---

    def _page_size(self, ex: _Exchange) -> int:
        requested = ex.prefer.get("odata.maxpagesize")
        if requested and requested.isdigit() and int(requested) > 0:
            size = min(int(requested), MAX_PAGE_SIZE)
            ex.applied.append(f"odata.maxpagesize={size}")
            return size
        return self.page_size

    def _delta_url(
        self,
        mailbox: _Mailbox,
        folder_id: str,
        token: tuple[str, str] | None = None,
        select: tuple[str, ...] | None = None,
        change_type: str | None = None,
    ) -> str:
        base = f"{self.url}/users/{quote(mailbox.address, safe='@')}/mailFolders('{folder_id}')/messages/delta"
        params = [] if token is None else [f"{token[0]}={token[1]}"]
        if select:
            params.append("$select=" + ",".join(select))
        if change_type:
            params.append("changeType=" + change_type)
        return base + ("?" + "&".join(params) if params else "")

    def _sync_error(
        self, mailbox: _Mailbox, folder: _Folder, code: str, message: str, origin: _Round | _DeltaState | None
    ) -> _GraphError:
        select = None if origin is None else origin.select
        change_type = None if origin is None else origin.change_type
        location = self._delta_url(mailbox, folder.id, select=select, change_type=change_type)
        return _GraphError(410, code, message, {"Location": location})

    def _delta(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        size = self._page_size(ex)
        with self._lock:
            folder = self._folder(mailbox, ex.rest[1])
            if not ex.immutable:
                self._violate(f'{mailbox.address}: delta request without Prefer: IdType="ImmutableId" ({ex.path})')
            skip = ex.query.get("$skiptoken")
            delta = ex.query.get("$deltatoken")
            if skip:
                round_, offset = self._round_for(skip, mailbox, folder)
            else:
                base = self._state_for(delta, mailbox, folder) if delta else None
                round_, offset = self._open_round(ex, mailbox, folder, base), 0
            return self._json(200, self._delta_page(mailbox, round_, offset, size))

    def _round_for(self, token: str, mailbox: _Mailbox, folder: _Folder) -> tuple[_Round, int]:
        data = _decode_token(token) or {}
        round_ = self._rounds.get(data.get("r", -1))
        if round_ is None or round_.address != mailbox.address or round_.folder_id != folder.id or "o" not in data:
            raise self._sync_error(mailbox, folder, "SyncStateInvalid", "The sync state is invalid.", round_)
        if round_.generation != mailbox.generation:
            raise self._sync_error(
                mailbox, folder, "SyncStateNotFound", "The sync state generation is not found.", round_
            )
        return round_, data["o"]

    def _state_for(self, token: str, mailbox: _Mailbox, folder: _Folder) -> _DeltaState:
        data = _decode_token(token) or {}
        state = self._states.get(data.get("d", -1))
        if state is None or state.address != mailbox.address or state.folder_id != folder.id:
            raise self._sync_error(mailbox, folder, "SyncStateInvalid", "The sync state is invalid.", state)
        if state.generation != mailbox.generation:
            raise self._sync_error(
                mailbox, folder, "SyncStateNotFound", "The sync state generation is not found.", state
            )
        return state

    def _open_round(self, ex: _Exchange, mailbox: _Mailbox, folder: _Folder, base: _DeltaState | None) -> _Round:
        current = [m.id for m in mailbox.messages.values() if m.folder_id == folder.id]
        if base is None:
            raw_select = ex.query.get("$select", "")
            select = tuple(s.strip() for s in raw_select.split(",") if s.strip()) or None
            change_type = ex.query.get("changetype") or None
            entries: list[Entry] = [(i, False) for i in current]
        else:
            select, change_type = base.select, base.change_type
            entries = self._changes(mailbox, base, current)
        round_ = _Round(
            id=next(self._ids),
            address=mailbox.address,
            folder_id=folder.id,
            entries=entries,
            members=tuple(current),
            seq=mailbox.seq,
            select=select,
            change_type=change_type,
            generation=mailbox.generation,
        )
        self._rounds[round_.id] = round_
        return round_

    def _changes(self, mailbox: _Mailbox, base: _DeltaState, current: list[str]) -> list[Entry]:
        """Entries of an incremental round: removed (moved out, deleted), created (incl. moved in), updated."""
        now_in = set(current)
        before = set(base.members)
        removed = [i for i in base.members if i not in now_in]
        created = [i for i in current if i not in before]
        updated = [i for i in current if i in before and mailbox.messages[i].modseq > base.seq]
        if base.change_type == "created":
            removed, updated = [], []
        elif base.change_type == "updated":
            removed, created = [], []
        elif base.change_type == "deleted":
            created, updated = [], []
        changed = sorted(created + updated, key=lambda i: mailbox.messages[i].modseq)
        entries: list[Entry] = [(i, True) for i in removed] + [(i, False) for i in changed]
        if base.replay is not None:
            entries.insert(0, base.replay)
        return entries

    def _delta_page(self, mailbox: _Mailbox, round_: _Round, offset: int, size: int) -> dict[str, Any]:
        page: list[Entry] = []
        take = size
        repeated = round_.duplicates.get(offset)
        if repeated is not None:
            page.append(repeated)
            take = max(size - 1, 1)
        page.extend(round_.entries[offset : offset + take])
        next_offset = min(offset + take, len(round_.entries))
        more = next_offset < len(round_.entries)
        replay: Entry | None = None
        if self._duplicate_pending and len(page) > (0 if repeated is None else 1):
            self._duplicate_pending = False
            if more:
                round_.duplicates[next_offset] = page[-1]
            else:
                replay = page[-1]
        body: dict[str, Any] = {"@odata.context": f"{self.url}/$metadata#Collection(message)"}
        if more:
            token = ("$skiptoken", _encode_token({"r": round_.id, "o": next_offset}))
            body["@odata.nextLink"] = self._delta_url(mailbox, round_.folder_id, token)
        else:
            state = _DeltaState(
                id=next(self._ids),
                address=mailbox.address,
                folder_id=round_.folder_id,
                members=round_.members,
                seq=round_.seq,
                select=round_.select,
                change_type=round_.change_type,
                generation=mailbox.generation,
                replay=replay,
            )
            self._states[state.id] = state
            token = ("$deltatoken", _encode_token({"d": state.id}))
            body["@odata.deltaLink"] = self._delta_url(mailbox, round_.folder_id, token)
        body["value"] = [self._entry_json(mailbox, entry, round_.select) for entry in page]
        return body

    def _entry_json(self, mailbox: _Mailbox, entry: Entry, select: tuple[str, ...] | None) -> dict[str, Any]:
        message_id, removed = entry
        message = mailbox.messages.get(message_id)
        if removed or message is None:
            return {"@odata.type": "#microsoft.graph.message", "id": message_id, "@removed": {"reason": "deleted"}}
        return self._message_json(message, select)

    # --- messages ---

    def _message_json(self, message: Message, select: tuple[str, ...] | None = None) -> dict[str, Any]:
        info = _mime_info(message.mime)
        sender = _recipient(info.sender) if info.sender[1] else _recipient(("", message.sender))
        full: dict[str, Any] = {
            "@odata.type": "#microsoft.graph.message",
            "@odata.etag": f'W/"{message.change_key}"',
            "id": message.id,
            "createdDateTime": message.received,
            "lastModifiedDateTime": message.received,
            "changeKey": message.change_key,
            "categories": [],
            "receivedDateTime": message.received,
            "sentDateTime": info.date or message.received,
            "hasAttachments": bool(info.attachments or message.attachments),
            "internetMessageId": message.internet_message_id,
            "subject": message.subject,
            "bodyPreview": _preview(info),
            "importance": "normal",
            "parentFolderId": message.folder_id,
            "conversationId": base64.urlsafe_b64encode(message.subject.encode()[:24]).decode() or "AAQkAA==",
            "isDeliveryReceiptRequested": False,
            "isReadReceiptRequested": False,
            "isRead": message.is_read,
            "isDraft": message.is_draft,
            "webLink": "https://outlook.office365.com/owa/?ItemID="
            + quote(message.id, safe="")
            + "&exvsurl=1&viewmodel=ReadMessageItem",
            "inferenceClassification": "focused",
            "body": {"contentType": info.body_type, "content": info.body},
            "sender": sender,
            "from": sender,
            "toRecipients": [_recipient(r) for r in info.to],
            "ccRecipients": [_recipient(r) for r in info.cc],
            "bccRecipients": [_recipient(r) for r in info.bcc],
            "replyTo": [_recipient(r) for r in info.reply_to],
            "flag": {"flagStatus": "notFlagged"},
        }
        if not select:
            return full
        wanted = {s.lower() for s in select} | {"@odata.type", "@odata.etag", "id"}
        return {k: v for k, v in full.items() if k.lower() in wanted}

    def _select(self, ex: _Exchange) -> tuple[str, ...] | None:
        raw = ex.query.get("$select", "")
        return tuple(s.strip() for s in raw.split(",") if s.strip()) or None

    def _message_reply(self, status: int, ex: _Exchange, mailbox: _Mailbox, message: Message) -> _Reply:
        body = {
            "@odata.context": f"{self.url}/$metadata#users('{quote(mailbox.address, safe='@')}')/messages/$entity",
            **self._message_json(message, self._select(ex)),
        }
        return self._json(status, body)

    def _value(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        with self._lock:
            mime = self._message(mailbox, ex.rest[1]).mime
        return _Reply(200, headers={"Content-Type": "text/plain"}, stream=mime)

    def _get_message(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        with self._lock:
            return self._message_reply(200, ex, mailbox, self._message(mailbox, ex.rest[1]))

    def _patch(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        data = self._json_body(ex)
        with self._lock:
            message = self._message(mailbox, ex.rest[1])
            if "isRead" in data:
                if not isinstance(data["isRead"], bool):
                    raise _GraphError(400, "ErrorInvalidRequest", "isRead must be a Boolean.")
                if message.is_read != data["isRead"]:
                    message.is_read = data["isRead"]
                    self._touch(mailbox, message)
            return self._message_reply(200, ex, mailbox, message)

    def _delete(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        """Deleting moves to Deleted Items; deleting from Deleted Items removes the message for good."""
        with self._lock:
            message = self._message(mailbox, ex.rest[1])
            deleted_items = mailbox.well_known["deleteditems"]
            if message.folder_id == deleted_items:
                del mailbox.messages[message.id]
                mailbox.seq += 1
            else:
                message.folder_id = deleted_items
                self._touch(mailbox, message)
        return _Reply(204)

    def _move(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        destination = self._json_body(ex).get("destinationId")
        if not isinstance(destination, str) or not destination:
            raise _GraphError(400, "ErrorInvalidRequest", "The destinationId parameter is required.")
        with self._lock:
            message = self._message(mailbox, ex.rest[1])
            folder = self._folder(mailbox, destination)
            if message.folder_id != folder.id:
                message.folder_id = folder.id
                self._touch(mailbox, message)
            body = {"@odata.context": f"{self.url}/$metadata#message", **self._message_json(message, self._select(ex))}
            return self._json(201, body)

    def _create_message(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        """A draft from base64 MIME (Content-Type text/plain) or from a JSON message resource."""
        self._check_size(ex)
        from_mime = self._is_mime(ex)
        mime = self._decode_mime(ex) if from_mime else self._json_mime(self._json_body(ex), mailbox)
        with self._lock:
            folder = mailbox.well_known["drafts"] if len(ex.rest) == 1 else self._folder(mailbox, ex.rest[1]).id
            new_id = from_mime and self.assign_message_ids
            message = self._store(mailbox, mime, folder, is_read=True, is_draft=True, new_id=new_id)
            return self._message_reply(201, ex, mailbox, message)

    def _attachment_json(self, mailbox: _Mailbox, message: Message, attachment: Attachment) -> dict[str, Any]:
        context = (
            f"{self.url}/$metadata#users('{quote(mailbox.address, safe='@')}')"
            f"/messages('{message.id}')/attachments/$entity"
        )
        return {
            "@odata.context": context,
            "@odata.type": "#microsoft.graph.fileAttachment",
            "@odata.mediaContentType": attachment.content_type,
            "id": attachment.id,
            "lastModifiedDateTime": attachment.modified,
            "name": attachment.name,
            "contentType": attachment.content_type,
            "size": len(attachment.data),
            "isInline": attachment.is_inline,
            "contentId": attachment.content_id,
            "contentLocation": None,
            "contentBytes": base64.b64encode(attachment.data).decode(),
        }

    def _add_attachment(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        """POST .../attachments with a fileAttachment (documented limit: under 3 MB)."""
        if len(ex.rest) != 3 or ex.method != "POST":
            raise _GraphError(501, "NotImplemented", f"The fake Graph server does not implement {ex.method} {ex.path}.")
        self._check_size(ex)
        data = self._json_body(ex)
        if str(data.get("@odata.type", "")).lower().lstrip("#") != "microsoft.graph.fileattachment":
            raise _GraphError(501, "NotImplemented", "The fake Graph server only supports fileAttachment.")
        name = str(data.get("name") or "")
        try:
            content = _decode_base64(str(data.get("contentBytes") or ""))
        except (binascii.Error, ValueError) as exc:
            raise _GraphError(400, "ErrorInvalidRequest", "contentBytes is not valid base64.") from exc
        if len(content) >= self.large_attachment:
            raise _GraphError(413, "RequestEntityTooLarge", "Attachments of 3 MB or more need an upload session.")
        content_type = str(data.get("contentType") or mimetypes.guess_type(name)[0] or "application/octet-stream")
        with self._lock:
            message = self._message(mailbox, ex.rest[1])
            attachment = Attachment(
                id=self._new_id(_OTHER_PREFIX, mailbox),
                name=name,
                content_type=content_type,
                data=content,
                is_inline=bool(data.get("isInline", False)),
                content_id=data.get("contentId") or None,
                modified=_iso(_now()),
            )
            message.attachments.append(attachment)
            self._touch(mailbox, message)
            return self._json(201, self._attachment_json(mailbox, message, attachment))

    def _create_upload_session(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        data = self._json_body(ex)
        item = next((v for k, v in data.items() if k.lower() == "attachmentitem"), None)
        if not isinstance(item, dict):
            raise _GraphError(400, "ErrorInvalidRequest", "The AttachmentItem parameter is required.")
        if str(item.get("attachmentType", "")).lower() != "file":
            raise _GraphError(400, "ErrorInvalidRequest", "Only attachmentType 'file' is supported.")
        name, size = item.get("name"), item.get("size")
        if not isinstance(name, str) or not name or not isinstance(size, int) or isinstance(size, bool):
            raise _GraphError(400, "ErrorInvalidRequest", "AttachmentItem needs a name and an integer size.")
        if size < self.large_attachment:
            raise _GraphError(
                400,
                "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                "Attachment size must be greater than the minimum size.",
            )
        if size > UPLOAD_SESSION_MAX:
            raise _GraphError(
                400,
                "ErrorAttachmentSizeShouldNotBeGreaterThanMaximumSize",
                "Attachment size must be less than the maximum size.",
            )
        content_type = str(item.get("contentType") or mimetypes.guess_type(name)[0] or "application/octet-stream")
        with self._lock:
            message = self._message(mailbox, ex.rest[1])
            session = _UploadSession(
                id=self._new_id(_OTHER_PREFIX, mailbox),
                address=mailbox.address,
                message_id=message.id,
                name=name,
                size=size,
                content_type=content_type,
                is_inline=bool(item.get("isInline", False)),
                content_id=item.get("contentId") or None,
                authtoken=secrets.token_urlsafe(32),
                expires=_iso7(_now() + UPLOAD_SESSION_LIFETIME),
            )
            self._uploads[session.id] = session
        upload_url = (
            f"{self._origin}/api/v2.0/Users('{mailbox.address}')/Messages('{session.message_id}')"
            f"/AttachmentSessions('{session.id}')?authtoken={session.authtoken}"
        )
        body = {
            "@odata.context": f"{self.url}/$metadata#microsoft.graph.uploadSession",
            "uploadUrl": upload_url,
            "expirationDateTime": session.expires,
            "nextExpectedRanges": ["0-"],
        }
        return self._json(201, body)

    def _upload(self, ex: _Exchange) -> _Reply:
        """PUT a byte range to an upload session (or DELETE the session); no Authorization header wanted."""
        with self._lock:
            session = self._uploads.get(ex.rest[4])
        if session is None or ex.query.get("authtoken") != session.authtoken:
            raise _GraphError(404, "ErrorItemNotFound", "The upload session was not found.")
        self._check_throttles(ex)
        if ex.handler.headers.get("Authorization"):
            self._violate(f"{session.address}: Authorization header sent to a pre-authenticated upload URL")
        if ex.method == "DELETE":
            with self._lock:
                self._uploads.pop(session.id, None)
            return _Reply(204)
        if ex.method != "PUT":
            raise _GraphError(405, "ErrorInvalidRequest", "The OData request is not supported.")
        _, end, total = self._content_range(ex, session)
        last = end + 1 == total
        if not last and len(ex.body) % UPLOAD_CHUNK_UNIT:
            self._violate(f"{session.address}: upload chunk of {len(ex.body)} bytes is not a multiple of 320 KiB")
        if len(ex.body) > UPLOAD_CHUNK_MAX:
            self._violate(f"{session.address}: upload chunk of {len(ex.body)} bytes is above 4 MiB")
        with self._lock:
            session.data.extend(ex.body)
            if not last:
                body = {
                    "@odata.context": f"{self._origin}/api/v2.0/$metadata#Users('{session.address}')"
                    f"/Messages('{session.message_id}')/AttachmentSessions/$entity",
                    "expirationDateTime": session.expires,
                    "nextExpectedRanges": [str(len(session.data))],
                }
                return self._json(200, body)
            return self._complete_upload(session)

    def _content_range(self, ex: _Exchange, session: _UploadSession) -> tuple[int, int, int]:
        match = _CONTENT_RANGE.match(ex.handler.headers.get("Content-Range", ""))
        if match is None:
            raise _GraphError(400, "invalidRequest", "Content-Range must be 'bytes {start}-{end}/{total}'.")
        start, end, total = (int(g) for g in match.groups())
        if total != session.size:
            raise _GraphError(400, "invalidRequest", f"Declared total {total} differs from the session size.")
        if end < start or end >= total or end - start + 1 != len(ex.body):
            raise _GraphError(400, "invalidRequest", "Content-Range does not match the bytes sent.")
        with self._lock:
            expected = len(session.data)
        if start != expected:
            raise _GraphError(416, "invalidRange", f"The next expected byte is {expected}, not {start}.")
        return start, end, total

    def _complete_upload(self, session: _UploadSession) -> _Reply:
        mailbox = self._mailbox(session.address)
        self._uploads.pop(session.id, None)
        message = self._message(mailbox, session.message_id)
        attachment = Attachment(
            id=self._new_id(_OTHER_PREFIX, mailbox),
            name=session.name,
            content_type=session.content_type,
            data=bytes(session.data),
            is_inline=session.is_inline,
            content_id=session.content_id,
            modified=_iso(_now()),
        )
        message.attachments.append(attachment)
        self._touch(mailbox, message)
        location = (
            f"{self._origin}/api/v2.0/Users('{session.address}')/Messages('{message.id}')"
            f"/Attachments('{attachment.id}')"
        )
        return _Reply(201, headers={"Location": location})

    # --- sending ---

    def _outgoing(self, mime: bytes, attachments: list[Attachment]) -> tuple[bytes, bytes, list[str]]:
        """(stored copy, bytes on the wire, recipients): attachments appended, Bcc only off the wire."""
        full = _add_attachments(mime, attachments)
        info = _mime_info(full)
        recipients = _dedupe([address for _, address in info.to + info.cc + info.bcc])
        if not recipients:
            raise _GraphError(400, "ErrorInvalidRecipients", "At least one recipient isn't valid.")
        return full, _strip_header(full, "Bcc"), recipients

    def _record_sent(self, mailbox: _Mailbox, wire: bytes, recipients: list[str], route: str) -> None:
        info = _mime_info(wire)
        self.sent.append(SentMail(wire, recipients, info.message_id, list(info.attachments), mailbox.address, route))

    def _send(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        """Send a draft: it moves to Sent Items, no longer a draft, and is recorded in ``sent``."""
        with self._lock:
            message = self._message(mailbox, ex.rest[1])
            if not message.is_draft:
                raise _GraphError(400, "ErrorInvalidOperation", "Only draft messages can be sent.")
            full, wire, recipients = self._outgoing(message.mime, message.attachments)
            message.mime = full
            message.attachments = []
            message.is_draft = False
            message.is_read = True
            message.folder_id = mailbox.well_known["sentitems"]
            self._touch(mailbox, message)
            self._record_sent(mailbox, wire, recipients, "send")
        return _Reply(202)

    def _sendmail(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        """sendMail with base64 MIME (text/plain) or JSON; saved to Sent Items unless told otherwise."""
        self._check_size(ex)
        save = True
        if self._is_mime(ex):
            mime = self._decode_mime(ex)
        else:
            data = self._json_body(ex)
            resource = data.get("message")
            if not isinstance(resource, dict):
                raise _GraphError(400, "ErrorInvalidRequest", "The message parameter is required.")
            save = str(data.get("saveToSentItems", True)).lower() != "false"
            mime = self._json_mime(resource, mailbox)
        if not _mime_info(mime).message_id:
            mime = _set_header(mime, "Message-ID", _new_internet_message_id())
        full, wire, recipients = self._outgoing(mime, [])
        with self._lock:
            if save:
                self._store(mailbox, full, mailbox.well_known["sentitems"], is_read=True, is_draft=False)
            self._record_sent(mailbox, wire, recipients, "sendmail")
        return _Reply(202)

    # --- folders ---

    def _folder_json(self, mailbox: _Mailbox, folder: _Folder) -> dict[str, Any]:
        contained = [m for m in mailbox.messages.values() if m.folder_id == folder.id]
        return {
            "id": folder.id,
            "displayName": folder.display_name,
            "parentFolderId": folder.parent_id,
            "childFolderCount": sum(1 for f in mailbox.folders.values() if f.parent_id == folder.id),
            "unreadItemCount": sum(1 for m in contained if not m.is_read),
            "totalItemCount": len(contained),
            "isHidden": folder.hidden,
        }

    def _folders_context(self, mailbox: _Mailbox) -> str:
        return f"{self.url}/$metadata#users('{quote(mailbox.address, safe='@')}')/mailFolders"

    def _folders(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        with self._lock:
            if len(ex.rest) == 2:
                folder = self._folder(mailbox, ex.rest[1])
                entity = {"@odata.context": self._folders_context(mailbox) + "/$entity"}
                return self._json(200, entity | self._folder_json(mailbox, folder))
            parent = mailbox.well_known["msgfolderroot"] if len(ex.rest) == 1 else self._folder(mailbox, ex.rest[1]).id
            children = [f for f in mailbox.folders.values() if f.parent_id == parent]
            if ex.query.get("includehiddenfolders", "").lower() != "true":
                children = [f for f in children if not f.hidden]
            wanted = self._name_filter(ex)
            if wanted is not None:
                children = [f for f in children if f.display_name.lower() == wanted.lower()]
            top, skip = self._int_query(ex, "$top", self.page_size), self._int_query(ex, "$skip", 0)
            top = min(max(top, 1), MAX_PAGE_SIZE)
            body: dict[str, Any] = {
                "@odata.context": self._folders_context(mailbox),
                "value": [self._folder_json(mailbox, f) for f in children[skip : skip + top]],
            }
            if skip + top < len(children):
                body["@odata.nextLink"] = self._folders_next(ex, skip + top)
            return self._json(200, body)

    def _folders_next(self, ex: _Exchange, skip: int) -> str:
        kept = [(k, v) for k, v in parse_qsl(ex.raw_query, keep_blank_values=True) if k.lower() != "$skip"]
        query = "&".join(f"{k}={quote(v, safe=',$')}" for k, v in [*kept, ("$skip", str(skip))])
        return f"{self._origin}{ex.path}?{query}"

    def _name_filter(self, ex: _Exchange) -> str | None:
        raw = ex.query.get("$filter")
        if raw is None:
            return None
        match = _NAME_FILTER.match(raw)
        if match is None:
            raise _GraphError(
                400, "ErrorInvalidUrlQueryFilter", "The fake Graph server only supports $filter=displayName eq '...'."
            )
        return match.group(1).replace("''", "'")

    def _int_query(self, ex: _Exchange, name: str, default: int) -> int:
        raw = ex.query.get(name)
        if raw is None:
            return default
        if not raw.isdigit():
            raise _GraphError(400, "BadRequest", f"Invalid value '{raw}' for {name}.")
        return int(raw)

    def _create_folder(self, ex: _Exchange, mailbox: _Mailbox) -> _Reply:
        data = self._json_body(ex)
        name = data.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise _GraphError(400, "ErrorInvalidRequest", "The displayName property is required.")
        with self._lock:
            parent = mailbox.well_known["msgfolderroot"] if len(ex.rest) == 1 else self._folder(mailbox, ex.rest[1]).id
            if any(f.parent_id == parent and f.display_name.lower() == name.lower() for f in mailbox.folders.values()):
                raise _GraphError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
            folder = _Folder(self._new_id(_FOLDER_PREFIX, mailbox), name, parent, hidden=bool(data.get("isHidden")))
            mailbox.folders[folder.id] = folder
            body = {"@odata.context": self._folders_context(mailbox) + "/$entity"}
            return self._json(201, body | self._folder_json(mailbox, folder))
