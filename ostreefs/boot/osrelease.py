"""Reading a deployment's os-release for its boot menu title."""

from __future__ import annotations

import shlex
from pathlib import Path

from ostreefs.errors import OstreefsError


def read_os_release(root: Path) -> dict[str, str]:
    """``usr/lib/os-release``, or ``etc/os-release`` only when the first is missing."""
    for rel in ("usr/lib/os-release", "etc/os-release"):
        p = root / rel
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            continue
        except OSError:
            continue
        return parse_os_release(text)
    return {}


def parse_os_release(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        try:
            words = shlex.split(v)
        except ValueError:
            words = [v]
        out[k.strip()] = " ".join(words)
    return out


def boot_title(root: Path, version: str | None, index: int, osname: str,
               several_stateroots: bool) -> str:
    """PRETTY_NAME (or ID), the commit version unless already in it, and (ostree:N)."""
    rel = read_os_release(root)
    name = rel.get("PRETTY_NAME") or rel.get("ID")
    if not name:
        raise OstreefsError(f"No PRETTY_NAME or ID in the os-release of {root}",
                            hint="the tree needs usr/lib/os-release or etc/os-release")
    title = name
    if version and version not in name:
        title += f" {version}"
    tag = f"{osname}:{index}" if several_stateroots else str(index)
    return f"{title} (ostree:{tag})"
