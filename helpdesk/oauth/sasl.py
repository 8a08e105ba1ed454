"""The SASL mechanisms that carry an OAuth 2.0 bearer token: XOAUTH2 (Google, Microsoft) and
OAUTHBEARER (RFC 7628). Pure functions: the initial client responses, and the server's error reply."""

from __future__ import annotations

import base64
import json
from typing import Literal

Mechanism = Literal["xoauth2", "oauthbearer"]


def xoauth2(user: str, token: str) -> bytes:
    """``user={user}^Aauth=Bearer {token}^A^A`` (unencoded)."""
    return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()


def oauthbearer(user: str, token: str, host: str = "", port: int | None = None) -> bytes:
    """RFC 7628 section 3.1: ``n,a={user},^Ahost=..^Aport=..^Aauth=Bearer {token}^A^A`` (unencoded)."""
    authzid = user.replace("=", "=3D").replace(",", "=2C")
    parts = [f"n,a={authzid},"]
    if host:
        parts.append(f"host={host}")
    if port is not None:
        parts.append(f"port={port}")
    parts.append(f"auth=Bearer {token}")
    return ("\x01".join(parts) + "\x01\x01").encode()


def initial_response(mechanism: Mechanism, user: str, token: str, host: str = "", port: int | None = None) -> bytes:
    if mechanism == "oauthbearer":
        return oauthbearer(user, token, host, port)
    return xoauth2(user, token)


def encoded(mechanism: Mechanism, user: str, token: str, host: str = "", port: int | None = None) -> str:
    """The initial response, base64 as it goes on an AUTH command line."""
    return base64.b64encode(initial_response(mechanism, user, token, host, port)).decode("ascii")


def error_status(challenge: bytes | str) -> str | None:
    """The ``status`` of a server's JSON error challenge (base64 or plain), e.g. ``"invalid_token"``."""
    text = challenge.decode("ascii", "replace") if isinstance(challenge, bytes) else challenge
    text = text.strip()
    for candidate in (text, _unbase64(text)):
        try:
            data = json.loads(candidate)
        except (ValueError, TypeError):
            continue
        if isinstance(data, dict) and "status" in data:
            return str(data["status"])
    return None


def _unbase64(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except ValueError:
        return ""
