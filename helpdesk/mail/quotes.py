"""Separate the new text of a reply from its quoted history and signature.

``split_reply`` works on plain-text bodies, ``split_reply_html`` on HTML bodies.  Both return a
:class:`Reply` whose ``text`` is what the sender wrote in this message and whose ``quoted`` is
everything else (quoted history, "On ... wrote:" headers, forwarded originals, signatures).

The module is pure (no IO, no clock, no global mutable state) and never raises: on any input it
returns a ``Reply``.  Every step is linear in the size of the body: lines are classified one by one
with small, anchored regular expressions that only ever look at a bounded slice of a line, and HTML
is tokenised with ``str.find`` rather than a backtracking pattern.

How a plain-text body is read
-----------------------------
Each line is classified (blank, quoted with ``>``, or plain).  A scan then cuts the body into
segments of new text ("T") and quoted blocks ("Q"), and stops at the first line from which
everything belongs to the history or the signature:

* a quote header whose quotation is not ``>``-prefixed ("On <date>, <name> wrote:" and its
  equivalents in about twenty languages, or a "<date> <name> <address>:" line),
* an Outlook-style header block ("From:/Sent:/To:/Subject:", "Von:/Gesendet:/An:/Betreff:", ...),
  together with the separator line above it,
* a separator such as "-----Original Message-----" / "-----Ursprüngliche Nachricht-----" /
  "---------- Forwarded message ---------",
* a signature delimiter ("-- ", a line of underscores) or a mobile footer ("Sent from my iPhone",
  "Von meinem iPhone gesendet", "Get Outlook for iOS").

A ``>`` block preceded by an "On ... wrote:" header is quoted history.  New text after such a block
(bottom posting) is kept; when the sender answered between several quoted blocks (inline reply),
the quoted lines in between are kept in ``text`` so that the answers stay readable.  A ``>`` block
without any header between two paragraphs of new text is taken as a citation and kept.  A bare
"<Name> wrote:" line only counts as a header when a ``>`` block follows it.  Finally a closing
formula at the end ("Best regards," "Mit freundlichen Grüßen", ...) and the few short lines after
it (name, title, phone) are moved to ``quoted`` as signature; "Thanks," is left alone.

How an HTML body is read
------------------------
The HTML is tokenised and rendered to lines.  Citation containers (``blockquote``, ``gmail_quote``,
``moz-cite-prefix``, ``yahoo_quoted``, ...) become ``>``-quoted lines; Outlook's reply markers
(``divRplyFwdMsg``, ``appendonsend``, ``OLK_SRC_BODY_SECTION``, Hotmail's ``stopSpelling``, a
forwarded ``moz-forward-container``) cut off everything after them; ``gmail_signature``,
``moz-signature`` and Outlook's ``#Signature`` start a signature; a ``border-top`` separator
``div`` and ``<hr>`` become separator lines.  The lines then go through the plain-text logic above,
which also catches textual headers such as "-----Original Message-----" or "Von: ... Gesendet:".
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple

__all__ = ["Reply", "split_reply", "split_reply_html"]


@dataclass(frozen=True)
class Reply:
    """A reply split into the sender's new text and everything else."""

    text: str
    """The new text the sender wrote (no quoted history, no signature), stripped."""
    quoted: str
    """Quoted history, quote headers, forwarded original and signature; may be ``""``."""


def _word_set(words: str, sep: str | None = None) -> frozenset[str]:
    return frozenset(w.strip() for w in words.split(sep) if w.strip())


# --------------------------------------------------------------------------------------------
# Limits: regular expressions only ever see bounded slices of a line.
# --------------------------------------------------------------------------------------------

_HEAD = 400  # characters of a line looked at from its start
_MAX_HEADER = 400  # longest joined quote header considered
_HEADER_WINDOW = 8  # lines scanned forward for an Outlook-style header block
_MAX_SCAN_LINES = 50_000  # headers and signatures are looked for in the first lines only

_INVISIBLE_CHARS = "\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
_INVISIBLE = dict.fromkeys(map(ord, _INVISIBLE_CHARS))
_INVISIBLE_RE = re.compile(f"[{_INVISIBLE_CHARS}]")  # finding one is much cheaper than translate()

# --------------------------------------------------------------------------------------------
# "On <date>, <name> wrote:" headers
# --------------------------------------------------------------------------------------------

_LATIN_VERBS = (
    r"wrote|writes|has written|schrieb|schreibt|hat geschrieben|a écrit|a ecrit|ont écrit|"
    r"escribió|escribio|escreveu|ha scritto|scrisse|schreef|heeft geschreven|skrev|skrifaði|"
    r"kirjoitti|napisał\(a\)|napisała|napisał|napisal|nadesłał|napsal\(a\)|napsala|napsal|írta|"
    r"написал\(а\)|написала|написал|пишет|yazdı|έγραψε|a scris|je napisal\(a\)|je napisala|"
    r"je napisal|napisao|rašė|rakstīja|kirjutas"
)
_VERB_RE = re.compile(rf"\b(?:{_LATIN_VERBS})(?!\w)|写道|寫道|が書きました|님이 작성", re.IGNORECASE)
_CJK_VERBS_AT_END = "写道|寫道"
_VERB_AT_END_RE = re.compile(rf"(?:\b(?:{_LATIN_VERBS})|{_CJK_VERBS_AT_END})[\s\-]*$", re.IGNORECASE)
# Every alternative is a literal (only "(" and ")" escaped), and ignoring case still matches one
# character per pattern character: a verb match is at most _LONGEST_VERB long, and its last
# character matches _VERB_LAST_CHAR_RE.
_VERB_LITERALS = tuple(v.replace("\\", "") for v in f"{_LATIN_VERBS}|{_CJK_VERBS_AT_END}".split("|"))
_LONGEST_VERB = max(map(len, _VERB_LITERALS))
_VERB_LAST_CHAR_RE = re.compile(
    "[" + "".join(sorted({re.escape(v[-1]) for v in _VERB_LITERALS})) + "]", re.IGNORECASE
)
_HEADER_PREFIX_RE = re.compile(
    r"(?:on|am|le|el|em|il|in data|op|den|dne|w dniu|dnia|på|pada|vào|στις|la|at)\b", re.IGNORECASE
)
_DATETIME_RE = re.compile(r"\d{1,2}[:.h]\d{2}|\d{4}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
_DIGIT_RE = re.compile(r"\d")
_LEADING_DAY_RE = re.compile(r"(?:\d|[^\W\d_]{2,10}[.,]\s)")


_NAME_PARTICLES = _word_set("von van de der den la le da di du dos del y")
_MUTT_DATE_RE = re.compile(r"\[\d{4}-\d{2}-\d{2}[^\]]{0,30}\]$")


def _wrote_strength(joined: str) -> int:
    """How surely ``joined`` (one or up to three joined lines) is an attribution line.

    2: "On <date>, <name> wrote:", "Am <date> schrieb <name>:", "<date>, <name> <address>:" ...
    1: "<Name> wrote:" without date or address; a header only when a ``>`` quote follows.
    0: not an attribution line."""
    s = joined.strip().strip("-*_=~ \t").strip()
    if not s or len(s) > _MAX_HEADER:
        return 0
    ends_colon = s.endswith((":", "："))
    core = s.rstrip(":： \t")
    verbs = list(_VERB_RE.finditer(core))
    if verbs:
        verb = verbs[-1]
        before, tail = core[: verb.start()], core[verb.end() :]
        if len(tail) > 150 or (not ends_colon and tail.strip()):
            return 0
        if _DIGIT_RE.search(before) or "@" in before:
            return 2
        if ends_colon and len(s) <= 160 and _HEADER_PREFIX_RE.match(s) is not None:
            return 2
        words = before.split()
        name_like = 0 < len(words) <= 6 and all(
            w[0].isupper() or w[0] in "\"'(<[" or w.lower() in _NAME_PARTICLES for w in words
        )
        return 1 if ends_colon and not tail.strip() and name_like else 0
    # No verb: "30.09.2017, 18:30, "John" <john@example.com>:" and mutt's
    # "John Doe <john@example.com> [2024-03-12 10:00]:".
    if not (ends_colon and "@" in s and "<" in s):
        return 0
    if _DATETIME_RE.search(s) is not None and _LEADING_DAY_RE.match(s) is not None:
        return 2
    return 2 if _MUTT_DATE_RE.search(core) else 0


def _is_wrote_header(joined: str) -> bool:
    return _wrote_strength(joined) == 2


def _may_end_wrote_header(body: str) -> bool:
    s = body.rstrip()
    if not s or len(s) > _MAX_HEADER:
        return False
    if s.endswith((":", "：")):
        return True
    tail = s[-80:].rstrip("-*_=~ \t")
    # A verb match ends where the trailing run of whitespace and hyphens starts (no verb ends in
    # either), so checking the character there and searching from there minus the longest verb
    # gives the same answer - and saves trying the long alternation at every position of the line.
    end = len(tail)
    while end and (tail[end - 1].isspace() or tail[end - 1] == "-"):
        end -= 1
    if not end or _VERB_LAST_CHAR_RE.match(tail, end - 1) is None:  # most prose ends in "." or ","
        return False
    return _VERB_AT_END_RE.search(tail, max(0, end - _LONGEST_VERB)) is not None


# --------------------------------------------------------------------------------------------
# Outlook-style header blocks ("From: ... Sent: ... To: ... Subject: ...")
# --------------------------------------------------------------------------------------------

_FROM_KEYS = (
    "from|von|de|da|van|fra|från|od|от|kimden|lähettäjä|feladó|afzender|remetente|expéditeur|"
    "mittente|发件人|寄件者|差出人|보낸 사람"
)
_OTHER_KEYS = (
    "sent|date|to|subject|cc|bcc|reply-to|sent by|gesendet|datum|an|betreff|kopie|envoyé le|envoyé|"
    "date d'envoi|à|a|objet|copie à|copie|inviato|data|oggetto|verzonden|aan|onderwerp|sendt|dato|"
    "til|emne|kopi|skickat|till|ämne|kopia|wysłano|do|temat|dw|enviado el|enviado|fecha|para|"
    "asunto|assunto|отправлено|дата|кому|тема|копия|lähetetty|vastaanottaja|aihe|gönderildi|tarih|"
    "kime|konu|odesláno|komu|předmět|发送时间|日期|收件人|主题|抄送|送信日時|宛先|件名"
)
_KEY_LINE_RE = re.compile(
    rf"[ \t]*[*_]{{0,2}}[ \t]*({_FROM_KEYS}|{_OTHER_KEYS})[ \t]*[*_]{{0,2}}[ \t]*[:：]", re.IGNORECASE
)
_FROM_KEY_SET = frozenset(_FROM_KEYS.split("|"))
_SEPARATOR_RE = re.compile(r"[ \t]*[-_=*~#][-_=*~# \t]{2,}")
_FRENCH_KEY_RE = re.compile(r"[^\W\d_][\w .'’-]{0,24}[ \t]:(?:[ \t]|$)")


def _header_block_end(lines: Sequence[_Line], i: int) -> int | None:
    """If an Outlook-style header block starts at line ``i``, return its last line."""
    first = lines[i].key
    if not first:
        return None
    depth = lines[i].depth
    keys = {first}
    last, misses, k = i, 0, i + 1
    while k < len(lines) and k <= i + _HEADER_WINDOW:
        line = lines[k]
        if line.depth != depth or line.blank:
            break
        key = line.key
        if not key:
            misses += 1
            if misses > 2:
                break
        else:
            keys.add(key)
            last, misses = k, 0
        k += 1
    if len(keys) >= 3 or (len(keys) >= 2 and not keys.isdisjoint(_FROM_KEY_SET)):
        return last
    return None


# --------------------------------------------------------------------------------------------
# Separators and signatures
# --------------------------------------------------------------------------------------------

_SEPARATOR_PHRASES = _word_set(
    """
    original message|original-nachricht|originalnachricht|ursprüngliche nachricht|forwarded message|
    begin forwarded message|weitergeleitete nachricht|anfang der weitergeleiteten nachricht|
    message d'origine|message d’origine|message original|message transféré|
    début du message réexpédié|début du message transféré|mensaje original|mensaje reenviado|
    messaggio originale|messaggio inoltrato|inizio messaggio inoltrato|oorspronkelijk bericht|
    origineel bericht|doorgestuurd bericht|begin doorgestuurd bericht|oprindelig meddelelse|
    oprindelig besked|videresendt meddelelse|videresendt besked|opprinnelig melding|
    videresendt melding|ursprungligt meddelande|vidarebefordrat meddelande|alkuperäinen viesti|
    välitetty viesti|wiadomość oryginalna|oryginalna wiadomość|przekazana wiadomość|
    původní zpráva|přeposlaná zpráva|eredeti üzenet|továbbított üzenet|исходное сообщение|
    пересылаемое сообщение|пересланное сообщение|mensagem original|mensagem encaminhada|
    orijinal ileti|iletilen ileti|原始邮件|转发的邮件|転送されたメッセージ|元のメッセージ|
    reply above this line|please type your reply above this line|
    bitte antworten sie oberhalb dieser zeile
    """,
    "|",
)
_SEPARATOR_STRIP = "-_=*~#<>[]() \t:"
_MOBILE_RE = re.compile(
    r"(?:sent from|sent with|sent via|get outlook for|envoyé de|envoyé depuis|envoyé à partir de|"
    r"envoyé avec|enviado desde|enviado de|enviado do|enviado com|gesendet von|gesendet mit|"
    r"von meinem|verstuurd vanaf|verzonden vanaf|verzonden met|sendt fra|skickat från|wysłano z|"
    r"inviato da|отправлено с|lähetetty|odesláno z)\b[^.,;!?:<>()\n]{0,60}"
    r"(?:<[^<>\s]{0,300}>|\([^()\s]{0,300}\))?[^.,;!?:<>()\n]{0,30}",
    re.IGNORECASE,
)
_VALEDICTION_RE = re.compile(
    r"(?:(?:best|kind|warm|warmest|many|with best|with kind)\s+regards|regards|best|best wishes|"
    r"all the best|cheers|sincerely|yours sincerely|sincerely yours|yours truly|yours faithfully|"
    r"respectfully|mit freundlichen grüßen|mit freundlichen grüssen|mit freundlichem gruß|"
    r"mit freundlichem gruss|freundliche grüße|freundliche grüsse|viele grüße|viele grüsse|"
    r"beste grüße|beste grüsse|liebe grüße|liebe grüsse|herzliche grüße|herzliche grüsse|"
    r"schöne grüße|gruß|gruss|grüße|grüsse|lg|mfg|vg|cordialement|bien cordialement|bien à vous|"
    r"salutations|meilleures salutations|saludos|un saludo|atentamente|saludos cordiales|"
    r"cordiales saludos|cordiali saluti|distinti saluti|saluti|met vriendelijke groet|"
    r"met vriendelijke groeten|vriendelijke groet|groeten|hartelijke groeten|med venlig hilsen|"
    r"venlig hilsen|mvh|hilsen|bedste hilsner|med vennlig hilsen|vennlig hilsen|"
    r"med vänliga hälsningar|vänliga hälsningar|hälsningar|pozdrawiam|z poważaniem|z powazaniem|"
    r"atenciosamente|abraços|cumprimentos|с уважением|ystävällisin terveisin|terveisin|"
    r"s pozdravem|kh|knus|/[^\W\d_][\w.-]{0,20}(?: [^\W\d_][\w.-]{0,20})?)[ \t]*[,.!]?[ \t]*",
    re.IGNORECASE,
)
_FOOTER_RE = re.compile(
    r"(?:you received this (?:message|email) because|you are receiving this because|"
    r"to unsubscribe from this group|reply to this email directly|view it on github)",
    re.IGNORECASE,
)
_PS_RE = re.compile(r"p\.?\s?s\b", re.IGNORECASE)


def _is_separator_phrase(body: str) -> bool:
    if len(body) > 120 or len(body) < 4:
        return False
    core = " ".join(body.strip(_SEPARATOR_STRIP).lower().split())
    return core in _SEPARATOR_PHRASES


def _is_signature_start(body: str) -> bool:
    s = body.strip()
    if s == "--" or (2 <= len(s) <= 200 and s.count("_") == len(s)):
        return True
    return 8 <= len(s) <= 400 and _MOBILE_RE.fullmatch(s) is not None


def _is_separator_line(body: str) -> bool:
    return len(body) <= 200 and _SEPARATOR_RE.fullmatch(body.rstrip()) is not None


# --------------------------------------------------------------------------------------------
# Lines
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Line:
    raw: str  # the line as it appears in the output
    body: str  # the line without quote markers, stripped
    depth: int  # quote depth (0 = not quoted)
    cite: bool = False  # inside an HTML citation container (gmail_quote, blockquote type=cite)
    _hints: int = -1  # cached _H_* bits, computed on first use
    _key: str | None = None  # cached header key ("from", "sent", ...) or "" for none

    @property
    def blank(self) -> bool:
        return not self.body

    @property
    def hints(self) -> int:
        """Cheap facts used to skip the full attribution check on most lines."""
        if self._hints < 0:
            body = self.body[:_MAX_HEADER]
            hints = _H_VERB if _VERB_RE.search(body) else 0
            hints |= _H_AT if "@" in body else 0
            hints |= _H_LT if "<" in body else 0
            self._hints = hints
        return self._hints

    @property
    def key(self) -> str:
        """The Outlook header key this line starts with ("from", "betreff", ...), or ""."""
        if self._key is None:
            head = self.body[:100]
            m = _KEY_LINE_RE.match(head) if ":" in head or "：" in head else None
            self._key = m.group(1).lower() if m else ""
        return self._key


_H_VERB, _H_AT, _H_LT = 1, 2, 4
_QUOTE_PREFIX_RE = re.compile(r"[ \t]*(?:>[ \t]?)+")


def _plain_lines(text: str) -> list[_Line]:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii() and _INVISIBLE_RE.search(text):  # the invisible characters are non-ASCII
        text = text.translate(_INVISIBLE)
    out: list[_Line] = []
    for raw in text.split("\n"):
        m = _QUOTE_PREFIX_RE.match(raw) if ">" in raw[:8] else None
        if m is None:
            out.append(_Line(raw, raw.strip(), 0))
            continue
        body = raw[m.end() :].strip()
        if body.startswith(":") and not body[1:].strip():
            out.append(_Line(raw, raw.strip(), 0))  # ">:" ends a wrapped "... <a@b.c\n>:" header
        else:
            out.append(_Line(raw, body, m.group().count(">")))
    return out


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------

_WROTE, _WEAK, _END = "wrote", "weak", "end"


def _wrote_header_start(lines: Sequence[_Line], j: int) -> int | None:
    """The first line of the attribution header that ends on line ``j``, if any."""

    def plain(k: int) -> bool:
        line = lines[k]
        return line.depth == 0 and not line.blank and len(line.body) <= _MAX_HEADER

    def valid(s: int) -> bool:
        hints = 0
        for k in range(s, j + 1):
            hints |= lines[k].hints
        if not hints & _H_VERB and not (hints & _H_AT and hints & _H_LT):
            return False
        return _is_wrote_header(" ".join(lines[k].body for k in range(s, j + 1)))

    window = lines[j].hints
    for k in range(max(j - 2, 0), j):
        window |= lines[k].hints
    if not (window & _H_VERB or (window & _H_AT and window & _H_LT)):
        return None
    start = None
    for s in range(j, max(j - 3, -1), -1):
        if not plain(s):
            break
        if valid(s):
            start = s
            break
    if start is None:
        return None
    if start > j - 2 and start > 0 and plain(start - 1):
        prev, cur = lines[start - 1].body, lines[start].body
        continues = (
            prev.endswith(("<", "(", ",", '"'))
            or cur[:1] in "<([>"
            or (_HEADER_PREFIX_RE.match(prev) is not None and _DIGIT_RE.search(prev) is not None)
        )
        if continues and valid(start - 1):
            start -= 1
    return start


def _block_start(lines: Sequence[_Line], i: int) -> int:
    """Extend an Outlook header block at ``i`` upwards over its separator and lead-in lines."""
    start, k = i, i - 1
    while k >= 0 and start - k <= 4:
        line = lines[k]
        if line.depth != lines[i].depth:
            break
        if line.blank:
            k -= 1
            continue
        body = line.body
        if _is_separator_line(body) or _is_separator_phrase(body):
            start, k = k, k - 1
        elif k == start - 1 and len(body) <= 120 and _FRENCH_KEY_RE.match(body):
            start, k = k, k - 1  # "Message du : 12/12/2016 13:20" right above "De : ..."
        else:
            break
    return start


class _Spans:
    """Headers, separators and signatures, found lazily in one forward pass.

    A span that starts on line ``i`` is always detected while looking at a line in
    ``[i, i + _LOOKAHEAD)``, so ``get(i)`` only has to examine the lines up to there.  The scan in
    :func:`_segments` stops at the first line from which everything is history, so the (often
    long) quoted history after it is never examined."""

    _LOOKAHEAD = 8

    def __init__(self, lines: Sequence[_Line]) -> None:
        self.lines = lines
        self.found: dict[int, tuple[int, str]] = {}
        self.done = 0  # lines [0, done) have been examined

    def get(self, i: int) -> tuple[int, str] | None:
        self._advance(min(i + self._LOOKAHEAD, len(self.lines)))
        return self.found.get(i)

    def __contains__(self, i: int) -> bool:
        return self.get(i) is not None

    def _advance(self, upto: int) -> None:
        lines, found = self.lines, self.found
        upto = min(upto, _MAX_SCAN_LINES)
        while self.done < upto:
            i = self.done
            self.done += 1
            line = lines[i]
            if line.depth != 0 or line.blank:
                continue
            body = line.body
            if _is_signature_start(body) or _is_separator_phrase(body):
                found.setdefault(i, (i, _END))
                continue
            prev = lines[i - 1] if i else None
            continues_block = prev is not None and prev.depth == 0 and bool(prev.key)
            if line.key and not continues_block:
                end = _header_block_end(lines, i)
                if end is not None:
                    found[_block_start(lines, i)] = (end, _END)
                    continue
            if _may_end_wrote_header(body):
                first = _wrote_header_start(lines, i)
                if first is not None:
                    found.setdefault(first, (i, _WROTE))
                elif line.hints & _H_VERB and _wrote_strength(body) == 1:
                    found.setdefault(i, (i, _WEAK))


def _quote_run_end(lines: Sequence[_Line], i: int, spans: _Spans) -> int:
    """End (exclusive) of the quoted block starting at ``i``: quoted lines, blank lines between
    them and wrapped continuation lines that lost their ``>``."""
    n, j = len(lines), i
    while j < n:
        line = lines[j]
        if line.depth > 0:
            j += 1
            continue
        if line.blank:
            k = j
            while k < n and lines[k].blank:
                k += 1
            if k < n and lines[k].depth > 0:
                j = k
                continue
            break
        prev = lines[j - 1]
        if prev.depth > 0 and len(prev.body) >= 40 and j not in spans:
            k = j
            while k < n and k - j < 2 and lines[k].depth == 0 and not lines[k].blank and k not in spans:
                k += 1
            if k < n and lines[k].depth > 0:
                j = k
                continue
        break
    return j


def _quote_is_headed(lines: Sequence[_Line], i: int, j: int) -> bool:
    """Whether the quoted block lines[i:j] starts with an attribution or header block."""
    seen = 0
    for k in range(i, j):
        line = lines[k]
        if line.cite:
            return True
        if line.blank:
            continue
        body = line.body
        if len(body) <= _MAX_HEADER:
            joined, hints = body, 0
            for m in range(k, min(k + 3, j)):
                hints |= lines[m].hints
                if m > k:
                    joined += " " + lines[m].body
                if hints & (_H_VERB | _H_AT) and _wrote_strength(joined):
                    return True
            if _is_separator_phrase(body) or _header_block_end(lines, k) is not None:
                return True
        seen += 1
        if seen >= 2:
            return False
    return False


@dataclass(slots=True)
class _Segment:
    kind: str  # "T" (new text) or "Q" (quoted block)
    start: int
    end: int  # exclusive
    headed: bool = False
    footer: bool = False


def _segments(lines: Sequence[_Line]) -> list[_Segment]:
    """Cut the lines into text and quote segments, up to where the history or signature starts
    (everything from there on is left out of the segments)."""
    spans = _Spans(lines)
    n = len(lines)
    segs: list[_Segment] = []
    seen_quote = False
    i = 0
    while i < n:
        line = lines[i]
        if line.blank:
            i += 1
            continue
        if line.depth > 0:
            j = _quote_run_end(lines, i, spans)
            segs.append(_Segment("Q", i, j, headed=_quote_is_headed(lines, i, j)))
            seen_quote, i = True, j
            continue
        span = spans.get(i)
        if span is not None:
            last, kind = span
            if kind in (_WROTE, _WEAK):
                k = last + 1
                while k < n and lines[k].blank:
                    k += 1
                if k < n and lines[k].depth > 0:
                    j = _quote_run_end(lines, k, spans)
                    segs.append(_Segment("Q", i, j, headed=True))
                    seen_quote, i = True, j
                    continue
            if kind != _WEAK:
                return segs
        j, last_text = i + 1, i
        while j < n and lines[j].depth == 0 and j not in spans:
            if not lines[j].blank:
                last_text = j
            j += 1
        footer = seen_quote and _FOOTER_RE.match(line.body[:_HEAD]) is not None
        segs.append(_Segment("T", i, last_text + 1, footer=footer))
        i = last_text + 1
    return segs


def _kept_ranges(segs: list[_Segment]) -> list[tuple[int, int]]:
    """Line ranges that make up the new text."""
    texts = [k for k, s in enumerate(segs) if s.kind == "T" and not s.footer]
    if not texts:
        return []
    last = segs[texts[-1]]
    quotes = [s for s in segs[: texts[-1]] if s.kind == "Q"]
    if len(quotes) == 1:
        q = quotes[0]
        text_before = any(s.kind == "T" and s.end <= q.start for s in segs)
        if q.headed or not text_before:
            return [(0, q.start), (q.end, last.end)]  # top and/or bottom posting
    # No quote, an inline citation, or answers between several quoted blocks: keep it all.
    return [(0, last.end)]


def _strip_valediction(lines: Sequence[_Line], start: int, end: int) -> int:
    """If lines[start:end] ends with a closing formula and a short signature, return where it
    starts; otherwise return ``end``."""
    nonblank: list[int] = []
    k = end - 1
    while k >= start and len(nonblank) < 9:
        if not lines[k].blank:
            nonblank.append(k)
        k -= 1
    nonblank.reverse()
    at_start = k < start  # nonblank[0] is the first line of the range
    for pos in range(len(nonblank) - 1, max(len(nonblank) - 8, -1), -1):
        k = nonblank[pos]
        body = lines[k].body
        if len(body) <= 60 and _VALEDICTION_RE.fullmatch(body):
            after = nonblank[pos + 1 :]
            if (pos == 0 and at_start) or len(after) > 6:
                return end
            if any(len(lines[a].body) > 80 or _PS_RE.match(lines[a].body) for a in after):
                return end
            return k
    return end


def _split_lines(lines: Sequence[_Line]) -> tuple[list[str], list[str]]:
    """Return (new text lines, everything else) as output lines."""
    ranges = _kept_ranges(_segments(lines))
    if ranges:
        a, b = ranges[-1]
        cut = _strip_valediction(lines, a, b)
        while cut > a and (lines[cut - 1].blank or _is_separator_line(lines[cut - 1].body)):
            cut -= 1
        ranges[-1] = (a, cut)
    kept = [False] * len(lines)
    for a, b in ranges:
        for k in range(a, b):
            kept[k] = True
    text = [line.raw for line, keep in zip(lines, kept, strict=True) if keep]
    quoted = [line.raw for line, keep in zip(lines, kept, strict=True) if not keep]
    return text, quoted


def _join(lines: list[str]) -> str:
    out: list[str] = []
    blank_run = 0
    for line in lines:
        if line.strip():
            blank_run = 0
            out.append(line.rstrip())
        else:
            blank_run += 1
            if blank_run <= 2:
                out.append("")
    return "\n".join(out).strip()


def _as_str(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return ""


def split_reply(text: str) -> Reply:
    """Split a plain-text reply body into the new text and the quoted history/signature."""
    body = _as_str(text)
    try:
        new, rest = _split_lines(_plain_lines(body))
        return Reply(_join(new), _join(rest))
    except Exception:  # pragma: no cover - defensive: intake must never fail here
        return Reply(body.strip(), "")


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_VOID = _word_set("area base br col embed hr img input keygen link meta param source track wbr")
_BLOCK = _word_set(
    """address article aside blockquote center dd details dialog dir div dl dt fieldset figcaption
    figure footer form h1 h2 h3 h4 h5 h6 header hr li main menu nav ol p pre section summary table
    tbody thead tfoot tr ul caption html body"""
)
_RAW_TEXT = MappingProxyType(
    {
        tag: re.compile(rf"</{tag}\s*>", re.IGNORECASE)
        for tag in ("script", "style", "title", "textarea", "xml", "template")
    }
)
_HARD_IDS = _word_set(
    """divrplyfwdmsg appendonsend olk_src_body_section stopspelling zwchr
    mail-editor-reference-message-container isforwardcontent isreplycontent"""
)
_HARD_CLASSES = frozenset(("outlookmessageheader", "moz-forward-container"))
_CITE_CLASSES = _word_set(
    """gmail_quote gmail_quote_container yahoo_quoted moz-cite-prefix protonmail_quote zmail_extra
    ecxgmail_quote tutanota_quote"""
)
_SIGNATURE_CLASSES = frozenset(("gmail_signature", "moz-signature"))
_SIGNATURE_IDS = frozenset(("signature", "applemailsignature"))
_MARKUP_RE = re.compile(r"<[A-Za-z/!?]")
_TAG_RE = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:_.-]{0,40})")
_ATTR_RE = re.compile(r"""([^\s=/>"']{1,60})(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>"']+)))?""")
_BORDER_TOP_RE = re.compile(r"border-top(?:-style)?:[^;]{0,40}solid")

# A tag the fast tokenizer step takes at once: the text before it, "/", the name, the attributes.
# Possessive, so a "<" without any ">" after it fails after one scan (no backtracking).
_TEXT_AND_TAG_RE = re.compile(r"([^<]*+)<(/?)([A-Za-z][A-Za-z0-9:_.-]{0,40}+)([^>]*+)>")


class _StartInfo(NamedTuple):
    """What the renderer needs to know about a start tag's attributes."""

    hard: bool  # an Outlook/Hotmail reply marker: everything from here on is history
    quote: bool  # a citation container (blockquote, gmail_quote, ...)
    cite: bool  # ... marked as a citation (not just an indented blockquote)
    signature: bool  # gmail_signature, moz-signature, #Signature
    border_top: bool  # Outlook's separator div above a header block


def _attrs(source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if len(source) > 4000:
        source = source[:4000]
    for m in _ATTR_RE.finditer(source):
        name = m.group(1).lower()
        if name in ("class", "id", "type", "style") and name not in out:
            out[name] = _html.unescape(m.group(2) or m.group(3) or m.group(4) or "")
    return out


def _start_info(tag: str, source: str) -> _StartInfo:
    """The facts about a start tag with attribute text ``source``."""
    if len(source) > 300:
        return _compute_start_info(tag, source)
    return _cached_start_info(tag, source)


def _compute_start_info(tag: str, source: str) -> _StartInfo:
    attrs = _attrs(source)
    classes = set(attrs.get("class", "").lower().split())
    ident = attrs.get("id", "").lower()
    while ident.startswith("x_"):
        ident = ident[2:]
    style = attrs.get("style", "").lower().replace(" ", "")
    cite_class = not classes.isdisjoint(_CITE_CLASSES) or ident.startswith("yahoo_quoted")
    quote = tag == "blockquote" or cite_class
    return _StartInfo(
        hard=ident in _HARD_IDS or not classes.isdisjoint(_HARD_CLASSES),
        quote=quote,
        cite=quote and (cite_class or attrs.get("type", "").lower() == "cite"),
        signature=not classes.isdisjoint(_SIGNATURE_CLASSES) or ident in _SIGNATURE_IDS,
        border_top=tag in ("div", "p", "td") and _BORDER_TOP_RE.search(style) is not None,
    )


# Pure, so it can be memoised: tables repeat the same attributes on every cell, and mail clients
# the same ones in every mail.
_cached_start_info = lru_cache(maxsize=4096)(_compute_start_info)


def _tokenize(doc: str, renderer: _Renderer) -> None:
    """Tokenise HTML in one left-to-right pass, handing text, start tags (with their facts) and
    end tags to ``renderer``.

    Every ``find`` that fails ends the scan, so the work is linear even for unterminated
    comments or tags."""
    text, start, end = renderer.text, renderer.start, renderer.end
    text_and_tag = _TEXT_AND_TAG_RE.match
    i, n = 0, len(doc)
    while i < n:
        # The usual case: text up to a complete tag.
        m = text_and_tag(doc, i)
        if m is not None:
            before, closing, name, source = m.groups()
            if before:
                text(before)
            tag = name.lower()
            i = m.end()
            if closing:
                end(tag)
                continue
            start(tag, _start_info(tag, source))
            if source.endswith("/"):
                if tag not in _VOID:
                    end(tag)
                continue
            closer = _RAW_TEXT.get(tag)
            if closer is not None:
                close = closer.search(doc, i)
                if close is None:
                    return
                i = close.end()
            continue
        # Otherwise the next "<" starts a comment, a declaration, an unterminated tag or no markup.
        j = doc.find("<", i)
        if j < 0:
            text(doc[i:])
            return
        if j > i:
            text(doc[i:j])
        if doc.startswith("<!--", j):
            k = doc.find("-->", j + 4)
            if k < 0:
                return
            i = k + 3
            continue
        if doc.startswith(("<!", "<?"), j):
            k = doc.find(">", j + 2)
            if k < 0:
                return
            i = k + 1
            continue
        if _TAG_RE.match(doc, j) is not None:  # a tag with no ">" after it
            return
        nxt = _MARKUP_RE.search(doc, j + 1)
        stop = n if nxt is None else nxt.start()
        text(doc[j:stop])
        i = stop


@dataclass(slots=True)
class _Frame:
    tag: str
    quote: bool = False
    cite: bool = False
    pre: bool = False


class _Renderer:
    """Turns the token stream into lines with quote depths and the index of a hard cut."""

    def __init__(self) -> None:
        self.lines: list[_Line] = []
        self.buf: list[str] = []
        self.depth = 0
        self.cite = 0
        self.pre = 0
        self.cut: int | None = None
        self.stack: list[_Frame] = []
        self.open: dict[str, int] = {}

    def emit(self, text: str) -> None:
        depth, body = self.depth, text.strip()
        if body.startswith(">"):  # plain-text quoting inside HTML ("&gt; quoted")
            m = _QUOTE_PREFIX_RE.match(body)
            if m is not None:
                depth, body = depth + m.group().count(">"), body[m.end() :].strip()
        prefix = "> " * self.depth
        self.lines.append(_Line((prefix + text).rstrip(), body, depth, self.cite > 0))

    def flush(self, force: bool = False) -> None:
        raw = "".join(self.buf)
        self.buf.clear()
        if self.pre:
            for part in raw.split("\n"):
                self.emit(part.rstrip())
            return
        text = " ".join(raw.split())
        if text or force or "\xa0" in raw:
            self.emit(text)

    def start(self, tag: str, info: _StartInfo) -> None:
        at_top = self.depth == 0 and self.cut is None
        if at_top and info.hard:
            self.flush()
            self.cut = len(self.lines)
        if tag == "br":
            self.flush(force=True)
            return
        if tag == "hr":
            self.flush()
            self.emit("-" * 10)
            return
        if tag in ("td", "th"):
            self.buf.append(" ")
        if tag == "li":
            self.flush()
            self.buf.append("- ")
        if tag in _VOID:
            return
        frame = _Frame(tag, quote=info.quote, cite=info.cite)
        if tag in _BLOCK or frame.quote:
            self.flush()
        if at_top and info.signature and not (self.lines and self.lines[-1].body == "--"):
            self.emit("-- ")
        if info.border_top:
            self.emit("-" * 10)
        if frame.quote:
            self.depth += 1
            self.cite += frame.cite
        if tag == "pre":
            frame.pre = True
            self.pre += 1
        self.stack.append(frame)
        self.open[tag] = self.open.get(tag, 0) + 1

    def end(self, tag: str) -> None:
        if not self.open.get(tag):
            if tag in ("p", "br"):
                self.flush(force=tag == "br")
            return
        while self.stack:
            frame = self.stack.pop()
            self.open[frame.tag] -= 1
            if frame.tag in _BLOCK or frame.quote:
                self.flush()
            if frame.quote:
                self.depth -= 1
                self.cite -= frame.cite
            if frame.pre:
                self.pre -= 1
            if frame.tag == tag:
                break

    def text(self, data: str) -> None:
        text = _html.unescape(data)
        self.buf.append(text.translate(_INVISIBLE) if not text.isascii() and _INVISIBLE_RE.search(text) else text)

    def finish(self) -> tuple[list[_Line], int]:
        self.flush()
        cut = len(self.lines) if self.cut is None else self.cut
        return self.lines, cut


def _render_html(doc: str) -> tuple[list[_Line], int]:
    renderer = _Renderer()
    _tokenize(doc, renderer)
    return renderer.finish()


def split_reply_html(html: str) -> Reply:
    """Split an HTML reply body into the new text and the quoted history/signature (as text)."""
    doc = _as_str(html)
    if _MARKUP_RE.search(doc) is None:  # no markup at all: keep its line structure
        return split_reply(_html.unescape(doc))
    try:
        lines, cut = _render_html(doc)
        new, rest = _split_lines(lines[:cut])
        rest.extend(line.raw for line in lines[cut:])
        return Reply(_join(new), _join(rest))
    except Exception:  # pragma: no cover - defensive: intake must never fail here
        return Reply(" ".join(re.sub(r"<[^<>]{0,4000}>", " ", doc).split()), "")
