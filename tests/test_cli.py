"""The helpdesk command: single pass, exports, quarantine handling, route test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpdesk import cli
from helpdesk.intake.steps import NO_SENDER
from tests.conftest import base_config, mailbox_entry
from tests.mailgen import make_mail

pytestmark = pytest.mark.dovecot


@pytest.fixture
def setup(tmp_path: Path, dovecot: Any, mail_user: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = base_config()
    data["channels"][0]["mailboxes"] = [mailbox_entry(dovecot, mail_user)]
    data["database_url"] = f"sqlite:///{tmp_path / 'hd.db'}"
    data["smtp"] = {"host": "127.0.0.1", "port": 9, "tls": "none", "retry_for": "0s", "timeout": 2}
    path = tmp_path / "channels.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.delenv("HELPDESK_DATABASE_URL", raising=False)
    dovecot.append(mail_user, make_mail(message_id="one@acme.example"))
    dovecot.append(mail_user, make_mail(message_id="two@acme.example", in_reply_to="one@acme.example"))
    dovecot.append(mail_user, make_mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"}))
    dovecot.append(mail_user, b"To: sales@example.test\r\nSubject: anonymous\r\n\r\nwho sent this?\r\n")
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_single_pass_and_exports(setup: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "-c", str(setup), "run", "--once")
    assert code == 0 and "imported 4 message(s)" in out and "outbox: 0 sent, 0 deferred, 1 failed" in out
    _, out, _ = run(capsys, "-c", str(setup), "messages", "export", "--format", "json")
    messages = json.loads(out)
    assert [m["outcome"] for m in messages] == ["ticket", "follow_up", "auto_reply", "quarantined"]
    assert messages[1]["ticket"] == "SUP-1" and messages[0]["message_id"] == "one@acme.example"
    _, out, _ = run(capsys, "-c", str(setup), "tickets", "export", "--format", "json")
    [ticket] = json.loads(out)
    assert ticket["number"] == "SUP-1"
    assert [(i["direction"], i["kind"], i["visibility"]) for i in ticket["items"]] == [
        ("inbound", "message", "customer"),
        ("outbound", "auto_reply", "customer"),  # the acknowledgement
        ("inbound", "message", "customer"),
        ("internal", "system", "internal"),  # the acknowledgement could not be delivered
    ]
    ids = [i["message_id"] for i in ticket["items"]]
    assert (ids[0], ids[2]) == ("one@acme.example", "two@acme.example") and ids[1].endswith("@example.test")

    # Nothing listens on the configured SMTP port and retries are off: the acknowledgement failed.
    code, out, err = run(capsys, "-c", str(setup), "outbox", "list")
    [line] = out.splitlines()
    mail_id, _at, state, kind, number, recipient, _attempts, error = line.split("\t")
    assert (state, kind, number, recipient) == ("failed", "ack", "SUP-1", "alice@acme.example")
    assert "refused" in error and "1 mail(s)" in err
    _, out, _ = run(capsys, "-c", str(setup), "outbox", "show", mail_id)
    assert "Auto-Submitted: auto-replied" in out and "[SUP-1]" in out
    assert run(capsys, "-c", str(setup), "outbox", "retry", mail_id)[0] == 0
    _, out, _ = run(capsys, "-c", str(setup), "outbox", "list", "--state", "queued")
    assert out.split("\t")[0] == mail_id
    assert run(capsys, "-c", str(setup), "outbox", "retry", mail_id)[0] == 1  # not failed any more

    code, out, err = run(capsys, "-c", str(setup), "quarantine", "list")
    assert "no usable sender address" in out and "1 message(s) in quarantine" in err
    raw_id = out.split("\t", 1)[0]
    code, out, _ = run(capsys, "-c", str(setup), "quarantine", "show", raw_id)
    assert json.loads(out)["error"] == f"{NO_SENDER}: channel sales accepts mail from known contacts only"
    target = tmp_path / "q.eml"
    run(capsys, "-c", str(setup), "quarantine", "export", raw_id, "-o", str(target))
    assert b"who sent this?" in target.read_bytes()
    code, out, _ = run(capsys, "-c", str(setup), "quarantine", "retry", raw_id)
    assert code == 1 and "quarantined" in out  # still no sender: stays, with its reason


def test_route_test_explains_and_writes_nothing(
    setup: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "-c", str(setup), "run", "--once")
    mail = tmp_path / "reply.eml"
    mail.write_bytes(make_mail(subject="Re: urgent", in_reply_to="one@acme.example", message_id="x@acme.example"))
    code, out, _ = run(capsys, "-c", str(setup), "route", "test", str(mail))
    assert code == 0
    assert "classification: customer" in out
    assert "thread:         SUP-1 by In-Reply-To <one@acme.example>" in out
    assert "rule:           urgent-subject" in out
    assert "outcome:        follow_up" in out
    _, out, _ = run(capsys, "-c", str(setup), "messages", "export")
    assert "x@acme.example" not in out
