"""Fixtures and checks shared by the QEMU boot tests.

The boot assets (Debian kernel, ostree-boot, busybox-static) are fetched into the
shared cache on first use (tools/boot-assets pre-fetches them in CI); a boot test never
downloads twice.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from support import Tool

from ostreefs.testing.assets import BootAssets, fetch_assets
from ostreefs.testing.demo_boot import Runner
from ostreefs.testing.qemu import BootResult


@pytest.fixture(scope="session")
def boot_assets() -> BootAssets:
    return fetch_assets()


def runner(tool: Tool) -> Runner:
    """A runner for TinyOsSysroot that runs ``tool`` (failures raise with full output)."""
    def run(argv: Sequence[str]) -> None:
        tool(*argv)
    return run


def explain(result: BootResult) -> str:
    """The boot's summary and the end of its console log, for assertion messages."""
    tail = "\n".join(result.log.splitlines()[-40:])
    return f"{result.summary()}\n--- console (last 40 lines) ---\n{tail}"


def assert_booted(result: BootResult, deployment: str, version: str) -> None:
    """The guest came up in ``deployment`` (CHECKSUM.SERIAL), release ``version``, and
    saw the deployment the way ostree-prepare-root promises to set it up."""
    assert result.marker is not None, explain(result)
    m = result.marker
    assert (m["deploy"], m["version"]) == (deployment, version), explain(result)
    assert m["root"] == "deployment", explain(result)   # / is that deployment's directory
    assert m["usr"] == "ro", explain(result)
    assert m["var"] == "rw" and m["varsrc"] == "stateroot", explain(result)
    assert m["ostree-booted"] == "yes", explain(result)  # prepare-root really ran
    assert m["etc"] == version, explain(result)          # /etc is the deployment's own
    assert result.returncode == 0 and not result.timed_out, explain(result)
