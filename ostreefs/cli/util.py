"""Parsing helpers shared by commands: dates, KEY=VALUE pairs, booleans."""

from __future__ import annotations

import locale
import re
from datetime import UTC, datetime

from ostreefs.errors import UsageError

_TZ = re.compile(r"^(?P<dt>.*?)\s*(?P<tz>Z|UTC|[+-]\d{2}:?\d{2})?$")


def parse_timestamp(text: str) -> int:
    """A date as ``--timestamp`` takes it: ``@SECONDS`` or an ISO-like date and time."""
    s = text.strip()
    if s.startswith("@"):
        try:
            return int(s[1:])
        except ValueError:
            raise UsageError(f"Could not parse '{text}'") from None
    m = _TZ.match(s)
    assert m is not None
    body, tz = m.group("dt").replace("T", " ").strip(), m.group("tz")
    for fmt in ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            dt = datetime.strptime(body, fmt)
            break
        except ValueError:
            continue
    else:
        raise UsageError(f"Could not parse '{text}'",
                         hint="use @SECONDS or 'YYYY-MM-DD HH:MM:SS +0000'")
    if tz in (None,):
        return int(dt.astimezone(UTC).timestamp())
    if tz in ("Z", "UTC"):
        return int(dt.replace(tzinfo=UTC).timestamp())
    sign = 1 if tz[0] == "+" else -1
    digits = tz[1:].replace(":", "")
    offset = sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return int(dt.replace(tzinfo=UTC).timestamp()) - offset


def split_kv(text: str, what: str) -> tuple[str, str]:
    k, eq, v = text.partition("=")
    if not eq or not k:
        raise UsageError(f"Missing '=' in KEY=VALUE {what} '{text}'")
    return k, v


def parse_bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("true", "yes", "1"):
        return True
    if t in ("false", "no", "0"):
        return False
    raise UsageError(f"Invalid boolean '{text}'")


def format_date(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S +0000")


def format_transferred(n: int) -> str:
    """Bytes fetched, as ostree's pull summary line says it (binary KiB, no decimals)."""
    return f"{n} B" if n < 1024 else f"{n // 1024} KiB"


def format_size(n: int) -> str:
    """A byte count as GLib's g_format_size prints it (ostree's prune and pull lines):
    SI units, one decimal, and a no-break space before a unit other than bytes."""
    if n < 1000:
        return "1 byte" if n == 1 else f"{n} bytes"
    units = ["kB", "MB", "GB", "TB", "PB", "EB"]
    i = 0
    while i + 1 < len(units) and n >= 1000 ** (i + 2):
        i += 1
    return f"{n / 1000 ** (i + 1):.1f}\u00a0{units[i]}"


def in_locale_charset(text: str) -> str:
    """Text as g_print writes it: what the locale's charset lacks becomes '?'.

    So under ``LC_ALL=C`` the no-break space of a size is '?', as ostree prints it.
    """
    try:
        codeset = locale.nl_langinfo(locale.CODESET)
        return text.encode(codeset, "replace").decode(codeset)
    except (AttributeError, LookupError, ValueError):
        return text
