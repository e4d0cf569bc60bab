"""``python -P -m ostreefs.cli.recorder_process REPO TREE MOUNT_PID``: the process a mount
starts to record a tree's file headers (see :mod:`ostreefs.mount.recorder`). Not a
command of the CLI: the mount runs it by name, and only the CLI layer reads argv or sets
an exit status."""

from __future__ import annotations

import sys

from ostreefs.mount.recorder import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
