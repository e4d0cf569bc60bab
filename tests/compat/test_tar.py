"""Tar import (``commit --tree=tar=``) and ``export``, against ostree 2022.7.

Import: a GNU tar of a generated tree (plain, gzip, zstd, on stdin) commits to the same
root (dirtree + dirmeta) as committing the directory itself, which is what ostree does
too except for one ostree bug: its tar import hashes xattrs unsorted (reverse archive
order), so files with two or more xattrs get checksums its own fsck rejects. Without
xattrs, and for crafted tars with at most one xattr per entry, ostree is the oracle.

Export: ostree writes GNU tars, which carry no xattrs; ours is PAX with SCHILY.xattr
records. Both list the same entries (names, order, types, modes, owners, mtimes, link
targets, sizes) and unpack to the same tree; ours also restores the xattrs.

Safety: ``..`` in names or hard link targets, writing through a symlink, and hard links
out of the tree are refused with a one-line error, and nothing is committed (ostree
refuses some of them, crashes on others). A leading ``/`` is stripped, as ostree does.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from support import (
    TS,
    TS_ARG,
    UTF8,
    Tool,
    assert_clean_failure,
    commit_checksum,
    init_repo,
)
from treegen import diff_snapshots, snapshot

GNU_TAR = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner"]


# ----------------------------------------------------------------------------- helpers




def _gnu_tar(src: Path, dest: Path, compress: str = "") -> Path:
    plain = dest.with_suffix(".tar")
    if not plain.exists():
        subprocess.run([*GNU_TAR, "-C", str(src), "-cf", str(plain), "."], check=True)
    if compress == "gz":
        out = plain.with_suffix(".tar.gz")
        subprocess.run(f"gzip -c '{plain}' > '{out}'", shell=True, check=True)
        return out
    if compress == "zst":
        out = plain.with_suffix(".tar.zst")
        subprocess.run(["zstd", "-q", "-f", "-o", str(out), str(plain)], check=True)
        return out
    return plain


def _root(ostree: Tool, repo: Path, ref: str) -> tuple[str, str]:
    """(dirtree, dirmeta) of a commit's root, as ostree reads it."""
    fields = ostree("ls", f"--repo={repo}", "-d", "-C", ref, "/").stdout.split()
    return fields[4], fields[5]


def _commit(tool: Tool, repo: Path, ref: str, *args: str | os.PathLike[str],
            input: bytes | None = None) -> str:
    # libarchive converts names to the locale's charset: under LC_ALL=C ostree refuses
    # to import non-ASCII names, and exports them as empty names.
    if input is None:
        return commit_checksum(tool("commit", f"--repo={repo}", "-b", ref, TS_ARG, *args,
                                    env=UTF8))
    proc = tool("commit", f"--repo={repo}", "-b", ref, TS_ARG, *args, input=input,
                text=False, env=UTF8)
    out = proc.stdout.decode().strip()
    assert len(out) == 64, proc
    return out


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", mode: int = 0o644,
            uid: int = 0, gid: int = 0, link: str = "",
            xattrs: dict[str, bytes] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.linkname = link
    ti.mtime = 1000
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
    if xattrs:
        ti.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                          for k, v in xattrs.items()}
    return ti, data


def _write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return path


D, S, L = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
ROOT = _member("./", D, mode=0o755)


def _no_commit_made(repo: Path) -> None:
    heads = repo / "refs" / "heads"
    assert not any(heads.rglob("*")), list(heads.rglob("*"))
    commits = [p for p in (repo / "objects").rglob("*.commit")]
    assert not commits, commits


# ------------------------------------------------------------------ import: generated trees


@pytest.mark.parametrize("compress", ["", "gz", "zst"])
@pytest.mark.parametrize("mode,seed,size", [("bare", 1, "small"), ("archive", 3, "medium")])
def test_tar_import_equals_directory_commit(
    ostree: Tool, ostreefs: Tool, trees: Callable[[int, str], Path], tmp_path: Path,
    mode: str, seed: int, size: str, compress: str,
) -> None:
    src = trees(seed, size)
    tar = _gnu_tar(src, tmp_path / "t", compress)
    repo = init_repo(ostreefs, tmp_path / "repo", mode)
    _commit(ostree, repo, "dir", src)
    _commit(ostreefs, repo, "tar", f"--tree=tar={tar}")
    assert _root(ostree, repo, "tar") == _root(ostree, repo, "dir")
    ostree("fsck", f"--repo={repo}")
    # ostree checks the commit out as the source tree.
    ostree("checkout", f"--repo={repo}", "tar", tmp_path / "co")
    want, got = snapshot(src), snapshot(tmp_path / "co")
    assert got == want, diff_snapshots(want, got)


def test_tar_import_stdin_and_mixed_sources(
    ostree: Tool, ostreefs: Tool, trees: Callable[[int, str], Path], tmp_path: Path,
) -> None:
    src = trees(1, "small")
    tar = _gnu_tar(src, tmp_path / "t", "zst")
    repo = init_repo(ostreefs, tmp_path / "repo", "bare")
    _commit(ostree, repo, "dir", src)
    _commit(ostreefs, repo, "stdin", "--tree=tar=-", input=tar.read_bytes())
    assert _root(ostree, repo, "stdin") == _root(ostree, repo, "dir")
    # tar over a directory over a ref: later sources overlay earlier ones.
    extra = tmp_path / "extra"
    (extra / "sub").mkdir(parents=True)
    (extra / "sub" / "x").write_bytes(b"from dir\n")
    over = _write_tar(tmp_path / "over.tar", [
        ROOT, _member("sub", D, mode=0o700, uid=7), _member("sub/x", data=b"from tar\n"),
        _member("plain", data=b"replaced\n", mode=0o600)])
    args = ["--tree=ref=dir", f"--tree=dir={extra}", f"--tree=tar={over}"]
    _commit(ostree, repo, "mixed-ostree", *args)
    _commit(ostreefs, repo, "mixed-ostreefs", *args)
    assert _root(ostree, repo, "mixed-ostreefs") == _root(ostree, repo, "mixed-ostree")


@pytest.mark.parametrize("mode,extra", [
    ("bare", ["--no-xattrs"]),
    # ostree's tar import keeps xattrs under --canonical-permissions (its directory
    # commit drops them, as ostreefs does for both).
    ("bare", ["--canonical-permissions", "--no-xattrs"]),
    ("bare", ["--owner-uid=42", "--owner-gid=43", "--no-xattrs"]),
    ("bare-user-only", []),
])
def test_tar_import_matches_ostree_without_xattrs(
    ostree: Tool, ostreefs: Tool, trees: Callable[[int, str], Path], tmp_path: Path,
    mode: str, extra: list[str],
) -> None:
    """Where ostree's xattr ordering bug plays no part, its tar import is the oracle."""
    tar = _gnu_tar(trees(1, "small"), tmp_path / "t")
    repo = init_repo(ostreefs, tmp_path / "repo", mode)
    _commit(ostree, repo, "o", *extra, f"--tree=tar={tar}")
    _commit(ostreefs, repo, "fs", *extra, f"--tree=tar={tar}")
    assert _root(ostree, repo, "fs") == _root(ostree, repo, "o")


# ------------------------------------------------------------------ import: crafted tars

CRAFTED: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {
    # Root, dirs, files, one xattr each, setuid/sticky, foreign owners.
    "basic": [
        _member("./", D, mode=0o750, uid=3, xattrs={"user.root": b"r"}),
        _member("./d", D, mode=0o1777, xattrs={"user.d": b"\xff\x00"}),
        _member("./d/f", data=b"hello\n", mode=0o4755, uid=5, gid=6,
                xattrs={"user.f": b"v"}),
        _member("./d/empty", data=b""),
        _member("./s", S, mode=0o777, link="/etc/passwd"),
        _member("./rel", S, mode=0o777, link="../../outside/is/fine/for/symlinks"),
    ],
    # A leading '/' is stripped; './', '//' and '.' components are dropped.
    "normalise": [
        _member("/", D, mode=0o755), _member("/abs", data=b"x"),
        _member("a", D), _member("a//./b", data=b"y"),
    ],
    # Hard links share the target's object, even when listed before it.
    "hardlinks": [
        ROOT, _member("h", L, link="d/f", mode=0o777, uid=9),
        _member("d", D), _member("d/f", data=b"linked", mode=0o600, uid=7),
        _member("hs", L, link="s"), _member("s", S, mode=0o777, link="t"),
        _member("abs", L, link="/d/f"),
    ],
    # Later members win; a directory member again only changes its metadata.
    "overrides": [
        ROOT, _member("f", data=b"one"), _member("f", data=b"two", mode=0o640),
        _member("d", D, mode=0o700), _member("d/x", data=b"x"),
        _member("d", D, mode=0o755, uid=4),
    ],
    # Missing parents, with --tar-autocreate-parents: 0755 owned by the member's owner,
    # and every directory from the root down reset the same way (ostree's behaviour).
    "autocreate": [
        _member("./", D, mode=0o700, uid=1),
        _member("z", data=b"z", uid=5, gid=6),
        _member("a/b/c", data=b"c", uid=5, gid=6),
        _member("a/b/d/e", data=b"e", uid=8, gid=9),
        _member("q/r", D, mode=0o711, uid=2),
    ],
    # libarchive's spelling of an xattr record (base64 value, URL-encoded name).
    "libarchive-xattr": [ROOT, _member("f", data=b"x")],
    # Without any root entry: an error, unless parents are autocreated.
    "no-root": [_member("top", D, mode=0o700, uid=5), _member("top/f", data=b"f")],
}


CRAFTED["libarchive-xattr"][1][0].pax_headers = {"LIBARCHIVE.xattr.user.q%3D": "MQ"}


@pytest.mark.parametrize("autocreate", [False, True], ids=["plain", "autocreate"])
@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_tar_like_ostree(
    ostree: Tool, ostreefs: Tool, tmp_path: Path, name: str, autocreate: bool,
) -> None:
    tar = _write_tar(tmp_path / f"{name}.tar", CRAFTED[name])
    flags = ["--tar-autocreate-parents"] if autocreate else []
    repo = init_repo(ostreefs, tmp_path / "repo", "bare")
    want = ostree("commit", f"--repo={repo}", "-b", "o", TS_ARG, *flags, f"--tree=tar={tar}",
                  check=False)
    got = ostreefs("commit", f"--repo={repo}", "-b", "fs", TS_ARG, *flags, f"--tree=tar={tar}",
                   check=False)
    if want.returncode != 0:
        assert_clean_failure(got)
        return
    assert got.returncode == 0, got.stderr
    assert _root(ostree, repo, "fs") == _root(ostree, repo, "o")
    listing = ostree("ls", f"--repo={repo}", "-R", "-X", "fs").stdout
    ostree("fsck", f"--repo={repo}")
    if name == "normalise":
        assert " /abs\n" in listing and " /a/b\n" in listing, listing
    if name == "libarchive-xattr":
        assert "(b'user.q=', [byte 0x31])" in listing, listing


def test_tar_import_errors_are_clean(ostreefs: Tool, tmp_path: Path) -> None:
    repo = init_repo(ostreefs, tmp_path / "repo", "bare")
    cases = {
        "fifo": [ROOT, _member("p", tarfile.FIFOTYPE)],
        "file-over-dir": [ROOT, _member("d", D), _member("d", data=b"x")],
        "dir-over-file": [ROOT, _member("d", data=b"x"), _member("d", D)],
        "missing-parent": [ROOT, _member("a/b", data=b"x")],
        "hardlink-missing": [ROOT, _member("h", L, link="nothere")],
        "hardlink-to-dir": [ROOT, _member("d", D), _member("h", L, link="d")],
    }
    for name, members in cases.items():
        tar = _write_tar(tmp_path / f"{name}.tar", members)
        assert_clean_failure(ostreefs("commit", f"--repo={repo}", "-b", "x", TS_ARG,
                                      f"--tree=tar={tar}", check=False))
    (tmp_path / "garbage.tar").write_bytes(b"this is not a tar archive\n" * 100)
    (tmp_path / "trunc.tar").write_bytes(
        _write_tar(tmp_path / "ok.tar", [ROOT, _member("f", data=b"x" * 5000)])
        .read_bytes()[:2048])
    (tmp_path / "bad.tar.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    for bad in ("garbage.tar", "trunc.tar", "bad.tar.zst", "missing.tar"):
        assert_clean_failure(ostreefs("commit", f"--repo={repo}", "-b", "x", TS_ARG,
                                      f"--tree=tar={tmp_path / bad}", check=False))
    _no_commit_made(repo)


# ----------------------------------------------------------------------- import: safety

HOSTILE = {
    "dotdot": [ROOT, _member("../x", data=b"escaped")],
    "dotdot-inside": [ROOT, _member("a", D), _member("a/../../x", data=b"escaped")],
    "symlink-then-write-through": [ROOT, _member("evil", S, mode=0o777, link="/etc"),
                                   _member("evil/passwd", data=b"root::0:0::/:/bin/sh\n")],
    "symlink-then-dir-through": [ROOT, _member("evil", S, mode=0o777, link="/etc"),
                                 _member("evil/cron.d", D)],
    "hardlink-outside": [ROOT, _member("h", L, link="../outside")],
    "hardlink-through-symlink": [ROOT, _member("evil", S, mode=0o777, link="/etc"),
                                 _member("h", L, link="evil/passwd")],
}


@pytest.mark.parametrize("autocreate", [False, True], ids=["plain", "autocreate"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_tar_refused(ostreefs: Tool, tmp_path: Path, name: str,
                             autocreate: bool) -> None:
    tar = _write_tar(tmp_path / "evil.tar", HOSTILE[name])
    repo = init_repo(ostreefs, tmp_path / "repo", "bare")
    flags = ["--tar-autocreate-parents"] if autocreate else []
    proc = ostreefs("commit", f"--repo={repo}", "-b", "x", TS_ARG, *flags,
                    f"--tree=tar={tar}", check=False)
    assert_clean_failure(proc)
    _no_commit_made(repo)
    assert not (tmp_path / "x").exists() and not (tmp_path / "outside").exists()


# ------------------------------------------------------------------------------- export


def _listing(data: bytes) -> list[tuple[object, ...]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as t:
        return [(m.name, m.type, m.mode, m.uid, m.gid, m.mtime, m.linkname, m.size)
                for m in t]


def _unpack(data: bytes, dest: Path) -> Path:
    dest.mkdir()
    subprocess.run([*GNU_TAR, "-xpf", "-", "-C", str(dest)], input=data, check=True,
                   capture_output=True)
    return dest


@pytest.mark.parametrize("mode", ["bare", "archive"])
def test_export_like_ostree(ostree: Tool, ostreefs: Tool, trees: Callable[[int, str], Path],
                            tmp_path: Path, mode: str) -> None:
    src = trees(3, "medium") if mode == "archive" else trees(1, "small")
    repo = init_repo(ostree, tmp_path / "repo", mode)
    _commit(ostree, repo, "t", src)
    want = ostree("export", f"--repo={repo}", "t", text=False, env=UTF8).stdout
    got = ostreefs("export", f"--repo={repo}", "t", text=False).stdout
    assert _listing(got) == _listing(want)
    assert {m[5] for m in _listing(got)} == {TS}
    a, b = _unpack(want, tmp_path / "a"), _unpack(got, tmp_path / "b")
    sa, sb = snapshot(a, xattrs=False), snapshot(b, xattrs=False)
    assert sa == sb, diff_snapshots(sa, sb)
    # ostree's GNU-format export drops xattrs; ours keeps them: the source tree exactly.
    want_full, got_full = snapshot(src), snapshot(b)
    assert got_full == want_full, diff_snapshots(want_full, got_full)
    # And the round trip through a tar commits the same root.
    out = tmp_path / "out.tar"
    ostreefs("export", f"--repo={repo}", "t", f"--output={out}")
    assert out.read_bytes() == got
    _commit(ostreefs, repo, "again", f"--tree=tar={out}")
    assert _root(ostree, repo, "again") == _root(ostree, repo, "t")


def test_export_options(ostree: Tool, ostreefs: Tool, trees: Callable[[int, str], Path],
                        tmp_path: Path) -> None:
    src = trees(1, "small")
    repo = init_repo(ostree, tmp_path / "repo", "bare")
    _commit(ostree, repo, "t", src)
    sub = next(p.name for p in sorted(src.iterdir()) if p.is_dir() and not p.is_symlink())
    for opts in ([f"--subpath=/{sub}"], ["--prefix=some/dir/"], ["--no-xattrs"],
                 [f"--subpath={sub}", "--prefix=p/"]):
        want = ostree("export", f"--repo={repo}", "t", *opts, text=False, env=UTF8).stdout
        got = ostreefs("export", f"--repo={repo}", "t", *opts, text=False).stdout
        assert _listing(got) == _listing(want), opts
    nox = ostreefs("export", f"--repo={repo}", "t", "--no-xattrs", text=False).stdout
    with tarfile.open(fileobj=io.BytesIO(nox), mode="r|") as t:
        assert not any(k.startswith("SCHILY.xattr.") for m in t for k in m.pax_headers)
    # Errors are clean and leave no output file behind.
    for opts in (["--subpath=/nope"], ["--prefix=../up"], ["--subpath=/level 00/nope"]):
        out = tmp_path / "x.tar"
        assert_clean_failure(ostreefs("export", f"--repo={repo}", "t", *opts,
                                      f"--output={out}", check=False))
        assert not out.exists()
    assert_clean_failure(ostreefs("export", f"--repo={repo}", "nosuchref", check=False))
