"""GPG signatures on commits: each tool verifies the other's, with real gpg and ostree.

Signatures live in the commit's detached metadata (``ostree.gpgsigs``); verification
uses only the remote's keyring in a private GNUPGHOME. ``show`` must print what
``ostree show`` prints for the same repository.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import gpgkeys
import pytest
from gpgkeys import TestKey
from support import TS_ARG, Tool, assert_clean_failure, init_repo, rev_parse

from ostreefs.store import gpg
from ostreefs.store.objects import ObjectType, encode_metadata
from ostreefs.store.repo import Repo


def _tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "usr").mkdir(parents=True, exist_ok=True)
    (t / "usr" / "hello").write_text("hello\n")
    return t


def _repo_with_remote(tool: Tool, tmp_path: Path, key: TestKey, name: str = "r") -> Path:
    repo = init_repo(tool, tmp_path / name, "archive")
    tool("remote", "add", f"--repo={repo}", f"--gpg-import={key.public_asc}", "origin",
         "http://example.invalid/")
    return repo


def _show(tool: Tool, repo: Path, *extra: str, env: dict[str, str] | None = None) -> str:
    return str(tool("show", f"--repo={repo}", "main", *extra, env=env).stdout)


def test_ostree_verifies_ostreefs_signature(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                            signing_key: TestKey) -> None:
    repo = _repo_with_remote(ostreefs, tmp_path, signing_key)
    ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "signed", TS_ARG,
             f"--gpg-sign={signing_key.key_id}", f"--gpg-homedir={signing_key.home}",
             _tree(tmp_path))
    out = _show(ostree, repo, "--gpg-verify-remote=origin")
    assert "Found 1 signature:" in out
    assert f'Good signature from "{signing_key.uid}"' in out
    assert f"using EdDSA key ID {signing_key.key_id}" in out
    assert _show(ostreefs, repo, "--gpg-verify-remote=origin") == out
    # Without --gpg-verify-remote every keyring of the repo counts, as in ostree ...
    assert _show(ostreefs, repo) == _show(ostree, repo) == out
    # ... and with the remote (and its keyring) gone no key is known.
    ostreefs("remote", "delete", f"--repo={repo}", "origin")
    plain = _show(ostree, repo)
    assert "Can't check signature: public key not found" in plain
    assert _show(ostreefs, repo) == plain
    ostree("fsck", f"--repo={repo}")


def test_ostreefs_verifies_ostree_signature(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                            signing_key: TestKey) -> None:
    repo = _repo_with_remote(ostree, tmp_path, signing_key)
    before = int(time.time())
    ostree("commit", f"--repo={repo}", "-b", "main", "-s", "signed", TS_ARG,
           f"--gpg-sign={signing_key.key_id}", f"--gpg-homedir={signing_key.home}",
           _tree(tmp_path))
    r = Repo.open(repo)
    result = gpg.verify_commit(r, rev_parse(ostree, repo, "main"), "origin")
    gpg.require_valid(result)
    [sig] = result.signatures
    assert sig.valid and sig.trusted and not sig.key_missing
    assert sig.fingerprint == signing_key.fingerprint
    assert (sig.user_name, sig.user_email) == (signing_key.name, signing_key.email)
    assert sig.pubkey_algo == "EdDSA" and before - 2 <= sig.timestamp <= time.time() + 2
    out = _show(ostree, repo, "--gpg-verify-remote=origin")
    assert _show(ostreefs, repo, "--gpg-verify-remote=origin") == out
    # The user's own keyrings play no part: a bogus GNUPGHOME and HOME change nothing.
    env = {"GNUPGHOME": str(tmp_path / "nonexistent"), "HOME": str(tmp_path)}
    assert _show(ostreefs, repo, "--gpg-verify-remote=origin", env=env) == out


def test_gpg_sign_adds_and_deletes(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                   signing_key: TestKey, other_key: TestKey) -> None:
    repo = _repo_with_remote(ostree, tmp_path, signing_key)
    ostree("remote", "gpg-import", f"--repo={repo}", "origin", "-k", other_key.public_gpg)
    ostree("commit", f"--repo={repo}", "-b", "main", "-s", "s", TS_ARG,
           "--add-detached-metadata-string=note=kept",
           f"--gpg-sign={signing_key.key_id}", f"--gpg-homedir={signing_key.home}",
           _tree(tmp_path))
    # ostree's detached metadata is rebuilt in GVariantDict (hash) order on signing;
    # appending the same signature the ostreefs way gives the same bytes.
    r = Repo.open(repo)
    commit = rev_parse(ostree, repo, "main")
    meta_path = r.object_path(commit, ObjectType.COMMIT_META)
    theirs = meta_path.read_bytes()
    [sig] = gpg.commit_signatures(r.read_detached_metadata(commit))
    unsigned = tuple((k, v) for k, v in r.read_detached_metadata(commit) or ()
                     if k != gpg.GPGSIGS_KEY)
    assert encode_metadata(gpg.append_signature(unsigned, sig)) == theirs
    ostreefs("gpg-sign", f"--repo={repo}", "main", other_key.key_id,
             f"--gpg-homedir={other_key.home}")
    out = _show(ostree, repo, "--gpg-verify-remote=origin")
    assert "Found 2 signatures:" in out and out.count("Good signature") == 2
    assert f'Good signature from "{other_key.uid}"' in out
    assert _show(ostreefs, repo, "--gpg-verify-remote=origin") == out
    # other keys of the detached metadata survive
    note = ostree("show", f"--repo={repo}", "main", "--print-detached-metadata-key=note")
    assert note.stdout == "'kept'\n"
    again = ostreefs("gpg-sign", f"--repo={repo}", "main", other_key.key_id,
                     f"--gpg-homedir={other_key.home}", check=False)
    assert_clean_failure(again)
    assert f"Commit is already signed with GPG key {other_key.key_id}" in again.stderr
    d = ostreefs("gpg-sign", f"--repo={repo}", "--delete", "main", other_key.key_id,
                 f"--gpg-homedir={other_key.home}")
    assert d.stdout == "Signatures deleted: 1\n"
    out = _show(ostree, repo, "--gpg-verify-remote=origin")
    assert "Found 1 signature:" in out and other_key.uid not in out
    d = ostree("gpg-sign", f"--repo={repo}", "--delete", "main", signing_key.key_id,
               f"--gpg-homedir={signing_key.home}")
    assert d.stdout == "Signatures deleted: 1\n"
    assert "signature" not in _show(ostreefs, repo)


def test_bad_signatures_are_refused(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                    signing_key: TestKey, other_key: TestKey) -> None:
    repo = _repo_with_remote(ostreefs, tmp_path, signing_key)
    ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "s", TS_ARG,
             f"--gpg-sign={other_key.key_id}", f"--gpg-homedir={other_key.home}",
             _tree(tmp_path))
    r = Repo.open(repo)
    commit = rev_parse(ostree, repo, "main")
    data = r.read_metadata(commit, ObjectType.COMMIT)
    sigs = gpg.commit_signatures(r.read_detached_metadata(commit))
    assert len(sigs) == 1

    unknown = gpg.verify_data(r, "origin", data, sigs)
    assert not unknown.ok() and unknown.signatures[0].key_missing
    assert unknown.signatures[0].key_id == other_key.key_id
    with pytest.raises(gpg.GpgVerifyError, match="(?s)none are in trusted keyring.*public key "
                                                 "not found"):
        gpg.require_valid(unknown)

    ostreefs("remote", "gpg-import", f"--repo={repo}", "origin", "-k", other_key.public_asc)
    good = gpg.verify_data(r, "origin", data, sigs)
    assert good.ok()
    tampered = gpg.verify_data(r, "origin", data[:-1] + bytes([data[-1] ^ 1]), sigs)
    assert not tampered.ok() and not tampered.signatures[0].key_missing
    with pytest.raises(gpg.GpgVerifyError, match=f'BAD signature from "{other_key.uid}"'):
        gpg.require_valid(tampered)

    with pytest.raises(gpg.GpgVerifyError, match="no signatures found .use gpg-verify=false"):
        gpg.require_valid(gpg.verify_data(r, "origin", data, []))
    with pytest.raises(gpg.GpgVerifyError, match="use gpg-verify-summary=false"):
        gpg.require_valid(gpg.GpgVerifyResult(), "summary")
    garbage = gpg.verify_data(r, "origin", data, [b"\x89\x01garbage"])
    with pytest.raises(gpg.GpgVerifyError):
        gpg.require_valid(garbage)


def test_signing_errors_are_one_line(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                     signing_key: TestKey) -> None:
    repo = init_repo(ostree, tmp_path / "r", "archive")
    ostree("commit", f"--repo={repo}", "-b", "main", "-s", "s", TS_ARG, _tree(tmp_path))
    head = rev_parse(ostree, repo, "main")
    p = ostreefs("gpg-sign", f"--repo={repo}", "main", "0123456789ABCDEF",
                 f"--gpg-homedir={signing_key.home}", check=False)
    assert_clean_failure(p)
    assert "No gpg key found with ID 0123456789ABCDEF" in p.stderr
    p = ostreefs("commit", f"--repo={repo}", "-b", "main", "-s", "s2", TS_ARG,
                 "--gpg-sign=0123456789ABCDEF", f"--gpg-homedir={signing_key.home}",
                 _tree(tmp_path), check=False)
    assert_clean_failure(p)
    assert rev_parse(ostree, repo, "main") == head  # the branch did not move to an unsigned commit
    p = ostreefs("gpg-sign", f"--repo={repo}", "main", check=False)
    assert_clean_failure(p)


def test_subkey_and_bad_signature_output_match_ostree(ostree: Tool, ostreefs: Tool,
                                                      tmp_path: Path) -> None:
    """A signing subkey with expiry (Primary key ID / expires lines, the uid comment
    dropped), then a corrupted signature (BAD signature, the epoch date whose one-digit
    day GLib pads with a figure space): ostreefs prints ostree's lines, in C and UTF-8."""
    key = gpgkeys.make_key("Sub Signer", "sub@example.net", rsa_subkey=True)
    try:
        repo = _repo_with_remote(ostree, tmp_path, key)
        ostree("commit", f"--repo={repo}", "-b", "main", "-s", "s", TS_ARG,
               f"--gpg-sign={key.fingerprint}", f"--gpg-homedir={key.home}", _tree(tmp_path))
    finally:
        gpgkeys.remove_key(key)
    out = _show(ostree, repo)
    assert "Primary key ID " in out and "Primary key expires" in out
    assert _show(ostreefs, repo) == out
    listing = ostree("remote", "gpg-list-keys", f"--repo={repo}", "origin").stdout
    assert "  Subkey: " in listing
    assert ostreefs("remote", "gpg-list-keys", f"--repo={repo}", "origin").stdout == listing

    r = Repo.open(repo)
    commit = rev_parse(ostree, repo, "main")
    [sig] = gpg.commit_signatures(r.read_detached_metadata(commit))
    broken = bytearray(sig)
    broken[-3] ^= 0xFF
    r.write_detached_metadata(commit, gpg.append_signature(None, bytes(broken)))
    for env in (None, {"LC_ALL": "C.UTF-8"}):
        out = _show(ostree, repo, env=env)
        assert "BAD signature" in out and "1970" in out
        assert _show(ostreefs, repo, env=env) == out


def test_no_private_gpg_home_or_agent_left() -> None:
    left = [p for p in Path(gpg.tempfile.gettempdir()).glob("ostreefs-gpg-*")]
    assert left == []
    agents = subprocess.run(["pgrep", "-af", "gpg-agent.*ostreefs-gpg-"],
                            capture_output=True, text=True, check=False).stdout
    assert agents == ""


def test_global_keyring_and_gpgkeypath(ostree: Tool, ostreefs: Tool, tmp_path: Path,
                                       signing_key: TestKey, other_key: TestKey) -> None:
    """Keys ostree trusts besides NAME.trustedkeys.gpg: the global trusted.gpg.d
    ($OSTREE_GPG_HOME) when the remote has no keyring, and the remote's gpgkeypath."""
    repo = init_repo(ostree, tmp_path / "r", "archive")
    ostree("commit", f"--repo={repo}", "-b", "main", "-s", "s", TS_ARG,
           f"--gpg-sign={signing_key.key_id}", f"--gpg-homedir={signing_key.home}",
           _tree(tmp_path))
    ostree("remote", "add", f"--repo={repo}", "plain", "http://x/")
    ostree("remote", "add", f"--repo={repo}", f"--set=gpgkeypath={signing_key.public_asc}",
           "bypath", "http://x/")
    trusted = tmp_path / "trusted.gpg.d"
    trusted.mkdir()
    shutil.copy(signing_key.public_gpg, trusted / "vendor.gpg")
    env = {"OSTREE_GPG_HOME": str(trusted)}
    for remote, env_ in (("plain", env), ("bypath", None), ("plain", None)):
        out = _show(ostree, repo, f"--gpg-verify-remote={remote}", env=env_)
        assert _show(ostreefs, repo, f"--gpg-verify-remote={remote}", env=env_) == out
        good = env_ is not None or remote == "bypath"
        assert ("Good signature" in out) == good, (remote, out)
    r = Repo.open(repo)
    commit = rev_parse(ostree, repo, "main")
    assert gpg.verify_commit(r, commit, "plain", global_keyring_dir=str(trusted)).ok()
    assert gpg.verify_commit(r, commit, "bypath", global_keyring_dir=None).ok()
    # a remote with its own keyring no longer falls back to the global directory
    ostreefs("remote", "gpg-import", f"--repo={repo}", "plain", "-k", other_key.public_gpg)
    r = Repo.open(repo)
    assert not gpg.verify_commit(r, commit, "plain", global_keyring_dir=str(trusted)).ok()
