"""``helpdesk mailbox test NAME``: every step reported, the first failure explained, exit code 0 only
when all pass. Against the real Dovecot, a real SMTP server, the local identity endpoint and the local
Graph endpoint."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpdesk import cli
from tests.conftest import base_config, mailbox_entry
from tests.servers.graph import GraphServer
from tests.servers.identity import IdentityServer
from tests.servers.smtp import SmtpSink

GRAPH_ADDRESS = "support@contoso.example"


def run_test(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], name: str) -> tuple[int, str]:
    path = tmp_path / "channels.yaml"
    path.write_text(yaml.safe_dump(data))
    code = cli.main(["--config", str(path), "mailbox", "test", name])
    out = capsys.readouterr().out
    return code, out


def statuses(out: str) -> list[tuple[str, str]]:
    """(status, step) per step line."""
    found = []
    for line in out.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2 and parts[0] in ("OK", "FAIL", "SKIP"):
            found.append((parts[0], parts[1].split(":")[0]))
    return found


def failing(out: str) -> str:
    """The failed step's line and its advice."""
    lines = out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.strip().startswith("FAIL"))
    return "\n".join(lines[index : index + 2])


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as server:
        yield server


def imap_config(dovecot: Any, user: str, sink: SmtpSink, **box: Any) -> dict[str, Any]:
    data = base_config(smtp={"host": sink.host, "port": sink.port, "tls": "none"})
    data["channels"][0]["mailboxes"] = [mailbox_entry(dovecot, user, **box)]
    return data


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- IMAP and POP3 ---------------------------------------------------------------------------------


@pytest.mark.dovecot
def test_working_imap_mailbox_passes_every_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dovecot: Any, mail_user: str, sink: SmtpSink
) -> None:
    code, out = run_test(tmp_path, capsys, imap_config(dovecot, mail_user, sink), f"imap-{mail_user}")
    assert code == 0, out
    assert [s for s, _ in statuses(out)] == ["OK"] * 7
    assert [step for _, step in statuses(out)] == [
        "resolve 127.0.0.1", "connect to 127.0.0.1", "TLS", f"authenticate as {mail_user}", "open folder INBOX",
        "may move messages", "may send (SMTP relay)",
    ]
    assert "created Processed" in out and "all checks passed" in out
    assert dovecot.message_count(mail_user, "Processed") == 0  # the folder exists now


@pytest.mark.dovecot
def test_implicit_tls_is_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dovecot: Any, mail_user: str, sink: SmtpSink
) -> None:
    data = imap_config(dovecot, mail_user, sink, tls="implicit", port=dovecot.imaps_port)
    code, out = run_test(tmp_path, capsys, data, f"imap-{mail_user}")
    assert code == 1
    assert "FAIL  TLS: the server's certificate is not trusted" in out
    assert "ca_file" in failing(out)
    assert statuses(out)[-1][0] == "SKIP"
    data["channels"][0]["mailboxes"][0]["ca_file"] = str(dovecot.cert_path)
    code, out = run_test(tmp_path, capsys, data, f"imap-{mail_user}")
    assert code == 0, out
    assert "OK    TLS: TLSv1.3" in out or "OK    TLS: TLSv1.2" in out


@pytest.mark.dovecot
@pytest.mark.parametrize(
    ("change", "step", "explanation"),
    [
        ({"host": "mail.helpdesk-test.invalid"}, "resolve mail.helpdesk-test.invalid", "cannot resolve"),
        ({"port": "free"}, "connect to 127.0.0.1", "cannot connect"),
        ({"password": "${HD_TEST_WRONG_PASSWORD}"}, "authenticate as", "login refused"),
        ({"folder": "Nowhere"}, "open folder Nowhere", "cannot open Nowhere"),
    ],
)
def test_each_imap_failure_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dovecot: Any, mail_user: str, sink: SmtpSink,
    change: dict[str, Any], step: str, explanation: str,
) -> None:
    os.environ["HD_TEST_WRONG_PASSWORD"] = "not-the-password"
    if change.get("port") == "free":
        change = {"port": free_port()}
    code, out = run_test(tmp_path, capsys, imap_config(dovecot, mail_user, sink, **change), f"imap-{mail_user}")
    assert code == 1
    text = failing(out)
    assert text.strip().startswith(f"FAIL  {step}") and explanation in text, out
    assert "->" in text  # what to do
    after = statuses(out)[[s for _, s in statuses(out)].index(next(s for st, s in statuses(out) if st == "FAIL")) + 1:]
    assert after and all(status == "SKIP" for status, _ in after)
    assert "the mailbox is not usable as configured" in out


@pytest.mark.dovecot
def test_pop3_mailbox_and_a_relay_that_is_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dovecot: Any, mail_user: str, sink: SmtpSink
) -> None:
    data = imap_config(dovecot, mail_user, sink, kind="pop3")
    code, out = run_test(tmp_path, capsys, data, f"pop3-{mail_user}")
    assert code == 0, out
    assert "UIDL supported" in out and "may delete messages" in out
    data["smtp"]["port"] = free_port()
    code, out = run_test(tmp_path, capsys, data, f"pop3-{mail_user}")
    assert code == 1
    assert failing(out).strip().startswith("FAIL  may send (SMTP relay): connection refused")


# --- OAuth and Graph -------------------------------------------------------------------------------


def jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT-shaped token: what Microsoft issues carries the granted roles like this."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'typ': 'JWT', 'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.fixture
def graph() -> Iterator[GraphServer]:
    with GraphServer() as server:
        server.add_mailbox(GRAPH_ADDRESS)
        yield server


def graph_config(server: GraphServer, token: str, sends: bool = True, **box: Any) -> dict[str, Any]:
    server.tokens.add(token)
    os.environ["HD_TEST_CHECK_TOKEN"] = token
    data = base_config(oauth={"m365": {"kind": "static", "token": "${HD_TEST_CHECK_TOKEN}"}})
    data["channels"][0]["mailboxes"] = [{
        "name": "m365", "kind": "graph", "user": GRAPH_ADDRESS, "auth": "oauth2", "oauth": "m365",
        "graph_url": server.url, "timeout": 10, **box,
    }]
    if sends:
        data["channels"][0]["send_through"] = "m365"
    return data


def test_working_graph_mailbox(tmp_path: Path, capsys: pytest.CaptureFixture[str], graph: GraphServer) -> None:
    token = jwt({"roles": ["Mail.ReadWrite", "Mail.Send"], "aud": "https://graph.microsoft.com"})
    code, out = run_test(tmp_path, capsys, graph_config(graph, token), "m365")
    assert code == 0, out
    assert [step for _, step in statuses(out)] == [
        "resolve 127.0.0.1", "connect to 127.0.0.1", "TLS", "obtain OAuth token",
        f"open folder INBOX of {GRAPH_ADDRESS}", "may move messages", "may send",
    ]
    assert "roles: Mail.ReadWrite, Mail.Send" in out and "Mail.Send granted" in out
    assert graph.folder_id(GRAPH_ADDRESS, "Processed") is not None
    assert token not in out


@pytest.mark.parametrize(
    ("setup", "step", "explanation"),
    [
        ("forbid", "open folder INBOX", "InScope"),
        ("unknown mailbox", "open folder INBOX", "no mailbox with this address"),
        ("no Mail.Send", "may send", "add the Mail.Send application permission"),
        ("no Mail.ReadWrite", "may move messages", "add the Mail.ReadWrite application permission"),
    ],
)
def test_each_graph_failure_is_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], graph: GraphServer, setup: str, step: str, explanation: str
) -> None:
    roles = {"no Mail.Send": ["Mail.ReadWrite"], "no Mail.ReadWrite": ["Mail.Send"]}.get(
        setup, ["Mail.ReadWrite", "Mail.Send"]
    )
    data = graph_config(graph, jwt({"roles": roles}))
    if setup == "forbid":
        graph.forbid(GRAPH_ADDRESS)
    if setup == "unknown mailbox":
        data["channels"][0]["mailboxes"][0]["user"] = "nobody@contoso.example"
        step = "open folder INBOX of nobody@contoso.example"
    code, out = run_test(tmp_path, capsys, data, "m365")
    assert code == 1
    text = failing(out)
    assert text.strip().startswith(f"FAIL  {step}") and explanation in text, out


@pytest.mark.parametrize(
    ("provider", "explanation"),
    [
        ({"client_secret": "${HD_TEST_CHECK_SECRET}"}, "AADSTS7000215: the client secret is wrong"),
        ({"client_secret": "${HD_TEST_CHECK_RIGHT}", "tenant": "fabrikam.example"}, "AADSTS90002: the tenant"),
        ({"client_secret": "${HD_TEST_CHECK_RIGHT}", "client_id": "someone-else"}, "AADSTS700016"),
    ],
)
def test_identity_platform_failures_are_explained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], graph: GraphServer, identity: IdentityServer,
    provider: dict[str, Any], explanation: str,
) -> None:
    identity.add_client("helpdesk-app", secret="right-secret")
    os.environ["HD_TEST_CHECK_SECRET"] = "the-secret-id-not-its-value"
    os.environ["HD_TEST_CHECK_RIGHT"] = "right-secret"
    data = graph_config(graph, "unused")
    data["oauth"] = {"m365": {
        "kind": "microsoft", "tenant": identity.tenant, "client_id": "helpdesk-app",
        "authority_host": identity.authority_host, "ca_file": str(identity.ca_file), **provider,
    }}
    code, out = run_test(tmp_path, capsys, data, "m365")
    assert code == 1
    text = failing(out)
    assert text.strip().startswith("FAIL  obtain OAuth token") and explanation in text, out
    assert "right-secret" not in out and "the-secret-id-not-its-value" not in out


def test_unknown_mailbox_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "channels.yaml"
    path.write_text(yaml.safe_dump(base_config()))
    assert cli.main(["--config", str(path), "mailbox", "test", "nope"]) == 2
    assert "no mailbox named 'nope'" in capsys.readouterr().err


# --- Exchange Server (EWS) ---------------------------------------------------------------------------


@pytest.fixture
def exchange_server() -> Iterator[Any]:
    from tests.servers.ews import EwsServer

    with EwsServer() as server:
        server.add_mailbox("support@example.test", "s3cret")
        yield server


@pytest.mark.parametrize(("password", "expect"), [("s3cret", "OK"), ("wrong", "refused the login as")])
def test_exchange_mailbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exchange_server: Any, password: str, expect: str
) -> None:
    os.environ["HD_TEST_CHECK_EWS"] = password
    data = base_config(smtp={"host": "127.0.0.1", "port": free_port(), "tls": "none"})
    data["channels"][0]["mailboxes"] = [{
        "name": "exchange", "kind": "ews", "service_endpoint": exchange_server.url, "user": "support@example.test",
        "password": "${HD_TEST_CHECK_EWS}", "ews_auth": "basic", "timeout": 5,
    }]
    data["channels"][0]["send_through"] = "exchange"
    code, out = run_test(tmp_path, capsys, data, "exchange")
    names = [step for _, step in statuses(out)]
    assert names[3].startswith("authenticate as support@example.test and open folder INBOX")
    assert names[-2:] == ["may move messages", "may send"]
    if expect == "OK":
        assert code == 0, out
        assert "Processed is there" in out
    else:
        assert code == 1
        assert expect in failing(out) and "check user, password and ews_auth" in failing(out)
