"""Kernel command lines as ostree edits them: ordered, keys may repeat.

``--karg=K=V`` replaces every value of K by one (kept where K first was),
``--karg-append`` adds one more, ``--karg-delete`` removes one. A BLS ``options`` line
is one line, so an argument holding a newline (or another control character) would
split the entry file; it is refused here rather than written (ostree writes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ostreefs.errors import OstreefsError


class KargError(OstreefsError):
    """{0}"""


def _key(arg: str) -> str:
    return arg.split("=", 1)[0]


def split_cmdline(text: str) -> list[str]:
    """Words of a command line; double quotes keep spaces inside one word."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    started = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
            started = True
        elif ch.isspace() and not quoted:
            if started:
                out.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started:
        out.append("".join(cur))
    return out


def check_karg(arg: str) -> str:
    if any(ord(c) < 0x20 or c == "\x7f" for c in arg):
        raise KargError(f"Invalid kernel argument {arg!r}: it contains a newline or "
                        "another control character")
    if not arg.strip() or _key(arg) == "":
        raise KargError(f"Invalid kernel argument {arg!r}")
    return arg


@dataclass
class KernelArgs:
    args: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> KernelArgs:
        return cls(split_cmdline(text))

    def __str__(self) -> str:
        return " ".join(self.args)

    def copy(self) -> KernelArgs:
        return KernelArgs(list(self.args))

    def get_last(self, key: str) -> str | None:
        for a in reversed(self.args):
            if _key(a) == key:
                return a.split("=", 1)[1] if "=" in a else ""
        return None

    def has_key(self, key: str) -> bool:
        return any(_key(a) == key for a in self.args)

    def replace(self, arg: str) -> None:
        """Set K to one value, in place of its first occurrence (appended if absent)."""
        check_karg(arg)
        key = _key(arg)
        out: list[str] = []
        done = False
        for a in self.args:
            if _key(a) == key:
                if not done:
                    out.append(arg)
                    done = True
                continue
            out.append(a)
        if not done:
            out.append(arg)
        self.args = out

    def append(self, arg: str) -> None:
        self.args.append(check_karg(arg))

    def append_if_missing(self, arg: str) -> None:
        if not self.has_key(_key(check_karg(arg))):
            self.args.append(arg)

    def delete(self, arg: str) -> None:
        key = _key(arg)
        matches = [i for i, a in enumerate(self.args) if _key(a) == key]
        if not matches:
            raise KargError(f"No karg '{key}' found")
        if "=" in arg:
            for i in matches:
                if self.args[i] == arg:
                    del self.args[i]
                    return
            raise KargError(f"There is no \"{arg.split('=', 1)[1]}\" value for key "
                            f"\"{key}\"")
        if len(matches) > 1:
            raise KargError(f"Multiple values for key '{key}' found")
        del self.args[matches[0]]

    def without(self, key: str) -> KernelArgs:
        return KernelArgs([a for a in self.args if _key(a) != key])
