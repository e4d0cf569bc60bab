"""The file headers of one dirtree, packed as one index record.

Listing a directory of a mounted commit needs every file's mode, owner and size, which
live in each content object (an xattr, or the head of a ``.filez``): one file to open
per entry. They are a pure function of the dirtree's checksum (a dirtree names its files'
content checksums, and a content checksum covers its header), so once gathered they may
be kept in the index under that checksum. An object deleted later still fails its
reads while its metadata stays what the commit says. A record is only as good as the
objects it was read from: a file damaged in place (edited through a hardlinked checkout)
would be recorded as it was, so ``fsck``, on finding a damaged file object, drops every
record, and the index drops the records of dirtrees that are gone.

A record is, per file in dirtree order, ``>IIIQI`` (uid, gid, mode, size, extra length)
and, for a file with xattrs, a symlink target or an rdev, its archive-mode header
(:meth:`~ostreefs.store.objects.FileHeader.archive_header`). Plain files, the common
case, cost 24 bytes and one ``struct`` unpack.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ostreefs.errors import MalformedData
from ostreefs.store.objects import FileHeader

_REC = struct.Struct(">IIIQI")


def pack(headers: Sequence[tuple[FileHeader, int]]) -> bytes:
    """The record of a dirtree's files: (header, payload size) each, in dirtree order."""
    out = []
    for h, size in headers:
        extra = (h.archive_header(size) if h.symlink_target or h.xattrs or h.rdev
                 else b"")
        out.append(_REC.pack(h.uid, h.gid, h.mode, size, len(extra)))
        out.append(extra)
    return b"".join(out)


def unpack(data: bytes, count: int) -> list[tuple[FileHeader, int]] | None:
    """The headers a record holds, or None if it does not hold exactly ``count``
    well-formed ones (derived data: the caller reads the objects instead)."""
    out: list[tuple[FileHeader, int]] = []
    plain: dict[tuple[int, int, int], FileHeader] = {}  # shared: most files look alike
    pos, end = 0, len(data)
    try:
        while pos < end:
            uid, gid, mode, size, n = _REC.unpack_from(data, pos)
            pos += _REC.size
            if n:
                h, _size, _off = FileHeader.parse_archive(data[pos:pos + n])
                pos += n
            else:
                key = (uid, gid, mode)
                h = plain.get(key) or plain.setdefault(key, FileHeader(uid, gid, mode))
            out.append((h, size))
    except (struct.error, MalformedData):
        return None
    return out if pos == end and len(out) == count else None
