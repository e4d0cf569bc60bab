"""History browsing: ``ostreefs mount --all`` shows ``refs/<ref>/`` and
``commits/<checksum>/``, each the commit's tree as ``ostreefs ls`` lists it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from mount_helpers import NEEDS_FUSE, cli, force_unmount
from support import TS_ARG, UTF8, Tool, init_repo

pytestmark = NEEDS_FUSE


def _tree(root: Path, text: str, extra: bool) -> Path:
    (root / "a" / "deep").mkdir(parents=True)
    (root / "a" / "b.txt").write_text(text)
    (root / "a" / "deep" / "c").write_bytes(b"c" * 5000)
    os.symlink("a/b.txt", root / "link")
    (root / "private").mkdir(mode=0o700)
    os.chown(root / "private", 1234, 5678)
    if extra:
        (root / "extra").write_text("only in the second commit\n")
    return root


def ls_lines(repo: Path, rev: str) -> list[tuple[str, int, int, int, str]]:
    """``ostreefs ls -R``: (type+mode, uid, gid, size, path); dirs and symlinks size 0."""
    out = []
    for line in cli("ls", f"--repo={repo}", "-R", rev).stdout.splitlines():
        tm, uid, gid, size, path = line.split(None, 4)
        out.append((tm, int(uid), int(gid), int(size), path))
    return sorted(out)


def mount_lines(root: Path) -> list[tuple[str, int, int, int, str]]:
    """The same from a mounted tree."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        names = filenames + [n for n in dirnames if os.path.islink(os.path.join(dirpath, n))]
        for p in [dirpath, *(os.path.join(dirpath, n) for n in names)]:
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            rel = "/" if rel == "." else "/" + rel
            t = "d" if stat.S_ISDIR(st.st_mode) else "l" if stat.S_ISLNK(st.st_mode) else "-"
            if t == "l":
                rel += f" -> {os.readlink(p)}"
            out.append((f"{t}{stat.S_IMODE(st.st_mode):05o}", st.st_uid, st.st_gid,
                        0 if t in "dl" else st.st_size, rel))
    return sorted(out)


def test_mount_all_refs_and_commits(ostree: Tool, tmp_path: Path) -> None:
    repo = init_repo(ostree, tmp_path / "repo", "bare-user")
    t1 = _tree(tmp_path / "t1", "one\n", False)
    t2 = _tree(tmp_path / "t2", "two\n", True)

    def commit(ref: str, tree: Path) -> str:
        ostree("commit", f"--repo={repo}", "-b", ref, "-s", ref, TS_ARG, str(tree), env=UTF8)
        return ostree("rev-parse", f"--repo={repo}", ref).stdout.strip()

    a = commit("os/x86_64/stable", t1)
    b = commit("os/x86_64/stable", t2)  # parent a
    c = commit("plain", t1)
    mp = tmp_path / "mnt"
    mp.mkdir()
    cli("mount", f"--repo={repo}", "--all", mp)
    try:
        assert sorted(os.listdir(mp)) == ["commits", "refs"]
        assert sorted(os.listdir(mp / "refs")) == ["os", "plain"]
        assert os.listdir(mp / "refs" / "os" / "x86_64") == ["stable"]
        stable = mp / "refs" / "os" / "x86_64" / "stable"
        assert (stable / "a" / "b.txt").read_text() == "two\n"
        assert (mp / "refs" / "plain" / "a" / "b.txt").read_text() == "one\n"
        assert sorted(os.listdir(mp / "commits")) == sorted([a, b, c])
        parent = ostree("rev-parse", f"--repo={repo}", "os/x86_64/stable^").stdout.strip()
        assert parent == a
        assert (mp / "commits" / parent / "a" / "b.txt").read_text() == "one\n"
        assert not (mp / "commits" / a / "extra").exists()
        for rev, root in ((b, stable), (a, mp / "commits" / a), (c, mp / "refs" / "plain"),
                          (b, mp / "commits" / b)):
            assert mount_lines(root) == ls_lines(repo, rev)
        assert os.readlink(stable / "link") == "a/b.txt"
        # A commit made after commits/ was listed still resolves by its checksum.
        d = commit("later", t2)
        assert (mp / "commits" / d / "extra").read_text() == "only in the second commit\n"
        with pytest.raises(FileNotFoundError):
            os.stat(mp / "commits" / ("0" * 64))
        with pytest.raises(OSError):
            (mp / "refs" / "new").mkdir()
        cli("umount", mp)
    finally:
        force_unmount(mp)
