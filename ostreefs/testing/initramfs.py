"""The tiny OS's initramfs: mount the root disk and hand it to the real ostree-prepare-root.

What runs in the guest is deliberately the same component a production OSTree system
runs (Debian's ``ostree-prepare-root``), so a boot judges the sysroot ostreefs wrote, not
our own idea of it. Around it is only what a kernel needs to reach it: busybox, the
kernel modules for the root disk (virtio-blk and ext4, in dependency order), and the
binary's shared libraries at the paths the dynamic loader looks for them.

The archive is written here (newc cpio, gzip) rather than with ``find | cpio`` so that
its bytes depend only on its inputs: the same assets give the same initramfs, hence
the same boot checksum, in every commit of the tiny OS.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ostreefs.testing.assets import BootAssetError, BootAssets

#: Modules for a virtio-blk ext4 root, as names; their dependencies are added from
#: modules.dep. crc32c_generic is only a soft dependency of ext4/jbd2 (via the crypto
#: API), which modules.dep does not list, so it is named explicitly.
VIRTIO_EXT4_MODULES = ("virtio_pci", "virtio_blk", "crc32c_generic", "ext4")

#: Printed on the console when the initramfs gives up (then it powers the guest off).
FAILURE_MARKER = "OSTREEFS-INITRAMFS-FAILED"

INIT_SCRIPT = f"""#!/bin/busybox sh
# The tiny OS initramfs (ostreefs.testing.initramfs).
/bin/busybox --install -s /bin
export PATH=/bin
fail() {{ echo "{FAILURE_MARKER}: $*"; poweroff -f; }}
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || fail "mount /run"
while read -r mod; do
    insmod "/lib/modules/$mod" || fail "insmod $mod"
done < /lib/modules/load-order
root=
for arg in $(cat /proc/cmdline); do
    case "$arg" in root=*) root="${{arg#root=}}";; esac
done
[ -n "$root" ] || fail "no root= on the kernel command line"
n=0
while [ ! -b "$root" ]; do
    n=$((n + 1)); [ "$n" -gt 400 ] && fail "no block device $root"
    sleep 0.05
done
mount -t ext4 -o rw "$root" /sysroot || fail "mount $root on /sysroot"
# Without systemd to mount /var from a generated unit, ask prepare-root to do it.
mkdir -p /run/ostree && touch /run/ostree/initramfs-mount-var
/usr/lib/ostree/ostree-prepare-root /sysroot || fail "ostree-prepare-root /sysroot"
for m in run proc sys dev; do
    mount --move "/$m" "/sysroot/$m" || fail "move /$m"
done
exec switch_root /sysroot /sbin/init
"""


@dataclass(frozen=True)
class CpioEntry:
    """One archive member: ``data`` is file content, or the target of a symlink."""

    path: str
    mode: int
    data: bytes = b""


def module_load_order(modules_dir: Path, names: Iterable[str]) -> list[str]:
    """Module paths (relative to ``modules_dir``) to insmod, each after its dependencies."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    dep_file = modules_dir / "modules.dep"
    try:
        text = dep_file.read_text()
    except FileNotFoundError:
        raise BootAssetError(f"{dep_file} is missing", hint="run depmod -b") from None
    for line in text.splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    order: list[str] = []
    seen: set[str] = set()

    def visit(path: str) -> None:
        if path in seen:
            return
        seen.add(path)
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in names:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise BootAssetError(f"kernel module {name} is not in {dep_file}")
        visit(found)
    return order


def _module_name(path: str) -> str:
    base = path.rsplit("/", 1)[-1]
    return re.sub(r"\.ko(\.\w+)?$", "", base).replace("-", "_")


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries ``binary`` loads (loader included), as ``ldd`` resolves them here."""
    proc = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BootAssetError(f"ldd {binary} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    libs: list[Path] = []
    for line in proc.stdout.splitlines():
        m = re.match(r"\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)", line)
        if m:
            libs.append(Path(m.group(1)))
        elif "=>" in line and "not found" in line:
            raise BootAssetError(f"{binary} needs a library this host lacks: {line.strip()}")
    return libs


def initramfs_entries(assets: BootAssets,
                      modules: Sequence[str] = VIRTIO_EXT4_MODULES) -> list[CpioEntry]:
    """Every member of the initramfs, in archive order (parents before children)."""
    files: dict[str, CpioEntry] = {}

    def add_file(path: str, data: bytes, mode: int = 0o644) -> None:
        files[path] = CpioEntry(path, stat.S_IFREG | mode, data)

    add_file("init", INIT_SCRIPT.encode(), 0o755)
    add_file("bin/busybox", assets.busybox.read_bytes(), 0o755)
    add_file("usr/lib/ostree/ostree-prepare-root", assets.prepare_root.read_bytes(), 0o755)
    for lib in shared_libraries(assets.prepare_root):
        # At the path the loader looks up (which may be a merged-/usr symlink here),
        # with the content of the file it points to.
        add_file(str(lib).lstrip("/"), lib.resolve().read_bytes(), 0o755)
    order = module_load_order(assets.modules_dir, modules)
    for rel in order:
        add_file(f"lib/modules/{Path(rel).name}", (assets.modules_dir / rel).read_bytes())
    add_file("lib/modules/load-order", "".join(Path(r).name + "\n" for r in order).encode())

    dirs = {"dev", "proc", "sys", "run", "sysroot", "tmp"}
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs)]
    entries += [files[p] for p in sorted(files)]
    return entries


def newc_archive(entries: Iterable[CpioEntry]) -> bytes:
    """A cpio archive in the kernel's "newc" format, timestamps and owners zeroed."""
    out = bytearray()

    def member(ino: int, name: str, mode: int, data: bytes, nlink: int) -> None:
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out.extend(b"070701" + "".join(f"{v:08x}" for v in fields).encode())
        out.extend(encoded)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, e in enumerate(entries, start=1):
        if ".." in e.path.split("/") or e.path.startswith("/"):
            raise BootAssetError(f"refusing archive member {e.path!r}")
        member(ino, e.path, e.mode, e.data, 2 if stat.S_ISDIR(e.mode) else 1)
    member(0, "TRAILER!!!", 0, b"", 1)
    return bytes(out)


def build_initramfs(assets: BootAssets,
                    modules: Sequence[str] = VIRTIO_EXT4_MODULES) -> bytes:
    """The gzip-compressed initramfs image (deterministic for given assets)."""
    archive = newc_archive(initramfs_entries(assets, modules))
    return gzip.compress(archive, compresslevel=6, mtime=0)


def write_initramfs(assets: BootAssets, dest: Path,
                    modules: Sequence[str] = VIRTIO_EXT4_MODULES) -> Path:
    """Write the initramfs to ``dest`` (through a temp file and rename)."""
    data = build_initramfs(assets, modules)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, dest)
    return dest
