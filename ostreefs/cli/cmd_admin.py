"""``ostreefs admin``: ostree's sysroot commands over :mod:`ostreefs.boot`.

``OSTREEFS_CRASH_AT_STEP=N`` makes the process SIGKILL itself at the Nth step boundary
of a deploy, upgrade, switch, rollback, set-default, undeploy or cleanup (the crash
tests' seam); ``OSTREEFS_TRACE_STEPS=1`` prints each step name on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ostreefs.cli.main import Handler
from ostreefs.cli.util import format_size, in_locale_charset
from ostreefs.errors import OstreefsError, UsageError

if TYPE_CHECKING:
    from ostreefs.store.repo import Repo

DEFAULT_SYSROOT = "/"


def _checkpoint() -> Callable[[str], None] | None:
    at = os.environ.get("OSTREEFS_CRASH_AT_STEP")
    trace = bool(os.environ.get("OSTREEFS_TRACE_STEPS"))
    if not at and not trace:
        return None
    limit = int(at) if at else 0
    count = 0

    def step(name: str) -> None:
        nonlocal count
        count += 1
        if trace:
            sys.stderr.write(f"step {count}: {name}\n")
            sys.stderr.flush()
        if count == limit:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    return step


def _sysroot(args: argparse.Namespace) -> str:
    return str(getattr(args, "sysroot", None) or DEFAULT_SYSROOT)


def _index(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise OstreefsError(f"Invalid index {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sysroot", metavar="PATH", default=argparse.SUPPRESS,
                   help="the sysroot to act on (default: /)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="ignored (ostree compatibility)")


def _fetch(repo: Repo, remote: str | None, ref: str) -> None:
    """The upgrade's pull: over HTTP when the origin names a remote, else nothing."""
    if remote is None:
        return
    from ostreefs.replication.pull import pull

    pull(repo, remote, [ref])


def setup(p: argparse.ArgumentParser) -> Handler:
    _common(p)
    sub = p.add_subparsers(dest="admin_command", metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    def add(name: str, helptext: str, fn: Handler) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=helptext, description=helptext)
        _common(sp)
        handlers[name] = fn
        return sp

    sp = add("init-fs", "Initialize a root filesystem", _init_fs)
    sp.add_argument("--modern", action="store_true", help="only create /boot and /ostree")
    sp.add_argument("path", metavar="PATH")

    sp = add("os-init", "Initialize empty state for given operating system", _os_init)
    sp.add_argument("osname", metavar="OSNAME")

    sp = add("deploy", "Checkout revision REFSPEC as the new default deployment", _deploy)
    sp.add_argument("--os", metavar="OSNAME")
    sp.add_argument("--origin-file", metavar="FILENAME")
    sp.add_argument("--no-prune", action="store_true")
    sp.add_argument("--no-merge", action="store_true")
    sp.add_argument("--retain", action="store_true")
    sp.add_argument("--retain-pending", action="store_true")
    sp.add_argument("--retain-rollback", action="store_true")
    sp.add_argument("--not-as-default", action="store_true")
    sp.add_argument("--stage", action="store_true", help="not supported")
    sp.add_argument("--karg-proc-cmdline", action="store_true")
    sp.add_argument("--karg", action="append", default=[], metavar="NAME=VALUE")
    sp.add_argument("--karg-append", action="append", default=[], metavar="NAME=VALUE")
    sp.add_argument("--karg-none", action="store_true")
    sp.add_argument("--karg-delete", action="append", default=[], metavar="NAME=VALUE")
    sp.add_argument("refspec", metavar="REFSPEC")

    sp = add("status", "List deployments", _status)
    sp.add_argument("--json", action="store_true", help="print the list as JSON")
    sp.add_argument("-V", "--verify", action="store_true", help="ignored")

    sp = add("undeploy", "Delete deployment INDEX", _undeploy)
    sp.add_argument("index", metavar="INDEX")

    add("cleanup", "Delete untagged deployments and repository objects", _cleanup)

    sp = add("pin", "Change the \"pinning\" state of a deployment", _pin)
    sp.add_argument("-u", "--unpin", action="store_true")
    sp.add_argument("index", metavar="INDEX")

    sp = add("set-origin", "Set Origin and create a new origin file", _set_origin)
    sp.add_argument("-s", "--set", action="append", default=[], metavar="KEY=VALUE")
    sp.add_argument("--index", metavar="INDEX")
    sp.add_argument("remote", metavar="REMOTENAME")
    sp.add_argument("url", metavar="URL")
    sp.add_argument("branch", metavar="BRANCH", nargs="?")

    sp = add("kargs", "Change kernel arguments", _kargs)
    ksub = sp.add_subparsers(dest="kargs_command", metavar="COMMAND")
    kp = ksub.add_parser("edit-in-place", help="Set new kernel command line arguments in "
                         "place (applies to all deployments)")
    _common(kp)
    kp.add_argument("--append-if-missing", action="append", default=[],
                    metavar="NAME=VALUE")

    sp = add("config-diff", "Diff current /etc configuration versus default", _config_diff)
    sp.add_argument("--os", metavar="OSNAME")

    sp = add("set-default", "Make deployment INDEX the default", _set_default)
    sp.add_argument("index", metavar="INDEX")

    add("rollback", "Make the previous deployment the default", _rollback)

    sp = add("upgrade", "Construct new tree from current origin and deploy it, if it "
             "changed", _upgrade)
    sp.add_argument("--os", metavar="OSNAME")
    sp.add_argument("-r", "--reboot", action="store_true", help="not supported")
    sp.add_argument("--allow-downgrade", action="store_true")
    sp.add_argument("--override-commit", metavar="CHECKSUM")
    sp.add_argument("--pull-only", action="store_true")
    sp.add_argument("--deploy-only", action="store_true")
    sp.add_argument("--stage", action="store_true", help="not supported")

    sp = add("switch", "Construct new tree from REFSPEC and deploy it", _switch)
    sp.add_argument("--os", metavar="OSNAME")
    sp.add_argument("-r", "--reboot", action="store_true", help="not supported")
    sp.add_argument("refspec", metavar="REFSPEC")

    def run(args: argparse.Namespace) -> int:
        name = getattr(args, "admin_command", None)
        if not name:
            raise UsageError("No command specified", hint="see 'ostreefs admin --help'")
        return handlers[name](args)

    return run


def _unsupported(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        if getattr(args, n, False):
            raise OstreefsError(f"--{n.replace('_', '-')} is not supported by ostreefs")


def _init_fs(args: argparse.Namespace) -> int:
    from ostreefs.boot.sysroot import init_fs

    init_fs(args.path, modern=args.modern)
    return 0


def _os_init(args: argparse.Namespace) -> int:
    from ostreefs.boot.sysroot import os_init

    os_init(_sysroot(args), args.osname)
    print(f"ostree/deploy/{args.osname} initialized as OSTree root")
    return 0


def _print_prune(res: object) -> None:
    freed = getattr(res, "bytes_freed", 0)
    if freed:
        print(in_locale_charset(f"Freed objects: {format_size(freed)}"))


def _deploy(args: argparse.Namespace) -> int:
    from ostreefs.boot.deploy import DeployOptions, KargOptions, deploy
    from ostreefs.store.config import KeyFile

    _unsupported(args, "stage")
    origin = None
    if args.origin_file:
        try:
            with open(args.origin_file, encoding="utf-8") as f:
                origin = KeyFile(f.read())
        except OSError as e:
            raise OstreefsError(f"Cannot read {args.origin_file}: {e.strerror}") from None
    opts = DeployOptions(
        osname=args.os, origin=origin, retain=args.retain,
        retain_pending=args.retain_pending, retain_rollback=args.retain_rollback,
        not_as_default=args.not_as_default, no_merge=args.no_merge,
        no_prune=args.no_prune,
        kargs=KargOptions(replace=args.karg, append=args.karg_append,
                          delete=args.karg_delete, none=args.karg_none,
                          proc_cmdline=args.karg_proc_cmdline))
    res = deploy(_sysroot(args), args.refspec, opts, checkpoint=_checkpoint())
    for n in res.notes:
        sys.stderr.write(f"note: {n}\n")
    for m in res.messages:
        print(m)
    if res.prune is not None:
        _print_prune(res.prune)
    return 0


def _status(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import status

    sr, rows = status(_sysroot(args))
    if args.json:
        print(json.dumps({
            "bootversion": sr.bootversion, "subbootversion": sr.subbootversion,
            "deployments": [{
                "index": r.deployment.index, "osname": r.deployment.osname,
                "checksum": r.deployment.csum, "serial": r.deployment.serial,
                "booted": r.booted, "pending": r.pending, "rollback": r.rollback,
                "pinned": r.deployment.pinned, "version": r.version,
                "origin": r.deployment.refspec, "bootcsum": r.deployment.bootcsum,
                "bootserial": r.deployment.bootserial,
                "kargs": r.deployment.entry.options if r.deployment.entry else None,
            } for r in rows]}, indent=2))
        return 0
    if not rows:
        print("No deployments.")
        return 0
    for r in rows:
        d = r.deployment
        tag = " (pending)" if r.pending else " (rollback)" if r.rollback else ""
        print(f"{'*' if r.booted else ' '} {d.osname} {d.name}{tag}")
        if r.version:
            print(f"    Version: {r.version}")
        if d.pinned:
            print("    Pinned: yes")
        if d.origin is None:
            print("    origin: none")
        elif d.refspec is None:
            print("    origin: <unknown origin type>")
        else:
            print(f"    origin refspec: {d.refspec}")
        if r.gpg_error:
            raise OstreefsError(r.gpg_error)
    return 0


def _undeploy(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import undeploy

    res = undeploy(_sysroot(args), _index(args.index), checkpoint=_checkpoint())
    for m in res.messages:
        print(m)
    if res.freed:
        print(in_locale_charset(f"Freed objects: {format_size(res.freed)}"))
    for d in res.swap.removed:
        print(f"Deleted deployment {d.name}")
    return 0


def _cleanup(args: argparse.Namespace) -> int:
    from ostreefs.boot.cleanup import cleanup

    res = cleanup(_sysroot(args), checkpoint=_checkpoint())
    if res.prune is not None:
        _print_prune(res.prune)
    return 0


def _pin(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import pin

    print(pin(_sysroot(args), _index(args.index), args.unpin))
    return 0


def _set_origin(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import set_origin

    options: dict[str, str] = {}
    for kv in args.set:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise UsageError(f"Missing '=' in KEY=VALUE pair '{kv}'")
        options[k] = v
    set_origin(_sysroot(args), args.remote, args.url, args.branch,
               index=_index(args.index) if args.index is not None else None,
               options=options)
    return 0


def _kargs(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import kargs_edit_in_place

    if getattr(args, "kargs_command", None) != "edit-in-place":
        raise UsageError("No \"kargs\" subcommand specified",
                         hint="use 'admin kargs edit-in-place --append-if-missing=K=V'")
    kargs_edit_in_place(_sysroot(args), args.append_if_missing)
    return 0


def _config_diff(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import config_diff

    for kind, path in config_diff(_sysroot(args), args.os):
        print(f"{kind}    {path}")
    return 0


def _set_default(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import set_default

    res = set_default(_sysroot(args), _index(args.index), checkpoint=_checkpoint())
    for m in res.messages:
        print(m)
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import rollback

    res = rollback(_sysroot(args), checkpoint=_checkpoint())
    for m in res.messages:
        print(m)
    return 0


def _print_upgrade(res: object) -> int:
    for m in getattr(res, "messages", []):
        print(m)
    dep = getattr(res, "deploy", None)
    if dep is not None:
        for n in dep.notes:
            sys.stderr.write(f"note: {n}\n")
        if dep.prune is not None:
            _print_prune(dep.prune)
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import UpgradeOptions, upgrade

    _unsupported(args, "stage", "reboot")
    if args.pull_only and args.deploy_only:
        raise UsageError("Cannot simultaneously specify --pull-only and --deploy-only")
    res = upgrade(_sysroot(args), _fetch, UpgradeOptions(
        osname=args.os, pull_only=args.pull_only, deploy_only=args.deploy_only,
        allow_downgrade=args.allow_downgrade, override_commit=args.override_commit),
        checkpoint=_checkpoint())
    return _print_upgrade(res)


def _switch(args: argparse.Namespace) -> int:
    from ostreefs.boot.ops import UpgradeOptions, upgrade

    _unsupported(args, "reboot")
    res = upgrade(_sysroot(args), _fetch, UpgradeOptions(osname=args.os),
                  checkpoint=_checkpoint(), new_refspec=args.refspec)
    return _print_upgrade(res)
