"""Business time over a calendar: opening hours, holidays, time zones and DST."""

from __future__ import annotations

import time as wall_clock
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpdesk.core.calendar import BusinessCalendar

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
SYDNEY = ZoneInfo("Australia/Sydney")

H = timedelta(hours=1)
US = timedelta(microseconds=1)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


def berlin_office() -> BusinessCalendar:
    return BusinessCalendar.build(
        "Europe/Berlin", {"mon-fri": "08:00-17:00"}, country="DE", subdivision="BE", years=[2026]
    )


def always_open(zone: str) -> BusinessCalendar:
    return BusinessCalendar.build(zone, {"mon-sun": "00:00-24:00"})


# -- holidays and weekends ----------------------------------------------------------------


def test_friday_ticket_skips_weekend_and_whit_monday() -> None:
    cal = berlin_office()
    due = cal.add(local(BERLIN, 2026, 5, 22, 16), 4 * H)
    assert due == local(BERLIN, 2026, 5, 26, 11)
    assert due.tzinfo is UTC
    assert cal.business_time(local(BERLIN, 2026, 5, 22, 16), due) == 4 * H


def test_easter_skips_good_friday_and_easter_monday() -> None:
    cal = berlin_office()
    assert cal.add(local(BERLIN, 2026, 4, 2, 16), 4 * H) == local(BERLIN, 2026, 4, 7, 11)
    assert not cal.is_open(local(BERLIN, 2026, 4, 6, 10))
    assert cal.is_open(local(BERLIN, 2026, 4, 7, 10))


def test_plain_weekend() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"})
    assert cal.add(local(BERLIN, 2026, 6, 12, 16), 2 * H) == local(BERLIN, 2026, 6, 15, 9)
    assert not cal.is_open(local(BERLIN, 2026, 6, 13, 12))
    assert cal.business_time(local(BERLIN, 2026, 6, 12, 0), local(BERLIN, 2026, 6, 15, 0)) == 9 * H
    assert cal.business_time(local(BERLIN, 2026, 6, 8, 0), local(BERLIN, 2026, 6, 15, 0)) == 45 * H


def test_extra_holidays_close_the_whole_day() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"}, extra_holidays=[date(2026, 6, 15)])
    assert date(2026, 6, 15) in cal.holidays
    assert cal.add(local(BERLIN, 2026, 6, 12, 16), 2 * H) == local(BERLIN, 2026, 6, 16, 9)


def test_holidays_default_years() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"}, country="DE")
    assert date(2020, 12, 25) in cal.holidays
    assert date(2035, 12, 25) in cal.holidays
    assert date(2036, 12, 25) not in cal.holidays
    assert date(2019, 12, 25) not in cal.holidays


def test_country_code_is_case_insensitive() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"}, country="de", years=[2026])
    assert date(2026, 10, 3) in cal.holidays


# -- lunch break, start outside hours, zero duration -----------------------------------


def test_lunch_break() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-12:00, 13:00-17:00"})
    monday = (2026, 6, 8)
    assert cal.add(local(BERLIN, *monday, 11), 2 * H) == local(BERLIN, *monday, 14)
    assert cal.add(local(BERLIN, *monday, 11), 1 * H) == local(BERLIN, *monday, 12)
    assert not cal.is_open(local(BERLIN, *monday, 12, 30))
    assert cal.is_open(local(BERLIN, *monday, 11, 59))
    assert not cal.is_open(local(BERLIN, *monday, 12))
    assert cal.is_open(local(BERLIN, *monday, 13))
    assert cal.business_time(local(BERLIN, *monday, 0), local(BERLIN, *monday, 23)) == 8 * H
    assert cal.next_opening(local(BERLIN, *monday, 12, 30)) == local(BERLIN, *monday, 13)


def test_list_form_of_hours() -> None:
    a = BusinessCalendar.build("Europe/Berlin", {"mon": ["08:00-12:00", "13:00-17:00"]})
    b = BusinessCalendar.build("Europe/Berlin", {"mon": "13:00-17:00,08:00-12:00"})
    assert a == b
    assert hash(a) == hash(b)
    assert a.hours == {0: ((time(8), time(12)), (time(13), time(17)))}


def test_day_lists_and_wrapping_ranges() -> None:
    cal = BusinessCalendar.build("UTC", {"fri-mon": "10:00-11:00", "Wednesday": "10:00-11:00"})
    assert sorted(cal.hours) == [0, 2, 4, 5, 6]
    cal = BusinessCalendar.build("UTC", {"mon, wed": "10:00-11:00", "sun": "closed", "sat": []})
    assert sorted(cal.hours) == [0, 2]


def test_start_outside_hours() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"})
    assert cal.add(local(BERLIN, 2026, 6, 13, 10), 1 * H) == local(BERLIN, 2026, 6, 15, 9)
    assert cal.add(local(BERLIN, 2026, 6, 15, 6), 1 * H) == local(BERLIN, 2026, 6, 15, 9)
    assert cal.add(local(BERLIN, 2026, 6, 15, 17), 1 * H) == local(BERLIN, 2026, 6, 16, 9)
    assert cal.next_opening(local(BERLIN, 2026, 6, 15, 17)) == local(BERLIN, 2026, 6, 16, 8)


def test_zero_duration() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"})
    open_instant = local(BERLIN, 2026, 6, 15, 10, 15)
    result = cal.add(open_instant, timedelta(0))
    assert result == open_instant
    assert result.tzinfo is UTC
    assert cal.add(local(BERLIN, 2026, 6, 13, 10), timedelta(0)) == local(BERLIN, 2026, 6, 15, 8)
    assert cal.next_opening(open_instant) == open_instant
    assert cal.next_opening(open_instant).tzinfo is UTC


def test_duration_ending_exactly_at_closing() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"})
    due = cal.add(local(BERLIN, 2026, 6, 15, 8), 9 * H)
    assert due == local(BERLIN, 2026, 6, 15, 17)
    assert not cal.is_open(due)
    assert cal.is_open(due - US)


def test_business_time_of_reversed_or_empty_range_is_zero() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-fri": "08:00-17:00"})
    a, b = local(BERLIN, 2026, 6, 15, 9), local(BERLIN, 2026, 6, 15, 12)
    assert cal.business_time(b, a) == timedelta(0)
    assert cal.business_time(a, a) == timedelta(0)


def test_long_durations_are_fast() -> None:
    cal = BusinessCalendar.build(
        "Europe/Berlin", {"mon-fri": "08:00-12:00, 13:00-17:00"}, country="DE", subdivision="BE"
    )
    start = local(BERLIN, 2026, 1, 5, 8)
    began = wall_clock.monotonic()
    due = cal.add(start, 2000 * H)
    assert cal.business_time(start, due) == 2000 * H
    span = cal.business_time(local(BERLIN, 2020, 1, 1), local(BERLIN, 2030, 1, 1))
    assert wall_clock.monotonic() - began < 5
    assert timedelta(hours=8 * 240 * 10) < span < timedelta(hours=8 * 262 * 10)


def test_midnight_end_is_24_00() -> None:
    cal = BusinessCalendar(timezone="UTC", hours={4: ((time(22), time(0)),)})
    assert cal.add(datetime(2026, 6, 12, 23, tzinfo=UTC), 1 * H) == datetime(2026, 6, 13, tzinfo=UTC)
    assert cal.add(datetime(2026, 6, 12, 23, tzinfo=UTC), 2 * H) == datetime(2026, 6, 19, 23, tzinfo=UTC)


def test_adjacent_intervals_across_midnight_are_continuous() -> None:
    cal = BusinessCalendar.build("UTC", {"fri": "20:00-24:00", "sat": "00:00-04:00"})
    assert cal.add(datetime(2026, 6, 12, 20, tzinfo=UTC), 8 * H) == datetime(2026, 6, 13, 4, tzinfo=UTC)
    assert cal.is_open(datetime(2026, 6, 13, 0, tzinfo=UTC))


# -- DST ------------------------------------------------------------------------------


def test_24_7_spring_forward_day_has_23_hours() -> None:
    cal = always_open("Europe/Berlin")
    due = cal.add(local(BERLIN, 2026, 3, 28, 12), 24 * H)
    assert due == local(BERLIN, 2026, 3, 29, 13)
    assert due == datetime(2026, 3, 29, 11, tzinfo=UTC)
    assert cal.business_time(local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 30)) == 23 * H


def test_24_7_fall_back_day_has_25_hours() -> None:
    cal = always_open("Europe/Berlin")
    assert cal.add(local(BERLIN, 2026, 10, 24, 12), 24 * H) == local(BERLIN, 2026, 10, 25, 11)
    assert cal.business_time(local(BERLIN, 2026, 10, 25), local(BERLIN, 2026, 10, 26)) == 25 * H


def test_night_interval_across_spring_forward_is_three_real_hours() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"sun": "00:00-04:00"})
    week = (local(BERLIN, 2026, 3, 23), local(BERLIN, 2026, 3, 30))
    assert cal.business_time(*week) == 3 * H
    assert cal.add(local(BERLIN, 2026, 3, 29), 3 * H) == local(BERLIN, 2026, 3, 29, 4)
    assert cal.business_time(local(BERLIN, 2026, 3, 16), local(BERLIN, 2026, 3, 23)) == 4 * H


def test_night_interval_across_fall_back_is_five_real_hours() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"sun": "00:00-04:00"})
    assert cal.business_time(local(BERLIN, 2026, 10, 19), local(BERLIN, 2026, 10, 26)) == 5 * H
    assert cal.add(local(BERLIN, 2026, 10, 25), 5 * H) == local(BERLIN, 2026, 10, 25, 4)


def test_day_interval_unaffected_by_night_time_dst_change() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"mon-sun": "08:00-17:00"})
    assert cal.business_time(local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 30)) == 9 * H
    assert cal.business_time(local(BERLIN, 2026, 10, 25), local(BERLIN, 2026, 10, 26)) == 9 * H
    assert cal.add(local(BERLIN, 2026, 3, 28, 16), 2 * H) == local(BERLIN, 2026, 3, 29, 9)


def test_nonexistent_local_times_map_forward() -> None:
    inside_gap = BusinessCalendar.build("Europe/Berlin", {"sun": "02:00-02:30"})
    day = (local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 30))
    assert inside_gap.business_time(*day) == timedelta(minutes=30)
    assert inside_gap.next_opening(day[0]) == datetime(2026, 3, 29, 1, tzinfo=UTC)
    end_of_gap = BusinessCalendar.build("Europe/Berlin", {"sun": "02:30-03:00"})
    assert end_of_gap.business_time(*day) == timedelta(0)
    into_gap = BusinessCalendar.build("Europe/Berlin", {"sun": "01:00-02:30"})
    assert into_gap.business_time(*day) == timedelta(hours=1, minutes=30)
    assert into_gap.add(day[0], 90 * timedelta(minutes=1)) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


def test_intervals_overlapping_after_the_gap_are_merged() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"sun": "02:00-02:30, 03:00-03:45"})
    day = (local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 30))
    assert cal.business_time(*day) == timedelta(minutes=45)
    assert cal.add(day[0], timedelta(minutes=45)) == local(BERLIN, 2026, 3, 29, 3, 45)


def test_ambiguous_local_times_take_first_occurrence() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"sun": "02:30-03:30"})
    day = (local(BERLIN, 2026, 10, 25), local(BERLIN, 2026, 10, 26))
    assert cal.business_time(*day) == 2 * H
    assert cal.next_opening(day[0]) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_santiago_transitions_at_midnight() -> None:
    santiago = ZoneInfo("America/Santiago")
    cal = BusinessCalendar.build("America/Santiago", {"sat": "22:00-24:00", "sun": "00:00-02:00"})
    # Spring forward: Saturday 24:00 (-04) jumps to Sunday 01:00 (-03).
    spring = (local(santiago, 2026, 9, 5), local(santiago, 2026, 9, 7))
    assert cal.business_time(*spring) == 3 * H
    assert cal.next_opening(spring[0]) == datetime(2026, 9, 6, 2, tzinfo=UTC)
    assert cal.add(spring[0], 3 * H) == datetime(2026, 9, 6, 5, tzinfo=UTC)
    # Fall back: Saturday 24:00 (-03) goes back to Saturday 23:00 (-04).
    assert cal.business_time(local(santiago, 2026, 4, 4), local(santiago, 2026, 4, 6)) == 5 * H


def test_always_open_over_long_spans() -> None:
    cal = always_open("UTC")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    began = wall_clock.monotonic()
    assert cal.add(start, 10_000 * H) == start + 10_000 * H
    assert cal.business_time(start, start + 10_000 * H) == 10_000 * H
    assert cal.is_open(start + 10_000 * H)
    assert wall_clock.monotonic() - began < 5


# -- other time zones -----------------------------------------------------------------


def test_new_york_across_spring_forward_weekend() -> None:
    cal = BusinessCalendar.build("America/New_York", {"mon-fri": "09:00-17:00"}, country="US", years=[2026])
    due = cal.add(local(NEW_YORK, 2026, 3, 6, 16), 2 * H)
    assert due == local(NEW_YORK, 2026, 3, 9, 10)
    assert due == datetime(2026, 3, 9, 14, tzinfo=UTC)
    # Independence Day 2026 is a Saturday, observed on Friday July 3.
    assert cal.add(local(NEW_YORK, 2026, 7, 2, 16), 2 * H) == local(NEW_YORK, 2026, 7, 6, 10)


def test_tokyo_with_inputs_in_other_zones() -> None:
    cal = BusinessCalendar.build("Asia/Tokyo", {"mon-fri": "09:00-18:00"}, country="JP", years=[2026])
    start_utc = datetime(2026, 6, 12, 7, tzinfo=UTC)  # Friday 16:00 in Tokyo
    expected = local(TOKYO, 2026, 6, 15, 11)
    assert cal.add(start_utc, 4 * H) == expected
    assert cal.add(start_utc.astimezone(NEW_YORK), 4 * H) == expected
    assert cal.add(start_utc.astimezone(BERLIN), 4 * H) == expected
    assert cal.is_open(datetime(2026, 6, 15, 0, 30, tzinfo=UTC))
    assert not cal.is_open(datetime(2026, 6, 15, 9, 30, tzinfo=UTC))


def test_sydney_dst_ends_in_april_and_starts_in_october() -> None:
    cal = always_open("Australia/Sydney")
    assert cal.add(local(SYDNEY, 2026, 4, 4, 12), 24 * H) == local(SYDNEY, 2026, 4, 5, 11)
    assert cal.business_time(local(SYDNEY, 2026, 4, 5), local(SYDNEY, 2026, 4, 6)) == 25 * H
    assert cal.add(local(SYDNEY, 2026, 10, 3, 12), 24 * H) == local(SYDNEY, 2026, 10, 4, 13)
    assert cal.business_time(local(SYDNEY, 2026, 10, 4), local(SYDNEY, 2026, 10, 5)) == 23 * H


def test_sydney_office_hours_with_state_holidays() -> None:
    cal = BusinessCalendar.build(
        "Australia/Sydney", {"mon-fri": "09:00-17:00"}, country="AU", subdivision="NSW", years=[2026]
    )
    # Easter Monday 2026-04-06 is a public holiday in NSW; Good Friday is 2026-04-03.
    assert cal.add(local(SYDNEY, 2026, 4, 2, 16), 2 * H) == local(SYDNEY, 2026, 4, 7, 10)


# -- calendars without hours ----------------------------------------------------------


def test_calendar_without_hours() -> None:
    cal = BusinessCalendar(timezone="UTC", hours={})
    now = datetime(2026, 6, 12, tzinfo=UTC)
    assert not cal.is_open(now)
    assert cal.business_time(now, now + 1000 * H) == timedelta(0)
    with pytest.raises(ValueError, match="no business hours"):
        cal.add(now, 1 * H)
    with pytest.raises(ValueError, match="no business hours"):
        cal.next_opening(now)


def test_interval_inside_the_gap_is_skipped_only_on_that_day() -> None:
    cal = BusinessCalendar.build("Europe/Berlin", {"sun": "02:30-03:00"})
    assert cal.next_opening(local(BERLIN, 2026, 3, 28)) == local(BERLIN, 2026, 4, 5, 2, 30)
    assert cal.business_time(local(BERLIN, 2026, 3, 22), local(BERLIN, 2026, 4, 6)) == timedelta(minutes=60)


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ({"mon-fry": "08:00-17:00"}, "hours['mon-fry']: unknown day 'fry'"),
        ({"funday": "08:00-17:00"}, "hours['funday']: unknown day 'funday'"),
        ({"": "08:00-17:00"}, "hours['']"),
        ({"mon": "25:00-26:00"}, "hours['mon']: bad time '25:00'"),
        ({"mon": "8am-5pm"}, "hours['mon']: bad time '8am'"),
        ({"mon": "08:60-17:00"}, "bad time '08:60'"),
        ({"mon": "24:00-24:00"}, "bad time '24:00'"),
        ({"mon": "08:00"}, "bad interval '08:00'"),
        ({"mon": "17:00-08:00"}, "empty or reversed"),
        ({"mon": "08:00-08:00"}, "empty or reversed"),
        ({"mon": "08:00-12:00, 11:00-17:00"}, "hours['mon']: intervals 08:00-12:00 and 11:00-17:00 overlap"),
        ({"mon": ["08:00-24:00", "23:00-24:00"]}, "overlap"),
        ({"mon-fri": "08:00-17:00", "fri": "08:00-12:00"}, "day 'fri' already given by hours['mon-fri']"),
        ({"mon": 8}, "expected a string"),
    ],
)
def test_build_rejects_bad_hours(hours: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        BusinessCalendar.build("Europe/Berlin", hours)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_unknown_time_zone() -> None:
    with pytest.raises(ValueError, match=r"unknown time zone 'Europe/Berln'"):
        BusinessCalendar.build("Europe/Berln", {"mon": "08:00-17:00"})
    with pytest.raises(ValueError, match="unknown time zone"):
        BusinessCalendar(timezone="Not/AZone", hours={})
    with pytest.raises(ValueError, match="unknown time zone"):
        BusinessCalendar(timezone="../etc/passwd", hours={})


def test_unknown_country_and_subdivision() -> None:
    with pytest.raises(ValueError, match=r"unknown country 'XX'"):
        BusinessCalendar.build("Europe/Berlin", {"mon": "08:00-17:00"}, country="XX")
    with pytest.raises(ValueError, match=r"unknown subdivision 'XY' for country 'DE'"):
        BusinessCalendar.build("Europe/Berlin", {"mon": "08:00-17:00"}, country="DE", subdivision="XY")
    with pytest.raises(ValueError, match="without a country"):
        BusinessCalendar.build("Europe/Berlin", {"mon": "08:00-17:00"}, subdivision="BE")


def test_extra_holidays_must_be_dates() -> None:
    with pytest.raises(ValueError, match="expected dates"):
        BusinessCalendar.build("UTC", {"mon": "08:00-17:00"}, extra_holidays=[datetime(2026, 1, 1)])


@pytest.mark.parametrize(
    ("hours", "message"),
    [
        ({0: ((time(8), time(12)), (time(11), time(17)))}, "hours[0]: intervals 08:00-12:00 and 11:00-17:00 overlap"),
        ({1: ((time(13), time(17)), (time(8), time(13, 30)))}, "hours[1]: intervals 08:00-13:30 and 13:00-17:00"),
        ({0: ((time(12), time(8)),)}, "hours[0]: interval 12:00-08:00 is empty or reversed"),
        ({7: ((time(8), time(12)),)}, "hours[7]: weekday must be"),
        ({0: ((time(8),),)}, "not a (start, end) pair"),
        ({0: ((time(8, tzinfo=UTC), time(12)),)}, "naive local times"),
    ],
)
def test_constructor_validates_hours(hours: dict[int, tuple[tuple[time, time], ...]], message: str) -> None:
    with pytest.raises(ValueError) as info:
        BusinessCalendar(timezone="UTC", hours=hours)
    assert message in str(info.value)


def test_naive_datetimes_are_rejected() -> None:
    cal = BusinessCalendar.build("UTC", {"mon-fri": "08:00-17:00"})
    naive = datetime(2026, 6, 15, 10)
    aware = naive.replace(tzinfo=UTC)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.is_open(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.business_time(naive, aware)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.business_time(aware, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.add(naive, H)
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.next_opening(naive)


def test_negative_duration_is_rejected() -> None:
    cal = BusinessCalendar.build("UTC", {"mon-fri": "08:00-17:00"})
    with pytest.raises(ValueError, match="negative"):
        cal.add(datetime(2026, 6, 15, 10, tzinfo=UTC), -H)


def test_calendar_is_immutable_and_hashable() -> None:
    cal = BusinessCalendar.build("UTC", {"mon-fri": "08:00-17:00"})
    with pytest.raises(TypeError):
        cal.hours[5] = ((time(8), time(9)),)  # type: ignore[index]
    assert {cal: 1}[BusinessCalendar.build("UTC", {"mon-fri": "08:00-17:00"})] == 1


# -- properties -----------------------------------------------------------------------

ZONES = ["Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC", "America/Santiago"]

FIXED_CALENDARS = [
    BusinessCalendar.build(
        "Europe/Berlin", {"mon-fri": "08:00-12:00, 13:00-17:00"}, country="DE", subdivision="BE", years=[2025, 2026]
    ),
    BusinessCalendar.build("Europe/Berlin", {"mon-sun": "00:00-03:00, 22:00-24:00"}),
    BusinessCalendar.build("Europe/Berlin", {"sun": "02:00-02:30, 03:00-03:45", "sat": "01:00-24:00"}),
    BusinessCalendar.build("America/New_York", {"mon-fri": "09:00-17:00"}, country="US", years=[2025, 2026]),
    BusinessCalendar.build("Australia/Sydney", {"mon-sun": "00:00-24:00"}),
    BusinessCalendar.build("Asia/Tokyo", {"sat": "10:00-10:01"}),
]


@st.composite
def random_calendars(draw: st.DrawFn) -> BusinessCalendar:
    zone = draw(st.sampled_from(ZONES))
    hours: dict[int, tuple[tuple[time, time], ...]] = {}
    for weekday in range(7):
        marks = sorted(draw(st.sets(st.integers(0, 48), max_size=6)))
        intervals = []
        for start, end in zip(marks[0::2], marks[1::2], strict=False):
            end_time = time(0) if end == 48 else time(end // 2, 30 * (end % 2))
            intervals.append((time(start // 2, 30 * (start % 2)), end_time))
        if intervals:
            hours[weekday] = tuple(intervals)
    if not hours:
        hours[draw(st.integers(0, 6))] = ((time(9), time(10)),)
    closed = draw(st.frozensets(st.dates(date(2025, 1, 1), date(2027, 12, 31)), max_size=20))
    return BusinessCalendar(timezone=zone, hours=hours, holidays=closed)


calendars = st.one_of(st.sampled_from(FIXED_CALENDARS), random_calendars())
instants = st.builds(
    lambda moment, zone: moment.replace(tzinfo=ZoneInfo(zone)),
    st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31)),
    st.sampled_from(ZONES),
)
durations = st.integers(0, 200 * 3600 * 10**6).map(lambda us: timedelta(microseconds=us))
quarter_hours = st.integers(0, 200 * 4).map(lambda n: timedelta(minutes=15 * n))
any_duration = st.one_of(durations, quarter_hours)

PROPERTY_SETTINGS = settings(deadline=None, max_examples=300)


@PROPERTY_SETTINGS
@given(calendars, instants, any_duration)
def test_business_time_inverts_add(cal: BusinessCalendar, start: datetime, duration: timedelta) -> None:
    due = cal.add(start, duration)
    assert due.tzinfo is UTC
    assert due >= start
    assert cal.business_time(start, due) == duration


@PROPERTY_SETTINGS
@given(calendars, instants, any_duration, any_duration)
def test_add_is_monotonic(cal: BusinessCalendar, start: datetime, a: timedelta, b: timedelta) -> None:
    shorter, longer = sorted((a, b))
    assert cal.add(start, shorter) <= cal.add(start, longer)
    if shorter < longer:
        assert cal.add(start, shorter) < cal.add(start, longer)


@PROPERTY_SETTINGS
@given(calendars, instants, instants, instants)
def test_business_time_is_additive(cal: BusinessCalendar, x: datetime, y: datetime, z: datetime) -> None:
    a, b, c = sorted((x, y, z))
    assert cal.business_time(a, b) + cal.business_time(b, c) == cal.business_time(a, c)
    assert cal.business_time(c, a) == timedelta(0)


@PROPERTY_SETTINGS
@given(calendars, instants, any_duration.filter(lambda d: d > timedelta(0)))
def test_open_just_before_due(cal: BusinessCalendar, start: datetime, duration: timedelta) -> None:
    assert cal.is_open(cal.add(start, duration) - US)


@PROPERTY_SETTINGS
@given(calendars, instants)
def test_next_opening(cal: BusinessCalendar, instant: datetime) -> None:
    opening = cal.next_opening(instant)
    assert opening >= instant
    assert opening.tzinfo is UTC
    assert cal.is_open(opening)
    assert cal.business_time(instant, opening) == timedelta(0)
    assert (opening == instant) == cal.is_open(instant)
    assert cal.add(instant, timedelta(0)) == opening


@PROPERTY_SETTINGS
@given(calendars, instants, st.integers(1, 10**6).map(lambda us: timedelta(microseconds=us)))
def test_business_time_never_exceeds_real_time(cal: BusinessCalendar, start: datetime, span: timedelta) -> None:
    elapsed = cal.business_time(start, start + span * 500)
    assert timedelta(0) <= elapsed <= span * 500
    if elapsed == span * 500:
        assert cal.is_open(start)
