"""Boot Loader Specification entries, as ``ostree admin`` writes them in ``loader.N/entries``.

The BLS entries are the sysroot's source of truth: the deployment list, its order and
each deployment's kernel arguments are read back from them, and every bootloader
backend (grub2, syslinux, u-boot) is generated from them. Keeping the parsed form in
one small type lets the backends stay independent of how deployments are made.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

from ostreefs.errors import MalformedData

_KEY_RE = re.compile(r"^([A-Za-z0-9_-]+)(?:[ \t]+(.*))?$")


@dataclass
class BootEntry:
    """One ``*.conf`` entry.

    ``linux``, ``initrd`` and ``devicetree`` are paths on the boot filesystem (starting
    ``/ostree/``), exactly as written in the file; ``extra`` keeps unknown keys in file
    order so a rewrite does not drop what another tool put there.
    """

    title: str
    version: str
    options: str
    linux: str
    initrd: str | None = None
    devicetree: str | None = None
    fdtdir: str | None = None
    extra: list[tuple[str, str]] = field(default_factory=list)

    def ostree_karg(self) -> str | None:
        """The value of ``ostree=`` in the options (the deployment's boot link)."""
        for word in self.options.split():
            if word.startswith("ostree="):
                return word[len("ostree="):]
        return None

    def format(self) -> str:
        """The entry file's text, keys in the order ostree writes them."""
        lines = [f"title {self.title}", f"version {self.version}",
                 f"options {self.options}"]
        if self.devicetree is not None:
            lines.append(f"devicetree {self.devicetree}")
        if self.fdtdir is not None:
            lines.append(f"fdtdir {self.fdtdir}")
        lines.append(f"linux {self.linux}")
        if self.initrd is not None:
            lines.append(f"initrd {self.initrd}")
        lines.extend(f"{k} {v}" for k, v in self.extra)
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str, name: str = "entry") -> BootEntry:
        values: dict[str, str] = {}
        extra: list[tuple[str, str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            m = _KEY_RE.match(line)
            if m is None:
                raise MalformedData(f"{name}: unreadable line {raw!r}")
            key, value = m.group(1), (m.group(2) or "").strip()
            if key in ("title", "version", "options", "linux", "initrd", "devicetree",
                       "fdtdir") and key not in values:
                values[key] = value
            else:
                extra.append((key, value))
        for required in ("version", "linux"):
            if required not in values:
                raise MalformedData(f"{name}: no '{required}' key")
        return cls(title=values.get("title", ""), version=values["version"],
                   options=values.get("options", ""), linux=values["linux"],
                   initrd=values.get("initrd"), devicetree=values.get("devicetree"),
                   fdtdir=values.get("fdtdir"), extra=extra)


def strverscmp(a: str, b: str) -> int:
    """glibc's strverscmp ordering, which bootloaders use to sort entries by version."""
    ka, kb = _verkey(a), _verkey(b)
    return (ka > kb) - (ka < kb)


def _verkey(s: str) -> tuple[tuple[int, int | str], ...]:
    # Digit runs compare numerically, other runs bytewise; enough for BLS versions,
    # which ostree writes as plain decimal numbers.
    parts: list[tuple[int, int | str]] = []
    for digits, other in re.findall(r"(\d+)|(\D+)", s):
        parts.append((1, int(digits)) if digits else (0, other))
    return tuple(parts)


def sort_entries(entries: list[BootEntry]) -> list[BootEntry]:
    """Entries in deployment-index order: highest ``version`` first, as readers sort them."""
    def cmp(x: BootEntry, y: BootEntry) -> int:
        return -strverscmp(x.version, y.version)

    return sorted(entries, key=functools.cmp_to_key(cmp))
