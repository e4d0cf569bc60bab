"""Real tools on a real mount (issue 5, "Real tools work on a mount" and the faults):
``tar``, ``rsync -a``, ``cp -a``, ``du``, ``diff -r`` against ``ostree checkout``; a Python
package imported from a mounted commit; ``chroot`` and ``bwrap --ro-bind`` into a mounted
OS tree running its own binaries; a deleted object gives EIO while the mount stays up; a
daemon killed with SIGKILL leaves a mount point the next ``ostreefs mount`` reuses;
several mounts of one repo at once; ``-o allow_other,uid=,gid=`` for a non-root viewer.

Tools that are not part of a minimal Debian (rsync, bubblewrap, busybox-static) come from
``tools/install``; a missing one skips its test locally and fails it when ``CI`` is set.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import MODES, repo_copy
from mount_helpers import (
    FIND_FMT,
    NEEDS_FUSE,
    cli,
    find_lines,
    force_unmount,
    hardlink_groups,
    mounted,
    wait_for,
)
from support import TS_ARG, UTF8, Tool, init_repo, tool_env
from treegen import diff_snapshots, snapshot

from ostreefs.mount.fuse import is_ostreefs_mount

pytestmark = NEEDS_FUSE

XATTR_TAR = ["--xattrs", "--xattrs-include=user.*"]
VIEWER = 1000  # the non-root user of the allow_other test


# ------------------------------------------------------------------ helpers


def need(tool: str, package: str) -> str:
    """The path of ``tool``; skip without it (fail under CI: tools/install adds it)."""
    path = shutil.which(tool)
    if path:
        return path
    msg = f"{tool} is not installed (Debian package {package}, see tools/install)"
    if os.environ.get("CI"):
        pytest.fail(msg + " and CI is set", pytrace=False)
    pytest.skip(msg)


def run(*argv: str | os.PathLike[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run a command; fail showing its output unless it exits 0 (``check=False`` not)."""
    check = kw.pop("check", True)
    proc = subprocess.run([os.fspath(a) for a in argv], capture_output=True, timeout=60,
                          check=False, **kw)  # type: ignore[call-overload]
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(map(os.fspath, argv))} exited {proc.returncode}\n"
            f"{proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc




def commit_tree(ostree: Tool, repo: Path, branch: str, tree: Path) -> None:
    ostree("commit", f"--repo={repo}", "-b", branch, "-s", branch, TS_ARG, str(tree),
           env=UTF8)


def checkout(ostree: Tool, repo: Path, rev: str, dest: Path) -> Path:
    ostree("checkout", f"--repo={repo}", rev, str(dest), env=UTF8)
    return dest


def assert_same_tree(got: Path, want: Path, what: str) -> None:
    """Same modes, owners, symlink targets, file contents and user xattrs."""
    a, b = snapshot(got), snapshot(want)
    assert a == b, f"{what}:\n{diff_snapshots(a, b)}"


def du_apparent(path: Path) -> int:
    out = run("du", "-s", "--apparent-size", "--block-size=1", "--count-links", path)
    return int(out.stdout.split()[0])


def dir_sizes(root: Path) -> int:
    """Sum of st_size over the directories (file-system specific, not part of a commit)."""
    total = os.lstat(root).st_size
    for dirpath, dirnames, _files in os.walk(root):  # walk lists dir symlinks as files
        total += sum(os.lstat(os.path.join(dirpath, d)).st_size for d in dirnames)
    return total


def dir_size_set(root: Path) -> set[int]:
    sizes = {os.lstat(root).st_size}
    for dirpath, dirnames, _files in os.walk(root):
        sizes |= {os.lstat(os.path.join(dirpath, d)).st_size for d in dirnames}
    return sizes


def sha256_files(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for n in files:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                with open(p, "rb") as f:
                    out[os.path.relpath(p, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


def daemon_pids(mp: Path) -> list[int]:
    """Pids of the ostreefs daemons serving ``mp`` (their argv names it)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mp) in argv and b"mount" in argv and b"ostreefs" in argv:
            pids.append(int(d))
    return pids


# --------------------------------------------------- 1. archivers and copiers


@pytest.mark.parametrize("mode", MODES)
def test_tar_rsync_cp_du_diff(mode_repo: Callable[[str], Path], ostree: Tool,
                              tmp_path: Path, mode: str) -> None:
    rsync = need("rsync", "rsync")
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    co = checkout(ostree, repo, "m", tmp_path / "co")
    mp = tmp_path / "mnt"
    with mounted(repo, "m", mp):
        links = hardlink_groups(mp)
        assert links, "the generated tree has files sharing content: expected hardlinks"

        # diff -r: nothing differs (symlinks compared as links).
        d = run("diff", "-r", "--no-dereference", mp, co, check=False)
        assert d.returncode == 0 and not d.stdout, d.stdout.decode(errors="replace")[:3000]

        # tar c | tar x, with user xattrs and numeric owners.
        tar = run("tar", "cf", "-", *XATTR_TAR, "-C", mp, ".").stdout
        tx = tmp_path / "tar-x"
        tx.mkdir()
        run("tar", "xf", "-", *XATTR_TAR, "--numeric-owner", "-p", "-C", tx, input=tar)
        assert_same_tree(tx, co, "tar c of the mount, extracted, against the checkout")
        assert hardlink_groups(tx) == links

        # rsync -a (plus -H hardlinks, -X xattrs, numeric ids) from the mount.
        rx = tmp_path / "rsync-x"
        run(rsync, "-aHX", "--numeric-ids", f"{mp}/", f"{rx}/")
        assert_same_tree(rx, co, "rsync -aHX from the mount against the checkout")
        assert hardlink_groups(rx) == links
        # Plain rsync -a (no xattrs): everything else equal.
        ra = tmp_path / "rsync-a"
        run(rsync, "-a", "--numeric-ids", f"{mp}/", f"{ra}/")
        a, b = snapshot(ra, xattrs=False), snapshot(co, xattrs=False)
        assert a == b, diff_snapshots(a, b)

        # cp -a (preserves modes, owners, links, xattrs).
        cx = tmp_path / "cp-x"
        run("cp", "-a", f"{mp}/.", f"{cx}/")
        assert_same_tree(cx, co, "cp -a from the mount against the checkout")
        assert hardlink_groups(cx) == links
        assert find_lines(cx, FIND_FMT) == find_lines(co, FIND_FMT)

        # du --apparent-size: files and symlinks add up the same; directory sizes are
        # the file system's own (4096 on the mount), so they are compared separately.
        got, want = du_apparent(mp), du_apparent(co)
        assert got - dir_sizes(mp) == want - dir_sizes(co), (got, want)
        if dir_size_set(co) == {4096}:  # e.g. ext4: then the totals agree as they are
            assert got == want
        # Without --count-links the mount counts each shared object once, as du does on
        # a hardlink checkout of the same commit.
        hco = tmp_path / "hco"
        ostree("checkout", f"--repo={repo}", "-U", "m", str(hco), env=UTF8)
        if hardlink_groups(hco) == links:
            n_mp = int(run("du", "-sb", mp).stdout.split()[0]) - dir_sizes(mp)
            n_h = int(run("du", "-sb", hco).stdout.split()[0]) - dir_sizes(hco)
            assert n_mp == n_h


# ------------------------------------------------------------ 2. Python tree


PKG_INIT = "VERSION = '1.2'\n"
PKG_MOD = """\
from importlib import resources

from . import VERSION


def f():
    data = resources.files(__package__).joinpath('data.txt').read_text()
    return f"f from pkg {VERSION}: {data.strip()}"
"""


@pytest.mark.parametrize("mode", MODES)
def test_python_package_imports_from_mount(ostree: Tool, tmp_path: Path, mode: str) -> None:
    tree = tmp_path / "tree"
    pkg = tree / "lib" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(PKG_INIT)
    (pkg / "mod.py").write_text(PKG_MOD)
    (pkg / "data.txt").write_text("data file\n")
    (pkg / "__main__.py").write_text("from .mod import f\nprint('main:', f())\n")
    repo = init_repo(ostree, tmp_path / "repo", mode)
    commit_tree(ostree, repo, "py", tree)
    mp = tmp_path / "mnt"
    with mounted(repo, "py", mp) as proc:
        lib = mp / "lib"
        # Without -B Python tries to write __pycache__ and must shrug off EROFS.
        for flags in (["-B"], []):
            out = run(sys.executable, *flags, "-c",
                      f"import sys; sys.path.insert(0, {str(lib)!r}); import pkg.mod; "
                      "print(pkg.mod.f()); print(pkg.mod.__file__)",
                      env=tool_env()).stdout.decode()
            assert out.splitlines() == ["f from pkg 1.2: data file",
                                        str(lib / "pkg" / "mod.py")]
        out = run(sys.executable, "-m", "pkg", cwd=lib, env=tool_env()).stdout.decode()
        assert out == "main: f from pkg 1.2: data file\n"
        assert not (lib / "pkg" / "__pycache__").exists()
        assert proc.poll() is None


# ---------------------------------------------------------- 3. a tiny OS tree


def _copy_exe(src: str, root: Path, dest: str) -> None:
    """Copy ``src`` (resolved) to ROOT/DEST, with every library ``ldd`` lists at the path
    ldd shows (so the dynamic loader inside the chroot finds them)."""
    target = root / dest.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(src), target)
    ldd = subprocess.run(["ldd", src], capture_output=True, text=True, check=False)
    for line in ldd.stdout.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            lib = root / path.lstrip("/")
            lib.parent.mkdir(parents=True, exist_ok=True)
            if not lib.exists():
                shutil.copy2(os.path.realpath(path), lib)


def make_os_tree(root: Path, kind: str) -> None:
    """A minimal root whose /bin/sh runs: busybox-static, or dash + its libraries."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "msg").write_text("hello from the commit\n")
    for d in ("tmp", "dev", "proc"):  # bwrap mounts over these; it cannot mkdir them
        (root / d).mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "bin").mkdir()
    if kind == "busybox":
        busybox = need("busybox", "busybox-static")
        ldd = subprocess.run(["ldd", busybox], capture_output=True, text=True)
        if "not a dynamic executable" not in ldd.stdout + ldd.stderr:
            pytest.skip("busybox is not the static one (install busybox-static)")
        shutil.copy2(busybox, root / "bin" / "busybox")
        for applet in ("sh", "cat", "ls", "echo"):
            os.symlink("busybox", root / "bin" / applet)
    else:
        _copy_exe("/bin/sh", root, "/bin/sh")
        _copy_exe("/bin/cat", root, "/bin/cat")


@pytest.mark.parametrize("kind,mode", [("busybox", "bare-user"), ("dynamic", "bare-user"),
                                       ("dynamic", "archive")])
def test_chroot_and_bwrap_run_a_mounted_os_tree(ostree: Tool, tmp_path: Path, kind: str,
                                                mode: str) -> None:
    tree = tmp_path / "tree"
    make_os_tree(tree, kind)
    repo = init_repo(ostree, tmp_path / "repo", mode)
    commit_tree(ostree, repo, "os", tree)
    mp = tmp_path / "mnt"
    script = "echo hi; cat /etc/msg"
    want = b"hi\nhello from the commit\n"
    with mounted(repo, "os", mp) as proc:
        out = run(need("chroot", "coreutils"), mp, "/bin/sh", "-c", script, env={"PATH": "/bin"})
        assert out.stdout == want
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            if os.environ.get("CI"):
                pytest.fail("bwrap is not installed (Debian package bubblewrap) and CI is "
                            "set", pytrace=False)
        else:
            out = run(bwrap, "--ro-bind", mp, "/", "--dev", "/dev", "--proc", "/proc",
                      "--tmpfs", "/tmp", "--clearenv", "--setenv", "PATH", "/bin",
                      "/bin/sh", "-c", script)
            assert out.stdout == want
        assert proc.poll() is None


# ------------------------------------------------------------------ 4. faults


def _delete_one_object(repo: Path) -> Any:
    """Delete the content object of a non-empty file at the top of ``m``; its entry."""
    from ostreefs.store.objects import ObjectType
    from ostreefs.store.refs import rev_parse
    from ostreefs.store.repo import Repo
    from ostreefs.store.tree import children, lookup

    r = Repo.open(repo)
    victim = next(e for e in children(r, lookup(r, rev_parse(r, "m"), "/"))
                  if not e.is_dir and not e.is_symlink and e.size > 0)
    os.unlink(r.object_path_str(victim.checksum, ObjectType.FILE))
    return victim


@pytest.mark.parametrize("mode", MODES)
def test_deleted_object_gives_eio_and_mount_stays(mode_repo: Callable[[str], Path],
                                                  ostree: Tool, tmp_path: Path,
                                                  mode: str) -> None:
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    co = checkout(ostree, repo, "m", tmp_path / "co")
    victim = _delete_one_object(repo)
    others = [p for p in co.iterdir() if p.is_file() and not p.is_symlink()
              and p.stat().st_size > 0 and p.name != victim.name
              and p.read_bytes() != (co / victim.name).read_bytes()]
    assert others
    mp = tmp_path / "mnt"
    with mounted(repo, "m", mp) as proc:
        with pytest.raises(OSError) as e:
            (mp / victim.name).read_bytes()
        assert e.value.errno == errno.EIO
        for o in others:
            assert (mp / o.name).read_bytes() == (co / o.name).read_bytes()
        # cat and rsync report the error (rsync copies everything else).
        c = run("cat", mp / victim.name, check=False)
        assert c.returncode != 0 and b"Input/output error" in c.stderr
        if shutil.which("rsync"):
            rs = run("rsync", "-a", f"{mp}/", f"{tmp_path / 'rs'}/", check=False)
            assert rs.returncode == 23 and b"Input/output error" in rs.stderr, rs
            assert (tmp_path / "rs" / others[0].name).read_bytes() == \
                (co / others[0].name).read_bytes()
        assert proc.poll() is None
        assert sorted(p.name for p in mp.iterdir()) == sorted(p.name for p in co.iterdir())
        # Once more after all that: the mount still serves.
        assert (mp / others[0].name).read_bytes() == (co / others[0].name).read_bytes()
    log = (tmp_path / "mnt.log").read_text()
    assert victim.checksum in log and "Traceback" not in log


@pytest.mark.parametrize("mode", MODES)
def test_tar_fails_on_a_missing_object(mode_repo: Callable[[str], Path], ostree: Tool,
                                       tmp_path: Path, mode: str) -> None:
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    co = checkout(ostree, repo, "m", tmp_path / "co")
    victim = _delete_one_object(repo)
    mp = tmp_path / "mnt"
    with mounted(repo, "m", mp) as proc:
        # Metadata the commit still has (only the content is gone) or an error.
        try:
            st = os.lstat(mp / victim.name)
        except OSError as e:
            assert e.errno == errno.EIO
        else:
            want = os.lstat(co / victim.name)
            assert (st.st_size, st.st_mode) == (want.st_size, want.st_mode)
        # (not "cf /dev/null": GNU tar then skips reading the files)
        t = run("tar", "cf", "-", "-C", mp, ".", check=False)
        assert proc.poll() is None
        assert t.returncode != 0 and victim.name.encode() in t.stderr, t.stderr


def _dead(pid: int) -> bool:
    """Gone, or a zombie (its reaper is not ours) with all its threads gone: the leader
    shows as a zombie while other threads may still be exiting, holding the FUSE device
    open (a request then sent is aborted, ECONNABORTED, instead of refused)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tasks:
        try:
            stat_line = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat_line.rpartition(")")[2].split()[0] not in ("Z", "X"):
            return False
    return True


def test_kill9_then_mount_again_on_the_same_mountpoint(mode_repo: Callable[[str], Path],
                                                      tmp_path: Path) -> None:
    repo = mode_repo("bare-user")
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        for round_ in range(2):
            cli("mount", f"--repo={repo}", "m", mp)  # daemonized
            assert (mp / "level 00").is_dir()
            pids = daemon_pids(mp)
            assert len(pids) == 1, pids
            pid = pids[0]
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda pid=pid: _dead(pid), "the daemon to die")
            with pytest.raises(OSError) as e:
                os.listdir(mp)
            assert e.value.errno == errno.ENOTCONN
            if round_ == 0:
                # The next mount on the same mount point clears the stale one.
                cli("mount", f"--repo={repo}", "m:/level 00", mp)
                assert (mp / "level 01").is_dir()
                assert is_ostreefs_mount(str(mp))
                cli("umount", mp)
                assert not is_ostreefs_mount(str(mp))
            else:
                # ostreefs umount clears a stale mount too.
                cli("umount", mp)
                assert not is_ostreefs_mount(str(mp))
                assert os.listdir(mp) == []
    finally:
        force_unmount(mp)


@pytest.mark.parametrize("mode", MODES)
def test_two_mounts_of_one_repo_read_at_once(mode_repo: Callable[[str], Path],
                                             ostree: Tool, tmp_path: Path,
                                             mode: str) -> None:
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    co = checkout(ostree, repo, "m", tmp_path / "co")
    want = sha256_files(co)
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    with mounted(repo, "m", m1) as p1, mounted(repo, "m", m2) as p2:
        results: dict[str, dict[str, str]] = {}
        errors: list[BaseException] = []

        def walk(name: str, mp: Path) -> None:
            try:
                results[name] = sha256_files(mp)
            except BaseException as e:  # noqa: BLE001 - reported by the main thread
                errors.append(e)

        threads = [threading.Thread(target=walk, args=(f"{mp.name}-{i}", mp))
                   for i in range(2) for mp in (m1, m2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert len(results) == 4
        for name, got in results.items():
            assert got == want, name
        # Unmounting one leaves the other serving.
        force_unmount(m1)
        p1.wait(timeout=10)
        assert sha256_files(m2) == want
        assert p2.poll() is None


def _viewer(*argv: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return run("setpriv", f"--reuid={VIEWER}", f"--regid={VIEWER}", "--clear-groups",
               *argv, check=False, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})


def test_allow_other_uid_gid_for_a_non_root_viewer(ostree: Tool, tmp_path: Path) -> None:
    need("setpriv", "util-linux")
    tree = tmp_path / "tree"
    (tree / "private").mkdir(parents=True)
    (tree / "public").write_text("public\n")
    (tree / "private" / "secret").write_text("secret\n")
    os.chmod(tree / "private", 0o700)
    os.chmod(tree / "private" / "secret", 0o600)
    os.chmod(tree, 0o755)
    repo = init_repo(ostree, tmp_path / "repo", "bare-user")
    commit_tree(ostree, repo, "t", tree)
    # The viewer must reach the mount point: not under pytest's root-only tmp dir.
    base = Path(tempfile.mkdtemp(prefix="ostreefs-allow-other-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        mp = base / "mnt"
        # Without allow_other FUSE keeps everyone but the mounter out.
        with mounted(repo, "t", mp):
            r = _viewer("ls", mp)
            assert r.returncode != 0 and b"Permission denied" in r.stderr, r
        # allow_other: the viewer lists it; permissions are the commit's (root's 0600
        # file stays closed to them).
        with mounted(repo, "t", mp, "-o", "allow_other"):
            r = _viewer("ls", mp)
            assert r.returncode == 0 and r.stdout.split() == [b"private", b"public"], r
            assert _viewer("cat", mp / "public").stdout == b"public\n"
            assert _viewer("ls", mp / "private").returncode != 0
        # allow_other,uid=,gid=: everything shows as the viewer's, so they can read it all.
        with mounted(repo, "t", mp, "-o", f"allow_other,uid={VIEWER},gid={VIEWER}"):
            for p in (mp, mp / "public", mp / "private", mp / "private" / "secret"):
                st = os.lstat(p)
                assert (st.st_uid, st.st_gid) == (VIEWER, VIEWER), p
            assert stat.S_IMODE(os.lstat(mp / "private" / "secret").st_mode) == 0o600
            r = _viewer("ls", "-n", mp)
            assert r.returncode == 0, r
            assert _viewer("cat", mp / "private" / "secret").stdout == b"secret\n"
            # Still read-only for its "owner".
            w = _viewer("touch", mp / "private" / "new")
            assert w.returncode != 0 and b"Read-only file system" in w.stderr, w
    finally:
        force_unmount(base / "mnt")
        shutil.rmtree(base, ignore_errors=True)
