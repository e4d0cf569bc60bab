"""The ``ostreefs`` command: ostree's command lines over the ostreefs library.

This layer parses arguments, makes library calls and formats their results; it is the
only place that reads the environment, prints, or chooses an exit status. Library
errors become one line on stderr (``error: ...``, as ostree prints them) plus an
optional hint line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ostreefs.errors import OstreefsError, UsageError

if TYPE_CHECKING:
    from ostreefs.store.repo import Repo

Handler = Callable[[argparse.Namespace], int]


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized to the terminal without shutil: argparse makes
    one per add_argument, and shutil (with the bz2 and lzma it imports) is a few ms of
    every cold CLI start. The width is what shutil.get_terminal_size would give."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (ValueError, OSError):
            columns = 0
    return columns or 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}", hint=f"see '{self.prog} --help'")


#: name -> (one-line help, "module:setup function"). Only the module of the command
#: being run is imported, which keeps a CLI call's start-up short.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("Create a new repository", "cmd_init:setup"),
    "commit": ("Commit a new revision", "cmd_commit:setup"),
    "refs": ("List, create or delete refs", "cmd_refs:setup_refs"),
    "rev-parse": ("Print the commit a rev names", "cmd_refs:setup_rev_parse"),
    "reset": ("Move a ref to a commit", "cmd_refs:setup_reset"),
    "log": ("Show the history of a commit", "cmd_history:setup_log"),
    "show": ("Show a commit", "cmd_history:setup_show"),
    "ls": ("List files in a commit", "cmd_read:setup_ls"),
    "cat": ("Print files of a commit", "cmd_read:setup_cat"),
    "diff": ("List differences between commits or directories", "cmd_read:setup_diff"),
    "checksum": ("Print the content checksum of a file", "cmd_read:setup_checksum"),
    "config": ("Read or change the repository configuration", "cmd_config:setup"),
    "fsck": ("Check the repository for consistency", "cmd_fsck:setup"),
    "index": ("Verify or rebuild the derived index", "cmd_index:setup"),
    "checkout": ("Check out a commit into a directory", "cmd_checkout:setup"),
    "pull-local": ("Copy commits from another repository on this machine",
                   "cmd_pull_local:setup"),
    "prune": ("Delete objects no kept commit reaches", "cmd_prune:setup"),
    "export": ("Write a commit as a tar stream", "cmd_export:setup"),
    "mount": ("Mount a commit read-only (FUSE)", "cmd_mount:setup"),
    "umount": ("Unmount an ostreefs mount", "cmd_umount:setup"),
    "remote": ("Manage remote repositories", "cmd_remote:setup"),
    "pull": ("Download commits from a remote repository over HTTP(S)", "cmd_pull:setup"),
    "gpg-sign": ("Sign a commit with GPG", "cmd_gpg:setup_gpg_sign"),
    "summary": ("Update or show the repository summary", "cmd_summary:setup"),
    "serve": ("Serve a repository over HTTP, read-only (for trying pulls locally)",
              "cmd_serve:setup"),
    "admin": ("Manage a sysroot: deploy, upgrade, roll back", "cmd_admin:setup"),
}


def _load_setup(spec: str) -> Callable[[argparse.ArgumentParser], Handler]:
    import importlib

    module, func = spec.split(":")
    setup: Callable[[argparse.ArgumentParser], Handler] = getattr(
        importlib.import_module(f"ostreefs.cli.{module}"), func)
    return setup


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The CLI parser; with ``only``, just that command (building all 26 subparsers is
    a few milliseconds of argparse and gettext a short command need not pay)."""
    p = _Parser(prog="ostreefs",
                description="A content-addressed store for bootable filesystem trees. "
                            "Repositories are OSTree repositories; commands accept "
                            "ostree's command lines.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (helptext, spec) in COMMANDS.items():
        if only is not None and only != name:
            continue
        sp = sub.add_parser(name, help=helptext, description=helptext)
        sp.add_argument("--repo", metavar="PATH",
                        help="path to the repository (default: $OSTREE_REPO)")
        if only is not None:
            sp.set_defaults(handler=_load_setup(spec)(sp))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        args_list = _hoist_global_repo(args_list)
        first = next((a for a in args_list if not a.startswith("-")), None)
        parser = build_parser(first if first in COMMANDS else None)
        if not args_list:
            parser.print_help(sys.stderr)
            return 1
        args = parser.parse_args(_bind_option_values(parser, args_list))
        if args.version:
            from ostreefs import __version__

            print(f"ostreefs {__version__}")
            return 0
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return 1
        if getattr(args, "repo", None) is None:
            args.repo = os.environ.get("OSTREE_REPO")
        rc: int = args.handler(args)
        sys.stdout.flush()
        return rc
    except OstreefsError as e:
        _err(str(e), e.hint)
        return e.exit_code
    except KeyboardInterrupt:
        _err("interrupted", None)
        return 130
    except BrokenPipeError:
        return 141
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        _err(f"{e.strerror or e}{where}", None)
        return 1


def _err(msg: str, hint: str | None) -> None:
    try:
        sys.stdout.flush()
    except OSError:
        pass
    msg = " ".join(msg.split("\n"))
    sys.stderr.write(f"error: {msg}\n")
    if hint:
        sys.stderr.write(f"hint: {hint}\n")


def _bind_option_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Glue an option to its value so that values may start with '-' (``-s -x``).

    GLib's option parser, which ostree uses, always takes the next word as the value of
    an option that needs one; argparse would read ``-x`` as an option instead.
    """
    sub_action = next((a for a in parser._actions
                       if isinstance(a, argparse._SubParsersAction)), None)
    if sub_action is None or not argv or argv[0] not in sub_action.choices:
        return argv
    sp = sub_action.choices[argv[0]]
    # Each option that needs a value -> the long spelling that can carry it with '='.
    takes_value: dict[str, str] = {}
    for act in sp._actions:
        if act.option_strings and act.nargs is None and act.const is None and not isinstance(
                act, argparse._HelpAction):
            long = next((o for o in act.option_strings if o.startswith("--")), None)
            for o in act.option_strings:
                takes_value[o] = long or o
    out = [argv[0]]
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out.extend(argv[i:])
            break
        if a in takes_value and i + 1 < len(argv):
            value, spelling = argv[i + 1], takes_value[a]
            out.append(f"{spelling}={value}" if spelling.startswith("--") else a + value)
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _hoist_global_repo(argv: list[str]) -> list[str]:
    """Let ``ostreefs --repo=R CMD`` mean ``ostreefs CMD --repo=R``, as people type both."""
    out: list[str] = []
    repo: list[str] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        a = argv[i]
        if a.startswith("--repo="):
            repo.append(a)
        elif a == "--repo" and i + 1 < len(argv):
            repo.append("--repo=" + argv[i + 1])
            i += 1
        else:
            out.append(a)
        i += 1
    if i < len(argv):
        out.append(argv[i])
        out.extend(repo)
        out.extend(argv[i + 1:])
    else:
        out.extend(repo)
    return out


def need_repo(args: argparse.Namespace) -> str:
    if not args.repo:
        raise UsageError("Command requires a --repo argument",
                         hint="pass --repo=PATH or set OSTREE_REPO")
    return str(args.repo)


def open_repo(args: argparse.Namespace) -> Repo:
    from ostreefs.store.repo import Repo

    return Repo.open(need_repo(args))


_skip_teardown = False


def skip_teardown() -> None:
    """Let the console script end without the interpreter's teardown (10-20 ms of a
    cold start): for a command whose process has nothing left to release or flush but
    stdio, as the parent of a mount's daemon. Callers of main() are unaffected."""
    global _skip_teardown
    _skip_teardown = True


def entry() -> None:
    """Console-script entry point."""
    global _skip_teardown
    _skip_teardown = False
    rc = main()
    if _skip_teardown:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except OSError:  # a closed pipe: nothing more can be said
                pass
        os._exit(rc)
    sys.exit(rc)
