"""Building commits from directories and existing trees.

What ostree hashes is decided here: owner, mode and xattrs after the commit modifiers
(``--owner-uid``, ``--canonical-permissions``, ``--no-xattrs``, and what bare-user-only
forces), then the file bytes. Regular files are hashed and written by a thread pool
(hashlib, zlib and file I/O release the GIL); the walk itself stays on one thread so
trees are built in a deterministic order.

A stat cache in the index maps a file's identity and stat to the content checksum it
had, so re-committing an unchanged tree reads no file data at all.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ostreefs import _fs
from ostreefs.errors import StoreError, UsageError
from ostreefs.store import treecount
from ostreefs.store.config import RepoMode
from ostreefs.store.gvariant import Variant
from ostreefs.store.index import RACY_NS, stat_key
from ostreefs.store.objects import (
    EMPTY_DIRTREE,
    Commit,
    DirMeta,
    DirTree,
    FileHeader,
    ObjectType,
    normalize_xattrs,
)
from ostreefs.store.refs import RefSpec, resolve_ref, rev_parse, set_ref
from ostreefs.store.repo import Repo
from ostreefs.store.transaction import SMALL_FILE, Transaction, TransactionStats

BATCH_FILES = 64
BATCH_BYTES = 4 << 20


@dataclass(frozen=True)
class CommitModifier:
    """How file metadata is changed on its way into a commit."""

    owner_uid: int | None = None
    owner_gid: int | None = None
    canonical_permissions: bool = False
    no_xattrs: bool = False

    @classmethod
    def for_repo(cls, repo: Repo, **kw: object) -> CommitModifier:
        m = cls(**kw)  # type: ignore[arg-type]
        if repo.mode is RepoMode.BARE_USER_ONLY:
            m = cls(m.owner_uid, m.owner_gid, True, True)
        return m

    def apply(self, mode: int, uid: int, gid: int,
              xattrs: tuple[tuple[bytes, bytes], ...]) -> tuple[int, int, int,
                                                                tuple[tuple[bytes, bytes], ...]]:
        if self.owner_uid is not None:
            uid = self.owner_uid
        if self.owner_gid is not None:
            gid = self.owner_gid
        if self.canonical_permissions:
            uid = gid = 0
            if not stat.S_ISLNK(mode):
                mode = stat.S_IFMT(mode) | (mode & 0o755)
        if self.no_xattrs or self.canonical_permissions:
            xattrs = ()
        return mode, uid, gid, xattrs

    def signature(self) -> bytes:
        return repr((self.owner_uid, self.owner_gid, self.canonical_permissions,
                     self.no_xattrs)).encode()


class _Slot:
    """Where a worker leaves one file's checksum (a Future per file costs ~1 KiB)."""

    __slots__ = ("value", "error")

    def __init__(self) -> None:
        self.value: str | None = None
        self.error: BaseException | None = None

    def result(self) -> str:
        if self.error is not None:
            raise self.error
        if self.value is None:
            raise StoreError("internal: file checksum read before its worker finished")
        return self.value


class MTree:
    """A directory being built: either loaded from a commit or filled from disk."""

    __slots__ = ("files", "dirs", "meta", "base", "written")

    def __init__(self) -> None:
        self.files: dict[str, str | _Slot] = {}
        self.dirs: dict[str, MTree] = {}
        self.meta: str | None = None
        #: (dirtree, dirmeta) of an unmodified tree taken from a commit, if any.
        self.base: tuple[str, str] | None = None
        #: Its dirtree, once written (or taken from base).
        self.written: str | None = None

    def expand(self, repo: Repo) -> None:
        """Turn a borrowed commit tree into editable entries (one level)."""
        if self.base is None:
            return
        tree_csum, meta_csum = self.base
        self.base = None
        tree = repo.load_dirtree(tree_csum)
        self.meta = self.meta or meta_csum
        for n, c in tree.files:
            self.files.setdefault(n, c)
        for n, t, m in tree.dirs:
            if n not in self.dirs:
                child = MTree()
                child.base = (t, m)
                child.meta = m
                self.dirs[n] = child


@dataclass
class CommitOptions:
    """Everything ``ostree commit`` lets a user say, with ostree's defaults."""

    branch: str | None = None
    subject: str = ""
    body: str = ""
    parent: str | None = None  # a rev; None = the branch head; "none" = no parent
    orphan: bool = False
    timestamp: int | None = None
    metadata: list[tuple[str, Variant]] = field(default_factory=list)
    detached_metadata: list[tuple[str, Variant]] = field(default_factory=list)
    keep_metadata: list[str] = field(default_factory=list)
    bind_refs: list[str] = field(default_factory=list)
    no_bindings: bool = False
    modifier: CommitModifier = field(default_factory=CommitModifier)
    skip_if_unchanged: bool = False
    consume: bool = False
    fsync: bool | None = None
    use_stat_cache: bool = True
    #: Take a hardlinked file's object as is, without reading it. Always on where that
    #: gives the checksum hashing would give (bare, bare-user-only, no modifier); in
    #: bare-user it keeps the object's metadata, as ostree's --link-checkout-speedup.
    link_checkout_speedup: bool = False
    threads: int | None = None
    #: ``--tar-autocreate-parents``: create directories a tar names only implicitly.
    tar_autocreate_parents: bool = False
    #: Called with the new commit's checksum before the branch moves (GPG signing), so
    #: a failure there leaves the branch where it was.
    before_ref: Callable[[str], None] | None = None


@dataclass
class CommitResult:
    checksum: str
    stats: TransactionStats
    skipped: bool = False
    root_tree: str = ""
    root_meta: str = ""
    #: (checksum, type, size on disk) of every object this commit added to the repo.
    written: list[tuple[str, ObjectType, int]] = field(default_factory=list)


@dataclass(frozen=True)
class TreeSource:
    """One ``--tree=KIND=VALUE``: a directory on disk or an existing commit's tree."""

    kind: str  # "dir", "tar" or "ref"
    value: str


class _Writer:
    """Walks directories into MTrees, feeding file work to a pool."""

    def __init__(self, repo: Repo, txn: Transaction, modifier: CommitModifier,
                 use_cache: bool, threads: int | None, link_speedup: bool = False) -> None:
        self.repo = repo
        self.txn = txn
        self.mod = modifier
        self.mod_sig = modifier.signature()
        self.index = None
        if use_cache:
            try:
                self.index = repo.index
            except StoreError:
                self.index = None
        n = threads or min(8, (os.cpu_count() or 2) * 2)
        self.pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="ostreefs-commit")
        self.by_inode: dict[tuple[int, int], _Slot] = {}
        self.batches: list[Future[None]] = []
        self.cache_puts: list[tuple[bytes, str, int]] = []
        self._puts_lock = threading.Lock()
        self._batch: list[tuple[str, os.stat_result, _Slot, bytes]] = []
        self._batch_bytes = 0
        self.consumed: list[str] = []
        self.cache_hits = 0
        default_mod = modifier == CommitModifier()
        self.by_object_inode = self.index is not None and (
            (repo.mode is RepoMode.BARE and default_mod)
            or repo.mode is RepoMode.BARE_USER_ONLY
            or (repo.mode is RepoMode.BARE_USER and link_speedup))
        self._inodes_synced = False

    # ------------------------------------------------------------------ walk

    def add_dir(self, path: str, into: MTree, consume: bool) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise StoreError(f"Cannot commit {path}: no such directory") from None
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"Cannot commit {path}: not a directory")
        self._walk(path, st, into, consume)
        self._flush_batch()

    def _xattrs(self, path: str) -> tuple[tuple[bytes, bytes], ...]:
        if self.mod.no_xattrs:
            return ()
        try:
            return normalize_xattrs(_fs.list_xattrs(path))
        except OSError as e:
            raise StoreError(f"Cannot read xattrs of {path}: {e.strerror}") from None

    def _walk(self, path: str, st: os.stat_result, node: MTree, consume: bool) -> None:
        node.expand(self.repo)
        mode, uid, gid, xattrs = self.mod.apply(st.st_mode, st.st_uid, st.st_gid,
                                                self._xattrs(path))
        node.meta = self.txn.write_metadata(
            ObjectType.DIR_META, DirMeta(uid, gid, mode, xattrs).to_bytes())
        try:
            entries = list(os.scandir(path))
        except OSError as e:
            raise StoreError(f"Cannot read directory {path}: {e.strerror}") from None
        cache_keys: list[tuple[os.DirEntry[str], os.stat_result, bytes]] = []
        for entry in entries:
            name = entry.name
            _check_name(name, path)
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            fmt = stat.S_IFMT(est.st_mode)
            if fmt == stat.S_IFDIR:
                node.files.pop(name, None)
                child = node.dirs.get(name)
                if child is None:
                    child = node.dirs[name] = MTree()
                self._walk(entry.path, est, child, consume)
            elif fmt == stat.S_IFLNK:
                node.dirs.pop(name, None)
                node.files[name] = self._symlink(entry.path, est)
            elif fmt == stat.S_IFREG:
                node.dirs.pop(name, None)
                cache_keys.append((entry, est, stat_key(est, self.mod_sig)))
            else:
                raise StoreError(f"Unsupported file type for {entry.path}",
                                 hint="ostree stores only files, symlinks and directories")
            if consume and fmt != stat.S_IFDIR:
                self.consumed.append(entry.path)
        if not cache_keys:
            return
        hits = (self.index.stat_lookup_many([k for _, _, k in cache_keys])
                if self.index is not None else [None] * len(cache_keys))
        for (entry, est, key), hit in zip(cache_keys, hits, strict=True):
            if (hit is not None and est.st_ctime_ns + RACY_NS < hit[1]
                    and self.repo.has_object(hit[0], ObjectType.FILE)):
                node.files[entry.name] = hit[0]
                self.cache_hits += 1
                continue
            if est.st_nlink > 1 and self.by_object_inode:
                linked = self._linked_object(est)
                if linked is not None:
                    node.files[entry.name] = linked
                    self.cache_hits += 1
                    continue
            node.files[entry.name] = self._regular(entry.path, est, key)

    def _linked_object(self, st: os.stat_result) -> str | None:
        """The object this file is a hardlink of, if the index knows and the inode agrees."""
        assert self.index is not None
        csum = self.index.object_by_inode(st.st_dev, st.st_ino)
        if csum is None and not self._inodes_synced:
            self._inodes_synced = True  # objects ostree wrote: learn their inodes once
            self.index.sync()
            csum = self.index.object_by_inode(st.st_dev, st.st_ino)
        if csum is None:
            return None
        try:
            ost = os.lstat(self.repo.object_path(csum, ObjectType.FILE))
        except FileNotFoundError:
            return None
        if (ost.st_dev, ost.st_ino) != (st.st_dev, st.st_ino):
            return None
        return csum

    def _symlink(self, path: str, st: os.stat_result) -> str:
        target = os.readlink(path)
        mode, uid, gid, xattrs = self.mod.apply(st.st_mode, st.st_uid, st.st_gid,
                                                self._xattrs(path))
        return self.txn.write_symlink(FileHeader(uid, gid, mode, target, xattrs))

    def _regular(self, path: str, st: os.stat_result, key: bytes) -> _Slot:
        ino = (st.st_dev, st.st_ino)
        seen = self.by_inode.get(ino)
        if seen is not None and st.st_nlink > 1:
            return seen
        fut = _Slot()
        if st.st_nlink > 1:
            self.by_inode[ino] = fut
        if st.st_size > SMALL_FILE:
            self.batches.append(self.pool.submit(self._run_batch, [(path, st, fut, key)]))
        else:
            self._batch.append((path, st, fut, key))
            self._batch_bytes += st.st_size
            if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                self._flush_batch()
        return fut

    def _flush_batch(self) -> None:
        if self._batch:
            self.batches.append(self.pool.submit(self._run_batch, self._batch))
            self._batch = []
            self._batch_bytes = 0

    def _run_batch(self, batch: list[tuple[str, os.stat_result, _Slot, bytes]]) -> None:
        """Worker: read xattrs, hash and store each file of a batch."""
        puts = []
        for path, st, fut, key in batch:
            try:
                t0 = time.time_ns()
                mode, uid, gid, xattrs = self.mod.apply(st.st_mode, st.st_uid, st.st_gid,
                                                        self._xattrs(path))
                csum = self._hash_and_store(path, FileHeader(uid, gid, mode, "", xattrs),
                                            st.st_size)
                fut.value = csum
                puts.append((key, csum, t0))
            except BaseException as e:  # noqa: B036 - delivered to the walker
                fut.error = e
        if puts:
            with self._puts_lock:
                self.cache_puts.extend(puts)

    def _hash_and_store(self, path: str, header: FileHeader, size: int) -> str:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as e:
            raise StoreError(f"Cannot read {path}: {e.strerror}") from None
        try:
            if size <= SMALL_FILE:
                data = os.read(fd, size + 1) if size else b""
                while len(data) < size + 1:
                    more = os.read(fd, size + 1 - len(data))
                    if not more:
                        break
                    data += more
                if len(data) != size:
                    raise StoreError(f"{path} changed size while being committed")
                return self.txn.write_file_bytes(header, data)
            return self.txn.write_file_stream(header, fd, size)
        finally:
            os.close(fd)

    # -------------------------------------------------------------- finish

    def wait(self) -> None:
        """Let every queued file finish (errors surface per file in write_tree)."""
        self._flush_batch()
        for b in self.batches:
            b.result()
        self.batches.clear()

    def write_tree(self, node: MTree) -> tuple[str, str]:
        """Write dirtrees bottom-up; returns (dirtree, dirmeta) of ``node``."""
        if node.base is not None:
            node.written = node.base[0]
            return node.base
        files = {}
        for name, v in node.files.items():
            files[name] = v if isinstance(v, str) else v.result()
        dirs = {name: self.write_tree(child) for name, child in node.dirs.items()}
        if node.meta is None:
            raise StoreError("internal: directory without metadata")
        tree = DirTree.build(files, dirs)
        data = tree.to_bytes()
        csum = node.written = self.txn.write_metadata(ObjectType.DIR_TREE, data)
        return csum, node.meta

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _check_name(name: str, parent: str) -> None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"Invalid UTF-8 in file name under {parent}: {name!r}",
                         hint="ostree stores only UTF-8 names") from None


def commit(repo: Repo, sources: Iterable[TreeSource], opts: CommitOptions,
           progress: Callable[[str], None] | None = None) -> CommitResult:
    """Commit the union of ``sources`` (later ones overlay earlier) and move the branch.

    Returns the commit checksum; with ``skip_if_unchanged`` and a tree equal to the
    parent's, returns the parent and writes nothing.
    """
    sources = list(sources)
    if not sources:
        sources = [TreeSource("dir", ".")]
    if opts.branch is None and not opts.orphan:
        raise UsageError("A branch must be specified with -b or use --orphan")
    branch = RefSpec.parse(opts.branch) if opts.branch else None
    for b in opts.bind_refs:
        RefSpec.parse(b)
    with repo.lock():
        parent = _resolve_parent(repo, opts, branch)
        txn = repo.transaction(fsync=opts.fsync)
        try:
            writer = _Writer(repo, txn, opts.modifier, opts.use_stat_cache, opts.threads,
                             opts.link_checkout_speedup)
            try:
                root = MTree()
                for src in sources:
                    if src.kind == "dir":
                        writer.add_dir(src.value, root, opts.consume)
                    elif src.kind == "ref":
                        c = repo.load_commit(rev_parse(repo, src.value))
                        _overlay_commit_tree(repo, root, c.root_tree, c.root_meta)
                    # --- tar import hook (ostreefs/store/tarimport.py) ---
                    elif src.kind == "tar":
                        from ostreefs.store.tarimport import import_tar

                        import_tar(repo, txn, writer, root, src.value,
                                   autocreate_parents=opts.tar_autocreate_parents,
                                   require_root=src is sources[-1])
                    # --- end tar import hook ---
                    else:
                        raise UsageError(f"Invalid --tree kind '{src.kind}'",
                                         hint="use --tree=dir=PATH, --tree=tar=FILE or "
                                              "--tree=ref=REV")
                if root.meta is None and root.base is None:
                    root.meta = txn.write_metadata(
                        ObjectType.DIR_META, DirMeta(0, 0, 0o40755).to_bytes())
                writer.wait()
                root_tree, root_meta = writer.write_tree(root)
            finally:
                writer.close()
            txn.content_cache_hits = writer.cache_hits
            parent_commit = repo.load_commit(parent) if parent else None
            if (opts.skip_if_unchanged and parent_commit is not None
                    and parent_commit.root_tree == root_tree
                    and parent_commit.root_meta == root_meta):
                txn.abort()
                assert parent is not None
                return CommitResult(parent, txn.stats, True, root_tree, root_meta)
            metadata = _build_metadata(repo, opts, branch, parent_commit)
            ts = opts.timestamp if opts.timestamp is not None else int(time.time())
            c = Commit(root_tree, root_meta, opts.subject, opts.body, ts, parent,
                       tuple(metadata))
            checksum = txn.write_metadata(ObjectType.COMMIT, c.to_bytes())
            written = txn.commit()
        except BaseException:
            txn.abort()
            raise
        if opts.detached_metadata:
            repo.write_detached_metadata(checksum, tuple(opts.detached_metadata))
        if opts.before_ref is not None:
            opts.before_ref(checksum)
        if branch is not None:
            set_ref(repo, branch, checksum, fsync=opts.fsync, reason="commit")
        _update_index(repo, written, writer.cache_puts, txn.inodes)
        if opts.consume:
            for p in writer.consumed:
                try:
                    os.unlink(p)
                except OSError:
                    pass
        result = CommitResult(checksum, txn.stats, False, root_tree, root_meta, written)
    # Outside the lock: a count from dirtrees (a tree borrowing another commit's) may
    # take a while, and a prune waiting for the lock need not wait for it.
    _record_counts(repo, root)
    return result


def _update_index(repo: Repo, written: list[tuple[str, ObjectType, int]],
                  cache_puts: list[tuple[bytes, str, int]],
                  inodes: list[tuple[int, int, str]]) -> None:
    """Record what the commit wrote; the objects are already durable, so this may fail."""
    try:
        idx = repo.index
        idx.record_objects(written)
        idx.record_inodes(inodes)
        if cache_puts:
            idx.stat_store_many(cache_puts)
    except Exception:  # noqa: BLE001 - derived data (an LMDB error too): caught up later
        pass


def _record_counts(repo: Repo, root: MTree) -> None:
    """Record the hardlink counts of the tree just written (see store.treecount), so
    that a first mount of it need not count. From memory when every directory was
    built here (a commit of a directory), as the dirtrees written from it say; a tree
    that borrows subtrees from another commit is counted from its dirtrees. Best
    effort: the index is derived data. (A dirtree that was already in the repository
    is taken to be what its checksum names, as everywhere: a damaged one is fsck's.)"""
    tree = root.written
    if tree is None:
        return
    seen: dict[int, int] = {}
    listed: dict[bytes, None] = {}  # distinct dirtrees, breadth first, as count_tree
    level = [root]
    depth = 0
    while level:
        if depth > treecount.MAX_DEPTH:
            return  # as count_tree: too deep to be a tree a mount will count
        nxt: list[MTree] = []
        for node in level:
            if node.base is not None or node.written is None:
                treecount.record_counts_quietly(repo, tree)
                return
            if len(listed) < treecount.READAHEAD_TREES:
                listed.setdefault(bytes.fromhex(node.written))
            for v in node.files.values():
                k = int((v if isinstance(v, str) else v.result())[:16], 16)
                seen[k] = seen.get(k, 0) + 1
            nxt.extend(node.dirs[n] for n in sorted(node.dirs))  # a dirtree's order
        level = nxt
        depth += 1
    try:
        repo.index.store_tree_walk(tree, treecount.kept_counts(seen), list(listed))
    except Exception:  # noqa: BLE001 - derived data (an LMDB error too): no record
        pass


def _overlay_commit_tree(repo: Repo, node: MTree, tree: str, meta: str) -> None:
    if node.meta is None and not node.files and not node.dirs and node.base is None:
        node.base = (tree, meta)
        node.meta = meta
        return
    node.expand(repo)
    node.meta = meta
    t = repo.load_dirtree(tree)
    for n, c in t.files:
        node.dirs.pop(n, None)
        node.files[n] = c
    for n, dt, dm in t.dirs:
        node.files.pop(n, None)
        child = node.dirs.get(n)
        if child is None:
            child = node.dirs[n] = MTree()
        _overlay_commit_tree(repo, child, dt, dm)


def _resolve_parent(repo: Repo, opts: CommitOptions, branch: RefSpec | None) -> str | None:
    if opts.parent is not None:
        if opts.parent == "none":
            return None
        return rev_parse(repo, opts.parent)
    if opts.orphan or branch is None:
        return None
    return resolve_ref(repo, branch)


def _build_metadata(repo: Repo, opts: CommitOptions, branch: RefSpec | None,
                    parent: Commit | None) -> list[tuple[str, Variant]]:
    """Commit metadata in ostree's order: given keys, kept keys, then bindings."""
    md: list[tuple[str, Variant]] = list(opts.metadata)
    if opts.keep_metadata:
        if parent is None:
            raise UsageError("Either --branch or --parent must be specified when using "
                             "--keep-metadata")
        pmeta = dict(parent.metadata)
        for k in opts.keep_metadata:
            if k in pmeta:
                md.append((k, pmeta[k]))
    if not opts.no_bindings:
        refs = sorted({*( [branch.name] if branch else []), *opts.bind_refs},
                      key=lambda s: s.encode())
        keys = {k for k, _ in md}
        if "ostree.ref-binding" not in keys:
            md.append(("ostree.ref-binding", Variant("as", refs)))
        cid = repo.collection_id
        if cid and "ostree.collection-binding" not in keys:
            md.append(("ostree.collection-binding", Variant("s", cid)))
    return md


__all__ = ["commit", "CommitOptions", "CommitModifier", "CommitResult", "TreeSource",
           "EMPTY_DIRTREE"]
