"""``ostreefs checkout``: ostree's options over ostreefs.boot.checkout."""

from __future__ import annotations

import argparse
import os

from ostreefs.boot.checkout import CheckoutOptions, checkout
from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import parse_bool
from ostreefs.errors import UsageError
from ostreefs.store.refs import rev_parse


def setup(p: argparse.ArgumentParser) -> Handler:
    a = p.add_argument
    a("rev", metavar="COMMIT", nargs="?")
    a("dest", metavar="DESTINATION", nargs="?",
      help="directory to create (default: the last component of COMMIT)")
    a("-U", "--user-mode", action="store_true",
      help="do not change ownership or set extended attributes")
    a("--disable-cache", action="store_true",
      help="do not use the uncompressed object cache of archive repos")
    a("--subpath", default="/", metavar="PATH", help="check out this subdirectory only")
    a("--union", action="store_true", help="keep existing directories, overwrite files")
    a("--union-add", action="store_true", help="keep existing files, only add new ones")
    a("--union-identical", action="store_true",
      help="fail if a file would be replaced by a different one")
    a("--whiteouts", action="store_true",
      help="process OCI whiteouts (.wh.NAME, .wh..wh..opq)")
    a("--allow-noent", action="store_true", help="do nothing if the subpath does not exist")
    a("--from-stdin", action="store_true", help="read 'COMMIT DEST' lines from stdin")
    a("--from-file", metavar="FILE", help="read 'COMMIT DEST' lines from FILE")
    a("--fsync", metavar="POLICY", help="fsync each file and directory (true/false)")
    a("-H", "--require-hardlinks", action="store_true",
      help="fail instead of copying when a file cannot be hardlinked")
    a("-C", "--force-copy", action="store_true", help="never hardlink")
    a("-M", "--bareuseronly-dirs", action="store_true",
      help="drop directory mode bits outside 0775")
    return run


def _options(args: argparse.Namespace) -> CheckoutOptions:
    if sum((args.union, args.union_add, args.union_identical)) > 1:
        raise UsageError("Cannot specify more than one union option")
    return CheckoutOptions(
        user_mode=args.user_mode, subpath=args.subpath, union=args.union,
        union_add=args.union_add, union_identical=args.union_identical,
        whiteouts=args.whiteouts, allow_noent=args.allow_noent,
        force_copy=args.force_copy, require_hardlinks=args.require_hardlinks,
        bareuseronly_dirs=args.bareuseronly_dirs, disable_cache=args.disable_cache,
        fsync=parse_bool(args.fsync) if args.fsync else False)


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    opts = _options(args)
    jobs: list[tuple[str, str]] = []
    if args.from_stdin or args.from_file:
        import sys

        stream = sys.stdin if args.from_stdin else open(args.from_file, encoding="utf-8")
        with stream:
            for line in stream:
                parts = line.split()
                if len(parts) == 2:
                    jobs.append((parts[0], parts[1]))
                elif parts:
                    raise UsageError(f"Invalid line {line.strip()!r}: expected COMMIT DEST")
    else:
        if args.rev is None:
            raise UsageError("COMMIT must be specified")
        dest = args.dest or os.path.basename(args.rev.rstrip("/").split(":")[-1])
        jobs.append((args.rev, dest))
    for rev, dest in jobs:
        checkout(repo, rev_parse(repo, rev), dest, opts)
    return 0
