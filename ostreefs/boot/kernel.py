"""Finding a deployment's kernel, initramfs and devicetree, and their boot checksum.

The boot checksum names the ``/boot/ostree/OS-BOOTCSUM`` directory, so two
deployments with the same kernel bytes share it. It is computed as ostree computes
it: SHA-256 over the kernel, then the initramfs, then the devicetree (or every file
of a ``dtb/`` directory, walked with sorted names), so ostree and ostreefs agree on
directory names and either tool can clean up after the other.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ostreefs.errors import OstreefsError

MODULES_DIR = "usr/lib/modules"
LEGACY_DIRS = ("usr/lib/ostree-boot", "boot")


class KernelNotFound(OstreefsError):
    """Failed to find kernel in /usr/lib/modules, /usr/lib/ostree-boot or /boot"""


class KernelLayoutError(OstreefsError):
    """{0}"""


@dataclass(frozen=True)
class KernelLayout:
    """Where the boot files are in a deployment (paths relative to its root).

    ``*_name`` are the names the files get in the boot checksum directory.
    """

    kver: str
    kernel: str
    kernel_name: str
    bootcsum: str
    initramfs: str | None = None
    initramfs_name: str | None = None
    devicetree: str | None = None
    devicetree_name: str | None = None
    dtb_dir: str | None = None
    hmac: str | None = None
    hmac_name: str | None = None

    def files(self) -> list[tuple[str, str]]:
        """(path in deployment, name in the boot checksum dir) of each plain file."""
        out = [(self.kernel, self.kernel_name)]
        for src, name in ((self.initramfs, self.initramfs_name),
                          (self.devicetree, self.devicetree_name),
                          (self.hmac, self.hmac_name)):
            if src is not None and name is not None:
                out.append((src, name))
        return out


def _is_reg(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _hash_files(h: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)


def _hash_tree(h: hashlib._Hash, path: Path) -> None:
    for name in sorted(os.listdir(path)):
        child = path / name
        st = os.lstat(child)
        if stat.S_ISDIR(st.st_mode):
            _hash_tree(h, child)
        elif stat.S_ISREG(st.st_mode):
            _hash_files(h, child)


def _modules_layout(root: Path, strict_single: bool, checksum: bool) -> KernelLayout | None:
    mods = root / MODULES_DIR
    try:
        names = sorted(os.listdir(mods))
    except (FileNotFoundError, NotADirectoryError):
        return None
    found = [n for n in names if (mods / n).is_dir() and not (mods / n).is_symlink()
             and _is_reg(mods / n / "vmlinuz")]
    if not found:
        return None
    if strict_single and len(found) > 1:
        raise KernelLayoutError(
            f"Found {len(found)} kernels in /{MODULES_DIR} ({', '.join(found)}); "
            "a deployment boots exactly one")
    kver = found[0]
    d = mods / kver
    rel = f"{MODULES_DIR}/{kver}"
    hashed = [(d / "vmlinuz", False)]  # (path, is a directory), in this order
    initramfs = None
    for cand in ("initramfs.img", "initramfs"):
        if _is_reg(d / cand):
            initramfs = cand
            hashed.append((d / cand, False))
            break
    devicetree = dtb = None
    if _is_reg(d / "devicetree"):
        devicetree = "devicetree"
        hashed.append((d / devicetree, False))
    elif (d / "dtb").is_dir() and not (d / "dtb").is_symlink():
        dtb = "dtb"
        hashed.append((d / dtb, True))
    hmac = ".vmlinuz.hmac" if _is_reg(d / ".vmlinuz.hmac") else None
    bootcsum = ""
    if checksum:
        h = hashlib.sha256()
        for path, is_dir in hashed:
            (_hash_tree if is_dir else _hash_files)(h, path)
        bootcsum = h.hexdigest()
    return KernelLayout(
        kver=kver, kernel=f"{rel}/vmlinuz", kernel_name=f"vmlinuz-{kver}",
        bootcsum=bootcsum,
        initramfs=f"{rel}/{initramfs}" if initramfs else None,
        initramfs_name=f"initramfs-{kver}.img" if initramfs else None,
        devicetree=f"{rel}/{devicetree}" if devicetree else None,
        devicetree_name=f"devicetree-{kver}" if devicetree else None,
        dtb_dir=f"{rel}/{dtb}" if dtb else None,
        hmac=f"{rel}/{hmac}" if hmac else None,
        hmac_name=f".vmlinuz-{kver}.hmac" if hmac else None)


def _legacy_layout(root: Path) -> KernelLayout | None:
    for d in LEGACY_DIRS:
        base = root / d
        if not base.is_dir() or base.is_symlink():
            continue
        kernel = initramfs = devicetree = None
        for name in sorted(os.listdir(base)):
            if not _is_reg(base / name):
                continue
            if name.startswith("vmlinuz-") and kernel is None:
                kernel = name
            elif name.startswith("initramfs-") and initramfs is None:
                initramfs = name
            elif name.startswith("devicetree-") and devicetree is None:
                devicetree = name
        if kernel is None:
            continue
        ver, _, csum = kernel[len("vmlinuz-"):].rpartition("-")
        for other in (initramfs, devicetree):
            if other is not None and other.rpartition("-")[2] != csum:
                raise KernelLayoutError(f"Mismatched boot checksums in /{d}: {kernel} "
                                        f"and {other}")
        strip = f"-{csum}"
        return KernelLayout(
            kver=ver, kernel=f"{d}/{kernel}", kernel_name=kernel.removesuffix(strip),
            bootcsum=csum,
            initramfs=f"{d}/{initramfs}" if initramfs else None,
            initramfs_name=initramfs.removesuffix(strip) if initramfs else None,
            devicetree=f"{d}/{devicetree}" if devicetree else None,
            devicetree_name=devicetree.removesuffix(strip) if devicetree else None)
    return None


def find_kernel(root: str | os.PathLike[str], strict_single: bool = False, *,
                checksum: bool = True) -> KernelLayout:
    """The kernel of the tree at ``root``; see the module docstring for the rules.

    ``strict_single`` refuses a tree with several kernels in ``/usr/lib/modules``
    (ostree boots the first one silently; a new deployment should not). Without
    ``checksum`` the files are found but not read (``bootcsum`` is then empty in the
    ``/usr/lib/modules`` layout): a check that a tree can boot need not hash tens of
    MiB that the boot swap hashes anyway.
    """
    r = Path(root)
    modern = _modules_layout(r, strict_single, checksum)
    if modern is not None and modern.initramfs is not None:
        return modern
    legacy = _legacy_layout(r)
    if modern is None:
        if legacy is None:
            raise KernelNotFound()
        return legacy
    if legacy is not None and legacy.initramfs is not None:
        return legacy
    return modern
