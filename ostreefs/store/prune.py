"""Deleting what no kept commit reaches, with ``ostree prune``'s rules.

Two ways of choosing what is kept, as ostree 2022.7 has them:

* The plain way (no ``keep_younger_than``, ``only_branches`` or ``retain_branch_depth``):
  every commit object is a root, or with ``refs_only`` only the ref tips (``refs/heads``,
  ``refs/remotes`` and ``refs/mirrors``), each followed ``depth`` parents (-1: all).
* The per-branch way (any of those three options): only ref tips are roots (orphan
  commits are not kept). A ref named in ``retain_branch_depth`` keeps that many
  parents; with ``only_branches``, every ref not listed keeps its whole history; the
  other refs keep their tip plus, with ``keep_younger_than``, each parent back to the
  first commit older than the date (the first older one ends the walk, even if an
  ancestor is newer again), or else ``depth`` parents. Here ostree ignores
  ``refs/mirrors`` and deletes the commits only they reach, leaving refs that
  ``ostree fsck`` rejects; ostreefs keeps them, treating a mirror ref (named
  ``(COLLECTION, NAME)``) like any other ref.

From the kept commits the walk follows root dirtree and dirmeta down to every file.
Everything else listed in ``objects/`` (``commit``, ``dirtree``, ``dirmeta``, ``file``;
with ``commit_only`` just the commits) is deleted; a deleted commit takes its detached
``.commitmeta`` and ``state/C.commitpartial`` along. ``delete_commits`` are removed
first, refused if a ref points at one, and turn on ``core.tombstone-commits`` as ostree
does; while that is set each deleted commit leaves a ``.tombstone-commit`` object. Freed
bytes are the ``lstat`` sizes of the deleted objects (commitmeta not counted).

The whole run holds the repository lock exclusively, so a commit (ours or ostree's,
which hold it shared for their transaction and ref update) either finished before the
scan or waits for the deletions to end. Reachability is computed from the objects
themselves; the index is only brought up to date afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from ostreefs import _fs
from ostreefs.errors import CorruptObject, MalformedData, ObjectMissing, StoreError
from ostreefs.store.gvariant import Variant
from ostreefs.store.objects import Commit, ObjectType, encode_metadata, is_checksum
from ostreefs.store.refs import list_refs, rev_parse
from ostreefs.store.repo import Repo

#: The file extension ostree gives a tombstone (ObjectType's spelling is not ostree's).
TOMBSTONE_EXT = ObjectType.TOMBSTONE_COMMIT.value
#: Object types prune counts and may delete; detached metadata and tombstones are not
#: objects to it (ostree does not list them either).
_PRUNABLE = frozenset({ObjectType.COMMIT, ObjectType.DIR_TREE, ObjectType.DIR_META,
                       ObjectType.FILE})
#: Deletion order: commits first, so an interrupted prune never leaves a commit whose
#: tree is gone; then the trees, then what they name.
_ORDER = {ObjectType.COMMIT: 0, ObjectType.DIR_TREE: 1, ObjectType.DIR_META: 2,
          ObjectType.FILE: 3}

Key = tuple[str, ObjectType]


class CommitReferenced(StoreError):
    """Commit '{0}' is referenced by {1}"""


@dataclass
class PruneResult:
    """What a prune found and removed (or, with ``dry_run``, would remove)."""

    #: Objects considered: every listed object, or every commit with ``commit_only``
    #: (commits removed by ``delete_commits`` are gone before the count).
    total: int = 0
    #: Unreachable objects deleted (or that would be).
    deleted: int = 0
    #: Sum of their sizes on disk.
    bytes_freed: int = 0
    #: Commits removed by ``delete_commits``, then those found unreachable.
    deleted_commits: list[str] = field(default_factory=list)
    dry_run: bool = False
    commit_only: bool = False


def prune(repo: Repo, *, refs_only: bool = False, depth: int = -1,
          keep_younger_than: int | None = None, delete_commits: Sequence[str] = (),
          only_branches: Sequence[str] = (),
          retain_branch_depth: Mapping[str, int] | None = None,
          commit_only: bool = False, dry_run: bool = False) -> PruneResult:
    """Delete unreachable objects; see the module docstring for what is kept.

    ``keep_younger_than`` is a Unix time. ``delete_commits`` are revs (checksums, refs,
    ``REF^``...) resolved under the lock. ``only_branches`` and the keys of
    ``retain_branch_depth`` are ref names as :func:`~ostreefs.store.refs.list_refs`
    spells them (``REMOTE:NAME`` for remote refs).
    """
    result = PruneResult(dry_run=dry_run, commit_only=commit_only)
    with repo.lock(exclusive=True):
        refs = list_refs(repo)
        for b in only_branches:
            rev_parse(repo, b)  # a branch that does not exist is an error, as in ostree
        gone: set[str] = set()
        doomed_commits = list(dict.fromkeys(rev_parse(repo, r) for r in delete_commits))
        if doomed_commits:
            _check_unreferenced(repo, refs, doomed_commits)
            for c in doomed_commits:
                if not repo.has_object(c, ObjectType.COMMIT):
                    raise ObjectMissing(c, "commit")
            if not dry_run:
                _enable_tombstones(repo)
            for c in doomed_commits:
                if not dry_run:
                    _delete_commit(repo, c)
                gone.add(c)
                result.deleted_commits.append(c)

        objects = [(c, t) for c, t in repo.iter_objects()
                   if t in _PRUNABLE and not (t is ObjectType.COMMIT and c in gone)]
        if commit_only:
            objects = [k for k in objects if k[1] is ObjectType.COMMIT]
        result.total = len(objects)

        walk = _Walker(repo, gone, commit_only)
        if keep_younger_than is not None or only_branches or retain_branch_depth:
            retain = dict(retain_branch_depth or {})
            if only_branches:
                only = set(only_branches)
                for name in refs:
                    if name not in only and name not in retain:
                        retain[name] = -1
            roots = sorted(refs.items())
            # ostree leaves refs/mirrors out here and deletes what they point to, which
            # breaks those refs; they are kept instead, under the policy of other refs.
            for coll, name, tip in _mirror_refs(repo):
                mirror = f"({coll}, {name})"
                roots.append((mirror, tip))
                if only_branches and mirror not in retain:
                    retain[mirror] = -1
            for name, tip in roots:
                if name in retain:
                    walk.commit(tip, retain[name])
                elif keep_younger_than is not None:
                    walk.younger_than(tip, keep_younger_than)
                else:
                    walk.commit(tip, depth)
        elif refs_only:
            tips = set(refs.values()) | {c for _, _, c in _mirror_refs(repo)}
            for tip in sorted(tips):
                walk.commit(tip, depth)
        else:
            for c in sorted(c for c, t in objects if t is ObjectType.COMMIT):
                walk.commit(c, depth)

        doomed = sorted((k for k in objects if k not in walk.reachable),
                        key=lambda k: (_ORDER[k[1]], k[0]))
        tombstones = repo.config.get_bool("core", "tombstone-commits", False)
        synced = False
        for csum, otype in doomed:
            path = repo.object_path(csum, otype)
            try:
                size = os.lstat(path).st_size
            except FileNotFoundError:
                continue
            if not dry_run:
                if otype is not ObjectType.COMMIT and not synced:
                    _sync_deletions(repo, result.deleted_commits)
                    synced = True
                if otype is ObjectType.COMMIT:
                    _delete_commit(repo, csum, tombstone=tombstones)
                else:
                    _unlink(path, csum)
            if otype is ObjectType.COMMIT:
                result.deleted_commits.append(csum)
            result.deleted += 1
            result.bytes_freed += size
        if not dry_run and not synced:
            _sync_deletions(repo, result.deleted_commits)
        _sync_index(repo)
    return result


class _Walker:
    """The reachable set, grown one commit walk at a time."""

    def __init__(self, repo: Repo, gone: set[str], commit_only: bool) -> None:
        self.repo = repo
        self.gone = gone
        self.commit_only = commit_only
        self.reachable: set[Key] = set()
        #: commit -> the most parents still to follow when it was walked (-1: all).
        self._walked: dict[str, int] = {}
        self._trees: set[str] = set()

    def _load(self, csum: str) -> Commit | None:
        """The commit, or None where history ends (never fetched, or deleted)."""
        if csum in self.gone:
            return None
        try:
            return self.repo.load_commit(csum)
        except ObjectMissing:
            return None

    def commit(self, csum: str, depth: int) -> None:
        """Keep ``csum`` and ``depth`` of its parents (-1: all; below -1 means 0).

        A commit already walked with at least this much history left ends the walk;
        one walked with less is walked again, so the result never depends on the order
        of the roots.
        """
        cur: str | None = csum
        remaining = depth if depth >= -1 else 0
        while cur is not None:
            seen = self._walked.get(cur)
            if seen is not None and (seen == -1 or (remaining != -1 and seen >= remaining)):
                return
            c = self._load(cur)
            if c is None:
                return
            self._walked[cur] = remaining
            if seen is None:
                self._keep(cur, c)
            if remaining == 0:
                return
            if remaining > 0:
                remaining -= 1
            cur = c.parent

    def younger_than(self, tip: str, cutoff: int) -> None:
        """Keep the tip, then each parent back to the first one older than ``cutoff``."""
        self.commit(tip, 0)
        cur: str | None = tip
        while cur is not None:
            c = self._load(cur)
            if c is None or c.timestamp < cutoff:
                return
            self.commit(cur, 0)
            cur = c.parent

    def _keep(self, csum: str, c: Commit) -> None:
        self.reachable.add((csum, ObjectType.COMMIT))
        if self.commit_only:
            return
        stack = [(c.root_tree, c.root_meta)]
        while stack:
            tree_c, meta_c = stack.pop()
            self.reachable.add((meta_c, ObjectType.DIR_META))
            if tree_c in self._trees:
                continue
            self._trees.add(tree_c)
            self.reachable.add((tree_c, ObjectType.DIR_TREE))
            try:
                tree = self.repo.load_dirtree(tree_c)
            except ObjectMissing:
                continue  # a partial commit: nothing below it is here to keep
            for _name, fc in tree.files:
                self.reachable.add((fc, ObjectType.FILE))
            for _name, t, m in tree.dirs:
                stack.append((t, m))


def _mirror_refs(repo: Repo) -> Iterator[tuple[str, str, str]]:
    """(collection id, ref name, commit) of each ref under ``refs/mirrors``."""
    base = repo.path / "refs" / "mirrors"
    try:
        collections = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return
    for coll in collections:
        root = base / coll
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for fn in sorted(filenames):
                full = os.path.join(dirpath, fn)
                try:
                    with open(full, encoding="ascii") as f:
                        text = f.read().strip()
                except (OSError, UnicodeDecodeError) as e:
                    raise StoreError(f"Cannot read ref {full}: {e}") from None
                if not is_checksum(text):
                    raise MalformedData("ref", f"{full} does not hold a checksum")
                yield coll, os.path.relpath(full, root), text


def _check_unreferenced(repo: Repo, refs: Mapping[str, str],
                        commits: Sequence[str]) -> None:
    wanted = set(commits)
    for name, target in sorted(refs.items()):
        if target in wanted:
            raise CommitReferenced(target, f"'{name}'",
                                   hint="delete or move the ref first")
    for coll, name, target in _mirror_refs(repo):
        if target in wanted:
            raise CommitReferenced(target, f"({coll}, {name})",
                                   hint="delete or move the ref first")


def _enable_tombstones(repo: Repo) -> None:
    """Set ``core.tombstone-commits=true``, as ``ostree prune --delete-commit`` does."""
    repo.reload_config()
    if not repo.config.get_bool("core", "tombstone-commits", False):
        repo.config.set("core", "tombstone-commits", "true")
        repo.write_config()


def _unlink(path: os.PathLike[str] | str, csum: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StoreError(f"Cannot delete object {csum}: {e.strerror}") from None


def _delete_commit(repo: Repo, csum: str, tombstone: bool | None = None) -> None:
    """Remove a commit with its detached metadata, partial mark and (maybe) a tombstone."""
    if tombstone is None:
        tombstone = repo.config.get_bool("core", "tombstone-commits", False)
    _unlink(repo.object_path(csum, ObjectType.COMMIT_META), csum)
    _unlink(repo.object_path(csum, ObjectType.COMMIT), csum)
    if tombstone:
        data = encode_metadata([("commit", Variant("ay", csum.encode() + b"\0"))])
        path = repo.path / "objects" / csum[:2] / f"{csum[2:]}.{TOMBSTONE_EXT}"
        try:
            _fs.atomic_write(path, data, fsync=False)
        except OSError as e:
            raise StoreError(f"Cannot write tombstone for {csum}: {e.strerror}") from None
    try:
        os.unlink(repo.path / "state" / f"{csum}.commitpartial")
    except FileNotFoundError:
        pass
    except OSError as e:
        raise StoreError(f"Cannot delete partial mark of {csum}: {e.strerror}") from None


def _sync_deletions(repo: Repo, commits: list[str]) -> None:
    """Make the commit deletions durable before anything they named goes.

    An fsync of each directory that lost a commit is enough (an unlink is a change to
    its directory) and, unlike a syncfs, does not wait for unrelated dirty data.
    """
    if not commits or not repo.fsync_enabled:
        return
    for sub in sorted({c[:2] for c in commits}):
        try:
            _fs.fsync_dir(repo.path / "objects" / sub)
        except FileNotFoundError:
            pass


def _sync_index(repo: Repo) -> None:
    """Bring the derived index in line with ``objects/``; it is never needed here."""
    try:
        repo.index.sync()
    except (StoreError, CorruptObject, OSError):
        pass
