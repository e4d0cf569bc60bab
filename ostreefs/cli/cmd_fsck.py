"""``ostreefs fsck``: verify objects, closures and the index."""

from __future__ import annotations

import argparse
import json
import sys

from ostreefs.cli.main import Handler, open_repo
from ostreefs.store.fsck import fsck


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.add_argument("-a", "--all", action="store_true",
                   help="accepted for compatibility: every object is always checked")
    p.add_argument("--delete", action="store_true",
                   help="remove corrupt objects and mark their commits partial")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return run


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    quiet = args.quiet or args.json
    if not quiet:
        print("Validating refs...")
        print("Enumerating commits...")

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty() and not quiet:
            sys.stderr.write(f"\rfsck objects ({done}/{total}) {done * 100 // total}%")
            if done == total:
                sys.stderr.write("\n")

    rep = fsck(repo, delete=args.delete, progress=progress)
    if args.json:
        print(json.dumps({
            "ok": rep.ok, "refs": rep.refs, "commits": rep.commits, "objects": rep.objects,
            "partial_commits": rep.partial_commits, "ref_problems": rep.ref_problems,
            "problems": [{"checksum": p.checksum, "type": p.otype.value, "kind": p.kind,
                          "detail": p.detail, "commits": p.commits, "path": p.path}
                         for p in rep.problems],
            "deleted": rep.deleted, "index_repairs": rep.index_repairs}, indent=2))
        return 0 if rep.ok else 1
    if not quiet:
        print(f"Verifying content integrity of {rep.commits} commit objects...")
        print(f"fsck objects ({rep.objects}/{rep.objects}) 100%")
    for r in rep.ref_problems:
        print(f"error: {r}", file=sys.stderr)
    for p in rep.problems:
        print(f"error: {p.describe()}", file=sys.stderr)
    for d in rep.deleted:
        print(f"Deleted corrupt object {d}")
    if rep.index_repairs and not quiet:
        print(f"Index lagged the objects ({len(rep.index_repairs)} differences); repaired")
    if rep.partial_commits:
        print(f"{len(rep.partial_commits)} partial commits not verified")
    if not rep.ok:
        n = len(rep.problems) + len(rep.ref_problems)
        if rep.fsck_partial_commits and not n:
            print(f"error: {len(rep.fsck_partial_commits)} partial commits from fsck-detected "
                  "corruption", file=sys.stderr)
        else:
            print(f"error: Repository corruption encountered ({n} problems)",
                  file=sys.stderr)
        return 1
    if not quiet:
        print(f"object fsck of {rep.commits} commits completed successfully - "
              "no errors found.")
    return 0
