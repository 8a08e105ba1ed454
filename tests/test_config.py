"""channels.yaml validation: every problem reported with its location."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdesk import cli
from helpdesk.config import ConfigError, load, missing_secrets, parse_duration, validate
from tests.conftest import base_config

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_channels_yaml_is_valid() -> None:
    config = load(ROOT / "channels.yaml")
    assert config.listener.enabled and config.listener.host == "127.0.0.1"
    assert [c.prefix for c in config.channels] == ["SUP", "SAL"]


def test_every_problem_is_reported_with_its_location(tmp_path: Path) -> None:
    data = base_config()
    data["channels"][0]["mailboxes"] = [
        {"name": "a", "kind": "imap", "user": "u", "password": "${PW}"},  # host missing
        {"name": "b", "kind": "pop3", "host": "h", "user": "u", "password": "plain-secret"},
    ]
    data["channels"][1]["prefix"] = "lower"
    data["channels"].append({"name": "third", "prefix": "THD", "addresses": ["not-an-address"]})
    with pytest.raises(ConfigError) as err:
        validate(data, "channels.yaml")
    problems = err.value.problems
    assert "channels[0].mailboxes[0]: an imap mailbox needs host" in problems
    assert any(p.startswith("channels[0].mailboxes[1].password: must be an environment reference") for p in problems)
    assert any(p.startswith("channels[1].prefix:") for p in problems)
    assert any(p.startswith("channels[2].addresses: not a mail address") for p in problems)
    assert len(problems) == 4


def test_cross_checks_name_the_conflict() -> None:
    data = base_config()
    data["channels"][1]["addresses"] = ["support@example.test"]
    data["channels"][0]["rules"][0]["set"]["channel"] = "nowhere"
    with pytest.raises(ConfigError) as err:
        validate(data)
    text = " ".join(err.value.problems)
    assert "support@example.test belongs to both support and sales" in text
    assert "channels[0].rules[0].set.channel: unknown channel 'nowhere'" in text


def test_pop3_cannot_move_or_flag() -> None:
    data = base_config()
    data["channels"][0]["mailboxes"] = [
        {"name": "p", "kind": "pop3", "host": "h", "user": "u", "password": "${PW}", "after_import": "move"}
    ]
    with pytest.raises(ConfigError, match=r"channels\[0\]\.mailboxes\[0\]: POP3 has no folders"):
        validate(data)


def test_defaults_per_kind() -> None:
    data = base_config()
    data["channels"][0]["mailboxes"] = [
        {"name": "i", "kind": "imap", "host": "h", "user": "u", "password": "${PW}"},
        {"name": "p", "kind": "pop3", "host": "h", "user": "u", "password": "${PW}", "tls": "none"},
    ]
    boxes = [m for _c, m in validate(data).mailboxes()]
    assert (boxes[0].action, boxes[0].effective_port) == ("move", 993)
    assert (boxes[1].action, boxes[1].effective_port) == ("delete", 110)


def test_missing_secret_is_named() -> None:
    data = base_config()
    data["channels"][0]["mailboxes"] = [
        {"name": "i", "kind": "imap", "host": "h", "user": "u", "password": "${NOPE_PW}"}
    ]
    assert missing_secrets(validate(data), {"HELPDESK_REPLY_SECRET": "s"}) == [
        "channels[0].mailboxes[0].password: environment variable NOPE_PW is not set"
    ]
    assert missing_secrets(validate(data), {"NOPE_PW": "x"}) == [
        "reply_secret: environment variable HELPDESK_REPLY_SECRET is not set"
    ]


def test_staff_mistakes_are_located() -> None:
    data = base_config(
        staff=[
            {"name": "bob", "addresses": ["bob@example.test"], "channels": ["nowhere"]},
            {"name": "bob", "addresses": ["support@example.test"]},
            {"name": "Eve Smith", "addresses": ["eve@example.test"]},
        ]
    )
    with pytest.raises(ConfigError) as err:
        validate(data)
    text = "\n".join(err.value.problems)
    assert "staff.2.name" in text.replace("[", ".").replace("]", "") or "staff[2].name" in text
    data["staff"].pop()
    with pytest.raises(ConfigError) as err:
        validate(data)
    text = "\n".join(err.value.problems)
    assert "staff name 'bob' is used more than once" in text
    assert "staff[0].channels: unknown channel 'nowhere'" in text
    assert "staff[1].addresses: support@example.test is one of the system's own addresses" in text


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("channels:\n  - name: x\n   prefix: [\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert err.value.problems[0].startswith("line ")


def test_durations() -> None:
    assert parse_duration("14d").days == 14
    assert parse_duration(90).total_seconds() == 90
    assert parse_duration("PT3H").total_seconds() == 3 * 3600  # ISO 8601 as well
    for bad in ("soon", "P", "Pfoo"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_check_config_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HELPDESK_REPLY_SECRET", raising=False)
    assert cli.main(["check-config", str(ROOT / "channels.yaml")]) == 1
    assert "reply_secret: environment variable HELPDESK_REPLY_SECRET is not set" in capsys.readouterr().err
    monkeypatch.setenv("HELPDESK_REPLY_SECRET", "a-long-random-secret")
    assert cli.main(["check-config", str(ROOT / "channels.yaml")]) == 0
    bad = tmp_path / "channels.yaml"
    bad.write_text("channels:\n  - name: support\n    addresses: [support@example.test]\n")
    assert cli.main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}: channels[0].prefix: Field required" in err


def _oauth_config(**provider: object) -> dict[str, object]:
    data = base_config()
    data["oauth"] = {"m365": {"kind": "microsoft", "tenant": "contoso.onmicrosoft.com", "client_id": "c1", **provider}}
    return data


def test_oauth_providers_and_mailboxes_are_checked_with_their_locations() -> None:
    data = _oauth_config(client_secret="${M365_SECRET}", certificate="/etc/helpdesk/app.pem")
    data["oauth"]["google"] = {"kind": "refresh_token", "client_id": "g"}  # type: ignore[index]
    data["oauth"]["fixed"] = {"kind": "static", "token": "eyJ0eXAi-inline"}  # type: ignore[index]
    data["channels"][0]["mailboxes"] = [
        {"name": "m365", "kind": "graph", "user": "support@contoso.com"},  # Graph without OAuth
        {"name": "gmail", "kind": "imap", "host": "imap.gmail.com", "user": "s@x.org", "auth": "oauth2"},
        {"name": "ex", "kind": "ews", "user": "s@x.org", "password": "${EX_PW}"},  # no endpoint
        {"name": "typo", "kind": "imap", "host": "h", "user": "u", "auth": "oauth2", "oauth": "m356"},
    ]
    data["channels"][1]["send_through"] = "typo"
    data["smtp"] = {"auth": "oauth2", "oauth": "m365"}
    with pytest.raises(ConfigError) as err:
        validate(data, "channels.yaml")
    problems = err.value.problems
    assert "oauth.m365: a microsoft provider needs exactly one of client_secret and certificate" in problems
    assert "oauth.google: a refresh_token provider needs token_url, refresh_token" in problems
    assert any(p.startswith("oauth.fixed.token: must be an environment reference") for p in problems)
    assert any(p.startswith("channels[0].mailboxes[0]: Microsoft Graph takes only OAuth") for p in problems)
    assert any(p.startswith("channels[0].mailboxes[1]: auth: oauth2 needs oauth:") for p in problems)
    assert any(p.startswith("channels[0].mailboxes[2]: an ews mailbox needs service_endpoint") for p in problems)
    assert any(p.startswith("smtp: auth: oauth2 needs user") for p in problems)
    assert len(problems) == 7, problems

    # With the fields fixed, the cross-checks name unknown providers and mailboxes that cannot send.
    fixed = _oauth_config(client_secret="${M365_SECRET}")
    fixed["channels"][0]["mailboxes"] = [
        {"name": "typo", "kind": "imap", "host": "h", "user": "u", "auth": "oauth2", "oauth": "m356"},
    ]
    fixed["channels"][1]["send_through"] = "typo"
    with pytest.raises(ConfigError) as err:
        validate(fixed, "channels.yaml")
    text = " ".join(err.value.problems)
    assert "channels[0].mailboxes[0].oauth: unknown provider 'm356'" in text
    assert "channels[1].send_through: imap mailbox 'typo' (only graph and ews mailboxes send)" in text


def test_graph_mailbox_defaults_and_secrets_of_providers() -> None:
    data = _oauth_config(certificate="/etc/helpdesk/app.pem", certificate_password="${CERT_PW}")
    data["oauth"]["google"] = {  # type: ignore[index]
        "kind": "refresh_token", "token_url": "https://oauth2.googleapis.com/token", "client_id": "g",
        "client_secret": "${G_SECRET}", "refresh_token": "${G_REFRESH}",
    }
    data["channels"][0]["mailboxes"] = [
        {"name": "m365", "kind": "graph", "user": "support@contoso.com", "auth": "oauth2", "oauth": "m365"},
    ]
    data["channels"][0]["send_through"] = "m365"
    config = validate(data)
    box = config.channels[0].mailboxes[0]
    assert box.poll_interval == 10.0 and box.action.value == "move" and box.folder == "INBOX"
    assert box.endpoint == "https://graph.microsoft.com/v1.0"
    assert config.mailbox("m365") is box and config.mailbox("nope") is None
    assert missing_secrets(config, {"HELPDESK_REPLY_SECRET": "x", "G_SECRET": "s"}) == [
        "oauth.m365.certificate_password: environment variable CERT_PW is not set",
        "oauth.google.refresh_token: environment variable G_REFRESH is not set",
    ]
