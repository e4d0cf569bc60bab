"""Hardlink counts recorded by the writers of trees (ostreefs.store.treecount).

A mount must know how often each content object occurs in the whole tree before the
first ``stat`` of a file; a commit or a pull-local records that in the index, so that the
first mount of a tree ostreefs wrote does not read every dirtree for it. Each record is
checked against what ``ostree ls -R -C`` lists of the same commit.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from countcheck import assert_counts_recorded, listed_counts, recorded_walk
from support import TS_ARG, UTF8, Tool, init_repo, rev_parse

from ostreefs.store import treecount
from ostreefs.store.objects import ObjectType
from ostreefs.store.repo import Repo

Trees = Callable[[int, str], Path]


@pytest.mark.parametrize("mode", ["bare-user", "archive"])
def test_commit_records_the_counts(tmp_path: Path, ostree: Tool, ostreefs: Tool,
                                   trees: Trees, mode: str) -> None:
    repo = init_repo(ostreefs, tmp_path / "repo", mode)
    ostreefs("commit", f"--repo={repo}", "-b", "m", "-s", "m", TS_ARG, str(trees(7, "small")),
             env=UTF8)
    commit = rev_parse(ostreefs, repo, "m")
    want = assert_counts_recorded(ostree, repo, commit)
    assert want, "the generated tree has shared content objects"
    # The record made from the commit's memory is the pass over its dirtrees, in order.
    r = Repo.open(repo)
    tc = treecount.count_tree(r, r.load_commit(commit).root_tree)
    assert recorded_walk(repo, commit) == (tc.counts, tc.trees)
    assert tc.errors == 0


def test_commit_over_another_commit_records_the_counts(tmp_path: Path, ostree: Tool,
                                                       ostreefs: Tool, trees: Trees) -> None:
    """A tree that borrows unchanged subtrees from a commit (``--tree=ref=``) is counted
    from its dirtrees."""
    repo = init_repo(ostreefs, tmp_path / "repo", "bare-user")
    ostreefs("commit", f"--repo={repo}", "-b", "base", "-s", "b", TS_ARG,
             str(trees(7, "small")), env=UTF8)
    extra = tmp_path / "extra"
    (extra / "more").mkdir(parents=True)
    (extra / "more" / "dup").write_bytes(b"duplicate content\n")
    ostreefs("commit", f"--repo={repo}", "-b", "m", "-s", "m", TS_ARG, "--tree=ref=base",
             f"--tree=dir={extra}", env=UTF8)
    base, commit = rev_parse(ostreefs, repo, "base"), rev_parse(ostreefs, repo, "m")
    assert assert_counts_recorded(ostree, repo, commit) != listed_counts(ostree, repo, base)[0]


def test_pull_local_records_the_counts_of_what_it_pulled(tmp_path: Path, ostree: Tool,
                                                         ostreefs: Tool,
                                                         trees: Trees) -> None:
    src = init_repo(ostree, tmp_path / "src", "archive")
    ostree("commit", f"--repo={src}", "-b", "m", "-s", "m", TS_ARG, str(trees(7, "small")),
           env=UTF8)
    commit = rev_parse(ostree, src, "m")
    meta_only = init_repo(ostreefs, tmp_path / "meta-only", "bare-user")
    ostreefs("pull-local", f"--repo={meta_only}", "--commit-metadata-only", str(src), "m")
    assert rev_parse(ostreefs, meta_only, "m") == commit
    assert recorded_walk(meta_only, commit) is None
    dest = init_repo(ostreefs, tmp_path / "dest", "bare-user")
    ostreefs("pull-local", f"--repo={dest}", str(src), "m")
    assert assert_counts_recorded(ostree, dest, commit)


def test_a_tree_missing_a_dirtree_is_not_recorded(tmp_path: Path, ostree: Tool,
                                                   ostreefs: Tool, trees: Trees) -> None:
    repo = init_repo(ostree, tmp_path / "repo", "bare-user")
    ostree("commit", f"--repo={repo}", "-b", "m", "-s", "m", TS_ARG, str(trees(7, "small")),
           env=UTF8)
    commit = rev_parse(ostree, repo, "m")
    _counts, dirtrees = listed_counts(ostree, repo, commit)
    r = Repo.open(repo)
    root = r.load_commit(commit).root_tree
    gone = sorted(dirtrees - {root})[0]
    path = r.object_path_str(gone, ObjectType.DIR_TREE)
    shutil.move(path, tmp_path / "kept")
    reported: list[str] = []
    tc = treecount.count_tree(r, root, on_error=lambda t, _e: reported.append(t))
    assert tc.errors == 1 and reported == [gone]
    assert not treecount.record_counts(r, root)
    assert recorded_walk(repo, commit) is None
    shutil.move(tmp_path / "kept", path)
    assert treecount.record_counts(r, root)
    assert_counts_recorded(ostree, repo, commit)
    assert os.path.exists(path)
