"""The GVariant codec (ostreefs.store.gvariant) and the object codecs built on it.

* Property tests: random (type, value) pairs round-trip, and the encoder agrees with an
  independent reference serialiser written here from the format reference (section 3).
* Fuzzing: random and mutated bytes fed to ``decode`` and to the object parsers either
  parse or raise MalformedData, never any other exception, and lying lengths fail fast.
* Known vectors from /work/shared/reference/ostree-repo-format.md (sections 2, 4, 5, 7).
* When the system python has GLib (python3-gi), a cross-check of the encoder against GLib
  itself, through a helper process (nothing is installed for this).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import subprocess
import sys
import time
import zlib
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ostreefs.errors import MalformedData
from ostreefs.store.gvariant import Variant, decode, encode
from ostreefs.store.objects import (
    EMPTY_DIRTREE,
    Commit,
    DirMeta,
    DirTree,
    FileHeader,
    Summary,
    SummaryRef,
    _lean_checksums,
    decode_metadata,
    dirtree_checksums,
    encode_metadata,
    normalize_xattrs,
)

# One profile for the module: no example database in the work tree, no deadline (the
# suite's whole-run budget is what matters), fast enough for the 60 s budget.
FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.filter_too_much],
)
FUZZ = settings(FAST, max_examples=300)

OSTREE_SIGS = [
    "(a{sv}aya(say)sstayay)",  # commit
    "(a(say)a(sayay))",  # dirtree
    "(uuua(ayay))",  # dirmeta, bare-user ostreemeta
    "(uuuusa(ayay))",  # file header
    "(tuuuusa(ayay))",  # archive file header
    "a{sv}",  # commit metadata, detached metadata, summary.sig
    "(a(s(taya{sv}))a{sv})",  # summary
    "a{sa(s(taya{sv}))}",  # summary collection map
    "a(say)",
    "a(sayay)",
    "a(ayay)",
    "aay",
    "as",
    "ay",
]

# --------------------------------------------------------------------------- reference
# An independent serialiser, written from section 3 of the format reference rather than
# from ostreefs' code, used to check the encoder's bytes (not just its round trips).

_REF_INT = {"y": "B", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "h": "i"}
_REF_ALIGN = {"y": 1, "b": 1, "n": 2, "q": 2, "i": 4, "u": 4, "h": 4, "x": 8, "t": 8, "d": 8,
              "s": 1, "o": 1, "g": 1, "v": 8}


def ref_split(sig: str) -> tuple[str, str]:
    """The first complete type of ``sig`` and the rest."""
    c = sig[0]
    if c in "am":
        head, rest = ref_split(sig[1:])
        return c + head, rest
    if c in "({":
        close = ")" if c == "(" else "}"
        rest = sig[1:]
        out = c
        while rest[0] != close:
            head, rest = ref_split(rest)
            out += head
        return out + close, rest[1:]
    return c, sig[1:]


def ref_members(sig: str) -> list[str]:
    inner = sig[1:-1]
    out = []
    while inner:
        head, inner = ref_split(inner)
        out.append(head)
    return out


def ref_align(sig: str) -> int:
    c = sig[0]
    if c in "am":
        return ref_align(sig[1:])
    if c in "({":
        return max((ref_align(m) for m in ref_members(sig)), default=1)
    return _REF_ALIGN[c]


def ref_fixed(sig: str) -> int | None:
    c = sig[0]
    if c in _REF_INT or c in "bd":
        return _REF_ALIGN[c]
    if c in "({":
        pos = 0
        for m in ref_members(sig):
            f = ref_fixed(m)
            if f is None:
                return None
            pos = -(-pos // ref_align(m)) * ref_align(m) + f
        if pos == 0:
            return 1
        a = ref_align(sig)
        return -(-pos // a) * a
    return None


def ref_offsets(body_len: int, ends: list[int]) -> bytes:
    if not ends:
        return b""
    for z, limit in ((1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF), (8, 1 << 64)):
        if body_len + len(ends) * z <= limit:
            return b"".join(e.to_bytes(z, "little") for e in ends)
    raise AssertionError


def ref_serialise(sig: str, value: Any, bo: str = ">") -> bytes:
    c = sig[0]
    if c in _REF_INT:
        return struct.pack(bo + _REF_INT[c], value)
    if c == "b":
        return b"\x01" if value else b"\x00"
    if c == "d":
        return struct.pack(bo + "d", value)
    if c == "s":
        return value.encode() + b"\0"
    if c == "v":
        return ref_serialise(value.signature, value.value, bo) + b"\0" + \
            value.signature.encode()
    if c == "m":
        if value is None:
            return b""
        inner = ref_serialise(sig[1:], value, bo)
        return inner if ref_fixed(sig[1:]) is not None else inner + b"\0"
    if c == "a":
        elem = sig[1:]
        body = b""
        ends = []
        for item in value:
            body += b"\0" * (-len(body) % ref_align(elem))
            body += ref_serialise(elem, item, bo) if elem != "y" else bytes([item])
            ends.append(len(body))
        if ref_fixed(elem) is not None:
            return body
        return body + ref_offsets(len(body), ends)
    members = ref_members(sig)
    if not members:
        return b"\0"
    body = b""
    ends = []
    for i, (m, v) in enumerate(zip(members, value, strict=True)):
        body += b"\0" * (-len(body) % ref_align(m))
        body += ref_serialise(m, v, bo)
        if ref_fixed(m) is None and i != len(members) - 1:
            ends.append(len(body))
    fixed = ref_fixed(sig)
    if fixed is not None:
        return body + b"\0" * (fixed - len(body))
    return body + ref_offsets(len(body), ends[::-1])


# -------------------------------------------------------------------------- strategies

BASIC = list("ybnqiuxtdsh")
KEY_TYPES = list("ybnqiuxtds")
INT_RANGES = {
    "y": (0, 0xFF), "n": (-(1 << 15), (1 << 15) - 1), "q": (0, 0xFFFF),
    "i": (-(1 << 31), (1 << 31) - 1), "h": (-(1 << 31), (1 << 31) - 1), "u": (0, (1 << 32) - 1),
    "x": (-(1 << 63), (1 << 63) - 1), "t": (0, (1 << 64) - 1),
}

texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    max_size=12,
)


def _extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner.map(lambda t: "a" + t),
        inner.filter(lambda t: not t.startswith("m")).map(lambda t: "m" + t),
        st.lists(inner, min_size=1, max_size=4).map(lambda ts: "(" + "".join(ts) + ")"),
        st.tuples(st.sampled_from(KEY_TYPES), inner).map(lambda kv: "a{{{}{}}}".format(*kv)),
    )


LEAVES = st.sampled_from(BASIC + ["v", "ay", "()"])
#: Type strings: OSTree's, and random nestings of every basic and container type.
types = st.one_of(
    st.sampled_from(OSTREE_SIGS),
    st.recursive(LEAVES, _extend, max_leaves=8),
)
shallow_types = st.recursive(st.sampled_from(BASIC + ["ay", "()"]), _extend, max_leaves=4)


@cache
def values_for(sig: str, vdepth: int = 0) -> st.SearchStrategy[Any]:
    """A strategy for Python values of type ``sig`` in the codec's value mapping."""
    c = sig[0]
    if c in INT_RANGES:
        lo, hi = INT_RANGES[c]
        return st.integers(lo, hi)
    if c == "b":
        return st.booleans()
    if c == "d":
        return st.floats(allow_nan=False)
    if c == "s":
        return texts
    if c == "v":
        inner_types = types if vdepth < 2 else shallow_types
        return inner_types.flatmap(
            lambda s: values_for(s, vdepth + 1).map(lambda v, s=s: Variant(s, v)))
    if c == "m":
        return st.none() | values_for(sig[1:], vdepth)
    if c == "a":
        elem = sig[1:]
        if elem == "y":
            return st.binary(max_size=40)
        return st.lists(values_for(elem, vdepth), max_size=4)
    members = ref_members(sig)
    return st.tuples(*(values_for(m, vdepth) for m in members))


typed_values = types.flatmap(lambda s: values_for(s).map(lambda v, s=s: (s, v)))


@st.composite
def mutations(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` with a few structural edits: truncation, flips, inserts, huge offsets."""
    b = bytearray(base)
    for op in draw(st.lists(st.sampled_from(
            ["trunc", "flip", "insert", "delete", "bigoff", "zerooff", "setbyte"]),
            min_size=1, max_size=3)):
        if op == "trunc":
            del b[draw(st.integers(0, len(b))):]
        elif op == "insert":
            i = draw(st.integers(0, len(b)))
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif not b:
            continue
        elif op == "flip":
            i = draw(st.integers(0, len(b) - 1))
            b[i] ^= draw(st.integers(1, 255))
        elif op == "delete":
            i = draw(st.integers(0, len(b) - 1))
            del b[i: i + draw(st.integers(1, 8))]
        elif op in ("bigoff", "zerooff"):
            # Overwrite the last framing offset(s): the end of a container.
            k = min(draw(st.sampled_from([1, 2, 4, 8])), len(b))
            b[len(b) - k:] = (b"\xff" if op == "bigoff" else b"\0") * k
        else:
            i = draw(st.integers(0, len(b) - 1))
            b[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFE, 0xFF]))
    return bytes(b)


_MALFORMED = object()


def decode_or_malformed(sig: str, data: bytes) -> Any:
    """decode(); MalformedData becomes a sentinel, anything else propagates (a bug)."""
    try:
        return decode(sig, data)
    except MalformedData:
        return _MALFORMED


# ------------------------------------------------------------------------ round trips


@settings(FAST, max_examples=300)
@given(typed_values)
def test_round_trip(tv: tuple[str, Any]) -> None:
    """decode(encode(v)) == v and encode(decode(b)) == b, in both byte orders, and the
    bytes are those of the reference serialiser."""
    sig, value = tv
    data = encode(sig, value)
    assert data == ref_serialise(sig, value, ">")
    assert decode(sig, data) == value
    assert encode(sig, decode(sig, data)) == data
    # The decoder takes any bytes-like object.
    assert decode(sig, bytearray(data)) == decode(sig, memoryview(data)) == value
    le = encode(sig, value, "little")
    assert le == ref_serialise(sig, value, "<")
    assert decode(sig, le, "little") == value
    assert encode(sig, decode(sig, le, "little"), "little") == le


@FAST
@given(st.sampled_from(OSTREE_SIGS).flatmap(lambda s: values_for(s).map(lambda v: (s, v))))
def test_round_trip_ostree_types(tv: tuple[str, Any]) -> None:
    sig, value = tv
    data = encode(sig, value)
    assert decode(sig, data) == value
    assert encode(sig, decode(sig, data)) == data


@pytest.mark.parametrize(
    ("sig", "value", "hexdata"),
    [
        ("()", (), "00"),
        ("s", "", "00"),
        ("as", [], ""),
        ("ms", None, ""),
        ("ms", "", "0000"),
        ("mu", 7, "00000007"),
        ("(yu)", (1, 2), "0100000000000002"),
        ("(uy)", (1, 2), "0000000102000000"),
        ("as", ["a", "bc"], "6100626300" + "0205"),
        ("a{sv}", [("k", Variant("y", 5))], "6b00" + "000000000000" + "05" + "0079" + "02" + "0c"),
        ("v", Variant("v", Variant("u", 1)), "00000001" + "0075" + "0076"),
        # Duplicate keys and insertion order survive (a{sv} is not sorted by OSTree).
        ("a{sv}", [("b", Variant("s", "")), ("a", Variant("s", "")), ("b", Variant("b", True))],
         None),
    ],
)
def test_small_known_encodings(sig: str, value: Any, hexdata: str | None) -> None:
    data = encode(sig, value)
    if hexdata is not None:
        assert data.hex() == hexdata
    assert decode(sig, data) == value


def test_framing_offset_width_boundaries() -> None:
    # body + n*z <= 0xFF picks z=1; one byte more needs z=2 (and likewise at 0xFFFF).
    for body, z in ((0xFF - 1, 1), (0xFF, 2), (0xFFFF - 2, 2), (0xFFFF - 1, 4)):
        value = ["x" * (body - 1)]  # one string of ``body`` bytes, its NUL included
        data = encode("as", value)
        assert len(data) == body + z, (body, z)
        assert decode("as", data) == value
        assert data == ref_serialise("as", value)


# ----------------------------------------------------------------------------- fuzzing

FUZZ_SIGS = OSTREE_SIGS + [
    "y", "b", "n", "q", "i", "u", "x", "t", "d", "s", "h", "v", "()", "a()", "ab", "ad", "at",
    "ax", "av", "aas", "aaay", "a{ss}", "a{yv}", "a{tv}", "aa{sv}", "ms", "mu", "mv", "may",
    "mas", "m(us)", "m()", "amy", "ams", "(uy)", "(yu)", "(sy)", "(ys)", "(sv)", "(vs)",
    "((sy)(ys))", "(bd)", "a(yu)", "a(uy)", "a(sv)", "a(ayay)", "a(a(say)s)", "(asv)",
    "(a{sv}v)", "(ayayay)", "a(tv)", "vv", "(vvv)", "aav",
]


@FUZZ
@given(st.sampled_from(FUZZ_SIGS), st.binary(max_size=300))
def test_fuzz_random_bytes(sig: str, data: bytes) -> None:
    decode_or_malformed(sig, data)


@FUZZ
@given(types, st.binary(max_size=200))
def test_fuzz_random_bytes_random_types(sig: str, data: bytes) -> None:
    decode_or_malformed(sig, data)


@FUZZ
@given(st.data())
def test_fuzz_mutated_encodings(data: st.DataObject) -> None:
    sig, value = data.draw(typed_values)
    mutated = data.draw(mutations(encode(sig, value)))
    decode_or_malformed(sig, mutated)
    # Also under a different (wrong) type of the same family.
    other = data.draw(st.sampled_from(FUZZ_SIGS))
    decode_or_malformed(other, mutated)


@FUZZ
@given(st.data())
def test_fuzz_mutated_variant_bytes(data: st.DataObject) -> None:
    """Mutated ``v`` values: the embedded type string is attacker-controlled too."""
    sig, value = data.draw(typed_values)
    raw = encode("v", Variant(sig, value))
    decode_or_malformed("v", data.draw(mutations(raw)))
    in_dict = encode("a{sv}", [("k", Variant(sig, value))])
    decode_or_malformed("a{sv}", data.draw(mutations(in_dict)))


@pytest.mark.parametrize("sig", FUZZ_SIGS)
def test_fuzz_exhaustive_short_inputs(sig: str) -> None:
    """Every input of up to 2 bytes, and 3-byte inputs from a small alphabet."""
    alphabet = [0, 1, 2, 3, 0x61, 0x76, 0x7F, 0xFF]
    for n in range(256):
        decode_or_malformed(sig, bytes([n]))
        for m in alphabet:
            decode_or_malformed(sig, bytes([n, m]))
    decode_or_malformed(sig, b"")
    for a in alphabet:
        for b in alphabet:
            for c in alphabet:
                decode_or_malformed(sig, bytes([a, b, c]))


@FUZZ
@given(st.data())
def test_decoder_accepts_only_normal_form(data: st.DataObject) -> None:
    """Whatever decodes must re-encode to the same bytes (normal form is unique).

    The decoder's contract is "parse normal-form data; raise MalformedData otherwise".
    """
    sig, value = data.draw(typed_values)
    mutated = data.draw(mutations(encode(sig, value)))
    v = decode_or_malformed(sig, mutated)
    if v is not _MALFORMED:
        again = encode(sig, v)
        if KNOWN_PADDING_BUG and _only_padding_differs(again, mutated):
            return
        assert again == mutated, (sig, mutated.hex())


#: decode() ignores the value of padding bytes (see the xfail test below). Property tests
#: tolerate exactly that difference so that they keep finding other normal-form bugs;
#: set to False once the decoder checks padding.
KNOWN_PADDING_BUG = False


def _only_padding_differs(normal: bytes, given: bytes) -> bool:
    """Same length, and every differing byte is a zero in the normal form."""
    return len(normal) == len(given) and all(
        a == 0 for a, b in zip(normal, given, strict=True) if a != b)


def test_nonzero_padding_is_rejected() -> None:
    # (yu): y, three padding bytes, then u. GLib's normal form has zero padding.
    data = bytes.fromhex("01ff000000000005")
    with pytest.raises(MalformedData):
        decode("(yu)", data)


def test_lying_array_count_fails_fast() -> None:
    """An a(say) whose last framing offset claims ~250k elements must fail at once."""
    body = b"\x01" * (1 << 20)
    for tail in (b"\0\0\0\0", b"\xff\xff\xff\xff", (16).to_bytes(4, "little")):
        data = body + tail
        t0 = time.monotonic()
        with pytest.raises(MalformedData):
            decode("a(say)", data)
        assert time.monotonic() - t0 < 1.0
    # A huge 8-byte offset in a small buffer.
    with pytest.raises(MalformedData):
        decode("a(say)", b"a\0" + b"\xff" * 8)


def test_consistent_huge_count_is_linear() -> None:
    """1 MiB of zeros is a valid aay of 262144 empty arrays: decoded in bounded time."""
    data = bytes(1 << 20)
    t0 = time.monotonic()
    v = decode("aay", data)
    assert time.monotonic() - t0 < 5.0
    assert len(v) == (1 << 20) // 4 and v[0] == b""


@pytest.mark.parametrize("sig", ["a(say)", "(uuuusa(ayay))", "a{sv}", "(a(say)a(sayay))"])
def test_lying_lengths_in_big_buffers_fail_fast(sig: str) -> None:
    junk = bytes(range(256)) * 4096  # 1 MiB
    t0 = time.monotonic()
    for tail in (b"", b"\xff" * 4, b"\0" * 4, b"\x10\0\0\0"):
        decode_or_malformed(sig, junk + tail)
    assert time.monotonic() - t0 < 2.0


def test_deeply_nested_variant_is_malformed() -> None:
    data = b"\x01\x00y" + b"\x00v" * 10_000  # v inside v 10,000 times around a byte
    with pytest.raises(MalformedData):
        decode("v", data)
    # A variant whose type string nests too deeply.
    deep_sig = "a" * 200 + "y"
    with pytest.raises(MalformedData):
        decode("v", b"\x00" + deep_sig.encode())
    with pytest.raises(MalformedData):
        decode("v", b"\x00" + b"(" * 200 + b")" * 200)


def test_moderately_nested_variant_decodes() -> None:
    data = b"\x01\x00y" + b"\x00v" * 20
    v = decode("v", data)
    for _ in range(20):
        assert isinstance(v, Variant) and v.signature == "v"
        v = v.value
    assert v == Variant("y", 1)
    assert encode("v", decode("v", data)) == data


@pytest.mark.parametrize("sig", ["", "z", "a", "(", "(u", "{sv}x", "a{vs}", "a{s}", "mmu", "uu"])
def test_bad_type_strings(sig: str) -> None:
    with pytest.raises(MalformedData):
        decode(sig, b"")


@pytest.mark.parametrize("data", [b"\x05", b"\x05\0", b"\x05\0zz", b"\x05\0\xff",
                                  b"\0" + "é".encode(), b"\x05\0(u"])
def test_bad_variant_type_strings(data: bytes) -> None:
    with pytest.raises(MalformedData):
        decode("v", data)


@pytest.mark.parametrize(("sig", "value"), [
    ("s", "a\0b"), ("s", "\udc80"), ("y", 256), ("u", -1), ("(uu)", (1,)), ("v", 5),
    ("v", Variant("zz", 1)), ("as", None), ("(s)", 5),
])
def test_encode_refuses_bad_values(sig: str, value: Any) -> None:
    with pytest.raises(MalformedData):
        encode(sig, value)


@pytest.mark.parametrize("value", [[256], -1, 3])
def test_encode_refuses_bad_byte_arrays(value: Any) -> None:
    with pytest.raises(MalformedData):
        encode("ay", value)


def test_encode_deep_variant_is_malformed() -> None:
    v = Variant("y", 1)
    for _ in range(10_000):
        v = Variant("v", v)
    with pytest.raises(MalformedData):
        encode("v", v)


def test_decode_nesting_limit_like_glib() -> None:
    data = b"\x01\x00y" + b"\x00v" * 100
    assert decode("v", data) is not None


# ------------------------------------------------------------------ object parsers fuzz

VEC_ROOT_TREE = "090f06a5926add2d4ff37e6b89e5f76be1939df235a3a398eb8f1144c2814072"
VEC_ROOT_META = "446a0ef11b7cc167f3b603e585c7eeeeb675faa412d5ec73f62988eb0b6c5488"
VEC_COMMIT = "f27a8d83da375ef3c4323137d4ce876bd9a0d069f0dfb0846692a1a859477cfc"
HELLO = "44f778e59f0a4748d6b0c90a47347212a231c4ad1e8f7ea5c5dffc7749153a6b"
RUN_SH = "89b350d278ff59ba4780bc377b8ebfee8ade6b55c99fab1ec84e133bc6ea52c5"
LINK = "f66efa496a72379413c44593de510dc344beb045294f1a543da87b2b6118db35"
A_TXT = "e000a47a36168c51fe11770372f3f0f4edacb46eb349d9be2aae027ea0a045f8"
SUB_TREE = "d2b6eec9065c50e58a96991374bfd16d713ee90acf5acf9822f966fed0d6968b"
TS = 1700000000


def _sample_objects() -> dict[str, bytes]:
    hdr = FileHeader(0, 0, 0o100644, "", ((b"user.aa", b"1"), (b"user.zz", b"2")))
    return {
        "commit": Commit(VEC_ROOT_TREE, VEC_ROOT_META, "vector", "body", TS, VEC_COMMIT,
                         (("version", Variant("s", "1.0")),
                          ("ostree.ref-binding", Variant("as", ["a", "b"]))),
                         (("rel", HELLO),)).to_bytes(),
        "dirtree": DirTree.build({"hello.txt": HELLO, "link": LINK},
                                 {"sub": (SUB_TREE, VEC_ROOT_META)}).to_bytes(),
        "dirtree-checksums": DirTree.build({"a": HELLO}, {"b": (SUB_TREE, HELLO)}).to_bytes(),
        "dirmeta": DirMeta(0, 0, 0o40755, ((b"user.d", b"dirval"),)).to_bytes(),
        "filez": hdr.archive_header(6) + b"\xcb\x48\xcd\xc9\xc9\xe7\x02\x00",
        "filez-link": FileHeader(0, 0, 0o120777, "hello.txt").archive_header(0),
        "header": hdr.checksum_header(),
        "ostreemeta": hdr.bareuser_meta(),
        "summary": Summary((SummaryRef("main", VEC_COMMIT, 158,
                                       (("ostree.commit.timestamp", Variant("t", TS)),)),),
                           (("ostree.summary.mode", Variant("s", "archive-z2")),)).to_bytes(),
        "metadata": encode_metadata([("foo", Variant("s", "bar")),
                                     ("n", Variant("aay", [b"x", b""]))]),
    }


SAMPLES = _sample_objects()
PARSERS = {
    "commit": Commit.from_bytes,
    "dirtree": DirTree.from_bytes,
    "dirtree-checksums": dirtree_checksums,
    "dirmeta": DirMeta.from_bytes,
    "filez": FileHeader.parse_archive,
    "header": FileHeader.parse_checksum_header,
    "ostreemeta": FileHeader.from_bareuser_meta,
    "summary": Summary.from_bytes,
    "metadata": decode_metadata,
}


def _parse_or_malformed(kind: str, data: bytes) -> Any:
    try:
        return PARSERS[kind](data)
    except MalformedData:
        return _MALFORMED


def test_samples_parse() -> None:
    for kind in PARSERS:
        assert _parse_or_malformed(kind, SAMPLES[kind]) is not _MALFORMED, kind
    assert _parse_or_malformed("filez", SAMPLES["filez-link"]) is not _MALFORMED


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.sampled_from(sorted(SAMPLES)), st.data())
def test_fuzz_object_parsers(kind: str, sample: str, data: st.DataObject) -> None:
    """Each parser fed every sample kind, mutated: only MalformedData may come out."""
    blob = data.draw(mutations(SAMPLES[sample]))
    _parse_or_malformed(kind, blob)


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), st.binary(max_size=400))
def test_fuzz_object_parsers_random(kind: str, blob: bytes) -> None:
    _parse_or_malformed(kind, blob)


@pytest.mark.parametrize("kind", sorted(PARSERS))
def test_object_parsers_truncations(kind: str) -> None:
    base = SAMPLES[kind]
    for cut in range(len(base)):
        _parse_or_malformed(kind, base[:cut])
        _parse_or_malformed(kind, base[cut:])


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "/"])
def test_dirtree_refuses_escaping_names(name: str) -> None:
    raw = encode("(a(say)a(sayay))", ([(name, bytes(32))], []))
    with pytest.raises(MalformedData):
        DirTree.from_bytes(raw)
    raw = encode("(a(say)a(sayay))", ([], [(name, bytes(32), bytes(32))]))
    with pytest.raises(MalformedData):
        DirTree.from_bytes(raw)


def test_dirtree_refuses_unsorted_duplicate_and_short_checksums() -> None:
    c = bytes(32)
    for files, dirs in (
        ([("b", c), ("a", c)], []),
        ([("a", c), ("a", c)], []),
        ([("a", c)], [("a", c, c)]),
        ([("a", bytes(31))], []),
        ([], [("d", c, b"")]),
    ):
        with pytest.raises(MalformedData):
            DirTree.from_bytes(encode("(a(say)a(sayay))", (files, dirs)))


@pytest.mark.parametrize("header,size", [
    (FileHeader(0, 0, 0o100644), 0),
    (FileHeader(1000, 1000, 0o100755), 59048),
    (FileHeader(0xFFFFFFFF, 7, 0o104755, rdev=3), (1 << 40) + 5),
    (FileHeader(0, 0, 0o120777, "target"), 0),
    (FileHeader(0, 0, 0o100600, "", ((b"user.a", b"1"),)), 12),
])
def test_archive_header_shortcut_agrees_with_the_codec(header: FileHeader, size: int) -> None:
    """parse_archive reads a plain file's header without the generic codec: both ways
    give the same answer, and a header the shortcut takes but the rules refuse (a
    symlink without a target) is still refused."""
    from ostreefs.store.objects import ARCHIVE_HEADER_SIG, _decode

    data = header.archive_header(size) + b"payload"
    got, got_size, offset = FileHeader.parse_archive(data)
    body = data[8:offset]
    want_size, uid, gid, mode, rdev, target, xattrs = _decode("x", ARCHIVE_HEADER_SIG, body)
    assert (got, got_size) == (header, size) and data[offset:] == b"payload"
    assert (got.uid, got.gid, got.mode, got.rdev, got.symlink_target, got_size) == (
        uid, gid, mode, rdev, target, want_size)
    if not target and not xattrs:  # the shortcut's shape
        assert len(body) == 26
        link = bytearray(data)
        link[24:28] = (0o120777).to_bytes(4, "big")
        with pytest.raises(MalformedData):
            FileHeader.parse_archive(bytes(link))


def test_archive_header_lying_length_fails_fast() -> None:
    for n in (0xFFFFFFFF, 0x7FFFFFFF, 1 << 24):
        with pytest.raises(MalformedData):
            FileHeader.parse_archive(n.to_bytes(4, "big") + bytes(4) + b"\0" * 64)
    with pytest.raises(MalformedData):
        FileHeader.parse_archive(b"\0\0\0")


# ------------------------------------------------------------------------ known vectors


def test_vector1_commit_bytes_and_checksum() -> None:
    c = Commit(VEC_ROOT_TREE, VEC_ROOT_META, "vector", "", TS)
    data = c.to_bytes()
    expected = (b"vector\0" + b"\0" + TS.to_bytes(8, "big") + bytes.fromhex(VEC_ROOT_TREE)
                + bytes.fromhex(VEC_ROOT_META) + bytes.fromhex("300807000000"))
    assert len(data) == 86
    assert data == expected
    assert data[8:16] == bytes.fromhex("000000006553f100")
    assert c.checksum() == VEC_COMMIT == hashlib.sha256(expected).hexdigest()
    assert Commit.from_bytes(data) == c
    assert c.content_checksum == \
        "1213582923e327b2f86a9e2f8e0dca28441427d1fc5a89e77cad50cb9fa0fc68"


def test_vector1_commits_with_metadata() -> None:
    md = (("zeta", Variant("s", "1")), ("alpha", Variant("s", "2")),
          ("ostree.ref-binding", Variant("as", ["vec3"])))
    c = Commit(VEC_ROOT_TREE, VEC_ROOT_META, "vector", "", TS, None, md)
    assert c.checksum() == "9c92aa5df416a595e703091ce49e1af421fc853a47c79868c6fb509c05b6ac85"
    assert Commit.from_bytes(c.to_bytes()) == c
    md = (("ostree.ref-binding", Variant("as", ["vec"])),
          ("ostree.collection-binding", Variant("s", "org.example.Test")))
    c = Commit(VEC_ROOT_TREE, VEC_ROOT_META, "vector", "", TS, None, md)
    assert c.checksum() == "2f0ad71a8d9915970ecbc9ece728d5ba238be1fb925f75f226928741ecd352ea"


def test_vector1_dirtrees() -> None:
    sub = DirTree.build({"a.txt": A_TXT}, {})
    data = sub.to_bytes()
    assert data == b"a.txt\0" + bytes.fromhex(A_TXT) + bytes.fromhex("062728")
    assert len(data) == 41 and sub.checksum() == SUB_TREE
    assert DirTree.from_bytes(data) == sub
    empty = DirTree.build({}, {})
    assert empty.to_bytes() == b"\0" and empty.checksum() == EMPTY_DIRTREE
    root = DirTree.build({"run.sh": RUN_SH, "link": LINK, "hello.txt": HELLO},
                         {"sub": (SUB_TREE, VEC_ROOT_META),
                          "empty": (EMPTY_DIRTREE, VEC_ROOT_META)})
    assert len(root.to_bytes()) == 270
    assert root.checksum() == VEC_ROOT_TREE
    assert [n for n, _ in root.files] == ["hello.txt", "link", "run.sh"]
    assert DirTree.from_bytes(root.to_bytes()) == root


def test_dirmeta_vectors() -> None:
    for (uid, gid, mode, xattrs), hexdata, csum in (
        ((0, 0, 0o40755, ()), "0000000000000000000041ed", VEC_ROOT_META),
        ((1000, 1000, 0o40700, ()), "000003e8000003e8000041c0",
         "1bafaf47d4bd514f4673d99893ae641dd776f966837ffee354c729fdb74a562e"),
        ((0, 0, 0o40755, ((b"user.d", b"dirval"),)),
         "00000000" "00000000" "000041ed" "757365722e6400" "6469727661" "6c" "07" "0e",
         "1c0a6c8417b16f54fc0e904fabc57e07cb10922a998942c9574585b1dd26c9ab"),
    ):
        m = DirMeta(uid, gid, mode, xattrs)
        assert m.to_bytes().hex() == hexdata
        assert m.checksum() == csum
        assert DirMeta.from_bytes(m.to_bytes()) == m


def _content_checksum(h: FileHeader, payload: bytes = b"") -> str:
    return hashlib.sha256(h.checksum_header() + payload).hexdigest()


def test_file_header_vectors() -> None:
    hello = FileHeader(0, 0, 0o100644)
    assert hello.checksum_header().hex() == (
        "00000012" "00000000" "00000000" "00000000" "000081a4" "00000000" "00" "11")
    assert _content_checksum(hello, b"hello\n") == HELLO
    assert FileHeader.parse_checksum_header(hello.checksum_header() + b"hello\n") == (hello, 26)
    link = FileHeader(0, 0, 0o120777, "hello.txt")
    assert link.checksum_header().hex() == (
        "0000001b" "00000000" "00000000" "00000000" "0000a1ff" "00000000"
        + b"hello.txt\0".hex() + "1a")
    assert _content_checksum(link) == LINK
    assert _content_checksum(FileHeader(0, 0, 0o100755), b"#!/bin/sh\necho hi\n") == RUN_SH
    assert _content_checksum(hello, b"a\n") == A_TXT
    # Vector 2 (owners and modes matter) and its bare-user-only twin.
    assert _content_checksum(FileHeader(1000, 1000, 0o100600), b"secret\n") == \
        "dff8eb5c015cc2c2c356e8f8053133c1d6ffc9fb7f32db8e49f31be1868782f8"
    assert _content_checksum(FileHeader(1000, 1000, 0o100644)) == \
        "e097767f9f4e3e078b1be7a1c9ead4f4a0b715acb00bc3ed7220e7d4f78b7dc9"
    assert _content_checksum(FileHeader(0, 0, 0o100600), b"secret\n") == \
        "4c76b757a7a2aeb23fd2e832ed2607cb94b101a43d53c05561a85fb35c170352"
    assert _content_checksum(FileHeader(0, 0, 0o100644)) == \
        "cc700d46f407c6c5ab2d5dde474366a928b7398277e61162e7f8ec06f469f07e"
    # Vector 3: xattrs sorted by name, the empty value dropped.
    x = normalize_xattrs([(b"user.zz", b"2"), (b"user.aa", b"1"), (b"user.empty", b"")])
    assert x == ((b"user.aa", b"1"), (b"user.zz", b"2"))
    assert _content_checksum(FileHeader(0, 0, 0o100644, "", x), b"x\n") == \
        "50e5018883167d0f7d1b7c6a7138ec736a5574ec03316e80778ebd0b360aaa9a"


def test_vector2_and_vector3_commits() -> None:
    priv = "dff8eb5c015cc2c2c356e8f8053133c1d6ffc9fb7f32db8e49f31be1868782f8"
    empty = "e097767f9f4e3e078b1be7a1c9ead4f4a0b715acb00bc3ed7220e7d4f78b7dc9"
    tree = DirTree.build({"priv": priv, "empty": empty}, {})
    assert tree.checksum() == "1350392df2817947d162c195affe996e31a1d48d3719b9e7c11871288d61dc7c"
    meta = DirMeta(1000, 1000, 0o40700).checksum()
    c = Commit(tree.checksum(), meta, "vector2", "", TS)
    assert c.checksum() == "ad5bd5b1dcb56cff041be79bb2c13d25ab50093f2446c67874b5361c6f6c29ce"
    # bare-user-only: uid/gid 0, modes masked with 0755.
    tree = DirTree.build({
        "priv": "4c76b757a7a2aeb23fd2e832ed2607cb94b101a43d53c05561a85fb35c170352",
        "empty": "cc700d46f407c6c5ab2d5dde474366a928b7398277e61162e7f8ec06f469f07e"}, {})
    assert tree.checksum() == "b83e4a273ea1a4e8ba95daaa53e4ca72821d9724b10f339c32ff497437b93387"
    meta = DirMeta(0, 0, 0o40700).checksum()
    assert meta == "84641b0a39d8c873690da8f32aea21cf5d6fff354f85e045f6f5ecdc8e7758d0"
    c = Commit(tree.checksum(), meta, "vector2", "", TS)
    assert c.checksum() == "fee90e4a0fbdd4d137e8baea929546c8ae3b8d8b3d0d708e7f037ca9afc39a7e"
    # Vector 3 (xattrs), bare.
    tree = DirTree.build(
        {"f": "50e5018883167d0f7d1b7c6a7138ec736a5574ec03316e80778ebd0b360aaa9a"}, {})
    meta = DirMeta(0, 0, 0o40755, ((b"user.d", b"dirval"),)).checksum()
    c = Commit(tree.checksum(), meta, "x", "", TS)
    assert c.checksum() == "64f7d1edd1c55338e4ef2bac56ea741ed246ecc37672984c0fe6345766691ef0"


def test_archive_filez_vectors() -> None:
    hello = FileHeader(0, 0, 0o100644)
    header = hello.archive_header(6)
    assert header.hex() == ("0000001a" "00000000" "0000000000000006" "00000000" "00000000"
                            "000081a4" "00000000" "00" "19")
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    filez = header + c.compress(b"hello\n") + c.flush()
    assert filez[len(header):].hex() == "cb48cdc9c9e70200"
    assert len(filez) == 42
    parsed, size, off = FileHeader.parse_archive(filez)
    assert (parsed, size, off) == (hello, 6, 34)
    assert zlib.decompress(filez[off:], -15) == b"hello\n"
    # Vector 2's empty file: 36 bytes with the empty raw-deflate stream.
    e = FileHeader(1000, 1000, 0o100644)
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    filez = e.archive_header(0) + c.compress(b"") + c.flush()
    assert filez.hex() == ("0000001a" "00000000" "0000000000000000" "000003e8" "000003e8"
                           "000081a4" "00000000" "00" "19" "0300")
    # Symlinks: size 0 whatever is passed, no payload.
    link = FileHeader(0, 0, 0o120777, "hello.txt")
    filez = link.archive_header(123)
    assert len(filez) == 43  # the 43-byte .filez of vector 1's link
    assert FileHeader.parse_archive(filez) == (link, 0, 43)


def test_archive_refuses_bad_modes() -> None:
    for h in (FileHeader(0, 0, 0o40755), FileHeader(0, 0, 0o120777, ""),
              FileHeader(0, 0, 0o100644, "target"), FileHeader(0, 0, 0o20644)):
        with pytest.raises(MalformedData):
            FileHeader.parse_archive(h.archive_header(0))
        with pytest.raises(MalformedData):
            FileHeader.parse_checksum_header(h.checksum_header())


def test_bareuser_ostreemeta_vectors() -> None:
    cases = [
        (FileHeader(0, 0, 0o100644), "0000000000000000000081a4"),
        (FileHeader(0, 0, 0o120777, "hello.txt"), "00000000" "00000000" "0000a1ff"),
        (FileHeader(1000, 1000, 0o100600), "000003e8000003e800008180"),
        (FileHeader(0, 0, 0o100644, "", ((b"user.aa", b"1"), (b"user.zz", b"2"))),
         "0000000000000000000081a4" "757365722e616100" "31" "08" "757365722e7a7a00" "32" "08"
         "0a" "14"),
    ]
    for h, hexdata in cases:
        assert h.bareuser_meta().hex() == hexdata
        back = FileHeader.from_bareuser_meta(h.bareuser_meta(), h.symlink_target)
        assert back == h


def test_detached_metadata_vector() -> None:
    data = encode_metadata([("foo", Variant("s", "bar"))])
    assert data.hex() == "666f6f00" "00000000" "62617200" "00" "73" "04" "0f"
    assert decode_metadata(data) == (("foo", Variant("s", "bar")),)


@pytest.mark.skipif(sys.byteorder != "little", reason="the vector was observed on x86-64")
def test_summary_ref_size_in_host_order() -> None:
    ref = SummaryRef("main", VEC_COMMIT, 158, (("ostree.commit.timestamp", Variant("t", TS)),))
    s = Summary((ref,), (("ostree.summary.mode", Variant("s", "archive-z2")),))
    data = s.to_bytes()
    # ("main\0", pad to 8, then the (taya{sv}) whose t comes first.
    assert data[:8] == b"main\0\0\0\0"
    assert data[8:16] == bytes.fromhex("9e00000000000000")
    # The per-ref timestamp stays big-endian inside its variant.
    assert TS.to_bytes(8, "big") + b"\0t" in data
    assert Summary.from_bytes(data) == s


def test_summary_refs_sorted_by_name_bytes() -> None:
    refs = tuple(SummaryRef(n, VEC_COMMIT, 86) for n in ("b", "a/x", "a", "B"))
    s = Summary.from_bytes(Summary(refs).to_bytes())
    assert [r.name for r in s.refs] == ["B", "a", "a/x", "b"]


# ------------------------------------------------------------------ GLib cross-check
# The system python may have PyGObject and GLib (not the venv). When it does, a helper
# process builds each value with GLib's own constructors and returns GLib's bytes; it
# also says whether GLib considers some bytes to be in normal form.

_GLIB_HELPER = r'''
import json, sys
import gi
gi.require_version("GLib", "2.0")
from gi.repository import GLib

def split(sig):
    c = sig[0]
    if c in "am":
        h, r = split(sig[1:]); return c + h, r
    if c in "({":
        close = ")" if c == "(" else "}"
        out, r = c, sig[1:]
        while r[0] != close:
            h, r = split(r); out += h
        return out + close, r[1:]
    return c, sig[1:]

def members(sig):
    inner, out = sig[1:-1], []
    while inner:
        h, inner = split(inner); out.append(h)
    return out

SIMPLE = {"y": GLib.Variant.new_byte, "n": GLib.Variant.new_int16, "q": GLib.Variant.new_uint16,
          "i": GLib.Variant.new_int32, "u": GLib.Variant.new_uint32, "x": GLib.Variant.new_int64,
          "t": GLib.Variant.new_uint64, "h": GLib.Variant.new_handle, "d": GLib.Variant.new_double,
          "b": GLib.Variant.new_boolean, "s": GLib.Variant.new_string}

def build(sig, v):
    c = sig[0]
    if c in SIMPLE:
        return SIMPLE[c](v)
    if c == "v":
        return GLib.Variant.new_variant(build(v[0], v[1]))
    if c == "m":
        return GLib.Variant.new_maybe(GLib.VariantType(sig[1:]),
                                      None if v is None else build(sig[1:], v))
    if c == "a":
        if sig == "ay":
            return GLib.Variant.new_from_bytes(GLib.VariantType("ay"),
                                               GLib.Bytes.new(bytes.fromhex(v)), True)
        return GLib.Variant.new_array(GLib.VariantType(sig[1:]), [build(sig[1:], x) for x in v])
    ms = members(sig)
    kids = [build(m, x) for m, x in zip(ms, v)]
    if c == "{":
        return GLib.Variant.new_dict_entry(*kids)
    return GLib.Variant.new_tuple(*kids)

def rebuild(v):
    """A fresh value built with GLib's constructors from what GLib reads in ``v``."""
    t = v.get_type_string()
    c = t[0]
    kids = [rebuild(v.get_child_value(i)) for i in range(v.n_children())] \
        if c in "am({" else []
    if c == "v":
        return GLib.Variant.new_variant(rebuild(v.get_variant()))
    if c == "m":
        return GLib.Variant.new_maybe(GLib.VariantType(t[1:]), kids[0] if kids else None)
    if c == "a":
        return GLib.Variant.new_array(GLib.VariantType(t[1:]), kids)
    if c == "{":
        return GLib.Variant.new_dict_entry(*kids)
    if c == "(":
        return GLib.Variant.new_tuple(*kids)
    return GLib.Variant.new_from_bytes(v.get_type(), v.get_data_as_bytes(), True)

for line in sys.stdin:
    req = json.loads(line)
    if req["op"] == "build":
        gv = build(req["sig"], req["value"])
        assert gv.get_type_string() == req["sig"], (gv.get_type_string(), req["sig"])
        out = {"data": bytes(gv.get_data_as_bytes().get_data()).hex()}
    else:
        data = bytes.fromhex(req["data"])
        gv = GLib.Variant.new_from_bytes(GLib.VariantType(req["sig"]), GLib.Bytes.new(data),
                                         False)
        normal = gv.is_normal_form()
        if normal:
            # GLib calls some non-canonical bytes normal (a variable-size tuple in zero
            # bytes, e.g. (ayay) from b""); rebuilding the value gives the canonical bytes.
            normal = bytes(rebuild(gv).get_data_as_bytes().get_data()) == data
        out = {"normal": normal}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
'''


def _system_python_has_glib() -> bool:
    py = "/usr/bin/python3"
    if not os.access(py, os.X_OK) or sys.byteorder != "little":
        return False
    try:
        r = subprocess.run([py, "-c", "import gi; gi.require_version('GLib', '2.0'); "
                            "from gi.repository import GLib"],
                           capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


class _GLib:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(["/usr/bin/python3", "-c", _GLIB_HELPER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={"PATH": os.environ.get("PATH", "/usr/bin")})

    def ask(self, req: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "GLib helper died"
        return json.loads(line)  # type: ignore[no-any-return]

    def build(self, sig: str, value: Any) -> bytes:
        return bytes.fromhex(self.ask({"op": "build", "sig": sig,
                                       "value": _to_json(value)})["data"])

    def is_normal(self, sig: str, data: bytes) -> bool:
        return bool(self.ask({"op": "check", "sig": sig, "data": data.hex()})["normal"])

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


def _to_json(v: Any) -> Any:
    if isinstance(v, Variant):
        return [v.signature, _to_json(v.value)]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, list | tuple):
        return [_to_json(x) for x in v]
    return v


@pytest.fixture(scope="module")
def glib() -> Any:
    if not _system_python_has_glib():
        pytest.skip("the system python has no GLib (python3-gi) to cross-check against")
    helper = _GLib()
    yield helper
    helper.close()


def _json_safe(value: Any) -> bool:
    """JSON carries floats as decimal text; infinities are fine, nothing else is lost."""
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, Variant):
        return _json_safe(value.value)
    if isinstance(value, list | tuple):
        return all(_json_safe(x) for x in value)
    return True


@settings(FAST, max_examples=200)
@given(typed_values)
def test_glib_builds_the_same_bytes(glib: _GLib, tv: tuple[str, Any]) -> None:
    sig, value = tv
    assume(_json_safe(value))
    assert encode(sig, value, "little") == glib.build(sig, value)


@settings(FAST, max_examples=300)
@given(st.data())
def test_glib_agrees_on_normal_form(glib: _GLib, data: st.DataObject) -> None:
    """Bytes we decode are normal form for GLib; bytes GLib calls normal, we decode."""
    sig, value = data.draw(typed_values)
    blob = data.draw(mutations(encode(sig, value, "little")))
    try:
        ours = decode(sig, blob, "little")
    except MalformedData:
        ours = _MALFORMED
    normal = glib.is_normal(sig, blob)
    if normal:
        assert ours is not _MALFORMED, (sig, blob.hex())
        assert encode(sig, ours, "little") == blob
    elif ours is not _MALFORMED:
        again = encode(sig, ours, "little")
        assert KNOWN_PADDING_BUG and _only_padding_differs(again, blob), \
            (sig, blob.hex(), ours)


def test_glib_known_vector(glib: _GLib) -> None:
    # Sanity of the helper itself: the dirmeta of vector 1 in little-endian.
    assert glib.build("(uuua(ayay))", (0, 0, 0o40755, [])) == \
        encode("(uuua(ayay))", (0, 0, 0o40755, []), "little")



def _checksums_of(t: DirTree) -> tuple[list[bytes], list[bytes]]:
    return ([bytes.fromhex(c) for _n, c in t.files],
            [bytes.fromhex(c) for _n, c, _m in t.dirs])


def test_dirtree_checksums_match_the_full_parse() -> None:
    t = DirTree.from_bytes(SAMPLES["dirtree"])
    assert dirtree_checksums(SAMPLES["dirtree"]) == _checksums_of(t)
    assert dirtree_checksums(SAMPLES["dirtree"])[1] == [bytes.fromhex(SUB_TREE)]


@pytest.mark.parametrize("name_len", [1, 150, 190, 200, 300])
@pytest.mark.parametrize("entries", [0, 1, 9, 400, 1700])
def test_dirtree_checksums_lean_and_framed_paths_agree(name_len: int, entries: int) -> None:
    """The count's shortcut (elements under 256 bytes, arrays under 64 KiB) and the
    general framing give the same checksums, and both are taken where they should be."""
    files = {f"{i:06d}".ljust(name_len, "f"): hashlib.sha256(b"f%d" % i).hexdigest()
             for i in range(entries)}
    dirs = {f"{i:06d}".ljust(name_len, "d"): (hashlib.sha256(b"t%d" % i).hexdigest(),
                                              hashlib.sha256(b"m%d" % i).hexdigest())
            for i in range(entries // 3)}
    t = DirTree.build(files, dirs)
    blob = t.to_bytes()
    assert dirtree_checksums(blob) == _checksums_of(t)
    files8 = [c[:8] for c in _checksums_of(t)[0]]
    assert dirtree_checksums(blob, file_width=8) == (files8, _checksums_of(t)[1])
    lean = _lean_checksums(blob)
    files_size = entries * (name_len + 36)  # (an element and its offset)
    if name_len <= 150 and files_size < 60_000:  # a directory as /usr has them
        assert lean == _checksums_of(t)
    if (name_len == 300 and entries) or files_size > 70_000:
        assert lean is None  # an element over 255 bytes, or an array over 64 KiB


@FUZZ
@given(st.sampled_from(["dirtree", "dirtree-checksums"]), st.data())
def test_fuzz_dirtree_checksums_agree_with_dirtree(sample: str, data: st.DataObject) -> None:
    """Whatever the full parser accepts, the checksum-only pass reads the same way."""
    blob = data.draw(mutations(SAMPLES[sample]))
    full = _parse_or_malformed("dirtree", blob)
    if full is not _MALFORMED:
        assert dirtree_checksums(blob) == _checksums_of(full)


# Mostly valid entries (an invalid one only tests a refusal), some past 255 bytes.
_dt_valid_name = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0/"),
                         min_size=1, max_size=8)
_dt_names = st.one_of(
    _dt_valid_name, _dt_valid_name, _dt_valid_name,
    st.text(alphabet="abc", min_size=180, max_size=300),
    st.sampled_from(["", ".", "..", "a/b", "\u00e9t\u00e9"]),
)
_dt_32 = st.binary(min_size=32, max_size=32)
_dt_csum = st.one_of(_dt_32, _dt_32, _dt_32, _dt_32, _dt_32, st.binary(max_size=40))


def _generic_dirtree(blob: bytes) -> Any:
    """DirTree.from_bytes without its fast path: the generic codec and checks."""
    import ostreefs.store.objects as objects

    fast = objects._fast_dirtree_raw
    objects._fast_dirtree_raw = lambda _data: None  # type: ignore[assignment]
    try:
        return _parse_or_malformed("dirtree", blob)
    finally:
        objects._fast_dirtree_raw = fast


@FUZZ
@given(st.lists(st.tuples(_dt_names, _dt_csum), max_size=10),
       st.lists(st.tuples(_dt_names, _dt_csum, _dt_csum), max_size=6),
       st.booleans(), st.data())
def test_dirtree_fast_path_agrees_with_the_codec(
        files: list[tuple[str, bytes]], dirs: list[tuple[str, bytes, bytes]], tidy: bool,
        data: st.DataObject) -> None:
    """The dirtree fast path (framing read by hand, names checked in bulk) gives what
    the generic codec gives, or refuses what it refuses: on valid trees (sorted,
    unique), on anything-goes ones, with long names, and mutated."""
    if tidy:
        files = sorted({n.encode(): (n, c) for n, c in files}.values(),
                       key=lambda e: e[0].encode())
        dirs = sorted({n.encode(): (n, t, m) for n, t, m in dirs
                       if n not in {f for f, _c in files}}.values(),
                      key=lambda e: e[0].encode())
    blob = encode("(a(say)a(sayay))", (files, dirs))
    if data.draw(st.booleans()):
        blob = data.draw(mutations(blob))
    assert _parse_or_malformed("dirtree", blob) == _generic_dirtree(blob)


def test_dirtree_fast_path_reads_big_and_long_named_trees() -> None:
    """Arrays past 255 bytes (two-byte offset tables) and elements past 255 bytes (a
    name of 300 bytes) read the same through the fast path and the codec."""
    files = [(f"f{i:03d}", bytes([i % 256]) * 32) for i in range(300)] + [("g" * 300, bytes(32))]
    dirs = [(f"d{i:03d}", bytes([i]) * 32, bytes([255 - i]) * 32) for i in range(40)]
    dirs.append(("e" * 250, bytes(range(32)), bytes(range(32, 64))))
    blob = encode("(a(say)a(sayay))", (files, dirs))
    t = DirTree.from_bytes(blob)
    assert t == _generic_dirtree(blob)
    assert t.dirs[-1] == ("e" * 250, bytes(range(32)).hex(), bytes(range(32, 64)).hex())
    assert t.files[-1] == ("g" * 300, bytes(32).hex()) and len(t.files) == 301
