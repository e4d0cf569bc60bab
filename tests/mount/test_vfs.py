"""The mount's VFS without FUSE: the same tree, owners, xattrs, bytes and hardlink
groups as ``ostree checkout`` of the same commit, lazy inodes, archive random access,
and per-file failures for damaged objects."""

from __future__ import annotations

import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MODES, repo_copy
from mount_helpers import (
    hardlink_groups,
    header_loads,
    page_cached,
    vfs_hardlinks,
    vfs_read_all,
    vfs_snapshot,
)
from support import TS_ARG, UTF8, Tool, init_repo
from treegen import diff_snapshots, snapshot

from ostreefs.errors import StoreError
from ostreefs.mount.vfs import ROOT_INO, CommitVFS, NoSuchEntry, NoSuchXattr, NotADir
from ostreefs.store.index import INDEX_DIR
from ostreefs.store.objects import ObjectType
from ostreefs.store.refs import rev_parse
from ostreefs.store.repo import Repo
from ostreefs.store.treerecord import record_tree


def open_vfs(repo: Path, rev: str = "m", **kw: object) -> CommitVFS:
    r = Repo.open(repo)
    return CommitVFS(r, rev_parse(r, rev), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", MODES)
def test_tree_matches_checkout(mode_repo: Callable[[str], Path], ostree: Tool,
                               tmp_path: Path, mode: str) -> None:
    repo = mode_repo(mode)
    ostree("checkout", f"--repo={repo}", "m", str(tmp_path / "co"), env=UTF8)
    want = snapshot(tmp_path / "co")
    got = vfs_snapshot(open_vfs(repo))
    assert got == want, diff_snapshots(got, want)


@pytest.mark.parametrize("mode", MODES)
def test_hardlinks_match_hardlink_checkout(mode_repo: Callable[[str], Path], ostree: Tool,
                                           tmp_path: Path, mode: str) -> None:
    # A private copy: archive -U fills the repo's uncompressed-object cache, whose
    # links would count in a later checkout.
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    co = tmp_path / "co"
    ostree("checkout", f"--repo={repo}", "-U", "m", str(co), env=UTF8)
    groups, nlink = vfs_hardlinks(open_vfs(repo))
    assert groups == hardlink_groups(co)
    assert groups  # the generated tree has hardlinks and duplicate contents
    want = {os.path.relpath(os.path.join(dp, n), co): os.lstat(os.path.join(dp, n)).st_nlink
            for dp, ds, fs in os.walk(co) for n in fs + [d for d in ds
                                                          if os.path.islink(os.path.join(dp, d))]}
    assert nlink == want


def test_dir_nlink_and_lookup(mode_repo: Callable[[str], Path]) -> None:
    vfs = open_vfs(mode_repo("bare-user"))
    a = vfs.lookup(ROOT_INO, "level 00")
    assert stat.S_ISDIR(a.mode) and a.nlink == 3 and a.mtime_ns == 0
    assert vfs.lookup(ROOT_INO, "level 00").ino == a.ino  # same path, same inode
    with pytest.raises(NoSuchEntry):
        vfs.lookup(ROOT_INO, "no such name")
    f = vfs.lookup(vfs.lookup(a.ino, "level 01").ino, "level 02")
    assert stat.S_ISDIR(f.mode)
    files = [(n, at) for _o, n, at in vfs.entries(ROOT_INO) if stat.S_ISREG(at.mode)]
    if files:
        with pytest.raises(NotADir):
            vfs.lookup(files[0][1].ino, "x")


def test_offsets_are_stable(mode_repo: Callable[[str], Path]) -> None:
    vfs = open_vfs(mode_repo("archive"))
    full = [(o, n) for o, n, _a in vfs.entries(ROOT_INO)]
    assert [o for o, _n in full] == list(range(1, len(full) + 1))
    for start in range(len(full)):
        assert [(o, n) for o, n, _a in vfs.entries(ROOT_INO, start)] == full[start:]


def test_inodes_are_lazy_and_forgotten(mode_repo: Callable[[str], Path]) -> None:
    vfs = open_vfs(mode_repo("bare-user"))
    assert vfs.live_inodes == 1
    a = vfs.lookup(ROOT_INO, "level 00")
    assert vfs.live_inodes == 2
    vfs.forget(a.ino, 1)
    assert vfs.live_inodes == 1
    with pytest.raises(NoSuchEntry):
        vfs.attrs(a.ino)
    vfs_snapshot(vfs)
    n = vfs.live_inodes
    assert n > 50
    for _o, _n, at in list(vfs.entries(ROOT_INO)):
        vfs.forget(at.ino, 10**6)
    assert vfs.live_inodes < n


def test_xattrs(mode_repo: Callable[[str], Path], src_tree: Path) -> None:
    vfs = open_vfs(mode_repo("archive"))
    want_root = {n.encode(): os.getxattr(src_tree, n) for n in os.listxattr(src_tree)}
    assert dict(vfs.xattrs(ROOT_INO)) == want_root
    with pytest.raises(NoSuchXattr):
        vfs.getxattr(ROOT_INO, b"user.nope")


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> tuple[Path, bytes]:
    base = tmp_path_factory.mktemp("big")
    src = base / "src"
    src.mkdir()
    rng = random.Random(3)
    data = b"".join(rng.randbytes(4096) + bytes(rng.randrange(1, 8000))
                    for _ in range(3000))  # ~ 23 MiB, half compressible
    (src / "big").write_bytes(data)
    repo = init_repo(ostree, base / "repo", "archive")
    ostree("commit", f"--repo={repo}", "-b", "m", TS_ARG, str(src))
    return repo, data


def test_archive_random_access(big_archive: tuple[Path, bytes]) -> None:
    repo, data = big_archive
    vfs = open_vfs(repo)
    ino = vfs.lookup(ROOT_INO, "big").ino
    assert vfs_read_all(vfs, ino) == data
    fh = vfs.open(ino)
    rng = random.Random(1)
    for _ in range(60):
        off = rng.randrange(len(data) + 10)
        n = rng.choice([1, 4096, 131072, 300000])
        assert vfs.read(fh, off, n) == data[off:off + n], (off, n)
    # Backward reads restart at a checkpoint, not at byte 0.
    z = vfs._zstreams.get(vfs._handles[fh].checksum)
    assert z is not None and len(z._checkpoints) >= 2
    vfs.read(fh, len(data) - 10, 10)
    vfs.read(fh, len(data) - 3 * z.interval // 2, 10)
    assert z._upos >= z._checkpoints[0][0]
    vfs.release(fh)


def test_archive_reads_ahead_for_two_interleaved_readers(
        big_archive: tuple[Path, bytes]) -> None:
    """Sequential reads inflate the next chunk on a thread; two readers of one file at
    different places (no open handle, as the kernel reads once opens are off), each
    reading a few chunks in a row, still get exactly their bytes."""
    from ostreefs.mount.vfs import ZAHEAD, _ZStream

    repo, data = big_archive
    vfs = open_vfs(repo)
    ino = vfs.lookup(ROOT_INO, "big").ino
    step = 128 * 1024
    half = len(data) // 2
    pos = {"a": 0, "b": half}
    ends = {"a": half, "b": len(data)}
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    aheads = 0
    while pos["a"] < half or pos["b"] < len(data):
        for r in ("a", "b"):
            for _ in range(3):
                if pos[r] >= ends[r]:
                    break
                got[r].append(bytes(vfs.read_inode(ino, pos[r], min(step, ends[r] - pos[r]))))
                pos[r] += len(got[r][-1])
                z = vfs._zstreams.get(vfs._nodes[ino].checksum)
                aheads += z is not None and z._ahead is not None
    assert b"".join(got["a"]) == data[:half]
    assert b"".join(got["b"]) == data[half:]
    assert aheads > 0
    vfs.close()
    # A lone sequential reader: the third read is served from the chunk inflated ahead.
    vfs = open_vfs(repo)
    ino = vfs.lookup(ROOT_INO, "big").ino
    vfs.read_inode(ino, 0, step)
    vfs.read_inode(ino, step, step)
    z = vfs._zstreams.get(vfs._nodes[ino].checksum)
    assert z is not None and z._ahead is not None
    ahead = z._ahead.result()
    assert len(ahead) == ZAHEAD  # a whole chunk, not what input was left over
    before = z._upos  # the inflater's position does not move until the chunk is taken
    assert before < 3 * step
    assert bytes(vfs.read_inode(ino, 2 * step, step)) == data[2 * step:3 * step]
    assert z._upos >= before + len(ahead)  # taken: the read was served from it
    vfs.close()
    # A whole sequential read takes about one inflate per chunk, not one per read.
    vfs = open_vfs(repo)
    ino = vfs.lookup(ROOT_INO, "big").ino
    calls = []
    real = _ZStream._next_chunk

    def counting(self: _ZStream, limit: int) -> bytes:
        calls.append(limit)
        return real(self, limit)

    _ZStream._next_chunk = counting  # type: ignore[method-assign]
    try:
        out = [bytes(vfs.read_inode(ino, off, step)) for off in range(0, len(data), step)]
    finally:
        _ZStream._next_chunk = real  # type: ignore[method-assign]
    assert b"".join(out) == data
    assert len(calls) <= len(data) // ZAHEAD + 4, len(calls)
    vfs.close()


def _first_file(vfs: CommitVFS) -> tuple[str, int, str]:
    for _o, n, a in vfs.entries(ROOT_INO):
        if stat.S_ISREG(a.mode) and a.size > 1000:
            node = vfs._nodes[a.ino]
            return n, a.ino, node.checksum
    raise AssertionError("no file")


def test_corrupt_archive_object_fails_only_that_file(mode_repo: Callable[[str], Path],
                                                     tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("archive"), tmp_path / "repo")
    vfs = open_vfs(repo)
    name, ino, csum = _first_file(vfs)
    path = Path(vfs.repo.object_path_str(csum, ObjectType.FILE))
    raw = bytearray(path.read_bytes())
    hlen = 8 + int.from_bytes(raw[:4], "big")
    raw[hlen:] = bytes(len(raw) - hlen)
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError):
        vfs_read_all(vfs, ino)
    vfs = open_vfs(repo)
    files = [a for _o, _n, a in vfs.entries(ROOT_INO) if stat.S_ISREG(a.mode)]
    assert len(files) > 1
    for a in files:
        if vfs._nodes[a.ino].checksum != csum:
            vfs_read_all(vfs, a.ino)  # every other file still reads


def test_missing_object_gives_placeholder(mode_repo: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    r = Repo.open(repo)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    name, _ino, csum = _first_file(vfs)
    os.unlink(r.object_path_str(csum, ObjectType.FILE))
    vfs = CommitVFS(r, rev_parse(r, "m"))
    listed = {n: a for _o, n, a in vfs.entries(ROOT_INO)}
    # The listing survives with an uncacheable placeholder; a stat of it is EIO-bound.
    assert listed[name].volatile and listed[name].size == 0
    assert not any(a.volatile for a in listed.values() if vfs._nodes[a.ino].checksum != csum)
    with pytest.raises(StoreError):
        vfs.attrs(listed[name].ino)
    with pytest.raises(StoreError):
        vfs.open(listed[name].ino)
    others = [a for n, a in listed.items() if n != name and stat.S_ISREG(a.mode)
              and vfs._nodes[a.ino].checksum != csum]
    for a in others:
        vfs_read_all(vfs, a.ino)


def test_owner_override(mode_repo: Callable[[str], Path]) -> None:
    vfs = open_vfs(mode_repo("bare-user"), uid=4321, gid=8765)
    seen = [a for _o, _n, a in vfs.entries(ROOT_INO)] + [vfs.attrs(ROOT_INO)]
    assert {(a.uid, a.gid) for a in seen} == {(4321, 8765)}


def _recording(vfs: CommitVFS) -> dict[str, dict[str, object]]:
    """Snapshot through a VFS, then write the headers it gathered to the index."""
    snap = vfs_snapshot(vfs)
    vfs.close()
    return snap


@pytest.mark.parametrize("mode", MODES)
def test_recorded_headers_match_checkout(mode_repo: Callable[[str], Path], ostree: Tool,
                                         tmp_path: Path, mode: str) -> None:
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    ostree("checkout", f"--repo={repo}", "m", str(tmp_path / "co"), env=UTF8)
    want = snapshot(tmp_path / "co")
    first = _recording(open_vfs(repo))
    assert first == want, diff_snapshots(first, want)
    # A second view lists every directory from the index: no file header is read from
    # an object (reads still open the objects), and it shows the same tree.
    r = Repo.open(repo)
    loads = header_loads(r)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    second = vfs_snapshot(vfs)
    assert second == want, diff_snapshots(second, want)
    assert loads == []
    assert r.index.dir_headers(vfs._nodes[ROOT_INO].checksum)


def test_recorded_headers_outlive_a_missing_object(mode_repo: Callable[[str], Path],
                                                   tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    vfs = open_vfs(repo)
    before = {n: a for _o, n, a in vfs.entries(ROOT_INO)}
    vfs.close()
    name, _ino, csum = _first_file(open_vfs(repo))
    r = Repo.open(repo)
    os.unlink(r.object_path_str(csum, ObjectType.FILE))
    vfs = CommitVFS(r, rev_parse(r, "m"))
    listed = {n: a for _o, n, a in vfs.entries(ROOT_INO)}
    # The commit's metadata for the file is still known; its content is not.
    assert not listed[name].volatile
    assert (listed[name].mode, listed[name].size) == (before[name].mode, before[name].size)
    assert vfs.attrs(listed[name].ino).size == before[name].size
    with pytest.raises(StoreError):
        vfs_read_all(vfs, listed[name].ino)


def test_damaged_header_record_is_ignored(mode_repo: Callable[[str], Path],
                                          tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    want = _recording(open_vfs(repo))
    r = Repo.open(repo)
    root = CommitVFS(r, rev_parse(r, "m"))._nodes[ROOT_INO].checksum
    good = r.index.dir_headers(root)
    assert good
    r.index.store_dir_headers([(root, good[:-3])])  # truncated: not the files it names
    loads = header_loads(r)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    root_files = {c for _n, c in r.load_dirtree(root).files}
    assert vfs_snapshot(vfs) == want
    assert root_files <= set(loads)  # the root's headers came from the objects


def test_repair_forgets_recorded_headers(mode_repo: Callable[[str], Path],
                                         tmp_path: Path) -> None:
    from ostreefs.store.fsck import fsck

    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    vfs = open_vfs(repo)
    name, _ino, csum = _first_file(vfs)
    _recording(vfs)
    r = Repo.open(repo)
    root = CommitVFS(r, rev_parse(r, "m"))._nodes[ROOT_INO].checksum
    assert r.index.dir_headers(root)
    # The classic damage: a file edited in place through a hardlinked checkout.
    with open(r.object_path_str(csum, ObjectType.FILE), "ab") as f:
        f.write(b"edited")
    rep = fsck(r)
    assert any(p.checksum == csum for p in rep.problems)
    assert r.index.dir_headers(root) is None  # no record outlives the damage


def test_records_of_a_deleted_dirtree_go_with_it(mode_repo: Callable[[str], Path],
                                                  tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    _recording(open_vfs(repo))
    r = Repo.open(repo)
    vfs = CommitVFS(r, rev_parse(r, "m"))
    sub = vfs._nodes[vfs.lookup(ROOT_INO, "level 00").ino].checksum
    assert r.index.dir_headers(sub) is not None
    os.unlink(r.object_path_str(sub, ObjectType.DIR_TREE))  # as a prune by ostree would
    r.index.sync()
    assert r.index.dir_headers(sub) is None


def test_no_index_is_made_in_someone_elses_repository(mode_repo: Callable[[str], Path],
                                                       tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    for dirpath, dirnames, filenames in os.walk(repo):
        for n in dirnames + filenames:
            os.lchown(os.path.join(dirpath, n), 4321, 4321)
    os.lchown(repo, 4321, 4321)
    want = vfs_snapshot(open_vfs(repo))  # root listing a user's repository
    assert want
    vfs = open_vfs(repo)
    vfs_snapshot(vfs)
    vfs.close()
    assert not (repo / INDEX_DIR).exists()


def test_link_counts_are_recorded_once(mode_repo: Callable[[str], Path],
                                       tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    want = vfs_hardlinks(open_vfs(repo))  # counted on demand, nothing recorded
    first = open_vfs(repo)
    first.start()  # counts on a thread
    assert first._starter is not None
    first._starter.join()
    first.close()  # records what the pass found
    root = first._nodes[ROOT_INO].checksum
    walk = first.repo.index.tree_walk(root)
    assert walk is not None and walk[0] == first._counts
    assert first._counts  # the generated tree has hardlinks
    # Every dirtree of the tree, for the read-ahead of a later mount.
    reachable, todo = set(), [root]
    while todo:
        t = todo.pop()
        reachable.add(t)
        todo.extend(c for _n, c, _m in first.repo.load_dirtree(t).dirs)
    assert {t.hex() for t in walk[1]} == reachable and len(reachable) > 10
    second = open_vfs(repo)
    second.start()
    assert second._counts_ready.wait(10)
    assert second._counts == first._counts
    assert second._starter is not None
    second._starter.join()
    assert second._walk_record is None  # no pass ran: the record was used
    assert vfs_hardlinks(second) == want
    second.close()  # (ends the recorder its walk started)


def test_dirtrees_are_read_ahead_once_a_walk_shows(mode_repo: Callable[[str], Path],
                                                  tmp_path: Path) -> None:
    """With the counts recorded, a mount asks the disk for the tree's dirtrees only
    once a third directory is listed: a look's reads must not queue behind them."""
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    first = open_vfs(repo)
    first.start()
    assert first._starter is not None
    first._starter.join()
    first.close()  # records the counts and the dirtrees to read ahead
    root = first._nodes[ROOT_INO].checksum
    walk = first.repo.index.tree_walk(root)
    assert walk is not None
    assert record_tree(first.repo, root)  # no recorder process will read the tree
    paths = [first.repo.object_path_str(t.hex(), ObjectType.DIR_TREE) for t in walk[1]]
    vfs = open_vfs(repo)
    subdirs = [a.ino for _o, _n, a in vfs.entries(ROOT_INO) if stat.S_ISDIR(a.mode)]
    # What a listing reads: its dirtree, and those of its subdirectories (their link
    # counts).
    listed = set()
    for ino in [ROOT_INO, *subdirs[:2]]:
        tree = vfs._nodes[ino].checksum
        listed |= {tree, *(c for _n, c, _m in vfs.repo.load_dirtree(tree).dirs)}
    vfs.close()
    unlisted = [p for t, p in zip(walk[1], paths, strict=True) if t.hex() not in listed]
    assert len(unlisted) > 10

    def drop() -> None:
        os.sync()  # (dirty pages of the fresh copy are not dropped)
        for p in unlisted:
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)

    drop()
    assert not any(page_cached(p) for p in unlisted)
    vfs = open_vfs(repo)
    vfs.start()
    assert vfs._starter is not None
    vfs._starter.join()
    list(vfs.entries(ROOT_INO))  # a look: one directory, and a second
    list(vfs.entries(subdirs[0]))
    time.sleep(0.3)
    assert not any(page_cached(p) for p in unlisted)
    list(vfs.entries(subdirs[1]))  # a walk
    deadline = time.monotonic() + 10
    while not all(page_cached(p) for p in unlisted) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(page_cached(p) for p in unlisted)
    vfs.close()

    # A mount closed (unmounted) before its start thread took the record reads none.
    drop()
    vfs = open_vfs(repo)
    vfs.close()
    vfs.start()
    assert vfs._starter is not None
    vfs._starter.join()
    time.sleep(0.3)
    assert not any(page_cached(p) for p in unlisted)
    assert vfs._ahead is None


def test_a_tree_ostreefs_committed_is_mounted_without_counting(
        mode_repo: Callable[[str], Path], ostreefs: Tool, src_tree: Path,
        tmp_path: Path) -> None:
    """The commit recorded the link counts (ostreefs.store.treecount): a first mount
    takes them, and shows the hardlinks a mount of ostree's commit of the tree counts."""
    want = vfs_hardlinks(open_vfs(repo_copy(mode_repo("bare-user"), tmp_path / "theirs")))
    repo = init_repo(ostreefs, tmp_path / "repo", "bare-user")
    ostreefs("commit", f"--repo={repo}", "-b", "m", "-s", "m", TS_ARG, str(src_tree), env=UTF8)
    vfs = open_vfs(repo)
    vfs.start()
    assert vfs._starter is not None
    vfs._starter.join()
    assert vfs._counts  # the tree has hardlinks
    assert vfs._walk_record is None  # no pass ran: the commit's record was used
    assert vfs_hardlinks(vfs) == want
    vfs.close()


def test_link_counts_of_a_damaged_tree_are_not_recorded(mode_repo: Callable[[str], Path],
                                                        tmp_path: Path) -> None:
    repo = repo_copy(mode_repo("bare-user"), tmp_path / "repo")
    vfs = open_vfs(repo)
    sub = vfs.lookup(ROOT_INO, "level 00")
    os.unlink(vfs.repo.object_path_str(vfs._nodes[sub.ino].checksum, ObjectType.DIR_TREE))
    vfs = open_vfs(repo)
    vfs.start()
    assert vfs._starter is not None
    vfs._starter.join()
    assert vfs._counts is not None
    vfs.close()
    assert vfs.repo.index.tree_walk(vfs._nodes[ROOT_INO].checksum) is None
