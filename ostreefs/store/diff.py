"""Differences between two trees, each a commit or a directory on disk.

Reported as ostree reports them: modified paths, then removed, then added; a removed or
added directory is one entry, not its contents.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from ostreefs.errors import StoreError
from ostreefs.store.checksum import checksum_path
from ostreefs.store.repo import Repo


class _Node:
    """A directory to compare: files name -> checksum, dirs name -> child."""

    #: ostree prints paths found under a directory argument without the leading '/'.
    relative = False

    def meta(self) -> str:
        raise NotImplementedError

    def key(self) -> str | None:
        """A checksum equal for equal subtrees (None when unknown without a walk)."""
        return None

    def entries(self) -> tuple[dict[str, str], dict[str, _Node]]:
        raise NotImplementedError


class CommitNode(_Node):
    def __init__(self, repo: Repo, tree: str, meta: str) -> None:
        self.repo, self.tree, self._meta = repo, tree, meta

    def meta(self) -> str:
        return self._meta

    def key(self) -> str | None:
        return self.tree + self._meta

    def entries(self) -> tuple[dict[str, str], dict[str, _Node]]:
        t = self.repo.load_dirtree(self.tree)
        return dict(t.files), {n: CommitNode(self.repo, dt, dm) for n, dt, dm in t.dirs}


class DiskNode(_Node):
    relative = True

    def __init__(self, path: str) -> None:
        self.path = path

    def meta(self) -> str:
        return checksum_path(self.path)

    def entries(self) -> tuple[dict[str, str], dict[str, _Node]]:
        files: dict[str, str] = {}
        dirs: dict[str, _Node] = {}
        try:
            names = sorted(os.listdir(self.path))
        except OSError as e:
            raise StoreError(f"Cannot read {self.path}: {e.strerror}") from None
        for n in names:
            p = os.path.join(self.path, n)
            if stat.S_ISDIR(os.lstat(p).st_mode):
                dirs[n] = DiskNode(p)
            else:
                files[n] = checksum_path(p)
        return files, dirs


@dataclass
class DiffResult:
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


def diff_trees(a: _Node, b: _Node) -> DiffResult:
    """What changed from ``a`` to ``b``; an added directory is listed with its contents."""
    res = DiffResult()
    _diff(a, b, "", res)
    if a.relative:
        res.modified = [p.lstrip("/") for p in res.modified]
        res.removed = [p.lstrip("/") for p in res.removed]
    if b.relative:
        res.added = [p.lstrip("/") for p in res.added]
    return res


def _add_tree(node: _Node, prefix: str, res: DiffResult) -> None:
    files, dirs = node.entries()
    for name in files:
        res.added.append(f"{prefix}/{name}")
    for name, child in dirs.items():
        res.added.append(f"{prefix}/{name}")
        _add_tree(child, f"{prefix}/{name}", res)


def _diff(a: _Node, b: _Node, prefix: str, res: DiffResult) -> None:
    ka, kb = a.key(), b.key()
    if ka is not None and ka == kb:
        return
    fa, da = a.entries()
    fb, db = b.entries()
    for name, ca in fa.items():
        path = f"{prefix}/{name}"
        if name in fb:
            if fb[name] != ca:
                res.modified.append(path)
        elif name in db:
            res.removed.append(path)
            res.added.append(path)
            _add_tree(db[name], path, res)
        else:
            res.removed.append(path)
    for name, child in da.items():
        path = f"{prefix}/{name}"
        if name in db:
            if child.meta() != db[name].meta():
                res.modified.append(path)
            _diff(child, db[name], path, res)
        elif name in fb:
            res.removed.append(path)
            res.added.append(path)
        else:
            res.removed.append(path)
    for name in fb:
        if name not in fa and name not in da:
            res.added.append(f"{prefix}/{name}")
    for name, child in db.items():
        if name not in fa and name not in da:
            res.added.append(f"{prefix}/{name}")
            _add_tree(child, f"{prefix}/{name}", res)
