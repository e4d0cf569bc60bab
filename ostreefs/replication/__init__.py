"""Replication: remotes over HTTP(S), pulled incrementally and verified (trio + httpx).

Kept light: importing the package loads neither trio nor httpx; the modules that need
them are imported by the functions that use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ostreefs.store.repo import Repo


def fetch_summary(repo: Repo, remote_name: str) -> tuple[bytes | None, bytes | None]:
    """The remote's ``summary`` and ``summary.sig`` as served (None where absent)."""
    from ostreefs.replication.remote_summary import fetch_summary as fetch

    return fetch(repo, remote_name)


__all__ = ["fetch_summary"]
