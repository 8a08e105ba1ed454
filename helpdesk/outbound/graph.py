"""Send a channel's mail through its Microsoft 365 mailbox with Microsoft Graph.

Each mail goes as MIME, so our Message-ID, In-Reply-To, References, Auto-Submitted and signed
Reply-To survive: a draft is created from the MIME (``POST /messages``, base64 ``text/plain``) and
sent (``POST /messages/{id}/send``). The draft tells us the ``internetMessageId`` the service will
use; when it is not ours, the delivery reports it so replies to it still thread. A mail whose MIME
exceeds Graph's request limit goes without its large attachments in the draft; those follow as
attachments (up to 3 MB) or through upload sessions, and then the draft is sent.

Exchange Online sends at most 30 messages a minute from one mailbox: mail beyond that is held back
(``HELD``, not counted as a failed attempt) and the outbox says so.
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import Message
from typing import Any

from helpdesk.config import MailboxConfig, resolve_secret
from helpdesk.mailboxes.base import ConfiguredMailbox, PermanentError, SecretResolver
from helpdesk.mailboxes.graphapi import GraphClient, GraphError
from helpdesk.oauth.explain import graph_advice
from helpdesk.oauth.tokens import Providers
from helpdesk.outbound.transport import Delivery, DeliveryStatus, Envelope

log = logging.getLogger(__name__)

MIME_LIMIT = 4 * 1024 * 1024  # bytes of base64 MIME one request may carry
SMALL_ATTACHMENT = 3 * 1024 * 1024  # larger attachments go through an upload session
UPLOAD_CHUNK = 10 * 320 * 1024  # upload chunks must be multiples of 320 KiB
SEND_LIMIT = 30  # messages per SEND_WINDOW seconds per mailbox (Exchange Online)
SEND_WINDOW = 60.0
# Answers that mean our own setup is wrong (token, permission, mailbox): keep the mail and retry.
OUR_PROBLEM = frozenset({401, 403, 404})


class SendWindow:
    """A sliding window of send times: at most ``limit`` in any ``window`` seconds."""

    def __init__(self, limit: int = SEND_LIMIT, window: float = SEND_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def reserve(self) -> float | None:
        """Take a slot now (None), or say in how many seconds one frees up."""
        with self._lock:
            now = self._clock()
            while self._sent and self._sent[0] <= now - self.window:
                self._sent.popleft()
            if len(self._sent) >= self.limit:
                return self._sent[0] + self.window - now
            self._sent.append(now)
            return None

    def release(self) -> None:
        """Give back the last slot (the mail was not sent after all)."""
        with self._lock:
            if self._sent:
                self._sent.pop()


_WINDOWS: dict[str, SendWindow] = {}
_WINDOWS_LOCK = threading.Lock()


def window_for(address: str) -> SendWindow:
    with _WINDOWS_LOCK:
        return _WINDOWS.setdefault(address.lower(), SendWindow())


@dataclass(frozen=True)
class Detached:
    """An attachment taken out of a MIME message that was too large for one request."""

    name: str
    content_type: str
    data: bytes


def _b64_size(size: int) -> int:
    return 4 * ((size + 2) // 3)


def _message_id(data: bytes) -> str | None:
    header = email.message_from_bytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n").get("Message-ID")
    return str(header).strip().strip("<>") if header else None


def mime_recipients(data: bytes) -> set[str]:
    """The addresses in To, Cc and Bcc: Graph sends to these, not to an envelope."""
    headers = email.message_from_bytes(data.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    values = [str(v) for name in ("To", "Cc", "Bcc") for v in headers.get_all(name, [])]
    return {address.lower() for _name, address in email.utils.getaddresses(values) if address}


def _decoded(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    return payload if isinstance(payload, bytes) else b""


def detach_large_parts(data: bytes, limit: int = MIME_LIMIT) -> tuple[bytes, list[Detached]]:
    """Remove the largest attachments until the MIME fits into one request."""
    message = email.message_from_bytes(data, policy=email.policy.SMTP)
    parts: list[tuple[int, Message, Message]] = []  # (size, parent, part)
    for container in message.walk():
        if not container.is_multipart():
            continue
        for part in container.get_payload():
            if isinstance(part, Message) and not part.is_multipart() and part.get_filename():
                parts.append((len(_decoded(part)), container, part))
    detached: list[Detached] = []
    current = data
    for size, parent, part in sorted(parts, key=lambda p: p[0], reverse=True):
        if _b64_size(len(current)) <= limit:
            break
        payload = parent.get_payload()
        assert isinstance(payload, list)
        payload.remove(part)
        detached.append(Detached(str(part.get_filename()), part.get_content_type(), _decoded(part)))
        current = message.as_bytes()
        log.debug("detached %s (%d bytes) for an upload session", part.get_filename(), size)
    return current, detached


class GraphTransport:
    """Sends envelopes through one Microsoft 365 mailbox."""

    def __init__(
        self,
        config: MailboxConfig,
        providers: Providers,
        secret: SecretResolver = resolve_secret,
        window: SendWindow | None = None,
    ) -> None:
        self.config = config
        self._mailbox = ConfiguredMailbox(config, secret, providers)
        self._client: GraphClient | None = None
        self.window = window or window_for(config.user)

    @property
    def client(self) -> GraphClient:
        if self._client is None:
            self._client = GraphClient(
                self.config, self._mailbox.token_provider(), self._mailbox.oauth_scope("graph")
            )
        return self._client

    def deliver(self, envelopes: Sequence[Envelope]) -> list[Delivery]:
        results: list[Delivery] = []
        for envelope in envelopes:
            wait = self.window.reserve()
            if wait is not None:
                results.append(Delivery(
                    envelope.key, DeliveryStatus.HELD,
                    f"held back: Exchange Online sends at most {self.window.limit} messages a minute from "
                    f"{self.config.user}; next attempt in {wait:.0f} s",
                    retry_in=wait,
                ))
                continue
            delivery = self._send(envelope)
            if delivery.status is not DeliveryStatus.SENT:
                self.window.release()
            results.append(delivery)
        held = sum(1 for d in results if d.status is DeliveryStatus.HELD)
        if held:
            log.info("graph %s: %d mails held back by the sending limit", self.config.user, held)
        return results

    def _send(self, envelope: Envelope) -> Delivery:
        def result(status: DeliveryStatus, detail: str, message_id: str | None = None) -> Delivery:
            return Delivery(envelope.key, status, detail, message_id=message_id)

        try:
            client = self.client
        except PermanentError as exc:
            return result(DeliveryStatus.TEMPORARY, str(exc))
        draft_id: str | None = None
        try:
            draft = self._draft(client, envelope)
            draft_id = str(draft["id"])
            client.call("POST", f"/messages/{draft_id}/send", retry_network=False)
        except GraphError as exc:
            if draft_id is not None:
                self._discard(client, draft_id)
            return result(self._status(exc), f"Microsoft Graph: {exc}{self._advice(exc)}")
        ours = _message_id(envelope.data)
        assigned = str(draft.get("internetMessageId") or "").strip().strip("<>") or None
        if assigned and assigned != ours:
            return result(DeliveryStatus.SENT, f"202 sent through Graph as <{assigned}>", assigned)
        return result(DeliveryStatus.SENT, "202 sent through Graph")

    def _draft(self, client: GraphClient, envelope: Envelope) -> dict[str, Any]:
        data = envelope.data
        detached: list[Detached] = []
        if _b64_size(len(data)) > MIME_LIMIT:
            data, detached = detach_large_parts(data)
        draft = client.json(
            "POST", "/messages", content=base64.b64encode(data), headers={"Content-Type": "text/plain"}
        )
        draft_id = str(draft["id"])
        try:
            wanted = {r.lower() for r in envelope.recipients}
            if mime_recipients(data) != wanted:
                # Graph sends to the header recipients; the envelope decides who gets this copy.
                client.call("PATCH", f"/messages/{draft_id}", json={
                    "toRecipients": [{"emailAddress": {"address": r}} for r in envelope.recipients],
                    "ccRecipients": [], "bccRecipients": [],
                })
            for attachment in detached:
                self._attach(client, draft_id, attachment)
        except GraphError:
            self._discard(client, draft_id)
            raise
        return draft

    def _attach(self, client: GraphClient, draft_id: str, attachment: Detached) -> None:
        if len(attachment.data) <= SMALL_ATTACHMENT:
            client.call("POST", f"/messages/{draft_id}/attachments", json={
                "@odata.type": "#microsoft.graph.fileAttachment", "name": attachment.name,
                "contentType": attachment.content_type,
                "contentBytes": base64.b64encode(attachment.data).decode("ascii"),
            })
            return
        session = client.json("POST", f"/messages/{draft_id}/attachments/createUploadSession", json={
            "AttachmentItem": {
                "attachmentType": "file", "name": attachment.name, "size": len(attachment.data),
                "contentType": attachment.content_type,
            },
        })
        upload_url = str(session["uploadUrl"])
        total = len(attachment.data)
        for start in range(0, total, UPLOAD_CHUNK):
            chunk = attachment.data[start : start + UPLOAD_CHUNK]
            end = start + len(chunk) - 1
            client.call("PUT", upload_url, content=chunk, auth=False, headers={
                "Content-Range": f"bytes {start}-{end}/{total}", "Content-Type": "application/octet-stream",
            })

    @staticmethod
    def _discard(client: GraphClient, draft_id: str) -> None:
        try:
            client.call("DELETE", f"/messages/{draft_id}")
        except GraphError as exc:
            log.warning("could not delete the unsent draft %s: %s", draft_id, exc)

    @staticmethod
    def _status(exc: GraphError) -> DeliveryStatus:
        if exc.temporary or exc.status in OUR_PROBLEM or exc.status == 0:
            return DeliveryStatus.TEMPORARY
        return DeliveryStatus.PERMANENT

    @staticmethod
    def _advice(exc: GraphError) -> str:
        advice = graph_advice(exc.status, exc.code)
        return f" ({advice})" if advice else ""
