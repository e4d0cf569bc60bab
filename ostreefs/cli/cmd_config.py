"""``ostreefs config get|set|unset``: ``core.mode``-style keys or ``--group``."""

from __future__ import annotations

import argparse

from ostreefs.cli.main import Handler, open_repo
from ostreefs.errors import OstreefsError, UsageError


class KeyNotFound(OstreefsError):
    """Key file does not have key “{1}” in group “{0}”"""


class GroupNotFound(OstreefsError):
    """Key file does not have group “{0}”"""


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("--group", help="the group of KEY (then KEY has no group prefix)")
    p.add_argument("action", choices=["get", "set", "unset"])
    p.add_argument("key")
    p.add_argument("value", nargs="?")
    return run


def _split(args: argparse.Namespace) -> tuple[str, str]:
    if args.group:
        return args.group, args.key
    group, dot, key = args.key.rpartition(".")
    if not dot:
        raise UsageError(f"Key '{args.key}' must be of the form GROUP.NAME",
                         hint="e.g. core.mode, or pass --group")
    return group, key


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    group, key = _split(args)
    if args.action == "get":
        v = repo.config.get(group, key)
        if v is None:
            if not repo.config.has_group(group):
                raise GroupNotFound(group)
            raise KeyNotFound(group, key)
        print(v)
    elif args.action == "set":
        if args.value is None:
            raise UsageError("config set needs KEY VALUE")
        with repo.lock():
            repo.reload_config()
            repo.config.set(group, key, args.value)
            repo.write_config()
    else:
        with repo.lock():
            repo.reload_config()
            if repo.config.unset(group, key):
                repo.write_config()
    return 0
