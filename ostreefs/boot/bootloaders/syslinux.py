"""syslinux/extlinux: ``boot/loader.N/syslinux.cfg``, reached through
``boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg`` so the loader swap switches it.

The lines of the current config that are not ostree's survive (global settings, other
systems' LABELs); ostree's own LABELs, recognised by a KERNEL under ``/ostree/`` or
``/boot/ostree/``, are regenerated from the entries. Kernel paths get a ``/boot``
prefix: syslinux reads the filesystem it was installed on, where that works whether
``/boot`` is a directory of the root filesystem or a partition of its own (the sysroot's
``boot/boot -> .`` link).

One deliberate difference from ostree 2022.7: a ``DEFAULT`` line naming something else
than an ostree entry is kept. ostree drops it (and does not write its own either),
which silently changes what the machine boots.
"""

from __future__ import annotations

from pathlib import Path

from ostreefs.boot.bls import BootEntry
from ostreefs.boot.bootloaders._common import (
    BootloaderError,
    join_lines,
    loader_dir,
    read_text_in,
    write_file,
)

CONFIG = "boot/syslinux/syslinux.cfg"
_OSTREE_KERNELS = ("/ostree/", "/boot/ostree/")


class Syslinux:
    name = "syslinux"
    atomic = True

    def write(self, sysroot: Path, bootversion: int, entries: list[BootEntry],
              deployment_roots: list[Path]) -> None:
        current = read_text_in(sysroot, CONFIG) or ""
        text = render(current, entries)
        write_file(loader_dir(sysroot, bootversion) / "syslinux.cfg", text)


def render(current: str, entries: list[BootEntry]) -> str:
    """The new syslinux.cfg from the current one and the entries (default first)."""
    out: list[str] = []
    label: list[str] = []
    in_label = False
    kernel: str | None = None  # like ostree, not reset between LABELs
    saw_default = regenerate_default = False

    def end_label() -> None:
        if kernel is None:
            raise BootloaderError(f"{CONFIG}: No KERNEL argument found after LABEL")
        if not kernel.startswith(_OSTREE_KERNELS):
            out.extend(label)

    for line in current.split("\n"):
        if in_label and not line.startswith("\t"):
            end_label()
            in_label = False
        if not in_label and line.startswith("LABEL "):
            in_label = True
            label = []
        elif in_label and line.startswith("\tKERNEL "):
            kernel = line[len("\tKERNEL "):]
        elif not in_label and line.startswith("DEFAULT "):
            saw_default = True
            if line.startswith("DEFAULT ostree:") or "(ostree" in line:
                regenerate_default = True
                continue
        (label if in_label else out).append(line)
    if in_label:
        end_label()
    if not saw_default:
        regenerate_default = True

    for i, e in enumerate(entries):
        title = e.title or "(Untitled)"
        if regenerate_default and i == 0:
            out.append(f"DEFAULT {title}")
        out.append(f"LABEL {title}")
        out.append(f"\tKERNEL /boot{e.linux}")
        if e.initrd:
            out.append(f"\tINITRD /boot{e.initrd}")
        if e.devicetree:
            out.append(f"\tDEVICETREE /boot{e.devicetree}")
        if e.options:
            out.append(f"\tAPPEND {e.options}")
    return join_lines(out)
