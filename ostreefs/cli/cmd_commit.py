"""``ostreefs commit``: ostree's options, ostree's defaults and output."""

from __future__ import annotations

import argparse

from ostreefs.cli.main import Handler, open_repo
from ostreefs.cli.util import parse_bool, parse_timestamp, split_kv
from ostreefs.errors import UsageError
from ostreefs.store.commit import CommitModifier, CommitOptions, TreeSource, commit
from ostreefs.store.gvariant import Variant
from ostreefs.store.gvtext import parse_text


def setup(p: argparse.ArgumentParser) -> Handler:
    a = p.add_argument
    a("path", nargs="?", help="directory to commit (default: the current directory)")
    a("-b", "--branch", help="branch to commit to (moves refs/heads/BRANCH)")
    a("-s", "--subject", default="", help="one-line subject")
    a("-m", "--body", default="", help="full description")
    a("--body-file", metavar="FILE", help="read the body from FILE")
    a("--parent", metavar="REV", help="parent commit, or 'none' (default: branch head)")
    a("--orphan", action="store_true", help="create a commit without a branch or parent")
    a("--tree", action="append", default=[], metavar="dir=PATH|tar=FILE|ref=REV",
      help="overlay this tree; repeatable, later ones win")
    a("--tar-autocreate-parents", action="store_true",
      help="when importing tars, create parent directories the tar does not list")
    a("--timestamp", metavar="DATE", help="commit time: @SECONDS or 'YYYY-MM-DD HH:MM:SS "
                                          "+0000' (default: now)")
    a("--add-metadata-string", action="append", default=[], metavar="KEY=VALUE",
      help="add a string metadata key")
    a("--add-metadata", action="append", default=[], metavar="KEY=VALUE",
      help="add a metadata key whose value is GVariant text (42, 'str', true, [..])")
    a("--add-detached-metadata-string", action="append", default=[], metavar="KEY=VALUE",
      help="add a string key to the detached metadata")
    a("--keep-metadata", action="append", default=[], metavar="KEY",
      help="copy KEY from the parent's metadata")
    a("--bind-ref", action="append", default=[], metavar="REF",
      help="also bind the commit to REF (ostree.ref-binding)")
    a("--no-bindings", action="store_true", help="write no ref or collection bindings")
    a("--owner-uid", type=int, metavar="UID", help="store every file with this uid")
    a("--owner-gid", type=int, metavar="GID", help="store every file with this gid")
    a("--canonical-permissions", action="store_true",
      help="uid/gid 0 and modes masked to 0755, as bare-user-only stores them")
    a("--no-xattrs", action="store_true", help="do not store extended attributes")
    a("--skip-if-unchanged", action="store_true",
      help="write nothing if the tree equals the parent's")
    a("--consume", action="store_true", help="delete the committed files afterwards")
    a("--fsync", metavar="BOOL", help="sync objects and refs to disk (default: repo config)")
    a("--link-checkout-speedup", action="store_true",
      help="take hardlinked files' objects without reading them, even in bare-user "
           "repos (where this keeps the objects' metadata, as ostree does)")
    a("--no-stat-cache", action="store_true",
      help="hash every file even if the stat cache knows it")
    a("--gpg-sign", action="append", default=[], metavar="KEY-ID",
      help="GPG key ID to sign the commit with (repeatable)")
    a("--gpg-homedir", metavar="HOMEDIR", help="GPG homedir holding the signing keys")
    a("--table-output", action="store_true", help="print a summary table")
    a("--json", action="store_true", help="print the result as JSON")
    return run


def _options(args: argparse.Namespace, repo_mod: CommitModifier) -> CommitOptions:
    md: list[tuple[str, Variant]] = []
    for kv in args.add_metadata_string:
        k, v = split_kv(kv, "metadata")
        md.append((k, Variant("s", v)))
    for kv in args.add_metadata:
        k, v = split_kv(kv, "metadata")
        md.append((k, parse_text(v)))
    detached = []
    for kv in args.add_detached_metadata_string:
        k, v = split_kv(kv, "metadata")
        detached.append((k, Variant("s", v)))
    body = args.body
    if args.body_file:
        with open(args.body_file, encoding="utf-8") as f:
            body = f.read()
    return CommitOptions(
        branch=args.branch, subject=args.subject, body=body, parent=args.parent,
        orphan=args.orphan,
        timestamp=parse_timestamp(args.timestamp) if args.timestamp else None,
        metadata=md, detached_metadata=detached, keep_metadata=args.keep_metadata,
        bind_refs=args.bind_ref, no_bindings=args.no_bindings, modifier=repo_mod,
        skip_if_unchanged=args.skip_if_unchanged, consume=args.consume,
        fsync=parse_bool(args.fsync) if args.fsync is not None else None,
        use_stat_cache=not args.no_stat_cache,
        link_checkout_speedup=args.link_checkout_speedup,
        tar_autocreate_parents=args.tar_autocreate_parents,
    )


def _sources(args: argparse.Namespace) -> list[TreeSource]:
    out = []
    for t in args.tree:
        kind, eq, value = t.partition("=")
        if not eq or kind not in ("dir", "tar", "ref"):
            raise UsageError(f"Invalid --tree '{t}'", hint="use --tree=dir=PATH, "
                                                          "--tree=tar=FILE or --tree=ref=REV")
        out.append(TreeSource(kind, value))
    if args.path is not None:
        out.append(TreeSource("dir", args.path))
    return out


def run(args: argparse.Namespace) -> int:
    repo = open_repo(args)
    modifier = CommitModifier.for_repo(
        repo, owner_uid=args.owner_uid, owner_gid=args.owner_gid,
        canonical_permissions=args.canonical_permissions, no_xattrs=args.no_xattrs)
    opts = _options(args, modifier)
    if args.gpg_sign:
        from ostreefs.store.gpg import sign_commit

        keys, home = list(args.gpg_sign), args.gpg_homedir
        opts.before_ref = lambda checksum: sign_commit(repo, checksum, keys, home)
    res = commit(repo, _sources(args), opts)
    s = res.stats
    if args.json:
        import json

        print(json.dumps({"commit": res.checksum, "skipped": res.skipped,
                          "metadata_total": s.metadata_total,
                          "metadata_written": s.metadata_written,
                          "content_total": s.content_total,
                          "content_written": s.content_written,
                          "content_bytes_written": s.content_bytes_written}))
    elif args.table_output:
        print(f"Commit: {res.checksum}")
        print(f"Metadata Total: {s.metadata_total}")
        print(f"Metadata Written: {s.metadata_written}")
        print(f"Content Total: {s.content_total}")
        print(f"Content Written: {s.content_written}")
        print(f"Content Cache Hits: {s.content_cache_hits}")
        print(f"Content Bytes Written: {s.content_bytes_written}")
    else:
        print(res.checksum)
    return 0
