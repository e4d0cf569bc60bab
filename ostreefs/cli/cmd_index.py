"""``ostreefs index verify|rebuild``: the derived LMDB index."""

from __future__ import annotations

import argparse

from ostreefs.cli.main import Handler, open_repo


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("action", choices=["verify", "rebuild", "sync"],
                   help="verify: compare with the objects; sync: catch up; "
                        "rebuild: recompute from scratch")
    return run


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    idx = repo.index
    if args.action == "rebuild":
        idx.rebuild()
        print(f"Index rebuilt: {idx.object_count()} objects, "
              f"{len(idx.commits_list())} commits")
        return 0
    if args.action == "sync":
        n = idx.sync()
        print(f"Index synced: {n} object directories rescanned")
        return 0
    problems = idx.verify()
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} differences; run 'ostreefs index sync' to repair")
        return 1
    print(f"Index matches the objects ({idx.object_count()} objects)")
    return 0
