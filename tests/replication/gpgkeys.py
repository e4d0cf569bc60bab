"""Throw-away GPG signing keys for the replication tests.

``make_key(name)`` makes a fresh GNUPGHOME (short path under /tmp, so gpg-agent's socket
fits) holding one unprotected ed25519 signing key, and exports its public key as
armored (``.asc``) and binary (``.gpg``) files. ``kill_agent`` / ``remove_key`` stop
the agent gpg starts for signing, so no agent outlives a test and none ever waits for
a pinentry (the key has no passphrase).

Fixtures: ``signing_key`` and ``other_key``, two different keys made once per module
(tests/replication/conftest.py imports them for every test there).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_BATCH = """%no-protection
Key-Type: EDDSA
Key-Curve: ed25519
Key-Usage: sign
Name-Real: {name}
Name-Email: {email}
Expire-Date: 0
%commit
"""

#: An RSA certification key with a separate RSA signing subkey, a comment and an
#: expiry date: the case where ostree prints "Primary key ID" and expiry lines.
_BATCH_RSA_SUBKEY = """%no-protection
Key-Type: RSA
Key-Length: 2048
Key-Usage: cert
Subkey-Type: RSA
Subkey-Length: 2048
Subkey-Usage: sign
Name-Real: {name}
Name-Comment: test key
Name-Email: {email}
Expire-Date: 2y
%commit
"""


@dataclass
class TestKey:
    """A signing key: its GNUPGHOME, ids and exported public key files."""

    home: Path
    name: str
    email: str
    fingerprint: str
    public_asc: Path
    public_gpg: Path

    __test__ = False  # not a test class, despite the name

    @property
    def key_id(self) -> str:
        """The long (16 hex digit) key ID, as ostree prints it."""
        return self.fingerprint[-16:]

    @property
    def uid(self) -> str:
        """The user ID as ostree prints it (gpgme's name and email, no comment)."""
        return f"{self.name} <{self.email}>"


def _gpg(home: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--no-tty", *args],
                          input=input, capture_output=True, text=True, timeout=60, check=True)


def make_key(name: str = "Test Signer", email: str = "signer@example.com", *,
             rsa_subkey: bool = False) -> TestKey:
    """A fresh key in its own GNUPGHOME: ed25519, or ``rsa_subkey`` (see above)."""
    home = Path(tempfile.mkdtemp(prefix="gk-", dir="/tmp"))
    home.chmod(0o700)
    try:
        batch = _BATCH_RSA_SUBKEY if rsa_subkey else _BATCH
        _gpg(home, "--gen-key", input=batch.format(name=name, email=email))
        out = _gpg(home, "--with-colons", "--fingerprint", "--list-secret-keys").stdout
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        asc = home / "public.asc"
        asc.write_text(_gpg(home, "--armor", "--export", fpr).stdout)
        binary = home / "public.gpg"
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--output", str(binary),
                        "--export", fpr], capture_output=True, timeout=60, check=True)
    except BaseException:
        remove_key_home(home)
        raise
    return TestKey(home, name, email, fpr, asc, binary)


def kill_agent(home: Path | str) -> None:
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"],
                   capture_output=True, timeout=30, check=False)


def remove_key_home(home: Path | str) -> None:
    kill_agent(home)
    shutil.rmtree(home, ignore_errors=True)


def remove_key(key: TestKey) -> None:
    remove_key_home(key.home)


@pytest.fixture(scope="module")
def signing_key() -> Iterator[TestKey]:
    key = make_key("Test Signer", "signer@example.com")
    yield key
    remove_key(key)


@pytest.fixture(scope="module")
def other_key() -> Iterator[TestKey]:
    key = make_key("Other Signer", "other@example.org")
    yield key
    remove_key(key)
