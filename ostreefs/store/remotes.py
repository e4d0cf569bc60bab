"""Remotes: named upstream repositories, kept in the repo ``config`` as ostree keeps them.

Each remote is a ``[remote "NAME"]`` group. ``remote add`` writes ``url`` first, then
``branches``, then the options in the order given, and a repeated key replaces the
earlier value in place, which is what GKeyFile does for ostree; so a config written
by either tool is the same file, byte for byte. A remote's trusted GPG keys live
beside the config in ``NAME.trustedkeys.gpg`` (see :mod:`ostreefs.store.gpg`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.errors import MalformedData, StoreError, UsageError
from ostreefs.store.config import KeyFile
from ostreefs.store.repo import Repo

_NAME_RE = re.compile(r"^[\w\d][-._\w\d]*$", re.ASCII)
#: GKeyFile's rule for key names: no '=', '[', ']', no leading or trailing space.
_KEY_RE = re.compile(r"^[^=\[\]\s](?:[^=\[\]\n]*[^=\[\]\s])?$")

#: The directory of system-wide remote configs and keyrings. ostree reads (and ``remote
#: add`` writes) it only for the system repository, unless its config says
#: ``add-remotes-config-dir=false``.
REMOTES_CONFIG_DIR = "/etc/ostree/remotes.d"
#: Where the system repository is (the booted sysroot's repo).
SYSTEM_REPOS = ("/ostree/repo", "/sysroot/ostree/repo")


class RemoteNotFound(StoreError):
    """Remote "{0}" not found"""


class RemoteExists(StoreError):
    """Remote configuration for "{0}" already exists: {1}"""


class InvalidRemoteName(StoreError):
    """Invalid remote name {0}"""


@dataclass
class Remote:
    """A remote as pull needs it; ``options`` holds every key as written."""

    name: str
    url: str
    contenturl: str | None = None
    gpg_verify: bool = True
    gpg_verify_summary: bool = False
    tls_ca_path: str | None = None
    tls_client_cert_path: str | None = None
    tls_client_key_path: str | None = None
    tls_permissive: bool = False
    branches: list[str] = field(default_factory=list)
    collection_id: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    #: The file the remote was read from (the repo config, or a remotes.d file).
    source: Path | None = None

    @property
    def keyring_name(self) -> str:
        return keyring_filename(self.name)


def keyring_filename(name: str) -> str:
    """The remote's keyring file name, relative to the repo or a remotes.d directory."""
    return f"{name}.trustedkeys.gpg"


def group_name(name: str) -> str:
    return f'remote "{name}"'


def validate_remote_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise InvalidRemoteName(name)
    return name


def validate_option_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise UsageError(f"Invalid remote option name '{key}'",
                         hint="a key may not contain '=', '[', ']' or start or end with space")
    return key


def _name_of_group(group: str) -> str | None:
    if group.startswith('remote "') and group.endswith('"') and len(group) > 9:
        return group[8:-1]
    return None


def is_system_repo(repo: Repo) -> bool:
    try:
        here = repo.path.resolve()
        return any(Path(p).exists() and here == Path(p).resolve() for p in SYSTEM_REPOS)
    except OSError:
        return False


def remotes_dir(repo: Repo) -> Path | None:
    """The remotes.d directory this repository also reads, if it reads one."""
    if not is_system_repo(repo):
        return None
    if not repo.config.get_bool("core", "add-remotes-config-dir", True):
        return None
    return Path(REMOTES_CONFIG_DIR)


def _sources(repo: Repo) -> list[tuple[Path, KeyFile]]:
    """The repo config, then each ``*.conf`` of remotes.d in name order."""
    out = [(repo.path / "config", repo.config)]
    d = remotes_dir(repo)
    if d is not None and d.is_dir():
        for p in sorted(d.glob("*.conf")):
            try:
                out.append((p, KeyFile(p.read_text(encoding="utf-8"))))
            except (OSError, UnicodeDecodeError) as e:
                raise StoreError(f"Cannot read remote config {p}: {e}") from None
    return out


def list_remotes(repo: Repo) -> list[str]:
    """Remote names, sorted as ``ostree remote list`` prints them."""
    names: set[str] = set()
    for _, kf in _sources(repo):
        for g in kf.groups():
            n = _name_of_group(g)
            if n is not None:
                names.add(n)
    return sorted(names)


def _find(repo: Repo, name: str) -> tuple[Path, KeyFile] | None:
    for path, kf in _sources(repo):
        if kf.has_group(group_name(name)):
            return path, kf
    return None


def has_remote(repo: Repo, name: str) -> bool:
    return _find(repo, name) is not None


def get_remote(repo: Repo, name: str) -> Remote:
    """The remote's settings with ostree's defaults; RemoteNotFound if there is none."""
    found = _find(repo, name)
    if found is None:
        raise RemoteNotFound(name)
    path, kf = found
    g = group_name(name)
    options = {k: kf.get(g, k) or "" for k in kf.keys(g)}
    url = options.get("url")
    if url is None:
        raise MalformedData("config", f'remote "{name}" has no url')

    def flag(key: str, default: bool) -> bool:
        return kf.get_bool(g, key, default)

    return Remote(
        name=name, url=url, contenturl=options.get("contenturl"),
        gpg_verify=flag("gpg-verify", True),
        gpg_verify_summary=flag("gpg-verify-summary", False),
        tls_ca_path=options.get("tls-ca-path"),
        tls_client_cert_path=options.get("tls-client-cert-path"),
        tls_client_key_path=options.get("tls-client-key-path"),
        tls_permissive=flag("tls-permissive", False),
        branches=parse_string_list(options.get("branches", "")),
        collection_id=options.get("collection-id"),
        options=options, source=path)


def parse_string_list(raw: str) -> list[str]:
    """A GKeyFile string list (``a;b;``), with ``\\;`` as a literal semicolon."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and i + 1 < len(raw) and raw[i + 1] == ";":
            cur.append(";")
            i += 2
            continue
        if c == ";":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        out.append("".join(cur))
    return out


def format_string_list(items: Sequence[str]) -> str:
    return "".join(s.replace(";", "\\;") + ";" for s in items)


def add_remote(repo: Repo, name: str, url: str, *, options: Mapping[str, str],
               branches: Sequence[str] = (), if_not_exists: bool = False,
               force: bool = False) -> bool:
    """Add a remote to the repo config as ``ostree remote add`` does.

    ``options`` are written in their order after ``url`` and ``branches``; a key that
    is already there (``url`` too) is replaced in place. Returns False when the remote
    exists and ``if_not_exists`` said to leave it alone.
    """
    validate_remote_name(name)
    for k in options:
        validate_option_key(k)
    repo.reload_config()
    found = _find(repo, name)
    if found is not None:
        if if_not_exists:
            return False
        if not force:
            where = "(in config)" if found[0] == repo.path / "config" else str(found[0])
            raise RemoteExists(name, where)
        if found[0] == repo.path / "config":
            repo.config.remove_group(group_name(name))
        elif remotes_dir(repo) is None or found[0].name != f"{name}.conf":
            found[0].unlink()  # (its own file is simply replaced below)
    g = group_name(name)
    d = remotes_dir(repo)
    # A system repository keeps new remotes in remotes.d, one file each, as ostree does.
    kf = KeyFile() if d is not None else repo.config
    kf.set(g, "url", url)
    if branches:
        kf.set(g, "branches", format_string_list(branches))
    for k, v in options.items():
        kf.set(g, k, v)
    if d is not None:
        d.mkdir(parents=True, exist_ok=True)
        _fs.atomic_write(d / f"{name}.conf", kf.to_text().encode(), fsync=repo.fsync_enabled)
        if found is not None:
            repo.write_config()
    else:
        repo.write_config()
    return True


def delete_remote(repo: Repo, name: str, *, if_exists: bool = False) -> bool:
    """Remove the remote's group and its keyring; its refs stay, as ostree leaves them."""
    validate_remote_name(name)
    repo.reload_config()
    found = _find(repo, name)
    if found is None:
        if if_exists:
            return False
        raise RemoteNotFound(name)
    if found[0] != repo.path / "config":
        found[0].unlink()  # a remotes.d file holds one remote; ostree deletes it
    else:
        repo.config.remove_group(group_name(name))
        repo.write_config()
    (repo.path / keyring_filename(name)).unlink(missing_ok=True)
    return True


def keyring_paths(repo: Repo, name: str) -> list[Path]:
    """Where the remote's trusted keys are, in ostree's order of lookup.

    The repo's own ``NAME.trustedkeys.gpg`` wins over one in remotes.d; any file listed
    in the remote's ``gpgkeypath`` option is added to whichever was found.
    """
    remote = get_remote(repo, name)
    out: list[Path] = []
    own = repo.path / keyring_filename(name)
    if own.is_file():
        out.append(own)
    else:
        d = remotes_dir(repo)
        if d is not None and (d / keyring_filename(name)).is_file():
            out.append(d / keyring_filename(name))
    keypath = remote.options.get("gpgkeypath")
    if keypath:
        for item in re.split(r"[;,]", keypath):
            if item.strip():
                out.append(Path(item.strip()))
    return out
