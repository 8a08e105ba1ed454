"""Locate the shared real-world mail corpora (``../shared/corpora`` beside the project).

A clone without ``../shared/`` skips corpus tests with a clear reason, except under
``CI=true``, where a missing corpus is an error.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CORPORA_DIR = Path(os.environ.get("HELPDESK_CORPORA", PROJECT_ROOT.parent / "shared" / "corpora"))


def corpora_dir() -> Path:
    """Return the corpora directory, or skip (fail under CI=true) when it is absent."""
    if CORPORA_DIR.is_dir():
        return CORPORA_DIR
    reason = f"shared mail corpora not found at {CORPORA_DIR} (set HELPDESK_CORPORA)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)
