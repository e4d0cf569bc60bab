"""Recording the file headers of a whole tree in the index, one directory at a time.

A mount lists a directory without opening its files' objects when the index holds the
directory's ``dirheaders`` record, and it writes that record itself after a listing. A
tree nothing has mounted yet (a commit ``ostree`` wrote, say) has none, so its first walk
loads every header on the mount's serving thread: a syscall or two and a parse per file,
all under the one interpreter lock that also answers the kernel. :func:`record_tree` does
the same loads ahead of the walk, so that a process of its own, on another CPU, can do
them (see ``ostreefs.mount.recorder``). It goes depth first, files before
subdirectories, which is the order ``find`` and ``tar`` walk in, and writes a few
directories at a time, so that a walk that has just started finds its records soon.

A dirtree whose record exists (and is well formed) is not read again for its files; one
that cannot be read, or whose files' objects cannot, gets no record (the mount reports
the damage when it gets there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ostreefs.errors import StoreError
from ostreefs.store import dirheaders

if TYPE_CHECKING:
    from ostreefs.store.repo import Repo

#: Directories written to the index at once.
BATCH = 32


def record_tree(repo: Repo, tree: str, *, batch: int = BATCH,
                keep_going: Callable[[], bool] = lambda: True) -> bool:
    """Record the headers of every directory of ``tree`` (a dirtree checksum) that has
    no record yet; whether the whole tree is now recorded. Stops early, with what it
    wrote kept, once ``keep_going()`` is false, and as soon as something drops mount
    records meanwhile (what it read may be what the drop was about).

    A walk that went to the end marks the tree, damaged or not: another recorder would
    only meet the same damage (a mount records what it lists, repaired or not)."""
    idx = repo.index
    if idx.tree_recorded(tree):
        return True
    generation = idx.records_generation()  # before any object is read
    damaged = False
    pending: list[tuple[str, bytes]] = []
    seen: set[str] = set()  # a subtree repeated in the tree is recorded once
    todo = [tree]
    stopped = False
    while todo:
        if not keep_going():
            stopped = True
            break
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        try:
            dt = repo.load_dirtree(t)
        except (StoreError, OSError):  # damaged, or unreadable (EIO, EACCES)
            damaged = True
            continue
        todo.extend(c for _n, c, _m in reversed(dt.dirs))
        raw = idx.dir_headers(t)
        if raw is not None and dirheaders.unpack(raw, len(dt.files)) is not None:
            continue
        try:
            headers = [repo.load_file_header(c) for _n, c in dt.files]
        except (StoreError, OSError):
            damaged = True
            continue
        pending.append((t, dirheaders.pack(headers)))
        if len(pending) >= batch:
            if not idx.store_dir_headers(pending, generation):
                return False
            pending = []
    if pending and not idx.store_dir_headers(pending, generation):
        return False
    if stopped:  # (what it had read is written, above)
        return False
    return idx.mark_tree_recorded(tree, generation) and not damaged
