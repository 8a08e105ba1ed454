"""Authentication-Results headers (RFC 8601): parse them and decide whether they vouch for a sender.

Our receiving mail server records its DKIM, SPF and DMARC verdicts in an Authentication-Results
header named by its authserv-id. Anyone can put such a header into a mail, so only headers whose
authserv-id is configured as trusted are believed (the receiving server removes headers that claim
its id). :func:`parse` reads one header: RFC 5322 comments, folding, quoted values, an optional
version after the authserv-id and the ``none`` result are understood. The parser is lenient about
what real servers write: empty values, ``<>``, stray bare words between results, and a missing
authserv-id as Microsoft 365 writes it, which gives an empty ``authserv_id`` that is never trusted.
:func:`authenticated_domain` accepts a passing result only when it is aligned with the sender's
domain. Pure functions: no IO.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_PROPERTY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_VERSION = re.compile(r"[0-9]+")
_WHITESPACE = " \t\r\n"
_WORD_END = _WHITESPACE + '()";=/'


@dataclass(frozen=True)
class MethodResult:
    method: str
    result: str
    properties: dict[str, str]


@dataclass(frozen=True)
class AuthResults:
    authserv_id: str
    results: tuple[MethodResult, ...]


@dataclass(frozen=True)
class _Tok:
    kind: str  # "word", "quoted", ";", "=" or "/"
    text: str
    space_before: bool


def _comment_end(header: str, start: int) -> int:
    """Index after the comment opening at ``start``, or -1 when it is not closed."""
    depth = 0
    i = start
    while i < len(header):
        char = header[i]
        if char == "\\":
            i += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _lex(header: str) -> list[_Tok] | None:
    tokens: list[_Tok] = []
    space = True
    i = 0
    while i < len(header):
        char = header[i]
        if char in _WHITESPACE:
            space = True
            i += 1
        elif char == "(":
            i = _comment_end(header, i)
            if i < 0:
                return None
            space = True
        elif char == '"':
            chars: list[str] = []
            i += 1
            while i < len(header) and header[i] != '"':
                if header[i] == "\\" and i + 1 < len(header):
                    i += 1
                chars.append(header[i])
                i += 1
            if i >= len(header):
                return None
            tokens.append(_Tok("quoted", "".join(chars), space))
            space = False
            i += 1
        elif char in ";=/":
            tokens.append(_Tok(char, char, space))
            space = False
            i += 1
        else:
            start = i
            while i < len(header) and header[i] not in _WORD_END:
                i += 1
            tokens.append(_Tok("word", header[start:i], space))
            space = False
    return tokens


def _split(tokens: list[_Tok]) -> list[list[_Tok]]:
    segments: list[list[_Tok]] = [[]]
    for tok in tokens:
        if tok.kind == ";":
            segments.append([])
        else:
            segments[-1].append(tok)
    return segments


def _is_word(toks: list[_Tok], pos: int, pattern: re.Pattern[str]) -> bool:
    return pos < len(toks) and toks[pos].kind == "word" and pattern.fullmatch(toks[pos].text) is not None


def _value(toks: list[_Tok], pos: int) -> tuple[str, int]:
    """The property value starting at ``pos`` and the position after it."""
    if pos >= len(toks):
        return "", pos
    first = toks[pos]
    if first.kind == "word" and first.space_before and pos + 1 < len(toks) and toks[pos + 1].kind == "=":
        return "", pos  # an empty value: ``first`` is the next property's name
    parts = [first.text]
    pos += 1
    while pos < len(toks) and not toks[pos].space_before and toks[pos].kind in ("word", "=", "/"):
        parts.append(toks[pos].text)
        pos += 1
    return "".join(parts), pos


def _resinfo(toks: list[_Tok]) -> MethodResult | None:
    if not _is_word(toks, 0, _KEYWORD):
        return None
    method = toks[0].text.lower()
    pos = 1
    if pos < len(toks) and toks[pos].kind == "/":
        if not _is_word(toks, pos + 1, _KEYWORD):
            return None
        pos += 2
    if pos >= len(toks) or toks[pos].kind != "=" or not _is_word(toks, pos + 1, _KEYWORD):
        return None
    result = toks[pos + 1].text.lower()
    pos += 2
    properties: dict[str, str] = {}
    while pos < len(toks):
        if not _is_word(toks, pos, _PROPERTY) or pos + 1 >= len(toks) or toks[pos + 1].kind != "=":
            return None
        key = toks[pos].text.lower()
        value, pos = _value(toks, pos + 2)
        properties.setdefault(key, value)
    return MethodResult(method=method, result=result, properties=properties)


def parse(header: str) -> AuthResults | None:
    """The authserv-id and method results of one Authentication-Results header; None when unparseable."""
    tokens = _lex(header)
    if not tokens:
        return None
    segments = _split(tokens)
    head = segments[0]
    if len(head) >= 2 and head[1].kind in ("=", "/"):
        authserv_id = ""
        resinfos = segments
    else:
        if not head or head[0].kind not in ("word", "quoted") or not head[0].text:
            return None
        if len(head) > 2 or (len(head) == 2 and not _is_word(head, 1, _VERSION)):
            return None
        authserv_id = head[0].text.lower()
        resinfos = segments[1:]
    results: list[MethodResult] = []
    for toks in resinfos:
        if len(toks) <= 1:
            continue  # empty, "none", or a bare domain as older Microsoft 365 servers insert
        parsed = _resinfo(toks)
        if parsed is None:
            return None
        results.append(parsed)
    return AuthResults(authserv_id=authserv_id, results=tuple(results))


def _domain(value: str) -> str | None:
    """The domain of an address, ``@domain`` or bare domain, lowercased and in ASCII form."""
    value = value.strip().strip("<>").strip()
    domain = value.rpartition("@")[2].rstrip(".").lower()
    if not domain or any(c in domain for c in _WHITESPACE + "<>()[],;\"'"):
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return domain


def _within(sender_domain: str, domain: str | None) -> bool:
    """``sender_domain`` is ``domain`` or one of its subdomains (relaxed alignment)."""
    if domain is None:
        return False
    return sender_domain == domain or ("." in domain and sender_domain.endswith("." + domain))


def _aligned(result: MethodResult, sender_domain: str) -> str | None:
    """The property that aligns ``result`` with the sender's domain, as ``key=value``; None if none does."""
    props = result.properties
    if result.method == "dkim":
        key = "header.d" if "header.d" in props else "header.i"
        if key in props and _within(sender_domain, _domain(props[key])):
            return f"{key}={props[key]}"
    elif result.method == "spf":
        if "smtp.mailfrom" in props and _within(sender_domain, _domain(props["smtp.mailfrom"])):
            return f"smtp.mailfrom={props['smtp.mailfrom']}"
    elif result.method == "dmarc" and "header.from" in props and _domain(props["header.from"]) == sender_domain:
        return f"header.from={props['header.from']}"
    return None


def authenticated_domain(
    headers: Sequence[str], sender: str, authserv_ids: Collection[str], methods: Collection[str]
) -> str | None:
    """Why the sender's domain is authenticated, e.g. ``dkim=pass header.d=example.com (mx.example.test)``.

    Only headers whose authserv-id is in ``authserv_ids`` count, and in them only a ``pass`` of one of
    ``methods`` that is aligned with the domain of ``sender`` (a bare address): DKIM's ``header.d``
    (else the domain of ``header.i``) and SPF's ``smtp.mailfrom`` domain must be the sender's domain
    or a parent of it, DMARC's ``header.from`` must be the sender's domain. None when nothing vouches."""
    trusted = {a.strip().lower() for a in authserv_ids if a.strip()}
    wanted = {m.strip().lower() for m in methods}
    local, _, _ = sender.strip().strip("<>").rpartition("@")
    sender_domain = _domain(sender) if local else None
    if not trusted or not wanted or sender_domain is None:
        return None
    for header in headers:
        parsed = parse(header)
        if parsed is None or parsed.authserv_id not in trusted:
            continue
        for result in parsed.results:
            if result.method in wanted and result.result == "pass":
                evidence = _aligned(result, sender_domain)
                if evidence is not None:
                    return f"{result.method}=pass {evidence} ({parsed.authserv_id})"
    return None
