"""GRUB 2: a ``grub.cfg`` with one ``menuentry`` per deployment, default first.

ostree runs ``grub-mkconfig`` (chrooted into the new deployment when not booted) and
fails outright when the host has none. The config is written here directly instead, so
a deploy never executes code from the OS tree; a generator can still be named (repo
config ``[sysroot] grub2-generator``) and is then run the way ostree runs one:
``GENERATOR -o FILE`` with ``_OSTREE_GRUB2_BOOTVERSION`` (and ``_OSTREE_GRUB2_IS_EFI``) in
its environment and the new entries in ``entries/`` beside FILE.

BIOS: ``boot/loader.N/grub.cfg``, reached through ``boot/grub{,2}/grub.cfg ->
../loader/grub.cfg``, so the loader swap switches it atomically. EFI (a
``boot/efi/EFI/VENDOR/grub.cfg``): the vendor file is replaced by rename after the old
one is kept as ``grub.cfg.old``; a FAT partition allows nothing better, so this backend
is not atomic there. Kernel paths get a ``/boot`` prefix, which resolves on a separate
boot partition too (``boot/boot -> .``); on EFI each entry first searches for the
filesystem holding its kernel, since GRUB starts out on the EFI partition.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ostreefs import _fs
from ostreefs.boot.bls import BootEntry
from ostreefs.boot.bootloaders._common import BootloaderError, loader_dir, write_file

#: Characters GRUB's script lexer treats specially outside quotes.
_SPECIAL = set("\\'$;|&<>{}#*?[] \t")
TIMEOUT = 5
GENERATOR_TIMEOUT = 300


class Grub2:
    name = "grub2"

    def __init__(self, efi_config: Path | None = None, generator: str | None = None) -> None:
        #: The vendor grub.cfg on the EFI partition, or None for BIOS.
        self.efi_config = efi_config
        self.generator = generator
        self.atomic = efi_config is None

    def write(self, sysroot: Path, bootversion: int, entries: list[BootEntry],
              deployment_roots: list[Path]) -> None:
        efi = self.efi_config is not None
        target = (self.efi_config if self.efi_config is not None
                  else loader_dir(sysroot, bootversion) / "grub.cfg")
        if efi:
            _keep_old(target)
        if self.generator:
            self._run_generator(target, bootversion, efi)
        else:
            write_file(target, render(entries, efi=efi))

    def _run_generator(self, target: Path, bootversion: int, efi: bool) -> None:
        assert self.generator is not None
        tmp = target.parent / _fs.tmp_name(".grub.cfg-")
        env = [f"_OSTREE_GRUB2_BOOTVERSION={bootversion}"] + (
            ["_OSTREE_GRUB2_IS_EFI=1"] if efi else [])
        argv = ["env", *env, self.generator, "-o", str(tmp)]
        try:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=GENERATOR_TIMEOUT, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise BootloaderError(f"{self.generator}: {e}") from None
            if proc.returncode != 0:
                tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
                raise BootloaderError(
                    f"{self.generator}: exited with status {proc.returncode}"
                    + (f": {tail[0]}" if tail else ""))
            try:
                fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise BootloaderError(f"{self.generator} wrote no {tmp}: {e.strerror}") from None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, target)
            _fs.fsync_dir(target.parent)
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _keep_old(config: Path) -> None:
    try:
        old = config.read_bytes()
    except FileNotFoundError:
        return
    except OSError as e:
        raise BootloaderError(f"Reading {config}: {e.strerror}") from None
    try:
        _fs.atomic_write(config.with_name("grub.cfg.old"), old, fsync=True)
    except OSError as e:
        raise BootloaderError(f"Writing {config.with_name('grub.cfg.old')}: "
                              f"{e.strerror}") from None


def quote_title(title: str) -> str:
    """A single-quoted GRUB word (no escapes exist inside single quotes)."""
    return "'" + title.replace("'", "'\\''") + "'"


def escape_args(text: str) -> str:
    """Kernel arguments as GRUB words, so GRUB hands the kernel what the entry says.

    Double-quoted groups stay double-quoted (GRUB, like the kernel, reads them as one
    word); every other character GRUB would interpret is backslash-escaped.
    """
    out: list[str] = []
    in_dq = False
    for ch in text:
        if ch == '"':
            in_dq = not in_dq
            out.append(ch)
        elif in_dq:
            out.append("\\" + ch if ch in "$\\" else ch)
        elif ch == " ":
            out.append(ch)
        elif ch in _SPECIAL:
            out.append("\\" + ch)
        else:
            out.append(ch)
    if in_dq:
        out.append('"')
    return "".join(out)


def render(entries: list[BootEntry], *, efi: bool = False, timeout: int = TIMEOUT) -> str:
    """grub.cfg for the entries (default first)."""
    lines = [
        "# Written by ostreefs from /boot/loader/entries; edits are lost at the next deploy.",
        "set default=0",
        f"set timeout={timeout}",
        "if serial --unit=0 --speed=115200; then",
        "\tterminal_input --append serial",
        "\tterminal_output --append serial",
        "fi",
    ]
    for i, e in enumerate(entries):
        title = e.title or "(Untitled)"
        lines.append("")
        lines.append(f"menuentry {quote_title(title)} --id 'ostree-{i}' {{")
        kernel = escape_args(f"/boot{e.linux}")
        if efi:
            lines.append(f"\tsearch --no-floppy --set=root --file {kernel}")
        lines.append(f"\tlinux {kernel}" + (f" {escape_args(e.options)}" if e.options else ""))
        if e.initrd:
            lines.append(f"\tinitrd {escape_args('/boot' + e.initrd)}")
        if e.devicetree:
            lines.append(f"\tdevicetree {escape_args('/boot' + e.devicetree)}")
        lines.append("}")
    return "\n".join(lines) + "\n"
