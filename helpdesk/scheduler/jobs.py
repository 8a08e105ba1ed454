"""The scheduler's jobs: module-level functions that take ids, so a job is just a name and arguments.

Each job finds the running daemon it belongs to by the id it was registered under and calls it;
the daemon does the work (and its error handling). This keeps APScheduler's job table free of
bound methods and lets a job outlive a configuration reload (the daemon behind the id changes).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Runner", "poll_mailbox", "register", "send_outbox", "sweep_due", "unregister"]


class Runner(Protocol):
    def poll_mailbox(self, mailbox: str) -> None: ...

    def send_outbox(self) -> None: ...

    def sweep_due(self) -> None: ...


_runners: dict[str, Runner] = {}


def register(runner_id: str, runner: Runner) -> None:
    _runners[runner_id] = runner


def unregister(runner_id: str) -> None:
    _runners.pop(runner_id, None)


def poll_mailbox(runner_id: str, mailbox: str) -> None:
    """Poll one mailbox that has no IDLE (POP3, or IMAP with ``idle: false``)."""
    runner = _runners.get(runner_id)
    if runner is not None:
        runner.poll_mailbox(mailbox)


def send_outbox(runner_id: str) -> None:
    runner = _runners.get(runner_id)
    if runner is not None:
        runner.send_outbox()


def sweep_due(runner_id: str) -> None:
    """Fire due SLA warnings and breaches, escalations, reminders and auto-closes."""
    runner = _runners.get(runner_id)
    if runner is not None:
        runner.sweep_due()
