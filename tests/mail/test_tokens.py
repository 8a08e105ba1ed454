"""Signed reply addresses: signing, parsing, verification against the sender, tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpdesk.mail.tokens import Token, TokenKind, find_token, parse_token, reply_address, sign, verify

SECRET = b"0123456789abcdef0123456789abcdef"
CUSTOMER = "Bob.Builder@Example.com"


def address_for(ticket_id: int, recipient: str = CUSTOMER, kind: TokenKind = TokenKind.REPLY) -> str:
    return reply_address("support@example.test", sign(SECRET, kind, ticket_id, recipient))


def test_sign_follows_the_documented_format() -> None:
    digest = hmac.new(SECRET, b"T:1234:bob.builder@example.com", hashlib.sha256).digest()
    expected = base64.b32encode(digest).decode().lower().rstrip("=")[:10]
    assert sign(SECRET, TokenKind.REPLY, 1234, CUSTOMER) == f"T1234.{expected}"
    assert sign(SECRET, TokenKind.NOTE, 1234, CUSTOMER).startswith("N1234.")
    assert sign(SECRET, TokenKind.NOTE, 1234, CUSTOMER) != sign(SECRET, TokenKind.REPLY, 1234, CUSTOMER)


def test_signature_ignores_case_and_whitespace_of_the_recipient() -> None:
    assert sign(SECRET, TokenKind.REPLY, 7, "  BOB@example.COM ") == sign(SECRET, TokenKind.REPLY, 7, "bob@example.com")


def test_reply_address() -> None:
    token = sign(SECRET, TokenKind.REPLY, 1234, CUSTOMER)
    assert reply_address("support@example.test", token) == f"support+{token}@example.test"
    assert reply_address("support+sales@example.test", token) == f"support+{token}@example.test"
    assert reply_address(" support+a+b@example.test ", token) == f"support+{token}@example.test"
    with pytest.raises(ValueError):
        reply_address("support.example.test", token)
    with pytest.raises(ValueError):
        reply_address("support@example.test", "not a token")


def test_round_trip() -> None:
    address = address_for(1234)
    signature = sign(SECRET, TokenKind.REPLY, 1234, CUSTOMER).partition(".")[2]
    assert parse_token(address) == (TokenKind.REPLY, 1234, signature)
    assert verify(address, CUSTOMER, SECRET) == Token(kind=TokenKind.REPLY, ticket_id=1234, address=address)
    note = address_for(99, kind=TokenKind.NOTE)
    assert verify(note, CUSTOMER, SECRET) == Token(kind=TokenKind.NOTE, ticket_id=99, address=note)


def test_token_bound_to_another_recipient_fails() -> None:
    address = address_for(1234, recipient="alice@example.com")
    assert verify(address, "alice@example.com", SECRET) is not None
    assert verify(address, "mallory@example.com", SECRET) is None
    assert verify(address, CUSTOMER, SECRET) is None


def test_tampered_ticket_id_fails() -> None:
    address = address_for(1234)
    assert verify(address.replace("+T1234.", "+T1235."), CUSTOMER, SECRET) is None
    assert verify(address.replace("+T1234.", "+T12340."), CUSTOMER, SECRET) is None
    assert verify(address.replace("+T1234.", "+N1234."), CUSTOMER, SECRET) is None


def test_tampered_signature_and_other_secret_fail() -> None:
    address = address_for(1234)
    local, domain = address.split("@")
    flipped = local[:-1] + ("a" if local[-1] != "a" else "b")
    assert verify(f"{flipped}@{domain}", CUSTOMER, SECRET) is None
    assert verify(address, CUSTOMER, b"another secret") is None


def test_case_folded_addresses_still_verify() -> None:
    address = address_for(1234)
    for variant in (address.lower(), address.upper(), address.swapcase()):
        token = verify(variant, CUSTOMER.upper(), SECRET)
        assert token is not None
        assert (token.kind, token.ticket_id, token.address) == (TokenKind.REPLY, 1234, variant)


@pytest.mark.parametrize(
    "address",
    [
        "",
        "support@example.test",
        "support+sales@example.test",
        "support+T1234@example.test",
        "support+T1234.abcdefghij",
        "support+Tx.abcdefghij@example.test",
        "support+X1234.abcdefghij@example.test",
        "support+T1234.abcdefghi@example.test",
        "support+T1234.abcdefghijk@example.test",
        "support+T1234.abcdefgh01@example.test",
        "support+T01234.abcdefghij@example.test",
        "support+T-1.abcdefghij@example.test",
        "support+T\u0661\u0662.abcdefghij@example.test",
        "+T1234.abcdefghij@example.test",
        "support+x+T1234.abcdefghij@example.test",
        "Support <support+T1234.abcdefghij@example.test>",
        "support+T1234.abcdefghij@a@example.test",
    ],
)
def test_parse_token_rejects_junk(address: str) -> None:
    assert parse_token(address) is None


def test_parse_token_tolerates_brackets_and_whitespace() -> None:
    assert parse_token(" <support+t1234.ABCDEFGHIJ@example.test>\n") == (TokenKind.REPLY, 1234, "abcdefghij")
    assert parse_token("support+N0.abcdefghij@example.test") == (TokenKind.NOTE, 0, "abcdefghij")


def test_find_token_takes_the_first_address_that_verifies() -> None:
    forged = "support+T1.abcdefghij@example.test"
    other = address_for(5, recipient="someone.else@example.com")
    good = address_for(1234)
    second = address_for(77)
    addresses = ["", "   ", "junk", forged, other, f" <{good}> ", second]
    token = find_token(addresses, CUSTOMER, SECRET)
    assert token == Token(kind=TokenKind.REPLY, ticket_id=1234, address=good)
    assert find_token([forged, other], CUSTOMER, SECRET) is None
    assert find_token([], CUSTOMER, SECRET) is None
    assert find_token(iter([good]), CUSTOMER, SECRET) is not None


def test_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        sign(b"", TokenKind.REPLY, 1, CUSTOMER)
    with pytest.raises(ValueError):
        verify(address_for(1), CUSTOMER, b"")
    with pytest.raises(ValueError):
        find_token([address_for(1)], CUSTOMER, b"")


def test_ticket_id_range() -> None:
    with pytest.raises(ValueError):
        sign(SECRET, TokenKind.REPLY, -1, CUSTOMER)
    big = 10**18 - 1
    assert verify(address_for(big), CUSTOMER, SECRET) is not None


@given(
    secret=st.binary(min_size=1, max_size=64),
    kind=st.sampled_from(TokenKind),
    ticket_id=st.integers(min_value=0, max_value=10**18 - 1),
    recipient=st.emails(),
    other=st.emails(),
)
def test_sign_verify_round_trip_property(
    secret: bytes, kind: TokenKind, ticket_id: int, recipient: str, other: str
) -> None:
    address = reply_address("help+desk@example.test", sign(secret, kind, ticket_id, recipient))
    assert parse_token(address) is not None
    expected = Token(kind=kind, ticket_id=ticket_id, address=address)
    assert verify(address, recipient, secret) == expected
    assert verify(address.lower(), recipient.upper(), secret) == Token(kind, ticket_id, address.lower())
    if other.strip().lower() != recipient.strip().lower():
        assert verify(address, other, secret) is None
