"""A small read-only HTTP server for an archive repository, for trying pulls on one machine.

Production mirrors are plain static web servers (nginx, a CDN); this exists so that
``ostreefs serve`` + ``ostree pull`` works without setting one up.  It answers GET and
HEAD for exactly the files a pull reads (config, summary and its signature, refs,
objects, static deltas) and nothing else: no listings, no repository-local state
(``tmp/``, ``state/``, locks), no writes.  Paths are walked one component at a time with
``O_NOFOLLOW`` below a directory descriptor opened once, so neither ``..`` nor a symlink
planted in the repository can reach a file outside it.
"""

from __future__ import annotations

import email.utils
import errno
import os
import re
import socket
import stat
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ostreefs.errors import OstreefsError
from ostreefs.store.repo import Repo

#: What a pull may ask for, relative to the repository root (after percent-decoding).
_SERVED = re.compile(
    r"""(?x)
    config | summary | summary\.sig
    | refs/(?:heads|mirrors|remotes)/.+
    | objects/[0-9a-f]{2}/[0-9a-f]{62}\.(?:commit|commitmeta|dirtree|dirmeta|filez)
    | deltas/.+ | delta-indexes/.+
    """)

#: Objects and deltas are named by checksum and never change; the rest moves with refs.
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class ServeError(OstreefsError):
    """{}"""


RequestLog = Callable[[str], None]


def request_parts(target: str) -> list[str] | None:
    """The path components a request target names, or None when it is not served."""
    path = unquote(urlsplit(target).path, errors="strict")
    if not path.startswith("/") or "\0" in path:
        return None
    rel = path[1:]
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    if not _SERVED.fullmatch(rel):
        return None
    return parts


def open_beneath(root_fd: int, parts: list[str]) -> int:
    """A descriptor for the regular file ``parts`` below ``root_fd``, following no symlink.

    Raises FileNotFoundError for anything that is missing, a symlink, or not a regular
    file, so that all of them look alike from outside.
    """
    fd = root_fd
    try:
        for name in parts[:-1]:
            nfd = os.open(name, _OPEN_DIR, dir_fd=fd)
            if fd != root_fd:
                os.close(fd)
            fd = nfd
        try:
            ffd = os.open(parts[-1], _OPEN_FILE, dir_fd=fd)
        except OSError as e:
            raise FileNotFoundError(errno.ENOENT, "not served") from e
        if not stat.S_ISREG(os.fstat(ffd).st_mode):
            os.close(ffd)
            raise FileNotFoundError(errno.ENOENT, "not served")
        os.set_blocking(ffd, True)
        return ffd
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise FileNotFoundError(errno.ENOENT, "not served") from e
    finally:
        if fd != root_fd:
            os.close(fd)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ostreefs-serve"
    timeout = 120
    server: RepoServer

    def version_string(self) -> str:
        return self.server_version

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _refuse(self) -> None:
        self.close_connection = True
        self._status(HTTPStatus.METHOD_NOT_ALLOWED, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _status(self, status: HTTPStatus, headers: dict[str, str] | None = None) -> None:
        body = f"{status.value} {status.phrase}\n".encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, body: bool) -> None:
        try:
            parts = request_parts(self.path)
        except UnicodeDecodeError:
            parts = None
        if parts is None:
            self._status(HTTPStatus.NOT_FOUND)
            return
        try:
            fd = open_beneath(self.server.root_fd, parts)
        except FileNotFoundError:
            self._status(HTTPStatus.NOT_FOUND)
            return
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            immutable = parts[0] in ("objects", "deltas", "delta-indexes")
            headers = {
                "Content-Type": "application/octet-stream",
                "Last-Modified": email.utils.formatdate(st.st_mtime, usegmt=True),
                "ETag": etag,
                "Cache-Control": _IMMUTABLE if immutable else _REVALIDATE,
            }
            if self._not_modified(etag, st.st_mtime):
                self.send_response(HTTPStatus.NOT_MODIFIED)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                return
            self.send_response(HTTPStatus.OK)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(st.st_size))
            self.end_headers()
            if body and st.st_size:
                self.connection.sendfile(f, 0, st.st_size)

    def _not_modified(self, etag: str, mtime: float) -> bool:
        inm = self.headers.get("If-None-Match")
        if inm is not None:
            return etag in (t.strip() for t in inm.split(",")) or inm.strip() == "*"
        ims = self.headers.get("If-Modified-Since")
        if ims is not None:
            try:
                when = email.utils.parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError):
                return False
            return int(mtime) <= when
        return False

    def log_message(self, format: str, *args: object) -> None:
        if self.server.log is not None:
            self.server.log(f"{self.address_string()} {format % args}")


class RepoServer(ThreadingHTTPServer):
    """A threading HTTP server for one repository; ``serve_forever()`` runs it."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], root_fd: int, log: RequestLog | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.root_fd = root_fd
        self.log = log
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self._close_root()
            raise

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = str(host)
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def server_close(self) -> None:
        super().server_close()
        self._close_root()

    def _close_root(self) -> None:
        """The server owns the repository descriptor from construction on."""
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def open_server(repo_path: str | os.PathLike[str], bind: str = "127.0.0.1", port: int = 8080,
                log: RequestLog | None = None) -> RepoServer:
    """A server for the archive repository at ``repo_path``, listening but not yet serving.

    Only archive repositories can be pulled over HTTP (a pull fetches ``.filez``
    objects), so any other mode is refused here rather than by every pull.
    """
    repo = Repo.open(repo_path)
    try:
        if not repo.mode.is_archive:
            raise ServeError(
                f"{repo_path} is a {repo.mode.cli_name} repository; only archive "
                "repositories can be pulled over HTTP",
                hint="make an archive copy: ostreefs init --mode=archive --repo=NEW && "
                     f"ostreefs pull-local --repo=NEW {repo_path}")
    finally:
        repo.close()
    root_fd = os.open(Path(repo_path).resolve(), _OPEN_DIR)
    try:
        return RepoServer((bind, port), root_fd, log)
    except OSError as e:
        raise ServeError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
