"""Bootloader writers and their selection.

syslinux and U-Boot are judged by the real ostree 2022.7: a sysroot is deployed with
``ostree admin deploy`` under ``sysroot.bootloader=auto`` (so its detection is checked
too), and for the same entries and the same previous config our writer must produce
the same bytes. GRUB has no oracle here (ostree needs grub-mkconfig, chrooted into the
deployment): its output must pass GRUB's own parser, ``grub-script-check``.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Tool

from ostreefs.boot.bls import BootEntry, sort_entries
from ostreefs.boot.bootloaders import (
    BootloaderError,
    Grub2,
    Syslinux,
    UBoot,
    select,
)
from ostreefs.boot.bootloaders import grub2 as grub2mod
from ostreefs.boot.bootloaders import syslinux as syslinuxmod

OS = "myos"
REF = "myos/bootloaders"

OLD_SYSLINUX = (
    "# syslinux config of the machine\n"
    "PROMPT 0\n"
    "TIMEOUT 50\n"
    "\n"
    "LABEL other-linux\n"
    "\tKERNEL /vmlinuz-other\n"
    "\tAPPEND root=/dev/sda1\n"
    "\n"
    "\n"
    "LABEL Stale (ostree:0)\n"
    "\tKERNEL /boot/ostree/myos-old/vmlinuz\n"
    "\tAPPEND ostree=/ostree/boot.0/myos/old/0\n"
    "\n"
    "MENU TITLE Boot\n"
)


def _os_tree(root: Path, version: int, devicetree: bool) -> Path:
    mods = root / "usr/lib/modules/6.1.0-test"
    mods.mkdir(parents=True)
    (mods / "vmlinuz").write_bytes(b"KERNEL%d" % version)
    (mods / "initramfs.img").write_bytes(b"INITRD")
    if devicetree:
        (mods / "devicetree").write_bytes(b"DTB")
    (root / "usr/lib/os-release").write_text(
        f'NAME=MyOS\nID=myos\nPRETTY_NAME="MyOS {version}"\n')
    (root / "usr/etc").mkdir()
    (root / "usr/lib/ostree-boot").mkdir()
    (root / "usr/lib/ostree-boot/uEnv.txt").write_text(f"fdt_high=0xffffffff\nosver={version}\n")
    return root


class Sysroot:
    def __init__(self, ostree: Tool, root: Path) -> None:
        self.ostree = ostree
        self.root = root
        self.sr = root / "sr"
        self.sr.mkdir(parents=True)
        self.repo = self.sr / "ostree/repo"
        ostree("admin", "init-fs", self.sr)
        ostree("admin", f"--sysroot={self.sr}", "os-init", OS)

    def commit(self, version: int, devicetree: bool = False) -> None:
        tree = _os_tree(self.root / f"t{version}", version, devicetree)
        self.ostree(f"--repo={self.repo}", "commit", f"--branch={REF}",
                    f"--add-metadata-string=version={version}.0", tree)

    def deploy(self, *args: str) -> str:
        proc = self.ostree("admin", f"--sysroot={self.sr}", "deploy", f"--os={OS}", *args, REF)
        return str(proc.stdout)

    def bootversion(self) -> int:
        return int(os.readlink(self.sr / "boot/loader").removeprefix("loader."))

    def entries(self) -> tuple[list[BootEntry], list[Path]]:
        """The current entries, default first, and each one's deployment directory."""
        d = self.sr / "boot/loader/entries"
        entries = sort_entries([BootEntry.parse(p.read_text(), p.name)
                                for p in d.glob("ostree-*.conf")])
        roots = []
        for e in entries:
            link = e.ostree_karg()
            assert link is not None
            roots.append((self.sr / link.lstrip("/")).resolve())
        return entries, roots

    def cleanup(self) -> None:
        deploy = self.sr / "ostree/deploy" / OS / "deploy"
        if deploy.is_dir():
            dirs = [str(p) for p in deploy.iterdir() if p.is_dir()]
            if dirs:
                subprocess.run(["chattr", "-i", *dirs], check=False, capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def sysroot(ostree: Tool, tmp_path: Path) -> Iterator[Sysroot]:
    s = Sysroot(ostree, tmp_path / "w")
    try:
        yield s
    finally:
        s.cleanup()


def _scratch(tmp_path: Path, files: dict[str, str]) -> Path:
    """A sysroot holding only the given files: our writers' view of the previous state."""
    root = tmp_path / "scratch"
    if root.exists():
        shutil.rmtree(root)
    (root / "boot").mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _no_tmp_files(d: Path) -> None:
    assert not [n for n in os.listdir(d) if n.startswith(".")], os.listdir(d)


# ------------------------------------------------------------------ syslinux vs ostree

def test_syslinux_matches_ostree(sysroot: Sysroot, tmp_path: Path) -> None:
    sr = sysroot.sr
    (sr / "boot/syslinux").mkdir(parents=True)
    (sr / "boot/syslinux/syslinux.cfg").write_text(OLD_SYSLINUX)
    assert isinstance(select(sr, "auto"), Syslinux)
    sysroot.commit(1)

    previous = OLD_SYSLINUX
    for step, args in enumerate([
            ("--karg=root=LABEL=sysroot", "--karg=console=ttyS0"),
            ("--karg-append=quiet",),
            ("--retain", "--karg-append=splash")]):
        if step == 1:
            sysroot.commit(2, devicetree=True)
            # From now on syslinux reads the live config through the loader link.
            os.unlink(sr / "boot/syslinux/syslinux.cfg")
            os.symlink("../loader/syslinux.cfg", sr / "boot/syslinux/syslinux.cfg")
            previous = (sr / "boot/loader/syslinux.cfg").read_text()
        out = sysroot.deploy(*args)
        assert "bootconfig swap: yes" in out
        n = sysroot.bootversion()
        ostree_cfg = (sr / f"boot/loader.{n}/syslinux.cfg").read_bytes()
        entries, roots = sysroot.entries()
        scratch = _scratch(tmp_path, {"boot/syslinux/syslinux.cfg": previous})
        Syslinux().write(scratch, n, entries, roots)
        mine = (scratch / f"boot/loader.{n}/syslinux.cfg").read_bytes()
        assert mine == ostree_cfg, f"step {step}"
        _no_tmp_files(scratch / f"boot/loader.{n}")
        previous = ostree_cfg.decode()

    text = previous
    assert text.startswith("# syslinux config of the machine\nPROMPT 0\nTIMEOUT 50\n\n")
    assert "LABEL other-linux\n\tKERNEL /vmlinuz-other\n" in text and "Stale" not in text
    assert text.count("DEFAULT ") == 1 and "DEFAULT MyOS 2 2.0 (ostree:0)\n" in text
    assert text.count("LABEL MyOS") == 3
    assert "\tDEVICETREE /boot/ostree/myos-" in text
    assert "\tKERNEL /boot/ostree/myos-" in text and "splash" in text


def test_syslinux_keeps_a_default_of_its_own_and_refuses_a_label_without_kernel() -> None:
    e = BootEntry(title="T (ostree:0)", version="1", options="ostree=/x root=/dev/vda",
                  linux="/ostree/os-c/vmlinuz", initrd="/ostree/os-c/initrd")
    out = syslinuxmod.render("DEFAULT other\nLABEL other\n\tKERNEL /k\n", [e])
    # The blank line is the old file's final newline, kept as ostree keeps it.
    assert out == ("DEFAULT other\nLABEL other\n\tKERNEL /k\n\nLABEL T (ostree:0)\n"
                   "\tKERNEL /boot/ostree/os-c/vmlinuz\n\tINITRD /boot/ostree/os-c/initrd\n"
                   "\tAPPEND ostree=/x root=/dev/vda\n")
    with pytest.raises(BootloaderError, match="No KERNEL argument found after LABEL"):
        syslinuxmod.render("LABEL broken\n\tAPPEND x\n", [e])


# ------------------------------------------------------------------- U-Boot vs ostree

def test_uboot_matches_ostree(sysroot: Sysroot, tmp_path: Path) -> None:
    sr = sysroot.sr
    (sr / "boot/loader.0").mkdir(parents=True)
    os.symlink("loader.0", sr / "boot/loader")
    (sr / "boot/loader/uEnv.txt").write_text("bootdelay=1\n")
    assert isinstance(select(sr, "auto"), UBoot)
    sysroot.commit(1, devicetree=True)
    for step, args in enumerate([("--karg=root=LABEL=sysroot",),
                                 ("--karg-append=console=ttyS0",),
                                 ("--retain", "--karg-append=quiet")]):
        if step == 1:
            sysroot.commit(2)
        sysroot.deploy(*args)
        n = sysroot.bootversion()
        ostree_env = (sr / f"boot/loader.{n}/uEnv.txt").read_bytes()
        entries, roots = sysroot.entries()
        scratch = _scratch(tmp_path, {})
        UBoot().write(scratch, n, entries, roots)
        assert (scratch / f"boot/loader.{n}/uEnv.txt").read_bytes() == ostree_env
    text = ostree_env.decode()
    assert "bootdelay" not in text
    assert text.count("bootargs") == 3 and "bootargs3=" in text
    assert "osver=2\n\nkernel_image2=" in text  # the deployment's own uEnv.txt, once
    assert "fdt_file=" not in text and "fdt_file3=/boot/ostree/myos-" in text


def test_uboot_reads_the_deployment_file_inside_the_deployment(tmp_path: Path) -> None:
    outside = tmp_path / "usr/lib/ostree-boot"
    outside.mkdir(parents=True)
    (outside / "uEnv.txt").write_text("host=1\n")
    dep = tmp_path / "dep"
    (dep / "usr/lib/ostree-boot").mkdir(parents=True)
    (dep / "cfg").write_text("inside=1\n")
    # An absolute link means the deployment's own /cfg, never the host's file.
    os.symlink("/cfg", dep / "usr/lib/ostree-boot/uEnv.txt")
    e = BootEntry(title="T", version="1", options="ostree=/x", linux="/ostree/a/vmlinuz")
    sr = _scratch(tmp_path, {})
    UBoot().write(sr, 1, [e], [dep])
    assert (sr / "boot/loader.1/uEnv.txt").read_text() == (
        "kernel_image=/boot/ostree/a/vmlinuz\nbootargs=ostree=/x\ninside=1\n\n")


# ------------------------------------------------------------------------------ GRUB

def _entries() -> list[BootEntry]:
    c = "myos-" + "ab" * 32
    return [
        BootEntry(title="MyOS 2 2.0 (ostree:0)", version="2",
                  options="root=LABEL=sysroot console=ttyS0 ostree=/ostree/boot.1/myos/x/0",
                  linux=f"/ostree/{c}/vmlinuz-6.1.0", initrd=f"/ostree/{c}/initramfs-6.1.0.img"),
        BootEntry(title="It's MyOS 1 (ostree:1)", version="1",
                  options='root=LABEL=sysroot opt="a b" weird=$x;y ostree=/ostree/boot.1/myos/x/1',
                  linux=f"/ostree/{c}/vmlinuz-6.1.0", devicetree=f"/ostree/{c}/devicetree"),
    ]


def _grub_check(path: Path) -> None:
    proc = subprocess.run(["grub-script-check", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_grub2_config_is_valid_and_lists_every_entry(tmp_path: Path) -> None:
    sr = _scratch(tmp_path, {"boot/grub/grub.cfg": "# stock\n"})
    bl = select(sr, "auto")
    assert isinstance(bl, Grub2) and bl.atomic and bl.efi_config is None
    bl.write(sr, 1, _entries(), [])
    cfg = sr / "boot/loader.1/grub.cfg"
    _grub_check(cfg)
    text = cfg.read_text()
    assert "set default=0\n" in text and "set timeout=" in text
    assert text.count("menuentry ") == 2
    first = text.index("menuentry 'MyOS 2 2.0 (ostree:0)' --id 'ostree-0' {")
    second = text.index("menuentry 'It'\\''s MyOS 1 (ostree:1)' --id 'ostree-1' {")
    assert first < second
    c = "myos-" + "ab" * 32
    assert (f"\tlinux /boot/ostree/{c}/vmlinuz-6.1.0 root=LABEL=sysroot console=ttyS0 "
            "ostree=/ostree/boot.1/myos/x/0\n") in text
    assert f"\tinitrd /boot/ostree/{c}/initramfs-6.1.0.img\n" in text
    assert f"\tdevicetree /boot/ostree/{c}/devicetree\n" in text
    assert 'opt="a b" weird=\\$x\\;y ' in text
    assert "search" not in text
    assert (sr / "boot/grub/grub.cfg").read_text() == "# stock\n"  # the link is the user's
    _no_tmp_files(sr / "boot/loader.1")


def test_grub2_detects_efi_and_keeps_the_old_config(tmp_path: Path) -> None:
    sr = _scratch(tmp_path, {"boot/efi/EFI/BOOT/grub.cfg": "# fallback\n",
                             "boot/efi/EFI/debian/grub.cfg": "# previous\n"})
    bl = select(sr, "auto")
    assert isinstance(bl, Grub2) and not bl.atomic
    bl.write(sr, 0, _entries(), [])
    vendor = sr / "boot/efi/EFI/debian"
    _grub_check(vendor / "grub.cfg")
    text = (vendor / "grub.cfg").read_text()
    assert text.count("\tsearch --no-floppy --set=root --file /boot/ostree/") == 2
    assert (vendor / "grub.cfg.old").read_text() == "# previous\n"
    assert (sr / "boot/efi/EFI/BOOT/grub.cfg").read_text() == "# fallback\n"
    assert not (sr / "boot/loader.0/grub.cfg").exists()
    _no_tmp_files(vendor)


def test_grub2_runs_a_configured_generator(tmp_path: Path) -> None:
    sr = _scratch(tmp_path, {"boot/grub2/grub.cfg": "",
                             "boot/loader.1/entries/ostree-1-myos.conf": "version 1\n"})
    gen = tmp_path / "gen.sh"
    gen.write_text('#!/bin/sh\n[ "$1" = -o ] || exit 9\n'
                   'echo "# bootversion $_OSTREE_GRUB2_BOOTVERSION" > "$2"\n'
                   'ls "$(dirname "$2")/entries" >> "$2"\n')
    gen.chmod(0o755)
    (sr / "ostree/repo").mkdir(parents=True)
    (sr / "ostree/repo/config").write_text(
        f"[core]\nrepo_version=1\nmode=bare\n\n[sysroot]\ngrub2-generator={gen}\n")
    bl = select(sr, "auto")
    assert isinstance(bl, Grub2) and bl.generator == str(gen)
    bl.write(sr, 1, _entries(), [])
    assert (sr / "boot/loader.1/grub.cfg").read_text() == "# bootversion 1\nostree-1-myos.conf\n"
    _no_tmp_files(sr / "boot/loader.1")

    gen.write_text("#!/bin/sh\necho broken >&2\nexit 3\n")
    with pytest.raises(BootloaderError, match="exited with status 3: broken"):
        bl.write(sr, 1, _entries(), [])
    assert (sr / "boot/loader.1/grub.cfg").read_text() == "# bootversion 1\nostree-1-myos.conf\n"
    _no_tmp_files(sr / "boot/loader.1")


def test_grub2_escaping() -> None:
    assert grub2mod.quote_title("a'b") == "'a'\\''b'"
    assert grub2mod.escape_args('x=$y a;b "q $z" {}') == 'x=\\$y a\\;b "q \\$z" \\{\\}'
    assert grub2mod.escape_args('open="x') == 'open="x"'


# ------------------------------------------------------------------------- selection

@pytest.mark.parametrize("files,expected", [
    ({}, None),
    ({"boot/loader/uEnv.txt": ""}, UBoot),
    ({"boot/grub2/grub.cfg": "", "boot/loader/uEnv.txt": ""}, Grub2),
    ({"boot/syslinux/syslinux.cfg": "", "boot/grub/grub.cfg": "",
      "boot/loader/uEnv.txt": ""}, Syslinux),
])
def test_auto_probes_syslinux_then_grub2_then_uboot(
        tmp_path: Path, files: dict[str, str], expected: type | None) -> None:
    sr = _scratch(tmp_path, files)
    bl = select(sr, "auto")
    assert (bl is None) if expected is None else isinstance(bl, expected)
    assert type(select(sr, "")) is type(bl)


def test_auto_probe_link_rules(tmp_path: Path) -> None:
    sr = _scratch(tmp_path, {})
    (sr / "boot/syslinux").mkdir()
    (sr / "boot/grub").mkdir()
    # A dangling grub.cfg link is no grub2 (GRUB's probe follows links) ...
    os.symlink("../loader/grub.cfg", sr / "boot/grub/grub.cfg")
    assert select(sr, "auto") is None
    # ... but syslinux only asks whether the name exists, as ostree does.
    os.symlink("../loader/syslinux.cfg", sr / "boot/syslinux/syslinux.cfg")
    assert isinstance(select(sr, "auto"), Syslinux)


def test_explicit_choices(tmp_path: Path) -> None:
    sr = _scratch(tmp_path, {"boot/syslinux/syslinux.cfg": ""})
    assert select(sr, "none") is None
    assert isinstance(select(sr, "uboot"), UBoot)
    assert isinstance(select(sr, "syslinux"), Syslinux)
    g = select(sr, "grub2")
    assert isinstance(g, Grub2) and g.atomic
    for bl in (UBoot(), Syslinux(), g):
        assert bl.name in ("uboot", "syslinux", "grub2")
    with pytest.raises(BootloaderError, match="zipl is not supported"):
        select(sr, "zipl")
    with pytest.raises(BootloaderError, match="Invalid bootloader configuration: 'lilo'"):
        select(sr, "lilo")


def test_syslinux_writer_without_previous_config(tmp_path: Path) -> None:
    sr = _scratch(tmp_path, {})
    e = _entries()[0]
    Syslinux().write(sr, 0, [e], [])
    out = (sr / "boot/loader.0/syslinux.cfg").read_text()
    assert out.startswith("DEFAULT MyOS 2 2.0 (ostree:0)\nLABEL MyOS 2 2.0 (ostree:0)\n")
    assert stat.S_IMODE(os.stat(sr / "boot/loader.0/syslinux.cfg").st_mode) == 0o644
