"""Layer stacks: ``ostreefs mount --layer ...`` against ``ostree checkout --union
--whiteouts`` of the same layers, and a container build round trip (a kernel overlayfs
over the layer mount, its upper dir committed back as a new layer)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MODES, repo_copy
from mount_helpers import (
    CLI,
    FIND_FMT,
    NEEDS_FUSE,
    cli,
    find_lines,
    force_unmount,
    hardlink_groups,
    vfs_snapshot,
    wait_for,
)
from support import TS_ARG, UTF8, Tool, init_repo, tool_env
from treegen import diff_snapshots, make_tree, snapshot

from ostreefs.mount.fuse import is_ostreefs_mount
from ostreefs.mount.vfs import LayerVFS
from ostreefs.store.refs import rev_parse
from ostreefs.store.repo import Repo

pytestmark = NEEDS_FUSE

LAYERS = ["l1", "l2", "l3"]


@contextmanager
def layer_mount(repo: Path, layers: Sequence[str], mp: Path) -> Iterator[None]:
    """A foreground ``mount --layer`` in a subprocess, always unmounted afterwards."""
    mp.mkdir(exist_ok=True)
    logp = mp.parent / f"{mp.name}.log"
    log = open(logp, "wb")  # noqa: SIM115
    args = [a for name in layers for a in ("--layer", name)]
    proc = subprocess.Popen([*CLI, "mount", f"--repo={repo}", *args, str(mp), "-f"],
                            stdout=log, stderr=log, env=tool_env(UTF8))
    try:
        wait_for(lambda: is_ostreefs_mount(str(mp)) or proc.poll() is not None, "the mount")
        assert proc.poll() is None, logp.read_text()
        yield
    finally:
        force_unmount(mp)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Picks:
    """Paths of the first layer that the upper layers and the build step act on."""

    files: list[str]
    dirs: list[str]


def _pick(root: Path) -> Picks:
    """Directories (not nested in each other) and files outside them, deterministically."""
    entries: list[tuple[str, bool]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            # Leaf directories with entries: never nested in each other.
            leaf = (n in dirnames and not os.path.islink(p) and bool(os.listdir(p))
                    and not any(e.is_dir(follow_symlinks=False) for e in os.scandir(p)))
            entries.append((os.path.relpath(p, root), leaf))
    entries.sort()
    dirs = [rel for rel, leaf in entries if leaf][:3]
    files = []
    for rel, _d in entries:
        st = os.lstat(root / rel)
        if (stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                and not any(rel.startswith(d + "/") for d in dirs)):
            files.append(rel)
    assert len(dirs) == 3 and len(files) >= 6
    return Picks(files[:6], dirs)


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)


def _mkdirs(root: Path, rel: str, mode: int) -> Path:
    """Create ``rel``'s directories under ``root``, each with ``mode``."""
    p = root
    for part in Path(rel).parts:
        p = p / part
        if not p.exists():
            p.mkdir()
            os.chmod(p, mode)
    return p


def _whiteout(root: Path, rel: str) -> None:
    r = Path(rel)
    parent = _mkdirs(root, str(r.parent), 0o700) if str(r.parent) != "." else root
    (parent / f".wh.{r.name}").write_bytes(b"")


def build_layers(base: Path, picks_from: int = 5) -> tuple[list[Path], Picks]:
    """Three layer trees: a generated tree, then whiteouts, an opaque directory, a
    replaced file, a directory whose lower metadata must win, and more generated trees."""
    l1 = make_tree(base / "l1", seed=picks_from)
    pk = _pick(l1)
    wf, replaced, gone_later, *_ = pk.files
    wd, od, md = pk.dirs
    l2 = base / "l2"
    l2.mkdir()
    make_tree(l2 / "gen2", seed=picks_from + 1)
    _whiteout(l2, wf)
    _whiteout(l2, wd)
    _mkdirs(l2, str(Path(replaced).parent), 0o700)
    _write(l2 / replaced, b"replaced in l2\n", 0o600)
    # An opaque directory: a new mode, owner and xattr, only its own entries.
    o = _mkdirs(l2, od, 0o700)
    (o / ".wh..wh..opq").write_bytes(b"")
    _write(o / "fresh", b"fresh in l2\n")
    _write(o / "-early", b"sorts before the opaque marker\n")
    os.chown(o, 1234, 5678)
    os.chmod(o, 0o750)
    os.setxattr(o, "user.layer", b"2")
    # An existing directory with another mode: the lower one's metadata stays.
    m = _mkdirs(l2, md, 0o700)
    _write(m / "added", b"added in l2\n")
    os.setxattr(m, "user.ignored", b"2")
    # Whiteouts act in sort order within their own layer.
    _write(l2 / "-z", b"removed by its own layer\n")
    (l2 / ".wh.-z").write_bytes(b"")
    (l2 / ".wh.zz").write_bytes(b"")
    _write(l2 / "zz", b"written after its whiteout\n")
    (l2 / ".wh.no-such-thing").write_bytes(b"")
    os.chmod(l2, 0o700)
    l3 = base / "l3"
    l3.mkdir()
    g2 = sorted(p.name for p in (l2 / "gen2").iterdir())
    _whiteout(l3, f"gen2/{g2[0]}")
    _write(l3 / wf, b"back in l3\n", 0o640)  # resurrects what l2 whited out
    _whiteout(l3, gone_later)
    _mkdirs(l3, "gen2/new in l3", 0o755)
    _write(l3 / "gen2/new in l3/f", b"l3\n")
    return [l1, l2, l3], pk


@pytest.fixture(scope="session")
def layer_repos(tmp_path_factory: pytest.TempPathFactory, ostree: Tool
                ) -> tuple[Callable[[str], Path], Picks]:
    base = tmp_path_factory.mktemp("layers")
    trees, picks = build_layers(base / "trees")
    cache: dict[str, Path] = {}

    def get(mode: str) -> Path:
        if mode not in cache:
            r = init_repo(ostree, base / mode, mode)
            for name, tree in zip(LAYERS, trees, strict=True):
                ostree("commit", f"--repo={r}", "-b", name, TS_ARG, str(tree), env=UTF8)
            cache[mode] = r
        return cache[mode]

    return get, picks


def union_checkout(ostree: Tool, repo: Path, layers: Sequence[str], dest: Path,
                   *extra: str) -> Path:
    for name in layers:
        ostree("checkout", f"--repo={repo}", *extra, "--union", "--whiteouts", name,
               str(dest), env=UTF8)
    return dest


@pytest.mark.parametrize("mode", MODES)
def test_layer_mount_matches_union_checkout(
        layer_repos: tuple[Callable[[str], Path], Picks], ostree: Tool, tmp_path: Path,
        mode: str) -> None:
    get, pk = layer_repos
    repo = repo_copy(get(mode), tmp_path / "repo")
    co = union_checkout(ostree, repo, LAYERS, tmp_path / "co")
    want = snapshot(co)
    # The facts this test relies on, as ostree shows them.
    assert not (co / "-z").exists() and (co / "zz").read_bytes().startswith(b"written")
    assert not any(n.startswith(".wh.") for n in os.listdir(co))
    assert want[pk.dirs[1]]["mode"] == "0o750" and want[pk.dirs[1]]["uid"] == 1234
    assert sorted(os.listdir(co / pk.dirs[1])) == ["-early", "fresh"]
    assert (co / pk.files[0]).read_bytes() == b"back in l3\n"
    # Without FUSE.
    r = Repo.open(repo)
    vfs = LayerVFS(r, [rev_parse(r, n) for n in LAYERS])
    got = vfs_snapshot(vfs)
    assert got == want, diff_snapshots(got, want)
    # Mounted.
    mp = tmp_path / "mnt"
    with layer_mount(repo, LAYERS, mp):
        assert find_lines(mp, FIND_FMT) == find_lines(co, FIND_FMT)
        got = snapshot(mp)
        assert got == want, diff_snapshots(got, want)
        if mode == "archive":
            return  # ostree copies every file of a --whiteouts checkout from archive
        # Link counts and groups as a hardlink union checkout shows them.
        hco = union_checkout(ostree, repo, LAYERS, tmp_path / "hco", "-U")
        assert find_lines(mp, "%p %y %s %n %l") == find_lines(hco, "%p %y %s %n %l")
        assert hardlink_groups(mp) == hardlink_groups(hco)


# ------------------------------------------------------------ the build round trip


def overlay_to_oci(upper: Path, dest: Path) -> None:
    """A copy of an overlayfs upper dir with its whiteouts in OCI form.

    A character device 0:0 NAME becomes an empty file ``.wh.NAME``; a directory with
    ``trusted.overlay.opaque=y`` gets ``.wh..wh..opq``; ``trusted.overlay.*`` xattrs go.
    """
    subprocess.run(["cp", "-a", str(upper), str(dest)], check=True)
    for dirpath, dirnames, filenames in os.walk(dest):
        d = Path(dirpath)
        src = upper / d.relative_to(dest)
        try:
            opaque = os.getxattr(src, "trusted.overlay.opaque") == b"y"
        except OSError:
            opaque = False
        if opaque:
            (d / ".wh..wh..opq").write_bytes(b"")
        for name in filenames:
            st = os.lstat(d / name)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                os.unlink(d / name)
                (d / f".wh.{name}").write_bytes(b"")
        for name in [".", *dirnames, *filenames]:
            p = d / name
            if not os.path.lexists(p):
                continue
            for x in os.listxattr(p, follow_symlinks=False):
                if x.startswith("trusted.overlay."):
                    os.removexattr(p, x, follow_symlinks=False)


def build_step(m: Path, pk: Picks) -> None:
    """What a RUN step does: write, edit, chmod and delete, files and directories."""
    _write(m / "built-by-step.txt", b"new file\n")
    _write(m / "newdir" / "sub" / "f", b"in a new dir\n")
    with open(m / pk.files[1], "ab") as f:  # replaced in l2: edit a lower file
        f.write(b"edited by the step\n")
    with open(m / "gen2" / "new in l3" / "f", "ab") as f:
        f.write(b"edited too\n")
    os.chmod(m / pk.files[3], 0o640)
    (m / pk.files[4]).unlink()
    shutil.rmtree(m / pk.dirs[1])  # the opaque dir of l2, deleted as a whole
    shutil.rmtree(m / pk.dirs[2])  # deleted and made again: an opaque upper dir
    _write(m / pk.dirs[2] / "again", b"recreated\n")


def test_container_build_round_trip(layer_repos: tuple[Callable[[str], Path], Picks],
                                    ostree: Tool, tmp_path: Path) -> None:
    get, pk = layer_repos
    repo = repo_copy(get("bare-user"), tmp_path / "repo")
    lower, upper, work, merged = (tmp_path / n for n in ("lower", "upper", "work", "merged"))
    for d in (upper, work, merged):
        d.mkdir()
    with layer_mount(repo, LAYERS, lower):
        proc = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                               f"lowerdir={lower},upperdir={upper},workdir={work}",
                               str(merged)], capture_output=True, text=True)
        if proc.returncode:
            pytest.skip(f"overlayfs over a FUSE lower dir is not permitted: {proc.stderr}")
        try:
            build_step(merged, pk)
            want = snapshot(merged)
        finally:
            subprocess.run(["umount", str(merged)], check=True)
    assert pk.dirs[1] not in want and want[pk.dirs[2]]["type"] == "dir"
    oci = tmp_path / "oci"
    overlay_to_oci(upper, oci)
    assert (oci / Path(pk.files[4]).parent / f".wh.{Path(pk.files[4]).name}").is_file()
    assert (oci / pk.dirs[2] / ".wh..wh..opq").is_file()
    cli("commit", f"--repo={repo}", "-b", "l4", TS_ARG, f"--tree=dir={oci}")
    layers = [*LAYERS, "l4"]
    mp = tmp_path / "again"
    with layer_mount(repo, layers, mp):
        got = snapshot(mp)
        assert got == want, diff_snapshots(got, want)
    co = union_checkout(ostree, repo, layers, tmp_path / "co")
    got = snapshot(co)
    assert got == want, diff_snapshots(got, want)
