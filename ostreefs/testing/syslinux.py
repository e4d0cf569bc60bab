"""Boot through a real bootloader: SYSLINUX reading the ``syslinux.cfg`` the sysroot got.

With ``sysroot.bootloader=syslinux`` a deploy writes ``boot/loader.N/syslinux.cfg``
(reached through ``boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg``). Here that
config and the ``boot/ostree`` kernels go onto a small FAT disk, SYSLINUX is installed on
it, and SeaBIOS boots it: the bootloader, not this module, picks the ``DEFAULT`` entry and
loads its KERNEL, INITRD and APPEND. The root filesystem stays the ext4 image of the
sysroot on virtio (``root=/dev/vda``).

Why FAT: ``extlinux`` (SYSLINUX for ext4) can only be installed on a mounted filesystem,
and these machines offer no loop mounts; the FAT installer ``syslinux`` works on an
image file through mtools. FAT has no symlinks, hence a separate boot disk holding
``/boot`` with the links resolved (the layout of a separate boot partition).

SYSLINUX's ``linux.c32`` loads bzImages only, so the tiny OS must be built with
``assets.vmlinuz`` (not the uncompressed PVH kernel) for this path; that makes these
boots slower (the decompressor runs under TCG).

The packages (syslinux, syslinux-common, mtools) are downloaded and unpacked into the
same cache as the other boot assets; nothing is installed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from ostreefs.testing.assets import DEFAULT_CACHE_DIR, unpacked_package
from ostreefs.testing.qemu import (
    DEFAULT_TIMEOUT,
    QEMU,
    BootResult,
    QemuError,
    boot_entries,
    run_qemu,
)

PACKAGES = ("syslinux", "syslinux-common", "mtools")
CONFIG = "boot/syslinux/syslinux.cfg"


@dataclass(frozen=True)
class SyslinuxAssets:
    syslinux_root: Path
    common_root: Path
    mtools_root: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment for the installer, which runs mtools commands by name."""
        path = f"{self.mtools_root / 'usr/bin'}:/usr/sbin:/usr/bin:/sbin:/bin"
        return {"PATH": path, "MTOOLS_SKIP_CHECK": "1", "LC_ALL": "C"}

    def tool(self, name: str) -> str:
        root = self.syslinux_root if name == "syslinux" else self.mtools_root
        return str(root / "usr" / "bin" / name)


def fetch_syslinux(cache_dir: Path = DEFAULT_CACHE_DIR) -> SyslinuxAssets:
    """The SYSLINUX installer, its modules and mtools, unpacked in the boot asset cache."""
    roots = [unpacked_package(Path(cache_dir), p) for p in PACKAGES]
    return SyslinuxAssets(*roots)


def _mtools(assets: SyslinuxAssets, argv: list[str]) -> None:
    proc = subprocess.run([assets.tool(argv[0]), *argv[1:]], env=assets.env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise QemuError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def make_boot_disk(sysroot: Path, image: Path, assets: SyslinuxAssets) -> Path:
    """A FAT disk with SYSLINUX installed and the sysroot's /boot (config and kernels)."""
    sysroot = Path(sysroot)
    config = sysroot / CONFIG
    if not config.is_file():
        raise QemuError(f"{config} does not exist or leads nowhere "
                        "(deploy with sysroot.bootloader=syslinux first)")
    kernels = sorted(p for p in (sysroot / "boot" / "ostree").glob("*/*") if p.is_file())
    size = sum(p.stat().st_size for p in kernels) + (8 << 20)
    sectors = (size * 5 // 4 // 512 + 2047) // 2048 * 2048
    image = Path(image)
    image.unlink(missing_ok=True)
    img = f"{image}"
    _mtools(assets, ["mformat", "-i", img, "-C", "-T", str(sectors), "-h", "64", "-s", "32",
                     "-v", "TINYBOOT", "::"])
    dirs = ["::/boot", "::/boot/syslinux", "::/boot/ostree"]
    dirs += sorted({f"::/boot/ostree/{p.parent.name}" for p in kernels})
    _mtools(assets, ["mmd", "-i", img, *dirs])
    for p in kernels:
        _mtools(assets, ["mcopy", "-i", img, str(p), f"::/boot/ostree/{p.parent.name}/{p.name}"])
    _mtools(assets, ["mcopy", "-i", img, str(config.resolve()), "::/boot/syslinux/syslinux.cfg"])
    modules = assets.common_root / "usr/lib/syslinux/modules/bios"
    for name in ("ldlinux.c32",):
        _mtools(assets, ["mcopy", "-o", "-i", img, str(modules / name),
                         f"::/boot/syslinux/{name}"])
    proc = subprocess.run([assets.tool("syslinux"), "--install", "--directory",
                           "/boot/syslinux", img], env=assets.env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise QemuError(f"syslinux --install failed: {proc.stderr.strip()}")
    return image


def boot_with_syslinux(sysroot: Path, root_image: Path, boot_image: Path,
                       assets: SyslinuxAssets, *, timeout: float = DEFAULT_TIMEOUT,
                       memory_mb: int = 512) -> BootResult:
    """Boot from the SYSLINUX disk with the sysroot's ext4 image as the virtio root.

    The result's ``entry`` is the BLS default (index 0): what SYSLINUX should pick.
    """
    entry = boot_entries(sysroot)[0]
    argv = [QEMU, "-machine", "q35,accel=tcg", "-m", str(memory_mb), "-smp", "1",
            "-nographic", "-no-reboot", "-nic", "none",
            "-drive", f"file={root_image},format=raw,if=none,id=root",
            "-device", "virtio-blk-pci,drive=root",
            "-drive", f"file={boot_image},format=raw,if=none,id=boot",
            "-device", "ide-hd,drive=boot,bus=ide.0,bootindex=0"]
    return run_qemu(argv, entry, 0, timeout)
