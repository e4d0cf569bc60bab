"""The connections of a pull: one pool for the repository's files, one for its objects.

Everything goes through :class:`~ostreefs.replication.http1.H1Pool` (kept-alive,
pipelined HTTP/1.1, or HTTP/2 when the server offers it in the TLS handshake), objects
from the remote's ``contenturl`` when it has one. A redirect, which a static mirror
rarely sends, is followed by httpx, imported only then. Both paths apply the remote's
TLS settings, including the public-key pin, and the same idle timeout.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import trio

from ostreefs.errors import OstreefsError
from ostreefs.replication.http1 import (
    USER_AGENT,
    FetchTimeout,
    H1Pool,
    HttpError,
    Origin,
    Request,
    Response,
)
from ostreefs.replication.tls import TlsError, TlsSettings

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")

#: ostree's bound on a metadata object or summary it is willing to fetch.
MAX_METADATA_SIZE = 128 << 20


@dataclass
class Endpoint:
    """Where and how to reach a remote (from its config and the pull's options)."""

    url: str
    contenturl: str | None = None
    tls: TlsSettings = field(default_factory=TlsSettings)
    timeout: float = 30.0
    retries: int = 5
    connections: int = 4
    depth: int = 4
    headers: dict[str, str] = field(default_factory=dict)
    #: Offer HTTP/2 (ostree's ``http2`` remote option, default true).
    http2: bool = True


class Transport:
    """An open connection set to one remote; use ``async with`` (it runs the pools)."""

    def __init__(self, ep: Endpoint, *, spill_dir: str,
                 on_fatal: Callable[[BaseException], None],
                 spill_threshold: int = 8 << 20) -> None:
        self.ep = ep
        self.origin = Origin.parse(ep.url)
        self.content_origin = Origin.parse(ep.contenturl) if ep.contenturl else self.origin

        def pool(origin: Origin) -> H1Pool:
            return H1Pool(origin, tls=ep.tls, connections=ep.connections, depth=ep.depth,
                          timeout=ep.timeout, retries=ep.retries, headers=ep.headers,
                          spill_dir=spill_dir, spill_threshold=spill_threshold,
                          on_fatal=on_fatal, http2=ep.http2)

        self.objects = pool(self.content_origin)
        self.control = self.objects if self.content_origin == self.origin else pool(self.origin)
        self._client: httpx.AsyncClient | None = None
        self._client_bytes = 0
        self._stack = contextlib.AsyncExitStack()

    @property
    def bytes_transferred(self) -> int:
        n = self._client_bytes + self.objects.bytes_received
        if self.control is not self.objects:
            n += self.control.bytes_received
        return n

    async def __aenter__(self) -> Transport:
        n = await self._stack.enter_async_context(trio.open_nursery())
        try:
            await n.start(self.objects.run)
            if self.control is not self.objects:
                await n.start(self.control.run)
        except BaseException as e:
            await self._stack.__aexit__(type(e), e, e.__traceback__)
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> bool | None:
        self.objects.close()
        self.control.close()
        if self._client is not None:
            with trio.CancelScope(shield=True):
                await self._client.aclose()
        return await self._stack.__aexit__(et, ev, tb)

    async def get(self, path: str, *, content: bool = False,
                  max_size: int = MAX_METADATA_SIZE) -> bytes | None:
        """A file of the repository (``content``: from the content URL); None for 404."""
        pool = self.objects if content else self.control
        done = trio.Event()
        box: list[Response | BaseException] = []

        def ok(req: Request, resp: Response) -> None:
            box.append(resp)
            done.set()

        def bad(req: Request, err: BaseException) -> None:
            box.append(err)
            done.set()

        pool.submit(Request(path, ok, bad, priority=0, max_size=max_size))
        await done.wait()
        got = box[0]
        if isinstance(got, BaseException):
            raise got
        url = pool.origin.url(path)  # (with max_size set, nothing was spilled)
        if got.status == 404:
            return None
        if got.status in (301, 302, 303, 307, 308):
            return await self.get_following_redirects(url, max_size)
        if got.status != 200:
            raise HttpError(f"Server returned HTTP {got.status} for {url}")
        return got.body

    async def get_following_redirects(self, url: str, max_size: int) -> bytes | None:
        """Fetch ``url`` with httpx, which follows redirects (rare on a static mirror)."""
        import httpx

        client = self._httpx()
        attempt = 0
        while True:
            try:
                return await self._get_once(client, url, max_size)
            except (HttpError, TlsError):
                raise
            except httpx.TimeoutException:
                raise FetchTimeout(f"Timed out after {self.ep.timeout:g} seconds without data "
                                   f"from the server while fetching {url}") from None
            except (httpx.TransportError, httpx.RemoteProtocolError) as e:
                attempt += 1
                if attempt > self.ep.retries or isinstance(e, httpx.ConnectError):
                    raise HttpError(f"While fetching {url}: {_describe(e)}") from None
                await trio.sleep(min(2.0, 0.1 * 2 ** attempt))

    def _httpx(self) -> httpx.AsyncClient:
        import httpx

        if self._client is None:
            verify: object = True
            if self.origin.scheme == "https" or self.content_origin.scheme == "https":
                verify = self.ep.tls.context(["h2", "http/1.1"] if self.ep.http2
                                             else ["http/1.1"])
            limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
            self._client = httpx.AsyncClient(
                http2=self.ep.http2, verify=verify,  # type: ignore[arg-type]
                timeout=httpx.Timeout(self.ep.timeout), follow_redirects=True,
                trust_env=False, limits=limits,
                headers={"User-Agent": USER_AGENT, **self.ep.headers})
        return self._client

    async def _get_once(self, client: httpx.AsyncClient, url: str,
                        max_size: int) -> bytes | None:
        async with client.stream("GET", url) as r:
            self._check_pin(r)
            if r.status_code == 404:
                await r.aclose()
                return None
            if r.status_code != 200:
                raise HttpError(f"Server returned HTTP {r.status_code} for {url}")
            chunks = []
            total = 0
            async for chunk in r.aiter_raw():
                total += len(chunk)
                if total > max_size:
                    raise HttpError(f"{url} is larger than the {max_size} bytes allowed")
                chunks.append(chunk)
            self._client_bytes += total
            return b"".join(chunks)

    def _check_pin(self, r: httpx.Response) -> None:
        if not self.ep.tls.pins or not str(r.url).startswith("https:"):
            return
        stream = r.extensions.get("network_stream")
        sslobj = stream.get_extra_info("ssl_object") if stream is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        self.ep.tls.check_peer(der, r.url.host)


def run_unwrapped(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run(fn)``, re-raising the real error instead of a group around it.

    Nurseries wrap what escapes them in exception groups; a caller of the library wants
    the one error that stopped the pull (the first, when several tasks failed at once).
    """
    try:
        return trio.run(fn)
    except BaseExceptionGroup as eg:
        leaves = _leaves(eg)
        pick: BaseException | None = next(
            (e for e in leaves if isinstance(e, OstreefsError)), None)
        if pick is None:
            pick = next((e for e in leaves if not isinstance(e, trio.Cancelled)), leaves[0])
        raise pick from None


def _leaves(eg: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in eg.exceptions:
        if isinstance(e, BaseExceptionGroup):
            out.extend(_leaves(e))
        else:
            out.append(e)
    return out


def _describe(e: BaseException) -> str:
    """The most telling message in an exception chain (trio wraps TLS errors)."""
    seen: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and cur not in seen:
        seen.append(cur)
        if isinstance(cur, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed: {cur.verify_message}"
        if isinstance(cur, ssl.SSLError):
            return f"TLS error: {cur.reason or cur}"
        cur = cur.__cause__ or cur.__context__
    for x in seen:
        if str(x):
            return str(x)
    return type(e).__name__
