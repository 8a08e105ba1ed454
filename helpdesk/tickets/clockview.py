"""SLA clocks in words, for mails and the command line: "response due in 02:14 business hours"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from helpdesk.core.sla import Clock, ClockName, ClockState

__all__ = ["ClockView", "hours_minutes", "local_time", "spoken", "view"]

LABELS = {
    ClockName.FIRST_RESPONSE: "first response",
    ClockName.NEXT_RESPONSE: "next response",
    ClockName.RESOLUTION: "resolution",
}


def hours_minutes(duration: timedelta) -> str:
    """``02:14`` (negative durations get a minus sign; seconds are cut, never rounded up)."""
    seconds = int(duration.total_seconds())
    sign = "-" if seconds < 0 else ""
    minutes = abs(seconds) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def spoken(duration: timedelta | None) -> str:
    """``14 days``, ``36 hours``, ``90 minutes``: a configured duration as a person would say it."""
    if duration is None:
        return "-"
    seconds = int(duration.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


def local_time(instant: datetime, timezone: str) -> str:
    return instant.astimezone(ZoneInfo(timezone)).strftime("%a %d %b %Y %H:%M %Z")


@dataclass(frozen=True)
class ClockView:
    name: str
    label: str
    state: str
    target: str
    elapsed: str
    remaining: str
    due: str | None
    summary: str  # one line for a mail or a terminal


def view(clock: Clock, timezone: str) -> ClockView:
    label = LABELS[clock.name]
    due = local_time(clock.due_at, timezone) if clock.due_at else None
    remaining = hours_minutes(clock.remaining)
    match clock.state:
        case ClockState.RUNNING:
            summary = f"{label} due in {remaining} business hours ({due})"
        case ClockState.PAUSED:
            summary = f"{label} paused with {remaining} business hours left (waiting for the customer)"
        case ClockState.BREACHED if clock.stopped_at is None:
            summary = f"{label} overdue by {hours_minutes(-clock.remaining)} business hours (was due {due})"
        case ClockState.BREACHED:
            summary = f"{label} met late, {hours_minutes(-clock.remaining)} business hours over target"
        case ClockState.MET:
            summary = f"{label} met with {remaining} business hours to spare"
        case _:
            summary = f"{label} stopped (done before it was due)"
    return ClockView(
        name=clock.name.value, label=label, state=clock.state.value, target=hours_minutes(clock.target),
        elapsed=hours_minutes(clock.elapsed), remaining=remaining, due=due, summary=summary,
    )
