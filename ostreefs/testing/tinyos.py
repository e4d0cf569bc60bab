"""A tiny bootable OS tree, shaped for ``ostree admin deploy``.

The tree is a merged-/usr busybox system with a Debian kernel and the initramfs from
:mod:`ostreefs.testing.initramfs` under ``usr/lib/modules/KVER/``, an empty ``sysroot/``
(where ostree-prepare-root moves the physical root) and ``ostree -> sysroot/ostree``.
Its ``/sbin/init`` reports, on the serial console, which deployment it booted as and
whether the deployment is set up as OSTree promises (``/`` is the deployment directory,
``/usr`` read-only, ``/var`` the stateroot's and writable), then powers off. One
``OSTREEFS-BOOTED key=value ...`` line carries all of it; :func:`parse_marker` reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ostreefs.testing.assets import BootAssets, pvh_kernel

OS_NAME = "tinyos"
MARKER = "OSTREEFS-BOOTED"

# The guest's PID 1. Each probe's result becomes one key of the marker line.
INIT_SCRIPT = f"""#!/bin/sh
# The tiny OS's /sbin/init (ostreefs.testing.tinyos).
export PATH=/usr/bin:/usr/sbin
ostree=
for arg in $(cat /proc/cmdline); do
    case "$arg" in ostree=*) ostree="${{arg#ostree=}}";; esac
done
. /usr/lib/os-release
deploy=$(readlink -f "/sysroot$ostree")
stateroot=${{deploy%/deploy/*}}
stateroot=${{stateroot##*/}}
root=other
[ -n "$ostree" ] && [ "$(stat -c %d:%i /)" = "$(stat -c %d:%i "$deploy")" ] && root=deployment
usr=rw
if touch /usr/.ostreefs-probe 2>/dev/null; then rm -f /usr/.ostreefs-probe; else usr=ro; fi
var=ro
echo "booted $VERSION" >> /var/ostreefs-boots && var=rw
if [ "$(stat -c %d:%i /var)" = "$(stat -c %d:%i "/sysroot/ostree/deploy/$stateroot/var")" ]
then varsrc=stateroot; else varsrc=other; fi
booted=no
[ -e /run/ostree-booted ] && booted=yes
etc=$(cat /etc/tinyos-release 2>/dev/null)
echo "{MARKER} version=$VERSION deploy=${{deploy##*/}} stateroot=$stateroot" \\
     "ostree=$ostree root=$root usr=$usr var=$var varsrc=$varsrc ostree-booted=$booted" \\
     "etc=$etc"
sync
poweroff -f
"""


def parse_marker(log: str) -> dict[str, str] | None:
    """The key=value fields of the last marker line in a console log (None if absent)."""
    found: dict[str, str] | None = None
    for line in log.splitlines():
        at = line.find(MARKER + " ")
        if at < 0:
            continue
        fields: dict[str, str] = {}
        for word in line[at + len(MARKER) + 1:].split():
            key, sep, value = word.partition("=")
            if sep:
                fields[key] = value
        found = fields
    return found


def build_tree(dest: Path, assets: BootAssets, initramfs: bytes, *, version: str,
               pretty_name: str = "Tiny OS", kernel: Path | None = None) -> Path:
    """Write the tiny OS for release ``version`` into the new directory ``dest``.

    ``version`` becomes os-release's VERSION (what the guest reports) and should also be
    the commit's ``version`` metadata, which ostree shows in the BLS title and status.
    ``kernel`` defaults to the uncompressed kernel (:func:`pvh_kernel`, three times
    faster to boot under QEMU); pass ``assets.vmlinuz`` for a bootloader that needs a
    bzImage.
    """
    dest.mkdir(parents=True)

    def write(rel: str, data: bytes, mode: int = 0o644) -> None:
        p = dest / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)

    for d in ("dev", "proc", "sys", "run", "sysroot", "var", "home", "usr/sbin"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    for d, mode in (("tmp", 0o1777), ("root", 0o700)):
        (dest / d).mkdir()
        (dest / d).chmod(mode)
    for name, target in (("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"),
                         ("ostree", "sysroot/ostree")):
        (dest / name).symlink_to(target)

    write("usr/bin/busybox", assets.busybox.read_bytes(), 0o755)
    for applet in ("sh", "cat", "readlink", "stat", "touch", "rm", "sync", "poweroff"):
        (dest / "usr/bin" / applet).symlink_to("busybox")
    write("usr/sbin/init", INIT_SCRIPT.encode(), 0o755)

    kdir = f"usr/lib/modules/{assets.kernel_version}"
    (dest / kdir).mkdir(parents=True)
    shutil.copyfile(kernel or pvh_kernel(assets), dest / kdir / "vmlinuz")
    write(f"{kdir}/initramfs.img", initramfs)

    os_id = pretty_name.lower().replace(" ", "")
    write("usr/lib/os-release",
          (f'NAME="{pretty_name}"\nID={os_id}\nVERSION="{version}"\n'
           f'VERSION_ID="{version}"\nPRETTY_NAME="{pretty_name}"\n').encode())
    (dest / "usr/etc").mkdir()
    (dest / "usr/etc/os-release").symlink_to("../lib/os-release")
    write("usr/etc/hostname", b"tinyos\n")
    write("usr/etc/tinyos-release", f"{version}\n".encode())
    return dest
