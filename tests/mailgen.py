"""Build realistic test mails (also used by the benchmarks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid


def make_mail(
    *,
    sender: str = "Alice Customer <alice@acme.example>",
    to: str | Sequence[str] = "support@example.test",
    cc: Sequence[str] = (),
    subject: str = "Printer does not print",
    body: str = "Hello,\n\nthe printer on floor 2 does not print.\n\nRegards\nAlice\n",
    html: str | None = None,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: Sequence[str] = (),
    headers: Mapping[str, str] | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    date: datetime | None = None,
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(date or datetime(2026, 3, 2, 8, 0, tzinfo=UTC))
    msg["Message-ID"] = f"<{message_id}>" if message_id else make_msgid(domain="acme.example")
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    if references:
        msg["References"] = " ".join(f"<{r}>" for r in references)
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, payload in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(payload, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


def make_dsn(*, failed: str, original_message_id: str, reporting: str = "mx.acme.example") -> bytes:
    """An RFC 3464 delivery status notification for a mail we sent."""
    text = (  # noqa: UP031 - a literal MIME template reads best with %-placeholders
        "From: Mail Delivery System <MAILER-DAEMON@mail.example.test>\r\n"
        "To: support@example.test\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "Message-ID: <dsn.%s>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n'
        "\r\n"
        "--B\r\n"
        "Content-Type: text/plain\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered.\r\n\r\n"
        "--B\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; %s\r\n\r\n"
        "Final-Recipient: rfc822; %s\r\n"
        "Action: failed\r\n"
        "Status: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\r\n"
        "--B\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
        "From: support@example.test\r\n"
        "To: %s\r\n"
        "Subject: [SUP-1] Printer does not print\r\n"
        "Message-ID: <%s>\r\n\r\n"
        "--B--\r\n"
    ) % (original_message_id, reporting, failed, failed, original_message_id)
    return text.encode()
