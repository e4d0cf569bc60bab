"""The boot test's downloaded parts: a Debian kernel, Debian's ostree-prepare-root, busybox.

They come from the package registry with ``apt-get download`` and are unpacked with
``dpkg-deb -x`` (nothing is installed on the host), once, into a cache directory that
every later run reuses without asking the registry again. That keeps a boot test
offline and fast after the first run, and lets CI pre-fetch them (``tools/boot-assets``).

Cache layout (all names are Debian package file names, so several versions can sit side
by side)::

    CACHE/debs/PKG_VER_ARCH.deb
    CACHE/root/PKG_VER_ARCH/...      unpacked; the kernel's has modules.dep (depmod -b)
"""

from __future__ import annotations

import fcntl
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ostreefs.errors import OstreefsError

DEFAULT_CACHE_DIR = Path("/var/cache/ostreefs-testing")

#: The metapackage whose dependency names the current kernel image package.
KERNEL_METAPACKAGE = "linux-image-amd64"
OSTREE_BOOT_PACKAGE = "ostree-boot"
BUSYBOX_PACKAGE = "busybox-static"


class BootAssetError(OstreefsError):
    """boot assets: {}"""


@dataclass(frozen=True)
class BootAssets:
    """Where the unpacked packages are; everything a tiny OS and its initramfs need."""

    kernel_version: str
    kernel_root: Path
    ostree_boot_root: Path
    busybox_root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.kernel_root / "boot" / f"vmlinuz-{self.kernel_version}"

    @property
    def vmlinux(self) -> Path:
        """The same kernel uncompressed (an ELF with a PVH note); see :func:`pvh_kernel`."""
        return self.kernel_root / "boot" / f"vmlinux-{self.kernel_version}"

    @property
    def modules_dir(self) -> Path:
        return self.kernel_root / "lib" / "modules" / self.kernel_version

    @property
    def prepare_root(self) -> Path:
        """Debian's real ``ostree-prepare-root``: it, not ostreefs, judges the sysroot."""
        return self.ostree_boot_root / "usr" / "lib" / "ostree" / "ostree-prepare-root"

    @property
    def busybox(self) -> Path:
        return self.busybox_root / "bin" / "busybox"


def fetch_assets(cache_dir: Path = DEFAULT_CACHE_DIR, *, refresh: bool = False) -> BootAssets:
    """The boot assets, downloaded and unpacked into ``cache_dir`` on first use.

    A cached copy is used as is, without asking the registry, unless ``refresh`` is set
    (then a newer kernel or package, if the registry has one, is fetched beside it).
    """
    cache_dir = Path(cache_dir)
    (cache_dir / "debs").mkdir(parents=True, exist_ok=True)
    (cache_dir / "root").mkdir(exist_ok=True)
    with _cache_lock(cache_dir):
        kernel_pkg = None if refresh else _newest_cached(cache_dir, "linux-image-", "-amd64")
        if kernel_pkg is None:
            kernel_pkg = _kernel_package()
        kernel_root = _unpacked(cache_dir, kernel_pkg, refresh, _depmod)
        ostree_boot_root = _unpacked(cache_dir, OSTREE_BOOT_PACKAGE, refresh)
        busybox_root = _unpacked(cache_dir, BUSYBOX_PACKAGE, refresh)
    kver = _kernel_version(kernel_root)
    assets = BootAssets(kver, kernel_root, ostree_boot_root, busybox_root)
    for need in (assets.vmlinuz, assets.prepare_root, assets.busybox):
        if not need.is_file():
            raise BootAssetError(f"{need} is missing from the unpacked package",
                                 hint=f"remove {cache_dir} and fetch again")
    return assets


def unpacked_package(cache_dir: Path, package: str, *, refresh: bool = False) -> Path:
    """Any other package, downloaded and unpacked into the cache like the boot assets."""
    cache_dir = Path(cache_dir)
    (cache_dir / "debs").mkdir(parents=True, exist_ok=True)
    (cache_dir / "root").mkdir(exist_ok=True)
    with _cache_lock(cache_dir):
        return _unpacked(cache_dir, package, refresh)


def pvh_kernel(assets: BootAssets) -> Path:
    """The kernel as an uncompressed ELF, unpacked from the bzImage once and cached.

    QEMU starts such a kernel directly (PVH entry point) instead of running the bzImage's
    real-mode setup and decompressor under TCG, which is where most of a boot's time
    went: measured 3.5 s instead of 10 s a boot. It is the very same Debian kernel; only
    a bootloader that needs a bzImage (GRUB, syslinux) must be given ``assets.vmlinuz``.
    """
    out = assets.vmlinux
    if out.is_file():
        return out
    image = assets.vmlinuz.read_bytes()
    elf = _decompress_payload(image)
    if elf[:4] != b"\x7fELF":
        raise BootAssetError(f"{assets.vmlinuz}: the compressed payload is not an ELF kernel")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_bytes(elf)
    os.replace(tmp, out)
    return out


def _decompress_payload(image: bytes) -> bytes:
    # A bzImage embeds its kernel as one compressed stream after the setup code; find
    # the first stream header that decompresses (xz for Debian, gzip elsewhere).
    for magic in (b"\xfd7zXZ\x00", b"\x1f\x8b\x08"):
        start = image.find(magic)
        while start >= 0:
            try:
                if magic.startswith(b"\xfd"):
                    return lzma.LZMADecompressor().decompress(image[start:])
                return zlib.decompressobj(31).decompress(image[start:])
            except (lzma.LZMAError, zlib.error):
                start = image.find(magic, start + 1)
    raise BootAssetError("no xz or gzip kernel payload found in the bzImage")


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    # Two test runs (or tools/boot-assets and a test) may fill the cache at once.
    fd = os.open(cache_dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True,
                              check=False)
    except FileNotFoundError:
        raise BootAssetError(f"{argv[0]} is not installed",
                             hint="run tools/install (it installs the boot test's tools)") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BootAssetError(f"{' '.join(argv)} failed: {last}")
    return proc.stdout


def _kernel_package() -> str:
    """The versioned kernel image package that the metapackage currently depends on."""
    out = _run(["apt-cache", "depends", KERNEL_METAPACKAGE])
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if m:
            return m.group(1)
    raise BootAssetError(f"{KERNEL_METAPACKAGE} names no kernel image package",
                         hint="run apt-get update")


def _newest_cached(cache_dir: Path, prefix: str, suffix: str = "") -> str | None:
    """The package name of the newest unpacked package named PREFIX...SUFFIX, if any."""
    names = []
    for d in (cache_dir / "root").iterdir():
        pkg = d.name.split("_", 1)[0]
        if d.is_dir() and pkg.startswith(prefix) and pkg.endswith(suffix):
            names.append(pkg)
    if not names:
        return None
    return max(names, key=lambda n: [int(x) if x.isdigit() else -1
                                     for x in re.split(r"[.-]", n)])


def _unpacked(cache_dir: Path, package: str, refresh: bool,
              prepare: Callable[[Path], None] | None = None) -> Path:
    """The unpacked root of ``package`` (downloading and unpacking it if needed)."""
    roots = cache_dir / "root"
    if not refresh:
        have = sorted(d for d in roots.iterdir() if d.name.split("_", 1)[0] == package)
        if have:
            return have[-1]
    deb = _download(cache_dir, package)
    dest = roots / deb.name[: -len(".deb")]
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=roots))
    try:
        _run(["dpkg-deb", "-x", str(deb), str(tmp)])
        if prepare is not None:
            prepare(tmp)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _download(cache_dir: Path, package: str) -> Path:
    """``apt-get download package`` into the cache (atomically: a temp dir, then rename)."""
    debs = cache_dir / "debs"
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=debs))
    try:
        # apt's sandbox user cannot write into a root-only temp dir; let it in.
        tmp.chmod(0o755)
        _run(["apt-get", "download", "-q", package], cwd=tmp)
        got = [p for p in tmp.iterdir() if p.name.endswith(".deb")]
        if len(got) != 1:
            raise BootAssetError(f"apt-get download {package} gave {len(got)} .deb files")
        final = debs / got[0].name
        os.replace(got[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kernel_version(kernel_root: Path) -> str:
    mods = kernel_root / "lib" / "modules"
    versions = sorted(p.name for p in mods.iterdir()) if mods.is_dir() else []
    if len(versions) != 1:
        raise BootAssetError(f"{kernel_root}: expected one kernel under lib/modules, "
                             f"found {versions}")
    return versions[0]


def _depmod(root: Path) -> None:
    # The package ships no modules.dep; the initramfs builder needs it to order modules.
    _run(["depmod", "-b", str(root), _kernel_version(root)])
