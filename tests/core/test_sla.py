"""SLA clocks over business hours: pauses, replies, cycles, done tickets, time zones and DST."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk.core.calendar import BusinessCalendar
from helpdesk.core.sla import (
    Clock,
    ClockName,
    ClockState,
    Event,
    EventKind,
    Responsibility,
    Targets,
    compute,
    responsibility_at,
)
from helpdesk.core.sla import Warning as SlaWarning

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
SYDNEY = ZoneInfo("Australia/Sydney")

H = timedelta(hours=1)
M = timedelta(minutes=1)
MICRO = timedelta(microseconds=1)

FIRST = ClockName.FIRST_RESPONSE
NEXT = ClockName.NEXT_RESPONSE
RESOLUTION = ClockName.RESOLUTION


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def berlin_office() -> BusinessCalendar:
    return BusinessCalendar.build(
        "Europe/Berlin", {"mon-fri": "08:00-17:00"}, country="DE", subdivision="BE", years=[2024, 2025]
    )


def status(at: datetime, who: Responsibility) -> Event:
    return Event(at, EventKind.STATUS, who)


def reply(at: datetime) -> Event:
    return Event(at, EventKind.REPLY)


def message(at: datetime) -> Event:
    return Event(at, EventKind.CUSTOMER_MESSAGE)


def clocks_by_name(clocks: list[Clock]) -> dict[ClockName, Clock]:
    return {clock.name: clock for clock in clocks}


def one(
    name: ClockName,
    target: timedelta,
    cal: BusinessCalendar,
    created_at: datetime,
    events: list[Event],
    now: datetime,
    warning: SlaWarning | None = None,
) -> Clock:
    targets = Targets(**{name.value: target})
    clocks = compute(targets, cal, created_at, events, now, warning)
    assert [clock.name for clock in clocks] == [name]
    return clocks[0]


# A Monday in June 2024 without holidays in Berlin.
MON = (2024, 6, 3)
TUE = (2024, 6, 4)
WED = (2024, 6, 5)


# -- Easter 2024 in Berlin: Good Friday evening, spring-forward on Sunday, Easter Monday ----


def test_friday_evening_good_friday_dst_and_easter_monday() -> None:
    cal = berlin_office()
    created = local(BERLIN, 2024, 3, 29, 18)  # Good Friday, CET (UTC+1)
    targets = Targets(first_response=4 * H, resolution=16 * H)

    saturday = clocks_by_name(compute(targets, cal, created, [], local(BERLIN, 2024, 3, 30, 12)))
    first = saturday[FIRST]
    assert first.state is ClockState.RUNNING
    assert first.counting
    assert first.elapsed == timedelta(0)
    assert first.remaining == 4 * H
    assert first.started_at == datetime(2024, 3, 29, 17, tzinfo=UTC)
    # Tuesday 12:00 CEST (UTC+2): the clocks sprang forward on Sunday, Easter Monday is closed.
    assert first.due_at == local(BERLIN, 2024, 4, 2, 12) == datetime(2024, 4, 2, 10, tzinfo=UTC)
    assert first.due_at is not None and first.due_at.tzinfo is UTC
    assert first.warn_at is None
    assert first.stopped_at is None
    # Tuesday 9 hours, Wednesday 7 hours.
    assert saturday[RESOLUTION].due_at == local(BERLIN, 2024, 4, 3, 15) == datetime(2024, 4, 3, 13, tzinfo=UTC)

    easter_monday = one(FIRST, 4 * H, cal, created, [], local(BERLIN, 2024, 4, 1, 12))
    assert easter_monday.state is ClockState.RUNNING
    assert easter_monday.elapsed == timedelta(0)

    tuesday = clocks_by_name(compute(targets, cal, created, [], local(BERLIN, 2024, 4, 2, 11)))
    assert tuesday[FIRST].elapsed == 3 * H
    assert tuesday[FIRST].remaining == H
    assert tuesday[FIRST].state is ClockState.RUNNING
    assert tuesday[RESOLUTION].elapsed == 3 * H

    late = clocks_by_name(compute(targets, cal, created, [], local(BERLIN, 2024, 4, 2, 12, 30)))
    assert late[FIRST].state is ClockState.BREACHED
    assert not late[FIRST].counting
    assert late[FIRST].elapsed == 4.5 * H
    assert late[FIRST].remaining == -30 * M
    assert late[FIRST].due_at == datetime(2024, 4, 2, 10, tzinfo=UTC)
    assert late[RESOLUTION].state is ClockState.RUNNING

    exactly_due = one(FIRST, 4 * H, cal, created, [], local(BERLIN, 2024, 4, 2, 12))
    assert exactly_due.state is ClockState.BREACHED
    assert exactly_due.elapsed == 4 * H
    assert one(FIRST, 4 * H, cal, created, [], local(BERLIN, 2024, 4, 2, 12) - MICRO).state is ClockState.RUNNING


def test_fall_back_adds_a_real_hour_on_a_calendar_open_around_the_clock() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-sun": "00:00-24:00"})
    created = local(BERLIN, 2024, 10, 26, 12)  # Saturday, CEST; clocks fall back on Sunday 03:00
    clock = one(RESOLUTION, 24 * H, cal, created, [], local(BERLIN, 2024, 10, 26, 13))
    assert clock.due_at == local(BERLIN, 2024, 10, 27, 11) == datetime(2024, 10, 27, 10, tzinfo=UTC)
    assert clock.due_at is not None
    assert clock.due_at - created == 24 * H
    wall_clock = clock.due_at.astimezone(BERLIN).replace(tzinfo=None) - created.replace(tzinfo=None)
    assert wall_clock == 23 * H

    noon = one(RESOLUTION, 24 * H, cal, created, [], local(BERLIN, 2024, 10, 27, 12))
    assert noon.elapsed == 25 * H  # a 25-hour day between the two noons
    assert noon.state is ClockState.BREACHED


def test_fall_back_inside_opening_hours() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"sun": "00:00-06:00"})
    created = local(BERLIN, 2024, 10, 26, 20)
    clock = one(FIRST, 6 * H, cal, created, [], local(BERLIN, 2024, 10, 26, 21))
    # Sunday opens at 00:00 CEST (22:00 UTC); six real hours later it is 05:00 CET.
    assert clock.due_at == local(BERLIN, 2024, 10, 27, 5) == datetime(2024, 10, 27, 4, tzinfo=UTC)
    after = one(FIRST, 6 * H, cal, created, [], local(BERLIN, 2024, 10, 27, 7))
    assert after.elapsed == 7 * H  # 00:00-06:00 local that night is seven real hours
    assert after.state is ClockState.BREACHED


# -- time zones -------------------------------------------------------------------------


def test_new_york_across_spring_forward_and_fall_back() -> None:
    cal = BusinessCalendar.build("America/New_York", {"mon-fri": "09:00-17:00"}, country="US", years=[2024])
    created = local(NEW_YORK, 2024, 3, 8, 15)  # Friday, EST (UTC-5)
    clock = one(FIRST, 4 * H, cal, created, [], local(NEW_YORK, 2024, 3, 9, 12))
    assert clock.started_at == datetime(2024, 3, 8, 20, tzinfo=UTC)
    assert clock.elapsed == 2 * H
    assert clock.due_at == local(NEW_YORK, 2024, 3, 11, 11) == datetime(2024, 3, 11, 15, tzinfo=UTC)

    created = local(NEW_YORK, 2024, 11, 1, 16)  # Friday, EDT (UTC-4)
    clock = one(FIRST, 2 * H, cal, created, [], local(NEW_YORK, 2024, 11, 2, 12))
    assert clock.due_at == local(NEW_YORK, 2024, 11, 4, 10) == datetime(2024, 11, 4, 15, tzinfo=UTC)
    assert clock.state is ClockState.RUNNING


def test_tokyo_golden_week() -> None:
    cal = BusinessCalendar.build("Asia/Tokyo", {"mon-fri": "09:00-18:00"}, country="JP", years=[2024])
    created = local(TOKYO, 2024, 5, 2, 17)  # Thursday; Friday 3 May and Monday 6 May are holidays
    clock = one(RESOLUTION, 4 * H, cal, created, [], local(TOKYO, 2024, 5, 6, 12))
    assert clock.elapsed == H
    assert clock.state is ClockState.RUNNING
    assert clock.due_at == local(TOKYO, 2024, 5, 7, 12) == datetime(2024, 5, 7, 3, tzinfo=UTC)


def test_sydney_across_both_dst_changes() -> None:
    cal = BusinessCalendar.build(
        "Australia/Sydney", {"mon-fri": "09:00-17:00"}, country="AU", subdivision="NSW", years=[2024]
    )
    created = local(SYDNEY, 2024, 10, 4, 16)  # Friday, AEST (UTC+10); DST starts Sunday, Monday is Labour Day
    clock = one(FIRST, 2 * H, cal, created, [], local(SYDNEY, 2024, 10, 7, 12))
    assert created.astimezone(UTC) == datetime(2024, 10, 4, 6, tzinfo=UTC)
    assert clock.elapsed == H
    assert clock.due_at == local(SYDNEY, 2024, 10, 8, 10) == datetime(2024, 10, 7, 23, tzinfo=UTC)

    created = local(SYDNEY, 2024, 4, 5, 16)  # Friday, AEDT (UTC+11); DST ends on Sunday
    clock = one(FIRST, 2 * H, cal, created, [], local(SYDNEY, 2024, 4, 5, 16, 30))
    assert clock.due_at == local(SYDNEY, 2024, 4, 8, 10) == datetime(2024, 4, 8, 0, tzinfo=UTC)


def test_event_time_zones_do_not_matter() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [reply(local(NEW_YORK, *MON, 4, 30))]  # 10:30 in Berlin
    clock = one(FIRST, 2 * H, cal, created.astimezone(TOKYO), events, local(SYDNEY, *TUE, 1))
    assert clock.state is ClockState.MET
    assert clock.elapsed == 90 * M
    assert clock.stopped_at == datetime(2024, 6, 3, 8, 30, tzinfo=UTC)
    assert clock.stopped_at is not None and clock.stopped_at.tzinfo is UTC
    assert clock.started_at.tzinfo is UTC


# -- pauses -------------------------------------------------------------------------------


def test_pending_period_pauses_and_shifts_due_by_paused_business_time() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    paused_from, paused_until = local(BERLIN, *MON, 11), local(BERLIN, *TUE, 10)
    events = [status(paused_from, Responsibility.CUSTOMER), status(paused_until, Responsibility.US)]

    unpaused = one(RESOLUTION, 16 * H, cal, created, [], local(BERLIN, *MON, 10))
    assert unpaused.due_at == local(BERLIN, *TUE, 16)

    waiting = one(RESOLUTION, 16 * H, cal, created, events, local(BERLIN, *MON, 15))
    assert waiting.state is ClockState.PAUSED
    assert not waiting.counting
    assert waiting.due_at is None
    assert waiting.elapsed == 2 * H
    assert waiting.remaining == 14 * H
    assert waiting.stopped_at is None

    resumed = one(RESOLUTION, 16 * H, cal, created, events, local(BERLIN, *TUE, 12))
    assert resumed.state is ClockState.RUNNING
    assert resumed.elapsed == 4 * H
    paused = cal.business_time(paused_from, paused_until)
    assert paused == 8 * H
    assert resumed.due_at == cal.add(local(BERLIN, *TUE, 16), paused) == local(BERLIN, *WED, 15)


def test_paused_after_breach_stays_breached() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [status(local(BERLIN, *MON, 11), Responsibility.CUSTOMER)]
    clock = one(FIRST, H, cal, created, events, local(BERLIN, *MON, 15))
    assert clock.state is ClockState.BREACHED
    assert clock.due_at == local(BERLIN, *MON, 10)
    assert clock.elapsed == 2 * H


def test_waiting_from_creation_and_back() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [status(created, Responsibility.CUSTOMER), status(local(BERLIN, *MON, 14), Responsibility.US)]
    before = one(FIRST, H, cal, created, events, local(BERLIN, *MON, 13))
    assert (before.state, before.elapsed, before.due_at) == (ClockState.PAUSED, timedelta(0), None)
    after = one(FIRST, H, cal, created, events, local(BERLIN, *MON, 14, 30))
    assert (after.state, after.elapsed, after.due_at) == (ClockState.RUNNING, 30 * M, local(BERLIN, *MON, 15))


# -- replies, cycles, done -----------------------------------------------------------------


def test_reply_meets_first_response() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    clock = one(FIRST, 2 * H, cal, created, [reply(local(BERLIN, *MON, 10, 30))], local(BERLIN, *MON, 16))
    assert clock.state is ClockState.MET
    assert clock.elapsed == 90 * M
    assert clock.remaining == 30 * M
    assert clock.stopped_at == local(BERLIN, *MON, 10, 30)
    assert clock.due_at is None


def test_late_reply_breaches_first_response() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    clock = one(FIRST, 2 * H, cal, created, [reply(local(BERLIN, *MON, 12))], local(BERLIN, *TUE, 9))
    assert clock.state is ClockState.BREACHED
    assert clock.stopped_at == local(BERLIN, *MON, 12)
    assert clock.elapsed == 3 * H
    assert clock.remaining == -H
    assert clock.due_at == local(BERLIN, *MON, 11)


def test_reply_exactly_at_due_is_met() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    clock = one(FIRST, 2 * H, cal, created, [reply(local(BERLIN, *MON, 11))], local(BERLIN, *MON, 12))
    assert clock.state is ClockState.MET
    assert clock.due_at == clock.stopped_at == local(BERLIN, *MON, 11)
    assert clock.remaining == timedelta(0)


def test_next_response_is_omitted_without_a_cycle() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    targets = Targets(first_response=H, next_response=H, resolution=H)
    now = local(BERLIN, *MON, 16)
    assert [c.name for c in compute(targets, cal, created, [], now)] == [FIRST, RESOLUTION]
    messages_only = [message(local(BERLIN, *MON, 10)), message(local(BERLIN, *MON, 11))]
    assert [c.name for c in compute(targets, cal, created, messages_only, now)] == [FIRST, RESOLUTION]
    replied = [reply(local(BERLIN, *MON, 10))]
    assert [c.name for c in compute(targets, cal, created, replied, now)] == [FIRST, RESOLUTION]
    cycle = [*replied, message(local(BERLIN, *MON, 12))]
    assert [c.name for c in compute(targets, cal, created, cycle, now)] == [FIRST, NEXT, RESOLUTION]


def test_next_response_cycles() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [
        message(local(BERLIN, *MON, 9, 30)),  # before any reply: first response territory
        reply(local(BERLIN, *MON, 10)),
        message(local(BERLIN, *MON, 13)),  # opens a cycle
        message(local(BERLIN, *MON, 13, 30)),  # does not restart it
        reply(local(BERLIN, *MON, 14)),
        reply(local(BERLIN, *MON, 14, 5)),
        message(local(BERLIN, *TUE, 9)),
    ]
    open_cycle = one(NEXT, 2 * H, cal, created, events, local(BERLIN, *MON, 13, 45))
    assert open_cycle.state is ClockState.RUNNING
    assert open_cycle.started_at == local(BERLIN, *MON, 13)
    assert open_cycle.elapsed == 45 * M
    assert open_cycle.due_at == local(BERLIN, *MON, 15)
    assert open_cycle.stopped_at is None

    completed = one(NEXT, 2 * H, cal, created, events, local(BERLIN, *MON, 18))
    assert completed.state is ClockState.MET
    assert completed.started_at == local(BERLIN, *MON, 13)
    assert completed.stopped_at == local(BERLIN, *MON, 14)
    assert completed.elapsed == H

    late_cycle = one(NEXT, 30 * M, cal, created, events, local(BERLIN, *MON, 18))
    assert late_cycle.state is ClockState.BREACHED
    assert late_cycle.due_at == local(BERLIN, *MON, 13, 30)

    next_cycle = one(NEXT, 2 * H, cal, created, events, local(BERLIN, *TUE, 12))
    assert next_cycle.state is ClockState.BREACHED
    assert next_cycle.started_at == local(BERLIN, *TUE, 9)
    assert next_cycle.elapsed == 3 * H
    assert next_cycle.due_at == local(BERLIN, *TUE, 11)


def test_next_response_pauses_while_waiting_for_the_customer() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [
        reply(local(BERLIN, *MON, 10)),
        status(local(BERLIN, *MON, 10), Responsibility.CUSTOMER),
        message(local(BERLIN, *MON, 12)),
        status(local(BERLIN, *MON, 13), Responsibility.US),
    ]
    waiting = one(NEXT, H, cal, created, events, local(BERLIN, *MON, 12, 30))
    assert (waiting.state, waiting.elapsed, waiting.due_at) == (ClockState.PAUSED, timedelta(0), None)
    running = one(NEXT, H, cal, created, events, local(BERLIN, *MON, 13, 30))
    assert (running.state, running.elapsed, running.due_at) == (ClockState.RUNNING, 30 * M, local(BERLIN, *MON, 14))


def test_resolution_stops_when_done_and_reopening_keeps_elapsed() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [
        status(local(BERLIN, *MON, 15), Responsibility.DONE),
        status(local(BERLIN, *MON, 16), Responsibility.DONE),  # already done: still done since 15:00
    ]
    done = one(RESOLUTION, 16 * H, cal, created, events, local(BERLIN, *TUE, 9))
    assert done.state is ClockState.MET
    assert done.stopped_at == local(BERLIN, *MON, 15)
    assert done.elapsed == 6 * H
    assert done.due_at is None

    events.append(status(local(BERLIN, *TUE, 9), Responsibility.US))
    reopened = one(RESOLUTION, 16 * H, cal, created, events, local(BERLIN, *TUE, 11))
    assert reopened.state is ClockState.RUNNING
    assert reopened.stopped_at is None
    assert reopened.elapsed == 8 * H
    assert reopened.due_at == local(BERLIN, *WED, 10)

    events.append(status(local(BERLIN, *TUE, 12), Responsibility.DONE))
    met = one(RESOLUTION, 16 * H, cal, created, events, local(BERLIN, *WED, 9))
    assert (met.state, met.elapsed, met.stopped_at) == (ClockState.MET, 9 * H, local(BERLIN, *TUE, 12))
    breached = one(RESOLUTION, 8 * H, cal, created, events, local(BERLIN, *WED, 9))
    assert (breached.state, breached.due_at) == (ClockState.BREACHED, local(BERLIN, *TUE, 11))
    assert breached.remaining == -H


def test_response_clock_stops_when_done_unanswered() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [status(local(BERLIN, *MON, 10), Responsibility.DONE)]
    clock = one(FIRST, 4 * H, cal, created, events, local(BERLIN, *TUE, 12))
    assert clock.state is ClockState.STOPPED
    assert not clock.counting
    assert clock.stopped_at == local(BERLIN, *MON, 10)
    assert clock.elapsed == H
    assert clock.remaining == 3 * H
    assert clock.due_at is None

    already_late = one(FIRST, 30 * M, cal, created, events, local(BERLIN, *TUE, 12))
    assert already_late.state is ClockState.BREACHED
    assert already_late.stopped_at == local(BERLIN, *MON, 10)
    assert already_late.due_at == local(BERLIN, *MON, 9, 30)

    reopened = [*events, status(local(BERLIN, *TUE, 9), Responsibility.US)]
    again = one(FIRST, 4 * H, cal, created, reopened, local(BERLIN, *TUE, 10))
    assert (again.state, again.elapsed, again.stopped_at) == (ClockState.RUNNING, 2 * H, None)
    assert again.due_at == local(BERLIN, *TUE, 12)


def test_open_cycle_stops_when_done() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [
        reply(local(BERLIN, *MON, 9, 30)),
        message(local(BERLIN, *MON, 10)),
        status(local(BERLIN, *MON, 11), Responsibility.DONE),
        message(local(BERLIN, *MON, 12)),  # the customer thanks us: no new cycle, one is open
    ]
    clock = one(NEXT, 2 * H, cal, created, events, local(BERLIN, *MON, 16))
    assert clock.state is ClockState.STOPPED
    assert clock.started_at == local(BERLIN, *MON, 10)
    assert clock.stopped_at == local(BERLIN, *MON, 11)
    assert clock.elapsed == H

    # A cycle opened while done stops where it starts.
    events = [reply(local(BERLIN, *MON, 9, 30)), status(local(BERLIN, *MON, 10), Responsibility.DONE)]
    events.append(message(local(BERLIN, *MON, 12)))
    clock = one(NEXT, 2 * H, cal, created, events, local(BERLIN, *MON, 16))
    assert (clock.state, clock.started_at, clock.stopped_at) == (
        ClockState.STOPPED,
        local(BERLIN, *MON, 12),
        local(BERLIN, *MON, 12),
    )
    assert clock.elapsed == timedelta(0)


# -- event handling ---------------------------------------------------------------------------


def test_events_are_sorted_and_ties_keep_input_order() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    at = local(BERLIN, *MON, 10)
    later = status(local(BERLIN, *MON, 12), Responsibility.US)
    events = [later, status(at, Responsibility.CUSTOMER), status(at, Responsibility.US)]
    clock = one(RESOLUTION, 8 * H, cal, created, events, local(BERLIN, *MON, 11))
    assert (clock.state, clock.elapsed) == (ClockState.RUNNING, 2 * H)
    events = [later, status(at, Responsibility.US), status(at, Responsibility.CUSTOMER)]
    clock = one(RESOLUTION, 8 * H, cal, created, events, local(BERLIN, *MON, 11))
    assert (clock.state, clock.elapsed) == (ClockState.PAUSED, H)


def test_reply_and_message_at_the_same_instant() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    at = local(BERLIN, *MON, 10)
    now = local(BERLIN, *MON, 11)
    crossing = one(NEXT, 2 * H, cal, created, [reply(at), message(at)], now)
    assert (crossing.state, crossing.started_at, crossing.elapsed) == (ClockState.RUNNING, at, H)
    targets = Targets(next_response=2 * H)
    assert compute(targets, cal, created, [message(at), reply(at)], now) == []


def test_events_after_now_are_ignored() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [reply(local(BERLIN, *MON, 12)), status(local(BERLIN, *MON, 12), Responsibility.DONE)]
    targets = Targets(first_response=4 * H, resolution=8 * H)
    before = compute(targets, cal, created, events, local(BERLIN, *MON, 11))
    assert [(c.state, c.elapsed, c.stopped_at) for c in before] == [(ClockState.RUNNING, 2 * H, None)] * 2
    at = compute(targets, cal, created, events, local(BERLIN, *MON, 12))
    assert [c.state for c in at] == [ClockState.MET, ClockState.MET]


def test_events_before_creation_count_at_creation() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [reply(local(BERLIN, *MON, 8)), status(local(BERLIN, 2024, 5, 1), Responsibility.CUSTOMER)]
    clocks = clocks_by_name(compute(Targets(first_response=H, resolution=H), cal, created, events, created + H))
    assert clocks[FIRST].state is ClockState.MET
    assert clocks[FIRST].stopped_at == created
    assert clocks[FIRST].elapsed == timedelta(0)
    assert clocks[RESOLUTION].state is ClockState.PAUSED
    assert responsibility_at(created, events, created) is Responsibility.CUSTOMER


def test_now_before_creation_reads_as_creation() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [status(created, Responsibility.CUSTOMER)]
    clock = one(FIRST, H, cal, created, events, created - H)
    assert (clock.state, clock.elapsed, clock.started_at) == (ClockState.PAUSED, timedelta(0), created)
    assert responsibility_at(created, events, created - H) is Responsibility.CUSTOMER
    clock = one(FIRST, H, cal, created, [], created - H)
    assert (clock.state, clock.due_at) == (ClockState.RUNNING, local(BERLIN, *MON, 10))


def test_responsibility_timeline() -> None:
    created = local(BERLIN, *MON, 9)
    events = [
        status(local(BERLIN, *MON, 12), Responsibility.DONE),
        message(local(BERLIN, *MON, 11)),
        status(local(BERLIN, *MON, 10), Responsibility.CUSTOMER),
    ]
    assert responsibility_at(created, events, local(BERLIN, *MON, 8)) is Responsibility.US
    assert responsibility_at(created, [status(created, Responsibility.DONE)], created) is Responsibility.DONE
    assert responsibility_at(created, events, created) is Responsibility.US
    assert responsibility_at(created, events, local(BERLIN, *MON, 10) - MICRO) is Responsibility.US
    assert responsibility_at(created, events, local(BERLIN, *MON, 10)) is Responsibility.CUSTOMER
    assert responsibility_at(created, events, local(BERLIN, *MON, 11, 59)) is Responsibility.CUSTOMER
    assert responsibility_at(created, events, local(BERLIN, *MON, 12)) is Responsibility.DONE
    assert responsibility_at(created, [], local(BERLIN, 2030, 1, 1)) is Responsibility.US


def test_targets_select_and_order_clocks() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    events = [reply(local(BERLIN, *MON, 10)), message(local(BERLIN, *MON, 11))]
    now = local(BERLIN, *MON, 12)
    every = compute(Targets(resolution=H, next_response=H, first_response=H), cal, created, events, now)
    assert [c.name for c in every] == [FIRST, NEXT, RESOLUTION]
    assert compute(Targets(), cal, created, events, now) == []
    assert [c.name for c in compute(Targets(resolution=H), cal, created, events, now)] == [RESOLUTION]
    targets = Targets(first_response=H, resolution=2 * H)
    assert [targets.get(name) for name in ClockName] == [H, None, 2 * H]


def test_zero_target() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 7)
    waiting = one(FIRST, timedelta(0), cal, created, [], local(BERLIN, *MON, 7, 30))
    assert (waiting.state, waiting.due_at) == (ClockState.RUNNING, local(BERLIN, *MON, 8))
    assert one(FIRST, timedelta(0), cal, created, [], local(BERLIN, *MON, 8)).state is ClockState.BREACHED
    early_reply = one(FIRST, timedelta(0), cal, created, [reply(local(BERLIN, *MON, 7, 30))], local(BERLIN, *MON, 9))
    assert (early_reply.state, early_reply.due_at) == (ClockState.MET, None)


def test_naive_datetimes_and_bad_values_are_rejected() -> None:
    cal = berlin_office()
    aware = local(BERLIN, *MON, 9)
    naive = datetime(2024, 6, 3, 9)
    with pytest.raises(ValueError, match="timezone-aware"):
        compute(Targets(first_response=H), cal, naive, [], aware)
    with pytest.raises(ValueError, match="timezone-aware"):
        compute(Targets(first_response=H), cal, aware, [], naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        Event(naive, EventKind.REPLY)
    with pytest.raises(ValueError, match="timezone-aware"):
        responsibility_at(aware, [], naive)
    with pytest.raises(ValueError, match="needs a responsibility"):
        Event(aware, EventKind.STATUS)
    with pytest.raises(ValueError, match="carries no responsibility"):
        Event(aware, EventKind.REPLY, Responsibility.US)
    with pytest.raises(ValueError, match="non-negative"):
        Targets(resolution=-H)
    with pytest.raises(ValueError):
        Event(aware, "later")  # type: ignore[arg-type]
    assert Event(aware, "status", "us") == status(aware, Responsibility.US)  # type: ignore[arg-type]


# -- warnings -----------------------------------------------------------------------------------


def test_warning_after_a_share_of_the_target() -> None:
    cal = berlin_office()
    created = local(BERLIN, 2024, 3, 29, 18)
    clock = one(FIRST, 4 * H, cal, created, [], local(BERLIN, 2024, 3, 30, 12), SlaWarning(share=0.75))
    assert clock.warn_at == local(BERLIN, 2024, 4, 2, 11)
    assert clock.due_at == local(BERLIN, 2024, 4, 2, 12)
    assert SlaWarning(share=0.75).threshold(4 * H) == 3 * H


def test_warning_before_the_due_instant() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    warning = SlaWarning(before=30 * M)
    assert warning.threshold(4 * H) == 3.5 * H
    assert warning.threshold(20 * M) == timedelta(0)
    clock = one(FIRST, 4 * H, cal, created, [], local(BERLIN, *MON, 10), warning)
    assert clock.warn_at == local(BERLIN, *MON, 12, 30)
    # Across the night: due Tuesday 08:30, warned 30 business minutes earlier, at Monday's closing.
    clock = one(FIRST, 2 * H, cal, local(BERLIN, *MON, 15, 30), [], local(BERLIN, *MON, 16), warning)
    assert (clock.warn_at, clock.due_at) == (local(BERLIN, *MON, 17), local(BERLIN, *TUE, 8, 30))
    # More warning than target: warn as soon as the clock counts.
    clock = one(FIRST, 20 * M, cal, local(BERLIN, *MON, 6), [], local(BERLIN, *MON, 7), warning)
    assert clock.warn_at == local(BERLIN, *MON, 8)


def test_warning_follows_pauses_and_stops() -> None:
    cal = berlin_office()
    created = local(BERLIN, *MON, 9)
    warning = SlaWarning(share=0.5)
    events = [status(local(BERLIN, *MON, 10), Responsibility.CUSTOMER)]
    paused = one(FIRST, 4 * H, cal, created, events, local(BERLIN, *MON, 12), warning)
    assert (paused.state, paused.warn_at, paused.due_at) == (ClockState.PAUSED, None, None)
    passed = one(FIRST, H, cal, created, events, local(BERLIN, *MON, 12), warning)
    assert (passed.state, passed.warn_at, passed.due_at) == (
        ClockState.BREACHED,
        local(BERLIN, *MON, 9, 30),
        local(BERLIN, *MON, 10),
    )
    answered = one(FIRST, 4 * H, cal, created, [reply(local(BERLIN, *MON, 12))], local(BERLIN, *MON, 13), warning)
    assert (answered.state, answered.warn_at, answered.due_at) == (ClockState.MET, local(BERLIN, *MON, 11), None)
    assert one(FIRST, 4 * H, cal, created, [], local(BERLIN, *MON, 12)).warn_at is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one"),
        ({"share": 0.5, "before": M}, "exactly one"),
        ({"share": 0.0}, "between 0 and 1"),
        ({"share": 1.0}, "between 0 and 1"),
        ({"share": 1.5}, "between 0 and 1"),
        ({"share": -0.5}, "between 0 and 1"),
        ({"share": float("nan")}, "between 0 and 1"),
        ({"share": True}, "between 0 and 1"),
        ({"before": -M}, "non-negative"),
    ],
)
def test_warning_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SlaWarning(**kwargs)  # type: ignore[arg-type]


def test_warning_zero_before_is_the_due_instant() -> None:
    assert SlaWarning(before=timedelta(0)).threshold(4 * H) == 4 * H


# -- properties ---------------------------------------------------------------------------------

CALENDARS = [
    berlin_office(),
    BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-12:00, 13:00-17:00", "sat": "10:00-14:00"}),
    BusinessCalendar.build("America/New_York", {"mon-fri": "09:00-17:00"}, country="US", years=[2024, 2025]),
    BusinessCalendar.build("Australia/Sydney", {"mon-sun": "00:00-24:00"}),
    BusinessCalendar.build("Europe/Berlin", {"mon-sun": "00:00-03:00, 22:00-24:00"}),
]
ZONES = [BERLIN, NEW_YORK, TOKYO, SYDNEY]
KINDS = [
    (EventKind.STATUS, Responsibility.US),
    (EventKind.STATUS, Responsibility.CUSTOMER),
    (EventKind.STATUS, Responsibility.DONE),
    (EventKind.CUSTOMER_MESSAGE, None),
    (EventKind.REPLY, None),
]
SPAN_MINUTES = 3 * 7 * 24 * 60

minutes = st.one_of(st.integers(-120, SPAN_MINUTES), st.sampled_from([0, 600, 1440]))
quarter_hours = st.integers(0, 40 * 4).map(lambda n: n * 15 * M)
created_instants = st.builds(
    lambda moment, zone: moment.replace(tzinfo=zone),
    st.datetimes(datetime(2024, 1, 1), datetime(2024, 11, 30)),
    st.sampled_from(ZONES),
)
histories = st.lists(st.tuples(minutes, st.sampled_from(KINDS)), max_size=12)
now_offsets = st.integers(0, (SPAN_MINUTES + 7 * 24 * 60) * 60).map(lambda s: timedelta(seconds=s))
targets = st.builds(Targets, quarter_hours, quarter_hours, quarter_hours)
warnings = st.one_of(
    st.none(),
    st.builds(SlaWarning, share=st.sampled_from([0.25, 0.5, 0.75, 0.9])),
    st.builds(SlaWarning, before=quarter_hours),
)

PROPERTY_SETTINGS = settings(deadline=None, max_examples=80)


def make_events(created: datetime, history: list[tuple[int, tuple[EventKind, Responsibility | None]]]) -> list[Event]:
    start = created.astimezone(UTC)  # real time: local arithmetic would drop the fold of an ambiguous time
    return [Event(start + offset * M, kind, who) for offset, (kind, who) in history]


def check_invariants(clock: Clock, cal: BusinessCalendar, now: datetime) -> None:
    assert clock.remaining == clock.target - clock.elapsed
    assert timedelta(0) <= clock.elapsed <= cal.business_time(clock.started_at, now)
    assert clock.counting == (clock.state is ClockState.RUNNING)
    for instant in (clock.started_at, clock.due_at, clock.warn_at, clock.stopped_at):
        assert instant is None or instant.tzinfo is UTC
    if clock.stopped_at is not None:
        assert clock.started_at <= clock.stopped_at <= now
        assert clock.elapsed <= cal.business_time(clock.started_at, clock.stopped_at)
        assert clock.state in (ClockState.MET, ClockState.BREACHED, ClockState.STOPPED)
    else:
        assert clock.state in (ClockState.RUNNING, ClockState.PAUSED, ClockState.BREACHED)
    if clock.elapsed > clock.target:
        assert clock.state is ClockState.BREACHED
    if clock.state is ClockState.BREACHED:
        assert clock.elapsed >= clock.target
        assert clock.due_at is not None and clock.due_at <= now
    if clock.due_at is not None and clock.due_at <= now:
        # Reached by now: breached, unless a reply (or done) came exactly when the target was reached.
        assert clock.state is ClockState.BREACHED or (
            clock.state is ClockState.MET
            and clock.elapsed == clock.target
            and clock.stopped_at is not None
            and clock.due_at <= clock.stopped_at
        )
    if clock.state in (ClockState.PAUSED, ClockState.STOPPED):
        assert clock.due_at is None
        assert clock.warn_at is None or clock.warn_at <= now
    if clock.state is ClockState.RUNNING:
        assert clock.due_at is not None and clock.due_at > now
        assert clock.elapsed <= clock.target
    if clock.due_at is not None:
        assert clock.due_at >= clock.started_at
        if clock.warn_at is not None:
            assert clock.warn_at <= clock.due_at


@PROPERTY_SETTINGS
@given(st.sampled_from(CALENDARS), created_instants, histories, now_offsets, now_offsets, targets, warnings)
def test_clock_invariants_and_monotonic_elapsed(
    cal: BusinessCalendar,
    created: datetime,
    history: list[tuple[int, tuple[EventKind, Responsibility | None]]],
    a: timedelta,
    b: timedelta,
    goals: Targets,
    warning: SlaWarning | None,
) -> None:
    events = make_events(created, history)
    earlier, later = created.astimezone(UTC) + min(a, b), created.astimezone(UTC) + max(a, b)
    before = clocks_by_name(compute(goals, cal, created, events, earlier, warning))
    after = clocks_by_name(compute(goals, cal, created, events, later, warning))
    for clock in before.values():
        check_invariants(clock, cal, earlier)
    for clock in after.values():
        check_invariants(clock, cal, later)
    assert set(before) <= set(after)
    assert {FIRST, RESOLUTION} <= set(after)
    for name in (FIRST, RESOLUTION):
        assert before[name].started_at == after[name].started_at == created.astimezone(UTC)
        assert before[name].elapsed <= after[name].elapsed
    if NEXT in before and before[NEXT].started_at == after[NEXT].started_at:
        assert before[NEXT].elapsed <= after[NEXT].elapsed


@PROPERTY_SETTINGS
@given(st.sampled_from(CALENDARS), created_instants, histories, now_offsets, targets, warnings)
def test_running_clock_reaches_target_at_due(
    cal: BusinessCalendar,
    created: datetime,
    history: list[tuple[int, tuple[EventKind, Responsibility | None]]],
    offset: timedelta,
    goals: Targets,
    warning: SlaWarning | None,
) -> None:
    now = created.astimezone(UTC) + offset
    events = [event for event in make_events(created, history) if event.at <= now]  # nothing changes after now
    for clock in compute(goals, cal, created, events, now, warning):
        if clock.state is not ClockState.RUNNING:
            continue
        assert clock.due_at is not None
        at_due = clocks_by_name(compute(goals, cal, created, events, clock.due_at, warning))[clock.name]
        assert abs(at_due.elapsed - clock.target) <= MICRO
        assert at_due.state is ClockState.BREACHED
        assert at_due.due_at == clock.due_at
        assert at_due.started_at == clock.started_at
        just_before = clock.due_at - MICRO
        if just_before > now:
            early = clocks_by_name(compute(goals, cal, created, events, just_before, warning))[clock.name]
            assert early.state is ClockState.RUNNING
            assert early.due_at == clock.due_at
        if warning is not None:
            assert clock.warn_at is not None
            if clock.warn_at >= now:
                at_warn = clocks_by_name(compute(goals, cal, created, events, clock.warn_at, warning))[clock.name]
                assert at_warn.elapsed == warning.threshold(clock.target)
                assert at_warn.warn_at == clock.warn_at


@PROPERTY_SETTINGS
@given(
    st.sampled_from(CALENDARS),
    created_instants,
    histories,
    now_offsets,
    st.integers(0, SPAN_MINUTES),
    st.integers(1, 3 * 24 * 60),
    targets,
)
def test_customer_pause_never_adds_time(
    cal: BusinessCalendar,
    created: datetime,
    history: list[tuple[int, tuple[EventKind, Responsibility | None]]],
    offset: timedelta,
    pause_offset: int,
    pause_minutes: int,
    goals: Targets,
) -> None:
    now = created.astimezone(UTC) + offset
    events = make_events(created, history)
    pause_from = created.astimezone(UTC) + pause_offset * M
    pause_until = pause_from + pause_minutes * M
    if pause_until >= now:
        return
    # Waiting for the customer over [pause_from, pause_until), the same responsibility as before otherwise.
    resume = responsibility_at(created, events, pause_until)
    paused_events = [
        event for event in events if not (event.kind is EventKind.STATUS and pause_from <= event.at < pause_until)
    ]
    paused_events += [status(pause_from, Responsibility.CUSTOMER), status(pause_until, resume)]
    assert responsibility_at(created, paused_events, pause_from) is Responsibility.CUSTOMER
    assert responsibility_at(created, paused_events, now) is responsibility_at(created, events, now)

    plain = clocks_by_name(compute(goals, cal, created, events, now))
    paused = clocks_by_name(compute(goals, cal, created, paused_events, now))
    assert set(plain) == set(paused)
    for name, clock in plain.items():
        other = paused[name]
        assert other.started_at == clock.started_at
        assert clock.elapsed - cal.business_time(pause_from, pause_until) <= other.elapsed <= clock.elapsed
        # Nothing before the pause moves (a zero target is reached at an opening, which the pause may hide).
        if clock.due_at is not None and (clock.due_at < pause_from or (clock.due_at == pause_from and clock.target)):
            assert other.due_at == clock.due_at
        if clock.due_at is not None and other.due_at is not None:
            assert other.due_at >= clock.due_at
        if clock.due_at is None and clock.stopped_at is None and clock.state is ClockState.PAUSED:
            assert other.due_at is None
