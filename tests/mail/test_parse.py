"""Tests for helpdesk.mail.parse.

1. hand-written unit tests for the decoding rules;
2. per-field agreement with the imap_tools corpus (prints a table, asserts thresholds);
3. robustness: every file of every shared corpus parses without raising (prints count and timing);
4. the fast MIME path builds exactly the stdlib parser's tree (differential, on corpora and mutants).
"""

from __future__ import annotations

import base64
import email
import hashlib
import json
import pickle
import random
import re
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

import helpdesk.mail.parse as parse_mod
from helpdesk.mail.parse import Address, Attachment, ParsedMail, parse_message
from tests.corpora import corpora_dir


def mail(text: str) -> bytes:
    """A test mail from readable text: LF -> CRLF, UTF-8 (use only ASCII unless testing 8-bit)."""
    return text.replace("\n", "\r\n").encode("utf-8")


BASIC = """\
From: Anna <anna@example.com>
To: support@example.com
Subject: hello
Date: Tue, 14 May 2024 09:10:58 +0200
Message-ID: <m1@example.com>

Body.
"""


# --------------------------------------------------------------------------------------------------
# 1. unit tests


def test_basic_fields() -> None:
    p = parse_message(mail(BASIC))
    assert p.subject == "hello"
    assert p.from_ == Address("Anna", "anna@example.com")
    assert p.to == (Address("", "support@example.com"),)
    assert p.cc == p.bcc == p.reply_to == ()
    assert p.sender is None
    assert p.message_id == "m1@example.com"
    assert p.date == datetime(2024, 5, 14, 9, 10, 58, tzinfo=timezone(timedelta(hours=2)))
    assert p.text == "Body.\r\n"
    assert p.html == ""
    assert p.attachments == ()
    assert p.defects == ()
    assert isinstance(p.message, email.message.Message)
    assert p.message["Subject"] == "hello"


def test_rfc2047_subject_in_two_charsets() -> None:
    # UTF-8 base64 word and ISO-8859-1 Q word, folded; whitespace between adjacent words is dropped,
    # whitespace between plain text and an encoded word is kept.
    raw = mail(
        "Subject: Re: =?UTF-8?B?w5xiZXJ3ZWlzdW5n?=\n"
        " =?iso-8859-1?q?_f=FCr_M=E4rz?= erledigt\n"
        "From: a@example.com\n\nx\n"
    )
    p = parse_message(raw)
    assert p.subject == "Re: Überweisung für März erledigt"
    assert p.headers["subject"] == ("Re: Überweisung für März erledigt",)


def test_rfc2047_multibyte_character_split_across_words() -> None:
    # "日本語" in UTF-8 is 9 bytes; split 4 + 5 so the second character straddles the two words.
    data = "日本語".encode()
    w1 = base64.b64encode(data[:4]).decode()
    w2 = base64.b64encode(data[4:]).decode()
    p = parse_message(mail(f"Subject: =?utf-8?b?{w1}?= =?utf-8?b?{w2}?=\nFrom: a@example.com\n\nx\n"))
    assert p.subject == "日本語"


def test_rfc2047_iso_2022_jp_and_unknown_charset_in_header() -> None:
    p = parse_message(
        mail(
            "Subject: =?ISO-2022-JP?B?GyRCJUYlOSVIGyhC?= =?x-bogus?Q?caf=C3=A9?=\n"
            "From: a@example.com\n\nx\n"
        )
    )
    # Unknown charset: decoded as UTF-8 when the bytes are UTF-8.
    assert p.subject == "テストcafé"


def test_rfc2231_filename() -> None:
    raw = mail(
        "From: a@example.com\n"
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain\n\nsee attached\n"
        "--b\nContent-Type: application/pdf\n"
        "Content-Disposition: attachment; filename*=UTF-8''%E2%82%AC%20Rechnung%20M%C3%A4rz.pdf\n"
        "Content-Transfer-Encoding: base64\n\nJVBERi0xLjQK\n"
        "--b\nContent-Type: text/plain\n"
        "Content-Disposition: attachment;\n filename*0*=iso-8859-1''%DCbersicht;\n filename*1=\".txt\"\n\nabc\n"
        "--b--\n"
    )
    p = parse_message(raw)
    assert p.text == "see attached"
    assert [a.filename for a in p.attachments] == ["€ Rechnung März.pdf", "Übersicht.txt"]
    pdf = p.attachments[0]
    assert pdf.payload == b"%PDF-1.4\n"
    assert pdf.content_type == "application/pdf"
    assert pdf.disposition == "attachment"
    assert p.attachments[1].payload == b"abc"


def test_rfc2047_and_raw_8bit_filenames() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: image/png; name=\"=?UTF-8?B?R3LDvMOfZS5wbmc=?=\"\r\n"
        b"Content-Disposition: inline\r\nContent-ID: <img1@example.com>\r\n\r\nPNG\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename=\"" + "Отчёт.xlsx".encode() + b"\"\r\n\r\nXLS\r\n"
        b"--b--\r\n"
    )
    p = parse_message(raw)
    png, xls = p.attachments
    assert png.filename == "Grüße.png"
    assert png.content_id == "img1@example.com"
    assert png.disposition == "inline"
    assert xls.filename == "Отчёт.xlsx"
    assert xls.payload == b"XLS"


def test_bogus_charset_falls_back() -> None:
    utf8 = parse_message(
        b"From: a@example.com\r\nContent-Type: text/plain; charset=x-no-such-charset\r\n\r\n"
        + "Grüße €".encode()
    )
    assert utf8.text == "Grüße €"
    assert any("unknown charset" in d for d in utf8.defects)
    latin = parse_message(
        b"From: a@example.com\r\nContent-Type: text/plain; charset=\"fakescii\"\r\n\r\n"
        + "Grüße".encode("cp1252")
    )
    assert latin.text == "Grüße"
    # Declared US-ASCII (or nothing) but 8-bit: UTF-8 if it is UTF-8, else windows-1252.
    ascii_ = parse_message(
        b"From: a@example.com\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + "“quoted”".encode("cp1252")
    )
    assert ascii_.text == "“quoted”"
    # ISO-8859-1 is read as its superset windows-1252, like every browser and mail client does.
    iso = parse_message(
        b"From: a@example.com\r\nContent-Type: text/plain; charset=iso-8859-1\r\n\r\n" + "€ – é".encode("cp1252")
    )
    assert iso.text == "€ – é"
    # GB2312 label, GBK bytes.
    gbk = parse_message(
        b"From: a@example.com\r\nContent-Type: text/plain; charset=gb2312\r\n\r\n" + "中文镕".encode("gbk")
    )
    assert gbk.text == "中文镕"


def test_undeclared_charset_of_html_taken_from_meta() -> None:
    raw = (
        b"From: a@example.com\r\nContent-Type: text/html\r\n\r\n"
        b'<html><head><meta http-equiv="Content-Type" content="text/html; charset=windows-1251"></head>'
        + "<body>Привет</body></html>".encode("cp1251")
    )
    assert "<body>Привет</body>" in parse_message(raw).html


def test_8bit_headers() -> None:
    raw = (
        b"From: " + "Jörg Müller".encode() + b" <Joerg@Example.COM>\r\n"
        b"Subject: " + "Grüße".encode() + b"\r\n"
        b"X-Latin: " + "Café".encode("cp1252") + b"\r\n\r\nbody\r\n"
    )
    p = parse_message(raw)
    assert p.from_ == Address("Jörg Müller", "Joerg@example.com")
    assert p.subject == "Grüße"
    assert p.header("X-Latin") == "Café"


def test_broken_base64_does_not_raise() -> None:
    raw = mail(
        "From: a@example.com\n"
        "Content-Type: multipart/mixed; boundary=b\n\n"
        "--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n"
        "SGVsbG8g*V2\n9ybGQ\n"  # junk character, missing padding
        "--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        "QUJD\n"
        "--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        "Q\n"  # a single character: undecodable
        "--b\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
        "this is plain text, whatever the header says\n"
        "--b--\n"
    )
    p = parse_message(raw)
    assert p.text.startswith("Hello World")
    assert p.text.endswith("this is plain text, whatever the header says")
    assert [a.payload for a in p.attachments] == [b"ABC", b""]
    assert any("base64" in d for d in p.defects)


def test_missing_message_id_and_headers() -> None:
    p = parse_message(mail("Subject: x\n\nbody\n"))
    assert p.message_id is None
    assert p.from_ is None
    assert p.date is None
    assert p.header("message-id") is None
    assert "no From header" in p.defects
    empty = parse_message(mail("Message-ID: \nFrom: a@example.com\n\nbody\n"))
    assert empty.message_id is None
    odd = parse_message(mail("Message-ID:  < abc@example.com > (comment)\nFrom: a@example.com\n\nx\n"))
    assert odd.message_id == "abc@example.com"


def test_references_and_in_reply_to() -> None:
    p = parse_message(
        mail(
            "From: a@example.com\n"
            "In-Reply-To: <c@example.com> (Anna's message of Monday)\n"
            "References: <a@example.com>\n <b@example.com>\n"
            "\t<c@example.com> <a@example.com>\n"
            "\nx\n"
        )
    )
    assert p.references == ("a@example.com", "b@example.com", "c@example.com")
    assert p.in_reply_to == ("c@example.com",)
    bare = parse_message(mail("From: a@example.com\nIn-Reply-To: 1234@mail.example.com\n\nx\n"))
    assert bare.in_reply_to == ("1234@mail.example.com",)
    two = parse_message(mail("From: a@example.com\nReferences: <x@e>\nReferences: <y@e>\n\nx\n"))
    assert two.references == ("x@e", "y@e")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Tue, 14 May 2024 09:10:58 +0200", datetime(2024, 5, 14, 7, 10, 58, tzinfo=UTC)),
        ("14 May 2024 09:10:58 -0700 (PDT)", datetime(2024, 5, 14, 16, 10, 58, tzinfo=UTC)),
        ("Tue, 14 May 2024 09:10:58 EST", datetime(2024, 5, 14, 14, 10, 58, tzinfo=UTC)),
        ("Tue, 14 May 2024 09:10:58 -0000", datetime(2024, 5, 14, 9, 10, 58, tzinfo=UTC)),
        ("Tue, 14 May 2024 09:10:58", datetime(2024, 5, 14, 9, 10, 58, tzinfo=UTC)),  # no zone
        ("Tue, 14 May 2024 09:10", datetime(2024, 5, 14, 9, 10, tzinfo=UTC)),
        ("Tue, 14 May 2024 09:10:58 H0500", datetime(2024, 5, 14, 9, 10, 58, tzinfo=UTC)),  # junk zone
        ("21 Nov 97 09:55:06 GMT", datetime(1997, 11, 21, 9, 55, 6, tzinfo=UTC)),
        ("Thu,\n 13\n  Feb\n 1969 23:32 -0330", datetime(1969, 2, 14, 3, 2, tzinfo=UTC)),
        ("Wed, 15 Dec 2010    59:10 -0500", None),
        ("Wed, 30 Feb 2011 10:00:00 +0000", None),
        ("Pn, 29 paX 2007 21:13:00 +0100", None),
        ("yesterday", None),
    ],
)
def test_date(value: str, expected: datetime | None) -> None:
    p = parse_message(mail(f"From: a@example.com\nDate: {value}\n\nx\n"))
    assert p.date == expected
    if p.date is not None:
        assert p.date.tzinfo is not None
        assert p.date.utcoffset() is not None
    else:
        assert any("Date" in d for d in p.defects)


def test_date_keeps_zone() -> None:
    p = parse_message(mail("From: a@example.com\nDate: Tue, 14 May 2024 09:10:58 -0330\n\nx\n"))
    assert p.date is not None and p.date.utcoffset() == timedelta(hours=-3, minutes=-30)
    no_zone = parse_message(mail("From: a@example.com\nDate: Tue, 14 May 2024 09:10:58\n\nx\n"))
    assert no_zone.date is not None and no_zone.date.tzinfo is UTC


def test_addresses() -> None:
    p = parse_message(
        mail(
            "From: =?utf-8?Q?M=C3=BCller=2C_Anna?= <Anna.Mueller@Kunde.EXAMPLE>\n"
            "To: \"Doe, John\" <john@example.com>, jane@EXAMPLE.org,\n"
            " Team: x@example.com, y@example.com;, undisclosed-recipients:;\n"
            "Cc: \"=?iso-8859-1?q?J=F6rg?=\" <j@example.com> (Jörg at work)\n"
            "Reply-To: <noreply@example.com>\n"
            "Reply-To: Second <second@example.com>\n"
            "Sender: Bot <bot@example.com>\n"
            "Bcc: not an address\n"
            "\nx\n"
        )
    )
    assert p.from_ == Address("Müller, Anna", "Anna.Mueller@kunde.example")
    assert p.to == (
        Address("Doe, John", "john@example.com"),
        Address("", "jane@example.org"),
        Address("", "x@example.com"),
        Address("", "y@example.com"),
    )
    assert p.cc == (Address("Jörg", "j@example.com"),)
    assert p.reply_to == (Address("", "noreply@example.com"), Address("Second", "second@example.com"))
    assert p.sender == Address("Bot", "bot@example.com")
    assert all(a.email == "" for a in p.bcc) and p.bcc


def test_headers_mapping() -> None:
    p = parse_message(
        mail(
            "Received: from a\n by b; Tue, 14 May 2024 09:10:58 +0200\n"
            "Received: from c by d\n"
            "From: a@example.com\n"
            "X-Custom: =?utf-8?q?caf=C3=A9?=\n"
            "\nx\n"
        )
    )
    assert list(p.headers) == ["received", "from", "x-custom"]
    assert p.headers["received"] == ("from a by b; Tue, 14 May 2024 09:10:58 +0200", "from c by d")
    assert p.headers.get("x-custom") == ("café",)
    assert p.header("X-CUSTOM") == "café"
    assert p.header("received") == "from a by b; Tue, 14 May 2024 09:10:58 +0200"
    assert p.header("x-missing") is None
    assert p.headers.get("x-missing", ()) == ()
    assert dict(p.headers)["from"] == ("a@example.com",)


def test_bodies_and_attachments() -> None:
    inner = mail(
        "From: Original <orig@example.com>\nSubject: the original\n"
        "Content-Type: text/plain; charset=utf-8\n\nOriginal text.\n"
    )
    raw = (
        mail(
            "From: a@example.com\n"
            "Content-Type: multipart/mixed; boundary=outer\n\n"
            "preamble\n"
            "--outer\nContent-Type: multipart/alternative; boundary=alt\n\n"
            "--alt\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
            "Gr=C3=BC=C3=9Fe,=\n soft break\n"
            "--alt\nContent-Type: multipart/related; boundary=rel\n\n"
            "--rel\nContent-Type: text/html; charset=utf-8\n\n<p>Gr&uuml;&szlig;e <img src=\"cid:logo\"></p>\n"
            "--rel\nContent-Type: image/png\nContent-ID: <logo>\n"
            "Content-Transfer-Encoding: base64\n\niVBORw==\n"
            "--rel--\n"
            "--alt--\n"
            "--outer\nContent-Type: text/plain; charset=utf-8\n\nSecond text part.\n"
            "--outer\nContent-Type: message/rfc822\nContent-Disposition: attachment; filename=orig.eml\n\n"
        )
        + inner
        + mail("--outer\nContent-Type: text/calendar; method=REQUEST\n\nBEGIN:VCALENDAR\n--outer--\n")
    )
    p = parse_message(raw)
    assert p.text == "Grüße, soft break\nSecond text part."
    assert p.html == '<p>Gr&uuml;&szlig;e <img src="cid:logo"></p>'
    logo, orig, cal = p.attachments
    assert (logo.filename, logo.content_type, logo.content_id, logo.disposition) == (
        None, "image/png", "logo", None,
    )
    assert logo.payload == b"\x89PNG"
    assert (orig.filename, orig.content_type) == ("orig.eml", "message/rfc822")
    assert orig.payload == inner.rstrip(b"\r\n")  # the attached message's own bytes
    assert parse_message(orig.payload).text == "Original text."
    assert cal.content_type == "text/calendar"
    assert cal.payload == b"BEGIN:VCALENDAR"


def test_multipart_without_usable_boundary() -> None:
    p = parse_message(
        mail(
            "From: a@example.com\nContent-Type: multipart/mixed; boundary=declared\n\n"
            "--actual\nContent-Type: text/plain\n\nrecovered text\n--actual--\n"
        )
    )
    assert p.text == "recovered text"
    assert any("boundary" in d for d in p.defects)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"\x00\xff\xfe garbage \x80\x81" * 50,
        b"Subject: " + b"=?utf-8?q?" * 20000 + b"\r\n\r\n",
        b"From: <<<@@@>>>\r\nTo: \"\r\nDate: 99 Foo 99999 99:99:99 +9999\r\nContent-Type: /\r\n\r\nx",
        b"Content-Type: multipart/mixed; boundary=\"x\"\r\n\r\n--x\r\nContent-Type: message/rfc822\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!!\r\n--x",
        b"Content-Type: text/plain; charset=\"utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n",
        b"Content-Type: text/plain; charset=utf-16\r\n\r\n\xff\xfeh\x00i\x00\x00\xd8",
        b"Content-Type: text/plain; charset=base64\r\nContent-Type: text/html\r\n\r\nx",
        b"Content-Type: text/plain; charset=undefined\r\n\r\n\xe9",
        b"Content-Disposition: attachment; filename*=bogus'en'%FF%FE%\r\nContent-Type: application/x\r\n\r\nx",
    ],
)
def test_hopeless_input_never_raises(raw: bytes) -> None:
    p = parse_message(raw)
    assert isinstance(p, ParsedMail)
    assert isinstance(p.text, str) and isinstance(p.html, str)
    hash(p)


def test_absurd_nesting_never_raises() -> None:
    depth = 3000
    head = "".join(f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n" for i in range(depth))
    raw = ("From: a@example.com\r\n" + head + "Content-Type: text/plain\r\n\r\ndeep\r\n").encode()
    p = parse_message(raw)
    assert isinstance(p, ParsedMail)
    assert p.defects
    assert p.from_ == Address("", "a@example.com")


def test_equality_hash_pickle() -> None:
    a, b = parse_message(mail(BASIC)), parse_message(mail(BASIC))
    assert a == b
    assert hash(a) == hash(b)
    assert a.message is not b.message
    c = pickle.loads(pickle.dumps(a))
    assert c == a and c.header("subject") == "hello"


def test_non_bytes_input_tolerated() -> None:
    p = parse_message(bytearray(mail(BASIC)))  # type: ignore[arg-type]
    assert p.subject == "hello"


# --------------------------------------------------------------------------------------------------
# 2. imap_tools corpus agreement

# Reached with this parser: subject 112, from 113, to 112, cc 113, bcc 113, reply_to 113, date 113,
# text 109, html 111, attachments 113 (of 113). Thresholds sit one below, so a regression fails.
THRESHOLDS = {
    "subject": 111, "from": 112, "to": 111, "cc": 112, "bcc": 112, "reply_to": 112,
    "date": 112, "text": 108, "html": 110, "attachments": 112,
}
# Known disagreements, all where imap_tools' convention, not the mail, decides:
# - invalid_subject_characters (subject), plain_emails/raw_email6 and content_transfer_encoding_plain
#   (text): raw 8-bit bytes; imap_tools drops them (errors="ignore"), we decode them.
# - missing_body (to): "<Undisclosed-Recipient:@mailman.enron.com;>" holds no valid address;
#   imap_tools keeps "@mailman.enron.com" as an e-mail address, we do not.
# - attachment_2_base64 (text, html): message/rfc822 parts sent base64-encoded; imap_tools walks the
#   undecoded base64 as if it were a message, we decode it (the attachment bytes agree exactly).
# - multipart_report_multiple_status (text): prose inside a message/delivery-status part; imap_tools
#   counts it as body text, we keep the delivery-status part an attachment.
# - content_transfer_encoding_empty (html): undecodable Big5; imap_tools drops bytes, we replace them.
# Text and html are compared ignoring whitespace: 19 corpus files are stored with LF line ends while
# the expectations were made from CRLF copies, and imap_tools joins parts with "" where we add "\n".
# The exact count is printed as well.


def _ws(s: str) -> str:
    return "".join(s.split())


def _exp_address(d: dict[str, str]) -> tuple[str, str]:
    addr = d["email"]
    if "@" in addr:  # we lower-case the domain part
        local, _, domain = addr.rpartition("@")
        addr = f"{local}@{domain.lower()}"
    return (" ".join(d["name"].split()), addr)


def _our_address(a: Address) -> tuple[str, str]:
    return (" ".join(a.name.split()), a.email)


def _exp_date(value: str) -> datetime | None:
    d = datetime.fromisoformat(value)
    if d.year == 1900:  # imap_tools' "unparseable"
        return None
    return d if d.tzinfo is not None else d.replace(tzinfo=UTC)  # naive = no zone; ours is UTC


def _nested(p: ParsedMail) -> list[ParsedMail]:
    """Messages attached to ``p`` (recursively): imap_tools walks into them, we keep them attachments."""
    out = []
    for a in p.attachments:
        if a.content_type == "message/rfc822":
            sub = parse_message(a.payload)
            out.append(sub)
            out.extend(_nested(sub))
    return out


_META_CHARSET = re.compile(r"(?i)charset\s*=\s*[a-z0-9_:.+-]+")


# imap_tools decodes ISO-8859-1 literally, so windows-1252 characters come out as C1 controls
# (U+0080-U+009F); we read ISO-8859-1 as windows-1252 like browsers and mail clients do.
_C1_AS_CP1252 = {c: bytes([c]).decode("cp1252", "ignore") or chr(c) for c in range(0x80, 0xA0)}


def _exp_body(e: dict[str, Any], kind: str) -> str:
    text = str(e[kind]).translate(_C1_AS_CP1252).replace("\ufffd", "")
    return _META_CHARSET.sub("charset=utf-8", text) if kind == "html" else text


def _body(p: ParsedMail, kind: str) -> str:
    # imap_tools: bodies of attached messages included, joined with "", meta charset rewritten to
    # utf-8, undecodable bytes dropped.
    text = "".join(getattr(m, kind) for m in [p, *_nested(p)])
    if kind == "html":
        text = _META_CHARSET.sub("charset=utf-8", text)
    return text.replace("\ufffd", "")


def _att_keys(a: Attachment) -> set[tuple[str, int, str]]:
    payloads = [a.payload]
    if a.content_type == "message/rfc822":  # imap_tools: compat32 as_bytes() of the parsed message
        payloads.append(email.message_from_bytes(a.payload).as_bytes())
    return {(a.filename or "", len(b), hashlib.sha256(b).hexdigest()) for b in payloads}


def _attachments_agree(p: ParsedMail, expected: list[dict[str, Any]]) -> bool:
    # imap_tools lists parts with a filename or a Content-ID, and message/rfc822 parts, also inside
    # attached messages; it also lists a body text part that happens to carry a Content-ID.
    ours = [
        _att_keys(a)
        for m in [p, *_nested(p)]
        for a in m.attachments
        if a.filename or a.content_id or a.content_type == "message/rfc822"
    ]
    wanted = [
        (e["filename"], e["payload"]["size"], e["payload"]["sha256"])
        for e in expected
        if not (e["content_type"] in ("text/plain", "text/html") and not e["filename"]
                and e["content_disposition"] != "attachment")
    ]
    if len(ours) != len(wanted):
        return False
    free = list(ours)
    for key in wanted:
        match = next((k for k in free if key in k), None)
        if match is None:
            return False
        free.remove(match)
    return True


def _imap_cases() -> list[tuple[str, dict[str, Any], bytes]]:
    root = corpora_dir() / "imap_tools-messages"
    cases = []
    for jf in sorted((root / "expected").rglob("*.json")):
        exp = json.loads(jf.read_text(encoding="utf-8"))
        eml = root / exp["_eml"]
        if eml.is_file():
            cases.append((exp["_eml"], exp, eml.read_bytes()))  # bytes as stored: CRLF kept
    return cases


def test_imap_tools_agreement() -> None:
    cases = _imap_cases()
    assert len(cases) >= 100
    fields: dict[str, Callable[[ParsedMail, dict[str, Any]], bool]] = {
        "subject": lambda p, e: _ws(p.subject) == _ws(e["subject"]),
        "from": lambda p, e: (_our_address(p.from_) if p.from_ else None)
        == (_exp_address(e["from_values"]) if e["from_values"] else None),
        "to": lambda p, e: [_our_address(a) for a in p.to] == [_exp_address(d) for d in e["to_values"]],
        "cc": lambda p, e: [_our_address(a) for a in p.cc] == [_exp_address(d) for d in e["cc_values"]],
        "bcc": lambda p, e: [_our_address(a) for a in p.bcc] == [_exp_address(d) for d in e["bcc_values"]],
        "reply_to": lambda p, e: [_our_address(a) for a in p.reply_to]
        == [_exp_address(d) for d in e["reply_to_values"]],
        "date": lambda p, e: p.date == _exp_date(e["date"]),
        "text": lambda p, e: _ws(_body(p, "text")) == _ws(_exp_body(e, "text")),
        "html": lambda p, e: _ws(_body(p, "html")) == _ws(_exp_body(e, "html")),
        "attachments": lambda p, e: _attachments_agree(p, e["attachments"]),
    }
    agree = dict.fromkeys(fields, 0)
    exact = {"text": 0, "html": 0}
    misses: dict[str, list[str]] = {f: [] for f in fields}
    for name, exp, raw in cases:
        p = parse_message(raw)
        for field_name, check in fields.items():
            if check(p, exp):
                agree[field_name] += 1
            else:
                misses[field_name].append(name.removeprefix("tests/messages/"))
        for kind in exact:
            exact[kind] += _body(p, kind) == _exp_body(exp, kind)
    n = len(cases)
    print(f"\nimap_tools agreement ({n} mails)")
    for field_name in fields:
        extra = f"  (exact, whitespace included: {exact[field_name]})" if field_name in exact else ""
        print(f"  {field_name:12} {agree[field_name]:3}/{n}{extra}  {' '.join(misses[field_name])}")
    low = {f: (agree[f], t) for f, t in THRESHOLDS.items() if agree[f] < t}
    assert not low, f"agreement below threshold (reached, threshold): {low}"


# --------------------------------------------------------------------------------------------------
# 3. robustness and speed


_SKIP_PREFIXES = ("LICENSE", "README", "NOTICE", "COPYRIGHT")


def _all_corpus_files() -> list[Path]:
    root = corpora_dir()
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.upper().startswith(_SKIP_PREFIXES) and p.suffix.lower() != ".json"
    ]


def test_every_corpus_file_parses() -> None:
    files = _all_corpus_files()
    assert len(files) > 500
    failures = []
    total = 0.0
    slowest = (0.0, "")
    for path in files:
        raw = path.read_bytes()
        start = time.perf_counter()
        try:
            p = parse_message(raw)
        except Exception as exc:  # pragma: no cover - the point of the test
            failures.append(f"{path}: {type(exc).__name__}: {exc}")
            continue
        elapsed = time.perf_counter() - start
        total += elapsed
        if elapsed > slowest[0]:
            slowest = (elapsed, str(path.relative_to(corpora_dir())))
        assert isinstance(p.subject, str) and isinstance(p.text, str) and isinstance(p.html, str)
        assert p.date is None or p.date.tzinfo is not None
        for a in p.attachments:
            assert isinstance(a.payload, bytes)
            assert a.content_type == a.content_type.lower() and "/" in a.content_type
    print(
        f"\nrobustness: {len(files)} files, {len(failures)} raised, total {total * 1000:.0f} ms, "
        f"slowest {slowest[0] * 1000:.1f} ms ({slowest[1]})"
    )
    assert not failures, "\n".join(failures)


def _typical_support_mail() -> bytes:
    m = EmailMessage()
    m["Return-Path"] = "<anna.mueller@kunde.example>"
    for i in range(4):
        m["Received"] = (
            f"from mx{i}.kunde.example (mx{i}.kunde.example [192.0.2.{i}]) by mail.helpdesk.example "
            f"(Postfix) with ESMTPS id 4F{i}Q2 for <support@helpdesk.example>; Tue, 14 May 2024 09:1{i}:02 +0200"
        )
    m["From"] = "Anna Müller <anna.mueller@kunde.example>"
    m["To"] = "IT Support <support@helpdesk.example>"
    m["Cc"] = 'Jörg Schmidt <j.schmidt@kunde.example>, "Team, IT" <it@kunde.example>'
    m["Subject"] = "AW: [SUP-1042] Drucker im 2. OG druckt nicht – dringend"
    m["Date"] = "Tue, 14 May 2024 09:10:58 +0200"
    m["Message-ID"] = "<a1b2c3d4e5f6@kunde.example>"
    m["In-Reply-To"] = "<sup-1042-3@helpdesk.example>"
    m["References"] = "<sup-1042-1@helpdesk.example> <sup-1042-2@helpdesk.example> <sup-1042-3@helpdesk.example>"
    m["X-Mailer"] = "Microsoft Outlook 16.0"
    text = (
        "Hallo zusammen,\n\nder Drucker im 2. OG druckt seit heute morgen nicht mehr: »Papierstau«.\n\n"
        "Viele Grüße\nAnna Müller\n\n"
        + "".join(f"> Zeile {i} der vorherigen Nachricht mit etwas Text darin – zitiert.\n" for i in range(40))
    )
    m.set_content(text)
    m.add_alternative("<html><body>" + "".join(f"<p>{t}</p>\n" for t in text.splitlines()) + "</body></html>",
                      subtype="html")
    return m.as_bytes(policy=policy.SMTP)


def _median_us(raw: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        parse_message(raw)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def test_parse_speed_report() -> None:
    """Print parse speed; never asserts on time."""
    typical = _typical_support_mail()
    assert parse_message(typical).subject.startswith("AW: [SUP-1042]")
    typical_us = _median_us(typical, 300)
    per_mail = [_median_us(raw, 5) for _, _, raw in _imap_cases()]
    print(
        f"\nparse speed: typical {len(typical) / 1024:.1f} KB support mail median {typical_us:.0f} us; "
        f"imap_tools corpus median {statistics.median(per_mail):.0f} us/message, "
        f"max {max(per_mail):.0f} us"
    )


# --------------------------------------------------------------------------------------------------
# 4. the fast MIME path builds exactly the tree of the stdlib parser


def _tree(m: object) -> object:
    """Everything a compat32 Message holds, recursively, for comparison."""
    if not isinstance(m, email.message.Message):
        return ("?", repr(m))
    payload = m._payload  # type: ignore[attr-defined]
    if isinstance(payload, list):
        payload = [_tree(p) for p in payload]
    return (
        type(m).__name__, m.policy, list(m.raw_items()), m.get_unixfrom(), payload,
        m.get_charset(), m.preamble, m.epilogue, [(type(d).__name__, d.args) for d in m.defects],
        m.get_default_type(), sorted(vars(m)),
    )


def _stdlib_tree(raw: bytes) -> object:
    return _tree(email.parser.BytesParser(policy=policy.compat32).parsebytes(raw))


def _fast(raw: bytes) -> email.message.Message | None:
    return parse_mod._fast_parse(raw.decode("ascii", "surrogateescape"))


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    """A few line-level edits of the kinds that break MIME: lost, repeated or moved lines, changed
    line ends, stray boundary, envelope, continuation and header lines."""
    lines = raw.splitlines(keepends=True)
    stray = [b"\n", b"From x@y Mon\n", b" cont\n", b":bad\n", b": bad\r\n", b"\tx\n", b"From : y\n", b"X: y\n",
             b"Content-Type: multipart/digest; boundary=q\n", b"--q\n", b"--q--\n", b"Content-Type: message/rfc822\n",
             b"Content-Type: message/delivery-status\n", b"Content-Transfer-Encoding: base64\n"]
    for _ in range(rng.randint(1, 4)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        op = rng.randrange(11)
        if op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif op == 2:
            lines.insert(i, rng.choice(stray))
        elif op == 3:
            lines[i] = lines[i].rstrip(b"\r\n") + rng.choice([b"\r", b"\n", b"\r\n", b"", b" \n", b"--\n", b"-- \r\n"])
        elif op == 4:
            lines = lines[:i]
        elif op == 5:
            lines[i] = lines[i].replace(b"\n", b"\r")
        elif op == 6:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 7:
            lines[i] = lines[i].lstrip(b"-")
        elif op == 8:
            lines[i] = b"--" + lines[i]
        elif op == 9:
            lines[i] = lines[i].replace(b"\r\n", b"\n")
        else:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return b"".join(lines)


_WELL_FORMED = [
    # nested multiparts, preamble and epilogue, CRLF
    mail("""\
From: a@example.com
Subject: nested
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"

This is the preamble.
--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

plain
--inner
Content-Type: text/html

<p>html</p>

--inner--
inner epilogue
--outer
Content-Type: application/octet-stream; name=x.bin
Content-Transfer-Encoding: base64

AAEC
AwQF
--outer--

epilogue
"""),
    # bare CR line ends, boundary followed by blanks, no newline after the closing boundary
    b"From: a@example.com\rContent-Type: multipart/mixed; boundary=b\r\r--b \t\rContent-Type: text/plain\r\rx\r--b--",
    # a boundary that starts with another one, an empty part, headers without body
    mail("""\
Content-Type: multipart/mixed; boundary="ab"

--ab
Content-Type: multipart/mixed; boundary="ab-c"

--ab-c

--ab-c
Content-Type: text/plain
--ab-c--
--ab--
"""),
    # digest (default message/rfc822 parts), attached message, mbox envelope, folded headers
    mail("""\
From someone@example.com Mon Jan  1 00:00:00 2024
From: a@example.com
Subject: a folded
 subject line
\t and more
Content-Type: multipart/digest; boundary=d

--d

From: inner@example.com
Subject: first

first body
--d
Content-Type: message/rfc822

Content-Type: multipart/alternative; boundary=e

--e
Content-Type: text/plain

in
--e--
--d--
"""),
    # LF only, headers only, 8-bit bytes in headers and body
    "Subject: Grüße\nFrom: Jörg <j@example.com>\n\nÄrger\n".encode("latin-1"),
    b"Subject: only headers\r\nX-Empty:\r\n",
    b"",
]


def test_fast_path_takes_well_formed_mail_and_builds_the_stdlib_tree() -> None:
    for raw in _WELL_FORMED:
        fast = _fast(raw)
        assert fast is not None, raw[:60]
        assert _tree(fast) == _stdlib_tree(raw), raw[:60]


@pytest.mark.parametrize(
    "raw",
    [
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n",  # no closing boundary
        b"Content-Type: multipart/mixed; boundary=b\n\nno boundary at all\n",
        b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nx\n--b--\n",  # repeated boundary
        b"Content-Type: multipart/mixed\n\n--b\n\nx\n--b--\n",  # no boundary parameter
        b"Content-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n--b\n\nx\n--b--\n",
        b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n\nAction: failed\n",
        b"Subject: x\nnot a header line\n\nbody\n",  # no header/body separator
        b" continuation first\nSubject: x\n\nbody\n",
        b":no name\n\nbody\n",
        b"Subject: x\nFrom misplaced envelope\n\nbody\n",
    ],
)
def test_fast_path_leaves_irregular_mail_to_the_stdlib(raw: bytes) -> None:
    assert _fast(raw) is None
    assert parse_message(raw).message is not None


def test_fast_path_builds_the_stdlib_tree_on_corpora_and_mutants() -> None:
    """Differential test: on every corpus file, on the well-formed samples above and on mutated
    variants of both, the fast path either declines or builds the stdlib parser's tree."""
    seeds = [path.read_bytes() for path in _all_corpus_files()] + _WELL_FORMED
    rng = random.Random(20240514)
    samples = seeds + [_mutate(rng.choice(seeds), rng) for _ in range(3000)]
    fast_count = 0
    differ = []
    for raw in samples:
        fast = _fast(raw)
        if fast is None:
            continue
        fast_count += 1
        if _tree(fast) != _stdlib_tree(raw):
            differ.append(raw[:80])
    print(f"\nfast MIME path: {len(samples)} mails ({len(seeds)} corpus files and samples, the rest mutants), "
          f"{fast_count} taken, {len(differ)} differ from the stdlib parser")
    assert fast_count > len(samples) // 3
    assert not differ, differ[:3]
