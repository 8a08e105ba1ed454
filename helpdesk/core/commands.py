"""Commands in staff mail: ``#status pending``, ``#time 1.5h`` ... at the top of a reply, and @mentions.

Staff work tickets from their mail client. The first non-blank lines of their mail may be command
lines (``#`` and a word, then the arguments); the block ends at the first other non-blank line, and
only this block is read, so a ``#`` further down the text is never a command. A ``#`` tag such as
``#SUP-12`` is text, not a command. :func:`parse_staff_mail` splits the mail into the commands, the
remaining text, the ``@names`` mentioned in that text and readable errors; :func:`parse_work_time`
and :func:`parse_priority` read the arguments of ``#time`` and ``#priority``. Pure functions: no IO.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

KNOWN_COMMANDS = frozenset(
    {"status", "owner", "assignee", "priority", "time", "close", "note", "watch", "unwatch", "snooze"}
)
OPTIONAL_ARGUMENT = frozenset({"close", "note", "watch", "unwatch"})
MAX_WORK_MINUTES = 24 * 60

_COMMAND = re.compile(r"#([A-Za-z]+)(?:\s(.*))?", re.DOTALL)
_MENTION = re.compile(r"(?<![\w.+\-])@([A-Za-z0-9][A-Za-z0-9._-]*)")

_NUMBER = r"[0-9]+(?:[.,][0-9]+)?"
_HOURS = r"(?:hours?|hrs?|h)"
_MINUTES = r"(?:minutes?|mins?|m)"
_DURATION = re.compile(
    rf"""(?:
        (?P<clock_h>[0-9]+):(?P<clock_m>[0-5][0-9])
      | (?P<h>{_NUMBER})\s*{_HOURS}(?:\s*(?P<hm>{_NUMBER})\s*{_MINUTES}|(?P<hm_bare>[0-5][0-9]))?
      | (?P<m>{_NUMBER})\s*{_MINUTES}
    )(?![A-Za-z0-9])""",
    re.IGNORECASE | re.ASCII | re.VERBOSE,
)
_BARE_NUMBER = re.compile(rf"{_NUMBER}(?![A-Za-z0-9:])", re.ASCII)
_LEADING_NUMBER = re.compile(r"[0-9]+(?:\s|$)", re.ASCII)


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    line: str


@dataclass(frozen=True)
class StaffMail:
    commands: tuple[Command, ...]
    text: str
    note: bool
    errors: tuple[str, ...]
    mentions: tuple[str, ...]


def _decimal(number: str) -> Decimal:
    return Decimal(number.replace(",", "."))


def parse_work_time(text: str) -> tuple[int, str]:
    """The argument of ``#time`` -> (minutes, description): ``"1.5h remote support"`` -> ``(90, "remote support")``.

    Accepts hours (``1.5h``, ``1,5h``, ``2 h``, ``2 hours``), minutes (``90m``, ``90min``,
    ``45 minutes``), both (``1h30m``, ``1h 30m``, ``1h30``) and ``1:30``. Raises ValueError for a
    number without a unit, anything unreadable, and times that are not between 1 minute and 24 hours."""
    text = text.strip()
    if not text:
        raise ValueError("#time needs a duration, e.g. 1.5h or 90m")
    match = _DURATION.match(text)
    if match is None:
        if _BARE_NUMBER.match(text):
            raise ValueError("give a unit, e.g. 1.5h or 90m")
        raise ValueError(f"cannot read a duration in {text!r}: give e.g. 1.5h, 90m or 1:30")
    description = text[match.end() :].strip()
    if _LEADING_NUMBER.match(description):
        raise ValueError(f"unclear duration in {text!r}: write e.g. 1h30m")
    groups = match.groupdict()
    if groups["clock_h"] is not None:
        total = Decimal(groups["clock_h"]) * 60 + Decimal(groups["clock_m"])
    elif groups["h"] is not None:
        total = _decimal(groups["h"]) * 60
        extra = groups["hm"] or groups["hm_bare"]
        if extra is not None:
            total += _decimal(extra)
    else:
        total = _decimal(groups["m"])
    if total > MAX_WORK_MINUTES:
        raise ValueError(f"{match.group(0)} is more than 24 hours")
    minutes = int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
    if minutes <= 0:
        raise ValueError(f"{match.group(0)} is less than a minute")
    return minutes, description


def parse_priority(text: str) -> int:
    """The argument of ``#priority``: ``"1"`` (highest) to ``"5"`` (lowest)."""
    value = text.strip()
    if value not in {"1", "2", "3", "4", "5"}:
        raise ValueError("priority must be 1 (highest) to 5 (lowest)")
    return int(value)


SNOOZE_OFF = frozenset({"off", "none", "-"})
SNOOZE_MORNING = time(8, 0)  # a bare date means this local time on that day
_SNOOZE_FOR = re.compile(r"^(\d+)\s*(h|hours?|d|days?|w|weeks?)$", re.IGNORECASE)
_SNOOZE_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_snooze(text: str, now: datetime, timezone: str) -> datetime | None:
    """The argument of ``#snooze``: until when (UTC); None for ``off``.

    ``3d``, ``12h``, ``2w`` count from ``now``; ``2026-12-01`` means 08:00 local time that day and
    ``2026-12-01 14:30`` that local time, in ``timezone``. The moment must lie in the future."""
    value = text.strip()
    if value.lower() in SNOOZE_OFF:
        return None
    match = _SNOOZE_FOR.match(value)
    if match:
        until = now + int(match.group(1)) * _SNOOZE_UNITS[match.group(2)[0].lower()]
    else:
        try:
            local = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("use a duration (3d, 12h, 2w), a date (2026-12-01), a date and time, or off") from None
        if len(value) <= 10:
            local = datetime.combine(local.date(), SNOOZE_MORNING)
        until = local.replace(tzinfo=ZoneInfo(timezone)) if local.tzinfo is None else local
    if until <= now:
        raise ValueError(f"{value} is not in the future")
    return until.astimezone(ZoneInfo("UTC"))


def _check(name: str, args: str) -> str | None:
    """The error for a known command with these arguments, or None when they are fine."""
    if name not in OPTIONAL_ARGUMENT and not args:
        return f"#{name} needs a value"
    try:
        if name == "priority":
            parse_priority(args)
        elif name == "time":
            parse_work_time(args)
    except ValueError as exc:
        return f"#{name}: {exc}"
    return None


def _mentions(text: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for line in text.splitlines():
        if line.lstrip().startswith(">"):
            continue
        for match in _MENTION.finditer(line):
            name = match.group(1).rstrip("._-").lower()
            found.setdefault(name, None)
    return tuple(found)


def parse_staff_mail(text: str) -> StaffMail:
    """Split a staff member's mail into its leading command block, the remaining text and @mentions.

    ``#note`` sets ``note`` instead of being listed; unknown commands and known commands with a
    missing or invalid argument are reported in ``errors`` and left out of ``commands``. The command
    block (and the blank lines that follow it) is removed from ``text``."""
    lines = text.splitlines(keepends=True)
    commands: list[Command] = []
    errors: list[str] = []
    note = False
    seen_command = False
    end = 0
    for index, line in enumerate(lines):
        content = line.splitlines()[0]
        if not content.strip():
            end = index + 1
            continue
        match = _COMMAND.fullmatch(content.strip())
        if match is None:
            end = index
            break
        seen_command = True
        end = index + 1
        word, args = match.group(1), (match.group(2) or "").strip()
        name = word.lower()
        if name not in KNOWN_COMMANDS:
            errors.append(f"unknown command #{word}")
        elif name == "note":
            note = True
        elif (error := _check(name, args)) is not None:
            errors.append(error)
        else:
            commands.append(Command(name=name, args=args, line=content))
    rest = "".join(lines[end:]) if seen_command else text
    return StaffMail(commands=tuple(commands), text=rest, note=note, errors=tuple(errors), mentions=_mentions(rest))
