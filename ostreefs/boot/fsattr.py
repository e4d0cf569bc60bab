"""The immutable attribute on deployment roots, and removing trees that carry it.

ostree marks each deployment root immutable (``chattr +i``) so that nothing renames or
deletes it by accident; only the sysroot code clears the flag before a deployment is
deleted. Filesystems without inode flags (tmpfs, overlayfs) refuse the ioctl: a
deployment there is simply not protected, which is not an error.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import shutil
import stat

_FS_IOC_GETFLAGS = 0x80086601
_FS_IOC_SETFLAGS = 0x40086602
_FS_IMMUTABLE_FL = 0x00000010
_UNSUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def set_immutable(path: str | os.PathLike[str], on: bool) -> bool:
    """Set or clear the flag on a directory; False when the filesystem has no flags."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        buf = array.array("l", [0])
        try:
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return False
            raise
        flags = buf[0]
        new = flags | _FS_IMMUTABLE_FL if on else flags & ~_FS_IMMUTABLE_FL
        if new == flags:
            return True
        buf[0] = new
        try:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, buf, True)
        except OSError as e:
            if e.errno in _UNSUPPORTED:
                return False
            raise
        return True
    finally:
        os.close(fd)


def rm_rf(path: str | os.PathLike[str]) -> None:
    """Remove a file or tree if present, clearing the root's immutable flag first."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    set_immutable(path, False)
    shutil.rmtree(path)
