"""Tests for helpdesk.mail.compose: headers, MIME structure, encodings, injection, subjects."""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from email.message import EmailMessage, MIMEPart

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpdesk.mail.compose import (
    Outgoing,
    OutgoingAttachment,
    compose,
    make_message_id,
    reply_subject,
    tagged_subject,
)

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
BASE = Outgoing(
    from_address="support@example.test",
    from_name="Example Support",
    to=(("Chris Customer", "chris@customer.example"),),
    subject="[SUP-12] Received: Printer on fire",
    text="Hello Chris,\n\nwe are on it.\n",
    date=NOW,
    message_id="20260302T090000.0123456789abcdef@example.test",
)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def content(part: MIMEPart | None) -> str:
    """A text part's decoded content with the wire's CRLF line endings turned back into LF."""
    assert part is not None
    text = part.get_content()
    assert isinstance(text, str)
    return text.replace("\r\n", "\n")


def header_names(data: bytes) -> list[str]:
    """Names of the top-level headers, read straight from the bytes."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0] for line in head.split("\r\n") if line and not line[0].isspace()]


def raw_header(data: bytes, name: str) -> str:
    """A top-level header's raw value, folding kept."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(rf"^{re.escape(name)}: (.*?)\r\n(?! )", head + "\r\n", re.MULTILINE | re.DOTALL)
    assert match is not None, name
    return match.group(1)


def assert_wire_safe(data: bytes) -> None:
    """CRLF only, 7-bit, no line longer than 998 octets."""
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert all(byte < 128 for byte in data)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def structure(part: MIMEPart) -> object:
    if part.is_multipart():
        return (part.get_content_type(), [structure(p) for p in part.iter_parts()])
    return part.get_content_type()


# --- headers ----------------------------------------------------------------------------------------


def test_plain_message_headers_and_body() -> None:
    data = compose(BASE)
    msg = parse(data)
    assert_wire_safe(data)
    assert msg["From"] == "Example Support <support@example.test>"
    assert msg["To"] == "Chris Customer <chris@customer.example>"
    assert msg["Subject"] == "[SUP-12] Received: Printer on fire"
    assert msg["Date"] == "Mon, 02 Mar 2026 09:00:00 +0000"
    assert msg["Date"].datetime == NOW
    assert msg["Message-ID"] == "<20260302T090000.0123456789abcdef@example.test>"
    assert msg["MIME-Version"] == "1.0"
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "utf-8"
    assert content(msg) == BASE.text
    for absent in ("Reply-To", "In-Reply-To", "References", "Auto-Submitted", "Bcc", "Cc"):
        assert absent not in msg
    assert header_names(data)[:5] == ["From", "To", "Subject", "Date", "Message-ID"]


def test_optional_headers() -> None:
    out = replace(
        BASE,
        reply_to="support+r.SUP-12.abc@example.test",
        in_reply_to="orig@customer.example",
        references=("first@customer.example", "orig@customer.example"),
        auto_submitted="auto-replied",
        headers=(("X-Helpdesk-Loop", "SUP-12"), ("X-Auto-Response-Suppress", "All"), ("Precedence", "bulk")),
    )
    msg = parse(compose(out))
    assert msg["Reply-To"] == "support+r.SUP-12.abc@example.test"
    assert msg["In-Reply-To"] == "<orig@customer.example>"
    assert msg["References"] == "<first@customer.example> <orig@customer.example>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Helpdesk-Loop"] == "SUP-12"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "bulk"


def test_empty_auto_submitted_is_left_out() -> None:
    assert "Auto-Submitted" not in parse(compose(replace(BASE, auto_submitted=" \r\n")))


def test_ids_given_with_brackets_or_spaces_are_cleaned() -> None:
    out = replace(BASE, message_id=" <a.b@example.test> ", in_reply_to="<c@d>", references=("<e@f>", " ", "<c@d>"))
    msg = parse(compose(out))
    assert msg["Message-ID"] == "<a.b@example.test>"
    assert msg["In-Reply-To"] == "<c@d>"
    assert msg["References"] == "<e@f> <c@d>"


def test_several_recipients_and_special_display_names() -> None:
    out = replace(
        BASE,
        from_name='Support "Team", Example (SUP-12)',
        to=(("Doe, John", "john@customer.example"), ("", "jane@customer.example"), ("O'Brien", "ob@x.example")),
    )
    msg = parse(compose(out))
    assert msg["From"].addresses[0].display_name == 'Support "Team", Example (SUP-12)'
    assert msg["From"].addresses[0].addr_spec == "support@example.test"
    to = [(a.display_name, a.addr_spec) for a in msg["To"].addresses]
    assert to == [("Doe, John", "john@customer.example"), ("", "jane@customer.example"), ("O'Brien", "ob@x.example")]


def test_no_recipients_means_no_to_header() -> None:
    msg = parse(compose(replace(BASE, to=())))
    assert "To" not in msg


def test_non_ascii_names_and_subject_round_trip() -> None:
    subject = "Grüße aus Köln – Drucker brennt 🔥 " + "sehr lange Betreffzeile " * 6
    out = replace(
        BASE,
        from_name="Jürgen Müller, Support",
        to=(("Zoë Ångström", "zoe@customer.example"), ("山田 太郎", "yamada@customer.example")),
        subject=subject,
        text="Schöne Grüße\nПривет мир\n",
    )
    data = compose(out)
    assert_wire_safe(data)
    assert "=?utf-8?" in raw_header(data, "Subject")
    msg = parse(data)
    assert msg["Subject"] == subject.strip()
    assert msg["From"].addresses[0].display_name == "Jürgen Müller, Support"
    assert [a.display_name for a in msg["To"].addresses] == ["Zoë Ångström", "山田 太郎"]
    assert content(msg) == out.text
    assert msg["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_date_keeps_its_offset_and_naive_dates_are_refused() -> None:
    berlin = datetime(2026, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=1)))
    msg = parse(compose(replace(BASE, date=berlin)))
    assert msg["Date"] == "Mon, 02 Mar 2026 10:00:00 +0100"
    with pytest.raises(ValueError, match="timezone-aware"):
        compose(replace(BASE, date=datetime(2026, 3, 2, 9, 0)))


@pytest.mark.parametrize("message_id", ["<>", "", "  ", "ünïcode@example.test", "x" * 901])
def test_unusable_message_ids_are_refused(message_id: str) -> None:
    with pytest.raises(ValueError, match="message_id"):
        compose(replace(BASE, message_id=message_id))


@pytest.mark.parametrize("address", ["not-an-address", "a b@example.test", "x@example.test, y@example.test", ""])
def test_invalid_addresses_are_refused(address: str) -> None:
    with pytest.raises(ValueError):
        compose(replace(BASE, to=(("X", address),)))
    with pytest.raises(ValueError):
        compose(replace(BASE, from_address=address))


# --- references ---------------------------------------------------------------------------------------


def test_references_keep_the_first_and_the_last_19() -> None:
    ids = tuple(f"m{i}@customer.example" for i in range(30))
    msg = parse(compose(replace(BASE, references=ids)))
    refs = msg["References"].split()
    assert len(refs) == 20
    assert refs == [f"<{i}>" for i in (ids[0], *ids[-19:])]


@pytest.mark.parametrize("count", [1, 19, 20, 21])
def test_references_up_to_20_are_kept_whole(count: int) -> None:
    ids = tuple(f"m{i}@x.example" for i in range(count))
    refs = parse(compose(replace(BASE, references=ids)))["References"].split()
    expected = list(ids) if count <= 20 else [ids[0], *ids[-19:]]
    assert refs == [f"<{i}>" for i in expected]


def test_long_ids_are_folded_between_ids_never_encoded() -> None:
    ids = tuple(f"20260302T090000.{i:032x}{'y' * 40}@support.example.test" for i in range(5))
    data = compose(replace(BASE, message_id=ids[0], in_reply_to=ids[-1], references=ids))
    assert_wire_safe(data)
    for name in ("Message-ID", "In-Reply-To", "References"):
        assert "=?" not in raw_header(data, name)
    assert raw_header(data, "References").count("\r\n ") == 4
    msg = parse(data)
    assert msg["References"].split() == [f"<{i}>" for i in ids]
    assert msg["In-Reply-To"] == f"<{ids[-1]}>"


def test_junk_ids_are_dropped() -> None:
    junk = ("ok@x.example", "nön-ascii@x.example", "x" * 1000 + "@x.example", "\r\n", "<>")
    msg = parse(compose(replace(BASE, in_reply_to="bäd@x.example", references=junk)))
    assert "In-Reply-To" not in msg
    assert msg["References"] == "<ok@x.example>"


# --- header injection --------------------------------------------------------------------------------


INJECTIONS = [
    "Printer\r\nBcc: victim@evil.example",
    "Printer\nBcc: victim@evil.example",
    "Printer\rBcc: victim@evil.example",
    "Printer\r\n\r\nfake body",
    "Printer\x00\x0b\x0c\x1c\x85\u2028\u2029Bcc: victim@evil.example",
]


@pytest.mark.parametrize("evil", INJECTIONS)
def test_header_injection_is_neutralised(evil: str) -> None:
    out = replace(
        BASE,
        subject=evil,
        from_name=evil,
        to=((evil, "chris@customer.example"),),
        auto_submitted="auto-replied" + evil[7:],
        headers=(("X-Helpdesk-Loop", evil), ("X-Other", "é" + evil)),
        attachments=(OutgoingAttachment(evil + ".pdf", "application/pdf", b"%PDF"),),
    )
    data = compose(out)
    assert_wire_safe(data)
    names = header_names(data)
    expected = ["From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "X-Helpdesk-Loop", "X-Other"]
    assert names == [*expected, "MIME-Version", "Content-Type"]
    msg = parse(data)
    assert "Bcc" not in msg
    assert not msg.defects
    for name in ("Subject", "X-Helpdesk-Loop", "From", "To"):
        value = str(msg[name])
        assert "\r" not in value and "\n" not in value
    assert msg["Subject"].startswith("Printer ")
    attachment = next(msg.iter_attachments())
    filename = attachment.get_filename()
    assert filename is not None and "\n" not in filename and "\r" not in filename


@pytest.mark.parametrize(
    "address",
    ["chris@customer.example\r\nBcc: victim@evil.example", "chris@customer.example>\r\nBcc: <victim@evil.example"],
)
def test_injection_through_an_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        compose(replace(BASE, to=(("Chris", address),)))
    with pytest.raises(ValueError):
        compose(replace(BASE, reply_to=address))


@pytest.mark.parametrize("name", ["X-Bad\r\nBcc", "X Bad", "X-Bad:", "", "X-Bäd"])
def test_invalid_extra_header_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid header name"):
        compose(replace(BASE, headers=((name, "x"),)))


@pytest.mark.parametrize("name", ["Subject", "from", "Message-ID", "Content-Type", "MIME-Version", "Bcc", "References"])
def test_headers_compose_writes_cannot_be_given_again(name: str) -> None:
    with pytest.raises(ValueError, match="written by compose"):
        compose(replace(BASE, headers=((name, "x"),)))


def test_long_ascii_extra_header_stays_verbatim() -> None:
    url = "<https://example.test/unsubscribe/" + "u" * 120 + ">"
    data = compose(replace(BASE, headers=(("List-Unsubscribe", url),)))
    assert raw_header(data, "List-Unsubscribe") == url
    assert parse(data)["List-Unsubscribe"] == url


# --- bodies and parts --------------------------------------------------------------------------------


def test_long_lines_are_encoded_and_round_trip() -> None:
    text = "a" * 5000 + "\n" + "ü" * 3000 + "\nshort\n"
    html = "<p>" + "b" * 4000 + "</p>\n"
    data = compose(replace(BASE, text=text, html=html))
    assert_wire_safe(data)
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    msg = parse(data)
    assert content(msg.get_body(preferencelist=("plain",))) == text
    assert content(msg.get_body(preferencelist=("html",))) == html


def test_ascii_body_with_short_lines_is_7bit() -> None:
    msg = parse(compose(BASE))
    assert msg["Content-Transfer-Encoding"] == "7bit"


def test_line_endings_in_the_text_are_normalised() -> None:
    msg = parse(compose(replace(BASE, text="one\r\ntwo\rthree\nfour")))
    assert content(msg) == "one\ntwo\nthree\nfour\n"


def test_html_gives_multipart_alternative() -> None:
    data = compose(replace(BASE, html="<p>Hello <b>Chris</b></p>\n"))
    msg = parse(data)
    assert structure(msg) == ("multipart/alternative", ["text/plain", "text/html"])
    assert msg["MIME-Version"] == "1.0"
    html = msg.get_body(preferencelist=("html",))
    assert html is not None and html.get_content_charset() == "utf-8"
    assert content(html) == "<p>Hello <b>Chris</b></p>\n"
    assert data.count(b"MIME-Version") == 1


def test_attachments_give_multipart_mixed() -> None:
    out = replace(
        BASE,
        attachments=(
            OutgoingAttachment("Rechnung März.pdf", "application/pdf", b"%PDF-1.7\n" + bytes(range(256))),
            OutgoingAttachment("notes.txt", "text/plain", "Zeile ä\n".encode()),
            OutgoingAttachment(None, "application/octet-stream", b"\x00\x01"),
        ),
    )
    data = compose(out)
    assert_wire_safe(data)
    msg = parse(data)
    assert structure(msg) == (
        "multipart/mixed",
        ["text/plain", "application/pdf", "text/plain", "application/octet-stream"],
    )
    assert content(msg.get_body(preferencelist=("plain",))) == BASE.text
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["Rechnung März.pdf", "notes.txt", None]
    assert [p.get_content_disposition() for p in parts] == ["attachment"] * 3
    assert [p.get_payload(decode=True) for p in parts] == [a.data for a in out.attachments]


def test_inline_images_with_html_go_into_multipart_related() -> None:
    out = replace(
        BASE,
        html='<p><img src="cid:logo@example.test"></p>',
        attachments=(
            OutgoingAttachment("logo.png", "image/png", PNG, content_id="<logo@example.test>", inline=True),
            OutgoingAttachment("report.pdf", "application/pdf", b"%PDF"),
        ),
    )
    msg = parse(compose(out))
    assert structure(msg) == (
        "multipart/mixed",
        [
            ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html", "image/png"])]),
            "application/pdf",
        ],
    )
    related = next(p for p in msg.walk() if p.get_content_type() == "multipart/related")
    assert related.get_param("type") == "text/html"
    image = next(p for p in msg.walk() if p.get_content_type() == "image/png")
    assert image["Content-ID"] == "<logo@example.test>"
    assert image.get_content_disposition() == "inline"
    assert image.get_filename() == "logo.png"
    assert image.get_payload(decode=True) == PNG


def test_inline_images_without_other_attachments_keep_alternative_on_top() -> None:
    out = replace(
        BASE,
        html='<img src="cid:a@b">',
        attachments=(OutgoingAttachment(None, "image/gif", b"GIF89a", content_id="a@b", inline=True),),
    )
    msg = parse(compose(out))
    assert structure(msg) == (
        "multipart/alternative",
        ["text/plain", ("multipart/related", ["text/html", "image/gif"])],
    )


def test_inline_attachment_without_html_is_just_mixed() -> None:
    out = replace(
        BASE, attachments=(OutgoingAttachment("logo.png", "image/png", PNG, content_id="logo@x", inline=True),)
    )
    msg = parse(compose(out))
    assert structure(msg) == ("multipart/mixed", ["text/plain", "image/png"])
    image = list(msg.iter_parts())[1]
    assert image.get_content_disposition() == "inline"
    assert image["Content-ID"] == "<logo@x>"


@pytest.mark.parametrize("content_type", ["message/rfc822", "multipart/mixed", "nonsense", "", "text/plain; charset=x"])
def test_unusable_content_types(content_type: str) -> None:
    out = replace(BASE, attachments=(OutgoingAttachment("a.eml", content_type, b"Subject: x\r\n\r\nhi\r\n"),))
    msg = parse(compose(out))
    part = next(msg.iter_attachments())
    expected = "text/plain" if content_type.startswith("text/plain") else "application/octet-stream"
    assert part.get_content_type() == expected
    assert part.get_payload(decode=True) == b"Subject: x\r\n\r\nhi\r\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=st.text(max_size=300), name=st.text(max_size=80), value=st.text(max_size=200), text=st.text(max_size=500)
)
def test_any_text_gives_a_safe_message(subject: str, name: str, value: str, text: str) -> None:
    out = replace(
        BASE,
        subject=subject,
        from_name=name,
        to=((name, "chris@customer.example"),),
        text=text,
        html=text,
        headers=(("X-Value", value),),
    )
    data = compose(out)
    assert_wire_safe(data)
    assert header_names(data) == [
        "From",
        "To",
        "Subject",
        "Date",
        "Message-ID",
        "X-Value",
        "MIME-Version",
        "Content-Type",
    ]
    msg = parse(data)
    assert msg["From"].addresses[0].addr_spec == "support@example.test"
    assert [a.addr_spec for a in msg["To"].addresses] == ["chris@customer.example"]


# --- message ids ------------------------------------------------------------------------------------


def test_make_message_id() -> None:
    mid = make_message_id("example.test", NOW)
    assert re.fullmatch(r"20260302T090000\.[0-9a-f]{16}@example\.test", mid)
    assert len({make_message_id("example.test", NOW) for _ in range(100)}) == 100
    assert make_message_id("example.test", NOW, unique="abc") == "20260302T090000.abc@example.test"
    berlin = NOW.astimezone(timezone(timedelta(hours=1)))
    assert make_message_id("example.test", berlin, unique="x") == "20260302T090000.x@example.test"
    assert make_message_id(" example.test\r\n", NOW, unique="<a@b>") == "20260302T090000.ab@example.test"
    with pytest.raises(ValueError, match="domain"):
        make_message_id("", NOW)


# --- subjects ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subject",
    [
        "Printer on fire",
        "Re: Printer on fire",
        "RE: Printer on fire",
        "AW: [SUP-12] Printer on fire",
        "[SUP-12] Printer on fire",
        "[#SUP-12] Printer on fire",
        "Re: [SUP-12] Printer on fire",
        "Re: Re: AW: Fwd: Printer on fire",
        "Re[2]: Printer on fire",
        "Re [3] : Printer on fire",
        "FW: WG: Printer on fire",
        "Antw: SV: VS: Printer on fire",
        "Réf : Printer on fire",
        "R: Printer on fire",
        "Re: [SUP-12] AW: [#SUP-12] Printer on fire",
        "Printer [SUP-12] on fire",
        "  Re:   Printer   on fire  ",
        "Re: [sup-12] Printer on fire",
        "Re:\r\n [SUP-12] Printer on fire",
    ],
)
def test_reply_and_tagged_subjects(subject: str) -> None:
    assert reply_subject(subject, "[SUP-12]") == "Re: [SUP-12] Printer on fire"
    assert tagged_subject(subject, "[SUP-12]") == "[SUP-12] Printer on fire"


@pytest.mark.parametrize("subject", ["", "   ", "Re:", "[SUP-12]", "AW: [#SUP-12]"])
def test_empty_subjects(subject: str) -> None:
    assert reply_subject(subject, "[SUP-12]") == "Re: [SUP-12]"
    assert tagged_subject(subject, "[SUP-12]") == "[SUP-12]"


def test_other_tags_and_look_alikes_are_kept() -> None:
    assert reply_subject("Re: [SUP-123] Printer", "[SUP-12]") == "Re: [SUP-12] [SUP-123] Printer"
    assert reply_subject("[OPS-12] Printer", "[SUP-12]") == "Re: [SUP-12] [OPS-12] Printer"
    assert reply_subject("Regarding: the printer", "[SUP-12]") == "Re: [SUP-12] Regarding: the printer"
    assert reply_subject("Rechnung 12", "[SUP-12]") == "Re: [SUP-12] Rechnung 12"
    assert tagged_subject("RFC: new printer", "[SUP-12]") == "[SUP-12] RFC: new printer"
