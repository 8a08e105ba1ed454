"""Bounce detection: hand-written cases, then agreement with the shared real-world corpora.

The corpus tests print one summary line each (run with ``-s`` to see them) and fail when
agreement drops below the level measured when the detector table was last tuned.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import random
from email.header import decode_header, make_header
from email.message import Message
from email.utils import parseaddr
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import helpdesk.mail.bounce as bounce
from helpdesk.mail.bounce import Bounce, detect_bounce
from helpdesk.mail.parse import parse_message
from tests.corpora import corpora_dir


def parse(raw: str | bytes) -> Message:
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    return email.message_from_bytes(data, policy=email.policy.compat32)


# --- hand-written cases --------------------------------------------------------------------------

ORIGINAL_HEADERS = """\
From: Helpdesk <support@helpdesk.example>
To: jane.doe@example.com
Subject: [#42] Your printer ticket
Message-ID: <ticket-42.1@helpdesk.example>
"""


def build_dsn(*recipient_blocks: str, delivery_status_encoding: str | None = None) -> Message:
    """A Postfix-style RFC 3464 report about the helpdesk's mail to jane.doe@example.com."""
    status = "Reporting-MTA: dns; mx.example.net\nArrival-Date: Mon, 2 Mar 2026 09:00:00 +0000\n\n"
    status += "\n".join(recipient_blocks)
    cte = ""
    if delivery_status_encoding == "base64":
        cte = "Content-Transfer-Encoding: base64\n"
        status = base64.encodebytes(status.encode()).decode()
    return parse(
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
        "To: support@helpdesk.example\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "Message-ID: <20260302090001.AB12@mx.example.net>\n"
        "Auto-Submitted: auto-replied\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"\n'
        "\n"
        "--BOUNDARY\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        "This is the mail system at host mx.example.net.\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n"
        "--BOUNDARY\n"
        "Content-Type: message/delivery-status\n"
        f"{cte}"
        "\n"
        f"{status}\n"
        "--BOUNDARY\n"
        "Content-Type: text/rfc822-headers\n"
        "\n"
        f"{ORIGINAL_HEADERS}"
        "--BOUNDARY--\n"
    )


FAILED_JANE = (
    "Final-Recipient: rfc822; Jane.Doe@Example.com\n"
    "Action: failed\n"
    "Status: 5.1.1\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <jane.doe@example.com>: Recipient address rejected: User unknown\n"
)


def test_dsn_failed_recipient() -> None:
    assert detect_bounce(build_dsn(FAILED_JANE)) == Bounce(
        recipients=("jane.doe@example.com",),
        permanent=True,
        kind="dsn",
        original_message_id="<ticket-42.1@helpdesk.example>",
        diagnostic="550 5.1.1 <jane.doe@example.com>: Recipient address rejected: User unknown",
    )


def test_dsn_base64_encoded_status_part() -> None:
    bounce = detect_bounce(build_dsn(FAILED_JANE, delivery_status_encoding="base64"))
    assert bounce is not None
    assert bounce.recipients == ("jane.doe@example.com",)
    assert bounce.permanent


def test_dsn_delayed_is_temporary() -> None:
    block = "Final-Recipient: rfc822; jane.doe@example.com\nAction: delayed\nStatus: 4.4.1\n"
    bounce = detect_bounce(build_dsn(block))
    assert bounce is not None
    assert (bounce.recipients, bounce.permanent, bounce.kind) == (("jane.doe@example.com",), False, "dsn")


def test_dsn_prefers_original_recipient_and_reports_only_failures() -> None:
    failed = (
        "Original-Recipient: rfc822; jane.doe@example.com\n"
        "Final-Recipient: rfc822; jdoe@mailstore.example.com\n"
        "Action: failed\n"
        "Status: 5.2.2\n"
    )
    delayed = "Final-Recipient: rfc822; bob@example.org\nAction: delayed\nStatus: 4.4.7\n"
    delivered = "Final-Recipient: rfc822; carol@example.org\nAction: delivered\nStatus: 2.0.0\n"
    bounce = detect_bounce(build_dsn(failed, delayed, delivered))
    assert bounce is not None
    assert bounce.recipients == ("jane.doe@example.com",)
    assert bounce.permanent
    assert bounce.diagnostic == "5.2.2"


def test_dsn_reporting_only_successful_delivery_is_not_a_bounce() -> None:
    relayed = "Final-Recipient: rfc822; jane.doe@example.com\nAction: relayed\nStatus: 2.0.0\n"
    assert detect_bounce(build_dsn(relayed)) is None


QMAIL_BOUNCE = """\
Return-Path: <>
From: MAILER-DAEMON@mail.example.org
To: support@helpdesk.example
Subject: failure notice
Date: Mon, 2 Mar 2026 09:00:00 +0000

Hi. This is the qmail-send program at mail.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<Jane.Doe@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

<bob@example.org>:
This account is over quota. (#5.2.2)

--- Below this line is a copy of the message.

Return-Path: <support@helpdesk.example>
From: Helpdesk <support@helpdesk.example>
To: jane.doe@example.org, bob@example.org
Subject: [#42] Your printer ticket
Message-ID: <ticket-42.2@helpdesk.example>

<not-an-address@example.net>: this line is in the quoted original, not the report
"""


def test_qmail_bounce() -> None:
    assert detect_bounce(parse(QMAIL_BOUNCE)) == Bounce(
        recipients=("jane.doe@example.org", "bob@example.org"),
        permanent=True,
        kind="qmail",
        original_message_id="<ticket-42.2@helpdesk.example>",
        diagnostic="Sorry, no mailbox here by that name. (#5.1.1)",
    )


def test_original_message_id_from_attached_message_or_in_reply_to() -> None:
    attached = (
        "From: postmaster@example.com\n"
        "Subject: Undeliverable: [#42] Your printer ticket\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="b"\n'
        "\n"
        "--b\n"
        "Content-Type: text/plain\n"
        "\n"
        "Delivery has failed to these recipients or groups:\n"
        "\n"
        "Jane Doe (jane.doe@example.com)\n"
        "The email address you entered couldn't be found.\n"
        "--b\n"
        "Content-Type: message/rfc822\n"
        "\n" + ORIGINAL_HEADERS + "\nHello Jane\n--b--\n"
    )
    bounce = detect_bounce(parse(attached))
    assert bounce is not None
    assert (bounce.recipients, bounce.kind) == (("jane.doe@example.com",), "exchange")
    assert bounce.original_message_id == "<ticket-42.1@helpdesk.example>"

    threaded = QMAIL_BOUNCE.replace("Date:", "In-Reply-To: <ticket-42.9@helpdesk.example>\nDate:").replace(
        "Message-ID: <ticket-42.2@helpdesk.example>\n", ""
    )
    bounce = detect_bounce(parse(threaded))
    assert bounce is not None
    assert bounce.original_message_id == "<ticket-42.9@helpdesk.example>"


def test_mailer_daemon_without_extractable_address_is_still_a_bounce() -> None:
    raw = (
        "From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.com>\n"
        "To: support@helpdesk.example\n"
        "Subject: Returned mail: see transcript for details\n"
        "Auto-Submitted: auto-generated (failure)\n"
        "\n"
        "Something went wrong, and the transcript got lost.\n"
    )
    bounce = detect_bounce(parse(raw))
    assert bounce is not None
    assert (bounce.recipients, bounce.permanent, bounce.kind) == ((), True, "mailer-daemon")


def test_exim_delay_warning_is_temporary() -> None:
    raw = (
        "From: Mail Delivery System <Mailer-Daemon@mx.example.com>\n"
        "Subject: Warning: message 1abcDE-0001xy-Q7 delayed 24 hours\n"
        "\n"
        "This message was created automatically by mail delivery software.\n"
        "A message that you sent has not yet been delivered to one or more of its\n"
        "recipients after more than 24 hours on the queue on mx.example.com.\n"
        "\n"
        "The message identifier is:     1abcDE-0001xy-Q7\n"
        "\n"
        "The address to which the message has not yet been delivered is:\n"
        "\n"
        "  jane.doe@example.com\n"
        "    host mx1.example.com [192.0.2.1]: Connection timed out\n"
        "\n"
        "No action is required on your part. Delivery attempts will continue for\n"
        "some time, and this warning may be repeated at intervals if the message\n"
        "remains undelivered.\n"
    )
    bounce = detect_bounce(parse(raw))
    assert bounce is not None
    assert (bounce.recipients, bounce.permanent, bounce.kind) == (("jane.doe@example.com",), False, "exim")


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(
            "From: Jane Doe <jane.doe@example.com>\n"
            "To: support@helpdesk.example\n"
            "Subject: Automatic reply: [#42] Your printer ticket\n"
            "Auto-Submitted: auto-replied\n"
            "X-Auto-Response-Suppress: All\n"
            "\n"
            "I am out of the office until Monday with no access to email.\n"
            "Your message could not be delivered to me in person; for urgent matters\n"
            "contact it-support@example.com.\n",
            id="exchange-automatic-reply",
        ),
        pytest.param(
            "From: Bob <bob@example.org>\n"
            "Subject: Out of Office: Re: [#42] Your printer ticket\n"
            "X-Autoreply: yes\n"
            "Precedence: bulk\n"
            "\n"
            "Thank you for your email. I am on vacation until 10 March.\n",
            id="vacation",
        ),
        pytest.param(
            "From: Carol <carol@example.org>\n"
            "Subject: Abwesenheitsnotiz: Drucker\n"
            "\n"
            "Ich bin bis 10. März nicht im Büro.\n",
            id="german-absence-note",
        ),
    ],
)
def test_out_of_office_is_not_a_bounce(raw: str) -> None:
    assert detect_bounce(parse(raw)) is None


POSTFIX_TEXT = (
    "This is the mail system at host mx.example.net.\n"
    "\n"
    "I'm sorry to have to inform you that your message could not\n"
    "be delivered to one or more recipients.\n"
    "\n"
    "<colleague@example.com>: host mx.example.com[192.0.2.1] said: 550 5.1.1\n"
    "    <colleague@example.com>: Recipient address rejected: User unknown\n"
)


def test_customer_forwarding_a_bounce_is_not_a_bounce() -> None:
    inline = (
        "From: Jane Doe <jane.doe@example.com>\n"
        "To: support@helpdesk.example\n"
        "Subject: Fwd: Undelivered Mail Returned to Sender\n"
        "\n"
        "Hi, why can't I mail my colleague? See below.\n"
        "\n"
        "---------- Forwarded message ---------\n"
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"
        "Subject: Undelivered Mail Returned to Sender\n"
        "\n" + POSTFIX_TEXT
    )
    assert detect_bounce(parse(inline)) is None

    as_attachment = (
        "From: Jane Doe <jane.doe@example.com>\n"
        "To: support@helpdesk.example\n"
        "Subject: FW: Undelivered Mail Returned to Sender\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="outer"\n'
        "\n"
        "--outer\n"
        "Content-Type: text/plain\n"
        "\n"
        "Please help, see the attached bounce.\n"
        "--outer\n"
        "Content-Type: message/rfc822\n"
        "\n" + build_dsn(FAILED_JANE).as_string() + "\n--outer--\n"
    )
    assert detect_bounce(parse(as_attachment)) is None


def test_ordinary_customer_mail_is_not_a_bounce() -> None:
    raw = (
        "From: Jane Doe <jane.doe@example.com>\n"
        "To: support@helpdesk.example\n"
        "Subject: Printer on floor 3 not working\n"
        "Message-ID: <abc@example.com>\n"
        "\n"
        "Hello, the printer says <toner@example.com>: failed. Delivery of the new toner failed too.\n"
    )
    assert detect_bounce(parse(raw)) is None


DEEP_NESTING = (
    "From: MAILER-DAEMON@example.com\nSubject: Undeliverable\nMIME-Version: 1.0\n"
    + "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(300))
    + "Content-Type: text/plain\n\n<jane.doe@example.com>:\nNo such user\n"
)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe\x00garbage\r\n\r\n\x00\x01", id="binary-garbage"),
        pytest.param(
            b"From: =?bogus-charset?q?Mail=20Delivery?= <MAILER-DAEMON@x.example>\n"
            b"Subject: =?utf-8?b?not base64!!?=\n"
            b"Content-Type: text/plain; charset=no-such-charset\n"
            b"Content-Transfer-Encoding: base64\n\n"
            b"%%%% this is not base64 \xff\xfe\n",
            id="bogus-charset-and-base64",
        ),
        pytest.param(
            b"From: MAILER-DAEMON@x.example\nSubject: Returned mail\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="missing"\n\n'
            b"no boundary ever appears\nFinal-Recipient: rfc822; \xe9\xe9@\xff\nAction: failed\n",
            id="missing-boundary-with-8bit-dsn-fields",
        ),
        pytest.param(
            b"From: MAILER-DAEMON@x.example\nSubject: Returned mail\n"
            b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
            b"--b\nContent-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
            b"!!!not base64!!!\n--b\nContent-Type: message/rfc822\n\n--b--\n",
            id="broken-delivery-status",
        ),
        pytest.param(
            b"From \xc3\x28 <\xa0@\xa1>\nSubject: \xe4\xf6\xfc Unzustellbar\nReturn-Path: <>\n"
            b"Content-Type: text/html; charset=utf-7\n\n<p>Delivery has failed to these recipients or groups:"
            b"<br>\xff<b>jane.doe@example.com</b><br>",
            id="8bit-headers-utf7-html",
        ),
        pytest.param(DEEP_NESTING.encode(), id="deeply-nested-multipart"),
        pytest.param(b"Content-Type: message/delivery-status\n\nAction: failed\n", id="bare-delivery-status"),
    ],
)
def test_malformed_messages_do_not_raise(raw: bytes) -> None:
    result = detect_bounce(parse(raw))
    assert result is None or isinstance(result, Bounce)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.lists(
        st.sampled_from(
            [
                b"From: MAILER-DAEMON@example.com\n",
                b"Return-Path: <>\n",
                b"Subject: Undelivered Mail Returned to Sender\n",
                b"Subject: Automatic reply\n",
                b"MIME-Version: 1.0\n",
                b'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n',
                b"Content-Type: message/delivery-status\n",
                b"Content-Type: text/html; charset=bogus\n",
                b"Content-Transfer-Encoding: base64\n",
                b"X-Failed-Recipients: \n",
            ]
        ),
        max_size=6,
    ),
    body=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    b"--b\n",
                    b"--b--\n",
                    b"Content-Type: message/delivery-status\n\n",
                    b"Content-Type: text/rfc822-headers\n\n",
                    b"Final-Recipient: rfc822; x@example.com\n",
                    b"Action: failed\n",
                    b"Status: 5.1.1\n",
                    b"<jane@example.com>:\n",
                    b"The following addresses had permanent fatal errors\n",
                    b"Message-ID: <\n",
                    b"\n",
                ]
            ),
        ),
        max_size=25,
    ),
)
def test_never_raises_on_arbitrary_input(headers: list[bytes], body: list[bytes]) -> None:
    result = detect_bounce(parse(b"".join(headers) + b"\n" + b"".join(body)))
    assert result is None or isinstance(result, Bounce)


# --- corpus agreement ------------------------------------------------------------------------------


def parse_file(path: Path) -> Message:
    return parse(path.read_bytes())


# flufl.bounce's expected.json is a per-detector table: an empty address list means "this
# detector must find nothing here", not "not a bounce".  What the files really are:
FLUFL_OVERRIDES: dict[str, tuple[bool, frozenset[str]]] = {
    # (is a bounce, failed recipients)
    "groupwise_03.txt": (False, frozenset()),  # an ordinary (Spanish) reply, no bounce at all
    "qmail_08.txt": (False, frozenset()),  # "Auto reply" with Precedence: auto_reply
    "simple_42.txt": (True, frozenset({"david...@gmail.com"})),  # its DSN names the (redacted) address
    "bounce_01.txt": (True, frozenset()),  # not in expected.json; Jetmail bounce naming "dylan", no address
}


def test_flufl_bounce_corpus_agreement() -> None:
    root = corpora_dir() / "flufl-bounce"
    expected = json.loads((root / "expected.json").read_text())["expected"]
    files = sorted((root / "data").glob("*.txt"))
    detected_ok = recipients_ok = permanence_ok = permanence_total = 0
    mismatches: list[str] = []
    for path in files:
        entries = expected.get(path.name, [])
        want_bounce, want_recipients = FLUFL_OVERRIDES.get(
            path.name, (True, frozenset(a.lower() for e in entries for a in e["addresses"]))
        )
        kinds = {e["kind"] for e in entries} & {"permanent", "temporary"}
        bounce = detect_bounce(parse_file(path))
        got = frozenset(bounce.recipients) if bounce else frozenset()
        detected_ok += (bounce is not None) == want_bounce
        if (bounce is not None) == want_bounce and got == want_recipients:
            recipients_ok += 1
        else:
            mismatches.append(f"  {path.name}: expected {sorted(want_recipients)}, got {bounce}")
        if bounce is not None and len(kinds) == 1:
            permanence_total += 1
            if bounce.permanent == (kinds == {"permanent"}):
                permanence_ok += 1
            else:
                mismatches.append(f"  {path.name}: expected {kinds.pop()}, got permanent={bounce.permanent}")
    total = len(files)
    print(
        f"\nflufl-bounce: {recipients_ok}/{total} recipients agree, {detected_ok}/{total} bounce/non-bounce"
        f" agree, {permanence_ok}/{permanence_total} permanent/temporary agree"
    )
    print("\n".join(mismatches))
    assert total >= 117
    # Measured: 116/117, 117/117, 113/113 (yale_01's "userx" -> userx@yale.edu + userx@cs.yale.edu
    # mapping is deliberately not implemented; it is still detected as a bounce).
    assert recipients_ok / total >= 0.98
    assert detected_ok / total >= 0.99
    assert permanence_ok / permanence_total >= 0.99


def test_bounced_corpus_agreement() -> None:
    root = corpora_dir() / "bounced-bounce_email"
    expected = json.loads((root / "expected.json").read_text())["expected"]
    detected_ok = dsn_ok = dsn_total = 0
    mismatches: list[str] = []
    for rel, want in sorted(expected.items()):
        bounce = detect_bounce(parse_file(root / rel))
        if (bounce is not None) == want["is_bounce"]:
            detected_ok += 1
        else:
            mismatches.append(f"  {rel}: is_bounce={want['is_bounce']}, got {bounce}")
        if want["rfc3464_dsn_bounces"]:
            dsn_total += 1
            want_recipients = {r["recipient"].lower() for r in want["rfc3464_dsn_bounces"]}
            if bounce is not None and bounce.kind == "dsn" and set(bounce.recipients) == want_recipients:
                dsn_ok += 1
            else:
                mismatches.append(f"  {rel}: DSN recipients {sorted(want_recipients)}, got {bounce}")
    total = len(expected)
    print(
        f"\nbounced-bounce_email: {detected_ok}/{total} bounce/non-bounce agree,"
        f" {dsn_ok}/{dsn_total} DSN failed recipients agree"
    )
    print("\n".join(mismatches))
    # Measured: 44/45 and 22/23.  Known, deliberate differences:
    # * bounce-auto-respond.eml is an ARF abuse report (message/feedback-report), not a delivery
    #   failure -- mailgun-flanker files such reports as "complaints", separate from bounces.
    # * tt_bounce_16.eml: its DSN has Original-Recipient notikums@tv5.lv (the address that was
    #   written to, so the one a ticket knows) and Final-Recipient jekaterina@tv5.lv (an alias
    #   target); we report the original, bounced reports the final one.
    assert total >= 45
    assert detected_ok / total >= 0.95
    assert dsn_ok / dsn_total >= 0.9


def test_flanker_bounce_folder() -> None:
    root = corpora_dir() / "mailgun-flanker" / "tests" / "fixtures" / "messages"
    bounces = sorted((root / "bounce").glob("*.eml"))
    assert len(bounces) >= 9
    detected = {path.name: detect_bounce(parse_file(path)) for path in bounces}
    print(f"\nmailgun-flanker: {sum(b is not None for b in detected.values())}/{len(bounces)} bounces detected")
    assert all(detected.values()), [name for name, b in detected.items() if b is None]
    zed = detected["zed.eml"]
    assert zed is not None
    assert zed.recipients == ("asdfasdfasdfasdfasdfasdfewrqertrtyrthsfgdfgadfqeadvxzvz@gmail.com",)
    office365 = detected["office365.eml"]
    assert office365 is not None
    assert office365.recipients == ("noname@example.com",)
    assert office365.diagnostic is not None and "5.1.10" in office365.diagnostic
    no_mx = detected["no-mx.eml"]
    assert no_mx is not None and not no_mx.permanent  # "Delayed Mail (still being retried)"
    for name in ("complaints/aol.eml", "complaints/yahoo.eml", "signed.eml"):
        assert detect_bounce(parse_file(root / name)) is None, name


# Folders with customer replies, auto-replies excluded: none of these is a bounce.
NON_BOUNCE_FOLDERS = (
    "crisp-email-reply-parser",
    "github-email_reply_parser",
    "zapier-email-reply-parser",
    "mail-parser-reply",
    "mailgun-talon",
    "enmime-testdata",
    "spamassassin-samples",
)


def test_reply_corpora_are_not_bounces() -> None:
    root = corpora_dir()
    files = [
        path
        for folder in NON_BOUNCE_FOLDERS
        for path in sorted((root / folder).rglob("*"))
        if path.is_file() and path.suffix not in {".json", ".md"} and path.name not in {"LICENSE", "NOTICE"}
    ]
    flagged = [str(path.relative_to(root)) for path in files if detect_bounce(parse_file(path)) is not None]
    print(f"\nreply corpora: {len(files) - len(flagged)}/{len(files)} not bounces")
    assert len(files) > 300
    assert flagged == []


# --- the fast exit for ordinary mail changes no result -------------------------------------------


def detect_without_fast_exit(msg: Message) -> Bounce | None:
    """detect_bounce as it was before the fast exit: every detector on the full view."""
    try:
        return bounce._detect(bounce._Mail.of(msg))
    except Exception:
        return None


def test_fast_exit_changes_no_result_on_any_corpus_file() -> None:
    """Every file of the shared corpora, read as our parser's tree, as the stdlib's compat32 tree
    and (up to 50 KB, it is slow) as an EmailMessage: detect_bounce gives what the full detector
    table gives."""
    files = [path for path in sorted(corpora_dir().rglob("*")) if path.is_file()]
    assert len(files) > 800
    checked = early = bounces = 0
    differ = []
    for path in files:
        raw = path.read_bytes()
        messages = [parse_message(raw).message, email.message_from_bytes(raw, policy=email.policy.compat32)]
        if len(raw) <= 50_000:
            messages.append(email.message_from_bytes(raw, policy=email.policy.default))
        for msg in messages:
            checked += 1
            signals = bounce._Signals.of(msg)
            early += not signals.automated and not bounce._has_delivery_status(msg)
            expected = detect_without_fast_exit(msg)
            bounces += expected is not None
            if detect_bounce(msg) != expected:
                differ.append(str(path.relative_to(corpora_dir())))
    print(f"\nbounce fast exit: {checked} messages from {len(files)} files, {early} decided early, "
          f"{bounces} bounces, {len(differ)} differ")
    assert early > checked // 2
    assert not differ, differ[:5]


def test_everyday_from_forms_parse_as_parseaddr_does() -> None:
    values = [
        str(v)
        for path in sorted(corpora_dir().rglob("*"))
        if path.is_file()
        for part in parse_file(path).walk()
        for v in (part.get_all("From") or []) + (part.get_all("To") or []) + (part.get_all("Reply-To") or [])
    ]
    rng = random.Random(7)
    def atom() -> str:
        return "".join(rng.choice("aB7-_+ä\udcfe!#'\xa0\u2003=?.") for _ in range(rng.randint(1, 4)))
    def blank() -> str:
        return rng.choice(["", " ", "\t", "\r\n ", "\n", "\r"])
    def word() -> str:
        if rng.random() < 0.3:
            return '"' + "".join(rng.choice('x ,<@\n\tü(."\\') for _ in range(rng.randint(0, 5))) + '"'
        return rng.choice([atom(), atom() + ".", "J.", "(c)", "\\x"])
    for _ in range(30000):
        address = f"{atom()}@{atom()}"
        if rng.random() < 0.3:
            values.append(blank() + address + blank())
        else:
            phrase = "".join(word() + blank() for _ in range(rng.randint(0, 4)))
            values.append(f"{blank()}{phrase}<{rng.choice(['', ' '])}{address}{rng.choice(['', ' '])}>{blank()}")
    fast = sum(bounce._SIMPLE_MAILBOX.fullmatch(v) is not None for v in values)
    assert fast > len(values) // 5
    assert [bounce._parseaddr(v) for v in values] == [parseaddr(v) for v in values]


def test_header_text_without_encoded_words_is_the_raw_value() -> None:
    for path in sorted(corpora_dir().rglob("*")):
        if not path.is_file():
            continue
        for part in parse_file(path).walk():
            for name in set(part.keys()):
                value = part.get(name)
                try:
                    expected = " ".join(str(make_header(decode_header(value))).split())
                except Exception:
                    expected = " ".join(str(value).split())
                assert bounce._header_text(part, name) == expected
