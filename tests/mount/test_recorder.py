"""The recorder: every directory of a tree gets its file headers recorded, as the objects
hold them, by a process a first mount starts; damage leaves gaps, not wrong records; an
unmount ends a recorder that is still at work."""

from __future__ import annotations

import os
import signal
import stat
import threading
import time
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
    _wait_for_spawn(vfs)
    return vfs


def _wait_for_spawn(vfs: CommitVFS) -> None:
    """Until the recorder's thread, if one was started, has started the process (the
    thread then lives on, waiting for it)."""
    deadline = time.monotonic() + 10
    while (vfs._recorder is None and time.monotonic() < deadline
           and any(t.name == "ostreefs-recorder" for t in threading.enumerate())):
        time.sleep(0.01)


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
    assert r.index.dir_headers(sub) is None
    # Marked all the same: another recorder would meet the same damage.
    assert r.index.tree_recorded(root)
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


def test_records_dropped_meanwhile_stop_the_recording(mode_repo: Callable[[str], Path],
                                                      tmp_path: Path) -> None:
    r = Repo.open(repo_copy(mode_repo("bare-user"), tmp_path / "repo"))
    root = _root(r)
    asked = 0

    def repair_midway() -> bool:  # what fsck does on finding a damaged file
        nonlocal asked
        asked += 1
        if asked == 4:
            r.index.forget_mount_records()
        return True

    assert not record_tree(r, root, batch=1, keep_going=repair_midway)
    # What was read before the drop is not written after it, and nothing is marked.
    assert all(r.index.dir_headers(t) is None for t in _dirtrees(r, root))
    assert not r.index.tree_recorded(root)
    assert record_tree(r, root)  # a later run starts over


def test_a_malformed_record_is_made_again(mode_repo: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    r = Repo.open(repo_copy(mode_repo("bare-user"), tmp_path / "repo"))
    root = _root(r)
    sub = next(t for t in _dirtrees(r, root)[1:] if r.load_dirtree(t).files)
    r.index.store_dir_headers([(sub, b"\0\0")])
    assert record_tree(r, root)
    assert _recorded(r, sub) == _as_objects_say(r, sub)


def test_a_mount_records_nothing_read_before_a_repair(mode_repo: Callable[[str], Path],
                                                      tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    r = Repo.open(repo)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    vfs_snapshot(vfs)  # every header read, waiting to be recorded at unmount
    r.index.forget_mount_records()
    vfs.close()
    assert all(r.index.dir_headers(t) is None for t in _dirtrees(r, _root(r)))
    again = CommitVFS(Repo.open(repo), rev_parse(r, "m"))  # the control: it records
    vfs_snapshot(again)
    again.close()
    assert all(r.index.dir_headers(t) is not None for t in _dirtrees(r, _root(r)))


def test_repair_and_a_deleted_dirtree_drop_the_mark(mode_repo: Callable[[str], Path],
                                                    tmp_path: Path) -> None:
    r = Repo.open(repo_copy(mode_repo("bare-user"), tmp_path / "repo"))
    root = _root(r)
    sub = next(c for n, c, _m in r.load_dirtree(root).dirs if n == "level 00")
    assert record_tree(r, root) and record_tree(r, sub)
    os.link(r.object_path_str(sub, ObjectType.DIR_TREE), tmp_path / "sub.dirtree")
    os.unlink(r.object_path_str(sub, ObjectType.DIR_TREE))  # as a prune by ostree would
    r.index.sync()
    # Which marked trees held it is not kept: every mark goes.
    assert not r.index.tree_recorded(sub) and not r.index.tree_recorded(root)
    os.link(tmp_path / "sub.dirtree", r.object_path_str(sub, ObjectType.DIR_TREE))
    r.index.sync()
    assert record_tree(r, root) and r.index.tree_recorded(root)
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
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    r = Repo.open(repo)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    vfs.start()
    assert vfs._starter is not None
    vfs._starter.join()
    # Holding the index's writer lock keeps the recorder from finishing, however fast.
    txn = r.index.env.begin(write=True)
    proc = None
    try:
        _list_dirs(vfs, RECORDER_AFTER)
        _wait_for_spawn(vfs)
        proc = vfs._recorder
        assert proc is not None
        # Stopped (SIGSTOP), it is still at work as far as the mount can tell, and a
        # polite SIGTERM would wait for a SIGCONT that never comes.
        os.kill(proc.pid, signal.SIGSTOP)
        assert proc.poll() is None
        txn.abort()
        closer = threading.Thread(target=vfs.close)
        closer.start()
        closer.join(30)
        assert not closer.is_alive()
        assert proc.returncode == -signal.SIGKILL
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            proc.wait()


def test_no_recorder_without_an_index_of_ours(mode_repo: Callable[[str], Path],
                                              tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    os.lchown(repo, 4321, 4321)  # someone else's repository: root writes no index there
    vfs = _started(repo, 10)
    assert vfs._recorder is None
    vfs.close()
    assert not (repo / INDEX_DIR).exists()


def test_the_recorder_ignores_a_planted_package(mode_repo: Callable[[str], Path],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A root mount started in someone's directory must not run an ``ostreefs/`` found
    there."""
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    trap = tmp_path / "cwd"
    marker = tmp_path / "planted-code-ran"
    (trap / "ostreefs" / "cli").mkdir(parents=True)
    (trap / "ostreefs" / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (trap / "ostreefs" / "cli" / "__init__.py").write_text("")
    (trap / "ostreefs" / "cli" / "recorder_process.py").write_text("")
    monkeypatch.chdir(trap)
    vfs = _started(repo, RECORDER_AFTER)
    proc = vfs._recorder
    assert proc is not None
    assert proc.wait(60) == 0
    vfs.close()
    assert not marker.exists()
    assert Repo.open(repo).index.tree_recorded(vfs._nodes[ROOT_INO].checksum)
