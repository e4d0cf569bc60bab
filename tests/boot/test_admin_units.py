"""Kernel discovery, boot checksums and kernel-argument edits (no sysroot needed)."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from ostreefs.boot.kargs import KargError, KernelArgs
from ostreefs.boot.kernel import KernelLayoutError, KernelNotFound, find_kernel
from ostreefs.boot.osrelease import boot_title


def _mods(root: Path, kver: str, **files: bytes) -> Path:
    d = root / "usr/lib/modules" / kver
    d.mkdir(parents=True)
    for name, data in files.items():
        (d / name.replace("_", ".")).write_bytes(data)
    return d


def test_bootcsum_is_sha256_of_kernel_then_initramfs(tmp_path: Path) -> None:
    _mods(tmp_path, "6.1.0-test", vmlinuz=b"KERNELBYTES", initramfs_img=b"INITRDBYTES")
    k = find_kernel(tmp_path)
    assert k.bootcsum == hashlib.sha256(b"KERNELBYTESINITRDBYTES").hexdigest()
    assert (k.kernel_name, k.initramfs_name) == ("vmlinuz-6.1.0-test",
                                                 "initramfs-6.1.0-test.img")


def test_kernel_found_without_hashing(tmp_path: Path) -> None:
    """What deploy checks before the swap (which hashes): the same layout, no checksum."""
    d = _mods(tmp_path, "6.1.0-test", vmlinuz=b"KERNELBYTES", initramfs_img=b"INITRDBYTES")
    (d / "dtb").mkdir()
    (d / "dtb/a.dtb").write_bytes(b"1")
    full = find_kernel(tmp_path)
    assert full.bootcsum == hashlib.sha256(b"KERNELBYTESINITRDBYTES1").hexdigest()
    quick = find_kernel(tmp_path, strict_single=True, checksum=False)
    assert quick.bootcsum == ""
    assert dataclasses.replace(quick, bootcsum=full.bootcsum) == full


def test_devicetree_dir_hashed_sorted(tmp_path: Path) -> None:
    d = _mods(tmp_path, "5.0", vmlinuz=b"K")
    (d / "dtb/b").mkdir(parents=True)
    (d / "dtb/b/x.dtb").write_bytes(b"2")
    (d / "dtb/a.dtb").write_bytes(b"1")
    k = find_kernel(tmp_path)
    assert k.bootcsum == hashlib.sha256(b"K12").hexdigest()
    assert k.dtb_dir == "usr/lib/modules/5.0/dtb" and k.initramfs is None


def test_legacy_layout_and_errors(tmp_path: Path) -> None:
    csum = "ab" * 32
    boot = tmp_path / "usr/lib/ostree-boot"
    boot.mkdir(parents=True)
    (boot / f"vmlinuz-4.0-{csum}").write_bytes(b"K")
    (boot / f"initramfs-4.0-{csum}").write_bytes(b"I")
    k = find_kernel(tmp_path)
    assert (k.bootcsum, k.kver, k.kernel_name) == (csum, "4.0", "vmlinuz-4.0")
    with pytest.raises(KernelNotFound):
        find_kernel(tmp_path / "nothing")
    _mods(tmp_path / "two", "1.0", vmlinuz=b"A", initramfs_img=b"I")
    _mods(tmp_path / "two", "2.0", vmlinuz=b"B", initramfs_img=b"I")
    assert find_kernel(tmp_path / "two").kver == "1.0"  # ostree takes the first
    with pytest.raises(KernelLayoutError, match="Found 2 kernels"):
        find_kernel(tmp_path / "two", strict_single=True)


def test_kargs_edits_as_ostree() -> None:
    k = KernelArgs.parse('root=/dev/vda console=tty0 ostree=/x console=ttyS0 q="a b"')
    assert k.args[-1] == 'q="a b"'
    k.replace("console=ttyS1")
    assert str(k) == 'root=/dev/vda console=ttyS1 ostree=/x q="a b"'
    k.append("console=tty0")
    k.delete("console=tty0")
    assert str(k) == 'root=/dev/vda console=ttyS1 ostree=/x q="a b"'
    k.append_if_missing("root=/dev/sda")
    k.append_if_missing("quiet")
    assert str(k).endswith(" quiet") and "sda" not in str(k)
    with pytest.raises(KargError, match="newline"):
        k.replace("a=b\nc")
    with pytest.raises(KargError, match="No karg"):
        k.delete("nosuch")
    k.append("console=tty9")
    with pytest.raises(KargError, match="Multiple values"):
        k.delete("console")


def test_title(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text('PRETTY_NAME="MyOS 2.0"\nID=myos\n')
    assert boot_title(tmp_path, "2.0", 0, "myos", False) == "MyOS 2.0 (ostree:0)"
    assert boot_title(tmp_path, "3.0", 1, "myos", True) == "MyOS 2.0 3.0 (ostree:myos:1)"


def test_pending_and_rollback_marks() -> None:
    from ostreefs.boot.ops import marks
    from ostreefs.boot.sysroot import Deployment, Sysroot

    deps = [Deployment("os", c * 64, 0, index=i) for i, c in enumerate("abcd")]
    deps.append(Deployment("other", "e" * 64, 0, index=4))
    sr = Sysroot(Path("/nonexistent"), deployments=deps)
    assert [marks(sr, d) for d in deps] == [(False, False)] * 5  # not booted
    sr.booted = deps[1]
    assert [marks(sr, d) for d in deps] == [(True, False), (False, False), (False, True),
                                            (False, False), (False, False)]
