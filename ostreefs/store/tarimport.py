"""Importing a tar stream into a commit (``--tree=tar=FILE``) without unpacking it.

Members are read in order with :mod:`tarfile` in stream mode, so a tar on a pipe works
and no member ever touches the disk outside the object store: regular files go to the
transaction as bytes (small ones hashed by the commit's worker pool, large ones streamed
in chunks), symlinks become symlink objects, directories dirmeta. Compression is found
from the magic bytes: gzip, bzip2 and xz by :mod:`tarfile`, zstd through the ``zstd``
command in a pipe.

What ostree 2022.7 does, and what is done here:

* Names: a leading ``/``, ``./``, empty and ``.`` components are dropped; any ``..``
  component is refused. Hard link targets are normalised the same way.
* A member whose parent directory is not in the tree is an error, unless
  ``autocreate_parents``: then, as ostree does, every directory from the root down to the
  parent is (re)set to mode 0755 owned by the member's uid/gid, without xattrs (the
  commit modifiers apply to that owner here; ostree leaves it unmodified). Without an
  entry for the root (``./``) and without autocreate, the tree has no root metadata,
  which ostree reports as "Can't commit an empty tree".
* Later members replace earlier files of the same name; a directory member over an
  existing directory only changes its metadata. A non-directory over a directory, or a
  directory over a non-directory, is refused (ostree errors or aborts).
* Hard links are resolved after the last member, by path in the tree built so far,
  never through a symlink; they share the target's content object (so its owner, mode
  and xattrs), or its symlink object.
* Symlinks are stored with mode 0777, whatever the tar says (ostree hashes the tar's
  mode but writes a 0777 link, which its fsck then rejects).
* ``--canonical-permissions`` drops xattrs as for a directory commit (ostree's tar
  import keeps them). Names are always UTF-8 (libarchive in ostree converts them to the
  locale's charset, so under ``LC_ALL=C`` ostree refuses non-ASCII names).
* xattrs come from ``SCHILY.xattr.*`` (and libarchive's ``LIBARCHIVE.xattr.*``) PAX
  records, sorted and without empty values as for a directory commit. (ostree hashes
  them in reverse archive order and keeps empty values, which its own fsck then reports
  as corrupt on bare repos, so ostree's checksums differ for files with 2+ xattrs.)
* Devices, fifos and sockets are refused, as ostree refuses them.

Nothing is written to ``refs/`` here; an error leaves the transaction to be aborted.
"""

from __future__ import annotations

import base64
import binascii
import io
import lzma
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import urllib.parse
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import IO

from ostreefs.errors import StoreError
from ostreefs.store.commit import MTree, _Slot, _Writer
from ostreefs.store.objects import DirMeta, FileHeader, ObjectType, Xattrs, normalize_xattrs
from ostreefs.store.repo import READ_CHUNK, Repo
from ostreefs.store.transaction import SMALL_FILE, Transaction

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Small files handed to the worker pool per task, and bytes per task.
BATCH_FILES = 64
BATCH_BYTES = 4 << 20
#: At most this many bytes of small files wait for a worker; the reader blocks beyond.
MAX_INFLIGHT = 64 << 20

_Batch = list[tuple[FileHeader, bytes, _Slot]]


class TarReadError(StoreError):
    """Cannot read tar {0}: {1}"""


class UnsafeTarMember(StoreError):
    """Refusing tar member "{0}": {1}"""


class TarMemberError(StoreError):
    """Cannot import tar member "{0}": {1}"""


def import_tar(repo: Repo, txn: Transaction, writer: _Writer, root: MTree, source: str, *,
               autocreate_parents: bool = False, require_root: bool = False) -> None:
    """Overlay the tar at ``source`` (a path, or ``-`` for standard input) onto ``root``.

    Objects go to ``txn``; small files are stored by ``writer``'s pool, whose
    :meth:`_Writer.wait` the caller runs before writing trees. With ``require_root``
    (the tar is the last source), a root directory left without metadata is an error.
    """
    with _open_stream(source) as stream:
        try:
            tf = tarfile.open(fileobj=stream, mode="r|*", encoding="utf-8",
                              errors="surrogateescape")
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise TarReadError(source, _describe(e)) from None
        imp = _Importer(repo, txn, writer, root, autocreate_parents)
        try:
            imp.read_members(tf)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as e:
            raise TarReadError(source, _describe(e)) from None
        imp.flush()
    imp.resolve_hardlinks()
    if root.meta is None and root.base is None:
        if autocreate_parents:
            root.meta = imp.autocreated_meta(0, 0)
        elif require_root:
            raise TarReadError(source, "no entry for the root directory ('./')",
                               hint="pass --tar-autocreate-parents to create it (0755, "
                                    "owned by root)")


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    msg = str(e) or type(e).__name__
    if isinstance(e, tarfile.ReadError) and msg.startswith("file could not be opened"):
        return "not a tar archive (or an unsupported compression)"
    return msg


def split_member_path(name: str) -> list[str]:
    """A member name as path components: ``/``, ``./`` and empty parts dropped.

    Any ``..`` component is refused: ostree refuses it too, and it is the one way a name
    could point outside the tree.
    """
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeTarMember(name, "the path contains '..'")
    for p in parts:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise UnsafeTarMember(name.encode("utf-8", "surrogateescape").decode(
                "utf-8", "replace"), "the name is not valid UTF-8",
                hint="ostree stores only UTF-8 names") from None
    return parts


def _member_xattrs(m: tarfile.TarInfo) -> list[tuple[bytes, bytes]]:
    """xattrs from the member's PAX records (GNU tar's and libarchive's spellings)."""
    out: dict[bytes, bytes] = {}
    other: dict[bytes, bytes] = {}
    for key, value in m.pax_headers.items():
        if key.startswith("SCHILY.xattr."):
            name = key[len("SCHILY.xattr."):].encode("utf-8", "surrogateescape")
            out[name] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len("LIBARCHIVE.xattr."):])
            try:
                raw = value.encode("ascii")
                other[name] = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
            except (UnicodeEncodeError, binascii.Error):
                raise UnsafeTarMember(m.name, f"bad base64 in the xattr record {key}") from None
    for xname, xvalue in other.items():
        out.setdefault(xname, xvalue)
    return list(out.items())


class _Importer:
    """Turns tar members into MTree entries and objects."""

    def __init__(self, repo: Repo, txn: Transaction, writer: _Writer, root: MTree,
                 autocreate: bool) -> None:
        self.repo = repo
        self.txn = txn
        self.writer = writer
        self.mod = writer.mod
        self.root = root
        self.autocreate = autocreate
        #: (member name, path parts, target parts, uid, gid) of each hard link.
        self.hardlinks: list[tuple[str, list[str], list[str], int, int]] = []
        self.batch: _Batch = []
        self.batch_bytes = 0
        self.inflight: deque[tuple[Future[None], int]] = deque()
        self.inflight_bytes = 0
        self._autometa: dict[tuple[int, int], str] = {}

    # ---------------------------------------------------------------- members

    def read_members(self, tf: tarfile.TarFile) -> None:
        while True:
            m = tf.next()
            if m is None:
                return
            # Stream mode keeps every header it has read; nothing here needs them.
            tf.members.clear()  # type: ignore[attr-defined]
            self._member(tf, m)

    def _member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = split_member_path(m.name)
        if m.isdir():
            self._dir(m, parts)
            return
        if not parts:
            raise UnsafeTarMember(m.name, "a non-directory names the root")
        if m.islnk():
            target = split_member_path(m.linkname)
            if not target:
                raise UnsafeTarMember(m.name, "the hard link points at the root")
            self.hardlinks.append((m.name, parts, target, m.uid, m.gid))
        elif m.issym():
            parent = self._parent(m.name, parts, m.uid, m.gid)
            self._put(m.name, parent, parts[-1], self._symlink(m))
        elif m.isreg():
            parent = self._parent(m.name, parts, m.uid, m.gid)
            self._put(m.name, parent, parts[-1], self._regular(tf, m))
        else:
            raise TarMemberError(m.name, "unsupported file type (device, fifo or socket)",
                                 hint="ostree stores only files, symlinks and directories")

    def _header(self, m: tarfile.TarInfo, fmt: int) -> tuple[int, int, int, Xattrs]:
        perms = 0o777 if fmt == stat.S_IFLNK else m.mode & 0o7777
        xattrs = () if self.mod.no_xattrs else normalize_xattrs(_member_xattrs(m))
        return self.mod.apply(fmt | perms, m.uid, m.gid, xattrs)

    def _dir(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        mode, uid, gid, xattrs = self._header(m, stat.S_IFDIR)
        meta = self.txn.write_metadata(ObjectType.DIR_META,
                                       DirMeta(uid, gid, mode, xattrs).to_bytes())
        if not parts:
            node = self.root
        else:
            parent = self._parent(m.name, parts, m.uid, m.gid)
            name = parts[-1]
            if name in parent.files:
                raise TarMemberError(m.name, "cannot replace a file with a directory")
            node = parent.dirs.get(name) or parent.dirs.setdefault(name, MTree())
        node.expand(self.repo)
        node.meta = meta

    def _symlink(self, m: tarfile.TarInfo) -> str:
        target = m.linkname
        if not target:
            raise TarMemberError(m.name, "symlink without a target")
        try:
            target.encode("utf-8")
        except UnicodeEncodeError:
            raise TarMemberError(m.name, "the symlink target is not valid UTF-8") from None
        mode, uid, gid, xattrs = self._header(m, stat.S_IFLNK)
        return self.txn.write_symlink(FileHeader(uid, gid, mode, target, xattrs))

    def _regular(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> str | _Slot:
        mode, uid, gid, xattrs = self._header(m, stat.S_IFREG)
        header = FileHeader(uid, gid, mode, "", xattrs)
        f = tf.extractfile(m)
        if f is None:
            raise TarMemberError(m.name, "no data for a regular file")
        size = m.size
        if size > SMALL_FILE:
            chunks = iter(lambda: f.read(READ_CHUNK), b"")
            return self.txn.write_file_chunks(header, chunks, size)
        data = f.read(size) if size else b""
        if len(data) != size:
            raise TarMemberError(m.name, "the archive ends inside this file")
        slot = _Slot()
        self.batch.append((header, data, slot))
        self.batch_bytes += size
        if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
            self.flush()
        return slot

    # ------------------------------------------------------------------ tree

    def _put(self, member: str, parent: MTree, name: str, value: str | _Slot) -> None:
        if name in parent.dirs:
            raise TarMemberError(member, "cannot replace a directory with a file")
        parent.files[name] = value

    def _parent(self, member: str, parts: list[str], uid: int, gid: int) -> MTree:
        """The (expanded) directory that will hold ``parts[-1]``."""
        node = self.root
        node.expand(self.repo)
        for i, name in enumerate(parts[:-1]):
            child = node.dirs.get(name)
            if child is None:
                where = "/".join(parts[: i + 1])
                if name in node.files:
                    raise UnsafeTarMember(member, f"{where} is not a directory")
                if not self.autocreate:
                    raise TarMemberError(member, f"no directory {where} in the archive",
                                         hint="pass --tar-autocreate-parents to create "
                                              "missing parent directories")
                return self._autocreate(member, parts[:-1], uid, gid)
            child.expand(self.repo)
            node = child
        return node

    def autocreated_meta(self, uid: int, gid: int) -> str:
        key = (uid, gid)
        meta = self._autometa.get(key)
        if meta is None:
            mode, muid, mgid, _ = self.mod.apply(stat.S_IFDIR | 0o755, uid, gid, ())
            meta = self._autometa[key] = self.txn.write_metadata(
                ObjectType.DIR_META, DirMeta(muid, mgid, mode).to_bytes())
        return meta

    def _autocreate(self, member: str, dirs: list[str], uid: int, gid: int) -> MTree:
        """ostree's autocreate: every directory from the root down gets default metadata."""
        meta = self.autocreated_meta(uid, gid)
        node = self.root
        node.expand(self.repo)
        node.meta = meta
        for i, name in enumerate(dirs):
            if name in node.files:
                raise UnsafeTarMember(member, f"{'/'.join(dirs[: i + 1])} is not a directory")
            child = node.dirs.get(name) or node.dirs.setdefault(name, MTree())
            child.expand(self.repo)
            child.meta = meta
            node = child
        return node

    def _lookup_file(self, member: str, target: list[str]) -> str | _Slot:
        node = self.root
        for name in target[:-1]:
            node.expand(self.repo)
            child = node.dirs.get(name)
            if child is None:
                raise TarMemberError(member, f"hard link target {'/'.join(target)} "
                                             "is not in the archive")
            node = child
        node.expand(self.repo)
        name = target[-1]
        if name in node.dirs:
            raise TarMemberError(member, f"hard link target {'/'.join(target)} "
                                         "is a directory")
        value = node.files.get(name)
        if value is None:
            raise TarMemberError(member, f"hard link target {'/'.join(target)} "
                                         "is not in the archive")
        return value

    def resolve_hardlinks(self) -> None:
        for member, parts, target, uid, gid in self.hardlinks:
            value = self._lookup_file(member, target)
            parent = self._parent(member, parts, uid, gid)
            self._put(member, parent, parts[-1], value)

    # --------------------------------------------------------------- workers

    def flush(self) -> None:
        """Hand the current batch of small files to the pool (bounded memory)."""
        if self.batch:
            fut = self.writer.pool.submit(self._store_batch, self.batch)
            self.writer.batches.append(fut)
            self.inflight.append((fut, self.batch_bytes))
            self.inflight_bytes += self.batch_bytes
            self.batch = []
            self.batch_bytes = 0
        while self.inflight and (self.inflight_bytes > MAX_INFLIGHT
                                 or self.inflight[0][0].done()):
            fut, n = self.inflight.popleft()
            fut.result()
            self.inflight_bytes -= n

    def _store_batch(self, batch: _Batch) -> None:
        for header, data, slot in batch:
            try:
                slot.value = self.txn.write_file_bytes(header, data)
            except BaseException as e:  # noqa: B036 - surfaces when the tree is written
                slot.error = e


# ----------------------------------------------------------------------- input


class _Prefixed(io.RawIOBase):
    """A binary stream with some already-read bytes put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head = head
        self.rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        if self.head:
            n = min(len(view), len(self.head))
            view[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(view))
        view[: len(data)] = data
        return len(data)


def _read_head(f: IO[bytes], n: int) -> bytes:
    out = b""
    while len(out) < n:
        more = f.read(n - len(out))
        if not more:
            break
        out += more
    return out


@contextmanager
def _open_stream(source: str) -> Iterator[IO[bytes]]:
    """The tar's uncompressed-or-tarfile-decompressible bytes (zstd undone here)."""
    if source == "-":
        raw: IO[bytes] = sys.stdin.buffer
    else:
        try:
            raw = open(source, "rb")
        except OSError as e:
            raise TarReadError(source, e.strerror or str(e)) from None
    try:
        try:
            head = _read_head(raw, len(ZSTD_MAGIC))
        except OSError as e:
            raise TarReadError(source, e.strerror or str(e)) from None
        if head == ZSTD_MAGIC:
            with _zstd_stream(source, head, raw) as out:
                yield out
        else:
            yield io.BufferedReader(_Prefixed(head, raw), READ_CHUNK)
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


@contextmanager
def _zstd_stream(source: str, head: bytes, raw: IO[bytes]) -> Iterator[IO[bytes]]:
    """Decompress through the ``zstd`` command: no zstd module ships with Python 3.11."""
    exe = shutil.which("zstd")
    if exe is None:
        raise TarReadError(source, "zstd-compressed, and the zstd command is not installed",
                           hint="install zstd, or decompress the tar first")
    proc = subprocess.Popen([exe, "-d", "-c", "-q"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    feed_error: list[OSError] = []

    def feed(dst: IO[bytes]) -> None:
        try:
            with dst:
                dst.write(head)
                while block := raw.read(READ_CHUNK):
                    dst.write(block)
        except BrokenPipeError:
            pass
        except OSError as e:
            feed_error.append(e)

    feeder = threading.Thread(target=feed, args=(proc.stdin,), name="ostreefs-zstd-feed",
                              daemon=True)
    feeder.start()
    try:
        yield proc.stdout
        # Let zstd finish (tarfile stops at the end-of-archive blocks), then check it.
        while proc.stdout.read(READ_CHUNK):
            pass
    except BaseException as e:
        rc = proc.poll()
        if rc is None and isinstance(e, TarReadError):
            # A stream cut short is usually zstd failing: its message says more.
            try:
                rc = proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                rc = None
        proc.kill()
        err = _finish(proc, feeder, 1.0)
        if rc:
            raise TarReadError(source, _zstd_message(err, rc)) from None
        raise
    err = _finish(proc, feeder, None)
    rc = proc.returncode
    if feed_error:
        raise TarReadError(source, feed_error[0].strerror or str(feed_error[0]))
    if rc != 0:
        raise TarReadError(source, _zstd_message(err, rc))


def _finish(proc: subprocess.Popen[bytes], feeder: threading.Thread,
            timeout: float | None) -> str:
    """Close zstd's pipes, reap it, and return what it said on stderr."""
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    # On an error the feeder may be blocked reading a slow stdin; it is a daemon thread.
    feeder.join(timeout)
    err = proc.stderr.read().decode("utf-8", "replace").strip()
    proc.stderr.close()
    proc.wait()
    return err


def _zstd_message(err: str, rc: int) -> str:
    return "zstd: " + (err.splitlines()[-1] if err else f"exit status {rc}")

__all__ = ["import_tar", "split_member_path", "TarReadError", "TarMemberError",
           "UnsafeTarMember"]
