"""Reading a commit's tree: path lookup and listing in ostree's order.

Paths inside a commit are absolute (``/sub/a.txt``). Every name comes from a dirtree
that :class:`~ostreefs.store.objects.DirTree` has already validated, so no entry can
be ``..`` or contain ``/``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from typing import NamedTuple

from ostreefs.errors import StoreError
from ostreefs.store.objects import FileHeader, Xattrs
from ostreefs.store.repo import Repo


class PathNotFound(StoreError):
    """No such file or directory: {0}"""


class NotADirectory(StoreError):
    """Not a directory: {0}"""


class Entry(NamedTuple):
    """One file, symlink or directory of a commit, with what ``ls`` shows of it."""

    path: str
    mode: int
    uid: int
    gid: int
    size: int
    checksum: str  # content checksum, or the dirtree checksum of a directory
    meta_checksum: str = ""  # dirmeta checksum of a directory
    symlink_target: str = ""
    xattrs: Xattrs = ()

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def type_char(self) -> str:
        return "d" if self.is_dir else "l" if self.is_symlink else "-"

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] or "/"


def normalize_path(path: str) -> list[str]:
    """Split a path inside a commit into names; ``.``/empty parts dropped, ``..`` refused."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathNotFound(path)
    return parts


def _join(parent: str, name: str) -> str:
    return ("" if parent == "/" else parent) + "/" + name


def dir_entry(repo: Repo, path: str, tree: str, meta: str) -> Entry:
    m = repo.load_dirmeta(meta)
    return Entry(path, m.mode, m.uid, m.gid, 0, tree, meta, "", m.xattrs)


def file_entry(repo: Repo, path: str, checksum: str) -> Entry:
    header, size = repo.load_file_header(checksum)
    return _from_header(path, checksum, header, size)


def _from_header(path: str, checksum: str, h: FileHeader, size: int) -> Entry:
    return Entry(path, h.mode, h.uid, h.gid, 0 if h.is_symlink else size, checksum, "",
                 h.symlink_target, h.xattrs)


def root_entry(repo: Repo, commit: str) -> Entry:
    c = repo.load_commit(commit)
    return dir_entry(repo, "/", c.root_tree, c.root_meta)


def lookup(repo: Repo, commit: str, path: str) -> Entry:
    """The entry at ``path`` in ``commit``; PathNotFound if there is none."""
    parts = normalize_path(path)
    cur = root_entry(repo, commit)
    for i, name in enumerate(parts):
        if not cur.is_dir:
            raise NotADirectory(cur.path)
        tree = repo.load_dirtree(cur.checksum)
        sub = _join(cur.path, name)
        found = None
        for n, t, m in tree.dirs:
            if n == name:
                found = dir_entry(repo, sub, t, m)
                break
        if found is None:
            for n, c in tree.files:
                if n == name:
                    found = file_entry(repo, sub, c)
                    break
        if found is None:
            raise PathNotFound("/" + "/".join(parts[: i + 1]))
        cur = found
    return cur


def children(repo: Repo, d: Entry) -> Iterator[Entry]:
    """A directory's entries: files (sorted) then directories (sorted), as ostree lists."""
    tree = repo.load_dirtree(d.checksum)
    for n, c in tree.files:
        yield file_entry(repo, _join(d.path, n), c)
    for n, t, m in tree.dirs:
        yield dir_entry(repo, _join(d.path, n), t, m)


def walk(repo: Repo, d: Entry, recursive: bool) -> Iterator[Entry]:
    """``ls`` order: each directory's files, then each subdirectory followed by its tree."""
    for e in children(repo, d):
        yield e
        if recursive and e.is_dir:
            yield from walk(repo, e, True)
