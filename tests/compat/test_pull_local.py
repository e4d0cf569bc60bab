"""``pull-local`` must leave the repository ostree's ``pull-local`` leaves.

Each test runs the same command line through both tools, from the same source into two
fresh destinations, and compares what they print and what they leave on disk: object
files (bytes, and owner/mode/xattrs/mtime in bare modes), which objects are hard links
to the source's, refs and commit-partial markers. ostree 2022.7 is the oracle.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from support import (
    TS,
    UTF8,
    Tool,
    assert_clean_failure,
    commit_checksum,
    describe_objects_diff,
    format_result,
    init_repo,
    objects_snapshot,
)
from treegen import make_tree

MODES = ["bare", "bare-user", "bare-user-only", "archive"]


class Source:
    """A repository made by ostree: ``main`` = c1 <- c2 (c2 with detached metadata),
    ``other/br`` = c3 (c1's tree, another subject)."""

    def __init__(self, path: Path, c1: str, c2: str, c3: str) -> None:
        self.path, self.c1, self.c2, self.c3 = path, c1, c2, c3


def _make_sources(ostree: Tool, base: Path, canonical: bool) -> dict[str, Source]:
    tree = make_tree(base / "tree", 1, "small")
    extra = ["--canonical-permissions"] if canonical else []
    out = {}
    for mode in MODES:
        repo = init_repo(ostree, base / f"src-{mode}", mode)

        def commit(*args: str, repo: Path = repo) -> str:
            return commit_checksum(ostree("commit", f"--repo={repo}", *extra, *args, tree))

        c1 = commit("-b", "main", "-s", "one", f"--timestamp=@{TS}")
        (tree / "added file").write_bytes(b"added\n")
        c2 = commit("-b", "main", "-s", "two", f"--timestamp=@{TS + 100}",
                    "--add-detached-metadata-string=sig=fake")
        (tree / "added file").unlink()
        c3 = commit("-b", "other/br", "-s", "three", f"--timestamp=@{TS + 200}")
        out[mode] = Source(repo, c1, c2, c3)
    return out


@pytest.fixture(scope="module")
def sources(ostree: Tool, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """The generated tree (foreign owners, xattrs, setuid files) in each mode."""
    old = os.umask(0o022)
    try:
        return _make_sources(ostree, tmp_path_factory.mktemp("pull-src"), canonical=False)
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def canonical_sources(ostree: Tool,
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    """The same tree committed with --canonical-permissions: storable in bare-user-only."""
    old = os.umask(0o022)
    try:
        return _make_sources(ostree, tmp_path_factory.mktemp("pull-canon"), canonical=True)
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------
# helpers


def _refs(repo: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(repo / "refs"):
        for f in files:
            full = Path(dirpath) / f
            out[str(full.relative_to(repo))] = full.read_text()
    return out


def _state(repo: Path) -> list[str]:
    d = repo / "state"
    return sorted(os.listdir(d)) if d.is_dir() else []


def _linked(repo: Path, src: Path) -> set[str]:
    """Objects of ``repo`` that are the very inode of the source's object file."""
    out = set()
    for sub in os.listdir(repo / "objects"):
        for name in os.listdir(repo / "objects" / sub):
            p, q = repo / "objects" / sub / name, src / "objects" / sub / name
            if os.path.lexists(q) and os.lstat(p).st_ino == os.lstat(q).st_ino:
                out.add(f"{sub}/{name}")
    return out


def _object_names(repo: Path, ext: str) -> set[str]:
    return {sub + n.split(".")[0] for sub in os.listdir(repo / "objects")
            for n in os.listdir(repo / "objects" / sub) if n.endswith("." + ext)}


def _copy_repo(src: Path, dest: Path) -> None:
    """A copy keeping owners, modes, xattrs and times (cp -a), as a bare repo needs."""
    p = subprocess.run(["cp", "-a", "--", str(src), str(dest)], capture_output=True,
                       text=True, check=False)
    assert p.returncode == 0 and not p.stderr, p.stderr


def _both(ostree: Tool, ostreefs: Tool, tmp_path: Path, dest_mode: str, src: Path,
          *args: str, check: bool = True, tag: str = "", same_output: bool = True
          ) -> tuple[Path, Path, list[subprocess.CompletedProcess[str]]]:
    """Run ``pull-local SRC ARGS`` with each tool into its own fresh destination."""
    a = tmp_path / f"by-ostree{tag}"
    b = tmp_path / f"by-ostreefs{tag}"
    if not a.exists():
        init_repo(ostree, a, dest_mode)
        init_repo(ostree, b, dest_mode)
    pa = ostree("pull-local", f"--repo={a}", src, *args, check=check)
    pb = ostreefs("pull-local", f"--repo={b}", src, *args, check=check)
    assert pa.returncode == pb.returncode, format_result(pb.args, pb)
    if pa.returncode == 0 and same_output:
        assert pb.stdout == pa.stdout, format_result(pb.args, pb)
    return a, b, [pa, pb]


def _assert_same_repo(a: Path, b: Path, src: Path | None = None) -> None:
    oa, ob = objects_snapshot(a), objects_snapshot(b)
    assert oa == ob, describe_objects_diff(oa, ob)
    assert _refs(a) == _refs(b)
    assert _state(a) == _state(b)
    if src is not None:
        assert _linked(a, src) == _linked(b, src)


# --------------------------------------------------------------------------------------
# every pair of modes


@pytest.mark.parametrize("dest_mode", MODES)
@pytest.mark.parametrize("src_mode", MODES)
def test_pull_local_all_refs(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                             tmp_path: Path, src_mode: str, dest_mode: str) -> None:
    src = sources[src_mode]
    a, b, (pa, pb) = _both(ostree, ostreefs, tmp_path, dest_mode, src.path, check=False)
    if pa.returncode != 0:
        # bare-user-only refuses setuid/setgid/world-writable files (pairs that copy).
        assert dest_mode == "bare-user-only"
        assert_clean_failure(pb)
        for p in (pa, pb):
            err = p.stderr.strip().splitlines()[-1]
            assert err.startswith("error: Writing content object: Content object "), err
            assert " invalid mode 0" in err and " with bits 0" in err, err
        assert _refs(a) == _refs(b) and not any(r.startswith("refs/heads/") for r in _refs(b))
        assert _state(a) == _state(b) == sorted(f"{c}.commitpartial"
                                                for c in (src.c2, src.c3))
        return
    _assert_same_repo(a, b, src.path)
    assert (b / "refs/heads/main").read_text() == src.c2 + "\n"
    assert (b / "refs/heads/other/br").read_text() == src.c3 + "\n"
    assert _object_names(b, "commit") == {src.c2, src.c3}  # depth 0: no parent
    assert (b / "objects" / src.c2[:2] / f"{src.c2[2:]}.commitmeta").is_file()
    # ostree's fsck judges both results alike. bare-user -> bare-user-only links the
    # bare-user files as they are (ostree's flatpak special case), which that fsck then
    # reports for files that are not canonical (foreign owners, xattrs).
    fa = ostree("fsck", f"--repo={a}", check=False)
    fb = ostree("fsck", f"--repo={b}", check=False)
    assert fa.returncode == fb.returncode, format_result(fb.args, fb)
    if (src_mode, dest_mode) != ("bare-user", "bare-user-only"):
        assert fb.returncode == 0, format_result(fb.args, fb)
    if src_mode == dest_mode:
        # Same filesystem, same mode: every object is a hard link to the source's.
        for sub in os.listdir(b / "objects"):
            for name in os.listdir(b / "objects" / sub):
                st = os.lstat(b / "objects" / sub / name)
                if name.endswith(".commitmeta"):
                    continue  # detached metadata is written, not linked (as ostree)
                assert st.st_nlink >= 2, name
                assert st.st_ino == os.lstat(src.path / "objects" / sub / name).st_ino
    # Pulling again imports nothing; ostree re-reads the tip's detached metadata (17
    # bytes) through its URL fetcher and reports it as transferred.
    ra = ostree("pull-local", f"--repo={a}", src.path)
    rb = ostreefs("pull-local", f"--repo={b}", src.path)
    assert rb.stdout == ra.stdout == ("0 metadata, 0 content objects imported; 17 B "
                                      "transferred in 0 seconds; 0 bytes content written\n")


@pytest.mark.parametrize("src_mode", MODES)
def test_pull_local_canonical_into_bare_user_only(
        ostree: Tool, ostreefs: Tool, canonical_sources: dict[str, Source], tmp_path: Path,
        src_mode: str) -> None:
    src = canonical_sources[src_mode]
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare-user-only", src.path, "main")
    _assert_same_repo(a, b, src.path)
    ostree("fsck", f"--repo={b}")
    assert set(_refs(b)) == {"refs/heads/main"}


# --------------------------------------------------------------------------------------
# options


def test_depth(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
               tmp_path: Path) -> None:
    src = sources["bare-user"]
    a, b, _ = _both(ostree, ostreefs, tmp_path, "archive", src.path, "main")
    assert _object_names(b, "commit") == {src.c2}
    # Deeper pulls fetch the parent; the tip is already complete so its tree is not walked.
    _both(ostree, ostreefs, tmp_path, "archive", src.path, "main", "--depth=1")
    _assert_same_repo(a, b)
    assert _object_names(b, "commit") == {src.c1, src.c2}
    ostree("fsck", f"--repo={b}")
    assert _state(b) == []
    for depth in ("-1", "5"):
        a2, b2, _ = _both(ostree, ostreefs, tmp_path, "bare", src.path, "main",
                          f"--depth={depth}", tag=depth)
        _assert_same_repo(a2, b2, src.path)
        assert _object_names(b2, "commit") == {src.c1, src.c2}


def test_depth_stops_at_a_missing_parent(ostree: Tool, ostreefs: Tool,
                                         sources: dict[str, Source], tmp_path: Path) -> None:
    """A source whose history was cut (parent object gone) is pulled without error."""
    s = sources["bare-user-only"]
    src = tmp_path / "src"
    _copy_repo(s.path, src)
    (src / "objects" / s.c1[:2] / f"{s.c1[2:]}.commit").unlink()
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare-user-only", src, "main", "--depth=-1")
    _assert_same_repo(a, b, src)
    assert _object_names(b, "commit") == {s.c2} and _state(b) == []


def test_ref_bindings(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                      tmp_path: Path) -> None:
    """A commit is pulled only by a ref it is bound to, unless told otherwise."""
    s = sources["archive"]
    src = tmp_path / "src"
    _copy_repo(s.path, src)
    ostree("refs", f"--repo={src}", "main", "--create=alias")
    a, b, (pa, pb) = _both(ostree, ostreefs, tmp_path, "bare", src, "alias", check=False)
    assert pa.returncode == 1
    assert_clean_failure(pb)
    assert "Commit has no requested ref" in pb.stderr
    assert _refs(b) == {} and _state(a) == _state(b) == [f"{s.c2}.commitpartial"]
    env_a = ostree("pull-local", f"--repo={a}", src, "alias", check=False, env=UTF8)
    env_b = ostreefs("pull-local", f"--repo={b}", src, "alias", check=False, env=UTF8)
    assert env_b.stderr.splitlines()[0] == env_a.stderr.strip().splitlines()[-1]
    # (ostree resumes the staging directory of its failed pull, so it counts the commit
    # object as already there; ostreefs starts each transaction afresh.)
    _both(ostree, ostreefs, tmp_path, "bare", src, "alias", "--disable-verify-bindings",
          same_output=False)
    _assert_same_repo(a, b, src)
    assert _refs(b) == {"refs/heads/alias": s.c2 + "\n"} and _state(b) == []


@pytest.mark.skipif(bool(os.environ.get("OSTREEFS_TEST_IMPL")),
                    reason="ostree aborts on a failed assertion here")
def test_depth_below_minus_one_is_refused(ostreefs: Tool, sources: dict[str, Source],
                                          tmp_path: Path) -> None:
    dest = init_repo(ostreefs, tmp_path / "d", "archive")
    bad = ostreefs("pull-local", f"--repo={dest}", sources["bare"].path, "--depth=-2",
                   check=False)
    assert_clean_failure(bad)


def test_remote(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                tmp_path: Path) -> None:
    src = sources["archive"]
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare-user", src.path, "--remote=origin")
    _assert_same_repo(a, b, src.path)
    assert _refs(b) == {"refs/remotes/origin/main": src.c2 + "\n",
                        "refs/remotes/origin/other/br": src.c3 + "\n"}
    # Without --remote the plain name resolves to the remote ref, which already holds
    # the commit, so ostree leaves refs/heads alone.
    _both(ostree, ostreefs, tmp_path, "bare-user", src.path, "main")
    _assert_same_repo(a, b, src.path)
    assert "refs/heads/main" not in _refs(b)
    # A ref elsewhere is moved.
    _both(ostree, ostreefs, tmp_path, "bare-user", src.path, "--remote=up", "other/br")
    assert _refs(a) == _refs(b)
    assert _refs(b)["refs/remotes/up/other/br"] == src.c3 + "\n"


def test_checksum_and_bad_refs(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                               tmp_path: Path) -> None:
    src = sources["bare"]
    a, b, _ = _both(ostree, ostreefs, tmp_path, "archive", src.path, src.c1)
    _assert_same_repo(a, b)
    assert _refs(b) == {} and _object_names(b, "commit") == {src.c1}
    for args in (["nosuch"], ["origin:main"], ["main", "bad ref"]):
        _, _, (pa, pb) = _both(ostree, ostreefs, tmp_path, "archive", src.path, *args,
                               check=False)
        assert pa.returncode == 1, args
        assert_clean_failure(pb)
        assert pb.stderr.splitlines()[0] == pa.stderr.strip().splitlines()[-1]
    # A source whose only refs are remote refs: their names are refused, as by ostree.
    _both(ostree, ostreefs, tmp_path, "bare", src.path, "main", "--remote=o", tag="-r")
    _, _, (pa, pb) = _both(ostree, ostreefs, tmp_path, "bare", tmp_path / "by-ostree-r",
                           check=False, tag="-rr")
    assert pb.stderr.splitlines()[0] == pa.stderr.strip().splitlines()[-1] == \
        "error: Invalid ref name o:main"
    # Missing SRC_REPO.
    pa = ostree("pull-local", f"--repo={a}", check=False)
    pb = ostreefs("pull-local", f"--repo={b}", check=False)
    assert pa.returncode == pb.returncode == 1
    assert "DESTINATION must be specified" in pb.stderr


def test_commit_metadata_only(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                              tmp_path: Path) -> None:
    src = sources["bare"]
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare", src.path, "main",
                    "--commit-metadata-only", "--depth=1")
    _assert_same_repo(a, b, src.path)
    assert _state(b) == sorted(f"{c}.commitpartial" for c in (src.c1, src.c2))
    assert _refs(b) == {"refs/heads/main": src.c2 + "\n"}
    # A full pull completes the partial commits.
    _both(ostree, ostreefs, tmp_path, "bare", src.path, "main", "--depth=1")
    _assert_same_repo(a, b, src.path)
    assert _state(b) == []
    ostree("fsck", f"--repo={b}")


def test_summary_names_the_commits(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                                   tmp_path: Path) -> None:
    """With a summary file in the source, refs resolve through it, stale or not."""
    src = tmp_path / "src"
    _copy_repo(sources["archive"].path, src)
    ostree("summary", f"--repo={src}", "-u")
    ostree("reset", f"--repo={src}", "main", "main^")
    ostree("refs", f"--repo={src}", "main", "--create=new")
    a, b, _ = _both(ostree, ostreefs, tmp_path, "archive", src, "main")
    _assert_same_repo(a, b)
    assert _refs(b) == {"refs/heads/main": sources["archive"].c2 + "\n"}
    _, _, (pa, pb) = _both(ostree, ostreefs, tmp_path, "archive", src, "new", check=False)
    assert pb.stderr.splitlines()[0] == pa.stderr.strip().splitlines()[-1]


def test_detached_metadata_refreshed(ostree: Tool, ostreefs: Tool,
                                     sources: dict[str, Source], tmp_path: Path) -> None:
    """A commit the destination has gets the source's current detached metadata."""
    s = sources["bare-user"]
    src = tmp_path / "src"
    _copy_repo(s.path, src)
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare-user", src, "main")
    meta = src / "objects" / s.c2[:2] / f"{s.c2[2:]}.commitmeta"
    meta.unlink()
    ostree("commit", f"--repo={src}", "-b", "scratch", "--orphan", "--tree=ref=main",
           "--add-detached-metadata-string=sig=other", "--add-detached-metadata-string=k=v")
    donor = next(src.glob("objects/*/*.commitmeta"))
    meta.write_bytes(donor.read_bytes())
    _both(ostree, ostreefs, tmp_path, "bare-user", src, "main")
    _assert_same_repo(a, b)
    got = (b / "objects" / s.c2[:2] / f"{s.c2[2:]}.commitmeta").read_bytes()
    assert got == donor.read_bytes()


# --------------------------------------------------------------------------------------
# across the tools, across filesystems, trust


def test_ostree_pulls_from_ostreefs_and_back(ostree: Tool, ostreefs: Tool,
                                             sources: dict[str, Source],
                                             tmp_path: Path) -> None:
    src = sources["bare"]
    mid = init_repo(ostreefs, tmp_path / "mid", "bare-user")
    ostreefs("pull-local", f"--repo={mid}", src.path, "main", "--depth=-1")
    # ostree copies our repository, into an archive repo, and accepts the result.
    out = init_repo(ostree, tmp_path / "out", "archive")
    ostree("pull-local", f"--repo={out}", mid, "--depth=-1")
    ostree("fsck", f"--repo={out}")
    # And ostreefs copies that back into a bare repo identical to a direct pull.
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare", out, "--depth=-1")
    _assert_same_repo(a, b, out)
    ostree("fsck", f"--repo={b}")
    assert _object_names(b, "commit") == {src.c1, src.c2}


def _other_filesystem(tmp_path: Path) -> Path | None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        return None
    return shm


@pytest.mark.parametrize("mode", ["archive", "bare-user", "bare"])
def test_copy_across_filesystems(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                                 tmp_path: Path, mode: str) -> None:
    """Without hard links the objects are copied as files, as ostree copies them."""
    other = _other_filesystem(tmp_path)
    if other is None:
        pytest.skip("no second filesystem (/dev/shm) to copy from")
    src = Path(os.path.join(other, f"ostreefs-pull-test-{os.getpid()}-{mode}"))
    shutil.rmtree(src, ignore_errors=True)
    try:
        try:
            _copy_repo(sources[mode].path, src)
        except AssertionError as e:
            pytest.skip(f"cannot hold a {mode} repository on {other}: {e}")
        a, b, _ = _both(ostree, ostreefs, tmp_path, mode, src, "main")
        _assert_same_repo(a, b, src)
        assert _linked(b, src) == set()
        ostree("fsck", f"--repo={b}")
    finally:
        shutil.rmtree(src, ignore_errors=True)


def test_untrusted_verifies(ostree: Tool, ostreefs: Tool, sources: dict[str, Source],
                            tmp_path: Path) -> None:
    src = tmp_path / "src"
    _copy_repo(sources["bare"].path, src)
    victim = max(src.glob("objects/*/*.file"), key=lambda p: p.lstat().st_size
                 if stat.S_ISREG(p.lstat().st_mode) else -1)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    # Linked without --untrusted (ostree trusts a local source), refused with it.
    a, b, _ = _both(ostree, ostreefs, tmp_path, "bare", src, "main")
    _assert_same_repo(a, b, src)
    _, _, (pa, pb) = _both(ostree, ostreefs, tmp_path, "bare", src, "main", "--untrusted",
                           check=False, tag="-u")
    assert pa.returncode == 1
    assert_clean_failure(pb)
    assert victim.name.split(".")[0] in pb.stderr
    assert not _refs(tmp_path / "by-ostreefs-u")


@pytest.mark.skipif(bool(os.environ.get("OSTREEFS_TEST_IMPL")),
                    reason="a deliberate difference from ostree")
def test_rewritten_objects_always_verified(ostreefs: Tool, sources: dict[str, Source],
                                           tmp_path: Path) -> None:
    """An object re-written in another mode is checked even without --untrusted.

    ostree (trusting a local source) would store the corrupt bytes under the expected
    name; ostreefs computes the checksum anyway while writing, and refuses.
    """
    src = tmp_path / "src"
    _copy_repo(sources["bare"].path, src)
    victim = max(src.glob("objects/*/*.file"), key=lambda p: p.lstat().st_size
                 if stat.S_ISREG(p.lstat().st_mode) else -1)
    victim.write_bytes(victim.read_bytes() + b"!")
    dest = init_repo(ostreefs, tmp_path / "arch", "archive")
    p = ostreefs("pull-local", f"--repo={dest}", src, "main", check=False)
    assert_clean_failure(p)
    assert "checksum expected=" in p.stderr and victim.name.split(".")[0] in p.stderr
    assert not _refs(dest)
    assert _state(dest) == [f"{sources['bare'].c2}.commitpartial"]
    assert not list(dest.glob("objects/*/*.commit"))


def test_library_result(sources: dict[str, Source], tmp_path: Path) -> None:
    from ostreefs.store.config import RepoMode
    from ostreefs.store.objects import ObjectType
    from ostreefs.store.pull_local import pull_local
    from ostreefs.store.repo import Repo

    s = sources["archive"]
    dest = Repo.init(tmp_path / "d", RepoMode.BARE_USER)
    seen: list[tuple[int, int]] = []
    res = pull_local(dest, Repo.open(s.path), ["main"], depth=-1, remote="r",
                     progress=lambda m, c: seen.append((m, c)))
    assert res.commits == {"main": s.c2}
    assert res.refs_moved == {"r:main": s.c2}
    assert res.content_bytes_written > 0 and res.metadata_imported > 0
    assert seen and seen[-1] == (res.metadata_imported, res.content_imported)
    commits = {c for c, t, _ in res.written if t is ObjectType.COMMIT}
    assert commits == {s.c1, s.c2}
    again = pull_local(dest, Repo.open(s.path), None, depth=-1, remote="r")
    assert (again.metadata_imported, again.content_imported) == (1, 0)  # other/br's commit
    assert again.refs_moved == {"r:other/br": s.c3}



@pytest.mark.parametrize("mode", ["bare-user", "archive"])
def test_object_the_destination_has_may_be_gone_from_the_source(
        ostree: Tool, ostreefs: Tool, sources: dict[str, Source], tmp_path: Path,
        mode: str) -> None:
    """A later pull needs only what the destination lacks: a content object it already
    has may be missing from the source (pruned, or deleted by fsck) without harm."""
    src = tmp_path / "src"
    _copy_repo(sources[mode].path, src)
    s = sources[mode]
    a, b, _ = _both(ostree, ostreefs, tmp_path, mode, src, s.c1)
    # A content object c1 and c2 share, gone from the source only.
    ext = "filez" if mode == "archive" else "file"
    shared = sorted(_object_names(a, ext))[0]
    (src / "objects" / shared[:2] / f"{shared[2:]}.{ext}").unlink()
    a, b, _ = _both(ostree, ostreefs, tmp_path, mode, src, "main")
    _assert_same_repo(a, b, src)
    for repo in (a, b):
        ostree("fsck", f"--repo={repo}")
