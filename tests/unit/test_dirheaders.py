"""The packed per-dirtree file headers the index keeps for mounts."""

from __future__ import annotations

import stat

from ostreefs.store import dirheaders
from ostreefs.store.objects import FileHeader

HEADERS = [
    (FileHeader(0, 0, stat.S_IFREG | 0o644), 1234),
    (FileHeader(1000, 100, stat.S_IFREG | 0o4755), 0),
    (FileHeader(0, 0, stat.S_IFLNK | 0o777, "../lib/x"), 0),
    (FileHeader(5, 6, stat.S_IFREG | 0o600, "",
                ((b"security.selinux", b"system_u:object_r:bin_t:s0\0"),
                 (b"user.a", b""))), 1 << 40),
    (FileHeader(0, 0, stat.S_IFREG | 0o644), 1234),
]


def test_round_trip() -> None:
    packed = dirheaders.pack(HEADERS)
    assert dirheaders.unpack(packed, len(HEADERS)) == HEADERS
    assert dirheaders.unpack(dirheaders.pack([]), 0) == []


def test_plain_files_are_small() -> None:
    assert len(dirheaders.pack(HEADERS[:2])) == 48


def test_a_record_that_does_not_fit_is_refused() -> None:
    packed = dirheaders.pack(HEADERS)
    assert dirheaders.unpack(packed, len(HEADERS) - 1) is None  # other files now
    assert dirheaders.unpack(packed + b"\0", len(HEADERS)) is None
    for cut in (1, 23, 24, len(packed) - 1):
        assert dirheaders.unpack(packed[:cut], len(HEADERS)) is None
    # The symlink (third) carries an archive header: say it is longer than it is.
    bad = bytearray(packed)
    bad[2 * 24 + 24:2 * 24 + 28] = (1 << 20).to_bytes(4, "big")
    assert dirheaders.unpack(bytes(bad), len(HEADERS)) is None
