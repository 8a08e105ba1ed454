"""Tests for helpdesk.mail.quotes: hand-written cases, corpus agreement, robustness and speed.

Corpus agreement: from each set's expected.json only the statements about the *visible reply
text* are used (see the ``*_cases`` functions for the exact rule per set); fragment counts and
flags do not map to our API and are ignored.  Texts are compared after collapsing whitespace.
"""

from __future__ import annotations

import email
import email.policy
import functools
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpdesk.mail import quotes
from helpdesk.mail.parse import parse_message
from helpdesk.mail.quotes import Reply, split_reply, split_reply_html
from tests.corpora import corpora_dir


def norm(text: str) -> str:
    return " ".join(text.split())


# =============================================================================================
# Hand-written cases: plain text
# =============================================================================================

PLAIN_CASES: list[tuple[str, str, str, str]] = [
    # (id, body, expected text, a string that must be in quoted ("" = quoted must be empty))
    (
        "en-on-wrote",
        "Thanks, that helps.\n\nOn Tue, Mar 12, 2024 at 10:00 AM Support <support@example.com> wrote:\n"
        "> Please restart the printer.\n",
        "Thanks, that helps.",
        "> Please restart the printer.",
    ),
    (
        "en-on-wrote-wrapped-gmail",
        "Still broken.\n\nOn Tue, Mar 12, 2024 at 10:00 AM Support Team <\nsupport@example.com> wrote:\n\n"
        "> Please restart the printer.\n",
        "Still broken.",
        "On Tue, Mar 12, 2024 at 10:00 AM Support Team <",
    ),
    (
        "en-header-without-quote-marks",
        "When are you available?\n\nOn Wed, 14 Nov 2018 08:14:43 -0200 John Doe <john@doe.com> wrote\n\n"
        "Tomorrow works.\n",
        "When are you available?",
        "Tomorrow works.",
    ),
    (
        "de-am-schrieb",
        "Danke, jetzt geht es wieder.\n\nAm 12.03.2024 um 10:00 schrieb IT-Support <support@example.com>:\n"
        "> Bitte starten Sie den Drucker neu.\n",
        "Danke, jetzt geht es wieder.",
        "Am 12.03.2024 um 10:00 schrieb IT-Support",
    ),
    (
        "de-am-schrieb-thunderbird-no-address",
        "Passt.\n\nAm 12.03.24 um 10:00 schrieb Max Mustermann:\n> Geht es jetzt?\n",
        "Passt.",
        "> Geht es jetzt?",
    ),
    (
        "de-am-schrieb-gmail-wrapped",
        "Leider nicht.\n\nAm Di., 12. März 2024 um 10:00 Uhr schrieb IT-Support <\nsupport@example.com>:\n\n"
        "> Geht es jetzt?\n",
        "Leider nicht.",
        "support@example.com>:",
    ),
    (
        "de-outlook-von-gesendet-with-closing",
        "Hallo Herr Müller,\n\nder Drucker im 2. OG funktioniert wieder nicht.\n\n"
        "Mit freundlichen Grüßen\nMax Mustermann\nBeispiel GmbH\nTel. +49 30 1234567\n\n"
        "Von: IT-Support <support@example.com>\nGesendet: Dienstag, 12. März 2024 10:00\n"
        "An: Max Mustermann <max@example.de>\nBetreff: AW: [Ticket #123] Drucker\n\n"
        "Guten Tag,\nbitte starten Sie den Drucker neu.\n",
        "Hallo Herr Müller,\n\nder Drucker im 2. OG funktioniert wieder nicht.",
        "Gesendet: Dienstag, 12. März 2024 10:00",
    ),
    (
        "de-urspruengliche-nachricht",
        "Anbei die Logdatei.\n\n-----Ursprüngliche Nachricht-----\nVon: IT-Support [mailto:support@example.com]\n"
        "Gesendet: Dienstag, 12. März 2024 10:00\nAn: Max\nBetreff: Logdatei\n\nBitte Logdatei schicken.\n",
        "Anbei die Logdatei.",
        "-----Ursprüngliche Nachricht-----",
    ),
    (
        "de-weitergeleitete-nachricht",
        "Siehe unten, bitte prüfen.\n\n-------- Weitergeleitete Nachricht --------\nBetreff: Fehler\n"
        "Datum: Tue, 12 Mar 2024 10:00:00 +0100\nVon: Kunde <kunde@example.de>\n\nEs geht nicht.\n",
        "Siehe unten, bitte prüfen.",
        "Es geht nicht.",
    ),
    (
        "de-von-meinem-iphone",
        "Super, danke!\n\nVon meinem iPhone gesendet\n\n> Am 12.03.2024 um 10:00 schrieb IT-Support "
        "<support@example.com>:\n>\n> Erledigt.\n",
        "Super, danke!",
        "Von meinem iPhone gesendet",
    ),
    (
        "en-outlook-separator",
        "Thanks, that fixed it.\n\n________________________________\nFrom: Support <support@example.com>\n"
        "Sent: Tuesday, March 12, 2024 10:00 AM\nTo: John Doe <john@example.com>\nSubject: RE: Printer\n\n"
        "Please restart the printer.\n",
        "Thanks, that fixed it.",
        "________________________________",
    ),
    (
        "en-outlook-bold-headers-dashes",
        "Outlook with a reply\n\n\n ------------------------------\n\n*From:* Google [mailto:x@google.com]\n"
        "*Sent:* Thursday, February 09, 2012 1:36 PM\n*To:* jow@example.com\n*Subject:* Updated!\n\nDear user,\n",
        "Outlook with a reply",
        "*From:* Google",
    ),
    (
        "en-original-message",
        "Hello\n\n-----Original Message-----\nFrom: bob <bob@example.com>\nSent: Mon, Apr 2, 2012 5:49 pm\n"
        "Subject: Test\n\nHi\n",
        "Hello",
        "-----Original Message-----",
    ),
    (
        "fr-le-a-ecrit",
        "Merci !\n\nLe mar. 12 mars 2024 à 10:00, Support <support@example.com> a écrit :\n> Bonjour\n",
        "Merci !",
        "a écrit :",
    ),
    (
        "signature-dash-dash-space",
        "The invoice number is 4711.\n\n-- \nJohn Doe\nACME Inc.\n",
        "The invoice number is 4711.",
        "John Doe",
    ),
    (
        "sent-from-my-iphone",
        "Here is another email\n\nSent from my iPhone\n",
        "Here is another email",
        "Sent from my iPhone",
    ),
    (
        "get-outlook-for-ios-then-history",
        "Yes please.\n\nGet Outlook for iOS<https://aka.ms/o0ukef>\n________________________________\n"
        "From: Shop <shop@example.com>\nSent: Thursday, September 26, 2019 11:35:12 AM\nTo: me\nSubject: Order\n\n"
        "Shall we ship?\n",
        "Yes please.",
        "Shall we ship?",
    ),
    (
        "closing-formula-en",
        "Please call me back.\n\nBest regards,\nJohn Doe\nACME Inc.\n",
        "Please call me back.",
        "Best regards,",
    ),
    (
        "closing-formula-kept-before-ps",
        "Please call me back.\n\nBest regards,\nJohn\n\nP.S. my number is 0123 456789\n",
        "Please call me back.\n\nBest regards,\nJohn\n\nP.S. my number is 0123 456789",
        "",
    ),
    (
        "bottom-post",
        "On Tue, Mar 12, 2024 at 10:00 AM Support <support@example.com> wrote:\n> Which printer?\n\n"
        "The one on the 2nd floor.\n",
        "The one on the 2nd floor.",
        "> Which printer?",
    ),
    (
        "inline-answers-keep-their-questions",
        "On Tue, Mar 12, 2024 at 10:00 AM Support <support@example.com> wrote:\n> Which printer?\n"
        "The one on the 2nd floor.\n> Since when?\nSince Monday.\n\n-- \nJohn\n",
        "On Tue, Mar 12, 2024 at 10:00 AM Support <support@example.com> wrote:\n> Which printer?\n"
        "The one on the 2nd floor.\n> Since when?\nSince Monday.",
        "John",
    ),
    (
        "citation-inside-own-text-is-kept",
        "I get this error:\n\n> Error 500: internal server error\n\nWhat should I do?\n",
        "I get this error:\n\n> Error 500: internal server error\n\nWhat should I do?",
        "",
    ),
    (
        "wrapped-quote-lines-stay-quoted",
        "Ok.\n\nOp 12 december 2016 19:05 schreef Company <\nquestions@example.com>:\n\n"
        "> In efficitur augue ac tristique ullamcorper. Aenean tincidunt ornare diam,\n"
        "eget accumsan est viverra quis.\n>\n",
        "Ok.",
        "eget accumsan est viverra quis.",
    ),
    (
        "forward-without-comment",
        "---------- Forwarded message ---------\nFrom: Bank <bank@example.com>\n"
        "Date: Tue, Mar 12, 2024 at 10:00 AM\nSubject: Statement\nTo: <john@example.com>\n\nYour statement.\n",
        "",
        "Your statement.",
    ),
    (
        "name-wrote-before-a-quote",
        "Marc Slemko wrote:\n> If you have a real uid of root...\n\nIsn't that the case for every server?\n",
        "Isn't that the case for every server?",
        "Marc Slemko wrote:",
    ),
    (
        "mutt-attribution",
        "Agreed.\n\n* John Doe <john@example.com> [2024-03-12 10:00]:\n> Shall we?\n",
        "Agreed.",
        "> Shall we?",
    ),
    ("crlf-line-endings", "Fine.\r\n\r\nOn Mon, 1 Jan 2024, Bob <b@x.org> wrote:\r\n> Hi\r\n", "Fine.", "> Hi"),
    ("only-quote", "> just a quote\n> nothing new\n", "", "> nothing new"),
]

NOT_A_QUOTE_CASES: list[tuple[str, str]] = [
    (
        "on-at-line-start",
        "On the surface, this looks like a quote header but it's not.\n\n"
        "On the other hand, we should be careful.\nOn average, this works.\n",
    ),
    (
        "from-and-subject-in-text",
        "Hi,\n\nI get mails from: noreply@example.com to: me@example.com with the wrong date.\n"
        "Subject: is always empty.\n\nThanks",
    ),
    ("timestamps", "Formats:\n\n2024-01-15 14:30:25\n15.01.2024 14:30\nJan 15, 2024 at 14:30\n\nJust examples."),
    ("url-with-wrote", "Check out https://example.com/blog/on-date-someone-wrote-about-parsing\n\nNeat, right?"),
    ("sent-from-in-a-sentence", "Here is another email\n\nSent from my desk, is much easier than my phone."),
    ("wrote-in-a-sentence", "As I wrote on 12.03.2024 to support@example.com:\nthe printer is broken.\n"),
    ("dashes-and-equals-in-content", "## Key Points\n----\n\n1. Faster\n\n----\n\nMore text.\n\n====\n\nEnd."),
    ("name-wrote-without-a-quote", "Marc wrote:\nthe printer is broken.\n"),
    ("sentence-ending-in-wrote-before-a-citation", "Here is what John wrote:\n> blah\n\nI disagree."),
    ("regards-in-a-sentence", "I wanted to discuss the issue with regards to the payment.\n\nThat is all."),
]


@pytest.mark.parametrize(("body", "text", "in_quoted"), [c[1:] for c in PLAIN_CASES], ids=[c[0] for c in PLAIN_CASES])
def test_split_reply(body: str, text: str, in_quoted: str) -> None:
    reply = split_reply(body)
    assert reply.text == text
    if in_quoted:
        assert in_quoted in reply.quoted
    else:
        assert reply.quoted == ""


@pytest.mark.parametrize("body", [c[1] for c in NOT_A_QUOTE_CASES], ids=[c[0] for c in NOT_A_QUOTE_CASES])
def test_text_that_only_looks_like_a_quote_is_kept(body: str) -> None:
    reply = split_reply(body)
    assert norm(reply.text) == norm(body)
    assert reply.quoted == ""


@pytest.mark.parametrize("body", ["", " ", "\n\n\n", "\r\n", "\t \u00a0 \n", "\u200b"])
def test_empty_input(body: str) -> None:
    assert split_reply(body) == Reply("", "")
    assert split_reply_html(body) == Reply("", "")


def test_reply_is_frozen_and_stripped() -> None:
    reply = split_reply("\n\n  Hello  \n\n-- \nJohn\n\n")
    assert reply == Reply("Hello", "--\nJohn")
    with pytest.raises(FrozenInstanceError):
        reply.text = "x"  # type: ignore[misc]


JUNK = [
    "\x00\x01\x02\xff\ufffd" * 100,
    bytes(range(256)).decode("latin-1") * 20,
    b"\xff\xfe\x00<\x00h\x00t\x00m\x00l".decode("utf-8", errors="surrogateescape") * 50,
    "\udcff\udc80 > > >\n>:\n--\n__\n" * 100,
    ">" * 10_000,
    "<" * 10_000 + ">" * 10_000,
    "<!--" * 1000 + "<![" * 1000 + "<!" * 1000 + "<?" + "</" * 1000,
    "<div " + "a=" * 5000,
    "<style>" + "x" * 1000,
    "On " * 3000 + "wrote:",
    "From: x\n" * 1000,
]


@pytest.mark.parametrize("junk", JUNK, ids=[f"junk{i}" for i in range(len(JUNK))])
def test_junk_input_never_raises(junk: str) -> None:
    for split in (split_reply, split_reply_html):
        reply = split(junk)
        assert isinstance(reply.text, str)
        assert isinstance(reply.quoted, str)
        assert reply.text == reply.text.strip()


# =============================================================================================
# Hand-written cases: HTML
# =============================================================================================

HTML_CASES: list[tuple[str, str, str, str]] = [
    (
        "gmail-quote-and-signature",
        '<div dir="ltr">Here is the log.<br clear="all"><br>-- <br><div dir="ltr" class="gmail_signature">'
        'John Doe<br>ACME</div></div><br><div class="gmail_quote"><div dir="ltr" class="gmail_attr">'
        'Am Di., 12. März 2024 um 10:00 Uhr schrieb Support &lt;<a href="mailto:s@example.com">'
        's@example.com</a>&gt;:<br></div><blockquote class="gmail_quote" style="margin:0px">'
        "Bitte Logdatei senden.</blockquote></div>",
        "Here is the log.",
        "Bitte Logdatei senden.",
    ),
    (
        "thunderbird-cite",
        '<html><body>Hi. I am fine.<br><br>Thanks,<br>Alex<br><div class="moz-cite-prefix">On 26.06.2014 14:41,'
        ' Alexander L wrote:<br></div><blockquote type="cite" cite="mid:x@example.com"><div>Hello! How are you?'
        "</div></blockquote><br></body></html>",
        "Hi. I am fine.\n\nThanks,\nAlex",
        "Hello! How are you?",
    ),
    (
        "apple-mail-bottom-post",
        '<html><body><div><br><blockquote type="cite"><div>On 12 Mar 2024, at 10:00, Support '
        "&lt;support@example.com&gt; wrote:</div><br><div>Which printer?</div></blockquote><br></div>"
        "<div>The one on the 2nd floor.</div></body></html>",
        "The one on the 2nd floor.",
        "Which printer?",
    ),
    (
        "outlook-web-divRplyFwdMsg",
        '<html><body><div dir="ltr">Thanks, works now.</div><div id="Signature"><p>John Doe<br>ACME</p></div>'
        '<div id="appendonsend"></div><hr style="display:inline-block;width:98%" tabindex="-1">'
        '<div id="divRplyFwdMsg" dir="ltr"><b>From:</b> Support &lt;support@example.com&gt;<br>'
        "<b>Sent:</b> Tuesday<br><b>To:</b> John<br><b>Subject:</b> Printer</div><div>Please restart.</div>"
        "</body></html>",
        "Thanks, works now.",
        "Please restart.",
    ),
    (
        "outlook-desktop-border-top-german",
        "<html><body><div class=WordSection1><p class=MsoNormal>Hallo,<o:p></o:p></p><p class=MsoNormal>"
        "es geht wieder.<o:p></o:p></p><p class=MsoNormal><o:p>&nbsp;</o:p></p><div><div style='border:none;"
        "border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0cm 0cm 0cm'><p class=MsoNormal><b>Von:</b> Support "
        "&lt;support@example.com&gt; <br><b>Gesendet:</b> Dienstag, 12. März 2024 10:00<br><b>An:</b> Max"
        "<br><b>Betreff:</b> AW: Drucker<o:p></o:p></p></div></div><p>Bitte neu starten.</p></div></body></html>",
        "Hallo,\nes geht wieder.",
        "Bitte neu starten.",
    ),
    (
        "original-message-in-html",
        "<div>Reply here.</div><div>-----Original Message-----<br>From: a@example.com<br>Sent: Monday<br>"
        "To: b@example.com<br>Subject: Hi</div><div>Old text</div>",
        "Reply here.",
        "Old text",
    ),
    (
        "yahoo-quoted",
        '<div>Sure, tomorrow works.</div><div id="yahoo_quoted_123" class="yahoo_quoted"><div>On Tuesday, '
        "March 12, 2024, 10:00 AM, Support &lt;support@example.com&gt; wrote:</div><blockquote><div>When?"
        "</div></blockquote></div>",
        "Sure, tomorrow works.",
        "When?",
    ),
    (
        "plain-text-quoting-inside-html",
        "Hello<br><br>On Tue, Mar 12, 2024 at 10:00 AM Support &lt;support@example.com&gt; wrote:<br>"
        "&gt; Which printer?",
        "Hello",
        "Which printer?",
    ),
    (
        "head-script-style-comments-ignored",
        "<html><head><title>T</title><style>p{color:red}</style><script>var a = '<b>';</script></head>"
        "<body><!-- hidden --><p>Caf&eacute; &amp; cr&egrave;me&nbsp;br&ucirc;l&eacute;e</p></body></html>",
        "Café & crème brûlée",
        "",
    ),
]


@pytest.mark.parametrize(("doc", "text", "in_quoted"), [c[1:] for c in HTML_CASES], ids=[c[0] for c in HTML_CASES])
def test_split_reply_html(doc: str, text: str, in_quoted: str) -> None:
    reply = split_reply_html(doc)
    assert reply.text == text
    if in_quoted:
        assert in_quoted in reply.quoted
    else:
        assert reply.quoted == ""


# =============================================================================================
# Property-based robustness: the internals never raise and text comes from the input
# =============================================================================================

_PIECES = [
    "\n",
    "\n\n",
    "\r\n",
    " ",
    ">",
    "> ",
    ">>",
    ":",
    "-- ",
    "--",
    "__",
    "____",
    "-----",
    "====",
    "<",
    "@",
    "On Tue, 1 Jan 2024 ",
    "John <j@example.com>",
    " wrote:",
    "Am 1.1.2024 ",
    " schrieb ",
    "From: a",
    "Sent: b",
    "To: c",
    "Subject: d",
    "Von: x",
    "Gesendet: y",
    "-----Original Message-----",
    "Sent from my iPhone",
    "Best regards,",
    "Mit freundlichen Grüßen",
    "hello",
    "text",
    "\x00",
    "\udcff",
    "<div>",
    "</div>",
    "<blockquote type=cite>",
    "</blockquote>",
    '<div class="gmail_quote">',
    "<br>",
    "<hr>",
    '<div id="divRplyFwdMsg">',
    "<!--",
    "-->",
    "&gt;",
    "&amp;",
    "<p>",
    "<pre>",
    "</pre>",
]
_bodies = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=60).map("".join)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies)
def test_plain_internals_never_raise(body: str) -> None:
    text, rest = quotes._split_lines(quotes._plain_lines(body))  # no defensive fallback here
    reply = split_reply(body)
    assert reply == split_reply(body)  # deterministic
    assert reply.text == reply.text.strip()
    invisible = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"))
    source = body.replace("\r\n", "\n").replace("\r", "\n").translate(invisible)
    source_lines = {line.strip() for line in source.split("\n")}
    for line in reply.text.split("\n"):
        assert not line.strip() or line.strip() in source_lines
    assert len(text) + len(rest) == len(quotes._plain_lines(body))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_bodies)
def test_html_internals_never_raise(doc: str) -> None:
    lines, cut = quotes._render_html(doc)  # no defensive fallback here
    quotes._split_lines(lines[:cut])
    reply = split_reply_html(doc)
    assert reply.text == reply.text.strip()


# =============================================================================================
# Speed: linear on 2 MB bodies, including shapes that trip backtracking parsers
# =============================================================================================

MB2 = 2_000_000


def _fill(unit: str) -> str:
    return (unit * (MB2 // len(unit) + 1))[:MB2]


SPEED_CASES: list[tuple[str, Callable[[str], Reply], Callable[[], str]]] = [
    ("plain-prose", split_reply, lambda: _fill("Hello there, this is a normal line of text in the reply.\n")),
    ("plain-colon-lines", split_reply, lambda: _fill("a:\n")),
    ("plain-quote-text-alternating", split_reply, lambda: _fill("> q\nt\n")),
    ("plain-one-line-of-spaces", split_reply, lambda: "x" + " " * MB2 + "y"),
    ("html-nested-divs", split_reply_html, lambda: "<div>" * (MB2 // 5)),
    ("html-unterminated-comments", split_reply_html, lambda: _fill("<!--")),
    ("html-lt-only", split_reply_html, lambda: "<" * MB2),
]


@pytest.mark.parametrize(("split", "make"), [c[1:] for c in SPEED_CASES], ids=[c[0] for c in SPEED_CASES])
def test_two_megabytes_are_fast(split: Callable[[str], Reply], make: Callable[[], str]) -> None:
    body = make()
    started = time.process_time()
    split(body)
    assert time.process_time() - started < 5.0


# =============================================================================================
# Corpus agreement
# =============================================================================================


@dataclass(frozen=True)
class Case:
    name: str
    body: str
    expected: str
    html: bool = False


def crisp_cases(root: Path) -> list[Case]:
    """crisp-oss/email-reply-parser: ``getVisibleText()`` (``text`` in test_email_fr_2 is
    ``getVisibleText().trim()``) and ``fragments[0].toString()``: crisp cuts a top-posted reply
    into [reply, quote/signature...], so its first fragment is the visible reply (for email_1 the
    upstream ``parseReply`` test states the same value).  The bare ``fragments[0]`` of the
    bottom-post test is only the first line of an interleaved reply and is not used."""
    base = root / "crisp-email-reply-parser"
    data = json.loads((base / "expected.json").read_text(encoding="utf-8"))
    visible = {
        "fragments[0].toString()",
        "fragments[0].toString().trim()",
        "reply.fragments[0].toString()",
        "email.getVisibleText()",
        "text",
    }
    out = []
    for test in data["tests"]:
        if not test["fixtures"]:
            continue  # inline bodies of the parseReply tests are not in the data
        fixture = test["fixtures"][0]
        for a in test["assertions"]:
            if a.get("op") == "==" and a.get("actual_expr") in visible and isinstance(a.get("expected"), str):
                body = (base / "test/fixtures" / f"{fixture}.txt").read_text(encoding="utf-8")
                out.append(Case(fixture, body, a["expected"]))
    return out


def github_cases(root: Path) -> list[Case]:
    """github/email_reply_parser: ``parse_reply`` is the visible reply text."""
    base = root / "github-email_reply_parser"
    data = json.loads((base / "expected.json").read_text(encoding="utf-8"))
    out = []
    for test in data["tests"]:
        if "parse_reply" not in test:
            continue
        if "inline_input" in test:
            out.append(Case("inline", test["inline_input"], test["parse_reply"]))
        else:
            body = (base / "test/emails" / test["file"]).read_text(encoding="utf-8")
            out.append(Case(test["file"], body, test["parse_reply"]))
    return out


def zapier_cases(root: Path) -> list[Case]:
    """zapier/email-reply-parser: ``parse_reply(...)`` and ``message.reply`` are the visible reply."""
    base = root / "zapier-email-reply-parser"
    data = json.loads((base / "expected.json").read_text(encoding="utf-8"))
    visible = re.compile(r"EmailReplyParser\.parse_reply\(.*\)|reply|reply\.strip\(\)")
    out = []
    for test in data["tests"]:
        for a in test["assertions"]:
            left = a.get("left") or ""
            if a.get("op") == "==" and visible.fullmatch(left) and isinstance(a.get("right"), str):
                body = (base / "test/emails" / test["fixtures"][0]).read_text(encoding="utf-8")
                out.append(Case(test["fixtures"][0], body, a["right"]))
    return out


def mail_parser_reply_cases(root: Path) -> list[Case]:
    """alfonsrv/mail-parser-reply: ``latest_reply`` and ``replies[0].body`` (the latest reply
    without headers and signatures) are the visible reply."""
    base = root / "mail-parser-reply"
    data = json.loads((base / "expected.json").read_text(encoding="utf-8"))
    out = []
    for test in data["tests"]:
        for a in test["assertions"]:
            left = a.get("left") or ""
            wanted = left in ("mail.latest_reply", "replies[0].body")
            if a.get("op") == "==" and wanted and isinstance(a.get("right"), str):
                body = (base / "test/emails" / test["fixtures"][0]).read_text(encoding="utf-8")
                out.append(Case(test["fixtures"][0], body, a["right"]))
    return out


def _text_plain_part(path: Path) -> str:
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    part = msg.get_body(preferencelist=("plain",))
    return "" if part is None else str(part.get_content())


def talon_cases(root: Path, html: bool) -> list[Case]:
    """mailgun/talon: ``expected_reply_text`` (text/plain part of the .eml, or the HTML body
    converted to text), and ``expected_reply_html`` converted to text.  The signature fixtures
    need the sender's name (not part of our API) and the "share block" fixture only states a
    property, so both are left out."""
    base = root / "mailgun-talon"
    data = json.loads((base / "expected.json").read_text(encoding="utf-8"))
    out = []
    for name, spec in data["expected"].items():
        path = base / "tests/fixtures" / name
        is_html = spec.get("input") == "HTML body"
        if is_html != html:
            continue
        if "expected_reply_text" in spec:
            body = path.read_text(encoding="utf-8") if html else _text_plain_part(path)
            out.append(Case(name, body, spec["expected_reply_text"], html))
        elif "expected_reply_html" in spec:
            expected = split_reply_html(spec["expected_reply_html"]).text
            out.append(Case(name, path.read_text(encoding="utf-8"), expected, html))
    return out


CORPUS_SETS: dict[str, Callable[[Path], list[Case]]] = {
    "crisp-email-reply-parser": crisp_cases,
    "github-email_reply_parser": github_cases,
    "zapier-email-reply-parser": zapier_cases,
    "mail-parser-reply": mail_parser_reply_cases,
    "mailgun-talon": lambda root: talon_cases(root, html=False),
    "mailgun-talon (html)": lambda root: talon_cases(root, html=True),
}

# Minimum share of cases that must agree, set just below what the parser reaches, so that any
# regression fails.  Disagreements left at the time of writing are conflicts between corpora:
# - mail-parser-reply email_2_1 / email_nl_1_2 expect the "-----" line above the Outlook header in
#   the reply; github and zapier expect the same email_2_1 without it (so do we).
# - talon keeps "Sent from my iPhone" and a "-- " signature in the reply; github and
#   mail-parser-reply strip "Sent from my ..." (so do we: the API wants no signature).
# - talon's reply-separated-by-hr drops the "Bob" that sits next to the <hr>; we keep it.
MIN_AGREEMENT = {
    "crisp-email-reply-parser": 0.98,  # 49/49
    "github-email_reply_parser": 0.95,  # 9/9
    "zapier-email-reply-parser": 0.95,  # 5/5
    "mail-parser-reply": 0.74,  # 6/8
    "mailgun-talon": 0.80,  # 10/12
    "mailgun-talon (html)": 0.90,  # 10/11
}
MIN_OVERALL = 0.94  # 89/94


def test_corpus_agreement() -> None:
    root = corpora_dir()
    total_ok = total = 0
    failures: list[str] = []
    for set_name, derive in CORPUS_SETS.items():
        cases = derive(root)
        assert cases, f"{set_name}: no cases derived"
        ok = 0
        for case in cases:
            got = (split_reply_html if case.html else split_reply)(case.body).text
            if norm(got) == norm(case.expected):
                ok += 1
            else:
                print(f"  {set_name} {case.name}: expected {norm(case.expected)[:80]!r}, got {norm(got)[:80]!r}")
        print(f"{set_name}: {ok}/{len(cases)} reply text agree")
        total_ok, total = total_ok + ok, total + len(cases)
        if ok < MIN_AGREEMENT[set_name] * len(cases):
            failures.append(f"{set_name}: {ok}/{len(cases)} < {MIN_AGREEMENT[set_name]:.0%}")
    print(f"overall: {total_ok}/{total} reply text agree ({total_ok / total:.1%})")
    assert not failures, failures
    assert total_ok >= MIN_OVERALL * total


def reply_text_checks(root: Path) -> list[tuple[str, str, str, bool]]:
    """Statements of the form "the visible reply contains / does not contain X": zapier's
    ``parse_reply``/``reply``, mail-parser-reply's ``replies[0].body`` and crisp's regexes on the
    first fragment of single-reply fixtures.  Returns (set/fixture, op, needle, is_regex)."""
    checks: list[tuple[str, str, str, bool]] = []
    base = root / "crisp-email-reply-parser"
    data = json.loads((base / "expected.json").read_text(encoding="utf-8"))
    for test in data["tests"]:
        for a in test["assertions"]:
            m = re.fullmatch(r"/(.*)/\.test\(fragments\[0\](?:\.toString\(\))?\)", a.get("actual_expr", ""))
            if m and a["expected"] is True and test["fixtures"]:
                checks.append((f"crisp/{test['fixtures'][0]}.txt", "contains", m.group(1).replace("\\/", "/"), True))
    visible = {"replies[0].body", "reply", "EmailReplyParser.parse_reply(email.read())"}
    for set_dir in ("zapier-email-reply-parser", "mail-parser-reply"):
        data = json.loads((root / set_dir / "expected.json").read_text(encoding="utf-8"))
        for test in data["tests"]:
            for a in test["assertions"]:
                if a.get("left") in visible and a.get("op") in ("contains", "not_contains"):
                    checks.append((f"{set_dir}/{test['fixtures'][0]}", a["op"], a["right"], False))
    return checks


def test_corpus_reply_text_contains() -> None:
    root = corpora_dir()
    checks = reply_text_checks(root)
    ok = 0
    for where, op, needle, is_regex in checks:
        set_dir, fixture = where.split("/", 1)
        if set_dir == "crisp":
            path = root / "crisp-email-reply-parser/test/fixtures" / fixture
        else:
            path = root / set_dir / "test/emails" / fixture
        text = split_reply(path.read_text(encoding="utf-8")).text
        found = re.search(needle, text) is not None if is_regex else needle in text
        if found == (op == "contains"):
            ok += 1
        else:
            verb = "contain" if op == "contains" else "not contain"
            print(f"  {where}: reply text should {verb} {needle!r}")
    print(f"reply text contains/excludes checks: {ok}/{len(checks)} agree")
    # Left at the time of writing: mail-parser-reply wants "-Abhishek Kona" and a header block at the
    # very top (email_pl_1_1) treated differently from crisp and from our "forwarded original".
    assert ok >= 0.95 * len(checks)  # 41/43


@pytest.mark.parametrize("name", ["pathological.txt", "email_long_quote.txt"])
def test_github_performance_fixtures(name: str) -> None:
    """github/email_reply_parser: these must parse in under a second (regex backtracking traps)."""
    body = (corpora_dir() / "github-email_reply_parser/test/emails" / name).read_text(encoding="utf-8")
    started = time.process_time()
    split_reply(body)
    assert time.process_time() - started < 1.0


# =============================================================================================
# The shortcuts give the answers of the plain computations they replace
# =============================================================================================


@functools.cache
def _corpus_texts() -> list[str]:
    """Every shared corpus file as text, and the text and HTML bodies of those that are mail."""
    out: list[str] = []
    for path in sorted(corpora_dir().rglob("*")):
        if path.is_file() and path.suffix != ".json":
            raw = path.read_bytes()
            parsed = parse_message(raw)
            out += [raw.decode("utf-8", "replace"), parsed.text, parsed.html]
    return out


def test_verb_alternatives_are_plain_literals() -> None:
    """_may_end_wrote_header relies on it: one character per pattern character, no verb ending in
    whitespace or a hyphen."""
    for verb in quotes._LATIN_VERBS.split("|"):
        literal = verb.replace("\\", "")
        assert re.sub(r"\\[()]", "", verb) == re.sub(r"[()]", "", literal)
        assert not re.search(r"[.^$*+?{}\[\]|\\]", literal), verb
        assert re.fullmatch(verb, literal) and re.fullmatch(verb, literal.upper(), re.IGNORECASE)
    for literal in quotes._VERB_LITERALS:
        assert not literal[-1].isspace() and literal[-1] != "-"
        assert len(literal) <= quotes._LONGEST_VERB


def test_verb_last_character_class_matches_what_the_verbs_match() -> None:
    """Ignoring case, a verb's last letter matches more than its case pair (long s, Kelvin sign,
    dotless i, ...): the character class must match all of it."""
    last = {literal[-1] for literal in quotes._VERB_LITERALS}
    each = [re.compile(re.escape(c), re.IGNORECASE) for c in last]
    for code in range(0x110000):
        c = chr(code)
        cased = c in last or c.lower() != c or c.upper() != c or c.casefold() != c
        if cased and any(p.fullmatch(c) for p in each):
            assert quotes._VERB_LAST_CHAR_RE.fullmatch(c), hex(code)


def _may_end_wrote_header_plain(body: str) -> bool:
    s = body.rstrip()
    if not s or len(s) > quotes._MAX_HEADER:
        return False
    if s.endswith((":", "：")):
        return True
    return quotes._VERB_AT_END_RE.search(s[-80:].rstrip("-*_=~ \t")) is not None


def test_may_end_wrote_header_matches_the_plain_search() -> None:
    rng = random.Random(3)
    pieces = [*quotes._VERB_LITERALS, *(v.upper() for v in quotes._VERB_LITERALS), " ", "-", "\u2003", "\xa0",
              "\n", "\t", "*", "=", "~", "x", "ſ", "K", "İ", "ı", ".", ",", "John", "2024", "写", "道", "\x1c"]
    bodies = [line for text in _corpus_texts() for line in text.splitlines()]
    bodies += ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 8))) for _ in range(20_000)]
    bodies += ["x" * rng.randint(60, 90) + rng.choice(pieces) + rng.choice(pieces) for _ in range(5_000)]
    assert [quotes._may_end_wrote_header(b) for b in bodies] == [_may_end_wrote_header_plain(b) for b in bodies]


def _tokens_general(doc: str) -> list[tuple[str, str, object]]:
    """The tokenizer without its fast step for complete tags (as it was written first)."""
    out: list[tuple[str, str, object]] = []
    i, n = 0, len(doc)
    while i < n:
        j = doc.find("<", i)
        if j < 0:
            out.append(("text", doc[i:], None))
            break
        if j > i:
            out.append(("text", doc[i:j], None))
        if doc.startswith("<!--", j):
            k = doc.find("-->", j + 4)
            if k < 0:
                break
            i = k + 3
            continue
        if doc.startswith(("<!", "<?"), j):
            k = doc.find(">", j + 2)
            if k < 0:
                break
            i = k + 1
            continue
        m = quotes._TAG_RE.match(doc, j)
        if m is None:
            nxt = quotes._MARKUP_RE.search(doc, j + 1)
            stop = n if nxt is None else nxt.start()
            out.append(("text", doc[j:stop], None))
            i = stop
            continue
        k = doc.find(">", m.end())
        if k < 0:
            break
        closing, tag = m.group(1), m.group(2).lower()
        if closing:
            out.append(("end", tag, None))
            i = k + 1
            continue
        source = doc[m.end() : k]
        out.append(("start", tag, quotes._compute_start_info(tag, source)))
        i = k + 1
        if source.endswith("/"):
            if tag not in quotes._VOID:
                out.append(("end", tag, None))
            continue
        closer = quotes._RAW_TEXT.get(tag)
        if closer is not None:
            close = closer.search(doc, i)
            if close is None:
                break
            i = close.end()
    return out


class _Recorder:
    def __init__(self) -> None:
        self.tokens: list[tuple[str, str, object]] = []

    def text(self, data: str) -> None:
        self.tokens.append(("text", data, None))

    def start(self, tag: str, info: object) -> None:
        self.tokens.append(("start", tag, info))

    def end(self, tag: str) -> None:
        self.tokens.append(("end", tag, None))


def test_tokenizer_fast_step_yields_what_the_general_scanner_yields() -> None:
    rng = random.Random(5)
    pieces = [
        "<", ">", "</", "<!--", "-->", "<!x>", "<?x?>", "<br>", "<br/>", "<p>", "</p>", "<div class='gmail_quote'>",
        "</div>", "<blockquote type=cite>", "</blockquote>", "<pre>", "</pre>", "&gt; ", "&amp;", "\u200b", "\n",
        "<script>x</script>", "<style>", "<hr>", "<li>", "<div id='x_divRplyFwdMsg'>", "<x:y a=b>", "a < b",
        "<div style='border-top:solid #E1E1E1 1.0pt'>", "<td>", "<DIV CLASS=\"Gmail_Signature\">", "<textarea>",
        "</textarea >", "<a href=\"x>y\">", "<" + "n" * 60 + " a=b>", "<img src=x/>", "text", "<3", "<a", "b>",
    ]
    docs = _corpus_texts() + ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 60))) for _ in range(5000)]
    for doc in docs:
        recorder = _Recorder()
        quotes._tokenize(doc, recorder)  # type: ignore[arg-type]
        assert recorder.tokens == _tokens_general(doc), doc[:200]
