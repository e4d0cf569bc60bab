"""``ostreefs remote``: ostree's remote subcommands over :mod:`ostreefs.store.remotes`.

``refs`` and ``summary`` need the network; they fetch through
``ostreefs.replication.fetch_summary``, looked up when they run so the other
subcommands never import the HTTP stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import Any

from ostreefs.cli.main import Handler, _Parser, need_repo
from ostreefs.cli.util import split_kv
from ostreefs.errors import OstreefsError, StoreError, UsageError


def setup(p: argparse.ArgumentParser) -> Handler:
    sub = p.add_subparsers(dest="remote_command", metavar="COMMAND", parser_class=type(p))

    def cmd(name: str, helptext: str, func: Callable[[argparse.Namespace], int],
            aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext, aliases=list(aliases))
        sp.add_argument("--repo", dest="sub_repo", metavar="PATH",
                        help="path to the repository (default: $OSTREE_REPO)")
        sp.set_defaults(remote_run=func)
        return sp

    a = cmd("add", "Add a remote repository", _add)
    a.add_argument("name", metavar="NAME")
    a.add_argument("url", metavar="URL")
    a.add_argument("branches", nargs="*", metavar="BRANCH")
    a.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set config option KEY=VALUE for the remote")
    a.add_argument("--no-gpg-verify", action="store_true", help="disable GPG verification")
    a.add_argument("--if-not-exists", action="store_true",
                   help="do nothing if the remote exists")
    a.add_argument("--force", action="store_true", help="replace the remote if it exists")
    a.add_argument("--gpg-import", metavar="FILE", help="import GPG keys from FILE")
    a.add_argument("--contenturl", metavar="URL", help="use URL when fetching content")
    a.add_argument("--collection-id", metavar="COLLECTION-ID",
                   help="globally unique ID of the remote's collection of refs")

    d = cmd("delete", "Delete a remote repository", _delete)
    d.add_argument("name", metavar="NAME")
    d.add_argument("--if-exists", action="store_true",
                   help="do nothing if the remote does not exist")

    u = cmd("show-url", "Show remote repository URL", _show_url)
    u.add_argument("name", metavar="NAME")

    li = cmd("list", "List remote repository names", _list)
    li.add_argument("-u", "--show-urls", action="store_true", help="show remote URLs in list")

    g = cmd("gpg-import", "Import GPG keys", _gpg_import)
    g.add_argument("name", metavar="NAME")
    # KEY-IDs may come before or after options (GLib's parser allows both); argparse
    # would not, so what follows NAME is parsed again in _gpg_import.
    g.add_argument("rest", nargs=argparse.REMAINDER, metavar="KEY-ID")
    g.add_argument("-k", "--keyring", action="append", default=[], metavar="FILE",
                   help="import keys from a keyring file (repeatable)")
    g.add_argument("--stdin", action="store_true", help="import keys from standard input")
    g.add_argument("--gpg-homedir", metavar="HOMEDIR",
                   help="keyring to take KEY-IDs from when no file is given")

    k = cmd("gpg-list-keys", "Show remote GPG keys", _gpg_list_keys,
            aliases=("list-gpg-keys",))
    k.add_argument("name", metavar="NAME")

    r = cmd("refs", "List remote refs", _refs)
    r.add_argument("name", metavar="NAME")
    r.add_argument("-r", "--revision", action="store_true", help="show revisions too")
    r.add_argument("--cache-dir", metavar="DIR", help="accepted for ostree compatibility")

    s = cmd("summary", "Show remote summary", _summary)
    s.add_argument("name", metavar="NAME")
    s.add_argument("--raw", action="store_true", help="show raw variant data")
    s.add_argument("--cache-dir", metavar="DIR", help="accepted for ostree compatibility")

    return run


def run(args: argparse.Namespace) -> int:
    func = getattr(args, "remote_run", None)
    if func is None:
        raise UsageError("No \"remote\" subcommand specified",
                         hint="use add, delete, show-url, list, gpg-import, gpg-list-keys, "
                              "refs or summary")
    if getattr(args, "sub_repo", None):
        args.repo = args.sub_repo
    rc: int = func(args)
    return rc


def _open(args: argparse.Namespace) -> Any:
    from ostreefs.store.repo import Repo

    return Repo.open(need_repo(args))


def _read_key_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise UsageError(f"Error opening file {path}: {e.strerror}") from None


def _print_imported(n: int, name: str) -> None:
    print(f"Imported {n} GPG key{'' if n == 1 else 's'} to remote \"{name}\"")


def _add(args: argparse.Namespace) -> int:
    from ostreefs.store import remotes

    repo = _open(args)
    options: dict[str, str] = {}
    if args.contenturl is not None:
        options["contenturl"] = args.contenturl
    for kv in args.set:
        try:
            k, v = split_kv(kv, "for --set")
        except UsageError:
            raise UsageError("Missing '=' in KEY=VALUE for --set") from None
        options[k] = v
    if args.no_gpg_verify:
        options["gpg-verify"] = "false"
    if args.collection_id is not None:
        options["collection-id"] = args.collection_id
    keydata = _read_key_file(args.gpg_import) if args.gpg_import else None
    existed = remotes.has_remote(repo, args.name)
    added = remotes.add_remote(repo, args.name, args.url, options=options,
                               branches=args.branches, if_not_exists=args.if_not_exists,
                               force=args.force)
    if added and keydata is not None:
        from ostreefs.store import gpg

        try:
            n = gpg.import_remote_keys(repo, args.name, [keydata])
        except OstreefsError:
            if not existed:  # all or nothing: no remote without the keys asked for
                remotes.delete_remote(repo, args.name, if_exists=True)
            raise
        _print_imported(n, args.name)
    return 0


def _delete(args: argparse.Namespace) -> int:
    from ostreefs.store import remotes

    remotes.delete_remote(_open(args), args.name, if_exists=args.if_exists)
    return 0


def _show_url(args: argparse.Namespace) -> int:
    from ostreefs.store import remotes

    print(remotes.get_remote(_open(args), args.name).url)
    return 0


def _list(args: argparse.Namespace) -> int:
    from ostreefs.store import remotes

    repo = _open(args)
    names = remotes.list_remotes(repo)
    if args.show_urls:
        width = max((len(n) for n in names), default=0)
        for n in names:
            print(f"{n:<{width}}  {remotes.get_remote(repo, n).url}")
    else:
        for n in names:
            print(n)
    return 0


def _gpg_import(args: argparse.Namespace) -> int:
    from ostreefs.store import gpg

    tail = _Parser(prog="ostreefs remote gpg-import", add_help=False)
    tail.add_argument("key_ids", nargs="*")
    tail.add_argument("-k", "--keyring", action="append", default=[])
    tail.add_argument("--stdin", action="store_true")
    tail.add_argument("--gpg-homedir")
    tail.add_argument("--repo")
    extra, unknown = tail.parse_known_intermixed_args(args.rest)
    if unknown:
        raise UsageError(f"Unknown option {unknown[0]}",
                         hint="see 'ostreefs remote gpg-import --help'")
    args.key_ids = extra.key_ids
    args.keyring = args.keyring + extra.keyring
    args.stdin = args.stdin or extra.stdin
    args.gpg_homedir = extra.gpg_homedir or args.gpg_homedir
    if extra.repo:
        args.repo = extra.repo
    repo = _open(args)
    sources: list[bytes] | None = None
    if args.stdin or args.keyring:
        sources = [_read_key_file(f) for f in args.keyring]
        if args.stdin:
            sources.append(sys.stdin.buffer.read())
    n = gpg.import_remote_keys(repo, args.name, sources, args.key_ids, args.gpg_homedir)
    _print_imported(n, args.name)
    return 0


def _gpg_list_keys(args: argparse.Namespace) -> int:
    from ostreefs.cli.cmd_gpg import format_key
    from ostreefs.store import gpg

    for key in gpg.list_remote_keys(_open(args), args.name):
        print(format_key(key), end="")
    return 0


def _fetch_summary(repo: Any, name: str, missing: str) -> tuple[bytes, bytes | None]:
    try:
        mod = importlib.import_module("ostreefs.replication")
    except ImportError:
        mod = None
    fetch = getattr(mod, "fetch_summary", None)
    if fetch is None:
        raise StoreError("Fetching a remote's summary needs the HTTP pull engine "
                         "(ostreefs.replication.fetch_summary), which is not available")
    summary, sig = fetch(repo, name)
    if summary is None:
        raise StoreError(missing)
    return bytes(summary), (bytes(sig) if sig is not None else None)


def _refs(args: argparse.Namespace) -> int:
    from ostreefs.store import remotes, summary

    repo = _open(args)
    remotes.get_remote(repo, args.name)
    raw, _ = _fetch_summary(repo, args.name,
                            "Remote refs not available; server has no summary file")
    s = summary.parse_summary(raw)
    for r in sorted(s.refs, key=lambda r: r.name.encode()):
        if args.revision:
            print(f"{args.name}:{r.name}\t{r.commit}")
        else:
            print(f"{args.name}:{r.name}")
    return 0


def _summary(args: argparse.Namespace) -> int:
    from ostreefs.cli.cmd_gpg import format_verify_result
    from ostreefs.cli.cmd_summary import format_summary
    from ostreefs.cli.util import in_locale_charset
    from ostreefs.store import gpg, gvariant, remotes, summary
    from ostreefs.store.gvtext import format_value
    from ostreefs.store.objects import SUMMARY_SIG

    repo = _open(args)
    remote = remotes.get_remote(repo, args.name)
    raw, sig = _fetch_summary(repo, args.name, "Remote server has no summary file")
    result = None
    if remote.gpg_verify_summary:
        if sig is None:
            raise gpg.GpgVerifyError(
                "GPG verification enabled, but no summary.sig found (use "
                "gpg-verify-summary=false in remote config to disable)")
        result = gpg.verify_data(repo, args.name, raw, gpg.summary_signatures(sig))
        gpg.require_valid(result, "summary")
    if args.raw:
        print(format_value(SUMMARY_SIG, gvariant.decode(SUMMARY_SIG, raw)))
        return 0
    print(in_locale_charset(format_summary(summary.parse_summary(raw))), end="")
    if result is not None:
        print()
        print(format_verify_result(
            result, "GPG: Verification enabled, found {n} signature{s}:"), end="")
    return 0
