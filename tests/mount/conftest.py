"""Fixtures for the mount tests: repositories made by real ostree from generated trees."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import TS_ARG, UTF8, Tool, init_repo
from treegen import make_tree

from ostreefs.store.index import INDEX_DIR

MODES = ["bare-user", "archive"]


@pytest.fixture(scope="session")
def src_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("mount-src") / "tree", seed=5)


@pytest.fixture(scope="session")
def mode_repo(tmp_path_factory: pytest.TempPathFactory, ostree: Tool,
              src_tree: Path) -> Callable[[str], Path]:
    """``get(mode)``: a repo of that mode with ref ``m`` committing ``src_tree``.

    Tests that damage a repo must copy it first (see :func:`repo_copy`).
    """
    base = tmp_path_factory.mktemp("mount-repos")
    cache: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in cache:
            r = init_repo(ostree, base / mode, mode)
            ostree("commit", f"--repo={r}", "-b", "m", "-s", "m", TS_ARG, str(src_tree),
                   env=UTF8)
            cache[mode] = r
        return cache[mode]

    return get


def repo_copy(src: Path, dest: Path) -> Path:
    """A private copy of a shared repository, without its index: mounts of the shared
    one record file headers there, which would hide what a test does to the copy's
    objects (a missing object's recorded metadata outlives it)."""
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(INDEX_DIR))
    return dest
