"""Business time over a calendar of opening hours, time zone and holidays.

SLA clocks ("respond within 4 working hours") only run while the service desk is open.
A :class:`BusinessCalendar` knows the opening hours of every weekday as local wall-clock
intervals in an IANA time zone, plus the local dates that are closed all day (holidays).
It answers whether an instant is within business hours, how much business time lies
between two instants, when a given amount of business time has elapsed after a start,
and when business hours next begin.

Everything is pure: there is no clock here, every instant is an argument, and every
instant must be timezone-aware. Results are UTC-aware datetimes.

Local wall-clock intervals become real instants through :mod:`zoneinfo`: the start and
end of an interval on a given day are combined with that day and the zone, and durations
are real elapsed time between those instants. On the day clocks spring forward an
interval spanning the gap is an hour shorter, on the day they fall back an interval
spanning the repeated hour is an hour longer. Local times are resolved with ``fold=0``:
an ambiguous time (repeated on fall-back) means its first occurrence, and a nonexistent
time (skipped on spring-forward) is read with the offset before the transition, which
lands as far after the gap as it was into it (02:30 on a day that jumps from 02:00 to
03:00 means 03:30). An interval with both ends in the gap thus still opens after the
gap; an interval whose end resolves no later than its start is empty that day; intervals
that come to overlap are merged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from types import MappingProxyType
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_package

__all__ = ["DAY_NAMES", "BusinessCalendar"]

DAY_NAMES: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAY_NAMES: tuple[str, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_HOLIDAY_YEARS: range = range(2020, 2036)

Interval = tuple[time, time]

_DAY = timedelta(days=1)
# Every UTC offset in use lies within ±26 hours of local wall-clock time.
_MAX_OFFSET = timedelta(hours=26)
# Without a fixed end, searching stops after this many closed days past the last holiday.
_MAX_CLOSED_RUN = 14
# Local days this far from the ends of the datetime range are not searched, so arithmetic cannot overflow.
_FIRST_DAY = date.min + 3 * _DAY
_LAST_DAY = date.max - 3 * _DAY
_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def _load_zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _end_seconds(t: time) -> int:
    """Seconds since midnight of an interval end; ``time(0)`` is midnight at the end of the day."""
    seconds = _start_seconds(t)
    return 86400 if seconds == 0 else seconds


def _start_seconds(t: time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


def _fmt(t: time, *, end: bool = False) -> str:
    if end and t == time(0):
        return "24:00"
    text = f"{t.hour:02d}:{t.minute:02d}"
    if t.second or t.microsecond:
        text += f":{t.second:02d}"
    if t.microsecond:
        text += f".{t.microsecond:06d}"
    return text


def _fmt_interval(interval: Interval) -> str:
    return f"{_fmt(interval[0])}-{_fmt(interval[1], end=True)}"


def require_aware(instant: datetime, name: str) -> datetime:
    if not isinstance(instant, datetime):
        raise TypeError(f"{name} must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {instant.isoformat()}")
    return instant.astimezone(UTC)


def _normalise_hours(hours: Mapping[int, Iterable[Interval]]) -> dict[int, tuple[Interval, ...]]:
    if not isinstance(hours, Mapping):
        raise ValueError(f"hours must be a mapping of weekday to intervals, not {type(hours).__name__}")
    result: dict[int, tuple[Interval, ...]] = {}
    for weekday, intervals in hours.items():
        if isinstance(weekday, bool) or not isinstance(weekday, int) or not 0 <= weekday <= 6:
            raise ValueError(f"hours[{weekday!r}]: weekday must be an int 0 (Monday) .. 6 (Sunday)")
        checked: list[Interval] = []
        for interval in intervals:
            if not isinstance(interval, tuple) or len(interval) != 2 or not all(isinstance(t, time) for t in interval):
                raise ValueError(f"hours[{weekday}]: interval {interval!r} is not a (start, end) pair of times")
            start, end = interval
            if start.tzinfo is not None or end.tzinfo is not None:
                raise ValueError(f"hours[{weekday}]: interval {_fmt_interval(interval)} must use naive local times")
            if start.microsecond or end.microsecond:
                raise ValueError(f"hours[{weekday}]: interval {_fmt_interval(interval)} has sub-second precision")
            if _start_seconds(start) >= _end_seconds(end):
                raise ValueError(f"hours[{weekday}]: interval {_fmt_interval(interval)} is empty or reversed")
            checked.append((start, end))
        checked.sort(key=lambda iv: _start_seconds(iv[0]))
        for before, after in pairwise(checked):
            if _start_seconds(after[0]) < _end_seconds(before[1]):
                raise ValueError(
                    f"hours[{weekday}]: intervals {_fmt_interval(before)} and {_fmt_interval(after)} overlap"
                )
        if checked:
            result[weekday] = tuple(checked)
    return dict(sorted(result.items()))


def _parse_day(key: str, name: str) -> int:
    token = name.strip().lower()
    if token in DAY_NAMES:
        return DAY_NAMES.index(token)
    if token in _FULL_DAY_NAMES:
        return _FULL_DAY_NAMES.index(token)
    raise ValueError(f"hours[{key!r}]: unknown day {name.strip()!r}")


def _parse_days(key: str) -> list[int]:
    if not isinstance(key, str) or not key.strip():
        raise ValueError(f"hours[{key!r}]: expected day names like 'mon', 'mon-fri' or 'sat, sun'")
    days: list[int] = []
    for part in key.split(","):
        if not part.strip():
            raise ValueError(f"hours[{key!r}]: empty day name")
        if "-" in part:
            first_name, _, last_name = part.partition("-")
            first, last = _parse_day(key, first_name), _parse_day(key, last_name)
            span = (last - first) % 7
            days.extend((first + i) % 7 for i in range(span + 1))
        else:
            days.append(_parse_day(key, part))
    return days


def _parse_time(key: str, text: str, *, end: bool) -> time:
    match = _TIME_RE.match(text.strip())
    if match is None:
        raise ValueError(f"hours[{key!r}]: bad time {text.strip()!r} (expected HH:MM)")
    hour, minute = int(match[1]), int(match[2])
    if end and hour == 24 and minute == 0:
        return time(0)
    if hour > 23 or minute > 59:
        allowed = "00:00..24:00" if end else "00:00..23:59"
        raise ValueError(f"hours[{key!r}]: bad time {text.strip()!r} (must be {allowed})")
    return time(hour, minute)


def _parse_intervals(key: str, value: str | list[str]) -> list[Interval]:
    if isinstance(value, str):
        parts = [value]
    elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        parts = list(value)
    else:
        raise ValueError(f"hours[{key!r}]: expected a string like '08:00-17:00' or a list of them")
    intervals: list[Interval] = []
    for part in parts:
        for chunk in part.split(","):
            text = chunk.strip()
            if not text or text.lower() == "closed":
                continue
            start_text, sep, end_text = text.partition("-")
            if not sep:
                raise ValueError(f"hours[{key!r}]: bad interval {text!r} (expected HH:MM-HH:MM)")
            start = _parse_time(key, start_text, end=False)
            end = _parse_time(key, end_text, end=True)
            if _start_seconds(start) >= _end_seconds(end):
                raise ValueError(f"hours[{key!r}]: interval {text!r} is empty or reversed")
            intervals.append((start, end))
    return intervals


def _country_holidays(country: str, subdivision: str | None, years: list[int]) -> set[date]:
    code = country.strip().upper()
    supported = holidays_package.list_supported_countries()
    if code not in supported:
        raise ValueError(f"unknown country {country!r}")
    if subdivision is not None and subdivision not in supported[code]:
        known = ", ".join(supported[code]) or "none"
        raise ValueError(f"unknown subdivision {subdivision!r} for country {code!r} (known: {known})")
    try:
        table = holidays_package.country_holidays(code, subdiv=subdivision, years=years)
    except NotImplementedError as exc:
        raise ValueError(f"unknown country or subdivision {country!r}/{subdivision!r}: {exc}") from None
    return set(table.keys())


@dataclass(frozen=True)
class BusinessCalendar:
    """Opening hours per weekday in a time zone, with holidays closed all day.

    ``hours`` maps a weekday (0 = Monday) to non-overlapping intervals of local wall-clock
    time; an end of ``time(0)`` means midnight at the end of the day (24:00).
    """

    timezone: str
    hours: Mapping[int, tuple[Interval, ...]] = field(hash=False)
    holidays: frozenset[date] = frozenset()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_zone", _load_zone(self.timezone))
        object.__setattr__(self, "hours", MappingProxyType(_normalise_hours(self.hours)))
        days = frozenset(self.holidays)
        for day in days:
            if isinstance(day, datetime) or not isinstance(day, date):
                raise ValueError(f"holidays: expected dates, got {day!r}")
        object.__setattr__(self, "holidays", days)

    @classmethod
    def build(
        cls,
        timezone: str,
        hours: Mapping[str, str | list[str]],
        *,
        country: str | None = None,
        subdivision: str | None = None,
        extra_holidays: Iterable[date] = (),
        years: Iterable[int] = (),
    ) -> BusinessCalendar:
        """Build a calendar from readable opening hours and a country's public holidays.

        ``hours`` looks like ``{"mon-fri": "08:00-12:00, 13:00-17:00", "sat": ["09:00-12:00"]}``.
        Public holidays of ``country`` (and ``subdivision``) are taken for ``years``
        (2020..2035 when none are given), plus ``extra_holidays``.
        """
        _load_zone(timezone)
        if not isinstance(hours, Mapping):
            raise ValueError(f"hours must be a mapping of day names to intervals, not {type(hours).__name__}")
        per_day: dict[int, list[Interval]] = {}
        given_by: dict[int, str] = {}
        for key, value in hours.items():
            days = _parse_days(key)
            intervals = _parse_intervals(key, value)
            for day in days:
                if day in given_by:
                    raise ValueError(
                        f"hours[{key!r}]: day {DAY_NAMES[day]!r} already given by hours[{given_by[day]!r}]"
                    )
                given_by[day] = key
                per_day[day] = list(intervals)
        for day, intervals in per_day.items():
            intervals.sort(key=lambda iv: _start_seconds(iv[0]))
            for before, after in pairwise(intervals):
                if _start_seconds(after[0]) < _end_seconds(before[1]):
                    raise ValueError(
                        f"hours[{given_by[day]!r}]: intervals {_fmt_interval(before)} and "
                        f"{_fmt_interval(after)} overlap"
                    )
        closed: set[date] = set()
        if country is not None:
            year_list = sorted(set(years)) or list(DEFAULT_HOLIDAY_YEARS)
            closed |= _country_holidays(country, subdivision, year_list)
        elif subdivision is not None:
            raise ValueError(f"subdivision {subdivision!r} given without a country")
        for extra in extra_holidays:
            if isinstance(extra, datetime) or not isinstance(extra, date):
                raise ValueError(f"extra_holidays: expected dates, got {extra!r}")
            closed.add(extra)
        return cls(
            timezone=timezone,
            hours={day: tuple(intervals) for day, intervals in per_day.items()},
            holidays=frozenset(closed),
        )

    # -- queries -----------------------------------------------------------------------

    def is_open(self, instant: datetime) -> bool:
        """Whether ``instant`` lies within business hours (intervals are half-open)."""
        moment = require_aware(instant, "instant")
        return any(start <= moment < end for start, end in self._intervals(moment, until=moment))

    def business_time(self, start: datetime, end: datetime) -> timedelta:
        """Business time between two aware instants; zero if ``end`` is not after ``start``."""
        begin = require_aware(start, "start")
        finish = require_aware(end, "end")
        total = timedelta(0)
        if finish <= begin:
            return total
        for open_at, close_at in self._intervals(begin, until=finish):
            if open_at >= finish:
                break
            total += min(close_at, finish) - max(open_at, begin)
        return total

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The UTC instant when ``duration`` of business time has elapsed after ``start``.

        Counting begins at ``start`` if open, else at the next opening; a zero duration
        returns that moment. Raises ``ValueError`` for a negative duration or if the
        calendar never opens again.
        """
        begin = require_aware(start, "start")
        if not isinstance(duration, timedelta):
            raise TypeError(f"duration must be a timedelta, not {type(duration).__name__}")
        if duration < timedelta(0):
            raise ValueError(f"duration must not be negative, got {duration}")
        remaining = duration
        for open_at, close_at in self._intervals(begin, until=None):
            counted_from = max(open_at, begin)
            if remaining == timedelta(0):
                return counted_from
            available = close_at - counted_from
            if remaining <= available:
                return counted_from + remaining
            remaining -= available
        raise AssertionError("unreachable: unbounded interval search ended")  # pragma: no cover

    def next_opening(self, instant: datetime) -> datetime:
        """``instant`` itself (in UTC) if open, else the next moment business hours begin."""
        return self.add(instant, timedelta(0))

    # -- internals ---------------------------------------------------------------------

    def _day_intervals(self, day: date) -> list[tuple[datetime, datetime]]:
        """Real UTC intervals of one local day, possibly empty or overlapping around DST gaps."""
        if day in self.holidays:
            return []
        result: list[tuple[datetime, datetime]] = []
        for start, end in self.hours.get(day.weekday(), ()):
            open_at = datetime.combine(day, start, tzinfo=self._zone).astimezone(UTC)
            end_day = day + _DAY if end == time(0) else day
            close_at = datetime.combine(end_day, end, tzinfo=self._zone).astimezone(UTC)
            if close_at > open_at:
                result.append((open_at, close_at))
        return result

    def _intervals(self, after: datetime, *, until: datetime | None) -> Iterator[tuple[datetime, datetime]]:
        """Disjoint, ascending UTC open intervals (possibly touching) that end after ``after``.

        Stops once intervals start after ``until``; with ``until=None`` it runs until the
        calling code stops, and raises ``ValueError`` if the calendar never opens again.
        """
        if not self.hours:
            if until is None:
                raise ValueError("the calendar has no business hours at all")
            return
        # Local days whose intervals can reach past ``after`` start at most a day or so before it in UTC.
        day = max(after.date() - 2 * _DAY, _FIRST_DAY)
        last_day = None if until is None else min(until.date() + 2 * _DAY, _LAST_DAY)
        last_holiday = max(self.holidays, default=date.min)
        pending: list[tuple[datetime, datetime]] = []
        closed_run = 0
        while True:
            if last_day is not None and day > last_day:
                yield from (iv for iv in _merge(pending) if iv[1] > after)
                return
            found = self._day_intervals(day)
            if found:
                closed_run = 0
                pending.extend(found)
            elif until is None and day > last_holiday:
                closed_run += 1
                if closed_run > _MAX_CLOSED_RUN:
                    if pending:
                        yield from (iv for iv in _merge(pending) if iv[1] > after)
                    raise ValueError(f"the calendar has no business hours after {day - _MAX_CLOSED_RUN * _DAY}")
            # Instants of later local days all resolve at or after this bound, so everything
            # before it is final; an interval reaching past it is yielded in two touching parts.
            bound = datetime.combine(day, time(0), tzinfo=UTC) + _DAY - _MAX_OFFSET
            merged = _merge(pending)
            pending = []
            for open_at, close_at in merged:
                if open_at >= bound:
                    pending.append((open_at, close_at))
                    continue
                if min(close_at, bound) > after:
                    yield open_at, min(close_at, bound)
                if close_at > bound:
                    pending.append((bound, close_at))
            if day >= _LAST_DAY:
                yield from (iv for iv in pending if iv[1] > after)
                if until is None:
                    raise ValueError(f"the calendar has no business hours before {_LAST_DAY}")
                return
            day += _DAY


def _merge(intervals: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged
