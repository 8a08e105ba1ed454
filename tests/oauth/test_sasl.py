"""The SASL initial responses that carry a bearer token, and reading a server's error challenge."""

from __future__ import annotations

import base64

from helpdesk.oauth import sasl


def test_xoauth2_initial_response_is_the_documented_layout() -> None:
    # Google's and Microsoft's documentation: base64("user=" + user + "^Aauth=Bearer " + token + "^A^A")
    raw = sasl.xoauth2("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg")
    assert raw == b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"
    assert base64.b64decode(sasl.encoded("xoauth2", "someuser@example.com", "tok")) == (
        b"user=someuser@example.com\x01auth=Bearer tok\x01\x01"
    )


def test_oauthbearer_follows_rfc7628_and_escapes_the_authzid() -> None:
    raw = sasl.oauthbearer("a,b=c@example.com", "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", "server.example.com", 143)
    assert raw == (
        b"n,a=a=2Cb=3Dc@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01"
    )
    assert sasl.initial_response("oauthbearer", "u@x.org", "t") == b"n,a=u@x.org,\x01auth=Bearer t\x01\x01"


def test_error_status_reads_plain_and_base64_challenges() -> None:
    challenge = b'{"status":"invalid_token","schemes":"bearer","scope":"https://mail.google.com/"}'
    assert sasl.error_status(challenge) == "invalid_token"
    assert sasl.error_status(base64.b64encode(challenge)) == "invalid_token"
    assert sasl.error_status(b"+ ") is None
