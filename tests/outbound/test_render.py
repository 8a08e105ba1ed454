"""Tests for helpdesk.outbound.render and the shipped templates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from markupsafe import Markup

from helpdesk.outbound import render
from helpdesk.outbound.render import (
    Rendered,
    TemplateProblem,
    Templates,
    default_templates_dir,
    duration,
    text_to_html,
)

SHIPPED = Path(__file__).resolve().parents[2] / "templates"
EVIL = "<script>alert(1)</script>"


@dataclass(frozen=True)
class TicketView:
    number: str = "SUP-12"
    subject: str = "Printer on fire"
    status: str = "open"
    priority: int = 2
    owner: str | None = "alice"
    assignee: str | None = None


@dataclass(frozen=True)
class ItemView:
    from_name: str = "Chris Customer"
    from_address: str = "chris@customer.example"
    body_text: str = (
        "Hello,\n\nthe printer on floor 2 is on fire.\nSee https://status.example.test/printers?id=2&x=1.\n"
    )
    created_at: datetime = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    attachment_names: list[str] = field(default_factory=lambda: ["photo.jpg", "log.txt"])


def common(ticket: TicketView | None = None, /, **extra: object) -> dict[str, object]:
    ticket = ticket or TicketView()
    return {
        "ticket": ticket,
        "tag": f"[{ticket.number}]",
        "channel": SimpleNamespace(name="support", label="Example Support", address="support@example.test"),
        "recipient_name": "Alice Admin",
        "sla": [],
        **extra,
    }


def staff(**extra: object) -> dict[str, object]:
    return {
        "reply_address": "support+r.SUP-12.sig@example.test",
        "note_address": "support+n.SUP-12.sig@example.test",
        "staff_name": "Alice Admin",
        **extra,
    }


CONTEXTS: dict[str, dict[str, object]] = {
    "ack": {"customer_name": "Chris Customer"},
    "notify_new": staff(item=ItemView(), organisation="ACME Ltd"),
    "notify_reply": staff(item=ItemView(), organisation=None),
    "notify_item": staff(
        item=ItemView(from_name="Dana", body_text="Restarted it."), author="Dana Tech", internal=False, mentioned=False
    ),
    "reply": {"body": "Hi Chris,\n\nplease switch it off.\n", "author": "Dana Tech"},
    "command_error": {
        "errors": ["unknown command #stauts", "#priority: priority must be 1 (highest) to 5 (lowest)"],
        "original_subject": "Re: [SUP-12] New ticket: Printer on fire",
    },
    "alert": staff(
        alert_title="SLA warning: first response due in 01:00 business hours",
        alert_lines=["Policy standard, priority 3: first response within 04:00 business hours."],
    ),
    "delivery_failed": {
        "failed_recipient": "chris@customer.example",
        "error": "550 5.1.1 user unknown",
        "failed_subject": "Re: [SUP-12] Printer on fire",
    },
}


def norm(text: str) -> str:
    return " ".join(text.split())


def visible(html: str) -> str:
    """The html's text, roughly: tags dropped, a few entities decoded, whitespace collapsed."""
    text = re.sub(r"</?(?:strong|b|i|em|a|code)\b[^>]*>", "", html)
    text = re.sub(r"<[^>]+>", " ", text)
    for entity, char in (
        ("&lt;", "<"),
        ("&gt;", ">"),
        ("&#34;", '"'),
        ("&#39;", "'"),
        ("&quot;", '"'),
        ("&middot;", "·"),
        ("&ldquo;", "“"),
        ("&rdquo;", "”"),
        ("&amp;", "&"),
    ):
        text = text.replace(entity, char)
    return norm(text)


@pytest.fixture
def templates() -> Templates:
    return Templates(SHIPPED)


def render_shipped(templates: Templates, name: str, ticket: TicketView | None = None, **extra: object) -> Rendered:
    return templates.render(name, common(ticket, **{**CONTEXTS[name], **extra}))


# --- every shipped template ---------------------------------------------------------------------------


def test_every_template_is_tested() -> None:
    names = {p.name.split(".")[0] for p in SHIPPED.iterdir() if not p.name.startswith("_")}
    assert names == set(CONTEXTS)
    for name in names:
        for suffix in (".subject.txt", ".txt", ".html"):
            assert (SHIPPED / f"{name}{suffix}").is_file(), f"{name}{suffix}"


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_shipped_template_renders(templates: Templates, name: str) -> None:
    rendered = render_shipped(templates, name)
    assert rendered.subject and "\n" not in rendered.subject and rendered.subject == norm(rendered.subject)
    assert "[SUP-12]" in rendered.subject
    assert rendered.text.endswith("\n") and not rendered.text.endswith("\n\n\n")
    assert "SUP-12" in rendered.text
    assert rendered.html.startswith("<!DOCTYPE html>")
    assert rendered.html.rstrip().endswith("</html>")
    assert "SUP-12" in rendered.html
    assert "{{" not in rendered.text + rendered.html and "{%" not in rendered.text + rendered.html


@pytest.mark.parametrize("name", sorted(CONTEXTS))
def test_user_values_are_escaped_in_html(templates: Templates, name: str) -> None:
    ticket = TicketView(subject=f"Printer {EVIL}", owner=EVIL)
    extra: dict[str, object] = {"recipient_name": EVIL}
    if name == "ack":
        extra["customer_name"] = EVIL
    if "item" in CONTEXTS[name]:
        extra["item"] = ItemView(from_name=EVIL, body_text=f"text {EVIL}\n> {EVIL}", attachment_names=[EVIL])
        extra["organisation"] = EVIL
    for key in ("author", "body", "original_subject", "failed_recipient", "error", "failed_subject"):
        if key in CONTEXTS[name]:
            extra[key] = EVIL
    if name == "command_error":
        extra["errors"] = [EVIL]
    rendered = render_shipped(templates, name, ticket, **extra)
    assert "<script" not in rendered.html
    assert "&lt;script&gt;" in rendered.html
    assert EVIL in rendered.text + rendered.subject


def test_ack(templates: Templates) -> None:
    ticket = TicketView(subject="Printer on fire")
    rendered = templates.render("ack", common(ticket, customer_name="Chris", recipient_name="Chris"))
    assert rendered.subject == "[SUP-12] Received: Printer on fire"
    for text in (norm(rendered.text), visible(rendered.html)):
        assert text.startswith("Hello Chris,") or "Hello Chris," in text
        assert "opened ticket SUP-12" in text
        assert "keep [SUP-12] in the subject" in text
        assert "Example Support" in text


def test_ack_never_quotes_the_customer(templates: Templates) -> None:
    context = common(customer_name="", recipient_name="", body="BUY CHEAP PILLS", item=ItemView(body_text="BUY CHEAP"))
    rendered = templates.render("ack", context)
    assert "BUY" not in rendered.text + rendered.html
    assert rendered.text.startswith("Hello,\n")


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("notify_new", "[SUP-12] New ticket: Printer on fire"),
        ("notify_reply", "[SUP-12] Customer reply: Printer on fire"),
    ],
)
def test_notify_customer_mail(templates: Templates, name: str, subject: str) -> None:
    rendered = render_shipped(templates, name)
    assert rendered.subject == subject
    organisation = CONTEXTS[name]["organisation"]
    for text in (norm(rendered.text), visible(rendered.html)):
        assert "Chris Customer <chris@customer.example>" in text
        assert "2026-03-02 09:00 UTC" in text
        assert "the printer on floor 2 is on fire." in text
        assert "photo.jpg" in text and "log.txt" in text
        assert "Reply to this mail to answer the customer." in text
        assert "#status pending, #owner NAME, #assignee NAME, #priority 2, #snooze 3d," in text
        assert "#snooze 3d, #time 1.5h what you did, #close." in text
        assert "Write #note as the first line (or write to support+n.SUP-12.sig@example.test)" in text
        assert "add an internal note instead." in text
        assert ("ACME Ltd" in text) == (organisation is not None)
    assert '<a href="https://status.example.test/printers?id=2&amp;x=1">' in rendered.html
    assert 'href="mailto:support+n.SUP-12.sig@example.test"' in rendered.html


def test_notify_without_attachments_or_sender_name(templates: Templates) -> None:
    item = ItemView(from_name="", attachment_names=[], body_text="")
    rendered = render_shipped(templates, "notify_new", item=item)
    assert "Attachments" not in rendered.text + rendered.html
    assert "From:     chris@customer.example\n" in rendered.text
    assert "(no text)" in rendered.text and "(no text)" in rendered.html


@pytest.mark.parametrize(
    ("internal", "mentioned", "subject", "line"),
    [
        (
            False,
            False,
            "[SUP-12] Dana Tech replied: Printer on fire",
            "Dana Tech replied to the customer on ticket SUP-12.",
        ),
        (
            True,
            False,
            "[SUP-12] Note from Dana Tech: Printer on fire",
            "Dana Tech added an internal note to ticket SUP-12.",
        ),
        (
            True,
            True,
            "[SUP-12] Note from Dana Tech: Printer on fire (you were mentioned)",
            "Dana Tech added an internal note to ticket SUP-12.",
        ),
        (
            False,
            True,
            "[SUP-12] Dana Tech replied: Printer on fire (you were mentioned)",
            "Dana Tech replied to the customer on ticket SUP-12.",
        ),
    ],
)
def test_notify_item(templates: Templates, internal: bool, mentioned: bool, subject: str, line: str) -> None:
    rendered = render_shipped(templates, "notify_item", internal=internal, mentioned=mentioned)
    assert rendered.subject == subject
    for text in (norm(rendered.text), visible(rendered.html)):
        assert line in text
        assert "Restarted it." in text
        assert ("You were mentioned." in text) == mentioned
        assert "Reply to this mail to answer the customer." in text


def test_reply(templates: Templates) -> None:
    rendered = render_shipped(templates, "reply")
    assert rendered.subject == "Re: [SUP-12] Printer on fire"
    assert rendered.text == (
        "Hi Chris,\n\nplease switch it off.\n\n-- \nDana Tech\nExample Support\n\n"
        "Ticket SUP-12: please keep [SUP-12] in the subject when replying.\n"
    )
    html = visible(rendered.html)
    assert "Hi Chris, please switch it off. Dana Tech Example Support" in html
    assert "Ticket SUP-12: please keep [SUP-12] in the subject when replying." in html
    assert "<p" in rendered.html and "please switch it off." in rendered.html


def test_command_error(templates: Templates) -> None:
    rendered = render_shipped(templates, "command_error")
    assert rendered.subject.startswith("[SUP-12] ")
    for text in (norm(rendered.text), visible(rendered.html)):
        assert "Hello Alice Admin," in text
        assert "Re: [SUP-12] New ticket: Printer on fire" in text
        assert "Nothing was executed" in text
        assert "unknown command #stauts" in text
        assert "#priority: priority must be 1 (highest) to 5 (lowest)" in text
        for command in ("#status", "#owner", "#assignee", "#priority", "#time", "#close", "#note"):
            assert command in text


def test_delivery_failed(templates: Templates) -> None:
    rendered = render_shipped(templates, "delivery_failed")
    assert rendered.subject == "[SUP-12] Delivery failed to chris@customer.example"
    for text in (norm(rendered.text), visible(rendered.html)):
        assert "could not be delivered" in text
        assert "chris@customer.example" in text
        assert "550 5.1.1 user unknown" in text
        assert "Re: [SUP-12] Printer on fire" in text


def test_subject_is_one_line(templates: Templates) -> None:
    ticket = TicketView(subject="Printer\r\non   fire\t\u2028again ")
    rendered = templates.render("ack", common(ticket, customer_name=""))
    assert rendered.subject == "[SUP-12] Received: Printer on fire again"


# --- overrides and errors -----------------------------------------------------------------------------


def test_override_replaces_one_template(tmp_path: Path) -> None:
    (tmp_path / "ack.subject.txt").write_text("{{ tag }} Danke: {{ ticket.subject }}\n")
    (tmp_path / "_layout.html").write_text("<html><body>{% block body %}{% endblock %}</body></html>\n")
    templates = Templates(SHIPPED, tmp_path)
    rendered = templates.render("ack", common(customer_name="Chris"))
    assert rendered.subject == "[SUP-12] Danke: Printer on fire"
    shipped = Templates(SHIPPED).render("ack", common(customer_name="Chris"))
    assert rendered.text == shipped.text
    assert rendered.html.startswith("<html><body>") and "opened ticket" in rendered.html
    assert shipped.html.startswith("<!DOCTYPE html>")


def test_missing_override_dir_falls_back_to_shipped(tmp_path: Path) -> None:
    rendered = Templates(SHIPPED, tmp_path / "missing").render("ack", common(customer_name=""))
    assert rendered.subject == "[SUP-12] Received: Printer on fire"


def test_undefined_variable_raises_template_problem(tmp_path: Path) -> None:
    (tmp_path / "ack.txt").write_text("Hello\n{{ ticket.numbr }}\n")
    with pytest.raises(TemplateProblem, match=r"^ack\.txt: line 2: .*numbr") as info:
        Templates(SHIPPED, tmp_path).render("ack", common(customer_name=""))
    assert info.value.__cause__ is not None


def test_missing_variable_raises_template_problem() -> None:
    with pytest.raises(TemplateProblem, match=r"^ack\.txt: line \d+: 'customer_name' is undefined"):
        Templates(SHIPPED).render("ack", common())


def test_error_in_an_included_template_names_both(templates: Templates) -> None:
    context = common(**{k: v for k, v in CONTEXTS["notify_new"].items() if k != "organisation"})
    with pytest.raises(
        TemplateProblem, match=r"^notify_new\.txt: _customer_mail\.txt line \d+: 'organisation' is undefined"
    ):
        templates.render("notify_new", context)


def test_syntax_error_raises_template_problem(tmp_path: Path) -> None:
    (tmp_path / "ack.html").write_text('{% extends "_layout.html" %}\n{% block body %}\n{{ x }\n{% endblock %}\n')
    with pytest.raises(TemplateProblem, match=r"^ack\.html: line 3: "):
        Templates(SHIPPED, tmp_path).render("ack", common(customer_name=""))


def test_missing_template_raises_template_problem(tmp_path: Path) -> None:
    with pytest.raises(TemplateProblem, match=r"^nope\.subject\.txt: template not found"):
        Templates(SHIPPED, tmp_path).render("nope", common())
    (tmp_path / "ack.txt").write_text('{% include "_gone.txt" %}\n')
    with pytest.raises(TemplateProblem, match=r"^ack\.txt: template _gone\.txt not found"):
        Templates(SHIPPED, tmp_path).render("ack", common(customer_name=""))


def test_other_runtime_errors_raise_template_problem(tmp_path: Path) -> None:
    (tmp_path / "ack.txt").write_text("{{ ticket.priority + 'x' }}\n")
    with pytest.raises(TemplateProblem, match=r"^ack\.txt: line 1: TypeError"):
        Templates(SHIPPED, tmp_path).render("ack", common(customer_name=""))


def test_autoescape_only_for_html(tmp_path: Path) -> None:
    (tmp_path / "x.subject.txt").write_text("{{ v }}")
    (tmp_path / "x.txt").write_text("{{ v }}")
    (tmp_path / "x.html").write_text("{{ v }}")
    rendered = Templates(tmp_path).render("x", {"v": "<b>&"})
    assert rendered == Rendered(subject="<b>&", text="<b>&", html="&lt;b&gt;&amp;")


def test_whitespace_control(tmp_path: Path) -> None:
    (tmp_path / "x.subject.txt").write_text("s")
    (tmp_path / "x.html").write_text("")
    (tmp_path / "x.txt").write_text("a\n  {% if true %}\nb\n  {% endif %}\nc\n")
    assert Templates(tmp_path).render("x", {}).text == "a\nb\nc\n"


def test_environments_are_cached(tmp_path: Path) -> None:
    render._environment.cache_clear()
    Templates(SHIPPED).render("ack", common(customer_name=""))
    Templates(SHIPPED).render("ack", common(customer_name=""))
    Templates(SHIPPED, tmp_path).render("ack", common(customer_name=""))
    info = render._environment.cache_info()
    assert (info.misses, info.hits) == (2, 1)


def test_default_templates_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HELPDESK_TEMPLATES", raising=False)
    assert default_templates_dir() == SHIPPED
    monkeypatch.setenv("HELPDESK_TEMPLATES", str(tmp_path))
    assert default_templates_dir() == tmp_path


# --- filters --------------------------------------------------------------------------------------------


def test_text_to_html_paragraphs_breaks_and_escaping() -> None:
    html = text_to_html("Hello <b>you</b> & co,\nline two\n\n\nnext paragraph\r\nend")
    assert isinstance(html, Markup)
    paragraphs = re.findall(r"<p[^>]*>(.*?)</p>", html, re.DOTALL)
    assert paragraphs == ["Hello &lt;b&gt;you&lt;/b&gt; &amp; co,<br>\nline two", "next paragraph<br>\nend"]


def test_text_to_html_links() -> None:
    html = text_to_html(
        "see https://example.test/a?b=1&c=2. or (http://example.test/x_(y)), "
        "<https://example.test/z> javascript:alert(1) ftp://example.test/f www.example.test"
    )
    links = re.findall(r'<a href="([^"]*)">([^<]*)</a>', html)
    assert links == [
        ("https://example.test/a?b=1&amp;c=2", "https://example.test/a?b=1&amp;c=2"),
        ("http://example.test/x_(y)", "http://example.test/x_(y)"),
        ("https://example.test/z", "https://example.test/z"),
    ]
    assert "javascript:alert(1)" in html and 'href="javascript' not in html
    assert 'href="ftp' not in html
    assert "&lt;<a href" in html


def test_text_to_html_link_cannot_break_out_of_the_attribute() -> None:
    html = text_to_html('https://example.test/"onmouseover="alert(1) https://example.test/\'x')
    assert 'onmouseover="' not in html
    assert "&#34;" in html or "&quot;" in html


def test_text_to_html_quotes() -> None:
    html = text_to_html("My answer\n\nOn Monday Chris wrote:\n> first\n> second\n>> older\n>\n> back\nafter")
    assert html.count("<blockquote") == 2 and html.count("</blockquote>") == 2
    inner = html[html.index("<blockquote") : html.rindex("</blockquote>")]
    assert "first<br>\nsecond" in inner and "older" in inner and "back" in inner
    assert "after" not in inner and "My answer" not in inner
    assert "&gt;" not in html


def test_text_to_html_deep_quotes_are_capped() -> None:
    html = text_to_html(">" * 500 + " deep")
    assert html.count("<blockquote") == 10
    assert html.count("</blockquote>") == 10
    assert "&gt;" * 490 + " deep" in html


def test_text_to_html_in_a_template(tmp_path: Path) -> None:
    (tmp_path / "x.subject.txt").write_text("s")
    (tmp_path / "x.txt").write_text("{{ body }}")
    (tmp_path / "x.html").write_text("<div>{{ body|text_to_html }}</div>")
    rendered = Templates(tmp_path).render("x", {"body": "a <i>\n\n> b"})
    assert rendered.html.startswith('<div><p style="margin:0 0 1em 0;">a &lt;i&gt;</p>\n<blockquote')


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(hours=2, minutes=14), "02:14"),
        (timedelta(hours=2, minutes=14, seconds=59), "02:14"),
        (timedelta(0), "00:00"),
        (timedelta(minutes=5), "00:05"),
        (timedelta(days=2, hours=3), "51:00"),
        (timedelta(hours=150), "150:00"),
        (timedelta(minutes=-90), "-01:30"),
        (timedelta(seconds=-30), "00:00"),
        (None, ""),
    ],
)
def test_duration(value: timedelta | None, expected: str) -> None:
    assert duration(value) == expected


def test_duration_filter_in_a_template(tmp_path: Path) -> None:
    for name in ("x.subject.txt", "x.txt", "x.html"):
        (tmp_path / name).write_text("SLA {{ left|duration }}")
    rendered = Templates(tmp_path).render("x", {"left": timedelta(hours=2, minutes=14)})
    assert rendered == Rendered(subject="SLA 02:14", text="SLA 02:14", html="SLA 02:14")
