"""A crashed deploy, upgrade or rollback still boots: the old release or the new one.

test_admin_crash.py kills each operation at every step boundary and checks the sysroot
on the host; this module takes a sample of those kill points and lets the real judge,
QEMU booting the tiny OS through Debian's ostree-prepare-root, say what comes up. For
each operation the sample is one early step, the step just before the atomic switch of
``boot/loader`` (its temporary link written, not yet renamed) and the step just after it
(renamed, cleanup not run). Kill points are found by step *name* from a traced run, so
the test follows any reordering of the steps. Before the switch the old release must
boot, after it the new one; ``ostreefs admin cleanup`` must not change that.

Boots dominate the run time (about 5 s each under TCG), so every case's kill, boots and
cleanup run in a module fixture, two cases at a time, each on its own ``cp -a`` copy of
a prepared sysroot and its own disk image; the tests then judge one case each.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu_helpers import assert_booted, boot_assets, runner
from support import Tool, format_result, tool_env
from sysroot_helpers import remove_sysroot

from ostreefs.testing.assets import BootAssets
from ostreefs.testing.demo_boot import TinyOsSysroot
from ostreefs.testing.qemu import BootResult, boot_entries, boot_image, make_disk_image

__all__ = ["boot_assets"]  # the fixture, imported so pytest finds it

OS = "tinyos"
SWITCH = "loader-rename"            # the rename of boot/loader: the atomic switch
BEFORE_SWITCH = "loader-tmp-link"   # the new link exists, the rename has not happened
EARLY = {"deploy": "checkout", "upgrade": "checkout", "rollback": "farm-link-0"}
# kill point -> which release the default entry boots afterwards
POINTS = {"early": "old", "before-switch": "old", "after-switch": "new"}
STEP_LINE = re.compile(r"^step (\d+): (\S+)$", re.M)
WORKERS = 2  # two QEMUs at a time: TCG runs one guest CPU per host thread


def _step_name(op: str, point: str) -> str:
    return {"early": EARLY[op], "before-switch": BEFORE_SWITCH, "after-switch": SWITCH}[point]


def _command(op: str, sr: Path) -> list[str]:
    if op == "deploy":
        return ["admin", "deploy", f"--sysroot={sr}", f"--os={OS}", "tinyos/x86_64/stable"]
    if op == "upgrade":
        return ["admin", "upgrade", f"--sysroot={sr}", f"--os={OS}"]
    return ["admin", "rollback", f"--sysroot={sr}"]


def _copy(src: Path, dst: Path) -> Path:
    """A writable copy (``cp -a`` keeps hard links; it does not carry the immutable flag)."""
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst


def _default(sr: Path) -> str:
    """``CHECKSUM.SERIAL`` the default entry's ``ostree=`` resolves to, on the host."""
    karg = boot_entries(sr)[0].ostree_karg()
    assert karg is not None
    return (sr / karg.lstrip("/")).resolve().name


@dataclass
class Op:
    """A prepared sysroot for one operation and what it boots before and after it."""

    base: Path
    old: tuple[str, str]   # (deployment, release) booted before the switch
    new: tuple[str, str]   # ... and after it
    steps: dict[str, int]  # step name -> its number (first occurrence) in a full run


@dataclass
class Outcome:
    """What one case did: the kill, the default and the boot before and after cleanup."""

    op: str
    point: str
    step: int = 0
    kill: subprocess.CompletedProcess[str] | None = None
    default: str = ""
    boot: BootResult | None = None
    cleanup: subprocess.CompletedProcess[str] | None = None
    default_after_cleanup: str = ""
    boot_after_cleanup: BootResult | None = None
    error: str = ""


def _trace(ostreefs: Tool, op: str, base: Path, work: Path) -> dict[str, int]:
    """Step names of a complete run of ``op`` on a copy of ``base``, with their numbers."""
    sr = _copy(base, work / f"trace-{op}")
    try:
        argv = ostreefs.argv0 + _command(op, sr)
        proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                              env=tool_env({"OSTREEFS_TRACE_STEPS": "1"}))
        assert proc.returncode == 0, format_result(argv, proc)
        steps: dict[str, int] = {}
        for num, name in STEP_LINE.findall(proc.stderr):
            steps.setdefault(name, int(num))
        return steps
    finally:
        remove_sysroot(sr)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, boot_assets: BootAssets,
        ostreefs: Tool) -> Iterator[dict[str, Op]]:
    """Release 1 deployed with release 2 committed (for deploy and upgrade), and a copy
    upgraded to release 2 with release 1 as its rollback (for rollback)."""
    work = tmp_path_factory.mktemp("crash-boot")
    lab = TinyOsSysroot(work / "lab", boot_assets, runner(ostreefs))
    both = work / "both"
    try:
        lab.init()
        c1 = lab.commit("1")
        lab.deploy()
        c2 = lab.commit("2")
        _copy(lab.sysroot, both)
        ostreefs(*_command("upgrade", both))
        assert _default(lab.sysroot) == f"{c1}.0" and _default(both) == f"{c2}.0"
        r1, r2 = (f"{c1}.0", "1"), (f"{c2}.0", "2")
        out = {"deploy": Op(lab.sysroot, r1, r2, {}), "upgrade": Op(lab.sysroot, r1, r2, {}),
               "rollback": Op(both, r2, r1, {})}
        for op, o in out.items():
            o.steps = _trace(ostreefs, op, o.base, work)
        yield out
    finally:
        remove_sysroot(both)
        lab.release()


def _run_case(ostreefs: Tool, op: str, point: str, o: Op, work: Path) -> Outcome:
    """Kill ``op`` at ``point``, boot, clean up, boot again; never raises (the test
    judges the outcome)."""
    res = Outcome(op, point)
    name = _step_name(op, point)
    if name not in o.steps:
        res.error = f"no step {name!r} in a run of {op}: {list(o.steps)}"
        return res
    res.step = o.steps[name]
    case = work / f"{op}-{point}"
    case.mkdir()
    sr = case / "sysroot"
    image = case / "disk.img"
    try:
        _copy(o.base, sr)
        res.kill = subprocess.run(
            ostreefs.argv0 + _command(op, sr), capture_output=True, text=True, check=False,
            env=tool_env({"OSTREEFS_CRASH_AT_STEP": str(res.step),
                          "OSTREEFS_TRACE_STEPS": "1"}))
        res.default = _default(sr)
        make_disk_image(sr, image)
        res.boot = boot_image(sr, image)
        res.cleanup = subprocess.run(ostreefs.argv0 + ["admin", "cleanup", f"--sysroot={sr}"],
                                     capture_output=True, text=True, check=False,
                                     env=tool_env())
        res.default_after_cleanup = _default(sr)
        make_disk_image(sr, image)
        res.boot_after_cleanup = boot_image(sr, image)
    except Exception:  # noqa: BLE001 - reported by the case's test, with its traceback
        res.error = traceback.format_exc()
    finally:
        remove_sysroot(sr)
        shutil.rmtree(case, ignore_errors=True)
    return res


@pytest.fixture(scope="module")
def outcomes(ops: dict[str, Op], ostreefs: Tool,
             tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Outcome]:
    work = tmp_path_factory.mktemp("crash-boot-cases")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {(op, point): pool.submit(_run_case, ostreefs, op, point, o, work)
                   for op, o in ops.items() for point in POINTS}
        return {k: f.result() for k, f in futures.items()}


@pytest.mark.parametrize("point", list(POINTS))
@pytest.mark.parametrize("op", ["deploy", "upgrade", "rollback"])
def test_killed_operation_boots_old_or_new(op: str, point: str, ops: dict[str, Op],
                                           outcomes: dict[tuple[str, str], Outcome]) -> None:
    o, res = ops[op], outcomes[op, point]
    assert not res.error, res.error
    want_deploy, want_release = o.old if POINTS[point] == "old" else o.new
    assert res.kill and res.boot and res.cleanup and res.boot_after_cleanup  # set if no error
    ctx = f"{op} killed at step {res.step} ({point})\n" + format_result(res.kill.args, res.kill)
    assert res.kill.returncode == -signal.SIGKILL, ctx
    # The traced kill names the step it died at: the one chosen, not a neighbour.
    assert STEP_LINE.findall(res.kill.stderr)[-1] == (str(res.step), _step_name(op, point)), ctx
    assert res.default == want_deploy, ctx
    assert_booted(res.boot, want_deploy, want_release)
    assert res.cleanup.returncode == 0, format_result(res.cleanup.args, res.cleanup)
    assert res.default_after_cleanup == want_deploy, ctx
    assert_booted(res.boot_after_cleanup, want_deploy, want_release)


def test_the_sample_straddles_the_switch(ops: dict[str, Op]) -> None:
    """The early step comes first and the two switch steps are adjacent, in every
    operation: the sample really is 'long before', 'just before' and 'just after'."""
    for op, o in ops.items():
        assert o.steps[EARLY[op]] < o.steps[BEFORE_SWITCH] == o.steps[SWITCH] - 1, (op, o.steps)
        assert o.old != o.new
