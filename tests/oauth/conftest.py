"""Fixtures for the OAuth tests: a local identity server and RSA client certificates."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require
from tests.servers.certs import openssl_missing

KEY_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class ClientCertificate:
    """An application's certificate credential in the layouts an operator may hand over."""

    cert: Path  # the certificate alone
    key: Path  # the unencrypted private key alone
    combined: Path  # certificate and key in one PEM file
    encrypted_key: Path  # the private key encrypted with KEY_PASSWORD


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None
    result = subprocess.run([openssl, *args], capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.decode(errors='replace')}")


def make_rsa_certificate(directory: Path, name: str) -> ClientCertificate:
    """An RSA 2048 self-signed certificate (what msal's certificate credential signs with)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", f"/CN={name}",
        "-keyout", str(key), "-out", str(cert),
    )
    combined = directory / f"{name}.pem"
    combined.write_text(cert.read_text() + key.read_text())
    encrypted = directory / f"{name}.encrypted.key"
    _openssl("pkey", "-in", str(key), "-aes256", "-passout", f"pass:{KEY_PASSWORD}", "-out", str(encrypted))
    return ClientCertificate(cert, key, combined, encrypted)


@pytest.fixture(scope="session")
def client_certificate(tmp_path_factory: pytest.TempPathFactory) -> ClientCertificate:
    """The certificate registered for the test application."""
    require(openssl_missing())
    return make_rsa_certificate(tmp_path_factory.mktemp("client-cert"), "helpdesk-app")


@pytest.fixture(scope="session")
def other_certificate(tmp_path_factory: pytest.TempPathFactory) -> ClientCertificate:
    """A certificate nobody registered."""
    require(openssl_missing())
    return make_rsa_certificate(tmp_path_factory.mktemp("other-cert"), "someone-else")


