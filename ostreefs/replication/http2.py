"""Serving the object pool's queue over one HTTP/2 connection (when TLS ALPN picks h2).

HTTP/2 multiplexes many requests on one connection, so a server that offers it gets
all of a pull's object requests on a single connection, up to the number of concurrent
streams it allows. Framing and header compression are the ``h2`` library's; this module
only maps the pool's requests onto streams and streams back onto responses. Header
validation is left off: the only headers read are ``:status`` and ``location``, and
every body is verified by checksum anyway.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import trio

from ostreefs import _fs
from ostreefs.replication.http1 import FetchTimeout, HttpError, Request, Response

if TYPE_CHECKING:
    from ostreefs.replication.http1 import H1Pool

_WINDOW = 1 << 24
_MAX_STREAMS = 100


@dataclass(eq=False)
class _Stream:
    req: Request
    status: int = 0
    location: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    spill_path: str | None = None
    spill_fd: int = -1


class H2Session:
    """One HTTP/2 connection fed from ``pool``'s queue until it ends or fails."""

    def __init__(self, pool: H1Pool, stream: trio.abc.Stream) -> None:
        self.pool = pool
        self.stream = stream
        cfg = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False,
            normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(cfg)
        self.streams: dict[int, _Stream] = {}
        self.send_lock = trio.Lock()
        self.scope: trio.CancelScope | None = None
        self.done = False
        o = pool.origin
        self._fixed = [(b":method", b"GET"), (b":scheme", b"https"),
                       (b":authority", o.netloc.encode("latin-1"))]
        self._extra = [(k.lower().encode("latin-1"), v.encode("latin-1"))
                       for k, v in pool.extra_headers]
        self._base = o.base

    async def run(self) -> None:
        c = self.h2
        c.initiate_connection()
        c.increment_flow_control_window(_WINDOW)
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
                           h2.settings.SettingCodes.ENABLE_PUSH: 0})
        await self._flush()
        try:
            async with trio.open_nursery() as n:
                n.start_soon(self._sender)
                try:
                    await self._receiver()
                finally:
                    self.done = True
                    n.cancel_scope.cancel()
        finally:
            self._requeue_all()

    def _requeue_all(self, failed: Request | None = None) -> None:
        reqs = []
        for sid in sorted(self.streams):
            st = self.streams[sid]
            _drop_spill(st)
            if st.req is not failed:
                reqs.append(st.req)
        self.streams.clear()
        self.pool._requeue(reqs)

    async def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            async with self.send_lock:
                await self.stream.send_all(data)

    def _limit(self) -> int:
        return max(1, min(_MAX_STREAMS, self.h2.remote_settings.max_concurrent_streams))

    def _fill(self) -> None:
        """Open streams for queued requests, as many as the server allows."""
        pool = self.pool
        c = self.h2
        limit = self._limit()
        opened = False
        while pool._queued() and len(self.streams) < limit and not pool._paused:
            req = pool._pop()
            sid = c.get_next_available_stream_id()
            path = (self._base + req.path).encode("latin-1")
            c.send_headers(sid, [*self._fixed, (b":path", path), *self._extra],
                           end_stream=True)
            self.streams[sid] = _Stream(req)
            pool.requests_sent += 1
            opened = True
        if opened and self.scope is not None and self.scope.deadline == math.inf:
            self.scope.deadline = trio.current_time() + pool.timeout

    async def _sender(self) -> None:
        """Send requests queued while the receiver waits (it fills after each read)."""
        pool = self.pool
        while not self.done:
            if pool._paused or not pool._queued() or len(self.streams) >= self._limit():
                await pool._lot.park()
                continue
            self._fill()
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def _receiver(self) -> None:
        pool = self.pool
        while True:
            with trio.CancelScope() as scope:
                self.scope = scope
                scope.deadline = (trio.current_time() + pool.timeout if self.streams
                                  else math.inf)
                data = await self.stream.receive_some(1 << 18)
            self.scope = None
            if scope.cancelled_caught:
                first = self.streams[min(self.streams)].req if self.streams else None
                what = pool.origin.url(first.path) if first else pool.origin.netloc
                err = FetchTimeout(f"Timed out after {pool.timeout:g} seconds without data "
                                   f"from the server while fetching {what}")
                if first is not None:
                    self._requeue_all(failed=first)
                    first.on_error(first, err)
                return
            if not data:
                self._lost("the server closed the connection")
                return
            pool.bytes_received += len(data)
            try:
                events = self.h2.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                raise HttpError(f"HTTP/2 protocol error from {pool.origin.netloc}: {e}"
                                ) from None
            for ev in events:
                if not self._event(ev):
                    return
            await self._flush()

    def _lost(self, why: str) -> None:
        """The connection ended under open streams: each counts a try and is requeued."""
        pool = self.pool
        for sid in sorted(self.streams):
            st = self.streams[sid]
            st.req.attempts += 1
            if st.req.attempts > pool.retries:
                del self.streams[sid]
                _drop_spill(st)
                st.req.on_error(st.req, HttpError(
                    f"Connection closed before the whole response for "
                    f"{pool.origin.url(st.req.path)} was received ({why})"))
                break

    def _event(self, ev: object) -> bool:
        pool = self.pool
        if isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                for k, v in ev.headers or ():
                    if k == b":status":
                        st.status = int(v)
                    elif k == b"location":
                        st.location = bytes(v).decode("latin-1")
        elif isinstance(ev, h2.events.DataReceived):
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            st = self.streams.get(ev.stream_id)
            if st is not None and ev.data:
                self._add_data(st, ev.data)
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                self._complete(st)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            if st is not None:
                _drop_spill(st)
                st.req.attempts += 1
                if st.req.attempts > pool.retries:
                    st.req.on_error(st.req, HttpError(
                        f"The server reset the stream of {pool.origin.url(st.req.path)} "
                        f"(HTTP/2 error {ev.error_code})"))
                else:
                    pool._requeue([st.req])
        elif isinstance(ev, h2.events.ConnectionTerminated):
            return False
        return True

    def _add_data(self, st: _Stream, data: bytes) -> None:
        pool = self.pool
        st.size += len(data)
        limit = st.req.max_size
        if limit is not None and st.size > limit:
            raise HttpError(f"{pool.origin.url(st.req.path)} is larger than the {limit} "
                            "bytes allowed for it")
        if st.spill_fd >= 0:
            _fs.write_all(st.spill_fd, data)
            return
        st.chunks.append(data)
        if st.size > pool.spill_threshold:
            st.spill_path, st.spill_fd = pool._spill_open()
            _fs.write_all(st.spill_fd, b"".join(st.chunks))
            st.chunks = []

    def _complete(self, st: _Stream) -> None:
        body: bytes | None
        if st.spill_fd >= 0:
            os.close(st.spill_fd)
            st.spill_fd = -1
            body = None
        else:
            body = b"".join(st.chunks)
        self.pool._lot.unpark_all()
        st.req.on_done(st.req, Response(st.status, body, st.spill_path, st.location, st.size))


def _drop_spill(st: _Stream) -> None:
    if st.spill_fd >= 0:
        os.close(st.spill_fd)
        st.spill_fd = -1
    if st.spill_path is not None:
        try:
            os.unlink(st.spill_path)
        except FileNotFoundError:
            pass
        st.spill_path = None

