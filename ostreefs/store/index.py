"""The LMDB index beside the objects: derived data that makes the store fast.

Databases:

``catalog``  raw checksum + type byte -> object size (u64 BE)
``commits``  raw commit -> raw parent (or empty) + timestamp (u64 BE)
``children`` raw parent + raw child -> empty
``reflog``   ref + NUL + time_ns (u64 BE) -> raw old + raw new (zeros for none)
``stat``     xxh3-128 of a source file's identity, stat and commit modifiers ->
             raw content checksum + the time it was hashed (u64 BE ns)
``dirs``     "XX" -> mtime_ns of ``objects/XX`` when the catalog last matched it
``inodes``   st_dev + st_ino of a content object file -> raw checksum, so a commit of a
             hardlinked checkout can name each file's object without reading it
``dirheaders`` raw dirtree checksum -> the headers of its files
             (:mod:`ostreefs.store.dirheaders`), so a mount lists a directory without
             opening each file's object (a dirtree's checksum fixes its files'
             headers; fsck drops them all when it finds a damaged file or dirtree)
``treewalks`` raw dirtree checksum -> what a walk of the whole tree below found: how
             often each content object that occurs more than once occurs (a mount's
             st_nlink; u32 BE n, then n pairs of u64 BE key (the checksum's first 8
             bytes) and u32 BE count) and every dirtree in it (raw, breadth first),
             so a mount can ask the disk for them all ahead of a walk
``recorded`` raw dirtree checksum -> empty: a recorder walked the whole tree, so every
             dirtree below it has its ``dirheaders`` record but for those it found
             damaged (:mod:`ostreefs.store.treerecord`); a mount need not start one
             for it again

Whatever drops mount records (a repair, a rebuild, a dirtree gone) counts up a
generation in ``info``; a writer that read objects under an older generation has its
records discarded (they may be from the objects the drop was about).

The objects are the truth. ``sync()`` compares each ``objects/XX`` directory's mtime
with the recorded one and rescans only the directories that changed, which catches a
crash between an object write and its index update as well as ostree writing to the
same repo. The stat cache is only a hint: a hit is used only if the object it names is
on disk, and an entry is trusted only if the file's ctime is safely older than the
moment it was hashed (a file rewritten within one timestamp tick is rehashed).
xxhash keys the cache; object identity is always SHA-256.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lmdb

from ostreefs import _fs
from ostreefs.errors import CorruptObject, MalformedData, StoreError
from ostreefs.store.objects import ObjectType, is_checksum

if TYPE_CHECKING:
    from ostreefs.store.repo import Repo

INDEX_DIR = "ostreefs-index"
SCHEMA = b"1"
_RECORDS_GEN = b"mount-records-generation"
_TYPES = list(ObjectType)
_TYPE_BYTE = {t: bytes([i]) for i, t in enumerate(_TYPES)}
#: A cached hash is trusted only if the file's ctime is this much older than the hash.
RACY_NS = 50_000_000
#: A directory mtime this close to now may still change within the same tick.
DIR_SETTLE_NS = 2_000_000_000


_ENVS: dict[str, Any] = {}
#: The process that opened each environment: LMDB must not be used across a fork.
_ENV_PIDS: dict[str, int] = {}


def _opened_before_fork(path: Path) -> StoreError:
    return StoreError(f"The index in {path} was opened before this process forked, and "
                      "LMDB cannot be used across a fork",
                      hint="open the repository after forking")


def _ino_key(dev: int, ino: int) -> bytes:
    return struct.pack(">QQ", dev, ino)


def _open_env(path: str) -> Any:
    # No fsync of the index: it is derived, and sync() repairs whatever a crash lost.
    return lmdb.open(path, map_size=1 << 34, max_dbs=12, subdir=True, sync=False,
                     metasync=False, lock=True)


def stat_key(st: os.stat_result, modifier_sig: bytes) -> bytes:
    packed = struct.pack(
        "<QQQqqIII", st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
        st.st_mode, st.st_uid, st.st_gid,
    )
    import xxhash  # only commit's stat cache needs it: not loaded by a mount or a read

    return xxhash.xxh3_128_digest(packed + modifier_sig)


class Index:
    """An open index; all methods are safe to call from several processes."""

    def __init__(self, repo: Repo, env: Any) -> None:
        self.repo = repo
        self.env = env
        #: The process that opened it (LMDB must not be used across a fork).
        self.pid = os.getpid()
        self.catalog = env.open_db(b"catalog")
        self.commits = env.open_db(b"commits")
        self.children = env.open_db(b"children")
        self.reflog = env.open_db(b"reflog")
        self.stat = env.open_db(b"stat")
        self.dirs = env.open_db(b"dirs")
        self.info = env.open_db(b"info")
        self.inodes = env.open_db(b"inodes")
        self.dirheaders = env.open_db(b"dirheaders")
        self.treewalks = env.open_db(b"treewalks")
        self.recorded = env.open_db(b"recorded")

    @classmethod
    def open(cls, repo: Repo) -> Index:
        path = repo.path / INDEX_DIR
        try:
            # A symlink may put the index on another disk, but only one of this user's
            # own: LMDB writes (and a repair deletes) where it points, and root must not
            # go where a repository's owner points it.
            if path.is_symlink() and os.lstat(path).st_uid != os.geteuid():
                raise StoreError(f"The index {path} is another user's symlink",
                                 hint="remove it (the index is derived data), or make "
                                      "the link as the user who runs ostreefs")
            path.mkdir(exist_ok=True)
            # LMDB allows one environment per file per process: share it.
            key = str(path.resolve())
            env = _ENVS.get(key)
            if env is None:
                try:
                    env = _open_env(key)
                except (lmdb.CorruptedError, lmdb.InvalidError):
                    # Derived data: a damaged index is thrown away and rebuilt on use.
                    import shutil  # (rarely needed, and a few ms to import)

                    shutil.rmtree(key)
                    os.mkdir(key)
                    env = _open_env(key)
                _ENVS[key] = env
                _ENV_PIDS[key] = os.getpid()
                _fs.hand_to_owner([INDEX_DIR, f"{INDEX_DIR}/data.mdb",
                                   f"{INDEX_DIR}/lock.mdb"], repo.path)
            elif _ENV_PIDS.get(key) != os.getpid():
                raise _opened_before_fork(path)
        except (lmdb.Error, OSError) as e:
            raise StoreError(f"Cannot open the index in {path}: {e}",
                             hint="run 'ostreefs index rebuild'") from None
        idx = cls(repo, env)
        with env.begin(write=True) as txn:
            if txn.get(b"schema", db=idx.info) not in (None, SCHEMA):
                txn.drop(idx.catalog, delete=False)
                txn.drop(idx.commits, delete=False)
                txn.drop(idx.children, delete=False)
                txn.drop(idx.dirs, delete=False)
                txn.drop(idx.stat, delete=False)
                txn.drop(idx.dirheaders, delete=False)
                txn.drop(idx.treewalks, delete=False)
                txn.drop(idx.recorded, delete=False)
                idx._records_dropped(txn)
            txn.put(b"schema", SCHEMA, db=idx.info)
        return idx

    def check_process(self) -> None:
        """Raise if this index was opened by another process (before a fork)."""
        if self.pid != os.getpid():
            raise _opened_before_fork(self.repo.path / INDEX_DIR)

    def close(self) -> None:
        """Environments stay open for the process (see open); nothing to release."""

    # ------------------------------------------------------------ object catalog

    def record_objects(self, written: Iterable[tuple[str, ObjectType, int]]) -> None:
        """Add objects a transaction just made visible (the commit graph included)."""
        with self.env.begin(write=True) as txn:
            for checksum, otype, size in written:
                raw = bytes.fromhex(checksum)
                txn.put(raw + _TYPE_BYTE[otype], struct.pack(">Q", size), db=self.catalog)
                if otype is ObjectType.COMMIT:
                    self._add_commit(txn, checksum)

    def _add_commit(self, txn: Any, checksum: str) -> None:
        try:
            commit = self.repo.load_commit(checksum)
        except (CorruptObject, MalformedData, StoreError):
            return
        raw = bytes.fromhex(checksum)
        parent = bytes.fromhex(commit.parent) if commit.parent else b""
        txn.put(raw, parent + struct.pack(">Q", commit.timestamp), db=self.commits)
        if parent:
            txn.put(parent + raw, b"", db=self.children)

    def _remove(self, txn: Any, raw: bytes, otype: ObjectType) -> None:
        txn.delete(raw + _TYPE_BYTE[otype], db=self.catalog)
        if otype is ObjectType.COMMIT:
            val = txn.get(raw, db=self.commits)
            if val is not None and len(val) == 40:
                txn.delete(val[:32] + raw, db=self.children)
            txn.delete(raw, db=self.commits)

    def sync(self) -> int:
        """Bring the catalog in line with ``objects/``; return how many dirs were rescanned."""
        objdir = self.repo.path / "objects"
        rescanned = 0
        now = time.time_ns()
        with self.env.begin(write=True) as txn:
            for n in range(256):
                sub = f"{n:02x}"
                try:
                    mtime = os.stat(objdir / sub).st_mtime_ns
                except FileNotFoundError:
                    mtime = 0
                old = txn.get(sub.encode(), db=self.dirs)
                if old is not None and int(old) == mtime and mtime != 0:
                    continue
                if old is None and mtime == 0:
                    continue
                self._rescan(txn, sub, objdir / sub)
                rescanned += 1
                settled = now - mtime > DIR_SETTLE_NS
                txn.put(sub.encode(), str(mtime if settled else -1).encode(), db=self.dirs)
        return rescanned

    def _rescan(self, txn: Any, sub: str, path: Path) -> None:
        from ostreefs.store.repo import _parse_object_name

        on_disk: dict[bytes, tuple[str, ObjectType]] = {}
        try:
            names = os.listdir(path)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        for name in names:
            for csum, otype in _parse_object_name(sub, name):
                on_disk[bytes.fromhex(csum) + _TYPE_BYTE[otype]] = (csum, otype)
        first = bytes([int(sub, 16)])
        cur = txn.cursor(db=self.catalog)
        stale = []
        if cur.set_range(first):
            for key in cur.iternext(keys=True, values=False):
                if key[:1] != first:
                    break
                if key not in on_disk:
                    stale.append(key)
        for key in stale:
            self._remove(txn, key[:32], _TYPES[key[32]])
        tree_byte = _TYPE_BYTE[ObjectType.DIR_TREE]
        dropped = False
        for db in (self.dirheaders, self.treewalks):  # records of dirtrees now gone
            cur = txn.cursor(db=db)
            gone = []
            if cur.set_range(first):
                for key in cur.iternext(keys=True, values=False):
                    if key[:1] != first:
                        break
                    if bytes(key) + tree_byte not in on_disk:
                        gone.append(bytes(key))
            for key in gone:
                txn.delete(key, db=db)
            dropped = dropped or bool(gone)
        if dropped:
            # A tree marked recorded may hold the dirtree just dropped, and which
            # trees do is not kept: the marks go (a recorder re-marks a tree cheaply).
            txn.drop(self.recorded, delete=False)
            self._records_dropped(txn)
        for key, (csum, otype) in on_disk.items():
            if txn.get(key, db=self.catalog) is not None:
                continue
            try:
                st = os.lstat(self.repo.object_path(csum, otype))
            except FileNotFoundError:
                continue
            txn.put(key, struct.pack(">Q", st.st_size), db=self.catalog)
            if otype is ObjectType.FILE:
                txn.put(_ino_key(st.st_dev, st.st_ino), key[:32], db=self.inodes)
            if otype is ObjectType.COMMIT:
                self._add_commit(txn, csum)

    def rebuild(self) -> None:
        """Throw the derived data away and recompute it from the objects and reflogs."""
        with self.env.begin(write=True) as txn:
            for db in (self.catalog, self.commits, self.children, self.dirs, self.stat,
                       self.reflog, self.inodes, self.dirheaders, self.treewalks,
                       self.recorded):
                txn.drop(db, delete=False)
            self._records_dropped(txn)
        self.sync()
        self._load_reflogs()

    def _load_reflogs(self) -> None:
        from ostreefs.store.refs import REFLOG_DIR, RefSpec, read_reflog

        base = self.repo.path / REFLOG_DIR / "refs"
        specs: list[RefSpec] = []
        for kind in ("heads", "remotes"):
            root = base / kind
            if not root.is_dir():
                continue
            for dirpath, _d, files in os.walk(root):
                for f in files:
                    rel = str((Path(dirpath) / f).relative_to(root))
                    if kind == "heads":
                        specs.append(RefSpec(rel))
                    else:
                        remote, _, name = rel.partition("/")
                        specs.append(RefSpec(name, remote))
        with self.env.begin(write=True) as txn:
            for spec in specs:
                for e in read_reflog(self.repo, spec):
                    self._put_reflog(txn, str(spec), e.time_ns, e.old, e.new)

    def _put_reflog(self, txn: Any, ref: str, t: int, old: str | None,
                    new: str | None) -> None:
        zero = b"\0" * 32
        txn.put(ref.encode() + b"\0" + struct.pack(">Q", t),
                (bytes.fromhex(old) if old else zero) + (bytes.fromhex(new) if new else zero),
                db=self.reflog)

    def record_ref_move(self, ref: str, old: str | None, new: str | None) -> None:
        with self.env.begin(write=True) as txn:
            self._put_reflog(txn, ref, time.time_ns(), old, new)

    def reflog_entries(self, ref: str) -> list[tuple[int, str | None, str | None]]:
        prefix = ref.encode() + b"\0"
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.reflog)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix) or len(k) != len(prefix) + 8:
                        break
                    old, new = v[:32], v[32:]
                    out.append((struct.unpack(">Q", k[-8:])[0],
                                old.hex() if any(old) else None,
                                new.hex() if any(new) else None))
        return out

    # --------------------------------------------------------------- queries

    def commits_list(self) -> list[str]:
        with self.env.begin() as txn:
            return [k.hex() for k in txn.cursor(db=self.commits).iternext(values=False)]

    def objects(self) -> Iterator[tuple[str, ObjectType, int]]:
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.catalog):
                yield k[:32].hex(), _TYPES[k[32]], struct.unpack(">Q", v)[0]

    def object_count(self) -> int:
        with self.env.begin() as txn:
            return int(txn.stat(self.catalog)["entries"])

    def parent_of(self, commit: str) -> str | None:
        with self.env.begin() as txn:
            v = txn.get(bytes.fromhex(commit), db=self.commits)
        if v is None or len(v) != 40:
            return None
        return bytes(v[:32]).hex()

    def children_of(self, commit: str) -> list[str]:
        raw = bytes.fromhex(commit)
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self.children)
            if cur.set_range(raw):
                for k in cur.iternext(values=False):
                    if k[:32] != raw:
                        break
                    out.append(k[32:].hex())
        return out

    def verify(self) -> list[str]:
        """Differences between the catalog and ``objects/``, as messages (empty: in sync)."""
        on_disk = {(c, t) for c, t in self.repo.iter_objects()}
        indexed = {(c, t) for c, t, _ in self.objects()}
        problems = [f"index lacks {c}.{t.value}" for c, t in sorted(on_disk - indexed,
                                                                     key=str)]
        problems += [f"index lists missing {c}.{t.value}"
                     for c, t in sorted(indexed - on_disk, key=str)]
        return problems

    # ------------------------------------------------------------ object inodes

    def record_inodes(self, items: Iterable[tuple[int, int, str]]) -> None:
        with self.env.begin(write=True) as txn:
            for dev, ino, checksum in items:
                txn.put(_ino_key(dev, ino), bytes.fromhex(checksum), db=self.inodes)

    def object_by_inode(self, dev: int, ino: int) -> str | None:
        """The content object that had this inode when indexed (verify before use)."""
        with self.env.begin() as txn:
            v = txn.get(_ino_key(dev, ino), db=self.inodes)
        return None if v is None or len(v) != 32 else bytes(v).hex()

    # -------------------------------------------------------------- stat cache

    def stat_lookup_many(self, keys: list[bytes]) -> list[tuple[str, int] | None]:
        out: list[tuple[str, int] | None] = []
        with self.env.begin(buffers=False) as txn:
            get = txn.get
            db = self.stat
            for k in keys:
                v = get(k, db=db)
                out.append(None if v is None or len(v) != 40
                           else (v[:32].hex(), struct.unpack(">Q", v[32:])[0]))
        return out

    def stat_store_many(self, items: Iterable[tuple[bytes, str, int]]) -> None:
        with self.env.begin(write=True) as txn:
            put = txn.put
            db = self.stat
            for key, checksum, t in items:
                if is_checksum(checksum):
                    put(key, bytes.fromhex(checksum) + struct.pack(">Q", t), db=db)

    # ----------------------------------------------------- headers by dirtree

    def dir_headers(self, tree: str) -> bytes | None:
        """The packed file headers recorded for a dirtree, if any."""
        with self.env.begin(buffers=False) as txn:
            v: bytes | None = txn.get(bytes.fromhex(tree), db=self.dirheaders)
            return v

    def store_dir_headers(self, items: Iterable[tuple[str, bytes]],
                          generation: int | None = None) -> bool:
        """Write file-header records; with ``generation`` (see
        :meth:`records_generation`), only if no records were dropped since. Whether
        they were written."""
        with self.env.begin(write=True) as txn:
            if not self._same_generation(txn, generation):
                return False
            put = txn.put
            db = self.dirheaders
            for tree, packed in items:
                if is_checksum(tree):
                    put(bytes.fromhex(tree), packed, db=db)
        return True

    def records_generation(self) -> int:
        """How many times mount records have been dropped: read it before reading the
        objects a record is made from, and hand it to the write."""
        with self.env.begin() as txn:
            return self._generation(txn)

    def _generation(self, txn: Any) -> int:
        v = txn.get(_RECORDS_GEN, db=self.info)
        return int.from_bytes(v, "big") if v else 0

    def _same_generation(self, txn: Any, generation: int | None) -> bool:
        return generation is None or self._generation(txn) == generation

    def _records_dropped(self, txn: Any) -> None:
        txn.put(_RECORDS_GEN, (self._generation(txn) + 1).to_bytes(8, "big"), db=self.info)

    def forget_mount_records(self) -> None:
        """Drop every ``dirheaders``, ``treewalks`` and ``recorded`` record (after a
        repair)."""
        with self.env.begin(write=True) as txn:
            txn.drop(self.dirheaders, delete=False)
            txn.drop(self.treewalks, delete=False)
            txn.drop(self.recorded, delete=False)
            self._records_dropped(txn)

    def tree_recorded(self, tree: str) -> bool:
        """Whether the recorder has nothing left to do for this tree."""
        with self.env.begin(buffers=True) as txn:
            return txn.get(bytes.fromhex(tree), db=self.recorded) is not None

    def mark_tree_recorded(self, tree: str, generation: int) -> bool:
        """Mark a tree a recorder walked to the end (its records written under
        ``generation``); whether the mark was set."""
        with self.env.begin(write=True) as txn:
            if not self._same_generation(txn, generation):
                return False
            txn.put(bytes.fromhex(tree), b"", db=self.recorded)
        return True

    def tree_walk(self, tree: str) -> tuple[dict[int, int], list[bytes]] | None:
        """The link counts and dirtrees of a whole tree, as recorded (``treewalks``)."""
        with self.env.begin(buffers=False) as txn:
            v = txn.get(bytes.fromhex(tree), db=self.treewalks)
        if v is None or len(v) < 4:
            return None
        n = int.from_bytes(v[:4], "big")
        end = 4 + 12 * n
        if len(v) < end or (len(v) - end) % 32:
            return None
        counts = dict(struct.iter_unpack(">QI", v[4:end]))
        return counts, [v[i:i + 32] for i in range(end, len(v), 32)]

    def store_tree_walk(self, tree: str, counts: dict[int, int],
                        trees: Sequence[bytes], generation: int | None = None) -> bool:
        """Write a tree's walk record (see :meth:`store_dir_headers` for
        ``generation``); whether it was written."""
        packed = b"".join([len(counts).to_bytes(4, "big"),
                           *(struct.pack(">QI", k, n) for k, n in sorted(counts.items())),
                           *trees])
        with self.env.begin(write=True) as txn:
            if not self._same_generation(txn, generation):
                return False
            txn.put(bytes.fromhex(tree), packed, db=self.treewalks)
        return True

    def sync_to_disk(self) -> None:
        self.env.sync(True)
