"""How often each content object occurs in a tree: the hardlink counts a checkout shows.

A hardlink checkout links every occurrence of a content object to one inode, so a
file's ``st_nlink`` there depends on the whole tree, not on its directory. A mount must
know it before it answers the first ``stat`` of a file, and finding out reads every
dirtree of the tree: on a cold disk that is most of what a first look at a mounted tree
waits for. :func:`record_counts` keeps the result in the index (``treewalks``) so that
it is paid once per tree, and the writers of trees (commit, pull, pull-local) pay it
while the dirtrees they have just written or read are still in the page cache, so that
even a first mount of a tree ostreefs wrote or pulled finds its counts ready.

The record holds the counts above one, keyed by the first 8 bytes of the object's
checksum, and the tree's first :data:`READAHEAD_TREES` distinct dirtrees, breadth first,
which a mount asks the disk for ahead of a walk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from ostreefs.errors import CorruptObject, MalformedData, OstreefsError, StoreError
from ostreefs.store.objects import ObjectType, dirtree_checksums

if TYPE_CHECKING:
    from ostreefs.store.repo import Repo

#: Threads reading dirtrees at once: with a cold cache the pass waits on the disk far
#: more than it parses.
IO_THREADS = 4
#: Dirtrees per thread task (a task per dirtree would cost more than the read).
IO_BATCH = 64
#: Dirtrees of a tree (distinct, breadth first) recorded for a later mount to read ahead.
READAHEAD_TREES = 8192
#: How deep dirtrees may nest: ostree's limit on the depth of metadata. Only a damaged
#: tree goes deeper (a dirtree that names itself as a subdirectory would never end).
MAX_DEPTH = 256
#: The highest count kept: ``st_nlink`` is 32 bits, and a mount adds the repository's
#: own link.
MAX_COUNT = 0xFFFF_FFFE

#: Told about each dirtree the pass cannot read or parse (checksum, error).
OnError = Callable[[str, StoreError], None]


class TreeCount:
    """What one pass over a tree found."""

    __slots__ = ("counts", "trees", "errors")

    def __init__(self, counts: dict[int, int], trees: list[bytes], errors: int) -> None:
        #: Occurrences of each content object that occurs more than once, by the
        #: big-endian integer of the first 8 bytes of its checksum.
        self.counts = counts
        #: The tree's first READAHEAD_TREES distinct dirtrees, breadth first (raw
        #: checksums).
        self.trees = trees
        #: Dirtrees that could not be read or parsed (or nested too deep): the counts
        #: are then incomplete.
        self.errors = errors


def kept_counts(seen: dict[int, int]) -> dict[int, int]:
    """The counts a record keeps: those above one, at most MAX_COUNT."""
    return {k: min(n, MAX_COUNT) for k, n in seen.items() if n > 1}


def count_tree(repo: Repo, tree: str, on_error: OnError | None = None) -> TreeCount:
    """Count the content objects of ``tree`` (a dirtree checksum), level by level.

    A subtree that occurs twice is counted twice, as a checkout has it twice; but a
    level holds each distinct dirtree once, with how often it occurs, so a tree that
    repeats a subtree at every level costs its distinct dirtrees, not its 2^depth
    occurrences. The dirtrees of a level are read by a few threads at once.
    """
    seen: dict[int, int] = {}
    errors = 0
    level: dict[str, int] = {tree: 1}
    listed: dict[bytes, None] = {bytes.fromhex(tree): None}

    def read(batch: list[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for t in batch:
            try:
                out.append(repo.read_metadata(t, ObjectType.DIR_TREE))
            except StoreError as e:
                if on_error is not None:
                    on_error(t, e)
                out.append(None)
        return out

    pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ostreefs-count")
    try:
        depth = 0
        while level:
            if depth > MAX_DEPTH:
                errors += 1
                if on_error is not None:
                    t = next(iter(level))
                    on_error(t, CorruptObject(t, "dirtree",
                                              f"nested more than {MAX_DEPTH} levels deep"))
                break
            trees = list(level)  # (each once: a level maps a dirtree to its count)
            batches = [trees[i:i + IO_BATCH] for i in range(0, len(trees), IO_BATCH)]
            data: dict[str, bytes | None] = {}
            for batch, got in zip(batches, pool.map(read, batches), strict=True):
                data.update(zip(batch, got, strict=True))
            nxt: dict[str, int] = {}
            for t, times in level.items():
                raw = data[t]
                if raw is None:
                    errors += 1
                    continue
                try:
                    files, dirs = dirtree_checksums(raw)
                except MalformedData as e:
                    if on_error is not None:
                        on_error(t, CorruptObject(t, "dirtree", e.args[1]))
                    errors += 1
                    continue
                for c in files:
                    k = int.from_bytes(c[:8], "big")
                    seen[k] = seen.get(k, 0) + times
                for c in dirs:
                    h = c.hex()
                    nxt[h] = nxt.get(h, 0) + times
                    if len(listed) < READAHEAD_TREES:
                        listed.setdefault(c)
            level = nxt
            depth += 1
    finally:
        pool.shutdown(wait=False)
    return TreeCount(kept_counts(seen), list(listed), errors)


def record_counts(repo: Repo, tree: str) -> bool:
    """Count ``tree`` and record it in the index, unless it is recorded already; whether
    it is recorded now. A tree with a dirtree missing or damaged (a partial pull, say) is
    not recorded: its counts would be wrong once it is complete."""
    idx = repo.index
    if idx.tree_walk(tree) is not None:
        return True
    generation = idx.records_generation()  # before any dirtree is read
    tc = count_tree(repo, tree)
    if tc.errors:
        return False
    return idx.store_tree_walk(tree, tc.counts, tc.trees, generation)


def record_commits(repo: Repo, commits: Iterable[str]) -> None:
    """Record the counts of each commit's tree, as a writer of trees does once its
    objects are in place (see :func:`record_counts_quietly`)."""
    for commit in dict.fromkeys(commits):
        try:
            tree = repo.load_commit(commit).root_tree
        except (OstreefsError, OSError):
            continue
        record_counts_quietly(repo, tree)


def record_counts_quietly(repo: Repo, tree: str) -> None:
    """:func:`record_counts`, best effort: the index is derived data, and a mount
    counts again without it."""
    try:
        record_counts(repo, tree)
    except Exception:  # noqa: BLE001 - derived data (an LMDB error too): no record
        pass
