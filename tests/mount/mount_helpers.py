"""Helpers for the mount tests: describing a VFS or a directory tree the same way."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import UTF8, tool_env
from treegen import hardlink_groups  # noqa: F401 - re-exported for the mount tests

from ostreefs.mount.fuse import is_ostreefs_mount
from ostreefs.mount.vfs import ROOT_INO, CommitVFS
from ostreefs.store.repo import Repo


def header_loads(r: Repo) -> list[str]:
    """The checksums whose headers ``r`` reads from objects from now on."""
    loads: list[str] = []
    real = r.load_file_header

    def counting(checksum: str) -> tuple[object, int]:
        loads.append(checksum)
        return real(checksum)

    r.load_file_header = counting  # type: ignore[method-assign,assignment]
    return loads


def page_cached(path: str) -> bool:
    """Whether the first page of a file is in the page cache (mincore(2) on a mapping)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, mmap.PAGESIZE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            vec = ctypes.create_string_buffer(1)
            assert libc.mincore(addr, mmap.PAGESIZE, vec) == 0, os.strerror(ctypes.get_errno())
            return bool(vec.raw[0] & 1)
        finally:
            libc.munmap(addr, mmap.PAGESIZE)
    finally:
        os.close(fd)


def vfs_read_all(vfs: CommitVFS, ino: int, chunk: int = 128 * 1024) -> bytes:
    fh = vfs.open(ino)
    try:
        out = []
        off = 0
        while True:
            b = vfs.read(fh, off, chunk)
            if not b:
                return b"".join(out)
            out.append(b)
            off += len(b)
    finally:
        vfs.release(fh)


def vfs_snapshot(vfs: CommitVFS) -> dict[str, dict[str, Any]]:
    """What treegen.snapshot gives for a checkout, computed through the VFS."""
    out: dict[str, dict[str, Any]] = {}

    def record(ino: int, rel: str) -> None:
        a = vfs.attrs(ino)
        e: dict[str, Any] = {"mode": oct(stat.S_IMODE(a.mode)), "uid": a.uid, "gid": a.gid}
        if stat.S_ISDIR(a.mode):
            e["type"] = "dir"
        elif stat.S_ISLNK(a.mode):
            e["type"] = "symlink"
            e["target"] = vfs.readlink(ino)
            del e["mode"]
        else:
            e["type"] = "file"
            e["size"] = a.size
            e["sha256"] = hashlib.sha256(vfs_read_all(vfs, ino)).hexdigest()
        if not stat.S_ISLNK(a.mode):
            e["xattrs"] = sorted((n.decode("utf-8", "surrogateescape"), v)
                                 for n, v in vfs.xattrs(ino)
                                 if n.startswith(b"user."))
        out[rel] = e

    def walk(ino: int, rel: str) -> None:
        for _off, name, a in list(vfs.entries(ino)):
            vfs.ref(a.ino)
            child = name if rel == "." else f"{rel}/{name}"
            record(a.ino, child)
            if stat.S_ISDIR(a.mode):
                walk(a.ino, child)

    record(ROOT_INO, ".")
    walk(ROOT_INO, ".")
    return out


def find_lines(root: Path, fmt: str) -> list[str]:
    """``find ROOT -printf FMT`` with ROOT replaced by '.', sorted."""
    import subprocess

    out = subprocess.run(["find", ".", "-printf", fmt + "\\0"], cwd=root, check=True,
                         capture_output=True).stdout
    return sorted(x.decode("utf-8", "surrogateescape") for x in out.split(b"\0") if x)




def vfs_hardlinks(vfs: CommitVFS) -> tuple[set[frozenset[str]], dict[str, int]]:
    """Hardlink groups and nlink of every non-directory, through the VFS."""
    by_ino: dict[int, set[str]] = {}
    nlink: dict[str, int] = {}

    def walk(ino: int, rel: str) -> None:
        for _off, name, a in list(vfs.entries(ino)):
            vfs.ref(a.ino)
            child = f"{rel}/{name}" if rel else name
            if stat.S_ISDIR(a.mode):
                walk(a.ino, child)
            else:
                by_ino.setdefault(a.ino, set()).add(child)
                nlink[child] = a.nlink

    walk(ROOT_INO, "")
    return {frozenset(v) for v in by_ino.values() if len(v) > 1}, nlink


#: The CLI as a subprocess.
#: The mark of every module that mounts for real (``pytestmark = NEEDS_FUSE``).
NEEDS_FUSE = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root")

CLI = [sys.executable, "-m", "ostreefs"]
FIND_FMT = "%p %y %m %U %G %s %l"


def cli(*args: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CLI, *map(os.fspath, args)], capture_output=True, text=True,
                          env=tool_env(UTF8), timeout=60, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def force_unmount(mp: Path) -> None:
    if subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True).returncode:
        subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)


@contextmanager
def mounted(repo: Path, rev: str, mp: Path, *opts: str) -> Iterator[subprocess.Popen[bytes]]:
    """A foreground mount in a subprocess (log in MP.log), always unmounted afterwards."""
    mp.mkdir(exist_ok=True)
    logpath = mp.parent / f"{mp.name}.log"
    log = open(logpath, "wb")  # noqa: SIM115
    proc = subprocess.Popen([*CLI, "mount", f"--repo={repo}", rev, str(mp), "-f", *opts],
                            stdout=log, stderr=log, env=tool_env(UTF8))
    try:
        wait_for(lambda: is_ostreefs_mount(str(mp)) or proc.poll() is not None, "the mount")
        assert proc.poll() is None, logpath.read_text()
        yield proc
    finally:
        force_unmount(mp)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
