"""Removing what the live boot configuration does not reach (``admin cleanup``).

This is also the second half of every swap and the repair after a crash: whatever a
killed command left (a half-written ``loader.N``, a farm, a staged or complete but
unreferenced deployment, a temporary link or file) is exactly "not reachable from the
current ``boot/loader``", so one function tidies all of these cases. Nothing reachable
from the live loader is touched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ostreefs.boot import fsattr
from ostreefs.boot.sysroot import Checkpoint, Sysroot, locked, no_checkpoint
from ostreefs.store.prune import PruneResult, prune
from ostreefs.store.refs import RefSpec, list_refs, set_ref

_DEPLOY_NAME = re.compile(r"^[0-9a-f]{64}\.\d+$")


@dataclass
class CleanupResult:
    removed_deployments: list[str] = field(default_factory=list)
    prune: PruneResult | None = None


def cleanup(path: str | os.PathLike[str], checkpoint: Checkpoint | None = None,
            prune_repo: bool = True) -> CleanupResult:
    with locked(path):
        return cleanup_locked(Sysroot.load(path), checkpoint, prune_repo)


def cleanup_locked(sr: Sysroot, checkpoint: Checkpoint | None = None,
                   prune_repo: bool = True) -> CleanupResult:
    ckpt = checkpoint or no_checkpoint
    res = CleanupResult()
    ostree_dir = sr.path / "ostree"
    v, s = sr.bootversion, sr.subbootversion

    def rm(p: os.PathLike[str] | str, step: str) -> None:
        if os.path.lexists(p):
            fsattr.rm_rf(p)
            ckpt(step)

    rm(sr.boot / "loader.tmp", "clean-loader-tmp")
    for name in _listdir(ostree_dir):
        if name.startswith("boot.") and name.endswith(".tmp"):
            rm(ostree_dir / name, f"clean-{name}")
    keep_loader = {f"loader.{v}"} if sr.loader_exists else set()
    for n in (0, 1):
        if f"loader.{n}" not in keep_loader:
            rm(sr.boot / f"loader.{n}", f"clean-loader.{n}")
    keep_farm = {f"boot.{v}", f"boot.{v}.{s}"} if sr.loader_exists else set()
    for name in _listdir(ostree_dir):
        if re.fullmatch(r"boot\.[01](\.[01])?", name) and name not in keep_farm:
            rm(ostree_dir / name, f"clean-{name}")

    live = {(d.osname, d.name) for d in sr.deployments}
    for osname in sr.stateroots():
        ddir = ostree_dir / "deploy" / osname / "deploy"
        for name in _listdir(ddir):
            if name.startswith(".tmp-"):
                rm(ddir / name, f"clean-staged-{name}")
            elif name.endswith(".origin") and _DEPLOY_NAME.match(name[:-7]):
                if (osname, name[:-7]) not in live and not (ddir / name[:-7]).exists():
                    rm(ddir / name, f"clean-origin-{name}")
            elif _DEPLOY_NAME.match(name) and (osname, name) not in live:
                rm(ddir / name, f"clean-deployment-{name}")
                rm(ddir / f"{name}.origin", f"clean-origin-{name}")
                res.removed_deployments.append(name)

    kernels = {f"{d.osname}-{d.bootcsum}" for d in sr.deployments}
    kdir = sr.boot / "ostree"
    for name in _listdir(kdir):
        if name not in kernels:
            rm(kdir / name, f"clean-kernel-{name}")
        else:
            for f in _listdir(kdir / name):
                if f.startswith(".tmp-"):
                    rm(kdir / name / f, f"clean-kernel-tmp-{f}")

    repo = sr.repo()
    want = {f"ostree/{v}/{s}/{d.index}": d.csum for d in sr.deployments}
    have = {k: c for k, c in list_refs(repo, include_remotes=False).items()
            if k.startswith("ostree/")}
    for k, c in sorted(want.items()):
        if have.get(k) != c:
            set_ref(repo, RefSpec(k), c, reason="admin: deployment")
            ckpt(f"ref-{k}")
    for k in sorted(set(have) - set(want)):
        set_ref(repo, RefSpec(k), None, reason="admin: deployment gone")
        ckpt(f"unref-{k}")
    if prune_repo:
        res.prune = prune_repo_locked(sr, ckpt)
    return res


def prune_repo_locked(sr: Sysroot, checkpoint: Checkpoint | None = None) -> PruneResult:
    """The repository half of a cleanup: delete the objects only commits that are no
    longer deployed (nor otherwise referenced) reached. For a command whose swap has
    just tidied the files (``write_deployments`` ends with a cleanup) and synced the
    deployment refs: the rest of a cleanup would only find nothing to do."""
    res = prune(sr.repo(), refs_only=True, depth=0)
    (checkpoint or no_checkpoint)("prune")
    return res


def _listdir(p: os.PathLike[str] | str) -> list[str]:
    try:
        return sorted(os.listdir(p))
    except (FileNotFoundError, NotADirectoryError):
        return []
