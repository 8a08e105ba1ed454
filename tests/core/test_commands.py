"""Commands and @mentions in staff mail; the ``#time`` and ``#priority`` arguments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpdesk.core.commands import (
    KNOWN_COMMANDS,
    Command,
    StaffMail,
    parse_priority,
    parse_staff_mail,
    parse_work_time,
)


def names(mail: StaffMail) -> list[tuple[str, str]]:
    return [(c.name, c.args) for c in mail.commands]


def test_known_commands() -> None:
    assert {"status", "owner", "assignee", "priority", "time", "close", "note", "watch", "unwatch", "snooze"} == (
        KNOWN_COMMANDS
    )


def test_every_example_command() -> None:
    mail = parse_staff_mail(
        "#status pending\n#owner alice\n#assignee bob\n#priority 2\n#time 1.5h remote support\n#close\n#note\n"
        "\nPrinter fixed, toner replaced.\n"
    )
    assert mail == StaffMail(
        commands=(
            Command("status", "pending", "#status pending"),
            Command("owner", "alice", "#owner alice"),
            Command("assignee", "bob", "#assignee bob"),
            Command("priority", "2", "#priority 2"),
            Command("time", "1.5h remote support", "#time 1.5h remote support"),
            Command("close", "", "#close"),
        ),
        text="Printer fixed, toner replaced.\n",
        note=True,
        errors=(),
        mentions=(),
    )


def test_watch_and_unwatch_take_an_optional_argument() -> None:
    mail = parse_staff_mail("#watch\n#unwatch carol\nok")
    assert names(mail) == [("watch", ""), ("unwatch", "carol")]
    assert mail.errors == ()


def test_leading_and_interleaved_blank_lines_and_indentation() -> None:
    mail = parse_staff_mail(
        "\n  \n   #STATUS   Waiting for customer  \r\n\n\t#Priority 1\r\n\r\n\r\nHello,\r\nthanks\r\n"
    )
    assert names(mail) == [("status", "Waiting for customer"), ("priority", "1")]
    assert mail.commands[0].line == "   #STATUS   Waiting for customer  "
    assert mail.text == "Hello,\r\nthanks\r\n"


def test_mail_of_commands_only() -> None:
    mail = parse_staff_mail("#close\n\n")
    assert names(mail) == [("close", "")]
    assert mail.text == ""


@pytest.mark.parametrize("text", ["", "\n\n", "Hello,\n\n#status pending\n", "  \nHi\n#close\n"])
def test_text_unchanged_without_a_command_block(text: str) -> None:
    mail = parse_staff_mail(text)
    assert mail == StaffMail(commands=(), text=text, note=False, errors=(), mentions=())


def test_commands_after_the_first_text_line_are_text() -> None:
    mail = parse_staff_mail("#status pending\nDone.\n#close\n")
    assert names(mail) == [("status", "pending")]
    assert mail.text == "Done.\n#close\n"


def test_unknown_command_is_an_error_and_is_removed() -> None:
    mail = parse_staff_mail("#foo bar\n#Escalate\n#status open\nText")
    assert mail.errors == ("unknown command #foo", "unknown command #Escalate")
    assert names(mail) == [("status", "open")]
    assert mail.text == "Text"


@pytest.mark.parametrize("name", ["status", "owner", "assignee", "priority", "time"])
def test_commands_that_need_a_value(name: str) -> None:
    mail = parse_staff_mail(f"#{name}\n#{name}   \nText")
    assert mail.errors == (f"#{name} needs a value", f"#{name} needs a value")
    assert mail.commands == ()
    assert mail.text == "Text"


def test_arguments_of_note_and_close_are_ignored_without_error() -> None:
    mail = parse_staff_mail("#note internal only\n#close as duplicate\nText")
    assert mail.note is True
    assert names(mail) == [("close", "as duplicate")]
    assert mail.errors == ()


def test_invalid_priority_and_time_are_errors() -> None:
    mail = parse_staff_mail("#priority 9\n#time 90\n#time 1.5h ok\nText")
    assert mail.errors == (
        "#priority: priority must be 1 (highest) to 5 (lowest)",
        "#time: give a unit, e.g. 1.5h or 90m",
    )
    assert names(mail) == [("time", "1.5h ok")]


@pytest.mark.parametrize(
    "line",
    [
        "#1 priority is the printer",
        "#SUP-12 is broken",
        "#SUP12 is broken",
        "#status: pending",
        "#status-pending",
        "# status pending",
        "##status pending",
        "#",
        "#über alles",
    ],
)
def test_tags_and_other_hashes_are_not_commands(line: str) -> None:
    text = f"{line}\n#close\n"
    mail = parse_staff_mail(text)
    assert mail == StaffMail(commands=(), text=text, note=False, errors=(), mentions=())


def test_tag_ends_the_command_block() -> None:
    mail = parse_staff_mail("#status pending\n#SUP-12 is broken\n#close\n")
    assert names(mail) == [("status", "pending")]
    assert mail.text == "#SUP-12 is broken\n#close\n"


def test_quoted_lines_are_not_commands_and_have_no_mentions() -> None:
    text = "> #close\n> @alice wrote this\n\n@bob please look\n"
    mail = parse_staff_mail(text)
    assert mail.commands == ()
    assert mail.text == text
    assert mail.mentions == ("bob",)
    assert parse_staff_mail("#status open\n   > @carol quoted\n@dave").mentions == ("dave",)


def test_mentions() -> None:
    mail = parse_staff_mail(
        "#owner alice\n\n"
        "@Alice, can you ask bob@example.com or @carol.? cc @alice and (@dave-) [@Eve_]\n"
        "no: x@y, a.@b, a_@c, a-@d, a+@e, josé@f; yes:@frank @g.h-i @2nd"
    )
    assert mail.mentions == ("alice", "carol", "dave", "eve", "frank", "g.h-i", "2nd")


def test_mentions_in_the_command_block_do_not_count() -> None:
    assert parse_staff_mail("#assignee @bob\nThanks @carol").mentions == ("carol",)


def test_note_alone() -> None:
    mail = parse_staff_mail("#note\nCalled the customer, no answer.")
    assert mail == StaffMail(commands=(), text="Called the customer, no answer.", note=True, errors=(), mentions=())


# =============================================================================================
# #time and #priority arguments
# =============================================================================================


@pytest.mark.parametrize(
    ("text", "minutes", "description"),
    [
        ("1.5h remote support", 90, "remote support"),
        ("1,5h", 90, ""),
        ("90m", 90, ""),
        ("90min on site", 90, "on site"),
        ("90 mins", 90, ""),
        ("1h30m", 90, ""),
        ("1h 30m  call with vendor ", 90, "call with vendor"),
        ("1h30", 90, ""),
        ("1:30", 90, ""),
        ("0:05 quick fix", 5, "quick fix"),
        ("2 h", 120, ""),
        ("2 hours travel", 120, "travel"),
        ("2 hrs", 120, ""),
        ("1 hour", 60, ""),
        ("45 minutes", 45, ""),
        ("1 minute", 1, ""),
        ("2H 15M", 135, ""),
        ("0.33h", 20, ""),
        ("0.01h", 1, ""),
        ("1.5m", 2, ""),
        ("24h", 1440, ""),
        ("24:00", 1440, ""),
        ("  3h  ", 180, ""),
        ("1.5h - patching", 90, "- patching"),
    ],
)
def test_work_time(text: str, minutes: int, description: str) -> None:
    assert parse_work_time(text) == (minutes, description)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("90", "give a unit, e.g. 1.5h or 90m"),
        ("1.5", "give a unit, e.g. 1.5h or 90m"),
        ("90 remote support", "give a unit, e.g. 1.5h or 90m"),
        ("", "needs a duration"),
        ("   ", "needs a duration"),
        ("remote support", "cannot read a duration"),
        ("2 home visits", "give a unit"),
        ("1h75", "cannot read a duration"),
        ("1:5", "cannot read a duration"),
        ("1:75", "cannot read a duration"),
        ("-1h", "cannot read a duration"),
        ("1h 30", "unclear duration"),
        ("0h", "less than a minute"),
        ("0:00", "less than a minute"),
        ("0.001h", "less than a minute"),
        ("24h 1m", "more than 24 hours"),
        ("25h", "more than 24 hours"),
        ("1441 minutes", "more than 24 hours"),
        ("99999999999999999999999999999999999999h", "more than 24 hours"),
    ],
)
def test_work_time_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_work_time(text)


@given(st.integers(min_value=1, max_value=24 * 60))
def test_work_time_round_trips_whole_minutes(minutes: int) -> None:
    hours, rest = divmod(minutes, 60)
    assert parse_work_time(f"{minutes}m") == (minutes, "")
    assert parse_work_time(f"{hours}:{rest:02d} x") == (minutes, "x")
    if hours:
        assert parse_work_time(f"{hours}h {rest}m") == (minutes, "")


@pytest.mark.parametrize(("text", "value"), [("1", 1), ("3", 3), (" 5 ", 5)])
def test_priority(text: str, value: int) -> None:
    assert parse_priority(text) == value


@pytest.mark.parametrize("text", ["", "0", "6", "2.0", "high", "1 2", "\u0663", "+1"])
def test_priority_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"priority must be 1 \(highest\) to 5 \(lowest\)"):
        parse_priority(text)


@given(st.text())
def test_parse_staff_mail_never_raises(text: str) -> None:
    mail = parse_staff_mail(text)
    assert mail.text == text or text.endswith(mail.text)
    assert all(c.name in KNOWN_COMMANDS and c.name != "note" for c in mail.commands)
