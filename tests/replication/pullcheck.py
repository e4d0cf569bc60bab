"""Helpers shared by the bad-server, TLS and interrupted-pull tests.

A refused pull must leave the client as it was, apart from verified objects: the same
refs, every file under ``objects/`` a well-formed object name whose content matches it
(``ostreefs fsck`` checks every object on disk, not only reachable ones), and both
tools' fsck passing.  :func:`assert_refused` checks all of that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from support import TS_ARG, Tool, assert_clean_failure, init_repo
from treegen import make_tree

_OBJECT_NAME = re.compile(r"[0-9a-f]{62}\.(commit|commitmeta|dirtree|dirmeta|file|filez)")


def make_server_repo(tool: Tool, path: Path, tree: Path, ref: str = "main",
                     *commit_args: str) -> tuple[Path, str]:
    """An archive repository holding one commit of ``tree`` at ``ref``, with a summary."""
    init_repo(tool, path, "archive")
    out = tool("commit", f"--repo={path}", "-b", ref, "-s", "first", TS_ARG,
               *commit_args, tree).stdout.strip()
    tool("summary", "-u", f"--repo={path}")
    return path, out


def small_tree(base: Path, seed: int = 21) -> Path:
    return make_tree(base / f"tree-{seed}", seed)


def make_client(tool: Tool, path: Path, url: str, *sets: str, mode: str = "bare-user",
                gpg_import: Path | None = None, name: str = "origin") -> Path:
    """A fresh repository with remote ``name`` at ``url``; ``sets`` are ``KEY=VALUE``.

    GPG verification is off unless ``gpg_import`` gives a key file to trust.
    """
    init_repo(tool, path, mode)
    args = [f"--gpg-import={gpg_import}"] if gpg_import else ["--no-gpg-verify"]
    tool("remote", "add", f"--repo={path}", *args, *(f"--set={s}" for s in sets), name, url)
    return path


def refs_of(repo: Path) -> dict[str, str]:
    """Every ref file under ``refs/`` (heads, remotes, mirrors) and its content."""
    out = {}
    for dirpath, _, files in os.walk(repo / "refs"):
        for f in files:
            p = Path(dirpath) / f
            out[p.relative_to(repo).as_posix()] = p.read_text().strip()
    return out


def object_files(repo: Path) -> set[str]:
    """``xx/rest.ext`` of every file under ``objects/``."""
    out = set()
    for sub in os.listdir(repo / "objects"):
        for name in os.listdir(repo / "objects" / sub):
            out.add(f"{sub}/{name}")
    return out


def served_object(repo: Path, checksum: str, ext: str) -> Path:
    return repo / "objects" / checksum[:2] / f"{checksum[2:]}.{ext}"


def objects_of_type(repo: Path, ext: str) -> list[Path]:
    return sorted((repo / "objects").glob(f"*/*.{ext}"))


def flip_byte(path: Path, offset: int | None = None) -> None:
    """Invert one byte of a served file (copy first: objects may be hard links)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.unlink()
    path.write_bytes(bytes(data))


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def pull(tool: Tool, client: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    return tool("pull", f"--repo={client}", *args, check=False, timeout=timeout)


def assert_fsck_ok(ostree: Tool, ostreefs: Tool, repo: Path) -> None:
    ostreefs("fsck", f"--repo={repo}")
    ostree("fsck", f"--repo={repo}")


def assert_refused(proc: subprocess.CompletedProcess, client: Path,  # type: ignore[type-arg]
                   refs_before: dict[str, str], ostree: Tool, ostreefs: Tool,
                   *words: str) -> str:
    """A clean refusal that left the client consistent; returns the error line.

    ``words``: alternatives, at least one of which the message must contain
    (case-insensitive), so the message says what went wrong.
    """
    assert_clean_failure(proc)
    msg = proc.stderr.strip().splitlines()[0]
    assert msg.startswith("error: "), msg
    if words:
        assert any(w.lower() in msg.lower() for w in words), (words, msg)
    assert refs_of(client) == refs_before, "a ref moved"
    stray = sorted(n for n in object_files(client)
                   if not _OBJECT_NAME.fullmatch(n.split("/", 1)[1]) or len(n.split("/")[0]) != 2)
    assert not stray, f"non-object files under objects/: {stray[:5]}"
    assert_fsck_ok(ostree, ostreefs, client)
    return msg
