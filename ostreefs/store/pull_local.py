"""Copying commits between two repositories on this machine (``ostree pull-local``).

The walk is ostree's: each requested commit, then (with ``depth``) its parents, then
the trees of the commits that are new or still partial, skipping every object the
destination already has on disk. A commit being copied is marked partial
(``state/C.commitpartial``) until the transaction holding its objects is durable, so an
interrupted pull is resumed by the next one.

Objects travel by the cheapest way that keeps them valid, as ostree chooses:

* metadata objects, and content objects between repositories of the same mode, are
  hard-linked into the destination's staging directory when both repositories are on
  one filesystem and owned by the same user, or else copied byte for byte with their
  owner, permissions, xattrs and times;
* a regular file from bare-user into bare-user-only is linked the same way (ostree's
  flatpak special case);
* anything else is re-written through the destination's :class:`Transaction` from its
  header and payload, and the checksum the write computes must be the object's.

With ``untrusted`` a linked or copied object is verified before it is taken.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.errors import (
    CorruptObject,
    ObjectMissing,
    RefNotFound,
    StoreError,
    UsageError,
)
from ostreefs.store import treecount
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import Commit, ObjectType, Summary, is_checksum
from ostreefs.store.refs import (
    RefSpec,
    list_refs,
    resolve_ref,
    set_ref,
    validate_ref_name,
)
from ostreefs.store.repo import OSTREEMETA_XATTR, Repo
from ostreefs.store.transaction import SMALL_FILE, Transaction

#: Content objects copied at once (hashing, zlib and file I/O release the GIL).
THREADS = 8


class InvalidRefName(StoreError):
    """Invalid ref name {0}"""


class NoSuchBranch(StoreError):
    """No such branch '{0}' in repository summary"""


class BareUserOnlyMode(StoreError):
    """Writing content object: Content object {0}: invalid mode 0{1:04o} with bits 0{2:04o}"""


class BindingMismatch(StoreError):
    """Commit {0}: {1}"""


@dataclass
class PullResult:
    """What a pull did; the counts are those ostree prints."""

    #: Metadata objects (commit, dirtree, dirmeta) the destination did not have.
    metadata_imported: int = 0
    #: Content objects the destination did not have.
    content_imported: int = 0
    #: Payload bytes of content objects re-written (not linked or copied as files).
    content_bytes_written: int = 0
    #: Bytes of detached metadata re-read for commits the destination already had
    #: (ostree fetches those through its URL fetcher and reports them as transferred).
    bytes_transferred: int = 0
    #: Requested ref -> the commit it named in the source.
    commits: dict[str, str] = field(default_factory=dict)
    #: Destination refs moved, as ``[REMOTE:]NAME`` -> commit.
    refs_moved: dict[str, str] = field(default_factory=dict)
    #: (checksum, type, size on disk) of every object made visible in the destination.
    written: list[tuple[str, ObjectType, int]] = field(default_factory=list)


def pull_local(dest: Repo, src: Repo, refs: list[str] | None, *, depth: int = 0,
               remote: str | None = None, untrusted: bool = False,
               commit_metadata_only: bool = False, verify_bindings: bool = True,
               bareuseronly_files: bool = False, fsync: bool | None = None,
               progress: Callable[[int, int], None] | None = None) -> PullResult:
    """Copy the named refs (every ref of ``src`` when None) and what they reach into ``dest``.

    ``refs`` entries are ref names or commit checksums (a checksum moves no ref).
    ``depth``: parents to follow, 0 = only the tip, -1 = all. Refs land in
    ``refs/heads/`` or, with ``remote``, in ``refs/remotes/REMOTE/``.
    """
    if depth < -1:
        raise UsageError(f"Invalid depth {depth}", hint="use -1 (all parents) or N >= 0")
    if remote is not None:
        RefSpec.parse(f"{remote}:x")  # validates the remote name
    names = sorted(list_refs(src)) if refs is None else list(refs)
    requested: dict[str, str] = {}
    commits_only: list[str] = []
    for name in names:
        if is_checksum(name):
            commits_only.append(name)
            continue
        try:
            validate_ref_name(name)
        except StoreError:
            raise InvalidRefName(name) from None
    summary = _source_summary(src)
    for name in names:
        if is_checksum(name):
            continue
        if summary is not None:
            if name not in summary:
                raise NoSuchBranch(name)
            requested[name] = summary[name]
            continue
        found = resolve_ref(src, name)
        if found is None:
            raise RefNotFound(name)
        requested[name] = found

    result = PullResult(commits=dict(requested))
    with dest.lock(), src.lock():
        (dest.path / "state").mkdir(mode=0o777, exist_ok=True)
        txn = dest.transaction(fsync=fsync)
        try:
            puller = _Puller(dest, src, txn, depth=depth, untrusted=untrusted,
                             commit_only=commit_metadata_only,
                             verify_bindings=verify_bindings,
                             bareuseronly_files=bareuseronly_files, progress=progress)
            try:
                for c in commits_only:
                    puller.queue(c, ObjectType.COMMIT, None)
                for name, c in requested.items():
                    puller.queue(c, ObjectType.COMMIT, name)
                puller.run()
            finally:
                puller.close()
            result.written = txn.commit()
        except BaseException:
            txn.abort()
            raise
        sync = dest.fsync_enabled if fsync is None else fsync
        for commit, data in puller.detached_refresh:
            path = dest.object_path(commit, ObjectType.COMMIT_META)
            try:
                if _fs.read_file(path) == data:
                    continue
            except FileNotFoundError:
                pass
            path.parent.mkdir(exist_ok=True)
            _fs.atomic_write(path, data, fsync=sync)
        for name, c in requested.items():
            # As ostree: the ref is compared as the pull names it (without --remote a
            # plain name, which falls back to remote refs) and left alone if equal.
            current = resolve_ref(dest, RefSpec(name, remote))
            if current == c:
                continue
            spec = RefSpec(name, remote)
            set_ref(dest, spec, c, fsync=fsync, reason=f"pull-local {src.path}")
            result.refs_moved[str(spec)] = c
        if not commit_metadata_only:
            for c in [*requested.values(), *commits_only, *puller.parent_depth]:
                (dest.path / "state" / f"{c}.commitpartial").unlink(missing_ok=True)
    result.metadata_imported = puller.n_metadata
    result.content_imported = puller.n_content
    result.content_bytes_written = puller.bytes_written
    result.bytes_transferred = puller.bytes_refetched
    try:
        dest.index.record_objects(result.written)
    except Exception:  # noqa: BLE001 - the objects are the truth (an LMDB error too):
        pass  # the index catches up on its next sync
    # The counts of the trees it pulled, while their dirtrees are warm; not those of
    # commits it found complete (a pull that fetches nothing costs no pass).
    treecount.record_commits(dest, [c for c in (*requested.values(), *commits_only)
                                    if c in puller.walked])
    return result


def _source_summary(src: Repo) -> dict[str, str] | None:
    """Refs from the source's summary file: when there is one, ostree resolves by it."""
    try:
        data = _fs.read_file(src.path / "summary")
    except FileNotFoundError:
        return None
    return {r.name: r.commit for r in Summary.from_bytes(data).refs}


class _Puller:
    """One pull's walk: a queue of metadata objects to scan, content copied on a pool."""

    def __init__(self, dest: Repo, src: Repo, txn: Transaction, *, depth: int,
                 untrusted: bool, commit_only: bool, verify_bindings: bool,
                 bareuseronly_files: bool,
                 progress: Callable[[int, int], None] | None) -> None:
        self.dest = dest
        self.src = src
        self.txn = txn
        self.maxdepth = depth
        self.untrusted = untrusted
        self.commit_only = commit_only
        self.verify_bindings = verify_bindings
        self.bareuseronly_files = bareuseronly_files
        self.progress = progress
        dst_st = os.stat(dest.path)
        src_st = os.stat(src.path)
        same_owner = dst_st.st_uid == src_st.st_uid
        #: ostree links objects only between repos of one owner on one filesystem.
        self.can_hardlink = same_owner and dst_st.st_dev == src_st.st_dev
        #: An untrusted source may be linked or copied only if its owner is ours.
        self.direct_ok = same_owner or not untrusted
        self.todo: deque[tuple[str, ObjectType, str | None]] = deque()
        self.scanned: set[tuple[str, ObjectType]] = set()
        #: Objects this pull put in the staging directory (they are read from src).
        self.imported: set[tuple[str, ObjectType]] = set()
        self.requested_content: set[str] = set()
        #: Parent commit -> remaining depth, for commits reached as parents.
        self.parent_depth: dict[str, int] = {}
        #: (commit, detached metadata bytes) to write over the destination's copy.
        self.detached_refresh: list[tuple[str, bytes]] = []
        #: Commits whose trees this pull walks (new, or left partial by an earlier one).
        self.walked: set[str] = set()
        self.n_metadata = 0
        self.n_content = 0
        self.bytes_written = 0
        self.bytes_refetched = 0
        self._bytes_lock = threading.Lock()
        self._failed = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=THREADS,
                                        thread_name_prefix="ostreefs-pull")
        self._futures: list[Future[None]] = []
        #: Same-mode pulls on one filesystem only hardlink content: each object is
        #: linked straight into objects/ on the walking thread (Transaction.link_object).
        self._link_only = (self.can_hardlink and self.direct_ok and src.mode is dest.mode
                           and not untrusted and not bareuseronly_files)

    def close(self) -> None:
        self._failed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ walk

    def queue(self, checksum: str, otype: ObjectType, ref: str | None) -> None:
        self.todo.append((checksum, otype, ref))

    def run(self) -> None:
        while self.todo:
            checksum, otype, ref = self.todo.popleft()
            self._scan(checksum, otype, ref)
            self._raise_failed()
        for f in self._futures:
            f.result()
        if self.progress is not None:
            self.progress(self.n_metadata, self.n_content)

    def _raise_failed(self) -> None:
        if not self._failed.is_set():
            return
        for f in self._futures:
            if f.done():
                f.result()

    def _has(self, checksum: str, otype: ObjectType) -> bool:
        return (checksum, otype) in self.imported or self.dest.has_object(checksum, otype)

    def _partial_path(self, commit: str) -> Path:
        return self.dest.path / "state" / f"{commit}.commitpartial"

    def _scan(self, checksum: str, otype: ObjectType, ref: str | None) -> None:
        key = (checksum, otype)
        if key in self.scanned:
            return
        if not self._has(checksum, otype):
            if otype is ObjectType.COMMIT:
                self._mark_partial(checksum)
            try:
                self._import_metadata(checksum, otype)
            except ObjectMissing:
                # A history may end in a parent the source never had.
                if (otype is ObjectType.COMMIT and self.maxdepth != 0
                        and checksum in self.parent_depth):
                    return
                raise
            self.imported.add(key)
            self.n_metadata += 1
            if self.progress is not None and self.n_metadata % 64 == 0:
                self.progress(self.n_metadata, self.n_content)
        elif otype is ObjectType.COMMIT:
            # ostree re-reads the detached metadata of a commit it has, for new signatures.
            data = self._read_detached(checksum)
            if data is not None:
                self.detached_refresh.append((checksum, data))
                self.bytes_refetched += len(data)
        if otype is ObjectType.COMMIT:
            self._scan_commit(checksum, ref)
        elif otype is ObjectType.DIR_TREE:
            self._scan_dirtree(checksum)
        else:
            return
        self.scanned.add(key)

    def _load(self, repo_key: tuple[str, ObjectType]) -> Repo:
        return self.src if repo_key in self.imported else self.dest

    def _scan_commit(self, checksum: str, ref: str | None) -> None:
        depth = self.parent_depth.get(checksum, self.maxdepth)
        commit = self._load((checksum, ObjectType.COMMIT)).load_commit(checksum)
        if self.verify_bindings:
            _verify_bindings(checksum, commit, ref, self.src.collection_id)
        if commit.parent is not None and (self.maxdepth == -1 or depth > 0):
            self.parent_depth[commit.parent] = depth - 1 if depth > 0 else -1
            self.queue(commit.parent, ObjectType.COMMIT, None)
        if self._partial_path(checksum).exists() and not self.commit_only:
            self.walked.add(checksum)
            self.queue(commit.root_tree, ObjectType.DIR_TREE, None)
            self.queue(commit.root_meta, ObjectType.DIR_META, None)

    def _scan_dirtree(self, checksum: str) -> None:
        tree = self._load((checksum, ObjectType.DIR_TREE)).load_dirtree(checksum)
        for _name, fc in tree.files:
            if fc in self.requested_content:
                continue
            if self._link_only:
                # One link both checks and copies (EEXIST: the destination has it).
                self.requested_content.add(fc)
                if self._link_content(fc):
                    self.n_content += 1
                continue
            if self._has(fc, ObjectType.FILE):
                continue
            self.requested_content.add(fc)
            self.n_content += 1
            self._futures.append(self._pool.submit(self._content_job, fc))
        for _name, t, m in tree.dirs:
            self.queue(t, ObjectType.DIR_TREE, None)
            self.queue(m, ObjectType.DIR_META, None)

    def _mark_partial(self, commit: str) -> None:
        try:
            fd = os.open(self._partial_path(commit),
                         os.O_EXCL | os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY,
                         0o644)
        except FileExistsError:
            return
        os.close(fd)

    # --------------------------------------------------------------- copying

    def _read_detached(self, commit: str) -> bytes | None:
        try:
            return self.src.read_metadata(commit, ObjectType.COMMIT_META)
        except ObjectMissing:
            return None

    def _copy_detached(self, commit: str) -> None:
        data = self._read_detached(commit)
        if data is None:
            return
        if self._claim(commit, ObjectType.COMMIT_META):
            self._stage_bytes(commit, ObjectType.COMMIT_META, data)
        else:
            self.detached_refresh.append((commit, data))

    def _verify_source(self, checksum: str, otype: ObjectType) -> None:
        from ostreefs.store.fsck import verify_object

        err = verify_object(self.src, checksum, otype)
        if err == "missing":
            raise ObjectMissing(checksum, otype.value)
        if err is not None:
            raise CorruptObject(checksum, otype.value, err)

    def _import_metadata(self, checksum: str, otype: ObjectType) -> None:
        if self.direct_ok:
            if self.untrusted:
                self._verify_source(checksum, otype)
            if self._import_direct(checksum, otype):
                if otype is ObjectType.COMMIT:
                    self._copy_detached(checksum)
                return
        if otype is ObjectType.COMMIT:
            self._copy_detached(checksum)
        data = self.src.read_metadata(checksum, otype)
        actual = self.txn.write_metadata(otype, data)
        if actual != checksum:
            raise CorruptObject(checksum, otype.value,
                                f"checksum expected='{checksum}' actual='{actual}'")

    def _link_content(self, checksum: str) -> bool:
        """Link a content object into the destination; False if it was there already."""
        try:
            return self.txn.link_object(checksum, ObjectType.FILE,
                                        self.src.object_path_str(checksum, ObjectType.FILE))
        except FileNotFoundError:
            # link looks at the source first: the destination may have it anyway.
            if self._has(checksum, ObjectType.FILE):
                return False
            raise ObjectMissing(checksum, "file") from None
        except OSError as e:
            if e.errno not in (errno.EMLINK, errno.EXDEV, errno.EPERM):
                raise
        if self._has(checksum, ObjectType.FILE):
            return False
        self._import_content(checksum)  # copied through staging instead
        return True

    def _content_job(self, checksum: str) -> None:
        if self._failed.is_set():
            return
        try:
            self._import_content(checksum)
        except BaseException:
            self._failed.set()
            raise

    def _import_content(self, checksum: str) -> None:
        src_mode, dest_mode = self.src.mode, self.dest.mode
        conversion = (src_mode is RepoMode.BARE_USER
                      and dest_mode is RepoMode.BARE_USER_ONLY)
        try_direct = self.direct_ok and (src_mode is dest_mode or conversion)
        if self.bareuseronly_files or conversion:
            header, _ = self.src.load_file_header(checksum)
            if self.bareuseronly_files:
                _check_bareuseronly(checksum, header.mode)
            if conversion and header.is_symlink:
                try_direct = False  # a bare-user symlink is a regular file
        if try_direct:
            if self.untrusted:
                self._verify_source(checksum, ObjectType.FILE)
            if self._import_direct(checksum, ObjectType.FILE):
                return
        self._rewrite_content(checksum)

    def _rewrite_content(self, checksum: str) -> None:
        """Parse the source object and write it anew in the destination's mode."""
        header, size = self.src.load_file_header(checksum)
        if self.dest.mode is RepoMode.BARE_USER_ONLY and not header.is_symlink:
            _check_bareuseronly(checksum, header.mode)
        txn = self.txn
        if header.is_symlink:
            actual = txn.write_symlink(header)
            size = 0
        elif size <= SMALL_FILE:
            actual = txn.write_file_bytes(header, self.src.read_file_bytes(checksum))
        elif not self.src.mode.is_archive:
            path = self.src.object_path(checksum, ObjectType.FILE)
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                actual = txn.write_file_stream(header, fd, size)
            finally:
                os.close(fd)
        else:
            with tempfile.TemporaryFile(dir=self.dest.path / "tmp") as tmp:
                for block in self.src.iter_file_payload(checksum):
                    tmp.write(block)
                tmp.flush()
                tmp.seek(0)
                actual = txn.write_file_stream(header, tmp.fileno(), size)
        if actual != checksum:
            raise CorruptObject(checksum, "file",
                                f"checksum expected='{checksum}' actual='{actual}'")
        with self._bytes_lock:
            self.bytes_written += size

    # Staging goes through the Transaction's own bookkeeping, so a linked object is
    # made durable and renamed into objects/ with everything else the pull writes.

    def _claim(self, checksum: str, otype: ObjectType) -> bool:
        return self.txn._claim(checksum, otype)

    def _stage_bytes(self, checksum: str, otype: ObjectType, data: bytes) -> None:
        try:
            self.txn._write_new(self.txn._stage_path(checksum, otype), data, 0o644)
        except BaseException:
            self.txn._unclaim(checksum, otype)
            raise
        self.txn._done_writing(checksum, otype, len(data))

    def _import_direct(self, checksum: str, otype: ObjectType) -> bool:
        """Link (or copy as a file) the source object into staging; False if impossible.

        True also when the destination turns out to have the object already.
        """
        src_path = self.src.object_path_str(checksum, otype)
        if not self._claim(checksum, otype):
            return True
        dst = self.txn._stage_path(checksum, otype)
        try:
            done = False
            if self.can_hardlink:
                try:
                    os.link(src_path, dst, follow_symlinks=False)
                    done = True
                except FileExistsError:
                    done = True
                except FileNotFoundError:
                    raise ObjectMissing(checksum, otype.value) from None
                except OSError as e:
                    if e.errno not in (errno.EMLINK, errno.EXDEV, errno.EPERM):
                        raise
            if not done:
                done = self._copy_file(src_path, dst, checksum, otype)
            if not done:
                self.txn._unclaim(checksum, otype)
                return False
            size = os.lstat(dst).st_size
        except BaseException:
            self.txn._unclaim(checksum, otype)
            raise
        self.txn._done_writing(checksum, otype, size)
        return True

    def _copy_file(self, src_path: str | Path, dst: str | Path, checksum: str,
                   otype: ObjectType) -> bool:
        """Copy an object file with its owner, mode, xattrs and times, as ostree does."""
        try:
            st = os.lstat(src_path)
        except FileNotFoundError:
            raise ObjectMissing(checksum, otype.value) from None
        if not stat.S_ISREG(st.st_mode):
            return False  # a symlink object is re-written instead
        tmp = self.txn.staging / _fs.tmp_name()
        src_fd = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(os.dup(src_fd), "rb") as fin, \
                        os.fdopen(os.dup(fd), "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                dest_mode, src_mode = self.dest.mode, self.src.mode
                if dest_mode is RepoMode.BARE:
                    os.fchown(fd, st.st_uid, st.st_gid)
                if otype is ObjectType.FILE:
                    if src_mode is RepoMode.BARE:
                        for name, value in _fs.list_xattrs(src_fd):
                            os.setxattr(fd, name.decode("utf-8", "surrogateescape"), value)
                    elif src_mode is RepoMode.BARE_USER and dest_mode is RepoMode.BARE_USER:
                        os.setxattr(fd, OSTREEMETA_XATTR, os.getxattr(src_fd, OSTREEMETA_XATTR))
                os.fchmod(fd, stat.S_IMODE(st.st_mode))
                if not dest_mode.is_archive:
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
            os.rename(tmp, dst)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            os.close(src_fd)
        return True


def _check_bareuseronly(checksum: str, mode: int) -> None:
    """bare-user-only stores no setuid, setgid, sticky or world-writable regular file."""
    if stat.S_ISREG(mode):
        bad = (mode & ~stat.S_IFMT(mode)) & ~0o775
        if bad:
            raise BareUserOnlyMode(checksum, mode, bad)


def _verify_bindings(checksum: str, commit: Commit, ref: str | None,
                     collection_id: str | None) -> None:
    """Refuse a commit bound to other refs or another collection than it came by."""
    meta: dict[str, object] = {}
    for key, v in commit.metadata:
        if key not in meta:  # g_variant_lookup finds the first entry
            meta[key] = v.value if v.signature in ("as", "s") else None
    bound = meta.get("ostree.ref-binding")
    if not isinstance(bound, list):
        if collection_id is None:
            return
        raise BindingMismatch(checksum, "Expected commit metadata to have ref binding "
                                        "information, found none")
    if ref is not None and ref not in bound:
        names = ", ".join(f"‘{r}’" for r in bound) if bound else "no refs"
        raise BindingMismatch(checksum, f"Commit has no requested ref ‘{ref}’ in ref "
                                        f"binding metadata ({names})")
    if collection_id is not None:
        cid = meta.get("ostree.collection-binding")
        if not isinstance(cid, str):
            raise BindingMismatch(checksum, "Expected commit metadata to have collection "
                                            "ID binding information, found none")
        if cid != collection_id:
            raise BindingMismatch(checksum, f"Commit has collection ID ‘{cid}’ in collection "
                                            f"binding metadata, while the remote it came "
                                            f"from has collection ID ‘{collection_id}’")


__all__ = ["pull_local", "PullResult", "InvalidRefName", "NoSuchBranch", "BareUserOnlyMode",
           "BindingMismatch"]
