"""The recorder: every directory of a tree gets its file headers recorded, as the objects
hold them, by a process a first mount starts; damage leaves gaps, not wrong records; an
unmount ends a recorder that is still at work."""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MODES, repo_copy
from mount_helpers import header_loads, vfs_snapshot
from support import UTF8, Tool
from treegen import diff_snapshots, snapshot

from ostreefs.mount.vfs import RECORDER_AFTER, ROOT_INO, CommitVFS
from ostreefs.store import dirheaders
from ostreefs.store.fsck import fsck
from ostreefs.store.index import INDEX_DIR
from ostreefs.store.objects import ObjectType
from ostreefs.store.refs import rev_parse
from ostreefs.store.repo import Repo
from ostreefs.store.treerecord import record_tree


def _root(r: Repo) -> str:
    return r.load_commit(rev_parse(r, "m")).root_tree


def _dirtrees(r: Repo, root: str) -> list[str]:
    out, todo = [], [root]
    while todo:
        t = todo.pop()
        out.append(t)
        todo.extend(c for _n, c, _m in r.load_dirtree(t).dirs)
    return out


def _as_objects_say(r: Repo, tree: str) -> list[tuple[object, int]]:
    return [r.load_file_header(c) for _n, c in r.load_dirtree(tree).files]


def _recorded(r: Repo, tree: str) -> list[tuple[object, int]] | None:
    raw = r.index.dir_headers(tree)
    if raw is None:
        return None
    return dirheaders.unpack(raw, len(r.load_dirtree(tree).files))  # type: ignore[return-value]


def _list_dirs(vfs: CommitVFS, n: int) -> None:
    """List the first ``n`` directories of a walk, as ``find`` would."""
    todo = [ROOT_INO]
    while todo and n:
        ino = todo.pop(0)
        n -= 1
        todo.extend(a.ino for _o, _n, a in vfs.entries(ino) if stat.S_ISDIR(a.mode))


def _started(repo: Path, listed: int) -> CommitVFS:
    """A mount of ``m`` started, with ``listed`` directories listed."""
    r = Repo.open(repo)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    vfs.start()
    assert vfs._starter is not None
    vfs._starter.join()
    _list_dirs(vfs, listed)
    for t in threading.enumerate():
        if t.name == "ostreefs-recorder":
            t.join()
    return vfs


@pytest.mark.parametrize("mode", MODES)
def test_every_directory_is_recorded_as_the_objects_say(
        mode_repo: Callable[[str], Path], tmp_path: Path, mode: str) -> None:
    r = Repo.open(repo_copy(mode_repo(mode), tmp_path / "repo"))
    root = _root(r)
    trees = _dirtrees(r, root)
    assert len(set(trees)) > 10
    assert all(r.index.dir_headers(t) is None for t in trees)
    assert record_tree(r, root, batch=3)
    assert r.index.tree_recorded(root)
    for t in trees:
        assert _recorded(r, t) == _as_objects_say(r, t), t
    # Marked: a second run reads nothing, not even the dirtrees.
    loads = header_loads(r)
    real = r.load_dirtree
    r.load_dirtree = lambda c: loads.append(c) or real(c)  # type: ignore[method-assign]
    assert record_tree(r, root)
    assert loads == []


def test_a_damaged_directory_gets_no_record(mode_repo: Callable[[str], Path],
                                            tmp_path: Path) -> None:
    r = Repo.open(repo_copy(mode_repo("bare-user"), tmp_path / "repo"))
    root = _root(r)
    sub = next(t for t in _dirtrees(r, root)[1:] if r.load_dirtree(t).files)
    victim = r.load_dirtree(sub).files[0][1]
    os.unlink(r.object_path_str(victim, ObjectType.FILE))
    assert not record_tree(r, root)
    assert not r.index.tree_recorded(root)
    assert r.index.dir_headers(sub) is None
    others = [t for t in _dirtrees(r, root)
              if victim not in {c for _n, c in r.load_dirtree(t).files}]
    assert others
    for t in others:  # the rest is recorded
        assert _recorded(r, t) == _as_objects_say(r, t), t


def test_recording_stops_when_told(mode_repo: Callable[[str], Path], tmp_path: Path) -> None:
    r = Repo.open(repo_copy(mode_repo("bare-user"), tmp_path / "repo"))
    root = _root(r)
    asked = 0

    def keep_going() -> bool:
        nonlocal asked
        asked += 1
        return asked <= 4

    assert not record_tree(r, root, batch=1, keep_going=keep_going)
    assert not r.index.tree_recorded(root)
    trees = _dirtrees(r, root)
    done = [t for t in trees if r.index.dir_headers(t) is not None]
    assert 1 <= len(done) <= 4 < len(trees)
    assert record_tree(r, root)  # picks up the rest
    assert all(_recorded(r, t) == _as_objects_say(r, t) for t in trees)


def test_repair_and_a_deleted_dirtree_drop_the_mark(mode_repo: Callable[[str], Path],
                                                    tmp_path: Path) -> None:
    r = Repo.open(repo_copy(mode_repo("bare-user"), tmp_path / "repo"))
    root = _root(r)
    sub = next(c for n, c, _m in r.load_dirtree(root).dirs if n == "level 00")
    assert record_tree(r, root) and record_tree(r, sub)
    os.unlink(r.object_path_str(sub, ObjectType.DIR_TREE))  # as a prune by ostree would
    r.index.sync()
    assert not r.index.tree_recorded(sub) and r.index.tree_recorded(root)
    # The classic damage: a file edited in place through a hardlinked checkout.
    victim = r.load_dirtree(root).files[0][1]
    with open(r.object_path_str(victim, ObjectType.FILE), "ab") as f:
        f.write(b"edited")
    fsck(r)
    assert not r.index.tree_recorded(root) and r.index.dir_headers(root) is None


def test_a_look_starts_no_recorder(mode_repo: Callable[[str], Path],
                                   tmp_path: Path) -> None:
    vfs = _started(repo_copy(mode_repo("bare-user"), tmp_path / "repo"), RECORDER_AFTER - 1)
    assert vfs._recorder is None
    vfs.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_first_walk_starts_the_recorder(mode_repo: Callable[[str], Path], ostree: Tool,
                                          tmp_path: Path, mode: str) -> None:
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    ostree("checkout", f"--repo={repo}", "m", str(tmp_path / "co"), env=UTF8)
    want = snapshot(tmp_path / "co")
    vfs = _started(repo, RECORDER_AFTER)
    proc = vfs._recorder
    assert proc is not None
    assert proc.wait(60) == 0
    vfs.close()
    r = Repo.open(repo)
    assert r.index.tree_recorded(vfs._nodes[ROOT_INO].checksum)
    # A later mount lists everything from the records, and starts no recorder.
    loads = header_loads(r)
    second = CommitVFS(r, rev_parse(r, "m"))
    second.start()
    assert second._starter is not None
    second._starter.join()
    got = vfs_snapshot(second)
    assert got == want, diff_snapshots(got, want)
    assert loads == []
    assert second._recorder is None
    second.close()


def test_unmount_ends_a_recorder_at_work(mode_repo: Callable[[str], Path],
                                         tmp_path: Path) -> None:
    vfs = _started(repo_copy(mode_repo("bare-user"), tmp_path / "repo"), RECORDER_AFTER)
    proc = vfs._recorder
    assert proc is not None
    # Stopped (SIGSTOP), it is still at work as far as the mount can tell, and a
    # polite SIGTERM would wait for a SIGCONT that never comes.
    os.kill(proc.pid, signal.SIGSTOP)
    assert proc.poll() is None
    closer = threading.Thread(target=vfs.close)
    closer.start()
    closer.join(30)
    assert not closer.is_alive()
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)


def test_no_recorder_without_an_index_of_ours(mode_repo: Callable[[str], Path],
                                              tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    os.lchown(repo, 4321, 4321)  # someone else's repository: root writes no index there
    vfs = _started(repo, 10)
    assert vfs._recorder is None
    vfs.close()
    assert not (repo / INDEX_DIR).exists()
