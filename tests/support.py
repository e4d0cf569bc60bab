"""Helpers shared by the test modules: running the two tools and checking failures.

Both tools are given exactly the same argument lists (ostree's command lines), so a test
body can be written once and run with either ``ostree`` or ``ostreefs``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
OSTREE_BIN = "/usr/bin/ostree" if os.path.exists("/usr/bin/ostree") else shutil.which("ostree")
DEFAULT_TIMEOUT = 300

# Fixed commit time used by the compat tests: 2023-11-14 22:13:20 UTC.
TS = 1700000000
TS_ARG = f"--timestamp=@{TS}"

# Under LC_ALL=C ostree prints every non-ASCII character of a name as "?" (GLib converts
# output to the locale's charset) and rejects non-ASCII option values.  Tests comparing
# output that contains non-ASCII names run both tools with this override.
UTF8 = {"LC_ALL": "C.UTF-8"}


def tool_env(overrides: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSTREE_", "LC_"))}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    env["TZ"] = "UTC"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    # The ostreefs CLI must not depend on an installed copy of itself.
    env.pop("PYTHONHOME", None)
    env.update(overrides or {})
    return env


def _show(data: str | bytes | None, limit: int = 4000) -> str:
    if data is None:
        return ""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "backslashreplace")
    if len(data) > limit:
        data = data[:limit] + f"... [{len(data) - limit} more chars]"
    return data


def format_result(
    argv: Sequence[str], proc: subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]
) -> str:
    return (
        f"command: {' '.join(map(str, argv))}\n"
        f"exit code: {proc.returncode}\n"
        f"--- stdout ---\n{_show(proc.stdout)}\n"
        f"--- stderr ---\n{_show(proc.stderr)}"
    )


class Tool:
    """A command line tool; calling it runs one command and returns the CompletedProcess.

    ``run(*args, check=True, input=None, text=True, cwd=None)``.  With ``check`` a
    non-zero exit raises AssertionError showing the command, code, stdout and stderr.
    ``text=False`` gives bytes (for ``cat`` of binary files); ``env`` overrides variables
    (e.g. ``LC_ALL=C.UTF-8``: under ``C`` ostree rejects non-ASCII option values).
    """

    def __init__(self, name: str, argv0: Sequence[str]) -> None:
        self.name = name
        self.argv0 = list(argv0)

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    def __call__(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        input: str | bytes | None = None,
        text: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        argv = self.argv0 + [os.fspath(a) for a in args]
        kwargs: dict[str, object] = {}
        if text:
            kwargs = {"encoding": "utf-8", "errors": "surrogateescape"}
        proc = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            env=tool_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
            **kwargs,  # type: ignore[arg-type]
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{self.name} failed\n" + format_result(argv, proc))
        return proc

    def popen(self, *args: str | os.PathLike[str], **kwargs: object) -> subprocess.Popen:  # type: ignore[type-arg]
        argv = self.argv0 + [os.fspath(a) for a in args]
        return subprocess.Popen(argv, env=tool_env(), **kwargs)  # type: ignore[call-overload]


def make_ostree() -> Tool:
    assert OSTREE_BIN
    return Tool("ostree", [OSTREE_BIN])


def make_ostreefs() -> Tool:
    # OSTREEFS_TEST_IMPL=/usr/bin/ostree runs the whole suite against the oracle itself,
    # which checks the suite's expectations (every compat test must then pass).
    impl = os.environ.get("OSTREEFS_TEST_IMPL")
    if impl:
        return Tool("ostreefs", [impl])
    return Tool("ostreefs", [sys.executable, "-m", "ostreefs"])


def rev_parse(tool: Tool, repo: str | os.PathLike[str], ref: str) -> str:
    """The commit checksum ``ref`` resolves to in ``repo``, according to ``tool``."""
    out = tool("rev-parse", f"--repo={os.fspath(repo)}", ref).stdout.strip()
    assert len(out) == 64 and all(c in "0123456789abcdef" for c in out), out
    return out


def commit_checksum(proc: subprocess.CompletedProcess) -> str:  # type: ignore[type-arg]
    """The checksum ``commit`` printed (its only stdout line)."""
    out = proc.stdout.strip()
    assert len(out) == 64 and all(c in "0123456789abcdef" for c in out), format_result(
        proc.args, proc
    )
    return out


def assert_clean_failure(proc: subprocess.CompletedProcess) -> None:  # type: ignore[type-arg]
    """An ostreefs failure: non-zero exit, no traceback, at most message + hint on stderr."""
    detail = format_result(proc.args, proc)
    assert proc.returncode != 0, "expected failure\n" + detail
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err, detail
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= 2, "expected a one-line error (plus optional hint)\n" + detail


def init_repo(tool: Tool, repo: Path, mode: str, *extra: str) -> Path:
    repo.parent.mkdir(parents=True, exist_ok=True)
    tool("init", f"--repo={repo}", f"--mode={mode}", *extra)
    return repo


def repo_snapshot(repo: Path) -> dict[str, tuple[object, ...]]:
    """Every path in a repository with its type, mode, size and content bytes (files)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(repo):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, repo)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full))
            elif os.path.isdir(full):
                out[rel] = ("dir", st.st_mode)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", st.st_mode, st.st_size, f.read())
    return out


def objects_snapshot(repo: Path) -> dict[str, tuple[object, ...]]:
    """Every object file of ``repo``: bytes (or link target), mode, owner, user xattrs.

    Regular ``.file`` objects also record their mtime (bare modes store them with mtime 0).
    Other mtimes are not part of the format and are left out.
    """
    out: dict[str, tuple[object, ...]] = {}
    objdir = repo / "objects"
    for sub in sorted(os.listdir(objdir)):
        for name in sorted(os.listdir(objdir / sub)):
            full = objdir / sub / name
            st = os.lstat(full)
            xattrs = (
                tuple(
                    sorted(
                        (n, os.getxattr(full, n, follow_symlinks=False))
                        for n in os.listxattr(full, follow_symlinks=False)
                        if n.startswith("user.")
                    )
                )
                if not os.path.islink(full)
                else ()
            )
            key = f"{sub}/{name}"
            if os.path.islink(full):
                out[key] = ("link", os.readlink(full), st.st_uid, st.st_gid)
            else:
                data = full.read_bytes()
                mtime = int(st.st_mtime) if name.endswith(".file") else None
                out[key] = ("file", oct(st.st_mode), st.st_uid, st.st_gid, xattrs, mtime, data)
    return out


def describe_objects_diff(
    a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]
) -> str:
    only_a = sorted(set(a) - set(b))
    only_b = sorted(set(b) - set(a))
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    lines = [f"only in ostree repo: {only_a[:10]}", f"only in ostreefs repo: {only_b[:10]}"]
    for k in differ[:10]:
        ea, eb = a[k], b[k]
        fields = [i for i in range(max(len(ea), len(eb))) if ea[i : i + 1] != eb[i : i + 1]]
        lines.append(
            f"differs: {k} (fields {fields}: {[ea[i] if i != 6 else '<bytes>' for i in fields]}"
            f" vs {[eb[i] if i != 6 else '<bytes>' for i in fields]})"
        )
    return "\n".join(lines)
