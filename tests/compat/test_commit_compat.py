"""ostreefs commits must be ostree commits: same checksums, same objects, readable by ostree.

Every test runs the same command line through both tools, each on its own repository,
and compares what they print and what they leave on disk.  ostree 2022.7 is the oracle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import (
    TS_ARG,
    UTF8,
    Tool,
    commit_checksum,
    describe_objects_diff,
    format_result,
    init_repo,
    objects_snapshot,
    rev_parse,
)
from treegen import canonicalize, diff_snapshots, snapshot

MODES = ["bare", "bare-user", "bare-user-only", "archive"]
TREE_CASES = [(1, "small"), (2, "small"), (3, "medium")]




def _co(ostree: Tool, repo: Path, ref: str, dest: Path) -> dict:  # type: ignore[type-arg]
    ostree("checkout", f"--repo={repo}", ref, dest)
    return snapshot(dest)


# --------------------------------------------------------------------------------------
# Generated trees, every mode


@pytest.mark.parametrize("seed,size", TREE_CASES, ids=[f"{s}-{z}" for s, z in TREE_CASES])
@pytest.mark.parametrize("mode", MODES)
def test_commit_tree_same_checksum_and_objects(
    ostree: Tool,
    ostreefs: Tool,
    trees: Callable[[int, str], Path],
    tmp_path: Path,
    mode: str,
    seed: int,
    size: str,
) -> None:
    src = trees(seed, size)
    src_snap = snapshot(src)
    a = init_repo(ostree, tmp_path / "by-ostree", mode)
    b = init_repo(ostreefs, tmp_path / "by-ostreefs", mode)
    args = ["-b", "t", "-s", "subj", TS_ARG, str(src)]

    ca = commit_checksum(ostree("commit", f"--repo={a}", *args))
    cb = commit_checksum(ostreefs("commit", f"--repo={b}", *args))
    assert cb == ca, "commit checksums differ"
    assert rev_parse(ostree, b, "t") == ca
    assert rev_parse(ostreefs, b, "t") == ca
    assert (b / "refs/heads/t").read_text() == ca + "\n"

    # The oracle accepts our repository.
    ostree("fsck", f"--repo={b}")

    # Same object files, byte for byte (including .filez compression and, for bare
    # modes, owner/mode/user.ostreemeta of the object files).
    oa, ob = objects_snapshot(a), objects_snapshot(b)
    assert oa == ob, describe_objects_diff(oa, ob)

    # ostree checks out our commit as the source tree (canonicalized for bare-user-only).
    co_b = _co(ostree, b, "t", tmp_path / "co-b")
    expected = canonicalize(src_snap) if mode == "bare-user-only" else src_snap
    assert co_b == expected, diff_snapshots(expected, co_b)
    co_a = _co(ostree, a, "t", tmp_path / "co-a")
    assert co_a == co_b, diff_snapshots(co_a, co_b)

    # Source tree untouched by either commit.
    assert snapshot(src) == src_snap


@pytest.fixture(scope="module")
def ostree_repos(
    ostree: Tool, trees: Callable[[int, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int, str], tuple[Path, str]]:
    """(repo, commit) of a generated tree committed by ostree as branch ``t``, cached."""
    cache: dict[tuple[str, int, str], tuple[Path, str]] = {}

    def get(mode: str, seed: int, size: str) -> tuple[Path, str]:
        key = (mode, seed, size)
        if key not in cache:
            repo = init_repo(ostree, tmp_path_factory.mktemp(f"ostree-{mode}") / "r", mode)
            c = commit_checksum(
                ostree("commit", f"--repo={repo}", "-b", "t", "-s", "s", TS_ARG, trees(seed, size))
            )
            cache[key] = (repo, c)
        return cache[key]

    return get


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flags", [["-R"], ["-R", "-C"], ["-R", "-X"], ["-d"]])
def test_ls_cross_read(
    ostree: Tool,
    ostreefs: Tool,
    trees: Callable[[int, str], Path],
    ostree_repos: Callable[[str, int, str], tuple[Path, str]],
    mode: str,
    flags: list[str],
) -> None:
    """ostreefs reads an ostree-made repository exactly as ostree prints it."""
    src = trees(1, "small")
    repo, c = ostree_repos(mode, 1, "small")
    for rev in ("t", c):
        want = ostree("ls", f"--repo={repo}", *flags, rev, env=UTF8)
        got = ostreefs("ls", f"--repo={repo}", *flags, rev, env=UTF8)
        assert got.stdout == want.stdout, format_result(got.args, got)
    # Sub-paths (directories, files, symlinks), including awkward names, in one call
    # (ostree lists each PATH argument in order).
    snap = snapshot(src)
    paths = sorted(p for p in snap if p != ".")[:: max(1, len(snap) // 12)]
    paths += [p for p in sorted(snap) if snap[p]["type"] == "symlink"][:2]
    args = ["/" + p for p in paths]
    want = ostree("ls", f"--repo={repo}", *flags, "t", *args, env=UTF8)
    got = ostreefs("ls", f"--repo={repo}", *flags, "t", *args, env=UTF8)
    assert got.stdout == want.stdout, format_result(got.args, got)


@pytest.mark.parametrize("mode", MODES)
def test_cat_cross_read(
    ostree: Tool,
    ostreefs: Tool,
    trees: Callable[[int, str], Path],
    ostree_repos: Callable[[str, int, str], tuple[Path, str]],
    mode: str,
) -> None:
    src = trees(3, "medium")
    repo, _ = ostree_repos(mode, 3, "medium")
    snap = snapshot(src)
    files = sorted(p for p, e in snap.items() if e["type"] == "file")
    # The biggest files, an empty one, and a spread of the rest.
    by_size = sorted(files, key=lambda p: snap[p]["size"])
    pick = sorted(set(by_size[:1] + by_size[-2:] + files[::20]))
    # Several paths in one call are concatenated, like ostree.
    args = ["/" + p for p in pick]
    got = ostreefs("cat", f"--repo={repo}", "t", *args, text=False)
    expected = b"".join((src / p).read_bytes() for p in pick)
    if got.stdout != expected:
        for p in pick:  # find the culprit
            one = ostreefs("cat", f"--repo={repo}", "t", "/" + p, text=False).stdout
            assert one == (src / p).read_bytes(), f"cat /{p}: {len(one)} bytes"
        raise AssertionError("cat of several paths is not the concatenation of the files")
    want = ostree("cat", f"--repo={repo}", "t", *args[:3], text=False)
    got = ostreefs("cat", f"--repo={repo}", "t", *args[:3], text=False)
    assert got.stdout == want.stdout


# --------------------------------------------------------------------------------------
# Random small trees and commit texts (hypothesis)

_name = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)
_file = st.tuples(
    st.binary(max_size=300), st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2711, 0o444])
)
_tree = st.recursive(
    st.dictionaries(_name, _file, max_size=4),
    lambda children: st.dictionaries(_name, st.one_of(_file, children), max_size=4),
    max_leaves=12,
)
_text = st.text(
    alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30
)


def _materialize(root: Path, tree: dict) -> None:  # type: ignore[type-arg]
    root.mkdir()
    os.chmod(root, 0o755)
    for name, node in tree.items():
        p = root / name
        if isinstance(node, dict):
            _materialize(p, node)
        else:
            p.write_bytes(node[0])
            os.chmod(p, node[1])


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    tree=_tree,
    mode=st.sampled_from(MODES),
    subject=_text,
    body=_text,
    meta=st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9.]{0,8}", fullmatch=True), _text), max_size=3
    ),
    ts=st.integers(min_value=0, max_value=2**32),
)
def test_commit_random_trees(
    ostree: Tool,
    ostreefs: Tool,
    tmp_path_factory: pytest.TempPathFactory,
    tree: dict,  # type: ignore[type-arg]
    mode: str,
    subject: str,
    body: str,
    meta: list[tuple[str, str]],
    ts: int,
) -> None:
    base = tmp_path_factory.mktemp("hyp")
    src = base / "src"
    _materialize(src, tree)
    args = ["-b", "h", "-s", subject, "-m", body, f"--timestamp=@{ts}", str(src)]
    args[4:4] = [f"--add-metadata-string={k}={v}" for k, v in meta]
    outs = []
    for tool, name in ((ostree, "a"), (ostreefs, "b")):
        repo = init_repo(tool, base / name, mode)
        outs.append(commit_checksum(tool("commit", f"--repo={repo}", *args, env=UTF8)))
    assert outs[1] == outs[0]
    ostree("fsck", f"--repo={base / 'b'}")
    shutil.rmtree(base)


# --------------------------------------------------------------------------------------
# init


def _layout(repo: Path) -> list[tuple[str, str, str]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(repo):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            kind = "d" if os.path.isdir(full) else "f"
            out.append((os.path.relpath(full, repo), kind, oct(st.st_mode & 0o7777)))
    return sorted(out)


@pytest.mark.parametrize("extra", [[], ["--collection-id=org.example.Test"]], ids=["plain", "cid"])
@pytest.mark.parametrize("mode", [*MODES, "archive-z2", None])
def test_init_layout_and_config(
    ostree: Tool, ostreefs: Tool, tmp_path: Path, mode: str | None, extra: list[str]
) -> None:
    args = ([f"--mode={mode}"] if mode else []) + extra
    a, b = tmp_path / "a", tmp_path / "b"
    pa = ostree("init", f"--repo={a}", *args)
    pb = ostreefs("init", f"--repo={b}", *args)
    assert pb.stdout == pa.stdout
    assert _layout(b) == _layout(a)
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    # Re-running init on an existing repository succeeds and changes nothing.
    before = (b / "config").read_bytes(), _layout(b)
    ostree("init", f"--repo={a}", *args)
    ostreefs("init", f"--repo={b}", *args)
    assert ((b / "config").read_bytes(), _layout(b)) == before
    # Each tool can read the other's empty repository.
    assert ostreefs("refs", f"--repo={a}").stdout == ""
    assert ostree("refs", f"--repo={b}").stdout == ""
    ostree("fsck", f"--repo={b}")


# --------------------------------------------------------------------------------------
# Commit options: the same sequence of commands on both tools gives the same output.


@pytest.fixture(scope="module")
def opt_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tree with xattrs, odd modes and a foreign owner."""
    old = os.umask(0o022)
    try:
        root = tmp_path_factory.mktemp("opt") / "t"
        (root / "sub" / "deeper").mkdir(parents=True)
        (root / "empty").mkdir()
        (root / "hello.txt").write_text("hello\n")
        (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
        (root / "suid").write_bytes(b"\x7fELF fake\n")
        (root / "sub" / "owned").write_text("owned by 1000\n")
        (root / "sub" / "deeper" / "x").write_bytes(b"")
        os.symlink("hello.txt", root / "link")
        os.chmod(root / "run.sh", 0o755)
        os.chown(root / "sub" / "owned", 1000, 1000)
        os.chmod(root / "sub" / "owned", 0o640)
        os.chmod(root / "suid", 0o4755)
        os.chmod(root / "sub", 0o2775)
        os.chmod(root / "empty", 0o1777)
        os.setxattr(root / "hello.txt", "user.zz", b"2")
        os.setxattr(root / "hello.txt", "user.aa", b"1")
        os.setxattr(root / "sub", "user.dir", b"dirval")
        # Overlay trees for --tree=dir= (B overlays A).
        a = root.parent / "A"
        b = root.parent / "B"
        (a / "d").mkdir(parents=True)
        (b / "d").mkdir(parents=True)
        (a / "f").write_text("A\n")
        (a / "only-a").write_text("A only\n")
        (a / "d" / "x").write_text("A x\n")
        (b / "f").write_text("B\n")
        (b / "d" / "y").write_text("B y\n")
        os.chmod(b / "d", 0o700)
        # A second version of the tree for parent/skip tests.
        v2 = root.parent / "t2"
        shutil.copytree(root, v2, symlinks=True)
        (v2 / "hello.txt").write_text("hello again\n")
        (v2 / "new").write_text("new\n")
    finally:
        os.umask(old)
    return root


# Each scenario: list of (subcommand args...) run in order.  "{T}" = the opt tree,
# "{T2}" its second version, "{A}"/"{B}" the overlay trees, "{0}", "{1}"... = the stripped
# stdout of an earlier command of the same scenario (same tool).
SCENARIOS: dict[str, tuple[str, list[list[str]]]] = {
    "plain": ("archive", [["commit", "-b", "t", "-s", "subj", TS_ARG, "{T}"]]),
    "add-metadata-string-order": (
        "archive",
        [
            [
                "commit",
                "-b",
                "t",
                "-s",
                "subj",
                TS_ARG,
                "--add-metadata-string=zeta=1",
                "--add-metadata-string=alpha=2",
                "--add-metadata-string=mid=three words",
                "--add-metadata-string=version=1.2",
                "{T}",
            ]
        ],
    ),
    "add-metadata-gvariant": (
        "bare-user",
        [
            [
                "commit",
                "-b",
                "t",
                "-s",
                "subj",
                TS_ARG,
                "--add-metadata=num=42",
                "--add-metadata=str='text'",
                "--add-metadata=flag=true",
                "--add-metadata=big=uint64 7",
                "--add-metadata=list=['a', 'b']",
                "--add-metadata-string=s=given after but stored first",
                "{T}",
            ]
        ],
    ),
    "keep-metadata-with-parent": (
        "archive",
        [
            [
                "commit",
                "-b",
                "p",
                "-s",
                "one",
                TS_ARG,
                "--add-metadata-string=keepme=yes",
                "--add-metadata-string=dropme=no",
                "--add-metadata=num=42",
                "{T}",
            ],
            [
                "commit",
                "-b",
                "k",
                "-s",
                "two",
                "--timestamp=@1700000100",
                "--parent={0}",
                "--keep-metadata=keepme",
                "--keep-metadata=num",
                "{T2}",
            ],
            ["log", "k"],
        ],
    ),
    "keep-metadata-from-branch": (
        "bare",
        [
            ["commit", "-b", "k", "-s", "one", TS_ARG, "--add-metadata-string=keepme=yes", "{T}"],
            [
                "commit",
                "-b",
                "k",
                "-s",
                "two",
                "--timestamp=@1700000100",
                "--keep-metadata=keepme",
                "--add-metadata-string=extra=1",
                "{T2}",
            ],
            ["rev-parse", "k^"],
        ],
    ),
    "bind-ref": (
        "archive",
        [["commit", "-b", "main", "--bind-ref=zz", "--bind-ref=aa", "-s", "s", TS_ARG, "{T}"]],
    ),
    "no-bindings": ("archive", [["commit", "-b", "t", "--no-bindings", "-s", "s", TS_ARG, "{T}"]]),
    "orphan": (
        "bare-user",
        [
            ["commit", "--orphan", "-s", "s", TS_ARG, "{T}"],
            ["commit", "--orphan", "--no-bindings", "-s", "s", TS_ARG, "{T}"],
            ["refs"],
            ["show", "{0}"],
            ["ls", "-R", "{1}"],
        ],
    ),
    "owner-zero": (
        "bare",
        [
            ["commit", "-b", "t", "-s", "s", TS_ARG, "--owner-uid=0", "--owner-gid=0", "{T}"],
            ["ls", "-R", "t"],
        ],
    ),
    "owner-other": (
        "archive",
        [
            ["commit", "-b", "t", "-s", "s", TS_ARG, "--owner-uid=1000", "--owner-gid=2000", "{T}"],
            ["ls", "-R", "t"],
        ],
    ),
    "canonical-permissions": (
        "bare-user",
        [
            ["commit", "-b", "t", "-s", "s", TS_ARG, "--canonical-permissions", "{T}"],
            ["ls", "-R", "-X", "t"],
        ],
    ),
    "no-xattrs": (
        "archive",
        [["commit", "-b", "t", "-s", "s", TS_ARG, "--no-xattrs", "{T}"], ["ls", "-R", "-X", "t"]],
    ),
    "bare-user-only-canonical": (
        "bare-user-only",
        [
            ["commit", "-b", "t", "-s", "s", TS_ARG, "{T}"],
            [
                "commit",
                "-b",
                "t2",
                "-s",
                "s",
                TS_ARG,
                "--canonical-permissions",
                "--no-xattrs",
                "{T}",
            ],
            ["ls", "-R", "-X", "t"],
        ],
    ),
    "body": (
        "archive",
        [
            [
                "commit",
                "-b",
                "t",
                "-s",
                "the subject",
                "-m",
                "body line 1\n\nbody line 3",
                TS_ARG,
                "{T}",
            ],
            ["log", "t"],
        ],
    ),
    "date-timestamp": (
        "archive",
        [
            ["commit", "-b", "t", "-s", "subject", "--timestamp=2020-01-01 00:00:00 +0000", "{T}"],
            ["show", "t"],
        ],
    ),
    "option-values-starting-with-dash": (
        "archive",
        [["commit", "-b", "t", "-s", "-x", "-m", "--y", TS_ARG, "{T}"], ["log", "t"]],
    ),
    "tree-overlay": (
        "archive",
        [
            ["commit", "-b", "t", "-s", "s", TS_ARG, "--tree=dir={A}", "--tree=dir={B}"],
            ["commit", "-b", "u", "-s", "s", TS_ARG, "--tree=dir={B}", "--tree=dir={A}"],
            ["ls", "-R", "t"],
            ["ls", "-R", "u"],
            ["cat", "t", "/f"],
            ["cat", "u", "/f"],
        ],
    ),
    "skip-if-unchanged": (
        "bare-user",
        [
            ["commit", "-b", "t", "-s", "s", TS_ARG, "{T}"],
            [
                "commit",
                "-b",
                "t",
                "-s",
                "s2",
                "--timestamp=@1700000500",
                "--skip-if-unchanged",
                "{T}",
            ],
            ["rev-parse", "t"],
            [
                "commit",
                "-b",
                "t",
                "-s",
                "s3",
                "--timestamp=@1700000600",
                "--skip-if-unchanged",
                "{T2}",
            ],
            ["rev-parse", "t^"],
            ["log", "t"],
        ],
    ),
    "parent-chain": (
        "archive",
        [
            ["commit", "-b", "t", "-s", "one", TS_ARG, "{T}"],
            ["commit", "-b", "t", "-s", "two", "--timestamp=@1700000100", "{T2}"],
            [
                "commit",
                "-b",
                "other",
                "-s",
                "three",
                "--timestamp=@1700000200",
                "--parent={0}",
                "{T2}",
            ],
            ["rev-parse", "t^"],
            ["rev-parse", "other^"],
        ],
    ),
}


def _run_scenario(
    tool: Tool,
    repo: Path,
    mode: str,
    steps: list[list[str]],
    subst: dict[str, str],
    init_extra: list[str] | None = None,
) -> list[subprocess.CompletedProcess]:  # type: ignore[type-arg]
    init_repo(tool, repo, mode, *(init_extra or []))
    results: list[subprocess.CompletedProcess] = []  # type: ignore[type-arg]
    for step in steps:
        prev = [r.stdout.strip() for r in results]
        args = [a.format(*prev, **subst) for a in step]
        results.append(tool(args[0], f"--repo={repo}", *args[1:]))
    return results


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_commit_options(
    ostree: Tool, ostreefs: Tool, opt_tree: Path, tmp_path: Path, name: str
) -> None:
    mode, steps = SCENARIOS[name]
    subst = {
        "T": str(opt_tree),
        "T2": str(opt_tree.parent / "t2"),
        "A": str(opt_tree.parent / "A"),
        "B": str(opt_tree.parent / "B"),
    }
    want = _run_scenario(ostree, tmp_path / "a", mode, steps, subst)
    got = _run_scenario(ostreefs, tmp_path / "b", mode, steps, subst)
    for step, w, g in zip(steps, want, got, strict=True):
        assert g.stdout == w.stdout, f"step {step}\nostree printed:\n{w.stdout}\n" + format_result(
            g.args, g
        )
    refs_a = sorted(ostree("refs", f"--repo={tmp_path / 'a'}").stdout.splitlines())
    refs_b = sorted(ostreefs("refs", f"--repo={tmp_path / 'b'}").stdout.splitlines())
    assert refs_b == refs_a
    ostree("fsck", f"--repo={tmp_path / 'b'}")
    oa, ob = objects_snapshot(tmp_path / "a"), objects_snapshot(tmp_path / "b")
    assert oa == ob, describe_objects_diff(oa, ob)


def test_unicode_subject_utf8_locale(
    ostree: Tool, ostreefs: Tool, opt_tree: Path, tmp_path: Path
) -> None:
    """Non-ASCII subject/body/metadata under a UTF-8 locale (ostree refuses them under C)."""
    utf8 = {"LC_ALL": "C.UTF-8"}
    args = [
        "-b",
        "t",
        "-s",
        "sujet héllo ✓",
        "-m",
        "corps 日本語",
        TS_ARG,
        "--add-metadata-string=titre=été",
        str(opt_tree),
    ]
    outs = []
    for tool, repo in ((ostree, tmp_path / "a"), (ostreefs, tmp_path / "b")):
        init_repo(tool, repo, "archive")
        c = commit_checksum(tool("commit", f"--repo={repo}", *args, env=utf8))
        outs.append((c, tool("log", f"--repo={repo}", "t", env=utf8).stdout))
    assert outs[1] == outs[0]
    assert "    sujet héllo ✓\n" in outs[0][1]


def test_skip_if_unchanged_does_not_move_ref(
    ostreefs: Tool, opt_tree: Path, tmp_path: Path
) -> None:
    repo = init_repo(ostreefs, tmp_path / "r", "archive")
    c1 = commit_checksum(
        ostreefs("commit", f"--repo={repo}", "-b", "t", "-s", "a", TS_ARG, opt_tree)
    )
    ref_before = (repo / "refs/heads/t").read_bytes()
    n_before = sorted(p.name for p in (repo / "objects").rglob("*.commit"))
    c2 = commit_checksum(
        ostreefs(
            "commit",
            f"--repo={repo}",
            "-b",
            "t",
            "-s",
            "b",
            "--timestamp=@1800000000",
            "--skip-if-unchanged",
            opt_tree,
        )
    )
    assert c2 == c1
    assert (repo / "refs/heads/t").read_bytes() == ref_before
    assert sorted(p.name for p in (repo / "objects").rglob("*.commit")) == n_before


def test_collection_id_repo(ostree: Tool, ostreefs: Tool, opt_tree: Path, tmp_path: Path) -> None:
    cid = ["--collection-id=org.example.Test"]
    steps = [
        ["commit", "-b", "t", "-s", "s", TS_ARG, "{T}"],
        ["commit", "-b", "u", "-s", "s", TS_ARG, "--no-bindings", "{T}"],
        ["commit", "--orphan", "-s", "s", TS_ARG, "{T}"],
        [
            "commit",
            "-b",
            "v",
            "-s",
            "s",
            TS_ARG,
            "--add-metadata-string=ostree.collection-binding=org.other",
            "{T}",
        ],
    ]
    subst = {"T": str(opt_tree)}
    want = _run_scenario(ostree, tmp_path / "a", "archive", steps, subst, cid)
    got = _run_scenario(ostreefs, tmp_path / "b", "archive", steps, subst, cid)
    assert [g.stdout for g in got] == [w.stdout for w in want]
    ostree("fsck", f"--repo={tmp_path / 'b'}")


# --------------------------------------------------------------------------------------
# Reference vectors (ostree 2022.7's own checksums, from the format reference).

V1_COMMIT = "f27a8d83da375ef3c4323137d4ce876bd9a0d069f0dfb0846692a1a859477cfc"
V1_OBJECTS = {
    "090f06a5926add2d4ff37e6b89e5f76be1939df235a3a398eb8f1144c2814072": "dirtree",
    "446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488": "dirmeta",
    "d2b6eec9065c50e58a96991374bfd16d713ee90acf5acf9822f966fed0d6968b": "dirtree",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d": "dirtree",
    "44f778e59f0a4748d6b0c90a47347212a231c4ad1e8f7ea5c5dffc7749153a6b": "file",
    "89b350d278ff59ba4780bc377b8ebfee8ade6b55c99fab1ec84e133bc6ea52c5": "file",
    "f66efa496a72379413c44593de510dc344beb045294f1a543da87b2b6118db35": "file",
    "e000a47a36168c51fe11770372f3f0f4edacb46eb349d9be2aae027ea0a045f8": "file",
}
V1_CONTENT_CHECKSUM = "1213582923e327b2f86a9e2f8e0dca28441427d1fc5a89e77cad50cb9fa0fc68"
V1_FILEZ_SIZES = {
    "44f778e59f0a4748d6b0c90a47347212a231c4ad1e8f7ea5c5dffc7749153a6b": 42,
    "89b350d278ff59ba4780bc377b8ebfee8ade6b55c99fab1ec84e133bc6ea52c5": 54,
    "e000a47a36168c51fe11770372f3f0f4edacb46eb349d9be2aae027ea0a045f8": 38,
    "f66efa496a72379413c44593de510dc344beb045294f1a543da87b2b6118db35": 43,
}
V2_COMMIT = "ad5bd5b1dcb56cff041be79bb2c13d25ab50093f2446c67874b5361c6f6c29ce"
V2_COMMIT_BUO = "fee90e4a0fbdd4d137e8baea929546c8ae3b8d8b3d0d708e7f037ca9afc39a7e"
V3_COMMIT = "64f7d1edd1c55338e4ef2bac56ea741ed246ecc37672984c0fe6345766691ef0"
V3_COMMIT_BUO = "f3459b96f79ec828f2f24acb45128c359502f4966e442a5acd9e725efa1057fa"
V1_META_COMMIT = "9c92aa5df416a595e703091ce49e1af421fc853a47c79868c6fb509c05b6ac85"
V1_CID_COMMIT = "2f0ad71a8d9915970ecbc9ece728d5ba238be1fb925f75f226928741ecd352ea"


def _vector1(root: Path) -> Path:
    (root / "empty").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "sub" / "a.txt").write_text("a\n")
    os.symlink("hello.txt", root / "link")
    for p, m in [
        (root, 0o755),
        (root / "empty", 0o755),
        (root / "sub", 0o755),
        (root / "hello.txt", 0o644),
        (root / "run.sh", 0o755),
        (root / "sub" / "a.txt", 0o644),
    ]:
        os.chown(p, 0, 0)
        os.chmod(p, m)
    return root


def _vector2(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "priv").write_text("secret\n")
    (root / "empty").write_bytes(b"")
    for p, m in [(root, 0o700), (root / "priv", 0o600), (root / "empty", 0o644)]:
        os.chown(p, 1000, 1000)
        os.chmod(p, m)
    return root


def _vector3(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "f").write_text("x\n")
    os.chmod(root, 0o755)
    os.chmod(root / "f", 0o644)
    os.setxattr(root, "user.d", b"dirval")
    os.setxattr(root / "f", "user.zz", b"2")
    os.setxattr(root / "f", "user.aa", b"1")
    os.setxattr(root / "f", "user.empty", b"")
    return root


def _obj_path(repo: Path, csum: str, kind: str, mode: str) -> Path:
    if kind == "file" and mode.startswith("archive"):
        kind = "filez"
    return repo / "objects" / csum[:2] / f"{csum[2:]}.{kind}"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", ["ostree", "ostreefs"], indirect=True)
def test_vector1(tool: Tool, tmp_path: Path, mode: str) -> None:
    src = _vector1(tmp_path / "tree")
    repo = init_repo(tool, tmp_path / "r", mode)
    out = tool(
        "commit", f"--repo={repo}", "-b", "vec", TS_ARG, "-s", "vector", "--no-bindings", src
    )
    assert commit_checksum(out) == V1_COMMIT
    assert _obj_path(repo, V1_COMMIT, "commit", mode).stat().st_size == 86
    for csum, kind in V1_OBJECTS.items():
        p = _obj_path(repo, csum, kind, mode)
        assert os.path.lexists(p), f"missing {p.name}"
        if mode == "archive":
            if csum in V1_FILEZ_SIZES:
                assert p.stat().st_size == V1_FILEZ_SIZES[csum], p.name
    assert (
        _obj_path(
            repo,
            "090f06a5926add2d4ff37e6b89e5f76be1939df235a3a398eb8f1144c2814072",
            "dirtree",
            mode,
        )
        .stat()
        .st_size
        == 270
    )
    show = tool("show", f"--repo={repo}", "vec").stdout
    assert f"ContentChecksum:  {V1_CONTENT_CHECKSUM}\n" in show
    # Bindings on, metadata order kept.
    out = tool(
        "commit",
        f"--repo={repo}",
        "-b",
        "vec3",
        TS_ARG,
        "-s",
        "vector",
        "--add-metadata-string=zeta=1",
        "--add-metadata-string=alpha=2",
        src,
    )
    assert commit_checksum(out) == V1_META_COMMIT
    # Content checksums of single files.
    assert tool("checksum", src / "hello.txt").stdout.strip() == (
        "44f778e59f0a4748d6b0c90a47347212a231c4ad1e8f7ea5c5dffc7749153a6b"
    )
    assert tool("checksum", src / "link").stdout.strip() == (
        "f66efa496a72379413c44593de510dc344beb045294f1a543da87b2b6118db35"
    )


@pytest.mark.parametrize("tool", ["ostree", "ostreefs"], indirect=True)
def test_vector1_collection_id(tool: Tool, tmp_path: Path) -> None:
    src = _vector1(tmp_path / "tree")
    repo = init_repo(tool, tmp_path / "r", "archive", "--collection-id=org.example.Test")
    out = tool("commit", f"--repo={repo}", "-b", "vec", TS_ARG, "-s", "vector", src)
    assert commit_checksum(out) == V1_CID_COMMIT


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", ["ostree", "ostreefs"], indirect=True)
def test_vector2(tool: Tool, tmp_path: Path, mode: str) -> None:
    src = _vector2(tmp_path / "tree2")
    repo = init_repo(tool, tmp_path / "r", mode)
    out = tool(
        "commit", f"--repo={repo}", "-b", "vec", TS_ARG, "-s", "vector2", "--no-bindings", src
    )
    want = V2_COMMIT_BUO if mode == "bare-user-only" else V2_COMMIT
    assert commit_checksum(out) == want
    if mode == "bare":
        priv = _obj_path(
            repo, "dff8eb5c015cc2c2c356e8f8053133c1d6ffc9fb7f32db8e49f31be1868782f8", "file", mode
        ).stat()
        assert (priv.st_mode & 0o7777, priv.st_uid, priv.st_gid) == (0o600, 1000, 1000)
    if mode == "bare-user":
        p = _obj_path(
            repo, "dff8eb5c015cc2c2c356e8f8053133c1d6ffc9fb7f32db8e49f31be1868782f8", "file", mode
        )
        assert os.getxattr(p, "user.ostreemeta") == bytes.fromhex("000003e8000003e800008180")
    if mode == "archive":
        p = _obj_path(
            repo, "e097767f9f4e3e078b1be7a1c9ead4f4a0b715acb00bc3ed7220e7d4f78b7dc9", "file", mode
        )
        assert p.read_bytes() == bytes.fromhex(
            "0000001a000000000000000000000000000003e8000003e8000081a40000000000190300"
        )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tool", ["ostree", "ostreefs"], indirect=True)
def test_vector3(tool: Tool, tmp_path: Path, mode: str) -> None:
    src = _vector3(tmp_path / "tx")
    repo = init_repo(tool, tmp_path / "r", mode)
    out = tool("commit", f"--repo={repo}", "--orphan", TS_ARG, "-s", "x", "--no-bindings", src)
    want = V3_COMMIT_BUO if mode == "bare-user-only" else V3_COMMIT
    assert commit_checksum(out) == want
    if mode != "bare-user-only":
        dm = _obj_path(
            repo,
            "1c0a6c8417b16f54fc0e904fabc57e07cb10922a998942c9574585b1dd26c9ab",
            "dirmeta",
            mode,
        )
        assert dm.read_bytes().hex() == ("0000000000000000000041ed757365722e640064697276616c070e")
        f = _obj_path(
            repo, "50e5018883167d0f7d1b7c6a7138ec736a5574ec03316e80778ebd0b360aaa9a", "file", mode
        )
        assert os.path.exists(f)
