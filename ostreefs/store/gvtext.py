"""The GVariant text format, for ``--add-metadata=K=V`` values and for printing.

Covers what people put in commit metadata: numbers with optional type keywords
(``uint64 5``), strings in either quote, booleans, ``nothing``, ``b'bytes'``, arrays
(``['a', 'b']``, ``@as []``) and tuples. Numbers without a keyword are ``int32`` (or
``double`` with a point or exponent), as in GLib.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from ostreefs.errors import UsageError
from ostreefs.store.gvariant import Variant, parse_type

_KEYWORDS = {"boolean": "b", "byte": "y", "int16": "n", "uint16": "q", "int32": "i",
             "uint32": "u", "int64": "x", "uint64": "t", "double": "d", "handle": "h",
             "objectpath": "o", "signature": "g", "string": "s"}
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")|(?P<num>[-+]?(?:0x[0-9a-fA-F]+|"""
    r"""\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+))|(?P<at>@[^\s\[\(<]+)|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|(?P<punct>[\[\](),<>{}:]))""")


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str]] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise UsageError(f"Cannot parse GVariant text {text!r} at {pos}")
            kind = m.lastgroup or ""
            self.toks.append((kind, m.group(kind).strip()))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        self.i = 0
        self.text = text

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        t = self.peek()
        if t is None:
            raise UsageError(f"Unexpected end of GVariant text {self.text!r}")
        self.i += 1
        return t

    def expect(self, p: str) -> None:
        k, v = self.take()
        if v != p:
            raise UsageError(f"Expected {p!r} in GVariant text {self.text!r}")

    def value(self, want: str | None = None) -> tuple[str, Any]:
        k, v = self.take()
        if k == "at":
            return self.value(v[1:])
        if k == "word" and v in _KEYWORDS:
            return self.value(_KEYWORDS[v])
        if k == "word" and v in ("true", "false"):
            return "b", v == "true"
        if k == "str":
            if v.startswith("b"):
                return "ay", _unescape(v[2:-1]).encode("utf-8")
            s = _unescape(v[1:-1])
            return (want if want in ("s", "o", "g") else "s"), s
        if k == "num":
            if want in ("d",) or (not v.lower().startswith(("0x", "-0x")) and
                                  any(c in v for c in ".eE")):
                return "d", float(v)
            n = int(v, 0)
            return (want or "i"), n
        if v == "[":
            elem = want[1:] if want and want.startswith("a") else None
            items: list[Any] = []
            sig = elem
            while self.peek() and self.peek()[1] != "]":  # type: ignore[index]
                s, item = self.value(elem)
                sig = sig or s
                items.append(item)
                if self.peek() and self.peek()[1] == ",":  # type: ignore[index]
                    self.take()
            self.expect("]")
            if sig is None:
                raise UsageError(f"Cannot infer the type of an empty array in {self.text!r}")
            return "a" + sig, items
        if v == "(":
            sigs, vals = [], []
            while self.peek() and self.peek()[1] != ")":  # type: ignore[index]
                s, item = self.value()
                sigs.append(s)
                vals.append(item)
                if self.peek() and self.peek()[1] == ",":  # type: ignore[index]
                    self.take()
            self.expect(")")
            return "(" + "".join(sigs) + ")", tuple(vals)
        if v == "<":
            s, item = self.value()
            self.expect(">")
            return "v", Variant(s, item)
        raise UsageError(f"Cannot parse GVariant text {self.text!r}")


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), s)


def parse_text(text: str) -> Variant:
    """Parse GVariant text into a Variant whose type is inferred as GLib infers it.

    ostree stores such values in the host's byte order (little-endian here) inside
    an otherwise big-endian commit; the returned value is byte-swapped so that our
    big-endian encoder writes exactly those bytes (and reading them back shows what
    ``ostree show`` shows, e.g. 42 as 704643072).
    """
    p = _Parser(text)
    sig, value = p.value()
    if p.peek() is not None:
        raise UsageError(f"Trailing text in GVariant value {text!r}")
    parse_type(sig)
    return Variant(sig, _host_order(sig, value))


_SWAP = {"n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "h": "i", "d": "d"}


def _host_order(sig: str, value: Any) -> Any:
    """Reinterpret numbers as if their little-endian bytes were read big-endian."""
    if sig in _SWAP:
        f = _SWAP[sig]
        return struct.unpack(">" + f, struct.pack("<" + f, value))[0]
    if sig == "v":
        return Variant(value.signature, _host_order(value.signature, value.value))
    if sig.startswith("a") and sig != "ay":
        t = parse_type(sig).children[0]
        return [_host_order(t.signature, v) for v in value]
    if sig.startswith(("(", "{")):
        t = parse_type(sig)
        return tuple(_host_order(c.signature, v)
                     for c, v in zip(t.children, value, strict=True))
    return value


def format_value(sig: str, value: Any, annotate: bool = True) -> str:
    """GVariant text as ``g_variant_print(value, TRUE)`` writes it.

    GLib annotates a type only where the text alone would be ambiguous, and inside an
    array only the first element carries the annotation.
    """
    if sig == "b":
        return "true" if value else "false"
    if sig == "s":
        return _quote(value)
    if sig == "o":
        return f"objectpath {_quote(value)}" if annotate else _quote(value)
    if sig == "g":
        return f"signature {_quote(value)}" if annotate else _quote(value)
    if sig == "i":
        return str(value)
    if sig == "d":
        return repr(float(value))
    if sig == "y":
        return f"byte 0x{value:02x}" if annotate else f"0x{value:02x}"
    if sig in ("n", "q", "u", "x", "t", "h"):
        name = {v: k for k, v in _KEYWORDS.items()}[sig]
        return f"{name} {value}" if annotate else str(value)
    if sig == "v":
        return f"<{format_value(value.signature, value.value, True)}>"
    if sig == "ay" and value and value[-1:] == b"\0" and b"\0" not in value[:-1]:
        q = '"' if b"'" in value else "'"
        return f"b{q}{_strescape(value[:-1])}{q}"
    if sig.startswith("a{"):
        t = parse_type(sig).children[0]
        ks, vs = t.children[0].signature, t.children[1].signature
        if not value:
            return f"@{sig} {{}}" if annotate else "{}"
        parts = []
        for k, v in value:
            parts.append(f"{format_value(ks, k, annotate)}: {format_value(vs, v, annotate)}")
            annotate = False
        return "{" + ", ".join(parts) + "}"
    if sig.startswith("a"):
        if not value:
            return f"@{sig} []" if annotate else "[]"
        inner_sig = sig[1:]
        items = []
        for v in value:
            items.append(format_value(inner_sig, v, annotate))
            annotate = False
        return "[" + ", ".join(items) + "]"
    if sig.startswith("("):
        t = parse_type(sig)
        inner = ", ".join(format_value(c.signature, v, annotate)
                          for c, v in zip(t.children, value, strict=True))
        return "(" + inner + ("," if len(t.children) == 1 else "") + ")"
    return repr(value)


_C_ESCAPES = {0x08: "\\b", 0x0C: "\\f", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t",
              0x0B: "\\v", 0x5C: "\\\\", 0x22: '\\"'}


def _strescape(raw: bytes) -> str:
    """GLib's g_strescape: C escapes, and octal for bytes outside printable ASCII."""
    out = []
    for b in raw:
        if b in _C_ESCAPES:
            out.append(_C_ESCAPES[b])
        elif b < 0x20 or b >= 0x7F:
            out.append(f"\\{b:03o}")
        else:
            out.append(chr(b))
    return "".join(out)


def _quote(s: str) -> str:
    if "'" in s and '"' not in s:
        return '"' + s.replace("\\", "\\\\") + '"'
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
