"""A real nginx serving a directory on 127.0.0.1, for the replication tests and benchmark.

The server block is the one documented in the README for serving an archive repository
(static files, long-lived caching for immutable objects, revalidation for refs, summary
and config), so the tests exercise the documented configuration.  nginx runs as a
non-daemon, single-process child (``master_process off``): it needs no user switch, so
it can read directories that only root may read, and it dies with its parent's fixture.

The access log is one tab-separated line per request (method, raw path, status, body
bytes, protocol, completion), read back with :meth:`Nginx.log` / :meth:`Nginx.paths`,
which is how the tests count what a pull fetched.

Self-signed test certificates (two unrelated CAs, server certificates for 127.0.0.1 /
localhost, a client certificate) are made with the openssl command line by
:func:`make_test_certs`; :func:`pubkey_pin` gives curl's ``sha256//BASE64`` pin of a
certificate's public key.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

NGINX_BIN = "/usr/sbin/nginx"

#: Cache headers: object and delta files never change once written (their name is
#: their checksum), so caches may keep them forever; everything else (refs, summary,
#: summary.sig, config) moves and must be revalidated on every pull.
IMMUTABLE = 'add_header Cache-Control "public, max-age=31536000, immutable" always;'
REVALIDATE = 'add_header Cache-Control "no-cache" always;'


@dataclass(frozen=True)
class TLS:
    """Server-side TLS: certificate chain and key, and a CA that client certs must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class LogEntry:
    method: str
    path: str
    status: int
    body_bytes: int
    protocol: str
    completed: bool


def server_block(root: Path | str, listen: str, *, tls: TLS | None = None,
                 http2: bool = False, throttled: bool = False) -> str:
    """The ``server { ... }`` block serving archive repository ``root`` read-only.

    ``throttled`` (tests only, not part of the documented configuration) delays requests
    beyond the ``throttle`` zone's rate, so a test can interrupt a pull half-way.
    """
    listen_opts = ""
    if tls is not None:
        listen_opts = " ssl http2" if http2 else " ssl"
    lines = [
        "server {",
        f"    listen {listen}{listen_opts};",
        f"    root {root};",
        "    # Only what a pull reads; no listings, no writes.",
        "    autoindex off;",
        *(["    limit_req zone=throttle burst=1000000;"] if throttled else []),
        "    location / {",
        "        limit_except GET { deny all; }",
        f"        {REVALIDATE}",
        "    }",
        "    location /objects/ {",
        "        limit_except GET { deny all; }",
        f"        {IMMUTABLE}",
        "    }",
        "    location /deltas/ {",
        "        limit_except GET { deny all; }",
        f"        {IMMUTABLE}",
        "    }",
        "    # Local state of the repository is nobody's business.",
        "    location /tmp/ { return 404; }",
        "    location /state/ { return 404; }",
        "    location = /.lock { return 404; }",
    ]
    if tls is not None:
        lines += [
            f"    ssl_certificate {tls.cert};",
            f"    ssl_certificate_key {tls.key};",
            "    ssl_protocols TLSv1.2 TLSv1.3;",
        ]
        if tls.client_ca is not None:
            lines += [
                f"    ssl_client_certificate {tls.client_ca};",
                "    ssl_verify_client on;",
            ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _config(prefix: Path, root: Path, port: int, tls: TLS | None, http2: bool,
            rate: int | None) -> str:
    temp = prefix / "tmp"
    throttle = ([f"    limit_req_zone $server_port zone=throttle:1m rate={rate}r/s;"]
                if rate else [])
    return "\n".join([
        "daemon off;",
        "master_process off;",
        "worker_processes 1;",
        f"pid {prefix / 'nginx.pid'};",
        f"error_log {prefix / 'error.log'} info;",
        "events { worker_connections 1024; }",
        "http {",
        "    types { }",
        "    default_type application/octet-stream;",
        "    sendfile on;",
        "    tcp_nopush on;",
        "    keepalive_requests 100000;",
        "    keepalive_timeout 60s;",
        "    log_format repl '$request_method\\t$request_uri\\t$status\\t$body_bytes_sent"
        "\\t$server_protocol\\t$request_completion';",
        f"    access_log {prefix / 'access.log'} repl;",
        *(f"    {kind}_temp_path {temp};" for kind in
          ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
        *throttle,
        server_block(root, f"127.0.0.1:{port}", tls=tls, http2=http2, throttled=bool(rate)),
        "}",
        "",
    ])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, so no nginx outlives it."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx serving ``root`` on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self, root: Path | str, prefix: Path | str, *, tls: TLS | None = None,
                 http2: bool = False, requests_per_second: int | None = None) -> None:
        """``requests_per_second``: delay (never refuse) requests beyond that rate."""
        self.root = Path(root).resolve()
        self.prefix = Path(prefix)
        self.tls = tls
        self.http2 = http2
        self.rate = requests_per_second
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    @property
    def error_log(self) -> Path:
        return self.prefix / "error.log"

    def start(self) -> Nginx:
        self.prefix.mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        last = ""
        for _ in range(10):
            self.port = free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(_config(self.prefix, self.root, self.port, self.tls, self.http2,
                                     self.rate))
            self.access_log.write_bytes(b"")
            self.proc = subprocess.Popen(
                [NGINX_BIN, "-p", str(self.prefix), "-e", str(self.error_log), "-c", str(conf)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent)
            if self._wait_ready():
                return self
            assert self.proc.stderr is not None
            last = self.proc.stderr.read().decode(errors="replace")
            last += self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
            self.proc = None
            if "Address already in use" not in last:
                break
        raise RuntimeError(f"nginx did not start:\n{last}")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.02)
        self.proc.kill()
        self.proc.wait()
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def __enter__(self) -> Nginx:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the access log ------------------------------------------------------------

    def log(self) -> list[LogEntry]:
        """Requests served so far (nginx writes each line when its response ends)."""
        out = []
        for line in self.access_log.read_text(errors="replace").splitlines():
            f = line.split("\t")
            if len(f) != 6:
                continue
            out.append(LogEntry(f[0], f[1], int(f[2]), int(f[3]), f[4], f[5] == "OK"))
        return out

    def paths(self, *, status: int | None = None) -> list[str]:
        """The request paths, in order, optionally only those answered with ``status``."""
        return [e.path for e in self.log() if status is None or e.status == status]

    def object_paths(self) -> list[str]:
        """Paths of objects fetched with a full, successful response."""
        return [e.path for e in self.log()
                if e.path.startswith("/objects/") and e.status == 200 and e.completed]

    def clear_log(self) -> None:
        """Forget past requests (nginx appends, so truncating in place is safe)."""
        os.truncate(self.access_log, 0)


# -- test certificates ---------------------------------------------------------------


@dataclass(frozen=True)
class TestCerts:
    """PEM files: ``ca`` signed ``server`` and ``client``; ``other_ca`` signed ``other_server``.

    Both server certificates are valid for 127.0.0.1 and localhost, so ``other_server``
    is "a valid certificate, but not the pinned one" for a client trusting both CAs.
    """

    __test__ = False  # not a pytest test class

    dir: Path
    ca: Path
    ca_key: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path
    other_ca: Path
    other_ca_key: Path
    other_server: Path
    other_server_key: Path
    both_cas: Path

    def tls(self, *, other: bool = False, client_auth: bool = False) -> TLS:
        cert, key = ((self.other_server, self.other_server_key) if other
                     else (self.server, self.server_key))
        return TLS(cert, key, self.ca if client_auth else None)


def _openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _make_ca(d: Path, name: str) -> tuple[Path, Path]:
    key, cert = d / f"{name}.key", d / f"{name}.pem"
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", cert, "-days", "3650",
             "-subj", f"/CN=ostreefs test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return cert, key


def _make_leaf(d: Path, name: str, ca: tuple[Path, Path], ext: str) -> tuple[Path, Path]:
    key, csr, cert = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem"
    extfile = d / f"{name}.ext"
    extfile.write_text(ext)
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "3650", "-sha256", "-extfile", extfile, cwd=d)
    return cert, key


_SERVER_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
               "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
_CLIENT_EXT = ("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
               "extendedKeyUsage=clientAuth\n")


def make_test_certs(d: Path) -> TestCerts:
    d.mkdir(parents=True, exist_ok=True)
    ca = _make_ca(d, "ca")
    other_ca = _make_ca(d, "other-ca")
    server = _make_leaf(d, "server", ca, _SERVER_EXT)
    client = _make_leaf(d, "client", ca, _CLIENT_EXT)
    other_server = _make_leaf(d, "other-server", other_ca, _SERVER_EXT)
    both = d / "both-cas.pem"
    both.write_bytes(ca[0].read_bytes() + other_ca[0].read_bytes())
    return TestCerts(d, ca[0], ca[1], server[0], server[1], client[0], client[1],
                     other_ca[0], other_ca[1], other_server[0], other_server[1], both)


def pubkey_pin(cert: Path) -> str:
    """curl's pin of a certificate: ``sha256//`` + base64(sha256(SubjectPublicKeyInfo DER))."""
    pem = subprocess.run(["openssl", "x509", "-in", str(cert), "-pubkey", "-noout"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pem,
                         check=True, capture_output=True).stdout
    return "sha256//" + base64.b64encode(hashlib.sha256(der).digest()).decode()
