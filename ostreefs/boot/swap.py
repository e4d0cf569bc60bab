"""Writing a new deployment list: the boot configuration swap.

Crash safety rests on one invariant: every file the current ``boot/loader`` target
reaches (its entries, the ``ostree/boot.V`` link their ``ostree=`` names, the
``boot.V.S`` farm behind it, the deployment directories the farm points at and the
kernel files) is complete, and nothing here modifies or deletes any of it before the
switch. The new set is written beside the old one (``loader.<1-V>``,
``ostree/boot.<1-V>`` -> ``boot.<1-V>.S``, new kernel directories, new deployment
directories written by the deploy code beforehand), the filesystems are synced,
and one ``rename`` of ``boot/loader.tmp`` over ``boot/loader`` switches. Only then is
the old set deleted, by the same :func:`~ostreefs.boot.cleanup.cleanup` that tidies
after a crash. When only the deployments behind the same entries changed, the farm
alone is rewritten (``boot.V.<1-S>``) and ``ostree/boot.V`` is switched the same way.

Unlike ostree, nothing reachable from the live loader is ever written in place, and
stale other-version files are removed before the new ones are written, not after, so a
kill between any two writes leaves a sysroot that boots the old or the new default.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.boot import bootloaders, fsattr
from ostreefs.boot.bls import BootEntry
from ostreefs.boot.kernel import KernelLayout, find_kernel
from ostreefs.boot.osrelease import boot_title
from ostreefs.boot.sysroot import (
    Checkpoint,
    Deployment,
    Sysroot,
    SysrootError,
    no_checkpoint,
    read_subbootversion,
)
from ostreefs.errors import ObjectMissing, StoreError
from ostreefs.store.repo import Repo


@dataclass
class SwapResult:
    full_swap: bool
    bootversion: int
    subbootversion: int
    count_change: int
    atomic: bool
    removed: list[Deployment] = field(default_factory=list)

    def message(self) -> str:
        head = "Transaction complete" if self.atomic or not self.full_swap \
            else "Bootloader updated"
        return (f"{head}; bootconfig swap: {'yes' if self.full_swap else 'no'}; "
                f"bootversion: boot.{self.bootversion}.{self.subbootversion}, "
                f"deployment count change: {self.count_change}")


class _Versions:
    """Commit ``version`` metadata, loaded once per commit."""

    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self.cache: dict[str, str | None] = {}

    def get(self, csum: str) -> str | None:
        if csum not in self.cache:
            try:
                self.cache[csum] = self.repo.load_commit(csum).version
            except (ObjectMissing, StoreError):
                self.cache[csum] = None
        return self.cache[csum]


def commit_version(repo: Repo, csum: str) -> str | None:
    return _Versions(repo).get(csum)


def _layouts(sr: Sysroot, deployments: list[Deployment]) -> dict[str, KernelLayout]:
    out: dict[str, KernelLayout] = {}
    for d in deployments:
        layout = find_kernel(sr.deploy_path(d))
        out[d.name + d.osname] = layout
        d.bootcsum = layout.bootcsum
    return out


def assign_bootserials(deployments: list[Deployment]) -> None:
    seen: dict[str, int] = {}
    for d in deployments:
        d.bootserial = seen.get(d.bootcsum, 0)
        seen[d.bootcsum] = d.bootserial + 1


def _bootconfigs_equal(a: Deployment, b: Deployment, versions: _Versions) -> bool:
    if a.bootcsum != b.bootcsum:
        return False
    if a.options.without("ostree").args != b.options.without("ostree").args:
        return False
    return versions.get(a.csum) == versions.get(b.csum)


def _symlink_swap(target: str, link: Path, ckpt: Checkpoint, step: str) -> None:
    """Point ``link`` at ``target`` with one rename (a tmp link renamed over it)."""
    tmp = link.with_name(link.name + ".tmp")
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    ckpt(f"{step}-tmp-link")
    os.rename(tmp, link)
    _fs.fsync_dir(link.parent)
    ckpt(f"{step}-rename")


def _sync(sr: Sysroot) -> None:
    """Make everything written so far durable before the switch."""
    for p in (sr.path, sr.boot):
        _fs.syncfs_path(p)


def _write_farm(sr: Sysroot, bootversion: int, sub: int, deployments: list[Deployment],
                ckpt: Checkpoint) -> None:
    farm = sr.path / "ostree" / f"boot.{bootversion}.{sub}"
    fsattr.rm_rf(farm)
    ckpt("farm-clear")
    farm.mkdir()
    for d in deployments:
        link_dir = farm / d.osname / d.bootcsum
        link_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(f"../../../deploy/{d.osname}/deploy/{d.name}", link_dir / str(d.bootserial))
        ckpt(f"farm-link-{d.index}")


def _install_kernel(sr: Sysroot, d: Deployment, layout: KernelLayout, ckpt: Checkpoint) -> None:
    """``boot/ostree/OS-BOOTCSUM/``: hardlinks of the deployment's files (copies across
    filesystems), each appearing complete under its name or not at all."""
    dest = sr.boot / "ostree" / f"{d.osname}-{d.bootcsum}"
    dest.mkdir(parents=True, exist_ok=True)
    root = sr.deploy_path(d)
    files = list(layout.files())
    if layout.dtb_dir is not None:
        files += [(str(Path(layout.dtb_dir) / rel), f"dtb-{layout.kver}/{rel}")
                  for rel in _walk_files(root / layout.dtb_dir)]
    wrote = False
    for src, name in files:
        target = dest / name
        if os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(_fs.tmp_name())
        try:
            os.link(root / src, tmp)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            shutil.copy2(root / src, tmp)
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(tmp, target)
        wrote = True
        ckpt(f"kernel-{d.osname}-{name}")
    if wrote:
        _fs.fsync_dir(dest)


def _walk_files(base: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for f in sorted(filenames):
            out.append(os.path.relpath(os.path.join(dirpath, f), base))
    return out


def make_entry(sr: Sysroot, d: Deployment, layout: KernelLayout, bootversion: int,
               count: int, several: bool, versions: _Versions) -> BootEntry:
    opts = d.options.copy()
    boot_link = f"/ostree/boot.{bootversion}/{d.osname}/{d.bootcsum}/{d.bootserial}"
    if layout.initramfs_name is None:  # (set before ostree=, as ostree orders them)
        opts.replace(f"init={boot_link}/usr/lib/ostree/ostree-prepare-root")
    opts.replace(f"ostree={boot_link}")
    bootdir = f"/ostree/{d.osname}-{d.bootcsum}"
    d.options = opts
    return BootEntry(
        title=boot_title(sr.deploy_path(d), versions.get(d.csum), d.index, d.osname,
                         several),
        version=str(count - d.index), options=str(opts),
        linux=f"{bootdir}/{layout.kernel_name}",
        initrd=f"{bootdir}/{layout.initramfs_name}" if layout.initramfs_name else None,
        devicetree=f"{bootdir}/{layout.devicetree_name}" if layout.devicetree_name
        else None,
        fdtdir=f"{bootdir}/dtb-{layout.kver}" if layout.dtb_dir else None)


BootloaderWriter = Callable[[Path, int, list[BootEntry], list[Path]], None]


def _select_bootloader(sr: Sysroot, configured: str) -> tuple[bool, BootloaderWriter | None]:
    loader = bootloaders.select(sr.path, configured)
    if loader is None:
        return False, None
    return bool(loader.atomic), loader.write


def write_deployments(sr: Sysroot, new: list[Deployment],
                      checkpoint: Checkpoint | None = None) -> SwapResult:
    """Make ``new`` the deployment list (index order), crash-safely; see the module doc.

    Every deployment directory in ``new`` must already be complete on disk. The caller
    holds the sysroot lock. Afterwards the old set is removed (:func:`cleanup`, without
    a repo prune: the caller decides).
    """
    from ostreefs.boot.cleanup import cleanup_locked

    ckpt = checkpoint or no_checkpoint
    repo = sr.repo()
    versions = _Versions(repo)
    for i, d in enumerate(new):
        d.index = i
    layouts = _layouts(sr, new)
    assign_bootserials(new)
    old = sr.deployments
    full = (not sr.loader_exists or len(old) != len(new)
            or any(not _bootconfigs_equal(a, b, versions) for a, b in zip(old, new,
                                                                          strict=True)))
    atomic = False
    try:
        if not full:
            sub = 1 - sr.subbootversion
            _write_farm(sr, sr.bootversion, sub, new, ckpt)
            _sync(sr)
            ckpt("sync")
            _symlink_swap(f"boot.{sr.bootversion}.{sub}",
                          sr.path / "ostree" / f"boot.{sr.bootversion}", ckpt, "bootlink")
            newv = sr.bootversion
        else:
            newv = 1 - sr.bootversion
            configured = repo.config.get("sysroot", "bootloader") or "auto"
            atomic, writer = _select_bootloader(sr, configured)
            # As ostree: flip whatever a stale link of that version said (after a cleanup
            # there is none, so a full swap's farm is boot.N.1).
            sub = 1 - read_subbootversion(sr.path, newv)
            _clear_version(sr, newv, ckpt)
            for d in new:
                _install_kernel(sr, d, layouts[d.name + d.osname], ckpt)
            _write_farm(sr, newv, sub, new, ckpt)
            os.symlink(f"boot.{newv}.{sub}", sr.path / "ostree" / f"boot.{newv}")
            ckpt("bootlink")
            several = len({d.osname for d in new}) > 1
            entries = [make_entry(sr, d, layouts[d.name + d.osname], newv, len(new),
                                  several, versions) for d in new]
            edir = sr.boot / f"loader.{newv}" / "entries"
            edir.mkdir(parents=True)
            ckpt("entries-dir")
            for d, e in zip(new, entries, strict=True):
                _fs.atomic_write(edir / f"ostree-{len(new) - d.index}-{d.osname}.conf",
                                 e.format().encode("utf-8", "surrogateescape"), fsync=False)
                ckpt(f"entry-{d.index}")
            if writer is not None:
                writer(sr.path, newv, entries, [sr.deploy_path(d) for d in new])
                ckpt("bootloader")
            if not os.path.lexists(sr.boot / "boot"):
                os.symlink(".", sr.boot / "boot")
                ckpt("boot-boot-link")
            _sync(sr)
            ckpt("sync")
            _symlink_swap(f"loader.{newv}", sr.boot / "loader", ckpt, "loader")
    except Exception as e:
        # Nothing written so far is reachable from the live loader: tidy it (best
        # effort; a later cleanup does the same) and report.
        try:
            cleanup_locked(Sysroot.load(sr.path), prune_repo=False)
        except Exception:  # noqa: BLE001,S110 - the original error matters more
            pass
        if not isinstance(e, OSError):
            raise
        raise SysrootError(f"Writing the new boot configuration failed: {e.strerror}"
                           + (f": {e.filename}" if e.filename else ""),
                           hint="the previous boot configuration is still the default") \
            from None
    removed = [d for d in old if not any(d.same(n) for n in new)]
    new_sr = Sysroot.load(sr.path)
    cleanup_locked(new_sr, ckpt, prune_repo=False)
    return SwapResult(full_swap=full, bootversion=newv, subbootversion=sub,
                      count_change=len(new) - len(old), atomic=atomic, removed=removed)


def _clear_version(sr: Sysroot, v: int, ckpt: Checkpoint) -> None:
    """Remove leftovers of bootversion ``v``, which the live loader does not reach."""
    for p in (sr.boot / f"loader.{v}", sr.path / "ostree" / f"boot.{v}",
              sr.path / "ostree" / f"boot.{v}.0", sr.path / "ostree" / f"boot.{v}.1"):
        if os.path.lexists(p):
            fsattr.rm_rf(p)
            ckpt(f"clear-{p.name}")
