"""``admin deploy``: a commit becomes a new deployment, then the boot configuration swaps.

The deployment directory is built under a temporary name (``.tmp-CSUM.SERIAL``) in
the stateroot's ``deploy/``: checkout (hardlinks from the sysroot's bare repo), ``etc``
as a copy of ``usr/etc``, the three-way /etc merge from the merge deployment. Only a
complete tree is renamed to ``CSUM.SERIAL``, made immutable and given its ``.origin``;
then :func:`~ostreefs.boot.swap.write_deployments` switches. A crash before the switch
leaves only unreferenced files, which ``cleanup`` removes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.boot import etcmerge, fsattr
from ostreefs.boot.checkout import CheckoutError, checkout
from ostreefs.boot.cleanup import prune_repo_locked
from ostreefs.boot.kargs import KernelArgs
from ostreefs.boot.kernel import find_kernel
from ostreefs.boot.swap import SwapResult, write_deployments
from ostreefs.boot.sysroot import (
    Checkpoint,
    Deployment,
    Sysroot,
    SysrootError,
    locked,
    no_checkpoint,
)
from ostreefs.store.config import KeyFile
from ostreefs.store.prune import PruneResult
from ostreefs.store.refs import rev_parse
from ostreefs.store.repo import Repo

VAR_STAMP = ".ostree-selabeled"


@dataclass
class KargOptions:
    """``--karg*`` options of deploy, applied in ostree's order."""

    replace: list[str] = field(default_factory=list)
    append: list[str] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    none: bool = False
    proc_cmdline: bool = False


@dataclass
class DeployOptions:
    osname: str | None = None
    kargs: KargOptions = field(default_factory=KargOptions)
    origin: KeyFile | None = None
    retain: bool = False
    retain_pending: bool = False
    retain_rollback: bool = False
    not_as_default: bool = False
    no_merge: bool = False
    no_prune: bool = False


@dataclass
class DeployResult:
    deployment: Deployment
    swap: SwapResult
    #: Lines for stdout, in the order ostree prints them (the swap line comes last).
    messages: list[str] = field(default_factory=list)
    #: Lines for stderr (``note: ...``).
    notes: list[str] = field(default_factory=list)
    prune: PruneResult | None = None


def compose_kargs(merge: Deployment | None, opts: KargOptions,
                  proc_cmdline: str | None = None) -> KernelArgs:
    """The new deployment's kernel arguments (its ``ostree=`` is fixed at the swap)."""
    if opts.none:
        base = KernelArgs()
    elif opts.proc_cmdline:
        base = KernelArgs.parse(proc_cmdline if proc_cmdline is not None
                                else Path("/proc/cmdline").read_text())
        base = KernelArgs([a for a in base.args
                           if not a.startswith(("BOOT_IMAGE=", "initrd="))])
    elif merge is not None:
        base = merge.options.copy()
    else:
        base = KernelArgs()
    for a in opts.replace:
        base.replace(a)
    for a in opts.append:
        base.append(a)
    for a in opts.delete:
        base.delete(a)
    return base


def _merge_etc(merge_root: Path, new_root: Path) -> tuple[int, int, int]:
    r = etcmerge.merge_etc(merge_root, new_root)
    return r.modified, r.removed, r.added


def _serial(sr: Sysroot, osname: str, csum: str) -> int:
    serials = [d.serial for d in sr.deployments if d.osname == osname and d.csum == csum]
    return max(serials) + 1 if serials else 0


def compose_list(sr: Sysroot, osname: str, new: Deployment, merge: Deployment | None,
                 opts: DeployOptions) -> list[Deployment]:
    """ostree's list rules: the new one first (or after the booted/merge one with
    ``not_as_default``); of the same stateroot only booted, merge and pinned ones stay
    unless ``retain``."""
    out: list[Deployment] = []
    added = False
    if not opts.not_as_default:
        out.append(new)
        added = True
    booted = sr.booted
    seen_booted = False
    for d in sr.deployments:
        is_booted = d.same(booted)
        keep_special = d.same(booted) or d.same(merge)
        if opts.retain or d.pinned or d.osname != osname or keep_special:
            out.append(d)
        elif opts.retain_pending and booted is not None and not seen_booted:
            out.append(d)
        elif opts.retain_rollback and booted is not None and seen_booted:
            out.append(d)
        if is_booted:
            seen_booted = True
        if not added and keep_special:
            out.append(new)
            added = True
    if not added:
        out.append(new)
    return out


def stage_deployment(sr: Sysroot, repo: Repo, osname: str, csum: str,
                     merge: Deployment | None, kargs: KernelArgs, origin: KeyFile,
                     ckpt: Checkpoint) -> tuple[Deployment, list[str], list[str]]:
    """Build the complete deployment directory; returns it with messages and notes."""
    messages: list[str] = []
    notes: list[str] = []
    d = Deployment(osname=osname, csum=csum, serial=_serial(sr, osname, csum),
                   options=kargs, origin=origin)
    ddir = sr.path / "ostree" / "deploy" / osname / "deploy"
    ddir.mkdir(exist_ok=True)
    final = ddir / d.name
    tmp = ddir / f".tmp-{d.name}"
    for stale in (tmp, final):
        if os.path.lexists(stale):  # a crashed run's leftover; nothing references it
            fsattr.rm_rf(stale)
            ckpt("clear-stale-deployment")
    try:
        checkout(repo, csum, tmp)
        ckpt("checkout")
        find_kernel(tmp, strict_single=True, checksum=False)  # (the swap hashes it)
        usr_etc, etc = tmp / "usr" / "etc", tmp / "etc"
        if etc.is_dir() and not etc.is_symlink():
            if usr_etc.exists():
                raise SysrootError("Tree contains both /etc and /usr/etc")
            os.rename(etc, usr_etc)
            ckpt("etc-to-usr-etc")
        if usr_etc.is_dir():
            etcmerge.copy_usr_etc(tmp)
            ckpt("etc-copy")
            if merge is not None:
                m, r, a = _merge_etc(sr.deploy_path(merge), tmp)
                messages.append(f"Copying /etc changes: {m} modified, {r} removed, "
                                f"{a} added")
                ckpt("etc-merge")
        for rel in ("etc/.updated", "var/.updated"):
            try:
                os.unlink(tmp / rel)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                pass
        var = tmp / "var"
        if var.is_dir() and not var.is_symlink():
            for name in sorted(os.listdir(var)):
                notes.append(f"Deploying commit {csum} which contains content in "
                             f"/var/{name} that will be ignored.")
        stateroot_var = sr.path / "ostree" / "deploy" / osname / "var"
        if not (stateroot_var / VAR_STAMP).exists():
            messages.insert(0, f"Relabeling /var (no stamp file "
                               f"'var/{VAR_STAMP}' found)")
            _fs.atomic_write(stateroot_var / VAR_STAMP, b"", fsync=False)
            ckpt("var-stamp")
        _fs.syncfs_path(tmp)
        os.rename(tmp, final)
        ckpt("deployment-rename")
    except BaseException as e:
        fsattr.rm_rf(tmp)
        if isinstance(e, CheckoutError) or not isinstance(e, OSError):
            raise
        raise SysrootError(f"Creating the deployment failed: {e.strerror}"
                           + (f": {e.filename}" if e.filename else ""),
                           hint="the previous deployments are unchanged") from None
    try:
        fsattr.set_immutable(final, True)
        ckpt("immutable")
        _fs.atomic_write(sr.origin_path(d), origin.to_text().encode(), fsync=True)
        ckpt("origin")
        os.utime(sr.path / "ostree" / "deploy")
    except OSError as e:
        raise SysrootError(f"Creating the deployment failed: {e.strerror}",
                           hint="the previous deployments are unchanged") from None
    return d, messages, notes


def origin_for(refspec: str) -> KeyFile:
    kf = KeyFile()
    kf.set("origin", "refspec", refspec)
    return kf


def deploy(path: str | os.PathLike[str], revision: str, opts: DeployOptions | None = None,
           checkpoint: Checkpoint | None = None) -> DeployResult:
    """``ostree admin deploy``: see the module docstring."""
    opts = opts or DeployOptions()
    ckpt = checkpoint or no_checkpoint
    with locked(path):
        sr = Sysroot.load(path)
        osname = opts.osname or sr.default_osname()
        sr.require_stateroot(osname)
        return deploy_locked(sr, osname, revision, opts, ckpt)


def deploy_locked(sr: Sysroot, osname: str, revision: str, opts: DeployOptions,
                  ckpt: Checkpoint, origin: KeyFile | None = None) -> DeployResult:
    repo = sr.repo()
    csum = rev_parse(repo, revision)
    merge = None if opts.no_merge else sr.merge_deployment(osname)
    kargs = compose_kargs(merge, opts.kargs)
    origin = origin or opts.origin or origin_for(revision)
    new, messages, notes = stage_deployment(sr, repo, osname, csum, merge, kargs, origin,
                                            ckpt)
    new_list = compose_list(sr, osname, new, merge, opts)
    swap = write_deployments(sr, new_list, ckpt)
    messages.append(swap.message())
    res = DeployResult(deployment=new, swap=swap, messages=messages, notes=notes)
    if not opts.no_prune:
        res.prune = prune_repo_locked(sr, ckpt)
    return res
