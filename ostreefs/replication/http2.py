"""Serving the object pool's queue over one HTTP/2 connection (when TLS ALPN picks h2).

HTTP/2 multiplexes many requests on one connection, so a server that offers it gets
all of a pull's object requests on a single connection, up to the number of concurrent
streams it allows. Framing is the ``h2`` library's; this module maps the pool's
requests onto streams and streams back onto responses, and codes header blocks itself
(hpack's pure-Python coder cost more than anything else on the connection). Header
validation is left off: the only header read is ``:status`` (redirects are followed
through httpx), and
every body is verified by checksum anyway.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.exceptions
import hpack.huffman_table
import hpack.table
import trio

from ostreefs import _fs
from ostreefs.replication.http1 import FetchTimeout, HttpError, Request, Response

if TYPE_CHECKING:
    from ostreefs.replication.http1 import H1Pool

_WINDOW = 1 << 24
_MAX_STREAMS = 100
_STATIC = hpack.table.HeaderTable.STATIC_TABLE


class _Encoder:
    """Request header blocks without compression state, in place of ``hpack.Encoder``.

    hpack's encoder searches its tables and Huffman-codes every value, which costs a
    pull more than sending the request does; a request here is a few fixed headers
    and a path. So every field is sent as a literal that is never added to the
    dynamic table, whose size is set to 0 once, up front: the server then keeps
    nothing for us, whatever table size it allows later.
    """

    def __init__(self) -> None:
        self.header_table_size = 0  # set by h2 from the server's settings; unused
        self._first = True
        self._names = {name: i + 1 for i, (name, _) in reversed(list(enumerate(_STATIC)))}

    def encode(self, headers: list[tuple[bytes, bytes]]) -> bytes:
        out = bytearray()
        if self._first:
            out.append(0x20)  # dynamic table size update: 0
            self._first = False
        for name, value in headers:
            index = self._names.get(name, 0)
            if index < 15:
                out.append(index)
            else:
                out += _int(index, 4, 0)
            if index == 0:
                out += _int(len(name), 7, 0)
                out += name
            out += _int(len(value), 7, 0)
            out += value
        return bytes(out)


def _int(value: int, prefix: int, flags: int) -> bytes:
    limit = (1 << prefix) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


class _Decoder:
    """Response header blocks, in place of ``hpack.Decoder``.

    nginx sends every response's nine or so headers as Huffman-coded literals to be
    indexed, and hpack decodes them in Python, a sixth of a pull's event-loop time.
    Most values repeat from one response to the next (server, date, content type,
    cache control), so decoded strings are remembered; the dynamic table is kept
    exactly, since a server may refer to it.
    """

    def __init__(self) -> None:
        self.max_header_list_size = 1 << 16
        self.max_allowed_table_size = 4096
        self._maxsize = 4096
        self._size = 0
        self._table: deque[tuple[bytes, bytes]] = deque()
        self._huff: dict[bytes, bytes] = {}

    @property
    def header_table_size(self) -> int:
        return self._maxsize

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._maxsize = value
        self._shrink()

    def _shrink(self) -> None:
        table = self._table
        while self._size > self._maxsize and table:
            name, value = table.pop()
            self._size -= len(name) + len(value) + 32

    def _entry(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= len(_STATIC):
            return _STATIC[index - 1]
        i = index - len(_STATIC) - 1
        if 0 <= i < len(self._table):
            return self._table[i]
        raise hpack.exceptions.InvalidTableIndex(f"Invalid table index {index}")

    def decode(self, data: bytes, raw: bool = True) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos = 0
        end = len(data)
        total = 0
        while pos < end:
            b = data[pos]
            if b & 0x80:
                index, pos = _read_int(data, pos, 7)
                header = self._entry(index)
            elif b & 0x20 and not b & 0x40:
                size, pos = _read_int(data, pos, 5)
                if size > self.max_allowed_table_size:
                    raise hpack.exceptions.InvalidTableSizeError(
                        f"Table size update to {size} exceeds {self.max_allowed_table_size}")
                self.header_table_size = size
                continue
            else:
                add = bool(b & 0x40)
                index, pos = _read_int(data, pos, 6 if add else 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                header = (name, value)
                if add:
                    size = len(name) + len(value) + 32
                    if size > self._maxsize:
                        self._table.clear()
                        self._size = 0
                    else:
                        self._table.appendleft(header)
                        self._size += size
                        self._shrink()
            total += len(header[0]) + len(header[1]) + 32
            if total > self.max_header_list_size:
                raise hpack.exceptions.OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} bytes")
            headers.append(header)
        return headers

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        huffman = data[pos] & 0x80
        length, pos = _read_int(data, pos, 7)
        stop = pos + length
        if stop > len(data):
            raise hpack.exceptions.HPACKDecodingError("Truncated header string")
        raw = data[pos:stop]
        if not huffman:
            return raw, stop
        value = self._huff.get(raw)
        if value is None:
            value = hpack.huffman_table.decode_huffman(raw)
            if len(self._huff) >= 4096:
                self._huff.clear()
            self._huff[raw] = value
        return value, stop


def _read_int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
    """An HPACK integer with a ``prefix``-bit first byte at ``pos``; and the end."""
    limit = (1 << prefix) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise hpack.exceptions.HPACKDecodingError("Malformed header integer")
        b = data[pos]
        pos += 1
        value += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


@dataclass(eq=False)
class _Stream:
    req: Request
    status: int = 0
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
        self.h2.encoder = _Encoder()  # type: ignore[assignment]
        self.h2.decoder = _Decoder()  # type: ignore[assignment]
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
        # Frames must go out in the order h2 made them (stream ids rise): a free trio
        # lock is taken without yielding and a held one is handed over first come,
        # first served, so taking the data before the lock keeps that order.
        data = self.h2.data_to_send()
        if data:
            async with self.send_lock:
                await self.stream.send_all(data)

    def _limit(self) -> int:
        return max(1, min(_MAX_STREAMS, self.h2.remote_settings.max_concurrent_streams))

    def _ready(self) -> bool:
        """Whether to open streams now: requests wait and a batch of them fits.

        Streams are opened in batches of a quarter of the limit (or all that wait),
        so that one write carries many requests instead of one each time a response
        ends.
        """
        pool = self.pool
        queued = pool._queued()
        if not queued or pool._paused:
            return False
        limit = self._limit()
        return limit - len(self.streams) >= min(queued, max(1, limit // 4))

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
            opened = True
        if opened and self.scope is not None and self.scope.deadline == math.inf:
            self.scope.deadline = trio.current_time() + pool.timeout

    async def _sender(self) -> None:
        """Send requests queued while the receiver waits (it fills after each read)."""
        pool = self.pool
        while not self.done:
            if not self._ready():
                await pool._lot.park()
                continue
            self._fill()
            try:
                await self._flush()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return

    async def _receiver(self) -> None:
        pool = self.pool
        # One cancel scope for the connection, its deadline moved before each read:
        # entering a new one per read costs more than the read.
        with trio.CancelScope() as scope:
            self.scope = scope
            try:
                await self._receive_loop(scope)
            finally:
                self.scope = None
        if scope.cancelled_caught:
            first = self.streams[min(self.streams)].req if self.streams else None
            what = pool.origin.url(first.path) if first else pool.origin.netloc
            err = FetchTimeout(f"Timed out after {pool.timeout:g} seconds without data "
                               f"from the server while fetching {what}")
            if first is not None:
                self._requeue_all(failed=first)
                first.on_error(first, err)

    async def _receive_loop(self, scope: trio.CancelScope) -> None:
        pool = self.pool
        receive = self.stream.receive_some
        while True:
            scope.deadline = (trio.current_time() + pool.timeout if self.streams
                              else math.inf)
            data = await receive(1 << 18)
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
            # Replace the streams that ended with new requests in the same write as
            # any window updates: one send per batch, not one per response.
            if self._ready():
                self._fill()
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
        if isinstance(ev, h2.events.DataReceived):  # the commonest first
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            st = self.streams.get(ev.stream_id)
            if st is not None and ev.data:
                self._add_data(st, ev.data)
        elif isinstance(ev, h2.events.ResponseReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                for k, v in ev.headers or ():
                    if k == b":status":
                        st.status = int(v)
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
        if st.size > pool.spill_threshold and limit is None:  # metadata stays in memory
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
        st.req.on_done(st.req, Response(st.status, body, st.spill_path, st.size))


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

