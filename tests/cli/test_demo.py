"""The README's demo command does what the README says, end to end.

It runs the demo module as ``tools/demo`` does (after install): commit, inspect, verify
with real ostree, mount and read, then the tiny OS deployed, booted under QEMU, upgraded
and rolled back. Each boot must come up in the release the step promised.
"""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    proc = subprocess.run([sys.executable, "-m", "ostreefs.cli.demo"], capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hello from an ostreefs commit" in out            # a script run from the mount
    assert "refused, as it should be: Read-only file system" in out
    assert "$ ostreefs umount" in out
    booted = re.findall(r"^\[boot after (.+?)\] entry 0 booted \S+ \S+ version=(\d+)", out,
                        re.MULTILINE)
    assert booted == [("deploy of release 1", "1"), ("upgrade to release 2", "2"),
                      ("rollback", "1")], out[-3000:]
    assert out.count("console: OSTREEFS-BOOTED") == 3
    assert "Demo complete" in out
