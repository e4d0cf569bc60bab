"""Verifying fetched objects and staging them in the local repository's mode.

Nothing a server sends is stored before its checksum is recomputed: a metadata object
is hashed as it came, a ``.filez`` is inflated and hashed as header plus payload
(ostree's content checksum), and only then is it written through the pull's
:class:`~ostreefs.store.transaction.Transaction`. An archive repository keeps the
compressed bytes as they came (ostree does the same); other modes get the file
re-written from header and payload, as a commit would write it.

These functions run on worker threads (zlib, hashlib and file I/O release the GIL).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import zlib
from collections.abc import Iterable, Iterator

from ostreefs import _fs
from ostreefs.errors import CorruptObject, MalformedData, StoreError
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import FileHeader, ObjectType
from ostreefs.store.transaction import Transaction

_CHUNK = 1 << 20


class BadFileMode(StoreError):
    """Content object {0}: invalid mode 0{1:04o} with bits 0{2:04o} (bare-user-only files)"""


def corrupt(checksum: str, what: str, actual: str) -> CorruptObject:
    return CorruptObject(checksum, what, f"checksum expected='{checksum}' actual='{actual}'")


def verify_metadata(checksum: str, otype: ObjectType, data: bytes) -> None:
    actual = hashlib.sha256(data).hexdigest()
    if actual != checksum:
        raise corrupt(checksum, otype.value, actual)


class HeaderCache:
    """Parsed ``.filez`` headers by their bytes past the size field.

    Most files of a tree share owner, mode and (no) xattrs, so their archive headers
    differ only in the leading size; parsing each distinct header once saves the
    GVariant decoding per object. Shared by threads: dict reads and writes are atomic.
    """

    def __init__(self) -> None:
        self._cache: dict[bytes, tuple[FileHeader, bytes]] = {}
        self._meta: dict[FileHeader, bytes] = {}

    def bareuser_meta(self, header: FileHeader) -> bytes:
        """The ``user.ostreemeta`` value of ``header``, encoded once per distinct header."""
        meta = self._meta.get(header)
        if meta is None:
            meta = header.bareuser_meta()
            if len(self._meta) < 4096:
                self._meta[header] = meta
        return meta

    def parse(self, checksum: str, head: bytes) -> tuple[FileHeader, bytes, int, int]:
        """(header, checksum header bytes, uncompressed size, payload offset)."""
        if len(head) < 16:
            raise CorruptObject(checksum, "file", "truncated archive header")
        (hlen,) = struct.unpack_from(">I", head, 0)
        end = 8 + hlen
        if hlen < 8 or end > len(head):
            raise CorruptObject(checksum, "file", "archive header length beyond the object")
        key = head[16:end]
        hit = self._cache.get(key)
        size = int.from_bytes(head[8:16], "big")
        if hit is None:
            try:
                header, size, off = FileHeader.parse_archive(head[:end])
            except MalformedData as e:
                raise CorruptObject(checksum, "file", e.args[1]) from None
            hit = (header, header.checksum_header())
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit[0], hit[1], size, end


def _inflate(checksum: str, compressed: bytes) -> bytes:
    d = zlib.decompressobj(-15)
    try:
        out = d.decompress(compressed)
        out += d.flush()
    except zlib.error as e:
        raise CorruptObject(checksum, "file", f"bad compressed data: {e}") from None
    if not d.eof or d.unused_data:
        raise CorruptObject(checksum, "file", "compressed data is truncated or has trailing "
                                              "bytes")
    return out


def _iter_inflate(checksum: str, fd: int, offset: int) -> Iterator[bytes]:
    """The payload of a spilled ``.filez`` from ``offset``, inflated in bounded steps."""
    d = zlib.decompressobj(-15)
    os.lseek(fd, offset, os.SEEK_SET)
    try:
        while True:
            block = d.unconsumed_tail or os.read(fd, _CHUNK)
            if not block:
                break
            out = d.decompress(block, _CHUNK)
            if out:
                yield out
            if d.eof:
                break
        tail = d.flush()
    except zlib.error as e:
        raise CorruptObject(checksum, "file", f"bad compressed data: {e}") from None
    if tail:
        yield tail
    if not d.eof or d.unused_data or os.read(fd, 1):
        raise CorruptObject(checksum, "file", "compressed data is truncated or has trailing "
                                              "bytes")


def _check_bareuseronly(checksum: str, header: FileHeader) -> None:
    if stat.S_ISREG(header.mode):
        bad = stat.S_IMODE(header.mode) & ~0o775
        if bad:
            raise BadFileMode(checksum, stat.S_IMODE(header.mode), bad)


class ContentStager:
    """Verify and stage fetched ``.filez`` objects into one transaction."""

    def __init__(self, txn: Transaction | None, bareuseronly_files: bool = False) -> None:
        self.txn = txn
        self.mode = txn.repo.mode if txn is not None else RepoMode.ARCHIVE
        self.headers = HeaderCache()
        self.check_modes = bareuseronly_files or self.mode is RepoMode.BARE_USER_ONLY

    def stage_bytes(self, checksum: str, data: bytes) -> int:
        """Verify a ``.filez`` held in memory and stage it; returns payload bytes written."""
        header, csum_head, size, off = self.headers.parse(checksum, data)
        if self.check_modes:
            _check_bareuseronly(checksum, header)
        if header.is_symlink:
            payload = _inflate(checksum, data[off:]) if len(data) > off else b""
            if payload:
                raise CorruptObject(checksum, "file", "symlink object with a payload")
        else:
            payload = _inflate(checksum, data[off:])
            if len(payload) != size:
                raise CorruptObject(checksum, "file", f"payload of {len(payload)} bytes, "
                                                      f"header says {size}")
        h = hashlib.sha256(csum_head)
        h.update(payload)
        actual = h.hexdigest()
        if actual != checksum:
            raise corrupt(checksum, "file", actual)
        txn = self.txn
        if txn is None:
            return 0
        if self.mode is RepoMode.ARCHIVE:
            txn.stage_whole(checksum, ObjectType.FILE, lambda fd: _write_archive(fd, data),
                            len(data))
        elif header.is_symlink:
            self._stage_symlink(checksum, header)
        else:
            txn.stage_whole(checksum, ObjectType.FILE,
                            lambda fd: self._write_regular(fd, header, [payload]), len(payload))
        return len(payload)

    def stage_file(self, checksum: str, path: str) -> int:
        """Like :meth:`stage_bytes` for a large ``.filez`` spilled to ``path`` (consumed)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                head = os.pread(fd, 65536, 0)
                header, csum_head, size, off = self.headers.parse(checksum, head)
                if self.check_modes:
                    _check_bareuseronly(checksum, header)
                h = hashlib.sha256(csum_head)
                total = 0
                for block in _iter_inflate(checksum, fd, off):
                    h.update(block)
                    total += len(block)
                if total != size or (header.is_symlink and total):
                    raise CorruptObject(checksum, "file", f"payload of {total} bytes, header "
                                                          f"says {size}")
                actual = h.hexdigest()
                if actual != checksum:
                    raise corrupt(checksum, "file", actual)
                txn = self.txn
                if txn is None:
                    return 0
                if self.mode is RepoMode.ARCHIVE:
                    os.chmod(path, 0o644)
                    txn.stage_rename(checksum, ObjectType.FILE, path)
                    return size
                if header.is_symlink:
                    self._stage_symlink(checksum, header)
                else:
                    chunks = _iter_inflate(checksum, fd, off)
                    txn.stage_whole(checksum, ObjectType.FILE,
                                    lambda out: self._write_regular(out, header, chunks), size)
                return size
            finally:
                os.close(fd)
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    # Staging goes through the Transaction (Transaction.stage_whole, stage_rename,
    # write_symlink), so these objects are synced and renamed into objects/ with all
    # the others, and a file under its final staging name is complete, which is what a
    # resumed pull (and anyone looking) may assume.

    def _write_regular(self, fd: int, header: FileHeader, chunks: Iterable[bytes]) -> None:
        for block in chunks:
            _fs.write_all(fd, block)
        txn = self.txn
        assert txn is not None
        meta = self.headers.bareuser_meta(header) if self.mode is RepoMode.BARE_USER else None
        txn.finish_content_fd(fd, header, meta)

    def _stage_symlink(self, checksum: str, header: FileHeader) -> None:
        """Stage a verified symlink object as the transaction writes any symlink; its
        checksum is recomputed from the parsed header, which must give the same."""
        txn = self.txn
        assert txn is not None
        actual = txn.write_symlink(header)
        if actual != checksum:
            raise corrupt(checksum, "file", actual)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _write_archive(fd: int, data: bytes) -> None:
    _fs.write_all(fd, data)
    os.fchmod(fd, 0o644)


def stage_metadata(txn: Transaction, checksum: str, otype: ObjectType, data: bytes) -> None:
    """Stage a verified metadata object under its name."""
    txn.stage_whole(checksum, otype, lambda fd: _write_archive(fd, data), len(data))


def stage_detached(txn: Transaction, commit: str, data: bytes) -> bool:
    """Stage detached metadata (named by its commit); False if the repo already has one."""
    return txn.stage_whole(commit, ObjectType.COMMIT_META,
                           lambda fd: _write_archive(fd, data), len(data))
