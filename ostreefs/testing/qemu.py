"""Boot a sysroot under QEMU the way a BLS bootloader would, and read what booted.

The sysroot directory becomes an ext4 disk image with ``mkfs.ext4 -d`` (no loop mount,
so no privileges beyond reading the tree; hard links survive). A BLS entry of its
``boot/loader/entries`` (the default, i.e. highest ``version``, or any index) gives the
kernel, initramfs and command line, which are passed to QEMU's ``-kernel``/``-initrd``/
``-append``: exactly what a bootloader reading that entry would load. The serial
console is captured and the tiny OS's marker line parsed.

Acceleration is TCG only: on the machines this runs on, /dev/kvm exists but hangs or
aborts, so it is never probed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ostreefs.boot.bls import BootEntry, sort_entries
from ostreefs.errors import OstreefsError
from ostreefs.testing.initramfs import FAILURE_MARKER
from ostreefs.testing.tinyos import parse_marker

QEMU = "qemu-system-x86_64"
DEFAULT_TIMEOUT = 120.0


class QemuError(OstreefsError):
    """boot test: {}"""


@dataclass
class BootResult:
    """What one boot showed on its console."""

    entry: BootEntry
    index: int
    marker: dict[str, str] | None
    log: str
    seconds: float
    returncode: int | None
    timed_out: bool

    @property
    def booted(self) -> bool:
        """True if the tiny OS's init ran and reported in."""
        return self.marker is not None

    @property
    def deployment(self) -> str | None:
        """``CHECKSUM.SERIAL`` of the deployment that became ``/``, as the guest saw it."""
        return None if self.marker is None else self.marker.get("deploy")

    @property
    def version(self) -> str | None:
        return None if self.marker is None else self.marker.get("version")

    @property
    def failure(self) -> str | None:
        """The initramfs's failure line, a kernel panic line, or None."""
        for line in self.log.splitlines():
            if FAILURE_MARKER in line or "Kernel panic" in line:
                return line.strip()
        return None

    def summary(self) -> str:
        """One line for humans: what booted and how long it took."""
        if self.marker is None:
            why = "timed out" if self.timed_out else (self.failure or "no marker")
            return f"entry {self.index} ({self.entry.title}): did not boot: {why}"
        m = self.marker
        return (f"entry {self.index} booted {m.get('stateroot')} {m.get('deploy')} "
                f"version={m.get('version')} usr={m.get('usr')} var={m.get('var')} "
                f"in {self.seconds:.1f}s")


def boot_entries(sysroot: Path) -> list[BootEntry]:
    """The sysroot's BLS entries in deployment-index order (index 0 is the default)."""
    entries_dir = Path(sysroot) / "boot" / "loader" / "entries"
    if not entries_dir.is_dir():
        raise QemuError(f"{entries_dir} does not exist (nothing deployed?)")
    entries = [BootEntry.parse(p.read_text(), p.name)
               for p in sorted(entries_dir.glob("*.conf"))]
    if not entries:
        raise QemuError(f"no BLS entries in {entries_dir}")
    return sort_entries(entries)


def make_disk_image(sysroot: Path, image: Path, *, size_mb: int | None = None,
                    label: str = "sysroot") -> Path:
    """An ext4 image of the sysroot tree at ``image`` (replaced if it exists)."""
    if size_mb is None:
        used = _tree_bytes(Path(sysroot))
        size_mb = max(64, int(used * 1.5) // (1 << 20) + 32)
    image = Path(image)
    image.unlink(missing_ok=True)
    _check_tool("mkfs.ext4")
    proc = subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(sysroot),
                           str(image), f"{size_mb}M"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise QemuError(f"mkfs.ext4 -d {sysroot} failed: {proc.stderr.strip()}")
    return image


def _tree_bytes(root: Path) -> int:
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += (st.st_size + 4095) // 4096 * 4096
    return total


def _check_tool(name: str) -> None:
    if shutil.which(name) is None:
        raise QemuError(f"{name} is not installed", hint="run tools/install")


def boot_image(sysroot: Path, image: Path, *, index: int = 0,
               timeout: float = DEFAULT_TIMEOUT, memory_mb: int = 512) -> BootResult:
    """Boot entry ``index`` of ``sysroot`` from the disk ``image`` made of it.

    The kernel and initramfs are read from the sysroot directory (what a bootloader
    would read from the image's /boot); the root filesystem is the image.
    """
    entries = boot_entries(sysroot)
    if not 0 <= index < len(entries):
        raise QemuError(f"no boot entry {index}: the sysroot has {len(entries)}")
    entry = entries[index]
    boot_dir = Path(sysroot) / "boot"
    kernel = boot_dir / entry.linux.lstrip("/")
    argv = [QEMU, "-machine", "q35,accel=tcg", "-m", str(memory_mb), "-smp", "1",
            "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(kernel), "-append", entry.options,
            "-drive", f"file={image},format=raw,if=virtio"]
    if entry.initrd is not None:
        argv[argv.index("-append"):argv.index("-append")] = [
            "-initrd", str(boot_dir / entry.initrd.lstrip("/"))]
    return run_qemu(argv, entry, index, timeout)


def run_qemu(argv: list[str], entry: BootEntry, index: int, timeout: float) -> BootResult:
    """Run a QEMU command line to its end (or ``timeout``), console on stdout, parsed."""
    _check_tool(QEMU)
    start = time.monotonic()
    timed_out = False
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout, check=False)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:  # subprocess.run has killed QEMU
        out, rc, timed_out = e.stdout or b"", None, True
    seconds = time.monotonic() - start
    log = out.decode("utf-8", "replace").replace("\r\n", "\n")
    return BootResult(entry=entry, index=index, marker=parse_marker(log), log=log,
                      seconds=seconds, returncode=rc, timed_out=timed_out)


def boot_sysroot(sysroot: Path, image: Path, *, index: int = 0,
                 timeout: float = DEFAULT_TIMEOUT) -> BootResult:
    """Make the disk image of ``sysroot`` and boot its entry ``index`` (0 = default)."""
    make_disk_image(sysroot, image)
    return boot_image(sysroot, image, index=index, timeout=timeout)
