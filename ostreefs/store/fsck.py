"""Checking a repository: every object's checksum, every commit's closure, the index.

Each problem names the object by checksum and the commits and paths that reach it, so
a user knows what is damaged, not only that something is. ``delete=True`` removes
corrupt objects and marks the commits that reach them partial
(``state/C.commitpartial`` holding ``f``, as ostree's fsck writes), so a later pull
refetches them.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ostreefs import _fs
from ostreefs.errors import CorruptObject, MalformedData, ObjectMissing, StoreError
from ostreefs.store.config import RepoMode
from ostreefs.store.objects import Commit, FileHeader, ObjectType, normalize_xattrs
from ostreefs.store.refs import list_refs
from ostreefs.store.repo import OSTREEMETA_XATTR, READ_CHUNK, Repo


@dataclass
class Problem:
    checksum: str
    otype: ObjectType
    kind: str  # "corrupt" or "missing"
    detail: str
    commits: list[str] = field(default_factory=list)
    path: str = ""

    def describe(self) -> str:
        where = ""
        if self.commits:
            where = f" (in commit{'s' if len(self.commits) > 1 else ''} " \
                    f"{', '.join(self.commits[:3])}{' …' if len(self.commits) > 3 else ''}" \
                    f"{', path ' + self.path if self.path else ''})"
        return f"{self.kind} {self.otype.value} object {self.checksum}{where}: {self.detail}"


@dataclass
class FsckReport:
    refs: int = 0
    commits: int = 0
    objects: int = 0
    partial_commits: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ref_problems: list[str] = field(default_factory=list)
    index_repairs: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    #: Partial commits whose objects a ``fsck --delete`` removed (marker holds ``f``).
    #: Only these fail the check, as with ostree: a partial commit left by an
    #: interrupted or refused pull is incomplete, not corrupt.
    fsck_partial_commits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.ref_problems and not self.fsck_partial_commits


def verify_object(repo: Repo, checksum: str, otype: ObjectType) -> str | None:
    """Recompute an object's checksum; return what is wrong with it, or None."""
    try:
        if otype is ObjectType.FILE:
            if repo.mode is not RepoMode.ARCHIVE:
                actual = _bare_content_checksum(repo, checksum)
            else:
                header, size = repo.load_file_header(checksum)
                h = hashlib.sha256(header.checksum_header())
                total = 0
                if not header.is_symlink:
                    for block in repo.iter_file_payload(checksum):
                        h.update(block)
                        total += len(block)
                    if total != size:
                        return f"size {total} does not match the recorded {size}"
                actual = h.hexdigest()
        elif otype is ObjectType.COMMIT_META:
            from ostreefs.store.objects import decode_metadata

            decode_metadata(repo.read_metadata(checksum, otype))
            return None
        else:
            data = repo.read_metadata(checksum, otype)
            actual = hashlib.sha256(data).hexdigest()
            if actual == checksum:
                _parse_meta(repo, checksum, otype)
    except ObjectMissing:
        return "missing"
    except (CorruptObject, MalformedData) as e:
        return str(e)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if actual != checksum:
        return f"checksum expected='{checksum}' actual='{actual}'"
    return None


def _bare_content_checksum(repo: Repo, checksum: str) -> str:
    """Hash a bare-mode object through one descriptor: fstat, xattrs and bytes.

    The per-object syscalls are most of fsck's time on trees of small files, so this
    avoids resolving the path again for each piece of the header.
    """
    path = repo.object_path(checksum, ObjectType.FILE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ObjectMissing(checksum, "file") from None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        header, _ = repo.load_file_header(checksum)  # a symlink object (bare modes)
        return hashlib.sha256(header.checksum_header()).hexdigest()
    try:
        st = os.fstat(fd)
        if repo.mode is RepoMode.BARE_USER:
            try:
                meta = os.getxattr(fd, OSTREEMETA_XATTR)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    raise CorruptObject(checksum, "file", f"no {OSTREEMETA_XATTR}") from None
                raise
            header = FileHeader.from_bareuser_meta(meta)
            if header.is_symlink:
                raw = os.read(fd, 1 << 16)
                raw = raw[:-1] if raw.endswith(b"\0") else raw
                header = FileHeader(header.uid, header.gid, header.mode,
                                    raw.decode("utf-8", "surrogateescape"), header.xattrs)
                return hashlib.sha256(header.checksum_header()).hexdigest()
        elif repo.mode is RepoMode.BARE_USER_ONLY:
            header = FileHeader(0, 0, st.st_mode)
        else:
            header = FileHeader(st.st_uid, st.st_gid, st.st_mode, "",
                                normalize_xattrs(_fs.list_xattrs(fd)))
        h = hashlib.sha256(header.checksum_header())
        while block := os.read(fd, READ_CHUNK):
            h.update(block)
        return h.hexdigest()
    finally:
        os.close(fd)


def _parse_meta(repo: Repo, checksum: str, otype: ObjectType) -> None:
    if otype is ObjectType.COMMIT:
        repo.load_commit(checksum)
    elif otype is ObjectType.DIR_TREE:
        repo.load_dirtree(checksum)
    elif otype is ObjectType.DIR_META:
        repo.load_dirmeta(checksum)


def _closure(repo: Repo, commit: Commit, cid: str,
             reach: dict[tuple[str, ObjectType], tuple[list[str], str]]) -> None:
    """Record every object a commit reaches, with the first path that reaches it."""
    stack = [("/", commit.root_tree, commit.root_meta)]
    while stack:
        path, tree_c, meta_c = stack.pop()
        for key in ((meta_c, ObjectType.DIR_META), (tree_c, ObjectType.DIR_TREE)):
            seen = reach.get(key)
            if seen is None:
                reach[key] = ([cid], path)
            elif cid not in seen[0]:
                seen[0].append(cid)
        try:
            tree = repo.load_dirtree(tree_c)
        except (ObjectMissing, CorruptObject):
            continue  # reported when the object itself is checked
        base = "" if path == "/" else path
        for name, c in tree.files:
            key = (c, ObjectType.FILE)
            seen = reach.get(key)
            if seen is None:
                reach[key] = ([cid], f"{base}/{name}")
            elif cid not in seen[0]:
                seen[0].append(cid)
        for name, t, m in tree.dirs:
            if (t, ObjectType.DIR_TREE) in reach and cid in reach[(t, ObjectType.DIR_TREE)][0]:
                continue
            stack.append((f"{base}/{name}", t, m))


def fsck(repo: Repo, delete: bool = False, threads: int | None = None,
         progress: Callable[[int, int], None] | None = None) -> FsckReport:
    """Verify the repository; see the module docstring."""
    rep = FsckReport()
    with repo.lock(exclusive=delete):
        refs = list_refs(repo)
        rep.refs = len(refs)
        on_disk = dict.fromkeys(repo.iter_objects())
        for name, target in sorted(refs.items()):
            if (target, ObjectType.COMMIT) not in on_disk:
                rep.ref_problems.append(f"ref {name} points to missing commit {target}")
        commits = [c for c, t in on_disk if t is ObjectType.COMMIT]
        rep.commits = len(commits)
        reach: dict[tuple[str, ObjectType], tuple[list[str], str]] = {}
        for cid in sorted(commits):
            marker = repo.path / "state" / f"{cid}.commitpartial"
            if marker.exists():
                rep.partial_commits.append(cid)
                if b"f" in marker.read_bytes():
                    rep.fsck_partial_commits.append(cid)
                continue
            try:
                c = repo.load_commit(cid)
            except (CorruptObject, ObjectMissing):
                continue
            reach[(cid, ObjectType.COMMIT)] = ([cid], "")
            _closure(repo, c, cid, reach)
        for key, (cs, path) in reach.items():
            if key not in on_disk:
                rep.problems.append(Problem(key[0], key[1], "missing", "not in the repository",
                                            sorted(cs), path))
        todo = list(on_disk)
        rep.objects = len(todo)
        done = 0
        for (csum, otype), err in _verify_all(repo, todo, threads):
            done += 1
            if progress is not None and (done % 1000 == 0 or done == len(todo)):
                progress(done, len(todo))
            if err is None:
                continue
            cs, path = reach.get((csum, otype), ([], ""))
            rep.problems.append(Problem(csum, otype, "corrupt", err, sorted(cs), path))
        if delete:
            _delete_corrupt(repo, rep)
        if any(p.kind == "corrupt" and p.otype in (ObjectType.FILE, ObjectType.DIR_TREE)
               for p in rep.problems):
            _forget_mount_records(repo)
        _check_index(repo, rep)
    return rep


def _forget_mount_records(repo: Repo) -> None:
    """A mount may have recorded a damaged object's header (mode, size) for its
    directory, or link counts from a damaged dirtree; a record would outlive the
    repair. They are only a shortcut: drop them all, later mounts record them again."""
    try:
        repo.index.forget_mount_records()
    except (StoreError, OSError):
        pass  # an unusable index is reported by _check_index


def _verify_all(repo: Repo, todo: list[tuple[str, ObjectType]], threads: int | None
                ) -> Iterator[tuple[tuple[str, ObjectType], str | None]]:
    """Verify objects on a pool in chunks, keeping a bounded number of chunks in flight."""
    def run(chunk: list[tuple[str, ObjectType]]) -> list[str | None]:
        return [verify_object(repo, c, t) for c, t in chunk]

    n = threads or (os.cpu_count() or 2)
    chunks = [todo[i:i + 256] for i in range(0, len(todo), 256)]
    with ThreadPoolExecutor(max_workers=n) as pool:
        pending: deque[tuple[list[tuple[str, ObjectType]], Future[list[str | None]]]] = deque()
        it = iter(chunks)
        for chunk in it:
            pending.append((chunk, pool.submit(run, chunk)))
            if len(pending) >= 4 * n:
                break
        while pending:
            chunk, fut = pending.popleft()
            yield from zip(chunk, fut.result(), strict=True)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(run, nxt)))


def _delete_corrupt(repo: Repo, rep: FsckReport) -> None:
    for p in rep.problems:
        if p.kind != "corrupt":
            continue
        try:
            os.unlink(repo.object_path(p.checksum, p.otype))
            rep.deleted.append(p.checksum)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreError(f"Cannot delete {p.checksum}: {e.strerror}") from None
    for p in rep.problems:
        for cid in p.commits:
            mark = repo.path / "state" / f"{cid}.commitpartial"
            if not mark.exists():
                mark.parent.mkdir(exist_ok=True)
                mark.write_bytes(b"f")


def _check_index(repo: Repo, rep: FsckReport) -> None:
    """Bring the index up to date and report what it had to repair (not a fault)."""
    try:
        idx = repo.index
        before = idx.verify()
        if before:
            idx.sync()
            rep.index_repairs = before
            after = idx.verify()
            if after:
                idx.rebuild()
    except (StoreError, OSError) as e:
        rep.index_repairs.append(f"index unavailable: {e}")
