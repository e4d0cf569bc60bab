"""The walk of one HTTP pull, on trio: commits, then trees, then missing content.

Everything here runs on one event loop. Responses arrive through callbacks of the
object pool; metadata is verified, staged and scanned right there (it is small and it
is what the rest of the walk waits for), content goes to a small thread pool that
inflates, verifies and writes it (:mod:`ostreefs.replication.objstore`). A commit is
verified (checksum, ref binding, GPG signature when the remote asks for one) before
anything it names is requested, and marked partial (``state/C.commitpartial``) before
its tree is fetched, so an interrupted pull is resumed by the next one as ostree
resumes it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import trio

from ostreefs.errors import CorruptObject, MalformedData, OstreefsError, StoreError
from ostreefs.replication.http1 import HttpError, Request, Response
from ostreefs.replication.objstore import (
    ContentStager,
    _unlink,
    stage_detached,
    stage_metadata,
    verify_metadata,
)
from ostreefs.replication.transport import MAX_METADATA_SIZE, Transport
from ostreefs.store.fsck import verify_object
from ostreefs.store.objects import (
    Commit,
    DirMeta,
    DirTree,
    Metadata,
    ObjectType,
    decode_metadata,
)
from ostreefs.store.repo import Repo
from ostreefs.store.transaction import Transaction

#: Bytes of fetched content waiting for a writer before new requests are held back.
BACKLOG_LIMIT = 64 << 20


class MissingObject(StoreError):
    """Server returned HTTP 404 for {0}"""


class RemoteHttpError(StoreError):
    """Server returned HTTP {0} for {1}"""


@dataclass
class WalkStats:
    metadata_fetched: int = 0
    content_fetched: int = 0
    metadata_requested: int = 0
    content_requested: int = 0
    content_bytes_written: int = 0
    #: Content objects that exist locally but would be needed (dry run: not fetched).
    content_wanted: int = 0
    repaired: list[str] = field(default_factory=list)


@dataclass
class WalkConfig:
    depth: int = 0
    commit_metadata_only: bool = False
    subpaths: tuple[str, ...] = ()
    dry_run: bool = False
    repair: bool = False
    verify_bindings: bool = True
    collection_id: str | None = None
    bareuseronly_files: bool = False
    writer_threads: int = 2


class Walk:
    """One pull's walk; :meth:`run` fetches and stages, the caller commits."""

    def __init__(self, repo: Repo, transport: Transport, txn: Transaction | None,
                 cfg: WalkConfig,
                 gpg_check: Callable[[str, bytes, Metadata | None], None] | None) -> None:
        self.repo = repo
        self.t = transport
        self.pool = transport.objects
        self.txn = txn
        self.cfg = cfg
        self.gpg_check = gpg_check
        self.stats = WalkStats()
        self.stager = ContentStager(txn, cfg.bareuseronly_files)
        self.local = LocalObjects(repo)
        #: "checksum.ext" of every object requested or being handled.
        self._wanted: set[str] = set()
        #: Dirtree checksum -> paths it must be scanned at, while it is being fetched.
        self._tree_waiters: dict[str, list[str]] = {}
        self._scanned: set[tuple[str, str]] = set()
        #: Metadata held in memory in a dry run (nothing is staged then).
        self._mem: dict[str, bytes] = {}
        #: Commit -> depth of parents still to walk below it.
        self._commit_depth: dict[str, int] = {}
        #: Commits this walk marked partial (or found marked).
        self.partial: list[str] = []
        #: (commit, detached metadata) to write over an older local copy after commit.
        self.detached_refresh: list[tuple[str, bytes]] = []
        self._outstanding = 0
        self._idle = trio.Event()
        self._error: BaseException | None = None
        self._cancel = trio.CancelScope()
        self._executor: ThreadPoolExecutor | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._backlog = 0
        self._held = False
        self._batch: list[tuple[str, bytes | None, str | None, int]] = []
        self._nursery: trio.Nursery | None = None
        self._subs = tuple(_norm(p) for p in cfg.subpaths)
        #: Commits whose tree walk started in full: complete once the walk succeeds.
        self.completing: set[str] = set()
        self._verified: set[str] = set()
        self._progress: Callable[[], None] | None = None

    # ------------------------------------------------------------------ control

    def fail(self, err: BaseException) -> None:
        """Stop the walk with ``err`` (the first failure wins)."""
        if self._error is None:
            self._error = err
        self.pool.close()
        self._cancel.cancel()

    def _begin(self) -> None:
        self._outstanding += 1

    def _end(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def run(self, tips: list[tuple[str, str | None]],
                  progress: Callable[[], None] | None = None) -> None:
        """Walk from ``tips`` ((commit, ref or None)) until everything is staged.

        ``progress`` is called a few times a second while the walk runs.
        """
        self._token = trio.lowlevel.current_trio_token()
        self._executor = ThreadPoolExecutor(max_workers=self.cfg.writer_threads,
                                            thread_name_prefix="ostreefs-pull")
        try:
            with self._cancel:
                async with trio.open_nursery() as n:
                    self._nursery = n
                    if progress is not None:
                        n.start_soon(_tick, progress)
                    self._begin()
                    for commit, ref in tips:
                        self.want_commit(commit, ref, self.cfg.depth, tip=True)
                    self._end()
                    await self._idle.wait()
                    self.pool.close()
                    n.cancel_scope.cancel()
        finally:
            # No thread may still write into the staging directory once we return.
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ helpers

    def _has(self, checksum: str, otype: ObjectType) -> bool:
        if self.txn is not None and self.txn.is_staged(checksum, otype):
            return True
        if self.cfg.dry_run and f"{checksum}.{otype.value}" in self._mem:
            return True
        return self.local.has(checksum, otype)

    def _read_local(self, checksum: str, otype: ObjectType) -> bytes:
        key = f"{checksum}.{otype.value}"
        if key in self._mem:
            return self._mem[key]
        staged = self.txn.read_staged(checksum, otype) if self.txn is not None else None
        if staged is not None:
            return staged
        return self.repo.read_metadata(checksum, otype)

    def _partial_path(self, commit: str) -> str:
        return f"{self.repo.path}/state/{commit}.commitpartial"

    def _mark_partial(self, commit: str) -> None:
        if self.cfg.dry_run:
            return
        try:
            fd = os.open(self._partial_path(commit),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            os.close(fd)
        except FileExistsError:
            pass
        if commit not in self.partial:
            self.partial.append(commit)

    def _fetch(self, path: str, priority: int, on_done: Callable[[Request, Response], None],
               *, data: object = None, metadata: bool = True) -> None:
        self._begin()
        self.pool.submit(Request(path, on_done, self._on_error, priority=priority,
                                 max_size=MAX_METADATA_SIZE if metadata else None, data=data))

    def _on_error(self, req: Request, err: BaseException) -> None:
        self.fail(err)

    def _url(self, path: str) -> str:
        return self.t.content_origin.url(path)

    def _status_error(self, req: Request, resp: Response) -> OstreefsError:
        if resp.spill:
            _unlink(resp.spill)
        if resp.status == 404:
            return MissingObject(self._url(req.path))
        return RemoteHttpError(resp.status, self._url(req.path))

    def _redirected(self, req: Request, resp: Response, *, metadata: bool = True) -> bool:
        """A 3xx: fetch the object through the redirect-following client instead."""
        if resp.status not in (301, 302, 303, 307, 308):
            return False
        assert self._nursery is not None
        self._nursery.start_soon(self._follow, req, metadata)
        return True

    async def _follow(self, req: Request, metadata: bool) -> None:
        try:
            data = await self.t.get_following_redirects(
                self.t.content_origin.url(req.path),
                MAX_METADATA_SIZE if metadata else 1 << 62)
        except OstreefsError as e:
            self.fail(e)
            return
        status = 404 if data is None else 200
        req.on_done(req, Response(status, data, None, len(data or b"")))

    # ------------------------------------------------------------------ commits

    def want_commit(self, commit: str, ref: str | None, depth: int, *, tip: bool) -> None:
        known = self._commit_depth.get(commit)
        if known is not None and (known == -1 or (depth != -1 and depth <= known)):
            return
        self._commit_depth[commit] = depth
        if known is not None:
            # Seen already, now with more history wanted: walk its parents further.
            self._want_parent(commit, depth)
            return
        cf = _CommitFetch(commit, ref, tip)
        rel = f"objects/{commit[:2]}/{commit[2:]}"
        self._begin()  # held until the commit is processed
        if self._has(commit, ObjectType.COMMIT):
            data = self._read_local(commit, ObjectType.COMMIT)
            if self.cfg.repair and not _matches(commit, data):
                self.stats.repaired.append(f"{commit}.commit")
                self._mark_partial(commit)
                if not self.cfg.dry_run:
                    _unlink(self.repo.object_path_str(commit, ObjectType.COMMIT))
                    self.local.forget(commit, ObjectType.COMMIT)
            else:
                cf.data = data
                cf.local = True
                cf.pending = 1
        if not cf.local:
            self._wanted.add(f"{commit}.commit")
            self.stats.metadata_requested += 1
            self._fetch(rel + ".commit", 0, self._got_commit_part, data=(cf, True))
        self._fetch(rel + ".commitmeta", 0, self._got_commit_part, data=(cf, False))

    def _got_commit_part(self, req: Request, resp: Response) -> None:
        try:
            if self._redirected(req, resp):
                return
            assert isinstance(req.data, tuple)
            cf: _CommitFetch = req.data[0]
            is_commit: bool = req.data[1]
            if resp.status == 200:
                if is_commit:
                    cf.data = resp.body
                else:
                    cf.meta = resp.body
            elif resp.status == 404:
                if is_commit:
                    cf.missing = self._status_error(req, resp)
            else:
                raise self._status_error(req, resp)
            cf.pending -= 1
            if cf.pending == 0:
                assert self._nursery is not None
                self._nursery.start_soon(self._process_commit, cf)
        except Exception as e:
            self.fail(e)
        finally:
            self._end()

    async def _process_commit(self, cf: _CommitFetch) -> None:
        try:
            await self._process_commit_inner(cf)
        except Exception as e:
            self.fail(e)
        finally:
            self._end()

    async def _process_commit_inner(self, cf: _CommitFetch) -> None:
        commit, data, meta = cf.commit, cf.data, cf.meta
        if data is None:
            if not cf.tip:
                return  # a history may stop at a parent the server never had
            assert cf.missing is not None
            raise cf.missing
        if not cf.local:
            verify_metadata(commit, ObjectType.COMMIT, data)
        try:
            parsed = Commit.from_bytes(data)
        except MalformedData as e:
            raise CorruptObject(commit, "commit", e.args[1]) from None
        detached = None
        if meta is not None:
            try:
                detached = decode_metadata(meta, "detached metadata")
            except MalformedData as e:
                raise CorruptObject(commit, "commitmeta", e.args[1]) from None
        if self.cfg.verify_bindings:
            from ostreefs.store.pull_local import _verify_bindings

            _verify_bindings(commit, parsed, cf.ref, self.cfg.collection_id)
        if self.gpg_check is not None:
            check = self.gpg_check
            await trio.to_thread.run_sync(check, commit, data, detached)
        partial = os.path.exists(self._partial_path(commit))
        walk_tree = not self.cfg.commit_metadata_only and (
            not cf.local or partial or self.cfg.repair)
        if walk_tree or not cf.local:
            self._mark_partial(commit)
        if self.cfg.dry_run:
            if not cf.local:
                self._mem[f"{commit}.commit"] = data
                self.stats.metadata_fetched += 1
        elif self.txn is not None:
            if not cf.local:
                stage_metadata(self.txn, commit, ObjectType.COMMIT, data)
                self.stats.metadata_fetched += 1
            if meta is not None and not stage_detached(self.txn, commit, meta):
                self.detached_refresh.append((commit, meta))
        if walk_tree:
            if not self._subs:
                self.completing.add(commit)
            self._want_dirmeta(parsed.root_meta)
            self._want_dirtree(parsed.root_tree, "/")
        self._want_parent(commit, self._commit_depth[commit], parsed)

    def _want_parent(self, commit: str, depth: int, parsed: Commit | None = None) -> None:
        if depth == 0:
            return
        if parsed is None:
            try:
                parsed = Commit.from_bytes(self._read_local(commit, ObjectType.COMMIT))
            except (OstreefsError, OSError):
                return  # still being fetched: its own processing walks the parents
        if parsed.parent is None:
            return
        self.want_commit(parsed.parent, None, depth - 1 if depth > 0 else -1, tip=False)

    # -------------------------------------------------------------------- trees

    def _in_subpath(self, path: str) -> bool:
        if not self._subs:
            return True
        return any(s == "/" or path == s or path.startswith(s + "/") for s in self._subs)

    def _leads_to_subpath(self, path: str) -> bool:
        if path == "/":
            return True
        return any(s.startswith(path + "/") for s in self._subs)

    def _want_dirmeta(self, checksum: str) -> None:
        key = f"{checksum}.dirmeta"
        if key in self._wanted:
            return
        self._wanted.add(key)
        if self._has(checksum, ObjectType.DIR_META):
            if self.cfg.repair:
                self._repair_check(checksum, ObjectType.DIR_META)
            return
        self._request_dirmeta(checksum)

    def _request_dirmeta(self, checksum: str) -> None:
        self._request_meta(checksum, ObjectType.DIR_META, self._got_dirmeta)

    def _request_meta(self, checksum: str, otype: ObjectType,
                      done: Callable[[Request, Response], None]) -> None:
        self.stats.metadata_requested += 1
        self._fetch(f"objects/{checksum[:2]}/{checksum[2:]}.{otype.value}", 0, done,
                    data=checksum)

    def _got_meta(self, req: Request, resp: Response, otype: ObjectType,
                  then: Callable[[str, bytes], None]) -> None:
        """A dirtree or dirmeta answer: verified against its name, parsed, then stored."""
        try:
            if self._redirected(req, resp):
                return
            checksum = req.data
            assert isinstance(checksum, str)
            if resp.status != 200 or resp.body is None:
                raise self._status_error(req, resp)
            verify_metadata(checksum, otype, resp.body)
            then(checksum, resp.body)
        except Exception as e:
            self.fail(e)
        finally:
            self._end()

    def _got_dirmeta(self, req: Request, resp: Response) -> None:
        def store(checksum: str, data: bytes) -> None:
            try:
                DirMeta.from_bytes(data)
            except MalformedData as e:
                raise CorruptObject(checksum, "dirmeta", e.args[1]) from None
            self._store_meta(checksum, ObjectType.DIR_META, data)

        self._got_meta(req, resp, ObjectType.DIR_META, store)

    def _store_meta(self, checksum: str, otype: ObjectType, data: bytes) -> None:
        self.stats.metadata_fetched += 1
        if self.cfg.dry_run:
            self._mem[f"{checksum}.{otype.value}"] = data
        elif self.txn is not None:
            stage_metadata(self.txn, checksum, otype, data)

    def _want_dirtree(self, checksum: str, path: str) -> None:
        if (checksum, path if self._subs else "") in self._scanned:
            return
        waiters = self._tree_waiters.get(checksum)
        if waiters is not None:
            waiters.append(path)
            return
        self._tree_waiters[checksum] = [path]
        if not self._has(checksum, ObjectType.DIR_TREE):
            self._request_dirtree(checksum)
        elif self.cfg.repair and checksum not in self._verified:
            self._verified.add(checksum)
            self._repair_check(checksum, ObjectType.DIR_TREE)
        else:
            data = self._read_local(checksum, ObjectType.DIR_TREE)
            if not self._subs and self._scan_local(checksum, data):
                return
            self._scan_waiters(checksum, _parse_tree(checksum, data))

    def _scan_local(self, checksum: str, data: bytes) -> bool:
        """Scan a dirtree the repository already has, reading only its checksums.

        The walk of an incremental pull reads every unchanged directory of the tree;
        what it needs from one is its children's checksums, and a local object was
        validated when it was written. False sends the caller to the full parser.
        """
        entries = _children(data)
        if entries is None:
            return False
        self._tree_waiters.pop(checksum, None)
        self._scanned.add((checksum, ""))
        files, dirs = entries
        for fc in files:
            self._want_content(fc)
        for t, m in dirs:
            self._want_dirmeta(m)
            self._want_dirtree(t, "/")
        return True

    def _scan_waiters(self, checksum: str, tree: DirTree) -> None:
        for path in self._tree_waiters.pop(checksum, []):
            self._scan(checksum, tree, path)

    def _request_dirtree(self, checksum: str) -> None:
        self._request_meta(checksum, ObjectType.DIR_TREE, self._got_dirtree)

    def _got_dirtree(self, req: Request, resp: Response) -> None:
        def store(checksum: str, data: bytes) -> None:
            tree = _parse_tree(checksum, data)
            self._store_meta(checksum, ObjectType.DIR_TREE, data)
            self._scan_waiters(checksum, tree)

        self._got_meta(req, resp, ObjectType.DIR_TREE, store)

    def _scan(self, checksum: str, tree: DirTree, path: str) -> None:
        subs = self._subs
        self._scanned.add((checksum, path if subs else ""))
        base = "" if path == "/" else path
        full = not subs or self._in_subpath(path)
        for name, fc in tree.files:
            if not full and not self._in_subpath(f"{base}/{name}"):
                continue
            self._want_content(fc)
        for name, t, m in tree.dirs:
            child = f"{base}/{name}"
            if not full and not (self._in_subpath(child) or self._leads_to_subpath(child)):
                continue
            self._want_dirmeta(m)
            self._want_dirtree(t, child)

    # ------------------------------------------------------------------ content

    def _want_content(self, checksum: str) -> None:
        key = f"{checksum}.file"
        if key in self._wanted:
            return
        self._wanted.add(key)
        if self._has(checksum, ObjectType.FILE):
            if self.cfg.repair:
                self._repair_check(checksum, ObjectType.FILE)
            return
        if self.cfg.dry_run:
            self.stats.content_wanted += 1
            return
        self._request_content(checksum)

    def _request_content(self, checksum: str) -> None:
        self.stats.content_requested += 1
        self._fetch(f"objects/{checksum[:2]}/{checksum[2:]}.filez", 1,
                    self._got_content, data=checksum, metadata=False)

    def _got_content(self, req: Request, resp: Response) -> None:
        try:
            if self._redirected(req, resp, metadata=False):
                return
            checksum = req.data
            assert isinstance(checksum, str)
            if resp.status != 200:
                raise self._status_error(req, resp)
            self.stats.content_fetched += 1
            size = resp.length
            self._begin()
            self._backlog += size
            if self._backlog > BACKLOG_LIMIT and not self._held:
                self._held = True
                self.pool.hold(True)
            if not self._batch:
                # Flushed when the current task yields: the responses parsed from one
                # read go to a writer together (a thread hand-off per object costs more
                # than a small object's write).
                assert self._token is not None
                self._token.run_sync_soon(self._flush_batch)
            self._batch.append((checksum, resp.body, resp.spill, size))
            if len(self._batch) >= 64:
                self._flush_batch()
        except Exception as e:
            self.fail(e)
        finally:
            self._end()

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            return
        try:
            if self._error is not None or self._executor is None:
                raise RuntimeError("walk stopped")
            self._executor.submit(self._write_batch, batch)
        except RuntimeError:  # stopped, or the executor shut down: drop the batch
            for _c, _b, spill, _n in batch:
                if spill is not None:
                    _unlink(spill)

    def _write_batch(self, batch: list[tuple[str, bytes | None, str | None, int]]) -> None:
        """On a worker thread: verify and stage objects, then tell the loop once."""
        err: BaseException | None = None
        written = 0
        size = 0
        for checksum, body, spill, n in batch:
            size += n
            try:
                if err is None and self._error is None:
                    if body is not None:
                        written += self.stager.stage_bytes(checksum, body)
                    elif spill is not None:
                        written += self.stager.stage_file(checksum, spill)
                        spill = None
            except BaseException as e:  # noqa: BLE001
                err = e
            if spill is not None:
                _unlink(spill)
        self._post(self._write_done, size, written, len(batch), err)

    def _post(self, fn: Callable[..., object], *args: object) -> None:
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            pass

    def _write_done(self, size: int, written: int, count: int,
                    err: BaseException | None) -> None:
        self._backlog -= size
        self.stats.content_bytes_written += written
        if self._held and self._backlog < BACKLOG_LIMIT // 2:
            self._held = False
            self.pool.hold(False)
        if err is not None:
            self.fail(err)
        self._outstanding -= count - 1
        self._end()

    # ------------------------------------------------------------------ repair

    def _repair_check(self, checksum: str, otype: ObjectType) -> None:
        """Verify a local object on a worker; a bad one is deleted and fetched again.

        A dirtree's waiters are scanned once it is known good, or once it is refetched.
        """
        self._begin()
        assert self._executor is not None
        self._executor.submit(self._repair_job, checksum, otype)

    def _repair_job(self, checksum: str, otype: ObjectType) -> None:
        err: BaseException | None = None
        bad: str | None = None
        try:
            if self._error is None:
                bad = verify_object(self.repo, checksum, otype)
                if bad is not None and not self.cfg.dry_run:
                    try:
                        os.unlink(self.repo.object_path_str(checksum, otype))
                        self._post(self.local.forget, checksum, otype)
                    except FileNotFoundError:
                        pass
        except BaseException as e:  # noqa: BLE001
            err = e
        self._post(self._repair_done, checksum, otype, bad, err)

    def _repair_done(self, checksum: str, otype: ObjectType, bad: str | None,
                     err: BaseException | None) -> None:
        try:
            if err is not None:
                raise err
            if bad is not None:
                self.stats.repaired.append(f"{checksum}.{otype.value}")
            if otype is ObjectType.DIR_TREE:
                if bad is None:
                    self._scan_waiters(checksum, _parse_tree(
                        checksum, self._read_local(checksum, otype)))
                else:
                    self._request_dirtree(checksum)
            elif bad is not None:
                if otype is ObjectType.FILE and self.cfg.dry_run:
                    self.stats.content_wanted += 1
                elif otype is ObjectType.FILE:
                    self._request_content(checksum)
                elif otype is ObjectType.DIR_META:
                    self._request_dirmeta(checksum)
        except Exception as e:
            self.fail(e)
        finally:
            self._end()


async def _tick(progress: Callable[[], None]) -> None:
    while True:
        await trio.sleep(0.25)
        progress()


@dataclass(eq=False)
class _CommitFetch:
    """A commit and its detached metadata, fetched in parallel, processed together."""

    commit: str
    ref: str | None
    tip: bool
    data: bytes | None = None
    meta: bytes | None = None
    local: bool = False
    pending: int = 2
    missing: OstreefsError | None = None


def _offsets(data: bytes, start: int, end: int) -> list[int] | None:
    """Element ends of a GVariant array of variable-size elements at [start, end)."""
    size = end - start
    if size == 0:
        return []
    z = 1 if size <= 0xFF else 2 if size <= 0xFFFF else 4
    table = int.from_bytes(data[end - z:end], "little")
    if table > size - z or (size - table) % z:
        return None
    frombytes = int.from_bytes
    return [start + frombytes(data[i:i + z], "little") for i in range(start + table, end, z)]


def _size_z(n: int) -> int:
    return 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4


def _children(data: bytes) -> tuple[list[str], list[tuple[str, str]]] | None:
    """File checksums and (dirtree, dirmeta) of subdirectories of a dirtree, or None.

    In ``a(say)`` each element ends with its 32-byte checksum and one framing offset;
    in ``a(sayay)`` with two checksums and two offsets. None on anything unexpected.
    """
    size = len(data)
    if size < 2:
        return None
    z = _size_z(size)
    files_end = int.from_bytes(data[size - z:], "little")
    if files_end > size - z:
        return None
    ends = _offsets(data, 0, files_end)
    dends = _offsets(data, files_end, size - z)
    if ends is None or dends is None:
        return None
    files = []
    pos = 0
    for e in ends:
        ez = _size_z(e - pos)
        if e - pos < 34 + ez or e > files_end:
            return None
        files.append(data[e - ez - 32:e - ez].hex())
        pos = e
    dirs = []
    pos = files_end
    for e in dends:
        ez = _size_z(e - pos)
        if e - pos < 66 + 2 * ez or e > size - z:
            return None
        tail = e - 2 * ez
        dirs.append((data[tail - 64:tail - 32].hex(), data[tail - 32:tail].hex()))
        pos = e
    return files, dirs


def _parse_tree(checksum: str, data: bytes) -> DirTree:
    try:
        return DirTree.from_bytes(data)
    except MalformedData as e:
        raise CorruptObject(checksum, "dirtree", e.args[1]) from None


class LocalObjects:
    """Which objects the repository has, read one ``objects/XX`` listing at a time.

    A walk over a large commit asks about tens of thousands of objects; a listing per
    prefix answers them for far fewer system calls than one lstat each. Objects do not
    disappear while a pull holds the shared repository lock (deleting them needs the
    exclusive lock), and one added meanwhile by another writer is at worst fetched again.
    """

    def __init__(self, repo: Repo) -> None:
        self._dir = f"{repo.path}/objects/"
        self._file_ext = "filez" if repo.mode.is_archive else "file"
        self._names: dict[str, set[str]] = {}

    def _ext(self, otype: ObjectType) -> str:
        return self._file_ext if otype is ObjectType.FILE else otype.value

    def has(self, checksum: str, otype: ObjectType) -> bool:
        prefix = checksum[:2]
        names = self._names.get(prefix)
        if names is None:
            try:
                names = set(os.listdir(self._dir + prefix))
            except (FileNotFoundError, NotADirectoryError):
                names = set()
            self._names[prefix] = names
        return f"{checksum[2:]}.{self._ext(otype)}" in names

    def forget(self, checksum: str, otype: ObjectType) -> None:
        names = self._names.get(checksum[:2])
        if names is not None:
            names.discard(f"{checksum[2:]}.{self._ext(otype)}")


def _matches(checksum: str, data: bytes) -> bool:
    return hashlib.sha256(data).hexdigest() == checksum


def _norm(p: str) -> str:
    parts = [x for x in p.split("/") if x and x != "."]
    if ".." in parts:
        raise StoreError(f"Invalid subpath '{p}'")
    return "/" + "/".join(parts)


__all__ = ["Walk", "WalkConfig", "WalkStats", "MissingObject", "RemoteHttpError",
           "HttpError"]
