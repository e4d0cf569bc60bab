"""A deliberately bad static HTTP server: serves a repository, but misbehaves on request.

``BadServer(root, faults)`` serves ``root`` on 127.0.0.1 (HTTP/1.1, keep-alive) from
threads of the test process; ``faults`` maps a request path (``/objects/ab/cd....filez``)
to one of:

- ``"stall"``: headers and half the body, then nothing (until the server is stopped);
- ``"truncate"``: a Content-Length for the whole file, half the body, then close;
- ``"flip"``: the whole body with one byte (in the middle) inverted;
- ``"drop"``: 404, as if the file were not there.

A fault may also be given for every path matching a predicate (``match``) so a test
can hit "the first .filez asked for" without knowing it beforehand.  ``requests`` is
the list of paths asked for, in order; ``faulted`` the paths a fault was applied to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

FAULTS = ("stall", "truncate", "flip", "drop")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        bad = self.server.owner
        path = unquote(urlsplit(self.path).path)
        fault = bad.fault_for(path)
        with bad.lock:
            bad.requests.append(path)
            if fault:
                bad.faulted.append(path)
        target = (bad.root / path.lstrip("/")).resolve()
        if (fault == "drop" or ".." in path.split("/") or not target.is_relative_to(bad.root)
                or not target.is_file()):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = target.read_bytes()
        if fault == "flip" and data:
            i = len(data) // 2
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not body:
            return
        if fault in ("stall", "truncate"):
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if fault == "stall":
                bad.stopping.wait()
            self.close_connection = True
            return
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: BadServer


class BadServer:
    def __init__(self, root: Path | str, faults: dict[str, str] | None = None, *,
                 match: Callable[[str], bool] | None = None, fault: str | None = None,
                 limit: int | None = None) -> None:
        """``match``/``fault``: apply ``fault`` to paths ``match`` accepts, at most ``limit``
        times in all (None: always)."""
        for f in [*(faults or {}).values(), *([fault] if fault else [])]:
            assert f in FAULTS, f
        self.root = Path(root).resolve()
        self.faults = dict(faults or {})
        self.match = match
        self.fault = fault
        self.limit = limit
        self.requests: list[str] = []
        self.faulted: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def fault_for(self, path: str) -> str | None:
        if path in self.faults:
            return self.faults[path]
        if self.match is not None and self.fault and self.match(path):
            with self.lock:
                if self.limit is not None and len(self.faulted) >= self.limit:
                    return None
            return self.fault
        return None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> BadServer:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> BadServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
