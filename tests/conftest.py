"""Fixtures for the compat/acceptance suite.

``ostree`` and ``ostreefs`` are callables ``run(*args, check=True, input=None)`` returning a
CompletedProcess (text mode, stdout/stderr captured, ``LC_ALL=C``, ``TZ=UTC``).  A failed
check raises AssertionError with the command, exit code, stdout and stderr.

Without /usr/bin/ostree the oracle-based tests are skipped locally, but fail when the
``CI`` environment variable is set: CI must never silently lose the oracle.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import (  # noqa: E402
    OSTREE_BIN,
    Tool,
    make_ostree,
    make_ostreefs,
)
from support import rev_parse as rev_parse  # noqa: E402  (re-exported helper)
from treegen import make_tree  # noqa: E402

__all__ = ["rev_parse"]

# A suite started in the background of a script (``cmd &``) inherits SIGINT ignored, and
# so would every process it starts: tests that stop a server or a mount with SIGINT,
# as ^C does, would then wait for nothing. Take SIGINT back for this run.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _require_ostree() -> None:
    if OSTREE_BIN and os.access(OSTREE_BIN, os.X_OK):
        return
    msg = "/usr/bin/ostree (the oracle) is not installed"
    if os.environ.get("CI"):
        pytest.fail(msg + " and CI is set", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def ostree() -> Tool:
    _require_ostree()
    return make_ostree()


@pytest.fixture(scope="session")
def ostreefs() -> Tool:
    return make_ostreefs()


@pytest.fixture(autouse=True)
def _umask() -> object:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture(params=["ostree", "ostreefs"])
def tool(request: pytest.FixtureRequest) -> Tool:
    """Each of the two tools in turn (for tests whose body is tool-agnostic)."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Callable[[int, str], Path]:
    """Generated trees by (seed, size), made once per test module under umask 022."""
    cache: dict[tuple[int, str], Path] = {}

    def get(seed: int, size: str) -> Path:
        if (seed, size) not in cache:
            old = os.umask(0o022)
            try:
                base = tmp_path_factory.mktemp(f"tree-{seed}-{size}")
                cache[seed, size] = make_tree(base / "src", seed, size)
            finally:
                os.umask(old)
        return cache[seed, size]

    return get
