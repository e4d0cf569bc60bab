"""``ostreefs ls``, ``cat``, ``diff`` and ``checksum``: reading trees."""

from __future__ import annotations

import argparse
import json
import stat
import sys

from ostreefs.cli.main import Handler, open_repo
from ostreefs.errors import UsageError
from ostreefs.store import tree as treemod
from ostreefs.store.checksum import checksum_path
from ostreefs.store.diff import CommitNode, DiskNode, diff_trees
from ostreefs.store.gvtext import format_value
from ostreefs.store.refs import rev_parse
from ostreefs.store.repo import Repo


def setup_ls(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("rev", metavar="COMMIT")
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("-R", "--recursive", action="store_true", help="list recursively")
    p.add_argument("-d", "--dironly", action="store_true",
                   help="list a directory itself, not its contents")
    p.add_argument("-C", "--checksum", action="store_true", help="show checksums")
    p.add_argument("-X", "--xattrs", action="store_true", help="show extended attributes")
    p.add_argument("--nul-filenames-only", action="store_true",
                   help="print only file names, NUL-terminated")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")
    return run_ls


def _line(e: treemod.Entry, args: argparse.Namespace) -> str:
    perms = stat.S_IMODE(e.mode)
    s = f"{e.type_char}0{perms:04o} {e.uid} {e.gid} {e.size:6d} "
    if args.checksum:
        s += f"{e.checksum} {e.meta_checksum} " if e.is_dir else f"{e.checksum} "
    if args.xattrs:
        s += "{ " + format_value("a(ayay)", [(n + b"\0", v) for n, v in e.xattrs]) + " } "
    s += e.path
    if e.is_symlink:
        s += f" -> {e.symlink_target}"
    return s


def _emit(e: treemod.Entry, args: argparse.Namespace) -> None:
    if args.nul_filenames_only:
        sys.stdout.write(e.path + "\0")
    elif args.json:
        print(json.dumps({"path": e.path, "type": {"d": "dir", "l": "symlink",
                                                   "-": "file"}[e.type_char],
                          "mode": stat.S_IMODE(e.mode), "uid": e.uid, "gid": e.gid,
                          "size": e.size, "checksum": e.checksum,
                          "meta_checksum": e.meta_checksum or None,
                          "target": e.symlink_target or None,
                          "xattrs": {n.decode("utf-8", "replace"): v.hex()
                                     for n, v in e.xattrs}}))
    else:
        print(_line(e, args))


def run_ls(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    commit = rev_parse(repo, args.rev)
    for path in args.paths or ["/"]:
        e = treemod.lookup(repo, commit, path)
        _emit(e, args)
        if e.is_dir and not args.dironly:
            for child in treemod.walk(repo, e, args.recursive):
                _emit(child, args)
    return 0


def setup_cat(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("rev", metavar="COMMIT")
    p.add_argument("paths", nargs="+", metavar="PATH")
    return run_cat


class NotAFile(UsageError):
    """{0} is not a regular file"""


def run_cat(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    commit = rev_parse(repo, args.rev)
    out = sys.stdout.buffer
    for path in args.paths:
        e = treemod.lookup(repo, commit, path)
        if e.is_dir or e.is_symlink:
            raise NotAFile(e.path)
        for block in repo.iter_file_payload(e.checksum):
            out.write(block)
    out.flush()
    return 0


def setup_diff(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("a", metavar="REV_OR_DIR")
    p.add_argument("b", metavar="REV_OR_DIR", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON")
    return run_diff


def _node(repo: Repo, spec: str) -> CommitNode | DiskNode:
    if spec.startswith(("/", "./", "../")) or spec in (".", ".."):
        return DiskNode(spec)
    c = repo.load_commit(rev_parse(repo, spec))
    return CommitNode(repo, c.root_tree, c.root_meta)


def run_diff(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    if args.b is None:
        c = repo.load_commit(rev_parse(repo, args.a))
        if c.parent is None:
            raise UsageError(f"Commit {args.a} has no parent to diff against")
        a, b = f"{args.a}^", args.a
    else:
        a, b = args.a, args.b
    res = diff_trees(_node(repo, a), _node(repo, b))
    if args.json:
        print(json.dumps({"modified": res.modified, "removed": res.removed,
                          "added": res.added}, indent=2))
        return 0
    for path in res.modified:
        print(f"M    {path}")
    for path in res.removed:
        print(f"D    {path}")
    for path in res.added:
        print(f"A    {path}")
    return 0


def setup_checksum(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--ignore-xattrs", action="store_true", help="leave xattrs out")
    return run_checksum


def run_checksum(args: argparse.Namespace) -> int:
    for path in args.paths:
        c = checksum_path(path, xattrs=not args.ignore_xattrs)
        print(c if len(args.paths) == 1 else f"{c}  {path}")
    return 0
