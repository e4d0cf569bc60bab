"""Opening, creating and reading OSTree repositories.

A :class:`Repo` is a directory laid out exactly as ``ostree init`` lays it out; nothing
here keeps state that ostree would not understand, except the derived index under
``ostreefs/`` which may be deleted at any time. Writes go through a
:class:`~ostreefs.store.transaction.Transaction`.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ostreefs import _fs
from ostreefs.errors import (
    CorruptObject,
    LockTimeout,
    MalformedData,
    NotARepository,
    ObjectMissing,
    RepoExists,
    StoreError,
)
from ostreefs.store.config import KeyFile, RepoMode
from ostreefs.store.objects import (
    Commit,
    DirMeta,
    DirTree,
    FileHeader,
    Metadata,
    ObjectType,
    decode_metadata,
    encode_metadata,
    is_checksum,
)

if TYPE_CHECKING:
    from ostreefs.store.index import Index
    from ostreefs.store.transaction import Transaction

INIT_DIRS = ("extensions", "objects", "refs", "refs/heads", "refs/mirrors", "refs/remotes",
             "state", "tmp", "tmp/cache")
OSTREEMETA_XATTR = "user.ostreemeta"
READ_CHUNK = 1 << 20


class Repo:
    """An open repository. Cheap to create; holds no file descriptors between calls."""

    def __init__(self, path: Path, config: KeyFile) -> None:
        self.path = path
        self.config = config
        mode = config.get("core", "mode")
        self.mode = RepoMode.parse(mode) if mode is not None else RepoMode.BARE
        self._objdir = f"{path}/objects/"
        self._file_ext = ".filez" if self.mode.is_archive else ".file"
        self._lock_depth = 0
        self._lock_kind: int | None = None  # an _fs.LOCK_* value while held
        self._lock_fd: int | None = None
        self._lock_cm: object = None
        self._lock_guard = threading.RLock()
        self._index: Index | None = None

    # -------------------------------------------------------------- create and open

    @classmethod
    def init(cls, path: str | os.PathLike[str], mode: RepoMode = RepoMode.BARE,
             collection_id: str | None = None) -> Repo:
        """Create a repository as ``ostree init`` does; an existing repo is reopened."""
        p = Path(path)
        cfg_path = p / "config"
        if cfg_path.exists():
            repo = cls.open(p)
            if repo.mode is not mode:
                raise RepoExists(p, hint=f"it is a {repo.mode.cli_name} repository")
            return repo
        try:
            p.mkdir(parents=True, exist_ok=True)
            if p.is_dir() and any(x.name not in INIT_DIRS for x in p.iterdir()):
                raise RepoExists(p)
            for d in INIT_DIRS:
                (p / d).mkdir(exist_ok=True)
            text = f"[core]\nrepo_version=1\nmode={mode.value}\n"
            if collection_id:
                text += f"collection-id={collection_id}\n"
            _fs.atomic_write(cfg_path, text.encode(), fsync=True)
        except OSError as e:
            raise StoreError(f"Cannot create repository at {p}: {e.strerror}") from None
        return cls.open(p)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Repo:
        """Open an existing repository, checking its config as ostree does."""
        p = Path(path)
        try:
            text = (p / "config").read_text(encoding="utf-8")
        except FileNotFoundError:
            raise NotARepository(p, "no config file", hint="create one with 'init'") from None
        except NotADirectoryError:
            raise NotARepository(p, "not a directory") from None
        except (OSError, UnicodeDecodeError) as e:
            raise NotARepository(p, str(e)) from None
        if not (p / "objects").is_dir():
            raise NotARepository(p, "no objects directory")
        cfg = KeyFile(text)
        version = cfg.get("core", "repo_version")
        if version != "1":
            raise NotARepository(p, f"Invalid repository version {version!r}")
        if cfg.get("core", "archive") is not None and cfg.get("core", "mode") is None:
            raise NotARepository(p, "legacy 'archive' key is not supported")
        return cls(p, cfg)

    def reload_config(self) -> None:
        self.config = KeyFile((self.path / "config").read_text(encoding="utf-8"))

    def write_config(self) -> None:
        _fs.atomic_write(self.path / "config", self.config.to_text().encode(), fsync=True)

    @property
    def collection_id(self) -> str | None:
        return self.config.get("core", "collection-id")

    @property
    def fsync_enabled(self) -> bool:
        return self.config.get_bool("core", "fsync", True)

    @property
    def per_object_fsync(self) -> bool:
        return self.config.get_bool("core", "per-object-fsync", False)

    @property
    def zlib_level(self) -> int:
        v = self.config.get("archive", "zlib-level")
        try:
            return max(1, min(9, int(v))) if v else 6
        except ValueError:
            return 6

    @property
    def lock_timeout(self) -> float:
        v = self.config.get("core", "lock-timeout-secs")
        try:
            return float(v) if v else 30.0
        except ValueError:
            return 30.0

    @property
    def index(self) -> Index:
        """The derived LMDB index, opened on first use and brought up to date."""
        if self._index is not None:
            self._index.check_process()
        else:
            from ostreefs.store.index import Index

            self._index = Index.open(self)
        return self._index

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
            self._index = None

    # ----------------------------------------------------------------------- lock

    @contextmanager
    def lock(self, exclusive: bool = False) -> Iterator[None]:
        """Hold the repo lock ostree uses: shared for writers, exclusive for deleters.

        Recursive within this object; an exclusive request inside a shared hold upgrades.
        """
        if not self.config.get_bool("core", "locking", True):
            yield
            return
        kind = _fs.LOCK_EX if exclusive else _fs.LOCK_SH
        with self._lock_guard:
            prev_kind = self._lock_kind
            if self._lock_fd is None:
                try:
                    fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                 0o640)
                except OSError as e:
                    if e.errno in (errno.EROFS, errno.EACCES) and not exclusive:
                        fd = -1  # a read-only repo is read without a lock, as ostree does
                    else:
                        raise StoreError(f"Cannot lock {self.path}: {e.strerror}") from None
                if fd < 0:
                    readonly = True
                else:
                    readonly = False
                    self._lock_fd = fd
            else:
                readonly = False
            if not readonly and (prev_kind is None or
                                 (kind == _fs.LOCK_EX and prev_kind != _fs.LOCK_EX)):
                assert self._lock_fd is not None
                try:
                    self._acquire(self._lock_fd, kind, exclusive)
                except BaseException:
                    if self._lock_depth == 0:
                        os.close(self._lock_fd)
                        self._lock_fd = None
                    raise
                self._lock_kind = kind
        if readonly:
            yield
            return
        with self._lock_guard:
            self._lock_depth += 1
        try:
            yield
        finally:
            with self._lock_guard:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    assert self._lock_fd is not None
                    os.close(self._lock_fd)
                    self._lock_fd = None
                    self._lock_kind = None
                elif prev_kind is not None and prev_kind != self._lock_kind:
                    assert self._lock_fd is not None
                    self._acquire(self._lock_fd, prev_kind, False)
                    self._lock_kind = prev_kind

    def _acquire(self, fd: int, kind: int, exclusive: bool) -> None:
        import time

        deadline = time.monotonic() + self.lock_timeout
        delay = 0.005
        while not _fs.try_ofd_lock(fd, kind):
            if time.monotonic() >= deadline:
                raise LockTimeout(self.path, self.lock_timeout,
                                  "exclusive" if exclusive else "shared",
                                  hint="another ostree or ostreefs process holds it")
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def transaction(self, fsync: bool | None = None) -> Transaction:
        """Start writing objects; see Transaction for the durability rules."""
        from ostreefs.store.transaction import Transaction

        return Transaction(self, self.fsync_enabled if fsync is None else fsync)

    # -------------------------------------------------------------------- objects

    def object_path(self, checksum: str, otype: ObjectType) -> Path:
        return Path(self.object_path_str(checksum, otype))

    def object_path_str(self, checksum: str, otype: ObjectType) -> str:
        """The object's path as a string: per-file loops avoid pathlib's cost."""
        if otype is ObjectType.FILE:
            return f"{self._objdir}{checksum[:2]}/{checksum[2:]}{self._file_ext}"
        return f"{self._objdir}{checksum[:2]}/{checksum[2:]}.{otype.value}"

    def has_object(self, checksum: str, otype: ObjectType) -> bool:
        """Whether the object is on disk (the index is never asked: it may lag)."""
        try:
            os.lstat(self.object_path_str(checksum, otype))
            return True
        except FileNotFoundError:
            return False

    def read_metadata(self, checksum: str, otype: ObjectType) -> bytes:
        if not is_checksum(checksum):
            raise MalformedData("checksum", f"{checksum!r} is not a SHA-256 in hex")
        try:
            return _fs.read_file(self.object_path_str(checksum, otype))
        except FileNotFoundError:
            raise ObjectMissing(checksum, otype.value) from None
        except IsADirectoryError:
            raise CorruptObject(checksum, otype.value, "is a directory") from None

    def load_commit(self, checksum: str) -> Commit:
        data = self.read_metadata(checksum, ObjectType.COMMIT)
        with _corrupt_as(checksum, "commit"):
            return Commit.from_bytes(data)

    def load_dirtree(self, checksum: str) -> DirTree:
        data = self.read_metadata(checksum, ObjectType.DIR_TREE)
        with _corrupt_as(checksum, "dirtree"):
            return DirTree.from_bytes(data)

    def load_dirmeta(self, checksum: str) -> DirMeta:
        data = self.read_metadata(checksum, ObjectType.DIR_META)
        with _corrupt_as(checksum, "dirmeta"):
            return DirMeta.from_bytes(data)

    def read_detached_metadata(self, commit: str) -> Metadata | None:
        try:
            data = self.read_metadata(commit, ObjectType.COMMIT_META)
        except ObjectMissing:
            return None
        return decode_metadata(data, "detached metadata")

    def write_detached_metadata(self, commit: str, metadata: Metadata | None) -> None:
        path = self.object_path(commit, ObjectType.COMMIT_META)
        with self.lock():
            if metadata is None:
                path.unlink(missing_ok=True)
                return
            path.parent.mkdir(exist_ok=True)
            _fs.atomic_write(path, encode_metadata(metadata), fsync=self.fsync_enabled)

    def iter_objects(self) -> Iterator[tuple[str, ObjectType]]:
        """Every object file in ``objects/``, by scanning the directory tree."""
        objdir = self.path / "objects"
        for sub in sorted(os.listdir(objdir)):
            if len(sub) != 2:
                continue
            try:
                names = os.listdir(objdir / sub)
            except NotADirectoryError:
                continue
            for name in names:
                yield from _parse_object_name(sub, name)

    # ------------------------------------------------------------- content objects

    def load_file_header(self, checksum: str) -> tuple[FileHeader, int]:
        """A content object's metadata and payload size, without reading the payload."""
        path = self.object_path_str(checksum, ObjectType.FILE)
        try:
            if self.mode.is_archive:
                with open(path, "rb") as f:
                    head = f.read(4096)
                    if len(head) >= 8:
                        need = 8 + int.from_bytes(head[:4], "big")
                        if need > len(head) and need < (1 << 24):
                            head += f.read(need - len(head))
                header, size, _ = FileHeader.parse_archive(head)
                return header, size
            st = os.lstat(path)
            if self.mode is RepoMode.BARE_USER:
                meta = os.getxattr(path, OSTREEMETA_XATTR, follow_symlinks=False)
                header = FileHeader.from_bareuser_meta(meta)
                if header.is_symlink:
                    raw = _fs.read_file(path)
                    raw = raw[:-1] if raw.endswith(b"\0") else raw
                    header = FileHeader(header.uid, header.gid, header.mode,
                                        raw.decode("utf-8", "surrogateescape"),
                                        header.xattrs)
                    return header, 0
                return header, st.st_size
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if self.mode is RepoMode.BARE_USER_ONLY:
                    return FileHeader(0, 0, st.st_mode, target), 0
                return FileHeader(st.st_uid, st.st_gid, st.st_mode, target,
                                  _xattrs_sorted(path)), 0
            if not stat.S_ISREG(st.st_mode):
                raise CorruptObject(checksum, "file", "not a regular file or symlink")
            if self.mode is RepoMode.BARE_USER_ONLY:
                return FileHeader(0, 0, st.st_mode), st.st_size
            return FileHeader(st.st_uid, st.st_gid, st.st_mode, "",
                              _xattrs_sorted(path)), st.st_size
        except FileNotFoundError:
            raise ObjectMissing(checksum, "file") from None
        except MalformedData as e:
            raise CorruptObject(checksum, "file", e.args[1]) from None
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise CorruptObject(checksum, "file", f"no {OSTREEMETA_XATTR} xattr") from None
            raise StoreError(f"Cannot read object {checksum}: {e.strerror}") from None

    def iter_file_payload(self, checksum: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """A regular file's bytes, decompressed in archive mode, streamed in chunks."""
        path = self.object_path_str(checksum, ObjectType.FILE)
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise ObjectMissing(checksum, "file") from None
        with f:
            if not self.mode.is_archive:
                while block := f.read(chunk):
                    yield block
                return
            head = f.read(8)
            if len(head) < 8:
                raise CorruptObject(checksum, "file", "truncated archive header")
            f.seek(8 + int.from_bytes(head[:4], "big"))
            d = zlib.decompressobj(-15)
            try:
                while True:
                    # Bounded output per step: a highly compressible object must not
                    # inflate into memory all at once.
                    block = d.unconsumed_tail or f.read(chunk)
                    if not block:
                        break
                    out = d.decompress(block, chunk)
                    if out:
                        yield out
                tail = d.flush()
            except zlib.error as e:
                raise CorruptObject(checksum, "file", f"bad compressed data: {e}") from None
            if tail:
                yield tail

    def read_file_bytes(self, checksum: str) -> bytes:
        return b"".join(self.iter_file_payload(checksum))


@contextmanager
def _corrupt_as(checksum: str, what: str) -> Iterator[None]:
    """Report a parse failure as a corrupt object, naming it."""
    try:
        yield
    except MalformedData as e:
        raise CorruptObject(checksum, what, e.args[1]) from None


def _xattrs_sorted(path: str) -> tuple[tuple[bytes, bytes], ...]:
    from ostreefs.store.objects import normalize_xattrs

    return normalize_xattrs(_fs.list_xattrs(path))


def _parse_object_name(sub: str, name: str) -> Iterator[tuple[str, ObjectType]]:
    stem, dot, ext = name.partition(".")
    if not dot:
        return
    csum = sub + stem
    if not is_checksum(csum):
        return
    try:
        yield csum, ObjectType.from_ext(ext)
    except ValueError:
        return
