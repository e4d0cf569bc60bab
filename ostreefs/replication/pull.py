"""``pull``: bring commits from a remote archive repository over HTTP(S), verified.

The sequence is ostree's: ``summary.sig`` and ``summary`` (verified first when the
remote sets ``gpg-verify-summary``), the remote's ``config`` (it must be an archive
repository), each ref resolved from the summary or from ``refs/heads/REF``; then per
commit its detached metadata and the commit itself, checked (checksum, ref binding,
GPG signature when ``gpg-verify`` is on) before its tree is requested; then the
dirtrees and dirmetas, and only the content objects the local repository lacks.

All objects land in one :class:`~ostreefs.store.transaction.Transaction`; refs move
only after it committed, and a commit loses its ``state/C.commitpartial`` mark only
once its whole closure is durable. A failure moves no ref; what was verified before it
is kept (objects are never unverified), so running the pull again continues it, as
does a pull after ``kill -9`` (:mod:`ostreefs.replication.resume`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from ostreefs import _fs
from ostreefs.errors import OstreefsError, StoreError, UsageError
from ostreefs.replication.engine import Walk, WalkConfig
from ostreefs.replication.remote_summary import (
    RemoteState,
    endpoint_for,
    fetch_remote_state,
)
from ostreefs.replication.resume import adopt, claim_stale_staging, release
from ostreefs.replication.transport import Transport, run_unwrapped
from ostreefs.store import treecount
from ostreefs.store.objects import Metadata, ObjectType, is_checksum
from ostreefs.store.refs import RefSpec, resolve_ref, set_ref, validate_ref_name
from ostreefs.store.remotes import Remote, get_remote
from ostreefs.store.repo import Repo
from ostreefs.store.transaction import Transaction


@dataclass
class PullOptions:
    """How to pull; the defaults are ``ostree pull``'s."""

    #: Parents to fetch below each commit: 0 = only the tip, -1 = all.
    depth: int = 0
    #: Write refs as local heads (``refs/heads/``); with no refs, pull every ref of the
    #: summary and keep a copy of the summary (a mirror of the whole repository).
    mirror: bool = False
    #: Fetch only commit objects (each stays partial).
    commit_metadata_only: bool = False
    #: Fetch only these subtrees' content (the commits stay partial).
    subpaths: list[str] = field(default_factory=list)
    disable_fsync: bool = False
    #: Fetch metadata into memory only and report what would be fetched; write nothing.
    dry_run: bool = False
    #: Re-verify every local object the pulled commits reach; fetch the bad ones again.
    repair: bool = False
    #: Connections for objects, and requests in flight on each.
    max_connections: int = 4
    pipeline_depth: int = 4
    #: Seconds without a byte from the server before a request fails; None: the
    #: remote's ``timeout`` option, else 30.
    timeout: float | None = None
    network_retries: int = 5
    http_headers: dict[str, str] = field(default_factory=dict)
    #: Fetch from this URL instead of the remote's ``url``.
    url: str | None = None
    verify_bindings: bool = True
    bareuseronly_files: bool = False
    #: Threads that inflate, verify and write content objects.
    writer_threads: int = 2


@dataclass
class PullProgress:
    """A snapshot of a running pull, for a progress line."""

    metadata_fetched: int
    content_fetched: int
    metadata_requested: int
    content_requested: int
    bytes_transferred: int
    content_bytes_written: int
    elapsed: float
    done: bool = False

    @property
    def fetched(self) -> int:
        return self.metadata_fetched + self.content_fetched

    @property
    def requested(self) -> int:
        return self.metadata_requested + self.content_requested

    @property
    def rate(self) -> float:
        """Bytes per second so far."""
        return self.bytes_transferred / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, guessed from the objects still to come (more may be found)."""
        if self.fetched == 0 or self.requested <= self.fetched:
            return None
        return self.elapsed * (self.requested - self.fetched) / self.fetched


@dataclass
class PullResult:
    metadata_fetched: int = 0
    content_fetched: int = 0
    bytes_transferred: int = 0
    content_bytes_written: int = 0
    elapsed: float = 0.0
    #: Requested ref (or checksum) -> the commit it named on the remote.
    commits: dict[str, str] = field(default_factory=dict)
    #: Refs moved, as ``REMOTE:REF`` (or ``REF`` for a mirror) -> commit.
    refs_moved: dict[str, str] = field(default_factory=dict)
    #: A dry run's findings: content objects it would fetch.
    content_to_fetch: int = 0
    dry_run: bool = False
    #: ``checksum.type`` of local objects found bad and fetched again (``repair``).
    repaired: list[str] = field(default_factory=list)
    #: Objects taken over from an interrupted pull's staging directory.
    resumed: int = 0


class NoBranches(StoreError):
    """No configured branches for remote {0}"""


def pull(repo: Repo, remote: str, refs: list[str] | None, options: PullOptions | None = None,
         progress: Callable[[PullProgress], None] | None = None) -> PullResult:
    """Pull ``refs`` (names or commit checksums) from ``remote`` into ``repo``.

    With ``refs`` None or empty: every ref of the summary for a mirror, else the
    remote's configured ``branches``.
    """
    opts = options or PullOptions()
    if opts.depth < -1:
        raise UsageError(f"Invalid depth {opts.depth}", hint="use -1 (all parents) or N >= 0")
    rem = get_remote(repo, remote)
    names: list[str] | None = list(refs) if refs else None
    if names is None and not opts.mirror:
        if not rem.branches:
            raise NoBranches(remote)
        names = list(rem.branches)
    for name in names or []:
        if not is_checksum(name):
            validate_ref_name(name)
    start = time.monotonic()
    puller = _Pull(repo, rem, names, opts, progress, start)
    try:
        return run_unwrapped(puller.run_async)
    finally:
        puller.close()


class _Pull:
    def __init__(self, repo: Repo, rem: Remote, names: list[str] | None, opts: PullOptions,
                 progress: Callable[[PullProgress], None] | None, start: float) -> None:
        self.repo = repo
        self.rem = rem
        self.names = names
        self.opts = opts
        self.progress_cb = progress
        self.start = start
        self.txn: Transaction | None = None
        self.walk: Walk | None = None
        self.transport: Transport | None = None
        self.result = PullResult(dry_run=opts.dry_run)

    def close(self) -> None:
        if self.txn is not None:
            self.txn.abort()
            self.txn = None

    def _fatal(self, err: BaseException) -> None:
        if self.walk is not None:
            self.walk.fail(err)

    async def run_async(self) -> PullResult:
        ep = endpoint_for(self.rem, self.opts.url, timeout=self.opts.timeout,
                          retries=self.opts.network_retries,
                          connections=self.opts.max_connections,
                          depth=self.opts.pipeline_depth, headers=self.opts.http_headers)
        tmp = self.repo.path / "tmp"
        async with Transport(ep, spill_dir=str(tmp), on_fatal=self._fatal) as t:
            self.transport = t
            state = await fetch_remote_state(self.repo, self.rem, t,
                                             need_summary=self.names is None)
            tips_resolved = await self._resolve_heads(t, self._resolve(state))
            self.result.commits = {name: c for name, c in tips_resolved if name is not None}
            return await self._walk(t, state, tips_resolved)

    def _resolve(self, state: RemoteState) -> list[tuple[str, str | None]]:
        """(name, commit or None: ask refs/heads) for each ref to pull."""
        summary_refs = state.refs
        if self.names is None:
            assert summary_refs is not None
            for n in summary_refs:
                # The server chooses these names; one like ../../x would be a path.
                validate_ref_name(n, f"{n!r} (a ref named by the remote's summary)")
            return [(n, c) for n, c in sorted(summary_refs.items())]
        out: list[tuple[str, str | None]] = []
        for name in self.names:
            if is_checksum(name):
                out.append((name, name))
            elif summary_refs is not None:
                if name not in summary_refs:
                    from ostreefs.store.pull_local import NoSuchBranch

                    raise NoSuchBranch(name)
                out.append((name, summary_refs[name]))
            else:
                out.append((name, None))
        return out

    async def _resolve_heads(self, t: Transport, tips: list[tuple[str, str | None]]
                             ) -> list[tuple[str, str]]:
        out = []
        for name, commit in tips:
            if commit is None:
                data = await t.get(f"refs/heads/{name}")
                if data is None:
                    raise StoreError(f"No such branch '{name}' on remote {self.rem.name}: "
                                     f"server returned HTTP 404 for "
                                     f"{t.origin.url('refs/heads/' + name)}")
                text = data.decode("ascii", "replace").strip()
                if not is_checksum(text):
                    raise StoreError(f"Invalid ref refs/heads/{name} on remote "
                                     f"{self.rem.name}: not a checksum")
                commit = text
            out.append((name, commit))
        return out

    def _snapshot(self, done: bool = False) -> PullProgress:
        assert self.walk is not None and self.transport is not None
        s = self.walk.stats
        return PullProgress(s.metadata_fetched, s.content_fetched, s.metadata_requested,
                            s.content_requested, self.transport.bytes_transferred,
                            s.content_bytes_written, time.monotonic() - self.start, done)

    async def _walk(self, t: Transport, state: RemoteState,
                    tips: list[tuple[str, str]]) -> PullResult:
        opts, repo = self.opts, self.repo
        if not opts.dry_run:
            (repo.path / "state").mkdir(mode=0o755, exist_ok=True)
            stale = claim_stale_staging(repo)
            try:
                self.txn = repo.transaction(fsync=False if opts.disable_fsync else None)
            except BaseException:
                release(stale)
                raise
            if stale:
                self.result.resumed = await trio.to_thread.run_sync(adopt, self.txn, stale)
            t.objects.spill_dir = str(self.txn.staging)
        gpg_check = _gpg_checker(repo, self.rem.name) if self.rem.gpg_verify else None
        cfg = WalkConfig(depth=opts.depth,
                         commit_metadata_only=opts.commit_metadata_only,
                         subpaths=tuple(opts.subpaths), dry_run=opts.dry_run,
                         repair=opts.repair, verify_bindings=opts.verify_bindings,
                         collection_id=self.rem.collection_id,
                         bareuseronly_files=opts.bareuseronly_files,
                         writer_threads=max(1, opts.writer_threads))
        walk = Walk(repo, t, self.txn, cfg, gpg_check)
        self.walk = walk
        cb = self.progress_cb
        tick = (lambda: cb(self._snapshot())) if cb is not None else None
        ref_tips = [(c, None if is_checksum(n) else n) for n, c in tips]
        try:
            await walk.run(ref_tips, tick)
        except BaseException as e:
            self._keep_verified(e)
            raise
        res = self.result
        s = walk.stats
        res.metadata_fetched = s.metadata_fetched
        res.content_fetched = s.content_fetched
        res.content_bytes_written = s.content_bytes_written
        res.content_to_fetch = s.content_wanted
        res.repaired = list(s.repaired)
        res.bytes_transferred = t.bytes_transferred
        if opts.dry_run:
            for name, commit in tips:
                spec = RefSpec(name, None if opts.mirror else self.rem.name)
                if not is_checksum(name) and resolve_ref(repo, spec) != commit:
                    res.refs_moved[str(spec)] = commit
        else:
            self._finish(tips, state, walk)
        res.elapsed = time.monotonic() - self.start
        if cb is not None:
            cb(self._snapshot(done=True))
        return res

    def _keep_verified(self, err: BaseException) -> None:
        """After a failure, keep the objects verified so far (a rerun continues)."""
        txn, self.txn = self.txn, None
        if txn is None:
            return
        if not isinstance(err, (OstreefsError, OSError)):
            txn.abort()
            return
        try:
            written = txn.commit()
        except (OstreefsError, OSError):
            txn.abort()
            return
        _record(self.repo, written,
                repaired=self.walk is not None and bool(self.walk.stats.repaired))

    def _finish(self, tips: list[tuple[str, str]], state: RemoteState, walk: Walk) -> None:
        repo, opts = self.repo, self.opts
        txn, self.txn = self.txn, None
        assert txn is not None
        written = txn.commit()
        fsync = repo.fsync_enabled and not opts.disable_fsync
        for commit in walk.completing:
            try:
                os.unlink(repo.path / "state" / f"{commit}.commitpartial")
            except FileNotFoundError:
                pass
        for commit, data in walk.detached_refresh:
            path = repo.object_path(commit, ObjectType.COMMIT_META)
            try:
                if _fs.read_file(path) == data:
                    continue
            except FileNotFoundError:
                pass
            path.parent.mkdir(exist_ok=True)  # (decoded when it was fetched)
            _fs.atomic_write(path, data, fsync=fsync)
        for name, commit in tips:
            if is_checksum(name):
                continue
            spec = RefSpec(name, None if opts.mirror else self.rem.name)
            if resolve_ref(repo, spec) == commit:
                continue
            set_ref(repo, spec, commit, fsync=fsync, reason=f"pull {self.rem.name}")
            self.result.refs_moved[str(spec)] = commit
        if opts.mirror and self.names is None and state.summary is not None:
            _fs.atomic_write(repo.path / "summary", state.summary, fsync=fsync)
            if state.summary_sig is not None:
                _fs.atomic_write(repo.path / "summary.sig", state.summary_sig, fsync=fsync)
            else:
                (repo.path / "summary.sig").unlink(missing_ok=True)
        _record(repo, written, repaired=bool(walk.stats.repaired))
        # The counts of the trees it walked, while their dirtrees are warm; not those of
        # commits it found complete (a pull that fetches nothing costs no pass).
        treecount.record_commits(repo, [c for _name, c in tips if c in walk.completing])


def _record(repo: Repo, written: list[tuple[str, ObjectType, int]], *,
            repaired: bool = False) -> None:
    """Catalog what a pull wrote. After a repair, records made from the objects it
    replaced (file headers, link counts) may be wrong: they are dropped, as fsck does."""
    try:
        idx = repo.index
        if repaired:
            idx.forget_mount_records()
        idx.record_objects(written)
    except Exception:  # noqa: BLE001 - the objects are the truth (an LMDB error too):
        pass  # the index catches up on its next sync


def _gpg_checker(repo: Repo, remote: str
                 ) -> Callable[[str, bytes, Metadata | None], None]:
    """Refuse a commit that is unsigned or not signed by a key trusted for ``remote``
    (``detached``: its detached metadata, as the walk decoded it)."""
    from ostreefs.store import gpg

    def check(commit: str, data: bytes, detached: Metadata | None) -> None:
        sigs = gpg.commit_signatures(detached)
        result = gpg.verify_data(repo, remote, data, sigs) if sigs else gpg.GpgVerifyResult()
        try:
            gpg.require_valid(result, "commit")
        except gpg.GpgVerifyError as e:
            raise gpg.GpgVerifyError(f"Commit {commit}: {e}") from None

    return check


__all__ = ["pull", "PullOptions", "PullProgress", "PullResult", "NoBranches"]
