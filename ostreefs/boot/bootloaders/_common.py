"""What the bootloader writers share: reading inside a tree, ostree's line joining, and
writing a loader file so that it appears whole or not at all.

Paths a writer reads (``boot/syslinux/syslinux.cfg``, a deployment's ``uEnv.txt``) may
be symlinks, and are meant to be: ``syslinux.cfg -> ../loader/syslinux.cfg`` is how the
atomic swap reaches syslinux. They are resolved with the tree they live in as ``/``,
so an absolute link means what it means at boot and nothing outside the sysroot or the
deployment is ever read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ostreefs import _fs
from ostreefs.errors import OstreefsError

_MAX_LINKS = 40


class BootloaderError(OstreefsError):
    """{0}"""


def resolve_in(root: Path, rel: str) -> Path | None:
    """``rel`` below ``root`` with symlinks followed as if ``root`` were ``/``.

    None when something on the way is missing (a dangling link included).
    """
    todo = [p for p in rel.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        part = todo.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        try:
            st = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise BootloaderError(f"{root / rel}: too many levels of symbolic links")
            target = os.readlink(here)
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p] + todo
            continue
        done.append(part)
    return root.joinpath(*done)


def read_text_in(root: Path, rel: str) -> str | None:
    """The UTF-8 text of ``rel`` inside ``root`` (see :func:`resolve_in`), None if absent."""
    path = resolve_in(root, rel)
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise BootloaderError(f"Reading {root / rel}: {e.strerror}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BootloaderError(f"Reading {root / rel}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BootloaderError(f"Reading {root / rel}: not valid UTF-8") from None


def join_lines(lines: list[str]) -> str:
    """Lines joined the way ostree joins a generated config, blank-line quirk included.

    A leading empty line is dropped, and so is every empty line after the first one:
    ostree never resets its "previous line was empty" flag, and byte-equal output with
    ostree's is what lets a sysroot move between the two tools without churn.
    """
    out: list[str] = []
    seen_empty = False
    for i, line in enumerate(lines):
        if line == "":
            if seen_empty or i == 0:
                continue
            seen_empty = True
        out.append(line + "\n")
    return "".join(out)


def loader_dir(sysroot: Path, bootversion: int) -> Path:
    """``boot/loader.N``, which must be a real directory (the caller made its entries)."""
    d = sysroot / "boot" / f"loader.{bootversion}"
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        os.mkdir(d, 0o755)
        return d
    if not stat.S_ISDIR(st.st_mode):
        raise BootloaderError(f"{d} is not a directory")
    return d


def write_file(path: Path, text: str) -> None:
    """tmp + fsync + rename: a reader sees the old file or the complete new one."""
    try:
        _fs.atomic_write(path, text.encode("utf-8"), fsync=True, mode=0o644)
    except OSError as e:
        raise BootloaderError(f"Writing {path}: {e.strerror}") from None
