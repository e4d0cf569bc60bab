"""Taking over what an interrupted pull had already staged.

A pull killed before its transaction committed leaves its objects in a staging
directory under ``tmp/`` whose lock nobody holds any more. Objects there were fetched
and verified once, but a kill in the middle of a write can leave a short file under its
final staging name, and a crash of the machine can leave unsynced garbage; so each file
is re-verified here and only the good ones move into the new transaction (ostree also
resumes staging directories of the same boot). Directories from another boot are left
to the transaction's own cleanup, as ostree discards them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from ostreefs import _fs
from ostreefs.store.fsck import verify_object
from ostreefs.store.objects import ObjectType, is_checksum
from ostreefs.store.repo import Repo
from ostreefs.store.transaction import Transaction


@dataclass
class StaleStaging:
    path: str
    lock_path: str
    lock_fd: int


def claim_stale_staging(repo: Repo) -> list[StaleStaging]:
    """Lock this boot's abandoned staging directories before a transaction cleans them."""
    tmp = repo.path / "tmp"
    prefix = f"staging-{_fs.boot_id()}-"
    out: list[StaleStaging] = []
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return out
    for n in sorted(names):
        if not n.startswith(prefix) or n.endswith("-lock"):
            continue
        path = tmp / n
        lock_path = tmp / f"{n}-lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue
        if not _fs.try_ofd_lock(fd, _fs.LOCK_EX) or not path.is_dir():
            os.close(fd)
            continue
        out.append(StaleStaging(str(path), str(lock_path), fd))
    return out


def adopt(txn: Transaction, stale: list[StaleStaging]) -> int:
    """Move the verified objects of ``stale`` into ``txn`` and remove the rest.

    Returns the number of objects taken over.
    """
    taken = 0
    for st in stale:
        try:
            taken += _adopt_one(txn, st.path)
        finally:
            shutil.rmtree(st.path, ignore_errors=True)
            try:
                os.unlink(st.lock_path)
            except FileNotFoundError:
                pass
            os.close(st.lock_fd)
    return taken


def release(stale: list[StaleStaging]) -> None:
    """Give the claimed directories back untouched (the pull did not get to adopt them)."""
    for st in stale:
        os.close(st.lock_fd)


def _adopt_one(txn: Transaction, staging: str) -> int:
    repo = txn.repo
    # A view of the repository whose objects/ is the stale staging directory, so the
    # store's own verification reads the staged files (same names, same mode).
    view = Repo(repo.path, repo.config)
    view._objdir = staging.rstrip("/") + "/"
    taken = 0
    for sub in os.listdir(staging):
        if len(sub) != 2:
            continue
        subdir = os.path.join(staging, sub)
        try:
            names = os.listdir(subdir)
        except NotADirectoryError:
            continue
        for name in names:
            stem, dot, ext = name.partition(".")
            csum = sub + stem
            if not dot or not is_checksum(csum):
                continue
            try:
                otype = ObjectType.from_ext(ext)
            except ValueError:
                continue
            if otype is ObjectType.COMMIT_META:
                continue  # no checksum to verify: fetched again with its commit
            if (otype is ObjectType.FILE) != (ext == ("filez" if repo.mode.is_archive
                                                      else "file")):
                continue
            if verify_object(view, csum, otype) is not None:
                continue
            try:
                taken += txn.stage_rename(csum, otype, os.path.join(subdir, name))
            except OSError:
                continue
    return taken
