"""The sysroot as ``ostree admin`` lays it out, read back into a deployment list.

The list is never stored anywhere else: it is the BLS entries under the current
``boot/loader`` (the bootversion), sorted by ``version``, each entry's ``ostree=``
naming a link in the current ``ostree/boot.V.S`` farm that points at a deployment
directory. Reading it the way ostree reads it lets either tool act on a sysroot the
other one wrote.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ostreefs import _fs
from ostreefs.boot.bls import BootEntry, sort_entries
from ostreefs.boot.kargs import KernelArgs
from ostreefs.errors import OstreefsError
from ostreefs.store.config import KeyFile, RepoMode
from ostreefs.store.repo import Repo

_BOOT_LINK = re.compile(r"^/ostree/boot\.([01])/([^/]+)/([0-9a-f]{64})/(\d+)$")
_DEPLOY_NAME = re.compile(r"^([0-9a-f]{64})\.(\d+)$")
STATEROOT_RE = re.compile(r"^[A-Za-z0-9_][-A-Za-z0-9_.]*$")

#: Called between every pair of writes with a step name (a test seam for crashes).
Checkpoint = Callable[[str], None]


def no_checkpoint(step: str) -> None:
    """The Checkpoint of a run nobody interrupts."""


class SysrootError(OstreefsError):
    """{0}"""


class IndexOutOfRange(SysrootError):
    """Out of range deployment index {0}, expected < {1}"""


class UnknownStateroot(SysrootError):
    """No stateroot '{0}' in {1}"""


@dataclass
class Deployment:
    """One deployment: a checked-out commit in a stateroot, and how it boots.

    ``options`` are its kernel arguments as in its BLS entry (``ostree=`` included,
    pointing wherever it pointed when read). ``index`` is its place in the list.
    """

    osname: str
    csum: str
    serial: int
    bootcsum: str = ""
    bootserial: int = -1
    index: int = -1
    options: KernelArgs = field(default_factory=KernelArgs)
    entry: BootEntry | None = None
    #: The entry's file name in ``loader.V/entries`` (for in-place edits).
    entry_file: str | None = None
    origin: KeyFile | None = None

    @property
    def name(self) -> str:
        return f"{self.csum}.{self.serial}"

    def relpath(self) -> str:
        return f"ostree/deploy/{self.osname}/deploy/{self.name}"

    def same(self, other: Deployment | None) -> bool:
        return (other is not None and other.osname == self.osname
                and other.csum == self.csum and other.serial == self.serial)

    @property
    def pinned(self) -> bool:
        return (self.origin is not None
                and self.origin.get_bool("libostree-transient", "pinned", False))

    @property
    def refspec(self) -> str | None:
        return self.origin.get("origin", "refspec") if self.origin is not None else None


@dataclass
class Sysroot:
    """A loaded sysroot; :meth:`load` again after any change on disk."""

    path: Path
    bootversion: int = 0
    subbootversion: int = 0
    deployments: list[Deployment] = field(default_factory=list)
    booted: Deployment | None = None
    loader_exists: bool = False

    @property
    def boot(self) -> Path:
        return self.path / "boot"

    @property
    def repo_path(self) -> Path:
        return self.path / "ostree" / "repo"

    def repo(self) -> Repo:
        return Repo.open(self.repo_path)

    def deploy_path(self, d: Deployment) -> Path:
        return self.path / d.relpath()

    def origin_path(self, d: Deployment) -> Path:
        return self.path / f"{d.relpath()}.origin"

    def stateroots(self) -> list[str]:
        try:
            return sorted(os.listdir(self.path / "ostree" / "deploy"))
        except FileNotFoundError:
            return []

    def require_stateroot(self, osname: str) -> None:
        if not STATEROOT_RE.match(osname) or not (
                self.path / "ostree" / "deploy" / osname / "var").is_dir():
            raise UnknownStateroot(osname, self.path,
                                   hint=f"create it with 'admin os-init {osname}'")

    def get(self, index: int) -> Deployment:
        if index < 0 or index >= len(self.deployments):
            raise IndexOutOfRange(index, len(self.deployments))
        return self.deployments[index]

    def merge_deployment(self, osname: str) -> Deployment | None:
        """Whose /etc and kernel arguments a new deployment of ``osname`` inherits."""
        if self.booted is not None and self.booted.osname == osname:
            return self.booted
        for d in self.deployments:
            if d.osname == osname:
                return d
        return None

    def default_osname(self) -> str:
        if self.booted is not None:
            return self.booted.osname
        raise SysrootError("Not currently booted into an OSTree system and no --os= "
                           "argument given")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Sysroot:
        p = Path(path)
        if not (p / "ostree" / "repo").is_dir() or not (p / "ostree" / "deploy").is_dir():
            raise SysrootError(f"{p} is not an OSTree sysroot (no ostree/repo or "
                               "ostree/deploy)", hint="create one with 'admin init-fs'")
        sr = cls(p)
        try:
            target = os.readlink(p / "boot" / "loader")
        except FileNotFoundError:
            target = None
        except OSError as e:
            raise SysrootError(f"Cannot read {p}/boot/loader: {e.strerror}") from None
        if target is not None:
            if target not in ("loader.0", "loader.1"):
                raise SysrootError(f"Invalid target '{target}' of {p}/boot/loader")
            sr.bootversion = int(target[-1])
            sr.loader_exists = True
        sr.subbootversion = read_subbootversion(p, sr.bootversion)
        entries: list[BootEntry] = []
        files: dict[int, str] = {}
        edir = p / "boot" / f"loader.{sr.bootversion}" / "entries"
        if sr.loader_exists:
            try:
                names = sorted(os.listdir(edir))
            except FileNotFoundError:
                names = []
            for n in names:
                if n.endswith(".conf") and n.startswith("ostree-"):
                    entries.append(BootEntry.parse((edir / n).read_text(
                        encoding="utf-8", errors="surrogateescape"), n))
                    files[id(entries[-1])] = n
        for i, ent in enumerate(sort_entries(entries)):
            d = _deployment_from_entry(p, ent)
            d.index = i
            d.entry_file = files[id(ent)]
            sr.deployments.append(d)
        sr.booted = _find_booted(sr)
        return sr


def read_subbootversion(path: Path, bootversion: int) -> int:
    try:
        target = os.readlink(path / "ostree" / f"boot.{bootversion}")
    except (FileNotFoundError, OSError):
        return 0
    return 1 if target == f"boot.{bootversion}.1" else 0


def _deployment_from_entry(root: Path, e: BootEntry) -> Deployment:
    karg = e.ostree_karg()
    if karg is None:
        raise SysrootError(f"BLS entry '{e.title}' has no ostree= argument")
    m = _BOOT_LINK.match(karg)
    if m is None:
        raise SysrootError(f"Invalid ostree= argument '{karg}'")
    osname, bootcsum, bootserial = m.group(2), m.group(3), int(m.group(4))
    if not STATEROOT_RE.match(osname):  # e.g. "..": never a path component here
        raise SysrootError(f"Invalid stateroot name in ostree={karg}")
    try:
        target = os.readlink(root / karg.lstrip("/"))
    except OSError as err:
        raise SysrootError(f"Cannot resolve ostree={karg}: {err.strerror}") from None
    name = target.rsplit("/", 1)[-1]
    dm = _DEPLOY_NAME.match(name)
    if dm is None:
        raise SysrootError(f"Invalid deployment link target '{target}' of {karg}")
    d = Deployment(osname=osname, csum=dm.group(1), serial=int(dm.group(2)),
                   bootcsum=bootcsum, bootserial=bootserial,
                   options=KernelArgs.parse(e.options), entry=e)
    origin = root / f"{d.relpath()}.origin"
    try:
        d.origin = KeyFile(origin.read_text(encoding="utf-8"))
    except FileNotFoundError:
        d.origin = None
    return d


def _find_booted(sr: Sysroot) -> Deployment | None:
    """The deployment running now; only a sysroot at / can hold it."""
    try:
        if sr.path.resolve() != Path("/") or not os.path.exists("/run/ostree-booted"):
            return None
        cmdline = Path("/proc/cmdline").read_text()
    except OSError:
        return None
    karg = KernelArgs.parse(cmdline).get_last("ostree")
    if not karg:
        return None
    try:
        real = os.path.realpath("/" + karg.lstrip("/"))
    except OSError:
        return None
    for d in sr.deployments:
        if os.path.realpath(sr.deploy_path(d)) == real:
            return d
    return None


# --------------------------------------------------------------------------- set-up

def init_fs(path: str | os.PathLike[str], modern: bool = False) -> None:
    """Create a sysroot's skeleton in an existing directory, as ``admin init-fs``."""
    p = Path(path)
    if not p.is_dir():
        raise SysrootError(f"opendir({path}): No such file or directory")
    dirs: list[tuple[str, int]] = [("boot", 0o755), ("ostree", 0o755)]
    if not modern:
        dirs += [("dev", 0o755), ("home", 0o755), ("proc", 0o755), ("root", 0o700),
                 ("run", 0o755), ("sys", 0o755), ("tmp", 0o1777)]
    for name, mode in dirs:
        try:
            os.mkdir(p / name, mode)
            os.chmod(p / name, mode)
        except FileExistsError:
            pass
    (p / "ostree" / "deploy").mkdir(exist_ok=True)
    Repo.init(p / "ostree" / "repo", RepoMode.BARE)


def os_init(sysroot: str | os.PathLike[str], osname: str) -> Path:
    """Create the stateroot ``ostree/deploy/OSNAME`` with its shared /var."""
    p = Path(sysroot)
    if not STATEROOT_RE.match(osname):
        raise SysrootError(f"Invalid stateroot name '{osname}'")
    if not (p / "ostree" / "deploy").is_dir():
        raise SysrootError(f"{p} is not an OSTree sysroot (no ostree/deploy)",
                           hint="create one with 'admin init-fs'")
    base = p / "ostree" / "deploy" / osname
    for d, mode in (("", 0o755), ("var", 0o755), ("var/lib", 0o755),
                    ("var/log", 0o755), ("var/tmp", 0o1777)):
        try:
            os.mkdir(base / d if d else base, mode)
            os.chmod(base / d if d else base, mode)
        except FileExistsError:
            pass
    for name, target in (("lock", "../run/lock"), ("run", "../run")):
        try:
            os.symlink(target, base / "var" / name)
        except FileExistsError:
            pass
    return base


@contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """The sysroot lock ostree takes (``ostree/lock``), held for a whole change."""
    lock = Path(path) / "ostree" / "lock"
    if not lock.parent.is_dir():
        raise SysrootError(f"{path} is not an OSTree sysroot (no ostree/ directory)",
                           hint="create one with 'admin init-fs'")
    try:
        with _fs.ofd_lock(str(lock), _fs.LOCK_EX, 30.0):
            try:
                yield
            finally:
                try:
                    os.unlink(lock)
                except OSError:
                    pass
    except TimeoutError:
        raise SysrootError(f"Timed out waiting for the sysroot lock {lock}",
                           hint="another ostree or ostreefs admin command is running") \
            from None
