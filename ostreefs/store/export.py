"""Writing a commit's tree as a tar stream (``ostreefs export``).

The archive is written with :mod:`tarfile` in stream mode, so the output may be a pipe,
and file contents are copied from the object store in chunks (never whole). What ostree
2022.7's ``export`` writes, and what is written here:

* Entries in ostree's order: a directory, then its files (sorted by name bytes), then
  each subdirectory in turn. The root is ``./``, everything else is relative
  (``a/``, ``a/f``); with a prefix the root is ``PREFIX/`` and names ``PREFIX/a/f``.
* Numeric uid/gid with empty user and group names, the full mode (setuid, sticky),
  every mtime set to the commit's timestamp, symlinks with their targets.
* Files sharing a content object are written as separate files, not hard links.
* ostree writes GNU-format tars, which cannot hold xattrs, so its exports silently lose
  them. Here the format is PAX and xattrs are ``SCHILY.xattr.NAME`` records (as GNU
  tar and libarchive write and read them), unless ``xattrs=False``.

Differences on purpose: ostree glues ``--prefix`` to names as is (``--prefix=p`` gives
``p/`` then ``pa/f``); here a prefix is always a directory. A prefix with ``..`` is
refused. A ``subpath`` that is not a directory is an error (ostree aborts).
"""

from __future__ import annotations

import io
import stat
import tarfile
import urllib.parse
from base64 import b64encode
from collections.abc import Iterator
from typing import IO

from ostreefs.errors import UsageError
from ostreefs.store import tree as treemod
from ostreefs.store.objects import Xattrs
from ostreefs.store.repo import READ_CHUNK, Repo

#: Bytes per write to the output (tarfile's stream buffer).
OUT_CHUNK = 256 << 10


class NotADirectoryExport(UsageError):
    """Cannot export {0}: not a directory"""


def normalize_prefix(prefix: str) -> str:
    """``PREFIX`` as ``a/b/`` (empty for none); ``..`` refused."""
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"Invalid --prefix {prefix!r}: '..' is not allowed")
    return "".join(p + "/" for p in parts)


def export_commit(repo: Repo, commit: str, out: IO[bytes], *, subpath: str = "/",
                  prefix: str = "", xattrs: bool = True) -> int:
    """Write ``commit`` (or its ``subpath``) to ``out`` as a tar; return the entry count.

    On an error the stream is left unterminated (no end-of-archive blocks), so a reader
    sees a truncated archive rather than a short but valid one.
    """
    timestamp = repo.load_commit(commit).timestamp
    top = treemod.lookup(repo, commit, subpath)
    if not top.is_dir:
        raise NotADirectoryExport(top.path)
    pre = normalize_prefix(prefix)
    tf = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape", bufsize=OUT_CHUNK)
    try:
        count = _write_tree(repo, tf, top, pre, timestamp, xattrs)
    except BaseException:
        _abandon(tf)
        raise
    tf.close()
    return count


def _write_tree(repo: Repo, tf: tarfile.TarFile, top: treemod.Entry, pre: str, timestamp: int,
                xattrs: bool) -> int:
    count = 0
    # Depth first: a directory, its files, then each subdirectory with all it holds.
    stack: list[tuple[treemod.Entry, str]] = [(top, pre.rstrip("/") or ".")]
    while stack:
        d, name = stack.pop()
        tf.addfile(_info(d, name, timestamp, xattrs))
        count += 1
        base = "" if name == "." else name + "/"
        subdirs = []
        for e in treemod.children(repo, d):
            child = base + e.name
            if e.is_dir:
                subdirs.append((e, child))
                continue
            info = _info(e, child, timestamp, xattrs)
            if e.is_symlink:
                tf.addfile(info)
            else:
                tf.addfile(info, io.BufferedReader(_Chunks(repo.iter_file_payload(e.checksum)),
                                                   READ_CHUNK))
            count += 1
        stack.extend(reversed(subdirs))
    return count


def _abandon(tf: tarfile.TarFile) -> None:
    """Drop what tarfile still buffers, and its end-of-archive blocks.

    A failed export must not end like a complete archive, and tarfile's stream would
    otherwise flush (and fail again on a broken pipe) when garbage-collected.
    """
    tf.closed = True  # type: ignore[attr-defined]
    stream = tf.fileobj
    if stream is not None:
        stream.closed = True  # type: ignore[attr-defined]


class _PaxInfo(tarfile.TarInfo):
    """A TarInfo whose PAX records carry raw bytes without ``hdrcharset=BINARY``.

    tarfile adds that record when a value is not UTF-8 (binary xattrs such as
    ``security.capability``), and GNU tar 1.34 warns about it on every such member. GNU
    tar itself writes ``SCHILY.xattr`` values as raw bytes with no marker, and readers
    (GNU tar, libarchive, tarfile) take them back byte for byte.
    """

    @classmethod
    def _create_pax_generic_header(cls, pax_headers: dict[str, str], type: bytes,
                                   encoding: str) -> bytes:
        records = b"".join(_pax_record(k.encode("utf-8"), v.encode("utf-8", "surrogateescape"))
                           for k, v in pax_headers.items())
        info = {"name": "././@PaxHeader", "type": type, "size": len(records),
                "magic": tarfile.POSIX_MAGIC}
        return bytes(cls._create_header(  # type: ignore[attr-defined]
            info, tarfile.USTAR_FORMAT, "ascii", "replace")) + bytes(
            cls._create_payload(records))  # type: ignore[attr-defined]


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    """``LEN keyword=value\\n``, where LEN counts the whole record, itself included."""
    body = b" " + keyword + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode("ascii") + body


def _info(e: treemod.Entry, name: str, mtime: int, xattrs: bool) -> tarfile.TarInfo:
    ti = _PaxInfo(name)
    ti.mode = stat.S_IMODE(e.mode)
    ti.uid = e.uid
    ti.gid = e.gid
    ti.uname = ti.gname = ""
    ti.mtime = mtime
    if e.is_dir:
        ti.type = tarfile.DIRTYPE
    elif e.is_symlink:
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.symlink_target
    else:
        ti.type = tarfile.REGTYPE
        ti.size = e.size
    if xattrs and e.xattrs:
        ti.pax_headers = _xattr_records(e.xattrs)
    return ti


def _xattr_records(xattrs: Xattrs) -> dict[str, str]:
    """PAX records for xattrs; values pass through as raw bytes (surrogate escapes)."""
    out = {}
    for name, value in xattrs:
        try:
            out["SCHILY.xattr." + name.decode("utf-8")] = value.decode(
                "utf-8", "surrogateescape")
        except UnicodeDecodeError:
            # PAX keywords must be UTF-8: libarchive's spelling carries any name.
            out["LIBARCHIVE.xattr." + urllib.parse.quote_from_bytes(name)] = (
                b64encode(value).decode("ascii").rstrip("="))
    return out


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")
        while not self.pending:
            nxt = next(self.chunks, None)
            if nxt is None:
                return 0
            self.pending = memoryview(nxt)
        n = min(len(view), len(self.pending))
        view[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n


__all__ = ["export_commit", "normalize_prefix", "NotADirectoryExport"]
