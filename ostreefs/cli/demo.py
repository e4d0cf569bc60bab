"""The built-in demo: commit a small tree, read it back, and let real ostree verify it.

Run by ``bash tools/demo``; every step is printed as the command a user would type.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ostreefs.cli.main import main as ostreefs_main


def _tree(root: Path) -> None:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib/os-release.d").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "var").mkdir()
    (root / "usr/lib/os-release").write_text('NAME="ostreefs demo"\nVERSION_ID=1\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    hello = root / "usr/bin/hello"
    hello.write_text("#!/bin/sh\necho 'hello from an ostreefs commit'\n")
    hello.chmod(0o755)
    (root / "usr/lib/big.bin").write_bytes(os.urandom(1 << 20))
    (root / "etc/motd").write_text("Welcome to a content-addressed OS tree.\n")


def _run(*argv: str) -> None:
    print(f"\n$ ostreefs {' '.join(argv)}", flush=True)
    rc = ostreefs_main(list(argv))
    sys.stdout.flush()
    if rc != 0:
        raise SystemExit(f"demo step failed with exit code {rc}")


def _ostree(*argv: str) -> None:
    print(f"\n$ ostree {' '.join(argv)}", flush=True)
    if shutil.which("ostree") is None:
        print("(real ostree is not installed; skipped)")
        return
    subprocess.run(["ostree", *argv], check=True)


def _shell(*argv: str) -> None:
    print(f"\n$ {' '.join(argv)}", flush=True)
    subprocess.run(argv, check=True)


def _mount_and_read(work: Path, r: str) -> None:
    """Show the commit as a live read-only tree, without checking it out."""
    if not os.path.exists("/dev/fuse"):
        print("\n(no /dev/fuse on this machine: the mount step is skipped)")
        return
    mnt = work / "mnt"
    mnt.mkdir()
    _run("mount", r, "demo/os", str(mnt))
    try:
        _shell("ls", "-lR", str(mnt / "usr"))
        _shell("cat", str(mnt / "etc/motd"))
        _shell("sh", str(mnt / "usr/bin/hello"))
        _shell("sha256sum", str(mnt / "usr/lib/big.bin"))
        print(f"\n$ echo x > {mnt}/etc/motd", flush=True)
        try:
            (mnt / "etc/motd").write_text("x")
        except OSError as e:
            print(f"refused, as it should be: {e.strerror}")
    finally:
        _run("umount", str(mnt))


def _boot(work: Path) -> None:
    """The main job: a tiny OS deployed, booted under QEMU, upgraded, rolled back."""
    if os.geteuid() != 0 or shutil.which("qemu-system-x86_64") is None:
        print("\n(the boot demo needs root and qemu-system-x86_64, which tools/install "
              "provides; skipped)")
        return
    from ostreefs.testing.demo_boot import demo_boot

    print("\n== A tiny OS: committed, deployed, booted under QEMU (TCG), upgraded, "
          "rolled back ==", flush=True)

    def shown(b: Any) -> None:
        console = [ln for ln in b.result.log.splitlines() if "OSTREEFS-BOOTED" in ln]
        print(f"\n[boot after {b.step}] {b.result.summary()}")
        for ln in console[:1]:
            print(f"  console: {ln.strip()}")
        sys.stdout.flush()

    demo_boot(work / "boot", run=lambda argv: _run(*argv), on_boot=shown)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="ostreefs-demo-") as d:
        work = Path(d)
        repo, tree = work / "repo", work / "tree"
        _tree(tree)
        r = f"--repo={repo}"
        _run("init", r, "--mode=archive")
        _run("commit", r, "-b", "demo/os", "-s", "First release",
             "--add-metadata-string=version=1.0", str(tree))
        _run("ls", r, "-R", "demo/os")
        _run("cat", r, "demo/os", "/usr/bin/hello")
        (tree / "etc/motd").write_text("Welcome to release 2.\n")
        (tree / "usr/lib/os-release").write_text('NAME="ostreefs demo"\nVERSION_ID=2\n')
        _run("commit", r, "-b", "demo/os", "-s", "Second release",
             "--add-metadata-string=version=2.0", "--table-output", str(tree))
        _run("log", r, "demo/os")
        _run("diff", r, "demo/os^", "demo/os")
        _run("commit", r, "-b", "demo/os", "-s", "Unchanged", "--skip-if-unchanged",
             "--table-output", str(tree))
        _run("fsck", r)
        _ostree("fsck", r)
        _ostree("log", r, "demo/os")
        _mount_and_read(work, r)
        _boot(work)
        print("\nDemo complete: ostreefs wrote an OSTree repository that ostree verifies, "
              "mounted it, and booted, upgraded and rolled back an OS deployed from it.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
