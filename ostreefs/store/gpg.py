"""OpenPGP signatures on commits and summaries, stored where ostree stores them.

A commit's signatures are the ``ostree.gpgsigs`` key (``aay``) of its detached
metadata, each a binary detached signature over the commit object's bytes; the
summary's are the same key in ``summary.sig``. Signing and verifying run the ``gpg``
binary through python-gnupg.

Verification never looks at the user's keyrings: each call builds a private,
throw-away GNUPGHOME, imports exactly the keyrings ostree would consult for the
remote (the repo's ``NAME.trustedkeys.gpg``, remotes.d, ``gpgkeypath``, the global
``trusted.gpg.d``), verifies there, and deletes it. A key found in those keyrings is
what ostree calls trusted; nothing else is.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ostreefs import _fs
from ostreefs.errors import MalformedData, StoreError
from ostreefs.store.gvariant import Variant
from ostreefs.store.objects import Metadata, ObjectType, decode_metadata, encode_metadata
from ostreefs.store.remotes import get_remote, keyring_filename, keyring_paths
from ostreefs.store.repo import Repo
from ostreefs.store.summary import SUMMARY_FILE, SUMMARY_SIG_FILE, vardict

GPGSIGS_KEY = "ostree.gpgsigs"
#: ostree's fallback keyrings when a remote has none of its own.
GLOBAL_KEYRING_DIR = "/usr/share/ostree/trusted.gpg.d"
_GPG_TIMEOUT = 60

#: gpgme_pubkey_algo_name's names, which ostree prints.
_ALGO_NAMES = {1: "RSA", 2: "RSA-E", 3: "RSA-S", 16: "ELG-E", 17: "DSA", 18: "ECDH",
               19: "ECDSA", 20: "ELG", 22: "EdDSA"}


class GpgError(StoreError):
    """GPG: {0}"""


class GpgVerifyError(StoreError):
    """{0}"""


@dataclass
class GpgSignature:
    """One signature and what the trusted keyrings say about it (ostree's attributes)."""

    key_id: str
    fingerprint: str
    primary_fingerprint: str
    valid: bool
    key_missing: bool
    timestamp: int
    exp_timestamp: int = 0
    sig_expired: bool = False
    key_expired: bool = False
    key_revoked: bool = False
    key_exp_timestamp: int = 0
    primary_key_exp_timestamp: int = 0
    pubkey_algo: str = ""
    user_name: str | None = None
    user_email: str | None = None

    @property
    def trusted(self) -> bool:
        """The key is in a keyring ostree trusts for this remote."""
        return not self.key_missing

    @property
    def user_id(self) -> str | None:
        if self.user_name is None:
            return None
        return f"{self.user_name} <{self.user_email or ''}>"


@dataclass
class GpgVerifyResult:
    signatures: list[GpgSignature] = field(default_factory=list)

    def ok(self) -> bool:
        return any(s.valid for s in self.signatures)

    def count_valid(self) -> int:
        return sum(1 for s in self.signatures if s.valid)


# --------------------------------------------------------------- signature containers


def commit_signatures(detached: Metadata | None) -> list[bytes]:
    """The signatures in a commit's detached metadata (none if it has none)."""
    for k, v in reversed(detached or ()):
        if k == GPGSIGS_KEY:
            if v.signature != "aay":
                raise MalformedData("detached metadata", f"{GPGSIGS_KEY} has type {v.signature}")
            return [bytes(s) for s in v.value]
    return []


def summary_signatures(sig_bytes: bytes) -> list[bytes]:
    """The signatures in a ``summary.sig`` file's bytes."""
    return commit_signatures(decode_metadata(sig_bytes, "summary.sig"))


def append_signature(existing: Metadata | None, signature: bytes) -> Metadata:
    """Add a signature as ostree does: the whole a{sv} is rebuilt in GVariantDict order."""
    sigs = commit_signatures(existing) + [signature]
    items = list(existing or ()) + [(GPGSIGS_KEY, Variant("aay", sigs))]
    return vardict(items)


def _replace_signatures(existing: Metadata | None, sigs: list[bytes]) -> Metadata | None:
    items = [(k, v) for k, v in existing or () if k != GPGSIGS_KEY]
    if sigs:
        items.append((GPGSIGS_KEY, Variant("aay", sigs)))
    return vardict(items) if items else None


# ----------------------------------------------------------------------- gpg runner


def _gnupg() -> Any:
    try:
        import gnupg
    except ImportError:
        raise GpgError("python-gnupg is not installed") from None
    return gnupg


def _gpg(home: str | None) -> Any:
    if home is not None and not os.path.isdir(home):
        # python-gnupg would create it; a mistyped --gpg-homedir should fail instead.
        raise GpgError(f"GPG homedir {home} is not a directory")
    try:
        return _gnupg().GPG(gnupghome=home, options=["--no-autostart"] if _is_private(home)
                            else None)
    except (OSError, ValueError) as e:
        raise GpgError(f"cannot run gpg: {e}") from None


_PRIVATE_HOMES: set[str] = set()


def _is_private(home: str | None) -> bool:
    return home is not None and home in _PRIVATE_HOMES


@contextlib.contextmanager
def _private_home(keyring_format: bool = False) -> Iterator[str]:
    """A throw-away GNUPGHOME that never starts an agent and never outlives the call.

    With ``keyring_format`` an empty ``pubring.gpg`` makes gpg keep keys in the legacy
    keyring file, the format of ostree's ``NAME.trustedkeys.gpg``.
    """
    home = tempfile.mkdtemp(prefix="ostreefs-gpg-")
    _PRIVATE_HOMES.add(home)
    try:
        os.chmod(home, 0o700)
        with open(os.path.join(home, "gpg.conf"), "w", encoding="ascii") as f:
            f.write("no-autostart\nno-auto-key-retrieve\ntrust-model always\n")
        if keyring_format:
            open(os.path.join(home, "pubring.gpg"), "wb").close()
        yield home
    finally:
        _PRIVATE_HOMES.discard(home)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            # Nothing should have started an agent here; make sure none outlives us.
            if any(n.startswith("S.gpg-agent") for n in os.listdir(home)):
                subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"],
                               capture_output=True, timeout=10, check=False)
        shutil.rmtree(home, ignore_errors=True)


def _import(gpg: Any, data: bytes) -> int:
    res = gpg.import_keys(data)
    return int(res.imported or 0)


# --------------------------------------------------------------------------- keys


@dataclass
class GpgUid:
    uid: str
    revoked: bool = False
    invalid: bool = False
    email: str | None = None

    @property
    def update_urls(self) -> tuple[str, str] | None:
        """The Web Key Directory URLs (advanced, direct) gpgme reports for the uid."""
        return wkd_urls(self.email) if self.email else None


@dataclass
class GpgSubkey:
    fingerprint: str
    created: int
    expires: int = 0
    revoked: bool = False
    expired: bool = False
    invalid: bool = False
    algo: int = 0


@dataclass
class GpgKey:
    primary: GpgSubkey
    uids: list[GpgUid] = field(default_factory=list)
    subkeys: list[GpgSubkey] = field(default_factory=list)


def _list_keys(gpg: Any, secret: bool = False, keys: Sequence[str] | None = None
               ) -> list[GpgKey]:
    """Keys as gpg lists them (``--with-colons``), primary key first."""
    args = [gpg.gpgbinary]
    if gpg.gnupghome:
        args += ["--homedir", gpg.gnupghome]
    if _is_private(gpg.gnupghome):
        args.append("--no-autostart")
    args += ["--batch", "--no-tty", "--fixed-list-mode", "--with-colons",
             "--with-fingerprint", "--with-fingerprint",
             "--list-secret-keys" if secret else "--list-keys", *(keys or ())]
    proc = subprocess.run(args, capture_output=True, timeout=_GPG_TIMEOUT, check=False)
    text = proc.stdout.decode("utf-8", "replace")
    out: list[GpgKey] = []
    last: GpgSubkey | None = None
    for line in text.splitlines():
        f = line.split(":")
        kind = f[0]
        if kind in ("pub", "sec", "sub", "ssb"):
            validity = f[1]
            sk = GpgSubkey(fingerprint="", created=_int(f[5]), expires=_int(f[6]),
                           revoked=validity == "r", expired=validity == "e",
                           invalid=validity == "i", algo=_int(f[3]))
            if kind in ("pub", "sec"):
                out.append(GpgKey(sk))
            elif out:
                out[-1].subkeys.append(sk)
            last = sk
        elif kind == "fpr" and last is not None and not last.fingerprint:
            last.fingerprint = f[9]
        elif kind == "uid" and out:
            uid = _unescape_colons(f[9])
            email = uid[uid.rfind("<") + 1:-1] if uid.endswith(">") and "<" in uid else None
            out[-1].uids.append(GpgUid(uid, revoked=f[1] == "r", invalid=f[1] == "i",
                                       email=email))
    return out


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        return 0


def _unescape_colons(s: str) -> str:
    raw = bytearray()
    i = 0
    b = s.encode("utf-8", "surrogateescape")
    while i < len(b):
        if b[i:i + 2] == b"\\x" and i + 4 <= len(b):
            try:
                raw.append(int(b[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        raw.append(b[i])
        i += 1
    return raw.decode("utf-8", "replace")


_ZBASE32 = "ybndrfg8ejkmcpqxot1uwisza345h769"


def wkd_urls(email: str) -> tuple[str, str]:
    """The OpenPGP Web Key Directory URLs for an address (advanced, direct)."""
    local, _, domain = email.partition("@")
    digest = hashlib.sha1(local.lower().encode()).digest()
    bits = int.from_bytes(digest, "big")
    nbits = len(digest) * 8
    chars = []
    for shift in range(nbits - 5, -5, -5):
        chars.append(_ZBASE32[(bits >> shift) & 31] if shift >= 0
                     else _ZBASE32[(bits << -shift) & 31])
    h = "".join(chars)
    dom = domain.lower()
    return (f"https://openpgpkey.{dom}/.well-known/openpgpkey/{dom}/hu/{h}?l={local}",
            f"https://{dom}/.well-known/openpgpkey/hu/{h}?l={local}")


def _remote_keyring_data(repo: Repo, name: str) -> bytes | None:
    own = repo.path / keyring_filename(name)
    try:
        return own.read_bytes()
    except FileNotFoundError:
        return None


def list_remote_keys(repo: Repo, name: str) -> list[GpgKey]:
    """The keys in the remote's keyring(s), as ``ostree remote gpg-list-keys`` lists them."""
    get_remote(repo, name)
    paths = keyring_paths(repo, name)
    with _private_home() as home:
        gpg = _gpg(home)
        for p in paths:
            for data in _keyfile_datas(p):
                _import(gpg, data)
        return _list_keys(gpg)


def import_remote_keys(repo: Repo, name: str, sources: Sequence[bytes] | None,
                       key_ids: Sequence[str] = (), homedir: str | None = None) -> int:
    """Add keys to the remote's ``NAME.trustedkeys.gpg``; returns how many were new.

    ``sources`` are keyring or armored key data; None takes the keys from ``homedir``'s
    keyring (gpg's default one without it), as ``ostree remote gpg-import`` does.
    ``key_ids`` limits the import to those keys. The keyring is replaced atomically.
    """
    get_remote(repo, name)
    if sources is None:
        exported = _gpg(homedir).export_keys(list(key_ids), armor=False)
        data = exported if isinstance(exported, bytes) else exported.encode("latin-1")
        if not data:
            raise GpgError(f"no keys found in {homedir or 'the default keyring'}")
        sources, key_ids = [data], ()
    with _private_home(keyring_format=True) as home:
        gpg = _gpg(home)
        old = _remote_keyring_data(repo, name)
        if old:
            _import(gpg, old)
        count = 0
        for data in sources:
            if key_ids:
                with _private_home() as stage:
                    sg = _gpg(stage)
                    _import(sg, data)
                    exported = sg.export_keys(list(key_ids), armor=False)
                    data = exported if isinstance(exported, bytes) else b""
                    if not data:
                        raise GpgError(f"none of the keys {' '.join(key_ids)} found")
            res = gpg.import_keys(data)
            if not res.count and not res.fingerprints:
                raise GpgError("no valid OpenPGP keys found in the input")
            count += int(res.imported or 0)
        new = Path(home, "pubring.gpg").read_bytes()
    if new != old:
        _fs.atomic_write(repo.path / keyring_filename(name), new, fsync=repo.fsync_enabled)
    return count


# ------------------------------------------------------------------------ signing


def sign_data(data: bytes, key_id: str, homedir: str | None) -> bytes:
    """One binary detached signature of ``data`` by ``key_id`` from ``homedir``.

    The agent is never allowed to prompt: a key that needs a passphrase fails instead
    of hanging a pipeline that has no terminal.
    """
    gpg = _gpg(homedir)
    where = homedir or "<default>"
    keys = gpg.list_keys(secret=True, keys=[key_id])
    if len(keys) == 0:
        raise GpgError(f"No gpg key found with ID {key_id} (homedir: {where})")
    if len(keys) > 1:
        raise GpgError(f"gpg key id {key_id} ambiguous (homedir: {where}). Try the "
                       "fingerprint instead")
    res = gpg.sign(data, keyid=key_id, detach=True, binary=True,
                   extra_args=["--pinentry-mode", "error"])
    sig = res.data
    if not sig:
        reason = (res.status or "").strip() or _last_error(res.stderr)
        raise GpgError(f"Failure signing with key {key_id}: {reason}")
    return bytes(sig)


def _last_error(stderr: str | None) -> str:
    lines = [ln for ln in (stderr or "").splitlines()
             if ln.startswith("gpg:") and not ln.startswith("[GNUPG:]")]
    return lines[-1][5:].strip() if lines else "gpg failed"


def sign_commit(repo: Repo, commit: str, key_ids: Sequence[str], homedir: str | None) -> None:
    """Append signatures to the commit's detached metadata, refusing a repeat signer."""
    data = repo.read_metadata(commit, ObjectType.COMMIT)
    with repo.lock():
        detached = repo.read_detached_metadata(commit)
        for key_id in key_ids:
            existing = commit_signatures(detached)
            if existing and _signed_by(existing, data, key_id, homedir):
                raise GpgError(f"Commit is already signed with GPG key {key_id}")
            detached = append_signature(detached, sign_data(data, key_id, homedir))
        repo.write_detached_metadata(commit, detached)


def delete_commit_signatures(repo: Repo, commit: str, key_ids: Sequence[str],
                             homedir: str | None) -> int:
    """Drop the commit's signatures made by any of ``key_ids``; returns how many."""
    data = repo.read_metadata(commit, ObjectType.COMMIT)
    with repo.lock():
        detached = repo.read_detached_metadata(commit)
        sigs = commit_signatures(detached)
        keep = [s for s in sigs if not _signed_by([s], data, None, homedir, key_ids)]
        if len(keep) != len(sigs):
            repo.write_detached_metadata(commit, _replace_signatures(detached, keep))
        return len(sigs) - len(keep)


def _signed_by(sigs: list[bytes], data: bytes, key_id: str | None, homedir: str | None,
               key_ids: Sequence[str] = ()) -> bool:
    """Whether any of ``sigs`` was made by one of the keys (matched by id or fingerprint)."""
    wanted = [k.upper() for k in ([key_id] if key_id else list(key_ids))]
    extra: list[bytes] = []
    if homedir is not None:
        exported = _gpg(homedir).export_keys(wanted, armor=False)
        if isinstance(exported, bytes) and exported:
            extra.append(exported)
    result = _verify(extra, data, sigs)
    for s in result.signatures:
        for w in wanted:
            if s.fingerprint.upper().endswith(w) or s.primary_fingerprint.upper().endswith(w) \
                    or s.key_id.upper().endswith(w):
                return True
    return False


def sign_summary(repo: Repo, key_ids: Sequence[str], homedir: str | None) -> None:
    """Add signatures of the current summary to ``summary.sig``."""
    try:
        data = (repo.path / SUMMARY_FILE).read_bytes()
    except FileNotFoundError:
        raise StoreError("No summary file", hint="run 'summary --update' first") from None
    sig_path = repo.path / SUMMARY_SIG_FILE
    try:
        meta: Metadata | None = decode_metadata(sig_path.read_bytes(), "summary.sig")
    except FileNotFoundError:
        meta = None
    for key_id in key_ids:
        meta = append_signature(meta, sign_data(data, key_id, homedir))
    _fs.atomic_write(sig_path, encode_metadata(meta or ()), fsync=repo.fsync_enabled)


def summary_sig_bytes(data: bytes, key_ids: Sequence[str], homedir: str | None) -> bytes:
    """A fresh ``summary.sig`` for ``data`` (used when the summary is regenerated)."""
    meta: Metadata | None = None
    for key_id in key_ids:
        meta = append_signature(meta, sign_data(data, key_id, homedir))
    return encode_metadata(meta or ())


# ------------------------------------------------------------------- verification


def _keyfile_datas(path: Path) -> list[bytes]:
    """Key data from a keyring file, or from every regular file of a directory."""
    try:
        if path.is_dir():
            return [p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()]
        return [path.read_bytes()]
    except OSError as e:
        raise GpgError(f"Cannot read keyring {path}: {e.strerror}") from None


def _gpg_files(d: Path) -> list[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.name.endswith(".gpg") and p.is_file()
                      and p.name not in ("trustdb.gpg", "secring.gpg"))
    except (FileNotFoundError, NotADirectoryError):
        return []


def trusted_keyrings(repo: Repo, remote: str | None, *, keyring_dir: str | None = None,
                     all_remotes: bool = True,
                     global_keyring_dir: str | None = GLOBAL_KEYRING_DIR) -> list[Path]:
    """The keyring files ostree consults for ``remote``, in its order.

    A remote with its own keyring does not fall back to the global directory; with no
    remote, ``all_remotes`` adds every keyring in the repo directory (all remotes'), as
    ostree does when checking a commit that is already pulled.
    """
    paths: list[Path] = []
    add_global = True
    if remote is not None:
        found = keyring_paths(repo, remote)
        own = [p for p in found if p.name == keyring_filename(remote)]
        if own:
            add_global = False
        paths.extend(found)
    elif all_remotes:
        paths.extend(_gpg_files(repo.path))
    if add_global and global_keyring_dir:
        paths.extend(_gpg_files(Path(global_keyring_dir)))
    if keyring_dir:
        paths.extend(_gpg_files(Path(keyring_dir)))
    return paths


def verify_data(repo: Repo, remote: str | None, data: bytes, signatures: Sequence[bytes], *,
                keyring_dir: str | None = None, all_remotes: bool = True,
                global_keyring_dir: str | None = GLOBAL_KEYRING_DIR) -> GpgVerifyResult:
    """Check each signature of ``data`` against the keys trusted for ``remote``."""
    keyrings: list[bytes] = []
    for p in trusted_keyrings(repo, remote, keyring_dir=keyring_dir, all_remotes=all_remotes,
                              global_keyring_dir=global_keyring_dir):
        keyrings.extend(_keyfile_datas(p))
    return _verify(keyrings, data, list(signatures))


def verify_commit(repo: Repo, commit: str, remote: str | None, **kw: Any) -> GpgVerifyResult:
    """Verify the signatures in the commit's detached metadata (none → empty result)."""
    data = repo.read_metadata(commit, ObjectType.COMMIT)
    sigs = commit_signatures(repo.read_detached_metadata(commit))
    if not sigs:
        return GpgVerifyResult()
    return verify_data(repo, remote, data, sigs, **kw)


def _verify(keyrings: Sequence[bytes], data: bytes, signatures: Sequence[bytes]
            ) -> GpgVerifyResult:
    result = GpgVerifyResult()
    if not signatures:
        return result
    with _private_home() as home:
        gpg = _gpg(home)
        for k in keyrings:
            _import(gpg, k)
        keys = _list_keys(gpg)
        datafile = Path(home, "data")
        datafile.write_bytes(data)
        for i, sig in enumerate(signatures):
            sigfile = Path(home, f"sig{i}")
            sigfile.write_bytes(sig)
            proc = subprocess.run(
                [gpg.gpgbinary, "--homedir", home, "--no-autostart", "--batch", "--no-tty",
                 "--status-fd", "1", "--verify", str(sigfile), str(datafile)],
                capture_output=True, timeout=_GPG_TIMEOUT, check=False)
            result.signatures.extend(
                _parse_verify(proc.stdout.decode("utf-8", "replace"), keys))
    return result


def _find_key(keys: list[GpgKey], ident: str) -> tuple[GpgKey, GpgSubkey] | None:
    ident = ident.upper()
    for k in keys:
        for sk in [k.primary, *k.subkeys]:
            if sk.fingerprint.upper().endswith(ident):
                return k, sk
    return None


def _parse_verify(status_text: str, keys: list[GpgKey]) -> list[GpgSignature]:
    """Turn one ``gpg --verify`` status stream into a signature per NEWSIG."""
    sigs: list[dict[str, Any]] = []
    cur: dict[str, Any] = {}
    for line in status_text.splitlines():
        if not line.startswith("[GNUPG:] "):
            continue
        parts = line[9:].split(" ")
        kw, args = parts[0], parts[1:]
        if kw == "NEWSIG":
            cur = {}
            sigs.append(cur)
            continue
        if not sigs:
            sigs.append(cur)
        if kw in ("GOODSIG", "BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG") and args:
            cur["kind"] = kw
            cur["keyid"] = args[0]
        elif kw == "ERRSIG" and len(args) >= 6:
            cur["kind"] = kw
            cur["keyid"] = args[0]
            cur["algo"] = _int(args[1])
            cur["ts"] = _int(args[4])
            cur["missing"] = args[5] == "9"
            if len(args) >= 7 and args[6] != "-":
                cur["fpr"] = args[6]
        elif kw == "NO_PUBKEY":
            cur["missing"] = True
        elif kw == "VALIDSIG" and len(args) >= 10:
            cur["fpr"] = args[0]
            cur["ts"] = _int(args[2])
            cur["exp"] = _int(args[3])
            cur["algo"] = _int(args[6])
            cur["primary"] = args[9]
        elif kw == "KEY_CONSIDERED" and args and "fpr" not in cur:
            cur.setdefault("considered", args[0])
    out = []
    for s in sigs:
        if "kind" not in s:
            continue
        keyid = str(s.get("keyid", ""))
        found = _find_key(keys, str(s.get("fpr") or keyid))
        # gpg tells nothing but the key ID about a bad signature; gpgme (so ostree)
        # then reports that ID as the fingerprint and no algorithm.
        fpr = str(s.get("fpr") or keyid)
        primary = str(s.get("primary") or (found[0].primary.fingerprint if found else fpr))
        name = email = None
        algo = int(s.get("algo") or 0)
        if found:
            uid = next((u for u in found[0].uids if not u.revoked), None) or (
                found[0].uids[0] if found[0].uids else None)
            if uid is not None:
                name, email = split_uid(uid.uid)
        kind = s["kind"]
        missing = bool(s.get("missing")) or found is None
        out.append(GpgSignature(
            key_id=fpr[-16:], fingerprint=fpr, primary_fingerprint=primary,
            valid=kind == "GOODSIG" and not missing, key_missing=missing,
            timestamp=int(s.get("ts", 0)), exp_timestamp=int(s.get("exp", 0)),
            sig_expired=kind == "EXPSIG", key_expired=kind == "EXPKEYSIG",
            key_revoked=kind == "REVKEYSIG",
            # gpgme matches the signing subkey by full fingerprint only
            key_exp_timestamp=found[1].expires if found and found[1].fingerprint == fpr
            else 0,
            primary_key_exp_timestamp=found[0].primary.expires if found else 0,
            pubkey_algo=_ALGO_NAMES.get(algo, "[unknown name]"),
            user_name=name, user_email=email))
    return out


# ------------------------------------------------------------------- descriptions


def split_uid(uid: str) -> tuple[str, str]:
    """(name, email) of a user ID as gpgme splits it: the comment is in neither."""
    text, email = uid.strip(), ""
    if text.endswith(">") and "<" in text:
        email = text[text.rfind("<") + 1:-1]
        text = text[:text.rfind("<")].strip()
    if text.endswith(")") and "(" in text:
        text = text[:text.rfind("(")].strip()
    return text, email


def format_local_time(ts: int) -> str:
    """GLib's ``%c`` in local time for the C locale, as ostree prints signature dates.

    GLib pads a one-digit day with U+2007 FIGURE SPACE (printed as '?' under LC_ALL=C).
    """
    t = time.localtime(ts)
    day = f"\u2007{t.tm_mday}" if t.tm_mday < 10 else str(t.tm_mday)
    return time.strftime(f"%a %b {day} %H:%M:%S %Y", t)


def describe(sig: GpgSignature, prefix: str = "") -> list[str]:
    """The lines ostree prints for a signature (``show``, pull errors)."""
    lines = [f"{prefix}Signature made {format_local_time(sig.timestamp)} using {sig.pubkey_algo} "
             f"key ID {sig.key_id}"]
    who = f'"{sig.user_name or ""} <{sig.user_email or ""}>"'
    if sig.key_missing:
        lines.append(f"{prefix}Can't check signature: public key not found")
    elif sig.valid:
        lines.append(f"{prefix}Good signature from {who}")
    elif sig.key_revoked:
        lines.append(f"{prefix}Key revoked")
    elif sig.sig_expired:
        lines.append(f"{prefix}Expired signature from {who}")
    else:
        lines.append(f"{prefix}BAD signature from {who}")
    if not sig.key_missing and sig.fingerprint != sig.primary_fingerprint:
        lines.append(f"{prefix}Primary key ID {sig.primary_fingerprint[-16:]}")
    subkey = sig.fingerprint != sig.primary_fingerprint
    for what, ts, expired in (("Signature", sig.exp_timestamp, sig.sig_expired),
                              ("Key", sig.key_exp_timestamp, sig.key_expired),
                              ("Primary key", sig.primary_key_exp_timestamp if subkey else 0,
                               sig.key_expired)):
        if ts > 0:
            word = "expired" if expired else "expires"
            lines.append(f"{prefix}{what} {word} {format_local_time(ts)}")
    return lines


def require_valid(result: GpgVerifyResult, what: str = "commit") -> None:
    """Raise GpgVerifyError unless a signature is good and from a trusted key.

    ``what`` is ``"commit"`` or ``"summary"``; it picks the remote option the
    no-signature message points at, as ostree's messages do.
    """
    if not result.signatures:
        if what == "summary":
            raise GpgVerifyError("GPG verification enabled, but no summary signatures found "
                                 "(use gpg-verify-summary=false in remote config to disable)")
        raise GpgVerifyError("GPG verification enabled, but no signatures found "
                             "(use gpg-verify=false in remote config to disable)")
    if result.ok():
        return
    # ostree's text: every signature described, the newest (last) first.
    details = "\n".join("\n".join(describe(s)) for s in reversed(result.signatures))
    if all(s.key_missing for s in result.signatures):
        details = f"GPG signatures found, but none are in trusted keyring\n{details}"
    raise GpgVerifyError(details)
