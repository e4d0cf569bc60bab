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

from collections import Counter
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
#: The fewest dirtrees a thread is given (a task per dirtree would cost more than the
#: read).
IO_MIN_BATCH = 8
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
    occurrences. The dirtrees of a level are read by a few threads at once, each
    given an equal share (a level of a few dozen is read in parallel too), and parsed
    on this thread: parsing on the readers made them queue for the interpreter lock.
    """
    # By the first 8 bytes of the checksum (the key a record keeps): the common case
    # counts in C.
    seen: Counter[bytes] = Counter()
    errors = 0
    root = bytes.fromhex(tree)
    level: dict[bytes, int] = {root: 1}
    listed: dict[bytes, None] = {root: None}

    def read(batch: list[bytes]) -> list[bytes | None]:
        out: list[bytes | None] = []
        for raw in batch:
            try:
                out.append(repo.read_metadata(raw.hex(), ObjectType.DIR_TREE))
            except StoreError as e:
                if on_error is not None:
                    on_error(raw.hex(), e)
                out.append(None)
        return out

    pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="ostreefs-count")
    try:
        depth = 0
        while level:
            if depth > MAX_DEPTH:
                errors += 1
                if on_error is not None:
                    h = next(iter(level)).hex()
                    on_error(h, CorruptObject(h, "dirtree",
                                              f"nested more than {MAX_DEPTH} levels deep"))
                break
            trees = list(level)  # (each once: a level maps a dirtree to its count)
            step = -(-len(trees) // max(1, min(IO_THREADS, len(trees) // IO_MIN_BATCH)))
            batches = [trees[i:i + step] for i in range(0, len(trees), step)]
            nxt: dict[bytes, int] = {}
            for batch, got in zip(batches, pool.map(read, batches), strict=True):
                for t, data in zip(batch, got, strict=True):
                    if data is None:
                        errors += 1
                        continue
                    try:
                        files, dirs = dirtree_checksums(data, file_width=8)
                    except MalformedData as e:
                        if on_error is not None:
                            on_error(t.hex(), CorruptObject(t.hex(), "dirtree", e.args[1]))
                        errors += 1
                        continue
                    times = level[t]
                    if times == 1:
                        seen.update(files)
                    else:
                        for c in files:
                            seen[c] += times
                    for c in dirs:
                        nxt[c] = nxt.get(c, 0) + times
                        if len(listed) < READAHEAD_TREES:
                            listed.setdefault(c)
            level = nxt
            depth += 1
    finally:
        pool.shutdown(wait=False)
    counts = {int.from_bytes(k, "big"): n for k, n in seen.items() if n > 1}
    return TreeCount(kept_counts(counts), list(listed), errors)


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
