"""The repository ``summary``: every branch with its commit, for clients to pull from.

The bytes must be the ones ``ostree summary -u`` writes, so that each tool verifies
the other's ``summary.sig``. ostree builds each ``a{sv}`` through a GVariantDict, a
GLib hash table, so the keys come out in the table's slot order rather than insertion
order; :func:`vardict` reproduces that order (GLib's string hash, the multiply-by-11
slot choice and its probe sequence), which is what makes the bytes match.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from ostreefs import _fs
from ostreefs.errors import StoreError
from ostreefs.store.gvariant import Variant
from ostreefs.store.objects import (
    Metadata,
    ObjectType,
    Summary,
    SummaryRef,
    decode_metadata,
)
from ostreefs.store.refs import list_refs
from ostreefs.store.repo import Repo

SUMMARY_FILE = "summary"
SUMMARY_SIG_FILE = "summary.sig"
#: GDateTime's range: a commit time beyond year 9999 gets no timestamp entry.
_MAX_DATETIME = 253402300800

# ------------------------------------------------------------ GVariantDict ordering

_MIN_SHIFT = 3
#: GLib's prime moduli, one per table size 2**shift.
_PRIME_MOD = [1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749,
              65521, 131071, 262139, 524287, 1048573, 2097143, 4194301, 8388593, 16777213,
              33554393, 67108859, 134217689, 268435399, 536870909, 1073741789, 2147483647]


def _str_hash(key: str) -> int:
    h = 5381
    for b in key.encode("utf-8"):
        if b >= 0x80:  # GLib hashes through a signed char
            b -= 0x100
        h = (h * 33 + b) & 0xFFFFFFFF
    return h


class _HashOrder:
    """Slot placement of GLib's GHashTable for insertions without removals."""

    def __init__(self) -> None:
        self.shift = _MIN_SHIFT
        self.slots: list[tuple[int, str] | None] = [None] * (1 << self.shift)
        self.nnodes = 0

    def _index(self, h: int, key: str) -> int:
        size = len(self.slots)
        i = ((h * 11) & 0xFFFFFFFF) % _PRIME_MOD[self.shift]
        step = 0
        while self.slots[i] is not None:
            node = self.slots[i]
            assert node is not None
            if node[0] == h and node[1] == key:
                return i
            step += 1
            i = (i + step) & (size - 1)
        return i

    def insert(self, key: str) -> None:
        h = _str_hash(key)
        if h < 2:
            h = 2
        i = self._index(h, key)
        if self.slots[i] is not None:
            return
        self.slots[i] = (h, key)
        self.nnodes += 1
        size = len(self.slots)
        if size <= self.nnodes + self.nnodes // 16:
            self._resize()

    def _resize(self) -> None:
        old = self.slots
        want = int(self.nnodes * 1.333)
        shift = 0
        while want:
            want >>= 1
            shift += 1
        self.shift = max(shift, _MIN_SHIFT)
        self.slots = [None] * (1 << self.shift)
        for node in old:
            if node is not None:
                self.slots[self._index(node[0], node[1])] = node

    def keys(self) -> list[str]:
        return [n[1] for n in self.slots if n is not None]


def vardict(items: Iterable[tuple[str, Variant]]) -> Metadata:
    """An a{sv} in the order GVariantDict would produce it; a later key replaces."""
    values: dict[str, Variant] = {}
    order = _HashOrder()
    for k, v in items:
        values[k] = v
        order.insert(k)
    return tuple((k, values[k]) for k in order.keys())


# ---------------------------------------------------------------------- generation


@dataclass(frozen=True)
class SummaryInfo:
    """A parsed summary, for ``summary --view`` and for pull."""

    summary: Summary
    raw: bytes


def _ref_entry(repo: Repo, name: str, commit: str) -> SummaryRef:
    data = repo.read_metadata(commit, ObjectType.COMMIT)
    c = repo.load_commit(commit)
    meta: list[tuple[str, Variant]] = []
    if 0 <= c.timestamp < _MAX_DATETIME:
        meta.append(("ostree.commit.timestamp", Variant("t", c.timestamp)))
    version = c.meta_dict().get("version")
    if isinstance(version, str):
        meta.append(("ostree.commit.version", Variant("s", version)))
    return SummaryRef(name, commit, len(data), vardict(meta))


def _has_static_deltas(repo: Repo) -> bool:
    d = repo.path / "deltas"
    try:
        return any(os.scandir(d))
    except (FileNotFoundError, NotADirectoryError):
        return False


def generate_summary(repo: Repo, *, extra_metadata: Sequence[tuple[str, Variant]] = (),
                     last_modified: int | None = None) -> bytes:
    """The summary ``ostree summary -u`` would write for the repo as it is now.

    ``last_modified`` defaults to now; passing ostree's value reproduces its bytes.
    """
    import time

    if repo.collection_id is not None:
        raise StoreError("Generating a summary for a repository with a collection ID is "
                         "not supported by ostreefs",
                         hint="use 'ostree summary -u' for collection repositories")
    if _has_static_deltas(repo) and not repo.config.get_bool(
            "core", "no-deltas-in-summary", False):
        raise StoreError("The repository has static deltas, which ostreefs cannot list in "
                         "a summary", hint="use 'ostree summary -u'")
    refs = list_refs(repo, include_remotes=False)
    entries = tuple(_ref_entry(repo, n, refs[n])
                    for n in sorted(refs, key=lambda s: s.encode("utf-8")))
    ts = int(time.time()) if last_modified is None else last_modified
    md: list[tuple[str, Variant]] = list(extra_metadata)
    md.append(("ostree.summary.last-modified", Variant("t", ts)))
    md.append(("ostree.summary.mode", Variant("s", repo.config.get("core", "mode") or "bare")))
    md.append(("ostree.summary.tombstone-commits",
               Variant("b", repo.config.get_bool("core", "tombstone-commits", False))))
    md.append(("ostree.summary.indexed-deltas", Variant("b", True)))
    return Summary(entries, vardict(md)).to_bytes()


def publish_summary(repo: Repo, data: bytes, sig: bytes | None) -> None:
    """Put a new summary (and its signature, or none) in place, as ostree does.

    The signature goes in after the summary shares its mtime, so HTTP caches expire
    both together; a summary without a signature removes a stale ``summary.sig``.
    Also records ``core.indexed-deltas=true``, which ``ostree summary -u`` sets.
    """
    with repo.lock():
        repo.reload_config()
        if repo.config.get("core", "indexed-deltas") is None:
            repo.config.set("core", "indexed-deltas", "true")
            repo.write_config()
        fsync = repo.fsync_enabled
        sig_path = repo.path / SUMMARY_SIG_FILE
        if sig is None:
            _fs.atomic_write(repo.path / SUMMARY_FILE, data, fsync=fsync)
            sig_path.unlink(missing_ok=True)
            return
        tmp_sig = repo.path / "tmp" / _fs.tmp_name("summary.sig-")
        _fs.atomic_write(tmp_sig, sig, fsync=fsync)
        try:
            st = os.stat(tmp_sig)
            tmp_sum = repo.path / "tmp" / _fs.tmp_name("summary-")
            _fs.atomic_write(tmp_sum, data, fsync=fsync)
            os.utime(tmp_sum, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.rename(tmp_sum, repo.path / SUMMARY_FILE)
            os.rename(tmp_sig, sig_path)
        finally:
            tmp_sig.unlink(missing_ok=True)


def update_summary(repo: Repo, *, extra_metadata: Sequence[tuple[str, Variant]] = (),
                   sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """Regenerate and publish the summary; ``sign`` maps summary bytes to summary.sig."""
    data = generate_summary(repo, extra_metadata=extra_metadata)
    publish_summary(repo, data, sign(data) if sign is not None else None)
    return data


def read_summary(repo: Repo) -> SummaryInfo:
    try:
        raw = (repo.path / SUMMARY_FILE).read_bytes()
    except FileNotFoundError:
        raise StoreError("No summary file", hint="create one with 'summary --update'") from None
    return SummaryInfo(Summary.from_bytes(raw), raw)


def parse_summary(raw: bytes) -> Summary:
    return Summary.from_bytes(raw)


def parse_summary_sig(raw: bytes) -> Metadata:
    return decode_metadata(raw, "summary.sig")
