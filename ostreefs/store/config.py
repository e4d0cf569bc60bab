"""The repository ``config`` file: a GKeyFile that ostree and ostreefs both edit.

The file is kept as lines so that a ``config set`` changes one line and leaves every
other byte (comments, order, blank lines) as ostree or a human wrote them.
"""

from __future__ import annotations

import re
from enum import Enum

from ostreefs.errors import MalformedData, StoreError


class RepoMode(Enum):
    """The four ways a repository stores content objects (see the format reference)."""

    BARE = "bare"
    BARE_USER = "bare-user"
    BARE_USER_ONLY = "bare-user-only"
    ARCHIVE = "archive-z2"

    @classmethod
    def parse(cls, text: str) -> RepoMode:
        if text == "archive":
            return cls.ARCHIVE
        try:
            return cls(text)
        except ValueError:
            raise StoreError(
                f"Invalid mode '{text}' in repository configuration",
                hint="use bare, bare-user, bare-user-only or archive",
            ) from None

    @property
    def is_archive(self) -> bool:
        return self is RepoMode.ARCHIVE

    @property
    def cli_name(self) -> str:
        return "archive" if self is RepoMode.ARCHIVE else self.value


_GROUP_RE = re.compile(r"^\[([^\[\]]+)\]\s*$")


class _Group:
    __slots__ = ("name", "lines")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []


class KeyFile:
    """An order-preserving GKeyFile: groups of ``key=value`` lines."""

    def __init__(self, text: str = "") -> None:
        self._head: list[str] = []
        self._groups: list[_Group] = []
        for line in text.splitlines():
            m = _GROUP_RE.match(line)
            if m:
                self._groups.append(_Group(m.group(1)))
            elif self._groups:
                self._groups[-1].lines.append(line)
            else:
                self._head.append(line)

    def _group(self, name: str) -> _Group | None:
        for g in self._groups:
            if g.name == name:
                return g
        return None

    def groups(self) -> list[str]:
        return [g.name for g in self._groups]

    def has_group(self, name: str) -> bool:
        return self._group(name) is not None

    def keys(self, group: str) -> list[str]:
        g = self._group(group)
        if g is None:
            return []
        return [k for k, _ in (_split(line) for line in g.lines) if k is not None]

    def get(self, group: str, key: str) -> str | None:
        """The value with GKeyFile escapes (``\\s``, ``\\n``, ...) undone."""
        g = self._group(group)
        if g is None:
            return None
        value = None
        for line in g.lines:
            k, v = _split(line)
            if k == key:
                value = v
        return None if value is None else _unescape(value)

    def get_bool(self, group: str, key: str, default: bool) -> bool:
        v = self.get(group, key)
        if v is None:
            return default
        if v.strip() in ("true", "1"):
            return True
        if v.strip() in ("false", "0"):
            return False
        raise MalformedData("config", f"key {group}.{key} is not a boolean: {v!r}")

    def set(self, group: str, key: str, value: str) -> None:
        g = self._group(group)
        if g is None:
            if self._groups and self._groups[-1].lines and self._groups[-1].lines[-1] != "":
                self._groups[-1].lines.append("")
            elif not self._groups and self._head and self._head[-1] != "":
                self._head.append("")
            g = _Group(group)
            self._groups.append(g)
        value = _escape(value)
        for i, line in enumerate(g.lines):
            if _split(line)[0] == key:
                g.lines[i] = f"{key}={value}"
                return
        # A new key goes after the group's last key, before trailing blank lines.
        pos = len(g.lines)
        while pos > 0 and g.lines[pos - 1].strip() == "":
            pos -= 1
        g.lines.insert(pos, f"{key}={value}")

    def unset(self, group: str, key: str) -> bool:
        g = self._group(group)
        if g is None:
            return False
        before = len(g.lines)
        g.lines = [line for line in g.lines if _split(line)[0] != key]
        return len(g.lines) != before

    def remove_group(self, group: str) -> bool:
        g = self._group(group)
        if g is None:
            return False
        i = self._groups.index(g)
        del self._groups[i]
        if i > 0:
            prev = self._groups[i - 1].lines
            if i == len(self._groups):
                while prev and prev[-1] == "":
                    prev.pop()
        return True

    def to_text(self) -> str:
        out = list(self._head)
        for g in self._groups:
            out.append(f"[{g.name}]")
            out.extend(g.lines)
        return "".join(line + "\n" for line in out)


_ESCAPES = {"s": " ", "n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def _escape(value: str) -> str:
    """Escape a value as GKeyFile writes it: backslash, control chars, a leading space."""
    out = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    out = out.replace("\r", "\\r")
    if out.startswith(" "):
        out = "\\s" + out[1:]
    return out


def _unescape(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPES:
            out.append(_ESCAPES[value[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _split(line: str) -> tuple[str | None, str]:
    s = line.strip()
    if not s or s.startswith("#") or "=" not in s:
        return None, ""
    k, v = line.split("=", 1)
    return k.strip(), v.strip()
