"""TLS settings of a remote: which servers a pull trusts, and with which client identity.

A remote may narrow trust below the system's CA store: ``tls-ca-path`` trusts only that
CA bundle, and ``tls-pinned-pubkey`` (curl's syntax: ``sha256//BASE64`` digests of the
server certificate's SubjectPublicKeyInfo, several separated by ``;``, or the path of a
PEM/DER public key file) accepts only those keys, so a mirror with a valid public
certificate that is not the pinned one is refused. ``tls-permissive=true`` turns
verification off (ostree's escape hatch for test servers). The pin is checked on every
connection right after its handshake, before a byte of its response is used.
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ostreefs.errors import OstreefsError, UsageError

if TYPE_CHECKING:
    from ostreefs.store.remotes import Remote


class TlsError(OstreefsError):
    """{0}"""


@dataclass(frozen=True)
class TlsSettings:
    """What a remote's config says about TLS (see the module docstring)."""

    ca_path: str | None = None
    client_cert_path: str | None = None
    client_key_path: str | None = None
    permissive: bool = False
    #: Allowed SHA-256 digests of the server's SubjectPublicKeyInfo; empty = no pin.
    pins: frozenset[bytes] = frozenset()

    @classmethod
    def from_remote(cls, rem: Remote) -> TlsSettings:
        """A remote's ``tls-*`` settings, as :func:`~ostreefs.store.remotes.get_remote`
        read them (one reading of the config, so ``remote`` commands and pulls agree);
        only the pin, which only a connection needs, is parsed here."""
        pin = rem.options.get("tls-pinned-pubkey")
        return cls(ca_path=rem.tls_ca_path or None,
                   client_cert_path=rem.tls_client_cert_path or None,
                   client_key_path=rem.tls_client_key_path or None,
                   permissive=rem.tls_permissive,
                   pins=parse_pins(pin) if pin else frozenset())

    def context(self, alpn: list[str]) -> ssl.SSLContext:
        """A client context for these settings offering the ALPN protocols ``alpn``."""
        try:
            if self.ca_path:
                # Only this bundle: create_default_context loads no system CAs then.
                ctx = ssl.create_default_context(cafile=self.ca_path)
            else:
                ctx = ssl.create_default_context()
            if self.client_cert_path:
                ctx.load_cert_chain(self.client_cert_path, self.client_key_path)
            elif self.client_key_path:
                raise UsageError("tls-client-key-path is set but tls-client-cert-path is not")
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"Cannot load TLS settings of the remote: {e}") from None
        if self.permissive:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(alpn)
        return ctx

    def check_peer(self, der: bytes | None, host: str) -> None:
        """Refuse the connection unless the server's key (``der``: its certificate) is pinned."""
        if not self.pins:
            return
        if not der:
            raise TlsError(f"TLS: {host} presented no certificate to check the pin against")
        try:
            spki = certificate_spki(der)
        except ValueError as e:
            raise TlsError(f"TLS: cannot read the certificate of {host}: {e}") from None
        if hashlib.sha256(spki).digest() not in self.pins:
            raise TlsError(f"TLS: the public key of {host} does not match the remote's "
                           "tls-pinned-pubkey")


def parse_pins(text: str) -> frozenset[bytes]:
    """curl's pinned-pubkey value: ``sha256//B64[;sha256//B64...]`` or a key file path."""
    text = text.strip()
    if not text.startswith("sha256//"):
        return frozenset([hashlib.sha256(_read_pubkey_file(Path(text))).digest()])
    out = set()
    for item in text.split(";"):
        item = item.strip()
        if not item:
            continue
        if not item.startswith("sha256//"):
            raise UsageError(f"Invalid tls-pinned-pubkey entry '{item}'",
                             hint="use sha256//BASE64 entries separated by ';'")
        try:
            digest = base64.b64decode(item[8:], validate=True)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise UsageError(f"Invalid tls-pinned-pubkey entry '{item}'",
                             hint="the base64 must decode to a 32-byte SHA-256 digest")
        out.add(digest)
    return frozenset(out)


def _read_pubkey_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"Cannot read tls-pinned-pubkey file {path}: {e.strerror}") from None
    if b"-----BEGIN PUBLIC KEY-----" in data:
        body = data.split(b"-----BEGIN PUBLIC KEY-----", 1)[1].split(b"-----END", 1)[0]
        try:
            return base64.b64decode(b"".join(body.split()))
        except ValueError:
            raise UsageError(f"Malformed PEM public key in {path}") from None
    return data


# -------------------------------------------------------------------- DER reading


def _tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag = data[pos]
    n = data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or pos + k > len(data):
            raise ValueError("bad DER length")
        n = int.from_bytes(data[pos:pos + k], "big")
        pos += k
    if pos + n > len(data):
        raise ValueError("DER element beyond the data")
    return tag, pos, pos + n


def certificate_spki(der: bytes) -> bytes:
    """The SubjectPublicKeyInfo element (DER, with its header) of an X.509 certificate.

    Certificate = SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serial,
    signature, issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }.
    """
    tag, start, _ = _tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, pos, tbs_end = _tlv(der, start)
    if tag != 0x30:
        raise ValueError("no tbsCertificate")
    index = 0
    while pos < tbs_end:
        tag, vstart, vend = _tlv(der, pos)
        if index == 0 and tag == 0xA0:  # explicit version: not counted
            pos = vend
            continue
        if index == 5:
            if tag != 0x30:
                raise ValueError("no SubjectPublicKeyInfo")
            return der[pos:vend]
        index += 1
        pos = vend
    raise ValueError("no SubjectPublicKeyInfo")
