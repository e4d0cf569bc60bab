"""History and inspection commands: ostreefs prints what ostree prints.

A branch with three commits is built by ostree and, separately, by ostreefs.  Each
read-only command then runs through both tools against the same repository and the exact
stdout and exit status are compared.  Mutating commands run on two copies of the
repository, one per tool, and the resulting repositories are compared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from support import (
    UTF8,
    Tool,
    assert_clean_failure,
    commit_checksum,
    format_result,
    init_repo,
    repo_snapshot,
    rev_parse,
)

B = "main"


def _write(p: Path, data: str, mode: int = 0o644) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(data)
    os.chmod(p, mode)


def _build_versions(base: Path) -> list[Path]:
    """Three versions of a tree, each a copy of the previous with edits."""
    v1 = base / "v1"
    _write(v1 / "a", "a\n")
    _write(v1 / "sub" / "b", "b\n")
    _write(v1 / "sub" / "keep", "kept\n")
    _write(v1 / "space dir" / "ünï file", "unicode\n")
    _write(v1 / "exe", "#!/bin/sh\n", 0o755)
    (v1 / "emptydir").mkdir()
    os.symlink("a", v1 / "lnk")
    os.symlink("/dangling/abs", v1 / "abs")

    v2 = base / "v2"
    shutil.copytree(v1, v2, symlinks=True)
    _write(v2 / "a", "a changed\n")
    (v2 / "sub" / "b").unlink()
    _write(v2 / "sub" / "c", "new c\n")
    os.chmod(v2 / "exe", 0o700)  # mode-only change
    (v2 / "lnk").unlink()
    os.symlink("sub/keep", v2 / "lnk")  # retargeted symlink

    v3 = base / "v3"
    shutil.copytree(v2, v3, symlinks=True)
    _write(v3 / "other" / "x", "x\n")
    shutil.rmtree(v3 / "emptydir")
    _write(v3 / "space dir" / "ünï file", "unicode 2\n")
    return [v1, v2, v3]


COMMITS = [
    ["-s", "first", "--timestamp=@1700000000"],
    [
        "-s",
        "second",
        "-m",
        "body line1\nline2",
        "--timestamp=@1700000100",
        "--add-metadata-string=version=1.2",
    ],
    ["-s", "third", "--timestamp=@1700000200"],
]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    old = os.umask(0o022)
    try:
        return _build_versions(tmp_path_factory.mktemp("hist-src"))
    finally:
        os.umask(old)


@pytest.fixture(scope="module", params=["ostree", "ostreefs"])
def hist(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, versions: list[Path]
) -> tuple[Path, list[str]]:
    """(repo, [c1, c2, c3]): three commits on ``main`` made by the parametrized tool."""
    maker: Tool = request.getfixturevalue(request.param)
    repo = tmp_path_factory.mktemp(f"hist-{request.param}") / "repo"
    init_repo(maker, repo, "archive")
    commits = []
    for v, extra in zip(versions, COMMITS, strict=True):
        commits.append(commit_checksum(maker("commit", f"--repo={repo}", "-b", B, *extra, v)))
    return repo, commits


def _same(
    ostree: Tool, ostreefs: Tool, repo: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    want = ostree(args[0], f"--repo={repo}", *args[1:], check=False, cwd=cwd, env=UTF8)
    got = ostreefs(args[0], f"--repo={repo}", *args[1:], check=False, cwd=cwd, env=UTF8)
    assert (got.returncode == 0) == (want.returncode == 0), (
        f"ostree exit {want.returncode}, stderr {want.stderr!r}\n" + format_result(got.args, got)
    )
    if want.returncode == 0:
        assert got.stdout == want.stdout, f"ostree printed:\n{want.stdout}\n" + format_result(
            got.args, got
        )
    else:
        assert_clean_failure(got)
    return want


def test_history_checksums_agree(
    ostree: Tool, hist: tuple[Path, list[str]], versions: list[Path], tmp_path: Path
) -> None:
    """Both makers produce the same commits (the two fixture repos are interchangeable)."""
    repo, commits = hist
    ref = init_repo(ostree, tmp_path / "ref", "archive")
    expected = [
        commit_checksum(ostree("commit", f"--repo={ref}", "-b", B, *extra, v))
        for v, extra in zip(versions, COMMITS, strict=True)
    ]
    assert commits == expected
    assert rev_parse(ostree, repo, B) == commits[2]
    assert rev_parse(ostree, repo, B + "^") == commits[1]
    ostree("fsck", f"--repo={repo}")


READ_ONLY = [
    ["log", B],
    ["log", B + "^"],
    ["show", B],
    ["show", B + "^"],
    ["show", B + "^^"],
    ["rev-parse", B],
    ["rev-parse", B + "^"],
    ["rev-parse", B + "^^"],
    ["refs"],
    ["refs", "--list"],
    ["ls", B],
    ["ls", "-R", B],
    ["ls", "-R", B + "^^"],
    ["ls", "-C", B, "/sub"],
    ["ls", "-R", "-C", B],
    ["ls", "-d", B, "/sub"],
    ["ls", B, "/sub", "/a", "/lnk"],
    ["ls", "-R", B, "/space dir"],
    ["cat", B, "/a"],
    ["cat", B + "^^", "/sub/b"],
    ["cat", B, "/space dir/ünï file"],
    ["cat", B, "/a", "/sub/c"],
    ["diff", B + "^", B],
    ["diff", B + "^^", B],
    ["diff", B, B + "^^"],
    ["diff", B, B],
    ["config", "get", "core.mode"],
    ["config", "get", "core.repo_version"],
    ["config", "--group=core", "get", "mode"],
]

ERRORS = [
    ["rev-parse", "nosuch"],
    ["rev-parse", B + "^^^"],
    ["rev-parse", "bad ref"],
    ["rev-parse", "0000000000"],
    ["log", "nosuch"],
    ["show", "nosuch"],
    ["ls", "nosuch"],
    ["ls", B, "/nosuch"],
    ["cat", B, "/nosuch"],
    ["cat", B, "/sub"],
    ["diff", "nosuch", B],
    ["config", "get", "core.nosuch"],
    ["reset", "nosuch", B],
    ["reset", B, "nosuch"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=lambda a: " ".join(a))
def test_read_only(
    ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], args: list[str]
) -> None:
    repo, _ = hist
    want = _same(ostree, ostreefs, repo, *args)
    assert want.returncode == 0, format_result(want.args, want)


@pytest.mark.parametrize("args", ERRORS, ids=lambda a: " ".join(a))
def test_errors(
    ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], args: list[str]
) -> None:
    repo, _ = hist
    want = _same(ostree, ostreefs, repo, *args)
    assert want.returncode != 0


def test_rev_parse_prefix(ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]]) -> None:
    repo, commits = hist
    for c, n in ((commits[0], 64), (commits[1], 12), (commits[2], 6)):
        _same(ostree, ostreefs, repo, "rev-parse", c[:n])
        assert rev_parse(ostreefs, repo, c[:n]) == c
    # The shortest prefix that is unique among the three commits.
    c = commits[0]
    n = next(n for n in range(1, 65) if sum(x.startswith(c[:n]) for x in commits) == 1)
    _same(ostree, ostreefs, repo, "rev-parse", c[:n])


def test_checksum_files_and_symlinks(ostree: Tool, ostreefs: Tool, versions: list[Path]) -> None:
    for p in ["a", "exe", "lnk", "abs", "sub/keep", "space dir/ünï file"]:
        want = ostree("checksum", versions[0] / p)
        got = ostreefs("checksum", versions[0] / p)
        assert got.stdout == want.stdout, p
        assert len(want.stdout.strip()) == 64


def _diff_key(out: str) -> tuple[list[str], list[str]]:
    """ostree lists a directory's entries in readdir order; keep the M/D/A grouping."""
    lines = out.splitlines()
    groups = []
    for ln in lines:
        if not groups or groups[-1] != ln[:1]:
            groups.append(ln[:1])
    return groups, sorted(lines)


def test_diff_against_directory(
    ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], versions: list[Path], tmp_path: Path
) -> None:
    repo, _ = hist
    work = tmp_path / "work"
    shutil.copytree(versions[2], work / "dir", symlinks=True)
    _write(work / "dir" / "a", "edited in the directory\n")
    (work / "dir" / "lnk").unlink()
    _write(work / "dir" / "added", "added\n")
    _write(work / "dir" / "sub" / "added2", "added\n")
    for args in (["diff", B, "./dir"], ["diff", B + "^^", "./dir"], ["diff", "./dir", B]):
        want = ostree(args[0], f"--repo={repo}", *args[1:], cwd=work, env=UTF8)
        got = ostreefs(args[0], f"--repo={repo}", *args[1:], cwd=work, env=UTF8)
        assert want.stdout.strip()
        assert _diff_key(got.stdout) == _diff_key(want.stdout), (
            f"ostree printed:\n{want.stdout}\n" + format_result(got.args, got)
        )


# --------------------------------------------------------------------------------------
# Mutating commands: each tool works on its own copy; the results must be identical.


def _copies(repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "for-ostree", tmp_path / "for-ostreefs"
    tmp_path.mkdir(parents=True, exist_ok=True)
    for d in (a, b):
        subprocess.run(["cp", "-a", str(repo), str(d)], check=True)
    return a, b


def _mutate(
    ostree: Tool,
    ostreefs: Tool,
    hist: tuple[Path, list[str]],
    tmp_path: Path,
    steps: list[list[str]],
) -> tuple[Path, Path]:
    repo, _ = hist
    a, b = _copies(repo, tmp_path)
    for step in steps:
        want = ostree(step[0], f"--repo={a}", *step[1:], check=False)
        got = ostreefs(step[0], f"--repo={b}", *step[1:], check=False)
        assert got.returncode == want.returncode or (got.returncode and want.returncode), (
            f"step {step}: ostree exit {want.returncode} {want.stderr!r}\n"
            + format_result(got.args, got)
        )
        if want.returncode == 0:
            assert got.stdout == want.stdout, f"step {step}\n" + format_result(got.args, got)
        else:
            assert_clean_failure(got)
    return a, b


def _refs(tool: Tool, repo: Path) -> list[str]:
    # ostree prints refs in hash-table order; compare them as sets.
    return sorted(tool("refs", f"--repo={repo}").stdout.splitlines())


def _ref_files(repo: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted((repo / "refs").rglob("*")):
        rel = str(p.relative_to(repo))
        out[rel] = os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


def test_refs_create_and_delete(
    ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    a, b = _mutate(
        ostree,
        ostreefs,
        hist,
        tmp_path,
        [
            ["refs", "--create=x", B],
            ["refs", "--create=nested/y", B + "^"],
            ["refs", "--create=x", B + "^"],  # exists: error without --force
            ["refs", "--create=x", "--force", B + "^^"],
            ["rev-parse", "x"],
            ["refs", "nested"],
            ["refs", "--list", "nested"],
        ],
    )
    assert _refs(ostreefs, b) == _refs(ostree, a) == sorted([B, "nested/y", "x"])
    assert _ref_files(b) == _ref_files(a)
    a2, b2 = a, b
    for tool, repo in ((ostree, a2), (ostreefs, b2)):
        tool("refs", f"--repo={repo}", "--delete", "x")
        tool("refs", f"--repo={repo}", "--delete", "nested/y")
    assert _refs(ostreefs, b2) == _refs(ostree, a2) == [B]
    # Deleting leaves the emptied parent directories, like ostree.
    assert _ref_files(b2) == _ref_files(a2)
    # Cross-read: each tool sees the other's refs.
    assert _refs(ostree, b2) == _refs(ostreefs, a2) == [B]


def test_refs_delete_missing_is_ok(
    ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    a, b = _mutate(ostree, ostreefs, hist, tmp_path, [["refs", "--delete", "nosuch"]])
    assert _ref_files(b) == _ref_files(a)
    assert repo_snapshot(b / "refs") == repo_snapshot(hist[0] / "refs")


def test_config_set_get_unset(
    ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    a, b = _mutate(
        ostree,
        ostreefs,
        hist,
        tmp_path,
        [
            ["config", "set", "core.foo", "bar"],
            ["config", "get", "core.foo"],
            ["config", "set", "core.foo", "baz qux"],
            ["config", "set", "--group=extra", "key", "v"],
            ["config", "get", "core.mode"],
        ],
    )
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    assert b"foo=baz qux\n" in (a / "config").read_bytes()
    a, b = _mutate(
        ostree,
        ostreefs,
        (a, []),
        tmp_path / "again",
        [
            ["config", "unset", "core.foo"],
            ["config", "get", "core.foo"],
        ],
    )
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    # The repository still works for both tools after config edits.
    assert rev_parse(ostreefs, a, B) == rev_parse(ostree, b, B)


def test_reset(ostree: Tool, ostreefs: Tool, hist: tuple[Path, list[str]], tmp_path: Path) -> None:
    _, commits = hist
    a, b = _mutate(
        ostree,
        ostreefs,
        hist,
        tmp_path,
        [
            ["reset", B, B + "^"],
            ["rev-parse", B],
            ["log", B],
            ["reset", B, commits[2]],
            ["rev-parse", B],
            ["reset", B, commits[0][:10]],
            ["rev-parse", B],
        ],
    )
    assert (b / "refs/heads" / B).read_bytes() == (a / "refs/heads" / B).read_bytes()
    assert (a / "refs/heads" / B).read_text() == commits[0] + "\n"


def test_commit_prefix_wins_over_a_ref_of_that_name(tmp_path, ostree, ostreefs) -> None:
    """ostree takes a hex word as a commit-checksum prefix before a ref of that name."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("1\n")
    repo = tmp_path / "repo"
    ostree("init", f"--repo={repo}", "--mode=archive")
    ostree("commit", f"--repo={repo}", "-b", "b", "--timestamp=@0", str(tree))
    (tree / "f").write_text("2\n")
    first = None
    for ts in range(1, 400):
        c = ostree("commit", f"--repo={repo}", "--orphan", f"--timestamp=@{ts}",
                   str(tree)).stdout.strip()
        if first is None and c.startswith("b"):
            first = c
        elif first is not None and c.startswith("b"):
            second = c
            break
    for tool in (ostree, ostreefs):
        proc = tool("rev-parse", f"--repo={repo}", "b", check=False)
        assert proc.returncode != 0 and "not unique" in proc.stderr
        assert tool("rev-parse", f"--repo={repo}", first[:12]).stdout.strip() == first
        assert tool("rev-parse", f"--repo={repo}", second[:12]).stdout.strip() == second
