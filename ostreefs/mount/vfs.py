"""What a commit looks like as a file system, without FUSE.

:class:`CommitVFS` answers the questions a kernel asks a FUSE driver (lookup, attributes,
directory entries, symlink targets, xattrs, reads) synchronously; ``fuse.py`` is only a
protocol adapter around it. Everything is read from the repository on demand:

* **Inodes are lazy.** The root is inode 1; a directory or file gets an inode when it is
  looked up or listed and loses it when the kernel forgets it, so memory follows what
  the kernel holds, not the size of the commit. Parsed dirtrees and file headers live in
  small LRU caches.
* **Hardlinks as a hardlink checkout shows them.** Files that ``ostree checkout`` would
  hardlink to one object (non-empty regular files; symlinks too in bare mode) share an
  inode number derived from the content checksum, and ``st_nlink`` is the number of
  times the object occurs in the mounted tree plus one: the repository's own link, which
  a fresh hardlink checkout also counts (``ostree checkout -U`` of bare-user or archive,
  plain ``ostree checkout`` of bare as root). Empty files and symlinks that ostree
  copies each get their own inode with ``st_nlink`` 1. The counts come from the index
  when the commit, pull or pull-local that wrote the tree, or an earlier mount,
  recorded them (:mod:`ostreefs.store.treecount`); otherwise from one pass over the
  mounted tree's dirtrees (not its file objects), started on a thread once mounted
  (:meth:`CommitVFS.start`) and waited for on first need. Only counts above one are
  kept. A directory's ``st_nlink`` is 2 plus its subdirectories.
* **Times** are 0 (the epoch), as a hardlink checkout shows files and any checkout shows
  directories. Directories have ``st_size`` 4096 and symlinks the length of their target.
* **Reads** ``pread`` the object file in bare modes, by handle (:meth:`CommitVFS.open`)
  or, when the kernel skips opens, by inode (:meth:`CommitVFS.read_inode`, with the last
  few object files kept open). In archive mode a ``.filez`` is inflated forward; the
  decompressor of the last few files read is kept with its position and with
  checkpoints (copies of the inflate state) every few MiB, so a sequential read never
  restarts at byte 0 and a backward seek restarts at the nearest checkpoint; while a
  file is read in order, the next MiB is inflated on a thread.

A missing or corrupt object is an :class:`~ostreefs.errors.StoreError` (the adapter's
EIO) for that file only: its directory still lists, with placeholder attributes
(``0444``, size 0), and open, read, readlink and getxattr fail.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Generic, TypeVar

from ostreefs.errors import CorruptObject, OstreefsError, StoreError
from ostreefs.mount import layers
from ostreefs.store import dirheaders, treecount
from ostreefs.store import tree as treemod
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import DirTree, FileHeader, ObjectType, Xattrs
from ostreefs.store.repo import Repo

if TYPE_CHECKING:
    import subprocess

    from ostreefs.store.index import Index

log = logging.getLogger("ostreefs.mount")

ROOT_INO = 1
#: Inode numbers of hardlinked (shared) files have this bit set; the others count up.
SHARED_INO_BIT = 1 << 62
DIR_SIZE = 4096
DIRTREE_CACHE = 2048
HEADER_CACHE = 8192
#: Threads that read object files at once where a cold disk, not parsing, is the wait:
#: the file headers of a directory being listed, and the read-ahead of dirtrees.
IO_THREADS = 4
#: Work items per thread task (a task per item would cost more than the item).
IO_BATCH = 64
ZSTREAM_CACHE = 8
#: Object files kept open for reads that come without an open handle (see read_inode).
OBJFD_CACHE = 64
ZOUT_CHUNK = 1024 * 1024
#: Compressed input read at once: at most ZIN_CHUNK, and about what the output asked for
#: (plus ZIN_SLACK for block headers), so the input left over is never much to copy.
ZIN_CHUNK = 1 << 20
ZIN_SLACK = 16 << 10
#: How far ahead of the inflater the compressed input is asked for (WILLNEED), so the
#: disk reads while we inflate instead of each read waiting for the one before.
ZPREFETCH = 16 << 20
#: Output inflated ahead of a sequential reader, on a pool thread.
ZAHEAD = 1 << 20
ZCHECKPOINT_MIN = 8 << 20
#: Directories whose file headers are written to the index at once.
HEADER_RECORD_BATCH = 256
#: Directories listed without recorded headers before a recorder process is started.
RECORDER_AFTER = 3
#: Directories listed before the dirtrees a walk will read are asked of the disk (when
#: the link counts came from the index): a look lists one or two, and the read-ahead's
#: ~2,000 reads queued ahead of the look's own cost it ~10-40 ms on a cold disk.
READAHEAD_AFTER = 3
#: Seconds an unmount waits for the index (to write what it recorded), at most.
INDEX_WAIT = 5.0


class MountError(OstreefsError):
    """{0}"""


class NoSuchEntry(MountError):
    """No such file or directory: {0}"""


class NotADir(MountError):
    """Not a directory: inode {0}"""


class NotASymlink(MountError):
    """Not a symbolic link: inode {0}"""


class IsADir(MountError):
    """Is a directory: inode {0}"""


class NoSuchXattr(MountError):
    """No extended attribute {0!r}"""


class BadHandle(MountError):
    """Unknown handle {0}"""


class Attrs:
    """What ``stat`` shows of one entry. Made once per entry a walk meets and never
    changed after (a plain class: a frozen dataclass's __init__ costs five times as
    much, a microsecond per entry of a first walk)."""

    __slots__ = ("ino", "mode", "nlink", "uid", "gid", "size", "mtime_ns", "volatile")

    def __init__(self, ino: int, mode: int, nlink: int, uid: int, gid: int, size: int,
                 mtime_ns: int = 0, volatile: bool = False) -> None:
        self.ino = ino
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.size = size
        self.mtime_ns = mtime_ns
        #: The object behind this entry could not be read: the kernel must not cache
        #: these placeholder attributes, so its next stat or open comes back to us (and
        #: gets EIO).
        self.volatile = volatile

    def __repr__(self) -> str:
        return "Attrs(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        v = self._d.get(key)
        if v is not None:
            self._d.move_to_end(key)
        return v

    def put(self, key: K, value: V) -> V | None:
        """Store; return the entry evicted to make room, if any."""
        self._d[key] = value
        self._d.move_to_end(key)
        if len(self._d) > self.size:
            return self._d.popitem(last=False)[1]
        return None

    def pop(self, key: K) -> V | None:
        return self._d.pop(key, None)

    def put_missing(self, items: Iterable[tuple[K, V]]) -> None:
        """Store each (key, value) whose key is absent (and mark present ones used),
        then evict down to size once: a whole directory's entries at the cost of one
        dict operation each."""
        d = self._d
        for k, v in items:
            if k in d:
                d.move_to_end(k)
            else:
                d[k] = v
        while len(d) > self.size:
            d.popitem(last=False)

    def values(self) -> list[V]:
        return list(self._d.values())

    def clear(self) -> None:
        self._d.clear()


class _Dir:
    """A parsed dirtree: entries in dirtree order (files, then directories) by name."""

    __slots__ = ("entries", "index", "ndirs", "tree", "recorded")

    def __init__(self, t: DirTree, tree: str = "") -> None:
        #: (name, is_dir, checksum, dirmeta checksum or "")
        self.entries: list[tuple[str, bool, str, str]] = (
            [(n, False, c, "") for n, c in t.files] + [(n, True, c, m) for n, c, m in t.dirs])
        self.index = {e[0]: i for i, e in enumerate(self.entries)}
        self.ndirs = len(t.dirs)
        #: The dirtree checksum this directory is, if it is one (its files' headers may
        #: then be in the index); "" for a made-up directory.
        self.tree = tree
        #: Whether the files' headers came from the index, or were offered to it.
        self.recorded = False

    @classmethod
    def of(cls, files: list[tuple[str, str]], dirs: list[tuple[str, str, str]]) -> _Dir:
        """A made-up directory: files (name, checksum), dirs (name, key, meta key)."""
        d = cls(DirTree())
        d.entries = [(n, False, c, "") for n, c in files] + [(n, True, c, m)
                                                            for n, c, m in dirs]
        d.index = {e[0]: i for i, e in enumerate(d.entries)}
        d.ndirs = len(dirs)
        return d


class _Node:
    """A live inode: a directory (tree + meta) or a file (content checksum)."""

    __slots__ = ("ino", "is_dir", "checksum", "meta", "nlookup", "key", "attrs")

    def __init__(self, ino: int, is_dir: bool, checksum: str, meta: str,
                 key: tuple[int, str] | None) -> None:
        self.ino = ino
        self.is_dir = is_dir
        self.checksum = checksum
        self.meta = meta
        self.nlookup = 0
        self.key = key  # (parent ino, name) for per-path inodes, None for shared ones
        #: Computed once: a directory's link count costs a dirtree parse, and the kernel
        #: asks again (opendir, getattr) long after the parse left the LRU.
        self.attrs: Attrs | None = None


class _Header:
    """A file's header and size, or the error loading it raised."""

    __slots__ = ("header", "size", "error")

    def __init__(self, header: FileHeader | None, size: int,
                 error: StoreError | None = None) -> None:
        self.header = header
        self.size = size
        self.error = error


class CommitVFS:
    """A read-only view of one commit (or a subdirectory of it); see the module doc.

    Args:
        repo: the open repository.
        commit: a commit checksum.
        subpath: the directory of the commit to show as the root.
        uid: if set, shown as the owner of everything (``-o uid=``).
        gid: if set, shown as the group of everything (``-o gid=``).
    """

    #: Whether what this view shows never changes (so absent names may be cached too).
    immutable = True

    def __init__(self, repo: Repo, commit: str, subpath: str = "/", *,
                 uid: int | None = None, gid: int | None = None) -> None:
        root = treemod.lookup(repo, commit, subpath)
        if not root.is_dir:
            raise treemod.NotADirectory(subpath)
        self._setup(repo, commit, root.checksum, root.meta_checksum, uid, gid)

    def _setup(self, repo: Repo, commit: str, root_key: str, root_meta: str,
               uid: int | None, gid: int | None) -> None:
        self.repo = repo
        self.commit = commit
        #: For a process of another working directory (the recorder).
        self._repo_path = os.path.abspath(repo.path)
        self._uid = uid
        self._gid = gid
        self._nodes: dict[int, _Node] = {}
        self._by_path: dict[tuple[int, str], int] = {}
        self._next_ino = ROOT_INO + 1
        node = _Node(ROOT_INO, True, root_key, root_meta, None)
        node.nlookup = 1  # the kernel never forgets the root
        self._nodes[ROOT_INO] = node
        self._dirs: _LRU[str, _Dir] = _LRU(DIRTREE_CACHE)
        self._headers: _LRU[str, _Header] = _LRU(HEADER_CACHE)
        self._dirmeta: _LRU[str, tuple[int, int, int, Xattrs]] = _LRU(DIRTREE_CACHE)
        self._counts: dict[int, int] | None = None
        self._starter: threading.Thread | None = None
        self._count_errors = 0  # dirtrees the pass could not read: counts not recorded
        self._walked: list[bytes] = []  # dirtrees the pass read, for the record
        #: What the count pass found, for flush_headers to record.
        self._walk_record: tuple[dict[int, int], list[bytes]] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._handles: dict[int, _Open] = {}
        self._next_fh = 1
        self._hindex: Index | None = None
        self._index_ready = threading.Event()  # _hindex is settled (open, or None)
        self._index_in_background = False  # start() opens it on its thread
        self._counting = False  # start() runs the count pass (or takes the record)
        self._counts_ready = threading.Event()
        self._writer: ThreadPoolExecutor | None = None  # index writes (flush_headers)
        self._hpending: list[tuple[str, bytes]] = []
        #: The index's records generation when it was opened (-1 once it moved on).
        self._records_gen = -1
        self._zstreams: _LRU[str, _ZStream] = _LRU(ZSTREAM_CACHE)
        self._objfds: _LRU[str, _Open] = _LRU(OBJFD_CACHE)
        self._reported: set[str] = set()
        #: The recorder process, while there is one; none is started once closed.
        self._recorder: subprocess.Popen[bytes] | None = None
        self._recorder_lock = threading.Lock()
        self._recorder_wanted = False  # the index lacks records of this tree
        self._unrecorded = 0  # directories listed without a record
        self._listed = 0  # directories listed (from their start): does a walk show?
        self._ahead: list[bytes] | None = None  # to read ahead once a walk shows
        self._closed = False

    # ------------------------------------------------------------------ objects

    def _dir(self, tree: str) -> _Dir:
        d = self._dirs.get(tree)
        if d is None:
            d = self._load_dir(tree)
            self._dirs.put(tree, d)
        return d

    def _load_dir(self, key: str) -> _Dir:
        """The directory a node's key names (here always a dirtree checksum)."""
        return _Dir(self.repo.load_dirtree(key), key)

    def _meta(self, meta: str) -> tuple[int, int, int, Xattrs]:
        m = self._dirmeta.get(meta)
        if m is None:
            m = self._load_meta(meta)
            self._dirmeta.put(meta, m)
        return m

    def _load_meta(self, meta: str) -> tuple[int, int, int, Xattrs]:
        dm = self.repo.load_dirmeta(meta)
        return (dm.uid, dm.gid, dm.mode, dm.xattrs)

    def _header(self, checksum: str) -> _Header:
        h = self._headers.get(checksum)
        if h is None:
            h = self._read_header(checksum)
            if h.error is not None:
                # Not cached: the object may come back (a repair), and then so does
                # the file.
                self._report(checksum, h.error)
                return h
            self._headers.put(checksum, h)
        return h

    def _read_header(self, checksum: str) -> _Header:
        """Load a header (no cache, no report: it may run on a pool thread)."""
        try:
            header, size = self.repo.load_file_header(checksum)
        except StoreError as e:
            return _Header(None, 0, e)
        return _Header(header, 0 if header.is_symlink else size)

    def _report(self, checksum: str, e: Exception) -> None:
        self.report(e)

    def report(self, e: Exception) -> None:
        """Log a failure once (a damaged object is named once, not on every read)."""
        msg = str(e)
        if msg not in self._reported:
            if len(self._reported) > 10000:
                self._reported.clear()
            self._reported.add(msg)
            log.error("%s", msg)

    def _linkable(self, h: _Header) -> bool:
        """Whether ostree's checkout would hardlink this object (see the module doc)."""
        if h.header is None:
            return False
        if h.header.is_symlink:
            return self.repo.mode is RepoMode.BARE
        return h.size > 0

    def _link_count(self, checksum: str) -> int:
        if self._counts is None:
            if self._counting:
                self._counts_ready.wait()
            if self._counts is None:  # no background pass, or it failed
                self._counts = self._count_objects()
        return self._counts.get(int(checksum[:16], 16), 1)

    #: Whether the hardlink counts may be computed on a thread of their own.
    _count_in_background = True

    def start(self) -> None:
        """Open the index and begin the hardlink-count pass in the background; call it
        in the process that serves, once mounted. The first stat of a file needs the
        counts, and a user's first look is a few directory lookups away from one: those
        overlap the pass. Opening the index may wait for LMDB's writer lock (another
        process may hold it for long); requests do not wait with it."""
        if self._starter is not None:
            return
        self._counting = self._count_in_background and self._counts is None
        self._index_in_background = True
        self._starter = threading.Thread(target=self._background, daemon=True,
                                         name="ostreefs-start")
        self._starter.start()

    def _background(self) -> None:
        try:
            self._open_index()
            if not self._counting:
                return
            self._want_recorder()
            walk = self._recorded_walk()
            if walk is None:
                self._count_background()
            else:  # counted before: only ask the disk for the dirtrees a walk will read
                self._counts, trees = walk
                self._counts_ready.set()
                with self._recorder_lock:
                    if self._closed:
                        return
                    if self._listed < READAHEAD_AFTER:
                        self._ahead = trees  # for the listing that shows a walk
                        return
                self._read_ahead(trees)
        finally:
            self._counts_ready.set()

    def _walk_shows(self) -> None:
        """A walk has begun: read ahead the dirtrees it will want, if they wait for it."""
        with self._recorder_lock:  # (close() drops them: a closed view reads nothing)
            trees, self._ahead = self._ahead, None
        if trees:
            threading.Thread(target=self._read_ahead, args=(trees,), daemon=True,
                             name="ostreefs-readahead").start()

    def _want_recorder(self) -> None:
        """Settle whether the tree's file headers are to be recorded by a process of its own
        (see :mod:`ostreefs.mount.recorder`): not if the index has them all."""
        idx = self._hindex
        try:
            wanted = idx is not None and not idx.tree_recorded(self._nodes[ROOT_INO].checksum)
        except Exception:  # noqa: BLE001 - derived data: a mount works without it
            wanted = False
        with self._recorder_lock:
            self._recorder_wanted = wanted
        self._maybe_record()

    def _maybe_record(self) -> None:
        """Start the recorder once it is wanted and a walk shows: a look at a few files
        and a directory gains nothing from it, and should not share the disk with it."""
        with self._recorder_lock:
            if (not self._recorder_wanted or self._unrecorded < RECORDER_AFTER
                    or self._closed):
                return
            self._recorder_wanted = False  # one per mount
        threading.Thread(target=self._spawn_recorder, daemon=True,
                         name="ostreefs-recorder").start()

    def _spawn_recorder(self) -> None:
        """Start the recorder, then wait for it (on this thread of its own), so that
        one that has finished is not left a zombie for the rest of the mount."""
        from ostreefs.mount import recorder

        with self._recorder_lock:
            if self._closed:
                return
            proc = self._recorder = recorder.spawn(self._repo_path,
                                                   self._nodes[ROOT_INO].checksum)
        if proc is not None:
            log.debug("the recorder ended with status %s", proc.wait())

    def _recorded_walk(self) -> tuple[dict[int, int], list[bytes]] | None:
        """What the index recorded of the mounted tree by an earlier pass."""
        idx = self._hindex
        if idx is None:
            return None
        try:
            return idx.tree_walk(self._nodes[ROOT_INO].checksum)
        except Exception:  # noqa: BLE001 - derived data: count again instead
            return None

    def _count_background(self) -> None:
        try:
            counts = self._count_objects()
        except Exception:  # noqa: BLE001 - the pass is redone, and reported, on demand
            return
        self._counts = counts
        if self._count_errors == 0:
            # A tree never changes: the next mount of it skips the pass. Handed to
            # flush_headers, which writes it with the headers.
            self._walk_record = (counts, self._walked)
        self._walked = []

    def _read_ahead(self, trees: list[bytes]) -> None:
        """Ask the disk for dirtrees a walk will want one at a time, a few threads at
        once (what the count pass did as a side effect, without the parsing)."""
        pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ostreefs-readahead")
        try:
            list(pool.map(self._advise_trees,
                          [trees[i:i + IO_BATCH] for i in range(0, len(trees), IO_BATCH)]))
        finally:
            pool.shutdown(wait=False)

    def _advise_trees(self, trees: list[bytes]) -> None:
        path = self.repo.object_path_str
        for raw in trees:
            try:
                fd = os.open(path(raw.hex(), ObjectType.DIR_TREE), os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # a missing dirtree is reported when a walk reaches it
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def _io_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ostreefs-io")
        return self._pool

    def _count_objects(self) -> dict[int, int]:
        """How often each content object occurs in the mounted tree (only counts > 1);
        what the pass could not read is reported and leaves the counts unrecorded."""
        tc = treecount.count_tree(self.repo, self._nodes[ROOT_INO].checksum,
                                  on_error=self._report)
        self._count_errors = tc.errors
        self._walked = tc.trees
        return tc.counts

    def _prefetch_headers(self, d: _Dir) -> None:
        """Load the file headers of a directory about to be listed, a few threads at a
        time (cold, each is a wait on the disk), into the header cache."""
        todo = [c for _n, is_dir, c, _m in d.entries
                if not is_dir and self._headers.get(c) is None][:HEADER_CACHE // 2]
        if len(todo) < 2 * IO_BATCH // 4:
            return
        todo = list(dict.fromkeys(todo))
        n = max(1, min(IO_THREADS, len(todo) // (IO_BATCH // 4)))
        batches = [todo[i::n] for i in range(n)]
        for batch, got in zip(batches, self._io_pool().map(self._load_headers, batches),
                              strict=True):
            for c, h in zip(batch, got, strict=True):
                if h.error is None:  # a failure is reported when the file is used
                    self._headers.put(c, h)

    def _index(self) -> Index | None:
        """The repository's index; None where it cannot be or should not be used (a
        read-only repository, an index opened before the daemon forked, or one this
        user does not own: root mounting a user's repository must not leave root-owned
        index files there), and while start()'s thread is still opening it. It is
        only a shortcut."""
        if not self._index_ready.is_set():
            if self._index_in_background:
                return None
            self._open_index()
        return self._hindex

    def _open_index(self) -> None:
        try:
            if self._owns_index():
                idx = self.repo.index
                # Headers read from now on may be recorded, unless records are
                # dropped meanwhile (see Index.records_generation).
                self._records_gen = idx.records_generation()
                self._hindex = idx
        except Exception:  # noqa: BLE001 - derived data: without it, read objects
            self._hindex = None
        finally:
            self._index_ready.set()

    def _owns_index(self) -> bool:
        from ostreefs.store.index import INDEX_DIR

        try:
            st = os.stat(self.repo.path / INDEX_DIR)
        except FileNotFoundError:
            st = os.stat(self.repo.path)  # it would be created: whose repository is it?
        return st.st_uid == os.geteuid()

    def _recorded_headers(self, d: _Dir) -> bool:
        """Put the headers of a directory's files, as the index recorded them for its
        dirtree, into the header cache; whether it had them."""
        # (Asked again on every whole listing: the headers may have left the cache
        # since the last one, which the kernel's listing cache makes rare.)
        if not d.tree or (idx := self._index()) is None:
            return False
        try:
            raw = idx.dir_headers(d.tree)
        except Exception:  # noqa: BLE001 - derived data: read the objects instead
            return False
        if raw is None:
            return False
        files = [c for _n, is_dir, c, _m in d.entries if not is_dir]
        got = dirheaders.unpack(raw, len(files))
        if got is None:
            return False
        self._headers.put_missing(
            (c, _Header(h, 0 if h.is_symlink else size))
            for c, (h, size) in zip(files, got, strict=True))
        d.recorded = True
        return True

    def _record_headers(self, d: _Dir) -> None:
        """After a whole listing: offer its files' headers to the index (in batches)."""
        if d.recorded or not d.tree or (self._index_ready.is_set() and self._hindex is None):
            return
        d.recorded = True
        headers = []
        for _n, is_dir, c, _m in d.entries:
            if not is_dir:
                h = self._headers.get(c)
                if h is None or h.header is None:
                    return  # evicted already (a huge directory), or damaged
                headers.append((h.header, h.size))
        self._hpending.append((d.tree, dirheaders.pack(headers)))
        if len(self._hpending) >= HEADER_RECORD_BATCH:
            self.flush_headers()

    def flush_headers(self, final: bool = False) -> Future[None] | None:
        """Write what was gathered for the index so far: file headers, and the count
        pass's record once it has finished. Only from the serving thread. The last
        flush (``final``) waits a while for the index to be open."""
        if final:
            self._index_ready.wait(INDEX_WAIT)
        idx = self._index()
        if idx is None:
            if (not self._index_ready.is_set() and not final
                    and len(self._hpending) < 16 * HEADER_RECORD_BATCH):
                return None  # not open yet: keep what is pending for the next flush
            self._hpending, self._walk_record = [], None
            return None
        pending, self._hpending = self._hpending, []
        walk = self._walk_record  # set once, by the count thread: take it if it is there
        if walk is not None:
            self._walk_record = None
        if not pending and not walk:
            return None
        # Written by a thread of their own: a write waits for LMDB's writer lock,
        # which another process may hold for long, and requests must not wait. One
        # thread, so only it ever takes that lock here.
        if self._writer is None:
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="ostreefs-index")
        return self._writer.submit(self._store, idx, pending, walk)

    def _store(self, idx: Index, pending: list[tuple[str, bytes]],
               walk: tuple[dict[int, int], list[bytes]] | None) -> None:
        try:
            gen = self._records_gen
            if pending and not idx.store_dir_headers(pending, gen):
                self._records_gen = -1  # records were dropped: none from this mount
            if walk and not idx.store_tree_walk(self._nodes[ROOT_INO].checksum, *walk,
                                                generation=gen):
                self._records_gen = -1
        except Exception:  # noqa: BLE001 - e.g. a read-only repository: records are
            pass  # only a shortcut

    def _load_headers(self, checksums: list[str]) -> list[_Header]:
        return [self._read_header(c) for c in checksums]

    # ------------------------------------------------------------------- inodes

    def _node(self, ino: int) -> _Node:
        node = self._nodes.get(ino)
        if node is None:
            raise NoSuchEntry(f"inode {ino}")
        return node

    def _child(self, parent: int, name: str, is_dir: bool, checksum: str,
               meta: str) -> _Node:
        """The node of one entry of a directory, made if the kernel does not hold it."""
        if not is_dir and self._linkable(self._header(checksum)):
            ino = SHARED_INO_BIT | int(checksum[:15], 16)
            node = self._nodes.get(ino)
            if node is None:
                node = self._nodes[ino] = _Node(ino, False, checksum, "", None)
            return node
        key = (parent, name)
        ino = self._by_path.get(key, 0)
        if ino:
            return self._nodes[ino]
        ino = self._next_ino
        self._next_ino += 1
        node = self._nodes[ino] = _Node(ino, is_dir, checksum, meta, key)
        self._by_path[key] = ino
        return node

    def ref(self, ino: int) -> None:
        """Count one more kernel reference (each lookup reply and readdirplus entry)."""
        self._node(ino).nlookup += 1

    def forget(self, ino: int, n: int) -> None:
        """Drop ``n`` kernel references; the inode goes when none remain."""
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.nlookup -= n
        if node.nlookup <= 0:
            del self._nodes[ino]
            if node.key is not None:
                self._by_path.pop(node.key, None)

    @property
    def live_inodes(self) -> int:
        return len(self._nodes)

    # ------------------------------------------------------------------ queries

    def attrs(self, ino: int) -> Attrs:
        return self._attrs(self._node(ino))

    def _attrs(self, node: _Node, strict: bool = True) -> Attrs:
        """Attributes of a node; a missing or corrupt object raises (EIO) when ``strict``,
        else (for directory listings, which must not fail whole) gives a volatile
        placeholder."""
        if node.attrs is not None:
            return node.attrs
        a = self._compute_attrs(node, strict)
        if not a.volatile:
            node.attrs = a
        return a

    def _compute_attrs(self, node: _Node, strict: bool) -> Attrs:
        if node.is_dir:
            uid, gid, mode, _x = self._meta(node.meta)
            nlink = 2 + self._dir(node.checksum).ndirs
            return Attrs(node.ino, mode, nlink, self._uid if self._uid is not None else uid,
                         self._gid if self._gid is not None else gid, DIR_SIZE)
        h = self._header(node.checksum)
        if h.header is None:
            if strict and h.error is not None:
                raise h.error
            return Attrs(node.ino, stat.S_IFREG, 1, self._uid or 0, self._gid or 0, 0,
                         volatile=True)
        hd = h.header
        if hd.is_symlink:
            size = len(hd.symlink_target.encode("utf-8", "surrogateescape"))
        else:
            size = h.size
        nlink = self._link_count(node.checksum) + 1 if node.key is None else 1
        return Attrs(node.ino, hd.mode, nlink,
                     self._uid if self._uid is not None else hd.uid,
                     self._gid if self._gid is not None else hd.gid, size)

    def lookup(self, parent: int, name: str) -> Attrs:
        """The entry ``name`` of directory ``parent``; counts a kernel reference."""
        pnode = self._node(parent)
        if not pnode.is_dir:
            raise NotADir(parent)
        d = self._dir(pnode.checksum)
        i = d.index.get(name)
        if i is None:
            raise NoSuchEntry(name)
        n, is_dir, c, m = d.entries[i]
        node = self._child(parent, n, is_dir, c, m)
        a = self._attrs(node)
        node.nlookup += 1
        return a

    def entries(self, ino: int, start: int = 0) -> Iterator[tuple[int, str, Attrs]]:
        """A directory's entries from offset ``start``: (next offset, name, attrs).

        Offsets are positions in the dirtree, which never changes, so they stay valid
        across calls. No reference is counted: call :meth:`ref` for each entry the
        kernel accepted.
        """
        node = self._node(ino)
        if not node.is_dir:
            raise NotADir(ino)
        d = self._dir(node.checksum)
        if start == 0:
            self._listed += 1
            if self._listed == READAHEAD_AFTER:
                self._walk_shows()
        if start == 0 and not self._recorded_headers(d):
            self._prefetch_headers(d)
            if d.tree:
                self._unrecorded += 1
                if self._unrecorded == RECORDER_AFTER:
                    self._maybe_record()
        entries = d.entries
        for i in range(start, len(entries)):
            n, is_dir, c, m = entries[i]
            child = self._child(ino, n, is_dir, c, m)
            a = child.attrs
            yield i + 1, n, a if a is not None else self._attrs(child, strict=False)
        self._record_headers(d)

    def readlink(self, ino: int) -> str:
        node = self._node(ino)
        if node.is_dir:
            raise NotASymlink(ino)
        h = self._header(node.checksum)
        if h.error is not None:
            raise h.error
        assert h.header is not None
        if not h.header.is_symlink:
            raise NotASymlink(ino)
        return h.header.symlink_target

    def xattrs(self, ino: int) -> Xattrs:
        node = self._node(ino)
        if node.is_dir:
            return self._meta(node.meta)[3]
        h = self._header(node.checksum)
        if h.error is not None:
            raise h.error
        assert h.header is not None
        return h.header.xattrs

    def getxattr(self, ino: int, name: bytes) -> bytes:
        for n, v in self.xattrs(ino):
            if n == name:
                return v
        raise NoSuchXattr(name.decode("utf-8", "replace"))

    def listxattr(self, ino: int) -> list[bytes]:
        return [n for n, _v in self.xattrs(ino)]

    # -------------------------------------------------------------------- reads

    def open(self, ino: int) -> int:
        """Open a regular file for reading; returns a handle for :meth:`read`."""
        handle = self._open_object(self._node(ino))
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return fh

    def _open_object(self, node: _Node) -> _Open:
        ino = node.ino
        if node.is_dir:
            raise IsADir(ino)
        a = self._attrs(node)  # a file's attributes are its header's (raises its error)
        if stat.S_ISLNK(a.mode):
            raise NoSuchEntry(f"inode {ino} is a symlink")
        if self.repo.mode.is_archive:
            handle = _Open(node.checksum, -1, a.size)
        else:
            path = self.repo.object_path_str(node.checksum, ObjectType.FILE)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                err = StoreError(f"Cannot open object {node.checksum}: {e.strerror}")
                self._report(node.checksum, err)
                raise err from None
            handle = _Open(node.checksum, fd, a.size)
        return handle

    def read(self, fh: int, offset: int, size: int) -> bytes | memoryview:
        handle = self._handles.get(fh)
        if handle is None:
            raise BadHandle(fh)
        return self._read(handle, offset, size)

    def read_inode(self, ino: int, offset: int, size: int) -> bytes | memoryview:
        """Read a file the kernel did not open with us (it skips opens once ``open``
        answers ENOSYS): the object files of the last few files read stay open here."""
        node = self._node(ino)
        handle = self._objfds.get(node.checksum)
        if handle is None:
            handle = self._open_object(node)
            evicted = self._objfds.put(node.checksum, handle)
            if evicted is not None and evicted.fd >= 0:
                os.close(evicted.fd)
        return self._read(handle, offset, size)

    def _read(self, handle: _Open, offset: int, size: int) -> bytes | memoryview:
        if offset >= handle.size or size <= 0:
            return b""
        size = min(size, handle.size - offset)
        if handle.fd >= 0:
            try:
                return os.pread(handle.fd, size, offset)
            except OSError as e:
                err = StoreError(f"Cannot read object {handle.checksum}: {e.strerror}")
                self._report(handle.checksum, err)
                raise err from None
        z = self._zstreams.get(handle.checksum)
        if z is None:
            z = _ZStream(self.repo.object_path_str(handle.checksum, ObjectType.FILE),
                         handle.checksum, handle.size, self._io_pool())
            evicted = self._zstreams.put(handle.checksum, z)
            if evicted is not None:
                evicted.close()
        try:
            return z.read(offset, size)
        except StoreError as e:
            self._report(handle.checksum, e)
            self._zstreams.pop(handle.checksum)
            z.close()
            raise

    def release(self, fh: int) -> None:
        handle = self._handles.pop(fh, None)
        if handle is not None and handle.fd >= 0:
            os.close(handle.fd)

    def close(self) -> None:
        """Close every open object file and record what is pending (at unmount)."""
        with self._recorder_lock:
            self._closed = True
            self._ahead = None
            if self._recorder is not None:
                from ostreefs.mount import recorder

                recorder.stop(self._recorder)
                self._recorder = None
        last = self.flush_headers(final=True)
        if self._writer is not None:
            self._writer.shutdown(wait=False)
            self._writer = None
            if last is not None:
                try:  # a while, not forever: another process may hold the lock
                    last.result(timeout=INDEX_WAIT)
                except Exception:  # noqa: BLE001 - records are only a shortcut
                    pass
        for fh in list(self._handles):
            self.release(fh)
        for h in self._objfds.values():
            if h.fd >= 0:
                os.close(h.fd)
        self._objfds.clear()
        for z in self._zstreams.values():
            z.close()
        self._zstreams.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=False)


class _Open:
    __slots__ = ("checksum", "fd", "size")

    def __init__(self, checksum: str, fd: int, size: int) -> None:
        self.checksum = checksum
        self.fd = fd
        self.size = size


class _ZStream:
    """Random access into one ``.filez`` payload (raw deflate after the header).

    Keeps the inflate state at its current position, the last chunk produced (reads
    that step back a little, as readahead does, are served from it) and checkpoints
    (copies of the inflate state) every ``interval`` bytes of output. While reads are
    sequential, the next ``ZAHEAD`` bytes are inflated on ``pool`` as the current ones
    are served (reading and inflating release the GIL): the disk, zlib and the FUSE
    replies overlap instead of taking turns. Only that one task touches the inflate
    state while it runs; every read that needs the state waits for it first.
    """

    def __init__(self, path: str, checksum: str, size: int,
                 pool: ThreadPoolExecutor | None = None) -> None:
        self.path = path
        self.checksum = checksum
        self.size = size
        self.interval = max(ZCHECKPOINT_MIN, size // 32)
        self._fd = -1
        self._start = -1  # file offset of the compressed payload
        #: (output offset, file offset, inflate state, unconsumed input)
        self._checkpoints: list[tuple[int, int, zlib._Decompress, bytes]] = []
        self._d: zlib._Decompress | None = None
        self._fpos = 0
        self._prefetched = 0  # compressed input asked for up to here
        self._tail = b""
        self._upos = 0
        self._buf = b""
        self._buf_start = 0
        self._pool = pool
        self._ahead: Future[bytes] | None = None
        self._last_end = 0  # where the previous read ended

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.cancel() or self._ahead.exception()  # wait: it uses the fd
            self._ahead = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _corrupt(self, why: str) -> CorruptObject:
        return CorruptObject(self.checksum, "file", why)

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._corrupt("object file is missing") from None
        except OSError as e:
            raise StoreError(f"Cannot open object {self.checksum}: {e.strerror}") from None
        head = os.pread(self._fd, 8, 0)
        if len(head) < 8:
            raise self._corrupt("truncated archive header")
        self._start = 8 + int.from_bytes(head[:4], "big")
        self._rewind()

    def _rewind(self) -> None:
        self._d = zlib.decompressobj(-15)
        self._fpos = self._start
        self._tail = b""
        self._upos = 0
        self._buf = b""
        self._buf_start = 0

    def _restore(self, target: int, forward_only: bool = False) -> None:
        """Go to the last checkpoint at or before ``target`` (or the start).

        With ``forward_only``, only if that checkpoint is ahead of the current position.
        """
        best = None
        for cp in self._checkpoints:
            if cp[0] <= target:
                best = cp
        if forward_only and (best is None or best[0] <= self._upos):
            return
        if best is None:
            self._rewind()
            return
        upos, fpos, state, tail = best
        self._d = state.copy()
        self._fpos, self._tail, self._upos = fpos, tail, upos
        self._buf, self._buf_start = b"", upos

    def _next_chunk(self, limit: int) -> bytes:
        """Inflate up to ``limit`` (> 0) more bytes of output; b"" at the end of the
        stream. Asking for just what a read needs lets a read be one inflate call whose
        output is returned as it is, without joining or slicing copies."""
        d = self._d
        assert d is not None
        if (self._upos // self.interval > len(self._checkpoints)
                and self._upos < self.size):
            self._checkpoints.append((self._upos, self._fpos, d.copy(), self._tail))
        while True:
            inp = self._tail
            # No input left, or only a leftover (the slack a previous call read beyond
            # what it inflated): read on. Inflating a leftover alone would give a few
            # KiB, and every read after it would have to join pieces.
            if len(inp) < ZIN_SLACK and not d.eof:
                if self._fpos + ZPREFETCH // 2 > self._prefetched:
                    self._prefetched = max(self._prefetched, self._fpos) + ZPREFETCH
                    try:
                        os.posix_fadvise(self._fd, self._prefetched - ZPREFETCH,
                                         ZPREFETCH, os.POSIX_FADV_WILLNEED)
                    except OSError:
                        pass  # only a hint
                try:
                    more = os.pread(self._fd, min(ZIN_CHUNK, limit + ZIN_SLACK),
                                    self._fpos)
                except OSError as e:
                    raise StoreError(f"Cannot read object {self.checksum}: "
                                     f"{e.strerror}") from None
                self._fpos += len(more)
                inp = inp + more if inp else more
            if not inp:
                return b""
            try:
                out = d.decompress(inp, min(limit, ZOUT_CHUNK))
            except zlib.error as e:
                raise self._corrupt(f"bad compressed data: {e}") from None
            self._tail = d.unconsumed_tail
            if out:
                return out

    def _advance(self, chunk: bytes) -> None:
        if not chunk:
            raise self._corrupt(f"stream ends at {self._upos} of {self.size} bytes")
        self._upos += len(chunk)
        if self._upos > self.size:
            raise self._corrupt("stream is longer than the header says")

    def _settle(self, keep_from: int) -> None:
        """Take the read-ahead's output (waiting for it): it continues ``_buf``, whose
        bytes from ``keep_from`` on stay."""
        fut, self._ahead = self._ahead, None
        if fut is None:
            return
        try:
            chunk = fut.result()
        except StoreError:
            # Data ahead of what was asked for is bad, or could not be read: go back
            # and let this read inflate (and fail) only for what it needs itself.
            self._restore(keep_from)
            return
        start = self._upos
        self._advance(chunk)
        if self._buf_start <= keep_from < start:
            self._buf = self._buf[keep_from - self._buf_start:] + chunk
            self._buf_start = keep_from
        else:
            self._buf, self._buf_start = chunk, start

    def read(self, offset: int, size: int) -> bytes | memoryview:
        data = self._read(offset, size)
        sequential = offset in (0, self._last_end)
        self._last_end = offset + len(data)
        if (sequential and self._pool is not None and self._ahead is None
                and self._upos < self.size):
            self._ahead = self._pool.submit(self._next_chunk, ZAHEAD)
        return data

    def _read(self, offset: int, size: int) -> bytes | memoryview:
        end = min(offset + size, self.size)
        if self._fd < 0:
            self._open()
        if self._ahead is not None and (end > self._upos or offset < self._buf_start):
            self._settle(offset)
        buf_start, buf_end = self._buf_start, self._buf_start + len(self._buf)
        if buf_start <= offset and end <= buf_end:
            if offset == buf_start and end == buf_end:
                return self._buf
            # A view, not a copy: the FUSE reply copies it to the kernel anyway.
            return memoryview(self._buf)[offset - buf_start:end - buf_start]
        if offset < buf_start:
            self._restore(offset)
        elif offset > self._upos + self.interval:
            self._restore(offset, forward_only=True)
        # The last output (it ends where the inflater stands) may hold the first part.
        parts: list[bytes] = []
        if self._buf_start <= offset < self._buf_start + len(self._buf):
            parts.append(self._buf[offset - self._buf_start:])
        while self._upos < offset:  # skip forward, keeping nothing
            self._advance(self._next_chunk(min(offset - self._upos, ZOUT_CHUNK)))
        while self._upos < end:
            chunk = self._next_chunk(end - self._upos)
            self._advance(chunk)
            parts.append(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._buf, self._buf_start = data, offset
        return data


class LayerVFS(CommitVFS):
    """The union of several commits, lower first, with OCI whiteouts applied.

    What ``ostree checkout --union --whiteouts`` of the commits in order leaves; the
    rules and how a build tool stacks an overlayfs upper dir on it are in
    :mod:`ostreefs.mount.layers`. A directory's key is its stack of dirtrees
    (``L:tree+tree...``), merged when the directory is first needed. Files that share a
    content object show as hardlinks, counted over the merged tree.
    """

    _count_in_background = False  # merging shares caches with the serving thread

    def __init__(self, repo: Repo, commits: Sequence[str], *,
                 uid: int | None = None, gid: int | None = None) -> None:
        if not commits:
            raise MountError("No layers to mount")
        self._trees: _LRU[str, DirTree] = _LRU(DIRTREE_CACHE)  # not for threads
        self.commits = tuple(commits)
        roots: list[layers.Layer] = []
        for c in commits:
            cm = repo.load_commit(c)
            roots.append((cm.root_tree, cm.root_meta))
        self.repo = repo
        stack = layers.effective(roots, self._tree)
        self._setup(repo, "+".join(commits), layers.stack_key(stack), stack[0][1], uid, gid)

    def _tree(self, checksum: str) -> DirTree:
        t = self._trees.get(checksum)
        if t is None:
            t = self.repo.load_dirtree(checksum)
            self._trees.put(checksum, t)
        return t

    def _merged(self, key: str) -> layers.Merged:
        return layers.merge_dir(layers.stack_of_key(key), self._tree)

    def _load_dir(self, key: str) -> _Dir:
        m = self._merged(key)
        return _Dir.of(list(m.files),
                       [(n, layers.stack_key(st), st[0][1]) for n, st in m.dirs])

    def _count_objects(self) -> dict[int, int]:
        seen: dict[int, int] = {}
        stack = [self._nodes[ROOT_INO].checksum]
        while stack:
            key = stack.pop()
            try:
                m = self._merged(key)
            except StoreError as e:
                self._report(key, e)
                continue
            for _n, c in m.files:
                k = int(c[:16], 16)
                seen[k] = seen.get(k, 0) + 1
            stack.extend(layers.stack_key(st) for _n, st in m.dirs)
        return {k: v for k, v in seen.items() if v > 1}


#: Keys of the made-up directories of a history mount.
_H_ROOT = "H:/"
_H_COMMITS = "H:commits"
_H_REFS = "H:refs/"
_H_META = "H:"
_C = "C:"  # "C:<commit>": the root directory of a commit (as key and as meta key)


def _is_checksum(name: str) -> bool:
    return len(name) == 64 and all(ch in "0123456789abcdef" for ch in name)


class HistoryVFS(CommitVFS):
    """Every ref and commit of a repository (``ostreefs mount --all``).

    The root holds ``refs/`` (a directory per ref, the ref's commit tree; refs with '/'
    nest, remote refs are ``REMOTE:NAME``) and ``commits/<checksum>/`` for every commit
    object (parents included, when the repository has them); ``commits/<checksum>``
    also resolves for a commit written after ``commits/`` was listed. Everything is
    materialised when first looked at: a ``refs/`` directory reads the refs then, and a
    commit's tree is one more lazy commit view. The made-up directories are 0755, owned
    by root. Each path is its own inode (no hardlink counting across history).
    """

    immutable = False  # new commits and refs appear
    _count_in_background = False  # nothing here is shown as a hardlink

    def __init__(self, repo: Repo, *, uid: int | None = None,
                 gid: int | None = None) -> None:
        self._setup(repo, "all", _H_ROOT, _H_META, uid, gid)

    def _linkable(self, h: _Header) -> bool:
        return False

    def _load_meta(self, meta: str) -> tuple[int, int, int, Xattrs]:
        if meta == _H_META:
            return (0, 0, stat.S_IFDIR | 0o755, ())
        if meta.startswith(_C):
            meta = self.repo.load_commit(meta[len(_C):]).root_meta
        return super()._load_meta(meta)

    def _load_dir(self, key: str) -> _Dir:
        if key == _H_ROOT:
            return _Dir.of([], [("commits", _H_COMMITS, _H_META), ("refs", _H_REFS, _H_META)])
        if key == _H_COMMITS:
            commits = sorted(c for c, t in self.repo.iter_objects()
                             if t is ObjectType.COMMIT)
            return _Dir.of([], [(c, _C + c, _C + c) for c in commits])
        if key.startswith(_H_REFS):
            return self._refs_dir(key[len(_H_REFS):])
        if key.startswith(_C):
            root = self.repo.load_commit(key[len(_C):]).root_tree
            return _Dir(self.repo.load_dirtree(root), root)
        return super()._load_dir(key)

    def _refs_dir(self, prefix: str) -> _Dir:
        from ostreefs.store.refs import list_refs

        children: dict[str, str] = {}  # name -> commit, or "" for a directory of refs
        for name, commit in list_refs(self.repo).items():
            if not name.startswith(prefix):
                continue
            head, sep, _rest = name[len(prefix):].partition("/")
            if sep:
                children.setdefault(head, "")
            else:
                children[head] = commit
        dirs = [(n, _C + c, _C + c) if c else (n, f"{_H_REFS}{prefix}{n}/", _H_META)
                for n, c in sorted(children.items(), key=lambda x: x[0].encode())]
        return _Dir.of([], dirs)

    def lookup(self, parent: int, name: str) -> Attrs:
        try:
            return super().lookup(parent, name)
        except NoSuchEntry:
            if (self._node(parent).checksum != _H_COMMITS or not _is_checksum(name)
                    or not self.repo.has_object(name, ObjectType.COMMIT)):
                raise
        node = self._child(parent, name, True, _C + name, _C + name)
        a = self._attrs(node)
        node.nlookup += 1
        return a
