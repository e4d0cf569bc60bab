"""Crash safety of the boot swap: a kill between every pair of writes, in turn.

For a deploy, an upgrade, a rollback (full swaps: ``boot/loader`` switches) and a
rollback between two version-less commits with the same kernel (only ``ostree/boot.V``
switches, to a new ``boot.V.S`` farm), the command is run once per step boundary N
with ``OSTREEFS_CRASH_AT_STEP=N`` (the CLI SIGKILLs itself there), on a fresh copy of
the same sysroot, until a run completes. After each kill: every entry of the live
``boot/loader`` resolves (``ostree=`` -> a boot link -> a complete deployment with its
``.origin``, kernel and initramfs present), the default is the old or the new one, the
real ``ostree admin status`` reads the sysroot, and ``ostreefs admin cleanup`` leaves
nothing the live loader does not reference, without changing what boots.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import Tool, format_result, tool_env
from sysroot_helpers import OSNAME, REF, make_os_tree, remove_sysroot

from ostreefs.boot.cleanup import cleanup

MAX_STEPS = 200


def _commit(ostree: Tool, sr: Path, tree: Path, version: int, meta: bool = True) -> str:
    args = [f"--add-metadata-string=version={version}.0"] if meta else []
    return str(ostree(f"--repo={sr}/ostree/repo", "commit", f"--branch={REF}",
                      f"--timestamp=@{1700000000 + version}", *args, str(tree)
                      ).stdout.strip())


@pytest.fixture(scope="module")
def bases(tmp_path_factory: pytest.TempPathFactory, ostree: Tool,
          ostreefs: Tool) -> Iterator[dict[str, tuple[Path, str, str]]]:
    """op -> (base sysroot, default commit before, default commit after)."""
    top = tmp_path_factory.mktemp("crash-bases")
    t1 = make_os_tree(top / "t1", 1)
    t2 = make_os_tree(top / "t2", 2, kernel=b"KERNEL-TWO", initrd=b"INITRD-TWO")
    out: dict[str, tuple[Path, str, str]] = {}
    t2same = make_os_tree(top / "t2same", 2)
    for op in ("deploy", "upgrade", "rollback", "farm-only"):
        sr = top / op
        sr.mkdir()
        ostreefs("admin", "init-fs", str(sr))
        ostreefs("admin", f"--sysroot={sr}", "os-init", OSNAME)
        # farm-only: no versions, same kernel, so the rollback swaps just boot.V.S
        meta = op != "farm-only"
        c1 = _commit(ostree, sr, t1, 1, meta)
        ostreefs("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}",
                 "--karg=root=/dev/vda", REF)
        c2 = _commit(ostree, sr, t2 if meta else t2same, 2, meta)
        if op in ("rollback", "farm-only"):
            ostreefs("admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", REF)
            out[op] = (sr, c2, c1)
        else:
            out[op] = (sr, c1, c2)
    yield out
    for sr, _, _ in out.values():
        remove_sysroot(sr)


def _command(op: str, sr: Path) -> list[str]:
    if op == "deploy":
        return ["admin", f"--sysroot={sr}", "deploy", f"--os={OSNAME}", REF]
    if op == "upgrade":
        return ["admin", f"--sysroot={sr}", "upgrade", f"--os={OSNAME}"]
    return ["admin", f"--sysroot={sr}", "rollback"]  # rollback and farm-only


def _live_entries(sr: Path) -> list[tuple[int, str]]:
    """(version, ostree=) of every entry the live loader holds."""
    loader = os.readlink(sr / "boot" / "loader")
    edir = sr / "boot" / loader / "entries"
    out = []
    for p in sorted(edir.iterdir()):
        fields = dict(line.split(" ", 1) for line in p.read_text().splitlines() if line)
        karg = next(w for w in fields["options"].split() if w.startswith("ostree="))
        link = sr / karg[len("ostree="):].lstrip("/")
        assert link.is_symlink(), f"{p.name}: {karg} is not a link"
        target = Path(os.path.realpath(link))
        assert target.parent == (sr / "ostree/deploy" / OSNAME / "deploy").resolve(), target
        assert (target / "usr/lib/os-release").is_file(), f"{target} is incomplete"
        assert (target / "etc/passwd").is_file(), f"{target} has no /etc"
        assert Path(f"{target}.origin").is_file(), f"{target} has no .origin"
        for key in ("linux", "initrd"):
            assert (sr / "boot" / fields[key].lstrip("/")).is_file(), fields[key]
        out.append((int(fields["version"]), target.name.split(".")[0]))
    assert out, "no boot entries"
    return sorted(out, reverse=True)


def _default_commit(sr: Path) -> str:
    return _live_entries(sr)[0][1]


def _assert_tidy(sr: Path) -> None:
    loader = os.readlink(sr / "boot" / "loader")
    v = loader[-1]
    assert sorted(os.listdir(sr / "boot")) == sorted(["boot", "loader", loader, "ostree"])
    sub = os.readlink(sr / "ostree" / f"boot.{v}")
    assert sorted(os.listdir(sr / "ostree")) == sorted(["deploy", "repo", f"boot.{v}", sub])
    names = set()
    bootcsums = set()
    for e in (sr / "boot" / loader / "entries").iterdir():
        karg = next(w for w in e.read_text().split() if w.startswith("ostree="))
        names.add(os.path.basename(os.path.realpath(sr / karg[7:].lstrip("/"))))
        bootcsums.add(f"{OSNAME}-{karg.split('/')[4]}")
    ddir = sr / "ostree/deploy" / OSNAME / "deploy"
    assert sorted(os.listdir(ddir)) == sorted(names | {f"{n}.origin" for n in names})
    assert set(os.listdir(sr / "boot" / "ostree")) == bootcsums


@pytest.mark.parametrize("op", ["deploy", "upgrade", "rollback", "farm-only"])
def test_kill_at_every_step(op: str, bases: dict[str, tuple[Path, str, str]],
                            ostree: Tool, ostreefs: Tool, tmp_path: Path) -> None:
    base, before, after = bases[op]
    killed = 0
    for n in range(1, MAX_STEPS):
        sr = tmp_path / f"sr-{n}"
        subprocess.run(["cp", "-a", str(base), str(sr)], check=True)
        argv = ostreefs.argv0 + _command(op, sr)
        proc = subprocess.run(argv, capture_output=True, text=True,
                              env=tool_env({"OSTREEFS_CRASH_AT_STEP": str(n)}), check=False)
        ctx = f"{op} killed at step {n}\n" + format_result(argv, proc)
        if proc.returncode == 0:
            assert _default_commit(sr) == after, ctx
            if op == "farm-only":
                assert "bootconfig swap: no" in proc.stdout, ctx
            _assert_tidy(sr)
            remove_sysroot(sr)
            break
        assert proc.returncode == -signal.SIGKILL, ctx
        killed += 1
        default = _default_commit(sr)
        assert default in (before, after), ctx
        status = ostree("admin", f"--sysroot={sr}", "status", check=False)
        assert status.returncode == 0, ctx + "\n" + format_result(status.args, status)
        assert default[:10] in status.stdout.splitlines()[0], ctx
        if n % 4 == 0:
            ostreefs("admin", f"--sysroot={sr}", "cleanup")
        else:  # the same library call, in-process (saves a CLI start per trial)
            cleanup(sr)
        assert _default_commit(sr) == default, ctx
        _assert_tidy(sr)
        assert ostree("admin", f"--sysroot={sr}", "status").stdout == status.stdout
        remove_sysroot(sr)
    else:
        pytest.fail(f"{op} never completed in {MAX_STEPS} steps")
    assert killed >= (5 if op == "farm-only" else 10), f"only {killed} steps in {op}"
