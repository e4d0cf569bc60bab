"""``ostreefs umount MOUNTPOINT``: unmount an ostreefs mount (a stale one too)."""

from __future__ import annotations

import argparse

from ostreefs.cli.main import Handler


def setup(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    return run


def run(args: argparse.Namespace) -> int:
    from ostreefs.mount.fuse import umount

    umount(args.mountpoint)
    return 0
