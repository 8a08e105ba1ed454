"""Fixtures for outgoing mail: real SMTP sinks and an ``SmtpConfig`` pointing at one."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpdesk.config import SmtpConfig
from tests.conftest import require
from tests.servers.certs import openssl_missing
from tests.servers.smtp import SmtpSink, TlsKind

PASSWORD_VARIABLE = "HD_TEST_SMTP_PW"

SinkFactory = Callable[..., SmtpSink]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A running plain-text sink without authentication."""
    with SmtpSink() as sink:
        yield sink


@pytest.fixture
def make_sink() -> Iterator[SinkFactory]:
    """Start sinks with other settings (``make_sink(tls="starttls", require_auth=(...))``); all stop at the end."""
    sinks: list[SmtpSink] = []

    def make(tls: TlsKind = "none", require_auth: tuple[str, str] | None = None, port: int = 0) -> SmtpSink:
        if tls != "none":
            require(openssl_missing())
        sink = SmtpSink(tls=tls, require_auth=require_auth, port=port)
        sinks.append(sink)
        sink.start()
        return sink

    yield make
    for sink in sinks:
        sink.stop()


def smtp_config_for(sink: SmtpSink, **overrides: Any) -> SmtpConfig:
    """An ``SmtpConfig`` for ``sink``: its port and TLS mode, its CA file, its credentials (via $HD_TEST_SMTP_PW)."""
    data: dict[str, Any] = {"host": sink.host, "port": sink.port, "tls": sink.tls, "timeout": 10}
    if sink.cert_path is not None:
        data["ca_file"] = str(sink.cert_path)
    if sink.require_auth is not None:
        user, password = sink.require_auth
        os.environ[PASSWORD_VARIABLE] = password
        data["user"] = user
        data["password"] = f"${{{PASSWORD_VARIABLE}}}"
    data.update(overrides)
    return SmtpConfig.model_validate(data)
