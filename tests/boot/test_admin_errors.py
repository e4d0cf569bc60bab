"""Bad input to ``ostreefs admin``: one clear error line, and the sysroot still boots
its previous default (no half-made deployment left behind)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Tool, assert_clean_failure
from sysroot_helpers import OSNAME, REF, deployments, entries, make_os_tree, remove_sysroot


def _commit(ostree: Tool, sr: Path, tree: Path, version: int) -> None:
    ostree(f"--repo={sr}/ostree/repo", "commit", f"--branch={REF}",
           f"--timestamp=@{1700000000 + version}",
           f"--add-metadata-string=version={version}.0", str(tree))


def _setup(ostree: Tool, ostreefs: Tool, sr: Path, tmp: Path) -> None:
    sr.mkdir(exist_ok=True)
    ostreefs("admin", "init-fs", str(sr))
    ostreefs("admin", f"--sysroot={sr}", "os-init", OSNAME)
    _commit(ostree, sr, make_os_tree(tmp / "good", 1), 1)
    ostreefs("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", REF)


def _unchanged(ostree: Tool, sr: Path, before: dict[str, str]) -> None:
    assert entries(sr) == before
    assert len(deployments(sr)) == 1
    assert not [n for n in os.listdir(sr / "ostree/deploy" / OSNAME / "deploy")
                if n.startswith(".tmp")]
    assert "Version: 1.0" in ostree("admin", f"--sysroot={sr}", "status").stdout


@pytest.fixture
def sysroot(tmp_path: Path, ostree: Tool, ostreefs: Tool) -> Iterator[Path]:
    sr = tmp_path / "sr"
    _setup(ostree, ostreefs, sr, tmp_path)
    yield sr
    remove_sysroot(sr)


@pytest.mark.parametrize("case", ["no-kernel", "two-kernels"])
def test_bad_kernel_layouts(case: str, sysroot: Path, ostree: Tool, ostreefs: Tool,
                            tmp_path: Path) -> None:
    before = entries(sysroot)
    tree = make_os_tree(tmp_path / case, 2, with_kernel=case != "no-kernel",
                        extra_kernels=1 if case == "two-kernels" else 0)
    _commit(ostree, sysroot, tree, 2)
    proc = ostreefs("admin", f"--sysroot={sysroot}", "deploy", f"--os={OSNAME}", REF,
                    check=False)
    assert_clean_failure(proc)
    if case == "no-kernel":
        assert "Failed to find kernel in /usr/lib/modules" in proc.stderr
    else:
        assert "Found 2 kernels" in proc.stderr
    _unchanged(ostree, sysroot, before)


@pytest.mark.parametrize("args,message", [
    (["deploy", f"--os={OSNAME}", "--karg=a=b\nc", REF], "contains a newline"),
    (["deploy", f"--os={OSNAME}", "--karg-delete=nosuch", REF], "No karg 'nosuch' found"),
    (["deploy", "--os=nosuchos", REF], "No stateroot 'nosuchos'"),
    (["deploy", REF], "Not currently booted into an OSTree system"),
    (["deploy", f"--os={OSNAME}", "no/such/ref"], "no/such/ref"),
    (["undeploy", "1"], "Out of range deployment index 1, expected < 1"),
    (["pin", "3"], "Out of range deployment index 3, expected < 1"),
    (["set-default", "1"], "Out of range deployment index 1, expected < 1"),
    (["rollback"], "No rollback deployment found"),
    (["undeploy", "x"], "Invalid index"),
])
def test_bad_arguments(args: list[str], message: str, sysroot: Path, ostree: Tool,
                       ostreefs: Tool) -> None:
    before = entries(sysroot)
    proc = ostreefs("admin", f"--sysroot={sysroot}", *args, check=False)
    assert_clean_failure(proc)
    assert message in proc.stderr, proc.stderr
    _unchanged(ostree, sysroot, before)


def test_full_disk_half_way(tmp_path: Path, ostree: Tool, ostreefs: Tool) -> None:
    """A tmpfs too small for the second deployment's /etc copy: ENOSPC mid-deploy."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                   check=True)
    try:
        sr = mnt / "sr"
        _setup(ostree, ostreefs, sr, tmp_path)
        before = entries(sr)
        tree = make_os_tree(tmp_path / "big", 2)
        (tree / "usr/etc/big.db").write_bytes(os.urandom(3 << 20))
        _commit(ostree, sr, tree, 2)
        proc = ostreefs("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", REF,
                        check=False)
        assert_clean_failure(proc)
        assert "No space left on device" in proc.stderr
        _unchanged(ostree, sr, before)
        ostreefs("admin", f"--sysroot={sr}", "cleanup")
        _unchanged(ostree, sr, before)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_separate_boot_partition_and_full_boot(tmp_path: Path, ostree: Tool,
                                               ostreefs: Tool) -> None:
    """/boot on its own (small) filesystem: kernels are copied, not linked, the same
    files as ostree's result; a kernel too big for it fails cleanly before the switch."""
    from sysroot_helpers import diff_snapshots, snapshot

    srs = {"ostree": tmp_path / "a", "ostreefs": tmp_path / "b"}
    tools = {"ostree": ostree, "ostreefs": ostreefs}
    mounted = []
    try:
        tree = make_os_tree(tmp_path / "t1", 1)
        for name, sr in srs.items():
            sr.mkdir()
            tools[name]("admin", "init-fs", str(sr))
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                            str(sr / "boot")], check=True)
            mounted.append(sr / "boot")
            tools[name]("admin", f"--sysroot={sr}", "os-init", OSNAME)
            _commit(ostree, sr, tree, 1)
            tools[name]("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}",
                        "--karg=root=/dev/vda", REF)
        sa, sb = snapshot(srs["ostree"]), snapshot(srs["ostreefs"])
        assert sa == sb, diff_snapshots(sa, sb)
        sr = srs["ostreefs"]
        before = entries(sr)
        big = make_os_tree(tmp_path / "t2", 2, kernel=os.urandom(2 << 20))
        _commit(ostree, sr, big, 2)
        proc = ostreefs("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", REF,
                        check=False)
        assert_clean_failure(proc)
        assert "No space left on device" in proc.stderr
        _unchanged(ostree, sr, before)
        assert len(os.listdir(sr / "boot/ostree")) == 1  # the partial kernel dir is gone
        assert sorted(os.listdir(sr / "boot")) == ["boot", "loader", "loader.1", "ostree"]
    finally:
        for m in mounted:
            subprocess.run(["umount", "-l", str(m)], check=False)
        for sr in srs.values():
            remove_sysroot(sr)
