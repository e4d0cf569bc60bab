"""``ostreefs prune``: delete unreachable objects, printing what ``ostree prune`` prints."""

from __future__ import annotations

import argparse
import json

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import format_size, in_locale_charset, parse_timestamp
from ostreefs.errors import OstreefsError, UsageError
from ostreefs.store.prune import PruneResult, prune


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--no-prune", action="store_true",
                   help="only report what would be deleted; delete nothing")
    p.add_argument("--refs-only", action="store_true",
                   help="keep only what refs reach (not every commit object)")
    p.add_argument("--depth", type=int, default=-1, metavar="DEPTH",
                   help="follow DEPTH parents of each kept commit (default: -1 = all)")
    p.add_argument("--delete-commit", metavar="COMMIT",
                   help="delete COMMIT (refused while a ref points at it)")
    p.add_argument("--keep-younger-than", metavar="DATE",
                   help="drop each branch's history from its first commit older than "
                        "DATE (@SECONDS or 'YYYY-MM-DD HH:MM:SS +0000'); tips are kept")
    p.add_argument("--static-deltas-only", action="store_true",
                   help="with --delete-commit, delete only static deltas to COMMIT "
                        "(ostreefs writes none, so the commit is kept)")
    p.add_argument("--retain-branch-depth", action="append", default=[],
                   metavar="BRANCH=DEPTH", help="keep DEPTH parents of BRANCH")
    p.add_argument("--only-branch", action="append", default=[], metavar="BRANCH",
                   help="prune only BRANCH's history (repeatable); other refs keep all")
    p.add_argument("--commit-only", action="store_true",
                   help="only consider and delete commit objects")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    # ostree ignores stray arguments to prune; so do we.
    p.add_argument("ignored", nargs="*", help=argparse.SUPPRESS)
    return run


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    if args.delete_commit is not None and args.no_prune:
        raise OstreefsError("Cannot specify both --delete-commit and --no-prune")
    if args.static_deltas_only and args.delete_commit is None:
        raise OstreefsError("--static-deltas-only requires --delete-commit; see "
                            "https://github.com/ostreedev/ostree/issues/1479")
    keep_younger_than = None
    if args.keep_younger_than is not None:
        try:
            keep_younger_than = parse_timestamp(args.keep_younger_than)
        except UsageError as e:  # ostree exits 1 here, not with a usage error
            raise OstreefsError(str(e), hint=e.hint) from None
    retain: dict[str, int] = {}
    for spec in args.retain_branch_depth:
        branch, eq, depth = spec.rpartition("=")
        if not eq or not branch:
            raise OstreefsError(f"Invalid value {spec}, must specify BRANCH=DEPTH")
        try:
            retain[branch] = int(depth)
        except ValueError:
            raise OstreefsError(f"Invalid depth {depth}") from None
    delete = [] if args.delete_commit is None or args.static_deltas_only \
        else [args.delete_commit]
    res = prune(repo, refs_only=args.refs_only, depth=args.depth,
                keep_younger_than=keep_younger_than, delete_commits=delete,
                only_branches=args.only_branch, retain_branch_depth=retain,
                commit_only=args.commit_only, dry_run=args.no_prune)
    if args.json:
        print(json.dumps({"total": res.total, "deleted": res.deleted,
                          "bytes_freed": res.bytes_freed,
                          "deleted_commits": res.deleted_commits,
                          "dry_run": res.dry_run, "commit_only": res.commit_only},
                         indent=2))
        return 0
    print(in_locale_charset(_report(res)))
    return 0


def _report(res: PruneResult) -> str:
    total = "Total (commit only) objects" if res.commit_only else "Total objects"
    lines = [f"{total}: {res.total}"]
    size = format_size(res.bytes_freed)
    if res.deleted == 0:
        lines.append("No unreachable objects")
    elif res.dry_run:
        lines.append(f"Would delete: {res.deleted} objects, freeing {size}")
    else:
        lines.append(f"Deleted {res.deleted} objects, {size} freed")
    return "\n".join(lines)


