"""OSTree's object types as immutable values with symmetric byte codecs.

No I/O here: each type turns into the exact bytes ostree hashes and back, so the
checksums of objects we write are ostree's checksums. Parsing validates what ostree
validates when it loads an object (names, checksum lengths), because a name such as
``..`` coming from a repository would otherwise let a checkout write outside its target.
"""

from __future__ import annotations

import re
import stat
import struct
from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any, NamedTuple, Self

from ostreefs.errors import MalformedData
from ostreefs.store import gvariant
from ostreefs.store.gvariant import Variant

COMMIT_SIG = "(a{sv}aya(say)sstayay)"
DIRTREE_SIG = "(a(say)a(sayay))"
DIRMETA_SIG = "(uuua(ayay))"
FILEHEADER_SIG = "(uuuusa(ayay))"
ARCHIVE_HEADER_SIG = "(tuuuusa(ayay))"
BAREUSER_META_SIG = "(uuua(ayay))"
METADATA_SIG = "a{sv}"
SUMMARY_SIG = "(a(s(taya{sv}))a{sv})"

#: The checksum of the empty dirtree (one zero byte), used for empty directories.
EMPTY_DIRTREE = "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"

Xattrs = tuple[tuple[bytes, bytes], ...]
Metadata = tuple[tuple[str, Variant], ...]


class ObjectType(Enum):
    """Object kinds and the file extension each is stored under."""

    FILE = "file"
    DIR_TREE = "dirtree"
    DIR_META = "dirmeta"
    COMMIT = "commit"
    TOMBSTONE_COMMIT = "tombstone-commit"
    COMMIT_META = "commitmeta"

    @property
    def is_meta(self) -> bool:
        return self is not ObjectType.FILE

    @classmethod
    def from_ext(cls, ext: str) -> ObjectType:
        if ext == "filez":
            return cls.FILE
        return cls(ext)


#: The fixed part of an archive file header: size, uid, gid, mode, rdev.
_ARCHIVE_PLAIN = struct.Struct(">QIIII")
_CHECKSUM_RE = re.compile(r"[0-9a-f]{64}")


def is_checksum(s: str) -> bool:
    """Whether ``s`` is a 64-character lowercase hex SHA-256."""
    return _CHECKSUM_RE.fullmatch(s) is not None


def raw_to_hex(raw: bytes, what: str = "checksum") -> str:
    if len(raw) != 32:
        raise MalformedData(what, f"checksum has {len(raw)} bytes, not 32")
    return raw.hex()


def hex_to_raw(csum: str) -> bytes:
    if not is_checksum(csum):
        raise MalformedData("checksum", f"{csum!r} is not a SHA-256 in hex")
    return bytes.fromhex(csum)


def validate_name(name: str) -> str:
    """Refuse names a dirtree must never hold: they would escape a checkout."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise MalformedData("dirtree", f"invalid file name {name!r}")
    return name


def normalize_xattrs(xattrs: Iterable[tuple[bytes, bytes]]) -> Xattrs:
    """Sort by name and drop empty values, as ostree does before hashing."""
    out: dict[bytes, bytes] = {}
    for name, value in xattrs:
        if name.endswith(b"\0"):
            name = name[:-1]
        if value:
            out[name] = bytes(value)
    return tuple((n, out[n]) for n in sorted(out))


def _xattrs_to_gv(xattrs: Xattrs) -> list[tuple[bytes, bytes]]:
    return [(n + b"\0", v) for n, v in xattrs]


def _xattrs_from_gv(items: list[tuple[bytes, bytes]]) -> Xattrs:
    out = []
    for n, v in items:
        if not n.endswith(b"\0"):
            raise MalformedData("xattrs", "xattr name is not NUL-terminated")
        out.append((n[:-1], v))
    return tuple(out)


def _decode(what: str, sig: str, data: bytes) -> Any:
    try:
        return gvariant.decode(sig, data)
    except MalformedData as e:
        raise MalformedData(what, e.args[1]) from None


def sha256_hex(data: bytes) -> str:
    import hashlib  # here: loading OpenSSL is a tenth of a cold mount's imports

    return hashlib.sha256(data).hexdigest()


class DirMeta(NamedTuple):
    """Owner, mode and xattrs of a directory (``.dirmeta``)."""

    uid: int
    gid: int
    mode: int
    xattrs: Xattrs = ()

    def to_bytes(self) -> bytes:
        return gvariant.encode(
            DIRMETA_SIG, (self.uid, self.gid, self.mode, _xattrs_to_gv(self.xattrs))
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        if len(data) == 12:  # no xattrs: three big-endian integers
            uid, gid, mode = struct.unpack(">III", data)
            if not stat.S_ISDIR(mode):
                raise MalformedData("dirmeta", f"mode {mode:o} is not a directory")
            return cls(uid, gid, mode)
        uid, gid, mode, xattrs = _decode("dirmeta", DIRMETA_SIG, data)
        if not stat.S_ISDIR(mode):
            raise MalformedData("dirmeta", f"mode {mode:o} is not a directory")
        return cls(uid, gid, mode, _xattrs_from_gv(xattrs))

    def checksum(self) -> str:
        return sha256_hex(self.to_bytes())


class DirTree(NamedTuple):
    """A directory listing (``.dirtree``): files name→content, dirs name→(tree, meta).

    Checksums are kept in hex; entries are sorted by name bytes as ostree sorts them.
    """

    files: tuple[tuple[str, str], ...] = ()
    dirs: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def build(
        cls, files: Mapping[str, str], dirs: Mapping[str, tuple[str, str]]
    ) -> DirTree:
        def key(n: str) -> bytes:
            return n.encode("utf-8", "surrogateescape")

        return cls(
            tuple((n, files[n]) for n in sorted(files, key=key)),
            tuple((n, *dirs[n]) for n in sorted(dirs, key=key)),
        )

    def to_bytes(self) -> bytes:
        return gvariant.encode(
            DIRTREE_SIG,
            (
                [(n, bytes.fromhex(c)) for n, c in self.files],
                [(n, bytes.fromhex(t), bytes.fromhex(m)) for n, t, m in self.dirs],
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        fast = _fast_dirtree_raw(data)
        if fast is not None:
            return cls._from_raw(*fast)
        files, dirs = _decode("dirtree", DIRTREE_SIG, data)
        f = tuple((validate_name(n), raw_to_hex(c, "dirtree")) for n, c in files)
        d = tuple(
            (validate_name(n), raw_to_hex(t, "dirtree"), raw_to_hex(m, "dirtree"))
            for n, t, m in dirs
        )
        names = [n.encode() for n, _ in f] + [n.encode() for n, *_ in d]
        if len(set(names)) != len(names):
            raise MalformedData("dirtree", "duplicate name")
        for seq in ([n.encode() for n, _ in f], [n.encode() for n, *_ in d]):
            if seq != sorted(seq):
                raise MalformedData("dirtree", "entries are not sorted")
        return cls(f, d)

    @classmethod
    def _from_raw(cls, fa: list[tuple[bytes, ...]], da: list[tuple[bytes, ...]]) -> Self:
        """Validate and convert entries whose names are still bytes (the fast path)."""
        fnames = [e[0] for e in fa]
        dnames = [e[0] for e in da]
        for names in (fnames, dnames):
            if names != sorted(set(names)):  # strictly increasing: sorted, no repeats
                raise MalformedData("dirtree", "entries are not sorted")
        if not set(fnames).isdisjoint(dnames):
            raise MalformedData("dirtree", "duplicate name")
        # Names in bulk (no NUL in any: one decode of them joined); a bad one sends us
        # to the per-name checks, which say which.
        allnames = fnames + dnames
        joined = b"\0".join(allnames)
        try:
            if b"/" in joined or not _BAD_NAMES.isdisjoint(allnames):
                raise ValueError
            text = joined.decode("utf-8").split("\0") if allnames else []
            csums = [c for _n, c in fa] + [x for _n, t, m in da for x in (t, m)]
            if any(len(c) != 32 for c in csums):
                raise ValueError
        except ValueError:  # (UnicodeDecodeError is one)
            try:
                f = tuple((_raw_name(n), _raw_csum(c)) for n, c in fa)
                d = tuple((_raw_name(n), _raw_csum(t), _raw_csum(m)) for n, t, m in da)
            except UnicodeDecodeError:
                raise MalformedData("dirtree", "name is not valid UTF-8") from None
            return cls(f, d)
        nf = len(fa)
        hexes = [c.hex() for c in csums]
        f = tuple(zip(text[:nf], hexes[:nf], strict=True))
        d = tuple(zip(text[nf:], hexes[nf::2], hexes[nf + 1::2], strict=True))
        return cls(f, d)

    def checksum(self) -> str:
        return sha256_hex(self.to_bytes())


_BAD_NAMES = frozenset((b"", b".", b".."))


def _raw_name(n: bytes) -> str:
    if not n or n in (b".", b"..") or b"/" in n:
        raise MalformedData("dirtree", f"invalid file name {n!r}")
    return n.decode("utf-8")


def _raw_csum(c: bytes) -> str:
    if len(c) != 32:
        raise MalformedData("dirtree", f"checksum has {len(c)} bytes, not 32")
    return c.hex()


def _off_size(n: int) -> int:
    return 1 if n <= 0xFF else 2 if n <= 0xFFFF else 4 if n <= 0xFFFFFFFF else 8


def _fast_array(data: bytes, start: int, end: int, n_offsets: int
                ) -> list[tuple[bytes, ...]] | None:
    """Elements of an a(say) or a(sayay) at [start, end), names without their NUL, or
    None if anything is off.

    Every member is byte-aligned, so the layout is framing offsets only. None sends
    the caller to the generic decoder, which reports the precise error. Elements under
    256 bytes (one-byte offsets: any name up to ~190 bytes) take a shorter path.
    """
    framing = _array_frame(data, start, end)
    if framing is None:
        return None
    tstart, ends = framing
    out: list[tuple[bytes, ...]] = []
    pos = start
    for rel in ends:
        elem_end = start + rel
        if elem_end < pos or elem_end > tstart:
            return None
        if elem_end - pos > 0xFF:
            elem = _fast_element(data, pos, elem_end, n_offsets)
            if elem is None:
                return None
            out.append(elem)
        elif n_offsets == 1:  # (say): name NUL, checksum, offset of the name's end
            frame = elem_end - 1
            name_end = pos + data[frame] if frame >= pos else -1
            if name_end <= pos or name_end > frame or data[name_end - 1]:
                return None
            name = data[pos:name_end - 1]
            if b"\0" in name:
                return None
            out.append((name, data[name_end:frame]))
        else:  # (sayay): name NUL, tree, meta, offsets of the tree's and name's ends
            frame = elem_end - 2
            if frame < pos:
                return None
            name_end, tree_end = pos + data[frame + 1], pos + data[frame]
            if not pos < name_end <= tree_end <= frame or data[name_end - 1]:
                return None
            name = data[pos:name_end - 1]
            if b"\0" in name:
                return None
            out.append((name, data[name_end:tree_end], data[tree_end:frame]))
        pos = elem_end
    return out


#: struct codes of little-endian framing offsets by size.
_OFF_FMT = {2: "H", 4: "I", 8: "Q"}


def _array_frame(data: bytes, start: int, end: int
                 ) -> tuple[int, bytes | tuple[int, ...]] | None:
    """Where the framing offsets of an array of variable-size elements at [start, end)
    begin, and the offsets (each element's end, from ``start``); None if they cannot
    be where the last one says."""
    size = end - start
    if size == 0:
        return end, ()
    z = _off_size(size)
    table = int.from_bytes(data[end - z:end], "little")
    if table > size - z or (size - table) % z:
        return None
    tstart = start + table
    if z == 1:
        return tstart, data[tstart:end]  # iterating bytes gives the offsets
    return tstart, struct.unpack_from(f"<{(end - tstart) // z}{_OFF_FMT[z]}", data, tstart)


def _dirtree_split(data: bytes) -> tuple[int, int] | None:
    """Where a dirtree's files array ends (its dirs array begins), and where the dirs
    array ends; None if the framing says nothing possible."""
    size = len(data)
    if size == 0:
        return None
    z = _off_size(size)
    files_end = int.from_bytes(data[size - z:], "little")
    return None if files_end > size - z else (files_end, size - z)


def _fast_element(data: bytes, pos: int, elem_end: int, n_offsets: int
                  ) -> tuple[bytes, ...] | None:
    """One (say) or (sayay) element at [pos, elem_end), any offset size."""
    ez = _off_size(elem_end - pos)
    frame = elem_end - ez * n_offsets
    if frame < pos:
        return None
    frombytes = int.from_bytes
    ends = [pos + frombytes(data[frame + k * ez:frame + (k + 1) * ez], "little")
            for k in range(n_offsets - 1, -1, -1)]
    ends.append(frame)
    parts = []
    p = pos
    for e in ends:
        if e < p or e > frame:
            return None
        parts.append(data[p:e])
        p = e
    name = parts[0]
    if not name or name[-1] != 0 or b"\0" in name[:-1]:
        return None
    parts[0] = name[:-1]
    return tuple(parts)


def _fast_dirtree_raw(data: bytes) -> tuple[list[tuple[bytes, ...]],
                                             list[tuple[bytes, ...]]] | None:
    """Split a dirtree into raw entries (names without their NUL) without the generic
    codec, which is too slow for the hot paths that read every directory."""
    split = _dirtree_split(data)
    if split is None:
        return None
    files_end, dirs_end = split
    fa = _fast_array(data, 0, files_end, 1)
    da = _fast_array(data, files_end, dirs_end, 2)
    if fa is None or da is None:
        return None
    return fa, da


def _lean_array(data: bytes, start: int, end: int, n_sums: int, width: int = 32
                ) -> list[bytes] | None:
    """The first checksum of each element of an a(say) (``n_sums`` 1) or a(sayay) (2) at
    [start, end), where every element is under 256 bytes and the array under 64 KiB (a
    directory of up to ~1500 entries with names of up to ~190 bytes); None otherwise.

    Only the framing that places the checksums is checked: that each one is 32 bytes,
    right before its element's offsets. A count of a whole tree slices out ~20 checksums
    per directory and needs nothing else of an element (see dirtree_checksums). Of a
    file's checksum it gives the first ``width`` bytes.
    """
    framing = _array_frame(data, start, end) if end - start <= 0xFFFF else None
    if framing is None:
        return None
    tstart, ends = framing
    out: list[bytes] = []
    prev = start
    if n_sums == 1:  # name NUL, checksum, the name's end
        for rel in ends:
            e = start + rel
            if (e > tstart or e - prev > 0xFF or e - 33 <= prev
                    or prev + data[e - 1] != e - 33):
                return None
            out.append(data[e - 33:e - 33 + width])
            prev = e
    else:  # name NUL, tree, meta, the tree's end, the name's end
        for rel in ends:
            e = start + rel
            if (e > tstart or e - prev > 0xFF or e - 66 <= prev
                    or prev + data[e - 1] != e - 66 or prev + data[e - 2] != e - 34):
                return None
            out.append(data[e - 66:e - 34])
            prev = e
    return out


def _lean_checksums(data: bytes, width: int = 32
                    ) -> tuple[list[bytes], list[bytes]] | None:
    split = _dirtree_split(data)
    if split is None:
        return None
    files_end, dirs_end = split
    files = _lean_array(data, 0, files_end, 1, width)
    if files is None:
        return None
    dirs = _lean_array(data, files_end, dirs_end, 2)
    return None if dirs is None else (files, dirs)


def dirtree_checksums(data: bytes, file_width: int = 32) -> tuple[list[bytes], list[bytes]]:
    """The raw (32-byte) checksums of a dirtree's files and of its subtrees; of the
    files' checksums only the first ``file_width`` bytes (a count keys objects by 8).

    For passes over a whole tree that need no names (counting how often each object
    occurs): it neither decodes nor checks names (UTF-8, order, duplicates, ``..``), so
    it takes some dirtrees that :meth:`DirTree.from_bytes` refuses; what it cannot
    frame at all raises :class:`MalformedData`. A listing still checks everything.
    """
    lean = _lean_checksums(data, file_width)
    if lean is not None:
        return lean
    raw = _fast_dirtree_raw(data)
    if raw is not None:
        files = [e[1] for e in raw[0]]
        dirs = [e[1] for e in raw[1]]
        if all(len(c) == 32 for c in files) and all(len(c) == 32 for c in dirs):
            return [c[:file_width] for c in files], dirs
    t = DirTree.from_bytes(data)
    return ([bytes.fromhex(c)[:file_width] for _n, c in t.files],
            [bytes.fromhex(c) for _n, c, _m in t.dirs])


class Commit(NamedTuple):
    """A commit (``.commit``): metadata, parent, subject, body, time and root."""

    root_tree: str
    root_meta: str
    subject: str = ""
    body: str = ""
    timestamp: int = 0
    parent: str | None = None
    metadata: Metadata = ()
    related: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        return gvariant.encode(
            COMMIT_SIG,
            (
                list(self.metadata),
                bytes.fromhex(self.parent) if self.parent else b"",
                [(n, bytes.fromhex(c)) for n, c in self.related],
                self.subject,
                self.body,
                self.timestamp,
                bytes.fromhex(self.root_tree),
                bytes.fromhex(self.root_meta),
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        meta, parent, related, subject, body, ts, tree, dmeta = _decode(
            "commit", COMMIT_SIG, data
        )
        return cls(
            root_tree=raw_to_hex(tree, "commit"),
            root_meta=raw_to_hex(dmeta, "commit"),
            subject=subject,
            body=body,
            timestamp=ts,
            parent=raw_to_hex(parent, "commit") if parent else None,
            metadata=tuple(meta),
            related=tuple((n, raw_to_hex(c, "commit")) for n, c in related),
        )

    def checksum(self) -> str:
        return sha256_hex(self.to_bytes())

    def meta_dict(self) -> dict[str, Any]:
        """Metadata as a dict of plain values (the last duplicate wins)."""
        return {k: v.value for k, v in self.metadata}

    @property
    def content_checksum(self) -> str:
        """ostree's ContentChecksum: SHA-256 of the root dirtree and dirmeta raw bytes."""
        return sha256_hex(bytes.fromhex(self.root_tree) + bytes.fromhex(self.root_meta))

    @property
    def version(self) -> str | None:
        v = self.meta_dict().get("version")
        return v if isinstance(v, str) else None


def encode_metadata(meta: Iterable[tuple[str, Variant]]) -> bytes:
    return gvariant.encode(METADATA_SIG, list(meta))


def decode_metadata(data: bytes, what: str = "metadata") -> Metadata:
    return tuple(_decode(what, METADATA_SIG, data))


class FileHeader(NamedTuple):
    """The metadata of a content object: what is hashed before the payload."""

    uid: int
    gid: int
    mode: int
    symlink_target: str = ""
    xattrs: Xattrs = ()
    rdev: int = 0

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    def _gv(self) -> bytes:
        return gvariant.encode(
            FILEHEADER_SIG,
            (self.uid, self.gid, self.mode, self.rdev, self.symlink_target,
             _xattrs_to_gv(self.xattrs)),
        )

    def checksum_header(self) -> bytes:
        """The header ostree feeds to SHA-256 ahead of a file's bytes."""
        body = self._gv()
        return struct.pack(">II", len(body), 0) + body

    def archive_header(self, size: int) -> bytes:
        """The header of an archive-mode ``.filez`` (with the uncompressed size)."""
        body = gvariant.encode(
            ARCHIVE_HEADER_SIG,
            (0 if self.is_symlink else size, self.uid, self.gid, self.mode, self.rdev,
             self.symlink_target, _xattrs_to_gv(self.xattrs)),
        )
        return struct.pack(">II", len(body), 0) + body

    def bareuser_meta(self) -> bytes:
        """The ``user.ostreemeta`` xattr value of a bare-user object."""
        return gvariant.encode(
            BAREUSER_META_SIG, (self.uid, self.gid, self.mode, _xattrs_to_gv(self.xattrs))
        )

    @classmethod
    def from_bareuser_meta(cls, data: bytes, symlink_target: str = "") -> Self:
        if len(data) == 12:  # no xattrs: the common case, three big-endian integers
            uid, gid, mode = struct.unpack(">III", data)
            return cls(uid, gid, mode, symlink_target)
        uid, gid, mode, xattrs = _decode("user.ostreemeta", BAREUSER_META_SIG, data)
        return cls(uid, gid, mode, symlink_target, _xattrs_from_gv(xattrs))

    @classmethod
    def _check_mode(cls, mode: int, target: str, what: str) -> None:
        if stat.S_ISLNK(mode):
            if not target:
                raise MalformedData(what, "symlink without a target")
        elif stat.S_ISREG(mode):
            if target:
                raise MalformedData(what, "regular file with a symlink target")
        else:
            raise MalformedData(what, f"mode {mode:o} is neither a file nor a symlink")

    @classmethod
    def parse_archive(cls, data: bytes) -> tuple[Self, int, int]:
        """Parse the start of a ``.filez``: (header, uncompressed size, payload offset)."""
        if len(data) < 8:
            raise MalformedData("archive file", "truncated header")
        (length,) = struct.unpack_from(">I", data, 0)
        if length > len(data) - 8:
            raise MalformedData("archive file", "header length beyond the object")
        if length == 26 and data[32:34] == b"\0\x19":
            # A regular file without xattrs, the common case: the integers, an empty
            # target and its framing offset (25), no array. A first walk of an archive
            # reads one header per file, and the generic codec is ~20x slower.
            size, uid, gid, mode, rdev = _ARCHIVE_PLAIN.unpack_from(data, 8)
            if stat.S_ISREG(mode):
                return cls(uid, gid, mode, "", (), rdev), size, 34
        size, uid, gid, mode, rdev, target, xattrs = _decode(
            "archive file header", ARCHIVE_HEADER_SIG, data[8 : 8 + length]
        )
        cls._check_mode(mode, target, "archive file header")
        return cls(uid, gid, mode, target, _xattrs_from_gv(xattrs), rdev), size, 8 + length

    @classmethod
    def parse_checksum_header(cls, data: bytes) -> tuple[Self, int]:
        """Parse a checksum-input header: (header, payload offset)."""
        if len(data) < 8:
            raise MalformedData("file header", "truncated header")
        (length,) = struct.unpack_from(">I", data, 0)
        if length > len(data) - 8:
            raise MalformedData("file header", "header length beyond the object")
        uid, gid, mode, rdev, target, xattrs = _decode(
            "file header", FILEHEADER_SIG, data[8 : 8 + length]
        )
        cls._check_mode(mode, target, "file header")
        return cls(uid, gid, mode, target, _xattrs_from_gv(xattrs), rdev), 8 + length


class SummaryRef(NamedTuple):
    name: str
    commit: str
    size: int
    metadata: Metadata = ()


class Summary(NamedTuple):
    """The repo summary: refs with commit sizes, plus repo-wide metadata.

    ostree writes each ref's commit size in host byte order (little-endian here) while
    everything else is big-endian; this type hides that quirk.
    """

    refs: tuple[SummaryRef, ...] = ()
    metadata: Metadata = ()

    def to_bytes(self) -> bytes:
        refs = sorted(self.refs, key=lambda r: r.name.encode())
        return gvariant.encode(
            SUMMARY_SIG,
            (
                [(r.name, (_swap64(r.size), bytes.fromhex(r.commit), list(r.metadata)))
                 for r in refs],
                list(self.metadata),
            ),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        refs, meta = _decode("summary", SUMMARY_SIG, data)
        return cls(
            tuple(SummaryRef(n, raw_to_hex(c, "summary"), _swap64(s), tuple(m))
                  for n, (s, c, m) in refs),
            tuple(meta),
        )


def _swap64(n: int) -> int:
    return int.from_bytes(n.to_bytes(8, "big"), "little")
