"""Real FUSE mounts: a mounted commit and ``ostree checkout`` of it are the same tree
(find -printf, sha256 of every file, xattrs, hardlinks), writes fail with EROFS, a
corrupt object fails only its own reads, tools work, and the daemon's life cycle
(daemonize, umount, signals, stale mount points) leaves nothing wedged."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import MODES, repo_copy
from mount_helpers import (
    CLI,
    FIND_FMT,
    NEEDS_FUSE,
    cli,
    find_lines,
    force_unmount,
    hardlink_groups,
    mounted,
)
from support import UTF8, Tool, tool_env
from treegen import diff_snapshots, snapshot

from ostreefs.mount.fuse import is_ostreefs_mount

pytestmark = NEEDS_FUSE





@pytest.mark.parametrize("mode", MODES)
def test_mount_matches_checkout(mode_repo: Callable[[str], Path], ostree: Tool,
                                tmp_path: Path, mode: str) -> None:
    repo = repo_copy(mode_repo(mode), tmp_path / "repo")
    co, hco, mp = tmp_path / "co", tmp_path / "hco", tmp_path / "mnt"
    ostree("checkout", f"--repo={repo}", "m", str(co), env=UTF8)
    with mounted(repo, "m", mp):
        assert find_lines(mp, FIND_FMT) == find_lines(co, FIND_FMT)
        got, want = snapshot(mp), snapshot(co)  # sha256 of every file, user xattrs
        assert got == want, diff_snapshots(got, want)
        # Link counts and groups as a hardlink checkout shows them (made after the
        # mount's counts: the archive cache it fills adds no link to the mount).
        ostree("checkout", f"--repo={repo}", "-U", "m", str(hco), env=UTF8)
        assert find_lines(mp, "%p %y %s %n %l") == find_lines(hco, "%p %y %s %n %l")
        assert hardlink_groups(mp) == hardlink_groups(hco)
        # Real tools.
        subprocess.run(["diff", "-r", "--no-dereference", str(mp), str(co)], check=True,
                       capture_output=True)
        tar = subprocess.run(["tar", "cf", "-", "."], cwd=mp, check=True,
                             capture_output=True).stdout
        listed = subprocess.run(["tar", "tf", "-"], input=tar, check=True,
                                capture_output=True).stdout.splitlines()
        assert len(listed) == len(find_lines(co, "%p"))


def test_writes_fail_with_erofs(mode_repo: Callable[[str], Path], tmp_path: Path) -> None:
    mp = tmp_path / "mnt"
    with mounted(mode_repo("bare-user"), "m", mp):
        f = next(p for p in sorted(mp.iterdir()) if p.is_file() and not p.is_symlink())
        attempts: list[Callable[[], object]] = [
            lambda: open(f, "r+b"),
            lambda: open(mp / "new", "wb"),
            lambda: (mp / "dir").mkdir(),
            lambda: f.unlink(),
            lambda: os.chmod(f, 0o600),
            lambda: os.setxattr(f, "user.x", b"1"),
            lambda: os.rename(f, mp / "renamed"),
            lambda: os.symlink("x", mp / "sl"),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == errno.EROFS


def test_corrupt_object_gives_eio_and_mount_stays(mode_repo: Callable[[str], Path],
                                                  tmp_path: Path) -> None:
    from ostreefs.store.objects import ObjectType
    from ostreefs.store.repo import Repo
    from ostreefs.store.tree import children, lookup

    repo = repo_copy(mode_repo("archive"), tmp_path / "repo")
    r = Repo.open(repo)
    from ostreefs.store.refs import rev_parse

    commit = rev_parse(r, "m")
    files = [e for e in children(r, lookup(r, commit, "/"))
             if not e.is_dir and not e.is_symlink and e.size > 100]
    victim, others = files[0], [e for e in files[1:] if e.checksum != files[0].checksum]
    path = Path(r.object_path_str(victim.checksum, ObjectType.FILE))
    raw = bytearray(path.read_bytes())
    hlen = 8 + int.from_bytes(raw[:4], "big")
    raw[hlen:] = b"\xff" * (len(raw) - hlen)
    path.write_bytes(bytes(raw))
    mp = tmp_path / "mnt"
    with mounted(repo, "m", mp) as proc:
        with pytest.raises(OSError) as e:
            (mp / victim.name).read_bytes()
        assert e.value.errno == errno.EIO
        for o in others:
            (mp / o.name).read_bytes()
        assert proc.poll() is None
        assert len(list(mp.iterdir())) > 1
    log = (tmp_path / "mnt.log").read_text()
    assert victim.checksum in log and "Traceback" not in log


def test_sigterm_the_moment_the_mount_shows_unmounts_it(
        mode_repo: Callable[[str], Path], tmp_path: Path) -> None:
    """A service manager may stop a mount as soon as it appears. The signal handlers
    were installed after the mount went in, so a SIGTERM in that window killed the
    process and left a dead mount behind (the suite caught it once)."""
    repo = mode_repo("bare-user")
    mp = tmp_path / "mnt"
    mp.mkdir()
    for _ in range(5):
        proc = subprocess.Popen([*CLI, "mount", f"--repo={repo}", "m", str(mp), "-f"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=tool_env(UTF8))
        try:
            # No sleep between looks: signal within microseconds of mount(2).
            while proc.poll() is None and not is_ostreefs_mount(str(mp)):
                pass
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            assert not is_ostreefs_mount(str(mp))
        finally:
            force_unmount(mp)
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_daemon_umount_signal_and_stale(mode_repo: Callable[[str], Path],
                                        tmp_path: Path) -> None:
    repo = mode_repo("bare-user")
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        # Daemonized: the command returns once the mount is ready.
        cli("mount", f"--repo={repo}", "m:/level 00", mp)
        assert is_ostreefs_mount(str(mp))
        assert (mp / "level 01").is_dir()
        # A second mount of the same repo elsewhere at the same time.
        mp2 = tmp_path / "mnt2"
        mp2.mkdir()
        cli("mount", f"--repo={repo}", "m", mp2)
        assert (mp2 / "level 00" / "level 01").is_dir()
        cli("umount", mp2)
        bad = cli("mount", f"--repo={repo}", "m", mp, check=False)
        assert bad.returncode != 0 and "already" in bad.stderr
        cli("umount", mp)
        assert not is_ostreefs_mount(str(mp))
        # SIGTERM unmounts a foreground mount cleanly.
        with mounted(repo, "m", mp) as proc:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert not is_ostreefs_mount(str(mp))
        # A daemon killed outright leaves a stale mount; the next mount clears it.
        with mounted(repo, "m", mp) as proc:
            proc.kill()
            proc.wait()
            with pytest.raises(OSError) as e:
                os.statvfs(mp)
            assert e.value.errno == errno.ENOTCONN
        cli("mount", f"--repo={repo}", "m", mp)
        assert (mp / "level 00").is_dir()
        cli("umount", mp)
    finally:
        force_unmount(mp)
        force_unmount(tmp_path / "mnt2")


def test_signals_stop_a_busy_daemon_and_a_thread_mount_needs_none(
        mode_repo: Callable[[str], Path], tmp_path: Path) -> None:
    """SIGINT, SIGTERM and SIGHUP each end a daemon that is serving (its count and
    read-ahead threads running too) with a clean unmount; a foreground mount run on a
    thread of a library caller (which cannot take signals) serves and ends with an
    external unmount."""
    import threading

    from ostreefs.mount.fuse import MountOptions, mount
    from ostreefs.mount.vfs import CommitVFS
    from ostreefs.store.refs import rev_parse
    from ostreefs.store.repo import Repo

    repo = mode_repo("bare-user")
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            with mounted(repo, "m", mp) as proc:
                walker = subprocess.Popen(["find", str(mp)], stdout=subprocess.DEVNULL)
                proc.send_signal(sig)
                assert proc.wait(timeout=10) == 0, sig
                walker.wait(timeout=10)
                assert not is_ostreefs_mount(str(mp))
        r = Repo.open(repo)
        vfs = CommitVFS(r, rev_parse(r, "m"))
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                mount(vfs, str(mp), MountOptions(foreground=True))
            except BaseException as e:  # noqa: BLE001 - reported to the test
                errors.append(e)

        t = threading.Thread(target=serve)
        t.start()
        for _ in range(500):
            if is_ostreefs_mount(str(mp)) or not t.is_alive():
                break
            threading.Event().wait(0.01)
        assert (mp / "level 00").is_dir()
        subprocess.run(["fusermount3", "-u", str(mp)], check=True)
        t.join(timeout=10)
        assert not t.is_alive() and errors == []
    finally:
        force_unmount(mp)


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_an_idle_daemon_sleeps(mode_repo: Callable[[str], Path], tmp_path: Path) -> None:
    """The serving loop keeps reading for a moment after each request (patched pyfuse3,
    SPIN_US) but must then sleep: after a burst of requests, a second of idleness costs
    the daemon next to no CPU."""
    import time

    mp = tmp_path / "mnt"
    hz = os.sysconf("SC_CLK_TCK")
    with mounted(mode_repo("bare-user"), "m", mp) as proc:
        for _ in range(3):  # bursts of back-to-back requests, as `ls -l` sends them
            out = subprocess.run(["ls", "-lR", str(mp)], capture_output=True, check=True)
            assert b"level 00" in out.stdout
        # A fresh mount's background work (counts, read-ahead, index writes) ends
        # first: wait for two quiet 0.2 s windows in a row (a busy machine may delay it).
        quiet, deadline = 0, time.monotonic() + 20
        while quiet < 2 and time.monotonic() < deadline:
            before = _cpu_ticks(proc.pid)
            time.sleep(0.2)
            quiet = quiet + 1 if _cpu_ticks(proc.pid) - before <= 1 else 0
        before = _cpu_ticks(proc.pid)
        time.sleep(1.0)
        spent = _cpu_ticks(proc.pid) - before
        assert spent <= hz // 20, f"{spent} ticks in 1 s idle"
