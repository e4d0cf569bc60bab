"""The hardlink counts an ostreefs writer records for a tree (``ostreefs.store.treecount``),
checked against what ``ostree ls`` lists of the same commit: every content object listed
more than once, with how often, and every dirtree for a mount's read-ahead."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from support import UTF8, Tool

from ostreefs.store.repo import Repo


def listed_counts(ostree: Tool, repo: Path, rev: str) -> tuple[dict[int, int], set[str]]:
    """(counts above one by the first 8 bytes of the checksum, dirtrees) of ``rev`` as
    ``ostree ls -R -C`` lists it."""
    seen: Counter[int] = Counter()
    trees: set[str] = set()
    out = ostree("ls", f"--repo={os.fspath(repo)}", "-R", "-C", rev, env=UTF8).stdout
    for line in out.splitlines():
        fields = line.split(maxsplit=5)
        if fields[0].startswith("d"):
            trees.add(fields[4])
        else:
            seen[int(fields[4][:16], 16)] += 1
    return {k: n for k, n in seen.items() if n > 1}, trees


def recorded_walk(repo: Path, commit: str) -> tuple[dict[int, int], list[bytes]] | None:
    """What the index of ``repo`` holds for the tree of ``commit``."""
    r = Repo.open(repo)
    try:
        return r.index.tree_walk(r.load_commit(commit).root_tree)
    finally:
        r.close()


def assert_counts_recorded(ostree: Tool, repo: Path, commit: str) -> dict[int, int]:
    """That the counts of `commit` are recorded, as ostree lists them; the counts."""
    want, trees = listed_counts(ostree, repo, commit)
    walk = recorded_walk(repo, commit)
    assert walk is not None, f"no counts recorded for {commit}"
    assert walk[0] == want
    assert {t.hex() for t in walk[1]} == trees
    return want
