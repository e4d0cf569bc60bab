"""Hardlink counts recorded by the writers of trees (ostreefs.store.treecount).

A mount must know how often each content object occurs in the whole tree before the
first ``stat`` of a file; a commit or a pull-local records that in the index, so that the
first mount of a tree ostreefs wrote does not read every dirtree for it. Each record is
checked against what ``ostree ls -R -C`` lists of the same commit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from countcheck import assert_counts_recorded, listed_counts, recorded_walk
from support import TS_ARG, UTF8, Tool, init_repo, rev_parse

from ostreefs.store import commit as commit_mod
from ostreefs.store import treecount
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import Commit, DirMeta, DirTree, FileHeader, ObjectType
from ostreefs.store.refs import RefSpec, set_ref
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


def test_commit_counts_from_the_tree_it_built(tmp_path: Path, ostree: Tool, trees: Trees,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit of a directory records without reading a dirtree back."""
    r = Repo.init(tmp_path / "repo", RepoMode.BARE_USER)

    def no_reading(*_a: object, **_k: object) -> None:
        raise AssertionError("a commit of a directory read its dirtrees to count them")

    monkeypatch.setattr(treecount, "count_tree", no_reading)
    res = commit_mod.commit(r, [commit_mod.TreeSource("dir", str(trees(7, "small")))],
                            commit_mod.CommitOptions(branch="m", subject="m", timestamp=0))
    r.close()
    assert assert_counts_recorded(ostree, tmp_path / "repo", res.checksum)


def _nested(r: Repo, levels: int, fanout: int) -> str:
    """A commit whose tree repeats one subtree ``fanout`` times at each of ``levels``
    levels, above a directory holding one file: fanout**levels occurrences of it."""
    with r.lock():
        txn = r.transaction()
        meta = txn.write_metadata(ObjectType.DIR_META, DirMeta(0, 0, 0o40755).to_bytes())
        f = txn.write_file_bytes(FileHeader(0, 0, 0o100644), b"everywhere\n")
        t = txn.write_metadata(ObjectType.DIR_TREE, DirTree.build({"f": f}, {}).to_bytes())
        for _ in range(levels):
            t = txn.write_metadata(ObjectType.DIR_TREE, DirTree.build(
                {}, {f"d{i}": (t, meta) for i in range(fanout)}).to_bytes())
        c = txn.write_metadata(ObjectType.COMMIT, Commit(t, meta, "nested").to_bytes())
        txn.commit()
    set_ref(r, RefSpec("nested"), c)
    return c


def test_a_subtree_repeated_at_every_level_is_counted_once_per_level(
        tmp_path: Path, ostree: Tool, ostreefs: Tool) -> None:
    src = Repo.init(tmp_path / "src", RepoMode.BARE_USER)
    small = _nested(src, 3, 2)  # 8 occurrences: ostree lists them
    dest = init_repo(ostreefs, tmp_path / "dest", "bare-user")
    ostreefs("pull-local", f"--repo={dest}", str(src.path), "nested")
    content = FileHeader(0, 0, 0o100644).checksum_header() + b"everywhere\n"
    assert assert_counts_recorded(ostree, dest, small) == {
        int(hashlib.sha256(content).hexdigest()[:16], 16): 8}
    # 2**40 occurrences from 41 dirtrees: counted from the 41, shown as the most an
    # st_nlink holds. (Counted occurrence by occurrence, this never ended.)
    big = _nested(src, 40, 2)
    dest2 = init_repo(ostreefs, tmp_path / "dest2", "bare-user")
    ostreefs("pull-local", f"--repo={dest2}", str(src.path), "nested", timeout=60)
    walk = recorded_walk(dest2, big)
    assert walk is not None
    assert list(walk[0].values()) == [treecount.MAX_COUNT] and len(walk[1]) == 41


def test_a_dirtree_that_names_itself_ends_the_pass(tmp_path: Path) -> None:
    """A damaged dirtree whose subdirectory is itself: the pass stops at ostree's depth
    limit, reports it, and records nothing (it never ended before)."""
    r = Repo.init(tmp_path / "repo", RepoMode.BARE_USER)
    with r.lock():
        txn = r.transaction()
        meta = txn.write_metadata(ObjectType.DIR_META, DirMeta(0, 0, 0o40755).to_bytes())
        txn.commit()
    name = "ab" * 32
    data = DirTree.build({}, {"loop": (name, meta)}).to_bytes()
    path = Path(r.object_path_str(name, ObjectType.DIR_TREE))
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    reported: list[str] = []
    started = time.monotonic()
    tc = treecount.count_tree(r, name, on_error=lambda t, _e: reported.append(t))
    assert time.monotonic() - started < 10
    assert tc.errors == 1 and reported == [name] and tc.trees == [bytes.fromhex(name)]
    assert not treecount.record_counts(r, name)


def test_pull_local_of_a_complete_commit_counts_nothing(tmp_path: Path, ostree: Tool,
                                                        ostreefs: Tool,
                                                        trees: Trees) -> None:
    """A pull that walks no tree pays no pass: ostree pulled the commit, ostreefs finds
    it complete."""
    src = init_repo(ostree, tmp_path / "src", "archive")
    ostree("commit", f"--repo={src}", "-b", "m", "-s", "m", TS_ARG, str(trees(7, "small")),
           env=UTF8)
    commit = rev_parse(ostree, src, "m")
    dest = init_repo(ostree, tmp_path / "dest", "bare-user")
    ostree("pull-local", f"--repo={dest}", str(src), "m")
    ostreefs("pull-local", f"--repo={dest}", str(src), "m")
    assert recorded_walk(dest, commit) is None


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[Path, int], None]]:
    """``put(dir, free)``: move ``dir`` onto a tmpfs of its own, filled up but for
    ``free`` bytes (a real disk-full for the index, as root)."""
    mounts: list[Path] = []

    def put(d: Path, free: int) -> None:
        used = sum(f.stat().st_blocks * 512 for f in d.rglob("*") if f.is_file())
        mp = tmp_path / f"tmpfs{len(mounts)}"
        mp.mkdir()
        size = (used + free) // 4096 * 4096 + 4 * 4096 * 4
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mp)],
                       check=True)
        mounts.append(mp)
        shutil.copytree(d, mp / "index")
        st = os.statvfs(mp)
        room = st.f_bavail * st.f_frsize - free
        if room > 0:
            (mp / "filler").write_bytes(b"\0" * room)
        shutil.rmtree(d)
        d.symlink_to(mp / "index")

    yield put
    for mp in mounts:
        subprocess.run(["umount", "-l", str(mp)], check=False)


def test_a_full_index_fails_no_commit_and_no_pull(tmp_path: Path, ostreefs: Tool,
                                                  small_fs: Callable[[Path, int], None]
                                                  ) -> None:
    """The index is derived: when its disk is full, commit and pull-local still succeed
    (their objects and refs are what counts), without a record and without a trace."""
    src = tmp_path / "src"
    for i in range(3000):  # a record of ~100 KB: more than the index has room for
        (src / f"d{i:04}").mkdir(parents=True)
        (src / f"d{i:04}" / "f").write_text(f"{i}\n")  # 3,000 distinct dirtrees
    repo = init_repo(ostreefs, tmp_path / "repo", "bare-user")
    ostreefs("commit", f"--repo={repo}", "-b", "first", "-s", "s", TS_ARG, str(src / "d0000"))
    small_fs(repo / "ostreefs-index", 32 * 1024)
    proc = ostreefs("commit", f"--repo={repo}", "-b", "m", "-s", "m", TS_ARG, str(src))
    assert proc.stderr == ""
    commit = rev_parse(ostreefs, repo, "m")
    assert recorded_walk(repo, commit) is None
    dest = init_repo(ostreefs, tmp_path / "dest", "bare-user")
    ostreefs("pull-local", f"--repo={dest}", str(repo), "first")
    small_fs(dest / "ostreefs-index", 32 * 1024)
    proc = ostreefs("pull-local", f"--repo={dest}", str(repo), "m")
    assert "Traceback" not in proc.stderr
    assert rev_parse(ostreefs, dest, "m") == commit
    assert recorded_walk(dest, commit) is None
