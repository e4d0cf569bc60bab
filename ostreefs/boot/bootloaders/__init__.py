"""Bootloader configuration writers, chosen as ostree chooses them.

BLS entries (``boot/loader.N/entries``) are always written by the deploy code and are
the source of truth; a backend translates them into what a bootloader that does not
read BLS needs, inside ``boot/loader.N`` when it can, so the same atomic ``boot/loader``
swap that switches the entries switches the backend's file too. The caller writes the
entries, then calls :meth:`Bootloader.write` for the new bootversion, then swaps.

The backend comes from the repo config key ``sysroot.bootloader``: ``none``, ``grub2``,
``syslinux``, ``uboot``, or ``auto`` (the default), which probes the sysroot in ostree's
order: syslinux, grub2, u-boot; no match means BLS entries only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Protocol

from ostreefs.boot.bls import BootEntry
from ostreefs.boot.bootloaders._common import BootloaderError, resolve_in
from ostreefs.boot.bootloaders.grub2 import Grub2
from ostreefs.boot.bootloaders.syslinux import Syslinux
from ostreefs.boot.bootloaders.uboot import UBoot
from ostreefs.store.config import KeyFile

__all__ = ["Bootloader", "BootloaderError", "Grub2", "Syslinux", "UBoot", "select",
           "CHOICES"]

CHOICES = ("auto", "none", "grub2", "syslinux", "uboot", "zipl")
GRUB2_BIOS_CONFIGS = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg")
EFI_DIR = "boot/efi/EFI"


class Bootloader(Protocol):
    """One backend. ``atomic``: whether its output switches with the loader swap."""

    name: str
    atomic: bool

    def write(self, sysroot: Path, bootversion: int, entries: list[BootEntry],
              deployment_roots: list[Path]) -> None:
        """Write the config for ``bootversion``; ``entries`` default first,
        ``deployment_roots[i]`` the deployment directory of ``entries[i]``."""
        ...


def select(sysroot: Path, configured: str = "auto") -> Bootloader | None:
    """The backend for ``sysroot``, or None for BLS entries only.

    ``configured`` is the ``sysroot.bootloader`` value. zipl (s390x) is refused rather
    than half-supported: it rewrites the IPL record, which cannot be tested here.
    """
    value = configured.strip() or "auto"
    if value == "none":
        return None
    if value == "zipl":
        raise BootloaderError("sysroot.bootloader=zipl is not supported by ostreefs",
                              hint="use 'none' and run zipl yourself, or 'auto'")
    if value == "syslinux":
        return Syslinux()
    if value == "uboot":
        return UBoot()
    if value == "grub2":
        return _grub2(sysroot, explicit=True)
    if value != "auto":
        raise BootloaderError(f"Invalid bootloader configuration: '{configured}'",
                              hint="expected one of " + ", ".join(CHOICES))
    if _lexists(sysroot / "boot/syslinux/syslinux.cfg"):
        return Syslinux()
    grub = _grub2(sysroot, explicit=False)
    if grub is not None:
        return grub
    if _lexists(sysroot / "boot/loader/uEnv.txt"):
        return UBoot()
    return None


def _lexists(path: Path) -> bool:
    return os.path.lexists(path)


def _grub2(sysroot: Path, explicit: bool) -> Grub2 | None:
    generator = _generator(sysroot)
    if any(_exists_in(sysroot, c) for c in GRUB2_BIOS_CONFIGS):
        return Grub2(generator=generator)
    efi = _efi_config(sysroot)
    if efi is not None:
        return Grub2(efi_config=efi, generator=generator)
    return Grub2(generator=generator) if explicit else None


def _exists_in(root: Path, rel: str) -> bool:
    # GRUB's probe follows symlinks (a dangling grub.cfg link does not count).
    return resolve_in(root, rel) is not None


def _efi_config(sysroot: Path) -> Path | None:
    """The first ``boot/efi/EFI/VENDOR/grub.cfg`` (VENDOR not ``BOOT``), by name."""
    base = sysroot / EFI_DIR
    try:
        names = sorted(os.listdir(base))
    except (FileNotFoundError, NotADirectoryError):
        return None
    for name in names:
        if name == "BOOT":
            continue
        try:
            if not stat.S_ISDIR(os.lstat(base / name).st_mode):
                continue
        except FileNotFoundError:
            continue
        found = resolve_in(sysroot, f"{EFI_DIR}/{name}/grub.cfg")
        if found is not None:
            return found
    return None


def _generator(sysroot: Path) -> str | None:
    """``[sysroot] grub2-generator`` from the sysroot's repo config, if set."""
    try:
        text = (sysroot / "ostree/repo/config").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    value = KeyFile(text).get("sysroot", "grub2-generator")
    return value.strip() if value and value.strip() else None
