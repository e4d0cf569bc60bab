"""``ostreefs pull``: download commits from a remote repository over HTTP(S)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import format_size, format_transferred, in_locale_charset, split_kv
from ostreefs.errors import StoreError, UsageError

if TYPE_CHECKING:
    from ostreefs.replication.pull import PullProgress

#: Read by the CLI only: seconds without data before a request fails (tests shorten it).
TIMEOUT_ENV = "OSTREEFS_PULL_TIMEOUT"


def setup(p: argparse.ArgumentParser) -> Handler:
    a = p.add_argument
    a("remote", metavar="REMOTE", help="the remote to pull from (or REMOTE:BRANCH)")
    a("branches", nargs="*", metavar="BRANCH",
      help="refs or commit checksums to pull (default: the remote's branches)")
    a("--commit-metadata-only", action="store_true", help="fetch only the commit metadata")
    a("--cache-dir", metavar="DIR", help="accepted for compatibility; not used")
    a("--disable-fsync", action="store_true", help="do not invoke fsync()")
    a("--per-object-fsync", action="store_true",
      help="accepted for compatibility; objects are synced per transaction")
    a("--disable-static-deltas", action="store_true",
      help="do not use static deltas (ostreefs never does)")
    a("--require-static-deltas", action="store_true",
      help="fail: ostreefs fetches objects, not static deltas")
    a("--mirror", action="store_true",
      help="write refs suitable for a mirror (refs/heads) and fetch all refs if none given")
    a("--subpath", action="append", default=[], metavar="PATH",
      help="only pull the provided subpath(s); the commit stays partial")
    a("--untrusted", action="store_true",
      help="verify checksums of local sources (always done for HTTP pulls)")
    a("--http-trusted", action="store_true",
      help="accepted for compatibility; objects are always verified")
    a("--bareuseronly-files", action="store_true",
      help="reject regular files with mode outside of 0775 (world writable, suid, etc.)")
    a("--dry-run", action="store_true",
      help="fetch metadata into memory only and print what would be downloaded")
    a("--repair", action="store_true",
      help="re-verify the local objects of the pulled commits and fetch the bad ones again")
    a("--depth", type=int, default=0, metavar="DEPTH",
      help="traverse DEPTH parents (-1=infinite) (default: 0)")
    a("--url", metavar="URL", help="pull objects from this URL instead of the remote's")
    a("--http-header", action="append", default=[], metavar="NAME=VALUE",
      help="add NAME=VALUE as HTTP header to all requests")
    a("--update-frequency", type=int, default=0, metavar="FREQUENCY",
      help="accepted for compatibility")
    a("--network-retries", type=int, default=5, metavar="N",
      help="how many times each download is retried upon a broken connection (default: 5)")
    a("-L", "--localcache-repo", action="append", default=[], metavar="REPO",
      help="not supported")
    a("-T", "--timestamp-check", action="store_true", help="not supported")
    a("--timestamp-check-from-rev", metavar="REV", help="not supported")
    a("--disable-verify-bindings", action="store_true", help="do not verify commit bindings")
    a("-v", "--verbose", action="store_true", help="accepted for compatibility")
    return run


def run(args: argparse.Namespace) -> int:
    from ostreefs.replication.pull import PullOptions, pull

    repo = open_repo(args)
    remote, branches = args.remote, list(args.branches)
    if ":" in remote:
        remote, _, first = remote.partition(":")
        if first:
            branches.insert(0, first)
    if args.require_static_deltas:
        raise StoreError("Fetch configured to require static deltas, but no summary deltas "
                         "or delta index found")
    if args.localcache_repo or args.timestamp_check or args.timestamp_check_from_rev:
        raise UsageError("--localcache-repo and --timestamp-check are not supported")
    if args.depth < -1:
        raise UsageError(f"Invalid --depth {args.depth}", hint="use -1 (all) or N >= 0")
    headers = dict(split_kv(h, "--http-header") for h in args.http_header)
    timeout = None
    env = os.environ.get(TIMEOUT_ENV)
    if env:
        try:
            timeout = float(env)
        except ValueError:
            raise UsageError(f"Invalid {TIMEOUT_ENV} '{env}'") from None
    opts = PullOptions(depth=args.depth, mirror=args.mirror,
                       commit_metadata_only=args.commit_metadata_only,
                       subpaths=list(args.subpath), disable_fsync=args.disable_fsync,
                       dry_run=args.dry_run, repair=args.repair, timeout=timeout,
                       network_retries=max(0, args.network_retries), http_headers=headers,
                       url=args.url, verify_bindings=not args.disable_verify_bindings,
                       bareuseronly_files=args.bareuseronly_files)
    bar = _ProgressLine() if sys.stderr.isatty() else None
    try:
        res = pull(repo, remote, branches or None, opts, bar.update if bar else None)
    finally:
        if bar is not None:
            bar.clear()
    amount = format_transferred(res.bytes_transferred)
    if res.dry_run:
        for ref, commit in res.refs_moved.items():
            print(f"{ref}: would move to {commit}")
        print(f"{res.metadata_fetched} metadata objects fetched (not stored), "
              f"{res.content_to_fetch} content objects to fetch; {amount} transferred")
        return 0
    for obj in res.repaired:
        print(f"Repaired {obj}")
    print(in_locale_charset(
        f"{res.metadata_fetched} metadata, {res.content_fetched} content objects fetched; "
        f"{amount} transferred in {int(res.elapsed)} seconds; "
        f"{format_size(res.content_bytes_written)} content written"))
    return 0


class _ProgressLine:
    """One line on stderr, redrawn in place: objects, bytes, rate, ETA."""

    def __init__(self) -> None:
        self.shown = False

    def update(self, p: PullProgress) -> None:
        if p.done:
            return
        total = max(p.requested, p.fetched)
        pct = 100 * p.fetched // total if total else 0
        eta = p.eta
        eta_text = f" ETA {int(eta) // 60:02d}:{int(eta) % 60:02d}" if eta is not None else ""
        line = (f"Receiving objects: {pct:3d}% ({p.fetched}/{total}) "
                f"{format_size(p.bytes_transferred)} {format_size(int(p.rate))}/s{eta_text}")
        sys.stderr.write("\r\x1b[K" + in_locale_charset(line))
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
