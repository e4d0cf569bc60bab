"""A lean HTTP/1.1 client for fetching many small static files: keep-alive and pipelining.

A pull of a 20,000-file commit makes 20,000 GET requests for files of a few KiB. A
general-purpose client (httpx over httpcore and h11) spends about a millisecond of
Python per request, several times what ostree's whole pull takes per object, while a
static server such as nginx answers pipelined requests on a kept-alive connection as
fast as they arrive. So objects are fetched here: a bounded pool of connections, each
with up to ``depth`` requests in flight, responses parsed with a few byte searches.

Only what a static file server sends is understood: a status line, headers, and a body
framed by Content-Length, chunked encoding, or the end of the connection. Anything else
(a redirect, for one) is handed back to the caller as a status to resolve another way.
Requests are idempotent GETs, so a connection the server closes early has its
unanswered requests sent again on a new one; a body cut short is retried a few times,
then reported. A connection that receives nothing for ``timeout`` seconds while it
waits for a response fails the request it waits for.
"""

from __future__ import annotations

import base64
import math
import os
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import trio

from ostreefs import __version__, _fs
from ostreefs.errors import OstreefsError
from ostreefs.replication.tls import TlsError, TlsSettings

USER_AGENT = f"ostreefs/{__version__}"
_RECV = 1 << 18


class HttpError(OstreefsError):
    """{0}"""


class FetchTimeout(HttpError):
    """{0}"""


@dataclass(frozen=True)
class Origin:
    """Where a remote's files are: scheme, host, port and the path prefix of the repo."""

    scheme: str
    host: str
    port: int
    base: str  # path prefix, ends with "/"
    auth: str | None = None  # an Authorization header value from user:password@

    @classmethod
    def parse(cls, url: str) -> Origin:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise HttpError(f"Invalid URL '{url}': {e}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HttpError(f"Unsupported URL '{url}': only http:// and https:// remotes "
                            "can be pulled (use pull-local for a repository on this machine)")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        auth = None
        if parts.username is not None:
            cred = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = "Basic " + base64.b64encode(cred.encode()).decode()
        base = parts.path or "/"
        if not base.endswith("/"):
            base += "/"
        return cls(parts.scheme, parts.hostname, port, base, auth)

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def url(self, path: str) -> str:
        """The full URL of ``path`` (relative to the repository)."""
        return f"{self.scheme}://{self.netloc}{self.base}{path}"


@dataclass(slots=True)
class Response:
    status: int
    #: The body, or None when it was spilled to ``spill`` (a file the caller removes).
    body: bytes | None
    spill: str | None = None
    length: int = 0


@dataclass(slots=True, eq=False)
class Request:
    """One GET; the callbacks run on the event loop and must not block."""

    path: str
    on_done: Callable[[Request, Response], None]
    on_error: Callable[[Request, BaseException], None]
    #: Lower is sent first (metadata ahead of content, so the walk keeps moving).
    priority: int = 1
    #: A larger body is refused (metadata objects have a bound; content has none).
    max_size: int | None = None
    attempts: int = 0
    data: object = None


@dataclass(eq=False)
class _Conn:
    stream: trio.abc.Stream
    pending: deque[Request] = field(default_factory=deque)
    scope: trio.CancelScope | None = None
    closing: bool = False
    answered: int = 0


class _ResponseEnd(Exception):
    """The server closed the connection (cleanly or not) while requests were pending."""

    def __init__(self, partial: bool) -> None:
        super().__init__()
        self.partial = partial


class H1Pool:
    """Up to ``connections`` kept-alive connections to one origin, fed from one queue.

    :meth:`run` must be running in a nursery; :meth:`submit` queues a request from any
    task of the same event loop. ``on_fatal`` is told about failures that no single
    request owns (the server cannot be reached at all).
    """

    def __init__(self, origin: Origin, *, tls: TlsSettings | None, connections: int,
                 depth: int, timeout: float, retries: int, headers: dict[str, str],
                 spill_dir: str, spill_threshold: int,
                 on_fatal: Callable[[BaseException], None], http2: bool = True) -> None:
        self.origin = origin
        self.tls = tls if tls is not None else TlsSettings()
        self.max_conns = max(1, connections)
        self.depth = max(1, depth)
        self.timeout = timeout
        self.retries = retries
        self.spill_dir = spill_dir
        self.spill_threshold = spill_threshold
        self.on_fatal = on_fatal
        #: Offer HTTP/2 in the TLS handshake (the remote's ``http2`` option).
        self.http2 = http2
        self._ssl_ctx: ssl.SSLContext | None = None
        self._queues: tuple[deque[Request], deque[Request]] = (deque(), deque())
        self._lot = trio.lowlevel.ParkingLot()
        self._conns = 0
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._paused = False
        self._connect_failures = 0
        #: Bytes received from the server, headers included.
        self.bytes_received = 0
        head = [f"Host: {origin.netloc}", f"User-Agent: {USER_AGENT}",
                "Accept-Encoding: identity"]
        if origin.auth:
            head.append(f"Authorization: {origin.auth}")
        self.extra_headers = [(k, v) for k, v in headers.items()]
        if origin.auth:
            self.extra_headers.insert(0, ("Authorization", origin.auth))
        head += [f"{k}: {v}" for k, v in headers.items()]
        self._head_tail = (" HTTP/1.1\r\n" + "\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        self._base = origin.base.encode("latin-1")

    # ---------------------------------------------------------------- queueing

    def submit(self, req: Request) -> None:
        if self._closed:
            return
        self._queues[0 if req.priority <= 0 else 1].append(req)
        self._lot.unpark_all()
        self._maybe_connect()

    def _queued(self) -> int:
        return len(self._queues[0]) + len(self._queues[1])

    def _pop(self) -> Request:
        return self._queues[0].popleft() if self._queues[0] else self._queues[1].popleft()

    def _requeue(self, reqs: list[Request]) -> None:
        """Put unanswered requests back at the front, in their order."""
        for req in reversed(reqs):
            self._queues[0 if req.priority <= 0 else 1].appendleft(req)
        if reqs:
            self._lot.unpark_all()
            self._maybe_connect()

    def _maybe_connect(self) -> None:
        if self._nursery is None or self._closed or self._conns >= self.max_conns:
            return
        # One more connection for each window's worth of queued work.
        if self._conns == 0 or self._queued() > self.depth * self._conns:
            self._conns += 1
            self._nursery.start_soon(self._conn_task)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the queue until :meth:`close`; start with ``nursery.start(pool.run)``."""
        async with trio.open_nursery() as n:
            self._nursery = n
            task_status.started()
            self._maybe_connect()
            while not self._closed:
                await self._lot.park()
            n.cancel_scope.cancel()

    def close(self) -> None:
        self._closed = True
        self._lot.unpark_all()

    def hold(self, paused: bool) -> None:
        """Stop (or resume) sending new requests; those in flight are still answered."""
        self._paused = paused
        if not paused:
            self._lot.unpark_all()

    # ------------------------------------------------------------- connections

    async def _connect(self) -> tuple[trio.abc.Stream, bool]:
        """A new connection, and whether it speaks HTTP/2."""
        o = self.origin
        with trio.fail_after(self.timeout):
            tcp = await trio.open_tcp_stream(o.host, o.port)
            tcp.setsockopt(6, 1, 1)  # TCP_NODELAY: requests are small
            if o.scheme != "https":
                return tcp, False
            if self._ssl_ctx is None:
                self._ssl_ctx = self.tls.context(["h2", "http/1.1"] if self.http2
                                                 else ["http/1.1"])
            stream = trio.SSLStream(tcp, self._ssl_ctx, server_hostname=o.host,
                                    https_compatible=True)
            try:
                await stream.do_handshake()
                self.tls.check_peer(stream.getpeercert(binary_form=True), o.host)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            return stream, stream.selected_alpn_protocol() == "h2"

    async def _conn_task(self) -> None:
        try:
            while not self._closed:
                while not self._queued() and not self._closed:
                    await self._lot.park()
                if self._closed:
                    return
                try:
                    stream, is_h2 = await self._connect()
                except TlsError as e:
                    self._fatal(e)
                    return
                except (OSError, trio.TooSlowError, ssl.SSLError,
                        trio.BrokenResourceError) as e:
                    self._connect_failures += 1
                    if self._connect_failures > self.retries:
                        self._fatal(_connect_error(self.origin, e))
                        return
                    await trio.sleep(min(2.0, 0.1 * 2 ** self._connect_failures))
                    continue
                self._connect_failures = 0
                try:
                    if is_h2:
                        self.max_conns = 1  # streams multiplex: one connection is enough
                        await self._serve_h2(stream)
                    else:
                        await self._serve(_Conn(stream))
                finally:
                    await trio.aclose_forcefully(stream)
        finally:
            self._conns -= 1

    async def _serve(self, conn: _Conn) -> None:
        async with trio.open_nursery() as n:
            n.start_soon(self._sender, conn)
            try:
                await self._receiver(conn)
            except _ResponseEnd as e:
                self._connection_ended(conn, e.partial)
            except trio.TooSlowError:
                self._timed_out(conn)
            except (trio.BrokenResourceError, OSError, ssl.SSLError) as e:
                self._connection_ended(conn, True, e)
            except HttpError as e:
                self._fail_first(conn, e)
            else:
                self._requeue(list(conn.pending))
                conn.pending.clear()
            conn.closing = True
            n.cancel_scope.cancel()

    def _fatal(self, err: BaseException) -> None:
        """Nothing queued can be fetched: fail each request, then tell the owner."""
        while self._queued():
            req = self._pop()
            req.on_error(req, err)
        self.on_fatal(err)

    async def _serve_h2(self, stream: trio.abc.Stream) -> None:
        from ostreefs.replication.http2 import H2Session

        session = H2Session(self, stream)
        try:
            await session.run()
        except HttpError as e:
            self._fatal(e)
        except (trio.BrokenResourceError, OSError, ssl.SSLError) as e:
            session._lost(str(e) or type(e).__name__)

    def _fail_first(self, conn: _Conn, err: BaseException) -> None:
        if conn.pending:
            req = conn.pending.popleft()
            req.on_error(req, err)
        self._requeue(list(conn.pending))
        conn.pending.clear()

    def _timed_out(self, conn: _Conn) -> None:
        req = conn.pending[0] if conn.pending else None
        what = self.origin.url(req.path) if req else self.origin.netloc
        self._fail_first(conn, FetchTimeout(
            f"Timed out after {self.timeout:g} seconds without data from the server while "
            f"fetching {what}"))

    def _connection_ended(self, conn: _Conn, partial: bool,
                          err: BaseException | None = None) -> None:
        """Requeue what was not answered; a request cut off mid-response counts a try."""
        if not conn.pending:
            return
        first = conn.pending[0]
        if partial or conn.answered == 0:
            first.attempts += 1
            if first.attempts > self.retries:
                conn.pending.popleft()
                why = f" ({err})" if err is not None and str(err) else ""
                first.on_error(first, HttpError(
                    f"Connection closed before the whole response for "
                    f"{self.origin.url(first.path)} was received{why}"))
        self._requeue(list(conn.pending))
        conn.pending.clear()

    async def _sender(self, conn: _Conn) -> None:
        depth = self.depth
        while not conn.closing and not self._closed:
            if self._paused or not self._queued() or len(conn.pending) >= depth:
                await self._lot.park()
                continue
            batch = []
            base = self._base
            tail = self._head_tail
            while len(conn.pending) < depth and self._queued():
                req = self._pop()
                conn.pending.append(req)
                batch.append(b"GET " + base + req.path.encode("latin-1") + tail)
            if conn.scope is not None and conn.scope.deadline == math.inf:
                conn.scope.deadline = trio.current_time() + self.timeout
            try:
                await conn.stream.send_all(b"".join(batch))
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # the receiver sees the closed connection and requeues

    async def _read_more(self, conn: _Conn, buf: bytearray) -> bool:
        """Append received bytes to ``buf``; False at end of stream."""
        with trio.CancelScope() as scope:
            conn.scope = scope
            scope.deadline = (trio.current_time() + self.timeout if conn.pending
                              else math.inf)
            data = await conn.stream.receive_some(_RECV)
        conn.scope = None
        if scope.cancelled_caught:
            raise trio.TooSlowError
        if not data:
            return False
        self.bytes_received += len(data)
        buf += data
        return True

    async def _receiver(self, conn: _Conn) -> None:
        buf = bytearray()
        pos = 0
        while True:
            # ---- head
            while True:
                end = buf.find(b"\r\n\r\n", pos)
                if end >= 0:
                    break
                if pos:
                    del buf[:pos]
                    pos = 0
                if len(buf) > 65536:
                    raise HttpError(f"Response headers from {self.origin.netloc} too long")
                if not await self._read_more(conn, buf):
                    if not conn.pending and not buf:
                        return
                    raise _ResponseEnd(partial=bool(buf))
            if not conn.pending:
                raise HttpError(f"Unexpected data from {self.origin.netloc}")
            head = bytes(buf[pos:end])
            pos = end + 4
            status, length, chunked, close = _parse_head(head, self.origin)
            req = conn.pending[0]
            if 100 <= status < 200:
                continue  # an interim response: no body, the real one follows
            if status in (204, 304):
                length = 0
            limit = req.max_size
            # ---- body
            spill_fd = -1
            spill_path: str | None = None
            body: bytes | None
            if chunked:
                body, pos = await self._chunked(conn, buf, pos, req)
                total = len(body)
            elif length is not None:
                if limit is not None and length > limit:
                    raise HttpError(f"{self.origin.url(req.path)} is {length} bytes, more "
                                    f"than the {limit} allowed for it")
                total = length
                if len(buf) - pos >= length:
                    body = bytes(memoryview(buf)[pos:pos + length])
                    pos += length
                elif length > self.spill_threshold and limit is None:
                    # (A response with a size limit, metadata, stays in memory: the
                    # caller wants its bytes, and the limit bounds them.)
                    spill_path, spill_fd = self._spill_open()
                    try:
                        pos = await self._copy_to(conn, buf, pos, length, spill_fd)
                    finally:
                        os.close(spill_fd)
                    body = None
                else:
                    if pos:
                        del buf[:pos]
                        pos = 0
                    while len(buf) < length:
                        if not await self._read_more(conn, buf):
                            raise _ResponseEnd(partial=True)
                    body = bytes(memoryview(buf)[:length])
                    pos = length
            else:
                # Until the end of the connection.
                while await self._read_more(conn, buf):
                    if limit is not None and len(buf) - pos > limit:
                        raise HttpError(f"{self.origin.url(req.path)} is larger than the "
                                        f"{limit} bytes allowed for it")
                body = bytes(buf[pos:])
                total = len(body)
                pos = len(buf)
                close = True
            conn.pending.popleft()
            conn.answered += 1
            self._lot.unpark_all()
            req.on_done(req, Response(status, body, spill_path, total))
            if pos > _RECV:
                del buf[:pos]
                pos = 0
            if close:
                if conn.answered == 1:
                    self.depth = 1  # no keep-alive: pipelined requests would be lost
                self._requeue(list(conn.pending))
                conn.pending.clear()
                return

    def _spill_open(self) -> tuple[str, int]:
        path = os.path.join(self.spill_dir, _fs.tmp_name(".pull-"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return path, fd

    async def _copy_to(self, conn: _Conn, buf: bytearray, pos: int, n: int, fd: int) -> int:
        """Write the next ``n`` body bytes to ``fd``; returns the new position in buf."""
        while n:
            avail = len(buf) - pos
            if avail == 0:
                del buf[:]
                pos = 0
                if not await self._read_more(conn, buf):
                    raise _ResponseEnd(partial=True)
                continue
            take = min(avail, n)
            _fs.write_all(fd, memoryview(buf)[pos:pos + take])
            pos += take
            n -= take
        return pos

    async def _chunked(self, conn: _Conn, buf: bytearray, pos: int, req: Request
                       ) -> tuple[bytes, int]:
        out = bytearray()
        limit = req.max_size
        while True:
            while (eol := buf.find(b"\r\n", pos)) < 0:
                if not await self._read_more(conn, buf):
                    raise _ResponseEnd(partial=True)
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(f"Malformed chunked response from {self.origin.netloc}"
                                ) from None
            pos = eol + 2
            if size == 0:
                # Trailers, then an empty line.
                while True:
                    while (eol := buf.find(b"\r\n", pos)) < 0:
                        if not await self._read_more(conn, buf):
                            raise _ResponseEnd(partial=True)
                    line_empty = eol == pos
                    pos = eol + 2
                    if line_empty:
                        return bytes(out), pos
            while len(buf) - pos < size + 2:
                if not await self._read_more(conn, buf):
                    raise _ResponseEnd(partial=True)
            out += buf[pos:pos + size]
            pos += size + 2
            if limit is not None and len(out) > limit:
                raise HttpError(f"{self.origin.url(req.path)} is larger than the {limit} "
                                "bytes allowed for it")
            if pos > _RECV:
                del buf[:pos]
                pos = 0


def _connect_error(origin: Origin, e: BaseException) -> HttpError:
    cur: BaseException | None = e
    seen: list[BaseException] = []
    while cur is not None and cur not in seen:  # trio wraps TLS errors
        seen.append(cur)
        if isinstance(cur, ssl.SSLError):
            e = cur
            break
        cur = cur.__cause__ or cur.__context__
    if isinstance(e, trio.TooSlowError):
        why = "timed out"
    elif isinstance(e, ssl.SSLCertVerificationError):
        why = f"TLS certificate verification failed: {e.verify_message}"
    elif isinstance(e, ssl.SSLError):
        why = f"TLS error: {e.reason or e}"
    elif isinstance(e, OSError) and e.strerror:
        why = e.strerror
    elif isinstance(e, OSError) and isinstance(e.__cause__, BaseExceptionGroup):
        # trio tries every address and raises their errors as the cause.
        inner = [x for x in e.__cause__.exceptions if isinstance(x, OSError) and x.strerror]
        why = inner[0].strerror if inner and inner[0].strerror else str(e)
    else:
        why = str(e) or type(e).__name__
    return HttpError(f"Cannot connect to {origin.scheme}://{origin.netloc}: {why}")


def _header(lower: bytes, head: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lowercase, with CRLF and colon) or None."""
    i = lower.find(name)
    if i < 0:
        return None
    j = head.find(b"\r\n", i + len(name))
    return head[i + len(name):j if j >= 0 else len(head)].strip()


def _parse_head(head: bytes, origin: Origin) -> tuple[int, int | None, bool, bool]:
    """(status, content length, chunked, close after) of a response head.

    Searched rather than split line by line: a pull parses tens of thousands of heads
    and needs four of their fields.
    """
    if not head.startswith(b"HTTP/1.") or len(head) < 12 or head[8:9] != b" ":
        line = head.split(b"\r\n", 1)[0]
        raise HttpError(f"Malformed response from {origin.netloc}: "
                        f"{line[:60].decode('latin-1')!r}")
    try:
        status = int(head[9:12])
    except ValueError:
        raise HttpError(f"Malformed status line from {origin.netloc}") from None
    lower = head.lower()
    close = head[5:8] == b"1.0"
    length: int | None = None
    raw = _header(lower, head, b"\r\ncontent-length:")
    if raw is not None:
        try:
            length = int(raw)
        except ValueError:
            raise HttpError(f"Malformed Content-Length from {origin.netloc}") from None
        if length < 0:
            raise HttpError(f"Malformed Content-Length from {origin.netloc}")
    te = _header(lower, lower, b"\r\ntransfer-encoding:")
    chunked = te is not None and b"chunked" in te
    conn = _header(lower, lower, b"\r\nconnection:")
    if conn == b"close":
        close = True
    elif conn == b"keep-alive":
        close = False
    if chunked:
        length = None
    return status, length, chunked, close
