"""``ostreefs mount [--repo=R] REV[:SUBPATH] MOUNTPOINT [-f] [-o OPTS]``: a commit as a
read-only FUSE file system (see ostreefs.mount).

``ostreefs mount --layer REV1 --layer REV2 ... MOUNTPOINT`` mounts the union of the
commits, lower first, with OCI whiteouts applied: what ``ostree checkout --union
--whiteouts`` of them in order leaves. A build tool puts a kernel overlayfs over it
(``lowerdir=MOUNTPOINT,upperdir=U,workdir=W``), runs a step in the merged view, turns
the overlayfs whiteouts in U into OCI ones (a 0:0 character device NAME becomes an empty
``.wh.NAME``; a directory with ``trusted.overlay.opaque=y`` gets a ``.wh..wh..opq``) and
commits the result as the next layer with ``ostreefs commit --tree=dir=U``; see
:mod:`ostreefs.mount.layers`.

``ostreefs mount --all MOUNTPOINT`` shows the repository's history: ``refs/<ref>/`` and
``commits/<checksum>/``, each a commit's tree, read when first looked at.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os

from ostreefs.cli.main import Handler, open_repo, skip_teardown
from ostreefs.errors import UsageError


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("rev", metavar="REV[:SUBPATH]", nargs="?",
                   help="a ref, checksum or prefix, optionally ':/path' inside the commit")
    p.add_argument("--layer", dest="layers", action="append", default=[], metavar="REV",
                   help="mount the union of these commits, lower first, with OCI "
                        "whiteouts applied (repeat, lowest first)")
    p.add_argument("--all", action="store_true",
                   help="mount every ref (refs/REF/) and commit (commits/CHECKSUM/)")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true",
                   help="stay in the foreground (log to stderr) until unmounted")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTS",
                   help="comma-separated: allow_other, uid=N, gid=N (owner shown for "
                        "everything), log=FILE (the daemon's log)")
    return run


def split_rev(text: str) -> tuple[str, str]:
    """``REV:/SUB`` -> (REV, /SUB); a colon not followed by '/' belongs to REV."""
    i = text.rfind(":/")
    if i <= 0:
        return text, "/"
    return text[:i], text[i + 1:]


class Options:
    """The ``-o`` values, parsed."""

    __slots__ = ("allow_other", "uid", "gid", "log")

    def __init__(self) -> None:
        self.allow_other = False
        self.uid: int | None = None
        self.gid: int | None = None
        self.log: str | None = None


def parse_options(values: list[str]) -> Options:
    """The ``-o`` values (each comma-separated), as ``mount -o`` takes them."""
    out = Options()
    for value in values:
        for item in filter(None, value.split(",")):
            key, eq, val = item.partition("=")
            if key == "allow_other" and not eq:
                out.allow_other = True
            elif key == "uid" and eq and val.isdigit():
                out.uid = int(val)
            elif key == "gid" and eq and val.isdigit():
                out.gid = int(val)
            elif key == "log" and eq and val:
                out.log = os.path.abspath(val)
            elif key == "ro" and not eq:
                continue
            else:
                raise UsageError(f"Unknown or malformed mount option '{item}'",
                                 hint="use allow_other, uid=N, gid=N, log=FILE")
    return out


def run(args: argparse.Namespace) -> int:
    # Start-up makes many objects and no garbage worth collecting: no collector
    # passes until it is done (a daemon then tunes its own; see fuse.py).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(args, was_enabled)
    finally:
        if was_enabled:
            gc.enable()


def _run(args: argparse.Namespace, collect: bool) -> int:
    from ostreefs.mount.fuse import MountOptions, mount
    from ostreefs.mount.vfs import CommitVFS, HistoryVFS, LayerVFS
    from ostreefs.store.refs import rev_parse

    o = parse_options(args.options)
    kinds = (args.rev is not None) + bool(args.layers) + bool(args.all)
    if kinds != 1:
        raise UsageError("Give exactly one of REV, --layer REV... or --all",
                         hint="ostreefs mount [--repo=R] (REV[:SUBPATH] | --layer REV... "
                              "| --all) MOUNTPOINT")
    repo = open_repo(args)
    subpath = "/"
    vfs: CommitVFS
    if args.layers:
        vfs = LayerVFS(repo, [rev_parse(repo, r) for r in args.layers], uid=o.uid, gid=o.gid)
    elif args.all:
        vfs = HistoryVFS(repo, uid=o.uid, gid=o.gid)
    else:
        rev, subpath = split_rev(args.rev)
        vfs = CommitVFS(repo, rev_parse(repo, rev), subpath, uid=o.uid, gid=o.gid)
    logging.basicConfig(level=logging.INFO,
                        format="ostreefs mount: %(levelname)s: %(message)s")
    if collect:  # before serving (a foreground mount serves in this process)
        gc.enable()
    mount(vfs, args.mountpoint, MountOptions(
        foreground=args.foreground, allow_other=o.allow_other, uid=o.uid, gid=o.gid,
        subpath=subpath, log_path=o.log))
    if not args.foreground:
        skip_teardown()  # the daemon serves on; this parent holds nothing
    return 0
