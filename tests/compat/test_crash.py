"""Crash safety: SIGKILL during ``ostreefs commit`` never leaves a corrupt repository.

A large tree (3000 files, ~60 MB) is committed, then a changed version is committed
again and the process is killed at a random (seeded) moment.  Afterwards both fscks must
pass and the branch must point at either the old or the new commit (never at something
else, never at a commit with missing objects).  The new commit's checksum is computed
independently by ostree in a scratch repository.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from support import Tool, commit_checksum, format_result, init_repo, rev_parse
from treegen import make_big_tree, mutate_tree

T_OLD = "--timestamp=@1700000000"
T_NEW = "--timestamp=@1700000100"
TRIALS = 5
#: pull-local's trials go on past TRIALS until one was killed while linking, up to this.
MAX_TRIALS = 12


@pytest.fixture(scope="module")
def big_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    old_umask = os.umask(0o022)
    try:
        base = tmp_path_factory.mktemp("crash-trees")
        old = make_big_tree(base / "old", seed=7)
        new = base / "new"
        shutil.copytree(old, new, symlinks=True)
        mutate_tree(new, seed=7)
    finally:
        os.umask(old_umask)
    return old, new


def _commit_args(tree: Path, new: bool) -> list[str]:
    return ["-b", "main", "-s", "new" if new else "old", T_NEW if new else T_OLD, str(tree)]


def _fsck_both(ostree: Tool, ostreefs: Tool, repo: Path, context: str) -> None:
    for tool in (ostree, ostreefs):
        proc = tool("fsck", f"--repo={repo}", check=False)
        assert proc.returncode == 0, f"{context}\n" + format_result(proc.args, proc)


@pytest.mark.parametrize("mode", ["bare-user", "archive"])
def test_sigkill_during_commit(
    ostree: Tool, ostreefs: Tool, big_trees: tuple[Path, Path], tmp_path: Path, mode: str
) -> None:
    old, new = big_trees
    rng = random.Random(f"crash-{mode}")

    # Expected checksums, by the oracle.
    scratch = init_repo(ostree, tmp_path / "scratch", mode)
    c_old = commit_checksum(ostree("commit", f"--repo={scratch}", *_commit_args(old, False)))
    c_new = commit_checksum(ostree("commit", f"--repo={scratch}", *_commit_args(new, True)))
    shutil.rmtree(scratch)

    repo = init_repo(ostreefs, tmp_path / "repo", mode)
    got_old = commit_checksum(ostreefs("commit", f"--repo={repo}", *_commit_args(old, False)))
    assert got_old == c_old, "ostreefs and ostree disagree on the first commit"

    # How long an uninterrupted incremental commit takes (in a copy of the repository).
    measure = tmp_path / "measure"
    subprocess.run(["cp", "-a", str(repo), str(measure)], check=True)
    t0 = time.monotonic()
    got_new = commit_checksum(ostreefs("commit", f"--repo={measure}", *_commit_args(new, True)))
    duration = time.monotonic() - t0
    assert got_new == c_new
    shutil.rmtree(measure)

    outcomes = []
    for trial in range(TRIALS):
        # Every trial starts from the old commit, keeping whatever earlier kills left behind.
        if rev_parse(ostree, repo, "main") != c_old:
            ostree("reset", f"--repo={repo}", "main", c_old)
        delay = rng.uniform(0, duration)
        proc = ostreefs.popen(
            "commit",
            f"--repo={repo}",
            *_commit_args(new, True),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)  # our own child's process group
        out, err = proc.communicate(timeout=120)
        context = (
            f"{mode} trial {trial}: delay {delay:.3f}s of {duration:.3f}s, "
            f"killed={killed}, rc={proc.returncode}, stderr={err[-2000:]!r}"
        )
        if not killed:
            assert proc.returncode == 0, context
            assert out.decode().strip() == c_new, context
        _fsck_both(ostree, ostreefs, repo, context)
        head = rev_parse(ostree, repo, "main")
        assert head in (c_old, c_new), context + f": main -> {head}"
        assert rev_parse(ostreefs, repo, "main") == head, context
        outcomes.append((killed, head == c_new))

    # After all that, an uninterrupted commit still produces the expected commit.
    if rev_parse(ostree, repo, "main") != c_old:
        ostree("reset", f"--repo={repo}", "main", c_old)
    final = commit_checksum(ostreefs("commit", f"--repo={repo}", *_commit_args(new, True)))
    assert final == c_new, outcomes
    _fsck_both(ostree, ostreefs, repo, f"final commit after trials {outcomes}")
    co = tmp_path / "co"
    ostree("checkout", f"--repo={repo}", "main", co)
    assert (
        subprocess.run(
            ["diff", "-r", "--no-dereference", str(new), str(co)], capture_output=True
        ).returncode
        == 0
    )
    assert any(k for k, _ in outcomes), f"no trial was actually interrupted: {outcomes}"


def test_sigkill_during_pull_local(
    ostree: Tool, ostreefs: Tool, big_trees: tuple[Path, Path], tmp_path: Path
) -> None:
    """pull-local between bare-user repos on one filesystem links content objects
    straight into objects/: a kill at any moment leaves a destination both fscks accept,
    whose ref is absent or the commit, and the next pull-local completes it."""
    old, _new = big_trees
    rng = random.Random("crash-pull-local")
    src = init_repo(ostree, tmp_path / "src", "bare-user")
    c = commit_checksum(ostree("commit", f"--repo={src}", *_commit_args(old, False)))

    # How long a whole pull takes, and how long the tool runs before it links anything
    # (a pull of nothing: start-up, argument parsing, opening both repositories).
    # Measured warm (a first run may still be compiling the tool's modules), as the
    # trials run.
    measure = init_repo(ostreefs, tmp_path / "measure", "bare-user")
    for _ in range(2):
        t0 = time.monotonic()
        ostreefs("pull-local", f"--repo={measure}", str(src), c, "--commit-metadata-only")
        startup = time.monotonic() - t0
    t0 = time.monotonic()
    ostreefs("pull-local", f"--repo={measure}", str(src), "main")
    duration = startup + time.monotonic() - t0
    src_file = next((src / "objects").glob("*/*.file"))
    linked = measure / "objects" / src_file.parent.name / src_file.name
    assert os.lstat(linked).st_ino == os.lstat(src_file).st_ino, "objects were not linked"
    shutil.rmtree(measure)

    killed_mid = 0
    # The kill comes at a random moment of [lo, hi], a window that closes in on the
    # linking: a trial that finished first lowers hi, one killed before any link raises
    # lo. A busy machine can make one measurement a poor guess; more trials follow
    # (up to MAX_TRIALS) until one was killed while linking.
    lo, hi = startup, duration
    for trial in range(MAX_TRIALS):
        if trial >= TRIALS and killed_mid:
            break
        # A fresh destination each time, so every trial has all its links to make.
        dest = init_repo(ostreefs, tmp_path / f"dest{trial}", "bare-user")
        delay = rng.uniform(lo, hi)
        proc = ostreefs.popen("pull-local", f"--repo={dest}", str(src), "main",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
        time.sleep(delay)
        killed = proc.poll() is None
        if killed:
            os.killpg(proc.pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
        n_objects = sum(1 for _ in (dest / "objects").glob("*/*.file"))
        context = f"trial {trial}: delay {delay:.3f}s of {duration:.3f}s, killed={killed}, " \
                  f"rc={proc.returncode}, {n_objects} content objects, stderr={err[-2000:]!r}"
        if not killed:
            assert proc.returncode == 0, context
            hi = max(lo, delay)
        elif n_objects:
            killed_mid += 1
        else:
            lo = min(hi, delay)
        _fsck_both(ostree, ostreefs, dest, context)
        if ostree("refs", f"--repo={dest}").stdout.split():
            assert rev_parse(ostree, dest, "main") == c, context
        ostreefs("pull-local", f"--repo={dest}", str(src), "main")
        assert rev_parse(ostree, dest, "main") == c, context
        _fsck_both(ostree, ostreefs, dest, "after the pull that followed " + context)
        shutil.rmtree(dest)
    assert killed_mid, "no trial was killed while it was linking objects"
