"""SLA clocks over business hours: first response, next response and resolution.

A ticket is created at ``created_at`` and has a history of :class:`Event` s: status changes,
customer messages and staff replies. Status changes move the *responsibility*: it is ours
(``us``) from ``created_at`` on, and each status event sets it (``us``, ``customer`` or ``done``)
from its instant on.

Every clock has a window that starts at an instant and may stop:

* first response starts at creation and stops at the first reply;
* next response runs in cycles: a customer message after a reply opens a cycle and the next
  reply stops it; only the latest cycle is reported;
* resolution starts at creation and stops when the ticket is done; a reopened ticket keeps
  the business time counted before and goes on counting.

A clock is *active* in the parts of its window where the responsibility is ours, and only there
does business time accrue (as measured by :class:`~helpdesk.core.calendar.BusinessCalendar`):
waiting for the customer or a done ticket pauses it, while nights, weekends and holidays accrue
nothing but do not pause it. The clock is due when the accrued time reaches the target; while it
is active at ``now`` that instant is projected assuming nothing changes. A clock stopped by a
reply (or a resolution stopped by ``done``) is met or breached by the time it accrued; a response
clock whose ticket became done unanswered is merely stopped, unless it had already breached.

Pure: no IO and no clock of its own. ``now`` is an argument and events after it are ignored;
events before ``created_at`` count as at ``created_at``, and events at the same instant apply in
the order given. Every instant must be timezone-aware and every result is UTC.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from helpdesk.core.calendar import BusinessCalendar, require_aware

__all__ = [
    "Clock",
    "ClockName",
    "ClockState",
    "Event",
    "EventKind",
    "Responsibility",
    "Targets",
    "Warning",
    "compute",
    "responsibility_at",
]

_ZERO = timedelta(0)


class Responsibility(StrEnum):
    """Who has to act next on a ticket."""

    US = "us"
    CUSTOMER = "customer"
    DONE = "done"


class ClockName(StrEnum):
    FIRST_RESPONSE = "first_response"
    NEXT_RESPONSE = "next_response"
    RESOLUTION = "resolution"


class ClockState(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    MET = "met"
    BREACHED = "breached"
    STOPPED = "stopped"


class EventKind(StrEnum):
    STATUS = "status"
    CUSTOMER_MESSAGE = "customer_message"
    REPLY = "reply"




@dataclass(frozen=True)
class Targets:
    """Business time allowed per clock; ``None`` means the clock is not tracked."""

    first_response: timedelta | None = None
    next_response: timedelta | None = None
    resolution: timedelta | None = None

    def __post_init__(self) -> None:
        for name in ClockName:
            target = self.get(name)
            if target is not None and (not isinstance(target, timedelta) or target < _ZERO):
                raise ValueError(f"target {name}: expected a non-negative timedelta, got {target!r}")

    def get(self, name: ClockName) -> timedelta | None:
        match name:
            case ClockName.FIRST_RESPONSE:
                return self.first_response
            case ClockName.NEXT_RESPONSE:
                return self.next_response
            case ClockName.RESOLUTION:
                return self.resolution


@dataclass(frozen=True)
class Warning:
    """When to warn before a due instant: after a ``share`` of the target, or ``before`` it.

    Named for the SLA vocabulary; it shadows the builtin ``Warning`` only where imported by name.
    """

    share: float | None = None
    before: timedelta | None = None

    def __post_init__(self) -> None:
        if (self.share is None) == (self.before is None):
            raise ValueError("a warning needs exactly one of share and before")
        if self.share is not None and (
            isinstance(self.share, bool)
            or not isinstance(self.share, int | float)
            or not math.isfinite(self.share)
            or not 0 < self.share < 1
        ):
            raise ValueError(f"warning share must be a number between 0 and 1 (exclusive), got {self.share!r}")
        if self.before is not None and (not isinstance(self.before, timedelta) or self.before < _ZERO):
            raise ValueError(f"warning before must be a non-negative timedelta, got {self.before!r}")

    def threshold(self, target: timedelta) -> timedelta:
        """Business time elapsed at which to warn for ``target``."""
        if self.share is not None:
            return target * self.share
        assert self.before is not None  # guaranteed by __post_init__
        return max(_ZERO, target - self.before)


@dataclass(frozen=True)
class Event:
    """Something that happened to a ticket; status events carry the new responsibility."""

    at: datetime
    kind: EventKind
    responsibility: Responsibility | None = None

    def __post_init__(self) -> None:
        require_aware(self.at, "event time")
        object.__setattr__(self, "kind", EventKind(self.kind))
        if self.responsibility is not None:
            object.__setattr__(self, "responsibility", Responsibility(self.responsibility))
        if self.kind is EventKind.STATUS and self.responsibility is None:
            raise ValueError("a status event needs a responsibility")
        if self.kind is not EventKind.STATUS and self.responsibility is not None:
            raise ValueError(f"a {self.kind} event carries no responsibility")


@dataclass(frozen=True)
class Clock:
    """One SLA clock as seen at ``now``; all instants are UTC."""

    name: ClockName
    state: ClockState
    target: timedelta
    started_at: datetime
    elapsed: timedelta
    remaining: timedelta
    due_at: datetime | None
    warn_at: datetime | None
    stopped_at: datetime | None

    @property
    def counting(self) -> bool:
        return self.state is ClockState.RUNNING


# -- internals --------------------------------------------------------------------------

# A responsibility from an instant on; consecutive segments differ and start strictly later.
_Segment = tuple[datetime, Responsibility]
# An active part of a clock: start, end (``None``: open-ended, continues past now), business time accrued in it.
_Piece = tuple[datetime, datetime | None, timedelta]


@dataclass(frozen=True)
class _Window:
    start: datetime
    stop: datetime | None = None
    # Whether the stop settles the clock as met or breached (a reply; done for resolution).
    final: bool = False


def _normalise(created_at: datetime, events: Iterable[Event], now: datetime) -> list[Event]:
    """Events up to ``now`` in UTC, none before ``created_at``, sorted stably by instant."""
    result: list[Event] = []
    for event in events:
        if not isinstance(event, Event):
            raise TypeError(f"expected an Event, not {type(event).__name__}")
        at = max(event.at.astimezone(UTC), created_at)
        if at <= now:
            result.append(Event(at, event.kind, event.responsibility))
    result.sort(key=lambda event: event.at)
    return result


def _timeline(created_at: datetime, events: Iterable[Event]) -> list[_Segment]:
    segments: list[_Segment] = [(created_at, Responsibility.US)]
    for event in events:
        if event.responsibility is None:
            continue
        if segments and segments[-1][0] == event.at:
            segments.pop()  # superseded at the same instant
        if not segments or segments[-1][1] is not event.responsibility:
            segments.append((event.at, event.responsibility))
    return segments


def _ours(timeline: list[_Segment]) -> list[tuple[datetime, datetime | None]]:
    ends: list[datetime | None] = [start for start, _ in timeline[1:]]
    ends.append(None)
    return [(start, end) for (start, who), end in zip(timeline, ends, strict=True) if who is Responsibility.US]


def _first_response(created_at: datetime, events: Iterable[Event]) -> _Window:
    reply = next((event.at for event in events if event.kind is EventKind.REPLY), None)
    return _Window(created_at, reply, final=reply is not None)


def _next_response(events: Iterable[Event]) -> _Window | None:
    replied = False
    opened: datetime | None = None
    latest: _Window | None = None
    for event in events:
        if event.kind is EventKind.REPLY:
            replied = True
            if opened is not None:
                latest, opened = _Window(opened, event.at, final=True), None
        elif event.kind is EventKind.CUSTOMER_MESSAGE and replied and opened is None:
            opened = event.at
    return _Window(opened) if opened is not None else latest


def _done_stop(window: _Window, done_since: datetime | None) -> _Window:
    """A response clock still open when the ticket is done stops then: nothing more is owed."""
    if window.stop is not None or done_since is None:
        return window
    return _Window(window.start, max(done_since, window.start), final=False)


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    """The earlier of two ends, where ``None`` is unbounded."""
    if a is None or b is None:
        return b if a is None else a
    return min(a, b)


def _pieces(
    calendar: BusinessCalendar, ours: list[tuple[datetime, datetime | None]], window: _Window, now: datetime
) -> list[_Piece]:
    pieces: list[_Piece] = []
    for start, end in ours:
        low = max(start, window.start)
        high = _earliest(end, window.stop)
        if high is not None and high <= low:
            continue
        pieces.append((low, high, calendar.business_time(low, now if high is None else high)))
    return pieces


def _reach(calendar: BusinessCalendar, pieces: list[_Piece], target: timedelta) -> datetime | None:
    """When the accrued business time reaches ``target``, or ``None`` if it does not within the pieces."""
    needed = target
    for start, end, accrued in pieces:
        if end is None:
            try:
                return calendar.add(start, needed)
            except ValueError:  # the calendar never opens again
                return None
        # A zero need is reached at the first opening, which must lie within the piece.
        if accrued > needed or (accrued == needed and needed > _ZERO):
            return calendar.add(start, needed)
        needed -= accrued
    return None


def _state(
    window: _Window, target: timedelta, elapsed: timedelta, due_at: datetime | None, now: datetime, *, active: bool
) -> ClockState:
    if window.stop is not None and window.final:
        return ClockState.MET if elapsed <= target else ClockState.BREACHED
    if due_at is not None and due_at <= now:
        return ClockState.BREACHED
    if window.stop is not None:
        return ClockState.STOPPED
    return ClockState.RUNNING if active else ClockState.PAUSED


def _clock(
    name: ClockName,
    target: timedelta,
    window: _Window,
    calendar: BusinessCalendar,
    ours: list[tuple[datetime, datetime | None]],
    now: datetime,
    warning: Warning | None,
) -> Clock:
    pieces = _pieces(calendar, ours, window, now)
    elapsed = sum((accrued for _, _, accrued in pieces), _ZERO)
    due_at = _reach(calendar, pieces, target)
    warn_at = None if warning is None else _reach(calendar, pieces, warning.threshold(target))
    active = bool(pieces) and pieces[-1][1] is None
    return Clock(
        name=name,
        state=_state(window, target, elapsed, due_at, now, active=active),
        target=target,
        started_at=window.start,
        elapsed=elapsed,
        remaining=target - elapsed,
        due_at=due_at,
        warn_at=warn_at,
        stopped_at=window.stop,
    )


# -- public -----------------------------------------------------------------------------


def responsibility_at(created_at: datetime, events: Sequence[Event], instant: datetime) -> Responsibility:
    """Who is responsible at ``instant``: us from ``created_at``, then as the last status event up to it says.

    An ``instant`` before ``created_at`` is read as ``created_at``.
    """
    created = require_aware(created_at, "created_at")
    moment = max(require_aware(instant, "instant"), created)
    return _timeline(created, _normalise(created, events, moment))[-1][1]


def compute(
    targets: Targets,
    calendar: BusinessCalendar,
    created_at: datetime,
    events: Sequence[Event],
    now: datetime,
    warning: Warning | None = None,
) -> list[Clock]:
    """The ticket's SLA clocks at ``now``: first response, next response, resolution (those that apply).

    A ``now`` before ``created_at`` (clock skew) is read as ``created_at``.
    """
    created = require_aware(created_at, "created_at")
    moment = max(require_aware(now, "now"), created)
    history = _normalise(created, events, moment)
    timeline = _timeline(created, history)
    ours = _ours(timeline)
    done_since = timeline[-1][0] if timeline[-1][1] is Responsibility.DONE else None

    windows: dict[ClockName, _Window | None] = {
        ClockName.FIRST_RESPONSE: _done_stop(_first_response(created, history), done_since),
        ClockName.NEXT_RESPONSE: None,
        ClockName.RESOLUTION: _Window(created, done_since, final=True) if done_since is not None else _Window(created),
    }
    cycle = _next_response(history)
    if cycle is not None:
        windows[ClockName.NEXT_RESPONSE] = _done_stop(cycle, done_since)

    clocks: list[Clock] = []
    for name, window in windows.items():
        target = targets.get(name)
        if target is not None and window is not None:
            clocks.append(_clock(name, target, window, calendar, ours, moment, warning))
    return clocks
