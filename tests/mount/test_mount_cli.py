"""Argument parsing of ``ostreefs mount`` (no FUSE needed)."""

from __future__ import annotations

import pytest

from ostreefs.cli.cmd_mount import parse_options, split_rev
from ostreefs.errors import UsageError


def test_split_rev() -> None:
    assert split_rev("m") == ("m", "/")
    assert split_rev("m:/usr/lib") == ("m", "/usr/lib")
    assert split_rev("origin:os/x86_64") == ("origin:os/x86_64", "/")
    assert split_rev("origin:os:/usr") == ("origin:os", "/usr")


def test_parse_options() -> None:
    o = parse_options(["allow_other,uid=1000", "gid=100,ro"])
    assert (o.allow_other, o.uid, o.gid, o.log) == (True, 1000, 100, None)
    for bad in ("uid=x", "nope", "allow_other=1", "gid="):
        with pytest.raises(UsageError):
            parse_options([bad])
