"""``ostreefs gpg-sign`` and the text ostree prints for signatures and keys."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import in_locale_charset
from ostreefs.errors import UsageError

if TYPE_CHECKING:
    from ostreefs.store.gpg import GpgKey, GpgSubkey, GpgVerifyResult


def setup_gpg_sign(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("commit", nargs="?", metavar="COMMIT")
    p.add_argument("key_ids", nargs="*", metavar="KEY-ID")
    p.add_argument("-d", "--delete", action="store_true",
                   help="delete signatures having any of the GPG KEY-IDs")
    p.add_argument("--gpg-homedir", metavar="HOMEDIR",
                   help="GPG homedir to use when looking for keyrings")
    return run_gpg_sign


def run_gpg_sign(args: argparse.Namespace) -> int:
    from ostreefs.store import gpg
    from ostreefs.store.refs import rev_parse

    if not args.commit:
        raise UsageError("Need a COMMIT to sign")
    if not args.key_ids:
        raise UsageError("Need at least one GPG KEY-ID to sign with")
    repo = open_repo(args)
    commit = rev_parse(repo, args.commit)
    if args.delete:
        n = gpg.delete_commit_signatures(repo, commit, args.key_ids, args.gpg_homedir)
        print(f"Signatures deleted: {n}")
        return 0
    gpg.sign_commit(repo, commit, args.key_ids, args.gpg_homedir)
    return 0


def format_verify_result(result: GpgVerifyResult, header: str = "Found {n} signature{s}:"
                         ) -> str:
    """The block ``ostree show`` prints after a signed commit."""
    from ostreefs.store.gpg import describe

    n = len(result.signatures)
    out = [header.format(n=n, s="" if n == 1 else "s") + "\n"]
    for sig in result.signatures:
        out.append("\n")
        out.extend(line + "\n" for line in describe(sig, "  "))
    return in_locale_charset("".join(out))


def _fmt(ts: int) -> str:
    from ostreefs.store.gpg import format_local_time

    return format_local_time(ts)


def _subkey_lines(sk: GpgSubkey, primary: bool) -> list[str]:
    flags = (" (revoked)" if sk.revoked else "") + (" (invalid)" if sk.invalid else "")
    head = "Key" if primary else "  Subkey"
    ind = "  " if primary else "    "
    lines = [f"{head}: {sk.fingerprint}{flags}", f"{ind}Created: {_fmt(sk.created)}"]
    if sk.expires > 0:
        lines.append(f"{ind}{'Expired' if sk.expired else 'Expires'}: {_fmt(sk.expires)}")
    return lines


def format_key(key: GpgKey) -> str:
    """One key as ``ostree remote gpg-list-keys`` prints it."""
    lines = _subkey_lines(key.primary, True)
    for uid in key.uids:
        flags = (" (revoked)" if uid.revoked else "") + (" (invalid)" if uid.invalid else "")
        lines.append(f"  UID: {uid.uid}{flags}")
        urls = uid.update_urls
        lines.append(f"  Advanced update URL: {urls[0] if urls else ''}")
        lines.append(f"  Direct update URL: {urls[1] if urls else ''}")
    for sk in key.subkeys:
        lines.extend(_subkey_lines(sk, False))
    return in_locale_charset("".join(line + "\n" for line in lines))
