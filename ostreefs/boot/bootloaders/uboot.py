"""U-Boot: ``boot/loader.N/uEnv.txt``, read by a boot script as ``/boot/loader/uEnv.txt``.

The file is written from scratch each time (as ostree does; settings of one's own belong
in the OS tree's ``usr/lib/ostree-boot/uEnv.txt``, which is appended after the default
entry). The default entry's keys are ``kernel_image``, ``ramdisk_image``, ``fdt_file``,
``fdtdir`` and ``bootargs``; the following entries use the same keys suffixed 2, 3, ...
so a boot script can offer a fallback.
"""

from __future__ import annotations

from pathlib import Path

from ostreefs.boot.bls import BootEntry
from ostreefs.boot.bootloaders._common import join_lines, loader_dir, read_text_in, write_file

CONFIG = "boot/loader/uEnv.txt"
SYSTEM_UENV = "usr/lib/ostree-boot/uEnv.txt"


class UBoot:
    name = "uboot"
    atomic = True

    def write(self, sysroot: Path, bootversion: int, entries: list[BootEntry],
              deployment_roots: list[Path]) -> None:
        system = read_text_in(deployment_roots[0], SYSTEM_UENV) if deployment_roots else None
        write_file(loader_dir(sysroot, bootversion) / "uEnv.txt", render(entries, system))


def render(entries: list[BootEntry], system_uenv: str | None) -> str:
    """uEnv.txt for the entries (default first); ``system_uenv`` follows the first one."""
    lines: list[str] = []
    for i, e in enumerate(entries):
        suffix = "" if i == 0 else str(i + 1)
        lines.append(f"kernel_image{suffix}=/boot{e.linux}")
        if e.initrd:
            lines.append(f"ramdisk_image{suffix}=/boot{e.initrd}")
        if e.devicetree:
            lines.append(f"fdt_file{suffix}=/boot{e.devicetree}")
        if e.fdtdir:
            lines.append(f"fdtdir{suffix}=/boot{e.fdtdir}")
        if e.options:
            lines.append(f"bootargs{suffix}={e.options}")
            if i == 0 and system_uenv is not None:
                lines.append(system_uenv)
    return join_lines(lines)
