"""``ostreefs pull-local``: copy commits from another repository on this machine."""

from __future__ import annotations

import argparse
import time

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import format_size, format_transferred, in_locale_charset
from ostreefs.errors import OstreefsError, StoreError, UsageError
from ostreefs.store.pull_local import pull_local
from ostreefs.store.repo import Repo


def setup(p: argparse.ArgumentParser) -> Handler:
    _add_options(p)
    # GLib lets options follow the positional words (``SRC --remote=R REF``), which
    # argparse cannot split between two positionals; run() parses what follows SRC.
    p.add_argument("words", nargs=argparse.REMAINDER, metavar="SRC_REPO [REF...]",
                   help="the repository to copy from, then refs or commit checksums to "
                        "copy (default: every ref of SRC_REPO)")
    return run


def _add_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--remote", metavar="REMOTE",
      help="store the refs as REMOTE:REF (refs/remotes/REMOTE/) instead of local heads")
    a("--depth", type=int, default=0, metavar="DEPTH",
      help="parents to copy too, -1 for all (default: 0)")
    a("--untrusted", action="store_true",
      help="verify the checksum of every object linked or copied from SRC_REPO")
    a("--commit-metadata-only", action="store_true",
      help="copy only the commit objects (the commits stay partial)")
    a("--disable-fsync", action="store_true", help="do not sync objects and refs to disk")
    a("--per-object-fsync", action="store_true",
      help="accepted for compatibility; objects are synced per transaction")
    a("--bareuseronly-files", action="store_true",
      help="reject regular files with a mode outside 0775 (setuid, world-writable...)")
    a("--disable-verify-bindings", action="store_true",
      help="do not check that each commit is bound to the ref it is copied by")
    a("--require-static-deltas", action="store_true",
      help="fail: pull-local copies objects, never static deltas")
    a("--gpg-verify", action="store_true", help="not supported")
    a("--gpg-verify-summary", action="store_true", help="not supported")
    a("-v", "--verbose", action="store_true", help="accepted for compatibility")


class _WordsParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"ostreefs pull-local: {message}",
                         hint="see 'ostreefs pull-local --help'")


def _parse_words(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """SRC_REPO and REFs from the words after the first positional, options among them."""
    inner = _WordsParser(prog="ostreefs pull-local", add_help=False)
    _add_options(inner)
    inner.add_argument("--repo")
    inner.add_argument("positional", nargs="*")
    words = list(args.words)
    if words[:1] == ["--"]:
        words = words[1:]
    inner.parse_intermixed_args(words, namespace=args)
    pos: list[str] = args.positional
    return (pos[0] if pos else None), pos[1:]




def run(args: argparse.Namespace) -> int:
    src_path, refs = _parse_words(args)
    dest = open_repo(args)
    if src_path is None:
        raise OstreefsError("DESTINATION must be specified",
                            hint="usage: pull-local [--repo=DEST] SRC_REPO [REF...]")
    if args.depth < -1:
        raise UsageError(f"Invalid --depth {args.depth}", hint="use -1 (all) or N >= 0")
    if args.gpg_verify or args.gpg_verify_summary:
        raise StoreError("GPG verification is not supported by ostreefs pull-local")
    if args.require_static_deltas:
        raise StoreError("Fetch configured to require static deltas, but no summary deltas "
                         "or delta index found")
    src = Repo.open(src_path)
    start = time.monotonic()
    res = pull_local(dest, src, refs or None, depth=args.depth, remote=args.remote,
                     untrusted=args.untrusted,
                     commit_metadata_only=args.commit_metadata_only,
                     verify_bindings=not args.disable_verify_bindings,
                     bareuseronly_files=args.bareuseronly_files,
                     fsync=False if args.disable_fsync else None)
    line = (f"{res.metadata_imported} metadata, {res.content_imported} content objects "
            f"imported")
    if res.bytes_transferred > 0:
        amount = format_transferred(res.bytes_transferred)
        line += f"; {amount} transferred in {int(time.monotonic() - start)} seconds"
    print(in_locale_charset(f"{line}; {format_size(res.content_bytes_written)} content "
                            "written"))
    return 0
