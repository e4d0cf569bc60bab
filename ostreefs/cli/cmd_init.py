"""``ostreefs init``."""

from __future__ import annotations

import argparse

from ostreefs.cli.main import Handler, need_repo
from ostreefs.store.config import RepoMode
from ostreefs.store.repo import Repo


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--mode", default="bare",
                   help="bare, bare-user, bare-user-only or archive (default: bare)")
    p.add_argument("--collection-id", metavar="ID", help="globally unique ID of this repo")
    return run


def run(args: argparse.Namespace) -> int:
    Repo.init(need_repo(args), RepoMode.parse(args.mode), args.collection_id)
    return 0
