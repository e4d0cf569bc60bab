"""The derived LMDB index (ostreefs.store.index) against the objects, which are the truth.

* After ostreefs commits, the catalog lists exactly the objects on disk.
* ostree writing to (or pruning) the same repository makes the index lag; ``sync()``
  catches up, including the commit graph (parents and children).
* The index can be deleted and rebuilt; the reflog (kept beside it) survives.
* The stat cache: an unchanged tree is committed without reading files; a file whose
  bytes changed with size and mtime restored is rehashed (its ctime moved), and a cache
  entry naming a deleted object is not trusted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from support import TS, Tool

from ostreefs.store import commit as commit_mod
from ostreefs.store.commit import CommitModifier, CommitOptions, TreeSource, commit
from ostreefs.store.config import RepoMode
from ostreefs.store.index import INDEX_DIR, RACY_NS
from ostreefs.store.objects import ObjectType
from ostreefs.store.refs import read_reflog, resolve_ref
from ostreefs.store.repo import Repo


def make_tree(root: Path, extra: dict[str, bytes] | None = None) -> Path:
    files = {
        "hello.txt": b"hello\n",
        "run.sh": b"#!/bin/sh\necho hi\n",
        "sub/a.txt": b"a\n",
        "sub/deeper/b.bin": bytes(range(256)) * 8,
        "empty": b"",
    }
    files.update(extra or {})
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(root / "run.sh", 0o755)
    (root / "link").symlink_to("hello.txt")
    (root / "emptydir").mkdir()
    return root


def settle() -> None:
    """Let file ctimes fall behind "now" by more than the stat cache's racy window."""
    time.sleep(2 * RACY_NS / 1e9 + 0.02)


def opts(**kw: object) -> CommitOptions:
    kw.setdefault("fsync", False)
    return CommitOptions(**kw)  # type: ignore[arg-type]


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo.init(tmp_path / "repo", RepoMode.BARE_USER)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path / "tree")


def regular_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------- catalog


def test_catalog_matches_objects_after_ostreefs_commits(repo: Repo, tree: Path) -> None:
    c1 = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", subject="one",
                                                          timestamp=TS)).checksum
    assert repo.index.verify() == []
    (tree / "new.txt").write_text("new\n")
    c2 = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", subject="two",
                                                          timestamp=TS + 1)).checksum
    idx = repo.index
    assert idx.verify() == []
    on_disk = set(repo.iter_objects())
    assert {(c, t) for c, t, _ in idx.objects()} == on_disk
    assert idx.object_count() == len(on_disk)
    assert sorted(idx.commits_list()) == sorted([c1, c2])
    assert idx.parent_of(c2) == c1 and idx.parent_of(c1) is None
    assert idx.children_of(c1) == [c2] and idx.children_of(c2) == []
    # A fresh open of the same repository sees the same catalog.
    again = Repo.open(repo.path)
    assert again.index.verify() == [] and again.index.sync() >= 0
    assert again.index.verify() == []


@pytest.mark.parametrize("mode", [RepoMode.BARE_USER, RepoMode.ARCHIVE])
def test_catalog_sizes_survive_rebuild(tmp_path: Path, tree: Path, mode: RepoMode) -> None:
    repo = Repo.init(tmp_path / "r", mode)
    commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", timestamp=TS))
    before = sorted(repo.index.objects())
    repo.index.rebuild()
    assert sorted(repo.index.objects()) == before


def test_index_catches_up_with_ostree(repo: Repo, tree: Path, ostree) -> None:
    c1 = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", timestamp=TS)).checksum
    (tree / "by-ostree.txt").write_text("written by ostree\n")
    c2 = ostree("commit", f"--repo={repo.path}", "-b", "main", "-s", "ostree",
                f"--timestamp=@{TS + 10}", str(tree)).stdout.strip()
    c3 = ostree("commit", f"--repo={repo.path}", "-b", "side", f"--parent={c1}",
                f"--timestamp=@{TS + 20}", "--tree=ref=main").stdout.strip()
    fresh = Repo.open(repo.path).index
    lag = fresh.verify()
    assert f"index lacks {c2}.commit" in lag and f"index lacks {c3}.commit" in lag
    assert fresh.sync() > 0
    assert fresh.verify() == []
    assert set(fresh.commits_list()) == {c1, c2, c3}
    assert fresh.parent_of(c2) == c1 and fresh.parent_of(c3) == c1
    assert sorted(fresh.children_of(c1)) == sorted([c2, c3])
    # ostreefs commits on top of ostree's commit: the graph keeps growing correctly.
    c4 = commit(repo, [TreeSource("dir", str(tree))],
                opts(branch="main", subject="four", timestamp=TS + 30)).checksum
    idx = Repo.open(repo.path).index
    assert idx.verify() == []
    assert idx.parent_of(c4) == c2 and idx.children_of(c2) == [c4]
    # A second sync with nothing new changes nothing.
    idx.sync()
    assert idx.verify() == [] and set(idx.commits_list()) == {c1, c2, c3, c4}


def test_index_notices_ostree_prune(repo: Repo, tree: Path, ostree) -> None:
    c1 = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", timestamp=TS)).checksum
    (tree / "orphan-only.txt").write_text("only in the orphan\n")
    orphan = commit(repo, [TreeSource("dir", str(tree))],
                    opts(branch="tmp", parent=c1, timestamp=TS + 5)).checksum
    assert repo.index.children_of(c1) == [orphan]
    ostree("refs", f"--repo={repo.path}", "--delete", "tmp")
    out = ostree("prune", f"--repo={repo.path}", "--refs-only").stdout
    assert "Deleted" in out, out
    assert not repo.has_object(orphan, ObjectType.COMMIT)
    idx = Repo.open(repo.path).index
    assert f"index lists missing {orphan}.commit" in idx.verify()
    idx.sync()
    assert idx.verify() == []
    assert idx.commits_list() == [c1]
    assert idx.children_of(c1) == [] and idx.parent_of(orphan) is None


# ---------------------------------------------------------------- rebuild and reflog


def _reflog_json(ostreefs, repo: Path, ref: str) -> list[dict[str, object]]:
    return json.loads(ostreefs("log", f"--repo={repo}", "--reflog", "--json", ref).stdout)


def test_rebuild_after_deleting_index_and_reflog_survives(tmp_path: Path, tree: Path,
                                                          ostreefs) -> None:
    # Everything through the CLI (other processes): this process never opens the index
    # before it is deleted and rebuilt.
    r = tmp_path / "repo"
    ostreefs("init", f"--repo={r}", "--mode=bare-user")
    commits = []
    for i in range(3):
        (tree / f"f{i}").write_text(f"{i}\n")
        commits.append(ostreefs("commit", f"--repo={r}", "-b", "main", "-s", f"c{i}",
                                f"--timestamp=@{TS + i}", str(tree)).stdout.strip())
    ostreefs("reset", f"--repo={r}", "main", commits[0])
    assert ostreefs("rev-parse", f"--repo={r}", "main").stdout.strip() == commits[0]

    expected = [  # newest first: (old, new)
        (commits[2], commits[0]),
        (commits[1], commits[2]),
        (commits[0], commits[1]),
        (None, commits[0]),
    ]
    text = ostreefs("log", f"--repo={r}", "--reflog", "main").stdout.splitlines()
    assert len(text) == 4, text
    for line, (old, new) in zip(text, expected, strict=True):
        assert f"{old or '-' * 64} -> {new}" in line, line
    assert "reset" in text[0] and "commit" in text[1]
    moves = _reflog_json(ostreefs, r, "main")
    assert [(m["old"], m["new"]) for m in moves] == expected
    times = [m["time_ns"] for m in moves]
    assert times == sorted(times, reverse=True)

    assert (r / INDEX_DIR).is_dir()
    shutil.rmtree(r / INDEX_DIR)
    out = ostreefs("index", f"--repo={r}", "rebuild").stdout
    assert "3 commits" in out, out
    assert (r / INDEX_DIR).is_dir()
    assert ostreefs("index", f"--repo={r}", "verify").returncode == 0
    assert _reflog_json(ostreefs, r, "main") == moves

    idx = Repo.open(r).index
    assert idx.verify() == []
    assert sorted(idx.commits_list()) == sorted(commits)
    assert idx.parent_of(commits[2]) == commits[1] and idx.parent_of(commits[1]) == commits[0]
    # The rebuilt index holds the reflog too, oldest first.
    assert [(o, n) for _, o, n in idx.reflog_entries("main")] == expected[::-1]
    assert [e.time_ns for e in read_reflog(Repo.open(r), "main")] == times[::-1]


def test_index_reflog_tracks_moves_without_rebuild(repo: Repo, tree: Path) -> None:
    c = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", timestamp=TS)).checksum
    assert [(o, n) for _, o, n in repo.index.reflog_entries("main")] == [(None, c)]


def test_index_verify_cli_reports_lag(tmp_path: Path, tree: Path, ostree, ostreefs) -> None:
    r = tmp_path / "repo"
    ostreefs("init", f"--repo={r}", "--mode=archive")
    ostreefs("commit", f"--repo={r}", "-b", "main", f"--timestamp=@{TS}", str(tree))
    assert ostreefs("index", f"--repo={r}", "verify").returncode == 0
    (tree / "x").write_text("x\n")
    ostree("commit", f"--repo={r}", "-b", "main", f"--timestamp=@{TS + 1}", str(tree))
    lag = ostreefs("index", f"--repo={r}", "verify", check=False)
    assert lag.returncode == 1 and "index lacks" in lag.stdout
    ostreefs("index", f"--repo={r}", "sync")
    assert ostreefs("index", f"--repo={r}", "verify").returncode == 0


# ----------------------------------------------------------------------- stat cache


class _Reads:
    """Counts the files the commit builder opens to hash (white-box)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.paths: list[str] = []
        self._lock = threading.Lock()
        real = commit_mod._Writer._hash_and_store

        def spy(writer: object, path: str, header: object, size: int) -> str:
            with self._lock:
                self.paths.append(path)
            return real(writer, path, header, size)  # type: ignore[arg-type]

        monkeypatch.setattr(commit_mod._Writer, "_hash_and_store", spy)

    def take(self) -> list[str]:
        with self._lock:
            out, self.paths = sorted(self.paths), []
        return out


def _orphan(repo: Repo, tree: Path, **kw: object) -> commit_mod.CommitResult:
    kw.setdefault("timestamp", TS)
    return commit(repo, [TreeSource("dir", str(tree))],
                  opts(orphan=True, no_bindings=True, subject="cache", **kw))


def _ostree_orphan(ostree, repo: Path, tree: Path, *extra: str) -> str:
    return ostree("commit", f"--repo={repo}", "--orphan", "--no-bindings", "-s", "cache",
                  f"--timestamp=@{TS}", *extra, str(tree)).stdout.strip()


def test_stat_cache_unchanged_tree_reads_nothing(repo: Repo, tree: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _Reads(monkeypatch)
    n = len(regular_files(tree))
    settle()
    first = _orphan(repo, tree)
    assert len(reads.take()) == n
    assert first.stats.content_written == n + 1  # plus the symlink
    second = _orphan(repo, tree)
    assert second.checksum == first.checksum
    assert reads.take() == []
    s = second.stats
    assert s.content_cache_hits == n
    assert s.content_written == 0 and s.content_bytes_written == 0
    assert s.metadata_written == 0 and second.written == []


def test_stat_cache_misses_when_ctime_moves(repo: Repo, tree: Path, ostree, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _Reads(monkeypatch)
    settle()
    first = _orphan(repo, tree)
    reads.take()
    target = tree / "sub" / "a.txt"
    st = os.stat(target)
    # Same size, same mtime, different bytes: only the ctime tells.
    target.write_bytes(b"b\n")
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    st2 = os.stat(target)
    assert (st2.st_size, st2.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert st2.st_ctime_ns != st.st_ctime_ns
    second = _orphan(repo, tree)
    assert reads.take() == [str(target)]
    assert second.stats.content_written == 1
    assert second.checksum != first.checksum
    # The new commit is exactly ostree's commit of the same tree.
    other = Repo.init(tmp_path / "oracle", RepoMode.BARE_USER)
    assert _ostree_orphan(ostree, other.path, tree) == second.checksum
    ostree("fsck", f"--repo={repo.path}")


def test_stat_cache_respects_commit_modifiers(repo: Repo, tree: Path, ostree,
                                              tmp_path: Path) -> None:
    settle()
    _orphan(repo, tree)
    other = Repo.init(tmp_path / "oracle", RepoMode.BARE_USER)
    got = _orphan(repo, tree, modifier=CommitModifier(owner_uid=4242, owner_gid=17))
    assert got.checksum == _ostree_orphan(ostree, other.path, tree, "--owner-uid=4242",
                                          "--owner-gid=17")
    got = _orphan(repo, tree, modifier=CommitModifier(canonical_permissions=True))
    assert got.checksum == _ostree_orphan(ostree, other.path, tree, "--canonical-permissions")


def test_stat_cache_entry_for_deleted_object_not_trusted(repo: Repo, tree: Path, ostree,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    settle()
    first = _orphan(repo, tree)
    hello = next(c for c, t, _ in first.written
                 if t is ObjectType.FILE and repo.read_file_bytes(c) == b"hello\n")
    path = repo.object_path(hello, ObjectType.FILE)
    path.unlink()
    assert ostree("fsck", f"--repo={repo.path}", check=False).returncode != 0
    (repo.path / "state" / f"{first.checksum}.commitpartial").unlink(missing_ok=True)
    reads = _Reads(monkeypatch)
    second = _orphan(repo, tree)
    assert second.checksum == first.checksum
    assert reads.take() == [str(tree / "hello.txt")]
    assert second.stats.content_written == 1
    assert path.exists() and repo.read_file_bytes(hello) == b"hello\n"
    ostree("fsck", f"--repo={repo.path}")
    assert Repo.open(repo.path).index.verify() == []


def test_stat_cache_disabled_rereads_everything(repo: Repo, tree: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    reads = _Reads(monkeypatch)
    settle()
    _orphan(repo, tree)
    reads.take()
    again = _orphan(repo, tree, use_stat_cache=False)
    assert len(reads.take()) == len(regular_files(tree))
    assert again.stats.content_cache_hits == 0 and again.stats.content_written == 0


def test_stat_cache_fresh_files_are_rehashed(repo: Repo, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A file hashed within the racy window of its ctime is not trusted next time."""
    reads = _Reads(monkeypatch)
    t = make_tree(tmp_path / "fresh")
    _orphan(repo, t)  # no settle(): the files were written just now
    reads.take()
    settle()
    _orphan(repo, t)
    assert len(reads.take()) == len(regular_files(t))
    _orphan(repo, t)
    assert reads.take() == []


def test_branch_head_after_cached_commit(repo: Repo, tree: Path, ostree) -> None:
    settle()
    c1 = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", timestamp=TS))
    c2 = commit(repo, [TreeSource("dir", str(tree))], opts(branch="main", timestamp=TS + 1))
    assert c2.stats.content_cache_hits == len(regular_files(tree))
    assert resolve_ref(repo, "main") == c2.checksum
    assert repo.load_commit(c2.checksum).parent == c1.checksum
    assert ostree("ls", f"--repo={repo.path}", "-R", "main").stdout == \
        ostree("ls", f"--repo={repo.path}", "-R", c1.checksum).stdout
    ostree("fsck", f"--repo={repo.path}")


def test_an_index_opened_before_a_fork_is_refused_after_it(repo: Repo) -> None:
    from ostreefs.errors import StoreError

    repo.index.object_count()  # the environment is open in this process
    pid = os.fork()
    if pid == 0:  # the child: LMDB forbids using the parent's environment
        code = 3
        try:
            _ = Repo.open(repo.path).index
        except StoreError as e:
            code = 0 if "fork" in str(e) else 4
        except BaseException:  # noqa: B036 - any other outcome is a failure code
            code = 5
        os._exit(code)  # allowed-exit: a forked test child must not return to pytest
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert repo.index.object_count() >= 0  # and the parent's still works


# ------------------------------------------------- root in someone else's repository

OTHER = 65534  # nobody


def _need_root(what: str) -> None:
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return
    msg = f"needs root and setpriv (util-linux) to {what}"
    if os.environ.get("CI"):
        pytest.fail(msg + ", and CI runs as root", pytrace=False)
    pytest.skip(msg)


def test_root_leaves_a_users_repository_writable_by_its_user(ostreefs: Tool) -> None:
    """Root commits to a repository a user owns; the files ostreefs keeps of its own (the
    reflog, the index) go to that user, whose next commit then lands in the reflog
    (it was silently left out while root owned the log) and the index."""
    _need_root("commit as root, then as another user")
    base = Path(tempfile.mkdtemp(prefix="ostreefs-owner-", dir="/tmp"))  # reachable
    try:
        os.chmod(base, 0o755)
        repo, src = base / "repo", base / "src"
        src.mkdir()
        (src / "f").write_text("one\n")
        ostreefs("init", f"--repo={repo}", "--mode=bare-user")
        # The user's repository has all its object directories (as one that has been
        # written to for a while has): an objects/XX that root makes stays root's, as
        # ostree leaves it, and would refuse the user's objects that hash into it. This
        # test is about ostreefs's own files, whatever the checksums of the day are.
        for i in range(256):
            (repo / "objects" / f"{i:02x}").mkdir(exist_ok=True)
        for p in [base, repo, *repo.rglob("*")]:
            os.chown(p, OTHER, OTHER, follow_symlinks=False)
        os.chmod(src, 0o755)
        first = ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "root's",
                         str(src)).stdout.strip()
        own = [repo / "ostreefs-logs" / "refs" / "heads" / "main", repo / INDEX_DIR,
               repo / INDEX_DIR / "data.mdb", repo / INDEX_DIR / "lock.mdb"]
        own += list(own[0].parents)[:3]  # heads, refs, ostreefs-logs
        assert {str(p): os.lstat(p).st_uid for p in own} == {str(p): OTHER for p in own}
        # A log an older ostreefs left root's is handed over by the next move.
        for p in own[:1] + own[4:]:
            os.chown(p, 0, 0)
        ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "root's again", str(src))
        first = resolve_ref(Repo.open(repo), "main")
        assert {str(p): os.lstat(p).st_uid for p in own} == {str(p): OTHER for p in own}
        (src / "f").write_text("two\n")
        as_user = subprocess.run(
            ["setpriv", f"--reuid={OTHER}", f"--regid={OTHER}", "--clear-groups",
             sys.executable, "-m", "ostreefs", "commit", f"--repo={repo}", "-b", "main",
             "-s", "the user's", str(src)],
            capture_output=True, text=True, cwd="/",
            env={"PATH": "/usr/bin:/bin", "LC_ALL": "C",
                 "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
        assert as_user.returncode == 0, as_user.stderr
        second = as_user.stdout.strip()
        r = Repo.open(repo)
        moves = [(e.old, e.new) for e in read_reflog(r, "main")]
        assert moves[0][0] is None and moves[1:] == [(moves[0][1], first), (first, second)]
        assert second in r.index.commits_list()  # the user's commit reached the index
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_root_follows_no_symlink_the_repositorys_owner_planted(ostreefs: Tool,
                                                               tmp_path: Path) -> None:
    """The owner of a repository points ostreefs-logs and ostreefs-index at a directory
    of root's. Root's commit still lands, and writes (or hands over) nothing there."""
    _need_root("commit as root into another user's repository")
    repo, src, target = tmp_path / "repo", tmp_path / "src", tmp_path / "roots"
    src.mkdir()
    (src / "f").write_text("one\n")
    target.mkdir()
    ostreefs("init", f"--repo={repo}", "--mode=bare-user")
    (repo / "ostreefs-logs").symlink_to(target)
    (repo / INDEX_DIR).symlink_to(target)
    for p in [repo, *repo.rglob("*")]:
        os.chown(p, OTHER, OTHER, follow_symlinks=False)
    out = ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "root's", str(src))
    assert resolve_ref(Repo.open(repo), "main") == out.stdout.strip()
    assert list(target.iterdir()) == []
    assert os.stat(target).st_uid == 0
    # Without the link the next commit keeps its reflog as usual.
    (repo / "ostreefs-logs").unlink()
    ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "again", str(src))
    assert len(read_reflog(Repo.open(repo), "main")) == 1
    assert os.lstat(repo / "ostreefs-logs").st_uid == OTHER


def test_the_reflog_of_a_repository_named_relatively(tmp_path: Path, ostreefs: Tool) -> None:
    """``--repo=.``: the reflog is made under a relative repository path too."""
    repo, src = tmp_path / "repo", tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("one\n")
    ostreefs("init", f"--repo={repo}", "--mode=bare-user")
    c = ostreefs("commit", "--repo=.", "-b", "main", "-s", "s", str(src), cwd=repo).stdout
    assert [e.new for e in read_reflog(Repo.open(repo), "main")] == [c.strip()]
