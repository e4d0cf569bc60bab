"""``ostreefs refs``, ``rev-parse`` and ``reset``."""

from __future__ import annotations

import argparse
import json

from ostreefs.cli.main import Handler, open_repo
from ostreefs.errors import StoreError, UsageError
from ostreefs.store.refs import RefSpec, list_refs, resolve_ref, rev_parse, set_ref


class InvalidRefToReset(StoreError):
    """Invalid ref '{0}'"""


def setup_refs(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("prefix", nargs="*", metavar="PREFIX|REF")
    p.add_argument("--list", action="store_true", help="list refs (the default)")
    p.add_argument("--delete", action="store_true", help="delete the named refs")
    p.add_argument("--create", metavar="NEWREF", help="create NEWREF pointing at REF")
    p.add_argument("--force", action="store_true", help="with --create, overwrite")
    p.add_argument("-A", "--alias", action="store_true",
                   help="with --create, make NEWREF an alias (symlink) of REF")
    p.add_argument("--json", action="store_true", help="print {ref: commit} as JSON")
    return run_refs


def run_refs(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    if args.create:
        if len(args.prefix) != 1:
            raise UsageError("--create requires exactly one existing REF")
        new = RefSpec.parse(args.create)
        target = rev_parse(repo, args.prefix[0])
        if resolve_ref(repo, new) is not None and new.remote is None and not args.force:
            if (repo.path / new.relpath()).exists():
                raise StoreError(f"--create specified but ref {new} already exists",
                                 hint="add --force to overwrite it")
        if args.alias:
            src = RefSpec.parse(args.prefix[0])
            link = repo.path / new.relpath()
            link.parent.mkdir(parents=True, exist_ok=True)
            import os

            rel = os.path.relpath(repo.path / src.relpath(), link.parent)
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(rel)
            return 0
        set_ref(repo, new, target, reason="refs --create")
        return 0
    if args.delete:
        if not args.prefix:
            raise UsageError("--delete requires at least one REF or PREFIX")
        for pfx in args.prefix:
            # As ostree: deleting what does not exist is not an error.
            matched = list(_under(list_refs(repo), pfx))
            for r in matched:
                set_ref(repo, r, None, reason="refs --delete")
        return 0
    shown: dict[str, str] = {}
    if args.prefix:
        for pfx in args.prefix:
            shown.update(_under(list_refs(repo), pfx))
    else:
        shown = list_refs(repo)
    refs = shown
    if args.json:
        print(json.dumps(refs, indent=2, sort_keys=True))
        return 0
    for name in refs:
        if args.prefix and len(args.prefix) == 1 and not args.list:
            pfx = args.prefix[0].rstrip("/")
            print(name[len(pfx) + 1:] if name.startswith(pfx + "/") else name)
        else:
            print(name)
    return 0


def _under(refs: dict[str, str], prefix: str) -> dict[str, str]:
    p = prefix.rstrip("/")
    return {k: v for k, v in refs.items() if k == p or k.startswith(p + "/")}


def setup_rev_parse(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("rev", nargs="+", metavar="REV")
    p.add_argument("-S", "--single", action="store_true",
                   help="accept only a single commit (the default behaviour)")
    return run_rev_parse


def run_rev_parse(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    for rev in args.rev:
        print(rev_parse(repo, rev))
    return 0


def setup_reset(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("ref", metavar="REF")
    p.add_argument("target", metavar="COMMIT")
    return run_reset


def run_reset(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    spec = RefSpec.parse(args.ref)
    if resolve_ref(repo, spec) is None:
        raise InvalidRefToReset(args.ref)
    target = rev_parse(repo, args.target)
    repo.load_commit(target)
    set_ref(repo, spec, target, reason=f"reset to {args.target}")
    return 0
