"""Filesystem primitives the store and the boot layer share.

Durability rules live here so there is one implementation of them: a file becomes
visible under its final name only by rename, after its bytes are written (and synced
when the caller asks). Locks are OFD locks on a lock file, the kind ostree takes, so
ostree and ostreefs exclude each other on a shared repository.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding ``fd``: one call instead of an fsync per file."""
    import ctypes  # here: a cold ``ostreefs mount`` has no use for it

    if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def syncfs_path(path: str | os.PathLike[str]) -> None:
    """:func:`syncfs` of the filesystem holding the directory ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(prefix: str = ".tmp-") -> str:
    return prefix + os.urandom(8).hex()  # what secrets.token_hex does, without its imports


def atomic_write(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True,
                 mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part."""
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, tmp_name())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            _write_all(fd, data)
            os.fchmod(fd, mode)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(d)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


write_all = _write_all


def open_dirs(base: int | str | os.PathLike[str], rel: str, create: bool = False) -> int:
    """An fd of the directory ``rel`` (relative, ``/``-separated; "" is ``base``
    itself) under ``base`` (a path, or a directory fd, which stays open), reached
    without following a symlink (a component that is one fails with ELOOP or ENOTDIR),
    the missing ones made when ``create``. For trees whose owner could otherwise point a
    write anywhere: ostreefs's own files in a repository, a deployment's /etc."""
    fd = (os.dup(base) if isinstance(base, int)
          else os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
    try:
        for part in rel.split("/") if rel else []:
            if part in ("", ".", ".."):
                raise OSError(errno.EINVAL, f"not a plain relative path: {rel!r}")
            if create:
                try:
                    os.mkdir(part, dir_fd=fd)
                except FileExistsError:
                    pass
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def hand_to_owner(rels: Iterable[str], base: str | os.PathLike[str]) -> None:
    """Give what root just made under ``base`` (ostreefs's own files in a repository:
    the index, the reflog; ``rels`` relative to it) to the owner of ``base``, where
    that is another user. A user's repository that root committed to or pulled into
    must stay one its owner can write; these files are not ostree's, so ostree's rule
    (whoever writes, owns) need not apply. Only what root owns is changed, only a file
    with no other link, and all is reached without following a symlink (see
    :func:`open_dirs`)."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(base)
    except OSError:
        return
    if st.st_uid == 0:
        return
    for rel in rels:
        parent, _, name = rel.rpartition("/")
        try:
            dfd = open_dirs(base, parent)
            try:
                got = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if got.st_uid == 0 and (stat.S_ISDIR(got.st_mode) or got.st_nlink == 1):
                    os.chown(name, st.st_uid, st.st_gid, dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        except OSError:
            pass  # best effort: the files work for root either way


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The whole file. Plain fds, not ``open()``: a metadata object is read per directory
    on hot paths, and a file object costs three more syscalls (fstat, a tty ioctl, lseek)
    and its Python wrapping for each."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, 1 << 16)
        if not data:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def list_xattrs(path: str | os.PathLike[str] | int, follow: bool = False) -> list[
        tuple[bytes, bytes]]:
    """All xattrs of a file as (name, value) bytes pairs; [] where unsupported."""
    try:
        names = os.listxattr(path, follow_symlinks=follow) if not isinstance(path, int) \
            else os.listxattr(path)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EPERM):
            return []
        raise
    out = []
    for n in names:
        try:
            v = (os.getxattr(path, n, follow_symlinks=follow) if not isinstance(path, int)
                 else os.getxattr(path, n))
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP):
                continue
            raise
        out.append((n.encode("utf-8", "surrogateescape"), v))
    return out


# ------------------------------------------------------------------------------- locks

LOCK_SH = fcntl.F_RDLCK
LOCK_EX = fcntl.F_WRLCK
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)


def _flock_struct(kind: int) -> bytes:
    # struct flock { short l_type; short l_whence; off_t l_start; off_t l_len; pid_t l_pid; }
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, 0, 0, 0)


def try_ofd_lock(fd: int, kind: int) -> bool:
    """Take (or convert) an OFD lock on the whole file without waiting."""
    try:
        fcntl.fcntl(fd, _F_OFD_SETLK, _flock_struct(kind))
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def unlock(fd: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _flock_struct(fcntl.F_UNLCK))


@contextmanager
def ofd_lock(path: str, kind: int, timeout: float) -> Iterator[int]:
    """Hold an OFD lock on ``path`` (created 0640 if missing); TimeoutError past timeout."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not try_ofd_lock(fd, kind):
            if time.monotonic() >= deadline:
                raise TimeoutError(path)
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
        yield fd
    finally:
        os.close(fd)


def boot_id() -> str:
    """The kernel boot id: staging dirs from another boot may hold unsynced data."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"
