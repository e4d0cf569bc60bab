"""Shared pieces of the sysroot tests: a tiny OS tree, sysroot snapshots, teardown.

Deployment roots carry the immutable attribute, so removing a sysroot needs the flag
cleared first (:func:`remove_sysroot`).
"""

from __future__ import annotations

import array
import fcntl
import hashlib
import os
import shutil
import stat
from pathlib import Path

KVER = "6.1.0-test"
OSNAME = "myos"
REF = "myos/x86_64/stable"
KERNEL = b"KERNELBYTES"
INITRD = b"INITRDBYTES"


def make_os_tree(root: Path, version: int, *, kernel: bytes = KERNEL,
                 initrd: bytes | None = INITRD, extra_kernels: int = 0,
                 with_kernel: bool = True) -> Path:
    """A small OS tree: kernel + initramfs, os-release, a few /etc defaults, /var bits.

    Upstream /etc changes between versions 1 and 2 as the reference's merge example:
    app.conf and passwd change, new.conf appears.
    """
    if root.exists():
        shutil.rmtree(root)
    mods = root / "usr/lib/modules" / KVER
    mods.mkdir(parents=True)
    if with_kernel:
        (mods / "vmlinuz").write_bytes(kernel)
        if initrd is not None:
            (mods / "initramfs.img").write_bytes(initrd)
    for i in range(extra_kernels):
        other = root / "usr/lib/modules" / f"6.2.{i}-other"
        other.mkdir(parents=True)
        (other / "vmlinuz").write_bytes(b"OTHER%d" % i)
    (root / "usr/lib/os-release").write_text(
        'NAME="MyOS"\nID=myos\nPRETTY_NAME="MyOS 1"\n')
    etc = root / "usr/etc"
    etc.mkdir()
    (etc / "app.conf").write_text(f"upstream app {version}\n")
    (etc / "hostname").write_text("myhost\n")
    (etc / "passwd").write_text(f"root:x:0:0:v{version}:/root:/bin/sh\n")
    (etc / "secret").write_text("s\n")
    os.chmod(etc / "secret", 0o600)
    os.symlink("../usr/lib/os-release", etc / "os-release")
    if version >= 2:
        (etc / "new.conf").write_text("new\n")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/tool").write_text(f"#!/bin/sh\necho {version}\n")
    os.chmod(root / "usr/bin/tool", 0o755)
    (root / "var/lib/pkg").mkdir(parents=True)
    (root / "sysroot").mkdir()
    return root


def make_local_etc_changes(deploy: Path) -> None:
    """The reference's local edits: app.conf edited, hostname removed, two additions."""
    etc = deploy / "etc"
    (etc / "app.conf").write_text("local edit\n")
    (etc / "hostname").unlink()
    (etc / "local.conf").write_text("mine\n")
    (etc / "localdir").mkdir()
    (etc / "localdir/f").write_text("f\n")


def clear_immutable(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, 0x80086601, buf, True)
        if buf[0] & 0x10:
            buf[0] &= ~0x10
            fcntl.ioctl(fd, 0x40086602, buf, True)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_sysroot(path: Path) -> None:
    """``rm -rf`` of a sysroot whose deployment roots are immutable."""
    base = path / "ostree" / "deploy"
    if base.is_dir():
        for osdir in base.iterdir():
            ddir = osdir / "deploy"
            if ddir.is_dir():
                for d in ddir.iterdir():
                    clear_immutable(d)
    shutil.rmtree(path, ignore_errors=True)


def snapshot(root: Path, skip_repo: bool = True) -> dict[str, tuple[object, ...]]:
    """Every path under a sysroot with what must match between the tools.

    Not mtimes, not inode numbers; file content as a hash. The repo's internals are left
    out (its objects are compared elsewhere); its refs are compared through ``refs``.
    """
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if skip_repo and rel_dir == "ostree":
            dirnames[:] = [d for d in dirnames if d != "repo"]
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(st.st_mode), st.st_uid, st.st_gid)
            else:
                digest = hashlib.sha256(Path(full).read_bytes()).hexdigest()
                out[rel] = ("file", oct(st.st_mode), st.st_uid, st.st_gid, digest,
                            st.st_nlink > 1)
    return out


def diff_snapshots(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> str:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    return (f"only in ostree's: {only_a[:15]}\nonly in ostreefs's: {only_b[:15]}\n"
            + "\n".join(f"differs {k}: {a[k]} vs {b[k]}" for k in differ[:15]))


def entries(root: Path) -> dict[str, str]:
    edir = root / "boot" / "loader" / "entries"
    return {p.name: p.read_text() for p in sorted(edir.iterdir())}


def deployments(root: Path) -> list[Path]:
    ddir = root / "ostree" / "deploy" / OSNAME / "deploy"
    return sorted(p for p in ddir.iterdir() if p.is_dir())
