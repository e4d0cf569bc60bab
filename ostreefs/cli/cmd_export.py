"""``ostreefs export``: a commit as a tar stream, with ``ostree export``'s options."""

from __future__ import annotations

import argparse
import os
import sys
from typing import IO

from ostreefs.cli.main import Handler, open_repo
from ostreefs.errors import UsageError
from ostreefs.store.export import export_commit
from ostreefs.store.refs import rev_parse
from ostreefs.store.repo import Repo


def setup(p: argparse.ArgumentParser) -> Handler:
    a = p.add_argument
    a("rev", metavar="COMMIT", help="commit or ref to export")
    a("--no-xattrs", action="store_true", help="leave extended attributes out")
    a("--subpath", metavar="PATH", default="/", help="export only this directory")
    a("--prefix", metavar="PATH", default="",
      help="put every entry under this directory in the archive")
    a("-o", "--output", metavar="PATH", help="write to PATH instead of standard output")
    return run


def _export(repo: Repo, commit: str, out: IO[bytes], args: argparse.Namespace) -> None:
    export_commit(repo, commit, out, subpath=args.subpath, prefix=args.prefix,
                  xattrs=not args.no_xattrs)


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    commit = rev_parse(repo, args.rev)
    if args.output is None:
        if sys.stdout.isatty():
            raise UsageError("Refusing to write a tar archive to a terminal",
                             hint="redirect standard output or pass --output=FILE")
        _export(repo, commit, sys.stdout.buffer, args)
        sys.stdout.buffer.flush()
        return 0
    try:
        with open(args.output, "wb") as f:
            _export(repo, commit, f, args)
    except BaseException:
        # A partial archive must not look like a result.
        try:
            os.unlink(args.output)
        except OSError:
            pass
        raise
    return 0
