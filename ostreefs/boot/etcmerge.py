"""The /etc three-way merge a deploy performs, and ``admin config-diff``.

A deployment's ``usr/etc`` holds the OS's defaults and its ``etc`` the machine's state.
What the machine changed (their difference) is carried onto the next deployment's
``etc``, which starts as a copy of its own ``usr/etc``; whatever the machine left alone
takes the new defaults. Local changes always win, whole files at a time, because a
content merge of arbitrary config formats cannot be done safely.

The rules and the odd corners are ostree's (2022.7), so a sysroot merged by either tool
ends up the same:

- "changed" compares type, mode, owner and content (symlinks by target) and ignores
  xattrs: SELinux labels differ between ``usr/etc`` and ``etc`` on every labelled
  system, so an xattr-only change is not carried over;
- a directory whose mode or owner changed is listed as modified but only takes effect
  when something under it is copied (its attributes travel with its children);
- the lists are in GLib's enumeration order (readdir order, sorted by inode in chunks
  of 1000), which is what ``ostree admin config-diff`` prints.

Two deliberate differences: a special file (fifo, socket, device) is skipped wherever
it is, where ostree fails on one inside a copied directory; and nothing is ever reached
through a symlink, where ostree would follow one in the new tree (``etc/x -> /y``) and
write or delete outside the deployment. Every path is walked component by component
with ``O_NOFOLLOW`` directory descriptors, and a non-directory in the way is an error.

Files in the new ``etc`` are never written in place: a copy goes to a temporary name
and is renamed over the old one, so inodes shared with the repository (hardlinked
checkouts) are never modified. Durability is the caller's: a deploy syncs the whole
filesystem once before it switches.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.errors import OstreefsError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: GLib's local enumerator reads this many names at a time and sorts each batch by inode.
_GLIB_CHUNK = 1000
_COPY_CHUNK = 1 << 20


class EtcMergeError(OstreefsError):
    """During /etc merge: {0}"""


class NewlyDirectory(EtcMergeError):
    """During /etc merge: Modified config file newly defaults to directory '{0}', cannot merge"""


class ConfigDiffError(OstreefsError):
    """{0}"""


@dataclass
class EtcMergeResult:
    """What was carried over; the counts are the diff's, as ostree reports them."""

    modified: int
    removed: int
    added: int
    modified_paths: list[str] = field(default_factory=list)
    removed_paths: list[str] = field(default_factory=list)
    added_paths: list[str] = field(default_factory=list)
    #: Special files that were listed but not copied.
    skipped_paths: list[str] = field(default_factory=list)

    def message(self) -> str:
        """ostree's one-line summary, printed by ``admin deploy``."""
        return (f"Copying /etc changes: {self.modified} modified, {self.removed} removed, "
                f"{self.added} added")


@dataclass
class _Diff:
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------ fd plumbing

@contextmanager
def _fd(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _open_dir_of(root: Path, rel: str, what: str) -> int:
    try:
        rfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise EtcMergeError(f"{root}: {e.strerror}") from None
    with _fd(rfd):
        try:
            return _fs.open_dirs(rfd, rel)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise EtcMergeError(f"{what} {root / rel} is not a directory") from None
            raise EtcMergeError(f"{what} {root / rel}: {e.strerror}") from None


def _lstat(dfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _names(dfd: int) -> list[str]:
    """A directory's names in the order GLib enumerates them (ostree's diff order)."""
    with _fd(os.open(".", _DIR_FLAGS, dir_fd=dfd)) as own, os.scandir(own) as it:
        entries = [(e.inode(), e.name) for e in it]
    out: list[str] = []
    for i in range(0, len(entries), _GLIB_CHUNK):
        chunk = entries[i:i + _GLIB_CHUNK]
        chunk.sort(key=lambda pair: pair[0])
        out.extend(name for _, name in chunk)
    return out


def _kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special"


# ------------------------------------------------------------------------------ diff

def _same_content(a_dfd: int, b_dfd: int, name: str) -> bool:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with _fd(os.open(name, flags, dir_fd=a_dfd)) as fa, \
            _fd(os.open(name, flags, dir_fd=b_dfd)) as fb:
        while True:
            ca, cb = os.read(fa, _COPY_CHUNK), os.read(fb, _COPY_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _unchanged(a_dfd: int, b_dfd: int, name: str, sa: os.stat_result,
               sb: os.stat_result) -> bool:
    """Equal as ostree's file checksum without xattrs: mode, owner, then bytes or target."""
    if (sa.st_mode, sa.st_uid, sa.st_gid) != (sb.st_mode, sb.st_uid, sb.st_gid):
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(name, dir_fd=a_dfd) == os.readlink(name, dir_fd=b_dfd)
    if stat.S_ISREG(sa.st_mode):
        return sa.st_size == sb.st_size and _same_content(a_dfd, b_dfd, name)
    return True


def _diff_dirs(a_dfd: int, b_dfd: int, prefix: str, out: _Diff) -> None:
    for name in _names(a_dfd):
        sa = _lstat(a_dfd, name)
        if sa is None:
            continue
        path = prefix + name
        sb = _lstat(b_dfd, name)
        if sb is None:
            out.removed.append(path)
            continue
        kind = _kind(sa.st_mode)
        if kind != _kind(sb.st_mode):
            out.modified.append(path)
            continue
        if not _unchanged(a_dfd, b_dfd, name, sa, sb):
            out.modified.append(path)
        if kind == "dir":
            with _fd(os.open(name, _DIR_FLAGS, dir_fd=a_dfd)) as ca, \
                    _fd(os.open(name, _DIR_FLAGS, dir_fd=b_dfd)) as cb:
                _diff_dirs(ca, cb, path + "/", out)
    for name in _names(b_dfd):
        if _lstat(a_dfd, name) is not None:
            continue
        sb = _lstat(b_dfd, name)
        if sb is None:
            continue
        out.added.append(prefix + name)
        if stat.S_ISDIR(sb.st_mode):
            with _fd(os.open(name, _DIR_FLAGS, dir_fd=b_dfd)) as cb:
                _list_added(cb, prefix + name + "/", out)


def _list_added(dfd: int, prefix: str, out: _Diff) -> None:
    for name in _names(dfd):
        st = _lstat(dfd, name)
        if st is None:
            continue
        out.added.append(prefix + name)
        if stat.S_ISDIR(st.st_mode):
            with _fd(os.open(name, _DIR_FLAGS, dir_fd=dfd)) as child:
                _list_added(child, prefix + name + "/", out)


def _diff_etc(deploy: Path) -> _Diff:
    defaults = _open_dir_of(deploy, "usr/etc", "deployment defaults")
    with _fd(defaults):
        local = _open_dir_of(deploy, "etc", "deployment /etc")
        with _fd(local):
            out = _Diff()
            _diff_dirs(defaults, local, "", out)
            return out


def config_diff(deploy: Path) -> list[tuple[str, str]]:
    """The deployment's local /etc changes, as ``ostree admin config-diff`` lists them.

    ``M`` entries first, then ``D``, then ``A``, each in ostree's order, paths relative
    to /etc. A directory added whole is listed, then everything inside it.
    """
    try:
        d = _diff_etc(deploy)
    except EtcMergeError as e:
        raise ConfigDiffError(str(e).removeprefix("During /etc merge: ")) from None
    except OSError as e:
        raise ConfigDiffError(f"While computing configuration diff: {e.strerror}") from None
    return ([("M", p) for p in d.modified] + [("D", p) for p in d.removed]
            + [("A", p) for p in d.added])


# ----------------------------------------------------------------------------- apply

def merge_etc(merge_deploy: Path, new_deploy: Path) -> EtcMergeResult:
    """Carry ``merge_deploy``'s local /etc changes onto ``new_deploy/etc``.

    ``new_deploy/etc`` must already be a copy of ``new_deploy/usr/etc``. Removals are
    applied first, then modifications, then additions, as ostree does; a local file
    whose new default is a directory stops the merge with :class:`NewlyDirectory`.
    """
    try:
        diff = _diff_etc(merge_deploy)
    except OSError as e:
        raise EtcMergeError(f"While computing configuration diff: {e.strerror}") from None
    result = EtcMergeResult(modified=len(diff.modified), removed=len(diff.removed),
                            added=len(diff.added), modified_paths=diff.modified,
                            removed_paths=diff.removed, added_paths=diff.added)
    local = _open_dir_of(merge_deploy, "etc", "deployment /etc")
    with _fd(local):
        new_etc = _open_dir_of(new_deploy, "etc", "new deployment /etc")
        with _fd(new_etc):
            for path in diff.removed:
                try:
                    _remove(new_etc, path)
                except OSError as e:
                    raise EtcMergeError(f"removing {path}: {e.strerror}") from None
            for path in diff.modified + diff.added:
                try:
                    _carry(local, new_etc, path, result)
                except OSError as e:
                    raise EtcMergeError(f"copying {path}: {e.strerror}") from None
    return result


def copy_usr_etc(deploy: Path) -> None:
    """Make ``deploy/etc`` a copy of ``deploy/usr/etc`` (modes, owners, xattrs, times),
    the new deployment's /etc before any merge. It goes through the same descriptor
    walk as a merge, so a symlink in the tree is copied as a symlink, never followed;
    special files are skipped, as a merge skips them."""
    src = _open_dir_of(deploy, "usr", "deployment /usr")
    with _fd(src):
        dst = _open_dir_of(deploy, "", "deployment")
        with _fd(dst):
            if _lstat(dst, "etc") is not None:
                raise EtcMergeError(f"{deploy / 'etc'} exists beside /usr/etc")
            try:
                _copy_tree(src, "etc", dst, "", EtcMergeResult(0, 0, 0))
            except OSError as e:
                raise EtcMergeError(f"copying /usr/etc to /etc: {e.strerror}") from None


def _split(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


def _remove(new_etc: int, path: str) -> None:
    parent, name = _split(path)
    try:
        pfd = _fs.open_dirs(new_etc, parent)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return  # nothing there below a real directory: nothing to remove
        raise
    with _fd(pfd):
        st = _lstat(pfd, name)
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            _rmtree_at(pfd, name)
        else:
            os.unlink(name, dir_fd=pfd)


def _rmtree_at(parent: int, name: str) -> None:
    with _fd(os.open(name, _DIR_FLAGS, dir_fd=parent)) as dfd:
        for child in os.listdir(dfd):
            st = _lstat(dfd, child)
            if st is not None and stat.S_ISDIR(st.st_mode):
                _rmtree_at(dfd, child)
            else:
                os.unlink(child, dir_fd=dfd)
    os.rmdir(name, dir_fd=parent)


def _carry(local: int, new_etc: int, path: str, result: EtcMergeResult) -> None:
    """Copy one changed path from the local /etc into the new one (ostree's rules)."""
    parent, name = _split(path)
    with _fd(_fs.open_dirs(local, parent)) as src_parent:
        st = _lstat(src_parent, name)
        if st is None:
            raise EtcMergeError(f"{path} vanished from the current /etc")
        dst_parent = _ensure_dir(local, new_etc, parent) if parent else os.dup(new_etc)
        with _fd(dst_parent):
            existing = _lstat(dst_parent, name)
            if existing is not None:
                if stat.S_ISDIR(existing.st_mode):
                    if not stat.S_ISDIR(st.st_mode):
                        raise NewlyDirectory(path)
                    return  # already there; its children are in the lists too
                if stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dst_parent)
            kind = _kind(st.st_mode)
            if kind == "dir":
                _copy_tree(src_parent, name, dst_parent, path, result)
            elif kind == "special":
                _skip(result, path)
            else:
                _copy_file(src_parent, name, dst_parent)


def _skip(result: EtcMergeResult, path: str) -> None:
    # An added directory is copied whole and then its children one by one: note once.
    if path not in result.skipped_paths:
        result.skipped_paths.append(path)


def _ensure_dir(local: int, new_etc: int, path: str) -> int:
    """The directory ``path`` in the new /etc, created if missing, attributes from local.

    As in ostree, the directory itself always takes the local directory's mode, owner
    and xattrs, and so does every missing ancestor that had to be created.
    """
    parent, name = _split(path)
    if parent:
        try:
            pfd = _fs.open_dirs(new_etc, parent)
        except FileNotFoundError:
            pfd = _ensure_dir(local, new_etc, parent)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise EtcMergeError(f"'{parent}' is no longer a directory in the new "
                                    "/etc, cannot merge") from None
            raise
    else:
        pfd = os.dup(new_etc)
    with _fd(pfd):
        try:
            os.mkdir(name, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass
        try:
            dfd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ENOTDIR, errno.ELOOP):
                raise EtcMergeError(f"'{path}' is no longer a directory in the new /etc, "
                                    "cannot merge") from None
            raise
    try:
        with _fd(_fs.open_dirs(local, path)) as src:
            _copy_dir_attrs(src, dfd)
    except BaseException:
        os.close(dfd)
        raise
    return dfd


def _copy_dir_attrs(src: int, dst: int) -> None:
    for key, value in _fs.list_xattrs(src):
        os.setxattr(dst, os.fsdecode(key), value)
    st = os.fstat(src)
    os.fchown(dst, st.st_uid, st.st_gid)
    os.fchmod(dst, stat.S_IMODE(st.st_mode))


def _copy_tree(src_parent: int, name: str, dst_parent: int, path: str,
               result: EtcMergeResult) -> None:
    with _fd(os.open(name, _DIR_FLAGS, dir_fd=src_parent)) as src:
        try:
            os.mkdir(name, 0o700, dir_fd=dst_parent)
        except FileExistsError:
            pass
        with _fd(os.open(name, _DIR_FLAGS, dir_fd=dst_parent)) as dst:
            _copy_dir_attrs(src, dst)
            for child in os.listdir(src):
                st = _lstat(src, child)
                if st is None:
                    continue
                kind = _kind(st.st_mode)
                if kind == "dir":
                    _copy_tree(src, child, dst, f"{path}/{child}", result)
                elif kind == "special":
                    _skip(result, f"{path}/{child}")
                else:
                    _copy_file(src, child, dst)


def _proc_path(dfd: int, name: str) -> str:
    # The only way to reach a symlink's own xattrs relative to a directory fd.
    return f"/proc/self/fd/{dfd}/{name}"


def _copy_file(src_parent: int, name: str, dst_parent: int) -> None:
    """Copy a regular file or symlink with mode, owner, xattrs and times; rename into place."""
    tmp = _fs.tmp_name(".etcmerge-")
    try:
        st = os.stat(name, dir_fd=src_parent, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(name, dir_fd=src_parent), tmp, dir_fd=dst_parent)
            for key, value in _fs.list_xattrs(_proc_path(src_parent, name)):
                os.setxattr(_proc_path(dst_parent, tmp), os.fsdecode(key), value,
                            follow_symlinks=False)
            os.chown(tmp, st.st_uid, st.st_gid, dir_fd=dst_parent, follow_symlinks=False)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_parent,
                     follow_symlinks=False)
        else:
            with _fd(os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=src_parent)) as sfd:
                st = os.fstat(sfd)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                with _fd(os.open(tmp, flags, 0o600, dir_fd=dst_parent)) as dfd:
                    _copy_bytes(sfd, dfd)
                    os.fchown(dfd, st.st_uid, st.st_gid)
                    os.fchmod(dfd, stat.S_IMODE(st.st_mode))
                    for key, value in _fs.list_xattrs(sfd):
                        os.setxattr(dfd, os.fsdecode(key), value)
                    os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.rename(tmp, name, src_dir_fd=dst_parent, dst_dir_fd=dst_parent)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dst_parent)
        except FileNotFoundError:
            pass
        raise


def _copy_bytes(src: int, dst: int) -> None:
    try:
        while os.copy_file_range(src, dst, _COPY_CHUNK * 64):
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    os.lseek(src, 0, os.SEEK_SET)
    os.lseek(dst, 0, os.SEEK_SET)
    os.ftruncate(dst, 0)
    while chunk := os.read(src, _COPY_CHUNK):
        _fs.write_all(dst, chunk)
