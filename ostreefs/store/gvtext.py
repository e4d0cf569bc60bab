"""The GVariant text format, for ``--add-metadata=K=V`` values and for printing.

Covers what people put in commit metadata: numbers with optional type keywords
(``uint64 5``), strings in either quote, booleans, ``nothing``, ``b'bytes'``, arrays
(``['a', 'b']``, ``@as []``) and tuples. Numbers without a keyword are ``int32`` (or
``double`` with a point or exponent), as in GLib.
"""

from __future__ import annotations

import re
from typing import Any

from ostreefs.errors import UsageError
from ostreefs.store.gvariant import Variant, parse_type

_KEYWORDS = {"boolean": "b", "byte": "y", "int16": "n", "uint16": "q", "int32": "i",
             "uint32": "u", "int64": "x", "uint64": "t", "double": "d", "handle": "h",
             "objectpath": "o", "signature": "g", "string": "s"}
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>b?'(?:[^'\\]|\\.)*'|b?"(?:[^"\\]|\\.)*")|(?P<num>[-+]?(?:0x[0-9a-fA-F]+|"""
    r"""\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+))|(?P<at>@[^\s\[\(<]+)|(?P<word>[A-Za-z_]+)"""
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
    """Parse GVariant text into a Variant whose type is inferred as GLib infers it."""
    p = _Parser(text)
    sig, value = p.value()
    if p.peek() is not None:
        raise UsageError(f"Trailing text in GVariant value {text!r}")
    parse_type(sig)
    return Variant(sig, value)


def format_value(sig: str, value: Any, top: bool = True) -> str:
    """GVariant text as GLib prints it (with type annotations only where GLib adds them)."""
    if sig == "b":
        return "true" if value else "false"
    if sig in ("s",):
        return _quote(value)
    if sig == "o":
        return f"objectpath {_quote(value)}"
    if sig == "g":
        return f"signature {_quote(value)}"
    if sig == "i":
        return str(value)
    if sig == "d":
        return repr(float(value))
    if sig in ("y", "n", "q", "u", "x", "t", "h"):
        name = {v: k for k, v in _KEYWORDS.items()}[sig]
        return f"{name} {value}" if top else str(value)
    if sig == "v":
        return f"<{format_value(value.signature, value.value, True)}>"
    if sig == "ay":
        if value and value[-1:] == b"\0" and b"\0" not in value[:-1]:
            try:
                return "b" + _quote(value[:-1].decode("ascii"))
            except UnicodeDecodeError:
                pass
        inner = ", ".join(f"0x{b:02x}" for b in value)
        return f"[byte {inner}]" if value else "@ay []"
    if sig.startswith("a{"):
        t = parse_type(sig).children[0]
        ks, vs = t.children[0].signature, t.children[1].signature
        if not value:
            return f"@{sig} {{}}"
        return "{" + ", ".join(f"{format_value(ks, k, True)}: {format_value(vs, v, True)}"
                               for k, v in value) + "}"
    if sig.startswith("a"):
        if not value:
            return f"@{sig} []"
        inner_sig = sig[1:]
        first = format_value(inner_sig, value[0], True)
        rest = [format_value(inner_sig, v, False) for v in value[1:]]
        return "[" + ", ".join([first, *rest]) + "]"
    if sig.startswith("("):
        t = parse_type(sig)
        return "(" + ", ".join(format_value(c.signature, v, True)
                               for c, v in zip(t.children, value, strict=True)) + \
            ("," if len(t.children) == 1 else "") + ")"
    return repr(value)


def _quote(s: str) -> str:
    if "'" in s and '"' not in s:
        return '"' + s.replace("\\", "\\\\") + '"'
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"
