"""``ostreefs log`` and ``show``: ostree's text blocks, or ``--json``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import format_date
from ostreefs.errors import StoreError
from ostreefs.store.gvariant import Variant
from ostreefs.store.gvtext import format_value
from ostreefs.store.history import LogEntry, iter_log
from ostreefs.store.objects import Commit
from ostreefs.store.refs import RefSpec, read_reflog, rev_parse
from ostreefs.store.repo import Repo


def setup_log(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("rev", metavar="REV")
    p.add_argument("--raw", action="store_true", help="show raw variant data")
    p.add_argument("--reflog", action="store_true",
                   help="list every move of the ref (time, old, new) instead of parents")
    p.add_argument("--json", action="store_true", help="print JSON")
    return run_log


def setup_show(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("rev", metavar="REV")
    p.add_argument("--raw", action="store_true", help="show raw variant data")
    p.add_argument("--print-metadata-key", metavar="KEY", help="print one metadata value")
    p.add_argument("--print-detached-metadata-key", metavar="KEY",
                   help="print one detached metadata value")
    p.add_argument("--gpg-homedir", metavar="HOMEDIR",
                   help="also trust the *.gpg keyrings in HOMEDIR when checking signatures")
    p.add_argument("--gpg-verify-remote", metavar="REMOTE",
                   help="check signatures with the keys trusted for REMOTE")
    p.add_argument("--json", action="store_true", help="print JSON")
    return run_show


def _block(checksum: str, c: Commit) -> str:
    lines = [f"commit {checksum}"]
    if c.parent:
        lines.append(f"Parent:  {c.parent}")
    lines.append(f"ContentChecksum:  {c.content_checksum}")
    lines.append(f"Date:  {format_date(c.timestamp)}")
    if c.version is not None:
        lines.append(f"Version: {c.version}")
    lines.append("")
    lines.append(f"    {c.subject}")
    lines.append("")
    if c.body:
        lines.extend(f"    {line}" for line in c.body.split("\n"))
        lines.append("")
    return "\n".join(lines) + "\n"


def _raw(c: Commit) -> str:
    md = format_value("a{sv}", list(c.metadata))
    parent = format_value("ay", bytes.fromhex(c.parent)) if c.parent else "@ay []"
    return (f"({md}, {parent}, @a(say) [], {format_value('s', c.subject)}, "
            f"{format_value('s', c.body)}, uint64 {c.timestamp}, "
            f"{format_value('ay', bytes.fromhex(c.root_tree))}, "
            f"{format_value('ay', bytes.fromhex(c.root_meta))})\n")


def _as_json(e: LogEntry) -> dict[str, Any]:
    c = e.commit
    if c is None:
        return {"commit": e.checksum, "missing": True}
    return {"commit": e.checksum, "parent": c.parent, "subject": c.subject,
            "body": c.body, "timestamp": c.timestamp, "date": format_date(c.timestamp),
            "version": c.version, "content_checksum": c.content_checksum,
            "root_tree": c.root_tree, "root_meta": c.root_meta, "partial": e.partial,
            "metadata": {k: _plain(v.value) for k, v in c.metadata}}


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, Variant):  # (a tuple too: ask first)
        return _plain(v.value)
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def run_log(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    if args.reflog:
        moves = read_reflog(repo, RefSpec.parse(args.rev))
        if not moves:
            raise StoreError(f"No reflog for '{args.rev}'")
        if args.json:
            print(json.dumps([{"time_ns": m.time_ns, "old": m.old, "new": m.new,
                               "reason": m.reason} for m in reversed(moves)], indent=2))
            return 0
        for m in reversed(moves):
            print(f"{format_date(m.time_ns // 1_000_000_000)}  {m.old or '-' * 64} -> "
                  f"{m.new or '(deleted)'}  {m.reason}".rstrip())
        return 0
    csum = rev_parse(repo, args.rev)
    entries_iter = iter_log(repo, csum)
    if args.json:
        print(json.dumps([_as_json(e) for e in entries_iter], indent=2))
        return 0
    for e in entries_iter:
        if e.commit is None:
            print("<< History beyond this commit not fetched >>")
            break
        if args.raw:
            print(f"commit {e.checksum}")
            print(_raw(e.commit), end="")
        else:
            print(_block(e.checksum, e.commit), end="")
    return 0


def run_show(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    csum = rev_parse(repo, args.rev)
    c = repo.load_commit(csum)
    if args.print_metadata_key or args.print_detached_metadata_key:
        key = args.print_metadata_key or args.print_detached_metadata_key
        md = c.metadata if args.print_metadata_key else (
            repo.read_detached_metadata(csum) or ())
        for k, v in md:
            if k == key:
                print(format_value(v.signature, v.value))
                return 0
        which = "metadata" if args.print_metadata_key else "detached metadata"
        raise StoreError(f"No such metadata key '{key}'", hint=f"in the {which} of {csum}")
    if args.json:
        out = _as_json(LogEntry(csum, c))
        det = repo.read_detached_metadata(csum)
        out["detached_metadata"] = {k: _plain(v.value) for k, v in det or ()}
        print(json.dumps(out, indent=2))
        return 0
    if args.raw:
        print(f"commit {csum}")
        print(_raw(c), end="")
    else:
        print(_block(csum, c), end="")
    _print_signatures(repo, csum, args)
    return 0


def _print_signatures(repo: Repo, csum: str, args: argparse.Namespace) -> None:
    """The signature block ostree prints after a commit that has signatures."""
    import os

    from ostreefs.cli.cmd_gpg import format_verify_result
    from ostreefs.store import gpg

    if not gpg.commit_signatures(repo.read_detached_metadata(csum)):
        return
    result = gpg.verify_commit(
        repo, csum, args.gpg_verify_remote, keyring_dir=args.gpg_homedir,
        global_keyring_dir=os.environ.get("OSTREE_GPG_HOME", gpg.GLOBAL_KEYRING_DIR))
    print(format_verify_result(result), end="")
