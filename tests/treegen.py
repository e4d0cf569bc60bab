"""Deterministic generator of awkward file trees, and a snapshot to compare trees.

``make_tree(path, seed)`` builds the same tree for the same seed: names with spaces and
non-ASCII characters, deep nesting, empty dirs and files, sizes from 0 B to a few MiB,
relative/absolute/dangling symlinks, ``user.*`` xattrs on files and dirs, unusual modes
(setuid, setgid, sticky), hard links and foreign owners.  It must run as root (chown).

``snapshot(path)`` maps every relative path to what OSTree stores about it (not mtimes,
not link counts), so two trees can be compared with ``==``.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
from pathlib import Path
from typing import Any

# Names chosen to stress sorting (byte-wise strcmp), quoting and UTF-8 handling.
_NAMES = [
    "plain",
    "with space",
    "  leading spaces",
    "trailing space ",
    "héllo wörld",
    "日本語のファイル",
    "emoji 🎉 party",
    "Ünïcödé",
    "a.b",
    "a-b",
    "a_b",
    "A",
    "B",
    "a",
    "Zeta",
    "z",
    "semi;colon",
    "quote'single",
    'quote"double',
    "#hash",
    "%percent",
    "~tilde",
    "-dash",
    "dot.",
    ".hidden",
    "..double-dot-prefix",
    "back\\slash",
    "tab\there",
    "x" * 200,
    "1",
    "10",
    "2",
]

_FILE_MODES = [0o644, 0o644, 0o644, 0o600, 0o755, 0o755, 0o4755, 0o2755, 0o640, 0o444]
_DIR_MODES = [0o755, 0o755, 0o755, 0o700, 0o1777, 0o2755, 0o775]
_OWNERS = [(0, 0), (0, 0), (0, 0), (1000, 1000), (1234, 5678), (0, 100), (65534, 65534)]

SIZES = {
    # files, max normal file size, big files (bytes)
    "small": (60, 8 * 1024, [300 * 1024]),
    "medium": (300, 64 * 1024, [1024 * 1024 + 7, 3 * 1024 * 1024 + 13]),
}


def _content(rng: random.Random, size: int) -> bytes:
    """Some bytes of ``size``: mix of compressible text and random noise."""
    kind = rng.randrange(3)
    if kind == 0:
        return rng.randbytes(size)
    if kind == 1:
        line = f"line {rng.randrange(10**6)} of some text\n".encode()
        return (line * (size // len(line) + 1))[:size]
    half = size // 2
    return rng.randbytes(half) + b"\0" * (size - half)


def _pick_size(rng: random.Random, max_size: int) -> int:
    r = rng.random()
    if r < 0.1:
        return 0
    if r < 0.4:
        return rng.randrange(1, 100)
    if r < 0.8:
        return rng.randrange(100, 4096)
    return rng.randrange(4096, max_size + 1)


def _set_meta(
    p: Path, rng: random.Random, mode: int, *, allow_owner: bool = True, xattr_p: float = 0.25
) -> None:
    if allow_owner and rng.random() < 0.2:
        uid, gid = rng.choice(_OWNERS)
        os.chown(p, uid, gid)
    # chown clears setuid/setgid, so chmod afterwards.
    os.chmod(p, mode)
    if rng.random() < xattr_p:
        for _ in range(rng.randrange(1, 4)):
            key = "user." + rng.choice(["alpha", "beta", "zz", "aa", "mime_type", "x.y", "ü"])
            val = rng.choice([b"1", b"value", b"with\0nul", bytes(range(256)), b"\xff\xfe"])
            os.setxattr(p, key, val)


def make_tree(path: str | os.PathLike[str], seed: int, size: str = "small") -> Path:
    """Create a deterministic awkward tree under ``path`` (which must not exist or be empty)."""
    n_files, max_size, big = SIZES[size]
    rng = random.Random(f"treegen-{seed}-{size}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    os.chown(root, 0, 0)

    dirs: list[Path] = [root]
    used: set[Path] = set()

    def fresh(parent: Path) -> Path:
        while True:
            name = rng.choice(_NAMES)
            if rng.random() < 0.5:
                name = f"{name}{rng.randrange(1000)}"
            p = parent / name
            if p not in used:
                used.add(p)
                return p

    # Deep nesting: a chain of 12 levels, with a file at the bottom.
    deep = root
    for i in range(12):
        deep = deep / f"level {i:02d}"
        deep.mkdir()
        os.chmod(deep, 0o755)
        used.add(deep)
    (deep / "bottom.txt").write_bytes(b"deep down\n")
    os.chmod(deep / "bottom.txt", 0o644)
    used.add(deep / "bottom.txt")
    dirs.append(deep)

    # Some ordinary directories, some nested.
    for _ in range(max(6, n_files // 8)):
        parent = rng.choice(dirs)
        d = fresh(parent)
        d.mkdir()
        dirs.append(d)

    # Empty dirs (never get children).
    empties = []
    for _ in range(3):
        d = fresh(rng.choice(dirs))
        d.mkdir()
        empties.append(d)

    files: list[Path] = []
    for i in range(n_files):
        f = fresh(rng.choice(dirs))
        f.write_bytes(_content(rng, _pick_size(rng, max_size)) if i % 10 else b"")
        files.append(f)
    for n in big:
        f = fresh(rng.choice(dirs))
        f.write_bytes(_content(rng, n))
        files.append(f)
    # A few files with identical content (shared content objects).
    for _ in range(3):
        f = fresh(rng.choice(dirs))
        f.write_bytes(b"duplicate content\n")
        files.append(f)

    for f in files:
        _set_meta(f, rng, rng.choice(_FILE_MODES))

    # Hard links: same inode under two or three names.
    for src in rng.sample(files, min(4, len(files))):
        for _ in range(rng.randrange(1, 3)):
            os.link(src, fresh(rng.choice(dirs)))

    # Symlinks: relative, absolute, dangling, to dirs, some with foreign owners.
    targets = [
        "../" + files[0].name,
        files[1].name,
        "/etc/passwd",
        "/nonexistent/absolute/dangling",
        "does-not-exist",
        ".",
        "..",
        "日本語 target",
        "a" * 300,
    ]
    for t in targets:
        s = fresh(rng.choice(dirs))
        os.symlink(t, s)
        if rng.random() < 0.3:
            uid, gid = rng.choice(_OWNERS)
            os.lchown(s, uid, gid)
    # A symlink whose target is a real relative path within the tree.
    rel_target = os.path.relpath(files[2], dirs[1])
    os.symlink(rel_target, fresh(dirs[1]))

    # Directory metadata last (modes like 0o700 must not block creating children as root
    # anyway, but chown would clear setgid if done after chmod).
    modes_needed = [0o1777, 0o2755]  # always have a sticky dir and a setgid dir
    for i, d in enumerate(dirs[1:] + empties):
        mode = modes_needed[i] if i < len(modes_needed) else rng.choice(_DIR_MODES)
        _set_meta(d, rng, mode)
    # user.* xattrs on the root too (sometimes).
    if rng.random() < 0.5:
        os.setxattr(root, "user.rootattr", b"root")
    return root


def _user_xattrs(p: str, follow: bool) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(p, follow_symlinks=follow)
    except OSError:
        return []
    out = []
    for n in names:
        if n.startswith("user."):
            out.append((n, os.getxattr(p, n, follow_symlinks=follow)))
    return sorted(out)


def snapshot(path: str | os.PathLike[str], *, xattrs: bool = True) -> dict[str, dict[str, Any]]:
    """Describe every entry under ``path`` (including ``.``) by what OSTree preserves."""
    root = os.fspath(path)
    out: dict[str, dict[str, Any]] = {}

    def record(full: str, rel: str) -> None:
        st = os.lstat(full)
        entry: dict[str, Any] = {
            "mode": oct(stat.S_IMODE(st.st_mode)),
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
        if stat.S_ISDIR(st.st_mode):
            entry["type"] = "dir"
        elif stat.S_ISLNK(st.st_mode):
            entry["type"] = "symlink"
            entry["target"] = os.readlink(full)
            del entry["mode"]  # always 0777 on Linux
        elif stat.S_ISREG(st.st_mode):
            entry["type"] = "file"
            entry["size"] = st.st_size
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entry["sha256"] = h.hexdigest()
        else:
            entry["type"] = f"other:{stat.S_IFMT(st.st_mode):o}"
        if xattrs and not stat.S_ISLNK(st.st_mode):
            entry["xattrs"] = _user_xattrs(full, follow=False)
        out[rel] = entry

    record(root, ".")
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            record(full, os.path.relpath(full, root))
    return out


def canonicalize(snap: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What a bare-user-only commit keeps of a snapshot: 0:0, mode & 0o755, no xattrs."""
    out = {}
    for rel, e in snap.items():
        e = dict(e)
        e["uid"] = e["gid"] = 0
        if "mode" in e:
            e["mode"] = oct(int(e["mode"], 8) & 0o755)
        if "xattrs" in e:
            e["xattrs"] = []
        out[rel] = e
    return out


def diff_snapshots(a: dict[str, Any], b: dict[str, Any], limit: int = 20) -> str:
    """Human-readable differences between two snapshots (for assertion messages)."""
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            lines.append(f"{k!r}:\n   left={a.get(k)}\n  right={b.get(k)}")
            if len(lines) >= limit:
                lines.append("...")
                break
    return "\n".join(lines)


def make_big_tree(
    path: str | os.PathLike[str], seed: int, n_files: int = 3000, total_bytes: int = 60 << 20
) -> Path:
    """A plain but large tree (for crash tests): ``n_files`` files, about ``total_bytes``."""
    rng = random.Random(f"bigtree-{seed}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    dirs = [root]
    for i in range(max(1, n_files // 30)):
        d = rng.choice(dirs) / f"dir {i:03d}"
        d.mkdir()
        os.chmod(d, 0o755)
        dirs.append(d)
    # A handful of big files carry most of the bytes; the rest are small.
    n_big = 8
    big_share = total_bytes * 3 // 4
    small_avg = max(1, (total_bytes - big_share) // max(1, n_files - n_big))
    for i in range(n_files):
        if i < n_big:
            size = big_share // n_big + rng.randrange(4096)
        else:
            size = rng.randrange(0, 2 * small_avg + 1)
        f = rng.choice(dirs) / f"file {i:05d}.bin"
        f.write_bytes(_content(rng, size))
        os.chmod(f, rng.choice([0o644, 0o755, 0o600]))
    return root


def mutate_tree(path: str | os.PathLike[str], seed: int, fraction: float = 0.1) -> None:
    """Change, add and delete some files of a tree made by :func:`make_big_tree`."""
    rng = random.Random(f"mutate-{seed}")
    root = Path(path)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for f in rng.sample(files, int(len(files) * fraction)):
        action = rng.random()
        if action < 0.6:
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2] + rng.randbytes(64) + data[len(data) // 2 :])
        elif action < 0.8:
            f.unlink()
        else:
            os.chmod(f, 0o750)
    for i in range(len(files) // 50):
        g = rng.choice(files).parent / f"added {i:04d}"
        if not g.exists():
            g.write_bytes(_content(rng, rng.randrange(0, 50000)))
            os.chmod(g, 0o644)


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    """Sets of non-directory paths sharing an inode, ignoring singletons."""
    by_ino: dict[tuple[int, int], set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            by_ino.setdefault((st.st_dev, st.st_ino), set()).add(os.path.relpath(p, root))
    return {frozenset(v) for v in by_ino.values() if len(v) > 1}
