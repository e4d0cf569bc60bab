"""Bad input: corrupt objects, hostile dirtrees, missing refs, non-repositories, read-only repos.

Every ostreefs failure must be clean: exit status != 0, no Python traceback, and at most
two lines on stderr (the message plus an optional hint).  Where ostree is a sensible
oracle (fsck), it must fail too.  Note that ostree itself only *prints* hostile names
(``ls -R`` shows an entry named ``..``) or even crashes (truncated commit): ostreefs is
held to the stricter standard.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import (
    TS_ARG,
    Tool,
    assert_clean_failure,
    commit_checksum,
    format_result,
    init_repo,
    repo_snapshot,
)

MODES = ["archive", "bare-user", "bare"]


def _obj(repo: Path, csum: str, ext: str) -> Path:
    return repo / "objects" / csum[:2] / f"{csum[2:]}.{ext}"


def _store(repo: Path, data: bytes, ext: str) -> str:
    csum = hashlib.sha256(data).hexdigest()
    p = _obj(repo, csum, ext)
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(data)
    os.chmod(p, 0o644)
    return csum


def _content_ext(mode: str) -> str:
    return "filez" if mode.startswith("archive") else "file"


def _assert_failure_no_traceback(proc: subprocess.CompletedProcess) -> None:  # type: ignore[type-arg]
    assert proc.returncode != 0, format_result(proc.args, proc)
    assert "Traceback" not in proc.stderr, format_result(proc.args, proc)


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    old = os.umask(0o022)
    try:
        root = tmp_path_factory.mktemp("bad-src") / "tree"
        (root / "cd").mkdir(parents=True)
        (root / "ab").write_text("hi\n")
        (root / "cd" / "x").write_text("x\n")
        (root / "big").write_bytes(bytes(range(256)) * 400)
        os.symlink("ab", root / "lnk")
    finally:
        os.umask(old)
    return root


@pytest.fixture
def made(
    ostree: Tool, src: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> tuple[Path, str, dict[str, str]]:
    """(repo, commit, {path: checksum}) for ``src`` committed by ostree in the param's mode."""
    mode = getattr(request, "param", "archive")
    repo = init_repo(ostree, tmp_path / "repo", mode)
    c = commit_checksum(ostree("commit", f"--repo={repo}", "-b", "t", "-s", "s", TS_ARG, src))
    sums: dict[str, str] = {}
    for line in ostree("ls", f"--repo={repo}", "-R", "-C", "t").stdout.splitlines():
        fields = line.split(" ")
        fields = [f for f in fields if f]
        path = fields[-1] if not line.startswith("l") else fields[-3]
        if line.startswith("d"):
            sums[path + ":tree"], sums[path + ":meta"] = fields[4], fields[5]
        else:
            sums[path] = fields[4]
    return repo, c, sums


# --------------------------------------------------------------------------------------
# Corrupt objects


def _flip(p: Path, where: float = 0.5) -> None:
    data = bytearray(p.read_bytes())
    i = min(len(data) - 1, int(len(data) * where))
    data[i] ^= 0x01
    os.chmod(p, 0o644)
    p.write_bytes(bytes(data))


@pytest.mark.parametrize("made", MODES, indirect=True)
@pytest.mark.parametrize("what", ["content", "big-content", "dirtree", "dirmeta", "commit"])
def test_flipped_byte_fsck_fails(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], what: str
) -> None:
    repo, commit, sums = made
    mode = (repo / "config").read_text().split("mode=")[1].split()[0]
    ostreefs("fsck", f"--repo={repo}")  # clean before
    if what == "content":
        p = _obj(repo, sums["/ab"], _content_ext(mode))
        _flip(p, 0.99)  # last byte: payload (deflate stream for archive)
    elif what == "big-content":
        _flip(_obj(repo, sums["/big"], _content_ext(mode)), 0.7)
    elif what == "dirtree":
        _flip(_obj(repo, sums["/cd:tree"], "dirtree"), 0.1)  # inside the name "x"
    elif what == "dirmeta":
        _flip(_obj(repo, sums["/:meta"], "dirmeta"))
    else:
        _flip(_obj(repo, commit, "commit"), 0.0)
    theirs = ostree("fsck", f"--repo={repo}", check=False)
    assert theirs.returncode != 0, format_result(theirs.args, theirs)
    ours = ostreefs("fsck", f"--repo={repo}", check=False)
    assert_clean_failure(ours)


@pytest.mark.parametrize("made", ["bare-user"], indirect=True)
def test_bare_user_meta_xattr_tampered(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]]
) -> None:
    repo, _, sums = made
    p = _obj(repo, sums["/ab"], "file")
    assert os.getxattr(p, "user.ostreemeta") == bytes.fromhex("0000000000000000000081a4")
    os.setxattr(p, "user.ostreemeta", bytes.fromhex("0000000000000000000081ed"))  # 0755
    assert ostree("fsck", f"--repo={repo}", check=False).returncode != 0
    assert_clean_failure(ostreefs("fsck", f"--repo={repo}", check=False))


@pytest.mark.parametrize("made", ["bare"], indirect=True)
def test_bare_object_mode_tampered(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]]
) -> None:
    repo, _, sums = made
    os.chmod(_obj(repo, sums["/ab"], "file"), 0o755)
    assert ostree("fsck", f"--repo={repo}", check=False).returncode != 0
    assert_clean_failure(ostreefs("fsck", f"--repo={repo}", check=False))


@pytest.mark.parametrize("made", ["archive", "bare-user"], indirect=True)
def test_missing_object(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]]
) -> None:
    repo, _, sums = made
    mode = (repo / "config").read_text().split("mode=")[1].split()[0]
    _obj(repo, sums["/cd/x"], _content_ext(mode)).unlink()
    # ostree prints "Object missing in commits ...", "Marking commit as partial: ..." and
    # "error: Repository corruption encountered" (3 lines), so only no-traceback here.
    _assert_failure_no_traceback(ostreefs("fsck", f"--repo={repo}", check=False))
    assert_clean_failure(ostreefs("cat", f"--repo={repo}", "t", "/cd/x", check=False))
    assert ostree("fsck", f"--repo={repo}", check=False).returncode != 0


@pytest.mark.parametrize("made", ["archive", "bare"], indirect=True)
def test_truncated_dirtree(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]]
) -> None:
    repo, _, sums = made
    p = _obj(repo, sums["/:tree"], "dirtree")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    assert ostree("fsck", f"--repo={repo}", check=False).returncode != 0
    for args in (["ls", "-R", "t"], ["fsck"], ["cat", "t", "/ab"], ["cat", "t", "/cd/x"]):
        proc = ostreefs(args[0], f"--repo={repo}", *args[1:], check=False)
        assert_clean_failure(proc)


@pytest.mark.parametrize("made", ["archive"], indirect=True)
@pytest.mark.parametrize("cut", [0, 10, 80])
def test_truncated_commit(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], cut: int
) -> None:
    repo, commit, _ = made
    p = _obj(repo, commit, "commit")
    p.write_bytes(p.read_bytes()[:cut])
    assert ostree("fsck", f"--repo={repo}", check=False).returncode != 0
    for args in (["log", "t"], ["show", "t"], ["ls", "t"], ["cat", "t", "/ab"], ["fsck"]):
        assert_clean_failure(ostreefs(args[0], f"--repo={repo}", *args[1:], check=False))


@pytest.mark.parametrize("made", ["archive"], indirect=True)
@pytest.mark.parametrize("content", ["garbage\n", "", "0" * 63 + "\n", "A" * 64 + "\n"])
def test_garbage_ref_file(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], content: str
) -> None:
    repo, _, _ = made
    (repo / "refs/heads/bad").write_text(content)
    assert ostree("rev-parse", f"--repo={repo}", "bad", check=False).returncode != 0
    for args in (["rev-parse", "bad"], ["log", "bad"], ["ls", "bad"]):
        assert_clean_failure(ostreefs(args[0], f"--repo={repo}", *args[1:], check=False))


# --------------------------------------------------------------------------------------
# Hostile dirtree entries (".." / "." / names with "/"), crafted by binary-editing
# ostree's own objects: the replacement keeps the name length, so framing stays valid.

HOSTILE = {
    "file-dotdot": (b"ab\0", b"..\0"),
    "file-slash": (b"ab\0", b"a/\0"),
    "file-dot": (b"ab\0", b".\0\0"),
    "dir-dotdot": (b"cd\0", b"..\0"),
    "dir-slash": (b"cd\0", b"/\0\0"),
    "dir-dot": (b"cd\0", b".\0\0"),
}


def _craft(repo: Path, commit: str, root_tree: str, old: bytes, new: bytes) -> str:
    tree = _obj(repo, root_tree, "dirtree").read_bytes()
    assert tree.count(old) == 1
    new_tree = _store(repo, tree.replace(old, new), "dirtree")
    cbytes = _obj(repo, commit, "commit").read_bytes()
    raw = bytes.fromhex(root_tree)
    assert cbytes.count(raw) == 1
    new_commit = _store(repo, cbytes.replace(raw, bytes.fromhex(new_tree)), "commit")
    (repo / "refs/heads/evil").write_text(new_commit + "\n")
    return new_commit


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_dirtree_names(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], kind: str
) -> None:
    repo, commit, sums = made
    old, new = HOSTILE[kind]
    evil = _craft(repo, commit, sums["/:tree"], old, new)
    # The oracle's fsck rejects the tree ("Invalid path uplink filename '..'" etc.).
    theirs = ostree("fsck", f"--repo={repo}", check=False)
    assert theirs.returncode != 0, format_result(theirs.args, theirs)
    outside = repo.parent / "x"
    outside.write_text("outside the repo\n")
    name = "/" + new.rstrip(b"\0").decode()
    for args in (
        ["ls", "-R", "evil"],
        ["ls", "-R", evil],
        ["cat", "evil", "../x"],
        ["cat", "evil", "/../x"],
        ["cat", "evil", name],
        ["cat", "evil", name + "/x"],
        ["fsck"],
    ):
        proc = ostreefs(args[0], f"--repo={repo}", *args[1:], check=False)
        assert_clean_failure(proc)
        assert "outside the repo" not in proc.stdout
    # The good ref is still readable.
    assert ostreefs("cat", f"--repo={repo}", "t", "/ab").stdout == "hi\n"


# --------------------------------------------------------------------------------------
# Refs, repositories that are not repositories


@pytest.mark.parametrize(
    "args",
    [
        ["rev-parse", "nosuch"],
        ["log", "nosuch"],
        ["show", "nosuch"],
        ["ls", "nosuch"],
        ["ls", "-R", "nosuch"],
        ["cat", "nosuch", "/ab"],
        ["cat", "t", "/nosuch"],
        ["diff", "nosuch", "t"],
        ["reset", "t", "nosuch"],
        ["rev-parse", "bad ref"],
        ["rev-parse", "-x"],
        ["refs", "--create=bad ref", "t"],
        ["ls", "t", "/ab/below-a-file"],
    ],
    ids=lambda a: " ".join(a),
)
def test_unknown_or_invalid_refs(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], args: list[str]
) -> None:
    repo, _, _ = made
    before = repo_snapshot(repo)
    assert ostree(args[0], f"--repo={repo}", *args[1:], check=False).returncode != 0
    assert_clean_failure(ostreefs(args[0], f"--repo={repo}", *args[1:], check=False))
    after = repo_snapshot(repo)
    after.pop(".lock", None)
    before.pop(".lock", None)
    assert after == before


def _not_repos(tmp_path: Path, made_repo: Path) -> dict[str, Path]:
    empty = tmp_path / "empty-dir"
    empty.mkdir(parents=True)
    files = tmp_path / "dir-with-files"
    files.mkdir()
    (files / "config").write_text("not an ini file [[[\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    badver = tmp_path / "bad-version"
    shutil.copytree(made_repo, badver, symlinks=True)
    cfg = (badver / "config").read_text()
    (badver / "config").write_text(cfg.replace("repo_version=1", "repo_version=2"))
    badmode = tmp_path / "bad-mode"
    shutil.copytree(made_repo, badmode, symlinks=True)
    (badmode / "config").write_text(cfg.replace("mode=archive-z2", "mode=bogus"))
    noobj = tmp_path / "no-objects"
    shutil.copytree(made_repo, noobj, symlinks=True)
    shutil.rmtree(noobj / "objects")
    return {
        "empty-dir": empty,
        "dir-with-files": files,
        "a-file": a_file,
        "missing": tmp_path / "does-not-exist",
        "bad-version": badver,
        "bad-mode": badmode,
        "no-objects": noobj,
    }


@pytest.mark.parametrize(
    "which",
    ["empty-dir", "dir-with-files", "a-file", "missing", "bad-version", "bad-mode", "no-objects"],
)
def test_repo_is_not_a_repo(
    ostree: Tool,
    ostreefs: Tool,
    made: tuple[Path, str, dict[str, str]],
    tmp_path: Path,
    src: Path,
    which: str,
) -> None:
    repo = _not_repos(tmp_path / "nr", made[0])[which]
    existed = repo.exists()
    before = repo_snapshot(repo) if repo.is_dir() else None
    for args in (
        ["refs"],
        ["log", "t"],
        ["fsck"],
        ["commit", "-b", "x", "-s", "s", TS_ARG, str(src)],
    ):
        theirs = ostree(args[0], f"--repo={repo}", *args[1:], check=False)
        assert theirs.returncode != 0, format_result(theirs.args, theirs)
        assert_clean_failure(ostreefs(args[0], f"--repo={repo}", *args[1:], check=False))
    assert repo.exists() == existed
    if before is not None:
        assert repo_snapshot(repo) == before


def test_commit_bad_arguments(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], src: Path, tmp_path: Path
) -> None:
    repo, _, _ = made
    before = repo_snapshot(repo)
    for args in (
        ["-b", "x", "-s", "s", TS_ARG, str(tmp_path / "no-such-dir")],
        ["-b", "bad ref", "-s", "s", TS_ARG, str(src)],
        ["-b", "x", "-s", "s", "--timestamp=not a date", str(src)],
        ["-b", "x", "-s", "s", TS_ARG, "--add-metadata=k=not gvariant", str(src)],
        ["-b", "x", "-s", "s", TS_ARG, "--add-metadata-string=novalue", str(src)],
        ["-b", "x", "-s", "s", TS_ARG, "--keep-metadata=k", str(src)],
    ):
        theirs = ostree("commit", f"--repo={repo}", *args, check=False)
        assert theirs.returncode != 0, format_result(theirs.args, theirs)
        assert_clean_failure(ostreefs("commit", f"--repo={repo}", *args, check=False))
    after = repo_snapshot(repo)
    # ostree may leave its lock file and empty tmp/staging dirs; refs must not change.
    assert {k: v for k, v in after.items() if k.startswith("refs")} == {
        k: v for k, v in before.items() if k.startswith("refs")
    }


# --------------------------------------------------------------------------------------
# Read-only repository


@contextlib.contextmanager
def _read_only_view(repo: Path, where: Path) -> Iterator[Path]:
    """A read-only bind mount of ``repo`` (root ignores permission bits)."""
    where.mkdir()
    subprocess.run(["mount", "--bind", str(repo), str(where)], check=True, capture_output=True)
    try:
        subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(where)], check=True, capture_output=True
        )
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True, capture_output=True)


@pytest.mark.parametrize("made", ["archive", "bare-user"], indirect=True)
def test_commit_to_read_only_repo(
    ostree: Tool, ostreefs: Tool, made: tuple[Path, str, dict[str, str]], src: Path, tmp_path: Path
) -> None:
    repo, commit, _ = made
    before = repo_snapshot(repo)
    with _read_only_view(repo, tmp_path / "ro") as ro:
        for args in (
            ["commit", "-b", "t", "-s", "s2", TS_ARG, str(src.parent)],
            ["refs", "--create=new", "t"],
            ["reset", "t", "t"],
            ["config", "set", "core.foo", "bar"],
        ):
            theirs = ostree(args[0], f"--repo={ro}", *args[1:], check=False)
            ours = ostreefs(args[0], f"--repo={ro}", *args[1:], check=False)
            if args[0] == "commit":
                assert theirs.returncode != 0, format_result(theirs.args, theirs)
            if theirs.returncode != 0:
                assert_clean_failure(ours)
        # Reading still works.
        assert ostreefs("rev-parse", f"--repo={ro}", "t").stdout.strip() == commit
        assert ostreefs("cat", f"--repo={ro}", "t", "/ab").stdout == "hi\n"
    assert repo_snapshot(repo) == before
