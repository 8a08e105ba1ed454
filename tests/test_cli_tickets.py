"""Tickets on the command line and by mail: every clock shown, workflows enforced, snoozing."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine

from helpdesk import cli
from helpdesk.config import Config, validate
from helpdesk.intake.runner import Intake, utcnow
from helpdesk.store.db import make_engine
from helpdesk.store.migrate import upgrade
from tests.conftest import Clock, base_config
from tests.intake.test_mail_out import STAFF, audit_actions, deliver, outbox, parsed, reply_token, text_of
from tests.mailgen import make_mail

WORKFLOW = {
    "new": ["open", "pending"],
    "open": ["pending", "development", "solved"],
    "development": ["open", "solved"],
    "pending": ["open", "solved", "closed"],
    "solved": ["closed", "open"],
}


def desk_config(tmp_path: Path | None = None, **extra: Any) -> dict[str, Any]:
    data = base_config(
        staff=STAFF,
        calendars={"always": {"timezone": "Europe/Berlin", "hours": {"mon-sun": "00:00-24:00"}}},
        sla_policies={
            "standard": {"calendar": "always", "targets": {"default": {"first_response": "4h", "resolution": "2d"}}}
        },
        workflows={"strict": copy.deepcopy(WORKFLOW)},
        **extra,
    )
    data["channels"][0].update({"sla": "standard", "workflow": "strict"})
    if tmp_path is not None:
        data["database_url"] = f"sqlite:///{tmp_path / 'hd.db'}"
    return data


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("HELPDESK_DATABASE_URL", raising=False)
    data = desk_config(tmp_path)
    path = tmp_path / "channels.yaml"
    path.write_text(yaml.safe_dump(data))
    engine = make_engine(data["database_url"])
    upgrade(engine)
    intake = Intake(engine, validate(data), utcnow)
    deliver(intake, make_mail(message_id="one@acme.example"))
    intake.close()
    engine.dispose()
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_show_prints_every_clock_deadline_and_the_history(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1")
    assert code == 0
    assert out.startswith("SUP-1  Printer does not print")
    assert "Status:        New (new; the ball is with us)" in out
    assert "SLA:           policy standard, business hours in Europe/Berlin" in out
    first = next(line for line in out.splitlines() if line.strip().startswith("first response"))
    assert "running" in first and "target 04:00" in first
    resolution = next(line for line in out.splitlines() if line.strip().startswith("resolution"))
    assert "target 48:00" in resolution
    assert "first response due in 0" in out  # "due in 03:59 business hours (...)"
    assert "first_response.warning" in out and "resolution.breach" in out
    assert "created" in out and "customer:alice@acme.example" in out

    code, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "[sup-1]", "--format", "json")
    data = json.loads(out)
    assert [c["name"] for c in data["clocks"]] == ["first_response", "resolution"]
    assert {c["state"] for c in data["clocks"]} == {"running"}
    assert data["responsibility"] == "us" and data["sla_policy"] == "standard"
    kinds = [d["kind"] for d in data["deadlines"]]
    assert kinds[0] == "first_response.warning" and data["next_due_at"] == data["deadlines"][0]["at"]

    assert run(capsys, "-c", str(setup), "tickets", "show", "SUP-99")[0] == 1


def test_status_follows_the_workflow(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "solved")
    assert code == 1
    assert "workflow 'strict' does not permit new -> solved (from new: open, pending)" in err
    code, _, err = run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "bogus")
    assert code == 1 and "unknown status 'bogus'" in err and "development" in err
    code, out, _ = run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "open", "--by", "sam")
    assert code == 0 and "SUP-1: new -> open" in out
    assert run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "development")[0] == 0
    code, out, _ = run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "pending")
    assert code == 1  # development -> pending is not in the workflow
    assert run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "open")[0] == 0
    assert run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "pending")[0] == 0
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1")
    assert "Status:        Pending (pending; the ball is with the customer)" in out
    assert "paused" in out and "waiting for the customer" in out
    assert "staff:sam" in out


def test_development_is_a_sub_status_of_open(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "open")
    run(capsys, "-c", str(setup), "tickets", "status", "SUP-1", "development")
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1")
    assert "Status:        Open / Development (development; the ball is with us)" in out


def test_snooze_plans_a_reminder(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "-c", str(setup), "tickets", "snooze", "SUP-1", "3d")
    assert code == 0 and "snoozed until" in out
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1", "--format", "json")
    data = json.loads(out)
    assert data["snoozed_until"] is not None
    assert "reminder" in [d["kind"] for d in data["deadlines"]]
    code, _, err = run(capsys, "-c", str(setup), "tickets", "snooze", "SUP-1", "2020-01-01")
    assert code == 1 and "not in the future" in err
    assert run(capsys, "-c", str(setup), "tickets", "snooze", "SUP-1", "off")[0] == 0
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1", "--format", "json")
    assert json.loads(out)["snoozed_until"] is None


# --- the same rules by mail ----------------------------------------------------------------------------


@pytest.fixture
def desk(engine: Engine, clock: Clock) -> Intake:
    return Intake(engine, validate(desk_config()), clock)


def staff_says(body: str) -> bytes:
    return make_mail(
        sender="Sam Agent <sam@example.test>", to=reply_token(1, "sam@example.test"),
        subject="Re: [SUP-1] New ticket: Printer does not print", body=body,
    )


def test_mail_command_against_the_workflow_is_refused(desk: Intake, engine: Engine) -> None:
    deliver(desk, make_mail(message_id="first@acme.example"))
    deliver(desk, staff_says("#status solved\n\nAll done.\n"))
    statuses = [a for a in audit_actions(engine) if a[0] == "status_changed"]
    assert statuses == []  # nothing ran, not even the reply
    [error] = outbox(engine, "sam@example.test", kind="command_error")
    text = text_of(parsed(error))
    assert "workflow 'strict' does not permit new -> solved" in text
    assert outbox(engine, "alice@acme.example", kind="reply") == []

    deliver(desk, staff_says("#status open\n#status development\n\nOn it.\n"))
    statuses = [a for a in audit_actions(engine) if a[0] == "status_changed"]
    assert [s[1] for s in statuses] == ["open", "development"]


def test_snooze_by_mail(desk: Intake, engine: Engine, clock: Clock) -> None:
    deliver(desk, make_mail(message_id="first@acme.example"))
    deliver(desk, staff_says("#snooze 2026-03-05\n#note\n\nWaiting for the vendor.\n"))
    snoozes = [a for a in audit_actions(engine) if a[0] == "snoozed_until_changed"]
    assert snoozes == [("snoozed_until_changed", "2026-03-05 07:00:00+00:00", "staff:sam")]  # 08:00 in Berlin
    deliver(desk, staff_says("#snooze tomorrow\n"))
    [error] = outbox(engine, "sam@example.test", kind="command_error")
    assert "#snooze tomorrow: use a duration" in text_of(parsed(error))


def test_unknown_names_in_the_service_config_are_located() -> None:
    data = desk_config()
    data["channels"][0].update({"sla": "gold", "workflow": "loose", "calendar": "nine-to-five"})
    data["channels"][0]["escalation"] = [{"after": "4h", "move_to": "nowhere"}]
    data["sla_policies"]["standard"]["calendar"] = "office"
    data["workflows"]["strict"]["open"] = ["pending", "wip"]
    data["organisations"][0]["sla"] = "platinum"
    data["calendars"]["always"]["timezone"] = "Mars/Olympus"
    with pytest.raises(Exception) as caught:
        validate(data)
    problems = "\n".join(caught.value.problems)  # type: ignore[attr-defined]
    for expected in (
        "channels[0].sla: unknown SLA policy 'gold'",
        "channels[0].workflow: unknown workflow 'loose'",
        "channels[0].calendar: unknown calendar 'nine-to-five'",
        "channels[0].escalation[0].move_to: unknown channel 'nowhere'",
        "sla_policies.standard.calendar: unknown calendar 'office'",
        "workflows.strict.open: unknown status 'wip'",
        "organisations[0].sla: unknown SLA policy 'platinum'",
        "calendars.always: unknown time zone 'Mars/Olympus'",
    ):
        assert expected in problems


def test_bad_service_values_are_located() -> None:
    data = desk_config()
    data["sla_policies"]["standard"]["warning"] = "150%"
    data["sla_policies"]["standard"]["targets"]["9"] = {"first_response": "1h"}
    data["channels"][0]["escalation"] = [{"after": "4h"}]
    data["statuses"] = [{"name": "waiting-vendor", "responsibility": "nobody"}]
    with pytest.raises(Exception) as caught:
        validate(data)
    problems = "\n".join(caught.value.problems)  # type: ignore[attr-defined]
    assert "sla_policies.standard.warning: warning share must lie between 0% and 100%" in problems
    assert "'9' is neither 'default' nor a priority 1-5" in problems
    assert "an escalation step must release the owner, move the ticket, or both" in problems
    assert "statuses[0].responsibility" in problems


def test_operators_add_statuses_with_their_responsibility() -> None:
    from helpdesk.service import rules

    data = desk_config(statuses=[{"name": "waiting-vendor", "label": "Waiting for vendor",
                                  "responsibility": "customer", "group": "pending"}])
    data["workflows"]["strict"]["open"] = ["waiting-vendor", "pending"]
    config: Config = validate(data)
    statuses = rules(config).statuses
    assert statuses.responsibility("waiting-vendor").value == "customer"
    assert statuses.label("waiting-vendor") == "Pending / Waiting for vendor"
    statuses.check("strict", "open", "waiting-vendor")


def test_replan_applies_a_changed_policy(setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1", "--format", "json")
    before = {d["kind"]: d["at"] for d in json.loads(out)["deadlines"]}
    data = yaml.safe_load(setup.read_text())
    data["sla_policies"]["standard"]["targets"]["default"]["first_response"] = "8h"
    setup.write_text(yaml.safe_dump(data))
    code, out, _ = run(capsys, "-c", str(setup), "tickets", "replan")
    assert code == 0 and "deadlines recomputed for 1 ticket(s)" in out
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "show", "SUP-1", "--format", "json")
    after = {d["kind"]: d["at"] for d in json.loads(out)["deadlines"]}
    assert after["resolution.breach"] == before["resolution.breach"]
    shift = datetime.fromisoformat(after["first_response.breach"]) - datetime.fromisoformat(
        before["first_response.breach"]
    )
    assert shift == timedelta(hours=4)


def test_acknowledgement_and_notification_show_the_remaining_business_time(desk: Intake, engine: Engine) -> None:
    deliver(desk, make_mail(message_id="first@acme.example"))
    [ack] = outbox(engine, "alice@acme.example", kind="ack")
    text = text_of(parsed(ack))
    assert "Our response is due in 04:00 business hours (Mon 02 Mar 2026 14:00 CET)." in text
    [notice] = outbox(engine, "sam@example.test", kind="notification")
    text = text_of(parsed(notice))
    assert "SLA:      first response due in 04:00 business hours (Mon 02 Mar 2026 14:00 CET)" in text
    assert "SLA:      resolution due in 48:00 business hours (Wed 04 Mar 2026 10:00 CET)" in text
    html = parsed(notice).get_body(preferencelist=("html",))
    assert html is not None and "first response due in 04:00 business hours" in str(html.get_content())


def test_without_a_policy_mails_promise_no_time(engine: Engine, clock: Clock) -> None:
    data = desk_config()
    data["channels"][0].pop("sla")
    desk = Intake(engine, validate(data), clock)
    deliver(desk, make_mail(message_id="first@acme.example"))
    [ack] = outbox(engine, "alice@acme.example", kind="ack")
    assert "business hours" not in text_of(parsed(ack))
