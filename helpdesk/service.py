"""The service promise built from the configuration: statuses, workflows, calendars, SLA policies.

:func:`rules` turns a :class:`~helpdesk.config.Config` into ready objects once (building a calendar
reads years of public holidays) and hands the same :class:`ServiceRules` back for that config.
:func:`service_problems` is the configuration check: every unknown name is reported with its place.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

from helpdesk.config import WARNING_RE, CalendarConfig, Config, SlaPolicyConfig, parse_duration
from helpdesk.core.calendar import BusinessCalendar
from helpdesk.core.sla import Responsibility, Targets, Warning
from helpdesk.core.workflow import DEFAULT_STATUSES, Status, StatusBook

__all__ = ["ALWAYS_OPEN", "ServiceRules", "Sla", "rules", "service_problems"]

ALWAYS_OPEN = BusinessCalendar.build("UTC", {"mon-sun": "00:00-24:00"})


@dataclass(frozen=True)
class Sla:
    """The SLA that applies to one ticket: its policy's name, targets for its priority, calendar."""

    policy: str
    targets: Targets
    calendar: BusinessCalendar
    warning: Warning


def build_calendar(config: CalendarConfig) -> BusinessCalendar:
    return BusinessCalendar.build(
        config.timezone, config.hours, country=config.country, subdivision=config.subdivision,
        extra_holidays=config.holidays,
    )


def parse_warning(text: str) -> Warning:
    match = WARNING_RE.match(text)
    if match:
        return Warning(share=float(match.group(1)) / 100)
    return Warning(before=parse_duration(text))


def build_statuses(config: Config) -> StatusBook:
    statuses = list(DEFAULT_STATUSES)
    for extra in config.statuses:
        status = Status(
            extra.name, extra.label or extra.name.replace("-", " ").capitalize(),
            Responsibility(extra.responsibility.value), extra.group or extra.name,
        )
        statuses = [s for s in statuses if s.name != status.name] + [status]
    return StatusBook(statuses, config.workflows)


class ServiceRules:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.statuses = build_statuses(config)
        self.calendars = {name: build_calendar(cal) for name, cal in config.calendars.items()}
        self._policies: dict[str, SlaPolicyConfig] = dict(config.sla_policies)
        self._warnings = {name: parse_warning(p.warning) for name, p in config.sla_policies.items()}
        self._org_sla = {o.name: o.sla for o in config.organisations if o.sla}
        self.organisations_have_slas = bool(self._org_sla)

    def policy_name(self, channel: str, organisation: str | None) -> str | None:
        if organisation is not None and organisation in self._org_sla:
            return self._org_sla[organisation]
        conf = self.config.find_channel(channel)
        return conf.sla if conf else None

    def sla(self, channel: str, organisation: str | None, priority: int) -> Sla | None:
        """The SLA of a ticket, or None when neither its organisation nor its channel has one."""
        name = self.policy_name(channel, organisation)
        if name is None:
            return None
        policy = self._policies[name]
        targets = policy.targets_for(priority)
        return Sla(
            name,
            Targets(targets.first_response, targets.next_response, targets.resolution),
            self.calendars[policy.calendar],
            self._warnings[name],
        )

    def calendar(self, channel: str) -> BusinessCalendar:
        """The business hours escalation counts in: the channel's, else its SLA policy's, else 24/7."""
        conf = self.config.find_channel(channel)
        if conf is None:
            return ALWAYS_OPEN
        if conf.calendar is not None:
            return self.calendars[conf.calendar]
        if conf.sla is not None:
            return self.calendars[self._policies[conf.sla].calendar]
        return ALWAYS_OPEN

    def workflow(self, channel: str) -> str | None:
        conf = self.config.find_channel(channel)
        return conf.workflow if conf else None


_cache: dict[int, tuple[Config, ServiceRules]] = {}
_lock = threading.Lock()


def rules(config: Config) -> ServiceRules:
    """The :class:`ServiceRules` of ``config``, built on first use."""
    with _lock:
        hit = _cache.get(id(config))
        if hit is not None and hit[0] is config:
            return hit[1]
        built = ServiceRules(config)
        if len(_cache) > 16:
            _cache.clear()
        _cache[id(config)] = (config, built)
        return built


def _calendar_problems(config: Config) -> list[str]:
    problems = []
    for name, cal in config.calendars.items():
        try:
            build_calendar(cal)
        except ValueError as exc:
            problems.append(f"calendars.{name}: {exc}")
    return problems


def _status_problems(config: Config, statuses: StatusBook) -> list[str]:
    problems = []
    for i, status in enumerate(config.statuses):
        if status.group is not None and status.group not in statuses.statuses:
            problems.append(f"statuses[{i}].group: unknown status {status.group!r}")
    for name, table in config.workflows.items():
        for src, targets in table.items():
            for named in [src, *targets]:
                if named not in statuses.statuses:
                    problems.append(f"workflows.{name}.{src}: unknown status {named!r}")
    return problems


def _policy_problems(config: Config) -> list[str]:
    problems = []
    for name, policy in config.sla_policies.items():
        if policy.calendar not in config.calendars:
            problems.append(f"sla_policies.{name}.calendar: unknown calendar {policy.calendar!r}")
        for key, targets in policy.targets.items():
            for field_name in ("first_response", "next_response", "resolution"):
                value = getattr(targets, field_name)
                if value is not None and value <= timedelta(0):
                    problems.append(f"sla_policies.{name}.targets.{key}.{field_name}: must be positive")
    for i, org in enumerate(config.organisations):
        if org.sla is not None and org.sla not in config.sla_policies:
            problems.append(f"organisations[{i}].sla: unknown SLA policy {org.sla!r}")
    return problems


def _channel_problems(config: Config, statuses: StatusBook) -> list[str]:
    problems = []
    names = {c.name for c in config.channels}
    for i, channel in enumerate(config.channels):
        where = f"channels[{i}]"
        if channel.workflow is not None and channel.workflow not in config.workflows:
            problems.append(f"{where}.workflow: unknown workflow {channel.workflow!r}")
        if channel.sla is not None and channel.sla not in config.sla_policies:
            problems.append(f"{where}.sla: unknown SLA policy {channel.sla!r}")
        if channel.calendar is not None and channel.calendar not in config.calendars:
            problems.append(f"{where}.calendar: unknown calendar {channel.calendar!r}")
        for j, step in enumerate(channel.escalation):
            if step.move_to is not None and step.move_to not in names:
                problems.append(f"{where}.escalation[{j}].move_to: unknown channel {step.move_to!r}")
        if channel.auto_close_status not in statuses.statuses or not statuses.is_done(channel.auto_close_status):
            problems.append(f"{where}.auto_close_status: {channel.auto_close_status!r} is not a done status")
    return problems


def service_problems(config: Config) -> list[str]:
    """Located problems of statuses, workflows, calendars, SLA policies and their use by channels."""
    statuses = build_statuses(config)
    return (
        _calendar_problems(config) + _status_problems(config, statuses)
        + _policy_problems(config) + _channel_problems(config, statuses)
    )
