"""Transactions (ostreefs.store.transaction): all or nothing, no litter, no rewrites.

* An aborted transaction (explicitly, or by an exception in its ``with`` block) leaves no
  staging directory under ``tmp/``, no new object and no lock behind.
* A staging directory left by a dead process (simulated, and by a real SIGKILL) is
  removed by the next transaction; one whose lock a live process holds is left alone.
* Objects already in the repository are not rewritten: re-committing the same tree in
  bare-user mode with the stat cache off keeps every object's inode, mtime and ctime.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support import TS

from ostreefs import _fs
from ostreefs.store.commit import CommitOptions, TreeSource, commit
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import DirMeta, FileHeader, ObjectType
from ostreefs.store.repo import Repo

# Holds an OFD write lock on argv[1] (as ostree holds its staging-dir locks) until stdin
# closes; prints "locked" once it has it.
LOCK_HELPER = r'''
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
arg = struct.pack("@hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0).ljust(32, b"\0")
fcntl.fcntl(fd, getattr(fcntl, "F_OFD_SETLK", 37), arg)
print("locked", flush=True)
sys.stdin.read()
'''

BIG = 1024 * 1024 + 4097  # above SMALL_FILE: streamed while hashing


def _objects(repo: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every object file: (inode, size, mtime_ns, ctime_ns)."""
    out = {}
    for sub in sorted(os.listdir(repo / "objects")):
        for name in os.listdir(repo / "objects" / sub):
            st = os.lstat(repo / "objects" / sub / name)
            out[f"{sub}/{name}"] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return out


def _tmp_entries(repo: Path) -> list[str]:
    return sorted(os.listdir(repo / "tmp"))


def _can_lock_exclusively(repo: Path) -> bool:
    fd = os.open(repo / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        return _fs.try_ofd_lock(fd, _fs.LOCK_EX)
    finally:
        os.close(fd)


@pytest.fixture(params=[RepoMode.BARE_USER, RepoMode.ARCHIVE], ids=lambda m: m.cli_name)
def repo(request: pytest.FixtureRequest, tmp_path: Path, ostree) -> Repo:
    mode: RepoMode = request.param
    r = tmp_path / "repo"
    ostree("init", f"--repo={r}", f"--mode={mode.cli_name}")
    return Repo.open(r)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "sub").mkdir(parents=True)
    (t / "hello.txt").write_text("hello\n")
    (t / "sub" / "a.txt").write_text("a\n")
    (t / "empty").write_bytes(b"")
    (t / "big.bin").write_bytes(hashlib.sha256(b"seed").digest() * (BIG // 32) + b"tail")
    (t / "link").symlink_to("hello.txt")
    (t / "emptydir").mkdir()
    return t


def _write_some(txn, big_path: Path | None = None) -> list[str]:
    csums = [
        txn.write_metadata(ObjectType.DIR_META, DirMeta(0, 0, 0o40700).to_bytes()),
        txn.write_file_bytes(FileHeader(0, 0, 0o100644), b"only in the transaction\n"),
        txn.write_symlink(FileHeader(0, 0, 0o120777, "nowhere")),
    ]
    if big_path is not None:
        fd = os.open(big_path, os.O_RDONLY)
        try:
            csums.append(txn.write_file_stream(FileHeader(0, 0, 0o100644), fd,
                                               os.fstat(fd).st_size))
        finally:
            os.close(fd)
    return csums


# ------------------------------------------------------------------------------ abort


def test_abort_leaves_no_staging_and_no_objects(repo: Repo, tree: Path) -> None:
    before, tmp_before = _objects(repo.path), _tmp_entries(repo.path)
    txn = repo.transaction(fsync=False)
    assert txn.staging.parent == repo.path / "tmp" and txn.staging.is_dir()
    assert txn.staging.name.startswith(f"staging-{_fs.boot_id()}-")
    csums = _write_some(txn, tree / "big.bin")
    assert any(txn.staging.rglob("*")), "nothing was staged"
    assert not _can_lock_exclusively(repo.path), "a transaction holds the shared lock"
    txn.abort()
    assert _tmp_entries(repo.path) == tmp_before
    assert _objects(repo.path) == before
    assert not any(repo.has_object(c, ObjectType.FILE) for c in csums[1:])
    assert _can_lock_exclusively(repo.path)
    txn.abort()  # idempotent


def test_exception_in_with_block_aborts(repo: Repo, tree: Path) -> None:
    before, tmp_before = _objects(repo.path), _tmp_entries(repo.path)
    with pytest.raises(RuntimeError, match="boom"):
        with repo.transaction(fsync=False) as txn:
            _write_some(txn, tree / "big.bin")
            raise RuntimeError("boom")
    assert _tmp_entries(repo.path) == tmp_before
    assert _objects(repo.path) == before
    assert _can_lock_exclusively(repo.path)


def test_failed_commit_build_aborts(repo: Repo, tree: Path) -> None:
    """A commit that fails midway (unreadable path) leaves nothing behind either."""
    before, tmp_before = _objects(repo.path), _tmp_entries(repo.path)
    with pytest.raises(Exception):  # noqa: B017 - whatever the error, the store is clean
        commit(repo, [TreeSource("dir", str(tree)), TreeSource("dir", str(tree / "nope"))],
               CommitOptions(branch="main", fsync=False))
    assert _tmp_entries(repo.path) == tmp_before
    assert _objects(repo.path) == before
    assert not (repo.path / "refs" / "heads" / "main").exists()


def test_commit_publishes_and_cleans_up(repo: Repo, tree: Path, ostree) -> None:
    tmp_before = _tmp_entries(repo.path)
    with repo.transaction(fsync=True) as txn:
        csums = _write_some(txn, tree / "big.bin")
    assert _tmp_entries(repo.path) == tmp_before
    assert repo.has_object(csums[0], ObjectType.DIR_META)
    for c in csums[1:]:
        assert repo.has_object(c, ObjectType.FILE)
    assert repo.read_file_bytes(csums[1]) == b"only in the transaction\n"
    assert repo.read_file_bytes(csums[3]) == (tree / "big.bin").read_bytes()
    assert repo.load_file_header(csums[2])[0].symlink_target == "nowhere"
    with pytest.raises(Exception):  # noqa: B017
        txn.commit()  # finished transactions stay finished


def test_twin_writes_in_one_transaction_store_once(repo: Repo) -> None:
    data = b"same bytes from many threads\n"
    with repo.transaction(fsync=False) as txn:
        results: list[str] = []
        threads = [threading.Thread(target=lambda: results.append(
            txn.write_file_bytes(FileHeader(0, 0, 0o100644), data))) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(results)) == 1
    assert txn.stats.content_written == 1 and txn.stats.content_total == 16
    assert [w[0] for w in txn.written] == [results[0]]
    assert repo.read_file_bytes(results[0]) == data


# ---------------------------------------------------------------- stale staging dirs


def test_stale_staging_dir_removed_by_next_transaction(repo: Repo, tmp_path: Path) -> None:
    tmp = repo.path / "tmp"
    boot = _fs.boot_id()
    stale = [f"staging-{boot}-0123456789ab", "staging-00000000-0000-0000-0000-000000000000-x"]
    for name in stale:
        d = tmp / name
        (d / "ab").mkdir(parents=True)
        (d / "ab" / ("c" * 62 + ".file")).write_bytes(b"half-written?\n")
        (d / ".tmp-0123456789abcdef").write_bytes(b"partial")
        (tmp / f"{name}-lock").write_bytes(b"")
    # A live transaction's staging dir: its lock is held by another process.
    live = tmp / f"staging-{boot}-live00000000"
    (live / "cd").mkdir(parents=True)
    (live / "cd" / ("d" * 62 + ".dirmeta")).write_bytes(b"x")
    helper = subprocess.Popen([sys.executable, "-c", LOCK_HELPER, str(tmp / f"{live.name}-lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None and helper.stdout.readline().strip() == "locked"
        objects_before = _objects(repo.path)
        txn = repo.transaction(fsync=False)
        for name in stale:
            assert not (tmp / name).exists(), name
            assert not (tmp / f"{name}-lock").exists(), name
        assert live.is_dir() and (tmp / f"{live.name}-lock").exists()
        txn.abort()
        assert _objects(repo.path) == objects_before
    finally:
        assert helper.stdin is not None
        helper.stdin.close()
        helper.wait(timeout=10)
    assert live.is_dir()
    # Its owner is gone now: the next transaction removes it too.
    repo.transaction(fsync=False).abort()
    assert sorted(n for n in os.listdir(tmp) if n.startswith("staging-")) == []


KILLED_WRITER = r'''
import os, signal, sys
from ostreefs.store.repo import Repo
from ostreefs.store.objects import FileHeader, ObjectType, DirMeta
repo = Repo.open(sys.argv[1])
txn = repo.transaction(fsync=False)
txn.write_metadata(ObjectType.DIR_META, DirMeta(0, 0, 0o40711).to_bytes())
for i in range(20):
    txn.write_file_bytes(FileHeader(0, 0, 0o100644), b"killed %d\n" % i)
print(txn.staging, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
'''


def test_staging_of_a_killed_process_is_cleaned(repo: Repo, tree: Path, ostree,
                                                ostreefs) -> None:
    before = _objects(repo.path)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    p = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(repo.path)],
                       capture_output=True, text=True, env=env, timeout=60, check=False)
    assert p.returncode == -signal.SIGKILL, p.stderr
    staging = Path(p.stdout.strip())
    assert staging.is_dir() and any(staging.rglob("*.file*"))
    assert _objects(repo.path) == before, "a killed transaction published objects"
    ostree("fsck", f"--repo={repo.path}")
    # ostree may adopt a same-boot staging dir; whatever it does, the repo stays sound.
    ostree("commit", f"--repo={repo.path}", "-b", "main", f"--timestamp=@{TS}", str(tree))
    ostree("fsck", f"--repo={repo.path}")
    ostreefs("commit", f"--repo={repo.path}", "-b", "main", f"--timestamp=@{TS + 1}",
             str(tree))
    assert not staging.exists()
    assert not Path(f"{staging}-lock").exists()
    assert [n for n in os.listdir(repo.path / "tmp") if n.startswith("staging-")] == []
    ostree("fsck", f"--repo={repo.path}")


# ------------------------------------------------------------------- no rewrites


def test_existing_objects_not_rewritten(tmp_path: Path, tree: Path, ostree) -> None:
    r = tmp_path / "bu"
    ostree("init", f"--repo={r}", "--mode=bare-user")
    repo = Repo.open(r)
    opts = dict(orphan=True, no_bindings=True, subject="same", timestamp=TS, fsync=False,
                use_stat_cache=False)
    first = commit(repo, [TreeSource("dir", str(tree))], CommitOptions(**opts))
    objs = _objects(r)
    assert len(objs) == len(first.written)
    second = commit(repo, [TreeSource("dir", str(tree))], CommitOptions(**opts))
    assert second.checksum == first.checksum
    s = second.stats
    assert s.content_cache_hits == 0
    assert s.content_total == first.stats.content_total == 5  # 4 files + 1 symlink
    assert s.content_written == 0 and s.metadata_written == 0 and second.written == []
    assert _objects(r) == objs  # same inodes, sizes, mtimes and ctimes
    assert [n for n in os.listdir(r / "tmp") if n != "cache"] == []
    # The same holds when ostree wrote the objects first.
    (tree / "new.txt").write_text("new\n")
    theirs = ostree("commit", f"--repo={r}", "--orphan", "--no-bindings", "-s", "same",
                    f"--timestamp=@{TS}", str(tree)).stdout.strip()
    objs = _objects(r)
    ours = commit(repo, [TreeSource("dir", str(tree))], CommitOptions(**opts))
    assert ours.checksum == theirs
    assert ours.written == []
    assert _objects(r) == objs
    ostree("fsck", f"--repo={r}")
