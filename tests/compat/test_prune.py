"""``prune``: ostreefs deletes exactly what ostree 2022.7 deletes and prints what it prints.

The same history is committed by ostree into one repository and by ostreefs into another
(with fixed timestamps, so every checksum is equal): a branch of three commits, a second
branch, a branch whose timestamps go back and forth, a remote ref, a ``refs/mirrors`` ref
to one orphan commit and a second orphan with detached metadata and a partial mark. For
each set of options, ``ostree prune`` runs on a copy of the ostree-built repository and
``ostreefs prune`` on a copy of the ostreefs-built one; stdout, exit status, the object
files left (with their bytes), ``state/`` and ``config`` must be equal, and ``ostree fsck``
must accept the result.

Then prune runs while another process commits a large tree: the commit either lands
before the scan or waits for the exclusive lock, and is never left incomplete.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import (
    Tool,
    commit_checksum,
    describe_objects_diff,
    format_result,
    init_repo,
    objects_snapshot,
    rev_parse,
    tool_env,
)

T = 1700000000


def _write(p: Path, data: str | bytes, mode: int = 0o644) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    p.write_bytes(data)
    os.chmod(p, mode)


def _trees(base: Path) -> dict[str, Path]:
    rnd = random.Random(7)
    t1 = base / "t1"
    _write(t1 / "a", "a\n")
    _write(t1 / "sub" / "b", "b\n")
    _write(t1 / "big", bytes(rnd.getrandbits(8) for _ in range(1500)))
    os.symlink("some/longer/target", t1 / "lnk")
    t2 = base / "t2"
    shutil.copytree(t1, t2, symlinks=True)
    _write(t2 / "a", "a2\n")
    _write(t2 / "sub" / "c", "c\n")
    t3 = base / "t3"
    shutil.copytree(t2, t3, symlinks=True)
    _write(t3 / "x", "x\n")
    trees = {"t1": t1, "t2": t2, "t3": t3}
    for i in range(1, 5):
        _write(base / f"n{i}" / "f", f"{i}\n")
        trees[f"n{i}"] = base / f"n{i}"
    oa = base / "oa"
    _write(oa / "o", "orphan a\n")
    _write(oa / "a", "a2\n")  # shared with t2
    ob = base / "ob"
    _write(ob / "o", "orphan b\n")
    _write(ob / "huge", bytes(rnd.getrandbits(8) for _ in range(5000)))
    os.symlink("a/dangling/link", ob / "dl")
    trees.update(oa=oa, ob=ob)
    return trees


#: (name, tree, branch or None for --orphan, timestamp offset, extra options)
HISTORY: list[tuple[str, str, str | None, int, list[str]]] = [
    ("c1", "t1", "main", 0, []),
    ("c2", "t2", "main", 100, []),
    ("c3", "t3", "main", 200, []),
    ("other", "t1", "other", 50, []),
    ("n1", "n1", "nm", 10, []),
    ("n2", "n2", "nm", 500, []),
    ("n3", "n3", "nm", 30, []),
    ("n4", "n4", "nm", 40, []),
    ("orphan_a", "oa", None, 300, []),
    ("orphan_b", "ob", None, 20, ["--add-detached-metadata-string=note=doomed"]),
]


@dataclass
class Built:
    ostree_repo: Path
    ostreefs_repo: Path
    commits: dict[str, str]


def _build(tool: Tool, repo: Path, trees: dict[str, Path]) -> dict[str, str]:
    init_repo(tool, repo, "bare")
    commits: dict[str, str] = {}
    for name, tree, branch, dt, extra in HISTORY:
        where = ["-b", branch] if branch else ["--orphan"]
        proc = tool("commit", f"--repo={repo}", *where, "-s", name,
                    f"--timestamp=@{T + dt}", *extra, trees[tree])
        commits[name] = commit_checksum(proc)
    # A remote ref, a collection mirror ref (to orphan_a) and a partial mark (on orphan_b).
    _write(repo / "refs" / "remotes" / "origin" / "foo", commits["c1"] + "\n")
    _write(repo / "refs" / "mirrors" / "org.example" / "bar", commits["orphan_a"] + "\n")
    _write(repo / "state" / f"{commits['orphan_b']}.commitpartial", b"")
    return commits


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, ostree: Tool, ostreefs: Tool) -> Built:
    base = tmp_path_factory.mktemp("prune")
    trees = _trees(base / "trees")
    a = _build(ostree, base / "by-ostree", trees)
    b = _build(ostreefs, base / "by-ostreefs", trees)
    assert a == b, "the two tools committed different checksums"
    return Built(base / "by-ostree", base / "by-ostreefs", a)


def _copy(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    return dest


def _state(repo: Path) -> list[str]:
    """The partial marks of commits still present.

    (ostree's --delete-commit leaves the mark of the commit it deletes; ostreefs removes
    it along with the commit, as both tools do for the commits prune finds unreachable.)
    """
    return sorted(n for n in os.listdir(repo / "state")
                  if (repo / "objects" / n[:2] / f"{n[2:64]}.commit").exists())


def test_both_tools_build_the_same_repository(built: Built) -> None:
    a, b = objects_snapshot(built.ostree_repo), objects_snapshot(built.ostreefs_repo)
    assert a == b, describe_objects_diff(a, b)
    assert any(k.endswith(".commitmeta") for k in a)


SCENARIOS: list[list[str]] = [
    [],
    ["--no-prune"],
    ["--refs-only"],
    ["--refs-only", "--no-prune"],
    ["--refs-only", "--depth=0"],
    ["--refs-only", "--depth=1"],
    ["--refs-only", "--depth=-5"],
    ["--depth=0"],
    ["--keep-younger-than=@1700000150"],
    ["--keep-younger-than=@1700000150", "--no-prune"],
    ["--keep-younger-than=@1700000030"],  # n3 (T+30) is kept: the bound is inclusive
    ["--keep-younger-than=@1700000031"],  # n3 is older: n2 goes too, though it is newer
    ["--keep-younger-than=@1600000000"],  # nothing is too old, but orphans still go
    ["--keep-younger-than=2023-11-14 22:15:00 +0000", "--depth=0"],  # depth is ignored
    ["--keep-younger-than=@1800000000", "--retain-branch-depth=main=-1"],
    ["--delete-commit={c2}"],
    ["--delete-commit={c2}", "--refs-only"],
    ["--delete-commit={orphan_b}"],
    ["--delete-commit={c3}"],  # a ref points at it: refused
    ["--delete-commit={orphan_a}"],  # a mirror ref points at it: refused
    ["--delete-commit={c2}", "--no-prune"],
    ["--commit-only"],
    ["--commit-only", "--refs-only"],
    ["--commit-only", "--refs-only", "--depth=0"],
    ["--commit-only", "--keep-younger-than=@1700000150"],
    ["--static-deltas-only"],
    ["--static-deltas-only", "--delete-commit={c2}"],
    ["--only-branch=main"],
    ["--only-branch=main", "--depth=0"],
    ["--only-branch=main", "--only-branch=nm", "--depth=1"],
    ["--only-branch=origin:foo", "--depth=0"],
    ["--only-branch=nm", "--keep-younger-than=@1700000035"],
    ["--only-branch=nm", "--depth=0", "--no-prune"],
    ["--only-branch=nope"],
    ["--retain-branch-depth=main=1", "--depth=0"],
    ["--keep-younger-than=garbage"],
]


PER_BRANCH = ("--keep-younger-than=", "--only-branch=", "--retain-branch-depth=")


@pytest.mark.parametrize("options", SCENARIOS, ids=lambda o: " ".join(o) or "(none)")
def test_prune_matches_ostree(built: Built, ostree: Tool, ostreefs: Tool, tmp_path: Path,
                              options: list[str]) -> None:
    opts = [o.format(**built.commits) for o in options]
    a = _copy(built.ostree_repo, tmp_path / "a")
    b = _copy(built.ostreefs_repo, tmp_path / "b")
    if any(o.startswith(PER_BRANCH) for o in opts):
        # Where ostree ignores refs/mirrors (see test_per_branch_prune_keeps_mirror_refs).
        for r in (a, b):
            (r / "refs" / "mirrors" / "org.example" / "bar").unlink()
    pa = ostree("prune", f"--repo={a}", *opts, check=False)
    pb = ostreefs("prune", f"--repo={b}", *opts, check=False)
    detail = format_result(pa.args, pa) + "\n" + format_result(pb.args, pb)
    assert (pb.stdout, pb.returncode) == (pa.stdout, pa.returncode), detail
    if pa.returncode != 0:
        assert "Traceback" not in pb.stderr, detail
    sa, sb = objects_snapshot(a), objects_snapshot(b)
    assert sa == sb, describe_objects_diff(sa, sb) + "\n" + detail
    assert _state(a) == _state(b), detail
    assert (a / "config").read_bytes() == (b / "config").read_bytes(), detail
    fsck = ostree("fsck", f"--repo={b}", check=False)
    assert fsck.returncode == 0, format_result(fsck.args, fsck)
    if pb.returncode == 0:  # the index is brought up to date after each prune
        verify = ostreefs("index", "verify", f"--repo={b}", check=False)
        assert verify.returncode == 0, format_result(verify.args, verify)


def test_per_branch_prune_keeps_mirror_refs(built: Built, ostree: Tool, ostreefs: Tool,
                                            tmp_path: Path) -> None:
    """A deliberate difference: ostree 2022.7's --keep-younger-than/--only-branch path
    skips refs/mirrors and deletes the commit such a ref names; ostreefs keeps it."""
    a = _copy(built.ostree_repo, tmp_path / "a")
    b = _copy(built.ostreefs_repo, tmp_path / "b")
    opts = ["--keep-younger-than=@1700000150"]
    ostree("prune", f"--repo={a}", *opts)
    ostreefs("prune", f"--repo={b}", *opts)
    sa, sb = objects_snapshot(a), objects_snapshot(b)
    c = built.commits["orphan_a"]
    assert f"{c[:2]}/{c[2:]}.commit" in set(sb) - set(sa)
    assert set(sa) <= set(sb)
    fsck = ostree("fsck", f"--repo={b}", check=False)
    assert fsck.returncode == 0, format_result(fsck.args, fsck)


def test_no_prune_deletes_nothing(built: Built, ostreefs: Tool, tmp_path: Path) -> None:
    b = _copy(built.ostreefs_repo, tmp_path / "b")
    before = objects_snapshot(b)
    out = ostreefs("prune", f"--repo={b}", "--refs-only", "--depth=0", "--no-prune").stdout
    assert out.splitlines()[1].startswith("Would delete: ")
    assert objects_snapshot(b) == before


def test_deleted_commit_takes_its_detached_metadata_and_partial_mark(
        built: Built, ostreefs: Tool, tmp_path: Path) -> None:
    b = _copy(built.ostreefs_repo, tmp_path / "b")
    c = built.commits["orphan_b"]
    meta = b / "objects" / c[:2] / f"{c[2:]}.commitmeta"
    partial = b / "state" / f"{c}.commitpartial"
    assert meta.exists() and partial.exists()
    ostreefs("prune", f"--repo={b}", "--refs-only")
    assert not meta.exists() and not partial.exists()
    assert not (b / "objects" / c[:2] / f"{c[2:]}.commit").exists()
    d = _copy(built.ostreefs_repo, tmp_path / "d")
    ostreefs("prune", f"--repo={d}", f"--delete-commit={c}")
    assert not (d / meta.relative_to(b)).exists()
    assert not (d / partial.relative_to(b)).exists()
    assert (d / "objects" / c[:2] / f"{c[2:]}.tombstone-commit").exists()


def test_json_lists_deleted_commits(built: Built, ostreefs: Tool, tmp_path: Path) -> None:
    import json

    b = _copy(built.ostreefs_repo, tmp_path / "b")
    res = json.loads(ostreefs("prune", f"--repo={b}", "--refs-only", "--depth=0",
                              "--json").stdout)
    c = built.commits
    assert sorted(res["deleted_commits"]) == sorted(c[k] for k in ("c2", "n1", "n2", "n3",
                                                                    "orphan_b"))
    assert res["deleted"] > len(res["deleted_commits"]) and res["bytes_freed"] > 5000


# ------------------------------------------------------------------ concurrency

def _big_tree(path: Path, salt: int) -> int:
    """About 1800 files of 3 KiB, all new for each salt; returns the file count."""
    rnd = random.Random(salt)
    n = 0
    for d in range(30):
        for i in range(60):
            _write(path / f"d{d}" / f"f{i}", rnd.randbytes(3000))
            n += 1
    return n


#: Prunes (through the library, to prune often) until the file argv[2] exists.
PRUNE_LOOP = """
import os, sys, time
from ostreefs.store.prune import prune
from ostreefs.store.repo import Repo
n = 0
while not os.path.exists(sys.argv[2]):
    prune(Repo.open(sys.argv[1]), refs_only=True)
    n += 1
    time.sleep(0.01)
print(n)
"""


@pytest.mark.parametrize("committer", ["ostreefs", "ostree"])
def test_prune_during_commit_loses_nothing(committer: str, ostree: Tool, ostreefs: Tool,
                                           tmp_path: Path) -> None:
    """Commits of a large tree race a loop of prunes plus one CLI prune started after a
    varying delay: every commit must end complete, with its ref."""
    repo = init_repo(ostreefs, tmp_path / "repo", "bare")
    small = tmp_path / "small"
    writer = ostreefs if committer == "ostreefs" else ostree
    delays = [0.0, 0.2, 0.45]
    for i, delay in enumerate(delays):
        tree = tmp_path / f"tree{i}"
        nfiles = _big_tree(tree, i)
        _write(small / "f", f"orphan {i}\n")
        ostree("commit", f"--repo={repo}", "--orphan", "-s", "prunable", small)
        stop = tmp_path / f"stop{i}"
        loop = subprocess.Popen([sys.executable, "-c", PRUNE_LOOP, str(repo), str(stop)],
                                env=tool_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        branch = f"race{i}"  # not hex: rev-parse takes a hex word as a commit prefix
        proc = writer.popen("commit", f"--repo={repo}", "-b", branch, "-s", branch, tree,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(delay)
            pr = ostreefs("prune", f"--repo={repo}", "--refs-only", check=False)
            out, err = proc.communicate(timeout=120)
            stop.touch()
            loop_out, loop_err = loop.communicate(timeout=120)
        finally:
            for p in (proc, loop):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        assert pr.returncode == 0, format_result(pr.args, pr)
        assert proc.returncode == 0, f"commit failed: {out}\n{err}"
        assert loop.returncode == 0 and int(loop_out) > 0, loop_err
        csum = rev_parse(ostree, repo, branch)
        assert csum == out.strip()
        listed = ostree("ls", "-R", f"--repo={repo}", branch).stdout.splitlines()
        assert sum(1 for line in listed if line.startswith("-")) == nfiles
        fsck = ostree("fsck", f"--repo={repo}", check=False)
        assert fsck.returncode == 0, format_result(fsck.args, fsck)
        shutil.rmtree(tree)
    for i in range(len(delays)):  # every branch survived every later prune
        rev_parse(ostree, repo, f"race{i}")
