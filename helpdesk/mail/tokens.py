"""Signed reply addresses: a token in the ``+`` sub-address ties a reply to a ticket and a recipient.

Every mail the helpdesk sends has a Reply-To like ``support+T1234.k3x9q2abcd@example.test``. The
token holds a kind letter, the ticket id and an HMAC-SHA256 signature over kind, ticket id and the
recipient's address, so a reply is accepted for that ticket only from the person it was sent to,
and nobody without the secret can make up a token. Parsing is case-insensitive because mail
servers may change the case of local parts. Pure functions: no IO, no clock, no global state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

SIGNATURE_LENGTH = 10

_TOKEN = re.compile(rf"([TN])(0|[1-9][0-9]{{0,17}})\.([a-z2-7]{{{SIGNATURE_LENGTH}}})", re.IGNORECASE | re.ASCII)
_ADDRESS = re.compile(r"([^@+\s<>]+)\+([^@+\s<>]+)@([^@\s<>]+)", re.ASCII)


class TokenKind(StrEnum):
    REPLY = "T"
    NOTE = "N"


@dataclass(frozen=True)
class Token:
    kind: TokenKind
    ticket_id: int
    address: str


def _signature(secret: bytes, kind: TokenKind, ticket_id: int, recipient: str) -> str:
    if not secret:
        raise ValueError("the reply-address secret must not be empty")
    message = f"{kind.value}:{ticket_id}:{recipient.strip().lower()}".encode()
    digest = hmac.new(secret, message, hashlib.sha256).digest()
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")[:SIGNATURE_LENGTH]


def sign(secret: bytes, kind: TokenKind, ticket_id: int, recipient: str) -> str:
    """The token for a mail about ``ticket_id`` sent to ``recipient``, e.g. ``T1234.k3x9q2abcd``."""
    if isinstance(ticket_id, bool) or ticket_id < 0 or ticket_id >= 10**18:
        raise ValueError(f"ticket id out of range: {ticket_id!r}")
    return f"{kind.value}{ticket_id}.{_signature(secret, kind, ticket_id, recipient)}"


def reply_address(channel_address: str, token: str) -> str:
    """``support@example.test`` + token -> ``support+<token>@example.test``; an existing ``+tag`` is replaced."""
    if not _TOKEN.fullmatch(token):
        raise ValueError(f"not a reply token: {token!r}")
    local, at, domain = channel_address.strip().rpartition("@")
    base = local.partition("+")[0]
    if not at or not base or not domain:
        raise ValueError(f"not a mail address: {channel_address!r}")
    return f"{base}+{token}@{domain}"


def _clean(address: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    return address


def parse_token(address: str) -> tuple[TokenKind, int, str] | None:
    """Kind, ticket id and (lowercased) signature of the token in ``address``; None when it has none.

    Only the syntax is checked: use :func:`verify` to know whether the token is genuine."""
    address_match = _ADDRESS.fullmatch(_clean(address))
    if address_match is None:
        return None
    token_match = _TOKEN.fullmatch(address_match.group(2))
    if token_match is None:
        return None
    kind, ticket_id, signature = token_match.groups()
    return TokenKind(kind.upper()), int(ticket_id), signature.lower()


def verify(address: str, sender: str, secret: bytes) -> Token | None:
    """The token in ``address`` if its signature is valid for ``sender``, else None.

    A token is signed for the recipient of the mail we sent, so only a reply from that same address
    verifies. Raises ValueError for an empty secret."""
    if not secret:
        raise ValueError("the reply-address secret must not be empty")
    parsed = parse_token(address)
    if parsed is None:
        return None
    kind, ticket_id, signature = parsed
    expected = _signature(secret, kind, ticket_id, sender)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        return None
    return Token(kind=kind, ticket_id=ticket_id, address=_clean(address))


def find_token(addresses: Iterable[str], sender: str, secret: bytes) -> Token | None:
    """The first of ``addresses`` (recipients of an incoming mail) that holds a token valid for ``sender``."""
    if not secret:
        raise ValueError("the reply-address secret must not be empty")
    for address in addresses:
        if address and address.strip():
            token = verify(address, sender, secret)
            if token is not None:
                return token
    return None
