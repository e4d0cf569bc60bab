"""Writing objects so that no partial object is ever visible.

Objects are staged in a private directory under ``tmp/`` (``staging-BOOTID-RANDOM``,
held by an OFD lock on ``<dir>-lock`` as ostree holds its own). What a pull stages, and
every symlink object, gets its name there only once whole (:meth:`Transaction.stage_whole`):
a pull reads back what it staged. A commit may write its other objects under their
staging name directly, since nothing reads them before the transaction commits.
:meth:`Transaction.commit` then makes the staged bytes durable with one ``syncfs``
(when the repo's fsync policy asks), renames them into ``objects/``, and syncs again
before the caller moves any ref. A process killed at any instant leaves only a staging
directory, which the next transaction removes.

Thread-safe: commit building calls :meth:`write_content` from a worker pool.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import os
import secrets
import stat
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ostreefs import _fs
from ostreefs.errors import StoreError
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import FileHeader, ObjectType
from ostreefs.store.repo import OSTREEMETA_XATTR, READ_CHUNK, Repo

#: Files up to this size are read whole, hashed, and written only if new.
SMALL_FILE = 1 << 20


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@dataclass
class TransactionStats:
    metadata_total: int = 0
    metadata_written: int = 0
    content_total: int = 0
    content_written: int = 0
    content_bytes_written: int = 0
    content_cache_hits: int = 0


class Transaction:
    """A set of object writes that becomes visible together."""

    def __init__(self, repo: Repo, fsync: bool) -> None:
        self.repo = repo
        self.fsync = fsync
        self._metadata_calls = itertools.count()
        self._content_calls = itertools.count()
        #: Files whose checksum came from the stat cache; set by the commit builder.
        self.content_cache_hits = 0
        #: (checksum, type) -> size once written; a claim token while being written.
        self._staged: dict[tuple[str, ObjectType], object] = {}
        self._umask = _current_umask()
        #: (checksum, type, size on disk) of each object made visible by commit().
        self.written: list[tuple[str, ObjectType, int]] = []
        #: (st_dev, st_ino, checksum) of each content object written (rename keeps them).
        self.inodes: list[tuple[int, int, str]] = []
        self._made_dirs: set[str] = set()
        self._lock_cm = repo.lock(exclusive=False)
        self._lock_cm.__enter__()
        self._staging_lock_fd: int | None = None
        try:
            self._cleanup_stale_staging()
            self.staging = self._make_staging()
            self._staging_s = str(self.staging) + "/"
            self._objlen = len(f"{self.repo.path}/objects/")
        except BaseException:
            self._lock_cm.__exit__(None, None, None)
            raise
        self._done = False

    # ------------------------------------------------------------------ staging

    def _make_staging(self) -> Path:
        tmp = self.repo.path / "tmp"
        name = f"staging-{_fs.boot_id()}-{secrets.token_hex(6)}"
        fd = os.open(tmp / f"{name}-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _fs.try_ofd_lock(fd, _fs.LOCK_EX):
            os.close(fd)
            raise StoreError("staging directory lock is unexpectedly taken")
        self._staging_lock_fd = fd
        path = tmp / name
        path.mkdir(mode=0o755)
        return path

    def _cleanup_stale_staging(self) -> None:
        """Remove staging dirs whose owner died: their lock can be taken."""
        tmp = self.repo.path / "tmp"
        try:
            names = os.listdir(tmp)
        except FileNotFoundError:
            (tmp).mkdir()
            return
        for n in names:
            if not n.startswith("staging-") or n.endswith("-lock"):
                continue
            lock_path = tmp / f"{n}-lock"
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError:
                continue
            try:
                if _fs.try_ofd_lock(fd, _fs.LOCK_EX):
                    _rmtree(tmp / n)
                    lock_path.unlink(missing_ok=True)
            finally:
                os.close(fd)

    def _stage_path(self, checksum: str, otype: ObjectType) -> str:
        """Where a new object is staged: the same relative name as under objects/."""
        sub = checksum[:2]
        if sub not in self._made_dirs:
            os.makedirs(f"{self._staging_s}/{sub}", exist_ok=True)
            self._made_dirs.add(sub)
        return self._staging_s + self.repo.object_path_str(checksum, otype)[self._objlen:]

    def _claim(self, checksum: str, otype: ObjectType) -> bool:
        """Reserve a new object's staging name for this thread.

        False if the repo has the object or another thread is writing it. ``setdefault``
        on a dict is atomic under the GIL, so exactly one writer wins.
        """
        key = (checksum, otype)
        if key in self._staged or self.repo.has_object(checksum, otype):
            return False
        token: object = object()
        return self._staged.setdefault(key, token) is token

    def _done_writing(self, checksum: str, otype: ObjectType, size: int) -> None:
        self._staged[(checksum, otype)] = size

    def _unclaim(self, checksum: str, otype: ObjectType) -> None:
        self._staged.pop((checksum, otype), None)
        try:
            os.unlink(self._stage_path(checksum, otype))
        except FileNotFoundError:
            pass

    def is_staged(self, checksum: str, otype: ObjectType) -> bool:
        """Whether this transaction has the object staged, or is staging it."""
        return (checksum, otype) in self._staged

    def read_staged(self, checksum: str, otype: ObjectType) -> bytes | None:
        """A staged object's bytes; None if this transaction has not staged it."""
        if (checksum, otype) not in self._staged:
            return None
        return _fs.read_file(self._stage_path(checksum, otype))

    def stage_whole(self, checksum: str, otype: ObjectType, fill: Callable[[int], None],
                    size: int) -> bool:
        """Stage an object whose checksum the caller has verified: ``fill`` writes it
        to an unnamed file in staging, which is then linked under its staging name, so
        the name only ever shows a whole object (a pull reads back what it staged).
        ``size`` is what the stats count as written. False if the repository has the
        object or another thread is staging it.

        (O_TMPFILE and a link cost less than a named temporary file and a rename.)
        """
        if not self._claim(checksum, otype):
            return False
        dest = self._stage_path(checksum, otype)
        try:
            try:
                fd = os.open(self.staging, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
            except OSError:
                fd = -1
            if fd >= 0:
                try:
                    fill(fd)
                    # src_dir_fd makes CPython call linkat(AT_SYMLINK_FOLLOW), which links
                    # the open file (the path is absolute, so the fd itself is not used).
                    os.link(f"/proc/self/fd/{fd}", dest, src_dir_fd=fd)
                finally:
                    os.close(fd)
            else:  # no O_TMPFILE here: a named temporary file and a rename
                tmp = self._tmpfile()
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o600)
                    try:
                        fill(fd)
                    finally:
                        os.close(fd)
                    os.rename(tmp, dest)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
        except BaseException:
            self._unclaim(checksum, otype)
            raise
        self._done_writing(checksum, otype, size)
        return True

    def stage_rename(self, checksum: str, otype: ObjectType, path: str) -> bool:
        """Stage a whole, verified object file by renaming it from ``path`` on this
        filesystem, as it is (its mode may be the object's); False if the repository has
        it or another thread is staging it (``path`` is then left to the caller)."""
        if not self._claim(checksum, otype):
            return False
        dest = self._stage_path(checksum, otype)
        try:
            os.rename(path, dest)
        except BaseException:
            self._unclaim(checksum, otype)
            raise
        self._done_writing(checksum, otype, os.lstat(dest).st_size)
        return True

    def link_object(self, checksum: str, otype: ObjectType, src: str) -> bool:
        """Hardlink an object that is already whole on this filesystem (another
        repository's, verified by whoever wrote it) straight to its place in objects/.

        No staging copy is needed: a link is atomic, so the name appears with the whole
        object behind it or not at all, and commit()'s syncfs makes the name durable
        before any commit object that needs it becomes visible. Like any object written
        before an abort, it stays (unreferenced, which fsck accepts; a later pull finds
        it). False if the repository already has the object. OSError from link passes
        through: ENOENT for a missing ``src``; EXDEV, EMLINK, EPERM when it cannot be
        linked (copy it instead).
        """
        dest = self.repo.object_path_str(checksum, otype)
        try:
            os.link(src, dest, follow_symlinks=False)
        except FileExistsError:
            return False
        except FileNotFoundError:
            sub = os.path.dirname(dest)
            if os.path.isdir(sub) or not os.path.lexists(src):
                raise
            os.makedirs(sub, mode=0o755, exist_ok=True)
            return self.link_object(checksum, otype, src)
        st = os.lstat(dest)
        self.written.append((checksum, otype, st.st_size))
        if otype is ObjectType.FILE:
            self.inodes.append((st.st_dev, st.st_ino, checksum))
        return True

    def _tmpfile(self) -> Path:
        return self.staging / _fs.tmp_name()

    # ------------------------------------------------------------------- writes

    def write_metadata(self, otype: ObjectType, data: bytes) -> str:
        """Store a metadata object; return its checksum. Existing objects are not rewritten."""
        checksum = hashlib.sha256(data).hexdigest()
        next(self._metadata_calls)
        if not self._claim(checksum, otype):
            return checksum
        try:
            self._write_new(self._stage_path(checksum, otype), data, 0o644)
        except BaseException:
            self._unclaim(checksum, otype)
            raise
        self._done_writing(checksum, otype, len(data))
        return checksum

    def _write_new(self, path: str | Path, data: bytes, mode: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            _fs.write_all(fd, data)
            if mode & ~self._umask != mode:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def write_symlink(self, header: FileHeader) -> str:
        """Store a symlink content object; return its checksum. Its staging name shows
        it whole or not at all (see :meth:`stage_whole`)."""
        checksum = hashlib.sha256(header.checksum_header()).hexdigest()
        next(self._content_calls)
        mode = self.repo.mode
        otype = ObjectType.FILE
        if mode is RepoMode.ARCHIVE:
            data = header.archive_header(0)

            def fill(fd: int) -> None:
                _fs.write_all(fd, data)
                os.fchmod(fd, 0o644)

            self.stage_whole(checksum, otype, fill, 0)
        elif mode is RepoMode.BARE_USER:
            raw = header.symlink_target.encode("utf-8", "surrogateescape") + b"\0"

            def fill(fd: int) -> None:
                _fs.write_all(fd, raw)
                os.fchmod(fd, 0o644)
                os.setxattr(fd, OSTREEMETA_XATTR, header.bareuser_meta())
                os.utime(fd, ns=(0, 0))

            self.stage_whole(checksum, otype, fill, 0)
        elif self._claim(checksum, otype):  # a real symlink: made aside, then renamed
            tmp = self._tmpfile()
            try:
                os.symlink(header.symlink_target, tmp)
                if mode is RepoMode.BARE:
                    os.lchown(tmp, header.uid, header.gid)
                    for n, v in header.xattrs:
                        os.setxattr(tmp, n, v, follow_symlinks=False)
                os.rename(tmp, self._stage_path(checksum, otype))
            except BaseException:
                tmp.unlink(missing_ok=True)
                self._unclaim(checksum, otype)
                raise
            self._done_writing(checksum, otype, 0)
        return checksum

    def write_file_bytes(self, header: FileHeader, data: bytes) -> str:
        """Store a regular file whose bytes are in memory; return its checksum.

        The checksum is known before anything is written, so the object is created
        under its staging name directly and an existing object costs no write at all.
        """
        h = hashlib.sha256(header.checksum_header())
        h.update(data)
        checksum = h.hexdigest()
        next(self._content_calls)
        if not self._claim(checksum, ObjectType.FILE):
            return checksum
        dest = self._stage_path(checksum, ObjectType.FILE)
        try:
            fd = self._open_content_tmp(dest)
            try:
                if self.repo.mode is RepoMode.ARCHIVE:
                    c = zlib.compressobj(self.repo.zlib_level, zlib.DEFLATED, -15)
                    _fs.write_all(fd, header.archive_header(len(data)) + c.compress(data)
                                  + c.flush())
                else:
                    _fs.write_all(fd, data)
                self.finish_content_fd(fd, header)
            finally:
                os.close(fd)
        except BaseException:
            self._unclaim(checksum, ObjectType.FILE)
            raise
        self._done_writing(checksum, ObjectType.FILE, len(data))
        return checksum

    def write_file_stream(self, header: FileHeader, fd_in: int, size: int) -> str:
        """Store a regular file read from ``fd_in`` in bounded chunks; return its checksum.

        The object is written while it is hashed, so a large file is read once; if it
        turns out to exist already the staged copy is dropped.
        """
        return self.write_file_chunks(header, iter(lambda: os.read(fd_in, READ_CHUNK), b""),
                                      size)

    def write_file_chunks(self, header: FileHeader, chunks: Iterable[bytes], size: int) -> str:
        """Store a regular file whose bytes arrive as ``chunks``; return its checksum.

        Like :meth:`write_file_stream` (which reads its fd through this): written while
        hashed, the staged copy dropped if the object exists. ``size`` must be the total
        length of the chunks.
        """
        h = hashlib.sha256(header.checksum_header())
        next(self._content_calls)
        tmp = self._tmpfile()
        fd = self._open_content_tmp(tmp)
        total = 0
        try:
            archive = self.repo.mode is RepoMode.ARCHIVE
            c = zlib.compressobj(self.repo.zlib_level, zlib.DEFLATED, -15) if archive else None
            if c is not None:
                _fs.write_all(fd, header.archive_header(size))
            for block in chunks:
                if not block:
                    continue
                total += len(block)
                h.update(block)
                _fs.write_all(fd, c.compress(block) if c is not None else block)
            if total != size:
                raise StoreError(f"file changed size while being committed ({size} -> {total})")
            if c is not None:
                _fs.write_all(fd, c.flush())
            self.finish_content_fd(fd, header)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        checksum = h.hexdigest()
        if not self._claim(checksum, ObjectType.FILE):
            tmp.unlink()
            return checksum
        try:
            os.rename(tmp, self._stage_path(checksum, ObjectType.FILE))
        except BaseException:
            self._unclaim(checksum, ObjectType.FILE)
            raise
        self._done_writing(checksum, ObjectType.FILE, total)
        return checksum

    def _open_content_tmp(self, tmp: str | Path) -> int:
        return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def finish_content_fd(self, fd: int, header: FileHeader,
                           bareuser_meta: bytes | None = None) -> None:
        """Apply the mode's owner, permissions, xattrs and mtime to a staged file.

        ``bareuser_meta``: the header's ``user.ostreemeta`` value when the caller has it
        already (a pull encodes it once per distinct header).
        """
        mode = self.repo.mode
        if mode is RepoMode.ARCHIVE:
            os.fchmod(fd, 0o644)
            return
        if mode is RepoMode.BARE:
            os.fchown(fd, header.uid, header.gid)
            os.fchmod(fd, stat.S_IMODE(header.mode))
            for n, v in header.xattrs:
                os.setxattr(fd, n, v)
        elif mode is RepoMode.BARE_USER:
            os.fchmod(fd, (stat.S_IMODE(header.mode) & 0o775) | 0o400)
            os.setxattr(fd, OSTREEMETA_XATTR, bareuser_meta or header.bareuser_meta())
        else:
            os.fchmod(fd, stat.S_IMODE(header.mode))
        os.utime(fd, ns=(0, 0))
        if self.fsync and self.repo.per_object_fsync:
            os.fsync(fd)

    # ----------------------------------------------------------------- finish

    def commit(self) -> list[tuple[str, ObjectType, int]]:
        """Make every staged object durable and visible.

        Returns (checksum, type, size on disk) of each object written, which is what the
        index catalogs (the same figure a rescan of ``objects/`` finds).
        """
        if self._done:
            raise StoreError("transaction already finished")
        try:
            objdir = f"{self.repo.path}/objects"
            # Before this point only link_object adds to ``written``: a pull that only
            # linked content (a repair) needs the syncfs too.
            if self.fsync and (self._staged or self.written):
                _fs.syncfs_path(self.staging)
            self._check_complete()
            touched: set[str] = set()
            written = self.written
            # Commits last: a commit object never appears before the tree it names.
            for checksum, otype in sorted(self._staged, key=lambda k: k[1] is ObjectType.COMMIT):
                sub = checksum[:2]
                if sub not in touched:
                    os.makedirs(f"{objdir}/{sub}", mode=0o755, exist_ok=True)
                    touched.add(sub)
                src = self._stage_path(checksum, otype)
                dest = self.repo.object_path_str(checksum, otype)
                st = os.lstat(src)
                written.append((checksum, otype, st.st_size))
                if otype is ObjectType.FILE:
                    self.inodes.append((st.st_dev, st.st_ino, checksum))
                os.rename(src, dest)
            if self.fsync and touched:
                _fs.syncfs_path(objdir)
        finally:
            self._finish()
        return written

    def _check_complete(self) -> None:
        for size in self._staged.values():
            if not isinstance(size, int):
                raise StoreError("internal: transaction committed while an object was "
                                 "still being written")

    @property
    def stats(self) -> TransactionStats:
        """Counts so far (ostree's --table-output figures)."""
        st = TransactionStats(content_cache_hits=self.content_cache_hits)
        for (_c, otype), size in list(self._staged.items()):
            if not isinstance(size, int):
                continue
            if otype is ObjectType.FILE:
                st.content_written += 1
                st.content_bytes_written += size
            else:
                st.metadata_written += 1
        st.metadata_total = _peek(self._metadata_calls)
        st.content_total = _peek(self._content_calls) + self.content_cache_hits
        return st

    def abort(self) -> None:
        if not self._done:
            self._finish()

    def _finish(self) -> None:
        self._done = True
        try:
            _rmtree(self.staging)
            (self.repo.path / "tmp" / f"{self.staging.name}-lock").unlink(missing_ok=True)
        finally:
            if self._staging_lock_fd is not None:
                os.close(self._staging_lock_fd)
                self._staging_lock_fd = None
            self._lock_cm.__exit__(None, None, None)

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        if et is None and not self._done:
            self.commit()
        else:
            self.abort()


def _peek(counter: itertools.count[int]) -> int:
    """The number of next() calls so far on a counter started at 0, without changing it.

    (itertools.count is the lock-free counter here: next() on it is atomic.)"""
    return next(copy.copy(counter))


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
