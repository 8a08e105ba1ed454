"""Self-signed certificates for test servers, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def openssl_missing() -> str | None:
    """Return None when the openssl command is available, else the reason to skip."""
    return None if shutil.which("openssl") else "the openssl command is not installed"


def make_self_signed(directory: Path, name: str = "server") -> tuple[Path, Path]:
    """Write ``<name>.crt`` and ``<name>.key`` for localhost / 127.0.0.1 into ``directory``.

    The certificate is its own CA: clients trust it by using the certificate file as CA file.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("a self-signed certificate needs the openssl command")
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    args = "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost"
    result = subprocess.run(
        [
            openssl,
            *args.split(),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"openssl failed: {result.stderr.decode(errors='replace')}")
    return cert, key
