"""Checksums of files on disk, computed as a commit would compute them, without storing."""

from __future__ import annotations

import hashlib
import os
import stat

from ostreefs import _fs
from ostreefs.errors import StoreError
from ostreefs.store.objects import DirMeta, FileHeader, normalize_xattrs


def header_for(path: str, st: os.stat_result, xattrs: bool = True) -> FileHeader:
    x = normalize_xattrs(_fs.list_xattrs(path)) if xattrs else ()
    target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else ""
    return FileHeader(st.st_uid, st.st_gid, st.st_mode, target, x)


def checksum_path(path: str, xattrs: bool = True) -> str:
    """``ostree checksum``: a file's or symlink's content checksum, a directory's dirmeta."""
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            x = normalize_xattrs(_fs.list_xattrs(path)) if xattrs else ()
            return DirMeta(st.st_uid, st.st_gid, st.st_mode, x).checksum()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise StoreError(f"Unsupported file type for {path}")
        h = hashlib.sha256(header_for(path, st, xattrs).checksum_header())
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        return h.hexdigest()
    except OSError as e:
        raise StoreError(f"Cannot read {path}: {e.strerror}") from None
