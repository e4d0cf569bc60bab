"""Commit history: walking parents, and the moves a ref has made."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ostreefs.errors import ObjectMissing
from ostreefs.store.objects import Commit
from ostreefs.store.repo import Repo


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One commit of a history walk; ``commit`` is None where history was not fetched."""

    checksum: str
    commit: Commit | None
    partial: bool = False


def iter_log(repo: Repo, checksum: str, limit: int | None = None) -> Iterator[LogEntry]:
    """The commit and its ancestors, newest first, stopping where a parent is missing."""
    n = 0
    cur: str | None = checksum
    while cur is not None and (limit is None or n < limit):
        try:
            c = repo.load_commit(cur)
        except ObjectMissing:
            if n == 0:
                raise
            yield LogEntry(cur, None)
            return
        partial = (repo.path / "state" / f"{cur}.commitpartial").exists()
        yield LogEntry(cur, c, partial)
        n += 1
        cur = c.parent
