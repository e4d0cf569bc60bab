"""The FUSE protocol adapter: pyfuse3 around :class:`~ostreefs.mount.vfs.CommitVFS`.

What a commit looks like as a file system is defined in ``vfs.py``; this module only
translates requests, maps errors to errno values and runs the daemon. It is the only
module that imports pyfuse3 (and trio, which only a stock pyfuse3 needs).

* Handlers never ``await``: each calls the synchronous VFS directly (reads are a
  ``pread`` on an open object file, never a thread hop).
* Read-only: the mount has the ``ro`` option, and every write handler answers EROFS.
* The kernel caches everything for a day (entry and attribute timeouts, absent names
  included) and keeps file pages across opens (``keep_cache``): a commit never changes.
  With the patched pyfuse3 on Linux >= 5.1 (``no_open``) open and opendir answer
  ENOSYS, so the kernel stops asking for them (and for release and flush) and a warm
  walk or read of a mounted tree never reaches this process.
* ``mount()`` daemonizes by default (fork; the parent returns once the kernel mount is
  in place, or raises the child's error); SIGINT, SIGTERM and SIGHUP unmount cleanly.
  A stale mount point (a daemon that died: ENOTCONN) is lazily unmounted first.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple, cast

import pyfuse3

from ostreefs.errors import OstreefsError
from ostreefs.mount.vfs import (
    DIR_SIZE,
    Attrs,
    BadHandle,
    CommitVFS,
    IsADir,
    MountError,
    NoSuchEntry,
    NoSuchXattr,
    NotADir,
    NotASymlink,
)

log = logging.getLogger("ostreefs.mount")

#: Seconds the kernel may cache entries and attributes: nothing in a commit changes.
TIMEOUT = 86400.0

# --- readdir caching (tools/pyfuse3-cache-readdir.patch) -------------------------------
#: Whether this pyfuse3 lets opendir return a FileInfo with ``cache_readdir``
#: (FOPEN_CACHE_DIR): the kernel then keeps each listing and serves later readdirs itself.
#: Stock pyfuse3 3.5 lacks it (opendir returns a bare handle; every ls/find re-asks the
#: daemon); tools/install builds the patched pyfuse3 when it can.
CACHE_READDIR: bool = hasattr(pyfuse3.FileInfo(), "cache_readdir")
_CACHE_DIR: dict[str, Any] = {"cache_readdir": True}  # a keyword stock stubs don't know
#: Whether this pyfuse3 can mount without opens (``Operations.enable_no_open``). Where
#: the kernel can too (Linux >= 5.1; pyfuse3 sets ``no_open`` at INIT), open and opendir
#: answer ENOSYS, the kernel stops sending open/release and opendir/releasedir for the
#: rest of the mount, caching file pages and listings as keep_cache and cache_readdir
#: would, and read() and readdir() get the inode as their handle: a warm walk or tar of
#: a mounted tree needs no round trip to this process at all.
NO_OPEN: bool = bool(getattr(pyfuse3, "INODE_HANDLES_WITHOUT_OPEN", False))
#: Whether this pyfuse3 serves without trio (``pyfuse3.main_sync``): our handlers never
#: suspend, so each request runs to completion at once instead of taking a round of the
#: event loop (about half of what a request costs), and trio is never imported.
MAIN_SYNC: bool = hasattr(pyfuse3, "main_sync")
#: Microseconds main_sync keeps reading after a request before it sleeps, when the build
#: can (``pyfuse3.MAIN_SYNC_SPIN``). `ls -l` and `find` send their requests one after
#: another; taking the next one without being woken cut a round trip from ~29 to ~18 us
#: here, for at most this much CPU after the last request of a burst.
#: Not with a single usable CPU: the client could not run while the daemon spins.
SPIN_US: int = (50 if getattr(pyfuse3, "MAIN_SYNC_SPIN", False)
                and len(os.sched_getaffinity(0)) > 1 else 0)
# --- end readdir caching ---------------------------------------------------------------

FUSERMOUNT = "fusermount3"

_ERRNO: tuple[tuple[type[OstreefsError], int], ...] = (
    (NoSuchEntry, errno.ENOENT),
    (NotADir, errno.ENOTDIR),
    (NotASymlink, errno.EINVAL),
    (IsADir, errno.EISDIR),
    (NoSuchXattr, pyfuse3.ENOATTR),
    (BadHandle, errno.EBADF),
)
#: What a handler turns into an errno (see _Ops._fail); anything else is a bug.
_FAILS = (OstreefsError, OSError)


class MountOptions(NamedTuple):
    """How to mount (the ``-o`` options and ``-f``)."""

    foreground: bool = False
    allow_other: bool = False
    uid: int | None = None
    gid: int | None = None
    subpath: str = "/"
    #: Where a daemon's stderr (and so its log) goes; /dev/null when None.
    log_path: str | None = None


def _entry(a: Attrs) -> pyfuse3.EntryAttributes:
    e = pyfuse3.EntryAttributes()
    e.st_ino = a.ino
    e.generation = 0
    e.entry_timeout = 0 if a.volatile else TIMEOUT
    e.attr_timeout = 0 if a.volatile else TIMEOUT
    e.st_mode = a.mode
    e.st_nlink = a.nlink
    e.st_uid = a.uid
    e.st_gid = a.gid
    e.st_rdev = 0
    e.st_size = a.size
    e.st_blksize = 4096
    e.st_blocks = (a.size + 511) // 512
    e.st_atime_ns = e.st_ctime_ns = e.st_mtime_ns = a.mtime_ns
    return e


def _name(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


class _Ops(pyfuse3.Operations):
    """pyfuse3's handlers over a CommitVFS."""

    #: The kernel keeps symlink targets (patched pyfuse3; ignored by stock pyfuse3).
    enable_symlink_cache = True

    def __init__(self, vfs: CommitVFS) -> None:
        super().__init__()
        self.vfs = vfs
        self.enable_no_open = NO_OPEN  # (patched pyfuse3) read at INIT
        self.no_open = False  # set by patched pyfuse3 at INIT if the kernel agrees

    def _fail(self, e: OstreefsError | OSError) -> pyfuse3.FUSEError:
        """The error a handler answers for ``e``. Each handler catches _FAILS itself:
        a context manager around every request cost ~1 us of each, and `ls -l` makes
        two requests per entry."""
        if isinstance(e, OstreefsError):
            for cls, code in _ERRNO:
                if isinstance(e, cls):
                    return pyfuse3.FUSEError(code)
        self.vfs.report(e)  # a missing or corrupt object, an I/O error: one log line
        return pyfuse3.FUSEError(errno.EIO)

    # ------------------------------------------------------------------- reading

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        try:
            return _entry(self.vfs.lookup(parent_inode, _name(name)))
        except NoSuchEntry:
            if not self.vfs.immutable:
                raise pyfuse3.FUSEError(errno.ENOENT) from None
        except _FAILS as e:
            raise self._fail(e) from None
        # A commit never changes: the kernel may remember that the name is absent
        # (inode 0 is a negative entry), as it remembers what is present.
        absent = pyfuse3.EntryAttributes()
        absent.st_ino = 0
        absent.entry_timeout = TIMEOUT
        return absent

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            self.vfs.forget(ino, n)

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        try:
            return _entry(self.vfs.attrs(inode))
        except _FAILS as e:
            raise self._fail(e) from None

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self.vfs.readlink(inode).encode("utf-8", "surrogateescape")
        except _FAILS as e:
            raise self._fail(e) from None

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self.no_open:  # the kernel only opens directories; readdir gets the inode
            raise pyfuse3.FUSEError(errno.ENOSYS)
        try:
            if not self.vfs.attrs(inode).mode & 0o040000:
                raise NotADir(inode)
            if CACHE_READDIR:  # patched pyfuse3: the kernel caches the listing
                # (typed as an int handle in pyfuse3's stubs; the patch also takes this)
                return cast(int, pyfuse3.FileInfo(fh=inode, keep_cache=True, **_CACHE_DIR))
            return inode
        except _FAILS as e:
            raise self._fail(e) from None

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        try:
            for next_id, name, attrs in self.vfs.entries(fh, start_id):
                if not pyfuse3.readdir_reply(token, name.encode("utf-8", "surrogateescape"),
                                             _entry(attrs), next_id):
                    return
                self.vfs.ref(attrs.ino)
        except _FAILS as e:
            raise self._fail(e) from None

    async def releasedir(self, fh: int) -> None:
        return None

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext
                   ) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if self.no_open:  # read gets the inode as its handle; errors surface there
            raise pyfuse3.FUSEError(errno.ENOSYS)
        try:
            return pyfuse3.FileInfo(fh=self.vfs.open(inode), keep_cache=True)
        except _FAILS as e:
            raise self._fail(e) from None

    async def read(self, fh: int, off: int, size: int) -> bytes:
        # pyfuse3 replies from any contiguous buffer (PyObject_GetBuffer), so a view
        # into an inflated chunk goes out without a copy; its stubs say bytes.
        try:
            if self.no_open:
                return cast(bytes, self.vfs.read_inode(fh, off, size))
            return cast(bytes, self.vfs.read(fh, off, size))
        except _FAILS as e:
            raise self._fail(e) from None

    async def release(self, fh: int) -> None:
        self.vfs.release(fh)

    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        # `ls -l` asks every entry for two or three xattrs it almost never has: answer
        # a miss without building an exception message (there is no negative cache).
        try:
            for n, v in self.vfs.xattrs(inode):
                if n == name:
                    return v
        except _FAILS as e:
            raise self._fail(e) from None
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        try:
            return self.vfs.listxattr(inode)
        except _FAILS as e:
            raise self._fail(e) from None

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = DIR_SIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 0
        s.f_files = self.vfs.live_inodes
        s.f_ffree = s.f_favail = 0
        s.f_namemax = 255
        return s

    async def flush(self, fh: int) -> None:
        # Nothing to flush on a read-only mount; ENOSYS stops the kernel sending flushes.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    # ------------------------------------------------------- writing: never

    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, parent_inode: int, name: bytes,
                    ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, inode: int, name: bytes,
                          ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)


# ------------------------------------------------------------------ mount points


def is_ostreefs_mount(mountpoint: str) -> bool:
    """Whether an ostreefs FUSE file system is mounted at ``mountpoint``."""
    target = os.path.realpath(mountpoint)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _sep, right = line.partition(" - ")
                fields = left.split()
                if len(fields) > 4 and _unescape(fields[4]) == target and \
                        right.split(" ", 1)[0] == "fuse.ostreefs":
                    return True
    except OSError:
        return False
    return False


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def clear_stale(mountpoint: str) -> bool:
    """Lazily unmount a FUSE mount whose daemon died; True if there was one."""
    try:
        # statfs always reaches the daemon; a stat may be served from the kernel's cache.
        os.stat(mountpoint)
        os.statvfs(mountpoint)
        return False
    except OSError as e:
        if e.errno != errno.ENOTCONN:
            return False
    log.warning("clearing stale mount at %s (its daemon is gone)", mountpoint)
    import subprocess  # here: serving never needs it

    subprocess.run([FUSERMOUNT, "-uz", mountpoint], capture_output=True, check=False)
    return True


def umount(mountpoint: str) -> None:
    """Unmount (``fusermount3 -u``); a stale mount is unmounted lazily."""
    mp = os.path.abspath(mountpoint)
    if clear_stale(mp):
        return
    import subprocess

    proc = subprocess.run([FUSERMOUNT, "-u", mp], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"
        raise MountError(f"Cannot unmount {mp}: {msg}")


# ------------------------------------------------------------------------- serve


def mount(vfs: CommitVFS, mountpoint: str, options: MountOptions | None = None) -> None:
    """Mount ``vfs`` at ``mountpoint``; see the module docstring.

    In the foreground this returns when the file system is unmounted; otherwise as soon
    as the daemon's mount is in place.
    """
    opts = options or MountOptions()
    mp = os.path.abspath(mountpoint)
    clear_stale(mp)
    if is_ostreefs_mount(mp):
        raise MountError(f"{mp} is already an ostreefs mount",
                         hint=f"unmount it first: ostreefs umount {mp}")
    if not os.path.isdir(mp):
        raise MountError(f"Mount point {mp} is not a directory")
    fuse_opts = {"ro", "default_permissions", "subtype=ostreefs",
                 f"fsname=ostreefs:{os.path.abspath(vfs.repo.path)}".replace(",", "_")}
    if opts.allow_other:
        fuse_opts.add("allow_other")
    if opts.foreground:
        _serve(vfs, mp, fuse_opts, None)
        return
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(r)
        code = 1
        try:
            os.setsid()
            _detach_stdio(opts.log_path)
            _daemon_gc()
            _serve(vfs, mp, fuse_opts, w)
            code = 0
        except BaseException as e:  # noqa: B036 - reported to the parent, then exit
            try:
                os.write(w, f"{e}".encode() or b"mount failed")
            except OSError:
                pass
        finally:
            os._exit(code)  # allowed-exit: the forked daemon must never return
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    msg = b"".join(chunks)
    if msg != b"ok":
        os.waitpid(pid, 0)
        raise MountError(f"Cannot mount at {mp}: "
                         f"{msg.decode('utf-8', 'replace') or 'the daemon died'}")


#: The daemon's gen-0 collection threshold (Python's default is 700).
GC_THRESHOLD0 = 10_000


def _daemon_gc() -> None:
    """Tune the collector of the daemon (a process of its own). A first walk makes
    tens of thousands of small objects that live on (inodes, headers, listings) and
    almost no cycles, so the default collector spent ~44 ms of a 19k-entry walk
    rescanning them; with start-up's objects frozen and young ones collected 14x less
    often, ~14 ms. (Start-up ran without collections: its few cycles, ~160 objects,
    are frozen with the rest, once.)"""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD0, *gc.get_threshold()[1:])
    gc.enable()


def _detach_stdio(log_path: str | None) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    else:
        os.dup2(null, 2)
    os.close(null)


def _serve(vfs: CommitVFS, mp: str, fuse_opts: set[str], ready_fd: int | None) -> None:
    ops = _Ops(vfs)
    state = {"signalled": False, "serving": False}
    with ExitStack() as stack:
        # The handlers go in before the mount appears: a SIGTERM sent as soon as it
        # shows must unmount it, not kill the process and leave it dead.
        wakeup = -1
        if threading.current_thread() is threading.main_thread():
            wakeup = stack.enter_context(_stop_on_signals(state, wakeup=MAIN_SYNC))
        try:
            pyfuse3.init(ops, mp, fuse_opts)
        except RuntimeError as e:
            raise MountError(f"Cannot mount at {mp}: {e}") from None
        log.info("mounted commit %s at %s", vfs.commit, mp)
        served = False
        try:
            if ready_fd is not None:
                if state["signalled"]:  # the parent must not report a mount going away
                    raise MountError(f"Cannot mount at {mp}: interrupted by a signal")
                os.write(ready_fd, b"ok")
                _retire(ready_fd)
            # Threads only now: a daemon forks before it mounts. Requests that come
            # meanwhile wait in the kernel.
            vfs.start()
            if MAIN_SYNC:
                state["serving"] = not state["signalled"]
                if state["serving"]:  # (a signal before this point only asked)
                    if SPIN_US:
                        pyfuse3.main_sync(wakeup, SPIN_US)  # type: ignore[attr-defined]
                    else:
                        pyfuse3.main_sync(wakeup)  # type: ignore[attr-defined]
                state["serving"] = False
            else:
                import trio  # only stock pyfuse3 needs it (and it is slow to import)

                trio.run(_main, state)
            served = True
        finally:
            # After a signal or a failure we unmount (a failed daemon must not leave
            # a dead mount behind); after an external unmount there is nothing to undo.
            pyfuse3.close(unmount=state["signalled"] or not served)
            # Unmounted: from here a second signal may end the process (vfs.close can
            # wait seconds for the index, and what it writes is only derived data).
            stack.close()
            vfs.close()
            log.info("unmounted %s", mp)


def _retire(fd: int) -> None:
    """Close ``fd`` but keep its number taken (by /dev/null): an error the daemon
    reports to its parent after "ok" must not land in a file opened since."""
    null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    os.dup2(null, fd)
    os.close(null)


@contextmanager
def _stop_on_signals(state: dict[str, bool], wakeup: bool = True) -> Iterator[int]:
    """SIGINT, SIGTERM and SIGHUP end main_sync once the request being served is
    answered (never in the middle of one) and ask for an unmount. Yields the wakeup
    pipe main_sync waits on, so that no signal is missed (-1 without ``wakeup``: trio,
    which serves stock pyfuse3, has its own, and its own handlers while it runs; ours
    then only note a signal that comes before). The handlers are swapped with the
    signals blocked (in this thread: the others are started later)."""
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

    def stop(_signum: int, _frame: object) -> None:
        state["signalled"] = True
        if state["serving"]:
            pyfuse3.stop_sync()  # type: ignore[attr-defined]  # the patched build's

    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC) if wakeup else (-1, -1)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    old: dict[int, Any] = {}
    try:
        for s in sigs:
            old[s] = signal.signal(s, stop)
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False) if wakeup else None
    except BaseException:
        _restore_signals(old, None, r, w, mask)
        raise
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    try:
        yield r
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
        _restore_signals(old, old_fd, r, w, mask)


def _restore_signals(old: dict[int, Any], old_fd: int | None, r: int, w: int,
                     mask: set[int | signal.Signals]) -> None:
    if old_fd is not None:
        signal.set_wakeup_fd(old_fd)
    for s, h in old.items():
        signal.signal(s, h)
    if r >= 0:
        os.close(r)
        os.close(w)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


async def _main(state: dict[str, bool]) -> None:
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
        if state["signalled"]:  # before trio took the signals over
            return
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                async for _sig in sigs:
                    state["signalled"] = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()
