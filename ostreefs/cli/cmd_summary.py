"""``ostreefs summary``: regenerate, sign or show the repository summary, as ostree does."""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import Any

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import format_size, in_locale_charset, split_kv
from ostreefs.errors import UsageError
from ostreefs.store import gvariant
from ostreefs.store.gvariant import Variant
from ostreefs.store.gvtext import _host_order, format_value, parse_text
from ostreefs.store.objects import SUMMARY_SIG, Metadata, Summary


def setup(p: argparse.ArgumentParser) -> Handler:
    a = p.add_argument
    a("-u", "--update", action="store_true", help="update the summary")
    a("-v", "--view", action="store_true", help="view the local summary file")
    a("--raw", action="store_true", help="view the raw bytes of the summary file")
    a("--gpg-sign", action="append", default=[], metavar="KEY-ID",
      help="GPG key ID to sign the summary with (repeatable)")
    a("--gpg-homedir", metavar="HOMEDIR", help="GPG homedir holding the signing keys")
    a("-m", "--add-metadata", action="append", default=[], metavar="KEY=VALUE",
      help="additional metadata field (GVariant text) to add to the summary")
    return run


def run(args: argparse.Namespace) -> int:
    from ostreefs.store import gpg, summary

    repo = open_repo(args)
    if args.update:
        extra: list[tuple[str, Variant]] = []
        for kv in args.add_metadata:
            k, v = split_kv(kv, "metadata")
            extra.append((k, parse_text(v)))
        keys, home = list(args.gpg_sign), args.gpg_homedir
        signer = (lambda data: gpg.summary_sig_bytes(data, keys, home)) if keys else None
        summary.update_summary(repo, extra_metadata=extra, sign=signer)
    elif args.gpg_sign:
        gpg.sign_summary(repo, args.gpg_sign, args.gpg_homedir)
    elif args.view or args.raw:
        info = summary.read_summary(repo)
        if args.raw:
            print(format_value(SUMMARY_SIG, gvariant.decode(SUMMARY_SIG, info.raw)))
        else:
            print(in_locale_charset(format_summary(info.summary)), end="")
    else:
        raise UsageError("No option specified; use -u to update summary",
                         hint="see 'ostreefs summary --help'")
    return 0


def iso_local(ts: int) -> str:
    """GLib's ``%FT%T%:::z`` in local time: the UTC offset as short as it can be."""
    dt = datetime.fromtimestamp(ts).astimezone()
    off = dt.utcoffset()
    secs = int(off.total_seconds()) if off is not None else 0
    sign = "-" if secs < 0 else "+"
    secs = abs(secs)
    zone = f"{sign}{secs // 3600:02d}"
    if secs % 3600:
        zone += f":{secs % 3600 // 60:02d}"
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + zone


def _plain(v: Variant) -> str:
    return format_value(v.signature, _host_order(v.signature, v.value), annotate=False)


_PRETTY_REF = {"ostree.commit.timestamp": "Timestamp", "ostree.commit.version": "Version"}
_PRETTY = {"ostree.static-deltas": "Static Deltas",
           "ostree.summary.last-modified": "Last-Modified",
           "ostree.summary.expires": "Expires",
           "ostree.summary.collection-id": "Collection ID",
           "ostree.summary.collection-map": "Collection Map",
           "ostree.summary.mode": "Repository Mode",
           "ostree.summary.tombstone-commits": "Has Tombstone Commits"}


def _value_text(key: str, v: Variant) -> str:
    value: Any = v.value
    if key in ("ostree.commit.timestamp", "ostree.summary.last-modified",
               "ostree.summary.expires"):
        return iso_local(int(value))
    if key in ("ostree.commit.version", "ostree.summary.collection-id"):
        return str(value)
    if key == "ostree.summary.collection-map":
        return "(printed above)"
    if key == "ostree.summary.mode":
        ok = value in ("bare", "bare-user", "bare-user-only", "archive-z2", "archive")
        return str(value) if ok else f"Invalid (\u2018{value}\u2019)"
    if key == "ostree.summary.tombstone-commits":
        return "Yes" if value else "No"
    return _plain(v)


def _line(pretty: dict[str, str], key: str, v: Variant, indent: str) -> str:
    name = pretty.get(key)
    text = _value_text(key, v)
    return f"{indent}{name} ({key}): {text}\n" if name else f"{indent}{key}: {text}\n"


def format_summary(s: Summary) -> str:
    """``ostree summary --view``: each ref, then the repository metadata."""
    out = []
    meta: Metadata = s.metadata
    cid = next((v.value for k, v in meta if k == "ostree.summary.collection-id"), None)
    for r in s.refs:
        out.append(f"* ({cid}, {r.name})\n" if cid else f"* {r.name}\n")
        out.append(f"    Latest Commit ({format_size(r.size)}):\n")
        out.append(f"      {r.commit}\n")
        for k, v in r.metadata:
            out.append(_line(_PRETTY_REF, k, v, "    "))
        out.append("\n")
    for k, v in meta:
        out.append(_line(_PRETTY, k, v, ""))
    return "".join(out)
