"""The recorder: a process that records a mounted tree's file headers ahead of a walk.

The first walk of a tree that has no ``dirheaders`` records loads one header per file;
in the mount's daemon that work shares one interpreter lock with answering the kernel,
and the daemon is CPU-bound for it. The mount starts a process of its own
(:func:`spawn`, through ``ostreefs.cli.recorder_process``) that runs
:func:`ostreefs.store.treerecord.record_tree` on another CPU, and the daemon finds the
records as a walk reaches each directory. Only derived data is written, in LMDB
transactions, so it can be stopped at any moment: the mount ends it at unmount, and it
ends by itself once the mount's process is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys

#: A background job: a user's look at the mount comes first where CPUs are scarce.
NICE = 10

#: The module a recorder process runs (the CLI layer's entry to :func:`main`).
ENTRY = "ostreefs.cli.recorder_process"


def spawn(repo_path: str, tree: str) -> subprocess.Popen[bytes] | None:
    """Start recording ``tree`` of the repository at ``repo_path`` (absolute); None if
    a process cannot be started (a mount works without it)."""
    try:
        return subprocess.Popen(
            # -P and cwd "/": a mount started as root in someone's directory must not
            # import a planted ostreefs/ from there.
            [sys.executable, "-P", "-m", ENTRY, repo_path, tree, str(os.getpid())],
            cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,  # the daemon's are not its business (LMDB leaves some open)
            # Not in the terminal's process group: a ^C is for the mount, which ends this.
            start_new_session=True)
    except (OSError, ValueError):
        return None


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a recorder (what it wrote stays; what it was writing is rolled back, as
    after a crash, which LMDB is made for). SIGKILL: a stopped process would keep a
    SIGTERM pending, and the unmount would wait for it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def main(repo_path: str, tree: str, parent: int) -> int:
    """The recorder process's work: 0 once the whole tree is recorded. It stops when
    ``parent`` (the mount's process) is no longer its parent."""
    from ostreefs.store.repo import Repo
    from ostreefs.store.treerecord import record_tree

    os.nice(NICE)
    try:
        repo = Repo.open(repo_path)
        done = record_tree(repo, tree, keep_going=lambda: os.getppid() == parent)
    except Exception:  # noqa: BLE001 - derived data: whatever failed, nothing is lost
        return 2
    return 0 if done else 1
