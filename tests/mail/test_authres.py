"""Authentication-Results: parsing real-world shapes, trust by authserv-id, alignment with the sender.

The corpus test reads every Authentication-Results header in the shared real-world corpora (also
those of attached messages) and prints one summary line (run with ``-s`` to see it).
"""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from helpdesk.mail.authres import AuthResults, MethodResult, authenticated_domain, parse
from tests.corpora import corpora_dir

GMAIL = """mx.google.com;
       dkim=pass header.i=@example.com header.s=20230601 header.b=AbCd/ef+gh=;
       arc=pass (i=1 spf=pass spfdomain=example.com dkim=pass dkdomain=example.com dmarc=pass fromdomain=example.com);
       spf=pass (google.com: domain of bob@example.com designates 209.85.220.41 as permitted sender)
 smtp.mailfrom=bob@example.com;
       dmarc=pass (p=NONE sp=NONE dis=NONE) header.from=example.com"""
MICROSOFT_365 = (
    "spf=pass (sender IP is 40.107.22.83) smtp.mailfrom=example.com; dkim=pass (signature was verified) "
    "header.d=example.com;dmarc=pass action=none header.from=example.com;compauth=pass reason=100"
)
OPENDKIM = (
    "mail.example.test; dkim=pass (2048-bit key; unprotected) header.d=example.com header.i=@example.com "
    "header.a=rsa-sha256 header.s=mail header.b=AbC1dEf2"
)
OPENDMARC = "mail.example.test; dmarc=pass (p=reject dis=none) header.from=example.com"
POLICYD_SPF = (
    "mail.example.test; spf=pass (sender SPF authorized) smtp.mailfrom=example.com\r\n"
    "\t(client-ip=203.0.113.5; helo=mail.example.com; envelope-from=bob@example.com; receiver=<UNKNOWN>)"
)
RSPAMD = (
    'mx.example.test; dkim=pass header.d=example.com header.s=dkim header.b="Ab/cd"; spf=pass (mx.example.test: '
    'domain of "bob@example.com" designates 198.51.100.7 as permitted sender) smtp.mailfrom=bob@example.com; '
    "dmarc=pass (policy=reject) header.from=example.com"
)

TRUSTED = ("mx.example.test",)
ALL_METHODS = ("dkim", "spf", "dmarc")


def results(header: str) -> list[tuple[str, str, dict[str, str]]]:
    parsed = parse(header)
    assert parsed is not None, header
    return [(r.method, r.result, r.properties) for r in parsed.results]


# =============================================================================================
# parse
# =============================================================================================


def test_parse_gmail() -> None:
    parsed = parse(GMAIL)
    assert parsed is not None
    assert parsed.authserv_id == "mx.google.com"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("dkim", "pass"),
        ("arc", "pass"),
        ("spf", "pass"),
        ("dmarc", "pass"),
    ]
    assert parsed.results[0].properties == {
        "header.i": "@example.com",
        "header.s": "20230601",
        "header.b": "AbCd/ef+gh=",
    }
    assert parsed.results[1].properties == {}
    assert parsed.results[2].properties == {"smtp.mailfrom": "bob@example.com"}
    assert parsed.results[3].properties == {"header.from": "example.com"}


def test_parse_microsoft_365_without_authserv_id() -> None:
    assert parse(MICROSOFT_365) == AuthResults(
        authserv_id="",
        results=(
            MethodResult("spf", "pass", {"smtp.mailfrom": "example.com"}),
            MethodResult("dkim", "pass", {"header.d": "example.com"}),
            MethodResult("dmarc", "pass", {"action": "none", "header.from": "example.com"}),
            MethodResult("compauth", "pass", {"reason": "100"}),
        ),
    )


def test_parse_older_microsoft_365_with_stray_domains() -> None:
    header = (
        "spf=softfail (sender IP is 52.58.62.203)\n smtp.mailfrom=ninomail.com; example.com; dkim=pass (signature was"
        "\n verified) header.d=ninomail.com;example.com; dmarc=none action=none\n header.from=mailgunhq.com;"
    )
    assert results(header) == [
        ("spf", "softfail", {"smtp.mailfrom": "ninomail.com"}),
        ("dkim", "pass", {"header.d": "ninomail.com"}),
        ("dmarc", "none", {"action": "none", "header.from": "mailgunhq.com"}),
    ]


def test_parse_postfix_milters() -> None:
    assert results(OPENDKIM) == [
        (
            "dkim",
            "pass",
            {
                "header.d": "example.com",
                "header.i": "@example.com",
                "header.a": "rsa-sha256",
                "header.s": "mail",
                "header.b": "AbC1dEf2",
            },
        )
    ]
    assert results(OPENDMARC) == [("dmarc", "pass", {"header.from": "example.com"})]
    assert results(POLICYD_SPF) == [("spf", "pass", {"smtp.mailfrom": "example.com"})]


def test_parse_rspamd_with_quotes_in_comments_and_values() -> None:
    assert results(RSPAMD) == [
        ("dkim", "pass", {"header.d": "example.com", "header.s": "dkim", "header.b": "Ab/cd"}),
        ("spf", "pass", {"smtp.mailfrom": "bob@example.com"}),
        ("dmarc", "pass", {"header.from": "example.com"}),
    ]


def test_parse_rfc_8601_examples() -> None:
    assert parse("example.org; none") == AuthResults("example.org", ())
    assert parse("mx.example.test 1; none") == AuthResults("mx.example.test", ())
    assert parse("MX.Example.TEST 1 ;\r\n\tDKIM=Pass header.D=Example.COM") == AuthResults(
        "mx.example.test", (MethodResult("dkim", "pass", {"header.d": "Example.COM"}),)
    )
    assert results(
        "example.com; auth=pass (cram-md5) smtp.auth=sender@example.net; spf=pass smtp.mailfrom=example.net"
    ) == [
        ("auth", "pass", {"smtp.auth": "sender@example.net"}),
        ("spf", "pass", {"smtp.mailfrom": "example.net"}),
    ]
    assert results('example.com; dkim=pass reason="good signature" header.i=@mail-router.example.net') == [
        ("dkim", "pass", {"reason": "good signature", "header.i": "@mail-router.example.net"})
    ]
    assert results("example.com; iprev=pass\n policy.iprev=192.0.2.200") == [
        ("iprev", "pass", {"policy.iprev": "192.0.2.200"})
    ]
    assert results("example.com; dkim/1 = pass (nested (comment) here) header.d = example.net") == [
        ("dkim", "pass", {"header.d": "example.net"})
    ]
    assert parse('"Quoted.Example"; spf=pass smtp.mailfrom="a b\\"c"@example.net') == AuthResults(
        "quoted.example", (MethodResult("spf", "pass", {"smtp.mailfrom": 'a b"c@example.net'}),)
    )


def test_parse_values_with_equals_signs_and_empty_values() -> None:
    assert results("mx.google.com; spf=pass smtp.mail=") == [("spf", "pass", {"smtp.mail": ""})]
    assert results("mx.google.com; spf=pass smtp.mail= smtp.helo=mx.example.net") == [
        ("spf", "pass", {"smtp.mail": "", "smtp.helo": "mx.example.net"})
    ]
    assert results(
        "mx.google.com;\n\tspf=neutral (google.com: ...)\n\tsmtp.mail=mike+caf_=bob=gmail.com@example.com"
    ) == [("spf", "neutral", {"smtp.mail": "mike+caf_=bob=gmail.com@example.com"})]
    assert results("x.example; spf=none (sender IP is ) smtp.mailfrom=<>; ") == [
        ("spf", "none", {"smtp.mailfrom": "<>"})
    ]


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "(only a comment)",
        "; dkim=pass header.d=example.com",
        "mx.example.test; dkim=pass (unclosed comment header.d=example.com",
        'mx.example.test; dkim=pass header.d="unclosed',
        "mx.example.test; dkim=pass header.d",
        "mx.example.test; =pass",
        "mx.example.test; dkim=",
        "mx.example.test; dkim=pass stray words",
        "mx.example.test extra words; dkim=pass header.d=example.com",
        # Old Yahoo format (seen in the corpora): not RFC 8601.
        "mta1007.mail.sp2.yahoo.com  from=reactive-outpost.com; domainkeys=neutral (no sig);  from=x.com; dkim=neutral",
    ],
)
def test_parse_rejects_malformed_headers(header: str) -> None:
    assert parse(header) is None


# =============================================================================================
# authenticated_domain
# =============================================================================================


def test_trusted_aligned_dkim_pass() -> None:
    header = OPENDKIM.replace("mail.example.test", "mx.example.test")
    assert (
        authenticated_domain([header], "bob@example.com", TRUSTED, ("dkim",))
        == "dkim=pass header.d=example.com (mx.example.test)"
    )


def test_each_method_and_its_evidence() -> None:
    headers = [RSPAMD]
    assert authenticated_domain(headers, "bob@example.com", TRUSTED, ("dmarc",)) == (
        "dmarc=pass header.from=example.com (mx.example.test)"
    )
    assert authenticated_domain(headers, "bob@example.com", TRUSTED, ("spf",)) == (
        "spf=pass smtp.mailfrom=bob@example.com (mx.example.test)"
    )
    assert authenticated_domain(headers, "bob@example.com", TRUSTED, ALL_METHODS) == (
        "dkim=pass header.d=example.com (mx.example.test)"
    )
    assert authenticated_domain(headers, "bob@example.com", TRUSTED, ()) is None


def test_authserv_id_is_case_insensitive_and_version_is_ignored() -> None:
    header = "MX.EXAMPLE.TEST 1; dkim=pass header.d=example.com"
    assert authenticated_domain([header], "Bob@Example.COM", ["  Mx.Example.Test "], ["DKIM"]) == (
        "dkim=pass header.d=example.com (mx.example.test)"
    )


def test_forged_header_with_untrusted_authserv_id_is_ignored() -> None:
    forged = "evil.example; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"
    ours = "mx.example.test; dkim=fail header.d=example.com; dmarc=fail header.from=example.com"
    assert authenticated_domain([forged, ours], "bob@example.com", TRUSTED, ALL_METHODS) is None
    assert authenticated_domain([forged], "bob@example.com", ["evil.example"], ALL_METHODS) is not None


def test_gmail_header_trusted_only_when_listed() -> None:
    assert authenticated_domain([GMAIL], "bob@example.com", TRUSTED, ALL_METHODS) is None
    assert authenticated_domain([GMAIL], "bob@example.com", ["mx.google.com"], ALL_METHODS) == (
        "dkim=pass header.i=@example.com (mx.google.com)"
    )


def test_header_without_authserv_id_is_never_trusted() -> None:
    assert authenticated_domain([MICROSOFT_365], "bob@example.com", ["", " "], ALL_METHODS) is None
    assert authenticated_domain([MICROSOFT_365], "bob@example.com", ["", *TRUSTED], ALL_METHODS) is None
    ours = f"mx.example.test; {MICROSOFT_365}"
    assert authenticated_domain([ours], "bob@example.com", TRUSTED, ("spf",)) == (
        "spf=pass smtp.mailfrom=example.com (mx.example.test)"
    )


def test_empty_trust_list_trusts_nothing() -> None:
    assert authenticated_domain([RSPAMD], "bob@example.com", [], ALL_METHODS) is None
    assert authenticated_domain([RSPAMD], "bob@example.com", frozenset(), ALL_METHODS) is None


@pytest.mark.parametrize("result", ["fail", "softfail", "neutral", "none", "temperror", "permerror", "policy"])
def test_results_other_than_pass_are_ignored(result: str) -> None:
    header = (
        f"mx.example.test; dkim={result} header.d=example.com; spf={result} smtp.mailfrom=bob@example.com; "
        f"dmarc={result} header.from=example.com"
    )
    assert authenticated_domain([header], "bob@example.com", TRUSTED, ALL_METHODS) is None


@pytest.mark.parametrize(
    ("dkim", "sender", "aligned"),
    [
        ("header.d=example.com", "bob@example.com", True),
        ("header.d=EXAMPLE.COM.", "bob@example.com", True),
        ("header.d=example.com", "bob@support.example.com", True),
        ("header.d=mail.example.com", "bob@example.com", False),
        ("header.d=evil.example", "bob@example.com", False),
        ("header.d=notexample.com", "bob@example.com", False),
        ("header.d=com", "bob@example.com", False),
        ("header.d=", "bob@example.com", False),
        ("header.i=@example.com", "bob@example.com", True),
        ("header.i=alice@example.com", "bob@example.com", True),
        ("header.i=@evil.example", "bob@example.com", False),
        ("header.d=evil.example header.i=@example.com", "bob@example.com", False),
        ("header.s=sel header.b=abc", "bob@example.com", False),
        ("header.d=xn--bcher-kva.example", "bob@bücher.example", True),
    ],
)
def test_dkim_alignment(dkim: str, sender: str, aligned: bool) -> None:
    header = f"mx.example.test; dkim=pass {dkim}"
    verdict = authenticated_domain([header], sender, TRUSTED, ("dkim",))
    assert (verdict is not None) is aligned, verdict


def test_first_aligned_signature_wins() -> None:
    header = "mx.example.test; dkim=pass header.d=mailer.example; dkim=pass header.d=example.com"
    assert authenticated_domain([header], "bob@example.com", TRUSTED, ("dkim",)) == (
        "dkim=pass header.d=example.com (mx.example.test)"
    )


@pytest.mark.parametrize(
    ("spf", "aligned"),
    [
        ("smtp.mailfrom=bounce@example.com", True),
        ("smtp.mailfrom=<bounce@example.com>", True),
        ("smtp.mailfrom=example.com", True),
        ("smtp.mailfrom=bounce@mail.example.com", False),
        ("smtp.mailfrom=bounce@evil.example", False),
        ("smtp.mailfrom=<>", False),
        ("smtp.helo=example.com", False),
        ("smtp.mail=bob@example.com", False),
    ],
)
def test_spf_alignment(spf: str, aligned: bool) -> None:
    header = f"mx.example.test; spf=pass {spf}"
    verdict = authenticated_domain([header], "bob@example.com", TRUSTED, ("spf",))
    assert (verdict is not None) is aligned, verdict
    sub = authenticated_domain([header], "bob@sub.example.com", TRUSTED, ("spf",))
    assert (sub is not None) is (aligned and "mail." not in spf)


@pytest.mark.parametrize(
    ("header_from", "sender", "aligned"),
    [
        ("example.com", "bob@example.com", True),
        ("Example.Com", "bob@EXAMPLE.com", True),
        ('"example.com"', "bob@example.com", True),
        ("example.com", "bob@sub.example.com", False),
        ("sub.example.com", "bob@example.com", False),
        ("evil.example", "bob@example.com", False),
    ],
)
def test_dmarc_alignment(header_from: str, sender: str, aligned: bool) -> None:
    header = f"mx.example.test; dmarc=pass (p=reject) header.from={header_from}"
    verdict = authenticated_domain([header], sender, TRUSTED, ("dmarc",))
    assert (verdict is not None) is aligned, verdict


@pytest.mark.parametrize("sender", ["", "bob", "@example.com", "bob@", "<bob@example.com>", " bob@example.com "])
def test_sender_forms(sender: str) -> None:
    header = "mx.example.test; dmarc=pass header.from=example.com"
    verdict = authenticated_domain([header], sender, TRUSTED, ("dmarc",))
    assert (verdict is not None) is ("bob@example.com" in sender)


def test_unparseable_and_unrelated_methods_are_skipped() -> None:
    headers = [
        "mx.example.test; dkim=pass (unclosed",
        "mx.example.test; arc=pass header.d=example.com; compauth=pass reason=100",
        "mx.example.test; dkim=pass header.d=example.com",
    ]
    methods = ("dkim", "arc", "compauth")
    assert authenticated_domain(headers, "bob@example.com", TRUSTED, methods) == (
        "dkim=pass header.d=example.com (mx.example.test)"
    )
    assert authenticated_domain(headers[:2], "bob@example.com", TRUSTED, methods) is None


# =============================================================================================
# The shared real-world corpora
# =============================================================================================

MIN_PARSED_SHARE = 0.9


def corpus_headers(root: Path) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        with path.open("rb") as f:
            msg = email.message_from_binary_file(f, policy=email.policy.compat32)
        rel = path.relative_to(root).as_posix()
        for part in msg.walk():
            found += [(rel, str(value)) for value in part.get_all("Authentication-Results") or []]
    return found


def test_every_corpus_header_parses_without_raising() -> None:
    headers = corpus_headers(corpora_dir())
    assert headers, "no Authentication-Results header found in the corpora"
    parsed = 0
    for rel, header in headers:
        result = parse(header)
        if result is None:
            continue
        parsed += 1
        assert result.authserv_id == result.authserv_id.lower(), rel
        for method in result.results:
            assert method.method == method.method.lower() and method.method, rel
            assert method.result == method.result.lower() and method.result, rel
            assert all(key == key.lower() for key in method.properties), rel
        authenticated_domain([header], "someone@example.com", [result.authserv_id or "x"], ("dkim", "spf", "dmarc"))
    share = parsed / len(headers)
    print(f"\nauthres corpus: {parsed}/{len(headers)} Authentication-Results headers parsed ({share:.0%})")
    assert share >= MIN_PARSED_SHARE
