"""Refs: named pointers to commits, stored as ostree stores them.

``refs/heads/NAME`` for local branches, ``refs/remotes/REMOTE/NAME`` for refs pulled
from a remote (spelled ``REMOTE:NAME``), ``refs/mirrors/COLLECTION/NAME`` for other
collections. A ref file is 64 hex digits and a newline, replaced atomically.
Each move is also appended to a reflog (``ostreefs-logs/``, a format of our own
that ostree ignores), since ostree keeps no history of where a ref pointed.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ostreefs import _fs
from ostreefs.errors import InvalidRef, MalformedData, RefNotFound, StoreError
from ostreefs.store.objects import ObjectType, is_checksum
from ostreefs.store.repo import Repo

_COMPONENT = re.compile(r"^[\w\d][-._\w\d]*$", re.ASCII)
REFLOG_DIR = "ostreefs-logs"


class RefSpec(NamedTuple):
    """A ref name with an optional remote (``REMOTE:NAME``)."""

    name: str
    remote: str | None = None

    def __str__(self) -> str:
        return f"{self.remote}:{self.name}" if self.remote else self.name

    @classmethod
    def parse(cls, text: str) -> RefSpec:
        remote, sep, name = text.partition(":")
        if not sep:
            remote, name = "", text
        elif not _COMPONENT.match(remote):
            raise InvalidRef(text)
        validate_ref_name(name, text)
        return cls(name, remote or None)

    def relpath(self) -> str:
        if self.remote:
            return f"refs/remotes/{self.remote}/{self.name}"
        return f"refs/heads/{self.name}"


def validate_ref_name(name: str, display: str | None = None) -> str:
    parts = name.split("/")
    if not name or any(not _COMPONENT.match(p) for p in parts) or is_checksum(name):
        raise InvalidRef(display if display is not None else name)
    return name


def _read_ref_file(path: Path) -> str | None:
    try:
        # Bytes, decoded here: a text-mode open looks up (and, cold, loads) the
        # ascii codec module; bytes.decode has it built in.
        text = _fs.read_file(path).decode("ascii").strip()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise StoreError(f"Cannot read ref {path}: {e}") from None
    if not is_checksum(text):
        raise MalformedData("ref", f"{path} does not hold a checksum")
    return text


def resolve_ref(repo: Repo, spec: RefSpec | str) -> str | None:
    """The commit a ref names, or None. An unqualified name falls back to remotes."""
    if isinstance(spec, str):
        spec = RefSpec.parse(spec)
    found = _read_ref_file(repo.path / spec.relpath())
    if found is not None or spec.remote:
        return found
    remotes = repo.path / "refs" / "remotes"
    try:
        remote_names = sorted(os.listdir(remotes))
    except FileNotFoundError:
        remote_names = []
    for r in remote_names:
        found = _read_ref_file(remotes / r / spec.name)
        if found is not None:
            return found
    if repo.collection_id:
        return _read_ref_file(repo.path / "refs" / "mirrors" / repo.collection_id / spec.name)
    return None


def list_refs(repo: Repo, prefix: str | None = None,
              include_remotes: bool = True) -> dict[str, str]:
    """All refs as {display name: commit}; remote refs as ``REMOTE:NAME``."""
    out: dict[str, str] = {}
    heads = repo.path / "refs" / "heads"
    for rel, csum in _walk_refs(heads):
        out[rel] = csum
    if include_remotes:
        remotes = repo.path / "refs" / "remotes"
        if remotes.is_dir():
            for r in sorted(os.listdir(remotes)):
                for rel, csum in _walk_refs(remotes / r):
                    out[f"{r}:{rel}"] = csum
    if prefix:
        out = {k: v for k, v in out.items() if k == prefix or k.startswith(prefix.rstrip("/")
                                                                          + "/")
               or k.startswith(prefix)}
    return out


def _walk_refs(base: Path) -> Iterator[tuple[str, str]]:
    if not base.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for fn in sorted(filenames + [d for d in dirnames
                                      if os.path.islink(os.path.join(dirpath, d))]):
            full = Path(dirpath) / fn
            csum = _read_ref_file(full)
            if csum is not None:
                yield str(full.relative_to(base)), csum


def set_ref(repo: Repo, spec: RefSpec | str, commit: str | None, *,
            fsync: bool | None = None, reason: str = "") -> None:
    """Point a ref at ``commit`` (or delete it when None), atomically, and log the move."""
    if isinstance(spec, str):
        spec = RefSpec.parse(spec)
    else:
        # Names may come from a server's summary: never let one become a path out of
        # refs/ (``../``, ``/``), whoever built the RefSpec.
        validate_ref_name(spec.name, str(spec))
        if spec.remote is not None and not _COMPONENT.match(spec.remote):
            raise InvalidRef(str(spec))
    if commit is not None and not is_checksum(commit):
        raise MalformedData("checksum", f"{commit!r} is not a SHA-256 in hex")
    path = repo.path / spec.relpath()
    sync = repo.fsync_enabled if fsync is None else fsync
    old = _read_ref_file(path)
    with repo.lock():
        try:
            if commit is None:
                if old is None and not path.is_symlink():
                    raise RefNotFound(str(spec))
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                _fs.atomic_write(path, (commit + "\n").encode(), fsync=sync)
            os.utime(repo.path, None)
        except PermissionError as e:
            raise StoreError(f"Cannot write ref {spec}: {e.strerror}") from None
        if old != commit:
            append_reflog(repo, spec, old, commit, reason)
            try:
                repo.index.record_ref_move(str(spec), old, commit)
            except (StoreError, OSError):
                pass  # the reflog file above is the record; the index catches up on rebuild


def append_reflog(repo: Repo, spec: RefSpec, old: str | None, new: str | None,
                  reason: str = "") -> None:
    """Append one line ``TIME_NS OLD NEW REASON`` (zeros for none) to the ref's reflog."""
    rel = f"{REFLOG_DIR}/{spec.relpath()}"
    parent, _, name = rel.rpartition("/")
    zero = "0" * 64
    line = f"{time.time_ns()} {old or zero} {new or zero} {reason}".rstrip() + "\n"
    try:
        # Never through a symlink: the log is under the repository's owner's control,
        # and root writes it too.
        dfd = _fs.open_dirs(repo.path, parent, create=True)
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
        finally:
            os.close(dfd)
        try:
            # Every time, not only what this call made: a log root made before (an
            # older ostreefs) is handed over too.
            parts = rel.split("/")
            _fs.hand_to_owner(["/".join(parts[:i]) for i in range(1, len(parts) + 1)],
                              repo.path)
            _fs.write_all(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:
        return  # the reflog is a convenience; a read-only log dir must not fail a commit


class ReflogEntry(NamedTuple):
    time_ns: int
    old: str | None
    new: str | None
    reason: str


def read_reflog(repo: Repo, spec: RefSpec | str) -> list[ReflogEntry]:
    """Every recorded move of the ref, oldest first."""
    if isinstance(spec, str):
        spec = RefSpec.parse(spec)
    path = repo.path / REFLOG_DIR / spec.relpath()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    zero = "0" * 64
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) < 3 or not parts[0].isdigit():
            continue  # a torn last line after a crash
        old, new = parts[1], parts[2]
        if not (is_checksum(old) and is_checksum(new)):
            continue
        out.append(ReflogEntry(int(parts[0]), None if old == zero else old,
                               None if new == zero else new,
                               parts[3] if len(parts) > 3 else ""))
    return out


def rev_parse(repo: Repo, rev: str) -> str:
    """Resolve a ref, ``REMOTE:REF``, checksum or unique commit prefix, with ``^`` suffixes."""
    base = rev
    ups = 0
    while base.endswith("^"):
        base = base[:-1]
        ups += 1
    csum = _resolve_base(repo, base, rev)
    for _ in range(ups):
        commit = repo.load_commit(csum)
        if commit.parent is None:
            raise StoreError(f"Commit {csum} has no parent")
        csum = commit.parent
    return csum


def _resolve_base(repo: Repo, base: str, display: str) -> str:
    if is_checksum(base):
        return base
    if not base:
        raise InvalidRef(display)
    # As ostree resolves: a hex word that prefixes commit checksums is taken as a
    # prefix before any ref of that name is considered (so a ref named "b" loses to
    # the one commit whose checksum starts with "b", and two such commits are an error).
    if len(base) < 64 and all(c in "0123456789abcdef" for c in base):
        matches = find_commits_by_prefix(repo, base)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise StoreError(f"Refspec {base} not unique")
    try:
        spec = RefSpec.parse(base)
    except InvalidRef:
        spec = None
    if spec is not None:
        found = resolve_ref(repo, spec)
        if found is not None:
            return found
    if spec is None:
        raise InvalidRef(display)
    raise RefNotFound(display)


def find_commits_by_prefix(repo: Repo, prefix: str) -> list[str]:
    objdir = repo.path / "objects"
    if len(prefix) >= 2:
        subs = [prefix[:2]]
    else:
        try:
            subs = [s for s in os.listdir(objdir) if s.startswith(prefix)]
        except FileNotFoundError:
            return []
    out = []
    suffix = "." + ObjectType.COMMIT.value
    for sub in subs:
        try:
            names = os.listdir(objdir / sub)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for n in names:
            if n.endswith(suffix) and (sub + n).startswith(prefix):
                out.append(sub + n[: -len(suffix)])
    return sorted(out)
