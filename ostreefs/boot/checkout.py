"""Materialising commits as real directory trees (``ostreefs checkout``).

Files are hardlinked to their objects whenever the repo mode lets an object's inode
stand for the file as it must appear (bare as root, bare-user and bare-user-only in
user mode, archive in user mode through the uncompressed-object cache), and copied
otherwise, or when DEST is on another filesystem. ostree makes the same choices, so
checkouts by either tool have the same hardlink groups.

Everything below DEST is created through directory file descriptors with
``O_NOFOLLOW``: a symlink planted in DEST (or written earlier by the same checkout)
can never redirect a later write outside DEST, and names come from dirtrees whose
parser refuses ``..``, ``.`` and ``/``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.errors import OstreefsError, StoreError
from ostreefs.store import tree as treemod
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import DirMeta, FileHeader, ObjectType
from ostreefs.store.repo import READ_CHUNK, Repo

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
CACHE_DIR = "uncompressed-objects-cache"
#: Directories with at least this many files are checked out on a thread pool.
PARALLEL_MIN = 48
PARALLEL_CHUNK = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class CheckoutError(OstreefsError):
    """{0}"""


class DestinationExists(CheckoutError):
    """Destination {0} already exists"""


@dataclass
class CheckoutOptions:
    """ostree's checkout options; defaults are ostree's."""

    user_mode: bool = False
    subpath: str = "/"
    union: bool = False
    union_add: bool = False
    union_identical: bool = False
    whiteouts: bool = False
    allow_noent: bool = False
    force_copy: bool = False
    require_hardlinks: bool = False
    bareuseronly_dirs: bool = False
    disable_cache: bool = False
    fsync: bool = False


@dataclass
class CheckoutStats:
    files: int = 0
    dirs: int = 0
    hardlinked: int = 0
    copied: int = 0
    skipped: int = 0
    whiteouts: int = 0
    failures: list[str] = field(default_factory=list)


class _Checkout:
    def __init__(self, repo: Repo, opts: CheckoutOptions) -> None:
        self.repo = repo
        self.o = opts
        self.stats = CheckoutStats()
        mode = repo.mode
        self.union_any = opts.union or opts.union_add or opts.union_identical
        if opts.union_identical and not opts.require_hardlinks:
            raise CheckoutError("--union-identical requires --require-hardlinks")
        if opts.force_copy:
            self.link_mode = "copy"
        elif mode is RepoMode.BARE:
            self.link_mode = "copy" if opts.user_mode else "link"
        elif mode in (RepoMode.BARE_USER, RepoMode.BARE_USER_ONLY):
            self.link_mode = "link" if opts.user_mode or mode is RepoMode.BARE_USER_ONLY \
                else "copy"
        else:
            self.link_mode = "cache" if opts.user_mode and not opts.disable_cache else "copy"
        if opts.require_hardlinks and self.link_mode == "copy":
            if mode is RepoMode.BARE_USER and not opts.user_mode:
                raise CheckoutError("User repository mode requires user checkout mode "
                                    "to hardlink")
            raise CheckoutError(f"Cannot hardlink from a {mode.cli_name} repository "
                                "with these options", hint="drop -H to allow copies")
        self.can_link = self.link_mode != "copy"
        self.pool: ThreadPoolExecutor | None = None
        self._dirmetas: dict[str, DirMeta] = {}

    # ------------------------------------------------------------------ dirs

    def checkout_dir(self, parent_fd: int, name: str, tree: str, meta: str,
                     is_root: bool) -> None:
        dmeta = self._dirmetas.get(meta)
        if dmeta is None:  # a tree has few distinct dirmetas: parse each once
            if len(self._dirmetas) >= 4096:
                self._dirmetas.clear()
            dmeta = self._dirmetas[meta] = self.repo.load_dirmeta(meta)
        dtree = self.repo.load_dirtree(tree)
        if self.o.whiteouts and not is_root and any(n == OPAQUE_WHITEOUT
                                                    for n, _ in dtree.files):
            # An opaque directory replaces whatever lower layers put there, metadata
            # included: ostree removes it and creates it anew before filling it.
            _remove(parent_fd, name)
        created = True
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            if not self.union_any:
                raise DestinationExists(name if is_root else self._where(name)) from None
            created = False
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise CheckoutError(f"Cannot check out directory {self._where(name)}: "
                                    "a non-directory is in the way") from None
            raise
        self.stats.dirs += 1
        self._path.append(name)
        try:
            self._fill(fd, dtree)
            if created:
                self._apply_dir_meta(fd, dmeta)
            if self.o.fsync:
                os.fsync(fd)
        finally:
            self._path.pop()
            os.close(fd)

    _path: list[str]

    def _where(self, name: str) -> str:
        return "/".join([*self._path[1:], name]) or name

    def _apply_dir_meta(self, fd: int, m: DirMeta) -> None:
        mode = stat.S_IMODE(m.mode)
        if self.o.bareuseronly_dirs:
            mode &= 0o775
        if not self.o.user_mode:
            os.fchown(fd, m.uid, m.gid)
            for n, v in m.xattrs:
                os.setxattr(fd, n, v)
        os.fchmod(fd, mode)

    def _fill(self, fd: int, t: object) -> None:
        from ostreefs.store.objects import DirTree

        assert isinstance(t, DirTree)
        # Files, then directories, each in dirtree order; a whiteout acts where it
        # sorts, as in ostree (so it also removes an earlier entry of its own layer).
        if self.pool is not None and len(t.files) >= PARALLEL_MIN and not self.o.whiteouts:
            self._files_in_parallel(fd, t.files)
        elif (self.link_mode == "link" and self.can_link and not self.union_any
              and not self.o.whiteouts and not self.o.require_hardlinks):
            self._link_all(fd, t.files)
        else:
            for n, c in t.files:
                if self.o.whiteouts and n.startswith(WHITEOUT_PREFIX):
                    self._whiteout(fd, n)
                else:
                    self.checkout_file(fd, n, c)
        for n, dt, dm in t.dirs:
            self.checkout_dir(fd, n, dt, dm, False)

    def _link_all(self, fd: int, files: tuple[tuple[str, str], ...]) -> None:
        """The common case, hardlinks into a fresh directory, as one tight loop.

        Same decisions as :meth:`_link_source` and :meth:`_link` (a benchmark found the
        per-file method calls to be a large part of a hardlink checkout's time).
        """
        objdir = f"{self.repo.path}/objects/"
        lstat, link, getxattr, is_lnk = os.lstat, os.link, os.getxattr, stat.S_ISLNK
        bare = self.repo.mode is RepoMode.BARE
        bare_user = self.repo.mode is RepoMode.BARE_USER
        linked = copied = 0
        for i, (name, checksum) in enumerate(files):
            src = f"{objdir}{checksum[:2]}/{checksum[2:]}.file"
            try:
                st = lstat(src)
            except FileNotFoundError:
                raise StoreError(f"No such file object {checksum}") from None
            if is_lnk(st.st_mode):
                ok = bare
            elif st.st_size == 0:
                ok = False
            elif bare_user:
                meta = getxattr(src, "user.ostreemeta", follow_symlinks=False)
                ok = len(meta) >= 12 and not is_lnk(int.from_bytes(meta[8:12], "big"))
            else:
                ok = True
            if ok:
                try:
                    link(src, name, dst_dir_fd=fd, follow_symlinks=False)
                    linked += 1
                    continue
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                        raise
                    if e.errno == errno.EXDEV:  # another filesystem: copy from now on
                        self.can_link = False
                        self._tally(linked, copied)
                        for n, c in files[i:]:
                            self.checkout_file(fd, n, c)
                        return
            self._copy(fd, name, checksum)
            copied += 1
        self._tally(linked, copied)

    def _tally(self, linked: int, copied: int) -> None:
        self.stats.files += linked + copied
        self.stats.hardlinked += linked
        self.stats.copied += copied

    def _files_in_parallel(self, fd: int, files: tuple[tuple[str, str], ...]) -> None:
        """Link or copy a large directory's files on the pool (the syscalls overlap)."""
        assert self.pool is not None

        def run(chunk: tuple[tuple[str, str], ...]) -> list[str]:
            return [self._checkout_file(fd, n, c) for n, c in chunk]

        futures = [self.pool.submit(run, files[i:i + PARALLEL_CHUNK])
                   for i in range(0, len(files), PARALLEL_CHUNK)]
        errors = []
        for f in futures:
            try:
                for outcome in f.result():
                    self._count(outcome)
            except BaseException as e:  # noqa: B036 - first error re-raised below
                errors.append(e)
        if errors:
            raise errors[0]

    def _whiteout(self, fd: int, name: str) -> None:
        self.stats.whiteouts += 1
        if name == OPAQUE_WHITEOUT:
            return  # handled before the directory was (re)created
        target = name[len(WHITEOUT_PREFIX):]
        if target and target not in (".", ".."):
            _remove(fd, target)

    # ----------------------------------------------------------------- files

    def checkout_file(self, dir_fd: int, name: str, checksum: str) -> None:
        self._count(self._checkout_file(dir_fd, name, checksum))

    def _count(self, outcome: str) -> None:
        self.stats.files += 1
        setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    def _checkout_file(self, dir_fd: int, name: str, checksum: str) -> str:
        """Check out one file; return "skipped", "hardlinked" or "copied".

        Runs on worker threads: it touches no shared state but the file system.
        """
        if self.union_any and _exists(dir_fd, name):
            if self.o.union_add:
                return "skipped"
            if self.o.union_identical:
                if self._identical(dir_fd, name, checksum):
                    return "skipped"
                raise CheckoutError(f"Checkout of {self._where(name)} would replace a "
                                    "different existing file (--union-identical)")
            st = os.lstat(name, dir_fd=dir_fd)
            if stat.S_ISDIR(st.st_mode):
                raise CheckoutError(f"Cannot replace directory {self._where(name)} "
                                    "with a file")
            os.unlink(name, dir_fd=dir_fd)
        if self.can_link:
            src = self._link_source(checksum)
            if src is not None and self._link(src, dir_fd, name):
                return "hardlinked"
        self._copy(dir_fd, name, checksum)
        return "copied"

    def _link_source(self, checksum: str) -> str | None:
        """The file to hardlink for this object, or None where ostree would copy.

        Empty files are copied, as ostree copies them (one inode linked from every
        empty file of every checkout would soon hit the link-count limit); so are
        symlinks that are not stored as symlinks (bare-user) or not linkable.
        """
        if self.link_mode == "cache":
            return self._cached(checksum)
        src = self.repo.object_path_str(checksum, ObjectType.FILE)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise StoreError(f"No such file object {checksum}") from None
        if stat.S_ISLNK(st.st_mode):
            return src if self.repo.mode is RepoMode.BARE else None
        if st.st_size == 0:
            return None
        if self.repo.mode is RepoMode.BARE_USER:
            meta = os.getxattr(src, "user.ostreemeta", follow_symlinks=False)
            # (uuu...): the mode is the third big-endian u32, whatever follows it.
            if len(meta) < 12 or stat.S_ISLNK(int.from_bytes(meta[8:12], "big")):
                return None
        return src

    def _link(self, src: str, dir_fd: int, name: str) -> bool:
        try:
            os.link(src, name, dst_dir_fd=dir_fd, follow_symlinks=False)
            return True
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                if self.o.require_hardlinks:
                    raise CheckoutError(f"Cannot hardlink {self._where(name)}: "
                                        f"{e.strerror}") from None
                self.can_link = e.errno != errno.EXDEV
                return False
            raise

    def _cached(self, checksum: str) -> str | None:
        """The uncompressed-object cache entry for an archive object (made on demand)."""
        path = self.repo.path / CACHE_DIR / checksum[:2] / f"{checksum[2:]}.file"
        if os.path.lexists(path):
            return str(path)  # only non-empty regular files are ever cached
        header, size = self.repo.load_file_header(checksum)
        if header.is_symlink or size == 0:
            return None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / _fs.tmp_name()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                for block in self.repo.iter_file_payload(checksum):
                    _fs.write_all(fd, block)
                os.fchmod(fd, self._user_mode_bits(header.mode))
            finally:
                os.close(fd)
            os.utime(tmp, ns=(0, 0))
            os.rename(tmp, path)
        except OSError:
            return None  # read-only repo: plain copies still work
        return str(path)

    @staticmethod
    def _user_mode_bits(mode: int) -> int:
        return stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID)

    def _copy(self, dir_fd: int, name: str, checksum: str) -> None:
        header, _size = self.repo.load_file_header(checksum)
        if header.is_symlink:
            os.symlink(header.symlink_target, name, dir_fd=dir_fd)
            if not self.o.user_mode:
                os.chown(name, header.uid, header.gid, dir_fd=dir_fd, follow_symlinks=False)
                for n, v in header.xattrs:
                    _set_link_xattr(dir_fd, name, n, v)
            return
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        try:
            self._write_payload(fd, checksum)
            self._apply_file_meta(fd, header)
            if self.o.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _write_payload(self, fd: int, checksum: str) -> None:
        if not self.repo.mode.is_archive:
            src = os.open(self.repo.object_path_str(checksum, ObjectType.FILE),
                          os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                while True:
                    try:
                        n = os.copy_file_range(src, fd, 1 << 30)
                    except OSError as e:
                        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                            raise
                        while block := os.read(src, READ_CHUNK):
                            _fs.write_all(fd, block)
                        return
                    if n == 0:
                        return
            finally:
                os.close(src)
        for block in self.repo.iter_file_payload(checksum):
            _fs.write_all(fd, block)

    def _apply_file_meta(self, fd: int, h: FileHeader) -> None:
        if self.o.user_mode:
            os.fchmod(fd, self._user_mode_bits(h.mode))
            return
        os.fchown(fd, h.uid, h.gid)
        os.fchmod(fd, stat.S_IMODE(h.mode))  # after chown, which clears setuid
        for n, v in h.xattrs:
            os.setxattr(fd, n, v)

    def _identical(self, dir_fd: int, name: str, checksum: str) -> bool:
        """Whether the existing ``name`` already is this object (for --union-identical)."""
        from ostreefs.store.checksum import checksum_path

        st = os.lstat(name, dir_fd=dir_fd)
        obj = self.repo.object_path(checksum, ObjectType.FILE)
        try:
            ost = os.lstat(obj)
            if (ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino):
                return True
        except FileNotFoundError:
            pass
        if stat.S_ISDIR(st.st_mode):
            return False
        path = f"/proc/self/fd/{dir_fd}/{name}"
        header, _ = self.repo.load_file_header(checksum)
        if self.o.user_mode:
            if header.is_symlink != stat.S_ISLNK(st.st_mode):
                return False
            if header.is_symlink:
                return os.readlink(name, dir_fd=dir_fd) == header.symlink_target
            return _same_bytes(path, self.repo, checksum)
        return checksum_path(path) == checksum


def _same_bytes(path: str, repo: Repo, checksum: str) -> bool:
    with open(path, "rb") as f:
        for block in repo.iter_file_payload(checksum):
            if f.read(len(block)) != block:
                return False
        return f.read(1) == b""


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def _remove(dir_fd: int, name: str) -> None:
    """Remove ``name`` (a tree, without following symlinks) if it exists."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _set_link_xattr(dir_fd: int, name: str, key: bytes, value: bytes) -> None:
    os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", key, value, follow_symlinks=False)


def checkout(repo: Repo, commit: str, dest: str | os.PathLike[str],
             opts: CheckoutOptions | None = None, threads: int = 1) -> CheckoutStats:
    """Check out ``commit`` (a checksum) into ``dest``; see the module docstring.

    ``threads`` > 1 spreads large directories over a pool. Measured here (2 cores,
    ext4) it loses: per-file work is mostly Python holding the GIL, and the slow part,
    mkdir, is serialised by the kernel anyway. So the default is one thread.
    """
    opts = opts or CheckoutOptions()
    co = _Checkout(repo, opts)
    co._path = []
    if threads > 1:
        co.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ostreefs-checkout")
    dest_path = Path(dest)
    try:
        entry = treemod.lookup(repo, commit, opts.subpath)
    except treemod.PathNotFound:
        if opts.allow_noent:
            return co.stats
        raise
    parent = dest_path.parent if str(dest_path.parent) else Path(".")
    try:
        parent_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CheckoutError(f"Parent of {dest_path} does not exist") from None
    try:
        name = dest_path.name
        if not name or name in (".", ".."):
            raise CheckoutError(f"Invalid destination {dest_path}")
        with repo.lock():
            if entry.is_dir:
                co.checkout_dir(parent_fd, name, entry.checksum, entry.meta_checksum, True)
            else:
                co._path = [name]
                if _exists(parent_fd, name) and not co.union_any:
                    raise DestinationExists(dest_path)
                co.checkout_file(parent_fd, name, entry.checksum)
    except OSError as e:
        raise CheckoutError(f"Checkout into {dest_path} failed: {e.strerror}"
                            + (f": {e.filename}" if e.filename else "")) from None
    finally:
        os.close(parent_fd)
        if co.pool is not None:
            co.pool.shutdown(wait=True)
    return co.stats
