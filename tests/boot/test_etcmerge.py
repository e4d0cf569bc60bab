"""The /etc three-way merge and ``config-diff``, judged by the real ostree 2022.7.

One sysroot is built and upgraded with ``ostree admin deploy``; the same inputs (the
old deployment and a checkout of the new commit whose ``etc`` is a copy of its
``usr/etc``) then go through :func:`merge_etc`, and the two merged /etc trees must be
equal in names, types, modes, owners, contents, symlink targets and xattrs.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Tool

from ostreefs.boot.etcmerge import (
    ConfigDiffError,
    EtcMergeError,
    NewlyDirectory,
    config_diff,
    copy_usr_etc,
    merge_etc,
)

OS = "myos"
REF = "myos/etcmerge"


# ----------------------------------------------------------------------------- helpers

def _os_tree(root: Path, version: int) -> Path:
    mods = root / "usr/lib/modules/6.1.0-test"
    mods.mkdir(parents=True)
    (mods / "vmlinuz").write_bytes(b"KERNEL")
    (mods / "initramfs.img").write_bytes(b"INITRD")
    (root / "usr/lib/os-release").write_text('NAME=MyOS\nID=myos\nPRETTY_NAME="MyOS 1"\n')
    etc = root / "usr/etc"
    for d in ("sub", "dirmode", "gone", "rmdir/x"):
        (etc / d).mkdir(parents=True)
    files = {"app.conf": f"app {version}\n", "hostname": "host\n",
             "passwd": "root:x:0:0\n" if version == 1 else "root:x:0:0:new\n",
             "modeonly": "m\n", "owneronly": "o\n", "xattronly": "x\n", "typechg": "t\n",
             "sub/s.conf": f"s{version}\n", "dirmode/f": "d\n", "gone/g.conf": "g\n",
             "rmdir/x/r": "r\n"}
    if version >= 2:
        files["new.conf"] = "new\n"
    for rel, text in files.items():
        (etc / rel).write_text(text)
    os.symlink("app.conf", etc / "link")
    if version >= 2:
        shutil.rmtree(etc / "gone")
    if version >= 3:  # a locally modified file becomes a directory upstream
        (etc / "app.conf").unlink()
        (etc / "app.conf").mkdir()
        (etc / "app.conf/part.conf").write_text("p\n")
    return root


def _local_changes(etc: Path) -> None:
    (etc / "app.conf").write_text("local\n")
    os.setxattr(etc / "app.conf", "user.a", b"A")
    (etc / "hostname").unlink()
    (etc / "local.conf").write_text("l\n")
    os.chmod(etc / "local.conf", 0o640)
    os.setxattr(etc / "local.conf", "user.l", b"L")
    (etc / "localdir/deep").mkdir(parents=True)
    (etc / "localdir/f").write_text("f\n")
    (etc / "localdir/deep/g").write_text("g\n")
    os.chmod(etc / "localdir", 0o750)
    os.chown(etc / "localdir", 3, 4)
    os.setxattr(etc / "localdir", "user.ld", b"LD")
    os.chmod(etc / "modeonly", 0o600)
    os.chown(etc / "owneronly", 1234, 5678)
    os.setxattr(etc / "xattronly", "user.test", b"hello")
    (etc / "link").unlink()
    os.symlink("passwd", etc / "link")
    os.chmod(etc / "dirmode", 0o700)
    os.chmod(etc / "sub", 0o700)
    os.chown(etc / "sub", 7, 8)
    os.setxattr(etc / "sub", "user.d", b"D")
    (etc / "sub/local.conf").write_text("sl\n")
    (etc / "gone/g.conf").write_text("gl\n")
    os.chmod(etc / "gone", 0o711)
    (etc / "typechg").unlink()
    (etc / "typechg").mkdir()
    (etc / "typechg/in").write_text("in\n")
    shutil.rmtree(etc / "rmdir")
    os.symlink("/etc/shadow", etc / "abslink")
    os.mkfifo(etc / "fifo")


def _unfreeze(root: Path) -> None:
    deploy = root / "sr/ostree/deploy" / OS / "deploy"
    if deploy.is_dir():
        dirs = [str(p) for p in deploy.iterdir() if p.is_dir()]
        if dirs:
            subprocess.run(["chattr", "-i", *dirs], check=False, capture_output=True)


def _snap(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            xattrs = sorted((k, os.getxattr(p, k, follow_symlinks=False))
                            for k in os.listxattr(p, follow_symlinks=False))
            if stat.S_ISLNK(st.st_mode):
                body: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                body = Path(p).read_bytes()
            else:
                body = None
            out[os.path.relpath(p, root)] = (stat.filemode(st.st_mode), st.st_uid,
                                             st.st_gid, body, xattrs)
    return out


def _config_diff_lines(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{code}    {path}\n" for code, path in pairs)


# ---------------------------------------------------------------------------- scenario

class Scenario:
    root: Path
    old: Path
    new_ostree: Path
    mine: Path
    ostree_copy_line: str
    diff_before: str
    diff_after: str
    newly_dir_error: str
    third_checkout: Path


@pytest.fixture(scope="module")
def scn(ostree: Tool, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    run = ostree
    s = Scenario()
    s.root = tmp_path_factory.mktemp("etcmerge")
    sr = s.root / "sr"
    sr.mkdir()
    repo = sr / "ostree/repo"
    try:
        run("admin", "init-fs", sr)
        run("admin", f"--sysroot={sr}", "os-init", OS)
        run(f"--repo={repo}", "config", "set", "sysroot.bootloader", "none")
        commits = []
        for v in (1, 2, 3):
            tree = _os_tree(s.root / f"t{v}", v)
            proc = run(f"--repo={repo}", "commit", f"--branch={REF}",
                       f"--add-metadata-string=version={v}.0", tree)
            commits.append(proc.stdout.strip())
        run(f"--repo={repo}", "reset", REF, commits[0])
        run("admin", f"--sysroot={sr}", "deploy", "--no-prune", f"--os={OS}", REF)
        s.old = sr / "ostree/deploy" / OS / "deploy" / f"{commits[0]}.0"
        _local_changes(s.old / "etc")
        s.diff_before = run("admin", f"--sysroot={sr}", "config-diff",
                            f"--os={OS}").stdout
        proc = run("admin", f"--sysroot={sr}", "deploy", "--no-prune", f"--os={OS}",
                   commits[1])
        s.ostree_copy_line = next(line for line in proc.stdout.splitlines()
                                  if line.startswith("Copying /etc changes"))
        s.new_ostree = sr / "ostree/deploy" / OS / "deploy" / f"{commits[1]}.0"
        s.diff_after = run("admin", f"--sysroot={sr}", "config-diff",
                           f"--os={OS}").stdout
        # The same inputs for ostreefs: a checkout of the new commit, etc from usr/etc.
        s.mine = s.root / "mine"
        run(f"--repo={repo}", "checkout", commits[1], s.mine)
        copy_usr_etc(s.mine)  # as a deploy makes it: judged by ostree's merged /etc
        s.third_checkout = s.root / "third"
        run(f"--repo={repo}", "checkout", commits[2], s.third_checkout)
        copy_usr_etc(s.third_checkout)
        proc = run("admin", f"--sysroot={sr}", "deploy", "--no-prune", f"--os={OS}",
                   commits[2], check=False)
        assert proc.returncode != 0
        s.newly_dir_error = proc.stderr
        yield s
    finally:
        _unfreeze(s.root)
        shutil.rmtree(s.root, ignore_errors=True)


# ------------------------------------------------------------------------------- tests

def test_merge_matches_ostree(scn: Scenario, ostree: Tool) -> None:
    result = merge_etc(scn.old, scn.mine)
    assert result.message() == scn.ostree_copy_line
    assert result.skipped_paths == ["fifo"]
    want, got = _snap(scn.new_ostree / "etc"), _snap(scn.mine / "etc")
    assert got == want
    # Spot checks of the rules, so a shared mistake in both trees cannot pass silently.
    assert got["app.conf"][3] == b"local\n"
    assert "hostname" not in got and "fifo" not in got and "rmdir" not in got
    assert got["new.conf"][3] == b"new\n" and got["passwd"][3] == b"root:x:0:0:new\n"
    assert got["modeonly"][0] == "-rw-------" and got["owneronly"][1:3] == (1234, 5678)
    assert got["xattronly"][4] == []  # an xattr-only change is not a change
    assert got["link"][3] == "passwd"
    assert got["dirmode"][0] == "drwxr-xr-x"  # a directory's own change does not travel
    assert got["sub"][:3] == ("drwx------", 7, 8)  # ...unless a child is copied
    assert got["gone"][0] == "drwx--x--x" and got["gone/g.conf"][3] == b"gl\n"
    assert got["localdir"][:3] == ("drwxr-x---", 3, 4)
    assert got["local.conf"][4] == [("user.l", b"L")]
    assert got["typechg"][0].startswith("d")
    # Files of the new etc are replaced, never written through: the hardlinked objects
    # of the repository are intact.
    ostree("fsck", f"--repo={scn.root / 'sr/ostree/repo'}")


def test_config_diff_matches_ostree(scn: Scenario) -> None:
    assert _config_diff_lines(config_diff(scn.old)) == scn.diff_before
    assert _config_diff_lines(config_diff(scn.new_ostree)) == scn.diff_after
    assert "M    app.conf" in scn.diff_before and "A    localdir/deep/g" in scn.diff_before


def test_newly_a_directory_is_an_error_like_ostree(scn: Scenario) -> None:
    with pytest.raises(NewlyDirectory) as exc:
        merge_etc(scn.new_ostree, scn.third_checkout)
    msg = str(exc.value)
    assert msg == ("During /etc merge: Modified config file newly defaults to directory "
                   "'app.conf', cannot merge")
    assert msg in scn.newly_dir_error


# ------------------------------------------------------------- hand-made deployments

def _deployment(root: Path, defaults: dict[str, str]) -> Path:
    for rel, text in defaults.items():
        p = root / "usr/etc" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "usr/etc").mkdir(parents=True, exist_ok=True)
    shutil.copytree(root / "usr/etc", root / "etc", symlinks=True)
    return root


def test_special_files_are_skipped_even_inside_added_directories(tmp_path: Path) -> None:
    old = _deployment(tmp_path / "old", {"a.conf": "a\n"})
    new = _deployment(tmp_path / "new", {"a.conf": "a\n"})
    (old / "etc/d").mkdir()
    os.mkfifo(old / "etc/d/pipe")
    (old / "etc/d/z.conf").write_text("z\n")
    os.mkfifo(old / "etc/top")
    result = merge_etc(old, new)
    assert sorted(result.skipped_paths) == ["d/pipe", "top"]
    assert sorted(os.listdir(new / "etc")) == ["a.conf", "d"]
    assert os.listdir(new / "etc/d") == ["z.conf"]
    assert (result.modified, result.removed, result.added) == (0, 0, 4)


def test_never_writes_or_deletes_through_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "s.conf").write_text("precious\n")
    old = _deployment(tmp_path / "old", {"sub/s.conf": "s\n", "sub/t.conf": "t\n"})
    new = _deployment(tmp_path / "new", {"x": "x\n"})
    # Upstream turned sub into a link to somewhere outside the tree.
    os.symlink(str(outside), new / "etc/sub")
    (old / "etc/sub/s.conf").unlink()  # removed locally
    (old / "etc/sub/t.conf").write_text("local\n")  # modified locally
    with pytest.raises(EtcMergeError, match="'sub' is no longer a directory"):
        merge_etc(old, new)
    assert sorted(os.listdir(outside)) == ["s.conf"]
    assert (outside / "s.conf").read_text() == "precious\n"


def test_hardlinked_defaults_are_not_modified(tmp_path: Path) -> None:
    old = _deployment(tmp_path / "old", {"a.conf": "a\n"})
    new = tmp_path / "new"
    (new / "usr/etc").mkdir(parents=True)
    (new / "usr/etc/a.conf").write_text("a2\n")
    (new / "etc").mkdir()
    os.link(new / "usr/etc/a.conf", new / "etc/a.conf")  # as a hardlinked checkout would be
    (old / "etc/a.conf").write_text("mine\n")
    os.chmod(old / "etc/a.conf", 0o600)
    merge_etc(old, new)
    assert (new / "etc/a.conf").read_text() == "mine\n"
    assert (new / "usr/etc/a.conf").read_text() == "a2\n"
    assert stat.S_IMODE(os.stat(new / "usr/etc/a.conf").st_mode) == 0o644
    assert not [n for n in os.listdir(new / "etc") if n.startswith(".")]


def test_usr_etc_copy_keeps_attributes_and_follows_no_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    d = tmp_path / "d"
    etc = d / "usr/etc"
    (etc / "sub/deep").mkdir(parents=True)
    (etc / "a.conf").write_text("a\n")
    os.chmod(etc / "a.conf", 0o640)
    os.chown(etc / "a.conf", 12, 34)
    os.setxattr(etc / "a.conf", "user.a", b"A")
    os.utime(etc / "a.conf", ns=(1_000_000_000, 2_000_000_000))
    (etc / "sub/deep/f").write_text("f\n")
    os.chmod(etc / "sub", 0o750)
    os.setxattr(etc / "sub", "user.d", b"D")
    os.symlink(str(outside), etc / "out")  # copied as a link; nothing written through it
    os.mkfifo(etc / "fifo")
    copy_usr_etc(d)
    want = _snap(etc)
    del want["fifo"]  # special files are skipped, as a merge skips them
    assert _snap(d / "etc") == want
    assert os.stat(d / "etc/a.conf").st_mtime_ns == 2_000_000_000
    assert os.listdir(outside) == []
    # An etc already in the way (here a link to outside) is refused, not followed.
    shutil.rmtree(d / "etc")
    os.symlink(str(outside), d / "etc")
    with pytest.raises(EtcMergeError, match="exists beside /usr/etc"):
        copy_usr_etc(d)
    assert os.listdir(outside) == []


def test_missing_etc_is_a_clear_error(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "usr/etc").mkdir(parents=True)
    with pytest.raises(ConfigDiffError, match=re.escape(f"{d}/etc")):
        config_diff(d)
    with pytest.raises(EtcMergeError):
        merge_etc(d, d)


def test_config_diff_order_in_a_big_directory(ostree: Tool, tmp_path: Path) -> None:
    """Past 1000 names GLib sorts by inode batch by batch: the order must still match."""
    sr = tmp_path / "sr"
    sr.mkdir()
    try:
        ostree("admin", "init-fs", sr)
        ostree("admin", f"--sysroot={sr}", "os-init", OS)
        repo = sr / "ostree/repo"
        ostree(f"--repo={repo}", "config", "set", "sysroot.bootloader", "none")
        ostree(f"--repo={repo}", "commit", f"--branch={REF}", _os_tree(tmp_path / "t", 1))
        ostree("admin", f"--sysroot={sr}", "deploy", f"--os={OS}", REF)
        (deployment,) = (sr / "ostree/deploy" / OS / "deploy").glob("*.0")
        for i in range(1500):
            (deployment / "etc" / f"many{i}.conf").write_text("x\n")
        want = ostree("admin", f"--sysroot={sr}", "config-diff", f"--os={OS}").stdout
        got = config_diff(deployment)
        assert _config_diff_lines(got) == want
        added = [p for code, p in got if code == "A"]
        assert len(added) == 1500 and added != sorted(added)
    finally:
        _unfreeze(tmp_path)
