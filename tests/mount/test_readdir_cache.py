"""Kernel caching of listings and file pages (tools/pyfuse3-cache-readdir.patch).

The daemon runs with its request handlers wrapped to log every call to a file. With the
patched pyfuse3, a second ``find``/``ls`` of a mounted commit is served from the kernel's
cache and the daemon sees no readdir; with opens switched off (open/opendir answer
ENOSYS) a second walk and read of everything reaches the daemon not once. With stock
pyfuse3 (or caching switched off) the daemon answers again. Either way the listings and
contents are identical.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import MODES
from mount_helpers import NEEDS_FUSE, find_lines
from support import UTF8, tool_env

from ostreefs.mount import fuse
from ostreefs.mount.fuse import is_ostreefs_mount

pytestmark = NEEDS_FUSE

# argv: COUNT_FILE on|off, then the CLI's own arguments. Each handler call is a line
# "NAME" in COUNT_FILE.
_RUNNER = """
import sys
from ostreefs.mount import fuse
count_path, cache = sys.argv[1], sys.argv[2]
del sys.argv[1:3]
if cache == "off":
    fuse.CACHE_READDIR = False
    fuse.NO_OPEN = False
def counted(name):
    orig = getattr(fuse._Ops, name)
    async def handler(self, *args):
        with open(count_path, "a") as f:
            f.write(name + "\\n")
        return await orig(self, *args)
    setattr(fuse._Ops, name, handler)
for name in ("lookup", "getattr", "readlink", "opendir", "readdir", "releasedir",
             "open", "read", "flush", "release", "getxattr", "listxattr"):
    counted(name)
from ostreefs.cli import main as m
m.COMMANDS.setdefault("mount", ("Mount a commit read-only (FUSE)", "cmd_mount:setup"))
sys.exit(m.main(sys.argv[1:]))
"""
FIND_FMT = "%p %y %m %U %G %s %l"


@contextmanager
def counted_mount(repo: Path, mp: Path, cache: str) -> Iterator[Callable[..., int]]:
    """A foreground mount whose daemon logs its handler calls; yields ``calls(name)``
    (the number of calls of one handler, or of all with no name)."""
    mp.mkdir()
    counts = mp.parent / f"{mp.name}.readdir"
    counts.touch()
    log_path = mp.parent / f"{mp.name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER, str(counts), cache,
             "mount", f"--repo={repo}", "m", str(mp), "-f"],
            stdout=log, stderr=log, env=tool_env(UTF8))
    try:
        deadline = time.monotonic() + 15
        while not is_ostreefs_mount(str(mp)) and proc.poll() is None:
            assert time.monotonic() < deadline, "timed out waiting for the mount"
            time.sleep(0.02)
        assert proc.poll() is None, log_path.read_text()
        def calls(name: str | None = "readdir") -> int:
            lines = counts.read_text().splitlines()
            return len(lines) if name is None else lines.count(name)

        yield calls
    finally:
        if subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True).returncode:
            subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def on_and_off(repo: Path, tmp_path: Path) -> Iterator[tuple[Path, Callable[..., int],
                                                            Path, Callable[..., int]]]:
    """Two counted mounts of ``repo``: kernel caching as built, and switched off."""
    with counted_mount(repo, tmp_path / "on", "on") as calls_on, \
            counted_mount(repo, tmp_path / "off", "off") as calls_off:
        yield tmp_path / "on", calls_on, tmp_path / "off", calls_off


def _ls(d: Path) -> list[str]:
    return sorted(subprocess.run(["ls", "-a", str(d)], check=True, capture_output=True,
                                 text=True).stdout.split())


def _some_subdir(root: Path) -> Path:
    for dirpath, dirnames, _files in os.walk(root):
        if dirpath != str(root) and not os.path.islink(dirpath):
            return Path(dirpath)
        dirnames.sort()
    raise AssertionError("the test tree has no subdirectory")


@pytest.mark.parametrize("mode", MODES)
def test_second_walk_skips_daemon_readdir(mode_repo: Callable[[str], Path],
                                          tmp_path: Path, mode: str) -> None:
    with on_and_off(mode_repo(mode), tmp_path) as (on, calls_on, off, calls_off):
        first = find_lines(on, FIND_FMT)
        n_on = calls_on()
        assert n_on > 0
        assert find_lines(off, FIND_FMT) == first  # same listing with and without caching
        n_off = calls_off()
        assert n_off > 0

        sub = _some_subdir(on)
        assert find_lines(on, FIND_FMT) == first
        assert _ls(sub) == _ls(off / sub.relative_to(on))
        assert find_lines(off, FIND_FMT) == first

        # Without caching (stock pyfuse3, or switched off) the daemon answers again.
        assert calls_off() > n_off
        if fuse.CACHE_READDIR:
            # Patched pyfuse3: the kernel served the second walk and the ls itself.
            assert calls_on() == n_on
        else:
            # Stock pyfuse3: the fallback path (a bare handle from opendir) still works.
            assert calls_on() > n_on


def test_opendir_asks_for_caching_only_when_supported() -> None:
    import pyfuse3

    assert fuse.CACHE_READDIR == hasattr(pyfuse3.FileInfo(), "cache_readdir")
    if fuse.CACHE_READDIR:
        fi = pyfuse3.FileInfo(fh=7, keep_cache=True, **fuse._CACHE_DIR)
        assert (fi.fh, fi.keep_cache, fi.cache_readdir) == (7, True, True)


def _read_all(root: Path) -> dict[str, bytes]:
    """Every regular file's bytes. Each symlink is stat'ed through (so a dangling one
    costs a lookup of an absent name), not read."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath, f)
            if p.is_file() and not p.is_symlink():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.mark.parametrize("mode", MODES)
def test_warm_walk_and_reads_never_reach_the_daemon(mode_repo: Callable[[str], Path],
                                                    tmp_path: Path, mode: str) -> None:
    with on_and_off(mode_repo(mode), tmp_path) as (on, calls_on, off, calls_off):
        first, data = find_lines(on, FIND_FMT), _read_all(on)
        assert data and find_lines(off, FIND_FMT) == first and _read_all(off) == data
        n_on, n_off = calls_on(None), calls_off(None)
        assert find_lines(on, FIND_FMT) == first and _read_all(on) == data
        assert find_lines(off, FIND_FMT) == first and _read_all(off) == data
        # Kernel caching off: the daemon opened, flushed and released each file again.
        assert calls_off("open") > 0 and calls_off("release") > 0
        assert calls_off(None) > n_off
        if fuse.NO_OPEN:
            # Each answered ENOSYS once, and the kernel never asked again.
            assert calls_on("open") == calls_on("opendir") == calls_on("flush") == 1
            assert calls_on("release") == calls_on("releasedir") == 0
            # Patched pyfuse3: the second walk and read (dangling symlinks followed
            # included: negative entries are cached too) were the kernel's alone.
            assert calls_on(None) == n_on
        else:
            assert calls_on("open") > 1
