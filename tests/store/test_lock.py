"""ostreefs and ostree exclude each other through the same repository lock.

ostree 2022.7 locks ``REPO/.lock`` with OFD locks (``F_OFD_SETLK``): shared for writers
(commit), exclusive for deleters (prune), waiting up to ``core.lock-timeout-secs`` and
then failing with ``error: Locking repo exclusive failed: Resource temporarily
unavailable`` (exit 1). ostreefs must take that lock, so:

* while ostreefs holds it exclusively, ostree can neither prune nor commit;
* while ostreefs holds it shared (a transaction), ostree can commit but not prune;
* while another process holds it (a helper taking the OFD lock exactly as ostree does,
  written here independently of ostreefs' own code), ``ostreefs commit`` fails with a
  one-line error after the timeout and leaves the repository unchanged.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from support import TS, assert_clean_failure, repo_snapshot

from ostreefs.errors import LockTimeout
from ostreefs.store.repo import Repo

# Takes an OFD lock as ostree does. argv: PATH KIND(sh|ex) MODE(hold|try).
# hold: waits for the lock, prints "locked", keeps it until stdin closes.
# try: one attempt, prints "ok" or "busy", exits.
LOCK_HELPER = r'''
import errno, fcntl, os, struct, sys, time
path, kind, mode = sys.argv[1:4]
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
l_type = fcntl.F_RDLCK if kind == "sh" else fcntl.F_WRLCK
# struct flock on Linux/x86-64: short type, short whence, off_t start, off_t len, pid_t pid
arg = struct.pack("@hhqqi", l_type, 0, 0, 0, 0).ljust(32, b"\0")
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
def attempt():
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, arg)
        return True
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
if mode == "try":
    print("ok" if attempt() else "busy", flush=True)
    sys.exit(0)
deadline = time.monotonic() + 30
while not attempt():
    if time.monotonic() > deadline:
        sys.exit("helper: timed out")
    time.sleep(0.01)
print("locked", flush=True)
sys.stdin.read()
'''


@contextmanager
def held_by_other_process(lock_path: Path, kind: str) -> Iterator[None]:
    p = subprocess.Popen([sys.executable, "-c", LOCK_HELPER, str(lock_path), kind, "hold"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "locked"
        yield
    finally:
        assert p.stdin is not None
        p.stdin.close()
        p.wait(timeout=10)


def other_process_can_lock(lock_path: Path, kind: str) -> bool:
    out = subprocess.run([sys.executable, "-c", LOCK_HELPER, str(lock_path), kind, "try"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.strip() == "ok"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "sub").mkdir(parents=True)
    (t / "a.txt").write_text("a\n")
    (t / "sub" / "b.txt").write_text("b\n")
    return t


@pytest.fixture
def repo_path(tmp_path: Path, tree: Path, ostree) -> Path:
    """An ostree repo with one branch, lock-timeout-secs=1."""
    r = tmp_path / "repo"
    ostree("init", f"--repo={r}", "--mode=bare-user")
    ostree("commit", f"--repo={r}", "-b", "main", f"--timestamp=@{TS}", str(tree))
    ostree("config", f"--repo={r}", "set", "core.lock-timeout-secs", "1")
    assert (r / ".lock").exists()
    return r


def _timed(ostree, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    t0 = time.monotonic()
    r = ostree(*args, check=False)
    return r, time.monotonic() - t0


def test_ostree_prune_and_commit_blocked_by_exclusive_lock(repo_path: Path, tree: Path,
                                                           ostree) -> None:
    repo = Repo.open(repo_path)
    assert repo.lock_timeout == 1.0
    refs_before = ostree("refs", f"--repo={repo_path}").stdout
    with repo.lock(exclusive=True):
        r, elapsed = _timed(ostree, "prune", f"--repo={repo_path}", "--refs-only")
        assert r.returncode == 1, r
        assert "Locking repo exclusive failed" in r.stderr, r.stderr
        assert elapsed >= 0.8, "ostree should have waited for lock-timeout-secs"
        r, _ = _timed(ostree, "commit", f"--repo={repo_path}", "-b", "other", str(tree))
        assert r.returncode == 1 and "Locking repo shared failed" in r.stderr, r.stderr
        assert other_process_can_lock(repo_path / ".lock", "sh") is False
    assert ostree("refs", f"--repo={repo_path}").stdout == refs_before
    # Released: both work again.
    ostree("prune", f"--repo={repo_path}", "--refs-only")
    ostree("commit", f"--repo={repo_path}", "-b", "other", str(tree))


def test_ostree_commits_but_cannot_prune_during_a_transaction(repo_path: Path, tree: Path,
                                                              ostree) -> None:
    repo = Repo.open(repo_path)
    txn = repo.transaction(fsync=False)
    try:
        r, _ = _timed(ostree, "prune", f"--repo={repo_path}", "--refs-only")
        assert r.returncode == 1 and "Locking repo exclusive failed" in r.stderr, r.stderr
        ostree("commit", f"--repo={repo_path}", "-b", "concurrent", str(tree))
        assert other_process_can_lock(repo_path / ".lock", "sh")
        assert not other_process_can_lock(repo_path / ".lock", "ex")
    finally:
        txn.abort()
    assert other_process_can_lock(repo_path / ".lock", "ex")
    ostree("prune", f"--repo={repo_path}", "--refs-only")


def test_ostree_waits_for_the_lock_then_proceeds(repo_path: Path, ostree) -> None:
    ostree("config", f"--repo={repo_path}", "set", "core.lock-timeout-secs", "20")
    repo = Repo.open(repo_path)
    with repo.lock(exclusive=True):
        p = ostree.popen("prune", f"--repo={repo_path}", "--refs-only",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        assert p.poll() is None, "ostree prune did not wait for the lock"
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert out.startswith("Total objects:"), out


@pytest.mark.parametrize("cmd", ["commit", "commit-orphan"])
def test_ostreefs_commit_fails_while_another_process_holds_the_lock(
        repo_path: Path, tree: Path, ostreefs, ostree, cmd: str) -> None:
    before = repo_snapshot(repo_path)
    head = ostree("rev-parse", f"--repo={repo_path}", "main").stdout
    args = ["-b", "main"] if cmd == "commit" else ["--orphan"]
    (tree / "new.txt").write_text("new\n")
    with held_by_other_process(repo_path / ".lock", "ex"):
        t0 = time.monotonic()
        r = ostreefs("commit", f"--repo={repo_path}", *args, "-s", "blocked", str(tree),
                     check=False)
        elapsed = time.monotonic() - t0
    assert_clean_failure(r)
    first = r.stderr.strip().splitlines()[0]
    assert first.startswith("error: ") and "lock" in first.lower(), r.stderr
    assert elapsed >= 0.8, "ostreefs should have waited for lock-timeout-secs"
    assert repo_snapshot(repo_path) == before
    assert ostree("rev-parse", f"--repo={repo_path}", "main").stdout == head
    # Once the lock is free the same command works.
    new = ostreefs("commit", f"--repo={repo_path}", *args, "-s", "free", str(tree)).stdout
    assert len(new.strip()) == 64
    ostree("fsck", f"--repo={repo_path}")


def test_ostreefs_commits_beside_a_shared_holder_but_cannot_delete(
        repo_path: Path, tree: Path, ostreefs, ostree) -> None:
    with held_by_other_process(repo_path / ".lock", "sh"):
        c = ostreefs("commit", f"--repo={repo_path}", "-b", "main", str(tree)).stdout.strip()
        assert ostree("rev-parse", f"--repo={repo_path}", "main").stdout.strip() == c
        r = ostreefs("fsck", f"--repo={repo_path}", "--delete", check=False)
        assert_clean_failure(r)
        assert "lock" in r.stderr.lower(), r.stderr
        repo = Repo.open(repo_path)
        with pytest.raises(LockTimeout):
            with repo.lock(exclusive=True):
                pass
    # After a timeout the same Repo object can still lock once the holder is gone.
    with repo.lock(exclusive=True):
        assert not other_process_can_lock(repo_path / ".lock", "sh")
    assert other_process_can_lock(repo_path / ".lock", "ex")


def test_in_process_lock_times_out_against_ostree_style_holder(repo_path: Path) -> None:
    repo = Repo.open(repo_path)
    with held_by_other_process(repo_path / ".lock", "ex"):
        t0 = time.monotonic()
        with pytest.raises(LockTimeout) as ei:
            with repo.lock():
                pass
        assert 0.8 <= time.monotonic() - t0 < 10
        assert "shared" in str(ei.value)


def test_lock_recursion_and_upgrade(repo_path: Path) -> None:
    lock = repo_path / ".lock"
    repo = Repo.open(repo_path)
    with repo.lock():
        assert other_process_can_lock(lock, "sh") and not other_process_can_lock(lock, "ex")
        with repo.lock():
            assert other_process_can_lock(lock, "sh")
            with repo.lock(exclusive=True):
                assert not other_process_can_lock(lock, "sh")
                with repo.lock():  # shared inside exclusive stays exclusive
                    assert not other_process_can_lock(lock, "sh")
                assert not other_process_can_lock(lock, "sh")
        assert not other_process_can_lock(lock, "ex")
    assert other_process_can_lock(lock, "ex")
    with repo.lock(exclusive=True):
        with repo.lock():
            assert not other_process_can_lock(lock, "sh")
        assert not other_process_can_lock(lock, "sh")
    assert other_process_can_lock(lock, "ex")


def test_lock_downgrades_after_nested_exclusive(repo_path: Path) -> None:
    lock = repo_path / ".lock"
    repo = Repo.open(repo_path)
    with repo.lock():
        with repo.lock(exclusive=True):
            assert not other_process_can_lock(lock, "sh")
        # Back to shared: ostree could commit again (it takes the shared lock).
        assert other_process_can_lock(lock, "sh")


def test_locking_disabled_in_config(repo_path: Path, ostree) -> None:
    ostree("config", f"--repo={repo_path}", "set", "core.locking", "false")
    repo = Repo.open(repo_path)
    with repo.lock(exclusive=True):
        assert other_process_can_lock(repo_path / ".lock", "ex")
