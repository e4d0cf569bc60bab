"""ostreefs checkout must give the tree ostree checkout gives: same entries, owners,
modes, xattrs, symlink targets, contents and hardlink groups, for every mode and
option; and it must never write outside its destination."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from support import TS_ARG, UTF8, Tool, assert_clean_failure, init_repo
from treegen import diff_snapshots, hardlink_groups, make_tree, snapshot

MODES = ["bare", "bare-user", "bare-user-only", "archive"]
FLAGS = [(), ("-U",), ("--force-copy",), ("-U", "--force-copy")]


def regular_files(root: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath) / n
            if not p.is_symlink():
                out.append(p)
    return sorted(out)


def real_dirs(root: Path) -> list[Path]:
    return sorted(Path(dp) / d for dp, dirs, _f in os.walk(root) for d in dirs
                  if not (Path(dp) / d).is_symlink())




def assert_same_tree(a: Path, b: Path, xattrs: bool = True) -> None:
    sa, sb = snapshot(a, xattrs=xattrs), snapshot(b, xattrs=xattrs)
    assert sa == sb, diff_snapshots(sa, sb)
    assert hardlink_groups(a) == hardlink_groups(b)


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory, ostree: Tool) -> Callable[[str], Path]:
    """One repo per mode, made by ostree from the same two generated trees (b on a)."""
    base = tmp_path_factory.mktemp("co")
    tree_a = make_tree(base / "a", seed=11)
    # Layer b: a's tree with some files rewritten, new files, and OCI whiteouts.
    tree_b = base / "b"
    shutil.copytree(tree_a, tree_b, symlinks=True)
    files = regular_files(tree_b)
    for p in files[::5]:
        p.write_bytes(b"changed in layer b\n" + p.name.encode())
    (tree_b / "new in b").write_bytes(b"new\n")
    (files[1].parent / f".wh.{files[1].name}").write_bytes(b"")
    dirs = real_dirs(tree_b)
    opaque = dirs[len(dirs) // 2]
    (opaque / ".wh..wh..opq").write_bytes(b"")
    cache: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in cache:
            r = init_repo(ostree, base / f"repo-{mode}", mode)
            for branch, tree in (("la", tree_a), ("lb", tree_b)):
                ostree("commit", f"--repo={r}", "-b", branch, "-s", branch, TS_ARG,
                       str(tree), env=UTF8)
            cache[mode] = r
        return cache[mode]

    return get


@pytest.mark.parametrize("flags", FLAGS, ids=lambda f: " ".join(f) or "default")
@pytest.mark.parametrize("mode", MODES)
def test_checkout_matches_ostree(repos: Callable[[str], Path], ostree: Tool, ostreefs: Tool,
                                 tmp_path: Path, mode: str, flags: tuple[str, ...]) -> None:
    repo = repos(mode)
    if mode == "bare-user" and "-U" not in flags and "--force-copy" not in flags:
        pass  # copies with owners restored (as root)
    ostree("checkout", f"--repo={repo}", *flags, "la", str(tmp_path / "o"), env=UTF8)
    ostreefs("checkout", f"--repo={repo}", *flags, "la", str(tmp_path / "f"), env=UTF8)
    # In user mode ostree sets no xattrs, but a hardlink shows the object's own
    # (user.ostreemeta in bare-user): both tools share the objects, so compare them too.
    assert_same_tree(tmp_path / "o", tmp_path / "f")


@pytest.mark.parametrize("mode", ["bare", "archive"])
@pytest.mark.parametrize("union", ["--union", "--union-add", "--whiteouts --union"])
def test_layered_checkouts_match_ostree(repos: Callable[[str], Path], ostree: Tool,
                                        ostreefs: Tool, tmp_path: Path, mode: str,
                                        union: str) -> None:
    repo = repos(mode)
    for tool, dest in ((ostree, tmp_path / "o"), (ostreefs, tmp_path / "f")):
        tool("checkout", f"--repo={repo}", "la", str(dest), env=UTF8)
        tool("checkout", f"--repo={repo}", *union.split(), "lb", str(dest), env=UTF8)
    assert_same_tree(tmp_path / "o", tmp_path / "f")


def test_union_identical(repos: Callable[[str], Path], ostree: Tool, ostreefs: Tool,
                         tmp_path: Path) -> None:
    repo = repos("bare")
    for tool, dest in ((ostree, tmp_path / "o"), (ostreefs, tmp_path / "f")):
        tool("checkout", f"--repo={repo}", "la", str(dest))
        tool("checkout", f"--repo={repo}", "-H", "--union-identical", "la", str(dest))
        proc = tool("checkout", f"--repo={repo}", "-H", "--union-identical", "lb", str(dest),
                    check=False)
        assert proc.returncode != 0  # b rewrites files of a
    assert_same_tree(tmp_path / "o", tmp_path / "f")


def test_subpath_and_allow_noent(repos: Callable[[str], Path], ostree: Tool, ostreefs: Tool,
                                 tmp_path: Path) -> None:
    repo = repos("bare")
    ostree("checkout", f"--repo={repo}", "--subpath=/level 00/level 01", "la",
           str(tmp_path / "o"))
    ostreefs("checkout", f"--repo={repo}", "--subpath=/level 00/level 01", "la",
             str(tmp_path / "f"))
    assert_same_tree(tmp_path / "o", tmp_path / "f")
    ostreefs("checkout", f"--repo={repo}", "--allow-noent", "--subpath=/nope", "la",
             str(tmp_path / "n"))
    assert not (tmp_path / "n").exists()
    assert_clean_failure(ostreefs("checkout", f"--repo={repo}", "--subpath=/nope", "la",
                                  str(tmp_path / "n"), check=False))


def test_existing_destination_refused(repos: Callable[[str], Path], ostreefs: Tool,
                                      tmp_path: Path) -> None:
    repo = repos("bare")
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    assert_clean_failure(ostreefs("checkout", f"--repo={repo}", "la", str(dest), check=False))
    assert sorted(os.listdir(dest)) == ["keep"]


def test_union_never_writes_through_a_planted_symlink(tmp_path: Path, ostree: Tool,
                                                      ostreefs: Tool) -> None:
    """DEST has a symlink where the commit has a directory: nothing lands outside."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "passwd").write_text("from the commit\n")
    (src / "x").write_text("x\n")
    repo = init_repo(ostree, tmp_path / "repo", "bare")
    ostree("commit", f"--repo={repo}", "-b", "m", str(src))
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)
    (dest / "x").symlink_to(outside / "victim")
    proc = ostreefs("checkout", f"--repo={repo}", "--union", "m", str(dest), check=False)
    assert_clean_failure(proc)
    assert os.listdir(outside) == []
    assert (dest / "etc").is_symlink()


def test_force_copy_checkout_cannot_change_the_store(repos: Callable[[str], Path],
                                                     ostree: Tool, ostreefs: Tool,
                                                     tmp_path: Path) -> None:
    src_repo = repos("bare-user")
    repo = tmp_path / "repo"
    shutil.copytree(src_repo, repo, symlinks=True)
    dest = tmp_path / "co"
    ostreefs("checkout", f"--repo={repo}", "-U", "--force-copy", "la", str(dest))
    for p in regular_files(dest):
        os.chmod(p, 0o644)
        p.write_bytes(b"overwritten by a user\n")
    ostree("fsck", f"--repo={repo}")
    ostreefs("fsck", f"--repo={repo}")


def test_hardlink_checkout_shares_object_inodes(repos: Callable[[str], Path],
                                                ostreefs: Tool, tmp_path: Path) -> None:
    repo = repos("bare-user")
    dest = tmp_path / "co"
    ostreefs("checkout", f"--repo={repo}", "-U", "-H", "la", str(dest))
    regular = [p for p in regular_files(dest) if p.stat().st_size > 0]
    assert regular and all(os.lstat(p).st_nlink >= 2 for p in regular)
    proc = ostreefs("checkout", f"--repo={repo}", "-H", "la", str(tmp_path / "co2"),
                    check=False)
    assert_clean_failure(proc)
    assert "user checkout mode" in proc.stderr


def test_recommit_of_checkout_gives_the_same_tree(repos: Callable[[str], Path],
                                                  ostreefs: Tool, tmp_path: Path) -> None:
    repo = repos("bare")
    dest = tmp_path / "co"
    ostreefs("checkout", f"--repo={repo}", "la", str(dest))
    want = subprocess.run(["ostree", "rev-parse", f"--repo={repo}", "la"], check=True,
                          capture_output=True, text=True).stdout.strip()
    got = ostreefs("commit", f"--repo={repo}", "-b", "again", "-s", "a", TS_ARG,
                   "--no-bindings", str(dest), env=UTF8).stdout.strip()
    show = subprocess.run(["ostree", "ls", f"--repo={repo}", "-C", "-d", want, "/"],
                          check=True, capture_output=True, text=True).stdout
    show2 = subprocess.run(["ostree", "ls", f"--repo={repo}", "-C", "-d", got, "/"],
                           check=True, capture_output=True, text=True).stdout
    assert show.split()[4:6] == show2.split()[4:6]  # same root dirtree and dirmeta


@pytest.mark.parametrize("mode", ["bare", "bare-user-only"])
def test_commit_of_hardlinked_checkout_reuses_objects(tmp_path: Path, ostree: Tool,
                                                      ostreefs: Tool, mode: str) -> None:
    """Files that are hardlinks of objects are taken by inode: nothing is rehashed."""
    src = make_tree(tmp_path / "src", seed=21)
    repo = init_repo(ostree, tmp_path / "repo", mode)
    want = ostree("commit", f"--repo={repo}", "-b", "m", "-s", "s", TS_ARG,
                  *(["--canonical-permissions"] if mode == "bare-user-only" else []),
                  str(src), env=UTF8).stdout.strip()
    dest = tmp_path / "co"
    ostree("checkout", f"--repo={repo}", *(["-U"] if mode != "bare" else []), "m", str(dest),
           env=UTF8)
    linked = sum(1 for p in regular_files(dest) if os.lstat(p).st_nlink > 1)
    assert linked > 10
    out = ostreefs("commit", f"--repo={repo}", "-b", "m", "-s", "s", TS_ARG, "--parent=none",
                   "--table-output", str(dest), env=UTF8).stdout
    table = dict(line.split(": ", 1) for line in out.splitlines())
    assert table["Content Written"] == "0"
    assert int(table["Content Cache Hits"]) >= linked
    assert table["Commit"] == want


def test_threaded_checkout_gives_the_same_tree(repos: Callable[[str], Path],
                                               tmp_path: Path) -> None:
    from ostreefs.boot.checkout import CheckoutOptions, checkout
    from ostreefs.store.refs import rev_parse
    from ostreefs.store.repo import Repo

    repo = Repo.open(repos("bare-user"))
    c = rev_parse(repo, "la")
    for threads, name in ((1, "one"), (4, "four")):
        checkout(repo, c, tmp_path / name, CheckoutOptions(user_mode=True), threads=threads)
    assert_same_tree(tmp_path / "one", tmp_path / "four")


def test_opaque_whiteout_replaces_the_directory(tmp_path: Path, ostree: Tool,
                                                ostreefs: Tool) -> None:
    """An opaque dir takes its own layer's metadata and keeps its own early entries."""
    a, b = tmp_path / "a" / "d", tmp_path / "b" / "d"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    (a / "x").write_text("x\n")
    (a / "y").write_text("y\n")
    os.chmod(a, 0o700)
    (b / "-b").write_text("sorts before the marker\n")
    (b / "x").write_text("x2\n")
    (b / ".wh..wh..opq").write_text("")
    os.chmod(b, 0o750)
    os.chown(b, 5, 6)
    repo = init_repo(ostree, tmp_path / "repo", "bare")
    for layer in ("a", "b"):
        ostree("commit", f"--repo={repo}", "-b", f"l{layer}", str(tmp_path / layer))
    for tool, dest in ((ostree, tmp_path / "o"), (ostreefs, tmp_path / "f")):
        tool("checkout", f"--repo={repo}", "la", str(dest))
        tool("checkout", f"--repo={repo}", "--union", "--whiteouts", "lb", str(dest))
    assert_same_tree(tmp_path / "o", tmp_path / "f")
    assert sorted(os.listdir(tmp_path / "f" / "d")) == ["-b", "x"]
