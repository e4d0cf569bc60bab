"""``ostreefs admin`` against the real ``ostree admin`` on twin sysroots.

The same commands run through both tools on two sysroots built from the same commits
(same timestamps, so the same checksums); the sysroots must then hold the same paths
with the same modes, owners, link targets and contents (the repos aside), the same BLS
entries and ``.origin`` files, the same merged /etc, and ``ostree admin status`` must
print the same thing for both. Then each tool works on a sysroot the other one built.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Tool
from sysroot_helpers import (
    OSNAME,
    REF,
    deployments,
    diff_snapshots,
    entries,
    make_local_etc_changes,
    make_os_tree,
    remove_sysroot,
    snapshot,
)

TS = "--timestamp=@1700000000"


@pytest.fixture
def sysroots(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    a, b = tmp_path / "sr-ostree", tmp_path / "sr-ostreefs"
    yield a, b
    remove_sysroot(a)
    remove_sysroot(b)


def _commit(ostree: Tool, sr: Path, tree: Path, version: int, ts: int = 0) -> str:
    out = ostree(f"--repo={sr}/ostree/repo", "commit", f"--branch={REF}",
                 f"--timestamp=@{1700000000 + version * 100 + ts}",
                 f"--add-metadata-string=version={version}.0", "-s", f"v{version}",
                 str(tree)).stdout.strip()
    return str(out)


def _admin(tool: Tool, sr: Path, *args: str, check: bool = True) -> str:
    proc = tool("admin", f"--sysroot={sr}", *args, check=check)
    return str(proc.stdout)


def _both(ostree: Tool, ostreefs: Tool, a: Path, b: Path, *args: str) -> tuple[str, str]:
    return _admin(ostree, a, *args), _admin(ostreefs, b, *args)


def _assert_same(ostree: Tool, ostreefs: Tool, a: Path, b: Path) -> None:
    sa, sb = snapshot(a), snapshot(b)
    assert sa == sb, diff_snapshots(sa, sb)
    assert entries(a) == entries(b)
    refs_a = ostree("refs", f"--repo={a}/ostree/repo").stdout
    refs_b = ostree("refs", f"--repo={b}/ostree/repo").stdout
    assert refs_a == refs_b
    # The oracle reads both sysroots the same way, and ostreefs prints what it prints.
    st_a = _admin(ostree, a, "status")
    assert _admin(ostree, b, "status") == st_a
    assert _admin(ostreefs, a, "status") == st_a
    assert _admin(ostreefs, b, "status") == st_a


def test_init_fs_and_os_init(ostree: Tool, ostreefs: Tool,
                             sysroots: tuple[Path, Path]) -> None:
    a, b = sysroots
    for modern in (False, True):
        for p in (a, b):
            remove_sysroot(p)
            p.mkdir()
        flags = ["--modern"] if modern else []
        ostree("admin", "init-fs", *flags, str(a))
        ostreefs("admin", "init-fs", *flags, str(b))
        out = _both(ostree, ostreefs, a, b, "os-init", OSNAME)
        assert out[0] == out[1]
        assert snapshot(a) == snapshot(b), diff_snapshots(snapshot(a), snapshot(b))
    bad = ostreefs("admin", "init-fs", str(a / "missing"), check=False)
    assert bad.returncode != 0 and "No such file or directory" in bad.stderr


def test_deploy_merge_status_undeploy_cleanup(ostree: Tool, ostreefs: Tool,
                                              sysroots: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    a, b = sysroots
    for p in (a, b):
        p.mkdir()
    ostree("admin", "init-fs", str(a))
    ostreefs("admin", "init-fs", str(b))
    _both(ostree, ostreefs, a, b, "os-init", OSNAME)
    tree = make_os_tree(tmp_path / "tree", 1)
    c1 = {_commit(ostree, sr, tree, 1) for sr in (a, b)}
    assert len(c1) == 1

    out = _both(ostree, ostreefs, a, b, "deploy", f"--os={OSNAME}",
                "--karg=root=LABEL=sysroot", "--karg-append=console=ttyS0", REF)
    assert out[0] == out[1]
    assert "bootconfig swap: yes; bootversion: boot.1.1" in out[1]
    _assert_same(ostree, ostreefs, a, b)

    for sr in (a, b):
        make_local_etc_changes(deployments(sr)[0])
    tree = make_os_tree(tmp_path / "tree", 2)
    assert len({_commit(ostree, sr, tree, 2) for sr in (a, b)}) == 1
    out = _both(ostree, ostreefs, a, b, "deploy", f"--os={OSNAME}", "--karg=quiet", REF)
    assert out[0] == out[1]
    assert "Copying /etc changes: 1 modified, 1 removed, 3 added" in out[1]
    _assert_same(ostree, ostreefs, a, b)
    new_etc = [d for d in deployments(b) if d.name.startswith(
        ostree("rev-parse", f"--repo={b}/ostree/repo", REF).stdout.strip())][0] / "etc"
    assert (new_etc / "app.conf").read_text() == "local edit\n"
    assert not (new_etc / "hostname").exists()
    assert (new_etc / "new.conf").exists() and (new_etc / "localdir/f").exists()
    assert "root:x:0:0:v2" in (new_etc / "passwd").read_text()

    # The same commit again: only the farm changes when nothing else does.
    out = _both(ostree, ostreefs, a, b, "deploy", f"--os={OSNAME}", "--retain", REF)
    assert out[0] == out[1]
    _assert_same(ostree, ostreefs, a, b)

    for args in (("pin", "1"), ("pin", "1"), ("pin", "--unpin", "2"), ("pin", "2")):
        out = _both(ostree, ostreefs, a, b, *args)
        assert out[0] == out[1]
    _assert_same(ostree, ostreefs, a, b)

    out = _both(ostree, ostreefs, a, b, "kargs", "edit-in-place",
                "--append-if-missing=rw")
    _assert_same(ostree, ostreefs, a, b)

    out = _both(ostree, ostreefs, a, b, "undeploy", "2")
    assert out[0] == out[1]
    _assert_same(ostree, ostreefs, a, b)
    _both(ostree, ostreefs, a, b, "cleanup")
    _assert_same(ostree, ostreefs, a, b)

    err = [tool("admin", f"--sysroot={sr}", "undeploy", "7", check=False)
           for tool, sr in ((ostree, a), (ostreefs, b))]
    assert err[0].returncode != 0 and err[1].returncode != 0
    assert err[0].stderr == err[1].stderr == \
        "error: Out of range deployment index 7, expected < 2\n"


def test_each_tool_on_the_others_sysroot(ostree: Tool, ostreefs: Tool,
                                         sysroots: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    """ostreefs deploys, rolls back and cleans up what ostree built, and vice versa."""
    a, b = sysroots
    for p in (a, b):
        p.mkdir()
    ostree("admin", "init-fs", str(a))
    ostree("admin", f"--sysroot={a}", "os-init", OSNAME)
    ostreefs("admin", "init-fs", str(b))
    ostreefs("admin", f"--sysroot={b}", "os-init", OSNAME)
    tree1 = make_os_tree(tmp_path / "t1", 1)
    tree2 = make_os_tree(tmp_path / "t2", 2, kernel=b"KERNEL2")
    for owner, other, sr in ((ostree, ostreefs, a), (ostreefs, ostree, b)):
        _commit(ostree, sr, tree1, 1)
        _admin(owner, sr, "deploy", f"--os={OSNAME}", "--karg=root=/dev/vda", REF)
        _commit(ostree, sr, tree2, 2)
        _admin(other, sr, "deploy", f"--os={OSNAME}", REF)
        st = _admin(ostree, sr, "status")
        assert _admin(ostreefs, sr, "status") == st
        assert "Version: 2.0" in st.splitlines()[1]
        _admin(ostreefs, sr, "rollback")
        st2 = _admin(ostree, sr, "status")
        assert st2.splitlines()[1] == "    Version: 1.0", st2
        assert _admin(ostreefs, sr, "status") == st2
        _admin(owner, sr, "cleanup")
        _admin(other, sr, "cleanup")
        assert _admin(ostree, sr, "status") == st2
        ents = entries(sr)
        assert len(ents) == 2
        assert all("root=/dev/vda" in e for e in ents.values())
        assert len(list((sr / "boot" / "ostree").iterdir())) == 2


@pytest.mark.parametrize("variant", ["not-as-default", "no-merge", "karg-none",
                                     "karg-delete", "karg-proc-cmdline", "origin-file",
                                     "etc-only",
                                     "no-initramfs", "syslinux", "uboot"])
def test_deploy_variants(variant: str, ostree: Tool, ostreefs: Tool,
                         sysroots: tuple[Path, Path], tmp_path: Path) -> None:
    """Option and tree variants give the same sysroot through either tool."""
    import shutil

    a, b = sysroots
    for p in (a, b):
        p.mkdir()
    ostree("admin", "init-fs", str(a))
    ostreefs("admin", "init-fs", str(b))
    _both(ostree, ostreefs, a, b, "os-init", OSNAME)
    if variant == "syslinux":
        for sr in (a, b):
            ostree(f"--repo={sr}/ostree/repo", "config", "set", "sysroot.bootloader",
                   variant)
            if variant == "syslinux":
                (sr / "boot/syslinux").mkdir()
                (sr / "boot/syslinux/syslinux.cfg").write_text("PROMPT 0\nTIMEOUT 50\n")
    tree1 = make_os_tree(tmp_path / "t1", 1, initrd=None if variant == "no-initramfs"
                         else b"INITRDBYTES")
    if variant == "etc-only":
        shutil.move(str(tree1 / "usr/etc"), str(tree1 / "etc"))
    for sr in (a, b):
        _commit(ostree, sr, tree1, 1)
    first = ["--karg=root=/dev/vda", "--karg=console=ttyS0", "--karg-append=console=tty0"]
    if variant == "etc-only":
        # ostree 2022.7 moves etc/ to usr/etc/ and then fails ("Preparing /etc: No such
        # file or directory: /usr/etc"); ostreefs completes what it started.
        bad = ostree("admin", f"--sysroot={a}", "deploy", f"--os={OSNAME}", REF,
                     check=False)
        assert bad.returncode != 0 and "Preparing /etc" in bad.stderr
        _admin(ostreefs, b, "deploy", f"--os={OSNAME}", REF)
        d = deployments(b)[0]
        assert (d / "usr/etc/passwd").read_text() == (d / "etc/passwd").read_text()
        assert "Version: 1.0" in _admin(ostree, b, "status")
        return
    _both(ostree, ostreefs, a, b, "deploy", f"--os={OSNAME}", *first, REF)
    for sr in (a, b):
        make_local_etc_changes(deployments(sr)[0])
        if variant == "uboot":  # ostree's u-boot backend needs a uEnv.txt to start from
            (sr / "boot/loader/uEnv.txt").write_text("bootdelay=1\n")
            ostree(f"--repo={sr}/ostree/repo", "config", "set", "sysroot.bootloader",
                   "uboot")
    tree2 = make_os_tree(tmp_path / "t2", 2, kernel=b"KERNEL2")
    for sr in (a, b):
        _commit(ostree, sr, tree2, 2)
    extra = {
        "not-as-default": ["--not-as-default"],
        "no-merge": ["--no-merge"],
        "karg-none": ["--karg-none", "--karg=quiet"],
        "karg-delete": ["--karg-delete=console=tty0", "--karg=root=/dev/vdb"],
        "origin-file": [f"--origin-file={tmp_path / 'origin'}"],
        "karg-proc-cmdline": ["--karg-proc-cmdline", "--karg-append=extra=1"],
    }.get(variant, [])
    (tmp_path / "origin").write_text("[origin]\nrefspec=other:os/branch\nextra=1\n")
    out = _both(ostree, ostreefs, a, b, "deploy", f"--os={OSNAME}", *extra, REF)
    assert out[0] == out[1]
    _assert_same(ostree, ostreefs, a, b)
