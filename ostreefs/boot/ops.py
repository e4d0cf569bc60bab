"""The smaller ``admin`` operations: list edits, pins, origins, kernel arguments.

Each list edit (undeploy, set-default, rollback) is a new deployment list handed to
:func:`~ostreefs.boot.swap.write_deployments`, so it inherits the swap's crash safety.
Pins and origins live in the ``.origin`` key files, replaced atomically; they do not
change what boots.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from ostreefs import _fs
from ostreefs.boot.cleanup import prune_repo_locked
from ostreefs.boot.deploy import DeployOptions, DeployResult, deploy_locked
from ostreefs.boot.kargs import KernelArgs
from ostreefs.boot.swap import SwapResult, commit_version, write_deployments
from ostreefs.boot.sysroot import (
    Checkpoint,
    Deployment,
    Sysroot,
    SysrootError,
    locked,
    no_checkpoint,
)
from ostreefs.errors import OstreefsError, StoreError
from ostreefs.store.config import KeyFile
from ostreefs.store.objects import is_checksum
from ostreefs.store.refs import RefSpec, resolve_ref, rev_parse
from ostreefs.store.repo import Repo

#: Fetches ``ref`` from ``remote`` into the repo (None: a local ref, nothing to fetch).
Fetch = Callable[[Repo, "str | None", str], None]


@dataclass
class ListChange:
    swap: SwapResult
    messages: list[str] = field(default_factory=list)
    #: Bytes the repo prune freed (ostree prints "Freed objects: ..." when not 0).
    freed: int = 0


def _rewrite(sr: Sysroot, new: list[Deployment], ckpt: Checkpoint,
             prune_repo: bool = True) -> tuple[SwapResult, int]:
    """The swap, then (optionally) a repo prune; returns the swap and bytes freed."""
    swap = write_deployments(sr, new, ckpt)
    freed = 0
    if prune_repo:
        freed = prune_repo_locked(sr, ckpt).bytes_freed
    return swap, freed


def undeploy(path: str | os.PathLike[str], index: int,
             checkpoint: Checkpoint | None = None) -> ListChange:
    with locked(path):
        sr = Sysroot.load(path)
        d = sr.get(index)
        if d.same(sr.booted):
            raise SysrootError(f"Cannot undeploy currently booted deployment {index}")
        new = [x for x in sr.deployments if not x.same(d)]
        swap, freed = _rewrite(sr, new, checkpoint or no_checkpoint)
        return ListChange(swap, [swap.message()], freed)


def set_default(path: str | os.PathLike[str], index: int,
                checkpoint: Checkpoint | None = None) -> ListChange:
    """Move deployment ``index`` to the top of the list (what boots next)."""
    with locked(path):
        sr = Sysroot.load(path)
        d = sr.get(index)
        new = [d] + [x for x in sr.deployments if not x.same(d)]
        swap, _ = _rewrite(sr, new, checkpoint or no_checkpoint, prune_repo=False)
        return ListChange(swap, [swap.message()])


def rollback(path: str | os.PathLike[str], checkpoint: Checkpoint | None = None
             ) -> ListChange:
    """Make the previous deployment (the rollback one) the default, as rpm-ostree does.

    When booted, the target is the first deployment of the booted stateroot after the
    booted one, else the one before it (a pending deployment is then undone); when not
    booted, index 1.
    """
    with locked(path):
        sr = Sysroot.load(path)
        deps = sr.deployments
        target: Deployment | None = None
        if sr.booted is not None:
            b = sr.booted
            after = [d for d in deps[b.index + 1:] if d.osname == b.osname]
            before = [d for d in deps[:b.index] if d.osname == b.osname]
            target = after[0] if after else (b if before else None)
        elif len(deps) >= 2:
            target = deps[1]
        if target is None:
            raise SysrootError("No rollback deployment found")
        new = [target] + [x for x in deps if not x.same(target)]
        swap, _ = _rewrite(sr, new, checkpoint or no_checkpoint, prune_repo=False)
        return ListChange(swap, [f"Moving '{target.name}' to be first deployment",
                                 swap.message()])


def pin(path: str | os.PathLike[str], index: int, unpin: bool) -> str:
    with locked(path):
        sr = Sysroot.load(path)
        d = sr.get(index)
        if d.pinned != unpin:
            return f"Deployment {index} is already {'unpinned' if unpin else 'pinned'}"
        origin = KeyFile((d.origin or KeyFile()).to_text())
        if unpin:
            origin.unset("libostree-transient", "pinned")
            if not origin.keys("libostree-transient"):
                origin.remove_group("libostree-transient")
        else:
            origin.set("libostree-transient", "pinned", "true")
        _fs.atomic_write(sr.origin_path(d), origin.to_text().encode(), fsync=True)
        return f"Deployment {index} is now {'unpinned' if unpin else 'pinned'}"


def _target(sr: Sysroot, index: int | None, osname: str | None = None) -> Deployment:
    if index is not None:
        return sr.get(index)
    if osname is not None:
        m = sr.merge_deployment(osname)
        if m is None:
            raise SysrootError(f"No deployments for stateroot '{osname}'")
        return m
    if sr.booted is None:
        raise SysrootError("Not currently booted into an OSTree system",
                           hint="pass --index=INDEX (or --os=OSNAME)")
    return sr.booted


def set_origin(path: str | os.PathLike[str], remote: str, url: str, branch: str | None,
               index: int | None = None, options: dict[str, str] | None = None) -> None:
    """Add ``remote`` to the repo (if new) and make the deployment follow REMOTE:BRANCH."""
    with locked(path):
        sr = Sysroot.load(path)
        d = _target(sr, index)
        RefSpec.parse(f"{remote}:main")  # a valid remote name before it reaches the config
        repo = sr.repo()
        group = f'remote "{remote}"'
        if not repo.config.has_group(group):
            repo.config.set(group, "url", url)
            for k, v in (options or {}).items():
                repo.config.set(group, k, v)
            repo.write_config()
        if branch is None:
            old = d.refspec
            if old is None:
                raise SysrootError("No origin refspec to take the branch from",
                                   hint="name the BRANCH")
            branch = RefSpec.parse(old).name if ":" in old or not is_checksum(old) else old
        origin = KeyFile((d.origin or KeyFile()).to_text())
        origin.set("origin", "refspec", str(RefSpec.parse(f"{remote}:{branch}")))
        _fs.atomic_write(sr.origin_path(d), origin.to_text().encode(), fsync=True)


def kargs_edit_in_place(path: str | os.PathLike[str], append_if_missing: list[str]) -> None:
    """Edit every deployment's ``options`` in the live entries, in place (no swap)."""
    with locked(path):
        sr = Sysroot.load(path)
        edir = sr.boot / f"loader.{sr.bootversion}" / "entries"
        for d in sr.deployments:
            if d.entry is None or d.entry_file is None:
                continue
            opts = KernelArgs.parse(d.entry.options)
            for a in append_if_missing:
                opts.append_if_missing(a)
            d.entry.options = str(opts)
            _fs.atomic_write(edir / d.entry_file, d.entry.format().encode(
                "utf-8", "surrogateescape"), fsync=True)


def config_diff(path: str | os.PathLike[str], osname: str | None) -> list[tuple[str, str]]:
    sr = Sysroot.load(path)
    d = _target(sr, None, osname)
    from ostreefs.boot import etcmerge

    return etcmerge.config_diff(sr.deploy_path(d))


# ----------------------------------------------------------------- upgrade, switch

@dataclass
class UpgradeOptions:
    osname: str | None = None
    pull_only: bool = False
    deploy_only: bool = False
    allow_downgrade: bool = False
    override_commit: str | None = None


@dataclass
class UpgradeResult:
    changed: bool
    deploy: DeployResult | None = None
    messages: list[str] = field(default_factory=list)


def _origin_refspec(d: Deployment) -> RefSpec:
    refspec = d.refspec
    if refspec is None:
        raise SysrootError(f"Deployment {d.index} has no origin refspec; cannot upgrade",
                           hint="set one with 'admin set-origin' or 'admin switch'")
    return RefSpec.parse(refspec)


def upgrade(path: str | os.PathLike[str], fetch: Fetch,
            opts: UpgradeOptions | None = None, checkpoint: Checkpoint | None = None,
            new_refspec: str | None = None) -> UpgradeResult:
    """Pull the merge deployment's origin ref, and deploy it if it changed.

    With ``new_refspec`` (``admin switch``) the origin follows that ref instead and the
    result is deployed even when the commit is the same.
    """
    opts = opts or UpgradeOptions()
    ckpt = checkpoint or no_checkpoint
    with locked(path):
        sr = Sysroot.load(path)
        osname = opts.osname or sr.default_osname()
        sr.require_stateroot(osname)
        merge = sr.merge_deployment(osname)
        if merge is None:
            raise SysrootError(f"No previous deployment for stateroot '{osname}'",
                               hint="deploy one first with 'admin deploy'")
        origin = KeyFile((merge.origin or KeyFile()).to_text())
        if new_refspec is not None:
            spec = RefSpec.parse(new_refspec)
            origin.set("origin", "refspec", str(spec))
        else:
            spec = _origin_refspec(merge)
        repo = sr.repo()
        if not opts.deploy_only and opts.override_commit is None:
            fetch(repo, spec.remote, spec.name)
            ckpt("pull")
        if opts.pull_only:
            return UpgradeResult(changed=False)
        if opts.override_commit is not None:
            csum = rev_parse(repo, opts.override_commit)
        else:
            found = resolve_ref(repo, spec)
            if found is None:
                raise StoreError(f"Refspec '{spec}' not found")
            csum = found
        if csum == merge.csum and new_refspec is None:
            return UpgradeResult(changed=False, messages=["No update available."])
        if not opts.allow_downgrade and new_refspec is None:
            _check_not_older(repo, merge.csum, csum)
        res = deploy_locked(sr, osname, csum, DeployOptions(osname=osname), ckpt,
                            origin=origin)
        return UpgradeResult(changed=True, deploy=res, messages=res.messages)


def _check_not_older(repo: Repo, old: str, new: str) -> None:
    try:
        t_old = repo.load_commit(old).timestamp
    except OstreefsError:
        return
    t_new = repo.load_commit(new).timestamp
    if t_new < t_old:
        raise SysrootError(f"Upgrade target revision '{new}' with timestamp {t_new} is "
                           f"chronologically older than current revision '{old}' with "
                           f"timestamp {t_old}; use --allow-downgrade to permit")


# ----------------------------------------------------------------------- status

@dataclass
class DeploymentStatus:
    deployment: Deployment
    booted: bool
    pending: bool
    rollback: bool
    version: str | None
    gpg_error: str | None = None


def status(path: str | os.PathLike[str]) -> tuple[Sysroot, list[DeploymentStatus]]:
    sr = Sysroot.load(path)
    repo = sr.repo()
    out = []
    for d in sr.deployments:
        pending, rollback_ = marks(sr, d)
        out.append(DeploymentStatus(d, d.same(sr.booted), pending, rollback_,
                                    commit_version(repo, d.csum),
                                    _gpg_problem(repo, d)))
    return sr, out


def marks(sr: Sysroot, d: Deployment) -> tuple[bool, bool]:
    """(pending, rollback) as ostree finds them: the first deployment of the booted
    stateroot before the booted one, and the first one after it."""
    b = sr.booted
    if b is None or d.osname != b.osname or d.same(b):
        return False, False
    same_os = [x for x in sr.deployments if x.osname == b.osname]
    before = [x for x in same_os if x.index < b.index]
    after = [x for x in same_os if x.index > b.index]
    return (bool(before) and before[0].same(d), bool(after) and after[0].same(d))


def _gpg_problem(repo: Repo, d: Deployment) -> str | None:
    """ostree's status fails on a remote origin with gpg-verify on and no signature."""
    spec = d.refspec
    if not spec or ":" not in spec:
        return None
    remote = spec.split(":", 1)[0]
    group = f'remote "{remote}"'
    if not repo.config.has_group(group):
        return None
    if not repo.config.get_bool(group, "gpg-verify", True):
        return None
    meta = repo.read_detached_metadata(d.csum)
    if meta and any(k == "ostree.gpgsigs" for k, _ in meta):
        return None
    return ("GPG verification enabled, but no signatures found (use gpg-verify=false "
            "in remote config to disable)")

