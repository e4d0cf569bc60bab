"""GVariant serialisation in normal form, as OSTree stores its objects.

OSTree hashes the exact bytes of its metadata objects, so this codec must produce the
one normal-form serialisation GLib produces, and must refuse (never crash, hang or
allocate without bound on) bytes it cannot parse. Every structural fact is checked
against the buffer's length before it is used, so a lying length fails fast.

Values map to Python as follows: integer types to ``int``, ``b`` to ``bool``, ``d`` to
``float``, ``s``/``o``/``g`` to ``str``, ``ay`` to ``bytes``, other arrays to ``list``,
tuples and dict entries to ``tuple``, ``v`` to :class:`Variant`, and a maybe to ``None``
or its value. Dictionaries (``a{..}``) stay lists of pairs: OSTree does not sort
``a{sv}``, and duplicates must survive a round trip.

Integers are written in one byte order for the whole value (OSTree uses big-endian);
framing offsets are always little-endian, as GVariant defines them.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, NamedTuple

from ostreefs.errors import MalformedData

__all__ = ["Variant", "encode", "decode", "GVariantType", "parse_type"]

#: GLib's limit on container nesting (G_VARIANT_MAX_RECURSION_DEPTH).
MAX_DEPTH = 128

_INT_FORMATS = {"y": "B", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "h": "i"}
_FIXED_BASIC = {"y": 1, "b": 1, "n": 2, "q": 2, "i": 4, "u": 4, "h": 4, "x": 8, "t": 8, "d": 8}
_STRINGISH = {"s", "o", "g"}


class Variant(NamedTuple):
    """A boxed value with its own type string (GVariant ``v``)."""

    signature: str
    value: Any


class GVariantType(NamedTuple):
    """A parsed type: kind, children, alignment and fixed size (None if variable)."""

    signature: str
    kind: str  # a basic type char, or "a", "m", "(", "{", "v"
    children: tuple[GVariantType, ...]
    align: int
    fixed_size: int | None


def _err(what: str) -> MalformedData:
    return MalformedData("GVariant", what)


@lru_cache(maxsize=256)
def parse_type(signature: str) -> GVariantType:
    """Parse one complete type string; raise MalformedData if it is not one."""
    node, rest = _parse_one(signature, 0)
    if rest:
        raise _err(f"trailing characters in type string {signature!r}")
    return node


def _parse_one(sig: str, depth: int) -> tuple[GVariantType, str]:
    if depth > MAX_DEPTH:
        raise _err("type nested too deeply")
    if not sig:
        raise _err("incomplete type string")
    c = sig[0]
    if c in _FIXED_BASIC:
        size = _FIXED_BASIC[c]
        return GVariantType(c, c, (), size, size), sig[1:]
    if c in _STRINGISH:
        return GVariantType(c, c, (), 1, None), sig[1:]
    if c == "v":
        return GVariantType("v", "v", (), 8, None), sig[1:]
    if c in "am":
        child, rest = _parse_one(sig[1:], depth + 1)
        if c == "m" and child.kind == "m":
            raise _err("nested maybe types are not supported")
        text = sig[: len(sig) - len(rest)]
        return GVariantType(text, c, (child,), child.align, None), rest
    if c in "({":
        close = ")" if c == "(" else "}"
        rest = sig[1:]
        children: list[GVariantType] = []
        while True:
            if not rest:
                raise _err(f"unterminated container in type {sig!r}")
            if rest[0] == close:
                rest = rest[1:]
                break
            child, rest = _parse_one(rest, depth + 1)
            children.append(child)
        if c == "{" and (len(children) != 2 or children[0].fixed_size is None and
                         children[0].kind not in _STRINGISH):
            raise _err("dict entry needs a basic key and one value")
        text = sig[: len(sig) - len(rest)]
        align = max((ch.align for ch in children), default=1)
        fixed: int | None = 0
        for ch in children:
            if ch.fixed_size is None:
                fixed = None
                break
            fixed = _align(fixed or 0, ch.align) + ch.fixed_size
        if fixed is not None:
            fixed = _align(fixed, align) if children else 1
        return GVariantType(text, c, tuple(children), align, fixed), rest
    raise _err(f"unknown type character {c!r}")


def _align(n: int, a: int) -> int:
    return (n + a - 1) & ~(a - 1)


def _offset_size(total: int) -> int:
    if total <= 0xFF:
        return 1
    if total <= 0xFFFF:
        return 2
    if total <= 0xFFFFFFFF:
        return 4
    return 8


def _frame_size(body_len: int, n_offsets: int) -> int:
    """Width of each framing offset for a container of body_len plus n offsets."""
    if n_offsets == 0:
        return 0
    for z, limit in ((1, 0xFF), (2, 0xFFFF), (4, 0xFFFFFFFF)):
        if body_len + n_offsets * z <= limit:
            return z
    return 8


# ---------------------------------------------------------------------------- encoding


def encode(signature: str, value: Any, byteorder: str = "big") -> bytes:
    """Serialise ``value`` as ``signature`` in normal form."""
    t = parse_type(signature)
    out = bytearray()
    _enc(t, value, out, ">" if byteorder == "big" else "<", 0)
    return bytes(out)


def _pad(out: bytearray, align: int) -> None:
    rem = len(out) % align
    if rem:
        out.extend(b"\0" * (align - rem))


def _enc(t: GVariantType, value: Any, out: bytearray, bo: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _err("value nested too deeply")
    k = t.kind
    try:
        if k in _INT_FORMATS:
            out.extend(struct.pack(bo + _INT_FORMATS[k], value))
        elif k == "b":
            out.append(1 if value else 0)
        elif k == "d":
            out.extend(struct.pack(bo + "d", value))
        elif k in _STRINGISH:
            data = value.encode("utf-8") if isinstance(value, str) else bytes(value)
            if b"\0" in data:
                raise _err("string contains NUL")
            out.extend(data)
            out.append(0)
        elif k == "v":
            if not isinstance(value, Variant):
                raise _err("v needs a Variant")
            inner = parse_type(value.signature)
            _enc(inner, value.value, out, bo, depth + 1)
            out.append(0)
            out.extend(value.signature.encode("ascii"))
        elif k == "m":
            if value is not None:
                child = t.children[0]
                _enc(child, value, out, bo, depth + 1)
                if child.fixed_size is None:
                    out.append(0)
        elif k == "a":
            _enc_array(t.children[0], value, out, bo, depth)
        else:  # tuple or dict entry
            _enc_tuple(t, value, out, bo, depth)
    except (struct.error, TypeError, AttributeError, UnicodeError, ValueError) as e:
        raise _err(f"cannot encode {value!r} as {t.signature}: {e}") from None


def _enc_array(child: GVariantType, value: Any, out: bytearray, bo: str, depth: int) -> None:
    if child.kind == "y":
        if isinstance(value, int):
            raise _err("ay needs bytes, not an int")
        out.extend(bytes(value))
        return
    sub = bytearray()
    if child.fixed_size is not None:
        for item in value:
            _enc(child, item, sub, bo, depth + 1)
        out.extend(sub)
        return
    ends: list[int] = []
    for item in value:
        _pad(sub, child.align)
        _enc(child, item, sub, bo, depth + 1)
        ends.append(len(sub))
    _append_frame(sub, ends)
    out.extend(sub)


def _enc_tuple(t: GVariantType, value: Any, out: bytearray, bo: str, depth: int) -> None:
    members = t.children
    if not members:
        out.append(0)
        return
    value = tuple(value)
    if len(value) != len(members):
        raise _err(f"{t.signature} needs {len(members)} members, got {len(value)}")
    sub = bytearray()
    ends: list[int] = []
    last = len(members) - 1
    for i, (m, v) in enumerate(zip(members, value, strict=True)):
        _pad(sub, m.align)
        _enc(m, v, sub, bo, depth + 1)
        if m.fixed_size is None and i != last:
            ends.append(len(sub))
    if t.fixed_size is not None:
        sub.extend(b"\0" * (t.fixed_size - len(sub)))
    _append_frame(sub, list(reversed(ends)))
    out.extend(sub)


def _append_frame(sub: bytearray, offsets: list[int]) -> None:
    z = _frame_size(len(sub), len(offsets))
    for off in offsets:
        sub.extend(off.to_bytes(z, "little"))


# ---------------------------------------------------------------------------- decoding


def decode(signature: str, data: bytes | bytearray | memoryview, byteorder: str = "big") -> Any:
    """Parse normal-form ``data`` as ``signature``; raise MalformedData otherwise."""
    t = parse_type(signature)
    mv = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    return _dec(t, bytes(mv), 0, len(mv), ">" if byteorder == "big" else "<", 0)


def _read_off(data: bytes, pos: int, z: int) -> int:
    return int.from_bytes(data[pos : pos + z], "little")


def _dec(t: GVariantType, data: bytes, start: int, end: int, bo: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise _err("value nested too deeply")
    size = end - start
    if t.fixed_size is not None and size != t.fixed_size:
        raise _err(f"{t.signature} needs {t.fixed_size} bytes, has {size}")
    k = t.kind
    if k in _INT_FORMATS:
        return struct.unpack_from(bo + _INT_FORMATS[k], data, start)[0]
    if k == "b":
        b = data[start]
        if b > 1:
            raise _err("boolean is neither 0 nor 1")
        return b == 1
    if k == "d":
        return struct.unpack_from(bo + "d", data, start)[0]
    if k in _STRINGISH:
        if size == 0 or data[end - 1] != 0:
            raise _err("string is not NUL-terminated")
        raw = data[start : end - 1]
        if b"\0" in raw:
            raise _err("string contains NUL")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _err("string is not valid UTF-8") from None
    if k == "v":
        return _dec_variant(data, start, end, bo, depth)
    if k == "m":
        if size == 0:
            return None
        child = t.children[0]
        if child.fixed_size is None:
            if data[end - 1] != 0:
                raise _err("maybe lacks its trailing zero")
            end -= 1
        return _dec(child, data, start, end, bo, depth + 1)
    if k == "a":
        return _dec_array(t.children[0], data, start, end, bo, depth)
    return _dec_tuple(t, data, start, end, bo, depth)


def _dec_variant(data: bytes, start: int, end: int, bo: str, depth: int) -> Variant:
    sep = data.rfind(b"\0", start, end)
    if sep < 0:
        raise _err("variant has no type separator")
    sig_bytes = data[sep + 1 : end]
    if len(sig_bytes) > 255:
        raise _err("variant type string too long")
    try:
        sig = sig_bytes.decode("ascii")
    except UnicodeDecodeError:
        raise _err("variant type string is not ASCII") from None
    inner = parse_type(sig)
    return Variant(sig, _dec(inner, data, start, sep, bo, depth + 1))


def _dec_array(
    child: GVariantType, data: bytes, start: int, end: int, bo: str, depth: int
) -> Any:
    size = end - start
    if child.kind == "y":
        return data[start:end]
    if child.fixed_size is not None:
        fs = child.fixed_size
        if size % fs:
            raise _err(f"array of {child.signature} has a partial element")
        if child.kind in _INT_FORMATS:
            n = size // fs
            return list(struct.unpack_from(f"{bo}{n}{_INT_FORMATS[child.kind]}", data, start))
        return [_dec(child, data, p, p + fs, bo, depth + 1) for p in range(start, end, fs)]
    if size == 0:
        return []
    z = _offset_size(size)
    if size < z:
        raise _err("array too short for its framing")
    table = _read_off(data, end - z, z)
    if table > size - z or (size - table) % z:
        raise _err("array framing offset out of range")
    n = (size - table) // z
    items = []
    pos = 0
    for i in range(n):
        item_end = _read_off(data, start + table + i * z, z)
        item_start = _align(pos, child.align)
        if item_end < item_start or item_end > table:
            raise _err("array element offsets out of order")
        _check_zero(data, start + pos, start + item_start)
        items.append(_dec(child, data, start + item_start, start + item_end, bo, depth + 1))
        pos = item_end
    return items


def _dec_tuple(
    t: GVariantType, data: bytes, start: int, end: int, bo: str, depth: int
) -> tuple[Any, ...]:
    members = t.children
    size = end - start
    if not members:
        if size != 1 or data[start] != 0:
            raise _err("unit tuple must be one zero byte")
        return ()
    z = _offset_size(size)
    frame_end = size  # offsets are consumed from the end backwards
    pos = 0
    values = []
    last = len(members) - 1
    for i, m in enumerate(members):
        aligned = _align(pos, m.align)
        if aligned > frame_end:
            raise _err(f"member {i} of {t.signature} out of range")
        _check_zero(data, start + pos, start + aligned)
        pos = aligned
        if m.fixed_size is not None:
            item_end = pos + m.fixed_size
        elif i == last:
            item_end = frame_end
        else:
            frame_end -= z
            if frame_end < 0:
                raise _err("tuple too short for its framing")
            item_end = _read_off(data, start + frame_end, z)
        if item_end < pos or item_end > frame_end:
            raise _err(f"member {i} of {t.signature} out of range")
        values.append(_dec(m, data, start + pos, start + item_end, bo, depth + 1))
        pos = item_end
    if t.fixed_size is None and pos != frame_end and members[-1].fixed_size is not None:
        raise _err(f"{t.signature} has trailing bytes")
    if t.fixed_size is not None:
        _check_zero(data, start + pos, end)
    return tuple(values)


def _check_zero(data: bytes, start: int, end: int) -> None:
    """Normal form pads with zero bytes only."""
    if start < end and any(data[start:end]):
        raise _err("non-zero padding")
