"""The summary file: ostreefs writes ostree's bytes, and each tool verifies the other's
``summary.sig``.

``ostree summary -u`` stamps ``ostree.summary.last-modified`` with the current time, so
byte comparisons pass ostree's stamp to ostreefs's generator (the only input that
differs); the CLI tests compare everything else.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from gpgkeys import TestKey
from support import TS_ARG, Tool, assert_clean_failure, init_repo

from ostreefs.store import gpg
from ostreefs.store.gvtext import parse_text
from ostreefs.store.objects import Summary
from ostreefs.store.repo import Repo
from ostreefs.store.summary import generate_summary

EXTRA = [("foo", "1"), ("bar", "'x'"), ("a.b", "true"), ("k1", "uint64 2"),
         ("k2", "[1, 2]"), ("k3", "'three'"), ("k4", "5"), ("k5", "@as []"), ("zz", "7")]


def _last_modified(path: Path) -> int:
    s = Summary.from_bytes(path.read_bytes())
    return int(dict(s.metadata)["ostree.summary.last-modified"].value)


def _server(ostree: Tool, tmp_path: Path) -> Path:
    """An archive repo with two branches (one with a version) and a remote ref."""
    repo = init_repo(ostree, tmp_path / "server", "archive")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "os-release").write_text("ID=test\n")
    ostree("commit", f"--repo={repo}", "-b", "os/x86_64", "-s", "one", TS_ARG,
           "--add-metadata-string=version=1.2", tree)
    (tree / "etc" / "motd").write_text("hi\n")
    ostree("commit", f"--repo={repo}", "-b", "main", "-s", "two", TS_ARG, tree)
    ostree("refs", f"--repo={repo}", "--create=upstream:stable", "main")
    return repo


@pytest.mark.parametrize("extra", [[], EXTRA], ids=["plain", "custom-metadata"])
def test_summary_bytes_match_ostree(ostree: Tool, tmp_path: Path,
                                    extra: list[tuple[str, str]]) -> None:
    repo = _server(ostree, tmp_path)
    ostree("summary", f"--repo={repo}", "-u", *[f"--add-metadata={k}={v}" for k, v in extra])
    theirs = (repo / "summary").read_bytes()
    ours = generate_summary(Repo.open(repo), last_modified=_last_modified(repo / "summary"),
                            extra_metadata=[(k, parse_text(v)) for k, v in extra])
    assert ours == theirs


def test_summary_cli_matches_ostree(ostree: Tool, ostreefs: Tool, tmp_path: Path) -> None:
    a = _server(ostree, tmp_path)
    b = tmp_path / "twin"
    shutil.copytree(a, b, symlinks=True)
    (a / "summary.sig").write_bytes(b"stale")
    (b / "summary.sig").write_bytes(b"stale")
    ostree("summary", f"--repo={a}", "-u", "-m", "k=42")
    ostreefs("summary", f"--repo={b}", "-u", "-m", "k=42")
    # same config side effect (indexed-deltas=true), stale signature removed by both
    assert (b / "config").read_bytes() == (a / "config").read_bytes()
    assert not (a / "summary.sig").exists() and not (b / "summary.sig").exists()
    ours = Summary.from_bytes((b / "summary").read_bytes())
    theirs = Summary.from_bytes((a / "summary").read_bytes())
    assert ours.refs == theirs.refs
    assert [k for k, _ in ours.metadata] == [k for k, _ in theirs.metadata]
    # Same file, same --view and --raw output from both tools.
    (b / "summary").write_bytes((a / "summary").read_bytes())
    for args in (["--view"], ["-v"], ["--raw"]):
        out = ostreefs("summary", f"--repo={b}", *args).stdout
        assert out == ostree("summary", f"--repo={a}", *args).stdout, args
    assert "* os/x86_64\n    Latest Commit (" in out or args == ["--raw"]


def test_ostree_verifies_ostreefs_signed_summary(ostree: Tool, ostreefs: Tool,
                                                 tmp_path: Path, signing_key: TestKey,
                                                 other_key: TestKey) -> None:
    server = _server(ostree, tmp_path)
    ostreefs("gpg-sign", f"--repo={server}", "main", signing_key.key_id,
             f"--gpg-homedir={signing_key.home}")
    ostreefs("summary", f"--repo={server}", "-u", f"--gpg-sign={signing_key.key_id}",
             f"--gpg-homedir={signing_key.home}")
    assert (server / "summary").stat().st_mtime_ns == (server / "summary.sig").stat().st_mtime_ns
    client = init_repo(ostree, tmp_path / "client", "archive")
    ostree("remote", "add", f"--repo={client}", "--set=gpg-verify-summary=true",
           f"--gpg-import={signing_key.public_asc}", "origin", f"file://{server}")
    out = ostree("remote", "summary", f"--repo={client}", "origin").stdout
    assert "GPG: Verification enabled, found 1 signature:" in out
    assert f'Good signature from "{signing_key.uid}"' in out
    # a real pull with both checks on: the signed summary and the signed commit
    ostree("pull", f"--repo={client}", "origin", "main")
    ostree("fsck", f"--repo={client}")
    # a second key appended by `summary --gpg-sign` (no -u) is seen too
    ostreefs("summary", f"--repo={server}", f"--gpg-sign={other_key.key_id}",
             f"--gpg-homedir={other_key.home}")
    sigs = gpg.summary_signatures((server / "summary.sig").read_bytes())
    assert len(sigs) == 2
    # a client that trusts only the other key still accepts (one valid signature suffices)
    c2 = init_repo(ostree, tmp_path / "client2", "archive")
    ostree("remote", "add", f"--repo={c2}", "--set=gpg-verify-summary=true",
           "--set=gpg-verify=false", f"--gpg-import={other_key.public_asc}", "origin",
           f"file://{server}")
    out = ostree("remote", "summary", f"--repo={c2}", "origin").stdout
    assert "found 2 signatures" in out


def test_ostreefs_verifies_ostree_signed_summary(ostree: Tool, ostreefs: Tool,
                                                 tmp_path: Path, signing_key: TestKey,
                                                 other_key: TestKey) -> None:
    server = _server(ostree, tmp_path)
    ostree("summary", f"--repo={server}", "-u", f"--gpg-sign={signing_key.key_id}",
           f"--gpg-homedir={signing_key.home}")
    data = (server / "summary").read_bytes()
    sigs = gpg.summary_signatures((server / "summary.sig").read_bytes())
    client = init_repo(ostree, tmp_path / "client", "archive")
    ostreefs("remote", "add", f"--repo={client}", f"--gpg-import={signing_key.public_gpg}",
             "origin", f"file://{server}")
    r = Repo.open(client)
    result = gpg.verify_data(r, "origin", data, sigs)
    gpg.require_valid(result, "summary")
    assert result.signatures[0].fingerprint == signing_key.fingerprint
    bad = gpg.verify_data(r, "origin", data.replace(b"main", b"mail", 1), sigs)
    with pytest.raises(gpg.GpgVerifyError, match="BAD signature"):
        gpg.require_valid(bad, "summary")
    ostreefs("remote", "add", f"--repo={client}", f"--gpg-import={other_key.public_gpg}",
             "other", f"file://{server}")
    r = Repo.open(client)
    with pytest.raises(gpg.GpgVerifyError, match="none are in trusted keyring"):
        gpg.require_valid(gpg.verify_data(r, "other", data, sigs), "summary")


def test_summary_errors_are_one_line(ostree: Tool, ostreefs: Tool, tmp_path: Path) -> None:
    repo = init_repo(ostree, tmp_path / "r", "archive")
    for args in (["--view"], [], ["-u", "-m", "novalue"], ["-u", "--gpg-sign=0123456789ABCDEF",
                                                           f"--gpg-homedir={tmp_path}"]):
        p = ostreefs("summary", f"--repo={repo}", *args, check=False)
        assert_clean_failure(p)
    assert not (repo / "summary").exists()  # a failed signing publishes nothing
