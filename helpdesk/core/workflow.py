"""Ticket statuses, the responsibility each carries, and the transitions a workflow permits.

Every status says where the ball is: with us (the SLA clock runs), with the customer (it pauses),
or nowhere (done: it stops). Sub-statuses such as *Development* belong to a main status (*Open*)
and share its place in the life of a ticket. Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from helpdesk.core.sla import Responsibility

__all__ = ["DEFAULT_STATUSES", "Status", "StatusBook", "TransitionRefused"]


@dataclass(frozen=True)
class Status:
    name: str
    label: str
    responsibility: Responsibility
    group: str  # the main status; its own name for a main status


US, CUSTOMER, DONE = Responsibility.US, Responsibility.CUSTOMER, Responsibility.DONE

DEFAULT_STATUSES: tuple[Status, ...] = (
    Status("new", "New", US, "new"),
    Status("open", "Open", US, "open"),
    Status("elaborating-scope", "Elaborating scope", US, "open"),
    Status("estimate", "Estimate", US, "open"),
    Status("queued-for-fixing", "Queued for fixing", US, "open"),
    Status("development", "Development", US, "open"),
    Status("released", "Released from Development", US, "open"),
    Status("monitoring", "Monitoring", US, "open"),
    Status("pending", "Pending", CUSTOMER, "pending"),
    Status("solved", "Solved", DONE, "solved"),
    Status("closed", "Closed", DONE, "closed"),
)


class TransitionRefused(ValueError):
    """A status change the channel's workflow (or the status set) does not permit."""


class StatusBook:
    """The statuses in use and the transitions of each workflow.

    ``workflows`` maps a workflow name to ``{from_status: [to_status, ...]}``; a status missing as a
    key may not be left (by a person) in that workflow. A channel without a workflow permits every
    transition between known statuses. ``new`` is never a target: a ticket is new only once.
    """

    def __init__(self, statuses: Iterable[Status], workflows: Mapping[str, Mapping[str, Iterable[str]]]) -> None:
        self.statuses: dict[str, Status] = {}
        for status in statuses:
            self.statuses[status.name] = status
        self.workflows = {
            name: {src: frozenset(dst) for src, dst in table.items()} for name, table in workflows.items()
        }

    def get(self, name: str) -> Status:
        status = self.statuses.get(name)
        if status is None:
            # A status removed from the configuration still on old tickets: treat it as ours.
            return Status(name, name, US, name)
        return status

    def responsibility(self, name: str) -> Responsibility:
        return self.get(name).responsibility

    def is_done(self, name: str) -> bool:
        return self.responsibility(name) is DONE

    def label(self, name: str) -> str:
        status = self.get(name)
        if status.group != status.name and status.group in self.statuses:
            return f"{self.statuses[status.group].label} / {status.label}"
        return status.label

    def names(self) -> list[str]:
        return list(self.statuses)

    def check(self, workflow: str | None, current: str, target: str) -> None:
        """Raise :class:`TransitionRefused` with a message a person can act on."""
        if target not in self.statuses:
            raise TransitionRefused(f"unknown status {target!r} (use one of {', '.join(self.targets())})")
        if target == "new":
            raise TransitionRefused("a ticket cannot go back to new")
        if workflow is None or current == target:
            return
        allowed = self.workflows.get(workflow, {}).get(current, frozenset())
        if target not in allowed:
            options = ", ".join(sorted(allowed)) or "none"
            raise TransitionRefused(
                f"workflow {workflow!r} does not permit {current} -> {target} (from {current}: {options})"
            )

    def targets(self) -> list[str]:
        return [name for name in self.statuses if name != "new"]
