"""Placeholder until the command lands (replaced by its real module)."""

from __future__ import annotations

import argparse

from ostreefs.cli.main import Handler
from ostreefs.errors import OstreefsError


def setup(p: argparse.ArgumentParser) -> Handler:
    def run(args: argparse.Namespace) -> int:
        raise OstreefsError("not implemented yet")
    return run
