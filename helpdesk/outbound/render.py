"""Render the mail templates: ``{name}.subject.txt``, ``{name}.txt`` and ``{name}.html``.

The shipped templates live in the project's top-level ``templates/`` directory (``HELPDESK_TEMPLATES``
overrides it); a channel may name a directory whose files replace shipped ones of the same name.
HTML templates are autoescaped, text templates are not; an undefined variable is an error, so a
typo in an operator's template fails loudly as :class:`TemplateProblem` instead of sending a mail
with a hole in it.
"""

from __future__ import annotations

import functools
import os
import re
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

_URL = re.compile(r"\bhttps?://[^\s<>\"'`]+", re.IGNORECASE)
_URL_TRAILING = ".,;:!?'\"*_"
_CLOSING = {")": "(", "]": "[", "}": "{"}
_QUOTE_MARK = re.compile(r"^ {0,3}> ?")
_MAX_QUOTE_DEPTH = 10

_P = '<p style="margin:0 0 1em 0;">'
_BLOCKQUOTE = '<blockquote style="margin:0 0 1em 0;padding:0 0 0 1em;border-left:3px solid #cccccc;color:#555555;">'


class TemplateProblem(Exception):
    """A template could not be rendered: missing file, syntax error, undefined variable, ..."""


@dataclass(frozen=True)
class Rendered:
    """A rendered mail: a one-line subject, the text body and the html body."""

    subject: str
    text: str
    html: str


class Templates:
    """The templates of one channel: the shipped ones, each replaceable by a file in ``override_dir``."""

    def __init__(self, default_dir: Path, override_dir: Path | None = None) -> None:
        self.default_dir = Path(default_dir)
        self.override_dir = Path(override_dir) if override_dir is not None else None

    def render(self, name: str, context: Mapping[str, object]) -> Rendered:
        """Render the three files of template ``name``; TemplateProblem when any of them fails."""
        env = _environment(self.default_dir, self.override_dir)
        values = dict(context)
        subject = self._render(env, f"{name}.subject.txt", values)
        return Rendered(
            subject=" ".join(subject.split()),
            text=self._render(env, f"{name}.txt", values),
            html=self._render(env, f"{name}.html", values),
        )

    def _render(self, env: jinja2.Environment, filename: str, values: dict[str, object]) -> str:
        try:
            return env.get_template(filename).render(values)
        except Exception as exc:
            raise TemplateProblem(f"{filename}: {self._describe(filename, exc)}") from exc

    def _describe(self, filename: str, exc: Exception) -> str:
        """The error with the file and line it happened in, when that is known."""
        if isinstance(exc, jinja2.TemplateNotFound):
            dirs = ", ".join(str(d) for d in self._dirs())
            if exc.name == filename:
                return f"template not found (looked in {dirs})"
            return f"template {exc.name} not found (looked in {dirs})"
        where: str | None
        lineno: int | None
        if isinstance(exc, jinja2.TemplateSyntaxError):
            where, lineno = exc.name, exc.lineno
            message = exc.message or str(exc)
        else:
            where, lineno = self._template_frame(exc)
            message = str(exc) if isinstance(exc, jinja2.TemplateError) else f"{type(exc).__name__}: {exc}"
        location = [where] if where and where != filename else []
        if lineno:
            location.append(f"line {lineno}")
        return f"{' '.join(location)}: {message}" if location else message

    def _dirs(self) -> list[Path]:
        return [d for d in (self.override_dir, self.default_dir) if d is not None]

    def _template_frame(self, exc: Exception) -> tuple[str | None, int | None]:
        """The innermost traceback frame inside a template file (jinja rewrites frames to template lines)."""
        roots = [d.resolve() for d in self._dirs()]
        for frame in reversed(traceback.extract_tb(exc.__traceback__)):
            path = Path(frame.filename).resolve()
            if path.suffix == ".py":
                continue
            for root in roots:
                if path.is_relative_to(root):
                    return path.relative_to(root).as_posix(), frame.lineno
        return None, None


def default_templates_dir() -> Path:
    """The shipped templates: ``templates/`` at the top of the project, or ``$HELPDESK_TEMPLATES``."""
    configured = os.environ.get("HELPDESK_TEMPLATES")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "templates"


def text_to_html(text: str) -> Markup:
    """Plain text as HTML: escaped, http(s) URLs as links, paragraphs at blank lines, line breaks as
    ``<br>``, ``>`` quoted lines in (nested) blockquotes."""
    out: list[str] = []
    paragraph: list[str] = []
    depth = 0

    def flush() -> None:
        if paragraph:
            out.append(_P + "<br>\n".join(_inline(line) for line in paragraph) + "</p>")
            paragraph.clear()

    for raw in str(text).replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line_depth, line = _quote_depth(raw)
        if line_depth != depth:
            flush()
            while depth < line_depth:
                out.append(_BLOCKQUOTE)
                depth += 1
            while depth > line_depth:
                out.append("</blockquote>")
                depth -= 1
        if line.strip():
            paragraph.append(line)
        else:
            flush()
    flush()
    out.extend("</blockquote>" for _ in range(depth))
    return Markup("\n".join(out))


def duration(value: timedelta | None) -> str:
    """``HH:MM`` (whole minutes, rounded down; ``-`` before negative values); ``""`` for None."""
    if value is None:
        return ""
    minutes = int(abs(value).total_seconds()) // 60
    sign = "-" if value < timedelta(0) and minutes else ""
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _quote_depth(line: str) -> tuple[int, str]:
    """How many ``>`` quote marks start the line (at most 10), and the rest of it."""
    depth = 0
    while depth < _MAX_QUOTE_DEPTH:
        match = _QUOTE_MARK.match(line)
        if match is None:
            break
        line = line[match.end() :]
        depth += 1
    return depth, line


def _inline(line: str) -> str:
    """One escaped line with its http(s) URLs turned into links."""
    parts: list[str] = []
    pos = 0
    for match in _URL.finditer(line):
        url = _trim_url(match.group(0))
        if "://" not in url or url.endswith("://"):
            continue
        parts.append(str(escape(line[pos : match.start()])))
        parts.append(f'<a href="{escape(url)}">{escape(url)}</a>')
        pos = match.start() + len(url)
    parts.append(str(escape(line[pos:])))
    return "".join(parts)


def _trim_url(url: str) -> str:
    """Without trailing punctuation, and without a closing bracket that has no opening one in the URL."""
    while url:
        last = url[-1]
        unbalanced = last in _CLOSING and url.count(last) > url.count(_CLOSING[last])
        if last not in _URL_TRAILING and not unbalanced:
            break
        url = url[:-1]
    return url


@functools.lru_cache(maxsize=64)
def _environment(default_dir: Path, override_dir: Path | None) -> jinja2.Environment:
    """One environment per directory pair (templates are compiled once and reloaded when changed)."""
    loaders: list[jinja2.BaseLoader] = []
    if override_dir is not None:
        loaders.append(jinja2.FileSystemLoader(override_dir))
    loaders.append(jinja2.FileSystemLoader(default_dir))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["text_to_html"] = text_to_html
    env.filters["duration"] = duration
    return env
