"""A sysroot holding the tiny OS, driven through ostree's command lines, and the boot demo.

:class:`TinyOsSysroot` is what the QEMU boot test and the README demo share: it builds
release N of the tiny OS, commits it into the sysroot's repository and runs ``admin``
commands through a *runner*, a callable that executes one ``ostreefs`` (or, with the
same arguments, ``ostree``) command line. The caller chooses the runner, so the CLI can
show each command as a user would type it, and a test can run the real ``ostree`` to
cross-check. Nothing here prints.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ostreefs.boot.fsattr import set_immutable
from ostreefs.errors import OstreefsError
from ostreefs.store.refs import resolve_ref
from ostreefs.store.repo import Repo
from ostreefs.testing.assets import DEFAULT_CACHE_DIR, BootAssets, fetch_assets
from ostreefs.testing.initramfs import build_initramfs
from ostreefs.testing.qemu import DEFAULT_TIMEOUT, BootResult, boot_entries, boot_sysroot
from ostreefs.testing.tinyos import OS_NAME, build_tree

#: Runs one command line (without the program name); raises if it fails.
Runner = Callable[[Sequence[str]], None]

DEFAULT_REF = "tinyos/x86_64/stable"
DEFAULT_KARGS = ("root=/dev/vda", "console=ttyS0", "panic=-1")


class DemoError(OstreefsError):
    """boot demo: {}"""


def run_ostreefs(argv: Sequence[str]) -> None:
    """The default runner: ``python -m ostreefs ARGV`` in a child process."""
    proc = subprocess.run([sys.executable, "-m", "ostreefs", *argv],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DemoError(f"ostreefs {' '.join(argv)} failed: {msg}")


class TinyOsSysroot:
    """A sysroot directory under ``work`` with the tiny OS deployed by ``run``."""

    def __init__(self, work: Path, assets: BootAssets, run: Runner = run_ostreefs, *,
                 osname: str = OS_NAME, ref: str = DEFAULT_REF,
                 kernel: Path | None = None) -> None:
        self.work = Path(work)
        self.sysroot = self.work / "sysroot"
        self.repo = self.sysroot / "ostree" / "repo"
        self.image = self.work / "disk.img"
        self.assets = assets
        self.run = run
        self.osname = osname
        self.ref = ref
        self.kernel = kernel
        self._initramfs: bytes | None = None

    @property
    def sysroot_arg(self) -> str:
        return f"--sysroot={self.sysroot}"

    def init(self, bootloader: str = "none") -> None:
        """``admin init-fs``, ``admin os-init`` and the bootloader choice.

        "none" writes BLS entries only; "syslinux" also lays out
        ``boot/syslinux/syslinux.cfg -> ../loader/syslinux.cfg`` as that backend expects.
        """
        self.sysroot.mkdir(parents=True)
        self.run(["admin", "init-fs", str(self.sysroot)])
        self.run(["admin", "os-init", self.sysroot_arg, self.osname])
        self.run(["config", f"--repo={self.repo}", "set", "sysroot.bootloader", bootloader])
        if bootloader == "syslinux":
            (self.sysroot / "boot" / "syslinux").mkdir()
            (self.sysroot / "boot" / "syslinux" / "syslinux.cfg").symlink_to(
                "../loader/syslinux.cfg")

    def commit(self, version: str) -> str:
        """Build release ``version`` of the tiny OS and commit it to ``ref``; its checksum."""
        if self._initramfs is None:
            self._initramfs = build_initramfs(self.assets)
        tree = build_tree(self.work / f"tree-{version}", self.assets, self._initramfs,
                          version=version, kernel=self.kernel)
        self.run(["commit", f"--repo={self.repo}", f"--branch={self.ref}",
                  f"--subject=Tiny OS {version}", f"--add-metadata-string=version={version}",
                  str(tree)])
        checksum = resolve_ref(Repo.open(self.repo), self.ref)
        if checksum is None:
            raise DemoError(f"{self.ref} does not resolve after the commit")
        return checksum

    def deploy(self, *extra: str, kargs: Sequence[str] = DEFAULT_KARGS) -> None:
        """``admin deploy --os=OS --karg=... [extra] REF``."""
        self.run(["admin", "deploy", self.sysroot_arg, f"--os={self.osname}",
                  *(f"--karg={k}" for k in kargs), *extra, self.ref])

    def admin(self, *args: str) -> None:
        """Any other ``admin`` subcommand, with ``--sysroot`` added."""
        self.run(["admin", args[0], self.sysroot_arg, *args[1:]])

    def entry_deployment(self, index: int) -> str:
        """``CHECKSUM.SERIAL`` that BLS entry ``index``'s ``ostree=`` resolves to on the host."""
        link = boot_entries(self.sysroot)[index].ostree_karg()
        if link is None:
            raise DemoError(f"boot entry {index} has no ostree= argument")
        return (self.sysroot / link.lstrip("/")).resolve().name

    def release(self) -> None:
        """Clear the deployments' immutable flag so that ``work`` can be deleted."""
        for root in self.sysroot.glob("ostree/deploy/*/deploy/*"):
            if root.is_dir() and not root.is_symlink():
                set_immutable(root, False)

    def boot(self, index: int = 0, timeout: float = DEFAULT_TIMEOUT) -> BootResult:
        """Image the sysroot and boot its BLS entry ``index`` (0 = the default)."""
        return boot_sysroot(self.sysroot, self.image, index=index, timeout=timeout)


@dataclass
class DemoBoot:
    """One boot of the demo: what was done before it, and what the console showed."""

    step: str
    expected_version: str
    result: BootResult

    @property
    def ok(self) -> bool:
        return self.result.version == self.expected_version


def demo_boot(work: Path, *, cache_dir: Path = DEFAULT_CACHE_DIR, run: Runner = run_ostreefs,
              on_boot: Callable[[DemoBoot], None] | None = None) -> list[DemoBoot]:
    """Commit, deploy and boot the tiny OS; upgrade and boot; roll back and boot.

    ``run`` executes each ostreefs command line (the CLI passes one that shows it);
    ``on_boot`` is called after each boot, so a caller can show it as it happens. Raises
    :class:`DemoError` if a boot does not come up with the expected release. ``work``
    can be deleted afterwards (deployments are left without their immutable flag).
    """
    lab = TinyOsSysroot(work, fetch_assets(cache_dir), run)
    boots: list[DemoBoot] = []

    def boot(step: str, version: str) -> None:
        b = DemoBoot(step, version, lab.boot())
        boots.append(b)
        if on_boot is not None:
            on_boot(b)
        if not b.ok:
            raise DemoError(f"after {step}, expected release {version} to boot; "
                            f"{b.result.summary()}")

    try:
        lab.init()
        lab.commit("1")
        lab.deploy()
        boot("deploy of release 1", "1")
        lab.commit("2")
        lab.admin("upgrade", f"--os={lab.osname}")
        boot("upgrade to release 2", "2")
        lab.admin("rollback")
        boot("rollback", "1")
    finally:
        lab.release()
    return boots
